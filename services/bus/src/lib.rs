//! Streams and state for ratemesh.
//!
//! The four services coordinate only through this crate: partitioned event streams with
//! consumer groups (at-least-once, reclaim of abandoned entries, dead letters), versioned
//! per-key state with compare-and-set and an atomic "write state + append event",
//! batched reads ([`Bus::get_states`]) and writes ([`Bus::write_states`]: a batch's
//! records with their events, one atomic step per partition, each record under its own
//! version check) so a consumer's round trips do not grow with its batch, idempotency
//! keys, durable timers, and the stats autoscaling reads.
//!
//! Services hold one [`Bus`] handle, built on one Redis server ([`Bus::redis`]), on a
//! Redis Cluster ([`Bus::redis_cluster`]) or in process memory ([`Bus::memory`], `ratemesh
//! up` without Redis); all three have the same semantics and pass the same conformance
//! suite (`tests/conformance.rs`). [`Bus::with_replica_acks`] gives a handle whose appends
//! count as done only once Redis replicas confirmed them.
//!
//! ```no_run
//! use ratemesh_bus::{Bus, BusOptions, Event, StateWrite};
//! use tracing::Instrument;
//!
//! # async fn demo() -> Result<(), ratemesh_bus::BusError> {
//! let bus = Bus::memory(BusOptions::embedded())?; // or Bus::redis(url, "prod", opts).await?
//! bus.publish("stock", Event::new("SKU-1", b"...".to_vec())).await?;
//!
//! let consumer = bus.consumer("stock", "rates", "rates-host-1").await?;
//! let batch = consumer.next_batch().await?;
//! for d in &batch {
//!     async {
//!         // Commit the effect: new state and its rate-change event, atomically.
//!         let write = StateWrite::new("rate", d.key.clone()).set("card", d.payload.clone());
//!         bus.write_state_and_publish(write, "rates", Event::new(d.key.clone(), b"...".to_vec()))
//!             .await
//!     }
//!     .instrument(d.span()) // continues the producer's trace
//!     .await?;
//! }
//! consumer.ack(&batch).await?; // only after the effect is committed
//! # Ok(())
//! # }
//! ```
//!
//! Layout:
//! - [`bus`] — the [`Bus`] handle, [`Consumer`] and [`Tail`]
//! - [`entry`] — events, deliveries, entry ids, dead letters
//! - [`cursor`] — per-partition positions as opaque tokens
//! - [`cache`] — decoded records a partition's consumer wrote, to skip their next read
//! - [`state`] — state records and writes, idempotency, timers, stats, retention types
//! - [`partition`] — the stable key → partition hash (FNV-1a 64)
//! - [`trace_context`] — W3C `traceparent` helpers
//! - [`options`], [`error`]
//! - `memory/`, `redis/` — the two backends
//! - `testkit` (feature `testkit`) — a private `redis-server`, or a private six-node Redis
//!   Cluster, per test

pub mod bus;
pub mod cache;
mod clock;
pub mod cursor;
pub mod entry;
pub mod error;
pub mod lease;
mod memory;
mod names;
pub mod options;
pub mod partition;
mod redis;
pub mod state;
#[cfg(feature = "testkit")]
pub mod testkit;
pub mod trace_context;

pub use bus::{Bus, Consumer, Tail};
pub use cache::RecordCache;
pub use cursor::Cursor;
pub use entry::{Appended, DeadLetter, DeadLetterRef, Delivery, EntryId, Event, NackOutcome};
pub use error::{BusError, BusResult};
pub use options::{BusOptions, RedisTls};
pub use state::{
    CAS_ATTEMPTS, DueTimer, Expect, GroupInfo, HistoryEntry, HistoryLimits, HistoryLookup,
    Idempotency, Retention, Staged, StatePage, StateRecord, StateWrite, StreamStats, Update,
    Written,
};
