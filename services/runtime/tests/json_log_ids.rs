//! A JSON log line logged inside a span carries the OpenTelemetry `trace_id` and `span_id`
//! of that span; a line outside any span carries neither. The subscriber is installed
//! process-wide, as `telemetry::init` installs it, so this is a test binary of its own.

use std::io::Write;
use std::sync::{Arc, Mutex};

use opentelemetry::trace::TracerProvider as _;
use ratemesh_bus::trace_context::traceparent_of;
use tracing_subscriber::layer::SubscriberExt;

#[derive(Clone, Default)]
struct Lines(Arc<Mutex<Vec<u8>>>);

impl Write for Lines {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

impl Lines {
    fn json(&self) -> Vec<serde_json::Value> {
        let bytes = self.0.lock().unwrap().clone();
        String::from_utf8(bytes)
            .unwrap()
            .lines()
            .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("{e}: {l}")))
            .collect()
    }
}

#[test]
fn json_lines_in_a_span_carry_its_trace_and_span_ids() {
    let lines = Lines::default();
    let provider = opentelemetry_sdk::trace::SdkTracerProvider::builder().build();
    let writer = lines.clone();
    let subscriber = tracing_subscriber::registry()
        .with(tracing_opentelemetry::layer().with_tracer(provider.tracer("test")))
        .with(ratemesh_runtime::telemetry::json_logs(move || {
            writer.clone()
        }));
    tracing::subscriber::set_global_default(subscriber).expect("the only subscriber");

    tracing::info!("outside any span");
    let span = tracing::info_span!("stream.process", stream = "stock");
    let traceparent = traceparent_of(&span).expect("a trace");
    span.in_scope(|| tracing::info!(sku = "SKU-1", "rate updated"));

    let json = lines.json();
    assert_eq!(json.len(), 2, "{json:?}");
    assert!(json[0].get("trace_id").is_none(), "{}", json[0]);
    let inside = &json[1];
    assert_eq!(inside["message"], "rate updated");
    assert_eq!(inside["sku"], "SKU-1");
    assert_eq!(inside["span"]["stream"], "stock", "{inside}");
    assert_eq!(inside["trace_id"], traceparent[3..35], "{inside}");
    assert_eq!(inside["span_id"], traceparent[36..52], "{inside}");
}
