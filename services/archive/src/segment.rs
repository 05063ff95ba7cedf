//! Day files: `<YYYY-MM-DD>.<feed>.<writer>.jsonl.gz` in the archive directory, one per
//! UTC day, feed ([`crate::record::FEEDS`]) and writer.
//!
//! A file is only ever appended to, and only by its writer (one consumer of one stream in
//! one process; a feed belongs to one stream), so no two processes write one file,
//! whatever the volume is shared with.
//! Each append is one batch as one complete gzip member of JSON lines, flushed to disk
//! (`fdatasync`, and the directory when the file is new) before the batch's entries are
//! acknowledged. A crash in the middle of an append leaves a torn last member: its
//! entries were not acknowledged, so they are delivered again and written again; readers
//! skip the torn tail.

use std::fs::{File, OpenOptions};
use std::io::{self, BufRead, BufReader, Write};
use std::path::Path;

use chrono::NaiveDate;
use flate2::Compression;
use flate2::read::MultiGzDecoder;
use flate2::write::GzEncoder;

use crate::record::Record;

/// The extension of a day file.
pub const EXTENSION: &str = ".jsonl.gz";

/// The name of `writer`'s day file of `feed` for `day`.
pub fn file_name(day: NaiveDate, feed: &str, writer: &str) -> String {
    format!("{}.{feed}.{writer}{EXTENSION}", day.format("%Y-%m-%d"))
}

/// A day file, as named.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub struct DayFile {
    /// Its day.
    pub day: NaiveDate,
    /// Its feed.
    pub feed: String,
    /// Its name in the directory.
    pub name: String,
}

/// The day file `name` stands for; `None` for any other name.
pub fn parse_name(name: &str) -> Option<DayFile> {
    let stem = name.strip_suffix(EXTENSION)?;
    let (day, rest) = stem.split_at_checked(10)?;
    let (feed, writer) = rest.strip_prefix('.')?.split_once('.')?;
    if feed.is_empty() || writer.is_empty() {
        return None;
    }
    Some(DayFile {
        day: NaiveDate::parse_from_str(day, "%Y-%m-%d").ok()?,
        feed: feed.to_owned(),
        name: name.to_owned(),
    })
}

/// Every day file in `dir`, in day, feed and name order.
pub fn list(dir: &Path) -> io::Result<Vec<DayFile>> {
    let mut files = Vec::new();
    for entry in std::fs::read_dir(dir)? {
        let entry = entry?;
        let name = entry.file_name().to_string_lossy().into_owned();
        if let Some(file) = parse_name(&name)
            && entry.file_type()?.is_file()
        {
            files.push(file);
        }
    }
    files.sort();
    Ok(files)
}

/// Appends `records` to `writer`'s day files in `dir`, one gzip member per day and feed
/// touched, each on disk before this returns.
pub fn append(dir: &Path, writer: &str, records: &[Record]) -> io::Result<()> {
    let mut by_file: Vec<((NaiveDate, &str), Vec<&Record>)> = Vec::new();
    for record in records {
        let file = (record.at.date_naive(), record.feed());
        match by_file.iter_mut().find(|(f, _)| *f == file) {
            Some((_, list)) => list.push(record),
            None => by_file.push((file, vec![record])),
        }
    }
    for ((day, feed), records) in by_file {
        let path = dir.join(file_name(day, feed, writer));
        let mut member = GzEncoder::new(Vec::new(), Compression::default());
        for record in records {
            serde_json::to_writer(&mut member, record)?;
            member.write_all(b"\n")?;
        }
        let member = member.finish()?;
        let created = !path.exists();
        let mut file = OpenOptions::new().create(true).append(true).open(&path)?;
        file.write_all(&member)?;
        file.sync_data()?;
        if created {
            // The new name must survive a crash too, not only the bytes.
            File::open(dir)?.sync_all()?;
        }
    }
    Ok(())
}

/// A line of a day file that could not be read.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BadLine {
    /// 1-based line number in the decompressed file.
    pub line: u64,
    /// Why.
    pub problem: String,
}

/// What reading one day file found.
#[derive(Debug, Default)]
pub struct FileContents {
    /// The records, in file order.
    pub records: Vec<(u64, Record)>,
    /// Lines that are not records.
    pub bad: Vec<BadLine>,
    /// Whether the file ends in a torn append (skipped: its entries were written again).
    pub torn_tail: bool,
}

/// Reads one day file. An I/O error other than a torn last append is returned.
pub fn read(path: &Path) -> io::Result<FileContents> {
    let mut reader = BufReader::new(MultiGzDecoder::new(File::open(path)?));
    let mut contents = FileContents::default();
    let mut line = Vec::new();
    let mut number = 0;
    loop {
        line.clear();
        match reader.read_until(b'\n', &mut line) {
            Ok(0) => break,
            Ok(_) if line.last() != Some(&b'\n') => {
                contents.torn_tail = true;
                break;
            }
            Ok(_) => {}
            Err(e) if is_torn(&e) => {
                contents.torn_tail = true;
                break;
            }
            Err(e) => return Err(e),
        }
        number += 1;
        match serde_json::from_slice::<Record>(&line) {
            Ok(record) => contents.records.push((number, record)),
            Err(e) => contents.bad.push(BadLine {
                line: number,
                problem: e.to_string(),
            }),
        }
    }
    Ok(contents)
}

fn is_torn(e: &io::Error) -> bool {
    e.kind() == io::ErrorKind::UnexpectedEof
}

#[cfg(test)]
mod tests {
    use chrono::{DateTime, Utc};

    use super::*;

    fn record(id: &str, at: &str) -> Record {
        Record {
            stream: "stock".into(),
            partition: 0,
            id: id.into(),
            kind: ratemesh_contract::kinds::STOCK_CHANGED.into(),
            key: "A-1".into(),
            at: DateTime::parse_from_rfc3339(at)
                .unwrap()
                .with_timezone(&Utc),
            payload: String::new(),
        }
    }

    #[test]
    fn names_carry_the_day_and_nothing_else_parses() {
        let day = NaiveDate::from_ymd_opt(2026, 11, 27).unwrap();
        let name = file_name(day, "stock", "host-1.pod-7-0");
        assert_eq!(name, "2026-11-27.stock.host-1.pod-7-0.jsonl.gz");
        let parsed = parse_name(&name).unwrap();
        assert_eq!((parsed.day, parsed.feed.as_str()), (day, "stock"));
        assert_eq!(parse_name("2026-11-27.stock.w.jsonl"), None);
        assert_eq!(parse_name("2026-13-01.stock.w.jsonl.gz"), None);
        assert_eq!(parse_name("2026-11-27.stock.jsonl.gz"), None);
        assert_eq!(parse_name("notes.jsonl.gz"), None);
    }

    #[test]
    fn appends_split_by_day_and_read_back_across_members() {
        let dir = tempfile::tempdir().unwrap();
        append(
            dir.path(),
            "w",
            &[
                record("1-0", "2026-11-27T23:59:59Z"),
                record("2-0", "2026-11-28T00:00:00Z"),
            ],
        )
        .unwrap();
        append(dir.path(), "w", &[record("3-0", "2026-11-27T12:00:00Z")]).unwrap();
        let files = list(dir.path()).unwrap();
        assert_eq!(files.len(), 2, "{files:?}");
        let first = read(&dir.path().join(&files[0].name)).unwrap();
        let ids: Vec<_> = first.records.iter().map(|(_, r)| r.id.as_str()).collect();
        assert_eq!(ids, ["1-0", "3-0"]);
        assert_eq!(first.records[1].0, 2, "line numbers run across members");
        assert!(!first.torn_tail);
    }

    #[test]
    fn a_torn_last_append_is_skipped_and_what_came_before_is_kept() {
        let dir = tempfile::tempdir().unwrap();
        append(dir.path(), "w", &[record("1-0", "2026-11-27T10:00:00Z")]).unwrap();
        let path = dir.path().join(file_name(
            NaiveDate::from_ymd_opt(2026, 11, 27).unwrap(),
            "stock",
            "w",
        ));
        let whole = std::fs::read(&path).unwrap();
        append(dir.path(), "w", &[record("2-0", "2026-11-27T11:00:00Z")]).unwrap();
        let both = std::fs::read(&path).unwrap();
        // Cut the second member short, as a crash in the middle of its write would.
        let torn = &both[..whole.len() + (both.len() - whole.len()) / 2];
        std::fs::write(&path, torn).unwrap();
        let contents = read(&path).unwrap();
        assert!(contents.torn_tail);
        let ids: Vec<_> = contents
            .records
            .iter()
            .map(|(_, r)| r.id.as_str())
            .collect();
        assert_eq!(ids, ["1-0"]);
    }
}
