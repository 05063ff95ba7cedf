//! `IncentiveService` over gRPC against a real redis-server: manual trigger with its
//! guardrails, cancel (reason kept, idempotent), listing with filters and pages, roles.

mod support;

use chrono::TimeDelta;
use ratemesh_bus::testkit::RedisServer;
use ratemesh_contract::streams;
use ratemesh_incentives::ManualClock;
use ratemesh_proto::v1::{
    self, IncentiveEndReason as EndReason, IncentiveState, IncentiveTransition as T,
};
use ratemesh_runtime::Role;
use support::*;
use tonic_types::StatusExt;

fn trigger(sku: &str, bonus: &str, seconds: i64) -> v1::TriggerIncentiveRequest {
    v1::TriggerIncentiveRequest {
        sku: sku.into(),
        bonus_rate: bonus.into(),
        duration: Some(prost_types::Duration { seconds, nanos: 0 }),
        budget_spend: Some("100".into()),
        budget_units: None,
        reason: "spring clearance".into(),
    }
}

fn violations(status: &tonic::Status) -> Vec<(String, String)> {
    status
        .get_details_bad_request()
        .map(|b| {
            b.field_violations
                .into_iter()
                .map(|v| (v.field, v.description))
                .collect()
        })
        .unwrap_or_default()
}

/// Waits until the incentives group consumed every stock entry published so far and
/// `sku` has a record.
async fn folded(app: &Instance, sku: &str) {
    eventually(&format!("{sku} folded"), || {
        let bus = app.bus.clone();
        let sku = sku.to_owned();
        async move {
            let drained = bus
                .stream_stats(streams::STOCK, streams::groups::INCENTIVES)
                .await
                .is_ok_and(|s| s.backlog == 0);
            drained
                && bus
                    .get_state("incentive", &sku)
                    .await
                    .ok()
                    .flatten()
                    .is_some()
        }
    })
    .await;
}

#[tokio::test]
async fn manual_trigger_runs_its_window_and_cancel_keeps_the_reason() {
    let redis = RedisServer::start();
    let clock = ManualClock::new(t0());
    let app = start(&redis, &redis.unique_prefix(), policy(), &clock).await;
    // Normal stock (20 days of cover): no automatic incentive, a manual one is allowed.
    publish(
        &app.bus,
        vec![
            product("KETTLE-1", "home", "40", "10", t0()),
            stock("KETTLE-1", "100", "5", 1, t0()),
        ],
    )
    .await;
    folded(&app, "KETTLE-1").await;
    let mut merch = app.client(Role::Merchandiser).await;
    let opened = merch
        .trigger_incentive(trigger("KETTLE-1", "0.03", 7200))
        .await
        .expect("trigger")
        .into_inner()
        .incentive
        .expect("incentive");
    assert_eq!(opened.state, IncentiveState::Active as i32);
    assert_eq!(opened.origin, v1::IncentiveOrigin::Manual as i32);
    assert_eq!(opened.opened_by, "test-merchandiser");
    assert_eq!(opened.reason, "spring clearance");
    assert_eq!(opened.bonus_rate, "0.03");
    assert_eq!(opened.budget_spend.as_deref(), Some("100"));
    assert_eq!(opened.budget_units, None);
    assert_eq!(opened.days_of_cover_at_open, "20");
    assert_eq!(
        millis(opened.ends_at.as_ref()),
        (t0() + TimeDelta::hours(2)).timestamp_millis()
    );
    let events = wait_transitions(&app.bus, "KETTLE-1", 1).await;
    assert_eq!(events[0].0, T::Opened);
    assert_eq!(events[0].1, opened);

    // A second trigger on the same SKU is refused and names the active incentive.
    let refused = merch
        .trigger_incentive(trigger("KETTLE-1", "0.01", 60))
        .await
        .expect_err("already active");
    assert_eq!(refused.code(), tonic::Code::FailedPrecondition);
    let pre = refused.get_details_precondition_failure().expect("details");
    assert_eq!(pre.violations[0].r#type, "INCENTIVE_ACTIVE");
    assert_eq!(pre.violations[0].subject, opened.id);

    // Stock that is no longer overstocked does not end a manual incentive early.
    clock.advance(TimeDelta::minutes(30));
    publish(
        &app.bus,
        vec![stock(
            "KETTLE-1",
            "90",
            "5",
            2,
            t0() + TimeDelta::minutes(30),
        )],
    )
    .await;
    folded(&app, "KETTLE-1").await;
    assert_eq!(transitions_of(&app.bus, "KETTLE-1").await.len(), 1);

    let cancel = v1::CancelIncentiveRequest {
        id: opened.id.clone(),
        reason: "supplier recall".into(),
    };
    let cancelled = merch
        .cancel_incentive(cancel.clone())
        .await
        .expect("cancel")
        .into_inner()
        .incentive
        .expect("incentive");
    assert_eq!(cancelled.state, IncentiveState::Ended as i32);
    assert_eq!(cancelled.end_reason, EndReason::Cancelled as i32);
    assert_eq!(cancelled.ended_by, "test-merchandiser");
    assert_eq!(cancelled.cancel_reason, "supplier recall");
    assert_eq!(cancelled.units_sold, "10");
    assert_eq!(cancelled.spent, "12");
    let end = (t0() + TimeDelta::minutes(30)).timestamp_millis();
    assert_eq!(millis(cancelled.ended_at.as_ref()), end);
    assert_eq!(millis(cancelled.ends_at.as_ref()), end);
    // Again: the same answer, no second event.
    let again = merch
        .cancel_incentive(cancel)
        .await
        .expect("idempotent cancel")
        .into_inner()
        .incentive
        .expect("incentive");
    assert_eq!(again, cancelled);
    let events = wait_transitions(&app.bus, "KETTLE-1", 2).await;
    assert_eq!(events.len(), 2);
    assert_eq!(events[1].0, T::Ended);
    assert_eq!(events[1].1, cancelled);
    // The window's timer does not end it a second time.
    clock.advance(TimeDelta::hours(3));
    tokio::time::sleep(std::time::Duration::from_millis(200)).await;
    assert_eq!(transitions_of(&app.bus, "KETTLE-1").await.len(), 2);
    app.stop().await;
}

#[tokio::test]
async fn manual_incentive_expires_at_its_own_end() {
    let redis = RedisServer::start();
    let clock = ManualClock::new(t0());
    let app = start(&redis, &redis.unique_prefix(), policy(), &clock).await;
    publish(
        &app.bus,
        vec![
            product("MUG-1", "home", "10", "2", t0()),
            stock("MUG-1", "100", "5", 1, t0()),
        ],
    )
    .await;
    folded(&app, "MUG-1").await;
    let mut merch = app.client(Role::Merchandiser).await;
    merch
        .trigger_incentive(trigger("MUG-1", "0.02", 90))
        .await
        .expect("trigger");
    clock.advance(TimeDelta::seconds(90));
    let events = wait_transitions(&app.bus, "MUG-1", 2).await;
    assert_eq!(events[1].0, T::Ended);
    assert_eq!(events[1].1.end_reason, EndReason::Expired as i32);
    assert_eq!(
        millis(events[1].1.ended_at.as_ref()),
        (t0() + TimeDelta::seconds(90)).timestamp_millis()
    );
    app.stop().await;
}

#[tokio::test]
async fn trigger_refuses_what_breaks_a_guardrail_or_is_malformed() {
    let redis = RedisServer::start();
    let clock = ManualClock::new(t0());
    let app = start(&redis, &redis.unique_prefix(), policy(), &clock).await;
    publish(
        &app.bus,
        vec![
            product("ROBOT-1", "toys", "50", "45", t0()),
            stock("ROBOT-1", "100", "5", 1, t0()),
            product("BALL-1", "toys", "10", "2", t0()),
            stock("BALL-1", "100", "5", 1, t0()),
        ],
    )
    .await;
    folded(&app, "ROBOT-1").await;
    folded(&app, "BALL-1").await;
    let mut merch = app.client(Role::Merchandiser).await;

    // Toys cap at 0.08 on a 0.05 base: 0.04 more is too much.
    let over_cap = merch
        .trigger_incentive(trigger("BALL-1", "0.04", 60))
        .await
        .expect_err("above cap");
    assert_eq!(over_cap.code(), tonic::Code::InvalidArgument);
    let v = violations(&over_cap);
    assert_eq!(v[0].0, "bonus_rate");
    assert!(
        v[0].1
            .contains("above the cap 0.08 of category toys; at most 0.03 fits"),
        "{}",
        v[0].1
    );

    // ROBOT-1's margin is 5 of 50: the guard allows 0.5 × 0.1 = 0.05, already the base.
    let over_margin = merch
        .trigger_incentive(trigger("ROBOT-1", "0.01", 60))
        .await
        .expect_err("above margin guard");
    let v = violations(&over_margin);
    assert!(v[0].1.contains("above the margin guard 0.05"), "{}", v[0].1);

    let unknown = merch
        .trigger_incentive(trigger("NOPE-1", "0.01", 60))
        .await
        .expect_err("unknown sku");
    assert_eq!(unknown.code(), tonic::Code::NotFound);

    let malformed = merch
        .trigger_incentive(v1::TriggerIncentiveRequest {
            sku: "bad sku".into(),
            bonus_rate: "lots".into(),
            duration: Some(prost_types::Duration {
                seconds: 0,
                nanos: 0,
            }),
            budget_spend: Some("-5".into()),
            budget_units: Some("x".into()),
            reason: " ".into(),
        })
        .await
        .expect_err("malformed");
    assert_eq!(malformed.code(), tonic::Code::InvalidArgument);
    let fields: Vec<String> = violations(&malformed).into_iter().map(|v| v.0).collect();
    assert_eq!(
        fields,
        [
            "sku",
            "bonus_rate",
            "duration",
            "budget_spend",
            "budget_units",
            "reason"
        ]
    );
    let too_long = merch
        .trigger_incentive(trigger("BALL-1", "0.01", 169 * 3600))
        .await
        .expect_err("too long");
    assert_eq!(violations(&too_long)[0].0, "duration");
    let too_big = merch
        .trigger_incentive(trigger("BALL-1", "0.2", 60))
        .await
        .expect_err("too big");
    assert!(
        violations(&too_big)[0]
            .1
            .contains("incentives.max_bonus_bps")
    );

    // Nothing was opened by any of these.
    assert!(incentive_events(&app.bus).await.is_empty());

    // A network key may list but not trigger or cancel.
    let mut network = app.client(Role::Network).await;
    assert!(
        network
            .list_incentives(v1::ListIncentivesRequest::default())
            .await
            .is_ok()
    );
    let denied = network
        .trigger_incentive(trigger("BALL-1", "0.01", 60))
        .await
        .expect_err("network may not trigger");
    assert_eq!(denied.code(), tonic::Code::PermissionDenied);
    app.stop().await;
}

#[tokio::test]
async fn cancel_errors_name_the_problem() {
    let redis = RedisServer::start();
    let clock = ManualClock::new(t0());
    let app = start(&redis, &redis.unique_prefix(), policy(), &clock).await;
    publish(
        &app.bus,
        vec![
            product("CUP-1", "home", "10", "2", t0()),
            stock("CUP-1", "100", "5", 1, t0()),
        ],
    )
    .await;
    folded(&app, "CUP-1").await;
    let mut merch = app.client(Role::Merchandiser).await;
    let missing = merch
        .cancel_incentive(v1::CancelIncentiveRequest {
            id: "01J00000000000000000000000".into(),
            reason: "x".into(),
        })
        .await
        .expect_err("unknown");
    assert_eq!(missing.code(), tonic::Code::NotFound);
    let empty = merch
        .cancel_incentive(v1::CancelIncentiveRequest::default())
        .await
        .expect_err("empty");
    let fields: Vec<String> = violations(&empty).into_iter().map(|v| v.0).collect();
    assert_eq!(fields, ["id", "reason"]);

    // One that expired cannot be cancelled any more.
    let opened = merch
        .trigger_incentive(trigger("CUP-1", "0.01", 60))
        .await
        .expect("trigger")
        .into_inner()
        .incentive
        .expect("incentive");
    clock.advance(TimeDelta::seconds(60));
    wait_transitions(&app.bus, "CUP-1", 2).await;
    let late = merch
        .cancel_incentive(v1::CancelIncentiveRequest {
            id: opened.id,
            reason: "too late".into(),
        })
        .await
        .expect_err("already ended");
    assert_eq!(late.code(), tonic::Code::FailedPrecondition);
    assert!(late.message().contains("EXPIRED"), "{}", late.message());
    app.stop().await;
}

#[tokio::test]
async fn list_filters_and_pages_newest_first() {
    let redis = RedisServer::start();
    let clock = ManualClock::new(t0());
    let app = start(&redis, &redis.unique_prefix(), policy_roomy(), &clock).await;
    let mut events = Vec::new();
    for (sku, cat) in [
        ("A-1", "home"),
        ("A-2", "home"),
        ("B-1", "toys"),
        ("B-2", "toys"),
    ] {
        events.push(product(sku, cat, "10", "2", t0()));
        events.push(stock(sku, "100", "5", 1, t0()));
    }
    publish(&app.bus, events).await;
    let mut merch = app.client(Role::Merchandiser).await;
    let mut ids = Vec::new();
    for sku in ["A-1", "A-2", "B-1", "B-2"] {
        folded(&app, sku).await;
        let inc = merch
            .trigger_incentive(trigger(sku, "0.01", 3600))
            .await
            .expect("trigger")
            .into_inner()
            .incentive
            .expect("incentive");
        ids.push(inc.id);
        // Distinct ULID milliseconds keep the order unambiguous.
        tokio::time::sleep(std::time::Duration::from_millis(2)).await;
    }
    merch
        .cancel_incentive(v1::CancelIncentiveRequest {
            id: ids[1].clone(),
            reason: "stop".into(),
        })
        .await
        .expect("cancel");

    let all = list(&mut merch, v1::ListIncentivesRequest::default()).await;
    let got: Vec<&str> = all.iter().map(|i| i.id.as_str()).collect();
    let newest_first: Vec<&str> = ids.iter().rev().map(String::as_str).collect();
    assert_eq!(got, newest_first);

    let toys = list(
        &mut merch,
        v1::ListIncentivesRequest {
            category: Some("toys".into()),
            ..Default::default()
        },
    )
    .await;
    assert_eq!(
        toys.iter().map(|i| i.sku.as_str()).collect::<Vec<_>>(),
        ["B-2", "B-1"]
    );
    let ended = list(
        &mut merch,
        v1::ListIncentivesRequest {
            state: IncentiveState::Ended as i32,
            ..Default::default()
        },
    )
    .await;
    assert_eq!(ended.len(), 1);
    assert_eq!(ended[0].sku, "A-2");
    let one = list(
        &mut merch,
        v1::ListIncentivesRequest {
            sku: Some("B-1".into()),
            ..Default::default()
        },
    )
    .await;
    assert_eq!(one.len(), 1);

    // Pages of three, then one.
    let first = merch
        .list_incentives(v1::ListIncentivesRequest {
            page_size: 3,
            ..Default::default()
        })
        .await
        .expect("page 1")
        .into_inner();
    assert_eq!(first.incentives.len(), 3);
    assert!(!first.next_page_token.is_empty());
    let second = merch
        .list_incentives(v1::ListIncentivesRequest {
            page_size: 3,
            page_token: first.next_page_token,
            ..Default::default()
        })
        .await
        .expect("page 2")
        .into_inner();
    assert_eq!(second.incentives.len(), 1);
    assert_eq!(second.incentives[0].id, ids[0]);
    assert!(second.next_page_token.is_empty());

    for (req, field) in [
        (
            v1::ListIncentivesRequest {
                page_size: 1001,
                ..Default::default()
            },
            "page_size",
        ),
        (
            v1::ListIncentivesRequest {
                page_token: "garbage".into(),
                ..Default::default()
            },
            "page_token",
        ),
    ] {
        let err = merch.list_incentives(req).await.expect_err("bad request");
        assert_eq!(violations(&err)[0].0, field);
    }
    app.stop().await;
}
