//! What the engine stores per SKU: the `rate` state record (its layout is the contract's,
//! [`ratemesh_contract::rate`]) and the engine's own part of it, the JSON `engine` field.

use chrono::{DateTime, Utc};
use ratemesh_core::card::PendingCut;
use ratemesh_core::{Policy, Rate, RateCard, Sku, SkuState};
use serde::{Deserialize, Serialize};

/// The record's layout is the contract's: namespace `rate`, the published card in
/// `card`, the JSON [`EngineRecord`] in `engine`.
pub use ratemesh_contract::rate::{FIELD_CARD, FIELD_ENGINE, NAMESPACE};

/// What was last published for a SKU: the proto card's version and what a new publication
/// is compared against.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Published {
    /// Version of the published proto card: 1 for the first, +1 per publication.
    pub version: u64,
    /// Its effective rate.
    pub rate: Rate,
    /// Its guarantee.
    pub guaranteed_until: Option<DateTime<Utc>>,
    /// Its category.
    pub category: String,
    /// Whether it said the SKU is out of stock (records written before this field was
    /// kept read as `false`: at worst one extra publication).
    #[serde(default)]
    pub out_of_stock: bool,
    /// Its band and reason codes (with the targets and times of `HELD` and scheduled cuts),
    /// so a card whose explanation stopped being true is published again (records written
    /// before this field was kept read as empty: at worst one extra publication).
    #[serde(default)]
    pub explanation: String,
    /// The base cut it announced, if any.
    #[serde(default)]
    pub scheduled_cut: Option<PendingCut>,
}

/// The engine's state of one SKU, stored as JSON in the `engine` field.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct EngineRecord {
    /// Folded events: product, stock per location, velocity, SKU overrides, incentive.
    pub state: SkuState,
    /// The card of the last computation (also when it was not published).
    pub card: Option<RateCard>,
    /// What was last published.
    pub published: Option<Published>,
    /// The time-driven recompute scheduled for this SKU, so it is scheduled once.
    #[serde(default)]
    pub next_recompute: Option<DateTime<Utc>>,
}

impl EngineRecord {
    /// A SKU never seen before.
    pub fn new(sku: Sku, policy: &Policy) -> Self {
        Self {
            state: SkuState::new(sku, &policy.velocity),
            card: None,
            published: None,
            next_recompute: None,
        }
    }

    /// Parses the `engine` field.
    pub fn decode(bytes: &[u8]) -> Result<Self, serde_json::Error> {
        serde_json::from_slice(bytes)
    }

    /// The `engine` field.
    pub fn encode(&self) -> Vec<u8> {
        // Plain data of strings, numbers and maps with string keys: cannot fail.
        serde_json::to_vec(self).unwrap_or_default()
    }

    /// The SKU's category, once product data arrived.
    pub fn category(&self) -> Option<&str> {
        self.state.product.as_ref().map(|p| p.category.as_str())
    }
}
