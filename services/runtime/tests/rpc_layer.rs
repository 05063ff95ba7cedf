//! The gRPC layer through real sockets: the serve loop with the runtime's layer around a
//! small service, on its own two-worker runtime (so the test's client is not slowed by
//! what the server goes through). Authentication and the answer to undecodable requests,
//! then admission under overload.
//!
//! Saturation is made with tasks that hold the server's workers in turns
//! (`std::thread::sleep`, then yield): every ready task — hyper's, the handler's, the
//! probe's — waits its turn, as under a CPU surge, without burning the CPU the client
//! needs. Bounds on wall-clock time are loose on purpose; what is asserted is the shape:
//! refused at once versus served after everything queued ahead of it.

mod support;

use std::convert::Infallible;
use std::net::SocketAddr;
use std::task::{Context as TaskContext, Poll};
use std::time::{Duration, Instant};

use http::uri::PathAndQuery;
use ratemesh_runtime::auth::{AccessTable, MethodRoles};
use ratemesh_runtime::grpc::{Admission, RpcLayer, serve};
use ratemesh_runtime::{Role, metrics};
use tokio::sync::oneshot;
use tonic::body::Body;
use tonic::server::NamedService;
use tonic::transport::Channel;
use tonic_health::pb::health_check_response::ServingStatus;
use tonic_health::pb::health_server::{Health, HealthServer};
use tonic_health::pb::{HealthCheckRequest, HealthCheckResponse};
use tonic_types::StatusExt;

const KEY: &str = "admission-test-key";
const ACCESS: MethodRoles = &[("Check", &[Role::Network])];
const RETRY_AFTER: Duration = Duration::from_millis(150);

/// The handler: holds its worker for `block` (CPU work), then awaits `wait` (I/O).
#[derive(Clone)]
struct Work {
    block: Duration,
    wait: Duration,
}

#[tonic::async_trait]
impl Health for Work {
    async fn check(
        &self,
        _request: tonic::Request<HealthCheckRequest>,
    ) -> Result<tonic::Response<HealthCheckResponse>, tonic::Status> {
        if !self.block.is_zero() {
            std::thread::sleep(self.block);
        }
        if !self.wait.is_zero() {
            tokio::time::sleep(self.wait).await;
        }
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

/// [`Work`] mounted as `test.v1.<name>`, one name per test so their metrics stay apart.
#[derive(Clone)]
struct Mounted<const TEST: u8>(HealthServer<Work>);

const LAYER: u8 = 0;
const DEADLINE: u8 = 1;
const SATURATION: u8 = 2;

impl<const TEST: u8> NamedService for Mounted<TEST> {
    const NAME: &'static str = match TEST {
        LAYER => "test.v1.Layer",
        DEADLINE => "test.v1.Deadline",
        _ => "test.v1.Saturation",
    };
}

impl<const TEST: u8> tower::Service<http::Request<Body>> for Mounted<TEST> {
    type Response = http::Response<Body>;
    type Error = Infallible;
    type Future = <HealthServer<Work> as tower::Service<http::Request<Body>>>::Future;

    fn poll_ready(&mut self, cx: &mut TaskContext<'_>) -> Poll<Result<(), Self::Error>> {
        tower::Service::<http::Request<Body>>::poll_ready(&mut self.0, cx)
    }

    fn call(&mut self, mut request: http::Request<Body>) -> Self::Future {
        *request.uri_mut() = "/grpc.health.v1.Health/Check".parse().expect("uri");
        self.0.call(request)
    }
}

/// A server on its own runtime of two workers, stopped on drop.
struct Server {
    addr: SocketAddr,
    runtime: tokio::runtime::Handle,
    path: PathAndQuery,
    label: String,
    _stop: oneshot::Sender<()>,
}

impl Server {
    fn start<const TEST: u8>(admission: Admission, work: Work) -> Self {
        let (ready_tx, ready) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            let runtime = tokio::runtime::Builder::new_multi_thread()
                .worker_threads(2)
                .enable_all()
                .build()
                .expect("server runtime");
            runtime.block_on(async move {
                let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
                    .await
                    .expect("bind");
                let (stop, stopped) = oneshot::channel::<()>();
                let addr = listener.local_addr().expect("addr");
                ready_tx
                    .send((addr, tokio::runtime::Handle::current(), stop))
                    .expect("test waiting");
                let keys = support::network_keys(KEY);
                let access = AccessTable::new([(Mounted::<TEST>::NAME, ACCESS)]);
                let (_reporter, health) = tonic_health::server::health_reporter();
                let mut routes = tonic::service::RoutesBuilder::default();
                routes.add_service(health);
                routes.add_service(Mounted::<TEST>(HealthServer::new(work)));
                let service = tower::ServiceBuilder::new()
                    .layer(RpcLayer::new(keys, access, admission))
                    .service(routes.routes());
                serve::Server::new()
                    .request_timeout(Duration::from_secs(30))
                    .serve(
                        tonic::transport::server::TcpIncoming::from(listener),
                        service,
                        async move {
                            let _ = stopped.await;
                        },
                    )
                    .await;
            });
        });
        let (addr, runtime, stop) = ready.recv().expect("server started");
        let name = Mounted::<TEST>::NAME;
        Self {
            addr,
            runtime,
            path: format!("/{name}/Check").try_into().expect("path"),
            label: format!("{name}/Check"),
            _stop: stop,
        }
    }

    /// Holds the server's workers with `tasks` tasks, each `slice` at a time, for `period`.
    fn saturate(&self, tasks: usize, slice: Duration, period: Duration) {
        let until = Instant::now() + period;
        for _ in 0..tasks {
            self.runtime.spawn(async move {
                while Instant::now() < until {
                    std::thread::sleep(slice);
                    tokio::task::yield_now().await;
                }
            });
        }
    }

    async fn client(&self) -> Client {
        let channel = tonic::transport::Endpoint::from_shared(format!("http://{}", self.addr))
            .expect("endpoint")
            .connect()
            .await
            .expect("connect");
        Client {
            grpc: tonic::client::Grpc::new(channel),
            path: self.path.clone(),
        }
    }

    /// A metric of this server's method, as `/metrics` shows it.
    fn metric(&self, name: &str, extra_label: &str) -> Option<f64> {
        let series = format!("{name}{{method=\"{}\"{extra_label}}} ", self.label);
        metrics::prometheus()
            .render()
            .lines()
            .find_map(|line| line.strip_prefix(&series)?.trim().parse().ok())
    }
}

#[derive(Clone)]
struct Client {
    grpc: tonic::client::Grpc<Channel>,
    path: PathAndQuery,
}

impl Client {
    /// A call of `message` to `path` (answered with a health response), with `key` if any.
    async fn raw<M>(&self, path: &'static str, key: Option<&str>, message: M) -> tonic::Code
    where
        M: prost::Message + Send + Sync + 'static,
    {
        let mut grpc = self.grpc.clone();
        let mut request = tonic::Request::new(message);
        if let Some(key) = key {
            request.metadata_mut().insert(
                "authorization",
                format!("Bearer {key}").parse().expect("ascii"),
            );
        }
        grpc.ready().await.expect("ready");
        let answer: Result<tonic::Response<HealthCheckResponse>, tonic::Status> = grpc
            .unary(
                request,
                PathAndQuery::from_static(path),
                tonic_prost::ProstCodec::default(),
            )
            .await;
        match answer {
            Ok(_) => tonic::Code::Ok,
            Err(status) => status.code(),
        }
    }

    /// One call, with `timeout` sent as `grpc-timeout`; how long it took.
    async fn call(
        &self,
        timeout: Option<Duration>,
    ) -> (Result<HealthCheckResponse, tonic::Status>, Duration) {
        self.call_with(|request| {
            if let Some(timeout) = timeout {
                request.set_timeout(timeout);
            }
        })
        .await
    }

    /// One call, its request given to `prepare` first; how long it took.
    async fn call_with(
        &self,
        prepare: impl FnOnce(&mut tonic::Request<HealthCheckRequest>),
    ) -> (Result<HealthCheckResponse, tonic::Status>, Duration) {
        let mut grpc = self.grpc.clone();
        let started = Instant::now();
        let mut request = tonic::Request::new(HealthCheckRequest::default());
        request.metadata_mut().insert(
            "authorization",
            format!("Bearer {KEY}").parse().expect("ascii"),
        );
        prepare(&mut request);
        let result = async {
            grpc.ready()
                .await
                .map_err(|e| tonic::Status::unavailable(e.to_string()))?;
            grpc.unary(
                request,
                self.path.clone(),
                tonic_prost::ProstCodec::default(),
            )
            .await
        }
        .await;
        (result.map(tonic::Response::into_inner), started.elapsed())
    }

    /// `n` calls at once; each one's outcome and latency.
    async fn burst(&self, n: usize) -> Vec<(Result<HealthCheckResponse, tonic::Status>, Duration)> {
        let calls: Vec<_> = (0..n)
            .map(|_| {
                let client = self.clone();
                tokio::spawn(async move { client.call(None).await })
            })
            .collect();
        let mut outcomes = Vec::with_capacity(n);
        for call in calls {
            outcomes.push(call.await.expect("call task"));
        }
        outcomes
    }
}

fn admission() -> Admission {
    Admission {
        max_concurrent: 4096,
        retry_after: RETRY_AFTER,
        adaptive: true,
        queue_delay_target: Duration::from_millis(50),
        min_concurrency: 4,
        deadlines: true,
    }
}

/// Asserts `status` is a refusal to retry after [`RETRY_AFTER`].
fn assert_refused(status: &tonic::Status) {
    assert_eq!(status.code(), tonic::Code::ResourceExhausted, "{status:?}");
    let retry = status.get_details_retry_info().expect("retry info");
    assert_eq!(retry.retry_delay, Some(RETRY_AFTER), "{status:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn calls_are_authenticated_and_undecodable_requests_are_the_callers_fault() {
    let server = Server::start::<LAYER>(
        admission(),
        Work {
            block: Duration::ZERO,
            wait: Duration::ZERO,
        },
    );
    let client = server.client().await;
    let (served, _) = client.call(None).await;
    served.expect("a valid key, twice: hashed once, then remembered");
    let (served, _) = client.call(None).await;
    served.expect("served");
    let check = "/test.v1.Layer/Check";
    let nobody = HealthCheckRequest::default();
    assert_eq!(
        client.raw(check, None, nobody.clone()).await,
        tonic::Code::Unauthenticated
    );
    assert_eq!(
        client.raw(check, Some("not-a-key"), nobody.clone()).await,
        tonic::Code::Unauthenticated
    );
    // Health is open, keys or not.
    assert_eq!(
        client
            .raw("/grpc.health.v1.Health/Check", None, nobody.clone())
            .await,
        tonic::Code::Ok
    );
    // A path nobody serves: a key is needed to learn that.
    let nowhere = "/test.v1.Nowhere/Check";
    assert_eq!(
        client.raw(nowhere, None, nobody.clone()).await,
        tonic::Code::Unauthenticated
    );
    assert_eq!(
        client.raw(nowhere, Some(KEY), nobody.clone()).await,
        tonic::Code::Unimplemented
    );
    // A message of another type: field 1 is a varint where a string is expected.
    let garbage = HealthCheckResponse {
        status: ServingStatus::Serving as i32,
    };
    assert_eq!(
        client.raw(check, Some(KEY), garbage).await,
        tonic::Code::InvalidArgument
    );

    let counted =
        |code: &str| server.metric("ratemesh_grpc_requests_total", &format!(",code=\"{code}\""));
    assert_eq!(counted("Ok"), Some(2.0));
    assert_eq!(counted("Unauthenticated"), Some(2.0));
    assert_eq!(counted("InvalidArgument"), Some(1.0));
    assert_eq!(
        counted("Internal"),
        None,
        "no series for a code never answered"
    );
    assert_eq!(
        server.metric("ratemesh_grpc_undecodable_total", ""),
        Some(1.0)
    );
    let other = metrics::prometheus().render();
    assert!(
        other.contains("ratemesh_grpc_requests_total{method=\"other\",code=\"Unimplemented\"}"),
        "an unknown path is counted as `other`"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_call_that_cannot_meet_its_deadline_is_refused_at_once() {
    let server = Server::start::<DEADLINE>(
        admission(),
        Work {
            block: Duration::ZERO,
            wait: Duration::from_millis(400),
        },
    );
    let client = server.client().await;
    // Two calls teach the layer the method's service time (~400 ms).
    for _ in 0..2 {
        let (served, _) = client.call(None).await;
        served.expect("served");
    }

    let (refused, took) = client.call(Some(Duration::from_millis(150))).await;
    let refused = refused.expect_err("a 150 ms deadline cannot be met");
    // Refused by the server, not timed out: the answer came before the deadline.
    assert_refused(&refused);
    assert!(took < Duration::from_millis(150), "{took:?}");
    assert_eq!(
        server.metric("ratemesh_grpc_shed_total", ",reason=\"deadline\""),
        Some(1.0)
    );

    // A deadline the method can meet is served, and so is a call whose `grpc-timeout` is
    // malformed (no unit): the layer makes no decision on it.
    let (served, _) = client.call(Some(Duration::from_secs(10))).await;
    served.expect("a 10 s deadline is met");
    let (served, _) = client
        .call_with(|request| {
            request
                .metadata_mut()
                .insert("grpc-timeout", "100".parse().expect("ascii"));
        })
        .await;
    served.expect("a malformed timeout is no reason to refuse");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_saturated_server_refuses_at_once_and_serves_again_once_it_is_not() {
    // Each call holds a worker for 25 ms: 150 at once are 1.9 s of work for two workers.
    const BURST: usize = 150;
    const BLOCK: Duration = Duration::from_millis(25);
    let queued_work = BLOCK * BURST as u32 / 2;
    let server = Server::start::<SATURATION>(
        admission(),
        Work {
            block: BLOCK,
            wait: Duration::ZERO,
        },
    );
    let client = server.client().await;
    for _ in 0..5 {
        client.call(None).await.0.expect("served while idle");
    }

    // Eight tasks hold the two workers 25 ms at a time: a ready task waits ~100 ms, twice
    // the 50 ms target.
    let saturation = Duration::from_secs(3);
    let saturated_at = Instant::now();
    server.saturate(8, Duration::from_millis(25), saturation);
    tokio::time::sleep(Duration::from_millis(300)).await;

    let outcomes = client.burst(BURST).await;
    let mut refused = Vec::new();
    let mut served = 0;
    for (outcome, took) in &outcomes {
        match outcome {
            Ok(_) => served += 1,
            Err(status) => {
                assert_refused(status);
                refused.push(*took);
            }
        }
    }
    refused.sort();
    let slowest_refusal = refused.last().copied().unwrap_or_default();
    eprintln!(
        "saturated: {served} served, {} refused, refusals took {:?} (median) .. {slowest_refusal:?}; \
         all admitted would have queued for ≥ {queued_work:?}",
        refused.len(),
        refused.get(refused.len() / 2),
    );
    assert!(
        refused.len() >= BURST / 2,
        "most of the burst is refused, not queued: {served} served"
    );
    let median_refusal = refused[refused.len() / 2];
    assert!(
        median_refusal < queued_work / 2 && slowest_refusal < queued_work,
        "refusals come back well before the queued work could have been done: \
         {median_refusal:?} (median), {slowest_refusal:?} (slowest)"
    );
    assert!(
        server
            .metric("ratemesh_grpc_shed_total", ",reason=\"limit\"")
            .is_some_and(|n| n >= refused.len() as f64)
    );
    let saturated_limit = server
        .metric("ratemesh_grpc_concurrency_limit_requests", "")
        .expect("limit exported");
    assert!(saturated_limit < 64.0, "{saturated_limit}");

    // The saturation ends: calls are served again. Two callers that honour RetryInfo keep
    // the method busy; its limit grows back, so few of their calls are refused (a few may
    // be, while it grows, or when the machine running the test is busy itself).
    tokio::time::sleep((saturated_at + saturation + Duration::from_millis(500)) - Instant::now())
        .await;
    const CALLS: usize = 40;
    let callers: Vec<_> = (0..2)
        .map(|_| {
            let client = client.clone();
            tokio::spawn(async move {
                let mut refusals = 0;
                let mut served = 0;
                while served < CALLS {
                    match client.call(None).await.0 {
                        Ok(_) => served += 1,
                        Err(status) => {
                            assert_refused(&status);
                            refusals += 1;
                            tokio::time::sleep(RETRY_AFTER).await;
                        }
                    }
                }
                refusals
            })
        })
        .collect();
    let mut refusals = 0;
    for caller in callers {
        refusals += caller.await.expect("caller");
    }
    let recovered_limit = server
        .metric("ratemesh_grpc_concurrency_limit_requests", "")
        .expect("limit exported");
    eprintln!("recovery: {refusals} refusals, limit {saturated_limit} → {recovered_limit}");
    assert!(
        refusals * 4 <= 2 * CALLS,
        "{refusals} refusals for {} calls served",
        2 * CALLS
    );
    assert!(
        recovered_limit > saturated_limit,
        "{saturated_limit} → {recovered_limit}"
    );
}
