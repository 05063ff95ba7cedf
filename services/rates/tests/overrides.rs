//! `OverrideService`: validation, precedence, overlap refusal and replacement, expiry by a
//! durable timer, the audit trail — each checked against the stored, published cards.

mod engine_support;

use std::time::Duration;

use chrono::Utc;
use engine_support::*;
use ratemesh_contract::{kinds, overrides, streams};
use ratemesh_proto::v1;
use ratemesh_proto::v1::override_service_server::OverrideService;
use ratemesh_rates::convert::timestamp;
use ratemesh_rates::engine::Engine;
use ratemesh_rates::overrides::OverridesApi;
use ratemesh_runtime::{Principal, Role};
use ratemesh_testkit::eventually;
use tonic::{Code, Request};
use tonic_types::StatusExt;

fn as_merch<T>(name: &str, message: T) -> Request<T> {
    let mut request = Request::new(message);
    request.extensions_mut().insert(Principal {
        name: name.into(),
        role: Role::Merchandiser,
        partner_id: None,
    });
    request
}

fn sku_override(sku: &str, kind: v1::OverrideKind, value: &str) -> v1::Override {
    v1::Override {
        scope: Some(v1::r#override::Scope::Sku(sku.into())),
        kind: kind as i32,
        value: value.into(),
        reason: format!("{kind:?} for {sku}"),
        ..Default::default()
    }
}

fn set(o: v1::Override, replace: bool) -> v1::SetOverrideRequest {
    v1::SetOverrideRequest {
        r#override: Some(o),
        replace_conflicting: replace,
    }
}

/// One SKU in `home` at 50 days of cover: 6 %.
async fn setup() -> (ratemesh_bus::Bus, Engine, OverridesApi) {
    let bus = memory_bus();
    let engine = engine(&bus, example_policy());
    bus.publish_batch(
        STOCK,
        vec![
            stock("SKU-1", 500, 1, t(0), Some(10)).1,
            product("SKU-1", "home", 100, 40, t(1)).1,
        ],
    )
    .await
    .unwrap();
    let (stop, task) = spawn_consumer(&engine, STOCK, "c1");
    drained(&bus, STOCK, Duration::from_secs(10)).await;
    stop.cancel();
    task.await.unwrap().unwrap();
    assert_eq!(
        published(&bus, "SKU-1").await.unwrap().effective_rate,
        "0.06"
    );
    let api = OverridesApi::new(engine.clone(), Duration::from_secs(10));
    (bus, engine, api)
}

#[tokio::test]
async fn overrides_take_effect_before_the_call_returns_with_documented_precedence() {
    let (bus, _engine, api) = setup().await;

    // A category cap applies to every SKU of the category, recomputed before returning.
    let mut cap = sku_override("x", v1::OverrideKind::Cap, "0.05");
    cap.scope = Some(v1::r#override::Scope::Category("home".into()));
    cap.reason = "home margin review".into();
    let cap = api
        .set_override(as_merch("ann", set(cap, false)))
        .await
        .unwrap()
        .into_inner()
        .r#override
        .unwrap();
    assert_eq!(cap.author, "ann");
    assert_eq!(cap.status, v1::OverrideStatus::Active as i32);
    let card = published(&bus, "SKU-1").await.unwrap();
    assert_eq!(card.effective_rate, "0.05");
    assert_eq!(codes(&card), ["OVERRIDE_CAP"]);

    // A SKU pin beats the category cap (pin ignores floor, cap and multiplier overrides).
    let pin = api
        .set_override(as_merch(
            "bo",
            set(sku_override("SKU-1", v1::OverrideKind::Pin, "0.07"), false),
        ))
        .await
        .unwrap()
        .into_inner()
        .r#override
        .unwrap();
    let card = published(&bus, "SKU-1").await.unwrap();
    assert_eq!(card.effective_rate, "0.07");
    assert_eq!(codes(&card), ["OVERRIDE_PIN"]);

    // An exclude overlapping the pin is refused, listing the conflict; nothing changes.
    let status = api
        .set_override(as_merch(
            "bo",
            set(sku_override("SKU-1", v1::OverrideKind::Exclude, ""), false),
        ))
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::FailedPrecondition);
    let failure = status.get_details_precondition_failure().unwrap();
    assert_eq!(failure.violations.len(), 1);
    assert_eq!(failure.violations[0].r#type, "OVERRIDE_CONFLICT");
    assert_eq!(failure.violations[0].subject, pin.id);
    assert_eq!(published(&bus, "SKU-1").await.unwrap(), card);

    // Asked to replace, it clears the pin and excludes the SKU.
    let replaced = api
        .set_override(as_merch(
            "bo",
            set(sku_override("SKU-1", v1::OverrideKind::Exclude, ""), true),
        ))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(replaced.replaced.len(), 1);
    assert_eq!(replaced.replaced[0].id, pin.id);
    assert_eq!(
        replaced.replaced[0].status,
        v1::OverrideStatus::Cleared as i32
    );
    let exclude = replaced.r#override.unwrap();
    let card = published(&bus, "SKU-1").await.unwrap();
    assert_eq!(card.effective_rate, "0");
    assert_eq!(codes(&card), ["OVERRIDE_EXCLUDE"]);

    // Clearing the exclude brings the category cap back.
    let cleared = api
        .clear_override(as_merch(
            "cy",
            v1::ClearOverrideRequest {
                id: exclude.id.clone(),
                reason: "recall over".into(),
            },
        ))
        .await
        .unwrap()
        .into_inner()
        .cleared
        .unwrap();
    assert_eq!(cleared.status, v1::OverrideStatus::Cleared as i32);
    assert_eq!(
        published(&bus, "SKU-1").await.unwrap().effective_rate,
        "0.05"
    );
    // Clearing again is a safe retry.
    api.clear_override(as_merch(
        "cy",
        v1::ClearOverrideRequest {
            id: exclude.id.clone(),
            reason: "again".into(),
        },
    ))
    .await
    .unwrap();

    // Listing: only the cap is active for the SKU; with inactive ones, all three.
    let list = |include_inactive| v1::ListOverridesRequest {
        sku: Some("SKU-1".into()),
        include_inactive,
        ..Default::default()
    };
    let active = api
        .list_overrides(as_merch("ann", list(false)))
        .await
        .unwrap()
        .into_inner();
    let ids: Vec<_> = active.overrides.iter().map(|o| o.id.clone()).collect();
    assert_eq!(ids, vec![cap.id.clone()]);
    let all = api
        .list_overrides(as_merch("ann", list(true)))
        .await
        .unwrap()
        .into_inner();
    let ids: Vec<_> = all.overrides.iter().map(|o| o.id.clone()).collect();
    assert_eq!(ids, [exclude.id.clone(), pin.id.clone(), cap.id.clone()]);

    // The audit trail: who, what, why, before and after, newest first.
    let audit = api
        .list_override_audit(as_merch(
            "ann",
            v1::ListOverrideAuditRequest {
                sku: Some("SKU-1".into()),
                ..Default::default()
            },
        ))
        .await
        .unwrap()
        .into_inner();
    let trail: Vec<_> = audit
        .entries
        .iter()
        .map(|e| {
            (
                v1::OverrideAction::try_from(e.action).unwrap(),
                e.author.as_str(),
                e.after.as_ref().unwrap().id.clone(),
            )
        })
        .collect();
    assert_eq!(
        trail,
        [
            (v1::OverrideAction::Clear, "cy", exclude.id.clone()),
            (v1::OverrideAction::Set, "bo", exclude.id.clone()),
            (v1::OverrideAction::Replace, "bo", pin.id.clone()),
            (v1::OverrideAction::Set, "bo", pin.id.clone()),
            (v1::OverrideAction::Set, "ann", cap.id.clone()),
        ]
    );
    assert_eq!(audit.entries[0].reason, "recall over");
    let before = audit.entries[0].before.as_ref().unwrap();
    assert_eq!(before.status, v1::OverrideStatus::Active as i32);
    assert!(audit.entries[4].before.is_none());
    assert!(audit.entries[2].reason.contains(&exclude.id));

    // Paging through it two at a time gives the same entries.
    let mut paged = Vec::new();
    let mut token = String::new();
    loop {
        let page = api
            .list_override_audit(as_merch(
                "ann",
                v1::ListOverrideAuditRequest {
                    sku: Some("SKU-1".into()),
                    page_size: 2,
                    page_token: token.clone(),
                    ..Default::default()
                },
            ))
            .await
            .unwrap()
            .into_inner();
        assert!(page.entries.len() <= 2);
        paged.extend(page.entries);
        if page.next_page_token.is_empty() {
            break;
        }
        token = page.next_page_token;
    }
    assert_eq!(paged, audit.entries);

    // The overrides stream carries every change.
    let (entries, _) = bus
        .read_after(streams::OVERRIDES, &bus.start_cursor(), 100)
        .await
        .unwrap();
    assert_eq!(entries.len(), 5);
    for d in &entries {
        assert_eq!(d.kind.as_deref(), Some(kinds::OVERRIDE_CHANGED));
        overrides::decode(&d.payload).expect("the contract decodes what the service publishes");
    }
}

#[tokio::test]
async fn bad_overrides_are_refused_naming_the_field_and_change_nothing() {
    let (bus, _engine, api) = setup().await;
    let before = published(&bus, "SKU-1").await.unwrap();
    for (o, field) in [
        (
            sku_override("SKU-1", v1::OverrideKind::Pin, "2"),
            "override.value",
        ),
        // outside the home guardrails (2 % to 15 %)
        (
            sku_override("SKU-1", v1::OverrideKind::Pin, "0.5"),
            "override.value",
        ),
        (
            sku_override("SKU-1", v1::OverrideKind::Unspecified, "0.1"),
            "override.kind",
        ),
        (
            sku_override("bad sku", v1::OverrideKind::Cap, "0.1"),
            "override.sku",
        ),
        (
            v1::Override {
                reason: String::new(),
                ..sku_override("SKU-1", v1::OverrideKind::Cap, "0.1")
            },
            "override.reason",
        ),
        (
            v1::Override {
                ends_at: Some(timestamp(Utc::now() - chrono::TimeDelta::hours(1))),
                ..sku_override("SKU-1", v1::OverrideKind::Cap, "0.1")
            },
            "override.ends_at",
        ),
    ] {
        let status = api
            .set_override(as_merch("ann", set(o, false)))
            .await
            .unwrap_err();
        assert_eq!(status.code(), Code::InvalidArgument, "{status:?}");
        let bad = status.get_details_bad_request().unwrap();
        assert_eq!(bad.field_violations[0].field, field, "{status:?}");
    }
    let status = api
        .list_overrides(as_merch(
            "ann",
            v1::ListOverridesRequest {
                page_token: "garbage".into(),
                ..Default::default()
            },
        ))
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::InvalidArgument);
    let status = api
        .clear_override(as_merch(
            "ann",
            v1::ClearOverrideRequest {
                id: "nope".into(),
                reason: "x".into(),
            },
        ))
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::NotFound);
    assert_eq!(published(&bus, "SKU-1").await.unwrap(), before);
    let (entries, _) = bus
        .read_after(streams::OVERRIDES, &bus.start_cursor(), 100)
        .await
        .unwrap();
    assert!(entries.is_empty());
}

#[tokio::test]
async fn an_override_ends_on_time_through_a_durable_timer() {
    let (bus, engine, api) = setup().await;
    let mut pin = sku_override("SKU-1", v1::OverrideKind::Pin, "0.09");
    pin.ends_at = Some(timestamp(Utc::now() + chrono::TimeDelta::milliseconds(800)));
    let pin = api
        .set_override(as_merch("ann", set(pin, false)))
        .await
        .unwrap()
        .into_inner()
        .r#override
        .unwrap();
    assert_eq!(
        published(&bus, "SKU-1").await.unwrap().effective_rate,
        "0.09"
    );

    // The timer lives in the bus, so a timer loop started now (as after a restart) fires it.
    let stop = tokio_util::sync::CancellationToken::new();
    let timers = tokio::spawn(ratemesh_rates::recompute::run(engine.clone(), stop.clone()));
    let card = eventually("the pin to expire", Duration::from_secs(10), || {
        let bus = bus.clone();
        async move {
            published(&bus, "SKU-1")
                .await
                .filter(|c| c.effective_rate == "0.06")
        }
    })
    .await;
    assert!(!codes(&card).contains(&"OVERRIDE_PIN"), "{card:?}");
    let audit = eventually(
        "the expiry in the audit trail",
        Duration::from_secs(10),
        || {
            let api = api.clone();
            let id = pin.id.clone();
            async move {
                let entries = api
                    .list_override_audit(as_merch(
                        "ann",
                        v1::ListOverrideAuditRequest {
                            override_id: Some(id),
                            ..Default::default()
                        },
                    ))
                    .await
                    .unwrap()
                    .into_inner()
                    .entries;
                (entries.len() == 2).then_some(entries)
            }
        },
    )
    .await;
    assert_eq!(audit[0].action, v1::OverrideAction::Expire as i32);
    assert_eq!(audit[0].author, "system");
    assert_eq!(
        audit[0].after.as_ref().unwrap().status,
        v1::OverrideStatus::Expired as i32
    );
    stop.cancel();
    timers.await.unwrap().unwrap();
}
