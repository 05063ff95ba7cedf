use chrono::{TimeDelta, TimeZone};
use rust_decimal_macros::dec;

use super::*;
use crate::overrides::{OverrideKind, OverrideScope};
use crate::reason::ReasonCode;
use crate::types::Money;

const DIRECT: &str = r#"
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
    Policy::from_toml_str(&DIRECT.replace("mode = \"direct\"", &format!("mode = \"{mode}\"")))
        .unwrap()
}

fn t(hours: i64) -> DateTime<Utc> {
    Utc.with_ymd_and_hms(2025, 6, 1, 0, 0, 0).unwrap() + TimeDelta::hours(hours)
}

fn sku() -> Sku {
    Sku::new("SKU-1").unwrap()
}

fn product(price: Decimal, cost: Decimal) -> Product {
    Product {
        category: "general".into(),
        price: Money::new(price).unwrap(),
        unit_cost: Money::new(cost).unwrap(),
        base_rate: None,
    }
}

struct Case {
    sku: Sku,
    product: Option<Product>,
    available: Decimal,
    velocity: Option<Decimal>,
    overrides: Vec<Override>,
    incentive: Option<Incentive>,
}

impl Case {
    fn new(available: Decimal) -> Self {
        Self {
            sku: sku(),
            product: Some(product(dec!(100), dec!(50))),
            available,
            velocity: Some(dec!(10)),
            overrides: Vec::new(),
            incentive: None,
        }
    }
    fn inputs(&self) -> RateInputs<'_> {
        RateInputs {
            sku: &self.sku,
            product: self.product.as_ref(),
            available: Quantity::new(self.available).unwrap(),
            velocity: self.velocity.map(|v| Velocity::new(v).unwrap()),
            overrides: &self.overrides,
            category_overrides: &[],
            incentive: self.incentive.as_ref(),
        }
    }
    fn run(&self, p: &Policy, prev: Option<&RateCard>, now: DateTime<Utc>) -> RateCard {
        let card = compute(p, &self.inputs(), prev, now);
        let parts = card.parts;
        let sum = parts.base.get()
            + parts.inventory_adjustment
            + parts.boost
            + parts.incentive
            + parts.overrides
            + parts.guardrails;
        assert_eq!(
            sum,
            card.effective_rate.get(),
            "parts must sum to the rate: {card:?}"
        );
        card
    }
}

fn codes(card: &RateCard) -> Vec<ReasonCode> {
    card.reasons.iter().map(Reason::code).collect()
}

fn ov(id: &str, kind: OverrideKind) -> Override {
    Override {
        id: id.into(),
        scope: OverrideScope::Sku(sku()),
        kind,
        starts_at: t(-100),
        ends_at: None,
        reason: "test".into(),
        author: "merch".into(),
    }
}

fn rate(d: Decimal) -> Rate {
    Rate::new(d).unwrap()
}

#[test]
fn no_product_data_gives_zero_with_a_reason() {
    let mut c = Case::new(dec!(100));
    c.product = None;
    let card = c.run(&policy("direct"), None, t(0));
    assert_eq!(card.effective_rate, Rate::ZERO);
    assert_eq!(codes(&card), [ReasonCode::NoProductData]);
    assert_eq!(card.version, 1);
}

#[test]
fn out_of_stock_gets_a_defined_rate_and_reason() {
    let c = Case::new(dec!(0));
    let card = c.run(&policy("direct"), None, t(0));
    assert_eq!(card.effective_rate.get(), dec!(0.10));
    assert_eq!(codes(&card), [ReasonCode::OutOfStock]);
    let p = Policy::from_toml_str(&format!("{DIRECT}out_of_stock_rate = \"0.03\"\n")).unwrap();
    let card = c.run(&p, None, t(0));
    assert_eq!(card.effective_rate.get(), dec!(0.03));
}

#[test]
fn unknown_velocity_uses_the_base_rate() {
    let mut c = Case::new(dec!(100));
    c.velocity = None;
    let card = c.run(&policy("direct"), None, t(0));
    assert_eq!(card.effective_rate.get(), dec!(0.10));
    assert_eq!(codes(&card), [ReasonCode::NoVelocityData]);
}

#[test]
fn scarce_sku_is_lowered_and_overstock_raised() {
    let p = policy("direct");
    let scarce = Case::new(dec!(20)).run(&p, None, t(0)); // 2 days
    assert_eq!(scarce.effective_rate.get(), dec!(0.05));
    assert_eq!(scarce.parts.inventory_adjustment, dec!(-0.05));
    assert_eq!(
        scarce.reasons,
        [Reason::LowCover {
            days: DaysOfCover::new(dec!(2)).unwrap(),
            band: "scarce".into()
        }]
    );
    let normal = Case::new(dec!(300)).run(&p, None, t(0));
    assert_eq!(normal.effective_rate.get(), dec!(0.10));
    assert!(normal.reasons.is_empty());
    let over = Case::new(dec!(1000)).run(&p, None, t(0));
    assert_eq!(over.effective_rate.get(), dec!(0.15));
    assert_eq!(codes(&over), [ReasonCode::Overstock]);
}

#[test]
fn peak_window_switches_band_table() {
    let p = policy("direct");
    let bf = Utc.with_ymd_and_hms(2025, 11, 28, 12, 0, 0).unwrap();
    let card = Case::new(dec!(200)).run(&p, None, bf); // 20 days: overstock in the peak table
    assert_eq!(card.effective_rate.get(), dec!(0.20));
    assert_eq!(
        codes(&card),
        [ReasonCode::PeakWindow, ReasonCode::Overstock]
    );
    assert_eq!(card.state.band, Some(BandPosition { table: 1, index: 2 }));
}

#[test]
fn damping_limits_the_step_and_hold_limits_the_frequency() {
    let p = policy("direct");
    let first = Case::new(dec!(300)).run(&p, None, t(0));
    assert_eq!(first.effective_rate.get(), dec!(0.10));
    // now scarce: target 0.05, but the rate moved at t(0): held for an hour
    let scarce = Case::new(dec!(20));
    let held = scarce.run(&p, Some(&first), t(0) + TimeDelta::minutes(30));
    assert_eq!(held.effective_rate.get(), dec!(0.10));
    assert!(codes(&held).contains(&ReasonCode::Held));
    assert_eq!(held.version, 1);
    let damped = scarce.run(&p, Some(&held), t(1));
    assert_eq!(damped.effective_rate.get(), dec!(0.08));
    assert!(codes(&damped).contains(&ReasonCode::Damped));
    assert_eq!(damped.version, 2);
    assert_eq!(damped.previous_rate, Some(rate(dec!(0.10))));
    let again = scarce.run(&p, Some(&damped), t(2));
    assert_eq!(again.effective_rate.get(), dec!(0.06));
    let last = scarce.run(&p, Some(&again), t(3));
    assert_eq!(last.effective_rate.get(), dec!(0.05));
    assert!(!codes(&last).contains(&ReasonCode::Damped));
    assert_eq!(last.version, 4);
    let same = scarce.run(&p, Some(&last), t(4));
    assert_eq!((same.version, same.changed_at), (4, t(3)));
    assert_eq!(same.previous_rate, Some(rate(dec!(0.06))));
}

#[test]
fn products_before_stock_the_first_stock_moves_the_rate_at_once() {
    let p = policy("direct");
    // master data first: nothing in stock yet
    let oos = Case::new(dec!(0)).run(&p, None, t(0));
    assert_eq!(codes(&oos), [ReasonCode::OutOfStock]);
    assert_eq!(oos.effective_rate.get(), dec!(0.10));
    // the stock a minute later is not held by the out-of-stock card's hold clock
    let first = t(0) + TimeDelta::minutes(1);
    let scarce = Case::new(dec!(20)).run(&p, Some(&oos), first);
    assert_eq!(scarce.effective_rate.get(), dec!(0.05));
    assert_eq!(codes(&scarce), [ReasonCode::LowCover]);
    assert_eq!((scarce.version, scarce.changed_at), (2, first));
    // the hold clock starts there
    let held = Case::new(dec!(300)).run(&p, Some(&scarce), first + TimeDelta::minutes(30));
    assert_eq!(held.effective_rate.get(), dec!(0.05));
    assert!(codes(&held).contains(&ReasonCode::Held));
    // without product data first, the same
    let mut none = Case::new(dec!(20));
    none.product = None;
    let nothing = none.run(&p, None, t(0));
    let card = Case::new(dec!(1000)).run(&p, Some(&nothing), first);
    assert_eq!(card.effective_rate.get(), dec!(0.15));
    assert_eq!(codes(&card), [ReasonCode::Overstock]);
}

#[test]
fn a_restock_from_zero_moves_the_rate_at_once_without_old_hysteresis() {
    let p = policy("direct");
    let scarce = Case::new(dec!(20)).run(&p, None, t(0));
    assert_eq!(scarce.effective_rate.get(), dec!(0.05));
    // going out of stock is damped as usual (target: the base rate)
    let out = Case::new(dec!(0)).run(&p, Some(&scarce), t(2));
    assert_eq!(out.effective_rate.get(), dec!(0.07));
    assert_eq!(codes(&out), [ReasonCode::OutOfStock, ReasonCode::Damped]);
    // 3.2 days: inside the margin above the scarce threshold, but the band before the
    // stock-out does not hold it back; and no hold from the move at t(2)
    let back = Case::new(dec!(32)).run(&p, Some(&out), t(2) + TimeDelta::minutes(5));
    assert_eq!(back.effective_rate.get(), dec!(0.10));
    assert_eq!(back.state.band.map(|b| b.index), Some(1));
    assert!(back.reasons.is_empty(), "{:?}", back.reasons);
    // a restock to the same rate keeps the version and the hold clock
    let out = Case::new(dec!(0)).run(&p, Some(&back), t(5));
    let same = Case::new(dec!(300)).run(&p, Some(&out), t(5) + TimeDelta::minutes(1));
    assert_eq!(
        (same.version, same.changed_at),
        (back.version, back.changed_at)
    );
    assert_eq!(same.state.policy_changed_at, back.state.policy_changed_at);
}

#[test]
fn boost_mode_the_first_stock_raises_the_boost_at_once() {
    let p = policy("boost");
    let oos = Case::new(dec!(0)).run(&p, None, t(0));
    assert_eq!(oos.effective_rate.get(), dec!(0.10));
    let over = Case::new(dec!(1000)).run(&p, Some(&oos), t(0) + TimeDelta::minutes(1));
    assert_eq!(over.parts.boost, dec!(0.05));
    assert_eq!(codes(&over), [ReasonCode::Overstock, ReasonCode::Boost]);
    assert_eq!(over.guaranteed_until, Some(t(72) + TimeDelta::minutes(1)));
}

#[test]
fn hysteresis_keeps_the_band_near_a_threshold() {
    let p = policy("direct");
    let c = Case::new(dec!(20)); // 2 days: scarce
    let mut card = c.run(&p, None, t(0));
    // 3.2 days is past the threshold of 3 but not by 10 %
    let mut c2 = Case::new(dec!(32));
    c2.velocity = Some(dec!(10));
    for h in 1..5 {
        card = c2.run(&p, Some(&card), t(h));
        assert_eq!(card.state.band.map(|b| b.index), Some(0));
        assert_eq!(card.effective_rate.get(), dec!(0.05));
    }
    let c3 = Case::new(dec!(33));
    card = c3.run(&p, Some(&card), t(10));
    assert_eq!(card.state.band.map(|b| b.index), Some(1));
}

#[test]
fn guardrails_floor_cap_and_margin_guard_act_last() {
    let p = Policy::from_toml_str(&DIRECT.replace("base_rate = \"0.10\"", "base_rate = \"0.01\""))
        .unwrap();
    let floor = Case::new(dec!(300)).run(&p, None, t(0));
    assert_eq!(floor.effective_rate.get(), dec!(0.02));
    assert_eq!(
        floor.reasons,
        [Reason::Floor {
            floor: rate(dec!(0.02))
        }]
    );

    let p = Policy::from_toml_str(&DIRECT.replace("base_rate = \"0.10\"", "base_rate = \"0.30\""))
        .unwrap();
    let cap = Case::new(dec!(300)).run(&p, None, t(0));
    assert_eq!(cap.effective_rate.get(), dec!(0.20));
    assert_eq!(
        cap.reasons,
        [Reason::Cap {
            cap: rate(dec!(0.20))
        }]
    );
    assert_eq!(cap.parts.guardrails, dec!(-0.10));

    let mut thin = Case::new(dec!(300));
    thin.product = Some(product(dec!(100), dec!(90))); // 0.5 × 10 / 100 = 0.05
    let guarded = thin.run(&policy("direct"), None, t(0));
    assert_eq!(guarded.effective_rate.get(), dec!(0.05));
    assert_eq!(
        guarded.reasons,
        [Reason::MarginGuard {
            max_rate: rate(dec!(0.05))
        }]
    );

    // sold at a loss: the margin guard wins even over the floor
    thin.product = Some(product(dec!(100), dec!(120)));
    let loss = thin.run(&policy("direct"), None, t(0));
    assert_eq!(loss.effective_rate, Rate::ZERO);
    assert_eq!(codes(&loss), [ReasonCode::MarginGuard]);
}

#[test]
fn margin_limit_rounds_down() {
    let p = product(dec!(30), dec!(20));
    // 0.5 × 10 / 30 = 0.1666… → 0.1666
    assert_eq!(p.margin_limit(dec!(0.5), 4).get(), dec!(0.1666));
}

#[test]
fn override_kinds_and_their_reasons() {
    let p = policy("direct");
    let mut c = Case::new(dec!(300)); // policy rate 0.10
    c.overrides = vec![ov(
        "pin",
        OverrideKind::Pin {
            rate: rate(dec!(0.12)),
        },
    )];
    let card = c.run(&p, None, t(0));
    assert_eq!(card.effective_rate.get(), dec!(0.12));
    assert_eq!(codes(&card), [ReasonCode::OverridePin]);

    c.overrides = vec![ov("m", OverrideKind::Multiplier { factor: dec!(1.5) })];
    assert_eq!(c.run(&p, None, t(0)).effective_rate.get(), dec!(0.15));

    c.overrides = vec![ov(
        "f",
        OverrideKind::Floor {
            rate: rate(dec!(0.13)),
        },
    )];
    let card = c.run(&p, None, t(0));
    assert_eq!(card.effective_rate.get(), dec!(0.13));
    assert_eq!(codes(&card), [ReasonCode::OverrideFloor]);

    c.overrides = vec![ov(
        "c",
        OverrideKind::Cap {
            rate: rate(dec!(0.04)),
        },
    )];
    let card = c.run(&p, None, t(0));
    assert_eq!(card.effective_rate.get(), dec!(0.04));
    assert_eq!(codes(&card), [ReasonCode::OverrideCap]);

    c.overrides = vec![ov("x", OverrideKind::Exclude)];
    let card = c.run(&p, None, t(0));
    assert_eq!(card.effective_rate, Rate::ZERO);
    assert_eq!(codes(&card), [ReasonCode::OverrideExclude]);

    // an override outside its window does nothing
    let mut later = ov("later", OverrideKind::Exclude);
    later.starts_at = t(5);
    c.overrides = vec![later];
    assert_eq!(c.run(&p, None, t(0)).effective_rate.get(), dec!(0.10));
}

#[test]
fn override_precedence_is_as_documented() {
    let p = policy("direct");
    let mut c = Case::new(dec!(300));
    // exclude beats pin
    c.overrides = vec![
        ov(
            "pin",
            OverrideKind::Pin {
                rate: rate(dec!(0.12)),
            },
        ),
        ov("x", OverrideKind::Exclude),
    ];
    assert_eq!(c.run(&p, None, t(0)).effective_rate, Rate::ZERO);
    // pin beats override cap, floor and multiplier
    c.overrides = vec![
        ov(
            "pin",
            OverrideKind::Pin {
                rate: rate(dec!(0.12)),
            },
        ),
        ov(
            "cap",
            OverrideKind::Cap {
                rate: rate(dec!(0.05)),
            },
        ),
        ov("m", OverrideKind::Multiplier { factor: dec!(2) }),
    ];
    assert_eq!(c.run(&p, None, t(0)).effective_rate.get(), dec!(0.12));
    // multiplier, then floor, then cap: the cap wins over a higher floor
    c.overrides = vec![
        ov("m", OverrideKind::Multiplier { factor: dec!(0.5) }),
        ov(
            "floor",
            OverrideKind::Floor {
                rate: rate(dec!(0.09)),
            },
        ),
        ov(
            "cap",
            OverrideKind::Cap {
                rate: rate(dec!(0.08)),
            },
        ),
    ];
    let card = c.run(&p, None, t(0));
    assert_eq!(card.effective_rate.get(), dec!(0.08));
    assert_eq!(
        codes(&card),
        [
            ReasonCode::OverrideMultiplier,
            ReasonCode::OverrideFloor,
            ReasonCode::OverrideCap
        ]
    );
    // guardrails still apply after a pin
    c.overrides = vec![ov(
        "pin",
        OverrideKind::Pin {
            rate: rate(dec!(0.5)),
        },
    )];
    let card = c.run(&p, None, t(0));
    assert_eq!(card.effective_rate.get(), dec!(0.20));
    assert_eq!(codes(&card), [ReasonCode::OverridePin, ReasonCode::Cap]);
    // an exclude is not lifted by the floor
    c.overrides = vec![ov("x", OverrideKind::Exclude)];
    assert_eq!(c.run(&p, None, t(0)).effective_rate, Rate::ZERO);
}

#[test]
fn overrides_act_immediately_without_damping() {
    let p = policy("direct");
    let mut c = Case::new(dec!(300));
    let first = c.run(&p, None, t(0));
    c.overrides = vec![ov(
        "pin",
        OverrideKind::Pin {
            rate: rate(dec!(0.18)),
        },
    )];
    let pinned = c.run(&p, Some(&first), t(0) + TimeDelta::minutes(1));
    assert_eq!(pinned.effective_rate.get(), dec!(0.18));
    c.overrides.clear();
    let unpinned = c.run(&p, Some(&pinned), t(0) + TimeDelta::minutes(2));
    assert_eq!(unpinned.effective_rate.get(), dec!(0.10));
}

#[test]
fn an_active_incentive_adds_its_bonus_within_the_guardrails() {
    let p = policy("direct");
    let mut c = Case::new(dec!(1000)); // 0.15
    let rules = &p.default_category().flash;
    let mut inc = Incentive::open("inc-1".into(), sku(), "general".into(), rules, t(0));
    inc.bonus = rate(dec!(0.02));
    c.incentive = Some(inc.clone());
    let card = c.run(&p, None, t(1));
    assert_eq!(card.effective_rate.get(), dec!(0.17));
    assert_eq!(card.parts.incentive, dec!(0.02));
    assert_eq!(codes(&card), [ReasonCode::Overstock, ReasonCode::Incentive]);
    // bounded by the cap
    inc.bonus = rate(dec!(0.10));
    c.incentive = Some(inc.clone());
    let card = c.run(&p, None, t(1));
    assert_eq!(card.effective_rate.get(), dec!(0.20));
    assert_eq!(codes(&card).last(), Some(&ReasonCode::Cap));
    // not after its window
    let card = c.run(&p, None, inc.ends_at);
    assert_eq!(card.effective_rate.get(), dec!(0.15));
}

#[test]
fn an_active_incentive_is_guaranteed_until_its_end() {
    let p = policy("direct");
    let mut c = Case::new(dec!(1000));
    let rules = &p.default_category().flash;
    let inc = Incentive::open("inc-1".into(), sku(), "general".into(), rules, t(0));
    c.incentive = Some(inc.clone());
    let card = c.run(&p, None, t(1));
    assert_eq!(card.guaranteed_until, Some(inc.ends_at));
    // stock turning scarce moves the policy part, not the bonus or its guarantee
    let mut scarce = Case::new(dec!(20));
    scarce.incentive = Some(inc.clone());
    let later = scarce.run(&p, Some(&card), t(3));
    assert_eq!(later.parts.incentive, inc.bonus.get());
    assert_eq!(later.guaranteed_until, Some(inc.ends_at));
    // gone with the window
    let after = scarce.run(&p, Some(&later), inc.ends_at);
    assert_eq!(
        (after.parts.incentive, after.guaranteed_until),
        (Decimal::ZERO, None)
    );

    // boost mode: the earlier of the boost guarantee (72 h) and the incentive's end
    let b = policy("boost");
    let card = c.run(&b, None, t(1));
    assert!(
        inc.ends_at < t(73),
        "the example window is shorter than the boost"
    );
    assert_eq!(card.guaranteed_until, Some(inc.ends_at));
    let mut long = inc.clone();
    long.ends_at = t(200);
    c.incentive = Some(long);
    let card = c.run(&b, None, t(1));
    assert_eq!(card.guaranteed_until, Some(t(73)));
}

#[test]
fn boost_mode_boosts_with_a_guarantee_and_lapses_instead_of_cutting() {
    let p = policy("boost");
    let over = Case::new(dec!(1000)); // target 0.15 = base 0.10 + boost 0.05
    let card = over.run(&p, None, t(0));
    assert_eq!(card.effective_rate.get(), dec!(0.15));
    assert_eq!(card.parts.base.get(), dec!(0.10));
    assert_eq!(card.parts.boost, dec!(0.05));
    assert_eq!(card.guaranteed_until, Some(t(72)));
    assert_eq!(codes(&card), [ReasonCode::Overstock, ReasonCode::Boost]);

    // stock turns scarce: the boost is guaranteed for 72 h, the base is never cut
    let scarce = Case::new(dec!(20));
    let kept = scarce.run(&p, Some(&card), t(10));
    assert_eq!(kept.effective_rate.get(), dec!(0.15));
    assert!(codes(&kept).contains(&ReasonCode::BoostGuaranteed));
    let lapsing = scarce.run(&p, Some(&kept), t(72));
    assert_eq!(lapsing.effective_rate.get(), dec!(0.13));
    assert!(codes(&lapsing).contains(&ReasonCode::BoostLapsed));
    let mut card = lapsing;
    for h in 73..80 {
        card = scarce.run(&p, Some(&card), t(h));
    }
    assert_eq!(card.effective_rate.get(), dec!(0.10));
    assert_eq!(card.parts.base.get(), dec!(0.10));
    assert_eq!(card.guaranteed_until, None);
}

#[test]
fn boost_mode_cuts_the_base_only_after_notice_and_within_the_period_limit() {
    let p = policy("boost");
    let mut c = Case::new(dec!(300));
    let first = c.run(&p, None, t(0));
    assert_eq!(first.parts.base.get(), dec!(0.10));
    // the product's base rate drops to 0.05: a 50 % cut
    c.product.as_mut().unwrap().base_rate = Some(rate(dec!(0.05)));
    let announced = c.run(&p, Some(&first), t(1));
    assert_eq!(announced.effective_rate.get(), dec!(0.10));
    assert_eq!(
        announced.reasons,
        [Reason::BaseCutScheduled {
            to: rate(dec!(0.05)),
            effective_at: t(25)
        }]
    );
    let still = c.run(&p, Some(&announced), t(24));
    assert_eq!(still.effective_rate.get(), dec!(0.10));
    // after notice: at most 20 % below the highest base of the last 30 days
    let cut = c.run(&p, Some(&still), t(25));
    assert_eq!(cut.parts.base.get(), dec!(0.08));
    assert_eq!(
        codes(&cut),
        [ReasonCode::BaseCut, ReasonCode::BaseCutLimited]
    );
    let later = c.run(&p, Some(&cut), t(24 * 20));
    assert_eq!(later.parts.base.get(), dec!(0.08));
    // 30 days after the first cut the 0.10 leaves the period: 0.08 × 0.8 = 0.064
    let next = c.run(&p, Some(&later), t(25 + 24 * 30));
    assert_eq!(next.parts.base.get(), dec!(0.064));
    // a raise is immediate
    c.product.as_mut().unwrap().base_rate = Some(rate(dec!(0.12)));
    let raised = c.run(&p, Some(&next), t(26 + 24 * 30));
    assert_eq!(raised.parts.base.get(), dec!(0.12));
    assert_eq!(raised.state.pending_cut, None);
}

#[test]
fn compute_is_deterministic_and_cards_round_trip() {
    let p = policy("boost");
    let c = Case::new(dec!(1000));
    let a = c.run(&p, None, t(0));
    let b = c.run(&p, None, t(0));
    assert_eq!(a, b);
    let text = toml::to_string(&a).unwrap();
    let back: RateCard = toml::from_str(&text).unwrap();
    assert_eq!(back, a);
}
