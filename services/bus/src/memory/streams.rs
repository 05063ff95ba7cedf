//! In-memory streams: partitions of entries, consumer groups with pending entries,
//! idle reclaim, delivery counts and dead letters — the Redis Streams semantics the
//! services rely on, behind one mutex per partition.

use std::collections::{BTreeMap, BTreeSet, HashMap, VecDeque};
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::sync::Notify;

use crate::clock::unix_ms;
use crate::cursor::Cursor;
use crate::entry::{Appended, DeadLetter, DeadLetterRef, Delivery, EntryId, Event, NackOutcome};
use crate::lease::LeaseBook;
use crate::state::{GroupInfo, Retention, StreamStats};

use super::lock;

/// One stream: `P` partitions and a notifier that wakes blocked readers on append.
pub(super) struct MemStream {
    name: String,
    pub(super) parts: Vec<std::sync::Mutex<Part>>,
    pub(super) appended: Notify,
    /// Partition leases per group (see [`crate::lease`]).
    leases: std::sync::Mutex<HashMap<String, LeaseBook>>,
}

/// One partition of a stream, with the per-group bookkeeping that concerns its entries.
#[derive(Default)]
pub(super) struct Part {
    entries: VecDeque<Stored>,
    last_id: EntryId,
    /// The newest entry retention removed (`0-0` while none was).
    max_trimmed: EntryId,
    groups: HashMap<String, Group>,
}

struct Stored {
    id: EntryId,
    event: Arc<Event>,
}

#[derive(Default)]
struct Group {
    /// Entries up to this id have been handed out to the group.
    last_delivered: EntryId,
    pending: BTreeMap<EntryId, Pending>,
    dead: VecDeque<DeadStored>,
    dead_last_id: EntryId,
    dead_total: u64,
}

struct Pending {
    consumer: Arc<str>,
    delivered_at: Instant,
    count: u64,
    error: Option<String>,
}

struct DeadStored {
    id: EntryId,
    source_id: EntryId,
    count: u64,
    error: String,
    at_ms: u64,
    event: Arc<Event>,
}

/// The id after `last` for an append at wall-clock `now_ms` (Redis's rule: the time part
/// never goes backwards, the sequence breaks ties).
fn next_id(last: EntryId, now_ms: u64) -> EntryId {
    if now_ms > last.ms {
        EntryId::new(now_ms, 0)
    } else {
        last.successor()
    }
}

impl Part {
    /// Appends one event; the caller notifies readers after releasing the lock.
    pub(super) fn append(&mut self, event: Arc<Event>, now_ms: u64) -> EntryId {
        let id = next_id(self.last_id, now_ms);
        self.last_id = id;
        self.entries.push_back(Stored { id, event });
        id
    }

    /// Index of the first entry with an id greater than `after`.
    fn first_after(&self, after: EntryId) -> usize {
        self.entries.partition_point(|s| s.id <= after)
    }

    fn find(&self, id: EntryId) -> Option<&Stored> {
        self.entries
            .binary_search_by(|s| s.id.cmp(&id))
            .ok()
            .and_then(|i| self.entries.get(i))
    }

    /// Moves a pending entry of `group` to its dead-letter list.
    fn dead_letter(&mut self, group: &str, id: EntryId, count: u64, error: String) {
        let event = self.find(id).map(|s| s.event.clone());
        let Some(g) = self.groups.get_mut(group) else {
            return;
        };
        g.pending.remove(&id);
        if let Some(event) = event {
            let dead_id = next_id(g.dead_last_id, unix_ms());
            g.dead_last_id = dead_id;
            g.dead_total += 1;
            g.dead.push_back(DeadStored {
                id: dead_id,
                source_id: id,
                count,
                error,
                at_ms: unix_ms(),
                event,
            });
        }
    }
}

fn delivery(stream: &str, partition: u32, stored: &Stored, count: u64) -> Delivery {
    Delivery {
        stream: stream.to_owned(),
        partition,
        id: stored.id,
        key: stored.event.key.clone(),
        kind: stored.event.kind.clone(),
        payload: stored.event.payload.clone(),
        traceparent: stored.event.traceparent.clone(),
        delivery_count: count,
    }
}

fn partition_index(i: usize) -> u32 {
    u32::try_from(i).unwrap_or(u32::MAX)
}

impl MemStream {
    pub(super) fn name(&self) -> &str {
        &self.name
    }

    pub(super) fn new(name: &str, partitions: u32) -> Self {
        MemStream {
            name: name.to_owned(),
            parts: (0..partitions).map(|_| Default::default()).collect(),
            appended: Notify::new(),
            leases: Default::default(),
        }
    }

    fn part(&self, partition: u32) -> Option<&std::sync::Mutex<Part>> {
        self.parts.get(partition as usize)
    }

    /// Appends events (already carrying their partition) in order.
    pub(super) fn publish(&self, events: Vec<(u32, Event)>) -> Vec<Appended> {
        let now = unix_ms();
        let mut out = Vec::with_capacity(events.len());
        for (partition, event) in events {
            if let Some(part) = self.part(partition) {
                let id = lock(part).append(Arc::new(event), now);
                out.push(Appended { partition, id });
            }
        }
        self.appended.notify_waiters();
        out
    }

    /// Creates `group` at the start of every partition; an existing group is kept.
    pub(super) fn create_group(&self, group: &str) {
        for part in &self.parts {
            lock(part).groups.entry(group.to_owned()).or_default();
        }
    }

    /// Renews `consumer`'s membership and leases in `group` (or gives them up when
    /// `leaving`) and returns the partitions it holds.
    pub(super) fn lease_refresh(
        &self,
        group: &str,
        consumer: &str,
        ttl: Duration,
        leaving: bool,
    ) -> BTreeSet<u32> {
        let ttl_ms = u64::try_from(ttl.as_millis()).unwrap_or(u64::MAX);
        let partitions = u32::try_from(self.parts.len()).unwrap_or(u32::MAX);
        lock(&self.leases)
            .entry(group.to_owned())
            .or_default()
            .refresh(consumer, unix_ms(), ttl_ms, partitions, leaving)
    }

    /// Hands out up to `limit` never-delivered entries per partition of `owned` to
    /// `consumer`.
    pub(super) fn read_new(
        &self,
        group: &str,
        consumer: &Arc<str>,
        limit: usize,
        start: usize,
        owned: &BTreeSet<u32>,
    ) -> Vec<Delivery> {
        let now = Instant::now();
        let mut out = Vec::new();
        let n = self.parts.len();
        for k in 0..n {
            let i = (start + k) % n;
            if !owned.contains(&partition_index(i)) {
                continue;
            }
            let mut guard = lock(&self.parts[i]);
            let part = &mut *guard;
            let Some(g) = part.groups.get_mut(group) else {
                continue;
            };
            let from = part.entries.partition_point(|s| s.id <= g.last_delivered);
            for stored in part.entries.range(from..).take(limit) {
                g.last_delivered = stored.id;
                g.pending.insert(
                    stored.id,
                    Pending {
                        consumer: consumer.clone(),
                        delivered_at: now,
                        count: 1,
                        error: None,
                    },
                );
                out.push(delivery(&self.name, partition_index(i), stored, 1));
            }
        }
        out
    }

    /// Takes over entries of `group` idle for at least `idle` in the partitions of `from`,
    /// each scanned after its id there, dead-lettering those that would exceed
    /// `max_deliveries`.
    pub(super) fn reclaim(
        &self,
        group: &str,
        consumer: &Arc<str>,
        idle: Duration,
        max_deliveries: u64,
        limit: usize,
        from: &BTreeMap<u32, EntryId>,
    ) -> Vec<Delivery> {
        let now = Instant::now();
        let mut out = Vec::new();
        for (i, part) in self.parts.iter().enumerate() {
            let Some(&after) = from.get(&partition_index(i)) else {
                continue;
            };
            let mut guard = lock(part);
            let part = &mut *guard;
            let Some(g) = part.groups.get(group) else {
                continue;
            };
            let idle: Vec<(EntryId, u64, Option<String>)> = g
                .pending
                .range((std::ops::Bound::Excluded(after), std::ops::Bound::Unbounded))
                .filter(|(_, p)| now.saturating_duration_since(p.delivered_at) >= idle)
                .take(limit)
                .map(|(id, p)| (*id, p.count, p.error.clone()))
                .collect();
            for (id, delivered, error) in idle {
                let count = delivered + 1;
                if count > max_deliveries {
                    let error = error.unwrap_or_else(|| {
                        "not acknowledged within the reclaim idle threshold".to_owned()
                    });
                    part.dead_letter(group, id, delivered, error);
                    continue;
                }
                let Ok(at) = part.entries.binary_search_by(|s| s.id.cmp(&id)) else {
                    // Deleted while pending: nothing left to deliver.
                    if let Some(g) = part.groups.get_mut(group) {
                        g.pending.remove(&id);
                    }
                    continue;
                };
                if let Some(p) = part
                    .groups
                    .get_mut(group)
                    .and_then(|g| g.pending.get_mut(&id))
                {
                    p.consumer = consumer.clone();
                    p.delivered_at = now;
                    p.count = count;
                }
                if let Some(stored) = part.entries.get(at) {
                    out.push(delivery(&self.name, partition_index(i), stored, count));
                }
            }
        }
        out
    }
}

impl MemStream {
    /// Acknowledges entries of `group`, whoever holds them.
    pub(super) fn ack(&self, group: &str, items: &[(u32, EntryId)]) {
        for (partition, id) in items {
            if let Some(part) = self.part(*partition)
                && let Some(g) = lock(part).groups.get_mut(group)
            {
                g.pending.remove(id);
            }
        }
    }

    /// Records a failed attempt; dead-letters the entry when it has used its deliveries.
    pub(super) fn nack(
        &self,
        group: &str,
        consumer: &str,
        partition: u32,
        id: EntryId,
        error: &str,
        max_deliveries: u64,
    ) -> NackOutcome {
        let Some(part) = self.part(partition) else {
            return NackOutcome::NotOwner;
        };
        let mut part = lock(part);
        let Some(p) = part
            .groups
            .get_mut(group)
            .and_then(|g| g.pending.get_mut(&id))
        else {
            return NackOutcome::NotOwner;
        };
        if &*p.consumer != consumer {
            return NackOutcome::NotOwner;
        }
        if p.count >= max_deliveries {
            let count = p.count;
            part.dead_letter(group, id, count, error.to_owned());
            NackOutcome::DeadLettered
        } else {
            p.error = Some(error.to_owned());
            NackOutcome::WillRetry
        }
    }

    /// Entries newer than `cursor`, up to `limit` per partition, in order per partition.
    pub(super) fn read_after(&self, cursor: &Cursor, limit: usize) -> Vec<Delivery> {
        let mut out = Vec::new();
        for (i, part) in self.parts.iter().enumerate() {
            let partition = partition_index(i);
            let part = lock(part);
            let from = part.first_after(cursor.get(partition));
            out.extend(
                part.entries
                    .range(from..)
                    .take(limit)
                    .map(|s| delivery(&self.name, partition, s, 0)),
            );
        }
        out
    }

    /// The id of the last entry appended to each partition.
    pub(super) fn end_cursor(&self) -> Cursor {
        Cursor::from_ids(self.parts.iter().map(|p| lock(p).last_id).collect())
    }

    /// Drops old entries under `retention`, keeping any a group still needs.
    pub(super) fn trim(&self, retention: &Retention) -> u64 {
        let now_ms = unix_ms();
        let mut removed = 0u64;
        for part in &self.parts {
            let mut part = lock(part);
            let mut target: Option<EntryId> = None;
            if let Some(max_len) = retention.max_len_per_partition {
                let len = part.entries.len() as u64;
                if len > max_len {
                    let first_kept = usize::try_from(len - max_len).unwrap_or(usize::MAX);
                    target = Some(
                        part.entries
                            .get(first_kept)
                            .map_or(part.last_id.successor(), |s| s.id),
                    );
                }
            }
            if let Some(age) = retention.max_age {
                let cut = EntryId::new(
                    now_ms.saturating_sub(u64::try_from(age.as_millis()).unwrap_or(u64::MAX)),
                    0,
                );
                target = Some(target.map_or(cut, |t| t.max(cut)));
            }
            let Some(mut min_kept) = target else {
                continue;
            };
            for g in part.groups.values() {
                let floor = g
                    .pending
                    .keys()
                    .next()
                    .copied()
                    .unwrap_or_else(|| g.last_delivered.successor());
                min_kept = min_kept.min(floor);
            }
            while part.entries.front().is_some_and(|s| s.id < min_kept) {
                if let Some(gone) = part.entries.pop_front() {
                    part.max_trimmed = part.max_trimmed.max(gone.id);
                }
                removed += 1;
            }
        }
        removed
    }

    /// Whether retention removed an entry after `cursor` in some partition.
    pub(super) fn trimmed_past(&self, cursor: &Cursor) -> bool {
        self.parts
            .iter()
            .zip(cursor.ids())
            .any(|(part, seen)| lock(part).max_trimmed > *seen)
    }

    /// Backlog, pending and dead-letter counts of `group`.
    pub(super) fn stats(&self, group: &str) -> StreamStats {
        let mut stats = StreamStats::default();
        for part in &self.parts {
            let part = lock(part);
            let len = part.entries.len() as u64;
            stats.length += len;
            match part.groups.get(group) {
                Some(g) => {
                    let undelivered =
                        (part.entries.len() - part.first_after(g.last_delivered)) as u64;
                    stats.undelivered += undelivered;
                    stats.pending += g.pending.len() as u64;
                    stats.dead_letters += g.dead.len() as u64;
                    stats.dead_lettered_total += g.dead_total;
                }
                None => stats.undelivered += len,
            }
        }
        stats.backlog = stats.undelivered + stats.pending;
        stats
    }

    /// Every group of the stream, by name, summed over partitions.
    pub(super) fn groups(&self) -> Vec<GroupInfo> {
        let mut found: BTreeMap<String, GroupInfo> = BTreeMap::new();
        for part in &self.parts {
            let part = lock(part);
            for (name, g) in &part.groups {
                let info = found.entry(name.clone()).or_insert_with(|| GroupInfo {
                    group: name.clone(),
                    ..GroupInfo::default()
                });
                info.undelivered +=
                    (part.entries.len() - part.first_after(g.last_delivered)) as u64;
                info.pending += g.pending.len() as u64;
                info.dead_letters += g.dead.len() as u64;
            }
        }
        let now_ms = unix_ms();
        let leases = lock(&self.leases);
        for info in found.values_mut() {
            info.readers = leases
                .get(&info.group)
                .map_or(0, |book| book.live_members(now_ms));
        }
        found.into_values().collect()
    }

    /// Removes `group` from every partition, with its pending entries, dead letters and
    /// leases; whether it existed.
    pub(super) fn drop_group(&self, group: &str) -> bool {
        let mut existed = false;
        for part in &self.parts {
            existed |= lock(part).groups.remove(group).is_some();
        }
        lock(&self.leases).remove(group);
        existed
    }

    /// The oldest `limit` dead letters of `group`, across partitions.
    pub(super) fn dead_letters(&self, group: &str, limit: usize) -> Vec<DeadLetter> {
        let mut out = Vec::new();
        for (i, part) in self.parts.iter().enumerate() {
            let part = lock(part);
            if let Some(g) = part.groups.get(group) {
                out.extend(g.dead.iter().take(limit).map(|d| DeadLetter {
                    at: DeadLetterRef {
                        partition: partition_index(i),
                        id: d.id,
                    },
                    stream: self.name.clone(),
                    group: group.to_owned(),
                    source_id: d.source_id,
                    delivery_count: d.count,
                    error: d.error.clone(),
                    dead_at_ms: d.at_ms,
                    event: (*d.event).clone(),
                }));
            }
        }
        out.sort_by_key(|d| (d.at.id, d.at.partition));
        out.truncate(limit);
        out
    }

    /// Appends the named dead letters to the stream again (new ids) and removes them from
    /// the dead-letter list. Unknown refs are skipped.
    pub(super) fn replay_dead_letters(&self, group: &str, refs: &[DeadLetterRef]) -> Vec<Appended> {
        let now = unix_ms();
        let mut out = Vec::new();
        for r in refs {
            let Some(part) = self.part(r.partition) else {
                continue;
            };
            let mut part = lock(part);
            let Some(g) = part.groups.get_mut(group) else {
                continue;
            };
            let Some(pos) = g.dead.iter().position(|d| d.id == r.id) else {
                continue;
            };
            if let Some(dead) = g.dead.remove(pos) {
                let id = part.append(dead.event, now);
                out.push(Appended {
                    partition: r.partition,
                    id,
                });
            }
        }
        if !out.is_empty() {
            self.appended.notify_waiters();
        }
        out
    }

    /// Removes the named dead letters for good; returns how many existed.
    pub(super) fn delete_dead_letters(&self, group: &str, refs: &[DeadLetterRef]) -> u64 {
        let mut removed = 0;
        for r in refs {
            let Some(part) = self.part(r.partition) else {
                continue;
            };
            let mut part = lock(part);
            if let Some(g) = part.groups.get_mut(group)
                && let Some(pos) = g.dead.iter().position(|d| d.id == r.id)
            {
                g.dead.remove(pos);
                removed += 1;
            }
        }
        removed
    }
}
