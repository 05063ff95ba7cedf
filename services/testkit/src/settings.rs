//! Settings of a test deployment: ephemeral ports, a known API key per role, one ERP
//! source, partner webhooks to loopback allowed, and a policy without peak windows.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use ratemesh_bus::BusOptions;
use ratemesh_core::Policy;
use ratemesh_ingest::{ErpSource, IngestSettings};
use ratemesh_notifier::NotifierSettings;
use ratemesh_runtime::settings::{ApiKeySettings, Secret};
use ratemesh_runtime::{Role, Settings, auth};

/// The signing secret of the ERP source of [`test_settings`].
pub const ERP_SECRET: &str = "test-erp-secret-0123456789";

/// The partner id the `partner` role's key belongs to.
pub const PARTNER_ID: &str = "test-partner";

/// The plaintext key each role's test client sends.
pub fn key_of(role: Role) -> String {
    format!("test-key-{role}")
}

/// One key per role, each hashed as the deployment stores it; the `partner` key belongs
/// to `partner_id`.
pub fn keys_per_role(partner_id: &str) -> Vec<ApiKeySettings> {
    Role::ALL
        .into_iter()
        .map(|role| ApiKeySettings {
            name: format!("test-{role}"),
            role,
            sha256: auth::hash_key(&key_of(role)),
            partner_id: (role == Role::Partner).then(|| partner_id.to_owned()),
        })
        .collect()
}

/// Writes `policy` to a file of this test process and returns its path, for
/// `policy.file`.
pub fn policy_file(policy: &Policy) -> String {
    static WRITTEN: AtomicU64 = AtomicU64::new(0);
    let path = std::env::temp_dir().join(format!(
        "ratemesh-test-policy-{}-{}.toml",
        std::process::id(),
        WRITTEN.fetch_add(1, Ordering::Relaxed)
    ));
    std::fs::write(&path, policy.to_toml()).expect("writing the test policy");
    path.to_string_lossy().into_owned()
}

/// Every listener on 127.0.0.1 port 0, one key per role, and a queueing target the
/// admission layer reaches only under real overload: the base a single-service test adds
/// its own settings to.
///
/// Tests run many at once on a few cores, where the runtime's scheduling delay is often
/// tens of milliseconds because other test processes hold the CPU; at the 5 ms default
/// the adaptive limit would shed a test's calls for load the server under test did not
/// make. The layer's own tests set their targets.
pub fn bare_settings() -> Settings {
    let mut settings = Settings::default();
    let any_port: SocketAddr = "127.0.0.1:0".parse().expect("addr");
    settings.server.grpc_addr = any_port;
    settings.server.http_addr = any_port;
    settings.server.admin_addr = any_port;
    settings.server.queue_delay_target_ms = 500;
    settings.auth.keys = keys_per_role(PARTNER_ID);
    settings
}

/// Settings for a test of the whole mesh: [`bare_settings`], one ERP source signing with
/// [`ERP_SECRET`], partner webhooks to loopback over plain HTTP allowed, short notifier
/// windows, and the example policy without its peak windows, so what a test expects does
/// not change during BFCM.
pub fn test_settings() -> Settings {
    let mut settings = bare_settings();
    settings.policy.file = policy_file(&Policy::example().off_peak().expect("off-peak"));
    settings.server.shutdown_grace_ms = 5_000;
    settings.section_mut::<IngestSettings>().sources = erp_source("erp-main", &[ERP_SECRET]);
    allow_local_partners(&mut settings);
    let notifier = settings.section_mut::<NotifierSettings>();
    notifier.timer_poll_ms = 20;
    notifier.partner_refresh_ms = 50;
    settings
}

/// One ERP source named `name` that signs with any of `secrets` (current first).
pub fn erp_source(name: &str, secrets: &[&str]) -> Vec<ErpSource> {
    vec![ErpSource {
        name: name.into(),
        secrets: secrets.iter().map(|secret| Secret::new(*secret)).collect(),
    }]
}

/// Lets partner webhooks go to loopback over plain HTTP, where test sinks listen.
pub fn allow_local_partners(settings: &mut Settings) {
    let notifier = settings.section_mut::<NotifierSettings>();
    notifier.allow_private_destinations = true;
    notifier.allow_plain_http = true;
}

/// Bus options for tests on Redis: a few partitions (so partitioning is exercised) and a
/// short reclaim time (so redelivery tests do not wait long).
pub fn test_bus_options() -> BusOptions {
    BusOptions {
        partitions: 4,
        reclaim_idle: Duration::from_millis(500),
        read_block: Duration::from_millis(100),
        ..BusOptions::default()
    }
}
