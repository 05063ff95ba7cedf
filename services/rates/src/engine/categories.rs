//! The program's category-scoped overrides, held in memory because every SKU's compute
//! needs them: loaded at start from the `override` state, kept current from the
//! `overrides` stream (a tail, so every replica sees every change, not only the consumer
//! that got the entry) and by the override service of this process.

use std::sync::{Arc, Mutex, RwLock};

use chrono::{DateTime, Utc};
use ratemesh_core::state::OverrideBook;
use ratemesh_core::{Applied, Override};

/// Category overrides with time-ordered, idempotent set/clear (see core `OverrideBook`).
#[derive(Debug, Default)]
pub struct CategoryOverrides {
    book: Mutex<OverrideBook>,
    snapshot: RwLock<Arc<Vec<Override>>>,
}

impl CategoryOverrides {
    /// The overrides currently set (active, scheduled or just ended), cheap to clone.
    pub fn snapshot(&self) -> Arc<Vec<Override>> {
        self.snapshot
            .read()
            .map(|s| Arc::clone(&s))
            .unwrap_or_default()
    }

    fn update(&self, f: impl FnOnce(&mut OverrideBook) -> Applied) -> Applied {
        let Ok(mut book) = self.book.lock() else {
            return Applied::Stale;
        };
        let outcome = f(&mut book);
        if outcome == Applied::Applied
            && let Ok(mut snapshot) = self.snapshot.write()
        {
            *snapshot = Arc::new(book.overrides.clone());
        }
        outcome
    }

    /// Folds a set (or replace by id) at `at`.
    pub fn set(&self, value: &Override, at: DateTime<Utc>) -> Applied {
        self.update(|b| b.set(value, at))
    }

    /// Folds a clear at `at`.
    pub fn clear(&self, id: &str, at: DateTime<Utc>) -> Applied {
        self.update(|b| b.clear(id, at))
    }

    /// Forgets overrides that ended by `now`.
    pub fn prune(&self, now: DateTime<Utc>) {
        self.update(|b| {
            let before = b.overrides.len();
            b.prune_ended(now);
            if b.overrides.len() == before {
                Applied::Duplicate
            } else {
                Applied::Applied
            }
        });
    }
}
