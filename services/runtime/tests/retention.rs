//! Stream retention on the embedded bus: entries older than the max age are trimmed once
//! every group has acknowledged them; pending and undelivered ones stay whatever their age.

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use ratemesh_bus::{Bus, BusOptions, Event};
use ratemesh_contract::streams;
use ratemesh_runtime::settings::StreamRetention;
use ratemesh_runtime::{App, Context, Settings};

fn bus() -> Bus {
    Bus::memory(BusOptions {
        read_block: Duration::from_millis(50),
        ..BusOptions::embedded()
    })
    .expect("memory bus")
}

/// Defaults, with one second of stock retention so a test can outlive it.
fn settings() -> Settings {
    let mut s = Settings::default();
    let any: SocketAddr = "127.0.0.1:0".parse().expect("addr");
    s.server.grpc_addr = any;
    s.server.http_addr = any;
    s.server.admin_addr = any;
    s.retention.stock = StreamRetention {
        max_age_secs: 1,
        max_len_per_partition: 1_000,
    };
    s
}

async fn publish(bus: &Bus, keys: &[&str]) {
    for key in keys {
        bus.publish(streams::STOCK, Event::new(*key, b"x".to_vec()))
            .await
            .expect("publish");
    }
}

async fn stored_keys(bus: &Bus) -> Vec<String> {
    let (entries, _) = bus
        .read_after(streams::STOCK, &bus.start_cursor(), 1_000)
        .await
        .expect("read");
    entries.into_iter().map(|d| d.key).collect()
}

#[tokio::test]
async fn a_trim_cycle_drops_old_acknowledged_entries_and_keeps_pending_and_undelivered_ones() {
    let bus = bus();
    let settings = settings();
    let consumer = bus
        .consumer(streams::STOCK, streams::groups::RATES, "r1")
        .await
        .expect("consumer");
    publish(&bus, &["acked-1", "acked-2", "pending"]).await;
    let batch = consumer.next_batch().await.expect("batch");
    assert_eq!(batch.len(), 3);
    consumer.ack(&batch[..2]).await.expect("ack");
    publish(&bus, &["undelivered"]).await;

    // Young entries stay even when acknowledged.
    assert_eq!(
        ratemesh_runtime::retention::trim_once(&bus, &settings.retention).await,
        0
    );
    assert_eq!(stored_keys(&bus).await.len(), 4);

    tokio::time::sleep(Duration::from_millis(1_100)).await;
    let removed = ratemesh_runtime::retention::trim_once(&bus, &settings.retention).await;
    assert_eq!(removed, 2);
    assert_eq!(stored_keys(&bus).await, ["pending", "undelivered"]);
    let stats = bus
        .stream_stats(streams::STOCK, streams::groups::RATES)
        .await
        .expect("stats");
    assert_eq!((stats.length, stats.pending, stats.backlog), (2, 1, 2));

    // The pending entry is still delivered and acknowledged normally afterwards.
    let rest = consumer.next_batch().await.expect("batch");
    assert_eq!(rest.len(), 1);
    assert_eq!(rest[0].key, "undelivered");
}

#[tokio::test]
async fn the_max_length_bounds_each_partition_but_spares_pending_entries() {
    let bus = bus();
    let mut settings = settings();
    settings.retention.stock = StreamRetention {
        max_age_secs: 86_400,
        max_len_per_partition: 2,
    };
    let consumer = bus
        .consumer(streams::STOCK, streams::groups::RATES, "r1")
        .await
        .expect("consumer");
    publish(&bus, &["a", "b", "c", "d", "e"]).await;
    let batch = consumer.next_batch().await.expect("batch");
    // Only the first two are done: the other three must survive the length limit.
    consumer.ack(&batch[..2]).await.expect("ack");
    assert_eq!(
        ratemesh_runtime::retention::trim_once(&bus, &settings.retention).await,
        2
    );
    assert_eq!(stored_keys(&bus).await, ["c", "d", "e"]);
    consumer.ack(&batch[2..]).await.expect("ack");
    ratemesh_runtime::retention::trim_once(&bus, &settings.retention).await;
    assert_eq!(stored_keys(&bus).await, ["d", "e"]);
}

#[tokio::test]
async fn the_app_trims_on_its_interval_whatever_services_it_runs() {
    ratemesh_runtime::telemetry::init_for_tests();
    let bus = bus();
    let mut settings = settings();
    settings.retention.interval_ms = 50;
    let ctx = Context::new(settings, bus.clone());
    // No service at all: retention is the process's job, not a service's.
    let app = App::bind(&ctx, Vec::new()).await.expect("bind");
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let running = tokio::spawn(app.run(async move {
        let _ = stopped.await;
    }));

    let consumer = bus
        .consumer(streams::STOCK, streams::groups::RATES, "r1")
        .await
        .expect("consumer");
    publish(&bus, &["done", "pending"]).await;
    let batch = consumer.next_batch().await.expect("batch");
    consumer.ack(&batch[..1]).await.expect("ack");

    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let keys = stored_keys(&bus).await;
        if keys == ["pending"] {
            break;
        }
        assert!(Instant::now() < deadline, "still stored: {keys:?}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let _ = stop.send(());
    running.await.expect("join").expect("app stops cleanly");
}
