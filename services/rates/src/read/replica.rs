//! The in-memory rate table every rates process serves reads from.
//!
//! Built for BFCM: hundreds of thousands of SKUs, many concurrent readers and one writer
//! (the loader applying `rates` stream entries). Cards live in [`SHARDS`] independently
//! locked hash maps, so a reader contends only with a write to the same shard and never
//! with readers; a separate ordered SKU index (write-locked only when a new SKU appears)
//! serves paged listings in SKU order. Cards are stored as ready-to-serve `v1::RateCard`s
//! behind `Arc`, so a read clones a pointer, not a card.
//!
//! Every card remembers the stream position of its last change. That makes delta sync a
//! filter over the table instead of a change log that can expire: "changed after cursor C"
//! is "last change position > C in the card's partition", which holds for every SKU ever
//! seen, however old C is. Cards loaded from the snapshot carry the snapshot's base position
//! (their true position is at or before it), so an older cursor conservatively includes them.
//!
//! The writer is split from the readers by type: [`Replica`] applies, [`ReplicaReader`]
//! only reads, and neither holds a bus handle.

use std::collections::{BTreeSet, HashMap, HashSet, VecDeque};
use std::hash::BuildHasher;
use std::ops::Bound;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, PoisonError, RwLock};

use chrono::{DateTime, Utc};
use ratemesh_bus::partition::partition_of;
use ratemesh_bus::{Cursor, EntryId};
use ratemesh_proto::v1;
use tokio::sync::broadcast;

/// Number of independently locked shards of the card map.
pub const SHARDS: usize = 64;

/// Where "now" comes from; tests inject a fixed or stepping clock.
pub type Clock = Arc<dyn Fn() -> DateTime<Utc> + Send + Sync>;

/// The system clock.
pub fn system_clock() -> Clock {
    Arc::new(Utc::now)
}

/// Knobs of the replica (from `[rates]` settings).
#[derive(Debug, Clone)]
pub struct ReplicaOptions {
    /// Stream partitions of the bus (cursors have one position per partition).
    pub partitions: u32,
    /// How far back `as_of` reads can look.
    pub history_retention: chrono::Duration,
    /// Most versions kept per SKU.
    pub history_max_versions: usize,
    /// Changes a watcher may fall behind before it is ended.
    pub watch_buffer: usize,
}

/// One published change, as broadcast to watchers.
#[derive(Debug)]
pub struct Change {
    /// The new card.
    pub card: Arc<v1::RateCard>,
    /// The rate before it (empty for a first card).
    pub previous_rate: String,
    /// The replica's position right after applying this change: resuming from it misses
    /// nothing applied before or with it.
    pub cursor: Arc<str>,
}

/// A card with the stream position of its last change (for watch catch-up ordering).
#[derive(Debug, Clone)]
pub struct PositionedCard {
    /// Partition of the card's SKU.
    pub partition: u32,
    /// Position of its last change in that partition.
    pub id: EntryId,
    /// The card.
    pub card: Arc<v1::RateCard>,
}

/// What applying one card did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Applied {
    /// The card is newer than the one held (or the first): it is now served.
    Newer,
    /// Same version as held: only its change position was updated.
    Same,
    /// Older than the one held: ignored.
    Stale,
}

struct Slot {
    card: Arc<v1::RateCard>,
    partition: u32,
    /// Position of the last change in `partition`.
    changed_at: EntryId,
    /// Past and current versions with their computation time, oldest first; the last is
    /// `card`.
    versions: VecDeque<(DateTime<Utc>, Arc<v1::RateCard>)>,
}

/// One shard of the card map.
type Shard = RwLock<HashMap<Arc<str>, Slot>>;

struct Inner {
    options: ReplicaOptions,
    clock: Clock,
    hasher: std::collections::hash_map::RandomState,
    shards: Box<[Shard]>,
    /// Every SKU, ordered, for listings.
    index: RwLock<BTreeSet<Arc<str>>>,
    /// Position up to which entries are applied; advanced after the card is in the map,
    /// so a listing that captures it first never misses a change it covers.
    position: RwLock<Cursor>,
    changes: broadcast::Sender<Arc<Change>>,
    loaded: AtomicBool,
    reads: AtomicU64,
    applied: AtomicU64,
}

fn read_lock<T>(lock: &RwLock<T>) -> std::sync::RwLockReadGuard<'_, T> {
    lock.read().unwrap_or_else(PoisonError::into_inner)
}

fn write_lock<T>(lock: &RwLock<T>) -> std::sync::RwLockWriteGuard<'_, T> {
    lock.write().unwrap_or_else(PoisonError::into_inner)
}

/// The instant a card was computed (the epoch when absent, so it sorts first).
pub fn computed_at(card: &v1::RateCard) -> DateTime<Utc> {
    card.computed_at
        .as_ref()
        .and_then(ratemesh_contract::time::from_timestamp)
        .unwrap_or(DateTime::UNIX_EPOCH)
}

impl Inner {
    fn shard(&self, sku: &str) -> &Shard {
        let n = self.hasher.hash_one(sku) as usize % self.shards.len();
        &self.shards[n]
    }
}

/// The writer's handle: applies cards from the snapshot and the stream.
#[derive(Clone)]
pub struct Replica {
    inner: Arc<Inner>,
}

/// The readers' handle: everything the read RPCs need, and nothing that writes or talks
/// to the backend.
#[derive(Clone)]
pub struct ReplicaReader {
    inner: Arc<Inner>,
}

impl std::fmt::Debug for Replica {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Replica")
            .field("skus", &self.reader().len())
            .field("loaded", &self.reader().is_loaded())
            .finish()
    }
}

impl std::fmt::Debug for ReplicaReader {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ReplicaReader")
            .field("skus", &self.len())
            .finish()
    }
}

impl Replica {
    /// An empty, not yet loaded replica.
    pub fn new(options: ReplicaOptions, clock: Clock) -> Self {
        let partitions = options.partitions.max(1);
        let (changes, _) = broadcast::channel(options.watch_buffer.max(1));
        let shards = (0..SHARDS).map(|_| RwLock::new(HashMap::new())).collect();
        Replica {
            inner: Arc::new(Inner {
                options,
                clock,
                hasher: std::collections::hash_map::RandomState::new(),
                shards,
                index: RwLock::new(BTreeSet::new()),
                position: RwLock::new(Cursor::start(partitions)),
                changes,
                loaded: AtomicBool::new(false),
                reads: AtomicU64::new(0),
                applied: AtomicU64::new(0),
            }),
        }
    }

    /// The read-only view handed to the RPC handlers.
    pub fn reader(&self) -> ReplicaReader {
        ReplicaReader {
            inner: self.inner.clone(),
        }
    }

    /// Starts a load at `base` (the stream's end noted before the snapshot scan): the
    /// position never moves backwards, so a reload keeps what is already applied.
    pub fn begin_load(&self, base: &Cursor) {
        let mut position = write_lock(&self.inner.position);
        for (p, id) in base.ids().iter().enumerate() {
            position.advance(u32::try_from(p).unwrap_or(u32::MAX), *id);
        }
    }

    /// Marks the replica loaded: reads are answered from now on.
    pub fn set_loaded(&self) {
        self.inner.loaded.store(true, Ordering::Release);
    }

    /// Applies a card read from the snapshot. Its change position is taken as `base` (the
    /// stream end noted before the scan): the true one is at or before it, or the card is
    /// newer and its stream entry, applied next, sets the exact position.
    ///
    /// A reload while serving (the stream was trimmed past this replica) broadcasts the
    /// cards it finds newer, so watchers learn of changes made in the gap; a first load
    /// has no watchers yet.
    pub fn apply_snapshot(&self, card: v1::RateCard, base: &Cursor) -> Applied {
        let partition = partition_of(&card.sku, self.inner.options.partitions);
        let watched = self.inner.changes.receiver_count() > 0;
        let previous_rate = if watched {
            card.previous_rate.clone()
        } else {
            String::new()
        };
        let (applied, stored) = self.store(card, partition, base.get(partition));
        if watched && let (Applied::Newer, Some(card)) = (applied, stored) {
            let cursor = read_lock(&self.inner.position).to_string();
            // Watchers may have gone since the count was taken: not an error.
            let _ = self.inner.changes.send(Arc::new(Change {
                card,
                previous_rate,
                cursor: Arc::from(cursor),
            }));
        }
        applied
    }

    /// Applies a `RateChanged` stream entry at `partition`/`id`, broadcasts it to
    /// watchers if it is newer, then advances the replica position past it.
    pub fn apply_change(
        &self,
        partition: u32,
        id: EntryId,
        card: v1::RateCard,
        previous_rate: String,
    ) -> Applied {
        let (applied, stored) = self.store(card, partition, id);
        let mut next = read_lock(&self.inner.position).clone();
        next.advance(partition, id);
        if let (Applied::Newer, Some(card)) = (applied, stored) {
            // No receivers is the normal idle case, not an error.
            let _ = self.inner.changes.send(Arc::new(Change {
                card,
                previous_rate,
                cursor: Arc::from(next.to_string()),
            }));
        }
        *write_lock(&self.inner.position) = next;
        applied
    }

    /// Advances the position past an entry that carried no usable card (so it is not
    /// read again), without changing any card.
    pub fn skip(&self, partition: u32, id: EntryId) {
        write_lock(&self.inner.position).advance(partition, id);
    }

    fn store(
        &self,
        card: v1::RateCard,
        partition: u32,
        id: EntryId,
    ) -> (Applied, Option<Arc<v1::RateCard>>) {
        let inner = &self.inner;
        let at = computed_at(&card);
        let card = Arc::new(card);
        let key: Arc<str> = Arc::from(card.sku.as_str());
        let mut shard = write_lock(inner.shard(&key));
        let outcome = match shard.get_mut(&key) {
            None => {
                shard.insert(
                    key.clone(),
                    Slot {
                        card: card.clone(),
                        partition,
                        changed_at: id,
                        versions: VecDeque::from([(at, card.clone())]),
                    },
                );
                drop(shard);
                write_lock(&inner.index).insert(key);
                Applied::Newer
            }
            Some(slot) if card.version > slot.card.version => {
                slot.card = card.clone();
                slot.changed_at = slot.changed_at.max(id);
                slot.versions.push_back((at, card.clone()));
                let cutoff = (inner.clock)() - inner.options.history_retention;
                prune(
                    &mut slot.versions,
                    cutoff,
                    inner.options.history_max_versions,
                );
                Applied::Newer
            }
            Some(slot) if card.version == slot.card.version => {
                slot.changed_at = slot.changed_at.max(id);
                Applied::Same
            }
            Some(_) => Applied::Stale,
        };
        if outcome != Applied::Newer {
            return (outcome, None);
        }
        inner.applied.fetch_add(1, Ordering::Relaxed);
        metrics::counter!("ratemesh_rates_replica_applied_total").increment(1);
        (outcome, Some(card))
    }
}

/// Drops versions older than needed: beyond `max` per SKU, and all but the newest one
/// computed at or before `cutoff` (that one was current at the cutoff, so it still
/// answers `as_of` instants just after it).
fn prune(
    versions: &mut VecDeque<(DateTime<Utc>, Arc<v1::RateCard>)>,
    cutoff: DateTime<Utc>,
    max: usize,
) {
    while versions.len() > max.max(1) {
        versions.pop_front();
    }
    while versions.len() >= 2 && versions[1].0 <= cutoff {
        versions.pop_front();
    }
}

/// A page of a listing.
#[derive(Debug, Default)]
pub struct ListPage {
    /// Cards in SKU order.
    pub cards: Vec<Arc<v1::RateCard>>,
    /// The last SKU examined when more may follow; `None` when the listing is complete.
    pub resume_after: Option<String>,
}

/// What a listing selects.
#[derive(Debug, Clone, Default)]
pub struct ListQuery<'a> {
    /// Only SKUs after this one.
    pub after: Option<&'a str>,
    /// Only cards changed after this cursor.
    pub changed_since: Option<&'a Cursor>,
    /// Only this category.
    pub category: Option<&'a str>,
    /// Most cards returned.
    pub limit: usize,
    /// Most SKUs examined, so a sparse filter cannot turn one page into a full scan.
    pub scan_budget: usize,
}

/// Which changes a watcher wants.
#[derive(Debug, Clone, Default)]
pub struct WatchFilter {
    /// These SKUs.
    pub skus: HashSet<String>,
    /// SKUs in these categories.
    pub categories: HashSet<String>,
    /// A partner's subscription, which narrows whatever the request asks for.
    pub subscription: Option<ratemesh_contract::partner::Subscription>,
}

impl WatchFilter {
    /// True when `card` matches (an empty filter matches everything the subscription, if
    /// any, covers).
    pub fn matches(&self, card: &v1::RateCard) -> bool {
        ((self.skus.is_empty() && self.categories.is_empty())
            || self.skus.contains(&card.sku)
            || self.categories.contains(&card.category))
            && self
                .subscription
                .as_ref()
                .is_none_or(|s| s.covers(&card.sku, &card.category))
    }
}

impl ReplicaReader {
    /// True once the snapshot is loaded and the tail has caught up with it.
    pub fn is_loaded(&self) -> bool {
        self.inner.loaded.load(Ordering::Acquire)
    }

    /// Number of SKUs held.
    pub fn len(&self) -> usize {
        read_lock(&self.inner.index).len()
    }

    /// True when no SKU is held.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Stream partitions cursors cover.
    pub fn partitions(&self) -> u32 {
        self.inner.options.partitions
    }

    /// Reads served so far (point and batch reads count one per SKU).
    pub fn reads(&self) -> u64 {
        self.inner.reads.load(Ordering::Relaxed)
    }

    /// Cards applied as newer so far.
    pub fn applied(&self) -> u64 {
        self.inner.applied.load(Ordering::Relaxed)
    }

    /// The current time of the replica's clock.
    pub fn now(&self) -> DateTime<Utc> {
        (self.inner.clock)()
    }

    /// How far back `as_of` can look.
    pub fn history_retention(&self) -> chrono::Duration {
        self.inner.options.history_retention
    }

    pub(crate) fn count_reads(&self, n: u64) {
        self.inner.reads.fetch_add(n, Ordering::Relaxed);
    }

    /// The position up to which changes are applied. Capture it before reading cards:
    /// every change it covers is visible to reads that follow.
    pub fn position(&self) -> Cursor {
        read_lock(&self.inner.position).clone()
    }

    /// The current card of `sku`.
    pub fn get(&self, sku: &str) -> Option<Arc<v1::RateCard>> {
        read_lock(self.inner.shard(sku))
            .get(sku)
            .map(|slot| slot.card.clone())
    }

    /// The card that was current at `as_of`, when this replica's own recent history can
    /// tell for sure: a kept version computed at or before `as_of` whose successor (if
    /// any) is the next version. `None` sends the caller to the durable history.
    pub fn get_at_cached(&self, sku: &str, as_of: DateTime<Utc>) -> Option<Arc<v1::RateCard>> {
        let shard = read_lock(self.inner.shard(sku));
        let slot = shard.get(sku)?;
        let i = slot.versions.iter().rposition(|(at, _)| *at <= as_of)?;
        let card = &slot.versions[i].1;
        match slot.versions.get(i + 1) {
            Some((_, next)) if next.version != card.version + 1 => None,
            _ => Some(card.clone()),
        }
    }

    /// When the SKU's first card (version 1) was computed, if this replica still keeps
    /// it.
    pub fn first_card_at(&self, sku: &str) -> Option<DateTime<Utc>> {
        let shard = read_lock(self.inner.shard(sku));
        let (at, first) = shard.get(sku)?.versions.front()?;
        (first.version <= 1).then_some(*at)
    }

    /// One page of cards in SKU order.
    pub fn list(&self, query: &ListQuery<'_>) -> ListPage {
        let budget = query.scan_budget.max(1);
        let keys: Vec<Arc<str>> = {
            let index = read_lock(&self.inner.index);
            let lower = match query.after {
                Some(after) => Bound::Excluded(after),
                None => Bound::Unbounded,
            };
            index
                .range::<str, _>((lower, Bound::Unbounded))
                .take(budget)
                .cloned()
                .collect()
        };
        let mut page = ListPage::default();
        let mut stopped_early = false;
        for key in &keys {
            if page.cards.len() >= query.limit.max(1) {
                stopped_early = true;
                break;
            }
            let shard = read_lock(self.inner.shard(key));
            if let Some(slot) = shard.get(&**key) {
                let category_ok = query.category.is_none_or(|c| slot.card.category == c);
                let changed_ok = query
                    .changed_since
                    .is_none_or(|since| slot.changed_at > since.get(slot.partition));
                if category_ok && changed_ok {
                    page.cards.push(slot.card.clone());
                }
            }
            page.resume_after = Some(key.to_string());
        }
        if !stopped_early && keys.len() < budget {
            page.resume_after = None;
        }
        page
    }

    /// Every card matching `filter` changed after `since`, ordered by change position
    /// (the catch-up of a resumed watch).
    pub fn changed_after(&self, since: &Cursor, filter: &WatchFilter) -> Vec<PositionedCard> {
        let mut out = Vec::new();
        for shard in self.inner.shards.iter() {
            for slot in read_lock(shard).values() {
                if slot.changed_at > since.get(slot.partition) && filter.matches(&slot.card) {
                    out.push(PositionedCard {
                        partition: slot.partition,
                        id: slot.changed_at,
                        card: slot.card.clone(),
                    });
                }
            }
        }
        out.sort_by(|a, b| (a.partition, a.id, &a.card.sku).cmp(&(b.partition, b.id, &b.card.sku)));
        out
    }

    /// A receiver of every change applied from now on.
    pub fn subscribe(&self) -> broadcast::Receiver<Arc<Change>> {
        self.inner.changes.subscribe()
    }
}
