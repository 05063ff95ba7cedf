//! Keeps the replica current: loads the snapshot, then tails the `rates` stream.
//!
//! Load order: read the snapshot ([`super::snapshot`]) and tail from the position it is
//! complete up to. Without a usable snapshot (the storage contract): note the stream's
//! end, scan every `rate` state, then tail from the noted end — so a card written during
//! the scan is either in the scan or in the tail (applying by version makes seeing it
//! twice harmless). The replica is marked loaded once the tail has reached the stream's
//! end as of the load's completion, so it never serves a table older than what it read.
//!
//! This is the only part of the read path that holds the bus. Backend errors are logged
//! and retried with backoff; reads meanwhile keep being served from memory.
//!
//! A serving replica checks every 30 s, and at once when the tail works again after an
//! error, whether retention trimmed entries it never read (`Bus::trimmed_past`): after an
//! outage longer than the stream's retention it would otherwise miss those changes for
//! good. It then reloads the snapshot, which holds every card's latest version, tells its
//! watchers of the cards that moved, and tails on (`ratemesh_rates_replica_resyncs_total`).

use std::time::Duration;

use prost::Message;
use ratemesh_bus::{Bus, BusResult, Delivery};
use ratemesh_contract::streams;
use ratemesh_proto::v1;
use ratemesh_runtime::Readiness;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use super::replica::{Footprint, Incoming, Replica, ReplicaReader};
use super::{CARD_FIELD, RATE_CHANGED_KIND, STATE_NAMESPACE, snapshot, wire};

/// States read per snapshot page.
const SNAPSHOT_PAGE: usize = 1_000;
/// Longest wait between retries after a backend error.
const MAX_BACKOFF: Duration = Duration::from_secs(5);
/// How often a serving replica checks that retention has not trimmed the stream past it.
/// It also checks at once when the tail works again after an error.
const TRIM_CHECK_EVERY: Duration = Duration::from_secs(30);

/// Loads and then follows the rate table until `shutdown` is cancelled.
pub async fn run(
    bus: Bus,
    replica: Replica,
    readiness: Readiness,
    shutdown: CancellationToken,
) -> anyhow::Result<()> {
    let mut backoff = Duration::from_millis(50);
    let mut tail = loop {
        let attempt = tokio::select! {
            () = shutdown.cancelled() => return Ok(()),
            attempt = load(&bus, &replica, &shutdown) => attempt,
        };
        match attempt {
            Ok(Some(tail)) => break tail,
            Ok(None) => return Ok(()),
            Err(err) => {
                tracing::warn!(error = %err, "loading the rate replica failed; retrying");
                if sleep_or_shutdown(backoff, &shutdown).await {
                    return Ok(());
                }
                backoff = (backoff * 2).min(MAX_BACKOFF);
            }
        }
    };
    replica.set_loaded();
    readiness.set(true);
    let reader = replica.reader();
    metrics::gauge!("ratemesh_rates_replica_skus").set(reader.len() as f64);
    let footprint = report_footprint(&reader);
    tracing::info!(
        skus = reader.len(),
        card_bytes = footprint.cards,
        index_bytes = footprint.index,
        "rate replica loaded"
    );

    let mut backoff = Duration::from_millis(50);
    let mut check_at = Instant::now() + TRIM_CHECK_EVERY;
    loop {
        let batch = tokio::select! {
            () = shutdown.cancelled() => return Ok(()),
            batch = tail.next_batch() => batch,
        };
        match batch {
            Ok(batch) => {
                backoff = Duration::from_millis(50);
                apply_batch(&replica, &batch);
                metrics::gauge!("ratemesh_rates_replica_skus").set(reader.len() as f64);
                // Let watchers drain the batch before the next one is applied.
                tokio::task::yield_now().await;
                if Instant::now() >= check_at {
                    check_at = Instant::now() + TRIM_CHECK_EVERY;
                    report_footprint(&reader);
                    match resync_if_trimmed(&bus, &replica, tail.cursor(), &shutdown).await {
                        Ok(Some(reloaded)) => tail = reloaded,
                        Ok(None) => {}
                        Err(err) => {
                            tracing::warn!(error = %err, "checking the rates stream's retention failed; will check again");
                        }
                    }
                }
            }
            Err(err) => {
                tracing::warn!(error = %err, "tailing the rates stream failed; retrying");
                if sleep_or_shutdown(backoff, &shutdown).await {
                    return Ok(());
                }
                backoff = (backoff * 2).min(MAX_BACKOFF);
                // The outage may have lasted longer than the stream's retention.
                check_at = Instant::now();
            }
        }
    }
}

/// Sets the replica's memory gauges (`ratemesh_rates_replica_bytes{part}`).
fn report_footprint(reader: &ReplicaReader) -> Footprint {
    let f = reader.footprint();
    for (part, bytes) in [
        ("cards", f.cards),
        ("garbage", f.garbage),
        ("allocated", f.allocated),
        ("index", f.index),
    ] {
        metrics::gauge!("ratemesh_rates_replica_bytes", "part" => part).set(bytes as f64);
    }
    f
}

/// When retention has trimmed entries this replica never read (a long outage, or a tail
/// far behind), reloads the snapshot, which holds every card's latest version, and
/// returns the tail to continue with. `None` when nothing was missed (or on shutdown).
async fn resync_if_trimmed(
    bus: &Bus,
    replica: &Replica,
    cursor: &ratemesh_bus::Cursor,
    shutdown: &CancellationToken,
) -> BusResult<Option<ratemesh_bus::Tail>> {
    if !bus.trimmed_past(streams::RATES, cursor).await? {
        return Ok(None);
    }
    metrics::counter!("ratemesh_rates_replica_resyncs_total").increment(1);
    tracing::warn!(
        cursor = %cursor,
        "the rates stream was trimmed past this replica; reloading the snapshot"
    );
    load(bus, replica, shutdown).await
}

/// True when shutdown came first.
async fn sleep_or_shutdown(delay: Duration, shutdown: &CancellationToken) -> bool {
    tokio::select! {
        () = shutdown.cancelled() => true,
        () = tokio::time::sleep(delay) => false,
    }
}

/// One load attempt: the snapshot (or, without a usable one, every state record), then
/// the tail until caught up. `None` when shut down.
async fn load(
    bus: &Bus,
    replica: &Replica,
    shutdown: &CancellationToken,
) -> BusResult<Option<ratemesh_bus::Tail>> {
    let started = std::time::Instant::now();
    let from = match snapshot::load(bus, replica).await {
        Ok(Some(loaded)) => {
            replica.note_snapshot_load();
            metrics::counter!("ratemesh_rates_replica_loads_total", "from" => "snapshot")
                .increment(1);
            tracing::info!(
                cards = loaded.cards,
                took_ms = started.elapsed().as_millis() as u64,
                "rate snapshot read"
            );
            loaded.cursor
        }
        Ok(None) => {
            metrics::counter!("ratemesh_rates_replica_loads_total", "from" => "records")
                .increment(1);
            scan(bus, replica, shutdown).await?
        }
        Err(err) => {
            tracing::warn!(error = %err, "reading the rate snapshot failed; reading every record");
            metrics::counter!("ratemesh_rates_replica_loads_total", "from" => "records")
                .increment(1);
            scan(bus, replica, shutdown).await?
        }
    };
    if shutdown.is_cancelled() {
        return Ok(None);
    }
    // The position moves to `from` only now: while a serving replica reloads, a cursor
    // handed out mid-scan stays before the cards the scan is still applying.
    replica.begin_load(&from);
    let target = bus.end_cursor(streams::RATES).await?;
    let mut tail = bus.tail(streams::RATES, from)?;
    while !replica.reader().position().covers(&target) {
        if shutdown.is_cancelled() {
            return Ok(None);
        }
        let batch = tail.next_batch().await?;
        apply_batch(replica, &batch);
        if batch.is_empty() && tail.cursor().covers(&target) {
            // Entries up to the target were trimmed away: nothing more to wait for.
            replica.begin_load(&target);
        }
    }
    tracing::debug!(
        took_ms = started.elapsed().as_millis() as u64,
        "rate table loaded and tail caught up"
    );
    Ok(Some(tail))
}

/// Reads every `rate` state record into the replica; the stream position to tail from
/// (the stream's end noted before the scan).
async fn scan(
    bus: &Bus,
    replica: &Replica,
    shutdown: &CancellationToken,
) -> BusResult<ratemesh_bus::Cursor> {
    let base = bus.end_cursor(streams::RATES).await?;
    let mut page: Option<String> = None;
    let mut scanned = 0usize;
    loop {
        let result = bus
            .scan_states(STATE_NAMESPACE, page.as_deref(), SNAPSHOT_PAGE)
            .await?;
        for (sku, record) in &result.items {
            let Some(bytes) = record.fields.get(CARD_FIELD) else {
                // The engine keeps state for SKUs that have no published card yet.
                continue;
            };
            // Decoded whole once, so a card the replica serves is known to be well formed.
            match v1::RateCard::decode(bytes.as_ref()).map(|_| Incoming::new(bytes)) {
                Ok(Ok(card)) if card.head.sku == sku.as_str() => {
                    replica.apply_snapshot(card, &base);
                    scanned += 1;
                }
                Ok(Ok(card)) => {
                    tracing::warn!(sku = %sku, card_sku = %card.head.sku, "stored card names another sku; skipped");
                }
                Ok(Err(err)) => {
                    metrics::counter!("ratemesh_rates_replica_bad_entries_total").increment(1);
                    tracing::warn!(sku = %sku, error = %err, "stored card does not decode; skipped");
                }
                Err(err) => {
                    metrics::counter!("ratemesh_rates_replica_bad_entries_total").increment(1);
                    tracing::warn!(sku = %sku, error = %err, "stored card does not decode; skipped");
                }
            }
        }
        match result.next {
            Some(next) => page = Some(next),
            None => break,
        }
        if shutdown.is_cancelled() {
            break;
        }
    }
    tracing::debug!(scanned, "rate records scanned");
    Ok(base)
}

/// Applies `RateChanged` entries; anything else on the stream is skipped.
pub fn apply_batch(replica: &Replica, batch: &[Delivery]) {
    for delivery in batch {
        let kind_ok = delivery
            .kind
            .as_deref()
            .is_none_or(|k| k == RATE_CHANGED_KIND);
        let decoded = kind_ok
            .then(|| v1::RateChanged::decode(delivery.payload.as_ref()))
            .transpose();
        match decoded {
            Ok(Some(v1::RateChanged {
                card: Some(card),
                previous_rate,
                ..
            })) if card.sku == delivery.key => {
                // Kept as published when the entry carries it once (as the engine writes
                // it); re-encoded otherwise.
                let payload = delivery.payload.as_ref();
                let encoded;
                let bytes = match wire::rate_changed_card(payload) {
                    Some(range) => &payload[range],
                    None => {
                        encoded = card.encode_to_vec();
                        &encoded
                    }
                };
                replica.apply_change(delivery.partition, delivery.id, card, bytes, previous_rate);
            }
            Ok(_) => {
                tracing::debug!(key = %delivery.key, id = %delivery.id, "rates entry without a usable card; skipped");
                replica.skip(delivery.partition, delivery.id);
            }
            Err(err) => {
                metrics::counter!("ratemesh_rates_replica_bad_entries_total").increment(1);
                tracing::warn!(key = %delivery.key, id = %delivery.id, error = %err, "rates entry does not decode; skipped");
                replica.skip(delivery.partition, delivery.id);
            }
        }
    }
}
