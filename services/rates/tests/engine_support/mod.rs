//! Shared by the engine and override tests: events as ingest and the override service
//! publish them, an engine over a bus, and waiting for consumers to drain.

#![allow(dead_code, unreachable_pub)]

use std::sync::Arc;
use std::time::{Duration, Instant};

use chrono::{DateTime, TimeDelta, TimeZone, Utc};
use ratemesh_bus::{Bus, BusOptions};
use ratemesh_contract::stock::{
    Origin, ProductRecord, StockReading, decode_product, decode_stock, product_changed,
    stock_changed,
};
use ratemesh_contract::{kinds, rate, streams};
use ratemesh_core::{Event, Money, Policy, Product, Quantity, Sku, Velocity};
use ratemesh_proto::v1;
use ratemesh_rates::engine::{Engine, EngineOptions};
use rust_decimal::Decimal;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

pub const STOCK: &str = streams::STOCK;
/// The consumer group the rates engine reads with.
pub const GROUP: &str = streams::groups::RATES;

pub fn t(minutes: i64) -> DateTime<Utc> {
    Utc.with_ymd_and_hms(2025, 3, 3, 8, 0, 0).unwrap() + TimeDelta::minutes(minutes)
}

pub fn sku(s: &str) -> Sku {
    Sku::new(s).unwrap()
}

pub fn fast_options() -> BusOptions {
    BusOptions {
        partitions: 1,
        max_deliveries: 5,
        reclaim_idle: Duration::from_millis(300),
        read_block: Duration::from_millis(50),
        lease_ttl: Duration::from_millis(500),
        batch_size: 128,
    }
}

pub fn memory_bus() -> Bus {
    Bus::memory(fast_options()).unwrap()
}

pub fn engine(bus: &Bus, policy: Policy) -> Engine {
    Engine::new(
        bus.clone(),
        Arc::new(policy),
        EngineOptions {
            concurrency: 16,
            scan_page: 50,
            timer_poll: Duration::from_millis(20),
            ..EngineOptions::default()
        },
    )
}

/// Where the test ERP's pushes come from: ingest accepted each at `received_at`.
fn origin(received_at: DateTime<Utc>) -> Origin<'static> {
    Origin {
        source: "test-erp",
        batch_id: "b",
        received_at,
    }
}

/// A stock reading as the core event and as ingest's `StockChanged` entry (accepted at
/// `as_of`).
pub fn stock(
    sku_: &str,
    on_hand: i64,
    sequence: u64,
    as_of: DateTime<Utc>,
    velocity: Option<i64>,
) -> (Event, ratemesh_bus::Event) {
    let on_hand = Quantity::new(Decimal::from(on_hand)).unwrap();
    let reading = StockReading {
        velocity: velocity.map(|v| Velocity::new(Decimal::from(v)).unwrap()),
        ..StockReading::new(sku(sku_), on_hand, as_of, sequence)
    };
    let entry = stock_changed(&reading, origin(as_of));
    // The core event is what the consumers decode, so the offline replay sees exactly
    // what they do.
    let core = decode_stock(&entry.payload).expect("an encoded reading decodes");
    (core, entry)
}

/// Product data as the core event and as ingest's `ProductChanged` entry (changed and
/// accepted at `at`).
pub fn product(
    sku_: &str,
    category: &str,
    price: i64,
    unit_cost: i64,
    at: DateTime<Utc>,
) -> (Event, ratemesh_bus::Event) {
    let product = Product {
        category: category.into(),
        price: Money::new(Decimal::from(price)).unwrap(),
        unit_cost: Money::new(Decimal::from(unit_cost)).unwrap(),
        base_rate: None,
    };
    let record = ProductRecord {
        as_of: Some(at),
        ..ProductRecord::new(sku(sku_), product, "USD")
    };
    let entry = product_changed(&record, origin(at));
    let core = decode_product(&entry.payload).expect("an encoded product decodes");
    (core, entry)
}

/// Starts a consumer of `stream` in group `rates`; cancel the token or abort the handle.
pub fn spawn_consumer(
    engine: &Engine,
    stream: &'static str,
    name: &str,
) -> (CancellationToken, JoinHandle<anyhow::Result<()>>) {
    let token = CancellationToken::new();
    let handle = tokio::spawn(ratemesh_rates::engine::consumer::run(
        engine.clone(),
        stream,
        name.to_owned(),
        token.clone(),
    ));
    (token, handle)
}

/// Waits until group `rates` has nothing left on `stream`, failing after `limit`.
pub async fn drained(bus: &Bus, stream: &str, limit: Duration) {
    let deadline = Instant::now() + limit;
    loop {
        let stats = bus.stream_stats(stream, GROUP).await.unwrap();
        if stats.backlog == 0 {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "stream {stream} not drained in time: {stats:?}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// The published proto card of a SKU.
pub async fn published(bus: &Bus, sku_: &str) -> Option<v1::RateCard> {
    rate::published_card(bus, sku_).await.unwrap()
}

/// Every `RateChanged` on the rates stream, in order.
pub async fn rate_changes(bus: &Bus) -> Vec<v1::RateChanged> {
    let (entries, _) = bus
        .read_after(streams::RATES, &bus.start_cursor(), 100_000)
        .await
        .unwrap();
    entries
        .iter()
        .map(|d| {
            assert_eq!(d.kind.as_deref(), Some(kinds::RATE_CHANGED));
            rate::decode_rate_changed(&d.payload).unwrap()
        })
        .collect()
}

pub fn codes(card: &v1::RateCard) -> Vec<&str> {
    card.reasons.iter().map(|r| r.code.as_str()).collect()
}

/// The shipped example policy on an ordinary day: its peak windows removed, so a card
/// computed "now" does not depend on whether the calendar is in BFCM.
pub fn example_policy() -> Policy {
    Policy::example().off_peak().unwrap()
}

/// A policy whose cards depend only on the latest inputs (no damping, hold or
/// hysteresis), so any delivery order of the same readings must give the same card.
pub fn path_independent_policy() -> Policy {
    Policy::from_toml_str(
        r#"
[program]
id = "test"
[defaults]
base_rate = "0.05"
bands = [
    { name = "scarce", max_days = "3", multiplier = "0.6" },
    { name = "normal", max_days = "60", multiplier = "1.0" },
    { name = "overstock", multiplier = "1.4" },
]
hysteresis = "0"
max_step = "1"
min_hold_minutes = 0
floor = "0.01"
cap = "0.20"
margin_share = "0.40"
"#,
    )
    .unwrap()
}
