//! Protobuf messages for the core per-SKU state, shared by the services that store it in
//! a compact binary form: an exact decimal, an instant, and [`SkuState`] with everything
//! under it (product, stock per location, velocity, overrides, incentive), with their
//! conversions to and from the core types.
//!
//! The rates service's engine record and the incentives service's SKU record embed these
//! messages; each documents its full schema. The rules they share:
//!
//! - **Decimals** ([`WireDecimal`], `Decimal` in the schemas) are
//!   `{ sint64 units = 1; uint32 scale = 2; string text = 3 }`, the value
//!   `units × 10^−scale`, so the scale survives (`0.060` stays `0.060`). A mantissa that
//!   does not fit 64 bits is written as its exact decimal text in `text` instead. A zero's
//!   sign is not kept (rust_decimal clears it itself, and JSON did not keep it either). A
//!   decimal field that is not optional in the core type is left out when it is a plain
//!   `0` ([`decimal_or_absent`]); an optional one is written whenever present.
//! - **Instants** ([`Timestamp`]) are `{ sint64 seconds = 1; uint32 nanos = 2 }` since the
//!   Unix epoch, to the nanosecond over chrono's whole range (`nanos` reaches
//!   1,999,999,999 inside a leap second, as chrono represents it).
//! - **Maps** are repeated entries, one per key, in key order; on decode a later entry
//!   for the same key wins.
//! - An incentive's SKU is written only when it differs from the enclosing state's.
//!
//! ```proto
//! message SkuState { string sku = 1; Product product = 2; Timestamp product_at = 3;
//!   repeated StockEntry stock = 4; Decimal available = 5; Velocity velocity = 6;
//!   OverrideBook overrides = 7; Incentive incentive = 8; Timestamp incentive_at = 9;
//!   Timestamp last_tick_at = 10; }
//! message Product { string category = 1; Decimal price = 2; Decimal unit_cost = 3;
//!   Decimal base_rate = 4; }
//! message StockEntry { string location = 1; Decimal on_hand = 2; Decimal reserved = 3;
//!   uint64 sequence = 4; Timestamp as_of = 5; }
//! message Velocity { int64 half_life_secs = 1; int64 erp_max_age_secs = 2;
//!   Timestamp anchor_at = 3; Decimal level = 4; Decimal pending = 5; Decimal estimate = 6;
//!   ErpVelocity erp = 7; }
//! message ErpVelocity { Decimal value = 1; Timestamp as_of = 2; }
//! message OverrideBook { repeated Override overrides = 1;
//!   repeated OverrideEventAt last_event_at = 2; }
//! message OverrideEventAt { string id = 1; Timestamp at = 2; }
//! message Override { string id = 1; oneof scope { string sku = 2; string category = 3; }
//!   oneof kind { Decimal pin = 4; Decimal floor = 5; Decimal cap = 6;
//!   Decimal multiplier = 7; Unit exclude = 8; } Timestamp starts_at = 9;
//!   Timestamp ends_at = 10; string reason = 11; string author = 12; }
//! message Incentive { string id = 1; string sku = 2; string category = 3;
//!   Decimal bonus = 4; Timestamp opened_at = 5; Timestamp ends_at = 6;
//!   uint32 extensions = 7; Decimal budget_spend = 8; Decimal budget_units = 9;
//!   Decimal spent = 10; Decimal units_sold = 11; bool cancel_requested = 12;
//!   bool manual = 13; }
//! message Decimal { sint64 units = 1; uint32 scale = 2; string text = 3; }
//! message Timestamp { sint64 seconds = 1; uint32 nanos = 2; }
//! message Unit {}
//! ```
//!
//! Encoding never fails. Decoding checks what the core types check on construction (a
//! SKU's alphabet, a rate within `0..=1`, non-negative quantities and money, times within
//! chrono's range) and fails with the path of the first field that is wrong, relative to
//! the message converted (callers prefix the path of the field that holds it).

use std::collections::BTreeMap;

use chrono::{DateTime, Utc};
use ratemesh_core::state::OverrideBook;
use ratemesh_core::{
    ErpVelocity, Money, OverrideKind, OverrideScope, Quantity, Rate, Sku, StockLevel, Velocity,
    VelocityEstimator, VelocityParts,
};
use rust_decimal::Decimal;

/// Why a decoded message is not a valid value: the field's path and what is wrong.
pub type Invalid = String;

type Result<T> = std::result::Result<T, Invalid>;

/// First byte of a stored record in the binary form (the rate engine's `engine` field,
/// the incentives service's `record` field): a JSON text never starts with it.
pub const FORMAT_PROTOBUF: u8 = 0x01;

/// Why a stored record could not be read.
#[derive(Debug, thiserror::Error)]
pub enum RecordError {
    /// The field is empty.
    #[error("empty")]
    Empty,
    /// The first byte names no format this release reads.
    #[error("unknown format byte {0:#04x}")]
    UnknownFormat(u8),
    /// The binary form is not a valid protobuf message.
    #[error("protobuf: {0}")]
    Protobuf(#[from] prost::DecodeError),
    /// The binary form holds a value its field does not allow (path and problem).
    #[error("{0}")]
    Invalid(String),
    /// The JSON form of an earlier release does not parse.
    #[error("json: {0}")]
    Json(#[from] serde_json::Error),
}

/// Reads a stored record: [`FORMAT_PROTOBUF`] and message `M`, turned into the record by
/// `into`, or the JSON an earlier release wrote.
pub fn decode_stored<M, T>(
    bytes: &[u8],
    into: impl FnOnce(M) -> Result<T>,
) -> std::result::Result<T, RecordError>
where
    M: prost::Message + Default,
    T: serde::de::DeserializeOwned,
{
    match bytes.first() {
        Some(&FORMAT_PROTOBUF) => into(M::decode(&bytes[1..])?).map_err(RecordError::Invalid),
        Some(b'{') => Ok(serde_json::from_slice(bytes)?),
        Some(&other) => Err(RecordError::UnknownFormat(other)),
        None => Err(RecordError::Empty),
    }
}

/// The binary form of a stored record: [`FORMAT_PROTOBUF`], then `message`.
pub fn encode_stored(message: &impl prost::Message) -> Vec<u8> {
    let mut out = Vec::with_capacity(1 + message.encoded_len());
    out.push(FORMAT_PROTOBUF);
    // A `Vec` has room for any message: encoding into it cannot fail.
    message.encode(&mut out).unwrap_or_default();
    out
}

/// An exact decimal: `units × 10^−scale`, or its text when the mantissa does not fit 64
/// bits.
#[derive(Clone, PartialEq, prost::Message)]
pub struct WireDecimal {
    #[prost(sint64, tag = "1")]
    pub units: i64,
    #[prost(uint32, tag = "2")]
    pub scale: u32,
    #[prost(string, tag = "3")]
    pub text: String,
}

/// An instant: seconds since the Unix epoch and the nanoseconds past them (up to
/// 1,999,999,999 in a leap second, as chrono represents it).
#[derive(Clone, PartialEq, prost::Message)]
pub struct Timestamp {
    #[prost(sint64, tag = "1")]
    pub seconds: i64,
    #[prost(uint32, tag = "2")]
    pub nanos: u32,
}

/// No parameters (a reason or an override kind without any).
#[derive(Clone, PartialEq, prost::Message)]
pub struct Unit {}

#[derive(Clone, PartialEq, prost::Message)]
pub struct SkuState {
    #[prost(string, tag = "1")]
    pub sku: String,
    #[prost(message, optional, tag = "2")]
    pub product: Option<Product>,
    #[prost(message, optional, tag = "3")]
    pub product_at: Option<Timestamp>,
    #[prost(message, repeated, tag = "4")]
    pub stock: Vec<StockEntry>,
    #[prost(message, optional, tag = "5")]
    pub available: Option<WireDecimal>,
    #[prost(message, optional, tag = "6")]
    pub velocity: Option<VelocityState>,
    #[prost(message, optional, tag = "7")]
    pub overrides: Option<Overrides>,
    #[prost(message, optional, tag = "8")]
    pub incentive: Option<Incentive>,
    #[prost(message, optional, tag = "9")]
    pub incentive_at: Option<Timestamp>,
    #[prost(message, optional, tag = "10")]
    pub last_tick_at: Option<Timestamp>,
}

#[derive(Clone, PartialEq, prost::Message)]
pub struct Product {
    #[prost(string, tag = "1")]
    pub category: String,
    #[prost(message, optional, tag = "2")]
    pub price: Option<WireDecimal>,
    #[prost(message, optional, tag = "3")]
    pub unit_cost: Option<WireDecimal>,
    #[prost(message, optional, tag = "4")]
    pub base_rate: Option<WireDecimal>,
}

/// One entry of the stock map: the location (empty for the default one) and its level.
#[derive(Clone, PartialEq, prost::Message)]
pub struct StockEntry {
    #[prost(string, tag = "1")]
    pub location: String,
    #[prost(message, optional, tag = "2")]
    pub on_hand: Option<WireDecimal>,
    #[prost(message, optional, tag = "3")]
    pub reserved: Option<WireDecimal>,
    #[prost(uint64, tag = "4")]
    pub sequence: u64,
    #[prost(message, optional, tag = "5")]
    pub as_of: Option<Timestamp>,
}

#[derive(Clone, PartialEq, prost::Message)]
pub struct VelocityState {
    #[prost(int64, tag = "1")]
    pub half_life_secs: i64,
    #[prost(int64, tag = "2")]
    pub erp_max_age_secs: i64,
    #[prost(message, optional, tag = "3")]
    pub anchor_at: Option<Timestamp>,
    #[prost(message, optional, tag = "4")]
    pub level: Option<WireDecimal>,
    #[prost(message, optional, tag = "5")]
    pub pending: Option<WireDecimal>,
    #[prost(message, optional, tag = "6")]
    pub estimate: Option<WireDecimal>,
    #[prost(message, optional, tag = "7")]
    pub erp: Option<ErpFigure>,
}

#[derive(Clone, PartialEq, prost::Message)]
pub struct ErpFigure {
    #[prost(message, optional, tag = "1")]
    pub value: Option<WireDecimal>,
    #[prost(message, optional, tag = "2")]
    pub as_of: Option<Timestamp>,
}

#[derive(Clone, PartialEq, prost::Message)]
pub struct Overrides {
    #[prost(message, repeated, tag = "1")]
    pub overrides: Vec<Override>,
    #[prost(message, repeated, tag = "2")]
    pub last_event_at: Vec<OverrideEventAt>,
}

/// One entry of the map of last event times per override id.
#[derive(Clone, PartialEq, prost::Message)]
pub struct OverrideEventAt {
    #[prost(string, tag = "1")]
    pub id: String,
    #[prost(message, optional, tag = "2")]
    pub at: Option<Timestamp>,
}

#[derive(Clone, PartialEq, prost::Message)]
pub struct Override {
    #[prost(string, tag = "1")]
    pub id: String,
    #[prost(oneof = "Scope", tags = "2, 3")]
    pub scope: Option<Scope>,
    #[prost(oneof = "Kind", tags = "4, 5, 6, 7, 8")]
    pub kind: Option<Kind>,
    #[prost(message, optional, tag = "9")]
    pub starts_at: Option<Timestamp>,
    #[prost(message, optional, tag = "10")]
    pub ends_at: Option<Timestamp>,
    #[prost(string, tag = "11")]
    pub reason: String,
    #[prost(string, tag = "12")]
    pub author: String,
}

#[derive(Clone, PartialEq, prost::Oneof)]
pub enum Scope {
    #[prost(string, tag = "2")]
    Sku(String),
    #[prost(string, tag = "3")]
    Category(String),
}

#[derive(Clone, PartialEq, prost::Oneof)]
pub enum Kind {
    #[prost(message, tag = "4")]
    Pin(WireDecimal),
    #[prost(message, tag = "5")]
    Floor(WireDecimal),
    #[prost(message, tag = "6")]
    Cap(WireDecimal),
    #[prost(message, tag = "7")]
    Multiplier(WireDecimal),
    #[prost(message, tag = "8")]
    Exclude(Unit),
}

#[derive(Clone, PartialEq, prost::Message)]
pub struct Incentive {
    #[prost(string, tag = "1")]
    pub id: String,
    /// Empty: the state's SKU.
    #[prost(string, tag = "2")]
    pub sku: String,
    #[prost(string, tag = "3")]
    pub category: String,
    #[prost(message, optional, tag = "4")]
    pub bonus: Option<WireDecimal>,
    #[prost(message, optional, tag = "5")]
    pub opened_at: Option<Timestamp>,
    #[prost(message, optional, tag = "6")]
    pub ends_at: Option<Timestamp>,
    #[prost(uint32, tag = "7")]
    pub extensions: u32,
    #[prost(message, optional, tag = "8")]
    pub budget_spend: Option<WireDecimal>,
    #[prost(message, optional, tag = "9")]
    pub budget_units: Option<WireDecimal>,
    #[prost(message, optional, tag = "10")]
    pub spent: Option<WireDecimal>,
    #[prost(message, optional, tag = "11")]
    pub units_sold: Option<WireDecimal>,
    #[prost(bool, tag = "12")]
    pub cancel_requested: bool,
    #[prost(bool, tag = "13")]
    pub manual: bool,
}

// ---- core → wire ----------------------------------------------------------------------

/// The message of `d`, exact to its scale.
pub fn decimal(d: Decimal) -> WireDecimal {
    match i64::try_from(d.mantissa()) {
        Ok(units) => WireDecimal {
            units,
            scale: d.scale(),
            text: String::new(),
        },
        // Display keeps the scale, and `from_str_exact` reads it back exactly.
        Err(_) => WireDecimal {
            units: 0,
            scale: 0,
            text: d.to_string(),
        },
    }
}

/// A decimal field that defaults to zero: absent when it is `0` (scale 0), as proto3
/// omits defaults; `0.00` is kept with its scale.
pub fn decimal_or_absent(d: Decimal) -> Option<WireDecimal> {
    let plain_zero = d.is_zero() && d.scale() == 0 && !d.is_sign_negative();
    (!plain_zero).then(|| decimal(d))
}

/// The message of `t`, to the nanosecond.
pub fn timestamp(t: DateTime<Utc>) -> Timestamp {
    Timestamp {
        seconds: t.timestamp(),
        nanos: t.timestamp_subsec_nanos(),
    }
}

/// `""` when `sku` is `own`, the enclosing state's SKU (which it always is).
pub fn sku_unless_own(sku: &Sku, own: &Sku) -> String {
    if sku == own {
        String::new()
    } else {
        sku.as_str().to_owned()
    }
}

/// The message of a core SKU state.
pub fn sku_state(s: &ratemesh_core::SkuState) -> SkuState {
    let book = &s.overrides;
    SkuState {
        sku: s.sku.as_str().to_owned(),
        product: s.product.as_ref().map(|p| Product {
            category: p.category.clone(),
            price: decimal_or_absent(p.price.get()),
            unit_cost: decimal_or_absent(p.unit_cost.get()),
            base_rate: p.base_rate.map(|r| decimal(r.get())),
        }),
        product_at: s.product_at.map(timestamp),
        stock: s
            .stock
            .iter()
            .map(|(location, level)| StockEntry {
                location: location.clone(),
                on_hand: decimal_or_absent(level.on_hand.get()),
                reserved: decimal_or_absent(level.reserved.get()),
                sequence: level.sequence,
                as_of: Some(timestamp(level.as_of)),
            })
            .collect(),
        available: decimal_or_absent(s.available.get()),
        velocity: Some(velocity(&s.velocity)),
        overrides: (!book.overrides.is_empty() || !book.last_event_at.is_empty()).then(|| {
            Overrides {
                overrides: book.overrides.iter().map(override_msg).collect(),
                last_event_at: book
                    .last_event_at
                    .iter()
                    .map(|(id, at)| OverrideEventAt {
                        id: id.clone(),
                        at: Some(timestamp(*at)),
                    })
                    .collect(),
            }
        }),
        incentive: s.incentive.as_ref().map(|i| incentive(i, &s.sku)),
        incentive_at: s.incentive_at.map(timestamp),
        last_tick_at: s.last_tick_at.map(timestamp),
    }
}

fn velocity(v: &VelocityEstimator) -> VelocityState {
    let p = v.parts();
    VelocityState {
        half_life_secs: p.half_life_secs,
        erp_max_age_secs: p.erp_max_age_secs,
        anchor_at: p.anchor_at.map(timestamp),
        level: decimal_or_absent(p.level),
        pending: decimal_or_absent(p.pending),
        estimate: p.estimate.map(decimal),
        erp: p.erp.map(|e| ErpFigure {
            value: decimal_or_absent(e.value.get()),
            as_of: Some(timestamp(e.as_of)),
        }),
    }
}

fn override_msg(o: &ratemesh_core::Override) -> Override {
    Override {
        id: o.id.clone(),
        scope: Some(match &o.scope {
            OverrideScope::Sku(s) => Scope::Sku(s.as_str().to_owned()),
            OverrideScope::Category(c) => Scope::Category(c.clone()),
        }),
        kind: Some(match &o.kind {
            OverrideKind::Pin { rate } => Kind::Pin(decimal(rate.get())),
            OverrideKind::Floor { rate } => Kind::Floor(decimal(rate.get())),
            OverrideKind::Cap { rate } => Kind::Cap(decimal(rate.get())),
            OverrideKind::Multiplier { factor } => Kind::Multiplier(decimal(*factor)),
            OverrideKind::Exclude => Kind::Exclude(Unit {}),
        }),
        starts_at: Some(timestamp(o.starts_at)),
        ends_at: o.ends_at.map(timestamp),
        reason: o.reason.clone(),
        author: o.author.clone(),
    }
}

/// The message of an incentive on `own` (its SKU left out when it is `own`).
pub fn incentive(i: &ratemesh_core::Incentive, own: &Sku) -> Incentive {
    Incentive {
        id: i.id.clone(),
        sku: sku_unless_own(&i.sku, own),
        category: i.category.clone(),
        bonus: decimal_or_absent(i.bonus.get()),
        opened_at: Some(timestamp(i.opened_at)),
        ends_at: Some(timestamp(i.ends_at)),
        extensions: i.extensions,
        budget_spend: decimal_or_absent(i.budget_spend.get()),
        budget_units: decimal_or_absent(i.budget_units.get()),
        spent: decimal_or_absent(i.spent.get()),
        units_sold: decimal_or_absent(i.units_sold.get()),
        cancel_requested: i.cancel_requested,
        manual: i.manual,
    }
}

// ---- wire → core ----------------------------------------------------------------------

/// The decimal a message holds.
pub fn into_decimal(w: WireDecimal) -> Result<Decimal> {
    if !w.text.is_empty() {
        return Decimal::from_str_exact(&w.text).map_err(|e| format!("{:?}: {e}", w.text));
    }
    Decimal::try_from_i128_with_scale(i128::from(w.units), w.scale)
        .map_err(|e| format!("{} at scale {}: {e}", w.units, w.scale))
}

/// A decimal field that defaults to zero.
pub fn decimal_or_zero(w: Option<WireDecimal>) -> Result<Decimal> {
    w.map_or(Ok(Decimal::ZERO), into_decimal)
}

/// The instant a message holds.
pub fn into_time(t: Timestamp) -> Result<DateTime<Utc>> {
    DateTime::from_timestamp(t.seconds, t.nanos).ok_or_else(|| {
        format!(
            "{} s {} ns is not a representable instant",
            t.seconds, t.nanos
        )
    })
}

/// A timestamp field the core type requires.
pub fn required_time(t: Option<Timestamp>, field: &str) -> Result<DateTime<Utc>> {
    let t = t.ok_or_else(|| format!("{field}: missing"))?;
    into_time(t).map_err(|e| format!("{field}: {e}"))
}

/// An optional timestamp field.
pub fn optional_time(t: Option<Timestamp>, field: &str) -> Result<Option<DateTime<Utc>>> {
    t.map(into_time)
        .transpose()
        .map_err(|e| format!("{field}: {e}"))
}

/// Reads a decimal field into a validated newtype.
pub fn typed<T, E: std::fmt::Display>(
    w: Option<WireDecimal>,
    field: &str,
    make: impl FnOnce(Decimal) -> std::result::Result<T, E>,
) -> Result<T> {
    let d = decimal_or_zero(w).map_err(|e| format!("{field}: {e}"))?;
    make(d).map_err(|e| format!("{field}: {e}"))
}

/// Reads an optional decimal field into a validated newtype.
pub fn optional_typed<T, E: std::fmt::Display>(
    w: Option<WireDecimal>,
    field: &str,
    make: impl FnOnce(Decimal) -> std::result::Result<T, E>,
) -> Result<Option<T>> {
    w.map(|w| typed(Some(w), field, make)).transpose()
}

/// A decimal field that defaults to zero, with its path on error.
pub fn plain(w: Option<WireDecimal>, field: &str) -> Result<Decimal> {
    decimal_or_zero(w).map_err(|e| format!("{field}: {e}"))
}

/// A SKU written only when it differs from the enclosing state's: empty is `own`.
pub fn sku_or_own(text: String, own: &Sku) -> Result<Sku> {
    if text.is_empty() {
        Ok(own.clone())
    } else {
        Sku::new(text).map_err(|e| format!("sku: {e}"))
    }
}

/// The core state this message holds. Error paths are relative to the message (`sku`,
/// `product.price`, `stock.on_hand`, …).
pub fn into_sku_state(s: SkuState) -> Result<ratemesh_core::SkuState> {
    let sku = Sku::new(s.sku).map_err(|e| format!("sku: {e}"))?;
    let product = s
        .product
        .map(|p| {
            Ok::<_, Invalid>(ratemesh_core::Product {
                category: p.category,
                price: typed(p.price, "price", Money::new)?,
                unit_cost: typed(p.unit_cost, "unit_cost", Money::new)?,
                base_rate: optional_typed(p.base_rate, "base_rate", Rate::new)?,
            })
        })
        .transpose()
        .map_err(|e| format!("product.{e}"))?;
    let mut stock = BTreeMap::new();
    for entry in s.stock {
        let level = StockLevel {
            on_hand: typed(entry.on_hand, "stock.on_hand", Quantity::new)?,
            reserved: typed(entry.reserved, "stock.reserved", Quantity::new)?,
            sequence: entry.sequence,
            as_of: required_time(entry.as_of, "stock.as_of")?,
        };
        stock.insert(entry.location, level);
    }
    let velocity =
        into_velocity(s.velocity.unwrap_or_default()).map_err(|e| format!("velocity.{e}"))?;
    let overrides = into_override_book(s.overrides.unwrap_or_default())
        .map_err(|e| format!("overrides.{e}"))?;
    let incentive = s
        .incentive
        .map(|i| into_incentive(i, &sku))
        .transpose()
        .map_err(|e| format!("incentive.{e}"))?;
    Ok(ratemesh_core::SkuState {
        product,
        product_at: optional_time(s.product_at, "product_at")?,
        stock,
        available: typed(s.available, "available", Quantity::new)?,
        velocity,
        overrides,
        incentive,
        incentive_at: optional_time(s.incentive_at, "incentive_at")?,
        last_tick_at: optional_time(s.last_tick_at, "last_tick_at")?,
        sku,
    })
}

fn into_velocity(v: VelocityState) -> Result<VelocityEstimator> {
    let erp = v
        .erp
        .map(|e| {
            Ok::<_, Invalid>(ErpVelocity {
                value: typed(e.value, "value", Velocity::new)?,
                as_of: required_time(e.as_of, "as_of")?,
            })
        })
        .transpose()
        .map_err(|e| format!("erp.{e}"))?;
    Ok(VelocityEstimator::from_parts(VelocityParts {
        half_life_secs: v.half_life_secs,
        erp_max_age_secs: v.erp_max_age_secs,
        anchor_at: optional_time(v.anchor_at, "anchor_at")?,
        level: plain(v.level, "level")?,
        pending: plain(v.pending, "pending")?,
        estimate: v
            .estimate
            .map(into_decimal)
            .transpose()
            .map_err(|e| format!("estimate: {e}"))?,
        erp,
    }))
}

fn into_override_book(b: Overrides) -> Result<OverrideBook> {
    let overrides = b
        .overrides
        .into_iter()
        .map(into_override)
        .collect::<Result<Vec<_>>>()?;
    let mut last_event_at = BTreeMap::new();
    for entry in b.last_event_at {
        let at = required_time(entry.at, "last_event_at.at")?;
        last_event_at.insert(entry.id, at);
    }
    Ok(OverrideBook {
        overrides,
        last_event_at,
    })
}

fn into_override(o: Override) -> Result<ratemesh_core::Override> {
    let scope = match o.scope.ok_or("scope: missing")? {
        Scope::Sku(s) => OverrideScope::Sku(Sku::new(s).map_err(|e| format!("scope.sku: {e}"))?),
        Scope::Category(c) => OverrideScope::Category(c),
    };
    let rate = |w: WireDecimal, field: &str| typed(Some(w), field, Rate::new);
    let kind = match o.kind.ok_or("kind: missing")? {
        Kind::Pin(r) => OverrideKind::Pin {
            rate: rate(r, "kind.pin")?,
        },
        Kind::Floor(r) => OverrideKind::Floor {
            rate: rate(r, "kind.floor")?,
        },
        Kind::Cap(r) => OverrideKind::Cap {
            rate: rate(r, "kind.cap")?,
        },
        Kind::Multiplier(f) => OverrideKind::Multiplier {
            factor: into_decimal(f).map_err(|e| format!("kind.multiplier: {e}"))?,
        },
        Kind::Exclude(Unit {}) => OverrideKind::Exclude,
    };
    Ok(ratemesh_core::Override {
        id: o.id,
        scope,
        kind,
        starts_at: required_time(o.starts_at, "starts_at")?,
        ends_at: optional_time(o.ends_at, "ends_at")?,
        reason: o.reason,
        author: o.author,
    })
}

/// The incentive a message holds, on `own` when its SKU is left out.
pub fn into_incentive(i: Incentive, own: &Sku) -> Result<ratemesh_core::Incentive> {
    Ok(ratemesh_core::Incentive {
        id: i.id,
        sku: sku_or_own(i.sku, own)?,
        category: i.category,
        bonus: typed(i.bonus, "bonus", Rate::new)?,
        opened_at: required_time(i.opened_at, "opened_at")?,
        ends_at: required_time(i.ends_at, "ends_at")?,
        extensions: i.extensions,
        budget_spend: typed(i.budget_spend, "budget_spend", Money::new)?,
        budget_units: typed(i.budget_units, "budget_units", Quantity::new)?,
        spent: typed(i.spent, "spent", Money::new)?,
        units_sold: typed(i.units_sold, "units_sold", Quantity::new)?,
        cancel_requested: i.cancel_requested,
        manual: i.manual,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use std::str::FromStr;

    fn decimal_round_trip(d: Decimal) -> Decimal {
        into_decimal(decimal(d)).unwrap()
    }

    proptest! {
        /// Every decimal comes back bit for bit: mantissa, scale and sign.
        #[test]
        fn decimals_are_exact(
            lo in any::<u32>(),
            mid in any::<u32>(),
            hi in prop_oneof![Just(0u32), any::<u32>()],
            negative in any::<bool>(),
            scale in 0u32..=28,
        ) {
            let d = Decimal::from_parts(lo, mid, hi, negative, scale);
            let back = decimal_round_trip(d);
            prop_assert_eq!(back.serialize(), d.serialize(), "{} became {}", d, back);
        }

        /// Every instant chrono represents comes back to the nanosecond, leap seconds
        /// included.
        #[test]
        fn instants_are_exact(
            seconds in DateTime::<Utc>::MIN_UTC.timestamp()..=DateTime::<Utc>::MAX_UTC.timestamp(),
            nanos in 0u32..2_000_000_000,
        ) {
            if let Some(t) = DateTime::from_timestamp(seconds, nanos) {
                prop_assert_eq!(into_time(timestamp(t)).unwrap(), t);
            }
        }
    }

    #[test]
    fn scale_and_zero_forms_survive() {
        for text in [
            "0.060",
            "0.06",
            "0",
            "0.000",
            "-0.5",
            "79228162514264337593543950335",
            "-7.9228162514264337593543950335",
            "0.0000000000000000000000000001",
        ] {
            let d = Decimal::from_str(text).unwrap();
            let back = decimal_round_trip(d);
            assert_eq!(back.to_string(), text);
            assert_eq!(back.serialize(), d.serialize(), "{text}");
        }
        // A zero's sign is not kept (rust_decimal clears it itself, and so did JSON); its
        // scale is.
        let negative_zero = Decimal::deserialize({
            let mut bytes = Decimal::new(0, 3).serialize();
            bytes[3] |= 0x80;
            bytes
        });
        assert!(negative_zero.is_sign_negative() && negative_zero.is_zero());
        assert_eq!(
            decimal_round_trip(negative_zero).serialize(),
            Decimal::new(0, 3).serialize()
        );
        let json: Decimal =
            serde_json::from_str(&serde_json::to_string(&negative_zero).unwrap()).unwrap();
        assert!(!json.is_sign_negative());
        // A plain zero is left out; a zero with a scale is kept.
        assert_eq!(decimal_or_absent(Decimal::ZERO), None);
        assert_eq!(
            decimal_or_absent(Decimal::new(0, 2)),
            Some(WireDecimal {
                units: 0,
                scale: 2,
                text: String::new()
            })
        );
    }

    #[test]
    fn out_of_range_values_are_refused_with_their_field() {
        assert!(
            into_decimal(WireDecimal {
                units: 1,
                scale: 29,
                text: String::new()
            })
            .is_err()
        );
        let err = into_time(Timestamp {
            seconds: i64::MAX,
            nanos: 0,
        })
        .unwrap_err();
        assert!(err.contains("not a representable instant"), "{err}");
        let sku = Sku::new("SKU-1").unwrap();
        let state = ratemesh_core::SkuState::new(sku, &ratemesh_core::Policy::example().velocity);
        let mut message = sku_state(&state);
        message.stock.push(StockEntry {
            location: "dc-east".into(),
            on_hand: Some(decimal(Decimal::NEGATIVE_ONE)),
            as_of: Some(timestamp(DateTime::UNIX_EPOCH)),
            ..StockEntry::default()
        });
        let err = into_sku_state(message).unwrap_err();
        assert!(err.starts_with("stock.on_hand: "), "{err}");
        let mut message = sku_state(&state);
        message.sku = "not a sku".into();
        let err = into_sku_state(message).unwrap_err();
        assert!(err.starts_with("sku: "), "{err}");
    }

    #[test]
    fn a_state_round_trips() {
        let sku = Sku::new("SKU-1").unwrap();
        let state = ratemesh_core::SkuState::new(sku, &ratemesh_core::Policy::example().velocity);
        assert_eq!(into_sku_state(sku_state(&state)).unwrap(), state);
    }
}
