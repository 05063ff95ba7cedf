//! Starts the ingest service alone (through the test kit) on a private redis-server or
//! the embedded bus, with one ERP source of two secrets (current and rotated), and gives
//! tests the signed ERP client and a view of the stock stream.

#![allow(dead_code, unreachable_pub)]

pub mod slow;

use ratemesh_ingest::IngestSettings;
use std::net::SocketAddr;

use prost::Message as _;

use ratemesh_bus::testkit::RedisServer;
use ratemesh_bus::{Bus, BusOptions, Delivery};
use ratemesh_contract::streams;
use ratemesh_proto::v1;
use ratemesh_runtime::{Role, Settings};
use ratemesh_testkit::settings::{bare_settings, erp_source};
use ratemesh_testkit::{ErpClient, ServiceName, TestApp, key_of};

pub const SECRET: &str = "erp-secret-0123456789";
pub const NEXT_SECRET: &str = "erp-secret-rotated-9876543210";

/// The API key the ERP's gRPC client sends.
pub fn erp_key() -> String {
    key_of(Role::Erp)
}

pub struct Ingest {
    pub http: SocketAddr,
    pub grpc: SocketAddr,
    pub bus: Bus,
    /// The ERP, signing with [`SECRET`].
    pub erp: ErpClient,
    app: TestApp,
}

/// Settings with one ERP source (two secrets: current and rotated) and a key per role;
/// the erp key is named `erp-grpc`, the source its gRPC pushes are recorded under.
pub fn settings() -> Settings {
    let mut settings = bare_settings();
    for key in &mut settings.auth.keys {
        if key.role == Role::Erp {
            key.name = "erp-grpc".into();
        }
    }
    settings.section_mut::<IngestSettings>().sources =
        erp_source("erp-main", &[SECRET, NEXT_SECRET]);
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

/// Ingest on `bus`, owning `redis` (stopped with it) if given.
pub async fn start_on(
    bus: Bus,
    redis: Option<RedisServer>,
    configure: impl FnOnce(&mut Settings),
) -> Ingest {
    let mut settings = settings();
    configure(&mut settings);
    let mut app = TestApp::spawn_services(settings, bus.clone(), &[ServiceName::Ingest]).await;
    if let Some(redis) = redis {
        app = app.owning(redis);
    }
    let http = app.http.expect("webhook port");
    Ingest {
        http,
        grpc: app.grpc,
        bus,
        erp: ErpClient::new(http, SECRET),
        app,
    }
}

pub fn now() -> i64 {
    chrono::Utc::now().timestamp()
}

impl Ingest {
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
        self.app.channel().await
    }

    pub async fn stop(self) {
        let _ = tokio::time::timeout(std::time::Duration::from_secs(10), self.app.try_stop()).await;
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
