//! The webhook listener: HTTP/1.1 connections with the limits that keep a slow or hostile
//! client from holding what the ERP needs (DESIGN §7, "slow or oversized requests are cut
//! off before they hold resources that honest clients need").
//!
//! - A request's headers must arrive within `header_read_timeout`; a client that stops
//!   mid-headers loses its connection (hyper's header timer).
//! - A kept-alive connection idle for `keep_alive_timeout` is closed.
//! - At most `max_connections` connections are open, and at most `max_connections_per_peer`
//!   from one address; a connection beyond either is closed as it is accepted.
//!
//! With TLS (`server.tls_*` and `server.http_tls`), each admitted connection's handshake
//! runs in its own task under [`crate::tls::HANDSHAKE_TIMEOUT`], counted against the same
//! limits.
//!
//! Bodies are the handlers' business: the ingest webhook refuses unsigned requests before
//! reading a body and reads the rest under its own deadline.

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::net::{TcpListener, TcpStream};
use tokio::task::JoinSet;
use tokio::time::Instant;
use tokio_rustls::TlsAcceptor;
use tokio_util::sync::CancellationToken;
use tower::ServiceExt as _;

/// Limits on the webhook listener's connections (`server.http_*`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ConnectionLimits {
    /// Deadline for a request's line and headers.
    pub header_read_timeout: Duration,
    /// An idle kept-alive connection is closed after this long.
    pub keep_alive_timeout: Duration,
    /// Connections open at once.
    pub max_connections: usize,
    /// Connections open at once from one peer address.
    pub max_connections_per_peer: usize,
}

/// Serves `router` on `listener` (over TLS with `tls`) until `stop` is cancelled, then lets
/// open connections finish their current request and returns once they are closed.
pub async fn serve(
    listener: TcpListener,
    router: axum::Router,
    limits: ConnectionLimits,
    tls: Option<TlsAcceptor>,
    stop: CancellationToken,
) -> std::io::Result<()> {
    let table = ConnectionTable::new(limits);
    let mut connections = JoinSet::new();
    loop {
        let (stream, peer) = tokio::select! {
            _ = stop.cancelled() => break,
            Some(_) = connections.join_next(), if !connections.is_empty() => continue,
            accepted = listener.accept() => match accepted {
                Ok(accepted) => accepted,
                Err(err) => {
                    // Out of file descriptors and similar: back off instead of spinning.
                    tracing::warn!(error = %err, "webhook listener could not accept");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
        };
        let Some(slot) = table.admit(peer) else {
            drop(stream);
            continue;
        };
        let (router, stop) = (router.clone(), stop.clone());
        match tls.clone() {
            None => connections.spawn(serve_connection(stream, router, limits, slot, stop)),
            Some(tls) => connections.spawn(async move {
                let _ = stream.set_nodelay(true);
                let handshake =
                    tokio::time::timeout(crate::tls::HANDSHAKE_TIMEOUT, tls.accept(stream));
                match handshake.await {
                    Ok(Ok(stream)) => serve_connection(stream, router, limits, slot, stop).await,
                    Ok(Err(err)) => tracing::debug!(%peer, error = %err, "TLS handshake failed"),
                    Err(_) => tracing::debug!(%peer, "TLS handshake timed out"),
                }
            }),
        };
    }
    drop(listener);
    while connections.join_next().await.is_some() {}
    Ok(())
}

async fn serve_connection<S>(
    stream: S,
    router: axum::Router,
    limits: ConnectionLimits,
    _slot: Slot,
    stop: CancellationToken,
) where
    S: NoDelay + tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
{
    stream.no_delay();
    let activity = Arc::new(Activity::new());
    let service = {
        let activity = activity.clone();
        hyper::service::service_fn(move |request: http::Request<hyper::body::Incoming>| {
            let busy = activity.begin();
            let router = router.clone();
            async move {
                let response = router.oneshot(request).await;
                drop(busy);
                response
            }
        })
    };
    let connection = hyper::server::conn::http1::Builder::new()
        .timer(TokioTimer::new())
        .header_read_timeout(limits.header_read_timeout)
        .serve_connection(TokioIo::new(stream), service);
    tokio::pin!(connection);
    let mut closing = false;
    loop {
        tokio::select! {
            result = connection.as_mut() => {
                if let Err(err) = result {
                    tracing::debug!(error = %err, "webhook connection ended");
                }
                return;
            }
            _ = stop.cancelled(), if !closing => {
                connection.as_mut().graceful_shutdown();
                closing = true;
            }
            _ = activity.idle_for(limits.keep_alive_timeout), if !closing => {
                metrics::counter!("ratemesh_http_connections_closed_total", "reason" => "idle")
                    .increment(1);
                connection.as_mut().graceful_shutdown();
                closing = true;
            }
        }
    }
}

/// Sets `TCP_NODELAY` on a connection's socket, under whatever wraps it.
trait NoDelay {
    fn no_delay(&self);
}

impl NoDelay for TcpStream {
    fn no_delay(&self) {
        let _ = self.set_nodelay(true);
    }
}

impl NoDelay for tokio_rustls::server::TlsStream<TcpStream> {
    fn no_delay(&self) {
        let _ = self.get_ref().0.set_nodelay(true);
    }
}

/// Whether a connection is serving a request, and since when it has not been.
struct Activity {
    state: Mutex<(usize, Instant)>,
}

/// A request in progress on a connection; dropping it marks the connection idle again.
struct Busy(Arc<Activity>);

impl Drop for Busy {
    fn drop(&mut self) {
        let mut state = self.0.lock();
        state.0 = state.0.saturating_sub(1);
        state.1 = Instant::now();
    }
}

impl Activity {
    fn new() -> Self {
        Self {
            state: Mutex::new((0, Instant::now())),
        }
    }

    fn begin(self: &Arc<Self>) -> Busy {
        self.lock().0 += 1;
        Busy(self.clone())
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, (usize, Instant)> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Resolves once the connection has served no request for `timeout`.
    async fn idle_for(&self, timeout: Duration) {
        loop {
            let (busy, since) = *self.lock();
            let due = since + timeout;
            if busy == 0 && Instant::now() >= due {
                return;
            }
            tokio::time::sleep_until(if busy == 0 {
                due
            } else {
                Instant::now() + timeout
            })
            .await;
        }
    }
}

/// Open connections, in total and per peer address.
#[derive(Clone)]
struct ConnectionTable {
    limits: ConnectionLimits,
    open: Arc<Mutex<(usize, HashMap<IpAddr, usize>)>>,
}

/// One admitted connection; closing it frees its place.
struct Slot {
    table: ConnectionTable,
    peer: IpAddr,
}

impl Drop for Slot {
    fn drop(&mut self) {
        let mut open = self.table.lock();
        open.0 = open.0.saturating_sub(1);
        if let Some(count) = open.1.get_mut(&self.peer) {
            *count = count.saturating_sub(1);
            if *count == 0 {
                open.1.remove(&self.peer);
            }
        }
    }
}

impl ConnectionTable {
    fn new(limits: ConnectionLimits) -> Self {
        Self {
            limits,
            open: Arc::new(Mutex::new((0, HashMap::new()))),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, (usize, HashMap<IpAddr, usize>)> {
        self.open.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn admit(&self, peer: SocketAddr) -> Option<Slot> {
        let ip = canonical_ip(peer.ip());
        let mut open = self.lock();
        let reason = if open.0 >= self.limits.max_connections {
            "max_connections"
        } else if open.1.get(&ip).copied().unwrap_or(0) >= self.limits.max_connections_per_peer {
            "max_connections_per_peer"
        } else {
            open.0 += 1;
            *open.1.entry(ip).or_insert(0) += 1;
            return Some(Slot {
                table: self.clone(),
                peer: ip,
            });
        };
        drop(open);
        metrics::counter!("ratemesh_http_connections_refused_total", "reason" => reason)
            .increment(1);
        tracing::debug!(%peer, reason, "webhook connection refused");
        None
    }
}

/// An IPv4 peer on a dual-stack listener arrives as `::ffff:a.b.c.d`; count it as itself.
fn canonical_ip(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V6(v6) => v6
            .to_ipv4_mapped()
            .map(IpAddr::V4)
            .unwrap_or(IpAddr::V6(v6)),
        v4 => v4,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn limits(total: usize, per_peer: usize) -> ConnectionLimits {
        ConnectionLimits {
            header_read_timeout: Duration::from_secs(1),
            keep_alive_timeout: Duration::from_secs(1),
            max_connections: total,
            max_connections_per_peer: per_peer,
        }
    }

    #[test]
    fn connections_are_capped_in_total_and_per_peer_and_freed_on_close() {
        let table = ConnectionTable::new(limits(3, 2));
        let a: SocketAddr = "10.0.0.1:1000".parse().expect("addr");
        let a_mapped: SocketAddr = "[::ffff:10.0.0.1]:1001".parse().expect("addr");
        let b: SocketAddr = "10.0.0.2:1000".parse().expect("addr");
        let first = table.admit(a).expect("first from a");
        let _second = table.admit(a_mapped).expect("second from a");
        assert!(table.admit(a).is_none(), "a third from one peer is refused");
        let _third = table.admit(b).expect("first from b");
        assert!(table.admit(b).is_none(), "the total is reached");
        drop(first);
        assert!(
            table.admit(b).is_some(),
            "a closed connection frees its place"
        );
    }
}
