//! `ratemesh whatif --remote`: a merchandiser runs the what-if on the server that keeps
//! the input archive and gets, as a table, `--json` or `--html`, the report
//! `PolicyService.WhatIf` computes; a key of another role, a policy the server refuses and
//! flags that only make sense locally end the command with the reason.

use std::path::Path;
use std::process::Output;
use std::time::Duration;

use chrono::{DateTime, SecondsFormat, TimeDelta, Utc};
use ratemesh::IngestSettings;
use ratemesh_bus::{Bus, BusOptions};
use ratemesh_core::EXAMPLE_POLICY_TOML;
use ratemesh_proto::v1::policy_service_client::PolicyServiceClient;
use ratemesh_proto::v1::{WhatIfRequest, what_if_event};
use ratemesh_runtime::Role;
use ratemesh_testkit::{Product, Stock, TestApp, key_of, test_settings};
use ratemesh_whatif::archive::{self, Range, Selection};

fn sample_candidate() -> &'static Path {
    Path::new(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../whatif/sample/candidate.toml"
    ))
}

/// A mesh on the in-memory bus whose ingest archives to `archive`.
async fn spawn_archiving(archive: &Path) -> TestApp {
    let mut settings = test_settings();
    settings.section_mut::<IngestSettings>().archive.dir =
        archive.to_str().expect("utf-8 path").to_owned();
    let bus = Bus::memory(BusOptions {
        read_block: Duration::from_millis(50),
        ..BusOptions::embedded()
    })
    .expect("embedded bus");
    TestApp::spawn_with(settings, bus).await
}

/// Three SKUs with products and three rounds of falling stock, archived: 12 events. Waits
/// until the archive holds them all.
async fn archive_a_season(app: &TestApp, archive: &Path, since: DateTime<Utc>) {
    let products = [
        Product::new("A-1", "home", "40", "10"),
        Product::new("B-2", "home", "25", "10"),
        Product::new("C-3", "garden", "60", "12"),
    ];
    assert_eq!(app.push_products(&products).await.status, 202);
    for round in 1..=3u64 {
        let stock: Vec<Stock> = [("A-1", 500), ("B-2", 200), ("C-3", 80)]
            .into_iter()
            .map(|(sku, start)| Stock::new(sku, start - round * 15).sequence(round))
            .collect();
        assert_eq!(app.push_stock(&stock).await.status, 202);
    }
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    loop {
        let now = Utc::now();
        let range = Range {
            since,
            until: now,
            today: now.date_naive(),
        };
        let archived = archive::select(archive, &range, &Selection::default())
            .map_or(0, |selected| selected.events.len());
        if archived >= 12 {
            return;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "the archive holds {archived} of 12 events"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

fn rfc3339(at: DateTime<Utc>) -> String {
    at.to_rfc3339_opts(SecondsFormat::Nanos, true)
}

/// Runs `ratemesh whatif ARGS --remote --addr <app> --key <role's key>` with no settings
/// or connection from the environment.
async fn whatif_remote(app: &TestApp, role: Role, args: &[&str]) -> Output {
    let mut command = tokio::process::Command::new(env!("CARGO_BIN_EXE_ratemesh"));
    for (name, _) in std::env::vars_os() {
        if name.to_string_lossy().starts_with("RATEMESH") {
            command.env_remove(name);
        }
    }
    command
        .arg("whatif")
        .args(args)
        .args(["--remote", "--addr", &format!("http://{}", app.grpc)])
        .args(["--key", &key_of(role)])
        .output()
        .await
        .expect("run ratemesh")
}

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_remote_report_is_the_one_the_rpc_gives_as_json_table_and_html() {
    let archive = tempfile::tempdir().expect("tempdir");
    let since = Utc::now() - TimeDelta::minutes(1);
    let app = spawn_archiving(archive.path()).await;
    archive_a_season(&app, archive.path(), since).await;
    let until = Utc::now();
    let files = tempfile::tempdir().expect("tempdir");
    let baseline = files.path().join("baseline.toml");
    std::fs::write(&baseline, EXAMPLE_POLICY_TOML).expect("write the baseline");
    let html = files.path().join("report.html");
    let candidate = sample_candidate().to_str().expect("utf-8 path");
    let baseline = baseline.to_str().expect("utf-8 path");
    let (since_flag, until_flag) = (rfc3339(since), rfc3339(until));
    let args = [
        "--policy",
        candidate,
        "--baseline",
        baseline,
        "--since",
        &since_flag,
        "--until",
        &until_flag,
        "--sku",
        "C-3",
        "--sku",
        "A-1",
        "--elasticity",
        "0.5",
    ];

    // What the RPC answers for the same request.
    let mut service = PolicyServiceClient::new(app.authed(Role::Merchandiser).await);
    let timestamp = |at: DateTime<Utc>| prost_types::Timestamp {
        seconds: at.timestamp(),
        nanos: at.timestamp_subsec_nanos() as i32,
    };
    let request = WhatIfRequest {
        candidate_policy: std::fs::read_to_string(candidate).expect("read the candidate"),
        baseline_policy: Some(EXAMPLE_POLICY_TOML.to_owned()),
        since: Some(timestamp(since)),
        until: Some(timestamp(until)),
        skus: vec!["A-1".to_owned(), "C-3".to_owned()],
        category: None,
        elasticity: Some("0.5".to_owned()),
    };
    let mut stream = service.what_if(request).await.expect("a run").into_inner();
    let mut rpc_report = None;
    while let Some(event) = stream.message().await.expect("no error in the stream") {
        if let Some(what_if_event::Event::Result(result)) = event.event {
            rpc_report = Some(result.report_json);
        }
    }
    let rpc_report: serde_json::Value =
        serde_json::from_str(&rpc_report.expect("a result")).expect("JSON");
    assert_eq!(
        rpc_report["skus"].as_array().map(Vec::len),
        Some(2),
        "the selection reached the server: {rpc_report}"
    );
    assert!(rpc_report["estimate"].is_object(), "{rpc_report}");

    let json_args: Vec<&str> = args
        .iter()
        .copied()
        .chain(["--json", "--html", html.to_str().expect("utf-8 path")])
        .collect();
    let output = whatif_remote(&app, Role::Merchandiser, &json_args).await;
    assert!(output.status.success(), "{}", text(&output.stderr));
    let mut document: serde_json::Value =
        serde_json::from_slice(&output.stdout).expect("stdout is one JSON document");
    let fields = document.as_object_mut().expect("an object");
    assert_eq!(fields.remove("baseline_source"), Some(baseline.into()));
    assert_eq!(fields.remove("candidate_source"), Some(candidate.into()));
    assert_eq!(document, rpc_report);
    let page = std::fs::read_to_string(&html).expect("--html writes the page");
    assert!(page.contains("<svg"), "the page has its plots");
    assert!(
        page.contains("acme-us-candidate"),
        "the page names the candidate"
    );

    let output = whatif_remote(&app, Role::Merchandiser, &args).await;
    assert!(output.status.success(), "{}", text(&output.stderr));
    let table = text(&output.stdout);
    assert!(table.contains(&format!("baseline: {baseline}")), "{table}");
    assert!(table.contains("vs candidate acme-us-candidate "), "{table}");
    assert!(table.contains("commission spend"), "{table}");
    assert!(table.contains("ESTIMATE (not observed)"), "{table}");

    // The server's live policy as the baseline, named as the server names it.
    let live: Vec<&str> = args
        .iter()
        .copied()
        .filter(|a| *a != "--baseline" && *a != baseline)
        .chain(["--json"])
        .collect();
    let output = whatif_remote(&app, Role::Merchandiser, &live).await;
    assert!(output.status.success(), "{}", text(&output.stderr));
    let document: serde_json::Value = serde_json::from_slice(&output.stdout).expect("JSON");
    let source = document["baseline_source"].as_str().unwrap_or_default();
    assert!(
        source.starts_with(&format!("live policy of the server at http://{}", app.grpc)),
        "{source}"
    );
    app.stop().await.expect("clean stop");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_network_key_and_a_refused_policy_end_the_command_with_the_servers_reason() {
    let archive = tempfile::tempdir().expect("tempdir");
    let app = spawn_archiving(archive.path()).await;
    let candidate = sample_candidate().to_str().expect("utf-8 path");
    let since = rfc3339(Utc::now() - TimeDelta::hours(1));

    let output = whatif_remote(
        &app,
        Role::Network,
        &["--policy", candidate, "--since", &since],
    )
    .await;
    let stderr = text(&output.stderr);
    assert_eq!(output.status.code(), Some(1), "{stderr}");
    assert!(stderr.contains("PermissionDenied"), "{stderr}");
    assert!(stderr.contains("whatif on http://"), "{stderr}");
    assert!(
        output.stdout.is_empty(),
        "no report: {}",
        text(&output.stdout)
    );

    let files = tempfile::tempdir().expect("tempdir");
    let sideways = files.path().join("sideways.toml");
    let policy = EXAMPLE_POLICY_TOML.replace("mode = \"direct\"", "mode = \"sideways\"");
    std::fs::write(&sideways, policy).expect("write the policy");
    let output = whatif_remote(
        &app,
        Role::Merchandiser,
        &[
            "--policy",
            sideways.to_str().expect("utf-8 path"),
            "--since",
            &since,
        ],
    )
    .await;
    let stderr = text(&output.stderr);
    assert_eq!(output.status.code(), Some(2), "bad input: {stderr}");
    assert!(stderr.contains("InvalidArgument"), "{stderr}");
    assert!(
        stderr.contains("candidate_policy: program.mode"),
        "the field the server names: {stderr}"
    );
    app.stop().await.expect("clean stop");
}

#[test]
fn flags_of_a_local_run_are_refused_with_remote() {
    for local in [
        ["--history", "/tmp/history"],
        ["--archive", "/tmp/archive"],
        ["--max-gap-hours", "6"],
    ] {
        let output = std::process::Command::new(env!("CARGO_BIN_EXE_ratemesh"))
            .args(["whatif", "--policy", "candidate.toml", "--remote"])
            .args(if local[0] == "--history" {
                &[][..]
            } else {
                &["--since", "2026-11-01"][..]
            })
            .args(local)
            .output()
            .expect("run ratemesh");
        let stderr = text(&output.stderr);
        assert_eq!(output.status.code(), Some(2), "{stderr}");
        assert!(
            stderr.contains(&format!("'{}", local[0])) && stderr.contains("'--remote'"),
            "{stderr}"
        );
    }
}
