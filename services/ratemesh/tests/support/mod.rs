//! The one way end-to-end tests start ratemesh: every service in one process, bound to
//! port 0, with a known API key per role, and typed clients that send them.

#![allow(dead_code, unreachable_pub)]

use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use ratemesh::ServiceName;
use ratemesh_bus::{Bus, BusOptions};
use ratemesh_core::Policy;
use ratemesh_runtime::settings::ApiKeySettings;
use ratemesh_runtime::{App, Context, Role, Settings, auth};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::sync::oneshot;
use tokio::task::JoinHandle;
use tonic::metadata::MetadataValue;
use tonic::service::Interceptor;
use tonic::transport::Channel;
use tonic_health::pb::HealthCheckRequest;
use tonic_health::pb::health_check_response::ServingStatus;
use tonic_health::pb::health_client::HealthClient;

/// The plaintext key each role's test client sends.
pub fn key_of(role: Role) -> String {
    format!("test-key-{role}")
}

/// Writes `policy` to a file of this test process and returns its path, for
/// `rates.policy_file`.
pub fn policy_file(policy: &Policy) -> String {
    static WRITTEN: AtomicU64 = AtomicU64::new(0);
    let path = std::env::temp_dir().join(format!(
        "ratemesh-test-policy-{}-{}.toml",
        std::process::id(),
        WRITTEN.fetch_add(1, Ordering::Relaxed)
    ));
    std::fs::write(&path, policy.to_toml()).expect("writing the test policy");
    path.to_string_lossy().into_owned()
}

/// Settings for a test: ephemeral ports, one key per role, and the example policy
/// without its peak windows, so what a test expects does not change during BFCM.
pub fn test_settings() -> Settings {
    let mut settings = Settings::default();
    settings.rates.policy_file = policy_file(&Policy::example().off_peak().expect("off-peak"));
    let any_port: SocketAddr = "127.0.0.1:0".parse().expect("addr");
    settings.server.grpc_addr = any_port;
    settings.server.http_addr = any_port;
    settings.server.admin_addr = any_port;
    settings.server.shutdown_grace_ms = 5_000;
    settings.auth.keys = Role::ALL
        .into_iter()
        .map(|role| ApiKeySettings {
            name: format!("test-{role}"),
            role,
            sha256: auth::hash_key(&key_of(role)),
            partner_id: (role == Role::Partner).then(|| "test-partner".to_owned()),
        })
        .collect();
    settings
}

/// A running ratemesh.
pub struct TestApp {
    pub grpc: SocketAddr,
    pub http: Option<SocketAddr>,
    pub admin: SocketAddr,
    bus: Bus,
    stop: Option<oneshot::Sender<()>>,
    task: JoinHandle<anyhow::Result<()>>,
}

/// Starts every service on the embedded backend.
pub async fn spawn_app() -> TestApp {
    spawn_with(
        test_settings(),
        Bus::memory(BusOptions::embedded()).expect("embedded bus"),
    )
    .await
}

/// Bus options for tests on Redis: a few partitions (so partitioning is exercised) and a
/// short reclaim time (so redelivery tests do not wait long).
pub fn test_bus_options() -> BusOptions {
    BusOptions {
        partitions: 4,
        reclaim_idle: Duration::from_millis(500),
        read_block: Duration::from_millis(100),
        ..BusOptions::default()
    }
}

/// Starts every service on `redis` (a private server from `ratemesh_bus::testkit`) under a
/// key prefix of its own.
pub async fn spawn_on_redis(
    redis: &ratemesh_bus::testkit::RedisServer,
    settings: Settings,
) -> TestApp {
    let mut settings = settings;
    settings.redis.url = redis.url();
    settings.redis.key_prefix = redis.unique_prefix();
    settings.redis.partitions = test_bus_options().partitions as u16;
    let bus = Bus::redis(
        &settings.redis.url,
        &settings.redis.key_prefix,
        test_bus_options(),
    )
    .await
    .expect("redis bus");
    spawn_with(settings, bus).await
}

/// Starts every service with these settings and backend, and waits until it is SERVING.
pub async fn spawn_with(settings: Settings, bus: Bus) -> TestApp {
    ratemesh_runtime::telemetry::init_for_tests();
    let ctx = Context::new(settings, bus.clone());
    let modules = ratemesh::build_all(&ctx, &ServiceName::ALL)
        .await
        .expect("services build");
    let app = App::bind(&ctx, modules).await.expect("listeners bind");
    let (grpc, http, admin) = (app.grpc_addr(), app.http_addr(), app.admin_addr());
    let (stop, stopped) = oneshot::channel::<()>();
    let task = tokio::spawn(app.run(async move {
        let _ = stopped.await;
    }));
    let test_app = TestApp {
        grpc,
        http,
        admin,
        bus,
        stop: Some(stop),
        task,
    };
    test_app.wait_until_serving().await;
    test_app
}

/// Sends `authorization: Bearer <key>` on every call.
#[derive(Clone)]
pub struct Bearer(Option<MetadataValue<tonic::metadata::Ascii>>);

impl Bearer {
    pub fn role(role: Role) -> Self {
        Self::key(&key_of(role))
    }

    pub fn key(key: &str) -> Self {
        Self(Some(format!("Bearer {key}").parse().expect("ascii key")))
    }

    pub fn none() -> Self {
        Self(None)
    }
}

impl Interceptor for Bearer {
    fn call(
        &mut self,
        mut request: tonic::Request<()>,
    ) -> Result<tonic::Request<()>, tonic::Status> {
        if let Some(value) = &self.0 {
            request
                .metadata_mut()
                .insert("authorization", value.clone());
        }
        Ok(request)
    }
}

impl TestApp {
    /// The backend the app runs on, to look at streams and state directly.
    pub fn bus(&self) -> &Bus {
        &self.bus
    }

    pub async fn channel(&self) -> Channel {
        tonic::transport::Endpoint::from_shared(format!("http://{}", self.grpc))
            .expect("endpoint")
            .connect()
            .await
            .expect("connect")
    }

    pub async fn health(&self, service: &str) -> ServingStatus {
        let response = HealthClient::new(self.channel().await)
            .check(HealthCheckRequest {
                service: service.to_owned(),
            })
            .await
            .expect("health check")
            .into_inner();
        ServingStatus::try_from(response.status).expect("known status")
    }

    async fn wait_until_serving(&self) {
        let deadline = Instant::now() + Duration::from_secs(10);
        while self.health("").await != ServingStatus::Serving {
            assert!(
                Instant::now() < deadline,
                "app did not become SERVING within 10 s"
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// GET on the admin port; returns status code and body.
    pub async fn admin_get(&self, path: &str) -> (u16, String) {
        http_get(self.admin, path).await
    }

    /// Starts a graceful shutdown and waits for the app to stop.
    pub async fn stop(mut self) -> anyhow::Result<()> {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        (&mut self.task).await.expect("app task panicked")
    }

    /// Starts a graceful shutdown without waiting.
    pub fn begin_stop(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
    }

    /// Waits for the app to stop after [`Self::begin_stop`].
    pub async fn stopped(self) -> anyhow::Result<()> {
        self.task.await.expect("app task panicked")
    }
}

/// A minimal HTTP/1.0 GET, enough for the admin endpoints.
pub async fn http_get(addr: SocketAddr, path: &str) -> (u16, String) {
    let mut stream = tokio::net::TcpStream::connect(addr)
        .await
        .expect("connect admin");
    stream
        .write_all(format!("GET {path} HTTP/1.0\r\nHost: {addr}\r\n\r\n").as_bytes())
        .await
        .expect("write");
    let mut response = String::new();
    stream.read_to_string(&mut response).await.expect("read");
    let status = response
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .expect("status line");
    let body = response
        .split_once("\r\n\r\n")
        .map(|(_, body)| body.to_owned())
        .unwrap_or_default();
    (status, body)
}
