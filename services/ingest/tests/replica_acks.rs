//! With `redis.min_replica_acks`, a push is answered 202 only once that many replicas
//! confirmed its append. Without a replica in time the answer is 503 with the configured
//! Retry-After, although the primary applied the push; the ERP's retry of the same batch,
//! once a replica confirms, is accepted with nothing appended twice.

mod support;

use std::time::{Duration, Instant};

use ratemesh_bus::testkit::RedisServer;
use ratemesh_bus::{Bus, BusOptions};
use ratemesh_ingest::IngestSettings;
use support::{start_on, stock_body};

const RETRY_AFTER_SECS: u64 = 3;

fn on(port: u16) -> redis::Connection {
    redis::Client::open(format!("redis://127.0.0.1:{port}/"))
        .expect("url")
        .get_connection()
        .expect("connect")
}

/// Makes `replica` a replica of `primary` and waits until the primary sees it online.
fn attach(replica: &RedisServer, primary: &RedisServer) {
    let _: () = redis::cmd("REPLICAOF")
        .arg("127.0.0.1")
        .arg(primary.port())
        .query(&mut on(replica.port()))
        .expect("REPLICAOF");
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let info: String = redis::cmd("INFO")
            .arg("replication")
            .query(&mut on(primary.port()))
            .expect("INFO");
        if info.contains("connected_slaves:1") && info.contains("state=online") {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "replica never came online:\n{info}"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_push_is_accepted_only_once_a_replica_confirmed_it() {
    let primary = RedisServer::start();
    let url = primary.url();
    let bus = Bus::redis(
        &url,
        &primary.unique_prefix(),
        BusOptions {
            partitions: 4,
            ..BusOptions::default()
        },
    )
    .await
    .expect("redis bus");
    let ingest = start_on(bus, None, |s| {
        s.redis.url = url.clone();
        s.redis.min_replica_acks = 1;
        // Long enough for a replica's confirmation on a loaded machine; the refused push
        // waits this long once.
        s.redis.replica_ack_timeout_ms = 2_000;
        s.section_mut::<IngestSettings>().retry_after_secs = RETRY_AFTER_SECS;
    })
    .await;
    let batch = stock_body(&[("ACK-1", 5, 1), ("ACK-2", 7, 1)]);
    let key = [("idempotency-key", "acked-1".to_owned())];

    // No replica: the primary applied the push, but it is not acknowledged.
    let refused = ingest.erp.post_signed("/v1/stock", &batch, &key).await;
    assert_eq!(refused.status, 503, "{}", refused.body);
    assert_eq!(refused.body["error"]["code"], "unavailable");
    assert!(
        refused.body["error"]["message"]
            .as_str()
            .is_some_and(|m| m.contains("replica")),
        "{}",
        refused.body
    );
    assert_eq!(
        refused.headers[http::header::RETRY_AFTER],
        RETRY_AFTER_SECS.to_string()
    );

    // With a replica, the retry of the same batch is acknowledged; the items the first
    // attempt appended count as duplicates and are not appended again.
    let replica = RedisServer::start();
    attach(&replica, &primary);
    let accepted = ingest.erp.post_signed("/v1/stock", &batch, &key).await;
    assert_eq!(accepted.status, 202, "{}", accepted.body);
    assert_eq!(accepted.body["applied"], 0, "{}", accepted.body);
    assert_eq!(accepted.body["duplicate"], 2, "{}", accepted.body);
    let fresh = ingest
        .erp
        .post_signed("/v1/stock", &stock_body(&[("ACK-1", 4, 2)]), &[])
        .await;
    assert_eq!(fresh.status, 202, "{}", fresh.body);
    assert_eq!(fresh.body["applied"], 1, "{}", fresh.body);

    let updates = ingest.stock_updates().await;
    let mut seen: Vec<(String, u64)> = updates
        .iter()
        .filter_map(|u| u.update.as_ref())
        .map(|u| (u.sku.clone(), u.sequence))
        .collect();
    seen.sort();
    assert_eq!(
        seen,
        [
            ("ACK-1".to_owned(), 1),
            ("ACK-1".to_owned(), 2),
            ("ACK-2".to_owned(), 1)
        ]
    );

    // The replica holds every acknowledged append.
    let (primary_len, replica_len) = {
        let count = |port: u16| -> u64 {
            let keys: Vec<String> = redis::cmd("KEYS")
                .arg("*:s:stock")
                .query(&mut on(port))
                .expect("KEYS");
            keys.iter()
                .map(|k| {
                    redis::cmd("XLEN")
                        .arg(k)
                        .query::<u64>(&mut on(port))
                        .expect("XLEN")
                })
                .sum()
        };
        (count(primary.port()), count(replica.port()))
    };
    assert_eq!((primary_len, replica_len), (3, 3));
    ingest.stop().await;
}
