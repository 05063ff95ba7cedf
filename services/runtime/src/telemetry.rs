//! Logs and traces: a `tracing` subscriber with pretty or JSON output, and an OpenTelemetry
//! layer so every span has a W3C trace context, exported over OTLP when an endpoint is set.
//! A JSON log line logged inside a span carries that span's `trace_id` and `span_id`
//! ([`WithTraceIds`]).
//!
//! The trace context exists even without an exporter: requests, stream entries and partner
//! webhooks carry `traceparent` either way, so traces join up once a collector is added.

use std::io::IsTerminal;
use std::sync::OnceLock;
use std::time::Duration;

use opentelemetry::trace::TracerProvider as _;
use opentelemetry_sdk::Resource;
use opentelemetry_sdk::trace::{Sampler, SdkTracerProvider};
use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::util::SubscriberInitExt;
use tracing_subscriber::{EnvFilter, Layer};

use crate::settings::{LogFormat, TelemetrySettings};

mod trace_ids;
pub use trace_ids::WithTraceIds;

/// What the installed subscriber does with spans, for code deciding whether a span is worth
/// starting at all.
#[derive(Debug, Clone, Copy, PartialEq)]
pub(crate) struct SpanExport {
    /// Whether spans leave the process (an OTLP endpoint is set).
    pub(crate) exported: bool,
    /// The fraction of new traces sampled.
    pub(crate) sample_ratio: f64,
}

/// Set by the first subscriber installed; until then (and in processes without one) no
/// span is exported.
static SPAN_EXPORT: OnceLock<SpanExport> = OnceLock::new();

/// What the process's subscriber does with spans.
pub(crate) fn span_export() -> SpanExport {
    SPAN_EXPORT.get().copied().unwrap_or(SpanExport {
        exported: false,
        sample_ratio: 0.0,
    })
}

/// Flushes and shuts down trace export when the process stops.
#[must_use = "dropping the guard without `shutdown` may lose the last spans"]
pub struct TelemetryGuard {
    provider: Option<SdkTracerProvider>,
}

impl TelemetryGuard {
    /// Exports the spans ended so far now rather than at the next batch (on a blocking
    /// thread, as the SDK's flush blocks).
    pub async fn flush(&self) {
        if let Some(provider) = self.provider.clone() {
            let result = tokio::task::spawn_blocking(move || provider.force_flush()).await;
            if let Ok(Err(err)) = result {
                eprintln!("trace export did not flush: {err}");
            }
        }
    }

    /// Flushes pending spans (bounded by a timeout, on a blocking thread because the SDK's
    /// shutdown blocks).
    pub async fn shutdown(mut self) {
        if let Some(provider) = self.provider.take() {
            let result = tokio::task::spawn_blocking(move || {
                provider.shutdown_with_timeout(Duration::from_secs(5))
            })
            .await;
            if let Ok(Err(err)) = result {
                eprintln!("trace export did not shut down cleanly: {err}");
            }
        }
    }
}

/// Installs the global subscriber. Returns an error if one is already installed (tests call
/// [`init_for_tests`] instead) or the OTLP exporter cannot be built.
pub fn init(settings: &TelemetrySettings) -> anyhow::Result<TelemetryGuard> {
    let (provider, layers) = build_layers(settings)?;
    tracing_subscriber::registry()
        .with(layers)
        .try_init()
        .map_err(|e| anyhow::anyhow!("installing the tracing subscriber: {e}"))?;
    record_span_export(settings);
    Ok(TelemetryGuard {
        provider: Some(provider),
    })
}

/// Installs a quiet subscriber with trace context once per test process; later calls are
/// no-ops.
pub fn init_for_tests() {
    static ONCE: std::sync::OnceLock<()> = std::sync::OnceLock::new();
    ONCE.get_or_init(|| {
        let settings = TelemetrySettings {
            log_format: LogFormat::Pretty,
            log_filter: "warn".into(),
            otlp_endpoint: String::new(),
            otlp_ca_file: String::new(),
            service_name: "ratemesh-test".into(),
            sample_ratio: 1.0,
            gauge_interval_ms: 5_000,
        };
        if let Ok((provider, layers)) = build_layers(&settings) {
            if tracing_subscriber::registry()
                .with(layers)
                .try_init()
                .is_ok()
            {
                record_span_export(&settings);
            }
            // Kept for the life of the process: tests never flush.
            std::mem::forget(provider);
        }
    });
}

/// The log layer of `log_format = "json"`, writing to `writer`: one JSON object a line,
/// event fields flattened, the current span and its parents, and the OpenTelemetry
/// `trace_id` and `span_id` of the span the line was logged in.
pub fn json_logs<S, W>(writer: W) -> impl Layer<S> + Send + Sync
where
    S: tracing::Subscriber + for<'a> tracing_subscriber::registry::LookupSpan<'a>,
    W: for<'w> tracing_subscriber::fmt::MakeWriter<'w> + Send + Sync + 'static,
{
    tracing_subscriber::fmt::layer()
        .with_writer(writer)
        .with_ansi(false)
        .json()
        .flatten_event(true)
        .with_current_span(true)
        .map_event_format(WithTraceIds::new)
}

fn record_span_export(settings: &TelemetrySettings) {
    let _ = SPAN_EXPORT.set(SpanExport {
        exported: settings.otlp_endpoint().is_some(),
        sample_ratio: settings.sample_ratio,
    });
}

type BoxedLayer = Box<dyn Layer<tracing_subscriber::Registry> + Send + Sync>;

fn build_layers(
    settings: &TelemetrySettings,
) -> anyhow::Result<(SdkTracerProvider, Vec<BoxedLayer>)> {
    let filter = EnvFilter::try_from_default_env()
        .or_else(|_| EnvFilter::try_new(&settings.log_filter))
        .map_err(|e| anyhow::anyhow!("telemetry.log_filter: {e}"))?;

    let mut provider = SdkTracerProvider::builder()
        .with_sampler(Sampler::ParentBased(Box::new(Sampler::TraceIdRatioBased(
            settings.sample_ratio,
        ))))
        .with_resource(
            Resource::builder()
                .with_service_name(settings.service_name.clone())
                .build(),
        );
    if let Some(endpoint) = settings.otlp_endpoint() {
        use opentelemetry_otlp::{WithExportConfig, WithTonicConfig};
        let exporter = opentelemetry_otlp::SpanExporter::builder()
            .with_tonic()
            .with_endpoint(endpoint)
            .with_timeout(Duration::from_secs(5));
        let exporter = match crate::tls::otlp_client_tls(settings)? {
            Some(tls) => exporter.with_tls_config(tls),
            None => exporter,
        };
        let exporter = exporter
            .build()
            .map_err(|e| anyhow::anyhow!("telemetry.otlp_endpoint: {e}"))?;
        provider = provider.with_batch_exporter(exporter);
    }
    let provider = provider.build();
    let tracer = provider.tracer("ratemesh");

    // Logs go to stdout; colour codes only help a terminal. Piped into a file, a log
    // collector or `grep`, they are noise.
    let ansi = std::io::stdout().is_terminal();
    let fmt: BoxedLayer = match settings.log_format {
        LogFormat::Pretty => tracing_subscriber::fmt::layer()
            .with_ansi(ansi)
            .with_target(false)
            .compact()
            .boxed(),
        LogFormat::Json => json_logs(std::io::stdout).boxed(),
    };
    // Traces follow their own filter, not the log level: quieting logs to `warn` must not
    // break trace context, which rides on info-level spans.
    let trace_filter = tracing_subscriber::filter::Targets::new()
        .with_default(tracing::Level::INFO)
        .with_target("h2", tracing::Level::WARN)
        .with_target("hyper", tracing::Level::WARN)
        .with_target("tower", tracing::Level::WARN);
    let layers = vec![
        fmt.with_filter(filter).boxed(),
        tracing_opentelemetry::layer()
            .with_tracer(tracer)
            .with_filter(trace_filter)
            .boxed(),
    ];
    Ok((provider, layers))
}
