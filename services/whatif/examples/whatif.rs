//! Runs a what-if over a history directory and prints the table, or the JSON report with
//! `--json`:
//!
//! ```text
//! cargo run --release -p ratemesh-whatif --example whatif -- \
//!     services/whatif/sample/history services/whatif/sample/candidate.toml \
//!     [--baseline FILE] [--elasticity 0.5] [--json]
//! ```
//!
//! The baseline is the example policy unless `--baseline` names a file. `ratemesh whatif`
//! is the command for users (live baseline, `--html`, exit status 2 on bad input); this
//! example runs the library alone and times the two stages.

use std::path::PathBuf;
use std::time::Instant;

use ratemesh_whatif::{
    HistoryOptions, WhatIfOptions, load_history, load_policy, render_table, run,
};

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let mut args = std::env::args().skip(1);
    let mut positional = Vec::new();
    let mut baseline = None;
    let mut elasticity = None;
    let mut json = false;
    while let Some(arg) = args.next() {
        match arg.as_str() {
            "--json" => json = true,
            "--baseline" => baseline = args.next().map(PathBuf::from),
            "--elasticity" => {
                elasticity = Some(args.next().ok_or("--elasticity needs a value")?.parse()?)
            }
            _ => positional.push(PathBuf::from(arg)),
        }
    }
    let [history_dir, candidate] = positional.as_slice() else {
        return Err(
            "usage: whatif HISTORY_DIR CANDIDATE.toml [--baseline FILE] [--elasticity X] [--json]"
                .into(),
        );
    };
    let started = Instant::now();
    let history = load_history(history_dir, &HistoryOptions::default())?;
    let loaded = started.elapsed();
    let baseline = match baseline {
        Some(path) => load_policy(&path)?,
        None => ratemesh_core::Policy::example(),
    };
    let candidate = load_policy(candidate)?;
    let started = Instant::now();
    let report = run(
        &history,
        &baseline,
        &candidate,
        &WhatIfOptions {
            elasticity,
            ..WhatIfOptions::default()
        },
    );
    let replayed = started.elapsed();
    if json {
        println!("{}", serde_json::to_string_pretty(&report)?);
    } else {
        print!("{}", render_table(&report));
        eprintln!(
            "read {} events in {:.2?}, replayed them under both policies in {:.2?}",
            history.events().len(),
            loaded,
            replayed
        );
    }
    Ok(())
}
