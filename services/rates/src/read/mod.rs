//! The read path: an in-memory replica of the rate table and the `RateService` on it.
//!
//! Every rates process keeps the whole table in memory, loaded from a snapshot of the
//! `rate` states and kept current by tailing the `rates` stream; it reports NOT_SERVING
//! until loaded. `GetRate`, `BatchGetRates`, `ListRates` and `WatchRates` answer from
//! memory and have no handle on the backend, so they never wait on Redis and keep
//! answering while it is down. Only `ExplainRate` and `GetRate.as_of` instants the
//! replica's recent versions cannot settle read the backend (the durable rate history).
//!
//! Layout:
//! - [`replica`] — the sharded table of encoded cards, change positions, recent
//!   versions and the change broadcast; [`Replica`] writes, [`ReplicaReader`] reads.
//! - [`wire`] — cards' fields read from their bytes; responses around encoded cards.
//! - [`loader`] — snapshot + tail, the holder of the bus on the read path.
//! - [`snapshot`] — the compact snapshot a cold replica loads, and its writer.
//! - [`point`] — `GetRate`, `BatchGetRates`, `ListRates`, answered as encoded bytes.
//! - [`server`] — the gRPC server sending those bytes as they are.
//! - [`watch`] — `WatchRates`.
//! - [`explain`] — `ExplainRate`.
//! - [`history`] — `GetRate.as_of` from the durable rate history.
//! - [`page_token`], [`error`] — listing tokens; errors and their gRPC status.
//! - [`service`] — the `RateService` trait implementation.
//!
//! Cursors are the bus's per-partition cursor tokens ([`ratemesh_bus::Cursor`]), the same
//! for `ListRates` and `WatchRates`; they never expire because every card keeps the
//! position of its last change.

pub mod error;
pub mod explain;
pub mod history;
pub mod loader;
pub mod page_token;
pub mod point;
pub mod replica;
pub mod server;
pub mod service;
pub mod snapshot;
pub mod watch;
pub mod wire;

use std::time::Duration;

use crate::RatesSettings;
use ratemesh_runtime::{Context, Readiness};

pub use explain::{Explainer, InputsDecoder};
pub use replica::{Clock, Replica, ReplicaOptions, ReplicaReader, system_clock};
pub use server::RatesServer;
pub use service::RatesApi;

/// The rate table's record layout and the kind of the `rates` entries the replica applies
/// (the contract's; the engine writes them).
pub use ratemesh_contract::kinds::RATE_CHANGED as RATE_CHANGED_KIND;
pub use ratemesh_contract::rate::{
    FIELD_CARD as CARD_FIELD, FIELD_ENGINE as ENGINE_FIELD, NAMESPACE as STATE_NAMESPACE,
};

/// Replica options from the `[rates]` settings and the bus's partition count.
pub fn replica_options(settings: &RatesSettings, partitions: u32) -> ReplicaOptions {
    ReplicaOptions {
        partitions,
        history_retention: chrono::Duration::days(i64::from(settings.history_retention_days)),
        watch_buffer: settings.watch_buffer,
    }
}

/// The read path's parts, for `build` to put into the service module.
pub struct ReadPath {
    /// The gRPC service.
    pub server: RatesServer,
    /// The same service, for calling directly (tests).
    pub api: RatesApi,
    /// Loads and follows the replica; marks `readiness` ready once loaded.
    pub task: std::pin::Pin<Box<dyn Future<Output = anyhow::Result<()>> + Send>>,
    /// Keeps the snapshot fresh while this replica holds its lease.
    pub snapshot_task: std::pin::Pin<Box<dyn Future<Output = anyhow::Result<()>> + Send>>,
    /// The replica's read view (for tests and metrics).
    pub reader: ReplicaReader,
}

impl std::fmt::Debug for ReadPath {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ReadPath")
            .field("reader", &self.reader)
            .finish_non_exhaustive()
    }
}

impl ReadPath {
    /// Builds the replica, its loader and the service from `ctx`, with the system clock.
    pub fn new(ctx: &Context, readiness: Readiness, decode_inputs: InputsDecoder) -> Self {
        Self::with_clock(ctx, readiness, decode_inputs, system_clock())
    }

    /// As [`ReadPath::new`] with an injected clock (for `as_of` tests).
    pub fn with_clock(
        ctx: &Context,
        readiness: Readiness,
        decode_inputs: InputsDecoder,
        clock: Clock,
    ) -> Self {
        let settings = &ctx.settings().section::<RatesSettings>();
        let mut options = replica_options(settings, ctx.bus().partitions());
        // The loader applies a whole tail read before watchers run again, so the ring must
        // hold at least one read's worth or even a fast watcher would be ended.
        let burst = ctx.bus().options().batch_size * ctx.bus().partitions() as usize;
        options.watch_buffer = options.watch_buffer.max(burst);
        let retention = options.history_retention;
        let replica = Replica::new(options, clock);
        let reader = replica.reader();
        let api = RatesApi::new(
            reader.clone(),
            Explainer::new(ctx.bus().clone(), decode_inputs),
            history::RateHistory::new(ctx.bus().clone(), retention),
            ctx.bus().clone(),
            Duration::from_millis(settings.watch_heartbeat_ms),
            ctx.shutdown().clone(),
        );
        let interval = Duration::from_millis(settings.snapshot_interval_ms);
        let writer = snapshot::Writer::new(
            ctx.bus().clone(),
            replica.clone(),
            format!(
                "{}-{}",
                ratemesh_runtime::consumer::consumer_name(&settings.consumer_name, "rates"),
                ulid::Ulid::generate()
            ),
            interval * 3,
        );
        let snapshot_task = Box::pin(snapshot::run(writer, interval, ctx.shutdown().clone()));
        let task = Box::pin(loader::run(
            ctx.bus().clone(),
            replica,
            readiness,
            ctx.shutdown().clone(),
        ));
        Self {
            server: RatesServer::new(api.clone()),
            api,
            task,
            snapshot_task,
            reader,
        }
    }
}
