//! The gRPC serve loop: accept connections, serve HTTP/2 on each with hyper, drain on
//! shutdown — what tonic's `Server` does, with one difference that matters under
//! overload: where a call's stream is first run.
//!
//! hyper hands every new stream to an executor as a future. tonic's executor spawns it, so
//! a call the [`RpcLayer`](super::RpcLayer) refuses at once still waits for a worker in a
//! saturated run queue before its refusal is even written — exactly when that queue is
//! longest. `InlineFirst` instead polls each stream once, right away, on the connection
//! task that read its headers: a refusal is a ready future, so it is answered there and
//! nothing is spawned; any other stream is spawned as tonic would. An admitted call must
//! not do its work on the connection task (it would hold up every other stream of the
//! connection), so the layer's admitted path first yields (`off_the_connection_task`)
//! when it finds itself there, and the work runs in the spawned task.
//!
//! Connections can run on a runtime of their own ([`Server::handlers`] names the one
//! admitted calls run on): then a connection task never waits behind handlers either, and
//! a refusal waits for nothing but its connection's thread. A point read (a read from
//! memory, microseconds of work) is the exception ([`Server::inline_reads`]):
//! handing it to a handler thread and its answer back costs more than the read, so it is
//! answered on the connection thread, within a share of that thread's time; past the
//! share, point reads go to the handlers too, and the thread keeps its time for frames
//! and refusals.
//!
//! A connection's writes are gathered while its task runs and sent together when the poll
//! ends, or sooner once 64 KiB or 200 µs old (the `cork` module): h2 would write each frame
//! of 256 bytes or more on its own.
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
use std::time::{Duration, Instant};

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

use super::cork;
use super::deadline::{GRPC_TIMEOUT, parse_grpc_timeout};
use crate::schedule_delay::{CONNECTIONS, ScheduleDelay};
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
    /// The share of a connection thread's time point reads may take on it (handlers apart
    /// only).
    inline_reads: f64,
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
            inline_reads: 0.0,
        }
    }

    /// Runs admitted calls on `handlers`, while connections (and refusals) stay on the
    /// runtime the serve loop runs on. A stream's first poll enters `handlers`' context,
    /// so whatever a call starts there (timers, tasks, the layer's probe) belongs to it.
    pub fn handlers(mut self, handlers: Handle) -> Self {
        self.handlers = Some(handlers);
        self
    }

    /// With handlers apart ([`Server::handlers`]), lets point reads (the methods the layer
    /// declares reads of microseconds from memory) do their work on the connection thread that read
    /// them, up to `share` (0 to 1) of that thread's time: such a read is a few
    /// microseconds of work, less than handing it to a handler thread and its answer back
    /// costs. Beyond the share, they go to the handlers like any call, so a connection thread stays free to
    /// read frames and answer refusals when calls arrive faster than it can serve them.
    /// 0 (the default): every admitted call goes to the handlers.
    pub fn inline_reads(mut self, share: f64) -> Self {
        self.inline_reads = if share.is_finite() {
            share.clamp(0.0, 1.0)
        } else {
            0.0
        };
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
        let read_share =
            (self.handlers.is_some() && self.inline_reads > 0.0).then_some(self.inline_reads);
        let executor = InlineFirst {
            streams: self.streams.clone(),
            handlers: self.handlers.clone(),
            read_share,
            // This runtime's: the one connection tasks wait for.
            connection_delay: read_share.map(|_| ScheduleDelay::start_exported_as(CONNECTIONS)),
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
                let (io, uncork) = cork::cork(io);
                let connection = builder.serve_connection(TokioIo::new(io), service);
                let connection = uncork.drive(graceful.watch(connection));
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
    /// The share of the connection thread's time point reads may take on it; `None`: none.
    read_share: Option<f64>,
    /// The scheduling delay of the connections' runtime, while reads may be answered there.
    connection_delay: Option<Arc<ScheduleDelay>>,
}

impl<F> hyper::rt::Executor<F> for InlineFirst
where
    F: Future + Send + 'static,
    F::Output: Send + 'static,
{
    fn execute(&self, future: F) {
        let mut future = Box::pin(future);
        // A point read may do its work in this poll while the thread has time to spare.
        let reads = self.read_share.and_then(|share| {
            let now = Instant::now();
            ReadBudget::refill(share, now).then_some(now)
        });
        let delay = match (reads, &self.connection_delay) {
            (Some(now), Some(delay)) => delay.at(now),
            _ => Duration::ZERO,
        };
        // The spawned task polls again and registers its own waker, so this poll's waker
        // may do nothing; whatever woke in between is seen by that poll.
        let mut cx = Context::from_waker(Waker::noop());
        let polled = {
            let _handlers = self.handlers.as_ref().map(Handle::enter);
            let _inline = InlinePoll::enter(reads.is_some(), delay);
            future.as_mut().poll(&mut cx)
        };
        if let Some(started) = reads {
            ReadBudget::spend(started.elapsed());
        }
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

/// The time a connection thread may still spend on reads: credit accrues at the thread's
/// read share of the time that passes, up to [`READ_BURST`], and every first poll made
/// while reads were allowed is paid from it, however it ended. While the credit is not
/// positive, reads go to the handlers.
#[derive(Debug, Clone, Copy)]
struct ReadBudget {
    /// Nanoseconds the thread may still spend; negative after a poll that overdrew it.
    credit: i64,
    /// When the credit was last brought up to date; `None` before the thread's first call.
    at: Option<Instant>,
}

/// The most credit a connection thread saves up: the longest it runs reads back to back
/// while frames of other calls wait, when reads arrive after a quiet spell.
const READ_BURST: Duration = Duration::from_micros(500);

impl ReadBudget {
    const NEW: Self = Self {
        credit: 0,
        at: None,
    };

    /// The budget at `now` for a thread whose reads may take `share` of its time.
    fn refilled(self, share: f64, now: Instant) -> Self {
        let burst = READ_BURST.as_nanos() as i64;
        let credit = match self.at {
            None => burst,
            Some(at) => {
                let earned = now.saturating_duration_since(at).as_nanos() as f64 * share;
                (self.credit as f64 + earned).min(burst as f64) as i64
            }
        };
        Self {
            credit,
            at: Some(now),
        }
    }

    fn spent(self, elapsed: Duration) -> Self {
        let elapsed = i64::try_from(elapsed.as_nanos()).unwrap_or(i64::MAX);
        Self {
            credit: self.credit.saturating_sub(elapsed),
            ..self
        }
    }

    /// Brings this thread's budget up to `now`; whether reads may run on it.
    fn refill(share: f64, now: Instant) -> bool {
        READ_BUDGET.with(|budget| {
            let refilled = budget.get().refilled(share, now);
            budget.set(refilled);
            refilled.credit > 0
        })
    }

    /// Pays for a poll that took `elapsed`.
    fn spend(elapsed: Duration) {
        READ_BUDGET.with(|budget| budget.set(budget.get().spent(elapsed)));
    }
}

thread_local! {
    /// Whether this thread is inside [`InlineFirst`]'s poll of a new stream.
    static POLLING_INLINE: Cell<bool> = const { Cell::new(false) };
    /// Whether a read polled there may do its work there.
    static READS_INLINE: Cell<bool> = const { Cell::new(false) };
    /// The connections' runtime's scheduling delay when that poll began.
    static CONNECTION_DELAY: Cell<Duration> = const { Cell::new(Duration::ZERO) };
    /// This connection thread's time for reads.
    static READ_BUDGET: Cell<ReadBudget> = const { Cell::new(ReadBudget::NEW) };
}

/// Marks the thread as polling a stream on its connection task, until dropped (also when
/// the poll panics).
struct InlinePoll;

impl InlinePoll {
    fn enter(reads: bool, delay: Duration) -> Self {
        POLLING_INLINE.set(true);
        READS_INLINE.set(reads);
        CONNECTION_DELAY.set(delay);
        Self
    }
}

impl Drop for InlinePoll {
    fn drop(&mut self) {
        POLLING_INLINE.set(false);
        READS_INLINE.set(false);
    }
}

/// Awaited before a call's work: when the call is being polled on its connection task
/// (by [`InlineFirst`]), pending once, waking itself, so the work runs in the stream's own
/// task; anywhere else (a stream already in its task, or under another server) ready at
/// once. A `point_read` is also ready at once while the connection thread has time to
/// spare for reads ([`Server::inline_reads`]): it is answered there.
pub(crate) fn off_the_connection_task(point_read: bool) -> impl Future<Output = ()> {
    YieldOnce(point_read && READS_INLINE.get())
}

/// When a point read polled now is answered on this thread — it is being polled on its
/// connection task ([`InlineFirst`]) while the thread has time to spare for reads — the
/// scheduling delay of the connections' runtime it waited in; `None` otherwise.
pub(crate) fn point_read_answered_here() -> Option<Duration> {
    (POLLING_INLINE.get() && READS_INLINE.get()).then(|| CONNECTION_DELAY.get())
}

/// Awaited by a handler about to wait for something held elsewhere (a lock a writer
/// holds): when its call is being answered on its connection thread, pending once, so the
/// call goes on in a task of its own on the handlers and the thread reads on, answering
/// and refusing the calls behind it; anywhere else ready at once.
pub fn off_the_connection_thread() -> impl Future<Output = ()> {
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

#[cfg(test)]
mod tests {
    use super::*;

    const MICRO: i64 = 1_000;

    #[test]
    fn a_read_budget_starts_full_is_paid_from_and_earns_its_share_back() {
        let start = Instant::now();
        let budget = ReadBudget::NEW.refilled(0.5, start);
        assert_eq!(
            budget.credit,
            500 * MICRO,
            "a thread starts with a whole burst"
        );

        // A poll of 600 µs overdraws it: no reads until it is earned back.
        let budget = budget.spent(Duration::from_micros(600));
        assert_eq!(budget.credit, -100 * MICRO);
        let budget = budget.refilled(0.5, start + Duration::from_micros(100));
        assert_eq!(budget.credit, -50 * MICRO, "half of 100 µs earned");
        let budget = budget.refilled(0.5, start + Duration::from_micros(300));
        assert_eq!(budget.credit, 50 * MICRO);

        // However long the thread waits, it saves up one burst at most.
        let budget = budget.refilled(0.5, start + Duration::from_secs(10));
        assert_eq!(budget.credit, 500 * MICRO);
        // An instant that is not later earns nothing.
        let budget = budget
            .spent(Duration::from_micros(200))
            .refilled(0.5, start);
        assert_eq!(budget.credit, 300 * MICRO);
    }

    #[test]
    fn the_inline_read_share_is_between_zero_and_one() {
        assert_eq!(Server::new().inline_reads, 0.0);
        assert_eq!(Server::new().inline_reads(0.25).inline_reads, 0.25);
        assert_eq!(Server::new().inline_reads(3.0).inline_reads, 1.0);
        assert_eq!(Server::new().inline_reads(-1.0).inline_reads, 0.0);
        assert_eq!(Server::new().inline_reads(f64::NAN).inline_reads, 0.0);
    }
}
