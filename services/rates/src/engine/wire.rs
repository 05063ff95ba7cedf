//! The protobuf messages of the binary `engine` field, and their conversions to and from
//! the core types. The schema, its rules and why it looks the way it does are in the
//! [`record`](super::record) module documentation; each struct here is one message of it,
//! with the same field numbers (some named differently here, where the schema's name is
//! a core type's: `WireDecimal` is `Decimal`, `CardMemory` is `CardState`, `Cut` is
//! `PendingCut`, and so on — message names are not part of the encoding).
//!
//! Encoding never fails. Decoding checks what the core types check on construction (a
//! SKU's alphabet, a rate within `0..=1`, non-negative quantities and money, times within
//! chrono's range) and fails with the path of the first field that is wrong.

use std::collections::BTreeMap;

use chrono::{DateTime, Utc};
use ratemesh_core::card::{BandPosition, BaseChange, CardState, PendingCut, RateParts};
use ratemesh_core::state::OverrideBook;
use ratemesh_core::{
    DaysOfCover, ErpVelocity, Money, OverrideKind, OverrideScope, Quantity, Rate, Sku, StockLevel,
    Velocity, VelocityEstimator, VelocityParts,
};
use rust_decimal::Decimal;

use super::record::{EngineRecord, Published};

/// Why a decoded message is not a valid record: the field's path and what is wrong.
pub(super) type Invalid = String;

type Result<T> = std::result::Result<T, Invalid>;

/// `EngineRecord`.
#[derive(Clone, PartialEq, prost::Message)]
pub(super) struct Record {
    #[prost(message, optional, tag = "1")]
    state: Option<SkuState>,
    #[prost(message, optional, tag = "2")]
    card: Option<RateCard>,
    #[prost(message, optional, tag = "3")]
    published: Option<PublishedCard>,
    #[prost(message, optional, tag = "4")]
    next_recompute: Option<Timestamp>,
}

/// An exact decimal: `units × 10^−scale`, or its text when the mantissa does not fit 64
/// bits.
#[derive(Clone, PartialEq, prost::Message)]
struct WireDecimal {
    #[prost(sint64, tag = "1")]
    units: i64,
    #[prost(uint32, tag = "2")]
    scale: u32,
    #[prost(string, tag = "3")]
    text: String,
}

/// An instant: seconds since the Unix epoch and the nanoseconds past them (up to
/// 1,999,999,999 in a leap second, as chrono represents it).
#[derive(Clone, PartialEq, prost::Message)]
struct Timestamp {
    #[prost(sint64, tag = "1")]
    seconds: i64,
    #[prost(uint32, tag = "2")]
    nanos: u32,
}

/// No parameters (a reason or an override kind without any).
#[derive(Clone, PartialEq, prost::Message)]
struct Unit {}

#[derive(Clone, PartialEq, prost::Message)]
struct SkuState {
    #[prost(string, tag = "1")]
    sku: String,
    #[prost(message, optional, tag = "2")]
    product: Option<Product>,
    #[prost(message, optional, tag = "3")]
    product_at: Option<Timestamp>,
    #[prost(message, repeated, tag = "4")]
    stock: Vec<StockEntry>,
    #[prost(message, optional, tag = "5")]
    available: Option<WireDecimal>,
    #[prost(message, optional, tag = "6")]
    velocity: Option<VelocityState>,
    #[prost(message, optional, tag = "7")]
    overrides: Option<Overrides>,
    #[prost(message, optional, tag = "8")]
    incentive: Option<Incentive>,
    #[prost(message, optional, tag = "9")]
    incentive_at: Option<Timestamp>,
    #[prost(message, optional, tag = "10")]
    last_tick_at: Option<Timestamp>,
}

#[derive(Clone, PartialEq, prost::Message)]
struct Product {
    #[prost(string, tag = "1")]
    category: String,
    #[prost(message, optional, tag = "2")]
    price: Option<WireDecimal>,
    #[prost(message, optional, tag = "3")]
    unit_cost: Option<WireDecimal>,
    #[prost(message, optional, tag = "4")]
    base_rate: Option<WireDecimal>,
}

/// One entry of the stock map: the location (empty for the default one) and its level.
#[derive(Clone, PartialEq, prost::Message)]
struct StockEntry {
    #[prost(string, tag = "1")]
    location: String,
    #[prost(message, optional, tag = "2")]
    on_hand: Option<WireDecimal>,
    #[prost(message, optional, tag = "3")]
    reserved: Option<WireDecimal>,
    #[prost(uint64, tag = "4")]
    sequence: u64,
    #[prost(message, optional, tag = "5")]
    as_of: Option<Timestamp>,
}

#[derive(Clone, PartialEq, prost::Message)]
struct VelocityState {
    #[prost(int64, tag = "1")]
    half_life_secs: i64,
    #[prost(int64, tag = "2")]
    erp_max_age_secs: i64,
    #[prost(message, optional, tag = "3")]
    anchor_at: Option<Timestamp>,
    #[prost(message, optional, tag = "4")]
    level: Option<WireDecimal>,
    #[prost(message, optional, tag = "5")]
    pending: Option<WireDecimal>,
    #[prost(message, optional, tag = "6")]
    estimate: Option<WireDecimal>,
    #[prost(message, optional, tag = "7")]
    erp: Option<ErpFigure>,
}

#[derive(Clone, PartialEq, prost::Message)]
struct ErpFigure {
    #[prost(message, optional, tag = "1")]
    value: Option<WireDecimal>,
    #[prost(message, optional, tag = "2")]
    as_of: Option<Timestamp>,
}

#[derive(Clone, PartialEq, prost::Message)]
struct Overrides {
    #[prost(message, repeated, tag = "1")]
    overrides: Vec<Override>,
    #[prost(message, repeated, tag = "2")]
    last_event_at: Vec<OverrideEventAt>,
}

/// One entry of the map of last event times per override id.
#[derive(Clone, PartialEq, prost::Message)]
struct OverrideEventAt {
    #[prost(string, tag = "1")]
    id: String,
    #[prost(message, optional, tag = "2")]
    at: Option<Timestamp>,
}

#[derive(Clone, PartialEq, prost::Message)]
struct Override {
    #[prost(string, tag = "1")]
    id: String,
    #[prost(oneof = "Scope", tags = "2, 3")]
    scope: Option<Scope>,
    #[prost(oneof = "Kind", tags = "4, 5, 6, 7, 8")]
    kind: Option<Kind>,
    #[prost(message, optional, tag = "9")]
    starts_at: Option<Timestamp>,
    #[prost(message, optional, tag = "10")]
    ends_at: Option<Timestamp>,
    #[prost(string, tag = "11")]
    reason: String,
    #[prost(string, tag = "12")]
    author: String,
}

#[derive(Clone, PartialEq, prost::Oneof)]
enum Scope {
    #[prost(string, tag = "2")]
    Sku(String),
    #[prost(string, tag = "3")]
    Category(String),
}

#[derive(Clone, PartialEq, prost::Oneof)]
enum Kind {
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
struct Incentive {
    #[prost(string, tag = "1")]
    id: String,
    /// Empty: the state's SKU.
    #[prost(string, tag = "2")]
    sku: String,
    #[prost(string, tag = "3")]
    category: String,
    #[prost(message, optional, tag = "4")]
    bonus: Option<WireDecimal>,
    #[prost(message, optional, tag = "5")]
    opened_at: Option<Timestamp>,
    #[prost(message, optional, tag = "6")]
    ends_at: Option<Timestamp>,
    #[prost(uint32, tag = "7")]
    extensions: u32,
    #[prost(message, optional, tag = "8")]
    budget_spend: Option<WireDecimal>,
    #[prost(message, optional, tag = "9")]
    budget_units: Option<WireDecimal>,
    #[prost(message, optional, tag = "10")]
    spent: Option<WireDecimal>,
    #[prost(message, optional, tag = "11")]
    units_sold: Option<WireDecimal>,
    #[prost(bool, tag = "12")]
    cancel_requested: bool,
    #[prost(bool, tag = "13")]
    manual: bool,
}

#[derive(Clone, PartialEq, prost::Message)]
struct RateCard {
    /// Empty: the state's SKU.
    #[prost(string, tag = "1")]
    sku: String,
    #[prost(message, optional, tag = "2")]
    effective_rate: Option<WireDecimal>,
    #[prost(message, optional, tag = "3")]
    previous_rate: Option<WireDecimal>,
    #[prost(message, optional, tag = "4")]
    parts: Option<Parts>,
    #[prost(message, repeated, tag = "5")]
    reasons: Vec<Reason>,
    #[prost(uint64, tag = "6")]
    version: u64,
    #[prost(message, optional, tag = "7")]
    computed_at: Option<Timestamp>,
    /// Absent: `computed_at` (the card changed when it was computed).
    #[prost(message, optional, tag = "8")]
    changed_at: Option<Timestamp>,
    #[prost(message, optional, tag = "9")]
    guaranteed_until: Option<Timestamp>,
    #[prost(message, optional, tag = "10")]
    state: Option<CardMemory>,
}

#[derive(Clone, PartialEq, prost::Message)]
struct Parts {
    #[prost(message, optional, tag = "1")]
    base: Option<WireDecimal>,
    #[prost(message, optional, tag = "2")]
    inventory_adjustment: Option<WireDecimal>,
    #[prost(message, optional, tag = "3")]
    boost: Option<WireDecimal>,
    #[prost(message, optional, tag = "4")]
    incentive: Option<WireDecimal>,
    #[prost(message, optional, tag = "5")]
    overrides: Option<WireDecimal>,
    #[prost(message, optional, tag = "6")]
    guardrails: Option<WireDecimal>,
}

/// `CardState`: what a card carries to the next computation.
#[derive(Clone, PartialEq, prost::Message)]
struct CardMemory {
    #[prost(message, optional, tag = "1")]
    band: Option<Band>,
    #[prost(message, optional, tag = "2")]
    policy_rate: Option<WireDecimal>,
    #[prost(message, optional, tag = "3")]
    policy_changed_at: Option<Timestamp>,
    #[prost(message, optional, tag = "4")]
    published_base: Option<WireDecimal>,
    #[prost(message, repeated, tag = "5")]
    base_history: Vec<BaseChangeMsg>,
    #[prost(message, optional, tag = "6")]
    pending_cut: Option<Cut>,
    #[prost(message, optional, tag = "7")]
    boost: Option<WireDecimal>,
    #[prost(message, optional, tag = "8")]
    boost_changed_at: Option<Timestamp>,
    #[prost(message, optional, tag = "9")]
    boost_guaranteed_until: Option<Timestamp>,
}

#[derive(Clone, PartialEq, prost::Message)]
struct Band {
    #[prost(uint32, tag = "1")]
    table: u32,
    #[prost(uint32, tag = "2")]
    index: u32,
}

#[derive(Clone, PartialEq, prost::Message)]
struct BaseChangeMsg {
    #[prost(message, optional, tag = "1")]
    at: Option<Timestamp>,
    #[prost(message, optional, tag = "2")]
    rate: Option<WireDecimal>,
}

#[derive(Clone, PartialEq, prost::Message)]
struct Cut {
    #[prost(message, optional, tag = "1")]
    to: Option<WireDecimal>,
    #[prost(message, optional, tag = "2")]
    effective_at: Option<Timestamp>,
}

#[derive(Clone, PartialEq, prost::Message)]
struct PublishedCard {
    #[prost(uint64, tag = "1")]
    version: u64,
    #[prost(message, optional, tag = "2")]
    rate: Option<WireDecimal>,
    #[prost(message, optional, tag = "3")]
    guaranteed_until: Option<Timestamp>,
    #[prost(string, tag = "4")]
    category: String,
    #[prost(bool, tag = "5")]
    out_of_stock: bool,
    #[prost(string, tag = "6")]
    explanation: String,
    #[prost(message, optional, tag = "7")]
    scheduled_cut: Option<Cut>,
}

/// A reason: exactly one of its variants.
#[derive(Clone, PartialEq, prost::Message)]
struct Reason {
    #[prost(
        oneof = "ReasonCode",
        tags = "1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15, 16, 17, 18, 19, 20, 21, 22, 23"
    )]
    code: Option<ReasonCode>,
}

#[derive(Clone, PartialEq, prost::Oneof)]
enum ReasonCode {
    #[prost(message, tag = "1")]
    NoProductData(Unit),
    #[prost(message, tag = "2")]
    OutOfStock(RateParam),
    #[prost(message, tag = "3")]
    NoVelocityData(Unit),
    #[prost(message, tag = "4")]
    LowCover(Cover),
    #[prost(message, tag = "5")]
    Overstock(Cover),
    #[prost(message, tag = "6")]
    PeakWindow(Window),
    #[prost(message, tag = "7")]
    Damped(Damped),
    #[prost(message, tag = "8")]
    Held(TargetUntil),
    #[prost(message, tag = "9")]
    Floor(RateParam),
    #[prost(message, tag = "10")]
    Cap(RateParam),
    #[prost(message, tag = "11")]
    MarginGuard(RateParam),
    #[prost(message, tag = "12")]
    OverridePin(OverrideRate),
    #[prost(message, tag = "13")]
    OverrideFloor(OverrideRate),
    #[prost(message, tag = "14")]
    OverrideCap(OverrideRate),
    #[prost(message, tag = "15")]
    OverrideMultiplier(OverrideRate),
    #[prost(message, tag = "16")]
    OverrideExclude(OverrideRate),
    #[prost(message, tag = "17")]
    Boost(BoostParam),
    #[prost(message, tag = "18")]
    BoostGuaranteed(TargetUntil),
    #[prost(message, tag = "19")]
    BoostLapsed(FromTo),
    #[prost(message, tag = "20")]
    BaseCutScheduled(TargetUntil),
    #[prost(message, tag = "21")]
    BaseCut(FromTo),
    #[prost(message, tag = "22")]
    BaseCutLimited(FromTo),
    #[prost(message, tag = "23")]
    Incentive(IncentiveParam),
}

/// The one rate of `out_of_stock`, `floor`, `cap`, `margin_guard`.
#[derive(Clone, PartialEq, prost::Message)]
struct RateParam {
    #[prost(message, optional, tag = "1")]
    rate: Option<WireDecimal>,
}

/// `low_cover`, `overstock`.
#[derive(Clone, PartialEq, prost::Message)]
struct Cover {
    #[prost(message, optional, tag = "1")]
    days: Option<WireDecimal>,
    #[prost(string, tag = "2")]
    band: String,
}

#[derive(Clone, PartialEq, prost::Message)]
struct Window {
    #[prost(string, tag = "1")]
    window: String,
}

#[derive(Clone, PartialEq, prost::Message)]
struct Damped {
    #[prost(message, optional, tag = "1")]
    target: Option<WireDecimal>,
    #[prost(message, optional, tag = "2")]
    max_step: Option<WireDecimal>,
}

/// `held` (target, until), `boost_guaranteed` (until), `base_cut_scheduled` (to,
/// effective_at).
#[derive(Clone, PartialEq, prost::Message)]
struct TargetUntil {
    #[prost(message, optional, tag = "1")]
    target: Option<WireDecimal>,
    #[prost(message, optional, tag = "2")]
    until: Option<Timestamp>,
}

/// The override reasons: its id and its rate or factor (none for `override_exclude`).
#[derive(Clone, PartialEq, prost::Message)]
struct OverrideRate {
    #[prost(string, tag = "1")]
    id: String,
    #[prost(message, optional, tag = "2")]
    value: Option<WireDecimal>,
}

#[derive(Clone, PartialEq, prost::Message)]
struct BoostParam {
    #[prost(message, optional, tag = "1")]
    boost: Option<WireDecimal>,
    #[prost(message, optional, tag = "2")]
    guaranteed_until: Option<Timestamp>,
}

/// `boost_lapsed` (from, to), `base_cut` (from, to), `base_cut_limited` (target, allowed).
#[derive(Clone, PartialEq, prost::Message)]
struct FromTo {
    #[prost(message, optional, tag = "1")]
    from: Option<WireDecimal>,
    #[prost(message, optional, tag = "2")]
    to: Option<WireDecimal>,
}

#[derive(Clone, PartialEq, prost::Message)]
struct IncentiveParam {
    #[prost(string, tag = "1")]
    id: String,
    #[prost(message, optional, tag = "2")]
    bonus: Option<WireDecimal>,
    #[prost(message, optional, tag = "3")]
    ends_at: Option<Timestamp>,
}

// ---- core → wire ----------------------------------------------------------------------

impl Record {
    /// The message of `record`.
    pub(super) fn of(record: &EngineRecord) -> Self {
        let sku = &record.state.sku;
        Self {
            state: Some(sku_state(&record.state)),
            card: record.card.as_ref().map(|c| rate_card(c, sku)),
            published: record.published.as_ref().map(published),
            next_recompute: record.next_recompute.map(timestamp),
        }
    }

    /// The record this message holds.
    pub(super) fn into_record(self) -> Result<EngineRecord> {
        let state = into_sku_state(self.state.ok_or("state: missing")?)?;
        let card = self
            .card
            .map(|c| into_rate_card(c, &state.sku))
            .transpose()
            .map_err(|e| format!("card.{e}"))?;
        let published = self
            .published
            .map(into_published)
            .transpose()
            .map_err(|e| format!("published.{e}"))?;
        Ok(EngineRecord {
            state,
            card,
            published,
            next_recompute: self
                .next_recompute
                .map(into_time)
                .transpose()
                .map_err(|e| format!("next_recompute: {e}"))?,
        })
    }
}

fn decimal(d: Decimal) -> WireDecimal {
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
fn decimal_or_absent(d: Decimal) -> Option<WireDecimal> {
    let plain_zero = d.is_zero() && d.scale() == 0 && !d.is_sign_negative();
    (!plain_zero).then(|| decimal(d))
}

fn timestamp(t: DateTime<Utc>) -> Timestamp {
    Timestamp {
        seconds: t.timestamp(),
        nanos: t.timestamp_subsec_nanos(),
    }
}

/// `""` when `sku` is the state's SKU, which it always is.
fn sku_unless_own(sku: &Sku, own: &Sku) -> String {
    if sku == own {
        String::new()
    } else {
        sku.as_str().to_owned()
    }
}

fn sku_state(s: &ratemesh_core::SkuState) -> SkuState {
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

fn incentive(i: &ratemesh_core::Incentive, own: &Sku) -> Incentive {
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

fn rate_card(c: &ratemesh_core::RateCard, own: &Sku) -> RateCard {
    let p = &c.parts;
    let s = &c.state;
    RateCard {
        sku: sku_unless_own(&c.sku, own),
        effective_rate: decimal_or_absent(c.effective_rate.get()),
        previous_rate: c.previous_rate.map(|r| decimal(r.get())),
        parts: Some(Parts {
            base: decimal_or_absent(p.base.get()),
            inventory_adjustment: decimal_or_absent(p.inventory_adjustment),
            boost: decimal_or_absent(p.boost),
            incentive: decimal_or_absent(p.incentive),
            overrides: decimal_or_absent(p.overrides),
            guardrails: decimal_or_absent(p.guardrails),
        })
        .filter(|parts| *parts != Parts::default()),
        reasons: c.reasons.iter().map(reason).collect(),
        version: c.version,
        computed_at: Some(timestamp(c.computed_at)),
        changed_at: (c.changed_at != c.computed_at).then(|| timestamp(c.changed_at)),
        guaranteed_until: c.guaranteed_until.map(timestamp),
        state: Some(CardMemory {
            band: s.band.map(|b| Band {
                table: b.table,
                index: b.index,
            }),
            policy_rate: s.policy_rate.map(|r| decimal(r.get())),
            policy_changed_at: s.policy_changed_at.map(timestamp),
            published_base: s.published_base.map(|r| decimal(r.get())),
            base_history: s
                .base_history
                .iter()
                .map(|b| BaseChangeMsg {
                    at: Some(timestamp(b.at)),
                    rate: decimal_or_absent(b.rate.get()),
                })
                .collect(),
            pending_cut: s.pending_cut.map(cut),
            boost: decimal_or_absent(s.boost),
            boost_changed_at: s.boost_changed_at.map(timestamp),
            boost_guaranteed_until: s.boost_guaranteed_until.map(timestamp),
        })
        .filter(|m| *m != CardMemory::default()),
    }
}

fn cut(c: PendingCut) -> Cut {
    Cut {
        to: decimal_or_absent(c.to.get()),
        effective_at: Some(timestamp(c.effective_at)),
    }
}

fn rate_param(r: Rate) -> RateParam {
    RateParam {
        rate: decimal_or_absent(r.get()),
    }
}

fn override_rate(id: &str, value: Option<Decimal>) -> OverrideRate {
    OverrideRate {
        id: id.to_owned(),
        value: value.and_then(decimal_or_absent),
    }
}

fn from_to(from: Decimal, to: Decimal) -> FromTo {
    FromTo {
        from: decimal_or_absent(from),
        to: decimal_or_absent(to),
    }
}

fn target_until(target: Option<Decimal>, until: DateTime<Utc>) -> TargetUntil {
    TargetUntil {
        target: target.and_then(decimal_or_absent),
        until: Some(timestamp(until)),
    }
}

fn reason(r: &ratemesh_core::Reason) -> Reason {
    use ratemesh_core::Reason as R;
    let code = match r {
        R::NoProductData => ReasonCode::NoProductData(Unit {}),
        R::OutOfStock { rate } => ReasonCode::OutOfStock(rate_param(*rate)),
        R::NoVelocityData => ReasonCode::NoVelocityData(Unit {}),
        R::LowCover { days, band } => ReasonCode::LowCover(Cover {
            days: decimal_or_absent(days.get()),
            band: band.clone(),
        }),
        R::Overstock { days, band } => ReasonCode::Overstock(Cover {
            days: decimal_or_absent(days.get()),
            band: band.clone(),
        }),
        R::PeakWindow { window } => ReasonCode::PeakWindow(Window {
            window: window.clone(),
        }),
        R::Damped { target, max_step } => ReasonCode::Damped(Damped {
            target: decimal_or_absent(target.get()),
            max_step: decimal_or_absent(*max_step),
        }),
        R::Held { target, until } => ReasonCode::Held(target_until(Some(target.get()), *until)),
        R::Floor { floor } => ReasonCode::Floor(rate_param(*floor)),
        R::Cap { cap } => ReasonCode::Cap(rate_param(*cap)),
        R::MarginGuard { max_rate } => ReasonCode::MarginGuard(rate_param(*max_rate)),
        R::OverridePin { id, rate } => ReasonCode::OverridePin(override_rate(id, Some(rate.get()))),
        R::OverrideFloor { id, floor } => {
            ReasonCode::OverrideFloor(override_rate(id, Some(floor.get())))
        }
        R::OverrideCap { id, cap } => ReasonCode::OverrideCap(override_rate(id, Some(cap.get()))),
        R::OverrideMultiplier { id, factor } => {
            ReasonCode::OverrideMultiplier(override_rate(id, Some(*factor)))
        }
        R::OverrideExclude { id } => ReasonCode::OverrideExclude(override_rate(id, None)),
        R::Boost {
            boost,
            guaranteed_until,
        } => ReasonCode::Boost(BoostParam {
            boost: decimal_or_absent(*boost),
            guaranteed_until: Some(timestamp(*guaranteed_until)),
        }),
        R::BoostGuaranteed { until } => ReasonCode::BoostGuaranteed(target_until(None, *until)),
        R::BoostLapsed { from, to } => ReasonCode::BoostLapsed(from_to(*from, *to)),
        R::BaseCutScheduled { to, effective_at } => {
            ReasonCode::BaseCutScheduled(target_until(Some(to.get()), *effective_at))
        }
        R::BaseCut { from, to } => ReasonCode::BaseCut(from_to(from.get(), to.get())),
        R::BaseCutLimited { target, allowed } => {
            ReasonCode::BaseCutLimited(from_to(target.get(), allowed.get()))
        }
        R::Incentive { id, bonus, ends_at } => ReasonCode::Incentive(IncentiveParam {
            id: id.clone(),
            bonus: decimal_or_absent(bonus.get()),
            ends_at: Some(timestamp(*ends_at)),
        }),
    };
    Reason { code: Some(code) }
}

fn published(p: &Published) -> PublishedCard {
    PublishedCard {
        version: p.version,
        rate: decimal_or_absent(p.rate.get()),
        guaranteed_until: p.guaranteed_until.map(timestamp),
        category: p.category.clone(),
        out_of_stock: p.out_of_stock,
        explanation: p.explanation.clone(),
        scheduled_cut: p.scheduled_cut.map(cut),
    }
}

// ---- wire → core ----------------------------------------------------------------------

fn into_decimal(w: WireDecimal) -> Result<Decimal> {
    if !w.text.is_empty() {
        return Decimal::from_str_exact(&w.text).map_err(|e| format!("{:?}: {e}", w.text));
    }
    Decimal::try_from_i128_with_scale(i128::from(w.units), w.scale)
        .map_err(|e| format!("{} at scale {}: {e}", w.units, w.scale))
}

/// A decimal field that defaults to zero.
fn decimal_or_zero(w: Option<WireDecimal>) -> Result<Decimal> {
    w.map_or(Ok(Decimal::ZERO), into_decimal)
}

fn into_time(t: Timestamp) -> Result<DateTime<Utc>> {
    DateTime::from_timestamp(t.seconds, t.nanos).ok_or_else(|| {
        format!(
            "{} s {} ns is not a representable instant",
            t.seconds, t.nanos
        )
    })
}

/// A timestamp field the core type requires.
fn required_time(t: Option<Timestamp>, field: &str) -> Result<DateTime<Utc>> {
    let t = t.ok_or_else(|| format!("{field}: missing"))?;
    into_time(t).map_err(|e| format!("{field}: {e}"))
}

fn optional_time(t: Option<Timestamp>, field: &str) -> Result<Option<DateTime<Utc>>> {
    t.map(into_time)
        .transpose()
        .map_err(|e| format!("{field}: {e}"))
}

/// Reads a decimal field into a validated newtype.
fn typed<T, E: std::fmt::Display>(
    w: Option<WireDecimal>,
    field: &str,
    make: impl FnOnce(Decimal) -> std::result::Result<T, E>,
) -> Result<T> {
    let d = decimal_or_zero(w).map_err(|e| format!("{field}: {e}"))?;
    make(d).map_err(|e| format!("{field}: {e}"))
}

fn optional_typed<T, E: std::fmt::Display>(
    w: Option<WireDecimal>,
    field: &str,
    make: impl FnOnce(Decimal) -> std::result::Result<T, E>,
) -> Result<Option<T>> {
    w.map(|w| typed(Some(w), field, make)).transpose()
}

fn plain(w: Option<WireDecimal>, field: &str) -> Result<Decimal> {
    decimal_or_zero(w).map_err(|e| format!("{field}: {e}"))
}

fn sku_or_own(text: String, own: &Sku) -> Result<Sku> {
    if text.is_empty() {
        Ok(own.clone())
    } else {
        Sku::new(text).map_err(|e| format!("sku: {e}"))
    }
}

fn into_sku_state(s: SkuState) -> Result<ratemesh_core::SkuState> {
    let sku = Sku::new(s.sku).map_err(|e| format!("state.sku: {e}"))?;
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
        .map_err(|e| format!("state.product.{e}"))?;
    let mut stock = BTreeMap::new();
    for entry in s.stock {
        let level = StockLevel {
            on_hand: typed(entry.on_hand, "on_hand", Quantity::new)?,
            reserved: typed(entry.reserved, "reserved", Quantity::new)?,
            sequence: entry.sequence,
            as_of: required_time(entry.as_of, "as_of")?,
        };
        stock.insert(entry.location, level);
    }
    let velocity =
        into_velocity(s.velocity.unwrap_or_default()).map_err(|e| format!("state.velocity.{e}"))?;
    let overrides = into_override_book(s.overrides.unwrap_or_default())
        .map_err(|e| format!("state.overrides.{e}"))?;
    let incentive = s
        .incentive
        .map(|i| into_incentive(i, &sku))
        .transpose()
        .map_err(|e| format!("state.incentive.{e}"))?;
    Ok(ratemesh_core::SkuState {
        product,
        product_at: optional_time(s.product_at, "state.product_at")?,
        stock,
        available: typed(s.available, "state.available", Quantity::new)?,
        velocity,
        overrides,
        incentive,
        incentive_at: optional_time(s.incentive_at, "state.incentive_at")?,
        last_tick_at: optional_time(s.last_tick_at, "state.last_tick_at")?,
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

fn into_incentive(i: Incentive, own: &Sku) -> Result<ratemesh_core::Incentive> {
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

fn into_rate_card(c: RateCard, own: &Sku) -> Result<ratemesh_core::RateCard> {
    let p = c.parts.unwrap_or_default();
    let parts = RateParts {
        base: typed(p.base, "parts.base", Rate::new)?,
        inventory_adjustment: plain(p.inventory_adjustment, "parts.inventory_adjustment")?,
        boost: plain(p.boost, "parts.boost")?,
        incentive: plain(p.incentive, "parts.incentive")?,
        overrides: plain(p.overrides, "parts.overrides")?,
        guardrails: plain(p.guardrails, "parts.guardrails")?,
    };
    let reasons = c
        .reasons
        .into_iter()
        .enumerate()
        .map(|(i, r)| into_reason(r).map_err(|e| format!("reasons[{i}].{e}")))
        .collect::<Result<Vec<_>>>()?;
    let computed_at = required_time(c.computed_at, "computed_at")?;
    let s = c.state.unwrap_or_default();
    let base_history = s
        .base_history
        .into_iter()
        .map(|b| {
            Ok(BaseChange {
                at: required_time(b.at, "state.base_history.at")?,
                rate: typed(b.rate, "state.base_history.rate", Rate::new)?,
            })
        })
        .collect::<Result<Vec<_>>>()?;
    Ok(ratemesh_core::RateCard {
        sku: sku_or_own(c.sku, own)?,
        effective_rate: typed(c.effective_rate, "effective_rate", Rate::new)?,
        previous_rate: optional_typed(c.previous_rate, "previous_rate", Rate::new)?,
        parts,
        reasons,
        version: c.version,
        computed_at,
        changed_at: optional_time(c.changed_at, "changed_at")?.unwrap_or(computed_at),
        guaranteed_until: optional_time(c.guaranteed_until, "guaranteed_until")?,
        state: CardState {
            band: s.band.map(|b| BandPosition {
                table: b.table,
                index: b.index,
            }),
            policy_rate: optional_typed(s.policy_rate, "state.policy_rate", Rate::new)?,
            policy_changed_at: optional_time(s.policy_changed_at, "state.policy_changed_at")?,
            published_base: optional_typed(s.published_base, "state.published_base", Rate::new)?,
            base_history,
            pending_cut: s
                .pending_cut
                .map(|c| into_cut(c, "state.pending_cut"))
                .transpose()?,
            boost: plain(s.boost, "state.boost")?,
            boost_changed_at: optional_time(s.boost_changed_at, "state.boost_changed_at")?,
            boost_guaranteed_until: optional_time(
                s.boost_guaranteed_until,
                "state.boost_guaranteed_until",
            )?,
        },
    })
}

fn into_cut(c: Cut, field: &str) -> Result<PendingCut> {
    Ok(PendingCut {
        to: typed(c.to, &format!("{field}.to"), Rate::new)?,
        effective_at: required_time(c.effective_at, &format!("{field}.effective_at"))?,
    })
}

fn into_reason(r: Reason) -> Result<ratemesh_core::Reason> {
    use ratemesh_core::Reason as R;
    let rate = |w: Option<WireDecimal>, field: &str| typed(w, field, Rate::new);
    let until = |t: Option<Timestamp>, field: &str| required_time(t, field);
    Ok(match r.code.ok_or("code: missing")? {
        ReasonCode::NoProductData(Unit {}) => R::NoProductData,
        ReasonCode::OutOfStock(p) => R::OutOfStock {
            rate: rate(p.rate, "out_of_stock.rate")?,
        },
        ReasonCode::NoVelocityData(Unit {}) => R::NoVelocityData,
        ReasonCode::LowCover(c) => R::LowCover {
            days: typed(c.days, "low_cover.days", DaysOfCover::new)?,
            band: c.band,
        },
        ReasonCode::Overstock(c) => R::Overstock {
            days: typed(c.days, "overstock.days", DaysOfCover::new)?,
            band: c.band,
        },
        ReasonCode::PeakWindow(w) => R::PeakWindow { window: w.window },
        ReasonCode::Damped(d) => R::Damped {
            target: rate(d.target, "damped.target")?,
            max_step: plain(d.max_step, "damped.max_step")?,
        },
        ReasonCode::Held(h) => R::Held {
            target: rate(h.target, "held.target")?,
            until: until(h.until, "held.until")?,
        },
        ReasonCode::Floor(p) => R::Floor {
            floor: rate(p.rate, "floor.rate")?,
        },
        ReasonCode::Cap(p) => R::Cap {
            cap: rate(p.rate, "cap.rate")?,
        },
        ReasonCode::MarginGuard(p) => R::MarginGuard {
            max_rate: rate(p.rate, "margin_guard.rate")?,
        },
        ReasonCode::OverridePin(o) => R::OverridePin {
            rate: rate(o.value, "override_pin.value")?,
            id: o.id,
        },
        ReasonCode::OverrideFloor(o) => R::OverrideFloor {
            floor: rate(o.value, "override_floor.value")?,
            id: o.id,
        },
        ReasonCode::OverrideCap(o) => R::OverrideCap {
            cap: rate(o.value, "override_cap.value")?,
            id: o.id,
        },
        ReasonCode::OverrideMultiplier(o) => R::OverrideMultiplier {
            factor: plain(o.value, "override_multiplier.value")?,
            id: o.id,
        },
        ReasonCode::OverrideExclude(o) => R::OverrideExclude { id: o.id },
        ReasonCode::Boost(b) => R::Boost {
            boost: plain(b.boost, "boost.boost")?,
            guaranteed_until: until(b.guaranteed_until, "boost.guaranteed_until")?,
        },
        ReasonCode::BoostGuaranteed(g) => R::BoostGuaranteed {
            until: until(g.until, "boost_guaranteed.until")?,
        },
        ReasonCode::BoostLapsed(f) => R::BoostLapsed {
            from: plain(f.from, "boost_lapsed.from")?,
            to: plain(f.to, "boost_lapsed.to")?,
        },
        ReasonCode::BaseCutScheduled(s) => R::BaseCutScheduled {
            to: rate(s.target, "base_cut_scheduled.target")?,
            effective_at: until(s.until, "base_cut_scheduled.until")?,
        },
        ReasonCode::BaseCut(f) => R::BaseCut {
            from: rate(f.from, "base_cut.from")?,
            to: rate(f.to, "base_cut.to")?,
        },
        ReasonCode::BaseCutLimited(f) => R::BaseCutLimited {
            target: rate(f.from, "base_cut_limited.from")?,
            allowed: rate(f.to, "base_cut_limited.to")?,
        },
        ReasonCode::Incentive(i) => R::Incentive {
            bonus: rate(i.bonus, "incentive.bonus")?,
            ends_at: until(i.ends_at, "incentive.ends_at")?,
            id: i.id,
        },
    })
}

fn into_published(p: PublishedCard) -> Result<Published> {
    Ok(Published {
        version: p.version,
        rate: typed(p.rate, "rate", Rate::new)?,
        guaranteed_until: optional_time(p.guaranteed_until, "guaranteed_until")?,
        category: p.category,
        out_of_stock: p.out_of_stock,
        explanation: p.explanation,
        scheduled_cut: p
            .scheduled_cut
            .map(|c| into_cut(c, "scheduled_cut"))
            .transpose()?,
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
        let err = into_published(PublishedCard {
            version: 1,
            rate: Some(decimal(Decimal::TWO)),
            ..PublishedCard::default()
        })
        .unwrap_err();
        assert!(
            err.starts_with("rate: rate: must be between 0 and 1"),
            "{err}"
        );
    }
}
