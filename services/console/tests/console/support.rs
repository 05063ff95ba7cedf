//! One running mesh with its console, a small HTTP client, and a WebDriver client.

pub mod http;
pub mod webdriver;

use ratemesh::{IngestSettings, NotifierSettings};
use ratemesh_console::{Console, ConsoleConfig};
use ratemesh_proto::v1;
use ratemesh_proto::v1::policy_service_client::PolicyServiceClient;
use ratemesh_runtime::Role;
use ratemesh_runtime::Settings;
use ratemesh_testkit::{Bearer, Product, RedisServer, Stock, TestApp, test_settings};
use std::net::SocketAddr;
use std::time::Duration;
use tokio_util::sync::CancellationToken;

pub use ratemesh_testkit::{eventually, key_of};

/// Every service on a private redis-server, and the console calling them.
pub struct Mesh {
    pub app: TestApp,
    /// The console's listener.
    pub console: SocketAddr,
    /// The input archive's directory, when the mesh keeps one.
    archive: Option<tempfile::TempDir>,
    stop: CancellationToken,
}

/// An input archive for a mesh: its directory and a change to ingest's settings.
type Archive<'a> = (tempfile::TempDir, Box<dyn FnOnce(&mut IngestSettings) + 'a>);

impl Mesh {
    /// Starts redis, the services and the console. A partner delivery fails for good after
    /// one attempt, so a test sees dead letters at once, and a failing partner's breaker
    /// closes again soon after.
    pub async fn spawn() -> Self {
        Self::spawn_with(|_, _| {}).await
    }

    /// As [`Mesh::spawn`], with the console's settings changed by `edit`, which is given
    /// the services' gRPC address.
    pub async fn spawn_with(edit: impl FnOnce(&mut Settings, SocketAddr)) -> Self {
        Self::start(None, edit).await
    }

    /// As [`Mesh::spawn`], with ingest keeping the input archive in a temporary directory,
    /// so what-if runs (`PolicyService`) are served.
    pub async fn spawn_archiving() -> Self {
        Self::spawn_archiving_with(|_| {}).await
    }

    /// As [`Mesh::spawn_archiving`], with ingest's settings changed by `adjust`.
    pub async fn spawn_archiving_with(adjust: impl FnOnce(&mut IngestSettings)) -> Self {
        let dir = tempfile::tempdir().expect("archive dir");
        Self::start(Some((dir, Box::new(adjust))), |_, _| {}).await
    }

    async fn start(
        archive: Option<Archive<'_>>,
        edit: impl FnOnce(&mut Settings, SocketAddr),
    ) -> Self {
        let redis = RedisServer::start();
        let mut settings = test_settings();
        let archive = archive.map(|(dir, adjust)| {
            let ingest = settings.section_mut::<IngestSettings>();
            ingest.archive.dir = dir.path().to_str().expect("utf-8 path").to_owned();
            adjust(ingest);
            dir
        });
        let notifier = settings.section_mut::<NotifierSettings>();
        notifier.max_attempts = 1;
        notifier.coalesce_window_ms = 50;
        notifier.breaker_open_ms = 200;
        let app = TestApp::spawn_on_redis(&redis, settings.clone())
            .await
            .owning(redis);
        // As `ratemesh up` builds it: the process's keys, calling its gRPC listener.
        edit(&mut settings, app.grpc);
        let config = ConsoleConfig::from_settings(&settings, app.grpc).expect("console config");
        let console = Console::bind("127.0.0.1:0".parse().expect("addr"), config)
            .await
            .expect("console binds");
        let addr = console.local_addr();
        let stop = CancellationToken::new();
        tokio::spawn(console.run(stop.clone()));
        Mesh {
            app,
            console: addr,
            archive,
            stop,
        }
    }

    /// The console's URL of `path`.
    pub fn url(&self, path: &str) -> String {
        format!("http://{}{path}", self.console)
    }

    /// A product the ERP pushes, with stock whose cover is `days` at 10 units a day;
    /// waits for its first card.
    pub async fn stock_sku(&self, sku: &str, category: &str, days: u32) {
        self.app
            .push_products(&[Product::new(sku, category, "100", "40")])
            .await;
        self.app
            .push_stock(&[Stock::new(sku, days * 10).velocity("10")])
            .await;
        self.app.wait_card(sku, |_| true).await;
    }
}

/// Held by every test whose what-if runs reach the replay, so the process-wide run
/// counters change only by what the holder does.
pub static REPLAYS: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

/// The sample candidate policy of the what-if crate: less commission on SKUs that sell out
/// anyway, more on overstock.
pub fn candidate_policy() -> String {
    std::fs::read_to_string(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../whatif/sample/candidate.toml"
    ))
    .expect("the sample candidate policy")
}

/// A protobuf time.
pub fn timestamp(at: chrono::DateTime<chrono::Utc>) -> prost_types::Timestamp {
    prost_types::Timestamp {
        seconds: at.timestamp(),
        nanos: at.timestamp_subsec_nanos() as i32,
    }
}

impl Mesh {
    /// Pushes 3 products in two categories and 4 rounds of falling stock (one SKU with
    /// months of cover, one with weeks, one selling out within days), and waits until the
    /// archive holds all 15 events; returns a time before the first.
    pub async fn fill_archive(&self) -> chrono::DateTime<chrono::Utc> {
        assert!(self.archive.is_some(), "the mesh keeps no archive");
        let since = chrono::Utc::now() - chrono::TimeDelta::minutes(1);
        let answer = self
            .app
            .push_products(&[
                Product::new("WI-LAMP", "home", "40", "10"),
                Product::new("WI-RUG", "home", "25", "10"),
                Product::new("WI-HOSE", "garden", "60", "12"),
            ])
            .await;
        assert_eq!(answer.status, 202, "{}", answer.body);
        for step in 0..4u64 {
            let answer = self
                .app
                .push_stock(&[
                    Stock::new("WI-LAMP", 900 - step * 9)
                        .velocity("5")
                        .sequence(step + 1),
                    Stock::new("WI-RUG", 300 - step * 4)
                        .velocity("15")
                        .sequence(step + 1),
                    Stock::new("WI-HOSE", 90 - step * 20)
                        .velocity("40")
                        .sequence(step + 1),
                ])
                .await;
            assert_eq!(answer.status, 202, "{}", answer.body);
        }
        eventually(
            "the archive holds the 15 events",
            Duration::from_secs(30),
            || async {
                let report = self.what_if(since).await?;
                (report.events >= 15).then_some(())
            },
        )
        .await;
        since
    }

    /// Pushes `skus` products and `readings` stock readings of each, a batch a reading, and
    /// waits until the archive holds them all; returns a time before the first.
    pub async fn fill_archive_large(
        &self,
        skus: u64,
        readings: u64,
    ) -> chrono::DateTime<chrono::Utc> {
        let since = chrono::Utc::now() - chrono::TimeDelta::minutes(1);
        let products: Vec<Product> = (0..skus)
            .map(|i| Product::new(&format!("L-{i}"), "home", "30", "10"))
            .collect();
        let answer = self.app.push_products(&products).await;
        assert_eq!(answer.status, 202, "{}", answer.body);
        for n in 1..=readings {
            let batch: Vec<Stock> = (0..skus)
                .map(|i| Stock::new(&format!("L-{i}"), 5000 - n * (1 + i % 3)).sequence(n))
                .collect();
            let answer = self.app.push_stock(&batch).await;
            assert_eq!(answer.status, 202, "{}", answer.body);
        }
        let expected = skus * (readings + 1);
        eventually(
            "the archive holds every push",
            Duration::from_secs(120),
            || async {
                let report = self.what_if(since).await?;
                if report.events < expected {
                    tokio::time::sleep(Duration::from_millis(500)).await;
                }
                (report.events >= expected).then_some(())
            },
        )
        .await;
        since
    }

    /// `ratemesh_whatif_runs_total{outcome}` as the process exports it.
    pub async fn runs_ended(&self, outcome: &str) -> u64 {
        let (status, body) = self.app.admin_get("/metrics").await;
        assert_eq!(status, 200);
        let series = format!("ratemesh_whatif_runs_total{{outcome=\"{outcome}\"}} ");
        body.lines()
            .find_map(|line| line.strip_prefix(&series))
            .map_or(0, |value| value.trim().parse().expect("a count"))
    }

    /// A what-if run of [`candidate_policy`] from `since` to now against the live policy,
    /// called straight over gRPC as a merchandiser; `None` while another run holds the slot.
    pub async fn what_if(&self, since: chrono::DateTime<chrono::Utc>) -> Option<v1::WhatIfResult> {
        self.what_if_request(v1::WhatIfRequest {
            candidate_policy: candidate_policy(),
            since: Some(timestamp(since)),
            ..Default::default()
        })
        .await
    }

    /// The result of a what-if run of `request`, called straight over gRPC as a
    /// merchandiser; `None` when it was refused or ended without one.
    pub async fn what_if_request(&self, request: v1::WhatIfRequest) -> Option<v1::WhatIfResult> {
        let channel = self.app.channel().await;
        let mut policy =
            PolicyServiceClient::with_interceptor(channel, Bearer::role(Role::Merchandiser));
        let mut events = policy.what_if(request).await.ok()?.into_inner();
        while let Some(event) = events.message().await.ok()? {
            if let Some(v1::what_if_event::Event::Result(result)) = event.event {
                return Some(result);
            }
        }
        None
    }
}

impl Drop for Mesh {
    fn drop(&mut self) {
        self.stop.cancel();
    }
}
