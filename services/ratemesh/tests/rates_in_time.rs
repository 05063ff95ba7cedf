//! Rates that are right at the moments that matter, on a real Redis through real sockets:
//! a count stamped before a peak window but delivered inside it is priced in the window;
//! `GetRate.as_of` answers from the durable history on a fresh process; a held rate says
//! so on the card served and in `ExplainRate`, which networks may call without seeing
//! retailer-private inputs; a SKU with stock but no product data is explained as waiting.

use ratemesh::NotifierSettings;
use std::time::{Duration, Instant};

use chrono::{DateTime, TimeDelta, Utc};
use ratemesh_bus::testkit::RedisServer;
use ratemesh_core::Policy;
use ratemesh_proto::v1;
use ratemesh_runtime::Role;
use ratemesh_runtime::settings::Settings;
use ratemesh_testkit::app::RatesClient as Client;
use ratemesh_testkit::{Product, Sink, Stock, TestApp, eventually, policy_file, test_settings};
use tonic::Code;

fn settings_with(policy: &Policy) -> Settings {
    let mut settings = test_settings();
    settings.policy.file = policy_file(policy);
    settings
}

/// The demo policy (no hold) without its own peak windows.
fn hold_free_policy() -> Policy {
    Policy::from_toml_str(&ratemesh::demo::demo_policy_toml())
        .expect("demo policy")
        .off_peak()
        .expect("off-peak")
}

/// The product every test here pushes, in the home category.
fn product(sku: &str) -> Product {
    Product::new(sku, "home", "100", "40")
}

/// A reading of `on_hand` units selling 10 a day.
fn stock(sku: &str, on_hand: u32, sequence: u64) -> Stock {
    Stock::new(sku, on_hand.to_string())
        .sequence(sequence)
        .velocity("10")
}

fn codes(card: &v1::RateCard) -> Vec<&str> {
    card.reasons.iter().map(|r| r.code.as_str()).collect()
}

fn time_of(ts: Option<&prost_types::Timestamp>) -> DateTime<Utc> {
    let ts = ts.expect("timestamp");
    DateTime::from_timestamp(ts.seconds, u32::try_from(ts.nanos).expect("nanos")).expect("time")
}

fn timestamp(at: DateTime<Utc>) -> prost_types::Timestamp {
    prost_types::Timestamp {
        seconds: at.timestamp(),
        nanos: i32::try_from(at.timestamp_subsec_nanos()).expect("nanos"),
    }
}

async fn rate_at(
    client: &mut Client,
    sku: &str,
    at: DateTime<Utc>,
) -> Result<v1::RateCard, tonic::Status> {
    client
        .get_rate(v1::GetRateRequest {
            sku: sku.into(),
            as_of: Some(timestamp(at)),
        })
        .await
        .map(|r| r.into_inner().card.expect("card"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_count_stamped_before_a_peak_window_is_priced_in_the_window_it_arrives_in() {
    // A peak window that opened two days ago and is still open, whatever today is.
    let today = Utc::now().date_naive();
    let window = format!(
        "\n[[peak_windows]]\nname = \"test-peak\"\nstart = \"{}\"\nend = \"{}\"\nbands = [\n  \
         {{ name = \"scarce\", max_days = \"2\", multiplier = \"0.7\" }},\n  \
         {{ name = \"normal\", max_days = \"21\", multiplier = \"1.0\" }},\n  \
         {{ name = \"overstock\", multiplier = \"1.5\" }},\n]\n",
        today - TimeDelta::days(2),
        today + TimeDelta::days(3)
    );
    let only_window = Policy::from_toml_str(&window).expect("window");
    let mut config = hold_free_policy().config().clone();
    config.peak_windows = only_window.config().peak_windows.clone();
    let policy = Policy::from_config(&config).expect("policy");
    let redis = RedisServer::start();
    let app = TestApp::spawn_on_redis(&redis, settings_with(&policy)).await;

    let started = Utc::now() - TimeDelta::seconds(1);
    // A batch export from five days ago (before the window opened): master data and a
    // cycle count, both stamped then, delivered now.
    let exported = Utc::now() - TimeDelta::days(5);
    app.push_products(&[product("PEAK-STALE-COUNT").as_of(exported)])
        .await;
    app.push_stock(&[stock("PEAK-STALE-COUNT", 400, 1).as_of(exported)])
        .await;
    let card = app
        .wait_card("PEAK-STALE-COUNT", |c| !codes(c).contains(&"OUT_OF_STOCK"))
        .await;
    assert!(
        codes(&card).contains(&"PEAK_WINDOW"),
        "priced in the window: {card:?}"
    );
    assert!(
        time_of(card.computed_at.as_ref()) >= started,
        "computed when ratemesh received the count, not at its as_of: {card:?}"
    );
    app.stop().await.expect("clean stop");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn as_of_answers_from_the_durable_history_on_a_fresh_process() {
    let redis = RedisServer::start();
    let settings = settings_with(&hold_free_policy());
    let prefix = redis.unique_prefix();
    let app = TestApp::spawn_at(&redis, settings.clone(), &prefix).await;

    app.push_products(&[product("HIST-1")]).await;
    let out_of_stock = app.wait_card("HIST-1", |c| c.version == 1).await;
    app.push_stock(&[stock("HIST-1", 300, 1)]).await;
    let normal = app.wait_card("HIST-1", |c| c.band == "normal").await;
    app.push_stock(&[stock("HIST-1", 15, 2)]).await;
    let scarce = app
        .wait_card("HIST-1", |c| c.version > normal.version)
        .await;
    assert_ne!(normal.effective_rate, scarce.effective_rate);
    let (first_at, normal_at, scarce_at) = (
        time_of(out_of_stock.computed_at.as_ref()),
        time_of(normal.computed_at.as_ref()),
        time_of(scarce.computed_at.as_ref()),
    );
    app.stop().await.expect("clean stop");

    // A new process on the same Redis: its replica loads only current cards, yet every
    // past instant answers as it did, and the same way on a second replica.
    let again = TestApp::spawn_at(&redis, settings.clone(), &prefix).await;
    let other = TestApp::spawn_at(&redis, settings, &prefix).await;
    for app in [&again, &other] {
        let mut network = app.rates(Role::Network).await;
        let between = normal_at + (scarce_at - normal_at) / 2;
        assert_eq!(
            rate_at(&mut network, "HIST-1", between)
                .await
                .expect("between"),
            normal
        );
        assert_eq!(
            rate_at(&mut network, "HIST-1", normal_at)
                .await
                .expect("at"),
            normal
        );
        assert_eq!(
            rate_at(&mut network, "HIST-1", first_at)
                .await
                .expect("first"),
            out_of_stock
        );
        assert_eq!(
            rate_at(&mut network, "HIST-1", Utc::now())
                .await
                .expect("now"),
            scarce
        );

        let before = rate_at(&mut network, "HIST-1", first_at - TimeDelta::seconds(1))
            .await
            .expect_err("before the first rate");
        assert_eq!(before.code(), Code::NotFound, "{before:?}");
        assert!(
            before.message().contains("first rate was published"),
            "{before:?}"
        );
        let ancient = rate_at(&mut network, "HIST-1", Utc::now() - TimeDelta::days(91))
            .await
            .expect_err("before the horizon");
        assert_eq!(ancient.code(), Code::OutOfRange, "{ancient:?}");
        assert!(ancient.message().contains("horizon"), "{ancient:?}");
    }
    again.stop().await.expect("clean stop");
    other.stop().await.expect("clean stop");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_held_rate_says_so_and_networks_may_ask_why_without_seeing_private_inputs() {
    let redis = RedisServer::start();
    // The example policy keeps its one-hour hold.
    let app = TestApp::spawn_on_redis(
        &redis,
        settings_with(&Policy::example().off_peak().expect("off-peak")),
    )
    .await;
    let mut network = app.rates(Role::Network).await;
    let mut merchandiser = app.rates(Role::Merchandiser).await;

    app.push_products(&[product("HELD-1")]).await;
    app.push_stock(&[stock("HELD-1", 300, 1)]).await;
    let normal = app.wait_card("HELD-1", |c| c.band == "normal").await;
    // It sells down to 2 days of cover within the hold: the rate stays, the card says why.
    app.push_stock(&[stock("HELD-1", 20, 2)]).await;
    let held = app
        .wait_card("HELD-1", |c| c.version > normal.version)
        .await;
    assert_eq!(held.effective_rate, normal.effective_rate, "{held:?}");
    assert_eq!(held.band, "scarce", "{held:?}");
    assert!(codes(&held).contains(&"HELD"), "{held:?}");
    assert!(!codes(&held).contains(&"NO_VELOCITY_DATA"), "{held:?}");

    let full = merchandiser
        .explain_rate(v1::ExplainRateRequest {
            sku: "HELD-1".into(),
        })
        .await
        .expect("merchandiser explains")
        .into_inner();
    assert_eq!(full.card.as_ref(), Some(&held));
    assert!(!full.redacted);
    let inputs = full.inputs.expect("inputs");
    assert!(!inputs.target_rate.is_empty(), "{inputs:?}");
    assert!(inputs.may_move_at.is_some(), "{inputs:?}");
    assert_eq!(inputs.product.as_ref().expect("product").unit_cost, "40");
    assert_eq!(inputs.available, "20");

    let redacted = network
        .explain_rate(v1::ExplainRateRequest {
            sku: "HELD-1".into(),
        })
        .await
        .expect("networks may explain")
        .into_inner();
    assert!(redacted.redacted);
    assert_eq!(redacted.card.as_ref(), Some(&held));
    let inputs = redacted.inputs.expect("inputs");
    assert_eq!(inputs.product.as_ref().expect("product").unit_cost, "");
    assert!(
        inputs.available.is_empty() && inputs.locations.is_empty() && inputs.velocity.is_empty()
    );
    assert_eq!(inputs.band, "scarce");
    assert!(!inputs.days_of_cover.is_empty());

    // Stock for a SKU whose product data has not arrived: no rate, explained as waiting.
    app.push_stock(&[stock("NO-PRODUCT-1", 50, 1)]).await;
    let deadline = Instant::now() + Duration::from_secs(20);
    let waiting = loop {
        match merchandiser
            .explain_rate(v1::ExplainRateRequest {
                sku: "NO-PRODUCT-1".into(),
            })
            .await
        {
            Ok(r) => break r.into_inner(),
            Err(status) => {
                assert_eq!(status.code(), Code::NotFound, "{status:?}");
                assert!(Instant::now() < deadline, "never explained: {status:?}");
                tokio::time::sleep(Duration::from_millis(25)).await;
            }
        }
    };
    assert!(waiting.card.is_none(), "{waiting:?}");
    assert!(
        waiting.status.starts_with("waiting for product data"),
        "{waiting:?}"
    );
    assert_eq!(waiting.inputs.expect("inputs").available, "50");
    let status = network
        .get_rate(v1::GetRateRequest {
            sku: "NO-PRODUCT-1".into(),
            as_of: None,
        })
        .await
        .expect_err("no rate without product data");
    assert_eq!(status.code(), Code::NotFound);
    app.stop().await.expect("clean stop");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_scheduled_base_cut_reaches_watchers_and_partners_when_it_is_announced() {
    let policy = Policy::from_toml_str(
        r#"
[program]
id = "boost-e2e"
mode = "boost"
[network]
notice_hours = 168
max_cut = "0.20"
[defaults]
base_rate = "0.05"
hysteresis = "0"
min_hold_minutes = 0
margin_share = "0.60"
"#,
    )
    .expect("boost policy");
    let redis = RedisServer::start();
    let mut settings = settings_with(&policy);
    settings
        .section_mut::<NotifierSettings>()
        .coalesce_window_ms = 100;
    let app = TestApp::spawn_on_redis(&redis, settings).await;
    let mut network = app.rates(Role::Network).await;
    let sink = Sink::start().await;
    app.register_partner("cut-partner", &sink.url(), v1::PartnerFilter::default())
        .await;

    let product = |base: &str| product("CUT-E2E").base_rate(base);
    app.push_products(&[product("0.08")]).await;
    app.push_stock(&[stock("CUT-E2E", 300, 1)]).await;
    let before = app.wait_card("CUT-E2E", |c| c.band == "normal").await;
    assert!(before.scheduled_change.is_none(), "{before:?}");

    let mut watch = network
        .watch_rates(v1::WatchRatesRequest {
            skus: vec!["CUT-E2E".into()],
            ..Default::default()
        })
        .await
        .expect("watch")
        .into_inner();
    let announced_at = Utc::now();
    app.push_products(&[product("0.06")]).await;

    // The watcher is told at once, with the new base and when it applies.
    let update = tokio::time::timeout(Duration::from_secs(20), async {
        loop {
            let update = watch.message().await.expect("watch").expect("open");
            if update
                .card
                .as_ref()
                .is_some_and(|c| c.scheduled_change.is_some())
            {
                break update;
            }
        }
    })
    .await
    .expect("an announcement");
    let card = update.card.expect("card");
    assert_eq!(
        card.effective_rate, before.effective_rate,
        "not cut yet: {card:?}"
    );
    assert!(codes(&card).contains(&"BASE_CUT_SCHEDULED"), "{card:?}");
    let change = card.scheduled_change.expect("change");
    assert_eq!(change.base_rate, "0.06");
    let effective_at = time_of(change.effective_at.as_ref());
    assert!(
        effective_at >= announced_at + TimeDelta::hours(168) - TimeDelta::seconds(5),
        "{effective_at}"
    );

    // The partner gets a signed rate.changed carrying the announcement.
    let announced = eventually(
        "an announcement at the partner",
        Duration::from_secs(20),
        || async {
            sink.received().iter().find_map(|r| {
                let json: serde_json::Value = serde_json::from_slice(&r.body).ok()?;
                json["rates"]
                    .as_array()?
                    .iter()
                    .find(|r| r["sku"] == "CUT-E2E" && r.get("scheduled_change").is_some())
                    .cloned()
            })
        },
    )
    .await;
    assert_eq!(announced["scheduled_change"]["base_rate"], "0.06");
    assert_eq!(announced["version"], card.version);
    app.stop().await.expect("clean stop");
}
