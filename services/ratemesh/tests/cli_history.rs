//! The input archive end to end: a mesh with `ingest.archive.dir` set archives what the
//! ERP pushed (on the embedded backend and on a private `redis-server`); `ratemesh
//! history export` writes it as history files, narrowed by `--sku` or `--category`; a
//! `whatif` over the export reports the same as `whatif --since` over the archive; bad
//! flags name themselves and exit 2.

use std::path::Path;
use std::process::{Command, Output};
use std::time::Duration;

use chrono::{SecondsFormat, Utc};
use ratemesh::IngestSettings;
use ratemesh_bus::{Bus, BusOptions};
use ratemesh_testkit::{Product, RedisServer, Stock, TestApp, test_settings};
use ratemesh_whatif::archive::{self, Range, Selection};
use ratemesh_whatif::{HistoryOptions, load_history};

/// Runs `ratemesh ARGS` with no settings from the environment.
fn ratemesh(args: &[&str]) -> Output {
    let mut command = Command::new(env!("CARGO_BIN_EXE_ratemesh"));
    for (name, _) in std::env::vars_os() {
        if name.to_string_lossy().starts_with("RATEMESH") {
            command.env_remove(name);
        }
    }
    command.args(args).output().expect("run ratemesh")
}

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

fn path(p: &Path) -> &str {
    p.to_str().expect("utf-8 path")
}

fn candidate() -> String {
    concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../whatif/sample/candidate.toml"
    )
    .to_owned()
}

/// The `--json` report without the count of files read, which differs between day files
/// and history files.
fn report(output: &Output) -> serde_json::Value {
    assert!(output.status.success(), "{}", text(&output.stderr));
    let mut json: serde_json::Value =
        serde_json::from_slice(&output.stdout).expect("one JSON document");
    json["history"]
        .as_object_mut()
        .expect("a history summary")
        .remove("files");
    json
}

/// Waits until the archive holds today's 3 products and 12 readings, and then nothing
/// more arrives for a while (a stock push can open an incentive).
async fn wait_archived(archive: &Path) {
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    let now = Utc::now();
    let range = Range {
        since: now.date_naive().and_time(chrono::NaiveTime::MIN).and_utc(),
        until: now + chrono::TimeDelta::hours(1),
        today: now.date_naive(),
    };
    let mut last = None;
    loop {
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

async fn push_season(app: &TestApp) {
    let answer = app
        .push_products(&[
            Product::new("A-1", "home", "40", "10").currency("EUR"),
            Product::new("B-2", "home", "25", "10"),
            Product::new("C-3", "garden", "60", "12"),
        ])
        .await;
    assert_eq!(answer.status, 202, "{}", answer.body);
    for step in 0..4u64 {
        let answer = app
            .push_stock(&[
                Stock::new("A-1", 400 - step * 9).sequence(step + 1),
                Stock::new("B-2", 300 - step * 4)
                    .sequence(step + 1)
                    .location("dc-2"),
                Stock::new("C-3", 90 - step * 20).sequence(step + 1),
            ])
            .await;
        assert_eq!(answer.status, 202, "{}", answer.body);
    }
}

async fn exports_and_replays_what_was_archived(app: TestApp, archive: &Path) {
    push_season(&app).await;
    wait_archived(archive).await;
    let since = Utc::now().date_naive().to_string();
    let until =
        (Utc::now() + chrono::TimeDelta::seconds(1)).to_rfc3339_opts(SecondsFormat::Millis, true);
    let dir = tempfile::tempdir().expect("tempdir");

    let out = dir.path().join("all");
    let export = ratemesh(&[
        "history",
        "export",
        "--archive",
        path(archive),
        "--since",
        &since,
        "--until",
        &until,
        "--out",
        path(&out),
    ]);
    assert!(export.status.success(), "{}", text(&export.stderr));
    assert!(
        text(&export.stdout).contains("4 stock pushes, 1 products pushes"),
        "{}",
        text(&export.stdout)
    );
    let products = std::fs::read_to_string(out.join("products-000001.json")).expect("products");
    assert!(products.contains("\"currency\": \"EUR\""), "{products}");

    let from_files = report(&ratemesh(&[
        "whatif",
        "--policy",
        &candidate(),
        "--history",
        path(&out),
        "--json",
    ]));
    let from_archive = report(&ratemesh(&[
        "whatif",
        "--policy",
        &candidate(),
        "--since",
        &since,
        "--until",
        &until,
        "--archive",
        path(archive),
        "--json",
    ]));
    assert_eq!(from_files, from_archive);
    assert_eq!(
        from_archive["history"]["stock_readings"], 12,
        "{from_archive}"
    );
    assert_eq!(from_archive["history"]["products"], 3, "{from_archive}");
    let sold: f64 = from_archive["program"]["units_sold"]
        .as_str()
        .and_then(|u| u.parse().ok())
        .expect("units sold, as decimal text");
    // 3 × 9 of A-1, 3 × 4 of B-2 and 3 × 20 of C-3.
    assert_eq!(sold, 99.0, "{from_archive}");

    // Narrowed exports hold their SKUs only.
    let options = HistoryOptions::default();
    for (flags, skus) in [
        (vec!["--sku", "C-3"], 1),
        (vec!["--category", "HOME"], 2),
        (vec!["--sku", "C-3", "--sku", "A-1"], 2),
    ] {
        let out = dir.path().join(flags.join("-"));
        let mut args = vec![
            "history",
            "export",
            "--archive",
            path(archive),
            "--since",
            &since,
            "--until",
            &until,
            "--out",
            path(&out),
        ];
        args.extend(flags.iter().copied());
        let export = ratemesh(&args);
        assert!(
            export.status.success(),
            "{flags:?}: {}",
            text(&export.stderr)
        );
        let history = load_history(&out, &options).expect("the export loads");
        assert_eq!(history.summary().skus, skus, "{flags:?}");
        assert_eq!(history.summary().stock_readings, 4 * skus, "{flags:?}");
    }
    app.stop().await.expect("clean stop");
}

fn archive_settings(dir: &Path) -> ratemesh_runtime::Settings {
    let mut settings = test_settings();
    settings.section_mut::<IngestSettings>().archive.dir = path(dir).to_owned();
    settings
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_embedded_mesh_archives_and_the_archive_replays_like_its_export() {
    let archive = tempfile::tempdir().expect("tempdir");
    let bus = Bus::memory(BusOptions {
        read_block: Duration::from_millis(50),
        ..BusOptions::embedded()
    })
    .expect("embedded bus");
    let app = TestApp::spawn_with(archive_settings(archive.path()), bus).await;
    exports_and_replays_what_was_archived(app, archive.path()).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_mesh_on_redis_archives_and_the_archive_replays_like_its_export() {
    let redis = RedisServer::start();
    let archive = tempfile::tempdir().expect("tempdir");
    let app = TestApp::spawn_on_redis(&redis, archive_settings(archive.path())).await;
    exports_and_replays_what_was_archived(app, archive.path()).await;
}

#[test]
fn bad_ranges_and_a_missing_archive_name_their_flag_and_exit_2() {
    let dir = tempfile::tempdir().expect("tempdir");
    let out = dir.path().join("out");
    for (args, flag) in [
        (
            vec![
                "history",
                "export",
                "--since",
                "Black Friday",
                "--out",
                path(&out),
            ],
            "--since: \"Black Friday\" is neither an RFC 3339 time",
        ),
        (
            vec![
                "history",
                "export",
                "--since",
                "2026-11-27",
                "--until",
                "2026-11-26",
                "--archive",
                path(dir.path()),
                "--out",
                path(&out),
            ],
            "--until: must be after --since",
        ),
        (
            vec![
                "history",
                "export",
                "--since",
                "2026-11-27",
                "--out",
                path(&out),
            ],
            "--archive: not given, and ingest.archive.dir is not set",
        ),
        (
            vec![
                "whatif",
                "--policy",
                &candidate(),
                "--since",
                "27/11/2026",
                "--archive",
                path(dir.path()),
            ],
            "--since: \"27/11/2026\"",
        ),
    ] {
        let output = ratemesh(&args);
        assert_eq!(output.status.code(), Some(2), "{args:?}");
        let stderr = text(&output.stderr);
        assert!(stderr.contains(flag), "{args:?}: {stderr}");
    }
    assert!(!out.exists(), "nothing is written");
}
