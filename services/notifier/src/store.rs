//! Reading and writing the notifier's records in bus state (see [`crate::model`]).

use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use ratemesh_bus::{Bus, BusError, BusResult, StateWrite, Update};
use tokio::sync::RwLock;

use crate::model::{
    DEAD_DELIVERIES, DELIVERIES, DELIVERY_HOURS, DELIVERY_INDEX, DeliveryRecord, OPEN_DELIVERIES,
    PARTNERS, PartnerRecord, RECORD, Status,
};

fn decode<T: serde::de::DeserializeOwned>(what: &str, key: &str, bytes: &[u8]) -> BusResult<T> {
    serde_json::from_slice(bytes)
        .map_err(|e| BusError::Backend(format!("stored {what} {key:?} is unreadable: {e}")))
}

fn encode<T: serde::Serialize>(value: &T) -> Vec<u8> {
    // Plain structs of strings and numbers always serialise.
    serde_json::to_vec(value).unwrap_or_default()
}

/// A write to a partner's open deliveries (read only by the partner's id).
fn open_set(partner_id: &str) -> StateWrite {
    StateWrite::new(OPEN_DELIVERIES, partner_id.to_owned()).unlisted()
}

/// A write to a partner's dead deliveries (read only by the partner's id).
fn dead_set(partner_id: &str) -> StateWrite {
    StateWrite::new(DEAD_DELIVERIES, partner_id.to_owned()).unlisted()
}

/// A partner's delivery index is split by the hour its deliveries were created in: one
/// record per hour, and a record of the hours it has. A listing reads the newest hours
/// until its page is full and retention drops whole hours, so no read or write handles
/// more than an hour of a partner's deliveries, however many the retention keeps.
const INDEX_HOUR_MS: u64 = 3_600_000;

/// The hour a delivery was created in: the time part of its id (a ULID; 0 for an id
/// that is not one, which no listing reaches).
fn hour_of(id: &str) -> u64 {
    ulid::Ulid::from_string(id).map_or(0, |u| u.timestamp_ms() / INDEX_HOUR_MS)
}

/// A write to the index of a partner's deliveries created in `hour`.
fn index_of_hour(partner_id: &str, hour: u64) -> StateWrite {
    StateWrite::new(DELIVERY_INDEX, index_key(partner_id, hour)).unlisted()
}

fn index_key(partner_id: &str, hour: u64) -> String {
    format!("{partner_id}/{hour}")
}

/// A write to the hours a partner's index has.
fn hours_of(partner_id: &str) -> StateWrite {
    StateWrite::new(DELIVERY_HOURS, partner_id.to_owned()).unlisted()
}

/// How many hours a listing reads in one round trip at most: it starts with one and
/// doubles, so a first page reads the newest hour alone.
const MOST_HOURS_PER_READ: usize = 32;

/// Milliseconds since the Unix epoch.
pub(crate) fn now_ms() -> i64 {
    ms_of(SystemTime::now())
}

pub(crate) fn ms_of(t: SystemTime) -> i64 {
    t.duration_since(SystemTime::UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0)
}

pub(crate) fn time_of(ms: i64) -> SystemTime {
    SystemTime::UNIX_EPOCH + Duration::from_millis(ms.max(0) as u64)
}

/// The in-memory partner list and when it was loaded.
type Snapshot = Option<(Instant, Arc<Vec<PartnerRecord>>)>;

/// Partners in bus state, with an in-memory copy for the fan-out hot path.
#[derive(Debug, Clone)]
pub(crate) struct Partners {
    bus: Bus,
    refresh: Duration,
    cache: Arc<RwLock<Snapshot>>,
    /// Bumped by every local write: a load that started before a write must not be cached,
    /// or a partner registered here could miss events for a refresh interval.
    generation: Arc<std::sync::atomic::AtomicU64>,
}

impl Partners {
    pub(crate) fn new(bus: Bus, refresh: Duration) -> Self {
        Self {
            bus,
            refresh,
            cache: Arc::new(RwLock::new(None)),
            generation: Arc::new(std::sync::atomic::AtomicU64::new(0)),
        }
    }

    /// One partner with its version, read from the bus.
    pub(crate) async fn get(&self, id: &str) -> BusResult<Option<(u64, PartnerRecord)>> {
        let Some(record) = self.bus.get_state(PARTNERS, id).await? else {
            return Ok(None);
        };
        match record.fields.get(RECORD) {
            Some(bytes) => Ok(Some((record.version, decode("partner", id, bytes)?))),
            None => Ok(None),
        }
    }

    /// Read-modify-write of partner `id` through [`Bus::update_state`]: `change` gets the
    /// stored partner (`None`: there is none) and returns the record to store, or `None`
    /// to leave it, with the value to answer. Asked again when another writer got in
    /// first. A write drops the in-memory copy.
    pub(crate) async fn update<T, E, F>(&self, id: &str, mut change: F) -> Result<T, E>
    where
        E: From<BusError>,
        F: FnMut(Option<PartnerRecord>) -> Result<(Option<PartnerRecord>, T), E>,
    {
        let (written, value) = self
            .bus
            .update_state(PARTNERS, id, |record, write| {
                let decided = record
                    .and_then(|r| r.fields.get(RECORD).cloned())
                    .map(|bytes| decode::<PartnerRecord>("partner", id, &bytes))
                    .transpose()
                    .map_err(E::from)
                    .and_then(&mut change)
                    .map(|(next, value)| match next {
                        Some(partner) => {
                            Update::Write(write.set(RECORD, encode(&partner)), (true, value))
                        }
                        None => Update::Keep((false, value)),
                    });
                std::future::ready(decided)
            })
            .await?;
        if written {
            let mut cache = self.cache.write().await;
            self.generation
                .fetch_add(1, std::sync::atomic::Ordering::SeqCst);
            *cache = None;
        }
        Ok(value)
    }

    /// Every partner, ordered by id, straight from the bus.
    pub(crate) async fn load_all(&self) -> BusResult<Vec<PartnerRecord>> {
        let mut partners = Vec::new();
        let mut page: Option<String> = None;
        loop {
            let result = self.bus.scan_states(PARTNERS, page.as_deref(), 500).await?;
            for (key, record) in result.items {
                if let Some(bytes) = record.fields.get(RECORD) {
                    partners.push(decode::<PartnerRecord>("partner", &key, bytes)?);
                }
            }
            match result.next {
                Some(next) => page = Some(next),
                None => break,
            }
        }
        partners.sort_by(|a, b| a.id.cmp(&b.id));
        Ok(partners)
    }

    /// Every partner, from memory when the copy is fresher than the refresh interval
    /// (a change on another replica shows up within that interval).
    pub(crate) async fn cached(&self) -> BusResult<Arc<Vec<PartnerRecord>>> {
        if let Some((at, partners)) = self.cache.read().await.as_ref()
            && at.elapsed() < self.refresh
        {
            return Ok(partners.clone());
        }
        let started = self.generation.load(std::sync::atomic::Ordering::SeqCst);
        let partners = Arc::new(self.load_all().await?);
        let mut cache = self.cache.write().await;
        if self.generation.load(std::sync::atomic::Ordering::SeqCst) == started {
            *cache = Some((Instant::now(), partners.clone()));
        }
        Ok(partners)
    }
}

/// Deliveries, each partner's index of them and its dead deliveries.
#[derive(Debug, Clone)]
pub(crate) struct Deliveries {
    bus: Bus,
}

impl Deliveries {
    pub(crate) fn new(bus: Bus) -> Self {
        Self { bus }
    }

    pub(crate) async fn get(&self, id: &str) -> BusResult<Option<DeliveryRecord>> {
        let Some(record) = self.bus.get_state(DELIVERIES, id).await? else {
            return Ok(None);
        };
        match record.fields.get(RECORD) {
            Some(bytes) => Ok(Some(decode("delivery", id, bytes)?)),
            None => Ok(None),
        }
    }

    /// The deliveries stored under `ids`, in order (`None` for an id with none), in one
    /// round trip per partition.
    pub(crate) async fn get_many(&self, ids: &[String]) -> BusResult<Vec<Option<DeliveryRecord>>> {
        let records = self.bus.get_states(DELIVERIES, ids).await?;
        (ids.iter().zip(records))
            .map(
                |(id, record)| match record.as_ref().and_then(|r| r.fields.get(RECORD)) {
                    Some(bytes) => decode("delivery", id, bytes).map(Some),
                    None => Ok(None),
                },
            )
            .collect()
    }

    /// Stores a new delivery; false when one with its id exists already (a retried
    /// creation), in which case nothing is changed.
    pub(crate) async fn create(&self, delivery: &DeliveryRecord) -> BusResult<bool> {
        self.open(delivery).await?;
        // Read by id only (lists go through the partner's index): no scan index entry.
        let write = StateWrite::new(DELIVERIES, delivery.id.clone())
            .unlisted()
            .expect_version(0)
            .set(RECORD, encode(delivery));
        match self.bus.write_state(write).await {
            Ok(_) => {}
            Err(BusError::Conflict { .. }) => return Ok(false),
            Err(e) => return Err(e),
        }
        self.index(delivery, true).await?;
        Ok(true)
    }

    /// Stores a changed delivery and its status in the partner's index.
    pub(crate) async fn update(&self, delivery: &DeliveryRecord) -> BusResult<()> {
        self.bus
            .write_state(
                (StateWrite::new(DELIVERIES, delivery.id.clone()).unlisted())
                    .set(RECORD, encode(delivery)),
            )
            .await?;
        self.index(delivery, false).await
    }

    /// Dead deliveries of one partner requeued, in three round trips however many there
    /// are: among its open ones first, then stored as `deliveries` (open again) with their
    /// status in its index, and only then out of its dead ones. A stop between the writes
    /// leaves open entries that recovery drops, or dead entries whose record says
    /// otherwise, which listing and redelivery both skip; never a dead delivery that is
    /// not among the dead ones.
    pub(crate) async fn requeue(
        &self,
        partner_id: &str,
        deliveries: &[DeliveryRecord],
    ) -> BusResult<()> {
        if deliveries.is_empty() {
            return Ok(());
        }
        let ids = || deliveries.iter().map(|d| d.id.clone());
        let open = ids().fold(open_set(partner_id), |set, id| set.set(id, Vec::new()));
        self.bus.write_state(open).await?;
        let mut writes: Vec<_> = (deliveries.iter())
            .map(|d| {
                let record = StateWrite::new(DELIVERIES, d.id.clone()).unlisted();
                (record.set(RECORD, encode(d)), None)
            })
            .collect();
        let mut by_hour = std::collections::BTreeMap::<u64, Vec<&DeliveryRecord>>::new();
        for d in deliveries {
            by_hour.entry(hour_of(&d.id)).or_default().push(d);
        }
        writes.extend(by_hour.into_iter().map(|(hour, ds)| {
            let index = ds
                .into_iter()
                .fold(index_of_hour(partner_id, hour), |index, d| {
                    index.set(d.id.clone(), d.status.as_str().as_bytes().to_vec())
                });
            (index, None)
        }));
        for written in self.bus.write_states(writes).await {
            written?;
        }
        self.forget_dead(partner_id, ids().collect()).await
    }

    /// Puts a delivery among its partner's open ones, before it is stored as open: a
    /// process that stops between the two leaves an entry that recovery drops, never an
    /// open delivery that recovery misses.
    async fn open(&self, delivery: &DeliveryRecord) -> BusResult<()> {
        let open = open_set(&delivery.partner_id).set(delivery.id.clone(), Vec::new());
        self.bus.write_state(open).await.map(|_| ())
    }

    /// The ids of a partner's open deliveries.
    pub(crate) async fn open_ids(&self, partner_id: &str) -> BusResult<Vec<String>> {
        let record = self.bus.get_state(OPEN_DELIVERIES, partner_id).await?;
        Ok(record.map_or_else(Vec::new, |r| r.fields.into_keys().collect()))
    }

    /// Takes `ids` out of a partner's open deliveries.
    pub(crate) async fn forget_open(&self, partner_id: &str, ids: Vec<String>) -> BusResult<()> {
        self.forget(open_set(partner_id), ids).await
    }

    /// Takes `ids` out of the set `set` writes to.
    async fn forget(&self, set: StateWrite, ids: Vec<String>) -> BusResult<()> {
        if ids.is_empty() {
            return Ok(());
        }
        let write = ids.into_iter().fold(set, StateWrite::remove);
        self.bus.write_state(write).await.map(|_| ())
    }

    /// The delivery's status in its partner's index (with the hour it is indexed under,
    /// for a delivery `created` or recovered), out of the partner's open deliveries once
    /// it is delivered or dead, and among its dead ones once dead (one round trip).
    pub(crate) async fn index(&self, delivery: &DeliveryRecord, created: bool) -> BusResult<()> {
        let hour = hour_of(&delivery.id);
        let status = index_of_hour(&delivery.partner_id, hour).set(
            delivery.id.clone(),
            delivery.status.as_str().as_bytes().to_vec(),
        );
        let mut writes = vec![(status, None)];
        if created {
            let hours = hours_of(&delivery.partner_id).set(hour.to_string(), Vec::new());
            writes.push((hours, None));
        }
        if !delivery.status.is_open() {
            let closed = open_set(&delivery.partner_id).remove(delivery.id.clone());
            writes.push((closed, None));
        }
        if delivery.status == Status::Dead {
            let dead = dead_set(&delivery.partner_id).set(delivery.id.clone(), Vec::new());
            writes.push((dead, None));
        }
        for written in self.bus.write_states(writes).await {
            written?;
        }
        Ok(())
    }

    /// The ids of a partner's dead deliveries, newest first.
    pub(crate) async fn dead_ids(&self, partner_id: &str) -> BusResult<Vec<String>> {
        let Some(record) = self.bus.get_state(DEAD_DELIVERIES, partner_id).await? else {
            return Ok(Vec::new());
        };
        let mut ids: Vec<String> = record.fields.into_keys().collect();
        ids.sort_by(|a, b| b.cmp(a));
        Ok(ids)
    }

    /// Takes `ids` out of a partner's dead deliveries.
    pub(crate) async fn forget_dead(&self, partner_id: &str, ids: Vec<String>) -> BusResult<()> {
        self.forget(dead_set(partner_id), ids).await
    }

    /// How many dead deliveries a partner has, without reading them.
    pub(crate) async fn dead_count(&self, partner_id: &str) -> BusResult<u64> {
        self.bus
            .count_state_fields(DEAD_DELIVERIES, partner_id)
            .await
    }

    /// A partner's deliveries with their status, newest first (ids are ULIDs), from just
    /// before `before` if given: read an hour or a few at a time by [`IndexWalk::next`].
    pub(crate) async fn walk(
        &self,
        partner_id: &str,
        before: Option<&str>,
    ) -> BusResult<IndexWalk> {
        let mut hours = self.hours(partner_id).await?;
        if let Some(before) = before {
            let last = hour_of(before);
            hours.retain(|h| *h <= last);
        }
        Ok(IndexWalk {
            deliveries: self.clone(),
            partner_id: partner_id.to_owned(),
            hours,
            before: before.map(str::to_owned),
            width: 1,
        })
    }

    /// The hours a partner's index has, oldest first.
    async fn hours(&self, partner_id: &str) -> BusResult<Vec<u64>> {
        let Some(record) = self.bus.get_state(DELIVERY_HOURS, partner_id).await? else {
            return Ok(Vec::new());
        };
        let mut hours: Vec<u64> = record
            .fields
            .keys()
            .filter_map(|h| h.parse().ok())
            .collect();
        hours.sort_unstable();
        Ok(hours)
    }

    /// Drops a partner's delivered and dead deliveries that last changed before
    /// `cutoff_ms` (by `last_change`), from the hours that ended before it, oldest first;
    /// an hour left empty goes from the index. How many deliveries were dropped.
    pub(crate) async fn prune(
        &self,
        partner_id: &str,
        cutoff_ms: i64,
        last_change: impl Fn(&DeliveryRecord) -> i64,
    ) -> BusResult<usize> {
        let mut dropped = 0;
        for hour in self.hours(partner_id).await? {
            let ended_ms = i64::try_from((hour + 1) * INDEX_HOUR_MS).unwrap_or(i64::MAX);
            if ended_ms > cutoff_ms {
                break;
            }
            let key = index_key(partner_id, hour);
            let entries = self.bus.get_state(DELIVERY_INDEX, &key).await?;
            for (id, status) in entries.iter().flat_map(|r| r.fields.iter()) {
                if Status::parse(status).is_some_and(Status::is_open) {
                    continue;
                }
                match self.get(id).await? {
                    Some(d) if !d.status.is_open() && last_change(&d) < cutoff_ms => {
                        self.remove(&d).await?;
                        dropped += 1;
                    }
                    Some(_) => {}
                    // Its record went first (an earlier sweep cut short).
                    None => {
                        let orphan = index_of_hour(partner_id, hour).remove(id.clone());
                        self.bus.write_state(orphan).await?;
                        self.forget_dead(partner_id, vec![id.clone()]).await?;
                    }
                }
            }
            if self.bus.count_state_fields(DELIVERY_INDEX, &key).await? == 0 {
                self.bus
                    .delete_state(DELIVERY_INDEX, &key, ratemesh_bus::Expect::Any)
                    .await?;
                let emptied = hours_of(partner_id).remove(hour.to_string());
                self.bus.write_state(emptied).await?;
            }
        }
        Ok(dropped)
    }

    /// Removes a delivery and its index entry (retention).
    pub(crate) async fn remove(&self, delivery: &DeliveryRecord) -> BusResult<()> {
        let index =
            index_of_hour(&delivery.partner_id, hour_of(&delivery.id)).remove(delivery.id.clone());
        let mut writes = vec![(index, None)];
        if delivery.status == Status::Dead {
            writes.push((
                dead_set(&delivery.partner_id).remove(delivery.id.clone()),
                None,
            ));
        }
        for written in self.bus.write_states(writes).await {
            written?;
        }
        self.bus
            .delete_state(DELIVERIES, &delivery.id, ratemesh_bus::Expect::Any)
            .await
            .map(|_| ())
    }
}

/// A partner's deliveries, newest first, an hour or a few at a time.
pub(crate) struct IndexWalk {
    deliveries: Deliveries,
    partner_id: String,
    /// The hours still to read, newest last.
    hours: Vec<u64>,
    before: Option<String>,
    /// How many hours the next read takes.
    width: usize,
}

impl IndexWalk {
    /// The next deliveries with their status, newest first; `None` once every hour is
    /// read.
    pub(crate) async fn next(&mut self) -> BusResult<Option<Vec<(String, Status)>>> {
        while !self.hours.is_empty() {
            let from = self.hours.len().saturating_sub(self.width);
            let keys: Vec<String> = (self.hours.drain(from..).rev())
                .map(|hour| index_key(&self.partner_id, hour))
                .collect();
            self.width = (self.width * 2).min(MOST_HOURS_PER_READ);
            let records = self
                .deliveries
                .bus
                .get_states(DELIVERY_INDEX, &keys)
                .await?;
            let mut ids: Vec<(String, Status)> = (records.into_iter().flatten())
                .flat_map(|record| record.fields)
                .filter(|(id, _)| self.before.as_ref().is_none_or(|b| id < b))
                .filter_map(|(id, status)| Some((id, Status::parse(&status)?)))
                .collect();
            if !ids.is_empty() {
                ids.sort_by(|a, b| b.0.cmp(&a.0));
                return Ok(Some(ids));
            }
        }
        Ok(None)
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use crate::scheduling::deterministic_id;
    use ratemesh_bus::BusOptions;

    const HOUR: i64 = INDEX_HOUR_MS as i64;
    /// Some hour's start, in ms since the Unix epoch.
    pub(crate) const T0: i64 = 1_764_000_000 / 3_600 * HOUR;

    /// Delivery `n` of `partner`, created at `at_ms`.
    pub(crate) fn delivery(partner: &str, at_ms: i64, n: u32, status: Status) -> DeliveryRecord {
        DeliveryRecord {
            id: deterministic_id(at_ms, &[partner, &n.to_string()]),
            partner_id: partner.into(),
            event_id: format!("e{n}"),
            event_type: "rate.changed".into(),
            status,
            attempts: 1,
            last_error: String::new(),
            last_response_code: 200,
            next_attempt_at_ms: None,
            created_at_ms: at_ms,
            round_started_at_ms: at_ms,
            delivered_at_ms: (status == Status::Delivered).then_some(at_ms + 1),
            skus: vec![],
            traceparent: None,
            body: "{}".into(),
        }
    }

    async fn walked(walk: &mut IndexWalk) -> Vec<Vec<String>> {
        let mut reads = Vec::new();
        while let Some(entries) = walk.next().await.expect("read") {
            reads.push(entries.into_iter().map(|(id, _)| id).collect());
        }
        reads
    }

    fn ids(deliveries: &[&DeliveryRecord]) -> Vec<String> {
        deliveries.iter().map(|d| d.id.clone()).collect()
    }

    #[tokio::test]
    async fn a_partners_deliveries_list_newest_first_an_hour_then_a_few_at_a_time() {
        let bus = Bus::memory(BusOptions::embedded()).expect("bus");
        let deliveries = Deliveries::new(bus.clone());
        let at = |hours: i64, minutes: i64| T0 + hours * HOUR + minutes * 60_000;
        let d = [
            delivery("p", at(0, 5), 0, Status::Delivered),
            delivery("p", at(0, 30), 1, Status::Delivered),
            delivery("p", at(1, 10), 2, Status::Dead),
            delivery("p", at(3, 0), 3, Status::Delivered),
            delivery("p", at(3, 59), 4, Status::Pending),
            delivery("p", at(50, 1), 5, Status::Retrying),
            delivery("q", at(3, 1), 6, Status::Delivered),
        ];
        for delivery in &d {
            assert!(deliveries.create(delivery).await.expect("create"));
        }
        // Hour 50 alone, then two hours (3, 1), then the last (0).
        let mut walk = deliveries.walk("p", None).await.expect("walk");
        assert_eq!(
            walked(&mut walk).await,
            [
                ids(&[&d[5]]),
                ids(&[&d[4], &d[3], &d[2]]),
                ids(&[&d[1], &d[0]])
            ]
        );
        // From a page token: what is older than it, its own hour first.
        let mut walk = deliveries.walk("p", Some(&d[4].id)).await.expect("walk");
        assert_eq!(
            walked(&mut walk).await,
            [ids(&[&d[3]]), ids(&[&d[2], &d[1], &d[0]])]
        );
        let status: Vec<Status> = {
            let mut walk = deliveries.walk("p", None).await.expect("walk");
            let mut all = Vec::new();
            while let Some(entries) = walk.next().await.expect("read") {
                all.extend(entries.into_iter().map(|(_, s)| s));
            }
            all
        };
        use Status::*;
        assert_eq!(
            status,
            [Retrying, Pending, Delivered, Dead, Delivered, Delivered]
        );
        let mut none = deliveries.walk("nobody", None).await.expect("walk");
        assert_eq!(none.next().await.expect("read"), None);
        // Each hour is a record of its own, and the partner's hours another.
        assert_eq!(
            bus.count_state_fields(DELIVERY_HOURS, "p")
                .await
                .expect("n"),
            4
        );
        let hour_3 = index_key("p", hour_of(&d[3].id));
        assert_eq!(
            bus.count_state_fields(DELIVERY_INDEX, &hour_3)
                .await
                .expect("n"),
            2
        );
        assert_eq!(
            deliveries.dead_ids("p").await.expect("dead"),
            [d[2].id.clone()]
        );
        // Deliveries are read by id alone: nothing lists them in a scan.
        let scanned = bus.scan_states(DELIVERIES, None, 100).await.expect("scan");
        assert!(scanned.items.is_empty());
        assert!(deliveries.get(&d[0].id).await.expect("get").is_some());
    }

    #[tokio::test]
    async fn a_delivery_is_among_the_open_ones_from_before_it_is_stored_until_it_closes() {
        let bus = Bus::memory(BusOptions::embedded()).expect("bus");
        let deliveries = Deliveries::new(bus.clone());
        let mut d = delivery("p", T0, 0, Status::Pending);
        let other = delivery("p", T0, 1, Status::Pending);
        deliveries.create(&d).await.expect("create");
        deliveries.create(&other).await.expect("create");
        let mut open = deliveries.open_ids("p").await.expect("open");
        open.sort();
        let mut both = ids(&[&d, &other]);
        both.sort();
        assert_eq!(open, both);
        d.status = Status::Retrying;
        deliveries.update(&d).await.expect("update");
        assert_eq!(deliveries.open_ids("p").await.expect("open").len(), 2);
        d.status = Status::Dead;
        deliveries.update(&d).await.expect("update");
        assert_eq!(
            deliveries.open_ids("p").await.expect("open"),
            ids(&[&other])
        );
        assert_eq!(deliveries.dead_ids("p").await.expect("dead"), ids(&[&d]));
        d.status = Status::Pending;
        deliveries
            .requeue("p", std::slice::from_ref(&d))
            .await
            .expect("requeue");
        assert_eq!(deliveries.open_ids("p").await.expect("open").len(), 2);
        assert_eq!(deliveries.dead_count("p").await.expect("dead"), 0);
        let mut delivered = other.clone();
        delivered.status = Status::Delivered;
        deliveries.update(&delivered).await.expect("update");
        assert_eq!(deliveries.open_ids("p").await.expect("open"), ids(&[&d]));
        // A retried creation of a delivery already closed: it changes nothing stored, and
        // the open entry it leaves names a delivery that is not open.
        assert!(!deliveries.create(&other).await.expect("create"));
        assert_eq!(
            deliveries.get(&other.id).await.expect("get"),
            Some(delivered)
        );
    }

    #[tokio::test]
    async fn dead_deliveries_of_several_hours_are_read_and_requeued_together() {
        let bus = Bus::memory(BusOptions::embedded()).expect("bus");
        let deliveries = Deliveries::new(bus.clone());
        let mut dead: Vec<DeliveryRecord> = (0..6)
            .map(|n| delivery("p", T0 + i64::from(n / 3) * HOUR, n, Status::Dead))
            .collect();
        for d in &dead {
            deliveries.create(d).await.expect("create");
        }
        let kept = delivery("p", T0, 9, Status::Dead);
        deliveries.create(&kept).await.expect("create");
        assert_eq!(deliveries.dead_count("p").await.expect("dead"), 7);

        let mut wanted = ids(&dead.iter().collect::<Vec<_>>());
        wanted.insert(2, "01ARZ3NDEKTSV4RRFFQ69G5FAV".into());
        let read = deliveries.get_many(&wanted).await.expect("read");
        assert_eq!(read.len(), 7);
        assert_eq!(read[2], None, "an id with no delivery");
        let found: Vec<DeliveryRecord> = read.into_iter().flatten().collect();
        assert_eq!(found, dead, "in the order asked");

        for d in &mut dead {
            d.status = Status::Pending;
        }
        deliveries.requeue("p", &dead).await.expect("requeue");
        assert_eq!(deliveries.dead_ids("p").await.expect("dead"), ids(&[&kept]));
        assert_eq!(deliveries.open_ids("p").await.expect("open").len(), 6);
        let stored = deliveries.get_many(&wanted).await.expect("read");
        assert_eq!(stored.into_iter().flatten().collect::<Vec<_>>(), dead);
        // Both hours' index entries say so.
        let mut walk = deliveries.walk("p", None).await.expect("walk");
        let mut pending = 0;
        while let Some(entries) = walk.next().await.expect("read") {
            pending += entries
                .iter()
                .filter(|(_, s)| *s == Status::Pending)
                .count();
        }
        assert_eq!(pending, 6);
    }

    #[tokio::test]
    async fn retention_drops_the_old_closed_deliveries_hour_by_hour() {
        let bus = Bus::memory(BusOptions::embedded()).expect("bus");
        let deliveries = Deliveries::new(bus.clone());
        let at = |hours: i64| T0 + hours * HOUR + 60_000;
        let old_delivered = delivery("p", at(0), 0, Status::Delivered);
        let old_dead = delivery("p", at(0), 1, Status::Dead);
        let old_open = delivery("p", at(1), 2, Status::Retrying);
        // Created long ago, but redelivered since: it changed after the cutoff.
        let mut redelivered = delivery("p", at(1), 3, Status::Delivered);
        redelivered.delivered_at_ms = Some(at(20));
        let recent = delivery("p", at(10), 4, Status::Delivered);
        for delivery in [&old_delivered, &old_dead, &old_open, &redelivered, &recent] {
            deliveries.create(delivery).await.expect("create");
        }
        let last_change = |d: &DeliveryRecord| d.delivered_at_ms.unwrap_or(d.created_at_ms);
        // Hour 10 ends after the cutoff: it is not read.
        let cutoff = at(10) + 30 * 60_000;
        let dropped = (deliveries.prune("p", cutoff, last_change))
            .await
            .expect("prune");
        assert_eq!(dropped, 2);
        for gone in [&old_delivered, &old_dead] {
            assert_eq!(deliveries.get(&gone.id).await.expect("get"), None);
        }
        for kept in [&old_open, &redelivered, &recent] {
            assert!(deliveries.get(&kept.id).await.expect("get").is_some());
        }
        assert_eq!(deliveries.dead_count("p").await.expect("dead"), 0);
        let mut walk = deliveries.walk("p", None).await.expect("walk");
        assert_eq!(
            walked(&mut walk).await,
            [ids(&[&recent]), ids(&[&redelivered, &old_open])]
        );
        // Hour 0 emptied: gone from the hours, its record deleted.
        assert_eq!(deliveries.hours("p").await.expect("hours").len(), 2);
        let hour_0 = index_key("p", hour_of(&old_dead.id));
        assert_eq!(
            bus.get_state(DELIVERY_INDEX, &hour_0).await.expect("read"),
            None
        );
        // An entry whose record is gone (a removal cut short) is dropped from the index
        // and from the dead deliveries.
        deliveries
            .update(&DeliveryRecord {
                status: Status::Dead,
                ..old_open.clone()
            })
            .await
            .expect("index");
        bus.delete_state(DELIVERIES, &old_open.id, ratemesh_bus::Expect::Any)
            .await
            .expect("delete");
        assert_eq!(
            (deliveries.prune("p", cutoff, last_change))
                .await
                .expect("prune"),
            0
        );
        let mut walk = deliveries.walk("p", None).await.expect("walk");
        assert_eq!(
            walked(&mut walk).await,
            [ids(&[&recent]), ids(&[&redelivered])]
        );
        assert_eq!(deliveries.dead_count("p").await.expect("dead"), 0);
    }
}
