//! The Redis backend: Redis Streams with consumer groups, Lua scripts for the atomic
//! multi-key steps, one multiplexed auto-reconnecting connection for everything that does
//! not block, and a dedicated connection per consumer or tail for blocking reads.
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

use std::sync::Arc;

use redis::aio::ConnectionManager;
use redis::{ErrorKind, RedisError, ServerErrorKind};
use tokio::sync::watch;

use crate::error::BusError;
use crate::options::BusOptions;

pub(crate) use connection::Health;
pub(crate) use keys::Keys;
pub(crate) use scripts::Scripts;
pub(crate) use streams::{RedisConsumer, RedisTail};

/// The Redis bus. Shared behind an `Arc` by every clone of the `Bus` handle.
pub(crate) struct RedisBackend {
    client: redis::Client,
    conn: ConnectionManager,
    keys: Keys,
    scripts: Scripts,
    opts: BusOptions,
    health: Health,
}

impl RedisBackend {
    /// Connects lazily: an unreachable server is not an error here, it shows up in the
    /// connected signal and as [`BusError::Unavailable`] from operations until it is back.
    pub(crate) async fn connect(
        url: &str,
        prefix: &str,
        opts: BusOptions,
    ) -> Result<Self, BusError> {
        let client = redis::Client::open(url)
            .map_err(|e| BusError::InvalidInput(format!("redis url is invalid: {e}")))?;
        let conn = connection::manager(&client, None)?;
        let health = Health::spawn(conn.clone());
        health.probe_once().await;
        Ok(RedisBackend {
            client,
            conn,
            keys: Keys::new(prefix, opts.partitions),
            scripts: Scripts::new(),
            opts,
            health,
        })
    }

    pub(crate) fn connected(&self) -> watch::Receiver<bool> {
        self.health.subscribe()
    }

    fn conn(&self) -> ConnectionManager {
        self.conn.clone()
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
            ErrorKind::Server(
                ServerErrorKind::BusyLoading
                    | ServerErrorKind::MasterDown
                    | ServerErrorKind::TryAgain
                    | ServerErrorKind::ClusterDown
                    | ServerErrorKind::ReadOnly
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
