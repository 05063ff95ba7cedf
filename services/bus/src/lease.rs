//! Partition ownership: each partition of a stream is processed by one consumer of a group
//! at a time, so a key's entries are applied in stream order on any number of replicas
//! (the Kafka partition model, on Redis Streams).
//!
//! The consumers of a group announce themselves in a membership list (an entry expires
//! `lease_ttl` after its last renewal) and hold a lease per partition (same expiry). Every
//! consumer computes the same assignment from the live members — partition `p` goes to
//! member `p mod n` in name order — releases what is no longer its own and takes what is:
//! at once if it is free, when its lease lapses if its owner died. Refreshes happen
//! between batches, so a released partition has nothing in flight, and only while the
//! consumer keeps asking for batches, so one that stops making progress loses its
//! partitions. A partition changes hands within `lease_ttl` plus one refresh interval
//! (`lease_ttl / 4`) of its owner dying or leaving uncleanly; at once plus one refresh on a
//! clean [`crate::Consumer::leave`].
//!
//! On taking a partition, the new owner first takes over the entries still pending there
//! (the previous owner's unacknowledged work, oldest first), then reads new ones.
//!
//! Both backends run the same rule: `LeaseBook::refresh` here for the in-memory bus,
//! one script over the group's membership and lease keys on Redis.

use std::collections::{BTreeMap, BTreeSet};
use std::time::{Duration, Instant};

use crate::entry::EntryId;

/// How often a consumer renews its membership and leases and rebalances.
pub(crate) fn refresh_interval(ttl: Duration) -> Duration {
    (ttl / 4).max(Duration::from_millis(5))
}

/// The group's membership and leases (the in-memory bus keeps one per stream and group).
#[derive(Debug, Default)]
pub(crate) struct LeaseBook {
    /// Member name → expiry (ms).
    members: BTreeMap<String, u64>,
    /// Partition → (owner, expiry ms).
    owners: BTreeMap<u32, (String, u64)>,
}

impl LeaseBook {
    /// Members whose membership has not lapsed at `now_ms`.
    pub(crate) fn live_members(&self, now_ms: u64) -> u64 {
        self.members
            .values()
            .filter(|expiry| **expiry > now_ms)
            .count() as u64
    }

    /// Renews `me` (or removes it when `leaving`), drops expired members, releases what
    /// `me` holds but should not, takes or renews what it should, and returns what `me`
    /// now holds.
    pub(crate) fn refresh(
        &mut self,
        me: &str,
        now_ms: u64,
        ttl_ms: u64,
        partitions: u32,
        leaving: bool,
    ) -> BTreeSet<u32> {
        self.members.retain(|_, expiry| *expiry > now_ms);
        if leaving {
            self.members.remove(me);
        } else {
            self.members.insert(me.to_owned(), now_ms + ttl_ms);
        }
        // BTreeMap keys are in name order: the same order the Redis script sorts by.
        let live: Vec<&String> = self.members.keys().collect();
        let mut held = BTreeSet::new();
        for p in 0..partitions {
            let wanted = !leaving
                && live
                    .get(p as usize % live.len().max(1))
                    .is_some_and(|m| *m == me);
            let current = self.owners.get(&p);
            let free = current.is_none_or(|(_, expiry)| *expiry <= now_ms);
            let mine = current.is_some_and(|(owner, _)| owner == me);
            if wanted {
                if free || mine {
                    self.owners.insert(p, (me.to_owned(), now_ms + ttl_ms));
                    held.insert(p);
                }
            } else if mine && !free {
                self.owners.remove(&p);
            }
        }
        held
    }
}

/// One consumer's view of what it owns.
#[derive(Debug, Default)]
pub(crate) struct Ownership {
    /// Partitions this consumer holds a lease on.
    pub(crate) owned: BTreeSet<u32>,
    /// Partitions taken whose pending entries are being taken over, with the id after
    /// which to continue (entries are taken over once each, oldest first).
    pub(crate) taking_over: BTreeMap<u32, EntryId>,
    refreshed_at: Option<Instant>,
}

impl Ownership {
    /// Whether a refresh is due at `now`.
    pub(crate) fn due(&self, now: Instant, ttl: Duration) -> bool {
        self.refreshed_at
            .is_none_or(|at| now >= at + refresh_interval(ttl))
    }

    /// When the next refresh is due.
    pub(crate) fn next_refresh(&self, ttl: Duration) -> Instant {
        self.refreshed_at
            .map_or_else(Instant::now, |at| at + refresh_interval(ttl))
    }

    /// Records that `held` is what this consumer holds as of `now`.
    pub(crate) fn update(&mut self, held: BTreeSet<u32>, now: Instant, stream: &str, group: &str) {
        self.refreshed_at = Some(now);
        if held == self.owned {
            return;
        }
        let taken: BTreeSet<u32> = held.difference(&self.owned).copied().collect();
        let lost: Vec<u32> = self.owned.difference(&held).copied().collect();
        tracing::info!(
            stream,
            group,
            owned = ?held,
            taken = ?taken,
            released = ?lost,
            "partition ownership changed"
        );
        self.taking_over.retain(|p, _| held.contains(p));
        self.taking_over
            .extend(taken.iter().map(|p| (*p, EntryId::ZERO)));
        self.owned = held;
    }

    /// Forgets everything (after leaving the group).
    pub(crate) fn clear(&mut self) {
        self.owned.clear();
        self.taking_over.clear();
        self.refreshed_at = None;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn live_members_split_the_partitions_and_a_dead_one_is_taken_over_when_it_lapses() {
        let mut book = LeaseBook::default();
        let ttl = 1_000;
        // a alone takes everything.
        assert_eq!(book.refresh("a", 0, ttl, 4, false).len(), 4);
        // b joins: it gets nothing while a holds its share...
        assert!(book.refresh("b", 10, ttl, 4, false).is_empty());
        // ...a releases b's share on its next refresh, and b takes it.
        assert_eq!(book.refresh("a", 20, ttl, 4, false), BTreeSet::from([0, 2]));
        assert_eq!(book.refresh("b", 30, ttl, 4, false), BTreeSet::from([1, 3]));
        // a dies: b keeps its own, and takes a's once a's membership and leases lapse.
        assert_eq!(
            book.refresh("b", 900, ttl, 4, false),
            BTreeSet::from([1, 3])
        );
        assert_eq!(
            book.refresh("b", 1_100, ttl, 4, false),
            BTreeSet::from([0, 1, 2, 3])
        );
    }

    #[test]
    fn a_leaving_member_frees_its_partitions_at_once() {
        let mut book = LeaseBook::default();
        book.refresh("a", 0, 1_000, 2, false);
        book.refresh("b", 0, 1_000, 2, false);
        book.refresh("a", 1, 1_000, 2, false);
        assert_eq!(book.refresh("b", 2, 1_000, 2, false), BTreeSet::from([1]));
        assert!(book.refresh("a", 3, 1_000, 2, true).is_empty());
        assert_eq!(
            book.refresh("b", 4, 1_000, 2, false),
            BTreeSet::from([0, 1])
        );
    }
}
