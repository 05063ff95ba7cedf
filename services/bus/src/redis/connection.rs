//! Connections to Redis: one server through a reconnecting manager with backoff, or a
//! cluster through a client that follows `MOVED`/`ASK` redirections and refreshes its slot
//! map; and the connected signal.

use std::sync::{Arc, Weak};
use std::time::Duration;

use redis::aio::{ConnectionLike, ConnectionManager, ConnectionManagerConfig};
use redis::cluster::{ClusterClient, ClusterClientBuilder, ClusterConfig};
use redis::cluster_async::ClusterConnection;
use redis::{Cmd, Pipeline, RedisFuture, Value};
use tokio::sync::watch;

use crate::error::BusError;
use crate::options::RedisTls;

/// Longest a non-blocking command may take before it counts as a lost connection.
/// Generous because `appendfsync always` makes every write wait for a disk flush.
const RESPONSE_TIMEOUT: Duration = Duration::from_secs(3);
const CONNECT_TIMEOUT: Duration = Duration::from_secs(1);
const PROBE_EVERY_UP: Duration = Duration::from_millis(500);
const PROBE_EVERY_DOWN: Duration = Duration::from_millis(100);

/// Times a cluster request is retried after a redirection, a failover or a lost
/// connection before it fails with the last error.
const CLUSTER_RETRIES: u32 = 8;
/// Bounds of the pause before a cluster retry (ms). The pause grows from the lower bound,
/// so a request that meets a failover keeps asking while a replica is promoted.
const CLUSTER_RETRY_WAIT_MS: (u64, u64) = (20, 1_000);

/// Where the bus connects: one server, or a cluster known by its seed nodes.
#[derive(Clone)]
pub(crate) enum Target {
    Single(redis::Client),
    Cluster(ClusterClient),
}

impl Target {
    /// One server at `urls[0]`, or, with `cluster`, a cluster seeded by every URL; `tls`
    /// adds a CA or client certificate to `rediss://` URLs.
    pub(crate) fn open(
        urls: &[String],
        cluster: bool,
        tls: Option<&RedisTls>,
    ) -> Result<Self, BusError> {
        let invalid =
            |e: redis::RedisError| BusError::InvalidInput(format!("redis url is invalid: {e}"));
        if urls.iter().any(|u| u.starts_with("rediss://")) {
            // The redis client builds its TLS config with the process's default provider;
            // name it, rather than rely on exactly one provider being compiled in. An
            // already installed one (the same, by another caller) is fine.
            let _ = rustls::crypto::ring::default_provider().install_default();
        }
        match (urls, cluster) {
            ([], _) => Err(BusError::InvalidInput("no redis url given".to_owned())),
            ([url], false) => Ok(Target::Single(match tls {
                None => redis::Client::open(url.as_str()).map_err(invalid)?,
                Some(tls) => redis::Client::build_with_tls(url.as_str(), tls.certificates())
                    .map_err(|e| {
                        BusError::InvalidInput(format!("redis TLS settings are invalid: {e}"))
                    })?,
            })),
            (_, false) => Err(BusError::InvalidInput(
                "several redis urls are only accepted in cluster mode".to_owned(),
            )),
            (urls, true) => {
                let mut builder = ClusterClientBuilder::new(urls.iter().map(String::as_str));
                if let Some(tls) = tls {
                    builder = builder.certs(tls.certificates());
                }
                let client = builder
                    .retries(CLUSTER_RETRIES)
                    .min_retry_wait(CLUSTER_RETRY_WAIT_MS.0)
                    .max_retry_wait(CLUSTER_RETRY_WAIT_MS.1)
                    .retry_wait_formula(CLUSTER_RETRY_WAIT_MS.0, 2)
                    .build()
                    .map_err(invalid)?;
                Ok(Target::Cluster(client))
            }
        }
    }

    /// A new connection. `block` is the longest blocking command that will be sent on it;
    /// its response timeout is extended by that much. It connects in the background: an
    /// unreachable server shows up as errors of the commands sent meanwhile.
    pub(crate) fn connect(&self, block: Option<Duration>) -> Result<Conn, BusError> {
        let response_timeout = RESPONSE_TIMEOUT + block.unwrap_or_default();
        match self {
            Target::Single(client) => {
                let config = ConnectionManagerConfig::new()
                    .set_min_delay(Duration::from_millis(20))
                    .set_max_delay(Duration::from_secs(1))
                    .set_exponent_base(2.0)
                    .set_number_of_retries(6)
                    .set_connection_timeout(Some(CONNECT_TIMEOUT))
                    .set_response_timeout(Some(response_timeout));
                ConnectionManager::new_lazy_with_config(client.clone(), config)
                    .map(Conn::Single)
                    .map_err(|e| {
                        BusError::InvalidInput(format!("redis connection config is invalid: {e}"))
                    })
            }
            Target::Cluster(client) => {
                let config = ClusterConfig::new()
                    .set_connection_timeout(CONNECT_TIMEOUT)
                    .set_response_timeout(response_timeout);
                Ok(Conn::Cluster(
                    client.get_pending_async_connection_with_config(config),
                ))
            }
        }
    }

    pub(crate) fn is_cluster(&self) -> bool {
        matches!(self, Target::Cluster(_))
    }
}

/// A multiplexed connection to one server or to a cluster. Every command and pipeline
/// sent on a cluster connection names keys of one slot; the client sends it to the node
/// that serves the slot.
#[derive(Clone)]
pub(crate) enum Conn {
    Single(ConnectionManager),
    Cluster(ClusterConnection),
}

impl ConnectionLike for Conn {
    fn req_packed_command<'a>(&'a mut self, cmd: &'a Cmd) -> RedisFuture<'a, Value> {
        match self {
            Conn::Single(c) => c.req_packed_command(cmd),
            Conn::Cluster(c) => c.req_packed_command(cmd),
        }
    }

    fn req_packed_commands<'a>(
        &'a mut self,
        pipeline: &'a Pipeline,
        offset: usize,
        count: usize,
    ) -> RedisFuture<'a, Vec<Value>> {
        match self {
            Conn::Single(c) => c.req_packed_commands(pipeline, offset, count),
            Conn::Cluster(c) => c.req_packed_commands(pipeline, offset, count),
        }
    }

    fn get_db(&self) -> i64 {
        match self {
            Conn::Single(c) => c.get_db(),
            Conn::Cluster(c) => c.get_db(),
        }
    }
}

/// The connected/disconnected signal. A background task pings Redis (every 500 ms while
/// up, every 100 ms while down, which also drives the manager's reconnects); operations
/// that hit a connectivity error flip it to down at once.
#[derive(Clone)]
pub(crate) struct Health {
    tx: Arc<watch::Sender<bool>>,
    conn: Conn,
    /// The probe task stops when this is dropped with the backend.
    _alive: Arc<()>,
}

impl Health {
    pub(crate) fn spawn(conn: Conn) -> Self {
        let (tx, _) = watch::channel(false);
        let tx = Arc::new(tx);
        let alive = Arc::new(());
        let weak: Weak<()> = Arc::downgrade(&alive);
        let task_tx = tx.clone();
        let mut task_conn = conn.clone();
        tokio::spawn(async move {
            while weak.strong_count() > 0 {
                let up = ping(&mut task_conn).await;
                set(&task_tx, up);
                let pause = if up { PROBE_EVERY_UP } else { PROBE_EVERY_DOWN };
                tokio::time::sleep(pause).await;
            }
        });
        Health {
            tx,
            conn,
            _alive: alive,
        }
    }

    /// Probes once now, so a freshly built bus reports its true state.
    pub(crate) async fn probe_once(&self) {
        let mut conn = self.conn.clone();
        set(&self.tx, ping(&mut conn).await);
    }

    pub(crate) fn subscribe(&self) -> watch::Receiver<bool> {
        self.tx.subscribe()
    }

    pub(crate) fn mark_down(&self) {
        set(&self.tx, false);
    }
}

fn set(tx: &watch::Sender<bool>, up: bool) {
    tx.send_if_modified(|v| {
        let changed = *v != up;
        *v = up;
        changed
    });
}

async fn ping(conn: &mut Conn) -> bool {
    let cmd = redis::cmd("PING");
    let probe = cmd.query_async::<String>(conn);
    matches!(
        tokio::time::timeout(RESPONSE_TIMEOUT, probe).await,
        Ok(Ok(ref pong)) if pong == "PONG"
    )
}
