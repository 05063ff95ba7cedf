//! The shipped sample season replayed under the example policy and the sample candidate,
//! checked against a direct computation written here: walk the readings in time order,
//! infer units sold from depletion, take the rate in force from core's own replay just
//! before each reading, multiply by the price from the product file. Each policy's own
//! time-driven recomputes (core's timer rule) and flash incentives (core's decide and
//! select, budgets booked from depletion) run in the same walk, one policy at a time.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

use chrono::{DateTime, TimeDelta, TimeZone, Utc};
use ratemesh_core::incentive::{
    ActiveCounts, Candidate, Decision, IncentiveInputs, IncentiveTrack, decide, paid_bonus,
    rate_before_incentive, select,
};
use ratemesh_core::replay::Replay;
use ratemesh_core::timers::next_recompute;
use ratemesh_core::{Event, Policy, Quantity, Rate, ReasonCode, Sku};
use ratemesh_whatif::history::{HistoryError, Location};
use ratemesh_whatif::report::Figures;
use ratemesh_whatif::season::{SeasonSpec, write_season};
use ratemesh_whatif::{
    HistoryOptions, WhatIfOptions, load_history, load_policy, render_table, run,
};
use rust_decimal::Decimal;
use rust_decimal_macros::dec;

fn sample() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("sample")
}

fn options() -> HistoryOptions {
    HistoryOptions {
        max_gap: TimeDelta::days(1),
        now: Utc.with_ymd_and_hms(2026, 1, 1, 0, 0, 0).unwrap(),
    }
}

/// One step of the direct walk: when, kind (product, stock, tick), SKU, sequence, the
/// history event (none for a tick), and the policy a tick is for.
type Step<'a> = (DateTime<Utc>, u8, String, u64, Option<&'a Event>, usize);

/// What the test expects for one policy, computed without the engine.
#[derive(Debug, Default, Clone, PartialEq)]
struct Expected {
    units: Decimal,
    revenue: Decimal,
    spend: [Decimal; 2],
    margin: [Decimal; 2],
    scarce: [Decimal; 2],
    overstock: [Decimal; 2],
    rate_changes: [u64; 2],
    by_band: [BTreeMap<String, Decimal>; 2],
    opened: [u64; 2],
    incentive_spend: [Decimal; 2],
    estimated_units: Decimal,
}

type SkuTrack = (IncentiveTrack, Option<DateTime<Utc>>, Option<TimeDelta>);

/// One policy's walk: its replay, its timers and its incentives, with what they changed
/// by category.
struct Direct<'p> {
    policy: &'p Policy,
    replay: Replay,
    next: BTreeMap<Sku, DateTime<Utc>>,
    /// (due, 0: recompute / 1: incentive expiry, SKU).
    timers: BTreeSet<(DateTime<Utc>, u8, Sku)>,
    /// Per SKU: its incentive track, last reading and the gap before it.
    tracks: BTreeMap<Sku, SkuTrack>,
    open: ActiveCounts,
    serial: u64,
    rate_changes: BTreeMap<String, u64>,
    opened: BTreeMap<String, u64>,
    incentive_spend: BTreeMap<String, Decimal>,
    timers_fired: u64,
}

impl<'p> Direct<'p> {
    fn new(policy: &'p Policy) -> Self {
        Direct {
            policy,
            replay: Replay::new(),
            next: BTreeMap::new(),
            timers: BTreeSet::new(),
            tracks: BTreeMap::new(),
            open: ActiveCounts::default(),
            serial: 0,
            rate_changes: BTreeMap::new(),
            opened: BTreeMap::new(),
            incentive_spend: BTreeMap::new(),
            timers_fired: 0,
        }
    }

    fn category(&self, sku: &Sku) -> String {
        self.replay.states()[sku]
            .product
            .as_ref()
            .unwrap()
            .category
            .clone()
    }

    /// Folds a SKU's event, counts a rate change, and schedules its next recompute.
    fn apply(&mut self, sku: &Sku, event: &Event) {
        let before = self.replay.cards().get(sku).map(|c| c.effective_rate);
        if self.replay.apply(self.policy, event) != ratemesh_core::Applied::Applied {
            return;
        }
        let card = &self.replay.cards()[sku];
        if before.is_some_and(|b| b != card.effective_rate) {
            *self.rate_changes.entry(self.category(sku)).or_default() += 1;
        }
        let next = next_recompute(self.policy, &self.replay.states()[sku], card);
        if next != self.next.get(sku).copied() {
            if let Some(at) = next {
                self.timers.insert((at, 0, sku.clone()));
                self.next.insert(sku.clone(), at);
            } else {
                self.next.remove(sku);
            }
        }
    }

    /// A peak window edge: every SKU recomputed.
    fn tick_all(&mut self, at: DateTime<Utc>) {
        let before: BTreeMap<_, _> = self
            .replay
            .cards()
            .iter()
            .map(|(s, c)| (s.clone(), c.effective_rate))
            .collect();
        self.replay
            .apply(self.policy, &Event::Tick { at, sku: None });
        let skus: Vec<Sku> = self.replay.cards().keys().cloned().collect();
        for sku in skus {
            if before[&sku] != self.replay.cards()[&sku].effective_rate {
                *self.rate_changes.entry(self.category(&sku)).or_default() += 1;
            }
            let card = &self.replay.cards()[&sku];
            let next = next_recompute(self.policy, &self.replay.states()[&sku], card);
            if next != self.next.get(&sku).copied() {
                if let Some(at) = next {
                    self.timers.insert((at, 0, sku.clone()));
                    self.next.insert(sku, at);
                } else {
                    self.next.remove(&sku);
                }
            }
        }
    }

    /// Runs the timers due before `t` (and at `t` when `inclusive`).
    fn fire(&mut self, t: DateTime<Utc>, inclusive: bool) {
        while let Some((at, kind, sku)) = self.timers.first().cloned() {
            if at > t || (at == t && !inclusive) {
                return;
            }
            self.timers.pop_first();
            if kind == 0 {
                self.timers_fired += 1;
                let tick = Event::Tick {
                    at,
                    sku: Some(sku.clone()),
                };
                self.apply(&sku, &tick);
            } else if self.tracks[&sku]
                .0
                .active
                .as_ref()
                .is_some_and(|i| i.ends_at <= at)
            {
                self.decide(&sku, at);
            }
        }
    }

    /// A stock reading: the units it sold booked against an open incentive, then a decision.
    fn reading(
        &mut self,
        sku: &Sku,
        as_of: DateTime<Utc>,
        sold: Decimal,
        rate_before: Option<Decimal>,
    ) {
        let category = self.category(sku);
        let product = self.replay.states()[sku].product.clone().unwrap();
        let (track, last, interval) = self.tracks.entry(sku.clone()).or_default();
        if let Some(l) = *last
            && as_of > l
        {
            *interval = Some(as_of - l);
        }
        *last = Some(last.map_or(as_of, |l| l.max(as_of)));
        if let Some(inc) = track.active.as_mut()
            && as_of >= inc.opened_at
            && sold > Decimal::ZERO
        {
            let paid = rate_before.map_or(Rate::ZERO, |r| {
                paid_bonus(self.policy, &product, r, inc.bonus)
            });
            let spent = inc.spent.get();
            inc.record_sale(Quantity::new(sold).unwrap(), product.price, paid);
            *self.incentive_spend.entry(category).or_default() += inc.spent.get() - spent;
        }
        self.decide(sku, as_of);
    }

    fn decide(&mut self, sku: &Sku, now: DateTime<Utc>) {
        let category = self.category(sku);
        let state = &self.replay.states()[sku];
        let (track, _, interval) = self.tracks.entry(sku.clone()).or_default();
        let rules = self.policy.category(&category).flash.clone();
        let inputs = IncentiveInputs {
            available: state.available,
            velocity: state.velocity.velocity(),
            price: state.product.as_ref().map(|p| p.price),
            report_interval: *interval,
        };
        let decision = decide(track, &rules, &inputs, now);
        if let Decision::Open { cover, .. } = decision {
            let candidate = Candidate {
                sku: sku.clone(),
                category: category.clone(),
                cover,
            };
            if select(&[candidate], &self.open, self.policy)
                .winners
                .is_empty()
            {
                return;
            }
        }
        let id = format!("direct-{}", self.serial);
        let Some(incentive) = track.apply(&decision, sku, &category, &rules, || id, now) else {
            return;
        };
        let event = match decision {
            Decision::Open { .. } => {
                self.serial += 1;
                self.open.program += 1;
                *self.open.per_category.entry(category.clone()).or_default() += 1;
                *self.opened.entry(category).or_default() += 1;
                self.timers.insert((incentive.ends_at, 1, sku.clone()));
                Event::IncentiveOpened { incentive, at: now }
            }
            Decision::Extend { .. } => {
                self.timers.insert((incentive.ends_at, 1, sku.clone()));
                Event::IncentiveChanged { incentive, at: now }
            }
            Decision::Close { reason } => {
                self.open.program -= 1;
                *self.open.per_category.get_mut(&category).unwrap() -= 1;
                Event::IncentiveClosed {
                    sku: sku.clone(),
                    id: incentive.id,
                    reason,
                    at: now,
                }
            }
            Decision::Nothing { .. } => return,
        };
        self.apply(sku, &event);
    }
}

#[test]
fn the_sample_season_report_matches_a_direct_computation() {
    let history = load_history(&sample().join("history"), &options()).expect("sample history");
    let baseline = load_policy(Path::new(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../core/policy.example.toml"
    )))
    .expect("example policy");
    let candidate = load_policy(&sample().join("candidate.toml")).expect("candidate policy");
    let elasticity = dec!(0.5);
    let report = run(
        &history,
        &baseline,
        &candidate,
        &WhatIfOptions {
            threads: 2,
            elasticity: Some(elasticity),
            ..WhatIfOptions::default()
        },
    );

    // Prices and categories straight from the product file.
    let products: serde_json::Value = serde_json::from_slice(
        &std::fs::read(sample().join("history/products-0000.json")).unwrap(),
    )
    .unwrap();
    let mut catalogue: BTreeMap<String, (String, Decimal, Decimal)> = BTreeMap::new();
    for p in products["products"].as_array().unwrap() {
        let d = |k: &str| p[k].as_str().unwrap().parse::<Decimal>().unwrap();
        catalogue.insert(
            p["sku"].as_str().unwrap().to_owned(),
            (
                p["category"].as_str().unwrap().to_owned(),
                d("price"),
                d("unit_cost"),
            ),
        );
    }

    let policies = [&baseline, &candidate];
    // Product data first, then readings in time order, SKU by SKU within an instant; and
    // for each policy, a recompute of every SKU when one of its peak windows opens or
    // closes (as the rates service's timers do), after the readings of that instant.
    let from = history.events().iter().map(Event::priced_at).min().unwrap();
    let until = history.events().iter().map(Event::priced_at).max().unwrap();
    let mut steps: Vec<Step<'_>> = Vec::new();
    for event in history.events() {
        let (rank, seq) = match event {
            Event::ProductUpserted { .. } => (0, 0),
            Event::StockObserved { sequence, .. } => (1, *sequence),
            other => panic!("the sample holds only products and stock, got {other:?}"),
        };
        let sku = event.sku().unwrap().to_string();
        steps.push((event.priced_at(), rank, sku, seq, Some(event), 0));
    }
    let mut edges = 0;
    for (k, policy) in policies.iter().enumerate() {
        for window in &policy.peak_windows {
            for at in [window.starts_at, window.ends_at] {
                if from <= at && at <= until {
                    steps.push((at, 2, String::new(), 0, None, k));
                    edges += 1;
                }
            }
        }
    }
    assert_eq!(
        edges, 4,
        "both policies' BFCM 2025 opens and closes within the sample"
    );
    steps.sort_by(|a, b| (a.0, a.1, &a.2, a.3, a.5).cmp(&(b.0, b.1, &b.2, b.3, b.5)));

    let mut walks = [Direct::new(&baseline), Direct::new(&candidate)];
    let mut last_on_hand: BTreeMap<String, Decimal> = BTreeMap::new();
    let mut expected: BTreeMap<String, Expected> = BTreeMap::new();
    let mut daily: BTreeMap<DateTime<Utc>, Decimal> = BTreeMap::new();
    for (at, _, _, _, event, k) in steps {
        for walk in &mut walks {
            walk.fire(at, false);
        }
        let Some(event) = event else {
            walks[k].tick_all(at);
            continue;
        };
        let sku = event.sku().unwrap().clone();
        let in_force: Vec<_> = walks
            .iter()
            .map(|w| w.replay.cards().get(&sku).cloned())
            .collect();
        for walk in &mut walks {
            walk.apply(&sku, event);
        }
        let e = expected
            .entry(catalogue[sku.as_str()].0.clone())
            .or_default();
        let (category, price, cost) = catalogue[sku.as_str()].clone();
        let Event::StockObserved {
            on_hand,
            reserved,
            location,
            as_of,
            ..
        } = event
        else {
            continue;
        };
        assert!(
            location.is_empty() && reserved.get().is_zero(),
            "one location, nothing reserved"
        );
        let now = on_hand.get();
        let previous = last_on_hand.insert(sku.to_string(), now);
        let sold = previous.map_or(Decimal::ZERO, |b| b - now);
        for (k, walk) in walks.iter_mut().enumerate() {
            let rate_before = in_force[k].as_ref().and_then(rate_before_incentive);
            walk.reading(&sku, *as_of, sold, rate_before);
        }
        let Some(before) = previous else {
            continue;
        };
        let units = before - now;
        if units <= Decimal::ZERO {
            continue;
        }
        let revenue = units * price;
        e.units += units;
        e.revenue += revenue;
        let rates: Vec<Decimal> = in_force
            .iter()
            .map(|c| c.as_ref().map_or(Decimal::ZERO, |c| c.effective_rate.get()))
            .collect();
        for k in 0..2 {
            let spend = revenue * rates[k];
            e.spend[k] += spend;
            e.margin[k] += units * (price - cost) - spend;
            let card = in_force[k].as_ref().unwrap();
            if card
                .reasons
                .iter()
                .any(|r| r.code() == ReasonCode::LowCover)
            {
                e.scarce[k] += spend;
            }
            if card
                .reasons
                .iter()
                .any(|r| r.code() == ReasonCode::Overstock)
            {
                e.overstock[k] += spend;
            }
            // The band by name, looked up here in the policy's own tables.
            let band = card.state.band.map_or("(none)".to_owned(), |b| {
                let settings = policies[k].category(&category);
                if b.table == 0 {
                    settings.bands.bands()[b.index as usize].name.clone()
                } else {
                    let i = b.table as usize - 1;
                    format!(
                        "{}/{}",
                        policies[k].peak_windows[i].name,
                        settings.peak_bands[i].bands()[b.index as usize].name
                    )
                }
            });
            *e.by_band[k].entry(band).or_default() += spend;
        }
        if rates[0] > Decimal::ZERO {
            let factor = (Decimal::ONE + elasticity * (rates[1] - rates[0]) / rates[0])
                .round_dp(ratemesh_whatif::engine::FACTOR_DECIMALS);
            e.estimated_units += units * factor.max(Decimal::ZERO);
        } else {
            e.estimated_units += units;
        }
        let day = event
            .priced_at()
            .date_naive()
            .and_hms_opt(0, 0, 0)
            .unwrap()
            .and_utc();
        *daily.entry(day).or_default() += revenue * rates[0];
    }

    for walk in &mut walks {
        walk.fire(until, true);
    }
    for (k, walk) in walks.iter().enumerate() {
        for (category, n) in &walk.rate_changes {
            expected.entry(category.clone()).or_default().rate_changes[k] += n;
        }
        for (category, n) in &walk.opened {
            expected.entry(category.clone()).or_default().opened[k] += n;
        }
        for (category, spend) in &walk.incentive_spend {
            expected
                .entry(category.clone())
                .or_default()
                .incentive_spend[k] += spend;
        }
    }

    let check = |name: &str, got: &Figures, want: &Expected| {
        assert_eq!(got.units_sold, want.units, "{name} units");
        assert_eq!(got.revenue, want.revenue, "{name} revenue");
        for (k, figures) in [&got.baseline, &got.candidate].into_iter().enumerate() {
            assert_eq!(figures.commission_spend, want.spend[k], "{name} spend {k}");
            assert_eq!(
                figures.margin_after_commission, want.margin[k],
                "{name} margin {k}"
            );
            assert_eq!(
                figures.scarce_spend, want.scarce[k],
                "{name} scarce spend {k}"
            );
            assert_eq!(
                figures.overstock_spend, want.overstock[k],
                "{name} overstock spend {k}"
            );
            assert_eq!(
                figures.rate_changes, want.rate_changes[k],
                "{name} rate changes {k}"
            );
            assert_eq!(
                figures.spend_by_band, want.by_band[k],
                "{name} spend by band {k}"
            );
            assert_eq!(
                figures.incentives_opened, want.opened[k],
                "{name} incentives opened {k}"
            );
            assert_eq!(
                figures.incentive_spend, want.incentive_spend[k],
                "{name} incentive spend {k}"
            );
        }
    };
    let mut program = Expected::default();
    assert_eq!(
        report.categories.keys().collect::<Vec<_>>(),
        expected.keys().collect::<Vec<_>>()
    );
    for (category, want) in &expected {
        check(category, &report.categories[category], want);
        program.units += want.units;
        program.revenue += want.revenue;
        program.estimated_units += want.estimated_units;
        for k in 0..2 {
            program.spend[k] += want.spend[k];
            program.margin[k] += want.margin[k];
            program.scarce[k] += want.scarce[k];
            program.overstock[k] += want.overstock[k];
            program.rate_changes[k] += want.rate_changes[k];
            program.opened[k] += want.opened[k];
            program.incentive_spend[k] += want.incentive_spend[k];
            for (band, spend) in &want.by_band[k] {
                *program.by_band[k].entry(band.clone()).or_default() += spend;
            }
        }
    }
    check("program", &report.program, &program);

    // The season is worth comparing: things sold, both kinds of band paid, and the
    // candidate pays differently.
    let p = &report.program;
    assert!(p.units_sold > dec!(10000), "{}", p.units_sold);
    assert!(p.baseline.scarce_spend > Decimal::ZERO);
    assert!(p.baseline.overstock_spend > Decimal::ZERO);
    assert_ne!(p.baseline.commission_spend, p.candidate.commission_spend);
    // Overstock opened incentives under both policies' rules, and they were paid.
    for figures in [&p.baseline, &p.candidate] {
        assert!(figures.incentives_opened > 0, "{figures:?}");
        assert!(figures.incentive_spend > Decimal::ZERO, "{figures:?}");
        assert!(figures.incentive_spend < figures.overstock_spend);
    }
    // Time alone moved rates: holds and damping steps ended between readings.
    let timer_driven = walks.iter().map(|w| w.timers_fired).sum::<u64>();
    assert!(timer_driven > 0);
    for figures in [&p.baseline, &p.candidate] {
        let by_band: Decimal = figures.spend_by_band.values().sum();
        assert_eq!(by_band, figures.commission_spend);
        assert!(
            figures
                .spend_by_band
                .keys()
                .any(|b| b.starts_with("bfcm-2025/")),
            "the BFCM table was in force: {:?}",
            figures.spend_by_band.keys()
        );
    }

    // The estimate is apart from the observed figures and labelled as one.
    let estimate = report.estimate.as_ref().expect("elasticity given");
    assert_eq!(estimate.kind, "estimate");
    assert_eq!(estimate.observed_units, p.units_sold);
    assert_eq!(estimate.estimated_candidate_units, program.estimated_units);

    // Spend per day is the same money, and BFCM shows in it.
    let series: BTreeMap<DateTime<Utc>, Decimal> = report
        .series
        .spend
        .iter()
        .map(|s| (s.at, s.baseline))
        .filter(|(_, v)| !v.is_zero())
        .collect();
    assert_eq!(report.series.bucket_seconds, 86_400);
    assert_eq!(series, daily);
    let mean = |from: (u32, u32), to: (u32, u32)| {
        let a = Utc.with_ymd_and_hms(2025, from.0, from.1, 0, 0, 0).unwrap();
        let b = Utc.with_ymd_and_hms(2025, to.0, to.1, 0, 0, 0).unwrap();
        let days: Vec<_> = daily.range(a..b).map(|(_, v)| *v).collect();
        days.iter().sum::<Decimal>() / Decimal::from(days.len())
    };
    let ordinary = mean((11, 10), (11, 25));
    let peak = mean((11, 28), (12, 1));
    assert!(
        peak > ordinary * dec!(2),
        "peak {peak} vs ordinary {ordinary}"
    );

    // Per-SKU figures add up to the program, and the top SKUs have rate series.
    let mut total = Figures::default();
    for s in &report.skus {
        total.units_sold += s.figures.units_sold;
        total.baseline.commission_spend += s.figures.baseline.commission_spend;
    }
    assert_eq!(total.units_sold, p.units_sold);
    assert_eq!(total.baseline.commission_spend, p.baseline.commission_spend);
    assert_eq!(report.series.top_skus.len(), 5);
    assert_eq!(report.series.top_skus[0].sku, report.skus[0].sku);
    assert!(report.series.top_skus[0].points.len() > 1);

    // JSON for scripts carries money as decimal strings; the table shows the program.
    let json = serde_json::to_value(&report).unwrap();
    assert_eq!(
        json["program"]["baseline"]["commission_spend"],
        serde_json::Value::String(p.baseline.commission_spend.to_string())
    );
    let table = render_table(&report);
    assert!(table.contains("gaps: none"), "{table}");
    assert!(
        table.contains(&format!("{:.2}", p.baseline.commission_spend.round_dp(2))),
        "{table}"
    );
    assert!(table.contains("ESTIMATE (not observed)"), "{table}");
    assert!(table.contains("bfcm-2025/scarce"), "{table}");
}

#[test]
fn the_shipped_sample_is_what_the_generator_writes() {
    let dir = tempfile::tempdir().unwrap();
    let written = write_season(&SeasonSpec::default(), dir.path()).unwrap();
    let shipped = sample().join("history");
    let mut names: Vec<_> = std::fs::read_dir(&shipped)
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .collect();
    names.sort();
    assert_eq!(names.len(), written.files);
    for name in names {
        assert_eq!(
            std::fs::read(shipped.join(&name)).unwrap(),
            std::fs::read(dir.path().join(&name)).unwrap(),
            "{name:?} differs from the generator's output"
        );
    }
}

fn small_season(dir: &Path) {
    let spec = SeasonSpec {
        skus: 12,
        days: 6,
        ..SeasonSpec::default()
    };
    write_season(&spec, dir).unwrap();
}

#[test]
fn bad_rows_name_file_line_or_item_and_field_and_nothing_is_replayed() {
    let dir = tempfile::tempdir().unwrap();
    small_season(dir.path());
    // Line 5 of a CSV push: a negative count.
    let csv = dir.path().join("stock-0003.csv");
    let text = std::fs::read_to_string(&csv).unwrap();
    let mut lines: Vec<String> = text.lines().map(str::to_owned).collect();
    let mut cells: Vec<String> = lines[4].split(',').map(str::to_owned).collect();
    cells[2] = "-3".into();
    lines[4] = cells.join(",");
    std::fs::write(&csv, lines.join("\n") + "\n").unwrap();
    // Item 2 of a JSON push: a count that is not a number.
    let json = dir.path().join("stock-0007.json");
    let text = std::fs::read_to_string(&json).unwrap();
    let mut lines: Vec<String> = text.lines().map(str::to_owned).collect();
    let at = lines[3].find("\"on_hand\":").unwrap() + "\"on_hand\":".len();
    let end = at + lines[3][at..].find(',').unwrap();
    lines[3].replace_range(at..end, "\"lots\"");
    std::fs::write(&json, lines.join("\n") + "\n").unwrap();

    let err = load_history(dir.path(), &options()).expect_err("bad rows");
    let HistoryError::Invalid(problems) = &err else {
        panic!("expected invalid rows, got {err}");
    };
    assert_eq!(problems.len(), 2, "{err}");
    assert_eq!(problems[0].file, "stock-0003.csv");
    assert_eq!(problems[0].location, Location::Line(5));
    assert_eq!(problems[0].field.as_deref(), Some("on_hand"));
    assert_eq!(problems[1].file, "stock-0007.json");
    assert_eq!(problems[1].location, Location::Item(2));
    assert_eq!(problems[1].field.as_deref(), Some("on_hand"));
    let text = err.to_string();
    assert!(text.contains("nothing replayed"), "{text}");
    assert!(
        text.contains("stock-0003.csv line 5 field on_hand: must be at least 0"),
        "{text}"
    );
    assert!(
        text.contains("stock-0007.json item 2 field on_hand"),
        "{text}"
    );

    // A misnamed file is refused too, rather than left out.
    let dir = tempfile::tempdir().unwrap();
    small_season(dir.path());
    std::fs::write(dir.path().join("counts.csv"), "sku\n").unwrap();
    let err = load_history(dir.path(), &options()).expect_err("misnamed file");
    assert!(
        err.to_string().contains("counts.csv: not a history file"),
        "{err}"
    );
}

#[test]
fn a_bad_policy_file_names_the_key() {
    let dir = tempfile::tempdir().unwrap();
    let candidate = std::fs::read_to_string(sample().join("candidate.toml")).unwrap();
    let path = dir.path().join("candidate.toml");

    let out_of_range = candidate.replacen(
        "cap = \"0.20\"\nmargin_share = \"0.50\"",
        "cap = \"1.5\"\nmargin_share = \"0.50\"",
        1,
    );
    assert_ne!(out_of_range, candidate);
    std::fs::write(&path, out_of_range).unwrap();
    let err = load_policy(&path).expect_err("cap out of range");
    assert_eq!(err.key(), Some("categories.apparel.cap"));
    let text = err.to_string();
    assert!(text.contains("candidate.toml"), "{text}");
    assert!(
        text.contains("categories.apparel.cap: must be between 0 and 1, got 1.5"),
        "{text}"
    );

    std::fs::write(
        &path,
        candidate.replacen("max_step = \"0.02\"", "max_stepp = \"0.02\"", 1),
    )
    .unwrap();
    let err = load_policy(&path).expect_err("misspelt key");
    assert_eq!(err.key(), Some("defaults.max_stepp"));
    assert!(err.to_string().contains("max_stepp"), "{err}");

    assert!(load_policy(&dir.path().join("missing.toml")).is_err());
    assert!(load_policy(&sample().join("candidate.toml")).is_ok());
}

#[test]
fn a_gap_in_history_is_reported() {
    let dir = tempfile::tempdir().unwrap();
    small_season(dir.path());
    let complete = load_history(dir.path(), &options()).expect("history");
    assert!(complete.summary().gaps.is_empty());
    // Counts are every 12 hours: without pushes 5 to 8 nothing arrives for 2.5 days.
    for n in 5..=8 {
        let csv = dir.path().join(format!("stock-{n:04}.csv"));
        let json = dir.path().join(format!("stock-{n:04}.json"));
        std::fs::remove_file(if csv.exists() { csv } else { json }).unwrap();
    }
    let history = load_history(dir.path(), &options()).expect("history");
    let at = |d: u32, h: u32| Utc.with_ymd_and_hms(2025, 11, d, h, 0, 0).unwrap();
    assert_eq!(history.summary().gaps.len(), 1);
    let gap = &history.summary().gaps[0];
    assert_eq!((gap.from, gap.until, gap.hours), (at(2, 12), at(5, 0), 60));
    // A longer allowance bridges it, because the caller said so.
    let lenient = HistoryOptions {
        max_gap: TimeDelta::days(3),
        ..options()
    };
    assert!(
        load_history(dir.path(), &lenient)
            .unwrap()
            .summary()
            .gaps
            .is_empty()
    );

    let policy = Policy::example();
    let report = run(&history, &policy, &policy, &WhatIfOptions::default());
    assert_eq!(report.history.gaps, vec![gap.clone()]);
    let table = render_table(&report);
    assert!(
        table.contains(
            "GAP: no stock data from 2025-11-02T12:00:00Z to 2025-11-05T00:00:00Z (60 h)"
        ),
        "{table}"
    );
}
