//! `ratemesh health`: asks a running server's `grpc.health.v1` service, for operators and as
//! the container image's HEALTHCHECK (the runtime image has no shell, so the probe is the
//! binary itself). Exit code 0 only when the answer is SERVING.

use std::time::Duration;

use clap::Args;
use tonic::Code;
use tonic_health::pb::HealthCheckRequest;
use tonic_health::pb::health_check_response::ServingStatus;
use tonic_health::pb::health_client::HealthClient;

use super::client::{DEFAULT_ADDR, TlsArgs, causes};

#[derive(Debug, Args)]
pub(crate) struct HealthArgs {
    /// The gRPC endpoint: `http://host:port` or `host:port` for plaintext, `https://host:port`
    /// for TLS.
    #[arg(long, default_value = DEFAULT_ADDR, env = "RATEMESH_ADDR")]
    addr: String,
    /// The service to ask about ("" is the whole process), e.g. ratemesh.v1.RateService.
    #[arg(long, default_value = "")]
    service: String,
    /// How long to wait for the connection, and then for the answer, in milliseconds; a
    /// probe that hangs is reported as a failure instead of waiting for its runner's kill.
    #[arg(long, default_value_t = 3000)]
    timeout_ms: u64,
    #[command(flatten)]
    tls: TlsArgs,
}

pub(crate) async fn run(args: &HealthArgs) -> anyhow::Result<()> {
    let addr = endpoint_uri(&args.addr);
    let timeout = Duration::from_millis(args.timeout_ms);
    let channel = args
        .tls
        .endpoint(&addr)?
        .connect_timeout(timeout)
        .timeout(timeout)
        .connect()
        .await
        .map_err(|e| anyhow::anyhow!("cannot reach ratemesh at {addr}: {}", causes(&e)))?;
    let subject = if args.service.is_empty() {
        format!("ratemesh at {addr}")
    } else {
        format!("{} at {addr}", args.service)
    };
    let response = HealthClient::new(channel)
        .check(HealthCheckRequest {
            service: args.service.clone(),
        })
        .await
        .map_err(|status| match status.code() {
            Code::NotFound => anyhow::anyhow!(
                "ratemesh at {addr} has no service {:?} (it runs only the services it was started with)",
                args.service
            ),
            _ => anyhow::anyhow!(
                "health check of {subject} failed: {:?}: {}",
                status.code(),
                status.message()
            ),
        })?
        .into_inner();
    let status = ServingStatus::try_from(response.status).unwrap_or(ServingStatus::Unknown);
    println!("{}", status.as_str_name());
    if status == ServingStatus::Serving {
        Ok(())
    } else {
        anyhow::bail!("{subject} is {}", status.as_str_name())
    }
}

/// `host:port` as the brief form of a plaintext endpoint; anything with a scheme as given.
fn endpoint_uri(addr: &str) -> String {
    if addr.contains("://") {
        addr.to_owned()
    } else {
        format!("http://{addr}")
    }
}

#[cfg(test)]
mod tests {
    use super::endpoint_uri;

    #[test]
    fn a_bare_host_and_port_is_plaintext_http() {
        assert_eq!(endpoint_uri("127.0.0.1:50051"), "http://127.0.0.1:50051");
        assert_eq!(endpoint_uri("http://[::1]:50051"), "http://[::1]:50051");
        assert_eq!(endpoint_uri("https://rates:443"), "https://rates:443");
    }
}
