//! Times on the wire: `google.protobuf.Timestamp` ⇄ `DateTime<Utc>`.

use chrono::{DateTime, Utc};
use prost_types::Timestamp;

use crate::DecodeError;

/// A UTC time as a protobuf timestamp.
pub fn to_timestamp(t: DateTime<Utc>) -> Timestamp {
    Timestamp {
        seconds: t.timestamp(),
        // Always in 0..1e9, so it fits.
        nanos: i32::try_from(t.timestamp_subsec_nanos()).unwrap_or(0),
    }
}

/// A protobuf timestamp as a UTC time; `None` when out of range or malformed.
pub fn from_timestamp(t: &Timestamp) -> Option<DateTime<Utc>> {
    let nanos = u32::try_from(t.nanos).ok().filter(|n| *n < 1_000_000_000)?;
    DateTime::from_timestamp(t.seconds, nanos)
}

/// Milliseconds since the Unix epoch (how the notifier keeps times) as a protobuf timestamp.
pub fn from_millis(ms: i64) -> Timestamp {
    Timestamp {
        seconds: ms.div_euclid(1000),
        // rem_euclid keeps it in 0..1000, so the nanoseconds fit.
        nanos: i32::try_from(ms.rem_euclid(1000) * 1_000_000).unwrap_or(0),
    }
}

/// A protobuf timestamp as milliseconds since the Unix epoch (sub-millisecond part dropped).
pub fn to_millis(t: &Timestamp) -> i64 {
    t.seconds
        .saturating_mul(1000)
        .saturating_add(i64::from(t.nanos.div_euclid(1_000_000)))
}

/// A required timestamp field of a decoded entry, named in the error.
pub fn required(t: Option<&Timestamp>, field: &str) -> Result<DateTime<Utc>, DecodeError> {
    t.and_then(from_timestamp)
        .ok_or_else(|| DecodeError::field(field, "missing or out of range"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn times_round_trip_and_bad_ones_are_named() {
        let t = DateTime::from_timestamp(1_700_000_000, 123_456_789).unwrap();
        assert_eq!(from_timestamp(&to_timestamp(t)), Some(t));
        for ms in [0, 1_700_000_000_123, -1, -1_001] {
            assert_eq!(to_millis(&from_millis(ms)), ms);
        }
        assert_eq!(from_millis(-1).nanos, 999_000_000);
        let bad = Timestamp {
            seconds: 1,
            nanos: -1,
        };
        assert_eq!(from_timestamp(&bad), None);
        assert_eq!(
            required(None, "meta.occurred_at").unwrap_err().0,
            "meta.occurred_at: missing or out of range"
        );
    }
}
