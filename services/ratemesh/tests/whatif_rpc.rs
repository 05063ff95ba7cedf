//! `PolicyService.WhatIf` on a running mesh: a merchandiser replays a candidate policy
//! over what the archive recorded and gets progress, then the report `ratemesh_whatif`
//! computes from the same range; other roles are refused, bad input names its field, a
//! process without an archive says which setting turns it on, runs go one at a time, and
//! a stream dropped mid-run stops its replay and frees the run for the next caller.

use std::path::Path;
use std::time::Duration;

use chrono::{DateTime, TimeDelta, Utc};
use ratemesh::IngestSettings;
use ratemesh_bus::{Bus, BusOptions};
use ratemesh_core::EXAMPLE_POLICY_TOML;
use ratemesh_proto::v1::policy_service_client::PolicyServiceClient;
use ratemesh_proto::v1::{WhatIfEvent, WhatIfPhase, WhatIfRequest, WhatIfResult, what_if_event};
use ratemesh_runtime::Role;
use ratemesh_testkit::app::Authed;
use ratemesh_testkit::{Product, Stock, TestApp, test_settings};
use ratemesh_whatif::archive::{self, Range, Selection};
use ratemesh_whatif::{HistoryOptions, WhatIfOptions};
use tonic::Code;

/// Held by every test whose runs reach the replay, so the process-wide run counters
/// change only by what the holder does.
static REPLAYS: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

/// `ratemesh_whatif_runs_total{outcome}` as the process exports it.
async fn runs_ended(app: &TestApp, outcome: &str) -> u64 {
    let (status, body) = app.admin_get("/metrics").await;
    assert_eq!(status, 200);
    let series = format!("ratemesh_whatif_runs_total{{outcome=\"{outcome}\"}} ");
    body.lines()
        .find_map(|line| line.strip_prefix(&series))
        .map_or(0, |value| value.trim().parse().expect("a count"))
}

fn candidate() -> String {
    std::fs::read_to_string(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../whatif/sample/candidate.toml"
    ))
    .expect("the sample candidate policy")
}

fn timestamp(at: DateTime<Utc>) -> prost_types::Timestamp {
    prost_types::Timestamp {
        seconds: at.timestamp(),
        nanos: at.timestamp_subsec_nanos() as i32,
    }
}

fn request(since: DateTime<Utc>, until: DateTime<Utc>) -> WhatIfRequest {
    WhatIfRequest {
        candidate_policy: candidate(),
        baseline_policy: Some(EXAMPLE_POLICY_TOML.to_owned()),
        since: Some(timestamp(since)),
        until: Some(timestamp(until)),
        ..WhatIfRequest::default()
    }
}

async fn client(app: &TestApp, role: Role) -> PolicyServiceClient<Authed> {
    PolicyServiceClient::new(app.authed(role).await)
}

async fn spawn(archive: Option<&Path>) -> TestApp {
    spawn_with(archive, |_| {}).await
}

/// A mesh on the in-memory bus, archiving to `archive` when given, with ingest's settings
/// adjusted by `adjust`.
async fn spawn_with(archive: Option<&Path>, adjust: impl FnOnce(&mut IngestSettings)) -> TestApp {
    let mut settings = test_settings();
    let ingest = settings.section_mut::<IngestSettings>();
    if let Some(dir) = archive {
        ingest.archive.dir = dir.to_str().expect("utf-8 path").to_owned();
    }
    adjust(ingest);
    let bus = Bus::memory(BusOptions {
        read_block: Duration::from_millis(50),
        ..BusOptions::embedded()
    })
    .expect("embedded bus");
    TestApp::spawn_with(settings, bus).await
}

/// Pushes 3 products and 4 rounds of stock, and waits until the archive holds them and
/// nothing more arrives for a while.
async fn fill(app: &TestApp, archive: &Path, since: DateTime<Utc>) {
    let answer = app
        .push_products(&[
            Product::new("A-1", "home", "40", "10"),
            Product::new("B-2", "home", "25", "10"),
            Product::new("C-3", "garden", "60", "12"),
        ])
        .await;
    assert_eq!(answer.status, 202, "{}", answer.body);
    for step in 0..4u64 {
        let answer = app
            .push_stock(&[
                Stock::new("A-1", 400 - step * 9).sequence(step + 1),
                Stock::new("B-2", 300 - step * 4).sequence(step + 1),
                Stock::new("C-3", 90 - step * 20).sequence(step + 1),
            ])
            .await;
        assert_eq!(answer.status, 202, "{}", answer.body);
    }
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    let mut last = None;
    loop {
        let now = Utc::now();
        let range = Range {
            since,
            until: now,
            today: now.date_naive(),
        };
        let count = archive::select(archive, &range, &Selection::default())
            .map(|s| s.events.len())
            .unwrap_or(0);
        if count >= 15 && last == Some(count) {
            return;
        }
        last = Some(count);
        assert!(
            std::time::Instant::now() < deadline,
            "the archive did not catch up: {count} events"
        );
        tokio::time::sleep(Duration::from_millis(400)).await;
    }
}

/// Reads a stream to its end: the progress events and the result.
async fn events(
    client: &mut PolicyServiceClient<Authed>,
    request: WhatIfRequest,
) -> (Vec<(WhatIfPhase, u64, u64)>, WhatIfResult) {
    let mut stream = client.what_if(request).await.expect("a run").into_inner();
    let mut progress = Vec::new();
    let mut result = None;
    while let Some(event) = stream.message().await.expect("no error in the stream") {
        assert!(result.is_none(), "an event after the result: {event:?}");
        match event {
            WhatIfEvent {
                event: Some(what_if_event::Event::Progress(p)),
            } => progress.push((p.phase(), p.done, p.total)),
            WhatIfEvent {
                event: Some(what_if_event::Event::Result(r)),
            } => result = Some(r),
            other => panic!("an empty event: {other:?}"),
        }
    }
    (progress, result.expect("the stream ends with a result"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_merchandiser_gets_progress_and_the_report_the_library_computes_from_the_archive() {
    let _replays = REPLAYS.lock().await;
    let archive = tempfile::tempdir().expect("tempdir");
    let since = Utc::now() - TimeDelta::minutes(1);
    let app = spawn(Some(archive.path())).await;
    fill(&app, archive.path(), since).await;
    let until = Utc::now();

    let mut merchandiser = client(&app, Role::Merchandiser).await;
    let (progress, result) = events(&mut merchandiser, request(since, until)).await;

    assert!(!progress.is_empty(), "no progress before the result");
    let total = progress[0].2;
    assert!(total >= 15, "{progress:?}");
    assert!(
        progress.windows(2).all(|w| w[0].1 <= w[1].1),
        "progress went back: {progress:?}"
    );
    assert!(progress.iter().all(|p| p.2 == total && p.1 <= total));
    assert_eq!(progress[0].0, WhatIfPhase::Replaying);
    assert_eq!(
        progress.last().copied(),
        Some((WhatIfPhase::Reporting, total, total)),
        "{progress:?}"
    );

    // The same range, read and replayed here.
    let range = Range {
        since,
        until,
        today: until.date_naive(),
    };
    let selected = archive::select(archive.path(), &range, &Selection::default()).expect("read");
    let history = archive::history(&selected, HistoryOptions::default().max_gap);
    let baseline = ratemesh_core::Policy::from_toml_str(EXAMPLE_POLICY_TOML).expect("baseline");
    let candidate = ratemesh_core::Policy::from_toml_str(&candidate()).expect("candidate");
    let expected = ratemesh_whatif::run(&history, &baseline, &candidate, &WhatIfOptions::default());
    let got: serde_json::Value = serde_json::from_str(&result.report_json).expect("JSON");
    assert_eq!(got, serde_json::to_value(&expected).expect("serialisable"));
    assert!(expected.program.units_sold > rust_decimal::Decimal::ZERO);
    assert_eq!(result.events, history.events().len() as u64);
    assert_eq!(result.baseline_source, "request");
    assert_eq!(result.gaps.len(), expected.history.gaps.len());

    // The live baseline: the serving process's `policy.file`.
    let live = WhatIfRequest {
        baseline_policy: None,
        ..request(since, until)
    };
    let (_, result) = events(&mut merchandiser, live).await;
    let file = result
        .baseline_source
        .strip_prefix("live policy.file ")
        .unwrap_or_else(|| panic!("the live policy file: {}", result.baseline_source));
    let live = ratemesh_core::Policy::from_toml_str(&std::fs::read_to_string(file).expect("read"))
        .expect("the live policy");
    let expected = ratemesh_whatif::run(&history, &live, &candidate, &WhatIfOptions::default());
    let got: serde_json::Value = serde_json::from_str(&result.report_json).expect("JSON");
    assert_eq!(got, serde_json::to_value(&expected).expect("serialisable"));

    // Admin may too.
    let mut admin = client(&app, Role::Admin).await;
    events(&mut admin, request(since, until)).await;
    app.stop().await.expect("clean stop");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn networks_partners_and_erps_are_refused_and_bad_input_names_its_field() {
    let archive = tempfile::tempdir().expect("tempdir");
    let app = spawn(Some(archive.path())).await;
    let now = Utc::now();
    let since = now - TimeDelta::hours(1);
    for role in [Role::Network, Role::Partner, Role::Erp] {
        let status = client(&app, role)
            .await
            .what_if(request(since, now))
            .await
            .expect_err("refused");
        assert_eq!(
            status.code(),
            Code::PermissionDenied,
            "{role:?}: {status:?}"
        );
    }

    let mut merchandiser = client(&app, Role::Merchandiser).await;
    let bad_mode = EXAMPLE_POLICY_TOML.replace("mode = \"direct\"", "mode = \"sideways\"");
    assert_ne!(bad_mode, EXAMPLE_POLICY_TOML);
    let cases = [
        (
            WhatIfRequest {
                candidate_policy: bad_mode,
                ..request(since, now)
            },
            "candidate_policy: program.mode",
        ),
        (
            WhatIfRequest {
                baseline_policy: Some("[program\n".to_owned()),
                ..request(since, now)
            },
            "baseline_policy",
        ),
        (
            WhatIfRequest {
                candidate_policy: "#".repeat(300 * 1024),
                ..request(since, now)
            },
            "candidate_policy: must be at most",
        ),
        (
            WhatIfRequest {
                since: None,
                ..request(since, now)
            },
            "since: is required",
        ),
        (request(now, since), "since: must be before until"),
        (
            request(now - TimeDelta::days(401), now),
            "until: the range may be at most 400 days",
        ),
        (
            WhatIfRequest {
                elasticity: Some("half".to_owned()),
                ..request(since, now)
            },
            "elasticity: `half` is not a decimal",
        ),
        (
            WhatIfRequest {
                skus: vec!["A-1".to_owned(), " ".to_owned()],
                ..request(since, now)
            },
            "skus[1]",
        ),
    ];
    for (request, field) in cases {
        let status = merchandiser.what_if(request).await.expect_err("refused");
        assert_eq!(status.code(), Code::InvalidArgument, "{field}: {status:?}");
        assert!(
            status.message().starts_with(field),
            "{field}: {}",
            status.message()
        );
    }
    app.stop().await.expect("clean stop");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_range_larger_than_max_events_is_refused_naming_the_setting() {
    let archive = tempfile::tempdir().expect("tempdir");
    let since = Utc::now() - TimeDelta::minutes(1);
    // `fill` archives 3 products and 4 rounds of stock: 15 events.
    let app = spawn_with(Some(archive.path()), |ingest| ingest.whatif.max_events = 14).await;
    fill(&app, archive.path(), since).await;
    let status = client(&app, Role::Merchandiser)
        .await
        .what_if(request(since, Utc::now()))
        .await
        .expect_err("too many events");
    assert_eq!(status.code(), Code::FailedPrecondition, "{status:?}");
    assert!(
        status.message().contains("ingest.whatif.max_events (14)"),
        "{}",
        status.message()
    );
    app.stop().await.expect("clean stop");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_an_archive_the_call_names_the_setting() {
    let app = spawn(None).await;
    let now = Utc::now();
    let status = client(&app, Role::Merchandiser)
        .await
        .what_if(request(now - TimeDelta::hours(1), now))
        .await
        .expect_err("no archive");
    assert_eq!(status.code(), Code::FailedPrecondition, "{status:?}");
    assert!(
        status.message().contains("ingest.archive.dir"),
        "{}",
        status.message()
    );
    app.stop().await.expect("clean stop");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn runs_go_one_at_a_time_and_a_dropped_stream_gives_its_slot_back() {
    let _replays = REPLAYS.lock().await;
    let archive = tempfile::tempdir().expect("tempdir");
    let since = Utc::now() - TimeDelta::minutes(1);
    let app = spawn(Some(archive.path())).await;
    fill(&app, archive.path(), since).await;
    let until = Utc::now();
    let mut merchandiser = client(&app, Role::Merchandiser).await;
    // One run at a time (the default): a call while one runs is RESOURCE_EXHAUSTED, and
    // every stream dropped before its result must give its slot back.
    for _ in 0..5 {
        let deadline = std::time::Instant::now() + Duration::from_secs(10);
        loop {
            match merchandiser.what_if(request(since, until)).await {
                Ok(stream) => {
                    drop(stream);
                    break;
                }
                Err(status) => {
                    assert_eq!(status.code(), Code::ResourceExhausted, "{status:?}");
                    assert!(
                        std::time::Instant::now() < deadline,
                        "the slot never came back"
                    );
                    tokio::time::sleep(Duration::from_millis(20)).await;
                }
            }
        }
    }
    // And the last one still runs to its result once the slot is back.
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    loop {
        match merchandiser.what_if(request(since, until)).await {
            Ok(stream) => {
                let mut stream = stream.into_inner();
                let mut last = None;
                while let Some(event) = stream.message().await.expect("no error") {
                    last = Some(event);
                }
                assert!(
                    matches!(
                        last,
                        Some(WhatIfEvent {
                            event: Some(what_if_event::Event::Result(_))
                        })
                    ),
                    "{last:?}"
                );
                break;
            }
            Err(status) => {
                assert_eq!(status.code(), Code::ResourceExhausted, "{status:?}");
                assert!(
                    std::time::Instant::now() < deadline,
                    "the slot never came back"
                );
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        }
    }
    app.stop().await.expect("clean stop");
}

/// Pushes `skus` products and `readings` stock readings of each, in batches of one
/// reading per SKU.
async fn fill_large(app: &TestApp, skus: u64, readings: u64) {
    let products: Vec<Product> = (0..skus)
        .map(|i| Product::new(&format!("L-{i}"), "home", "30", "10"))
        .collect();
    let answer = app.push_products(&products).await;
    assert_eq!(answer.status, 202, "{}", answer.body);
    for n in 1..=readings {
        let batch: Vec<Stock> = (0..skus)
            .map(|i| Stock::new(&format!("L-{i}"), 5000 - n * (1 + i % 3)).sequence(n))
            .collect();
        let answer = app.push_stock(&batch).await;
        assert_eq!(answer.status, 202, "{}", answer.body);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stream_dropped_mid_run_stops_the_replay_instead_of_finishing_it() {
    let _replays = REPLAYS.lock().await;
    let archive = tempfile::tempdir().expect("tempdir");
    let since = Utc::now() - TimeDelta::minutes(1);
    // One worker, so the replay runs through many chunks, each a chance to stop.
    let app = spawn_with(Some(archive.path()), |ingest| ingest.whatif.threads = 1).await;
    let (skus, readings) = (400, 100);
    fill_large(&app, skus, readings).await;
    let expected = (skus * (readings + 1)) as usize;
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    loop {
        let now = Utc::now();
        let range = Range {
            since,
            until: now,
            today: now.date_naive(),
        };
        let count = archive::select(archive.path(), &range, &Selection::default())
            .map(|s| s.events.len())
            .unwrap_or(0);
        if count >= expected {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "the archive did not catch up: {count} of {expected} events"
        );
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
    let until = Utc::now();
    let mut merchandiser = client(&app, Role::Merchandiser).await;
    let (completed, cancelled) = (
        runs_ended(&app, "completed").await,
        runs_ended(&app, "cancelled").await,
    );

    // A whole run completes.
    let mut stream = merchandiser
        .what_if(request(since, until))
        .await
        .expect("a run")
        .into_inner();
    while stream.message().await.expect("no error").is_some() {}
    assert_eq!(runs_ended(&app, "completed").await, completed + 1);

    // The same run, dropped at its first progress event, ends as cancelled: the replay
    // stopped at a chunk boundary instead of finishing and sending a report nobody reads.
    let mut stream = merchandiser
        .what_if(request(since, until))
        .await
        .expect("a run")
        .into_inner();
    stream.message().await.expect("no error").expect("progress");
    drop(stream);
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    while runs_ended(&app, "cancelled").await == cancelled {
        assert!(
            std::time::Instant::now() < deadline,
            "the dropped run never ended"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(runs_ended(&app, "cancelled").await, cancelled + 1);
    assert_eq!(
        runs_ended(&app, "completed").await,
        completed + 1,
        "the dropped run finished its replay"
    );
    app.stop().await.expect("clean stop");
}
