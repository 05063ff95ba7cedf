//! Retention: day files older than `retention_days` are deleted, whole days at a time.

use std::io;
use std::path::{Path, PathBuf};

use chrono::{NaiveDate, TimeDelta};

use crate::segment;

/// Deletes the day files of `dir` whose day is more than `retention_days` before `today`
/// (so `retention_days` whole days before today are kept, and today). Returns the files
/// deleted. `today` is passed in, so the rule is tested with any clock.
pub fn prune(dir: &Path, today: NaiveDate, retention_days: u32) -> io::Result<Vec<PathBuf>> {
    let oldest_kept = today - TimeDelta::days(i64::from(retention_days));
    let mut deleted = Vec::new();
    for file in segment::list(dir)? {
        if file.day < oldest_kept {
            let path = dir.join(&file.name);
            std::fs::remove_file(&path)?;
            deleted.push(path);
        }
    }
    Ok(deleted)
}
