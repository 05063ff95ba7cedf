//! The tower layer every gRPC call passes through: admission (deadline, process ceiling,
//! the method's adaptive limit), authentication and the role table, trace context, the
//! answer to undecodable requests, and per-RPC metrics — in that order, in one place.
//!
//! Admission comes first so an overloaded server spends almost nothing on a call it
//! refuses: no key is hashed, nothing is allocated but the answer, RESOURCE_EXHAUSTED with
//! RetryInfo, whose headers are rendered once when the layer is built. A call is refused
//! (`ratemesh_grpc_shed_total{method, reason}`) when
//! - `deadline`: its `grpc-timeout` is shorter than the runtime's current scheduling delay
//!   plus the method's usual service time, so the caller would have given up before the
//!   answer — better to say so at once than to do the work for nobody;
//! - `concurrency`: the process has `server.max_concurrent_requests` calls in flight;
//! - `limit`: the method is at its adaptive limit (`grpc/limit.rs` says how it is counted
//!   and moved), which keeps the queue for the CPU short when the process saturates.
//!
//! Which queue a call waits in decides which delay and which limit it meets: a call a
//! handler answers waits for the handlers' runtime, whose scheduling delay and the
//! method's limit apply; a point read answered on the connection thread that read it
//! ([`serve::Server::inline_reads`]) waits for that thread only, so the deadline check
//! reads the connections' runtime's delay and the method has a second limit for such
//! reads, moved by that delay. Handlers busy with webhooks then refuse no GetRate the
//! connection threads can answer, and connection threads saturated by reads still shed
//! them.
//!
//! Per call, the layer looks the path up in a table built once (`grpc/methods.rs`): label,
//! metric handles and limit are ready, so no string is built for metrics or spans. A key
//! that verified once is not hashed again ([`ApiKeys`]). Health checks and reflection skip
//! all of it: an orchestrator must always be able to ask whether the process is healthy.
//!
//! Streams (WatchRates) hold their admission only until the response headers: what is
//! limited is the work of starting a call, not how long a subscriber stays.
//!
//! The process serves this layer with a loop of its own ([`serve`]) that runs each new
//! call's first poll on its connection task: the admission decision is made there, so a
//! refusal is written without waiting for a worker; an admitted call continues in a task
//! of its own, or, for a point read while the connection thread has time for it, right
//! there. What a connection writes while its task runs leaves together when the poll ends,
//! or sooner once 64 KiB or 200 µs old (`grpc/cork.rs`).

mod cork;
mod deadline;
mod limit;
mod methods;
pub mod serve;

use std::pin::Pin;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, OnceLock};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use http::{HeaderMap, HeaderName, Request, Response};
use tonic::body::Body;
use tower::{Layer, Service};
use tracing::Instrument;

use self::deadline::{GRPC_TIMEOUT, parse_grpc_timeout};
use self::limit::{LimitConfig, Limiter, Sample};
use self::methods::{Method, MethodTable, Route, Shed};
use crate::auth::{AccessTable, ApiKeys};
use crate::error::ApiError;
use crate::schedule_delay::ScheduleDelay;
use crate::telemetry::{SpanExport, span_export};
use crate::trace_context;

/// How the layer admits calls; [`crate::settings::ServerSettings::admission`] builds it from
/// `[server]`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Admission {
    /// Calls in flight across the process; past it, calls are refused.
    pub max_concurrent: usize,
    /// The back-off a refused caller is told (RetryInfo).
    pub retry_after: Duration,
    /// Whether each method has an adaptive limit under the ceiling.
    pub adaptive: bool,
    /// The runtime scheduling delay above which adaptive limits shrink.
    pub queue_delay_target: Duration,
    /// The lowest an adaptive limit goes.
    pub min_concurrency: usize,
    /// Whether a call that cannot be answered within its `grpc-timeout` is refused.
    pub deadlines: bool,
}

impl Admission {
    fn limit(&self) -> LimitConfig {
        let max = u32::try_from(self.max_concurrent)
            .unwrap_or(u32::MAX)
            .max(1);
        let min = u32::try_from(self.min_concurrency).unwrap_or(u32::MAX);
        LimitConfig {
            adaptive: self.adaptive,
            min: min.clamp(1, max),
            max,
            delay_target: self.queue_delay_target,
        }
    }
}

/// Shared state of the layer.
#[derive(Debug, Clone)]
pub struct RpcLayer {
    shared: Arc<Shared>,
}

#[derive(Debug)]
struct Shared {
    keys: ApiKeys,
    access: AccessTable,
    methods: MethodTable,
    admission: Admission,
    in_flight: AtomicUsize,
    refusals: Refusals,
    /// The layer's clock for admission rates.
    epoch: Instant,
    /// Started by the first call, on the runtime that serves the calls.
    schedule_delay: OnceLock<Arc<ScheduleDelay>>,
}

impl RpcLayer {
    /// A layer admitting calls under `admission`, each checked against `access`.
    pub fn new(keys: ApiKeys, access: AccessTable, admission: Admission) -> Self {
        Self::with_reads(keys, access, admission, &[], &[])
    }

    /// Like [`RpcLayer::new`], with the RPCs (full service name, method name) that only
    /// read: they start no work elsewhere that a trace would follow, so a call gets its
    /// span only when the span can be exported (`read_is_traced`). `point_reads` are
    /// reads of a few microseconds from memory, which may be answered on the connection
    /// thread that read them ([`serve::Server::inline_reads`]).
    pub fn with_reads(
        keys: ApiKeys,
        access: AccessTable,
        admission: Admission,
        reads: &[(&'static str, &'static str)],
        point_reads: &[(&'static str, &'static str)],
    ) -> Self {
        // Metric handles are resolved now, so the recorder must exist first.
        crate::metrics::prometheus();
        Self {
            shared: Arc::new(Shared {
                methods: MethodTable::new(&access, admission.limit(), reads, point_reads),
                keys,
                access,
                admission,
                in_flight: AtomicUsize::new(0),
                refusals: Refusals::new(admission.retry_after),
                epoch: Instant::now(),
                schedule_delay: OnceLock::new(),
            }),
        }
    }
}

impl Shared {
    fn schedule_delay(&self) -> &ScheduleDelay {
        self.schedule_delay.get_or_init(|| {
            if self.admission.adaptive || self.admission.deadlines {
                ScheduleDelay::start()
            } else {
                Arc::new(ScheduleDelay::idle())
            }
        })
    }

    /// Decides whether a call to `method` arriving at `started` goes on to its handler.
    fn admit<'a>(
        &'a self,
        method: &'a Method,
        headers: &HeaderMap,
        started: Instant,
    ) -> Result<(InFlight<'a>, Admitted<'a>), Shed> {
        // A point read answered where it was read waits for the connection thread, not a
        // handler: the connections' runtime's delay and the method's inline limit apply.
        let (limiter, schedule_delay, delay) = match method
            .inline_limiter
            .as_ref()
            .zip(serve::point_read_answered_here())
        {
            Some((limiter, delay)) => (limiter, None, delay),
            None => {
                let schedule_delay = self.schedule_delay();
                (
                    &method.limiter,
                    Some(schedule_delay),
                    schedule_delay.at(started),
                )
            }
        };
        if self.admission.deadlines {
            let timeout = headers
                .get(GRPC_TIMEOUT)
                .and_then(|v| parse_grpc_timeout(v.as_bytes()));
            if timeout.is_some_and(|t| t < delay + limiter.service_time()) {
                return Err(Shed::Deadline);
            }
        }
        if self.in_flight.fetch_add(1, Ordering::AcqRel) >= self.admission.max_concurrent {
            self.in_flight.fetch_sub(1, Ordering::AcqRel);
            return Err(Shed::Concurrency);
        }
        let in_flight = InFlight(&self.in_flight);
        let now = u64::try_from(started.saturating_duration_since(self.epoch).as_nanos())
            .unwrap_or(u64::MAX);
        let occupancy = limiter.try_admit(started, now, delay).ok_or(Shed::Limit)?;
        Ok((
            in_flight,
            Admitted {
                limiter,
                schedule_delay,
                started,
                delay,
                occupancy,
                learn: true,
            },
        ))
    }
}

/// A place under the process-wide ceiling, given back on drop.
struct InFlight<'a>(&'a AtomicUsize);

impl Drop for InFlight<'_> {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::AcqRel);
    }
}

/// A call admitted under its method's limit. On drop — the handler answered, or the call
/// was cancelled (its timeout) — the place is given back and the limit learns from it.
struct Admitted<'a> {
    limiter: &'a Limiter,
    /// The delay the call waited in, read again when it ends; `None` for a read answered
    /// on its connection thread, which almost always ends within the poll it was admitted
    /// in, so the delay at admission stands for it.
    schedule_delay: Option<&'a ScheduleDelay>,
    started: Instant,
    delay: Duration,
    occupancy: u32,
    /// False for calls that never reached a handler (refused by auth): their time says
    /// nothing about the method.
    learn: bool,
}

impl Drop for Admitted<'_> {
    fn drop(&mut self) {
        let sample = self.learn.then(|| {
            let now = Instant::now();
            Sample {
                at: now,
                in_layer: now.saturating_duration_since(self.started),
                delay_at_admission: self.delay,
                delay_now: self.schedule_delay.map_or(self.delay, |d| d.at(now)),
                occupancy: self.occupancy,
                limited: false,
            }
        });
        self.limiter.finish(sample);
    }
}

/// The answers to refused calls, rendered once: a refusal clones a header map.
#[derive(Debug)]
struct Refusals([HeaderMap; 3]);

impl Refusals {
    fn new(retry_after: Duration) -> Self {
        let render = |message: &str| {
            let status = tonic::Status::from(ApiError::ResourceExhausted {
                message: message.to_owned(),
                retry_after,
            });
            status.into_http::<Body>().headers().clone()
        };
        let mut by_reason: [HeaderMap; 3] = Default::default();
        by_reason[Shed::Concurrency as usize] =
            render("server is at its concurrency limit; retry after the advised delay");
        by_reason[Shed::Limit as usize] = render(
            "server is saturated: calls of this method are queueing for the CPU; retry after the advised delay",
        );
        by_reason[Shed::Deadline as usize] = render(
            "the call's deadline is shorter than the server's current queueing delay plus this method's usual service time; retry after the advised delay",
        );
        Self(by_reason)
    }

    fn response(&self, reason: Shed) -> Response<Body> {
        let mut response = Response::new(Body::default());
        *response.headers_mut() = self.0[reason as usize].clone();
        response
    }
}

impl<S> Layer<S> for RpcLayer {
    type Service = RpcService<S>;

    fn layer(&self, inner: S) -> Self::Service {
        RpcService {
            inner,
            layer: self.clone(),
        }
    }
}

/// The service produced by [`RpcLayer`].
#[derive(Debug, Clone)]
pub struct RpcService<S> {
    inner: S,
    layer: RpcLayer,
}

type BoxFuture<T> = Pin<Box<dyn Future<Output = T> + Send + 'static>>;

impl<S> Service<Request<Body>> for RpcService<S>
where
    S: Service<Request<Body>, Response = Response<Body>> + Clone + Send + 'static,
    S::Future: Send + 'static,
{
    type Response = Response<Body>;
    type Error = S::Error;
    type Future = BoxFuture<Result<Response<Body>, S::Error>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, mut request: Request<Body>) -> Self::Future {
        // The clone is the one that was not polled ready; keep the ready one for this call.
        let clone = self.inner.clone();
        let mut inner = std::mem::replace(&mut self.inner, clone);
        let shared = self.layer.shared.clone();

        Box::pin(async move {
            let started = Instant::now();
            let shared = &*shared;
            let (method, access) = match shared.methods.route(request.uri().path(), &shared.access)
            {
                Route::Open => return inner.call(request).await,
                Route::Method(method, access) => (method, access),
            };

            let (in_flight, mut admitted) = match shared.admit(method, request.headers(), started) {
                Ok(admission) => admission,
                Err(reason) => {
                    method.shed(reason);
                    let refusal = shared.refusals.response(reason);
                    return Ok(finish(method, started, refusal));
                }
            };
            // Up to here the call may be running on its connection task (`serve`), where a
            // refusal is answered without a task of its own; the rest runs in the stream's
            // task, unless it is a point read the connection thread has time for. Its time
            // in the layer starts there: the queueing before it is what the scheduling
            // delay at admission accounts for.
            serve::off_the_connection_task(method.point_read).await;
            admitted.started = Instant::now();

            let authorization = request
                .headers()
                .get(http::header::AUTHORIZATION)
                .and_then(|v| v.to_str().ok());
            let principal = match shared
                .keys
                .authorize(request.uri().path(), access, authorization)
            {
                Ok(principal) => principal,
                Err(err) => {
                    admitted.learn = false;
                    return Ok(finish(method, started, error_response(err)));
                }
            };

            let span = if method.read && !read_is_traced(request.headers(), span_export()) {
                // Nothing would see it: building span data is a good part of a read's cost.
                tracing::Span::none()
            } else {
                // Semantic-convention names, sliced from the path: no allocation per call.
                let full = method.path.trim_start_matches('/');
                let (service, name) = full.split_once('/').unwrap_or(("", full));
                let span = tracing::info_span!(
                    "rpc",
                    otel.name = full,
                    otel.kind = "server",
                    rpc.system = "grpc",
                    rpc.service = service,
                    rpc.method = name,
                    principal = tracing::field::Empty,
                );
                trace_context::continue_from_headers(&span, request.headers());
                span
            };
            if let Some(principal) = principal {
                span.record("principal", principal.name.as_str());
                request.extensions_mut().insert(principal);
            }

            let response = inner.call(request).instrument(span).await;
            drop(admitted);
            drop(in_flight);
            response.map(|r| finish(method, started, undecodable_is_invalid(method, r)))
        })
    }
}

/// Whether a call to a read gets a span: only when the span can leave the process. A read
/// starts nothing a trace would follow (no stream entry, no webhook, no call), so an
/// unexported span only costs: no exporter, a sample ratio of 0, or a caller whose
/// `traceparent` says its trace is not sampled (the sampler follows the parent) mean no span.
/// A root call under a ratio between 0 and 1 gets one, and the sampler decides.
fn read_is_traced(headers: &HeaderMap, export: SpanExport) -> bool {
    if !export.exported {
        return false;
    }
    match trace_context::traceparent_from_headers(headers).and_then(sampled_flag) {
        Some(sampled) => sampled,
        None => export.sample_ratio > 0.0,
    }
}

/// The sampled flag of a W3C `traceparent`; `None` when the value is not one the
/// propagator would continue (so the sampler would not see it as a parent either).
fn sampled_flag(traceparent: &str) -> Option<bool> {
    trace_context::parse_traceparent(traceparent).map(|parent| parent.is_sampled())
}

/// What tonic answers, before any handler runs, to a request body that is not one
/// well-formed gRPC message of the method's type: each is the caller's fault.
const DECODE_FAILURES: [(tonic::Code, &str); 6] = [
    // prost: random bytes, truncated messages, wrong wire types, invalid UTF-8.
    (tonic::Code::Internal, "failed to decode Protobuf message"),
    // No message frame at all.
    (tonic::Code::Internal, "Missing request message"),
    // A frame shorter than its declared length.
    (tonic::Code::Internal, "Unexpected EOF decoding stream"),
    // A compressed-flag without a grpc-encoding, or an unknown flag.
    (
        tonic::Code::Internal,
        "protocol error: received message with",
    ),
    (tonic::Code::Internal, "Error decompressing"),
    // A declared length beyond the server's message size limit.
    (
        tonic::Code::OutOfRange,
        "Error, decoded message length too large",
    ),
];

/// The longest part of tonic's decode error repeated to the caller.
const MAX_REASON_CHARS: usize = 120;

/// Turns tonic's answer to an undecodable request (INTERNAL, as if the server were at
/// fault) into INVALID_ARGUMENT naming the method. Handlers never see such a request, so
/// this is the one place it can be answered for every RPC.
fn undecodable_is_invalid(method: &Method, response: Response<Body>) -> Response<Body> {
    let code = status_code(&response);
    if code != tonic::Code::Internal as i32 && code != tonic::Code::OutOfRange as i32 {
        return response;
    }
    let Some(status) = tonic::Status::from_header_map(response.headers()) else {
        return response;
    };
    let decode_failure = DECODE_FAILURES
        .iter()
        .any(|(code, prefix)| status.code() == *code && status.message().starts_with(prefix));
    if !decode_failure {
        return response;
    }
    let reason: String = status.message().chars().take(MAX_REASON_CHARS).collect();
    method.undecodable();
    error_response(ApiError::Malformed(format!(
        "the request is not a valid {} message: {reason}",
        method.label
    )))
}

fn error_response(err: ApiError) -> Response<Body> {
    tonic::Status::from(err).into_http()
}

const GRPC_STATUS: HeaderName = HeaderName::from_static("grpc-status");

/// The status code in the response headers. Unary successes send `grpc-status` in
/// trailers, so a response without it in the headers is OK.
fn status_code(response: &Response<Body>) -> i32 {
    response
        .headers()
        .get(GRPC_STATUS)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<i32>().ok())
        .unwrap_or(tonic::Code::Ok as i32)
}

/// Records the call's code and duration.
fn finish(method: &Method, started: Instant, response: Response<Body>) -> Response<Body> {
    method.record(status_code(&response), started.elapsed().as_secs_f64());
    response
}

#[cfg(test)]
mod tests {
    use super::*;

    const TRACE: &str = "4bf92f3577b34da6a3ce929d0e0e4736";
    const PARENT: &str = "00f067aa0ba902b7";

    fn headers(traceparent: Option<&str>) -> HeaderMap {
        let mut headers = HeaderMap::new();
        if let Some(tp) = traceparent {
            headers.insert("traceparent", tp.parse().expect("ascii"));
        }
        headers
    }

    fn export(exported: bool, sample_ratio: f64) -> SpanExport {
        SpanExport {
            exported,
            sample_ratio,
        }
    }

    #[test]
    fn a_read_gets_a_span_only_when_it_can_be_exported() {
        let sampled = format!("00-{TRACE}-{PARENT}-01");
        let unsampled = format!("00-{TRACE}-{PARENT}-00");
        // No exporter: never, whatever the caller asks.
        for tp in [None, Some(sampled.as_str()), Some(unsampled.as_str())] {
            assert!(!read_is_traced(&headers(tp), export(false, 1.0)), "{tp:?}");
        }
        // Exported: the caller's decision when it sent one ...
        assert!(read_is_traced(&headers(Some(&sampled)), export(true, 0.0)));
        assert!(!read_is_traced(
            &headers(Some(&unsampled)),
            export(true, 1.0)
        ));
        // ... else the sampler's, unless it samples nothing.
        assert!(read_is_traced(&headers(None), export(true, 0.01)));
        assert!(!read_is_traced(&headers(None), export(true, 0.0)));
        // A malformed traceparent is ignored, as the propagator ignores it.
        assert!(read_is_traced(
            &headers(Some("00-xyz-01")),
            export(true, 1.0)
        ));
        assert!(!read_is_traced(
            &headers(Some("garbage")),
            export(true, 0.0)
        ));
    }

    #[test]
    fn the_sampled_flag_is_read_from_well_formed_traceparents_only() {
        assert_eq!(sampled_flag(&format!("00-{TRACE}-{PARENT}-01")), Some(true));
        assert_eq!(
            sampled_flag(&format!("00-{TRACE}-{PARENT}-00")),
            Some(false)
        );
        assert_eq!(sampled_flag(&format!("00-{TRACE}-{PARENT}-03")), Some(true));
        assert_eq!(
            sampled_flag(&format!("00-{TRACE}-{PARENT}-02")),
            Some(false)
        );
        // A later version may add fields; version 00 may not.
        assert_eq!(
            sampled_flag(&format!("01-{TRACE}-{PARENT}-01-x")),
            Some(true)
        );
        for bad in [
            format!("00-{TRACE}-{PARENT}-01-x"),
            format!("00-{TRACE}-{PARENT}-1"),
            format!("00-{TRACE}-{PARENT}-zz"),
            format!("00-{TRACE}-{PARENT}"),
            format!("00-{}-{PARENT}-01", &TRACE[1..]),
            format!("00-{TRACE}-g0f067aa0ba902b7-01"),
            String::new(),
        ] {
            assert_eq!(sampled_flag(&bad), None, "{bad}");
        }
    }
}
