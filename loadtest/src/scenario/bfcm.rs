//! `bfcm`: the Black Friday shape, everything at once — an ERP storm on the webhook,
//! networks polling (GetRate and BatchGetRates) with a ramp, merchandisers setting
//! overrides and triggering flash incentives, partner deliveries to a sink, and the peak
//! window opening in the middle (a recompute of every SKU).

use std::sync::Arc;
use std::time::{Duration, SystemTime};

use ratemesh_contract::streams;
use ratemesh_proto::v1::{
    self, incentive_service_client::IncentiveServiceClient,
    override_service_client::OverrideServiceClient, rate_service_client::RateServiceClient,
};
use ratemesh_runtime::Role;

use super::RunConfig;
use crate::catalogue::{self, Sequences, WebhookClient};
use crate::load::{self, Shape};
use crate::recorder::Outcome;
use crate::report::Report;
use crate::target::{InProcess, Target, TargetSpec};
use crate::zipf::{SplitMix, Zipf};

/// Runs the scenario into `report`.
pub async fn run(config: &RunConfig, report: &mut Report) -> anyhow::Result<()> {
    let length = config.duration * 5;
    // The peak window opens 40 % into the load, counted from after seeding, which takes
    // roughly a second per 10,000 SKUs here; a late or early opening is still measured.
    let n = config.skus.unwrap_or(config.pick(20_000, 1_000));
    let seed_guess = Duration::from_secs_f64(2.0 + n as f64 / 5_000.0);
    let peak_in = seed_guess + length.mul_f64(0.4);
    let peak_at = chrono::Utc::now() + chrono::Duration::from_std(peak_in)?;
    let spec = match &config.target {
        TargetSpec::InProcess(spec) => TargetSpec::InProcess(InProcess {
            peak_at: Some(peak_at),
            ..spec.clone()
        }),
        external => external.clone(),
    };
    let peak = matches!(spec, TargetSpec::InProcess(_)).then_some(peak_at);
    let target = Target::start(&spec).await?;
    report.target = target.description.clone();
    let result = measure(config, report, &target, n, length, peak).await;
    target.stop().await?;
    result
}

fn has_peak(card: &v1::RateCard) -> bool {
    card.reasons
        .iter()
        .any(|r| r.code.eq_ignore_ascii_case("peak_window"))
}

async fn measure(
    config: &RunConfig,
    report: &mut Report,
    target: &Target,
    n: usize,
    length: Duration,
    peak: Option<chrono::DateTime<chrono::Utc>>,
) -> anyhow::Result<()> {
    let seqs = Arc::new(Sequences::default());
    catalogue::seed(target, n, 1000, 4, &seqs).await?;
    catalogue::wait_for_cards(target, n, Duration::from_secs(600)).await?;
    // Incentives keeps its own view of products from the stock stream: let it catch up
    // too, or a hand-triggered incentive may name a SKU it has not seen yet.
    if let Some(bus) = &target.bus {
        super::drain(
            bus,
            streams::STOCK,
            streams::groups::INCENTIVES,
            Duration::from_secs(600),
        )
        .await;
    }
    let sink = crate::sink::Sink::start(target, "loadtest-bfcm").await?;
    let channels = Arc::new(target.channels(config.connections).await?);
    let zipf = Zipf::new(n, config.zipf);
    let c = config.concurrency;

    let poll_rate = config.rate.unwrap_or(config.pick(2_000.0, 40.0));
    let erp_rate = config.pick(20.0, 4.0); // batches/s before the storm
    let b = config.ingest_batch.max(1);
    let (l3, l4) = (length.mul_f64(0.3), length.mul_f64(0.4));
    let poll_shape = Shape::constant(0.0, Duration::ZERO)
        .then_ramp(poll_rate * 0.2, poll_rate, l3)
        .then(poll_rate, l4)
        .then_ramp(poll_rate, poll_rate * 0.5, l3);
    let batch_shape = Shape::constant(0.0, Duration::ZERO)
        .then_ramp(poll_rate * 0.01, poll_rate * 0.05, l3)
        .then(poll_rate * 0.05, l4)
        .then_ramp(poll_rate * 0.05, poll_rate * 0.025, l3);
    let erp_shape = Shape::constant(erp_rate, l3)
        .then(erp_rate * 4.0, l4)
        .then(erp_rate, l3);
    let merch_shape = Shape::constant(config.pick(2.0, 2.0), length);
    let flash_shape = Shape::constant(config.pick(1.0, 1.0), length);

    let get_op = {
        let (channels, zipf, bearer) =
            (channels.clone(), zipf.clone(), target.bearer(Role::Network));
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
                    Ok(_) => Outcome::Ok(1),
                    Err(s) => catalogue::status_outcome("GetRate", &s),
                }
            }
        }
    };
    let batch_op = {
        let (channels, zipf, bearer) =
            (channels.clone(), zipf.clone(), target.bearer(Role::Network));
        move |i: u64| {
            let mut client = RateServiceClient::with_interceptor(
                channels[i as usize % channels.len()].clone(),
                bearer.clone(),
            );
            let mut rng = SplitMix::new(i ^ 0xB17);
            let skus = (0..100)
                .map(|_| catalogue::sku(zipf.sample(&mut rng)))
                .collect();
            async move {
                match client
                    .batch_get_rates(v1::BatchGetRatesRequest { skus })
                    .await
                {
                    Ok(r) => Outcome::Ok(r.get_ref().results.len() as u64),
                    Err(s) => catalogue::status_outcome("BatchGetRates", &s),
                }
            }
        }
    };
    let erp_op = {
        let (webhook, seqs) = (WebhookClient::new(target), seqs.clone());
        let run_id = format!("{:x}", seqs.next());
        move |i: u64| {
            let items = super::ingest::batch(i, b, n, &seqs);
            let body = catalogue::stock_json(&format!("lt-{run_id}-bfcm-{i}"), &items);
            let webhook = webhook.clone();
            async move { super::ingest::applied(webhook.post("/v1/stock", body).await, items.len()) }
        }
    };
    let merch_op = {
        let (channels, bearer) = (channels.clone(), target.bearer(Role::Merchandiser));
        move |i: u64| {
            let mut client =
                OverrideServiceClient::with_interceptor(channels[0].clone(), bearer.clone());
            let now = SystemTime::now();
            let sku = catalogue::sku((i as usize * 7_919 + 13) % n);
            async move {
                let request = v1::SetOverrideRequest {
                    r#override: Some(v1::Override {
                        scope: Some(v1::r#override::Scope::Sku(sku)),
                        kind: v1::OverrideKind::Multiplier as i32,
                        value: "1.2".into(),
                        starts_at: Some(now.into()),
                        ends_at: Some((now + Duration::from_secs(3600)).into()),
                        reason: "bfcm load test".into(),
                        ..Default::default()
                    }),
                    replace_conflicting: true,
                };
                match client.set_override(request).await {
                    Ok(_) => Outcome::Ok(1),
                    Err(s) => catalogue::status_outcome("SetOverride", &s),
                }
            }
        }
    };
    let flash_op = {
        let (channels, bearer) = (channels.clone(), target.bearer(Role::Merchandiser));
        move |i: u64| {
            let mut client =
                IncentiveServiceClient::with_interceptor(channels[0].clone(), bearer.clone());
            let sku = catalogue::sku((i as usize * 104_729 + 7) % n);
            async move {
                let request = v1::TriggerIncentiveRequest {
                    sku,
                    bonus_rate: "0.01".into(),
                    duration: Some(prost_types::Duration {
                        seconds: 3600,
                        nanos: 0,
                    }),
                    reason: "bfcm load test".into(),
                    ..Default::default()
                };
                match client.trigger_incentive(request).await {
                    Ok(_) => Outcome::Ok(1),
                    // Guardrails (budget, cooldown, concurrency) refusing is designed
                    // behaviour: counted with shedding, not as an error.
                    Err(s) if s.code() == tonic::Code::FailedPrecondition => Outcome::Shed,
                    Err(s) => catalogue::status_outcome("TriggerIncentive", &s),
                }
            }
        }
    };

    // The peak sweep: from the window's start until every SKU's card is a peak card.
    let sweep = {
        let channel = channels[0].clone();
        let bearer = target.bearer(Role::Network);
        let stop = config.stop.clone();
        async move {
            let at = peak?;
            let wait = (at - chrono::Utc::now()).to_std().unwrap_or_default();
            tokio::select! {
                () = tokio::time::sleep(wait) => {}
                () = stop.cancelled() => return None,
            }
            let mut client = RateServiceClient::with_interceptor(channel, bearer);
            let mut from = 0;
            let deadline = tokio::time::Instant::now() + Duration::from_secs(600);
            while from < n && tokio::time::Instant::now() < deadline && !stop.is_cancelled() {
                let to = (from + 1000).min(n);
                let Ok(answer) = client
                    .batch_get_rates(v1::BatchGetRatesRequest {
                        skus: (from..to).map(catalogue::sku).collect(),
                    })
                    .await
                else {
                    tokio::time::sleep(Duration::from_millis(20)).await;
                    continue;
                };
                let first_old = answer.into_inner().results.iter().position(|r| {
                    !matches!(&r.outcome, Some(v1::rate_result::Outcome::Card(c)) if has_peak(c))
                });
                match first_old {
                    None => from = to,
                    Some(k) => {
                        from += k;
                        tokio::time::sleep(Duration::from_millis(20)).await;
                    }
                }
            }
            let done = chrono::Utc::now();
            Some((from >= n, (done - at).to_std().unwrap_or_default()))
        }
    };

    let t = report.elapsed_s();
    let drives = [
        config.drive("networks: GetRate", (c * 8).max(256)),
        config.drive("networks: BatchGetRates(100)", c.max(64)),
        config.drive("ERP storm (webhook)", c.max(64)),
        config.drive("merchandisers: SetOverride", 16),
        config.drive("merchandisers: TriggerIncentive", 16),
    ];
    let (get, batch, erp, merch, flash, sweep) = tokio::join!(
        load::open_loop(&drives[0], &poll_shape, get_op),
        load::open_loop(&drives[1], &batch_shape, batch_op),
        load::open_loop(&drives[2], &erp_shape, erp_op),
        load::open_loop(&drives[3], &merch_shape, merch_op),
        load::open_loop(&drives[4], &flash_shape, flash_op),
        sweep,
    );
    report.phase(
        "networks: GetRate (ramp)",
        "open",
        poll_shape.peak(),
        (c * 8).max(256),
        t,
        &get,
    );
    report.phase(
        "networks: BatchGetRates(100) (ramp)",
        "open",
        batch_shape.peak(),
        c.max(64),
        t,
        &batch,
    );
    let erp = report.phase(
        &format!("ERP storm: webhook batches of {b}"),
        "open",
        erp_shape.peak(),
        c.max(64),
        t,
        &erp,
    );
    report.phase(
        "merchandisers: SetOverride",
        "open",
        merch_shape.peak(),
        16,
        t,
        &merch,
    );
    let flash = report.phase(
        "merchandisers: TriggerIncentive",
        "open",
        flash_shape.peak(),
        16,
        t,
        &flash,
    );
    report.figure(
        "ERP stock updates applied/s",
        erp.items_per_sec,
        "updates/s",
    );
    report.figure(
        "incentive triggers refused by guardrails",
        flash.shed as f64,
        "calls",
    );

    match (peak, sweep) {
        (Some(_), Some((complete, took))) => {
            report.figure(
                "peak window: every SKU recomputed after",
                took.as_secs_f64(),
                "s",
            );
            report.figure(
                "peak window: SKUs recomputed per second",
                n as f64 / took.as_secs_f64().max(1e-3),
                "SKUs/s",
            );
            report.check(
                "peak window recomputed every SKU",
                complete,
                format!("{n} SKUs"),
            );
        }
        (Some(_), None) => report.check(
            "peak window recomputed every SKU",
            config.stopped(),
            "interrupted before the window opened",
        ),
        (None, _) => report.figure("peak window (external target: not controlled)", 0.0, ""),
    }
    if let Some(bus) = &target.bus {
        let drained = super::drain(
            bus,
            streams::STOCK,
            streams::groups::RATES,
            Duration::from_secs(300),
        )
        .await;
        report.check(
            "rates consumed every accepted stock update",
            drained.is_some(),
            "stock backlog reached zero",
        );
        let rates = super::drain(
            bus,
            streams::RATES,
            streams::groups::NOTIFIER,
            Duration::from_secs(300),
        )
        .await;
        report.check(
            "notifier consumed every rate change",
            rates.is_some(),
            "rates backlog reached zero",
        );
    }
    let (posts, rates, incentives) = sink.counts();
    report.figure("partner deliveries (POSTs)", posts as f64, "POSTs");
    report.figure("rates delivered to the partner", rates as f64, "rates");
    report.figure(
        "incentive deliveries to the partner",
        incentives as f64,
        "POSTs",
    );
    report.check(
        "the partner received deliveries",
        posts > 0,
        format!("{posts} POSTs with {rates} rates"),
    );
    Ok(())
}
