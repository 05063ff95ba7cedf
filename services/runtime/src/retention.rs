//! Stream retention: every process trims the shared streams on an interval, under
//! `[retention]`, so neither the embedded bus's memory nor Redis grows without bound.
//!
//! The bus never drops an entry still pending in, or not yet delivered to, a consumer
//! group, so trimming cannot lose work; and trimming is idempotent, so every replica of
//! every service may run it (no leader election to get wrong).

use ratemesh_bus::Bus;
use tokio_util::sync::CancellationToken;

use crate::settings::RetentionSettings;

/// Trims every stream once; returns how many entries were removed. A stream that fails
/// (Redis down) is logged and skipped: the next round tries again.
pub async fn trim_once(bus: &Bus, retention: &RetentionSettings) -> u64 {
    let mut removed = 0;
    for (stream, limits) in retention.streams() {
        match bus.trim(stream, limits.to_bus()).await {
            Ok(n) => {
                removed += n;
                if n > 0 {
                    metrics::counter!("ratemesh_stream_trimmed_total", "stream" => stream)
                        .increment(n);
                    tracing::debug!(stream, removed = n, "stream trimmed");
                }
            }
            Err(err) => tracing::warn!(stream, error = %err, "trimming the stream failed"),
        }
    }
    removed
}

/// Trims on `retention.interval_ms` until `shutdown`.
pub(crate) async fn run(
    bus: Bus,
    retention: RetentionSettings,
    shutdown: CancellationToken,
) -> anyhow::Result<()> {
    let mut tick = tokio::time::interval(retention.interval());
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            () = shutdown.cancelled() => return Ok(()),
            _ = tick.tick() => {}
        }
        trim_once(&bus, &retention).await;
    }
}
