//! The read path on the in-memory bus: snapshot + tail, point and batch reads, `as_of`
//! history, paged listings with delta sync, and watches (resume, filters, slow watchers,
//! heartbeats, shutdown).

mod read_support;

use std::collections::{BTreeMap, HashSet};

use chrono::{DateTime, TimeZone, Utc};
use futures::StreamExt;
use ratemesh_proto::v1;
use ratemesh_proto::v1::rate_result::Outcome;
use ratemesh_proto::v1::rate_service_server::RateService;
use read_support::{Reads, TestClock, card, memory_bus, next_card, next_update, publish, settings};
use tonic::{Code, Request};

fn t0() -> DateTime<Utc> {
    Utc.with_ymd_and_hms(2024, 11, 29, 8, 0, 0)
        .single()
        .expect("time")
}

async fn started() -> Reads {
    Reads::build(memory_bus(), settings(), TestClock::at(t0()).clock())
        .start()
        .await
}

/// The field an INVALID_ARGUMENT names (its message is `<field>: <problem>`; the same
/// violation is in the `BadRequest` details).
fn violation_field(status: &tonic::Status) -> String {
    assert_eq!(status.code(), Code::InvalidArgument, "{status:?}");
    status
        .message()
        .split_once(": ")
        .map(|(field, _)| field.to_owned())
        .unwrap_or_default()
}

async fn get(reads: &Reads, sku: &str) -> Result<v1::RateCard, tonic::Status> {
    reads
        .api
        .get_rate(Request::new(v1::GetRateRequest {
            sku: sku.into(),
            as_of: None,
        }))
        .await
        .map(|r| r.into_inner().card.expect("card"))
}

#[tokio::test]
async fn not_serving_until_loaded_then_snapshot_and_tail_are_served() {
    let bus = memory_bus();
    for i in 0..50 {
        publish(&bus, &card(&format!("SKU-{i:03}"), "toys", "0.05", 1, t0())).await;
    }
    // A newer version written before start replaces the first (both in state and stream).
    publish(&bus, &card("SKU-007", "toys", "0.07", 2, t0())).await;
    let reads = Reads::build(bus.clone(), settings(), TestClock::at(t0()).clock());
    assert!(!reads.readiness.get());
    let status = get(&reads, "SKU-001").await.expect_err("not loaded");
    assert_eq!(status.code(), Code::Unavailable, "{status:?}");

    let reads = reads.start().await;
    assert_eq!(reads.reader.len(), 50);
    assert_eq!(
        get(&reads, "SKU-007").await.expect("card").effective_rate,
        "0.07"
    );
    assert_eq!(get(&reads, "SKU-049").await.expect("card").version, 1);

    // After loading, new cards arrive through the tail.
    publish(&bus, &card("SKU-100", "garden", "0.09", 1, t0())).await;
    publish(&bus, &card("SKU-001", "toys", "0.04", 2, t0())).await;
    reads.wait_version("SKU-100", 1).await;
    reads.wait_version("SKU-001", 2).await;
    assert_eq!(
        get(&reads, "SKU-001").await.expect("card").effective_rate,
        "0.04"
    );

    let status = get(&reads, "SKU-404").await.expect_err("unknown");
    assert_eq!(status.code(), Code::NotFound);
    let status = get(&reads, "bad sku").await.expect_err("malformed");
    assert_eq!(status.code(), Code::InvalidArgument);
    assert_eq!(violation_field(&status), "sku");
    reads.stop().await;
}

#[tokio::test]
async fn an_older_version_never_replaces_a_newer_one() {
    let reads = started().await;
    publish(reads.bus(), &card("SKU-1", "toys", "0.08", 3, t0())).await;
    reads.wait_version("SKU-1", 3).await;
    publish(reads.bus(), &card("SKU-1", "toys", "0.02", 2, t0())).await;
    publish(reads.bus(), &card("SKU-2", "toys", "0.05", 1, t0())).await;
    reads.wait_version("SKU-2", 1).await; // applied in order, so SKU-1 v2 was seen first
    let card = get(&reads, "SKU-1").await.expect("card");
    assert_eq!((card.version, card.effective_rate.as_str()), (3, "0.08"));
    reads.stop().await;
}

#[tokio::test]
async fn as_of_reads_the_card_current_at_that_instant() {
    let clock = TestClock::at(t0());
    let reads = Reads::build(memory_bus(), settings(), clock.clock())
        .start()
        .await;
    let hour = chrono::Duration::hours(1);
    publish(reads.bus(), &card("SKU-1", "toys", "0.05", 1, t0())).await;
    publish(reads.bus(), &card("SKU-1", "toys", "0.03", 2, t0() + hour)).await;
    reads.wait_version("SKU-1", 2).await;
    clock.set(t0() + hour * 2);

    let at = |t: DateTime<Utc>| v1::GetRateRequest {
        sku: "SKU-1".into(),
        as_of: Some(prost_types::Timestamp {
            seconds: t.timestamp(),
            nanos: 0,
        }),
    };
    let read = |t| {
        let api = reads.api.clone();
        async move { api.get_rate(Request::new(at(t))).await }
    };
    let card_of = |r: Result<tonic::Response<v1::GetRateResponse>, tonic::Status>| {
        r.expect("card").into_inner().card.expect("card")
    };
    assert_eq!(card_of(read(t0() + hour / 2).await).version, 1);
    assert_eq!(card_of(read(t0() + hour).await).version, 2);
    assert_eq!(card_of(read(t0() + hour * 2).await).version, 2);

    // Before the SKU's first card: no rate then.
    let status = read(t0() - hour).await.expect_err("before first card");
    assert_eq!(status.code(), Code::NotFound, "{status:?}");
    // Before the kept history (90 days by default).
    let status = read(t0() - chrono::Duration::days(91))
        .await
        .expect_err("too old");
    assert_eq!(status.code(), Code::OutOfRange, "{status:?}");
    // In the future.
    let status = read(t0() + hour * 3).await.expect_err("future");
    assert_eq!(status.code(), Code::InvalidArgument);
    assert_eq!(violation_field(&status), "as_of");

    // Once retention passes the first version, instants before the second are out of
    // range, while the second still answers.
    clock.set(t0() + chrono::Duration::days(90) + hour * 2);
    publish(
        reads.bus(),
        &card(
            "SKU-1",
            "toys",
            "0.04",
            3,
            t0() + chrono::Duration::days(90) + hour * 2,
        ),
    )
    .await;
    reads.wait_version("SKU-1", 3).await;
    let status = read(t0() + hour / 2).await.expect_err("pruned");
    assert_eq!(status.code(), Code::OutOfRange, "{status:?}");
    assert_eq!(
        card_of(read(t0() + chrono::Duration::days(90) + hour).await).version,
        2
    );
    reads.stop().await;
}

#[tokio::test]
async fn batch_reports_unknown_and_malformed_skus_per_item() {
    let reads = started().await;
    publish(reads.bus(), &card("SKU-1", "toys", "0.05", 1, t0())).await;
    reads.wait_version("SKU-1", 1).await;
    let reads_before = reads.reader.reads();
    let response = reads
        .api
        .batch_get_rates(Request::new(v1::BatchGetRatesRequest {
            skus: vec![
                "SKU-1".into(),
                "SKU-404".into(),
                "bad sku".into(),
                "SKU-1".into(),
            ],
        }))
        .await
        .expect("batch")
        .into_inner();
    assert_eq!(response.results.len(), 4);
    let outcome = |i: usize| response.results[i].outcome.clone().expect("outcome");
    assert!(matches!(outcome(0), Outcome::Card(c) if c.sku == "SKU-1"));
    assert!(
        matches!(outcome(1), Outcome::Error(e) if e.code == v1::ItemErrorCode::NotFound as i32)
    );
    assert!(
        matches!(outcome(2), Outcome::Error(e) if e.code == v1::ItemErrorCode::InvalidSku as i32)
    );
    assert!(matches!(outcome(3), Outcome::Card(_)));
    assert_eq!(response.results[2].sku, "bad sku");
    assert_eq!(reads.reader.reads() - reads_before, 4);

    for (skus, what) in [(vec![], "empty"), (vec!["SKU-1".to_owned(); 1001], "1001")] {
        let status = reads
            .api
            .batch_get_rates(Request::new(v1::BatchGetRatesRequest { skus }))
            .await
            .expect_err(what);
        assert_eq!(status.code(), Code::InvalidArgument, "{what}");
        assert_eq!(violation_field(&status), "skus", "{what}");
    }
    let ok = reads
        .api
        .batch_get_rates(Request::new(v1::BatchGetRatesRequest {
            skus: vec!["SKU-1".to_owned(); 1000],
        }))
        .await
        .expect("1000 is allowed");
    assert_eq!(ok.into_inner().results.len(), 1000);
    reads.stop().await;
}

async fn list_all(
    reads: &Reads,
    changed_since: &str,
    category: Option<&str>,
    page_size: u32,
    mut between_pages: impl AsyncFnMut(usize),
) -> (Vec<v1::RateCard>, String) {
    let mut cards = Vec::new();
    let mut token = String::new();
    for page in 0.. {
        let response = reads
            .api
            .list_rates(Request::new(v1::ListRatesRequest {
                page_size,
                page_token: token,
                changed_since: changed_since.into(),
                category: category.map(str::to_owned),
            }))
            .await
            .expect("page")
            .into_inner();
        cards.extend(response.cards);
        if response.next_page_token.is_empty() {
            assert!(
                !response.cursor.is_empty(),
                "the last page carries a cursor"
            );
            return (cards, response.cursor);
        }
        assert!(
            response.cursor.is_empty(),
            "only the last page carries a cursor"
        );
        token = response.next_page_token;
        between_pages(page).await;
    }
    unreachable!()
}

#[tokio::test]
async fn changes_made_during_a_paged_listing_all_appear_in_the_next_changed_since() {
    let reads = started().await;
    for i in 0..120 {
        let category = if i % 3 == 0 { "garden" } else { "toys" };
        publish(
            reads.bus(),
            &card(&format!("SKU-{i:03}"), category, "0.05", 1, t0()),
        )
        .await;
    }
    reads.wait_version("SKU-119", 1).await;

    // While paging, change SKUs already listed, not yet listed, and add new ones.
    let bus = reads.bus().clone();
    let mut changed: BTreeMap<String, u64> = BTreeMap::new();
    let (cards, cursor) = list_all(&reads, "", None, 25, async |page| {
        let skus = [
            format!("SKU-{:03}", page * 25),
            format!("SKU-{:03}", 110 - page),
            format!("SKU-2{page:02}"),
        ];
        for sku in skus {
            let version = changed.get(&sku).copied().unwrap_or(1) + 1;
            publish(&bus, &card(&sku, "toys", "0.06", version, t0())).await;
            changed.insert(sku, version);
        }
    })
    .await;
    let listed: HashSet<_> = cards.iter().map(|c| c.sku.clone()).collect();
    for i in 0..120 {
        assert!(listed.contains(&format!("SKU-{i:03}")), "SKU-{i:03} listed");
    }
    let skus: Vec<_> = cards.iter().map(|c| c.sku.clone()).collect();
    let mut sorted = skus.clone();
    sorted.sort();
    assert_eq!(skus, sorted, "ordered by sku");

    for (sku, version) in &changed {
        reads.wait_version(sku, *version).await;
    }
    let (delta, next_cursor) = list_all(&reads, &cursor, None, 7, async |_| {}).await;
    let delta_versions: BTreeMap<_, _> = delta.iter().map(|c| (c.sku.clone(), c.version)).collect();
    for (sku, version) in &changed {
        assert_eq!(
            delta_versions.get(sku),
            Some(version),
            "{sku} missing from the delta"
        );
    }
    assert!(
        delta.len() < 120,
        "the delta is not a full listing: {}",
        delta.len()
    );

    // Nothing changed since: an empty delta; then one change shows up alone.
    let (empty, _) = list_all(&reads, &next_cursor, None, 50, async |_| {}).await;
    assert!(empty.is_empty(), "{empty:?}");
    publish(reads.bus(), &card("SKU-050", "toys", "0.07", 9, t0())).await;
    reads.wait_version("SKU-050", 9).await;
    let (one, _) = list_all(&reads, &next_cursor, None, 50, async |_| {}).await;
    assert_eq!(
        one.iter().map(|c| c.sku.as_str()).collect::<Vec<_>>(),
        ["SKU-050"]
    );

    // Category filter.
    let (garden, _) = list_all(&reads, "", Some("garden"), 1000, async |_| {}).await;
    assert!(!garden.is_empty() && garden.iter().all(|c| c.category == "garden"));
    reads.stop().await;
}

#[tokio::test]
async fn list_validation_names_the_field() {
    let reads = started().await;
    publish(reads.bus(), &card("SKU-1", "toys", "0.05", 1, t0())).await;
    publish(reads.bus(), &card("SKU-2", "toys", "0.05", 1, t0())).await;
    reads.wait_version("SKU-2", 1).await;
    let call = |request: v1::ListRatesRequest| {
        let api = reads.api.clone();
        async move { api.list_rates(Request::new(request)).await }
    };
    for (request, field) in [
        (
            v1::ListRatesRequest {
                page_size: 1001,
                ..Default::default()
            },
            "page_size",
        ),
        (
            v1::ListRatesRequest {
                page_token: "zz".into(),
                ..Default::default()
            },
            "page_token",
        ),
        (
            v1::ListRatesRequest {
                changed_since: "nope".into(),
                ..Default::default()
            },
            "changed_since",
        ),
        (
            v1::ListRatesRequest {
                category: Some(String::new()),
                ..Default::default()
            },
            "category",
        ),
    ] {
        let status = call(request).await.expect_err(field);
        assert_eq!(status.code(), Code::InvalidArgument, "{field}");
        assert_eq!(violation_field(&status), field);
    }
    // A token used with other parameters is refused.
    let first = call(v1::ListRatesRequest {
        page_size: 1,
        ..Default::default()
    })
    .await
    .expect("first page")
    .into_inner();
    assert!(!first.next_page_token.is_empty());
    let status = call(v1::ListRatesRequest {
        page_size: 1,
        page_token: first.next_page_token,
        category: Some("toys".into()),
        ..Default::default()
    })
    .await
    .expect_err("other parameters");
    assert_eq!(violation_field(&status), "page_token");
    reads.stop().await;
}

async fn watch(
    reads: &Reads,
    request: v1::WatchRatesRequest,
) -> ratemesh_rates::read::watch::WatchStream {
    reads
        .api
        .watch_rates(Request::new(request))
        .await
        .expect("watch")
        .into_inner()
}

/// Virtual time: the replica's periodic retention check (every 30 s) comes at once.
#[tokio::test(start_paused = true)]
async fn a_replica_the_stream_was_trimmed_past_reloads_and_tells_watchers() {
    let reads = started().await;
    publish(reads.bus(), &card("GAP-1", "toys", "0.05", 1, t0())).await;
    publish(reads.bus(), &card("GAP-2", "toys", "0.05", 1, t0())).await;
    reads.wait_version("GAP-2", 1).await;
    let mut watcher = watch(
        &reads,
        v1::WatchRatesRequest {
            skus: vec!["GAP-1".into()],
            ..Default::default()
        },
    )
    .await;
    // A change the replica never reads: written, then trimmed away by retention before
    // the loader runs again (nothing here yields to it).
    let mut moved = card("GAP-1", "toys", "0.07", 2, t0());
    moved.previous_rate = "0.05".into();
    publish(reads.bus(), &moved).await;
    let everything = ratemesh_bus::Retention {
        max_len_per_partition: Some(0),
        max_age: None,
    };
    assert_eq!(reads.bus().trim("rates", everything).await.unwrap(), 3);
    assert_eq!(get(&reads, "GAP-1").await.unwrap().version, 1);
    // The check finds the gap and reloads the snapshot, which holds version 2.
    reads.wait_version("GAP-1", 2).await;
    let update = next_card(&mut watcher).await;
    let seen = update.card.expect("card");
    assert_eq!((seen.version, seen.effective_rate.as_str()), (2, "0.07"));
    assert_eq!(update.previous_rate, "0.05");
    // The reloaded replica follows the stream again.
    publish(reads.bus(), &card("GAP-2", "toys", "0.06", 2, t0())).await;
    reads.wait_version("GAP-2", 2).await;
    reads.stop().await;
}

#[tokio::test]
async fn a_resumed_watch_misses_nothing() {
    let reads = started().await;
    publish(reads.bus(), &card("SKU-0", "toys", "0.05", 1, t0())).await;
    reads.wait_version("SKU-0", 1).await;
    let mut first = watch(&reads, v1::WatchRatesRequest::default()).await;
    for v in 1..=5 {
        publish(
            reads.bus(),
            &card(&format!("SKU-{v}"), "toys", "0.05", 1, t0()),
        )
        .await;
    }
    let mut last_cursor = String::new();
    for v in 1..=3 {
        let update = next_card(&mut first).await;
        assert_eq!(update.card.expect("card").sku, format!("SKU-{v}"));
        last_cursor = update.cursor;
    }
    drop(first); // disconnected after the third

    // Changes while disconnected: a new version of a seen SKU and of an unseen one.
    publish(reads.bus(), &card("SKU-2", "toys", "0.06", 2, t0())).await;
    publish(reads.bus(), &card("SKU-5", "toys", "0.06", 2, t0())).await;
    publish(reads.bus(), &card("SKU-6", "garden", "0.06", 1, t0())).await;
    reads.wait_version("SKU-6", 1).await;

    let mut resumed = watch(
        &reads,
        v1::WatchRatesRequest {
            cursor: last_cursor,
            ..Default::default()
        },
    )
    .await;
    let mut seen: BTreeMap<String, u64> = BTreeMap::new();
    for _ in 0..4 {
        let card = next_card(&mut resumed).await.card.expect("card");
        seen.insert(card.sku, card.version);
    }
    let expected: BTreeMap<String, u64> = [("SKU-2", 2), ("SKU-4", 1), ("SKU-5", 2), ("SKU-6", 1)]
        .into_iter()
        .map(|(s, v)| (s.to_owned(), v))
        .collect();
    assert_eq!(seen, expected);
    // And live changes keep coming after the catch-up.
    publish(reads.bus(), &card("SKU-7", "toys", "0.06", 1, t0())).await;
    assert_eq!(
        next_card(&mut resumed).await.card.expect("card").sku,
        "SKU-7"
    );
    reads.stop().await;
}

#[tokio::test]
async fn every_watch_cursor_resumes_without_a_gap() {
    let reads = started().await;
    let mut watcher = watch(&reads, v1::WatchRatesRequest::default()).await;
    for i in 0..30 {
        publish(
            reads.bus(),
            &card(
                &format!("SKU-{:02}", i % 10),
                "toys",
                "0.05",
                1 + i / 10,
                t0(),
            ),
        )
        .await;
    }
    let mut updates = Vec::new();
    for _ in 0..30 {
        updates.push(next_card(&mut watcher).await);
    }
    // Resuming from the cursor of update k yields exactly the SKUs changed after k (newest
    // version each).
    for k in [0usize, 9, 17, 28] {
        let mut expected: BTreeMap<String, u64> = BTreeMap::new();
        for u in &updates[k + 1..] {
            let c = u.card.as_ref().expect("card");
            expected.insert(c.sku.clone(), c.version);
        }
        let mut resumed = watch(
            &reads,
            v1::WatchRatesRequest {
                cursor: updates[k].cursor.clone(),
                ..Default::default()
            },
        )
        .await;
        let mut seen = BTreeMap::new();
        for _ in 0..expected.len() {
            let c = next_card(&mut resumed).await.card.expect("card");
            seen.insert(c.sku, c.version);
        }
        assert_eq!(seen, expected, "resume after update {k}");
    }
    reads.stop().await;
}

#[tokio::test]
async fn watch_filters_by_sku_and_category() {
    let reads = started().await;
    let mut filtered = watch(
        &reads,
        v1::WatchRatesRequest {
            skus: vec!["SKU-A".into()],
            categories: vec!["garden".into()],
            cursor: String::new(),
        },
    )
    .await;
    publish(reads.bus(), &card("SKU-B", "toys", "0.05", 1, t0())).await;
    publish(reads.bus(), &card("SKU-A", "toys", "0.05", 1, t0())).await;
    publish(reads.bus(), &card("SKU-C", "toys", "0.05", 1, t0())).await;
    publish(reads.bus(), &card("SKU-D", "garden", "0.05", 1, t0())).await;
    assert_eq!(
        next_card(&mut filtered).await.card.expect("card").sku,
        "SKU-A"
    );
    assert_eq!(
        next_card(&mut filtered).await.card.expect("card").sku,
        "SKU-D"
    );

    let status = reads
        .api
        .watch_rates(Request::new(v1::WatchRatesRequest {
            skus: vec!["ok".into(), "not ok".into()],
            ..Default::default()
        }))
        .await
        .err()
        .expect("bad sku");
    assert_eq!(violation_field(&status), "skus[1]");
    let status = reads
        .api
        .watch_rates(Request::new(v1::WatchRatesRequest {
            cursor: "xyz".into(),
            ..Default::default()
        }))
        .await
        .err()
        .expect("bad cursor");
    assert_eq!(violation_field(&status), "cursor");
    reads.stop().await;
}

#[tokio::test]
async fn a_slow_watcher_is_ended_with_a_resume_status_and_others_keep_receiving() {
    let reads = started().await; // watch_buffer = 16
    let mut slow = watch(&reads, v1::WatchRatesRequest::default()).await;
    let mut fast = watch(&reads, v1::WatchRatesRequest::default()).await;
    let bus = reads.bus().clone();
    let writer = tokio::spawn(async move {
        for i in 0..200 {
            publish(&bus, &card(&format!("SKU-{i:03}"), "toys", "0.05", 1, t0())).await;
        }
    });
    for i in 0..200 {
        let card = next_card(&mut fast).await.card.expect("card");
        assert_eq!(card.sku, format!("SKU-{i:03}"));
    }
    writer.await.expect("writer");
    // The slow one never read while 200 changes went by: it gets what fitted, then ABORTED.
    let mut received = 0;
    let status = loop {
        match next_update(&mut slow).await {
            Some(Ok(_)) => received += 1,
            Some(Err(status)) => break status,
            None => panic!("ended without a status"),
        }
    };
    assert_eq!(status.code(), Code::Aborted, "{status:?}");
    assert!(status.message().contains("resume"), "{}", status.message());
    assert!(received < 200, "{received}");
    assert!(
        next_update(&mut slow).await.is_none(),
        "ended after the status"
    );
    reads.stop().await;
}

#[tokio::test]
async fn heartbeats_carry_the_cursor_and_shutdown_ends_the_stream() {
    let reads = started().await; // heartbeat every 200 ms
    let mut watcher = watch(
        &reads,
        v1::WatchRatesRequest {
            skus: vec!["SKU-X".into()],
            ..Default::default()
        },
    )
    .await;
    // A change the filter drops still moves the cursor a heartbeat carries.
    publish(reads.bus(), &card("SKU-Y", "toys", "0.05", 1, t0())).await;
    reads.wait_version("SKU-Y", 1).await;
    let position = reads.reader.position().to_string();
    let heartbeat = loop {
        let update = next_update(&mut watcher)
            .await
            .expect("open")
            .expect("update");
        assert!(update.card.is_none(), "no matching change was made");
        if update.cursor == position {
            break update;
        }
    };
    assert!(heartbeat.previous_rate.is_empty());

    reads.ctx.shutdown().cancel();
    let status = loop {
        match next_update(&mut watcher).await {
            Some(Ok(_)) => continue,
            Some(Err(status)) => break status,
            None => panic!("ended without a status"),
        }
    };
    assert_eq!(status.code(), Code::Unavailable, "{status:?}");
    assert!(watcher.next().await.is_none());
    reads.stop().await;
}

#[tokio::test]
async fn cursors_are_refused_for_another_partition_count() {
    let reads = started().await;
    let foreign = ratemesh_bus::Cursor::start(8).to_string();
    let status = reads
        .api
        .list_rates(Request::new(v1::ListRatesRequest {
            changed_since: foreign,
            ..Default::default()
        }))
        .await
        .expect_err("8 partitions, bus has 1");
    assert_eq!(violation_field(&status), "changed_since");
    reads.stop().await;
}
