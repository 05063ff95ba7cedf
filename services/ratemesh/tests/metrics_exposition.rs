//! What Prometheus scrapes from a running mesh: after real traffic through every service
//! (a signed stock push, GetRate reads, an override, an incentive, a partner delivery),
//! `/metrics` passes `promtool check metrics`, every family has HELP and TYPE, and the
//! families operators ask for are there — rate changes by reason and category, card
//! publications, webhook and gRPC requests by status, build info, process figures.
//!
//! One test in this binary: the recorder is process-wide, and the figures asserted are
//! this app's.

use std::collections::BTreeSet;
use std::time::Duration;

use ratemesh::{IncentivesSettings, NotifierSettings};
use ratemesh_proto::v1;
use ratemesh_proto::v1::incentive_service_client::IncentiveServiceClient;
use ratemesh_proto::v1::override_service_client::OverrideServiceClient;
use ratemesh_runtime::Role;
use ratemesh_runtime::metrics::FAMILIES;
use ratemesh_testkit::{
    Bearer, Product, RedisServer, Sink, Stock, TestApp, eventually, promtool, test_settings,
};

/// Families that must be on the page, each with a label fragment its sample must carry.
const REQUIRED: &[(&str, &str)] = &[
    ("ratemesh_build_info", "version=\""),
    ("ratemesh_backend_connected", ""),
    ("process_cpu_seconds_total", ""),
    ("process_resident_memory_bytes", ""),
    ("process_open_fds", ""),
    ("process_start_time_seconds", ""),
    ("ratemesh_ingest_requests_total", "status=\"202\""),
    ("ratemesh_grpc_requests_total", "code=\"Ok\""),
    ("ratemesh_rates_cards_published_total", ""),
    ("ratemesh_rates_rate_changes_total", "reason=\"stock\""),
    ("ratemesh_rates_rate_changes_total", "reason=\"override\""),
    ("ratemesh_rates_rate_changes_total", "reason=\"incentive\""),
    (
        "ratemesh_notifier_deliveries_total",
        "outcome=\"delivered\"",
    ),
    ("ratemesh_notifier_delivery_lag_seconds_count", ""),
    ("ratemesh_stream_backlog_entries", ""),
    ("ratemesh_stream_dead_letter_entries", ""),
    ("ratemesh_incentives_transitions_total", ""),
];

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn after_real_traffic_the_exposition_passes_promtool_with_help_for_every_family() {
    // Before anything starts: a machine without promtool fails here, with the fix.
    promtool::path();

    let redis = RedisServer::start();
    let mut settings = test_settings();
    settings.telemetry.gauge_interval_ms = 100;
    settings
        .section_mut::<NotifierSettings>()
        .coalesce_window_ms = 100;
    settings.section_mut::<IncentivesSettings>().timer_poll_ms = 50;
    let app = TestApp::spawn_on_redis(&redis, settings).await;
    let sink = Sink::start().await;
    app.register_partner(
        "metrics-partner",
        &sink.url(),
        v1::PartnerFilter {
            categories: vec!["home".into()],
            ..Default::default()
        },
    )
    .await;

    // The ERP's signed webhook pushes: two home SKUs at 2 days of cover (scarce: 4 %).
    app.push_products(&[
        Product::new("MET-1", "home", "100", "40"),
        Product::new("MET-2", "home", "100", "40"),
    ])
    .await;
    app.push_stock(&[
        Stock::new("MET-1", "20").sequence(1).velocity("10"),
        Stock::new("MET-2", "20").sequence(1).velocity("10"),
    ])
    .await;
    app.wait_card("MET-1", |c| c.effective_rate == "0.04").await;
    app.wait_card("MET-2", |c| c.effective_rate == "0.04").await;

    // A merchandiser caps MET-1 below its rate: an override moves it.
    let channel = app.channel().await;
    OverrideServiceClient::with_interceptor(channel.clone(), Bearer::role(Role::Merchandiser))
        .set_override(v1::SetOverrideRequest {
            r#override: Some(v1::Override {
                scope: Some(v1::r#override::Scope::Sku("MET-1".into())),
                kind: v1::OverrideKind::Cap as i32,
                value: "0.03".into(),
                reason: "metrics test".into(),
                ..Default::default()
            }),
            replace_conflicting: false,
        })
        .await
        .expect("set override");
    app.wait_card("MET-1", |c| c.effective_rate == "0.03").await;

    // A manual incentive on MET-2: the bonus moves it.
    let mut a_minute = v1::TriggerIncentiveRequest::default()
        .duration
        .unwrap_or_default();
    a_minute.seconds = 60;
    IncentiveServiceClient::with_interceptor(channel, Bearer::role(Role::Merchandiser))
        .trigger_incentive(v1::TriggerIncentiveRequest {
            sku: "MET-2".into(),
            bonus_rate: "0.01".into(),
            duration: Some(a_minute),
            reason: "metrics test".into(),
            ..Default::default()
        })
        .await
        .expect("trigger incentive");
    app.wait_card("MET-2", |c| c.reasons.iter().any(|r| r.code == "INCENTIVE"))
        .await;

    // The partner hears of the changes.
    eventually(
        "a delivery to the partner",
        Duration::from_secs(20),
        || async { (!sink.accepted().is_empty()).then_some(()) },
    )
    .await;

    let page = eventually(
        "every required family on /metrics",
        Duration::from_secs(20),
        || async {
            let (status, page) = app.admin_get("/metrics").await;
            assert_eq!(status, 200, "{page}");
            REQUIRED
                .iter()
                .all(|(name, labels)| sample(&page, name, labels).is_some())
                .then_some(page)
        },
    )
    .await;
    app.stop().await.expect("clean stop");

    let checked = promtool::check_metrics(&page);
    assert!(
        checked.success,
        "promtool check metrics (exit {:?}):\n{}\n--- the page ---\n{page}",
        checked.code, checked.output
    );

    // Every family on the page declares HELP and TYPE, and every ratemesh family is in
    // the catalogue (so its HELP is the one operators read there).
    let helped = declared(&page, "# HELP ");
    let typed = declared(&page, "# TYPE ");
    let catalogued: BTreeSet<&str> = FAMILIES.iter().map(|f| f.name).collect();
    for family in families(&page) {
        assert!(helped.contains(family.as_str()), "{family} has no HELP");
        assert!(typed.contains(family.as_str()), "{family} has no TYPE");
        if family.starts_with("ratemesh_") {
            assert!(
                catalogued.contains(family.as_str()),
                "{family} is not in ratemesh_runtime::metrics::FAMILIES"
            );
        }
    }

    // What the traffic above must have counted.
    assert_eq!(
        sample(&page, "ratemesh_build_info", "version=\""),
        Some(1.0)
    );
    assert_eq!(sample(&page, "ratemesh_backend_connected", ""), Some(1.0));
    for reason in ["stock", "override", "incentive"] {
        let moved = sample(
            &page,
            "ratemesh_rates_rate_changes_total",
            &format!("category=\"home\",reason=\"{reason}\""),
        );
        assert!(
            moved.is_some_and(|n| n >= 1.0),
            "no home rate change by {reason}: {moved:?}"
        );
    }
    let published = sample(&page, "ratemesh_rates_cards_published_total", "").unwrap_or(0.0);
    assert!(
        published >= 4.0,
        "two first cards, a cap, an incentive: {published}"
    );
    let gets = sample(
        &page,
        "ratemesh_grpc_requests_total",
        "method=\"RateService/GetRate\",code=\"Ok\"",
    );
    assert!(gets.is_some_and(|n| n >= 1.0), "GetRate calls: {gets:?}");
    let pushes = sample(
        &page,
        "ratemesh_ingest_requests_total",
        "path=\"stock\",status=\"202\"",
    );
    assert!(pushes.is_some_and(|n| n >= 1.0), "stock pushes: {pushes:?}");
    let fds = sample(&page, "process_open_fds", "").unwrap_or(0.0);
    assert!(fds > 0.0, "open fds: {fds}");
}

/// The value of the first sample of `name` whose labels contain every comma-separated
/// fragment of `labels`, in any order.
fn sample(page: &str, name: &str, labels: &str) -> Option<f64> {
    page.lines()
        .filter(|line| !line.starts_with('#'))
        .filter_map(|line| {
            let rest = line.strip_prefix(name)?;
            let (labelset, value) = match rest.strip_prefix('{') {
                Some(rest) => rest.split_once("} ")?,
                None => ("", rest.strip_prefix(' ')?),
            };
            labels
                .split(',')
                .all(|fragment| labelset.contains(fragment))
                .then_some(value)
        })
        .find_map(|value| value.trim().parse().ok())
}

/// The family names a `# HELP` or `# TYPE` line declares.
fn declared<'a>(page: &'a str, prefix: &str) -> BTreeSet<&'a str> {
    page.lines()
        .filter_map(|line| line.strip_prefix(prefix)?.split_whitespace().next())
        .collect()
}

/// The family of every sample on the page (a histogram's series under its own name).
fn families(page: &str) -> BTreeSet<String> {
    let typed: BTreeSet<&str> = declared(page, "# TYPE ");
    page.lines()
        .filter(|line| !line.is_empty() && !line.starts_with('#'))
        .filter_map(|line| line.split(['{', ' ']).next())
        .map(|name| {
            ["_bucket", "_sum", "_count"]
                .iter()
                .find_map(|suffix| {
                    name.strip_suffix(suffix)
                        .filter(|base| typed.contains(base))
                })
                .unwrap_or(name)
                .to_owned()
        })
        .collect()
}
