//! In-memory durable-timer queues: a due-ordered set plus a member index for upserts.

use std::collections::{BTreeSet, HashMap};
use std::sync::Mutex;

use crate::state::DueTimer;

use super::lock;

#[derive(Default)]
struct Queue {
    due_of: HashMap<String, u64>,
    by_due: BTreeSet<(u64, String)>,
}

#[derive(Default)]
pub(super) struct TimerStore {
    queues: Mutex<HashMap<String, Queue>>,
}

impl TimerStore {
    pub(super) fn schedule(&self, queue: &str, member: &str, due_ms: u64) {
        let mut queues = lock(&self.queues);
        let q = queues.entry(queue.to_owned()).or_default();
        if let Some(old) = q.due_of.insert(member.to_owned(), due_ms) {
            q.by_due.remove(&(old, member.to_owned()));
        }
        q.by_due.insert((due_ms, member.to_owned()));
    }

    pub(super) fn cancel(&self, queue: &str, member: &str) -> bool {
        let mut queues = lock(&self.queues);
        let Some(q) = queues.get_mut(queue) else {
            return false;
        };
        match q.due_of.remove(member) {
            Some(due) => q.by_due.remove(&(due, member.to_owned())),
            None => false,
        }
    }

    /// Removes and returns up to `limit` members due at or before `now_ms`, earliest first.
    pub(super) fn claim_due(&self, queue: &str, now_ms: u64, limit: usize) -> Vec<DueTimer> {
        let mut queues = lock(&self.queues);
        let Some(q) = queues.get_mut(queue) else {
            return Vec::new();
        };
        let mut out = Vec::new();
        while out.len() < limit {
            match q.by_due.first() {
                Some((due, _)) if *due <= now_ms => {}
                _ => break,
            }
            if let Some((due, member)) = q.by_due.pop_first() {
                q.due_of.remove(&member);
                out.push(DueTimer {
                    member,
                    due_at_ms: due,
                });
            }
        }
        out
    }
}
