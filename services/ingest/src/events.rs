//! Validated items as the stream events the rates and incentives services consume.

use chrono::{DateTime, Utc};
use prost::Message as _;
use ratemesh_bus::Event;
use ratemesh_proto::v1;

use crate::validate::{ProductItem, StockItem};

/// Type names carried with each entry, so readers of a shared stream can tell them apart.
pub const STOCK_CHANGED: &str = "ratemesh.v1.StockChanged";
/// See [`STOCK_CHANGED`].
pub const PRODUCT_CHANGED: &str = "ratemesh.v1.ProductChanged";

pub(crate) fn timestamp(t: DateTime<Utc>) -> prost_types::Timestamp {
    prost_types::Timestamp {
        seconds: t.timestamp(),
        nanos: t.timestamp_subsec_nanos() as i32,
    }
}

fn meta(now: DateTime<Utc>) -> v1::EventMeta {
    v1::EventMeta {
        event_id: ulid::Ulid::generate().to_string(),
        occurred_at: Some(timestamp(now)),
        traceparent: ratemesh_runtime::trace_context::current_traceparent().unwrap_or_default(),
        tracestate: String::new(),
    }
}

pub(crate) fn stock_changed(
    item: &StockItem,
    source: &str,
    batch_id: &str,
    now: DateTime<Utc>,
) -> Event {
    let message = v1::StockChanged {
        meta: Some(meta(now)),
        update: Some(v1::StockUpdate {
            sku: item.sku.to_string(),
            location: item.location.clone(),
            on_hand: item.on_hand.to_string(),
            reserved: Some(item.reserved.to_string()),
            as_of: Some(timestamp(item.as_of)),
            sequence: item.sequence,
            velocity: item.velocity.map(|v| v.to_string()),
        }),
        source: source.to_owned(),
        batch_id: batch_id.to_owned(),
        received_at: Some(timestamp(now)),
    };
    Event::new(item.sku.as_str(), message.encode_to_vec()).with_kind(STOCK_CHANGED)
}

pub(crate) fn product_changed(
    item: &ProductItem,
    source: &str,
    batch_id: &str,
    now: DateTime<Utc>,
) -> Event {
    let message = v1::ProductChanged {
        meta: Some(meta(now)),
        product: Some(v1::Product {
            sku: item.sku.to_string(),
            category: item.category.clone(),
            price: item.price.to_string(),
            unit_cost: item.unit_cost.to_string(),
            base_rate: item.base_rate.map(|r| r.to_string()),
            currency: item.currency.clone(),
            title: item.title.clone(),
            as_of: item.as_of.map(timestamp),
        }),
        source: source.to_owned(),
        batch_id: batch_id.to_owned(),
        received_at: Some(timestamp(now)),
    };
    Event::new(item.sku.as_str(), message.encode_to_vec()).with_kind(PRODUCT_CHANGED)
}
