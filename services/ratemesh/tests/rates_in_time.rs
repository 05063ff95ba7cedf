//! Rates that are right at the moments that matter, on a real Redis through real sockets:
//! a count stamped before a peak window but delivered inside it is priced in the window;
//! `GetRate.as_of` answers from the durable history on a fresh process; a held rate says
//! so on the card served and in `ExplainRate`, which networks may call without seeing
//! retailer-private inputs; a SKU with stock but no product data is explained as waiting.

mod support;

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use chrono::{DateTime, SecondsFormat, TimeDelta, Utc};
use ratemesh_bus::testkit::RedisServer;
use ratemesh_core::Policy;
use ratemesh_proto::v1;
use ratemesh_proto::v1::rate_service_client::RateServiceClient;
use ratemesh_runtime::Role;
use ratemesh_runtime::settings::{ErpSource, Secret, Settings};
use support::{Bearer, policy_file, spawn_on_redis, test_settings};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tonic::Code;

const ERP_SECRET: &str = "rates-in-time-erp-secret-0123456789";

type Client = RateServiceClient<
    tonic::service::interceptor::InterceptedService<tonic::transport::Channel, Bearer>,
>;

fn settings_with(policy: &Policy) -> Settings {
    let mut settings = test_settings();
    settings.ingest.sources = vec![ErpSource {
        name: "erp-main".into(),
        secrets: vec![Secret::new(ERP_SECRET)],
    }];
    settings.rates.policy_file = policy_file(policy);
    settings
}

/// The demo policy (no hold) without its own peak windows.
fn hold_free_policy() -> Policy {
    Policy::from_toml_str(&ratemesh::demo::demo_policy_toml())
        .expect("demo policy")
        .off_peak()
        .expect("off-peak")
}

async fn post_signed(addr: SocketAddr, path: &str, body: &str) {
    let signature = ratemesh_runtime::signature::sign(
        ERP_SECRET.as_bytes(),
        Utc::now().timestamp(),
        body.as_bytes(),
    );
    let mut stream = TcpStream::connect(addr).await.expect("connect ingest");
    let request = format!(
        "POST {path} HTTP/1.1\r\nHost: {addr}\r\nContent-Type: application/json\r\n\
         Content-Length: {}\r\nRatemesh-Signature: {signature}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    );
    stream.write_all(request.as_bytes()).await.expect("write");
    let mut response = String::new();
    stream.read_to_string(&mut response).await.expect("read");
    assert!(response.starts_with("HTTP/1.1 202"), "{path}: {response}");
}

async fn push_product(addr: SocketAddr, batch: &str, sku: &str) {
    push_product_as_of(addr, batch, sku, None).await;
}

async fn push_product_as_of(
    addr: SocketAddr,
    batch: &str,
    sku: &str,
    as_of: Option<DateTime<Utc>>,
) {
    let as_of = as_of
        .map(|t| {
            format!(
                r#","as_of":"{}""#,
                t.to_rfc3339_opts(SecondsFormat::Secs, true)
            )
        })
        .unwrap_or_default();
    let body = format!(
        r#"{{"batch_id":"{batch}","products":[{{"sku":"{sku}","category":"home","price":"100","unit_cost":"40","currency":"USD"{as_of}}}]}}"#
    );
    post_signed(addr, "/v1/products", &body).await;
}

async fn push_stock(
    addr: SocketAddr,
    batch: &str,
    sku: &str,
    on_hand: u32,
    seq: u64,
    as_of: DateTime<Utc>,
) {
    let as_of = as_of.to_rfc3339_opts(SecondsFormat::Secs, true);
    let body = format!(
        r#"{{"batch_id":"{batch}","updates":[{{"sku":"{sku}","on_hand":"{on_hand}","as_of":"{as_of}","sequence":{seq},"velocity":"10"}}]}}"#
    );
    post_signed(addr, "/v1/stock", &body).await;
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

/// Starts every service on `redis` under `prefix`, so a later process sees the same data.
async fn spawn_at(redis: &RedisServer, settings: Settings, prefix: &str) -> support::TestApp {
    let mut settings = settings;
    settings.redis.url = redis.url();
    settings.redis.key_prefix = prefix.to_owned();
    let options = support::test_bus_options();
    settings.redis.partitions = options.partitions as u16;
    let bus = ratemesh_bus::Bus::redis(&settings.redis.url, prefix, options)
        .await
        .expect("redis bus");
    support::spawn_with(settings, bus).await
}

async fn client(app: &support::TestApp, role: Role) -> Client {
    RateServiceClient::with_interceptor(app.channel().await, Bearer::role(role))
}

async fn wait_card(
    client: &mut Client,
    sku: &str,
    pred: impl Fn(&v1::RateCard) -> bool,
) -> v1::RateCard {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let last = client
            .get_rate(v1::GetRateRequest {
                sku: sku.into(),
                as_of: None,
            })
            .await
            .map(|r| r.into_inner().card);
        if let Ok(Some(card)) = &last
            && pred(card)
        {
            return card.clone();
        }
        assert!(
            Instant::now() < deadline,
            "{sku} never reached the expected card; last: {last:?}"
        );
        tokio::time::sleep(Duration::from_millis(25)).await;
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
    let app = spawn_on_redis(&redis, settings_with(&policy)).await;
    let ingest = app.http.expect("webhook port");
    let mut network = client(&app, Role::Network).await;

    let started = Utc::now() - TimeDelta::seconds(1);
    // A batch export from five days ago (before the window opened): master data and a
    // cycle count, both stamped then, delivered now.
    let exported = Utc::now() - TimeDelta::days(5);
    push_product_as_of(ingest, "peak-products", "PEAK-STALE-COUNT", Some(exported)).await;
    push_stock(ingest, "peak-stock", "PEAK-STALE-COUNT", 400, 1, exported).await;
    let card = wait_card(&mut network, "PEAK-STALE-COUNT", |c| {
        !codes(c).contains(&"OUT_OF_STOCK")
    })
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
    let app = spawn_at(&redis, settings.clone(), &prefix).await;
    let ingest = app.http.expect("webhook port");
    let mut network = client(&app, Role::Network).await;

    push_product(ingest, "hist-products", "HIST-1").await;
    let out_of_stock = wait_card(&mut network, "HIST-1", |c| c.version == 1).await;
    push_stock(ingest, "hist-stock-1", "HIST-1", 300, 1, Utc::now()).await;
    let normal = wait_card(&mut network, "HIST-1", |c| c.band == "normal").await;
    push_stock(ingest, "hist-stock-2", "HIST-1", 15, 2, Utc::now()).await;
    let scarce = wait_card(&mut network, "HIST-1", |c| c.version > normal.version).await;
    assert_ne!(normal.effective_rate, scarce.effective_rate);
    let (first_at, normal_at, scarce_at) = (
        time_of(out_of_stock.computed_at.as_ref()),
        time_of(normal.computed_at.as_ref()),
        time_of(scarce.computed_at.as_ref()),
    );
    app.stop().await.expect("clean stop");

    // A new process on the same Redis: its replica loads only current cards, yet every
    // past instant answers as it did, and the same way on a second replica.
    let again = spawn_at(&redis, settings.clone(), &prefix).await;
    let other = spawn_at(&redis, settings, &prefix).await;
    for app in [&again, &other] {
        let mut network = client(app, Role::Network).await;
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
    let app = spawn_on_redis(
        &redis,
        settings_with(&Policy::example().off_peak().expect("off-peak")),
    )
    .await;
    let ingest = app.http.expect("webhook port");
    let mut network = client(&app, Role::Network).await;
    let mut merchandiser = client(&app, Role::Merchandiser).await;

    push_product(ingest, "held-products", "HELD-1").await;
    push_stock(ingest, "held-stock-1", "HELD-1", 300, 1, Utc::now()).await;
    let normal = wait_card(&mut network, "HELD-1", |c| c.band == "normal").await;
    // It sells down to 2 days of cover within the hold: the rate stays, the card says why.
    push_stock(ingest, "held-stock-2", "HELD-1", 20, 2, Utc::now()).await;
    let held = wait_card(&mut network, "HELD-1", |c| c.version > normal.version).await;
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
    push_stock(ingest, "orphan-stock", "NO-PRODUCT-1", 50, 1, Utc::now()).await;
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

/// A partner endpoint: answers 200 to every POST and keeps the bodies.
async fn start_sink() -> (SocketAddr, std::sync::Arc<std::sync::Mutex<Vec<Vec<u8>>>>) {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind sink");
    let addr = listener.local_addr().expect("addr");
    let bodies = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
    let store = bodies.clone();
    tokio::spawn(async move {
        while let Ok((mut stream, _)) = listener.accept().await {
            let store = store.clone();
            tokio::spawn(async move {
                let mut buf = Vec::new();
                let mut chunk = [0u8; 4096];
                loop {
                    let Ok(n) = stream.read(&mut chunk).await else {
                        return;
                    };
                    if n == 0 {
                        return;
                    }
                    buf.extend_from_slice(&chunk[..n]);
                    let Some(end) = buf.windows(4).position(|w| w == b"\r\n\r\n") else {
                        continue;
                    };
                    let head = String::from_utf8_lossy(&buf[..end]).to_ascii_lowercase();
                    let length: usize = head
                        .lines()
                        .find_map(|l| l.strip_prefix("content-length:"))
                        .and_then(|v| v.trim().parse().ok())
                        .unwrap_or(0);
                    if buf.len() >= end + 4 + length {
                        store
                            .lock()
                            .expect("sink")
                            .push(buf[end + 4..end + 4 + length].to_vec());
                        let _ = stream
                            .write_all(b"HTTP/1.1 200 OK\r\ncontent-length: 0\r\nconnection: close\r\n\r\n")
                            .await;
                        return;
                    }
                }
            });
        }
    });
    (addr, bodies)
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
    settings.notifier.allow_private_destinations = true;
    settings.notifier.allow_plain_http = true;
    settings.notifier.coalesce_window_ms = 100;
    settings.notifier.timer_poll_ms = 20;
    settings.notifier.partner_refresh_ms = 50;
    let app = spawn_on_redis(&redis, settings).await;
    let ingest = app.http.expect("webhook port");
    let mut network = client(&app, Role::Network).await;
    let (sink, bodies) = start_sink().await;
    ratemesh_proto::v1::partner_service_client::PartnerServiceClient::with_interceptor(
        app.channel().await,
        Bearer::role(Role::Admin),
    )
    .upsert_partner(v1::UpsertPartnerRequest {
        partner: Some(v1::Partner {
            id: "cut-partner".into(),
            name: "Cut partner".into(),
            endpoint_url: format!("http://{sink}/hooks"),
            enabled: true,
            ..Default::default()
        }),
    })
    .await
    .expect("register partner");

    let product = |base: &str| {
        format!(
            r#"{{"batch_id":"cut-products-{base}","products":[{{"sku":"CUT-E2E","category":"home","price":"100","unit_cost":"40","base_rate":"{base}","currency":"USD"}}]}}"#
        )
    };
    post_signed(ingest, "/v1/products", &product("0.08")).await;
    push_stock(ingest, "cut-stock", "CUT-E2E", 300, 1, Utc::now()).await;
    let before = wait_card(&mut network, "CUT-E2E", |c| c.band == "normal").await;
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
    post_signed(ingest, "/v1/products", &product("0.06")).await;

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
    let deadline = Instant::now() + Duration::from_secs(20);
    let announced = loop {
        let found = bodies.lock().expect("sink").iter().find_map(|b| {
            let json: serde_json::Value = serde_json::from_slice(b).ok()?;
            json["rates"]
                .as_array()?
                .iter()
                .find(|r| r["sku"] == "CUT-E2E" && r.get("scheduled_change").is_some())
                .cloned()
        });
        if let Some(rate) = found {
            break rate;
        }
        assert!(
            Instant::now() < deadline,
            "no announcement reached the partner"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    assert_eq!(announced["scheduled_change"]["base_rate"], "0.06");
    assert_eq!(announced["version"], card.version);
    app.stop().await.expect("clean stop");
}
