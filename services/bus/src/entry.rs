//! What goes into a stream and what comes out of it.

use std::fmt;
use std::str::FromStr;

use bytes::Bytes;

use crate::error::BusError;

/// The id of an entry within one stream partition: `<milliseconds>-<sequence>`, the Redis
/// Streams format, used by both backends so cursors and ids look the same everywhere.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
pub struct EntryId {
    /// Milliseconds since the Unix epoch when the entry was appended (never goes backwards).
    pub ms: u64,
    /// Sequence number among entries appended in the same millisecond.
    pub seq: u64,
}

impl EntryId {
    /// The id before every entry: reading "after" it reads the whole partition.
    pub const ZERO: EntryId = EntryId { ms: 0, seq: 0 };

    /// Builds an id from its two parts.
    pub const fn new(ms: u64, seq: u64) -> Self {
        EntryId { ms, seq }
    }

    /// The smallest id greater than this one.
    pub fn successor(self) -> EntryId {
        if self.seq == u64::MAX {
            EntryId::new(self.ms.saturating_add(1), 0)
        } else {
            EntryId::new(self.ms, self.seq + 1)
        }
    }
}

impl fmt::Display for EntryId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}-{}", self.ms, self.seq)
    }
}

impl FromStr for EntryId {
    type Err = BusError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let bad = || BusError::InvalidInput(format!("entry id {s:?} is not <ms>-<seq>"));
        let (ms, seq) = s.split_once('-').ok_or_else(bad)?;
        Ok(EntryId {
            ms: ms.parse().map_err(|_| bad())?,
            seq: seq.parse().map_err(|_| bad())?,
        })
    }
}

/// An event to publish.
///
/// `key` picks the partition (see [`crate::partition`]); entries of one key keep their
/// order. `traceparent` is filled from the current tracing span when left `None`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Event {
    /// Partition key, usually the SKU.
    pub key: String,
    /// Type name of the payload (e.g. `"ratemesh.v1.StockChanged"`), for consumers that
    /// multiplex several message types on one stream.
    pub kind: Option<String>,
    /// The encoded message (services put protobuf here).
    pub payload: Bytes,
    /// W3C `traceparent` of the span that produced the event.
    pub traceparent: Option<String>,
}

impl Event {
    /// An event for `key` carrying `payload`, with no type name and the current trace.
    pub fn new(key: impl Into<String>, payload: impl Into<Bytes>) -> Self {
        Event {
            key: key.into(),
            kind: None,
            payload: payload.into(),
            traceparent: None,
        }
    }

    /// Sets the type name.
    pub fn with_kind(mut self, kind: impl Into<String>) -> Self {
        self.kind = Some(kind.into());
        self
    }

    /// Sets the traceparent explicitly instead of taking it from the current span.
    pub fn with_traceparent(mut self, traceparent: impl Into<String>) -> Self {
        self.traceparent = Some(traceparent.into());
        self
    }
}

/// Where a published event landed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Appended {
    /// The partition of the event's key.
    pub partition: u32,
    /// The id the backend assigned.
    pub id: EntryId,
}

/// An entry handed to a consumer or a tail reader.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Delivery {
    /// The stream name (e.g. `"stock"`).
    pub stream: String,
    /// The partition the entry lives in.
    pub partition: u32,
    /// The entry id within the partition; together with `stream` and `partition` it is a
    /// stable event id, the same on every redelivery.
    pub id: EntryId,
    /// The partition key the event was published with.
    pub key: String,
    /// Type name given at publish time.
    pub kind: Option<String>,
    /// The payload bytes.
    pub payload: Bytes,
    /// The `traceparent` recorded at publish time.
    pub traceparent: Option<String>,
    /// How many times this entry has been delivered to the group, this time included
    /// (1 on first delivery). Tail reads, which have no group, report 0.
    pub delivery_count: u64,
}

impl Delivery {
    /// A CONSUMER span for handling this entry alone that continues the producer's
    /// trace. A consumer of batches uses [`crate::trace_context::BatchSpans`] instead.
    ///
    /// Handlers run inside it: `handle(d).instrument(d.span()).await`.
    pub fn span(&self) -> tracing::Span {
        let span = tracing::info_span!(
            "bus.consume",
            otel.name = %format_args!("process {}", self.stream),
            otel.kind = "consumer",
            messaging.system = crate::trace_context::MESSAGING_SYSTEM,
            messaging.destination.name = %self.stream,
            messaging.operation = "process",
            stream = %self.stream,
            partition = self.partition,
            id = %self.id,
            key = %self.key,
            delivery_count = self.delivery_count,
        );
        if let Some(traceparent) = &self.traceparent {
            crate::trace_context::set_parent_from_traceparent(&span, traceparent);
        }
        span
    }

    /// The event as it was published (for republishing or forwarding).
    pub fn to_event(&self) -> Event {
        Event {
            key: self.key.clone(),
            kind: self.kind.clone(),
            payload: self.payload.clone(),
            traceparent: self.traceparent.clone(),
        }
    }
}

/// Names one dead letter: the partition of the dead-letter stream and the id in it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct DeadLetterRef {
    /// The partition of the original entry.
    pub partition: u32,
    /// The id of the dead-letter entry (not of the original entry).
    pub id: EntryId,
}

/// An entry that failed too often and was parked, with the error that stopped it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DeadLetter {
    /// Where it is parked; pass this to replay or delete it.
    pub at: DeadLetterRef,
    /// The stream it came from.
    pub stream: String,
    /// The consumer group that gave up on it.
    pub group: String,
    /// The id it had in the source stream partition.
    pub source_id: EntryId,
    /// How many times it was delivered before being parked.
    pub delivery_count: u64,
    /// The last error a handler reported for it (or why it was parked).
    pub error: String,
    /// When it was parked, in milliseconds since the Unix epoch.
    pub dead_at_ms: u64,
    /// The original event (key, kind, payload, traceparent).
    pub event: Event,
}

/// What [`crate::Consumer::nack`] did with a failed entry.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum NackOutcome {
    /// It stays pending with the error recorded and is redelivered once it has been idle
    /// for the reclaim threshold.
    WillRetry,
    /// It reached the maximum number of deliveries and was moved to the dead-letter stream.
    DeadLettered,
    /// Another consumer has claimed it meanwhile (or it was acked); nothing was changed.
    NotOwner,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn entry_ids_print_parse_and_order() {
        let id: EntryId = "1700000000000-7".parse().unwrap();
        assert_eq!(id, EntryId::new(1_700_000_000_000, 7));
        assert_eq!(id.to_string(), "1700000000000-7");
        assert!(EntryId::new(1, 9) < EntryId::new(2, 0));
        assert_eq!(EntryId::new(1, 9).successor(), EntryId::new(1, 10));
        assert!("12".parse::<EntryId>().is_err());
        assert!("a-1".parse::<EntryId>().is_err());
    }
}
