//! The outbound webhook contract (DESIGN §4.3): the JSON body partners receive and the
//! headers that come with it. These types are public so partners' test sinks (and ours)
//! decode exactly what is sent.

use chrono::{TimeZone, Utc};
use ratemesh_proto::v1;
use serde::{Deserialize, Serialize};

/// `type` of a rate change webhook.
pub const RATE_CHANGED: &str = "rate.changed";
/// `type` of an incentive change webhook.
pub const INCENTIVE_CHANGED: &str = "incentive.changed";
/// Header carrying the event id, stable across retries and redeliveries.
pub const EVENT_ID_HEADER: &str = "ratemesh-event-id";

/// The body of every webhook POST.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct WebhookBody {
    /// De-duplication key: the same on every retry of this delivery.
    pub event_id: String,
    /// [`RATE_CHANGED`] or [`INCENTIVE_CHANGED`].
    #[serde(rename = "type")]
    pub event_type: String,
    /// When the (latest) change happened, RFC 3339.
    pub occurred_at: String,
    /// For `rate.changed`: the changed SKUs, in version order; latest version per SKU.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rates: Option<Vec<WebhookRate>>,
    /// For `incentive.changed`: the incentive after the change.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub incentive: Option<WebhookIncentive>,
}

/// One SKU's new rate.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct WebhookRate {
    /// The SKU.
    pub sku: String,
    /// Its category.
    pub category: String,
    /// The new effective rate, a decimal fraction of the sale price ("0.0825").
    pub rate: String,
    /// The rate before this change (before the first change of a coalesced burst); null
    /// for a SKU's first rate.
    pub previous_rate: Option<String>,
    /// Version of the rate card; drop updates whose version is not newer than yours.
    pub version: u64,
    /// Why the rate is what it is, most significant first.
    pub reasons: Vec<WebhookReason>,
    /// Until when the rate will not be cut, RFC 3339; null when not guaranteed.
    pub guaranteed_until: Option<String>,
    /// A base-rate cut announced under the network's notice period; absent when none is
    /// scheduled. Sent when the cut is scheduled, and the card that applies it follows.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub scheduled_change: Option<WebhookScheduledChange>,
}

/// A rate change announced ahead of time.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct WebhookScheduledChange {
    /// The published base rate from `effective_at` on, a decimal fraction.
    pub base_rate: String,
    /// When the change takes effect, RFC 3339.
    pub effective_at: Option<String>,
    /// The effective rate then if nothing else changes, a decimal fraction.
    pub rate: String,
}

/// A reason code with its human text.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct WebhookReason {
    /// Stable machine-readable code, e.g. `BAND`.
    pub code: String,
    /// One human sentence; do not parse.
    pub text: String,
}

/// A flash incentive after a change.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct WebhookIncentive {
    /// The incentive's id.
    pub id: String,
    /// What happened: `opened`, `extended` or `ended`.
    pub transition: String,
    /// The SKU.
    pub sku: String,
    /// The SKU's category.
    pub category: String,
    /// The bonus on top of the rate, a decimal fraction.
    pub bonus_rate: String,
    /// When the bonus started, RFC 3339.
    pub starts_at: Option<String>,
    /// When the bonus ends at the latest, RFC 3339.
    pub ends_at: Option<String>,
    /// `active` or `ended`.
    pub state: String,
    /// Why it ended (`expired`, `sold_through`, `budget_exhausted`, `budget_forecast`,
    /// `cancelled`); null while active.
    pub end_reason: Option<String>,
}

pub(crate) fn rfc3339_ms(ms: i64) -> String {
    Utc.timestamp_millis_opt(ms)
        .single()
        .unwrap_or_default()
        .to_rfc3339_opts(chrono::SecondsFormat::Millis, true)
}

pub(crate) fn timestamp_rfc3339(ts: Option<&prost_types::Timestamp>) -> Option<String> {
    ratemesh_contract::time::from_timestamp(ts?)
        .map(|t| t.to_rfc3339_opts(chrono::SecondsFormat::Millis, true))
}

/// The webhook form of a published rate card.
pub(crate) fn rate_of(card: &v1::RateCard, previous_rate: &str) -> WebhookRate {
    let previous = if previous_rate.is_empty() {
        &card.previous_rate
    } else {
        previous_rate
    };
    WebhookRate {
        sku: card.sku.clone(),
        category: card.category.clone(),
        rate: card.effective_rate.clone(),
        previous_rate: (!previous.is_empty()).then(|| previous.to_owned()),
        version: card.version,
        reasons: card
            .reasons
            .iter()
            .map(|r| WebhookReason {
                code: r.code.clone(),
                text: r.text.clone(),
            })
            .collect(),
        guaranteed_until: timestamp_rfc3339(card.guaranteed_until.as_ref()),
        scheduled_change: card
            .scheduled_change
            .as_ref()
            .map(|c| WebhookScheduledChange {
                base_rate: c.base_rate.clone(),
                effective_at: timestamp_rfc3339(c.effective_at.as_ref()),
                rate: c.rate.clone(),
            }),
    }
}

/// The webhook form of an incentive transition.
pub(crate) fn incentive_of(
    incentive: &v1::Incentive,
    transition: v1::IncentiveTransition,
) -> WebhookIncentive {
    let transition = match transition {
        v1::IncentiveTransition::Opened => "opened",
        v1::IncentiveTransition::Extended => "extended",
        v1::IncentiveTransition::Ended => "ended",
        v1::IncentiveTransition::Unspecified => "changed",
    };
    let state = match incentive.state() {
        v1::IncentiveState::Ended => "ended",
        _ => "active",
    };
    let end_reason = match incentive.end_reason() {
        v1::IncentiveEndReason::Unspecified => None,
        v1::IncentiveEndReason::Expired => Some("expired"),
        v1::IncentiveEndReason::SoldThrough => Some("sold_through"),
        v1::IncentiveEndReason::BudgetExhausted => Some("budget_exhausted"),
        v1::IncentiveEndReason::Cancelled => Some("cancelled"),
        v1::IncentiveEndReason::BudgetForecast => Some("budget_forecast"),
    };
    WebhookIncentive {
        id: incentive.id.clone(),
        transition: transition.to_owned(),
        sku: incentive.sku.clone(),
        category: incentive.category.clone(),
        bonus_rate: incentive.bonus_rate.clone(),
        starts_at: timestamp_rfc3339(incentive.starts_at.as_ref()),
        ends_at: timestamp_rfc3339(incentive.ends_at.as_ref()),
        state: state.to_owned(),
        end_reason: end_reason.map(str::to_owned),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_rate_body_has_the_documented_shape() {
        let body = WebhookBody {
            event_id: "01J".into(),
            event_type: RATE_CHANGED.into(),
            occurred_at: rfc3339_ms(1_700_000_000_123),
            rates: Some(vec![WebhookRate {
                sku: "A".into(),
                category: "shoes".into(),
                rate: "0.08".into(),
                previous_rate: None,
                version: 2,
                reasons: vec![WebhookReason {
                    code: "BAND".into(),
                    text: "x".into(),
                }],
                guaranteed_until: None,
                scheduled_change: None,
            }]),
            incentive: None,
        };
        let json: serde_json::Value =
            serde_json::from_slice(&serde_json::to_vec(&body).expect("encode")).expect("json");
        assert_eq!(json["type"], "rate.changed");
        assert_eq!(json["occurred_at"], "2023-11-14T22:13:20.123Z");
        assert_eq!(json["rates"][0]["version"], 2);
        assert_eq!(json["rates"][0]["reasons"][0]["code"], "BAND");
        assert!(json["rates"][0]["previous_rate"].is_null());
        assert!(json.get("incentive").is_none());
        assert!(json["rates"][0].get("scheduled_change").is_none());
    }

    #[test]
    fn an_announced_cut_travels_with_the_rate() {
        let card = v1::RateCard {
            sku: "A".into(),
            category: "shoes".into(),
            effective_rate: "0.08".into(),
            version: 3,
            scheduled_change: Some(v1::ScheduledChange {
                base_rate: "0.07".into(),
                effective_at: Some(prost_types::Timestamp {
                    seconds: 1_700_000_000,
                    nanos: 0,
                }),
                rate: "0.07".into(),
            }),
            ..Default::default()
        };
        let json = serde_json::to_value(rate_of(&card, "")).expect("json");
        assert_eq!(json["scheduled_change"]["base_rate"], "0.07");
        assert_eq!(json["scheduled_change"]["rate"], "0.07");
        assert_eq!(
            json["scheduled_change"]["effective_at"],
            "2023-11-14T22:13:20.000Z"
        );
    }

    #[test]
    fn an_incentive_closed_by_the_budget_forecast_says_so() {
        let ended = v1::Incentive {
            id: "i1".into(),
            sku: "A".into(),
            state: v1::IncentiveState::Ended as i32,
            end_reason: v1::IncentiveEndReason::BudgetForecast as i32,
            ..Default::default()
        };
        let w = incentive_of(&ended, v1::IncentiveTransition::Ended);
        assert_eq!(
            (w.state.as_str(), w.end_reason.as_deref()),
            ("ended", Some("budget_forecast"))
        );
    }
}
