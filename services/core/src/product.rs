//! Product master data as the ERP sends it.

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
