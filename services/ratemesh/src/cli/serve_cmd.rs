//! `ratemesh up` and `ratemesh serve <service>`: build the services, bind, serve until a
//! signal, drain.

use clap::Args;
use ratemesh_runtime::settings::{ApiKeySettings, ErpSource, Secret};
use ratemesh_runtime::{App, Context, Role, Settings, auth, shutdown, telemetry};

use super::keys_cmd::new_key;
use ratemesh::ServiceName;

#[derive(Debug, Args)]
pub(crate) struct UpArgs {
    /// Use this Redis instead of the embedded backend (same as RATEMESH__REDIS__URL).
    #[arg(long, value_name = "URL")]
    redis: Option<String>,
    /// Load a sample catalogue and run a simulated ERP feed, so rates move and can be
    /// watched (`ratemesh rates watch`). Uses a demo policy without the minimum hold time
    /// unless `rates.policy_file` is set.
    #[arg(long)]
    pub(crate) demo: bool,
}

impl UpArgs {
    pub(crate) fn apply(&self, settings: &mut Settings) -> anyhow::Result<()> {
        if let Some(url) = &self.redis {
            settings.redis.url = url.clone();
            settings.validate()?;
        }
        if self.demo && settings.rates.policy_file.trim().is_empty() {
            settings.rates.policy_file = ratemesh::demo::write_demo_policy()?
                .to_string_lossy()
                .into_owned();
        }
        Ok(())
    }
}

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
    let trial_secret = (!trial_keys.is_empty() && settings.ingest.sources.is_empty()).then(|| {
        let secret = format!("rm_whsec_{}", hex::encode(rand::random::<[u8; 16]>()));
        settings.ingest.sources.push(ErpSource {
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
        announce(&app, &ctx, embedded, &trial_keys, trial_secret.as_deref());
        if let Some(key) = demo_erp_key {
            announce_demo(&trial_keys);
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
    println!(
        "  grpc listening on {}  ({})",
        app.grpc_addr(),
        app.grpc_services().join(", ")
    );
    if let Some(addr) = app.http_addr() {
        println!("  webhooks listening on http://{addr}  (POST /v1/stock, POST /v1/products)");
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
        println!("  trial ERP webhook secret: {secret}  (ratemesh stock push FILE --secret …)");
    }
}

fn announce_demo(trial_keys: &[(Role, String)]) {
    let key_of = |role: Role| {
        trial_keys
            .iter()
            .find(|(r, _)| *r == role)
            .map(|(_, k)| format!(" --key {k}"))
            .unwrap_or_default()
    };
    println!(
        "  demo: {} sample SKUs; a simulated ERP pushes stock every {} s through InventoryIngest",
        ratemesh::demo::CATALOGUE.len(),
        ratemesh::demo::TICK.as_secs()
    );
    println!("  try:  ratemesh rates watch{}", key_of(Role::Network));
    println!("        ratemesh rates list{}", key_of(Role::Network));
    println!(
        "        ratemesh rates explain DEMO-CONSOLE{}",
        key_of(Role::Merchandiser)
    );
}
