//! Stream gauges: every process exports, per (stream, consumer group) pair the services
//! use ([`ratemesh_contract::streams::CONSUMED`]), `ratemesh_stream_backlog_entries`
//! (undelivered + pending: what autoscaling reads), `ratemesh_stream_pending_entries`,
//! `ratemesh_stream_length_entries` and `ratemesh_stream_dead_letter_entries`, labelled
//! `stream` and `group`.
//!
//! The figures are global (read from the bus), so every replica reports the same value;
//! dashboards and autoscalers take `max` over instances, not `sum`.

use ratemesh_bus::Bus;
use tokio_util::sync::CancellationToken;

use ratemesh_contract::streams;

/// Reads the stats of every pair once and sets the gauges. A pair whose stats cannot be
/// read keeps its last values (a scrape during a Redis outage shows the last known lag).
pub async fn export_once(bus: &Bus) {
    for (stream, group) in streams::CONSUMED {
        match bus.stream_stats(stream, group).await {
            Ok(stats) => {
                let labels = [("stream", stream), ("group", group)];
                metrics::gauge!("ratemesh_stream_backlog_entries", &labels)
                    .set(stats.backlog as f64);
                metrics::gauge!("ratemesh_stream_pending_entries", &labels)
                    .set(stats.pending as f64);
                metrics::gauge!("ratemesh_stream_length_entries", &labels).set(stats.length as f64);
                metrics::gauge!("ratemesh_stream_dead_letter_entries", &labels)
                    .set(stats.dead_letters as f64);
            }
            Err(err) => {
                tracing::debug!(stream, group, error = %err, "could not read stream stats")
            }
        }
    }
}

/// Exports every `interval` until `shutdown`.
pub(crate) async fn run(
    bus: Bus,
    interval: std::time::Duration,
    shutdown: CancellationToken,
) -> anyhow::Result<()> {
    let mut tick = tokio::time::interval(interval);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            () = shutdown.cancelled() => return Ok(()),
            _ = tick.tick() => {}
        }
        export_once(&bus).await;
    }
}
