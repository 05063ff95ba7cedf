//! `ratemesh whatif --policy CANDIDATE.toml --history DIR|--since T [--until T]`: what a
//! candidate policy would have paid over real history, next to the baseline, before
//! anyone turns it on.
//!
//! The history is a directory of ERP pushes (`--history`), or a time range of the input
//! archive (`--since`, read as `ratemesh history export` reads it, without files in
//! between): the events the live services consumed, priced at the same instants. Days
//! the archive has no stock for are reported as gaps.
//!
//! The baseline is `live` unless `--baseline` names a file: the policy this deployment
//! runs, i.e. the `policy.file` of the loaded settings (`--config`, environment), or the
//! built-in example policy when none is set. The output says which.
//!
//! On a terminal, stderr shows what is being read, and a bar of events replayed when the
//! replay runs for more than a moment; stdout holds only the report (or the `--json`
//! document), and nothing is drawn when stderr is not a terminal.
//!
//! Bad input — a policy that does not validate (the key and the problem), a history row
//! that does not (file, line and field), a missing file — ends with exit status 2, as a
//! bad setting does; nothing is replayed.

use std::fmt;
use std::io::IsTerminal as _;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use anyhow::Context as _;
use chrono::TimeDelta;
use clap::Args;
use indicatif::{ProgressBar, ProgressStyle};
use ratemesh_core::Policy;
use ratemesh_runtime::Settings;
use ratemesh_whatif::archive::Selection;
use ratemesh_whatif::{
    Cancelled, Control, History, HistoryOptions, Phase, Progress, Report, WhatIfOptions,
};
use rust_decimal::Decimal;
use serde::Serialize;

use super::history_cmd::{self, RangeArgs};

#[derive(Debug, Args)]
pub(crate) struct WhatIfArgs {
    /// The candidate policy (TOML, as `policy.file` takes it).
    #[arg(long, value_name = "CANDIDATE.toml")]
    policy: PathBuf,
    /// The policy to compare with: `live` is this deployment's `policy.file` under the
    /// loaded settings, or the built-in example policy when none is set; anything else is
    /// a policy file.
    #[arg(long, value_name = "live|FILE", default_value = "live")]
    baseline: String,
    /// A directory of ERP pushes: `stock-….json|csv` and `products-….json|csv` files in
    /// the formats `ratemesh stock push` and `ratemesh products push` send, and
    /// `changes-….jsonl` (as `ratemesh history export` writes them).
    #[arg(
        long,
        value_name = "DIR",
        required_unless_present = "since",
        conflicts_with = "since"
    )]
    history: Option<PathBuf>,
    /// Instead of `--history`: a time range of the input archive.
    #[command(flatten)]
    range: RangeArgs,
    /// An assumed elasticity of sell-through to commission: adds an estimate of the
    /// candidate's units, spend and margin, reported apart from the observed figures.
    #[arg(long, value_name = "X")]
    elasticity: Option<Decimal>,
    /// The report as one JSON document on stdout, for scripts.
    #[arg(long)]
    json: bool,
    /// Also write the report as an HTML page with plots that opens offline.
    #[arg(long, value_name = "FILE")]
    html: Option<PathBuf>,
    /// A stretch longer than this without any stock push is reported as a gap.
    #[arg(long, value_name = "H", default_value_t = 24)]
    max_gap_hours: u32,
}

/// Where the baseline policy came from, for the output.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Baseline {
    /// `live`, with `policy.file` set.
    LiveFile(String),
    /// `live`, with no `policy.file`: the built-in example.
    LiveExample,
    /// `--baseline FILE`.
    File(PathBuf),
}

impl fmt::Display for Baseline {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Baseline::LiveFile(path) => write!(f, "live policy ({path}, from policy.file)"),
            Baseline::LiveExample => {
                f.write_str("live policy (the built-in example: policy.file is not set)")
            }
            Baseline::File(path) => write!(f, "{}", path.display()),
        }
    }
}

/// The `--json` document: the report, plus where its policies came from.
#[derive(Debug, Serialize)]
struct JsonReport<'a> {
    /// [`Baseline`] as shown in the table.
    baseline_source: String,
    /// The `--policy` file.
    candidate_source: String,
    #[serde(flatten)]
    report: &'a Report,
}

/// Why a run stopped.
enum Failure {
    /// The user's files or flags: exit status 2.
    BadInput(anyhow::Error),
    /// Anything else (settings errors carry their own status).
    Other(anyhow::Error),
}

pub(crate) fn run(
    args: &WhatIfArgs,
    settings: impl FnOnce() -> anyhow::Result<Settings>,
) -> anyhow::Result<()> {
    match execute(args, settings) {
        Ok(()) => Ok(()),
        Err(Failure::Other(err)) => Err(err),
        Err(Failure::BadInput(err)) => Err(super::BadInput(err).into()),
    }
}

fn execute(
    args: &WhatIfArgs,
    settings: impl FnOnce() -> anyhow::Result<Settings>,
) -> Result<(), Failure> {
    let bad = Failure::BadInput;
    // Settings are loaded once, and only if the live baseline or the archive needs them.
    let mut settings = Some(settings);
    let mut loaded: Option<Settings> = None;
    let mut settings = move || -> anyhow::Result<Settings> {
        if let Some(load) = settings.take() {
            loaded = Some(load()?);
        }
        loaded
            .clone()
            .ok_or_else(|| anyhow::anyhow!("the settings did not load"))
    };
    let (baseline_source, baseline) = baseline(&args.baseline, &mut settings)?;
    // The typed errors' messages already hold their causes: one line, not a chain.
    let candidate = ratemesh_whatif::load_policy(&args.policy)
        .map_err(|e| bad(anyhow::anyhow!("--policy: {e}")))?;

    let progress = if std::io::stderr().is_terminal() {
        let bar = ProgressBar::new_spinner();
        bar.set_style(
            ProgressStyle::with_template("{spinner} {msg} ({elapsed})")
                .unwrap_or_else(|_| ProgressStyle::default_spinner()),
        );
        bar.enable_steady_tick(Duration::from_millis(120));
        bar
    } else {
        ProgressBar::hidden()
    };
    let max_gap = TimeDelta::hours(i64::from(args.max_gap_hours));
    let history = read_history(args, max_gap, &progress, settings);
    let history = match history {
        Ok(history) => history,
        Err(e) => {
            progress.finish_and_clear();
            return Err(e);
        }
    };
    progress.set_message(format!(
        "replaying {} events under both policies",
        history.events().len()
    ));
    let report = replay(
        &history,
        &baseline,
        &candidate,
        &WhatIfOptions {
            elasticity: args.elasticity,
            ..WhatIfOptions::default()
        },
        &progress,
    );
    progress.finish_and_clear();

    for gap in &report.history.gaps {
        eprintln!(
            "warning: history gap: no stock data from {} to {} ({} h); the figures do not cover it",
            gap.from.to_rfc3339(),
            gap.until.to_rfc3339(),
            gap.hours
        );
    }
    if let Some(path) = &args.html {
        std::fs::write(path, ratemesh_whatif::render_html(&report))
            .with_context(|| format!("writing the HTML report to {}", path.display()))
            .map_err(Failure::Other)?;
    }
    if args.json {
        let document = JsonReport {
            baseline_source: baseline_source.to_string(),
            candidate_source: args.policy.display().to_string(),
            report: &report,
        };
        let text = serde_json::to_string_pretty(&document)
            .context("serialising the report")
            .map_err(Failure::Other)?;
        println!("{text}");
    } else {
        println!("baseline: {baseline_source}");
        println!("candidate: {}", args.policy.display());
        print!("{}", ratemesh_whatif::render_table(&report));
        if let Some(path) = &args.html {
            println!();
            println!("HTML report written to {}", path.display());
        }
    }
    Ok(())
}

/// Replays `history`, the spinner turning into a bar of events replayed once the replay
/// has run for [`BAR_AFTER`] (a short run shows none). A hidden bar (stderr not a
/// terminal) draws nothing.
fn replay(
    history: &History,
    baseline: &Policy,
    candidate: &Policy,
    options: &WhatIfOptions,
    progress: &ProgressBar,
) -> Report {
    let started = Instant::now();
    let shown = AtomicBool::new(false);
    let follow = |p: Progress| {
        if started.elapsed() < BAR_AFTER {
            return;
        }
        if !shown.swap(true, Ordering::Relaxed) {
            progress.set_style(
                ProgressStyle::with_template(
                    "{msg} [{bar:30}] {percent:>3}% {human_pos}/{human_len} events ({eta} left)",
                )
                .unwrap_or_else(|_| ProgressStyle::default_bar())
                .progress_chars("=> "),
            );
            progress.set_message("replaying");
        }
        progress.set_length(p.total);
        progress.set_position(p.done);
        if p.phase == Phase::Reporting {
            progress.set_message("adding up");
        }
    };
    // Nothing cancels a command-line run but the user's Ctrl-C, which ends the process.
    let never = AtomicBool::new(false);
    let control = Control {
        progress: &follow,
        cancelled: &never,
        interval: Duration::from_millis(100),
    };
    match ratemesh_whatif::run_with_progress(history, baseline, candidate, options, &control) {
        Ok(report) => report,
        Err(Cancelled) => unreachable!("the flag is never set"),
    }
}

/// How long a replay runs before it shows a progress bar.
const BAR_AFTER: Duration = Duration::from_millis(700);

/// The history `--history` or `--since` names.
fn read_history(
    args: &WhatIfArgs,
    max_gap: TimeDelta,
    progress: &ProgressBar,
    settings: impl FnOnce() -> anyhow::Result<Settings>,
) -> Result<History, Failure> {
    let bad = Failure::BadInput;
    if let Some(dir) = &args.history {
        progress.set_message(format!("reading history in {}", dir.display()));
        let options = HistoryOptions {
            max_gap,
            ..HistoryOptions::default()
        };
        return ratemesh_whatif::load_history(dir, &options)
            .map_err(|e| bad(anyhow::anyhow!("--history {}: {e}", dir.display())));
    }
    // Errors of these are bad input already (or a settings error with its own status).
    let range = history_cmd::range(&args.range, chrono::Utc::now()).map_err(Failure::Other)?;
    let dir = history_cmd::archive_dir(&args.range, settings).map_err(Failure::Other)?;
    progress.set_message(format!("reading the archive in {}", dir.display()));
    let selected =
        history_cmd::read(&dir, &range, &Selection::default()).map_err(Failure::Other)?;
    history_cmd::warn_torn(&selected);
    Ok(ratemesh_whatif::archive::history(&selected, max_gap))
}

/// The baseline policy and where it came from. Settings are loaded only for `live`.
fn baseline(
    flag: &str,
    settings: impl FnOnce() -> anyhow::Result<Settings>,
) -> Result<(Baseline, Policy), Failure> {
    if flag != "live" {
        let path = PathBuf::from(flag);
        let policy = ratemesh_whatif::load_policy(&path)
            .map_err(|e| Failure::BadInput(anyhow::anyhow!("--baseline: {e}")))?;
        return Ok((Baseline::File(path), policy));
    }
    // A bad settings file or `policy.file` is a settings error, with its own status.
    let settings = settings().map_err(Failure::Other)?;
    let policy =
        ratemesh_runtime::policy::load_policy(&settings).map_err(|e| Failure::Other(e.into()))?;
    let path = settings.policy.file.trim();
    let source = if path.is_empty() {
        Baseline::LiveExample
    } else {
        Baseline::LiveFile(path.to_owned())
    };
    Ok((source, policy))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn live_names_the_settings_policy_or_the_example() {
        let mut settings = Settings::default();
        settings.policy.file = String::new();
        let (source, policy) = match baseline("live", || Ok(settings.clone())) {
            Ok(found) => found,
            Err(_) => panic!("the example policy loads"),
        };
        assert_eq!(source, Baseline::LiveExample);
        assert_eq!(policy.program_id, Policy::example().program_id);
        assert!(source.to_string().contains("built-in example"), "{source}");

        let candidate = concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/../whatif/sample/candidate.toml"
        );
        settings.policy.file = candidate.to_owned();
        let (source, policy) = match baseline("live", || Ok(settings.clone())) {
            Ok(found) => found,
            Err(_) => panic!("the sample candidate loads"),
        };
        assert_eq!(source, Baseline::LiveFile(candidate.to_owned()));
        assert_eq!(policy.program_id, "acme-us-candidate");
        assert!(source.to_string().contains("policy.file"), "{source}");
    }
}
