//! When time alone changes a card: the instants the rates service recomputes a SKU, or a
//! category's SKUs, with no new event, so the rate moves when a hold ends rather than at
//! the next stock reading. The service schedules durable timers at these instants; a
//! what-if replay fires them in its own timeline. One rule for both, so a replayed rate
//! moves when the live one did.

use chrono::{DateTime, TimeDelta, Utc};

use crate::card::RateCard;
use crate::overrides::Override;
use crate::policy::Policy;
use crate::reason::Reason;
use crate::state::SkuState;

/// The next instant after `card.computed_at` at which recomputing the SKU with no new
/// event can change its card: a hold, a damping step or a boost guarantee ending, an
/// announced cut falling due, the SKU's incentive or one of its own overrides starting or
/// ending. `None` when nothing is due.
pub fn next_recompute(policy: &Policy, state: &SkuState, card: &RateCard) -> Option<DateTime<Utc>> {
    let now = card.computed_at;
    let mut next: Option<DateTime<Utc>> = None;
    let mut consider = |at: Option<DateTime<Utc>>| {
        if let Some(at) = at
            && at > now
            && next.is_none_or(|n| at < n)
        {
            next = Some(at);
        }
    };
    let category = state.product.as_ref().map(|p| policy.category(&p.category));
    for reason in &card.reasons {
        match reason {
            Reason::Held { until, .. } | Reason::BoostGuaranteed { until } => {
                consider(Some(*until));
            }
            Reason::Damped { .. } => {
                if let Some(category) = category {
                    let hold = category.min_hold.max(TimeDelta::seconds(1));
                    consider(card.state.policy_changed_at.map(|at| at + hold));
                    consider(card.state.boost_changed_at.map(|at| at + hold));
                }
            }
            Reason::BaseCutScheduled { effective_at, .. } => consider(Some(*effective_at)),
            _ => {}
        }
    }
    consider(card.guaranteed_until);
    consider(card.state.boost_guaranteed_until);
    consider(card.state.pending_cut.map(|c| c.effective_at));
    if let Some(incentive) = &state.incentive {
        consider(Some(incentive.opened_at));
        consider(Some(incentive.ends_at));
    }
    for o in &state.overrides.overrides {
        consider(Some(o.starts_at));
        consider(o.ends_at);
    }
    next
}

/// The instants after `at` at which a category override set at `at` changes its
/// category's cards by time alone: its start, when it starts later, and its end.
pub fn category_recomputes(value: &Override, at: DateTime<Utc>) -> Vec<DateTime<Utc>> {
    let mut times = Vec::with_capacity(2);
    if value.starts_at > at {
        times.push(value.starts_at);
    }
    times.extend(value.ends_at);
    times
}
