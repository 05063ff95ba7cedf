//! The events this service reads (stock stream) and writes (incentives stream).

use chrono::{DateTime, TimeZone, Utc};
use prost::Message as _;
use ratemesh_bus::{Delivery, Event};
use ratemesh_core::{Event as CoreEvent, Money, Product, Quantity, Rate, Sku, Velocity};
use ratemesh_proto::v1;
use rust_decimal::Decimal;

/// Kind of the entries this service appends to the incentives stream.
pub const INCENTIVE_CHANGED: &str = "ratemesh.v1.IncentiveChanged";
/// Kind of stock readings on the stock stream.
pub const STOCK_CHANGED: &str = "ratemesh.v1.StockChanged";
/// Kind of product master data on the stock stream.
pub const PRODUCT_CHANGED: &str = "ratemesh.v1.ProductChanged";

/// The entry announcing `incentive`'s `transition`, keyed by its SKU.
pub fn incentive_changed(
    incentive: v1::Incentive,
    transition: v1::IncentiveTransition,
    now: DateTime<Utc>,
) -> Event {
    let key = incentive.sku.clone();
    let message = v1::IncentiveChanged {
        meta: Some(v1::EventMeta {
            event_id: ulid::Ulid::generate().to_string(),
            occurred_at: Some(prost_types::Timestamp {
                seconds: now.timestamp(),
                nanos: i32::try_from(now.timestamp_subsec_nanos()).unwrap_or(0),
            }),
            traceparent: ratemesh_runtime::trace_context::current_traceparent().unwrap_or_default(),
            tracestate: String::new(),
        }),
        incentive: Some(incentive),
        transition: transition as i32,
    };
    Event::new(key, message.encode_to_vec()).with_kind(INCENTIVE_CHANGED)
}

/// Why a stock-stream entry could not be read; it is dead-lettered after retries.
#[derive(Debug)]
pub struct BadEntry(pub String);

fn decimal(field: &str, text: &str) -> Result<Decimal, BadEntry> {
    text.trim()
        .parse::<Decimal>()
        .map_err(|_| BadEntry(format!("{field}: {text:?} is not a decimal")))
}

fn time(field: &str, t: Option<&prost_types::Timestamp>) -> Result<DateTime<Utc>, BadEntry> {
    let t = t.ok_or_else(|| BadEntry(format!("{field}: missing")))?;
    let nanos = u32::try_from(t.nanos).map_err(|_| BadEntry(format!("{field}: bad nanos")))?;
    Utc.timestamp_opt(t.seconds, nanos)
        .single()
        .ok_or_else(|| BadEntry(format!("{field}: out of range")))
}

fn bad<E: std::fmt::Display>(field: &'static str) -> impl Fn(E) -> BadEntry {
    move |e| BadEntry(format!("{field}: {e}"))
}

/// When ingest accepted an entry: its `received_at`, else its `meta.occurred_at`.
fn received_at(
    stamp: Option<&prost_types::Timestamp>,
    meta: Option<&v1::EventMeta>,
) -> Result<DateTime<Utc>, BadEntry> {
    match stamp {
        Some(t) => time("received_at", Some(t)),
        None => time(
            "meta.occurred_at",
            meta.and_then(|m| m.occurred_at.as_ref()),
        ),
    }
}

/// The core event a stock-stream entry carries; `None` for kinds this service ignores.
pub fn decode_stock_entry(d: &Delivery) -> Result<Option<CoreEvent>, BadEntry> {
    match d.kind.as_deref() {
        Some(STOCK_CHANGED) => {
            let m = v1::StockChanged::decode(d.payload.clone())
                .map_err(|e| BadEntry(format!("StockChanged: {e}")))?;
            let u = m.update.ok_or_else(|| BadEntry("update: missing".into()))?;
            let reserved = match u.reserved.as_deref() {
                Some(r) if !r.trim().is_empty() => decimal("update.reserved", r)?,
                _ => Decimal::ZERO,
            };
            let erp_velocity = match u.velocity.as_deref() {
                Some(v) if !v.trim().is_empty() => Some(
                    Velocity::new(decimal("update.velocity", v)?)
                        .map_err(bad("update.velocity"))?,
                ),
                _ => None,
            };
            Ok(Some(CoreEvent::StockObserved {
                sku: Sku::new(u.sku).map_err(bad("update.sku"))?,
                location: u.location,
                on_hand: Quantity::new(decimal("update.on_hand", &u.on_hand)?)
                    .map_err(bad("update.on_hand"))?,
                reserved: Quantity::new(reserved).map_err(bad("update.reserved"))?,
                sequence: u.sequence,
                as_of: time("update.as_of", u.as_of.as_ref())?,
                erp_velocity,
                received_at: Some(received_at(m.received_at.as_ref(), m.meta.as_ref())?),
            }))
        }
        Some(PRODUCT_CHANGED) => {
            let m = v1::ProductChanged::decode(d.payload.clone())
                .map_err(|e| BadEntry(format!("ProductChanged: {e}")))?;
            let p = m
                .product
                .ok_or_else(|| BadEntry("product: missing".into()))?;
            let at = match p.as_of.as_ref() {
                Some(t) => time("product.as_of", Some(t))?,
                None => time(
                    "meta.occurred_at",
                    m.meta.as_ref().and_then(|m| m.occurred_at.as_ref()),
                )?,
            };
            let base_rate = match p.base_rate.as_deref() {
                Some(r) if !r.trim().is_empty() => Some(
                    Rate::new(decimal("product.base_rate", r)?)
                        .map_err(bad("product.base_rate"))?,
                ),
                _ => None,
            };
            Ok(Some(CoreEvent::ProductUpserted {
                sku: Sku::new(p.sku).map_err(bad("product.sku"))?,
                product: Product {
                    category: p.category,
                    price: Money::new(decimal("product.price", &p.price)?)
                        .map_err(bad("product.price"))?,
                    unit_cost: Money::new(decimal("product.unit_cost", &p.unit_cost)?)
                        .map_err(bad("product.unit_cost"))?,
                    base_rate,
                },
                at,
                received_at: Some(received_at(m.received_at.as_ref(), m.meta.as_ref())?),
            }))
        }
        _ => Ok(None),
    }
}
