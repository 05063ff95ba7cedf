//! Several rates replicas on one real Redis, under the example policy (hysteresis, hold and
//! damping make a card depend on the order of its readings): replicas join mid-feed, one is
//! killed (its task dropped: no ack, no hand-over, its leases lapse), and the final cards
//! equal `core::replay` of the feed for every SKU — rate, version, parts, reasons, state
//! and computation time.

mod engine_support;

use std::time::{Duration, Instant};

use engine_support::*;
use ratemesh_bus::testkit::RedisServer;
use ratemesh_bus::{Bus, BusOptions};
use ratemesh_core::{Event, replay};

const SKUS: usize = 200;
const READINGS_PER_SKU: usize = 30;

fn inputs() -> Vec<(Event, ratemesh_bus::Event)> {
    let mut all = Vec::new();
    let categories = ["home", "electronics", "apparel", "toys"];
    for s in 0..SKUS {
        let name = format!("R-{s:04}");
        all.push(product(&name, categories[s % 4], 80, 30, t(0)));
    }
    // Swings between scarce and overstocked, so the path-dependent parts of the policy
    // (hold, hysteresis, damping) decide many of the cards.
    for r in 0..READINGS_PER_SKU {
        for s in 0..SKUS {
            let name = format!("R-{s:04}");
            let on_hand = if (r + s) % 3 == 0 {
                5
            } else {
                ((r * 97 + s * 31) % 2_000) as i64
            };
            let velocity = (s % 4 != 0).then_some(((r * 7 + s) % 30 + 1) as i64);
            all.push(stock(
                &name,
                on_hand,
                r as u64 + 1,
                t(10 + (r as i64) * 45),
                velocity,
            ));
        }
    }
    all
}

async fn wait_for_progress(bus: &Bus, below: u64) {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let stats = bus.stream_stats(STOCK, GROUP).await.unwrap();
        if stats.undelivered < below && stats.pending > 0 {
            return;
        }
        assert!(Instant::now() < deadline, "no progress: {stats:?}");
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

/// Runs the feed through `replicas` consumers, one of which is killed half-way, and checks
/// every card against the offline replay.
async fn replicas_agree_with_the_replay(replicas: usize) {
    let redis = RedisServer::start();
    let options = BusOptions {
        partitions: 8,
        max_deliveries: 10,
        reclaim_idle: Duration::from_millis(400),
        read_block: Duration::from_millis(50),
        lease_ttl: Duration::from_millis(600),
        batch_size: 32,
    };
    let bus = Bus::redis(&redis.url(), &redis.unique_prefix(), options)
        .await
        .unwrap();
    let policy = example_policy();
    let all = inputs();
    let total = all.len() as u64;
    for chunk in all.chunks(1000) {
        bus.publish_batch(STOCK, chunk.iter().map(|(_, e)| e.clone()).collect())
            .await
            .unwrap();
    }

    // The first replica starts alone; the others join one by one while it works, so
    // partitions change hands mid-feed.
    let mut running = Vec::new();
    for n in 0..replicas {
        let engine = engine(&bus, policy.clone());
        running.push((
            engine.clone(),
            spawn_consumer(&engine, STOCK, &format!("replica-{n}")),
        ));
        wait_for_progress(&bus, total - total * (n as u64 + 1) / (replicas as u64 + 2)).await;
    }
    // Kill the first replica while it holds delivered, unacknowledged entries.
    let (_, (_, killed)) = running.remove(0);
    killed.abort();
    let _ = killed.await;

    drained(&bus, STOCK, Duration::from_secs(120)).await;
    let stats = bus.stream_stats(STOCK, GROUP).await.unwrap();
    assert_eq!(stats.dead_lettered_total, 0, "{stats:?}");
    let engine = running[0].0.clone();
    for (_, (stop, task)) in running {
        stop.cancel();
        task.await.unwrap().unwrap();
    }

    let core: Vec<Event> = all.into_iter().map(|(c, _)| c).collect();
    let expected = replay(&policy, &core);
    assert_eq!(expected.len(), SKUS);
    let mut differ = Vec::new();
    for (sku, want) in &expected {
        let got = ratemesh_rates::engine::stored_core_card(&engine, sku)
            .await
            .unwrap()
            .unwrap_or_else(|| panic!("no card for {sku}"));
        if (
            &got.effective_rate,
            got.version,
            got.computed_at,
            &got.parts,
            &got.reasons,
            &got.state,
        ) != (
            &want.effective_rate,
            want.version,
            want.computed_at,
            &want.parts,
            &want.reasons,
            &want.state,
        ) {
            differ.push(format!(
                "{sku}: {} {:?} where the replay gives {} {:?}",
                got.effective_rate.get(),
                got.reasons,
                want.effective_rate.get(),
                want.reasons
            ));
        }
    }
    assert!(
        differ.is_empty(),
        "{} of {SKUS} cards differ from the replay: {differ:?}",
        differ.len()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_replicas_one_killed_give_the_replayed_cards() {
    replicas_agree_with_the_replay(2).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_replicas_one_killed_give_the_replayed_cards() {
    replicas_agree_with_the_replay(3).await;
}
