//! Fault test on a real Redis: a rates consumer is aborted (its task dropped without
//! acking) in the middle of 10,000 stock updates; another consumer of the group finishes;
//! the final cards equal `core::replay` of the same inputs.

mod engine_support;

use std::time::{Duration, Instant};

use engine_support::*;
use ratemesh_bus::testkit::RedisServer;
use ratemesh_bus::{Bus, BusOptions};
use ratemesh_core::{Event, replay};

const SKUS: usize = 200;
const READINGS_PER_SKU: usize = 50;

fn inputs() -> Vec<(Event, ratemesh_bus::Event)> {
    let mut all = Vec::new();
    let categories = ["home", "electronics", "apparel", "toys"];
    for s in 0..SKUS {
        let name = format!("F-{s:04}");
        all.push(product(&name, categories[s % 4], 80, 30, t(0)));
    }
    // Readings per SKU in ERP order, interleaved across SKUs as an ERP feed would be;
    // some SKUs get no ERP velocity, so ours is estimated from depletion.
    for r in 0..READINGS_PER_SKU {
        for s in 0..SKUS {
            let name = format!("F-{s:04}");
            let on_hand = ((r * 131 + s * 17) % 900) as i64;
            let velocity = (s % 3 != 0).then_some(((r + s) % 40 + 1) as i64);
            let at = t(10 + (r as i64) * 90);
            all.push(stock(&name, on_hand, r as u64 + 1, at, velocity));
        }
    }
    assert_eq!(all.len() - SKUS, SKUS * READINGS_PER_SKU);
    all
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_aborted_consumer_loses_nothing_and_cards_equal_the_offline_replay() {
    let redis = RedisServer::start();
    let options = BusOptions {
        partitions: 4,
        max_deliveries: 10,
        reclaim_idle: Duration::from_millis(400),
        read_block: Duration::from_millis(50),
        lease_ttl: Duration::from_millis(500),
        batch_size: 64,
    };
    let bus = Bus::redis(&redis.url(), &redis.unique_prefix(), options)
        .await
        .unwrap();
    let policy = example_policy();
    let all = inputs();
    for chunk in all.chunks(1000) {
        bus.publish_batch(STOCK, chunk.iter().map(|(_, e)| e.clone()).collect())
            .await
            .unwrap();
    }

    // Consumer A works until part of the feed is done, then is aborted mid-work.
    let engine_a = engine(&bus, policy.clone());
    let (_stop_a, task_a) = spawn_consumer(&engine_a, STOCK, "consumer-a");
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let stats = bus.stream_stats(STOCK, GROUP).await.unwrap();
        // abort while A holds delivered, unacked entries
        if stats.undelivered < 7_000 && stats.pending > 0 {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "consumer a made no progress: {stats:?}"
        );
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    task_a.abort();
    let _ = task_a.await;
    let stats = bus.stream_stats(STOCK, GROUP).await.unwrap();
    assert!(
        stats.backlog > 0,
        "the abort came too late to test anything"
    );

    // B joins once A's unacked entries are idle, so it reclaims them before new ones.
    tokio::time::sleep(Duration::from_millis(500)).await;
    let engine_b = engine(&bus, policy.clone());
    let (stop_b, task_b) = spawn_consumer(&engine_b, STOCK, "consumer-b");
    drained(&bus, STOCK, Duration::from_secs(120)).await;
    stop_b.cancel();
    task_b.await.unwrap().unwrap();
    let after = bus.stream_stats(STOCK, GROUP).await.unwrap();
    assert_eq!(after.dead_lettered_total, 0, "{after:?}");

    let core: Vec<Event> = all.into_iter().map(|(c, _)| c).collect();
    let expected = replay(&policy, &core);
    assert_eq!(expected.len(), SKUS);
    for (sku, want) in &expected {
        let got = ratemesh_rates::engine::stored_core_card(&engine_b, sku)
            .await
            .unwrap()
            .unwrap_or_else(|| panic!("no card for {sku}"));
        assert_eq!(got.effective_rate, want.effective_rate, "{sku}");
        assert_eq!(got.parts, want.parts, "{sku}");
        assert_eq!(got.reasons, want.reasons, "{sku}");
        assert_eq!(got.computed_at, want.computed_at, "{sku}");
        assert_eq!(got.state, want.state, "{sku}");
        let card = published(&bus, sku.as_str())
            .await
            .unwrap_or_else(|| panic!("nothing published for {sku}"));
        assert_eq!(
            card.effective_rate,
            want.effective_rate.get().normalize().to_string(),
            "{sku}"
        );
    }
}
