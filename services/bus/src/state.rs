//! Types of the state API: versioned per-key records, idempotency outcomes, scan pages.

use std::collections::BTreeMap;
use std::time::Duration;

use bytes::Bytes;

/// The stored state of one key: named fields and a version that grows by one per write.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct StateRecord {
    /// Version of this record; 1 after the first write. 0 is never stored (it means absent).
    pub version: u64,
    /// Field values (services store encoded protobuf per field).
    pub fields: BTreeMap<String, Bytes>,
}

/// What a write requires of the current version.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Expect {
    /// Write whatever the current version is.
    Any,
    /// Write only if the current version is exactly this; `Version(0)` means "absent".
    Version(u64),
}

/// A write to one state key: fields to set and remove, under a version check.
///
/// Fields not mentioned are kept. The version becomes `current + 1`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StateWrite {
    /// The namespace (e.g. `"sku"`, `"partner"`).
    pub namespace: String,
    /// The key within the namespace (e.g. the SKU). It also picks the partition, so an
    /// event published atomically with this write must use a key of the same partition.
    pub key: String,
    /// The version check.
    pub expect: Expect,
    /// Fields to set.
    pub set: BTreeMap<String, Bytes>,
    /// Fields to remove.
    pub remove: Vec<String>,
    /// A field whose value this write sets is kept as a version in the key's history
    /// ([`StateWrite::set_kept`]), in the same atomic step: the field's name, the version
    /// (its payload is the field's new value) and how much history is kept.
    pub history: Option<(String, HistoryEntry, HistoryLimits)>,
    /// Whether [`crate::Bus::scan_states`] lists the key. Decided by the write that
    /// creates the record (later writes do not change it); true unless
    /// [`StateWrite::unlisted`] was called. A record only ever read by its key leaves it
    /// false and saves its index entry (~100 bytes in Redis).
    pub listed: bool,
    /// The group a listed record is listed under ([`StateWrite::listed_in`]); `None`
    /// leaves it where it is.
    pub group: Option<String>,
}

/// One version kept in a key's history (e.g. a published rate card), found again by
/// [`crate::Bus::history_at`] for any instant it was current at.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HistoryEntry {
    /// From when this version was current, in microseconds since the Unix epoch.
    pub at_us: i64,
    /// Its version; versions grow with `at_us`.
    pub version: u64,
    /// The version as stored (services store encoded protobuf).
    pub payload: Bytes,
}

/// How much of a key's history is kept; applied whenever a version is added.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct HistoryLimits {
    /// Versions superseded before this instant (µs since the Unix epoch) are dropped, but
    /// the one current at it is kept: it answers instants just after the horizon.
    pub keep_since_us: i64,
    /// At most this many versions (the newest); at least 1.
    pub max_versions: u32,
}

/// The answer to [`crate::Bus::history_at`].
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct HistoryLookup {
    /// The newest version current at the instant asked for (`at_us` at or before it).
    pub found: Option<HistoryEntry>,
    /// The oldest version kept, as `(version, at_us)`: tells "before the first version"
    /// (it is version 1) from "before what is kept".
    pub oldest: Option<(u64, i64)>,
}

impl StateWrite {
    /// A write to `namespace`/`key` with no version check and no changes yet.
    pub fn new(namespace: impl Into<String>, key: impl Into<String>) -> Self {
        StateWrite {
            namespace: namespace.into(),
            key: key.into(),
            expect: Expect::Any,
            set: BTreeMap::new(),
            remove: Vec::new(),
            history: None,
            listed: true,
            group: None,
        }
    }

    /// Creates the record, if this write creates it, without listing it in
    /// [`crate::Bus::scan_states`]: for records only ever read by their key.
    pub fn unlisted(mut self) -> Self {
        self.listed = false;
        self
    }

    /// Lists the record under `group` (a category, say), so [`crate::Bus::scan_group`]
    /// reads that group's records without walking the rest; [`crate::Bus::scan_states`]
    /// still lists it. A write naming another group moves it there; a write naming none
    /// leaves it where it is. A record created unlisted stays unlisted.
    pub fn listed_in(mut self, group: impl Into<String>) -> Self {
        self.group = Some(group.into());
        self
    }

    /// Sets `field` to `value` and keeps that value as version `version` of the key's
    /// history, current from `at_us`, trimmed to `limits`, in the same atomic step as the
    /// write (and its publication, if any). The value is stored once: while it is current
    /// it is the field; a later kept write moves it into the history.
    pub fn set_kept(
        mut self,
        field: impl Into<String>,
        value: impl Into<Bytes>,
        at_us: i64,
        version: u64,
        limits: HistoryLimits,
    ) -> Self {
        let (field, payload) = (field.into(), value.into());
        self.set.insert(field.clone(), payload.clone());
        let entry = HistoryEntry {
            at_us,
            version,
            payload,
        };
        self.history = Some((field, entry, limits));
        self
    }

    /// Requires the current version to be `version` (0 = the key must not exist).
    pub fn expect_version(mut self, version: u64) -> Self {
        self.expect = Expect::Version(version);
        self
    }

    /// Sets a field.
    pub fn set(mut self, field: impl Into<String>, value: impl Into<Bytes>) -> Self {
        self.set.insert(field.into(), value.into());
        self
    }

    /// Removes a field.
    pub fn remove(mut self, field: impl Into<String>) -> Self {
        self.remove.push(field.into());
        self
    }
}

/// One write's answer from [`crate::Bus::write_states`]: the record's new version and the
/// entries appended with it, in order.
pub type Written = (u64, Vec<crate::Appended>);

/// A write for [`crate::Bus::write_states`] and the events appended to a stream with it
/// (`None`: none), in the same partition as the state key.
pub type Staged<'a> = (StateWrite, Option<(&'a str, Vec<crate::Event>)>);

/// How often [`crate::Bus::update_state`] reads and tries again when another writer of
/// the same record won the compare-and-set.
pub const CAS_ATTEMPTS: usize = 32;

/// The bound of the wait after the second race lost in a row; it doubles with each
/// further loss, up to [`CAS_BACKOFF_MAX`].
const CAS_BACKOFF_FIRST: Duration = Duration::from_micros(500);
/// The most a writer waits between two tries of one update.
const CAS_BACKOFF_MAX: Duration = Duration::from_millis(50);

/// How long [`crate::Bus::update_state`] waits before reading again after losing the
/// compare-and-set `lost` times in a row: not at all after the first loss (two writers
/// meeting is common, and the next try usually wins), then a random time below a bound
/// that doubles from [`CAS_BACKOFF_FIRST`] to [`CAS_BACKOFF_MAX`]. Writers that keep
/// colliding on a hot record (a partition's outbox, a slot table under a surge) spread out
/// instead of all reading and writing again at once, where only one of them can win.
pub(crate) fn cas_backoff(lost: usize) -> Duration {
    if lost <= 1 {
        return Duration::ZERO;
    }
    let doublings = u32::try_from(lost - 2).unwrap_or(u32::MAX).min(16);
    let bound = CAS_BACKOFF_FIRST
        .saturating_mul(1 << doublings)
        .min(CAS_BACKOFF_MAX);
    // A fresh `RandomState` is keyed anew each time: enough randomness for a jitter.
    let draw = std::hash::BuildHasher::hash_one(&std::hash::RandomState::new(), lost);
    bound.mul_f64((draw >> 11) as f64 / (1u64 << 53) as f64)
}

/// What a [`crate::Bus::update_state`] step decided.
#[derive(Debug)]
pub enum Update<T> {
    /// Nothing to write; the update is done with this value.
    Keep(T),
    /// Write this (the [`StateWrite`] handed in, with changes) and return the value.
    Write(StateWrite, T),
    /// Write this and append the event to the stream, atomically.
    WriteAndPublish(StateWrite, &'static str, crate::Event, T),
}

impl<T> Update<T> {
    /// The same decision with its value turned into another.
    pub fn map<U>(self, f: impl FnOnce(T) -> U) -> Update<U> {
        match self {
            Update::Keep(value) => Update::Keep(f(value)),
            Update::Write(write, value) => Update::Write(write, f(value)),
            Update::WriteAndPublish(write, stream, event, value) => {
                Update::WriteAndPublish(write, stream, event, f(value))
            }
        }
    }
}

/// One page of a namespace scan.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct StatePage {
    /// Keys with their records, in a stable backend-defined order.
    pub items: Vec<(String, StateRecord)>,
    /// Token for the next page; `None` when the scan is complete.
    pub next: Option<String>,
}

/// The answer to [`crate::Bus::idempotency_begin`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Idempotency {
    /// First attempt, or a retry taking over one whose holder stopped renewing: the
    /// caller holds the key, renews it while it works, then calls `idempotency_complete`
    /// (or `idempotency_release` if it failed and may be retried).
    New,
    /// Another attempt holds the key and keeps renewing it; answer "try again later".
    InProgress,
    /// The work was done; here is the outcome the first attempt stored.
    Done(Bytes),
}

/// A timer that came due, returned by [`crate::Bus::claim_due`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DueTimer {
    /// The member given to `schedule`.
    pub member: String,
    /// When it was due, in milliseconds since the Unix epoch.
    pub due_at_ms: u64,
}

/// Counters of one stream for one consumer group, summed over partitions.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct StreamStats {
    /// Entries currently stored in the stream.
    pub length: u64,
    /// Entries the group has not been given yet.
    pub undelivered: u64,
    /// Entries delivered to the group and not acked.
    pub pending: u64,
    /// `undelivered + pending`: the work the group still has (what autoscaling reads).
    pub backlog: u64,
    /// Entries currently parked in the group's dead-letter stream.
    pub dead_letters: u64,
    /// Entries ever dead-lettered by the group (monotonic counter).
    pub dead_lettered_total: u64,
}

/// A consumer group found on a stream ([`crate::Bus::groups`]), summed over partitions:
/// what it still holds back from trimming, and whether anyone reads for it.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct GroupInfo {
    /// The group's name.
    pub group: String,
    /// Members holding a live partition lease: 0 means no consumer reads for the group,
    /// and whatever it has not acknowledged stays in the stream.
    pub readers: u64,
    /// Entries the group has not been given yet.
    pub undelivered: u64,
    /// Entries delivered to the group and not acked.
    pub pending: u64,
    /// Entries parked in the group's dead-letter stream.
    pub dead_letters: u64,
}

/// What [`crate::Bus::trim`] may drop. Entries still pending in, or not yet delivered to,
/// any consumer group are kept whatever the policy says.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Retention {
    /// Keep at most this many entries per partition.
    pub max_len_per_partition: Option<u64>,
    /// Drop entries older than this.
    pub max_age: Option<std::time::Duration>,
}

/// Encodes a scan position (partition or shard, last key returned) as a page token.
pub(crate) fn page_token(part: u32, last_key: &str) -> String {
    let mut token = format!("{part}:");
    for b in last_key.bytes() {
        token.push_str(&format!("{b:02x}"));
    }
    token
}

/// Decodes a token made by [`page_token`].
pub(crate) fn parse_page_token(token: &str) -> Result<(u32, String), crate::BusError> {
    // The token itself is not repeated: it may be anything a caller sent, of any size.
    let bad = || crate::BusError::InvalidInput("state page token is invalid".to_owned());
    let (part, hex) = token.split_once(':').ok_or_else(bad)?;
    let part: u32 = part.parse().map_err(|_| bad())?;
    if !hex.len().is_multiple_of(2) {
        return Err(bad());
    }
    let bytes = (0..hex.len())
        .step_by(2)
        .map(|i| {
            hex.get(i..i + 2)
                .and_then(|p| u8::from_str_radix(p, 16).ok())
        })
        .collect::<Option<Vec<u8>>>()
        .ok_or_else(bad)?;
    let key = String::from_utf8(bytes).map_err(|_| bad())?;
    Ok((part, key))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_first_lost_race_is_retried_at_once_then_waits_grow_with_jitter_up_to_the_cap() {
        assert_eq!(cas_backoff(0), Duration::ZERO);
        assert_eq!(cas_backoff(1), Duration::ZERO);
        for (lost, bound) in [
            (2, CAS_BACKOFF_FIRST),
            (3, CAS_BACKOFF_FIRST * 2),
            (5, CAS_BACKOFF_FIRST * 8),
            (12, CAS_BACKOFF_MAX),
            (CAS_ATTEMPTS, CAS_BACKOFF_MAX),
            (usize::MAX, CAS_BACKOFF_MAX),
        ] {
            let waits: Vec<Duration> = (0..200).map(|_| cas_backoff(lost)).collect();
            assert!(waits.iter().all(|w| *w < bound), "lost {lost}: {waits:?}");
            // Spread over the whole range, not one value for every writer.
            assert!(waits.iter().any(|w| *w < bound / 4), "lost {lost}");
            assert!(waits.iter().any(|w| *w > bound * 3 / 4), "lost {lost}");
        }
    }
}
