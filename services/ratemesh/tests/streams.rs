//! `ratemesh streams`: what an operator (and deploy/check.sh, which checks the Helm chart's
//! autoscaling triggers with it) is told each service consumes, and that it is what the
//! services really create on Redis.

use std::collections::BTreeSet;
use std::process::Command;
use std::time::Duration;

use ratemesh_bus::testkit::RedisServer;
use ratemesh_testkit::{TestApp, eventually, test_bus_options, test_settings};
use serde_json::Value;

fn ratemesh() -> Command {
    let mut command = Command::new(env!("CARGO_BIN_EXE_ratemesh"));
    command
        .env_clear()
        .env("PATH", std::env::var_os("PATH").unwrap_or_default());
    command
}

/// `ratemesh streams [args]` under `key_prefix` and `partitions`: its standard output.
fn streams(key_prefix: &str, partitions: u32, args: &[&str]) -> String {
    let output = ratemesh()
        .arg("streams")
        .args(args)
        .env("RATEMESH__REDIS__KEY_PREFIX", key_prefix)
        .env("RATEMESH__REDIS__PARTITIONS", partitions.to_string())
        .output()
        .expect("run ratemesh");
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    String::from_utf8(output.stdout).expect("utf-8 output")
}

fn streams_json(key_prefix: &str, partitions: u32) -> Value {
    serde_json::from_str(&streams(key_prefix, partitions, &["--json"])).expect("one JSON document")
}

/// Every (partition stream key, consumer group) pair of the JSON output.
fn key_groups(layout: &Value) -> BTreeSet<(String, String)> {
    let mut pairs = BTreeSet::new();
    for service in layout["services"].as_array().expect("services") {
        for consumed in service["consumes"].as_array().expect("consumes") {
            let group = consumed["group"].as_str().expect("group");
            for key in consumed["keys"].as_array().expect("keys") {
                pairs.insert((key.as_str().expect("key").to_owned(), group.to_owned()));
            }
        }
    }
    pairs
}

#[test]
fn json_names_each_services_group_streams_and_partition_keys() {
    let layout = streams_json("acme", 3);
    assert_eq!(layout["key_prefix"], "acme");
    assert_eq!(layout["partitions"], 3);
    let services: Vec<(&str, Vec<(&str, &str)>)> = layout["services"]
        .as_array()
        .expect("services")
        .iter()
        .map(|s| {
            let consumes = s["consumes"]
                .as_array()
                .expect("consumes")
                .iter()
                .map(|c| (c["stream"].as_str().unwrap(), c["group"].as_str().unwrap()))
                .collect();
            (s["service"].as_str().expect("service"), consumes)
        })
        .collect();
    assert_eq!(
        services,
        [
            ("ingest", vec![]),
            (
                "rates",
                vec![
                    ("stock", "rates"),
                    ("overrides", "rates"),
                    ("incentives", "rates")
                ]
            ),
            ("incentives", vec![("stock", "incentives")]),
            (
                "notifier",
                vec![("rates", "notifier"), ("incentives", "notifier")]
            ),
        ]
    );
    let notifier_rates = &layout["services"][3]["consumes"][0];
    assert_eq!(notifier_rates["partitions"], 3);
    assert_eq!(
        notifier_rates["keys"],
        serde_json::json!([
            "{acme:p0}:s:rates",
            "{acme:p1}:s:rates",
            "{acme:p2}:s:rates"
        ])
    );
}

#[test]
fn the_table_reads_the_partition_count_from_the_settings() {
    let text = streams("ratemesh", 8, &[]);
    assert!(
        text.starts_with("key prefix \"ratemesh\", 8 partition"),
        "{text}"
    );
    let notifier: Vec<&str> = text.lines().filter(|l| l.starts_with("notifier")).collect();
    assert_eq!(notifier.len(), 2, "{text}");
    assert!(
        notifier[0].contains("{ratemesh:p0}:s:rates .. {ratemesh:p7}:s:rates"),
        "{text}"
    );
}

#[test]
fn a_bad_partition_count_is_refused_naming_the_key() {
    let output = ratemesh()
        .args(["streams", "--json"])
        .env("RATEMESH__REDIS__PARTITIONS", "0")
        .output()
        .expect("run ratemesh");
    assert_eq!(output.status.code(), Some(2));
    assert!(output.stdout.is_empty());
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(stderr.contains("redis.partitions"), "{stderr}");
}

/// The consumer groups the running services created, per stream key: what an autoscaler
/// watching Redis finds.
async fn groups_in_redis(
    conn: &mut redis::aio::MultiplexedConnection,
    key_prefix: &str,
) -> BTreeSet<(String, String)> {
    let keys: Vec<String> = redis::cmd("KEYS")
        .arg(format!("{{{key_prefix}:p*}}:s:*"))
        .query_async(conn)
        .await
        .expect("KEYS");
    let mut pairs = BTreeSet::new();
    for key in keys {
        let reply: redis::streams::StreamInfoGroupsReply = redis::cmd("XINFO")
            .arg("GROUPS")
            .arg(&key)
            .query_async(conn)
            .await
            .expect("XINFO GROUPS");
        for group in reply.groups {
            // The lag autoscaling reads is known for every group (Redis >= 7).
            assert!(group.lag.is_some(), "{key} {}: lag unknown", group.name);
            pairs.insert((key.clone(), group.name));
        }
    }
    pairs
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_listed_groups_are_the_ones_the_services_create_on_redis() {
    let redis = RedisServer::start();
    let prefix = redis.unique_prefix();
    let partitions = test_bus_options().partitions;
    let app = TestApp::spawn_at(&redis, test_settings(), &prefix).await;

    let listed = key_groups(&streams_json(&prefix, partitions));
    assert_eq!(listed.len(), 6 * partitions as usize);
    let client = redis::Client::open(redis.url()).expect("redis url");
    let conn = client
        .get_multiplexed_async_connection()
        .await
        .expect("connect");
    // Consumers start once their service has loaded; wait until every group is there,
    // then require that nothing else is.
    let found = eventually(
        "every consumer group on its partition streams",
        Duration::from_secs(20),
        || {
            let (mut conn, prefix, listed) = (conn.clone(), prefix.clone(), listed.clone());
            async move {
                let found = groups_in_redis(&mut conn, &prefix).await;
                found.is_superset(&listed).then_some(found)
            }
        },
    )
    .await;
    assert_eq!(
        found, listed,
        "groups in Redis that ratemesh streams does not list"
    );
    app.stop().await.expect("a clean stop");
}
