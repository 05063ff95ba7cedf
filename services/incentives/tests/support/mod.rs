//! Test harness: the incentives service alone on a private redis-server, with a manual
//! clock, a test policy, a key per role, and helpers to push stock and read the
//! incentives stream.

#![allow(dead_code, unreachable_pub)]

use ratemesh_incentives::IncentivesSettings;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use chrono::{DateTime, TimeZone, Utc};
use prost::Message as _;
use ratemesh_bus::testkit::RedisServer;
use ratemesh_bus::{Bus, BusOptions, Event};
use ratemesh_contract::stock::{
    Origin, ProductRecord, StockReading, product_changed, stock_changed,
};
use ratemesh_contract::streams;
use ratemesh_core::{Policy, Product, Sku};
use ratemesh_incentives::{Incentives, ManualClock};
use ratemesh_proto::v1;
use ratemesh_proto::v1::incentive_service_client::IncentiveServiceClient;
use ratemesh_runtime::{Context, Role, Settings};
use ratemesh_testkit::TestApp;
use ratemesh_testkit::app::Authed;
use ratemesh_testkit::settings::{bare_settings, keys_per_role};

/// A policy with small numbers: overstock at 100 days of cover, windows of 48 h, a 24 h
/// cooldown, budgets of 50 (money) and 40 units, two incentives per category, three in
/// the program.
pub const POLICY: &str = r#"
[program]
max_concurrent_incentives = 3

[defaults]
base_rate = "0.05"
cap = "0.20"
margin_share = "0.50"

[defaults.flash]
enabled = true
min_cover_days = "100"
exit_cover_days = "30"
bonus = "0.02"
duration_hours = 48
budget_spend = "50"
budget_units = "40"
cooldown_hours = 24
max_extensions = 0
max_concurrent = 2

[categories.toys]
cap = "0.08"

[categories.toys.flash]
max_concurrent = 5
"#;

pub fn policy() -> Policy {
    Policy::from_toml_str(POLICY).expect("test policy")
}

/// The same policy with room for 100 incentives (50 in toys).
pub fn policy_roomy() -> Policy {
    Policy::from_toml_str(
        &POLICY
            .replace(
                "max_concurrent_incentives = 3",
                "max_concurrent_incentives = 100",
            )
            .replace("max_concurrent = 5", "max_concurrent = 50"),
    )
    .expect("test policy")
}

/// The same policy with automatic incentives off.
pub fn policy_disabled() -> Policy {
    Policy::from_toml_str(&POLICY.replace("enabled = true", "enabled = false"))
        .expect("test policy")
}

pub fn t0() -> DateTime<Utc> {
    Utc.with_ymd_and_hms(2025, 3, 3, 9, 0, 0)
        .single()
        .expect("t0")
}

pub fn settings() -> Settings {
    let mut s = bare_settings();
    s.server.shutdown_grace_ms = 2_000;
    s.section_mut::<IncentivesSettings>().timer_poll_ms = 20;
    s.section_mut::<IncentivesSettings>().sweep_interval_secs = 3600;
    s.auth.keys = keys_per_role("p");
    s
}

pub fn bus_options() -> BusOptions {
    BusOptions {
        partitions: 4,
        reclaim_idle: Duration::from_millis(500),
        read_block: Duration::from_millis(50),
        ..BusOptions::default()
    }
}

pub async fn bus(redis: &RedisServer, prefix: &str) -> Bus {
    Bus::redis(&redis.url(), prefix, bus_options())
        .await
        .expect("redis bus")
}

/// A running incentives service.
pub struct Instance {
    pub grpc: SocketAddr,
    pub handle: Incentives,
    pub bus: Bus,
    app: TestApp,
}

/// Starts the service on `redis` under `prefix` with `policy` and `clock`.
pub async fn start(
    redis: &RedisServer,
    prefix: &str,
    policy: Policy,
    clock: &ManualClock,
) -> Instance {
    start_named(redis, prefix, policy, clock, "replica-a").await
}

pub async fn start_named(
    redis: &RedisServer,
    prefix: &str,
    policy: Policy,
    clock: &ManualClock,
    consumer: &str,
) -> Instance {
    let mut s = settings();
    s.section_mut::<IncentivesSettings>().consumer_name = consumer.to_owned();
    start_with(redis, prefix, policy, clock, s).await
}

/// Starts the service with its own `settings` (e.g. a short sweep interval).
pub async fn start_with(
    redis: &RedisServer,
    prefix: &str,
    policy: Policy,
    clock: &ManualClock,
    s: Settings,
) -> Instance {
    let bus = bus(redis, prefix).await;
    let ctx = Context::new(s, bus.clone());
    let handle = Incentives::new(&ctx, policy, Arc::new(clock.clone()));
    let module = handle.clone().module(&ctx);
    let app = TestApp::spawn_modules(&ctx, vec![module]).await;
    let instance = Instance {
        grpc: app.grpc,
        handle,
        bus,
        app,
    };
    // Readiness follows the consumer joining the stock stream.
    let mut client = instance.client(Role::Merchandiser).await;
    eventually("service answers", || {
        let mut c = client.clone();
        async move {
            c.list_incentives(v1::ListIncentivesRequest::default())
                .await
                .is_ok()
        }
    })
    .await;
    let _ = &mut client;
    instance
}

pub type Client = IncentiveServiceClient<Authed>;

impl Instance {
    pub async fn client(&self, role: Role) -> Client {
        IncentiveServiceClient::new(self.app.authed(role).await)
    }

    pub async fn stop(self) {
        self.app.stop().await.expect("app stopped cleanly");
    }
}

/// Where the test ERP's pushes come from: ingest accepted each at `at`.
fn origin(at: DateTime<Utc>) -> Origin<'static> {
    Origin {
        source: "test",
        batch_id: "b",
        received_at: at,
    }
}

/// Product data as ingest publishes it.
pub fn product(sku: &str, category: &str, price: &str, cost: &str, at: DateTime<Utc>) -> Event {
    let product = Product {
        category: category.into(),
        price: price.parse().expect("price"),
        unit_cost: cost.parse().expect("unit cost"),
        base_rate: None,
    };
    let record = ProductRecord {
        as_of: Some(at),
        ..ProductRecord::new(Sku::new(sku).expect("sku"), product, "EUR")
    };
    product_changed(&record, origin(at))
}

/// A stock reading with the ERP's velocity, as ingest publishes it.
pub fn stock(sku: &str, on_hand: &str, velocity: &str, sequence: u64, at: DateTime<Utc>) -> Event {
    let on_hand = on_hand.parse().expect("on hand");
    let reading = StockReading {
        velocity: Some(velocity.parse().expect("velocity")),
        ..StockReading::new(Sku::new(sku).expect("sku"), on_hand, at, sequence)
    };
    stock_changed(&reading, origin(at))
}

pub async fn publish(bus: &Bus, events: Vec<Event>) {
    bus.publish_batch(streams::STOCK, events)
        .await
        .expect("publish stock");
}

/// Every entry on the incentives stream so far, decoded, with the entry's key and kind.
pub async fn incentive_events(bus: &Bus) -> Vec<(String, Option<String>, v1::IncentiveChanged)> {
    let mut out = Vec::new();
    let mut cursor = bus.start_cursor();
    loop {
        let (batch, next) = bus
            .read_after(streams::INCENTIVES, &cursor, 500)
            .await
            .expect("read incentives");
        if batch.is_empty() {
            break;
        }
        for d in batch {
            let m = v1::IncentiveChanged::decode(d.payload.clone()).expect("IncentiveChanged");
            out.push((d.key.clone(), d.kind.clone(), m));
        }
        cursor = next;
    }
    out.sort_by_key(|(_, _, m)| {
        m.meta
            .as_ref()
            .and_then(|m| m.occurred_at)
            .map(|t| (t.seconds, t.nanos))
            .unwrap_or_default()
    });
    out
}

/// The transitions published for `sku`, in order.
pub async fn transitions_of(bus: &Bus, sku: &str) -> Vec<(v1::IncentiveTransition, v1::Incentive)> {
    incentive_events(bus)
        .await
        .into_iter()
        .filter(|(k, _, _)| k == sku)
        .map(|(_, _, m)| {
            (
                v1::IncentiveTransition::try_from(m.transition).expect("transition"),
                m.incentive.expect("incentive"),
            )
        })
        .collect()
}

/// Polls `check` until it holds, failing the test after 10 s.
pub async fn eventually<F, Fut>(what: &str, mut check: F)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    ratemesh_testkit::eventually(what, Duration::from_secs(10), || {
        let holds = check();
        async move { holds.await.then_some(()) }
    })
    .await;
}

/// Waits until `sku` has `n` transitions and returns them.
pub async fn wait_transitions(
    bus: &Bus,
    sku: &str,
    n: usize,
) -> Vec<(v1::IncentiveTransition, v1::Incentive)> {
    eventually(&format!("{n} transitions of {sku}"), || async {
        transitions_of(bus, sku).await.len() >= n
    })
    .await;
    transitions_of(bus, sku).await
}

pub async fn list(client: &mut Client, req: v1::ListIncentivesRequest) -> Vec<v1::Incentive> {
    client
        .list_incentives(req)
        .await
        .expect("list")
        .into_inner()
        .incentives
}

pub fn millis(t: Option<&prost_types::Timestamp>) -> i64 {
    t.map_or(0, |t| t.seconds * 1000 + i64::from(t.nanos / 1_000_000))
}

/// The manual clock's current time.
pub fn clock_now(clock: &ManualClock) -> chrono::DateTime<chrono::Utc> {
    use ratemesh_incentives::Clock as _;
    clock.now()
}

/// Whether `sku`'s record holds its product data and a stock reading (the stock stream's
/// entries for it were folded).
pub async fn has_stock_and_product(bus: &Bus, sku: &str) -> bool {
    let Ok(Some(stored)) = bus.get_state("incentive", sku).await else {
        return false;
    };
    stored
        .fields
        .get("record")
        .and_then(|b| ratemesh_incentives::record::decode_record(b).ok())
        .is_some_and(|r| r.view.product.is_some() && !r.view.stock.is_empty())
}
