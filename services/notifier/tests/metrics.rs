//! The notifier's metrics on the admin `/metrics` endpoint, after real deliveries to local
//! sinks: deliveries by outcome, delivery lag, dead letters and open breakers.
//!
//! One test in this binary: the dead-letter and breaker gauges are process-wide, and a
//! second notifier would report its own figures into them.

mod support;

use ratemesh_notifier::NotifierSettings;
use std::time::Duration;

use ratemesh_bus::testkit::RedisServer;
use ratemesh_proto::v1;
use ratemesh_testkit::{Sink, eventually};
use support::*;

fn category(c: &str) -> v1::PartnerFilter {
    v1::PartnerFilter {
        categories: vec![c.into()],
        ..Default::default()
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_count_deliveries_by_outcome_lag_dead_letters_and_open_breakers() {
    let redis = RedisServer::start();
    let mut settings = fast_settings();
    settings.section_mut::<NotifierSettings>().max_attempts = 2;
    settings
        .section_mut::<NotifierSettings>()
        .breaker_failure_threshold = 2;
    settings.section_mut::<NotifierSettings>().breaker_open_ms = 1_000;
    settings.telemetry.gauge_interval_ms = 50;
    let notifier = Notifier::start(&redis, "metrics", settings).await;
    let good = Sink::start().await;
    let bad = Sink::start().await;
    bad.answer(500);
    notifier
        .add_partner("good", &good.url(), category("shoes"))
        .await;
    notifier
        .add_partner("bad", &bad.url(), category("hats"))
        .await;

    let bus = publisher(&redis, "metrics").await;
    publish_rate(&bus, rate_changed("SHOE-1", "shoes", 1, "0.05", "0.04")).await;
    publish_rate(&bus, rate_changed("HAT-1", "hats", 1, "0.05", "0.04")).await;

    eventually(
        "the good partner's delivery",
        Duration::from_secs(10),
        || async { (!good.accepted().is_empty()).then_some(()) },
    )
    .await;
    // The bad partner: a failure that is retried, then the last one, which dead-letters.
    let page = eventually(
        "every figure on /metrics",
        Duration::from_secs(15),
        || async {
            let page = notifier.metrics().await;
            let ok = [
                (
                    "ratemesh_notifier_deliveries_total",
                    "outcome=\"delivered\"",
                ),
                ("ratemesh_notifier_deliveries_total", "outcome=\"retry\""),
                ("ratemesh_notifier_deliveries_total", "outcome=\"dead\""),
                ("ratemesh_notifier_delivery_lag_seconds_count", ""),
                ("ratemesh_notifier_dead_letters", ""),
                ("ratemesh_notifier_breakers_open", ""),
                ("ratemesh_notifier_breaker_opened_total", ""),
            ]
            .iter()
            .all(|(name, labels)| sample(&page, name, labels).is_some_and(|v| v >= 1.0));
            ok.then_some(page)
        },
    )
    .await;
    assert_eq!(bad.received().len(), 2, "max_attempts = 2");
    assert_eq!(
        sample(&page, "ratemesh_notifier_dead_letters", ""),
        Some(1.0)
    );
    assert_eq!(
        sample(&page, "ratemesh_notifier_breakers_open", ""),
        Some(1.0)
    );
    // The lag runs from the change's time to the 2xx: at least the coalescing window
    // (400 ms here), so the sample is above the 0.25 s bucket and within the 10 s one.
    assert_eq!(
        sample(
            &page,
            "ratemesh_notifier_delivery_lag_seconds_bucket",
            "le=\"0.25\""
        ),
        Some(0.0),
        "{page}"
    );
    assert!(
        sample(
            &page,
            "ratemesh_notifier_delivery_lag_seconds_bucket",
            "le=\"10\""
        )
        .is_some_and(|n| n >= 1.0),
        "{page}"
    );

    // Redelivering the dead letter takes the gauges back to zero once it is delivered
    // (the breaker's trial attempt succeeds and closes it).
    bad.answer(200);
    notifier
        .client(ratemesh_runtime::Role::Admin)
        .await
        .redeliver_dead_letters(v1::RedeliverDeadLettersRequest {
            partner_id: "bad".into(),
            ..Default::default()
        })
        .await
        .expect("redeliver");
    eventually("the gauges back at 0", Duration::from_secs(15), || async {
        let page = notifier.metrics().await;
        (sample(&page, "ratemesh_notifier_dead_letters", "") == Some(0.0)
            && sample(&page, "ratemesh_notifier_breakers_open", "") == Some(0.0))
        .then_some(())
    })
    .await;
    notifier.stop().await;
}
