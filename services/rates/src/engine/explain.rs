//! `ExplainRate`'s inputs: the engine's record of a SKU (its `engine` field) as the
//! [`v1::RateInputs`] a merchandiser or network reads, next to the record it decodes.

use chrono::{DateTime, Utc};
use ratemesh_contract::overrides::override_to_proto;
use ratemesh_core::overrides::ActiveOverrides;
use ratemesh_core::policy::config::Mode;
use ratemesh_core::{Override, Policy, Reason};
use ratemesh_proto::v1;

use super::record::EngineRecord;
use crate::convert::{band_name, dec, timestamp};

/// The inputs a stored card was computed from, for `ExplainRate`: pass the `engine` field
/// of the SKU's `rate` state record, the program's category overrides in force (may be
/// empty), the policy and `now`. `None` when the field does not decode.
pub fn explain(
    engine_field: &[u8],
    category_overrides: &[Override],
    policy: &Policy,
    now: DateTime<Utc>,
) -> Option<v1::RateInputs> {
    let record = EngineRecord::decode(engine_field).ok()?;
    Some(inputs_to_proto(&record, category_overrides, policy, now))
}

fn inputs_to_proto(
    record: &EngineRecord,
    category_overrides: &[Override],
    policy: &Policy,
    now: DateTime<Utc>,
) -> v1::RateInputs {
    let state = &record.state;
    let inputs = state.inputs_with(category_overrides);
    let category = state
        .product
        .as_ref()
        .map(|p| p.category.clone())
        .unwrap_or_default();
    let velocity = inputs.velocity;
    let erp = state.velocity.estimate() != velocity && velocity.is_some();
    let days = velocity.filter(|v| !v.get().is_zero()).map(|v| {
        ratemesh_core::DaysOfCover::from_stock(inputs.available, v)
            .get()
            .round_dp(2)
    });
    let at = record.card.as_ref().map_or(now, |c| c.computed_at);
    let active = ActiveOverrides::resolve(
        state.overrides.overrides.iter().chain(category_overrides),
        &state.sku,
        &category,
        at,
    );
    let mut overrides = Vec::new();
    for o in [active.exclude]
        .into_iter()
        .chain([
            active.pin.map(|p| p.0),
            active.multiplier.map(|p| p.0),
            active.floor.map(|p| p.0),
            active.cap.map(|p| p.0),
        ])
        .flatten()
    {
        let mut p = override_to_proto(o);
        p.status = v1::OverrideStatus::Active as i32;
        overrides.push(p);
    }
    let incentive = state
        .incentive
        .as_ref()
        .filter(|i| i.is_active(at))
        .map(|i| v1::Incentive {
            id: i.id.clone(),
            sku: i.sku.to_string(),
            category: i.category.clone(),
            bonus_rate: dec(i.bonus.get()),
            starts_at: Some(timestamp(i.opened_at)),
            ends_at: Some(timestamp(i.ends_at)),
            spent: dec(i.spent.get()),
            units_sold: dec(i.units_sold.get()),
            budget_spend: Some(dec(i.budget_spend.get())),
            budget_units: Some(dec(i.budget_units.get())),
            units_over_budget: dec(i.units_over_budget().get()),
            spend_over_budget: dec(i.spend_over_budget().get()),
            state: v1::IncentiveState::Active as i32,
            origin: if i.manual {
                v1::IncentiveOrigin::Manual
            } else {
                v1::IncentiveOrigin::Automatic
            } as i32,
            ..Default::default()
        });
    // Where the policy wants the rate while it is held or damped, and when it may move.
    let (mut target, mut may_move_at) = (None, None);
    for reason in record.card.iter().flat_map(|c| &c.reasons) {
        match reason {
            Reason::Held { target: t, until } => {
                target = Some(*t);
                may_move_at = Some(*until);
            }
            Reason::Damped { target: t, .. } => target = target.or(Some(*t)),
            _ => {}
        }
    }
    v1::RateInputs {
        product: state.product.as_ref().map(|p| v1::Product {
            sku: state.sku.to_string(),
            category: p.category.clone(),
            price: dec(p.price.get()),
            unit_cost: dec(p.unit_cost.get()),
            base_rate: p.base_rate.map(|r| dec(r.get())),
            currency: String::new(),
            title: None,
            as_of: state.product_at.map(timestamp),
        }),
        available: dec(inputs.available.get()),
        locations: state
            .stock
            .iter()
            .map(|(location, level)| v1::LocationStock {
                location: location.clone(),
                on_hand: dec(level.on_hand.get()),
                reserved: dec(level.reserved.get()),
                as_of: Some(timestamp(level.as_of)),
                sequence: level.sequence,
            })
            .collect(),
        velocity: velocity.map(|v| dec(v.get())).unwrap_or_default(),
        velocity_source: match (velocity, erp) {
            (None, _) => v1::VelocitySource::None,
            (Some(_), true) => v1::VelocitySource::Erp,
            (Some(_), false) => v1::VelocitySource::Observed,
        } as i32,
        days_of_cover: days.map(dec).unwrap_or_default(),
        band: record
            .card
            .as_ref()
            .map(|c| band_name(policy, &category, c))
            .unwrap_or_default(),
        peak_window: policy
            .peak_window_at(at)
            .map(|(_, w)| w.name.clone())
            .unwrap_or_default(),
        overrides,
        incentive,
        policy_mode: match policy.mode {
            Mode::Direct => v1::PolicyMode::Direct,
            Mode::Boost => v1::PolicyMode::Boost,
        } as i32,
        target_rate: target.map(|t| dec(t.get())).unwrap_or_default(),
        may_move_at: may_move_at.map(timestamp),
    }
}
