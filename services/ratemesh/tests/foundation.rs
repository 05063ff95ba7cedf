//! The shared plumbing, through real sockets: health, reflection, authentication, roles,
//! metrics.

use ratemesh_proto::v1::override_service_client::OverrideServiceClient;
use ratemesh_proto::v1::rate_service_client::RateServiceClient;
use ratemesh_proto::v1::{GetRateRequest, SetOverrideRequest};
use ratemesh_runtime::Role;
use ratemesh_testkit::{Bearer, TestApp};
use tonic::Code;
use tonic_health::pb::health_check_response::ServingStatus;
use tonic_reflection::pb::v1::ServerReflectionRequest;
use tonic_reflection::pb::v1::server_reflection_client::ServerReflectionClient;
use tonic_reflection::pb::v1::server_reflection_request::MessageRequest;
use tonic_reflection::pb::v1::server_reflection_response::MessageResponse;

#[tokio::test]
async fn health_reports_every_service_serving() {
    let app = TestApp::spawn().await;
    assert_eq!(app.health("").await, ServingStatus::Serving);
    for service in ratemesh_proto::SERVICE_NAMES {
        assert_eq!(
            app.health(service).await,
            ServingStatus::Serving,
            "{service}"
        );
    }
    app.stop().await.expect("clean stop");
}

#[tokio::test]
async fn reflection_lists_every_service() {
    let app = TestApp::spawn().await;
    let mut client = ServerReflectionClient::new(app.channel().await);
    let request = ServerReflectionRequest {
        host: String::new(),
        message_request: Some(MessageRequest::ListServices(String::new())),
    };
    let mut responses = client
        .server_reflection_info(tokio_stream::iter([request]))
        .await
        .expect("reflection call")
        .into_inner();
    let response = responses
        .message()
        .await
        .expect("stream")
        .expect("one response");
    let Some(MessageResponse::ListServicesResponse(list)) = response.message_response else {
        panic!("unexpected reflection answer: {response:?}");
    };
    let names: Vec<_> = list.service.into_iter().map(|s| s.name).collect();
    for service in ratemesh_proto::SERVICE_NAMES {
        assert!(
            names.iter().any(|n| n == service),
            "{service} missing from {names:?}"
        );
    }
    assert!(
        names.iter().any(|n| n == "grpc.health.v1.Health"),
        "{names:?}"
    );
    app.stop().await.expect("clean stop");
}

#[tokio::test]
async fn a_call_without_a_key_is_unauthenticated() {
    let app = TestApp::spawn().await;
    let mut client = RateServiceClient::with_interceptor(app.channel().await, Bearer::none());
    let status = client
        .get_rate(GetRateRequest {
            sku: "SKU-1".into(),
            as_of: None,
        })
        .await
        .expect_err("no key");
    assert_eq!(status.code(), Code::Unauthenticated, "{status:?}");

    let mut client =
        RateServiceClient::with_interceptor(app.channel().await, Bearer::key("not-a-key"));
    let status = client
        .get_rate(GetRateRequest {
            sku: "SKU-1".into(),
            as_of: None,
        })
        .await
        .expect_err("unknown key");
    assert_eq!(status.code(), Code::Unauthenticated, "{status:?}");
    app.stop().await.expect("clean stop");
}

#[tokio::test]
async fn a_network_key_may_not_set_overrides() {
    let app = TestApp::spawn().await;
    let mut client =
        OverrideServiceClient::with_interceptor(app.channel().await, Bearer::role(Role::Network));
    let status = client
        .set_override(SetOverrideRequest::default())
        .await
        .expect_err("wrong role");
    assert_eq!(status.code(), Code::PermissionDenied, "{status:?}");
    assert!(status.message().contains("network"), "{}", status.message());

    // The merchandiser passes the role check and reaches the service itself.
    let mut client = OverrideServiceClient::with_interceptor(
        app.channel().await,
        Bearer::role(Role::Merchandiser),
    );
    let status = client
        .set_override(SetOverrideRequest::default())
        .await
        .expect_err("empty request");
    assert_ne!(status.code(), Code::PermissionDenied, "{status:?}");
    assert_ne!(status.code(), Code::Unauthenticated, "{status:?}");
    app.stop().await.expect("clean stop");
}

#[tokio::test]
async fn metrics_count_requests_by_method_and_code() {
    let app = TestApp::spawn().await;
    let mut client = RateServiceClient::with_interceptor(app.channel().await, Bearer::none());
    for _ in 0..3 {
        let _ = client
            .get_rate(GetRateRequest {
                sku: "SKU-1".into(),
                as_of: None,
            })
            .await;
    }
    let (status, body) = app.admin_get("/metrics").await;
    assert_eq!(status, 200);
    let line = body
        .lines()
        .find(|l| {
            l.starts_with("ratemesh_grpc_requests_total")
                && l.contains("method=\"RateService/GetRate\"")
                && l.contains("code=\"Unauthenticated\"")
        })
        .unwrap_or_else(|| panic!("no request counter in:\n{body}"));
    let count: f64 = line
        .rsplit(' ')
        .next()
        .and_then(|v| v.parse().ok())
        .expect("a number");
    // The recorder is process-wide and tests run in parallel: at least our three calls.
    assert!(count >= 3.0, "{line}");
    app.stop().await.expect("clean stop");
}

#[tokio::test]
async fn admin_port_reports_liveness_and_readiness() {
    let mut app = TestApp::spawn().await;
    assert_eq!(app.admin_get("/livez").await.0, 200);
    assert_eq!(app.admin_get("/readyz").await.0, 200);
    let admin = app.admin;
    app.begin_stop();
    app.stopped().await.expect("clean stop");
    // Once stopped, the admin port is closed.
    assert!(tokio::net::TcpStream::connect(admin).await.is_err());
}
