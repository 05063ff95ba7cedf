//! A merchandiser's day in a real browser (headless Chromium over WebDriver) against a real
//! ratemesh on a real redis-server: sign in, find a SKU, pin it and watch the rate change
//! without a reload, meet a conflict, cancel an incentive, and (as an admin) redeliver a
//! dead letter; a network key and a forged CSRF token are refused.

use std::time::Duration;

use ratemesh_proto::v1;
use ratemesh_proto::v1::incentive_service_client::IncentiveServiceClient;
use ratemesh_proto::v1::override_service_client::OverrideServiceClient;
use ratemesh_runtime::Role;
use ratemesh_testkit::{Bearer, Sink};
use serde_json::json;

use crate::support::webdriver::Browser;
use crate::support::{Mesh, eventually, key_of};

const PARTNER: &str = "shop-one";
/// The WebDriver key code of Enter.
const ENTER: char = '\u{E007}';

async fn sign_in(browser: &Browser, role: Role) {
    browser.type_into("#api-key", &key_of(role)).await;
    browser.click("#sign-in-form button[type=submit]").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_merchandiser_finds_pins_cancels_and_redelivers_in_a_browser() {
    let mesh = Mesh::spawn().await;
    // A partner whose endpoint fails: every delivery to it dies after its one attempt.
    let sink = Sink::start().await;
    sink.answer(500);
    mesh.app
        .register_partner(PARTNER, &sink.url(), Default::default())
        .await;
    for sku in ["CON-LAMP", "CON-RUG", "CON-KETTLE"] {
        mesh.stock_sku(sku, "home", 20).await;
    }
    let channel = mesh.app.channel().await;
    let mut overrides =
        OverrideServiceClient::with_interceptor(channel.clone(), Bearer::role(Role::Merchandiser));
    let incentives =
        IncentiveServiceClient::with_interceptor(channel, Bearer::role(Role::Merchandiser));
    eventually(
        "a manual incentive on CON-KETTLE opens",
        Duration::from_secs(20),
        || {
            let mut incentives = incentives.clone();
            async move {
                incentives
                    .trigger_incentive(v1::TriggerIncentiveRequest {
                        sku: "CON-KETTLE".into(),
                        bonus_rate: "0.01".into(),
                        duration: Some(prost_types::Duration {
                            seconds: 86_400,
                            nanos: 0,
                        }),
                        budget_spend: Some("500".into()),
                        budget_units: None,
                        reason: "spring clearance".into(),
                    })
                    .await
                    .ok()
            }
        },
    )
    .await;

    let browser = Browser::start(1280, 1000).await;
    browser.goto(&mesh.url("/")).await;
    browser.find("#api-key").await;
    browser.screenshot("sign-in").await;

    // A network key is refused with the reason.
    sign_in(&browser, Role::Network).await;
    browser
        .wait_text("#sign-in-error", "a network key is refused", |t| {
            t.contains("a `network` key cannot sign in")
        })
        .await;
    assert!(browser.try_find("#nav:not([hidden])").await.is_none());

    // The merchandiser signs in from the keyboard (Enter submits) and sees every SKU's rate.
    browser
        .type_into(
            "#api-key",
            &format!("{}{ENTER}", key_of(Role::Merchandiser)),
        )
        .await;
    browser
        .wait_text("#nav a[aria-current=page]", "the rates page opens", |t| {
            t == "Rates"
        })
        .await;
    browser.find("tr[data-sku=\"CON-RUG\"]").await;
    browser.execute("window.kept = 'yes'", json!([])).await;

    // Another merchandiser pins CON-RUG: the row changes in place, without a reload.
    overrides
        .set_override(v1::SetOverrideRequest {
            r#override: Some(v1::Override {
                scope: Some(v1::r#override::Scope::Sku("CON-RUG".into())),
                kind: v1::OverrideKind::Pin as i32,
                value: "0.07".into(),
                reason: "rug week".into(),
                ..Default::default()
            }),
            replace_conflicting: false,
        })
        .await
        .expect("pin CON-RUG");
    browser
        .wait_text(
            "tr[data-sku=\"CON-RUG\"] td.rate",
            "the pinned rate shows live",
            |t| t == "7.00 %",
        )
        .await;
    assert_eq!(
        browser.execute("return window.kept", json!([])).await,
        "yes"
    );
    browser.screenshot("rates").await;

    // Find a SKU.
    browser.type_into("#rates-q", "con-la").await;
    browser.click("form.filters button[type=submit]").await;
    browser
        .wait_text("#rates-table caption", "the search finds one SKU", |t| {
            t.starts_with("1 SKU ")
        })
        .await;
    assert!(browser.try_find("tr[data-sku=\"CON-RUG\"]").await.is_none());
    browser.click("tr[data-sku=\"CON-LAMP\"] a").await;
    let before = browser
        .wait_text("#sku-rate", "the SKU page shows its rate", |t| {
            t.ends_with('%')
        })
        .await;
    assert_ne!(before, "5.00 %");
    browser.find("#sku-chart svg").await;

    // The rates service refuses a pin out of range, naming the field.
    browser.type_into("#ov-value", "2").await;
    browser.type_into("#ov-reason", "launch").await;
    browser.click("#override-form button[type=submit]").await;
    browser
        .wait_text("#ov-error", "the service's validation shows", |t| {
            t.contains("override.value")
        })
        .await;
    browser.find("#ov-value[aria-invalid=true]").await;

    // A valid pin moves the rate on the page, still without a reload.
    browser.type_into("#ov-value", "0.05").await;
    browser.click("#override-form button[type=submit]").await;
    browser
        .wait_text("#sku-rate", "the pinned rate shows", |t| t == "5.00 %")
        .await;
    browser
        .wait_text("#sku-reasons", "the pin is the reason", |t| {
            t.contains("OVERRIDE_PIN")
        })
        .await;
    browser
        .wait_text("#sku-chart figcaption", "the chart has the new rate", |t| {
            t.contains("to 5.00 %")
        })
        .await;
    assert_eq!(
        browser.execute("return window.kept", json!([])).await,
        "yes"
    );
    browser.screenshot("sku").await;

    // A forged CSRF token is refused, and so is a change without one.
    let forged = browser
        .execute_async(
            "const done = arguments[arguments.length - 1];
             const send = (headers) => fetch('/api/overrides', {method: 'POST',
               headers: Object.assign({'Content-Type': 'application/json'}, headers),
               body: JSON.stringify({sku: 'CON-LAMP', kind: 'cap', value: '0.01', reason: 'forged'})})
               .then((r) => r.status);
             Promise.all([send({'X-CSRF-Token': 'forged'}), send({})]).then(done);",
            json!([]),
        )
        .await;
    assert_eq!(forged, json!([403, 403]));

    // A second pin on the same SKU conflicts: the page shows the override in the way.
    browser.click("#nav a[data-page=overrides]").await;
    browser.find("tr[data-override]").await;
    browser.type_into("#ov-target", "CON-LAMP").await;
    browser.type_into("#ov-value", "0.06").await;
    browser.type_into("#ov-reason", "second thoughts").await;
    browser.click("#override-form button[type=submit]").await;
    browser
        .wait_text("#ov-error", "the conflicting override shows", |t| {
            t.contains("launch") && t.contains("In conflict with")
        })
        .await;
    let lamp_pins = overrides
        .list_overrides(v1::ListOverridesRequest {
            sku: Some("CON-LAMP".into()),
            ..Default::default()
        })
        .await
        .expect("list")
        .into_inner()
        .overrides;
    assert_eq!(
        lamp_pins.len(),
        1,
        "neither the forged cap nor the conflict was set"
    );
    browser.screenshot("overrides").await;

    // Cancel the incentive.
    browser.click("#nav a[data-page=incentives]").await;
    browser
        .wait_text(
            "tr[data-incentive] td.state",
            "the incentive is listed",
            |t| t == "active",
        )
        .await;
    browser.click("tr[data-incentive] button").await;
    browser.type_into("tr.ask input", "launch is over").await;
    browser.click("tr.ask button[type=submit]").await;
    browser
        .wait_text("#status", "the page confirms", |t| t.contains("cancelled"))
        .await;
    browser.choose("#inc-state", "ended").await;
    browser
        .wait_text("tr[data-incentive] td.state", "the incentive ended", |t| {
            t == "ended (cancelled)"
        })
        .await;
    browser.screenshot("incentives").await;

    // The merchandiser sees which partner missed a change and redelivers its dead letter
    // once the partner is back.
    eventually("a delivery dies", Duration::from_secs(20), || async {
        let dead = mesh.app.deliveries(PARTNER).await;
        dead.iter()
            .any(|d| d.status == v1::DeliveryStatus::Dead as i32)
            .then_some(())
    })
    .await;
    sink.answer(200);
    browser
        .execute(
            "location.hash = '#/partners/' + arguments[0]",
            json!([PARTNER]),
        )
        .await;
    browser.find("tr[data-delivery] td.status-dead").await;
    let delivery = browser
        .execute(
            "return document.querySelector('tr[data-delivery] td.status-dead').parentElement.dataset.delivery",
            json!([]),
        )
        .await;
    let delivery = delivery.as_str().expect("a delivery id").to_owned();
    browser
        .click(&format!("tr[data-delivery=\"{delivery}\"] button"))
        .await;
    browser
        .wait_text("#status", "the page confirms", |t| {
            t.contains("1 delivery queued again")
        })
        .await;
    eventually(
        "the partner receives it",
        Duration::from_secs(20),
        || async {
            let deliveries = mesh.app.deliveries(PARTNER).await;
            deliveries
                .iter()
                .any(|d| d.id == delivery && d.status == v1::DeliveryStatus::Delivered as i32)
                .then_some(())
        },
    )
    .await;
    assert!(!sink.accepted().is_empty());
    browser.choose("#del-status", "delivered").await;
    browser
        .find(&format!(
            "tr[data-delivery=\"{delivery}\"] td.status-delivered"
        ))
        .await;
    browser.screenshot("partners").await;

    // On a tablet held upright the pages fit the screen; wide tables scroll on their own.
    browser.resize(820, 1180).await;
    browser
        .execute("location.hash = '#/rates'", json!([]))
        .await;
    browser.find("tr[data-sku=\"CON-LAMP\"]").await;
    let fits = browser
        .execute(
            "const d = document.documentElement; return d.scrollWidth <= d.clientWidth;",
            json!([]),
        )
        .await;
    assert_eq!(fits, json!(true), "the rates page is wider than a tablet");
    browser.screenshot("rates-tablet").await;
}

/// A figure as the page shows it (`1,234.56`, `+12.00`), as a number.
fn shown(text: &str) -> f64 {
    text.replace(',', "")
        .trim()
        .parse()
        .unwrap_or_else(|e| panic!("`{text}` is not a figure: {e}"))
}

/// A decimal string of the report, as a number.
fn figure(value: &serde_json::Value) -> f64 {
    value
        .as_str()
        .and_then(|text| text.parse().ok())
        .or_else(|| value.as_f64())
        .unwrap_or_else(|| panic!("{value} is not a figure"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_merchandiser_tries_a_candidate_policy_on_the_what_if_page() {
    let _replays = crate::support::REPLAYS.lock().await;
    let mesh = Mesh::spawn_archiving().await;
    let since = mesh.fill_archive().await;

    let browser = Browser::start(1280, 1000).await;
    browser.goto(&mesh.url("/")).await;
    sign_in(&browser, Role::Merchandiser).await;
    browser.click("#nav a[data-page=whatif]").await;
    browser
        .wait_text("#nav a[aria-current=page]", "the what-if page opens", |t| {
            t == "What-if"
        })
        .await;
    // The range starts a week back unless changed; the archive holds only this test's data.
    browser.find("#wi-since").await;
    browser.find("progress#wi-progress").await;

    // A policy the service cannot read: its error names the field and the key, and the
    // field is marked.
    let candidate = crate::support::candidate_policy();
    let sideways = candidate.replace("mode = \"direct\"", "mode = \"sideways\"");
    browser
        .execute(
            "document.getElementById('wi-candidate').value = arguments[0]",
            json!([sideways]),
        )
        .await;
    browser.click("#wi-run").await;
    browser
        .wait_text("#wi-error", "the service's refusal shows", |t| {
            t.contains("program.mode") && t.contains("(candidate_policy)")
        })
        .await;
    browser.find("#wi-candidate[aria-invalid=true]").await;

    // The candidate itself, typed over the bad one; run from the keyboard.
    browser
        .execute(
            "document.getElementById('wi-candidate').value = arguments[0]",
            json!([candidate]),
        )
        .await;
    // The garden SKU sells out within days, where the candidate pays less.
    browser.type_into("#wi-category", "garden").await;
    browser
        .type_into("#wi-elasticity", &format!("0.5{ENTER}"))
        .await;
    browser
        .wait_text("#wi-progress-text", "the run finishes", |t| {
            t.starts_with("Done:")
        })
        .await;
    let bar = browser
        .execute(
            "const p = document.getElementById('wi-progress'); return [p.value, p.max];",
            json!([]),
        )
        .await;
    assert_eq!(bar[0], bar[1], "the bar is full: {bar}");
    assert!(bar[1].as_f64().unwrap_or_default() >= 10.0, "{bar}");
    assert!(browser.try_find("#wi-cancel:disabled").await.is_some());

    // The page's figures are the service's: the same run over gRPC.
    let expected = mesh
        .what_if_request(v1::WhatIfRequest {
            candidate_policy: candidate.clone(),
            since: Some(crate::support::timestamp(
                since - chrono::TimeDelta::days(7),
            )),
            category: Some("garden".into()),
            elasticity: Some("0.5".into()),
            ..Default::default()
        })
        .await
        .expect("a run");
    let expected: serde_json::Value = serde_json::from_str(&expected.report_json).expect("JSON");
    let program = &expected["program"];
    for key in [
        "commission_spend",
        "margin_after_commission",
        "scarce_spend",
        "overstock_spend",
        "rate_changes",
        "cuts_blocked",
    ] {
        for side in ["baseline", "candidate"] {
            let text = browser
                .try_text(&format!("tr[data-figure={key}] td.{side}"))
                .await
                .unwrap_or_else(|| panic!("no {side} {key} on the page"));
            let want = figure(&program[side][key]);
            assert!(
                (shown(&text) - want).abs() < 0.006,
                "{side} {key}: the page shows {text}, the report {want}"
            );
        }
    }
    let spend = browser
        .try_text("tr[data-figure=commission_spend] td.change")
        .await
        .unwrap_or_default();
    let want = figure(&program["candidate"]["commission_spend"])
        - figure(&program["baseline"]["commission_spend"]);
    assert!((shown(&spend) - want).abs() < 0.011, "{spend} vs {want}");
    assert!(figure(&program["units_sold"]) > 0.0, "{program}");
    // One category asked for, one row; the estimate is shown apart, as an estimate.
    let categories = browser
        .execute(
            "return [...document.querySelectorAll('#wi-categories tr[data-category]')].map((r) => r.dataset.category)",
            json!([]),
        )
        .await;
    assert_eq!(categories, json!(["garden"]));
    browser
        .wait_text("#wi-estimate", "the estimate shows", |t| {
            t.starts_with("Estimate, not observed")
        })
        .await;
    browser
        .wait_text("#wi-gaps", "the gaps show", |t| !t.is_empty())
        .await;
    browser.resize(1280, 2600).await;
    browser.screenshot("whatif").await;

    // Away and back: the form and the last report are still there.
    browser.click("#nav a[data-page=rates]").await;
    browser.click("#nav a[data-page=whatif]").await;
    browser.find("tr[data-figure=commission_spend]").await;
    assert_eq!(
        browser
            .execute(
                "return document.getElementById('wi-category').value",
                json!([])
            )
            .await,
        "garden"
    );

    // On a tablet held upright the page fits the screen.
    browser.resize(820, 1180).await;
    let fits = browser
        .execute(
            "const d = document.documentElement; return d.scrollWidth <= d.clientWidth;",
            json!([]),
        )
        .await;
    assert_eq!(fits, json!(true), "the what-if page is wider than a tablet");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cancel_on_the_what_if_page_stops_the_run_on_the_server() {
    let _replays = crate::support::REPLAYS.lock().await;
    // One replay thread over 40,000 events: a run long enough to cancel.
    let mesh = Mesh::spawn_archiving_with(|ingest| ingest.whatif.threads = 1).await;
    mesh.fill_archive_large(400, 100).await;
    let (completed, cancelled) = (
        mesh.runs_ended("completed").await,
        mesh.runs_ended("cancelled").await,
    );

    let browser = Browser::start(1280, 1000).await;
    browser.goto(&mesh.url("/#/whatif")).await;
    sign_in(&browser, Role::Merchandiser).await;
    browser.find("#wi-candidate").await;
    browser
        .execute(
            "document.getElementById('wi-candidate').value = arguments[0]",
            json!([crate::support::candidate_policy()]),
        )
        .await;
    browser.click("#wi-run").await;
    browser
        .wait_text("#wi-progress-text", "the replay is under way", |t| {
            t.contains("events replayed")
        })
        .await;
    browser.click("#wi-cancel").await;
    browser
        .wait_text("#wi-progress-text", "the page says it stopped", |t| {
            t == "Cancelled."
        })
        .await;
    assert!(browser.try_find("#wi-result").await.is_none());
    assert!(browser.try_find("#wi-run:not(:disabled)").await.is_some());

    eventually(
        "the run ends cancelled on the server",
        Duration::from_secs(30),
        || async { (mesh.runs_ended("cancelled").await > cancelled).then_some(()) },
    )
    .await;
    assert_eq!(
        mesh.runs_ended("completed").await,
        completed,
        "the cancelled run finished its replay"
    );
}
