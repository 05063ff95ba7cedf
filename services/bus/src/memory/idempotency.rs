//! In-memory idempotency keys with a TTL, expired lazily and swept now and then. An
//! attempt in progress is held by its owner's token, so only that owner renews, completes
//! or releases it.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use bytes::Bytes;

use crate::partition::fnv1a64;
use crate::state::Idempotency;

use super::lock;

const SHARDS: usize = 16;
/// Every this many inserts a shard drops its expired keys, bounding memory.
const SWEEP_EVERY: u32 = 1024;

enum Slot {
    /// Held by the attempt with this owner token.
    InProgress(String),
    Done(Bytes),
}

#[derive(Default)]
struct Shard {
    keys: HashMap<String, (Slot, Instant)>,
    inserts: u32,
}

impl Shard {
    /// The live slot under `k`; an expired one is as good as absent.
    fn live(&self, k: &str, now: Instant) -> Option<&Slot> {
        self.keys
            .get(k)
            .filter(|(_, expires)| *expires > now)
            .map(|(slot, _)| slot)
    }

    fn held_by(&self, k: &str, owner: &str, now: Instant) -> bool {
        matches!(self.live(k, now), Some(Slot::InProgress(holder)) if holder == owner)
    }
}

pub(super) struct IdempotencyStore {
    shards: Vec<Mutex<Shard>>,
}

fn slot_key(scope: &str, key: &str) -> String {
    format!("{scope}\u{0}{key}")
}

impl IdempotencyStore {
    pub(super) fn new() -> Self {
        IdempotencyStore {
            shards: (0..SHARDS).map(|_| Mutex::default()).collect(),
        }
    }

    fn shard(&self, k: &str) -> &Mutex<Shard> {
        &self.shards[(fnv1a64(k.as_bytes()) % SHARDS as u64) as usize]
    }

    fn insert(shard: &mut Shard, k: String, slot: Slot, ttl: Duration, now: Instant) {
        shard.keys.insert(k, (slot, now + ttl));
        shard.inserts += 1;
        if shard.inserts >= SWEEP_EVERY {
            shard.inserts = 0;
            shard.keys.retain(|_, (_, expires)| *expires > now);
        }
    }

    pub(super) fn begin(&self, scope: &str, key: &str, owner: &str, ttl: Duration) -> Idempotency {
        let k = slot_key(scope, key);
        let now = Instant::now();
        let mut shard = lock(self.shard(&k));
        match shard.live(&k, now) {
            Some(Slot::InProgress(_)) => Idempotency::InProgress,
            Some(Slot::Done(outcome)) => Idempotency::Done(outcome.clone()),
            None => {
                Self::insert(&mut shard, k, Slot::InProgress(owner.to_owned()), ttl, now);
                Idempotency::New
            }
        }
    }

    pub(super) fn renew(&self, scope: &str, key: &str, owner: &str, ttl: Duration) -> bool {
        let k = slot_key(scope, key);
        let now = Instant::now();
        let mut shard = lock(self.shard(&k));
        if !shard.held_by(&k, owner, now) {
            return false;
        }
        if let Some((_, expires)) = shard.keys.get_mut(&k) {
            *expires = now + ttl;
        }
        true
    }

    pub(super) fn complete(
        &self,
        scope: &str,
        key: &str,
        owner: &str,
        outcome: Bytes,
        ttl: Duration,
    ) -> bool {
        let k = slot_key(scope, key);
        let now = Instant::now();
        let mut shard = lock(self.shard(&k));
        if shard.live(&k, now).is_some() && !shard.held_by(&k, owner, now) {
            return false;
        }
        Self::insert(&mut shard, k, Slot::Done(outcome), ttl, now);
        true
    }

    pub(super) fn release(&self, scope: &str, key: &str, owner: &str) {
        let k = slot_key(scope, key);
        let now = Instant::now();
        let mut shard = lock(self.shard(&k));
        if shard.held_by(&k, owner, now) {
            shard.keys.remove(&k);
        }
    }
}
