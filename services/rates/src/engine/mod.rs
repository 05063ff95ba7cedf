//! The rate engine: folds stock, product, override and incentive events into per-SKU
//! state, computes the card with the core policy, and persists and publishes it.
//!
//! Layout:
//! - [`record`] — the `rate` state record: the published proto card and the engine's own
//!   state in a compact protobuf (`wire` holds its messages); JSON records of earlier
//!   releases are still read.
//! - [`decode`] — stream entries as core events.
//! - [`explain`] — the record's inputs as `ExplainRate` shows them.
//! - [`categories`] — the in-memory category overrides every compute needs.
//! - [`consumer`] — the consumer-group loops on `stock`, `overrides` and `incentives`.
//! - `publish_metrics` — the counters of publications and of rate moves by reason and
//!   category, resolved when the engine is built.
//! - [`timers`] — durable time-driven recomputes (hold and boost expiry, override and
//!   incentive windows, peak windows) and the bounded sweep over many SKUs.
//!
//! # How a SKU is updated
//!
//! [`Engine::apply`] reads the SKU's record, folds the events with core
//! [`SkuState::apply`](ratemesh_core::SkuState::apply) (monotonic by ERP sequence for
//! stock, by event time for the rest, so stale and duplicate deliveries change nothing),
//! recomputes the card after every event that changed the state — exactly like
//! [`ratemesh_core::replay()`] — and writes the record back with a compare-and-set on the
//! version it read; on a conflict it re-reads and does it again. When the published card
//! changes, the write and the `RateChanged` append to `rates` are one atomic operation.
//!
//! # Which `now` a computation uses
//!
//! `now` is [`Event::priced_at`]: when ingest accepted a stock reading or product (its
//! `received_at` stamp, never the ERP's `as_of`, which only orders readings and feeds the
//! velocity estimate — a count taken before a peak window opened but delivered after is
//! priced in the window), an override's or incentive's `occurred_at`, a timer's due time;
//! raised to the previous card's `computed_at`, so a SKU's computations never go back in
//! time and no card is dated before ratemesh first saw the SKU. The stamps are in the
//! stream entries, so replaying the same entries produces the same cards whenever and
//! wherever they are processed, which is what the fault tests compare against
//! `core::replay`; the wall clock only decides *when* a timer fires.
//!
//! # What is published
//!
//! A SKU has a published card once it has product data (before that its rate is
//! undefined: readers answer NOT_FOUND, `ExplainRate` shows the inputs waiting for it).
//! A new card is published — `card` field rewritten, the version kept in the durable
//! rate history and `RateChanged` appended — when its effective rate, its
//! `guaranteed_until` or its category changes, the SKU goes out of stock or comes back
//! (networks act on `OUT_OF_STOCK`), its band or reason codes change (so the card served
//! explains the rate as of now: a held rate says `HELD` with its target and hold end), or
//! a base cut is announced, changed or withdrawn (`scheduled_change`). The proto `version`
//! grows by one per publication. Other recomputes (the same explanation with new
//! numbers, e.g. days of cover) only update the `engine` field, and `ExplainRate` shows
//! the current inputs next to the card.

pub mod categories;
pub mod consumer;
pub mod decode;
pub mod explain;
mod publish_metrics;
pub mod record;
pub mod timers;
mod wire;

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use chrono::{DateTime, Utc};
use prost::Message;
use ratemesh_bus::trace_context::{current_traceparent, producer_span, traceparent_of};
use ratemesh_bus::{Bus, BusError, HistoryLimits, RecordCache, StateRecord, StateWrite, Update};
use ratemesh_contract::streams;
use ratemesh_core::{Applied, Event, Override, Policy, RateCard, Reason, Sku, compute};
use ratemesh_proto::v1;
use tracing::Instrument;

use crate::convert::{band_name, card_to_proto, scheduled_change_to_proto};
use categories::CategoryOverrides;
use publish_metrics::{PublishMetrics, RateMoved, Trigger};
use record::{EngineRecord, FIELD_CARD, FIELD_ENGINE, NAMESPACE, Published};

/// Why an update failed.
#[derive(Debug, thiserror::Error)]
pub enum EngineError {
    /// The backend failed; retry later.
    #[error(transparent)]
    Bus(#[from] BusError),
    /// The stored record cannot be read; retrying will not help.
    #[error("state rate/{sku}: engine field does not decode: {problem}")]
    Corrupt {
        /// The SKU.
        sku: String,
        /// What is wrong.
        problem: String,
    },
}

/// What an update did.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Outcome {
    /// Some event changed the state (so the card was recomputed and stored).
    pub changed: bool,
    /// The version of the card published by this update, if one was.
    pub published: Option<u64>,
    /// The published rate moved, and why: counted once the write succeeds.
    pub(crate) moved: Option<RateMoved>,
}

/// The engine's knobs.
#[derive(Debug, Clone)]
pub struct EngineOptions {
    /// SKUs recomputed at once by a sweep and by a batch.
    pub concurrency: usize,
    /// SKUs per `scan_states` page in a sweep.
    pub scan_page: usize,
    /// Pages of a sweep computed and written at once.
    pub sweep_pages: usize,
    /// Timers claimed per poll.
    pub timer_batch: usize,
    /// How often due timers are polled.
    pub timer_poll: Duration,
    /// A sweep over many SKUs re-arms its timer this far ahead, so it runs again after a
    /// crash.
    pub sweep_lease: Duration,
    /// Published versions are kept in the durable history this long after they were
    /// superseded…
    pub history_retention: chrono::TimeDelta,
    /// …and at most this many per SKU.
    pub history_max_versions: u32,
    /// Records the consumer keeps in memory after writing them, so its next batch for the
    /// same SKUs skips reading and decoding them (0 keeps none).
    pub record_cache: usize,
}

impl Default for EngineOptions {
    fn default() -> Self {
        Self {
            concurrency: 64,
            scan_page: 500,
            sweep_pages: 4,
            timer_batch: 256,
            timer_poll: Duration::from_millis(500),
            sweep_lease: Duration::from_secs(300),
            history_retention: chrono::TimeDelta::days(90),
            history_max_versions: 1_000,
            record_cache: 50_000,
        }
    }
}

struct Inner {
    bus: Bus,
    policy: Arc<Policy>,
    categories: CategoryOverrides,
    options: EngineOptions,
    /// Records the consumer last wrote ([`Engine::apply_batch`]).
    cache: RecordCache<EngineRecord>,
    publish: PublishMetrics,
}

/// A SKU's record as a batch starts from it.
enum Seen {
    /// Read from the bus (`None`: absent).
    Read(Option<StateRecord>),
    /// Already decoded, at this version (kept in memory since this engine wrote it, or
    /// decoded by a sweep).
    Kept(u64, EngineRecord),
}

/// The rate engine; cheap to clone.
#[derive(Clone)]
pub struct Engine {
    inner: Arc<Inner>,
}

impl std::fmt::Debug for Engine {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Engine")
            .field("bus", &self.inner.bus)
            .field("program", &self.inner.policy.program_id)
            .finish_non_exhaustive()
    }
}

impl Engine {
    /// An engine over `bus` computing with `policy`.
    pub fn new(bus: Bus, policy: Arc<Policy>, options: EngineOptions) -> Self {
        Self {
            inner: Arc::new(Inner {
                bus,
                publish: PublishMetrics::new(&policy),
                policy,
                categories: CategoryOverrides::default(),
                cache: RecordCache::new(options.record_cache),
                options,
            }),
        }
    }

    /// The bus.
    pub fn bus(&self) -> &Bus {
        &self.inner.bus
    }

    /// The policy.
    pub fn policy(&self) -> &Policy {
        &self.inner.policy
    }

    /// The knobs.
    pub fn options(&self) -> &EngineOptions {
        &self.inner.options
    }

    /// The category overrides in memory.
    pub fn categories(&self) -> &CategoryOverrides {
        &self.inner.categories
    }

    /// Reads a SKU's engine record and the state version it was read at (0 = absent).
    pub async fn load(&self, sku: &Sku) -> Result<(EngineRecord, u64), EngineError> {
        let stored = self.bus().get_state(NAMESPACE, sku.as_str()).await?;
        self.engine_record(sku, stored)
    }

    /// The engine record in the SKU's stored state (a fresh one when there is none), and
    /// the state's version (0 = absent).
    fn engine_record(
        &self,
        sku: &Sku,
        stored: Option<StateRecord>,
    ) -> Result<(EngineRecord, u64), EngineError> {
        match stored {
            None => Ok((EngineRecord::new(sku.clone(), self.policy()), 0)),
            Some(rec) => match rec.fields.get(FIELD_ENGINE) {
                None => Ok((EngineRecord::new(sku.clone(), self.policy()), rec.version)),
                Some(bytes) => EngineRecord::decode(bytes)
                    .map(|r| (r, rec.version))
                    .map_err(|e| EngineError::Corrupt {
                        sku: sku.to_string(),
                        problem: e.to_string(),
                    }),
            },
        }
    }

    /// Folds `events` (all for `sku`, in order) into the SKU's state, recomputing after
    /// each one that changed it, and commits the result. `force` recomputes at `force`'s
    /// time even if no event changed anything (a category override changed).
    pub async fn apply(&self, sku: &Sku, events: &[Event]) -> Result<Outcome, EngineError> {
        self.update(sku, events, None, None).await
    }

    /// [`Engine::apply`] starting from `seen`, the SKU's record as already read (`None`:
    /// not read, `Some(None)`: absent), which saves reading it again.
    pub async fn apply_seen(
        &self,
        sku: &Sku,
        events: &[Event],
        seen: Option<Option<StateRecord>>,
    ) -> Result<Outcome, EngineError> {
        self.update(sku, events, None, seen).await
    }

    /// Recomputes `sku` as of `at` whatever its state (used when something outside the
    /// SKU's own state changed: a category override).
    pub async fn recompute(&self, sku: &Sku, at: DateTime<Utc>) -> Result<Outcome, EngineError> {
        self.update(sku, &[], Some(at), None).await
    }

    /// [`Engine::recompute`] starting from `seen` (see [`Engine::apply_seen`]).
    pub async fn recompute_seen(
        &self,
        sku: &Sku,
        at: DateTime<Utc>,
        seen: Option<Option<StateRecord>>,
    ) -> Result<Outcome, EngineError> {
        self.update(sku, &[], Some(at), seen).await
    }

    async fn update(
        &self,
        sku: &Sku,
        events: &[Event],
        force: Option<DateTime<Utc>>,
        seen: Option<Option<StateRecord>>,
    ) -> Result<Outcome, EngineError> {
        let mut asked = 0u32;
        let step = |stored: Option<StateRecord>, write: StateWrite| {
            if asked > 0 {
                // The previous step's write lost the compare-and-set.
                metrics::counter!("ratemesh_rates_state_conflicts_total").increment(1);
            }
            asked += 1;
            async move {
                let (record, _) = self.engine_record(sku, stored)?;
                let (update, timer, _) = self.decide(events, force, record, write);
                if let Some(at) = timer {
                    // Scheduled before the write: a timer without the write only causes a
                    // harmless extra recompute, a write without its timer would miss one.
                    timers::schedule_sku(self.bus(), sku, at).await?;
                }
                Ok::<_, EngineError>(update)
            }
        };
        // Written here, so what a batch kept in memory is out of date.
        self.inner.cache.forget(sku.as_str());
        let outcome = match seen {
            Some(seen) => {
                self.bus()
                    .update_state_from(NAMESPACE, sku.as_str(), seen, step)
                    .await?
            }
            None => {
                self.bus()
                    .update_state(NAMESPACE, sku.as_str(), step)
                    .await?
            }
        };
        if outcome.published.is_some() {
            self.inner.publish.published(outcome.moved);
        }
        Ok(outcome)
    }

    /// Applies many SKUs' runs of events at once: each SKU folded and computed in memory
    /// from `stored` (its record as read for the batch), the time-driven recomputes of
    /// them all scheduled in one step, and every record written with its publication in
    /// one atomic step per partition ([`Bus::write_states`]), each under its own version
    /// check. A SKU whose record changed since it was read is updated again on its own
    /// (read, fold, compare-and-set). The answers are in the order of `runs`.
    pub async fn apply_many(
        &self,
        runs: Vec<(Sku, Vec<Event>, Option<StateRecord>)>,
    ) -> Vec<Result<Outcome, EngineError>> {
        let runs = runs
            .into_iter()
            .map(|(sku, events, stored)| (sku, events, Seen::Read(stored), tracing::Span::none()))
            .collect();
        self.update_many(runs, None, false).await
    }

    /// What the consumer does with a batch: [`Engine::apply_many`] from the records it
    /// wrote last and still keeps in memory, the others read in one step; the records
    /// written are kept for its next batch (up to [`EngineOptions::record_cache`]).
    ///
    /// Each run comes with the span it is applied in (the consumed entries' trace): the
    /// `RateChanged` it publishes carries that trace on.
    pub async fn apply_batch(
        &self,
        runs: Vec<(Sku, Vec<Event>, tracing::Span)>,
    ) -> Vec<Result<Outcome, EngineError>> {
        let mut seen: Vec<Option<Seen>> = runs
            .iter()
            .map(|(sku, _, _)| {
                self.inner
                    .cache
                    .take(sku.as_str())
                    .map(|(version, record)| Seen::Kept(version, record))
            })
            .collect();
        let missing: Vec<usize> = (0..runs.len()).filter(|&i| seen[i].is_none()).collect();
        if !missing.is_empty() {
            let keys: Vec<&str> = missing.iter().map(|&i| runs[i].0.as_str()).collect();
            match self.bus().get_states(NAMESPACE, &keys).await {
                Ok(stored) => {
                    for (i, stored) in missing.into_iter().zip(stored) {
                        seen[i] = Some(Seen::Read(stored));
                    }
                }
                Err(e) => {
                    tracing::debug!(error = %e, "reading a batch's records failed; reading them one by one");
                }
            }
        }
        let mut batched = Vec::with_capacity(runs.len());
        let mut alone = Vec::new();
        for (i, ((sku, events, span), seen)) in runs.into_iter().zip(seen).enumerate() {
            match seen {
                Some(seen) => batched.push((i, (sku, events, seen, span))),
                None => alone.push((i, sku, events, span)),
            }
        }
        let (order, runs): (Vec<usize>, Vec<_>) = batched.into_iter().unzip();
        let mut results: Vec<Option<Result<Outcome, EngineError>>> =
            (0..order.len() + alone.len()).map(|_| None).collect();
        for (i, result) in order
            .into_iter()
            .zip(self.update_many(runs, None, true).await)
        {
            results[i] = Some(result);
        }
        for (i, sku, events, span) in alone {
            results[i] = Some(self.apply(&sku, &events).instrument(span).await);
        }
        results
            .into_iter()
            .map(|r| r.unwrap_or_else(|| Ok(Outcome::default())))
            .collect()
    }

    /// [`Engine::apply_many`] from records already decoded, each with the state version
    /// it was read at (a sweep's page), recomputing each at `force` if given (as
    /// [`Engine::recompute`]).
    pub async fn apply_decoded(
        &self,
        runs: Vec<(Sku, Vec<Event>, u64, EngineRecord)>,
        force: Option<DateTime<Utc>>,
    ) -> Vec<Result<Outcome, EngineError>> {
        let runs = runs
            .into_iter()
            .map(|(sku, events, version, record)| {
                let seen = Seen::Kept(version, record);
                (sku, events, seen, tracing::Span::none())
            })
            .collect();
        self.update_many(runs, force, false).await
    }

    /// The batched update; `keep` puts the records written (and those left as they were)
    /// in the consumer's cache, otherwise what the cache holds for them is dropped.
    async fn update_many(
        &self,
        runs: Vec<(Sku, Vec<Event>, Seen, tracing::Span)>,
        force: Option<DateTime<Utc>>,
        keep: bool,
    ) -> Vec<Result<Outcome, EngineError>> {
        let mut results: Vec<Option<Result<Outcome, EngineError>>> =
            (0..runs.len()).map(|_| None).collect();
        let mut writes = Vec::new();
        let mut written: Vec<(usize, Outcome, EngineRecord)> = Vec::new();
        let mut timers = Vec::new();
        let mut applied = Vec::with_capacity(runs.len());
        // One PRODUCER span per trace of the batch, open until the write returns.
        let mut producers: Vec<(Option<tracing::Id>, tracing::Span)> = Vec::new();
        for (i, (sku, events, seen, span)) in runs.into_iter().enumerate() {
            let _in_trace = span.enter();
            let decoded = match seen {
                Seen::Kept(version, record) => Ok((record, version)),
                Seen::Read(stored) => self.engine_record(&sku, stored.filter(|r| r.version > 0)),
            };
            if !keep {
                self.inner.cache.forget(sku.as_str());
            }
            let decided = decoded.map(|(record, version)| {
                let write = StateWrite::new(NAMESPACE, sku.as_str()).expect_version(version);
                (self.decide(&events, force, record, write), version)
            });
            applied.push((sku, events));
            let sku = &applied[i].0;
            match decided {
                Err(e) => results[i] = Some(Err(e)),
                Ok(((update, timer, record), version)) => {
                    if let Some(at) = timer {
                        timers.push((timers::sku_member(sku, at), timers::system_time(at)));
                    }
                    match update {
                        Update::Keep(outcome) => {
                            if keep {
                                self.inner.cache.put(sku.as_str(), version, record);
                            }
                            results[i] = Some(Ok(outcome));
                        }
                        Update::Write(write, outcome) => {
                            writes.push((write, None));
                            written.push((i, outcome, record));
                        }
                        Update::WriteAndPublish(write, stream, mut event, outcome) => {
                            if event.traceparent.is_none() {
                                event.traceparent = append_traceparent(stream, &mut producers);
                            }
                            writes.push((write, Some((stream, vec![event]))));
                            written.push((i, outcome, record));
                        }
                    }
                }
            }
        }
        // The Redis calls of a batch of one trace (a big push) are part of it, under its
        // append; a batch of several traces serves them all and joins none.
        let in_trace = match producers.as_slice() {
            [(_, producer)] => producer.clone(),
            _ => tracing::Span::none(),
        };
        // Scheduled before the writes, as in a single update.
        let scheduled = self
            .bus()
            .schedule_many(timers::QUEUE, &timers)
            .instrument(in_trace.clone())
            .await;
        if let Err(e) = scheduled {
            for (i, _, _) in written {
                results[i] = Some(Err(e.clone().into()));
            }
        } else {
            let answers = self.bus().write_states(writes).instrument(in_trace).await;
            for ((i, outcome, record), answer) in written.into_iter().zip(answers) {
                results[i] = Some(match answer {
                    Ok((version, _)) => {
                        if outcome.published.is_some() {
                            self.inner.publish.published(outcome.moved);
                        }
                        if keep {
                            self.inner.cache.put(applied[i].0.as_str(), version, record);
                        }
                        Ok(outcome)
                    }
                    Err(BusError::Conflict { .. }) => {
                        metrics::counter!("ratemesh_rates_state_conflicts_total").increment(1);
                        let (sku, events) = &applied[i];
                        self.update(sku, events, force, None).await
                    }
                    Err(e) => Err(e.into()),
                });
            }
        }
        results
            .into_iter()
            .map(|r| r.unwrap_or_else(|| Ok(Outcome::default())))
            .collect()
    }

    /// What an update from `record` writes (`write` is bound to the version it was
    /// read at): the events folded in order, the card recomputed after each one that
    /// changed the state (and at `force`, if given), and the publication if the card
    /// changed. Also the time-driven recompute to schedule, if it moved, and the record
    /// as written (or as it was, when nothing changed).
    fn decide(
        &self,
        events: &[Event],
        force: Option<DateTime<Utc>>,
        mut record: EngineRecord,
        write: StateWrite,
    ) -> (Update<Outcome>, Option<DateTime<Utc>>, EngineRecord) {
        let categories = self.categories().snapshot();
        // What last changed the state: the reason a published rate moved.
        let mut trigger = None;
        for event in events {
            if record.state.apply(event) == Applied::Applied {
                self.recompute_in(&mut record, &categories, event.priced_at());
                trigger = Some(Trigger::of(event));
            }
        }
        if let Some(at) = force
            && record.state.product.is_some()
        {
            self.recompute_in(&mut record, &categories, at);
            // A forced recompute follows a category override (see `apply_category`).
            trigger = trigger.or(Some(Trigger::Override));
        }
        let Some(trigger) = trigger else {
            metrics::counter!("ratemesh_rates_events_skipped_total").increment(events.len() as u64);
            return (Update::Keep(Outcome::default()), None, record);
        };
        self.commit(record, write, &categories, trigger)
    }

    fn recompute_in(&self, record: &mut EngineRecord, categories: &[Override], at: DateTime<Utc>) {
        let now = record.card.as_ref().map_or(at, |c| c.computed_at.max(at));
        let card = compute(
            self.policy(),
            &record.state.inputs_with(categories),
            record.card.as_ref(),
            now,
        );
        record.card = Some(card);
    }

    /// The write of the record (`write` is bound to the version it was read at), with
    /// the publication of the card if it changed, the SKU's next time-driven recompute
    /// if it moved (to be scheduled before the write), and the record as written.
    fn commit(
        &self,
        mut record: EngineRecord,
        write: StateWrite,
        categories: &[Override],
        trigger: Trigger,
    ) -> (Update<Outcome>, Option<DateTime<Utc>>, EngineRecord) {
        // Listed under its category, so a category's recompute reads only its SKUs.
        let write = match record.category() {
            Some(category) if !category.is_empty() && !category.contains('\0') => {
                write.listed_in(category)
            }
            _ => write,
        };
        let next = record.card.as_ref().and_then(|card| {
            ratemesh_core::timers::next_recompute(self.policy(), &record.state, card)
        });
        let mut timer = None;
        if next != record.next_recompute {
            timer = next;
            record.next_recompute = next;
        }
        let Some((published, card)) = self.publication(&record, categories) else {
            let update = Update::Write(
                write.set(FIELD_ENGINE, record.encode()),
                Outcome {
                    changed: true,
                    published: None,
                    moved: None,
                },
            );
            return (update, timer, record);
        };
        let version = published.version;
        let moved = (record.published.as_ref().map(|p| p.rate) != Some(published.rate))
            .then(|| self.inner.publish.moved(trigger, Some(&published.category)));
        record.published = Some(published);
        let encoded = Bytes::from(card.encode_to_vec());
        let computed_at = record
            .card
            .as_ref()
            .map_or_else(Utc::now, |c| c.computed_at);
        let options = self.options();
        let write = write.set(FIELD_ENGINE, record.encode()).set_kept(
            FIELD_CARD,
            encoded,
            computed_at.timestamp_micros(),
            version,
            HistoryLimits {
                keep_since_us: (computed_at - options.history_retention).timestamp_micros(),
                max_versions: options.history_max_versions,
            },
        );
        let update = Update::WriteAndPublish(
            write,
            streams::RATES,
            ratemesh_contract::rate::rate_changed(card, computed_at),
            Outcome {
                changed: true,
                published: Some(version),
                moved,
            },
        );
        (update, timer, record)
    }

    /// The card to publish, if the record's current card differs from the published one
    /// in what partners act on or read: rate, guarantee, category, out of stock, band and
    /// reasons, or an announced cut.
    fn publication(
        &self,
        record: &EngineRecord,
        categories: &[Override],
    ) -> Option<(Published, v1::RateCard)> {
        let card = record.card.as_ref()?;
        let category = record.category()?.to_owned();
        let out_of_stock = card
            .reasons
            .iter()
            .any(|r| matches!(r, Reason::OutOfStock { .. }));
        let band = band_name(self.policy(), &category, card);
        let explanation = explanation(&band, &card.reasons);
        let scheduled_cut = card
            .state
            .pending_cut
            .filter(|cut| cut.effective_at > card.computed_at);
        let same = record.published.as_ref().is_some_and(|p| {
            p.rate == card.effective_rate
                && p.guaranteed_until == card.guaranteed_until
                && p.category == category
                && p.out_of_stock == out_of_stock
                && p.explanation == explanation
                && p.scheduled_cut == scheduled_cut
        });
        if same {
            return None;
        }
        let version = record.published.as_ref().map_or(1, |p| p.version + 1);
        let previous_rate = record.published.as_ref().map(|p| p.rate);
        let mut proto = card_to_proto(self.policy(), card, &category, version, previous_rate);
        if let Some(cut) = &scheduled_cut {
            // What the timer at the cut's instant will compute if nothing else changes.
            let then = compute(
                self.policy(),
                &record.state.inputs_with(categories),
                Some(card),
                cut.effective_at,
            );
            proto.scheduled_change = Some(scheduled_change_to_proto(cut, then.effective_rate));
        }
        Some((
            Published {
                version,
                rate: card.effective_rate,
                guaranteed_until: card.guaranteed_until,
                category,
                out_of_stock,
                explanation,
                scheduled_cut,
            },
            proto,
        ))
    }

    /// Folds a category override event into the book and recomputes the category's SKUs
    /// as of the event's time. Returns how many SKUs were recomputed.
    pub async fn apply_category(&self, category: &str, event: &Event) -> Result<u64, EngineError> {
        let at = event.priced_at();
        // The sweep records how far it got under the override and instant it applies, so
        // the entry delivered again after a crash resumes it instead of starting over.
        let mut progress = None;
        match event {
            Event::OverrideSet { value, at } => {
                progress = Some(format!("override:{}:{}", value.id, timers::ceil_ms(*at)));
                self.categories().set(value, *at);
                for due in ratemesh_core::timers::category_recomputes(value, *at) {
                    timers::schedule_category(self.bus(), category, due).await?;
                }
            }
            Event::OverrideCleared { id, at, .. } => {
                progress = Some(format!("override:{id}:{}", timers::ceil_ms(*at)));
                self.categories().clear(id, *at);
            }
            _ => {}
        }
        timers::sweep(self, Some(category), at, false, progress.as_deref()).await
    }

    /// The published proto card of `sku`, if any (for callers that must answer with it).
    pub async fn published_card(&self, sku: &Sku) -> Result<Option<v1::RateCard>, EngineError> {
        ratemesh_contract::rate::published_card(self.bus(), sku.as_str())
            .await
            .map_err(|e| match e {
                ratemesh_contract::rate::CardReadError::Bus(e) => EngineError::Bus(e),
                ratemesh_contract::rate::CardReadError::Corrupt { sku, problem } => {
                    EngineError::Corrupt {
                        sku,
                        problem: problem.to_string(),
                    }
                }
            })
    }
}

/// What a published card says about why its rate is what it is: the band and the reason
/// codes, with the target and end of a hold and the terms of an announced cut (their
/// other numbers, such as days of cover, are as of the publication).
fn explanation(band: &str, reasons: &[Reason]) -> String {
    let mut text = band.to_owned();
    for reason in reasons {
        text.push('|');
        match reason {
            Reason::Held { .. }
            | Reason::BaseCutScheduled { .. }
            | Reason::BaseCutLimited { .. } => {
                text.push_str(&reason.to_string());
            }
            other => text.push_str(&crate::convert::reason_code(other)),
        }
    }
    text
}

/// The core card stored for `sku` by the engine, if any (tests and tools).
pub async fn stored_core_card(engine: &Engine, sku: &Sku) -> Result<Option<RateCard>, EngineError> {
    Ok(engine.load(sku).await?.0.card)
}

/// The `traceparent` of an append to `stream` in the current span (a run's trace): the
/// PRODUCER span of that trace in `producers`, made on its first append, so a batch of
/// one trace makes one span, however many SKUs it moved.
fn append_traceparent(
    stream: &str,
    producers: &mut Vec<(Option<tracing::Id>, tracing::Span)>,
) -> Option<String> {
    let current = tracing::Span::current().id();
    let at = match producers.iter().position(|(id, _)| *id == current) {
        Some(at) => at,
        None => {
            producers.push((current, producer_span(stream)));
            producers.len() - 1
        }
    };
    // A disabled producer span (filtered out) still leaves the run's trace.
    traceparent_of(&producers[at].1).or_else(current_traceparent)
}
