//! The archiver writes what the streams carried: stock readings, products and overrides
//! published to the streams come back from the day files as the same core events, once
//! each, on the in-memory bus and on a private `redis-server`; and retention deletes whole
//! days past `retention_days`.

use std::path::Path;
use std::time::Duration;

use chrono::{DateTime, NaiveDate, TimeDelta, Utc};
use ratemesh_archive::{
    ArchiveConfig, GROUP, ReadError, read_range, read_range_within, retention, segment,
};
use ratemesh_bus::testkit::RedisServer;
use ratemesh_bus::{Bus, BusOptions};
use ratemesh_contract::overrides::{override_changed, override_to_proto};
use ratemesh_contract::stock::{
    Origin, ProductRecord, StockReading, product_changed, stock_changed,
};
use ratemesh_contract::streams;
use ratemesh_core::{Event, Override, OverrideKind, OverrideScope, Product, Quantity, Rate, Sku};
use ratemesh_proto::v1;
use rust_decimal::Decimal;
use tokio_util::sync::CancellationToken;

fn at(s: &str) -> DateTime<Utc> {
    DateTime::parse_from_rfc3339(s).unwrap().with_timezone(&Utc)
}

fn options() -> BusOptions {
    BusOptions {
        partitions: 2,
        read_block: Duration::from_millis(20),
        ..BusOptions::default()
    }
}

/// Publishes a day and a half of inputs across midnight; returns the core events the
/// services would decode from them.
async fn publish_inputs(bus: &Bus) -> Vec<Event> {
    let mut published = Vec::new();
    let origin = |received: &str| Origin {
        source: "erp-main",
        batch_id: "b-1",
        received_at: at(received),
    };
    let product = ProductRecord::new(
        Sku::new("A-1").unwrap(),
        Product {
            category: "home".into(),
            price: "20.00".parse().unwrap(),
            unit_cost: "8.00".parse().unwrap(),
            base_rate: None,
        },
        "USD",
    );
    let entry = product_changed(&product, origin("2026-11-26T23:00:00Z"));
    published.push(ratemesh_contract::stock::decode_product(&entry.payload).unwrap());
    bus.publish(streams::STOCK, entry).await.unwrap();
    for (n, (sku, received)) in [
        ("A-1", "2026-11-26T23:30:00Z"),
        ("B-2", "2026-11-26T23:59:59Z"),
        ("A-1", "2026-11-27T00:00:01Z"),
        ("B-2", "2026-11-27T08:00:00Z"),
    ]
    .into_iter()
    .enumerate()
    {
        let reading = StockReading::new(
            Sku::new(sku).unwrap(),
            Quantity::new(Decimal::from(100 - n as i64)).unwrap(),
            at(received) - TimeDelta::minutes(1),
            n as u64 + 1,
        );
        let entry = stock_changed(&reading, origin(received));
        published.push(ratemesh_contract::stock::decode_stock(&entry.payload).unwrap());
        bus.publish(streams::STOCK, entry).await.unwrap();
    }
    let pin = Override {
        id: "ov-1".into(),
        scope: OverrideScope::Category("home".into()),
        kind: OverrideKind::Pin {
            rate: Rate::new("0.05".parse().unwrap()).unwrap(),
        },
        starts_at: at("2026-11-27T06:00:00Z"),
        ends_at: None,
        reason: "bfcm".into(),
        author: "merch".into(),
    };
    let entry = override_changed(
        v1::OverrideAction::Set,
        None,
        override_to_proto(&pin),
        "merch",
        "bfcm",
        at("2026-11-27T06:00:00Z"),
    );
    published.push(
        ratemesh_contract::overrides::decode(&entry.payload)
            .unwrap()
            .1,
    );
    bus.publish(streams::OVERRIDES, entry).await.unwrap();
    published
}

async fn wait_archived(bus: &Bus) {
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    loop {
        let mut settled = true;
        for stream in ratemesh_archive::STREAMS {
            let stats = bus.stream_stats(stream, GROUP).await.unwrap();
            settled &= stats.undelivered == 0 && stats.pending == 0;
        }
        if settled {
            return;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "archive did not catch up"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

async fn archives_what_the_streams_carried(bus: Bus, dir: &Path) {
    let shutdown = CancellationToken::new();
    let task = tokio::spawn(ratemesh_archive::run(
        bus.clone(),
        ArchiveConfig {
            dir: dir.to_owned(),
            retention_days: 400,
            writer: "test-writer".into(),
        },
        shutdown.clone(),
    ));
    let published = publish_inputs(&bus).await;
    wait_archived(&bus).await;
    shutdown.cancel();
    task.await.unwrap().unwrap();

    let names: Vec<String> = segment::list(dir)
        .unwrap()
        .into_iter()
        .map(|f| f.name)
        .collect();
    assert_eq!(
        names,
        [
            "2026-11-26.products.test-writer.jsonl.gz",
            "2026-11-26.stock.test-writer.jsonl.gz",
            "2026-11-27.overrides.test-writer.jsonl.gz",
            "2026-11-27.stock.test-writer.jsonl.gz",
        ]
    );
    let today = NaiveDate::from_ymd_opt(2026, 11, 27).unwrap();
    let extract = read_range(
        dir,
        at("2026-11-26T00:00:00Z"),
        at("2026-11-28T00:00:00Z"),
        today,
    )
    .unwrap();
    let read: Vec<Event> = extract.events.iter().map(|a| a.event.clone()).collect();
    let mut expected = published.clone();
    expected.sort_by_key(Event::priced_at);
    assert_eq!(read, expected);
    assert!(
        extract.missing_days.is_empty(),
        "{:?}",
        extract.missing_days
    );
    assert_eq!(extract.duplicates, 0);

    // A redelivered batch is written again; it is read once.
    let again: Vec<_> = extract
        .events
        .iter()
        .filter(|a| a.record.feed() == "stock")
        .map(|a| a.record.clone())
        .collect();
    segment::append(dir, "other-replica", &again).unwrap();
    let extract = read_range(
        dir,
        at("2026-11-26T00:00:00Z"),
        at("2026-11-28T00:00:00Z"),
        today,
    )
    .unwrap();
    assert_eq!(extract.events.len(), published.len());
    assert_eq!(extract.duplicates, again.len());

    // A range starting after the product record carries it in, with the open override;
    // the day before the archive began is missing.
    let extract = read_range(
        dir,
        at("2026-11-27T07:00:00Z"),
        at("2026-11-28T00:00:00Z"),
        today,
    )
    .unwrap();
    let kinds: Vec<&str> = extract.events.iter().map(|a| a.record.feed()).collect();
    assert_eq!(kinds, ["products", "overrides", "stock"]);
    assert_eq!(extract.carried, 2);
    let extract = read_range(
        dir,
        at("2026-11-25T00:00:00Z"),
        at("2026-11-30T00:00:00Z"),
        today,
    )
    .unwrap();
    assert_eq!(
        extract.missing_days,
        [NaiveDate::from_ymd_opt(2026, 11, 25).unwrap()],
        "days after today are not missing yet"
    );

    // A limit below what the range holds stops the read; at what it holds, it reads all.
    let (since, until) = (at("2026-11-26T00:00:00Z"), at("2026-11-28T00:00:00Z"));
    let all = published.len();
    let refused = read_range_within(dir, since, until, today, all - 1).unwrap_err();
    assert!(
        matches!(refused, ReadError::TooMany { limit } if limit == all - 1),
        "{refused}"
    );
    let extract = read_range_within(dir, since, until, today, all).unwrap();
    assert_eq!(extract.events.len(), all);
}

#[tokio::test]
async fn archives_what_the_in_memory_streams_carried() {
    let dir = tempfile::tempdir().unwrap();
    let bus = Bus::memory(options()).unwrap();
    archives_what_the_streams_carried(bus, dir.path()).await;
}

#[tokio::test]
async fn archives_what_the_redis_streams_carried() {
    let redis = RedisServer::start();
    let dir = tempfile::tempdir().unwrap();
    let bus = Bus::redis(&redis.url(), &redis.unique_prefix(), options())
        .await
        .unwrap();
    archives_what_the_streams_carried(bus, dir.path()).await;
}

#[test]
fn retention_deletes_whole_days_past_the_limit() {
    let dir = tempfile::tempdir().unwrap();
    let day = |d: &str| NaiveDate::parse_from_str(d, "%Y-%m-%d").unwrap();
    for (d, feed) in [
        ("2025-10-27", "stock"),
        ("2025-10-28", "stock"),
        ("2025-10-28", "products"),
        ("2025-11-28", "stock"),
        ("2026-12-01", "stock"),
    ] {
        std::fs::write(dir.path().join(segment::file_name(day(d), feed, "w")), b"").unwrap();
    }
    std::fs::write(dir.path().join("README"), b"kept").unwrap();
    // 400 days before 2026-12-01 is 2025-10-27: that day is kept, the one before is not.
    let deleted = retention::prune(dir.path(), day("2026-12-01"), 400).unwrap();
    assert!(deleted.is_empty(), "{deleted:?}");
    let deleted = retention::prune(dir.path(), day("2026-12-02"), 400).unwrap();
    assert_eq!(deleted.len(), 1, "{deleted:?}");
    let deleted = retention::prune(dir.path(), day("2026-12-03"), 400).unwrap();
    assert_eq!(deleted.len(), 2, "both feeds of the day go: {deleted:?}");
    let left: Vec<String> = segment::list(dir.path())
        .unwrap()
        .into_iter()
        .map(|f| f.name)
        .collect();
    assert_eq!(
        left,
        ["2025-11-28.stock.w.jsonl.gz", "2026-12-01.stock.w.jsonl.gz"]
    );
    assert!(
        dir.path().join("README").exists(),
        "other files are left alone"
    );
}

#[tokio::test]
async fn a_batch_that_cannot_be_written_waits_for_the_disk_and_is_never_nacked() {
    let dir = tempfile::tempdir().unwrap();
    let bus = Bus::memory(options()).unwrap();
    publish_inputs(&bus).await;
    let consumer = bus
        .consumer(streams::STOCK, GROUP, "test-writer")
        .await
        .unwrap();
    let batch = consumer.next_batch().await.unwrap();
    assert_eq!(batch.len(), 5);
    let config = |dir: &Path| {
        std::sync::Arc::new(ArchiveConfig {
            dir: dir.to_owned(),
            retention_days: 400,
            writer: "test-writer".into(),
        })
    };
    // A file where the directory should be: every append fails until it is replaced.
    let blocked = dir.path().join("archive");
    std::fs::write(&blocked, b"").unwrap();

    // Stopped while the disk is unusable: nothing acknowledged, nothing nacked (the
    // entries stay pending for the next start).
    let stop = CancellationToken::new();
    let run = tokio::spawn(ratemesh_archive::archiver::archive_batch(
        config(&blocked),
        streams::STOCK,
        batch.clone(),
        stop.clone(),
    ));
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(
        !run.is_finished(),
        "a failed write is tried again, not given up"
    );
    stop.cancel();
    let settled = run.await.unwrap();
    assert_eq!((settled.ack.len(), settled.nack.len()), (0, 0));

    // The disk comes back while it waits: the batch is written and acknowledged.
    let run = tokio::spawn(ratemesh_archive::archiver::archive_batch(
        config(&blocked),
        streams::STOCK,
        batch,
        CancellationToken::new(),
    ));
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(!run.is_finished());
    std::fs::remove_file(&blocked).unwrap();
    std::fs::create_dir(&blocked).unwrap();
    let settled = run.await.unwrap();
    assert_eq!((settled.ack.len(), settled.nack.len()), (5, 0));
    assert_eq!(segment::list(&blocked).unwrap().len(), 3);
}
