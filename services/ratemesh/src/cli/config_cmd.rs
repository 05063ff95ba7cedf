//! `ratemesh config check|dump`.

use clap::Subcommand;
use ratemesh_runtime::Settings;
use ratemesh_runtime::settings::SettingsError;

#[derive(Debug, Subcommand)]
pub(crate) enum ConfigCommand {
    /// Validate the defaults + `--file` + environment layering, the policy file named by
    /// `policy.file` and the TLS certificate and key files; exit code 2 names the bad key.
    Check,
    /// Print the effective settings as TOML, secrets redacted.
    Dump,
}

pub(crate) fn run(
    command: &ConfigCommand,
    settings: anyhow::Result<Settings>,
) -> anyhow::Result<()> {
    let settings = settings?;
    match command {
        ConfigCommand::Check => {
            let policy = check_policy(&settings)?;
            let tls = ratemesh_runtime::tls::check(&settings)?;
            println!(
                "config ok: {} backend, gRPC on {}, {} API key(s), policy {}, {tls}",
                if settings.redis.url().is_some() {
                    "redis"
                } else {
                    "embedded"
                },
                settings.server.grpc_addr,
                settings.auth.keys.len(),
                policy
            );
        }
        ConfigCommand::Dump => print!("{}", settings.to_redacted_toml()),
    }
    Ok(())
}

/// Loads the policy file the way the rates and incentives services do at start, so a bad
/// policy is caught before a deploy rather than by a crash-looping pod. Returns what was
/// checked, for the summary line.
fn check_policy(settings: &Settings) -> Result<String, SettingsError> {
    let path = settings.policy.file.trim();
    let policy = ratemesh_runtime::policy::load_policy(settings)?;
    if path.is_empty() {
        return Ok("built-in example".to_owned());
    }
    Ok(format!("{path} (program {})", policy.program_id))
}
