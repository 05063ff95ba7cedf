//! Trace export to an `https://` OTLP collector: spans reach a collector that serves TLS
//! with a certificate from a private CA named by `telemetry.otlp_ca_file`. (Its own test
//! binary: the tracing subscriber is global to the process.)

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use opentelemetry_proto::tonic::collector::trace::v1::trace_service_server::{
    TraceService, TraceServiceServer,
};
use opentelemetry_proto::tonic::collector::trace::v1::{
    ExportTraceServiceRequest, ExportTraceServiceResponse,
};
use ratemesh_bus::testkit::certs::TlsFiles;
use ratemesh_runtime::Settings;
use ratemesh_runtime::tls::ServerTls;
use tokio_util::sync::CancellationToken;

/// Span names received by the collector.
#[derive(Clone, Default)]
struct Received(Arc<Mutex<Vec<String>>>);

#[tonic::async_trait]
impl TraceService for Received {
    async fn export(
        &self,
        request: tonic::Request<ExportTraceServiceRequest>,
    ) -> Result<tonic::Response<ExportTraceServiceResponse>, tonic::Status> {
        let names = request
            .into_inner()
            .resource_spans
            .into_iter()
            .flat_map(|r| r.scope_spans)
            .flat_map(|s| s.spans)
            .map(|s| s.name);
        self.0.lock().expect("lock").extend(names);
        Ok(tonic::Response::new(ExportTraceServiceResponse::default()))
    }
}

#[tokio::test]
async fn spans_are_exported_to_an_https_collector_with_a_private_ca() {
    let files = TlsFiles::new();
    let mut collector_settings = Settings::default();
    collector_settings.server.tls_cert_file = files.server_cert_file.display().to_string();
    collector_settings.server.tls_key_file = files.server_key_file.display().to_string();
    let tls = ServerTls::from_settings(&collector_settings.server)
        .expect("collector tls")
        .expect("tls on");
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let port = listener.local_addr().expect("addr").port();
    let received = Received::default();
    let service = TraceServiceServer::new(received.clone());
    let incoming = ratemesh_runtime::tls::incoming(listener, tls.grpc, CancellationToken::new());
    tokio::spawn(
        tonic::transport::Server::builder()
            .add_service(service)
            .serve_with_incoming(incoming),
    );

    let mut settings = Settings::default();
    settings.telemetry.otlp_endpoint = format!("https://localhost:{port}");
    settings.telemetry.otlp_ca_file = files.ca_file.display().to_string();
    settings.telemetry.log_filter = "warn".into();
    let guard = ratemesh_runtime::telemetry::init(&settings.telemetry).expect("telemetry");
    tracing::info_span!("exported over tls").in_scope(|| {});

    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        guard.flush().await;
        if received
            .0
            .lock()
            .expect("lock")
            .iter()
            .any(|n| n == "exported over tls")
        {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the span never reached the https collector"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    guard.shutdown().await;
}

#[test]
fn a_ca_file_needs_an_https_endpoint() {
    let mut settings = Settings::default();
    settings.telemetry.otlp_endpoint = "http://collector:4317".into();
    settings.telemetry.otlp_ca_file = "/etc/ratemesh/ca.pem".into();
    let err = ratemesh_runtime::tls::otlp_client_tls(&settings.telemetry).expect_err("refused");
    assert_eq!(err.key, "telemetry.otlp_ca_file");
}
