//! Plain-text tables for the client commands' human output (`--json` is for scripts).

use chrono::{DateTime, SecondsFormat};

/// Prints `rows` under `header` (see [`render`]).
pub(crate) fn print(header: &[&str], rows: &[Vec<String>], empty: &str) {
    print!("{}", render(header, rows, empty));
}

/// `rows` under `header`, each column as wide as its widest cell, so every column starts
/// at the same place on every line; `empty` when there are no rows.
pub(crate) fn render(header: &[&str], rows: &[Vec<String>], empty: &str) -> String {
    let mut widths: Vec<usize> = header.iter().map(|h| h.chars().count()).collect();
    for row in rows {
        for (w, cell) in widths.iter_mut().zip(row) {
            *w = (*w).max(cell.chars().count());
        }
    }
    let line = |cells: &mut dyn Iterator<Item = &str>| {
        let padded: Vec<String> = cells
            .zip(&widths)
            .map(|(c, w)| format!("{c:<w$}"))
            .collect();
        format!("{}\n", padded.join("  ").trim_end())
    };
    let mut out = line(&mut header.iter().copied());
    for row in rows {
        out.push_str(&line(&mut row.iter().map(String::as_str)));
    }
    if rows.is_empty() {
        out.push_str(empty);
        out.push('\n');
    }
    out
}

/// A timestamp for people: RFC 3339 in UTC to the second (`2026-11-27T05:00:00Z`); the
/// nanoseconds a timestamp carries only widen a table.
pub(crate) fn timestamp(t: &prost_types::Timestamp) -> String {
    DateTime::from_timestamp(t.seconds, u32::try_from(t.nanos).unwrap_or(0))
        .map(|t| t.to_rfc3339_opts(SecondsFormat::Secs, true))
        .unwrap_or_default()
}

/// [`timestamp`] of an optional one, empty when absent.
pub(crate) fn maybe_timestamp(t: Option<&prost_types::Timestamp>) -> String {
    t.map(timestamp).unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn columns_line_up_whatever_the_cell_widths() {
        let rows = vec![
            vec!["A".to_owned(), "deep-overstock".to_owned(), "#1".to_owned()],
            vec!["LONGER-SKU".to_owned(), "low".to_owned(), "#2".to_owned()],
        ];
        let text = render(&["SKU", "BAND", "#"], &rows, "(none)");
        let starts: Vec<usize> = text
            .lines()
            .map(|l| l.find('#').expect("third column"))
            .collect();
        assert_eq!(starts, vec![starts[0]; 3], "{text}");
    }

    #[test]
    fn timestamps_print_to_the_second() {
        let t = prost_types::Timestamp {
            seconds: 1_796_029_200,
            nanos: 123_456_789,
        };
        assert_eq!(timestamp(&t), "2026-11-30T09:00:00Z");
    }
}
