//! Command-line interface: argument types and dispatch.

// Shared by the client commands; parts stay unused until every command uses them.
#[allow(dead_code)]
pub(crate) mod client;
mod config_cmd;
mod health_cmd;
mod history_cmd;
mod incentives_cmd;
mod invocation;
mod keys_cmd;
mod overrides_cmd;
mod partners_cmd;
mod push_cmd;
mod rates_cmd;
mod serve_cmd;
mod streams_cmd;
mod table;
mod whatif_cmd;

use std::path::PathBuf;

use clap::{Parser, Subcommand};
use ratemesh::ServiceName;
use ratemesh_runtime::Settings;
use ratemesh_runtime::settings::EnvSource;

/// Inventory-aware affiliate commission rates.
#[derive(Debug, Parser)]
#[command(name = "ratemesh", version, about, long_about = None)]
pub(crate) struct Cli {
    /// A TOML settings file, layered over the built-in defaults and under `RATEMESH__…`
    /// environment variables.
    #[arg(
        long = "config",
        visible_alias = "file",
        global = true,
        env = "RATEMESH_CONFIG"
    )]
    config: Option<PathBuf>,

    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Run every service in one process.
    Up(serve_cmd::UpArgs),
    /// Run one service (one Kubernetes Deployment per service).
    Serve {
        /// Which service.
        service: ServiceName,
    },
    /// Check or show the effective settings.
    #[command(subcommand)]
    Config(config_cmd::ConfigCommand),
    /// The streams each service consumes, its consumer group on each and the Redis key of
    /// every partition stream (what autoscaling watches), under the loaded settings;
    /// `groups` and `drop-group` for the consumer groups that exist in Redis.
    Streams(streams_cmd::StreamsArgs),
    /// Make and hash API keys.
    #[command(subcommand)]
    Keys(keys_cmd::KeysCommand),
    /// Ask a running server's gRPC health service (exit code 0 when SERVING).
    Health(health_cmd::HealthArgs),
    /// Partner webhooks: add, get, list, rotate-secret, deliveries, redeliver.
    Partners(partners_cmd::PartnersArgs),
    /// Flash incentives: list, trigger, cancel.
    Incentives(incentives_cmd::IncentivesArgs),
    /// Read rates: get, list (delta sync), watch, explain.
    Rates(rates_cmd::RatesArgs),
    /// Merchandiser overrides: set, clear, list, history.
    Overrides(overrides_cmd::OverridesArgs),
    /// ERP stock feeds: sign and send a file to the webhook.
    #[command(subcommand)]
    Stock(push_cmd::StockCommand),
    /// ERP product feeds: sign and send a file to the webhook.
    #[command(subcommand)]
    Products(push_cmd::ProductsCommand),
    /// Replay a candidate policy and the live one (or `--baseline FILE`) over ERP history
    /// and compare what each would have paid.
    Whatif(whatif_cmd::WhatIfArgs),
    /// The input archive: export a time range of it as history files for `whatif`.
    #[command(subcommand)]
    History(history_cmd::HistoryCommand),
}

impl Cli {
    fn settings(&self) -> anyhow::Result<Settings> {
        Ok(ratemesh::load_settings(
            self.config.as_deref(),
            EnvSource::Process,
        )?)
    }
}

/// Runs the parsed command.
/// A mistake in the files or flags a command was given (not a failure of the system): the
/// process exits with status 2, like a settings error.
#[derive(Debug)]
pub(crate) struct BadInput(pub(crate) anyhow::Error);

impl std::fmt::Display for BadInput {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{:#}", self.0)
    }
}

impl std::error::Error for BadInput {}

pub(crate) async fn run(cli: Cli) -> anyhow::Result<()> {
    match &cli.command {
        Command::Up(args) => {
            let mut settings = cli.settings()?;
            args.apply(&mut settings)?;
            serve_cmd::run(settings, &ServiceName::ALL, true, args.demo).await
        }
        Command::Serve { service } => {
            serve_cmd::run(cli.settings()?, &[*service], false, false).await
        }
        Command::Config(command) => config_cmd::run(command, cli.settings()),
        Command::Streams(args) => streams_cmd::run(args, cli.settings()).await,
        Command::Keys(command) => keys_cmd::run(command),
        Command::Health(args) => health_cmd::run(args).await,
        Command::Partners(args) => partners_cmd::run(args).await,
        Command::Incentives(args) => incentives_cmd::run(args).await,
        Command::Rates(args) => rates_cmd::run(args).await,
        Command::Overrides(args) => overrides_cmd::run(args).await,
        Command::Stock(push_cmd::StockCommand::Push(args)) => {
            push_cmd::run(push_cmd::Feed::Stock, args).await
        }
        Command::Products(push_cmd::ProductsCommand::Push(args)) => {
            push_cmd::run(push_cmd::Feed::Products, args).await
        }
        Command::Whatif(args) => whatif_cmd::run(args, || cli.settings()).await,
        Command::History(command) => history_cmd::run(command, || cli.settings()),
    }
}

#[cfg(test)]
mod tests {
    use clap::CommandFactory;

    use super::*;

    fn about(path: &[&str]) -> String {
        let mut command = Cli::command();
        for name in path {
            command = command
                .find_subcommand(name)
                .unwrap_or_else(|| panic!("no subcommand {name}"))
                .clone();
        }
        command
            .get_about()
            .map(ToString::to_string)
            .unwrap_or_default()
    }

    #[test]
    fn each_push_describes_its_own_feed() {
        let products = about(&["products", "push"]);
        assert!(products.contains("/v1/products"), "{products}");
        assert!(!products.contains("stock"), "{products}");
        let stock = about(&["stock", "push"]);
        assert!(stock.contains("/v1/stock"), "{stock}");
    }

    #[test]
    fn the_command_line_definition_is_consistent() {
        Cli::command().debug_assert();
    }
}
