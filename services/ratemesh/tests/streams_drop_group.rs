//! `ratemesh streams groups` and `ratemesh streams drop-group`: an operator turns the
//! input archive off, sees its consumer group left behind with no readers holding the
//! streams back, drops it, and retention trims past where it stood. The services' own
//! groups are refused.

use std::process::Output;
use std::time::{Duration, Instant};

use ratemesh::IngestSettings;
use ratemesh_bus::testkit::RedisServer;
use ratemesh_bus::{Bus, GroupInfo, Retention};
use ratemesh_testkit::{Stock, TestApp, test_bus_options, test_settings};
use serde_json::Value;

/// The archive's consumer group, as the archiver names it.
const ARCHIVE: &str = "archive";

/// `ratemesh streams ARGS` against `redis` under `prefix`, with nothing else from the
/// environment.
fn streams(redis: &RedisServer, prefix: &str, args: &[&str]) -> Output {
    std::process::Command::new(env!("CARGO_BIN_EXE_ratemesh"))
        .env_clear()
        .env("PATH", std::env::var_os("PATH").unwrap_or_default())
        .env("RATEMESH__REDIS__URL", redis.url())
        .env("RATEMESH__REDIS__KEY_PREFIX", prefix)
        .env(
            "RATEMESH__REDIS__PARTITIONS",
            test_bus_options().partitions.to_string(),
        )
        .arg("streams")
        .args(args)
        .output()
        .expect("run ratemesh")
}

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

/// `group` on `stream`, if it exists.
async fn group(bus: &Bus, stream: &str, group: &str) -> Option<GroupInfo> {
    let groups = bus.groups(stream).await.expect("groups");
    groups.into_iter().find(|g| g.group == group)
}

/// Waits until `done` holds of `group` on the stock stream.
async fn wait_for_stock_group(bus: &Bus, name: &str, done: impl Fn(&GroupInfo) -> bool) {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let info = group(bus, "stock", name).await;
        if info.as_ref().is_some_and(&done) {
            return;
        }
        assert!(Instant::now() < deadline, "group {name}: {info:?}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Trims the stock stream as far as its groups allow; the entries left.
async fn trim_stock_to_nothing(bus: &Bus) -> u64 {
    let everything = Retention {
        max_len_per_partition: Some(0),
        max_age: None,
    };
    bus.trim("stock", everything).await.expect("trim");
    bus.stream_stats("stock", "rates")
        .await
        .expect("stats")
        .length
}

async fn push_round(app: &TestApp, round: u64) {
    let stock: Vec<Stock> = ["A-1", "B-2", "C-3"]
        .into_iter()
        .map(|sku| Stock::new(sku, 100 - round).sequence(round))
        .collect();
    assert_eq!(app.push_stock(&stock).await.status, 202);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_archive_turned_off_is_a_group_without_readers_until_dropped_and_then_trimming_passes()
{
    let redis = RedisServer::start();
    let prefix = redis.unique_prefix();
    let archive = tempfile::tempdir().expect("tempdir");
    let mut archiving = test_settings();
    archiving.section_mut::<IngestSettings>().archive.dir =
        archive.path().to_str().expect("utf-8 path").to_owned();
    let app = TestApp::spawn_at(&redis, archiving, &prefix).await;
    push_round(&app, 1).await;
    wait_for_stock_group(app.bus(), ARCHIVE, |g| g.pending + g.undelivered == 0).await;
    app.stop().await.expect("clean stop");

    // The archive is off from now on; stock keeps coming.
    let app = TestApp::spawn_at(&redis, test_settings(), &prefix).await;
    let bus = app.bus().clone();
    push_round(&app, 2).await;
    push_round(&app, 3).await;
    for service in ["rates", "incentives"] {
        wait_for_stock_group(&bus, service, |g| g.pending + g.undelivered == 0).await;
    }
    wait_for_stock_group(&bus, ARCHIVE, |g| g.readers == 0 && g.undelivered == 6).await;

    let output = streams(&redis, &prefix, &["groups", "--json"]);
    assert!(output.status.success(), "{}", text(&output.stderr));
    let listed: Value = serde_json::from_slice(&output.stdout).expect("one JSON document");
    let row = |stream: &str, group: &str| -> Value {
        listed
            .as_array()
            .expect("a list")
            .iter()
            .find(|r| r["stream"] == stream && r["group"] == group)
            .unwrap_or_else(|| panic!("no {group} on {stream}: {listed}"))
            .clone()
    };
    let stale = row("stock", ARCHIVE);
    assert_eq!(stale["readers"], 0, "{stale}");
    assert_eq!(stale["undelivered"], 6, "{stale}");
    assert_eq!(stale["service"], Value::Null, "{stale}");
    let rates = row("stock", "rates");
    assert_eq!(rates["service"], "rates", "{rates}");
    assert!(rates["readers"].as_u64() >= Some(1), "{rates}");
    let table = streams(&redis, &prefix, &["groups"]);
    let table = text(&table.stdout);
    assert!(
        table.contains("no reader: trimming stops here"),
        "the table points at the stale group: {table}"
    );

    // The stale group keeps the entries it has not had.
    let length = trim_stock_to_nothing(&bus).await;
    assert!(length >= 6, "{length} entries left");

    let refused = streams(&redis, &prefix, &["drop-group", "rates"]);
    let stderr = text(&refused.stderr);
    assert_eq!(refused.status.code(), Some(2), "{stderr}");
    assert!(stderr.contains("the rates service's own"), "{stderr}");
    assert!(stderr.contains("--force"), "{stderr}");
    assert!(group(&bus, "stock", "rates").await.is_some());
    let unknown = streams(
        &redis,
        &prefix,
        &["drop-group", ARCHIVE, "--stream", "sales"],
    );
    assert_eq!(unknown.status.code(), Some(2), "{}", text(&unknown.stderr));

    let dropped = streams(&redis, &prefix, &["drop-group", ARCHIVE]);
    assert!(dropped.status.success(), "{}", text(&dropped.stderr));
    let said = text(&dropped.stdout);
    for stream in ["stock", "overrides", "incentives"] {
        assert!(
            said.contains(&format!("dropped group archive from stream {stream}:")),
            "{said}"
        );
        assert!(group(&bus, stream, ARCHIVE).await.is_none(), "{stream}");
    }
    assert!(said.contains("0 pending, 6 undelivered"), "{said}");
    assert_eq!(
        trim_stock_to_nothing(&bus).await,
        0,
        "trimming passes where the archive stood"
    );

    let again = streams(&redis, &prefix, &["drop-group", ARCHIVE]);
    assert!(again.status.success(), "{}", text(&again.stderr));
    assert!(
        text(&again.stdout).contains("group archive is on no stream: nothing to drop"),
        "{}",
        text(&again.stdout)
    );
    app.stop().await.expect("clean stop");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_group_something_still_reads_for_is_refused_without_force() {
    let redis = RedisServer::start();
    let prefix = redis.unique_prefix();
    let bus = Bus::redis(&redis.url(), &prefix, test_bus_options())
        .await
        .expect("redis bus");
    let reader = bus
        .consumer("stock", "audit", "c1")
        .await
        .expect("consumer");
    reader.next_batch().await.expect("a read");

    let refused = streams(&redis, &prefix, &["drop-group", "audit"]);
    let stderr = text(&refused.stderr);
    assert_eq!(refused.status.code(), Some(2), "{stderr}");
    assert!(
        stderr.contains("still has live readers (1 on stock)"),
        "{stderr}"
    );
    assert!(group(&bus, "stock", "audit").await.is_some());

    let forced = streams(&redis, &prefix, &["drop-group", "audit", "--force"]);
    assert!(forced.status.success(), "{}", text(&forced.stderr));
    assert!(group(&bus, "stock", "audit").await.is_none());
}

#[test]
fn without_redis_there_is_nothing_to_reach() {
    let output = std::process::Command::new(env!("CARGO_BIN_EXE_ratemesh"))
        .env_clear()
        .args(["streams", "drop-group", "archive"])
        .output()
        .expect("run ratemesh");
    let stderr = text(&output.stderr);
    assert_eq!(output.status.code(), Some(2), "{stderr}");
    assert!(stderr.contains("redis.url: not set"), "{stderr}");
}
