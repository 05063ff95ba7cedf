//! What the service logs at INFO stays readable at peak: a line that would repeat on every
//! stock reading of a SKU is DEBUG after its first time (or always), and the metrics count
//! it.

mod support;

use std::sync::{Arc, Mutex};

use chrono::TimeDelta;
use ratemesh_bus::testkit::RedisServer;
use ratemesh_incentives::ManualClock;
use ratemesh_proto::v1;
use ratemesh_runtime::Role;
use support::*;
use tracing::field::{Field, Visit};
use tracing_subscriber::layer::{Context, SubscriberExt};
use tracing_subscriber::util::SubscriberInitExt;

/// Every event's level and message, from any thread of this test process.
#[derive(Clone, Default)]
struct Recorded(Arc<Mutex<Vec<(tracing::Level, String)>>>);

struct Message(String);

impl Visit for Message {
    fn record_debug(&mut self, field: &Field, value: &dyn std::fmt::Debug) {
        if field.name() == "message" {
            self.0 = format!("{value:?}");
        }
    }
}

impl<S: tracing::Subscriber> tracing_subscriber::Layer<S> for Recorded {
    fn on_event(&self, event: &tracing::Event<'_>, _ctx: Context<'_, S>) {
        let mut message = Message(String::new());
        event.record(&mut message);
        self.0
            .lock()
            .expect("log lock")
            .push((*event.metadata().level(), message.0));
    }
}

impl Recorded {
    fn levels_of(&self, text: &str) -> Vec<tracing::Level> {
        self.0
            .lock()
            .expect("log lock")
            .iter()
            .filter(|(_, m)| m.contains(text))
            .map(|(l, _)| *l)
            .collect()
    }
}

#[tokio::test]
async fn a_sku_in_cooldown_is_skipped_at_debug_not_info() {
    let recorded = Recorded::default();
    // Installed before the service starts, so the test helper's own subscriber stays out.
    tracing_subscriber::registry()
        .with(recorded.clone())
        .try_init()
        .expect("the only subscriber of this test process");

    let redis = RedisServer::start();
    let clock = ManualClock::new(t0());
    let app = start(&redis, &redis.unique_prefix(), policy(), &clock).await;
    publish(
        &app.bus,
        vec![
            product("CHAIR-1", "home", "100", "30", t0()),
            stock("CHAIR-1", "1000", "5", 1, t0()),
        ],
    )
    .await;
    let opened = wait_transitions(&app.bus, "CHAIR-1", 1).await[0].1.clone();
    app.client(Role::Merchandiser)
        .await
        .cancel_incentive(v1::CancelIncentiveRequest {
            id: opened.id.clone(),
            reason: "wrong season".into(),
        })
        .await
        .expect("cancel");
    wait_transitions(&app.bus, "CHAIR-1", 2).await;

    // Still overstocked: each new reading meets the cooldown. Each is handled before the
    // next is published, so no two land in one batch.
    for sequence in 2..5 {
        clock.advance(TimeDelta::minutes(10));
        publish(
            &app.bus,
            vec![stock(
                "CHAIR-1",
                &(1000 + sequence).to_string(),
                "5",
                sequence,
                clock_now(&clock),
            )],
        )
        .await;
        let skips = (sequence - 1) as usize;
        eventually("a cooldown skip of each reading", || {
            let recorded = recorded.clone();
            async move { recorded.levels_of("skipped: in cooldown").len() >= skips }
        })
        .await;
    }
    let levels = recorded.levels_of("skipped: in cooldown");
    assert!(
        levels.iter().all(|l| *l == tracing::Level::DEBUG),
        "cooldown skips logged at {levels:?}"
    );

    // Category `home` allows two incentives at once. A third overstocked SKU is logged at
    // INFO when it starts waiting for a slot, and at DEBUG on its readings after that.
    for sku in ["TABLE-1", "TABLE-2"] {
        publish(
            &app.bus,
            vec![
                product(sku, "home", "100", "30", clock_now(&clock)),
                stock(sku, "1000", "5", 1, clock_now(&clock)),
            ],
        )
        .await;
        wait_transitions(&app.bus, sku, 1).await;
    }
    publish(
        &app.bus,
        vec![product("LAMP-1", "home", "100", "30", clock_now(&clock))],
    )
    .await;
    for sequence in 1..4 {
        clock.advance(TimeDelta::minutes(10));
        publish(
            &app.bus,
            vec![stock(
                "LAMP-1",
                &(1000 + sequence).to_string(),
                "5",
                sequence,
                clock_now(&clock),
            )],
        )
        .await;
        let skips = sequence as usize;
        eventually("a full-category skip of each reading", || {
            let recorded = recorded.clone();
            async move { recorded.levels_of("category home allows 2").len() >= skips }
        })
        .await;
    }
    let levels = recorded.levels_of("category home allows 2");
    assert_eq!(
        levels
            .iter()
            .filter(|l| **l == tracing::Level::INFO)
            .count(),
        1,
        "full-category skips logged at {levels:?}"
    );
    assert!(
        levels[1..].iter().all(|l| *l == tracing::Level::DEBUG),
        "full-category skips logged at {levels:?}"
    );
    app.stop().await;
}
