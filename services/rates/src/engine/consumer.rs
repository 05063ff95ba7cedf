//! The consumer-group loops: one per stream (`stock`, `overrides`, `incentives`), all in
//! group `rates`.
//!
//! A batch is split by entry key; the keys' runs are processed concurrently, each key's
//! entries in stream order. The records of the batch's SKUs are read in one round trip
//! first, then consecutive entries for one SKU are folded in one compute-write (so a
//! burst of readings costs one write, and the card is still recomputed after each
//! reading); a record changed since it was read costs one lost race and a re-read. Entries are acked after their effect is
//! committed and nacked with the error otherwise (the bus dead-letters an entry after its
//! maximum deliveries). When a SKU's update fails, its later entries in the batch are
//! nacked too, so they are retried in order rather than overtaking it.

use std::collections::HashMap;

use ratemesh_bus::{Delivery, StateRecord};
use ratemesh_contract::streams;
use ratemesh_core::{Event, Sku};
use ratemesh_runtime::consumer::{self, ConsumerSpec, Settled};
use tokio_util::sync::CancellationToken;
use tracing::Instrument;

use super::Engine;
use super::decode::{Routed, decode};

/// Consumes `stream` as `name` in group `rates` until `shutdown` (the shared consumer
/// driver).
pub async fn run(
    engine: Engine,
    stream: &'static str,
    name: String,
    shutdown: CancellationToken,
) -> anyhow::Result<()> {
    let spec = ConsumerSpec {
        stream,
        group: streams::groups::RATES,
        name,
    };
    let bus = engine.bus().clone();
    consumer::run(bus, spec, None, shutdown, |batch| {
        let engine = engine.clone();
        async move { handle_batch(&engine, batch).await }
    })
    .await
}

/// Applies a batch: split by key, the keys' runs concurrently, each in stream order.
pub async fn handle_batch(engine: &Engine, batch: Vec<Delivery>) -> Settled {
    let mut order: Vec<String> = Vec::new();
    let mut by_key: HashMap<String, Vec<Delivery>> = HashMap::new();
    for d in batch {
        if !by_key.contains_key(&d.key) {
            order.push(d.key.clone());
        }
        by_key.entry(d.key.clone()).or_default().push(d);
    }
    let mut records = read_records(engine, &order).await;
    let runs: Vec<(Vec<Delivery>, Option<Option<StateRecord>>)> = order
        .into_iter()
        .filter_map(|k| {
            let seen = records.remove(&k);
            by_key.remove(&k).map(|run| (run, seen))
        })
        .collect();
    let concurrency = engine.options().concurrency.max(1);
    use futures::StreamExt;
    let outcomes: Vec<Settled> = futures::stream::iter(runs)
        .map(|(run, seen)| process_key(engine, run, seen))
        .buffer_unordered(concurrency)
        .collect()
        .await;
    let mut settled = Settled::default();
    for outcome in outcomes {
        settled.extend(outcome);
    }
    settled
}

/// The stored records of the SKUs among `keys`, read in one round trip. Keys that are
/// not SKUs (a category override's) are left out; a failed read leaves every key out,
/// so each is read on its own as before.
async fn read_records(engine: &Engine, keys: &[String]) -> HashMap<String, Option<StateRecord>> {
    let skus: Vec<&String> = keys
        .iter()
        .filter(|k| Sku::new(k.as_str()).is_ok())
        .collect();
    match engine.bus().get_states(super::NAMESPACE, &skus).await {
        Ok(records) => skus.into_iter().cloned().zip(records).collect(),
        Err(e) => {
            tracing::debug!(error = %e, "reading a batch's records failed; reading them one by one");
            HashMap::new()
        }
    }
}

/// Applies one key's run; `seen` is the key's record as read for the batch, if it was.
async fn process_key(
    engine: &Engine,
    run: Vec<Delivery>,
    mut seen: Option<Option<StateRecord>>,
) -> Settled {
    let mut settled = Settled::default();
    // Consecutive entries for the same SKU, folded in one update.
    let mut pending: Option<(Sku, Vec<Event>, Vec<Delivery>)> = None;
    let mut failed: Option<String> = None;
    for d in run {
        if let Some(error) = &failed {
            settled
                .nack
                .push((d, format!("an earlier entry of this key failed: {error}")));
            continue;
        }
        let routed = match decode(&d) {
            Ok(r) => r,
            Err(e) => {
                tracing::warn!(stream = %d.stream, id = %d.id, error = %e, "undecodable entry");
                settled.nack.push((d, e.to_string()));
                continue;
            }
        };
        match routed {
            Routed::Sku(sku, event) => match &mut pending {
                Some((s, events, ds)) if *s == sku => {
                    events.push(event);
                    ds.push(d);
                }
                _ => {
                    if let Some(run) = pending.take() {
                        failed = flush(engine, run, seen.take(), &mut settled).await;
                    }
                    if let Some(error) = &failed {
                        settled
                            .nack
                            .push((d, format!("an earlier entry of this key failed: {error}")));
                        continue;
                    }
                    pending = Some((sku, vec![event], vec![d]));
                }
            },
            Routed::Category(category, event) => {
                if let Some(run) = pending.take() {
                    failed = flush(engine, run, seen.take(), &mut settled).await;
                    if let Some(error) = &failed {
                        settled
                            .nack
                            .push((d, format!("an earlier entry of this key failed: {error}")));
                        continue;
                    }
                }
                let span = d.span();
                match engine
                    .apply_category(&category, &event)
                    .instrument(span)
                    .await
                {
                    Ok(_) => settled.ack.push(d),
                    Err(e) => {
                        failed = Some(e.to_string());
                        settled.nack.push((d, e.to_string()));
                    }
                }
            }
            Routed::Ignore => settled.ack.push(d),
        }
    }
    if let Some(run) = pending.take() {
        flush(engine, run, seen.take(), &mut settled).await;
    }
    settled
}

/// Applies one SKU's run; returns the error if it failed (its entries are nacked).
async fn flush(
    engine: &Engine,
    (sku, events, deliveries): (Sku, Vec<Event>, Vec<Delivery>),
    seen: Option<Option<StateRecord>>,
    settled: &mut Settled,
) -> Option<String> {
    let span = deliveries
        .last()
        .map(Delivery::span)
        .unwrap_or_else(tracing::Span::none);
    match engine
        .apply_seen(&sku, &events, seen)
        .instrument(span)
        .await
    {
        Ok(_) => {
            settled.ack.extend(deliveries);
            None
        }
        Err(e) => {
            let error = e.to_string();
            tracing::warn!(sku = %sku, error = %error, "updating the rate failed");
            settled
                .nack
                .extend(deliveries.into_iter().map(|d| (d, error.clone())));
            Some(error)
        }
    }
}
