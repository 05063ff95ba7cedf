//! Offline replay: the oracle the fault tests compare the rates service against, and the
//! engine for what-if runs. It folds events through [`SkuState::apply`] and
//! [`crate::compute()`] — the same code the service runs — using each event's
//! [`Event::priced_at`] (raised to the SKU's previous `computed_at`) as `now`, and recomputes a SKU's card after every event that changed its state.
//!
//! [`replay()`] first sorts events into a canonical order (time, then kind, then SKU,
//! location, sequence and id), so its result does not depend on the order, duplication or
//! redelivery of the input. [`replay_in_arrival_order`] folds them as given, like the
//! service does; its stock state converges to the same values for any order, but cards can
//! differ where the policy is path-dependent by design (damping, hold, hysteresis, boost
//! guarantees, and the velocity estimate).

use std::collections::BTreeMap;

use crate::card::RateCard;
use crate::compute::compute;
use crate::overrides::{Override, OverrideScope};
use crate::policy::Policy;
use crate::state::{Applied, Event, OverrideBook, SkuState};
use crate::types::Sku;

/// A fold of events into per-SKU states and cards.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Replay {
    states: BTreeMap<Sku, SkuState>,
    category_overrides: OverrideBook,
    cards: BTreeMap<Sku, RateCard>,
    last_tick_at: Option<chrono::DateTime<chrono::Utc>>,
}

impl Replay {
    /// Nothing folded yet.
    pub fn new() -> Self {
        Self::default()
    }

    /// Folds one event and recomputes the cards it affects.
    pub fn apply(&mut self, policy: &Policy, event: &Event) -> Applied {
        let now = event.priced_at();
        match event.sku() {
            Some(sku) => {
                let state = self
                    .states
                    .entry(sku.clone())
                    .or_insert_with(|| SkuState::new(sku.clone(), &policy.velocity));
                let outcome = state.apply(event);
                if outcome == Applied::Applied {
                    let previous = self.cards.get(sku);
                    let card = compute(
                        policy,
                        &state.inputs_with(&self.category_overrides.overrides),
                        previous,
                        priced_now(previous, now),
                    );
                    self.cards.insert(sku.clone(), card);
                }
                outcome
            }
            None => {
                let (outcome, category) = match event {
                    Event::OverrideSet { value, at } => (
                        self.category_overrides.set(value, *at),
                        scope_category(&value.scope),
                    ),
                    Event::OverrideCleared { id, scope, at } => (
                        self.category_overrides.clear(id, *at),
                        scope_category(scope),
                    ),
                    Event::Tick { at, .. } => {
                        if self.last_tick_at.is_some_and(|last| *at <= last) {
                            return Applied::Duplicate;
                        }
                        self.last_tick_at = Some(*at);
                        self.category_overrides.prune_ended(*at);
                        (Applied::Applied, None)
                    }
                    _ => (Applied::NotForThisSku, None),
                };
                if outcome != Applied::Applied {
                    return outcome;
                }
                for (sku, state) in &mut self.states {
                    let in_scope = match (category, &state.product) {
                        (None, _) => true,
                        (Some(c), Some(p)) => p.category == c,
                        (Some(_), None) => false,
                    };
                    if !in_scope {
                        continue;
                    }
                    if let Event::Tick { .. } = event {
                        let tick = Event::Tick {
                            at: now,
                            sku: Some(sku.clone()),
                        };
                        if state.apply(&tick) != Applied::Applied {
                            continue;
                        }
                    }
                    let previous = self.cards.get(sku);
                    let card = compute(
                        policy,
                        &state.inputs_with(&self.category_overrides.overrides),
                        previous,
                        priced_now(previous, now),
                    );
                    self.cards.insert(sku.clone(), card);
                }
                outcome
            }
        }
    }

    /// The latest card per SKU.
    pub fn cards(&self) -> &BTreeMap<Sku, RateCard> {
        &self.cards
    }

    /// The state per SKU.
    pub fn states(&self) -> &BTreeMap<Sku, SkuState> {
        &self.states
    }

    /// Category-scoped overrides currently set.
    pub fn category_overrides(&self) -> &[Override] {
        &self.category_overrides.overrides
    }

    /// The cards, consuming the replay.
    pub fn into_cards(self) -> BTreeMap<Sku, RateCard> {
        self.cards
    }
}

/// A SKU's computations never go back in time: `at` raised to the previous card's
/// `computed_at` (what the rates engine does).
fn priced_now(
    previous: Option<&RateCard>,
    at: chrono::DateTime<chrono::Utc>,
) -> chrono::DateTime<chrono::Utc> {
    previous.map_or(at, |c| c.computed_at.max(at))
}

fn scope_category(scope: &OverrideScope) -> Option<&str> {
    match scope {
        OverrideScope::Category(c) => Some(c),
        OverrideScope::Sku(_) => None,
    }
}

/// Kind rank within one instant: product data first (so stock at the same instant is
/// priced), then overrides, incentives, stock, and ticks last.
fn kind_rank(event: &Event) -> u8 {
    match event {
        Event::ProductUpserted { .. } => 0,
        Event::OverrideSet { .. } => 1,
        Event::OverrideCleared { .. } => 2,
        Event::IncentiveOpened { .. } => 3,
        Event::IncentiveChanged { .. } => 4,
        Event::IncentiveClosed { .. } => 5,
        Event::StockObserved { .. } => 6,
        Event::Tick { .. } => 7,
    }
}

/// Secondary key: location and sequence for stock, id for overrides and incentives.
fn detail_key(event: &Event) -> (&str, u64, &str) {
    match event {
        Event::StockObserved {
            location, sequence, ..
        } => (location, *sequence, ""),
        Event::OverrideSet { value, .. } => ("", 0, &value.id),
        Event::OverrideCleared { id, .. } | Event::IncentiveClosed { id, .. } => ("", 0, id),
        Event::IncentiveOpened { incentive, .. } | Event::IncentiveChanged { incentive, .. } => {
            ("", 0, &incentive.id)
        }
        Event::ProductUpserted { .. } | Event::Tick { .. } => ("", 0, ""),
    }
}

/// The canonical order [`replay()`] folds events in: time, then kind (product data first,
/// ticks last), then SKU, then location and sequence for stock or id for overrides and
/// incentives.
pub fn canonical_order(a: &Event, b: &Event) -> std::cmp::Ordering {
    a.priced_at()
        .cmp(&b.priced_at())
        .then_with(|| kind_rank(a).cmp(&kind_rank(b)))
        .then_with(|| a.sku().map(Sku::as_str).cmp(&b.sku().map(Sku::as_str)))
        .then_with(|| detail_key(a).cmp(&detail_key(b)))
}

/// Replays `events` in canonical order and returns the final card of every SKU that has
/// one. Deterministic, and independent of the input order and of duplicated events.
pub fn replay(policy: &Policy, events: &[Event]) -> BTreeMap<Sku, RateCard> {
    let mut order: Vec<&Event> = events.iter().collect();
    order.sort_by(|a, b| canonical_order(a, b));
    let mut replay = Replay::new();
    for event in order {
        replay.apply(policy, event);
    }
    replay.into_cards()
}

/// Replays `events` in the order given, as the rates service would receive them.
pub fn replay_in_arrival_order(policy: &Policy, events: &[Event]) -> Replay {
    let mut replay = Replay::new();
    for event in events {
        replay.apply(policy, event);
    }
    replay
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::overrides::OverrideKind;
    use crate::product::Product;
    use crate::reason::ReasonCode;
    use crate::types::{Money, Quantity, Rate};
    use chrono::{DateTime, TimeDelta, TimeZone, Utc};
    use rust_decimal::Decimal;
    use rust_decimal_macros::dec;

    fn t(h: i64) -> DateTime<Utc> {
        Utc.with_ymd_and_hms(2025, 4, 1, 0, 0, 0).unwrap() + TimeDelta::hours(h)
    }
    fn sku(s: &str) -> Sku {
        Sku::new(s).unwrap()
    }
    fn product(s: &str, category: &str) -> Event {
        Event::ProductUpserted {
            sku: sku(s),
            product: Product {
                category: category.into(),
                price: Money::new(dec!(100)).unwrap(),
                unit_cost: Money::new(dec!(40)).unwrap(),
                base_rate: None,
            },
            at: t(0),
            received_at: None,
        }
    }
    fn stock(s: &str, on_hand: Decimal, seq: u64, h: i64) -> Event {
        Event::StockObserved {
            sku: sku(s),
            location: String::new(),
            on_hand: Quantity::new(on_hand).unwrap(),
            reserved: Quantity::ZERO,
            sequence: seq,
            as_of: t(h),
            erp_velocity: None,
            received_at: None,
        }
    }

    #[test]
    fn replays_a_scarce_sku_to_its_damped_rate() {
        let policy = Policy::example();
        // electronics: base 0.03; 10 units/day, 20 left = 2 days: scarce × 0.5 = 0.015
        let events = vec![
            product("TV-1", "electronics"),
            stock("TV-1", dec!(60), 1, 0),
            stock("TV-1", dec!(40), 2, 48),
            stock("TV-1", dec!(20), 3, 96),
            Event::Tick {
                at: t(100),
                sku: None,
            },
        ];
        let cards = replay(&policy, &events);
        let card = &cards[&sku("TV-1")];
        assert_eq!(card.effective_rate.get(), dec!(0.015));
        assert_eq!(card.reasons[0].code(), ReasonCode::LowCover);
        // in any input order
        let mut reversed = events.clone();
        reversed.reverse();
        assert_eq!(replay(&policy, &reversed), cards);
    }

    #[test]
    fn category_overrides_reach_every_sku_in_the_category() {
        let policy = Policy::example();
        let ov = Override {
            id: "promo".into(),
            scope: OverrideScope::Category("home".into()),
            kind: OverrideKind::Pin {
                rate: Rate::new(dec!(0.12)).unwrap(),
            },
            starts_at: t(1),
            ends_at: Some(t(5)),
            reason: "spring promo".into(),
            author: "cat".into(),
        };
        let events = vec![
            product("LAMP", "home"),
            product("SOFA", "home"),
            product("SHIRT", "apparel"),
            stock("LAMP", dec!(10), 1, 0),
            stock("SOFA", dec!(10), 1, 0),
            stock("SHIRT", dec!(10), 1, 0),
            Event::OverrideSet {
                value: ov,
                at: t(1),
            },
        ];
        let cards = replay(&policy, &events);
        assert_eq!(cards[&sku("LAMP")].effective_rate.get(), dec!(0.12));
        assert_eq!(cards[&sku("SOFA")].effective_rate.get(), dec!(0.12));
        assert_eq!(cards[&sku("SHIRT")].effective_rate.get(), dec!(0.08));
        // after the window a tick brings the policy rate back
        let mut later = events.clone();
        later.push(Event::Tick {
            at: t(6),
            sku: None,
        });
        let cards = replay(&policy, &later);
        assert_eq!(cards[&sku("LAMP")].effective_rate.get(), dec!(0.06));
        let arrival = replay_in_arrival_order(&policy, &later);
        assert!(arrival.category_overrides().is_empty());
    }

    #[test]
    fn duplicates_and_stale_events_do_not_recompute() {
        let policy = Policy::example();
        let mut r = Replay::new();
        r.apply(&policy, &product("A", "home"));
        assert_eq!(
            r.apply(&policy, &stock("A", dec!(5), 2, 1)),
            Applied::Applied
        );
        let before = r.cards()[&sku("A")].clone();
        assert_eq!(
            r.apply(&policy, &stock("A", dec!(5), 2, 3)),
            Applied::Duplicate
        );
        assert_eq!(r.apply(&policy, &stock("A", dec!(1), 1, 4)), Applied::Stale);
        assert_eq!(r.cards()[&sku("A")], before);
        assert_eq!(r.states()[&sku("A")].available.get(), dec!(5));
    }
}
