//! One archived stream entry: the entry exactly as the stream carried it (stream,
//! partition, id, kind, key and the protobuf payload), plus the instant it happened, which
//! decides its day file.
//!
//! The payload is kept encoded rather than decoded into an archive-only shape: reading it
//! back goes through the contract's own decoders, so a replay of the archive sees exactly
//! what rates and incentives saw, and a field added to an event later is archived without
//! a change here.

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD;
use bytes::Bytes;
use chrono::{DateTime, Utc};
use ratemesh_bus::{Delivery, EntryId};
use ratemesh_contract::kinds::{
    INCENTIVE_CHANGED, OVERRIDE_CHANGED, PRODUCT_CHANGED, STOCK_CHANGED,
};
use ratemesh_contract::{DecodeError, incentive, overrides, stock};
use ratemesh_core::Event;
use serde::{Deserialize, Serialize};

/// The event kinds the archive keeps: the inputs a replay needs.
pub const ARCHIVED_KINDS: [&str; 4] = [
    STOCK_CHANGED,
    PRODUCT_CHANGED,
    OVERRIDE_CHANGED,
    INCENTIVE_CHANGED,
];

/// The feed an archived kind is filed under: day files are split by feed, so the small
/// ones (products, overrides, incentives) can be read for a whole year without
/// decompressing a year of stock readings.
pub fn feed(kind: &str) -> Option<&'static str> {
    match kind {
        STOCK_CHANGED => Some("stock"),
        PRODUCT_CHANGED => Some("products"),
        OVERRIDE_CHANGED => Some("overrides"),
        INCENTIVE_CHANGED => Some("incentives"),
        _ => None,
    }
}

/// The feeds, in the order [`feed`] lists them.
pub const FEEDS: [&str; 4] = ["stock", "products", "overrides", "incentives"];

/// One line of a day file.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Record {
    /// The stream the entry was read from.
    pub stream: String,
    /// Its partition.
    pub partition: u32,
    /// Its id within the partition; with `stream` and `partition`, the event id a
    /// redelivered entry is recognised by.
    pub id: String,
    /// The event kind.
    pub kind: String,
    /// The partition key (the SKU, or the override's scope key).
    pub key: String,
    /// When it happened: ingest's `received_at` for stock and products, the change's
    /// instant for overrides and incentives. Its UTC day names the day file.
    pub at: DateTime<Utc>,
    /// The protobuf payload, base64.
    pub payload: String,
}

/// The identity of an archived event, the same on every redelivery.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct EventId {
    /// The stream.
    pub stream: String,
    /// The partition.
    pub partition: u32,
    /// The entry id.
    pub id: EntryId,
}

impl Record {
    /// The record of `delivery`: `Ok(None)` for a kind the archive does not keep, an error
    /// for an entry the services could not decode either (it is dead-lettered, as it is
    /// for them).
    pub fn of(delivery: &Delivery) -> Result<Option<Record>, DecodeError> {
        let Some(kind) = delivery.kind.as_deref() else {
            return Err(DecodeError(format!(
                "entry {} of stream {} has no kind",
                delivery.id, delivery.stream
            )));
        };
        if !ARCHIVED_KINDS.contains(&kind) {
            return Ok(None);
        }
        let event = decode(kind, &delivery.payload)?;
        Ok(Some(Record {
            stream: delivery.stream.clone(),
            partition: delivery.partition,
            id: delivery.id.to_string(),
            kind: kind.to_owned(),
            key: delivery.key.clone(),
            at: event.priced_at(),
            payload: STANDARD.encode(&delivery.payload),
        }))
    }

    /// The protobuf payload.
    pub fn payload(&self) -> Result<Bytes, DecodeError> {
        STANDARD
            .decode(self.payload.as_bytes())
            .map(Bytes::from)
            .map_err(|e| DecodeError::field("payload", format!("not base64: {e}")))
    }

    /// The core event, decoded as the reading services decode it.
    pub fn event(&self) -> Result<Event, DecodeError> {
        decode(&self.kind, &self.payload()?)
    }

    /// The feed the record is filed under.
    pub fn feed(&self) -> &'static str {
        feed(&self.kind).unwrap_or("other")
    }

    /// The event id.
    pub fn event_id(&self) -> Result<EventId, DecodeError> {
        Ok(EventId {
            stream: self.stream.clone(),
            partition: self.partition,
            id: self
                .id
                .parse()
                .map_err(|e| DecodeError::field("id", format!("{e}")))?,
        })
    }
}

/// The core event of an archived kind's payload.
fn decode(kind: &str, payload: &[u8]) -> Result<Event, DecodeError> {
    match kind {
        STOCK_CHANGED => stock::decode_stock(payload),
        PRODUCT_CHANGED => stock::decode_product(payload),
        OVERRIDE_CHANGED => overrides::decode(payload).map(|(_, event)| event),
        INCENTIVE_CHANGED => incentive::decode(payload),
        other => Err(DecodeError::field(
            "kind",
            format!("{other:?} is not an archived kind"),
        )),
    }
}
