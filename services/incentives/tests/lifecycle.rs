//! The automatic lifecycle against a real redis-server: overstock opens, expiry (also
//! across a restart) ends on time, budgets end early, cooldown blocks a re-open, the
//! concurrency limits pick the most overstocked, and two replicas never open twice.

mod support;

use chrono::TimeDelta;
use ratemesh_bus::testkit::RedisServer;
use ratemesh_contract::kinds;
use ratemesh_incentives::ManualClock;
use ratemesh_proto::v1::{
    self, IncentiveEndReason as EndReason, IncentiveState, IncentiveTransition as T,
};
use ratemesh_runtime::Role;
use support::*;

#[tokio::test]
async fn overstock_opens_an_incentive_and_expiry_ends_it_on_time() {
    let redis = RedisServer::start();
    let clock = ManualClock::new(t0());
    let app = start(&redis, &redis.unique_prefix(), policy(), &clock).await;
    // 1000 units selling 5/day = 200 days of cover, above the 100 required.
    publish(
        &app.bus,
        vec![
            product("SOFA-1", "home", "100", "40", t0()),
            stock("SOFA-1", "1000", "5", 1, t0()),
        ],
    )
    .await;
    let events = wait_transitions(&app.bus, "SOFA-1", 1).await;
    let (transition, opened) = &events[0];
    assert_eq!(*transition, T::Opened);
    assert_eq!(opened.state, IncentiveState::Active as i32);
    assert_eq!(opened.origin, v1::IncentiveOrigin::Automatic as i32);
    assert_eq!(opened.bonus_rate, "0.02");
    assert_eq!(opened.opened_by, "overstock-default");
    assert_eq!(
        opened.reason,
        "overstock: 200 days of cover, at least 100 required"
    );
    assert_eq!(opened.days_of_cover_at_open, "200");
    assert_eq!(opened.budget_spend.as_deref(), Some("50"));
    assert_eq!(opened.budget_units.as_deref(), Some("40"));
    assert_eq!(millis(opened.starts_at.as_ref()), t0().timestamp_millis());
    let ends_at = t0() + TimeDelta::hours(48);
    assert_eq!(millis(opened.ends_at.as_ref()), ends_at.timestamp_millis());

    // The entry follows the published contract.
    let all = incentive_events(&app.bus).await;
    assert_eq!(all[0].0, "SOFA-1");
    assert_eq!(all[0].1.as_deref(), Some(kinds::INCENTIVE_CHANGED));
    assert_eq!(all[0].2.meta.as_ref().map(|m| m.event_id.len()), Some(26));

    // One minute before the end nothing happens; at the end it expires.
    clock.set(ends_at - TimeDelta::minutes(1));
    tokio::time::sleep(std::time::Duration::from_millis(200)).await;
    assert_eq!(transitions_of(&app.bus, "SOFA-1").await.len(), 1);
    clock.set(ends_at);
    let events = wait_transitions(&app.bus, "SOFA-1", 2).await;
    let (transition, ended) = &events[1];
    assert_eq!(*transition, T::Ended);
    assert_eq!(ended.id, opened.id);
    assert_eq!(ended.state, IncentiveState::Ended as i32);
    assert_eq!(ended.end_reason, EndReason::Expired as i32);
    assert_eq!(millis(ended.ended_at.as_ref()), ends_at.timestamp_millis());
    assert_eq!(millis(ended.ends_at.as_ref()), ends_at.timestamp_millis());

    let mut client = app.client(Role::Network).await;
    let listed = list(&mut client, v1::ListIncentivesRequest::default()).await;
    assert_eq!(listed.len(), 1);
    assert_eq!(listed[0].state, IncentiveState::Ended as i32);
    app.stop().await;
}

#[tokio::test]
async fn a_restart_in_the_middle_of_an_incentive_still_ends_it_on_time() {
    let redis = RedisServer::start();
    let prefix = redis.unique_prefix();
    let clock = ManualClock::new(t0());
    let first = start(&redis, &prefix, policy(), &clock).await;
    publish(
        &first.bus,
        vec![
            product("RUG-1", "home", "80", "20", t0()),
            stock("RUG-1", "2000", "10", 1, t0()),
        ],
    )
    .await;
    let opened = wait_transitions(&first.bus, "RUG-1", 1).await[0].1.clone();
    clock.advance(TimeDelta::hours(20));
    first.stop().await;

    // The process is gone; the window ends while a new one starts on the same Redis.
    let ends_at = t0() + TimeDelta::hours(48);
    clock.set(ends_at);
    let second = start(&redis, &prefix, policy(), &clock).await;
    let events = wait_transitions(&second.bus, "RUG-1", 2).await;
    assert_eq!(events.len(), 2, "exactly one opening and one ending");
    let (transition, ended) = &events[1];
    assert_eq!(*transition, T::Ended);
    assert_eq!(ended.id, opened.id);
    assert_eq!(ended.end_reason, EndReason::Expired as i32);
    assert_eq!(millis(ended.ended_at.as_ref()), ends_at.timestamp_millis());
    second.stop().await;
}

#[tokio::test]
async fn spend_budget_ends_the_incentive_when_reached() {
    let redis = RedisServer::start();
    let clock = ManualClock::new(t0());
    let app = start(&redis, &redis.unique_prefix(), policy(), &clock).await;
    publish(
        &app.bus,
        vec![
            product("LAMP-1", "home", "100", "30", t0()),
            stock("LAMP-1", "1000", "5", 1, t0()),
        ],
    )
    .await;
    wait_transitions(&app.bus, "LAMP-1", 1).await;
    // 10 units × 100 × 0.02 = 20 of the 50 budget: still running.
    clock.advance(TimeDelta::hours(1));
    publish(
        &app.bus,
        vec![stock("LAMP-1", "990", "5", 2, clock_now(&clock))],
    )
    .await;
    let mut client = app.client(Role::Merchandiser).await;
    eventually("spend booked", || {
        let mut c = client.clone();
        async move {
            let l = list(&mut c, v1::ListIncentivesRequest::default()).await;
            l.first()
                .is_some_and(|i| i.spent == "20" && i.units_sold == "10")
        }
    })
    .await;
    assert_eq!(transitions_of(&app.bus, "LAMP-1").await.len(), 1);
    // 15 more units: spend 50, the budget.
    clock.advance(TimeDelta::hours(1));
    publish(
        &app.bus,
        vec![stock("LAMP-1", "975", "5", 3, clock_now(&clock))],
    )
    .await;
    let events = wait_transitions(&app.bus, "LAMP-1", 2).await;
    let (transition, ended) = &events[1];
    assert_eq!(*transition, T::Ended);
    assert_eq!(ended.end_reason, EndReason::BudgetExhausted as i32);
    assert_eq!(ended.spent, "50");
    assert_eq!(ended.units_sold, "25");
    let _ = &mut client;
    app.stop().await;
}

#[tokio::test]
async fn unit_budget_ends_the_incentive_when_reached() {
    let redis = RedisServer::start();
    let clock = ManualClock::new(t0());
    let app = start(&redis, &redis.unique_prefix(), policy(), &clock).await;
    // Cheap item: spend stays small, units run out first (40 units budget).
    publish(
        &app.bus,
        vec![
            product("PEG-1", "home", "1", "0.1", t0()),
            stock("PEG-1", "5000", "20", 1, t0()),
        ],
    )
    .await;
    wait_transitions(&app.bus, "PEG-1", 1).await;
    clock.advance(TimeDelta::hours(2));
    publish(
        &app.bus,
        vec![stock("PEG-1", "4960", "20", 2, clock_now(&clock))],
    )
    .await;
    let events = wait_transitions(&app.bus, "PEG-1", 2).await;
    let (transition, ended) = &events[1];
    assert_eq!(*transition, T::Ended);
    assert_eq!(ended.end_reason, EndReason::BudgetExhausted as i32);
    assert_eq!(ended.units_sold, "40");
    assert_eq!(ended.spent, "0.8");
    app.stop().await;
}

#[tokio::test]
async fn restock_and_sales_before_the_window_are_not_booked() {
    let redis = RedisServer::start();
    let clock = ManualClock::new(t0());
    let app = start(&redis, &redis.unique_prefix(), policy(), &clock).await;
    publish(
        &app.bus,
        vec![
            product("BED-1", "home", "100", "30", t0()),
            stock("BED-1", "1000", "5", 1, t0()),
        ],
    )
    .await;
    wait_transitions(&app.bus, "BED-1", 1).await;
    clock.advance(TimeDelta::hours(1));
    // A reading taken before the window opened, then a restock: nothing sold under it.
    publish(
        &app.bus,
        vec![
            stock("BED-1", "990", "5", 2, t0() - TimeDelta::hours(1)),
            stock("BED-1", "1200", "5", 3, clock_now(&clock)),
        ],
    )
    .await;
    let mut client = app.client(Role::Merchandiser).await;
    tokio::time::sleep(std::time::Duration::from_millis(300)).await;
    let l = list(&mut client, v1::ListIncentivesRequest::default()).await;
    assert_eq!(l[0].units_sold, "0");
    assert_eq!(l[0].spent, "0");
    app.stop().await;
}

#[tokio::test]
async fn cooldown_blocks_a_reopen_until_it_passes() {
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
    let mut merch = app.client(Role::Merchandiser).await;
    merch
        .cancel_incentive(v1::CancelIncentiveRequest {
            id: opened.id.clone(),
            reason: "wrong season".into(),
        })
        .await
        .expect("cancel");
    wait_transitions(&app.bus, "CHAIR-1", 2).await;

    // Still overstocked an hour later: the 24 h cooldown keeps it closed.
    clock.advance(TimeDelta::hours(1));
    publish(
        &app.bus,
        vec![stock("CHAIR-1", "1001", "5", 2, clock_now(&clock))],
    )
    .await;
    tokio::time::sleep(std::time::Duration::from_millis(300)).await;
    assert_eq!(transitions_of(&app.bus, "CHAIR-1").await.len(), 2);
    let metrics = ratemesh_runtime::metrics::prometheus().render();
    assert!(
        metrics.contains("ratemesh_incentives_skipped_total{reason=\"cooldown\"}"),
        "{metrics}"
    );
    // A trigger by hand is refused for the same reason.
    let refused = merch
        .trigger_incentive(v1::TriggerIncentiveRequest {
            sku: "CHAIR-1".into(),
            bonus_rate: "0.01".into(),
            duration: Some(prost_types::Duration {
                seconds: 3600,
                nanos: 0,
            }),
            reason: "push it".into(),
            ..Default::default()
        })
        .await
        .expect_err("in cooldown");
    assert_eq!(refused.code(), tonic::Code::FailedPrecondition);
    assert!(
        refused.message().contains("cooldown"),
        "{}",
        refused.message()
    );

    // After the cooldown the next reading reopens it.
    clock.advance(TimeDelta::hours(24));
    publish(
        &app.bus,
        vec![stock("CHAIR-1", "1002", "5", 3, clock_now(&clock))],
    )
    .await;
    let events = wait_transitions(&app.bus, "CHAIR-1", 3).await;
    assert_eq!(events[2].0, T::Opened);
    assert_ne!(events[2].1.id, opened.id);
    app.stop().await;
}

#[tokio::test]
async fn concurrency_limits_open_the_most_overstocked_and_explain_the_rest() {
    let redis = RedisServer::start();
    let prefix = redis.unique_prefix();
    let clock = ManualClock::new(t0());
    // Everything is on the stream before the service starts, so one batch holds all four
    // home SKUs and two toys: home allows 2, the program 3.
    let bus = bus(&redis, &prefix).await;
    let mut events = Vec::new();
    for (sku, cat, on_hand) in [
        ("H-1", "home", "1000"),
        ("H-2", "home", "3000"),
        ("H-3", "home", "2000"),
        ("H-4", "home", "1500"),
        ("T-1", "toys", "1200"),
        ("T-2", "toys", "1100"),
    ] {
        events.push(product(sku, cat, "10", "2", t0()));
        events.push(stock(sku, on_hand, "5", 1, t0()));
    }
    publish(&bus, events).await;
    let app = start(&redis, &prefix, policy(), &clock).await;
    let mut client = app.client(Role::Merchandiser).await;
    eventually("three incentives open", || {
        let mut c = client.clone();
        async move {
            list(
                &mut c,
                v1::ListIncentivesRequest {
                    state: IncentiveState::Active as i32,
                    ..Default::default()
                },
            )
            .await
            .len()
                == 3
        }
    })
    .await;
    tokio::time::sleep(std::time::Duration::from_millis(200)).await;
    let mut active: Vec<String> = list(
        &mut client,
        v1::ListIncentivesRequest {
            state: IncentiveState::Active as i32,
            ..Default::default()
        },
    )
    .await
    .into_iter()
    .map(|i| i.sku)
    .collect();
    active.sort();
    // Covers: H-2 600, H-3 400, T-1 240, T-2 220, H-4 300, H-1 200. Home takes its two
    // most overstocked (H-2, H-3); the program's third slot goes to T-1 (240) ahead of T-2.
    assert_eq!(active, ["H-2", "H-3", "T-1"]);
    let metrics = ratemesh_runtime::metrics::prometheus().render();
    assert!(
        metrics.contains("ratemesh_incentives_skipped_total{reason=\"category_full\"}"),
        "{metrics}"
    );
    assert!(
        metrics.contains("ratemesh_incentives_skipped_total{reason=\"program_full\"}"),
        "{metrics}"
    );
    // A trigger beyond the limit is refused with RESOURCE_EXHAUSTED.
    let refused = client
        .trigger_incentive(v1::TriggerIncentiveRequest {
            sku: "T-2".into(),
            bonus_rate: "0.01".into(),
            duration: Some(prost_types::Duration {
                seconds: 3600,
                nanos: 0,
            }),
            reason: "clear the shelf".into(),
            ..Default::default()
        })
        .await
        .expect_err("program full");
    assert_eq!(refused.code(), tonic::Code::ResourceExhausted);
    assert!(
        refused.message().contains("the program allows 3"),
        "{}",
        refused.message()
    );
    app.stop().await;
}

#[tokio::test]
async fn two_replicas_racing_open_one_incentive_per_sku() {
    let redis = RedisServer::start();
    let prefix = redis.unique_prefix();
    let clock = ManualClock::new(t0());
    // Fold the stock with automatic incentives off, so every SKU qualifies but none is open.
    let loader = start(&redis, &prefix, policy_disabled(), &clock).await;
    let skus: Vec<String> = (0..8).map(|i| format!("RACE-{i}")).collect();
    let mut events = Vec::new();
    for sku in &skus {
        events.push(product(sku, "toys", "10", "2", t0()));
        events.push(stock(sku, "1000", "5", 1, t0()));
    }
    publish(&loader.bus, events).await;
    let mut client = loader.client(Role::Merchandiser).await;
    // The fold is done once a trigger no longer says "no product data".
    for sku in &skus {
        eventually("stock folded", || {
            let bus = loader.bus.clone();
            let sku = sku.clone();
            async move { has_stock_and_product(&bus, &sku).await }
        })
        .await;
    }
    let _ = &mut client;
    loader.stop().await;

    let roomy = || {
        ratemesh_core::Policy::from_toml_str(
            &POLICY
                .replace(
                    "max_concurrent_incentives = 3",
                    "max_concurrent_incentives = 100",
                )
                .replace("max_concurrent = 5", "max_concurrent = 50"),
        )
        .expect("policy")
    };
    let a = start_named(&redis, &prefix, roomy(), &clock, "replica-a").await;
    let b = start_named(&redis, &prefix, roomy(), &clock, "replica-b").await;
    for sku in &skus {
        let (ra, rb) = tokio::join!(a.handle.evaluate(sku), b.handle.evaluate(sku));
        ra.expect("replica a");
        rb.expect("replica b");
    }
    // Trigger races on a SKU that has no incentive yet: exactly one call wins.
    let bus = a.bus.clone();
    publish(
        &bus,
        vec![
            product("RACE-M", "toys", "10", "2", t0()),
            stock("RACE-M", "10", "5", 1, t0()),
        ],
    )
    .await;
    eventually("RACE-M folded", || {
        let bus = bus.clone();
        async move { has_stock_and_product(&bus, "RACE-M").await }
    })
    .await;
    let (mut ca, mut cb) = (
        a.client(Role::Merchandiser).await,
        b.client(Role::Merchandiser).await,
    );
    let request = || v1::TriggerIncentiveRequest {
        sku: "RACE-M".into(),
        bonus_rate: "0.01".into(),
        duration: Some(prost_types::Duration {
            seconds: 3600,
            nanos: 0,
        }),
        reason: "race".into(),
        ..Default::default()
    };
    let (ta, tb) = tokio::join!(
        ca.trigger_incentive(request()),
        cb.trigger_incentive(request())
    );
    assert_eq!(
        usize::from(ta.is_ok()) + usize::from(tb.is_ok()),
        1,
        "exactly one trigger wins: {ta:?} {tb:?}"
    );
    let loser = ta.err().or(tb.err()).expect("one loser");
    assert_eq!(loser.code(), tonic::Code::FailedPrecondition);

    for sku in skus.iter().chain(std::iter::once(&"RACE-M".to_owned())) {
        let opened = transitions_of(&a.bus, sku)
            .await
            .into_iter()
            .filter(|(t, _)| *t == T::Opened)
            .count();
        assert_eq!(opened, 1, "{sku} opened {opened} times");
    }
    a.stop().await;
    b.stop().await;
}
