//! Flash incentives: the per-SKU decision (open, extend, close, or nothing and why),
//! budget accounting, cooldown, and the selection that enforces concurrency limits.
//!
//! The incentives service calls [`decide`] for each SKU it watches, gathers the `Open`
//! decisions as [`Candidate`]s, runs [`select`] against the counts of incentives already
//! open, and publishes the winners. The rates service only folds the resulting incentive
//! events; the bonus reaches the rate through [`crate::compute()`].
//!
//! Budgets are counted from stock depletion, so they move in the ERP's steps: a reading
//! that sells 1,600 units at once books all 1,600 against a budget of 10. The incentive
//! closes on the first reading that reaches a budget, and the overshoot that step forced
//! stays visible ([`Incentive::units_over_budget`], [`Incentive::spend_over_budget`]).
//! Spend counts the bonus actually paid ([`paid_bonus`]: after the cap and the margin
//! guard), not the nominal one. With `stop_on_forecast` an incentive also closes when the
//! velocity forecast says the rest of a budget will be used before the next stock report.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;

use chrono::{DateTime, TimeDelta, Utc};
use rust_decimal::Decimal;
use serde::{Deserialize, Serialize};

use crate::policy::Policy;
use crate::policy::flash::FlashRules;
use crate::product::Product;
use crate::types::{DaysOfCover, Money, Quantity, Rate, Sku, Velocity};

/// An open (or just closed) flash incentive on one SKU, with its budget accounting.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Incentive {
    /// Unique id.
    pub id: String,
    /// The SKU it boosts.
    pub sku: Sku,
    /// The SKU's category (for the per-category limit).
    pub category: String,
    /// Bonus added to the rate.
    pub bonus: Rate,
    /// When it opened.
    pub opened_at: DateTime<Utc>,
    /// When it ends unless extended.
    pub ends_at: DateTime<Utc>,
    /// Extensions granted so far.
    pub extensions: u32,
    /// Spend budget.
    pub budget_spend: Money,
    /// Unit budget.
    pub budget_units: Quantity,
    /// Spend so far: Σ units sold × price × the bonus actually paid (see [`paid_bonus`]).
    pub spent: Money,
    /// Units sold during the window.
    pub units_sold: Quantity,
    /// Set when a merchandiser cancels; the next decision closes it.
    #[serde(default)]
    pub cancel_requested: bool,
    /// Opened by hand rather than by the rules.
    #[serde(default)]
    pub manual: bool,
}

impl Incentive {
    /// A new incentive opened at `now` under `rules`.
    pub fn open(
        id: String,
        sku: Sku,
        category: String,
        rules: &FlashRules,
        now: DateTime<Utc>,
    ) -> Self {
        Self {
            id,
            sku,
            category,
            bonus: rules.bonus,
            opened_at: now,
            ends_at: now + rules.duration,
            extensions: 0,
            budget_spend: rules.budget_spend,
            budget_units: rules.budget_units,
            spent: Money::ZERO,
            units_sold: Quantity::ZERO,
            cancel_requested: false,
            manual: false,
        }
    }

    /// Whether the bonus applies at `now`: inside the window and not cancelled.
    pub fn is_active(&self, now: DateTime<Utc>) -> bool {
        !self.cancel_requested && self.opened_at <= now && now < self.ends_at
    }

    /// Books `units` sold at `price` during the window while the rate carried `paid` of
    /// the bonus (see [`paid_bonus`]): spend grows by `units × price × paid`, never by more
    /// than the nominal bonus would give.
    pub fn record_sale(&mut self, units: Quantity, price: Money, paid: Rate) {
        let spend = units.get() * price.get() * paid.min(self.bonus).get();
        self.spent = Money::clamped(self.spent.get() + spend);
        self.units_sold = Quantity::clamped(self.units_sold.get() + units.get());
    }

    /// Units sold beyond the unit budget (zero while within it): the overshoot forced by
    /// a stock reading that stepped past the budget.
    pub fn units_over_budget(&self) -> Quantity {
        Quantity::clamped(self.units_sold.get() - self.budget_units.get())
    }

    /// Spend beyond the spend budget (zero while within it).
    pub fn spend_over_budget(&self) -> Money {
        Money::clamped(self.spent.get() - self.budget_spend.get())
    }

    /// Whether the velocity forecast says a budget will be used up before the next stock
    /// report: `velocity × report interval` units sell in the meantime, each costing what
    /// a unit has cost so far (the nominal `price × bonus` before the first sale).
    /// `false` when velocity or the report interval is unknown.
    pub fn forecast_exhausts(&self, inputs: &IncentiveInputs) -> bool {
        let (Some(velocity), Some(interval)) = (inputs.velocity, inputs.report_interval) else {
            return false;
        };
        if interval <= TimeDelta::zero() {
            return false;
        }
        let days = Decimal::from(interval.num_seconds()) / Decimal::from(86_400);
        let expected = velocity.get() * days;
        if expected.is_zero() {
            return false;
        }
        let units_left = self.budget_units.get() - self.units_sold.get();
        if expected >= units_left {
            return true;
        }
        let per_unit = if self.units_sold.get().is_zero() {
            inputs
                .price
                .map_or(Decimal::ZERO, |p| p.get() * self.bonus.get())
        } else {
            self.spent.get() / self.units_sold.get()
        };
        let spend_left = self.budget_spend.get() - self.spent.get();
        expected
            .checked_mul(per_unit)
            .is_some_and(|spend| spend >= spend_left)
    }

    /// Spend budget left (zero when exhausted).
    pub fn spend_left(&self) -> Money {
        Money::clamped(self.budget_spend.get() - self.spent.get())
    }

    /// Whether either budget is used up.
    pub fn budget_exhausted(&self) -> bool {
        self.spent >= self.budget_spend || self.units_sold >= self.budget_units
    }
}

/// Per-SKU incentive state kept by the incentives service.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct IncentiveTrack {
    /// The open incentive, if any.
    pub active: Option<Incentive>,
    /// When the last incentive closed (for the cooldown).
    pub last_closed_at: Option<DateTime<Utc>>,
    /// Why it closed.
    pub last_close_reason: Option<CloseReason>,
}

impl IncentiveTrack {
    /// Applies a decision taken at `now`; `new_id` names an incentive it opens. Returns
    /// the incentive as it now stands (opened, extended or closed), if the decision
    /// changed anything.
    pub fn apply(
        &mut self,
        decision: &Decision,
        sku: &Sku,
        category: &str,
        rules: &FlashRules,
        new_id: impl FnOnce() -> String,
        now: DateTime<Utc>,
    ) -> Option<Incentive> {
        match decision {
            Decision::Open { .. } => {
                let inc = Incentive::open(new_id(), sku.clone(), category.to_owned(), rules, now);
                self.active = Some(inc.clone());
                Some(inc)
            }
            Decision::Extend { ends_at } => {
                let inc = self.active.as_mut()?;
                inc.ends_at = *ends_at;
                inc.extensions += 1;
                Some(inc.clone())
            }
            Decision::Close { reason } => {
                let mut inc = self.active.take()?;
                inc.ends_at = inc.ends_at.min(now);
                self.last_closed_at = Some(now);
                self.last_close_reason = Some(*reason);
                Some(inc)
            }
            Decision::Nothing { .. } => None,
        }
    }
}

/// What the rules see of a SKU.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct IncentiveInputs {
    /// Available units.
    pub available: Quantity,
    /// Sales velocity, if known.
    pub velocity: Option<Velocity>,
    /// Sale price, if product data is known.
    pub price: Option<Money>,
    /// Expected time until the next stock report (the last gap between two reports), if
    /// known; drives the budget forecast.
    pub report_interval: Option<TimeDelta>,
}

impl IncentiveInputs {
    /// The same inputs the rate computation uses.
    pub fn from_rate_inputs(inputs: &crate::RateInputs<'_>) -> Self {
        Self {
            available: inputs.available,
            velocity: inputs.velocity,
            price: inputs.product.map(|p| p.price),
            report_interval: None,
        }
    }

    fn cover(&self) -> Option<DaysOfCover> {
        self.velocity
            .map(|v| DaysOfCover::from_stock(self.available, v))
    }
}

/// Why an incentive closes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum CloseReason {
    /// The window ended and no extension was possible.
    Expired,
    /// Cover fell below the exit threshold or stock ran out.
    SoldThrough,
    /// The spend or unit budget is used up.
    BudgetExhausted,
    /// The velocity forecast says the remaining budget would be used up before the next
    /// stock report (`stop_on_forecast`).
    BudgetForecast,
    /// A merchandiser cancelled it.
    Cancelled,
}

/// Why no incentive action is taken.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "why", rename_all = "snake_case")]
pub enum NothingReason {
    /// An incentive is open and nothing ends it yet.
    Running {
        /// Its current end.
        ends_at: DateTime<Utc>,
    },
    /// Automatic incentives are disabled for the category.
    Disabled,
    /// The SKU closed one recently.
    Cooldown {
        /// When it may open again.
        until: DateTime<Utc>,
    },
    /// Product data (price) is unknown.
    NoProductData,
    /// Nothing in stock.
    OutOfStock,
    /// Velocity is not known yet.
    NoVelocityData,
    /// Not overstocked enough.
    BelowCoverThreshold {
        /// Current cover.
        cover: DaysOfCover,
        /// Required cover.
        min_cover: DaysOfCover,
    },
    /// Sells too slowly for an incentive to help.
    VelocityTooLow {
        /// Current velocity.
        velocity: Velocity,
        /// Required minimum.
        min_velocity: Velocity,
    },
    /// Sells too fast to need one.
    VelocityTooHigh {
        /// Current velocity.
        velocity: Velocity,
        /// Allowed maximum.
        max_velocity: Velocity,
    },
}

/// The outcome of [`decide`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "decision", rename_all = "snake_case")]
pub enum Decision {
    /// Qualifies for a new incentive (subject to [`select`]).
    Open {
        /// Bonus it would carry.
        bonus: Rate,
        /// When it would end.
        ends_at: DateTime<Utc>,
        /// Cover, the ranking key for [`select`].
        cover: DaysOfCover,
    },
    /// Extend the open incentive to `ends_at`.
    Extend {
        /// New end.
        ends_at: DateTime<Utc>,
    },
    /// Close the open incentive.
    Close {
        /// Why.
        reason: CloseReason,
    },
    /// Do nothing.
    Nothing {
        /// Why.
        why: NothingReason,
    },
}

fn velocity_check(rules: &FlashRules, velocity: Velocity) -> Option<NothingReason> {
    if velocity < rules.min_velocity {
        return Some(NothingReason::VelocityTooLow {
            velocity,
            min_velocity: rules.min_velocity,
        });
    }
    if let Some(max) = rules.max_velocity
        && velocity > max
    {
        return Some(NothingReason::VelocityTooHigh {
            velocity,
            max_velocity: max,
        });
    }
    None
}

/// Decides what to do with one SKU's incentive at `now`.
///
/// With an incentive open, in this order: cancelled → close (`cancelled`); a budget used
/// up → close (`budget_exhausted`); with `stop_on_forecast`, the rest of a budget forecast
/// to go before the next stock report → close (`budget_forecast`); out of stock or cover
/// below `exit_cover_days` →
/// close (`sold_through`); window over → extend by `duration` if the SKU still qualifies
/// and extensions remain, else close (`expired`); otherwise nothing (`running`).
///
/// With none open: disabled, cooldown, no product data, out of stock, no velocity, cover
/// below `min_cover_days`, velocity outside its bounds each give nothing with that
/// reason; otherwise `open`.
pub fn decide(
    track: &IncentiveTrack,
    rules: &FlashRules,
    inputs: &IncentiveInputs,
    now: DateTime<Utc>,
) -> Decision {
    let nothing = |why| Decision::Nothing { why };
    if let Some(inc) = &track.active {
        if inc.cancel_requested {
            return Decision::Close {
                reason: CloseReason::Cancelled,
            };
        }
        if inc.budget_exhausted() {
            return Decision::Close {
                reason: CloseReason::BudgetExhausted,
            };
        }
        if rules.stop_on_forecast && inc.forecast_exhausts(inputs) {
            return Decision::Close {
                reason: CloseReason::BudgetForecast,
            };
        }
        let cover = inputs.cover();
        if inputs.available.get().is_zero() || cover.is_some_and(|c| c < rules.exit_cover) {
            return Decision::Close {
                reason: CloseReason::SoldThrough,
            };
        }
        if now >= inc.ends_at {
            let qualifies = rules.enabled
                && cover.is_some_and(|c| c >= rules.min_cover)
                && inputs
                    .velocity
                    .is_some_and(|v| velocity_check(rules, v).is_none());
            if qualifies && inc.extensions < rules.max_extensions {
                let from = if inc.ends_at + rules.duration > now {
                    inc.ends_at
                } else {
                    now
                };
                return Decision::Extend {
                    ends_at: from + rules.duration,
                };
            }
            return Decision::Close {
                reason: CloseReason::Expired,
            };
        }
        return nothing(NothingReason::Running {
            ends_at: inc.ends_at,
        });
    }
    if !rules.enabled {
        return nothing(NothingReason::Disabled);
    }
    if let Some(closed) = track.last_closed_at
        && now < closed + rules.cooldown
    {
        return nothing(NothingReason::Cooldown {
            until: closed + rules.cooldown,
        });
    }
    if inputs.price.is_none() {
        return nothing(NothingReason::NoProductData);
    }
    if inputs.available.get().is_zero() {
        return nothing(NothingReason::OutOfStock);
    }
    let Some(velocity) = inputs.velocity else {
        return nothing(NothingReason::NoVelocityData);
    };
    let cover = DaysOfCover::from_stock(inputs.available, velocity);
    if cover < rules.min_cover {
        return nothing(NothingReason::BelowCoverThreshold {
            cover,
            min_cover: rules.min_cover,
        });
    }
    if let Some(why) = velocity_check(rules, velocity) {
        return nothing(why);
    }
    Decision::Open {
        bonus: rules.bonus,
        ends_at: now + rules.duration,
        cover,
    }
}

/// A SKU that qualifies for a new incentive.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Candidate {
    /// The SKU.
    pub sku: Sku,
    /// Its category.
    pub category: String,
    /// Its days of cover (higher wins).
    pub cover: DaysOfCover,
}

/// Incentives already open.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct ActiveCounts {
    /// Open per category.
    pub per_category: BTreeMap<String, u32>,
    /// Open across the program.
    pub program: u32,
}

/// Why a candidate was not selected.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "why", rename_all = "snake_case")]
pub enum LossReason {
    /// The category's limit is reached.
    CategoryFull {
        /// Category.
        category: String,
        /// Its `flash.max_concurrent`.
        limit: u32,
        /// Open before this selection.
        already_open: u32,
        /// Candidates with more cover that took the remaining slots.
        selected_ahead: u32,
    },
    /// The program's limit is reached.
    ProgramFull {
        /// `program.max_concurrent_incentives`.
        limit: u32,
        /// Open before this selection.
        already_open: u32,
        /// Candidates with more cover that took the remaining slots.
        selected_ahead: u32,
    },
    /// The same SKU was offered twice; only its first appearance counts.
    DuplicateCandidate,
}

impl fmt::Display for LossReason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            LossReason::CategoryFull {
                category,
                limit,
                already_open,
                selected_ahead,
            } => write!(
                f,
                "category {category} allows {limit} incentives at once: {already_open} were open and {selected_ahead} more overstocked SKUs took the free slots"
            ),
            LossReason::ProgramFull {
                limit,
                already_open,
                selected_ahead,
            } => write!(
                f,
                "the program allows {limit} incentives at once: {already_open} were open and {selected_ahead} more overstocked SKUs took the free slots"
            ),
            LossReason::DuplicateCandidate => f.write_str("the SKU was offered more than once"),
        }
    }
}

/// The result of [`select`].
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct Selection {
    /// Candidates to open, most overstocked first.
    pub winners: Vec<Candidate>,
    /// Every other candidate with the reason it lost.
    pub losers: Vec<(Candidate, LossReason)>,
}

/// Picks which candidates open given the concurrency limits: the most overstocked
/// (highest cover, then smaller SKU) first, as long as both its category
/// (`flash.max_concurrent`) and the program (`program.max_concurrent_incentives`) have a
/// free slot. Every loser is returned with why it lost.
pub fn select(candidates: &[Candidate], active: &ActiveCounts, policy: &Policy) -> Selection {
    let mut order: Vec<&Candidate> = candidates.iter().collect();
    order.sort_by(|a, b| b.cover.cmp(&a.cover).then_with(|| a.sku.cmp(&b.sku)));
    let mut seen = BTreeSet::new();
    let mut per_category_new: BTreeMap<&str, u32> = BTreeMap::new();
    let mut program_new = 0u32;
    let mut out = Selection::default();
    for c in order {
        if !seen.insert(&c.sku) {
            out.losers.push((c.clone(), LossReason::DuplicateCandidate));
            continue;
        }
        let limit = policy.category(&c.category).flash.max_concurrent;
        let already = active.per_category.get(&c.category).copied().unwrap_or(0);
        let cat_new = per_category_new
            .get(c.category.as_str())
            .copied()
            .unwrap_or(0);
        if active.program + program_new >= policy.max_concurrent_incentives {
            out.losers.push((
                c.clone(),
                LossReason::ProgramFull {
                    limit: policy.max_concurrent_incentives,
                    already_open: active.program,
                    selected_ahead: program_new,
                },
            ));
            continue;
        }
        if already + cat_new >= limit {
            out.losers.push((
                c.clone(),
                LossReason::CategoryFull {
                    category: c.category.clone(),
                    limit,
                    already_open: already,
                    selected_ahead: cat_new,
                },
            ));
            continue;
        }
        *per_category_new.entry(c.category.as_str()).or_default() += 1;
        program_new += 1;
        out.winners.push(c.clone());
    }
    out
}

impl fmt::Display for CloseReason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            CloseReason::Expired => "the window ended",
            CloseReason::SoldThrough => "the SKU sold through",
            CloseReason::BudgetExhausted => "the budget is used up",
            CloseReason::BudgetForecast => {
                "the rest of the budget would be used up before the next stock report"
            }
            CloseReason::Cancelled => "a merchandiser cancelled it",
        })
    }
}

impl fmt::Display for NothingReason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            NothingReason::Running { ends_at } => {
                write!(f, "an incentive is running until {ends_at}")
            }
            NothingReason::Disabled => {
                f.write_str("automatic incentives are disabled for this category")
            }
            NothingReason::Cooldown { until } => write!(f, "in cooldown until {until}"),
            NothingReason::NoProductData => f.write_str("no product data"),
            NothingReason::OutOfStock => f.write_str("out of stock"),
            NothingReason::NoVelocityData => f.write_str("no sales velocity yet"),
            NothingReason::BelowCoverThreshold { cover, min_cover } => {
                write!(f, "{cover} days of cover is below the {min_cover} required")
            }
            NothingReason::VelocityTooLow {
                velocity,
                min_velocity,
            } => {
                write!(
                    f,
                    "selling {velocity}/day, below the {min_velocity}/day required"
                )
            }
            NothingReason::VelocityTooHigh {
                velocity,
                max_velocity,
            } => {
                write!(
                    f,
                    "selling {velocity}/day, above the {max_velocity}/day allowed"
                )
            }
        }
    }
}

/// A SKU's rate before its incentive and the guardrails, read off its card: the
/// effective rate less the guardrails' and the incentive's parts, the `rate_before` of
/// [`paid_bonus`]. `None` when an override pins or excludes the rate, so no bonus
/// reaches it.
pub fn rate_before_incentive(card: &crate::card::RateCard) -> Option<Decimal> {
    let pinned = card.reasons.iter().any(|r| {
        matches!(
            r.code(),
            crate::reason::ReasonCode::OverridePin | crate::reason::ReasonCode::OverrideExclude
        )
    });
    if pinned {
        return None;
    }
    Some(card.effective_rate.get() - card.parts.guardrails - card.parts.incentive)
}

/// Spend implied by selling `units` at `price` with `bonus` paid (what
/// [`Incentive::record_sale`] books), exposed for budget previews.
pub fn spend_for(units: Quantity, price: Money, bonus: Rate) -> Decimal {
    units.get() * price.get() * bonus.get()
}

/// The part of `bonus` a sale actually earns: the rate with the bonus less the rate
/// without it, both after the category's guardrails (floor, then cap, then the margin
/// guard, as [`crate::compute()`] applies them). `rate_before` is the SKU's rate before the
/// incentive and the guardrails. Between zero (the cap or margin guard already binds
/// without the bonus) and `bonus`.
pub fn paid_bonus(policy: &Policy, product: &Product, rate_before: Decimal, bonus: Rate) -> Rate {
    let cat = policy.category(&product.category);
    let margin = product
        .margin_limit(cat.margin_share, policy.rate_decimals)
        .get();
    let guard = |rate: Decimal| rate.max(cat.floor.get()).min(cat.cap.get()).min(margin);
    let paid = guard(rate_before + bonus.get()) - guard(rate_before);
    Rate::clamped(paid.min(bonus.get()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::{TimeDelta, TimeZone};
    use rust_decimal_macros::dec;

    fn t(h: i64) -> DateTime<Utc> {
        Utc.with_ymd_and_hms(2025, 3, 1, 0, 0, 0).unwrap() + TimeDelta::hours(h)
    }

    fn rules() -> FlashRules {
        FlashRules {
            enabled: true,
            min_cover: DaysOfCover::new(dec!(90)).unwrap(),
            min_velocity: Velocity::new(dec!(0.5)).unwrap(),
            max_velocity: Some(Velocity::new(dec!(50)).unwrap()),
            bonus: Rate::new(dec!(0.02)).unwrap(),
            duration: TimeDelta::hours(48),
            budget_spend: Money::new(dec!(100)).unwrap(),
            budget_units: Quantity::new(dec!(40)).unwrap(),
            cooldown: TimeDelta::hours(168),
            max_extensions: 1,
            exit_cover: DaysOfCover::new(dec!(30)).unwrap(),
            max_concurrent: 2,
            stop_on_forecast: false,
        }
    }

    fn inputs(available: Decimal, velocity: Option<Decimal>) -> IncentiveInputs {
        IncentiveInputs {
            available: Quantity::new(available).unwrap(),
            velocity: velocity.map(|v| Velocity::new(v).unwrap()),
            price: Some(Money::new(dec!(50)).unwrap()),
            report_interval: None,
        }
    }

    fn sku(s: &str) -> Sku {
        Sku::new(s).unwrap()
    }

    fn open_track() -> IncentiveTrack {
        IncentiveTrack {
            active: Some(Incentive::open(
                "i1".into(),
                sku("S"),
                "home".into(),
                &rules(),
                t(0),
            )),
            ..IncentiveTrack::default()
        }
    }

    fn why(d: Decision) -> NothingReason {
        match d {
            Decision::Nothing { why } => why,
            other => panic!("expected nothing, got {other:?}"),
        }
    }

    #[test]
    fn opens_on_overstock_within_velocity_bounds() {
        let d = decide(
            &IncentiveTrack::default(),
            &rules(),
            &inputs(dec!(1000), Some(dec!(10))),
            t(0),
        );
        assert_eq!(
            d,
            Decision::Open {
                bonus: Rate::new(dec!(0.02)).unwrap(),
                ends_at: t(48),
                cover: DaysOfCover::new(dec!(100)).unwrap(),
            }
        );
    }

    #[test]
    fn says_why_nothing_opens() {
        let none = IncentiveTrack::default();
        let r = rules();
        let mut disabled = rules();
        disabled.enabled = false;
        assert_eq!(
            why(decide(
                &none,
                &disabled,
                &inputs(dec!(1000), Some(dec!(10))),
                t(0)
            )),
            NothingReason::Disabled
        );
        let cooling = IncentiveTrack {
            last_closed_at: Some(t(0)),
            ..IncentiveTrack::default()
        };
        assert_eq!(
            why(decide(
                &cooling,
                &r,
                &inputs(dec!(1000), Some(dec!(10))),
                t(10)
            )),
            NothingReason::Cooldown { until: t(168) }
        );
        assert!(matches!(
            decide(&cooling, &r, &inputs(dec!(1000), Some(dec!(10))), t(168)),
            Decision::Open { .. }
        ));
        let mut no_price = inputs(dec!(1000), Some(dec!(10)));
        no_price.price = None;
        assert_eq!(
            why(decide(&none, &r, &no_price, t(0))),
            NothingReason::NoProductData
        );
        assert_eq!(
            why(decide(&none, &r, &inputs(dec!(0), Some(dec!(10))), t(0))),
            NothingReason::OutOfStock
        );
        assert_eq!(
            why(decide(&none, &r, &inputs(dec!(10), None), t(0))),
            NothingReason::NoVelocityData
        );
        assert!(matches!(
            why(decide(&none, &r, &inputs(dec!(500), Some(dec!(10))), t(0))),
            NothingReason::BelowCoverThreshold { .. }
        ));
        assert!(matches!(
            why(decide(&none, &r, &inputs(dec!(500), Some(dec!(0.1))), t(0))),
            NothingReason::VelocityTooLow { .. }
        ));
        assert!(matches!(
            why(decide(
                &none,
                &r,
                &inputs(dec!(10000), Some(dec!(60))),
                t(0)
            )),
            NothingReason::VelocityTooHigh { .. }
        ));
    }

    #[test]
    fn closes_for_each_reason_in_order() {
        let r = rules();
        let good = inputs(dec!(1000), Some(dec!(10)));
        let close = |reason| Decision::Close { reason };
        let mut track = open_track();
        assert_eq!(
            decide(&track, &r, &good, t(1)),
            Decision::Nothing {
                why: NothingReason::Running { ends_at: t(48) }
            }
        );
        track.active.as_mut().unwrap().cancel_requested = true;
        assert_eq!(
            decide(&track, &r, &good, t(1)),
            close(CloseReason::Cancelled)
        );

        let mut track = open_track();
        let inc = track.active.as_mut().unwrap();
        inc.record_sale(
            Quantity::new(dec!(100)).unwrap(),
            Money::new(dec!(50)).unwrap(),
            inc.bonus,
        );
        // 100 units × 50 × 0.02 = 100 = the spend budget
        assert_eq!(inc.spent.get(), dec!(100));
        assert_eq!(inc.spend_left(), Money::ZERO);
        assert_eq!(
            decide(&track, &r, &good, t(1)),
            close(CloseReason::BudgetExhausted)
        );

        let mut track = open_track();
        let inc = track.active.as_mut().unwrap();
        inc.record_sale(
            Quantity::new(dec!(40)).unwrap(),
            Money::new(dec!(1)).unwrap(),
            inc.bonus,
        );
        assert_eq!(
            decide(&track, &r, &good, t(1)),
            close(CloseReason::BudgetExhausted)
        );

        let track = open_track();
        assert_eq!(
            decide(&track, &r, &inputs(dec!(200), Some(dec!(10))), t(1)),
            close(CloseReason::SoldThrough)
        );
        assert_eq!(
            decide(&track, &r, &inputs(dec!(0), Some(dec!(10))), t(1)),
            close(CloseReason::SoldThrough)
        );
    }

    fn qty(d: Decimal) -> Quantity {
        Quantity::new(d).unwrap()
    }

    fn money(d: Decimal) -> Money {
        Money::new(d).unwrap()
    }

    #[test]
    fn a_coarse_step_closes_at_once_and_shows_its_overshoot() {
        // budget_units 40, budget_spend 100: one reading sells 1,600 units at 50.
        let r = rules();
        let mut track = open_track();
        let inc = track.active.as_mut().unwrap();
        inc.record_sale(qty(dec!(39)), money(dec!(1)), inc.bonus);
        assert_eq!(inc.units_over_budget(), Quantity::ZERO);
        assert!(matches!(
            decide(&track, &r, &inputs(dec!(100000), Some(dec!(10))), t(1)),
            Decision::Nothing { .. }
        ));
        let inc = track.active.as_mut().unwrap();
        inc.record_sale(qty(dec!(1561)), money(dec!(50)), inc.bonus);
        assert_eq!(
            decide(&track, &r, &inputs(dec!(100000), Some(dec!(10))), t(1)),
            Decision::Close {
                reason: CloseReason::BudgetExhausted
            }
        );
        let inc = track.active.as_ref().unwrap();
        assert_eq!(inc.units_sold.get(), dec!(1600));
        assert_eq!(inc.units_over_budget().get(), dec!(1560));
        // 39 × 1 × 0.02 + 1561 × 50 × 0.02 = 0.78 + 1561
        assert_eq!(inc.spent.get(), dec!(1561.78));
        assert_eq!(inc.spend_over_budget().get(), dec!(1461.78));
    }

    #[test]
    fn spend_counts_the_bonus_actually_paid() {
        let mut inc = open_track().active.unwrap();
        // the cap let through only 0.005 of the 0.02 bonus
        inc.record_sale(
            qty(dec!(10)),
            money(dec!(50)),
            Rate::new(dec!(0.005)).unwrap(),
        );
        assert_eq!(inc.spent.get(), dec!(2.5));
        // never more than the nominal bonus, whatever the caller says
        inc.record_sale(
            qty(dec!(10)),
            money(dec!(50)),
            Rate::new(dec!(0.5)).unwrap(),
        );
        assert_eq!(inc.spent.get(), dec!(12.5));
        assert_eq!(inc.units_sold.get(), dec!(20));
    }

    #[test]
    fn paid_bonus_is_cut_by_the_cap_and_the_margin_guard() {
        let policy = Policy::from_toml_str(
            "[defaults]\ncap = \"0.10\"\nmargin_share = \"0.50\"\nfloor = \"0.03\"\n",
        )
        .unwrap();
        let product = |cost: Decimal| Product {
            category: "home".into(),
            price: money(dec!(100)),
            unit_cost: money(cost),
            base_rate: None,
        };
        let bonus = Rate::new(dec!(0.02)).unwrap();
        let paid = |cost, before| paid_bonus(&policy, &product(cost), before, bonus).get();
        // room under the cap (0.10) and the margin guard (0.5 × 60 / 100 = 0.30)
        assert_eq!(paid(dec!(40), dec!(0.05)), dec!(0.02));
        // the cap takes 0.015 of it
        assert_eq!(paid(dec!(40), dec!(0.095)), dec!(0.005));
        // already at the cap without it: nothing is paid
        assert_eq!(paid(dec!(40), dec!(0.12)), Decimal::ZERO);
        // margin guard 0.5 × 14 / 100 = 0.07
        assert_eq!(paid(dec!(86), dec!(0.06)), dec!(0.01));
        // below the floor either way: the floor pays, not the bonus
        assert_eq!(paid(dec!(40), dec!(0)), Decimal::ZERO);
        assert_eq!(paid(dec!(40), dec!(0.02)), dec!(0.01));
    }

    #[test]
    fn forecast_closes_before_the_next_report_would_overshoot() {
        let mut r = rules();
        // 10/day, reports every 12 h: 5 units expected before the next one.
        let mut inputs = inputs(dec!(100000), Some(dec!(10)));
        inputs.report_interval = Some(TimeDelta::hours(12));
        let mut track = open_track();
        let inc = track.active.as_mut().unwrap();
        inc.record_sale(qty(dec!(34)), money(dec!(1)), inc.bonus);
        let running = decide(&track, &r, &inputs, t(1));
        assert!(matches!(running, Decision::Nothing { .. }), "{running:?}");
        let inc = track.active.as_mut().unwrap();
        inc.record_sale(qty(dec!(1)), money(dec!(1)), inc.bonus);
        // 5 left of 40 and 5 expected: off by default, on with the knob
        assert!(matches!(
            decide(&track, &r, &inputs, t(1)),
            Decision::Nothing { .. }
        ));
        r.stop_on_forecast = true;
        assert_eq!(
            decide(&track, &r, &inputs, t(1)),
            Decision::Close {
                reason: CloseReason::BudgetForecast
            }
        );
        // without a known report interval there is no forecast
        let mut unknown = inputs;
        unknown.report_interval = None;
        assert!(matches!(
            decide(&track, &r, &unknown, t(1)),
            Decision::Nothing { .. }
        ));

        // the spend budget: 100 at 50 × 0.02 = 1 a unit; 96 spent, 5 units expected
        let mut track = open_track();
        let inc = track.active.as_mut().unwrap();
        inc.record_sale(qty(dec!(1)), money(dec!(4800)), inc.bonus);
        assert_eq!(inc.spent.get(), dec!(96));
        // so far a unit cost 96: 5 more would cost 480
        assert_eq!(
            decide(&track, &r, &inputs, t(1)),
            Decision::Close {
                reason: CloseReason::BudgetForecast
            }
        );
        let fresh = open_track();
        // nothing sold yet: 5 × 50 × 0.02 = 5 of 100 expected
        assert!(matches!(
            decide(&fresh, &r, &inputs, t(1)),
            Decision::Nothing { .. }
        ));
    }

    #[test]
    fn extends_once_while_qualifying_then_expires() {
        let r = rules();
        let good = inputs(dec!(1000), Some(dec!(10)));
        let mut track = open_track();
        let d = decide(&track, &r, &good, t(48));
        assert_eq!(d, Decision::Extend { ends_at: t(96) });
        let changed = track
            .apply(&d, &sku("S"), "home", &r, || "unused".into(), t(48))
            .unwrap();
        assert_eq!((changed.ends_at, changed.extensions), (t(96), 1));
        assert_eq!(
            decide(&track, &r, &good, t(96)),
            Decision::Close {
                reason: CloseReason::Expired
            }
        );
        // no longer qualifying at the end: expired, not extended
        let track = open_track();
        assert_eq!(
            decide(&track, &r, &inputs(dec!(500), Some(dec!(10))), t(48)),
            Decision::Close {
                reason: CloseReason::Expired
            }
        );
    }

    #[test]
    fn applying_a_close_starts_the_cooldown() {
        let r = rules();
        let mut track = open_track();
        let d = Decision::Close {
            reason: CloseReason::SoldThrough,
        };
        let closed = track
            .apply(&d, &sku("S"), "home", &r, || "x".into(), t(5))
            .unwrap();
        assert_eq!(closed.ends_at, t(5));
        assert_eq!(track.active, None);
        assert_eq!(track.last_closed_at, Some(t(5)));
        assert_eq!(track.last_close_reason, Some(CloseReason::SoldThrough));
        let opened = IncentiveTrack::default().apply(
            &Decision::Open {
                bonus: r.bonus,
                ends_at: t(48),
                cover: DaysOfCover::ZERO,
            },
            &sku("S"),
            "home",
            &r,
            || "new-id".into(),
            t(0),
        );
        assert_eq!(opened.unwrap().id, "new-id");
    }

    #[test]
    fn selection_picks_the_most_overstocked_and_explains_losers() {
        let policy = Policy::from_toml_str(
            "[program]\nmax_concurrent_incentives = 4\n[categories.home.flash]\nmax_concurrent = 2\n[categories.toys.flash]\nmax_concurrent = 5\n",
        )
        .unwrap();
        let c = |s: &str, cat: &str, cover: Decimal| Candidate {
            sku: sku(s),
            category: cat.into(),
            cover: DaysOfCover::new(cover).unwrap(),
        };
        let candidates = vec![
            c("H1", "home", dec!(100)),
            c("H2", "home", dec!(300)),
            c("H3", "home", dec!(200)),
            c("T1", "toys", dec!(150)),
            c("T2", "toys", dec!(120)),
            c("T3", "toys", dec!(110)),
            c("T1", "toys", dec!(150)),
        ];
        let active = ActiveCounts {
            per_category: BTreeMap::from([("home".to_owned(), 1)]),
            program: 1,
        };
        let sel = select(&candidates, &active, &policy);
        let winners: Vec<&str> = sel.winners.iter().map(|c| c.sku.as_str()).collect();
        assert_eq!(winners, ["H2", "T1", "T2"]);
        let losers: Vec<(&str, &LossReason)> = sel
            .losers
            .iter()
            .map(|(c, r)| (c.sku.as_str(), r))
            .collect();
        assert_eq!(
            losers[0],
            (
                "H3",
                &LossReason::CategoryFull {
                    category: "home".into(),
                    limit: 2,
                    already_open: 1,
                    selected_ahead: 1
                }
            )
        );
        assert_eq!(losers[1], ("T1", &LossReason::DuplicateCandidate));
        assert_eq!(
            losers[2],
            (
                "T3",
                &LossReason::ProgramFull {
                    limit: 4,
                    already_open: 1,
                    selected_ahead: 3
                }
            )
        );
        assert!(matches!(losers[3], ("H1", LossReason::ProgramFull { .. })));
        assert_eq!(sel.winners.len() + sel.losers.len(), candidates.len());
        assert!(
            losers[0]
                .1
                .to_string()
                .starts_with("category home allows 2 incentives at once")
        );
    }
}
