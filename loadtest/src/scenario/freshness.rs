//! `freshness`: how long after the ERP's `202` a new rate is visible — through `GetRate`,
//! on a `WatchRates` stream, and at a partner's webhook endpoint — against one Redis hop
//! (XADD → XREADGROUP) at the same message rate.
//!
//! Each probe flips one SKU of a pool between scarce and deep overstock (so its rate
//! must move), posts it as a one-update signed webhook batch, and waits for a card
//! version newer than the one read just before. SKUs are reused round-robin, far enough
//! apart that two probes never share a SKU at once.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use ratemesh_proto::v1::{self, rate_service_client::RateServiceClient};
use ratemesh_runtime::Role;
use tokio_util::sync::CancellationToken;

use super::RunConfig;
use crate::catalogue::{self, Sequences, StockItem, WebhookClient};
use crate::load::{self, Shape};
use crate::recorder::{Outcome, Recorder};
use crate::redis_baseline;
use crate::report::Report;
use crate::sink::Sink;
use crate::target::Target;

/// Latest version seen per SKU on a WatchRates stream, and when.
#[derive(Default, Clone)]
pub struct Watched(Arc<Mutex<HashMap<String, (u64, Instant)>>>);

impl Watched {
    /// When `sku` was seen at `version` or later.
    pub fn arrived(&self, sku: &str, version: u64) -> Option<Instant> {
        let seen = self.0.lock().expect("watch lock");
        seen.get(sku)
            .filter(|(v, _)| *v >= version)
            .map(|(_, at)| *at)
    }
}

/// Follows every rate change until `stop`, resuming from the last cursor when the
/// stream ends.
pub fn watch_all(
    target: &Target,
    channel: tonic::transport::Channel,
    stop: CancellationToken,
) -> Watched {
    let watched = Watched::default();
    let seen = watched.clone();
    let bearer = target.bearer(Role::Network);
    tokio::spawn(async move {
        let mut cursor = String::new();
        while !stop.is_cancelled() {
            let mut client = RateServiceClient::with_interceptor(channel.clone(), bearer.clone());
            let Ok(stream) = client
                .watch_rates(v1::WatchRatesRequest {
                    cursor: cursor.clone(),
                    ..Default::default()
                })
                .await
            else {
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            };
            let mut stream = stream.into_inner();
            loop {
                let next = tokio::select! {
                    m = stream.message() => m,
                    () = stop.cancelled() => return,
                };
                let Ok(Some(update)) = next else { break };
                let at = Instant::now();
                cursor = update.cursor;
                if let Some(card) = update.card {
                    let mut map = seen.0.lock().expect("watch lock");
                    let slot = map.entry(card.sku).or_insert((0, at));
                    if card.version > slot.0 {
                        *slot = (card.version, at);
                    }
                }
            }
        }
    });
    watched
}

/// Runs the scenario into `report`.
pub async fn run(config: &RunConfig, report: &mut Report) -> anyhow::Result<()> {
    let target = Target::start(&config.target).await?;
    report.target = target.description.clone();
    let result = measure(config, report, &target).await;
    target.stop().await?;
    result
}

async fn measure(config: &RunConfig, report: &mut Report, target: &Target) -> anyhow::Result<()> {
    let rate = config.rate.unwrap_or(config.pick(100.0, 20.0));
    let length = config.pick(config.duration * 2, config.duration * 3);
    // Each SKU is reused only after every other one: at least 5 s apart.
    let pool = config.skus.unwrap_or(((rate * 5.0) as usize).max(200));
    let seqs = Arc::new(Sequences::default());
    catalogue::seed(target, pool, 1000, 4, &seqs).await?;
    catalogue::wait_for_cards(target, pool, Duration::from_secs(300)).await?;
    super::settle(target).await;
    let sink = Arc::new(Sink::start(target, "loadtest-freshness").await?);
    let channels = target.channels(2).await?;
    let stop_watch = CancellationToken::new();
    let watched = watch_all(target, channels[1].clone(), stop_watch.clone());
    // Let the watch stream and the notifier's partner list settle before the first probe.
    tokio::time::sleep(Duration::from_millis(1500)).await;

    let webhook = WebhookClient::new(target);
    let visible = Arc::new(Mutex::new(Recorder::default()));
    let on_watch = Arc::new(Mutex::new(Recorder::default()));
    let at_partner = Arc::new(Mutex::new(Recorder::default()));
    let warmup = config.warmup;
    let run_id = seqs.next();
    let op = {
        let channel = channels[0].clone();
        let bearer = target.bearer(Role::Network);
        let (visible, on_watch, at_partner, sink, watched) = (
            visible.clone(),
            on_watch.clone(),
            at_partner.clone(),
            sink.clone(),
            watched.clone(),
        );
        move |i: u64| {
            let mut client = RateServiceClient::with_interceptor(channel.clone(), bearer.clone());
            let sku = catalogue::sku(i as usize % pool);
            let (webhook, seqs) = (webhook.clone(), seqs.clone());
            let (visible, on_watch, at_partner, sink, watched) = (
                visible.clone(),
                on_watch.clone(),
                at_partner.clone(),
                sink.clone(),
                watched.clone(),
            );
            let offset = Duration::from_secs_f64(i as f64 / rate);
            let measured = offset >= warmup;
            async move {
                let before = match client
                    .get_rate(v1::GetRateRequest {
                        sku: sku.clone(),
                        as_of: None,
                    })
                    .await
                {
                    Ok(r) => r.into_inner().card.unwrap_or_default(),
                    Err(s) => return catalogue::status_outcome("GetRate before the push", &s),
                };
                let on_hand = if before.band == "scarce" { 1500 } else { 10 };
                let item = StockItem {
                    sku: sku.clone(),
                    on_hand,
                    sequence: seqs.next(),
                };
                let body = catalogue::stock_json(
                    &format!("lt-fresh-{}-{i}", item.sequence),
                    std::slice::from_ref(&item),
                );
                if let Err(outcome) = webhook.post("/v1/stock", body).await {
                    return outcome;
                }
                let accepted = Instant::now();
                let want = before.version + 1;
                let deadline = accepted + Duration::from_secs(15);
                // GetRate: poll every millisecond until the new version is served.
                let mut seen_get = None;
                while Instant::now() < deadline {
                    match client
                        .get_rate(v1::GetRateRequest {
                            sku: sku.clone(),
                            as_of: None,
                        })
                        .await
                    {
                        Ok(r) if r.get_ref().card.as_ref().is_some_and(|c| c.version >= want) => {
                            seen_get = Some(Instant::now());
                            break;
                        }
                        Ok(_) => {}
                        Err(s) => return catalogue::status_outcome("GetRate after the push", &s),
                    }
                    tokio::time::sleep(Duration::from_millis(1)).await;
                }
                let Some(seen_get) = seen_get else {
                    return Outcome::Error(format!(
                        "{sku}: version {want} not served by GetRate within 15 s"
                    ));
                };
                visible.lock().expect("lock").record(
                    offset,
                    seen_get - accepted,
                    &Outcome::Ok(1),
                    measured,
                );
                // The watch stream and the partner: they had the same time (they are
                // usually earlier than GetRate polling, so they are read afterwards).
                let watch = super::poll_until(
                    deadline.saturating_duration_since(Instant::now()),
                    Duration::from_millis(2),
                    || {
                        let w = watched.arrived(&sku, want);
                        async move { w }
                    },
                )
                .await;
                let Some(watch) = watch else {
                    return Outcome::Error(format!(
                        "{sku}: version {want} never arrived on WatchRates"
                    ));
                };
                on_watch.lock().expect("lock").record(
                    offset,
                    watch.saturating_duration_since(accepted),
                    &Outcome::Ok(1),
                    measured,
                );
                let partner = super::poll_until(
                    deadline.saturating_duration_since(Instant::now()),
                    Duration::from_millis(5),
                    || {
                        let p = sink.arrived(&sku, want);
                        async move { p }
                    },
                )
                .await;
                let Some(partner) = partner else {
                    return Outcome::Error(format!(
                        "{sku}: version {want} never reached the partner webhook"
                    ));
                };
                at_partner.lock().expect("lock").record(
                    offset,
                    partner.saturating_duration_since(accepted),
                    &Outcome::Ok(1),
                    measured,
                );
                Outcome::Ok(1)
            }
        }
    };
    let shape = Shape::constant(rate, length);
    let t = report.elapsed_s();
    let r = load::open_loop(&config.drive("freshness probes", 4096), &shape, op).await;
    stop_watch.cancel();
    let probes = report.phase(
        "probe: push + visible everywhere (from schedule)",
        "open",
        rate,
        4096,
        t,
        &r,
    );
    let measured = r.1;
    let take = |rec: &Arc<Mutex<Recorder>>| (rec.lock().expect("lock").clone(), measured);
    let get = report.phase(
        "freshness: 202 -> GetRate serves it",
        "open",
        rate,
        0,
        t,
        &take(&visible),
    );
    let watch = report.phase(
        "freshness: 202 -> WatchRates delivers it",
        "open",
        rate,
        0,
        t,
        &take(&on_watch),
    );
    let partner = report.phase(
        "freshness: 202 -> partner webhook",
        "open",
        rate,
        0,
        t,
        &take(&at_partner),
    );
    report.check(
        "every probe seen by GetRate, WatchRates and the partner",
        probes.errors == 0 && get.ok == watch.ok && watch.ok == partner.ok,
        format!(
            "{} probes; GetRate {}, watch {}, partner {}",
            probes.ok + probes.errors,
            get.ok,
            watch.ok,
            partner.ok
        ),
    );

    let redis = target.redis.as_ref().ok_or_else(|| {
        anyhow::anyhow!(
            "the freshness baseline needs the target's redis (--redis or --redis-cluster)"
        )
    })?;
    let t = report.elapsed_s();
    let r = redis_baseline::hop_probe(
        redis,
        &format!("hop:{run_id:x}"),
        &config.drive("redis hop probe", 4096),
        &Shape::constant(rate, length),
    )
    .await?;
    let hop = report.phase(
        "XADD -> XREADGROUP hop (baseline)",
        "open",
        rate,
        4096,
        t,
        &r,
    );
    report.ratio(
        "freshness p99 (GetRate) / Redis hop p99",
        ("freshness p99 ms", get.p99_ms),
        ("redis hop p99 ms", hop.p99_ms),
        "ingest → stock stream → rates consumer (read state, compute, CAS write + XADD) → replica tail; GetRate polled every 1 ms",
    );
    report.ratio(
        "freshness p99 (WatchRates) / Redis hop p99",
        ("watch p99 ms", watch.p99_ms),
        ("redis hop p99 ms", hop.p99_ms),
        "",
    );
    report.ratio(
        "freshness p99 (partner webhook) / Redis hop p99",
        ("partner p99 ms", partner.p99_ms),
        ("redis hop p99 ms", hop.p99_ms),
        "includes the notifier's coalescing window (notifier.coalesce_window_ms)",
    );
    Ok(())
}
