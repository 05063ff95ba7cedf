//! TLS of the gRPC and webhook listeners (`server.tls_*`), and the PEM loading shared with
//! the Redis client's TLS (`redis.tls_*`).
//!
//! - The certificate and key come from files and are re-read when either changes (checked
//!   every `server.tls_reload_interval_ms`): [`ReloadingCert`] answers every handshake with
//!   the latest pair that loaded, so a renewed certificate needs no restart and a broken
//!   renewal keeps the previous one (logged).
//! - Mutual TLS: with `server.tls_client_ca_file`, clients are asked for a certificate that
//!   chains to that CA; `server.tls_client_cert_required` decides whether a client without
//!   one is refused in the handshake. API keys are still what authenticates a call.
//! - Handshakes run per connection under a deadline, never in the accept loop, so a client
//!   that stalls its handshake holds up nobody else.

use std::path::{Path, PathBuf};
use std::sync::{Arc, RwLock, Weak};
use std::time::{Duration, SystemTime};

use rustls::RootCertStore;
use rustls::crypto::CryptoProvider;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::server::{ClientHello, ResolvesServerCert, WebPkiClientVerifier};
use rustls::sign::CertifiedKey;
use tokio::net::{TcpListener, TcpStream};
use tokio_rustls::TlsAcceptor;
use tokio_rustls::server::TlsStream;
use tokio_util::sync::CancellationToken;

use crate::settings::{ServerSettings, Settings, SettingsError, TelemetrySettings};

/// The process's one crypto provider (ring: pure Rust and assembly, no C toolchain).
fn provider() -> Arc<CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

/// The certificates of a PEM file, in order (leaf first for a chain).
pub fn load_certs(path: &Path) -> Result<Vec<CertificateDer<'static>>, String> {
    let certs = CertificateDer::pem_file_iter(path)
        .map_err(|e| format!("cannot read {}: {e}", path.display()))?
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| format!("{} is not a PEM certificate file: {e}", path.display()))?;
    if certs.is_empty() {
        return Err(format!("{} holds no PEM certificate", path.display()));
    }
    Ok(certs)
}

/// The certificates in PEM text; anything that is not a certificate is skipped.
pub fn load_certs_pem(pem: &[u8]) -> Vec<CertificateDer<'static>> {
    CertificateDer::pem_slice_iter(pem)
        .filter_map(Result::ok)
        .collect()
}

/// The private key of a PEM file (PKCS#8, PKCS#1 or SEC1).
pub fn load_key(path: &Path) -> Result<PrivateKeyDer<'static>, String> {
    PrivateKeyDer::from_pem_file(path)
        .map_err(|e| format!("{} holds no usable PEM private key: {e}", path.display()))
}

/// A root store of the CA certificates in a PEM file.
pub fn load_roots(path: &Path) -> Result<RootCertStore, String> {
    let mut roots = RootCertStore::empty();
    for cert in load_certs(path)? {
        roots
            .add(cert)
            .map_err(|e| format!("{}: not a usable CA certificate: {e}", path.display()))?;
    }
    Ok(roots)
}

/// A certificate chain and its key, checked to belong together.
fn load_certified_key(cert: &Path, key: &Path) -> Result<CertifiedKey, String> {
    let chain = load_certs(cert)?;
    let key_der = load_key(key)?;
    CertifiedKey::from_der(chain, key_der, &provider()).map_err(|e| {
        format!(
            "{} and {} do not make a usable certificate and key: {e}",
            cert.display(),
            key.display()
        )
    })
}

/// What identifies a version of a file cheaply: its modification time and length.
fn stamp(path: &Path) -> Option<(SystemTime, u64)> {
    let meta = std::fs::metadata(path).ok()?;
    Some((meta.modified().ok()?, meta.len()))
}

type Stamps = (Option<(SystemTime, u64)>, Option<(SystemTime, u64)>);

/// Serves the latest certificate and key that loaded from their files.
#[derive(Debug)]
pub struct ReloadingCert {
    cert_file: PathBuf,
    key_file: PathBuf,
    current: RwLock<(Arc<CertifiedKey>, Stamps)>,
}

impl ReloadingCert {
    /// Loads the pair now; an error names the file at fault.
    pub fn load(
        cert_file: impl Into<PathBuf>,
        key_file: impl Into<PathBuf>,
    ) -> Result<Self, String> {
        let (cert_file, key_file) = (cert_file.into(), key_file.into());
        let stamps = (stamp(&cert_file), stamp(&key_file));
        let key = load_certified_key(&cert_file, &key_file)?;
        Ok(Self {
            cert_file,
            key_file,
            current: RwLock::new((Arc::new(key), stamps)),
        })
    }

    /// Re-reads the files if either changed since the last load. Returns whether a new
    /// certificate is now served; a change that does not load is logged and the previous
    /// certificate kept (it is tried again at the next change).
    pub fn reload_if_changed(&self) -> bool {
        let stamps = (stamp(&self.cert_file), stamp(&self.key_file));
        if self.lock_read().1 == stamps {
            return false;
        }
        let loaded = load_certified_key(&self.cert_file, &self.key_file);
        let mut current = self.current.write().unwrap_or_else(|e| e.into_inner());
        current.1 = stamps;
        match loaded {
            Ok(key) => {
                current.0 = Arc::new(key);
                tracing::info!(cert_file = %self.cert_file.display(), "reloaded the TLS certificate");
                true
            }
            Err(error) => {
                tracing::warn!(
                    %error,
                    "the TLS certificate files changed but do not load; still serving the previous certificate"
                );
                false
            }
        }
    }

    fn lock_read(&self) -> std::sync::RwLockReadGuard<'_, (Arc<CertifiedKey>, Stamps)> {
        self.current.read().unwrap_or_else(|e| e.into_inner())
    }

    /// Checks the files every `interval` for as long as anything else holds `this`.
    pub fn watch(this: &Arc<Self>, interval: Duration) {
        let weak: Weak<Self> = Arc::downgrade(this);
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(interval);
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            tick.tick().await;
            loop {
                tick.tick().await;
                let Some(this) = weak.upgrade() else { return };
                // File reads are small but blocking.
                let _ = tokio::task::spawn_blocking(move || this.reload_if_changed()).await;
            }
        });
    }
}

impl ResolvesServerCert for ReloadingCert {
    fn resolve(&self, _hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        Some(self.lock_read().0.clone())
    }
}

/// The longest a client may take over its TLS handshake before its connection is closed.
pub const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

/// The listeners' TLS: one certificate (reloading) and client-certificate policy, with the
/// ALPN each listener speaks.
#[derive(Clone)]
pub struct ServerTls {
    /// For the gRPC listener: HTTP/2 only.
    pub grpc: TlsAcceptor,
    /// For the webhook listener: HTTP/1.1.
    pub http: TlsAcceptor,
    cert: Arc<ReloadingCert>,
}

impl std::fmt::Debug for ServerTls {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ServerTls")
            .field("cert_file", &self.cert.cert_file)
            .finish_non_exhaustive()
    }
}

impl ServerTls {
    /// The TLS of `server`, or `None` when `server.tls_cert_file` is empty. Starts watching
    /// the files for changes (needs a tokio runtime).
    pub fn from_settings(server: &ServerSettings) -> Result<Option<Self>, SettingsError> {
        let Some(tls) = Self::load(server)? else {
            return Ok(None);
        };
        ReloadingCert::watch(&tls.cert, server.tls_reload_interval());
        Ok(Some(tls))
    }

    /// Loads the files `server` names without watching them.
    fn load(server: &ServerSettings) -> Result<Option<Self>, SettingsError> {
        if !server.tls_enabled() {
            return Ok(None);
        }
        let cert = ReloadingCert::load(server.tls_cert_file.trim(), server.tls_key_file.trim())
            .map_err(|e| SettingsError::new("server.tls_cert_file", e))?;
        let cert = Arc::new(cert);
        let client_ca = server.tls_client_ca_file.trim();
        let verifier = if client_ca.is_empty() {
            None
        } else {
            let roots = load_roots(Path::new(client_ca))
                .map_err(|e| SettingsError::new("server.tls_client_ca_file", e))?;
            let builder = WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider());
            let builder = if server.tls_client_cert_required {
                builder
            } else {
                builder.allow_unauthenticated()
            };
            Some(
                builder
                    .build()
                    .map_err(|e| SettingsError::new("server.tls_client_ca_file", e.to_string()))?,
            )
        };
        let config = |alpn: &[u8]| -> Result<TlsAcceptor, SettingsError> {
            let builder = rustls::ServerConfig::builder_with_provider(provider())
                .with_safe_default_protocol_versions()
                .map_err(|e| SettingsError::new("server.tls_cert_file", e.to_string()))?;
            let builder = match &verifier {
                Some(verifier) => builder.with_client_cert_verifier(verifier.clone()),
                None => builder.with_no_client_auth(),
            };
            let mut config = builder.with_cert_resolver(cert.clone());
            config.alpn_protocols = vec![alpn.to_vec()];
            Ok(TlsAcceptor::from(Arc::new(config)))
        };
        Ok(Some(Self {
            grpc: config(b"h2")?,
            http: config(b"http/1.1")?,
            cert: cert.clone(),
        }))
    }
}

/// Loads every TLS file the settings name (server certificate, key and client CA; Redis CA
/// and client certificate), so `ratemesh config check` catches a missing or unparsable file
/// before a deploy. Returns a summary for its output line.
pub fn check(settings: &Settings) -> Result<String, SettingsError> {
    let server = &settings.server;
    let mut summary = match ServerTls::load(server)? {
        None => "plaintext listeners".to_owned(),
        Some(_) if server.tls_client_ca_file.trim().is_empty() => "TLS listeners".to_owned(),
        Some(_) => "TLS listeners with client certificates".to_owned(),
    };
    let redis = &settings.redis;
    if !redis.tls_ca_file.trim().is_empty() {
        load_roots(Path::new(redis.tls_ca_file.trim()))
            .map_err(|e| SettingsError::new("redis.tls_ca_file", e))?;
    }
    let (cert, key) = (
        redis.tls_client_cert_file.trim(),
        redis.tls_client_key_file.trim(),
    );
    if !cert.is_empty() || !key.is_empty() {
        load_certified_key(Path::new(cert), Path::new(key))
            .map_err(|e| SettingsError::new("redis.tls_client_cert_file", e))?;
    }
    if redis.urls().iter().any(|u| u.starts_with("rediss://")) {
        summary.push_str(", TLS to Redis");
    }
    if otlp_client_tls(&settings.telemetry)?.is_some() {
        summary.push_str(", TLS to the OTLP collector");
    }
    Ok(summary)
}

/// The TLS of the OTLP exporter: for an `https://` endpoint, the system's roots or the CA
/// of `telemetry.otlp_ca_file`; `None` for a plaintext endpoint.
pub fn otlp_client_tls(
    settings: &TelemetrySettings,
) -> Result<Option<tonic::transport::ClientTlsConfig>, SettingsError> {
    let https = settings
        .otlp_endpoint()
        .is_some_and(|e| e.to_ascii_lowercase().starts_with("https://"));
    let ca_file = settings.otlp_ca_file.trim();
    if !https {
        if !ca_file.is_empty() {
            return Err(SettingsError::new(
                "telemetry.otlp_ca_file",
                "applies to an https:// telemetry.otlp_endpoint only",
            ));
        }
        return Ok(None);
    }
    let config = tonic::transport::ClientTlsConfig::new();
    if ca_file.is_empty() {
        return Ok(Some(config.with_native_roots()));
    }
    let pem = std::fs::read(ca_file).map_err(|e| {
        SettingsError::new(
            "telemetry.otlp_ca_file",
            format!("cannot read {ca_file}: {e}"),
        )
    })?;
    load_roots(Path::new(ca_file)).map_err(|e| SettingsError::new("telemetry.otlp_ca_file", e))?;
    Ok(Some(config.ca_certificate(
        tonic::transport::Certificate::from_pem(pem),
    )))
}

/// TLS connections accepted on `listener`, for the gRPC serve loop (`grpc::serve`).
/// Each handshake runs in its own task under [`HANDSHAKE_TIMEOUT`]; connections whose
/// handshake fails (a plaintext client, an untrusted client certificate) are closed and
/// logged at debug level. Ends once `stop` is cancelled or the stream is dropped.
pub fn incoming(
    listener: TcpListener,
    acceptor: TlsAcceptor,
    stop: CancellationToken,
) -> tokio_stream::wrappers::ReceiverStream<std::io::Result<TlsStream<TcpStream>>> {
    let (tx, rx) = tokio::sync::mpsc::channel(128);
    tokio::spawn(async move {
        loop {
            let (stream, peer) = tokio::select! {
                _ = stop.cancelled() => return,
                // The server is gone (dropped without a stop): stop accepting for it.
                _ = tx.closed() => return,
                accepted = listener.accept() => match accepted {
                    Ok(accepted) => accepted,
                    Err(err) => {
                        tracing::warn!(error = %err, "gRPC listener could not accept");
                        tokio::time::sleep(Duration::from_millis(50)).await;
                        continue;
                    }
                },
            };
            let _ = stream.set_nodelay(true);
            let (acceptor, tx) = (acceptor.clone(), tx.clone());
            tokio::spawn(async move {
                match tokio::time::timeout(HANDSHAKE_TIMEOUT, acceptor.accept(stream)).await {
                    Ok(Ok(tls)) => {
                        let _ = tx.send(Ok(tls)).await;
                    }
                    Ok(Err(err)) => {
                        tracing::debug!(%peer, error = %err, "TLS handshake failed");
                    }
                    Err(_) => tracing::debug!(%peer, "TLS handshake timed out"),
                }
            });
        }
    });
    tokio_stream::wrappers::ReceiverStream::new(rx)
}

/// Callers identified by their client certificate (`server.tls_client_principals`).
///
/// The RPC layer authenticates calls by API key. A certificate principal is given a key of
/// its own, made at start from the process's secure random source and never shown: it is
/// added to the key table under the principal's name and role, and [`CertPrincipalLayer`]
/// puts it on a call that brings no key of its own, over a connection whose verified client
/// certificate is valid for the principal's `dns_name`. So a certificate principal goes
/// through the same role checks, and shows up the same way, as a key holder.
#[derive(Clone)]
pub struct CertPrincipals {
    /// Each principal's subject name and the `authorization` value it calls with.
    by_name: Arc<Vec<(rustls::pki_types::ServerName<'static>, http::HeaderValue)>>,
}

impl std::fmt::Debug for CertPrincipals {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CertPrincipals")
            .field("principals", &self.by_name.len())
            .finish()
    }
}

impl CertPrincipals {
    /// The principals of `server`, and the key settings to add to `auth.keys` for them;
    /// `None` when none is configured. Settings validation has checked the names.
    pub fn from_settings(
        server: &ServerSettings,
    ) -> Result<Option<(Self, Vec<crate::settings::ApiKeySettings>)>, SettingsError> {
        if server.tls_client_principals.is_empty() || !server.tls_enabled() {
            return Ok(None);
        }
        let random = provider().secure_random;
        let mut by_name = Vec::new();
        let mut keys = Vec::new();
        for (i, p) in server.tls_client_principals.iter().enumerate() {
            let at = format!("server.tls_client_principals[{i}].dns_name");
            let name = rustls::pki_types::ServerName::try_from(p.dns_name.trim().to_owned())
                .map_err(|e| SettingsError::new(at.clone(), e.to_string()))?;
            let mut secret = [0u8; 32];
            random
                .fill(&mut secret)
                .map_err(|_| SettingsError::new(at.clone(), "no secure random source"))?;
            let key = format!("cert-{}", hex::encode(secret));
            let header = http::HeaderValue::from_str(&format!("Bearer {key}"))
                .map_err(|e| SettingsError::new(at, e.to_string()))?;
            by_name.push((name, header));
            keys.push(crate::settings::ApiKeySettings {
                name: p.name.clone(),
                role: p.role,
                sha256: crate::auth::hash_key(&key),
                partner_id: p.partner_id.clone(),
            });
        }
        Ok(Some((
            Self {
                by_name: Arc::new(by_name),
            },
            keys,
        )))
    }

    /// The `authorization` value for a call whose connection presented `certs` (leaf
    /// first), if the leaf is valid for a principal's name.
    fn authorization(&self, certs: &[CertificateDer<'static>]) -> Option<&http::HeaderValue> {
        let leaf = rustls::server::ParsedCertificate::try_from(certs.first()?).ok()?;
        self.by_name
            .iter()
            .find(|(name, _)| rustls::client::verify_server_name(&leaf, name).is_ok())
            .map(|(_, header)| header)
    }
}

/// Puts a certificate principal's key on calls that bring none (see [`CertPrincipals`]).
/// Sits in front of the RPC layer, so everything after it sees an ordinary keyed call.
#[derive(Clone, Debug)]
pub struct CertPrincipalLayer(pub CertPrincipals);

impl<S> tower::Layer<S> for CertPrincipalLayer {
    type Service = CertPrincipalService<S>;

    fn layer(&self, inner: S) -> Self::Service {
        CertPrincipalService {
            principals: self.0.clone(),
            inner,
        }
    }
}

/// The service of [`CertPrincipalLayer`].
#[derive(Clone, Debug)]
pub struct CertPrincipalService<S> {
    principals: CertPrincipals,
    inner: S,
}

/// The certificates a TLS peer presented (leaf first), put on each of its calls by the
/// serve loop (`grpc::serve`) once per connection.
#[derive(Clone, Debug)]
pub struct PeerCertificates(pub Arc<Vec<CertificateDer<'static>>>);

impl<S, B> tower::Service<http::Request<B>> for CertPrincipalService<S>
where
    S: tower::Service<http::Request<B>>,
{
    type Response = S::Response;
    type Error = S::Error;
    type Future = S::Future;

    fn poll_ready(
        &mut self,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, mut request: http::Request<B>) -> Self::Future {
        if !request.headers().contains_key(http::header::AUTHORIZATION)
            && let Some(certs) = request.extensions().get::<PeerCertificates>()
            && let Some(value) = self.principals.authorization(&certs.0)
        {
            let value = value.clone();
            request
                .headers_mut()
                .insert(http::header::AUTHORIZATION, value);
        }
        self.inner.call(request)
    }
}
