//! Stream entries as core events: `StockChanged` / `ProductChanged` from ingest on
//! `stock`, `OverrideChanged` on `overrides`, `IncentiveChanged` on `incentives`, routed
//! to one SKU or to a category. The stock and incentive formats are the contract's
//! ([`ratemesh_contract::stock`], [`ratemesh_contract::incentive`]); override changes are
//! this service's own stream.
//!
//! Each event carries the instant the engine prices it at (see the engine docs): stock
//! readings and products the time ingest accepted them (`received_at`), overrides and
//! incentives their `meta.occurred_at`. The ERP's `as_of` orders readings and product
//! versions.

use prost::Message;
use ratemesh_bus::Delivery;
use ratemesh_contract::header::occurred_at;
use ratemesh_contract::kinds::{
    INCENTIVE_CHANGED, OVERRIDE_CHANGED, PRODUCT_CHANGED, STOCK_CHANGED,
};
use ratemesh_contract::{incentive, stock};
use ratemesh_core::{Event, OverrideScope, Sku};
use ratemesh_proto::v1;

pub use ratemesh_contract::DecodeError;

use crate::overrides::wire::override_from_stored;

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

fn bad(what: impl Into<String>) -> DecodeError {
    DecodeError(what.into())
}

/// Decodes one delivery of any of the three streams.
pub fn decode(d: &Delivery) -> Result<Routed, DecodeError> {
    match d.kind.as_deref() {
        Some(STOCK_CHANGED) => sku_event(stock::decode_stock(&d.payload)?),
        Some(PRODUCT_CHANGED) => sku_event(stock::decode_product(&d.payload)?),
        Some(OVERRIDE_CHANGED) => override_changed(&d.payload),
        Some(INCENTIVE_CHANGED) => sku_event(incentive::decode(&d.payload)?),
        Some(_) => Ok(Routed::Ignore),
        None => Err(bad(format!(
            "entry {} of stream {} has no kind",
            d.id, d.stream
        ))),
    }
}

fn sku_event(event: Event) -> Result<Routed, DecodeError> {
    let sku = event
        .sku()
        .cloned()
        .ok_or_else(|| bad("the event names no sku"))?;
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
    let at = occurred_at(m.meta.as_ref())?;
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
