//! The `[notifier]` settings section: its type, its documented defaults
//! (`src/defaults.toml`) and its checks. The frame layers it with every other section.

use ratemesh_runtime::settings::{Section, SettingsError, check_consumer_name, require_positive};
use serde::{Deserialize, Serialize};

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

impl Section for NotifierSettings {
    const NAME: &'static str = "notifier";
    const DEFAULTS: &'static str = include_str!("defaults.toml");

    fn validate(&self) -> Result<(), SettingsError> {
        require_positive([
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
        ])?;
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
        check_consumer_name("notifier.consumer_name", &self.consumer_name)?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use ratemesh_runtime::settings::check_section;

    #[test]
    fn defaults_load_and_checks_name_the_key() {
        check_section::<NotifierSettings>(&[
            (
                "RATEMESH__NOTIFIER__MAX_ATTEMPTS",
                "101",
                "notifier.max_attempts",
            ),
            (
                "RATEMESH__NOTIFIER__BACKOFF_MAX_MS",
                "1",
                "notifier.backoff_max_ms",
            ),
            (
                "RATEMESH__NOTIFIER__TIMER_POLL_MS",
                "0",
                "notifier.timer_poll_ms",
            ),
        ])
        .unwrap();
    }
}
