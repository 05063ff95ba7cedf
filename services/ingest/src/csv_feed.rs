//! A CSV feed as the webhooks' JSON items: a header row names the fields, each row is one
//! item. Empty cells are absent fields; a cell for a field the body takes as a whole
//! number ([`Feed::whole_number_fields`]) must be one and becomes a JSON number; every
//! other cell is sent as text, which the body accepts for its decimals too.
//!
//! Rows are converted, not validated: the items still go through [`crate::payload`] and
//! [`crate::validate`] like any body.

use std::fmt;

use serde_json::{Map, Value};

use crate::payload::Feed;

/// One CSV row as a JSON item.
#[derive(Debug, Clone, PartialEq)]
pub struct CsvItem {
    /// The row's line in the file, 1-based, counting the header as line 1.
    pub line: u64,
    /// The item, one entry per non-empty cell.
    pub item: Map<String, Value>,
}

/// A row (or the header) that could not be converted.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CsvProblem {
    /// The line in the file, 1-based.
    pub line: u64,
    /// The column at fault, when one is.
    pub field: Option<String>,
    /// What is wrong.
    pub problem: String,
}

impl fmt::Display for CsvProblem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "line {}", self.line)?;
        if let Some(field) = &self.field {
            write!(f, " field {field}")?;
        }
        write!(f, ": {}", self.problem)
    }
}

impl std::error::Error for CsvProblem {}

/// Every row of a CSV feed, in file order, each as an item or the problem with it. An
/// unreadable header is one problem at line 1 and nothing else.
pub fn csv_items(feed: Feed, raw: &[u8]) -> Vec<Result<CsvItem, CsvProblem>> {
    let mut reader = csv::ReaderBuilder::new()
        .trim(csv::Trim::All)
        .from_reader(raw);
    let headers = match reader.headers() {
        Ok(headers) => headers.clone(),
        Err(e) => {
            return vec![Err(CsvProblem {
                line: 1,
                field: None,
                problem: format!("unreadable CSV header: {e}"),
            })];
        }
    };
    reader
        .records()
        .map(|record| {
            let record = record.map_err(|e| CsvProblem {
                line: e.position().map_or(0, csv::Position::line),
                field: None,
                problem: format!("unreadable CSV row: {e}"),
            })?;
            let line = record.position().map_or(0, csv::Position::line);
            let mut item = Map::new();
            for (column, cell) in headers.iter().zip(record.iter()) {
                if cell.is_empty() {
                    continue;
                }
                let value = if feed.whole_number_fields().contains(&column) {
                    let number = cell.parse::<u64>().map_err(|_| CsvProblem {
                        line,
                        field: Some(column.to_owned()),
                        problem: format!("{cell:?} is not a whole number"),
                    })?;
                    Value::from(number)
                } else {
                    Value::String(cell.to_owned())
                };
                item.insert(column.to_owned(), value);
            }
            Ok(CsvItem { line, item })
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::payload::{self, StockBatch};

    #[test]
    fn rows_become_items_with_numbers_where_the_body_wants_them() {
        let raw = b"sku,location,on_hand,as_of,sequence\nA-1,dc-1,12,2026-11-27T05:00:00Z,7\nB-2,,0,2026-11-27T05:00:00Z,8\n";
        let rows = csv_items(Feed::Stock, raw);
        let items: Vec<CsvItem> = rows.into_iter().map(|r| r.expect("row")).collect();
        assert_eq!(items.iter().map(|i| i.line).collect::<Vec<_>>(), vec![2, 3]);
        assert_eq!(items[0].item["sequence"], 7);
        assert_eq!(items[0].item["on_hand"], "12");
        assert!(!items[1].item.contains_key("location"));
        let body = serde_json::json!({ "updates": [items[0].item] }).to_string();
        let batch: StockBatch = payload::parse(body.as_bytes()).expect("the webhook parses it");
        assert_eq!(batch.updates[0].on_hand, "12");
    }

    #[test]
    fn a_bad_whole_number_names_line_and_field_and_other_rows_still_convert() {
        let raw = b"sku,on_hand,as_of,sequence\nA-1,1,2026-11-27T05:00:00Z,seven\nA-1,2,2026-11-27T05:00:00Z,8\n";
        let rows = csv_items(Feed::Stock, raw);
        assert_eq!(rows.len(), 2);
        let problem = rows[0].clone().expect_err("bad sequence");
        assert_eq!(
            problem.to_string(),
            "line 2 field sequence: \"seven\" is not a whole number"
        );
        assert_eq!(rows[1].as_ref().map(|i| i.line), Ok(3));
    }

    #[test]
    fn product_cells_are_all_text() {
        let rows = csv_items(Feed::Products, b"sku,price,sequence\nA-1,20,x\n");
        let item = rows[0].clone().expect("row").item;
        assert_eq!(item["sequence"], "x");
        assert_eq!(item["price"], "20");
    }
}
