//! The header every stream entry starts with (`EventMeta`), and the `received_at` stamp of
//! ingest's entries.

use chrono::{DateTime, Utc};
use ratemesh_proto::v1;

use crate::DecodeError;
use crate::time::{required, to_timestamp};

/// A new header for an event that happened at `occurred_at`: a fresh ULID and the current
/// span's trace context, so one trace runs from the cause to every reader.
pub fn meta(occurred_at: DateTime<Utc>) -> v1::EventMeta {
    v1::EventMeta {
        event_id: ulid::Ulid::generate().to_string(),
        occurred_at: Some(to_timestamp(occurred_at)),
        traceparent: ratemesh_bus::trace_context::current_traceparent().unwrap_or_default(),
        tracestate: String::new(),
    }
}

/// When the event happened (`meta.occurred_at`), required.
pub fn occurred_at(meta: Option<&v1::EventMeta>) -> Result<DateTime<Utc>, DecodeError> {
    required(
        meta.and_then(|m| m.occurred_at.as_ref()),
        "meta.occurred_at",
    )
}

/// When ingest accepted an entry: its `received_at`, else (entries written before that
/// field existed) its `meta.occurred_at`, which ingest set to the same instant.
pub fn received_at(
    stamp: Option<&prost_types::Timestamp>,
    meta: Option<&v1::EventMeta>,
) -> Result<DateTime<Utc>, DecodeError> {
    match stamp {
        Some(t) => required(Some(t), "received_at"),
        None => occurred_at(meta),
    }
}
