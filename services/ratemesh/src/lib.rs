//! The services `ratemesh` runs, as a library so the binary and the end-to-end tests start
//! them the same way.

pub mod demo;

use std::path::Path;

use clap::ValueEnum;
use ratemesh_runtime::settings::{EnvSource, SectionDef, SettingsError};
use ratemesh_runtime::{Context, ServiceModule, Settings};

pub use ratemesh_incentives::IncentivesSettings;
pub use ratemesh_ingest::{ErpSource, IngestSettings};
pub use ratemesh_notifier::NotifierSettings;
pub use ratemesh_rates::RatesSettings;

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

/// Every service's settings section. All are loaded whichever services a process runs,
/// so one configuration serves every Deployment and a typo in any section is refused.
pub fn sections() -> [SectionDef; 4] {
    [
        SectionDef::of::<IngestSettings>(),
        SectionDef::of::<RatesSettings>(),
        SectionDef::of::<IncentivesSettings>(),
        SectionDef::of::<NotifierSettings>(),
    ]
}

/// The frame's settings and every service's section, layered and checked.
pub fn load_settings(file: Option<&Path>, env: EnvSource) -> Result<Settings, SettingsError> {
    Settings::load(file, env, &sections())
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
