//! `ingest`: the ERP pushing stock. Saturation of signed webhook batches and of gRPC
//! PushStock, against pipelined XADD on the same Redis; on a Redis with replicas, the
//! webhook again with the other `redis.min_replica_acks` (0 or 1) on a second ingest;
//! then every accepted update must be consumed by the rates service (nothing lost).

use std::sync::Arc;
use std::time::Duration;

use anyhow::Context as _;
use ratemesh::ServiceName;
use ratemesh_contract::streams;
use ratemesh_proto::v1::inventory_ingest_client::InventoryIngestClient;
use ratemesh_runtime::Role;
use ratemesh_testkit::TestApp;

use super::RunConfig;
use crate::catalogue::{self, Sequences, StockItem, WebhookClient};
use crate::load;
use crate::recorder::{Outcome, Summary};
use crate::redis_baseline;
use crate::report::Report;
use crate::target::Target;
use crate::zipf::SplitMix;

/// Runs the scenario into `report`.
pub async fn run(config: &RunConfig, report: &mut Report) -> anyhow::Result<()> {
    let target = Target::start(&config.target).await?;
    report.target = target.description.clone();
    let result = measure(config, report, &target).await;
    target.stop().await?;
    result
}

/// A batch of `size` updates for consecutive SKUs starting at a spot given by `i`, each
/// with a fresh sequence and a new stock level.
pub fn batch(i: u64, size: usize, n: usize, seqs: &Sequences) -> Vec<StockItem> {
    let mut rng = SplitMix::new(i ^ 0xA5A5);
    let first = (i as usize).wrapping_mul(size) % n;
    (0..size)
        .map(|k| StockItem {
            sku: catalogue::sku((first + k) % n),
            on_hand: 10 + rng.next_u64() % 2000,
            sequence: seqs.next(),
        })
        .collect()
}

async fn measure(config: &RunConfig, report: &mut Report, target: &Target) -> anyhow::Result<()> {
    let n = config.skus.unwrap_or(config.pick(20_000, 1_000));
    let seqs = Arc::new(Sequences::default());
    catalogue::seed(target, n, 1000, 4, &seqs).await?;
    catalogue::wait_for_cards(target, n, Duration::from_secs(600)).await?;
    super::settle(target).await;
    let b = config.ingest_batch.max(1);
    let c = config.concurrency;
    let run_id = format!("{:x}", seqs.next());

    let redis = target.redis.as_ref().ok_or_else(|| {
        anyhow::anyhow!("the ingest baseline needs the target's redis (--redis or --redis-cluster)")
    })?;
    let spread = if redis.partitions > 1 {
        format!(", {} partition keys in turn", redis.partitions)
    } else {
        String::new()
    };
    let t = report.elapsed_s();
    let r = redis_baseline::xadd_pipelined(
        redis,
        &format!("xadd:{run_id}"),
        b,
        &config.drive("XADD pipelined", c.min(16)),
        config.duration,
    )
    .await?;
    let xadd = report.phase(
        &format!("XADD pipelined, depth {b}{spread} (baseline)"),
        "closed",
        0.0,
        c.min(16),
        t,
        &r,
    );

    // With replicas, the webhook phase runs again on a second ingest that differs only in
    // `redis.min_replica_acks` (1 if the target runs with 0, else 0).
    let acks = target
        .settings
        .as_ref()
        .map_or(0, |s| s.redis.min_replica_acks);
    let other = other_acks(report, target).await?;
    // The table shows 40 characters of a phase's name: short enough to tell them apart.
    let hook_name = |a: u32, second: &str| match other {
        Some(_) => format!("webhook batch {b}, acks {a}{second}"),
        None if a > 0 => format!("webhook POST /v1/stock, batch {b}, acks {a}"),
        None => format!("webhook POST /v1/stock, batch {b}"),
    };
    let hook = webhook_saturation(
        config,
        report,
        &WebhookClient::new(target),
        &hook_name(acks, ""),
        0,
        (n, &seqs, &run_id),
    )
    .await;
    if let Some(other) = other {
        super::settle(target).await;
        let name = hook_name(other, ", 2nd ingest");
        let other_hook =
            other_acks_phase(config, report, target, other, &name, (n, &seqs, &run_id)).await?;
        let (with, without) = if other > 0 {
            ((other, &other_hook), &hook)
        } else {
            ((acks, &hook), &other_hook)
        };
        report.ratio(
            &format!(
                "webhook ingest updates/s, min_replica_acks {} / min_replica_acks 0",
                with.0
            ),
            (
                &format!("acks {} updates/s", with.0),
                with.1.items_per_sec,
            ),
            ("acks 0 updates/s", without.items_per_sec),
            "each accepted push waits for WAIT on its partition's primary; ingest sends its acked appends on one connection (per primary on a cluster), which each WAIT holds until it returns",
        );
    }

    // A webhook phase leaves a stock backlog (ingest outruns the rates consumer and sheds
    // past `ingest.backlog_limit`): let it drain, so the next phase starts where the first
    // webhook phase did instead of being mostly shed.
    super::settle(target).await;
    let channels = Arc::new(target.channels(config.connections).await?);
    let op = {
        let (channels, bearer, seqs, run_id) = (
            channels.clone(),
            target.bearer(Role::Erp),
            seqs.clone(),
            run_id.clone(),
        );
        move |i: u64| {
            let mut client = InventoryIngestClient::with_interceptor(
                channels[i as usize % channels.len()].clone(),
                bearer.clone(),
            );
            let items = batch(i + (1 << 40), b, n, &seqs);
            let request = catalogue::stock_request(&format!("lt-{run_id}-g-{i}"), &items);
            async move {
                let answer = client.push_stock(request).await;
                match answer {
                    Ok(a) => {
                        let a = a.get_ref();
                        let counts = catalogue::Counts {
                            applied: u64::from(a.applied),
                            duplicate: u64::from(a.duplicate),
                            stale: u64::from(a.stale),
                        };
                        applied(Ok(counts), items.len())
                    }
                    Err(s) => catalogue::status_outcome("PushStock", &s),
                }
            }
        }
    };
    let t = report.elapsed_s();
    let r = load::closed_loop(
        &config.drive("gRPC PushStock saturation", c),
        config.duration,
        op,
    )
    .await;
    let grpc = report.phase(
        &format!("gRPC PushStock, batch {b}"),
        "closed",
        0.0,
        c,
        t,
        &r,
    );

    report.ratio(
        "ingest SKU updates/s / pipelined XADD entries/s",
        ("webhook updates/s", hook.items_per_sec),
        ("XADD entries/s", xadd.items_per_sec),
        "per update ingest reads the SKU's sequence record and runs an atomic state write + XADD; batches shed for backlog are not counted (shed column)",
    );
    report.ratio(
        "(gRPC) ingest SKU updates/s / pipelined XADD entries/s",
        ("PushStock updates/s", grpc.items_per_sec),
        ("XADD entries/s", xadd.items_per_sec),
        "",
    );

    // Nothing accepted may be lost: both stock consumers consume every accepted update.
    // How fast each drains the backlog the pushes left, with no ingest running, is the
    // consumers' own throughput.
    if let Some(bus) = &target.bus {
        let groups = [streams::groups::RATES, streams::groups::INCENTIVES];
        let mut backlog = Vec::new();
        for group in groups {
            backlog.push(bus.stream_stats(streams::STOCK, group).await?.backlog);
        }
        let drained = futures::future::join_all(
            groups.map(|g| super::drain(bus, streams::STOCK, g, Duration::from_secs(300))),
        )
        .await;
        for ((group, drained), backlog) in groups.iter().zip(&drained).zip(&backlog) {
            report.check(
                &format!("{group} consumed every accepted stock update"),
                drained.is_some(),
                drained.map_or("stock backlog still not empty after 300 s".into(), |d| {
                    format!(
                        "drained {backlog} entries {:.1} s after the last push",
                        d.as_secs_f64()
                    )
                }),
            );
        }
        if let [Some(rates), Some(incentives)] = drained[..] {
            report.figure(
                "stock backlog drain after last push",
                rates.as_secs_f64(),
                "s",
            );
            report.figure(
                "incentives stock backlog drain after last push",
                incentives.as_secs_f64(),
                "s",
            );
            let per_sec = |entries: u64, d: Duration| entries as f64 / d.as_secs_f64().max(1e-3);
            report.ratio(
                "(drain) rates consumer SKU updates/s / pipelined XADD entries/s",
                ("rates drain updates/s", per_sec(backlog[0], rates)),
                ("XADD entries/s", xadd.items_per_sec),
                "both stock consumers drain the backlog left by the pushes at once, with no ingest running",
            );
            report.ratio(
                "incentives consumer drain time / rates consumer drain time",
                ("incentives drain s", incentives.as_secs_f64()),
                ("rates drain s", rates.as_secs_f64()),
                "",
            );
        }
        let stats = bus
            .stream_stats(streams::STOCK, streams::groups::RATES)
            .await?;
        report.check(
            "no stock event dead-lettered",
            stats.dead_lettered_total == 0,
            format!("{} dead-lettered", stats.dead_lettered_total),
        );
    }
    Ok(())
}

/// The catalogue size, the sequence source and the run id that make batches unique.
type Batches<'a> = (usize, &'a Arc<Sequences>, &'a str);

/// Closed-loop signed batches to `webhook` for the configured duration; `offset` keeps
/// the batches apart from other phases'.
async fn webhook_saturation(
    config: &RunConfig,
    report: &mut Report,
    webhook: &WebhookClient,
    name: &str,
    offset: u64,
    (n, seqs, run_id): Batches<'_>,
) -> Summary {
    let b = config.ingest_batch.max(1);
    let c = config.concurrency;
    let op = {
        let (webhook, seqs, run_id) = (webhook.clone(), seqs.clone(), run_id.to_owned());
        move |i: u64| {
            let i = i + offset;
            let items = batch(i, b, n, &seqs);
            let body = catalogue::stock_json(&format!("lt-{run_id}-w-{i}"), &items);
            let webhook = webhook.clone();
            async move { applied(webhook.post("/v1/stock", body).await, items.len()) }
        }
    };
    let t = report.elapsed_s();
    let r = load::closed_loop(&config.drive(name, c), config.duration, op).await;
    report.phase(name, "closed", 0.0, c, t, &r)
}

/// The `redis.min_replica_acks` to compare the target's with (1 when it runs with 0,
/// else 0), when the target runs in this process on a Redis whose every primary has
/// enough replicas for both.
async fn other_acks(report: &mut Report, target: &Target) -> anyhow::Result<Option<u32>> {
    let (Some(settings), Some(_), Some(redis)) = (&target.settings, &target.bus, &target.redis)
    else {
        return Ok(None);
    };
    let acks = settings.redis.min_replica_acks;
    let other = u32::from(acks == 0);
    let replicas = redis.min_replicas().await?;
    report.figure(
        "redis replicas (fewest of any primary)",
        replicas as f64,
        "",
    );
    Ok((replicas >= u64::from(acks.max(other))).then_some(other))
}

/// The webhook phase against a second ingest service on the target's Redis, keys and
/// consumers, built with `redis.min_replica_acks = acks`.
async fn other_acks_phase(
    config: &RunConfig,
    report: &mut Report,
    target: &Target,
    acks: u32,
    name: &str,
    batches: Batches<'_>,
) -> anyhow::Result<Summary> {
    let (Some(settings), Some(bus)) = (&target.settings, &target.bus) else {
        anyhow::bail!("a second ingest needs the target in this process");
    };
    let mut settings = settings.clone();
    settings.redis.min_replica_acks = acks;
    let bus = bus.clone();
    let ingest = target
        .on_server(move || async move {
            TestApp::try_spawn_services(settings, bus, &[ServiceName::Ingest]).await
        })
        .await??;
    let phase = async {
        ratemesh_testkit::wait_serving(&ingest.grpc.to_string(), Duration::from_secs(30)).await?;
        let addr = ingest
            .http
            .context("the second ingest service bound no webhook port")?
            .to_string();
        let webhook = WebhookClient::at(&addr, &target.erp_secret);
        anyhow::Ok(webhook_saturation(config, report, &webhook, name, 1 << 41, batches).await)
    }
    .await;
    target.on_server(move || ingest.try_stop()).await??;
    phase
}

/// An accepted batch must account for every update: applied, or stale when a
/// concurrent batch carried a newer reading of the same SKU. Items are updates applied.
pub fn applied(answer: Result<catalogue::Counts, Outcome>, sent: usize) -> Outcome {
    match answer {
        Ok(c) if c.applied + c.stale == sent as u64 && c.duplicate == 0 => Outcome::Ok(c.applied),
        Ok(c) => Outcome::Error(format!(
            "batch of {sent} answered applied {} stale {} duplicate {}",
            c.applied, c.stale, c.duplicate
        )),
        Err(outcome) => outcome,
    }
}
