//! `WatchRates`: a server stream of rate changes, resumable from a cursor.
//!
//! A watcher first sends the catch-up — every matching card changed after its cursor,
//! newest per SKU, in change-position order — then live changes from the replica's
//! broadcast. It subscribes before it reads the catch-up, so a change applied in between
//! is in one or the other (sent twice at worst, never missed; live duplicates of catch-up
//! versions are skipped).
//!
//! The stream is pulled by the transport: a client that stops reading stops pulling, its
//! place in the broadcast ring (`rates.watch_buffer` changes) is overwritten, and on the
//! next pull it is ended with ABORTED telling it to resume from its last cursor. The
//! writer never waits for a watcher and other watchers never notice.
//!
//! Every update carries a cursor: for a live change, the replica position just after it
//! (it covers every change broadcast before); for catch-up, the resume cursor advanced
//! per partition only past positions completely sent. Heartbeats repeat the last cursor.

use std::collections::{HashMap, VecDeque};
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use futures::Stream;
use ratemesh_bus::Cursor;
use ratemesh_proto::v1;
use tokio::sync::broadcast::{self, error::RecvError};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tonic::Status;

use super::error::ReadError;
use super::point::{ensure_loaded, parse_sku};
use super::replica::{Change, ReplicaReader, WatchFilter};
use ratemesh_runtime::ApiError;

/// Most SKUs in one watch filter.
pub const MAX_WATCH_SKUS: usize = 10_000;
/// Most categories in one watch filter.
pub const MAX_WATCH_CATEGORIES: usize = 1_000;

/// The response stream of `WatchRates`.
pub type WatchStream = Pin<Box<dyn Stream<Item = Result<v1::RateUpdate, Status>> + Send>>;

struct Watcher {
    rx: broadcast::Receiver<Arc<Change>>,
    filter: WatchFilter,
    backlog: VecDeque<v1::RateUpdate>,
    /// Versions sent during catch-up, so the same version arriving live is skipped.
    caught_up: HashMap<String, u64>,
    /// The cursor to hand out with a heartbeat.
    last_cursor: String,
    heartbeat: Duration,
    next_heartbeat: Instant,
    shutdown: CancellationToken,
    done: bool,
}

/// A guard that keeps the watcher gauge right however the stream ends.
struct Gauge;

impl Gauge {
    fn new() -> Self {
        metrics::gauge!("ratemesh_rates_watchers").increment(1.0);
        Gauge
    }
}

impl Drop for Gauge {
    fn drop(&mut self) {
        metrics::gauge!("ratemesh_rates_watchers").decrement(1.0);
    }
}

/// Validates the request and opens the stream.
pub fn watch_rates(
    reader: &ReplicaReader,
    request: v1::WatchRatesRequest,
    subscription: Option<ratemesh_contract::partner::Subscription>,
    heartbeat: Duration,
    shutdown: CancellationToken,
) -> Result<WatchStream, ReadError> {
    ensure_loaded(reader)?;
    if request.skus.len() > MAX_WATCH_SKUS {
        return Err(ReadError::invalid(
            "skus",
            format!("must hold at most {MAX_WATCH_SKUS} skus"),
        ));
    }
    if request.categories.len() > MAX_WATCH_CATEGORIES {
        return Err(ReadError::invalid(
            "categories",
            format!("must hold at most {MAX_WATCH_CATEGORIES} categories"),
        ));
    }
    let mut filter = WatchFilter {
        subscription,
        ..WatchFilter::default()
    };
    for (i, sku) in request.skus.iter().enumerate() {
        filter
            .skus
            .insert(parse_sku(&format!("skus[{i}]"), sku)?.as_str().to_owned());
    }
    for (i, category) in request.categories.iter().enumerate() {
        let category = ratemesh_core::input::category(category)
            .map_err(|e| ReadError::invalid(format!("categories[{i}]"), e))?;
        filter.categories.insert(category);
    }
    let resume = match request.cursor.as_str() {
        "" => None,
        token => Some(
            Cursor::parse_for(token, reader.partitions())
                .map_err(|e| ReadError::invalid("cursor", e.to_string()))?,
        ),
    };

    // Subscribe first, then read: a change applied in between is seen at least once.
    let rx = reader.subscribe();
    let start = reader.position();
    let mut backlog = VecDeque::new();
    let mut caught_up = HashMap::new();
    let last_cursor = match resume {
        None => start.to_string(),
        Some(since) => {
            let cards = reader.changed_after(&since, &filter);
            let mut running = since.clone();
            for (i, item) in cards.iter().enumerate() {
                // Advance past a position only once every card at it has been sent, so a
                // client resuming from any of these cursors misses none of the rest.
                let next_same = cards
                    .get(i + 1)
                    .is_some_and(|n| n.partition == item.partition && n.id == item.id);
                if !next_same {
                    running.advance(item.partition, item.id);
                }
                caught_up.insert(item.card.sku.clone(), item.card.version);
                backlog.push_back(v1::RateUpdate {
                    card: Some((*item.card).clone()),
                    previous_rate: item.card.previous_rate.clone(),
                    cursor: running.to_string(),
                });
            }
            running.to_string()
        }
    };
    let watcher = Watcher {
        rx,
        filter,
        backlog,
        caught_up,
        last_cursor,
        heartbeat,
        next_heartbeat: Instant::now() + heartbeat,
        shutdown,
        done: false,
    };
    let gauge = Gauge::new();
    Ok(Box::pin(futures::stream::unfold(
        (watcher, gauge),
        |(mut w, gauge)| async move {
            let item = w.next().await?;
            Some((item, (w, gauge)))
        },
    )))
}

impl Watcher {
    async fn next(&mut self) -> Option<Result<v1::RateUpdate, Status>> {
        if self.done {
            return None;
        }
        if let Some(update) = self.backlog.pop_front() {
            self.next_heartbeat = Instant::now() + self.heartbeat;
            return Some(Ok(update));
        }
        loop {
            tokio::select! {
                biased;
                () = self.shutdown.cancelled() => {
                    self.done = true;
                    return Some(Err(ReadError::from(ApiError::unavailable(format!(
                        "server shutting down; reconnect with cursor {}",
                        self.last_cursor
                    )))
                    .into()));
                }
                received = self.rx.recv() => match received {
                    Ok(change) => {
                        self.last_cursor = change.cursor.to_string();
                        if !self.filter.matches(&change.card)
                            || self
                                .caught_up
                                .get(&change.card.sku)
                                .is_some_and(|v| *v >= change.card.version)
                        {
                            continue;
                        }
                        self.next_heartbeat = Instant::now() + self.heartbeat;
                        return Some(Ok(v1::RateUpdate {
                            card: Some((*change.card).clone()),
                            previous_rate: change.previous_rate.clone(),
                            cursor: change.cursor.to_string(),
                        }));
                    }
                    Err(RecvError::Lagged(missed)) => {
                        self.done = true;
                        metrics::counter!("ratemesh_rates_watchers_aborted_total").increment(1);
                        return Some(Err(ReadError::Aborted(format!(
                            "watcher fell behind by {missed} changes and was disconnected; \
                             resume with the last cursor received"
                        ))
                        .into()));
                    }
                    Err(RecvError::Closed) => {
                        self.done = true;
                        return Some(Err(ReadError::from(ApiError::unavailable(
                            "rate replica stopped; reconnect with the last cursor received",
                        ))
                        .into()));
                    }
                },
                () = tokio::time::sleep_until(self.next_heartbeat) => {
                    self.next_heartbeat = Instant::now() + self.heartbeat;
                    return Some(Ok(v1::RateUpdate {
                        card: None,
                        previous_rate: String::new(),
                        cursor: self.last_cursor.clone(),
                    }));
                }
            }
        }
    }
}
