//! The consumer-group loops: one per stream of the rates service's entry in the contract's
//! table of readers (`stock`, `overrides`, `incentives`), all in its group `rates`.
//!
//! A batch is split by entry key, each key's entries kept in stream order. The records
//! of the batch's SKUs are read in one round trip (or taken from memory: the records this
//! consumer wrote last, see [`Engine::apply_batch`]); each SKU's entries are folded in
//! memory (the card recomputed after each one that changed the state, so a burst of
//! readings costs one write); then every changed record is written with its
//! publication in one atomic step per partition, each under its own version check. A
//! record changed since it was read costs one lost race and a re-read of that SKU.
//! Category overrides re-price a category and are applied key by key. Entries are acked
//! after their effect is committed and nacked with the error otherwise (the bus
//! dead-letters an entry after its maximum deliveries); a SKU's entries of one batch
//! succeed or fail together, so none overtakes another.

use std::collections::HashMap;

use ratemesh_bus::trace_context::BatchSpans;
use ratemesh_bus::{Delivery, StateRecord};
use ratemesh_contract::streams;
use ratemesh_core::{Event, Sku};
use ratemesh_runtime::consumer::{self, ConsumerSpec, Settled};
use tokio_util::sync::CancellationToken;
use tracing::Instrument;

use super::Engine;
use super::decode::{Routed, decode};

/// Consumes `stream` as `name` in the rates service's group until `shutdown` (the shared
/// consumer driver).
pub async fn run(
    engine: Engine,
    stream: &'static str,
    name: String,
    shutdown: CancellationToken,
) -> anyhow::Result<()> {
    let spec = ConsumerSpec {
        stream,
        group: streams::readers::RATES.group,
        name,
    };
    let bus = engine.bus().clone();
    consumer::run(bus, spec, None, shutdown, |batch| {
        let engine = engine.clone();
        async move { handle_batch(&engine, batch).await }
    })
    .await
}

/// Applies a batch: split by key, each key's entries in stream order. The SKUs' runs
/// are applied together ([`Engine::apply_many`]: one read, one write per partition);
/// runs with category overrides are applied key by key, concurrently.
pub async fn handle_batch(engine: &Engine, batch: Vec<Delivery>) -> Settled {
    // One span per trace of the batch, not per SKU: a 5,000-item push is one span here.
    let spans = BatchSpans::new(streams::readers::RATES.group, &batch);
    let mut order: Vec<String> = Vec::new();
    let mut by_key: HashMap<String, Vec<Delivery>> = HashMap::new();
    for d in batch {
        if !by_key.contains_key(&d.key) {
            order.push(d.key.clone());
        }
        by_key.entry(d.key.clone()).or_default().push(d);
    }
    let mut settled = Settled::default();
    let mut runs: Vec<(Sku, Vec<Event>, tracing::Span)> = Vec::new();
    let mut deliveries: Vec<Vec<Delivery>> = Vec::new();
    let mut other_runs: Vec<Vec<Delivery>> = Vec::new();
    for key in order {
        let Some(run) = by_key.remove(&key) else {
            continue;
        };
        match sku_run(run, &mut settled) {
            Ok(Some((sku, events, ds))) => {
                let span = ds
                    .last()
                    .map(|d| spans.of(d))
                    .unwrap_or_else(tracing::Span::none);
                runs.push((sku, events, span));
                deliveries.push(ds);
            }
            Ok(None) => {}
            Err(run) => other_runs.push(run),
        }
    }
    let skus: Vec<Sku> = runs.iter().map(|(sku, _, _)| sku.clone()).collect();
    let outcomes = engine.apply_batch(runs).await;
    for ((sku, outcome), ds) in skus.into_iter().zip(outcomes).zip(deliveries) {
        match outcome {
            Ok(_) => settled.ack.extend(ds),
            Err(e) => {
                let error = e.to_string();
                let span = ds
                    .last()
                    .map(|d| spans.of(d))
                    .unwrap_or_else(tracing::Span::none);
                span.in_scope(
                    || tracing::warn!(sku = %sku, error = %error, "updating the rate failed"),
                );
                settled
                    .nack
                    .extend(ds.into_iter().map(|d| (d, error.clone())));
            }
        }
    }
    let concurrency = engine.options().concurrency.max(1);
    use futures::StreamExt;
    let outcomes: Vec<Settled> = futures::stream::iter(other_runs)
        .map(|run| process_key(engine, run, None, &spans))
        .buffer_unordered(concurrency)
        .collect()
        .await;
    for outcome in outcomes {
        settled.extend(outcome);
    }
    settled
}

/// An entry of a SKU's run, decoded.
enum Step {
    Apply(Event),
    Ignore,
    Undecodable(String),
}

/// A key's run as one SKU's events, when every entry is an event of that SKU (or one to
/// ignore, acked, or undecodable, nacked into `settled`); `Ok(None)` when nothing is left
/// to apply; `Err(run)` otherwise (a category override: applied key by key).
#[allow(clippy::type_complexity)]
fn sku_run(
    run: Vec<Delivery>,
    settled: &mut Settled,
) -> Result<Option<(Sku, Vec<Event>, Vec<Delivery>)>, Vec<Delivery>> {
    let mut steps = Vec::with_capacity(run.len());
    let mut sku: Option<Sku> = None;
    for d in &run {
        let step = match decode(d) {
            Ok(Routed::Sku(s, event)) => {
                if sku.as_ref().is_some_and(|first| *first != s) {
                    return Err(run);
                }
                sku = Some(s);
                Step::Apply(event)
            }
            Ok(Routed::Ignore) => Step::Ignore,
            Ok(Routed::Category(..)) => return Err(run),
            Err(e) => Step::Undecodable(e.to_string()),
        };
        steps.push(step);
    }
    let mut events = Vec::with_capacity(steps.len());
    let mut deliveries = Vec::with_capacity(steps.len());
    for (d, step) in run.into_iter().zip(steps) {
        match step {
            Step::Apply(event) => {
                events.push(event);
                deliveries.push(d);
            }
            Step::Ignore => settled.ack.push(d),
            Step::Undecodable(error) => {
                tracing::warn!(stream = %d.stream, id = %d.id, error = %error, "undecodable entry");
                settled.nack.push((d, error));
            }
        }
    }
    Ok(sku.map(|sku| (sku, events, deliveries)))
}

/// Applies one key's run; `seen` is the key's record as read for the batch, if it was.
async fn process_key(
    engine: &Engine,
    run: Vec<Delivery>,
    mut seen: Option<Option<StateRecord>>,
    spans: &BatchSpans,
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
                        failed = flush(engine, run, seen.take(), &mut settled, spans).await;
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
                    failed = flush(engine, run, seen.take(), &mut settled, spans).await;
                    if let Some(error) = &failed {
                        settled
                            .nack
                            .push((d, format!("an earlier entry of this key failed: {error}")));
                        continue;
                    }
                }
                let span = spans.of(&d);
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
        flush(engine, run, seen.take(), &mut settled, spans).await;
    }
    settled
}

/// Applies one SKU's run; returns the error if it failed (its entries are nacked).
async fn flush(
    engine: &Engine,
    (sku, events, deliveries): (Sku, Vec<Event>, Vec<Delivery>),
    seen: Option<Option<StateRecord>>,
    settled: &mut Settled,
    spans: &BatchSpans,
) -> Option<String> {
    let span = deliveries
        .last()
        .map(|d| spans.of(d))
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
