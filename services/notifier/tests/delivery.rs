//! Webhook delivery against a real HTTP sink and a real Redis: signatures, coalescing,
//! outages, dead letters and redelivery, isolation between partners, and a killed
//! notifier.

mod support;

use ratemesh_notifier::NotifierSettings;
use std::collections::HashMap;
use std::time::Duration;

use ratemesh_bus::testkit::RedisServer;
use ratemesh_proto::v1;
use ratemesh_runtime::Role;
use ratemesh_testkit::{Sink, eventually};
use support::*;

const WAIT: Duration = Duration::from_secs(20);

fn category(c: &str) -> v1::PartnerFilter {
    v1::PartnerFilter {
        categories: vec![c.into()],
        ..Default::default()
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn webhooks_are_signed_with_the_partner_secret_and_both_secrets_during_rotation() {
    let redis = RedisServer::start();
    let prefix = redis.unique_prefix();
    let sink = Sink::start().await;
    let notifier = Notifier::start(&redis, &prefix, fast_settings()).await;
    let secret = notifier
        .add_partner("acme", &sink.url(), category("shoes"))
        .await;
    let bus = publisher(&redis, &prefix).await;

    publish_rate(&bus, rate_changed("SKU-1", "shoes", 7, "0.0825", "0.07")).await;
    publish_rate(&bus, rate_changed("SKU-2", "hats", 3, "0.05", "0.04")).await;
    let first = eventually("the first webhook", WAIT, || async {
        sink.accepted().into_iter().next()
    })
    .await;
    assert!(
        first.verifies(&secret),
        "signature must verify under the partner secret"
    );
    assert!(!first.verifies("some-other-secret"));
    let body = first.json();
    assert_eq!(body.event_type, "rate.changed");
    assert_eq!(
        first.header("ratemesh-event-id"),
        Some(body.event_id.as_str())
    );
    let rates = body.rates.expect("rates");
    assert_eq!(rates.len(), 1, "the hats SKU is filtered out: {rates:?}");
    assert_eq!(rates[0].sku, "SKU-1");
    assert_eq!(rates[0].rate, "0.0825");
    assert_eq!(rates[0].previous_rate.as_deref(), Some("0.07"));
    assert_eq!(rates[0].version, 7);
    assert_eq!(rates[0].reasons[0].code, "BAND");

    // Rotate: during the overlap both the old and the new secret verify.
    let rotated = notifier
        .client(Role::Admin)
        .await
        .rotate_secret(v1::RotateSecretRequest {
            id: "acme".into(),
            overlap: Some(prost_types::Duration {
                seconds: 3600,
                nanos: 0,
            }),
        })
        .await
        .expect("rotate")
        .into_inner();
    assert_ne!(rotated.signing_secret, secret);
    publish_incentive(&bus, "SKU-1", "shoes").await;
    let second = eventually("the incentive webhook", WAIT, || async {
        sink.accepted().into_iter().nth(1)
    })
    .await;
    assert_eq!(second.json().event_type, "incentive.changed");
    assert_eq!(second.json().incentive.expect("incentive").sku, "SKU-1");
    assert!(
        second.verifies(&secret),
        "old secret still valid in the overlap"
    );
    assert!(second.verifies(&rotated.signing_secret), "new secret valid");
    notifier.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_burst_is_coalesced_into_one_post_with_the_latest_version_of_each_sku() {
    let redis = RedisServer::start();
    let prefix = redis.unique_prefix();
    let sink = Sink::start().await;
    let mut settings = fast_settings();
    settings
        .section_mut::<NotifierSettings>()
        .coalesce_window_ms = 1_500;
    let notifier = Notifier::start(&redis, &prefix, settings).await;
    let secret = notifier
        .add_partner("acme", &sink.url(), v1::PartnerFilter::default())
        .await;
    let bus = publisher(&redis, &prefix).await;

    publish_rate(&bus, rate_changed("A", "shoes", 1, "0.05", "")).await;
    publish_rate(&bus, rate_changed("A", "shoes", 2, "0.06", "0.05")).await;
    publish_rate(&bus, rate_changed("B", "shoes", 4, "0.03", "0.02")).await;
    publish_rate(&bus, rate_changed("A", "shoes", 3, "0.07", "0.06")).await;
    // A stale redelivery of an older version changes nothing.
    publish_rate(&bus, rate_changed("A", "shoes", 2, "0.06", "0.05")).await;

    let post = eventually("the coalesced webhook", WAIT, || async {
        sink.accepted().into_iter().next()
    })
    .await;
    assert!(post.verifies(&secret));
    let rates = post.json().rates.expect("rates");
    let summary: Vec<(String, u64, String)> = rates
        .iter()
        .map(|r| (r.sku.clone(), r.version, r.rate.clone()))
        .collect();
    assert_eq!(
        summary,
        vec![
            ("A".into(), 3, "0.07".into()),
            ("B".into(), 4, "0.03".into())
        ],
        "latest version per SKU, in version order"
    );
    assert_eq!(rates[0].previous_rate, None, "A was new before the burst");
    // Nothing else arrives for the burst.
    tokio::time::sleep(Duration::from_millis(2_000)).await;
    assert_eq!(sink.received().len(), 1, "one POST for the whole burst");
    let deliveries = notifier.deliveries("acme").await;
    assert_eq!(deliveries.len(), 1);
    assert_eq!(deliveries[0].skus, vec!["A".to_owned(), "B".to_owned()]);
    assert_eq!(deliveries[0].status, v1::DeliveryStatus::Delivered as i32);
    notifier.stop().await;
}

/// A partner's `min_change` is measured against the rate last sent to it, window after
/// window: a small move is left out, a later larger one from the same sent rate is sent,
/// and each window after the first opens and delivers on its own.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn changes_below_min_change_are_left_out_against_the_rate_last_sent() {
    let redis = RedisServer::start();
    let prefix = redis.unique_prefix();
    let sink = Sink::start().await;
    let notifier = Notifier::start(&redis, &prefix, fast_settings()).await;
    let filter = v1::PartnerFilter {
        min_change: "0.01".into(),
        ..Default::default()
    };
    notifier.add_partner("acme", &sink.url(), filter).await;
    let bus = publisher(&redis, &prefix).await;
    let summary = |n: usize| {
        let sink = &sink;
        async move {
            let post = sink.accepted().into_iter().nth(n)?;
            let rates = post.json().rates.expect("rates");
            Some(
                rates
                    .iter()
                    .map(|r| (r.sku.clone(), r.version, r.rate.clone()))
                    .collect::<Vec<_>>(),
            )
        }
    };

    publish_rate(&bus, rate_changed("A", "shoes", 1, "0.05", "")).await;
    let first = eventually("the first window", WAIT, || summary(0)).await;
    assert_eq!(
        first,
        vec![("A".into(), 1, "0.05".into())],
        "never sent: sent"
    );

    // 0.005 from the rate sent: left out; B was never sent.
    publish_rate(&bus, rate_changed("A", "shoes", 2, "0.055", "0.05")).await;
    publish_rate(&bus, rate_changed("B", "shoes", 1, "0.04", "")).await;
    let second = eventually("the second window", WAIT, || summary(1)).await;
    assert_eq!(second, vec![("B".into(), 1, "0.04".into())]);

    // 0.015 from the rate sent (not from the one left out): sent.
    publish_rate(&bus, rate_changed("A", "shoes", 3, "0.065", "0.055")).await;
    let third = eventually("the third window", WAIT, || summary(2)).await;
    assert_eq!(third, vec![("A".into(), 3, "0.065".into())]);
    tokio::time::sleep(Duration::from_millis(800)).await;
    assert_eq!(sink.received().len(), 3, "one POST per window");
    notifier.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_endpoint_down_for_a_while_then_back_gets_every_event_and_duplicates_keep_their_id() {
    let redis = RedisServer::start();
    let prefix = redis.unique_prefix();
    let sink = Sink::start().await;
    let mut settings = fast_settings();
    settings
        .section_mut::<NotifierSettings>()
        .coalesce_window_ms = 100;
    let notifier = Notifier::start(&redis, &prefix, settings).await;
    let secret = notifier
        .add_partner("acme", &sink.url(), v1::PartnerFilter::default())
        .await;
    let bus = publisher(&redis, &prefix).await;

    sink.answer(503);
    for (i, sku) in ["S1", "S2", "S3", "S4", "S5"].iter().enumerate() {
        publish_rate(&bus, rate_changed(sku, "shoes", 1, "0.05", "")).await;
        publish_incentive(&bus, sku, "shoes").await;
        if i % 2 == 0 {
            tokio::time::sleep(Duration::from_millis(300)).await;
        }
    }
    eventually(
        "failed attempts while the endpoint is down",
        WAIT,
        || async { (sink.received().len() >= 8).then_some(()) },
    )
    .await;
    tokio::time::sleep(Duration::from_secs(3)).await;
    sink.answer(200);

    let delivered = eventually("every delivery delivered", WAIT, || async {
        let deliveries = notifier.deliveries("acme").await;
        (!deliveries.is_empty()
            && deliveries
                .iter()
                .all(|d| d.status == v1::DeliveryStatus::Delivered as i32))
        .then_some(deliveries)
    })
    .await;
    assert!(
        delivered.iter().any(|d| d.attempts > 1),
        "the outage caused retries"
    );

    // Every SKU's rate and incentive reached the partner.
    let accepted = sink.accepted();
    let mut rate_skus: Vec<String> = Vec::new();
    let mut incentive_skus: Vec<String> = Vec::new();
    for r in &accepted {
        assert!(r.verifies(&secret));
        let body = r.json();
        for rate in body.rates.unwrap_or_default() {
            rate_skus.push(rate.sku);
        }
        if let Some(incentive) = body.incentive {
            incentive_skus.push(incentive.sku);
        }
    }
    rate_skus.sort();
    rate_skus.dedup();
    incentive_skus.sort();
    incentive_skus.dedup();
    let all: Vec<String> = ["S1", "S2", "S3", "S4", "S5"].map(String::from).to_vec();
    assert_eq!(rate_skus, all);
    assert_eq!(incentive_skus, all);

    // Retries resend the same event: the same id always carries the same body.
    let mut bodies: HashMap<String, Vec<u8>> = HashMap::new();
    for r in sink.received() {
        let id = r.header("ratemesh-event-id").expect("event id").to_owned();
        assert_eq!(id, r.json().event_id);
        let previous = bodies.entry(id).or_insert_with(|| r.body.to_vec());
        assert_eq!(previous, &r.body.to_vec(), "a retry changed the body");
    }
    assert_eq!(bodies.len(), delivered.len(), "one event id per delivery");
    notifier.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_delivery_is_dead_lettered_after_the_last_attempt_and_can_be_redelivered() {
    let redis = RedisServer::start();
    let prefix = redis.unique_prefix();
    let sink = Sink::start().await;
    let mut settings = fast_settings();
    settings.section_mut::<NotifierSettings>().max_attempts = 3;
    let notifier = Notifier::start(&redis, &prefix, settings).await;
    let secret = notifier
        .add_partner("acme", &sink.url(), v1::PartnerFilter::default())
        .await;
    let bus = publisher(&redis, &prefix).await;

    sink.answer(500);
    publish_incentive(&bus, "SKU-9", "shoes").await;
    let dead = eventually("a dead delivery", WAIT, || async {
        notifier
            .deliveries("acme")
            .await
            .into_iter()
            .find(|d| d.status == v1::DeliveryStatus::Dead as i32)
    })
    .await;
    assert_eq!(dead.attempts, 3);
    assert_eq!(dead.last_response_code, 500);
    assert_eq!(dead.last_error, "HTTP 500");
    assert_eq!(sink.received().len(), 3, "no attempt after the last one");

    let mut admin = notifier.client(Role::Admin).await;
    assert_eq!(
        dead_listed(&mut admin).await,
        std::slice::from_ref(&dead.id)
    );
    // Only DEAD deliveries can be requeued; an unknown id requeues nothing.
    let refused = admin
        .redeliver_dead_letters(v1::RedeliverDeadLettersRequest {
            partner_id: "acme".into(),
            delivery_ids: vec![dead.id.clone(), "01JUNKNOWN0000000000000000".into()],
        })
        .await
        .expect_err("unknown id");
    assert_eq!(refused.code(), tonic::Code::FailedPrecondition);

    sink.answer(200);
    assert_eq!(redeliver_every_dead(&mut admin).await, 1);
    let delivered = eventually("the redelivered webhook", WAIT, || async {
        sink.accepted().into_iter().next()
    })
    .await;
    assert!(delivered.verifies(&secret));
    assert_eq!(
        delivered.header("ratemesh-event-id"),
        Some(dead.event_id.as_str()),
        "redelivery keeps the event id"
    );
    let after = eventually("the delivery marked delivered", WAIT, || async {
        notifier
            .deliveries("acme")
            .await
            .into_iter()
            .find(|d| d.id == dead.id && d.status == v1::DeliveryStatus::Delivered as i32)
    })
    .await;
    assert_eq!(after.attempts, 1, "a fresh round of attempts");
    assert_eq!(
        after.last_error, "",
        "the dead round's error is not this round's"
    );
    assert_eq!(after.last_response_code, 200);
    assert!(dead_listed(&mut admin).await.is_empty(), "none dead now");

    // A requeue cut short after its first write leaves the delivery among the dead ones
    // though its record is delivered: it is neither listed as dead nor requeued, and
    // redelivering every dead one forgets it.
    let dead_set = "notifier.dead-deliveries";
    bus.write_state(ratemesh_bus::StateWrite::new(dead_set, "acme").set(dead.id.clone(), ""))
        .await
        .expect("write");
    assert!(dead_listed(&mut admin).await.is_empty());
    assert_eq!(redeliver_every_dead(&mut admin).await, 0);
    assert_eq!(
        bus.count_state_fields(dead_set, "acme")
            .await
            .expect("count"),
        0
    );
    notifier.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn deliveries_list_newest_first_a_page_at_a_time() {
    let redis = RedisServer::start();
    let prefix = redis.unique_prefix();
    let sink = Sink::start().await;
    let notifier = Notifier::start(&redis, &prefix, fast_settings()).await;
    notifier
        .add_partner("acme", &sink.url(), v1::PartnerFilter::default())
        .await;
    let bus = publisher(&redis, &prefix).await;
    for i in 0..5 {
        publish_incentive(&bus, &format!("SKU-{i}"), "shoes").await;
    }
    eventually("5 deliveries delivered", WAIT, || async {
        let delivered = notifier.deliveries("acme").await.into_iter();
        (delivered
            .filter(|d| d.status == v1::DeliveryStatus::Delivered as i32)
            .count()
            == 5)
            .then_some(())
    })
    .await;
    let mut admin = notifier.client(Role::Admin).await;
    let mut pages = Vec::new();
    let mut page_token = String::new();
    loop {
        let page = admin
            .list_deliveries(v1::ListDeliveriesRequest {
                partner_id: "acme".into(),
                status: v1::DeliveryStatus::Delivered as i32,
                page_size: 2,
                page_token: page_token.clone(),
            })
            .await
            .expect("list")
            .into_inner();
        pages.push(
            page.deliveries
                .iter()
                .map(|d| d.id.clone())
                .collect::<Vec<_>>(),
        );
        if page.next_page_token.is_empty() {
            break;
        }
        page_token = page.next_page_token;
    }
    let sizes: Vec<usize> = pages.iter().map(Vec::len).collect();
    assert_eq!(sizes, [2, 2, 1]);
    let listed: Vec<String> = pages.concat();
    let mut newest_first = listed.clone();
    newest_first.sort_by(|a, b| b.cmp(a));
    newest_first.dedup();
    assert_eq!(listed, newest_first, "newest first, each once");
    assert!(
        listed_ids(&mut admin, v1::DeliveryStatus::Pending)
            .await
            .is_empty()
    );
    notifier.stop().await;
}

/// Requeues every dead delivery of acme; how many were.
async fn redeliver_every_dead(admin: &mut ratemesh_testkit::app::PartnersClient) -> u32 {
    let requeued = admin
        .redeliver_dead_letters(v1::RedeliverDeadLettersRequest {
            partner_id: "acme".into(),
            delivery_ids: vec![],
        })
        .await
        .expect("redeliver")
        .into_inner();
    requeued.requeued
}

/// The ids of acme's deliveries listed as dead.
async fn dead_listed(admin: &mut ratemesh_testkit::app::PartnersClient) -> Vec<String> {
    listed_ids(admin, v1::DeliveryStatus::Dead).await
}

/// The ids of acme's deliveries listed in `status` (the first page).
async fn listed_ids(
    admin: &mut ratemesh_testkit::app::PartnersClient,
    status: v1::DeliveryStatus,
) -> Vec<String> {
    let listed = admin
        .list_deliveries(v1::ListDeliveriesRequest {
            partner_id: "acme".into(),
            status: status as i32,
            ..Default::default()
        })
        .await
        .expect("list")
        .into_inner();
    listed.deliveries.into_iter().map(|d| d.id).collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_slow_partner_does_not_delay_a_fast_one() {
    let redis = RedisServer::start();
    let prefix = redis.unique_prefix();
    let slow = Sink::start().await;
    let fast = Sink::start().await;
    slow.delay(Duration::from_secs(2));
    let mut settings = fast_settings();
    settings
        .section_mut::<NotifierSettings>()
        .max_in_flight_per_partner = 2;
    let notifier = Notifier::start(&redis, &prefix, settings).await;
    notifier
        .add_partner("slow", &slow.url(), v1::PartnerFilter::default())
        .await;
    notifier
        .add_partner("fast", &fast.url(), v1::PartnerFilter::default())
        .await;
    let bus = publisher(&redis, &prefix).await;

    for i in 0..8 {
        publish_incentive(&bus, &format!("SKU-{i}"), "shoes").await;
    }
    eventually("all 8 webhooks at the fast partner", WAIT, || async {
        (fast.accepted().len() == 8).then_some(())
    })
    .await;
    // The slow partner, with 2 slots and 2 s per answer, is far from done: the fast one
    // did not wait behind it.
    assert!(
        slow.completed() <= 4,
        "slow partner completed {} of 8 before the fast one finished",
        slow.completed()
    );
    assert!(
        slow.received().len() <= 4,
        "at most its slots in flight per round"
    );
    eventually(
        "the slow partner catches up",
        Duration::from_secs(30),
        || async { (slow.accepted().len() == 8).then_some(()) },
    )
    .await;
    notifier.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn killing_the_notifier_mid_retry_loses_nothing() {
    let redis = RedisServer::start();
    let prefix = redis.unique_prefix();
    let sink = Sink::start().await;
    let mut settings = fast_settings();
    settings
        .section_mut::<NotifierSettings>()
        .coalesce_window_ms = 100;
    let notifier = Notifier::start(&redis, &prefix, settings.clone()).await;
    let secret = notifier
        .add_partner("acme", &sink.url(), v1::PartnerFilter::default())
        .await;
    let bus = publisher(&redis, &prefix).await;

    sink.answer(503);
    for i in 0..4 {
        publish_incentive(&bus, &format!("SKU-{i}"), "shoes").await;
        publish_rate(
            &bus,
            rate_changed(&format!("SKU-{i}"), "shoes", 1, "0.05", ""),
        )
        .await;
    }
    eventually("deliveries retrying", WAIT, || async {
        let retrying = notifier
            .deliveries("acme")
            .await
            .iter()
            .filter(|d| d.status == v1::DeliveryStatus::Retrying as i32)
            .count();
        (retrying >= 5).then_some(())
    })
    .await;
    let retrying = notifier.deliveries("acme").await;
    let before: Vec<String> = retrying.iter().map(|d| d.event_id.clone()).collect();
    notifier.kill().await;
    // Killed between storing its deliveries and scheduling their next attempts: the
    // restarted notifier finds them among the partner's open deliveries. An open entry
    // whose delivery was never stored (an old creation cut short) is dropped.
    for delivery in &retrying {
        let member = format!("acme:{}", delivery.id);
        bus.cancel("notifier.attempt", &member)
            .await
            .expect("cancel");
    }
    let never_stored = "01ARZ3NDEKTSV4RRFFQ69G5FAV";
    let open = ratemesh_bus::StateWrite::new("notifier.open-deliveries", "acme");
    bus.write_state(open.set(never_stored, ""))
        .await
        .expect("write");
    // Events published while no notifier runs wait in the stream.
    publish_incentive(&bus, "SKU-late", "shoes").await;

    sink.answer(200);
    let restarted = Notifier::start(&redis, &prefix, settings).await;
    let delivered = eventually("everything delivered after the restart", WAIT, || async {
        let deliveries = restarted.deliveries("acme").await;
        let skus: std::collections::BTreeSet<String> =
            deliveries.iter().flat_map(|d| d.skus.clone()).collect();
        (skus.len() == 5
            && deliveries
                .iter()
                .all(|d| d.status == v1::DeliveryStatus::Delivered as i32))
        .then_some(deliveries)
    })
    .await;
    for event_id in &before {
        assert!(
            delivered.iter().any(|d| &d.event_id == event_id),
            "delivery {event_id} from before the kill is kept"
        );
        assert!(
            sink.accepted()
                .iter()
                .any(|r| r.header("ratemesh-event-id") == Some(event_id.as_str())),
            "delivery {event_id} reached the partner with its original id"
        );
    }
    let open = bus.count_state_fields("notifier.open-deliveries", "acme");
    assert_eq!(open.await.expect("count"), 0, "nothing left open");
    let accepted = sink.accepted();
    assert!(accepted.iter().all(|r| r.verifies(&secret)));
    let rate_skus: std::collections::BTreeSet<String> = accepted
        .iter()
        .flat_map(|r| r.json().rates.unwrap_or_default())
        .map(|r| r.sku)
        .collect();
    assert_eq!(
        rate_skus.len(),
        4,
        "every rate change delivered: {rate_skus:?}"
    );
    restarted.stop().await;
}
