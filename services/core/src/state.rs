//! Per-SKU state and the events folded into it. The rates service and [`crate::replay()`]
//! fold events through exactly this code, so the service's state and the offline oracle
//! cannot drift apart.
//!
//! Every fold is monotonic and idempotent:
//! - stock per (SKU, location) is ordered by the ERP `sequence`: an older sequence never
//!   overwrites a newer one (`Stale`), the same sequence again is a no-op (`Duplicate`);
//! - product data, overrides and incentives are ordered by the time of their event; an
//!   older event is `Stale`, an identical one `Duplicate`. Two *different* events with
//!   the same time for the same thing keep the first one applied.
//!
//! So the stock state converges for any delivery order that contains the same events.
//! What depends on arrival order is what is path-dependent by design: the velocity
//! estimate (it only folds observations newer than the newest seen), and — in the rate
//! card — damping, hold times, hysteresis and the boost guarantee.

use std::collections::BTreeMap;

use chrono::{DateTime, Utc};
use rust_decimal::Decimal;
use serde::{Deserialize, Serialize};

use crate::compute::RateInputs;
use crate::incentive::{CloseReason, Incentive};
use crate::overrides::{Override, OverrideScope};
use crate::policy::VelocitySettings;
use crate::product::Product;
use crate::types::{Quantity, Sku, Velocity};
use crate::velocity::VelocityEstimator;

/// Something that happened. [`Event::priced_at`] is the `now` a computation after it uses;
/// the ERP's own times (`as_of`) only order readings and feed the velocity estimate.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum Event {
    /// The ERP reported a stock level at one location.
    StockObserved {
        /// The SKU.
        sku: Sku,
        /// Location; empty for the SKU's only (default) location.
        #[serde(default)]
        location: String,
        /// Units on hand.
        on_hand: Quantity,
        /// Units reserved for open orders.
        #[serde(default)]
        reserved: Quantity,
        /// The ERP's sequence number, increasing per SKU (and location).
        sequence: u64,
        /// When the ERP observed the level.
        as_of: DateTime<Utc>,
        /// The ERP's own sales velocity, if it sends one.
        #[serde(default)]
        erp_velocity: Option<Velocity>,
        /// When ratemesh accepted the reading (ingest's stamp in the stream entry); the
        /// card computed after it is priced at this instant, not at `as_of`.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        received_at: Option<DateTime<Utc>>,
    },
    /// Product master data was created or changed.
    ProductUpserted {
        /// The SKU.
        sku: Sku,
        /// The new data.
        product: Product,
        /// When it changed (the ERP's `as_of`, else when it was accepted): orders product
        /// versions.
        at: DateTime<Utc>,
        /// When ratemesh accepted it (ingest's stamp); the card computed after it is
        /// priced at this instant.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        received_at: Option<DateTime<Utc>>,
    },
    /// A merchandiser set (or replaced, by id) an override.
    OverrideSet {
        /// The override.
        #[serde(rename = "override")]
        value: Override,
        /// When it was set.
        at: DateTime<Utc>,
    },
    /// A merchandiser removed an override.
    OverrideCleared {
        /// Its id.
        id: String,
        /// Its scope (to route the event).
        scope: OverrideScope,
        /// When it was cleared.
        at: DateTime<Utc>,
    },
    /// A flash incentive opened.
    IncentiveOpened {
        /// The incentive.
        incentive: Incentive,
        /// When.
        at: DateTime<Utc>,
    },
    /// A flash incentive was extended, cancelled or its accounting changed.
    IncentiveChanged {
        /// The incentive as it now stands.
        incentive: Incentive,
        /// When.
        at: DateTime<Utc>,
    },
    /// A flash incentive closed.
    IncentiveClosed {
        /// The SKU.
        sku: Sku,
        /// Incentive id.
        id: String,
        /// Why.
        reason: CloseReason,
        /// When.
        at: DateTime<Utc>,
    },
    /// Time passed: recompute one SKU, or every SKU when `sku` is absent.
    Tick {
        /// When.
        at: DateTime<Utc>,
        /// The SKU, or all.
        #[serde(default)]
        sku: Option<Sku>,
    },
}

impl Event {
    /// The instant a computation after this event is priced at: when ratemesh received
    /// a stock reading or product (so a count taken before a peak window opened but
    /// delivered after is priced in the window), the time of an override or incentive
    /// change, a tick's due time. Events from before ingest stamped its entries fall back
    /// to their own time.
    pub fn priced_at(&self) -> DateTime<Utc> {
        match self {
            Event::StockObserved {
                as_of, received_at, ..
            } => received_at.unwrap_or(*as_of),
            Event::ProductUpserted {
                at, received_at, ..
            } => received_at.unwrap_or(*at),
            Event::OverrideSet { at, .. }
            | Event::OverrideCleared { at, .. }
            | Event::IncentiveOpened { at, .. }
            | Event::IncentiveChanged { at, .. }
            | Event::IncentiveClosed { at, .. }
            | Event::Tick { at, .. } => *at,
        }
    }

    /// The one SKU the event concerns; `None` for category overrides and ticks for all.
    pub fn sku(&self) -> Option<&Sku> {
        match self {
            Event::StockObserved { sku, .. }
            | Event::ProductUpserted { sku, .. }
            | Event::IncentiveClosed { sku, .. } => Some(sku),
            Event::OverrideSet { value, .. } => match &value.scope {
                OverrideScope::Sku(s) => Some(s),
                OverrideScope::Category(_) => None,
            },
            Event::OverrideCleared { scope, .. } => match scope {
                OverrideScope::Sku(s) => Some(s),
                OverrideScope::Category(_) => None,
            },
            Event::IncentiveOpened { incentive, .. }
            | Event::IncentiveChanged { incentive, .. } => Some(&incentive.sku),
            Event::Tick { sku, .. } => sku.as_ref(),
        }
    }
}

/// What folding an event did.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Applied {
    /// The state changed (or, for a tick, time advanced): recompute the card.
    Applied,
    /// Older than what the state already holds; ignored.
    Stale,
    /// Already applied; ignored.
    Duplicate,
    /// The event concerns another SKU (or a category); ignored.
    NotForThisSku,
}

/// The latest stock level at one location.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct StockLevel {
    /// Units on hand.
    pub on_hand: Quantity,
    /// Units reserved.
    pub reserved: Quantity,
    /// ERP sequence of this level.
    pub sequence: u64,
    /// When the ERP observed it.
    pub as_of: DateTime<Utc>,
}

impl StockLevel {
    /// `max(on_hand − reserved, 0)`.
    pub fn available(&self) -> Decimal {
        (self.on_hand.get() - self.reserved.get()).max(Decimal::ZERO)
    }
}

/// Overrides of one scope folded from set/clear events, remembering the time of the last
/// event per id so that late or repeated deliveries cannot resurrect a cleared override.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct OverrideBook {
    /// Overrides currently set (active or not yet started or already ended).
    pub overrides: Vec<Override>,
    /// Time of the last set or clear event per override id.
    pub last_event_at: BTreeMap<String, DateTime<Utc>>,
}

impl OverrideBook {
    /// Folds a set event.
    pub fn set(&mut self, value: &Override, at: DateTime<Utc>) -> Applied {
        let existing = self.overrides.iter().position(|o| o.id == value.id);
        if let Some(&last) = self.last_event_at.get(&value.id) {
            if at < last {
                return Applied::Stale;
            }
            if at == last {
                return match existing {
                    Some(i) if self.overrides[i] == *value => Applied::Duplicate,
                    _ => Applied::Stale,
                };
            }
        }
        self.last_event_at.insert(value.id.clone(), at);
        match existing {
            Some(i) => self.overrides[i] = value.clone(),
            None => self.overrides.push(value.clone()),
        }
        Applied::Applied
    }

    /// Folds a clear event.
    pub fn clear(&mut self, id: &str, at: DateTime<Utc>) -> Applied {
        let existing = self.overrides.iter().position(|o| o.id == id);
        if let Some(&last) = self.last_event_at.get(id) {
            if at < last {
                return Applied::Stale;
            }
            if at == last {
                return if existing.is_none() {
                    Applied::Duplicate
                } else {
                    Applied::Stale
                };
            }
        }
        self.last_event_at.insert(id.to_owned(), at);
        if let Some(i) = existing {
            self.overrides.remove(i);
        }
        Applied::Applied
    }

    /// Forgets overrides that ended by `now` (their tombstone time stays, so a late set
    /// event for them is still recognised as stale).
    pub fn prune_ended(&mut self, now: DateTime<Utc>) {
        self.overrides.retain(|o| !o.has_ended(now));
    }
}

/// Everything the rates service keeps for one SKU between events.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SkuState {
    /// The SKU.
    pub sku: Sku,
    /// Product master data, once received.
    pub product: Option<Product>,
    /// Time of the product event applied.
    pub product_at: Option<DateTime<Utc>>,
    /// Latest level per location.
    pub stock: BTreeMap<String, StockLevel>,
    /// Σ over locations of `max(on_hand − reserved, 0)`.
    pub available: Quantity,
    /// Sales velocity estimate.
    pub velocity: VelocityEstimator,
    /// SKU-scoped overrides.
    pub overrides: OverrideBook,
    /// The open flash incentive.
    pub incentive: Option<Incentive>,
    /// Time of the last incentive event applied.
    pub incentive_at: Option<DateTime<Utc>>,
    /// Time of the last tick applied; a tick at or before it is a duplicate.
    #[serde(default)]
    pub last_tick_at: Option<DateTime<Utc>>,
}

impl SkuState {
    /// Empty state for `sku`.
    pub fn new(sku: Sku, velocity: &VelocitySettings) -> Self {
        Self {
            sku,
            product: None,
            product_at: None,
            stock: BTreeMap::new(),
            available: Quantity::ZERO,
            velocity: VelocityEstimator::new(velocity),
            overrides: OverrideBook::default(),
            incentive: None,
            incentive_at: None,
            last_tick_at: None,
        }
    }

    /// Folds one event; see the module documentation for the ordering rules.
    pub fn apply(&mut self, event: &Event) -> Applied {
        if event.sku() != Some(&self.sku) {
            return Applied::NotForThisSku;
        }
        match event {
            Event::StockObserved {
                location,
                on_hand,
                reserved,
                sequence,
                as_of,
                erp_velocity,
                ..
            } => {
                if let Some(current) = self.stock.get(location) {
                    if *sequence < current.sequence {
                        return Applied::Stale;
                    }
                    if *sequence == current.sequence {
                        return Applied::Duplicate;
                    }
                }
                self.stock.insert(
                    location.clone(),
                    StockLevel {
                        on_hand: *on_hand,
                        reserved: *reserved,
                        sequence: *sequence,
                        as_of: *as_of,
                    },
                );
                let total: Decimal = self.stock.values().map(StockLevel::available).sum();
                self.available = Quantity::clamped(total);
                self.velocity.observe(*as_of, self.available, *erp_velocity);
                Applied::Applied
            }
            Event::ProductUpserted { product, at, .. } => {
                if let Some(last) = self.product_at {
                    if *at < last {
                        return Applied::Stale;
                    }
                    if *at == last {
                        return if self.product.as_ref() == Some(product) {
                            Applied::Duplicate
                        } else {
                            Applied::Stale
                        };
                    }
                }
                self.product = Some(product.clone());
                self.product_at = Some(*at);
                Applied::Applied
            }
            Event::OverrideSet { value, at } => self.overrides.set(value, *at),
            Event::OverrideCleared { id, at, .. } => self.overrides.clear(id, *at),
            Event::IncentiveOpened { incentive, at }
            | Event::IncentiveChanged { incentive, at } => {
                if let Some(last) = self.incentive_at {
                    if *at < last {
                        return Applied::Stale;
                    }
                    if *at == last {
                        return if self.incentive.as_ref() == Some(incentive) {
                            Applied::Duplicate
                        } else {
                            Applied::Stale
                        };
                    }
                }
                self.incentive = Some(incentive.clone());
                self.incentive_at = Some(*at);
                Applied::Applied
            }
            Event::IncentiveClosed { id, at, .. } => {
                if self.incentive_at.is_some_and(|last| *at < last) {
                    return Applied::Stale;
                }
                if self.incentive.as_ref().is_none_or(|i| &i.id != id) {
                    return Applied::Duplicate;
                }
                self.incentive = None;
                self.incentive_at = Some(*at);
                Applied::Applied
            }
            Event::Tick { at, .. } => {
                if self.last_tick_at.is_some_and(|last| *at <= last) {
                    return Applied::Duplicate;
                }
                self.last_tick_at = Some(*at);
                self.overrides.prune_ended(*at);
                Applied::Applied
            }
        }
    }

    /// The inputs for [`crate::compute()`], with no category overrides.
    pub fn inputs(&self) -> RateInputs<'_> {
        self.inputs_with(&[])
    }

    /// The inputs for [`crate::compute()`] with the program's category-scoped overrides
    /// (those for other categories are ignored by compute).
    pub fn inputs_with<'a>(&'a self, category_overrides: &'a [Override]) -> RateInputs<'a> {
        RateInputs {
            sku: &self.sku,
            product: self.product.as_ref(),
            available: self.available,
            velocity: self.velocity.velocity(),
            overrides: &self.overrides.overrides,
            category_overrides,
            incentive: self.incentive.as_ref(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::incentive::Incentive;
    use crate::overrides::OverrideKind;
    use crate::policy::Policy;
    use crate::types::{Money, Rate};
    use chrono::{TimeDelta, TimeZone};
    use rust_decimal_macros::dec;

    fn t(h: i64) -> DateTime<Utc> {
        Utc.with_ymd_and_hms(2025, 2, 1, 0, 0, 0).unwrap() + TimeDelta::hours(h)
    }
    fn sku() -> Sku {
        Sku::new("S-1").unwrap()
    }
    fn q(d: Decimal) -> Quantity {
        Quantity::new(d).unwrap()
    }
    fn stock(loc: &str, on_hand: Decimal, reserved: Decimal, seq: u64, h: i64) -> Event {
        Event::StockObserved {
            sku: sku(),
            location: loc.into(),
            on_hand: q(on_hand),
            reserved: q(reserved),
            sequence: seq,
            as_of: t(h),
            erp_velocity: None,
            received_at: None,
        }
    }
    fn state() -> SkuState {
        SkuState::new(sku(), &Policy::builtin().velocity)
    }

    #[test]
    fn stock_is_monotonic_per_location_and_aggregated() {
        let mut s = state();
        assert_eq!(
            s.apply(&stock("A", dec!(10), dec!(2), 5, 0)),
            Applied::Applied
        );
        assert_eq!(
            s.apply(&stock("B", dec!(3), dec!(5), 1, 0)),
            Applied::Applied
        );
        // B contributes max(3 - 5, 0) = 0
        assert_eq!(s.available.get(), dec!(8));
        assert_eq!(s.apply(&stock("A", dec!(1), dec!(0), 4, 1)), Applied::Stale);
        assert_eq!(
            s.apply(&stock("A", dec!(1), dec!(0), 5, 1)),
            Applied::Duplicate
        );
        assert_eq!(s.available.get(), dec!(8));
        assert_eq!(
            s.apply(&stock("A", dec!(6), dec!(0), 6, 24)),
            Applied::Applied
        );
        assert_eq!(s.available.get(), dec!(6));
        assert_eq!(s.inputs().velocity.map(Velocity::get), Some(dec!(2)));
    }

    #[test]
    fn events_for_other_skus_are_ignored() {
        let mut s = state();
        let other = Event::Tick {
            at: t(0),
            sku: Some(Sku::new("OTHER").unwrap()),
        };
        assert_eq!(s.apply(&other), Applied::NotForThisSku);
        assert_eq!(
            s.apply(&Event::Tick {
                at: t(0),
                sku: None
            }),
            Applied::NotForThisSku
        );
    }

    #[test]
    fn product_overrides_and_incentives_are_ordered_by_time() {
        let mut s = state();
        let p = |price: Decimal| Product {
            category: "home".into(),
            price: Money::new(price).unwrap(),
            unit_cost: Money::new(dec!(1)).unwrap(),
            base_rate: None,
        };
        let up = |price, h| Event::ProductUpserted {
            sku: sku(),
            product: p(price),
            at: t(h),
            received_at: None,
        };
        assert_eq!(s.apply(&up(dec!(10), 5)), Applied::Applied);
        assert_eq!(s.apply(&up(dec!(10), 5)), Applied::Duplicate);
        assert_eq!(s.apply(&up(dec!(9), 4)), Applied::Stale);
        assert_eq!(s.product.as_ref().unwrap().price.get(), dec!(10));

        let o = Override {
            id: "o1".into(),
            scope: OverrideScope::Sku(sku()),
            kind: OverrideKind::Pin {
                rate: Rate::new(dec!(0.1)).unwrap(),
            },
            starts_at: t(0),
            ends_at: Some(t(10)),
            reason: "launch".into(),
            author: "ann".into(),
        };
        let set = Event::OverrideSet {
            value: o.clone(),
            at: t(1),
        };
        let clear = Event::OverrideCleared {
            id: "o1".into(),
            scope: OverrideScope::Sku(sku()),
            at: t(2),
        };
        assert_eq!(s.apply(&set), Applied::Applied);
        assert_eq!(s.apply(&set), Applied::Duplicate);
        assert_eq!(s.apply(&clear), Applied::Applied);
        assert_eq!(s.apply(&clear), Applied::Duplicate);
        // a late redelivery of the set does not resurrect it
        assert_eq!(s.apply(&set), Applied::Stale);
        assert!(s.overrides.overrides.is_empty());

        let inc = Incentive::open(
            "i1".into(),
            sku(),
            "home".into(),
            &Policy::builtin().default_category().flash,
            t(3),
        );
        let opened = Event::IncentiveOpened {
            incentive: inc.clone(),
            at: t(3),
        };
        let closed = Event::IncentiveClosed {
            sku: sku(),
            id: "i1".into(),
            reason: crate::incentive::CloseReason::Expired,
            at: t(4),
        };
        assert_eq!(s.apply(&opened), Applied::Applied);
        assert_eq!(s.inputs().incentive, Some(&inc));
        assert_eq!(s.apply(&closed), Applied::Applied);
        assert_eq!(s.apply(&opened), Applied::Stale);
        assert_eq!(s.apply(&closed), Applied::Duplicate);
        assert_eq!(s.incentive, None);
    }

    #[test]
    fn ticks_forget_ended_overrides() {
        let mut s = state();
        let o = Override {
            id: "o1".into(),
            scope: OverrideScope::Sku(sku()),
            kind: OverrideKind::Exclude,
            starts_at: t(0),
            ends_at: Some(t(10)),
            reason: "recall".into(),
            author: "bo".into(),
        };
        s.apply(&Event::OverrideSet { value: o, at: t(0) });
        s.apply(&Event::Tick {
            at: t(9),
            sku: Some(sku()),
        });
        assert_eq!(s.overrides.overrides.len(), 1);
        let tick = Event::Tick {
            at: t(10),
            sku: Some(sku()),
        };
        assert_eq!(s.apply(&tick), Applied::Applied);
        assert!(s.overrides.overrides.is_empty());
        assert_eq!(s.apply(&tick), Applied::Duplicate);
    }

    #[test]
    fn state_and_events_round_trip_as_json() {
        let mut s = state();
        let e = stock("", dec!(10), dec!(0), 1, 0);
        s.apply(&e);
        let json = serde_json::to_string(&s).unwrap();
        assert_eq!(serde_json::from_str::<SkuState>(&json).unwrap(), s);
        let json = serde_json::to_string(&e).unwrap();
        assert!(json.contains("\"type\":\"stock_observed\""), "{json}");
        assert_eq!(serde_json::from_str::<Event>(&json).unwrap(), e);
        let minimal = r#"{"type":"stock_observed","sku":"S-1","on_hand":"5","sequence":3,"as_of":"2025-02-01T00:00:00Z"}"#;
        let parsed: Event = serde_json::from_str(minimal).unwrap();
        assert_eq!(parsed, stock("", dec!(5), dec!(0), 3, 0));
        let bad = r#"{"type":"stock_observed","sku":"S 1","on_hand":"5","sequence":3,"as_of":"2025-02-01T00:00:00Z"}"#;
        assert!(
            serde_json::from_str::<Event>(bad)
                .unwrap_err()
                .to_string()
                .contains("sku: character")
        );
    }
}
