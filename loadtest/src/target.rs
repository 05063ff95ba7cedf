//! What the load goes to: a ratemesh started in this process (the default, so
//! `ratemesh-loadtest <scenario>` is self-contained) or an external one given by address,
//! keys and the ERP signing secret.
//!
//! In-process, every service runs through `ratemesh::build_all` and `App` exactly as
//! `ratemesh up --redis URL` runs them, with the load-test policy of [`policy_toml`], on
//! the Redis [`RedisSpec`] names: a private `redis-server` (the default), a private
//! six-node Redis Cluster, or a given server or cluster.
//!
//! The in-process ratemesh runs on a [`ServerRuntime`] of its own, as its own process
//! would: the load generator's tasks never queue in front of the server's, nor the
//! server's in front of the answers the client is timing, so a latency is the server's
//! and not the client's backlog. The two still share the machine's cores.

use ratemesh::IngestSettings;
use std::path::PathBuf;
use std::time::Duration;

use anyhow::Context as _;
use ratemesh::ServiceName;
use ratemesh_bus::Bus;
use ratemesh_bus::testkit::{RedisCluster, RedisServer};
use ratemesh_runtime::{Role, Settings};
pub use ratemesh_testkit::Bearer;
use ratemesh_testkit::TestApp;
use ratemesh_testkit::settings::{allow_local_partners, bare_settings, erp_source};
use ratemesh_testkit::{key_of, wait_serving};
use tonic::transport::{Channel, Endpoint};

use crate::redis_baseline::DirectRedis;

/// Where to find an external ratemesh.
#[derive(Debug, Clone)]
pub struct External {
    /// gRPC address (host:port).
    pub grpc: String,
    /// ERP webhook address (host:port).
    pub webhook: String,
    /// API keys by role.
    pub erp_key: String,
    pub network_key: String,
    pub merchandiser_key: String,
    pub admin_key: String,
    /// A signing secret of one of the deployment's `[[ingest.sources]]`.
    pub erp_secret: String,
    /// Redis of the deployment ([`RedisSpec::Server`] or [`RedisSpec::Cluster`]) and its
    /// key prefix, for backlog figures and baselines.
    pub redis: Option<RedisSpec>,
    pub key_prefix: String,
    /// Stream partitions of the deployment (to read backlog across them).
    pub partitions: u16,
}

/// The Redis ratemesh runs on.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub enum RedisSpec {
    /// A `redis-server` started for the run (free port, no persistence, no replicas).
    #[default]
    PrivateServer,
    /// A Redis Cluster started for the run: six `redis-server`s on this machine, three
    /// primaries with a replica each (the bus test kit's [`RedisCluster`]).
    PrivateCluster,
    /// A running Redis server, by URL.
    Server(String),
    /// A running Redis Cluster, by its seed nodes' URLs.
    Cluster(Vec<String>),
}

impl RedisSpec {
    /// The Redis is a cluster.
    pub fn is_cluster(&self) -> bool {
        matches!(self, RedisSpec::PrivateCluster | RedisSpec::Cluster(_))
    }
}

/// A ratemesh started in this process.
#[derive(Debug, Clone)]
pub struct InProcess {
    /// Where its Redis is.
    pub redis: RedisSpec,
    /// Stream partitions (as `redis.partitions`).
    pub partitions: u16,
    /// Replicas that must confirm an accepted push before ingest answers 202 (as
    /// `redis.min_replica_acks`).
    pub min_replica_acks: u32,
    /// Start of a peak window in the policy, for the BFCM scenario.
    pub peak_at: Option<chrono::DateTime<chrono::Utc>>,
    /// `[server]` settings of the in-process ratemesh that differ from its defaults, as
    /// (key, TOML value).
    pub server_settings: Vec<(String, String)>,
    /// How much higher than the load generator's the nice value of the in-process
    /// ratemesh's threads (and of a private redis-server) is: with it, the kernel runs the
    /// load generator first, as if it had cores of its own.
    pub server_nice: i32,
}

impl InProcess {
    /// On `redis` with `partitions` partitions, no replica confirmations, no peak window.
    pub fn on(redis: RedisSpec, partitions: u16) -> Self {
        Self {
            redis,
            partitions,
            min_replica_acks: 0,
            peak_at: None,
            server_settings: Vec::new(),
            server_nice: 0,
        }
    }
}

/// How to start or reach ratemesh.
#[derive(Debug, Clone)]
pub enum TargetSpec {
    /// Start every service in this process.
    InProcess(InProcess),
    /// An already running ratemesh.
    External(External),
}

/// A reachable ratemesh with what the scenarios need to talk to it.
pub struct Target {
    /// gRPC address.
    pub grpc: String,
    /// ERP webhook address.
    pub webhook: String,
    erp_key: String,
    network_key: String,
    merchandiser_key: String,
    admin_key: String,
    /// The ERP signing secret.
    pub erp_secret: String,
    /// The deployment's Redis reached directly (for the baselines and memory figures),
    /// when known.
    pub redis: Option<DirectRedis>,
    /// A bus handle on the deployment's keys, for stream backlog figures.
    pub bus: Option<Bus>,
    /// Settings the in-process ratemesh runs with (to start more replicas on it).
    pub settings: Option<Settings>,
    /// What this is, for the report.
    pub description: String,
    running: Option<TestApp>,
    /// The runtime `running` (and any replica a scenario adds) runs on; dropped after it.
    server: Option<ServerRuntime>,
    // Dropped last: the private Redis outlives the services on it.
    _policy: Option<tempfile::NamedTempFile>,
    _redis: Option<RedisServer>,
    _cluster: Option<RedisCluster>,
}

const ERP_SECRET: &str = "loadtest-erp-secret-0123456789abcdef";

/// The policy the in-process target runs: the example policy's shape with damping off
/// (no hold time, no step limit, no hysteresis), so every stock move that changes a band
/// publishes a rate at once and freshness measures the pipeline, not the damping. A peak
/// window starts at `peak_at` when given; none of its multipliers equals one of the
/// normal table's, so its opening moves every card (and the sweep can be seen per SKU).
pub fn policy_toml(peak_at: Option<chrono::DateTime<chrono::Utc>>) -> String {
    let mut policy = String::from(
        r#"[program]
id = "loadtest"
time_zone = "UTC"
mode = "direct"
rate_decimals = 4
max_concurrent_incentives = 200
"#,
    );
    if let Some(at) = peak_at {
        let end = at + chrono::Duration::days(1);
        policy.push_str(&format!(
            r#"
[[peak_windows]]
name = "loadtest-peak"
start = "{}"
end = "{}"
bands = [
    {{ name = "scarce", max_days = "2", multiplier = "0.7" }},
    {{ name = "low", max_days = "7", multiplier = "0.9" }},
    {{ name = "normal", max_days = "21", multiplier = "1.1" }},
    {{ name = "overstock", max_days = "45", multiplier = "1.5" }},
    {{ name = "deep-overstock", multiplier = "2.0" }},
]
"#,
            at.format("%Y-%m-%dT%H:%M:%S"),
            end.format("%Y-%m-%dT%H:%M:%S")
        ));
    }
    policy.push_str(
        r#"
[defaults]
base_rate = "0.05"
bands = [
    { name = "scarce", max_days = "3", multiplier = "0.6" },
    { name = "low", max_days = "10", multiplier = "0.85" },
    { name = "normal", max_days = "60", multiplier = "1.0" },
    { name = "overstock", max_days = "120", multiplier = "1.3" },
    { name = "deep-overstock", multiplier = "1.6" },
]
hysteresis = "0"
max_step = "1"
min_hold_minutes = 0
floor = "0.01"
cap = "0.20"
margin_share = "0.40"

[defaults.flash]
enabled = true
min_cover_days = "150"
exit_cover_days = "60"
min_velocity = "0.2"
bonus = "0.02"
duration_hours = 48
budget_spend = "1000"
budget_units = "300"
cooldown_hours = 168
max_extensions = 1
max_concurrent = 50
"#,
    );
    policy
}

/// Settings of the in-process ratemesh: free ports, one key per role, one ERP source,
/// partner webhooks to the local sink allowed.
/// Sets `[server]` keys of `settings` from (key, TOML value) pairs, then validates.
pub fn apply_server_settings(
    settings: &mut Settings,
    pairs: &[(String, String)],
) -> anyhow::Result<()> {
    if pairs.is_empty() {
        return Ok(());
    }
    let mut table = toml::Table::try_from(&settings.server).context("[server] as TOML")?;
    for (key, value) in pairs {
        anyhow::ensure!(
            table.contains_key(key),
            "--server-setting {key}: [server] has no such key"
        );
        let value: toml::Table = toml::from_str(&format!("value = {value}"))
            .with_context(|| format!("--server-setting {key}={value}: not a TOML value"))?;
        table.insert(key.clone(), value["value"].clone());
    }
    settings.server = table
        .try_into()
        .context("--server-setting: a value has the wrong type")?;
    settings
        .validate()
        .map_err(|e| anyhow::anyhow!("--server-setting: {e}"))
}

fn in_process_settings(policy_file: PathBuf, partitions: u16) -> Settings {
    let mut settings = bare_settings();
    // The functional tests' queueing target is for test machines full of other tests;
    // the load test measures the server as deployed.
    settings.server.queue_delay_target_ms = Settings::default().server.queue_delay_target_ms;
    settings.server.shutdown_grace_ms = 5_000;
    settings.section_mut::<IngestSettings>().sources = erp_source("loadtest-erp", &[ERP_SECRET]);
    allow_local_partners(&mut settings);
    settings.policy.file = policy_file.display().to_string();
    settings.redis.partitions = partitions;
    settings
}

impl Target {
    /// Starts or connects to ratemesh as `spec` says and waits until it is SERVING.
    pub async fn start(spec: &TargetSpec) -> anyhow::Result<Self> {
        match spec {
            TargetSpec::InProcess(spec) => Self::in_process(spec).await,
            TargetSpec::External(ext) => Self::external(ext).await,
        }
    }

    async fn in_process(spec: &InProcess) -> anyhow::Result<Self> {
        let mut policy = tempfile::NamedTempFile::new().context("creating the policy file")?;
        std::io::Write::write_all(&mut policy, policy_toml(spec.peak_at).as_bytes())?;
        let partitions = spec.partitions.max(1);
        let mut settings = in_process_settings(policy.path().to_owned(), partitions);
        apply_server_settings(&mut settings, &spec.server_settings)?;
        let (mut server, mut cluster) = (None, None);
        let (urls, on) = match &spec.redis {
            RedisSpec::PrivateServer => {
                let started = RedisServer::try_start_with(Default::default())
                    .map_err(|e| anyhow::anyhow!(e))?;
                let url = started.url();
                server = Some(started);
                (vec![url], "a private redis-server".to_owned())
            }
            RedisSpec::PrivateCluster => {
                // Forming the cluster runs redis-cli and waits for the replicas to sync.
                let started =
                    tokio::task::spawn_blocking(
                        || RedisCluster::try_start_with(Default::default()),
                    )
                    .await?
                    .map_err(|e| anyhow::anyhow!(e))?;
                let urls = started.urls();
                cluster = Some(started);
                (
                    urls,
                    "a private redis cluster (3 primaries, 3 replicas, on this machine)".to_owned(),
                )
            }
            RedisSpec::Server(url) => (vec![url.clone()], "the given redis".to_owned()),
            RedisSpec::Cluster(urls) => (urls.clone(), "the given redis cluster".to_owned()),
        };
        settings.redis.url = urls.join(",");
        settings.redis.cluster = spec.redis.is_cluster();
        settings.redis.min_replica_acks = spec.min_replica_acks;
        settings.redis.key_prefix = ratemesh_bus::testkit::unique_prefix();
        let direct = if settings.redis.cluster {
            DirectRedis::cluster(&urls, &settings.redis.key_prefix, u32::from(partitions))
        } else {
            DirectRedis::server(&urls[0], &settings.redis.key_prefix, u32::from(partitions))
        };
        if let Some(pid) = server.as_ref().and_then(RedisServer::pid) {
            lower_priority(Some(pid), spec.server_nice);
        }
        let server_runtime = ServerRuntime::new(spec.server_nice)?;
        let (bus, app) = {
            let settings = settings.clone();
            let handle = server_runtime.handle();
            tokio::task::spawn_blocking(move || {
                handle.block_on(async move {
                    let bus = ratemesh_runtime::backend::connect(&settings).await?;
                    let app = TestApp::try_spawn_services(settings, bus.clone(), &ServiceName::ALL)
                        .await?;
                    anyhow::Ok((bus, app))
                })
            })
            .await??
        };
        let grpc = app.grpc.to_string();
        let webhook = app
            .http
            .context("the ingest service bound no webhook port")?
            .to_string();
        let mut description =
            format!("in-process ratemesh (all four services) on {on}, {partitions} partition(s)");
        if settings.redis.cluster {
            // Which primaries the partitions' slots fall on decides how the load spreads.
            let spread = direct.partitions_per_primary().await?;
            let spread: Vec<String> = spread.iter().map(usize::to_string).collect();
            description.push_str(&format!(" on the primaries as {}", spread.join("/")));
        }
        if spec.min_replica_acks > 0 {
            description.push_str(&format!(", min_replica_acks {}", spec.min_replica_acks));
        }
        for (key, value) in &spec.server_settings {
            description.push_str(&format!(", server.{key} = {value}"));
        }
        if spec.server_nice > 0 {
            description.push_str(&format!(
                ", server and redis at nice +{} (the load generator first)",
                spec.server_nice
            ));
        }
        let target = Target {
            grpc,
            webhook,
            erp_key: key_of(Role::Erp),
            network_key: key_of(Role::Network),
            merchandiser_key: key_of(Role::Merchandiser),
            admin_key: key_of(Role::Admin),
            erp_secret: ERP_SECRET.to_owned(),
            redis: Some(direct),
            bus: Some(bus),
            settings: Some(settings),
            description,
            running: Some(app),
            server: Some(server_runtime),
            _policy: Some(policy),
            _redis: server,
            _cluster: cluster,
        };
        wait_serving(&target.grpc, Duration::from_secs(30)).await?;
        Ok(target)
    }

    async fn external(ext: &External) -> anyhow::Result<Self> {
        let mut options = ratemesh_bus::BusOptions::embedded();
        options.partitions = u32::from(ext.partitions.max(1));
        let partitions = options.partitions;
        let (bus, direct) = match &ext.redis {
            None => (None, None),
            Some(RedisSpec::Server(url)) => (
                Some(Bus::redis(url, &ext.key_prefix, options).await?),
                Some(DirectRedis::server(url, &ext.key_prefix, partitions)),
            ),
            Some(RedisSpec::Cluster(urls)) => (
                Some(Bus::redis_cluster(urls, &ext.key_prefix, options).await?),
                Some(DirectRedis::cluster(urls, &ext.key_prefix, partitions)),
            ),
            Some(private) => anyhow::bail!(
                "an external deployment runs on its own redis, not on {private:?}: give its \
                 server or cluster"
            ),
        };
        wait_serving(&ext.grpc, Duration::from_secs(10)).await?;
        Ok(Target {
            grpc: ext.grpc.clone(),
            webhook: ext.webhook.clone(),
            erp_key: ext.erp_key.clone(),
            network_key: ext.network_key.clone(),
            merchandiser_key: ext.merchandiser_key.clone(),
            admin_key: ext.admin_key.clone(),
            erp_secret: ext.erp_secret.clone(),
            redis: direct,
            bus,
            settings: None,
            description: format!("external ratemesh at {}", ext.grpc),
            running: None,
            server: None,
            _policy: None,
            _redis: None,
            _cluster: None,
        })
    }

    /// `connections` gRPC connections (HTTP/2 each) to the target.
    pub async fn channels(&self, connections: usize) -> anyhow::Result<Vec<Channel>> {
        channels(&self.grpc, connections).await
    }

    /// The bearer interceptor of `role`.
    pub fn bearer(&self, role: Role) -> Bearer {
        Bearer::key(self.api_key(role))
    }

    /// The API key of `role` (what [`Target::bearer`] sends), for clients that build
    /// their own `authorization` header.
    pub fn api_key(&self, role: Role) -> &str {
        match role {
            Role::Erp => &self.erp_key,
            Role::Merchandiser => &self.merchandiser_key,
            Role::Admin => &self.admin_key,
            _ => &self.network_key,
        }
    }

    /// Runs the future `make` returns where the in-process ratemesh runs (for a server a
    /// scenario adds, such as a second replica or a baseline), or on this runtime when the
    /// target is external. What it spawns runs on that runtime's workers; the future itself
    /// is driven from a blocking thread, so it need not be `Send`.
    pub fn on_server<M, F>(&self, make: M) -> tokio::task::JoinHandle<F::Output>
    where
        M: FnOnce() -> F + Send + 'static,
        F: Future,
        F::Output: Send + 'static,
    {
        match &self.server {
            Some(server) => server.block_on(make),
            None => {
                let handle = tokio::runtime::Handle::current();
                tokio::task::spawn_blocking(move || handle.block_on(make()))
            }
        }
    }

    /// Stops the in-process ratemesh (nothing for an external one).
    pub async fn stop(mut self) -> anyhow::Result<()> {
        if let Some(app) = self.running.take() {
            self.on_server(move || app.try_stop()).await??;
        }
        Ok(())
    }
}

/// A multi-thread runtime with one worker per core, for servers started in this process.
/// Dropping it stops its tasks without waiting (so it may be dropped from async code).
pub struct ServerRuntime {
    runtime: Option<tokio::runtime::Runtime>,
    nice: i32,
}

impl ServerRuntime {
    /// Starts the runtime's threads (named `server`), `nice` above this process's nice
    /// value; the threads they start (a background runtime's, blocking ones) inherit it.
    pub fn new(nice: i32) -> anyhow::Result<Self> {
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .thread_name("server")
            .on_thread_start(move || lower_priority(None, nice))
            .enable_all()
            .build()
            .context("starting the server runtime")?;
        Ok(Self {
            runtime: Some(runtime),
            nice,
        })
    }

    /// A handle on the runtime.
    pub fn handle(&self) -> tokio::runtime::Handle {
        self.runtime
            .as_ref()
            .expect("running until dropped")
            .handle()
            .clone()
    }

    /// Runs the future `make` returns in the runtime, driven from a thread of the runtime's
    /// nice value (so whatever it starts from there inherits that too).
    pub fn block_on<M, F>(&self, make: M) -> tokio::task::JoinHandle<F::Output>
    where
        M: FnOnce() -> F + Send + 'static,
        F: Future,
        F::Output: Send + 'static,
    {
        let (handle, nice) = (self.handle(), self.nice);
        let (done, output) = tokio::sync::oneshot::channel();
        let driver = std::thread::Builder::new()
            .name("server-driver".into())
            .spawn(move || {
                lower_priority(None, nice);
                let _ = done.send(handle.block_on(make()));
            });
        tokio::spawn(async move {
            driver.expect("starting a server thread");
            output.await.expect("the server thread panicked")
        })
    }
}

impl Drop for ServerRuntime {
    fn drop(&mut self) {
        if let Some(runtime) = self.runtime.take() {
            runtime.shutdown_background();
        }
    }
}

/// Raises the nice value of `pid` (a process's main thread) or of the calling thread by
/// `nice`; a failure is reported once, and the figures then say nothing about priority.
#[cfg(target_os = "linux")]
fn lower_priority(pid: Option<u32>, nice: i32) {
    static WARNED: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(false);
    if nice == 0 {
        return;
    }
    let target = match pid {
        Some(pid) => i32::try_from(pid)
            .ok()
            .and_then(rustix::process::Pid::from_raw),
        None => Some(rustix::thread::gettid()),
    };
    let lowered = rustix::process::getpriority_process(target)
        .and_then(|own| rustix::process::setpriority_process(target, (own + nice).min(19)));
    if let Err(err) = lowered
        && !WARNED.swap(true, std::sync::atomic::Ordering::Relaxed)
    {
        eprintln!("cannot raise the server's nice value by {nice}: {err}");
    }
}

#[cfg(not(target_os = "linux"))]
fn lower_priority(_pid: Option<u32>, nice: i32) {
    if nice != 0 {
        eprintln!("--server-nice is for Linux, where a nice value belongs to a thread");
    }
}

/// Opens `connections` channels to `addr`.
pub async fn channels(addr: &str, connections: usize) -> anyhow::Result<Vec<Channel>> {
    let mut out = Vec::with_capacity(connections.max(1));
    for _ in 0..connections.max(1) {
        let channel = Endpoint::from_shared(format!("http://{addr}"))?
            .tcp_nodelay(true)
            .connect_timeout(Duration::from_secs(5))
            .connect()
            .await
            .with_context(|| format!("connecting to {addr}"))?;
        out.push(channel);
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_in_process_ratemesh_admits_calls_as_deployed() {
        let settings = in_process_settings(PathBuf::from("policy.toml"), 1);
        assert_eq!(
            settings.server.admission(),
            Settings::default().server.admission(),
            "the load test must measure the admission layer with its production settings"
        );
    }
}
