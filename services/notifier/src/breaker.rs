//! A circuit breaker per partner endpoint, in process memory.
//!
//! After `threshold` consecutive failures the breaker opens: deliveries to that endpoint
//! are held back (their timers moved to when it half-opens) instead of burning attempts.
//! Half-open lets one trial attempt through; its success closes the breaker, its failure
//! opens it again. Other endpoints are never affected.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use crate::delivery_metrics;

#[derive(Debug, Default)]
struct State {
    failures: u32,
    open_until: Option<Instant>,
    trial_in_flight: bool,
}

/// What the breaker says about an attempt.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Admission {
    /// Go ahead.
    Allowed,
    /// Hold it back for this long.
    HoldFor(Duration),
}

#[derive(Debug)]
pub(crate) struct Breakers {
    threshold: u32,
    open_for: Duration,
    states: Mutex<HashMap<String, State>>,
}

impl Breakers {
    pub(crate) fn new(threshold: u32, open_for: Duration) -> Self {
        Self {
            threshold,
            open_for,
            states: Mutex::new(HashMap::new()),
        }
    }

    /// Whether an attempt to `endpoint` may start now.
    pub(crate) fn admit(&self, endpoint: &str, now: Instant) -> Admission {
        let mut states = self.states.lock().unwrap_or_else(|p| p.into_inner());
        let Some(state) = states.get_mut(endpoint) else {
            return Admission::Allowed;
        };
        match state.open_until {
            Some(until) if now < until => Admission::HoldFor(until - now),
            Some(_) if state.trial_in_flight => Admission::HoldFor(self.open_for / 4),
            Some(_) => {
                state.trial_in_flight = true;
                Admission::Allowed
            }
            None => Admission::Allowed,
        }
    }

    /// Records the outcome of an attempt to `endpoint`.
    pub(crate) fn record(&self, endpoint: &str, success: bool, now: Instant) {
        let mut states = self.states.lock().unwrap_or_else(|p| p.into_inner());
        if success {
            if states.remove(endpoint).is_some() {
                delivery_metrics::breakers_open(open_count(&states));
            }
            return;
        }
        let state = states.entry(endpoint.to_owned()).or_default();
        state.failures = state.failures.saturating_add(1);
        state.trial_in_flight = false;
        if state.failures >= self.threshold {
            if state.open_until.is_none() {
                tracing::warn!(
                    endpoint,
                    failures = state.failures,
                    "circuit breaker opened"
                );
                delivery_metrics::breaker_opened();
            }
            state.open_until = Some(now + self.open_for);
            delivery_metrics::breakers_open(open_count(&states));
        }
    }
}

/// Endpoints whose breaker is open or half-open (a closed one is not in the map or has no
/// `open_until`).
fn open_count(states: &HashMap<String, State>) -> usize {
    states.values().filter(|s| s.open_until.is_some()).count()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn opens_after_threshold_half_opens_and_closes_on_success() {
        let b = Breakers::new(2, Duration::from_secs(10));
        let t0 = Instant::now();
        assert_eq!(b.admit("a", t0), Admission::Allowed);
        b.record("a", false, t0);
        assert_eq!(b.admit("a", t0), Admission::Allowed);
        b.record("a", false, t0);
        assert_eq!(
            b.admit("a", t0),
            Admission::HoldFor(Duration::from_secs(10))
        );
        assert_eq!(b.admit("other", t0), Admission::Allowed);
        let later = t0 + Duration::from_secs(11);
        assert_eq!(b.admit("a", later), Admission::Allowed, "one trial");
        assert!(matches!(b.admit("a", later), Admission::HoldFor(_)));
        b.record("a", false, later);
        assert!(
            matches!(b.admit("a", later), Admission::HoldFor(_)),
            "reopened"
        );
        let much_later = later + Duration::from_secs(11);
        assert_eq!(b.admit("a", much_later), Admission::Allowed);
        b.record("a", true, much_later);
        assert_eq!(b.admit("a", much_later), Admission::Allowed);
        assert_eq!(b.admit("a", much_later), Admission::Allowed);
    }
}
