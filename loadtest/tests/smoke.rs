//! The CI smoke run: every scenario, short and at a low rate, against an in-process
//! ratemesh on a private redis-server, and `ingest` on a private Redis Cluster. It fails
//! only on errors or lost events (the report's checks), never on a throughput or latency
//! figure.

use ratemesh_loadtest::report::Report;
use ratemesh_loadtest::scenario::{self, RunConfig, Scenario};
use ratemesh_loadtest::target::{InProcess, RedisSpec, TargetSpec};

async fn smoke(s: Scenario) {
    smoke_on(s, RedisSpec::PrivateServer).await;
}

async fn smoke_on(s: Scenario, redis: RedisSpec) -> Report {
    smoke_with(
        s,
        RunConfig::smoke(TargetSpec::InProcess(InProcess::on(redis, 2))),
    )
    .await
}

async fn smoke_with(s: Scenario, config: RunConfig) -> Report {
    let report = scenario::run(s, &config).await;
    let failures = report.failures();
    assert!(failures.is_empty(), "{}", report.table());
    assert!(
        !report.phases.is_empty() || !report.figures.is_empty(),
        "{}",
        report.table()
    );
    // Every phase did real work, and the renderings hold what the run measured.
    for phase in &report.phases {
        assert!(
            phase.summary.ok > 0,
            "phase {:?} completed nothing\n{}",
            phase.name,
            report.table()
        );
    }
    let json = serde_json::to_value(&report).expect("report serialises");
    assert_eq!(json["scenario"], s.name());
    let svg = report.svg();
    assert!(
        svg.starts_with("<svg") && svg.ends_with("</svg>\n"),
        "{svg}"
    );
    assert_eq!(
        svg.matches("<polyline").count(),
        4 * report.phases.len(),
        "one throughput and three latency lines per phase"
    );
    report
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn poll_smoke() {
    smoke(Scenario::Poll).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ingest_smoke() {
    smoke(Scenario::Ingest).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn freshness_smoke() {
    smoke(Scenario::Freshness).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bfcm_smoke() {
    smoke(Scenario::Bfcm).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn surge_smoke() {
    smoke(Scenario::Surge).await;
}

/// `--raw-client`: GetRate from pre-encoded frames over bare HTTP/2, answers checked by
/// status only, after one decoded answer held its card.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn surge_smoke_with_the_raw_client() {
    let config = RunConfig {
        raw_client: true,
        ..RunConfig::smoke(TargetSpec::InProcess(InProcess::on(
            RedisSpec::PrivateServer,
            2,
        )))
    };
    let report = smoke_with(Scenario::Surge, config).await;
    assert!(
        report.phases[0].name.starts_with("GetRate over raw HTTP/2"),
        "{}",
        report.table()
    );
    let figure = |name: &str| {
        report
            .figures
            .iter()
            .find(|f| f.name == name)
            .unwrap_or_else(|| panic!("no figure {name:?}\n{}", report.table()))
            .value
    };
    assert!(figure("surge: GetRate served") > 0.0, "{}", report.table());
    assert!(
        figure("surge: load generator's send lag p99 (scheduled -> sent)") > 0.0,
        "{}",
        report.table()
    );
    // The probe's calls, from a thread of its own, are summarised apart.
    assert!(
        report
            .phases
            .iter()
            .any(|p| p.name.starts_with("GetRate from the probe")),
        "{}",
        report.table()
    );
    assert!(
        figure("surge, probe: GetRate served") + figure("surge, probe: GetRate refused") > 0.0,
        "{}",
        report.table()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn scale_smoke() {
    smoke(Scenario::Scale).await;
}

/// On a cluster (three primaries with a replica each) the baseline appends to the
/// partitions' slots, and the webhook is measured with and without a replica's
/// confirmation of every push, in the same run.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ingest_smoke_on_a_private_cluster() {
    let report = smoke_on(Scenario::Ingest, RedisSpec::PrivateCluster).await;
    assert!(report.target.contains("redis cluster"), "{}", report.target);
    let acks: Vec<&str> = report
        .phases
        .iter()
        .map(|p| p.name.as_str())
        .filter(|name| name.starts_with("webhook batch"))
        .collect();
    assert_eq!(
        acks,
        [
            "webhook batch 20, acks 0",
            "webhook batch 20, acks 1, 2nd ingest"
        ],
        "{}",
        report.table()
    );
    let ratio = report
        .ratios
        .iter()
        .find(|r| r.name.contains("min_replica_acks 1 / min_replica_acks 0"))
        .unwrap_or_else(|| panic!("no replica acks ratio\n{}", report.table()));
    assert!(ratio.value > 0.0, "{}", report.table());
}

/// `whatif` needs no services: it replays a tiny generated season (40 SKUs, two readings
/// a day for 35 days) on every core and again on one thread. The two reports must be
/// equal and cover every reading; a smoke run has no throughput target.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn whatif_smoke() {
    let report = smoke_on(Scenario::Whatif, RedisSpec::PrivateServer).await;
    let figure = |name: &str| {
        report
            .figures
            .iter()
            .find(|f| f.name == name)
            .map(|f| f.value)
    };
    assert_eq!(
        figure("SKU-events (stock readings + product records)"),
        Some((40 * 35 * 2 + 40) as f64),
        "{}",
        report.table()
    );
    let checks: Vec<&str> = report.checks.iter().map(|c| c.name.as_str()).collect();
    assert!(
        checks
            .iter()
            .any(|name| name.ends_with("threads equals the 1-thread report")),
        "{checks:?}"
    );
    assert!(
        !checks.iter().any(|name| name.contains("1,000,000")),
        "a smoke run checks no throughput target: {checks:?}"
    );
    let ratio = &report.ratios[0];
    assert!(
        ratio.name.starts_with("replay SKU-events/min") && ratio.value > 0.0,
        "{}",
        report.table()
    );
}
