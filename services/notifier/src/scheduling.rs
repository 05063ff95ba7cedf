//! Putting deliveries on the retry schedule, which lives in the bus (timer queue
//! [`ATTEMPTS`]), so a restart loses nothing.

use ratemesh_bus::{Bus, BusResult};
use ulid::Ulid;

use crate::model::{ATTEMPTS, DeliveryRecord, Status};
use crate::store::{Deliveries, time_of};

/// Stores new deliveries and schedules their first attempt.
#[derive(Debug, Clone)]
pub(crate) struct Enqueue {
    pub(crate) bus: Bus,
    pub(crate) deliveries: Deliveries,
}

impl Enqueue {
    /// Stores `delivery` and schedules it at `next_attempt_at_ms`. Idempotent: a delivery
    /// that already exists is only (re)scheduled if it has not been tried yet, which
    /// covers a crash between storing it and scheduling it.
    pub(crate) async fn enqueue(&self, delivery: &DeliveryRecord) -> BusResult<()> {
        let due = delivery
            .next_attempt_at_ms
            .unwrap_or(delivery.created_at_ms);
        if !self.deliveries.create(delivery).await? {
            match self.deliveries.get(&delivery.id).await? {
                Some(existing) if existing.status == Status::Pending && existing.attempts == 0 => {}
                _ => return Ok(()),
            }
        }
        self.bus
            .schedule(ATTEMPTS, &delivery.timer_member(), time_of(due))
            .await
    }
}

/// A ULID whose time part is `at_ms` and whose random part is a hash of `parts`: the same
/// inputs give the same id, so retried work finds what it already created.
pub(crate) fn deterministic_id(at_ms: i64, parts: &[&str]) -> String {
    // Two FNV-1a 64 hashes with different offsets make the 80 random bits; stable across
    // processes and builds (unlike std's hasher).
    let fnv = |offset: u64| {
        let mut h = offset;
        for part in parts {
            for b in part.bytes().chain(std::iter::once(0xff)) {
                h ^= u64::from(b);
                h = h.wrapping_mul(0x0000_0100_0000_01b3);
            }
        }
        h
    };
    let random =
        (u128::from(fnv(0xcbf2_9ce4_8422_2325)) << 64) | u128::from(fnv(0x6c62_272e_07bb_0142));
    Ulid::from_parts(at_ms.max(0) as u64, random).to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn deterministic_ids_are_stable_distinct_and_time_ordered() {
        let a = deterministic_id(1_000, &["acme", "flush", "3"]);
        assert_eq!(a, deterministic_id(1_000, &["acme", "flush", "3"]));
        assert_ne!(a, deterministic_id(1_000, &["acme", "flush", "4"]));
        assert_ne!(a, deterministic_id(1_000, &["acm", "eflush", "3"]));
        assert!(deterministic_id(999, &["z"]) < deterministic_id(1_000, &["a"]));
        assert_eq!(a.len(), 26);
    }
}
