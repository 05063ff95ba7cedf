//! What the console is built from: the same key table the gRPC servers use, the gRPC
//! endpoint its gateway calls, and its listener's TLS and connection limits.

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
    /// The gRPC services the gateway calls.
    pub channel: Channel,
    /// A session unused for this long ends.
    pub session_idle: Duration,
    /// TLS of the console's listener; with it the session cookie is `Secure`.
    pub tls: Option<TlsAcceptor>,
    /// Connection limits of the console's listener (the webhook listener's).
    pub limits: ConnectionLimits,
}

impl ConsoleConfig {
    /// A console for this process: signs in against `settings.auth.keys`, calls
    /// `console.grpc_endpoint` or else `grpc_addr` (this process's gRPC listener), and
    /// serves TLS when the webhook listener does (`server.tls_*` with `server.http_tls`).
    /// Needs a tokio runtime.
    pub fn from_settings(settings: &Settings, grpc_addr: SocketAddr) -> anyhow::Result<Self> {
        let server = &settings.server;
        let configured = settings.console.grpc_endpoint.trim();
        let endpoint = if configured.is_empty() {
            anyhow::ensure!(
                !server.tls_enabled(),
                "invalid config: console.grpc_endpoint: is required when server.tls_cert_file \
                 is set (the console must call the gRPC port by a name its certificate is valid for)"
            );
            format!("http://{}", reachable(grpc_addr))
        } else {
            configured.to_owned()
        };
        let channel = channel(&endpoint)?;
        let tls = match server.http_tls {
            true => ServerTls::from_settings(server)?.map(|tls| tls.http),
            false => None,
        };
        Ok(Self {
            keys: ApiKeys::from_settings(&settings.auth),
            channel,
            session_idle: Duration::from_secs(settings.console.session_idle_minutes * 60),
            tls,
            limits: server.http_limits(),
        })
    }
}

/// A lazily connected channel to `endpoint`; `https://` is checked against the system's
/// trusted roots.
pub fn channel(endpoint: &str) -> anyhow::Result<Channel> {
    let mut builder = Endpoint::from_shared(endpoint.to_owned())
        .with_context(|| format!("console.grpc_endpoint: `{endpoint}` is not a URL"))?
        .connect_timeout(Duration::from_secs(5));
    if builder.uri().scheme() == Some(&http::uri::Scheme::HTTPS) {
        builder = builder
            .tls_config(ClientTlsConfig::new().with_native_roots())
            .context("console.grpc_endpoint: TLS")?;
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
