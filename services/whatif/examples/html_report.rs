//! Runs a what-if over a history directory and writes the HTML report:
//!
//! ```text
//! cargo run --release -p ratemesh-whatif --example html_report -- \
//!     services/whatif/sample/history services/whatif/sample/candidate.toml \
//!     services/whatif/sample/report.html [--baseline FILE] [--elasticity 0.5]
//! ```
//!
//! The baseline is the example policy unless `--baseline` names a file. The shipped
//! `sample/report.html` is this command's output with `--elasticity 0.5`.

use std::path::PathBuf;

use ratemesh_whatif::{HistoryOptions, WhatIfOptions, load_history, load_policy, render_html, run};

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let mut args = std::env::args().skip(1);
    let mut positional = Vec::new();
    let mut baseline = None;
    let mut elasticity = None;
    while let Some(arg) = args.next() {
        match arg.as_str() {
            "--baseline" => baseline = args.next().map(PathBuf::from),
            "--elasticity" => {
                elasticity = Some(args.next().ok_or("--elasticity needs a value")?.parse()?)
            }
            _ => positional.push(PathBuf::from(arg)),
        }
    }
    let [history_dir, candidate, out] = positional.as_slice() else {
        return Err(
            "usage: html_report HISTORY_DIR CANDIDATE.toml OUT.html [--baseline FILE] [--elasticity X]"
                .into(),
        );
    };
    let history = load_history(history_dir, &HistoryOptions::default())?;
    let baseline = match baseline {
        Some(path) => load_policy(&path)?,
        None => ratemesh_core::Policy::example(),
    };
    let candidate = load_policy(candidate)?;
    let report = run(
        &history,
        &baseline,
        &candidate,
        &WhatIfOptions {
            elasticity,
            ..WhatIfOptions::default()
        },
    );
    std::fs::write(out, render_html(&report))?;
    eprintln!("wrote {}", out.display());
    Ok(())
}
