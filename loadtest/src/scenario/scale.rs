//! `scale`: a large catalogue (1,000,000 SKUs by default; a few thousand in smoke mode).
//! Reports the load and first-compute time, the memory a rates replica needs per SKU and
//! how long a cold replica takes to load its snapshot (a second rates replica started on
//! the same Redis), and a full recompute (a multiplier override on every category).

use ratemesh::RatesSettings;
use std::time::{Duration, Instant, SystemTime};

use ratemesh::ServiceName;
use ratemesh_proto::v1::{
    self, override_service_client::OverrideServiceClient, rate_service_client::RateServiceClient,
};
use ratemesh_runtime::Role;
use ratemesh_testkit::TestApp;

use super::RunConfig;
use crate::catalogue::{self, CATEGORIES, Sequences};
use crate::report::Report;
use crate::target::{self, Target};

/// Runs the scenario into `report`.
pub async fn run(config: &RunConfig, report: &mut Report) -> anyhow::Result<()> {
    let target = Target::start(&config.target).await?;
    report.target = target.description.clone();
    let result = measure(config, report, &target).await;
    target.stop().await?;
    result
}

/// Resident memory of this process, from /proc (Linux).
fn rss_bytes() -> Option<u64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = status.lines().find(|l| l.starts_with("VmRSS:"))?;
    let kb: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kb * 1024)
}

/// Card versions of SKUs `0..n`, read 1,000 at a time.
async fn versions(target: &Target, n: usize) -> anyhow::Result<Vec<u64>> {
    let channel = target.channels(1).await?.remove(0);
    let client = RateServiceClient::with_interceptor(channel, target.bearer(Role::Network));
    let mut out = Vec::with_capacity(n);
    for from in (0..n).step_by(1000) {
        let to = (from + 1000).min(n);
        let answer = catalogue::until_admitted(|| {
            let mut client = client.clone();
            let request = v1::BatchGetRatesRequest {
                skus: (from..to).map(catalogue::sku).collect(),
            };
            async move { client.batch_get_rates(request).await }
        })
        .await?
        .into_inner();
        out.extend(answer.results.iter().map(|r| match &r.outcome {
            Some(v1::rate_result::Outcome::Card(c)) => c.version,
            _ => 0,
        }));
    }
    Ok(out)
}

async fn measure(config: &RunConfig, report: &mut Report, target: &Target) -> anyhow::Result<()> {
    let n = config.skus.unwrap_or(config.pick(1_000_000, 3_000));
    let seqs = Sequences::default();
    report.figure("catalogue SKUs", n as f64, "SKUs");
    let started = Instant::now();
    let applied = catalogue::seed(target, n, 1000, 4, &seqs).await?;
    let pushed = started.elapsed();
    report.figure(
        "products + stock pushed (gRPC, batches of 1,000)",
        pushed.as_secs_f64(),
        "s",
    );
    report.figure(
        "  stock updates accepted per second",
        n as f64 / pushed.as_secs_f64().max(1e-3),
        "updates/s",
    );
    report.check(
        "every seeded stock update applied",
        applied == n as u64,
        format!("{applied} of {n}"),
    );
    catalogue::wait_for_cards(target, n, Duration::from_secs(3600)).await?;
    let computed = started.elapsed();
    report.figure(
        "first card of every SKU computed",
        computed.as_secs_f64(),
        "s",
    );
    report.figure(
        "  SKUs computed per second (first compute)",
        n as f64 / computed.as_secs_f64().max(1e-3),
        "SKUs/s",
    );

    // The incentives and notifier groups may still be working through the seeding on
    // the same cores; the cold replica is timed and its memory read on a quiet process.
    let settling = Instant::now();
    super::settle(target).await;
    report.figure(
        "  every consumer group caught up after",
        settling.elapsed().as_secs_f64(),
        "s",
    );

    // What Redis holds per SKU once every card is computed: everything it stores (streams
    // included) over the catalogue, the streams apart, and one SKU's records.
    redis_memory(target, n, "", report).await;

    // A cold rates replica on the same keys: snapshot load time and memory per SKU.
    if let (Some(settings), Some(_)) = (&target.settings, &target.bus) {
        let mut settings = settings.clone();
        settings.section_mut::<RatesSettings>().consumer_name = "loadtest-cold-replica".into();
        let before = rss_bytes();
        let load_started = Instant::now();
        let replica = target
            .on_server(move || async move {
                let bus = ratemesh_runtime::backend::connect(&settings).await?;
                TestApp::try_spawn_services(settings, bus, &[ServiceName::Rates]).await
            })
            .await??;
        let addr = replica.grpc.to_string();
        ratemesh_testkit::wait_serving(&addr, Duration::from_secs(3600)).await?;
        let load = load_started.elapsed();
        let after = rss_bytes();
        report.figure(
            "cold replica: snapshot loaded and SERVING after",
            load.as_secs_f64(),
            "s",
        );
        report.figure(
            "  cards loaded per second",
            n as f64 / load.as_secs_f64().max(1e-3),
            "cards/s",
        );
        if let (Some(b), Some(a)) = (before, after) {
            report.figure(
                "cold replica: resident memory added",
                a.saturating_sub(b) as f64 / 1e6,
                "MB",
            );
            report.figure(
                "cold replica: memory per SKU",
                a.saturating_sub(b) as f64 / n as f64,
                "bytes/SKU",
            );
        }
        // The cold replica must serve the whole catalogue.
        let channel = target::channels(&addr, 1).await?.remove(0);
        let client = RateServiceClient::with_interceptor(channel, target.bearer(Role::Network));
        let last = catalogue::until_admitted(|| {
            let mut client = client.clone();
            let request = v1::BatchGetRatesRequest {
                skus: vec![catalogue::sku(0), catalogue::sku(n - 1)],
            };
            async move { client.batch_get_rates(request).await }
        })
        .await?
        .into_inner();
        let served = last
            .results
            .iter()
            .filter(|r| matches!(r.outcome, Some(v1::rate_result::Outcome::Card(_))))
            .count();
        report.check(
            "the cold replica serves the first and last SKU",
            served == 2,
            format!("{served} of 2"),
        );
        target.on_server(move || replica.try_stop()).await??;
    }

    // Full recompute: a multiplier override on every category moves every card.
    let before = versions(target, n).await?;
    let channel = target.channels(1).await?.remove(0);
    let mut client =
        OverrideServiceClient::with_interceptor(channel, target.bearer(Role::Merchandiser));
    let now = SystemTime::now();
    let started = Instant::now();
    // One category at a time: each SetOverride waits (up to
    // rates.override_recompute_timeout_ms) for its category's sweep.
    for category in CATEGORIES {
        client
            .set_override(v1::SetOverrideRequest {
                r#override: Some(v1::Override {
                    scope: Some(v1::r#override::Scope::Category(category.into())),
                    kind: v1::OverrideKind::Multiplier as i32,
                    value: "1.1".into(),
                    starts_at: Some(now.into()),
                    ends_at: Some((now + Duration::from_secs(86_400)).into()),
                    reason: "scale load test: full recompute".into(),
                    ..Default::default()
                }),
                replace_conflicting: true,
            })
            .await?;
    }
    let channel = target.channels(1).await?.remove(0);
    let reader = RateServiceClient::with_interceptor(channel, target.bearer(Role::Network));
    let mut from = 0;
    let deadline = Instant::now() + Duration::from_secs(3600);
    while from < n && Instant::now() < deadline && !config.stopped() {
        let to = (from + 1000).min(n);
        let answer = catalogue::until_admitted(|| {
            let mut client = reader.clone();
            let request = v1::BatchGetRatesRequest {
                skus: (from..to).map(catalogue::sku).collect(),
            };
            async move { client.batch_get_rates(request).await }
        })
        .await?
        .into_inner();
        let first_old = answer.results.iter().enumerate().position(|(k, r)| {
            !matches!(&r.outcome, Some(v1::rate_result::Outcome::Card(c)) if c.version > before[from + k])
        });
        match first_old {
            None => from = to,
            Some(k) => {
                from += k;
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        }
    }
    let took = started.elapsed();
    report.check(
        "the full recompute moved every card",
        from >= n,
        format!("{from} of {n} SKUs"),
    );
    report.figure(
        "full recompute (override on every category)",
        took.as_secs_f64(),
        "s",
    );
    report.figure(
        "  SKUs recomputed per second",
        n as f64 / took.as_secs_f64().max(1e-3),
        "SKUs/s",
    );
    // The same once every SKU has a superseded version in its history.
    redis_memory(target, n, " after the recompute", report).await;
    Ok(())
}

/// Reports Redis's memory per SKU (on a cluster, summed over the primaries, so every key
/// counts once), the streams' share of it (entries retention has not trimmed yet
/// included) and the `MEMORY USAGE` of one SKU's records.
async fn redis_memory(target: &Target, n: usize, when: &str, report: &mut Report) {
    let Some(redis) = &target.redis else { return };
    let over = if redis.cluster {
        " (primaries summed)"
    } else {
        ""
    };
    match crate::redis_baseline::memory(redis, &format!(":{}", catalogue::sku(n / 2))).await {
        Ok(memory) => {
            report.figure(
                &format!("redis: used_memory{over} per SKU{when}"),
                memory.used as f64 / n as f64,
                "bytes/SKU",
            );
            report.figure(
                "  of which streams (not yet trimmed to retention)",
                memory.streams as f64 / n as f64,
                "bytes/SKU",
            );
            for (key, bytes) in memory.records {
                let name = key.split("}:").nth(1).unwrap_or(&key).to_owned();
                report.figure(&format!("  redis: {name}"), bytes as f64, "bytes");
            }
        }
        Err(e) => eprintln!("reading redis memory failed: {e:#}"),
    }
}
