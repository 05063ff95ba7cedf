//! History from the input archive: a range read directly and the same range exported as
//! history files replay to the same report; `--sku` and `--category` narrow an export to
//! their SKUs and the overrides that apply to them; a missing day is a gap; a bad record
//! names its file and line.

use std::collections::BTreeSet;
use std::path::Path;

use chrono::{DateTime, NaiveDate, TimeDelta, Utc};
use ratemesh_archive::{Record, segment};
use ratemesh_bus::{Delivery, EntryId};
use ratemesh_contract::overrides::{override_changed, override_to_proto};
use ratemesh_contract::stock::{
    Origin, ProductRecord, StockReading, product_changed, stock_changed,
};
use ratemesh_contract::streams;
use ratemesh_core::{
    Event, Override, OverrideKind, OverrideScope, Policy, Product, Quantity, Rate, Sku,
};
use ratemesh_proto::v1;
use ratemesh_whatif::archive::{self, Range, Selection};
use ratemesh_whatif::{HistoryOptions, WhatIfOptions, load_history};
use rust_decimal::Decimal;

fn at(s: &str) -> DateTime<Utc> {
    DateTime::parse_from_rfc3339(s).unwrap().with_timezone(&Utc)
}

fn day(s: &str) -> NaiveDate {
    NaiveDate::parse_from_str(s, "%Y-%m-%d").unwrap()
}

/// Files stream entries as the archiver does, with ids in publish order.
struct Archive<'a> {
    dir: &'a Path,
    next: u64,
}

impl Archive<'_> {
    fn put(&mut self, stream: &str, event: ratemesh_bus::Event) {
        self.next += 1;
        let delivery = Delivery {
            stream: stream.into(),
            partition: 0,
            id: EntryId::new(self.next, 0),
            key: event.key.clone(),
            kind: event.kind.clone(),
            payload: event.payload.clone(),
            traceparent: None,
            delivery_count: 1,
        };
        let record = Record::of(&delivery).unwrap().expect("an archived kind");
        segment::append(self.dir, "w", &[record]).unwrap();
    }
}

const SKUS: [(&str, &str, &str); 3] = [
    ("A-1", "home", "40"),
    ("B-2", "home", "25"),
    ("C-3", "garden", "60"),
];

/// Three days of a small catalogue, its amounts as ingest's validation leaves them: products the day before, stock every four hours
/// selling down, a pin on the home category and one on C-3, and (when `skip` names it) a
/// day with nothing archived.
fn season(dir: &Path, skip: Option<&str>) {
    let mut archive = Archive { dir, next: 0 };
    let origin = |received_at| Origin {
        source: "erp-main",
        batch_id: "b",
        received_at,
    };
    for (sku, category, price) in SKUS {
        let mut record = ProductRecord::new(
            Sku::new(sku).unwrap(),
            Product {
                category: category.into(),
                price: price.parse().unwrap(),
                unit_cost: "10".parse().unwrap(),
                base_rate: None,
            },
            "EUR",
        );
        record.title = Some(format!("{sku} title"));
        archive.put(
            streams::STOCK,
            product_changed(&record, origin(at("2025-11-26T09:00:00Z"))),
        );
    }
    let start = at("2025-11-27T00:00:00Z");
    for step in 0..18 {
        let received = start + TimeDelta::hours(4 * step);
        if skip == Some(&received.date_naive().to_string()) {
            continue;
        }
        for (n, (sku, _, _)) in SKUS.iter().enumerate() {
            let on_hand = 400 - step * (3 + n as i64 * 5);
            let mut reading = StockReading::new(
                Sku::new(*sku).unwrap(),
                Quantity::new(Decimal::from(on_hand)).unwrap(),
                received - TimeDelta::minutes(2),
                step as u64 + 1,
            );
            reading.location = if n == 1 { "dc-2".into() } else { String::new() };
            archive.put(streams::STOCK, stock_changed(&reading, origin(received)));
        }
        if step == 6 {
            for (id, scope, rate) in [
                ("ov-home", OverrideScope::Category("home".into()), "0.02"),
                (
                    "ov-c3",
                    OverrideScope::Sku(Sku::new("C-3").unwrap()),
                    "0.09",
                ),
            ] {
                let pin = Override {
                    id: id.into(),
                    scope,
                    kind: OverrideKind::Pin {
                        rate: Rate::new(rate.parse().unwrap()).unwrap(),
                    },
                    starts_at: received,
                    ends_at: Some(received + TimeDelta::hours(30)),
                    reason: "bfcm".into(),
                    author: "merch".into(),
                };
                archive.put(
                    streams::OVERRIDES,
                    override_changed(
                        v1::OverrideAction::Set,
                        None,
                        override_to_proto(&pin),
                        "merch",
                        "bfcm",
                        received + TimeDelta::seconds(1),
                    ),
                );
            }
        }
    }
}

fn range() -> Range {
    Range {
        since: at("2025-11-27T00:00:00Z"),
        until: at("2025-11-30T00:00:00Z"),
        today: day("2026-01-01"),
    }
}

fn options() -> HistoryOptions {
    HistoryOptions {
        max_gap: TimeDelta::days(1),
        now: at("2026-01-01T00:00:00Z"),
    }
}

fn candidate() -> Policy {
    ratemesh_whatif::load_policy(Path::new(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/sample/candidate.toml"
    )))
    .unwrap()
}

/// The report as JSON, without the count of files read (day files or history files).
fn report_json(history: &ratemesh_whatif::History) -> serde_json::Value {
    let report = ratemesh_whatif::run(
        history,
        &Policy::example(),
        &candidate(),
        &WhatIfOptions {
            threads: 1,
            ..WhatIfOptions::default()
        },
    );
    let mut json = serde_json::to_value(&report).unwrap();
    json["history"]
        .as_object_mut()
        .unwrap()
        .remove("files")
        .expect("the summary counts files");
    json
}

#[test]
fn an_exported_range_replays_to_the_report_of_the_range_read_directly() {
    let dir = tempfile::tempdir().unwrap();
    season(dir.path(), None);
    let selected = archive::select(dir.path(), &range(), &Selection::default()).unwrap();
    assert!(
        selected.missing_days.is_empty(),
        "{:?}",
        selected.missing_days
    );
    let direct = archive::history(&selected, TimeDelta::days(1));
    // 3 products carried in from the day before, 54 readings, 2 overrides.
    assert_eq!(direct.events().len(), 3 + 54 + 2);

    let out = tempfile::tempdir().unwrap();
    let exported = archive::export(&selected.events, out.path()).unwrap();
    assert_eq!(
        (
            exported.stock_files,
            exported.product_files,
            exported.changes
        ),
        (18, 1, 2)
    );
    let loaded = load_history(out.path(), &options()).unwrap();
    let mut unmatched: Vec<&Event> = loaded.events().iter().collect();
    for event in direct.events() {
        let found = unmatched.iter().position(|e| *e == event);
        assert!(found.is_some(), "the export lost or changed {event:?}");
        unmatched.swap_remove(found.unwrap_or_default());
    }
    assert!(unmatched.is_empty(), "the export added {unmatched:?}");
    let report = report_json(&direct);
    assert_eq!(report, report_json(&loaded));
    let spend: f64 = report["program"]["baseline"]["commission_spend"]
        .as_str()
        .and_then(|s| s.parse().ok())
        .expect("spend, as decimal text");
    assert!(spend > 0.0, "the season sold something: {report}");

    // The products keep what the core event does not carry.
    let products = std::fs::read_to_string(out.path().join("products-000001.json")).unwrap();
    assert!(products.contains("\"currency\": \"EUR\""), "{products}");
    assert!(products.contains("\"title\": \"A-1 title\""), "{products}");
    assert!(
        products.contains("\"received_at\": \"2025-11-26T09:00:00Z\""),
        "{products}"
    );

    // An export goes into an empty directory only.
    let err = archive::export(&selected.events, out.path()).unwrap_err();
    assert!(err.to_string().contains("is not empty"), "{err}");
}

fn skus_of(events: &[ratemesh_archive::Archived]) -> BTreeSet<String> {
    events
        .iter()
        .filter_map(|a| a.event.sku().map(|s| s.to_string()))
        .collect()
}

fn overrides_of(events: &[ratemesh_archive::Archived]) -> Vec<String> {
    events
        .iter()
        .filter_map(|a| match &a.event {
            Event::OverrideSet { value, .. } => Some(value.id.clone()),
            _ => None,
        })
        .collect()
}

#[test]
fn sku_and_category_narrow_to_their_skus_and_the_overrides_that_apply() {
    let dir = tempfile::tempdir().unwrap();
    season(dir.path(), None);
    let pick = |skus: &[&str], category: Option<&str>| {
        let selection = Selection {
            skus: skus.iter().map(|s| (*s).to_owned()).collect(),
            category: category.map(str::to_owned),
        };
        archive::select(dir.path(), &range(), &selection)
            .unwrap()
            .events
    };

    let c3 = pick(&["C-3"], None);
    assert_eq!(skus_of(&c3), BTreeSet::from(["C-3".to_owned()]));
    assert_eq!(overrides_of(&c3), ["ov-c3"]);
    assert_eq!(c3.len(), 1 + 18 + 1);

    let a1 = pick(&["A-1"], None);
    assert_eq!(skus_of(&a1), BTreeSet::from(["A-1".to_owned()]));
    assert_eq!(
        overrides_of(&a1),
        ["ov-home"],
        "its category's override applies"
    );

    let home = pick(&[], Some("Home"));
    assert_eq!(
        skus_of(&home),
        BTreeSet::from(["A-1".to_owned(), "B-2".to_owned()])
    );
    assert_eq!(overrides_of(&home), ["ov-home"]);

    let both = pick(&["C-3"], Some("home"));
    assert_eq!(skus_of(&both).len(), 3);

    // The narrowed export loads and holds only its SKUs.
    let out = tempfile::tempdir().unwrap();
    archive::export(&home, out.path()).unwrap();
    let loaded = load_history(out.path(), &options()).unwrap();
    assert_eq!(loaded.summary().skus, 2);
}

#[test]
fn a_day_without_archived_stock_is_a_gap() {
    let dir = tempfile::tempdir().unwrap();
    season(dir.path(), Some("2025-11-28"));
    let selected = archive::select(dir.path(), &range(), &Selection::default()).unwrap();
    assert_eq!(selected.missing_days, [day("2025-11-28")]);
    let history = archive::history(&selected, TimeDelta::days(2));
    let gaps = &history.summary().gaps;
    assert_eq!(gaps.len(), 1, "{gaps:?}");
    assert_eq!(gaps[0].from, at("2025-11-28T00:00:00Z"));
    assert_eq!(gaps[0].until, at("2025-11-29T00:00:00Z"));
    // With the usual allowance the pushes around it are a gap of their own, which covers
    // the day: reported once.
    let history = archive::history(&selected, TimeDelta::days(1));
    assert_eq!(
        history.summary().gaps.len(),
        1,
        "{:?}",
        history.summary().gaps
    );
    assert_eq!(history.summary().gaps[0].from, at("2025-11-27T20:00:00Z"));
}

#[test]
fn a_bad_record_names_its_file_and_line_and_nothing_is_read() {
    let dir = tempfile::tempdir().unwrap();
    season(dir.path(), None);
    let name = segment::file_name(day("2025-11-28"), "stock", "w");
    let mut bad = segment::read(&dir.path().join(&name)).unwrap().records[4]
        .1
        .clone();
    bad.payload = "not base64!".into();
    bad.id = "9999-0".into();
    segment::append(dir.path(), "w", &[bad]).unwrap();
    let err = archive::select(dir.path(), &range(), &Selection::default()).unwrap_err();
    let message = err.to_string();
    assert!(
        message.contains(&format!("{name} line 19 field payload")),
        "{message}"
    );
}

#[test]
fn a_changes_file_with_a_bad_override_names_line_and_field() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(
        dir.path().join("stock-1.json"),
        r#"{"received_at":"2025-11-27T00:00:00Z","updates":[{"sku":"A-1","on_hand":5,"as_of":"2025-11-26T23:59:00Z","sequence":1}]}"#,
    )
    .unwrap();
    std::fs::write(
        dir.path().join("changes.jsonl"),
        concat!(
            r#"{"type":"override_cleared","id":"x","scope":{"sku":"A-1"},"at":"2025-11-27T01:00:00Z"}"#,
            "\n\n",
            r#"{"type":"override_set","override":{"id":"y","scope":{"sku":"A-1"},"kind":{"kind":"pin","rate":"0.05"},"starts_at":"2025-11-28T00:00:00Z","ends_at":"2025-11-27T00:00:00Z","reason":"r","author":"a"},"at":"2025-11-27T01:00:00Z"}"#,
            "\n",
            r#"{"type":"stock_observed"}"#,
            "\n",
        ),
    )
    .unwrap();
    let err = load_history(dir.path(), &options()).unwrap_err();
    let message = err.to_string();
    assert!(
        message.contains("changes.jsonl line 3 field override.ends_at: must be after starts_at"),
        "{message}"
    );
    assert!(message.contains("changes.jsonl line 4"), "{message}");
    assert!(!message.contains("line 1"), "{message}");
}
