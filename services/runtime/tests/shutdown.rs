//! Graceful shutdown through real sockets: a call in flight when the signal arrives still
//! gets its answer; one that outlives the deadline is abandoned so the process can exit.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::task::{Context as TaskContext, Poll};
use std::time::Duration;

use http::uri::PathAndQuery;
use ratemesh_bus::{Bus, BusOptions};
use ratemesh_runtime::auth::MethodRoles;
use ratemesh_runtime::settings::ApiKeySettings;
use ratemesh_runtime::{App, Context, Readiness, Role, ServiceModule, Settings, auth};
use tokio::sync::oneshot;
use tonic::body::Body;
use tonic::server::NamedService;
use tonic_health::pb::health_check_response::ServingStatus;
use tonic_health::pb::health_server::{Health, HealthServer};
use tonic_health::pb::{HealthCheckRequest, HealthCheckResponse};

/// Who may call the test service: network keys (the role these tests use).
const SLOW_ACCESS: MethodRoles = &[("Check", &[Role::Network])];

const KEY: &str = "shutdown-test-key";

/// Answers `Check` after a delay. A real service of ours would do; this one keeps the test
/// about the runtime alone.
#[derive(Clone)]
struct SlowHealth {
    delay: Duration,
}

#[tonic::async_trait]
impl Health for SlowHealth {
    async fn check(
        &self,
        _request: tonic::Request<HealthCheckRequest>,
    ) -> Result<tonic::Response<HealthCheckResponse>, tonic::Status> {
        tokio::time::sleep(self.delay).await;
        Ok(tonic::Response::new(HealthCheckResponse {
            status: ServingStatus::Serving as i32,
        }))
    }

    type WatchStream = tokio_stream::Empty<Result<HealthCheckResponse, tonic::Status>>;

    async fn watch(
        &self,
        _request: tonic::Request<HealthCheckRequest>,
    ) -> Result<tonic::Response<Self::WatchStream>, tonic::Status> {
        Err(tonic::Status::unimplemented("not used"))
    }
}

/// Mounts [`SlowHealth`] as `test.v1.Slow` so it does not clash with the real health service.
#[derive(Clone)]
struct Slow(HealthServer<SlowHealth>);

impl NamedService for Slow {
    const NAME: &'static str = "test.v1.Slow";
}

impl tower::Service<http::Request<Body>> for Slow {
    type Response = http::Response<Body>;
    type Error = Infallible;
    type Future = <HealthServer<SlowHealth> as tower::Service<http::Request<Body>>>::Future;

    fn poll_ready(&mut self, cx: &mut TaskContext<'_>) -> Poll<Result<(), Self::Error>> {
        tower::Service::<http::Request<Body>>::poll_ready(&mut self.0, cx)
    }

    fn call(&mut self, mut request: http::Request<Body>) -> Self::Future {
        *request.uri_mut() = "/grpc.health.v1.Health/Check".parse().expect("uri");
        self.0.call(request)
    }
}

struct Running {
    grpc: SocketAddr,
    stop: oneshot::Sender<()>,
    task: tokio::task::JoinHandle<anyhow::Result<()>>,
}

async fn start(delay: Duration, grace: Duration) -> Running {
    ratemesh_runtime::telemetry::init_for_tests();
    let mut settings = Settings::default();
    let any: SocketAddr = "127.0.0.1:0".parse().expect("addr");
    settings.server.grpc_addr = any;
    settings.server.http_addr = any;
    settings.server.admin_addr = any;
    settings.server.shutdown_grace_ms = grace.as_millis() as u64;
    settings.server.request_timeout_ms = 3_000;
    settings.auth.keys.push(ApiKeySettings {
        name: "tester".into(),
        role: Role::Network,
        sha256: auth::hash_key(KEY),
        partner_id: None,
    });
    let ctx = Context::new(
        settings,
        Bus::memory(BusOptions::embedded()).expect("embedded bus"),
    );
    let readiness = Readiness::new();
    readiness.set(true);
    let module = ServiceModule::new("slow", readiness)
        .grpc(Slow(HealthServer::new(SlowHealth { delay })), SLOW_ACCESS);
    let app = App::bind(&ctx, vec![module]).await.expect("bind");
    let grpc = app.grpc_addr();
    let (stop, stopped) = oneshot::channel::<()>();
    let task = tokio::spawn(app.run(async move {
        let _ = stopped.await;
    }));
    Running { grpc, stop, task }
}

async fn slow_call(grpc: SocketAddr) -> Result<HealthCheckResponse, tonic::Status> {
    let channel = tonic::transport::Endpoint::from_shared(format!("http://{grpc}"))
        .expect("endpoint")
        .connect()
        .await
        .expect("connect");
    let mut client = tonic::client::Grpc::new(channel);
    client.ready().await.expect("ready");
    let mut request = tonic::Request::new(HealthCheckRequest::default());
    request.metadata_mut().insert(
        "authorization",
        format!("Bearer {KEY}").parse().expect("ascii"),
    );
    client
        .unary(
            request,
            PathAndQuery::from_static("/test.v1.Slow/Check"),
            tonic_prost::ProstCodec::default(),
        )
        .await
        .map(tonic::Response::into_inner)
}

#[tokio::test]
async fn an_in_flight_call_finishes_during_graceful_shutdown() {
    let running = start(Duration::from_millis(600), Duration::from_secs(10)).await;
    let call = tokio::spawn(slow_call(running.grpc));
    // Let the call reach the handler before the signal.
    tokio::time::sleep(Duration::from_millis(200)).await;
    running.stop.send(()).expect("app still running");

    let answer = call
        .await
        .expect("call task")
        .expect("in-flight call answered");
    assert_eq!(answer.status, ServingStatus::Serving as i32);
    running
        .task
        .await
        .expect("app task")
        .expect("clean shutdown");
    // Stopped: nothing accepts on the port any more.
    assert!(tokio::net::TcpStream::connect(running.grpc).await.is_err());
}

#[tokio::test]
async fn a_call_longer_than_the_deadline_does_not_hold_up_exit() {
    let running = start(Duration::from_secs(60), Duration::from_millis(300)).await;
    let call = tokio::spawn(slow_call(running.grpc));
    tokio::time::sleep(Duration::from_millis(200)).await;
    running.stop.send(()).expect("app still running");
    // The 60 s call is abandoned once the 300 ms grace is over; the generous bound only
    // guards against hanging forever.
    tokio::time::timeout(Duration::from_secs(10), running.task)
        .await
        .expect("app exited after the grace period")
        .expect("app task")
        .expect("shutdown itself is not an error");
    assert!(call.await.expect("call task").is_err());
}

#[tokio::test]
async fn shed_calls_get_resource_exhausted_with_retry_info() {
    use tonic_types::StatusExt;
    ratemesh_runtime::telemetry::init_for_tests();
    let mut settings = Settings::default();
    let any: SocketAddr = "127.0.0.1:0".parse().expect("addr");
    settings.server.grpc_addr = any;
    settings.server.admin_addr = any;
    settings.server.max_concurrent_requests = 1;
    settings.server.shed_retry_after_ms = 750;
    settings.auth.keys.push(ApiKeySettings {
        name: "tester".into(),
        role: Role::Network,
        sha256: auth::hash_key(KEY),
        partner_id: None,
    });
    let ctx = Context::new(
        settings,
        Bus::memory(BusOptions::embedded()).expect("embedded bus"),
    );
    let readiness = Readiness::new();
    readiness.set(true);
    let module = ServiceModule::new("slow", readiness).grpc(
        Slow(HealthServer::new(SlowHealth {
            delay: Duration::from_millis(800),
        })),
        SLOW_ACCESS,
    );
    let app = App::bind(&ctx, vec![module]).await.expect("bind");
    let grpc = app.grpc_addr();
    let (stop, stopped) = oneshot::channel::<()>();
    let task = tokio::spawn(app.run(async move {
        let _ = stopped.await;
    }));

    let first = tokio::spawn(slow_call(grpc));
    tokio::time::sleep(Duration::from_millis(200)).await;
    let shed = slow_call(grpc).await.expect_err("second call is shed");
    assert_eq!(shed.code(), tonic::Code::ResourceExhausted, "{shed:?}");
    let retry = shed.get_details_retry_info().expect("retry info");
    assert_eq!(retry.retry_delay, Some(Duration::from_millis(750)));
    first.await.expect("task").expect("first call served");

    stop.send(()).expect("running");
    task.await.expect("app task").expect("clean shutdown");
}
