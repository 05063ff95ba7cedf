//! The scenarios and what they share: the run configuration (full or smoke) and helpers
//! to measure a phase into a report.

pub mod bfcm;
pub mod freshness;
pub mod ingest;
pub mod poll;
pub mod scale;
pub mod surge;
pub mod whatif;

use std::time::Duration;

use clap::ValueEnum;
use tokio_util::sync::CancellationToken;

use crate::load::Drive;
use crate::report::Report;
use crate::target::TargetSpec;

/// The scenarios.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Scenario {
    /// GetRate and BatchGetRates over a Zipf-skewed catalogue, against the echo baseline.
    Poll,
    /// Signed ERP webhook batches and gRPC PushStock, against pipelined XADD.
    Ingest,
    /// ERP 202 → rate visible (GetRate, WatchRates, partner webhook), against one Redis hop.
    Freshness,
    /// Everything at once with a BFCM shape and the peak window opening.
    Bfcm,
    /// A step to 10× steady load: GetRate served and refused, backlog and its drain.
    Surge,
    /// A large catalogue: replica memory per SKU, cold load, full recompute.
    Scale,
    /// A what-if run over a generated season: SKU-events replayed per minute, all cores
    /// against one thread.
    Whatif,
}

impl Scenario {
    /// Every scenario, in the order `all` runs them.
    pub const ALL: [Scenario; 7] = [
        Scenario::Poll,
        Scenario::Ingest,
        Scenario::Freshness,
        Scenario::Bfcm,
        Scenario::Surge,
        Scenario::Scale,
        Scenario::Whatif,
    ];

    /// The scenario's name on the command line and in reports.
    pub fn name(self) -> &'static str {
        match self {
            Scenario::Poll => "poll",
            Scenario::Ingest => "ingest",
            Scenario::Freshness => "freshness",
            Scenario::Bfcm => "bfcm",
            Scenario::Surge => "surge",
            Scenario::Scale => "scale",
            Scenario::Whatif => "whatif",
        }
    }
}

/// How a run is configured. [`RunConfig::full`] and [`RunConfig::smoke`] give the
/// defaults; every `Option` left `None` takes the scenario's own default for the mode.
#[derive(Debug, Clone)]
pub struct RunConfig {
    /// What to load.
    pub target: TargetSpec,
    /// Short, low-rate run that checks only errors and lost events.
    pub smoke: bool,
    /// Length of each measured phase (warm-up included).
    pub duration: Duration,
    /// Start of each phase that is plotted but not summarised.
    pub warmup: Duration,
    /// Open-loop request rate per second (scenario default when `None`).
    pub rate: Option<f64>,
    /// Requests in flight per load driver.
    pub concurrency: usize,
    /// gRPC connections per driver.
    pub connections: usize,
    /// Catalogue size (scenario default when `None`).
    pub skus: Option<usize>,
    /// Zipf exponent of SKU popularity.
    pub zipf: f64,
    /// BatchGetRates sizes measured by `poll`.
    pub batch_sizes: Vec<usize>,
    /// Stock updates per ingest batch.
    pub ingest_batch: usize,
    /// Deadline of each GetRate call in `surge`, sent as `grpc-timeout` and enforced by
    /// the client too, as a network's client would.
    pub client_timeout: Duration,
    /// `surge` drives GetRate through [`crate::raw_grpc`] (pre-encoded requests, answers
    /// not decoded) instead of tonic: the server's share of a refusal alone.
    pub raw_client: bool,
    /// Progress bars on the terminal.
    pub progress: bool,
    /// Ctrl-C: phases end early and the report is still written.
    pub stop: CancellationToken,
}

impl RunConfig {
    /// Defaults of a measuring run.
    pub fn full(target: TargetSpec) -> Self {
        Self {
            target,
            smoke: false,
            duration: Duration::from_secs(12),
            warmup: Duration::from_secs(2),
            rate: None,
            concurrency: 64,
            connections: 2,
            skus: None,
            zipf: 1.0,
            batch_sizes: vec![1, 10, 100, 1000],
            ingest_batch: 100,
            client_timeout: Duration::from_millis(1000),
            raw_client: false,
            progress: true,
            stop: CancellationToken::new(),
        }
    }

    /// Defaults of the CI smoke run: short phases, low rates, small catalogues.
    pub fn smoke(target: TargetSpec) -> Self {
        Self {
            smoke: true,
            duration: Duration::from_millis(1500),
            warmup: Duration::from_millis(300),
            concurrency: 8,
            connections: 1,
            batch_sizes: vec![1, 100, 1000],
            ingest_batch: 20,
            progress: false,
            ..Self::full(target)
        }
    }

    /// `full` when measuring, `smoke` in a smoke run.
    pub fn pick<T>(&self, full: T, smoke: T) -> T {
        if self.smoke { smoke } else { full }
    }

    /// A driver for one phase.
    pub fn drive(&self, name: &str, concurrency: usize) -> Drive {
        Drive {
            name: name.to_owned(),
            concurrency,
            warmup: self.warmup,
            progress: self.progress,
            stop: self.stop.clone(),
        }
    }

    /// True after Ctrl-C.
    pub fn stopped(&self) -> bool {
        self.stop.is_cancelled()
    }
}

/// Runs `scenario` and returns its report (also on errors inside the scenario, which
/// become failed checks).
pub async fn run(scenario: Scenario, config: &RunConfig) -> Report {
    let mut report = Report::new(scenario.name(), config.smoke, "(not started)");
    let result = match scenario {
        Scenario::Poll => poll::run(config, &mut report).await,
        Scenario::Ingest => ingest::run(config, &mut report).await,
        Scenario::Freshness => freshness::run(config, &mut report).await,
        Scenario::Bfcm => bfcm::run(config, &mut report).await,
        Scenario::Surge => surge::run(config, &mut report).await,
        Scenario::Scale => scale::run(config, &mut report).await,
        Scenario::Whatif => whatif::run(config, &mut report).await,
    };
    if let Err(e) = result {
        report.check("scenario ran to the end", false, format!("{e:#}"));
    }
    report.interrupted = config.stopped();
    report
}

/// Polls `f` every `every` until it returns `Some` or `within` passes.
pub async fn poll_until<T, F, Fut>(within: Duration, every: Duration, mut f: F) -> Option<T>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Option<T>>,
{
    let deadline = tokio::time::Instant::now() + within;
    loop {
        if let Some(v) = f().await {
            return Some(v);
        }
        if tokio::time::Instant::now() >= deadline {
            return None;
        }
        tokio::time::sleep(every).await;
    }
}

/// Waits until the `group`'s backlog on `stream` is zero; returns how long that took.
pub async fn drain(
    bus: &ratemesh_bus::Bus,
    stream: &str,
    group: &str,
    within: Duration,
) -> Option<Duration> {
    let started = tokio::time::Instant::now();
    poll_until(within, Duration::from_millis(50), || async {
        match bus.stream_stats(stream, group).await {
            Ok(stats) if stats.backlog == 0 => Some(started.elapsed()),
            _ => None,
        }
    })
    .await
}

/// Waits until every consumer group has caught up with the seeding (stock for rates and
/// incentives, rates for the notifier), so a baseline is not measured
/// while services are still busy in the background on the same cores.
pub async fn settle(target: &crate::target::Target) {
    use ratemesh_contract::streams::{self, groups};
    if let Some(bus) = &target.bus {
        for (stream, group) in [
            (streams::STOCK, groups::RATES),
            (streams::STOCK, groups::INCENTIVES),
            (streams::RATES, groups::NOTIFIER),
        ] {
            drain(bus, stream, group, Duration::from_secs(600)).await;
        }
    }
}
