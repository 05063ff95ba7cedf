//! The in-memory backend: the engine of `ratemesh up` without Redis.
//!
//! Same semantics as the Redis backend (consumer groups, pending entries, idle reclaim,
//! delivery counts, dead letters, CAS, atomic write+append, TTL idempotency keys, timers),
//! kept in process memory and lost on restart. Every structure is behind short
//! `std::sync::Mutex` critical sections that are never held across an `.await`:
//! one lock per stream partition, sharded locks for state and idempotency keys.
//!
//! - `streams.rs` — partitions, groups, pending entries, dead letters
//! - `state.rs` — versioned records and the atomic write + append
//! - `idempotency.rs` — idempotency keys with TTL
//! - `timers.rs` — scheduler queues

mod idempotency;
mod state;
mod streams;
mod timers;

use std::collections::{BTreeMap, HashMap};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError, RwLock};
use std::time::{Duration, Instant};

use bytes::Bytes;

use crate::cursor::Cursor;
use crate::entry::{Appended, DeadLetter, DeadLetterRef, Delivery, EntryId, Event, NackOutcome};
use crate::error::BusResult;
use crate::lease::Ownership;
use crate::options::BusOptions;
use crate::partition::partition_of;
use crate::state::{
    DueTimer, Expect, GroupInfo, HistoryLookup, Idempotency, Retention, StatePage, StateRecord,
    StateWrite, StreamStats, Written,
};

use idempotency::IdempotencyStore;
use state::StateStore;
use streams::MemStream;
use timers::TimerStore;

/// Locks a mutex, ignoring poisoning: every critical section leaves its data consistent
/// before anything that could panic.
pub(crate) fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

/// The in-memory bus.
pub(crate) struct MemoryBackend {
    opts: BusOptions,
    streams: RwLock<HashMap<String, Arc<MemStream>>>,
    state: StateStore,
    idempotency: IdempotencyStore,
    timers: TimerStore,
    /// Stays `true`; kept so receivers wait forever instead of seeing a closed channel.
    connected: tokio::sync::watch::Sender<bool>,
}

impl MemoryBackend {
    pub(crate) fn connected(&self) -> tokio::sync::watch::Receiver<bool> {
        self.connected.subscribe()
    }

    pub(crate) fn new(opts: BusOptions) -> Self {
        MemoryBackend {
            opts,
            streams: RwLock::new(HashMap::new()),
            state: StateStore::new(),
            idempotency: IdempotencyStore::new(),
            timers: TimerStore::default(),
            connected: tokio::sync::watch::channel(true).0,
        }
    }

    fn stream(&self, name: &str) -> Arc<MemStream> {
        if let Some(s) = self
            .streams
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .get(name)
        {
            return s.clone();
        }
        self.streams
            .write()
            .unwrap_or_else(PoisonError::into_inner)
            .entry(name.to_owned())
            .or_insert_with(|| Arc::new(MemStream::new(name, self.opts.partitions)))
            .clone()
    }

    pub(crate) fn publish(&self, stream: &str, events: Vec<Event>) -> Vec<Appended> {
        let events = events
            .into_iter()
            .map(|e| (partition_of(&e.key, self.opts.partitions), e))
            .collect();
        self.stream(stream).publish(events)
    }

    pub(crate) fn consumer(&self, stream: &str, group: &str, name: &str) -> MemoryConsumer {
        let s = self.stream(stream);
        s.create_group(group);
        MemoryConsumer {
            stream: s,
            group: group.to_owned(),
            name: Arc::from(name),
            opts: self.opts.clone(),
            ownership: Mutex::new(Ownership::default()),
            last_reclaim: Mutex::new(None),
            rotation: AtomicUsize::new(0),
        }
    }

    pub(crate) fn tail(&self, stream: &str, from: Cursor) -> MemoryTail {
        MemoryTail {
            stream: self.stream(stream),
            cursor: from,
            opts: self.opts.clone(),
        }
    }

    pub(crate) fn read_after(&self, stream: &str, cursor: &Cursor, limit: usize) -> Vec<Delivery> {
        self.stream(stream).read_after(cursor, limit)
    }

    pub(crate) fn end_cursor(&self, stream: &str) -> Cursor {
        self.stream(stream).end_cursor()
    }

    pub(crate) fn trim(&self, stream: &str, retention: &Retention) -> u64 {
        self.stream(stream).trim(retention)
    }

    pub(crate) fn trimmed_past(&self, stream: &str, cursor: &Cursor) -> bool {
        self.stream(stream).trimmed_past(cursor)
    }

    pub(crate) fn stats(&self, stream: &str, group: &str) -> StreamStats {
        self.stream(stream).stats(group)
    }

    pub(crate) fn groups(&self, stream: &str) -> Vec<GroupInfo> {
        self.stream(stream).groups()
    }

    pub(crate) fn drop_group(&self, stream: &str, group: &str) -> bool {
        self.stream(stream).drop_group(group)
    }

    pub(crate) fn dead_letters(&self, stream: &str, group: &str, limit: usize) -> Vec<DeadLetter> {
        self.stream(stream).dead_letters(group, limit)
    }

    pub(crate) fn replay_dead_letters(
        &self,
        stream: &str,
        group: &str,
        refs: &[DeadLetterRef],
    ) -> Vec<Appended> {
        self.stream(stream).replay_dead_letters(group, refs)
    }

    pub(crate) fn delete_dead_letters(
        &self,
        stream: &str,
        group: &str,
        refs: &[DeadLetterRef],
    ) -> u64 {
        self.stream(stream).delete_dead_letters(group, refs)
    }

    pub(crate) fn get_state(&self, ns: &str, key: &str) -> Option<StateRecord> {
        self.state.get(ns, key)
    }

    pub(crate) fn get_state_fields<F: AsRef<str>>(
        &self,
        ns: &str,
        key: &str,
        fields: &[F],
    ) -> Option<StateRecord> {
        self.state.get_fields(ns, key, fields)
    }

    pub(crate) fn count_state_fields(&self, ns: &str, key: &str) -> u64 {
        self.state.count_fields(ns, key)
    }

    pub(crate) fn write_state(
        &self,
        write: StateWrite,
        publish: Option<(&str, Vec<Event>)>,
    ) -> BusResult<Written> {
        match publish {
            Some((stream, events)) => {
                let s = self.stream(stream);
                let partition = partition_of(&write.key, self.opts.partitions);
                self.state.write(write, Some((&s, partition, events)))
            }
            None => self.state.write(write, None),
        }
    }

    pub(crate) fn history_at(&self, ns: &str, key: &str, at_us: i64) -> HistoryLookup {
        self.state.history_at(ns, key, at_us)
    }

    pub(crate) fn delete_state(&self, ns: &str, key: &str, expect: Expect) -> BusResult<bool> {
        self.state.delete(ns, key, expect)
    }

    pub(crate) fn scan_states(
        &self,
        ns: &str,
        group: Option<&str>,
        page: Option<&str>,
        limit: usize,
    ) -> BusResult<StatePage> {
        self.state.scan(ns, group, page, limit)
    }

    pub(crate) fn idempotency_begin(
        &self,
        scope: &str,
        key: &str,
        owner: &str,
        ttl: Duration,
    ) -> Idempotency {
        self.idempotency.begin(scope, key, owner, ttl)
    }

    pub(crate) fn idempotency_renew(
        &self,
        scope: &str,
        key: &str,
        owner: &str,
        ttl: Duration,
    ) -> bool {
        self.idempotency.renew(scope, key, owner, ttl)
    }

    pub(crate) fn idempotency_complete(
        &self,
        scope: &str,
        key: &str,
        owner: &str,
        outcome: Bytes,
        ttl: Duration,
    ) -> bool {
        self.idempotency.complete(scope, key, owner, outcome, ttl)
    }

    pub(crate) fn idempotency_release(&self, scope: &str, key: &str, owner: &str) {
        self.idempotency.release(scope, key, owner)
    }

    pub(crate) fn schedule(&self, queue: &str, member: &str, due_ms: u64) {
        self.timers.schedule(queue, member, due_ms)
    }

    pub(crate) fn cancel(&self, queue: &str, member: &str) -> bool {
        self.timers.cancel(queue, member)
    }

    pub(crate) fn claim_due(&self, queue: &str, now_ms: u64, limit: usize) -> Vec<DueTimer> {
        self.timers.claim_due(queue, now_ms, limit)
    }
}

/// How often a consumer looks for idle entries to take over: twice per idle threshold,
/// so an abandoned entry waits at most 1.5 × the threshold.
fn reclaim_interval(idle: Duration) -> Duration {
    (idle / 2).max(Duration::from_millis(5))
}

/// A consumer of one group on the in-memory bus.
pub(crate) struct MemoryConsumer {
    stream: Arc<MemStream>,
    group: String,
    name: Arc<str>,
    opts: BusOptions,
    ownership: Mutex<Ownership>,
    last_reclaim: Mutex<Option<Instant>>,
    /// Rotates the partition read first, so one busy partition cannot starve the others.
    rotation: AtomicUsize,
}

impl MemoryConsumer {
    /// Reclaims if it is time to; returns the reclaimed entries.
    fn reclaim_if_due(&self, now: Instant) -> Vec<Delivery> {
        {
            let mut last = lock(&self.last_reclaim);
            if last.is_some_and(|t| now < t + reclaim_interval(self.opts.reclaim_idle)) {
                return Vec::new();
            }
            *last = Some(now);
        }
        let owned: BTreeMap<u32, EntryId> = lock(&self.ownership)
            .owned
            .iter()
            .map(|p| (*p, EntryId::ZERO))
            .collect();
        self.stream.reclaim(
            &self.group,
            &self.name,
            self.opts.reclaim_idle,
            u64::from(self.opts.max_deliveries),
            self.opts.batch_size,
            &owned,
        )
    }

    /// Renews membership and leases when due, and takes over the pending entries of
    /// partitions just taken; returns those entries (oldest first per partition).
    fn own_partitions(&self, now: Instant) -> Vec<Delivery> {
        let ttl = self.opts.lease_ttl;
        if lock(&self.ownership).due(now, ttl) {
            let held = self
                .stream
                .lease_refresh(&self.group, &self.name, ttl, false);
            lock(&self.ownership).update(held, now, self.stream.name(), &self.group);
        }
        let taking_over = lock(&self.ownership).taking_over.clone();
        if taking_over.is_empty() {
            return Vec::new();
        }
        let mut out = Vec::new();
        for (p, after) in taking_over {
            let pending = self.stream.reclaim(
                &self.group,
                &self.name,
                Duration::ZERO,
                u64::from(self.opts.max_deliveries),
                self.opts.batch_size,
                &BTreeMap::from([(p, after)]),
            );
            let mut ownership = lock(&self.ownership);
            match pending.last() {
                Some(last) => {
                    ownership.taking_over.insert(p, last.id);
                }
                None => {
                    ownership.taking_over.remove(&p);
                }
            }
            out.extend(pending);
        }
        out
    }

    /// The partitions this consumer holds.
    pub(crate) fn owned_partitions(&self) -> Vec<u32> {
        lock(&self.ownership).owned.iter().copied().collect()
    }

    /// Gives up membership and every lease, so the others take over at their next refresh.
    pub(crate) fn leave(&self) {
        self.stream
            .lease_refresh(&self.group, &self.name, self.opts.lease_ttl, true);
        lock(&self.ownership).clear();
    }

    fn next_reclaim_at(&self) -> Instant {
        let last = lock(&self.last_reclaim).unwrap_or_else(Instant::now);
        last + reclaim_interval(self.opts.reclaim_idle)
    }

    pub(crate) async fn next_batch(&self) -> Vec<Delivery> {
        let deadline = Instant::now() + self.opts.read_block;
        loop {
            let notified = self.stream.appended.notified();
            tokio::pin!(notified);
            notified.as_mut().enable();
            let taken_over = self.own_partitions(Instant::now());
            if !taken_over.is_empty() {
                return taken_over;
            }
            let reclaimed = self.reclaim_if_due(Instant::now());
            if !reclaimed.is_empty() {
                return reclaimed;
            }
            let start = self.rotation.fetch_add(1, Ordering::Relaxed);
            let owned = lock(&self.ownership).owned.clone();
            let fresh =
                self.stream
                    .read_new(&self.group, &self.name, self.opts.batch_size, start, &owned);
            if !fresh.is_empty() {
                return fresh;
            }
            let now = Instant::now();
            if now >= deadline {
                return Vec::new();
            }
            let next_refresh = lock(&self.ownership).next_refresh(self.opts.lease_ttl);
            let wake = deadline
                .min(self.next_reclaim_at())
                .min(next_refresh)
                .max(now);
            let _ = tokio::time::timeout_at(wake.into(), notified).await;
        }
    }

    pub(crate) fn ack(&self, items: &[(u32, EntryId)]) {
        self.stream.ack(&self.group, items)
    }

    pub(crate) fn nack(&self, partition: u32, id: EntryId, error: &str) -> NackOutcome {
        self.stream.nack(
            &self.group,
            &self.name,
            partition,
            id,
            error,
            u64::from(self.opts.max_deliveries),
        )
    }
}

/// A tail reader on the in-memory bus.
pub(crate) struct MemoryTail {
    stream: Arc<MemStream>,
    cursor: Cursor,
    opts: BusOptions,
}

impl MemoryTail {
    pub(crate) fn cursor(&self) -> &Cursor {
        &self.cursor
    }

    pub(crate) async fn next_batch(&mut self) -> Vec<Delivery> {
        let deadline = tokio::time::Instant::now() + self.opts.read_block;
        loop {
            let notified = self.stream.appended.notified();
            tokio::pin!(notified);
            notified.as_mut().enable();
            let batch = self.stream.read_after(&self.cursor, self.opts.batch_size);
            if !batch.is_empty() {
                for d in &batch {
                    self.cursor.advance(d.partition, d.id);
                }
                return batch;
            }
            if tokio::time::timeout_at(deadline, notified).await.is_err() {
                return Vec::new();
            }
        }
    }
}
