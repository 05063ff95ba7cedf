//! The durable hand-off: classify each validated item against what was already accepted
//! (applied, duplicate, stale), and append the applied ones to the stock stream together
//! with the per-SKU high-water mark, atomically, before answering.
//!
//! Per SKU the bus keeps `erp_seq/<sku>` with one field per location holding the highest
//! ERP sequence accepted; the write of that field and the append of the event are one
//! atomic bus operation, so there is never an accepted event without its mark or a mark
//! without its event. A batch costs two round trips whatever its size: the marks of all
//! its SKUs are read in one step, its items classified in memory in batch order, and
//! every changed mark written with its events in one atomic step per partition, each
//! under its own version check. A concurrent push for the same SKU shows up as a version
//! conflict and that SKU is re-classified. Batch ids are remembered with their answer, so
//! a repeated batch gets the first answer again and changes nothing.
//!
//! While a batch is applied its id is held under a short lease that the request renews;
//! if the request dies, a retry of the batch takes it over seconds later. Each mark also
//! remembers which items of which batch set it (`applied:<location>` beside
//! `loc:<location>`, `applied` beside a product's fingerprint), so the items the dead
//! attempt already appended count as duplicates in the retry rather than as stale.

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use bytes::Bytes;
use chrono::{DateTime, Utc};
use futures::stream::{self, StreamExt, TryStreamExt};
use ratemesh_bus::{Bus, BusError, Event, Idempotency, StateRecord, StateWrite, Update};
use ratemesh_contract::streams;
use ratemesh_runtime::ApiError;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use crate::events;
use crate::validate::{ProductItem, StockItem};

const SEQ_NAMESPACE: &str = "erp_seq";
const PRODUCT_NAMESPACE: &str = "erp_product";
/// SKUs of one batch written concurrently (their commands pipeline on one connection).
const SKU_CONCURRENCY: usize = 64;
/// How long a batch id stays "in progress" after the request applying it last renewed
/// it. Short, because it is how long an ERP retrying after an ingest crash or a Redis blip
/// is refused before its retry takes the batch over; the live request renews it every
/// third of this (see [`Handoff::hold`]), so a slow batch keeps it however long it takes.
const IN_PROGRESS_LEASE: Duration = Duration::from_secs(5);
/// Back-off advised to a request that finds its batch being applied by another one: the
/// answer is usually a moment away, and a dead holder is taken over within the lease.
const IN_PROGRESS_RETRY_AFTER: Duration = Duration::from_secs(1);

/// Counts of one batch, as answered to the ERP.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Counts {
    /// Items appended to the stock stream.
    pub applied: u32,
    /// Items identical to one already accepted (same SKU, location and sequence).
    pub duplicate: u32,
    /// Items older than one already accepted; not applied, not an error.
    pub stale: u32,
}

/// What happened to one item.
#[derive(Debug, Clone, Copy)]
enum Outcome {
    Applied,
    Duplicate,
    Stale,
}

impl Counts {
    fn add(&mut self, outcome: Outcome) {
        match outcome {
            Outcome::Applied => self.applied += 1,
            Outcome::Duplicate => self.duplicate += 1,
            Outcome::Stale => self.stale += 1,
        }
    }
}

impl std::ops::AddAssign for Counts {
    fn add_assign(&mut self, other: Counts) {
        self.applied += other.applied;
        self.duplicate += other.duplicate;
        self.stale += other.stale;
    }
}

/// The answer to a push.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Answer {
    /// The batch id the answer is remembered under (generated when none was sent).
    pub batch_id: String,
    /// What happened to the items.
    #[serde(flatten)]
    pub counts: Counts,
    /// True when this is the remembered answer of an earlier identical batch.
    pub replayed: bool,
}

/// What is stored under a batch id: the content fingerprint and the first answer.
#[derive(Debug, Serialize, Deserialize)]
struct Remembered {
    fingerprint: String,
    counts: Counts,
}

/// Hands validated batches to the stock stream.
#[derive(Debug, Clone)]
pub struct Handoff {
    bus: Bus,
    idempotency_ttl: Duration,
    /// How long a batch id stays held without renewal ([`IN_PROGRESS_LEASE`]).
    lease: Duration,
    max_backlog: u64,
    /// Back-off advertised when shedding or when the bus is unreachable.
    retry_after: Duration,
    backlog: Arc<AtomicU64>,
}

/// Which kind of batch, for idempotency scopes, metrics and messages.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Kind {
    Stock,
    Products,
}

impl Kind {
    pub(crate) fn as_str(self) -> &'static str {
        match self {
            Kind::Stock => "stock",
            Kind::Products => "products",
        }
    }
}

impl Handoff {
    pub(crate) fn new(
        bus: Bus,
        idempotency_ttl: Duration,
        max_backlog: u64,
        retry_after: Duration,
    ) -> Self {
        Self {
            bus,
            idempotency_ttl,
            lease: IN_PROGRESS_LEASE,
            max_backlog,
            retry_after,
            backlog: Arc::new(AtomicU64::new(0)),
        }
    }

    /// The same hand-off holding batch ids under a lease of `lease` (tests shorten it).
    #[cfg(test)]
    fn with_lease(mut self, lease: Duration) -> Self {
        self.lease = lease;
        self
    }

    /// A bus failure as answered to the ERP: an unreachable Redis is a 503 advising the
    /// configured back-off; anything else is internal.
    fn backend(&self, err: BusError) -> ApiError {
        match ApiError::from(err) {
            ApiError::Unavailable { message, .. } => ApiError::Unavailable {
                message,
                retry_after: self.retry_after,
            },
            other => other,
        }
    }

    /// Where the backlog monitor records the stock stream's backlog for the rates group.
    pub(crate) fn backlog_gauge(&self) -> Arc<AtomicU64> {
        self.backlog.clone()
    }

    fn shed_if_backlogged(&self) -> Result<(), ApiError> {
        let backlog = self.backlog.load(Ordering::Relaxed);
        if backlog > self.max_backlog {
            metrics::counter!("ratemesh_ingest_rejected_total", "reason" => "backlog").increment(1);
            return Err(ApiError::ResourceExhausted {
                message: format!(
                    "the stock stream has {backlog} unprocessed entries (limit {}); retry after the advised delay",
                    self.max_backlog
                ),
                retry_after: self.retry_after,
            });
        }
        Ok(())
    }

    /// Appends a validated stock batch; answers only after the bus acknowledged every
    /// applied item.
    pub(crate) async fn push_stock(
        &self,
        source: &str,
        batch_id: Option<String>,
        items: Vec<StockItem>,
        now: DateTime<Utc>,
    ) -> Result<Answer, ApiError> {
        self.shed_if_backlogged()?;
        let fingerprint = fingerprint(items.iter().map(|i| {
            format!(
                "{}|{}|{}|{}|{}|{}|{:?}",
                i.sku,
                i.location,
                i.on_hand,
                i.reserved,
                i.as_of.timestamp_micros(),
                i.sequence,
                i.velocity
            )
        }));
        self.once(Kind::Stock, batch_id, fingerprint, |batch_id| async move {
            self.apply_stock(source, &batch_id, items, now).await
        })
        .await
    }

    /// Appends a validated product batch.
    pub(crate) async fn push_products(
        &self,
        source: &str,
        batch_id: Option<String>,
        items: Vec<ProductItem>,
        now: DateTime<Utc>,
    ) -> Result<Answer, ApiError> {
        self.shed_if_backlogged()?;
        let fingerprint = fingerprint(items.iter().map(product_fingerprint));
        self.once(
            Kind::Products,
            batch_id,
            fingerprint,
            |batch_id| async move { self.apply_products(source, &batch_id, items, now).await },
        )
        .await
    }

    /// Runs `work` once per batch id; a repeat gets the remembered answer.
    async fn once<F, Fut>(
        &self,
        kind: Kind,
        batch_id: Option<String>,
        fingerprint: String,
        work: F,
    ) -> Result<Answer, ApiError>
    where
        F: FnOnce(String) -> Fut,
        Fut: Future<Output = Result<Counts, ApiError>>,
    {
        let Some(batch_id) = batch_id else {
            let batch_id = ulid::Ulid::generate().to_string();
            let counts = work(batch_id.clone()).await?;
            return Ok(Answer {
                batch_id,
                counts,
                replayed: false,
            });
        };
        let scope = format!("ingest.{}", kind.as_str());
        // Unique to this request, so only it renews, completes or releases its hold.
        let owner = ulid::Ulid::generate().to_string();
        let begun = self
            .bus
            .idempotency_begin(&scope, &batch_id, &owner, self.lease)
            .await
            .map_err(|e| self.backend(e))?;
        match begun {
            Idempotency::Done(stored) => {
                let remembered: Remembered = serde_json::from_slice(&stored).map_err(|e| {
                    ApiError::Internal(format!("stored answer of batch {batch_id}: {e}"))
                })?;
                if remembered.fingerprint != fingerprint {
                    return Err(ApiError::AlreadyExists(format!(
                        "batch id {batch_id:?} was already used for a different {} batch; use a new id for new content",
                        kind.as_str()
                    )));
                }
                metrics::counter!("ratemesh_ingest_batches_total", "kind" => kind.as_str(), "outcome" => "replayed")
                    .increment(1);
                Ok(Answer {
                    batch_id,
                    counts: remembered.counts,
                    replayed: true,
                })
            }
            Idempotency::InProgress => Err(ApiError::Unavailable {
                message: format!(
                    "batch {batch_id:?} is being applied by another request; retry to get its answer"
                ),
                retry_after: IN_PROGRESS_RETRY_AFTER,
            }),
            Idempotency::New => {
                let applied = tokio::select! {
                    applied = work(batch_id.clone()) => applied,
                    lost = self.hold(&scope, &batch_id, &owner) => Err(lost),
                };
                match applied {
                    Ok(counts) => {
                        let stored = serde_json::to_vec(&Remembered {
                            fingerprint,
                            counts,
                        })
                        .map_err(|e| ApiError::Internal(e.to_string()))?;
                        let kept = self
                            .bus
                            .idempotency_complete(
                                &scope,
                                &batch_id,
                                &owner,
                                Bytes::from(stored),
                                self.idempotency_ttl,
                            )
                            .await
                            .map_err(|e| self.backend(e))?;
                        if !kept {
                            // Every item is on the stream, so the answer stands; a request
                            // that took the batch over remembers its own.
                            tracing::warn!(%batch_id, "the batch was taken over before its answer was stored");
                        }
                        Ok(Answer {
                            batch_id,
                            counts,
                            replayed: false,
                        })
                    }
                    Err(err) => {
                        // Let a retry apply what is left; items already appended count as
                        // duplicates then. Failing to release only delays that retry until
                        // the lease lapses.
                        if let Err(release) = self
                            .bus
                            .idempotency_release(&scope, &batch_id, &owner)
                            .await
                        {
                            tracing::warn!(%batch_id, error = %release, "could not release the batch id after a failure");
                        }
                        Err(err)
                    }
                }
            }
        }
    }

    /// Keeps `owner`'s hold on `batch_id` while the batch is applied, renewing it every
    /// third of the lease. Returns only when the hold is lost (the lease lapsed, say while
    /// Redis was unreachable, and another request may have taken the batch over): this
    /// request must stop then, and the error is its answer.
    async fn hold(&self, scope: &str, batch_id: &str, owner: &str) -> ApiError {
        let mut renew = tokio::time::interval(self.lease / 3);
        renew.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        // The first tick is immediate; the hold was just taken.
        renew.tick().await;
        loop {
            renew.tick().await;
            match self
                .bus
                .idempotency_renew(scope, batch_id, owner, self.lease)
                .await
            {
                Ok(true) => {}
                Ok(false) => {
                    tracing::warn!(%batch_id, "lost the hold on the batch id while applying it");
                    return ApiError::Unavailable {
                        message: format!(
                            "batch {batch_id:?} stalled and may be applied by another request; retry to get its answer"
                        ),
                        retry_after: IN_PROGRESS_RETRY_AFTER,
                    };
                }
                // The next renewal may get through before the lease lapses.
                Err(err) => {
                    tracing::warn!(%batch_id, error = %err, "could not renew the hold on the batch id");
                }
            }
        }
    }

    async fn apply_stock(
        &self,
        source: &str,
        batch_id: &str,
        items: Vec<StockItem>,
        now: DateTime<Utc>,
    ) -> Result<Counts, ApiError> {
        let classify = |record: &StateRecord, index: usize, item: &StockItem| {
            classify_stock(record, batch_id, index, item)
        };
        let event = |item: &StockItem| events::stock_changed(item, source, batch_id, now);
        let totals = self
            .apply(SEQ_NAMESPACE, items, |i| i.sku.as_str(), classify, event)
            .await?;
        record(Kind::Stock, totals);
        Ok(totals)
    }

    async fn apply_products(
        &self,
        source: &str,
        batch_id: &str,
        items: Vec<ProductItem>,
        now: DateTime<Utc>,
    ) -> Result<Counts, ApiError> {
        let classify = |record: &StateRecord, index: usize, item: &ProductItem| {
            classify_product(record, batch_id, index, item)
        };
        let event = |item: &ProductItem| events::product_changed(item, source, batch_id, now);
        let totals = self
            .apply(
                PRODUCT_NAMESPACE,
                items,
                |i| i.sku.as_str(),
                classify,
                event,
            )
            .await?;
        record(Kind::Products, totals);
        Ok(totals)
    }

    /// Classifies a batch's items against their SKUs' marks in `namespace` and appends
    /// the applied ones: every SKU's record read in one step, its items classified in
    /// memory in batch order (`classify` answers an item's outcome and the fields to set
    /// when it is applied), and every changed record written with its events in one
    /// atomic step per partition, each under its own version check. A SKU whose record
    /// another push changed in between is classified again, item by item.
    async fn apply<T, K, C, E>(
        &self,
        namespace: &str,
        items: Vec<T>,
        sku_of: K,
        classify: C,
        event: E,
    ) -> Result<Counts, ApiError>
    where
        K: Fn(&T) -> &str,
        C: Fn(&StateRecord, usize, &T) -> (Outcome, Vec<(String, Bytes)>),
        E: Fn(&T) -> Event,
    {
        let groups = group_by_sku(items.into_iter().enumerate().collect(), |(_, i)| {
            sku_of(i).to_owned()
        });
        let skus: Vec<&str> = groups.iter().map(|(sku, _)| sku.as_str()).collect();
        let records = self
            .bus
            .get_states(namespace, &skus)
            .await
            .map_err(|e| self.backend(e))?;
        let mut totals = Counts::default();
        let mut writes = Vec::new();
        let mut pending = Vec::new();
        for ((sku, items), record) in groups.into_iter().zip(records) {
            let mut record = record.unwrap_or_default();
            // Marks are only ever read by SKU, so no scan lists them.
            let mut write = StateWrite::new(namespace, sku.as_str())
                .expect_version(record.version)
                .unlisted();
            let mut appended = Vec::new();
            let mut counts = Counts::default();
            for (index, item) in &items {
                let (outcome, set) = classify(&record, *index, item);
                counts.add(outcome);
                if !set.is_empty() {
                    for (field, value) in set {
                        record.fields.insert(field.clone(), value.clone());
                        write = write.set(field, value);
                    }
                    appended.push(event(item));
                }
            }
            if appended.is_empty() {
                totals += counts;
            } else {
                writes.push((write, Some((streams::STOCK, appended))));
                pending.push((sku, items, counts));
            }
        }
        let written = self.bus.write_states(writes).await;
        let mut again = Vec::new();
        for ((sku, items, counts), result) in pending.into_iter().zip(written) {
            match result {
                Ok(_) => totals += counts,
                Err(BusError::Conflict { .. }) => again.push((sku, items)),
                Err(e) => return Err(self.backend(e)),
            }
        }
        let (classify, event) = (&classify, &event);
        totals += sum_concurrently(
            again
                .into_iter()
                .map(|(sku, items)| self.apply_sku(namespace, sku, items, classify, event)),
        )
        .await?;
        Ok(totals)
    }

    /// Applies one SKU's items (each with its position in the batch) one at a time, each
    /// a compare-and-set on the SKU's record: a concurrent push that got in first makes
    /// the bus ask again with the record it left, and the item is re-classified against
    /// it.
    async fn apply_sku<T>(
        &self,
        namespace: &str,
        sku: String,
        items: Vec<(usize, T)>,
        classify: &impl Fn(&StateRecord, usize, &T) -> (Outcome, Vec<(String, Bytes)>),
        event: &impl Fn(&T) -> Event,
    ) -> Result<Counts, ApiError> {
        let mut counts = Counts::default();
        let mut seen = self
            .bus
            .get_state(namespace, &sku)
            .await
            .map_err(|e| self.backend(e))?;
        for (index, item) in items {
            let (outcome, record) = self
                .bus
                .update_state_from(namespace, &sku, seen, |record, mut write| {
                    let mut record = record.unwrap_or_default();
                    let (outcome, set) = classify(&record, index, &item);
                    let update = if set.is_empty() {
                        Update::Keep((outcome, record))
                    } else {
                        record.version += 1;
                        for (field, value) in set {
                            record.fields.insert(field.clone(), value.clone());
                            write = write.set(field, value);
                        }
                        Update::WriteAndPublish(
                            write.unlisted(),
                            streams::STOCK,
                            event(&item),
                            (outcome, record),
                        )
                    };
                    std::future::ready(Ok::<_, BusError>(update))
                })
                .await
                .map_err(|e| self.backend(e))?;
            counts.add(outcome);
            seen = Some(record);
        }
        Ok(counts)
    }
}

/// How product item `index` of batch `batch_id` classifies against its SKU's product
/// mark in `record`, and the fields to set when it is applied (none otherwise): the
/// product's fingerprint (`fp`), its `as_of` if it has one, and which items of which batch
/// set them (`applied`).
fn classify_product(
    record: &StateRecord,
    batch_id: &str,
    index: usize,
    item: &ProductItem,
) -> (Outcome, Vec<(String, Bytes)>) {
    let fp = product_fingerprint(item);
    let item_as_of = item.as_of.map(|t| t.timestamp_micros());
    let stored_as_of = record
        .fields
        .get("as_of")
        .and_then(|v| std::str::from_utf8(v).ok())
        .and_then(|v| v.parse::<i64>().ok());
    let applied = AppliedBy::parse(record.fields.get("applied"));
    // An earlier attempt of this very batch appended it; items after it may have changed
    // the product since.
    if applied.holds(batch_id, index) {
        return (Outcome::Duplicate, Vec::new());
    }
    if let (Some(stored), Some(new)) = (stored_as_of, item_as_of)
        && new < stored
    {
        return (Outcome::Stale, Vec::new());
    }
    if record
        .fields
        .get("fp")
        .is_some_and(|f| f.as_ref() == fp.as_bytes())
    {
        return (Outcome::Duplicate, Vec::new());
    }
    let mut set = vec![
        ("fp".to_owned(), Bytes::from(fp)),
        ("applied".to_owned(), applied.with(batch_id, index)),
    ];
    if let Some(as_of) = item_as_of {
        set.push(("as_of".to_owned(), Bytes::from(as_of.to_string())));
    }
    (Outcome::Applied, set)
}

/// How stock item `index` of batch `batch_id` classifies against its SKU's marks in
/// `record`, and the fields to set when it is applied (none otherwise): its location's
/// mark (`loc:<location>`, the highest sequence accepted) and which items of which batch
/// set it (`applied:<location>`).
fn classify_stock(
    record: &StateRecord,
    batch_id: &str,
    index: usize,
    item: &StockItem,
) -> (Outcome, Vec<(String, Bytes)>) {
    let field = format!("loc:{}", item.location);
    let applied_field = format!("applied:{}", item.location);
    let last = record
        .fields
        .get(&field)
        .and_then(|v| std::str::from_utf8(v).ok())
        .and_then(|v| v.parse::<u64>().ok());
    let applied = AppliedBy::parse(record.fields.get(&applied_field));
    match last {
        Some(last) if item.sequence == last => (Outcome::Duplicate, Vec::new()),
        // Older than the mark, unless an earlier attempt of this very batch appended it
        // and items after it moved the mark on.
        Some(last) if item.sequence < last => {
            if applied.holds(batch_id, index) {
                (Outcome::Duplicate, Vec::new())
            } else {
                (Outcome::Stale, Vec::new())
            }
        }
        _ => (
            Outcome::Applied,
            vec![
                (field, Bytes::from(item.sequence.to_string())),
                (applied_field, applied.with(batch_id, index)),
            ],
        ),
    }
}

/// Which items of which batch last moved a mark, stored beside it as
/// `"<batch id> <index> <index> ..."` (indices are positions in the batch; batch ids have
/// no spaces). When the request applying a batch dies part-way, its retry finds here the
/// items that request already appended and counts them as duplicates. Only the latest
/// batch is kept: once another batch moves the mark, the older one's items are stale.
#[derive(Debug, Default)]
struct AppliedBy<'a> {
    batch_id: &'a str,
    indices: Vec<usize>,
}

impl<'a> AppliedBy<'a> {
    fn parse(value: Option<&'a Bytes>) -> Self {
        let Some(text) = value.and_then(|v| std::str::from_utf8(v).ok()) else {
            return Self::default();
        };
        let mut words = text.split(' ');
        AppliedBy {
            batch_id: words.next().unwrap_or_default(),
            indices: words.filter_map(|w| w.parse().ok()).collect(),
        }
    }

    /// Whether item `index` of batch `batch_id` was applied here.
    fn holds(&self, batch_id: &str, index: usize) -> bool {
        self.batch_id == batch_id && self.indices.contains(&index)
    }

    /// The value after item `index` of batch `batch_id` is applied here.
    fn with(&self, batch_id: &str, index: usize) -> Bytes {
        let mut value = batch_id.to_owned();
        if self.batch_id == batch_id {
            for i in &self.indices {
                value.push_str(&format!(" {i}"));
            }
        }
        value.push_str(&format!(" {index}"));
        Bytes::from(value)
    }
}

/// Runs per-SKU work with bounded concurrency (its Redis commands pipeline on the shared
/// connection) and adds up the counts; the first error wins.
async fn sum_concurrently<F>(work: impl Iterator<Item = F>) -> Result<Counts, ApiError>
where
    F: Future<Output = Result<Counts, ApiError>>,
{
    stream::iter(work)
        .buffer_unordered(SKU_CONCURRENCY)
        .try_fold(Counts::default(), |mut acc, c| async move {
            acc += c;
            Ok(acc)
        })
        .await
}

fn record(kind: Kind, counts: Counts) {
    for (outcome, n) in [
        ("applied", counts.applied),
        ("duplicate", counts.duplicate),
        ("stale", counts.stale),
    ] {
        metrics::counter!("ratemesh_ingest_items_total", "kind" => kind.as_str(), "outcome" => outcome)
            .increment(u64::from(n));
    }
}

/// Groups items by SKU, keeping batch order within each SKU (sequences are per SKU).
fn group_by_sku<T>(items: Vec<T>, key: impl Fn(&T) -> String) -> Vec<(String, Vec<T>)> {
    let mut index: HashMap<String, usize> = HashMap::with_capacity(items.len());
    let mut groups: Vec<(String, Vec<T>)> = Vec::new();
    for item in items {
        let k = key(&item);
        match index.get(&k) {
            Some(&i) => groups[i].1.push(item),
            None => {
                index.insert(k.clone(), groups.len());
                groups.push((k, vec![item]));
            }
        }
    }
    groups
}

fn product_fingerprint(p: &ProductItem) -> String {
    fingerprint(std::iter::once(format!(
        "{}|{}|{}|{}|{:?}|{}|{:?}|{:?}",
        p.sku,
        p.category,
        p.price,
        p.unit_cost,
        p.base_rate,
        p.currency,
        p.title,
        p.as_of.map(|t| t.timestamp_micros())
    )))
}

fn fingerprint(parts: impl Iterator<Item = String>) -> String {
    let mut hasher = Sha256::new();
    for part in parts {
        hasher.update(part.as_bytes());
        hasher.update(b"\n");
    }
    hex::encode(hasher.finalize())
}

#[cfg(test)]
mod tests {
    use super::*;
    use ratemesh_bus::BusOptions;
    use ratemesh_core::Sku;
    use rust_decimal::Decimal;

    fn stock(sequence: u64) -> StockItem {
        stock_of("SKU-RACE", sequence)
    }

    fn stock_of(sku: &str, sequence: u64) -> StockItem {
        StockItem {
            sku: Sku::new(sku).unwrap(),
            location: "DC-1".into(),
            on_hand: Decimal::from(sequence),
            reserved: Decimal::ZERO,
            as_of: DateTime::from_timestamp(1_700_000_000 + sequence as i64, 0).unwrap(),
            sequence,
            velocity: None,
        }
    }

    /// Pushes racing on one SKU: every item is applied exactly once or counted as stale
    /// or duplicate against what the others accepted, and the mark ends at the highest.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn concurrent_pushes_for_one_sku_are_reclassified_not_lost() {
        let bus = Bus::memory(BusOptions::embedded()).unwrap();
        let handoff = Handoff::new(
            bus.clone(),
            Duration::from_secs(60),
            u64::MAX,
            Duration::ZERO,
        );
        let pushes: Vec<_> = (0..8u64)
            .map(|p| {
                let handoff = handoff.clone();
                // Interleaved sequences: a push that gets in first makes lower ones stale.
                let items: Vec<StockItem> = (1..=5).map(|i| stock(i * 8 + p)).collect();
                tokio::spawn(async move {
                    handoff
                        .push_stock("erp", None, items, Utc::now())
                        .await
                        .unwrap()
                        .counts
                })
            })
            .collect();
        let mut total = Counts::default();
        for push in pushes {
            total += push.await.unwrap();
        }
        assert_eq!(total.applied + total.duplicate + total.stale, 40);
        assert!(
            total.applied >= 5,
            "at least one push applies all of its items"
        );
        let mark = bus
            .get_state(SEQ_NAMESPACE, "SKU-RACE")
            .await
            .unwrap()
            .unwrap();
        assert_eq!(&mark.fields["loc:DC-1"][..], b"47");
        // One write per push that applied something (its items of one SKU together).
        assert!(mark.version <= u64::from(total.applied), "{mark:?}");
        let appended = bus.stream_stats(streams::STOCK, "rates").await.unwrap();
        assert_eq!(appended.length, u64::from(total.applied));
    }

    /// A request died part-way through batch "erp-7" (it took the batch id and appended
    /// its first three items, then stopped renewing). The ERP's retry is refused while
    /// the lease runs, then takes the batch over: what the dead request appended counts
    /// as duplicate, the rest is applied, and nothing is appended twice.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_batch_whose_request_died_is_taken_over_and_its_appended_items_are_duplicates() {
        let bus = Bus::memory(BusOptions::embedded()).unwrap();
        let lease = Duration::from_millis(500);
        let handoff = Handoff::new(
            bus.clone(),
            Duration::from_secs(60),
            u64::MAX,
            Duration::from_secs(2),
        )
        .with_lease(lease);
        let batch = vec![
            stock_of("SKU-A", 1),
            stock_of("SKU-B", 1),
            stock_of("SKU-A", 2),
            stock_of("SKU-B", 2),
            stock_of("SKU-A", 3),
        ];

        let began = std::time::Instant::now();
        assert_eq!(
            bus.idempotency_begin("ingest.stock", "erp-7", "dead", lease)
                .await
                .unwrap(),
            Idempotency::New
        );
        let dead = handoff
            .apply_stock("erp", "erp-7", batch[..3].to_vec(), Utc::now())
            .await
            .unwrap();
        assert_eq!(dead.applied, 3);

        let refused = handoff
            .push_stock("erp", Some("erp-7".into()), batch.clone(), Utc::now())
            .await
            .unwrap_err();
        assert!(
            matches!(refused, ApiError::Unavailable { .. }),
            "{refused:?}"
        );

        let answer = loop {
            match handoff
                .push_stock("erp", Some("erp-7".into()), batch.clone(), Utc::now())
                .await
            {
                Ok(answer) => break answer,
                Err(ApiError::Unavailable { .. }) => {
                    assert!(began.elapsed() < lease * 10, "never taken over");
                    tokio::time::sleep(Duration::from_millis(20)).await;
                }
                Err(other) => panic!("retry refused: {other:?}"),
            }
        };
        assert!(began.elapsed() >= lease, "taken over while the lease ran");
        assert_eq!(
            answer.counts,
            Counts {
                applied: 2,
                duplicate: 3,
                stale: 0
            }
        );
        assert!(!answer.replayed);
        let appended = bus.stream_stats(streams::STOCK, "rates").await.unwrap();
        assert_eq!(appended.length, 5);

        // The answer is remembered as usual.
        let again = handoff
            .push_stock("erp", Some("erp-7".into()), batch, Utc::now())
            .await
            .unwrap();
        assert!(again.replayed);
        assert_eq!(again.counts, answer.counts);
    }

    /// Items older than the mark stay stale in a retry when another batch moved the mark,
    /// and products an earlier attempt upserted are duplicates even when later items of
    /// the batch changed the product since.
    #[tokio::test]
    async fn only_the_items_an_earlier_attempt_appended_count_as_duplicates() {
        let bus = Bus::memory(BusOptions::embedded()).unwrap();
        let handoff = Handoff::new(
            bus.clone(),
            Duration::from_secs(60),
            u64::MAX,
            Duration::ZERO,
        );
        let now = Utc::now();
        // Batch "a" appended 1 and 2, then batch "b" moved the mark to 3.
        handoff
            .apply_stock(
                "erp",
                "a",
                vec![stock_of("SKU-S", 1), stock_of("SKU-S", 2)],
                now,
            )
            .await
            .unwrap();
        handoff
            .apply_stock("erp", "b", vec![stock_of("SKU-S", 3)], now)
            .await
            .unwrap();
        let retried = handoff
            .apply_stock(
                "erp",
                "a",
                vec![stock_of("SKU-S", 1), stock_of("SKU-S", 2)],
                now,
            )
            .await
            .unwrap();
        assert_eq!(
            retried,
            Counts {
                applied: 0,
                duplicate: 0,
                stale: 2
            }
        );

        // Two versions of one product without `as_of`: the last one wins, and a retry of
        // the batch neither flips it back nor appends anything.
        let product = |price: &str| ProductItem {
            sku: Sku::new("SKU-P").unwrap(),
            category: "toys".into(),
            price: price.parse().unwrap(),
            unit_cost: "1".parse().unwrap(),
            base_rate: None,
            currency: "USD".into(),
            title: None,
            as_of: None,
        };
        let versions = vec![product("10"), product("12")];
        let first = handoff
            .apply_products("erp", "p", versions.clone(), now)
            .await
            .unwrap();
        assert_eq!(first.applied, 2);
        let retried = handoff
            .apply_products("erp", "p", versions.clone(), now)
            .await
            .unwrap();
        assert_eq!(
            retried,
            Counts {
                applied: 0,
                duplicate: 2,
                stale: 0
            }
        );
        // A new batch with the first version again is a change, as before.
        let other = handoff
            .apply_products("erp", "q", versions[..1].to_vec(), now)
            .await
            .unwrap();
        assert_eq!(other.applied, 1);
    }

    /// The request applying a batch keeps its hold however long the batch takes.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_slow_batch_keeps_its_hold_past_the_lease() {
        let bus = Bus::memory(BusOptions::embedded()).unwrap();
        let lease = Duration::from_millis(400);
        let handoff = Handoff::new(
            bus.clone(),
            Duration::from_secs(60),
            u64::MAX,
            Duration::ZERO,
        )
        .with_lease(lease);
        let slow = tokio::spawn({
            let handoff = handoff.clone();
            async move {
                handoff
                    .once(
                        Kind::Stock,
                        Some("slow".into()),
                        "fp".into(),
                        |_| async move {
                            tokio::time::sleep(lease * 4).await;
                            Ok(Counts::default())
                        },
                    )
                    .await
            }
        });
        for _ in 0..6 {
            tokio::time::sleep(lease / 2).await;
            if slow.is_finished() {
                break;
            }
            assert_eq!(
                bus.idempotency_begin("ingest.stock", "slow", "retry", lease)
                    .await
                    .unwrap(),
                Idempotency::InProgress
            );
        }
        let answer = slow.await.unwrap().unwrap();
        assert!(!answer.replayed);
        assert!(matches!(
            bus.idempotency_begin("ingest.stock", "slow", "retry", lease)
                .await
                .unwrap(),
            Idempotency::Done(_)
        ));
    }

    #[test]
    fn grouping_keeps_order_within_a_sku() {
        let groups = group_by_sku(vec![("a", 1), ("b", 1), ("a", 2), ("a", 3)], |i| {
            i.0.to_owned()
        });
        assert_eq!(groups.len(), 2);
        assert_eq!(
            groups[0].1.iter().map(|i| i.1).collect::<Vec<_>>(),
            [1, 2, 3]
        );
    }
}
