//! Throughput of `compute` on one core: rate cards per second for 1,000,000 SKUs.
//!
//! Run with `cargo run --release -p ratemesh-core --example bench_compute`. It builds a
//! million SKUs spread over the example policy's categories with varied stock, velocity
//! and a few overrides and incentives, then times three passes: first cards (no previous
//! card), a recompute two hours later from those cards after stock moved (bands, damping,
//! hold and hysteresis in play), and the same recompute in boost mode. A benchmark, not a test: it never fails on
//! time.

use std::hint::black_box;
use std::time::Instant;

use chrono::{TimeDelta, TimeZone, Utc};
use ratemesh_core::overrides::{OverrideKind, OverrideScope};
use ratemesh_core::{
    Incentive, Mode, Money, Override, Policy, Product, Quantity, Rate, RateCard, RateInputs, Sku,
    Velocity, compute,
};
use rust_decimal::Decimal;

const SKUS: usize = 1_000_000;

struct Row {
    sku: Sku,
    product: Product,
    available: Quantity,
    velocity: Option<Velocity>,
    overrides: Vec<Override>,
    incentive: Option<Incentive>,
}

impl Row {
    fn inputs(&self) -> RateInputs<'_> {
        RateInputs {
            sku: &self.sku,
            product: Some(&self.product),
            available: self.available,
            velocity: self.velocity,
            overrides: &self.overrides,
            category_overrides: &[],
            incentive: self.incentive.as_ref(),
        }
    }
}

/// A small deterministic generator, so every run measures the same inputs.
struct Lcg(u64);

impl Lcg {
    fn next(&mut self) -> u64 {
        self.0 = self
            .0
            .wrapping_mul(6_364_136_223_846_793_005)
            .wrapping_add(1_442_695_040_888_963_407);
        self.0 >> 33
    }
}

fn rows(policy: &Policy) -> Vec<Row> {
    let categories = ["electronics", "apparel", "home", "toys"];
    let start = Utc
        .with_ymd_and_hms(2025, 10, 1, 0, 0, 0)
        .single()
        .unwrap_or_default();
    let mut rng = Lcg(42);
    (0..SKUS)
        .map(|i| {
            let sku = Sku::new(format!("SKU-{i:07}")).unwrap_or_else(|e| panic!("bench sku: {e}"));
            let category = categories[i % categories.len()];
            let price = Decimal::new(500 + (rng.next() % 100_000) as i64, 2);
            let cost = (price * Decimal::new(30 + (rng.next() % 60) as i64, 2)).round_dp(2);
            let available = Decimal::from(rng.next() % 5_000);
            let velocity = match rng.next() % 20 {
                0 => None,
                _ => Some(Velocity::clamped_from(Decimal::new(
                    (rng.next() % 10_000) as i64,
                    2,
                ))),
            };
            let overrides = if i % 100 == 0 {
                vec![Override {
                    id: format!("ov-{i}"),
                    scope: OverrideScope::Sku(sku.clone()),
                    kind: OverrideKind::Floor {
                        rate: Rate::new(Decimal::new(4, 2)).unwrap_or(Rate::ZERO),
                    },
                    starts_at: start,
                    ends_at: None,
                    reason: "bench".into(),
                    author: "bench".into(),
                }]
            } else {
                Vec::new()
            };
            let incentive = (i % 50 == 0).then(|| {
                Incentive::open(
                    format!("inc-{i}"),
                    sku.clone(),
                    category.into(),
                    &policy.category(category).flash,
                    start,
                )
            });
            Row {
                sku,
                product: Product {
                    category: category.into(),
                    price: Money::new(price).unwrap_or(Money::ZERO),
                    unit_cost: Money::new(cost).unwrap_or(Money::ZERO),
                    base_rate: None,
                },
                available: Quantity::new(available).unwrap_or(Quantity::ZERO),
                velocity,
                overrides,
                incentive,
            }
        })
        .collect()
}

trait ClampedFrom {
    fn clamped_from(d: Decimal) -> Self;
}

impl ClampedFrom for Velocity {
    fn clamped_from(d: Decimal) -> Self {
        Velocity::new(d.max(Decimal::ZERO)).unwrap_or(Velocity::ZERO)
    }
}

fn report(label: &str, n: usize, secs: f64) {
    println!(
        "{label:<38} {n} cards in {secs:.3} s = {:>10.0} cards/s ({:.0} ns/card)",
        n as f64 / secs,
        secs * 1e9 / n as f64
    );
}

fn main() {
    let direct = Policy::example();
    let mut boost_config = direct.config().clone();
    boost_config.program.mode = Some(Mode::Boost);
    let boost = Policy::from_config(&boost_config).unwrap_or_else(|e| panic!("boost policy: {e}"));

    let build = Instant::now();
    let mut rows = rows(&direct);
    println!(
        "built {} SKUs in {:.2} s",
        rows.len(),
        build.elapsed().as_secs_f64()
    );
    let now = Utc
        .with_ymd_and_hms(2025, 10, 2, 0, 0, 0)
        .single()
        .unwrap_or_default();
    let later = now + TimeDelta::hours(2);

    let started = Instant::now();
    let mut cards: Vec<RateCard> = rows
        .iter()
        .map(|r| compute(&direct, &r.inputs(), None, now))
        .collect();
    report(
        "direct, first cards",
        cards.len(),
        started.elapsed().as_secs_f64(),
    );

    // Stock moves before the recompute (untimed), so bands, damping and hold act.
    let mut rng = Lcg(7);
    for row in &mut rows {
        let moved = Decimal::from(rng.next() % 5_000);
        row.available = Quantity::new(moved).unwrap_or(Quantity::ZERO);
    }

    let started = Instant::now();
    for (row, card) in rows.iter().zip(cards.iter_mut()) {
        *card = compute(&direct, &row.inputs(), Some(card), later);
    }
    report(
        "direct, recompute from previous",
        cards.len(),
        started.elapsed().as_secs_f64(),
    );
    black_box(&cards);

    let mut boost_cards: Vec<RateCard> = rows
        .iter()
        .map(|r| compute(&boost, &r.inputs(), None, now))
        .collect();
    let started = Instant::now();
    for (row, card) in rows.iter().zip(boost_cards.iter_mut()) {
        *card = compute(&boost, &row.inputs(), Some(card), later);
    }
    report(
        "boost, recompute from previous",
        boost_cards.len(),
        started.elapsed().as_secs_f64(),
    );
    let changed = cards.iter().filter(|c| c.version > 1).count();
    println!(
        "{changed} of {} direct-mode cards changed rate on recompute",
        cards.len()
    );
    black_box(&boost_cards);
}
