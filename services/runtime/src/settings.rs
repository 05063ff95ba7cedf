//! Typed settings: built-in defaults, then an optional TOML file, then `RATEMESH__…`
//! environment variables.
//!
//! Every problem is reported with the dotted key it concerns (`server.grpc_addr`,
//! `auth.keys[1].sha256`) so an operator can fix it without reading code.

use std::any::Any;
use std::collections::{BTreeMap, HashSet};
use std::fmt;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};

use crate::role::Role;

/// The defaults every layering starts from; also the reference for every key.
pub const DEFAULTS_TOML: &str = include_str!("defaults.toml");

/// Prefix of environment variables that override settings (`RATEMESH__SERVER__GRPC_ADDR`).
pub const ENV_PREFIX: &str = "RATEMESH";

/// A setting that could not be loaded or is not valid.
#[derive(Debug, thiserror::Error)]
#[error("invalid config: {key}: {problem}")]
pub struct SettingsError {
    /// The dotted key, e.g. `server.request_timeout_ms`.
    pub key: String,
    /// What is wrong with it.
    pub problem: String,
}

impl SettingsError {
    /// A problem with the setting at the dotted `key`.
    pub fn new(key: impl Into<String>, problem: impl Into<String>) -> Self {
        Self {
            key: key.into(),
            problem: problem.into(),
        }
    }

    /// Errors from the `config` crate carry their key inside the message; pull it out so
    /// the report names it the same way as our own validation does.
    fn from_config(err: config::ConfigError) -> Self {
        let message = err.to_string();
        let key = message
            .split("for key `")
            .nth(1)
            .and_then(|rest| rest.split('`').next())
            .map(str::to_owned);
        match key {
            Some(key) => Self::new(key, message),
            None => Self::new("(config)", message),
        }
    }
}

/// Where environment overrides come from.
#[derive(Debug, Clone, Default)]
pub enum EnvSource {
    /// The process environment (what the binary uses).
    #[default]
    Process,
    /// An explicit map of variable name → value (what tests use; never touches the process).
    Map(BTreeMap<String, String>),
    /// No environment overrides.
    None,
}

/// All of ratemesh's settings: the frame every service shares, plus the sections the
/// services own ([`Section`]), composed by whoever assembles the process.
#[derive(Debug, Clone, PartialEq)]
pub struct Settings {
    /// Listeners, timeouts and limits of the gRPC, webhook and admin servers.
    pub server: ServerSettings,
    /// The production backend; empty URL means the embedded one.
    pub redis: RedisSettings,
    /// Logs and traces.
    pub telemetry: TelemetrySettings,
    /// API keys and their roles.
    pub auth: AuthSettings,
    /// The rate policy shared by the rates and incentives services.
    pub policy: PolicySettings,
    /// How long stream entries are kept.
    pub retention: RetentionSettings,
    /// The merchandiser web console, when `server.console_addr` turns it on.
    pub console: ConsoleSettings,
    /// The services' own sections, by name.
    sections: Sections,
}

/// The frame's part of a layering, as deserialized; the services' sections are read
/// separately, each by its own type.
#[derive(Deserialize)]
struct Frame {
    server: ServerSettings,
    redis: RedisSettings,
    telemetry: TelemetrySettings,
    auth: AuthSettings,
    policy: PolicySettings,
    retention: RetentionSettings,
    console: ConsoleSettings,
}

/// The top-level tables the frame itself owns.
const FRAME_SECTIONS: [&str; 7] = [
    "server",
    "redis",
    "telemetry",
    "auth",
    "policy",
    "retention",
    "console",
];

/// The merchandiser web console (`[console]`); it listens on `server.console_addr`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ConsoleSettings {
    /// The gRPC endpoint (`http://host:port` or `https://…`) the console's JSON gateway
    /// calls for every service not given its own endpoint below. Empty: this process's own
    /// `server.grpc_addr`, which serves every service under `ratemesh up`.
    pub grpc_endpoint: String,
    /// The endpoint of `RateService` and `OverrideService` (the rates service); empty:
    /// `grpc_endpoint`. With one Deployment per service, each service has its own address.
    pub rates_endpoint: String,
    /// The endpoint of `IncentiveService` (the incentives service); empty: `grpc_endpoint`.
    pub incentives_endpoint: String,
    /// The endpoint of `PartnerService` (the notifier); empty: `grpc_endpoint`.
    pub notifier_endpoint: String,
    /// The endpoint of `PolicyService` (what-if runs), served by the ingest process that
    /// keeps the input archive (`ingest.archive.dir`); empty: `grpc_endpoint`.
    pub policy_endpoint: String,
    /// How long a signed-in session lasts without being used.
    pub session_idle_minutes: u64,
}

impl ConsoleSettings {
    /// Every endpoint setting with its key, the shared `grpc_endpoint` first.
    pub fn endpoints(&self) -> [(&'static str, &str); 5] {
        [
            ("console.grpc_endpoint", &self.grpc_endpoint),
            ("console.rates_endpoint", &self.rates_endpoint),
            ("console.incentives_endpoint", &self.incentives_endpoint),
            ("console.notifier_endpoint", &self.notifier_endpoint),
            ("console.policy_endpoint", &self.policy_endpoint),
        ]
    }
}

/// The rate policy (`[policy]`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PolicySettings {
    /// The policy file (TOML, see services/core/POLICY.md); empty: the built-in example
    /// policy. Checked at start: an invalid policy stops the process naming the key.
    pub file: String,
}

/// A service's own settings section (`[rates]`, `[notifier]`, …). The service crate owns
/// the type, its documented defaults and its checks; the frame layers the section with
/// every other (defaults, file, environment) and reports its problems the same way.
pub trait Section:
    Serialize + DeserializeOwned + Clone + fmt::Debug + PartialEq + Send + Sync + 'static
{
    /// The top-level table, e.g. `rates`.
    const NAME: &'static str;
    /// The documented defaults: a TOML document holding one `[NAME]` table with every key.
    const DEFAULTS: &'static str;

    /// Checks what types alone cannot: ranges, formats, consistency. Errors name the
    /// dotted key (`rates.watch_buffer`).
    fn validate(&self) -> Result<(), SettingsError>;

    /// The section as its defaults document gives it.
    fn defaults() -> Self {
        // Each service's tests load its defaults, so they always parse.
        config::Config::builder()
            .add_source(config::File::from_str(
                Self::DEFAULTS,
                config::FileFormat::Toml,
            ))
            .build()
            .and_then(|c| c.get::<Self>(Self::NAME))
            .unwrap_or_else(|e| panic!("built-in defaults of [{}]: {e}", Self::NAME))
    }
}

/// A section a process knows how to load: what [`Settings::load`] is given, one per
/// service it may run.
#[derive(Clone, Copy)]
pub struct SectionDef {
    name: &'static str,
    defaults: &'static str,
    load: fn(&config::Config) -> Result<Box<dyn AnySection>, SettingsError>,
}

impl fmt::Debug for SectionDef {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_tuple("SectionDef").field(&self.name).finish()
    }
}

impl SectionDef {
    /// The definition of section `T`.
    pub fn of<T: Section>() -> Self {
        Self {
            name: T::NAME,
            defaults: T::DEFAULTS,
            load: load_section::<T>,
        }
    }

    /// The section's table name.
    pub fn name(&self) -> &'static str {
        self.name
    }
}

fn load_section<T: Section>(c: &config::Config) -> Result<Box<dyn AnySection>, SettingsError> {
    // Deserialized from the whole layering (not `get(NAME)`), so errors carry the full
    // dotted key (`rates.watch_buffer`) like the frame's do.
    let Only(section) = c
        .clone()
        .try_deserialize::<Only<T>>()
        .map_err(SettingsError::from_config)?;
    let section = section.ok_or_else(|| SettingsError::new(T::NAME, "missing section"))?;
    Ok(Box::new(section))
}

/// The one top-level table `T::NAME` of a layering; every other table is skipped.
struct Only<T>(Option<T>);

impl<'de, T: Section> Deserialize<'de> for Only<T> {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct Tables<T>(std::marker::PhantomData<T>);

        impl<'de, T: Section> serde::de::Visitor<'de> for Tables<T> {
            type Value = Only<T>;

            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                write!(f, "a table holding [{}]", T::NAME)
            }

            fn visit_map<A: serde::de::MapAccess<'de>>(
                self,
                mut map: A,
            ) -> Result<Self::Value, A::Error> {
                let mut found = None;
                while let Some(key) = map.next_key::<String>()? {
                    if key == T::NAME {
                        found = Some(map.next_value::<T>()?);
                    } else {
                        map.next_value::<serde::de::IgnoredAny>()?;
                    }
                }
                Ok(Only(found))
            }
        }

        deserializer.deserialize_map(Tables(std::marker::PhantomData))
    }
}

/// Refuses the first of `values` (dotted key, value) that is 0: the check most numeric
/// settings need.
pub fn require_positive<const N: usize>(values: [(&str, u64); N]) -> Result<(), SettingsError> {
    match values.into_iter().find(|(_, value)| *value == 0) {
        Some((key, _)) => Err(SettingsError::new(key, "must be greater than 0")),
        None => Ok(()),
    }
}

/// Checks a consumer-group member name setting (`rates.consumer_name`, …): empty (derived
/// from the host) or up to 128 characters without spaces.
pub fn check_consumer_name(key: &str, name: &str) -> Result<(), SettingsError> {
    if name.len() > 128 || name.contains(char::is_whitespace) {
        return Err(SettingsError::new(
            key,
            "must be at most 128 characters without spaces",
        ));
    }
    Ok(())
}

/// What each service's tests assert of its section: the documented defaults load and pass
/// its checks, and each `(variable, value, key)` override is refused naming `key`.
pub fn check_section<T: Section>(refused: &[(&str, &str, &str)]) -> Result<(), String> {
    let load = |env: &[(&str, &str)]| {
        let env = env.iter().map(|(k, v)| (k.to_string(), v.to_string()));
        Settings::load(
            None,
            EnvSource::Map(env.collect()),
            &[SectionDef::of::<T>()],
        )
    };
    let defaults = load(&[]).map_err(|e| format!("the defaults of [{}]: {e}", T::NAME))?;
    if defaults.section::<T>() != T::defaults() {
        return Err(format!("[{}] did not load as its defaults", T::NAME));
    }
    for (var, value, key) in refused {
        match load(&[(var, value)]) {
            Err(err) if err.key == *key => {}
            Err(err) => return Err(format!("{var}={value}: expected {key}, got {err}")),
            Ok(_) => return Err(format!("{var}={value} was accepted")),
        }
    }
    Ok(())
}

/// A loaded section with its type erased, so the frame can hold, check, compare and show
/// sections it does not know.
trait AnySection: Any + Send + Sync + fmt::Debug {
    fn clone_box(&self) -> Box<dyn AnySection>;
    fn validate(&self) -> Result<(), SettingsError>;
    fn to_toml(&self) -> Result<toml::Value, toml::ser::Error>;
    fn same_as(&self, other: &dyn AnySection) -> bool;
    fn as_any(&self) -> &dyn Any;
    fn as_any_mut(&mut self) -> &mut dyn Any;
}

impl<T: Section> AnySection for T {
    fn clone_box(&self) -> Box<dyn AnySection> {
        Box::new(self.clone())
    }

    fn validate(&self) -> Result<(), SettingsError> {
        Section::validate(self)
    }

    fn to_toml(&self) -> Result<toml::Value, toml::ser::Error> {
        toml::Value::try_from(self)
    }

    fn same_as(&self, other: &dyn AnySection) -> bool {
        other.as_any().downcast_ref::<T>() == Some(self)
    }

    fn as_any(&self) -> &dyn Any {
        self
    }

    fn as_any_mut(&mut self) -> &mut dyn Any {
        self
    }
}

/// The services' sections, by table name.
#[derive(Debug, Default)]
struct Sections(BTreeMap<&'static str, Box<dyn AnySection>>);

impl Clone for Sections {
    fn clone(&self) -> Self {
        Self(self.0.iter().map(|(k, v)| (*k, v.clone_box())).collect())
    }
}

impl PartialEq for Sections {
    fn eq(&self, other: &Self) -> bool {
        self.0.len() == other.0.len()
            && self
                .0
                .iter()
                .all(|(k, v)| other.0.get(k).is_some_and(|o| v.same_as(o.as_ref())))
    }
}

/// How long entries stay in the shared streams (`[retention]`). The streams are a
/// hand-off, not a record: consumers fold entries into state, so once every group has
/// acknowledged an entry it only serves debugging and slow tails. Entries still pending
/// in, or not yet delivered to, a consumer group are never dropped, whatever these say.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RetentionSettings {
    /// How often every stream is trimmed (each replica does it; trimming is idempotent).
    pub interval_ms: u64,
    /// The `stock` stream (ERP stock and product changes).
    pub stock: StreamRetention,
    /// The `rates` stream (published rate cards).
    pub rates: StreamRetention,
    /// The `overrides` stream (merchandiser overrides).
    pub overrides: StreamRetention,
    /// The `incentives` stream (flash-incentive transitions).
    pub incentives: StreamRetention,
}

/// Retention of one stream.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct StreamRetention {
    /// Entries older than this are dropped.
    pub max_age_secs: u64,
    /// At most this many entries are kept per partition (the memory bound at peak load).
    pub max_len_per_partition: u64,
}

impl StreamRetention {
    /// As the bus takes it.
    pub fn to_bus(self) -> ratemesh_bus::Retention {
        ratemesh_bus::Retention {
            max_len_per_partition: Some(self.max_len_per_partition),
            max_age: Some(Duration::from_secs(self.max_age_secs)),
        }
    }
}

impl RetentionSettings {
    /// [`Self::interval_ms`] as a duration.
    pub fn interval(&self) -> Duration {
        Duration::from_millis(self.interval_ms)
    }

    /// Every stream with its retention, by stream name ([`ratemesh_contract::streams`]).
    pub fn streams(&self) -> [(&'static str, StreamRetention); 4] {
        use ratemesh_contract::streams;
        [
            (streams::STOCK, self.stock),
            (streams::RATES, self.rates),
            (streams::OVERRIDES, self.overrides),
            (streams::INCENTIVES, self.incentives),
        ]
    }

    fn validate(&self) -> Result<(), SettingsError> {
        if self.interval_ms == 0 {
            return Err(SettingsError::new(
                "retention.interval_ms",
                "must be greater than 0",
            ));
        }
        for (stream, r) in self.streams() {
            if r.max_age_secs == 0 {
                return Err(SettingsError::new(
                    format!("retention.{stream}.max_age_secs"),
                    "must be greater than 0",
                ));
            }
            if r.max_len_per_partition == 0 {
                return Err(SettingsError::new(
                    format!("retention.{stream}.max_len_per_partition"),
                    "must be greater than 0",
                ));
            }
        }
        Ok(())
    }
}

/// A signing secret: shown as `[redacted]` in logs and `config dump`.
#[derive(Clone, PartialEq, Eq, Deserialize)]
#[serde(transparent)]
pub struct Secret(String);

impl Secret {
    /// Wraps a secret value.
    pub fn new(value: impl Into<String>) -> Self {
        Self(value.into())
    }

    /// The secret itself, for signing and verifying only.
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("[redacted]")
    }
}

impl Serialize for Secret {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_str("[redacted]")
    }
}

/// Listeners, timeouts and limits.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ServerSettings {
    /// gRPC listener shared by every service in the process.
    pub grpc_addr: SocketAddr,
    /// HTTP listener for ERP webhooks.
    pub http_addr: SocketAddr,
    /// Admin listener: `/metrics`, `/livez`, `/readyz`.
    pub admin_addr: SocketAddr,
    /// Listener of the merchandiser web console; absent: no console.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub console_addr: Option<SocketAddr>,
    /// Deadline for a unary call.
    pub request_timeout_ms: u64,
    /// Calls in flight before new ones are shed.
    pub max_concurrent_requests: usize,
    /// Back-off suggested to shed callers.
    pub shed_retry_after_ms: u64,
    /// Whether each RPC method gets an adaptive concurrency limit under
    /// `max_concurrent_requests`, shrinking when calls queue for the CPU.
    pub adaptive_concurrency: bool,
    /// The runtime scheduling delay (time a ready task waits for a worker) above which the
    /// adaptive limits shrink.
    pub queue_delay_target_ms: u64,
    /// The lowest an adaptive limit goes.
    pub min_concurrency: usize,
    /// Whether a call whose `grpc-timeout` is shorter than the current queueing delay plus
    /// the method's usual service time is refused at once.
    pub deadline_admission: bool,
    /// How long in-flight work may take to finish once shutdown starts.
    pub shutdown_grace_ms: u64,
    /// Whether background work (stream consumers, timers, partner deliveries) runs on a
    /// runtime of its own; false: on the listeners' runtime.
    pub background_runtime: bool,
    /// Worker threads of the background runtime (stream consumers, timers, partner
    /// deliveries); 0: one per CPU.
    pub background_threads: usize,
    /// How much higher than the listeners' the background threads' nice value is (0–19):
    /// under CPU saturation, calls and webhooks run first and the background catches up.
    pub background_nice: i32,
    /// Whether the gRPC listener's connections (reading frames, answering refusals at
    /// once) run on a runtime of their own, so they never queue behind handlers; admitted
    /// calls still run on the listeners' runtime. false: connections and calls share it.
    pub grpc_connection_runtime: bool,
    /// Worker threads of the connection runtime; 0: one per two CPUs, at least two.
    pub grpc_connection_threads: usize,
    /// With connections apart, the share (0 to 1) of a connection thread's time that
    /// point reads (GetRate, short BatchGetRates: cards from memory) may take on it,
    /// answered where their frames were read instead of on a handler thread; 0: every
    /// call on the handlers.
    pub grpc_inline_read_share: f64,
    /// Webhook listener: a request's headers must arrive within this long of the
    /// connection becoming ready for them, or the connection is closed.
    pub http_header_read_timeout_ms: u64,
    /// Webhook listener: a kept-alive connection with no request for this long is closed
    /// (or sooner: the header read timeout also runs while it waits for its next request).
    pub http_keep_alive_timeout_ms: u64,
    /// Webhook listener: connections open at once; more are closed on accept.
    pub http_max_connections: usize,
    /// Webhook listener: connections open at once from one peer address.
    pub http_max_connections_per_peer: usize,
    /// PEM certificate chain of the gRPC (and webhook) listener; empty serves plaintext.
    /// Re-read when the file changes, so a renewed certificate needs no restart.
    pub tls_cert_file: String,
    /// PEM private key of `tls_cert_file`; re-read with it.
    pub tls_key_file: String,
    /// PEM CA certificates that client certificates must chain to; empty asks for none
    /// (mutual TLS off).
    pub tls_client_ca_file: String,
    /// With `tls_client_ca_file`: whether a client without a certificate is refused during
    /// the handshake (false lets it in to authenticate with an API key as usual).
    pub tls_client_cert_required: bool,
    /// How often the certificate and key files are checked for changes.
    pub tls_reload_interval_ms: u64,
    /// Whether the webhook listener serves TLS too when `tls_cert_file` is set; false when
    /// TLS is terminated in front of it (an Ingress) and it serves plaintext inside.
    pub http_tls: bool,
    /// Callers identified by their client certificate instead of an API key (service-to-
    /// service traffic under mutual TLS).
    #[serde(default)]
    pub tls_client_principals: Vec<CertPrincipalSettings>,
}

/// A principal whose calls are authenticated by a client certificate: a call without an
/// API key, over a connection whose verified certificate is valid for `dns_name` (a DNS or
/// IP subject alternative name, matched as TLS matches a server name), runs as `name` with
/// `role`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CertPrincipalSettings {
    /// The principal's name; shows up as the author of changes and in logs.
    pub name: String,
    /// What it may do.
    pub role: Role,
    /// The subject alternative name its certificate must carry.
    pub dns_name: String,
    /// For role `partner`: the partner it acts for.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub partner_id: Option<String>,
}

impl ServerSettings {
    /// [`Self::request_timeout_ms`] as a duration.
    pub fn request_timeout(&self) -> Duration {
        Duration::from_millis(self.request_timeout_ms)
    }

    /// [`Self::shed_retry_after_ms`] as a duration.
    pub fn shed_retry_after(&self) -> Duration {
        Duration::from_millis(self.shed_retry_after_ms)
    }

    /// How the gRPC layer admits calls.
    pub fn admission(&self) -> crate::grpc::Admission {
        crate::grpc::Admission {
            max_concurrent: self.max_concurrent_requests,
            retry_after: self.shed_retry_after(),
            adaptive: self.adaptive_concurrency,
            queue_delay_target: Duration::from_millis(self.queue_delay_target_ms),
            min_concurrency: self.min_concurrency,
            deadlines: self.deadline_admission,
        }
    }

    /// [`Self::shutdown_grace_ms`] as a duration.
    pub fn shutdown_grace(&self) -> Duration {
        Duration::from_millis(self.shutdown_grace_ms)
    }

    /// Whether the listeners serve TLS (`tls_cert_file` is set).
    pub fn tls_enabled(&self) -> bool {
        !self.tls_cert_file.trim().is_empty()
    }

    /// [`Self::tls_reload_interval_ms`] as a duration.
    pub fn tls_reload_interval(&self) -> Duration {
        Duration::from_millis(self.tls_reload_interval_ms)
    }

    /// The limits of the webhook listener's connections.
    pub fn http_limits(&self) -> crate::http_server::ConnectionLimits {
        crate::http_server::ConnectionLimits {
            header_read_timeout: Duration::from_millis(self.http_header_read_timeout_ms),
            keep_alive_timeout: Duration::from_millis(self.http_keep_alive_timeout_ms),
            max_connections: self.http_max_connections,
            max_connections_per_peer: self.http_max_connections_per_peer,
        }
    }
}

/// The Redis backend.
#[derive(Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RedisSettings {
    /// `redis://[user:password@]host:port[/db]`; empty selects the embedded backend. With
    /// `cluster`, a comma-separated list of seed nodes.
    pub url: String,
    /// The URL names a Redis Cluster (its seed nodes) rather than one server.
    pub cluster: bool,
    /// Replicas that must confirm an accepted ERP push (`WAIT`) before ingest answers
    /// 202; 0 answers once the primary has it.
    pub min_replica_acks: u32,
    /// How long ingest waits for those confirmations before answering 503.
    pub replica_ack_timeout_ms: u64,
    /// Prefix of every key, so deployments can share a Redis.
    pub key_prefix: String,
    /// Number of stream partitions.
    pub partitions: u16,
    /// How long a consumer's hold on a stream partition lasts without renewal: a replica
    /// that dies or hangs has its partitions taken over within this plus a quarter of it.
    pub partition_lease_ms: u64,
    /// Entries a consumer reads and handles as one batch (per read of its partitions):
    /// its records are read and written once per batch, so larger batches cost fewer
    /// round trips per entry.
    pub read_batch: usize,
    /// For `rediss://` URLs: PEM CA certificates the server's certificate must chain to;
    /// empty trusts the system's roots.
    pub tls_ca_file: String,
    /// For `rediss://` URLs to a server that requires client certificates: PEM chain.
    pub tls_client_cert_file: String,
    /// The PEM private key of `tls_client_cert_file`.
    pub tls_client_key_file: String,
}

impl RedisSettings {
    /// The URL to connect to, or `None` for the embedded backend.
    pub fn url(&self) -> Option<&str> {
        let url = self.url.trim();
        (!url.is_empty()).then_some(url)
    }

    /// The URLs of `url`, split at commas (the seed nodes of a cluster).
    pub fn urls(&self) -> Vec<String> {
        self.url
            .split(',')
            .map(str::trim)
            .filter(|u| !u.is_empty())
            .map(str::to_owned)
            .collect()
    }

    /// The URL with any password replaced, for logs and `config dump`.
    pub fn redacted_url(&self) -> String {
        self.url
            .split(',')
            .map(|u| redact_url_password(u.trim()))
            .collect::<Vec<_>>()
            .join(",")
    }
}

impl fmt::Debug for RedisSettings {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RedisSettings")
            .field("url", &self.redacted_url())
            .field("cluster", &self.cluster)
            .field("min_replica_acks", &self.min_replica_acks)
            .field("replica_ack_timeout_ms", &self.replica_ack_timeout_ms)
            .field("key_prefix", &self.key_prefix)
            .field("partitions", &self.partitions)
            .field("partition_lease_ms", &self.partition_lease_ms)
            .field("read_batch", &self.read_batch)
            .field("tls_ca_file", &self.tls_ca_file)
            .field("tls_client_cert_file", &self.tls_client_cert_file)
            .field("tls_client_key_file", &self.tls_client_key_file)
            .finish()
    }
}

/// How logs are written.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    /// Human-readable, coloured when attached to a terminal.
    Pretty,
    /// One JSON object per line.
    Json,
}

/// Logs and traces.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TelemetrySettings {
    /// Log format.
    pub log_format: LogFormat,
    /// EnvFilter directive, overridden by `RUST_LOG`.
    pub log_filter: String,
    /// OTLP/gRPC endpoint; empty disables export.
    pub otlp_endpoint: String,
    /// For an `https://` endpoint: PEM CA certificates the collector's certificate must
    /// chain to; empty trusts the system's roots.
    pub otlp_ca_file: String,
    /// `service.name` resource attribute.
    pub service_name: String,
    /// Head sampling ratio for new traces.
    pub sample_ratio: f64,
    /// How often gauges that are read from the bus (stream backlog, pending, length and
    /// dead letters; the notifier's dead deliveries) are refreshed.
    pub gauge_interval_ms: u64,
}

impl TelemetrySettings {
    /// The OTLP endpoint, or `None` when export is off.
    pub fn otlp_endpoint(&self) -> Option<&str> {
        let endpoint = self.otlp_endpoint.trim();
        (!endpoint.is_empty()).then_some(endpoint)
    }

    /// [`Self::gauge_interval_ms`] as a duration.
    pub fn gauge_interval(&self) -> Duration {
        Duration::from_millis(self.gauge_interval_ms)
    }
}

/// API keys.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AuthSettings {
    /// Every key that may call the API.
    pub keys: Vec<ApiKeySettings>,
}

/// One API key, stored as its SHA-256.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ApiKeySettings {
    /// Who holds the key; shows up as the author of overrides and in logs.
    pub name: String,
    /// What the key may do.
    pub role: Role,
    /// Hex SHA-256 of the key.
    pub sha256: String,
    /// For `partner` keys: the partner whose data the key may see.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub partner_id: Option<String>,
}

impl Default for Settings {
    /// The frame's defaults and no service section: [`Settings::section`] then answers
    /// each section's own defaults.
    fn default() -> Self {
        // The defaults are part of the binary and covered by a test, so they always parse.
        Self::load(None, EnvSource::None, &[]).expect("built-in defaults are valid")
    }
}

impl Settings {
    /// Layers the defaults (the frame's and each of `sections`'), the optional `file` and
    /// the environment, then validates. A top-level table that is neither the frame's nor
    /// one of `sections` is refused, naming it.
    pub fn load(
        file: Option<&Path>,
        env: EnvSource,
        sections: &[SectionDef],
    ) -> Result<Self, SettingsError> {
        let mut builder = config::Config::builder().add_source(config::File::from_str(
            DEFAULTS_TOML,
            config::FileFormat::Toml,
        ));
        for section in sections {
            builder = builder.add_source(config::File::from_str(
                section.defaults,
                config::FileFormat::Toml,
            ));
        }
        if let Some(path) = file {
            if !path.exists() {
                return Err(SettingsError::new(
                    "--config",
                    format!("file {} does not exist", path.display()),
                ));
            }
            builder = builder.add_source(
                config::File::from(PathBuf::from(path))
                    .format(config::FileFormat::Toml)
                    .required(true),
            );
        }
        let environment = config::Environment::with_prefix(ENV_PREFIX)
            .prefix_separator("__")
            .separator("__")
            .try_parsing(true);
        builder = match env {
            EnvSource::Process => builder.add_source(environment),
            EnvSource::Map(map) => builder.add_source(environment.source(Some(
                map.into_iter().collect::<config::Map<String, String>>(),
            ))),
            EnvSource::None => builder,
        };
        let layered = builder.build().map_err(SettingsError::from_config)?;

        let tables: BTreeMap<String, config::Value> = layered
            .clone()
            .try_deserialize()
            .map_err(SettingsError::from_config)?;
        let known = || {
            FRAME_SECTIONS
                .iter()
                .copied()
                .chain(sections.iter().map(|s| s.name))
        };
        if let Some(unknown) = tables.keys().find(|k| !known().any(|n| n == k.as_str())) {
            return Err(SettingsError::new(
                unknown.clone(),
                format!(
                    "unknown section (expected one of: {})",
                    known().collect::<Vec<_>>().join(", ")
                ),
            ));
        }

        let frame: Frame = layered
            .clone()
            .try_deserialize()
            .map_err(SettingsError::from_config)?;
        let mut loaded = Sections::default();
        for section in sections {
            loaded.0.insert(section.name, (section.load)(&layered)?);
        }
        let settings = Settings {
            server: frame.server,
            redis: frame.redis,
            telemetry: frame.telemetry,
            auth: frame.auth,
            policy: frame.policy,
            retention: frame.retention,
            console: frame.console,
            sections: loaded,
        };
        settings.validate()?;
        Ok(settings)
    }

    /// Section `T` as loaded, or its defaults when this process did not load it.
    pub fn section<T: Section>(&self) -> T {
        self.sections
            .0
            .get(T::NAME)
            .and_then(|s| s.as_any().downcast_ref::<T>())
            .cloned()
            .unwrap_or_else(T::defaults)
    }

    /// Section `T` for changing (tests, `serve --demo`); starts from its defaults when it
    /// was not loaded. Call [`Settings::validate`] after changing it.
    pub fn section_mut<T: Section>(&mut self) -> &mut T {
        let entry = self
            .sections
            .0
            .entry(T::NAME)
            .or_insert_with(|| Box::new(T::defaults()));
        if entry.as_any().downcast_ref::<T>().is_none() {
            // Two section types may not share a name; the later one wins.
            *entry = Box::new(T::defaults());
        }
        entry
            .as_any_mut()
            .downcast_mut::<T>()
            .expect("the entry was just made a T")
    }

    /// Checks what types alone cannot: ranges, formats, consistency.
    pub fn validate(&self) -> Result<(), SettingsError> {
        let s = &self.server;
        if s.request_timeout_ms == 0 {
            return Err(SettingsError::new(
                "server.request_timeout_ms",
                "must be greater than 0",
            ));
        }
        if s.max_concurrent_requests == 0 {
            return Err(SettingsError::new(
                "server.max_concurrent_requests",
                "must be greater than 0",
            ));
        }
        if s.queue_delay_target_ms == 0 {
            return Err(SettingsError::new(
                "server.queue_delay_target_ms",
                "must be greater than 0",
            ));
        }
        if s.queue_delay_target_ms >= s.request_timeout_ms {
            return Err(SettingsError::new(
                "server.queue_delay_target_ms",
                "must be less than server.request_timeout_ms",
            ));
        }
        if !(0.0..=1.0).contains(&s.grpc_inline_read_share) {
            return Err(SettingsError::new(
                "server.grpc_inline_read_share",
                "must be between 0 (every call on the handler threads) and 1",
            ));
        }
        if !(0..=19).contains(&s.background_nice) {
            return Err(SettingsError::new(
                "server.background_nice",
                "must be between 0 (the listeners' priority) and 19",
            ));
        }
        if s.min_concurrency == 0 {
            return Err(SettingsError::new(
                "server.min_concurrency",
                "must be greater than 0",
            ));
        }
        if s.min_concurrency > s.max_concurrent_requests {
            return Err(SettingsError::new(
                "server.min_concurrency",
                "must not exceed server.max_concurrent_requests",
            ));
        }
        for (key, value) in [
            (
                "server.http_header_read_timeout_ms",
                s.http_header_read_timeout_ms,
            ),
            (
                "server.http_keep_alive_timeout_ms",
                s.http_keep_alive_timeout_ms,
            ),
            ("server.http_max_connections", s.http_max_connections as u64),
            (
                "server.http_max_connections_per_peer",
                s.http_max_connections_per_peer as u64,
            ),
        ] {
            if value == 0 {
                return Err(SettingsError::new(key, "must be greater than 0"));
            }
        }
        if s.http_max_connections_per_peer > s.http_max_connections {
            return Err(SettingsError::new(
                "server.http_max_connections_per_peer",
                "must not exceed server.http_max_connections",
            ));
        }
        check_tls_files(s)?;
        check_redis_tls(&self.redis)?;
        let mut ports = vec![
            ("server.grpc_addr", s.grpc_addr),
            ("server.http_addr", s.http_addr),
            ("server.admin_addr", s.admin_addr),
        ];
        ports.extend(s.console_addr.map(|addr| ("server.console_addr", addr)));
        for (i, (key, addr)) in ports.iter().enumerate() {
            for (other_key, other) in &ports[i + 1..] {
                if addr.port() != 0 && addr == other {
                    return Err(SettingsError::new(
                        *key,
                        format!("{addr} is also used by {other_key}"),
                    ));
                }
            }
        }
        let console = &self.console;
        for (key, endpoint) in console.endpoints() {
            let endpoint = endpoint.trim();
            let is_url = endpoint.starts_with("http://") || endpoint.starts_with("https://");
            if !endpoint.is_empty() && !is_url {
                return Err(SettingsError::new(
                    key,
                    format!("`{endpoint}` is not an http:// or https:// URL"),
                ));
            }
        }
        if console.session_idle_minutes == 0 {
            return Err(SettingsError::new(
                "console.session_idle_minutes",
                "must be greater than 0",
            ));
        }

        let r = &self.redis;
        let urls = r.urls();
        for url in &urls {
            let redis_url = url.starts_with("redis://")
                || url.starts_with("rediss://")
                || (!r.cluster && (url.starts_with("redis+unix://") || url.starts_with("unix://")));
            if !redis_url {
                let expected = if r.cluster {
                    "a comma-separated list of redis://host:port seed nodes"
                } else {
                    "redis://host:port"
                };
                return Err(SettingsError::new(
                    "redis.url",
                    format!(
                        "`{}` is not a redis URL (expected {expected})",
                        redact_url_password(url)
                    ),
                ));
            }
        }
        if urls.len() > 1 && !r.cluster {
            return Err(SettingsError::new(
                "redis.url",
                "lists several servers: set redis.cluster = true (RATEMESH__REDIS__CLUSTER=true) \
                 to use them as the seed nodes of a Redis Cluster",
            ));
        }
        if r.cluster && urls.is_empty() {
            return Err(SettingsError::new(
                "redis.cluster",
                "needs redis.url: the seed nodes of the cluster, e.g. \
                 redis://h1:6379,redis://h2:6379,redis://h3:6379",
            ));
        }
        if r.min_replica_acks > 0 && urls.is_empty() {
            return Err(SettingsError::new(
                "redis.min_replica_acks",
                "needs redis.url: the embedded backend has no replicas",
            ));
        }
        if r.min_replica_acks > 16 {
            return Err(SettingsError::new(
                "redis.min_replica_acks",
                "must be between 0 and 16",
            ));
        }
        if !(10..=60_000).contains(&r.replica_ack_timeout_ms) {
            return Err(SettingsError::new(
                "redis.replica_ack_timeout_ms",
                "must be between 10 and 60000",
            ));
        }
        if r.key_prefix.is_empty()
            || r.key_prefix.len() > 64
            || r.key_prefix.contains(['{', '}', ' '])
        {
            return Err(SettingsError::new(
                "redis.key_prefix",
                "must be 1 to 64 characters without braces or spaces",
            ));
        }
        if r.partitions == 0 || r.partitions > 1024 {
            return Err(SettingsError::new(
                "redis.partitions",
                "must be between 1 and 1024",
            ));
        }
        if !(1_000..=600_000).contains(&r.partition_lease_ms) {
            return Err(SettingsError::new(
                "redis.partition_lease_ms",
                "must be between 1000 and 600000",
            ));
        }
        if !(1..=10_000).contains(&r.read_batch) {
            return Err(SettingsError::new(
                "redis.read_batch",
                "must be between 1 and 10000",
            ));
        }

        let t = &self.telemetry;
        if !(0.0..=1.0).contains(&t.sample_ratio) {
            return Err(SettingsError::new(
                "telemetry.sample_ratio",
                "must be between 0.0 and 1.0",
            ));
        }
        if let Some(endpoint) = t.otlp_endpoint()
            && !(endpoint.starts_with("http://") || endpoint.starts_with("https://"))
        {
            return Err(SettingsError::new(
                "telemetry.otlp_endpoint",
                "must start with http:// or https://",
            ));
        }
        if t.service_name.trim().is_empty() {
            return Err(SettingsError::new(
                "telemetry.service_name",
                "must not be empty",
            ));
        }
        if t.gauge_interval_ms == 0 {
            return Err(SettingsError::new(
                "telemetry.gauge_interval_ms",
                "must be greater than 0",
            ));
        }

        self.retention.validate()?;
        for section in self.sections.0.values() {
            section.validate()?;
        }

        let mut names = HashSet::new();
        let mut hashes = HashSet::new();
        for (i, key) in self.auth.keys.iter().enumerate() {
            let at = |field: &str| format!("auth.keys[{i}].{field}");
            if key.name.trim().is_empty() {
                return Err(SettingsError::new(at("name"), "must not be empty"));
            }
            if !names.insert(key.name.as_str()) {
                return Err(SettingsError::new(
                    at("name"),
                    format!("`{}` is used by another key", key.name),
                ));
            }
            if key.sha256.len() != 64 || !key.sha256.bytes().all(|b| b.is_ascii_hexdigit()) {
                return Err(SettingsError::new(
                    at("sha256"),
                    "must be 64 hex characters (the SHA-256 of the key; see `ratemesh keys hash`)",
                ));
            }
            if !hashes.insert(key.sha256.to_ascii_lowercase()) {
                return Err(SettingsError::new(
                    at("sha256"),
                    "the same key is configured twice",
                ));
            }
            match (key.role, &key.partner_id) {
                (Role::Partner, None) => {
                    return Err(SettingsError::new(
                        at("partner_id"),
                        "is required for role `partner`",
                    ));
                }
                (role, Some(_)) if role != Role::Partner => {
                    return Err(SettingsError::new(
                        at("partner_id"),
                        "is only allowed for role `partner`",
                    ));
                }
                _ => {}
            }
        }
        Ok(())
    }

    /// The settings as TOML, with secrets redacted: what `ratemesh config dump` prints.
    pub fn to_redacted_toml(&self) -> String {
        let mut shown = self.clone();
        shown.redis.url = shown.redis.redacted_url();
        // Key hashes are not secrets, but listing them invites copying: show a prefix.
        for key in &mut shown.auth.keys {
            key.sha256 = format!("{}…", &key.sha256[..key.sha256.len().min(8)]);
        }
        let frame = [
            ("server", toml::Value::try_from(&shown.server)),
            ("redis", toml::Value::try_from(&shown.redis)),
            ("telemetry", toml::Value::try_from(&shown.telemetry)),
            ("auth", toml::Value::try_from(&shown.auth)),
            ("policy", toml::Value::try_from(&shown.policy)),
            ("console", toml::Value::try_from(&shown.console)),
        ];
        let services = shown.sections.0.iter().map(|(n, s)| (*n, s.to_toml()));
        let retention = ("retention", toml::Value::try_from(&shown.retention));
        let mut text = String::new();
        for (name, value) in frame.into_iter().chain(services).chain([retention]) {
            // Plain structs of strings, numbers and arrays always serialise.
            let table = value.and_then(|v| {
                toml::to_string_pretty(&toml::Table::from_iter([(name.to_owned(), v)]))
            });
            match table {
                Ok(table) => text.push_str(&table),
                Err(err) => text.push_str(&format!("# [{name}] could not be shown: {err}\n")),
            }
            text.push('\n');
        }
        text
    }
}

/// Replaces the password in `scheme://user:password@host` with `***`.
/// The TLS keys of `server` that go together; that the files exist and parse is checked
/// by [`crate::tls::check`] (`ratemesh config check`, and at start).
fn check_tls_files(s: &ServerSettings) -> Result<(), SettingsError> {
    let set = |v: &str| !v.trim().is_empty();
    match (set(&s.tls_cert_file), set(&s.tls_key_file)) {
        (true, false) => {
            return Err(SettingsError::new(
                "server.tls_key_file",
                "is required when server.tls_cert_file is set",
            ));
        }
        (false, true) => {
            return Err(SettingsError::new(
                "server.tls_cert_file",
                "is required when server.tls_key_file is set",
            ));
        }
        _ => {}
    }
    if set(&s.tls_client_ca_file) && !set(&s.tls_cert_file) {
        return Err(SettingsError::new(
            "server.tls_client_ca_file",
            "needs server.tls_cert_file: client certificates are only asked for over TLS",
        ));
    }
    for (i, p) in s.tls_client_principals.iter().enumerate() {
        let at = |field: &str| format!("server.tls_client_principals[{i}].{field}");
        if !set(&s.tls_client_ca_file) {
            return Err(SettingsError::new(
                at("dns_name"),
                "needs server.tls_client_ca_file: only verified client certificates identify a caller",
            ));
        }
        if p.name.trim().is_empty() {
            return Err(SettingsError::new(at("name"), "must not be empty"));
        }
        if rustls::pki_types::ServerName::try_from(p.dns_name.trim()).is_err() {
            return Err(SettingsError::new(
                at("dns_name"),
                format!("`{}` is not a DNS name or IP address", p.dns_name),
            ));
        }
        match (p.role, &p.partner_id) {
            (Role::Partner, None) => {
                return Err(SettingsError::new(
                    at("partner_id"),
                    "is required for role `partner`",
                ));
            }
            (role, Some(_)) if role != Role::Partner => {
                return Err(SettingsError::new(
                    at("partner_id"),
                    "is only allowed for role `partner`",
                ));
            }
            _ => {}
        }
    }
    if s.tls_reload_interval_ms == 0 {
        return Err(SettingsError::new(
            "server.tls_reload_interval_ms",
            "must be greater than 0",
        ));
    }
    Ok(())
}

/// `redis.tls_*` go with `rediss://` URLs, and the client certificate with its key.
fn check_redis_tls(r: &RedisSettings) -> Result<(), SettingsError> {
    let set = |v: &str| !v.trim().is_empty();
    match (set(&r.tls_client_cert_file), set(&r.tls_client_key_file)) {
        (true, false) => {
            return Err(SettingsError::new(
                "redis.tls_client_key_file",
                "is required when redis.tls_client_cert_file is set",
            ));
        }
        (false, true) => {
            return Err(SettingsError::new(
                "redis.tls_client_cert_file",
                "is required when redis.tls_client_key_file is set",
            ));
        }
        _ => {}
    }
    let tls_set = [
        ("redis.tls_ca_file", &r.tls_ca_file),
        ("redis.tls_client_cert_file", &r.tls_client_cert_file),
    ]
    .into_iter()
    .find(|(_, v)| set(v));
    if let Some((key, _)) = tls_set
        && r.urls().iter().any(|u| !u.starts_with("rediss://"))
    {
        return Err(SettingsError::new(
            key,
            "applies to TLS connections: redis.url must use rediss:// for every node",
        ));
    }
    Ok(())
}

fn redact_url_password(url: &str) -> String {
    let Some((scheme, rest)) = url.split_once("://") else {
        return url.to_owned();
    };
    let Some((userinfo, host)) = rest.rsplit_once('@') else {
        return url.to_owned();
    };
    let user = userinfo.split(':').next().unwrap_or_default();
    format!("{scheme}://{user}:***@{host}")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn env(pairs: &[(&str, &str)]) -> EnvSource {
        EnvSource::Map(
            pairs
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
        )
    }

    #[test]
    fn defaults_parse_and_validate() {
        let s = Settings::default();
        assert_eq!(s.server.grpc_addr.port(), 50051);
        assert!(s.redis.url().is_none());
        assert_eq!(s.redis.partitions, 1);
        assert!(s.auth.keys.is_empty());
    }

    #[test]
    fn the_console_is_off_unless_its_address_is_set_and_may_not_share_a_port() {
        let s = Settings::default();
        assert_eq!(s.server.console_addr, None);
        let s = Settings::load(
            None,
            env(&[("RATEMESH__SERVER__CONSOLE_ADDR", "127.0.0.1:8088")]),
            &[],
        )
        .expect("valid");
        assert_eq!(s.server.console_addr, "127.0.0.1:8088".parse().ok());
        let err = Settings::load(
            None,
            env(&[("RATEMESH__SERVER__CONSOLE_ADDR", "127.0.0.1:9090")]),
            &[],
        )
        .expect_err("clashes with the admin port");
        assert_eq!(err.key, "server.admin_addr");
        assert!(err.problem.contains("server.console_addr"), "{err}");
        let err = Settings::load(
            None,
            env(&[("RATEMESH__CONSOLE__GRPC_ENDPOINT", "localhost:50051")]),
            &[],
        )
        .expect_err("not a URL");
        assert_eq!(err.key, "console.grpc_endpoint");
        let err = Settings::load(
            None,
            env(&[(
                "RATEMESH__CONSOLE__INCENTIVES_ENDPOINT",
                "ratemesh-incentives:50051",
            )]),
            &[],
        )
        .expect_err("not a URL");
        assert_eq!(err.key, "console.incentives_endpoint");
        let s = Settings::load(
            None,
            env(&[(
                "RATEMESH__CONSOLE__NOTIFIER_ENDPOINT",
                "http://ratemesh-notifier:50051",
            )]),
            &[],
        )
        .expect("valid");
        assert_eq!(
            s.console.notifier_endpoint,
            "http://ratemesh-notifier:50051"
        );
        assert_eq!(s.console.rates_endpoint, "");
        assert_eq!(s.console.policy_endpoint, "");
        let err = Settings::load(
            None,
            env(&[(
                "RATEMESH__CONSOLE__POLICY_ENDPOINT",
                "ratemesh-ingest-archive:50051",
            )]),
            &[],
        )
        .expect_err("not a URL");
        assert_eq!(err.key, "console.policy_endpoint");
        let s = Settings::load(
            None,
            env(&[(
                "RATEMESH__CONSOLE__POLICY_ENDPOINT",
                "https://ratemesh-ingest-archive:50051",
            )]),
            &[],
        )
        .expect("valid");
        assert_eq!(
            s.console.policy_endpoint,
            "https://ratemesh-ingest-archive:50051"
        );
    }

    #[test]
    fn environment_overrides_defaults() {
        let s = Settings::load(
            None,
            env(&[
                ("RATEMESH__SERVER__GRPC_ADDR", "0.0.0.0:6000"),
                ("RATEMESH__REDIS__PARTITIONS", "8"),
                ("RATEMESH__TELEMETRY__LOG_FORMAT", "json"),
                ("UNRELATED", "ignored"),
            ]),
            &[],
        )
        .expect("valid");
        assert_eq!(s.server.grpc_addr, "0.0.0.0:6000".parse().expect("addr"));
        assert_eq!(s.redis.partitions, 8);
        assert_eq!(s.telemetry.log_format, LogFormat::Json);
    }

    #[test]
    fn file_sits_between_defaults_and_environment() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("ratemesh.toml");
        std::fs::write(
            &path,
            "[server]\nrequest_timeout_ms = 1234\nshutdown_grace_ms = 99\n",
        )
        .expect("write");
        let s = Settings::load(
            Some(&path),
            env(&[("RATEMESH__SERVER__SHUTDOWN_GRACE_MS", "5")]),
            &[],
        )
        .expect("valid");
        assert_eq!(s.server.request_timeout_ms, 1234);
        assert_eq!(s.server.shutdown_grace_ms, 5);
        assert_eq!(s.server.max_concurrent_requests, 4096);
    }

    #[test]
    fn a_value_of_the_wrong_type_names_its_key() {
        let err = Settings::load(
            None,
            env(&[("RATEMESH__SERVER__REQUEST_TIMEOUT_MS", "soon")]),
            &[],
        )
        .expect_err("invalid");
        assert_eq!(err.key, "server.request_timeout_ms", "{err}");
    }

    #[test]
    fn an_unknown_key_in_a_file_is_refused() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("ratemesh.toml");
        std::fs::write(&path, "[server]\ngrpc_adr = \"127.0.0.1:1\"\n").expect("write");
        let err = Settings::load(Some(&path), EnvSource::None, &[]).expect_err("invalid");
        assert!(err.to_string().contains("grpc_adr"), "{err}");
    }

    #[test]
    fn range_checks_name_the_key() {
        for (var, value, key) in [
            (
                "RATEMESH__SERVER__REQUEST_TIMEOUT_MS",
                "0",
                "server.request_timeout_ms",
            ),
            ("RATEMESH__REDIS__PARTITIONS", "0", "redis.partitions"),
            (
                "RATEMESH__REDIS__PARTITION_LEASE_MS",
                "10",
                "redis.partition_lease_ms",
            ),
            ("RATEMESH__REDIS__READ_BATCH", "0", "redis.read_batch"),
            ("RATEMESH__REDIS__URL", "http://x", "redis.url"),
            (
                "RATEMESH__TELEMETRY__SAMPLE_RATIO",
                "1.5",
                "telemetry.sample_ratio",
            ),
        ] {
            let err = Settings::load(None, env(&[(var, value)]), &[]).expect_err(var);
            assert_eq!(err.key, key, "{err}");
        }
    }

    #[test]
    fn admission_settings_default_to_adaptive_and_are_range_checked() {
        let s = Settings::default();
        let admission = s.server.admission();
        assert!(admission.adaptive && admission.deadlines);
        assert_eq!(admission.queue_delay_target, Duration::from_millis(5));
        assert_eq!(admission.min_concurrency, 4);
        assert_eq!(admission.max_concurrent, 4096);
        assert_eq!(admission.retry_after, Duration::from_millis(250));

        let s = Settings::load(
            None,
            env(&[
                ("RATEMESH__SERVER__ADAPTIVE_CONCURRENCY", "false"),
                ("RATEMESH__SERVER__DEADLINE_ADMISSION", "false"),
                ("RATEMESH__SERVER__QUEUE_DELAY_TARGET_MS", "40"),
                ("RATEMESH__SERVER__MIN_CONCURRENCY", "16"),
            ]),
            &[],
        )
        .expect("valid");
        let admission = s.server.admission();
        assert!(!admission.adaptive && !admission.deadlines);
        assert_eq!(admission.queue_delay_target, Duration::from_millis(40));
        assert_eq!(admission.min_concurrency, 16);

        for (vars, key, says) in [
            (
                vec![("RATEMESH__SERVER__QUEUE_DELAY_TARGET_MS", "0")],
                "server.queue_delay_target_ms",
                "greater than 0",
            ),
            (
                vec![
                    ("RATEMESH__SERVER__QUEUE_DELAY_TARGET_MS", "500"),
                    ("RATEMESH__SERVER__REQUEST_TIMEOUT_MS", "500"),
                ],
                "server.queue_delay_target_ms",
                "request_timeout_ms",
            ),
            (
                vec![("RATEMESH__SERVER__MIN_CONCURRENCY", "0")],
                "server.min_concurrency",
                "greater than 0",
            ),
            (
                vec![("RATEMESH__SERVER__GRPC_INLINE_READ_SHARE", "1.5")],
                "server.grpc_inline_read_share",
                "between 0",
            ),
            (
                vec![("RATEMESH__SERVER__BACKGROUND_NICE", "20")],
                "server.background_nice",
                "between 0",
            ),
            (
                vec![("RATEMESH__SERVER__BACKGROUND_NICE", "-1")],
                "server.background_nice",
                "between 0",
            ),
            (
                vec![
                    ("RATEMESH__SERVER__MIN_CONCURRENCY", "64"),
                    ("RATEMESH__SERVER__MAX_CONCURRENT_REQUESTS", "32"),
                ],
                "server.min_concurrency",
                "max_concurrent_requests",
            ),
            (
                vec![("RATEMESH__SERVER__ADAPTIVE_CONCURRENCY", "sometimes")],
                "server.adaptive_concurrency",
                "",
            ),
        ] {
            let err = Settings::load(None, env(&vars), &[]).expect_err(key);
            assert_eq!(err.key, key, "{err}");
            assert!(err.problem.contains(says), "{err}");
        }
    }

    #[test]
    fn cluster_mode_takes_seed_nodes_from_the_environment() {
        let s = Settings::load(
            None,
            env(&[
                ("RATEMESH__REDIS__CLUSTER", "true"),
                (
                    "RATEMESH__REDIS__URL",
                    "redis://h1:7000, redis://app:secret@h2:7001,redis://h3:7002",
                ),
                ("RATEMESH__REDIS__MIN_REPLICA_ACKS", "1"),
            ]),
            &[],
        )
        .expect("valid");
        assert!(s.redis.cluster);
        assert_eq!(
            s.redis.urls(),
            [
                "redis://h1:7000",
                "redis://app:secret@h2:7001",
                "redis://h3:7002"
            ]
        );
        assert_eq!(s.redis.min_replica_acks, 1);
        assert_eq!(
            s.redis.redacted_url(),
            "redis://h1:7000,redis://app:***@h2:7001,redis://h3:7002"
        );
    }

    #[test]
    fn redis_topology_mistakes_name_the_key() {
        for (vars, key, says) in [
            (
                vec![("RATEMESH__REDIS__URL", "redis://h1:7000,redis://h2:7001")],
                "redis.url",
                "redis.cluster = true",
            ),
            (
                vec![("RATEMESH__REDIS__CLUSTER", "true")],
                "redis.cluster",
                "seed nodes",
            ),
            (
                vec![
                    ("RATEMESH__REDIS__CLUSTER", "true"),
                    ("RATEMESH__REDIS__URL", "redis://h1:7000,h2:7001"),
                ],
                "redis.url",
                "`h2:7001` is not a redis URL",
            ),
            (
                vec![("RATEMESH__REDIS__MIN_REPLICA_ACKS", "1")],
                "redis.min_replica_acks",
                "no replicas",
            ),
            (
                vec![
                    ("RATEMESH__REDIS__URL", "redis://h1:7000"),
                    ("RATEMESH__REDIS__REPLICA_ACK_TIMEOUT_MS", "0"),
                ],
                "redis.replica_ack_timeout_ms",
                "between 10 and 60000",
            ),
        ] {
            let err = Settings::load(None, env(&vars), &[]).expect_err(key);
            assert_eq!(err.key, key, "{err}");
            assert!(err.to_string().contains(says), "{err}");
        }
    }

    #[test]
    fn retention_is_per_stream_and_checks_name_the_key() {
        let s = Settings::load(
            None,
            env(&[("RATEMESH__RETENTION__RATES__MAX_AGE_SECS", "600")]),
            &[],
        )
        .expect("valid");
        assert_eq!(s.retention.rates.max_age_secs, 600);
        assert_eq!(s.retention.stock.max_age_secs, 86_400);
        for (var, key) in [
            (
                "RATEMESH__RETENTION__STOCK__MAX_LEN_PER_PARTITION",
                "retention.stock.max_len_per_partition",
            ),
            (
                "RATEMESH__RETENTION__INCENTIVES__MAX_AGE_SECS",
                "retention.incentives.max_age_secs",
            ),
            ("RATEMESH__RETENTION__INTERVAL_MS", "retention.interval_ms"),
            (
                "RATEMESH__TELEMETRY__GAUGE_INTERVAL_MS",
                "telemetry.gauge_interval_ms",
            ),
        ] {
            let err = Settings::load(None, env(&[(var, "0")]), &[]).expect_err(var);
            assert_eq!(err.key, key, "{err}");
        }
    }

    #[test]
    fn api_keys_are_checked() {
        let mut s = Settings::default();
        s.auth.keys.push(ApiKeySettings {
            name: "acme".into(),
            role: Role::Partner,
            sha256: "ab".repeat(32),
            partner_id: None,
        });
        let err = s.validate().expect_err("partner without id");
        assert_eq!(err.key, "auth.keys[0].partner_id");
        s.auth.keys[0].partner_id = Some("acme".into());
        s.validate().expect("valid");
        s.auth.keys[0].sha256 = "xyz".into();
        assert_eq!(
            s.validate().expect_err("bad hash").key,
            "auth.keys[0].sha256"
        );
    }

    /// A service's section, as a service crate would declare it.
    #[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
    #[serde(deny_unknown_fields)]
    struct Sample {
        batch: u32,
        label: String,
    }

    impl Section for Sample {
        const NAME: &'static str = "sample";
        const DEFAULTS: &'static str = "[sample]\nbatch = 8\nlabel = \"x\"\n";

        fn validate(&self) -> Result<(), SettingsError> {
            if self.batch == 0 {
                return Err(SettingsError::new("sample.batch", "must be greater than 0"));
            }
            Ok(())
        }
    }

    #[test]
    fn a_service_section_is_layered_checked_and_shown_like_the_frame() {
        let sections = [SectionDef::of::<Sample>()];
        let s = Settings::load(
            None,
            env(&[("RATEMESH__SAMPLE__LABEL", "from-env")]),
            &sections,
        )
        .expect("valid");
        assert_eq!(
            s.section::<Sample>(),
            Sample {
                batch: 8,
                label: "from-env".into()
            }
        );
        assert!(s.to_redacted_toml().contains("[sample]\nbatch = 8"));

        let err = Settings::load(None, env(&[("RATEMESH__SAMPLE__BATCH", "0")]), &sections)
            .expect_err("out of range");
        assert_eq!(err.key, "sample.batch", "{err}");
        let err = Settings::load(None, env(&[("RATEMESH__SAMPLE__BATCH", "many")]), &sections)
            .expect_err("wrong type");
        assert_eq!(err.key, "sample.batch", "{err}");

        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("ratemesh.toml");
        std::fs::write(&path, "[sample]\nbach = 3\n").expect("write");
        let err = Settings::load(Some(&path), EnvSource::None, &sections).expect_err("typo");
        assert!(err.to_string().contains("bach"), "{err}");
    }

    #[test]
    fn a_section_nobody_loads_is_refused_by_name() {
        let err = Settings::load(None, env(&[("RATEMESH__SAMPLE__BATCH", "3")]), &[])
            .expect_err("unknown");
        assert_eq!(err.key, "sample", "{err}");
        assert!(err.problem.contains("server, redis"), "{err}");
    }

    #[test]
    fn an_unloaded_section_reads_as_its_defaults_and_can_be_changed() {
        let mut s = Settings::default();
        assert_eq!(s.section::<Sample>(), Sample::defaults());
        s.section_mut::<Sample>().batch = 0;
        assert_eq!(s.validate().expect_err("checked").key, "sample.batch");
        s.section_mut::<Sample>().batch = 2;
        s.validate().expect("valid");
        assert_eq!(s.section::<Sample>().batch, 2);
        assert_ne!(s, Settings::default());
    }

    #[test]
    fn dump_redacts_the_redis_password() {
        let mut s = Settings::default();
        s.redis.url = "redis://app:hunter2@redis:6379/0".into();
        let dump = s.to_redacted_toml();
        assert!(!dump.contains("hunter2"), "{dump}");
        assert!(dump.contains("redis://app:***@redis:6379/0"), "{dump}");
        assert!(!format!("{s:?}").contains("hunter2"));
    }
}
