//! Stream entries as core events: `StockChanged` / `ProductChanged` from ingest on
//! `stock`, `OverrideChanged` on `overrides`, `IncentiveChanged` on `incentives`.
//!
//! Each event carries the instant the engine prices it at (see the engine docs): stock
//! readings and products the time ingest accepted them (`received_at`, else
//! `meta.occurred_at` for entries written before that field), overrides and incentives
//! their `meta.occurred_at`. The ERP's `as_of` orders readings and product versions.

use chrono::{DateTime, Utc};
use prost::Message;
use ratemesh_bus::Delivery;
use ratemesh_core::{CloseReason, Event, Money, OverrideScope, Product, Quantity, Sku};
use ratemesh_proto::v1;

use crate::convert::{from_timestamp, incentive_from_proto, override_from_stored};

/// Type name of ingest's stock readings.
pub const STOCK_CHANGED: &str = "ratemesh.v1.StockChanged";
/// Type name of ingest's product upserts.
pub const PRODUCT_CHANGED: &str = "ratemesh.v1.ProductChanged";
/// Type name of override changes.
pub const OVERRIDE_CHANGED: &str = "ratemesh.v1.OverrideChanged";
/// Type name of incentive changes.
pub const INCENTIVE_CHANGED: &str = "ratemesh.v1.IncentiveChanged";

/// Where a decoded event goes.
#[derive(Debug, Clone, PartialEq)]
pub enum Routed {
    /// Fold into one SKU's state.
    Sku(Sku, Event),
    /// A category override was set or cleared: fold into the category book and recompute
    /// the category's SKUs.
    Category(String, Event),
    /// Nothing for the rates service (an entry kind it does not consume).
    Ignore,
}

/// A payload that cannot be decoded: retrying will not help, so it is dead-lettered
/// after the bus's maximum deliveries with this text.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct DecodeError(pub String);

fn bad(what: impl Into<String>) -> DecodeError {
    DecodeError(what.into())
}

fn time(t: Option<&prost_types::Timestamp>, field: &str) -> Result<DateTime<Utc>, DecodeError> {
    t.and_then(from_timestamp)
        .ok_or_else(|| bad(format!("{field}: missing or out of range")))
}

fn parse<T: std::str::FromStr>(text: &str, field: &str) -> Result<T, DecodeError>
where
    T::Err: std::fmt::Display,
{
    text.trim()
        .parse()
        .map_err(|e| bad(format!("{field}: {e} ({text:?})")))
}

/// When ingest accepted an entry: its `received_at`, else (entries written before that
/// field existed) its `meta.occurred_at`, which ingest set to the same instant.
fn received_at(
    stamp: Option<&prost_types::Timestamp>,
    meta: Option<&v1::EventMeta>,
) -> Result<DateTime<Utc>, DecodeError> {
    match stamp {
        Some(t) => time(Some(t), "received_at"),
        None => time(
            meta.and_then(|m| m.occurred_at.as_ref()),
            "meta.occurred_at",
        ),
    }
}

/// Decodes one delivery of any of the three streams.
pub fn decode(d: &Delivery) -> Result<Routed, DecodeError> {
    match d.kind.as_deref() {
        Some(STOCK_CHANGED) => stock(&d.payload),
        Some(PRODUCT_CHANGED) => product(&d.payload),
        Some(OVERRIDE_CHANGED) => override_changed(&d.payload),
        Some(INCENTIVE_CHANGED) => incentive(&d.payload),
        Some(_) => Ok(Routed::Ignore),
        None => Err(bad(format!(
            "entry {} of stream {} has no kind",
            d.id, d.stream
        ))),
    }
}

fn stock(payload: &[u8]) -> Result<Routed, DecodeError> {
    let m = v1::StockChanged::decode(payload)
        .map_err(|e| bad(format!("StockChanged does not decode: {e}")))?;
    let u = m.update.ok_or_else(|| bad("update: missing"))?;
    let sku = Sku::new(u.sku.clone()).map_err(|e| bad(format!("update.sku: {e}")))?;
    let on_hand: Quantity = parse(&u.on_hand, "update.on_hand")?;
    let reserved: Quantity = match u.reserved.as_deref().filter(|r| !r.trim().is_empty()) {
        Some(r) => parse(r, "update.reserved")?,
        None => Quantity::ZERO,
    };
    let erp_velocity = match u.velocity.as_deref().filter(|v| !v.trim().is_empty()) {
        Some(v) => Some(parse(v, "update.velocity")?),
        None => None,
    };
    let event = Event::StockObserved {
        sku: sku.clone(),
        location: u.location,
        on_hand,
        reserved,
        sequence: u.sequence,
        as_of: time(u.as_of.as_ref(), "update.as_of")?,
        erp_velocity,
        received_at: Some(received_at(m.received_at.as_ref(), m.meta.as_ref())?),
    };
    Ok(Routed::Sku(sku, event))
}

fn product(payload: &[u8]) -> Result<Routed, DecodeError> {
    let m = v1::ProductChanged::decode(payload)
        .map_err(|e| bad(format!("ProductChanged does not decode: {e}")))?;
    let p = m.product.ok_or_else(|| bad("product: missing"))?;
    let sku = Sku::new(p.sku.clone()).map_err(|e| bad(format!("product.sku: {e}")))?;
    if p.category.trim().is_empty() {
        return Err(bad("product.category: must not be empty"));
    }
    let price: Money = parse(&p.price, "product.price")?;
    let unit_cost: Money = parse(&p.unit_cost, "product.unit_cost")?;
    let base_rate = match p.base_rate.as_deref().filter(|r| !r.trim().is_empty()) {
        Some(r) => Some(parse(r, "product.base_rate")?),
        None => None,
    };
    let at = match p.as_of.as_ref() {
        Some(t) => time(Some(t), "product.as_of")?,
        None => time(
            m.meta.as_ref().and_then(|m| m.occurred_at.as_ref()),
            "meta.occurred_at",
        )?,
    };
    let event = Event::ProductUpserted {
        sku: sku.clone(),
        product: Product {
            category: p.category,
            price,
            unit_cost,
            base_rate,
        },
        at,
        received_at: Some(received_at(m.received_at.as_ref(), m.meta.as_ref())?),
    };
    Ok(Routed::Sku(sku, event))
}

fn route(scope: &OverrideScope, event: Event) -> Routed {
    match scope {
        OverrideScope::Sku(s) => Routed::Sku(s.clone(), event),
        OverrideScope::Category(c) => Routed::Category(c.clone(), event),
    }
}

/// The core event an `OverrideChanged` stands for.
pub fn override_event(m: &v1::OverrideChanged) -> Result<(OverrideScope, Event), DecodeError> {
    let at = time(
        m.meta.as_ref().and_then(|m| m.occurred_at.as_ref()),
        "meta.occurred_at",
    )?;
    let action = v1::OverrideAction::try_from(m.action).unwrap_or(v1::OverrideAction::Unspecified);
    let subject = m
        .after
        .as_ref()
        .or(m.before.as_ref())
        .ok_or_else(|| bad("after: missing"))?;
    let value = override_from_stored(subject)
        .ok_or_else(|| bad(format!("override {:?} does not decode", subject.id)))?;
    let scope = value.scope.clone();
    let event = match action {
        v1::OverrideAction::Set => Event::OverrideSet { value, at },
        v1::OverrideAction::Replace | v1::OverrideAction::Clear | v1::OverrideAction::Expire => {
            Event::OverrideCleared {
                id: value.id,
                scope: scope.clone(),
                at,
            }
        }
        v1::OverrideAction::Unspecified => return Err(bad("action: unspecified")),
    };
    Ok((scope, event))
}

fn override_changed(payload: &[u8]) -> Result<Routed, DecodeError> {
    let m = v1::OverrideChanged::decode(payload)
        .map_err(|e| bad(format!("OverrideChanged does not decode: {e}")))?;
    let (scope, event) = override_event(&m)?;
    Ok(route(&scope, event))
}

fn incentive(payload: &[u8]) -> Result<Routed, DecodeError> {
    let m = v1::IncentiveChanged::decode(payload)
        .map_err(|e| bad(format!("IncentiveChanged does not decode: {e}")))?;
    let at = time(
        m.meta.as_ref().and_then(|m| m.occurred_at.as_ref()),
        "meta.occurred_at",
    )?;
    let p = m.incentive.ok_or_else(|| bad("incentive: missing"))?;
    let incentive = incentive_from_proto(&p).map_err(bad)?;
    let sku = incentive.sku.clone();
    let transition = v1::IncentiveTransition::try_from(m.transition)
        .unwrap_or(v1::IncentiveTransition::Unspecified);
    let event = match transition {
        v1::IncentiveTransition::Opened => Event::IncentiveOpened { incentive, at },
        v1::IncentiveTransition::Extended => Event::IncentiveChanged { incentive, at },
        v1::IncentiveTransition::Ended => Event::IncentiveClosed {
            sku: sku.clone(),
            id: incentive.id,
            reason: match v1::IncentiveEndReason::try_from(p.end_reason) {
                Ok(v1::IncentiveEndReason::SoldThrough) => CloseReason::SoldThrough,
                Ok(v1::IncentiveEndReason::BudgetExhausted) => CloseReason::BudgetExhausted,
                Ok(v1::IncentiveEndReason::Cancelled) => CloseReason::Cancelled,
                _ => CloseReason::Expired,
            },
            at,
        },
        v1::IncentiveTransition::Unspecified => return Err(bad("transition: unspecified")),
    };
    Ok(Routed::Sku(sku, event))
}
