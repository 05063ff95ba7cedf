//! Flash-incentive budgets against a real redis-server: a budget closes the incentive on
//! the reading that reaches it and the overshoot that reading forced is reported; spend
//! counts the bonus the rate actually carried; the forecast knob closes before the next
//! reading would overshoot; a freed slot goes to the most overstocked waiting SKU within
//! the sweep interval, without a new stock reading.

mod support;

use chrono::TimeDelta;
use prost::Message as _;
use ratemesh_bus::StateWrite;
use ratemesh_bus::testkit::RedisServer;
use ratemesh_contract::rate;
use ratemesh_incentives::{IncentivesSettings, ManualClock};
use ratemesh_proto::v1::{
    self, IncentiveEndReason as EndReason, IncentiveState, IncentiveTransition as T,
};
use ratemesh_runtime::Role;
use support::*;

async fn listed(app: &Instance, sku: &str) -> Option<v1::Incentive> {
    let mut client = app.client(Role::Merchandiser).await;
    list(&mut client, v1::ListIncentivesRequest::default())
        .await
        .into_iter()
        .find(|i| i.sku == sku)
}

#[tokio::test]
async fn a_coarse_stock_drop_closes_at_once_and_reports_the_overshoot() {
    let redis = RedisServer::start();
    let clock = ManualClock::new(t0());
    let app = start(&redis, &redis.unique_prefix(), policy(), &clock).await;
    // Budgets: 40 units, 50 of spend. Price 2, bonus 0.02 paid in full (base 0.05, cap 0.20).
    publish(
        &app.bus,
        vec![
            product("PEG-9", "home", "2", "0.2", t0()),
            stock("PEG-9", "100000", "20", 1, t0()),
        ],
    )
    .await;
    wait_transitions(&app.bus, "PEG-9", 1).await;
    // The ERP reports 1,600 units sold in one step.
    clock.advance(TimeDelta::hours(1));
    publish(
        &app.bus,
        vec![stock("PEG-9", "98400", "20", 2, clock_now(&clock))],
    )
    .await;
    let events = wait_transitions(&app.bus, "PEG-9", 2).await;
    let (transition, ended) = &events[1];
    assert_eq!(*transition, T::Ended);
    assert_eq!(ended.end_reason, EndReason::BudgetExhausted as i32);
    assert_eq!(
        millis(ended.ended_at.as_ref()),
        clock_now(&clock).timestamp_millis()
    );
    assert_eq!(ended.units_sold, "1600");
    assert_eq!(ended.units_over_budget, "1560");
    // 1,600 × 2 × 0.02
    assert_eq!(ended.spent, "64");
    assert_eq!(ended.spend_over_budget, "14");
    let shown = listed(&app, "PEG-9").await.expect("listed");
    assert_eq!(shown.state, IncentiveState::Ended as i32);
    assert_eq!(
        (
            shown.units_over_budget.as_str(),
            shown.spend_over_budget.as_str()
        ),
        ("1560", "14")
    );
    app.stop().await;
}

#[tokio::test]
async fn an_incentive_within_budget_reports_no_overshoot() {
    let redis = RedisServer::start();
    let clock = ManualClock::new(t0());
    let app = start(&redis, &redis.unique_prefix(), policy(), &clock).await;
    publish(
        &app.bus,
        vec![
            product("PEG-8", "home", "2", "0.2", t0()),
            stock("PEG-8", "100000", "20", 1, t0()),
        ],
    )
    .await;
    let opened = wait_transitions(&app.bus, "PEG-8", 1).await[0].1.clone();
    assert_eq!(
        (
            opened.units_over_budget.as_str(),
            opened.spend_over_budget.as_str()
        ),
        ("0", "0")
    );
    clock.advance(TimeDelta::hours(1));
    publish(
        &app.bus,
        vec![stock("PEG-8", "99990", "20", 2, clock_now(&clock))],
    )
    .await;
    eventually("sale booked", || async {
        listed(&app, "PEG-8")
            .await
            .is_some_and(|i| i.units_sold == "10")
    })
    .await;
    let shown = listed(&app, "PEG-8").await.expect("listed");
    assert_eq!(shown.state, IncentiveState::Active as i32);
    assert_eq!(
        (
            shown.units_over_budget.as_str(),
            shown.spend_over_budget.as_str()
        ),
        ("0", "0")
    );
    app.stop().await;
}

#[tokio::test]
async fn spend_counts_only_the_bonus_the_margin_guard_lets_through() {
    let redis = RedisServer::start();
    let clock = ManualClock::new(t0());
    let app = start(&redis, &redis.unique_prefix(), policy(), &clock).await;
    // Margin guard: 0.5 × (100 − 89) / 100 = 0.055, so of the 0.02 bonus on top of the
    // 0.05 base only 0.005 is paid.
    publish(
        &app.bus,
        vec![
            product("VASE-1", "home", "100", "89", t0()),
            stock("VASE-1", "1000", "5", 1, t0()),
        ],
    )
    .await;
    wait_transitions(&app.bus, "VASE-1", 1).await;
    clock.advance(TimeDelta::hours(1));
    publish(
        &app.bus,
        vec![stock("VASE-1", "990", "5", 2, clock_now(&clock))],
    )
    .await;
    eventually("sale booked", || async {
        listed(&app, "VASE-1")
            .await
            .is_some_and(|i| i.units_sold == "10")
    })
    .await;
    // 10 × 100 × 0.005, not 10 × 100 × 0.02 = 20
    assert_eq!(listed(&app, "VASE-1").await.expect("listed").spent, "5");
    app.stop().await;
}

#[tokio::test]
async fn spend_counts_the_incentive_part_the_published_card_keeps_under_the_cap() {
    let redis = RedisServer::start();
    let clock = ManualClock::new(t0());
    let app = start(&redis, &redis.unique_prefix(), policy(), &clock).await;
    publish(
        &app.bus,
        vec![
            product("KITE-1", "toys", "10", "2", t0()),
            stock("KITE-1", "1000", "5", 1, t0()),
        ],
    )
    .await;
    wait_transitions(&app.bus, "KITE-1", 1).await;
    // The rates service published 0.05 + 0.02 overstock + 0.02 incentive = 0.09, cut to
    // the toys cap of 0.08: the incentive adds 0.01 to what the SKU would pay without it.
    let card = v1::RateCard {
        sku: "KITE-1".into(),
        category: "toys".into(),
        effective_rate: "0.08".into(),
        parts: Some(v1::RateParts {
            base: "0.05".into(),
            inventory_adjustment: "0.02".into(),
            boost: "0".into(),
            incentive: "0.02".into(),
            override_adjustment: "0".into(),
            guardrail_adjustment: "-0.01".into(),
        }),
        version: 1,
        ..Default::default()
    };
    app.bus
        .write_state(
            StateWrite::new(rate::NAMESPACE, "KITE-1").set(rate::FIELD_CARD, card.encode_to_vec()),
        )
        .await
        .expect("card");
    clock.advance(TimeDelta::hours(1));
    publish(
        &app.bus,
        vec![stock("KITE-1", "990", "5", 2, clock_now(&clock))],
    )
    .await;
    eventually("sale booked", || async {
        listed(&app, "KITE-1")
            .await
            .is_some_and(|i| i.units_sold == "10")
    })
    .await;
    // 10 × 10 × 0.01, not 10 × 10 × 0.02 = 2
    assert_eq!(listed(&app, "KITE-1").await.expect("listed").spent, "1");
    app.stop().await;
}

#[tokio::test]
async fn the_forecast_knob_closes_before_the_next_reading_would_overshoot() {
    let redis = RedisServer::start();
    let clock = ManualClock::new(t0());
    let forecasting = ratemesh_core::Policy::from_toml_str(&POLICY.replace(
        "max_extensions = 0",
        "max_extensions = 0\nstop_on_forecast = true",
    ))
    .expect("policy");
    let app = start(&redis, &redis.unique_prefix(), forecasting, &clock).await;
    publish(
        &app.bus,
        vec![
            product("PEG-7", "home", "1", "0.1", t0()),
            stock("PEG-7", "5000", "20", 1, t0()),
        ],
    )
    .await;
    wait_transitions(&app.bus, "PEG-7", 1).await;
    // Readings every 12 h at 20/day: 10 units are expected before each next one.
    clock.advance(TimeDelta::hours(12));
    publish(
        &app.bus,
        vec![stock("PEG-7", "4990", "20", 2, clock_now(&clock))],
    )
    .await;
    eventually("sale booked", || async {
        listed(&app, "PEG-7")
            .await
            .is_some_and(|i| i.units_sold == "10")
    })
    .await;
    // 30 of the 40 units left: still open.
    assert_eq!(transitions_of(&app.bus, "PEG-7").await.len(), 1);
    clock.advance(TimeDelta::hours(12));
    publish(
        &app.bus,
        vec![stock("PEG-7", "4970", "20", 3, clock_now(&clock))],
    )
    .await;
    // 10 left and 10 expected before the next reading: closed now, not after overshooting.
    let events = wait_transitions(&app.bus, "PEG-7", 2).await;
    let (transition, ended) = &events[1];
    assert_eq!(*transition, T::Ended);
    assert_eq!(ended.end_reason, EndReason::BudgetForecast as i32);
    assert_eq!(ended.units_sold, "30");
    assert_eq!(ended.units_over_budget, "0");
    app.stop().await;
}

#[tokio::test]
async fn a_freed_slot_goes_to_the_most_overstocked_waiting_sku_within_the_sweep_interval() {
    let redis = RedisServer::start();
    let clock = ManualClock::new(t0());
    let mut s = settings();
    s.section_mut::<IncentivesSettings>().consumer_name = "replica-a".into();
    s.section_mut::<IncentivesSettings>().sweep_interval_secs = 1;
    // home allows 2 at once.
    let app = start_with(&redis, &redis.unique_prefix(), policy(), &clock, s).await;
    publish(
        &app.bus,
        vec![
            product("H-A", "home", "10", "2", t0()),
            stock("H-A", "1000", "5", 1, t0()),
            product("H-B", "home", "10", "2", t0()),
            stock("H-B", "1500", "5", 1, t0()),
        ],
    )
    .await;
    let a = wait_transitions(&app.bus, "H-A", 1).await[0].1.clone();
    let b = wait_transitions(&app.bus, "H-B", 1).await[0].1.clone();
    // Two more overstocked SKUs find home full: covers 400 and 600 days.
    publish(
        &app.bus,
        vec![
            product("H-C", "home", "10", "2", t0()),
            stock("H-C", "2000", "5", 1, t0()),
            product("H-D", "home", "10", "2", t0()),
            stock("H-D", "3000", "5", 1, t0()),
        ],
    )
    .await;
    eventually("H-C and H-D waiting", || async {
        let (c, d) = (
            app.bus.get_state("incentive-waiting", "H-C").await,
            app.bus.get_state("incentive-waiting", "H-D").await,
        );
        matches!((c, d), (Ok(Some(_)), Ok(Some(_))))
    })
    .await;
    assert!(transitions_of(&app.bus, "H-D").await.is_empty());

    // A slot frees; no stock reading follows for anyone.
    let mut merch = app.client(Role::Merchandiser).await;
    merch
        .cancel_incentive(v1::CancelIncentiveRequest {
            id: a.id.clone(),
            reason: "done".into(),
        })
        .await
        .expect("cancel");
    let events = wait_transitions(&app.bus, "H-D", 1).await;
    assert_eq!(events[0].0, T::Opened);
    assert_eq!(events[0].1.days_of_cover_at_open, "600");
    // Only one slot was free: the less overstocked H-C still waits for the next.
    tokio::time::sleep(std::time::Duration::from_millis(1500)).await;
    assert!(transitions_of(&app.bus, "H-C").await.is_empty());
    merch
        .cancel_incentive(v1::CancelIncentiveRequest {
            id: b.id.clone(),
            reason: "done".into(),
        })
        .await
        .expect("cancel");
    let events = wait_transitions(&app.bus, "H-C", 1).await;
    assert_eq!(events[0].0, T::Opened);
    eventually("nobody waits any more", || async {
        app.bus
            .scan_states("incentive-waiting", None, 10)
            .await
            .is_ok_and(|p| p.items.is_empty())
    })
    .await;
    app.stop().await;
}
