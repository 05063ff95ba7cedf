//! TLS on the listeners, through real sockets with certificates made at test time: a gRPC
//! call over TLS with the CA succeeds, a plaintext client gets nothing, mutual TLS refuses
//! a client without a certificate, a client certificate named in settings calls as its
//! principal, a renewed certificate is served without a restart, and the webhook listener
//! speaks HTTPS. `rediss://` from settings reaches a TLS Redis.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use ratemesh_bus::testkit::RedisServer;
use ratemesh_bus::testkit::certs::{TestCa, TlsFiles};
use ratemesh_bus::{Bus, BusOptions, Event};
use ratemesh_runtime::{App, Context, Readiness, ServiceModule, Settings};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::sync::oneshot;
use tonic::transport::{Certificate, ClientTlsConfig, Endpoint, Identity};
use tonic_health::pb::HealthCheckRequest;
use tonic_health::pb::health_check_response::ServingStatus;
use tonic_health::pb::health_client::HealthClient;

struct Running {
    grpc: SocketAddr,
    http: SocketAddr,
    _stop: oneshot::Sender<()>,
}

fn tls_settings(files: &TlsFiles) -> Settings {
    let mut settings = Settings::default();
    let any: SocketAddr = "127.0.0.1:0".parse().expect("addr");
    settings.server.grpc_addr = any;
    settings.server.http_addr = any;
    settings.server.admin_addr = any;
    settings.server.tls_cert_file = files.server_cert_file.display().to_string();
    settings.server.tls_key_file = files.server_key_file.display().to_string();
    settings.server.tls_reload_interval_ms = 50;
    settings
}

/// An app serving health over gRPC and `GET /ping` on the webhook port.
async fn start(settings: Settings) -> Running {
    ratemesh_runtime::telemetry::init_for_tests();
    let ctx = Context::new(
        settings,
        Bus::memory(BusOptions::embedded()).expect("embedded bus"),
    );
    let readiness = Readiness::new();
    readiness.set(true);
    let router = axum::Router::new().route("/ping", axum::routing::get(|| async { "pong" }));
    let module = ServiceModule::new("tls", readiness).http(router);
    let app = App::bind(&ctx, vec![module]).await.expect("bind");
    let (grpc, http) = (app.grpc_addr(), app.http_addr().expect("webhook port"));
    let (stop, stopped) = oneshot::channel::<()>();
    tokio::spawn(app.run(async move {
        let _ = stopped.await;
    }));
    Running {
        grpc,
        http,
        _stop: stop,
    }
}

/// Asks grpc.health.v1 at `uri` with `tls`; the error says what failed.
async fn health(uri: String, tls: Option<ClientTlsConfig>) -> Result<ServingStatus, String> {
    let mut endpoint = Endpoint::from_shared(uri)
        .expect("endpoint")
        .connect_timeout(Duration::from_secs(3))
        .timeout(Duration::from_secs(3));
    if let Some(tls) = tls {
        endpoint = endpoint.tls_config(tls).expect("tls config");
    }
    let channel = endpoint.connect().await.map_err(|e| format!("{e:?}"))?;
    let answer = HealthClient::new(channel)
        .check(HealthCheckRequest::default())
        .await
        .map_err(|e| format!("{e:?}"))?;
    Ok(ServingStatus::try_from(answer.into_inner().status).expect("status"))
}

fn trusting(ca_pem: &str) -> ClientTlsConfig {
    ClientTlsConfig::new()
        .ca_certificate(Certificate::from_pem(ca_pem))
        .domain_name("localhost")
}

#[tokio::test]
async fn a_grpc_call_over_tls_succeeds_with_the_ca_and_plaintext_gets_nothing() {
    let files = TlsFiles::new();
    let running = start(tls_settings(&files)).await;
    let https = format!("https://localhost:{}", running.grpc.port());

    let status = health(https.clone(), Some(trusting(&files.ca.cert_pem()))).await;
    assert_eq!(status, Ok(ServingStatus::Serving));

    let plaintext = health(format!("http://{}", running.grpc), None).await;
    assert!(
        plaintext.is_err(),
        "a plaintext call was answered: {plaintext:?}"
    );

    let untrusted = health(https, Some(trusting(&TestCa::new("other").cert_pem()))).await;
    assert!(untrusted.is_err(), "a client trusting another CA connected");
}

#[tokio::test]
async fn mutual_tls_refuses_a_client_without_a_certificate() {
    let files = TlsFiles::new();
    let mut settings = tls_settings(&files);
    settings.server.tls_client_ca_file = files.ca_file.display().to_string();
    let running = start(settings).await;
    let https = format!("https://localhost:{}", running.grpc.port());

    let without = health(https.clone(), Some(trusting(&files.ca.cert_pem()))).await;
    assert!(
        without.is_err(),
        "a client without a certificate was answered"
    );

    let identity = Identity::from_pem(
        std::fs::read(&files.client_cert_file).expect("client cert"),
        std::fs::read(&files.client_key_file).expect("client key"),
    );
    let with = health(
        https.clone(),
        Some(trusting(&files.ca.cert_pem()).identity(identity)),
    )
    .await;
    assert_eq!(with, Ok(ServingStatus::Serving));

    // A certificate from a CA the server does not trust is refused like none at all.
    let stranger = TestCa::new("stranger").client("mallory");
    let identity = Identity::from_pem(stranger.cert, stranger.key);
    let forged = health(
        https,
        Some(trusting(&files.ca.cert_pem()).identity(identity)),
    )
    .await;
    assert!(
        forged.is_err(),
        "a client certificate from an unknown CA was accepted"
    );
}

#[tokio::test]
async fn optional_client_certificates_let_a_client_without_one_in() {
    let files = TlsFiles::new();
    let mut settings = tls_settings(&files);
    settings.server.tls_client_ca_file = files.ca_file.display().to_string();
    settings.server.tls_client_cert_required = false;
    let running = start(settings).await;
    let https = format!("https://localhost:{}", running.grpc.port());
    let status = health(https, Some(trusting(&files.ca.cert_pem()))).await;
    assert_eq!(status, Ok(ServingStatus::Serving));
}

#[tokio::test]
async fn a_renewed_certificate_is_served_without_a_restart() {
    let files = TlsFiles::new();
    let running = start(tls_settings(&files)).await;
    let https = format!("https://localhost:{}", running.grpc.port());
    let renewed_by = TestCa::new("renewal ca");
    assert!(
        health(https.clone(), Some(trusting(&renewed_by.cert_pem())))
            .await
            .is_err(),
        "the new CA cannot be trusted before the renewal"
    );

    files.write_server(&renewed_by.server());
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        match health(https.clone(), Some(trusting(&renewed_by.cert_pem()))).await {
            Ok(status) => {
                assert_eq!(status, ServingStatus::Serving);
                break;
            }
            Err(e) if Instant::now() > deadline => {
                panic!("the renewed certificate was never served: {e}")
            }
            Err(_) => tokio::time::sleep(Duration::from_millis(50)).await,
        }
    }
    // New connections no longer get the old certificate.
    let old = health(https, Some(trusting(&files.ca.cert_pem()))).await;
    assert!(old.is_err(), "the replaced certificate is still served");
}

#[tokio::test]
async fn a_certificate_file_that_does_not_parse_stops_the_start_naming_the_key() {
    let files = TlsFiles::new();
    std::fs::write(&files.server_cert_file, "not a certificate").expect("write");
    let settings = tls_settings(&files);
    let ctx = Context::new(
        settings.clone(),
        Bus::memory(BusOptions::embedded()).expect("embedded bus"),
    );
    let err = App::bind(&ctx, vec![])
        .await
        .expect_err("a bad certificate must stop the start");
    assert!(
        format!("{err:#}").contains("server.tls_cert_file"),
        "{err:#}"
    );
    let err = ratemesh_runtime::tls::check(&settings).expect_err("config check");
    assert_eq!(err.key, "server.tls_cert_file");
}

/// `GET /ping` over TLS on the webhook port, raw HTTP/1.1, returning the response.
async fn https_get(addr: SocketAddr, ca_pem: &str) -> std::io::Result<String> {
    let mut roots = rustls::RootCertStore::empty();
    for cert in ratemesh_runtime::tls::load_certs_pem(ca_pem.as_bytes()) {
        roots.add(cert).expect("ca");
    }
    let config = rustls::ClientConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .expect("versions")
    .with_root_certificates(roots)
    .with_no_client_auth();
    let connector = tokio_rustls::TlsConnector::from(Arc::new(config));
    let tcp = tokio::net::TcpStream::connect(addr).await?;
    let name = rustls::pki_types::ServerName::try_from("localhost").expect("name");
    let mut tls = connector.connect(name, tcp).await?;
    tls.write_all(b"GET /ping HTTP/1.1\r\nhost: localhost\r\nconnection: close\r\n\r\n")
        .await?;
    let mut response = String::new();
    tls.read_to_string(&mut response).await?;
    Ok(response)
}

#[tokio::test]
async fn the_webhook_listener_serves_https_and_refuses_plaintext() {
    let files = TlsFiles::new();
    let running = start(tls_settings(&files)).await;
    let response = https_get(running.http, &files.ca.cert_pem())
        .await
        .expect("https request");
    assert!(response.starts_with("HTTP/1.1 200"), "{response}");
    assert!(response.ends_with("pong"), "{response}");

    let mut plain = tokio::net::TcpStream::connect(running.http)
        .await
        .expect("connect");
    plain
        .write_all(b"GET /ping HTTP/1.1\r\nhost: localhost\r\nconnection: close\r\n\r\n")
        .await
        .expect("write");
    let mut answer = Vec::new();
    let _ = plain.read_to_end(&mut answer).await;
    assert!(
        !String::from_utf8_lossy(&answer).contains("pong"),
        "a plaintext request was served"
    );
}

#[tokio::test]
async fn with_http_tls_off_the_webhook_listener_stays_plaintext_behind_an_ingress() {
    let files = TlsFiles::new();
    let mut settings = tls_settings(&files);
    settings.server.http_tls = false;
    let running = start(settings).await;
    let mut plain = tokio::net::TcpStream::connect(running.http)
        .await
        .expect("connect");
    plain
        .write_all(b"GET /ping HTTP/1.1\r\nhost: localhost\r\nconnection: close\r\n\r\n")
        .await
        .expect("write");
    let mut answer = String::new();
    plain.read_to_string(&mut answer).await.expect("read");
    assert!(answer.ends_with("pong"), "{answer}");
    // gRPC keeps its TLS.
    let https = format!("https://localhost:{}", running.grpc.port());
    let status = health(https, Some(trusting(&files.ca.cert_pem()))).await;
    assert_eq!(status, Ok(ServingStatus::Serving));
}

#[tokio::test]
async fn a_rediss_url_in_settings_connects_over_tls() {
    let files = TlsFiles::new();
    let server = RedisServer::start_tls(&files, false);
    let mut settings = Settings::default();
    settings.redis.url = server.tls_url();
    settings.redis.key_prefix = server.unique_prefix();
    settings.redis.tls_ca_file = files.ca_file.display().to_string();
    settings.validate().expect("valid settings");
    ratemesh_runtime::tls::check(&settings).expect("config check loads the CA");
    let bus = ratemesh_runtime::backend::connect(&settings)
        .await
        .expect("connect");
    bus.publish("stock", Event::new("SKU-1", "x"))
        .await
        .expect("publish over TLS");

    // The CA belongs to TLS URLs only.
    settings.redis.url = server.url();
    let err = settings.validate().expect_err("a CA with a redis:// url");
    assert_eq!(err.key, "redis.tls_ca_file");
}

/// Who may call `test.v1.Who/Check`: network principals.
const WHO_ACCESS: ratemesh_runtime::auth::MethodRoles =
    &[("Check", &[ratemesh_runtime::Role::Network])];

/// Answers SERVING when the call runs as the `pricing-sync` network principal.
#[derive(Clone)]
struct WhoHealth;

#[tonic::async_trait]
impl tonic_health::pb::health_server::Health for WhoHealth {
    async fn check(
        &self,
        request: tonic::Request<HealthCheckRequest>,
    ) -> Result<tonic::Response<tonic_health::pb::HealthCheckResponse>, tonic::Status> {
        let principal = ratemesh_runtime::Principal::of(&request).expect("principal");
        let status = if principal.name == "pricing-sync"
            && principal.role == ratemesh_runtime::Role::Network
        {
            ServingStatus::Serving
        } else {
            ServingStatus::ServiceUnknown
        };
        Ok(tonic::Response::new(
            tonic_health::pb::HealthCheckResponse {
                status: status as i32,
            },
        ))
    }

    type WatchStream =
        tokio_stream::Empty<Result<tonic_health::pb::HealthCheckResponse, tonic::Status>>;

    async fn watch(
        &self,
        _request: tonic::Request<HealthCheckRequest>,
    ) -> Result<tonic::Response<Self::WatchStream>, tonic::Status> {
        Err(tonic::Status::unimplemented("not used"))
    }
}

/// [`WhoHealth`] mounted as `test.v1.Who`, a service that needs a principal.
#[derive(Clone)]
struct Who(tonic_health::pb::health_server::HealthServer<WhoHealth>);

impl tonic::server::NamedService for Who {
    const NAME: &'static str = "test.v1.Who";
}

impl tower::Service<http::Request<tonic::body::Body>> for Who {
    type Response = http::Response<tonic::body::Body>;
    type Error = std::convert::Infallible;
    type Future = <tonic_health::pb::health_server::HealthServer<WhoHealth> as tower::Service<
        http::Request<tonic::body::Body>,
    >>::Future;

    fn poll_ready(
        &mut self,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Result<(), Self::Error>> {
        tower::Service::<http::Request<tonic::body::Body>>::poll_ready(&mut self.0, cx)
    }

    fn call(&mut self, mut request: http::Request<tonic::body::Body>) -> Self::Future {
        *request.uri_mut() = "/grpc.health.v1.Health/Check".parse().expect("uri");
        self.0.call(request)
    }
}

/// Calls `test.v1.Who/Check` over TLS with `identity`, without an API key.
async fn who(port: u16, ca_pem: &str, identity: Identity) -> Result<ServingStatus, tonic::Status> {
    let channel = Endpoint::from_shared(format!("https://localhost:{port}"))
        .expect("endpoint")
        .tls_config(trusting(ca_pem).identity(identity))
        .expect("tls")
        .connect()
        .await
        .map_err(|e| tonic::Status::unavailable(format!("{e:?}")))?;
    let mut client = tonic::client::Grpc::new(channel);
    client.ready().await.expect("ready");
    let response: tonic::Response<tonic_health::pb::HealthCheckResponse> = client
        .unary(
            tonic::Request::new(HealthCheckRequest::default()),
            http::uri::PathAndQuery::from_static("/test.v1.Who/Check"),
            tonic_prost::ProstCodec::default(),
        )
        .await?;
    Ok(ServingStatus::try_from(response.into_inner().status).expect("status"))
}

#[tokio::test]
async fn a_client_certificate_named_in_settings_calls_as_its_principal_without_a_key() {
    let files = TlsFiles::new();
    let mut settings = tls_settings(&files);
    settings.server.tls_client_ca_file = files.ca_file.display().to_string();
    settings.server.tls_client_cert_required = false;
    settings
        .server
        .tls_client_principals
        .push(ratemesh_runtime::settings::CertPrincipalSettings {
            name: "pricing-sync".into(),
            role: ratemesh_runtime::Role::Network,
            dns_name: "pricing-sync.svc.internal".into(),
            partner_id: None,
        });
    settings.validate().expect("valid settings");
    ratemesh_runtime::telemetry::init_for_tests();
    let ctx = Context::new(
        settings,
        Bus::memory(BusOptions::embedded()).expect("embedded bus"),
    );
    let readiness = Readiness::new();
    readiness.set(true);
    let module = ServiceModule::new("who", readiness).grpc(
        Who(tonic_health::pb::health_server::HealthServer::new(
            WhoHealth,
        )),
        WHO_ACCESS,
    );
    let app = App::bind(&ctx, vec![module]).await.expect("bind");
    let port = app.grpc_addr().port();
    let (_stop, stopped) = oneshot::channel::<()>();
    tokio::spawn(app.run(async move {
        let _ = stopped.await;
    }));
    let ca = files.ca.cert_pem();

    let named = files.ca.client("pricing-sync.svc.internal");
    let status = who(port, &ca, Identity::from_pem(named.cert, named.key)).await;
    assert_eq!(
        status.expect("call as pricing-sync"),
        ServingStatus::Serving
    );

    // A verified certificate that no principal names gets no identity: no key, no call.
    let unnamed = std::fs::read(&files.client_cert_file).expect("client cert");
    let key = std::fs::read(&files.client_key_file).expect("client key");
    let err = who(port, &ca, Identity::from_pem(unnamed, key))
        .await
        .expect_err("an unnamed certificate");
    assert_eq!(err.code(), tonic::Code::Unauthenticated, "{err:?}");

    // The same name from a CA the server does not trust never gets past the handshake.
    let forged = TestCa::new("forger").client("pricing-sync.svc.internal");
    let err = who(port, &ca, Identity::from_pem(forged.cert, forged.key))
        .await
        .expect_err("a forged certificate");
    assert_ne!(err.code(), tonic::Code::Ok);
}

#[test]
fn certificate_principals_need_client_certificates_and_a_valid_name() {
    let files = TlsFiles::new();
    let mut settings = tls_settings(&files);
    settings
        .server
        .tls_client_principals
        .push(ratemesh_runtime::settings::CertPrincipalSettings {
            name: "pricing-sync".into(),
            role: ratemesh_runtime::Role::Network,
            dns_name: "pricing-sync.svc.internal".into(),
            partner_id: None,
        });
    let err = settings.validate().expect_err("no client CA");
    assert_eq!(err.key, "server.tls_client_principals[0].dns_name");
    settings.server.tls_client_ca_file = files.ca_file.display().to_string();
    settings.validate().expect("valid");
    settings.server.tls_client_principals[0].dns_name = "not a name!".into();
    let err = settings.validate().expect_err("bad name");
    assert_eq!(err.key, "server.tls_client_principals[0].dns_name");
}
