//! Redis-only fault tests: `kill -9` the server under load (AOF, `appendfsync always`)
//! and restart it; nothing acknowledged is lost and clients recover by themselves.

use std::collections::{BTreeSet, HashSet};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use ratemesh_bus::testkit::{Persistence, RedisServer};
use ratemesh_bus::{Appended, Bus, BusError, BusOptions, Event};
use tokio::sync::Mutex;

const EVENTS: u64 = 10_000;
const PUBLISHERS: u64 = 4;

async fn wait_for(rx: &mut tokio::sync::watch::Receiver<bool>, want: bool, what: &str) {
    tokio::time::timeout(Duration::from_secs(10), rx.wait_for(|v| *v == want))
        .await
        .unwrap_or_else(|_| panic!("connected signal never became {want} ({what})"))
        .expect("connected signal sender alive");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn acknowledged_publishes_survive_kill_9_and_clients_recover() {
    let mut server = RedisServer::start_with(Persistence::AofAlways);
    let opts = BusOptions {
        partitions: 4,
        max_deliveries: 100,
        reclaim_idle: Duration::from_millis(500),
        read_block: Duration::from_millis(100),
        lease_ttl: Duration::from_millis(500),
        batch_size: 256,
    };
    let bus = Bus::redis(&server.url(), &server.unique_prefix(), opts)
        .await
        .unwrap();
    let mut connected = bus.connected();
    wait_for(&mut connected, true, "at start").await;
    let consumer = bus.consumer("stock", "rates", "survivor").await.unwrap();

    let acked: Arc<Mutex<Vec<(u64, Appended)>>> = Arc::default();
    let publish_errors = Arc::new(AtomicU64::new(0));
    let publishers: Vec<_> = (0..PUBLISHERS)
        .map(|p| {
            let bus = bus.clone();
            let acked = acked.clone();
            let errors = publish_errors.clone();
            tokio::spawn(async move {
                for n in (p..EVENTS).step_by(PUBLISHERS as usize) {
                    // Retry until acknowledged, as ingest would before answering 202.
                    loop {
                        let event = Event::new(format!("SKU-{}", n % 97), n.to_string());
                        match bus.publish("stock", event).await {
                            Ok(at) => {
                                acked.lock().await.push((n, at));
                                break;
                            }
                            Err(BusError::Unavailable(_)) => {
                                errors.fetch_add(1, Ordering::Relaxed);
                                tokio::time::sleep(Duration::from_millis(20)).await;
                            }
                            Err(e) => panic!("publish failed with a non-transient error: {e}"),
                        }
                    }
                }
            })
        })
        .collect();

    let consumer_task = {
        let consumer = consumer.clone();
        tokio::spawn(async move {
            let mut seen = HashSet::new();
            let mut read_errors = 0u64;
            while (seen.len() as u64) < EVENTS {
                match consumer.next_batch().await {
                    Ok(batch) => {
                        for d in &batch {
                            seen.insert(
                                std::str::from_utf8(&d.payload)
                                    .unwrap()
                                    .parse::<u64>()
                                    .unwrap(),
                            );
                        }
                        // Acks may fail while Redis is down; the entries are redelivered.
                        let _ = consumer.ack(&batch).await;
                    }
                    Err(BusError::Unavailable(_)) => {
                        read_errors += 1;
                        tokio::time::sleep(Duration::from_millis(20)).await;
                    }
                    Err(e) => panic!("consumer failed with a non-transient error: {e}"),
                }
            }
            read_errors
        })
    };

    // Kill -9 mid-stream.
    let start = Instant::now();
    while (acked.lock().await.len() as u64) < EVENTS / 3 {
        assert!(
            start.elapsed() < Duration::from_secs(60),
            "publishing stalled"
        );
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    server.kill();
    let acked_at_kill = acked.lock().await.len();
    wait_for(&mut connected, false, "after kill -9").await;
    tokio::time::sleep(Duration::from_millis(200)).await;
    server.restart();
    wait_for(&mut connected, true, "after restart").await;

    for p in publishers {
        tokio::time::timeout(Duration::from_secs(90), p)
            .await
            .expect("publishers finished after the restart")
            .unwrap();
    }
    let read_errors = tokio::time::timeout(Duration::from_secs(60), consumer_task)
        .await
        .expect("consumer saw every event after the restart")
        .unwrap();

    // Every publish that returned success is in the stream.
    let acked = acked.lock().await;
    assert_eq!(acked.len() as u64, EVENTS);
    assert!(
        acked_at_kill < EVENTS as usize,
        "the kill happened mid-stream"
    );
    let mut stored = BTreeSet::new();
    let mut cursor = bus.start_cursor();
    loop {
        let (batch, next) = bus.read_after("stock", &cursor, 1000).await.unwrap();
        if batch.is_empty() {
            break;
        }
        stored.extend(batch.iter().map(|d| (d.partition, d.id)));
        cursor = next;
    }
    let missing: Vec<_> = acked
        .iter()
        .filter(|(_, at)| !stored.contains(&(at.partition, at.id)))
        .collect();
    assert!(
        missing.is_empty(),
        "{} acknowledged publishes lost: {:?}",
        missing.len(),
        &missing[..missing.len().min(5)]
    );
    assert!(
        publish_errors.load(Ordering::Relaxed) + read_errors > 0,
        "the outage was never observed"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_bus_built_while_redis_is_down_connects_when_it_comes_up() {
    let mut server = RedisServer::start();
    let url = server.url();
    server.kill();
    let bus = Bus::redis(&url, &server.unique_prefix(), BusOptions::default())
        .await
        .expect("building a bus does not need redis up");
    let mut connected = bus.connected();
    assert!(!*connected.borrow());
    assert!(matches!(
        bus.publish("stock", Event::new("SKU-1", "x")).await,
        Err(BusError::Unavailable(_))
    ));
    server.restart();
    wait_for(&mut connected, true, "after start").await;
    bus.publish("stock", Event::new("SKU-1", "x"))
        .await
        .unwrap();
}
