//! The policy file as written: every knob optional, so a category section only says what
//! differs from `[defaults]`, and `[defaults]` only what differs from the built-in
//! defaults. [`crate::Policy::from_config`] resolves and validates it.

use std::collections::BTreeMap;

use rust_decimal::Decimal;
use serde::{Deserialize, Serialize};

/// A whole policy file for one affiliate program.
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PolicyConfig {
    /// Program-wide settings (time zone, mode, velocity estimation, concurrency).
    #[serde(default)]
    pub program: ProgramSection,
    /// The affiliate network's rules for cutting a published base rate (boost mode).
    #[serde(default)]
    pub network: NetworkSection,
    /// Peak windows (BFCM) with their own band tables.
    #[serde(default)]
    pub peak_windows: Vec<PeakWindowSection>,
    /// Settings for every category that does not override them.
    #[serde(default)]
    pub defaults: CategorySection,
    /// Per-category settings, keyed by the category name products carry.
    #[serde(default)]
    pub categories: BTreeMap<String, CategorySection>,
}

/// How inventory-driven changes reach the published rate.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Mode {
    /// The published rate follows the policy directly, up and down (damped).
    #[default]
    Direct,
    /// The published base only moves under the network's cut rules; inventory raises the
    /// rate with time-boxed boosts carrying `guaranteed_until`, and scarcity lets a boost
    /// lapse instead of cutting the base.
    Boost,
}

/// `[program]`.
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ProgramSection {
    /// Program identifier (default `"default"`).
    pub id: Option<String>,
    /// The retailer's time zone, an IANA name (default `"UTC"`); peak windows are in it.
    pub time_zone: Option<String>,
    /// `direct` or `boost` (default `direct`).
    pub mode: Option<Mode>,
    /// Decimal places rates are rounded to (default 4, so `0.0825`).
    pub rate_decimals: Option<u32>,
    /// Flash incentives open at once across the program (default 100).
    pub max_concurrent_incentives: Option<u32>,
    /// Half-life of the sales-velocity average, hours (default 72).
    pub velocity_half_life_hours: Option<u32>,
    /// How long the ERP's own velocity figure is trusted after it was last sent, hours
    /// (default 72).
    pub erp_velocity_max_age_hours: Option<u32>,
}

/// `[network]`: rules the affiliate network imposes on cuts of the published base.
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NetworkSection {
    /// Notice a cut must be given before it takes effect, hours (default 168).
    pub notice_hours: Option<u32>,
    /// Largest fraction the base may fall within one cut period (default `0.20`).
    pub max_cut: Option<Decimal>,
    /// Length of the cut period, days (default 30).
    pub cut_period_days: Option<u32>,
    /// How long a boost is guaranteed once published, hours (default 72).
    pub boost_hours: Option<u32>,
}

/// `[[peak_windows]]`: a calendar range in the program's time zone.
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PeakWindowSection {
    /// Name, used in reasons and as the key of `peak_bands` in categories.
    pub name: String,
    /// Local start, inclusive: `"2025-11-27"` (midnight) or `"2025-11-27T06:00"`.
    pub start: String,
    /// Local end, exclusive, same forms as `start`.
    pub end: String,
    /// Band table used during the window unless a category gives its own.
    pub bands: Vec<BandSection>,
}

/// One row of a band table.
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BandSection {
    /// Name, e.g. `scarce`, `normal`, `overstock`.
    pub name: String,
    /// Upper bound (exclusive) of days of cover; absent on the last band only.
    pub max_days: Option<Decimal>,
    /// Multiply the base rate by this (exactly one of `multiplier` and `add`).
    pub multiplier: Option<Decimal>,
    /// Add this to the base rate, may be negative (exactly one of `multiplier` and `add`).
    pub add: Option<Decimal>,
}

/// `[defaults]` and `[categories.<name>]`.
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CategorySection {
    /// Base rate when the product carries none (default `0.05`).
    pub base_rate: Option<Decimal>,
    /// Band table on days of cover outside peak windows.
    pub bands: Option<Vec<BandSection>>,
    /// Band tables for named peak windows, replacing the window's own table.
    pub peak_bands: Option<BTreeMap<String, Vec<BandSection>>>,
    /// Hysteresis margin as a fraction of a band threshold (default `0.10`).
    pub hysteresis: Option<Decimal>,
    /// Largest change of the policy rate per recompute, in rate units (default `0.01`).
    pub max_step: Option<Decimal>,
    /// Minimum time between two changes of the policy rate, minutes (default 60).
    pub min_hold_minutes: Option<u32>,
    /// Lowest rate ever published except under an exclude override (default `0`).
    pub floor: Option<Decimal>,
    /// Highest rate ever published (default `0.30`).
    pub cap: Option<Decimal>,
    /// Commission may be at most this share of the unit margin (default `0.50`).
    pub margin_share: Option<Decimal>,
    /// Rate target for out-of-stock SKUs; absent means the base rate (default absent).
    pub out_of_stock_rate: Option<Decimal>,
    /// Flash-incentive rules.
    pub flash: Option<FlashSection>,
}

/// `flash` table inside `[defaults]` or a category.
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FlashSection {
    /// Whether incentives may open automatically (default `false`).
    pub enabled: Option<bool>,
    /// Open only at or above this many days of cover (default 90).
    pub min_cover_days: Option<Decimal>,
    /// Open only when selling at least this many units a day (default 0).
    pub min_velocity: Option<Decimal>,
    /// Open only when selling at most this many units a day (default: no limit).
    pub max_velocity: Option<Decimal>,
    /// Bonus added to the rate while open (default `0.02`).
    pub bonus: Option<Decimal>,
    /// Length of the window and of each extension, hours (default 48).
    pub duration_hours: Option<u32>,
    /// Spend budget: units sold × price × the bonus actually paid (default 500).
    pub budget_spend: Option<Decimal>,
    /// Unit budget: units sold during the window (default 200).
    pub budget_units: Option<Decimal>,
    /// Wait after a close before the SKU may open again, hours (default 168).
    pub cooldown_hours: Option<u32>,
    /// Extensions allowed when the window ends and the SKU still qualifies (default 1).
    pub max_extensions: Option<u32>,
    /// Sold through once cover falls below this many days (default 30).
    pub exit_cover_days: Option<Decimal>,
    /// Incentives open at once within the category (default 10).
    pub max_concurrent: Option<u32>,
    /// Close an incentive early when the velocity forecast says the remaining budget will
    /// be used up before the next expected stock report (default `false`).
    pub stop_on_forecast: Option<bool>,
}
