//! `whatif`: how fast a what-if run replays history (issue 20: one million SKU-events a
//! minute or better on two cores). No services and no Redis: the what-if engine is pure
//! compute, so this scenario runs it in this process.
//!
//! It writes a generated season ([`ratemesh_whatif::season`], 1 November – 5 December
//! with a BFCM spike) as ERP files into a temporary directory, reads it back with
//! [`ratemesh_whatif::load_history`] (parse and validate, timed on its own), then replays
//! it with [`ratemesh_whatif::run`] under the example policy as baseline and the shipped
//! sample candidate (`services/whatif/sample/candidate.toml`, compiled in): once on every
//! core, once on one thread, the same-machine baseline of the ratio.
//!
//! A **SKU-event** is one stock reading or one product record of one SKU: each is folded
//! by both policies (two policy computations and the sales bookkeeping of both). Ticks at
//! the policies' peak-window edges are replayed too but not counted. The season has
//! enough readings a day for at least a million SKU-events at the default size.
//!
//! Checks: the history holds every generated reading and product, the report covers every
//! SKU, and the report on every core equals the one-thread report (the run is
//! deterministic whatever the thread count). A full run also checks the target,
//! SKU-events per minute on every core ≥ 1,000,000: a load-test figure that fails the run,
//! never a `cargo test` assertion; a smoke run measures nothing against it.

use std::path::Path;
use std::time::{Duration, Instant};

use anyhow::Context as _;
use chrono::Utc;
use ratemesh_core::Policy;
use ratemesh_whatif::history::HistorySummary;
use ratemesh_whatif::season::{SeasonSpec, write_season};
use ratemesh_whatif::{HistoryOptions, WhatIfOptions, load_history, run as replay};
use tokio_util::sync::CancellationToken;

use super::RunConfig;
use crate::report::Report;

/// The target on this machine's cores.
pub const TARGET_SKU_EVENTS_PER_MINUTE: f64 = 1_000_000.0;

/// SKU-events a full run replays at least, at the default size.
const FULL_SKU_EVENTS: u64 = 1_000_000;

/// More readings a day than this (one every 15 minutes) would mean thousands of files for
/// a small catalogue; a small `--skus` then replays fewer SKU-events, at the same rate.
const MAX_READINGS_PER_DAY: u64 = 96;

/// The candidate policy the sample season ships with.
const CANDIDATE_TOML: &str = include_str!(concat!(
    env!("CARGO_MANIFEST_DIR"),
    "/../services/whatif/sample/candidate.toml"
));

/// The season for `skus` SKUs: the default season's dates and demand, with as many
/// readings a day (at least the default two, at most `MAX_READINGS_PER_DAY`) as it takes
/// for `min_sku_events` stock readings and product records.
pub fn season_spec(skus: usize, min_sku_events: u64) -> SeasonSpec {
    let base = SeasonSpec::default();
    let skus_u64 = skus.max(1) as u64;
    let readings_per_sku_day = skus_u64 * u64::from(base.days.max(1));
    let per_day = min_sku_events
        .saturating_sub(skus_u64)
        .div_ceil(readings_per_sku_day)
        .clamp(u64::from(base.readings_per_day), MAX_READINGS_PER_DAY);
    SeasonSpec {
        skus,
        readings_per_day: per_day as u32,
        ..base
    }
}

/// One replay of the history under both policies.
struct Replayed {
    threads: usize,
    took: Duration,
    /// CPU time the process used meanwhile (all threads), when /proc tells.
    cpu: Option<Duration>,
    report: ratemesh_whatif::Report,
}

/// What the blocking part of the scenario found.
struct Measured {
    spec: SeasonSpec,
    files: usize,
    written_readings: usize,
    bytes: u64,
    generated: Duration,
    loaded: Duration,
    history: HistorySummary,
    parallel: Replayed,
    /// `None` when Ctrl-C came before it ran.
    single: Option<Replayed>,
}

/// Runs the scenario into `report`.
pub async fn run(config: &RunConfig, report: &mut Report) -> anyhow::Result<()> {
    report.target = "the what-if engine in this process (no services, no Redis)".into();
    let skus = config.skus.unwrap_or(config.pick(20_000, 40)).max(1);
    let min_events = config.pick(FULL_SKU_EVENTS, 0);
    let spec = season_spec(skus, min_events);
    let progress = config.progress;
    let stop = config.stop.clone();
    // Generating, parsing and replaying are blocking CPU work on threads of their own.
    let measured = tokio::task::spawn_blocking(move || measure(spec, progress, &stop))
        .await
        .context("the what-if measurement panicked")??;
    record(config, report, &measured);
    Ok(())
}

fn measure(spec: SeasonSpec, progress: bool, stop: &CancellationToken) -> anyhow::Result<Measured> {
    let say = |what: &str| {
        if progress {
            eprintln!("whatif: {what}");
        }
    };
    let baseline = Policy::example();
    let candidate = Policy::from_toml_str(CANDIDATE_TOML)
        .context("the sample candidate policy does not validate")?;
    let dir = tempfile::tempdir().context("creating a directory for the season")?;

    say(&format!(
        "writing a season of {} SKUs, {} readings a day for {} days",
        spec.skus, spec.readings_per_day, spec.days
    ));
    let started = Instant::now();
    let written = write_season(&spec, dir.path()).context("writing the season")?;
    let generated = started.elapsed();
    let bytes = dir_bytes(dir.path())?;

    say("reading the season back (parse and validate)");
    let started = Instant::now();
    let history = load_history(
        dir.path(),
        &HistoryOptions {
            now: Utc::now(),
            ..HistoryOptions::default()
        },
    )
    .context("loading the generated season")?;
    let loaded = started.elapsed();

    let once = |threads: usize| {
        let options = WhatIfOptions {
            threads,
            ..WhatIfOptions::default()
        };
        let cpu_before = cpu_time();
        let started = Instant::now();
        let report = replay(&history, &baseline, &candidate, &options);
        let took = started.elapsed();
        Replayed {
            threads: match threads {
                0 => std::thread::available_parallelism().map_or(1, usize::from),
                n => n,
            },
            took,
            cpu: cpu_time()
                .zip(cpu_before)
                .map(|(after, before)| after.saturating_sub(before)),
            report,
        }
    };
    say("replaying under both policies on every core");
    let parallel = once(0);
    let single = if stop.is_cancelled() {
        None
    } else {
        say("replaying again on one thread");
        Some(once(1))
    };
    Ok(Measured {
        spec,
        files: written.files,
        written_readings: written.stock_readings,
        bytes,
        generated,
        loaded,
        history: history.summary().clone(),
        parallel,
        single,
    })
}

/// CPU time this process used so far, user and system, all threads: fields 14 and 15
/// of `/proc/self/stat`, in the kernel's USER_HZ ticks (100 a second on Linux).
fn cpu_time() -> Option<Duration> {
    let stat = std::fs::read_to_string("/proc/self/stat").ok()?;
    // The command name (field 2) is in parentheses and may hold spaces.
    let rest = stat.rsplit_once(')')?.1;
    let mut fields = rest.split_whitespace().skip(11);
    let user: u64 = fields.next()?.parse().ok()?;
    let system: u64 = fields.next()?.parse().ok()?;
    Some(Duration::from_millis((user + system) * 10))
}

/// Reports a replay's wall time, rate and the cores it kept busy.
fn replay_figures(report: &mut Report, run: &Replayed, events: u64) -> f64 {
    let rate = per_minute(events, run.took);
    let threads = match run.threads {
        1 => "1 thread".to_owned(),
        n => format!("{n} threads"),
    };
    report.figure(
        &format!("replay on {threads}: wall time"),
        run.took.as_secs_f64(),
        "s",
    );
    report.figure("  SKU-events per minute", rate, "events/min");
    if let Some(cpu) = run.cpu {
        // Below the thread count: the replay did not have the cores to itself (or ran
        // single-threaded parts); on a shared machine, a sign the figures are disturbed.
        report.figure(
            "  cores kept busy (CPU time / wall time)",
            cpu.as_secs_f64() / run.took.as_secs_f64().max(1e-9),
            "cores",
        );
    }
    rate
}

/// Total size of the files in `dir`.
fn dir_bytes(dir: &Path) -> anyhow::Result<u64> {
    let mut total = 0;
    for entry in std::fs::read_dir(dir).with_context(|| format!("listing {}", dir.display()))? {
        total += entry?.metadata()?.len();
    }
    Ok(total)
}

fn per_minute(events: u64, took: Duration) -> f64 {
    events as f64 * 60.0 / took.as_secs_f64().max(1e-9)
}

fn record(config: &RunConfig, report: &mut Report, m: &Measured) {
    let skus = m.spec.skus;
    let events = (m.history.stock_readings + m.history.products) as u64;
    report.figure("season: SKUs", skus as f64, "SKUs");
    report.figure(
        "season: stock readings a day",
        f64::from(m.spec.readings_per_day),
        "readings",
    );
    report.figure("season: days", f64::from(m.spec.days), "days");
    report.figure("season: files written", m.files as f64, "files");
    report.figure("season: size on disk", m.bytes as f64 / 1e6, "MB");
    report.figure("season: generated in", m.generated.as_secs_f64(), "s");
    report.figure(
        "history loaded (read, parse, validate)",
        m.loaded.as_secs_f64(),
        "s",
    );
    report.figure(
        "  SKU-events loaded per second",
        events as f64 / m.loaded.as_secs_f64().max(1e-9),
        "events/s",
    );
    report.figure(
        "SKU-events (stock readings + product records)",
        events as f64,
        "events",
    );

    let expected_events = m.written_readings + skus;
    report.check(
        "the history holds every generated reading and product",
        m.history.stock_readings == m.written_readings
            && m.history.products == skus
            && m.history.skus == skus,
        format!(
            "{} readings of {}, {} products and {} SKUs of {skus} ({events} of {expected_events} SKU-events)",
            m.history.stock_readings, m.written_readings, m.history.products, m.history.skus
        ),
    );
    report.check(
        "the generated season has no gaps",
        m.history.gaps.is_empty(),
        format!("{} gaps", m.history.gaps.len()),
    );

    let parallel = &m.parallel;
    let parallel_rate = replay_figures(report, parallel, events);
    let covered = parallel.report.skus.len();
    report.check(
        "the report covers every SKU",
        covered == skus,
        format!("{covered} of {skus} SKUs"),
    );
    let program = &parallel.report.program;
    report.check(
        "both policies paid commission on the observed sales",
        positive(&program.units_sold)
            && positive(&program.baseline.commission_spend)
            && positive(&program.candidate.commission_spend),
        format!(
            "{} units sold; spend {} baseline, {} candidate",
            program.units_sold.normalize(),
            program.baseline.commission_spend.round_dp(2),
            program.candidate.commission_spend.round_dp(2)
        ),
    );
    report.check(
        "both policies' rules opened flash incentives and paid their bonus",
        program.baseline.incentives_opened > 0
            && program.candidate.incentives_opened > 0
            && positive(&program.baseline.incentive_spend)
            && positive(&program.candidate.incentive_spend),
        format!(
            "{} opened, {} spent baseline; {} opened, {} spent candidate",
            program.baseline.incentives_opened,
            program.baseline.incentive_spend.round_dp(2),
            program.candidate.incentives_opened,
            program.candidate.incentive_spend.round_dp(2)
        ),
    );

    match &m.single {
        Some(single) => {
            let single_rate = replay_figures(report, single, events);
            report.ratio(
                &format!(
                    "replay SKU-events/min, {} threads / 1 thread",
                    parallel.threads
                ),
                (&format!("{} threads", parallel.threads), parallel_rate),
                ("1 thread", single_rate),
                "bound by the cores; both policies open flash incentives, which couple \
                 every SKU, so each policy replays in a partition of its own (2 at most), \
                 while grouping the events and joining the reports run on one",
            );
            report.check(
                &format!(
                    "the report on {} threads equals the 1-thread report",
                    parallel.threads
                ),
                parallel.report == single.report,
                first_difference(&parallel.report, &single.report),
            );
        }
        None => report.check(
            "the 1-thread replay ran",
            false,
            "stopped before it (Ctrl-C)",
        ),
    }

    if !config.smoke {
        report.check(
            &format!(
                "SKU-events per minute on {} threads ≥ 1,000,000 (issue 20)",
                parallel.threads
            ),
            parallel_rate >= TARGET_SKU_EVENTS_PER_MINUTE,
            format!("{parallel_rate:.0} events/min"),
        );
    }
}

fn positive<T: PartialOrd + Default>(value: &T) -> bool {
    *value > T::default()
}

/// Where two reports differ, for the check's detail ("equal" when they do not).
fn first_difference(a: &ratemesh_whatif::Report, b: &ratemesh_whatif::Report) -> String {
    let parts = [
        ("history", a.history == b.history),
        ("program figures", a.program == b.program),
        ("category figures", a.categories == b.categories),
        ("SKU figures", a.skus == b.skus),
        ("unpriced units", a.unpriced_units == b.unpriced_units),
        ("time series", a.series == b.series),
    ];
    match parts.iter().find(|(_, same)| !same) {
        Some((part, _)) => format!("the {part} differ"),
        None if a == b => format!("equal ({} SKUs)", a.skus.len()),
        None => "the policy labels or the estimate differ".to_owned(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sku_events(spec: &SeasonSpec) -> u64 {
        spec.skus as u64 * (u64::from(spec.days) * u64::from(spec.readings_per_day) + 1)
    }

    #[test]
    fn the_default_season_replays_at_least_a_million_sku_events() {
        let spec = season_spec(20_000, FULL_SKU_EVENTS);
        assert_eq!(spec.readings_per_day, 2);
        assert!(sku_events(&spec) >= FULL_SKU_EVENTS, "{spec:?}");
    }

    #[test]
    fn a_smaller_catalogue_gets_more_readings_a_day_up_to_one_every_15_minutes() {
        let spec = season_spec(1_000, FULL_SKU_EVENTS);
        assert_eq!(spec.readings_per_day, 29);
        assert!(sku_events(&spec) >= FULL_SKU_EVENTS, "{spec:?}");
        assert!(sku_events(&season_spec(1_000, FULL_SKU_EVENTS - 1)) >= FULL_SKU_EVENTS - 1);
        assert_eq!(season_spec(10, FULL_SKU_EVENTS).readings_per_day, 96);
        assert_eq!(season_spec(10, 0).readings_per_day, 2);
    }

    #[test]
    fn the_shipped_candidate_validates_and_has_a_peak_window_inside_the_season() {
        let candidate = Policy::from_toml_str(CANDIDATE_TOML).expect("valid candidate");
        let spec = season_spec(20_000, FULL_SKU_EVENTS);
        let end = spec.start + chrono::TimeDelta::days(i64::from(spec.days));
        assert!(
            candidate
                .peak_windows
                .iter()
                .any(|w| w.starts_at > spec.start && w.ends_at < end),
            "{:?}",
            candidate.peak_windows
        );
    }
}
