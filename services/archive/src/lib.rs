//! `ratemesh-archive`: the input archive. Every stock reading and product change ingest
//! accepted, and every override and flash-incentive change, kept compact on disk for
//! `archive.retention_days` (400 by default, so last year's BFCM is there next year), so a
//! what-if run can replay a past season with the same inputs and the same pricing
//! instants the live services had.
//!
//! **Where it lives, and why.** Not in Redis: the streams are a hand-off trimmed within
//! days, and a year of every stock event at BFCM rates would not fit in memory. The
//! archiver is a consumer group of its own (`archive`) on the input streams (`stock`,
//! `overrides`, `incentives`, see [`ratemesh_contract::streams`]), run through the
//! runtime's shared consumer driver, that appends each batch to **append-only day files**
//! and acknowledges the batch only once it is on disk (at-least-once). Each record keeps
//! the stream entry as it was (stream, partition, entry id, kind, key, protobuf payload)
//! and the instant it happened, which picks its UTC day file; readers de-duplicate by the
//! entry id, so a redelivered entry written twice is read once.
//!
//! **Several replicas.** The consumer group already gives each stream partition to one
//! replica at a time (a lease per partition), so an entry is archived by one replica (or,
//! across a hand-over, by two, and de-duplicated). Each replica writes files of its own —
//! its consumer name is part of every file name — so no file ever has two writers and no
//! lock is needed, on a volume of its own or one shared by every replica. A reader merges
//! every file of a day. A whole-archive lease would make one replica the only writer, but
//! would leave the archive behind whenever that replica stalls; the group keeps the work
//! spread and the failover the services already rely on.
//!
//! **Format.** `<YYYY-MM-DD>.<stream>.<writer>.jsonl.gz`: JSON lines ([`record::Record`]),
//! one gzip member per appended batch, `fdatasync`ed before the ack. A torn last member
//! (a crash mid-write) is skipped by readers; its entries were not acknowledged and were
//! written again.
//!
//! Layout:
//! - [`record`] — one archived entry and its decoding to a core event.
//! - [`segment`] — day file names, the durable append, reading a file back.
//! - [`archiver`] — the consumers and the hourly retention sweep, as one background task.
//! - [`retention`] — which day files are past `retention_days`.
//! - [`reader`] — a time range read back: de-duplicated, decoded, ordered, with missing
//!   days reported.

#![forbid(unsafe_code)]

pub mod archiver;
pub mod reader;
pub mod record;
pub mod retention;
pub mod segment;

pub use archiver::{ArchiveConfig, GROUP, STREAMS, run};
pub use reader::{Archived, Extract, Problem, ReadError, read_range, read_range_within};
pub use record::{EventId, Record};
