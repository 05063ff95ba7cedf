//! The gRPC serve loop: accept connections, serve HTTP/2 on each with hyper, drain on
//! shutdown — what tonic's `Server` does, with one difference that matters under
//! overload: where a call's stream is first run.
//!
//! hyper hands every new stream to an executor as a future. tonic's executor spawns it, so
//! a call the [`RpcLayer`](super::RpcLayer) refuses at once still waits for a worker in a
//! saturated run queue before its refusal is even written — exactly when that queue is
//! longest. [`InlineFirst`] instead polls each stream once, right away, on the connection
//! task that read its headers: a refusal is a ready future, so it is answered there and
//! nothing is spawned; any other stream is spawned as tonic would. An admitted call must
//! not do its work on the connection task (it would hold up every other stream of the
//! connection), so the layer's admitted path first yields ([`off_the_connection_task`])
//! when it finds itself there, and the work runs in the spawned task.
//!
//! Connections can run on a runtime of their own ([`Server::handlers`] names the one
//! admitted calls run on): then a connection task never waits behind handlers either, and
//! a refusal waits for nothing but its connection's thread.
//!
//! Per connection, calls get the extensions the layers read: the peer's
//! [`TcpConnectInfo`] and, under TLS, its [`PeerCertificates`]. The server's request
//! timeout applies as tonic's did: the shorter of it and the call's `grpc-timeout`, after
//! which the call is dropped and answered CANCELLED.

use std::cell::Cell;
use std::convert::Infallible;
use std::future::Future;
use std::pin::{Pin, pin};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::task::{Context, Poll, Waker};
use std::time::Duration;

use futures::{FutureExt, Stream, StreamExt};
use http::{Request, Response};
use hyper::body::Incoming;
use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::server::graceful::GracefulShutdown;
use tokio::net::TcpStream;
use tokio::runtime::Handle;
use tonic::body::Body;
use tonic::transport::server::TcpConnectInfo;
use tower::ServiceExt;
use tower::util::Oneshot;

use super::deadline::{GRPC_TIMEOUT, parse_grpc_timeout};
use crate::tls::PeerCertificates;

/// How the serve loop answers streams; see the module documentation.
#[derive(Debug, Clone)]
pub struct Server {
    /// The longest a call may run whatever its `grpc-timeout` (tonic's `Server::timeout`).
    request_timeout: Option<Duration>,
    /// HTTP/2 connection-level flow-control window; hyper's default when `None`.
    connection_window: Option<u32>,
    /// Where streams were answered, for tests and figures.
    streams: Arc<StreamCounts>,
    /// The runtime admitted calls run on; `None`: the one the serve loop runs on.
    handlers: Option<Handle>,
}

/// How many streams were answered on their connection task, and how many were spawned.
#[derive(Debug, Default)]
pub struct StreamCounts {
    inline: AtomicU64,
    spawned: AtomicU64,
}

impl StreamCounts {
    /// Streams finished by their first poll, on the connection task: nothing spawned.
    pub fn answered_inline(&self) -> u64 {
        self.inline.load(Ordering::Relaxed)
    }

    /// Streams that went on in a task of their own.
    pub fn spawned(&self) -> u64 {
        self.spawned.load(Ordering::Relaxed)
    }
}

impl Default for Server {
    fn default() -> Self {
        Self::new()
    }
}

impl Server {
    /// A server with hyper's HTTP/2 defaults, as tonic configures them, and no timeout.
    pub fn new() -> Self {
        Self {
            request_timeout: None,
            connection_window: None,
            streams: Arc::default(),
            handlers: None,
        }
    }

    /// Runs admitted calls on `handlers`, while connections (and refusals) stay on the
    /// runtime the serve loop runs on. A stream's first poll enters `handlers`' context,
    /// so whatever a call starts there (timers, tasks, the layer's probe) belongs to it.
    pub fn handlers(mut self, handlers: Handle) -> Self {
        self.handlers = Some(handlers);
        self
    }

    /// Calls are dropped and answered CANCELLED after `timeout`, or their own
    /// `grpc-timeout` if shorter.
    pub fn request_timeout(mut self, timeout: Duration) -> Self {
        self.request_timeout = Some(timeout);
        self
    }

    /// The HTTP/2 connection window in bytes.
    pub fn connection_window(mut self, bytes: u32) -> Self {
        self.connection_window = Some(bytes);
        self
    }

    /// The counts of where streams were answered, shared with the running server.
    pub fn stream_counts(&self) -> Arc<StreamCounts> {
        self.streams.clone()
    }

    /// Serves `service` on each connection from `incoming` until `shutdown` resolves, then
    /// stops accepting (dropping `incoming`), asks every connection to finish (GOAWAY) and
    /// returns once their in-flight calls are answered and they closed.
    pub async fn serve<I, IO, S, F>(self, incoming: I, service: S, shutdown: F)
    where
        I: Stream<Item = std::io::Result<IO>>,
        IO: Connection,
        S: tower::Service<Request<Body>, Response = Response<Body>, Error = Infallible>
            + Clone
            + Send
            + 'static,
        S::Future: Send + 'static,
        F: Future<Output = ()>,
    {
        let executor = InlineFirst {
            streams: self.streams.clone(),
            handlers: self.handlers.clone(),
        };
        let mut builder = hyper::server::conn::http2::Builder::new(executor);
        // What tonic's builder sets, with its defaults: no stream cap beyond the peer's,
        // h2's defaults for reset-stream limits, 20 s keep-alive timeout (idle unless an
        // interval is set).
        builder
            .timer(TokioTimer::new())
            .initial_connection_window_size(self.connection_window)
            .initial_stream_window_size(None)
            .max_concurrent_streams(None)
            .keep_alive_interval(None)
            .keep_alive_timeout(Duration::from_secs(20))
            .adaptive_window(false)
            .max_pending_accept_reset_streams(None)
            .max_local_error_reset_streams(None)
            .max_frame_size(None);

        let graceful = GracefulShutdown::new();
        {
            // Scoped so the listener closes as soon as accepting stops.
            let mut incoming = pin!(incoming);
            let mut shutdown = pin!(shutdown);
            loop {
                let io = tokio::select! {
                    _ = &mut shutdown => break,
                    next = incoming.next() => match next {
                        Some(Ok(io)) => io,
                        Some(Err(err)) => {
                            tracing::debug!(error = %err, "gRPC connection not accepted");
                            continue;
                        }
                        None => break,
                    },
                };
                let (connect_info, peer_certificates) = io.info();
                let service = PerConnection {
                    inner: service.clone(),
                    connect_info,
                    peer_certificates,
                    request_timeout: self.request_timeout,
                };
                let connection = builder.serve_connection(TokioIo::new(io), service);
                let connection = graceful.watch(connection);
                tokio::spawn(async move {
                    if let Err(err) = connection.await {
                        tracing::debug!(error = %err, "gRPC connection ended with an error");
                    }
                });
            }
        }
        graceful.shutdown().await;
    }
}

/// A connection the serve loop can take: its addresses and, under TLS, the peer's
/// certificates, read once when it is accepted.
pub trait Connection:
    tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static
{
    /// The extensions every call on this connection carries.
    fn info(&self) -> (TcpConnectInfo, Option<PeerCertificates>);
}

impl Connection for TcpStream {
    fn info(&self) -> (TcpConnectInfo, Option<PeerCertificates>) {
        let info = TcpConnectInfo {
            local_addr: self.local_addr().ok(),
            remote_addr: self.peer_addr().ok(),
        };
        (info, None)
    }
}

impl Connection for tokio_rustls::server::TlsStream<TcpStream> {
    fn info(&self) -> (TcpConnectInfo, Option<PeerCertificates>) {
        let (tcp, tls) = self.get_ref();
        let certificates = tls
            .peer_certificates()
            .map(|certs| PeerCertificates(Arc::new(certs.to_vec())));
        (tcp.info().0, certificates)
    }
}

/// The service of one connection: the shared stack, the connection's extensions on each
/// call, and the request timeout around it.
#[derive(Clone)]
struct PerConnection<S> {
    inner: S,
    connect_info: TcpConnectInfo,
    peer_certificates: Option<PeerCertificates>,
    request_timeout: Option<Duration>,
}

/// A call's future: the stack's, under the call's timeout.
type CallFuture<S> = futures::future::Map<
    tokio::time::Timeout<Oneshot<S, Request<Body>>>,
    fn(Result<Result<Response<Body>, Infallible>, tokio::time::error::Elapsed>) -> CallResult,
>;
type CallResult = Result<Response<Body>, Infallible>;

/// Far enough to be no timeout at all; tokio clamps the deadline.
const NO_TIMEOUT: Duration = Duration::from_secs(100 * 365 * 24 * 3600);

impl<S> hyper::service::Service<Request<Incoming>> for PerConnection<S>
where
    S: tower::Service<Request<Body>, Response = Response<Body>, Error = Infallible> + Clone,
{
    type Response = Response<Body>;
    type Error = Infallible;
    type Future = CallFuture<S>;

    fn call(&self, request: Request<Incoming>) -> Self::Future {
        let mut request = request.map(Body::new);
        let extensions = request.extensions_mut();
        extensions.insert(self.connect_info.clone());
        if let Some(certificates) = &self.peer_certificates {
            extensions.insert(certificates.clone());
        }
        let requested = request
            .headers()
            .get(GRPC_TIMEOUT)
            .and_then(|v| parse_grpc_timeout(v.as_bytes()));
        let timeout = match (requested, self.request_timeout) {
            (Some(a), Some(b)) => a.min(b),
            (a, b) => a.or(b).unwrap_or(NO_TIMEOUT),
        };
        // The timer is created here but only registered if the call is not answered by
        // its first poll: a refusal costs no timer.
        let call = self.inner.clone().oneshot(request);
        tokio::time::timeout(timeout, call).map(timed_out_is_cancelled as _)
    }
}

/// tonic's answer to a call past its timeout: CANCELLED, "Timeout expired".
fn timed_out_is_cancelled(result: Result<CallResult, tokio::time::error::Elapsed>) -> CallResult {
    match result {
        Ok(answered) => answered,
        Err(_) => {
            let status = tonic::Status::cancelled(tonic::TimeoutExpired(()).to_string());
            Ok(status.into_http())
        }
    }
}

/// The executor hyper gives each stream to: polls it once on the calling (connection)
/// task and spawns it only if that did not finish it.
#[derive(Clone)]
struct InlineFirst {
    streams: Arc<StreamCounts>,
    handlers: Option<Handle>,
}

impl<F> hyper::rt::Executor<F> for InlineFirst
where
    F: Future + Send + 'static,
    F::Output: Send + 'static,
{
    fn execute(&self, future: F) {
        let mut future = Box::pin(future);
        // The spawned task polls again and registers its own waker, so this poll's waker
        // may do nothing; whatever woke in between is seen by that poll.
        let mut cx = Context::from_waker(Waker::noop());
        let polled = {
            let _handlers = self.handlers.as_ref().map(Handle::enter);
            let _inline = InlinePoll::enter();
            future.as_mut().poll(&mut cx)
        };
        if polled.is_ready() {
            self.streams.inline.fetch_add(1, Ordering::Relaxed);
            return;
        }
        self.streams.spawned.fetch_add(1, Ordering::Relaxed);
        match &self.handlers {
            Some(handlers) => drop(handlers.spawn(future)),
            None => drop(tokio::spawn(future)),
        }
    }
}

thread_local! {
    /// Whether this thread is inside [`InlineFirst`]'s poll of a new stream.
    static POLLING_INLINE: Cell<bool> = const { Cell::new(false) };
}

/// Marks the thread as polling a stream on its connection task, until dropped (also when
/// the poll panics).
struct InlinePoll;

impl InlinePoll {
    fn enter() -> Self {
        POLLING_INLINE.set(true);
        Self
    }
}

impl Drop for InlinePoll {
    fn drop(&mut self) {
        POLLING_INLINE.set(false);
    }
}

/// Awaited before a call's work: when the call is being polled on its connection task
/// (by [`InlineFirst`]), pending once, waking itself, so the work runs in the stream's own
/// task; anywhere else (a stream already in its task, or under another server) ready at
/// once.
pub(crate) fn off_the_connection_task() -> impl Future<Output = ()> {
    YieldOnce(false)
}

struct YieldOnce(bool);

impl Future for YieldOnce {
    type Output = ();

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<()> {
        if self.0 || !POLLING_INLINE.get() {
            return Poll::Ready(());
        }
        self.0 = true;
        cx.waker().wake_by_ref();
        Poll::Pending
    }
}
