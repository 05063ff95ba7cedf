//! Keeps the stock stream's backlog for the rates group in memory, so deciding to shed a
//! push costs nothing on the request path.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use ratemesh_bus::Bus;
use ratemesh_contract::streams;
use tokio_util::sync::CancellationToken;

const INTERVAL: Duration = Duration::from_millis(500);

pub(crate) async fn monitor(
    bus: Bus,
    backlog: Arc<AtomicU64>,
    shutdown: CancellationToken,
) -> anyhow::Result<()> {
    let mut tick = tokio::time::interval(INTERVAL);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = shutdown.cancelled() => return Ok(()),
            _ = tick.tick() => {}
        }
        match bus
            .stream_stats(streams::STOCK, streams::groups::RATES)
            .await
        {
            // The ratemesh_stream_backlog_entries gauge is the runtime's (stream_gauges);
            // this copy only decides shedding.
            Ok(stats) => backlog.store(stats.backlog, Ordering::Relaxed),
            // Keep the last figure: a push during an outage fails on the append anyway.
            Err(err) => tracing::debug!(error = %err, "could not read the stock stream backlog"),
        }
    }
}
