//! `ratemesh-core`: the pure rate policy and flash-incentive rules of ratemesh.
//!
//! Nothing here does I/O, spawns tasks or reads a clock: time is always a
//! `now: DateTime<Utc>` argument, money and rates are [`rust_decimal::Decimal`]s, and every
//! function is deterministic, so the rates service, the incentives service, offline
//! what-if runs and the fault tests' oracle all fold events through the same code.
//!
//! Layout:
//! - [`types`] — validated newtypes: [`Sku`], [`Rate`], [`Money`], [`Quantity`],
//!   [`DaysOfCover`], [`Velocity`].
//! - [`input`] — the checks every API applies to ids, SKUs, categories, times, decimals.
//! - [`policy`] — the policy file ([`policy::config`]), its validated form [`Policy`],
//!   band tables with hysteresis, peak windows and flash-incentive rules.
//! - [`velocity`] — the sales-velocity estimator (EWMA of depletion).
//! - [`reason`] — reason codes with their human text.
//! - [`card`] — the [`RateCard`] and the state it carries between computes.
//! - [`compute`](mod@compute) — [`compute()`]: `(policy, inputs, previous card, now) -> card`.
//! - [`overrides`] — merchandiser overrides, their precedence and conflict report.
//! - [`incentive`] — flash-incentive decisions, budget accounting and selection.
//! - [`state`] — [`SkuState`] and the [`Event`]s it folds.
//! - [`replay`](mod@replay) — [`replay()`], the offline oracle.

pub mod card;
pub mod compute;
pub mod incentive;
pub mod input;
pub mod overrides;
pub mod policy;
pub mod product;
pub mod quote;
pub mod reason;
pub mod replay;
pub mod state;
pub mod timers;
pub mod types;
pub mod velocity;

pub use card::{CardState, RateCard, RateParts};
pub use compute::{RateInputs, compute};
pub use incentive::{
    ActiveCounts, Candidate, CloseReason, Decision, Incentive, IncentiveInputs, IncentiveTrack,
    LossReason, NothingReason, Selection, decide, paid_bonus, select,
};
pub use overrides::{Override, OverrideConflict, OverrideKind, OverrideScope, find_conflicts};
pub use policy::config::{Mode, PolicyConfig};
pub use policy::{EXAMPLE_POLICY_TOML, Policy, PolicyError};
pub use product::Product;
pub use reason::{Reason, ReasonCode};
pub use replay::{Replay, replay, replay_in_arrival_order};
pub use state::{Applied, Event, SkuState, StockLevel};
pub use types::{DaysOfCover, Money, Quantity, Rate, Sku, TypeError, Velocity};
pub use velocity::{ErpVelocity, VelocityEstimator, VelocityParts};
