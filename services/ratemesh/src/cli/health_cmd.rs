//! `ratemesh health`: a gRPC health check usable as a container health probe.

use clap::Args;
use tonic_health::pb::HealthCheckRequest;
use tonic_health::pb::health_check_response::ServingStatus;
use tonic_health::pb::health_client::HealthClient;

#[derive(Debug, Args)]
pub(crate) struct HealthArgs {
    /// The gRPC endpoint.
    #[arg(long, default_value = "http://127.0.0.1:50051", env = "RATEMESH_ADDR")]
    addr: String,
    /// The service to ask about ("" is the whole process), e.g. ratemesh.v1.RateService.
    #[arg(long, default_value = "")]
    service: String,
}

pub(crate) async fn run(args: &HealthArgs) -> anyhow::Result<()> {
    let channel = tonic::transport::Endpoint::from_shared(args.addr.clone())?
        .connect_timeout(std::time::Duration::from_secs(3))
        .connect()
        .await?;
    let response = HealthClient::new(channel)
        .check(HealthCheckRequest {
            service: args.service.clone(),
        })
        .await?
        .into_inner();
    let status = ServingStatus::try_from(response.status).unwrap_or(ServingStatus::Unknown);
    println!("{}", status.as_str_name());
    if status == ServingStatus::Serving {
        Ok(())
    } else {
        anyhow::bail!(
            "{} is {}",
            if args.service.is_empty() {
                "server"
            } else {
                &args.service
            },
            status.as_str_name()
        )
    }
}
