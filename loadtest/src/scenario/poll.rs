//! `poll`: affiliate networks reading rates. Saturation (closed loop) of the echo
//! baseline and GetRate, taking turns of a second so their ratio compares the same state
//! of the machine, then BatchGetRates at each size, through the tonic client; the echo,
//! GetRate and BatchGetRates(100) again, in turns, from pre-encoded requests whose answers
//! are not decoded ([`crate::raw_grpc`]: the server's share alone, the client's own
//! encoding and decoding off the shared cores); then GetRate and echo open-loop at half
//! the echo's saturation rate.

use std::sync::Arc;

use anyhow::Context as _;
use bytes::Bytes;
use prost::Message as _;
use ratemesh_proto::v1::{
    self, rate_service_client::RateServiceClient, rate_service_server::SERVICE_NAME,
};
use ratemesh_runtime::Role;

use super::RunConfig;
use crate::catalogue::{self, Sequences};
use crate::echo::{self, EchoServer, pb::echo_client::EchoClient};
use crate::load::{self, Shape};
use crate::raw_grpc::{self, RawClient, Unary};
use crate::recorder::{Outcome, Summary};
use crate::report::Report;
use crate::target::{self, Target};
use crate::zipf::{SplitMix, Zipf};

/// Pre-encoded GetRate requests the server-only phases cycle through.
const RAW_GET_POOL: usize = 4096;
/// Pre-encoded BatchGetRates(100) requests the server-only phases cycle through.
const RAW_BATCH_POOL: usize = 512;
/// The batch size of the server-only BatchGetRates phase (the one the ratio names).
const RAW_BATCH: usize = 100;
/// How long each phase compared in a ratio runs before the next takes its turn.
const TURN: std::time::Duration = std::time::Duration::from_secs(1);

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
    let sampler = RateServiceClient::with_interceptor(channels[0].clone(), bearer.clone());
    let sample = catalogue::until_admitted(|| {
        let mut client = sampler.clone();
        let request = v1::GetRateRequest {
            sku: catalogue::sku(0),
            as_of: None,
        };
        async move { client.get_rate(request).await }
    })
    .await?
    .into_inner();
    // Where ratemesh runs, so the baseline and the server it is compared with share the
    // same threads.
    let echo = target
        .on_server({
            let sample = sample.clone();
            move || echo::start(sample)
        })
        .await??;
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
    let mut r = load::closed_loops_in_turns(
        &config.drive("echo and GetRate saturation, in turns", c),
        config.duration,
        TURN,
        &[
            load::turn_op(echo_op.clone()),
            load::turn_op(get_op.clone()),
        ],
    )
    .await
    .into_iter();
    let (echo_r, get_r) = (r.next().expect("echo"), r.next().expect("GetRate"));
    let echo_sat = report.phase("echo saturation (baseline)", "closed", 0.0, c, t, &echo_r);
    let get_sat = report.phase("GetRate saturation", "closed", 0.0, c, t, &get_r);

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

    let raw = if config.stopped() {
        None
    } else {
        Some(server_only(config, report, target, &echo, &sample, &zipf).await?)
    };

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
            "per-call overhead amortised over 100 SKUs; through this client, bounded by decoding the cards",
        );
    }
    if let Some(raw) = raw {
        report.ratio(
            "GetRate throughput / echo throughput (server only: pre-encoded requests, responses not decoded)",
            ("GetRate ops/s", raw.get.ops_per_sec),
            ("echo ops/s", raw.echo.ops_per_sec),
            "the same, with the client's encoding and decoding off the shared cores",
        );
        if let Some(b) = raw.batch100 {
            report.ratio(
                "BatchGetRates(100) SKUs/s / GetRate SKUs/s (server only: pre-encoded requests, responses not decoded)",
                ("BatchGetRates(100) SKUs/s", b.items_per_sec),
                ("GetRate SKUs/s", raw.get.items_per_sec),
                "the same, with the client's encoding and decoding off the shared cores",
            );
        }
    }
    report.ratio(
        "GetRate p99 / echo p99 at 50% of echo saturation",
        ("GetRate p99 ms", get_open.p99_ms),
        ("echo p99 ms", echo_open.p99_ms),
        "",
    );
    Ok(())
}

/// Saturation of the server-only phases.
struct ServerOnly {
    echo: Summary,
    get: Summary,
    batch100: Option<Summary>,
}

/// One raw call of `what` carrying `items` SKUs, for the closed loop.
async fn raw_call(
    client: Arc<RawClient>,
    method: Arc<Unary>,
    n: u64,
    frame: Bytes,
    what: &'static str,
    items: u64,
) -> Outcome {
    match client.call(n as usize, &method, frame).await {
        Ok(_) => Outcome::Ok(items),
        Err(failure) => failure.outcome(what),
    }
}

/// The echo, GetRate and BatchGetRates(100) saturations again, from pools of pre-encoded
/// requests for the same Zipf-sampled SKUs, over raw HTTP/2 connections whose answers
/// are counted, not decoded. Before measuring, one raw answer of each method is decoded
/// and compared with what the tonic client got, so the phases are known to make the
/// same calls.
async fn server_only(
    config: &RunConfig,
    report: &mut Report,
    target: &Target,
    echo: &EchoServer,
    sample: &v1::GetRateResponse,
    zipf: &Zipf,
) -> anyhow::Result<ServerOnly> {
    let key = target.api_key(Role::Network);
    let echo_addr = echo.addr.to_string();
    let ratemesh = Arc::new(
        RawClient::connect(&target.grpc, config.connections)
            .await
            .context("raw connections to ratemesh")?,
    );
    let echo_client = Arc::new(
        RawClient::connect(&echo_addr, config.connections)
            .await
            .context("raw connections to the echo")?,
    );
    // The same headers to both servers: they differ in the path alone.
    let get = Arc::new(Unary::new(
        &target.grpc,
        &format!("/{SERVICE_NAME}/GetRate"),
        Some(key),
    )?);
    let batch = Arc::new(Unary::new(
        &target.grpc,
        &format!("/{SERVICE_NAME}/BatchGetRates"),
        Some(key),
    )?);
    let echo_get = Arc::new(Unary::new(
        &echo_addr,
        &format!("/{}/GetRate", echo::pb::echo_server::SERVICE_NAME),
        Some(key),
    )?);
    let get_pool: Arc<Vec<Bytes>> = Arc::new(
        (0..RAW_GET_POOL as u64)
            .map(|i| {
                let sku = catalogue::sku(zipf.sample(&mut SplitMix::new(i)));
                raw_grpc::frame(&v1::GetRateRequest { sku, as_of: None })
            })
            .collect(),
    );
    let batch_pool: Arc<Vec<Bytes>> = Arc::new(
        (0..RAW_BATCH_POOL as u64)
            .map(|i| {
                let mut rng = SplitMix::new(i.wrapping_mul(0x9E37));
                let skus = (0..RAW_BATCH)
                    .map(|_| catalogue::sku(zipf.sample(&mut rng)))
                    .collect();
                raw_grpc::frame(&v1::BatchGetRatesRequest { skus })
            })
            .collect(),
    );

    // Outside the measured loop: one answer of each, decoded and compared.
    let expected = sample.encode_to_vec();
    let sku0 = raw_grpc::frame(&v1::GetRateRequest {
        sku: catalogue::sku(0),
        as_of: None,
    });
    for (what, client, method) in [
        ("GetRate", &ratemesh, &get),
        ("echo", &echo_client, &echo_get),
    ] {
        let (ok, detail) = match client.call_keeping_body(0, method, sku0.clone()).await {
            Err(failure) => (false, format!("{failure:?}")),
            Ok(body) => match raw_grpc::unframe(&body) {
                Err(e) => (false, format!("{e:#}")),
                Ok(message) if message == expected.as_slice() => {
                    (true, format!("byte-identical, {} bytes", message.len()))
                }
                Ok(message) => match v1::GetRateResponse::decode(message) {
                    Ok(decoded) if decoded == *sample => (
                        true,
                        format!(
                            "same message, encoded differently ({} bytes raw, {} re-encoded)",
                            message.len(),
                            expected.len()
                        ),
                    ),
                    Ok(decoded) => (false, format!("raw {decoded:?} != tonic {sample:?}")),
                    Err(e) => (false, format!("raw answer does not decode: {e}")),
                },
            },
        };
        report.check(
            &format!(
                "raw {what} answer for {} equals the tonic client's",
                catalogue::sku(0)
            ),
            ok,
            detail,
        );
    }
    report.figure(
        "GetRate answer, one gRPC message",
        expected.len() as f64,
        "bytes",
    );
    let (ok, detail) = match ratemesh
        .call_keeping_body(0, &batch, batch_pool[0].clone())
        .await
    {
        Err(failure) => (false, format!("{failure:?}")),
        Ok(body) => {
            match raw_grpc::unframe(&body).and_then(|m| Ok(v1::BatchGetRatesResponse::decode(m)?)) {
                Err(e) => (false, format!("{e:#}")),
                Ok(answer) => {
                    let cards = answer
                        .results
                        .iter()
                        .filter(|r| matches!(r.outcome, Some(v1::rate_result::Outcome::Card(_))))
                        .count();
                    report.figure(
                        &format!("BatchGetRates({RAW_BATCH}) answer, one gRPC message"),
                        (body.len() - 5) as f64,
                        "bytes",
                    );
                    (cards == RAW_BATCH, format!("{cards} cards"))
                }
            }
        }
    };
    report.check(
        &format!("raw BatchGetRates({RAW_BATCH}) answer holds a card per SKU"),
        ok,
        detail,
    );

    let c = config.concurrency;
    let raw_op =
        |client: &Arc<RawClient>, method: &Arc<Unary>, pool: &Arc<Vec<Bytes>>, what, items| {
            let (client, method, pool) = (client.clone(), method.clone(), pool.clone());
            load::turn_op(move |i: u64| {
                let frame = pool[i as usize % pool.len()].clone();
                raw_call(client.clone(), method.clone(), i, frame, what, items)
            })
        };
    let ops = [
        raw_op(&echo_client, &echo_get, &get_pool, "raw echo", 1),
        raw_op(&ratemesh, &get, &get_pool, "raw GetRate", 1),
        raw_op(
            &ratemesh,
            &batch,
            &batch_pool,
            "raw BatchGetRates",
            RAW_BATCH as u64,
        ),
    ];
    let t = report.elapsed_s();
    let name = format!("raw echo, GetRate and BatchGetRates({RAW_BATCH}) saturation, in turns");
    let mut r = load::closed_loops_in_turns(&config.drive(&name, c), config.duration, TURN, &ops)
        .await
        .into_iter();
    let (echo_r, get_r, batch_r) = (
        r.next().expect("echo"),
        r.next().expect("GetRate"),
        r.next().expect("BatchGetRates"),
    );
    let echo_sat = report.phase(
        "raw echo saturation (baseline)",
        "closed",
        0.0,
        c,
        t,
        &echo_r,
    );
    let get_sat = report.phase("raw GetRate saturation", "closed", 0.0, c, t, &get_r);
    let name = format!("raw BatchGetRates({RAW_BATCH}) saturation");
    let batch100 = (!config.stopped()).then(|| report.phase(&name, "closed", 0.0, c, t, &batch_r));
    Ok(ServerOnly {
        echo: echo_sat,
        get: get_sat,
        batch100,
    })
}
