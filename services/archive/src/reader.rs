//! Reading a time range back: the day files of every writer and stream, de-duplicated by
//! event id (an entry delivered twice was written twice), decoded by the contract's
//! decoders, in time order, with the days the archive has no file for.

use std::collections::{BTreeMap, HashSet};
use std::fmt;
use std::path::{Path, PathBuf};

use chrono::{DateTime, NaiveDate, TimeDelta, Utc};
use ratemesh_core::Event;

use crate::record::{EventId, Record};
use crate::segment;

/// One archived event.
#[derive(Debug, Clone)]
pub struct Archived {
    /// The record as stored.
    pub record: Record,
    /// Its core event.
    pub event: Event,
}

/// What the archive holds for a range.
#[derive(Debug, Clone, Default)]
pub struct Extract {
    /// The events in `[since, until)` and those before it still in force (see
    /// [`read_range`]), each once, ordered by time, then stream, partition and entry id.
    pub events: Vec<Archived>,
    /// Days of the range (up to today) without any day file: the archive was off, or the
    /// files were lost. Reported, never bridged.
    pub missing_days: Vec<NaiveDate>,
    /// Day files read.
    pub files: usize,
    /// Records read more than once (redeliveries) and dropped.
    pub duplicates: usize,
    /// Day files that end in a torn append (skipped; its entries were written again).
    pub torn_files: Vec<String>,
    /// Events from before the range that are still in force at its start (products,
    /// open overrides and incentives), included in `events`.
    pub carried: usize,
}

/// One thing wrong with a day file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Problem {
    /// The day file's name.
    pub file: String,
    /// The line, when one is to blame.
    pub line: Option<u64>,
    /// The field, when one is to blame.
    pub field: Option<String>,
    /// What is wrong.
    pub problem: String,
}

impl fmt::Display for Problem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.file)?;
        if let Some(line) = self.line {
            write!(f, " line {line}")?;
        }
        if let Some(field) = &self.field {
            write!(f, " field {field}")?;
        }
        write!(f, ": {}", self.problem)
    }
}

/// Why a range could not be read; nothing of it is returned.
#[derive(Debug, thiserror::Error)]
pub enum ReadError {
    /// The directory could not be listed.
    #[error("cannot read the archive directory {}: {source}", path.display())]
    Directory {
        /// The directory.
        path: PathBuf,
        /// Why.
        source: std::io::Error,
    },
    /// The range is empty or reversed.
    #[error("the range is empty: {since} is not before {until}")]
    EmptyRange {
        /// Start.
        since: DateTime<Utc>,
        /// End.
        until: DateTime<Utc>,
    },
    /// The range holds more events than the caller's limit; reading stopped there, so
    /// a range too large to replay is never held in memory whole.
    #[error(
        "the range holds more than {limit} events (counting the state carried in from before it)"
    )]
    TooMany {
        /// The limit.
        limit: usize,
    },
    /// Files or records are bad; every problem found is listed.
    #[error("archive refused, nothing read:\n  {}", list(.0))]
    Invalid(Vec<Problem>),
}

/// Problems a refusal's message shows; all of them stay in the error.
const SHOWN_PROBLEMS: usize = 50;

/// The first problems of a refusal, one a line (indented under its headline), and how many
/// more there are: the message form of this reader's errors and of the what-if history
/// loader's, which refuse the same way.
pub fn list<P: std::fmt::Display>(problems: &[P]) -> String {
    let mut lines: Vec<String> = problems
        .iter()
        .take(SHOWN_PROBLEMS)
        .map(ToString::to_string)
        .collect();
    if problems.len() > SHOWN_PROBLEMS {
        lines.push(format!(
            "… and {} more problems",
            problems.len() - SHOWN_PROBLEMS
        ));
    }
    lines.join("\n  ")
}

/// Reads the events of `[since, until)` from `dir`, and the state in force at `since`
/// that earlier days hold: each SKU's latest product record, and the overrides and flash
/// incentives still open (a replay of the range needs them as its starting point). Days
/// after `today` are not expected to have files yet and are not reported missing.
pub fn read_range(
    dir: &Path,
    since: DateTime<Utc>,
    until: DateTime<Utc>,
    today: NaiveDate,
) -> Result<Extract, ReadError> {
    read_range_within(dir, since, until, today, usize::MAX)
}

/// [`read_range`], refusing with [`ReadError::TooMany`] as soon as more than `limit`
/// events (those of the range and those carried in from before it) have been read.
pub fn read_range_within(
    dir: &Path,
    since: DateTime<Utc>,
    until: DateTime<Utc>,
    today: NaiveDate,
    limit: usize,
) -> Result<Extract, ReadError> {
    if since >= until {
        return Err(ReadError::EmptyRange { since, until });
    }
    let first = since.date_naive();
    let last = (until - TimeDelta::nanoseconds(1)).date_naive();
    let files = segment::list(dir).map_err(|source| ReadError::Directory {
        path: dir.to_owned(),
        source,
    })?;
    let mut extract = Extract::default();
    let stock_days: HashSet<NaiveDate> = files
        .iter()
        .filter(|f| f.feed == "stock")
        .map(|f| f.day)
        .collect();
    let mut day = first;
    while day <= last.min(today) {
        if !stock_days.contains(&day) {
            extract.missing_days.push(day);
        }
        day += TimeDelta::days(1);
    }

    let mut problems = Vec::new();
    let mut seen = HashSet::new();
    let mut events = Vec::new();
    let mut earlier = Vec::new();
    for file in &files {
        let in_range = (first..=last).contains(&file.day);
        let holds_state = file.day <= first && file.feed != "stock";
        if !in_range && !holds_state {
            continue;
        }
        let contents = match segment::read(&dir.join(&file.name)) {
            Ok(contents) => contents,
            Err(e) => {
                problems.push(Problem {
                    file: file.name.clone(),
                    line: None,
                    field: None,
                    problem: format!("cannot read: {e}"),
                });
                continue;
            }
        };
        extract.files += 1;
        if contents.torn_tail {
            extract.torn_files.push(file.name.clone());
        }
        for bad in contents.bad {
            problems.push(Problem {
                file: file.name.clone(),
                line: Some(bad.line),
                field: None,
                problem: bad.problem,
            });
        }
        for (line, record) in contents.records {
            let wanted = if record.at < since {
                holds_state
            } else {
                record.at < until
            };
            if !wanted {
                continue;
            }
            let problem = |e: ratemesh_contract::DecodeError| {
                let (field, text) = match e.0.split_once(": ") {
                    Some((field, text)) if !field.contains(' ') => {
                        (Some(field.to_owned()), text.to_owned())
                    }
                    _ => (None, e.0.clone()),
                };
                Problem {
                    file: file.name.clone(),
                    line: Some(line),
                    field,
                    problem: text,
                }
            };
            let id = match record.event_id() {
                Ok(id) => id,
                Err(e) => {
                    problems.push(problem(e));
                    continue;
                }
            };
            if !seen.insert(id.clone()) {
                extract.duplicates += 1;
                continue;
            }
            match record.event() {
                Ok(event) if record.at < since => earlier.push((id, Archived { record, event })),
                Ok(event) => events.push((id, Archived { record, event })),
                Err(e) => problems.push(problem(e)),
            }
            if events.len() + earlier.len() > limit {
                return Err(ReadError::TooMany { limit });
            }
        }
    }
    if !problems.is_empty() {
        return Err(ReadError::Invalid(problems));
    }
    let carried = in_force(earlier, since);
    extract.carried = carried.len();
    events.extend(carried);
    events.sort_by(|(a_id, a), (b_id, b)| (a.record.at, a_id).cmp(&(b.record.at, b_id)));
    extract.events = events.into_iter().map(|(_, e)| e).collect();
    Ok(extract)
}

/// Of the events before `since`, those still in force at `since`: each SKU's latest
/// product record, the last change of every override not cleared or ended by then, and
/// of every flash incentive not closed or ended by then.
fn in_force(
    mut earlier: Vec<(EventId, Archived)>,
    since: DateTime<Utc>,
) -> Vec<(EventId, Archived)> {
    earlier.sort_by(|(a_id, a), (b_id, b)| (a.record.at, a_id).cmp(&(b.record.at, b_id)));
    let mut latest: BTreeMap<(u8, String), (EventId, Archived)> = BTreeMap::new();
    for (id, archived) in earlier {
        let slot = match &archived.event {
            Event::ProductUpserted { sku, .. } => (0, sku.to_string()),
            Event::OverrideSet { value, .. } => (1, value.id.clone()),
            Event::OverrideCleared { id, .. } => (1, id.clone()),
            Event::IncentiveOpened { incentive, .. }
            | Event::IncentiveChanged { incentive, .. } => (2, incentive.id.clone()),
            Event::IncentiveClosed { id, .. } => (2, id.clone()),
            Event::StockObserved { .. } | Event::Tick { .. } => continue,
        };
        latest.insert(slot, (id, archived));
    }
    latest
        .into_values()
        .filter(|(_, a)| match &a.event {
            Event::ProductUpserted { .. } => true,
            Event::OverrideSet { value, .. } => value.ends_at.is_none_or(|end| end > since),
            Event::IncentiveOpened { incentive, .. }
            | Event::IncentiveChanged { incentive, .. } => incentive.ends_at > since,
            _ => false,
        })
        .collect()
}
