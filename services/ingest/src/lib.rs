//! The ingest service: ERP stock and product pushes, over signed webhooks or gRPC
//! `InventoryIngest`, validated, de-duplicated and appended to the stock stream.
//!
//! - [`payload`]: strict JSON parsing with error positions.
//! - [`validate`]: per-item checks shared by both paths (index, field, problem).
//! - [`events`]: validated items as stock-stream entries.
//! - [`csv_feed`]: a CSV feed's rows as the JSON items the webhooks take.
//!
//! `payload`, `validate`, `events` and `csv_feed` are public so that anything reading ERP
//! files offline (`ratemesh stock push`, what-if runs) accepts exactly what the webhooks
//! accept.
//! - [`handoff`]: stale/duplicate classification and the atomic append; batch idempotency.
//! - [`webhook`] and `api`: the two front doors; `request_metrics`: the webhook's
//!   request counts by status and latencies, resolved once.
//! - `backlog`: watches the rates service's backlog so pushes are shed, not queued.
//!
//! With `ingest.archive.dir` set, the service also runs the input archive
//! ([`ratemesh_archive`]): the record of every accepted push, override and incentive
//! change that what-if runs replay. It lives here because ingest is where the inputs
//! enter, and it reads the override and incentive streams like any other consumer group.

pub mod access;
mod api;
mod backlog;
pub mod csv_feed;
pub mod events;
#[cfg(test)]
mod fuzz_tests;
pub mod handoff;
pub mod payload;
mod request_metrics;
mod settings;
pub mod validate;
pub mod webhook;

use std::sync::Arc;
use std::time::Duration;

use ratemesh_proto::v1::inventory_ingest_server::InventoryIngestServer;
use ratemesh_runtime::{Context, Readiness, ServiceModule};
use tokio::sync::Semaphore;

pub use events::{PRODUCT_CHANGED, STOCK_CHANGED};
pub use settings::{ArchiveSettings, ErpSource, IngestSettings, WhatIfSettings};

/// Builds the ingest service: gRPC `InventoryIngest`, the webhook routes, the backlog
/// monitor, and the input archive when `ingest.archive.dir` is set.
pub async fn build(ctx: &Context) -> anyhow::Result<ServiceModule> {
    let settings = &ctx.settings().section::<IngestSettings>();
    let retry_after = Duration::from_secs(settings.retry_after_secs);
    // Accepted pushes are appended on a connection that waits for the configured replicas.
    let redis = &ctx.settings().redis;
    let bus = ctx.bus().with_replica_acks(
        redis.min_replica_acks,
        Duration::from_millis(redis.replica_ack_timeout_ms),
    )?;
    let handoff = handoff::Handoff::new(
        bus,
        Duration::from_secs(settings.idempotency_ttl_secs),
        settings.max_stock_backlog,
        retry_after,
    );
    let limits = validate::Limits {
        max_items: settings.max_batch_items,
        max_text_len: 256,
        max_future_skew: chrono::Duration::seconds(settings.max_future_skew_secs as i64),
    };
    let webhook_state = Arc::new(webhook::WebhookState {
        handoff: handoff.clone(),
        limits: limits.clone(),
        sources: settings
            .sources
            .iter()
            .map(|s| webhook::Source {
                name: s.name.clone(),
                secrets: s
                    .secrets
                    .iter()
                    .map(|x| x.expose().as_bytes().to_vec())
                    .collect(),
            })
            .collect(),
        tolerance_secs: settings.signature_tolerance_secs,
        max_body_bytes: settings.max_body_bytes,
        unverified_budget: Semaphore::new(settings.max_unverified_body_bytes),
        body_read_timeout: Duration::from_millis(settings.body_read_timeout_ms),
        in_flight: Semaphore::new(settings.max_in_flight),
        retry_after,
        requests: request_metrics::RequestMetrics::new(),
    });
    if settings.sources.is_empty() {
        tracing::warn!("no [[ingest.sources]] configured: the ERP webhooks will refuse every push");
    }

    let readiness = Readiness::new();
    readiness.set(true);
    let monitor = backlog::monitor(
        ctx.bus().clone(),
        handoff.backlog_gauge(),
        ctx.shutdown().clone(),
    );
    let module = ServiceModule::new("ingest", readiness)
        .grpc(
            InventoryIngestServer::new(api::IngestApi { handoff, limits }),
            access::INVENTORY_INGEST,
        )
        .http(webhook::router(webhook_state))
        .task("backlog monitor", monitor);
    Ok(match settings.archive.dir() {
        Some(dir) => {
            let config = ratemesh_archive::ArchiveConfig {
                dir: dir.into(),
                retention_days: settings.archive.retention_days,
                writer: ratemesh_runtime::consumer::consumer_name(
                    &settings.archive.consumer_name,
                    "archive",
                ),
            };
            module.task(
                "input archive",
                ratemesh_archive::run(ctx.bus().clone(), config, ctx.shutdown().clone()),
            )
        }
        None => {
            tracing::info!(
                "input archive off (ingest.archive.dir is empty): whatif --since and history export will have nothing to read"
            );
            module
        }
    })
}
