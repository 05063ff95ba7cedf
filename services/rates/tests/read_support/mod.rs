//! Shared by the read-path tests: a read path over a bus, and rate-card fixtures written
//! the way the engine writes them (state + `RateChanged`, atomically).

#![allow(dead_code, unreachable_pub)]

use ratemesh_rates::RatesSettings;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use chrono::{DateTime, Utc};
use futures::StreamExt;
use prost::Message;
use ratemesh_bus::{Bus, BusOptions, StateWrite};
use ratemesh_contract::time::from_timestamp;
use ratemesh_contract::{rate, streams};
use ratemesh_proto::v1;
use ratemesh_rates::read::{Clock, RatesApi, ReadPath, ReplicaReader};
use ratemesh_runtime::{Context, Readiness, Settings};
use tokio::task::JoinHandle;

/// A card as the engine publishes it.
pub fn card(
    sku: &str,
    category: &str,
    rate: &str,
    version: u64,
    at: DateTime<Utc>,
) -> v1::RateCard {
    v1::RateCard {
        sku: sku.into(),
        category: category.into(),
        effective_rate: rate.into(),
        parts: Some(v1::RateParts {
            base: rate.into(),
            inventory_adjustment: "0".into(),
            boost: "0".into(),
            incentive: "0".into(),
            override_adjustment: "0".into(),
            guardrail_adjustment: "0".into(),
        }),
        reasons: vec![v1::Reason {
            code: "BASE_RATE".into(),
            text: "base rate".into(),
        }],
        version,
        computed_at: Some(prost_types::Timestamp {
            seconds: at.timestamp(),
            nanos: 0,
        }),
        guaranteed_until: None,
        previous_rate: String::new(),
        band: "normal".into(),
        scheduled_change: None,
    }
}

/// Writes `card` as the engine does: state and stream entry atomically.
pub async fn publish(bus: &Bus, card: &v1::RateCard) {
    let write = StateWrite::new(rate::NAMESPACE, card.sku.clone())
        .set(rate::FIELD_CARD, card.encode_to_vec());
    let computed_at = card
        .computed_at
        .as_ref()
        .and_then(from_timestamp)
        .unwrap_or_else(Utc::now);
    bus.write_state_and_publish(
        write,
        streams::RATES,
        rate::rate_changed(card.clone(), computed_at),
    )
    .await
    .expect("publish card");
}

/// A settable clock.
#[derive(Clone)]
pub struct TestClock(Arc<Mutex<DateTime<Utc>>>);

impl TestClock {
    pub fn at(t: DateTime<Utc>) -> Self {
        Self(Arc::new(Mutex::new(t)))
    }
    pub fn set(&self, t: DateTime<Utc>) {
        *self.0.lock().expect("clock") = t;
    }
    pub fn clock(&self) -> Clock {
        let me = self.clone();
        Arc::new(move || *me.0.lock().expect("clock"))
    }
}

/// A running read path.
pub struct Reads {
    pub ctx: Context,
    pub api: RatesApi,
    pub reader: ReplicaReader,
    pub readiness: Readiness,
    task: Option<JoinHandle<anyhow::Result<()>>>,
    path_task: Option<std::pin::Pin<Box<dyn Future<Output = anyhow::Result<()>> + Send>>>,
    snapshot: Option<JoinHandle<anyhow::Result<()>>>,
    snapshot_task: Option<std::pin::Pin<Box<dyn Future<Output = anyhow::Result<()>> + Send>>>,
}

pub fn memory_bus() -> Bus {
    Bus::memory(BusOptions {
        read_block: Duration::from_millis(50),
        ..BusOptions::embedded()
    })
    .expect("memory bus")
}

/// Settings with short watch heartbeats and a small watch buffer.
pub fn settings() -> Settings {
    let mut s = Settings::default();
    s.section_mut::<RatesSettings>().watch_buffer = 16;
    s.section_mut::<RatesSettings>().watch_heartbeat_ms = 200;
    s
}

impl Reads {
    /// Builds (does not start) a read path over `bus`.
    pub fn build(bus: Bus, settings: Settings, clock: Clock) -> Self {
        let ctx = Context::new(settings, bus);
        let readiness = Readiness::new();
        let path = ReadPath::with_clock(&ctx, readiness.clone(), Arc::new(|_| Ok(None)), clock);
        let ReadPath {
            api,
            reader,
            task,
            snapshot_task,
            ..
        } = path;
        Reads {
            ctx,
            api,
            reader,
            readiness,
            task: None,
            path_task: Some(task),
            snapshot: None,
            snapshot_task: Some(snapshot_task),
        }
    }

    /// Starts the loader and waits until loaded.
    pub async fn start(mut self) -> Self {
        let task = self.path_task.take().expect("not started");
        self.task = Some(tokio::spawn(task));
        if let Some(snapshot) = self.snapshot_task.take() {
            self.snapshot = Some(tokio::spawn(snapshot));
        }
        wait_for("replica loaded", || self.readiness.get()).await;
        self
    }

    pub fn bus(&self) -> &Bus {
        self.ctx.bus()
    }

    /// Waits until the replica serves `sku` at `version`.
    pub async fn wait_version(&self, sku: &str, version: u64) {
        wait_for(&format!("{sku} v{version}"), || {
            self.reader.get(sku).is_some_and(|c| c.version >= version)
        })
        .await;
    }

    pub async fn stop(mut self) {
        self.ctx.shutdown().cancel();
        if let Some(task) = self.task.take() {
            task.await.expect("loader task").expect("loader ok");
        }
        if let Some(task) = self.snapshot.take() {
            task.await.expect("snapshot task").expect("snapshot ok");
        }
    }
}

/// Polls `cond` until true, failing after 10 s.
pub async fn wait_for(what: &str, cond: impl FnMut() -> bool) {
    ratemesh_testkit::wait_for(what, Duration::from_secs(10), cond).await;
}

/// The next item of a watch stream, failing after 10 s.
pub async fn next_update<S>(stream: &mut S) -> Option<Result<v1::RateUpdate, tonic::Status>>
where
    S: futures::Stream<Item = Result<v1::RateUpdate, tonic::Status>> + Unpin,
{
    tokio::time::timeout(Duration::from_secs(10), stream.next())
        .await
        .expect("watch stream stalled")
}

/// The next update that carries a card (skipping heartbeats).
pub async fn next_card<S>(stream: &mut S) -> v1::RateUpdate
where
    S: futures::Stream<Item = Result<v1::RateUpdate, tonic::Status>> + Unpin,
{
    loop {
        let update = next_update(stream)
            .await
            .expect("stream open")
            .expect("an update");
        if update.card.is_some() {
            return update;
        }
    }
}
