//! W3C trace context on the wire: `traceparent` in gRPC metadata and HTTP headers.
//!
//! Stream entries carry it too; the conversion between a `traceparent` string and the
//! current span lives in [`ratemesh_bus::trace_context`], and this module applies it to
//! headers.

use http::HeaderMap;
pub use ratemesh_bus::trace_context::{
    current_traceparent, parse_traceparent, set_parent_from_traceparent,
};

/// The header (and gRPC metadata key) that carries the trace context.
pub const TRACEPARENT: &str = "traceparent";

/// The `traceparent` of an incoming request, if it sent a usable one.
pub fn traceparent_from_headers(headers: &HeaderMap) -> Option<&str> {
    headers.get(TRACEPARENT).and_then(|v| v.to_str().ok())
}

/// Makes `span` a child of the trace the request's headers name.
pub fn continue_from_headers(span: &tracing::Span, headers: &HeaderMap) {
    if let Some(traceparent) = traceparent_from_headers(headers) {
        set_parent_from_traceparent(span, traceparent);
    }
}

/// Adds the current span's `traceparent` to outgoing headers.
pub fn inject_into_headers(headers: &mut HeaderMap) {
    if let Some(value) = current_traceparent().and_then(|tp| tp.parse().ok()) {
        headers.insert(TRACEPARENT, value);
    }
}

/// A tonic client interceptor that sends the current span's trace context.
pub fn inject_into_request<T>(
    mut request: tonic::Request<T>,
) -> Result<tonic::Request<T>, tonic::Status> {
    if let Some(value) = current_traceparent().and_then(|tp| tp.parse().ok()) {
        request.metadata_mut().insert(TRACEPARENT, value);
    }
    Ok(request)
}
