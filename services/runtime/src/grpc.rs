//! The tower layer every gRPC call passes through: load shedding, authentication and the
//! role table, trace context, the answer to undecodable requests, and per-RPC metrics — in
//! that order, in one place.
//!
//! Shedding comes first so an overloaded server spends nothing on a call it will refuse.
//! Health checks and reflection skip shedding and auth: an orchestrator must always be able
//! to ask whether the process is healthy.

use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use http::{Request, Response};
use tokio::sync::Semaphore;
use tonic::body::Body;
use tower::{Layer, Service};
use tracing::Instrument;

use crate::auth::{Access, AccessTable, ApiKeys};
use crate::error::ApiError;
use crate::trace_context;

/// Shared state of the layer.
#[derive(Debug, Clone)]
pub struct RpcLayer {
    keys: ApiKeys,
    access: AccessTable,
    in_flight: Arc<Semaphore>,
    shed_retry_after: Duration,
}

impl RpcLayer {
    /// A layer admitting at most `max_in_flight` calls at once, each checked against
    /// `access`.
    pub fn new(
        keys: ApiKeys,
        access: AccessTable,
        max_in_flight: usize,
        shed_retry_after: Duration,
    ) -> Self {
        Self {
            keys,
            access,
            in_flight: Arc::new(Semaphore::new(max_in_flight)),
            shed_retry_after,
        }
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
        let layer = self.layer.clone();
        let path = request.uri().path().to_owned();
        let started = Instant::now();

        Box::pin(async move {
            let access = layer.access.access(&path);
            if access == Access::Open {
                return inner.call(request).await;
            }
            let method = method_label(&path);

            let Ok(permit) = layer.in_flight.clone().try_acquire_owned() else {
                metrics::counter!("ratemesh_grpc_shed_total", "method" => method.clone())
                    .increment(1);
                let err = ApiError::ResourceExhausted {
                    message: "server is at its concurrency limit; retry after the advised delay"
                        .into(),
                    retry_after: layer.shed_retry_after,
                };
                return Ok(finish(&method, started, error_response(err)));
            };

            let authorization = request
                .headers()
                .get(http::header::AUTHORIZATION)
                .and_then(|v| v.to_str().ok());
            let principal = match layer.keys.authorize(&path, access, authorization) {
                Ok(principal) => principal,
                Err(err) => return Ok(finish(&method, started, error_response(err))),
            };

            let span = tracing::info_span!(
                "rpc",
                otel.name = %path,
                otel.kind = "server",
                rpc.system = "grpc",
                rpc.method = %method,
                principal = tracing::field::Empty,
            );
            trace_context::continue_from_headers(&span, request.headers());
            if let Some(principal) = principal {
                span.record("principal", principal.name.as_str());
                request.extensions_mut().insert(principal);
            }

            let response = inner.call(request).instrument(span).await;
            drop(permit);
            response.map(|r| finish(&method, started, undecodable_is_invalid(&method, r)))
        })
    }
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
fn undecodable_is_invalid(method: &str, response: Response<Body>) -> Response<Body> {
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
    metrics::counter!("ratemesh_grpc_undecodable_total", "method" => method.to_owned())
        .increment(1);
    error_response(ApiError::Malformed(format!(
        "the request is not a valid {method} message: {reason}"
    )))
}

/// `Service/Method` without the package, a bounded label set for metrics.
fn method_label(path: &str) -> String {
    let path = path.trim_start_matches('/');
    let path = path.strip_prefix("ratemesh.v1.").unwrap_or(path);
    if path.len() > 80 {
        "other".to_owned()
    } else {
        path.to_owned()
    }
}

fn error_response(err: ApiError) -> Response<Body> {
    tonic::Status::from(err).into_http()
}

/// Records the call. Unary successes send `grpc-status` in trailers, so a response
/// without it in the headers is counted as OK.
fn finish(method: &str, started: Instant, response: Response<Body>) -> Response<Body> {
    let code = response
        .headers()
        .get("grpc-status")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<i32>().ok())
        .map(tonic::Code::from_i32)
        .unwrap_or(tonic::Code::Ok);
    let code = format!("{code:?}");
    metrics::counter!(
        "ratemesh_grpc_requests_total",
        "method" => method.to_owned(),
        "code" => code
    )
    .increment(1);
    metrics::histogram!("ratemesh_grpc_request_duration_seconds", "method" => method.to_owned())
        .record(started.elapsed().as_secs_f64());
    response
}
