//! Starts the ingest service alone on a private redis-server, with one ERP source and an
//! `erp` API key, and gives tests a signed HTTP client and a view of the stock stream.

#![allow(dead_code, unreachable_pub)]

pub mod slow;

use std::net::SocketAddr;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;
use prost::Message as _;
use ratemesh_bus::testkit::RedisServer;
use ratemesh_bus::{Bus, BusOptions, Delivery};
use ratemesh_contract::streams;
use ratemesh_proto::v1;
use ratemesh_runtime::settings::{ApiKeySettings, ErpSource, Secret};
use ratemesh_runtime::{App, Context, Role, Settings, auth, signature};
use tokio::sync::oneshot;

pub const SECRET: &str = "erp-secret-0123456789";
pub const NEXT_SECRET: &str = "erp-secret-rotated-9876543210";
pub const ERP_KEY: &str = "test-erp-key";

pub struct Ingest {
    pub http: SocketAddr,
    pub grpc: SocketAddr,
    pub bus: Bus,
    client: Client<HttpConnector, Full<Bytes>>,
    stop: Option<oneshot::Sender<()>>,
    task: tokio::task::JoinHandle<anyhow::Result<()>>,
    _redis: Option<RedisServer>,
}

pub struct Answer {
    pub status: u16,
    pub headers: http::HeaderMap,
    pub body: serde_json::Value,
}

/// Settings with one ERP source (two secrets: current and rotated) and an erp key.
pub fn settings() -> Settings {
    let mut settings = Settings::default();
    let any: SocketAddr = "127.0.0.1:0".parse().expect("addr");
    settings.server.grpc_addr = any;
    settings.server.http_addr = any;
    settings.server.admin_addr = any;
    settings.ingest.sources = vec![ErpSource {
        name: "erp-main".into(),
        secrets: vec![Secret::new(SECRET), Secret::new(NEXT_SECRET)],
    }];
    settings.auth.keys.push(ApiKeySettings {
        name: "erp-grpc".into(),
        role: Role::Erp,
        sha256: auth::hash_key(ERP_KEY),
        partner_id: None,
    });
    settings
}

/// Ingest on a fresh private redis-server.
pub async fn start(configure: impl FnOnce(&mut Settings)) -> Ingest {
    let redis = RedisServer::start();
    let options = BusOptions {
        partitions: 4,
        ..BusOptions::default()
    };
    let bus = Bus::redis(&redis.url(), &redis.unique_prefix(), options)
        .await
        .expect("redis bus");
    start_on(bus, Some(redis), configure).await
}

/// Ingest on the embedded bus.
pub async fn start_embedded(configure: impl FnOnce(&mut Settings)) -> Ingest {
    let bus = Bus::memory(BusOptions::embedded()).expect("memory bus");
    start_on(bus, None, configure).await
}

async fn start_on(
    bus: Bus,
    redis: Option<RedisServer>,
    configure: impl FnOnce(&mut Settings),
) -> Ingest {
    ratemesh_runtime::telemetry::init_for_tests();
    let mut settings = settings();
    configure(&mut settings);
    let ctx = Context::new(settings, bus.clone());
    let module = ratemesh_ingest::build(&ctx).await.expect("ingest builds");
    let app = App::bind(&ctx, vec![module]).await.expect("bind");
    let http = app.http_addr().expect("webhook port");
    let grpc = app.grpc_addr();
    let (stop, stopped) = oneshot::channel::<()>();
    let task = tokio::spawn(app.run(async move {
        let _ = stopped.await;
    }));
    Ingest {
        http,
        grpc,
        bus,
        client: Client::builder(TokioExecutor::new()).build_http(),
        stop: Some(stop),
        task,
        _redis: redis,
    }
}

pub fn now() -> i64 {
    chrono::Utc::now().timestamp()
}

impl Ingest {
    /// POSTs `body` to `path` with the given extra headers (signature included by caller).
    pub async fn post(
        &self,
        path: &str,
        body: impl Into<Bytes>,
        headers: &[(&str, String)],
    ) -> Answer {
        let mut request = http::Request::post(format!("http://{}{path}", self.http))
            .header(http::header::CONTENT_TYPE, "application/json");
        for (name, value) in headers {
            request = request.header(*name, value);
        }
        let response = self
            .client
            .request(request.body(Full::new(body.into())).expect("request"))
            .await
            .expect("webhook answered");
        let status = response.status().as_u16();
        let headers = response.headers().clone();
        let bytes = response
            .into_body()
            .collect()
            .await
            .expect("body")
            .to_bytes();
        let body = serde_json::from_slice(&bytes).unwrap_or_else(|_| {
            serde_json::Value::String(String::from_utf8_lossy(&bytes).into_owned())
        });
        Answer {
            status,
            headers,
            body,
        }
    }

    /// POSTs a body signed now with [`SECRET`].
    pub async fn post_signed(&self, path: &str, body: &str, extra: &[(&str, String)]) -> Answer {
        let mut headers = vec![(
            "ratemesh-signature",
            signature::sign(SECRET.as_bytes(), now(), body.as_bytes()),
        )];
        headers.extend(extra.iter().cloned());
        self.post(path, body.to_owned(), &headers).await
    }

    /// Every entry on the stock stream, oldest first per partition.
    pub async fn stock_entries(&self) -> Vec<Delivery> {
        let (entries, _) = self
            .bus
            .read_after(streams::STOCK, &self.bus.start_cursor(), 100_000)
            .await
            .expect("read stock stream");
        entries
    }

    /// The decoded stock updates on the stream.
    pub async fn stock_updates(&self) -> Vec<v1::StockChanged> {
        self.stock_entries()
            .await
            .into_iter()
            .filter(|d| d.kind.as_deref() == Some(ratemesh_ingest::STOCK_CHANGED))
            .map(|d| v1::StockChanged::decode(d.payload).expect("StockChanged"))
            .collect()
    }

    pub async fn channel(&self) -> tonic::transport::Channel {
        tonic::transport::Endpoint::from_shared(format!("http://{}", self.grpc))
            .expect("endpoint")
            .connect()
            .await
            .expect("connect")
    }

    pub async fn stop(mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        let _ = tokio::time::timeout(Duration::from_secs(10), &mut self.task).await;
    }
}

/// A stock batch body with one update per `(sku, on_hand, sequence)`.
pub fn stock_body(items: &[(&str, i64, u64)]) -> String {
    let as_of = (chrono::Utc::now() - chrono::Duration::seconds(5)).to_rfc3339();
    let updates: Vec<_> = items
        .iter()
        .map(|(sku, on_hand, sequence)| {
            serde_json::json!({"sku": sku, "location": "dc-1", "on_hand": on_hand, "as_of": as_of, "sequence": sequence})
        })
        .collect();
    serde_json::json!({ "updates": updates }).to_string()
}
