//! The `record` field round-trips exactly in its binary form, still reads the JSON of
//! earlier releases, and is much smaller. The records are the service's own: stock and
//! product events folded into the view, and incentives opened, booked, extended and
//! closed through core exactly as the engine does it, only without the bus.

use chrono::{DateTime, TimeDelta, TimeZone, Utc};
use proptest::prelude::*;
use prost::Message as _;
use ratemesh_core::{
    Applied, CloseReason, DaysOfCover, Decision, Event, Incentive, IncentiveInputs, Money, Policy,
    Product, Quantity, Rate, Sku, Velocity, decide,
};
use rust_decimal::Decimal;
use rust_decimal_macros::dec;

use super::*;

const SKU: &str = "SKU-104729";

/// Overstock at 100 days of cover, 48 h windows with one extension, budgets of 50 and
/// 40 units, a 24 h cooldown.
const POLICY: &str = r#"
[defaults]
base_rate = "0.05"
cap = "0.20"
margin_share = "0.50"

[defaults.flash]
enabled = true
min_cover_days = "100"
exit_cover_days = "30"
bonus = "0.02"
duration_hours = 48
budget_spend = "50"
budget_units = "40"
cooldown_hours = 24
max_extensions = 1
max_concurrent = 2
"#;

fn policy() -> Policy {
    Policy::from_toml_str(POLICY).unwrap()
}

fn sku() -> Sku {
    Sku::new(SKU).unwrap()
}

/// 20 November 2025 plus `minutes`, with a millisecond and a nanosecond part.
fn t(minutes: i64) -> DateTime<Utc> {
    Utc.with_ymd_and_hms(2025, 11, 20, 14, 0, 0).unwrap()
        + TimeDelta::minutes(minutes)
        + TimeDelta::milliseconds(minutes % 997)
        + TimeDelta::nanoseconds(minutes % 13)
}

/// A SKU's record as the engine keeps it, one record kept after every step.
struct Script {
    policy: Policy,
    record: SkuRecord,
    sequence: u64,
    ids: u32,
    records: Vec<SkuRecord>,
}

impl Script {
    fn new() -> Self {
        let policy = policy();
        let record = SkuRecord::new(sku(), &policy);
        Self {
            policy,
            record,
            sequence: 0,
            ids: 0,
            records: Vec::new(),
        }
    }

    fn product(&mut self, price: Decimal, at: DateTime<Utc>) -> &mut Self {
        self.record.view.apply(&Event::ProductUpserted {
            sku: sku(),
            product: Product {
                category: "home".into(),
                price: Money::new(price).unwrap(),
                unit_cost: Money::new(price / dec!(2)).unwrap(),
                base_rate: None,
            },
            at,
            received_at: Some(at + TimeDelta::milliseconds(3)),
        });
        self.decide(at)
    }

    /// A stock reading, folded as the engine folds it: the report interval, the sale
    /// booked against an active incentive (at the full bonus), then the decision.
    fn stock(&mut self, on_hand: Decimal, erp: Option<Decimal>, at: DateTime<Utc>) -> &mut Self {
        self.sequence += 1;
        let rec = &mut self.record;
        let before = rec.view.available;
        let reported = rec.view.stock.values().map(|l| l.as_of).max();
        let as_of = at - TimeDelta::milliseconds(250);
        let event = Event::StockObserved {
            sku: sku(),
            location: String::new(),
            on_hand: Quantity::new(on_hand).unwrap(),
            reserved: Quantity::new(dec!(2)).unwrap(),
            sequence: self.sequence,
            as_of,
            erp_velocity: erp.map(|v| Velocity::new(v).unwrap()),
            received_at: Some(at),
        };
        if rec.view.apply(&event) == Applied::Applied {
            if let Some(last) = reported
                && as_of > last
            {
                rec.report_interval_secs = Some((as_of - last).num_seconds());
            }
            let price = rec.view.product.as_ref().map(|p| p.price);
            let after = rec.view.available;
            if let (Some(inc), Some(price)) = (rec.track.active.as_mut(), price)
                && as_of >= inc.opened_at
                && let Ok(sold) = Quantity::new(before.get() - after.get())
                && sold > Quantity::ZERO
            {
                let paid = inc.bonus;
                inc.record_sale(sold, price, paid);
            }
        }
        self.decide(at)
    }

    fn rules(&self) -> ratemesh_core::policy::flash::FlashRules {
        let mut rules = self.policy.category(self.record.category()).flash.clone();
        if self
            .record
            .meta
            .as_ref()
            .is_some_and(|m| m.origin == Origin::Manual)
        {
            rules.max_extensions = 0;
            rules.exit_cover = DaysOfCover::ZERO;
        }
        rules
    }

    /// Decides at `now` and acts as the engine does: opens (automatic), extends, closes.
    fn decide(&mut self, now: DateTime<Utc>) -> &mut Self {
        let rules = self.rules();
        let rec = &self.record;
        let inputs = IncentiveInputs {
            available: rec.view.available,
            velocity: rec.view.velocity.velocity(),
            price: rec.view.product.as_ref().map(|p| p.price),
            report_interval: rec.report_interval_secs.map(TimeDelta::seconds),
        };
        let decision = decide(&rec.track, &rules, &inputs, now);
        match decision {
            Decision::Open { cover, .. } => {
                self.ids += 1;
                let id = format!("01JD{:022}", self.ids);
                let category = self.record.category().to_owned();
                let rec = &mut self.record;
                rec.track
                    .apply(&decision, &sku(), &category, &rules, || id, now)
                    .unwrap();
                rec.meta = Some(Meta {
                    origin: Origin::Automatic,
                    opened_by: format!("overstock-{category}"),
                    reason: format!("overstock: {} days of cover", cover.get().round_dp(1)),
                    days_of_cover_at_open: Some(cover.get()),
                    budget_spend: Some(rules.budget_spend.get()),
                    budget_units: Some(rules.budget_units.get()),
                });
            }
            Decision::Extend { .. } => {
                let category = self.record.category().to_owned();
                self.record
                    .track
                    .apply(&decision, &sku(), &category, &rules, String::new, now)
                    .unwrap();
            }
            Decision::Close { reason } => self.close(reason, now, "", ""),
            Decision::Nothing { .. } => {}
        }
        self.records.push(self.record.clone());
        self
    }

    fn close(&mut self, reason: CloseReason, now: DateTime<Utc>, by: &str, why: &str) {
        let rules = self.rules();
        let category = self.record.category().to_owned();
        let rec = &mut self.record;
        let meta = rec.meta.take().unwrap();
        let incentive = rec
            .track
            .apply(
                &Decision::Close { reason },
                &sku(),
                &category,
                &rules,
                String::new,
                now,
            )
            .unwrap();
        rec.last_ended = Some(Ended {
            incentive,
            meta,
            end: End {
                reason,
                at: now,
                by: by.into(),
                cancel_reason: why.into(),
            },
        });
    }

    /// A merchandiser's incentive, as `TriggerIncentive` opens it.
    fn trigger(&mut self, budget_units: Option<Decimal>, now: DateTime<Utc>) -> &mut Self {
        self.ids += 1;
        let rec = &mut self.record;
        let unbounded = Decimal::MAX;
        rec.track.active = Some(Incentive {
            id: format!("01JM{:022}", self.ids),
            sku: sku(),
            category: rec.category().to_owned(),
            bonus: Rate::new(dec!(0.035)).unwrap(),
            opened_at: now,
            ends_at: now + TimeDelta::hours(12),
            extensions: 0,
            budget_spend: Money::new(unbounded).unwrap(),
            budget_units: Quantity::new(budget_units.unwrap_or(unbounded)).unwrap(),
            spent: Money::ZERO,
            units_sold: Quantity::ZERO,
            cancel_requested: false,
            manual: true,
        });
        rec.meta = Some(Meta {
            origin: Origin::Manual,
            opened_by: "merch@example.com".into(),
            reason: "clearance ahead of the spring range".into(),
            days_of_cover_at_open: rec
                .view
                .velocity
                .velocity()
                .map(|v| DaysOfCover::from_stock(rec.view.available, v).get()),
            budget_spend: None,
            budget_units,
        });
        self.records.push(self.record.clone());
        self
    }

    /// A merchandiser's cancel of the active incentive.
    fn cancel(&mut self, now: DateTime<Utc>) -> &mut Self {
        self.close(
            CloseReason::Cancelled,
            now,
            "merch@example.com",
            "ran out of display space",
        );
        self.records.push(self.record.clone());
        self
    }
}

/// `record` survives the binary form exactly (compared through JSON text, which shows
/// every decimal's scale: `Decimal ==` ignores it), and its JSON still reads.
fn round_trip(record: &SkuRecord) -> Result<(), TestCaseError> {
    let exact = serde_json::to_string(record).unwrap();
    let bytes = record.encode();
    prop_assert_eq!(bytes[0], FORMAT_PROTOBUF);
    let back = decode_record(&bytes).map_err(|e| TestCaseError::fail(e.to_string()))?;
    prop_assert_eq!(serde_json::to_string(&back).unwrap(), exact.clone());
    prop_assert_eq!(&back, record);
    let from_json =
        decode_record(exact.as_bytes()).map_err(|e| TestCaseError::fail(e.to_string()))?;
    prop_assert_eq!(serde_json::to_string(&from_json).unwrap(), exact);
    Ok(())
}

fn assert_round_trip(record: &SkuRecord) {
    if let Err(e) = round_trip(record) {
        panic!("{e}");
    }
}

/// Product, then readings of an overstocked SKU selling ten units a reading: an
/// incentive opens, books sales, is extended once, closes on its unit budget, and after
/// the cooldown a second one opens and is cancelled; then a merchandiser's one without
/// budgets runs until it expires.
fn lifecycle() -> Script {
    let mut s = Script::new();
    s.product(dec!(19.90), t(0));
    let mut on_hand = dec!(900.0);
    // Slow readings across the first window and its extension.
    for i in 0..10 {
        s.stock(on_hand, Some(dec!(2.5)), t(1 + 600 * i));
        on_hand -= dec!(3.5);
    }
    // Then a sale that reaches the unit budget.
    s.stock(on_hand - dec!(40), Some(dec!(2.5)), t(6_001));
    // After the cooldown, a second incentive, cancelled.
    s.stock(on_hand - dec!(41), Some(dec!(2.5)), t(8_000));
    s.stock(on_hand - dec!(45.25), Some(dec!(2.5)), t(8_100));
    s.cancel(t(8_200));
    // A merchandiser's incentive without budgets (core holds unreachable ones).
    s.trigger(None, t(8_300));
    s.stock(on_hand - dec!(47), Some(dec!(2.5)), t(8_400));
    s.stock(on_hand - dec!(49), Some(dec!(2.5)), t(9_103));
    s
}

#[test]
fn lifecycle_records_round_trip_exactly() {
    let s = lifecycle();
    let records = &s.records;
    // The script reaches every part of the record.
    let any = |f: &dyn Fn(&SkuRecord) -> bool| records.iter().any(f);
    assert!(any(&|r| r.track.active.is_some()));
    assert!(any(&|r| r
        .track
        .active
        .as_ref()
        .is_some_and(
            |i| i.extensions == 1 && i.units_sold > Quantity::ZERO
        )));
    assert!(any(&|r| r.track.active.as_ref().is_some_and(
        |i| i.manual && i.budget_units.get() == Decimal::MAX
    )));
    let reasons: Vec<CloseReason> = records
        .iter()
        .filter_map(|r| r.last_ended.as_ref().map(|e| e.end.reason))
        .collect();
    for reason in [
        CloseReason::BudgetExhausted,
        CloseReason::Cancelled,
        CloseReason::Expired,
    ] {
        assert!(reasons.contains(&reason), "{reason:?} not reached");
    }
    assert!(any(
        &|r| r.track.last_close_reason.is_some() && r.meta.is_none()
    ));
    assert!(any(&|r| r
        .meta
        .as_ref()
        .is_some_and(|m| m.origin == Origin::Manual)));
    assert!(any(&|r| r.report_interval_secs.is_some()));
    for record in records {
        assert_round_trip(record);
    }
    // A fresh record, and one holding an incentive on another SKU, too.
    assert_round_trip(&SkuRecord::new(sku(), &s.policy));
    let mut foreign = s.records[2].clone();
    if let Some(inc) = foreign.track.active.as_mut() {
        inc.sku = Sku::new("SKU-OTHER").unwrap();
    }
    assert_round_trip(&foreign);
}

#[test]
fn scale_nanoseconds_and_zero_options_survive() {
    let mut s = lifecycle();
    let mut record = typical_record(&s);
    let meta = record.meta.as_mut().unwrap();
    meta.days_of_cover_at_open = Some(dec!(0.000));
    meta.budget_units = Some(Decimal::ZERO);
    meta.budget_spend = Some(dec!(12.50));
    record.report_interval_secs = Some(0);
    let back = decode_record(&record.encode()).unwrap();
    let meta = back.meta.as_ref().unwrap();
    assert_eq!(meta.days_of_cover_at_open.unwrap().to_string(), "0.000");
    assert_eq!(meta.budget_units, Some(Decimal::ZERO));
    assert_eq!(meta.budget_spend.unwrap().to_string(), "12.50");
    assert_eq!(back.report_interval_secs, Some(0));
    assert_round_trip(&record);
    let at = s.record.view.stock[""].as_of;
    assert_ne!(at.timestamp_subsec_nanos() % 1_000_000, 0);
    s.record.report_interval_secs = None;
    let back = decode_record(&s.record.encode()).unwrap();
    assert_eq!(back.view.stock[""].as_of, at);
    assert_eq!(back.report_interval_secs, None);
}

#[test]
fn json_records_of_earlier_releases_still_read() {
    let s = lifecycle();
    let record = s.records.last().unwrap();
    let json = serde_json::to_vec(record).unwrap();
    assert_eq!(json[0], b'{');
    assert_eq!(&decode_record(&json).unwrap(), record);
    // Written before `report_interval_secs` was kept.
    let mut value: serde_json::Value = serde_json::from_slice(&json).unwrap();
    value
        .as_object_mut()
        .unwrap()
        .remove("report_interval_secs");
    let old = decode_record(&serde_json::to_vec(&value).unwrap()).unwrap();
    assert_eq!(old.report_interval_secs, None);
    assert_eq!(old.view, record.view);
}

#[test]
fn unknown_fields_are_skipped_and_bad_input_refused_with_its_field() {
    let s = lifecycle();
    let record = typical_record(&s);
    // A later release adds field 15 (a varint) to the top message.
    let mut bytes = record.encode();
    bytes.extend_from_slice(&[15 << 3, 42]);
    assert_eq!(decode_record(&bytes).unwrap(), record);

    assert!(matches!(
        decode_record(&[0x02, 0x0a, 0x00]),
        Err(RecordError::UnknownFormat(0x02))
    ));
    assert!(matches!(decode_record(&[]), Err(RecordError::Empty)));
    assert!(matches!(
        decode_record(&[FORMAT_PROTOBUF, 0x0a, 0x05]),
        Err(RecordError::Protobuf(_))
    ));
    assert!(matches!(decode_record(b"{"), Err(RecordError::Json(_))));
    let err = decode_record(&[FORMAT_PROTOBUF]).unwrap_err();
    assert_eq!(err.to_string(), "view: missing");

    // A value its field does not allow is named by its path.
    let mut message = wire::Record::of(&record);
    let encoded = |m: &wire::Record| {
        let mut out = vec![FORMAT_PROTOBUF];
        m.encode(&mut out).unwrap();
        out
    };
    message.meta.as_mut().unwrap().origin = 7;
    let err = decode_record(&encoded(&message)).unwrap_err().to_string();
    assert_eq!(err, "meta.origin: unknown origin 7");
    let mut message = wire::Record::of(&record);
    message
        .last_ended
        .as_mut()
        .unwrap()
        .end
        .as_mut()
        .unwrap()
        .reason = 0;
    let err = decode_record(&encoded(&message)).unwrap_err().to_string();
    assert_eq!(err, "last_ended.end.reason: missing");
}

/// A SKU in a sale: one location, product data, a velocity estimate, an active incentive
/// with sales booked, and the one before it ended.
fn typical_record(s: &Script) -> SkuRecord {
    s.records
        .iter()
        .find(|r| {
            r.track
                .active
                .as_ref()
                .is_some_and(|i| !i.manual && i.units_sold > Quantity::ZERO)
                && r.last_ended.is_some()
        })
        .unwrap()
        .clone()
}

#[test]
fn the_binary_form_of_a_typical_record_is_at_most_a_third_of_its_json() {
    let s = lifecycle();
    let record = typical_record(&s);
    assert!(record.view.velocity.velocity().is_some());
    assert_eq!(record.view.stock.len(), 1);
    assert_round_trip(&record);
    let json = serde_json::to_vec(&record).unwrap().len();
    let binary = record.encode().len();
    println!("typical incentives record: json {json} bytes, binary {binary} bytes");
    assert!(
        binary * 3 <= json,
        "binary {binary} bytes is more than a third of json {json} bytes"
    );
    // Most SKUs, most of the time: no incentive at all.
    let mut quiet = Script::new();
    quiet.product(dec!(19.90), t(0));
    for i in 0..12 {
        quiet.stock(
            dec!(150) - Decimal::from(i * 3),
            Some(dec!(2.5)),
            t(15 * i + 1),
        );
    }
    let quiet = &quiet.record;
    assert!(quiet.track == IncentiveTrack::default() && quiet.last_ended.is_none());
    assert!(quiet.view.velocity.velocity().is_some());
    assert_round_trip(quiet);
    let json = serde_json::to_vec(quiet).unwrap().len();
    let binary = quiet.encode().len();
    println!("quiet incentives record: json {json} bytes, binary {binary} bytes");
    assert!(binary * 3 <= json, "binary {binary} vs json {json}");
}

/// One step of a random history.
#[derive(Debug, Clone)]
enum Step {
    Stock { sold: u16, erp: Option<u16> },
    Product { price_cents: u32 },
    Trigger { budget_units: Option<u16> },
    Cancel,
    Tick,
}

fn step() -> impl Strategy<Value = Step> {
    prop_oneof![
        5 => (0u16..300, proptest::option::of(1u16..500))
            .prop_map(|(sold, erp)| Step::Stock { sold, erp }),
        1 => (1u32..100_000).prop_map(|price_cents| Step::Product { price_cents }),
        1 => proptest::option::of(0u16..500).prop_map(|budget_units| Step::Trigger { budget_units }),
        1 => Just(Step::Cancel),
        1 => Just(Step::Tick),
    ]
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(64))]

    /// Every record of a random history round-trips exactly, and its JSON still reads.
    #[test]
    fn every_record_of_a_random_history_round_trips(
        start in 0u32..2_000,
        steps in proptest::collection::vec((step(), 1i64..3_000), 1..40),
    ) {
        let mut s = Script::new();
        let mut on_hand = Decimal::new(i64::from(start) * 10 + 5, 1);
        let mut now = t(0);
        for (step, gap) in steps {
            now += TimeDelta::minutes(gap) + TimeDelta::nanoseconds(gap * 1_001);
            match step {
                Step::Stock { sold, erp } => {
                    on_hand = (on_hand - Decimal::new(i64::from(sold), 1)).max(Decimal::ZERO);
                    s.stock(on_hand, erp.map(|v| Decimal::new(i64::from(v), 2)), now);
                }
                Step::Product { price_cents } => {
                    s.product(Decimal::new(i64::from(price_cents), 2), now);
                }
                Step::Trigger { budget_units } => {
                    if s.record.track.active.is_none() {
                        s.trigger(budget_units.map(Decimal::from), now);
                    }
                }
                Step::Cancel => {
                    if s.record.track.active.is_some() {
                        s.cancel(now);
                    }
                }
                Step::Tick => {
                    s.decide(now);
                }
            }
        }
        for record in &s.records {
            round_trip(record)?;
        }
    }
}
