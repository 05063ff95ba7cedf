//! What every client command shares: where the server is, the API key, and output format.

use clap::Args;
use tonic::metadata::{Ascii, MetadataValue};
use tonic::service::Interceptor;
use tonic::service::interceptor::InterceptedService;
use tonic::transport::Channel;

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
        let channel = tonic::transport::Endpoint::from_shared(self.addr.clone())
            .map_err(|e| anyhow::anyhow!("--addr {}: {e}", self.addr))?
            .connect_timeout(std::time::Duration::from_secs(5))
            .connect()
            .await
            .map_err(|e| anyhow::anyhow!("cannot reach ratemesh at {}: {e}", self.addr))?;
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
