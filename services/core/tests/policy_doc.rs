//! The worked examples in `services/core/POLICY.md`, computed with the shipped example
//! policy: if this test fails, the document is wrong.

use chrono::{DateTime, TimeDelta, TimeZone, Utc};
use ratemesh_core::overrides::{OverrideKind, OverrideScope};
use ratemesh_core::{
    Incentive, Money, Override, Policy, Product, Quantity, Rate, RateCard, RateInputs, ReasonCode,
    Sku, Velocity, compute,
};
use rust_decimal::Decimal;
use rust_decimal_macros::dec;

fn at(y: i32, mo: u32, d: u32, h: u32) -> DateTime<Utc> {
    Utc.with_ymd_and_hms(y, mo, d, h, 0, 0).unwrap()
}

fn product(category: &str, price: Decimal, cost: Decimal) -> Product {
    Product {
        category: category.into(),
        price: Money::new(price).unwrap(),
        unit_cost: Money::new(cost).unwrap(),
        base_rate: None,
    }
}

#[allow(clippy::too_many_arguments)]
fn card(
    sku: &Sku,
    product: &Product,
    available: Decimal,
    velocity: Decimal,
    overrides: &[Override],
    incentive: Option<&Incentive>,
    previous: Option<&RateCard>,
    now: DateTime<Utc>,
) -> RateCard {
    let inputs = RateInputs {
        sku,
        product: Some(product),
        available: Quantity::new(available).unwrap(),
        velocity: Some(Velocity::new(velocity).unwrap()),
        overrides,
        category_overrides: &[],
        incentive,
    };
    compute(&Policy::example(), &inputs, previous, now)
}

fn codes(card: &RateCard) -> Vec<ReasonCode> {
    card.reasons.iter().map(|r| r.code()).collect()
}

#[test]
fn worked_example_scarce_electronics_sku() {
    let sku = Sku::new("TV-55-OLED").unwrap();
    let tv = product("electronics", dec!(500), dec!(400));
    let t = at(2025, 10, 15, 12);
    // 300 units at 10/day = 30 days: normal band, base rate 0.03
    let before = card(&sku, &tv, dec!(300), dec!(10), &[], None, None, t);
    assert_eq!(before.effective_rate.get(), dec!(0.03));
    assert!(before.reasons.is_empty());
    // two hours later 20 units left = 2 days: scarce, target 0.03 × 0.5 = 0.015,
    // damped by max_step 0.005
    let t2 = t + TimeDelta::hours(2);
    let after = card(&sku, &tv, dec!(20), dec!(10), &[], None, Some(&before), t2);
    assert_eq!(after.effective_rate.get(), dec!(0.025));
    assert_eq!(codes(&after), [ReasonCode::LowCover, ReasonCode::Damped]);
    assert_eq!(after.version, 2);
    assert_eq!(
        after.reasons[0].text(),
        "low cover: 2 days of cover is in band \"scarce\", rate lowered"
    );
    // three more hourly recomputes reach the target
    let mut c = after;
    for h in 3..=5 {
        c = card(
            &sku,
            &tv,
            dec!(20),
            dec!(10),
            &[],
            None,
            Some(&c),
            t + TimeDelta::hours(h),
        );
    }
    assert_eq!(c.effective_rate.get(), dec!(0.015));
    assert_eq!(c.version, 4);
    // the margin guard (0.35 × 100 / 500 = 0.07) does not bind
}

#[test]
fn worked_example_overstock_apparel_during_bfcm() {
    let sku = Sku::new("SWEATER-M-NAVY").unwrap();
    let sweater = product("apparel", dec!(60), dec!(24));
    let black_friday = at(2025, 11, 28, 15); // 10:00 in New York
    // 900 units at 20/day = 45 days: apparel's BFCM table puts ≥ 30 days in
    // deep-overstock, 0.08 × 2.2 = 0.176
    let plain = card(
        &sku,
        &sweater,
        dec!(900),
        dec!(20),
        &[],
        None,
        None,
        black_friday,
    );
    assert_eq!(plain.effective_rate.get(), dec!(0.176));
    assert_eq!(
        codes(&plain),
        [ReasonCode::PeakWindow, ReasonCode::Overstock]
    );
    // with a flash incentive of +0.03 the sum 0.206 is capped at 0.20
    let policy = Policy::example();
    let inc = Incentive::open(
        "flash-1".into(),
        sku.clone(),
        "apparel".into(),
        &policy.category("apparel").flash,
        black_friday - TimeDelta::hours(1),
    );
    let boosted = card(
        &sku,
        &sweater,
        dec!(900),
        dec!(20),
        &[],
        Some(&inc),
        None,
        black_friday,
    );
    assert_eq!(boosted.effective_rate.get(), dec!(0.20));
    assert_eq!(
        codes(&boosted),
        [
            ReasonCode::PeakWindow,
            ReasonCode::Overstock,
            ReasonCode::Incentive,
            ReasonCode::Cap
        ]
    );
    assert_eq!(boosted.parts.incentive, dec!(0.03));
    assert_eq!(boosted.parts.guardrails, dec!(-0.006));
    // outside BFCM the same SKU is in the normal table: 45 days is overstock (×1.35) = 0.108
    let october = card(
        &sku,
        &sweater,
        dec!(900),
        dec!(20),
        &[],
        None,
        None,
        at(2025, 10, 15, 12),
    );
    assert_eq!(october.effective_rate.get(), dec!(0.108));
}

#[test]
fn worked_example_merchandiser_pin() {
    let sku = Sku::new("LAMP-ARC-BRASS").unwrap();
    let lamp = product("home", dec!(80), dec!(50));
    let t = at(2025, 10, 15, 12);
    let pin = |rate: Decimal| Override {
        id: "ov-spring-lamps".into(),
        scope: OverrideScope::Sku(sku.clone()),
        kind: OverrideKind::Pin {
            rate: Rate::new(rate).unwrap(),
        },
        starts_at: t - TimeDelta::hours(1),
        ends_at: Some(t + TimeDelta::days(7)),
        reason: "creator campaign".into(),
        author: "ana@acme".into(),
    };
    // 200 units at 5/day = 40 days: normal band, base 0.06
    let policy_rate = card(&sku, &lamp, dec!(200), dec!(5), &[], None, None, t);
    assert_eq!(policy_rate.effective_rate.get(), dec!(0.06));
    let pinned = card(
        &sku,
        &lamp,
        dec!(200),
        dec!(5),
        &[pin(dec!(0.12))],
        None,
        None,
        t,
    );
    assert_eq!(pinned.effective_rate.get(), dec!(0.12));
    assert_eq!(codes(&pinned), [ReasonCode::OverridePin]);
    assert_eq!(pinned.parts.overrides, dec!(0.06));
    // a pin above the category cap is still capped: guardrails act last
    let too_high = card(
        &sku,
        &lamp,
        dec!(200),
        dec!(5),
        &[pin(dec!(0.18))],
        None,
        None,
        t,
    );
    assert_eq!(too_high.effective_rate.get(), dec!(0.15));
    assert_eq!(codes(&too_high), [ReasonCode::OverridePin, ReasonCode::Cap]);
    // margin guard: 0.40 × (80 − 50) / 80 = 0.15, equal to the cap, so it does not act
}
