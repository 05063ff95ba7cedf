//! Sales velocity (units/day) estimated from successive stock levels.
//!
//! Depletion counts, restocks do not: between two observations the units that left stock
//! (`max(previous − current, 0)`) are sold units. Each interval contributes its average
//! rate to an exponentially weighted moving average whose weight depends on the interval's
//! length (`alpha = 1 − 2^(−Δt / half_life)`), so one long gap after sparse updates counts
//! as much as many short intervals covering the same time. Observations older than the
//! newest one seen are ignored; observations at the same instant accumulate and are folded
//! when time moves on. An ERP-supplied velocity takes precedence while it is fresh.

use chrono::{DateTime, TimeDelta, Utc};
use rust_decimal::Decimal;
use serde::{Deserialize, Serialize};

use crate::policy::VelocitySettings;
use crate::types::{Quantity, Velocity};

/// Decimal places the estimate is kept at, so repeated folding does not grow the scale.
const ESTIMATE_DECIMALS: u32 = 6;
const MILLIS_PER_DAY: i64 = 86_400_000;
/// ln 2 to 28 places.
const LN_2: Decimal = Decimal::from_parts(0xAA7A_65BF, 0x81F5_2F01, 0x1665_943F, false, 28);

/// The ERP's own velocity figure and when it was sent.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct ErpVelocity {
    /// Units per day according to the ERP.
    pub value: Velocity,
    /// When the ERP sent it.
    pub as_of: DateTime<Utc>,
}

/// The estimator's state field by field, for storage formats other than serde (the rates
/// service's compact record): [`VelocityEstimator::parts`] and
/// [`VelocityEstimator::from_parts`] round-trip exactly.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct VelocityParts {
    /// Half-life of the average, in seconds.
    pub half_life_secs: i64,
    /// How long an ERP figure stays authoritative, in seconds.
    pub erp_max_age_secs: i64,
    /// Time of the last folded observation; `None` before the first.
    pub anchor_at: Option<DateTime<Utc>>,
    /// Latest stock level seen.
    pub level: Decimal,
    /// Units depleted since `anchor_at` by observations at that same instant.
    pub pending: Decimal,
    /// The EWMA of units/day; `None` until one interval has been folded.
    pub estimate: Option<Decimal>,
    /// Newest ERP-supplied figure.
    pub erp: Option<ErpVelocity>,
}

/// Serialisable EWMA state; the rates service persists it inside [`crate::SkuState`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct VelocityEstimator {
    /// Half-life of the average, in seconds.
    half_life_secs: i64,
    /// How long an ERP figure stays authoritative, in seconds.
    erp_max_age_secs: i64,
    /// Time of the last folded observation; `None` before the first.
    anchor_at: Option<DateTime<Utc>>,
    /// Latest stock level seen.
    level: Decimal,
    /// Units depleted since `anchor_at` by observations at that same instant.
    pending: Decimal,
    /// The EWMA of units/day; `None` until one interval has been folded.
    estimate: Option<Decimal>,
    /// Newest ERP-supplied figure.
    erp: Option<ErpVelocity>,
}

impl VelocityEstimator {
    /// An estimator with no observations.
    pub fn new(settings: &VelocitySettings) -> Self {
        Self {
            half_life_secs: settings.half_life.num_seconds().max(1),
            erp_max_age_secs: settings.erp_max_age.num_seconds().max(0),
            anchor_at: None,
            level: Decimal::ZERO,
            pending: Decimal::ZERO,
            estimate: None,
            erp: None,
        }
    }

    /// The state field by field (see [`VelocityParts`]).
    pub fn parts(&self) -> VelocityParts {
        VelocityParts {
            half_life_secs: self.half_life_secs,
            erp_max_age_secs: self.erp_max_age_secs,
            anchor_at: self.anchor_at,
            level: self.level,
            pending: self.pending,
            estimate: self.estimate,
            erp: self.erp,
        }
    }

    /// The estimator whose state is `parts`, as stored by [`VelocityEstimator::parts`].
    /// Like deserialising, it takes the parts as they are.
    pub fn from_parts(parts: VelocityParts) -> Self {
        Self {
            half_life_secs: parts.half_life_secs,
            erp_max_age_secs: parts.erp_max_age_secs,
            anchor_at: parts.anchor_at,
            level: parts.level,
            pending: parts.pending,
            estimate: parts.estimate,
            erp: parts.erp,
        }
    }

    /// Folds a stock level observed at `as_of`, and the ERP's velocity if it sent one.
    /// Returns `false` (and leaves the level estimate untouched) when `as_of` is older than
    /// the newest observation already folded.
    pub fn observe(
        &mut self,
        as_of: DateTime<Utc>,
        level: Quantity,
        erp: Option<Velocity>,
    ) -> bool {
        if let Some(value) = erp
            && self.erp.is_none_or(|e| e.as_of <= as_of)
        {
            self.erp = Some(ErpVelocity { value, as_of });
        }
        let level = level.get();
        let Some(anchor) = self.anchor_at else {
            self.anchor_at = Some(as_of);
            self.level = level;
            return true;
        };
        if as_of < anchor {
            return false;
        }
        self.pending += (self.level - level).max(Decimal::ZERO);
        self.level = level;
        let elapsed_ms = (as_of - anchor).num_milliseconds();
        if elapsed_ms <= 0 {
            return true;
        }
        let days = Decimal::from(elapsed_ms) / Decimal::from(MILLIS_PER_DAY);
        let interval_rate = self.pending / days;
        let next = match self.estimate {
            None => interval_rate,
            Some(previous) => {
                let half_lives =
                    Decimal::from(elapsed_ms) / Decimal::from(self.half_life_secs * 1000);
                let alpha = Decimal::ONE - exp2_neg(half_lives);
                previous + alpha * (interval_rate - previous)
            }
        };
        self.estimate = Some(next.round_dp(ESTIMATE_DECIMALS).max(Decimal::ZERO));
        self.anchor_at = Some(as_of);
        self.pending = Decimal::ZERO;
        true
    }

    /// Our own estimate from depletion, ignoring the ERP figure.
    pub fn estimate(&self) -> Option<Velocity> {
        self.estimate.map(Velocity::clamped)
    }

    /// The velocity to use: the ERP's figure if it was sent no longer than the configured
    /// age before the newest observation, otherwise our estimate; `None` when neither
    /// exists yet (fewer than two observations at different times and no ERP figure).
    pub fn velocity(&self) -> Option<Velocity> {
        if let Some(erp) = self.erp {
            let newest = self.anchor_at.map_or(erp.as_of, |a| a.max(erp.as_of));
            if newest - erp.as_of <= TimeDelta::seconds(self.erp_max_age_secs) {
                return Some(erp.value);
            }
        }
        self.estimate()
    }

    /// Time of the newest folded observation.
    pub fn last_observed_at(&self) -> Option<DateTime<Utc>> {
        self.anchor_at
    }
}

/// `2^(−x)` for `x ≥ 0`, in decimal arithmetic so results are identical everywhere.
fn exp2_neg(x: Decimal) -> Decimal {
    if x <= Decimal::ZERO {
        return Decimal::ONE;
    }
    if x >= Decimal::from(64) {
        return Decimal::ZERO;
    }
    let whole = x.trunc();
    let frac = x - whole;
    // e^(−y) with y = frac × ln 2 in [0, 0.694): the Taylor series converges to far below
    // the estimate's precision within 24 terms.
    let y = frac * LN_2;
    let mut term = Decimal::ONE;
    let mut sum = Decimal::ONE;
    for k in 1..24u32 {
        term = -term * y / Decimal::from(k);
        sum += term;
    }
    // `whole` is below 64 by the check above, so the shift cannot overflow.
    let shift = u32::try_from(whole.mantissa() / 10i128.pow(whole.scale())).unwrap_or(63);
    sum / Decimal::from(1u64 << shift)
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::TimeZone;
    use rust_decimal_macros::dec;

    fn settings(half_life_hours: i64) -> VelocitySettings {
        VelocitySettings {
            half_life: TimeDelta::hours(half_life_hours),
            erp_max_age: TimeDelta::hours(48),
        }
    }

    fn t(hours: i64) -> DateTime<Utc> {
        Utc.with_ymd_and_hms(2025, 1, 1, 0, 0, 0).unwrap() + TimeDelta::hours(hours)
    }

    fn q(v: Decimal) -> Quantity {
        Quantity::new(v).unwrap()
    }

    #[test]
    fn ln2_and_powers_of_two_are_exact_enough() {
        assert_eq!(LN_2.to_string(), "0.6931471805599453094172321215");
        assert_eq!(exp2_neg(dec!(1)), dec!(0.5));
        assert_eq!(exp2_neg(dec!(3)), dec!(0.125));
        assert!((exp2_neg(dec!(0.5)) - dec!(0.7071067811865475)).abs() < dec!(0.000000000001));
        assert_eq!(exp2_neg(dec!(100)), Decimal::ZERO);
    }

    #[test]
    fn steady_depletion_gives_its_rate() {
        let mut v = VelocityEstimator::new(&settings(72));
        assert_eq!(v.velocity(), None);
        for day in 0..10 {
            v.observe(t(day * 24), q(Decimal::from(1000 - 10 * day)), None);
        }
        assert_eq!(v.velocity().unwrap().get(), dec!(10));
    }

    #[test]
    fn restocks_do_not_count_as_sales() {
        let mut v = VelocityEstimator::new(&settings(72));
        v.observe(t(0), q(dec!(100)), None);
        v.observe(t(24), q(dec!(90)), None);
        v.observe(t(48), q(dec!(500)), None); // restock, no depletion in this interval
        let after = v.estimate().unwrap().get();
        assert!(
            after < dec!(10),
            "restock must pull the average down, got {after}"
        );
        assert!(after > dec!(0));
    }

    #[test]
    fn sparse_updates_average_over_the_gap() {
        let mut v = VelocityEstimator::new(&settings(72));
        v.observe(t(0), q(dec!(100)), None);
        v.observe(t(24 * 10), q(dec!(0)), None); // 100 units over 10 days
        assert_eq!(v.velocity().unwrap().get(), dec!(10));
    }

    #[test]
    fn older_observations_are_ignored() {
        let mut v = VelocityEstimator::new(&settings(72));
        v.observe(t(0), q(dec!(100)), None);
        v.observe(t(24), q(dec!(80)), None);
        let before = v.clone();
        assert!(!v.observe(t(12), q(dec!(5)), None));
        assert_eq!(v, before);
    }

    #[test]
    fn same_instant_observations_accumulate() {
        let mut v = VelocityEstimator::new(&settings(72));
        v.observe(t(0), q(dec!(100)), None);
        v.observe(t(0), q(dec!(95)), None);
        v.observe(t(24), q(dec!(90)), None);
        assert_eq!(v.velocity().unwrap().get(), dec!(10));
    }

    #[test]
    fn one_half_life_halves_the_gap_to_a_new_rate() {
        let mut v = VelocityEstimator::new(&settings(24));
        v.observe(t(0), q(dec!(100)), None);
        v.observe(t(24), q(dec!(80)), None); // 20/day
        v.observe(t(48), q(dec!(80)), None); // 0/day for one half-life
        assert_eq!(v.velocity().unwrap().get(), dec!(10));
    }

    #[test]
    fn erp_figure_takes_precedence_while_fresh() {
        let mut v = VelocityEstimator::new(&settings(72));
        v.observe(t(0), q(dec!(100)), Some(Velocity::new(dec!(3)).unwrap()));
        v.observe(t(24), q(dec!(90)), None);
        assert_eq!(v.velocity().unwrap().get(), dec!(3));
        assert_eq!(v.estimate().unwrap().get(), dec!(10));
        v.observe(t(24 * 3), q(dec!(70)), None); // erp figure now 72 h old > 48 h
        assert_eq!(v.velocity(), v.estimate());
    }

    #[test]
    fn round_trips_through_its_parts() {
        let mut v = VelocityEstimator::new(&settings(72));
        v.observe(t(0), q(dec!(100)), Some(Velocity::new(dec!(3.50)).unwrap()));
        v.observe(t(24), q(dec!(90)), None);
        v.observe(t(24), q(dec!(89.5)), None);
        let parts = v.parts();
        assert_eq!(parts.pending, dec!(0.5));
        assert_eq!(VelocityEstimator::from_parts(parts), v);
    }

    #[test]
    fn round_trips_through_serde() {
        let mut v = VelocityEstimator::new(&settings(72));
        v.observe(t(0), q(dec!(100)), None);
        v.observe(t(24), q(dec!(90)), None);
        let text = toml::to_string(&v).unwrap();
        let back: VelocityEstimator = toml::from_str(&text).unwrap();
        assert_eq!(back, v);
    }
}
