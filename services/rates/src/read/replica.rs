//! The in-memory rate table every rates process serves reads from.
//!
//! Built for a whole catalogue (a million SKUs and more) in a small pod, many concurrent
//! readers and one writer (the loader applying `rates` stream entries):
//!
//! - **Cards are kept encoded**, as the protobuf bytes the engine published, packed one
//!   after another in a per-shard arena of 64 KiB chunks; a read copies bytes into the response
//!   ([`super::wire`]) and nothing is encoded per call. The SKU is stored once, inside its
//!   card.
//! - **The index costs a few words per SKU**: [`SHARDS`] independently locked shards, each
//!   a hash table of 12-byte entries (the slot number and where the card is, so a read
//!   goes from the table straight to the card) over a vector of 32-byte slots (where the
//!   card is, its version, the position of its last change, its interned category). A
//!   reader contends only with a write to the same shard and never with other readers.
//! - **Listings** walk a vector of slot ids in SKU order (4 bytes per SKU), plus a small
//!   sorted vector of SKUs added since it was last merged.
//! - **History is out of the hot structure**: the durable history lives in the backend
//!   (see [`super::history`]); the replica keeps only the last [`RECENT_VERSIONS`]
//!   superseded cards, for `as_of` reads of the last moments.
//!
//! Every card remembers the stream position of its last change. That makes delta sync a
//! filter over the table instead of a change log that can expire: "changed after cursor C"
//! is "last change position > C in the card's partition", which holds for every SKU ever
//! seen, however old C is. Cards loaded from a state scan carry the scan's base position
//! (their true position is at or before it), so an older cursor conservatively includes
//! them; cards loaded from a snapshot block carry their own.
//!
//! SKUs fall into [`BLOCKS`] buckets by a stable hash; a change marks its bucket dirty, and
//! the snapshot writer ([`super::snapshot`]) rewrites only dirty buckets.
//!
//! The writer is split from the readers by type: [`Replica`] applies, [`ReplicaReader`]
//! only reads, and neither holds a bus handle.

use std::collections::{HashMap, HashSet, VecDeque};
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, PoisonError, RwLock, RwLockReadGuard, TryLockError};

use chrono::{DateTime, Utc};
use hashbrown::HashTable;
use prost::Message;
use ratemesh_bus::partition::partition_of;
use ratemesh_bus::{Cursor, EntryId};
use ratemesh_proto::v1;
use tokio::sync::broadcast;

use super::wire::{self, CardHead};

/// Number of independently locked shards of the card table.
pub const SHARDS: usize = 64;
// A batch read names the shards it locks in a `u64`.
const _: () = assert!(SHARDS <= u64::BITS as usize);
/// Number of snapshot buckets (a multiple of [`SHARDS`]: bucket `b` lives in shard
/// `b % SHARDS`).
pub const BLOCKS: usize = 1024;
/// Superseded cards kept in memory for `as_of` reads of the last moments; older instants
/// are read from the durable history.
pub const RECENT_VERSIONS: usize = 8192;

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

/// A stable 64-bit hash of a SKU (FNV-1a with a final mix): the same in every process,
/// so snapshot buckets mean the same to every replica.
pub fn sku_hash(sku: &[u8]) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for &b in sku {
        h ^= u64::from(b);
        h = h.wrapping_mul(0x0000_0100_0000_01b3);
    }
    // Spread the low bits (bucket, shard) and the high bits (hash table control bytes).
    h ^= h >> 33;
    h = h.wrapping_mul(0xff51_afd7_ed55_8ccd);
    h ^= h >> 33;
    h
}

/// The stream partition of an encoded card's SKU.
fn partition_of_sku(card: &[u8], partitions: u32) -> u32 {
    partition_of(&String::from_utf8_lossy(wire::card_sku(card)), partitions)
}

/// The snapshot bucket of a SKU.
pub fn bucket_of(sku: &[u8]) -> usize {
    (sku_hash(sku) % BLOCKS as u64) as usize
}

/// 32 bytes per SKU. The SKU's partition and bucket are not kept: they follow from its
/// SKU, which is in its card.
#[derive(Debug, Clone, Copy)]
struct Slot {
    /// Where the card's bytes start in the shard's arena.
    offset: u32,
    /// Their length.
    len: u32,
    version: u64,
    /// Position of the last change in the SKU's partition: milliseconds and sequence
    /// (a sequence beyond `u32` within one millisecond is not a stream Redis can hold).
    changed_ms: u64,
    changed_seq: u32,
    category: u32,
}

impl Slot {
    fn changed(&self) -> EntryId {
        EntryId {
            ms: self.changed_ms,
            seq: u64::from(self.changed_seq),
        }
    }

    fn set_changed(&mut self, id: EntryId) {
        self.changed_ms = id.ms;
        self.changed_seq = u32::try_from(id.seq).unwrap_or(u32::MAX);
    }
}

/// The bytes of a cache line on the machines ratemesh runs on.
const CACHE_LINE: usize = 64;

/// Size of an arena chunk.
const CHUNK: usize = 64 * 1024;

/// Encoded cards back to back in fixed-size chunks: growing never copies or doubles,
/// and a card never straddles two chunks (one larger than a chunk gets one of its own).
/// A replaced card that does not fit in place leaves garbage until compaction.
#[derive(Default)]
struct Arena {
    chunks: Vec<Vec<u8>>,
    /// Bytes of live and dead cards.
    used: usize,
    garbage: usize,
}

impl Arena {
    fn get(&self, offset: u32, len: u32) -> &[u8] {
        let (chunk, at) = (offset as usize / CHUNK, offset as usize % CHUNK);
        &self.chunks[chunk][at..at + len as usize]
    }

    fn get_mut(&mut self, offset: u32, len: usize) -> &mut [u8] {
        let (chunk, at) = (offset as usize / CHUNK, offset as usize % CHUNK);
        &mut self.chunks[chunk][at..at + len]
    }

    /// Appends `card`; its offset.
    fn push(&mut self, card: &[u8]) -> u32 {
        let fits = self
            .chunks
            .last()
            .is_some_and(|c| c.len() + card.len() <= CHUNK);
        if !fits {
            self.chunks.push(Vec::with_capacity(card.len().max(CHUNK)));
        }
        let index = self.chunks.len() - 1;
        let chunk = &mut self.chunks[index];
        let offset = index * CHUNK + chunk.len();
        chunk.extend_from_slice(card);
        self.used += card.len();
        u32::try_from(offset).expect("a shard's cards exceed 4 GiB")
    }

    /// Bytes allocated.
    fn allocated(&self) -> usize {
        self.chunks.iter().map(Vec::capacity).sum()
    }
}

#[derive(Default)]
struct Shard {
    /// Where each SKU's slot and card are, hashed by SKU.
    table: HashTable<Entry>,
    slots: Vec<Slot>,
    arena: Arena,
}

/// A SKU in its shard's table: its slot, and where its card is (as in the slot), so a
/// read goes from the table to the card without the slot's cache miss in between.
#[derive(Debug, Clone, Copy)]
struct Entry {
    slot: u32,
    offset: u32,
    len: u32,
}

impl Entry {
    fn card<'a>(&self, arena: &'a Arena) -> &'a [u8] {
        arena.get(self.offset, self.len)
    }
}

fn card_of<'a>(arena: &'a Arena, slot: &Slot) -> &'a [u8] {
    arena.get(slot.offset, slot.len)
}

/// The hash a shard's table files a SKU under, from its [`sku_hash`]. The shard is the
/// hash's low six bits, the same for every SKU of the shard, and the table starts probing
/// at its hash's low bits: filed under the SKU hash itself, a shard's SKUs would all start
/// at one bucket in 64, each lookup walking a run of dozens of others (and comparing SKUs
/// at their stray control-byte matches). With the halves swapped, the table probes from
/// the high half and takes its control byte from bits neither the shard nor the snapshot
/// bucket uses.
fn table_hash(hash: u64) -> u64 {
    hash.rotate_left(32)
}

impl Shard {
    fn card(&self, slot: &Slot) -> &[u8] {
        card_of(&self.arena, slot)
    }

    fn find(&self, hash: u64, sku: &[u8]) -> Option<u32> {
        self.find_entry(hash, sku).map(|e| e.slot)
    }

    fn find_entry(&self, hash: u64, sku: &[u8]) -> Option<Entry> {
        self.table
            .find(table_hash(hash), |e| {
                wire::card_sku(e.card(&self.arena)) == sku
            })
            .copied()
    }

    /// Records that slot `index` (of `hash`) has its card at `offset`, `len` bytes.
    fn place(&mut self, hash: u64, index: u32, offset: u32, len: u32) {
        let s = &mut self.slots[index as usize];
        (s.offset, s.len) = (offset, len);
        if let Some(e) = self.table.find_mut(table_hash(hash), |e| e.slot == index) {
            (e.offset, e.len) = (offset, len);
        }
    }

    fn get(&self, sku: &str) -> Option<&Slot> {
        let i = self.find(sku_hash(sku.as_bytes()), sku.as_bytes())?;
        Some(&self.slots[i as usize])
    }

    fn insert(&mut self, hash: u64, slot: Slot) -> u32 {
        let index = u32::try_from(self.slots.len()).expect("too many SKUs in one shard");
        let entry = Entry {
            slot: index,
            offset: slot.offset,
            len: slot.len,
        };
        self.slots.push(slot);
        let arena = &self.arena;
        self.table.insert_unique(table_hash(hash), entry, |e| {
            table_hash(sku_hash(wire::card_sku(e.card(arena))))
        });
        index
    }

    /// Rewrites the arena without garbage once garbage is a quarter of it.
    fn compact_if_needed(&mut self) {
        if self.arena.garbage < 4 * CHUNK || self.arena.garbage * 4 < self.arena.used {
            return;
        }
        let mut arena = Arena::default();
        for slot in &mut self.slots {
            slot.offset = arena.push(self.arena.get(slot.offset, slot.len));
        }
        self.arena = arena;
        for e in self.table.iter_mut() {
            e.offset = self.slots[e.slot as usize].offset;
        }
    }
}

/// A slot id across shards: the slot number times [`SHARDS`] plus the shard.
type SlotId = u32;

fn slot_id(shard: usize, index: u32) -> SlotId {
    index * SHARDS as u32 + shard as u32
}

fn split_id(id: SlotId) -> (usize, usize) {
    ((id % SHARDS as u32) as usize, (id / SHARDS as u32) as usize)
}

/// Slot ids in SKU order: a large sorted vector, and the SKUs added since it was last
/// merged (also sorted), merged once they pass an eighth of it.
#[derive(Default)]
struct Order {
    sorted: Vec<SlotId>,
    recent: Vec<SlotId>,
    /// Ids appended to `sorted` while loading, sorted once when loading ends.
    unsorted: bool,
}

/// Interned categories.
#[derive(Default)]
struct Categories {
    names: Vec<Arc<str>>,
    ids: HashMap<Arc<str>, u32>,
}

/// A superseded card kept for recent `as_of` reads.
struct Superseded {
    hash: u64,
    version: u64,
    at: DateTime<Utc>,
    card: Box<[u8]>,
}

impl Superseded {
    /// Whether this is a version of `sku` (whose hash is `hash`).
    fn is_of(&self, hash: u64, sku: &str) -> bool {
        self.hash == hash && wire::card_sku(&self.card) == sku.as_bytes()
    }
}

struct Inner {
    options: ReplicaOptions,
    clock: Clock,
    shards: Box<[RwLock<Shard>]>,
    order: RwLock<Order>,
    categories: RwLock<Categories>,
    recent: Mutex<VecDeque<Superseded>>,
    /// Buckets changed since the snapshot writer last took them.
    dirty: Box<[AtomicBool]>,
    /// Position up to which entries are applied; advanced after the card is in the table,
    /// so a listing that captures it first never misses a change it covers.
    position: RwLock<Cursor>,
    changes: broadcast::Sender<Arc<Change>>,
    loaded: AtomicBool,
    /// Writers holding a shard's lock or about to take it ([`ReplicaReader::writing`]).
    writing: AtomicUsize,
    reads: AtomicU64,
    applied: AtomicU64,
    /// Loads that read a snapshot rather than every state record.
    snapshot_loads: AtomicU64,
    /// `ratemesh_rates_replica_applied_total`, resolved once.
    applied_total: metrics::Counter,
}

/// A writer counted in [`Inner::writing`] until dropped.
struct Writing<'a>(&'a AtomicUsize);

impl<'a> Writing<'a> {
    fn start(writing: &'a AtomicUsize) -> Self {
        writing.fetch_add(1, Ordering::AcqRel);
        Self(writing)
    }
}

impl Drop for Writing<'_> {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::AcqRel);
    }
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

/// Decodes a card the replica holds (its bytes were checked when applied).
fn decode(card: &[u8]) -> Option<Arc<v1::RateCard>> {
    match v1::RateCard::decode(card) {
        Ok(card) => Some(Arc::new(card)),
        Err(err) => {
            tracing::error!(error = %err, "a card held by the replica does not decode");
            None
        }
    }
}

impl Inner {
    fn recent(&self) -> std::sync::MutexGuard<'_, VecDeque<Superseded>> {
        self.recent.lock().unwrap_or_else(PoisonError::into_inner)
    }

    fn shard_of(hash: u64) -> usize {
        (hash % BLOCKS as u64) as usize % SHARDS
    }

    /// Calls `f` with the SKU of slot `id`, under its shard's read lock.
    fn with_sku<R>(&self, id: SlotId, f: impl FnOnce(&[u8]) -> R) -> R {
        let (shard, index) = split_id(id);
        let shard = read_lock(&self.shards[shard]);
        f(wire::card_sku(shard.card(&shard.slots[index])))
    }

    /// Copies the SKU of slot `id` into `buf`.
    fn sku_into(&self, id: SlotId, buf: &mut Vec<u8>) {
        self.with_sku(id, |sku| {
            buf.clear();
            buf.extend_from_slice(sku);
        });
    }

    fn category_id(&self, name: &str) -> u32 {
        if let Some(id) = read_lock(&self.categories).ids.get(name) {
            return *id;
        }
        let mut categories = write_lock(&self.categories);
        if let Some(id) = categories.ids.get(name) {
            return *id;
        }
        let id = u32::try_from(categories.names.len()).unwrap_or(u32::MAX);
        let name: Arc<str> = Arc::from(name);
        categories.names.push(name.clone());
        categories.ids.insert(name, id);
        id
    }

    fn find_category(&self, name: &str) -> Option<u32> {
        read_lock(&self.categories).ids.get(name).copied()
    }

    /// Files a new SKU in SKU order.
    fn order_insert(&self, id: SlotId, sku: &[u8]) {
        let mut order = write_lock(&self.order);
        if !self.loaded.load(Ordering::Acquire) {
            order.sorted.push(id);
            order.unsorted = true;
            return;
        }
        let at = order
            .recent
            .partition_point(|&other| self.with_sku(other, |o| o < sku));
        order.recent.insert(at, id);
        if order.recent.len() > 4096.max(order.sorted.len() / 8) {
            self.merge(&mut order);
        }
    }

    /// Merges `recent` into `sorted` (and sorts `sorted` after a load).
    fn merge(&self, order: &mut Order) {
        let guards: Vec<RwLockReadGuard<'_, Shard>> = self.shards.iter().map(read_lock).collect();
        let sku = |id: SlotId| {
            let (shard, index) = split_id(id);
            let shard = &guards[shard];
            wire::card_sku(shard.card(&shard.slots[index]))
        };
        if order.unsorted {
            order.sorted.sort_unstable_by(|a, b| sku(*a).cmp(sku(*b)));
            order.unsorted = false;
        }
        if order.recent.is_empty() {
            return;
        }
        let recent = std::mem::take(&mut order.recent);
        let old = std::mem::take(&mut order.sorted);
        let mut merged = Vec::with_capacity(old.len() + recent.len());
        let (mut a, mut b) = (old.into_iter().peekable(), recent.into_iter().peekable());
        loop {
            match (a.peek(), b.peek()) {
                (Some(&x), Some(&y)) => {
                    if sku(x) <= sku(y) {
                        merged.push(x);
                        a.next();
                    } else {
                        merged.push(y);
                        b.next();
                    }
                }
                (Some(_), None) => merged.extend(a.by_ref()),
                (None, Some(_)) => merged.extend(b.by_ref()),
                (None, None) => break,
            }
        }
        order.sorted = merged;
    }
}

/// The writer's handle: applies cards from snapshots and the stream.
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

/// A card to apply: its bytes and the fields read from them.
#[derive(Debug, Clone, Copy)]
pub struct Incoming<'a> {
    /// The encoded card.
    pub bytes: &'a [u8],
    /// Its head.
    pub head: CardHead<'a>,
}

impl<'a> Incoming<'a> {
    /// Reads the head of `bytes`.
    pub fn new(bytes: &'a [u8]) -> Result<Self, wire::WireError> {
        Ok(Self {
            bytes,
            head: wire::card_head(bytes)?,
        })
    }
}

impl Replica {
    /// An empty, not yet loaded replica.
    pub fn new(options: ReplicaOptions, clock: Clock) -> Self {
        let partitions = options.partitions.clamp(1, u32::from(u16::MAX));
        let (changes, _) = broadcast::channel(options.watch_buffer.max(1));
        let shards = (0..SHARDS).map(|_| RwLock::new(Shard::default())).collect();
        let dirty = (0..BLOCKS).map(|_| AtomicBool::new(false)).collect();
        Replica {
            inner: Arc::new(Inner {
                options: ReplicaOptions {
                    partitions,
                    ..options
                },
                clock,
                shards,
                order: RwLock::new(Order::default()),
                categories: RwLock::new(Categories::default()),
                recent: Mutex::new(VecDeque::new()),
                dirty,
                position: RwLock::new(Cursor::start(partitions)),
                changes,
                loaded: AtomicBool::new(false),
                writing: AtomicUsize::new(0),
                reads: AtomicU64::new(0),
                applied: AtomicU64::new(0),
                snapshot_loads: AtomicU64::new(0),
                applied_total: metrics::counter!("ratemesh_rates_replica_applied_total"),
            }),
        }
    }

    /// The read-only view handed to the RPC handlers.
    pub fn reader(&self) -> ReplicaReader {
        ReplicaReader {
            inner: self.inner.clone(),
        }
    }

    /// Moves the position to at least `base`: the position never moves backwards, so a
    /// reload keeps what is already applied.
    pub fn begin_load(&self, base: &Cursor) {
        let mut position = write_lock(&self.inner.position);
        for (p, id) in base.ids().iter().enumerate() {
            position.advance(u32::try_from(p).unwrap_or(u32::MAX), *id);
        }
    }

    /// Counts a load that read a snapshot.
    pub fn note_snapshot_load(&self) {
        self.inner.snapshot_loads.fetch_add(1, Ordering::Relaxed);
    }

    /// Marks the replica loaded: reads are answered from now on.
    pub fn set_loaded(&self) {
        {
            let mut order = write_lock(&self.inner.order);
            self.inner.merge(&mut order);
        }
        self.inner.loaded.store(true, Ordering::Release);
    }

    /// Applies a card read from the state records. Its change position is taken as
    /// `base` (the stream end noted before the scan): the true one is at or before it, or
    /// the card is newer and its stream entry, applied next, sets the exact position.
    ///
    /// A reload while serving (the stream was trimmed past this replica) broadcasts the
    /// cards it finds newer, so watchers learn of changes made in the gap; a first load
    /// has no watchers yet.
    pub fn apply_snapshot(&self, card: Incoming<'_>, base: &Cursor) -> Applied {
        let partition = partition_of(card.head.sku, self.inner.options.partitions);
        self.apply_loaded(card, base.get(partition))
    }

    /// Applies a card read from a snapshot block, last changed at `changed` in its
    /// partition.
    pub fn apply_block_card(&self, card: Incoming<'_>, changed: EntryId) -> Applied {
        self.apply_loaded(card, changed)
    }

    fn apply_loaded(&self, card: Incoming<'_>, changed: EntryId) -> Applied {
        let watched = self.inner.changes.receiver_count() > 0;
        let applied = self.store(card, changed);
        if watched
            && applied == Applied::Newer
            && let Some(decoded) = decode(card.bytes)
        {
            let cursor = read_lock(&self.inner.position).to_string();
            let previous_rate = decoded.previous_rate.clone();
            // Watchers may have gone since the count was taken: not an error.
            let _ = self.inner.changes.send(Arc::new(Change {
                card: decoded,
                previous_rate,
                cursor: Arc::from(cursor),
            }));
        }
        applied
    }

    /// Applies a `RateChanged` stream entry at `partition`/`id` (`card` decoded from
    /// `bytes`), broadcasts it to watchers if it is newer, then advances the replica
    /// position past it.
    pub fn apply_change(
        &self,
        partition: u32,
        id: EntryId,
        card: v1::RateCard,
        bytes: &[u8],
        previous_rate: String,
    ) -> Applied {
        let head = CardHead {
            sku: &card.sku,
            category: &card.category,
            version: card.version,
            computed_at: card.computed_at.as_ref().map(|t| (t.seconds, t.nanos)),
        };
        let applied = self.store(Incoming { bytes, head }, id);
        let mut next = read_lock(&self.inner.position).clone();
        next.advance(partition, id);
        if applied == Applied::Newer && self.inner.changes.receiver_count() > 0 {
            // Watchers may have gone since the count was taken: not an error.
            let _ = self.inner.changes.send(Arc::new(Change {
                card: Arc::new(card),
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

    fn store(&self, card: Incoming<'_>, changed: EntryId) -> Applied {
        let inner = &self.inner;
        let sku = card.head.sku.as_bytes();
        let hash = sku_hash(sku);
        let bucket = (hash % BLOCKS as u64) as usize;
        let shard_no = Inner::shard_of(hash);
        let category = inner.category_id(card.head.category);
        let len = u32::try_from(card.bytes.len()).expect("a card under 4 GiB");
        // Declared before the guard, so it is dropped after it.
        let _writing = Writing::start(&inner.writing);
        let mut shard = write_lock(&inner.shards[shard_no]);
        let outcome = match shard.find(hash, sku) {
            None => {
                let offset = shard.arena.push(card.bytes);
                let mut slot = Slot {
                    offset,
                    len,
                    version: card.head.version,
                    changed_ms: 0,
                    changed_seq: 0,
                    category,
                };
                slot.set_changed(changed);
                let index = shard.insert(hash, slot);
                // The dirty mark precedes the position's advance (the caller's), so a
                // snapshot taken at a position covers every change it marks.
                inner.dirty[bucket].store(true, Ordering::Release);
                drop(shard);
                inner.order_insert(slot_id(shard_no, index), sku);
                Applied::Newer
            }
            Some(index) => {
                let slot = shard.slots[index as usize];
                if card.head.version > slot.version {
                    let old = shard.card(&slot);
                    if let Ok(old_head) = wire::card_head(old) {
                        let superseded = Superseded {
                            hash,
                            version: slot.version,
                            at: old_head.computed_at(),
                            card: old.into(),
                        };
                        let mut recent = inner.recent();
                        if recent.len() >= RECENT_VERSIONS {
                            recent.pop_front();
                        }
                        recent.push_back(superseded);
                    }
                    let offset = if card.bytes.len() <= slot.len as usize {
                        // Fits where the old one was: overwrite in place.
                        shard
                            .arena
                            .get_mut(slot.offset, card.bytes.len())
                            .copy_from_slice(card.bytes);
                        shard.arena.garbage += slot.len as usize - card.bytes.len();
                        slot.offset
                    } else {
                        shard.arena.garbage += slot.len as usize;
                        shard.arena.push(card.bytes)
                    };
                    shard.place(hash, index, offset, len);
                    let s = &mut shard.slots[index as usize];
                    s.version = card.head.version;
                    s.set_changed(s.changed().max(changed));
                    s.category = category;
                    shard.compact_if_needed();
                    inner.dirty[bucket].store(true, Ordering::Release);
                    Applied::Newer
                } else if card.head.version == slot.version {
                    let s = &mut shard.slots[index as usize];
                    if changed > s.changed() {
                        s.set_changed(changed);
                        inner.dirty[bucket].store(true, Ordering::Release);
                    }
                    Applied::Same
                } else {
                    Applied::Stale
                }
            }
        };
        if outcome == Applied::Newer {
            inner.applied.fetch_add(1, Ordering::Relaxed);
            inner.applied_total.increment(1);
        }
        outcome
    }

    /// Takes the dirty marks of the buckets of `shard`, clearing them: the buckets that
    /// changed since the last call.
    pub fn take_dirty(&self, shard: usize) -> Vec<usize> {
        (shard..BLOCKS)
            .step_by(SHARDS)
            .filter(|&b| self.inner.dirty[b].swap(false, Ordering::AcqRel))
            .collect()
    }

    /// Marks `buckets` dirty again (their snapshot write failed).
    pub fn mark_dirty(&self, buckets: impl IntoIterator<Item = usize>) {
        for b in buckets {
            self.inner.dirty[b].store(true, Ordering::Release);
        }
    }

    /// Marks every bucket dirty (a new snapshot writer rewrites them all).
    pub fn mark_all_dirty(&self) {
        self.mark_dirty(0..BLOCKS);
    }

    /// Encodes the snapshot blocks of `buckets` (all of shard `shard`): per bucket that
    /// holds a SKU, every card in it with the position of its last change. See
    /// [`super::snapshot`] for the format.
    pub fn dump_blocks(&self, shard: usize, buckets: &[usize]) -> Vec<(usize, Vec<u8>)> {
        let mut out: Vec<(usize, Vec<u8>)> = buckets
            .iter()
            .map(|&b| (b, vec![super::snapshot::BLOCK_FORMAT]))
            .collect();
        let guard = read_lock(&self.inner.shards[shard]);
        for slot in &guard.slots {
            let card = guard.card(slot);
            let bucket = bucket_of(wire::card_sku(card));
            let Some((_, block)) = out.iter_mut().find(|(b, _)| *b == bucket) else {
                continue;
            };
            super::snapshot::put_entry(block, slot.changed(), card);
        }
        drop(guard);
        // A bucket without a SKU has no block.
        out.retain(|(_, block)| block.len() > 1);
        out
    }
}

/// Superseded versions kept (tests).
#[cfg(test)]
fn recent_len(inner: &Inner) -> usize {
    inner.recent().len()
}

/// What the replica's table holds, in bytes.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Footprint {
    /// SKUs.
    pub skus: usize,
    /// Encoded cards.
    pub cards: usize,
    /// Left by replaced cards until compaction.
    pub garbage: usize,
    /// Allocated for cards (cards, garbage and the unused end of the last chunks).
    pub allocated: usize,
    /// Slots, hash tables and the SKU order.
    pub index: usize,
}

/// A page of a listing.
#[derive(Debug, Default)]
pub struct ListPage {
    /// Encoded cards in SKU order.
    pub cards: Vec<Vec<u8>>,
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
        let order = read_lock(&self.inner.order);
        order.sorted.len() + order.recent.len()
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

    /// Loads (the first and any reload) that read a snapshot rather than every record.
    pub fn snapshot_loads(&self) -> u64 {
        self.inner.snapshot_loads.load(Ordering::Relaxed)
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

    /// Calls `f` with the encoded current card of `sku`, under the shard's read lock
    /// (keep `f` short: copy the bytes out).
    pub fn with_card<R>(&self, sku: &str, f: impl FnOnce(&[u8]) -> R) -> Option<R> {
        let hash = sku_hash(sku.as_bytes());
        let shard = read_lock(&self.inner.shards[Inner::shard_of(hash)]);
        Some(f(shard
            .find_entry(hash, sku.as_bytes())?
            .card(&shard.arena)))
    }

    /// As [`Self::with_card`] without waiting: `None` when a writer holds `sku`'s shard or
    /// waits for it.
    pub fn try_with_card<R>(&self, sku: &str, f: impl FnOnce(&[u8]) -> R) -> Option<Option<R>> {
        let hash = sku_hash(sku.as_bytes());
        let shard = match self.inner.shards[Inner::shard_of(hash)].try_read() {
            Ok(shard) => shard,
            Err(TryLockError::Poisoned(poisoned)) => poisoned.into_inner(),
            Err(TryLockError::WouldBlock) => return None,
        };
        Some(
            shard
                .find_entry(hash, sku.as_bytes())
                .map(|e| f(e.card(&shard.arena))),
        )
    }

    /// Whether the replica's writer holds a shard's lock now, or is about to take one: a
    /// lookup started now may wait for it. A lookup started when it is false waits only if
    /// the writer takes a shard in the meantime.
    pub fn writing(&self) -> bool {
        self.inner.writing.load(Ordering::Acquire) != 0
    }

    /// Calls `f` with the encoded current card of each of `skus` (`None` where there is
    /// none), in order. Each shard the batch falls in is read-locked once, in shard
    /// order, and stays locked until `f` returns (keep `f` short: copy the bytes out).
    ///
    /// A lookup is a chain of cache misses (the table's control bytes, its entry, the
    /// card), each waiting on the one before. Taken one at a time as [`Self::with_card`]
    /// does, a batch's lookups wait on each other as well, every one between a lock's
    /// acquire and release; here the locks are taken first, and the lookups go in stages,
    /// each a pass over the batch whose loads do not depend on one another, so the misses
    /// of a stage overlap.
    pub fn with_cards<R>(&self, skus: &[&str], f: impl FnOnce(&[Option<&[u8]>]) -> R) -> R {
        let hashes: Vec<u64> = skus.iter().map(|sku| sku_hash(sku.as_bytes())).collect();
        let wanted = hashes
            .iter()
            .fold(0u64, |set, &hash| set | 1 << Inner::shard_of(hash));
        // In shard order, as every holder of several shard locks takes them (the writer
        // holds one at a time), so no two of them wait on each other.
        let guards: [Option<RwLockReadGuard<'_, Shard>>; SHARDS] = std::array::from_fn(|s| {
            (wanted & 1 << s != 0).then(|| read_lock(&self.inner.shards[s]))
        });
        let shard_of = |hash: u64| guards[Inner::shard_of(hash)].as_deref();
        // Each SKU's first candidate in its table (none: the SKU is not held), and where
        // its card is ...
        let candidates: Vec<Option<&[u8]>> = hashes
            .iter()
            .map(|&hash| {
                let shard = shard_of(hash)?;
                let first = shard.table.iter_hash(table_hash(hash)).next()?;
                Some(first.card(&shard.arena))
            })
            .collect();
        // ... a byte of each of its cache lines, in a pass that does nothing else, so
        // that the misses of many cards are outstanding at once (the copy that follows
        // would take them one card after another) ...
        let lines = candidates.iter().flatten().fold(0u8, |acc, card| {
            card.iter().step_by(CACHE_LINE).fold(acc, |a, &b| a ^ b)
                ^ card.last().copied().unwrap_or_default()
        });
        std::hint::black_box(lines);
        // ... and the card, if it is the SKU's; if another SKU's control byte matched
        // first, the full lookup (in place, so the batch allocates one vector fewer).
        let mut cards = candidates;
        for ((card, sku), &hash) in cards.iter_mut().zip(skus).zip(&hashes) {
            let Some(candidate) = *card else { continue };
            if wire::card_sku(candidate) != sku.as_bytes() {
                *card = shard_of(hash).and_then(|shard| {
                    Some(shard.find_entry(hash, sku.as_bytes())?.card(&shard.arena))
                });
            }
        }
        f(&cards)
    }

    /// The current card of `sku`, decoded.
    pub fn get(&self, sku: &str) -> Option<Arc<v1::RateCard>> {
        self.with_card(sku, decode).flatten()
    }

    /// The version of the current card of `sku`.
    pub fn version(&self, sku: &str) -> Option<u64> {
        let hash = sku_hash(sku.as_bytes());
        let shard = read_lock(&self.inner.shards[Inner::shard_of(hash)]);
        shard.get(sku).map(|slot| slot.version)
    }

    /// The card that was current at `as_of`, when this replica can tell for sure from
    /// the current card and the recent versions it keeps: a version computed at or
    /// before `as_of` whose successor (if any) is the next version. `None` sends the
    /// caller to the durable history.
    pub fn get_at_cached(&self, sku: &str, as_of: DateTime<Utc>) -> Option<Arc<v1::RateCard>> {
        let (current_version, current_at, current) = self.with_card(sku, |bytes| {
            let head = wire::card_head(bytes).ok()?;
            Some((head.version, head.computed_at(), bytes.to_vec()))
        })??;
        if current_at <= as_of {
            return decode(&current);
        }
        let hash = sku_hash(sku.as_bytes());
        let recent = self.inner.recent();
        let mut mine: Vec<&Superseded> = recent.iter().filter(|s| s.is_of(hash, sku)).collect();
        mine.sort_by_key(|s| s.version);
        let i = mine.iter().rposition(|s| s.at <= as_of)?;
        let found = mine[i];
        let next_version = mine.get(i + 1).map_or(current_version, |s| s.version);
        (next_version == found.version + 1)
            .then(|| decode(&found.card))
            .flatten()
    }

    /// When the SKU's first card (version 1) was computed, if this replica still knows.
    pub fn first_card_at(&self, sku: &str) -> Option<DateTime<Utc>> {
        let current = self.with_card(sku, |bytes| {
            wire::card_head(bytes)
                .ok()
                .map(|h| (h.version, h.computed_at()))
        })??;
        if current.0 <= 1 {
            return Some(current.1);
        }
        let hash = sku_hash(sku.as_bytes());
        let recent = self.inner.recent();
        recent
            .iter()
            .find(|s| s.version <= 1 && s.is_of(hash, sku))
            .map(|s| s.at)
    }

    /// One page of cards in SKU order.
    pub fn list(&self, query: &ListQuery<'_>) -> ListPage {
        let budget = query.scan_budget.max(1);
        let limit = query.limit.max(1);
        let category = match query.category {
            Some(name) => match self.inner.find_category(name) {
                Some(id) => Some(id),
                // No card was ever filed under it: scan, but match nothing.
                None => Some(u32::MAX),
            },
            None => None,
        };
        let inner = &self.inner;
        let partitions = inner.options.partitions;
        let order = read_lock(&inner.order);
        let start = |ids: &[SlotId]| match query.after {
            Some(after) => ids.partition_point(|&id| inner.with_sku(id, |s| s <= after.as_bytes())),
            None => 0,
        };
        let (mut a, mut b) = (start(&order.sorted), start(&order.recent));
        let mut page = ListPage::default();
        let mut examined = 0;
        let mut stopped_early = false;
        let mut left = Vec::new();
        loop {
            let next = match (order.sorted.get(a), order.recent.get(b)) {
                (Some(&x), Some(&y)) => {
                    inner.sku_into(x, &mut left);
                    if inner.with_sku(y, |right| left.as_slice() <= right) {
                        a += 1;
                        x
                    } else {
                        b += 1;
                        y
                    }
                }
                (Some(&x), None) => {
                    a += 1;
                    x
                }
                (None, Some(&y)) => {
                    b += 1;
                    y
                }
                (None, None) => break,
            };
            if page.cards.len() >= limit || examined >= budget {
                stopped_early = true;
                break;
            }
            examined += 1;
            let (shard_no, index) = split_id(next);
            let shard = read_lock(&inner.shards[shard_no]);
            let slot = &shard.slots[index];
            let category_ok = category.is_none_or(|c| slot.category == c);
            let card = shard.card(slot);
            let changed_ok = query
                .changed_since
                .is_none_or(|since| slot.changed() > since.get(partition_of_sku(card, partitions)));
            if category_ok && changed_ok {
                page.cards.push(card.to_vec());
            }
            page.resume_after = Some(String::from_utf8_lossy(wire::card_sku(card)).into_owned());
        }
        if !stopped_early {
            page.resume_after = None;
        }
        page
    }

    /// Every card matching `filter` changed after `since`, ordered by change position
    /// (the catch-up of a resumed watch).
    pub fn changed_after(&self, since: &Cursor, filter: &WatchFilter) -> Vec<PositionedCard> {
        let mut out = Vec::new();
        for shard in self.inner.shards.iter() {
            let shard = read_lock(shard);
            for slot in &shard.slots {
                let partition = partition_of_sku(shard.card(slot), self.inner.options.partitions);
                if slot.changed() <= since.get(partition) {
                    continue;
                }
                let Some(card) = decode(shard.card(slot)) else {
                    continue;
                };
                if filter.matches(&card) {
                    out.push(PositionedCard {
                        partition,
                        id: slot.changed(),
                        card,
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

    /// What the table holds: the cards' bytes, garbage left by replaced cards, bytes
    /// allocated for cards, and the index (slots, hash tables, SKU order).
    pub fn footprint(&self) -> Footprint {
        let mut f = Footprint::default();
        for shard in self.inner.shards.iter() {
            let shard = read_lock(shard);
            f.cards += shard.arena.used - shard.arena.garbage;
            f.garbage += shard.arena.garbage;
            f.allocated += shard.arena.allocated();
            f.skus += shard.slots.len();
            f.index += shard.slots.capacity() * std::mem::size_of::<Slot>()
                + shard.table.capacity() * (std::mem::size_of::<Entry>() + 1);
        }
        let order = read_lock(&self.inner.order);
        f.index += (order.sorted.capacity() + order.recent.capacity()) * 4;
        f
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn options() -> ReplicaOptions {
        ReplicaOptions {
            partitions: 4,
            history_retention: chrono::Duration::days(30),
            watch_buffer: 16,
        }
    }

    fn card(sku: &str, category: &str, version: u64, secs: i64, filler: usize) -> Vec<u8> {
        v1::RateCard {
            sku: sku.into(),
            category: category.into(),
            effective_rate: "0.05".into(),
            version,
            computed_at: Some(prost_types::Timestamp {
                seconds: secs,
                nanos: 0,
            }),
            band: "x".repeat(filler),
            ..Default::default()
        }
        .encode_to_vec()
    }

    fn apply(replica: &Replica, bytes: &[u8], ms: u64) -> Applied {
        replica.apply_block_card(Incoming::new(bytes).expect("card"), EntryId { ms, seq: 0 })
    }

    /// Each of `skus`' cards as found by one lookup each.
    fn single_copies(reader: &ReplicaReader, skus: &[String]) -> Vec<Option<Vec<u8>>> {
        skus.iter()
            .map(|sku| reader.with_card(sku, <[u8]>::to_vec))
            .collect()
    }

    /// Each of `skus`' cards as found by one batch lookup.
    fn batch_copies(reader: &ReplicaReader, skus: &[&str]) -> Vec<Option<Vec<u8>>> {
        reader.with_cards(skus, |cards| {
            cards.iter().map(|c| c.map(<[u8]>::to_vec)).collect()
        })
    }

    #[test]
    fn a_lookup_that_must_not_wait_gives_way_to_a_writer_holding_its_shard() {
        let replica = Replica::new(options(), system_clock());
        let reader = replica.reader();
        let bytes = card("S-1", "a", 1, 100, 0);
        apply(&replica, &bytes, 1);
        replica.set_loaded();
        assert_eq!(
            reader.try_with_card("S-1", <[u8]>::to_vec),
            Some(Some(bytes.clone()))
        );
        assert_eq!(reader.try_with_card("S-2", <[u8]>::to_vec), Some(None));

        let shard = &replica.inner.shards[Inner::shard_of(sku_hash(b"S-1"))];
        let held = write_lock(shard);
        assert_eq!(reader.try_with_card("S-1", <[u8]>::len), None);
        // A lookup that may wait waits for the writer, then finds the card.
        std::thread::scope(|scope| {
            let waiting = scope.spawn(|| reader.with_card("S-1", <[u8]>::to_vec));
            std::thread::sleep(std::time::Duration::from_millis(20));
            assert!(!waiting.is_finished(), "a lookup read past a writer's lock");
            drop(held);
            assert_eq!(waiting.join().expect("lookup"), Some(bytes.clone()));
        });
        assert_eq!(
            reader.try_with_card("S-1", <[u8]>::to_vec),
            Some(Some(bytes))
        );
    }

    #[test]
    fn the_replica_says_it_is_writing_while_a_writer_holds_or_awaits_a_shard() {
        let replica = Replica::new(options(), system_clock());
        let reader = replica.reader();
        apply(&replica, &card("S-1", "a", 1, 100, 0), 1);
        replica.set_loaded();
        assert!(!reader.writing(), "no writer after an apply returns");

        let shard = &replica.inner.shards[Inner::shard_of(sku_hash(b"S-1"))];
        let held = write_lock(shard);
        std::thread::scope(|scope| {
            let writer = scope.spawn(|| apply(&replica, &card("S-1", "a", 2, 90, 0), 2));
            let waited = std::time::Instant::now();
            while !reader.writing() {
                assert!(
                    waited.elapsed() < std::time::Duration::from_secs(10),
                    "a writer waiting for a shard is not counted"
                );
                std::thread::yield_now();
            }
            drop(held);
            assert_eq!(writer.join().expect("writer"), Applied::Newer);
        });
        assert!(!reader.writing(), "the writer is uncounted once it is done");
        assert_eq!(reader.version("S-1"), Some(2));
    }

    #[test]
    fn a_batch_finds_what_single_lookups_find_in_request_order() {
        let replica = Replica::new(options(), system_clock());
        let reader = replica.reader();
        // Thousands of SKUs: many share a shard, and some share a control byte within a
        // shard's table, so the full lookup after a stray first candidate is taken too.
        for i in 0..6000 {
            apply(&replica, &card(&format!("S{i:04}"), "a", 1, 100, i % 7), 1);
        }
        replica.set_loaded();
        let all: Vec<String> = (0..6000).map(|i| format!("S{i:04}")).collect();
        let skus: Vec<&str> = all.iter().map(String::as_str).collect();
        let single: Vec<Option<Vec<u8>>> = skus
            .iter()
            .map(|sku| reader.with_card(sku, <[u8]>::to_vec))
            .collect();
        let batched = batch_copies(&reader, &skus);
        assert!(single.iter().all(Option::is_some));
        assert_eq!(batched, single);

        // Unknown and invalid SKUs, repeats, and several SKUs of one shard, in order.
        let mixed = [
            "S0001", "nope", "", "S0001", "S5999", "bad sku", "S0002", "S0001",
        ];
        let got = reader.with_cards(&mixed, |cards| {
            cards
                .iter()
                .map(|c| c.map(|c| wire::card_head(c).expect("card").sku.to_owned()))
                .collect::<Vec<_>>()
        });
        let expected: Vec<Option<String>> = mixed
            .iter()
            .map(|sku| sku.starts_with('S').then(|| (*sku).to_owned()))
            .collect();
        assert_eq!(got, expected);
        assert_eq!(reader.with_cards(&[], |cards| cards.len()), 0);
    }

    #[test]
    fn cards_moved_by_a_compaction_are_found_where_they_went() {
        let replica = Replica::new(options(), system_clock());
        let reader = replica.reader();
        let all: Vec<String> = (0..3000).map(|i| format!("S{i:04}")).collect();
        for sku in &all {
            apply(&replica, &card(sku, "a", 1, 100, 5), 1);
        }
        replica.set_loaded();
        // One SKU's card grows with every version, so each leaves the last as garbage,
        // until its shard is compacted (every card of the shard moved) more than once.
        let mut made = 0;
        for version in 2..1500 {
            made += card("S0007", "a", version - 1, 100, version as usize - 1).len();
            let next = card("S0007", "a", version, 100, version as usize);
            assert_eq!(apply(&replica, &next, 2), Applied::Newer);
        }
        let garbage = reader.footprint().garbage;
        assert!(garbage < made / 2, "no compaction: {garbage} of {made}");

        let expected: Vec<Option<Vec<u8>>> = all
            .iter()
            .map(|sku| match sku.as_str() {
                "S0007" => Some(card(sku, "a", 1499, 100, 1499)),
                _ => Some(card(sku, "a", 1, 100, 5)),
            })
            .collect();
        let single = single_copies(&reader, &all);
        assert!(
            single == expected,
            "a single lookup found a card's old place"
        );
        let skus: Vec<&str> = all.iter().map(String::as_str).collect();
        let batched = batch_copies(&reader, &skus);
        assert!(batched == expected, "a batch found a card's old place");
    }

    #[test]
    fn a_shards_skus_start_probing_all_over_its_table() {
        // Its SKUs share their hash's low bits (the shard); in a table of 2048 buckets
        // they would start in at most 32 places under the hash itself.
        let hashes: Vec<u64> = (0..200_000)
            .map(|i| sku_hash(format!("LT-{i:07}").as_bytes()))
            .filter(|&h| Inner::shard_of(h) == 5)
            .collect();
        assert!(hashes.len() > 2000, "{}", hashes.len());
        let starts = |f: fn(u64) -> u64| {
            let set: HashSet<u64> = hashes.iter().map(|&h| f(h) & 2047).collect();
            set.len()
        };
        assert!(starts(|h| h) <= 32);
        assert!(starts(table_hash) > 1000, "{}", starts(table_hash));
        let control_bytes: HashSet<u64> = hashes.iter().map(|&h| table_hash(h) >> 57).collect();
        assert_eq!(control_bytes.len(), 128);
    }

    #[test]
    fn newer_cards_replace_older_ones_and_listings_stay_in_sku_order() {
        let replica = Replica::new(options(), system_clock());
        let reader = replica.reader();
        // Loading: appended unsorted, sorted when loaded.
        for i in (0..500).rev() {
            apply(&replica, &card(&format!("S{i:04}"), "a", 1, 100, 3), 1);
        }
        replica.set_loaded();
        // Serving: new SKUs go through the recent list and its merges.
        for i in (500..6000).rev() {
            apply(&replica, &card(&format!("S{i:04}"), "b", 1, 100, 3), 2);
        }
        assert_eq!(reader.len(), 6000);
        // Replacements of every size, in place and appended.
        for i in 0..6000 {
            let filler = if i % 2 == 0 { 1 } else { 40 };
            let sku = format!("S{i:04}");
            assert_eq!(
                apply(&replica, &card(&sku, "a", 2, 200, filler), 3),
                Applied::Newer
            );
            assert_eq!(
                apply(&replica, &card(&sku, "a", 1, 100, 3), 4),
                Applied::Stale
            );
        }
        assert_eq!(reader.version("S0042"), Some(2));
        assert_eq!(reader.get("S0043").map(|c| c.band.len()), Some(40));
        // Every lookup finds the new card, wherever it went (in place, appended, moved
        // by a compaction).
        let all: Vec<String> = (0..6000).map(|i| format!("S{i:04}")).collect();
        let expected: Vec<Option<Vec<u8>>> = all
            .iter()
            .enumerate()
            .map(|(i, sku)| Some(card(sku, "a", 2, 200, if i % 2 == 0 { 1 } else { 40 })))
            .collect();
        let single = single_copies(&reader, &all);
        assert!(single == expected, "a single lookup found an old card");
        let skus: Vec<&str> = all.iter().map(String::as_str).collect();
        let batched = batch_copies(&reader, &skus);
        assert!(batched == expected, "a batch found an old card");
        let Footprint {
            skus: slots,
            cards,
            garbage,
            ..
        } = reader.footprint();
        assert_eq!(slots, 6000);
        assert!(
            garbage < SHARDS * 4 * CHUNK + (cards + garbage) / 4,
            "{garbage} of {cards}"
        );

        let mut seen = Vec::new();
        let mut after: Option<String> = None;
        loop {
            let page = reader.list(&ListQuery {
                after: after.as_deref(),
                limit: 700,
                scan_budget: 1000,
                ..ListQuery::default()
            });
            seen.extend(
                page.cards
                    .iter()
                    .map(|c| wire::card_head(c).expect("card").sku.to_owned()),
            );
            match page.resume_after {
                Some(next) => after = Some(next),
                None => break,
            }
        }
        let expected: Vec<String> = (0..6000).map(|i| format!("S{i:04}")).collect();
        assert_eq!(seen, expected);

        let only_b = reader.list(&ListQuery {
            category: Some("b"),
            limit: 10,
            scan_budget: 10_000,
            ..ListQuery::default()
        });
        assert!(only_b.cards.is_empty(), "every card moved to category a");
        let nothing = reader.list(&ListQuery {
            category: Some("never-seen"),
            limit: 10,
            scan_budget: 10_000,
            ..ListQuery::default()
        });
        assert!(nothing.cards.is_empty());
    }

    #[test]
    fn a_card_larger_than_a_chunk_gets_a_chunk_of_its_own() {
        let replica = Replica::new(options(), system_clock());
        let reader = replica.reader();
        apply(&replica, &card("BIG", "c", 1, 100, 3 * CHUNK / 2), 1);
        apply(&replica, &card("SMALL", "c", 1, 100, 10), 1);
        replica.set_loaded();
        assert_eq!(reader.get("BIG").map(|c| c.band.len()), Some(3 * CHUNK / 2));
        assert_eq!(reader.get("SMALL").map(|c| c.band.len()), Some(10));
        apply(&replica, &card("BIG", "c", 2, 200, 5), 2);
        assert_eq!(
            reader.get("BIG").map(|c| (c.version, c.band.len())),
            Some((2, 5))
        );
        assert_eq!(reader.get("SMALL").map(|c| c.version), Some(1));
    }

    #[test]
    fn recent_versions_answer_as_of_only_when_the_chain_is_whole() {
        let replica = Replica::new(options(), system_clock());
        let reader = replica.reader();
        apply(&replica, &card("A", "c", 1, 100, 0), 1);
        replica.set_loaded();
        apply(&replica, &card("A", "c", 2, 200, 0), 2);
        apply(&replica, &card("A", "c", 4, 400, 0), 3);
        let at = |s| DateTime::from_timestamp(s, 0).expect("time");
        assert_eq!(
            reader.get_at_cached("A", at(450)).map(|c| c.version),
            Some(4)
        );
        assert_eq!(
            reader.get_at_cached("A", at(150)).map(|c| c.version),
            Some(1)
        );
        // Version 3 was never seen: what was current at 300 is not known here.
        assert_eq!(reader.get_at_cached("A", at(300)), None);
        assert_eq!(reader.get_at_cached("A", at(50)), None);
        assert_eq!(reader.first_card_at("A"), Some(at(100)));
        assert_eq!(recent_len(&replica.inner), 2);
    }

    #[test]
    fn dirty_buckets_are_taken_once_and_dumped_with_their_cards() {
        let replica = Replica::new(options(), system_clock());
        let bytes = card("A", "c", 1, 100, 0);
        apply(&replica, &bytes, 7);
        let bucket = bucket_of(b"A");
        let shard = bucket % SHARDS;
        assert_eq!(replica.take_dirty(shard), vec![bucket]);
        assert!(replica.take_dirty(shard).is_empty());
        let blocks = replica.dump_blocks(shard, &[bucket]);
        let cards = super::super::snapshot::read_block(&blocks[0].1).expect("block");
        assert_eq!(cards.len(), 1);
        assert_eq!(cards[0].0, EntryId { ms: 7, seq: 0 });
        assert_eq!(cards[0].1, bytes.as_slice());
    }
}
