//! The notifier's settings as durations and limits (from `[notifier]`).

use std::time::Duration;

use crate::NotifierSettings;

use crate::destination::DestinationPolicy;

/// Everything the delivery machinery needs to know, resolved once at start-up.
#[derive(Debug, Clone)]
pub(crate) struct Config {
    pub(crate) destinations: DestinationPolicy,
    pub(crate) coalesce_window: Duration,
    pub(crate) max_rates_per_delivery: usize,
    pub(crate) connect_timeout: Duration,
    pub(crate) request_timeout: Duration,
    pub(crate) max_attempts: u32,
    pub(crate) max_age: Duration,
    pub(crate) backoff_initial: Duration,
    pub(crate) backoff_max: Duration,
    pub(crate) max_in_flight_per_partner: usize,
    pub(crate) breaker_failure_threshold: u32,
    pub(crate) breaker_open: Duration,
    pub(crate) timer_poll: Duration,
    pub(crate) partner_refresh: Duration,
    pub(crate) delivery_retention: Duration,
}

impl Config {
    pub(crate) fn from_settings(s: &NotifierSettings) -> Self {
        Self {
            destinations: DestinationPolicy {
                allow_private: s.allow_private_destinations,
                allow_plain_http: s.allow_plain_http,
            },
            coalesce_window: Duration::from_millis(s.coalesce_window_ms),
            max_rates_per_delivery: s.max_rates_per_delivery,
            connect_timeout: Duration::from_millis(s.connect_timeout_ms),
            request_timeout: Duration::from_millis(s.request_timeout_ms),
            max_attempts: s.max_attempts,
            max_age: Duration::from_secs(s.max_age_secs),
            backoff_initial: Duration::from_millis(s.backoff_initial_ms),
            backoff_max: Duration::from_millis(s.backoff_max_ms),
            max_in_flight_per_partner: s.max_in_flight_per_partner,
            breaker_failure_threshold: s.breaker_failure_threshold,
            breaker_open: Duration::from_millis(s.breaker_open_ms),
            timer_poll: Duration::from_millis(s.timer_poll_ms),
            partner_refresh: Duration::from_millis(s.partner_refresh_ms),
            delivery_retention: Duration::from_secs(s.delivery_retention_secs),
        }
    }

    /// How long an attempt may hold a delivery before its timer fires again (a crashed
    /// attempt is retried after this).
    pub(crate) fn attempt_lease(&self) -> Duration {
        self.connect_timeout + self.request_timeout + Duration::from_secs(5)
    }

    /// The delay before the retry that follows attempt number `attempts` (1-based):
    /// exponential from `backoff_initial`, capped at `backoff_max`, with "equal jitter"
    /// (between half and all of it) so partners recovering from an outage are not hit by
    /// every retry at once. `unit` is a uniform random number in [0, 1).
    pub(crate) fn backoff(&self, attempts: u32, unit: f64) -> Duration {
        let exp = attempts.saturating_sub(1).min(30);
        let full = self
            .backoff_initial
            .saturating_mul(1u32 << exp)
            .min(self.backoff_max);
        let half = full / 2;
        half + half.mul_f64(unit.clamp(0.0, 1.0))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_doubles_with_jitter_and_is_capped() {
        let mut s = <crate::NotifierSettings as ratemesh_runtime::settings::Section>::defaults();
        s.backoff_initial_ms = 1000;
        s.backoff_max_ms = 10_000;
        let c = Config::from_settings(&s);
        assert_eq!(c.backoff(1, 0.0), Duration::from_millis(500));
        assert_eq!(c.backoff(1, 1.0), Duration::from_millis(1000));
        assert_eq!(c.backoff(3, 1.0), Duration::from_millis(4000));
        assert_eq!(c.backoff(3, 0.0), Duration::from_millis(2000));
        assert_eq!(c.backoff(10, 1.0), Duration::from_millis(10_000));
        assert_eq!(c.backoff(99, 0.5), Duration::from_millis(7_500));
    }
}
