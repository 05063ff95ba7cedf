//! History from the input archive ([`ratemesh_archive`]): a time range, narrowed to some
//! SKUs or a category, read as the events the live services consumed — priced at
//! ingest's own `received_at` — for `ratemesh whatif --since` and, through [`export`],
//! written as history files for `ratemesh history export`. Both go through [`select`], so
//! an exported directory replays to the same report as the range read directly.
//!
//! Days in the range without archived stock are reported as gaps, never bridged.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};

use chrono::{DateTime, NaiveDate, SecondsFormat, TimeDelta, Utc};
use prost::Message as _;
use ratemesh_archive::{Archived, ReadError};
use ratemesh_contract::kinds::PRODUCT_CHANGED;
use ratemesh_core::{Event, OverrideScope};
use ratemesh_proto::v1;
use serde_json::{Value, json};

use crate::history::{History, RECEIVED_AT, names};

/// The part of the archive wanted.
#[derive(Debug, Clone)]
pub struct Range {
    /// Start, inclusive.
    pub since: DateTime<Utc>,
    /// End, exclusive.
    pub until: DateTime<Utc>,
    /// Today: later days are not expected in the archive yet.
    pub today: NaiveDate,
}

/// Which SKUs: all when both are empty; else the SKUs listed and those of the category
/// (by their product records), with the category overrides that apply to them.
#[derive(Debug, Clone, Default)]
pub struct Selection {
    /// SKUs by name.
    pub skus: BTreeSet<String>,
    /// A category, compared as ingest stores it (lower case).
    pub category: Option<String>,
}

impl Selection {
    fn is_all(&self) -> bool {
        self.skus.is_empty() && self.category.is_none()
    }
}

/// The selected events and what the archive lacks.
#[derive(Debug, Clone, Default)]
pub struct Selected {
    /// The events, in time order.
    pub events: Vec<Archived>,
    /// Days of the range without archived stock.
    pub missing_days: Vec<NaiveDate>,
    /// Day files read.
    pub files: usize,
    /// Records of redelivered entries dropped.
    pub duplicates: usize,
    /// Day files ending in a torn append (skipped; its entries were written again).
    pub torn_files: Vec<String>,
}

/// Reads `range` of the archive in `dir` and keeps what `selection` asks for.
pub fn select(dir: &Path, range: &Range, selection: &Selection) -> Result<Selected, ReadError> {
    select_within(dir, range, selection, usize::MAX)
}

/// [`select`], refusing with [`ReadError::TooMany`] once the archive read holds more
/// than `limit` events (before `selection` narrows them: what bounds memory is what is
/// read).
pub fn select_within(
    dir: &Path,
    range: &Range,
    selection: &Selection,
    limit: usize,
) -> Result<Selected, ReadError> {
    let extract =
        ratemesh_archive::read_range_within(dir, range.since, range.until, range.today, limit)?;
    let events = if selection.is_all() {
        extract.events
    } else {
        narrow(extract.events, selection)
    };
    Ok(Selected {
        events,
        missing_days: extract.missing_days,
        files: extract.files,
        duplicates: extract.duplicates,
        torn_files: extract.torn_files,
    })
}

fn narrow(events: Vec<Archived>, selection: &Selection) -> Vec<Archived> {
    let category = selection.category.as_deref().map(str::to_lowercase);
    let mut skus: BTreeSet<String> = selection.skus.clone();
    let mut categories: BTreeSet<String> = category.iter().cloned().collect();
    for a in &events {
        if let Event::ProductUpserted { sku, product, .. } = &a.event {
            if category.as_deref() == Some(product.category.as_str()) {
                skus.insert(sku.to_string());
            }
            // A listed SKU's category overrides apply to it.
            if selection.skus.contains(sku.as_str()) {
                categories.insert(product.category.clone());
            }
        }
    }
    events
        .into_iter()
        .filter(|a| match (&a.event, a.event.sku()) {
            (_, Some(sku)) => skus.contains(sku.as_str()),
            (Event::OverrideSet { value, .. }, None) => in_categories(&value.scope, &categories),
            (Event::OverrideCleared { scope, .. }, None) => in_categories(scope, &categories),
            _ => false,
        })
        .collect()
}

fn in_categories(scope: &OverrideScope, categories: &BTreeSet<String>) -> bool {
    match scope {
        OverrideScope::Category(c) => categories.contains(&c.to_lowercase()),
        OverrideScope::Sku(_) => false,
    }
}

/// The selected events as a history to replay, with the missing days as gaps.
pub fn history(selected: &Selected, max_gap: TimeDelta) -> History {
    let events = selected.events.iter().map(|a| a.event.clone()).collect();
    History::from_events(events, max_gap).with_missing_days(&selected.missing_days)
}

/// What [`export`] wrote.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Exported {
    /// Stock files (one per push).
    pub stock_files: usize,
    /// Products files (one per push).
    pub product_files: usize,
    /// Override and incentive changes in the changes file.
    pub changes: usize,
    /// Events written.
    pub events: usize,
}

/// Why an export stopped.
#[derive(Debug, thiserror::Error)]
pub enum ExportError {
    /// The output directory already holds files: an export does not mix with other
    /// history.
    #[error("{} is not empty: export into a new or empty directory", .0.display())]
    NotEmpty(PathBuf),
    /// Writing failed.
    #[error("cannot write {}: {source}", path.display())]
    Io {
        /// The file or directory.
        path: PathBuf,
        /// Why.
        source: std::io::Error,
    },
}

/// Writes `events` into `out` as history files: one `stock-NNNNNN.json` or
/// `products-NNNNNN.json` per push (the events ingest accepted at one instant), with the
/// push's `received_at`, in the webhook formats; overrides and incentives in
/// `changes.jsonl`. `out` is created if missing and must be empty.
pub fn export(events: &[Archived], out: &Path) -> Result<Exported, ExportError> {
    let io = |path: &Path| {
        let path = path.to_owned();
        move |source| ExportError::Io { path, source }
    };
    std::fs::create_dir_all(out).map_err(io(out))?;
    if std::fs::read_dir(out).map_err(io(out))?.next().is_some() {
        return Err(ExportError::NotEmpty(out.to_owned()));
    }
    let mut exported = Exported::default();
    let mut stock: Vec<(DateTime<Utc>, Vec<Value>)> = Vec::new();
    let mut products: Vec<(DateTime<Utc>, Vec<Value>)> = Vec::new();
    let mut changes = String::new();
    for a in events {
        let at = a.record.at;
        let push =
            |pushes: &mut Vec<(DateTime<Utc>, Vec<Value>)>, item: Value| match pushes.last_mut() {
                Some((t, items)) if *t == at => items.push(item),
                _ => pushes.push((at, vec![item])),
            };
        match &a.event {
            Event::StockObserved { .. } => push(&mut stock, stock_item(&a.event)),
            Event::ProductUpserted { .. } => push(&mut products, product_item(a)),
            event => {
                // Core events serialise without fail; a line that did not would be left
                // out of the count below.
                if let Ok(line) = serde_json::to_string(event) {
                    changes.push_str(&line);
                    changes.push('\n');
                    exported.changes += 1;
                }
            }
        }
        exported.events += 1;
    }
    let write = |name: String, body: Vec<u8>| {
        let path = out.join(name);
        std::fs::write(&path, body).map_err(io(&path))
    };
    for (n, (at, items)) in stock.into_iter().enumerate() {
        write(names::stock(n + 1), body("updates", at, items))?;
        exported.stock_files += 1;
    }
    for (n, (at, items)) in products.into_iter().enumerate() {
        write(names::products(n + 1), body("products", at, items))?;
        exported.product_files += 1;
    }
    if exported.changes > 0 {
        write(names::CHANGES.to_owned(), changes.into_bytes())?;
    }
    Ok(exported)
}

fn time(t: DateTime<Utc>) -> String {
    t.to_rfc3339_opts(SecondsFormat::AutoSi, true)
}

fn body(key: &str, at: DateTime<Utc>, items: Vec<Value>) -> Vec<u8> {
    let mut body = serde_json::Map::new();
    body.insert(RECEIVED_AT.to_owned(), Value::String(time(at)));
    body.insert(key.to_owned(), Value::Array(items));
    let mut text = serde_json::to_vec_pretty(&Value::Object(body)).unwrap_or_default();
    text.push(b'\n');
    text
}

/// A stock reading as the `/v1/stock` webhook takes it.
fn stock_item(event: &Event) -> Value {
    let Event::StockObserved {
        sku,
        location,
        on_hand,
        reserved,
        sequence,
        as_of,
        erp_velocity,
        ..
    } = event
    else {
        return Value::Null;
    };
    let mut item = json!({
        "sku": sku.as_str(),
        "on_hand": on_hand.to_string(),
        "reserved": reserved.to_string(),
        "as_of": time(*as_of),
        "sequence": sequence,
    });
    if !location.is_empty() {
        item["location"] = json!(location);
    }
    if let Some(v) = erp_velocity {
        item["velocity"] = json!(v.to_string());
    }
    item
}

/// A product as the `/v1/products` webhook takes it. The product's time is its `as_of`,
/// so it is ordered as the live service ordered it; currency and title come from the
/// entry itself, which the core event does not carry.
fn product_item(a: &Archived) -> Value {
    let Event::ProductUpserted {
        sku, product, at, ..
    } = &a.event
    else {
        return Value::Null;
    };
    let mut item = json!({
        "sku": sku.as_str(),
        "category": product.category,
        "price": product.price.to_string(),
        "unit_cost": product.unit_cost.to_string(),
        "as_of": time(*at),
    });
    if let Some(rate) = product.base_rate {
        item["base_rate"] = json!(rate.to_string());
    }
    let entry = (a.record.kind == PRODUCT_CHANGED)
        .then(|| a.record.payload().ok())
        .flatten()
        .and_then(|payload| v1::ProductChanged::decode(payload).ok())
        .and_then(|m| m.product);
    if let Some(p) = entry {
        if !p.currency.is_empty() {
            item["currency"] = json!(p.currency);
        }
        if let Some(title) = p.title.filter(|t| !t.is_empty()) {
            item["title"] = json!(title);
        }
    }
    item
}
