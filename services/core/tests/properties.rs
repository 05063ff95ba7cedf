//! Property tests for the policy invariants: bounds, margin guard, damping, hysteresis,
//! network-compliant cuts, boost guarantees, determinism and replay convergence.

use chrono::{DateTime, TimeDelta, TimeZone, Utc};
use proptest::prelude::*;
use ratemesh_core::overrides::{OverrideKind, OverrideScope};
use ratemesh_core::{
    Event, Incentive, Mode, Money, Override, Policy, Product, Quantity, Rate, RateCard, RateInputs,
    Sku, Velocity, compute, paid_bonus, replay, replay_in_arrival_order,
};
use rust_decimal::Decimal;

fn t0() -> DateTime<Utc> {
    Utc.with_ymd_and_hms(2025, 5, 1, 0, 0, 0).unwrap()
}

fn dec(units: i64, scale: u32) -> Decimal {
    Decimal::new(units, scale)
}

fn policy(mode: Mode) -> Policy {
    let mut config = Policy::example().config().clone();
    config.program.mode = Some(mode);
    Policy::from_config(&config).unwrap()
}

fn sku() -> Sku {
    Sku::new("PROP-1").unwrap()
}

const CATEGORIES: [&str; 4] = ["electronics", "apparel", "home", "toys"];

prop_compose! {
    fn product()(cat in 0usize..4, price in 1i64..100_000, cost_pct in 0i64..150, base in proptest::option::of(0i64..4000)) -> Product {
        let price = dec(price, 2);
        Product {
            category: CATEGORIES[cat].to_owned(),
            price: Money::new(price).unwrap(),
            unit_cost: Money::new((price * dec(cost_pct, 2)).round_dp(2)).unwrap(),
            base_rate: base.map(|b| Rate::new(dec(b, 4)).unwrap()),
        }
    }
}

fn override_kind() -> impl Strategy<Value = OverrideKind> {
    prop_oneof![
        (0i64..=10_000).prop_map(|r| OverrideKind::Pin {
            rate: Rate::new(dec(r, 4)).unwrap()
        }),
        (0i64..=10_000).prop_map(|r| OverrideKind::Floor {
            rate: Rate::new(dec(r, 4)).unwrap()
        }),
        (0i64..=10_000).prop_map(|r| OverrideKind::Cap {
            rate: Rate::new(dec(r, 4)).unwrap()
        }),
        (0i64..=1000).prop_map(|f| OverrideKind::Multiplier { factor: dec(f, 2) }),
        Just(OverrideKind::Exclude),
    ]
}

fn overrides() -> impl Strategy<Value = Vec<Override>> {
    proptest::collection::vec(override_kind(), 0..3).prop_map(|kinds| {
        kinds
            .into_iter()
            .enumerate()
            .map(|(i, kind)| Override {
                id: format!("o{i}"),
                scope: OverrideScope::Sku(sku()),
                kind,
                starts_at: t0() - TimeDelta::days(1),
                ends_at: None,
                reason: "prop".into(),
                author: "prop".into(),
            })
            .collect()
    })
}

/// One step of a SKU's life: hours since the previous step, stock, velocity.
#[derive(Debug, Clone)]
struct Step {
    hours: i64,
    available: Decimal,
    velocity: Option<Decimal>,
}

fn steps() -> impl Strategy<Value = Vec<Step>> {
    proptest::collection::vec(
        (
            0i64..200,
            0i64..50_000,
            proptest::option::weighted(0.9, 0i64..20_000),
        )
            .prop_map(|(hours, available, velocity)| Step {
                hours,
                available: Decimal::from(available),
                velocity: velocity.map(|v| dec(v, 2)),
            }),
        1..40,
    )
}

fn inputs<'a>(
    sku: &'a Sku,
    product: &'a Product,
    step: &Step,
    overrides: &'a [Override],
    incentive: Option<&'a Incentive>,
) -> RateInputs<'a> {
    RateInputs {
        sku,
        product: Some(product),
        available: Quantity::new(step.available).unwrap(),
        velocity: step.velocity.map(|v| Velocity::new(v).unwrap()),
        overrides,
        category_overrides: &[],
        incentive,
    }
}

/// Runs the steps through compute, returning every card.
fn run(
    policy: &Policy,
    product: &Product,
    steps: &[Step],
    overrides: &[Override],
) -> Vec<RateCard> {
    run_with(policy, product, steps, overrides, None)
}

/// Whether `card` was computed without stock (or product data): the next card with stock
/// takes the policy's target at once.
fn without_stock(card: &RateCard) -> bool {
    card.reasons.iter().any(|r| {
        matches!(
            r,
            ratemesh_core::Reason::OutOfStock { .. } | ratemesh_core::Reason::NoProductData
        )
    })
}

/// [`run`] with a flash incentive in the inputs.
fn run_with(
    policy: &Policy,
    product: &Product,
    steps: &[Step],
    overrides: &[Override],
    incentive: Option<&Incentive>,
) -> Vec<RateCard> {
    let sku = sku();
    let mut now = t0();
    let mut cards: Vec<RateCard> = Vec::with_capacity(steps.len());
    for step in steps {
        now += TimeDelta::hours(step.hours);
        let card = compute(
            policy,
            &inputs(&sku, product, step, overrides, incentive),
            cards.last(),
            now,
        );
        cards.push(card);
    }
    cards
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(256))]

    #[test]
    fn rate_stays_between_zero_and_cap(
        product in product(),
        steps in steps(),
        overrides in overrides(),
        boost in any::<bool>(),
    ) {
        let policy = policy(if boost { Mode::Boost } else { Mode::Direct });
        let cap = policy.category(&product.category).cap;
        for card in run(&policy, &product, &steps, &overrides) {
            prop_assert!(card.effective_rate >= Rate::ZERO);
            prop_assert!(card.effective_rate <= cap, "{card:?}");
        }
    }

    #[test]
    fn commission_never_exceeds_the_margin_guard(
        product in product(),
        steps in steps(),
        overrides in overrides(),
        boost in any::<bool>(),
    ) {
        let policy = policy(if boost { Mode::Boost } else { Mode::Direct });
        let share = policy.category(&product.category).margin_share;
        let price = product.price.get();
        let margin = price - product.unit_cost.get();
        for card in run(&policy, &product, &steps, &overrides) {
            let commission = card.effective_rate.get() * price;
            if margin > Decimal::ZERO {
                prop_assert!(commission <= share * margin, "{commission} > {share} × {margin}");
            } else {
                prop_assert_eq!(card.effective_rate, Rate::ZERO);
            }
        }
    }

    #[test]
    fn a_change_never_exceeds_the_step(product in product(), steps in steps()) {
        let policy = policy(Mode::Direct);
        let max_step = policy.category(&product.category).max_step;
        let cards = run(&policy, &product, &steps, &[]);
        // Coming into stock is not smoothed (POLICY.md): a card after one without stock
        // takes the target at once.
        for pair in cards.windows(2).filter(|p| !without_stock(&p[0])) {
            let delta = (pair[1].effective_rate.get() - pair[0].effective_rate.get()).abs();
            prop_assert!(delta <= max_step, "moved {delta} > {max_step}");
        }
    }

    #[test]
    fn boost_changes_never_exceed_the_step(product in product(), steps in steps()) {
        let policy = policy(Mode::Boost);
        let max_step = policy.category(&product.category).max_step;
        let cards = run(&policy, &product, &steps, &[]);
        for pair in cards.windows(2).filter(|p| !without_stock(&p[0])) {
            let delta = (pair[1].parts.boost - pair[0].parts.boost).abs();
            prop_assert!(delta <= max_step, "boost moved {delta} > {max_step}");
        }
    }

    #[test]
    fn no_band_flapping_inside_the_hysteresis_margin(
        threshold_index in 0usize..4,
        wiggles in proptest::collection::vec(-999i64..999, 2..40),
        start_above in any::<bool>(),
    ) {
        let policy = policy(Mode::Direct);
        let cat = policy.category("electronics");
        let table = &cat.bands;
        let threshold = table.bands()[threshold_index].max_days.unwrap();
        let margin = cat.hysteresis;
        let product = Product {
            category: "electronics".into(),
            price: Money::new(Decimal::from(100)).unwrap(),
            unit_cost: Money::new(Decimal::from(50)).unwrap(),
            base_rate: None,
        };
        // Start clearly on one side, then wiggle strictly inside (t(1-m), t(1+m)).
        // Start just past the margin on one side (every threshold in the table is more
        // than 10 % from its neighbours, so this is the adjacent band).
        let start = if start_above {
            threshold * (Decimal::ONE + margin)
        } else {
            threshold * (Decimal::ONE - margin) * dec(99, 2)
        };
        let mut all = vec![Step { hours: 2, available: start, velocity: Some(Decimal::ONE) }];
        for w in wiggles {
            let offset = threshold * margin * dec(w, 3); // |w/1000| < 1
            all.push(Step { hours: 2, available: threshold + offset, velocity: Some(Decimal::ONE) });
        }
        let cards = run(&policy, &product, &all, &[]);
        let settled = cards[1].state.band;
        for card in &cards[1..] {
            prop_assert_eq!(card.state.band, settled);
        }
        // and the band it settled in is the one it started in or the adjacent one
        let first = cards[0].state.band.unwrap().index as usize;
        let first_expected = if start_above { threshold_index + 1 } else { threshold_index };
        prop_assert_eq!(first, first_expected);
        prop_assert_eq!(settled.unwrap().index as usize, first_expected);
    }

    #[test]
    fn boost_mode_never_cuts_the_base_faster_than_the_rules(
        bases in proptest::collection::vec((0i64..300, 0i64..2000), 1..40),
    ) {
        let policy = policy(Mode::Boost);
        let rules = policy.network;
        let sku = sku();
        let mut product = Product {
            category: "home".into(),
            price: Money::new(Decimal::from(100)).unwrap(),
            unit_cost: Money::new(Decimal::from(10)).unwrap(),
            base_rate: None,
        };
        let step = Step { hours: 0, available: Decimal::from(100), velocity: Some(Decimal::from(2)) };
        let mut now = t0();
        let mut cards: Vec<RateCard> = Vec::new();
        for (hours, base) in bases {
            now += TimeDelta::hours(hours);
            product.base_rate = Some(Rate::new(dec(base, 4)).unwrap());
            let card = compute(&policy, &inputs(&sku, &product, &step, &[], None), cards.last(), now);
            cards.push(card);
        }
        for (i, card) in cards.iter().enumerate() {
            let base = card.parts.base.get();
            // never more than max_cut below any base published within the period
            let window: Vec<&RateCard> = cards[..=i]
                .iter()
                .filter(|c| c.computed_at > card.computed_at - rules.cut_period)
                .collect();
            let highest = window.iter().map(|c| c.parts.base.get()).max().unwrap();
            prop_assert!(base >= (Decimal::ONE - rules.max_cut) * highest, "{base} vs {highest}");
            // a cut only after a cut was pending for the notice period
            if i > 0 && base < cards[i - 1].parts.base.get() {
                let announced = cards[..i].iter().any(|c| {
                    c.state.pending_cut.is_some() && c.computed_at <= card.computed_at - rules.notice
                });
                prop_assert!(announced, "cut at {} without notice", card.computed_at);
            }
        }
    }

    #[test]
    fn guaranteed_until_is_honoured(product in product(), steps in steps()) {
        let policy = policy(Mode::Boost);
        let cards = run(&policy, &product, &steps, &[]);
        for pair in cards.windows(2) {
            let (prev, next) = (&pair[0], &pair[1]);
            if let Some(until) = prev.guaranteed_until
                && next.computed_at < until
            {
                prop_assert!(next.parts.boost >= prev.parts.boost, "boost withdrawn before {until}");
                prop_assert!(next.guaranteed_until >= prev.guaranteed_until);
            }
        }
    }

    #[test]
    fn an_incentive_is_guaranteed_until_its_end(
        product in product(),
        steps in steps(),
        overrides in overrides(),
        boost in any::<bool>(),
        hours in 1i64..400,
        bonus in 1i64..500,
    ) {
        let policy = policy(if boost { Mode::Boost } else { Mode::Direct });
        let rules = &policy.category(&product.category).flash;
        let mut incentive = Incentive::open("inc".into(), sku(), product.category.clone(), rules, t0());
        incentive.ends_at = t0() + TimeDelta::hours(hours);
        incentive.bonus = Rate::new(dec(bonus, 4)).unwrap();
        let cards = run_with(&policy, &product, &steps, &overrides, Some(&incentive));
        for card in &cards {
            if card.computed_at < incentive.ends_at {
                // whatever stock does, the bonus stays in the rate for the whole window
                prop_assert_eq!(card.parts.incentive, incentive.bonus.get());
                let until = card.guaranteed_until;
                prop_assert!(until.is_some_and(|u| u > card.computed_at && u <= incentive.ends_at), "{until:?}");
                if !boost {
                    prop_assert_eq!(until, Some(incentive.ends_at));
                }
            } else {
                prop_assert_eq!(card.parts.incentive, Decimal::ZERO);
            }
        }
        for pair in cards.windows(2) {
            let (prev, next) = (&pair[0], &pair[1]);
            if let Some(until) = prev.guaranteed_until
                && next.computed_at < until
            {
                prop_assert!(next.parts.incentive >= prev.parts.incentive, "bonus withdrawn before {until}");
            }
            // a lapsing boost is not guaranteed; one under its own guarantee is
            if let Some(until) = prev.state.boost_guaranteed_until
                && next.computed_at < until
            {
                prop_assert!(next.parts.boost >= prev.parts.boost, "boost withdrawn before {until}");
            }
        }
    }

    #[test]
    fn coming_into_stock_takes_the_undamped_policy_rate(
        product in product(),
        steps in steps(),
        overrides in overrides(),
        no_product in any::<bool>(),
        minutes in 0i64..600,
        available in 1i64..50_000,
        velocity in proptest::option::weighted(0.9, 0i64..20_000),
    ) {
        let policy = policy(Mode::Direct);
        let sku = sku();
        let mut cards = run(&policy, &product, &steps, &overrides);
        let mut now = cards.last().unwrap().computed_at;
        // the SKU leaves the policy's stock-derived states: no product data, or no stock
        let empty = Step { hours: 0, available: Decimal::ZERO, velocity: None };
        let mut left = inputs(&sku, &product, &empty, &overrides, None);
        if no_product {
            left.product = None;
            cards.clear();
        }
        let gap = compute(&policy, &left, cards.last(), now);
        now += TimeDelta::minutes(minutes);
        let back = Step { hours: 0, available: Decimal::from(available), velocity: velocity.map(|v| dec(v, 2)) };
        let inputs = inputs(&sku, &product, &back, &overrides, None);
        let next = compute(&policy, &inputs, Some(&gap), now);
        let undamped = compute(&policy, &inputs, None, now);
        prop_assert_eq!(next.effective_rate, undamped.effective_rate);
        prop_assert_eq!(next.parts, undamped.parts);
        prop_assert_eq!(&next.reasons, &undamped.reasons);
        prop_assert_eq!(next.state.band, undamped.state.band);
    }

    #[test]
    fn compute_is_deterministic(product in product(), steps in steps(), overrides in overrides(), boost in any::<bool>()) {
        let policy = policy(if boost { Mode::Boost } else { Mode::Direct });
        prop_assert_eq!(run(&policy, &product, &steps, &overrides), run(&policy, &product, &steps, &overrides));
    }

    #[test]
    fn direct_first_cards_are_monotonic_in_stock(product in product(), a in 0i64..100_000, b in 0i64..100_000, v in 1i64..10_000) {
        let policy = policy(Mode::Direct);
        let (low, high) = (a.min(b), a.max(b));
        let rate = |available: i64| {
            let step = Step { hours: 0, available: Decimal::from(available), velocity: Some(dec(v, 2)) };
            run(&policy, &product, &[step], &[])[0].effective_rate
        };
        // out of stock uses the base rate, so compare in-stock levels only
        prop_assume!(low > 0);
        prop_assert!(rate(low) <= rate(high));
    }
}

/// Stock events for a few SKUs and locations, in ERP order.
fn stock_history() -> impl Strategy<Value = Vec<Event>> {
    proptest::collection::vec((0usize..3, 0usize..2, 0i64..500, 0i64..50, 1i64..48), 1..40)
        .prop_map(|rows| {
            let mut seq = [[0u64; 2]; 3];
            let mut clock = t0();
            let mut events: Vec<Event> = ["A", "B", "C"]
                .iter()
                .map(|s| Event::ProductUpserted {
                    sku: Sku::new(*s).unwrap(),
                    product: Product {
                        category: "home".into(),
                        price: Money::new(Decimal::from(50)).unwrap(),
                        unit_cost: Money::new(Decimal::from(20)).unwrap(),
                        base_rate: None,
                    },
                    at: t0(),
                    received_at: None,
                })
                .collect();
            for (s, loc, on_hand, reserved, hours) in rows {
                seq[s][loc] += 1;
                clock += TimeDelta::hours(hours);
                events.push(Event::StockObserved {
                    sku: Sku::new(["A", "B", "C"][s]).unwrap(),
                    location: ["dc-east", "dc-west"][loc].into(),
                    on_hand: Quantity::new(Decimal::from(on_hand)).unwrap(),
                    reserved: Quantity::new(Decimal::from(reserved)).unwrap(),
                    sequence: seq[s][loc],
                    as_of: clock,
                    erp_velocity: None,
                    received_at: None,
                });
            }
            events.push(Event::Tick {
                at: clock + TimeDelta::hours(1),
                sku: None,
            });
            events
        })
}

/// The history delivered with duplicates and in a shuffled order.
fn redelivered() -> impl Strategy<Value = (Vec<Event>, Vec<Event>)> {
    stock_history().prop_flat_map(|events| {
        let n = events.len();
        (
            Just(events),
            proptest::collection::vec(0..n, 0..n),
            Just(()).prop_perturb(|_, rng| rng),
        )
            .prop_map(|(events, dups, mut rng)| {
                let mut delivered = events.clone();
                delivered.extend(dups.into_iter().map(|i| events[i].clone()));
                // Fisher–Yates with the proptest RNG, so failures shrink and replay.
                for i in (1..delivered.len()).rev() {
                    let j = (rand_u64(&mut rng) % (i as u64 + 1)) as usize;
                    delivered.swap(i, j);
                }
                (events, delivered)
            })
    })
}

fn rand_u64(rng: &mut proptest::test_runner::TestRng) -> u64 {
    rng.next_u64()
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(128))]

    #[test]
    fn replay_is_deterministic(events in stock_history()) {
        let policy = Policy::example();
        prop_assert_eq!(replay(&policy, &events), replay(&policy, &events));
    }

    #[test]
    fn replay_converges_under_duplicates_and_reordering((events, delivered) in redelivered()) {
        let policy = Policy::example();
        prop_assert_eq!(replay(&policy, &events), replay(&policy, &delivered));
    }

    #[test]
    fn stock_state_converges_in_any_arrival_order((events, delivered) in redelivered()) {
        let policy = Policy::example();
        let in_order = replay_in_arrival_order(&policy, &events);
        let shuffled = replay_in_arrival_order(&policy, &delivered);
        prop_assert_eq!(in_order.states().len(), shuffled.states().len());
        for (sku, state) in in_order.states() {
            let other = &shuffled.states()[sku];
            prop_assert_eq!(&state.stock, &other.stock);
            prop_assert_eq!(state.available, other.available);
            prop_assert_eq!(&state.product, &other.product);
        }
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(256))]

    /// The bonus booked against a spend budget is exactly what the incentive added to the
    /// published rate: the rate with it less the rate without it, after cap and margin guard.
    #[test]
    fn paid_bonus_is_what_the_incentive_adds_to_the_rate(
        product in product(),
        steps in steps(),
        boost in any::<bool>(),
        bonus in 1i64..3000,
    ) {
        let policy = policy(if boost { Mode::Boost } else { Mode::Direct });
        let rules = &policy.category(&product.category).flash;
        let mut incentive = Incentive::open("inc".into(), sku(), product.category.clone(), rules, t0());
        incentive.ends_at = t0() + TimeDelta::days(365);
        incentive.bonus = Rate::new(dec(bonus, 4)).unwrap();
        let with = run_with(&policy, &product, &steps, &[], Some(&incentive));
        let without = run(&policy, &product, &steps, &[]);
        for (with, without) in with.iter().zip(&without) {
            // the incentive does not feed back into the policy part
            prop_assert_eq!(with.state.policy_rate, without.state.policy_rate);
            let before = with.parts.base.get() + with.parts.inventory_adjustment + with.parts.boost;
            let paid = paid_bonus(&policy, &product, before, incentive.bonus);
            prop_assert!(paid <= incentive.bonus);
            prop_assert_eq!(
                paid.get(),
                with.effective_rate.get() - without.effective_rate.get(),
                "card with {:?}, without {:?}", with, without
            );
        }
    }
}

/// One booked reading: units sold (whole units), price in cents, bonus paid in basis points.
fn sales() -> impl Strategy<Value = Vec<(i64, i64, i64)>> {
    proptest::collection::vec((0i64..2_000, 1i64..50_000, 0i64..400), 1..30)
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(256))]

    /// Whatever steps the ERP reports in, the incentive closes on the first reading that
    /// reaches a budget, never later, and the overshoot it reports is exactly how far that
    /// reading went past the budget; spend is the bonus paid, never the nominal one.
    #[test]
    fn a_budget_closes_on_the_reading_that_reaches_it_and_shows_the_overshoot(
        sales in sales(),
        budget_units in 1i64..5_000,
        budget_spend in 1i64..500_000,
        bonus in 1i64..400,
    ) {
        use ratemesh_core::{CloseReason, Decision, IncentiveInputs, IncentiveTrack, decide};
        let policy = policy(Mode::Direct);
        let mut rules = policy.category("home").flash.clone();
        rules.budget_units = Quantity::new(Decimal::from(budget_units)).unwrap();
        rules.budget_spend = Money::new(dec(budget_spend, 2)).unwrap();
        rules.bonus = Rate::new(dec(bonus, 4)).unwrap();
        rules.exit_cover = ratemesh_core::DaysOfCover::ZERO;
        let mut track = IncentiveTrack {
            active: Some(Incentive::open("inc".into(), sku(), "home".into(), &rules, t0())),
            ..IncentiveTrack::default()
        };
        let inputs = IncentiveInputs {
            available: Quantity::new(Decimal::from(1_000_000)).unwrap(),
            velocity: Some(Velocity::new(Decimal::ONE).unwrap()),
            price: Some(Money::new(Decimal::ONE).unwrap()),
            report_interval: None,
        };
        let (mut units, mut spend) = (Decimal::ZERO, Decimal::ZERO);
        for (sold, price, paid) in sales {
            let inc = track.active.as_mut().unwrap();
            let paid = Rate::new(dec(paid, 4)).unwrap();
            inc.record_sale(Quantity::new(Decimal::from(sold)).unwrap(), Money::new(dec(price, 2)).unwrap(), paid);
            units += Decimal::from(sold);
            spend += Decimal::from(sold) * dec(price, 2) * paid.min(rules.bonus).get();
            prop_assert_eq!(inc.units_sold.get(), units);
            prop_assert_eq!(inc.spent.get(), spend);
            prop_assert_eq!(inc.units_over_budget().get(), (units - Decimal::from(budget_units)).max(Decimal::ZERO));
            prop_assert_eq!(inc.spend_over_budget().get(), (spend - dec(budget_spend, 2)).max(Decimal::ZERO));
            let reached = units >= Decimal::from(budget_units) || spend >= dec(budget_spend, 2);
            let decision = decide(&track, &rules, &inputs, t0() + TimeDelta::hours(1));
            if reached {
                prop_assert_eq!(decision, Decision::Close { reason: CloseReason::BudgetExhausted });
                break;
            }
            prop_assert!(!matches!(decision, Decision::Close { .. }), "{decision:?}");
        }
    }
}
