//! The contract's messages as the JSON the pages read: the same field names, decimals kept
//! as the strings the services send, times as RFC 3339, enums as lowercase words
//! (`OVERRIDE_KIND_PIN` → `"pin"`).

use chrono::{DateTime, SecondsFormat, Utc};
use ratemesh_proto::v1;
use serde_json::{Value, json};

/// A protobuf time as RFC 3339 (UTC, milliseconds), or null.
pub fn time(at: Option<&prost_types::Timestamp>) -> Value {
    at.and_then(|t| DateTime::<Utc>::from_timestamp(t.seconds, t.nanos.max(0) as u32))
        .map(|t| Value::String(t.to_rfc3339_opts(SecondsFormat::Millis, true)))
        .unwrap_or(Value::Null)
}

/// RFC 3339 text as a protobuf time.
pub fn parse_time(text: &str) -> Option<prost_types::Timestamp> {
    let at = DateTime::parse_from_rfc3339(text.trim()).ok()?;
    Some(prost_types::Timestamp {
        seconds: at.timestamp(),
        nanos: at.timestamp_subsec_nanos() as i32,
    })
}

/// An enum's name without its prefix, lowercase: `("OVERRIDE_KIND_PIN", "OVERRIDE_KIND_")`
/// → `"pin"`.
fn word(name: &str, prefix: &str) -> String {
    name.strip_prefix(prefix)
        .unwrap_or(name)
        .to_ascii_lowercase()
}

/// An override kind's word, or `"unspecified"`.
pub fn override_kind(kind: i32) -> String {
    let kind = v1::OverrideKind::try_from(kind).unwrap_or(v1::OverrideKind::Unspecified);
    word(kind.as_str_name(), "OVERRIDE_KIND_")
}

/// The override kind a word names; unknown words are UNSPECIFIED, which the rates service
/// refuses with its own message.
pub fn parse_override_kind(word: &str) -> v1::OverrideKind {
    v1::OverrideKind::from_str_name(&format!("OVERRIDE_KIND_{}", word.trim().to_uppercase()))
        .unwrap_or(v1::OverrideKind::Unspecified)
}

/// A rate card.
pub fn card(card: &v1::RateCard) -> Value {
    let parts = card.parts.clone().unwrap_or_default();
    json!({
        "sku": card.sku,
        "category": card.category,
        "effective_rate": card.effective_rate,
        "previous_rate": card.previous_rate,
        "band": card.band,
        "version": card.version,
        "computed_at": time(card.computed_at.as_ref()),
        "guaranteed_until": time(card.guaranteed_until.as_ref()),
        "parts": {
            "base": parts.base,
            "inventory_adjustment": parts.inventory_adjustment,
            "boost": parts.boost,
            "incentive": parts.incentive,
            "override_adjustment": parts.override_adjustment,
            "guardrail_adjustment": parts.guardrail_adjustment,
        },
        "reasons": card.reasons.iter().map(|r| json!({"code": r.code, "text": r.text})).collect::<Vec<_>>(),
        "scheduled_change": card.scheduled_change.as_ref().map(|c| json!({
            "base_rate": c.base_rate,
            "effective_at": time(c.effective_at.as_ref()),
            "rate": c.rate,
        })),
    })
}

/// An override.
pub fn override_(o: &v1::Override) -> Value {
    let (scope, target) = match &o.scope {
        Some(v1::r#override::Scope::Sku(sku)) => ("sku", sku.as_str()),
        Some(v1::r#override::Scope::Category(category)) => ("category", category.as_str()),
        None => ("", ""),
    };
    let status = v1::OverrideStatus::try_from(o.status).unwrap_or(v1::OverrideStatus::Unspecified);
    json!({
        "id": o.id,
        "scope": scope,
        "target": target,
        "kind": override_kind(o.kind),
        "value": o.value,
        "starts_at": time(o.starts_at.as_ref()),
        "ends_at": time(o.ends_at.as_ref()),
        "reason": o.reason,
        "author": o.author,
        "created_at": time(o.created_at.as_ref()),
        "status": word(status.as_str_name(), "OVERRIDE_STATUS_"),
    })
}

/// An entry of the override audit log.
pub fn audit_entry(entry: &v1::OverrideAuditEntry) -> Value {
    let action =
        v1::OverrideAction::try_from(entry.action).unwrap_or(v1::OverrideAction::Unspecified);
    json!({
        "at": time(entry.at.as_ref()),
        "author": entry.author,
        "action": word(action.as_str_name(), "OVERRIDE_ACTION_"),
        "reason": entry.reason,
        "before": entry.before.as_ref().map(override_),
        "after": entry.after.as_ref().map(override_),
    })
}

/// A flash incentive.
pub fn incentive(i: &v1::Incentive) -> Value {
    let state = v1::IncentiveState::try_from(i.state).unwrap_or(v1::IncentiveState::Unspecified);
    let end = v1::IncentiveEndReason::try_from(i.end_reason)
        .unwrap_or(v1::IncentiveEndReason::Unspecified);
    let origin =
        v1::IncentiveOrigin::try_from(i.origin).unwrap_or(v1::IncentiveOrigin::Unspecified);
    json!({
        "id": i.id,
        "sku": i.sku,
        "category": i.category,
        "bonus_rate": i.bonus_rate,
        "starts_at": time(i.starts_at.as_ref()),
        "ends_at": time(i.ends_at.as_ref()),
        "budget_spend": i.budget_spend,
        "budget_units": i.budget_units,
        "spent": i.spent,
        "units_sold": i.units_sold,
        "state": word(state.as_str_name(), "INCENTIVE_STATE_"),
        "end_reason": match end {
            v1::IncentiveEndReason::Unspecified => Value::Null,
            end => Value::String(word(end.as_str_name(), "INCENTIVE_END_REASON_")),
        },
        "origin": word(origin.as_str_name(), "INCENTIVE_ORIGIN_"),
        "opened_by": i.opened_by,
        "reason": i.reason,
        "ended_at": time(i.ended_at.as_ref()),
        "ended_by": i.ended_by,
        "cancel_reason": i.cancel_reason,
    })
}

/// What `ExplainRate` answers: the card and the inputs behind it.
pub fn explanation(e: &v1::ExplainRateResponse) -> Value {
    let inputs = e.inputs.clone().unwrap_or_default();
    let velocity_source = v1::VelocitySource::try_from(inputs.velocity_source)
        .unwrap_or(v1::VelocitySource::Unspecified);
    let mode = v1::PolicyMode::try_from(inputs.policy_mode).unwrap_or(v1::PolicyMode::Unspecified);
    json!({
        "card": e.card.as_ref().map(card),
        "redacted": e.redacted,
        "status": e.status,
        "inputs": {
            "product": inputs.product.as_ref().map(|p| json!({
                "category": p.category,
                "title": p.title,
                "price": p.price,
                "unit_cost": p.unit_cost,
                "base_rate": p.base_rate,
                "currency": p.currency,
            })),
            "available": inputs.available,
            "locations": inputs.locations.iter().map(|l| json!({
                "location": l.location,
                "on_hand": l.on_hand,
                "reserved": l.reserved,
                "as_of": time(l.as_of.as_ref()),
            })).collect::<Vec<_>>(),
            "velocity": inputs.velocity,
            "velocity_source": word(velocity_source.as_str_name(), "VELOCITY_SOURCE_"),
            "days_of_cover": inputs.days_of_cover,
            "band": inputs.band,
            "peak_window": inputs.peak_window,
            "overrides": inputs.overrides.iter().map(override_).collect::<Vec<_>>(),
            "incentive": inputs.incentive.as_ref().map(incentive),
            "policy_mode": word(mode.as_str_name(), "POLICY_MODE_"),
            "target_rate": inputs.target_rate,
            "may_move_at": time(inputs.may_move_at.as_ref()),
        },
    })
}

/// A partner.
pub fn partner(p: &v1::Partner) -> Value {
    let filters = p.filters.clone().unwrap_or_default();
    json!({
        "id": p.id,
        "name": p.name,
        "endpoint_url": p.endpoint_url,
        "enabled": p.enabled,
        "filters": {
            "skus": filters.skus,
            "categories": filters.categories,
            "event_types": filters.event_types,
            "min_change": filters.min_change,
        },
        "updated_at": time(p.updated_at.as_ref()),
    })
}

/// A webhook delivery.
pub fn delivery(d: &v1::Delivery) -> Value {
    let status = v1::DeliveryStatus::try_from(d.status).unwrap_or(v1::DeliveryStatus::Unspecified);
    json!({
        "id": d.id,
        "partner_id": d.partner_id,
        "event_id": d.event_id,
        "event_type": d.event_type,
        "status": word(status.as_str_name(), "DELIVERY_STATUS_"),
        "attempts": d.attempts,
        "last_error": d.last_error,
        "last_response_code": d.last_response_code,
        "next_attempt_at": time(d.next_attempt_at.as_ref()),
        "created_at": time(d.created_at.as_ref()),
        "delivered_at": time(d.delivered_at.as_ref()),
        "skus": d.skus,
    })
}

/// The delivery status a word names (`"dead"`); empty or unknown: any status.
pub fn parse_delivery_status(word: &str) -> v1::DeliveryStatus {
    v1::DeliveryStatus::from_str_name(&format!("DELIVERY_STATUS_{}", word.trim().to_uppercase()))
        .unwrap_or(v1::DeliveryStatus::Unspecified)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn enums_are_lowercase_words_and_parse_back() {
        assert_eq!(override_kind(v1::OverrideKind::Pin as i32), "pin");
        assert_eq!(parse_override_kind("Cap"), v1::OverrideKind::Cap);
        assert_eq!(parse_override_kind("pinn"), v1::OverrideKind::Unspecified);
        assert_eq!(parse_delivery_status("dead"), v1::DeliveryStatus::Dead);
        assert_eq!(parse_delivery_status(""), v1::DeliveryStatus::Unspecified);
    }

    #[test]
    fn times_are_rfc3339_and_parse_back() {
        let at = parse_time("2026-11-27T08:30:00.250Z").expect("parses");
        assert_eq!(time(Some(&at)), json!("2026-11-27T08:30:00.250Z"));
        assert_eq!(time(None), Value::Null);
        assert!(parse_time("27/11/2026").is_none());
    }
}
