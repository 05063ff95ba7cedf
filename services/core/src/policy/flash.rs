//! Resolved flash-incentive rules for one category.

use chrono::TimeDelta;

use crate::types::{DaysOfCover, Money, Quantity, Rate, Velocity};

/// When and how flash incentives open, extend and close in one category.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FlashRules {
    /// Whether incentives may open automatically.
    pub enabled: bool,
    /// Open only at or above this cover.
    pub min_cover: DaysOfCover,
    /// Open only when velocity is at least this.
    pub min_velocity: Velocity,
    /// Open only when velocity is at most this, if set.
    pub max_velocity: Option<Velocity>,
    /// Bonus added to the rate while open.
    pub bonus: Rate,
    /// Length of the window and of each extension.
    pub duration: TimeDelta,
    /// Spend budget (units sold × price × the bonus actually paid).
    pub budget_spend: Money,
    /// Unit budget (units sold during the window).
    pub budget_units: Quantity,
    /// Wait after a close before the SKU may open again.
    pub cooldown: TimeDelta,
    /// Extensions allowed when a window ends and the SKU still qualifies.
    pub max_extensions: u32,
    /// Sold through once cover falls below this.
    pub exit_cover: DaysOfCover,
    /// Incentives open at once within the category.
    pub max_concurrent: u32,
    /// Close early when the velocity forecast says the remaining budget will be used up
    /// before the next expected stock report (the ERP's step would otherwise overshoot it).
    pub stop_on_forecast: bool,
}
