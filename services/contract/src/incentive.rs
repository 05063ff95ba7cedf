//! The incentives stream: `IncentiveChanged`, written by the incentives service on every
//! transition of a flash incentive, folded into rate cards by rates and delivered to
//! partners by the notifier.

use chrono::{DateTime, Utc};
use prost::Message;
use ratemesh_core::{CloseReason, Event, Incentive, Money, Quantity, Rate, Sku};
use ratemesh_proto::v1;
use rust_decimal::Decimal;

use crate::DecodeError;
use crate::header::{meta, occurred_at};
use crate::kinds::INCENTIVE_CHANGED;
use crate::time::required;

/// The `incentives` stream entry announcing `incentive`'s `transition` at `now`, keyed by
/// its SKU.
pub fn incentive_changed(
    incentive: v1::Incentive,
    transition: v1::IncentiveTransition,
    now: DateTime<Utc>,
) -> ratemesh_bus::Event {
    let key = incentive.sku.clone();
    let message = v1::IncentiveChanged {
        meta: Some(meta(now)),
        incentive: Some(incentive),
        transition: transition as i32,
    };
    ratemesh_bus::Event::new(key, message.encode_to_vec()).with_kind(INCENTIVE_CHANGED)
}

/// Why an incentive ended, on the wire.
pub fn end_reason_to_proto(reason: Option<CloseReason>) -> v1::IncentiveEndReason {
    match reason {
        None => v1::IncentiveEndReason::Unspecified,
        Some(CloseReason::Expired) => v1::IncentiveEndReason::Expired,
        Some(CloseReason::SoldThrough) => v1::IncentiveEndReason::SoldThrough,
        Some(CloseReason::BudgetExhausted) => v1::IncentiveEndReason::BudgetExhausted,
        Some(CloseReason::BudgetForecast) => v1::IncentiveEndReason::BudgetForecast,
        Some(CloseReason::Cancelled) => v1::IncentiveEndReason::Cancelled,
    }
}

/// Why an incentive ended, from the wire; unknown and unspecified values read as
/// `Expired` (the window simply ended).
pub fn end_reason_from_proto(reason: i32) -> CloseReason {
    match v1::IncentiveEndReason::try_from(reason) {
        Ok(v1::IncentiveEndReason::SoldThrough) => CloseReason::SoldThrough,
        Ok(v1::IncentiveEndReason::BudgetExhausted) => CloseReason::BudgetExhausted,
        Ok(v1::IncentiveEndReason::BudgetForecast) => CloseReason::BudgetForecast,
        Ok(v1::IncentiveEndReason::Cancelled) => CloseReason::Cancelled,
        _ => CloseReason::Expired,
    }
}

/// An incentive as the incentives service publishes it, as the core incentive a rate
/// computation folds. Absent budgets become unbounded (readers need the bonus and the
/// window).
pub fn incentive_from_proto(i: &v1::Incentive) -> Result<Incentive, DecodeError> {
    let sku = Sku::new(i.sku.clone()).map_err(|e| DecodeError::field("incentive.sku", e))?;
    let bonus: Rate = i
        .bonus_rate
        .parse()
        .map_err(|e| DecodeError::field("incentive.bonus_rate", e))?;
    let opened_at = required(i.starts_at.as_ref(), "incentive.starts_at")?;
    let ends_at = required(i.ends_at.as_ref(), "incentive.ends_at")?;
    let unbounded = Decimal::from(i64::MAX);
    let budget = |s: &Option<String>, what: &str| -> Result<Decimal, DecodeError> {
        match s.as_deref().map(str::trim).filter(|s| !s.is_empty()) {
            None => Ok(unbounded),
            Some(s) => s
                .parse::<Decimal>()
                .map_err(|e| DecodeError::field(&format!("incentive.{what}"), e)),
        }
    };
    let amount = |s: &str, what: &str| -> Result<Decimal, DecodeError> {
        if s.trim().is_empty() {
            return Ok(Decimal::ZERO);
        }
        s.trim()
            .parse::<Decimal>()
            .map(|d| d.max(Decimal::ZERO))
            .map_err(|e| DecodeError::field(&format!("incentive.{what}"), e))
    };
    fn invalid(what: &'static str) -> impl Fn(ratemesh_core::TypeError) -> DecodeError {
        move |e| DecodeError::field(what, e)
    }
    Ok(Incentive {
        id: i.id.clone(),
        sku,
        category: i.category.clone(),
        bonus,
        opened_at,
        ends_at,
        extensions: 0,
        budget_spend: Money::new(budget(&i.budget_spend, "budget_spend")?)
            .map_err(invalid("incentive.budget_spend"))?,
        budget_units: Quantity::new(budget(&i.budget_units, "budget_units")?)
            .map_err(invalid("incentive.budget_units"))?,
        spent: Money::new(amount(&i.spent, "spent")?).map_err(invalid("incentive.spent"))?,
        units_sold: Quantity::new(amount(&i.units_sold, "units_sold")?)
            .map_err(invalid("incentive.units_sold"))?,
        cancel_requested: false,
        manual: i.origin == v1::IncentiveOrigin::Manual as i32,
    })
}

/// The core event an `IncentiveChanged` payload stands for.
pub fn decode(payload: &[u8]) -> Result<Event, DecodeError> {
    let m = v1::IncentiveChanged::decode(payload)
        .map_err(|e| DecodeError(format!("IncentiveChanged does not decode: {e}")))?;
    let at = occurred_at(m.meta.as_ref())?;
    let p = m
        .incentive
        .as_ref()
        .ok_or_else(|| DecodeError::field("incentive", "missing"))?;
    let incentive = incentive_from_proto(p)?;
    let transition = v1::IncentiveTransition::try_from(m.transition)
        .unwrap_or(v1::IncentiveTransition::Unspecified);
    Ok(match transition {
        v1::IncentiveTransition::Opened => Event::IncentiveOpened { incentive, at },
        v1::IncentiveTransition::Extended => Event::IncentiveChanged { incentive, at },
        v1::IncentiveTransition::Ended => Event::IncentiveClosed {
            sku: incentive.sku,
            id: incentive.id,
            reason: end_reason_from_proto(p.end_reason),
            at,
        },
        v1::IncentiveTransition::Unspecified => {
            return Err(DecodeError::field("transition", "unspecified"));
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_close_reason_survives_the_wire() {
        for reason in [
            CloseReason::Expired,
            CloseReason::SoldThrough,
            CloseReason::BudgetExhausted,
            CloseReason::BudgetForecast,
            CloseReason::Cancelled,
        ] {
            assert_eq!(
                end_reason_from_proto(end_reason_to_proto(Some(reason)) as i32),
                reason
            );
        }
    }

    #[test]
    fn an_ended_incentive_decodes_as_closed_with_its_reason() {
        let now = DateTime::from_timestamp(1_700_000_000, 0).unwrap();
        let proto = v1::Incentive {
            id: "inc-1".into(),
            sku: "SKU-1".into(),
            category: "home".into(),
            bonus_rate: "0.02".into(),
            starts_at: Some(crate::time::to_timestamp(now)),
            ends_at: Some(crate::time::to_timestamp(now)),
            end_reason: v1::IncentiveEndReason::BudgetForecast as i32,
            ..Default::default()
        };
        let entry = incentive_changed(proto, v1::IncentiveTransition::Ended, now);
        assert_eq!(
            decode(&entry.payload).unwrap(),
            Event::IncentiveClosed {
                sku: Sku::new("SKU-1").unwrap(),
                id: "inc-1".into(),
                reason: CloseReason::BudgetForecast,
                at: now,
            }
        );
    }
}
