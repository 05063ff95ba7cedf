//! Plain-text tables for the client commands' human output (`--json` is for scripts).

/// Prints `rows` under `header`, each column as wide as its widest cell; `empty` when there
/// are no rows.
pub(crate) fn print(header: &[&str], rows: &[Vec<String>], empty: &str) {
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
        println!("{}", padded.join("  ").trim_end());
    };
    line(&mut header.iter().copied());
    for row in rows {
        line(&mut row.iter().map(String::as_str));
    }
    if rows.is_empty() {
        println!("{empty}");
    }
}
