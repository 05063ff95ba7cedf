//! The what-if engine: a baseline and a candidate [`Policy`] folded over the same events
//! with [`Replay`] — the same fold, compute and pricing instants as the rates service —
//! and the commission each would have paid on what actually sold.
//!
//! **Sales.** Units sold are the depletion of a SKU's available stock (Σ over locations
//! of on hand − reserved, as the velocity estimate sees it) between consecutive readings;
//! a rise is a restock and sells nothing. They sold at the price in the SKU's product
//! data and under the rate in force just before the reading that revealed them (the card
//! partners had been given), so spend = units × price × that rate. Sales hidden by a
//! restock within one interval are not seen, as the live velocity estimate does not see
//! them.
//!
//! **Partitions.** A SKU's card depends only on its own events and on program- or
//! category-wide ones (ticks for all, category overrides). SKUs are dealt to one
//! partition per core; each partition replays its SKUs' events plus every wide event, in
//! the canonical order of [`ratemesh_core::replay()`], so each card is the one a single
//! replay of everything would give. When either policy's rules open flash incentives,
//! their concurrency limits couple every SKU: each policy then replays all SKUs in a
//! partition of its own (two cores' worth), and the two are joined.
//!
//! **Timers.** What the rates service does at a time rather than on an event is replayed
//! in each policy's own timeline, between the events, by the rule it schedules from
//! ([`ratemesh_core::timers`]): a SKU recomputed when a hold or a damping step ends, a
//! boost guarantee or announced cut falls due, or its incentive or override starts or
//! ends; a category's SKUs when a category override starts or ends; every SKU when a peak
//! window opens or closes ([`peak_edges`]).
//!
//! **Incentives.** Each policy opens its own flash incentives, decided as the incentives
//! service decides them ([`ratemesh_core::incentive::decide`] after every stock reading
//! and when a window ends, [`ratemesh_core::incentive::select`] against the incentives
//! open), with budgets booked from depletion at the bonus the rate carried. The
//! history's automatic incentives (what the live rules opened) are left out; a
//! merchandiser's own replay as they happened, under both policies, as do overrides.

use std::cmp::Reverse;
use std::collections::{BTreeMap, BinaryHeap, HashMap, HashSet};
use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use chrono::{DateTime, TimeDelta, Utc};
use ratemesh_core::card::BandPosition;
use ratemesh_core::incentive::{
    ActiveCounts, Candidate, Decision, IncentiveInputs, IncentiveTrack, decide, paid_bonus,
    rate_before_incentive, select,
};
use ratemesh_core::policy::config::Mode;
use ratemesh_core::replay::{Replay, canonical_order};
use ratemesh_core::timers::{category_recomputes, next_recompute};
use ratemesh_core::{
    Applied, Event, OverrideScope, Policy, Quantity, Rate, RateCard, ReasonCode, Sku,
};
use rust_decimal::Decimal;

use crate::history::History;
use crate::report::{
    ElasticityEstimate, Figures, PolicyLabel, RatePoint, RateSeries, Report, Series, SkuFigures,
    SpendPoint,
};

/// How a run is done and what it reports.
#[derive(Debug, Clone)]
pub struct WhatIfOptions {
    /// Worker threads; 0 means one per available core.
    pub threads: usize,
    /// An assumed elasticity of sell-through to commission, for the separate estimate.
    pub elasticity: Option<Decimal>,
    /// Length of a spend bucket in the time series.
    pub bucket: TimeDelta,
    /// How many SKUs (highest baseline spend) get a rate-over-time series.
    pub top_skus: usize,
}

impl Default for WhatIfOptions {
    fn default() -> Self {
        Self {
            threads: 0,
            elasticity: None,
            bucket: TimeDelta::days(1),
            top_skus: 5,
        }
    }
}

/// What a run is doing, for a progress display.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Phase {
    /// Both policies are folded over the events.
    Replaying,
    /// The partitions' figures are added up into the report.
    Reporting,
}

/// How far a run is: `done` of `total` events replayed. A program-wide event (a tick, a
/// category override) is replayed once per partition and counts once per partition.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Progress {
    /// What the run is doing.
    pub phase: Phase,
    /// Events replayed so far; never decreases from one call to the next.
    pub done: u64,
    /// Events the run replays in all.
    pub total: u64,
}

/// How the caller of [`run_with_progress`] follows a run and stops it.
pub struct Control<'a> {
    /// Called with the progress, from the worker threads, at most once per `interval`
    /// (and once at the start and at the end of each phase); calls never overlap.
    pub progress: &'a (dyn Fn(Progress) + Sync),
    /// Set to stop the run: the workers see it within one chunk of [`CHUNK`] events
    /// and the run ends with [`Cancelled`].
    pub cancelled: &'a AtomicBool,
    /// The least time between two progress calls.
    pub interval: Duration,
}

impl std::fmt::Debug for Control<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Control")
            .field("cancelled", &self.cancelled.load(Ordering::Relaxed))
            .field("interval", &self.interval)
            .finish_non_exhaustive()
    }
}

/// A run stopped through [`Control::cancelled`] before its report was complete: there is
/// no report, not a partial one.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("the what-if run was cancelled before it finished")]
pub struct Cancelled;

/// Events a worker replays between two looks at the progress and the cancellation flag:
/// large enough that following a run costs nothing measurable per event.
pub const CHUNK: usize = 4096;

/// The shared count of a followed run.
struct Tracker<'a> {
    control: &'a Control<'a>,
    total: u64,
    done: AtomicU64,
    started: Instant,
    /// Milliseconds since `started` of the last progress call.
    last_ms: AtomicU64,
    /// The last `done` reported; held while the callback runs, so calls do not overlap.
    reported: Mutex<u64>,
}

impl<'a> Tracker<'a> {
    fn new(control: &'a Control<'a>, total: u64) -> Self {
        Self {
            control,
            total,
            done: AtomicU64::new(0),
            started: Instant::now(),
            last_ms: AtomicU64::new(0),
            reported: Mutex::new(0),
        }
    }

    fn report(&self, phase: Phase) {
        let mut reported = self
            .reported
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        let done = self.done.load(Ordering::Relaxed).max(*reported);
        *reported = done;
        (self.control.progress)(Progress {
            phase,
            done,
            total: self.total,
        });
    }

    /// Counts `n` events replayed, reports when the interval has passed, and says whether
    /// the run goes on.
    fn advance(&self, n: usize) -> bool {
        self.done.fetch_add(n as u64, Ordering::Relaxed);
        let now = u64::try_from(self.started.elapsed().as_millis()).unwrap_or(u64::MAX);
        let last = self.last_ms.load(Ordering::Relaxed);
        let interval = u64::try_from(self.control.interval.as_millis()).unwrap_or(u64::MAX);
        if now.saturating_sub(last) >= interval
            && self
                .last_ms
                .compare_exchange(last, now, Ordering::Relaxed, Ordering::Relaxed)
                .is_ok()
        {
            self.report(Phase::Replaying);
        }
        !self.cancelled()
    }

    fn cancelled(&self) -> bool {
        self.control.cancelled.load(Ordering::Relaxed)
    }
}

const BASELINE: usize = 0;
/// Decimal places of the elasticity factor applied to units sold.
pub const FACTOR_DECIMALS: u32 = 6;
const CANDIDATE: usize = 1;

/// What a card in force says for the figures.
#[derive(Debug, Clone, Copy, Default)]
struct InForce {
    rate: Decimal,
    scarce: bool,
    overstock: bool,
    blocked: bool,
    band: Option<BandPosition>,
}

impl InForce {
    fn of(card: Option<&RateCard>) -> InForce {
        let Some(card) = card else {
            return InForce::default();
        };
        let has = |code: ReasonCode| card.reasons.iter().any(|r| r.code() == code);
        InForce {
            rate: card.effective_rate.get(),
            scarce: has(ReasonCode::LowCover),
            overstock: has(ReasonCode::Overstock),
            blocked: has(ReasonCode::BaseCutScheduled)
                || has(ReasonCode::BaseCutLimited)
                || has(ReasonCode::BoostGuaranteed),
            band: card.state.band,
        }
    }
}

/// The name of band `position` of `category` under `policy`: table 0 is the ordinary
/// table, table `i + 1` peak window `i`'s.
pub fn band_name(policy: &Policy, category: &str, position: Option<BandPosition>) -> String {
    let Some(position) = position else {
        return NO_BAND.to_owned();
    };
    let settings = policy.category(category);
    let (window, table) = match position.table {
        0 => (None, Some(&settings.bands)),
        t => {
            let i = t as usize - 1;
            (
                policy.peak_windows.get(i).map(|w| w.name.as_str()),
                settings.peak_bands.get(i),
            )
        }
    };
    let band = table
        .and_then(|t| t.get(position.index as usize))
        .map_or("?", |b| b.name.as_str());
    match window {
        Some(w) => format!("{w}/{band}"),
        None => band.to_owned(),
    }
}

/// The band key of spend made before any band applied.
pub const NO_BAND: &str = "(none)";

/// Per-SKU running totals.
#[derive(Debug, Default)]
struct SkuTotals {
    category: String,
    figures: Figures,
    points: Vec<RatePoint>,
    estimated_units: Decimal,
    estimated_spend: Decimal,
    estimated_margin: Decimal,
    /// Each sale, when the estimate is made after the partitions are joined.
    sales: Vec<Sale>,
}

/// What one partition found.
#[derive(Debug, Default)]
struct Partial {
    skus: BTreeMap<Sku, SkuTotals>,
    spend: BTreeMap<i64, [Decimal; 2]>,
    unpriced_units: Decimal,
}

struct Walk<'a> {
    policies: [&'a Policy; 2],
    /// Which policies this walk replays: both, or one when each policy has a partition of
    /// its own (its flash incentives couple all SKUs).
    active: [bool; 2],
    replays: [Replay; 2],
    elasticity: Option<Decimal>,
    /// Each sale's rate in force is kept for the estimate, which needs both policies' and
    /// is made once the two partitions are joined.
    keep_sales: bool,
    bucket_secs: i64,
    /// Per policy, the time-driven recomputes due, earliest first.
    timers: [Timers; 2],
    /// Per policy, each SKU's next recompute as last scheduled (as the rates service
    /// keeps it in the SKU's record, and schedules a timer only when it moves).
    next: [HashMap<Sku, DateTime<Utc>>; 2],
    /// Per policy, the flash incentives its rules open.
    incentives: [Incentives; 2],
    out: Partial,
}

/// A policy's time-driven steps, earliest first.
type Timers = BinaryHeap<Reverse<(DateTime<Utc>, Due)>>;

/// A time-driven step of one policy's replay.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
enum Due {
    /// Recompute one SKU (the rates service's `sku:` timer).
    Sku(Sku),
    /// Recompute the SKUs of a category (`cat:`).
    Category(String),
    /// The SKU's incentive window ends: extend or close it (the incentives service's
    /// expiry).
    Incentive(Sku),
}

/// One policy's flash incentives: each SKU's track and the count of those open.
#[derive(Debug, Default)]
struct Incentives {
    tracks: HashMap<Sku, Track>,
    counts: ActiveCounts,
    serial: u64,
}

/// What the incentives service keeps of a SKU.
#[derive(Debug, Default)]
struct Track {
    track: IncentiveTrack,
    last_report: Option<DateTime<Utc>>,
    interval: Option<TimeDelta>,
}

/// A stock reading both policies folded: what the incentives need of before it.
struct Reading {
    as_of: DateTime<Utc>,
    available_before: Decimal,
    rate_before: [Option<Decimal>; 2],
}

impl Walk<'_> {
    /// The first policy this walk replays: stock and product data fold the same way
    /// under any policy, so they are read from its replay.
    fn lead(&self) -> usize {
        if self.active[BASELINE] {
            BASELINE
        } else {
            CANDIDATE
        }
    }

    /// Folds a SKU's event into the replays of `only` (or every active one), records what
    /// changed, and returns what the incentives need when it was a stock reading of both.
    fn sku_event(&mut self, sku: &Sku, event: &Event, only: Option<usize>) -> Option<Reading> {
        let applies = [BASELINE, CANDIDATE].map(|k| self.active[k] && only.is_none_or(|o| o == k));
        let before = [
            InForce::of(self.replays[BASELINE].cards().get(sku)),
            InForce::of(self.replays[CANDIDATE].cards().get(sku)),
        ];
        let rate_before = [BASELINE, CANDIDATE].map(|k| {
            self.replays[k]
                .cards()
                .get(sku)
                .and_then(rate_before_incentive)
        });
        let lead = self.lead();
        let state = self.replays[lead].states().get(sku);
        let had_reading = state.is_some_and(|s| !s.stock.is_empty());
        let available_before = state.map_or(Decimal::ZERO, |s| s.available.get());
        let product = state.and_then(|s| s.product.clone());

        let mut applied = [false; 2];
        for k in [BASELINE, CANDIDATE] {
            if applies[k] {
                applied[k] = self.replays[k].apply(self.policies[k], event) == Applied::Applied;
            }
        }
        if !applied.contains(&true) {
            return None;
        }
        for k in [BASELINE, CANDIDATE] {
            if applied[k] {
                self.schedule(k, sku);
            }
        }
        let after = [
            self.replays[BASELINE].cards().get(sku),
            self.replays[CANDIDATE].cards().get(sku),
        ];
        let totals = self.out.skus.entry(sku.clone()).or_default();
        if let Some(p) = self.replays[lead]
            .states()
            .get(sku)
            .and_then(|s| s.product.as_ref())
        {
            totals.category.clone_from(&p.category);
        }
        let now = [InForce::of(after[0]), InForce::of(after[1])];
        for k in [BASELINE, CANDIDATE] {
            if now[k].blocked && !before[k].blocked {
                let figures = if k == BASELINE {
                    &mut totals.figures.baseline
                } else {
                    &mut totals.figures.candidate
                };
                figures.cuts_blocked += 1;
            }
        }
        let rates = [
            after[0].map(|c| c.effective_rate.get()),
            after[1].map(|c| c.effective_rate.get()),
        ];
        if totals
            .points
            .last()
            .is_none_or(|p| p.baseline != rates[0] || p.candidate != rates[1])
        {
            let at = after[only.unwrap_or(lead)]
                .map(|c| c.computed_at)
                .unwrap_or_else(|| event.priced_at());
            totals.points.push(RatePoint {
                at,
                baseline: rates[0],
                candidate: rates[1],
            });
        }

        let Event::StockObserved { as_of, .. } = event else {
            return None;
        };
        let reading = (only.is_none()).then_some(Reading {
            as_of: *as_of,
            available_before,
            rate_before,
        });
        if !had_reading {
            return reading;
        }
        let available_after = self.replays[lead]
            .states()
            .get(sku)
            .map_or(Decimal::ZERO, |s| s.available.get());
        let units = available_before - available_after;
        if units <= Decimal::ZERO {
            return reading;
        }
        let Some(product) = product else {
            self.out.unpriced_units += units;
            return reading;
        };
        let price = product.price.get();
        let cost = product.unit_cost.get();
        let revenue = units * price;
        let gross_margin = units * (price - cost);
        totals.figures.units_sold += units;
        totals.figures.revenue += revenue;
        let bucket = event.priced_at().timestamp().div_euclid(self.bucket_secs);
        let slot = self.out.spend.entry(bucket).or_default();
        for k in [BASELINE, CANDIDATE] {
            if !self.active[k] {
                continue;
            }
            let spend = revenue * before[k].rate;
            let figures = if k == BASELINE {
                &mut totals.figures.baseline
            } else {
                &mut totals.figures.candidate
            };
            figures.commission_spend += spend;
            figures.margin_after_commission += gross_margin - spend;
            if before[k].scarce {
                figures.scarce_spend += spend;
            }
            if before[k].overstock {
                figures.overstock_spend += spend;
            }
            let band = band_name(self.policies[k], &product.category, before[k].band);
            *figures.spend_by_band.entry(band).or_default() += spend;
            slot[k] += spend;
        }
        if self.keep_sales {
            totals.sales.push(Sale {
                units,
                price,
                cost,
                rate: before[lead].rate,
            });
        } else if let Some(e) = self.elasticity {
            let (units, spend, margin) = estimate(
                e,
                &Sale {
                    units,
                    price,
                    cost,
                    rate: before[BASELINE].rate,
                },
                before[CANDIDATE].rate,
            );
            totals.estimated_units += units;
            totals.estimated_spend += spend;
            totals.estimated_margin += margin;
        }
        reading
    }

    /// Schedules `sku`'s next time-driven recompute under policy `k` if it moved.
    fn schedule(&mut self, k: usize, sku: &Sku) {
        let replay = &self.replays[k];
        let (Some(state), Some(card)) = (replay.states().get(sku), replay.cards().get(sku)) else {
            return;
        };
        let next = next_recompute(self.policies[k], state, card);
        if next == self.next[k].get(sku).copied() {
            return;
        }
        match next {
            Some(at) => {
                self.next[k].insert(sku.clone(), at);
                self.timers[k].push(Reverse((at, Due::Sku(sku.clone()))));
            }
            None => {
                self.next[k].remove(sku);
            }
        }
    }

    /// Runs every time-driven step due before `t` (or at `t` too, when `inclusive`), in
    /// time order across both policies.
    fn fire_due(&mut self, t: DateTime<Utc>, inclusive: bool) {
        loop {
            let due = [BASELINE, CANDIDATE]
                .into_iter()
                .filter_map(|k| self.timers[k].peek().map(|Reverse((at, _))| (*at, k)))
                .filter(|(at, _)| *at < t || (inclusive && *at == t))
                .min();
            let Some((_, k)) = due else {
                return;
            };
            let Some(Reverse((at, due))) = self.timers[k].pop() else {
                return;
            };
            match due {
                Due::Sku(sku) => {
                    let tick = Event::Tick {
                        at,
                        sku: Some(sku.clone()),
                    };
                    self.sku_event(&sku, &tick, Some(k));
                }
                Due::Category(category) => {
                    let skus: Vec<Sku> = self.replays[k]
                        .states()
                        .iter()
                        .filter(|(_, s)| s.product.as_ref().is_some_and(|p| p.category == category))
                        .map(|(sku, _)| sku.clone())
                        .collect();
                    for sku in skus {
                        let tick = Event::Tick {
                            at,
                            sku: Some(sku.clone()),
                        };
                        self.sku_event(&sku, &tick, Some(k));
                    }
                }
                Due::Incentive(sku) => {
                    let ends = self.incentives[k]
                        .tracks
                        .get(&sku)
                        .and_then(|t| t.track.active.as_ref())
                        .map(|i| i.ends_at);
                    // An extension moved the end: this expiry is stale.
                    if ends.is_some_and(|ends| ends <= at) {
                        self.decide_incentive(k, &sku, at);
                    }
                }
            }
        }
    }

    /// What the incentives service does with a stock reading under policy `k`: books the
    /// units sold against an open incentive's budgets, then decides.
    fn incentive_reading(&mut self, k: usize, sku: &Sku, reading: &Reading, at: DateTime<Utc>) {
        let Some(state) = self.replays[k].states().get(sku) else {
            return;
        };
        let available_after = state.available.get();
        let product = state.product.as_ref();
        let track = self.incentives[k].tracks.entry(sku.clone()).or_default();
        if let Some(last) = track.last_report
            && reading.as_of > last
        {
            track.interval = Some(reading.as_of - last);
        }
        track.last_report = Some(
            track
                .last_report
                .map_or(reading.as_of, |l| l.max(reading.as_of)),
        );
        if let (Some(inc), Some(product)) = (track.track.active.as_mut(), product)
            && reading.as_of >= inc.opened_at
            && let Ok(sold) = Quantity::new(reading.available_before - available_after)
            && sold > Quantity::ZERO
        {
            let paid = reading.rate_before[k].map_or(Rate::ZERO, |before| {
                paid_bonus(self.policies[k], product, before, inc.bonus)
            });
            let spent = inc.spent.get();
            inc.record_sale(sold, product.price, paid);
            let spend = inc.spent.get() - spent;
            let totals = self.out.skus.entry(sku.clone()).or_default();
            let figures = if k == BASELINE {
                &mut totals.figures.baseline
            } else {
                &mut totals.figures.candidate
            };
            figures.incentive_spend += spend;
        }
        self.decide_incentive(k, sku, at);
    }

    /// Decides `sku`'s incentive under policy `k` at `now` and folds what changed into the
    /// policy's replay: an incentive opened (if the concurrency limits leave a slot),
    /// extended or closed.
    fn decide_incentive(&mut self, k: usize, sku: &Sku, now: DateTime<Utc>) {
        let policy = self.policies[k];
        let Some(state) = self.replays[k].states().get(sku) else {
            return;
        };
        let sim = &mut self.incentives[k];
        let track = sim.tracks.entry(sku.clone()).or_default();
        // A merchandiser's own incentive from the history holds the SKU's slot.
        if track.track.active.is_none() && state.incentive.is_some() {
            return;
        }
        let category = state
            .product
            .as_ref()
            .map_or(String::new(), |p| p.category.clone());
        let rules = policy.category(&category).flash.clone();
        let inputs = IncentiveInputs {
            available: state.available,
            velocity: state.velocity.velocity(),
            price: state.product.as_ref().map(|p| p.price),
            report_interval: track.interval,
        };
        let decision = decide(&track.track, &rules, &inputs, now);
        if let Decision::Open { cover, .. } = &decision {
            let candidate = Candidate {
                sku: sku.clone(),
                category: category.clone(),
                cover: *cover,
            };
            if select(&[candidate], &sim.counts, policy).winners.is_empty() {
                return;
            }
        }
        let serial = sim.serial;
        let id = || format!("whatif-{}-{serial}", sku.as_str());
        let Some(incentive) = track
            .track
            .apply(&decision, sku, &category, &rules, id, now)
        else {
            return;
        };
        let event = match decision {
            Decision::Open { .. } => {
                sim.serial += 1;
                sim.counts.program += 1;
                *sim.counts.per_category.entry(category).or_default() += 1;
                self.timers[k].push(Reverse((incentive.ends_at, Due::Incentive(sku.clone()))));
                let totals = self.out.skus.entry(sku.clone()).or_default();
                if k == BASELINE {
                    totals.figures.baseline.incentives_opened += 1;
                } else {
                    totals.figures.candidate.incentives_opened += 1;
                }
                Event::IncentiveOpened { incentive, at: now }
            }
            Decision::Extend { .. } => {
                self.timers[k].push(Reverse((incentive.ends_at, Due::Incentive(sku.clone()))));
                Event::IncentiveChanged { incentive, at: now }
            }
            Decision::Close { reason } => {
                sim.counts.program = sim.counts.program.saturating_sub(1);
                if let Some(open) = sim.counts.per_category.get_mut(&incentive.category) {
                    *open = open.saturating_sub(1);
                }
                Event::IncentiveClosed {
                    sku: sku.clone(),
                    id: incentive.id,
                    reason,
                    at: now,
                }
            }
            Decision::Nothing { .. } => return,
        };
        self.sku_event(sku, &event, Some(k));
    }

    fn wide_event(&mut self, event: &Event, only: Option<usize>) {
        let applies = [BASELINE, CANDIDATE].map(|k| self.active[k] && only.is_none_or(|o| o == k));
        if !applies.contains(&true) {
            return;
        }
        let before: [HashMap<Sku, (Decimal, bool)>; 2] = [BASELINE, CANDIDATE].map(|k| {
            self.replays[k]
                .cards()
                .iter()
                .map(|(s, c)| {
                    (
                        s.clone(),
                        (c.effective_rate.get(), InForce::of(Some(c)).blocked),
                    )
                })
                .collect()
        });
        for k in [BASELINE, CANDIDATE] {
            if !applies[k] || self.replays[k].apply(self.policies[k], event) != Applied::Applied {
                continue;
            }
            if let Event::OverrideSet { value, at } = event
                && let OverrideScope::Category(category) = &value.scope
            {
                for due in category_recomputes(value, *at) {
                    self.timers[k].push(Reverse((due, Due::Category(category.clone()))));
                }
            }
            let skus: Vec<Sku> = self.replays[k].cards().keys().cloned().collect();
            for sku in &skus {
                self.schedule(k, sku);
            }
        }
        let lead = self.lead();
        for sku in self.replays[lead].cards().keys() {
            let cards = [
                self.replays[BASELINE].cards().get(sku),
                self.replays[CANDIDATE].cards().get(sku),
            ];
            let rates = cards.map(|c| c.map(|c| c.effective_rate.get()));
            let totals = self.out.skus.entry(sku.clone()).or_default();
            for k in [BASELINE, CANDIDATE] {
                let now_blocked = InForce::of(cards[k]).blocked;
                let was = before[k].get(sku).is_some_and(|(_, blocked)| *blocked);
                if now_blocked && !was {
                    if k == BASELINE {
                        totals.figures.baseline.cuts_blocked += 1;
                    } else {
                        totals.figures.candidate.cuts_blocked += 1;
                    }
                }
            }
            let changed = [BASELINE, CANDIDATE]
                .into_iter()
                .any(|k| before[k].get(sku).map(|(rate, _)| *rate) != rates[k]);
            if changed && let Some(card) = cards[lead] {
                totals.points.push(RatePoint {
                    at: card.computed_at,
                    baseline: rates[BASELINE],
                    candidate: rates[CANDIDATE],
                });
            }
        }
    }

    fn finish(mut self) -> Partial {
        // The version is bumped exactly when the published rate changes.
        for k in [BASELINE, CANDIDATE] {
            for (sku, card) in self.replays[k].cards() {
                let totals = self.out.skus.entry(sku.clone()).or_default();
                let changes = card.version.saturating_sub(1);
                if k == BASELINE {
                    totals.figures.baseline.rate_changes = changes;
                } else {
                    totals.figures.candidate.rate_changes = changes;
                }
            }
        }
        self.out
    }
}

/// An event and the replay it is for: both (history), or one policy's own (its timers).
type Scoped<'a> = (&'a Event, Option<usize>);

/// A sale as one policy saw it: what the elasticity estimate needs.
#[derive(Debug, Clone)]
struct Sale {
    units: Decimal,
    price: Decimal,
    cost: Decimal,
    /// The rate in force (the baseline's, when it is the baseline's sale).
    rate: Decimal,
}

/// The estimate for one sale made at `sale.rate` under the baseline had the candidate's
/// `candidate_rate` been in force: units, commission and margin.
fn estimate(
    elasticity: Decimal,
    sale: &Sale,
    candidate_rate: Decimal,
) -> (Decimal, Decimal, Decimal) {
    let (rb, rc) = (sale.rate, candidate_rate);
    let factor = if rb > Decimal::ZERO {
        // Rounded so every estimate is an exact sum, whatever the order.
        (Decimal::ONE + elasticity * (rc - rb) / rb)
            .round_dp(FACTOR_DECIMALS)
            .max(Decimal::ZERO)
    } else {
        Decimal::ONE
    };
    let units = sale.units * factor;
    let spend = units * sale.price * rc;
    (units, spend, units * (sale.price - sale.cost) - spend)
}

/// What one partition replays: its events, and which policies.
struct Partition<'a> {
    events: Vec<Scoped<'a>>,
    active: [bool; 2],
}

/// One partition's replay; `None` when the tracker's run was cancelled. Time-driven steps
/// (timers, incentive expiries) run in time order between the events, up to `until`.
fn replay_partition(
    partition: Partition<'_>,
    baseline: &Policy,
    candidate: &Policy,
    options: &WhatIfOptions,
    until: Option<DateTime<Utc>>,
    tracker: Option<&Tracker<'_>>,
) -> Option<Partial> {
    let Partition { mut events, active } = partition;
    events.sort_by(|a, b| canonical_order(a.0, b.0).then_with(|| a.1.cmp(&b.1)));
    let mut walk = Walk {
        policies: [baseline, candidate],
        active,
        replays: [Replay::new(), Replay::new()],
        elasticity: options.elasticity,
        keep_sales: options.elasticity.is_some() && active != [true, true],
        bucket_secs: options.bucket.num_seconds().max(1),
        timers: Default::default(),
        next: Default::default(),
        incentives: Default::default(),
        out: Partial::default(),
    };
    for chunk in events.chunks(CHUNK) {
        for &(event, only) in chunk {
            walk.fire_due(event.priced_at(), false);
            match event.sku() {
                Some(sku) => {
                    if let Some(reading) = walk.sku_event(sku, event, only) {
                        for k in [BASELINE, CANDIDATE] {
                            if active[k] {
                                walk.incentive_reading(k, sku, &reading, event.priced_at());
                            }
                        }
                    }
                }
                None => walk.wide_event(event, only),
            }
        }
        if let Some(tracker) = tracker
            && !tracker.advance(chunk.len())
        {
            return None;
        }
    }
    if let Some(until) = until {
        walk.fire_due(until, true);
    }
    Some(walk.finish())
}

/// The recomputes of every SKU the rates service does when one of `policy`'s peak windows
/// opens or closes (its `all:` timers), within `from..=until`: ticks for all SKUs at each
/// edge. Each policy gets its own, since their windows may differ.
pub fn peak_edges(policy: &Policy, from: DateTime<Utc>, until: DateTime<Utc>) -> Vec<Event> {
    let mut edges: Vec<DateTime<Utc>> = policy
        .peak_windows
        .iter()
        .flat_map(|w| [w.starts_at, w.ends_at])
        .filter(|t| (from..=until).contains(t))
        .collect();
    edges.sort();
    edges.dedup();
    edges
        .into_iter()
        .map(|at| Event::Tick { at, sku: None })
        .collect()
}

fn label(policy: &Policy) -> PolicyLabel {
    PolicyLabel {
        program: policy.program_id.clone(),
        mode: match policy.mode {
            Mode::Direct => "direct",
            Mode::Boost => "boost",
        }
        .to_owned(),
    }
}

/// Replays `history` under `baseline` and `candidate` and reports what each would have
/// paid. Uses `options.threads` threads (all cores by default); the result does not
/// depend on how many.
pub fn run(
    history: &History,
    baseline: &Policy,
    candidate: &Policy,
    options: &WhatIfOptions,
) -> Report {
    match replay_all(history, baseline, candidate, options, None) {
        Ok(report) => report,
        // Without a control nothing can cancel the run.
        Err(Cancelled) => unreachable!("a run without a control was cancelled"),
    }
}

/// [`run`], reporting its progress through `control` and stopping early, with
/// [`Cancelled`], once `control.cancelled` is set. The report is the one [`run`] gives.
pub fn run_with_progress(
    history: &History,
    baseline: &Policy,
    candidate: &Policy,
    options: &WhatIfOptions,
    control: &Control<'_>,
) -> Result<Report, Cancelled> {
    replay_all(history, baseline, candidate, options, Some(control))
}

fn replay_all(
    history: &History,
    baseline: &Policy,
    candidate: &Policy,
    options: &WhatIfOptions,
    control: Option<&Control<'_>>,
) -> Result<Report, Cancelled> {
    // Incentives are what each policy's own rules open: the history's automatic ones
    // (opened under the live rules) are left out; a merchandiser's are replayed.
    let manual: HashSet<&str> = history
        .events()
        .iter()
        .filter_map(|e| match e {
            Event::IncentiveOpened { incentive, .. }
            | Event::IncentiveChanged { incentive, .. }
                if incentive.manual =>
            {
                Some(incentive.id.as_str())
            }
            _ => None,
        })
        .collect();
    let kept = |e: &Event| match e {
        Event::IncentiveOpened { incentive, .. } | Event::IncentiveChanged { incentive, .. } => {
            manual.contains(incentive.id.as_str())
        }
        Event::IncentiveClosed { id, .. } => manual.contains(id.as_str()),
        _ => true,
    };
    let mut by_sku: BTreeMap<&Sku, Vec<Scoped<'_>>> = BTreeMap::new();
    let mut wide: Vec<Scoped<'_>> = Vec::new();
    for event in history.events().iter().filter(|e| kept(e)) {
        match event.sku() {
            Some(sku) => by_sku.entry(sku).or_default().push((event, None)),
            None => wide.push((event, None)),
        }
    }
    let summary = history.summary();
    let edges = [baseline, candidate].map(|p| match (summary.from, summary.until) {
        (Some(from), Some(until)) => peak_edges(p, from, until),
        _ => Vec::new(),
    });
    for (k, ticks) in edges.iter().enumerate() {
        wide.extend(ticks.iter().map(|t| (t, Some(k))));
    }
    let threads = match options.threads {
        0 => std::thread::available_parallelism().map_or(1, usize::from),
        n => n,
    };
    let simulate = opens_incentives(baseline) || opens_incentives(candidate);
    let partitions: Vec<Partition<'_>> = if simulate {
        // Flash incentives couple every SKU (concurrency limits): each policy replays
        // every SKU in a partition of its own, and the two are joined.
        let mut all = wide;
        all.extend(by_sku.into_values().flatten());
        vec![
            Partition {
                events: all.clone(),
                active: [true, false],
            },
            Partition {
                events: all,
                active: [false, true],
            },
        ]
    } else {
        let threads = threads.clamp(1, by_sku.len().max(1));
        // Deal SKUs, largest first, to the partition with the fewest events so far.
        let mut skus: Vec<(&Sku, Vec<Scoped<'_>>)> = by_sku.into_iter().collect();
        skus.sort_by(|a, b| b.1.len().cmp(&a.1.len()).then_with(|| a.0.cmp(b.0)));
        let mut partitions: Vec<Partition<'_>> = (0..threads)
            .map(|_| Partition {
                events: wide.clone(),
                active: [true, true],
            })
            .collect();
        for (_, events) in skus {
            if let Some(smallest) = partitions.iter_mut().min_by_key(|p| p.events.len()) {
                smallest.events.extend(events);
            }
        }
        partitions
    };
    let until = summary.until;
    let total: u64 = partitions.iter().map(|p| p.events.len() as u64).sum();
    let tracker = control.map(|c| Tracker::new(c, total));
    let tracker = tracker.as_ref();
    if let Some(tracker) = tracker {
        if tracker.cancelled() {
            return Err(Cancelled);
        }
        tracker.report(Phase::Replaying);
    }
    // One after another, a cancelled partition stops the run there.
    let partials: Option<Vec<Partial>> = if threads == 1 || partitions.len() == 1 {
        partitions
            .into_iter()
            .map(|p| replay_partition(p, baseline, candidate, options, until, tracker))
            .collect()
    } else {
        std::thread::scope(|scope| {
            let handles: Vec<_> = partitions
                .into_iter()
                .map(|p| {
                    scope.spawn(move || {
                        replay_partition(p, baseline, candidate, options, until, tracker)
                    })
                })
                .collect();
            handles
                .into_iter()
                .map(|h| match h.join() {
                    Ok(partial) => partial,
                    Err(panic) => std::panic::resume_unwind(panic),
                })
                .collect::<Vec<Option<Partial>>>()
                .into_iter()
                .collect()
        })
    };
    let mut partials: Vec<Partial> = partials.ok_or(Cancelled)?;
    if simulate {
        let mut each = partials.into_iter();
        let (Some(base), Some(cand)) = (each.next(), each.next()) else {
            unreachable!("a run that simulates incentives has one partition per policy");
        };
        partials = vec![join(base, cand, options.elasticity)];
    }
    if let Some(tracker) = tracker {
        if tracker.cancelled() {
            return Err(Cancelled);
        }
        tracker.report(Phase::Reporting);
    }
    Ok(assemble(history, baseline, candidate, options, partials))
}

/// Whether `policy`'s rules open flash incentives in any category (or by default).
fn opens_incentives(policy: &Policy) -> bool {
    policy.category("").flash.enabled
        || policy
            .category_names()
            .any(|c| policy.category(c).flash.enabled)
}

/// One partial from the baseline's and the candidate's partitions (each replayed every
/// SKU): the observed figures and the baseline's from the first, the candidate's from the
/// second, the rate series interleaved, and the estimate from their sales side by side.
fn join(base: Partial, mut cand: Partial, elasticity: Option<Decimal>) -> Partial {
    let mut out = Partial {
        unpriced_units: base.unpriced_units,
        ..Partial::default()
    };
    for (bucket, [b, _]) in base.spend {
        out.spend.entry(bucket).or_default()[BASELINE] += b;
    }
    for (bucket, [_, c]) in cand.spend {
        out.spend.entry(bucket).or_default()[CANDIDATE] += c;
    }
    for (sku, mut totals) in base.skus {
        let Some(theirs) = cand.skus.remove(&sku) else {
            out.skus.insert(sku, totals);
            continue;
        };
        totals.figures.candidate = theirs.figures.candidate;
        totals.points = interleave(&totals.points, &theirs.points);
        if let Some(e) = elasticity {
            for (b, c) in totals.sales.iter().zip(&theirs.sales) {
                let (units, spend, margin) = estimate(e, b, c.rate);
                totals.estimated_units += units;
                totals.estimated_spend += spend;
                totals.estimated_margin += margin;
            }
        }
        totals.sales = Vec::new();
        out.skus.insert(sku, totals);
    }
    for (sku, mut totals) in cand.skus {
        totals.sales = Vec::new();
        out.skus.insert(sku, totals);
    }
    out
}

/// One series of both rates from the baseline's (`candidate` absent) and the
/// candidate's (`baseline` absent): a point wherever either changed, carrying the other.
fn interleave(base: &[RatePoint], cand: &[RatePoint]) -> Vec<RatePoint> {
    let mut all: Vec<(DateTime<Utc>, usize, Option<Decimal>)> = base
        .iter()
        .map(|p| (p.at, BASELINE, p.baseline))
        .chain(cand.iter().map(|p| (p.at, CANDIDATE, p.candidate)))
        .collect();
    all.sort_by_key(|(at, k, _)| (*at, *k));
    let mut out: Vec<RatePoint> = Vec::with_capacity(all.len());
    let mut rates = [None, None];
    for (at, k, rate) in all {
        rates[k] = rate;
        match out.last_mut() {
            Some(last) if last.at == at => {
                last.baseline = rates[BASELINE];
                last.candidate = rates[CANDIDATE];
            }
            Some(last)
                if last.baseline == rates[BASELINE] && last.candidate == rates[CANDIDATE] => {}
            _ => out.push(RatePoint {
                at,
                baseline: rates[BASELINE],
                candidate: rates[CANDIDATE],
            }),
        }
    }
    out
}

fn assemble(
    history: &History,
    baseline: &Policy,
    candidate: &Policy,
    options: &WhatIfOptions,
    partials: Vec<Partial>,
) -> Report {
    let mut skus: BTreeMap<Sku, SkuTotals> = BTreeMap::new();
    let mut spend: BTreeMap<i64, [Decimal; 2]> = BTreeMap::new();
    let mut unpriced_units = Decimal::ZERO;
    for partial in partials {
        // Partitions hold disjoint SKUs; a SKU seen only through a wide event has no
        // figures in the other partitions.
        for (sku, totals) in partial.skus {
            skus.entry(sku).or_insert(totals);
        }
        for (bucket, [b, c]) in partial.spend {
            let slot = spend.entry(bucket).or_default();
            slot[0] += b;
            slot[1] += c;
        }
        unpriced_units += partial.unpriced_units;
    }

    let mut program = Figures::default();
    let mut categories: BTreeMap<String, Figures> = BTreeMap::new();
    let mut estimate = (Decimal::ZERO, Decimal::ZERO, Decimal::ZERO);
    for totals in skus.values() {
        program.add(&totals.figures);
        categories
            .entry(totals.category.clone())
            .or_default()
            .add(&totals.figures);
        estimate.0 += totals.estimated_units;
        estimate.1 += totals.estimated_spend;
        estimate.2 += totals.estimated_margin;
    }

    let bucket_secs = options.bucket.num_seconds().max(1);
    let spend_points = match (spend.keys().next(), spend.keys().next_back()) {
        (Some(&first), Some(&last)) => (first..=last)
            .filter_map(|b| {
                let [baseline, candidate] = spend.get(&b).copied().unwrap_or_default();
                Some(SpendPoint {
                    at: DateTime::from_timestamp(b * bucket_secs, 0)?,
                    baseline,
                    candidate,
                })
            })
            .collect(),
        _ => Vec::new(),
    };

    let mut by_spend: Vec<(&Sku, &SkuTotals)> = skus.iter().collect();
    by_spend.sort_by(|a, b| {
        b.1.figures
            .baseline
            .commission_spend
            .cmp(&a.1.figures.baseline.commission_spend)
            .then_with(|| a.0.cmp(b.0))
    });
    let top_skus = by_spend
        .iter()
        .take(options.top_skus)
        .map(|(sku, t)| RateSeries {
            sku: sku.to_string(),
            points: t.points.clone(),
        })
        .collect();
    let sku_figures = by_spend
        .iter()
        .map(|(sku, t)| SkuFigures {
            sku: sku.to_string(),
            category: t.category.clone(),
            figures: t.figures.clone(),
        })
        .collect();

    Report {
        history: history.summary().clone(),
        baseline_policy: label(baseline),
        candidate_policy: label(candidate),
        estimate: options.elasticity.map(|e| ElasticityEstimate {
            kind: "estimate".to_owned(),
            elasticity: e,
            observed_units: program.units_sold,
            estimated_candidate_units: estimate.0,
            estimated_candidate_spend: estimate.1,
            estimated_candidate_margin: estimate.2,
        }),
        program,
        categories,
        skus: sku_figures,
        unpriced_units,
        series: Series {
            bucket_seconds: bucket_secs,
            spend: spend_points,
            top_skus,
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::TimeZone;
    use ratemesh_core::{Money, Product, Quantity};
    use rust_decimal_macros::dec;

    fn t(h: i64) -> DateTime<Utc> {
        Utc.with_ymd_and_hms(2025, 4, 1, 0, 0, 0).unwrap() + TimeDelta::hours(h)
    }

    fn events(skus: usize, readings: u64) -> Vec<Event> {
        let mut events = Vec::new();
        for i in 0..skus {
            let sku = Sku::new(format!("S-{i}")).unwrap();
            events.push(Event::ProductUpserted {
                sku: sku.clone(),
                product: Product {
                    category: ["home", "apparel", "electronics"][i % 3].into(),
                    price: Money::new(Decimal::from(20 + i)).unwrap(),
                    unit_cost: Money::new(Decimal::from(8 + i / 2)).unwrap(),
                    base_rate: None,
                },
                at: t(0),
                received_at: Some(t(0)),
            });
            let mut on_hand = Decimal::from(40 + 7 * i);
            for n in 1..=readings {
                let sold = Decimal::from((n as usize * 3 + i) % 5);
                on_hand = if on_hand < sold {
                    Decimal::from(60)
                } else {
                    on_hand - sold
                };
                events.push(Event::StockObserved {
                    sku: sku.clone(),
                    location: String::new(),
                    on_hand: Quantity::new(on_hand).unwrap(),
                    reserved: Quantity::ZERO,
                    sequence: n,
                    as_of: t(n as i64 * 6),
                    erp_velocity: None,
                    received_at: Some(t(n as i64 * 6)),
                });
            }
        }
        events.push(Event::Tick {
            at: t(50),
            sku: None,
        });
        events
    }

    #[test]
    fn cuts_held_back_under_network_terms_are_counted_in_boost_mode() {
        // No flash incentives: the boost alone is under test.
        let toml = ratemesh_core::EXAMPLE_POLICY_TOML.replace(
            "[defaults.flash]\nenabled = true",
            "[defaults.flash]\nenabled = false",
        );
        assert_ne!(toml, ratemesh_core::EXAMPLE_POLICY_TOML);
        let direct = Policy::from_toml_str(&toml).unwrap();
        let boost =
            Policy::from_toml_str(&toml.replace("mode = \"direct\"", "mode = \"boost\"")).unwrap();
        let sku = Sku::new("LAMP-1").unwrap();
        let mut events = vec![Event::ProductUpserted {
            sku: sku.clone(),
            product: Product {
                category: "home".into(),
                price: Money::new(dec!(100)).unwrap(),
                unit_cost: Money::new(dec!(40)).unwrap(),
                base_rate: None,
            },
            at: t(0),
            received_at: Some(t(0)),
        }];
        // Deep overstock (a boost is raised, in damped steps its timers take), then
        // within the boost's 72 guaranteed hours a rush sells it almost out: the policy
        // wants less, but the boost is guaranteed.
        let levels = [1000, 998, 996, 994, 200, 20, 5];
        for (n, level) in levels.into_iter().enumerate() {
            let at = t(n as i64 * 12);
            events.push(Event::StockObserved {
                sku: sku.clone(),
                location: String::new(),
                on_hand: Quantity::new(Decimal::from(level)).unwrap(),
                reserved: Quantity::ZERO,
                sequence: n as u64 + 1,
                as_of: at,
                erp_velocity: None,
                received_at: Some(at),
            });
        }
        let history = History::from_events(events, TimeDelta::days(1));
        let report = run(&history, &direct, &boost, &WhatIfOptions::default());
        assert_eq!(report.program.baseline.cuts_blocked, 0);
        assert_eq!(report.program.candidate.cuts_blocked, 1);
        assert_eq!(report.program.units_sold, dec!(995));
    }

    #[test]
    fn any_number_of_threads_gives_the_same_report_and_core_replays_final_cards() {
        let history = History::from_events(events(23, 40), TimeDelta::days(1));
        let baseline = Policy::example();
        let candidate = Policy::builtin();
        let one = run(
            &history,
            &baseline,
            &candidate,
            &WhatIfOptions {
                threads: 1,
                elasticity: Some(dec!(0.5)),
                ..WhatIfOptions::default()
            },
        );
        for threads in [2, 3, 8] {
            let many = run(
                &history,
                &baseline,
                &candidate,
                &WhatIfOptions {
                    threads,
                    elasticity: Some(dec!(0.5)),
                    ..WhatIfOptions::default()
                },
            );
            assert_eq!(many, one, "{threads} threads");
        }
        assert!(one.program.units_sold > Decimal::ZERO);
        assert_ne!(
            one.program.baseline.commission_spend,
            one.program.candidate.commission_spend
        );
    }

    #[test]
    fn progress_increases_to_the_total_and_the_report_is_the_one_run_gives() {
        // Over two chunks per partition, so the workers report between chunks.
        let history = History::from_events(events(40, 260), TimeDelta::days(1));
        let (baseline, candidate) = (Policy::example(), Policy::builtin());
        let options = WhatIfOptions {
            threads: 2,
            ..WhatIfOptions::default()
        };
        let seen = Mutex::new(Vec::new());
        let record = |p: Progress| seen.lock().unwrap().push(p);
        let cancelled = AtomicBool::new(false);
        let control = Control {
            progress: &record,
            cancelled: &cancelled,
            interval: Duration::ZERO,
        };
        let report = run_with_progress(&history, &baseline, &candidate, &options, &control)
            .expect("not cancelled");
        assert_eq!(report, run(&history, &baseline, &candidate, &options));
        let seen = seen.into_inner().unwrap();
        let total = seen[0].total;
        assert!(total >= history.events().len() as u64);
        assert_eq!(seen[0].done, 0);
        assert!(seen.len() > 3, "progress between chunks: {seen:?}");
        assert!(seen.windows(2).all(|w| w[0].done <= w[1].done), "{seen:?}");
        assert!(seen.iter().all(|p| p.total == total && p.done <= total));
        let last = seen.last().unwrap();
        assert_eq!((last.phase, last.done), (Phase::Reporting, total));
    }

    #[test]
    fn a_cancelled_run_stops_after_one_chunk_with_no_report() {
        let history = History::from_events(events(40, 260), TimeDelta::days(1));
        let cancelled = AtomicBool::new(false);
        let done = AtomicU64::new(0);
        // The flag is set at the first report after the start: the workers stop at
        // their next chunk boundary.
        let stop = |p: Progress| {
            done.store(p.done, Ordering::Relaxed);
            if p.done > 0 {
                cancelled.store(true, Ordering::Relaxed);
            }
        };
        let control = Control {
            progress: &stop,
            cancelled: &cancelled,
            interval: Duration::ZERO,
        };
        let options = WhatIfOptions {
            threads: 1,
            ..WhatIfOptions::default()
        };
        let outcome = run_with_progress(
            &history,
            &Policy::example(),
            &Policy::builtin(),
            &options,
            &control,
        );
        assert_eq!(outcome, Err(Cancelled));
        assert_eq!(done.load(Ordering::Relaxed), CHUNK as u64);
        assert!((CHUNK as u64) < history.events().len() as u64);

        // Set before the start, nothing is replayed.
        let never = |_: Progress| panic!("no progress from a run cancelled before it began");
        let control = Control {
            progress: &never,
            cancelled: &cancelled,
            interval: Duration::ZERO,
        };
        let outcome = run_with_progress(
            &history,
            &Policy::example(),
            &Policy::builtin(),
            &options,
            &control,
        );
        assert_eq!(outcome, Err(Cancelled));
    }
}
