//! What the notifier keeps in bus state: partners (with their signing secrets), deliveries
//! and per-partner outboxes of rate changes waiting for their coalescing window.
//!
//! Records are JSON in one field (`record`) of a state key. Signing secrets are stored in
//! the clear because every delivery must be signed with them; protect the Redis instance
//! (ACLs, TLS, no shared access) as you would a secrets store.

use rust_decimal::Decimal;
use serde::{Deserialize, Serialize};

use crate::webhook::{INCENTIVE_CHANGED, RATE_CHANGED, WebhookRate};

/// State namespace of partners (key: partner id); the rates service reads the
/// subscription part of these records ([`ratemesh_runtime::subscriptions`]).
pub(crate) const PARTNERS: &str = ratemesh_contract::partner::NAMESPACE;
/// State namespace of deliveries (key: delivery id).
pub(crate) const DELIVERIES: &str = "notifier.delivery";
/// State namespace of each partner's delivery index, one record per hour of creation (key:
/// `<partner id>/<hours since the Unix epoch>`; field per delivery id, value its status),
/// so a partner's deliveries list newest first without a full scan.
pub(crate) const DELIVERY_INDEX: &str = "notifier.delivery-index";
/// State namespace of each partner's open (pending or retrying) deliveries (key: partner
/// id; field per delivery id, empty), written before the delivery itself: what a starting
/// notifier reschedules, without reading every delivery kept.
pub(crate) const OPEN_DELIVERIES: &str = "notifier.open-deliveries";
/// State namespace of the hours each partner's delivery index has (key: partner id; field
/// per hour, empty).
pub(crate) const DELIVERY_HOURS: &str = "notifier.delivery-hours";
/// State namespace of each partner's dead deliveries (key: partner id; field per dead
/// delivery id, empty): counted for the dead-letter gauge and read to redeliver them
/// without reading the partner's whole index, which holds every delivery of the
/// retention (a field per coalescing window: hundreds of thousands in a week).
pub(crate) const DEAD_DELIVERIES: &str = "notifier.dead-deliveries";
/// State namespace of each partner's pending rate changes (key: partner id).
pub(crate) const OUTBOX: &str = "notifier.outbox";
/// State namespace of the last rate sent per partner and SKU (for `min_change`).
pub(crate) const SENT: &str = "notifier.sent";
/// Timer queue of delivery attempts (member: `<partner id>:<delivery id>`).
pub(crate) const ATTEMPTS: &str = "notifier.attempt";
/// Timer queue of coalescing windows (member: partner id).
pub(crate) const FLUSHES: &str = "notifier.flush";
/// The field holding a record's JSON.
pub(crate) const RECORD: &str = ratemesh_contract::partner::FIELD;

/// A partner as stored.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct PartnerRecord {
    pub(crate) id: String,
    pub(crate) name: String,
    pub(crate) endpoint_url: String,
    pub(crate) filters: Filters,
    pub(crate) enabled: bool,
    pub(crate) created_at_ms: i64,
    pub(crate) updated_at_ms: i64,
    /// The current signing secret (base64url text; its UTF-8 bytes are the HMAC key).
    pub(crate) secret: String,
    /// The secret before the last rotation, signing alongside until `previous_valid_until_ms`.
    pub(crate) previous_secret: Option<String>,
    pub(crate) previous_valid_until_ms: i64,
}

impl PartnerRecord {
    /// The secrets to sign with at `now_ms`: the current one, and the previous one while
    /// its overlap lasts.
    pub(crate) fn signing_secrets(&self, now_ms: i64) -> Vec<&[u8]> {
        let mut secrets = vec![self.secret.as_bytes()];
        if let Some(previous) = &self.previous_secret
            && now_ms < self.previous_valid_until_ms
        {
            secrets.push(previous.as_bytes());
        }
        secrets
    }

    /// Whether an event of `event_type` about `sku` in `category` is for this partner.
    pub(crate) fn wants(&self, event_type: &str, sku: &str, category: &str) -> bool {
        let f = &self.filters;
        self.enabled
            && (f.event_types.is_empty() || f.event_types.iter().any(|t| t == event_type))
            && (f.skus.is_empty() || f.skus.iter().any(|s| s == sku))
            && (f.categories.is_empty() || f.categories.iter().any(|c| c == category))
    }
}

/// A partner's filters (see `PartnerFilter` in the proto).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct Filters {
    pub(crate) skus: Vec<String>,
    pub(crate) categories: Vec<String>,
    pub(crate) event_types: Vec<String>,
    pub(crate) min_change: Option<Decimal>,
}

/// The event types a filter may name.
pub(crate) const EVENT_TYPES: [&str; 2] = [RATE_CHANGED, INCENTIVE_CHANGED];

/// Where a delivery stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub(crate) enum Status {
    Pending,
    Delivered,
    Retrying,
    Dead,
}

impl Status {
    pub(crate) fn as_str(self) -> &'static str {
        match self {
            Status::Pending => "pending",
            Status::Delivered => "delivered",
            Status::Retrying => "retrying",
            Status::Dead => "dead",
        }
    }

    pub(crate) fn parse(s: &[u8]) -> Option<Status> {
        match s {
            b"pending" => Some(Status::Pending),
            b"delivered" => Some(Status::Delivered),
            b"retrying" => Some(Status::Retrying),
            b"dead" => Some(Status::Dead),
            _ => None,
        }
    }

    /// Whether the delivery still waits for an attempt.
    pub(crate) fn is_open(self) -> bool {
        matches!(self, Status::Pending | Status::Retrying)
    }
}

/// One webhook POST to one partner, with its retries.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct DeliveryRecord {
    pub(crate) id: String,
    pub(crate) partner_id: String,
    pub(crate) event_id: String,
    pub(crate) event_type: String,
    pub(crate) status: Status,
    pub(crate) attempts: u32,
    pub(crate) last_error: String,
    pub(crate) last_response_code: u16,
    pub(crate) next_attempt_at_ms: Option<i64>,
    pub(crate) created_at_ms: i64,
    /// Start of the current round of attempts (creation, or the last redelivery): the
    /// maximum age counts from here.
    pub(crate) round_started_at_ms: i64,
    pub(crate) delivered_at_ms: Option<i64>,
    pub(crate) skus: Vec<String>,
    /// Trace context of the change that caused the delivery.
    pub(crate) traceparent: Option<String>,
    /// The exact body sent on every attempt (so retries are byte-identical).
    pub(crate) body: String,
}

impl DeliveryRecord {
    /// The timer member of this delivery's next attempt.
    pub(crate) fn timer_member(&self) -> String {
        attempt_member(&self.partner_id, &self.id)
    }
}

pub(crate) fn attempt_member(partner_id: &str, delivery_id: &str) -> String {
    format!("{partner_id}:{delivery_id}")
}

/// A rate change waiting in a partner's outbox.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct OutboxItem {
    pub(crate) rate: WebhookRate,
    pub(crate) occurred_at_ms: i64,
    pub(crate) traceparent: Option<String>,
}

/// Outbox field of a SKU.
pub(crate) fn outbox_field(sku: &str) -> String {
    format!("item:{sku}")
}

/// Outbox field holding when the current window opened.
pub(crate) const OUTBOX_OPENED_AT: &str = "opened_at";

#[cfg(test)]
mod tests {
    use super::*;

    fn partner() -> PartnerRecord {
        PartnerRecord {
            id: "acme".into(),
            name: "Acme".into(),
            endpoint_url: "https://example.com/hook".into(),
            filters: Filters::default(),
            enabled: true,
            created_at_ms: 0,
            updated_at_ms: 0,
            secret: "new".into(),
            previous_secret: Some("old".into()),
            previous_valid_until_ms: 1_000,
        }
    }

    #[test]
    fn the_previous_secret_signs_only_during_the_overlap() {
        let p = partner();
        assert_eq!(p.signing_secrets(999), vec![b"new".as_slice(), b"old"]);
        assert_eq!(p.signing_secrets(1_000), vec![b"new".as_slice()]);
    }

    #[test]
    fn filters_are_or_within_and_between() {
        let mut p = partner();
        assert!(p.wants(RATE_CHANGED, "A", "shoes"));
        p.filters.categories = vec!["shoes".into(), "bags".into()];
        p.filters.event_types = vec![RATE_CHANGED.into()];
        assert!(p.wants(RATE_CHANGED, "A", "bags"));
        assert!(!p.wants(RATE_CHANGED, "A", "hats"));
        assert!(!p.wants(INCENTIVE_CHANGED, "A", "shoes"));
        p.filters.skus = vec!["B".into()];
        assert!(!p.wants(RATE_CHANGED, "A", "shoes"));
        p.enabled = false;
        assert!(!p.wants(RATE_CHANGED, "B", "shoes"));
    }
}
