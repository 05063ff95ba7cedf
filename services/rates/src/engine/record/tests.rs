//! The `engine` field round-trips exactly in its binary form, still reads the JSON of
//! earlier releases, and is much smaller. The records are the engine's own: events folded
//! through core exactly as [`Engine`] folds them (state, compute, next recompute,
//! publication), only without the bus.

use std::collections::BTreeSet;
use std::sync::Arc;

use chrono::{DateTime, TimeDelta, TimeZone, Utc};
use proptest::prelude::*;
use ratemesh_bus::{Bus, BusOptions};
use ratemesh_core::incentive::Incentive;
use ratemesh_core::{
    Applied, CloseReason, Event, Money, Override, OverrideKind, OverrideScope, Policy, Product,
    Quantity, Rate, Reason, ReasonCode, Sku, Velocity,
};
use rust_decimal::Decimal;
use rust_decimal_macros::dec;

use super::*;
use crate::engine::{Engine, EngineOptions};

const SKU: &str = "SKU-104729";

/// The core tests' policy: short hold, two-point steps, a floor, a cap, a margin guard
/// and a peak window, so short scripts reach every rule.
const POLICY: &str = r#"
[program]
mode = "direct"
[network]
notice_hours = 24
max_cut = "0.20"
cut_period_days = 30
boost_hours = 72
[[peak_windows]]
name = "bfcm"
start = "2025-11-27"
end = "2025-12-02"
bands = [
    { name = "scarce", max_days = "1", multiplier = "0.5" },
    { name = "normal", max_days = "10", multiplier = "1" },
    { name = "overstock", multiplier = "2" },
]
[defaults]
base_rate = "0.10"
bands = [
    { name = "scarce", max_days = "3", multiplier = "0.5" },
    { name = "normal", max_days = "60", multiplier = "1" },
    { name = "overstock", add = "0.05" },
]
hysteresis = "0.1"
max_step = "0.02"
min_hold_minutes = 60
floor = "0.02"
cap = "0.20"
margin_share = "0.5"
"#;

fn policy(mode: &str) -> Policy {
    Policy::from_toml_str(&POLICY.replace("mode = \"direct\"", &format!("mode = \"{mode}\"")))
        .unwrap()
}

fn engine(policy: Policy) -> Engine {
    let bus = Bus::memory(BusOptions::default()).unwrap();
    Engine::new(bus, Arc::new(policy), EngineOptions::default())
}

fn sku() -> Sku {
    Sku::new(SKU).unwrap()
}

/// 1 June 2025 plus `minutes`, with a millisecond part as ERP stamps have.
fn t(minutes: i64) -> DateTime<Utc> {
    Utc.with_ymd_and_hms(2025, 6, 1, 0, 0, 0).unwrap()
        + TimeDelta::minutes(minutes)
        + TimeDelta::milliseconds(minutes % 997)
}

fn rate(d: Decimal) -> Rate {
    Rate::new(d).unwrap()
}

fn q(d: Decimal) -> Quantity {
    Quantity::new(d).unwrap()
}

/// A SKU's record and the events folded into it, one record kept after every event.
struct Script {
    engine: Engine,
    record: EngineRecord,
    sequence: u64,
    records: Vec<EngineRecord>,
}

impl Script {
    fn new(policy: Policy) -> Self {
        let engine = engine(policy);
        let record = EngineRecord::new(sku(), engine.policy());
        Self {
            engine,
            record,
            sequence: 0,
            records: Vec::new(),
        }
    }

    /// Folds `event` as [`Engine`] does: apply, recompute, next recompute, publication.
    fn fold(&mut self, event: Event) -> &mut Self {
        let record = &mut self.record;
        if record.state.apply(&event) == Applied::Applied {
            self.engine.recompute_in(record, &[], event.priced_at());
            record.next_recompute = record.card.as_ref().and_then(|card| {
                ratemesh_core::timers::next_recompute(self.engine.policy(), &record.state, card)
            });
            if let Some((published, _)) = self.engine.publication(record, &[]) {
                record.published = Some(published);
            }
        }
        self.records.push(record.clone());
        self
    }

    fn stock(&mut self, location: &str, on_hand: Decimal, at: DateTime<Utc>) -> &mut Self {
        self.stock_with(location, on_hand, Decimal::ZERO, Some(dec!(10)), at)
    }

    fn stock_with(
        &mut self,
        location: &str,
        on_hand: Decimal,
        reserved: Decimal,
        erp_velocity: Option<Decimal>,
        at: DateTime<Utc>,
    ) -> &mut Self {
        self.sequence += 1;
        self.fold(Event::StockObserved {
            sku: sku(),
            location: location.into(),
            on_hand: q(on_hand),
            reserved: q(reserved),
            sequence: self.sequence,
            as_of: at - TimeDelta::milliseconds(250),
            erp_velocity: erp_velocity.map(|v| Velocity::new(v).unwrap()),
            received_at: Some(at),
        })
    }

    fn product(
        &mut self,
        base_rate: Option<Decimal>,
        cost: Decimal,
        at: DateTime<Utc>,
    ) -> &mut Self {
        self.fold(Event::ProductUpserted {
            sku: sku(),
            product: Product {
                category: "home".into(),
                price: Money::new(dec!(100.00)).unwrap(),
                unit_cost: Money::new(cost).unwrap(),
                base_rate: base_rate.map(rate),
            },
            at,
            received_at: Some(at + TimeDelta::milliseconds(3)),
        })
    }

    fn set_override(
        &mut self,
        id: &str,
        kind: OverrideKind,
        ends_at: Option<DateTime<Utc>>,
        at: DateTime<Utc>,
    ) -> &mut Self {
        self.fold(Event::OverrideSet {
            value: Override {
                id: id.into(),
                scope: OverrideScope::Sku(sku()),
                kind,
                starts_at: at,
                ends_at,
                reason: "clearance".into(),
                author: "merch@example.com".into(),
            },
            at,
        })
    }

    fn clear_override(&mut self, id: &str, at: DateTime<Utc>) -> &mut Self {
        self.fold(Event::OverrideCleared {
            id: id.into(),
            scope: OverrideScope::Sku(sku()),
            at,
        })
    }

    fn open_incentive(&mut self, id: &str, at: DateTime<Utc>) -> &mut Self {
        self.fold(Event::IncentiveOpened {
            incentive: incentive(id, at),
            at,
        })
    }

    fn close_incentive(&mut self, id: &str, at: DateTime<Utc>) -> &mut Self {
        self.fold(Event::IncentiveClosed {
            sku: sku(),
            id: id.into(),
            reason: CloseReason::Expired,
            at,
        })
    }

    fn tick(&mut self, at: DateTime<Utc>) -> &mut Self {
        self.fold(Event::Tick {
            at,
            sku: Some(sku()),
        })
    }
}

fn incentive(id: &str, at: DateTime<Utc>) -> Incentive {
    Incentive {
        id: id.into(),
        sku: sku(),
        category: "home".into(),
        bonus: rate(dec!(0.020)),
        opened_at: at,
        ends_at: at + TimeDelta::hours(48),
        extensions: 1,
        budget_spend: Money::new(dec!(1000)).unwrap(),
        budget_units: q(dec!(300)),
        spent: Money::new(dec!(12.5)).unwrap(),
        units_sold: q(dec!(3)),
        cancel_requested: false,
        manual: true,
    }
}

/// Scripts that between them reach every reason, both modes, several locations,
/// overrides of every kind, an incentive, held and damped cards and an announced cut.
fn scripted_records() -> Vec<EngineRecord> {
    let mut out = Vec::new();

    // Direct mode: stock before product data, two locations, bands, damping and holds.
    let mut s = Script::new(policy("direct"));
    s.stock_with("", dec!(0), dec!(0), None, t(0)) // no product data
        .product(None, dec!(50), t(1)) // out of stock
        .stock_with("dc-east", dec!(40.5), dec!(2), None, t(2)) // no velocity data
        .stock("dc-west", dec!(0.5), t(3)) // scarce: low cover
        .stock("dc-east", dec!(2000), t(4)) // overstock: damped or held
        .tick(t(30))
        .tick(t(130))
        .tick(t(260))
        .stock_with("dc-east", dec!(1900), dec!(0), None, t(24 * 60)); // estimate kicks in
    // Peak window.
    let peak = Utc.with_ymd_and_hms(2025, 11, 28, 9, 30, 0).unwrap();
    s.stock("dc-west", dec!(5), peak)
        .tick(peak + TimeDelta::hours(3));
    // Overrides: multiplier, floor and cap together; then a pin; then an exclude.
    let o = peak + TimeDelta::days(10);
    s.set_override(
        "ov-mult",
        OverrideKind::Multiplier { factor: dec!(1.50) },
        Some(o + TimeDelta::days(1)),
        o,
    )
    .set_override(
        "ov-floor",
        OverrideKind::Floor {
            rate: rate(dec!(0.180)),
        },
        None,
        o + TimeDelta::seconds(1),
    )
    .set_override(
        "ov-cap",
        OverrideKind::Cap {
            rate: rate(dec!(0.17)),
        },
        None,
        o + TimeDelta::seconds(2),
    )
    .clear_override("ov-mult", o + TimeDelta::seconds(3))
    .set_override(
        "ov-pin",
        OverrideKind::Pin {
            rate: rate(dec!(0.0900)),
        },
        None,
        o + TimeDelta::seconds(4),
    )
    .clear_override("ov-pin", o + TimeDelta::seconds(5))
    .clear_override("ov-floor", o + TimeDelta::seconds(6))
    .clear_override("ov-cap", o + TimeDelta::seconds(7))
    .set_override(
        "ov-ex",
        OverrideKind::Exclude,
        None,
        o + TimeDelta::seconds(8),
    )
    .clear_override("ov-ex", o + TimeDelta::seconds(9))
    // A flash incentive, then closed.
    .open_incentive("inc-1", o + TimeDelta::hours(1))
    .close_incentive("inc-1", o + TimeDelta::hours(5));
    out.append(&mut s.records);

    // One reading without an ERP velocity: no velocity data yet.
    let mut s = Script::new(policy("direct"));
    s.product(None, dec!(50), t(0))
        .stock_with("", dec!(300), dec!(0), None, t(1));
    out.append(&mut s.records);

    // Direct mode guardrails: floor, cap, margin guard.
    let mut s = Script::new(policy("direct"));
    s.stock("", dec!(300), t(0))
        .product(Some(dec!(0.01)), dec!(50), t(1)) // floor
        .product(Some(dec!(0.30)), dec!(50), t(200)) // cap
        .product(None, dec!(95), t(400)); // margin guard
    out.append(&mut s.records);

    // Boost mode: boost, guarantee, lapse, an announced and a limited cut.
    let mut s = Script::new(policy("boost"));
    s.product(None, dec!(50), t(0))
        .stock("", dec!(1000), t(1)) // overstock: boost
        .stock("", dec!(20), t(600)) // scarce: boost guaranteed
        .tick(t(72 * 60 + 2)) // boost lapsed
        .tick(t(74 * 60))
        .product(Some(dec!(0.05)), dec!(50), t(80 * 60)) // base cut scheduled
        .tick(t(105 * 60)) // base cut, limited
        .tick(t(130 * 60));
    out.append(&mut s.records);
    out
}

/// The record encodes to the binary form and decodes to itself exactly, and its JSON (as
/// earlier releases wrote it) decodes to it too. `Decimal`'s `==` ignores the scale
/// (`0.060 == 0.06`), so the decoded record is also compared through its JSON text,
/// which writes every decimal with its scale and every instant to the nanosecond.
fn round_trip(record: &EngineRecord) -> Result<(), TestCaseError> {
    let bytes = record.encode();
    prop_assert_eq!(bytes[0], FORMAT_PROTOBUF);
    let back = EngineRecord::decode(&bytes).map_err(|e| TestCaseError::fail(e.to_string()))?;
    prop_assert_eq!(&back, record);
    let json = serde_json::to_string(record).unwrap();
    prop_assert_eq!(serde_json::to_string(&back).unwrap(), json.as_str());
    prop_assert_eq!(back.encode(), bytes);
    let from_json =
        EngineRecord::decode(json.as_bytes()).map_err(|e| TestCaseError::fail(e.to_string()))?;
    prop_assert_eq!(&from_json, record);
    prop_assert_eq!(serde_json::to_string(&from_json).unwrap(), json);
    Ok(())
}

fn assert_round_trip(record: &EngineRecord) {
    if let Err(e) = round_trip(record) {
        panic!("{e}");
    }
}

#[test]
fn scripted_records_round_trip_exactly_and_cover_every_reason() {
    let records = scripted_records();
    let mut seen: BTreeSet<ReasonCode> = BTreeSet::new();
    for record in &records {
        assert_round_trip(record);
        if let Some(card) = &record.card {
            seen.extend(card.reasons.iter().map(Reason::code));
        }
    }
    let missing: Vec<_> = ReasonCode::ALL
        .iter()
        .filter(|c| !seen.contains(c))
        .collect();
    assert!(missing.is_empty(), "no script reached {missing:?}");

    // And the other shapes the format must carry.
    let any = |f: &dyn Fn(&EngineRecord) -> bool| records.iter().any(f);
    assert!(any(&|r| r.state.stock.len() > 1));
    assert!(any(&|r| r.state.stock.contains_key("")));
    assert!(any(&|r| r.state.overrides.overrides.len() >= 3));
    assert!(any(
        &|r| r.state.overrides.overrides.is_empty() && !r.state.overrides.last_event_at.is_empty()
    ));
    assert!(any(&|r| r.state.incentive.is_some()));
    assert!(any(
        &|r| r.state.incentive.is_none() && r.state.incentive_at.is_some()
    ));
    assert!(any(&|r| r.state.velocity.estimate().is_some()));
    assert!(any(&|r| r
        .card
        .as_ref()
        .is_some_and(|c| c.changed_at != c.computed_at)));
    assert!(any(&|r| r
        .card
        .as_ref()
        .is_some_and(|c| c.state.pending_cut.is_some())));
    assert!(any(&|r| r.card.as_ref().is_some_and(|c| c
        .state
        .base_history
        .len()
        > 1)));
    assert!(any(&|r| r
        .card
        .as_ref()
        .is_some_and(|c| c.guaranteed_until.is_some())));
    assert!(any(&|r| r
        .published
        .as_ref()
        .is_some_and(|p| p.scheduled_cut.is_some())));
    assert!(any(&|r| r
        .published
        .as_ref()
        .is_some_and(|p| p.out_of_stock)));
    assert!(any(&|r| r.next_recompute.is_some()));
}

#[test]
fn decimal_scale_and_nanoseconds_survive() {
    let mut s = Script::new(policy("direct"));
    s.product(Some(dec!(0.060)), dec!(50.00), t(0));
    let at = Utc.timestamp_opt(1_764_322_200, 123_456_789).unwrap();
    s.stock_with("", dec!(12.500), dec!(0.0), Some(dec!(2.50)), at);
    let record = s.record.clone();
    let back = EngineRecord::decode(&record.encode()).unwrap();
    let product = back.state.product.as_ref().unwrap();
    assert_eq!(product.base_rate.unwrap().get().to_string(), "0.060");
    assert_eq!(product.unit_cost.get().to_string(), "50.00");
    assert_eq!(back.state.stock[""].on_hand.get().to_string(), "12.500");
    assert_eq!(back.state.stock[""].reserved.get().to_string(), "0.0");
    assert_eq!(back.card.as_ref().unwrap().computed_at, at);
    assert_eq!(
        back.card
            .as_ref()
            .unwrap()
            .computed_at
            .timestamp_subsec_nanos(),
        123_456_789
    );
    assert_round_trip(&record);
}

#[test]
fn unknown_fields_are_skipped_and_unknown_formats_refused() {
    let mut s = Script::new(policy("direct"));
    s.product(None, dec!(50), t(0)).stock("", dec!(100), t(1));
    let record = s.record.clone();
    // A later release adds field 15 (a varint) to the top message.
    let mut bytes = record.encode();
    bytes.extend_from_slice(&[15 << 3, 42]);
    assert_eq!(EngineRecord::decode(&bytes).unwrap(), record);

    assert!(matches!(
        EngineRecord::decode(&[0x02, 0x0a, 0x00]),
        Err(RecordError::UnknownFormat(0x02))
    ));
    assert!(matches!(EngineRecord::decode(&[]), Err(RecordError::Empty)));
    assert!(matches!(
        EngineRecord::decode(&[FORMAT_PROTOBUF, 0x0a, 0x05]),
        Err(RecordError::Protobuf(_))
    ));
    // A record without its state is refused with the field's name.
    let err = EngineRecord::decode(&[FORMAT_PROTOBUF]).unwrap_err();
    assert_eq!(err.to_string(), "state: missing");
}

/// One location, product data, a velocity estimate and a published card: what most SKUs
/// hold during a sale.
fn typical_record() -> EngineRecord {
    let mut s = Script::new(Policy::example().off_peak().unwrap());
    let start = Utc.with_ymd_and_hms(2025, 11, 20, 14, 0, 0).unwrap();
    s.product(None, dec!(39.90), start);
    let mut on_hand = dec!(640);
    for i in 1..=12 {
        on_hand -= Decimal::from(3 + i % 4);
        s.stock_with(
            "",
            on_hand,
            dec!(4),
            None,
            start + TimeDelta::minutes(15 * i) + TimeDelta::milliseconds(i * 37),
        );
    }
    s.record.clone()
}

#[test]
fn the_binary_form_of_a_typical_record_is_at_most_a_third_of_its_json() {
    let record = typical_record();
    assert!(record.state.velocity.velocity().is_some());
    assert!(record.published.is_some());
    assert_eq!(record.state.stock.len(), 1);
    assert_round_trip(&record);
    let json = serde_json::to_vec(&record).unwrap().len();
    let binary = record.encode().len();
    println!("typical engine record: json {json} bytes, binary {binary} bytes");
    assert!(
        binary * 3 <= json,
        "binary {binary} bytes is more than a third of json {json} bytes"
    );
}

/// One step of a random history.
#[derive(Debug, Clone)]
enum Step {
    Stock {
        location: u8,
        on_hand: u32,
        reserved: u32,
        erp: Option<u32>,
    },
    Product {
        base_rate_bp: Option<u16>,
        cost: u32,
    },
    SetOverride {
        id: u8,
        kind: u8,
        value_bp: u16,
        starts_in: i64,
        lasts: Option<i64>,
    },
    ClearOverride {
        id: u8,
    },
    OpenIncentive {
        bonus_bp: u16,
        hours: i64,
    },
    CloseIncentive,
    Tick,
}

fn step() -> impl Strategy<Value = Step> {
    prop_oneof![
        4 => (0u8..3, 0u32..3_000, 0u32..40, proptest::option::of(0u32..50)).prop_map(
            |(location, on_hand, reserved, erp)| Step::Stock { location, on_hand, reserved, erp }
        ),
        1 => (proptest::option::of(0u16..3_000), 0u32..120)
            .prop_map(|(base_rate_bp, cost)| Step::Product { base_rate_bp, cost }),
        1 => (0u8..3, 0u8..5, 0u16..=10_000, -120i64..600, proptest::option::of(1i64..2_000))
            .prop_map(|(id, kind, value_bp, starts_in, lasts)| Step::SetOverride {
                id, kind, value_bp, starts_in, lasts
            }),
        1 => (0u8..3).prop_map(|id| Step::ClearOverride { id }),
        1 => (0u16..500, 1i64..96).prop_map(|(bonus_bp, hours)| Step::OpenIncentive { bonus_bp, hours }),
        1 => Just(Step::CloseIncentive),
        1 => Just(Step::Tick),
    ]
}

/// Folds `steps` (each `gap` minutes after the last) from `start` and returns every
/// record on the way.
fn run(mode: &str, start: DateTime<Utc>, steps: &[(Step, i64)]) -> Vec<EngineRecord> {
    let mut s = Script::new(policy(mode));
    let mut now = start;
    for (step, gap) in steps {
        now += TimeDelta::minutes(*gap) + TimeDelta::nanoseconds(*gap * 1_001);
        match step {
            Step::Stock {
                location,
                on_hand,
                reserved,
                erp,
            } => {
                let location = ["", "dc-east", "store-0042"][usize::from(*location)];
                s.stock_with(
                    location,
                    Decimal::from(*on_hand),
                    Decimal::new(i64::from(*reserved), 1),
                    erp.map(|v| Decimal::new(i64::from(v), 1)),
                    now,
                );
            }
            Step::Product { base_rate_bp, cost } => {
                let base = base_rate_bp.map(|bp| Decimal::new(i64::from(bp), 4));
                s.product(base, Decimal::from(*cost), now);
            }
            Step::SetOverride {
                id,
                kind,
                value_bp,
                starts_in,
                lasts,
            } => {
                let value = Decimal::new(i64::from(*value_bp), 4);
                let kind = match kind {
                    0 => OverrideKind::Pin { rate: rate(value) },
                    1 => OverrideKind::Floor { rate: rate(value) },
                    2 => OverrideKind::Cap { rate: rate(value) },
                    3 => OverrideKind::Multiplier {
                        factor: value * Decimal::TWO,
                    },
                    _ => OverrideKind::Exclude,
                };
                let starts_at = now + TimeDelta::minutes(*starts_in);
                s.fold(Event::OverrideSet {
                    value: Override {
                        id: format!("ov-{id}"),
                        scope: OverrideScope::Sku(sku()),
                        kind,
                        starts_at,
                        ends_at: lasts.map(|m| starts_at + TimeDelta::minutes(m)),
                        reason: "test".into(),
                        author: "prop".into(),
                    },
                    at: now,
                });
            }
            Step::ClearOverride { id } => {
                s.clear_override(&format!("ov-{id}"), now);
            }
            Step::OpenIncentive { bonus_bp, hours } => {
                let mut inc = incentive("inc", now);
                inc.bonus = rate(Decimal::new(i64::from(*bonus_bp), 4));
                inc.ends_at = now + TimeDelta::hours(*hours);
                s.fold(Event::IncentiveOpened {
                    incentive: inc,
                    at: now,
                });
            }
            Step::CloseIncentive => {
                s.close_incentive("inc", now);
            }
            Step::Tick => {
                s.tick(now);
            }
        }
    }
    s.records
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(96))]

    /// Every record of a random history, in either mode and in or out of a peak window,
    /// round-trips exactly, and its JSON still decodes to it.
    #[test]
    fn every_folded_record_round_trips(
        boost in any::<bool>(),
        in_peak in any::<bool>(),
        steps in proptest::collection::vec((step(), 0i64..400), 1..40),
    ) {
        let start = if in_peak {
            Utc.with_ymd_and_hms(2025, 11, 27, 6, 0, 0).unwrap()
        } else {
            t(0)
        };
        for record in run(if boost { "boost" } else { "direct" }, start, &steps) {
            round_trip(&record)?;
        }
    }
}
