//! One running mesh with its console, a small HTTP client, and a WebDriver client.

pub mod http;
pub mod webdriver;

use ratemesh::NotifierSettings;
use ratemesh_console::{Console, ConsoleConfig};
use ratemesh_runtime::Settings;
use ratemesh_testkit::{Product, RedisServer, Stock, TestApp, test_settings};
use std::net::SocketAddr;
use tokio_util::sync::CancellationToken;

pub use ratemesh_testkit::{eventually, key_of};

/// Every service on a private redis-server, and the console calling them.
pub struct Mesh {
    pub app: TestApp,
    /// The console's listener.
    pub console: SocketAddr,
    stop: CancellationToken,
}

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
        let redis = RedisServer::start();
        let mut settings = test_settings();
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

impl Drop for Mesh {
    fn drop(&mut self) {
        self.stop.cancel();
    }
}
