//! What the notifier reports on `/metrics`:
//!
//! - `ratemesh_notifier_deliveries_total{outcome}` — attempts by outcome: `delivered`
//!   (2xx), `retry` (failed, scheduled again), `dead` (failed for the last time, or the
//!   partner was deleted or disabled).
//! - `ratemesh_notifier_delivery_lag_seconds` — from the event's time (the body's
//!   `occurred_at`: for a coalesced POST, its latest change) to the partner's 2xx,
//!   including the coalescing window and every retry.
//! - `ratemesh_notifier_dead_letters` — dead deliveries stored (redeliverable), counted
//!   from the partners' dead deliveries every `telemetry.gauge_interval_ms`; a global
//!   figure, the same on every replica.
//! - `ratemesh_notifier_breakers_open` and `ratemesh_notifier_breaker_opened_total` —
//!   endpoints whose circuit breaker is open or half-open in this process, and openings.

use std::time::Duration;

use serde::Deserialize;
use tokio_util::sync::CancellationToken;

use crate::store::{Deliveries, Partners};

/// Outcome label of a delivered attempt.
pub(crate) const DELIVERED: &str = "delivered";
/// Outcome label of a failed attempt that will be retried.
pub(crate) const RETRY: &str = "retry";
/// Outcome label of a delivery moved to the dead-letter list.
pub(crate) const DEAD: &str = "dead";

/// Counts one attempt's outcome.
pub(crate) fn attempt(outcome: &'static str) {
    metrics::counter!("ratemesh_notifier_deliveries_total", "outcome" => outcome).increment(1);
}

/// Records the lag of a delivered body, from its `occurred_at` to `delivered_at_ms`.
pub(crate) fn delivered(body: &str, delivered_at_ms: i64) {
    if let Some(lag_ms) = lag_ms(body, delivered_at_ms) {
        metrics::histogram!("ratemesh_notifier_delivery_lag_seconds")
            .record(lag_ms as f64 / 1000.0);
    }
}

/// Milliseconds from the body's `occurred_at` to `delivered_at_ms` (0 if the clocks
/// disagree); `None` if the body has no readable `occurred_at`.
fn lag_ms(body: &str, delivered_at_ms: i64) -> Option<i64> {
    #[derive(Deserialize)]
    struct Head {
        occurred_at: String,
    }
    let head: Head = serde_json::from_str(body).ok()?;
    let occurred = chrono::DateTime::parse_from_rfc3339(&head.occurred_at).ok()?;
    Some((delivered_at_ms - occurred.timestamp_millis()).max(0))
}

/// Endpoints with an open (or half-open) breaker in this process.
pub(crate) fn breakers_open(count: usize) {
    metrics::gauge!("ratemesh_notifier_breakers_open").set(count as f64);
}

/// One breaker went from closed to open.
pub(crate) fn breaker_opened() {
    metrics::counter!("ratemesh_notifier_breaker_opened_total").increment(1);
}

/// Counts dead deliveries every `interval` until `shutdown`. A failed count (bus down)
/// keeps the last figure.
pub(crate) async fn run(
    partners: Partners,
    deliveries: Deliveries,
    interval: Duration,
    shutdown: CancellationToken,
) -> anyhow::Result<()> {
    ratemesh_runtime::consumer::every("dead-delivery gauge", interval, shutdown, || {
        let (partners, deliveries) = (partners.clone(), deliveries.clone());
        async move {
            let dead = count_dead(&partners, &deliveries).await?;
            metrics::gauge!("ratemesh_notifier_dead_letters").set(dead as f64);
            Ok::<(), ratemesh_bus::BusError>(())
        }
    })
    .await
}

/// Dead deliveries over every partner, counted from each partner's dead deliveries
/// without reading them: one constant-time read per partner, however many deliveries
/// its index holds.
async fn count_dead(partners: &Partners, deliveries: &Deliveries) -> ratemesh_bus::BusResult<u64> {
    let mut dead = 0u64;
    for partner in partners.cached().await?.iter() {
        dead += deliveries.dead_count(&partner.id).await?;
    }
    Ok(dead)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lag_runs_from_the_body_occurred_at_and_is_never_negative() {
        let body = r#"{"event_id":"x","type":"rate.changed","occurred_at":"2025-11-28T10:00:00.250Z","rates":[]}"#;
        let at = chrono::DateTime::parse_from_rfc3339("2025-11-28T10:00:02Z")
            .expect("time")
            .timestamp_millis();
        assert_eq!(lag_ms(body, at), Some(1_750));
        assert_eq!(lag_ms(body, at - 10_000), Some(0));
        assert_eq!(lag_ms("not json", at), None);
        assert_eq!(lag_ms(r#"{"occurred_at":"yesterday"}"#, at), None);
    }
}
