//! In-memory versioned state, sharded by key so writers of different keys rarely contend.

use std::collections::{BTreeMap, HashMap};
use std::ops::Bound;
use std::sync::{Arc, Mutex};

use bytes::Bytes;

use crate::clock::unix_ms;
use crate::entry::{Appended, Event};
use crate::error::{BusError, BusResult};
use crate::partition::fnv1a64;
use crate::state::{
    Expect, HistoryEntry, HistoryLimits, HistoryLookup, StatePage, StateRecord, StateWrite,
    Written, page_token, parse_page_token,
};

use super::lock;
use super::streams::MemStream;

const SHARDS: usize = 64;

type Namespaces = HashMap<String, BTreeMap<String, Stored>>;

/// A record, whether scans list it ([`StateWrite::listed`] of its first write) and the
/// group it is listed under.
#[derive(Default)]
struct Stored {
    record: StateRecord,
    listed: bool,
    group: Option<String>,
}

/// Kept versions of one key, by `(at_us, version)`.
type History = BTreeMap<(i64, u64), Bytes>;

pub(super) struct StateStore {
    shards: Vec<Mutex<Namespaces>>,
    /// Per shard (the state key's), `(namespace, key)` → its history. Locked after the
    /// state shard, inside the same critical section as the write it belongs to.
    histories: Vec<Mutex<HashMap<(String, String), History>>>,
}

fn shard_of(key: &str) -> usize {
    (fnv1a64(key.as_bytes()) % SHARDS as u64) as usize
}

/// Drops what `limits` no longer keep: every version superseded before the horizon (the
/// one current at it stays), then the oldest beyond `max_versions`.
fn trim_history(history: &mut History, limits: &HistoryLimits) {
    let before = history.range(..(limits.keep_since_us, 0)).count();
    for _ in 1..before {
        history.pop_first();
    }
    while history.len() > limits.max_versions.max(1) as usize {
        history.pop_first();
    }
}

fn check(expect: Expect, ns: &str, key: &str, current: u64) -> BusResult<()> {
    match expect {
        Expect::Version(v) if v != current => Err(BusError::Conflict {
            key: format!("{ns}/{key}"),
            expected: v,
            current,
        }),
        _ => Ok(()),
    }
}

impl StateStore {
    pub(super) fn new() -> Self {
        StateStore {
            shards: (0..SHARDS).map(|_| Mutex::new(HashMap::new())).collect(),
            histories: (0..SHARDS).map(|_| Mutex::new(HashMap::new())).collect(),
        }
    }

    /// The version of `ns`/`key` current at `at_us`, and the oldest kept.
    pub(super) fn history_at(&self, ns: &str, key: &str, at_us: i64) -> HistoryLookup {
        let histories = lock(&self.histories[shard_of(key)]);
        let Some(history) = histories.get(&(ns.to_owned(), key.to_owned())) else {
            return HistoryLookup::default();
        };
        HistoryLookup {
            found: history.range(..=(at_us, u64::MAX)).next_back().map(
                |(&(at_us, version), payload)| HistoryEntry {
                    at_us,
                    version,
                    payload: payload.clone(),
                },
            ),
            oldest: history
                .keys()
                .next()
                .map(|&(at_us, version)| (version, at_us)),
        }
    }

    pub(super) fn get(&self, ns: &str, key: &str) -> Option<StateRecord> {
        lock(&self.shards[shard_of(key)])
            .get(ns)
            .and_then(|m| m.get(key))
            .map(|s| s.record.clone())
    }

    /// The record's version with only `fields` (those it holds), if it exists.
    pub(super) fn count_fields(&self, ns: &str, key: &str) -> u64 {
        lock(&self.shards[shard_of(key)])
            .get(ns)
            .and_then(|m| m.get(key))
            .map_or(0, |s| s.record.fields.len() as u64)
    }

    pub(super) fn get_fields<F: AsRef<str>>(
        &self,
        ns: &str,
        key: &str,
        fields: &[F],
    ) -> Option<StateRecord> {
        lock(&self.shards[shard_of(key)])
            .get(ns)
            .and_then(|m| m.get(key))
            .map(|s| StateRecord {
                version: s.record.version,
                fields: fields
                    .iter()
                    .filter_map(|f| {
                        let (name, value) = s.record.fields.get_key_value(f.as_ref())?;
                        Some((name.clone(), value.clone()))
                    })
                    .collect(),
            })
    }

    /// Applies `write`; when `publish` is given, appends its events in the same critical
    /// section, so no reader sees an event without the state or the state without it.
    pub(super) fn write(
        &self,
        write: StateWrite,
        publish: Option<(&Arc<MemStream>, u32, Vec<Event>)>,
    ) -> BusResult<Written> {
        let mut shard = lock(&self.shards[shard_of(&write.key)]);
        let current = shard
            .get(&write.namespace)
            .and_then(|m| m.get(&write.key))
            .map_or(0, |s| s.record.version);
        check(write.expect, &write.namespace, &write.key, current)?;
        let mut appended = Vec::new();
        if let Some((stream, partition, events)) = &publish
            && let Some(part) = stream.parts.get(*partition as usize)
        {
            let mut part = lock(part);
            for event in events {
                let id = part.append(Arc::new(event.clone()), unix_ms());
                appended.push(Appended {
                    partition: *partition,
                    id,
                });
            }
        }
        if let Some((_, entry, limits)) = &write.history {
            let mut histories = lock(&self.histories[shard_of(&write.key)]);
            let history = histories
                .entry((write.namespace.clone(), write.key.clone()))
                .or_default();
            history.insert((entry.at_us, entry.version), entry.payload.clone());
            trim_history(history, limits);
        }
        let stored = shard
            .entry(write.namespace)
            .or_default()
            .entry(write.key)
            .or_insert_with(|| Stored {
                record: StateRecord::default(),
                listed: write.listed,
                group: None,
            });
        if stored.listed && write.group.is_some() {
            stored.group = write.group;
        }
        let record = &mut stored.record;
        record.version = current + 1;
        for field in &write.remove {
            record.fields.remove(field);
        }
        record.fields.extend(write.set);
        let version = record.version;
        drop(shard);
        if let Some((stream, _, _)) = &publish
            && !appended.is_empty()
        {
            stream.appended.notify_waiters();
        }
        Ok((version, appended))
    }

    pub(super) fn delete(&self, ns: &str, key: &str, expect: Expect) -> BusResult<bool> {
        let mut shard = lock(&self.shards[shard_of(key)]);
        let current = shard
            .get(ns)
            .and_then(|m| m.get(key))
            .map_or(0, |s| s.record.version);
        check(expect, ns, key, current)?;
        lock(&self.histories[shard_of(key)]).remove(&(ns.to_owned(), key.to_owned()));
        Ok(shard.get_mut(ns).and_then(|m| m.remove(key)).is_some())
    }

    /// A page of `ns` (of its records listed under `group`, if given), ordered by shard and
    /// then key.
    pub(super) fn scan(
        &self,
        ns: &str,
        group: Option<&str>,
        page: Option<&str>,
        limit: usize,
    ) -> BusResult<StatePage> {
        let (mut shard, mut after) = match page {
            Some(token) => {
                let (shard, key) = parse_page_token(token)?;
                (shard as usize, Some(key))
            }
            None => (0, None),
        };
        let mut items = Vec::new();
        while shard < SHARDS && items.len() < limit {
            let guard = lock(&self.shards[shard]);
            if let Some(map) = guard.get(ns) {
                let lower = match &after {
                    Some(k) => Bound::Excluded(k.clone()),
                    None => Bound::Unbounded,
                };
                for (k, s) in map
                    .range((lower, Bound::Unbounded))
                    .filter(|(_, s)| {
                        s.listed && group.is_none_or(|g| s.group.as_deref() == Some(g))
                    })
                    .take(limit - items.len())
                {
                    items.push((k.clone(), s.record.clone()));
                }
            }
            drop(guard);
            if items.len() < limit {
                shard += 1;
                after = None;
            }
        }
        let next = (shard < SHARDS).then(|| {
            let last = items.last().map(|(k, _)| k.as_str()).unwrap_or("");
            page_token(u32::try_from(shard).unwrap_or(0), last)
        });
        Ok(StatePage { items, next })
    }
}
