//! The CI smoke run: every scenario, short and at a low rate, against an in-process
//! ratemesh on a private redis-server. It fails only on errors or lost events (the
//! report's checks), never on a throughput or latency figure.

use ratemesh_loadtest::scenario::{self, RunConfig, Scenario};
use ratemesh_loadtest::target::TargetSpec;

async fn smoke(s: Scenario) {
    let config = RunConfig::smoke(TargetSpec::InProcess {
        redis: None,
        partitions: 2,
        peak_at: None,
    });
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

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn scale_smoke() {
    smoke(Scenario::Scale).await;
}
