//! Firing the rates service's durable recompute timers: claims what is due on the
//! `rates-recompute` queue (see [`crate::engine::timers`] for what its members mean) and
//! routes each one to the engine or the override store. It sits above both, so neither
//! needs the other's timers.

use std::time::{Duration, SystemTime};

use chrono::{DateTime, Utc};
use futures::StreamExt;
use ratemesh_core::Event;
use tokio_util::sync::CancellationToken;

use crate::engine::timers::{Due, QUEUE, parse_member, record_swept_edge, sweep};
use crate::engine::{Engine, EngineError};

/// Claims due timers until shutdown and fires them, `concurrency` at a time.
pub async fn run(engine: Engine, shutdown: CancellationToken) -> anyhow::Result<()> {
    let options = engine.options().clone();
    while !shutdown.is_cancelled() {
        let due = match engine
            .bus()
            .claim_due(QUEUE, SystemTime::now(), options.timer_batch)
            .await
        {
            Ok(due) => due,
            Err(e) => {
                tracing::warn!(error = %e, "claiming due recompute timers failed");
                Vec::new()
            }
        };
        if due.is_empty() {
            tokio::select! {
                () = tokio::time::sleep(options.timer_poll) => {}
                () = shutdown.cancelled() => {}
            }
            continue;
        }
        metrics::counter!("ratemesh_rates_recompute_timers_fired_total")
            .increment(due.len() as u64);
        futures::stream::iter(due)
            .for_each_concurrent(options.concurrency.max(1), |timer| {
                let engine = engine.clone();
                async move {
                    if let Err(e) = fire(&engine, &timer.member).await {
                        metrics::counter!("ratemesh_rates_recompute_failures_total").increment(1);
                        tracing::warn!(timer = %timer.member, error = %e, "recompute timer failed; retrying later");
                        let retry = SystemTime::now() + Duration::from_secs(5);
                        if let Err(e) = engine.bus().schedule(QUEUE, &timer.member, retry).await {
                            tracing::error!(timer = %timer.member, error = %e, "could not re-arm a failed recompute timer");
                        }
                    }
                }
            })
            .await;
    }
    Ok(())
}

/// Does what `member` asks.
pub async fn fire(engine: &Engine, member: &str) -> Result<(), EngineError> {
    let Some((at, due)) = parse_member(member) else {
        tracing::warn!(timer = %member, "ignoring a malformed recompute timer");
        return Ok(());
    };
    match due {
        Due::Sku(sku) => {
            let tick = Event::Tick {
                at,
                sku: Some(sku.clone()),
            };
            engine.apply(&sku, &[tick]).await?;
        }
        Due::Category(category) => {
            engine.categories().prune(at);
            sweep_leased(engine, member, Some(&category), at).await?;
        }
        Due::All(label) => {
            engine.categories().prune(at);
            sweep_leased(engine, member, None, at).await?;
            if label.starts_with("peak-") {
                record_swept_edge(engine.bus(), at).await?;
            }
        }
        Due::Expire(id) => {
            crate::overrides::store::expire(engine, &id, at).await?;
        }
    }
    Ok(())
}

async fn sweep_leased(
    engine: &Engine,
    member: &str,
    category: Option<&str>,
    at: DateTime<Utc>,
) -> Result<u64, EngineError> {
    let lease = SystemTime::now() + engine.options().sweep_lease;
    engine.bus().schedule(QUEUE, member, lease).await?;
    let done = sweep(engine, category, at, true, Some(member)).await?;
    engine.bus().cancel(QUEUE, member).await?;
    Ok(done)
}
