//! W3C trace-context (`traceparent`) helpers, so a trace runs across the streams:
//! the publisher records the traceparent of its span in the entry, the consumer continues
//! it with [`set_parent_from_traceparent`].
//!
//! No propagator is involved: the string is built from and parsed into an OpenTelemetry
//! [`SpanContext`] directly, which works whether or not a global propagator is installed.
//! When no OpenTelemetry layer is installed, spans have no context and
//! [`current_traceparent`] returns `None`.

use opentelemetry::trace::{SpanContext, SpanId, TraceContextExt, TraceFlags, TraceId, TraceState};
use tracing_opentelemetry::OpenTelemetrySpanExt;

/// The `traceparent` of the current tracing span, if it belongs to a valid trace.
pub fn current_traceparent() -> Option<String> {
    traceparent_of(&tracing::Span::current())
}

/// The `traceparent` of `span`, if it belongs to a valid trace.
pub fn traceparent_of(span: &tracing::Span) -> Option<String> {
    let cx = span.context();
    let otel_span = cx.span();
    let sc = otel_span.span_context();
    sc.is_valid().then(|| format_traceparent(sc))
}

/// Formats `00-<trace-id>-<span-id>-<flags>`.
pub fn format_traceparent(sc: &SpanContext) -> String {
    format!(
        "00-{:032x}-{:016x}-{:02x}",
        u128::from_be_bytes(sc.trace_id().to_bytes()),
        u64::from_be_bytes(sc.span_id().to_bytes()),
        sc.trace_flags().to_u8()
    )
}

/// Parses a `traceparent` header value into a remote span context.
///
/// Accepts version `00` exactly and later versions by their first four fields, as the
/// W3C spec asks; rejects version `ff`, all-zero ids and malformed hex.
pub fn parse_traceparent(value: &str) -> Option<SpanContext> {
    let value = value.trim();
    let mut parts = value.split('-');
    let version = parts.next()?;
    let trace_id = parts.next()?;
    let span_id = parts.next()?;
    let flags = parts.next()?;
    let lower_hex = |s: &str, len: usize| {
        s.len() == len
            && s.bytes()
                .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
    };
    if !lower_hex(version, 2) || version == "ff" {
        return None;
    }
    if version == "00" && parts.next().is_some() {
        return None;
    }
    if !lower_hex(trace_id, 32) || !lower_hex(span_id, 16) || !lower_hex(flags, 2) {
        return None;
    }
    let trace_id = TraceId::from_bytes(u128::from_str_radix(trace_id, 16).ok()?.to_be_bytes());
    let span_id = SpanId::from_bytes(u64::from_str_radix(span_id, 16).ok()?.to_be_bytes());
    let flags = TraceFlags::new(u8::from_str_radix(flags, 16).ok()? & 0x01);
    let sc = SpanContext::new(trace_id, span_id, flags, true, TraceState::default());
    sc.is_valid().then_some(sc)
}

/// Makes `span` a child of the remote span named by `traceparent`. Call it before the
/// span is entered. Returns false (and leaves the span alone) when the value is invalid
/// or no OpenTelemetry layer is installed.
pub fn set_parent_from_traceparent(span: &tracing::Span, traceparent: &str) -> bool {
    let Some(sc) = parse_traceparent(traceparent) else {
        return false;
    };
    let cx = opentelemetry::Context::new().with_remote_span_context(sc);
    span.set_parent(cx).is_ok()
}

/// The value of `messaging.system` on stream spans: the streams are Redis Streams (the
/// embedded backend stands in for Redis in tests and `up`).
pub const MESSAGING_SYSTEM: &str = "redis";

/// A PRODUCER span for appending to `stream`, child of the current span; the entries
/// appended inside it carry its trace context.
pub fn producer_span(stream: &str) -> tracing::Span {
    tracing::info_span!(
        "stream.send",
        otel.name = %format_args!("send {stream}"),
        otel.kind = "producer",
        messaging.system = MESSAGING_SYSTEM,
        messaging.destination.name = %stream,
        messaging.operation = "send",
    )
}

/// The spans a consumer handles a batch in: one CONSUMER span per trace the batch's
/// entries carry, child of the producer of those entries, not one per entry. A push of
/// 5,000 items is one trace, so each stage handles a read batch of it under one span;
/// entries of different pushes in one batch stay in their own traces.
///
/// Building it costs one span per distinct `traceparent` in the batch; [`Self::of`] is a
/// lookup and a reference-count increment, cheap enough for every entry.
#[derive(Debug)]
pub struct BatchSpans {
    traced: std::collections::HashMap<String, tracing::Span>,
    untraced: Option<tracing::Span>,
}

impl BatchSpans {
    /// The spans for handling `batch`, read from its stream in consumer group `group`.
    pub fn new(group: &str, batch: &[crate::Delivery]) -> Self {
        use std::collections::HashMap;
        let mut counts: HashMap<Option<&str>, (usize, &str)> = HashMap::new();
        for d in batch {
            counts
                .entry(d.traceparent.as_deref())
                .or_insert((0, d.stream.as_str()))
                .0 += 1;
        }
        let mut spans = BatchSpans {
            traced: HashMap::with_capacity(counts.len()),
            untraced: None,
        };
        for (traceparent, (count, stream)) in counts {
            let span = consumer_span(stream, group, count);
            match traceparent {
                Some(tp) => {
                    set_parent_from_traceparent(&span, tp);
                    spans.traced.insert(tp.to_owned(), span);
                }
                None => spans.untraced = Some(span),
            }
        }
        spans
    }

    /// The span to handle `d` in (its trace's); a disabled span for an entry of another
    /// batch.
    pub fn of(&self, d: &crate::Delivery) -> tracing::Span {
        let span = match d.traceparent.as_deref() {
            Some(tp) => self.traced.get(tp),
            None => self.untraced.as_ref(),
        };
        span.cloned().unwrap_or_else(tracing::Span::none)
    }

    /// How many spans the batch is handled in.
    pub fn len(&self) -> usize {
        self.traced.len() + usize::from(self.untraced.is_some())
    }

    /// True for an empty batch.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// A CONSUMER span for handling `count` entries of `stream` in group `group`.
pub fn consumer_span(stream: &str, group: &str, count: usize) -> tracing::Span {
    tracing::info_span!(
        "stream.process",
        otel.name = %format_args!("process {stream}"),
        otel.kind = "consumer",
        messaging.system = MESSAGING_SYSTEM,
        messaging.destination.name = %stream,
        messaging.operation = "process",
        messaging.consumer.group.name = %group,
        messaging.batch.message_count = count,
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_and_formats_the_spec_example() {
        let tp = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";
        let sc = parse_traceparent(tp).unwrap();
        assert!(sc.is_remote());
        assert!(sc.is_sampled());
        assert_eq!(format_traceparent(&sc), tp);
    }

    #[test]
    fn rejects_invalid_values() {
        for tp in [
            "",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7",
            "ff-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
            "00-00000000000000000000000000000000-00f067aa0ba902b7-01",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-0000000000000000-01",
            "00-4BF92F3577B34DA6A3CE929D0E0E4736-00f067aa0ba902b7-01",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01-extra",
        ] {
            assert!(parse_traceparent(tp).is_none(), "{tp} accepted");
        }
        // A future version may append fields.
        assert!(
            parse_traceparent("01-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01-extra")
                .is_some()
        );
    }

    #[test]
    fn no_trace_without_an_opentelemetry_layer() {
        assert_eq!(current_traceparent(), None);
    }
}
