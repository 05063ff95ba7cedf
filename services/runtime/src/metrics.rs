//! The process-wide Prometheus recorder behind `/metrics`, and the catalogue of every
//! family the services record ([`FAMILIES`]): its `# HELP` text and unit, described to the
//! recorder when it is installed, so the exposition passes `promtool check metrics`.
//!
//! Metric names follow `ratemesh_<area>_<what>_<unit>`: counters end in `_total`,
//! durations are in `_seconds`, sizes in `_bytes`, and a gauge counting things ends in what
//! it counts (`_entries`, `_skus`, `_watchers`). Latencies are histograms in seconds.
//! [`render`] adds the standard `process_*` families, read from `/proc/self` per scrape.

use std::sync::OnceLock;

use metrics::Unit;
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

/// What kind of family a metric is, for its `# TYPE` line.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// Only goes up; its name ends in `_total`.
    Counter,
    /// Goes up and down.
    Gauge,
    /// Observations in buckets (`_bucket`, `_sum`, `_count`).
    Histogram,
}

/// One metric family the services record: its name, kind, unit and `# HELP` text.
#[derive(Debug, Clone, Copy)]
pub struct Family {
    /// The family's name, as exported.
    pub name: &'static str,
    /// Its `# TYPE`.
    pub kind: Kind,
    /// What one unit of its value is.
    pub unit: Unit,
    /// Its `# HELP` text.
    pub help: &'static str,
}

const fn family(name: &'static str, kind: Kind, unit: Unit, help: &'static str) -> Family {
    Family {
        name,
        kind,
        unit,
        help,
    }
}

use Kind::{Counter, Gauge, Histogram};

/// Every family any ratemesh service records, with its `# HELP` text: the one place an
/// operator (or a test) reads what a figure means. A family missing here is exported
/// without HELP, which `promtool check metrics` refuses (the exposition test fails).
pub const FAMILIES: &[Family] = &[
    // process-wide
    family(
        "ratemesh_build_info",
        Gauge,
        Unit::Count,
        "Always 1; the version label is the running build's version.",
    ),
    family(
        "ratemesh_backend_connected",
        Gauge,
        Unit::Count,
        "1 while the connection to the streams and state backend (Redis) is up, 0 while it is lost; set when /metrics is scraped.",
    ),
    family(
        "ratemesh_runtime_schedule_delay_seconds",
        Gauge,
        Unit::Seconds,
        "How late the async runtime runs a task that is ready, smoothed.",
    ),
    family(
        "ratemesh_runtime_schedule_delay_max_seconds",
        Gauge,
        Unit::Seconds,
        "The longest task scheduling delay of about the last second.",
    ),
    // gRPC
    family(
        "ratemesh_grpc_requests_total",
        Counter,
        Unit::Count,
        "gRPC calls answered, by method and status code.",
    ),
    family(
        "ratemesh_grpc_request_duration_seconds",
        Histogram,
        Unit::Seconds,
        "Time to answer a gRPC call, by method.",
    ),
    family(
        "ratemesh_grpc_shed_total",
        Counter,
        Unit::Count,
        "gRPC calls refused before their handler to protect latency, by method and reason (concurrency, limit, deadline).",
    ),
    family(
        "ratemesh_grpc_undecodable_total",
        Counter,
        Unit::Count,
        "gRPC requests whose body could not be decoded, by method.",
    ),
    family(
        "ratemesh_grpc_concurrency_limit_requests",
        Gauge,
        Unit::Count,
        "Calls a method may run at once under its adaptive concurrency limit.",
    ),
    family(
        "ratemesh_grpc_inline_concurrency_limit_requests",
        Gauge,
        Unit::Count,
        "Point reads a method may have at once on the gRPC connection threads that answer them, under the limit the connection runtime's scheduling delay moves.",
    ),
    family(
        "ratemesh_grpc_connection_schedule_delay_seconds",
        Gauge,
        Unit::Seconds,
        "How late the gRPC connection runtime runs a task that is ready, smoothed.",
    ),
    family(
        "ratemesh_grpc_connection_schedule_delay_max_seconds",
        Gauge,
        Unit::Seconds,
        "The longest scheduling delay of the gRPC connection runtime in about the last second.",
    ),
    // HTTP listeners
    family(
        "ratemesh_http_connections_closed_total",
        Counter,
        Unit::Count,
        "HTTP connections the server closed, by reason.",
    ),
    family(
        "ratemesh_http_connections_refused_total",
        Counter,
        Unit::Count,
        "HTTP connections refused at accept, by reason.",
    ),
    // streams and consumers
    family(
        "ratemesh_stream_backlog_entries",
        Gauge,
        Unit::Count,
        "Entries of a stream a consumer group has not finished (undelivered plus pending); what autoscaling reads. Global: take max over instances.",
    ),
    family(
        "ratemesh_stream_pending_entries",
        Gauge,
        Unit::Count,
        "Entries delivered to a consumer group and not yet acknowledged.",
    ),
    family(
        "ratemesh_stream_length_entries",
        Gauge,
        Unit::Count,
        "Entries a stream holds (after trimming).",
    ),
    family(
        "ratemesh_stream_dead_letter_entries",
        Gauge,
        Unit::Count,
        "Entries a consumer group gave up on and parked in its dead-letter stream.",
    ),
    family(
        "ratemesh_stream_group_readers",
        Gauge,
        Unit::Count,
        "Members reading for a consumer group other than the services' own (the input archive's, or one left behind); 0 means it holds trimming back with nobody reading.",
    ),
    family(
        "ratemesh_stream_trimmed_total",
        Counter,
        Unit::Count,
        "Stream entries removed by retention, by stream.",
    ),
    family(
        "ratemesh_consumer_entries_total",
        Counter,
        Unit::Count,
        "Stream entries handled by this process, by stream, group and outcome (applied, failed).",
    ),
    family(
        "ratemesh_consumer_partitions_owned",
        Gauge,
        Unit::Count,
        "Stream partitions this process consumes, by stream and group.",
    ),
    // ingest
    family(
        "ratemesh_ingest_requests_total",
        Counter,
        Unit::Count,
        "ERP webhook requests answered, by path and HTTP status.",
    ),
    family(
        "ratemesh_ingest_request_duration_seconds",
        Histogram,
        Unit::Seconds,
        "Time to answer an ERP webhook request, by path.",
    ),
    family(
        "ratemesh_ingest_rejected_total",
        Counter,
        Unit::Count,
        "ERP pushes refused, by reason.",
    ),
    family(
        "ratemesh_ingest_batches_total",
        Counter,
        Unit::Count,
        "ERP batches by kind and outcome (replayed: a batch id sent again, answered from its stored answer).",
    ),
    family(
        "ratemesh_ingest_items_total",
        Counter,
        Unit::Count,
        "Items of ERP batches, by kind and outcome.",
    ),
    // rates
    family(
        "ratemesh_rates_cards_published_total",
        Counter,
        Unit::Count,
        "Rate cards published (a card changed in something partners act on); rate() of it is publications per second.",
    ),
    family(
        "ratemesh_rates_rate_changes_total",
        Counter,
        Unit::Count,
        "Published cards whose rate moved, by what moved it (stock, product, override, incentive, schedule) and category (other: a category the policy does not name).",
    ),
    family(
        "ratemesh_rates_peak_window_open",
        Gauge,
        Unit::Count,
        "1 while the policy's calendar is in a peak window, else 0.",
    ),
    family(
        "ratemesh_rates_state_conflicts_total",
        Counter,
        Unit::Count,
        "SKU record writes that lost a compare-and-set and were redone.",
    ),
    family(
        "ratemesh_rates_events_skipped_total",
        Counter,
        Unit::Count,
        "Events that changed nothing (duplicates, older readings).",
    ),
    family(
        "ratemesh_rates_reads_total",
        Counter,
        Unit::Count,
        "Rate cards read, by method.",
    ),
    family(
        "ratemesh_rates_history_reads_total",
        Counter,
        Unit::Count,
        "Reads of a past card, by where it was found (replica, backend).",
    ),
    family(
        "ratemesh_rates_recompute_sweeps_total",
        Counter,
        Unit::Count,
        "Recompute sweeps finished.",
    ),
    family(
        "ratemesh_rates_recompute_sweeps_running",
        Gauge,
        Unit::Count,
        "Recompute sweeps in progress in this process.",
    ),
    family(
        "ratemesh_rates_recompute_scanned_total",
        Counter,
        Unit::Count,
        "SKU records read by recompute sweeps.",
    ),
    family(
        "ratemesh_rates_recompute_skus_total",
        Counter,
        Unit::Count,
        "SKUs recomputed by sweeps.",
    ),
    family(
        "ratemesh_rates_recompute_timers_fired_total",
        Counter,
        Unit::Count,
        "Durable recompute timers that fell due.",
    ),
    family(
        "ratemesh_rates_recompute_failures_total",
        Counter,
        Unit::Count,
        "Recomputes that failed and will be retried.",
    ),
    family(
        "ratemesh_rates_replica_skus",
        Gauge,
        Unit::Count,
        "SKUs in this process's in-memory replica of the published cards.",
    ),
    family(
        "ratemesh_rates_replica_bytes",
        Gauge,
        Unit::Bytes,
        "Memory held by the in-memory replica, by part.",
    ),
    family(
        "ratemesh_rates_replica_applied_total",
        Counter,
        Unit::Count,
        "Card publications applied to the in-memory replica.",
    ),
    family(
        "ratemesh_rates_replica_loads_total",
        Counter,
        Unit::Count,
        "Full loads of the replica, by source (snapshot, records).",
    ),
    family(
        "ratemesh_rates_replica_resyncs_total",
        Counter,
        Unit::Count,
        "Times the replica fell behind the rates stream and was loaded again.",
    ),
    family(
        "ratemesh_rates_replica_bad_entries_total",
        Counter,
        Unit::Count,
        "Rates stream entries or records the replica could not decode and skipped.",
    ),
    family(
        "ratemesh_rates_snapshot_blocks_written_total",
        Counter,
        Unit::Count,
        "Replica snapshot blocks written.",
    ),
    family(
        "ratemesh_rates_snapshot_failures_total",
        Counter,
        Unit::Count,
        "Replica snapshot rounds that failed.",
    ),
    family(
        "ratemesh_rates_snapshot_writer",
        Gauge,
        Unit::Count,
        "1 if this process holds the snapshot writer lease, else 0.",
    ),
    family(
        "ratemesh_rates_watchers",
        Gauge,
        Unit::Count,
        "Open WatchRates streams.",
    ),
    family(
        "ratemesh_rates_watchers_aborted_total",
        Counter,
        Unit::Count,
        "WatchRates streams ended because the client fell too far behind.",
    ),
    // incentives
    family(
        "ratemesh_incentives_transitions_total",
        Counter,
        Unit::Count,
        "Incentive transitions published, by transition, reason and origin.",
    ),
    family(
        "ratemesh_incentives_skipped_total",
        Counter,
        Unit::Count,
        "SKUs that qualified for an incentive but did not open one, by reason.",
    ),
    family(
        "ratemesh_incentives_active",
        Gauge,
        Unit::Count,
        "Incentives holding a concurrency slot.",
    ),
    // notifier
    family(
        "ratemesh_notifier_deliveries_total",
        Counter,
        Unit::Count,
        "Partner webhook attempts, by outcome (delivered, retry, dead).",
    ),
    family(
        "ratemesh_notifier_delivery_lag_seconds",
        Histogram,
        Unit::Seconds,
        "From a rate change to the partner's 2xx, including coalescing and retries.",
    ),
    family(
        "ratemesh_notifier_dead_letters",
        Gauge,
        Unit::Count,
        "Dead partner deliveries stored (redeliverable). Global: take max over instances.",
    ),
    family(
        "ratemesh_notifier_breakers_open",
        Gauge,
        Unit::Count,
        "Partner endpoints whose circuit breaker is open or half-open in this process.",
    ),
    family(
        "ratemesh_notifier_breaker_opened_total",
        Counter,
        Unit::Count,
        "Times a partner endpoint's circuit breaker opened.",
    ),
    family(
        "ratemesh_archive_records_total",
        Counter,
        Unit::Count,
        "Input events written to the input archive (fsynced), by stream.",
    ),
    family(
        "ratemesh_archive_write_failures_total",
        Counter,
        Unit::Count,
        "Batches the input archive could not write (left unacknowledged, retried), by stream.",
    ),
    family(
        "ratemesh_archive_files_deleted_total",
        Counter,
        Unit::Count,
        "Input archive day files deleted by retention.",
    ),
    family(
        "ratemesh_whatif_runs_total",
        Counter,
        Unit::Count,
        "What-if runs served over gRPC that ended, by outcome (completed, cancelled, time_limit, failed).",
    ),
];

/// Gives every family of [`FAMILIES`] its HELP text and unit, and sets build info.
fn describe_all() {
    for family in FAMILIES {
        let (name, unit, help) = (family.name, family.unit, family.help);
        match family.kind {
            Counter => metrics::describe_counter!(name, unit, help),
            Gauge => metrics::describe_gauge!(name, unit, help),
            Histogram => metrics::describe_histogram!(name, unit, help),
        }
    }
    metrics::gauge!("ratemesh_build_info", "version" => env!("CARGO_PKG_VERSION")).set(1.0);
}

/// The exposition `/metrics` serves: what the recorder holds, then the `process_*`
/// families of this process as they are now.
pub fn render() -> String {
    let mut page = prometheus().render();
    crate::process_metrics::render(&mut page);
    page
}

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
        describe_all();
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
