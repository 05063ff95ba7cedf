//! The Redis backend: Redis Streams with consumer groups, Lua scripts for the atomic
//! multi-key steps, one multiplexed auto-reconnecting connection for everything that does
//! not block, and a dedicated connection per consumer or tail for blocking reads.
//!
//! On a Redis Cluster every command, pipeline and script names keys of one slot: a
//! partition's keys share a hash tag (see `keys.rs`), so work on several partitions goes
//! as one request per partition, sent concurrently. A blocking read can only wait on one
//! slot, so on a cluster consumers and tails read their partitions without blocking and
//! pause between empty reads (see [`IdlePoll`]).
//!
//! - `keys.rs` — key layout and hash tags
//! - `scripts.rs` — Lua scripts
//! - `reply.rs` — decoding replies
//! - `connection.rs` — connections, reconnect backoff, the connected signal
//! - `streams.rs` — publish, consumers, tails, trimming, stats, dead letters
//! - `state.rs` — versioned state, idempotency keys, timers

mod connection;
mod keys;
mod reply;
mod scripts;
mod state;
mod streams;

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use redis::cluster_routing::{Route, RoutingInfo, SingleNodeRoutingInfo, SlotAddr};
use redis::{Cmd, ErrorKind, FromRedisValue, RedisError, ServerErrorKind};
use tokio::sync::watch;

use crate::error::BusError;
use crate::options::BusOptions;

pub(crate) use connection::{Conn, Health, Target};
pub(crate) use keys::Keys;
pub(crate) use scripts::Scripts;
pub(crate) use streams::{RedisConsumer, RedisTail};

/// The Redis bus. Shared behind an `Arc` by every clone of the `Bus` handle.
pub(crate) struct RedisBackend {
    target: Target,
    conn: Conn,
    keys: Keys,
    scripts: Scripts,
    opts: BusOptions,
    health: Health,
    /// Set on a handle whose appends must reach replicas before they count as done.
    replica_acks: Option<ReplicaAcks>,
}

/// `WAIT` after each append: the append counts as done only once `replicas` replicas
/// confirmed it within `timeout`. Such a handle has its own connection, because `WAIT`
/// waits for the writes of the connection it is sent on and holds that connection
/// meanwhile.
#[derive(Debug, Clone, Copy)]
struct ReplicaAcks {
    replicas: u32,
    timeout: Duration,
}

/// Shortest and longest pause of a cluster consumer or tail between empty reads.
const IDLE_POLL: (Duration, Duration) = (Duration::from_millis(1), Duration::from_millis(20));

/// The pause before a cluster reader's next read: short while entries arrive, doubling
/// with every empty read up to [`IDLE_POLL`]'s upper bound, which is the most an idle
/// reader adds to an entry's delivery.
#[derive(Debug)]
pub(crate) struct IdlePoll(Duration);

impl IdlePoll {
    pub(crate) fn new() -> Self {
        IdlePoll(IDLE_POLL.0)
    }

    /// After a read: the pause to take (none when it found entries).
    pub(crate) fn after(&mut self, found: bool) -> Option<Duration> {
        if found {
            self.0 = IDLE_POLL.0;
            return None;
        }
        let pause = self.0;
        self.0 = (self.0 * 2).min(IDLE_POLL.1);
        Some(pause)
    }
}

impl RedisBackend {
    /// Connects lazily: an unreachable server is not an error here, it shows up in the
    /// connected signal and as [`BusError::Unavailable`] from operations until it is back.
    pub(crate) async fn connect(
        target: Target,
        prefix: &str,
        opts: BusOptions,
    ) -> Result<Self, BusError> {
        let conn = target.connect(None)?;
        let health = Health::spawn(conn.clone());
        health.probe_once().await;
        Ok(RedisBackend {
            target,
            conn,
            keys: Keys::new(prefix, opts.partitions),
            scripts: Scripts::new(),
            opts,
            health,
            replica_acks: None,
        })
    }

    /// The same bus on a connection of its own whose appends count as done only once
    /// `replicas` replicas confirmed them within `timeout`.
    pub(crate) fn with_replica_acks(
        &self,
        replicas: u32,
        timeout: Duration,
    ) -> Result<Self, BusError> {
        Ok(RedisBackend {
            target: self.target.clone(),
            conn: self.target.connect(Some(timeout))?,
            keys: self.keys.clone(),
            scripts: Scripts::new(),
            opts: self.opts.clone(),
            health: self.health.clone(),
            replica_acks: (replicas > 0).then_some(ReplicaAcks { replicas, timeout }),
        })
    }

    pub(crate) fn connected(&self) -> watch::Receiver<bool> {
        self.health.subscribe()
    }

    fn conn(&self) -> Conn {
        self.conn.clone()
    }

    fn is_cluster(&self) -> bool {
        self.target.is_cluster()
    }

    /// A connection of its own for a reader's blocking reads; none on a cluster, where
    /// readers do not block.
    fn blocking_conn(&self) -> Result<Option<Conn>, BusError> {
        if self.is_cluster() {
            return Ok(None);
        }
        self.target.connect(Some(self.opts.read_block)).map(Some)
    }

    /// Runs commands, each with the partition whose keys it names, and answers in their
    /// order: one pipeline on a single server; on a cluster one pipeline per partition (a
    /// partition's keys share a slot), sent concurrently.
    async fn query_by_partition<T: FromRedisValue + Send>(
        &self,
        cmds: Vec<(u32, Cmd)>,
    ) -> Result<Vec<T>, RedisError> {
        if !self.is_cluster() {
            let mut pipe = redis::pipe();
            for (_, cmd) in cmds {
                pipe.add_command(cmd);
            }
            return pipe.query_async(&mut self.conn()).await;
        }
        let n = cmds.len();
        let mut by_partition: BTreeMap<u32, (Vec<usize>, redis::Pipeline)> = BTreeMap::new();
        for (i, (p, cmd)) in cmds.into_iter().enumerate() {
            let (indices, pipe) = by_partition
                .entry(p)
                .or_insert_with(|| (Vec::new(), redis::pipe()));
            indices.push(i);
            pipe.add_command(cmd);
        }
        let calls = by_partition.into_values().map(|(indices, pipe)| {
            let mut conn = self.conn();
            async move {
                let replies: Vec<T> = pipe.query_async(&mut conn).await?;
                Ok::<_, RedisError>(indices.into_iter().zip(replies))
            }
        });
        let mut out: Vec<Option<T>> = (0..n).map(|_| None).collect();
        for answered in futures::future::try_join_all(calls).await? {
            for (i, reply) in answered {
                out[i] = Some(reply);
            }
        }
        out.into_iter()
            .map(|r| {
                r.ok_or_else(|| {
                    RedisError::from((ErrorKind::Client, "a pipeline answered too few replies"))
                })
            })
            .collect()
    }

    /// On a handle with replica acks: waits until the writes sent so far on its
    /// connection, those of partition `p` included, reached the replicas asked for.
    async fn confirm_replicated(&self, p: u32) -> Result<(), BusError> {
        let Some(acks) = self.replica_acks else {
            return Ok(());
        };
        let mut cmd = redis::cmd("WAIT");
        cmd.arg(acks.replicas).arg(
            u64::try_from(acks.timeout.as_millis())
                .unwrap_or(u64::MAX)
                .max(1),
        );
        let during = || format!("replica confirmation of partition {p}");
        let confirmed: i64 = match &self.conn {
            Conn::Single(c) => cmd.query_async(&mut c.clone()).await,
            Conn::Cluster(c) => {
                // The slot's primary: the node the partition's writes went to.
                let route = Route::with_key(self.keys.partition_tag(p), SlotAddr::Master);
                let routing = RoutingInfo::SingleNode(SingleNodeRoutingInfo::SpecificNode(route));
                c.clone()
                    .route_command(cmd, routing)
                    .await
                    .and_then(|v| i64::from_redis_value(v).map_err(RedisError::from))
            }
        }
        .map_err(|e| self.fail(e, during))?;
        if confirmed < i64::from(acks.replicas) {
            return Err(BusError::Unavailable(format!(
                "{} confirmed by {confirmed} of the {} replicas required within {} ms",
                during(),
                acks.replicas,
                acks.timeout.as_millis()
            )));
        }
        Ok(())
    }

    /// Maps a Redis error, flagging the connection as down when it is a connectivity one.
    fn fail(&self, e: RedisError, during: impl FnOnce() -> String) -> BusError {
        let err = map_error(e, during);
        if matches!(err, BusError::Unavailable(_)) {
            self.health.mark_down();
        }
        err
    }
}

/// `Unavailable` for anything a retry later may fix, `Backend` otherwise.
pub(crate) fn map_error(e: RedisError, during: impl FnOnce() -> String) -> BusError {
    let transient = e.is_io_error()
        || e.is_timeout()
        || e.is_connection_dropped()
        || e.is_connection_refusal()
        || e.is_unrecoverable_error()
        || matches!(
            e.kind(),
            ErrorKind::ClusterConnectionNotFound
                | ErrorKind::Server(
                    ServerErrorKind::BusyLoading
                        | ServerErrorKind::MasterDown
                        | ServerErrorKind::TryAgain
                        | ServerErrorKind::ClusterDown
                        | ServerErrorKind::ReadOnly
                        // Still redirected once the client's retries ran out: the slot
                        // is moving or its primary failing over.
                        | ServerErrorKind::Moved
                        | ServerErrorKind::Ask
                )
        );
    if transient {
        BusError::Unavailable(format!("redis unavailable during {}: {e}", during()))
    } else {
        BusError::Backend(format!("redis failed during {}: {e}", during()))
    }
}

/// Shared so consumers and tails can reach the backend after the `Bus` clone that made
/// them is gone.
pub(crate) type SharedRedis = Arc<RedisBackend>;
