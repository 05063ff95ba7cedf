//! Validated items as the stock-stream entries rates and incentives consume; the entry
//! format itself is the contract's ([`ratemesh_contract::stock`]).

use chrono::{DateTime, Utc};
use ratemesh_bus::Event;
use ratemesh_contract::stock::{self, Origin, ProductRecord, StockReading};
use ratemesh_core::{Money, Product, Quantity, Rate, Velocity};
use rust_decimal::Decimal;

use crate::validate::{ProductItem, StockItem};

/// Kind of products on the stock stream.
pub use ratemesh_contract::kinds::PRODUCT_CHANGED;
/// Kind of stock readings on the stock stream.
pub use ratemesh_contract::kinds::STOCK_CHANGED;

// `validate` accepted only amounts that are non-negative and in range, and rates in
// 0..=1, so the conversions below cannot fail; a value that did would be clamped to zero
// rather than panic in the request path.
fn quantity(d: Decimal) -> Quantity {
    Quantity::new(d).unwrap_or(Quantity::ZERO)
}

fn money(d: Decimal) -> Money {
    Money::new(d).unwrap_or(Money::ZERO)
}

/// The stock-stream entry for a validated stock update, as ingest appends it.
pub fn stock_changed(item: &StockItem, source: &str, batch_id: &str, now: DateTime<Utc>) -> Event {
    let reading = StockReading {
        sku: item.sku.clone(),
        location: item.location.clone(),
        on_hand: quantity(item.on_hand),
        reserved: quantity(item.reserved),
        as_of: item.as_of,
        sequence: item.sequence,
        velocity: item.velocity.and_then(|v| Velocity::new(v).ok()),
    };
    stock::stock_changed(
        &reading,
        Origin {
            source,
            batch_id,
            received_at: now,
        },
    )
}

/// The stock-stream entry for a validated product, as ingest appends it.
pub fn product_changed(
    item: &ProductItem,
    source: &str,
    batch_id: &str,
    now: DateTime<Utc>,
) -> Event {
    let record = ProductRecord {
        sku: item.sku.clone(),
        product: Product {
            category: item.category.clone(),
            price: money(item.price),
            unit_cost: money(item.unit_cost),
            base_rate: item.base_rate.and_then(|r| Rate::new(r).ok()),
        },
        currency: item.currency.clone(),
        title: item.title.clone(),
        as_of: item.as_of,
    };
    stock::product_changed(
        &record,
        Origin {
            source,
            batch_id,
            received_at: now,
        },
    )
}
