//! The protobuf messages of the binary `engine` field, and their conversions to and from
//! the core types. The schema, its rules and why it looks the way it does are in the
//! [`record`](super::record) module documentation; each struct here is one message of it,
//! with the same field numbers (some named differently here, where the schema's name is
//! a core type's: `WireDecimal` is `Decimal`, `CardMemory` is `CardState`, `Cut` is
//! `PendingCut`, and so on — message names are not part of the encoding).
//! The state's messages, decimals and instants are the contract's
//! ([`ratemesh_contract::state_wire`]).
//!
//! Encoding never fails. Decoding checks what the core types check on construction (a
//! SKU's alphabet, a rate within `0..=1`, non-negative quantities and money, times within
//! chrono's range) and fails with the path of the first field that is wrong.

use chrono::{DateTime, Utc};
use ratemesh_contract::state_wire::{
    SkuState, Timestamp, Unit, WireDecimal, decimal, decimal_or_absent, into_sku_state, into_time,
    optional_time, optional_typed, plain, required_time, sku_or_own, sku_state, sku_unless_own,
    timestamp, typed,
};
use ratemesh_core::card::{BandPosition, BaseChange, CardState, PendingCut, RateParts};
use ratemesh_core::{DaysOfCover, Rate, Sku};
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
        let state = into_sku_state(self.state.ok_or("state: missing")?)
            .map_err(|e| format!("state.{e}"))?;
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

    #[test]
    fn a_rate_out_of_range_is_refused_with_its_field() {
        // Decimals and instants out of range: `ratemesh_contract::state_wire`'s tests.
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
