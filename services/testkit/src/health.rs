//! Waiting for a ratemesh (in this process or elsewhere) to say SERVING on gRPC health.

use std::time::{Duration, Instant};

use tonic::transport::Endpoint;
use tonic_health::pb::HealthCheckRequest;
use tonic_health::pb::health_check_response::ServingStatus;
use tonic_health::pb::health_client::HealthClient;

/// The overall serving status of the gRPC server at `addr` (host:port).
pub async fn serving_status(addr: &str) -> anyhow::Result<ServingStatus> {
    let channel = Endpoint::from_shared(format!("http://{addr}"))?
        .connect()
        .await?;
    let answer = HealthClient::new(channel)
        .check(HealthCheckRequest {
            service: String::new(),
        })
        .await?
        .into_inner();
    Ok(ServingStatus::try_from(answer.status)?)
}

/// Waits until the gRPC health of `addr` says SERVING, or fails after `within` with the
/// last status or error.
pub async fn wait_serving(addr: &str, within: Duration) -> anyhow::Result<()> {
    let deadline = Instant::now() + within;
    loop {
        let status = serving_status(addr).await;
        if matches!(status, Ok(ServingStatus::Serving)) {
            return Ok(());
        }
        if Instant::now() > deadline {
            anyhow::bail!(
                "ratemesh at {addr} did not become SERVING within {within:?}: {status:?}"
            );
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}
