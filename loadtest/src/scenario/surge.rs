//! `surge`: steady load, a step to 10× for a while, then steady again. GetRate calls
//! carry a deadline (`--client-timeout-ms`) as a network's client's would, and are
//! summarised per part of the shape by scheduled time: the steady p99 before the step;
//! during the step what was served and its p99, what was refused (RESOURCE_EXHAUSTED or
//! UNAVAILABLE) and how fast, and what failed (a missed deadline is a failure, never
//! "served"). The target: served p99 during the step ≤ 10× the steady p99, and
//! refusals answered within 5 ms at p99, counted from the send: from the schedule, a
//! refusal is also charged the load generator's own lateness on the cores it shares with
//! the server, which no remote client would see. Also reports webhook shedding (429,
//! 503), the stock and rates backlogs over time, and how long the backlog takes to drain
//! after the step ends.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::Context as _;
use bytes::Bytes;
use futures::future::Either;
use prost::Message as _;
use ratemesh_contract::streams;
use ratemesh_proto::v1::{
    self, rate_service_client::RateServiceClient, rate_service_server::SERVICE_NAME,
};
use ratemesh_runtime::Role;

use super::RunConfig;
use crate::catalogue::{self, Sequences, WebhookClient};
use crate::load::{self, Shape};
use crate::raw_grpc::{self, Failure, RawClient, Unary};
use crate::recorder::{Outcome, Recorder, WindowSummary};
use crate::report::Report;
use crate::target::Target;
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
    let n = config.skus.unwrap_or(config.pick(20_000, 1_000));
    let seqs = Arc::new(Sequences::default());
    catalogue::seed(target, n, 1000, 4, &seqs).await?;
    catalogue::wait_for_cards(target, n, Duration::from_secs(600)).await?;
    super::settle(target).await;
    let channels = Arc::new(target.channels(config.connections).await?);
    let zipf = Zipf::new(n, config.zipf);
    let b = config.ingest_batch.max(1);
    let poll = config.rate.unwrap_or(config.pick(1_000.0, 20.0));
    let erp = config.pick(10.0, 2.0); // batches/s
    let (before, step, after) = (config.duration, config.duration * 2, config.duration * 2);
    let shape = |r: f64| {
        Shape::constant(r, before)
            .then(r * 10.0, step)
            .then(r, after)
    };

    // Refusals that were UNAVAILABLE rather than RESOURCE_EXHAUSTED (a transport failure
    // would show here too).
    let unavailable = Arc::new(AtomicU64::new(0));
    let deadline = config.client_timeout;
    let calls = RawCalls::prepare(target, n, deadline)?;
    let raw = if config.raw_client {
        Some(RawGet::connect(config, target, &calls).await?)
    } else {
        None
    };
    // The probe's share of the schedule is taken out of the load generator's, so the
    // offered load is the same with it.
    let probe = Probe::start(
        target,
        &calls,
        zipf.clone(),
        unavailable.clone(),
        config.drive("GetRate probe", PROBE_IN_FLIGHT),
        shape(poll * PROBE_SHARE),
    )?;
    let get_op = {
        let (channels, zipf, bearer, unavailable) = (
            channels.clone(),
            zipf.clone(),
            target.bearer(Role::Network),
            unavailable.clone(),
        );
        move |i: u64| {
            let rank = zipf.sample(&mut SplitMix::new(i));
            let unavailable = unavailable.clone();
            if let Some(raw) = &raw {
                let (client, method, frame) = (
                    raw.client.clone(),
                    raw.method.clone(),
                    raw.frames[rank].clone(),
                );
                return Either::Left(async move {
                    let answer =
                        tokio::time::timeout(deadline, client.call(i as usize, &method, frame))
                            .await;
                    raw_outcome(answer, deadline, &unavailable)
                });
            }
            let mut client = RateServiceClient::with_interceptor(
                channels[i as usize % channels.len()].clone(),
                bearer.clone(),
            );
            let sku = catalogue::sku(rank);
            Either::Right(async move {
                let mut request = tonic::Request::new(v1::GetRateRequest { sku, as_of: None });
                // Sent as grpc-timeout; tonic's channel also gives up when it passes.
                request.set_timeout(deadline);
                // And a body that never ends is cut off at the same deadline.
                match tokio::time::timeout(deadline, client.get_rate(request)).await {
                    Ok(Ok(r)) if r.get_ref().card.is_some() => Outcome::Ok(1),
                    Ok(Ok(_)) => Outcome::Error("GetRate answered without a card".into()),
                    Ok(Err(s)) => {
                        if s.code() == tonic::Code::Unavailable {
                            unavailable.fetch_add(1, Ordering::Relaxed);
                        }
                        catalogue::deadline_outcome("GetRate", &s, deadline)
                    }
                    Err(_) => no_answer(deadline),
                }
            })
        }
    };
    let erp_op = {
        let (webhook, seqs) = (WebhookClient::new(target), seqs.clone());
        let run_id = format!("{:x}", seqs.next());
        move |i: u64| {
            let items = super::ingest::batch(i, b, n, &seqs);
            let body = catalogue::stock_json(&format!("lt-{run_id}-surge-{i}"), &items);
            let webhook = webhook.clone();
            async move { super::ingest::applied(webhook.post("/v1/stock", body).await, items.len()) }
        }
    };

    // Backlog samples every 250 ms while the load runs.
    let samples: Arc<Mutex<Vec<(f64, u64, u64)>>> = Arc::default();
    let sampler = target.bus.clone().map(|bus| {
        let samples = samples.clone();
        tokio::spawn(async move {
            let start = tokio::time::Instant::now();
            loop {
                let stock = bus
                    .stream_stats(streams::STOCK, streams::groups::RATES)
                    .await
                    .map(|s| s.backlog)
                    .unwrap_or(0);
                let rates = bus
                    .stream_stats(streams::RATES, streams::groups::NOTIFIER)
                    .await
                    .map(|s| s.backlog)
                    .unwrap_or(0);
                samples
                    .lock()
                    .expect("lock")
                    .push((start.elapsed().as_secs_f64(), stock, rates));
                tokio::time::sleep(Duration::from_millis(250)).await;
            }
        })
    });
    let c = config.concurrency;
    // Enough GetRate slots for every call the step can have in flight until its deadline,
    // so the client's own cap never delays a send and what a refusal costs is the
    // server's: a call waiting for a slot would be charged the wait.
    let get_in_flight =
        ((poll * 10.0 * deadline.as_secs_f64() * 1.25).ceil() as usize).max((c * 16).max(512));
    let t = report.elapsed_s();
    let (get_drive, erp_drive) = (
        config.drive("GetRate steady → 10×", get_in_flight),
        config.drive("ERP steady → 10×", (c * 4).max(256)),
    );
    let (get_shape, erp_shape) = (shape(poll * (1.0 - PROBE_SHARE)), shape(erp));
    let (get, erp_r, probe) = tokio::join!(
        load::open_loop(&get_drive, &get_shape, get_op),
        load::open_loop(&erp_drive, &erp_shape, erp_op),
        probe.run(),
    );
    let probe = probe?;
    let step_end = (before + step).as_secs_f64();
    // By scheduled time: steady (after warm-up), the step, steady again.
    let windows = get.0.windows();
    let get = report.phase(
        if config.raw_client {
            "GetRate over raw HTTP/2 (pre-encoded, answers not decoded), steady -> 10x -> steady"
        } else {
            "GetRate, steady -> 10x -> steady"
        },
        "open",
        poll * 10.0,
        get_in_flight,
        t,
        &get,
    );
    let erp_s = report.phase(
        &format!("ERP webhook batches of {b}, steady -> 10x -> steady"),
        "open",
        erp * 10.0,
        (c * 4).max(256),
        t,
        &erp_r,
    );
    let probe_windows = probe.0.windows();
    report.phase(
        "GetRate from the probe (a client with a thread of its own), steady -> 10x -> steady",
        "open",
        poll * PROBE_SHARE * 10.0,
        PROBE_IN_FLIGHT,
        t,
        &probe,
    );
    report.figure("GetRate shed during the run", get.shed as f64, "calls");
    surge_figures(
        report,
        &windows,
        unavailable.load(Ordering::Relaxed),
        deadline,
    );
    probe_figures(report, &probe_windows);
    report.figure(
        "webhook batches shed (429/503) during the run",
        erp_s.shed as f64,
        "batches",
    );

    if let (Some(sampler), Some(bus)) = (sampler, &target.bus) {
        // Drain: from the end of the step until the stock backlog is back to zero.
        let drained = super::drain(
            bus,
            streams::STOCK,
            streams::groups::RATES,
            Duration::from_secs(300),
        )
        .await;
        sampler.abort();
        let samples = samples.lock().expect("lock").clone();
        let max_stock = samples.iter().map(|s| s.1).max().unwrap_or(0);
        let max_rates = samples.iter().map(|s| s.2).max().unwrap_or(0);
        let zero_after_step = samples
            .iter()
            .find(|s| s.0 >= step_end && s.1 == 0)
            .map(|s| s.0 - step_end);
        report.figure(
            "peak stock backlog (rates group)",
            max_stock as f64,
            "entries",
        );
        report.figure(
            "peak rates backlog (notifier group)",
            max_rates as f64,
            "entries",
        );
        match zero_after_step {
            Some(d) => report.figure("stock backlog drained after the step ended", d, "s"),
            None => report.figure(
                "stock backlog drained after the load ended",
                drained.map_or(f64::NAN, |d| d.as_secs_f64()),
                "s",
            ),
        }
        report.check(
            "the stock backlog drained (nothing accepted was lost)",
            drained.is_some(),
            format!("peak {max_stock} entries"),
        );
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

/// A call that got no answer within its deadline, by the client's own clock.
fn no_answer(deadline: Duration) -> Outcome {
    Outcome::Error(format!(
        "GetRate: no answer within the {} ms deadline (client side)",
        deadline.as_millis()
    ))
}

/// The outcome of a raw GetRate the client gave `deadline`; an UNAVAILABLE refusal is also
/// counted in `unavailable`.
fn raw_outcome(
    answer: Result<Result<u64, Failure>, tokio::time::error::Elapsed>,
    deadline: Duration,
    unavailable: &AtomicU64,
) -> Outcome {
    match answer {
        Ok(Ok(_)) => Outcome::Ok(1),
        Ok(Err(Failure::Status(code, message))) => {
            if code == tonic::Code::Unavailable {
                unavailable.fetch_add(1, Ordering::Relaxed);
            }
            catalogue::deadline_outcome("GetRate", &tonic::Status::new(code, message), deadline)
        }
        Ok(Err(failure)) => failure.outcome("GetRate"),
        Err(_) => no_answer(deadline),
    }
}

/// GetRate over bare HTTP/2: one pre-encoded request per SKU, each with the call's
/// deadline as `grpc-timeout`.
struct RawCalls {
    method: Arc<Unary>,
    frames: Arc<Vec<Bytes>>,
    deadline: Duration,
}

impl RawCalls {
    fn prepare(target: &Target, n: usize, deadline: Duration) -> anyhow::Result<Self> {
        let method = Unary::new(
            &target.grpc,
            &format!("/{SERVICE_NAME}/GetRate"),
            Some(target.api_key(Role::Network)),
        )?
        .with_deadline(deadline)?;
        let frames = (0..n)
            .map(|rank| {
                raw_grpc::frame(&v1::GetRateRequest {
                    sku: catalogue::sku(rank),
                    as_of: None,
                })
            })
            .collect();
        Ok(Self {
            method: Arc::new(method),
            frames: Arc::new(frames),
            deadline,
        })
    }
}

/// The load generator's GetRate over bare HTTP/2 (`--raw-client`).
struct RawGet {
    client: Arc<RawClient>,
    method: Arc<Unary>,
    frames: Arc<Vec<Bytes>>,
}

impl RawGet {
    /// Connects, and checks outside the measured run that a raw answer holds the card the
    /// tonic client gets, so both clients make the same call.
    async fn connect(
        config: &RunConfig,
        target: &Target,
        calls: &RawCalls,
    ) -> anyhow::Result<Self> {
        let client = RawClient::connect(&target.grpc, config.connections)
            .await
            .context("raw connections to ratemesh")?;
        let body = client
            .call_keeping_body(0, &calls.method, calls.frames[0].clone())
            .await
            .map_err(|f| anyhow::anyhow!("a raw GetRate before the run failed: {f:?}"))?;
        let answer = v1::GetRateResponse::decode(raw_grpc::unframe(&body)?)
            .context("decoding a raw GetRate answer")?;
        anyhow::ensure!(
            answer.card.as_ref().map(|c| c.sku.as_str()) == Some(catalogue::sku(0).as_str()),
            "a raw GetRate for {} answered {answer:?}",
            catalogue::sku(0)
        );
        Ok(Self {
            client: Arc::new(client),
            method: calls.method.clone(),
            frames: calls.frames.clone(),
        })
    }
}

/// Share of the GetRate schedule the probe sends.
const PROBE_SHARE: f64 = 0.02;
/// Probe calls in flight at most: enough for every call of the step until its deadline.
const PROBE_IN_FLIGHT: usize = 4096;
/// Where the probe's SKU draws start, apart from the load generator's.
const PROBE_SEED: u64 = 1 << 48;

/// What a network's client with a CPU of its own would see: a small share of the GetRate
/// schedule sent from a thread and runtime of its own, on a connection of its own, over
/// bare HTTP/2. The load generator's answers wait, after they arrive, for its runtime to
/// read them and to poll each call's task behind thousands of others on the cores it
/// shares with the server; the probe's wait only for its one thread to be scheduled.
struct Probe {
    go: std::sync::mpsc::Sender<()>,
    thread: std::thread::JoinHandle<anyhow::Result<(Recorder, Duration)>>,
}

impl Probe {
    /// Connects on the probe's thread; the schedule starts at [`Probe::run`].
    fn start(
        target: &Target,
        calls: &RawCalls,
        zipf: Zipf,
        unavailable: Arc<AtomicU64>,
        mut drive: load::Drive,
        shape: Shape,
    ) -> anyhow::Result<Self> {
        drive.progress = false;
        let (addr, method, frames) = (
            target.grpc.clone(),
            calls.method.clone(),
            calls.frames.clone(),
        );
        let deadline = calls.deadline;
        let (ready, connected) = std::sync::mpsc::channel();
        let (go, started) = std::sync::mpsc::channel::<()>();
        let thread = std::thread::Builder::new()
            .name("surge-probe".into())
            .spawn(move || {
                let runtime = tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build()
                    .context("starting the probe's runtime")?;
                runtime.block_on(async move {
                    let client = match RawClient::connect(&addr, 1).await {
                        Ok(client) => Arc::new(client),
                        Err(e) => {
                            let _ = ready.send(Err(format!("{e:#}")));
                            return Err(e.context("the probe's connection"));
                        }
                    };
                    let _ = ready.send(Ok(()));
                    tokio::task::spawn_blocking(move || started.recv())
                        .await?
                        .context("the scenario ended before the probe started")?;
                    let op = move |i: u64| {
                        let rank = zipf.sample(&mut SplitMix::new(PROBE_SEED + i));
                        let (client, method, frame) =
                            (client.clone(), method.clone(), frames[rank].clone());
                        let unavailable = unavailable.clone();
                        async move {
                            let answer =
                                tokio::time::timeout(deadline, client.call(0, &method, frame))
                                    .await;
                            raw_outcome(answer, deadline, &unavailable)
                        }
                    };
                    Ok(load::open_loop(&drive, &shape, op).await)
                })
            })
            .context("starting the probe's thread")?;
        match connected.recv() {
            Ok(Ok(())) => Ok(Self { go, thread }),
            Ok(Err(e)) => Err(anyhow::anyhow!("the probe could not connect: {e}")),
            Err(_) => Err(anyhow::anyhow!(
                "the probe's thread ended before connecting"
            )),
        }
    }

    /// Runs the probe's schedule; returns its record.
    async fn run(self) -> anyhow::Result<(Recorder, Duration)> {
        let Self { go, thread } = self;
        let _ = go.send(());
        tokio::task::spawn_blocking(move || thread.join())
            .await?
            .map_err(|_| anyhow::anyhow!("the probe's thread panicked"))?
    }
}

/// The surge figures from the GetRate phase's windows (steady, step, steady).
fn surge_figures(
    report: &mut Report,
    windows: &[WindowSummary],
    unavailable: u64,
    deadline: Duration,
) {
    let [steady, surge, after] = windows else {
        report.check(
            "GetRate is summarised per part of the surge",
            false,
            format!("{} windows, expected 3", windows.len()),
        );
        return;
    };
    report.figure(
        "GetRate deadline of each call (grpc-timeout)",
        deadline.as_secs_f64() * 1000.0,
        "ms",
    );
    report.figure(
        "steady: GetRate p99 before the step (from schedule)",
        steady.served.p99_ms,
        "ms",
    );
    report.figure("steady: GetRate served", steady.ok as f64, "calls");
    report.figure("steady: GetRate refused", steady.shed as f64, "calls");
    report.figure("surge: GetRate served", surge.ok as f64, "calls");
    report.figure(
        "surge: GetRate served p99 (from schedule)",
        surge.served.p99_ms,
        "ms",
    );
    report.figure(
        "surge: GetRate refused (RESOURCE_EXHAUSTED / UNAVAILABLE)",
        surge.shed as f64,
        "calls",
    );
    report.figure(
        "surge: GetRate refusal p99 from schedule (the load generator's lateness included)",
        surge.refused.p99_ms,
        "ms",
    );
    report.figure(
        "surge: GetRate refusal p99 from send (target <= 5 ms; the load generator's lateness apart)",
        surge.refused_from_send.p99_ms,
        "ms",
    );
    report.figure(
        "surge: load generator's send lag p99 (scheduled -> sent)",
        surge.send_lag.p99_ms,
        "ms",
    );
    report.figure(
        "surge: GetRate failed (deadline exceeded, other errors)",
        surge.errors as f64,
        "calls",
    );
    let answered = (surge.ok + surge.shed + surge.errors).max(1);
    report.figure(
        "surge: share of GetRate calls served",
        surge.ok as f64 * 100.0 / answered as f64,
        "%",
    );
    report.figure(
        "after the step: GetRate p99 (from schedule)",
        after.served.p99_ms,
        "ms",
    );
    report.figure(
        "GetRate refusals that were UNAVAILABLE (whole run)",
        unavailable as f64,
        "calls",
    );
    report.ratio(
        "GetRate served p99 during the surge / steady p99",
        ("served p99 ms during the 10x step", surge.served.p99_ms),
        ("steady p99 ms", steady.served.p99_ms),
        "target <= 10: what is served stays fast and the excess is refused quickly; \
         latency from the scheduled send time, open loop",
    );
}

/// The probe's figures over the step (see [`Probe`]).
fn probe_figures(report: &mut Report, windows: &[WindowSummary]) {
    let Some(surge) = windows.get(1) else {
        report.check(
            "the probe's GetRate is summarised per part of the surge",
            false,
            format!("{} windows, expected 3", windows.len()),
        );
        return;
    };
    report.figure("surge, probe: GetRate served", surge.ok as f64, "calls");
    report.figure(
        "surge, probe: GetRate served p99 (from schedule)",
        surge.served.p99_ms,
        "ms",
    );
    report.figure("surge, probe: GetRate refused", surge.shed as f64, "calls");
    report.figure(
        "surge, probe: GetRate refusal p99 from send (target <= 5 ms; a client with a thread of its own)",
        surge.refused_from_send.p99_ms,
        "ms",
    );
    report.figure(
        "surge, probe: GetRate refusal p99 from schedule",
        surge.refused.p99_ms,
        "ms",
    );
    report.figure(
        "surge, probe: send lag p99 (scheduled -> sent)",
        surge.send_lag.p99_ms,
        "ms",
    );
    report.figure(
        "surge, probe: GetRate failed (deadline exceeded, other errors)",
        surge.errors as f64,
        "calls",
    );
}
