//! The rate table's snapshot: a cold replica loads it and tails the rest, with every card
//! at its latest version and its exact change position; without a usable snapshot it
//! reads every record; one replica at a time writes it, and a new writer's epoch
//! replaces the old one's blocks. On the in-memory backend and a real Redis.

mod read_support;

use std::time::Duration;

use chrono::Utc;
use prost::Message;
use ratemesh_bus::testkit::RedisServer;
use ratemesh_bus::{Bus, BusOptions, Cursor, EntryId, Retention};
use ratemesh_contract::streams;
use ratemesh_proto::v1;
use ratemesh_proto::v1::rate_service_server::RateService;
use ratemesh_rates::RatesSettings;
use ratemesh_rates::read::replica::{BLOCKS, Incoming};
use ratemesh_rates::read::snapshot::{self, Writer};
use ratemesh_rates::read::{Replica, ReplicaOptions, system_clock};
use ratemesh_runtime::Settings;
use read_support::{Reads, card, publish};

const SKUS: usize = 300;

fn sku(i: usize) -> String {
    format!("SKU-{i:03}")
}

fn fast_snapshots() -> Settings {
    let mut s = read_support::settings();
    s.section_mut::<RatesSettings>().snapshot_interval_ms = 50;
    s
}

async fn redis_bus(redis: &RedisServer) -> Bus {
    Bus::redis(
        &redis.url(),
        &redis.unique_prefix(),
        BusOptions {
            partitions: 4,
            read_block: Duration::from_millis(50),
            ..BusOptions::default()
        },
    )
    .await
    .expect("redis bus")
}

fn memory_bus() -> Bus {
    Bus::memory(BusOptions {
        partitions: 4,
        read_block: Duration::from_millis(50),
        ..BusOptions::embedded()
    })
    .expect("memory bus")
}

/// The position the snapshot's head says its blocks are complete up to.
async fn snapshot_cursor(bus: &Bus) -> Option<Cursor> {
    let head = bus
        .get_state(snapshot::NAMESPACE, "head")
        .await
        .expect("head")?;
    let text = std::str::from_utf8(head.fields.get("cursor")?).ok()?;
    Cursor::parse_for(text, bus.partitions()).ok()
}

async fn wait_snapshot_covers(bus: &Bus, position: &Cursor) {
    for _ in 0..200 {
        if snapshot_cursor(bus)
            .await
            .is_some_and(|c| c.covers(position))
        {
            return;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!("the snapshot never covered {position}");
}

/// SKUs listed as changed since `since`.
async fn changed_since(reads: &Reads, since: &Cursor) -> Vec<String> {
    let mut out = Vec::new();
    let mut token = String::new();
    loop {
        let page = reads
            .api
            .list_rates(tonic::Request::new(v1::ListRatesRequest {
                page_size: 1000,
                page_token: token,
                changed_since: since.to_string(),
                category: None,
            }))
            .await
            .expect("list")
            .into_inner();
        out.extend(page.cards.into_iter().map(|c| c.sku));
        if page.next_page_token.is_empty() {
            return out;
        }
        token = page.next_page_token;
    }
}

async fn a_cold_replica_loads_the_snapshot_then_the_tail(bus: Bus) {
    let t0 = Utc::now() - chrono::Duration::hours(1);
    let warm = Reads::build(bus.clone(), fast_snapshots(), system_clock())
        .start()
        .await;
    for i in 0..SKUS {
        let category = if i % 2 == 0 { "toys" } else { "garden" };
        publish(&bus, &card(&sku(i), category, "0.05", 1, t0)).await;
    }
    warm.wait_version(&sku(SKUS - 1), 1).await;
    let snapped = warm.reader.position();
    wait_snapshot_covers(&bus, &snapped).await;
    warm.stop().await;

    // Changes the snapshot does not hold: only the tail brings them.
    let t1 = t0 + chrono::Duration::minutes(1);
    for i in 0..20 {
        publish(&bus, &card(&sku(i), "toys", "0.07", 2, t1)).await;
    }
    publish(&bus, &card("SKU-NEW", "toys", "0.09", 1, t1)).await;

    let cold = Reads::build(bus.clone(), read_support::settings(), system_clock())
        .start()
        .await;
    assert_eq!(cold.reader.snapshot_loads(), 1, "loaded from the snapshot");
    assert_eq!(cold.reader.len(), SKUS + 1);
    for i in 0..SKUS {
        let card = cold.reader.get(&sku(i)).expect("served");
        assert_eq!(card.version, if i < 20 { 2 } else { 1 }, "{}", sku(i));
    }
    assert_eq!(cold.reader.version("SKU-NEW"), Some(1));
    // Cards came with their own change positions: a cursor taken before the last changes
    // lists exactly those, not the whole catalogue.
    let mut listed = changed_since(&cold, &snapped).await;
    listed.sort();
    let mut expected: Vec<String> = (0..20).map(sku).collect();
    expected.push("SKU-NEW".into());
    expected.sort();
    assert_eq!(listed, expected);
    cold.stop().await;
}

#[tokio::test]
async fn a_cold_replica_loads_the_snapshot_then_the_tail_in_memory() {
    a_cold_replica_loads_the_snapshot_then_the_tail(memory_bus()).await;
}

#[tokio::test]
async fn a_cold_replica_loads_the_snapshot_then_the_tail_on_redis() {
    let redis = RedisServer::start();
    a_cold_replica_loads_the_snapshot_then_the_tail(redis_bus(&redis).await).await;
}

async fn a_snapshot_the_stream_was_trimmed_past_is_not_used(bus: Bus) {
    let t0 = Utc::now() - chrono::Duration::hours(1);
    let warm = Reads::build(bus.clone(), fast_snapshots(), system_clock())
        .start()
        .await;
    for i in 0..50 {
        publish(&bus, &card(&sku(i), "toys", "0.05", 1, t0)).await;
    }
    warm.wait_version(&sku(49), 1).await;
    wait_snapshot_covers(&bus, &warm.reader.position()).await;
    warm.stop().await;
    for i in 0..50 {
        publish(&bus, &card(&sku(i), "toys", "0.06", 2, t0)).await;
    }
    // Retention drops every entry: the snapshot's position is gone from the stream.
    bus.trim(
        streams::RATES,
        Retention {
            max_len_per_partition: Some(0),
            max_age: None,
        },
    )
    .await
    .expect("trim");

    let cold = Reads::build(bus.clone(), read_support::settings(), system_clock())
        .start()
        .await;
    assert_eq!(cold.reader.snapshot_loads(), 0, "read every record instead");
    for i in 0..50 {
        assert_eq!(cold.reader.version(&sku(i)), Some(2), "{}", sku(i));
    }
    cold.stop().await;
}

#[tokio::test]
async fn a_snapshot_the_stream_was_trimmed_past_is_not_used_in_memory() {
    a_snapshot_the_stream_was_trimmed_past_is_not_used(memory_bus()).await;
}

#[tokio::test]
async fn a_snapshot_the_stream_was_trimmed_past_is_not_used_on_redis() {
    let redis = RedisServer::start();
    a_snapshot_the_stream_was_trimmed_past_is_not_used(redis_bus(&redis).await).await;
}

/// An empty replica over the tests' four partitions.
fn empty_replica() -> Replica {
    Replica::new(
        ReplicaOptions {
            partitions: 4,
            history_retention: chrono::Duration::days(1),
            watch_buffer: 16,
        },
        system_clock(),
    )
}

/// A loaded replica holding `n` cards.
fn replica_with(n: usize) -> Replica {
    let replica = empty_replica();
    for i in 0..n {
        let bytes = card(&sku(i), "toys", "0.05", 1, Utc::now()).encode_to_vec();
        replica.apply_block_card(
            Incoming::new(&bytes).expect("card"),
            EntryId {
                ms: i as u64 + 1,
                seq: 0,
            },
        );
    }
    replica.set_loaded();
    replica
}

async fn block_exists(bus: &Bus, epoch: u64, bucket: usize) -> bool {
    bus.get_state(snapshot::NAMESPACE, &format!("e{epoch}-b{bucket:04}"))
        .await
        .expect("read")
        .is_some()
}

#[tokio::test]
async fn one_writer_at_a_time_and_a_new_writer_replaces_the_old_epoch() {
    let bus = memory_bus();
    let ttl = Duration::from_secs(60);
    let mut first = Writer::new(bus.clone(), replica_with(200), "first".into(), ttl);
    let mut second = Writer::new(bus.clone(), replica_with(200), "second".into(), ttl);

    let written = first.round().await.expect("round");
    assert!(
        written > 0 && written <= 200.min(BLOCKS),
        "{written} blocks"
    );
    assert!(first.is_writer());
    assert_eq!(second.round().await.expect("round"), 0, "the lease is held");
    assert!(!second.is_writer());
    // Nothing changed: a round only moves the head.
    assert_eq!(first.round().await.expect("round"), 0);
    let bucket = ratemesh_rates::read::replica::bucket_of(sku(0).as_bytes());
    assert!(block_exists(&bus, 1, bucket).await);

    // The writer leaves; the other takes over under a new epoch and drops the old one.
    first.release().await;
    assert_eq!(second.round().await.expect("round"), written);
    assert!(second.is_writer());
    assert!(block_exists(&bus, 2, bucket).await);
    assert!(!block_exists(&bus, 1, bucket).await, "old epoch deleted");
    // The first no longer writes while the second's lease runs.
    assert_wait_free(&mut first).await;

    // A replica loading now reads the second's epoch.
    let cold = empty_replica();
    let loaded = snapshot::load(&bus, &cold)
        .await
        .expect("load")
        .expect("a snapshot");
    assert_eq!(loaded.cards, 200);
    assert_eq!(cold.reader().version(&sku(199)), Some(1));
}

async fn assert_wait_free(writer: &mut Writer) {
    assert_eq!(writer.round().await.expect("round"), 0);
    assert!(!writer.is_writer());
}

#[tokio::test]
async fn a_replica_that_stops_hands_the_snapshot_over() {
    let bus = memory_bus();
    let a = Reads::build(bus.clone(), fast_snapshots(), system_clock())
        .start()
        .await;
    publish(&bus, &card("SKU-A", "toys", "0.05", 1, Utc::now())).await;
    a.wait_version("SKU-A", 1).await;
    wait_snapshot_covers(&bus, &a.reader.position()).await;
    let b = Reads::build(bus.clone(), fast_snapshots(), system_clock())
        .start()
        .await;
    a.stop().await;
    publish(&bus, &card("SKU-B", "toys", "0.05", 1, Utc::now())).await;
    b.wait_version("SKU-B", 1).await;
    // The survivor takes the released lease and keeps the snapshot moving.
    wait_snapshot_covers(&bus, &b.reader.position()).await;
    let cold = empty_replica();
    snapshot::load(&bus, &cold)
        .await
        .expect("load")
        .expect("a snapshot");
    assert_eq!(cold.reader().version("SKU-B"), Some(1));
    b.stop().await;
}
