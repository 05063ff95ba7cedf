//! The `[rates]` settings section: its type, its documented defaults
//! (`src/defaults.toml`) and its checks. The frame layers it with every other section.

use ratemesh_runtime::settings::{Section, SettingsError, check_consumer_name, require_positive};
use serde::{Deserialize, Serialize};

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
    /// How often the replica holding the snapshot lease writes the rate table's changed
    /// blocks and moves the snapshot's position forward.
    pub snapshot_interval_ms: u64,
    /// Name of this replica in the `rates` consumer group; empty derives one from the host
    /// name and process id (names must differ between replicas).
    pub consumer_name: String,
    /// Keys updated at once on the one-by-one paths: category overrides of a consumed
    /// batch, and due recompute timers (SKU entries and sweeps are written in batches).
    pub recompute_concurrency: usize,
    /// SKUs read per `scan_states` page by a recompute sweep (BFCM start: every SKU).
    pub recompute_page_size: usize,
    /// Pages of a sweep computed and written at once, while the next is read.
    pub recompute_pages_in_flight: usize,
    /// SKU records the consumer keeps in memory after writing them, so its next batch for
    /// the same SKUs skips reading and decoding them (0 keeps none).
    pub record_cache_skus: usize,
    /// How often due recompute timers are claimed from the bus.
    pub timer_poll_ms: u64,
    /// How long `SetOverride`/`ClearOverride` of a category override wait for the
    /// category's cards to be recomputed before answering (the consumer finishes later).
    pub override_recompute_timeout_ms: u64,
    /// Where the policy file used to be named; kept only to point a configuration that
    /// still sets it at `policy.file`.
    #[serde(default, skip_serializing)]
    pub policy_file: Option<String>,
}

impl Section for RatesSettings {
    const NAME: &'static str = "rates";
    const DEFAULTS: &'static str = include_str!("defaults.toml");

    fn validate(&self) -> Result<(), SettingsError> {
        if self.policy_file.is_some() {
            return Err(SettingsError::new(
                "rates.policy_file",
                "moved to `policy.file` (RATEMESH__POLICY__FILE): the rates and incentives \
                 services read the same policy",
            ));
        }
        require_positive([
            (
                "rates.history_retention_days",
                u64::from(self.history_retention_days),
            ),
            (
                "rates.history_max_versions",
                self.history_max_versions as u64,
            ),
            ("rates.watch_buffer", self.watch_buffer as u64),
            ("rates.watch_heartbeat_ms", self.watch_heartbeat_ms),
            ("rates.snapshot_interval_ms", self.snapshot_interval_ms),
            (
                "rates.recompute_concurrency",
                self.recompute_concurrency as u64,
            ),
            ("rates.recompute_page_size", self.recompute_page_size as u64),
            (
                "rates.recompute_pages_in_flight",
                self.recompute_pages_in_flight as u64,
            ),
            ("rates.timer_poll_ms", self.timer_poll_ms),
            (
                "rates.override_recompute_timeout_ms",
                self.override_recompute_timeout_ms,
            ),
        ])?;
        if self.recompute_concurrency > 4096 {
            return Err(SettingsError::new(
                "rates.recompute_concurrency",
                "must be at most 4096",
            ));
        }
        if self.recompute_page_size > 10_000 {
            return Err(SettingsError::new(
                "rates.recompute_page_size",
                "must be at most 10000",
            ));
        }
        if self.recompute_pages_in_flight > 64 {
            return Err(SettingsError::new(
                "rates.recompute_pages_in_flight",
                "must be at most 64",
            ));
        }
        if self.watch_buffer > 1_000_000 {
            return Err(SettingsError::new(
                "rates.watch_buffer",
                "must be at most 1000000",
            ));
        }
        check_consumer_name("rates.consumer_name", &self.consumer_name)?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use ratemesh_runtime::settings::check_section;

    #[test]
    fn defaults_load_and_checks_name_the_key() {
        check_section::<RatesSettings>(&[
            ("RATEMESH__RATES__WATCH_BUFFER", "0", "rates.watch_buffer"),
            (
                "RATEMESH__RATES__WATCH_BUFFER",
                "2000000",
                "rates.watch_buffer",
            ),
            (
                "RATEMESH__RATES__RECOMPUTE_CONCURRENCY",
                "5000",
                "rates.recompute_concurrency",
            ),
            (
                "RATEMESH__RATES__RECOMPUTE_PAGES_IN_FLIGHT",
                "0",
                "rates.recompute_pages_in_flight",
            ),
            (
                "RATEMESH__RATES__HISTORY_RETENTION_DAYS",
                "0",
                "rates.history_retention_days",
            ),
            (
                "RATEMESH__RATES__CONSUMER_NAME",
                "two words",
                "rates.consumer_name",
            ),
            (
                "RATEMESH__RATES__POLICY_FILE",
                "/etc/ratemesh/policy.toml",
                "rates.policy_file",
            ),
        ])
        .unwrap();
    }
}
