//! Bus state of the service: per-SKU records, the table of concurrency slots, the listing
//! projection, and expiry timers.
//!
//! | where | key | holds |
//! |---|---|---|
//! | state `incentive` | SKU | field `record`: [`SkuRecord`], format byte `0x01` then protobuf (JSON of earlier releases still read; see [`record`](crate::record)) — the truth, written by CAS |
//! | state `incentive-slots` | `active` | field `slots`: SKU → [`Slot`], one per active incentive; format byte `0x01` then protobuf `SlotTable` (JSON of earlier releases still read) |
//! | state `incentive-log` | incentive id | field `incentive`: protobuf `ratemesh.v1.Incentive`, for listing |
//! | state `incentive-waiting` | SKU | field `candidate`: JSON [`Waiting`] — qualified but lost to a full limit |
//! | timers `incentive-expiry` | SKU | due at the active incentive's `ends_at` |

use std::collections::BTreeMap;
use std::sync::Arc;

use bytes::Bytes;
use chrono::{DateTime, Utc};
use prost::Message as _;
use ratemesh_bus::{Bus, BusError, Event, Expect, RecordCache, StateRecord, StateWrite, Update};
use ratemesh_contract::state_wire::{Timestamp, required_time, timestamp};
use ratemesh_core::{ActiveCounts, Candidate, DaysOfCover, LossReason, Policy, Sku};
use ratemesh_proto::v1;
use serde::{Deserialize, Serialize};

use crate::clock::system_time;
use crate::record::{SkuRecord, millis};

/// State namespace of the per-SKU records.
pub const NS_RECORD: &str = "incentive";
/// State namespace of the slot table.
pub const NS_SLOTS: &str = "incentive-slots";
/// State namespace of the listing projection.
pub const NS_LOG: &str = "incentive-log";
/// State namespace of the SKUs waiting for a concurrency slot.
pub const NS_WAITING: &str = "incentive-waiting";
/// Timer queue of expiries.
pub const TIMERS: &str = "incentive-expiry";
const FIELD_RECORD: &str = "record";
const FIELD_CANDIDATE: &str = "candidate";
const FIELD_SLOTS: &str = "slots";
const FIELD_INCENTIVE: &str = "incentive";
const SLOTS_KEY: &str = "active";

/// Errors of the store.
#[derive(Debug)]
pub enum StoreError {
    /// The bus failed.
    Bus(BusError),
    /// Stored data could not be read (a bug or a foreign writer).
    Corrupt(String),
}

impl std::error::Error for StoreError {}

impl std::fmt::Display for StoreError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            StoreError::Bus(e) => write!(f, "{e}"),
            StoreError::Corrupt(what) => write!(f, "stored state is unreadable: {what}"),
        }
    }
}

impl From<BusError> for StoreError {
    fn from(e: BusError) -> Self {
        StoreError::Bus(e)
    }
}

/// What a step of [`Store::update`] decided for a SKU's record.
#[derive(Debug)]
pub enum Change<T> {
    /// Leave the record as stored; the update is done with this value.
    Keep(T),
    /// Save the record.
    Save(SkuRecord, T),
    /// Save the record and append the event to the incentives stream, atomically.
    SaveAndPublish(SkuRecord, Event, T),
}

impl<T> Change<T> {
    /// The same decision with its value turned into another.
    pub fn map<U>(self, f: impl FnOnce(T) -> U) -> Change<U> {
        match self {
            Change::Keep(value) => Change::Keep(f(value)),
            Change::Save(record, value) => Change::Save(record, f(value)),
            Change::SaveAndPublish(record, event, value) => {
                Change::SaveAndPublish(record, event, f(value))
            }
        }
    }
}

/// One reserved concurrency slot.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Slot {
    /// Category of the SKU holding it.
    pub category: String,
    /// When it was reserved (stale reservations without an incentive are swept).
    pub reserved_at: DateTime<Utc>,
}

/// A SKU that qualified for an incentive but found its category or the program full; the
/// sweep offers it the next free slot, the most overstocked first.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Waiting {
    /// Its category (whose limit it waits on).
    pub category: String,
    /// Its cover when it last qualified (the sweep re-decides before opening).
    pub cover: DaysOfCover,
    /// When it last lost.
    pub since: DateTime<Utc>,
}

/// Bus access for the service.
#[derive(Debug, Clone)]
pub struct Store {
    bus: Bus,
    /// Records this replica last saved in a batch, by SKU ([`RecordCache`]).
    cache: Arc<RecordCache<SkuRecord>>,
}

impl Store {
    /// The store on `bus`, keeping up to `cached` records it saved in memory.
    pub fn new(bus: Bus, cached: usize) -> Self {
        Self {
            bus,
            cache: Arc::new(RecordCache::new(cached)),
        }
    }

    pub fn bus(&self) -> &Bus {
        &self.bus
    }

    /// The record of `sku` and its version (0 and a fresh record when absent).
    pub async fn load(&self, sku: &Sku, policy: &Policy) -> Result<(u64, SkuRecord), StoreError> {
        let stored = self.bus.get_state(NS_RECORD, sku.as_str()).await?;
        let version = stored.as_ref().map_or(0, |r| r.version);
        Ok((version, Self::record_of(sku, policy, stored)?))
    }

    /// The records of `skus` with their versions (as [`Store::load`]): those this replica
    /// saved last from memory, the others read in one step.
    pub async fn load_many(
        &self,
        skus: &[Sku],
        policy: &Policy,
    ) -> Result<Vec<(u64, SkuRecord)>, StoreError> {
        let mut found: Vec<Option<(u64, SkuRecord)>> = skus
            .iter()
            .map(|sku| self.cache.take(sku.as_str()))
            .collect();
        let missing: Vec<usize> = (0..skus.len()).filter(|&i| found[i].is_none()).collect();
        if !missing.is_empty() {
            let keys: Vec<&str> = missing.iter().map(|&i| skus[i].as_str()).collect();
            let stored = match self.bus.get_states(NS_RECORD, &keys).await {
                Ok(stored) => stored,
                Err(e) => {
                    // What came from memory goes back for the retry.
                    for (version, record) in found.into_iter().flatten() {
                        self.keep(version, record);
                    }
                    return Err(e.into());
                }
            };
            for (i, stored) in missing.into_iter().zip(stored) {
                let version = stored.as_ref().map_or(0, |r| r.version);
                found[i] = Some((version, Self::record_of(&skus[i], policy, stored)?));
            }
        }
        Ok(found.into_iter().flatten().collect())
    }

    /// Keeps `record`, unchanged since it was stored at `version`, for the next batch.
    pub fn keep(&self, version: u64, record: SkuRecord) {
        let sku = record.view.sku.to_string();
        self.cache.put(sku, version, record);
    }

    /// Saves records read at the given versions, in one atomic step per partition, each
    /// under its own version check: per record, `Ok` or the error (a
    /// [`BusError::Conflict`] when another writer got in first; nothing of it was saved).
    /// Saved records are kept in memory for the next batch.
    pub async fn save_many(
        &self,
        records: Vec<(u64, SkuRecord)>,
    ) -> Result<Vec<Result<(), BusError>>, StoreError> {
        let writes = records
            .iter()
            .map(|(version, record)| {
                let write =
                    StateWrite::new(NS_RECORD, record.view.sku.as_str()).expect_version(*version);
                (Self::write_of(record, write), None)
            })
            .collect::<Vec<_>>();
        let written = self.bus.write_states(writes).await;
        Ok(records
            .into_iter()
            .zip(written)
            .map(|((_, record), result)| {
                let (version, _) = result?;
                self.keep(version, record);
                Ok(())
            })
            .collect())
    }

    /// The record in `sku`'s stored state (a fresh one when there is none).
    fn record_of(
        sku: &Sku,
        policy: &Policy,
        stored: Option<StateRecord>,
    ) -> Result<SkuRecord, StoreError> {
        match stored {
            None => Ok(SkuRecord::new(sku.clone(), policy)),
            Some(rec) => {
                let bytes = rec.fields.get(FIELD_RECORD).ok_or_else(|| {
                    StoreError::Corrupt(format!("{NS_RECORD}/{sku}: no field {FIELD_RECORD}"))
                })?;
                SkuRecord::decode(bytes)
                    .map_err(|e| StoreError::Corrupt(format!("{NS_RECORD}/{sku}: {e}")))
            }
        }
    }

    /// `write` with `record` in its binary form. SKU records are only ever read by SKU,
    /// so no scan lists them.
    fn write_of(record: &SkuRecord, write: StateWrite) -> StateWrite {
        write.set(FIELD_RECORD, record.encode()).unlisted()
    }

    /// Read-modify-write of `sku`'s record through [`Bus::update_state`]: `change` gets
    /// the record (a fresh one when absent) and says whether to save it, and with which
    /// event; it is asked again with the new record when another writer got in first.
    pub async fn update<T, E, F, Fut>(
        &self,
        sku: &Sku,
        policy: &Policy,
        mut change: F,
    ) -> Result<T, E>
    where
        E: From<StoreError> + From<BusError>,
        F: FnMut(SkuRecord) -> Fut,
        Fut: Future<Output = Result<Change<T>, E>>,
    {
        // Written here, so what a batch kept in memory is out of date.
        self.cache.forget(sku.as_str());
        self.bus
            .update_state(NS_RECORD, sku.as_str(), |stored, write| {
                let decided = Self::record_of(sku, policy, stored).map(&mut change);
                async move {
                    Ok(match decided?.await? {
                        Change::Keep(value) => Update::Keep(value),
                        Change::Save(record, value) => {
                            Update::Write(Self::write_of(&record, write), value)
                        }
                        Change::SaveAndPublish(record, event, value) => Update::WriteAndPublish(
                            Self::write_of(&record, write),
                            ratemesh_contract::streams::INCENTIVES,
                            event,
                            value,
                        ),
                    })
                }
            })
            .await
    }

    // ----- slots -----

    fn slots_of(stored: Option<StateRecord>) -> Result<BTreeMap<String, Slot>, StoreError> {
        match stored.and_then(|r| r.fields.get(FIELD_SLOTS).cloned()) {
            Some(bytes) => {
                decode_slots(&bytes).map_err(|e| StoreError::Corrupt(format!("{NS_SLOTS}: {e}")))
            }
            None => Ok(BTreeMap::new()),
        }
    }

    /// Read-modify-write of the slot table: `change` gets the held slots and returns the
    /// table to store (`None`: leave it) with the value to answer.
    async fn update_slots<T>(
        &self,
        mut change: impl FnMut(BTreeMap<String, Slot>) -> (Option<BTreeMap<String, Slot>>, T),
    ) -> Result<T, StoreError> {
        self.bus
            .update_state(NS_SLOTS, SLOTS_KEY, |stored, write| {
                let step = Self::slots_of(stored).map(|map| match change(map) {
                    (None, value) => Update::Keep(value),
                    (Some(map), value) => {
                        Update::Write(write.set(FIELD_SLOTS, encode_slots(&map)), value)
                    }
                });
                std::future::ready(step)
            })
            .await
    }

    /// Every held slot.
    pub async fn slots(&self) -> Result<BTreeMap<String, Slot>, StoreError> {
        Self::slots_of(self.bus.get_state(NS_SLOTS, SLOTS_KEY).await?)
    }

    /// Incentives holding a slot, per category and in total (what [`ratemesh_core::select`]
    /// counts against).
    pub async fn active_counts(&self) -> Result<ActiveCounts, StoreError> {
        Ok(counts(&self.slots().await?))
    }

    /// Reserves a slot for `sku` unless its category or the program is full. A SKU that
    /// already holds one keeps it (whoever reserved it, at most one incentive opens on it).
    pub async fn reserve(
        &self,
        sku: &Sku,
        category: &str,
        policy: &Policy,
        now: DateTime<Utc>,
    ) -> Result<Result<(), LossReason>, StoreError> {
        self.update_slots(|mut map| {
            if map.contains_key(sku.as_str()) {
                return (None, Ok(()));
            }
            let c = counts(&map);
            if c.program >= policy.max_concurrent_incentives {
                return (
                    None,
                    Err(LossReason::ProgramFull {
                        limit: policy.max_concurrent_incentives,
                        already_open: c.program,
                        selected_ahead: 0,
                    }),
                );
            }
            let limit = policy.category(category).flash.max_concurrent;
            let in_category = c.per_category.get(category).copied().unwrap_or(0);
            if in_category >= limit {
                return (
                    None,
                    Err(LossReason::CategoryFull {
                        category: category.to_owned(),
                        limit,
                        already_open: in_category,
                        selected_ahead: 0,
                    }),
                );
            }
            map.insert(
                sku.to_string(),
                Slot {
                    category: category.to_owned(),
                    reserved_at: now,
                },
            );
            (Some(map), Ok(()))
        })
        .await
    }

    /// Frees the slot of `sku`, if it holds one.
    pub async fn release(&self, sku: &Sku) -> Result<(), StoreError> {
        self.update_slots(|mut map| match map.remove(sku.as_str()) {
            Some(_) => (Some(map), ()),
            None => (None, ()),
        })
        .await
    }

    // ----- waiting candidates -----

    /// Records that `candidates` qualified at `now` but found no free slot, in one step
    /// per partition; answers, per candidate, whether it started waiting now (it was not
    /// waiting already).
    pub async fn wait(
        &self,
        candidates: &[&Candidate],
        now: DateTime<Utc>,
    ) -> Result<Vec<bool>, StoreError> {
        let mut writes = Vec::with_capacity(candidates.len());
        for candidate in candidates {
            let waiting = Waiting {
                category: candidate.category.clone(),
                cover: candidate.cover,
                since: now,
            };
            let json = serde_json::to_vec(&waiting)
                .map_err(|e| StoreError::Corrupt(format!("encoding waiting candidate: {e}")))?;
            let write =
                StateWrite::new(NS_WAITING, candidate.sku.as_str()).set(FIELD_CANDIDATE, json);
            writes.push((write, None));
        }
        let mut started = Vec::with_capacity(candidates.len());
        for written in self.bus.write_states(writes).await {
            // Version 1: the record was just created.
            started.push(written?.0 == 1);
        }
        Ok(started)
    }

    /// Stops `sku` waiting for a slot (it opened, or no longer qualifies).
    pub async fn stop_waiting(&self, sku: &Sku) -> Result<(), StoreError> {
        self.bus
            .delete_state(NS_WAITING, sku.as_str(), Expect::Any)
            .await?;
        Ok(())
    }

    /// Every SKU waiting for a slot.
    pub async fn waiting(&self) -> Result<BTreeMap<String, Waiting>, StoreError> {
        let mut out = BTreeMap::new();
        let mut page: Option<String> = None;
        loop {
            let p = self
                .bus
                .scan_states(NS_WAITING, page.as_deref(), 500)
                .await?;
            for (key, rec) in p.items {
                if let Some(b) = rec.fields.get(FIELD_CANDIDATE) {
                    let w = serde_json::from_slice(b)
                        .map_err(|e| StoreError::Corrupt(format!("{NS_WAITING}/{key}: {e}")))?;
                    out.insert(key, w);
                }
            }
            match p.next {
                Some(next) => page = Some(next),
                None => return Ok(out),
            }
        }
    }

    // ----- listing projection -----

    /// Records `incentive` in the listing unless what is there is newer: an ended
    /// incentive is final; while active, a later end or more units sold is newer.
    pub async fn project(&self, incentive: &v1::Incentive) -> Result<(), StoreError> {
        self.bus
            .update_state(NS_LOG, &incentive.id, |current, write| async move {
                let stored = current
                    .as_ref()
                    .and_then(|r| r.fields.get(FIELD_INCENTIVE))
                    .and_then(|b| v1::Incentive::decode(b.clone()).ok());
                Ok::<_, StoreError>(match stored {
                    Some(stored) if !is_newer(incentive, &stored) => Update::Keep(()),
                    _ => Update::Write(
                        write.set(FIELD_INCENTIVE, Bytes::from(incentive.encode_to_vec())),
                        (),
                    ),
                })
            })
            .await
    }

    /// One incentive from the listing.
    pub async fn logged(&self, id: &str) -> Result<Option<v1::Incentive>, StoreError> {
        let Some(rec) = self.bus.get_state(NS_LOG, id).await? else {
            return Ok(None);
        };
        rec.fields
            .get(FIELD_INCENTIVE)
            .map(|b| {
                v1::Incentive::decode(b.clone())
                    .map_err(|e| StoreError::Corrupt(format!("{NS_LOG}/{id}: {e}")))
            })
            .transpose()
    }

    /// Every incentive in the listing.
    pub async fn all_logged(&self) -> Result<Vec<v1::Incentive>, StoreError> {
        let mut out = Vec::new();
        let mut page: Option<String> = None;
        loop {
            let p = self.bus.scan_states(NS_LOG, page.as_deref(), 500).await?;
            for (key, rec) in p.items {
                if let Some(b) = rec.fields.get(FIELD_INCENTIVE) {
                    out.push(
                        v1::Incentive::decode(b.clone())
                            .map_err(|e| StoreError::Corrupt(format!("{NS_LOG}/{key}: {e}")))?,
                    );
                }
            }
            match p.next {
                Some(next) => page = Some(next),
                None => return Ok(out),
            }
        }
    }

    // ----- timers -----

    /// Makes `sku`'s expiry due at `at` (moving any earlier one).
    pub async fn schedule_expiry(&self, sku: &Sku, at: DateTime<Utc>) -> Result<(), StoreError> {
        Ok(self
            .bus
            .schedule(TIMERS, sku.as_str(), system_time(at))
            .await?)
    }

    /// Drops `sku`'s expiry timer.
    pub async fn cancel_expiry(&self, sku: &Sku) -> Result<(), StoreError> {
        self.bus.cancel(TIMERS, sku.as_str()).await?;
        Ok(())
    }

    /// Claims expiries due at `now`.
    pub async fn claim_due(&self, now: DateTime<Utc>) -> Result<Vec<String>, StoreError> {
        Ok(self
            .bus
            .claim_due(TIMERS, system_time(now), 256)
            .await?
            .into_iter()
            .map(|t| t.member)
            .collect())
    }
}

/// Format byte of the binary slot table (a table written by an earlier release is JSON,
/// which starts with `{`). The table is read by every batch with candidates and on every
/// open and close, so it is kept cheap to decode.
const SLOTS_FORMAT: u8 = 0x01;

/// The slot table on the wire.
#[derive(Clone, PartialEq, prost::Message)]
struct SlotTable {
    #[prost(message, repeated, tag = "1")]
    slots: Vec<SlotEntry>,
}

/// One held slot on the wire.
#[derive(Clone, PartialEq, prost::Message)]
struct SlotEntry {
    #[prost(string, tag = "1")]
    sku: String,
    #[prost(string, tag = "2")]
    category: String,
    #[prost(message, optional, tag = "3")]
    reserved_at: Option<Timestamp>,
}

fn encode_slots(map: &BTreeMap<String, Slot>) -> Vec<u8> {
    let table = SlotTable {
        slots: map
            .iter()
            .map(|(sku, slot)| SlotEntry {
                sku: sku.clone(),
                category: slot.category.clone(),
                reserved_at: Some(timestamp(slot.reserved_at)),
            })
            .collect(),
    };
    let mut out = Vec::with_capacity(1 + table.encoded_len());
    out.push(SLOTS_FORMAT);
    table.encode(&mut out).unwrap_or_default();
    out
}

fn decode_slots(bytes: &[u8]) -> Result<BTreeMap<String, Slot>, String> {
    match bytes.split_first() {
        Some((&SLOTS_FORMAT, rest)) => {
            let table = SlotTable::decode(rest).map_err(|e| e.to_string())?;
            table
                .slots
                .into_iter()
                .enumerate()
                .map(|(i, entry)| {
                    let reserved_at =
                        required_time(entry.reserved_at, &format!("slots[{i}].reserved_at"))?;
                    let slot = Slot {
                        category: entry.category,
                        reserved_at,
                    };
                    Ok((entry.sku, slot))
                })
                .collect()
        }
        _ => serde_json::from_slice(bytes).map_err(|e| e.to_string()),
    }
}

fn counts(map: &BTreeMap<String, Slot>) -> ActiveCounts {
    let mut c = ActiveCounts::default();
    for slot in map.values() {
        *c.per_category.entry(slot.category.clone()).or_default() += 1;
        c.program += 1;
    }
    c
}

fn is_newer(new: &v1::Incentive, stored: &v1::Incentive) -> bool {
    let ended = v1::IncentiveState::Ended as i32;
    if stored.state == ended {
        return false;
    }
    if new.state == ended {
        return true;
    }
    let units = |i: &v1::Incentive| i.units_sold.parse::<rust_decimal::Decimal>().ok();
    millis(new.ends_at.as_ref()) >= millis(stored.ends_at.as_ref()) && units(new) >= units(stored)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn table() -> BTreeMap<String, Slot> {
        let at = |s: i64, n: u32| DateTime::from_timestamp(s, n).unwrap();
        BTreeMap::from([
            (
                "SKU-1".to_owned(),
                Slot {
                    category: "home".to_owned(),
                    reserved_at: at(1_795_000_000, 123_456_789),
                },
            ),
            (
                "SKU-2".to_owned(),
                Slot {
                    category: "toys".to_owned(),
                    reserved_at: at(1_795_000_100, 0),
                },
            ),
        ])
    }

    #[test]
    fn the_slot_table_round_trips_and_earlier_json_is_still_read() {
        let map = table();
        let bytes = encode_slots(&map);
        assert_eq!(bytes[0], SLOTS_FORMAT);
        assert_eq!(decode_slots(&bytes).unwrap(), map);
        assert!(bytes.len() < serde_json::to_vec(&map).unwrap().len() / 2);
        let json = serde_json::to_vec(&map).unwrap();
        assert_eq!(decode_slots(&json).unwrap(), map);
        assert_eq!(
            decode_slots(&encode_slots(&BTreeMap::new())).unwrap(),
            BTreeMap::new()
        );
    }

    #[test]
    fn a_damaged_slot_table_names_what_is_wrong() {
        let bad = [SLOTS_FORMAT, 0x0a, 0x02, 0x0a, 0x00];
        let err = decode_slots(&bad).unwrap_err();
        assert!(err.contains("slots[0].reserved_at"), "{err}");
        assert!(decode_slots(&[SLOTS_FORMAT, 0xff]).is_err());
        assert!(decode_slots(b"not json").is_err());
    }
}
