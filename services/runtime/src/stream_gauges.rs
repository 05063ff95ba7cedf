//! Stream gauges: every process exports, per (stream, consumer group) pair the services
//! use ([`ratemesh_contract::streams::CONSUMED`]), `ratemesh_stream_backlog_entries`
//! (undelivered + pending: what autoscaling reads), `ratemesh_stream_pending_entries`,
//! `ratemesh_stream_length_entries` and `ratemesh_stream_dead_letter_entries`, labelled
//! `stream` and `group`.
//!
//! Any other group found on those streams (the input archive's `archive`, or a group left
//! behind by a consumer that no longer runs) gets the same gauges, length aside, plus
//! `ratemesh_stream_group_readers` (0: nobody reads for it, so it holds trimming back
//! until `ratemesh streams drop-group` removes it).
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
    let mut streams: Vec<&str> = streams::CONSUMED.iter().map(|(s, _)| *s).collect();
    streams.sort_unstable();
    streams.dedup();
    for stream in streams {
        let groups = match bus.groups(stream).await {
            Ok(groups) => groups,
            Err(err) => {
                tracing::debug!(stream, error = %err, "could not list consumer groups");
                continue;
            }
        };
        for info in groups {
            if streams::CONSUMED.contains(&(stream, info.group.as_str())) {
                continue;
            }
            let labels = [("stream", stream.to_owned()), ("group", info.group)];
            metrics::gauge!("ratemesh_stream_backlog_entries", &labels)
                .set((info.undelivered + info.pending) as f64);
            metrics::gauge!("ratemesh_stream_pending_entries", &labels).set(info.pending as f64);
            metrics::gauge!("ratemesh_stream_dead_letter_entries", &labels)
                .set(info.dead_letters as f64);
            metrics::gauge!("ratemesh_stream_group_readers", &labels).set(info.readers as f64);
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
