//! Product master data as the ERP sends it.

use rust_decimal::{Decimal, RoundingStrategy};
use serde::{Deserialize, Serialize};

use crate::types::{Money, Rate};

/// What the policy needs to know about a product.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Product {
    /// Category name; selects the `[categories.<name>]` policy section (unknown names use
    /// `[defaults]`).
    pub category: String,
    /// Unit sale price.
    pub price: Money,
    /// Unit cost, for the margin guard.
    pub unit_cost: Money,
    /// Product-specific base rate; the category's `base_rate` when absent.
    #[serde(default)]
    pub base_rate: Option<Rate>,
}

impl Product {
    /// The highest rate the margin guard allows for a margin `share`:
    /// `share × (price − cost) / price`, rounded down to `decimals`; zero when the product
    /// sells at or below cost.
    pub fn margin_limit(&self, share: Decimal, decimals: u32) -> Rate {
        let price = self.price.get();
        let margin = price - self.unit_cost.get();
        if price <= Decimal::ZERO || margin <= Decimal::ZERO {
            return Rate::ZERO;
        }
        let limit =
            (share * margin / price).round_dp_with_strategy(decimals, RoundingStrategy::ToZero);
        Rate::clamped(limit)
    }
}
