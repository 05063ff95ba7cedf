//! Connections to Redis: reconnecting managers with backoff, and the connected signal.

use std::sync::{Arc, Weak};
use std::time::Duration;

use redis::aio::{ConnectionManager, ConnectionManagerConfig};
use tokio::sync::watch;

use crate::error::BusError;

/// Longest a non-blocking command may take before it counts as a lost connection.
/// Generous because `appendfsync always` makes every write wait for a disk flush.
const RESPONSE_TIMEOUT: Duration = Duration::from_secs(3);
const CONNECT_TIMEOUT: Duration = Duration::from_secs(1);
const PROBE_EVERY_UP: Duration = Duration::from_millis(500);
const PROBE_EVERY_DOWN: Duration = Duration::from_millis(100);

/// A reconnecting multiplexed connection. `block` is the longest blocking read that will
/// be sent on it; its response timeout is extended by that much.
pub(crate) fn manager(
    client: &redis::Client,
    block: Option<Duration>,
) -> Result<ConnectionManager, BusError> {
    let config = ConnectionManagerConfig::new()
        .set_min_delay(Duration::from_millis(20))
        .set_max_delay(Duration::from_secs(1))
        .set_exponent_base(2.0)
        .set_number_of_retries(6)
        .set_connection_timeout(Some(CONNECT_TIMEOUT))
        .set_response_timeout(Some(RESPONSE_TIMEOUT + block.unwrap_or_default()));
    ConnectionManager::new_lazy_with_config(client.clone(), config)
        .map_err(|e| BusError::InvalidInput(format!("redis connection config is invalid: {e}")))
}

/// The connected/disconnected signal. A background task pings Redis (every 500 ms while
/// up, every 100 ms while down, which also drives the manager's reconnects); operations
/// that hit a connectivity error flip it to down at once.
pub(crate) struct Health {
    tx: Arc<watch::Sender<bool>>,
    conn: ConnectionManager,
    /// The probe task stops when this is dropped with the backend.
    _alive: Arc<()>,
}

impl Health {
    pub(crate) fn spawn(conn: ConnectionManager) -> Self {
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

async fn ping(conn: &mut ConnectionManager) -> bool {
    let cmd = redis::cmd("PING");
    let probe = cmd.query_async::<String>(conn);
    matches!(
        tokio::time::timeout(RESPONSE_TIMEOUT, probe).await,
        Ok(Ok(ref pong)) if pong == "PONG"
    )
}
