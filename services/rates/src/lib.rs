//! The rates service: computes rates from stock, persists and publishes them, serves them,
//! and applies merchandiser overrides.
//!
//! [`build`] turns a runtime [`Context`] into the [`ServiceModule`] that `ratemesh up` and
//! `ratemesh serve rates` run:
//! - [`engine`] — the computation: consumer group `rates` on `stock`, `overrides` and
//!   `incentives`, per-SKU state in bus state `rate/<SKU>`, cards computed by the core
//!   policy, persisted and appended to `rates` atomically; durable time-driven recomputes.
//! - [`overrides`] — `OverrideService` and the override store with its audit trail.
//! - [`convert`] — core ↔ `ratemesh.v1` conversions (cards, overrides, explanations),
//!   shared with the read path.
//! - [`read`] — the in-memory replica of the rate table and `RateService` on it.
//! - [`recompute`] — fires the durable recompute timers, routing each to the engine or
//!   the override store.

pub mod access;
pub mod convert;
pub mod engine;
pub mod overrides;
pub mod read;
pub mod recompute;
mod settings;

use std::sync::Arc;
use std::time::Duration;

use ratemesh_contract::streams;
use ratemesh_proto::v1::override_service_server::OverrideServiceServer;
use ratemesh_runtime::{Context, Readiness, ServiceModule};
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

use engine::decode::Routed;
use engine::{Engine, EngineOptions};
use overrides::OverridesApi;
use ratemesh_contract::kinds::OVERRIDE_CHANGED;
pub use settings::RatesSettings;

/// The engine's knobs from settings.
pub fn engine_options(settings: &RatesSettings) -> EngineOptions {
    EngineOptions {
        concurrency: settings.recompute_concurrency,
        scan_page: settings.recompute_page_size,
        sweep_pages: settings.recompute_pages_in_flight,
        timer_poll: Duration::from_millis(settings.timer_poll_ms),
        history_retention: chrono::TimeDelta::days(i64::from(settings.history_retention_days)),
        history_max_versions: u32::try_from(settings.history_max_versions).unwrap_or(u32::MAX),
        record_cache: settings.record_cache_skus,
        ..EngineOptions::default()
    }
}

/// Builds the rates service.
pub async fn build(ctx: &Context) -> anyhow::Result<ServiceModule> {
    let settings = &ctx.settings().section::<RatesSettings>();
    let policy = Arc::new(ratemesh_runtime::policy::load_policy(ctx.settings())?);
    let engine = Engine::new(ctx.bus().clone(), policy, engine_options(settings));
    let name = ratemesh_runtime::consumer::consumer_name(&settings.consumer_name, "rates");
    // Ready once the rate replica is loaded (the read path sets it).
    let readiness = Readiness::new();
    let explain_engine = engine.clone();
    let read = read::ReadPath::new(
        ctx,
        readiness.clone(),
        Arc::new(move |record| {
            Ok(record.fields.get(read::ENGINE_FIELD).and_then(|bytes| {
                engine::explain::explain(
                    bytes,
                    &explain_engine.categories().snapshot(),
                    explain_engine.policy(),
                    chrono::Utc::now(),
                )
            }))
        }),
    );
    let overrides_api = OverridesApi::new(
        engine.clone(),
        Duration::from_millis(settings.override_recompute_timeout_ms),
    );
    let (loaded_tx, loaded) = watch::channel(false);
    let shutdown = ctx.shutdown().clone();
    let mut module = ServiceModule::new("rates", readiness)
        .grpc_from_memory(read.server, access::RATE_SERVICE)
        .reads::<read::RatesServer>(access::READS)
        .point_reads::<read::RatesServer>(access::POINT_READS)
        // Both hold the replica's locks that every read takes.
        .serving_task("rates replica", read.task)
        .serving_task("rates snapshot", read.snapshot_task)
        .grpc(
            OverrideServiceServer::new(overrides_api),
            access::OVERRIDE_SERVICE,
        )
        .task(
            "rates override book",
            follow_overrides(engine.clone(), loaded_tx, shutdown.clone()),
        );
    for &stream in streams::readers::RATES.streams {
        let (engine, name, shutdown, mut loaded) = (
            engine.clone(),
            name.clone(),
            shutdown.clone(),
            loaded.clone(),
        );
        module = module.task("rates consumer", async move {
            if !wait_loaded(&mut loaded, &shutdown).await {
                return Ok(());
            }
            engine::consumer::run(engine, stream, name, shutdown).await
        });
    }
    let (index_engine, index_shutdown) = (engine.clone(), shutdown.clone());
    module = module.task("rates category index", async move {
        // Retried until done: until then category sweeps walk every SKU.
        while let Err(e) = engine::timers::index_categories(&index_engine).await {
            tracing::warn!(error = %e, "listing rate records under their categories failed; retrying");
            tokio::select! {
                () = tokio::time::sleep(std::time::Duration::from_secs(5)) => {}
                () = index_shutdown.cancelled() => return Ok(()),
            }
        }
        index_shutdown.cancelled().await;
        Ok(())
    });
    module = module.task(
        "rates peak-window gauge",
        peak_window_gauge(
            engine.clone(),
            ctx.settings().telemetry.gauge_interval(),
            shutdown.clone(),
        ),
    );
    let mut timers_loaded = loaded;
    Ok(module.task("rates recompute timers", async move {
        if !wait_loaded(&mut timers_loaded, &shutdown).await {
            return Ok(());
        }
        if let Err(e) = engine::timers::schedule_peak_windows(&engine, chrono::Utc::now()).await {
            tracing::warn!(error = %e, "scheduling peak-window recomputes failed; retried at next start");
        }
        recompute::run(engine, shutdown).await
    }))
}

/// Keeps `ratemesh_rates_peak_window_open` at 1 while the policy's calendar is in a peak
/// window, else 0: what the alert on publications stopping during a peak reads.
async fn peak_window_gauge(
    engine: Engine,
    interval: Duration,
    shutdown: CancellationToken,
) -> anyhow::Result<()> {
    ratemesh_runtime::metrics::prometheus();
    let gauge = metrics::gauge!("ratemesh_rates_peak_window_open");
    let set = move || {
        let open = engine.policy().peak_window_at(chrono::Utc::now()).is_some();
        gauge.set(if open { 1.0 } else { 0.0 });
    };
    set();
    ratemesh_runtime::consumer::every("peak-window gauge", interval, shutdown, || {
        set();
        std::future::ready(Ok::<(), std::convert::Infallible>(()))
    })
    .await
}

/// Waits until the category overrides are loaded; false if shutdown came first.
async fn wait_loaded(loaded: &mut watch::Receiver<bool>, shutdown: &CancellationToken) -> bool {
    tokio::select! {
        r = loaded.wait_for(|l| *l) => r.is_ok(),
        () = shutdown.cancelled() => false,
    }
}

/// Loads the category overrides into the engine (noting the end of the `overrides` stream
/// first), signals `loaded`, then keeps them current by tailing the stream, so every
/// replica sees every change (a consumer group gives each entry to one replica only).
pub async fn follow_overrides(
    engine: Engine,
    loaded: watch::Sender<bool>,
    shutdown: CancellationToken,
) -> anyhow::Result<()> {
    let cursor = loop {
        let attempt = async {
            let cursor = engine.bus().end_cursor(streams::OVERRIDES).await?;
            let n = overrides::store::load_category_book(&engine).await?;
            Ok::<_, ratemesh_bus::BusError>((cursor, n))
        };
        match attempt.await {
            Ok((cursor, n)) => {
                tracing::info!(category_overrides = n, "category overrides loaded");
                break cursor;
            }
            Err(e) => {
                tracing::warn!(error = %e, "loading category overrides failed; retrying");
                tokio::select! {
                    () = tokio::time::sleep(Duration::from_secs(1)) => {}
                    () = shutdown.cancelled() => return Ok(()),
                }
            }
        }
    };
    let _ = loaded.send(true);
    let mut tail = engine.bus().tail(streams::OVERRIDES, cursor)?;
    while !shutdown.is_cancelled() {
        match tail.next_batch().await {
            Ok(batch) => {
                for d in batch {
                    if d.kind.as_deref() != Some(OVERRIDE_CHANGED) {
                        continue;
                    }
                    if let Ok(Routed::Category(_, event)) = engine::decode::decode(&d) {
                        match &event {
                            ratemesh_core::Event::OverrideSet { value, at } => {
                                engine.categories().set(value, *at);
                            }
                            ratemesh_core::Event::OverrideCleared { id, at, .. } => {
                                engine.categories().clear(id, *at);
                            }
                            _ => {}
                        }
                    }
                }
            }
            Err(e) => {
                tracing::warn!(error = %e, "tailing the overrides stream failed; retrying");
                tokio::select! {
                    () = tokio::time::sleep(Duration::from_millis(500)) => {}
                    () = shutdown.cancelled() => {}
                }
            }
        }
    }
    Ok(())
}
