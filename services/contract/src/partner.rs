//! A partner's subscription, as the notifier stores it and the rates service reads it to
//! narrow a partner's `WatchRates` to what the partner subscribes to (DESIGN §4.4: a
//! partner may "watch the rates it subscribes to").
//!
//! The notifier owns the record (namespace [`NAMESPACE`], JSON in field [`FIELD`], key
//! the partner id); this is the part of it another service may read.

use std::collections::HashSet;

use ratemesh_bus::{Bus, BusError};
use serde::Deserialize;

/// State namespace of partner records (key: partner id).
pub const NAMESPACE: &str = "notifier.partner";
/// The field holding a partner record's JSON.
pub const FIELD: &str = "record";
/// The event type of rate changes in a subscription's `event_types`.
pub const RATE_CHANGED: &str = "rate.changed";

/// What a partner subscribes to.
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize)]
pub struct Subscription {
    /// Deliveries on or off.
    #[serde(default)]
    pub enabled: bool,
    /// Which changes.
    #[serde(default)]
    pub filters: SubscriptionFilters,
}

/// A subscription's filters; an empty list does not narrow.
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize)]
pub struct SubscriptionFilters {
    /// Only these SKUs.
    #[serde(default)]
    pub skus: HashSet<String>,
    /// Only SKUs in these categories.
    #[serde(default)]
    pub categories: HashSet<String>,
    /// Only these event types (`rate.changed`, `incentive.changed`).
    #[serde(default)]
    pub event_types: Vec<String>,
}

impl Subscription {
    /// Whether the subscription takes rate changes at all.
    pub fn wants_rates(&self) -> bool {
        self.filters.event_types.is_empty()
            || self.filters.event_types.iter().any(|t| t == RATE_CHANGED)
    }

    /// Whether a rate change of `sku` in `category` is in the subscription (the same rule
    /// the notifier delivers by).
    pub fn covers(&self, sku: &str, category: &str) -> bool {
        let f = &self.filters;
        (f.skus.is_empty() || f.skus.contains(sku))
            && (f.categories.is_empty() || f.categories.contains(category))
    }
}

/// The subscription of `partner_id`, if the partner exists.
pub async fn load(bus: &Bus, partner_id: &str) -> Result<Option<Subscription>, BusError> {
    let Some(record) = bus.get_state(NAMESPACE, partner_id).await? else {
        return Ok(None);
    };
    match record.fields.get(FIELD) {
        Some(bytes) => serde_json::from_slice(bytes).map(Some).map_err(|e| {
            BusError::Backend(format!("stored partner {partner_id:?} is unreadable: {e}"))
        }),
        None => Ok(None),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_the_notifier_record_and_filters_like_it() {
        let stored = br#"{"id":"acme","name":"Acme","endpoint_url":"https://x","enabled":true,
            "filters":{"skus":[],"categories":["home"],"event_types":["rate.changed"],"min_change":null},
            "created_at_ms":1,"updated_at_ms":1,"secret":"s","previous_secret":null,"previous_valid_until_ms":0}"#;
        let s: Subscription = serde_json::from_slice(stored).expect("decodes");
        assert!(s.enabled && s.wants_rates());
        assert!(s.covers("ANY", "home"));
        assert!(!s.covers("ANY", "garden"));
    }
}
