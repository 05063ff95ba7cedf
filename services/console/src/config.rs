//! What the console is built from: the same key table the gRPC servers use, the gRPC
//! endpoint of each service its gateway calls, and its listener's TLS and connection limits.

use std::net::SocketAddr;
use std::time::Duration;

use anyhow::Context as _;
use ratemesh_runtime::Settings;
use ratemesh_runtime::auth::ApiKeys;
use ratemesh_runtime::http_server::ConnectionLimits;
use ratemesh_runtime::tls::ServerTls;
use tokio_rustls::TlsAcceptor;
use tonic::transport::{Channel, ClientTlsConfig, Endpoint};

/// How a console is built.
#[derive(Clone)]
pub struct ConsoleConfig {
    /// The keys users sign in with: the gRPC servers' own table, so a key works (or not)
    /// in both the same way.
    pub keys: ApiKeys,
    /// The gRPC services the gateway calls, a channel per service.
    pub channels: ServiceChannels,
    /// A session unused for this long ends.
    pub session_idle: Duration,
    /// TLS of the console's listener; with it the session cookie is `Secure`.
    pub tls: Option<TlsAcceptor>,
    /// Connection limits of the console's listener (the webhook listener's).
    pub limits: ConnectionLimits,
}

impl ConsoleConfig {
    /// A console for this process: signs in against `settings.auth.keys`, calls each
    /// service at its endpoint ([`ServiceEndpoints::from_settings`]), and serves TLS when
    /// the webhook listener does (`server.tls_*` with `server.http_tls`). Needs a tokio
    /// runtime.
    pub fn from_settings(settings: &Settings, grpc_addr: SocketAddr) -> anyhow::Result<Self> {
        let server = &settings.server;
        let endpoints = ServiceEndpoints::from_settings(settings, grpc_addr)?;
        let channels = ServiceChannels {
            rates: channel("console.rates_endpoint", &endpoints.rates)?,
            incentives: channel("console.incentives_endpoint", &endpoints.incentives)?,
            notifier: channel("console.notifier_endpoint", &endpoints.notifier)?,
            policy: channel("console.policy_endpoint", &endpoints.policy)?,
        };
        let tls = match server.http_tls {
            true => ServerTls::from_settings(server)?.map(|tls| tls.http),
            false => None,
        };
        Ok(Self {
            keys: ApiKeys::from_settings(&settings.auth),
            channels,
            session_idle: Duration::from_secs(settings.console.session_idle_minutes * 60),
            tls,
            limits: server.http_limits(),
        })
    }
}

/// Where the gateway reaches each service. With one Deployment per service, each is its
/// own address; under `ratemesh up` one process serves them all.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ServiceEndpoints {
    /// `RateService` and `OverrideService`.
    pub rates: String,
    /// `IncentiveService`.
    pub incentives: String,
    /// `PartnerService`.
    pub notifier: String,
    /// `PolicyService` (what-if runs), served where the input archive is kept.
    pub policy: String,
}

impl ServiceEndpoints {
    /// Each of `console.rates_endpoint`, `console.incentives_endpoint`,
    /// `console.notifier_endpoint` and `console.policy_endpoint`, or else `console.grpc_endpoint`, or else `grpc_addr`
    /// (this process's gRPC listener). When the gRPC port serves TLS every endpoint must be
    /// given, as `https://` and by a name the certificate is valid for; an error names the
    /// key to set.
    pub fn from_settings(settings: &Settings, grpc_addr: SocketAddr) -> anyhow::Result<Self> {
        let console = &settings.console;
        let tls = settings.server.tls_enabled();
        let shared = console.grpc_endpoint.trim();
        let resolve = |key: &str, own: &str| -> anyhow::Result<String> {
            let own = own.trim();
            let (key, endpoint) = match (own.is_empty(), shared.is_empty()) {
                (false, _) => (key, own),
                (true, false) => ("console.grpc_endpoint", shared),
                (true, true) => {
                    anyhow::ensure!(
                        !tls,
                        "invalid config: {key} (or console.grpc_endpoint): is required when \
                         server.tls_cert_file is set (the console must call the gRPC port by a \
                         name its certificate is valid for)"
                    );
                    return Ok(format!("http://{}", reachable(grpc_addr)));
                }
            };
            anyhow::ensure!(
                !tls || endpoint.starts_with("https://"),
                "invalid config: {key}: `{endpoint}` must be https:// when server.tls_cert_file \
                 is set (the gRPC ports serve TLS)"
            );
            Ok(endpoint.to_owned())
        };
        Ok(Self {
            rates: resolve("console.rates_endpoint", &console.rates_endpoint)?,
            incentives: resolve("console.incentives_endpoint", &console.incentives_endpoint)?,
            notifier: resolve("console.notifier_endpoint", &console.notifier_endpoint)?,
            policy: resolve("console.policy_endpoint", &console.policy_endpoint)?,
        })
    }
}

/// A channel per service, each lazily connected.
#[derive(Clone, Debug)]
pub struct ServiceChannels {
    /// `RateService` and `OverrideService`.
    pub rates: Channel,
    /// `IncentiveService`.
    pub incentives: Channel,
    /// `PartnerService`.
    pub notifier: Channel,
    /// `PolicyService`.
    pub policy: Channel,
}

impl ServiceChannels {
    /// One channel for every service, as under `ratemesh up`.
    pub fn shared(channel: Channel) -> Self {
        Self {
            rates: channel.clone(),
            incentives: channel.clone(),
            notifier: channel.clone(),
            policy: channel,
        }
    }
}

/// A lazily connected channel to `endpoint`, the value of setting `key`; `https://` is
/// checked against the system's trusted roots.
pub fn channel(key: &str, endpoint: &str) -> anyhow::Result<Channel> {
    let mut builder = Endpoint::from_shared(endpoint.to_owned())
        .with_context(|| format!("{key}: `{endpoint}` is not a URL"))?
        .connect_timeout(Duration::from_secs(5));
    if builder.uri().scheme() == Some(&http::uri::Scheme::HTTPS) {
        builder = builder
            .tls_config(ClientTlsConfig::new().with_native_roots())
            .with_context(|| format!("{key}: TLS"))?;
    }
    Ok(builder.connect_lazy())
}

/// Where this machine reaches a listener bound to `addr`.
fn reachable(addr: SocketAddr) -> SocketAddr {
    match addr.ip().is_unspecified() {
        true => SocketAddr::new(
            match addr {
                SocketAddr::V4(_) => [127, 0, 0, 1].into(),
                SocketAddr::V6(_) => std::net::Ipv6Addr::LOCALHOST.into(),
            },
            addr.port(),
        ),
        false => addr,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn grpc() -> SocketAddr {
        "0.0.0.0:50051".parse().expect("addr")
    }

    #[test]
    fn each_service_falls_back_to_the_shared_endpoint_then_to_this_process() {
        let mut settings = Settings::default();
        let own = ServiceEndpoints::from_settings(&settings, grpc()).expect("endpoints");
        assert_eq!(own.rates, "http://127.0.0.1:50051");
        assert_eq!(own.incentives, own.rates);
        assert_eq!(own.notifier, own.rates);
        assert_eq!(own.policy, own.rates);

        settings.console.grpc_endpoint = "http://ratemesh-rates:50051".into();
        settings.console.notifier_endpoint = " http://ratemesh-notifier:50051 ".into();
        let split = ServiceEndpoints::from_settings(&settings, grpc()).expect("endpoints");
        assert_eq!(
            split,
            ServiceEndpoints {
                rates: "http://ratemesh-rates:50051".into(),
                incentives: "http://ratemesh-rates:50051".into(),
                notifier: "http://ratemesh-notifier:50051".into(),
                policy: "http://ratemesh-rates:50051".into(),
            }
        );

        settings.console.grpc_endpoint.clear();
        settings.console.incentives_endpoint = "http://ratemesh-incentives:50051".into();
        let mixed = ServiceEndpoints::from_settings(&settings, grpc()).expect("endpoints");
        assert_eq!(mixed.rates, "http://127.0.0.1:50051");
        assert_eq!(mixed.incentives, "http://ratemesh-incentives:50051");
        assert_eq!(mixed.notifier, "http://ratemesh-notifier:50051");
        assert_eq!(mixed.policy, "http://127.0.0.1:50051");

        // What-if runs go where the archive is kept, apart from every other service.
        settings.console.policy_endpoint = "http://ratemesh-ingest-archive:50051".into();
        let archive = ServiceEndpoints::from_settings(&settings, grpc()).expect("endpoints");
        assert_eq!(archive.policy, "http://ratemesh-ingest-archive:50051");
        assert_eq!(archive.rates, "http://127.0.0.1:50051");
    }

    #[test]
    fn under_tls_each_endpoint_is_needed_as_https_and_a_bad_one_names_its_key() {
        let mut settings = Settings::default();
        settings.server.tls_cert_file = "/etc/ratemesh/tls/tls.crt".into();
        settings.server.tls_key_file = "/etc/ratemesh/tls/tls.key".into();
        let err = ServiceEndpoints::from_settings(&settings, grpc()).expect_err("no endpoint");
        assert!(err.to_string().contains("console.rates_endpoint"), "{err}");

        settings.console.rates_endpoint = "https://ratemesh-rates:50051".into();
        let err = ServiceEndpoints::from_settings(&settings, grpc()).expect_err("no endpoint");
        assert!(
            err.to_string().contains("console.incentives_endpoint"),
            "{err}"
        );

        settings.console.grpc_endpoint = "https://ratemesh-rates:50051".into();
        settings.console.notifier_endpoint = "http://ratemesh-notifier:50051".into();
        let err = ServiceEndpoints::from_settings(&settings, grpc()).expect_err("plain http");
        assert!(
            err.to_string().contains("console.notifier_endpoint"),
            "{err}"
        );
        assert!(err.to_string().contains("https://"), "{err}");

        settings.console.notifier_endpoint = "https://ratemesh-notifier:50051".into();
        let endpoints = ServiceEndpoints::from_settings(&settings, grpc()).expect("endpoints");
        assert_eq!(endpoints.incentives, "https://ratemesh-rates:50051");
        assert_eq!(endpoints.policy, "https://ratemesh-rates:50051");

        settings.console.policy_endpoint = "http://ratemesh-ingest-archive:50051".into();
        let err = ServiceEndpoints::from_settings(&settings, grpc()).expect_err("plain http");
        assert!(err.to_string().contains("console.policy_endpoint"), "{err}");

        // Without the shared endpoint, the policy endpoint is needed on its own.
        settings.console.grpc_endpoint.clear();
        settings.console.incentives_endpoint = "https://ratemesh-incentives:50051".into();
        settings.console.policy_endpoint.clear();
        let err = ServiceEndpoints::from_settings(&settings, grpc()).expect_err("no endpoint");
        assert!(err.to_string().contains("console.policy_endpoint"), "{err}");
        settings.console.policy_endpoint = "https://ratemesh-ingest-archive:50051".into();
        let endpoints = ServiceEndpoints::from_settings(&settings, grpc()).expect("endpoints");
        assert_eq!(endpoints.policy, "https://ratemesh-ingest-archive:50051");
    }

    #[tokio::test]
    async fn an_endpoint_that_is_not_a_url_names_its_key() {
        let err =
            channel("console.notifier_endpoint", "http://bad host:50051").expect_err("not a URL");
        assert!(
            err.to_string().contains("console.notifier_endpoint"),
            "{err}"
        );
    }
}
