//! Reading and writing the notifier's records in bus state (see [`crate::model`]).

use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use ratemesh_bus::{Bus, BusError, BusResult, StateWrite, Update};
use tokio::sync::RwLock;

use crate::model::{
    DEAD_DELIVERIES, DELIVERIES, DELIVERY_INDEX, DeliveryRecord, PARTNERS, PartnerRecord, RECORD,
    Status,
};

fn decode<T: serde::de::DeserializeOwned>(what: &str, key: &str, bytes: &[u8]) -> BusResult<T> {
    serde_json::from_slice(bytes)
        .map_err(|e| BusError::Backend(format!("stored {what} {key:?} is unreadable: {e}")))
}

fn encode<T: serde::Serialize>(value: &T) -> Vec<u8> {
    // Plain structs of strings and numbers always serialise.
    serde_json::to_vec(value).unwrap_or_default()
}

/// A write to a partner's dead deliveries (read only by the partner's id).
fn dead_set(partner_id: &str) -> StateWrite {
    StateWrite::new(DEAD_DELIVERIES, partner_id.to_owned()).unlisted()
}

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

    /// Stores a new delivery; false when one with its id exists already (a retried
    /// creation), in which case nothing is changed.
    pub(crate) async fn create(&self, delivery: &DeliveryRecord) -> BusResult<bool> {
        let write = StateWrite::new(DELIVERIES, delivery.id.clone())
            .expect_version(0)
            .set(RECORD, encode(delivery));
        match self.bus.write_state(write).await {
            Ok(_) => {}
            Err(BusError::Conflict { .. }) => return Ok(false),
            Err(e) => return Err(e),
        }
        self.index(delivery).await?;
        Ok(true)
    }

    /// Stores a changed delivery and its status in the partner's index.
    pub(crate) async fn update(&self, delivery: &DeliveryRecord) -> BusResult<()> {
        self.bus
            .write_state(
                StateWrite::new(DELIVERIES, delivery.id.clone()).set(RECORD, encode(delivery)),
            )
            .await?;
        self.index(delivery).await
    }

    /// A dead delivery requeued: stored as `delivery` (no longer dead), its status in the
    /// index, and out of the partner's dead deliveries.
    pub(crate) async fn requeue(&self, delivery: &DeliveryRecord) -> BusResult<()> {
        self.update(delivery).await?;
        self.forget_dead(&delivery.partner_id, vec![delivery.id.clone()])
            .await
    }

    /// The delivery's status in its partner's index and, once it is dead, in the
    /// partner's dead deliveries too (one round trip).
    pub(crate) async fn index(&self, delivery: &DeliveryRecord) -> BusResult<()> {
        let status = StateWrite::new(DELIVERY_INDEX, delivery.partner_id.clone()).set(
            delivery.id.clone(),
            delivery.status.as_str().as_bytes().to_vec(),
        );
        let mut writes = vec![(status, None)];
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
        if ids.is_empty() {
            return Ok(());
        }
        let write = ids
            .into_iter()
            .fold(dead_set(partner_id), StateWrite::remove);
        self.bus.write_state(write).await.map(|_| ())
    }

    /// How many dead deliveries a partner has, without reading them.
    pub(crate) async fn dead_count(&self, partner_id: &str) -> BusResult<u64> {
        self.bus
            .count_state_fields(DEAD_DELIVERIES, partner_id)
            .await
    }

    /// A partner's deliveries with their status, newest first (ids are ULIDs).
    pub(crate) async fn index_of(&self, partner_id: &str) -> BusResult<Vec<(String, Status)>> {
        let Some(record) = self.bus.get_state(DELIVERY_INDEX, partner_id).await? else {
            return Ok(Vec::new());
        };
        let mut ids: Vec<(String, Status)> = record
            .fields
            .iter()
            .filter_map(|(id, status)| Some((id.clone(), Status::parse(status)?)))
            .collect();
        ids.sort_by(|a, b| b.0.cmp(&a.0));
        Ok(ids)
    }

    /// Removes a delivery and its index entry (retention).
    pub(crate) async fn remove(&self, delivery: &DeliveryRecord) -> BusResult<()> {
        let index = StateWrite::new(DELIVERY_INDEX, delivery.partner_id.clone())
            .remove(delivery.id.clone());
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

    /// Every stored delivery, page by page, for recovery and retention sweeps.
    pub(crate) async fn scan(
        &self,
        page: Option<&str>,
    ) -> BusResult<(Vec<DeliveryRecord>, Option<String>)> {
        let result = self.bus.scan_states(DELIVERIES, page, 500).await?;
        let mut out = Vec::with_capacity(result.items.len());
        for (key, record) in result.items {
            if let Some(bytes) = record.fields.get(RECORD) {
                match decode::<DeliveryRecord>("delivery", &key, bytes) {
                    Ok(d) => out.push(d),
                    Err(e) => tracing::warn!(error = %e, "skipping unreadable delivery"),
                }
            }
        }
        Ok((out, result.next))
    }
}
