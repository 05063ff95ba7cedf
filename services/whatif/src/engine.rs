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
//! replay of everything would give.
//!
//! **Timers.** When a peak window of a policy opens or closes, the rates service
//! recomputes every SKU at that instant; each policy's replay gets those ticks
//! ([`peak_edges`]). The service's per-SKU timers (a hold or damping step ending, a
//! guarantee or announced cut falling due) are not replayed: their schedule is the rates
//! service's own, so between readings a replayed rate can lag the live one until the
//! next reading. Flash incentives are opened by the incentives service, not by the rate
//! policy, and are not simulated: the incentive transitions a history holds (those of the
//! input archive) are replayed as they happened, under both policies, as are overrides.

use std::collections::{BTreeMap, HashMap};
use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use chrono::{DateTime, TimeDelta, Utc};
use ratemesh_core::card::BandPosition;
use ratemesh_core::policy::config::Mode;
use ratemesh_core::replay::{Replay, canonical_order};
use ratemesh_core::{Applied, Event, Policy, RateCard, ReasonCode, Sku};
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
    replays: [Replay; 2],
    elasticity: Option<Decimal>,
    bucket_secs: i64,
    out: Partial,
}

impl Walk<'_> {
    fn sku_event(&mut self, sku: &Sku, event: &Event) {
        let before = [
            InForce::of(self.replays[BASELINE].cards().get(sku)),
            InForce::of(self.replays[CANDIDATE].cards().get(sku)),
        ];
        // Stock and product data fold the same way under any policy: read them from one.
        let state = self.replays[BASELINE].states().get(sku);
        let had_reading = state.is_some_and(|s| !s.stock.is_empty());
        let available_before = state.map_or(Decimal::ZERO, |s| s.available.get());
        let product = state.and_then(|s| s.product.clone());

        let outcome = self.replays[BASELINE].apply(self.policies[BASELINE], event);
        self.replays[CANDIDATE].apply(self.policies[CANDIDATE], event);
        if outcome != Applied::Applied {
            return;
        }
        let after = [
            self.replays[BASELINE].cards().get(sku),
            self.replays[CANDIDATE].cards().get(sku),
        ];
        let totals = self.out.skus.entry(sku.clone()).or_default();
        if let Some(p) = self.replays[BASELINE]
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
            let at = after[0]
                .map(|c| c.computed_at)
                .unwrap_or_else(|| event.priced_at());
            totals.points.push(RatePoint {
                at,
                baseline: rates[0],
                candidate: rates[1],
            });
        }

        let Event::StockObserved { .. } = event else {
            return;
        };
        if !had_reading {
            return;
        }
        let available_after = self.replays[BASELINE]
            .states()
            .get(sku)
            .map_or(Decimal::ZERO, |s| s.available.get());
        let units = available_before - available_after;
        if units <= Decimal::ZERO {
            return;
        }
        let Some(product) = product else {
            self.out.unpriced_units += units;
            return;
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
        if let Some(e) = self.elasticity {
            let (rb, rc) = (before[BASELINE].rate, before[CANDIDATE].rate);
            let factor = if rb > Decimal::ZERO {
                // Rounded so every estimate is an exact sum, whatever the order.
                (Decimal::ONE + e * (rc - rb) / rb)
                    .round_dp(FACTOR_DECIMALS)
                    .max(Decimal::ZERO)
            } else {
                Decimal::ONE
            };
            let estimated = units * factor;
            let spend = estimated * price * rc;
            totals.estimated_units += estimated;
            totals.estimated_spend += spend;
            totals.estimated_margin += estimated * (price - cost) - spend;
        }
    }

    fn wide_event(&mut self, event: &Event, only: Option<usize>) {
        let before: [HashMap<Sku, Decimal>; 2] = [BASELINE, CANDIDATE].map(|k| {
            self.replays[k]
                .cards()
                .iter()
                .map(|(s, c)| (s.clone(), c.effective_rate.get()))
                .collect()
        });
        let blocked_before: [HashMap<Sku, bool>; 2] = [BASELINE, CANDIDATE].map(|k| {
            self.replays[k]
                .cards()
                .iter()
                .map(|(s, c)| (s.clone(), InForce::of(Some(c)).blocked))
                .collect()
        });
        for k in [BASELINE, CANDIDATE] {
            if only.is_none_or(|o| o == k) {
                self.replays[k].apply(self.policies[k], event);
            }
        }
        for (sku, card) in self.replays[BASELINE].cards() {
            let candidate = self.replays[CANDIDATE].cards().get(sku);
            let rates = [
                Some(card.effective_rate.get()),
                candidate.map(|c| c.effective_rate.get()),
            ];
            let totals = self.out.skus.entry(sku.clone()).or_default();
            for (k, c) in [(BASELINE, Some(card)), (CANDIDATE, candidate)] {
                let now_blocked = InForce::of(c).blocked;
                let was = blocked_before[k].get(sku).copied().unwrap_or(false);
                if now_blocked && !was {
                    if k == BASELINE {
                        totals.figures.baseline.cuts_blocked += 1;
                    } else {
                        totals.figures.candidate.cuts_blocked += 1;
                    }
                }
            }
            let changed = before[BASELINE].get(sku) != rates[0].as_ref()
                || before[CANDIDATE].get(sku) != rates[1].as_ref();
            if changed {
                totals.points.push(RatePoint {
                    at: card.computed_at,
                    baseline: rates[0],
                    candidate: rates[1],
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

/// One partition's replay; `None` when the tracker's run was cancelled.
fn replay_partition(
    events: Vec<Scoped<'_>>,
    baseline: &Policy,
    candidate: &Policy,
    options: &WhatIfOptions,
    tracker: Option<&Tracker<'_>>,
) -> Option<Partial> {
    let mut events = events;
    events.sort_by(|a, b| canonical_order(a.0, b.0).then_with(|| a.1.cmp(&b.1)));
    let mut walk = Walk {
        policies: [baseline, candidate],
        replays: [Replay::new(), Replay::new()],
        elasticity: options.elasticity,
        bucket_secs: options.bucket.num_seconds().max(1),
        out: Partial::default(),
    };
    for chunk in events.chunks(CHUNK) {
        for &(event, only) in chunk {
            match event.sku() {
                Some(sku) => walk.sku_event(sku, event),
                None => walk.wide_event(event, only),
            }
        }
        if let Some(tracker) = tracker
            && !tracker.advance(chunk.len())
        {
            return None;
        }
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
    let mut by_sku: BTreeMap<&Sku, Vec<Scoped<'_>>> = BTreeMap::new();
    let mut wide: Vec<Scoped<'_>> = Vec::new();
    for event in history.events() {
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
    }
    .clamp(1, by_sku.len().max(1));
    // Deal SKUs, largest first, to the partition with the fewest events so far.
    let mut skus: Vec<(&Sku, Vec<Scoped<'_>>)> = by_sku.into_iter().collect();
    skus.sort_by(|a, b| b.1.len().cmp(&a.1.len()).then_with(|| a.0.cmp(b.0)));
    let mut partitions: Vec<Vec<Scoped<'_>>> = vec![wide.clone(); threads];
    for (_, events) in skus {
        if let Some(smallest) = partitions.iter_mut().min_by_key(|p| p.len()) {
            smallest.extend(events);
        }
    }
    let total: u64 = partitions.iter().map(|p| p.len() as u64).sum();
    let tracker = control.map(|c| Tracker::new(c, total));
    let tracker = tracker.as_ref();
    if let Some(tracker) = tracker {
        if tracker.cancelled() {
            return Err(Cancelled);
        }
        tracker.report(Phase::Replaying);
    }
    let partials: Vec<Option<Partial>> = if threads == 1 {
        partitions
            .into_iter()
            .map(|p| replay_partition(p, baseline, candidate, options, tracker))
            .collect()
    } else {
        std::thread::scope(|scope| {
            let handles: Vec<_> = partitions
                .into_iter()
                .map(|p| {
                    scope.spawn(move || replay_partition(p, baseline, candidate, options, tracker))
                })
                .collect();
            handles
                .into_iter()
                .map(|h| match h.join() {
                    Ok(partial) => partial,
                    Err(panic) => std::panic::resume_unwind(panic),
                })
                .collect()
        })
    };
    let partials: Vec<Partial> = partials
        .into_iter()
        .collect::<Option<_>>()
        .ok_or(Cancelled)?;
    if let Some(tracker) = tracker {
        if tracker.cancelled() {
            return Err(Cancelled);
        }
        tracker.report(Phase::Reporting);
    }
    Ok(assemble(history, baseline, candidate, options, partials))
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
            kind: "estimate",
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
        let direct = Policy::example();
        let boost = Policy::from_toml_str(
            &ratemesh_core::EXAMPLE_POLICY_TOML.replace("mode = \"direct\"", "mode = \"boost\""),
        )
        .unwrap();
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
        // Deep overstock for days (a boost is raised), then a rush sells it almost out:
        // the policy wants less, but the boost is guaranteed for 72 hours.
        let levels = [1000, 998, 996, 994, 992, 990, 988, 986, 200, 20, 5];
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
        // Rate changes counted from partitioned replays equal core's single replay.
        for (policy, figures) in [
            (&baseline, &one.program.baseline),
            (&candidate, &one.program.candidate),
        ] {
            let cards = ratemesh_core::replay(policy, history.events());
            let changes: u64 = cards.values().map(|c| c.version - 1).sum();
            assert_eq!(figures.rate_changes, changes);
        }
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
