//! Stream entries as core events: `StockChanged` / `ProductChanged` from ingest on
//! `stock`, `OverrideChanged` on `overrides`, `IncentiveChanged` on `incentives`, routed
//! to one SKU or to a category. Every format is the contract's
//! ([`ratemesh_contract::stock`], [`ratemesh_contract::overrides`],
//! [`ratemesh_contract::incentive`]); this module only routes.
//!
//! Each event carries the instant the engine prices it at (see the engine docs): stock
//! readings and products the time ingest accepted them (`received_at`), overrides and
//! incentives their `meta.occurred_at`. The ERP's `as_of` orders readings and product
//! versions.

use ratemesh_bus::Delivery;
use ratemesh_contract::kinds::{
    INCENTIVE_CHANGED, OVERRIDE_CHANGED, PRODUCT_CHANGED, STOCK_CHANGED,
};
use ratemesh_contract::{incentive, overrides, stock};
use ratemesh_core::{Event, OverrideScope, Sku};

pub use ratemesh_contract::DecodeError;

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

fn override_changed(payload: &[u8]) -> Result<Routed, DecodeError> {
    let (scope, event) = overrides::decode(payload)?;
    Ok(route(&scope, event))
}
