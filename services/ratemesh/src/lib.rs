//! The services `ratemesh` runs, as a library so the binary and the end-to-end tests start
//! them the same way.

pub mod demo;

use clap::ValueEnum;
use ratemesh_runtime::{Context, ServiceModule};

/// The services of ratemesh.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum ServiceName {
    /// ERP webhooks and `InventoryIngest`.
    Ingest,
    /// Rate computation, `RateService` and `OverrideService`.
    Rates,
    /// Flash incentives and `IncentiveService`.
    Incentives,
    /// Partner webhooks and `PartnerService`.
    Notifier,
}

impl ServiceName {
    /// Every service, in the order `ratemesh up` starts them.
    pub const ALL: [ServiceName; 4] = [
        ServiceName::Ingest,
        ServiceName::Rates,
        ServiceName::Incentives,
        ServiceName::Notifier,
    ];
}

/// Builds one service's module.
pub async fn build(ctx: &Context, service: ServiceName) -> anyhow::Result<ServiceModule> {
    match service {
        ServiceName::Ingest => ratemesh_ingest::build(ctx).await,
        ServiceName::Rates => ratemesh_rates::build(ctx).await,
        ServiceName::Incentives => ratemesh_incentives::build(ctx).await,
        ServiceName::Notifier => ratemesh_notifier::build(ctx).await,
    }
}

/// Builds the modules of `services`.
pub async fn build_all(
    ctx: &Context,
    services: &[ServiceName],
) -> anyhow::Result<Vec<ServiceModule>> {
    let mut modules = Vec::with_capacity(services.len());
    for service in services {
        modules.push(build(ctx, *service).await?);
    }
    Ok(modules)
}
