//! `ratemesh up` and `ratemesh serve <service>`: build the services, bind, serve until a
//! signal, drain.

use clap::Args;
use ratemesh::{ErpSource, IngestSettings};
use ratemesh_runtime::settings::{ApiKeySettings, Secret};
use ratemesh_runtime::{App, Context, Role, Settings, auth, shutdown, telemetry};

use std::net::SocketAddr;

use super::keys_cmd::new_key;
use super::{client, invocation, push_cmd};
use ratemesh::ServiceName;

#[derive(Debug, Args)]
pub(crate) struct UpArgs {
    /// Use this Redis instead of the embedded backend (same as RATEMESH__REDIS__URL).
    #[arg(long, value_name = "URL")]
    redis: Option<String>,
    /// Load a sample catalogue and run a simulated ERP feed, so rates move and can be
    /// watched (`ratemesh rates watch`). Uses a demo policy without the minimum hold time
    /// unless `policy.file` is set.
    #[arg(long)]
    pub(crate) demo: bool,
}

impl UpArgs {
    pub(crate) fn apply(&self, settings: &mut Settings) -> anyhow::Result<()> {
        if let Some(url) = &self.redis {
            settings.redis.url = url.clone();
            settings.validate()?;
        }
        if self.demo && settings.server.console_addr.is_none() {
            settings.server.console_addr = Some(DEMO_CONSOLE_ADDR);
            settings.validate()?;
        }
        if self.demo && settings.policy.file.trim().is_empty() {
            settings.policy.file = ratemesh::demo::write_demo_policy()?
                .to_string_lossy()
                .into_owned();
        }
        // The demo archives its own feed, so the console's what-if page has something to
        // replay after a minute; only on the embedded backend, where nothing outlives the
        // process but these files in the temporary directory.
        let embedded = settings.redis.url().is_none();
        let ingest = settings.section_mut::<IngestSettings>();
        if self.demo && embedded && ingest.archive.dir().is_none() {
            ingest.archive.dir = demo_archive_dir().to_string_lossy().into_owned();
        }
        Ok(())
    }
}

/// Where `up --demo` keeps its input archive: one directory per process under the
/// temporary directory.
fn demo_archive_dir() -> std::path::PathBuf {
    std::env::temp_dir().join(format!("ratemesh-demo-archive-{}", std::process::id()))
}

/// Where `up --demo` serves the console unless `server.console_addr` says otherwise; when
/// the port is taken, another free one.
const DEMO_CONSOLE_ADDR: SocketAddr =
    SocketAddr::new(std::net::IpAddr::V4(std::net::Ipv4Addr::LOCALHOST), 8088);

/// Keys for trying ratemesh out, printed once; they live only as long as the process.
fn generate_trial_keys(settings: &mut Settings) -> Vec<(Role, String)> {
    Role::ALL
        .into_iter()
        .map(|role| {
            let key = new_key(role);
            settings.auth.keys.push(ApiKeySettings {
                name: format!("trial-{role}"),
                role,
                sha256: auth::hash_key(&key),
                partner_id: (role == Role::Partner).then(|| "trial-partner".to_owned()),
            });
            (role, key)
        })
        .collect()
}

pub(crate) async fn run(
    mut settings: Settings,
    services: &[ServiceName],
    trial_keys_if_none: bool,
    demo: bool,
) -> anyhow::Result<()> {
    let guard = telemetry::init(&settings.telemetry)?;
    let trial_keys = match trial_keys_if_none && settings.auth.keys.is_empty() {
        true => generate_trial_keys(&mut settings),
        false => Vec::new(),
    };
    // Trying ratemesh out should include the webhooks: with trial keys and no ERP source
    // configured, make one with a secret printed once.
    let trial_secret = (!trial_keys.is_empty()
        && settings.section::<IngestSettings>().sources.is_empty())
    .then(|| {
        let secret = format!("rm_whsec_{}", hex::encode(rand::random::<[u8; 16]>()));
        settings
            .section_mut::<IngestSettings>()
            .sources
            .push(ErpSource {
                name: "trial-erp".to_owned(),
                secrets: vec![Secret::new(secret.clone())],
            });
        secret
    });
    // The demo feed pushes with the trial erp key, or with a key of its own when keys
    // are configured.
    let demo_erp_key = demo.then(|| {
        trial_keys
            .iter()
            .find(|(role, _)| *role == Role::Erp)
            .map(|(_, key)| key.clone())
            .unwrap_or_else(|| {
                let key = new_key(Role::Erp);
                settings.auth.keys.push(ApiKeySettings {
                    name: "demo-erp-feed".to_owned(),
                    role: Role::Erp,
                    sha256: auth::hash_key(&key),
                    partner_id: None,
                });
                key
            })
    });
    let embedded = settings.redis.url().is_none();
    let result = async {
        let ctx = Context::connect(settings).await?;
        let modules = ratemesh::build_all(&ctx, services).await?;
        let app = App::bind(&ctx, modules).await?;
        let console = bind_console(&ctx, app.grpc_addr(), demo).await?;
        announce(&app, &ctx, embedded, &trial_keys, trial_secret.as_deref());
        if let Some(console) = console {
            announce_console(&console, &trial_keys);
            let stop = ctx.shutdown().clone();
            tokio::spawn(async move {
                if let Err(err) = console.run(stop).await {
                    tracing::error!(error = %err, "console stopped");
                }
            });
        }
        if let Some(key) = demo_erp_key {
            announce_demo(&trial_keys, app.grpc_addr());
            let (grpc, stop) = (app.grpc_addr(), ctx.shutdown().clone());
            tokio::spawn(async move {
                if let Err(err) = ratemesh::demo::run_feed(grpc, key, stop.cancelled_owned()).await
                {
                    tracing::warn!(error = %err, "demo feed stopped");
                }
            });
        }
        app.run(shutdown::signal()).await
    }
    .await;
    guard.shutdown().await;
    result
}

/// The console, when `server.console_addr` is set, bound and calling this process's gRPC
/// listener (or `console.grpc_endpoint`). The demo's default port may be taken by another
/// program: the demo then takes any free port.
async fn bind_console(
    ctx: &Context,
    grpc: SocketAddr,
    demo: bool,
) -> anyhow::Result<Option<ratemesh_console::Console>> {
    let settings = ctx.settings();
    let Some(addr) = settings.server.console_addr else {
        return Ok(None);
    };
    let config = ratemesh_console::ConsoleConfig::from_settings(settings, grpc)?;
    let bound = match ratemesh_console::Console::bind(addr, config.clone()).await {
        Err(err) if demo && addr == DEMO_CONSOLE_ADDR => {
            tracing::info!(error = %err, %addr, "demo console port taken; using another");
            ratemesh_console::Console::bind(SocketAddr::new(addr.ip(), 0), config).await
        }
        bound => bound,
    };
    let console = bound
        .map_err(|err| anyhow::anyhow!("server.console_addr: cannot listen on {addr}: {err}"))?;
    Ok(Some(console))
}

fn announce_console(console: &ratemesh_console::Console, trial_keys: &[(Role, String)]) {
    let scheme = if console.is_tls() { "https" } else { "http" };
    let url = format!("{scheme}://{}", reachable(console.local_addr()));
    match trial_keys
        .iter()
        .find(|(role, _)| *role == Role::Merchandiser)
    {
        Some((_, key)) => {
            println!("  console on {url}  (open it and sign in with the merchandiser key {key})")
        }
        None => println!("  console on {url}  (sign in with a merchandiser or admin key)"),
    }
}

fn announce(
    app: &App,
    ctx: &Context,
    embedded: bool,
    trial_keys: &[(Role, String)],
    trial_secret: Option<&str>,
) {
    if embedded {
        tracing::warn!(
            "embedded backend: nothing is kept across a restart (use --redis URL or RATEMESH__REDIS__URL for production)"
        );
    } else {
        tracing::info!(redis = %ctx.settings().redis.redacted_url(), "using redis");
    }
    println!(
        "ratemesh {} running: {}",
        env!("CARGO_PKG_VERSION"),
        app.module_names().join(", ")
    );
    let server = &ctx.settings().server;
    println!(
        "  grpc listening on {}{}  ({})",
        app.grpc_addr(),
        if server.tls_enabled() {
            " over TLS"
        } else {
            ""
        },
        app.grpc_services().join(", ")
    );
    if let Some(addr) = app.http_addr() {
        let scheme = if server.tls_enabled() && server.http_tls {
            "https"
        } else {
            "http"
        };
        println!("  webhooks listening on {scheme}://{addr}  (POST /v1/stock, POST /v1/products)");
    }
    println!(
        "  admin listening on http://{}  (/metrics, /livez, /readyz)",
        app.admin_addr()
    );
    if !trial_keys.is_empty() {
        println!("  no API keys configured; trial keys for this run only:");
        for (role, key) in trial_keys {
            println!("    {:<13} {key}", role.as_str());
        }
    }
    if let Some(secret) = trial_secret {
        println!(
            "  trial ERP webhook secret: {secret}  ({})",
            secret_hint(&invocation::prefix(), app.http_addr())
        );
    }
}

/// How to push a feed to this process's webhooks (`--url` only when not the default).
fn secret_hint(prefix: &str, http: Option<SocketAddr>) -> String {
    let url = http
        .map(|addr| format!("http://{}", reachable(addr)))
        .filter(|url| url != push_cmd::DEFAULT_WEBHOOK_URL)
        .map(|url| format!(" --url {url}"))
        .unwrap_or_default();
    format!("{prefix} stock push FILE{url} --secret …")
}

/// Where a client on this machine reaches a listener bound to `addr`.
fn reachable(addr: SocketAddr) -> SocketAddr {
    if addr.ip().is_unspecified() {
        SocketAddr::from(([127, 0, 0, 1], addr.port()))
    } else {
        addr
    }
}

/// `--addr` for client commands of this process, empty when the default reaches it.
fn addr_flag(grpc: SocketAddr) -> String {
    let url = format!("http://{}", reachable(grpc));
    if url == client::DEFAULT_ADDR {
        String::new()
    } else {
        format!(" --addr {url}")
    }
}

fn announce_demo(trial_keys: &[(Role, String)], grpc: SocketAddr) {
    println!(
        "  demo: {} sample SKUs; a simulated ERP pushes stock every {} s through InventoryIngest",
        ratemesh::demo::CATALOGUE.len(),
        ratemesh::demo::TICK.as_secs()
    );
    for (n, command) in demo_commands(&invocation::prefix(), trial_keys, &addr_flag(grpc))
        .iter()
        .enumerate()
    {
        let lead = if n == 0 { "  try:  " } else { "        " };
        println!("{lead}{command}");
    }
}

/// The commands the demo banner suggests, each runnable as printed: `prefix` is how this
/// binary was started ([`invocation::prefix`]), `addr` the `--addr` flag it needs (if any),
/// and each carries the key of the role it needs.
fn demo_commands(prefix: &str, trial_keys: &[(Role, String)], addr: &str) -> Vec<String> {
    let key_of = |role: Role| {
        trial_keys
            .iter()
            .find(|(r, _)| *r == role)
            .map(|(_, k)| format!("{addr} --key {}", invocation::shell_word(k)))
            .unwrap_or_else(|| addr.to_owned())
    };
    let network = key_of(Role::Network);
    let merchandiser = key_of(Role::Merchandiser);
    vec![
        format!("{prefix} rates watch{network}"),
        format!("{prefix} rates list{network}"),
        format!(
            "{prefix} rates explain {}{merchandiser}",
            ratemesh::demo::EXAMPLE_SKU
        ),
        format!(
            "{prefix} overrides set --sku {} --kind pin --value {} --reason launch{merchandiser}",
            ratemesh::demo::EXAMPLE_SKU,
            ratemesh::demo::EXAMPLE_PIN
        ),
    ]
}

#[cfg(test)]
mod tests {
    use clap::Parser;

    use super::*;

    fn trial_keys() -> Vec<(Role, String)> {
        Role::ALL
            .into_iter()
            .map(|role| (role, new_key(role)))
            .collect()
    }

    #[test]
    fn demo_commands_start_with_the_invocation_and_parse_as_printed() {
        for prefix in ["cargo run -p ratemesh --", "/tmp/build/ratemesh"] {
            for command in demo_commands(prefix, &trial_keys(), "") {
                let rest = command
                    .strip_prefix(prefix)
                    .unwrap_or_else(|| panic!("{command:?} does not start with {prefix:?}"));
                let words = std::iter::once("ratemesh").chain(rest.split_whitespace());
                if let Err(err) = crate::cli::Cli::try_parse_from(words) {
                    panic!("{command:?} does not parse: {err}");
                }
                assert!(command.contains(" --key rm_"), "{command}");
            }
        }
    }

    #[test]
    fn the_demo_turns_the_console_on_unless_told_where_and_plain_up_leaves_it_off() {
        let up = |demo| UpArgs { redis: None, demo };
        let mut settings = Settings::default();
        up(false).apply(&mut settings).expect("applies");
        assert_eq!(settings.server.console_addr, None);
        up(true).apply(&mut settings).expect("applies");
        assert_eq!(settings.server.console_addr, Some(DEMO_CONSOLE_ADDR));
        let mut settings = Settings::default();
        let chosen: SocketAddr = "127.0.0.1:18088".parse().expect("addr");
        settings.server.console_addr = Some(chosen);
        up(true).apply(&mut settings).expect("applies");
        assert_eq!(settings.server.console_addr, Some(chosen));
    }

    #[test]
    fn the_demo_archives_its_own_feed_on_the_embedded_backend_unless_told_where() {
        let up = |demo, redis: Option<&str>| UpArgs {
            redis: redis.map(str::to_owned),
            demo,
        };
        let archive = |settings: &Settings| {
            settings
                .section::<IngestSettings>()
                .archive
                .dir()
                .map(str::to_owned)
        };
        let mut settings = Settings::default();
        up(false, None).apply(&mut settings).expect("applies");
        assert_eq!(archive(&settings), None);
        up(true, None).apply(&mut settings).expect("applies");
        assert_eq!(
            archive(&settings),
            Some(demo_archive_dir().to_string_lossy().into_owned())
        );

        let mut settings = Settings::default();
        settings.section_mut::<IngestSettings>().archive.dir = "/var/lib/ratemesh/archive".into();
        up(true, None).apply(&mut settings).expect("applies");
        assert_eq!(
            archive(&settings).as_deref(),
            Some("/var/lib/ratemesh/archive")
        );

        // On a Redis the demo leaves no consumer group behind that nobody asked for.
        let mut settings = Settings::default();
        up(true, Some("redis://127.0.0.1:6390"))
            .apply(&mut settings)
            .expect("applies");
        assert_eq!(archive(&settings), None);
    }

    #[test]
    fn printed_commands_reach_this_process_where_it_listens() {
        let default: SocketAddr = "0.0.0.0:50051".parse().expect("addr");
        assert_eq!(addr_flag(default), "");
        let other: SocketAddr = "127.0.0.1:41000".parse().expect("addr");
        for command in demo_commands("ratemesh", &trial_keys(), &addr_flag(other)) {
            assert!(
                command.contains(" --addr http://127.0.0.1:41000"),
                "{command}"
            );
        }
        let hint = secret_hint("cargo run -p ratemesh --", "0.0.0.0:8080".parse().ok());
        assert_eq!(hint, "cargo run -p ratemesh -- stock push FILE --secret …");
        let hint = secret_hint("ratemesh", "127.0.0.1:9999".parse().ok());
        assert_eq!(
            hint,
            "ratemesh stock push FILE --url http://127.0.0.1:9999 --secret …"
        );
    }
}
