//! What the engine counts when a write with a publication succeeds:
//! `ratemesh_rates_cards_published_total`, and `ratemesh_rates_rate_changes_total{reason,
//! category}` when the published rate moved (a SKU's first card counts as a move from
//! nothing).
//!
//! `reason` is what moved the rate, the last event that changed the SKU's state before the
//! publication ([`Trigger`]); `category` is the card's category when the policy names it,
//! else `other`, so the labels stay bounded whatever categories the ERP sends. Every
//! handle is resolved when the engine is built: a publication looks its counter up by
//! category in a small table and touches no allocator.

use std::collections::HashMap;

use metrics::Counter;
use ratemesh_core::{Event, Policy};

/// What moved a rate: the `reason` label.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Trigger {
    /// An ERP stock reading.
    Stock = 0,
    /// Product master data (price, unit cost, category).
    Product = 1,
    /// A SKU or category override set, cleared, starting or ending.
    Override = 2,
    /// A flash incentive opening, changing or closing.
    Incentive = 3,
    /// Time passing under the policy: a hold or damping step ending, a guarantee
    /// lapsing, an announced cut falling due, a peak window opening or closing.
    Schedule = 4,
}

impl Trigger {
    const ALL: [Trigger; 5] = [
        Trigger::Stock,
        Trigger::Product,
        Trigger::Override,
        Trigger::Incentive,
        Trigger::Schedule,
    ];

    fn label(self) -> &'static str {
        match self {
            Trigger::Stock => "stock",
            Trigger::Product => "product",
            Trigger::Override => "override",
            Trigger::Incentive => "incentive",
            Trigger::Schedule => "schedule",
        }
    }

    /// What `event` is, as a reason for a rate to move.
    pub(crate) fn of(event: &Event) -> Self {
        match event {
            Event::StockObserved { .. } => Trigger::Stock,
            Event::ProductUpserted { .. } => Trigger::Product,
            Event::OverrideSet { .. } | Event::OverrideCleared { .. } => Trigger::Override,
            Event::IncentiveOpened { .. }
            | Event::IncentiveChanged { .. }
            | Event::IncentiveClosed { .. } => Trigger::Incentive,
            Event::Tick { .. } => Trigger::Schedule,
        }
    }
}

/// The counters of one category, one per trigger.
type ByTrigger = [Counter; Trigger::ALL.len()];

/// The engine's publication counters.
pub(crate) struct PublishMetrics {
    published: Counter,
    /// The slot in `counters` of each category the policy names.
    slots: HashMap<Box<str>, u16>,
    /// By slot; the last is `other`.
    counters: Vec<ByTrigger>,
}

impl std::fmt::Debug for PublishMetrics {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PublishMetrics")
            .field("categories", &self.slots.len())
            .finish_non_exhaustive()
    }
}

impl PublishMetrics {
    /// The counters of every category `policy` names, and of `other`.
    pub(crate) fn new(policy: &Policy) -> Self {
        // Handles resolved before the recorder is installed would record nowhere.
        ratemesh_runtime::metrics::prometheus();
        let by_trigger = |category: &str| {
            Trigger::ALL.map(|trigger| {
                metrics::counter!(
                    "ratemesh_rates_rate_changes_total",
                    "reason" => trigger.label(),
                    "category" => category.to_owned()
                )
            })
        };
        let names: Vec<&str> = policy
            .category_names()
            .take(usize::from(u16::MAX))
            .collect();
        let mut counters: Vec<ByTrigger> = names.iter().map(|name| by_trigger(name)).collect();
        counters.push(by_trigger("other"));
        Self {
            published: metrics::counter!("ratemesh_rates_cards_published_total"),
            slots: names
                .into_iter()
                .zip(0u16..)
                .map(|(name, slot)| (Box::from(name), slot))
                .collect(),
            counters,
        }
    }

    /// A move of a card of `category` by `trigger`, to count once it is published.
    pub(crate) fn moved(&self, trigger: Trigger, category: Option<&str>) -> RateMoved {
        let other = (self.counters.len() - 1) as u16;
        let slot = category
            .and_then(|c| self.slots.get(c).copied())
            .unwrap_or(other);
        RateMoved { trigger, slot }
    }

    /// Counts a card published; `moved` when its rate differs from the card before it.
    pub(crate) fn published(&self, moved: Option<RateMoved>) {
        self.published.increment(1);
        if let Some(RateMoved { trigger, slot }) = moved
            && let Some(counters) = self.counters.get(usize::from(slot))
        {
            counters[trigger as usize].increment(1);
        }
    }
}

/// A publication whose rate moved: what moved it and the slot of its category.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct RateMoved {
    trigger: Trigger,
    slot: u16,
}
