//! The notifier service: partners subscribe with a webhook endpoint and filters; every
//! rate change and flash-incentive change that matches reaches them as a signed,
//! coalesced, retried POST (DESIGN §4.3).
//!
//! Flow: [`fanout`] reads the `rates` and `incentives` streams (group `notifier`) → rate
//! changes wait in each partner's `outbox` for the coalescing window, incentive changes
//! become deliveries at once → the `dispatcher` claims due attempts from bus timers and
//! POSTs them with the `sender`, retrying with exponential backoff and jitter until
//! delivered or dead-lettered. Everything that must survive a restart — partners,
//! deliveries, outboxes, the retry schedule — is bus state and bus timers (Redis in
//! production); per-process memory holds only the partner cache, per-partner slots and
//! the circuit `breaker`s.
//!
//! Layout:
//! - `api`: `PartnerService` (partners, secret rotation, deliveries, redelivery).
//! - `model` and `store`: records in bus state and how they are read and written.
//!   Signing secrets are stored there in the clear (they are needed to sign); treat the
//!   Redis instance as a secrets store.
//! - [`webhook`]: the JSON body partners receive (public, for sinks and tests).
//! - `destination`: SSRF checks on partner URLs, at save time and on every connection.
//! - `config`: `[notifier]` settings as durations, and the backoff formula.
//! - `delivery_metrics`: deliveries by outcome, delivery lag, dead letters, breakers.

pub mod access;
mod api;
mod breaker;
mod config;
mod delivery_metrics;
mod destination;
mod dispatcher;
pub mod fanout;
mod model;
mod outbox;
mod scheduling;
mod sender;
mod settings;
mod store;
pub mod webhook;

use std::sync::Arc;

use ratemesh_contract::streams;
use ratemesh_proto::v1::partner_service_server::PartnerServiceServer;
use ratemesh_runtime::{Context, Readiness, ServiceModule};

use crate::config::Config;
use crate::dispatcher::Dispatcher;
use crate::fanout::Fanout;
use crate::outbox::Outbox;
use crate::scheduling::Enqueue;
use crate::store::{Deliveries, Partners};

pub use settings::NotifierSettings;

/// Builds the notifier: `PartnerService`, the two stream consumers and the delivery loop.
pub async fn build(ctx: &Context) -> anyhow::Result<ServiceModule> {
    let settings = &ctx.settings().section::<NotifierSettings>();
    let config = Arc::new(Config::from_settings(settings));
    let bus = ctx.bus().clone();
    let partners = Partners::new(bus.clone(), config.partner_refresh);
    let deliveries = Deliveries::new(bus.clone());
    let enqueue = Enqueue {
        bus: bus.clone(),
        deliveries: deliveries.clone(),
    };
    let outbox = Outbox::new(
        bus.clone(),
        config.clone(),
        partners.clone(),
        enqueue.clone(),
    );
    let sender = sender::Sender::new(&config)?;
    let dispatcher = Arc::new(Dispatcher::new(
        bus.clone(),
        config.clone(),
        partners.clone(),
        deliveries.clone(),
        outbox.clone(),
        sender,
    ));
    let fanout = Arc::new(Fanout {
        bus: bus.clone(),
        partners: partners.clone(),
        outbox,
        enqueue,
    });
    let gauges = delivery_metrics::run(
        partners.clone(),
        deliveries.clone(),
        ctx.settings().telemetry.gauge_interval(),
        ctx.shutdown().clone(),
    );
    let api = api::PartnersApi {
        bus,
        config,
        partners,
        deliveries,
    };
    if settings.allow_private_destinations {
        tracing::warn!(
            "notifier.allow_private_destinations is on: partner URLs may reach internal addresses"
        );
    }

    let name = ratemesh_runtime::consumer::consumer_name(&settings.consumer_name, "notifier");
    let readiness = Readiness::new();
    // Everything is in the bus; there is nothing to load before serving.
    readiness.set(true);
    let shutdown = ctx.shutdown().clone();
    let mut module = ServiceModule::new("notifier", readiness)
        .grpc(PartnerServiceServer::new(api), access::PARTNER_SERVICE);
    for &stream in streams::readers::NOTIFIER.streams {
        module = module.task(
            "notifier fan-out",
            fanout.clone().run(stream, name.clone(), shutdown.clone()),
        );
    }
    Ok(module
        .task("notifier deliveries", dispatcher.run(shutdown))
        .task("notifier dead-letter gauge", gauges))
}
