//! A running ratemesh in the test process (every service, or the ones a test names), on
//! the embedded backend or a private redis-server, with the verbs of its users: an ERP
//! pushes stock and products, a network reads cards, an admin registers partners.

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use ratemesh::ServiceName;
use ratemesh_bus::testkit::{RedisCluster, RedisServer};
use ratemesh_bus::{Bus, BusOptions};
use ratemesh_proto::v1;
use ratemesh_proto::v1::partner_service_client::PartnerServiceClient;
use ratemesh_proto::v1::rate_service_client::RateServiceClient;
use ratemesh_runtime::{App, Context, Role, ServiceModule, Settings};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::sync::oneshot;
use tokio::task::JoinHandle;
use tonic::service::interceptor::InterceptedService;
use tonic::transport::Channel;
use tonic_health::pb::HealthCheckRequest;
use tonic_health::pb::health_check_response::ServingStatus;
use tonic_health::pb::health_client::HealthClient;

use crate::bearer::Bearer;
use crate::erp::{Answer, ErpClient, Product, Stock};
use crate::settings::{test_bus_options, test_settings};

/// A gRPC client that sends a role's key.
pub type Authed = InterceptedService<Channel, Bearer>;
/// `RateService` as a role sees it.
pub type RatesClient = RateServiceClient<Authed>;
/// `PartnerService` as a role sees it.
pub type PartnersClient = PartnerServiceClient<Authed>;

/// A running ratemesh.
pub struct TestApp {
    pub grpc: SocketAddr,
    /// The ERP webhook, when ingest runs.
    pub http: Option<SocketAddr>,
    pub admin: SocketAddr,
    bus: Bus,
    erp_secret: Option<String>,
    stop: Option<oneshot::Sender<()>>,
    task: JoinHandle<anyhow::Result<()>>,
    // Dropped last: a private Redis outlives the services on it.
    _redis: Option<RedisServer>,
}

impl TestApp {
    /// Every service on the embedded backend with [`test_settings`].
    pub async fn spawn() -> Self {
        Self::spawn_with(
            test_settings(),
            Bus::memory(BusOptions::embedded()).expect("embedded bus"),
        )
        .await
    }

    /// Every service on `redis` (a private server) under a key prefix of its own.
    pub async fn spawn_on_redis(redis: &RedisServer, settings: Settings) -> Self {
        Self::spawn_at(redis, settings, &redis.unique_prefix()).await
    }

    /// Every service on `redis` under `prefix`, so a later app on the same prefix sees the
    /// same data (a restart, or a second replica).
    pub async fn spawn_at(redis: &RedisServer, settings: Settings, prefix: &str) -> Self {
        let app = Self::spawn_services_at(redis, settings, prefix, &ServiceName::ALL).await;
        app.wait_until_serving().await;
        app
    }

    /// The named services on `redis` under `prefix`, as `ratemesh serve` runs each in a
    /// process of its own; does not wait for readiness.
    pub async fn spawn_services_at(
        redis: &RedisServer,
        settings: Settings,
        prefix: &str,
        services: &[ServiceName],
    ) -> Self {
        let mut settings = settings;
        let options = test_bus_options();
        settings.redis.url = redis.url();
        settings.redis.key_prefix = prefix.to_owned();
        settings.redis.partitions = options.partitions as u16;
        let bus = Bus::redis(&settings.redis.url, prefix, options)
            .await
            .expect("redis bus");
        Self::spawn_services(settings, bus, services).await
    }

    /// Every service on a Redis Cluster (`redis.cluster = true`, `redis.url` the
    /// cluster's seed nodes) under `prefix`; waits until it is SERVING.
    pub async fn spawn_on_cluster_at(
        cluster: &RedisCluster,
        settings: Settings,
        prefix: &str,
    ) -> Self {
        let mut settings = settings;
        let options = test_bus_options();
        settings.redis.url = cluster.seeds();
        settings.redis.cluster = true;
        settings.redis.key_prefix = prefix.to_owned();
        settings.redis.partitions = options.partitions as u16;
        let bus = Bus::redis_cluster(&settings.redis.urls(), prefix, options)
            .await
            .expect("redis cluster bus");
        Self::spawn_with(settings, bus).await
    }

    /// Every service with these settings and backend; waits until it is SERVING.
    pub async fn spawn_with(settings: Settings, bus: Bus) -> Self {
        let app = Self::spawn_services(settings, bus, &ServiceName::ALL).await;
        app.wait_until_serving().await;
        app
    }

    /// The named services only, built as `ratemesh serve` builds them; does not wait for
    /// readiness.
    pub async fn spawn_services(settings: Settings, bus: Bus, services: &[ServiceName]) -> Self {
        Self::try_spawn_services(settings, bus, services)
            .await
            .expect("services build and bind")
    }

    /// [`Self::spawn_services`] for callers that report errors instead of failing a test.
    pub async fn try_spawn_services(
        settings: Settings,
        bus: Bus,
        services: &[ServiceName],
    ) -> anyhow::Result<Self> {
        let ctx = Context::new(settings, bus);
        let modules = ratemesh::build_all(&ctx, services).await?;
        Self::try_spawn_modules(&ctx, modules).await
    }

    /// Modules a test built itself (e.g. with a manual clock); does not wait for readiness.
    pub async fn spawn_modules(ctx: &Context, modules: Vec<ServiceModule>) -> Self {
        Self::try_spawn_modules(ctx, modules)
            .await
            .expect("listeners bind")
    }

    /// [`Self::spawn_modules`] for callers that report errors instead of failing a test.
    pub async fn try_spawn_modules(
        ctx: &Context,
        modules: Vec<ServiceModule>,
    ) -> anyhow::Result<Self> {
        ratemesh_runtime::telemetry::init_for_tests();
        let erp_secret = ctx
            .settings()
            .section::<ratemesh_ingest::IngestSettings>()
            .sources
            .first()
            .and_then(|source| source.secrets.first())
            .map(|secret| secret.expose().to_owned());
        let app = App::bind(ctx, modules).await?;
        let (grpc, http, admin) = (app.grpc_addr(), app.http_addr(), app.admin_addr());
        let (stop, stopped) = oneshot::channel::<()>();
        let task = tokio::spawn(app.run(async move {
            let _ = stopped.await;
        }));
        Ok(TestApp {
            grpc,
            http,
            admin,
            bus: ctx.bus().clone(),
            erp_secret,
            stop: Some(stop),
            task,
            _redis: None,
        })
    }

    /// Keeps `redis` running as long as the app.
    pub fn owning(mut self, redis: RedisServer) -> Self {
        self._redis = Some(redis);
        self
    }

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

    /// A channel that sends `role`'s key, for any generated client's `with_interceptor`.
    pub async fn authed(&self, role: Role) -> Authed {
        InterceptedService::new(self.channel().await, Bearer::role(role))
    }

    /// `RateService` as `role`.
    pub async fn rates(&self, role: Role) -> RatesClient {
        RateServiceClient::with_interceptor(self.channel().await, Bearer::role(role))
    }

    /// `PartnerService` as `role`.
    pub async fn partners(&self, role: Role) -> PartnersClient {
        PartnerServiceClient::with_interceptor(self.channel().await, Bearer::role(role))
    }

    /// The ERP of the first configured source, posting to this app's webhook.
    pub fn erp(&self) -> ErpClient {
        ErpClient::new(
            self.http.expect("ingest webhook port"),
            self.erp_secret
                .as_deref()
                .expect("an ERP source in the settings"),
        )
    }

    /// The ERP pushes stock lines as one batch, signed; it must be accepted.
    pub async fn push_stock(&self, lines: &[Stock]) -> Answer {
        self.erp().push_stock(lines).await
    }

    /// The ERP pushes products as one batch, signed; it must be accepted.
    pub async fn push_products(&self, lines: &[Product]) -> Answer {
        self.erp().push_products(lines).await
    }

    /// Waits (20 s at most) until a network reads a card of `sku` for which `pred` holds.
    pub async fn wait_card(&self, sku: &str, pred: impl Fn(&v1::RateCard) -> bool) -> v1::RateCard {
        let mut client = self.rates(Role::Network).await;
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

    /// An admin registers an enabled partner posting to `url`; returns its signing secret.
    pub async fn register_partner(&self, id: &str, url: &str, filter: v1::PartnerFilter) -> String {
        let response = self
            .partners(Role::Admin)
            .await
            .upsert_partner(v1::UpsertPartnerRequest {
                partner: Some(v1::Partner {
                    id: id.into(),
                    name: format!("Partner {id}"),
                    endpoint_url: url.into(),
                    filters: Some(filter),
                    enabled: true,
                    ..Default::default()
                }),
            })
            .await
            .expect("register partner")
            .into_inner();
        assert!(response.created, "partner {id} was registered before");
        response.signing_secret
    }

    /// The deliveries to `partner`, as an admin lists them.
    pub async fn deliveries(&self, partner: &str) -> Vec<v1::Delivery> {
        self.partners(Role::Admin)
            .await
            .list_deliveries(v1::ListDeliveriesRequest {
                partner_id: partner.into(),
                page_size: 1000,
                ..Default::default()
            })
            .await
            .expect("list deliveries")
            .into_inner()
            .deliveries
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

    /// Waits until the overall health is SERVING, failing after 10 s.
    pub async fn wait_until_serving(&self) {
        crate::health::wait_serving(&self.grpc.to_string(), Duration::from_secs(10))
            .await
            .expect("app becomes SERVING");
    }

    /// GET on the admin port; returns status code and body.
    pub async fn admin_get(&self, path: &str) -> (u16, String) {
        http_get(self.admin, path).await
    }

    /// Starts a graceful shutdown and waits for the app to stop.
    pub async fn stop(mut self) -> anyhow::Result<()> {
        self.begin_stop();
        (&mut self.task).await.expect("app task panicked")
    }

    /// Starts a graceful shutdown without waiting.
    pub fn begin_stop(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
    }

    /// Waits for the app to stop after [`Self::begin_stop`].
    pub async fn stopped(mut self) -> anyhow::Result<()> {
        (&mut self.task).await.expect("app task panicked")
    }

    /// Starts a graceful shutdown and waits for it; a panicked app is an error, not a
    /// panic here.
    pub async fn try_stop(mut self) -> anyhow::Result<()> {
        self.begin_stop();
        (&mut self.task)
            .await
            .map_err(|e| anyhow::anyhow!("app task panicked: {e}"))?
    }

    /// Ends the app without any shutdown (what `kill -9` leaves behind).
    pub async fn kill(mut self) {
        self.task.abort();
        let _ = (&mut self.task).await;
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
