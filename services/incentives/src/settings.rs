//! The `[incentives]` settings section: its type, its documented defaults
//! (`src/defaults.toml`) and its checks. The frame layers it with every other section.

use std::time::Duration;

use ratemesh_runtime::settings::{Section, SettingsError, check_consumer_name, require_positive};
use serde::{Deserialize, Serialize};

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
    /// SKU records the consumer keeps in memory after saving them, so its next batch for
    /// the same SKUs skips reading and decoding them (0 keeps none).
    pub record_cache_skus: usize,
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

impl Section for IncentivesSettings {
    const NAME: &'static str = "incentives";
    const DEFAULTS: &'static str = include_str!("defaults.toml");

    fn validate(&self) -> Result<(), SettingsError> {
        require_positive([
            ("incentives.timer_poll_ms", self.timer_poll_ms),
            ("incentives.sweep_interval_secs", self.sweep_interval_secs),
            (
                "incentives.max_duration_hours",
                u64::from(self.max_duration_hours),
            ),
        ])?;
        if self.max_bonus_bps == 0 || self.max_bonus_bps > 10_000 {
            return Err(SettingsError::new(
                "incentives.max_bonus_bps",
                "must be between 1 and 10000 (basis points of the sale price)",
            ));
        }
        check_consumer_name("incentives.consumer_name", &self.consumer_name)?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use ratemesh_runtime::settings::check_section;

    #[test]
    fn defaults_load_and_checks_name_the_key() {
        check_section::<IncentivesSettings>(&[
            (
                "RATEMESH__INCENTIVES__MAX_BONUS_BPS",
                "10001",
                "incentives.max_bonus_bps",
            ),
            (
                "RATEMESH__INCENTIVES__TIMER_POLL_MS",
                "0",
                "incentives.timer_poll_ms",
            ),
            (
                "RATEMESH__INCENTIVES__CONSUMER_NAME",
                "a b",
                "incentives.consumer_name",
            ),
        ])
        .unwrap();
    }
}
