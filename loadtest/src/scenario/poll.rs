//! `poll`: affiliate networks reading rates. Saturation (closed loop) of the echo
//! baseline, GetRate and BatchGetRates at each size, then GetRate and echo open-loop at
//! half the echo's saturation rate.

use std::sync::Arc;

use ratemesh_proto::v1::{self, rate_service_client::RateServiceClient};
use ratemesh_runtime::Role;

use super::RunConfig;
use crate::catalogue::{self, Sequences};
use crate::echo::{self, pb::echo_client::EchoClient};
use crate::load::{self, Shape};
use crate::recorder::Outcome;
use crate::report::Report;
use crate::target::{self, Target};
use crate::zipf::{SplitMix, Zipf};

/// Runs the scenario into `report`.
pub async fn run(config: &RunConfig, report: &mut Report) -> anyhow::Result<()> {
    let target = Target::start(&config.target).await?;
    report.target = target.description.clone();
    let result = measure(config, report, &target).await;
    target.stop().await?;
    result
}

async fn measure(config: &RunConfig, report: &mut Report, target: &Target) -> anyhow::Result<()> {
    let n = config.skus.unwrap_or(config.pick(100_000, 2_000));
    let seqs = Sequences::default();
    let started = std::time::Instant::now();
    catalogue::seed(target, n, 1000, 4, &seqs).await?;
    let computed =
        catalogue::wait_for_cards(target, n, std::time::Duration::from_secs(600)).await?;
    super::settle(target).await;
    report.figure("catalogue SKUs", n as f64, "SKUs");
    report.figure(
        "catalogue load + first compute",
        started.elapsed().as_secs_f64(),
        "s",
    );
    report.figure("  of which waiting for cards", computed.as_secs_f64(), "s");

    let channels = Arc::new(target.channels(config.connections).await?);
    let bearer = target.bearer(Role::Network);
    let zipf = Zipf::new(n, config.zipf);

    // The echo answers with a real card, so both sides move the same bytes.
    let sample = RateServiceClient::with_interceptor(channels[0].clone(), bearer.clone())
        .get_rate(v1::GetRateRequest {
            sku: catalogue::sku(0),
            as_of: None,
        })
        .await?
        .into_inner();
    let echo = echo::start(sample).await?;
    let echo_channels =
        Arc::new(target::channels(&echo.addr.to_string(), config.connections).await?);

    let echo_op = {
        let (channels, zipf) = (echo_channels.clone(), zipf.clone());
        move |i: u64| {
            let mut client = EchoClient::new(channels[i as usize % channels.len()].clone());
            let sku = catalogue::sku(zipf.sample(&mut SplitMix::new(i)));
            async move {
                match client
                    .get_rate(v1::GetRateRequest { sku, as_of: None })
                    .await
                {
                    Ok(_) => Outcome::Ok(1),
                    Err(s) => catalogue::status_outcome("echo", &s),
                }
            }
        }
    };
    let get_op = {
        let (channels, zipf, bearer) = (channels.clone(), zipf.clone(), bearer.clone());
        move |i: u64| {
            let mut client = RateServiceClient::with_interceptor(
                channels[i as usize % channels.len()].clone(),
                bearer.clone(),
            );
            let sku = catalogue::sku(zipf.sample(&mut SplitMix::new(i)));
            async move {
                match client
                    .get_rate(v1::GetRateRequest { sku, as_of: None })
                    .await
                {
                    Ok(r) if r.get_ref().card.is_some() => Outcome::Ok(1),
                    Ok(_) => Outcome::Error("GetRate answered without a card".into()),
                    Err(s) => catalogue::status_outcome("GetRate", &s),
                }
            }
        }
    };

    let c = config.concurrency;
    let t = report.elapsed_s();
    let r = load::closed_loop(
        &config.drive("echo saturation", c),
        config.duration,
        echo_op.clone(),
    )
    .await;
    let echo_sat = report.phase("echo saturation (baseline)", "closed", 0.0, c, t, &r);
    let t = report.elapsed_s();
    let r = load::closed_loop(
        &config.drive("GetRate saturation", c),
        config.duration,
        get_op.clone(),
    )
    .await;
    let get_sat = report.phase("GetRate saturation", "closed", 0.0, c, t, &r);

    let mut batch100 = None;
    for &size in &config.batch_sizes {
        if config.stopped() {
            break;
        }
        let op = {
            let (channels, zipf, bearer) = (channels.clone(), zipf.clone(), bearer.clone());
            move |i: u64| {
                let mut client = RateServiceClient::with_interceptor(
                    channels[i as usize % channels.len()].clone(),
                    bearer.clone(),
                );
                let mut rng = SplitMix::new(i.wrapping_mul(0x9E37));
                let skus = (0..size)
                    .map(|_| catalogue::sku(zipf.sample(&mut rng)))
                    .collect();
                async move {
                    match client
                        .batch_get_rates(v1::BatchGetRatesRequest { skus })
                        .await
                    {
                        Ok(r) => {
                            let results = r.into_inner().results;
                            let cards = results
                                .iter()
                                .filter(|r| {
                                    matches!(r.outcome, Some(v1::rate_result::Outcome::Card(_)))
                                })
                                .count();
                            if cards == size {
                                Outcome::Ok(size as u64)
                            } else {
                                Outcome::Error(format!(
                                    "BatchGetRates({size}) answered {cards} cards"
                                ))
                            }
                        }
                        Err(s) => catalogue::status_outcome("BatchGetRates", &s),
                    }
                }
            }
        };
        // Big batches need fewer in flight to saturate; keep the bytes in flight sane.
        let conc = if size >= 1000 { c.min(8) } else { c };
        let t = report.elapsed_s();
        let name = format!("BatchGetRates({size}) saturation");
        let r = load::closed_loop(&config.drive(&name, conc), config.duration, op).await;
        let s = report.phase(&name, "closed", 0.0, conc, t, &r);
        if size == 100 {
            batch100 = Some(s);
        }
    }

    // Open loop at half the echo's saturation: latency where neither side is saturated.
    let half = config
        .rate
        .unwrap_or((echo_sat.ops_per_sec / 2.0).max(config.pick(100.0, 50.0)));
    let shape = Shape::constant(half, config.duration);
    let open_c = (c * 4).max(64);
    let t = report.elapsed_s();
    let r = load::open_loop(&config.drive("echo open loop", open_c), &shape, echo_op).await;
    let echo_open = report.phase(
        "echo open loop @ 50% echo sat. (baseline)",
        "open",
        half,
        open_c,
        t,
        &r,
    );
    let t = report.elapsed_s();
    let r = load::open_loop(&config.drive("GetRate open loop", open_c), &shape, get_op).await;
    let get_open = report.phase(
        "GetRate open loop @ 50% echo sat.",
        "open",
        half,
        open_c,
        t,
        &r,
    );

    report.ratio(
        "GetRate throughput / echo throughput",
        ("GetRate ops/s", get_sat.ops_per_sec),
        ("echo ops/s", echo_sat.ops_per_sec),
        "what auth, metrics, tracing, load shedding and the replica lookup cost per call",
    );
    if let Some(b) = batch100 {
        report.ratio(
            "BatchGetRates(100) SKUs/s / GetRate SKUs/s",
            ("BatchGetRates(100) SKUs/s", b.items_per_sec),
            ("GetRate SKUs/s", get_sat.items_per_sec),
            "per-call overhead amortised over 100 SKUs; bounded by card encoding",
        );
    }
    report.ratio(
        "GetRate p99 / echo p99 at 50% of echo saturation",
        ("GetRate p99 ms", get_open.p99_ms),
        ("echo p99 ms", echo_open.p99_ms),
        "",
    );
    Ok(())
}
