//! The rate card: what a SKU's commission is, why, since when, and the state the next
//! computation needs (so [`crate::compute()`] stays a pure function of policy, inputs,
//! previous card and `now`).

use chrono::{DateTime, Utc};
use rust_decimal::Decimal;
use serde::{Deserialize, Serialize};

use crate::reason::Reason;
use crate::types::{Rate, Sku};

/// A computed commission rate for one SKU.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RateCard {
    /// The SKU.
    pub sku: Sku,
    /// The published commission rate.
    pub effective_rate: Rate,
    /// The published rate before the last change (absent on the first card).
    pub previous_rate: Option<Rate>,
    /// How `effective_rate` decomposes; the parts sum to it exactly.
    pub parts: RateParts,
    /// Every rule that acted, in the order it acted.
    pub reasons: Vec<Reason>,
    /// Starts at 1; bumped only when `effective_rate` changes.
    pub version: u64,
    /// When this card was computed.
    pub computed_at: DateTime<Utc>,
    /// When `effective_rate` last changed.
    pub changed_at: DateTime<Utc>,
    /// The guaranteed parts of the rate are not withdrawn by the policy before this: the
    /// boost (boost mode) and an active flash incentive's bonus (until its `ends_at`).
    /// With both, the earlier of the two ends. `None` when no part is guaranteed.
    /// Overrides and guardrails still act, and the incentives service may close an
    /// incentive early (cancelled, budget used up, sold through).
    pub guaranteed_until: Option<DateTime<Utc>>,
    /// State carried to the next computation.
    pub state: CardState,
}

/// The parts of a rate; `base + inventory_adjustment + boost + incentive + overrides +
/// guardrails == effective_rate`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct RateParts {
    /// The base rate (boost mode: the published base).
    pub base: Rate,
    /// Direct mode: band adjustment after damping (negative when scarce).
    pub inventory_adjustment: Decimal,
    /// Boost mode: the inventory boost on top of the published base.
    pub boost: Decimal,
    /// Flash-incentive bonus.
    pub incentive: Decimal,
    /// Net effect of merchandiser overrides.
    pub overrides: Decimal,
    /// Net effect of floor, cap and margin guard.
    pub guardrails: Decimal,
}

/// Which band a SKU is in: `table` 0 is the normal table, `i + 1` the table of peak
/// window `i`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct BandPosition {
    /// Band table.
    pub table: u32,
    /// Band within it.
    pub index: u32,
}

/// A change of the published base (boost mode): from `at` on, the base was `rate`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct BaseChange {
    /// When.
    pub at: DateTime<Utc>,
    /// The new base.
    pub rate: Rate,
}

/// A base cut announced under the network's notice period.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct PendingCut {
    /// The base being cut to.
    pub to: Rate,
    /// Not before this.
    pub effective_at: DateTime<Utc>,
}

/// State needed across computations.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct CardState {
    /// Current band, for hysteresis.
    pub band: Option<BandPosition>,
    /// Direct mode: the damped policy rate (before incentive, overrides, guardrails).
    pub policy_rate: Option<Rate>,
    /// Direct mode: when `policy_rate` last moved (for the minimum hold).
    pub policy_changed_at: Option<DateTime<Utc>>,
    /// Boost mode: the base rate partners were told.
    pub published_base: Option<Rate>,
    /// Boost mode: changes of the published base within the cut period (plus the one in
    /// force at its start), oldest first.
    pub base_history: Vec<BaseChange>,
    /// Boost mode: an announced cut.
    pub pending_cut: Option<PendingCut>,
    /// Boost mode: the published boost.
    pub boost: Decimal,
    /// Boost mode: when the boost last moved (for the minimum hold).
    pub boost_changed_at: Option<DateTime<Utc>>,
    /// Boost mode: the boost is not lowered before this.
    pub boost_guaranteed_until: Option<DateTime<Utc>>,
}
