//! [`RecordCache`]: decoded state records a consumer wrote, kept so its next batch for
//! the same keys skips the read and the decode.
//!
//! A consumer that owns a partition (a lease, see [`crate::lease`]) is normally the only
//! writer of its keys' records, so the record it last wrote is the current one. The cache
//! never decides correctness: every write made from a cached record carries the version
//! it was cached at, and a record someone else changed in between (another replica, a
//! timer, an API call) fails that check and is read again. Entries are taken out while a
//! batch works on them and put back with their new version once written, so a failed or
//! abandoned write leaves no entry behind.

use std::collections::HashMap;
use std::sync::Mutex;

/// Decoded records by key, each with the state version it was written at; at most
/// `capacity` of them (when full, an arbitrary sixteenth is dropped to make room).
#[derive(Debug)]
pub struct RecordCache<T> {
    entries: Mutex<HashMap<String, (u64, T)>>,
    capacity: usize,
}

impl<T> RecordCache<T> {
    /// A cache of at most `capacity` records (0 keeps none).
    pub fn new(capacity: usize) -> Self {
        Self {
            entries: Mutex::new(HashMap::new()),
            capacity,
        }
    }

    fn entries(&self) -> std::sync::MutexGuard<'_, HashMap<String, (u64, T)>> {
        // A panic while the lock was held leaves only whole entries behind.
        self.entries
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Takes `key`'s record out, with the version it was written at.
    pub fn take(&self, key: &str) -> Option<(u64, T)> {
        if self.capacity == 0 {
            return None;
        }
        self.entries().remove(key)
    }

    /// Keeps `value` as `key`'s record at `version` (the version its write returned).
    pub fn put(&self, key: impl Into<String>, version: u64, value: T) {
        if self.capacity == 0 {
            return;
        }
        let mut entries = self.entries();
        if entries.len() >= self.capacity {
            let drop_n = (self.capacity / 16).max(1);
            let victims: Vec<String> = entries.keys().take(drop_n).cloned().collect();
            for victim in victims {
                entries.remove(&victim);
            }
        }
        entries.insert(key.into(), (version, value));
    }

    /// Drops `key`'s record (it was written elsewhere).
    pub fn forget(&self, key: &str) {
        if self.capacity > 0 {
            self.entries().remove(key);
        }
    }

    /// How many records are kept.
    pub fn len(&self) -> usize {
        self.entries().len()
    }

    /// Whether none is kept.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn takes_what_was_put_once_and_stays_within_capacity() {
        let cache = RecordCache::new(32);
        cache.put("SKU-1", 3, "three");
        assert_eq!(cache.take("SKU-1"), Some((3, "three")));
        assert_eq!(
            cache.take("SKU-1"),
            None,
            "taken out while a batch works on it"
        );
        for i in 0..100 {
            cache.put(format!("SKU-{i}"), i, "x");
            assert!(cache.len() <= 32);
        }
        assert!(cache.take("SKU-99").is_some(), "the newest entry is kept");
        cache.put("SKU-1", 4, "four");
        cache.forget("SKU-1");
        assert_eq!(cache.take("SKU-1"), None);
    }

    #[test]
    fn a_cache_of_capacity_zero_keeps_nothing() {
        let cache = RecordCache::new(0);
        cache.put("SKU-1", 1, ());
        assert!(cache.is_empty());
        assert_eq!(cache.take("SKU-1"), None);
    }
}
