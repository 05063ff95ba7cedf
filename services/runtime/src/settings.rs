//! Typed settings: built-in defaults, then an optional TOML file, then `RATEMESH__…`
//! environment variables.
//!
//! Every problem is reported with the dotted key it concerns (`server.grpc_addr`,
//! `auth.keys[1].sha256`) so an operator can fix it without reading code.

use std::collections::{BTreeMap, HashSet};
use std::fmt;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

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
    fn new(key: impl Into<String>, problem: impl Into<String>) -> Self {
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

/// All of ratemesh's settings.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Settings {
    /// Listeners, timeouts and limits of the gRPC, webhook and admin servers.
    pub server: ServerSettings,
    /// The production backend; empty URL means the embedded one.
    pub redis: RedisSettings,
    /// Logs and traces.
    pub telemetry: TelemetrySettings,
    /// API keys and their roles.
    pub auth: AuthSettings,
    /// ERP webhooks and `InventoryIngest`.
    pub ingest: IngestSettings,
    /// Rate computation and reads.
    pub rates: RatesSettings,
    /// Flash incentives.
    pub incentives: IncentivesSettings,
    /// Partner webhooks.
    pub notifier: NotifierSettings,
    /// How long stream entries are kept.
    pub retention: RetentionSettings,
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

/// Rate computation and reads (`[rates]`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RatesSettings {
    /// How far back `GetRate.as_of` can look; older instants answer OUT_OF_RANGE.
    pub history_retention_days: u32,
    /// Most past card versions kept per SKU for `as_of`, so a flapping SKU cannot grow
    /// without bound; older versions than that answer OUT_OF_RANGE.
    pub history_max_versions: usize,
    /// Rate changes a `WatchRates` stream may fall behind before it is ended with ABORTED
    /// (the client resumes from its last cursor); bounds the memory a slow client costs.
    pub watch_buffer: usize,
    /// Interval of `WatchRates` heartbeats while no matching change is sent.
    pub watch_heartbeat_ms: u64,
    /// The rate policy (TOML, see services/core/POLICY.md); empty: the built-in example
    /// policy. Checked at start: an invalid policy stops the process naming the key.
    pub policy_file: String,
    /// Name of this replica in the `rates` consumer group; empty derives one from the host
    /// name and process id (names must differ between replicas).
    pub consumer_name: String,
    /// SKUs updated at once: the keys of one consumed batch, and a recompute sweep.
    pub recompute_concurrency: usize,
    /// SKUs read per `scan_states` page by a recompute sweep (BFCM start: every SKU).
    pub recompute_page_size: usize,
    /// How often due recompute timers are claimed from the bus.
    pub timer_poll_ms: u64,
    /// How long `SetOverride`/`ClearOverride` of a category override wait for the
    /// category's cards to be recomputed before answering (the consumer finishes later).
    pub override_recompute_timeout_ms: u64,
}

/// Flash incentives (`[incentives]`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct IncentivesSettings {
    /// Name of this replica in the `incentives` consumer group; empty derives one from
    /// the host name and process id (names must differ between replicas).
    pub consumer_name: String,
    /// How often due expiry timers are claimed from the bus.
    pub timer_poll_ms: u64,
    /// How often active incentives are checked against their state (a lost timer or a
    /// leaked concurrency slot is repaired within this interval), and free slots are
    /// offered to the most overstocked SKUs waiting for one.
    pub sweep_interval_secs: u64,
    /// Largest bonus a merchandiser may trigger, in basis points of the sale price.
    pub max_bonus_bps: u32,
    /// Longest window a merchandiser may trigger, in hours.
    pub max_duration_hours: u32,
}

impl IncentivesSettings {
    /// [`Self::timer_poll_ms`] as a duration.
    pub fn timer_poll(&self) -> Duration {
        Duration::from_millis(self.timer_poll_ms)
    }

    /// [`Self::sweep_interval_secs`] as a duration.
    pub fn sweep_interval(&self) -> Duration {
        Duration::from_secs(self.sweep_interval_secs)
    }
}

/// Partner webhooks (`[notifier]`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NotifierSettings {
    /// Allow partner URLs that resolve to private, loopback or link-local addresses
    /// (SSRF protection off); for tests and closed networks only.
    pub allow_private_destinations: bool,
    /// Allow `http://` partner URLs (bodies are signed but not encrypted); for tests.
    pub allow_plain_http: bool,
    /// Name of this replica in the `notifier` consumer group; empty derives one from the
    /// host name and process id.
    pub consumer_name: String,
    /// Rate changes for one partner within this window become one POST.
    pub coalesce_window_ms: u64,
    /// Most rates in one POST; a larger burst is split into several deliveries.
    pub max_rates_per_delivery: usize,
    /// Deadline for connecting to a partner (TCP and TLS).
    pub connect_timeout_ms: u64,
    /// Deadline for a whole attempt, from connecting to the response status.
    pub request_timeout_ms: u64,
    /// Attempts per delivery before it is dead-lettered.
    pub max_attempts: u32,
    /// A delivery older than this is dead-lettered after its next failure.
    pub max_age_secs: u64,
    /// Delay before the first retry; doubles per attempt, with jitter.
    pub backoff_initial_ms: u64,
    /// Longest delay between two attempts.
    pub backoff_max_ms: u64,
    /// Attempts in flight to one partner at once (a slow partner holds only its own slots).
    pub max_in_flight_per_partner: usize,
    /// Consecutive failures of an endpoint that open its circuit breaker.
    pub breaker_failure_threshold: u32,
    /// How long an open breaker holds deliveries back before one trial attempt.
    pub breaker_open_ms: u64,
    /// How often due retries and coalescing windows are claimed from the bus.
    pub timer_poll_ms: u64,
    /// How stale the in-memory partner list may get before it is reloaded from the bus.
    pub partner_refresh_ms: u64,
    /// How long delivered and dead deliveries stay listable.
    pub delivery_retention_secs: u64,
}

impl NotifierSettings {
    fn validate(&self) -> Result<(), SettingsError> {
        for (key, value) in [
            ("notifier.coalesce_window_ms", self.coalesce_window_ms),
            (
                "notifier.max_rates_per_delivery",
                self.max_rates_per_delivery as u64,
            ),
            ("notifier.connect_timeout_ms", self.connect_timeout_ms),
            ("notifier.request_timeout_ms", self.request_timeout_ms),
            ("notifier.max_attempts", u64::from(self.max_attempts)),
            ("notifier.max_age_secs", self.max_age_secs),
            ("notifier.backoff_initial_ms", self.backoff_initial_ms),
            ("notifier.backoff_max_ms", self.backoff_max_ms),
            (
                "notifier.max_in_flight_per_partner",
                self.max_in_flight_per_partner as u64,
            ),
            (
                "notifier.breaker_failure_threshold",
                u64::from(self.breaker_failure_threshold),
            ),
            ("notifier.breaker_open_ms", self.breaker_open_ms),
            ("notifier.timer_poll_ms", self.timer_poll_ms),
            ("notifier.partner_refresh_ms", self.partner_refresh_ms),
            (
                "notifier.delivery_retention_secs",
                self.delivery_retention_secs,
            ),
        ] {
            if value == 0 {
                return Err(SettingsError::new(key, "must be greater than 0"));
            }
        }
        if self.backoff_max_ms < self.backoff_initial_ms {
            return Err(SettingsError::new(
                "notifier.backoff_max_ms",
                "must not be less than notifier.backoff_initial_ms",
            ));
        }
        if self.max_attempts > 100 {
            return Err(SettingsError::new(
                "notifier.max_attempts",
                "must be at most 100",
            ));
        }
        if self.max_rates_per_delivery > 10_000 {
            return Err(SettingsError::new(
                "notifier.max_rates_per_delivery",
                "must be at most 10000",
            ));
        }
        if self.consumer_name.len() > 128 || self.consumer_name.contains(char::is_whitespace) {
            return Err(SettingsError::new(
                "notifier.consumer_name",
                "must be at most 128 characters without spaces",
            ));
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

/// ERP webhooks and `InventoryIngest`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct IngestSettings {
    /// Largest webhook body accepted (413 beyond).
    pub max_body_bytes: usize,
    /// Bytes held at once, across every webhook request, for bodies whose signature is not
    /// verified yet (503 beyond): what unsigned floods can make the process buffer.
    pub max_unverified_body_bytes: usize,
    /// Most items in one batch (413 beyond).
    pub max_batch_items: usize,
    /// How far a signature's timestamp may be from server time.
    pub signature_tolerance_secs: u64,
    /// How long a batch id is remembered with its answer.
    pub idempotency_ttl_secs: u64,
    /// How far in the future an item's `as_of` may be (clock skew allowance).
    pub max_future_skew_secs: u64,
    /// Backlog of the stock stream for the rates group above which pushes are shed (429).
    pub max_stock_backlog: u64,
    /// Webhook requests with a verified signature processed at once; more are shed (503).
    pub max_in_flight: usize,
    /// Deadline for receiving a webhook body, from the end of its headers (408 beyond).
    pub body_read_timeout_ms: u64,
    /// Back-off advertised with 429/503 answers.
    pub retry_after_secs: u64,
    /// ERP sources allowed to call the webhooks, each with its signing secrets.
    pub sources: Vec<ErpSource>,
}

/// One ERP system that pushes over the webhooks.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ErpSource {
    /// Name recorded on every event from this source.
    pub name: String,
    /// Current signing secrets; list two while rotating.
    pub secrets: Vec<Secret>,
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
    /// Deadline for a unary call.
    pub request_timeout_ms: u64,
    /// Calls in flight before new ones are shed.
    pub max_concurrent_requests: usize,
    /// Back-off suggested to shed callers.
    pub shed_retry_after_ms: u64,
    /// How long in-flight work may take to finish once shutdown starts.
    pub shutdown_grace_ms: u64,
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

    /// [`Self::shutdown_grace_ms`] as a duration.
    pub fn shutdown_grace(&self) -> Duration {
        Duration::from_millis(self.shutdown_grace_ms)
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
    /// `redis://[user:password@]host:port[/db]`; empty selects the embedded backend.
    pub url: String,
    /// Prefix of every key, so deployments can share a Redis.
    pub key_prefix: String,
    /// Number of stream partitions.
    pub partitions: u16,
}

impl RedisSettings {
    /// The URL to connect to, or `None` for the embedded backend.
    pub fn url(&self) -> Option<&str> {
        let url = self.url.trim();
        (!url.is_empty()).then_some(url)
    }

    /// The URL with any password replaced, for logs and `config dump`.
    pub fn redacted_url(&self) -> String {
        redact_url_password(&self.url)
    }
}

impl fmt::Debug for RedisSettings {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RedisSettings")
            .field("url", &self.redacted_url())
            .field("key_prefix", &self.key_prefix)
            .field("partitions", &self.partitions)
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
    fn default() -> Self {
        // The defaults are part of the binary and covered by a test, so they always parse.
        Self::load(None, EnvSource::None).expect("built-in defaults are valid")
    }
}

impl Settings {
    /// Layers the defaults, the optional `file` and the environment, then validates.
    pub fn load(file: Option<&Path>, env: EnvSource) -> Result<Self, SettingsError> {
        let mut builder = config::Config::builder().add_source(config::File::from_str(
            DEFAULTS_TOML,
            config::FileFormat::Toml,
        ));
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
        let settings: Settings = builder
            .build()
            .and_then(|c| c.try_deserialize())
            .map_err(SettingsError::from_config)?;
        settings.validate()?;
        Ok(settings)
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
        let ports = [
            ("server.grpc_addr", s.grpc_addr),
            ("server.http_addr", s.http_addr),
            ("server.admin_addr", s.admin_addr),
        ];
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

        let r = &self.redis;
        if let Some(url) = r.url()
            && !(url.starts_with("redis://")
                || url.starts_with("rediss://")
                || url.starts_with("redis+unix://")
                || url.starts_with("unix://"))
        {
            return Err(SettingsError::new(
                "redis.url",
                format!(
                    "`{}` is not a redis URL (expected redis://host:port)",
                    r.redacted_url()
                ),
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

        let i = &self.ingest;
        for (key, value) in [
            ("ingest.max_body_bytes", i.max_body_bytes as u64),
            (
                "ingest.max_unverified_body_bytes",
                i.max_unverified_body_bytes as u64,
            ),
            ("ingest.max_batch_items", i.max_batch_items as u64),
            (
                "ingest.signature_tolerance_secs",
                i.signature_tolerance_secs,
            ),
            ("ingest.idempotency_ttl_secs", i.idempotency_ttl_secs),
            ("ingest.max_stock_backlog", i.max_stock_backlog),
            ("ingest.max_in_flight", i.max_in_flight as u64),
            ("ingest.body_read_timeout_ms", i.body_read_timeout_ms),
            ("ingest.retry_after_secs", i.retry_after_secs),
        ] {
            if value == 0 {
                return Err(SettingsError::new(key, "must be greater than 0"));
            }
        }
        if i.max_unverified_body_bytes < i.max_body_bytes {
            return Err(SettingsError::new(
                "ingest.max_unverified_body_bytes",
                "must be at least ingest.max_body_bytes, or the largest body is never accepted",
            ));
        }
        if u32::try_from(i.max_body_bytes).is_err() {
            return Err(SettingsError::new(
                "ingest.max_body_bytes",
                "must be below 4 GiB",
            ));
        }
        let mut source_names = HashSet::new();
        for (n, source) in i.sources.iter().enumerate() {
            let at = |field: &str| format!("ingest.sources[{n}].{field}");
            if source.name.trim().is_empty() || !source_names.insert(source.name.as_str()) {
                return Err(SettingsError::new(
                    at("name"),
                    "must be non-empty and unique",
                ));
            }
            if source.secrets.is_empty() {
                return Err(SettingsError::new(
                    at("secrets"),
                    "must hold at least one secret",
                ));
            }
            if let Some(k) = source.secrets.iter().position(|s| s.expose().len() < 16) {
                return Err(SettingsError::new(
                    format!("ingest.sources[{n}].secrets[{k}]"),
                    "must be at least 16 characters",
                ));
            }
        }

        let r = &self.rates;
        for (key, value) in [
            (
                "rates.history_retention_days",
                u64::from(r.history_retention_days),
            ),
            ("rates.history_max_versions", r.history_max_versions as u64),
            ("rates.watch_buffer", r.watch_buffer as u64),
            ("rates.watch_heartbeat_ms", r.watch_heartbeat_ms),
            (
                "rates.recompute_concurrency",
                r.recompute_concurrency as u64,
            ),
            ("rates.recompute_page_size", r.recompute_page_size as u64),
            ("rates.timer_poll_ms", r.timer_poll_ms),
            (
                "rates.override_recompute_timeout_ms",
                r.override_recompute_timeout_ms,
            ),
        ] {
            if value == 0 {
                return Err(SettingsError::new(key, "must be greater than 0"));
            }
        }
        if r.recompute_concurrency > 4096 {
            return Err(SettingsError::new(
                "rates.recompute_concurrency",
                "must be at most 4096",
            ));
        }
        if r.recompute_page_size > 10_000 {
            return Err(SettingsError::new(
                "rates.recompute_page_size",
                "must be at most 10000",
            ));
        }
        if r.watch_buffer > 1_000_000 {
            return Err(SettingsError::new(
                "rates.watch_buffer",
                "must be at most 1000000",
            ));
        }

        let inc = &self.incentives;
        for (key, value) in [
            ("incentives.timer_poll_ms", inc.timer_poll_ms),
            ("incentives.sweep_interval_secs", inc.sweep_interval_secs),
            (
                "incentives.max_duration_hours",
                u64::from(inc.max_duration_hours),
            ),
        ] {
            if value == 0 {
                return Err(SettingsError::new(key, "must be greater than 0"));
            }
        }
        if inc.max_bonus_bps == 0 || inc.max_bonus_bps > 10_000 {
            return Err(SettingsError::new(
                "incentives.max_bonus_bps",
                "must be between 1 and 10000 (basis points of the sale price)",
            ));
        }
        if inc.consumer_name.len() > 128 || inc.consumer_name.contains(char::is_whitespace) {
            return Err(SettingsError::new(
                "incentives.consumer_name",
                "must be at most 128 characters without spaces",
            ));
        }

        self.notifier.validate()?;
        self.retention.validate()?;

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
        toml_string(&shown)
    }
}

fn toml_string(settings: &Settings) -> String {
    // Serialising plain structs of strings, numbers and arrays cannot fail.
    match toml::to_string_pretty(settings) {
        Ok(text) => text,
        Err(err) => format!("# settings could not be shown: {err}\n"),
    }
}

/// Replaces the password in `scheme://user:password@host` with `***`.
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
    fn environment_overrides_defaults() {
        let s = Settings::load(
            None,
            env(&[
                ("RATEMESH__SERVER__GRPC_ADDR", "0.0.0.0:6000"),
                ("RATEMESH__REDIS__PARTITIONS", "8"),
                ("RATEMESH__TELEMETRY__LOG_FORMAT", "json"),
                ("UNRELATED", "ignored"),
            ]),
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
        )
        .expect_err("invalid");
        assert_eq!(err.key, "server.request_timeout_ms", "{err}");
    }

    #[test]
    fn an_unknown_key_in_a_file_is_refused() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("ratemesh.toml");
        std::fs::write(&path, "[server]\ngrpc_adr = \"127.0.0.1:1\"\n").expect("write");
        let err = Settings::load(Some(&path), EnvSource::None).expect_err("invalid");
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
            ("RATEMESH__REDIS__URL", "http://x", "redis.url"),
            (
                "RATEMESH__TELEMETRY__SAMPLE_RATIO",
                "1.5",
                "telemetry.sample_ratio",
            ),
        ] {
            let err = Settings::load(None, env(&[(var, value)])).expect_err(var);
            assert_eq!(err.key, key, "{err}");
        }
    }

    #[test]
    fn retention_is_per_stream_and_checks_name_the_key() {
        let s = Settings::load(
            None,
            env(&[("RATEMESH__RETENTION__RATES__MAX_AGE_SECS", "600")]),
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
            let err = Settings::load(None, env(&[(var, "0")])).expect_err(var);
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
