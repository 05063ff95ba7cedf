//! Test helpers for the notifier: a notifier on a private Redis, a real HTTP sink that
//! records every webhook, and publishers of the events the notifier consumes.

#![allow(dead_code, unreachable_pub)]

use std::future::Future;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::body::Bytes;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use prost::Message;
use ratemesh_bus::testkit::RedisServer;
use ratemesh_bus::{Bus, BusOptions, Event};
use ratemesh_contract::streams;
use ratemesh_notifier::fanout::{INCENTIVE_CHANGED_KIND, RATE_CHANGED_KIND};
use ratemesh_notifier::webhook::WebhookBody;
use ratemesh_proto::v1;
use ratemesh_proto::v1::partner_service_client::PartnerServiceClient;
use ratemesh_runtime::settings::ApiKeySettings;
use ratemesh_runtime::{App, Context, Role, Settings, auth};
use tokio::sync::oneshot;
use tokio::task::JoinHandle;
use tonic::metadata::MetadataValue;
use tonic::service::Interceptor;
use tonic::service::interceptor::InterceptedService;
use tonic::transport::Channel;

pub const PARTNER_KEY_ID: &str = "acme";

pub fn key_of(role: Role) -> String {
    format!("notifier-test-key-{role}")
}

pub fn bus_options() -> BusOptions {
    BusOptions {
        partitions: 4,
        reclaim_idle: Duration::from_millis(500),
        read_block: Duration::from_millis(100),
        ..BusOptions::default()
    }
}

/// Settings for fast tests: loopback and http allowed, short windows and backoff.
pub fn fast_settings() -> Settings {
    let mut s = Settings::default();
    let any: SocketAddr = "127.0.0.1:0".parse().expect("addr");
    s.server.grpc_addr = any;
    s.server.http_addr = any;
    s.server.admin_addr = any;
    s.server.shutdown_grace_ms = 3_000;
    s.auth.keys = Role::ALL
        .into_iter()
        .map(|role| ApiKeySettings {
            name: format!("test-{role}"),
            role,
            sha256: auth::hash_key(&key_of(role)),
            partner_id: (role == Role::Partner).then(|| PARTNER_KEY_ID.to_owned()),
        })
        .collect();
    let n = &mut s.notifier;
    n.allow_private_destinations = true;
    n.allow_plain_http = true;
    n.coalesce_window_ms = 400;
    n.connect_timeout_ms = 1_000;
    n.request_timeout_ms = 10_000;
    n.backoff_initial_ms = 100;
    n.backoff_max_ms = 400;
    n.max_attempts = 100;
    n.timer_poll_ms = 20;
    n.partner_refresh_ms = 50;
    n.breaker_failure_threshold = 1_000;
    n.breaker_open_ms = 200;
    s
}

/// A notifier alone, on a private Redis under `prefix`.
pub struct Notifier {
    pub grpc: SocketAddr,
    /// `/metrics`, `/livez`, `/readyz`.
    pub admin: SocketAddr,
    stop: Option<oneshot::Sender<()>>,
    task: JoinHandle<anyhow::Result<()>>,
}

impl Notifier {
    pub async fn start(redis: &RedisServer, prefix: &str, settings: Settings) -> Notifier {
        ratemesh_runtime::telemetry::init_for_tests();
        let bus = Bus::redis(&redis.url(), prefix, bus_options())
            .await
            .expect("redis bus");
        let ctx = Context::new(settings, bus);
        let module = ratemesh_notifier::build(&ctx)
            .await
            .expect("notifier builds");
        let app = App::bind(&ctx, vec![module]).await.expect("bind");
        let grpc = app.grpc_addr();
        let admin = app.admin_addr();
        let (stop, stopped) = oneshot::channel::<()>();
        let task = tokio::spawn(app.run(async move {
            let _ = stopped.await;
        }));
        Notifier {
            grpc,
            admin,
            stop: Some(stop),
            task,
        }
    }

    /// Kills the notifier without any shutdown (what `kill -9` leaves behind).
    pub async fn kill(self) {
        self.task.abort();
        let _ = self.task.await;
    }

    pub async fn stop(mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        let _ = self.task.await;
    }

    /// The Prometheus text of the admin port's `/metrics`.
    pub async fn metrics(&self) -> String {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let mut conn = tokio::net::TcpStream::connect(self.admin)
            .await
            .expect("connect admin");
        conn.write_all(b"GET /metrics HTTP/1.0\r\nHost: test\r\n\r\n")
            .await
            .expect("request");
        let mut response = String::new();
        conn.read_to_string(&mut response).await.expect("response");
        assert!(response.starts_with("HTTP/1.0 200"), "{response}");
        response
    }

    pub async fn client(
        &self,
        role: Role,
    ) -> PartnerServiceClient<InterceptedService<Channel, Bearer>> {
        let channel = tonic::transport::Endpoint::from_shared(format!("http://{}", self.grpc))
            .expect("endpoint")
            .connect()
            .await
            .expect("connect");
        PartnerServiceClient::with_interceptor(channel, Bearer::role(role))
    }

    /// Registers an enabled partner; returns its signing secret.
    pub async fn add_partner(&self, id: &str, url: &str, filter: v1::PartnerFilter) -> String {
        let response = self
            .client(Role::Admin)
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
            .expect("upsert partner")
            .into_inner();
        assert!(response.created);
        response.signing_secret
    }

    pub async fn deliveries(&self, partner: &str) -> Vec<v1::Delivery> {
        self.client(Role::Admin)
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
}

#[derive(Clone)]
pub struct Bearer(MetadataValue<tonic::metadata::Ascii>);

impl Bearer {
    pub fn role(role: Role) -> Self {
        Bearer(format!("Bearer {}", key_of(role)).parse().expect("ascii"))
    }
}

impl Interceptor for Bearer {
    fn call(
        &mut self,
        mut request: tonic::Request<()>,
    ) -> Result<tonic::Request<()>, tonic::Status> {
        request
            .metadata_mut()
            .insert("authorization", self.0.clone());
        Ok(request)
    }
}

/// One webhook as the sink received it.
#[derive(Debug, Clone)]
pub struct Received {
    pub headers: HeaderMap,
    pub body: Bytes,
}

impl Received {
    pub fn json(&self) -> WebhookBody {
        serde_json::from_slice(&self.body).expect("webhook body is the documented JSON")
    }

    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.get(name).and_then(|v| v.to_str().ok())
    }
}

#[derive(Default)]
struct SinkState {
    /// Every request, answered or not.
    received: Vec<Received>,
    /// Requests answered 2xx.
    accepted: Vec<Received>,
    status: u16,
    delay: Duration,
    completed: usize,
}

/// A real HTTP server on 127.0.0.1:0 that records webhooks and answers as told.
#[derive(Clone)]
pub struct Sink {
    pub addr: SocketAddr,
    state: Arc<Mutex<SinkState>>,
}

async fn receive(
    State(state): State<Arc<Mutex<SinkState>>>,
    headers: HeaderMap,
    body: Bytes,
) -> StatusCode {
    let (status, delay) = {
        let mut s = state.lock().expect("sink lock");
        s.received.push(Received {
            headers: headers.clone(),
            body: body.clone(),
        });
        (s.status, s.delay)
    };
    if !delay.is_zero() {
        tokio::time::sleep(delay).await;
    }
    let mut s = state.lock().expect("sink lock");
    s.completed += 1;
    if (200..300).contains(&status) {
        s.accepted.push(Received { headers, body });
    }
    StatusCode::from_u16(status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR)
}

impl Sink {
    pub async fn start() -> Sink {
        let state = Arc::new(Mutex::new(SinkState {
            status: 200,
            ..SinkState::default()
        }));
        let router = axum::Router::new()
            .route("/hook", axum::routing::post(receive))
            .with_state(state.clone());
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind sink");
        let addr = listener.local_addr().expect("addr");
        tokio::spawn(async move {
            let _ = axum::serve(listener, router).await;
        });
        Sink { addr, state }
    }

    pub fn url(&self) -> String {
        format!("http://{}/hook", self.addr)
    }

    pub fn answer(&self, status: u16) {
        self.state.lock().expect("sink lock").status = status;
    }

    pub fn delay(&self, delay: Duration) {
        self.state.lock().expect("sink lock").delay = delay;
    }

    pub fn received(&self) -> Vec<Received> {
        self.state.lock().expect("sink lock").received.clone()
    }

    pub fn accepted(&self) -> Vec<Received> {
        self.state.lock().expect("sink lock").accepted.clone()
    }

    pub fn completed(&self) -> usize {
        self.state.lock().expect("sink lock").completed
    }
}

/// Polls `check` until it returns `Some`, failing the test after `within`.
pub async fn eventually<T, F, Fut>(what: &str, within: Duration, mut check: F) -> T
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Option<T>>,
{
    let deadline = Instant::now() + within;
    loop {
        if let Some(value) = check().await {
            return value;
        }
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
}

/// The value of the sample `name{labels}` (labels exactly as rendered, e.g.
/// `outcome="dead"`; empty for none) in a Prometheus text page.
pub fn sample(page: &str, name: &str, labels: &str) -> Option<f64> {
    let prefix = if labels.is_empty() {
        format!("{name} ")
    } else {
        format!("{name}{{{labels}}} ")
    };
    page.lines()
        .find_map(|line| line.strip_prefix(&prefix)?.trim().parse().ok())
}

/// A bus handle on the same Redis and prefix, to publish what rates and incentives would.
pub async fn publisher(redis: &RedisServer, prefix: &str) -> Bus {
    Bus::redis(&redis.url(), prefix, bus_options())
        .await
        .expect("bus")
}

fn now_ts() -> prost_types::Timestamp {
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .expect("clock");
    prost_types::Timestamp {
        seconds: now.as_secs() as i64,
        nanos: now.subsec_nanos() as i32,
    }
}

pub fn rate_changed(
    sku: &str,
    category: &str,
    version: u64,
    rate: &str,
    previous: &str,
) -> v1::RateChanged {
    v1::RateChanged {
        meta: Some(v1::EventMeta {
            event_id: ulid::Ulid::generate().to_string(),
            occurred_at: Some(now_ts()),
            ..Default::default()
        }),
        card: Some(v1::RateCard {
            sku: sku.into(),
            category: category.into(),
            effective_rate: rate.into(),
            reasons: vec![v1::Reason {
                code: "BAND".into(),
                text: format!("version {version} of {sku}"),
            }],
            version,
            computed_at: Some(now_ts()),
            previous_rate: previous.into(),
            ..Default::default()
        }),
        previous_rate: previous.into(),
    }
}

pub async fn publish_rate(bus: &Bus, event: v1::RateChanged) {
    let sku = event
        .card
        .as_ref()
        .map(|c| c.sku.clone())
        .unwrap_or_default();
    bus.publish(
        streams::RATES,
        Event::new(sku, event.encode_to_vec()).with_kind(RATE_CHANGED_KIND),
    )
    .await
    .expect("publish rate change");
}

pub async fn publish_incentive(bus: &Bus, sku: &str, category: &str) -> String {
    let id = ulid::Ulid::generate().to_string();
    let event = v1::IncentiveChanged {
        meta: Some(v1::EventMeta {
            event_id: ulid::Ulid::generate().to_string(),
            occurred_at: Some(now_ts()),
            ..Default::default()
        }),
        incentive: Some(v1::Incentive {
            id: id.clone(),
            sku: sku.into(),
            category: category.into(),
            bonus_rate: "0.02".into(),
            starts_at: Some(now_ts()),
            state: v1::IncentiveState::Active as i32,
            ..Default::default()
        }),
        transition: v1::IncentiveTransition::Opened as i32,
    };
    bus.publish(
        streams::INCENTIVES,
        Event::new(sku, event.encode_to_vec()).with_kind(INCENTIVE_CHANGED_KIND),
    )
    .await
    .expect("publish incentive change");
    id
}

pub fn verifies(received: &Received, secret: &str) -> bool {
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .expect("clock")
        .as_secs() as i64;
    ratemesh_runtime::signature::verify(
        received.header("ratemesh-signature"),
        &received.body,
        [secret.as_bytes()],
        now,
        300,
    )
    .is_ok()
}
