//! The gRPC serve loop through real sockets: where streams are answered (a refusal on its
//! connection task, an admitted call in a task of its own), the connection's extensions on
//! each call, the request timeout, and the drain on shutdown.

mod support;

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use http::{Request, Response};
use ratemesh_runtime::Role;
use ratemesh_runtime::auth::{AccessTable, MethodRoles};
use ratemesh_runtime::grpc::serve::{Server, StreamCounts, off_the_connection_thread};
use ratemesh_runtime::grpc::{Admission, RpcLayer};
use tokio::sync::{mpsc, oneshot};
use tonic::body::Body;
use tonic::transport::Channel;
use tonic::transport::server::TcpConnectInfo;
use tower::{Service, ServiceExt};

const SERVICE: &str = "test.v1.Serve";
const ACCESS: MethodRoles = &[("Call", &[Role::Network])];
const KEY: &str = "serve-test-key";

/// A running serve loop; `stop` starts its drain, `done` resolves once it returned.
struct Running {
    addr: SocketAddr,
    streams: Arc<StreamCounts>,
    stop: oneshot::Sender<()>,
    done: tokio::task::JoinHandle<()>,
}

async fn start<S>(server: Server, service: S) -> Running
where
    S: Service<Request<Body>, Response = Response<Body>, Error = Infallible>
        + Clone
        + Send
        + 'static,
    S::Future: Send + 'static,
{
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let addr = listener.local_addr().expect("addr");
    let streams = server.stream_counts();
    let (stop, stopped) = oneshot::channel::<()>();
    let incoming = tonic::transport::server::TcpIncoming::from(listener);
    let done = tokio::spawn(server.serve(incoming, service, async move {
        let _ = stopped.await;
    }));
    Running {
        addr,
        streams,
        stop,
        done,
    }
}

async fn channel(addr: SocketAddr) -> Channel {
    tonic::transport::Endpoint::from_shared(format!("http://{addr}"))
        .expect("endpoint")
        .connect()
        .await
        .expect("connect")
}

/// A bodiless call to `SERVICE/Call` with `headers`, answered with its grpc-status.
async fn call(channel: &Channel, headers: &[(&'static str, &str)]) -> (i32, Response<Body>) {
    let mut request = Request::builder()
        .method("POST")
        .uri(format!("/{SERVICE}/Call"))
        .header("content-type", "application/grpc");
    for (name, value) in headers {
        request = request.header(*name, *value);
    }
    let request = request.body(Body::empty()).expect("request");
    let response = channel
        .clone()
        .ready()
        .await
        .expect("ready")
        .call(request)
        .await
        .expect("answered");
    let status = response
        .headers()
        .get("grpc-status")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse().ok())
        .unwrap_or(0);
    (status, response)
}

/// An OK answer that carries the caller's address as the server saw it.
fn ok_with_remote(request: &Request<Body>) -> Response<Body> {
    let remote = request
        .extensions()
        .get::<TcpConnectInfo>()
        .and_then(|info| info.remote_addr())
        .map(|addr| addr.to_string())
        .unwrap_or_default();
    Response::builder()
        .header("content-type", "application/grpc")
        .header("grpc-status", "0")
        .header("x-remote", remote)
        .body(Body::empty())
        .expect("response")
}

fn rpc_layer(max_concurrent: usize) -> RpcLayer {
    let keys = support::network_keys(KEY);
    RpcLayer::new(
        keys,
        AccessTable::new([(SERVICE, ACCESS)]),
        Admission {
            max_concurrent,
            retry_after: Duration::from_millis(100),
            adaptive: false,
            queue_delay_target: Duration::from_millis(50),
            min_concurrency: 1,
            deadlines: false,
        },
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn refused_calls_are_answered_on_the_connection_task_and_admitted_ones_get_a_task() {
    let handled = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let counter = handled.clone();
    let handler = tower::service_fn(move |request: Request<Body>| {
        let counter = counter.clone();
        async move {
            counter.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
            Ok::<_, Infallible>(ok_with_remote(&request))
        }
    });
    let bearer = format!("Bearer {KEY}");
    let auth = [("authorization", bearer.as_str())];

    // No room at all: every call is refused by the layer, at once.
    let refusing = tower::ServiceBuilder::new()
        .layer(rpc_layer(0))
        .service(handler.clone());
    let server = start(Server::new(), refusing).await;
    let channel = channel(server.addr).await;
    for _ in 0..20 {
        let (status, _) = call(&channel, &auth).await;
        assert_eq!(status, tonic::Code::ResourceExhausted as i32);
    }
    assert_eq!(server.streams.answered_inline(), 20);
    assert_eq!(server.streams.spawned(), 0, "a refusal spawned a task");
    assert_eq!(handled.load(std::sync::atomic::Ordering::SeqCst), 0);

    // Room: every call is admitted and its handler runs in a task of its own, even one
    // whose handler would be ready at once.
    let admitting = tower::ServiceBuilder::new()
        .layer(rpc_layer(64))
        .service(handler);
    let server = start(Server::new(), admitting).await;
    let channel = self::channel(server.addr).await;
    for _ in 0..5 {
        let (status, _) = call(&channel, &auth).await;
        assert_eq!(status, 0);
    }
    assert_eq!(server.streams.spawned(), 5);
    assert_eq!(server.streams.answered_inline(), 0);
    assert_eq!(handled.load(std::sync::atomic::Ordering::SeqCst), 5);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_refusal_does_not_wait_behind_busy_workers() {
    // The server runs on one worker; a task holds it in turns, as a CPU surge would. Every
    // refusal is answered by the connection task, so none waits for a task of its own,
    // and all are answered while the worker is still being held.
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .expect("server runtime");
    let refusing = tower::ServiceBuilder::new()
        .layer(rpc_layer(0))
        .service(tower::service_fn(|request: Request<Body>| async move {
            Ok::<_, Infallible>(ok_with_remote(&request))
        }));
    let server = runtime
        .spawn(start(Server::new(), refusing))
        .await
        .expect("server started");
    let (busy_tx, mut busy) = mpsc::unbounded_channel::<()>();
    let holding = Arc::new(std::sync::atomic::AtomicBool::new(true));
    let hold = holding.clone();
    runtime.spawn(async move {
        while hold.load(std::sync::atomic::Ordering::SeqCst) {
            std::thread::sleep(Duration::from_millis(2));
            let _ = busy_tx.send(());
            tokio::task::yield_now().await;
        }
    });
    busy.recv().await.expect("the worker is held");

    let channel = channel(server.addr).await;
    let bearer = format!("Bearer {KEY}");
    let calls = (0..50).map(|_| {
        let channel = channel.clone();
        let bearer = bearer.clone();
        tokio::spawn(async move { call(&channel, &[("authorization", &bearer)]).await.0 })
    });
    for status in futures::future::join_all(calls).await {
        assert_eq!(status.expect("call"), tonic::Code::ResourceExhausted as i32);
    }
    assert_eq!(server.streams.answered_inline(), 50);
    assert_eq!(server.streams.spawned(), 0);
    holding.store(false, std::sync::atomic::Ordering::SeqCst);
    runtime.shutdown_background();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn calls_carry_the_connection_info() {
    let server = start(
        Server::new(),
        tower::service_fn(|request: Request<Body>| async move {
            Ok::<_, Infallible>(ok_with_remote(&request))
        }),
    )
    .await;
    let channel = channel(server.addr).await;
    let (status, response) = call(&channel, &[]).await;
    assert_eq!(status, 0);
    let remote: SocketAddr = response
        .headers()
        .get("x-remote")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse().ok())
        .expect("the handler saw the caller's address");
    assert!(remote.ip().is_loopback(), "{remote}");
    assert_ne!(remote.port(), server.addr.port());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_call_past_the_request_timeout_is_cancelled() {
    let server = start(
        Server::new().request_timeout(Duration::from_millis(50)),
        tower::service_fn(|_request: Request<Body>| async move {
            std::future::pending::<()>().await;
            Ok::<_, Infallible>(Response::new(Body::empty()))
        }),
    )
    .await;
    let channel = channel(server.addr).await;
    let (status, response) = call(&channel, &[]).await;
    assert_eq!(status, tonic::Code::Cancelled as i32);
    let status = tonic::Status::from_header_map(response.headers()).expect("status");
    assert_eq!(status.message(), "Timeout expired");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shutdown_stops_accepting_and_drains_the_call_in_flight() {
    let (entered_tx, mut entered) = mpsc::unbounded_channel::<()>();
    let (release_tx, release) = tokio::sync::watch::channel(false);
    let server = start(
        Server::new(),
        tower::service_fn(move |request: Request<Body>| {
            let entered = entered_tx.clone();
            let mut release = release.clone();
            async move {
                let _ = entered.send(());
                let _ = release.wait_for(|go| *go).await;
                Ok::<_, Infallible>(ok_with_remote(&request))
            }
        }),
    )
    .await;
    let channel = channel(server.addr).await;
    let in_flight = tokio::spawn({
        let channel = channel.clone();
        async move { call(&channel, &[]).await.0 }
    });
    entered.recv().await.expect("the call reached its handler");

    server.stop.send(()).expect("server running");
    // The listener closes at once: a new connection is refused...
    let mut refused = false;
    for _ in 0..100 {
        if tokio::net::TcpStream::connect(server.addr).await.is_err() {
            refused = true;
            break;
        }
        tokio::task::yield_now().await;
    }
    assert!(refused, "still accepting after the stop");
    // ... while the serve loop waits for the call in flight, which is then answered.
    assert!(!server.done.is_finished());
    release_tx.send(true).expect("handler waiting");
    assert_eq!(in_flight.await.expect("call"), 0);
    drop(channel);
    server.done.await.expect("serve loop");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_a_handler_runtime_refusals_need_none_of_its_workers() {
    // Admitted calls run on a runtime of one worker; connections on the test's runtime.
    let handlers = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .thread_name("test-handler")
        .enable_all()
        .build()
        .expect("handler runtime");
    let ran_on = Arc::new(std::sync::Mutex::new(Vec::new()));
    let seen = ran_on.clone();
    let service = tower::ServiceBuilder::new()
        .layer(rpc_layer(1))
        .service(tower::service_fn(move |request: Request<Body>| {
            let thread = std::thread::current().name().map(str::to_owned);
            seen.lock().expect("lock").push(thread);
            async move { Ok::<_, Infallible>(ok_with_remote(&request)) }
        }));
    let server = start(Server::new().handlers(handlers.handle().clone()), service).await;
    let channel = channel(server.addr).await;
    let bearer = format!("Bearer {KEY}");
    let auth = [("authorization", bearer.as_str())];
    assert_eq!(call(&channel, &auth).await.0, 0);
    assert_eq!(
        *ran_on.lock().expect("lock"),
        vec![Some("test-handler".to_owned())]
    );

    // The handler runtime's one worker is held by a call that waits for the test, and
    // the method's one place is taken: further calls are refused, and answered while the
    // worker is still held.
    let release = hold_the_worker(&handlers).await;
    let blocked = tokio::spawn({
        let channel = channel.clone();
        let bearer = bearer.clone();
        async move { call(&channel, &[("authorization", &bearer)]).await.0 }
    });
    while server.streams.spawned() < 2 {
        tokio::task::yield_now().await;
    }
    // A guard against a hang, not a latency bound.
    let refusals = tokio::time::timeout(Duration::from_secs(30), async {
        let mut statuses = Vec::new();
        while statuses.len() < 10 {
            let status = call(&channel, &auth).await.0;
            if status == tonic::Code::ResourceExhausted as i32 {
                statuses.push(status);
            } else {
                panic!("a call was answered {status} while the only place was taken");
            }
        }
        statuses
    });
    let refused = refusals.await;
    release.send(()).expect("worker waiting");
    let refused = refused.expect("refusals answered while the handler runtime was held");
    assert_eq!(refused.len(), 10);
    assert_eq!(blocked.await.expect("blocked call"), 0);
    assert!(server.streams.answered_inline() >= 10);
    handlers.shutdown_background();
}

/// Holds the one worker of `handlers` until the returned sender sends.
async fn hold_the_worker(handlers: &tokio::runtime::Runtime) -> std::sync::mpsc::Sender<()> {
    let (release, held) = std::sync::mpsc::channel::<()>();
    let (holding_tx, holding) = oneshot::channel::<()>();
    handlers.spawn(async move {
        let _ = holding_tx.send(());
        let _ = held.recv();
    });
    holding.await.expect("the worker is held");
    release
}

/// The layer of `rpc_layer(64)`, with `Call` declared a point read, or only a read.
fn read_layer(point: bool) -> RpcLayer {
    admitting_reads(
        point,
        Admission {
            max_concurrent: 64,
            retry_after: Duration::from_millis(100),
            adaptive: false,
            queue_delay_target: Duration::from_millis(50),
            min_concurrency: 1,
            deadlines: false,
        },
    )
}

/// A layer admitting under `admission`, with `Call` declared a point read, or only a read.
fn admitting_reads(point: bool, admission: Admission) -> RpcLayer {
    const CALL: &[(&str, &str)] = &[(SERVICE, "Call")];
    RpcLayer::with_reads(
        support::network_keys(KEY),
        AccessTable::new([(SERVICE, ACCESS)]),
        admission,
        CALL,
        if point { CALL } else { &[] },
    )
}

/// `Call` behind the layer, as a read.
type ReadService = tower::util::BoxCloneSyncService<Request<Body>, Response<Body>, Infallible>;
/// The names of the threads a handler ran on, in order.
type ThreadNames = Arc<std::sync::Mutex<Vec<Option<String>>>>;

/// A read service (a point read, or only a read) whose handler takes `work` (on whichever
/// thread runs it) and notes that thread's name.
fn read_service(point: bool, work: Duration) -> (ReadService, ThreadNames) {
    read_service_behind(read_layer(point), work)
}

/// [`read_service`] behind `layer`.
fn read_service_behind(layer: RpcLayer, work: Duration) -> (ReadService, ThreadNames) {
    let ran_on = Arc::new(std::sync::Mutex::new(Vec::new()));
    let seen = ran_on.clone();
    let service = tower::ServiceBuilder::new()
        .layer(layer)
        .service(tower::service_fn(move |request: Request<Body>| {
            let thread = std::thread::current().name().map(str::to_owned);
            seen.lock().expect("lock").push(thread);
            std::thread::sleep(work);
            async move { Ok::<_, Infallible>(ok_with_remote(&request)) }
        }));
    (tower::util::BoxCloneSyncService::new(service), ran_on)
}

/// `service` served with reads allowed `share` of a connection thread's time and the
/// other calls on `handlers`, and a channel to it.
async fn serve_reads(
    handlers: &tokio::runtime::Runtime,
    share: f64,
    service: ReadService,
) -> (Running, Channel) {
    let server = Server::new()
        .handlers(handlers.handle().clone())
        .inline_reads(share);
    let running = start(server, service).await;
    let channel = channel(running.addr).await;
    (running, channel)
}

fn handler_runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .thread_name("test-handler")
        .enable_all()
        .build()
        .expect("handler runtime")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn point_reads_are_answered_on_their_connection_thread() {
    let handlers = handler_runtime();
    let bearer = format!("Bearer {KEY}");
    let auth = [("authorization", bearer.as_str())];

    // A read of no measurable work, with reads allowed all of the connection thread's
    // time (so however slow this build, the budget never runs out): every call is
    // answered where it was read, and no task is spawned.
    let (service, ran_on) = read_service(true, Duration::ZERO);
    let (server, channel) = serve_reads(&handlers, 1.0, service.clone()).await;
    for _ in 0..20 {
        assert_eq!(call(&channel, &auth).await.0, 0);
    }
    assert_eq!(server.streams.answered_inline(), 20);
    assert_eq!(server.streams.spawned(), 0);
    let threads = ran_on.lock().expect("lock").clone();
    assert_eq!(threads.len(), 20);
    assert!(
        threads.iter().all(|t| t.as_deref() != Some("test-handler")),
        "{threads:?}"
    );

    // The same service with a share of 0: every read goes to the handlers.
    let (server, channel) = serve_reads(&handlers, 0.0, service).await;
    for _ in 0..5 {
        assert_eq!(call(&channel, &auth).await.0, 0);
    }
    assert_eq!(server.streams.spawned(), 5);
    assert_eq!(server.streams.answered_inline(), 0);
    assert!(
        ran_on.lock().expect("lock")[20..]
            .iter()
            .all(|t| t.as_deref() == Some("test-handler"))
    );
    handlers.shutdown_background();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_point_read_about_to_wait_moves_off_its_connection_thread() {
    let handlers = handler_runtime();
    let bearer = format!("Bearer {KEY}");
    let auth = [("authorization", bearer.as_str())];

    // Every other call finds what it reads held elsewhere and steps off the connection
    // thread before waiting for it; the others are answered where they were read.
    let ran_on: ThreadNames = Arc::default();
    let seen = ran_on.clone();
    let calls = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let service = tower::ServiceBuilder::new()
        .layer(read_layer(true))
        .service(tower::service_fn(move |request: Request<Body>| {
            let seen = seen.clone();
            let busy = calls.fetch_add(1, std::sync::atomic::Ordering::Relaxed) % 2 == 1;
            async move {
                if busy {
                    off_the_connection_thread().await;
                }
                let thread = std::thread::current().name().map(str::to_owned);
                seen.lock().expect("lock").push(thread);
                Ok::<_, Infallible>(ok_with_remote(&request))
            }
        }));
    let (server, channel) = serve_reads(
        &handlers,
        1.0,
        tower::util::BoxCloneSyncService::new(service),
    )
    .await;
    for _ in 0..20 {
        assert_eq!(call(&channel, &auth).await.0, 0);
    }
    assert_eq!(server.streams.answered_inline(), 10);
    assert_eq!(server.streams.spawned(), 10);
    let threads = ran_on.lock().expect("lock").clone();
    for (i, thread) in threads.iter().enumerate() {
        assert_eq!(
            thread.as_deref() == Some("test-handler"),
            i % 2 == 1,
            "call {i}: {threads:?}"
        );
    }

    // Outside a connection thread's first poll it waits for nothing.
    tokio::time::timeout(Duration::from_secs(1), off_the_connection_thread())
        .await
        .expect("ready at once");
    handlers.shutdown_background();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reads_go_to_the_handlers_once_they_used_their_share_or_are_not_point_reads() {
    let handlers = handler_runtime();
    let bearer = format!("Bearer {KEY}");
    let auth = [("authorization", bearer.as_str())];

    // Reads of 100 µs with a share of 0.1 %: a connection thread's saved-up time (half a
    // millisecond) pays for a few (the connection's task may move between the test
    // runtime's two threads, each with its own), and at a microsecond per millisecond it
    // earns back next to nothing while twenty calls are made; the rest go to the handlers.
    let (service, _) = read_service(true, Duration::from_micros(100));
    let (server, channel) = serve_reads(&handlers, 0.001, service).await;
    for _ in 0..20 {
        assert_eq!(call(&channel, &auth).await.0, 0);
    }
    let inline = server.streams.answered_inline();
    assert!((1..=11).contains(&inline), "{inline} answered inline");
    assert_eq!(server.streams.spawned(), 20 - inline);

    // A read that is not a point read goes to the handlers, even with the whole thread to
    // spare.
    let (service, ran_on) = read_service(false, Duration::ZERO);
    let (server, channel) = serve_reads(&handlers, 1.0, service).await;
    for _ in 0..3 {
        assert_eq!(call(&channel, &auth).await.0, 0);
    }
    assert_eq!(server.streams.answered_inline(), 0);
    assert_eq!(server.streams.spawned(), 3);
    assert!(
        ran_on
            .lock()
            .expect("lock")
            .iter()
            .all(|t| t.as_deref() == Some("test-handler"))
    );
    handlers.shutdown_background();
}

/// `len` bytes of text that differ with `seed`.
fn answer_text(len: usize, seed: usize) -> String {
    (0..len)
        .map(|i| char::from(b'a' + ((i * 7 + seed * 13) % 26) as u8))
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn many_large_answers_at_once_arrive_whole() {
    // Answers of several HTTP/2 frames each, larger than what a connection gathers before
    // it sends, many in flight on one connection: each must arrive whole and its own.
    const LEN: usize = 150 * 1024;
    let server = start(
        Server::new(),
        tower::service_fn(|request: Request<Body>| async move {
            let seed: usize = request
                .headers()
                .get("x-seed")
                .and_then(|v| v.to_str().ok())
                .and_then(|v| v.parse().ok())
                .unwrap_or_default();
            let response = Response::builder()
                .header("content-type", "application/grpc")
                .header("grpc-status", "0")
                .body(Body::new(answer_text(LEN, seed)))
                .expect("response");
            Ok::<_, Infallible>(response)
        }),
    )
    .await;
    let channel = channel(server.addr).await;
    let calls = (0..24).map(|seed| {
        let channel = channel.clone();
        tokio::spawn(async move {
            let seed_text = seed.to_string();
            let (status, response) = call(&channel, &[("x-seed", &seed_text)]).await;
            let body = http_body_util::BodyExt::collect(response.into_body())
                .await
                .expect("body")
                .to_bytes();
            (seed, status, body)
        })
    });
    for call in calls {
        let (seed, status, body) = call.await.expect("call");
        assert_eq!(status, 0);
        assert_eq!(body.len(), LEN, "answer {seed} cut short");
        assert!(
            body == answer_text(LEN, seed).as_bytes(),
            "answer {seed} mixed up"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_point_read_answered_on_its_connection_thread_is_not_refused_for_busy_handlers() {
    let handlers = handler_runtime();
    let bearer = format!("Bearer {KEY}");
    let auth = [("authorization", bearer.as_str())];
    let with_deadline = [("authorization", bearer.as_str()), ("grpc-timeout", "50m")];
    let admission = Admission {
        max_concurrent: 64,
        retry_after: Duration::from_millis(100),
        adaptive: true,
        queue_delay_target: Duration::from_millis(5),
        min_concurrency: 1,
        deadlines: true,
    };
    // The same read, declared a point read (answered where it is read) on one server and
    // not on the other (answered by the handlers); each layer's first call starts its
    // handlers' delay probe.
    let (point, _) = read_service_behind(admitting_reads(true, admission), Duration::ZERO);
    let (point_server, point_channel) = serve_reads(&handlers, 1.0, point).await;
    let (plain, _) = read_service_behind(admitting_reads(false, admission), Duration::ZERO);
    let (plain_server, plain_channel) = serve_reads(&handlers, 1.0, plain).await;
    assert_eq!(call(&point_channel, &auth).await.0, 0);
    assert_eq!(call(&plain_channel, &auth).await.0, 0);

    // The handlers' one worker is held far longer than a 50 ms deadline.
    let release = hold_the_worker(&handlers).await;
    tokio::time::sleep(Duration::from_millis(200)).await;

    // A call the handlers would answer cannot meet its deadline: refused at once. A point
    // read never waits for them, and the connections' runtime is not late: answered.
    let plain_status = call(&plain_channel, &with_deadline).await.0;
    let point_statuses = [
        call(&point_channel, &with_deadline).await.0,
        call(&point_channel, &with_deadline).await.0,
        call(&point_channel, &with_deadline).await.0,
    ];
    release.send(()).expect("worker waiting");
    assert_eq!(plain_status, tonic::Code::ResourceExhausted as i32);
    assert_eq!(point_statuses, [0, 0, 0]);
    assert_eq!(point_server.streams.answered_inline(), 4);
    assert_eq!(plain_server.streams.answered_inline(), 1, "the refusal");
    handlers.shutdown_background();
}
