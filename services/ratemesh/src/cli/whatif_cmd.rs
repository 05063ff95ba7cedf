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
//! With `--remote` the run happens on the server at `--addr` (`PolicyService.WhatIf`, on
//! the process that keeps the input archive): the policy files are sent as text with the
//! range, SKUs, category and elasticity; the server's progress drives the same bar, and
//! its report is printed as a local run's is. The baseline `live` is then the server's.
//! Ctrl-C drops the call, which cancels the run on the server.
//!
//! Bad input — a policy that does not validate (the key and the problem), a history row
//! that does not (file, line and field), a missing file, a request the server refuses as
//! invalid (its message and the field it names) — ends with exit status 2, as a bad
//! setting does; nothing is replayed.

use std::collections::BTreeSet;
use std::fmt;
use std::io::IsTerminal as _;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use anyhow::Context as _;
use chrono::{DateTime, TimeDelta, Utc};
use clap::Args;
use indicatif::{ProgressBar, ProgressStyle};
use ratemesh_core::Policy;
use ratemesh_proto::v1::policy_service_client::PolicyServiceClient;
use ratemesh_proto::v1::{WhatIfPhase, WhatIfRequest, WhatIfResult, what_if_event};
use ratemesh_runtime::Settings;
use ratemesh_whatif::archive::Selection;
use ratemesh_whatif::report::Report;
use ratemesh_whatif::{
    Cancelled, Control, History, HistoryOptions, Phase, Progress, WhatIfOptions,
};
use rust_decimal::Decimal;
use serde::Serialize;

use super::client::{ClientArgs, DEFAULT_ADDR, TlsArgs, explain_status};
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
        required_unless_present_any = ["since", "remote"],
        conflicts_with = "since"
    )]
    history: Option<PathBuf>,
    /// Instead of `--history`: a time range of the input archive.
    #[command(flatten)]
    range: RangeArgs,
    /// With `--since`: only this SKU (repeat for more), with the category overrides that
    /// apply to it.
    #[arg(long = "sku", value_name = "SKU", requires = "since")]
    skus: Vec<String>,
    /// With `--since`: only the SKUs of this category (by their product records).
    #[arg(long, value_name = "CATEGORY", requires = "since")]
    category: Option<String>,
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
    /// A stretch longer than this without any stock push is reported as a gap (a
    /// `--remote` run uses the server's).
    #[arg(long, value_name = "H", default_value_t = 24)]
    max_gap_hours: u32,
    #[command(flatten)]
    remote: RemoteArgs,
}

/// Where a `--remote` run happens: the connection flags of the other client commands.
#[derive(Debug, Args)]
struct RemoteArgs {
    /// Run on the server at `--addr` (`PolicyService.WhatIf`, served by the process that
    /// keeps the input archive, `ingest.archive.dir`) over its archive from `--since`;
    /// the baseline `live` is then the server's live policy.
    #[arg(
        long,
        requires = "since",
        conflicts_with_all = ["history", "archive", "max_gap_hours"]
    )]
    remote: bool,
    /// With `--remote`: the gRPC endpoint of the process that keeps the archive.
    #[arg(long, default_value = DEFAULT_ADDR, env = "RATEMESH_ADDR")]
    addr: String,
    /// With `--remote`: the API key to call with (a merchandiser's or an admin's).
    #[arg(long, env = "RATEMESH_API_KEY", hide_env_values = true)]
    key: Option<String>,
    #[command(flatten)]
    tls: TlsArgs,
    /// With `--remote`: send the API key over plaintext http:// to a host that is not
    /// this machine (anyone on the path can read it).
    #[arg(long)]
    insecure: bool,
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

pub(crate) async fn run(
    args: &WhatIfArgs,
    settings: impl FnOnce() -> anyhow::Result<Settings>,
) -> anyhow::Result<()> {
    let outcome = if args.remote.remote {
        remote(args).await
    } else {
        execute(args, settings)
    };
    match outcome {
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

    let progress = Bar::new();
    let max_gap = TimeDelta::hours(i64::from(args.max_gap_hours));
    let history = read_history(args, max_gap, &progress.bar, settings);
    let history = match history {
        Ok(history) => history,
        Err(e) => {
            progress.bar.finish_and_clear();
            return Err(e);
        }
    };
    progress.bar.set_message(format!(
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
    progress.bar.finish_and_clear();
    print_report(args, &report, &baseline_source.to_string())
}

/// Prints a finished report: gaps as warnings on stderr, the HTML page if asked for, and
/// the table or the `--json` document on stdout.
fn print_report(args: &WhatIfArgs, report: &Report, baseline_source: &str) -> Result<(), Failure> {
    for gap in &report.history.gaps {
        eprintln!(
            "warning: history gap: no stock data from {} to {} ({} h); the figures do not cover it",
            gap.from.to_rfc3339(),
            gap.until.to_rfc3339(),
            gap.hours
        );
    }
    if let Some(path) = &args.html {
        std::fs::write(path, ratemesh_whatif::render_html(report))
            .with_context(|| format!("writing the HTML report to {}", path.display()))
            .map_err(Failure::Other)?;
    }
    if args.json {
        let document = JsonReport {
            baseline_source: baseline_source.to_owned(),
            candidate_source: args.policy.display().to_string(),
            report,
        };
        let text = serde_json::to_string_pretty(&document)
            .context("serialising the report")
            .map_err(Failure::Other)?;
        println!("{text}");
    } else {
        println!("baseline: {baseline_source}");
        println!("candidate: {}", args.policy.display());
        print!("{}", ratemesh_whatif::render_table(report));
        if let Some(path) = &args.html {
            println!();
            println!("HTML report written to {}", path.display());
        }
    }
    Ok(())
}

/// Replays `history`, following it on `progress`. Nothing cancels a command-line run but
/// the user's Ctrl-C, which ends the process.
fn replay(
    history: &History,
    baseline: &Policy,
    candidate: &Policy,
    options: &WhatIfOptions,
    progress: &Bar,
) -> Report {
    let started = Instant::now();
    let follow = |p: Progress| progress.follow(started, p);
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

/// What stderr shows while a run goes on: a spinner with what is being done, turning into
/// a bar of events replayed once the replay has run for [`BAR_AFTER`] (a short run shows
/// none). Off a terminal it draws nothing.
struct Bar {
    bar: ProgressBar,
    /// Whether the spinner has turned into the bar.
    shown: AtomicBool,
}

impl Bar {
    fn new() -> Self {
        let bar = if std::io::stderr().is_terminal() {
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
        Bar {
            bar,
            shown: AtomicBool::new(false),
        }
    }

    /// Shows `p` of a replay that started at `started`.
    fn follow(&self, started: Instant, p: Progress) {
        if started.elapsed() < BAR_AFTER {
            return;
        }
        if !self.shown.swap(true, Ordering::Relaxed) {
            self.bar.set_style(
                ProgressStyle::with_template(
                    "{msg} [{bar:30}] {percent:>3}% {human_pos}/{human_len} events ({eta} left)",
                )
                .unwrap_or_else(|_| ProgressStyle::default_bar())
                .progress_chars("=> "),
            );
            self.bar.set_message("replaying");
        }
        self.bar.set_length(p.total);
        self.bar.set_position(p.done);
        if p.phase == Phase::Reporting {
            self.bar.set_message("adding up");
        }
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
    let selected = history_cmd::read(&dir, &range, &selection(args)?).map_err(Failure::Other)?;
    history_cmd::warn_torn(&selected);
    Ok(ratemesh_whatif::archive::history(&selected, max_gap))
}

/// The SKUs and category `--sku` and `--category` select (all when neither is given).
fn selection(args: &WhatIfArgs) -> Result<Selection, Failure> {
    let bad = |e: &str| Failure::BadInput(anyhow::anyhow!("{e}"));
    let skus = args
        .skus
        .iter()
        .map(|s| s.trim().to_owned())
        .collect::<BTreeSet<_>>();
    if skus.iter().any(String::is_empty) {
        return Err(bad("--sku: must not be empty"));
    }
    let category = args.category.as_deref().map(|c| c.trim().to_lowercase());
    if category.as_deref() == Some("") {
        return Err(bad("--category: must not be empty"));
    }
    Ok(Selection { skus, category })
}

/// `--remote`: the run on the server, followed on the bar, then printed as a local one.
async fn remote(args: &WhatIfArgs) -> Result<(), Failure> {
    let request = remote_request(args, Utc::now())?;
    let connection = &args.remote;
    let addr = connection.addr.as_str();
    let client = ClientArgs {
        addr: addr.to_owned(),
        key: connection.key.clone(),
        json: args.json,
        tls: connection.tls.clone(),
        insecure: connection.insecure,
    };
    let channel = client.connect().await.map_err(Failure::Other)?;
    let mut service = PolicyServiceClient::new(channel);
    let progress = Bar::new();
    progress
        .bar
        .set_message(format!("asking {addr} to read its archive"));
    let call = follow_remote(&mut service, request, &progress);
    let result = tokio::select! {
        result = call => result,
        // Dropping the call resets the stream, and the server cancels the run.
        _ = tokio::signal::ctrl_c() => {
            progress.bar.finish_and_clear();
            return Err(Failure::Other(anyhow::anyhow!(
                "interrupted: the run on {addr} was cancelled"
            )));
        }
    };
    progress.bar.finish_and_clear();
    let result = result.map_err(|status| {
        let invalid = status.code() == tonic::Code::InvalidArgument;
        let err = explain_status(status).context(format!("whatif on {addr}"));
        if invalid {
            Failure::BadInput(err)
        } else {
            Failure::Other(err)
        }
    })?;
    let result = result.ok_or_else(|| {
        Failure::Other(anyhow::anyhow!(
            "whatif on {addr}: the run ended without a report"
        ))
    })?;
    let report = report_of(&result.report_json)
        .with_context(|| format!("whatif on {addr}: reading the report"))
        .map_err(Failure::Other)?;
    let baseline_source = match result.baseline_source.as_str() {
        "request" => args.baseline.clone(),
        live => format!("live policy of the server at {addr} ({live})"),
    };
    print_report(args, &report, &baseline_source)
}

/// Reads the run's events to the end, following progress on `progress`: the result, or
/// `None` when the stream ended without one.
async fn follow_remote(
    service: &mut PolicyServiceClient<super::client::AuthedChannel>,
    request: WhatIfRequest,
    progress: &Bar,
) -> Result<Option<WhatIfResult>, tonic::Status> {
    let mut stream = service.what_if(request).await?.into_inner();
    let mut started = None;
    while let Some(event) = stream.message().await? {
        match event.event {
            Some(what_if_event::Event::Progress(p)) => {
                let phase = match p.phase() {
                    WhatIfPhase::Reporting => Phase::Reporting,
                    WhatIfPhase::Replaying | WhatIfPhase::Unspecified => Phase::Replaying,
                };
                let started = *started.get_or_insert_with(|| {
                    progress
                        .bar
                        .set_message(format!("replaying {} events under both policies", p.total));
                    Instant::now()
                });
                progress.follow(
                    started,
                    Progress {
                        phase,
                        done: p.done,
                        total: p.total,
                    },
                );
            }
            Some(what_if_event::Event::Result(result)) => return Ok(Some(result)),
            None => {}
        }
    }
    Ok(None)
}

/// The request `--remote` sends: the policy files as text, the range (no `--until`: the
/// server's now), the selection and the elasticity.
fn remote_request(args: &WhatIfArgs, now: DateTime<Utc>) -> Result<WhatIfRequest, Failure> {
    let read = |flag: &str, path: &Path| {
        std::fs::read_to_string(path).map_err(|e| {
            Failure::BadInput(anyhow::anyhow!(
                "{flag}: cannot read {}: {e}",
                path.display()
            ))
        })
    };
    let candidate_policy = read("--policy", &args.policy)?;
    let baseline_policy = match args.baseline.as_str() {
        "live" => None,
        file => Some(read("--baseline", Path::new(file))?),
    };
    // Errors of this are bad input already.
    let range = history_cmd::range(&args.range, now).map_err(Failure::Other)?;
    let selection = selection(args)?;
    let timestamp = |at: DateTime<Utc>| prost_types::Timestamp {
        seconds: at.timestamp(),
        nanos: i32::try_from(at.timestamp_subsec_nanos()).unwrap_or(0),
    };
    Ok(WhatIfRequest {
        candidate_policy,
        baseline_policy,
        since: Some(timestamp(range.since)),
        until: args.range.until.as_ref().map(|_| timestamp(range.until)),
        skus: selection.skus.into_iter().collect(),
        category: selection.category,
        elasticity: args.elasticity.map(|e| e.to_string()),
    })
}

/// The report of a remote run from its `report_json`; fields this version does not know
/// are ignored.
fn report_of(json: &str) -> anyhow::Result<Report> {
    serde_json::from_str(json).context("the server's report")
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

    #[test]
    fn a_remote_run_without_since_asks_for_since_alone() {
        use clap::Parser as _;
        let parse = |args: &[&str]| {
            crate::cli::Cli::try_parse_from(
                ["ratemesh", "whatif", "--policy", "candidate.toml"]
                    .iter()
                    .chain(args),
            )
        };
        let err = parse(&["--remote"]).expect_err("no range").to_string();
        assert!(err.contains("--since <TIME>"), "{err}");
        assert!(!err.contains("--history"), "{err}");
        assert!(parse(&["--remote", "--since", "2026-11-01"]).is_ok());
        let err = parse(&["--remote", "--history", "dir"])
            .expect_err("history is local")
            .to_string();
        assert!(err.contains("cannot be used with"), "{err}");
        let err = parse(&[]).expect_err("no input").to_string();
        assert!(err.contains("--history <DIR>"), "{err}");
    }
}
