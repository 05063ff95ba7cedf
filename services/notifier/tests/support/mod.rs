//! Test helpers for the notifier: a notifier on a private Redis, a real HTTP sink that
//! records every webhook, and publishers of the events the notifier consumes.

#![allow(dead_code, unreachable_pub)]

use std::net::SocketAddr;

use prost::Message;
use ratemesh_bus::testkit::RedisServer;
use ratemesh_bus::{Bus, Event};
use ratemesh_contract::streams;
use ratemesh_notifier::fanout::{INCENTIVE_CHANGED_KIND, RATE_CHANGED_KIND};
use ratemesh_proto::v1;
use ratemesh_runtime::{Role, Settings};
use ratemesh_testkit::app::PartnersClient;
use ratemesh_testkit::settings::{allow_local_partners, bare_settings, keys_per_role};
use ratemesh_testkit::{ServiceName, TestApp, test_bus_options};

pub const PARTNER_KEY_ID: &str = "acme";

/// Settings for fast tests: loopback and http allowed, short windows and backoff.
pub fn fast_settings() -> Settings {
    let mut s = bare_settings();
    s.server.shutdown_grace_ms = 3_000;
    s.auth.keys = keys_per_role(PARTNER_KEY_ID);
    allow_local_partners(&mut s);
    let n = s.section_mut::<ratemesh_notifier::NotifierSettings>();
    n.coalesce_window_ms = 400;
    n.connect_timeout_ms = 1_000;
    n.request_timeout_ms = 10_000;
    n.backoff_initial_ms = 100;
    n.backoff_max_ms = 400;
    n.max_attempts = 100;
    n.timer_poll_ms = 20;
    n.partner_refresh_ms = 50;
    n.breaker_failure_threshold = 1_000;
    n.breaker_open_ms = 200;
    s
}

/// A notifier alone, on a private Redis under `prefix`.
pub struct Notifier {
    pub grpc: SocketAddr,
    /// `/metrics`, `/livez`, `/readyz`.
    pub admin: SocketAddr,
    app: TestApp,
}

impl Notifier {
    pub async fn start(redis: &RedisServer, prefix: &str, settings: Settings) -> Notifier {
        let bus = publisher(redis, prefix).await;
        let app = TestApp::spawn_services(settings, bus, &[ServiceName::Notifier]).await;
        Notifier {
            grpc: app.grpc,
            admin: app.admin,
            app,
        }
    }

    /// Kills the notifier without any shutdown (what `kill -9` leaves behind).
    pub async fn kill(self) {
        self.app.kill().await;
    }

    pub async fn stop(self) {
        let _ = self.app.try_stop().await;
    }

    /// The Prometheus text of the admin port's `/metrics`.
    pub async fn metrics(&self) -> String {
        let (status, page) = self.app.admin_get("/metrics").await;
        assert_eq!(status, 200, "{page}");
        page
    }

    pub async fn client(&self, role: Role) -> PartnersClient {
        self.app.partners(role).await
    }

    /// Registers an enabled partner; returns its signing secret.
    pub async fn add_partner(&self, id: &str, url: &str, filter: v1::PartnerFilter) -> String {
        self.app.register_partner(id, url, filter).await
    }

    pub async fn deliveries(&self, partner: &str) -> Vec<v1::Delivery> {
        self.app.deliveries(partner).await
    }
}

/// The value of the sample `name{labels}` (labels exactly as rendered, e.g.
/// `outcome="dead"`; empty for none) in a Prometheus text page.
pub fn sample(page: &str, name: &str, labels: &str) -> Option<f64> {
    let prefix = if labels.is_empty() {
        format!("{name} ")
    } else {
        format!("{name}{{{labels}}} ")
    };
    page.lines()
        .find_map(|line| line.strip_prefix(&prefix)?.trim().parse().ok())
}

/// A bus handle on the same Redis and prefix, to publish what rates and incentives would.
pub async fn publisher(redis: &RedisServer, prefix: &str) -> Bus {
    Bus::redis(&redis.url(), prefix, test_bus_options())
        .await
        .expect("bus")
}

fn now_ts() -> prost_types::Timestamp {
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .expect("clock");
    prost_types::Timestamp {
        seconds: now.as_secs() as i64,
        nanos: now.subsec_nanos() as i32,
    }
}

pub fn rate_changed(
    sku: &str,
    category: &str,
    version: u64,
    rate: &str,
    previous: &str,
) -> v1::RateChanged {
    v1::RateChanged {
        meta: Some(v1::EventMeta {
            event_id: ulid::Ulid::generate().to_string(),
            occurred_at: Some(now_ts()),
            ..Default::default()
        }),
        card: Some(v1::RateCard {
            sku: sku.into(),
            category: category.into(),
            effective_rate: rate.into(),
            reasons: vec![v1::Reason {
                code: "BAND".into(),
                text: format!("version {version} of {sku}"),
            }],
            version,
            computed_at: Some(now_ts()),
            previous_rate: previous.into(),
            ..Default::default()
        }),
        previous_rate: previous.into(),
    }
}

pub async fn publish_rate(bus: &Bus, event: v1::RateChanged) {
    let sku = event
        .card
        .as_ref()
        .map(|c| c.sku.clone())
        .unwrap_or_default();
    bus.publish(
        streams::RATES,
        Event::new(sku, event.encode_to_vec()).with_kind(RATE_CHANGED_KIND),
    )
    .await
    .expect("publish rate change");
}

pub async fn publish_incentive(bus: &Bus, sku: &str, category: &str) -> String {
    let id = ulid::Ulid::generate().to_string();
    let event = v1::IncentiveChanged {
        meta: Some(v1::EventMeta {
            event_id: ulid::Ulid::generate().to_string(),
            occurred_at: Some(now_ts()),
            ..Default::default()
        }),
        incentive: Some(v1::Incentive {
            id: id.clone(),
            sku: sku.into(),
            category: category.into(),
            bonus_rate: "0.02".into(),
            starts_at: Some(now_ts()),
            state: v1::IncentiveState::Active as i32,
            ..Default::default()
        }),
        transition: v1::IncentiveTransition::Opened as i32,
    };
    bus.publish(
        streams::INCENTIVES,
        Event::new(sku, event.encode_to_vec()).with_kind(INCENTIVE_CHANGED_KIND),
    )
    .await
    .expect("publish incentive change");
    id
}
