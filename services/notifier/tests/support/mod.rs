//! Test helpers for the notifier: a notifier on a private Redis, a real HTTP sink that
//! records every webhook, and publishers of the events the notifier consumes.

#![allow(dead_code, unreachable_pub)]

use std::net::SocketAddr;

use chrono::Utc;
use ratemesh_bus::testkit::RedisServer;
use ratemesh_bus::{Bus, Event};
use ratemesh_contract::incentive::incentive_changed;
use ratemesh_contract::streams;
use ratemesh_contract::time::to_timestamp;
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

/// The `rates` stream entry rates would publish for version `version` of `sku`'s card
/// at `rate`, moved from `previous` (empty for the first card).
pub fn rate_changed(sku: &str, category: &str, version: u64, rate: &str, previous: &str) -> Event {
    let now = Utc::now();
    let card = v1::RateCard {
        sku: sku.into(),
        category: category.into(),
        effective_rate: rate.into(),
        reasons: vec![v1::Reason {
            code: "BAND".into(),
            text: format!("version {version} of {sku}"),
        }],
        version,
        computed_at: Some(to_timestamp(now)),
        previous_rate: previous.into(),
        ..Default::default()
    };
    ratemesh_contract::rate::rate_changed(card, now)
}

pub async fn publish_rate(bus: &Bus, entry: Event) {
    bus.publish(streams::RATES, entry)
        .await
        .expect("publish rate change");
}

/// Publishes an incentive opening on `sku` as the incentives service would; returns its
/// id.
pub async fn publish_incentive(bus: &Bus, sku: &str, category: &str) -> String {
    let id = ulid::Ulid::generate().to_string();
    let now = Utc::now();
    let incentive = v1::Incentive {
        id: id.clone(),
        sku: sku.into(),
        category: category.into(),
        bonus_rate: "0.02".into(),
        starts_at: Some(to_timestamp(now)),
        state: v1::IncentiveState::Active as i32,
        ..Default::default()
    };
    bus.publish(
        streams::INCENTIVES,
        incentive_changed(incentive, v1::IncentiveTransition::Opened, now),
    )
    .await
    .expect("publish incentive change");
    id
}
