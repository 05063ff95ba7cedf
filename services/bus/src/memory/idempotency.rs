//! In-memory idempotency keys with a TTL, expired lazily and swept now and then.

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
    InProgress,
    Done(Bytes),
}

#[derive(Default)]
struct Shard {
    keys: HashMap<String, (Slot, Instant)>,
    inserts: u32,
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

    pub(super) fn begin(&self, scope: &str, key: &str, ttl: Duration) -> Idempotency {
        let k = slot_key(scope, key);
        let now = Instant::now();
        let mut shard = lock(self.shard(&k));
        match shard.keys.get(&k) {
            Some((Slot::InProgress, expires)) if *expires > now => Idempotency::InProgress,
            Some((Slot::Done(outcome), expires)) if *expires > now => {
                Idempotency::Done(outcome.clone())
            }
            _ => {
                Self::insert(&mut shard, k, Slot::InProgress, ttl, now);
                Idempotency::New
            }
        }
    }

    pub(super) fn complete(&self, scope: &str, key: &str, outcome: Bytes, ttl: Duration) {
        let k = slot_key(scope, key);
        let mut shard = lock(self.shard(&k));
        Self::insert(&mut shard, k, Slot::Done(outcome), ttl, Instant::now());
    }

    pub(super) fn release(&self, scope: &str, key: &str) {
        let k = slot_key(scope, key);
        let mut shard = lock(self.shard(&k));
        if matches!(shard.keys.get(&k), Some((Slot::InProgress, _))) {
            shard.keys.remove(&k);
        }
    }
}
