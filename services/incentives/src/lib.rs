//! The incentives service: time-boxed flash incentives for overstock SKUs.
//!
//! It consumes the `stock` stream (consumer group `incentives`), keeps its own view of
//! every SKU (core [`ratemesh_core::SkuState`]: stock, velocity, price, category), runs the
//! core flash-incentive rules ([`ratemesh_core::decide`], [`ratemesh_core::select`]) and
//! opens, extends and ends incentives within budgets, cooldowns and concurrency limits.
//! Merchandisers list, trigger and cancel them over `IncentiveService`.
//!
//! # Event contract (stream `incentives`)
//!
//! Every lifecycle transition is one entry on stream `incentives`
//! ([`ratemesh_contract::streams::INCENTIVES`]), appended atomically with the state change
//! that caused it:
//!
//! - key: the SKU (so all entries of one SKU are ordered in one partition);
//! - kind: `ratemesh.v1.IncentiveChanged` ([`INCENTIVE_CHANGED`]);
//! - payload: protobuf `ratemesh.v1.IncentiveChanged { meta, incentive, transition }`, where
//!   `meta.event_id` is a fresh ULID, `meta.occurred_at` the time of the transition and
//!   `meta.traceparent` the trace that caused it, and `incentive` is the whole incentive
//!   *after* the change:
//!   - `OPENED`: `state = ACTIVE`, `starts_at` = now, `ends_at` = the window end,
//!     `bonus_rate`, `origin` (`AUTOMATIC` with `opened_by` = rule name such as
//!     `overstock-home`, or `MANUAL` with `opened_by` = the merchandiser), `reason`,
//!     budgets (absent = none), `spent = "0"`, `units_sold = "0"`;
//!   - `EXTENDED`: `state = ACTIVE`, same `id`, a later `ends_at`;
//!   - `ENDED`: `state = ENDED`, `end_reason` (`EXPIRED`, `SOLD_THROUGH`,
//!     `BUDGET_EXHAUSTED`, `BUDGET_FORECAST`, `CANCELLED`), `ended_at` = when, `ends_at` =
//!     the earlier of the window end and `ended_at` (so it is the last instant the bonus
//!     applied), `ended_by`/`cancel_reason` for cancels, and `units_over_budget` /
//!     `spend_over_budget`: how far the stock reading that closed it went past a budget.
//!
//! What a consumer (the rates engine) needs to do: per SKU, keep the incentive of the
//! latest entry; while `state = ACTIVE` and `now < ends_at`, add `bonus_rate` as the
//! incentive part with reason `INCENTIVE` and `guaranteed_until = ends_at`; on `ENDED`,
//! drop it. One SKU has at most one active incentive; an `ENDED` entry for an id other
//! than the one held is stale and can be ignored. Entries of one SKU arrive in order;
//! after redelivery, use `meta.occurred_at` to drop older ones. Budget accounting
//! (`spent`, `units_sold`) moves between transitions without an event; the listing
//! (`ListIncentives`) shows it current. `spent` counts the bonus the published rate
//! actually carried (after cap and margin guard), read off the rates service's card
//! (state `rate/<sku>`), or the base rate before one is published.
//!
//! A SKU that qualifies while its category or the program is full waits for a slot
//! (state `incentive-waiting`); the sweep (`incentives.sweep_interval_secs`) offers every
//! free slot to the most overstocked waiting SKU that still qualifies, without waiting for
//! that SKU's next stock reading.
//!
//! # Layout
//! - [`engine`] — decisions per SKU, selection under limits, expiries, the repair sweep.
//! - [`record`] — the per-SKU record kept in bus state and the wire form of an incentive.
//! - [`store`] — bus state keys, slots, listing projection, timers.
//! - [`events`] — reading the stock stream, writing `IncentiveChanged`.
//! - [`api`] — `IncentiveService`.
//! - [`clock`] — the injectable clock.
//!
//! Metrics: `ratemesh_incentives_transitions_total{transition,reason,origin}`,
//! `ratemesh_incentives_skipped_total{reason}` (`cooldown`, `category_full`,
//! `program_full`: an overstocked SKU that did not open, also logged with its reason, at
//! info when it starts waiting for a slot and at debug on its readings after that),
//! `ratemesh_incentives_active`.

pub mod access;
pub mod api;
pub mod clock;
pub mod engine;
pub mod events;
pub mod record;
mod settings;
pub mod store;

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use chrono::TimeDelta;
use ratemesh_bus::trace_context::BatchSpans;
use ratemesh_contract::streams;
use ratemesh_core::{Candidate, Event as CoreEvent, Policy, Sku};
use ratemesh_proto::v1::incentive_service_server::IncentiveServiceServer;
use ratemesh_runtime::consumer::{self, ConsumerSpec, Settled};
use ratemesh_runtime::{Context, Readiness, ServiceModule};
use rust_decimal::Decimal;
use tokio_util::sync::CancellationToken;
use tracing::Instrument;

pub use clock::{Clock, ManualClock, SystemClock};
pub use engine::{Engine, Quiet};
pub use events::INCENTIVE_CHANGED;
pub use settings::IncentivesSettings;

/// Builds the incentives service with the system clock and the configured policy.
pub async fn build(ctx: &Context) -> anyhow::Result<ServiceModule> {
    let policy = ratemesh_runtime::policy::load_policy(ctx.settings())?;
    Ok(Incentives::new(ctx, policy, Arc::new(SystemClock)).module(ctx))
}

/// The service before it runs; tests build it with their own policy and clock.
#[derive(Debug, Clone)]
pub struct Incentives {
    engine: Arc<Engine>,
}

impl Incentives {
    /// The service on `ctx`'s bus.
    pub fn new(ctx: &Context, policy: Policy, clock: Arc<dyn Clock>) -> Self {
        Self {
            engine: Arc::new(Engine {
                store: store::Store::new(
                    ctx.bus().clone(),
                    ctx.settings()
                        .section::<IncentivesSettings>()
                        .record_cache_skus,
                ),
                policy: Arc::new(policy),
                clock,
            }),
        }
    }

    /// Re-decides `sku` from its stored record (what an expiry or the sweep does).
    pub async fn evaluate(&self, sku: &str) -> anyhow::Result<()> {
        let sku = Sku::new(sku)?;
        if let Some(candidate) = self.engine.process(&sku, None).await? {
            let failed = self.engine.open_candidates(vec![candidate]).await;
            anyhow::ensure!(failed.is_empty(), "opening an incentive on {sku} failed");
        }
        Ok(())
    }

    /// Runs the repair sweep once (see [`Engine::sweep`]).
    pub async fn sweep(&self, grace: TimeDelta) -> anyhow::Result<()> {
        Ok(self.engine.sweep(grace).await?)
    }

    /// The module `App` runs: `IncentiveService`, the stock consumer, the expiry timer
    /// loop and the sweep.
    pub fn module(self, ctx: &Context) -> ServiceModule {
        let settings = &ctx.settings().section::<IncentivesSettings>();
        let readiness = Readiness::new();
        let api = api::IncentivesApi {
            engine: self.engine.clone(),
            limits: api::Limits {
                max_bonus: Decimal::new(i64::from(settings.max_bonus_bps), 4),
                max_duration: TimeDelta::hours(i64::from(settings.max_duration_hours)),
            },
        };
        let consumer_name =
            ratemesh_runtime::consumer::consumer_name(&settings.consumer_name, "incentives");
        let shutdown = ctx.shutdown().clone();
        let sweep_every = settings.sweep_interval();
        let mut module = ServiceModule::new("incentives", readiness.clone())
            .grpc(IncentiveServiceServer::new(api), access::INCENTIVE_SERVICE);
        for &stream in streams::readers::INCENTIVES.streams {
            module = module.task(
                "incentives stock consumer",
                consume(
                    self.engine.clone(),
                    ctx.bus().clone(),
                    stream,
                    consumer_name.clone(),
                    readiness.clone(),
                    shutdown.clone(),
                ),
            );
        }
        module
            .task(
                "incentives expiry timers",
                timers(self.engine.clone(), settings.timer_poll(), shutdown.clone()),
            )
            .task(
                "incentives sweep",
                sweep(self.engine.clone(), sweep_every, shutdown),
            )
    }
}

/// Reads `stream` (the stock stream: the service's entry in the contract's table of
/// readers) with the shared consumer driver: folds each entry into its SKU, then opens
/// incentives for the SKUs of the batch that qualify, and acks what was committed.
async fn consume(
    engine: Arc<Engine>,
    bus: ratemesh_bus::Bus,
    stream: &'static str,
    name: String,
    readiness: Readiness,
    shutdown: CancellationToken,
) -> anyhow::Result<()> {
    let spec = ConsumerSpec {
        stream,
        group: streams::readers::INCENTIVES.group,
        name,
    };
    consumer::run(bus, spec, Some(readiness), shutdown, |batch| {
        let engine = engine.clone();
        async move { handle_batch(&engine, batch).await }
    })
    .await
}

/// SKUs of a batch folded at once on the event-by-event path. Each is a read and a write
/// of its own record, so that path's time is bounded by round trips: overlapping them
/// keeps it short.
const SKUS_AT_ONCE: usize = 64;

/// Folds a batch: split by SKU, each SKU's entries in stream order. The SKUs without an
/// active incentive are folded together ([`Engine::fold_quiet`]: one read, one write per
/// partition); the others event by event, concurrently (after a failure, the SKU's later
/// entries are retried with it rather than overtaking it). Then the batch's candidates
/// are offered their incentives.
async fn handle_batch(engine: &Engine, batch: Vec<ratemesh_bus::Delivery>) -> Settled {
    use futures::StreamExt;
    // One span per trace of the batch, not per SKU; an incentive opens in the trace of
    // the reading that made its SKU a candidate.
    let spans = BatchSpans::new(streams::readers::INCENTIVES.group, &batch);
    let mut order: Vec<String> = Vec::new();
    let mut by_key: HashMap<String, Vec<ratemesh_bus::Delivery>> = HashMap::new();
    for d in batch {
        if !by_key.contains_key(&d.key) {
            order.push(d.key.clone());
        }
        by_key.entry(d.key.clone()).or_default().push(d);
    }
    let mut settled = Settled::default();
    let mut done = Vec::new();
    let mut candidates = Vec::new();
    // Runs of one SKU's stock events, decoded; the rest go event by event.
    let mut quiet: Vec<(Sku, Vec<CoreEvent>)> = Vec::new();
    let mut quiet_runs: Vec<Vec<ratemesh_bus::Delivery>> = Vec::new();
    let mut runs: Vec<Vec<ratemesh_bus::Delivery>> = Vec::new();
    for run in order.into_iter().filter_map(|k| by_key.remove(&k)) {
        match decoded_run(&run) {
            Some((sku, events)) => {
                quiet.push((sku, events));
                quiet_runs.push(run);
            }
            None => runs.push(run),
        }
    }
    let folded = engine.fold_quiet(&quiet).await;
    for (run, answer) in quiet_runs.into_iter().zip(folded) {
        match answer {
            Quiet::Folded(candidate) => {
                candidates.extend(candidate);
                done.extend(run);
            }
            Quiet::Busy => runs.push(run),
            Quiet::Failed(error) => {
                tracing::warn!(error = %error, "folding stock into incentive records failed");
                settled
                    .nack
                    .extend(run.into_iter().map(|d| (d, error.clone())));
            }
        }
    }
    let folded: Vec<(Settled, Vec<ratemesh_bus::Delivery>, Vec<Candidate>)> =
        futures::stream::iter(runs)
            .map(|run| fold_run(engine, run, &spans))
            .buffer_unordered(SKUS_AT_ONCE)
            .collect()
            .await;
    for (failed, folded, found) in folded {
        settled.extend(failed);
        done.extend(folded);
        candidates.extend(found);
    }
    let failed = engine
        .open_candidates_traced(candidates, |sku| {
            done.iter()
                .rev()
                .find(|d| d.key == sku.as_str())
                .map_or_else(tracing::Span::none, |d| spans.of(d))
        })
        .await;
    // An entry whose SKU failed to open is retried; its fold is idempotent.
    for d in done {
        if failed.iter().any(|s| s.as_str() == d.key) {
            settled
                .nack
                .push((d, "opening the incentive failed".to_owned()));
        } else {
            settled.ack.push(d);
        }
    }
    settled
}

/// A run's entries as one SKU's stock events, when every entry decodes to an event of
/// the same SKU (anything else goes event by event, where it is acked or nacked on its
/// own).
fn decoded_run(run: &[ratemesh_bus::Delivery]) -> Option<(Sku, Vec<CoreEvent>)> {
    let mut sku: Option<Sku> = None;
    let mut events = Vec::with_capacity(run.len());
    for d in run {
        let event = events::decode_stock_entry(d).ok()??;
        let of = event.sku()?;
        match &sku {
            Some(s) if s != of => return None,
            Some(_) => {}
            None => sku = Some(of.clone()),
        }
        events.push(event);
    }
    Some((sku?, events))
}

/// Folds one SKU's entries in order: what failed (nacked), what was folded, and the
/// candidates found.
async fn fold_run(
    engine: &Engine,
    run: Vec<ratemesh_bus::Delivery>,
    spans: &BatchSpans,
) -> (Settled, Vec<ratemesh_bus::Delivery>, Vec<Candidate>) {
    let mut settled = Settled::default();
    let mut done = Vec::with_capacity(run.len());
    let mut candidates = Vec::new();
    let mut failed: Option<String> = None;
    for d in run {
        if let Some(error) = &failed {
            let error = format!("an earlier entry of this SKU failed: {error}");
            settled.nack.push((d, error));
            continue;
        }
        let result = async {
            match events::decode_stock_entry(&d) {
                Err(bad) => Err(bad.0),
                Ok(None) => Ok(None),
                Ok(Some(event)) => {
                    let Some(sku) = event.sku().cloned() else {
                        return Ok(None);
                    };
                    engine
                        .process(&sku, Some(&event))
                        .await
                        .map_err(|e| e.to_string())
                }
            }
        }
        .instrument(spans.of(&d))
        .await;
        match result {
            Ok(candidate) => {
                candidates.extend(candidate);
                done.push(d);
            }
            Err(error) => {
                failed = Some(error.clone());
                settled.nack.push((d, error));
            }
        }
    }
    (settled, done, candidates)
}

/// Claims due expiries every `poll`.
async fn timers(
    engine: Arc<Engine>,
    poll: Duration,
    shutdown: CancellationToken,
) -> anyhow::Result<()> {
    consumer::every("incentive expiry timers", poll, shutdown, || {
        let engine = engine.clone();
        async move { engine.fire_due().await }
    })
    .await
}

/// Repairs what a crash between a transition and its follow-ups left behind, and hands
/// freed slots to waiting SKUs.
async fn sweep(
    engine: Arc<Engine>,
    every: Duration,
    shutdown: CancellationToken,
) -> anyhow::Result<()> {
    let grace = TimeDelta::from_std(every).unwrap_or(TimeDelta::seconds(30));
    consumer::every("incentive sweep", every, shutdown, || {
        let engine = engine.clone();
        async move { engine.sweep(grace).await }
    })
    .await
}
