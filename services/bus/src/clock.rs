//! Wall-clock helpers: entry ids, timers and dead-letter timestamps are Unix milliseconds.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

/// Milliseconds since the Unix epoch of `t` (0 before the epoch).
pub(crate) fn ms_of(t: SystemTime) -> u64 {
    t.duration_since(UNIX_EPOCH)
        .map(|d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
        .unwrap_or(0)
}

/// Milliseconds since the Unix epoch now.
pub(crate) fn unix_ms() -> u64 {
    ms_of(SystemTime::now())
}

/// A duration in whole milliseconds, at least 1 (Redis rejects 0 for TTLs).
pub(crate) fn millis_at_least_one(d: Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX).max(1)
}
