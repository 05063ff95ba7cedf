//! The services `ratemesh` runs, as a library so the binary and the end-to-end tests start
//! them the same way.

pub mod demo;

use std::path::Path;

use clap::ValueEnum;
use ratemesh_contract::streams::{Reader, readers};
use ratemesh_runtime::settings::{EnvSource, SectionDef, SettingsError};
use ratemesh_runtime::{Context, ServiceModule, Settings};

pub use ratemesh_incentives::IncentivesSettings;
pub use ratemesh_ingest::{ErpSource, IngestSettings};
pub use ratemesh_notifier::NotifierSettings;
pub use ratemesh_rates::RatesSettings;

/// The services of ratemesh.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum ServiceName {
    /// ERP webhooks, `InventoryIngest`, and `PolicyService` what-if runs over the
    /// input archive.
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

    /// The name `ratemesh serve` takes and the service's Deployment is named after.
    pub fn name(self) -> &'static str {
        match self {
            ServiceName::Ingest => "ingest",
            ServiceName::Rates => "rates",
            ServiceName::Incentives => "incentives",
            ServiceName::Notifier => "notifier",
        }
    }

    /// The consumer group and streams the service consumes (its entry in the contract's
    /// table of readers, which the service starts its consumers from); `None` for ingest,
    /// which only writes.
    pub fn reader(self) -> Option<Reader> {
        match self {
            ServiceName::Ingest => None,
            ServiceName::Rates => Some(readers::RATES),
            ServiceName::Incentives => Some(readers::INCENTIVES),
            ServiceName::Notifier => Some(readers::NOTIFIER),
        }
    }
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
        // Ingest keeps the input archive, so it serves the what-if runs that read it
        // (`PolicyService`, from the what-if crate, which depends on ingest's parsers).
        ServiceName::Ingest => Ok(ratemesh_whatif::service::attach(
            ctx,
            ratemesh_ingest::build(ctx).await?,
        )),
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_reader_of_the_contract_is_a_service_and_each_service_reads_its_own_group() {
        let mut mapped: Vec<Reader> = ServiceName::ALL.iter().filter_map(|s| s.reader()).collect();
        let mut table = readers::ALL.to_vec();
        let by_group = |r: &Reader| r.group;
        mapped.sort_by_key(by_group);
        table.sort_by_key(by_group);
        assert_eq!(mapped, table);
        for service in ServiceName::ALL {
            if let Some(reader) = service.reader() {
                assert_eq!(
                    reader.group,
                    service.name(),
                    "groups are named after their reader"
                );
            }
        }
    }

    #[test]
    fn the_name_is_the_one_the_command_line_takes() {
        for service in ServiceName::ALL {
            let value = service.to_possible_value().expect("a command-line value");
            assert_eq!(value.get_name(), service.name());
        }
    }
}
