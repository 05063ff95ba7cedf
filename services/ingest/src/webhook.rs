//! `POST /v1/stock` and `POST /v1/products` (DESIGN §4.2).
//!
//! Order of checks, cheapest and least trusting first: the signature header's form and
//! timestamp (before any of the body is read), the declared size, then the body, read under
//! a deadline while its HMAC is computed, the signature itself, concurrency, JSON, item
//! count, validation, then the hand-off. A request holds a processing slot only once its
//! signature is verified, so clients that trickle bodies cannot starve signed pushes. Every
//! refusal leaves the stream unchanged.

use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::Router;
use axum::body::Body;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::post;
use chrono::Utc;
use futures::StreamExt as _;
use ratemesh_runtime::ApiError;
use ratemesh_runtime::signature::{self, SIGNATURE_HEADER, StreamingVerifier};
use ratemesh_runtime::trace_context;
use tokio::sync::Semaphore;
use tracing::Instrument;

use crate::handoff::{Handoff, Kind};
use crate::payload::{self, ProductBatch, StockBatch};
use crate::request_metrics::RequestMetrics;
use crate::validate::{self, Limits};

/// The header naming a batch for de-duplication (the body's `batch_id` is the fallback).
pub const IDEMPOTENCY_KEY_HEADER: &str = "idempotency-key";

/// An ERP source and its secrets, as bytes ready for HMAC.
#[derive(Clone)]
pub(crate) struct Source {
    pub(crate) name: String,
    pub(crate) secrets: Vec<Vec<u8>>,
}

pub(crate) struct WebhookState {
    pub(crate) handoff: Handoff,
    pub(crate) limits: Limits,
    pub(crate) sources: Vec<Source>,
    pub(crate) tolerance_secs: u64,
    pub(crate) max_body_bytes: usize,
    /// Bytes of bodies not yet verified, across all requests (one permit per byte).
    pub(crate) unverified_budget: Semaphore,
    pub(crate) body_read_timeout: Duration,
    pub(crate) in_flight: Semaphore,
    pub(crate) retry_after: std::time::Duration,
    pub(crate) requests: RequestMetrics,
}

pub(crate) fn router(state: Arc<WebhookState>) -> Router {
    Router::new()
        .route("/v1/stock", post(post_stock))
        .route("/v1/products", post(post_products))
        .with_state(state)
}

async fn post_stock(
    State(state): State<Arc<WebhookState>>,
    headers: HeaderMap,
    body: Body,
) -> Response {
    handle(state, Kind::Stock, headers, body).await
}

async fn post_products(
    State(state): State<Arc<WebhookState>>,
    headers: HeaderMap,
    body: Body,
) -> Response {
    handle(state, Kind::Products, headers, body).await
}

async fn handle(state: Arc<WebhookState>, kind: Kind, headers: HeaderMap, body: Body) -> Response {
    let route = match kind {
        Kind::Stock => "/v1/stock",
        Kind::Products => "/v1/products",
    };
    let span = tracing::info_span!(
        "webhook",
        otel.name = %format_args!("POST {route}"),
        otel.kind = "server",
        http.request.method = "POST",
        http.route = route,
        http.response.status_code = tracing::field::Empty,
        source = tracing::field::Empty,
        batch_id = tracing::field::Empty,
    );
    trace_context::continue_from_headers(&span, &headers);
    let started = Instant::now();
    let response = async {
        match accept(&state, kind, &headers, body).await {
            Ok(answer) => (StatusCode::ACCEPTED, axum::Json(answer)).into_response(),
            Err(err) => {
                metrics::counter!("ratemesh_ingest_rejected_total", "reason" => err.code_name())
                    .increment(1);
                tracing::info!(error = %err, "push refused");
                err.into_response()
            }
        }
    }
    .instrument(span.clone())
    .await;
    span.record("http.response.status_code", response.status().as_u16());
    state
        .requests
        .record(kind, response.status(), started.elapsed().as_secs_f64());
    response
}

async fn accept(
    state: &WebhookState,
    kind: Kind,
    headers: &HeaderMap,
    body: Body,
) -> Result<crate::handoff::Answer, ApiError> {
    let verifier = check_signature_header(state, headers)?;

    let too_large = || {
        ApiError::TooLarge(format!(
            "body is larger than {} bytes; send smaller batches",
            state.max_body_bytes
        ))
    };
    let declared = headers
        .get(http::header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<usize>().ok());
    if declared.is_some_and(|len| len > state.max_body_bytes) {
        return Err(too_large());
    }
    let mut buffer = UnverifiedBody::new(&state.unverified_budget, state.max_body_bytes);
    let verifier = tokio::time::timeout(
        state.body_read_timeout,
        buffer.read(body, declared, verifier),
    )
    .await
    .map_err(|_| {
        ApiError::RequestTimeout(format!(
            "the body did not arrive within {} ms",
            state.body_read_timeout.as_millis()
        ))
    })?
    .map_err(|err| match err {
        BodyError::TooLarge => too_large(),
        BodyError::Broken => ApiError::Malformed("the body could not be read".into()),
        BodyError::Budget => ApiError::Unavailable {
            message: "ingest is holding as many unverified bodies as it may; retry after the \
                      advised delay"
                .into(),
            retry_after: state.retry_after,
        },
    })?;

    let source = verified_source(state, verifier)?;
    tracing::Span::current().record("source", source.as_str());
    // Verified: the body no longer counts against the budget of unverified bytes.
    let body = buffer.into_verified();

    let _permit = state
        .in_flight
        .try_acquire()
        .map_err(|_| ApiError::Unavailable {
            message: "ingest is at its concurrency limit; retry after the advised delay".into(),
            retry_after: state.retry_after,
        })?;

    let header_batch_id = batch_id_header(headers)?;
    let now = Utc::now();
    match kind {
        Kind::Stock => {
            let batch: StockBatch =
                payload::parse(&body).map_err(|e| ApiError::Malformed(e.message))?;
            if let Some(message) = validate::too_many(batch.updates.len(), &state.limits) {
                return Err(ApiError::TooLarge(message));
            }
            let items = validate::stock(&batch.updates, now, &state.limits)
                .map_err(ApiError::InvalidArgument)?;
            let batch_id = checked_batch_id(header_batch_id.or(batch.batch_id))?;
            record_batch_id(batch_id.as_deref());
            state
                .handoff
                .push_stock(&source, batch_id, items, now)
                .await
        }
        Kind::Products => {
            let batch: ProductBatch =
                payload::parse(&body).map_err(|e| ApiError::Malformed(e.message))?;
            if let Some(message) = validate::too_many(batch.products.len(), &state.limits) {
                return Err(ApiError::TooLarge(message));
            }
            let items = validate::products(&batch.products, now, &state.limits)
                .map_err(ApiError::InvalidArgument)?;
            let batch_id = checked_batch_id(header_batch_id.or(batch.batch_id))?;
            record_batch_id(batch_id.as_deref());
            state
                .handoff
                .push_products(&source, batch_id, items, now)
                .await
        }
    }
}

fn record_batch_id(batch_id: Option<&str>) {
    if let Some(id) = batch_id {
        tracing::Span::current().record("batch_id", id);
    }
}

/// Checks the signature header before any of the body is read: a request whose header is
/// missing, malformed or out of tolerance can never verify, so it is refused at once.
/// Returns a verifier over every secret of every source, fed as the body arrives.
fn check_signature_header(
    state: &WebhookState,
    headers: &HeaderMap,
) -> Result<StreamingVerifier, ApiError> {
    if state.sources.is_empty() {
        return Err(ApiError::Unauthenticated(
            "no ERP source is configured ([[ingest.sources]]); the webhooks accept nothing".into(),
        ));
    }
    let header = headers
        .get(SIGNATURE_HEADER)
        .map(|v| v.to_str().unwrap_or(""));
    let parsed = signature::check_header(header, Utc::now().timestamp(), state.tolerance_secs)
        .map_err(|err| ApiError::Unauthenticated(err.to_string()))?;
    let secrets = state
        .sources
        .iter()
        .flat_map(|source| source.secrets.iter().map(Vec::as_slice));
    Ok(StreamingVerifier::new(parsed, secrets))
}

/// The name of the source whose secret signed the body.
fn verified_source(state: &WebhookState, verifier: StreamingVerifier) -> Result<String, ApiError> {
    let index = verifier
        .finish()
        .map_err(|err| ApiError::Unauthenticated(err.to_string()))?;
    let mut seen = 0;
    for source in &state.sources {
        if index < seen + source.secrets.len() {
            return Ok(source.name.clone());
        }
        seen += source.secrets.len();
    }
    Err(ApiError::Internal(format!(
        "secret {index} matched but no source holds it"
    )))
}

enum BodyError {
    TooLarge,
    Broken,
    /// Holding more would exceed `ingest.max_unverified_body_bytes`.
    Budget,
}

/// A body being read before its signature is known. Every byte of its buffer's capacity
/// holds a permit of the process-wide budget, so the memory unsigned requests can make
/// the process hold is bounded whatever they send.
struct UnverifiedBody<'a> {
    bytes: Vec<u8>,
    limit: usize,
    budget: &'a Semaphore,
    held: Option<tokio::sync::SemaphorePermit<'a>>,
}

impl<'a> UnverifiedBody<'a> {
    fn new(budget: &'a Semaphore, limit: usize) -> Self {
        Self {
            bytes: Vec::new(),
            limit,
            budget,
            held: None,
        }
    }

    fn held(&self) -> usize {
        self.held.as_ref().map_or(0, |p| p.num_permits())
    }

    /// Grows the buffer to hold `needed` bytes, taking permits for the new capacity first.
    fn reserve(&mut self, needed: usize) -> Result<(), BodyError> {
        if needed <= self.bytes.capacity() {
            return Ok(());
        }
        let target = needed.max(self.bytes.capacity() * 2).min(self.limit);
        let extra = target.saturating_sub(self.held());
        if extra > 0 {
            let extra = u32::try_from(extra).map_err(|_| BodyError::TooLarge)?;
            let permit = self
                .budget
                .try_acquire_many(extra)
                .map_err(|_| BodyError::Budget)?;
            match &mut self.held {
                Some(held) => held.merge(permit),
                None => self.held = Some(permit),
            }
        }
        self.bytes.reserve_exact(target - self.bytes.len());
        Ok(())
    }

    /// Reads the body, at most `limit` bytes, feeding `verifier` as chunks arrive. A
    /// declared length is reserved at once, so a request the budget cannot hold is refused
    /// before any of its body is read.
    async fn read(
        &mut self,
        body: Body,
        declared: Option<usize>,
        mut verifier: StreamingVerifier,
    ) -> Result<StreamingVerifier, BodyError> {
        if let Some(len) = declared {
            self.reserve(len)?;
        }
        let mut chunks = body.into_data_stream();
        while let Some(chunk) = chunks.next().await {
            let chunk = chunk.map_err(|_| BodyError::Broken)?;
            let needed = self.bytes.len() + chunk.len();
            if needed > self.limit {
                return Err(BodyError::TooLarge);
            }
            self.reserve(needed)?;
            verifier.update(&chunk);
            self.bytes.extend_from_slice(&chunk);
        }
        Ok(verifier)
    }

    /// The body, its permits returned to the budget.
    fn into_verified(self) -> Vec<u8> {
        self.bytes
    }
}

fn batch_id_header(headers: &HeaderMap) -> Result<Option<String>, ApiError> {
    match headers.get(IDEMPOTENCY_KEY_HEADER) {
        None => Ok(None),
        Some(value) => value
            .to_str()
            .map(|v| Some(v.trim().to_owned()))
            .map_err(|_| ApiError::invalid("Idempotency-Key", "must be printable ASCII")),
    }
}

/// Batch ids become bus keys: bounded, printable.
pub(crate) fn checked_batch_id(batch_id: Option<String>) -> Result<Option<String>, ApiError> {
    match batch_id {
        None => Ok(None),
        Some(id) if id.is_empty() => Ok(None),
        Some(id) if id.len() <= 128 && id.bytes().all(|b| b.is_ascii_graphic()) => Ok(Some(id)),
        Some(_) => Err(ApiError::invalid(
            "batch_id",
            "must be at most 128 printable ASCII characters without spaces",
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::validate::Limits;

    /// The largest batch the defaults allow, every text field at its longest (ASCII).
    fn largest_batches(items: usize) -> (String, String) {
        let as_of = "2026-11-27T04:59:00.123456789+00:00";
        let amount = "999999999.123456";
        let products: Vec<_> = (0..items)
            .map(|i| {
                serde_json::json!({
                    "sku": format!("{i:0>128}"),
                    "category": "c".repeat(64),
                    "price": amount,
                    "unit_cost": amount,
                    "base_rate": "0.123456",
                    "currency": "USD",
                    "title": "t".repeat(256),
                    "as_of": as_of,
                })
            })
            .collect();
        let updates: Vec<_> = (0..items)
            .map(|i| {
                serde_json::json!({
                    "sku": format!("{i:0>128}"),
                    "location": "l".repeat(64),
                    "on_hand": amount,
                    "reserved": "0",
                    "as_of": as_of,
                    "sequence": u64::MAX,
                    "velocity": amount,
                })
            })
            .collect();
        (
            serde_json::json!({"batch_id": "b".repeat(128), "products": products}).to_string(),
            serde_json::json!({"batch_id": "b".repeat(128), "updates": updates}).to_string(),
        )
    }

    #[test]
    fn the_default_body_limit_fits_the_largest_allowed_batch_and_little_more() {
        let defaults = <crate::IngestSettings as ratemesh_runtime::settings::Section>::defaults();
        let (products, stock) = largest_batches(defaults.max_batch_items);
        // Both are valid batches, so the limit must let them through...
        let now = chrono::DateTime::parse_from_rfc3339("2026-11-27T05:00:00Z")
            .expect("time")
            .with_timezone(&Utc);
        let limits = Limits {
            max_items: defaults.max_batch_items,
            max_text_len: 256,
            max_future_skew: chrono::Duration::seconds(300),
        };
        let batch: ProductBatch = payload::parse(products.as_bytes()).expect("products parse");
        validate::products(&batch.products, now, &limits).expect("largest products batch");
        let batch: StockBatch = payload::parse(stock.as_bytes()).expect("stock parses");
        validate::stock(&batch.updates, now, &limits).expect("largest stock batch");
        let largest = products.len().max(stock.len());
        assert!(
            largest <= defaults.max_body_bytes,
            "{largest} bytes do not fit {}",
            defaults.max_body_bytes
        );
        // ...and not leave room for much more than them.
        assert!(
            defaults.max_body_bytes < largest * 2,
            "{} is more than twice the largest batch ({largest} bytes)",
            defaults.max_body_bytes
        );
    }
}
