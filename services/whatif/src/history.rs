//! History to replay: a directory of ERP pushes, one push per file, in the formats the
//! ingest service accepts on `POST /v1/stock` and `POST /v1/products`.
//!
//! - A file whose name starts with `stock` holds stock updates, one whose name starts with
//!   `product` holds products. Names sort in push order (`stock-0001.csv`, …), though the
//!   replay orders events by time anyway. Files starting with `.` are ignored; any other
//!   file is a problem, so a misnamed push is never silently left out.
//! - `.json`: the webhook body (`{"updates": [...]}` / `{"products": [...]}`) or a bare
//!   array of items, as `ratemesh stock push` reads it. `.csv`: a header row naming the
//!   fields, one item per row, as `ratemesh stock push` sends it (empty cells are absent
//!   fields, `sequence` is a whole number, every other cell is sent as text).
//!
//! - `changes-….jsonl`: merchandiser overrides and flash-incentive transitions, one core
//!   event per line (`{"type":"override_set",…}`, as `ratemesh history export` writes
//!   them): `override_set`, `override_cleared`, `incentive_opened`, `incentive_changed`,
//!   `incentive_closed`. Overrides are checked by the core's own rules.
//!
//! Every item goes through the ingest service's own parser and validation, and becomes a
//! core event through the same stream entry ingest writes and rates decodes. One bad item
//! anywhere refuses the whole history: every problem is reported (file, CSV line or JSON
//! item index, field) and nothing is replayed.
//!
//! **Time.** The live service prices a push at ingest's `received_at`, not at the ERP's
//! `as_of` (DESIGN §6). A JSON file may carry it as a top-level `"received_at"` (RFC
//! 3339) next to `updates` / `products`, as files exported from the input archive do;
//! every item of the file is then priced at it. Otherwise a push is stamped with the
//! latest `as_of` among its items: the earliest instant ingest could have accepted it, and
//! the instant a prompt ERP push of that count arrives. Every item of the file gets that
//! stamp, as every item of one live batch gets one `received_at`. A product file whose
//! items carry no `as_of` is stamped at the start of the history (the earliest stock
//! stamp): master data known before the first count.

use std::collections::BTreeSet;
use std::fmt;
use std::path::{Path, PathBuf};

use chrono::{DateTime, NaiveDate, NaiveTime, TimeDelta, Utc};
use ratemesh_core::Event;
use ratemesh_runtime::FieldViolation;
use serde::{Deserialize, Serialize};

use ratemesh_ingest::csv_feed::csv_items;
use ratemesh_ingest::payload::{self, Feed, ProductBatch, RawProduct, RawStock, StockBatch};
use ratemesh_ingest::validate::{self, Limits, ProductItem, StockItem};

/// The source name history events carry in their stream entries.
const SOURCE: &str = "history";

/// How history is read.
#[derive(Debug, Clone)]
pub struct HistoryOptions {
    /// A stretch longer than this without any stock push is reported as a gap.
    pub max_gap: TimeDelta,
    /// The clock validation checks `as_of` against (a count from the future is refused,
    /// as ingest refuses it).
    pub now: DateTime<Utc>,
}

impl Default for HistoryOptions {
    fn default() -> Self {
        Self {
            max_gap: TimeDelta::days(1),
            now: Utc::now(),
        }
    }
}

/// A stretch of history without stock data, reported rather than bridged.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Gap {
    /// The last push before the gap.
    pub from: DateTime<Utc>,
    /// The first push after it.
    pub until: DateTime<Utc>,
    /// Its length in whole hours.
    pub hours: i64,
}

/// What a history holds, for the report.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct HistorySummary {
    /// Files read (0 for a history built from events).
    pub files: usize,
    /// Stock readings.
    pub stock_readings: usize,
    /// Product records.
    pub products: usize,
    /// Distinct SKUs.
    pub skus: usize,
    /// The earliest event's pricing instant.
    pub from: Option<DateTime<Utc>>,
    /// The latest event's pricing instant.
    pub until: Option<DateTime<Utc>>,
    /// Stretches without stock data longer than the allowed gap.
    pub gaps: Vec<Gap>,
}

/// Validated history: core events, ready to replay.
#[derive(Debug, Clone)]
pub struct History {
    events: Vec<Event>,
    summary: HistorySummary,
}

impl History {
    /// History from events already in core form (another source, or a test).
    pub fn from_events(events: Vec<Event>, max_gap: TimeDelta) -> History {
        Self::build(events, 0, max_gap)
    }

    fn build(events: Vec<Event>, files: usize, max_gap: TimeDelta) -> History {
        let mut stock_readings = 0;
        let mut products = 0;
        let mut skus = BTreeSet::new();
        let mut pushes = BTreeSet::new();
        for event in &events {
            match event {
                Event::StockObserved { .. } => {
                    stock_readings += 1;
                    pushes.insert(event.priced_at());
                }
                Event::ProductUpserted { .. } => products += 1,
                _ => {}
            }
            if let Some(sku) = event.sku() {
                skus.insert(sku.as_str());
            }
        }
        let gaps = pushes
            .iter()
            .zip(pushes.iter().skip(1))
            .filter(|(a, b)| **b - **a > max_gap)
            .map(|(a, b)| Gap {
                from: *a,
                until: *b,
                hours: (*b - *a).num_hours(),
            })
            .collect();
        let summary = HistorySummary {
            files,
            stock_readings,
            products,
            skus: skus.len(),
            from: events.iter().map(Event::priced_at).min(),
            until: events.iter().map(Event::priced_at).max(),
            gaps,
        };
        History { events, summary }
    }

    /// Adds the days the source has no data for (an archive's missing day files) to the
    /// gaps, one gap per run of consecutive days, unless a gap between pushes already
    /// covers it.
    pub fn with_missing_days(mut self, days: &[NaiveDate]) -> History {
        let mut runs: Vec<(NaiveDate, NaiveDate)> = Vec::new();
        for day in days {
            match runs.last_mut() {
                Some((_, end)) if *end + TimeDelta::days(1) == *day => *end = *day,
                _ => runs.push((*day, *day)),
            }
        }
        for (first, last) in runs {
            let from = first.and_time(NaiveTime::MIN).and_utc();
            let until = (last + TimeDelta::days(1))
                .and_time(NaiveTime::MIN)
                .and_utc();
            let covered = self
                .summary
                .gaps
                .iter()
                .any(|g| g.from <= from && g.until >= until);
            if !covered {
                self.summary.gaps.push(Gap {
                    from,
                    until,
                    hours: (until - from).num_hours(),
                });
            }
        }
        self.summary.gaps.sort_by_key(|g| g.from);
        self
    }

    /// The events, in file order (the replay sorts them).
    pub fn events(&self) -> &[Event] {
        &self.events
    }

    /// Counts, time span and gaps.
    pub fn summary(&self) -> &HistorySummary {
        &self.summary
    }
}

/// Where in a file a problem is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Location {
    /// The file as a whole (unreadable, misnamed, empty, not JSON).
    File,
    /// A CSV line, 1-based, counting the header as line 1.
    Line(u64),
    /// A JSON item, by its 0-based index in the `updates` / `products` array.
    Item(usize),
}

/// One thing wrong with the history.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Problem {
    /// The file, by name within the history directory.
    pub file: String,
    /// Where in it.
    pub location: Location,
    /// The field, when one is to blame.
    pub field: Option<String>,
    /// What is wrong.
    pub problem: String,
}

impl fmt::Display for Problem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.file)?;
        match self.location {
            Location::File => {}
            Location::Line(n) => write!(f, " line {n}")?,
            Location::Item(i) => write!(f, " item {i}")?,
        }
        if let Some(field) = &self.field {
            write!(f, " field {field}")?;
        }
        write!(f, ": {}", self.problem)
    }
}

/// Why history could not be read; nothing is replayed.
#[derive(Debug, thiserror::Error)]
pub enum HistoryError {
    /// The directory could not be listed.
    #[error("cannot read history directory {}: {source}", path.display())]
    Directory {
        /// The directory.
        path: PathBuf,
        /// Why.
        source: std::io::Error,
    },
    /// The directory holds no stock or product file.
    #[error("history directory {} holds no stock or products files", path.display())]
    Empty {
        /// The directory.
        path: PathBuf,
    },
    /// Items or files are bad; every problem found is listed.
    #[error("history refused, nothing replayed:\n  {}", ratemesh_archive::reader::list(.0))]
    Invalid(Vec<Problem>),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Format {
    Json,
    Csv,
}

/// What a history file holds, by its name.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Input {
    /// An ERP push.
    Erp(Feed, Format),
    /// Override and incentive changes, one core event per line.
    Changes,
}

/// The names of history files, as `ratemesh history export` writes them.
pub mod names {
    /// The stock push numbered `n`.
    pub fn stock(n: usize) -> String {
        format!("stock-{n:06}.json")
    }
    /// The products push numbered `n`.
    pub fn products(n: usize) -> String {
        format!("products-{n:06}.json")
    }
    /// The override and incentive changes.
    pub const CHANGES: &str = "changes.jsonl";
}

/// The position of each parsed item in its file, to point problems at it.
#[derive(Debug)]
enum Positions {
    Items,
    Lines(Vec<u64>),
}

impl Positions {
    fn of(&self, index: usize) -> Location {
        match self {
            Positions::Items => Location::Item(index),
            Positions::Lines(lines) => lines
                .get(index)
                .map_or(Location::File, |l| Location::Line(*l)),
        }
    }
}

/// Reads every stock and products file in `dir`.
pub fn load_history(dir: &Path, options: &HistoryOptions) -> Result<History, HistoryError> {
    let entries = std::fs::read_dir(dir).map_err(|source| HistoryError::Directory {
        path: dir.to_owned(),
        source,
    })?;
    let mut files = Vec::new();
    for entry in entries {
        let entry = entry.map_err(|source| HistoryError::Directory {
            path: dir.to_owned(),
            source,
        })?;
        let name = entry.file_name().to_string_lossy().into_owned();
        if !name.starts_with('.') && entry.path().is_file() {
            files.push(name);
        }
    }
    files.sort();
    let limits = Limits {
        max_items: usize::MAX,
        max_text_len: 256,
        max_future_skew: TimeDelta::seconds(300),
    };
    let mut problems = Vec::new();
    let mut stock = Vec::new();
    let mut products = Vec::new();
    let mut changes = Vec::new();
    let mut read = 0;
    for name in &files {
        let problem = |problem: String| Problem {
            file: name.clone(),
            location: Location::File,
            field: None,
            problem,
        };
        let (feed, format) = match classify(name) {
            Some(Input::Erp(feed, format)) => (feed, format),
            Some(Input::Changes) => {
                match std::fs::read(dir.join(name)) {
                    Ok(raw) => {
                        read += 1;
                        changes.extend(read_changes(name, &raw, &mut problems));
                    }
                    Err(e) => problems.push(problem(format!("cannot read: {e}"))),
                }
                continue;
            }
            None => {
                problems.push(problem(
                    "not a history file: name it stock-….json|csv, products-….json|csv or changes-….jsonl"
                        .into(),
                ));
                continue;
            }
        };
        let raw = match std::fs::read(dir.join(name)) {
            Ok(raw) => raw,
            Err(e) => {
                problems.push(problem(format!("cannot read: {e}")));
                continue;
            }
        };
        read += 1;
        match feed {
            Feed::Stock => {
                if let Some(items) =
                    read_stock(name, format, &raw, options.now, &limits, &mut problems)
                {
                    stock.push((name.clone(), items));
                }
            }
            Feed::Products => {
                if let Some(items) =
                    read_products(name, format, &raw, options.now, &limits, &mut problems)
                {
                    products.push((name.clone(), items));
                }
            }
        }
    }
    if !problems.is_empty() {
        return Err(HistoryError::Invalid(problems));
    }
    if read == 0 {
        return Err(HistoryError::Empty {
            path: dir.to_owned(),
        });
    }

    let mut events = Vec::new();
    let mut first_push: Option<DateTime<Utc>> = None;
    for (name, (received_at, items)) in &stock {
        // Validation refuses an empty push, so every stock file has a latest `as_of`.
        let Some(stamp) = received_at.or_else(|| items.iter().map(|i| i.as_of).max()) else {
            continue;
        };
        first_push = Some(first_push.map_or(stamp, |t| t.min(stamp)));
        for (i, item) in items.iter().enumerate() {
            let entry = ratemesh_ingest::events::stock_changed(item, SOURCE, name, stamp);
            match ratemesh_contract::stock::decode_stock(&entry.payload) {
                Ok(event) => events.push(event),
                Err(e) => problems.push(Problem {
                    file: name.clone(),
                    location: Location::Item(i),
                    field: None,
                    problem: e.to_string(),
                }),
            }
        }
    }
    for (name, (received_at, items)) in &products {
        let stamp = received_at
            .or_else(|| items.iter().filter_map(|i| i.as_of).max())
            .or(first_push);
        let Some(stamp) = stamp else {
            problems.push(Problem {
                file: name.clone(),
                location: Location::File,
                field: Some("as_of".into()),
                problem: "no item has an as_of and the history has no stock push to date it by"
                    .into(),
            });
            continue;
        };
        for (i, item) in items.iter().enumerate() {
            let entry = ratemesh_ingest::events::product_changed(item, SOURCE, name, stamp);
            match ratemesh_contract::stock::decode_product(&entry.payload) {
                Ok(event) => events.push(event),
                Err(e) => problems.push(Problem {
                    file: name.clone(),
                    location: Location::Item(i),
                    field: None,
                    problem: e.to_string(),
                }),
            }
        }
    }
    if !problems.is_empty() {
        return Err(HistoryError::Invalid(problems));
    }
    events.extend(changes);
    Ok(History::build(events, read, options.max_gap))
}

fn classify(name: &str) -> Option<Input> {
    let lower = name.to_ascii_lowercase();
    if lower.starts_with("changes") && lower.ends_with(".jsonl") {
        return Some(Input::Changes);
    }
    let feed = if lower.starts_with("stock") {
        Feed::Stock
    } else if lower.starts_with("product") {
        Feed::Products
    } else {
        return None;
    };
    let format = if lower.ends_with(".json") {
        Format::Json
    } else if lower.ends_with(".csv") {
        Format::Csv
    } else {
        return None;
    };
    Some(Input::Erp(feed, format))
}

fn read_stock(
    name: &str,
    format: Format,
    raw: &[u8],
    now: DateTime<Utc>,
    limits: &Limits,
    problems: &mut Vec<Problem>,
) -> Option<(Option<DateTime<Utc>>, Vec<StockItem>)> {
    let mut received_at = None;
    let (updates, positions) = match format {
        Format::Json => {
            let (stamp, batch) = parse_json(
                name,
                Feed::Stock,
                raw,
                problems,
                payload::parse::<StockBatch>,
            )?;
            received_at = stamp;
            (batch.updates, Positions::Items)
        }
        Format::Csv => {
            let (rows, lines) = parse_csv::<RawStock>(name, Feed::Stock, raw, problems, |b| {
                payload::parse::<StockBatch>(b).map(|mut batch| batch.updates.pop())
            })?;
            (rows, Positions::Lines(lines))
        }
    };
    match validate::stock(&updates, now, limits) {
        Ok(items) => Some((received_at, items)),
        Err(violations) => {
            report_violations(name, Feed::Stock, &positions, violations, problems);
            None
        }
    }
}

fn read_products(
    name: &str,
    format: Format,
    raw: &[u8],
    now: DateTime<Utc>,
    limits: &Limits,
    problems: &mut Vec<Problem>,
) -> Option<(Option<DateTime<Utc>>, Vec<ProductItem>)> {
    let mut received_at = None;
    let (rows, positions) = match format {
        Format::Json => {
            let (stamp, batch) = parse_json(
                name,
                Feed::Products,
                raw,
                problems,
                payload::parse::<ProductBatch>,
            )?;
            received_at = stamp;
            (batch.products, Positions::Items)
        }
        Format::Csv => {
            let (rows, lines) =
                parse_csv::<RawProduct>(name, Feed::Products, raw, problems, |b| {
                    payload::parse::<ProductBatch>(b).map(|mut batch| batch.products.pop())
                })?;
            (rows, Positions::Lines(lines))
        }
    };
    match validate::products(&rows, now, limits) {
        Ok(items) => Some((received_at, items)),
        Err(violations) => {
            report_violations(name, Feed::Products, &positions, violations, problems);
            None
        }
    }
}

/// A JSON file: the webhook body, or a bare array of items wrapped into one; with the
/// body's `received_at`, if it has one.
fn parse_json<T>(
    name: &str,
    feed: Feed,
    raw: &[u8],
    problems: &mut Vec<Problem>,
    parse: impl Fn(&[u8]) -> Result<T, payload::ParseError>,
) -> Option<(Option<DateTime<Utc>>, T)> {
    let first = raw.iter().find(|b| !b.is_ascii_whitespace());
    let mut received_at = None;
    let result = if first == Some(&b'[') {
        let mut wrapped = format!("{{\"{}\":", feed.items_key()).into_bytes();
        wrapped.extend_from_slice(raw);
        wrapped.push(b'}');
        parse(&wrapped)
    } else {
        match take_received_at(raw) {
            Ok(Some(stamped)) => {
                received_at = Some(stamped.received_at);
                parse(&stamped.body)
            }
            Ok(None) => parse(raw),
            Err(problem) => {
                problems.push(Problem {
                    file: name.to_owned(),
                    location: Location::File,
                    field: Some(RECEIVED_AT.into()),
                    problem,
                });
                return None;
            }
        }
    };
    match result {
        Ok(batch) => Some((received_at, batch)),
        Err(e) => {
            let (location, field) = match locate(&e.message, feed) {
                Some((i, field)) => (Location::Item(i), field),
                None => (Location::File, None),
            };
            problems.push(Problem {
                file: name.to_owned(),
                location,
                field,
                problem: e.message,
            });
            None
        }
    }
}

/// The top-level member of a history JSON file that carries ingest's receipt time.
pub const RECEIVED_AT: &str = "received_at";

/// Splits a body's `received_at` from the webhook body: the instant and the body without
/// it. `Ok(None)` when the body has none (or is not a JSON object: the webhook parser
/// reports that).
fn take_received_at(raw: &[u8]) -> Result<Option<Stamped>, String> {
    // Only a body that mentions the member is parsed twice.
    if !raw
        .windows(RECEIVED_AT.len())
        .any(|w| w == RECEIVED_AT.as_bytes())
    {
        return Ok(None);
    }
    let Ok(serde_json::Value::Object(mut body)) = serde_json::from_slice(raw) else {
        return Ok(None);
    };
    let Some(value) = body.remove(RECEIVED_AT) else {
        return Ok(None);
    };
    let text = value
        .as_str()
        .ok_or_else(|| format!("must be an RFC 3339 time as text, got {value}"))?;
    let stamp = DateTime::parse_from_rfc3339(text)
        .map_err(|e| format!("must be an RFC 3339 time ({text:?}): {e}"))?
        .with_timezone(&Utc);
    let rest = serde_json::to_vec(&body).map_err(|e| e.to_string())?;
    Ok(Some(Stamped {
        received_at: stamp,
        body: rest,
    }))
}

/// A webhook body and the `received_at` taken out of it.
struct Stamped {
    received_at: DateTime<Utc>,
    body: Vec<u8>,
}

/// A changes file: one override or incentive event per line; blank lines are skipped.
fn read_changes(name: &str, raw: &[u8], problems: &mut Vec<Problem>) -> Vec<Event> {
    let mut events = Vec::new();
    for (n, line) in raw.split(|b| *b == b'\n').enumerate() {
        if line.iter().all(u8::is_ascii_whitespace) {
            continue;
        }
        let mut problem = |field: Option<String>, problem: String| {
            problems.push(Problem {
                file: name.to_owned(),
                location: Location::Line(n as u64 + 1),
                field,
                problem,
            })
        };
        let mut de = serde_json::Deserializer::from_slice(line);
        let event: Event = match serde_path_to_error::deserialize(&mut de) {
            Ok(event) => event,
            Err(e) => {
                let path = e.path().to_string();
                let field = (path != "." && !path.is_empty()).then_some(path);
                problem(field, e.into_inner().to_string());
                continue;
            }
        };
        match &event {
            Event::OverrideSet { value, .. } => {
                if let Err(e) = value.validate() {
                    let text = e.to_string();
                    let (field, text) = match text.split_once(": ") {
                        Some((f, t)) => (Some(format!("override.{f}")), t.to_owned()),
                        None => (None, text),
                    };
                    problem(field, text);
                    continue;
                }
            }
            Event::OverrideCleared { .. }
            | Event::IncentiveOpened { .. }
            | Event::IncentiveChanged { .. }
            | Event::IncentiveClosed { .. } => {}
            Event::StockObserved { .. } | Event::ProductUpserted { .. } | Event::Tick { .. } => {
                problem(
                    Some("type".into()),
                    "a changes file holds overrides and incentives; stock and products go in stock-… and products-… files"
                        .into(),
                );
                continue;
            }
        }
        events.push(event);
    }
    events
}

/// A CSV file: each row becomes the JSON item `ratemesh stock push` would send, parsed by
/// the webhook's parser as a one-item batch so a problem points at its line.
fn parse_csv<T>(
    name: &str,
    feed: Feed,
    raw: &[u8],
    problems: &mut Vec<Problem>,
    parse_one: impl Fn(&[u8]) -> Result<Option<T>, payload::ParseError>,
) -> Option<(Vec<T>, Vec<u64>)> {
    let before = problems.len();
    let mut items = Vec::new();
    let mut lines = Vec::new();
    for row in csv_items(feed, raw) {
        let row = match row {
            Ok(row) => row,
            Err(e) => {
                problems.push(Problem {
                    file: name.to_owned(),
                    location: Location::Line(e.line),
                    field: e.field,
                    problem: e.problem,
                });
                continue;
            }
        };
        let body = serde_json::json!({ feed.items_key(): [row.item] }).to_string();
        match parse_one(body.as_bytes()) {
            Ok(Some(parsed)) => {
                items.push(parsed);
                lines.push(row.line);
            }
            Ok(None) => {}
            Err(e) => {
                let field = locate(&e.message, feed).and_then(|(_, f)| f);
                // The position inside the one-item body means nothing to the reader.
                let problem = e
                    .message
                    .split_once("): ")
                    .map_or(e.message.as_str(), |(_, p)| p)
                    .to_owned();
                problems.push(Problem {
                    file: name.to_owned(),
                    location: Location::Line(row.line),
                    field,
                    problem,
                });
            }
        }
    }
    (problems.len() == before).then_some((items, lines))
}

fn report_violations(
    name: &str,
    feed: Feed,
    positions: &Positions,
    violations: Vec<FieldViolation>,
    problems: &mut Vec<Problem>,
) {
    for v in violations {
        let (location, field) = match locate(&v.field, feed) {
            Some((i, field)) => (positions.of(i), field),
            None => (Location::File, Some(v.field.clone())),
        };
        problems.push(Problem {
            file: name.to_owned(),
            location,
            field,
            problem: v.description,
        });
    }
}

/// The item index and field in a path such as `updates[3].on_hand`, wherever it appears
/// in `text`.
fn locate(text: &str, feed: Feed) -> Option<(usize, Option<String>)> {
    let prefix = format!("{}[", feed.items_key());
    let start = text.find(&prefix)? + prefix.len();
    let rest = &text[start..];
    let close = rest.find(']')?;
    let index = rest[..close].parse().ok()?;
    let field = rest[close + 1..].strip_prefix('.').map(|f| {
        f.split(|c: char| c.is_whitespace() || c == ':' || c == '(')
            .next()
            .unwrap_or(f)
            .to_owned()
    });
    Some((index, field.filter(|f| !f.is_empty())))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn paths_locate_item_and_field() {
        assert_eq!(
            locate("updates[3].on_hand", Feed::Stock),
            Some((3, Some("on_hand".into())))
        );
        assert_eq!(
            locate(
                "malformed JSON at products[12].price (line 1 column 9): x",
                Feed::Products
            ),
            Some((12, Some("price".into())))
        );
        assert_eq!(
            locate(
                "malformed JSON at updates[0] (line 1): unknown",
                Feed::Stock
            ),
            Some((0, None))
        );
        assert_eq!(locate("updates: must hold one", Feed::Stock), None);
    }

    #[test]
    fn json_arrays_and_csv_load_and_undated_products_date_from_the_first_push() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(
            dir.path().join("products.json"),
            r#"[{"sku":"A-1","category":"Home","price":"20.00","unit_cost":8}]"#,
        )
        .unwrap();
        std::fs::write(
            dir.path().join("stock-1.csv"),
            "sku,location,on_hand,reserved,as_of,sequence\n\
             A-1,dc-1,10,2,2025-11-01T00:00:00Z,1\n\
             A-1,dc-2,5,,2025-11-01T00:05:00Z,1\n",
        )
        .unwrap();
        std::fs::write(
            dir.path().join("stock-2.json"),
            r#"{"updates":[{"sku":"A-1","location":"dc-1","on_hand":7,"as_of":"2025-11-01T06:00:00Z","sequence":2}]}"#,
        )
        .unwrap();
        let now = DateTime::parse_from_rfc3339("2026-01-01T00:00:00Z")
            .unwrap()
            .with_timezone(&Utc);
        let history = load_history(
            dir.path(),
            &HistoryOptions {
                max_gap: TimeDelta::days(1),
                now,
            },
        )
        .expect("valid history");
        let first = DateTime::parse_from_rfc3339("2025-11-01T00:05:00Z")
            .unwrap()
            .with_timezone(&Utc);
        // Both readings of the first push are priced at its latest count, like one batch.
        let stamps: Vec<_> = history
            .events()
            .iter()
            .map(|e| (matches!(e, Event::ProductUpserted { .. }), e.priced_at()))
            .collect();
        assert!(stamps.contains(&(true, first)), "{stamps:?}");
        assert_eq!(stamps.iter().filter(|(_, t)| *t == first).count(), 3);
        let summary = history.summary();
        assert_eq!(
            (
                summary.files,
                summary.stock_readings,
                summary.products,
                summary.skus
            ),
            (3, 3, 1, 1)
        );
        let category = history.events().iter().find_map(|e| match e {
            Event::ProductUpserted { product, .. } => Some(product.category.clone()),
            _ => None,
        });
        assert_eq!(
            category.as_deref(),
            Some("home"),
            "ingest lower-cases categories"
        );
    }

    #[test]
    fn a_wrong_csv_header_is_reported_per_line_and_the_message_stays_short() {
        let dir = tempfile::tempdir().unwrap();
        let mut csv = String::from("sku,onhand,as_of,sequence\n");
        for n in 1..=80 {
            csv.push_str(&format!("A-1,{n},2025-11-01T00:00:00Z,{n}\n"));
        }
        std::fs::write(dir.path().join("stock-1.csv"), csv).unwrap();
        let err = load_history(dir.path(), &HistoryOptions::default()).unwrap_err();
        let HistoryError::Invalid(problems) = &err else {
            panic!("{err}");
        };
        assert_eq!(problems.len(), 80);
        assert_eq!(problems[0].location, Location::Line(2));
        assert!(problems[0].problem.contains("onhand"), "{}", problems[0]);
        let message = err.to_string();
        assert!(message.contains("and 30 more problems"), "{message}");
        assert!(!message.contains("line 60"), "{message}");
    }

    #[test]
    fn files_are_classified_by_name() {
        assert_eq!(
            classify("stock-0001.csv"),
            Some(Input::Erp(Feed::Stock, Format::Csv))
        );
        assert_eq!(
            classify("Products.JSON"),
            Some(Input::Erp(Feed::Products, Format::Json))
        );
        assert_eq!(classify("changes.jsonl"), Some(Input::Changes));
        assert_eq!(classify("notes.txt"), None);
        assert_eq!(classify("stock.txt"), None);
    }
}
