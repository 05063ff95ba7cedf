//! The whole mesh, end to end, on a real Redis: a signed ERP push to the ingest webhook
//! becomes a rate card in the rates service and a signed webhook at a partner's HTTP
//! endpoint, with one trace id from the ERP request to the partner delivery.

mod support;

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use ratemesh_bus::testkit::RedisServer;
use ratemesh_notifier::webhook::WebhookBody;
use ratemesh_proto::v1;
use ratemesh_proto::v1::partner_service_client::PartnerServiceClient;
use ratemesh_runtime::Role;
use ratemesh_runtime::settings::{ErpSource, Secret};
use support::{Bearer, spawn_on_redis, test_settings};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

const ERP_SECRET: &str = "mesh-test-erp-secret-0123456789";
const TRACE_ID: &str = "4bf92f3577b34da6a3ce929d0e0e4736";

/// One HTTP request as a partner endpoint received it.
#[derive(Debug, Clone)]
struct Received {
    headers: HashMap<String, String>,
    body: Vec<u8>,
}

/// A partner endpoint: a plain HTTP/1.1 server on 127.0.0.1 that answers 200 and keeps
/// every request.
async fn start_sink() -> (SocketAddr, Arc<Mutex<Vec<Received>>>) {
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind sink");
    let addr = listener.local_addr().expect("addr");
    let received = Arc::new(Mutex::new(Vec::new()));
    let store = received.clone();
    tokio::spawn(async move {
        while let Ok((stream, _)) = listener.accept().await {
            let store = store.clone();
            tokio::spawn(async move {
                if let Some(request) = read_request(stream).await {
                    store.lock().expect("sink lock").push(request);
                }
            });
        }
    });
    (addr, received)
}

async fn read_request(mut stream: TcpStream) -> Option<Received> {
    let mut buf = Vec::new();
    let mut chunk = [0u8; 4096];
    let header_end = loop {
        let n = stream.read(&mut chunk).await.ok()?;
        if n == 0 {
            return None;
        }
        buf.extend_from_slice(&chunk[..n]);
        if let Some(pos) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            break pos + 4;
        }
    };
    let head = String::from_utf8_lossy(&buf[..header_end]).to_string();
    let headers: HashMap<String, String> = head
        .lines()
        .skip(1)
        .filter_map(|l| l.split_once(':'))
        .map(|(k, v)| (k.trim().to_ascii_lowercase(), v.trim().to_owned()))
        .collect();
    let length: usize = headers
        .get("content-length")
        .and_then(|v| v.parse().ok())
        .unwrap_or(0);
    while buf.len() < header_end + length {
        let n = stream.read(&mut chunk).await.ok()?;
        if n == 0 {
            return None;
        }
        buf.extend_from_slice(&chunk[..n]);
    }
    let body = buf[header_end..header_end + length].to_vec();
    let _ = stream
        .write_all(b"HTTP/1.1 200 OK\r\ncontent-length: 0\r\nconnection: close\r\n\r\n")
        .await;
    Some(Received { headers, body })
}

/// A signed webhook POST with a traceparent; returns the status code.
async fn post_signed(addr: SocketAddr, path: &str, body: &str, traceparent: &str) -> (u16, String) {
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .expect("clock")
        .as_secs() as i64;
    let signature = ratemesh_runtime::signature::sign(ERP_SECRET.as_bytes(), now, body.as_bytes());
    let mut stream = TcpStream::connect(addr).await.expect("connect ingest");
    let request = format!(
        "POST {path} HTTP/1.1\r\nHost: {addr}\r\nContent-Type: application/json\r\n\
         Content-Length: {}\r\nRatemesh-Signature: {signature}\r\ntraceparent: {traceparent}\r\n\
         Connection: close\r\n\r\n{body}",
        body.len()
    );
    stream.write_all(request.as_bytes()).await.expect("write");
    let mut response = String::new();
    stream.read_to_string(&mut response).await.expect("read");
    let status = response
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .expect("status line");
    (status, response)
}

/// Unix seconds as RFC 3339 UTC.
fn rfc3339(secs: i64) -> String {
    let (days, rem) = (secs.div_euclid(86_400), secs.rem_euclid(86_400));
    let z = days + 719_468;
    let (era, doe) = (z.div_euclid(146_097), z.rem_euclid(146_097));
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    format!(
        "{year:04}-{month:02}-{day:02}T{:02}:{:02}:{:02}Z",
        rem / 3600,
        rem % 3600 / 60,
        rem % 60
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_signed_erp_push_reaches_the_partner_as_a_signed_webhook_in_one_trace() {
    let redis = RedisServer::start();
    let mut settings = test_settings();
    settings.ingest.sources = vec![ErpSource {
        name: "erp-main".into(),
        secrets: vec![Secret::new(ERP_SECRET)],
    }];
    settings.notifier.allow_private_destinations = true;
    settings.notifier.allow_plain_http = true;
    settings.notifier.coalesce_window_ms = 200;
    settings.notifier.timer_poll_ms = 20;
    settings.notifier.partner_refresh_ms = 50;
    let app = spawn_on_redis(&redis, settings).await;
    let ingest = app.http.expect("ingest webhook port");

    let (sink, received) = start_sink().await;
    let created =
        PartnerServiceClient::with_interceptor(app.channel().await, Bearer::role(Role::Admin))
            .upsert_partner(v1::UpsertPartnerRequest {
                partner: Some(v1::Partner {
                    id: "mesh-partner".into(),
                    name: "Mesh partner".into(),
                    endpoint_url: format!("http://{sink}/hooks/ratemesh"),
                    filters: Some(v1::PartnerFilter {
                        categories: vec!["home".into()],
                        ..Default::default()
                    }),
                    enabled: true,
                    ..Default::default()
                }),
            })
            .await
            .expect("register partner")
            .into_inner();
    let secret = created.signing_secret;

    // One ERP sync (one trace), in the order an ERP sends it: the master data (the SKU
    // has no stock yet: out of stock), then a stock reading of 2 days of cover (scarce),
    // which moves the rate at once, not held by the out-of-stock card.
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .expect("clock")
        .as_secs() as i64;
    let products = r#"{"batch_id":"mesh-products-1","products":[{"sku":"MESH-1","category":"home","price":"100","unit_cost":"40","currency":"EUR"}]}"#;
    let (status, response) = post_signed(
        ingest,
        "/v1/products",
        products,
        &format!("00-{TRACE_ID}-00f067aa0ba902b8-01"),
    )
    .await;
    assert_eq!(status, 202, "{response}");
    let stock = format!(
        r#"{{"batch_id":"mesh-stock-1","updates":[{{"sku":"MESH-1","on_hand":"20","as_of":"{}","sequence":1,"velocity":"10"}}]}}"#,
        rfc3339(now)
    );
    let (status, response) = post_signed(
        ingest,
        "/v1/stock",
        &stock,
        &format!("00-{TRACE_ID}-00f067aa0ba902b7-01"),
    )
    .await;
    assert_eq!(status, 202, "{response}");

    // The partner receives the scarce rate, signed under its own secret.
    let deadline = Instant::now() + Duration::from_secs(30);
    let (request, rate) = loop {
        let found = received.lock().expect("sink lock").iter().find_map(|r| {
            let body: WebhookBody = serde_json::from_slice(&r.body).ok()?;
            let rate = body.rates?.into_iter().find(|rate| {
                rate.sku == "MESH-1" && rate.reasons.iter().any(|x| x.code == "LOW_COVER")
            })?;
            Some((r.clone(), rate))
        });
        if let Some(found) = found {
            break found;
        }
        assert!(
            Instant::now() < deadline,
            "no webhook with the scarce rate within 30 s; received: {:?}",
            received
                .lock()
                .expect("sink lock")
                .iter()
                .map(|r| String::from_utf8_lossy(&r.body).to_string())
                .collect::<Vec<_>>()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    assert_eq!(rate.rate, "0.04", "{rate:?}");
    assert!(rate.version >= 1);
    assert!(!rate.reasons[0].text.is_empty());
    assert_eq!(rate.category, "home");

    let signature = request
        .headers
        .get("ratemesh-signature")
        .map(String::as_str);
    ratemesh_runtime::signature::verify(
        signature,
        &request.body,
        [secret.as_bytes()],
        now + 5,
        300,
    )
    .expect("the webhook verifies under the partner's secret");
    let body: WebhookBody = serde_json::from_slice(&request.body).expect("body");
    assert_eq!(body.event_type, "rate.changed");
    assert_eq!(
        request.headers.get("ratemesh-event-id"),
        Some(&body.event_id)
    );

    // One trace from the ERP request to the partner delivery.
    let traceparent = request
        .headers
        .get("traceparent")
        .expect("the delivery carries a traceparent");
    assert_eq!(
        traceparent.split('-').nth(1),
        Some(TRACE_ID),
        "trace id of the delivery: {traceparent}"
    );

    // The delivery is listed as delivered.
    let deliveries =
        PartnerServiceClient::with_interceptor(app.channel().await, Bearer::role(Role::Admin))
            .list_deliveries(v1::ListDeliveriesRequest {
                partner_id: "mesh-partner".into(),
                ..Default::default()
            })
            .await
            .expect("deliveries")
            .into_inner()
            .deliveries;
    assert!(deliveries.iter().any(|d| d.event_id == body.event_id));
    app.stop().await.expect("clean shutdown");
}
