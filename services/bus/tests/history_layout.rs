//! Kept versions written by an earlier release (one sorted set per key, the current version
//! in it too) are still answered, and move to the compact layout on the key's next kept
//! write without losing a version.

use bytes::Bytes;
use ratemesh_bus::partition::partition_of;
use ratemesh_bus::testkit::RedisServer;
use ratemesh_bus::{Bus, BusOptions, HistoryLimits, StateWrite};

#[tokio::test]
async fn history_in_the_earlier_layout_is_read_and_moved_by_the_next_kept_write() {
    let server = RedisServer::start();
    let prefix = server.unique_prefix();
    let opts = BusOptions::default();
    let bus = Bus::redis(&server.url(), &prefix, opts.clone())
        .await
        .unwrap();
    let tag = format!("{{{prefix}:p{}}}", partition_of("SKU-L", opts.partitions));
    let legacy = format!("{tag}:h:rate:SKU-L");
    let mut conn = redis::Client::open(server.url())
        .unwrap()
        .get_multiplexed_async_connection()
        .await
        .unwrap();
    let member = |version: u64| {
        let mut m = version.to_be_bytes().to_vec();
        m.extend_from_slice(format!("card v{version}").as_bytes());
        m
    };
    redis::cmd("ZADD")
        .arg(&legacy)
        .arg(1_000)
        .arg(member(1))
        .arg(2_000)
        .arg(member(2))
        .query_async::<()>(&mut conn)
        .await
        .unwrap();
    redis::cmd("HSET")
        .arg(format!("{tag}:st:rate:SKU-L"))
        .arg("_v")
        .arg(2)
        .arg("f:card")
        .arg("card v2")
        .query_async::<()>(&mut conn)
        .await
        .unwrap();
    let card = |version: u64| Bytes::from(format!("card v{version}"));
    let at = |t: i64| {
        let bus = bus.clone();
        async move {
            let lookup = bus.history_at("rate", "SKU-L", t).await.unwrap();
            (lookup.found.map(|e| (e.version, e.payload)), lookup.oldest)
        }
    };
    assert_eq!(at(999).await, (None, Some((1, 1_000))));
    assert_eq!(at(1_500).await, (Some((1, card(1))), Some((1, 1_000))));
    assert_eq!(at(2_500).await, (Some((2, card(2))), Some((1, 1_000))));

    let limits = HistoryLimits {
        keep_since_us: 0,
        max_versions: 10,
    };
    let write = StateWrite::new("rate", "SKU-L").expect_version(2).set_kept(
        "card",
        card(3),
        3_000,
        3,
        limits,
    );
    bus.write_state(write).await.unwrap();
    let left: bool = redis::cmd("EXISTS")
        .arg(&legacy)
        .query_async(&mut conn)
        .await
        .unwrap();
    assert!(!left, "the sorted set is gone once its versions moved");
    assert_eq!(at(1_500).await, (Some((1, card(1))), Some((1, 1_000))));
    assert_eq!(at(2_500).await, (Some((2, card(2))), Some((1, 1_000))));
    assert_eq!(at(3_500).await, (Some((3, card(3))), Some((1, 1_000))));

    // Limits apply to the moved versions like to any other: two kept, v1 goes.
    let write = StateWrite::new("rate", "SKU-L").expect_version(3).set_kept(
        "card",
        card(4),
        4_000,
        4,
        HistoryLimits {
            keep_since_us: 0,
            max_versions: 2,
        },
    );
    bus.write_state(write).await.unwrap();
    assert_eq!(at(3_500).await, (Some((3, card(3))), Some((3, 3_000))));
    assert_eq!(at(2_500).await, (None, Some((3, 3_000))));
    assert_eq!(at(9_000).await, (Some((4, card(4))), Some((3, 3_000))));
}
