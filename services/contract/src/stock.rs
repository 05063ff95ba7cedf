//! The stock stream: `StockChanged` and `ProductChanged`, written by ingest once an ERP
//! push is validated, read as core events by rates and incentives. One encoder, one
//! decoder: adding a field to a stock update is a change to the proto, this module, the
//! producer and the consumers that use it.

use chrono::{DateTime, Utc};
use prost::Message;
use ratemesh_bus::Delivery;
use ratemesh_core::{Event, Money, Product, Quantity, Rate, Sku, Velocity};
use ratemesh_proto::v1;

use crate::DecodeError;
use crate::header::{meta, occurred_at, received_at};
use crate::kinds::{PRODUCT_CHANGED, STOCK_CHANGED};
use crate::time::{required, to_timestamp};

/// A validated stock reading at one location.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StockReading {
    /// The SKU.
    pub sku: Sku,
    /// Location; empty for the SKU's only (default) location.
    pub location: String,
    /// Units on hand.
    pub on_hand: Quantity,
    /// Units reserved for open orders.
    pub reserved: Quantity,
    /// When the ERP took the reading.
    pub as_of: DateTime<Utc>,
    /// The ERP's sequence, increasing per SKU and location.
    pub sequence: u64,
    /// The ERP's own sales velocity, if it sends one.
    pub velocity: Option<Velocity>,
}

impl StockReading {
    /// A reading of `on_hand` units at the SKU's default location, nothing reserved and no
    /// ERP velocity; set the other fields with struct update syntax. Fields added later get
    /// their "not sent" value here, so callers that do not use them need no change.
    pub fn new(sku: Sku, on_hand: Quantity, as_of: DateTime<Utc>, sequence: u64) -> Self {
        Self {
            sku,
            location: String::new(),
            on_hand,
            reserved: Quantity::ZERO,
            as_of,
            sequence,
            velocity: None,
        }
    }
}

/// Validated product master data.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ProductRecord {
    /// The SKU.
    pub sku: Sku,
    /// What the policy needs: category, price, unit cost, base rate.
    pub product: Product,
    /// ISO 4217 currency of the price and cost.
    pub currency: String,
    /// Display title, if sent.
    pub title: Option<String>,
    /// When the ERP says the data changed, if it said.
    pub as_of: Option<DateTime<Utc>>,
}

impl ProductRecord {
    /// `product` of `sku` priced in `currency`, without title or ERP change time; set the
    /// other fields with struct update syntax (as for [`StockReading::new`]).
    pub fn new(sku: Sku, product: Product, currency: impl Into<String>) -> Self {
        Self {
            sku,
            product,
            currency: currency.into(),
            title: None,
            as_of: None,
        }
    }
}

/// Where an accepted push came from and when ingest accepted it.
#[derive(Debug, Clone, Copy)]
pub struct Origin<'a> {
    /// The ERP source (the principal of its key, or the webhook source name).
    pub source: &'a str,
    /// The batch the item arrived in.
    pub batch_id: &'a str,
    /// When ingest accepted the batch: the instant rates prices the SKU at.
    pub received_at: DateTime<Utc>,
}

/// The `stock` stream entry for `reading`, keyed by its SKU.
pub fn stock_changed(reading: &StockReading, origin: Origin<'_>) -> ratemesh_bus::Event {
    let message = v1::StockChanged {
        meta: Some(meta(origin.received_at)),
        update: Some(v1::StockUpdate {
            sku: reading.sku.to_string(),
            location: reading.location.clone(),
            on_hand: reading.on_hand.to_string(),
            reserved: Some(reading.reserved.to_string()),
            as_of: Some(to_timestamp(reading.as_of)),
            sequence: reading.sequence,
            velocity: reading.velocity.map(|v| v.to_string()),
        }),
        source: origin.source.to_owned(),
        batch_id: origin.batch_id.to_owned(),
        received_at: Some(to_timestamp(origin.received_at)),
    };
    ratemesh_bus::Event::new(reading.sku.as_str(), message.encode_to_vec()).with_kind(STOCK_CHANGED)
}

/// The `stock` stream entry for `record`, keyed by its SKU.
pub fn product_changed(record: &ProductRecord, origin: Origin<'_>) -> ratemesh_bus::Event {
    let p = &record.product;
    let message = v1::ProductChanged {
        meta: Some(meta(origin.received_at)),
        product: Some(v1::Product {
            sku: record.sku.to_string(),
            category: p.category.clone(),
            price: p.price.to_string(),
            unit_cost: p.unit_cost.to_string(),
            base_rate: p.base_rate.map(|r| r.to_string()),
            currency: record.currency.clone(),
            title: record.title.clone(),
            as_of: record.as_of.map(to_timestamp),
        }),
        source: origin.source.to_owned(),
        batch_id: origin.batch_id.to_owned(),
        received_at: Some(to_timestamp(origin.received_at)),
    };
    ratemesh_bus::Event::new(record.sku.as_str(), message.encode_to_vec())
        .with_kind(PRODUCT_CHANGED)
}

fn parse<T: std::str::FromStr>(text: &str, field: &str) -> Result<T, DecodeError>
where
    T::Err: std::fmt::Display,
{
    text.trim()
        .parse()
        .map_err(|e| DecodeError::field(field, format!("{e} ({text:?})")))
}

fn optional<T: std::str::FromStr>(text: Option<&str>, field: &str) -> Result<Option<T>, DecodeError>
where
    T::Err: std::fmt::Display,
{
    match text.filter(|t| !t.trim().is_empty()) {
        Some(t) => parse(t, field).map(Some),
        None => Ok(None),
    }
}

/// The core event a `stock` stream entry carries: `StockObserved` or `ProductUpserted`;
/// `None` for kinds this stream's readers do not consume.
pub fn decode(d: &Delivery) -> Result<Option<Event>, DecodeError> {
    match d.kind.as_deref() {
        Some(STOCK_CHANGED) => decode_stock(&d.payload).map(Some),
        Some(PRODUCT_CHANGED) => decode_product(&d.payload).map(Some),
        Some(_) => Ok(None),
        None => Err(DecodeError(format!(
            "entry {} of stream {} has no kind",
            d.id, d.stream
        ))),
    }
}

/// A `StockChanged` payload as `StockObserved`.
pub fn decode_stock(payload: &[u8]) -> Result<Event, DecodeError> {
    let m = v1::StockChanged::decode(payload)
        .map_err(|e| DecodeError(format!("StockChanged does not decode: {e}")))?;
    let u = m
        .update
        .as_ref()
        .ok_or_else(|| DecodeError::field("update", "missing"))?;
    Ok(Event::StockObserved {
        sku: Sku::new(u.sku.clone()).map_err(|e| DecodeError::field("update.sku", e))?,
        location: u.location.clone(),
        on_hand: parse(&u.on_hand, "update.on_hand")?,
        reserved: optional(u.reserved.as_deref(), "update.reserved")?.unwrap_or(Quantity::ZERO),
        sequence: u.sequence,
        as_of: required(u.as_of.as_ref(), "update.as_of")?,
        erp_velocity: optional(u.velocity.as_deref(), "update.velocity")?,
        received_at: Some(received_at(m.received_at.as_ref(), m.meta.as_ref())?),
    })
}

/// A `ProductChanged` payload as `ProductUpserted`; product versions are ordered by the
/// ERP's `as_of`, else by when the event happened.
pub fn decode_product(payload: &[u8]) -> Result<Event, DecodeError> {
    let m = v1::ProductChanged::decode(payload)
        .map_err(|e| DecodeError(format!("ProductChanged does not decode: {e}")))?;
    let p = m
        .product
        .as_ref()
        .ok_or_else(|| DecodeError::field("product", "missing"))?;
    if p.category.trim().is_empty() {
        return Err(DecodeError::field("product.category", "must not be empty"));
    }
    let at = match p.as_of.as_ref() {
        Some(t) => required(Some(t), "product.as_of")?,
        None => occurred_at(m.meta.as_ref())?,
    };
    Ok(Event::ProductUpserted {
        sku: Sku::new(p.sku.clone()).map_err(|e| DecodeError::field("product.sku", e))?,
        product: Product {
            category: p.category.clone(),
            price: parse::<Money>(&p.price, "product.price")?,
            unit_cost: parse::<Money>(&p.unit_cost, "product.unit_cost")?,
            base_rate: optional::<Rate>(p.base_rate.as_deref(), "product.base_rate")?,
        },
        at,
        received_at: Some(received_at(m.received_at.as_ref(), m.meta.as_ref())?),
    })
}

#[cfg(test)]
mod tests {
    use ratemesh_bus::{Delivery, EntryId};

    use super::*;

    fn delivery(event: ratemesh_bus::Event) -> Delivery {
        Delivery {
            stream: "stock".into(),
            partition: 0,
            id: EntryId { ms: 1, seq: 0 },
            key: event.key.clone(),
            kind: event.kind.clone(),
            payload: event.payload.clone(),
            traceparent: None,
            delivery_count: 1,
        }
    }

    fn at(s: i64) -> DateTime<Utc> {
        DateTime::from_timestamp(1_700_000_000 + s, 0).unwrap()
    }

    #[test]
    fn what_ingest_writes_readers_decode_as_the_same_core_events() {
        let origin = Origin {
            source: "erp",
            batch_id: "b-1",
            received_at: at(60),
        };
        let reading = StockReading {
            sku: Sku::new("SKU-1").unwrap(),
            location: "dc-east".into(),
            on_hand: "120".parse().unwrap(),
            reserved: "5".parse().unwrap(),
            as_of: at(0),
            sequence: 7,
            velocity: Some("12.5".parse().unwrap()),
        };
        let event = decode(&delivery(stock_changed(&reading, origin)))
            .unwrap()
            .unwrap();
        assert_eq!(
            event,
            Event::StockObserved {
                sku: reading.sku.clone(),
                location: "dc-east".into(),
                on_hand: reading.on_hand,
                reserved: reading.reserved,
                sequence: 7,
                as_of: at(0),
                erp_velocity: reading.velocity,
                received_at: Some(at(60)),
            }
        );
        assert_eq!(event.priced_at(), at(60));

        let record = ProductRecord {
            sku: Sku::new("SKU-1").unwrap(),
            product: Product {
                category: "home".into(),
                price: "100".parse().unwrap(),
                unit_cost: "40".parse().unwrap(),
                base_rate: Some("0.06".parse().unwrap()),
            },
            currency: "USD".into(),
            title: None,
            as_of: None,
        };
        let event = decode(&delivery(product_changed(&record, origin)))
            .unwrap()
            .unwrap();
        assert_eq!(
            event,
            Event::ProductUpserted {
                sku: record.sku.clone(),
                product: record.product.clone(),
                at: at(60),
                received_at: Some(at(60)),
            }
        );
    }

    #[test]
    fn a_bad_entry_names_its_field() {
        let origin = Origin {
            source: "erp",
            batch_id: "b-1",
            received_at: at(0),
        };
        let mut record = ProductRecord {
            sku: Sku::new("SKU-1").unwrap(),
            product: Product {
                category: " ".into(),
                price: "100".parse().unwrap(),
                unit_cost: "40".parse().unwrap(),
                base_rate: None,
            },
            currency: "USD".into(),
            title: None,
            as_of: None,
        };
        let err = decode(&delivery(product_changed(&record, origin))).unwrap_err();
        assert_eq!(err.0, "product.category: must not be empty");
        record.product.category = "home".into();
        let mut entry = delivery(product_changed(&record, origin));
        entry.payload = bytes::Bytes::from_static(b"\xff\xff");
        assert!(
            decode(&entry)
                .unwrap_err()
                .0
                .starts_with("ProductChanged does not decode")
        );
        entry.kind = Some("ratemesh.v1.SomethingElse".into());
        assert_eq!(decode(&entry), Ok(None));
    }
}
