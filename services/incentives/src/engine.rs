//! The decisions: folding stock into each SKU's record, booking sales against budgets,
//! and opening, extending and closing incentives with the core rules.
//!
//! A sale is booked at the bonus the published rate actually carried ([`paid_bonus`]:
//! after the cap and the margin guard), and the decision that follows closes the incentive
//! on the reading that reaches a budget, whatever the ERP's step overshot. A SKU that
//! qualifies while its category or the program is full waits (store [`Waiting`]); the
//! sweep gives every freed slot to the most overstocked waiting SKU that still qualifies.
//!
//! Every change is a compare-and-set on the SKU's record (the stock readings of a batch
//! for SKUs without an active incentive are folded together and saved in one step per
//! partition, each record under its own version check; [`Engine::fold_quiet`]); a
//! transition is written together
//! with its `IncentiveChanged` event ([`Store::update`]), so the stream and the
//! state never disagree and two replicas cannot both open an incentive on one SKU. What
//! follows a committed transition (the listing projection, the slot table, timers) is
//! repaired by the sweep if the process dies in between.

use std::collections::HashSet;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use chrono::{DateTime, TimeDelta, Utc};
use ratemesh_bus::BusError;
use ratemesh_core::policy::flash::FlashRules;
use ratemesh_core::{
    Applied, Candidate, CloseReason, DaysOfCover, Decision, Event as CoreEvent, Incentive,
    IncentiveInputs, IncentiveTrack, LossReason, Money, NothingReason, Policy, Quantity, Rate, Sku,
    decide, paid_bonus, select,
};
use ratemesh_proto::v1;
use ratemesh_runtime::ApiError;
use ratemesh_runtime::error::Conflict;
use rust_decimal::Decimal;
use tracing::Instrument;

use crate::clock::Clock;
use crate::events::incentive_changed;
use crate::record::{End, Ended, Meta, Origin, SkuRecord, to_proto};
use crate::store::{Change, Store, StoreError, Waiting};

/// Metric: transitions published, by `transition`, `reason` and `origin`.
pub const METRIC_TRANSITIONS: &str = "ratemesh_incentives_transitions_total";
/// Metric: SKUs that qualified but did not open, by `reason`.
pub const METRIC_SKIPPED: &str = "ratemesh_incentives_skipped_total";
/// Metric: incentives holding a concurrency slot.
pub const METRIC_ACTIVE: &str = "ratemesh_incentives_active";

/// A merchandiser's request, already validated field by field.
#[derive(Debug, Clone)]
pub struct Trigger {
    /// The SKU.
    pub sku: Sku,
    /// The bonus.
    pub bonus: Rate,
    /// The window length.
    pub duration: TimeDelta,
    /// Spend budget, if any.
    pub budget_spend: Option<Decimal>,
    /// Unit budget, if any.
    pub budget_units: Option<Decimal>,
    /// Why.
    pub reason: String,
    /// The caller.
    pub author: String,
}

/// What [`Engine::fold_quiet`] did with one SKU's run.
#[derive(Debug)]
pub enum Quiet {
    /// Folded and saved; the SKU's candidate for a new incentive, if it qualifies.
    Folded(Option<Candidate>),
    /// Not folded: apply the run event by event with [`Engine::process`].
    Busy,
    /// Reading or saving failed; nothing of the run was saved.
    Failed(String),
}

/// The service's decision maker; shared by the consumer, the timer loop and the API.
#[derive(Debug)]
pub struct Engine {
    pub(crate) store: Store,
    pub(crate) policy: Arc<Policy>,
    pub(crate) clock: Arc<dyn Clock>,
}

/// A close saved with its record, for [`Engine::closed`] to report.
#[derive(Debug)]
struct Closed {
    sku: Sku,
    proto: v1::Incentive,
    reason: CloseReason,
    origin: Origin,
}

/// An extension saved with its record, for [`Engine::extended`] to report.
#[derive(Debug)]
struct Extended {
    sku: Sku,
    incentive: Incentive,
    origin: Origin,
    proto: v1::Incentive,
}

/// What a change saved by [`Engine::process`] still has to report.
#[derive(Debug)]
enum Committed {
    Nothing,
    Closed(Closed),
    Extended(Extended),
    /// Sales were booked; the active incentive as it now stands, for the listing.
    Booked(Option<v1::Incentive>),
}

impl From<StoreError> for ApiError {
    fn from(e: StoreError) -> Self {
        match e {
            StoreError::Bus(BusError::Unavailable(m)) => ApiError::unavailable(m),
            other => ApiError::Internal(other.to_string()),
        }
    }
}

fn conflict(kind: &str, subject: &str, description: String) -> ApiError {
    ApiError::FailedPrecondition {
        message: description.clone(),
        conflicts: vec![Conflict {
            kind: kind.to_owned(),
            subject: subject.to_owned(),
            description,
        }],
    }
}

fn reason_label(r: CloseReason) -> &'static str {
    match r {
        CloseReason::Expired => "expired",
        CloseReason::SoldThrough => "sold_through",
        CloseReason::BudgetExhausted => "budget_exhausted",
        CloseReason::BudgetForecast => "budget_forecast",
        CloseReason::Cancelled => "cancelled",
    }
}

fn origin_label(o: Origin) -> &'static str {
    match o {
        Origin::Automatic => "automatic",
        Origin::Manual => "manual",
    }
}

fn loss_label(l: &LossReason) -> &'static str {
    match l {
        LossReason::CategoryFull { .. } => "category_full",
        LossReason::ProgramFull { .. } => "program_full",
        LossReason::DuplicateCandidate => "duplicate_candidate",
    }
}

/// Books units sold since the previous reading against the active incentive's budgets,
/// at `paid`, the part of the bonus the rate carried.
fn book_sale(rec: &mut SkuRecord, before: Quantity, as_of: DateTime<Utc>, paid: Rate) {
    let Some(price) = rec.view.product.as_ref().map(|p| p.price) else {
        return;
    };
    let after = rec.view.available;
    let Some(inc) = rec.track.active.as_mut() else {
        return;
    };
    // Depletion observed before the window opened was not driven by the bonus.
    if as_of < inc.opened_at {
        return;
    }
    let sold = before.get() - after.get();
    if let Ok(sold) = Quantity::new(sold)
        && sold > Quantity::ZERO
    {
        inc.record_sale(sold, price, paid);
    }
}

/// The latest ERP reading time over the SKU's locations.
fn last_report(rec: &SkuRecord) -> Option<DateTime<Utc>> {
    rec.view.stock.values().map(|l| l.as_of).max()
}

/// The SKU's rate before the incentive and the guardrails, read off its published card:
/// the effective rate less the guardrails' and the incentive's parts. `None` when an
/// override pins or excludes the rate, so no bonus reaches it.
fn rate_before_incentive(card: &v1::RateCard) -> Option<Decimal> {
    if card
        .reasons
        .iter()
        .any(|r| r.code == "OVERRIDE_PIN" || r.code == "OVERRIDE_EXCLUDE")
    {
        return None;
    }
    let parse = |s: &str| s.trim().parse::<Decimal>().unwrap_or(Decimal::ZERO);
    let parts = card.parts.clone().unwrap_or_default();
    Some(parse(&card.effective_rate) - parse(&parts.guardrail_adjustment) - parse(&parts.incentive))
}

impl Engine {
    /// The rules the SKU's incentive runs under.
    fn rules(&self, rec: &SkuRecord) -> FlashRules {
        let mut rules = self.policy.category(rec.category()).flash.clone();
        if rec
            .meta
            .as_ref()
            .is_some_and(|m| m.origin == Origin::Manual)
        {
            // A merchandiser's window is what they asked for: it is not extended, and it
            // ends early only when the SKU sells out or a budget is used up.
            rules.max_extensions = 0;
            rules.exit_cover = DaysOfCover::ZERO;
        }
        rules
    }

    fn inputs(rec: &SkuRecord) -> IncentiveInputs {
        IncentiveInputs {
            available: rec.view.available,
            velocity: rec.view.velocity.velocity(),
            price: rec.view.product.as_ref().map(|p| p.price),
            report_interval: rec.report_interval_secs.map(TimeDelta::seconds),
        }
    }

    /// Counts a reading that would open an incentive on `sku` but for its cooldown. Every
    /// stock reading of such a SKU lands here (every few seconds at peak): the counter is
    /// the signal, the line is for debugging.
    fn note_cooldown(
        &self,
        sku: &Sku,
        why: &NothingReason,
        rules: &FlashRules,
        rec: &SkuRecord,
        now: DateTime<Utc>,
    ) {
        if let NothingReason::Cooldown { until } = why
            && matches!(
                decide(&IncentiveTrack::default(), rules, &Self::inputs(rec), now),
                Decision::Open { .. }
            )
        {
            tracing::debug!(sku = %sku, %until, "overstocked SKU skipped: in cooldown");
            metrics::counter!(METRIC_SKIPPED, "reason" => "cooldown").increment(1);
        }
    }

    /// The part of the active incentive's bonus the SKU's rate carries: the bonus on top
    /// of the published card's rate before incentive and guardrails (the base rate before
    /// the rates service published one), cut by the category's cap and margin guard.
    async fn paid_bonus(&self, rec: &SkuRecord) -> Result<Rate, StoreError> {
        let (Some(inc), Some(product)) = (rec.track.active.as_ref(), rec.view.product.as_ref())
        else {
            return Ok(Rate::ZERO);
        };
        let before = match self.published_card(&rec.view.sku).await? {
            Some(card) => match rate_before_incentive(&card) {
                Some(before) => before,
                None => return Ok(Rate::ZERO),
            },
            None => product
                .base_rate
                .unwrap_or(self.policy.category(&product.category).base_rate)
                .get(),
        };
        Ok(paid_bonus(&self.policy, product, before, inc.bonus))
    }

    fn rule_name(&self, category: &str) -> String {
        if self.policy.category_names().any(|c| c == category) {
            format!("overstock-{category}")
        } else {
            "overstock-default".to_owned()
        }
    }

    /// Folds many SKUs' runs of stock events at once, for the SKUs that have no active
    /// incentive (most of them, most of the time): their records read in one step,
    /// each run folded in memory and decided on, and the changed records saved in one
    /// atomic step per partition. Per run, in order: the candidate for a new incentive if
    /// the SKU qualifies ([`Quiet::Folded`]), or [`Quiet::Busy`] when the SKU must go
    /// through [`Engine::process`] event by event (an active incentive books sales and
    /// may close or extend; another writer changed its record in between), or the error.
    pub async fn fold_quiet(&self, runs: &[(Sku, Vec<CoreEvent>)]) -> Vec<Quiet> {
        let skus: Vec<Sku> = runs.iter().map(|(sku, _)| sku.clone()).collect();
        let records = match self.store.load_many(&skus, &self.policy).await {
            Ok(records) => records,
            Err(e) => return runs.iter().map(|_| Quiet::Failed(e.to_string())).collect(),
        };
        let now = self.clock.now();
        let mut answers: Vec<Quiet> = Vec::with_capacity(runs.len());
        let mut to_save: Vec<(u64, SkuRecord)> = Vec::new();
        let mut saved_at: Vec<usize> = Vec::new();
        for ((sku, events), (version, mut rec)) in runs.iter().zip(records) {
            if rec.track.active.is_some() {
                self.store.keep(version, rec);
                answers.push(Quiet::Busy);
                continue;
            }
            // Decided after every event, as event by event: a candidate is the last
            // event's that qualified, and every reading in cooldown is counted.
            let mut changed = false;
            let mut candidate = None;
            let mut busy = false;
            for e in events {
                let reported = last_report(&rec);
                let applied = rec.view.apply(e) == Applied::Applied;
                if applied {
                    changed = true;
                    if let CoreEvent::StockObserved { as_of, .. } = e
                        && let Some(last) = reported
                        && *as_of > last
                    {
                        rec.report_interval_secs = Some((*as_of - last).num_seconds());
                    }
                }
                let rules = self.rules(&rec);
                match decide(&rec.track, &rules, &Self::inputs(&rec), now) {
                    Decision::Open { cover, .. } => {
                        candidate = Some(Candidate {
                            sku: sku.clone(),
                            category: rec.category().to_owned(),
                            cover,
                        });
                    }
                    Decision::Nothing { why } => {
                        if applied {
                            self.note_cooldown(sku, &why, &rules, &rec, now);
                        }
                    }
                    // Only an active incentive closes or extends.
                    Decision::Close { .. } | Decision::Extend { .. } => {
                        busy = true;
                        break;
                    }
                }
            }
            if busy {
                // Not saved: what is stored is still the record as read.
                answers.push(Quiet::Busy);
                continue;
            }
            if changed {
                saved_at.push(answers.len());
                to_save.push((version, rec));
            } else {
                self.store.keep(version, rec);
            }
            answers.push(Quiet::Folded(candidate));
        }
        match self.store.save_many(to_save).await {
            Ok(saved) => {
                for (i, result) in saved_at.into_iter().zip(saved) {
                    match result {
                        Ok(()) => {}
                        Err(BusError::Conflict { .. }) => answers[i] = Quiet::Busy,
                        Err(e) => answers[i] = Quiet::Failed(e.to_string()),
                    }
                }
            }
            Err(e) => {
                for i in saved_at {
                    answers[i] = Quiet::Failed(e.to_string());
                }
            }
        }
        answers
    }

    /// Folds `event` (if any) into `sku`'s record, books sales, and acts on the rules:
    /// closes and extensions are committed here; a SKU that qualifies for a new incentive
    /// is returned as a candidate for [`Engine::open_candidates`].
    pub async fn process(
        &self,
        sku: &Sku,
        event: Option<&CoreEvent>,
    ) -> Result<Option<Candidate>, StoreError> {
        let (candidate, committed) = self
            .store
            .update(sku, &self.policy, |mut rec| async move {
                let mut changed = false;
                if let Some(e) = event {
                    let before = rec.view.available;
                    let reported = last_report(&rec);
                    if rec.view.apply(e) == Applied::Applied {
                        changed = true;
                        if let CoreEvent::StockObserved { as_of, .. } = e {
                            if let Some(last) = reported
                                && *as_of > last
                            {
                                rec.report_interval_secs = Some((*as_of - last).num_seconds());
                            }
                            if rec.track.active.is_some() {
                                let paid = self.paid_bonus(&rec).await?;
                                book_sale(&mut rec, before, *as_of, paid);
                            }
                        }
                    }
                }
                let now = self.clock.now();
                let rules = self.rules(&rec);
                let decision = decide(&rec.track, &rules, &Self::inputs(&rec), now);
                Ok::<_, StoreError>(match decision {
                    Decision::Close { reason } => self
                        .close(rec, reason, now, String::new(), String::new())?
                        .map(|closed| (None, Committed::Closed(closed))),
                    Decision::Extend { ends_at } => self
                        .extend(rec, ends_at, now)
                        .await?
                        .map(|extended| (None, Committed::Extended(extended))),
                    Decision::Open { cover, .. } => {
                        let candidate = Candidate {
                            sku: sku.clone(),
                            category: rec.category().to_owned(),
                            cover,
                        };
                        if changed {
                            Change::Save(rec, (Some(candidate), Committed::Nothing))
                        } else {
                            Change::Keep((Some(candidate), Committed::Nothing))
                        }
                    }
                    Decision::Nothing { why } => {
                        if changed {
                            self.note_cooldown(sku, &why, &rules, &rec, now);
                            // Budget accounting moved: keep the listing current.
                            let active = rec.active_proto();
                            Change::Save(rec, (None, Committed::Booked(active)))
                        } else {
                            Change::Keep((None, Committed::Nothing))
                        }
                    }
                })
            })
            .await?;
        match committed {
            Committed::Nothing | Committed::Booked(None) => {}
            Committed::Closed(closed) => self.closed(&closed).await,
            Committed::Extended(extended) => self.extended(&extended).await,
            Committed::Booked(Some(active)) => {
                if let Err(e) = self.store.project(&active).await {
                    tracing::warn!(sku = %sku, error = %e, "incentive listing not updated");
                }
            }
        }
        Ok(candidate)
    }

    /// Ends the active incentive of `rec` for `reason`: the record to save with its
    /// event, and the incentive ended, which [`Engine::closed`] reports once it is saved.
    fn close(
        &self,
        mut rec: SkuRecord,
        reason: CloseReason,
        now: DateTime<Utc>,
        by: String,
        cancel_reason: String,
    ) -> Result<Change<Closed>, StoreError> {
        let sku = rec.view.sku.clone();
        let category = rec.category().to_owned();
        let rules = self.rules(&rec);
        let meta = rec.meta.take().ok_or_else(|| {
            StoreError::Corrupt(format!("incentive/{sku}: active incentive without details"))
        })?;
        let closed = rec
            .track
            .apply(
                &Decision::Close { reason },
                &sku,
                &category,
                &rules,
                String::new,
                now,
            )
            .ok_or_else(|| StoreError::Corrupt(format!("incentive/{sku}: nothing to close")))?;
        let ended = Ended {
            incentive: closed,
            meta,
            end: End {
                reason,
                at: now,
                by,
                cancel_reason,
            },
        };
        let proto = ended.to_proto();
        let origin = ended.meta.origin;
        rec.last_ended = Some(ended);
        let event = incentive_changed(proto.clone(), v1::IncentiveTransition::Ended, now);
        Ok(Change::SaveAndPublish(
            rec,
            event,
            Closed {
                sku,
                proto,
                reason,
                origin,
            },
        ))
    }

    /// Reports a saved close and does what follows it; a failure of those follow-ups is
    /// repaired by the sweep.
    async fn closed(&self, closed: &Closed) {
        let Closed {
            sku,
            proto,
            reason,
            origin,
        } = closed;
        let reason = *reason;
        tracing::info!(
            sku = %sku,
            id = %proto.id,
            reason = reason_label(reason),
            spent = %proto.spent,
            units_sold = %proto.units_sold,
            units_over_budget = %proto.units_over_budget,
            spend_over_budget = %proto.spend_over_budget,
            "incentive ended: {reason}"
        );
        metrics::counter!(METRIC_TRANSITIONS, "transition" => "ended", "reason" => reason_label(reason), "origin" => origin_label(*origin)).increment(1);
        self.after_close(sku, proto).await;
    }

    /// Follow-ups of a committed close; a failure is repaired by the sweep.
    async fn after_close(&self, sku: &Sku, proto: &v1::Incentive) {
        let results = [
            self.store.project(proto).await,
            self.store.release(sku).await,
            self.store.cancel_expiry(sku).await,
        ];
        for e in results.into_iter().filter_map(Result::err) {
            tracing::warn!(sku = %sku, error = %e, "follow-up of an ended incentive failed; the sweep repairs it");
        }
    }

    /// Extends the active incentive of `rec` to `ends_at`: the record to save with its
    /// event, and the incentive extended, which [`Engine::extended`] reports once it is
    /// saved.
    async fn extend(
        &self,
        mut rec: SkuRecord,
        ends_at: DateTime<Utc>,
        now: DateTime<Utc>,
    ) -> Result<Change<Extended>, StoreError> {
        let sku = rec.view.sku.clone();
        let category = rec.category().to_owned();
        let rules = self.rules(&rec);
        // The timer goes first: if the write then fails, a spurious expiry re-decides
        // harmlessly; the other order could lose the expiry.
        self.store.schedule_expiry(&sku, ends_at).await?;
        let inc = rec
            .track
            .apply(
                &Decision::Extend { ends_at },
                &sku,
                &category,
                &rules,
                String::new,
                now,
            )
            .ok_or_else(|| StoreError::Corrupt(format!("incentive/{sku}: nothing to extend")))?;
        let meta = rec.meta.clone().ok_or_else(|| {
            StoreError::Corrupt(format!("incentive/{sku}: active incentive without details"))
        })?;
        let proto = to_proto(&inc, &meta, None);
        let event = incentive_changed(proto.clone(), v1::IncentiveTransition::Extended, now);
        Ok(Change::SaveAndPublish(
            rec,
            event,
            Extended {
                sku,
                incentive: inc,
                origin: meta.origin,
                proto,
            },
        ))
    }

    /// Reports a saved extension and keeps the listing current.
    async fn extended(&self, extended: &Extended) {
        let Extended {
            sku,
            incentive: inc,
            origin,
            proto,
        } = extended;
        tracing::info!(sku = %sku, id = %inc.id, ends_at = %inc.ends_at, extensions = inc.extensions, "incentive extended");
        metrics::counter!(METRIC_TRANSITIONS, "transition" => "extended", "reason" => "", "origin" => origin_label(*origin)).increment(1);
        if let Err(e) = self.store.project(proto).await {
            tracing::warn!(sku = %sku, error = %e, "incentive listing not updated");
        }
    }

    /// Counts an overstocked SKU that did not open, and logs it: at info when it starts
    /// waiting (`first`), at debug on the readings after that, which land here every few
    /// seconds at peak while the limit stays full (the counter is the signal).
    fn skipped(&self, candidate: &Candidate, why: &LossReason, first: bool) {
        if first {
            tracing::info!(
                sku = %candidate.sku,
                category = %candidate.category,
                cover = %candidate.cover,
                reason = loss_label(why),
                "overstocked SKU skipped: {why}"
            );
        } else {
            tracing::debug!(
                sku = %candidate.sku,
                category = %candidate.category,
                cover = %candidate.cover,
                reason = loss_label(why),
                "overstocked SKU skipped again: {why}"
            );
        }
        metrics::counter!(METRIC_SKIPPED, "reason" => loss_label(why)).increment(1);
    }

    /// Opens incentives for as many candidates as the concurrency limits allow, the most
    /// overstocked first; every other one is logged with why and counted. Returns the
    /// SKUs whose open failed on the backend (their stock entries are retried).
    pub async fn open_candidates(&self, candidates: Vec<Candidate>) -> Vec<Sku> {
        self.open_candidates_traced(candidates, |_| tracing::Span::current())
            .await
    }

    /// [`Engine::open_candidates`], each incentive opened in the span `trace_of` gives
    /// its SKU: the trace of the stock reading that made it a candidate, so the
    /// `IncentiveChanged` it publishes, the rate it moves and the partner delivery it
    /// causes stay in that trace.
    pub async fn open_candidates_traced(
        &self,
        candidates: Vec<Candidate>,
        trace_of: impl Fn(&Sku) -> tracing::Span,
    ) -> Vec<Sku> {
        if candidates.is_empty() {
            return Vec::new();
        }
        let counts = match self.store.active_counts().await {
            Ok(c) => c,
            Err(e) => {
                tracing::warn!(error = %e, "cannot read incentive slots");
                return candidates.into_iter().map(|c| c.sku).collect();
            }
        };
        let selection = select(&candidates, &counts, &self.policy);
        let started_waiting = self
            .wait_for_slot(
                selection
                    .losers
                    .iter()
                    .filter(|(_, why)| !matches!(why, LossReason::DuplicateCandidate))
                    .map(|(c, _)| c)
                    .collect(),
            )
            .await;
        for (c, why) in &selection.losers {
            let first =
                !matches!(why, LossReason::DuplicateCandidate) && started_waiting.contains(&c.sku);
            self.skipped(c, why, first);
        }
        let mut failed = Vec::new();
        for c in selection.winners {
            match self.open_automatic(&c).instrument(trace_of(&c.sku)).await {
                Ok(true) => {
                    if let Err(e) = self.store.stop_waiting(&c.sku).await {
                        tracing::warn!(sku = %c.sku, error = %e, "waiting entry not removed; the sweep drops it");
                    }
                }
                Ok(false) => {}
                Err(e) => {
                    tracing::warn!(sku = %c.sku, error = %e, "opening an incentive failed");
                    failed.push(c.sku);
                }
            }
        }
        failed
    }

    /// Remembers candidates that lost to a full limit, so a freed slot finds them; returns
    /// those that were not waiting yet (all of them if that is unknown).
    async fn wait_for_slot(&self, losers: Vec<&Candidate>) -> HashSet<Sku> {
        if losers.is_empty() {
            return HashSet::new();
        }
        match self.store.wait(&losers, self.clock.now()).await {
            Ok(started) => losers
                .iter()
                .zip(started)
                .filter(|(_, started)| *started)
                .map(|(c, _)| c.sku.clone())
                .collect(),
            Err(e) => {
                tracing::warn!(candidates = losers.len(), error = %e, "waiting candidates not recorded; their next stock readings offer them again");
                losers.iter().map(|c| c.sku.clone()).collect()
            }
        }
    }

    /// Offers free slots to the SKUs waiting for one: each waiting SKU whose category and
    /// the program have room is re-decided from its record, and [`select`] opens the most
    /// overstocked of those that still qualify. A SKU that no longer qualifies stops
    /// waiting. Returns how many opened.
    pub async fn fill_free_slots(&self) -> Result<usize, StoreError> {
        let counts = self.store.active_counts().await?;
        if counts.program >= self.policy.max_concurrent_incentives {
            return Ok(0);
        }
        let waiting = self.store.waiting().await?;
        let has_room = |w: &Waiting| {
            let open = counts.per_category.get(&w.category).copied().unwrap_or(0);
            open < self.policy.category(&w.category).flash.max_concurrent
        };
        let mut candidates = Vec::new();
        for key in waiting.iter().filter(|(_, w)| has_room(w)).map(|(k, _)| k) {
            let Ok(sku) = Sku::new(key.clone()) else {
                continue;
            };
            match self.process(&sku, None).await? {
                Some(c) => candidates.push(c),
                None => self.store.stop_waiting(&sku).await?,
            }
        }
        let offered: Vec<Sku> = candidates.iter().map(|c| c.sku.clone()).collect();
        let failed = self.open_candidates(candidates).await;
        let after = self.store.slots().await?;
        let opened = offered
            .iter()
            .filter(|s| after.contains_key(s.as_str()) && !failed.contains(s))
            .count();
        Ok(opened)
    }

    /// Opens an incentive on `c` by rule if it still qualifies and a slot is free.
    async fn open_automatic(&self, c: &Candidate) -> Result<bool, StoreError> {
        let now = self.clock.now();
        if let Err(loss) = self
            .store
            .reserve(&c.sku, &c.category, &self.policy, now)
            .await?
        {
            self.skipped(c, &loss, true);
            return Ok(false);
        }
        let (opened, free_slot) = self
            .store
            .update(&c.sku, &self.policy, |mut rec| async move {
                let now = self.clock.now();
                let rules = self.rules(&rec);
                let decision = decide(&rec.track, &rules, &Self::inputs(&rec), now);
                let Decision::Open { cover, .. } = decision else {
                    // Someone else opened it (the slot is theirs) or it no longer qualifies.
                    return Ok::<_, StoreError>(Change::Keep((None, rec.track.active.is_none())));
                };
                let category = rec.category().to_owned();
                let id = ulid::Ulid::generate().to_string();
                let inc = rec
                    .track
                    .apply(&decision, &c.sku, &category, &rules, || id, now)
                    .ok_or_else(|| StoreError::Corrupt("open produced nothing".into()))?;
                let meta = Meta {
                    origin: Origin::Automatic,
                    opened_by: self.rule_name(&category),
                    reason: format!(
                        "overstock: {} days of cover, at least {} required",
                        cover.get().round_dp(1).normalize(),
                        rules.min_cover.get().normalize()
                    ),
                    days_of_cover_at_open: Some(cover.get()),
                    budget_spend: Some(rules.budget_spend.get()),
                    budget_units: Some(rules.budget_units.get()),
                };
                rec.meta = Some(meta.clone());
                let proto = to_proto(&inc, &meta, None);
                self.store.schedule_expiry(&c.sku, inc.ends_at).await?;
                let event = incentive_changed(proto.clone(), v1::IncentiveTransition::Opened, now);
                Ok(Change::SaveAndPublish(rec, event, (Some(proto), false)))
            })
            .await?;
        let Some(proto) = opened else {
            if free_slot {
                self.store.release(&c.sku).await?;
            }
            return Ok(false);
        };
        self.opened(&c.sku, &proto, Origin::Automatic).await;
        Ok(true)
    }

    async fn opened(&self, sku: &Sku, proto: &v1::Incentive, origin: Origin) {
        tracing::info!(
            sku = %sku,
            id = %proto.id,
            bonus = %proto.bonus_rate,
            origin = origin_label(origin),
            opened_by = %proto.opened_by,
            reason = %proto.reason,
            "incentive opened"
        );
        metrics::counter!(METRIC_TRANSITIONS, "transition" => "opened", "reason" => "", "origin" => origin_label(origin)).increment(1);
        if let Err(e) = self.store.project(proto).await {
            tracing::warn!(sku = %sku, error = %e, "incentive listing not updated; the sweep repairs it");
        }
    }

    /// Opens an incentive by hand, refusing what would break a guardrail.
    pub async fn trigger(&self, t: Trigger) -> Result<v1::Incentive, ApiError> {
        let t = &t;
        // Reserved by the first step that got that far; a later step that refuses gives
        // the slot back.
        let reserved = AtomicBool::new(false);
        let reserved = &reserved;
        let proto = self
            .store
            .update(&t.sku, &self.policy, |mut rec| async move {
                let now = self.clock.now();
                let refusal = self.refuse_trigger(&rec, t, now).await;
                if let Err(e) = refusal {
                    if reserved.load(Ordering::SeqCst) && rec.track.active.is_none() {
                        self.store.release(&t.sku).await?;
                    }
                    return Err(e);
                }
                let category = rec.category().to_owned();
                if !reserved.load(Ordering::SeqCst) {
                    if let Err(loss) = self
                        .store
                        .reserve(&t.sku, &category, &self.policy, now)
                        .await?
                    {
                        return Err(ApiError::ResourceExhausted {
                            message: format!("concurrency limit reached: {loss}"),
                            retry_after: std::time::Duration::from_secs(60),
                        });
                    }
                    reserved.store(true, Ordering::SeqCst);
                }
                // No budget given: one that is never reached.
                let unbounded = Decimal::MAX;
                let internal = |e: ratemesh_core::TypeError| ApiError::Internal(e.to_string());
                let inc = Incentive {
                    id: ulid::Ulid::generate().to_string(),
                    sku: t.sku.clone(),
                    category: category.clone(),
                    bonus: t.bonus,
                    opened_at: now,
                    ends_at: now + t.duration,
                    extensions: 0,
                    budget_spend: Money::new(t.budget_spend.unwrap_or(unbounded))
                        .map_err(internal)?,
                    budget_units: Quantity::new(t.budget_units.unwrap_or(unbounded))
                        .map_err(internal)?,
                    spent: Money::ZERO,
                    units_sold: Quantity::ZERO,
                    cancel_requested: false,
                    manual: true,
                };
                let cover = rec
                    .view
                    .velocity
                    .velocity()
                    .map(|v| DaysOfCover::from_stock(rec.view.available, v).get());
                let meta = Meta {
                    origin: Origin::Manual,
                    opened_by: t.author.clone(),
                    reason: t.reason.clone(),
                    days_of_cover_at_open: cover,
                    budget_spend: t.budget_spend,
                    budget_units: t.budget_units,
                };
                rec.track.active = Some(inc.clone());
                rec.meta = Some(meta.clone());
                let proto = to_proto(&inc, &meta, None);
                self.store.schedule_expiry(&t.sku, inc.ends_at).await?;
                let event = incentive_changed(proto.clone(), v1::IncentiveTransition::Opened, now);
                Ok(Change::SaveAndPublish(rec, event, proto))
            })
            .await?;
        self.opened(&t.sku, &proto, Origin::Manual).await;
        Ok(proto)
    }

    /// Why a trigger must be refused, if it must.
    async fn refuse_trigger(
        &self,
        rec: &SkuRecord,
        t: &Trigger,
        now: DateTime<Utc>,
    ) -> Result<(), ApiError> {
        let Some(product) = rec.view.product.as_ref() else {
            return Err(ApiError::NotFound {
                what: "sku (with product data)",
                key: t.sku.to_string(),
            });
        };
        if let Some(active) = &rec.track.active {
            return Err(conflict(
                "INCENTIVE_ACTIVE",
                &active.id,
                format!(
                    "incentive {} is already active on sku {} until {}",
                    active.id, t.sku, active.ends_at
                ),
            ));
        }
        let rules = self.policy.category(&product.category).flash.clone();
        if let Some(closed) = rec.track.last_closed_at
            && now < closed + rules.cooldown
        {
            return Err(conflict(
                "COOLDOWN",
                t.sku.as_str(),
                format!(
                    "sku {} is in cooldown until {} (an incentive ended at {closed})",
                    t.sku,
                    closed + rules.cooldown
                ),
            ));
        }
        self.check_guardrails(rec, t).await
    }

    /// The bonus must fit under the category's cap and margin guard on top of the SKU's
    /// published rate (or its base rate before one is published), and an EXCLUDE override
    /// forbids any incentive.
    async fn check_guardrails(&self, rec: &SkuRecord, t: &Trigger) -> Result<(), ApiError> {
        let Some(product) = rec.view.product.as_ref() else {
            return Ok(());
        };
        let cat = self.policy.category(&product.category);
        let card = self.published_card(&t.sku).await?;
        if let Some(card) = &card
            && let Some(reason) = card.reasons.iter().find(|r| r.code == "OVERRIDE_EXCLUDE")
        {
            return Err(conflict(
                "OVERRIDE_EXCLUDE",
                t.sku.as_str(),
                format!(
                    "sku {} is excluded from commission by an override ({})",
                    t.sku, reason.text
                ),
            ));
        }
        let parse = |s: &str| s.trim().parse::<Decimal>().unwrap_or(Decimal::ZERO);
        let (current, source) = match &card {
            Some(card) => {
                let incentive = card
                    .parts
                    .as_ref()
                    .map_or(Decimal::ZERO, |p| parse(&p.incentive));
                (parse(&card.effective_rate) - incentive, "published rate")
            }
            None => (
                product.base_rate.unwrap_or(cat.base_rate).get(),
                "base rate",
            ),
        };
        let price = product.price.get();
        let margin_bound = if price > Decimal::ZERO {
            cat.margin_share * (price - product.unit_cost.get()).max(Decimal::ZERO) / price
        } else {
            Decimal::ZERO
        };
        let (bound, which) = if margin_bound < cat.cap.get() {
            (margin_bound, "margin guard")
        } else {
            (cat.cap.get(), "cap")
        };
        let total = current + t.bonus.get();
        if total > bound {
            let room = (bound - current).max(Decimal::ZERO).round_dp(4).normalize();
            return Err(ApiError::invalid(
                "bonus_rate",
                format!(
                    "{} on top of the {source} {} makes {}, above the {which} {} of category {}; at most {room} fits",
                    t.bonus.get().normalize(),
                    current.round_dp(4).normalize(),
                    total.round_dp(4).normalize(),
                    bound.round_dp(4).normalize(),
                    product.category
                ),
            ));
        }
        Ok(())
    }

    /// The rate card the rates service published for `sku` (state `rate/<sku>`, field
    /// `card`), if any.
    async fn published_card(&self, sku: &Sku) -> Result<Option<v1::RateCard>, StoreError> {
        match ratemesh_contract::rate::published_card(self.store.bus(), sku.as_str()).await {
            Ok(card) => Ok(card),
            Err(ratemesh_contract::rate::CardReadError::Bus(e)) => Err(e.into()),
            // A corrupt card is rates' problem to report; here it reads as no card.
            Err(ratemesh_contract::rate::CardReadError::Corrupt { .. }) => Ok(None),
        }
    }

    /// Cancels incentive `id`; cancelling one already cancelled returns it unchanged.
    pub async fn cancel(
        &self,
        id: &str,
        reason: &str,
        author: &str,
    ) -> Result<v1::Incentive, ApiError> {
        let not_found = || ApiError::NotFound {
            what: "incentive",
            key: id.to_owned(),
        };
        let logged = self.store.logged(id).await?.ok_or_else(not_found)?;
        let sku = Sku::new(logged.sku.clone()).map_err(|_| not_found())?;
        let outcome = self
            .store
            .update(&sku, &self.policy, |rec| async move {
                if rec.track.active.as_ref().is_some_and(|a| a.id == id) {
                    let now = self.clock.now();
                    let change = self.close(
                        rec,
                        CloseReason::Cancelled,
                        now,
                        author.to_owned(),
                        reason.to_owned(),
                    )?;
                    return Ok::<_, ApiError>(change.map(Ok));
                }
                let ended = rec
                    .last_ended
                    .as_ref()
                    .filter(|e| e.incentive.id == id)
                    .map(Ended::to_proto);
                Ok(Change::Keep(Err(ended)))
            })
            .await?;
        let ended = match outcome {
            Ok(closed) => {
                self.closed(&closed).await;
                return Ok(closed.proto);
            }
            Err(ended) => ended.unwrap_or(logged),
        };
        if ended.end_reason == v1::IncentiveEndReason::Cancelled as i32 {
            return Ok(ended);
        }
        let why = v1::IncentiveEndReason::try_from(ended.end_reason)
            .map(|r| r.as_str_name().to_owned())
            .unwrap_or_else(|_| "UNKNOWN".into());
        Err(conflict(
            "INCENTIVE_ENDED",
            id,
            format!("incentive {id} already ended ({why})"),
        ))
    }

    /// Expiries that came due: each SKU is re-decided; a failure schedules it again.
    pub async fn fire_due(&self) -> Result<usize, StoreError> {
        let now = self.clock.now();
        let due = self.store.claim_due(now).await?;
        let n = due.len();
        let mut candidates = Vec::new();
        for member in due {
            let Ok(sku) = Sku::new(member.clone()) else {
                tracing::warn!(member = %member, "dropping an expiry timer that names no valid sku");
                continue;
            };
            match self.process(&sku, None).await {
                Ok(Some(c)) => candidates.push(c),
                Ok(None) => {}
                Err(e) => {
                    tracing::warn!(sku = %sku, error = %e, "expiry failed; retrying");
                    self.store
                        .schedule_expiry(&sku, now + TimeDelta::seconds(1))
                        .await?;
                }
            }
        }
        self.open_candidates(candidates).await;
        Ok(n)
    }

    /// Checks every slot against its SKU's record: re-arms the timer of each active
    /// incentive (ending those already past their end), and frees slots whose incentive
    /// is gone, publishing the listing entry a crash may have missed. Then offers the free
    /// slots to the most overstocked waiting SKUs ([`Engine::fill_free_slots`]).
    pub async fn sweep(&self, grace: TimeDelta) -> Result<(), StoreError> {
        let slots = self.store.slots().await?;
        metrics::gauge!(METRIC_ACTIVE).set(slots.len() as f64);
        for (key, slot) in slots {
            let Ok(sku) = Sku::new(key) else { continue };
            let (_, rec) = self.store.load(&sku, &self.policy).await?;
            let now = self.clock.now();
            match (&rec.track.active, rec.active_proto()) {
                (Some(inc), Some(proto)) => {
                    if now >= inc.ends_at {
                        self.process(&sku, None).await?;
                    } else {
                        self.store.schedule_expiry(&sku, inc.ends_at).await?;
                        self.store.project(&proto).await?;
                    }
                }
                _ => {
                    if now - slot.reserved_at >= grace {
                        if let Some(ended) = &rec.last_ended {
                            self.store.project(&ended.to_proto()).await?;
                        }
                        tracing::info!(sku = %sku, "freeing a concurrency slot held without an active incentive");
                        self.store.release(&sku).await?;
                    }
                }
            }
        }
        self.fill_free_slots().await?;
        Ok(())
    }
}
