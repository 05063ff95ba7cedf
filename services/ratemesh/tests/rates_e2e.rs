//! Rates end to end on a real Redis, through real sockets: stock pushed through the
//! signed ingest webhook moves rates the way the policy says (scarce down, overstock up,
//! with reasons), visible in `GetRate`, `BatchGetRates`, `ListRates(changed_since)` and
//! `WatchRates`, and a resumed watch misses nothing. Master data is pushed before stock,
//! the order an ERP sends them in.

mod support;

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use chrono::{SecondsFormat, Utc};
use ratemesh_bus::testkit::RedisServer;
use ratemesh_core::Policy;
use ratemesh_proto::v1;
use ratemesh_proto::v1::rate_result::Outcome;
use ratemesh_proto::v1::rate_service_client::RateServiceClient;
use ratemesh_runtime::Role;
use ratemesh_runtime::settings::{ErpSource, Secret};
use rust_decimal::Decimal;
use support::{Bearer, policy_file, spawn_on_redis, test_settings};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

const ERP_SECRET: &str = "rates-e2e-erp-secret-0123456789";

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

async fn push_stock(addr: SocketAddr, batch: &str, items: &[(&str, u32, u64)]) {
    let as_of = Utc::now().to_rfc3339_opts(SecondsFormat::Secs, true);
    let updates: Vec<String> = items
        .iter()
        .map(|(sku, on_hand, seq)| {
            format!(
                r#"{{"sku":"{sku}","on_hand":"{on_hand}","as_of":"{as_of}","sequence":{seq},"velocity":"10"}}"#
            )
        })
        .collect();
    let body = format!(
        r#"{{"batch_id":"{batch}","updates":[{}]}}"#,
        updates.join(",")
    );
    post_signed(addr, "/v1/stock", &body).await;
}

fn rate(card: &v1::RateCard) -> Decimal {
    card.effective_rate.parse().expect("decimal rate")
}

fn codes(card: &v1::RateCard) -> Vec<&str> {
    card.reasons.iter().map(|r| r.code.as_str()).collect()
}

type Client = RateServiceClient<
    tonic::service::interceptor::InterceptedService<tonic::transport::Channel, Bearer>,
>;

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

async fn list(
    client: &mut Client,
    changed_since: &str,
) -> (BTreeMap<String, v1::RateCard>, String) {
    let mut cards = BTreeMap::new();
    let mut token = String::new();
    loop {
        let page = client
            .list_rates(v1::ListRatesRequest {
                page_size: 2,
                page_token: token,
                changed_since: changed_since.into(),
                category: None,
            })
            .await
            .expect("list")
            .into_inner();
        for card in page.cards {
            cards.insert(card.sku.clone(), card);
        }
        if page.next_page_token.is_empty() {
            return (cards, page.cursor);
        }
        token = page.next_page_token;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stock_through_the_webhook_moves_rates_visible_in_every_read() {
    let redis = RedisServer::start();
    let mut settings = test_settings();
    settings.ingest.sources = vec![ErpSource {
        name: "erp-main".into(),
        secrets: vec![Secret::new(ERP_SECRET)],
    }];
    // The example policy without its one-hour hold, so a second push can move a rate,
    // and without its peak windows, so the bands below hold whatever the date.
    let demo = Policy::from_toml_str(&ratemesh::demo::demo_policy_toml()).expect("demo policy");
    settings.rates.policy_file = policy_file(&demo.off_peak().expect("off-peak"));
    let app = spawn_on_redis(&redis, settings).await;
    let ingest = app.http.expect("webhook port");
    let mut client =
        RateServiceClient::with_interceptor(app.channel().await, Bearer::role(Role::Network));

    let mut watch = client
        .watch_rates(v1::WatchRatesRequest {
            categories: vec!["home".into()],
            ..Default::default()
        })
        .await
        .expect("watch")
        .into_inner();

    // The natural ERP order: master data first (the cards say out of stock), then stock.
    let products = r#"{"batch_id":"e2e-products","products":[
        {"sku":"E2E-SCARCE","category":"home","price":"100","unit_cost":"40","currency":"USD"},
        {"sku":"E2E-NORMAL","category":"home","price":"100","unit_cost":"40","currency":"USD"},
        {"sku":"E2E-OVER","category":"home","price":"100","unit_cost":"40","currency":"USD"}]}"#;
    post_signed(ingest, "/v1/products", products).await;
    for sku in ["E2E-SCARCE", "E2E-NORMAL", "E2E-OVER"] {
        wait_card(&mut client, sku, |c| codes(c).contains(&"OUT_OF_STOCK")).await;
    }
    // 10 units/day: 2 days of cover, 30 days, 200 days.
    push_stock(
        ingest,
        "e2e-stock-1",
        &[
            ("E2E-SCARCE", 20, 1),
            ("E2E-NORMAL", 300, 1),
            ("E2E-OVER", 2000, 1),
        ],
    )
    .await;

    let scarce = wait_card(&mut client, "E2E-SCARCE", |c| {
        codes(c).contains(&"LOW_COVER")
    })
    .await;
    // 200 days of cover is also the home category's flash-incentive threshold: the
    // incentives service adds its bonus on a later card. Wait for that one, so the card
    // compared and listed below is the settled one.
    let over = wait_card(&mut client, "E2E-OVER", |c| {
        codes(c).contains(&"OVERSTOCK") && codes(c).contains(&"INCENTIVE")
    })
    .await;
    // The normal SKU's rate is the base rate, as it was out of stock; coming into stock
    // still publishes a new version, so no network is told it is out of stock.
    let normal = wait_card(&mut client, "E2E-NORMAL", |c| c.band == "normal").await;
    assert_eq!(normal.version, 2, "{normal:?}");
    assert_eq!(normal.previous_rate, normal.effective_rate);
    assert!(!codes(&normal).contains(&"OUT_OF_STOCK"), "{normal:?}");
    let mut merchandiser =
        RateServiceClient::with_interceptor(app.channel().await, Bearer::role(Role::Merchandiser));
    let explained = merchandiser
        .explain_rate(v1::ExplainRateRequest {
            sku: "E2E-NORMAL".into(),
        })
        .await
        .expect("explain")
        .into_inner();
    assert_eq!(explained.card.as_ref(), Some(&normal));
    assert_eq!(explained.inputs.expect("inputs").available, "300");
    assert!(
        rate(&scarce) < rate(&normal),
        "scarce {} < normal {}",
        scarce.effective_rate,
        normal.effective_rate
    );
    assert!(
        rate(&over) > rate(&normal),
        "overstock {} > normal {}",
        over.effective_rate,
        normal.effective_rate
    );
    assert_eq!(scarce.band, "scarce");
    // The first stock moved each card at once to the policy's rate: not damped from the
    // out-of-stock card, with the stock's reasons only.
    for card in [&scarce, &over] {
        for stale in ["OUT_OF_STOCK", "DAMPED", "HELD"] {
            assert!(!codes(card).contains(&stale), "{card:?}");
        }
    }
    assert_eq!(scarce.version, 2, "{scarce:?}");

    let batch = client
        .batch_get_rates(v1::BatchGetRatesRequest {
            skus: vec!["E2E-OVER".into(), "E2E-NOPE".into(), "E2E-SCARCE".into()],
        })
        .await
        .expect("batch")
        .into_inner();
    assert!(
        matches!(&batch.results[0].outcome, Some(Outcome::Card(c)) if c.effective_rate == over.effective_rate)
    );
    assert!(
        matches!(&batch.results[1].outcome, Some(Outcome::Error(e)) if e.code == v1::ItemErrorCode::NotFound as i32)
    );
    assert!(matches!(&batch.results[2].outcome, Some(Outcome::Card(c)) if c.sku == "E2E-SCARCE"));

    // Full listing, then the normal SKU sells down to scarcity: only it is in the delta.
    let (all, cursor) = list(&mut client, "").await;
    assert_eq!(
        all.keys().collect::<Vec<_>>(),
        ["E2E-NORMAL", "E2E-OVER", "E2E-SCARCE"]
    );
    let seen_versions: BTreeMap<String, u64> =
        all.iter().map(|(k, c)| (k.clone(), c.version)).collect();
    push_stock(ingest, "e2e-stock-2", &[("E2E-NORMAL", 15, 2)]).await;
    let moved = wait_card(&mut client, "E2E-NORMAL", |c| c.version > normal.version).await;
    assert!(
        rate(&moved) < rate(&normal),
        "selling down cut the rate: {} -> {}",
        normal.effective_rate,
        moved.effective_rate
    );
    let (delta, _) = list(&mut client, &cursor).await;
    assert_eq!(
        delta.keys().collect::<Vec<_>>(),
        ["E2E-NORMAL"],
        "{delta:?}"
    );
    assert_eq!(delta["E2E-NORMAL"].version, moved.version);

    // The watch saw each SKU's cards in version order, ending with the move.
    let mut watched: BTreeMap<String, u64> = BTreeMap::new();
    let mut cursor_before_move = String::new();
    let deadline = Instant::now() + Duration::from_secs(20);
    while watched.get("E2E-NORMAL") != Some(&moved.version) {
        assert!(
            Instant::now() < deadline,
            "watch never showed the move: {watched:?}"
        );
        let update = tokio::time::timeout(Duration::from_secs(20), watch.message())
            .await
            .expect("watch stalled")
            .expect("watch ok")
            .expect("watch open");
        let Some(card) = update.card else { continue };
        let previous = watched.insert(card.sku.clone(), card.version);
        assert!(
            previous.is_none_or(|v| v < card.version),
            "version order for {}",
            card.sku
        );
        if card.sku != "E2E-NORMAL" || card.version < moved.version {
            cursor_before_move = update.cursor.clone();
        }
    }
    for (sku, version) in &seen_versions {
        assert!(
            watched.get(sku).is_some_and(|v| v >= version),
            "{sku} watched"
        );
    }

    // A watch resumed from before the move replays it.
    let mut resumed = client
        .watch_rates(v1::WatchRatesRequest {
            cursor: cursor_before_move,
            ..Default::default()
        })
        .await
        .expect("resume")
        .into_inner();
    let replayed = loop {
        let update = tokio::time::timeout(Duration::from_secs(20), resumed.message())
            .await
            .expect("resumed watch stalled")
            .expect("ok")
            .expect("open");
        if let Some(card) = update.card
            && card.sku == "E2E-NORMAL"
        {
            break card;
        }
    };
    assert_eq!(replayed.version, moved.version);
    drop((watch, resumed));
    app.stop().await.expect("clean stop");
}
