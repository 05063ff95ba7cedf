//! The bus conformance suite: every test runs against the in-memory backend, against a
//! private `redis-server` and against a private six-node Redis Cluster (see
//! `ratemesh_bus::testkit`).

use std::collections::{BTreeMap, BTreeSet, HashSet};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant, SystemTime};

use bytes::Bytes;
use ratemesh_bus::testkit::{RedisCluster, RedisServer};
use ratemesh_bus::{
    Bus, BusError, BusOptions, Consumer, Delivery, Event, Expect, HistoryLimits, Idempotency,
    NackOutcome, Retention, StateWrite, Update,
};

#[derive(Clone, Copy, Debug)]
enum Kind {
    Memory,
    Redis,
    Cluster,
}

/// What a fixture's bus runs on; stopped when the fixture is dropped.
#[allow(dead_code)]
enum Servers {
    None,
    One(RedisServer),
    Cluster(RedisCluster),
}

struct Fixture {
    bus: Bus,
    _servers: Servers,
}

fn test_opts() -> BusOptions {
    BusOptions {
        partitions: 4,
        max_deliveries: 3,
        reclaim_idle: Duration::from_millis(150),
        read_block: Duration::from_millis(100),
        batch_size: 64,
        lease_ttl: Duration::from_millis(400),
    }
}

async fn fixture(kind: Kind) -> Fixture {
    fixture_with(kind, test_opts()).await
}

async fn fixture_with(kind: Kind, opts: BusOptions) -> Fixture {
    match kind {
        Kind::Memory => Fixture {
            bus: Bus::memory(opts).expect("memory bus"),
            _servers: Servers::None,
        },
        Kind::Redis => {
            let server = RedisServer::start();
            let bus = Bus::redis(&server.url(), &server.unique_prefix(), opts)
                .await
                .expect("redis bus");
            Fixture {
                bus,
                _servers: Servers::One(server),
            }
        }
        Kind::Cluster => {
            let cluster = RedisCluster::start();
            let bus = Bus::redis_cluster(&cluster.urls(), &cluster.unique_prefix(), opts)
                .await
                .expect("redis cluster bus");
            Fixture {
                bus,
                _servers: Servers::Cluster(cluster),
            }
        }
    }
}

/// Polls `consumer` until `done(collected)` or the deadline; acks nothing.
async fn collect_until(
    consumer: &Consumer,
    deadline: Duration,
    mut done: impl FnMut(&[Delivery]) -> bool,
) -> Vec<Delivery> {
    let end = Instant::now() + deadline;
    let mut got = Vec::new();
    while !done(&got) {
        assert!(
            Instant::now() < end,
            "timed out with {} deliveries: {got:?}",
            got.len()
        );
        got.extend(consumer.next_batch().await.expect("next_batch"));
    }
    got
}

fn payload_u64(d: &Delivery) -> u64 {
    std::str::from_utf8(&d.payload).unwrap().parse().unwrap()
}

/// Two keys that land in different partitions.
fn keys_in_different_partitions(bus: &Bus) -> (String, String) {
    let a = "SKU-0".to_owned();
    let b = (1..)
        .map(|i| format!("SKU-{i}"))
        .find(|k| bus.partition_of(k) != bus.partition_of(&a))
        .unwrap();
    (a, b)
}

async fn order_within_partition(kind: Kind) {
    let f = fixture(kind).await;
    let bus = &f.bus;
    let consumer = bus.consumer("stock", "rates", "c1").await.unwrap();
    let keys: Vec<String> = (0..10).map(|i| format!("SKU-{i}")).collect();
    let mut expected = 0;
    for round in 0..20u64 {
        if round % 2 == 0 {
            for k in &keys {
                bus.publish("stock", Event::new(k.clone(), round.to_string()))
                    .await
                    .unwrap();
                expected += 1;
            }
        } else {
            let batch = keys
                .iter()
                .map(|k| Event::new(k.clone(), round.to_string()).with_kind("StockChanged"))
                .collect();
            let appended = bus.publish_batch("stock", batch).await.unwrap();
            assert_eq!(appended.len(), keys.len());
            for (a, k) in appended.iter().zip(&keys) {
                assert_eq!(a.partition, bus.partition_of(k));
            }
            expected += keys.len();
        }
    }
    let got = collect_until(&consumer, Duration::from_secs(10), |g| g.len() >= expected).await;
    assert_eq!(got.len(), expected);
    let mut last_by_key: BTreeMap<&str, u64> = BTreeMap::new();
    let mut last_id_by_partition = BTreeMap::new();
    for d in &got {
        assert_eq!(d.delivery_count, 1);
        assert_eq!(d.stream, "stock");
        assert_eq!(d.partition, bus.partition_of(&d.key));
        let seq = payload_u64(d);
        assert_eq!(d.kind.is_some(), seq % 2 == 1);
        if let Some(prev) = last_by_key.insert(&d.key, seq) {
            assert!(prev < seq, "key {} went from {prev} to {seq}", d.key);
        }
        if let Some(prev) = last_id_by_partition.insert(d.partition, d.id) {
            assert!(prev < d.id, "partition {} out of order", d.partition);
        }
    }
    consumer.ack(&got).await.unwrap();
    let stats = bus.stream_stats("stock", "rates").await.unwrap();
    assert_eq!(
        (stats.pending, stats.backlog, stats.length),
        (0, 0, expected as u64)
    );
}

async fn abandoned_entries_are_reclaimed_by_another_consumer(kind: Kind) {
    let f = fixture(kind).await;
    let bus = &f.bus;
    let dying = bus.consumer("stock", "rates", "dying").await.unwrap();
    let survivor = bus.consumer("stock", "rates", "survivor").await.unwrap();
    for i in 0..12u64 {
        bus.publish("stock", Event::new(format!("SKU-{i}"), i.to_string()))
            .await
            .unwrap();
    }
    let taken = collect_until(&dying, Duration::from_secs(5), |g| g.len() >= 12).await;
    let taken_at = Instant::now();
    drop(dying); // dies without acking
    let stats = bus.stream_stats("stock", "rates").await.unwrap();
    assert_eq!(stats.pending, 12);

    let reclaimed = collect_until(&survivor, Duration::from_secs(5), |g| g.len() >= 12).await;
    assert!(
        taken_at.elapsed() >= Duration::from_millis(120),
        "entries were reclaimed before they were idle"
    );
    let want: BTreeSet<_> = taken.iter().map(|d| (d.partition, d.id)).collect();
    let got: BTreeSet<_> = reclaimed.iter().map(|d| (d.partition, d.id)).collect();
    assert_eq!(got, want);
    assert!(reclaimed.iter().all(|d| d.delivery_count == 2));
    survivor.ack(&reclaimed).await.unwrap();
    let stats = bus.stream_stats("stock", "rates").await.unwrap();
    assert_eq!((stats.pending, stats.backlog), (0, 0));
}

/// Members of a group split the partitions between them and each partition is read by one
/// member at a time, so every key's entries reach the group in stream order — also across
/// the hand-over when a second member joins mid-stream.
async fn each_partition_is_read_by_one_member_at_a_time(kind: Kind) {
    // Small batches, so a partition's backlog spans many of them, and members of unequal
    // speed: were a partition read by both, the fast one would overtake the slow one.
    let f = fixture_with(
        kind,
        BusOptions {
            batch_size: 8,
            ..test_opts()
        },
    )
    .await;
    let bus = f.bus.clone();
    let keys: Vec<String> = (0..40).map(|i| format!("SKU-{i}")).collect();
    let rounds = 10u64;
    let total = keys.len() * rounds as usize;
    let log: Arc<std::sync::Mutex<Vec<Delivery>>> = Arc::default();
    let done = Arc::new(AtomicBool::new(false));
    let member = |name: &'static str, pace: Duration| {
        let (bus, log, done) = (bus.clone(), log.clone(), done.clone());
        tokio::spawn(async move {
            let consumer = bus.consumer("stock", "rates", name).await.unwrap();
            while !done.load(Ordering::SeqCst) {
                let batch = consumer.next_batch().await.unwrap();
                if !batch.is_empty() {
                    tokio::time::sleep(pace).await;
                }
                log.lock().unwrap().extend(batch.iter().cloned());
                consumer.ack(&batch).await.unwrap();
            }
            consumer.owned_partitions()
        })
    };
    let publish = |from: u64, to: u64| {
        let (bus, keys) = (bus.clone(), keys.clone());
        async move {
            for round in from..to {
                let batch = keys
                    .iter()
                    .map(|k| Event::new(k.clone(), round.to_string()))
                    .collect();
                bus.publish_batch("stock", batch).await.unwrap();
            }
        }
    };
    let a = member("a", Duration::from_millis(15));
    publish(0, 3).await;
    tokio::time::sleep(Duration::from_millis(50)).await;
    let b = member("b", Duration::from_millis(1));
    publish(3, rounds).await;
    let end = Instant::now() + Duration::from_secs(10);
    while log.lock().unwrap().len() < total {
        assert!(
            Instant::now() < end,
            "only {} of {total} delivered",
            log.lock().unwrap().len()
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    // Let the partitions settle: both members hold half.
    tokio::time::sleep(Duration::from_millis(400)).await;
    done.store(true, Ordering::SeqCst);
    let (a, b) = (a.await.unwrap(), b.await.unwrap());
    assert_eq!((a.len(), b.len()), (2, 2), "a owns {a:?}, b owns {b:?}");
    assert!(
        a.iter().all(|p| !b.contains(p)),
        "a owns {a:?}, b owns {b:?}"
    );

    let log = log.lock().unwrap();
    let ids: HashSet<_> = log.iter().map(|d| (d.partition, d.id)).collect();
    assert_eq!(
        (log.len(), ids.len()),
        (total, total),
        "each entry exactly once"
    );
    let mut seen: BTreeMap<&str, Vec<u64>> = BTreeMap::new();
    for d in log.iter() {
        seen.entry(d.key.as_str()).or_default().push(payload_u64(d));
    }
    for (key, rounds_seen) in seen {
        assert!(
            rounds_seen.windows(2).all(|w| w[0] < w[1]),
            "{key} reached the group out of order: {rounds_seen:?}"
        );
    }
}

/// A member that leaves hands its partitions, and the entries it did not acknowledge, to
/// the others at their next refresh — without waiting for its leases to lapse.
async fn a_leaving_member_hands_its_partitions_over_at_once(kind: Kind) {
    let lease_ttl = Duration::from_secs(2);
    let f = fixture_with(
        kind,
        BusOptions {
            lease_ttl,
            ..test_opts()
        },
    )
    .await;
    let bus = &f.bus;
    let leaving = bus.consumer("stock", "rates", "leaving").await.unwrap();
    let staying = bus.consumer("stock", "rates", "staying").await.unwrap();
    for i in 0..12u64 {
        bus.publish("stock", Event::new(format!("SKU-{i}"), i.to_string()))
            .await
            .unwrap();
    }
    let taken = collect_until(&leaving, Duration::from_secs(5), |g| g.len() >= 12).await;
    assert!(
        staying.next_batch().await.unwrap().is_empty(),
        "every partition is taken"
    );
    let (acked, unacked) = taken.split_at(5);
    leaving.ack(acked).await.unwrap();
    leaving.leave().await.unwrap();
    let left_at = Instant::now();
    assert!(leaving.owned_partitions().is_empty());

    let handed = collect_until(&staying, Duration::from_secs(5), |g| g.len() >= 7).await;
    assert!(
        left_at.elapsed() < lease_ttl,
        "took {:?}: waited for the lease to lapse",
        left_at.elapsed()
    );
    let want: BTreeSet<_> = unacked.iter().map(|d| (d.partition, d.id)).collect();
    let got: BTreeSet<_> = handed.iter().map(|d| (d.partition, d.id)).collect();
    assert_eq!(got, want);
    assert!(handed.iter().all(|d| d.delivery_count == 2));
    assert_eq!(staying.owned_partitions(), vec![0, 1, 2, 3]);
}

async fn nacked_entries_are_dead_lettered_with_their_error_and_replayable(kind: Kind) {
    let f = fixture(kind).await;
    let bus = &f.bus;
    let consumer = bus.consumer("rates", "notifier", "c1").await.unwrap();
    let published = bus
        .publish(
            "rates",
            Event::new("SKU-poison", "bad").with_kind("RateChanged"),
        )
        .await
        .unwrap();
    bus.publish("rates", Event::new("SKU-ok", "good"))
        .await
        .unwrap();

    let mut outcomes = Vec::new();
    let end = Instant::now() + Duration::from_secs(10);
    while outcomes.last() != Some(&NackOutcome::DeadLettered) {
        assert!(Instant::now() < end, "never dead-lettered: {outcomes:?}");
        for d in consumer.next_batch().await.unwrap() {
            if d.key == "SKU-ok" {
                consumer.ack([&d]).await.unwrap();
                continue;
            }
            assert_eq!(d.id, published.id);
            assert_eq!(d.delivery_count, outcomes.len() as u64 + 1);
            let error = format!("boom {}", d.delivery_count);
            outcomes.push(consumer.nack(&d, &error).await.unwrap());
        }
    }
    assert_eq!(
        outcomes,
        [
            NackOutcome::WillRetry,
            NackOutcome::WillRetry,
            NackOutcome::DeadLettered
        ]
    );
    let stats = bus.stream_stats("rates", "notifier").await.unwrap();
    assert_eq!(
        (stats.pending, stats.dead_letters, stats.dead_lettered_total),
        (0, 1, 1)
    );

    let dead = bus.dead_letters("rates", "notifier", 10).await.unwrap();
    assert_eq!(dead.len(), 1);
    let d = &dead[0];
    assert_eq!(d.error, "boom 3");
    assert_eq!(d.delivery_count, 3);
    assert_eq!(d.source_id, published.id);
    assert_eq!(d.at.partition, published.partition);
    assert_eq!(d.event.key, "SKU-poison");
    assert_eq!(d.event.kind.as_deref(), Some("RateChanged"));
    assert_eq!(d.event.payload, Bytes::from_static(b"bad"));

    let replayed = bus
        .replay_dead_letters("rates", "notifier", &[d.at])
        .await
        .unwrap();
    assert_eq!(replayed.len(), 1);
    assert!(replayed[0].id > published.id);
    let again = collect_until(&consumer, Duration::from_secs(5), |g| !g.is_empty()).await;
    assert_eq!(again.len(), 1);
    assert_eq!(again[0].id, replayed[0].id);
    assert_eq!(again[0].payload, Bytes::from_static(b"bad"));
    assert_eq!(again[0].delivery_count, 1);
    consumer.ack(&again).await.unwrap();
    let stats = bus.stream_stats("rates", "notifier").await.unwrap();
    assert_eq!(
        (stats.dead_letters, stats.dead_lettered_total, stats.backlog),
        (0, 1, 0)
    );
    assert!(
        bus.dead_letters("rates", "notifier", 10)
            .await
            .unwrap()
            .is_empty()
    );
}

async fn unacked_entries_are_dead_lettered_after_max_deliveries(kind: Kind) {
    let f = fixture(kind).await;
    let bus = &f.bus;
    let consumer = bus.consumer("stock", "rates", "crashy").await.unwrap();
    let published = bus
        .publish("stock", Event::new("SKU-9", "crash"))
        .await
        .unwrap();
    let end = Instant::now() + Duration::from_secs(10);
    let mut deliveries = Vec::new();
    loop {
        assert!(Instant::now() < end, "never dead-lettered");
        // A handler that crashes: never acks, never nacks.
        deliveries.extend(
            consumer
                .next_batch()
                .await
                .unwrap()
                .into_iter()
                .map(|d| d.delivery_count),
        );
        if !bus
            .dead_letters("stock", "rates", 1)
            .await
            .unwrap()
            .is_empty()
        {
            break;
        }
    }
    assert_eq!(deliveries, [1, 2, 3]);
    let dead = bus.dead_letters("stock", "rates", 10).await.unwrap();
    assert_eq!(dead[0].source_id, published.id);
    assert_eq!(dead[0].delivery_count, 3);
    assert!(
        dead[0].error.contains("not acknowledged"),
        "{}",
        dead[0].error
    );
    assert_eq!(bus.stream_stats("stock", "rates").await.unwrap().pending, 0);
    assert_eq!(
        bus.delete_dead_letters("stock", "rates", &[dead[0].at])
            .await
            .unwrap(),
        1
    );
    assert!(
        bus.dead_letters("stock", "rates", 10)
            .await
            .unwrap()
            .is_empty()
    );
}

async fn idempotency_keys_store_the_first_outcome(kind: Kind) {
    let f = fixture(kind).await;
    let bus = &f.bus;
    let ttl = Duration::from_secs(60);
    assert_eq!(
        bus.idempotency_begin("erp", "batch-1", "first", ttl)
            .await
            .unwrap(),
        Idempotency::New
    );
    assert_eq!(
        bus.idempotency_begin("erp", "batch-1", "second", ttl)
            .await
            .unwrap(),
        Idempotency::InProgress
    );
    assert!(
        bus.idempotency_complete(
            "erp",
            "batch-1",
            "first",
            Bytes::from_static(b"202:applied=3"),
            ttl
        )
        .await
        .unwrap()
    );
    assert_eq!(
        bus.idempotency_begin("erp", "batch-1", "third", ttl)
            .await
            .unwrap(),
        Idempotency::Done(Bytes::from_static(b"202:applied=3"))
    );
    // Releasing a completed key keeps it; releasing a failed attempt frees it.
    bus.idempotency_release("erp", "batch-1", "first")
        .await
        .unwrap();
    assert!(matches!(
        bus.idempotency_begin("erp", "batch-1", "third", ttl)
            .await
            .unwrap(),
        Idempotency::Done(_)
    ));
    assert_eq!(
        bus.idempotency_begin("erp", "batch-2", "first", ttl)
            .await
            .unwrap(),
        Idempotency::New
    );
    bus.idempotency_release("erp", "batch-2", "first")
        .await
        .unwrap();
    assert_eq!(
        bus.idempotency_begin("erp", "batch-2", "second", ttl)
            .await
            .unwrap(),
        Idempotency::New
    );
    // Scopes are separate.
    assert_eq!(
        bus.idempotency_begin("partner", "batch-1", "first", ttl)
            .await
            .unwrap(),
        Idempotency::New
    );
    // An empty outcome is still an outcome, and a key nobody holds may be completed.
    assert!(
        bus.idempotency_complete("erp", "empty", "first", Bytes::new(), ttl)
            .await
            .unwrap()
    );
    assert_eq!(
        bus.idempotency_begin("erp", "empty", "second", ttl)
            .await
            .unwrap(),
        Idempotency::Done(Bytes::new())
    );
}

/// Only the holder of an attempt renews, completes or releases it; a holder that stops
/// renewing loses the key to the next attempt, and then cannot overwrite that attempt.
async fn idempotency_keys_are_held_by_their_owner(kind: Kind) {
    let f = fixture(kind).await;
    let bus = &f.bus;
    let lease = Duration::from_millis(300);
    let long = Duration::from_secs(60);
    assert_eq!(
        bus.idempotency_begin("erp", "batch", "dead", lease)
            .await
            .unwrap(),
        Idempotency::New
    );
    // Someone else can neither renew, release nor complete it.
    assert!(
        !bus.idempotency_renew("erp", "batch", "other", long)
            .await
            .unwrap()
    );
    bus.idempotency_release("erp", "batch", "other")
        .await
        .unwrap();
    assert!(
        !bus.idempotency_complete("erp", "batch", "other", Bytes::from_static(b"x"), long)
            .await
            .unwrap()
    );
    assert_eq!(
        bus.idempotency_begin("erp", "batch", "retry", long)
            .await
            .unwrap(),
        Idempotency::InProgress
    );

    // The owner renewing keeps the key well past its first lease.
    let held = Instant::now() + lease * 3;
    while Instant::now() < held {
        assert!(
            bus.idempotency_renew("erp", "batch", "dead", lease)
                .await
                .unwrap()
        );
        tokio::time::sleep(lease / 4).await;
        assert_eq!(
            bus.idempotency_begin("erp", "batch", "retry", long)
                .await
                .unwrap(),
            Idempotency::InProgress
        );
    }

    // Once it stops, a retry takes over within about a lease.
    let stopped = Instant::now();
    loop {
        let retry = bus
            .idempotency_begin("erp", "batch", "retry", lease)
            .await
            .unwrap();
        if retry == Idempotency::New {
            break;
        }
        assert!(
            stopped.elapsed() < lease * 5,
            "a lapsed attempt was never taken over"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    // The old owner has lost it for good: no renewal, no release, no answer stored.
    assert!(
        !bus.idempotency_renew("erp", "batch", "dead", long)
            .await
            .unwrap()
    );
    bus.idempotency_release("erp", "batch", "dead")
        .await
        .unwrap();
    assert!(
        !bus.idempotency_complete("erp", "batch", "dead", Bytes::from_static(b"old"), long)
            .await
            .unwrap()
    );
    assert!(
        bus.idempotency_renew("erp", "batch", "retry", long)
            .await
            .unwrap()
    );
    assert!(
        bus.idempotency_complete("erp", "batch", "retry", Bytes::from_static(b"new"), long)
            .await
            .unwrap()
    );
    // A completed key is nobody's to renew, and its outcome stays.
    assert!(
        !bus.idempotency_renew("erp", "batch", "retry", long)
            .await
            .unwrap()
    );
    assert!(
        !bus.idempotency_complete("erp", "batch", "dead", Bytes::from_static(b"old"), long)
            .await
            .unwrap()
    );
    assert_eq!(
        bus.idempotency_begin("erp", "batch", "late", long)
            .await
            .unwrap(),
        Idempotency::Done(Bytes::from_static(b"new"))
    );
}

async fn idempotency_keys_expire(kind: Kind) {
    let f = fixture(kind).await;
    let bus = &f.bus;
    let short = Duration::from_millis(150);
    assert_eq!(
        bus.idempotency_begin("erp", "a", "first", short)
            .await
            .unwrap(),
        Idempotency::New
    );
    assert!(
        bus.idempotency_complete("erp", "done", "first", Bytes::from_static(b"ok"), short)
            .await
            .unwrap()
    );
    let long = Duration::from_secs(60);
    assert_eq!(
        bus.idempotency_begin("erp", "a", "second", long)
            .await
            .unwrap(),
        Idempotency::InProgress
    );
    assert!(matches!(
        bus.idempotency_begin("erp", "done", "second", long)
            .await
            .unwrap(),
        Idempotency::Done(_)
    ));
    let end = Instant::now() + Duration::from_secs(3);
    loop {
        let a = bus
            .idempotency_begin("erp", "a", "second", long)
            .await
            .unwrap();
        if a == Idempotency::New {
            break;
        }
        assert!(Instant::now() < end, "in-progress key never expired");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    loop {
        let done = bus
            .idempotency_begin("erp", "done", "second", long)
            .await
            .unwrap();
        if done == Idempotency::New {
            break;
        }
        assert!(Instant::now() < end, "completed key never expired");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

async fn get_states_reads_many_keys_in_their_order(kind: Kind) {
    let f = fixture(kind).await;
    let bus = &f.bus;
    for (key, value) in [("SKU-1", "one"), ("SKU-3", "three"), ("SKU-4", "four")] {
        bus.write_state(StateWrite::new("sku", key).set("v", value.as_bytes().to_vec()))
            .await
            .unwrap();
    }
    bus.write_state(StateWrite::new("sku", "SKU-4").set("v", b"four again".to_vec()))
        .await
        .unwrap();
    let keys = ["SKU-4", "SKU-2", "SKU-1", "SKU-3"];
    let many = bus.get_states("sku", &keys).await.unwrap();
    let mut one_by_one = Vec::new();
    for key in keys {
        one_by_one.push(bus.get_state("sku", key).await.unwrap());
    }
    assert_eq!(many, one_by_one);
    let values: Vec<Option<&[u8]>> = many
        .iter()
        .map(|r| r.as_ref().map(|r| r.fields["v"].as_ref()))
        .collect();
    assert_eq!(
        values,
        [Some(&b"four again"[..]), None, Some(b"one"), Some(b"three")]
    );
    assert_eq!(many[0].as_ref().unwrap().version, 2);
    assert!(bus.get_states::<&str>("sku", &[]).await.unwrap().is_empty());
    assert!(bus.get_states("sku", &["SKU-1", ""]).await.is_err());
}

async fn compare_and_set_detects_conflicts(kind: Kind) {
    let f = fixture(kind).await;
    let bus = &f.bus;
    assert_eq!(bus.get_state("sku", "SKU-1").await.unwrap(), None);
    let create = StateWrite::new("sku", "SKU-1")
        .expect_version(0)
        .set("stock", "10")
        .set("product", Bytes::from_static(&[0, 159, 146, 150]));
    assert_eq!(bus.write_state(create.clone()).await.unwrap(), 1);
    match bus.write_state(create).await {
        Err(BusError::Conflict {
            key,
            expected,
            current,
        }) => {
            assert_eq!((key.as_str(), expected, current), ("sku/SKU-1", 0, 1));
        }
        other => panic!("expected a conflict, got {other:?}"),
    }
    let update = StateWrite::new("sku", "SKU-1")
        .expect_version(1)
        .set("stock", "7")
        .set("velocity", "2.5");
    assert_eq!(bus.write_state(update.clone()).await.unwrap(), 2);
    assert!(matches!(
        bus.write_state(update).await,
        Err(BusError::Conflict { current: 2, .. })
    ));
    let unchecked = StateWrite::new("sku", "SKU-1").remove("velocity");
    assert_eq!(bus.write_state(unchecked).await.unwrap(), 3);
    let record = bus.get_state("sku", "SKU-1").await.unwrap().unwrap();
    assert_eq!(record.version, 3);
    assert_eq!(
        record.fields.keys().map(String::as_str).collect::<Vec<_>>(),
        ["product", "stock"]
    );
    assert_eq!(record.fields["stock"], Bytes::from_static(b"7"));
    assert_eq!(
        record.fields["product"],
        Bytes::from_static(&[0, 159, 146, 150])
    );
    assert!(matches!(
        bus.delete_state("sku", "SKU-1", Expect::Version(2)).await,
        Err(BusError::Conflict { current: 3, .. })
    ));
    assert!(
        bus.delete_state("sku", "SKU-1", Expect::Version(3))
            .await
            .unwrap()
    );
    assert!(!bus.delete_state("sku", "SKU-1", Expect::Any).await.unwrap());
    assert_eq!(bus.get_state("sku", "SKU-1").await.unwrap(), None);
    // Namespaces are separate.
    assert_eq!(
        bus.write_state(StateWrite::new("partner", "SKU-1").expect_version(0))
            .await
            .unwrap(),
        1
    );
}

async fn write_and_publish_is_atomic(kind: Kind) {
    let f = fixture(kind).await;
    let bus = &f.bus;
    let write = |v: u64| {
        StateWrite::new("rate", "SKU-1")
            .expect_version(v)
            .set("card", format!("card-{}", v + 1))
    };
    let (v, appended) = bus
        .write_state_and_publish(write(0), "rates", Event::new("SKU-1", "1"))
        .await
        .unwrap();
    assert_eq!(v, 1);
    assert_eq!(appended.partition, bus.partition_of("SKU-1"));
    let end = bus.end_cursor("rates").await.unwrap();
    // A failed version check writes neither the state nor the event.
    assert!(matches!(
        bus.write_state_and_publish(write(0), "rates", Event::new("SKU-1", "x"))
            .await,
        Err(BusError::Conflict { current: 1, .. })
    ));
    assert_eq!(bus.end_cursor("rates").await.unwrap(), end);
    let (events, _) = bus.read_after("rates", &end, 100).await.unwrap();
    assert!(events.is_empty());
    let record = bus.get_state("rate", "SKU-1").await.unwrap().unwrap();
    assert_eq!(
        (record.version, &record.fields["card"][..]),
        (1, &b"card-1"[..])
    );
    // The event must live in the state key's partition.
    let (a, b) = keys_in_different_partitions(bus);
    assert!(matches!(
        bus.write_state_and_publish(StateWrite::new("rate", a), "rates", Event::new(b, "x"))
            .await,
        Err(BusError::InvalidInput(_))
    ));
    assert_eq!(bus.end_cursor("rates").await.unwrap(), end);
    let (events, _) = bus
        .read_after("rates", &bus.start_cursor(), 100)
        .await
        .unwrap();
    assert_eq!(events.len(), 1);
    assert_eq!(events[0].id, appended.id);
}

async fn write_states_checks_each_record_and_writes_the_rest(kind: Kind) {
    let f = fixture(kind).await;
    let bus = &f.bus;
    let limits = HistoryLimits {
        keep_since_us: 0,
        max_versions: 10,
    };
    // Forty SKUs over every partition, each created at version 1.
    let skus: Vec<String> = (0..40).map(|i| format!("SKU-B{i}")).collect();
    for sku in &skus {
        bus.write_state(StateWrite::new("rate", sku).set("card", b"v1".to_vec()))
            .await
            .unwrap();
    }
    let start = bus.end_cursor("rates").await.unwrap();
    let (a, b) = keys_in_different_partitions(bus);
    let mut writes = Vec::new();
    for (i, sku) in skus.iter().enumerate() {
        // Every fourth SKU expects a version it does not have (and has events that must
        // not be appended).
        let expected = if i % 4 == 2 { 7 } else { 1 };
        let write = StateWrite::new("rate", sku)
            .expect_version(expected)
            .remove("gone")
            .set_kept("card", format!("{sku} v2"), 1_000 + i as i64, 2, limits);
        // Even SKUs publish one event, every eighth two.
        let events = match i % 8 {
            0 => vec![
                Event::new(sku.as_str(), format!("{sku} a")),
                Event::new(sku.as_str(), format!("{sku} b")),
            ],
            n if n % 2 == 0 => vec![Event::new(sku.as_str(), format!("{sku} a"))],
            _ => Vec::new(),
        };
        let publish = (!events.is_empty()).then_some(("rates", events));
        writes.push((write, publish));
    }
    // A new key, and an event outside its state key's partition.
    writes.push((
        StateWrite::new("rate", "SKU-NEW")
            .expect_version(0)
            .set("card", b"new".to_vec()),
        None,
    ));
    writes.push((
        StateWrite::new("rate", a.clone()),
        Some((
            "rates",
            vec![Event::new(a.as_str(), "x"), Event::new(b, "x")],
        )),
    ));
    let results = bus.write_states(writes).await;
    assert_eq!(results.len(), skus.len() + 2);
    let mut published = BTreeSet::new();
    let mut appended_total = 0;
    for (i, sku) in skus.iter().enumerate() {
        let record = bus.get_state("rate", sku).await.unwrap().unwrap();
        let history = bus.history_at("rate", sku, 1_000_000).await.unwrap();
        if i % 4 == 2 {
            assert!(
                matches!(
                    results[i],
                    Err(BusError::Conflict {
                        current: 1,
                        expected: 7,
                        ..
                    })
                ),
                "{sku}: {:?}",
                results[i]
            );
            assert_eq!(record.version, 1);
            assert_eq!(&record.fields["card"][..], b"v1");
            assert_eq!(
                history.found, None,
                "{sku}: a conflicting write keeps no version"
            );
            continue;
        }
        let (version, appended) = results[i].as_ref().unwrap();
        assert_eq!((*version, record.version), (2, 2), "{sku}");
        assert_eq!(record.fields["card"], Bytes::from(format!("{sku} v2")));
        assert_eq!(history.found.map(|e| e.version), Some(2), "{sku}");
        let expected = match i % 8 {
            0 => 2,
            n if n % 2 == 0 => 1,
            _ => 0,
        };
        assert_eq!(appended.len(), expected, "{sku}");
        assert!(
            appended
                .iter()
                .all(|a| a.partition == bus.partition_of(sku))
        );
        assert!(appended.windows(2).all(|w| w[0].id < w[1].id), "{sku}");
        if expected > 0 {
            published.insert(sku.clone());
        }
        appended_total += expected;
    }
    assert_eq!(results[skus.len()].as_ref().unwrap().0, 1);
    assert!(matches!(
        results[skus.len() + 1],
        Err(BusError::InvalidInput(_))
    ));
    assert_eq!(bus.get_state("rate", &a).await.unwrap(), None);
    // Exactly the written records' events were appended, each once, and a scan finds
    // the new key.
    let (events, _) = bus.read_after("rates", &start, 1_000).await.unwrap();
    let keys: Vec<String> = events.iter().map(|d| d.key.clone()).collect();
    assert_eq!(keys.iter().cloned().collect::<BTreeSet<_>>(), published);
    assert_eq!(keys.len(), appended_total);
    for pair in events.windows(2).filter(|w| w[0].key == w[1].key) {
        assert_eq!(
            (&pair[0].payload[..], &pair[1].payload[..]),
            (
                format!("{} a", pair[0].key).as_bytes(),
                format!("{} b", pair[0].key).as_bytes()
            )
        );
    }
    let page = bus.scan_states("rate", None, 1_000).await.unwrap();
    assert!(page.items.iter().any(|(k, _)| k == "SKU-NEW"));
    assert_eq!(page.items.len(), skus.len() + 1);
    assert!(bus.write_states(Vec::new()).await.is_empty());
}

async fn write_and_publish_is_atomic_under_concurrent_writers(kind: Kind) {
    let f = fixture(kind).await;
    let bus = f.bus.clone();
    const WRITERS: u64 = 6;
    const WRITES_EACH: u64 = 20;
    let stop = Arc::new(AtomicBool::new(false));
    // A reader that checks "no event without its state" while writers run.
    let reader = {
        let bus = bus.clone();
        let stop = stop.clone();
        tokio::spawn(async move {
            let mut tail = bus.tail("rates", bus.start_cursor()).unwrap();
            let mut seen = 0u64;
            while !stop.load(Ordering::Relaxed) || seen < WRITERS * WRITES_EACH {
                for d in tail.next_batch().await.unwrap() {
                    let version = payload_u64(&d);
                    let state = bus.get_state("rate", &d.key).await.unwrap().unwrap();
                    assert!(
                        state.version >= version,
                        "event for version {version} visible before its state ({})",
                        state.version
                    );
                    seen += 1;
                }
            }
            seen
        })
    };
    let mut writers = Vec::new();
    for w in 0..WRITERS {
        let bus = bus.clone();
        writers.push(tokio::spawn(async move {
            let mut done = 0;
            let mut conflicts = 0;
            while done < WRITES_EACH {
                let current = bus
                    .get_state("rate", "SKU-hot")
                    .await
                    .unwrap()
                    .map_or(0, |r| r.version);
                let next = current + 1;
                let write = StateWrite::new("rate", "SKU-hot")
                    .expect_version(current)
                    .set("card", next.to_string())
                    .set(format!("writer-{w}"), next.to_string());
                match bus
                    .write_state_and_publish(
                        write,
                        "rates",
                        Event::new("SKU-hot", next.to_string()),
                    )
                    .await
                {
                    Ok((v, _)) => {
                        assert_eq!(v, next);
                        done += 1;
                    }
                    Err(BusError::Conflict { .. }) => conflicts += 1,
                    Err(e) => panic!("write failed: {e}"),
                }
            }
            conflicts
        }));
    }
    for w in writers {
        w.await.unwrap();
    }
    stop.store(true, Ordering::Relaxed);
    let seen = tokio::time::timeout(Duration::from_secs(10), reader)
        .await
        .expect("reader finished")
        .unwrap();
    let total = WRITERS * WRITES_EACH;
    assert_eq!(seen, total);
    // No state without its event: exactly one event per version, in version order.
    let record = bus.get_state("rate", "SKU-hot").await.unwrap().unwrap();
    assert_eq!(record.version, total);
    let mut cursor = bus.start_cursor();
    let mut versions = Vec::new();
    loop {
        let (batch, next) = bus.read_after("rates", &cursor, 50).await.unwrap();
        if batch.is_empty() {
            break;
        }
        versions.extend(batch.iter().map(payload_u64));
        cursor = next;
    }
    assert_eq!(versions, (1..=total).collect::<Vec<_>>());
}

async fn tail_reads_from_a_cursor(kind: Kind) {
    let f = fixture(kind).await;
    let bus = f.bus.clone();
    for i in 0..5 {
        bus.publish("rates", Event::new(format!("SKU-{i}"), "old"))
            .await
            .unwrap();
    }
    let mark = bus.end_cursor("rates").await.unwrap();
    let token = mark.to_string();
    for i in 0..7 {
        bus.publish("rates", Event::new(format!("SKU-{i}"), format!("new-{i}")))
            .await
            .unwrap();
    }
    // Resume from the token a client handed back.
    let resumed = bus.parse_cursor(&token).unwrap();
    let mut tail = bus.tail("rates", resumed).unwrap();
    let mut got = Vec::new();
    let end = Instant::now() + Duration::from_secs(5);
    while got.len() < 7 {
        assert!(Instant::now() < end);
        got.extend(tail.next_batch().await.unwrap());
    }
    assert_eq!(got.len(), 7);
    assert!(
        got.iter()
            .all(|d| d.payload.starts_with(b"new-") && d.delivery_count == 0)
    );
    assert!(
        tail.cursor()
            .covers(&bus.end_cursor("rates").await.unwrap())
    );
    // Nothing more: an empty batch after the block time.
    assert!(tail.next_batch().await.unwrap().is_empty());
    // A blocked tail wakes up for a new entry.
    let publisher = {
        let bus = bus.clone();
        tokio::spawn(async move {
            tokio::time::sleep(Duration::from_millis(30)).await;
            bus.publish("rates", Event::new("SKU-late", "late"))
                .await
                .unwrap()
        })
    };
    let mut late = Vec::new();
    while late.is_empty() {
        assert!(Instant::now() < end);
        late = tail.next_batch().await.unwrap();
    }
    assert_eq!(late[0].id, publisher.await.unwrap().id);
    // Reading from the start sees everything; a bad token is rejected.
    let (all, _) = bus
        .read_after("rates", &bus.start_cursor(), 100)
        .await
        .unwrap();
    assert_eq!(all.len(), 13);
    assert!(matches!(
        bus.parse_cursor("nonsense"),
        Err(BusError::InvalidInput(_))
    ));
    assert!(
        bus.parse_cursor(&ratemesh_bus::Cursor::start(2).to_string())
            .is_err()
    );
}

async fn trimming_keeps_entries_groups_still_need(kind: Kind) {
    let f = fixture(kind).await;
    let bus = &f.bus;
    let fast = bus.consumer("stock", "fast", "c1").await.unwrap();
    let slow = bus.consumer("stock", "slow", "c1").await.unwrap();
    for i in 0..20u64 {
        bus.publish("stock", Event::new("SKU-1", i.to_string()))
            .await
            .unwrap();
    }
    let everything = Retention {
        max_len_per_partition: Some(0),
        max_age: None,
    };
    let got = collect_until(&fast, Duration::from_secs(5), |g| g.len() >= 20).await;
    fast.ack(&got[..15]).await.unwrap();
    // `slow` has not read anything yet: nothing may go.
    assert_eq!(bus.trim("stock", everything).await.unwrap(), 0);
    let slow_got = collect_until(&slow, Duration::from_secs(5), |g| g.len() >= 20).await;
    slow.ack(&slow_got).await.unwrap();
    // Now only `fast`'s five pending entries hold the line.
    assert_eq!(bus.trim("stock", everything).await.unwrap(), 15);
    let stats = bus.stream_stats("stock", "fast").await.unwrap();
    assert_eq!((stats.length, stats.pending), (5, 5));
    // The pending entries are still there to be reclaimed and handled.
    let reclaimed = collect_until(&fast, Duration::from_secs(5), |g| g.len() >= 5).await;
    let want: Vec<u64> = (15..20).collect();
    assert_eq!(reclaimed.iter().map(payload_u64).collect::<Vec<_>>(), want);
    fast.ack(&reclaimed).await.unwrap();
    // An age policy that keeps the last hour drops nothing.
    let hour = Retention {
        max_len_per_partition: None,
        max_age: Some(Duration::from_secs(3600)),
    };
    assert_eq!(bus.trim("stock", hour).await.unwrap(), 0);
    let two = Retention {
        max_len_per_partition: Some(2),
        max_age: None,
    };
    assert_eq!(bus.trim("stock", two).await.unwrap(), 3);
    assert_eq!(bus.trim("stock", everything).await.unwrap(), 2);
    assert_eq!(bus.stream_stats("stock", "fast").await.unwrap().length, 0);
    // New entries after a full trim keep flowing.
    bus.publish("stock", Event::new("SKU-1", "20"))
        .await
        .unwrap();
    let next = collect_until(&fast, Duration::from_secs(5), |g| !g.is_empty()).await;
    assert_eq!(payload_u64(&next[0]), 20);
}

async fn a_dropped_group_no_longer_holds_trimming_back(kind: Kind) {
    let f = fixture(kind).await;
    let bus = &f.bus;
    let live = bus.consumer("stock", "live", "c1").await.unwrap();
    let gone = bus.consumer("stock", "gone", "c1").await.unwrap();
    for i in 0..10u64 {
        bus.publish("stock", Event::new(format!("SKU-{i}"), i.to_string()))
            .await
            .unwrap();
    }
    let got = collect_until(&live, Duration::from_secs(5), |g| g.len() >= 10).await;
    live.ack(&got).await.unwrap();
    // `gone` took three entries and then stopped, as a consumer that was turned off.
    let taken = collect_until(&gone, Duration::from_secs(5), |g| !g.is_empty()).await;
    let everything = Retention {
        max_len_per_partition: Some(0),
        max_age: None,
    };
    let before = bus.groups("stock").await.unwrap();
    let names: Vec<&str> = before.iter().map(|g| g.group.as_str()).collect();
    assert_eq!(names, ["gone", "live"]);
    let stale = &before[0];
    assert_eq!(stale.pending, taken.len() as u64);
    assert_eq!(stale.undelivered, 10 - taken.len() as u64);
    assert_eq!(before[1].pending + before[1].undelivered, 0);
    assert!(stale.readers >= 1, "its member's lease has not lapsed yet");
    gone.leave().await.unwrap();
    assert_eq!(bus.groups("stock").await.unwrap()[0].readers, 0);
    // The stale group keeps every entry it has not acknowledged.
    assert_eq!(bus.trim("stock", everything).await.unwrap(), 0);

    assert!(bus.drop_group("stock", "gone").await.unwrap());
    let after = bus.groups("stock").await.unwrap();
    assert_eq!(
        after.iter().map(|g| g.group.as_str()).collect::<Vec<_>>(),
        ["live"]
    );
    // Trimming now goes as far as the remaining group allows: everything.
    assert_eq!(bus.trim("stock", everything).await.unwrap(), 10);
    assert_eq!(bus.stream_stats("stock", "live").await.unwrap().length, 0);
    // Dropping it again, or a group that never was, is no error.
    assert!(!bus.drop_group("stock", "gone").await.unwrap());
    assert!(!bus.drop_group("never-written", "archive").await.unwrap());
    assert!(bus.groups("never-written").await.unwrap().is_empty());
    // The remaining group keeps reading.
    bus.publish("stock", Event::new("SKU-1", "10"))
        .await
        .unwrap();
    let next = collect_until(&live, Duration::from_secs(5), |g| !g.is_empty()).await;
    assert_eq!(payload_u64(&next[0]), 10);
}

async fn trimming_far_over_the_limit_removes_all_that_is_over(kind: Kind) {
    let f = fixture(kind).await;
    let bus = &f.bus;
    // Far more than one trim call removes on the Redis backend: it repeats.
    let events: Vec<Event> = (0..5_000u64)
        .map(|i| Event::new("SKU-1", i.to_string()))
        .collect();
    bus.publish_batch("stock", events).await.unwrap();
    let ten = Retention {
        max_len_per_partition: Some(10),
        max_age: None,
    };
    assert_eq!(bus.trim("stock", ten).await.unwrap(), 4_990);
    let (left, _) = bus
        .read_after("stock", &bus.start_cursor(), 100)
        .await
        .unwrap();
    let want: Vec<u64> = (4_990..5_000).collect();
    assert_eq!(left.iter().map(payload_u64).collect::<Vec<_>>(), want);
    assert_eq!(bus.trim("stock", ten).await.unwrap(), 0);
}

async fn a_reader_learns_when_retention_passed_it(kind: Kind) {
    let f = fixture(kind).await;
    let bus = &f.bus;
    let start = bus.start_cursor();
    assert!(
        !bus.trimmed_past("rates", &start).await.unwrap(),
        "no stream yet"
    );
    for i in 0..10u64 {
        bus.publish("rates", Event::new("SKU-1", i.to_string()))
            .await
            .unwrap();
    }
    assert!(
        !bus.trimmed_past("rates", &start).await.unwrap(),
        "nothing trimmed"
    );
    // Readers that have seen 3, 8 and all 10 entries of the one partition in use.
    let (_, after_3) = bus.read_after("rates", &start, 3).await.unwrap();
    let (_, after_8) = bus.read_after("rates", &after_3, 5).await.unwrap();
    let end = bus.end_cursor("rates").await.unwrap();
    // No group holds the stream back: keeping two per partition drops the first eight.
    let two = Retention {
        max_len_per_partition: Some(2),
        max_age: None,
    };
    assert_eq!(bus.trim("rates", two).await.unwrap(), 8);
    assert!(bus.trimmed_past("rates", &start).await.unwrap());
    assert!(bus.trimmed_past("rates", &after_3).await.unwrap());
    assert!(
        !bus.trimmed_past("rates", &after_8).await.unwrap(),
        "saw all removed"
    );
    assert!(!bus.trimmed_past("rates", &end).await.unwrap());
    // What is left is still read from the reader that saw everything removed.
    let (rest, _) = bus.read_after("rates", &after_8, 10).await.unwrap();
    assert_eq!(rest.iter().map(payload_u64).collect::<Vec<_>>(), [8, 9]);
    assert!(matches!(
        bus.trimmed_past("rates", &ratemesh_bus::Cursor::start(1))
            .await,
        Err(BusError::InvalidInput(_))
    ));
}

async fn stats_report_backlog_and_end_cursor(kind: Kind) {
    let f = fixture(kind).await;
    let bus = &f.bus;
    assert_eq!(bus.end_cursor("stock").await.unwrap(), bus.start_cursor());
    let consumer = bus.consumer("stock", "rates", "c1").await.unwrap();
    let mut last = None;
    for i in 0..10u64 {
        last = Some(
            bus.publish("stock", Event::new(format!("SKU-{i}"), "x"))
                .await
                .unwrap(),
        );
    }
    let last = last.unwrap();
    assert_eq!(
        bus.end_cursor("stock").await.unwrap().get(last.partition),
        last.id
    );
    let s = bus.stream_stats("stock", "rates").await.unwrap();
    assert_eq!(
        (s.length, s.undelivered, s.pending, s.backlog),
        (10, 10, 0, 10)
    );
    let got = collect_until(&consumer, Duration::from_secs(5), |g| g.len() >= 10).await;
    consumer.ack(&got[..4]).await.unwrap();
    for i in 0..5u64 {
        bus.publish("stock", Event::new(format!("SKU-{i}"), "y"))
            .await
            .unwrap();
    }
    let s = bus.stream_stats("stock", "rates").await.unwrap();
    assert_eq!(
        (s.length, s.undelivered, s.pending, s.backlog),
        (15, 5, 6, 11)
    );
    // A group that does not exist yet has everything ahead of it.
    let s = bus.stream_stats("stock", "nobody").await.unwrap();
    assert_eq!((s.backlog, s.pending), (15, 0));
}

async fn scan_states_visits_every_key_once(kind: Kind) {
    let f = fixture(kind).await;
    let bus = &f.bus;
    for i in 0..30 {
        bus.write_state(StateWrite::new("sku", format!("SKU-{i}")).set("n", i.to_string()))
            .await
            .unwrap();
    }
    for i in 0..3 {
        bus.write_state(StateWrite::new("other", format!("SKU-{i}")))
            .await
            .unwrap();
    }
    bus.delete_state("sku", "SKU-7", Expect::Any).await.unwrap();
    let mut seen = HashSet::new();
    let mut page = None;
    let mut pages = 0;
    loop {
        let p = bus.scan_states("sku", page.as_deref(), 7).await.unwrap();
        assert!(p.items.len() <= 7);
        for (k, r) in &p.items {
            assert_eq!(r.version, 1);
            assert_eq!(
                r.fields["n"],
                Bytes::from(k.trim_start_matches("SKU-").to_owned())
            );
            assert!(seen.insert(k.clone()), "{k} seen twice");
        }
        pages += 1;
        assert!(pages < 50);
        match p.next {
            Some(next) => page = Some(next),
            None => break,
        }
    }
    let want: HashSet<String> = (0..30)
        .filter(|i| *i != 7)
        .map(|i| format!("SKU-{i}"))
        .collect();
    assert_eq!(seen, want);
    assert!(bus.scan_states("sku", Some("garbage"), 7).await.is_err());
}

async fn unlisted_records_are_read_by_key_and_never_scanned(kind: Kind) {
    let f = fixture(kind).await;
    let bus = &f.bus;
    for i in 0..12 {
        let write = StateWrite::new("sku", format!("SKU-{i}")).set("n", i.to_string());
        let write = if i % 3 == 0 { write } else { write.unlisted() };
        bus.write_state(write).await.unwrap();
    }
    // Listing is decided when the record is created: a later write does not change it.
    bus.write_state(StateWrite::new("sku", "SKU-1").set("n", "again"))
        .await
        .unwrap();
    bus.write_state(StateWrite::new("sku", "SKU-3").unlisted())
        .await
        .unwrap();
    let mut listed = Vec::new();
    let mut page = None;
    loop {
        let p = bus.scan_states("sku", page.as_deref(), 2).await.unwrap();
        listed.extend(p.items.into_iter().map(|(k, _)| k));
        match p.next {
            Some(next) => page = Some(next),
            None => break,
        }
    }
    listed.sort();
    assert_eq!(listed, ["SKU-0", "SKU-3", "SKU-6", "SKU-9"]);
    let got = bus
        .get_states("sku", &["SKU-1", "SKU-2", "SKU-3"])
        .await
        .unwrap();
    let n = |i: usize| got[i].as_ref().map(|r| (r.version, r.fields["n"].clone()));
    assert_eq!(n(0), Some((2, Bytes::from("again"))));
    assert_eq!(n(1), Some((1, Bytes::from("2"))));
    assert_eq!(n(2), Some((2, Bytes::from("3"))));
}

/// Every key of a scan, page by page (`group` picks a group scan), sorted.
async fn scanned(bus: &Bus, group: Option<&str>, page_size: usize) -> Vec<String> {
    let mut keys = Vec::new();
    let mut page = None;
    loop {
        let p = match group {
            Some(g) => bus.scan_group("sku", g, page.as_deref(), page_size).await,
            None => bus.scan_states("sku", page.as_deref(), page_size).await,
        }
        .unwrap();
        keys.extend(p.items.into_iter().map(|(k, _)| k));
        match p.next {
            Some(next) => page = Some(next),
            None => break,
        }
    }
    keys.sort();
    keys
}

async fn grouped_records_are_scanned_by_group(kind: Kind) {
    let f = fixture(kind).await;
    let bus = &f.bus;
    let key = |i: usize| format!("SKU-{i:02}");
    // Groups by i % 3; every fourth ungrouped; every fifth created unlisted.
    for i in 0..30 {
        let mut write = StateWrite::new("sku", key(i)).set("n", i.to_string());
        if i % 4 != 0 {
            write = write.listed_in(format!("cat-{}", i % 3));
        }
        if i % 5 == 0 {
            write = write.unlisted();
        }
        bus.write_state(write).await.unwrap();
    }
    let listed = |i: &usize| !i.is_multiple_of(5);
    let in_group = |g: usize| {
        (0..30)
            .filter(|i| listed(i) && i % 4 != 0 && i % 3 == g)
            .map(key)
            .collect::<Vec<_>>()
    };
    for g in 0..3 {
        assert_eq!(
            scanned(bus, Some(&format!("cat-{g}")), 3).await,
            in_group(g)
        );
    }
    assert_eq!(scanned(bus, Some("cat-9"), 3).await, Vec::<String>::new());
    let all: Vec<String> = (0..30).filter(listed).map(key).collect();
    assert_eq!(scanned(bus, None, 4).await, all);

    // A write naming another group moves the record; one naming none leaves it; an
    // ungrouped record joins the group it is given; an unlisted one stays unlisted.
    bus.write_state(StateWrite::new("sku", key(1)).listed_in("cat-2"))
        .await
        .unwrap();
    bus.write_state(StateWrite::new("sku", key(2)).set("n", "again"))
        .await
        .unwrap();
    bus.write_state(StateWrite::new("sku", key(4)).listed_in("cat-2"))
        .await
        .unwrap();
    bus.write_state(StateWrite::new("sku", key(10)).listed_in("cat-2"))
        .await
        .unwrap();
    let mut cat2 = in_group(2);
    cat2.extend([key(1), key(4)]);
    cat2.sort();
    assert_eq!(scanned(bus, Some("cat-2"), 2).await, cat2);
    assert!(!scanned(bus, Some("cat-1"), 2).await.contains(&key(1)));
    assert_eq!(scanned(bus, None, 7).await, all);
    let got = bus.get_states("sku", &[key(1), key(2)]).await.unwrap();
    assert_eq!(got[0].as_ref().map(|r| r.version), Some(2));
    assert_eq!(
        got[1].as_ref().map(|r| r.fields["n"].clone()),
        Some(Bytes::from("again"))
    );

    // Deleting a record takes it out of its group.
    assert!(bus.delete_state("sku", &key(1), Expect::Any).await.unwrap());
    assert!(!scanned(bus, Some("cat-2"), 2).await.contains(&key(1)));
    assert!(!scanned(bus, None, 7).await.contains(&key(1)));

    // The NUL byte separates group from key in the index: neither may hold one.
    for write in [
        StateWrite::new("sku", "SKU-x").listed_in("cat\0x"),
        StateWrite::new("sku", "SKU\0x").listed_in("cat-0"),
    ] {
        let err = bus.write_state(write).await.unwrap_err();
        assert!(
            matches!(&err, BusError::InvalidInput(m) if m.contains("NUL")),
            "{err}"
        );
    }
    assert!(bus.scan_group("sku", "", None, 5).await.is_err());
}

async fn scheduler_fires_each_timer_once(kind: Kind) {
    let f = fixture(kind).await;
    let bus = f.bus.clone();
    let now = SystemTime::now();
    let past = now - Duration::from_secs(1);
    for i in 0..50 {
        bus.schedule("expiry", &format!("incentive-{i}"), past)
            .await
            .unwrap();
    }
    // The other half, and one far ahead, in one step.
    let many: Vec<(String, SystemTime)> = (50..100)
        .map(|i| (format!("incentive-{i}"), past))
        .chain([("future".to_owned(), now + Duration::from_secs(3600))])
        .collect();
    bus.schedule_many("expiry", &many).await.unwrap();
    bus.schedule_many::<&str>("expiry", &[]).await.unwrap();
    assert!(bus.schedule_many("expiry", &[("", past)]).await.is_err());
    // Upsert: moving a timer into the future keeps it from firing.
    bus.schedule("expiry", "incentive-99", now + Duration::from_secs(3600))
        .await
        .unwrap();
    assert!(bus.cancel("expiry", "incentive-98").await.unwrap());
    assert!(!bus.cancel("expiry", "incentive-98").await.unwrap());
    let claimers: Vec<_> = (0..2)
        .map(|_| {
            let bus = bus.clone();
            tokio::spawn(async move {
                let mut mine = Vec::new();
                loop {
                    let batch = bus.claim_due("expiry", SystemTime::now(), 7).await.unwrap();
                    if batch.is_empty() {
                        return mine;
                    }
                    mine.extend(batch);
                }
            })
        })
        .collect();
    let mut all = Vec::new();
    for c in claimers {
        all.extend(c.await.unwrap());
    }
    let members: Vec<&str> = all.iter().map(|t| t.member.as_str()).collect();
    let unique: BTreeSet<&str> = members.iter().copied().collect();
    assert_eq!(members.len(), unique.len(), "a timer fired twice");
    assert_eq!(unique.len(), 98);
    assert!(!unique.contains("future") && !unique.contains("incentive-99"));
    let past_ms = past
        .duration_since(SystemTime::UNIX_EPOCH)
        .unwrap()
        .as_millis() as u64;
    assert!(all.iter().all(|t| t.due_at_ms == past_ms));
    let later = bus
        .claim_due("expiry", now + Duration::from_secs(7200), 10)
        .await
        .unwrap();
    let later: BTreeSet<String> = later.into_iter().map(|t| t.member).collect();
    assert_eq!(
        later,
        BTreeSet::from(["future".to_owned(), "incentive-99".to_owned()])
    );
}

async fn bad_names_and_keys_are_rejected(kind: Kind) {
    let f = fixture(kind).await;
    let bus = &f.bus;
    assert!(matches!(
        bus.publish("bad:stream", Event::new("k", "x")).await,
        Err(BusError::InvalidInput(_))
    ));
    assert!(matches!(
        bus.publish("stock", Event::new("", "x")).await,
        Err(BusError::InvalidInput(_))
    ));
    assert!(matches!(
        bus.consumer("stock", "{group}", "c").await,
        Err(BusError::InvalidInput(_))
    ));
    assert!(bus.tail("stock", ratemesh_bus::Cursor::start(1)).is_err());
    assert!(*bus.connected().borrow());
}

async fn traceparent_travels_with_the_entry(kind: Kind) {
    use opentelemetry::trace::TracerProvider as _;
    use tracing_subscriber::layer::SubscriberExt;

    let provider = opentelemetry_sdk::trace::SdkTracerProvider::builder().build();
    let subscriber = tracing_subscriber::registry()
        .with(tracing_opentelemetry::layer().with_tracer(provider.tracer("conformance")));
    let _guard = tracing::subscriber::set_default(subscriber);

    let f = fixture(kind).await;
    let bus = &f.bus;
    let consumer = bus.consumer("stock", "rates", "c1").await.unwrap();
    let producer = tracing::info_span!("ingest.push_stock");
    let sent = {
        let _entered = producer.enter();
        ratemesh_bus::trace_context::current_traceparent().expect("a traceparent")
    };
    let publish = async {
        bus.publish("stock", Event::new("SKU-1", "traced"))
            .await
            .unwrap();
    };
    tracing::Instrument::instrument(publish, producer.clone()).await;
    // An explicit traceparent wins over the current span.
    let explicit = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";
    bus.publish(
        "stock",
        Event::new("SKU-1", "explicit").with_traceparent(explicit),
    )
    .await
    .unwrap();
    let got = collect_until(&consumer, Duration::from_secs(5), |g| g.len() >= 2).await;
    // The entry carries the publisher's trace (through the append's PRODUCER span).
    let appended = got[0].traceparent.as_deref().expect("a traceparent");
    assert_eq!(&appended[3..35], &sent[3..35], "same trace id");
    assert_eq!(got[1].traceparent.as_deref(), Some(explicit));
    // Consuming continues the producer's trace.
    let consume_span = got[0].span();
    let continued = ratemesh_bus::trace_context::traceparent_of(&consume_span).unwrap();
    assert_eq!(&continued[3..35], &sent[3..35], "same trace id");
    assert_ne!(&continued[36..52], &sent[36..52], "a new span id");
}

/// Kept versions answer "which version was current at t" for any t, survive nothing but
/// their limits, and are written in the same atomic step as the state (a failed version
/// check keeps nothing).
async fn history_keeps_versions_within_their_limits(kind: Kind) {
    let fx = fixture(kind).await;
    let bus = &fx.bus;
    let limits = HistoryLimits {
        keep_since_us: 0,
        max_versions: 3,
    };
    let card = |version: u64| Bytes::from(format!("card v{version}"));
    let lookup = bus.history_at("rate", "SKU-H", 5_000).await.unwrap();
    assert_eq!(lookup.found, None);
    assert_eq!(lookup.oldest, None);

    // v1 at 1000, v2 at 2000, v3 and v4 in the same microsecond 3000.
    let mut version = 0;
    for (v, at) in [(1, 1_000), (2, 2_000), (3, 3_000)] {
        let write = StateWrite::new("rate", "SKU-H")
            .expect_version(version)
            .set_kept("card", card(v), at, v, limits);
        version = bus.write_state(write).await.unwrap();
    }
    let at = |t: i64| async move {
        bus.history_at("rate", "SKU-H", t)
            .await
            .unwrap()
            .found
            .map(|e| e.version)
    };
    assert_eq!(at(999).await, None);
    assert_eq!(at(1_000).await, Some(1));
    assert_eq!(at(1_999).await, Some(1));
    assert_eq!(at(2_500).await, Some(2));
    assert_eq!(at(9_999).await, Some(3));
    let found = bus.history_at("rate", "SKU-H", 2_000).await.unwrap();
    assert_eq!(found.found.unwrap().payload, Bytes::from_static(b"card v2"));
    assert_eq!(found.oldest, Some((1, 1_000)));

    // A failed version check keeps no version.
    let stale = StateWrite::new("rate", "SKU-H")
        .expect_version(version - 1)
        .set_kept("card", b"lost".to_vec(), 2_500, 9, limits);
    assert!(matches!(
        bus.write_state(stale).await,
        Err(BusError::Conflict { .. })
    ));
    assert_eq!(at(2_600).await, Some(2));

    // The same instant: the higher version wins. Beyond max_versions the oldest goes.
    let write = StateWrite::new("rate", "SKU-H")
        .expect_version(version)
        .set_kept("card", card(4), 3_000, 4, limits);
    let (version, _) = bus
        .write_state_and_publish(write, "rates", Event::new("SKU-H", b"v4".to_vec()))
        .await
        .unwrap();
    assert_eq!(at(3_000).await, Some(4));
    let lookup = bus.history_at("rate", "SKU-H", 1_500).await.unwrap();
    assert_eq!(lookup.found, None, "v1 is beyond the 3 versions kept");
    assert_eq!(lookup.oldest, Some((2, 2_000)));

    // The horizon drops versions superseded before it, keeping the one current at it.
    let write = StateWrite::new("rate", "SKU-H")
        .expect_version(version)
        .set_kept(
            "card",
            card(5),
            10_000,
            5,
            HistoryLimits {
                keep_since_us: 5_000,
                max_versions: 10,
            },
        );
    bus.write_state(write).await.unwrap();
    let lookup = bus.history_at("rate", "SKU-H", 5_000).await.unwrap();
    assert_eq!(lookup.found.map(|e| e.version), Some(4));
    assert_eq!(lookup.oldest, Some((4, 3_000)));
    assert_eq!(at(10_000).await, Some(5));
    // Each kept version answers with its own payload, the current one too.
    for (t, v) in [(3_000, 4), (12_000, 5)] {
        let found = bus.history_at("rate", "SKU-H", t).await.unwrap().found;
        assert_eq!(found.map(|e| (e.version, e.payload)), Some((v, card(v))));
    }
    let current = bus.get_state("rate", "SKU-H").await.unwrap().unwrap();
    assert_eq!(current.fields["card"], card(5));
    // Other keys have their own history.
    assert_eq!(
        bus.history_at("rate", "SKU-OTHER", 10_000).await.unwrap(),
        Default::default()
    );
    // A deleted record's versions go with it; a record created again starts afresh.
    bus.delete_state("rate", "SKU-H", Expect::Any)
        .await
        .unwrap();
    assert_eq!(
        bus.history_at("rate", "SKU-H", 10_000).await.unwrap(),
        Default::default()
    );
    for (v, at) in [(1, 20_000), (2, 21_000)] {
        let write = StateWrite::new("rate", "SKU-H").set_kept("card", card(v), at, v, limits);
        bus.write_state(write).await.unwrap();
    }
    let lookup = bus.history_at("rate", "SKU-H", 20_500).await.unwrap();
    assert_eq!(lookup.found.map(|e| e.payload), Some(card(1)));
    assert_eq!(lookup.oldest, Some((1, 20_000)));
}

/// The `n` field of a counter record; 0 when absent.
fn counter(record: &Option<ratemesh_bus::StateRecord>) -> u64 {
    record
        .as_ref()
        .and_then(|r| r.fields.get("n"))
        .and_then(|b| std::str::from_utf8(b).ok()?.parse().ok())
        .unwrap_or(0)
}

/// Concurrent read-modify-writes of one record through `update_state` lose no update,
/// and a step that keeps the record writes nothing.
async fn update_state_retries_lost_races_and_loses_no_update(kind: Kind) {
    let fx = fixture(kind).await;
    let bus = fx.bus.clone();
    let writers: Vec<_> = (0..8)
        .map(|_| {
            let bus = bus.clone();
            tokio::spawn(async move {
                for _ in 0..5 {
                    bus.update_state("counter", "c", |current, write| async move {
                        let n = counter(&current);
                        Ok::<_, BusError>(Update::Write(
                            write.set("n", (n + 1).to_string().into_bytes()),
                            (),
                        ))
                    })
                    .await
                    .expect("update");
                }
            })
        })
        .collect();
    for w in writers {
        w.await.unwrap();
    }
    let record = bus.get_state("counter", "c").await.unwrap().unwrap();
    assert_eq!(record.fields["n"], Bytes::from_static(b"40"));
    let kept = bus
        .update_state("counter", "c", |current, _write| async move {
            Ok::<_, BusError>(Update::Keep(current.map(|r| r.version)))
        })
        .await
        .unwrap();
    assert_eq!(kept, Some(record.version));
    assert_eq!(
        bus.get_state("counter", "c")
            .await
            .unwrap()
            .unwrap()
            .version,
        record.version
    );
}

/// Many writers updating one record at the same moment, each racing every other between
/// its read and its write, all get their update in: a writer that keeps losing waits a
/// growing random time, so they spread out instead of colliding again and again (in
/// lockstep, only one of them could win per round, and the last would need as many tries
/// as there are writers).
async fn writers_colliding_on_one_record_all_get_in(kind: Kind) {
    let fx = fixture(kind).await;
    let bus = fx.bus.clone();
    let writers = 2 * ratemesh_bus::CAS_ATTEMPTS;
    let start = Arc::new(tokio::sync::Barrier::new(writers));
    let tasks: Vec<_> = (0..writers)
        .map(|_| {
            let (bus, start) = (bus.clone(), start.clone());
            tokio::spawn(async move {
                start.wait().await;
                bus.update_state("counter", "hot", |current, write| async move {
                    let n = counter(&current);
                    // Let every other writer read before this one writes.
                    tokio::task::yield_now().await;
                    Ok::<_, BusError>(Update::Write(
                        write.set("n", (n + 1).to_string().into_bytes()),
                        (),
                    ))
                })
                .await
            })
        })
        .collect();
    for task in tasks {
        task.await
            .unwrap()
            .expect("every writer gets its update in");
    }
    let record = bus.get_state("counter", "hot").await.unwrap().unwrap();
    assert_eq!(record.fields["n"], writers.to_string().into_bytes());
}

/// `update_state_from` decides first from the record the caller passes; when that record
/// is out of date the write loses the race and the step is asked again with the stored one.
async fn update_state_from_starts_at_the_record_seen(kind: Kind) {
    let fx = fixture(kind).await;
    let bus = fx.bus.clone();
    // Absent, as seen: the first step writes without reading.
    let mut asked = Vec::new();
    bus.update_state_from("counter", "f", None, |current, write| {
        asked.push(current.as_ref().map_or(0, |r| r.version));
        let n = counter(&current);
        async move {
            Ok::<_, BusError>(Update::Write(
                write.set("n", (n + 1).to_string().into_bytes()),
                (),
            ))
        }
    })
    .await
    .unwrap();
    assert_eq!(asked, vec![0]);
    let fresh = bus.get_state("counter", "f").await.unwrap();
    // Another writer moves the record on; the caller still holds version 1.
    bus.write_state(StateWrite::new("counter", "f").set("n", b"10".to_vec()))
        .await
        .unwrap();
    let mut asked = Vec::new();
    let n = bus
        .update_state_from("counter", "f", fresh, |current, write| {
            asked.push(current.as_ref().map_or(0, |r| r.version));
            let n = counter(&current) + 1;
            async move {
                Ok::<_, BusError>(Update::Write(write.set("n", n.to_string().into_bytes()), n))
            }
        })
        .await
        .unwrap();
    assert_eq!(
        asked,
        vec![1, 2],
        "asked from the record seen, then the stored one"
    );
    assert_eq!(n, 11);
    let record = bus.get_state("counter", "f").await.unwrap().unwrap();
    assert_eq!((record.version, &record.fields["n"][..]), (3, &b"11"[..]));
}

/// A record's fields are counted without reading them: only the fields it was given, not
/// what the backend keeps beside them (its version, history, group).
async fn count_state_fields_counts_the_fields_written(kind: Kind) {
    let fx = fixture(kind).await;
    let bus = fx.bus.clone();
    assert_eq!(bus.count_state_fields("dead", "p").await.unwrap(), 0);
    bus.write_state(
        StateWrite::new("dead", "p")
            .set("d1", Vec::new())
            .set("d2", Vec::new()),
    )
    .await
    .unwrap();
    assert_eq!(bus.count_state_fields("dead", "p").await.unwrap(), 2);
    assert_eq!(bus.count_state_fields("dead", "q").await.unwrap(), 0);
    // A record listed under a group, with a kept history.
    let limits = HistoryLimits {
        keep_since_us: 0,
        max_versions: 10,
    };
    for version in 1..=3u64 {
        bus.write_state(
            StateWrite::new("dead", "kept")
                .listed_in("g")
                .set_kept("card", vec![version as u8], version as i64, version, limits)
                .set(format!("n{version}"), Vec::new()),
        )
        .await
        .unwrap();
    }
    assert_eq!(bus.count_state_fields("dead", "kept").await.unwrap(), 4);
    bus.write_state(
        StateWrite::new("dead", "p")
            .remove("d1")
            .set("d3", Vec::new()),
    )
    .await
    .unwrap();
    assert_eq!(bus.count_state_fields("dead", "p").await.unwrap(), 2);
    bus.write_state(StateWrite::new("dead", "p").remove("d2").remove("d3"))
        .await
        .unwrap();
    assert_eq!(bus.count_state_fields("dead", "p").await.unwrap(), 0);
    assert!(bus.count_state_fields("dead", "").await.is_err());
}

/// A few fields of a record are read with its version, and a change decided from them
/// is still checked against the whole record: a write to another field in between is a
/// lost race, and the change is decided again.
async fn update_state_fields_reads_only_the_named_fields(kind: Kind) {
    let fx = fixture(kind).await;
    let bus = fx.bus.clone();
    assert_eq!(
        bus.get_state_fields("outbox", "p", &["a"]).await.unwrap(),
        None
    );
    bus.write_state(
        StateWrite::new("outbox", "p")
            .set("a", b"1".to_vec())
            .set("b", b"2".to_vec())
            .set("c", b"3".to_vec()),
    )
    .await
    .unwrap();
    let some = bus
        .get_state_fields("outbox", "p", &["c", "a", "missing"])
        .await
        .unwrap()
        .unwrap();
    assert_eq!(some.version, 1);
    let names: Vec<&str> = some.fields.keys().map(String::as_str).collect();
    assert_eq!(names, ["a", "c"]);
    assert_eq!(
        (&some.fields["a"][..], &some.fields["c"][..]),
        (&b"1"[..], &b"3"[..])
    );
    let none = bus
        .get_state_fields::<&str>("outbox", "p", &[])
        .await
        .unwrap()
        .unwrap();
    assert_eq!((none.version, none.fields.len()), (1, 0));
    assert!(
        bus.get_state_fields("outbox", "p", &["a", ""])
            .await
            .is_err()
    );
    assert!(bus.get_state_fields("outbox", "", &["a"]).await.is_err());

    let mut asked = Vec::new();
    let attempts = bus
        .update_state_fields("outbox", "p", &["a"], |current, write| {
            let current = current.unwrap();
            let names: Vec<String> = current.fields.keys().cloned().collect();
            asked.push((current.version, names));
            let attempt = asked.len();
            let bus = bus.clone();
            async move {
                if attempt == 1 {
                    // Another writer changes a field this update did not read.
                    bus.write_state(StateWrite::new("outbox", "p").set("b", b"20".to_vec()))
                        .await?;
                }
                let a = [&current.fields["a"][..], b"+"].concat();
                Ok::<_, BusError>(Update::Write(write.set("a", a), attempt))
            }
        })
        .await
        .unwrap();
    let read = vec!["a".to_owned()];
    assert_eq!(
        asked,
        [(1, read.clone()), (2, read)],
        "the lost race is decided again"
    );
    assert_eq!(attempts, 2);
    let record = bus.get_state("outbox", "p").await.unwrap().unwrap();
    assert_eq!(record.version, 3);
    assert_eq!(&record.fields["a"][..], b"1+");
    assert_eq!(&record.fields["b"][..], b"20");
    assert_eq!(&record.fields["c"][..], b"3");
}

/// A record that keeps changing under an update fails it after `CAS_ATTEMPTS` tries as
/// `Unavailable` (retry later), with nothing written by the update itself.
async fn update_state_gives_up_after_cas_attempts(kind: Kind) {
    let fx = fixture(kind).await;
    let bus = fx.bus.clone();
    let mut asked = 0usize;
    let result = bus
        .update_state("counter", "busy", |_current, write| {
            asked += 1;
            let bus = bus.clone();
            async move {
                // Another writer gets in between every read and write.
                bus.write_state(StateWrite::new("counter", "busy").set("other", b"x".to_vec()))
                    .await?;
                Ok::<_, BusError>(Update::Write(write.set("mine", b"y".to_vec()), ()))
            }
        })
        .await;
    assert!(
        matches!(result, Err(BusError::Unavailable(_))),
        "expected Unavailable, got {result:?}"
    );
    assert_eq!(asked, ratemesh_bus::CAS_ATTEMPTS);
    let record = bus.get_state("counter", "busy").await.unwrap().unwrap();
    assert_eq!(record.version, ratemesh_bus::CAS_ATTEMPTS as u64);
    assert!(!record.fields.contains_key("mine"));
}

macro_rules! conformance {
    ($($name:ident),* $(,)?) => {
        mod memory {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $name() {
                    super::$name(super::Kind::Memory).await
                }
            )*
        }
        mod redis {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $name() {
                    super::$name(super::Kind::Redis).await
                }
            )*
        }
        mod cluster {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $name() {
                    super::$name(super::Kind::Cluster).await
                }
            )*
        }
    };
}

conformance!(
    order_within_partition,
    abandoned_entries_are_reclaimed_by_another_consumer,
    each_partition_is_read_by_one_member_at_a_time,
    a_leaving_member_hands_its_partitions_over_at_once,
    nacked_entries_are_dead_lettered_with_their_error_and_replayable,
    unacked_entries_are_dead_lettered_after_max_deliveries,
    idempotency_keys_store_the_first_outcome,
    idempotency_keys_are_held_by_their_owner,
    idempotency_keys_expire,
    get_states_reads_many_keys_in_their_order,
    compare_and_set_detects_conflicts,
    write_and_publish_is_atomic,
    write_states_checks_each_record_and_writes_the_rest,
    write_and_publish_is_atomic_under_concurrent_writers,
    tail_reads_from_a_cursor,
    trimming_keeps_entries_groups_still_need,
    a_reader_learns_when_retention_passed_it,
    trimming_far_over_the_limit_removes_all_that_is_over,
    a_dropped_group_no_longer_holds_trimming_back,
    stats_report_backlog_and_end_cursor,
    scan_states_visits_every_key_once,
    unlisted_records_are_read_by_key_and_never_scanned,
    grouped_records_are_scanned_by_group,
    scheduler_fires_each_timer_once,
    bad_names_and_keys_are_rejected,
    traceparent_travels_with_the_entry,
    history_keeps_versions_within_their_limits,
    update_state_retries_lost_races_and_loses_no_update,
    update_state_from_starts_at_the_record_seen,
    update_state_fields_reads_only_the_named_fields,
    count_state_fields_counts_the_fields_written,
    update_state_gives_up_after_cas_attempts,
    writers_colliding_on_one_record_all_get_in,
);
