//! `ratemesh history export --since T [--until T] [--sku S]... [--category C] --out DIR`:
//! a time range of the input archive (`ingest.archive.dir`, or `--archive DIR`) written as
//! history files `ratemesh whatif --history DIR` reads: stock and products pushes in the
//! webhook formats, each with ingest's `received_at`, and the override and incentive
//! changes in `changes.jsonl`.
//!
//! The range is read by the same code `ratemesh whatif --since` uses, so the exported
//! directory replays to the same report. Days without archived stock are reported, not
//! bridged. Bad input names the flag and exits 2.

use std::collections::BTreeSet;
use std::path::PathBuf;

use chrono::{DateTime, NaiveDate, NaiveTime, TimeDelta, Utc};
use clap::{Args, Subcommand};
use ratemesh::IngestSettings;
use ratemesh_runtime::Settings;
use ratemesh_whatif::archive::{self, Range, Selected, Selection};

use super::BadInput;

#[derive(Debug, Subcommand)]
pub(crate) enum HistoryCommand {
    /// Write a time range of the input archive as history files for `ratemesh whatif
    /// --history DIR`.
    Export(ExportArgs),
}

/// Which part of the input archive: shared by `history export` and `whatif --since`.
#[derive(Debug, Clone, Args)]
pub(crate) struct RangeArgs {
    /// Start of the range: an RFC 3339 time, or a date (its first instant, UTC).
    #[arg(long, value_name = "TIME")]
    pub(crate) since: Option<String>,
    /// End of the range, exclusive: an RFC 3339 time, or a date (the whole day is in the
    /// range). Default: now.
    #[arg(long, value_name = "TIME", requires = "since")]
    pub(crate) until: Option<String>,
    /// The archive directory. Default: `ingest.archive.dir` of the loaded settings.
    #[arg(long, value_name = "DIR", requires = "since")]
    pub(crate) archive: Option<PathBuf>,
}

#[derive(Debug, Args)]
pub(crate) struct ExportArgs {
    #[command(flatten)]
    range: RangeArgs,
    /// Only this SKU (repeat for more), with the category overrides that apply to it.
    #[arg(long = "sku", value_name = "SKU")]
    skus: Vec<String>,
    /// Only the SKUs of this category (by their product records), with its overrides.
    #[arg(long, value_name = "CATEGORY")]
    category: Option<String>,
    /// The directory to write (created; must be empty).
    #[arg(long, value_name = "DIR")]
    out: PathBuf,
}

pub(crate) fn run(
    command: &HistoryCommand,
    settings: impl FnOnce() -> anyhow::Result<Settings>,
) -> anyhow::Result<()> {
    match command {
        HistoryCommand::Export(args) => export(args, settings),
    }
}

fn bad(err: anyhow::Error) -> anyhow::Error {
    BadInput(err).into()
}

fn export(
    args: &ExportArgs,
    settings: impl FnOnce() -> anyhow::Result<Settings>,
) -> anyhow::Result<()> {
    let now = Utc::now();
    let range = range(&args.range, now)?;
    let dir = archive_dir(&args.range, settings)?;
    let selection = Selection {
        skus: args
            .skus
            .iter()
            .map(|s| s.trim().to_owned())
            .collect::<BTreeSet<_>>(),
        category: args.category.as_deref().map(|c| c.trim().to_lowercase()),
    };
    if selection.skus.iter().any(String::is_empty) {
        return Err(bad(anyhow::anyhow!("--sku: must not be empty")));
    }
    if selection.category.as_deref() == Some("") {
        return Err(bad(anyhow::anyhow!("--category: must not be empty")));
    }
    let selected = read(&dir, &range, &selection)?;
    let exported = archive::export(&selected.events, &args.out)
        .map_err(|e| bad(anyhow::anyhow!("--out: {e}")))?;
    warn_about(&selected);
    println!(
        "exported {} events ({} stock pushes, {} products pushes, {} override and incentive changes) from {} day files to {}",
        exported.events,
        exported.stock_files,
        exported.product_files,
        exported.changes,
        selected.files,
        args.out.display()
    );
    Ok(())
}

/// Reads the selected range, a bad archive being bad input that names the flag.
pub(crate) fn read(
    dir: &std::path::Path,
    range: &Range,
    selection: &Selection,
) -> anyhow::Result<Selected> {
    archive::select(dir, range, selection)
        .map_err(|e| bad(anyhow::anyhow!("--archive {}: {e}", dir.display())))
}

/// Tells about what the archive lacks, on stderr.
fn warn_about(selected: &Selected) {
    for day in &selected.missing_days {
        eprintln!("warning: the archive has no stock data for {day}: the range has a gap there");
    }
    warn_torn(selected);
}

/// Tells about day files that end in an interrupted write, on stderr.
pub(crate) fn warn_torn(selected: &Selected) {
    for file in &selected.torn_files {
        eprintln!(
            "warning: {file} ends in an interrupted write, skipped (its entries were archived again)"
        );
    }
}

/// The range the flags name; `--since` must be given.
pub(crate) fn range(args: &RangeArgs, now: DateTime<Utc>) -> anyhow::Result<Range> {
    let since = args
        .since
        .as_deref()
        .ok_or_else(|| bad(anyhow::anyhow!("--since: is required")))?;
    let since = instant("--since", since, false)?;
    let until = match &args.until {
        Some(text) => instant("--until", text, true)?,
        None => now,
    };
    if since >= until {
        return Err(bad(anyhow::anyhow!(
            "--until: must be after --since ({} is not after {})",
            until.to_rfc3339(),
            since.to_rfc3339()
        )));
    }
    Ok(Range {
        since,
        until,
        today: now.date_naive(),
    })
}

/// The archive directory: `--archive`, else `ingest.archive.dir`.
pub(crate) fn archive_dir(
    args: &RangeArgs,
    settings: impl FnOnce() -> anyhow::Result<Settings>,
) -> anyhow::Result<PathBuf> {
    if let Some(dir) = &args.archive {
        return Ok(dir.clone());
    }
    let settings = settings()?;
    match settings.section::<IngestSettings>().archive.dir() {
        Some(dir) => Ok(PathBuf::from(dir)),
        None => Err(bad(anyhow::anyhow!(
            "--archive: not given, and ingest.archive.dir is not set in the loaded settings"
        ))),
    }
}

/// An RFC 3339 time, or a date: its first instant, or with `end_of_day` the first instant
/// of the next day (so the date is in an exclusive range).
fn instant(flag: &str, text: &str, end_of_day: bool) -> anyhow::Result<DateTime<Utc>> {
    let text = text.trim();
    if let Ok(t) = DateTime::parse_from_rfc3339(text) {
        return Ok(t.with_timezone(&Utc));
    }
    match NaiveDate::parse_from_str(text, "%Y-%m-%d") {
        Ok(day) => {
            let day = if end_of_day {
                day + TimeDelta::days(1)
            } else {
                day
            };
            Ok(day.and_time(NaiveTime::MIN).and_utc())
        }
        Err(_) => Err(bad(anyhow::anyhow!(
            "{flag}: {text:?} is neither an RFC 3339 time (2026-11-27T08:00:00Z) nor a date (2026-11-27)"
        ))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn args(since: Option<&str>, until: Option<&str>) -> RangeArgs {
        RangeArgs {
            since: since.map(str::to_owned),
            until: until.map(str::to_owned),
            archive: None,
        }
    }

    fn message(err: anyhow::Error) -> String {
        assert!(err.downcast_ref::<BadInput>().is_some(), "{err:#}");
        format!("{err:#}")
    }

    #[test]
    fn dates_cover_whole_days_and_times_are_exact() {
        let now = DateTime::parse_from_rfc3339("2026-12-01T12:00:00Z")
            .unwrap()
            .with_timezone(&Utc);
        let r = range(&args(Some("2026-11-27"), Some("2026-11-28")), now).unwrap();
        assert_eq!(r.since.to_rfc3339(), "2026-11-27T00:00:00+00:00");
        assert_eq!(r.until.to_rfc3339(), "2026-11-29T00:00:00+00:00");
        let r = range(&args(Some("2026-11-27T08:00:00+01:00"), None), now).unwrap();
        assert_eq!(r.since.to_rfc3339(), "2026-11-27T07:00:00+00:00");
        assert_eq!(r.until, now);
        assert_eq!(r.today, now.date_naive());
    }

    #[test]
    fn a_bad_range_names_its_flag() {
        let now = Utc::now();
        let m = message(range(&args(Some("last friday"), None), now).unwrap_err());
        assert!(m.starts_with("--since: \"last friday\""), "{m}");
        let m = message(range(&args(Some("2026-11-27"), Some("2026-13-01")), now).unwrap_err());
        assert!(m.starts_with("--until:"), "{m}");
        let m = message(range(&args(Some("2026-11-28"), Some("2026-11-26")), now).unwrap_err());
        assert!(m.contains("must be after --since"), "{m}");
    }
}
