//! `ratemesh whatif` on the sample season shipped in services/whatif/sample: the
//! merchandiser's table, the script's JSON, and the bad input that must stop a run.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use chrono::TimeDelta;
use ratemesh_core::Policy;
use ratemesh_whatif::{HistoryOptions, WhatIfOptions, load_history, load_policy};

fn sample() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../whatif/sample")
}

/// Runs `ratemesh whatif ARGS` with no settings from the environment, so `live` is the
/// built-in example policy.
fn whatif(args: &[&str]) -> Output {
    let mut command = Command::new(env!("CARGO_BIN_EXE_ratemesh"));
    for (name, _) in std::env::vars_os() {
        if name.to_string_lossy().starts_with("RATEMESH") {
            command.env_remove(name);
        }
    }
    command
        .arg("whatif")
        .args(args)
        .output()
        .expect("run ratemesh")
}

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

fn path(p: &Path) -> &str {
    p.to_str().expect("utf-8 path")
}

#[test]
fn the_sample_season_is_tabled_with_both_policies_and_its_json_matches_the_library() {
    let history = sample().join("history");
    let candidate = sample().join("candidate.toml");
    let output = whatif(&["--policy", path(&candidate), "--history", path(&history)]);
    let stdout = text(&output.stdout);
    assert!(output.status.success(), "{}", text(&output.stderr));
    let example = Policy::example().program_id;
    assert!(
        stdout.contains(&format!("baseline {example} ")),
        "the table names the baseline: {stdout}"
    );
    assert!(
        stdout.contains("vs candidate acme-us-candidate "),
        "the table names the candidate: {stdout}"
    );
    assert!(
        stdout.contains("baseline: live policy (the built-in example"),
        "the output says which live policy: {stdout}"
    );
    assert!(stdout.contains("commission spend"), "{stdout}");

    let dir = tempfile::tempdir().expect("tempdir");
    let html = dir.path().join("report.html");
    let output = whatif(&[
        "--policy",
        path(&candidate),
        "--history",
        path(&history),
        "--json",
        "--html",
        path(&html),
    ]);
    assert!(output.status.success(), "{}", text(&output.stderr));
    let json: serde_json::Value =
        serde_json::from_slice(&output.stdout).expect("stdout is one JSON document");
    let page = std::fs::read_to_string(&html).expect("--html writes the page");
    assert!(page.contains("<svg"), "the page has its plots");
    assert!(
        page.contains("acme-us-candidate"),
        "the page names the candidate"
    );

    let history = load_history(
        &history,
        &HistoryOptions {
            max_gap: TimeDelta::hours(24),
            ..HistoryOptions::default()
        },
    )
    .expect("the sample loads");
    let report = ratemesh_whatif::run(
        &history,
        &Policy::example(),
        &load_policy(&candidate).expect("the sample candidate loads"),
        &WhatIfOptions::default(),
    );
    assert_eq!(
        json["program"],
        serde_json::to_value(&report.program).expect("serialise"),
        "the command's program totals are the library's"
    );
    assert_ne!(
        json["program"]["baseline"]["commission_spend"],
        json["program"]["candidate"]["commission_spend"],
        "the two policies pay differently on the sample"
    );
    assert_eq!(json["candidate_policy"]["program"], "acme-us-candidate");
    assert_eq!(json["baseline_policy"]["program"], example.as_str());
    let source = json["baseline_source"].as_str().unwrap_or_default();
    assert!(source.contains("built-in example"), "{source}");
}

#[test]
fn a_policy_that_does_not_validate_names_the_key_and_exits_2() {
    let dir = tempfile::tempdir().expect("tempdir");
    let candidate = std::fs::read_to_string(sample().join("candidate.toml")).expect("read");
    assert!(candidate.contains("max_cut = \"0.20\""));
    let bad = dir.path().join("candidate.toml");
    std::fs::write(
        &bad,
        candidate.replace("max_cut = \"0.20\"", "max_cut = \"1.5\""),
    )
    .expect("write");
    let output = whatif(&[
        "--policy",
        path(&bad),
        "--history",
        path(&sample().join("history")),
    ]);
    let stderr = text(&output.stderr);
    assert_eq!(output.status.code(), Some(2), "{stderr}");
    assert!(stderr.contains("network.max_cut"), "{stderr}");
    assert!(output.stdout.is_empty(), "nothing is reported");
}

#[test]
fn a_bad_history_row_names_file_line_and_field_and_exits_2() {
    let dir = tempfile::tempdir().expect("tempdir");
    for entry in std::fs::read_dir(sample().join("history")).expect("sample history") {
        let entry = entry.expect("entry");
        std::fs::copy(entry.path(), dir.path().join(entry.file_name())).expect("copy");
    }
    // Line 5 of a CSV push: a negative count.
    let csv = dir.path().join("stock-0003.csv");
    let original = std::fs::read_to_string(&csv).expect("read");
    let mut lines: Vec<String> = original.lines().map(str::to_owned).collect();
    let mut cells: Vec<String> = lines[4].split(',').map(str::to_owned).collect();
    cells[2] = "-3".into();
    lines[4] = cells.join(",");
    std::fs::write(&csv, lines.join("\n") + "\n").expect("write");

    let output = whatif(&[
        "--policy",
        path(&sample().join("candidate.toml")),
        "--history",
        path(dir.path()),
    ]);
    let stderr = text(&output.stderr);
    assert_eq!(output.status.code(), Some(2), "{stderr}");
    assert!(
        stderr.contains("stock-0003.csv line 5 field on_hand"),
        "{stderr}"
    );
    assert!(output.stdout.is_empty(), "nothing is replayed");
}

#[test]
fn a_history_gap_is_warned_about_and_stays_in_the_report() {
    // The sample is counted every 12 hours: with a 5-hour allowance every interval is a gap.
    let output = whatif(&[
        "--policy",
        path(&sample().join("candidate.toml")),
        "--history",
        path(&sample().join("history")),
        "--max-gap-hours",
        "5",
    ]);
    let stderr = text(&output.stderr);
    let stdout = text(&output.stdout);
    assert!(output.status.success(), "{stderr}");
    assert!(
        stderr.contains("warning: history gap: no stock data from 2025-11-01T00:00:00+00:00 to 2025-11-01T12:00:00+00:00 (12 h)"),
        "{stderr}"
    );
    assert!(
        stdout.contains("GAP: no stock data from 2025-11-01T00:00:00Z"),
        "{stdout}"
    );
}
