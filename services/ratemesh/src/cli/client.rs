//! What every client command shares: where the server is, the API key, TLS, and output
//! format.
//!
//! `https://` addresses are called over TLS, checked against the system's trusted roots or
//! `--ca-file`. An API key is never sent in plaintext to another machine: over `http://` it
//! goes only to a loopback address unless `--insecure` says otherwise.

use std::net::IpAddr;
use std::path::{Path, PathBuf};

use clap::Args;
use tonic::metadata::{Ascii, MetadataValue};
use tonic::service::Interceptor;
use tonic::service::interceptor::InterceptedService;
use tonic::transport::{Certificate, Channel, ClientTlsConfig, Endpoint, Identity};

/// Where client commands connect unless told otherwise.
pub(crate) const DEFAULT_ADDR: &str = "http://127.0.0.1:50051";

/// Connection options of client commands (`rates`, `overrides`, `incentives`, `partners`, …).
#[derive(Debug, Clone, Args)]
pub(crate) struct ClientArgs {
    /// The gRPC endpoint of ratemesh.
    #[arg(
        long,
        global = true,
        default_value = DEFAULT_ADDR,
        env = "RATEMESH_ADDR"
    )]
    pub(crate) addr: String,
    /// The API key to call with (`ratemesh up` prints trial keys).
    #[arg(long, global = true, env = "RATEMESH_API_KEY", hide_env_values = true)]
    pub(crate) key: Option<String>,
    /// Print JSON (one object per line) instead of tables, for scripts.
    #[arg(long, global = true)]
    pub(crate) json: bool,
    #[command(flatten)]
    pub(crate) tls: TlsArgs,
    /// Send the API key over plaintext http:// to a host that is not this machine (anyone
    /// on the path can read it). Without it such a call is refused.
    #[arg(long, global = true)]
    pub(crate) insecure: bool,
}

/// TLS options of every command that calls the gRPC API.
#[derive(Debug, Clone, Default, Args)]
pub(crate) struct TlsArgs {
    /// PEM CA certificates to check an https:// server against, instead of the system's
    /// trusted roots (a private CA).
    #[arg(long, global = true, env = "RATEMESH_CA_FILE", value_name = "FILE")]
    pub(crate) ca_file: Option<PathBuf>,
    /// PEM client certificate, for a server that asks for one (mutual TLS).
    #[arg(
        long,
        global = true,
        env = "RATEMESH_CLIENT_CERT",
        value_name = "FILE",
        requires = "client_key"
    )]
    pub(crate) client_cert: Option<PathBuf>,
    /// The PEM private key of --client-cert.
    #[arg(
        long,
        global = true,
        env = "RATEMESH_CLIENT_KEY",
        value_name = "FILE",
        requires = "client_cert"
    )]
    pub(crate) client_key: Option<PathBuf>,
}

impl TlsArgs {
    /// An endpoint for `addr`: over TLS for `https://`, checked against `--ca-file` or the
    /// system's roots, with the client certificate if one is given.
    pub(crate) fn endpoint(&self, addr: &str) -> anyhow::Result<Endpoint> {
        let endpoint = Endpoint::from_shared(addr.to_owned())
            .map_err(|e| anyhow::anyhow!("--addr {addr}: {e}"))?;
        let https = endpoint.uri().scheme() == Some(&http::uri::Scheme::HTTPS);
        if !https {
            if self.ca_file.is_some() || self.client_cert.is_some() {
                anyhow::bail!(
                    "--addr {addr} is plaintext: --ca-file and --client-cert apply to https:// addresses"
                );
            }
            return Ok(endpoint);
        }
        let mut tls = ClientTlsConfig::new();
        tls = match &self.ca_file {
            Some(path) => tls.ca_certificate(Certificate::from_pem(read(path, "--ca-file")?)),
            None => tls.with_native_roots(),
        };
        if let (Some(cert), Some(key)) = (&self.client_cert, &self.client_key) {
            tls = tls.identity(Identity::from_pem(
                read(cert, "--client-cert")?,
                read(key, "--client-key")?,
            ));
        }
        endpoint
            .tls_config(tls)
            .map_err(|e| anyhow::anyhow!("--addr {addr}: TLS: {e}"))
    }
}

/// An error with its causes (`transport error: … invalid peer certificate: UnknownIssuer`),
/// since a TLS failure is only named by the innermost one.
pub(crate) fn causes(err: &(dyn std::error::Error + 'static)) -> String {
    let mut text = err.to_string();
    let mut source = err.source();
    while let Some(cause) = source {
        text.push_str(": ");
        text.push_str(&cause.to_string());
        source = cause.source();
    }
    text
}

impl TlsArgs {
    /// A rustls client config for HTTPS (the webhook pushes): `--ca-file` or the system's
    /// roots, and the client certificate if one is given.
    pub(crate) fn rustls_config(&self) -> anyhow::Result<rustls::ClientConfig> {
        let mut roots = rustls::RootCertStore::empty();
        match &self.ca_file {
            Some(path) => {
                for cert in ratemesh_runtime::tls::load_certs(path)
                    .map_err(|e| anyhow::anyhow!("--ca-file: {e}"))?
                {
                    roots
                        .add(cert)
                        .map_err(|e| anyhow::anyhow!("--ca-file {}: {e}", path.display()))?;
                }
            }
            None => {
                let (added, _) =
                    roots.add_parsable_certificates(rustls_native_certs::load_native_certs().certs);
                if added == 0 {
                    anyhow::bail!(
                        "no trusted root certificates found on this system: give --ca-file"
                    );
                }
            }
        }
        let builder = rustls::ClientConfig::builder_with_provider(std::sync::Arc::new(
            rustls::crypto::ring::default_provider(),
        ))
        .with_safe_default_protocol_versions()?
        .with_root_certificates(roots);
        Ok(match (&self.client_cert, &self.client_key) {
            (Some(cert), Some(key)) => builder.with_client_auth_cert(
                ratemesh_runtime::tls::load_certs(cert)
                    .map_err(|e| anyhow::anyhow!("--client-cert: {e}"))?,
                ratemesh_runtime::tls::load_key(key)
                    .map_err(|e| anyhow::anyhow!("--client-key: {e}"))?,
            )?,
            _ => builder.with_no_client_auth(),
        })
    }
}

fn read(path: &Path, flag: &str) -> anyhow::Result<Vec<u8>> {
    std::fs::read(path).map_err(|e| anyhow::anyhow!("{flag} {}: {e}", path.display()))
}

/// Refuses to send an API key in plaintext to anything but this machine, unless
/// `insecure`. Loopback (`localhost`, `127.0.0.0/8`, `::1`) is fine: the key never leaves
/// the host.
pub(crate) fn check_key_transport(addr: &str, has_key: bool, insecure: bool) -> anyhow::Result<()> {
    let uri: http::Uri = addr
        .parse()
        .map_err(|e| anyhow::anyhow!("--addr {addr}: {e}"))?;
    if !has_key || insecure || uri.scheme() == Some(&http::uri::Scheme::HTTPS) {
        return Ok(());
    }
    let host = uri.host().unwrap_or_default();
    let bare = host.trim_start_matches('[').trim_end_matches(']');
    let loopback = host.eq_ignore_ascii_case("localhost")
        || bare.parse::<IpAddr>().is_ok_and(|ip| ip.is_loopback());
    if loopback {
        return Ok(());
    }
    anyhow::bail!(
        "refusing to send the API key in plaintext to {host}: --addr {addr} is not encrypted. \
         Use https://{host}{port} (with --ca-file for a private CA), or pass --insecure to send it anyway",
        port = uri.port().map(|p| format!(":{p}")).unwrap_or_default()
    )
}

/// Sends `authorization: Bearer <key>` and the current trace context on every call.
#[derive(Clone)]
pub(crate) struct Auth(Option<MetadataValue<Ascii>>);

impl Interceptor for Auth {
    fn call(&mut self, request: tonic::Request<()>) -> Result<tonic::Request<()>, tonic::Status> {
        let mut request = ratemesh_runtime::trace_context::inject_into_request(request)?;
        if let Some(value) = &self.0 {
            request
                .metadata_mut()
                .insert("authorization", value.clone());
        }
        Ok(request)
    }
}

/// A channel with authentication, ready to wrap in any generated client:
/// `RateServiceClient::new(args.connect().await?)`.
pub(crate) type AuthedChannel = InterceptedService<Channel, Auth>;

impl ClientArgs {
    /// Connects to [`Self::addr`] with [`Self::key`].
    pub(crate) async fn connect(&self) -> anyhow::Result<AuthedChannel> {
        let auth = match &self.key {
            Some(key) => {
                Auth(Some(format!("Bearer {}", key.trim()).parse().map_err(
                    |_| anyhow::anyhow!("--key must be printable ASCII"),
                )?))
            }
            None => Auth(None),
        };
        check_key_transport(&self.addr, self.key.is_some(), self.insecure)?;
        let channel = self
            .tls
            .endpoint(&self.addr)?
            .connect_timeout(std::time::Duration::from_secs(5))
            .connect()
            .await
            .map_err(|e| {
                anyhow::anyhow!("cannot reach ratemesh at {}: {}", self.addr, causes(&e))
            })?;
        Ok(InterceptedService::new(channel, auth))
    }
}

/// Turns a gRPC error into a message an operator can act on, with field violations.
pub(crate) fn explain_status(status: tonic::Status) -> anyhow::Error {
    use tonic_types::StatusExt;
    let mut message = format!("{:?}: {}", status.code(), status.message());
    if let Some(bad) = status.get_details_bad_request() {
        for v in bad.field_violations {
            message.push_str(&format!("\n  {}: {}", v.field, v.description));
        }
    }
    if let Some(pre) = status.get_details_precondition_failure() {
        for v in pre.violations {
            message.push_str(&format!(
                "\n  {} {}: {}",
                v.r#type, v.subject, v.description
            ));
        }
    }
    if let Some(retry) = status.get_details_retry_info()
        && let Some(delay) = retry.retry_delay
    {
        message.push_str(&format!("\n  retry after {delay:?}"));
    }
    anyhow::anyhow!(message)
}

#[cfg(test)]
mod tests {
    use super::check_key_transport;

    #[test]
    fn a_key_goes_in_plaintext_only_to_this_machine_unless_insecure() {
        for local in [
            "http://127.0.0.1:50051",
            "http://127.8.0.1:50051",
            "http://localhost:50051",
            "http://[::1]:50051",
        ] {
            assert!(check_key_transport(local, true, false).is_ok(), "{local}");
        }
        let err = check_key_transport("http://rates.example.com:50051", true, false)
            .expect_err("a key in plaintext over the network");
        let message = err.to_string();
        assert!(
            message.contains("refusing to send the API key in plaintext"),
            "{message}"
        );
        assert!(
            message.contains("https://rates.example.com:50051"),
            "{message}"
        );
        assert!(message.contains("--insecure"), "{message}");
        assert!(check_key_transport("http://10.0.0.7:50051", true, false).is_err());
        assert!(check_key_transport("http://10.0.0.7:50051", true, true).is_ok());
        assert!(check_key_transport("http://10.0.0.7:50051", false, false).is_ok());
        assert!(check_key_transport("https://rates.example.com", true, false).is_ok());
    }
}
