//! The process-wide Prometheus recorder behind `/metrics`.
//!
//! Metric names follow `ratemesh_<area>_<what>_<unit>`; latencies are histograms in seconds.

use std::sync::OnceLock;

use metrics_exporter_prometheus::{Matcher, PrometheusBuilder, PrometheusHandle};

/// Latency buckets in seconds, from 100 µs (an in-memory rate read) to 10 s (a timed-out call).
const LATENCY_BUCKETS: &[f64] = &[
    0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5,
    5.0, 10.0,
];

/// Buckets of end-to-end delays (change → partner's 2xx), in seconds: a coalescing window
/// (~0.5 s) at best, an hour of retries at worst. Exact-name matchers win over the suffix one.
const DELAY_BUCKETS: &[f64] = &[
    0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 300.0, 900.0, 3600.0, 21600.0, 86400.0,
];

/// Histograms measured with [`DELAY_BUCKETS`].
const DELAY_METRICS: &[&str] = &["ratemesh_notifier_delivery_lag_seconds"];

static HANDLE: OnceLock<PrometheusHandle> = OnceLock::new();

/// Installs the recorder on first use (once per process, however many apps a test starts)
/// and returns the handle that renders it.
pub fn prometheus() -> &'static PrometheusHandle {
    HANDLE.get_or_init(|| {
        let recorder = PrometheusBuilder::new()
            .set_buckets_for_metric(Matcher::Suffix("_seconds".into()), LATENCY_BUCKETS)
            .and_then(|builder| {
                DELAY_METRICS.iter().try_fold(builder, |builder, name| {
                    builder.set_buckets_for_metric(Matcher::Full((*name).into()), DELAY_BUCKETS)
                })
            })
            .map(PrometheusBuilder::build_recorder)
            .unwrap_or_else(|_| PrometheusBuilder::new().build_recorder());
        let handle = recorder.handle();
        // Fails only if something else installed a recorder first; then our handle still
        // renders whatever is recorded through it, and the other recorder keeps working.
        if metrics::set_global_recorder(recorder).is_err() {
            tracing::warn!("a metrics recorder was already installed; /metrics may be empty");
        }
        handle
    })
}

/// Runs the recorder's periodic upkeep (histogram draining) until the process exits.
pub(crate) fn spawn_upkeep() {
    static STARTED: OnceLock<()> = OnceLock::new();
    STARTED.get_or_init(|| {
        let handle = prometheus().clone();
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(std::time::Duration::from_secs(5));
            loop {
                tick.tick().await;
                handle.run_upkeep();
            }
        });
    });
}
