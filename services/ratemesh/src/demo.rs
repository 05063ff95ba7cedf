//! Sample data for `ratemesh up --demo`: a small catalogue and a simulated ERP feed, so a
//! newcomer sees rates move within a minute and can watch them.
//!
//! The feed goes through the real front door — `InventoryIngest` over gRPC with an `erp`
//! key — so what the demo shows is what an integration would get. Each tick stands for
//! [`SIM_DAYS_PER_TICK`] of trading: fast sellers run down toward scarcity (and are
//! restocked after selling out), overstocked SKUs barely move, steady ones hover. The demo
//! policy is the example policy without the minimum hold time, so each push can move a
//! rate (a real program keeps the hold to avoid flapping).

use std::net::SocketAddr;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use ratemesh_core::EXAMPLE_POLICY_TOML;
use ratemesh_proto::v1;
use ratemesh_proto::v1::inventory_ingest_client::InventoryIngestClient;
use rust_decimal::Decimal;
use tonic::metadata::MetadataValue;

/// Simulated days of sales per tick.
pub const SIM_DAYS_PER_TICK: Decimal = Decimal::from_parts(5, 0, 0, false, 1); // 0.5
/// Real time between pushes.
pub const TICK: Duration = Duration::from_secs(3);

/// How a demo SKU's stock behaves.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Profile {
    /// Sells fast: runs down into scarcity, sells out, is restocked.
    FastSeller,
    /// Far more stock than sales: overstock bands, candidates for flash incentives.
    Overstocked,
    /// Normal cover, small swings.
    Steady,
}

/// One SKU of the demo catalogue.
#[derive(Debug, Clone)]
pub struct DemoSku {
    /// SKU.
    pub sku: &'static str,
    /// Category of the example policy (or one that uses its defaults).
    pub category: &'static str,
    /// Product title.
    pub title: &'static str,
    /// Sale price (USD).
    pub price: &'static str,
    /// Unit cost (USD).
    pub unit_cost: &'static str,
    /// Units sold per day.
    pub velocity: u32,
    /// Days of cover at start.
    pub start_cover_days: u32,
    /// Behaviour.
    pub profile: Profile,
}

// One catalogue row per call: named fields would triple the table's length.
#[allow(clippy::too_many_arguments)]
const fn sku(
    sku: &'static str,
    category: &'static str,
    title: &'static str,
    price: &'static str,
    unit_cost: &'static str,
    velocity: u32,
    start_cover_days: u32,
    profile: Profile,
) -> DemoSku {
    DemoSku {
        sku,
        category,
        title,
        price,
        unit_cost,
        velocity,
        start_cover_days,
        profile,
    }
}

use Profile::{FastSeller, Overstocked, Steady};

/// The demo catalogue: 32 SKUs across the example policy's categories.
pub const CATALOGUE: &[DemoSku] = &[
    sku(
        "DEMO-TV-55",
        "electronics",
        "55\" 4K TV",
        "499.00",
        "380.00",
        12,
        9,
        FastSeller,
    ),
    sku(
        "DEMO-TV-65",
        "electronics",
        "65\" OLED TV",
        "1299.00",
        "990.00",
        5,
        12,
        FastSeller,
    ),
    sku(
        "DEMO-EARBUDS",
        "electronics",
        "Wireless earbuds",
        "129.00",
        "62.00",
        40,
        7,
        FastSeller,
    ),
    sku(
        "DEMO-CONSOLE",
        "electronics",
        "Games console",
        "449.00",
        "410.00",
        30,
        5,
        FastSeller,
    ),
    sku(
        "DEMO-LAPTOP-14",
        "electronics",
        "14\" laptop",
        "899.00",
        "700.00",
        6,
        40,
        Steady,
    ),
    sku(
        "DEMO-TABLET",
        "electronics",
        "10\" tablet",
        "329.00",
        "240.00",
        9,
        30,
        Steady,
    ),
    sku(
        "DEMO-CHARGER",
        "electronics",
        "65 W USB-C charger",
        "39.00",
        "14.00",
        25,
        150,
        Overstocked,
    ),
    sku(
        "DEMO-CABLE-2M",
        "electronics",
        "USB-C cable 2 m",
        "15.00",
        "3.00",
        30,
        200,
        Overstocked,
    ),
    sku(
        "DEMO-SPEAKER",
        "electronics",
        "Bluetooth speaker",
        "79.00",
        "35.00",
        8,
        130,
        Overstocked,
    ),
    sku(
        "DEMO-WATCH",
        "electronics",
        "Fitness watch",
        "199.00",
        "110.00",
        15,
        20,
        Steady,
    ),
    sku(
        "DEMO-PUFFER-M",
        "apparel",
        "Puffer jacket M",
        "149.00",
        "55.00",
        20,
        6,
        FastSeller,
    ),
    sku(
        "DEMO-PUFFER-L",
        "apparel",
        "Puffer jacket L",
        "149.00",
        "55.00",
        14,
        8,
        FastSeller,
    ),
    sku(
        "DEMO-BOOTS-42",
        "apparel",
        "Winter boots 42",
        "119.00",
        "48.00",
        10,
        10,
        FastSeller,
    ),
    sku(
        "DEMO-TEE-WHITE",
        "apparel",
        "Cotton tee white",
        "19.00",
        "5.00",
        60,
        25,
        Steady,
    ),
    sku(
        "DEMO-TEE-BLACK",
        "apparel",
        "Cotton tee black",
        "19.00",
        "5.00",
        55,
        30,
        Steady,
    ),
    sku(
        "DEMO-SWIMSUIT",
        "apparel",
        "Swimsuit",
        "49.00",
        "15.00",
        3,
        160,
        Overstocked,
    ),
    sku(
        "DEMO-SANDALS",
        "apparel",
        "Sandals",
        "39.00",
        "12.00",
        4,
        140,
        Overstocked,
    ),
    sku(
        "DEMO-SCARF",
        "apparel",
        "Wool scarf",
        "29.00",
        "9.00",
        18,
        35,
        Steady,
    ),
    sku(
        "DEMO-MIXER",
        "home",
        "Stand mixer",
        "349.00",
        "210.00",
        7,
        8,
        FastSeller,
    ),
    sku(
        "DEMO-AIRFRYER",
        "home",
        "Air fryer",
        "99.00",
        "48.00",
        35,
        6,
        FastSeller,
    ),
    sku(
        "DEMO-KETTLE",
        "home",
        "Electric kettle",
        "45.00",
        "19.00",
        20,
        40,
        Steady,
    ),
    sku(
        "DEMO-DUVET",
        "home",
        "Down duvet",
        "189.00",
        "80.00",
        6,
        50,
        Steady,
    ),
    sku(
        "DEMO-FAN",
        "home",
        "Desk fan",
        "35.00",
        "12.00",
        3,
        180,
        Overstocked,
    ),
    sku(
        "DEMO-BBQ",
        "home",
        "Charcoal barbecue",
        "129.00",
        "60.00",
        2,
        200,
        Overstocked,
    ),
    sku(
        "DEMO-CANDLE",
        "home",
        "Scented candle",
        "18.00",
        "4.00",
        30,
        28,
        Steady,
    ),
    sku(
        "DEMO-LEGO-CITY",
        "toys",
        "Building set, city",
        "89.00",
        "45.00",
        22,
        6,
        FastSeller,
    ),
    sku(
        "DEMO-PLUSH",
        "toys",
        "Plush bear",
        "25.00",
        "8.00",
        15,
        35,
        Steady,
    ),
    sku(
        "DEMO-PUZZLE",
        "toys",
        "1000-piece puzzle",
        "19.00",
        "6.00",
        6,
        130,
        Overstocked,
    ),
    sku(
        "DEMO-YOGA-MAT",
        "sports",
        "Yoga mat",
        "35.00",
        "11.00",
        12,
        45,
        Steady,
    ),
    sku(
        "DEMO-DUMBBELLS",
        "sports",
        "Adjustable dumbbells",
        "249.00",
        "150.00",
        9,
        7,
        FastSeller,
    ),
    sku(
        "DEMO-TENT",
        "sports",
        "2-person tent",
        "159.00",
        "70.00",
        2,
        170,
        Overstocked,
    ),
    sku(
        "DEMO-BOTTLE",
        "sports",
        "Steel bottle",
        "25.00",
        "7.00",
        28,
        32,
        Steady,
    ),
];

/// The SKU the README and the demo banner use in their examples: its margin leaves room
/// under the margin guard, so [`EXAMPLE_PIN`] comes out exactly as pinned.
pub const EXAMPLE_SKU: &str = "DEMO-EARBUDS";
/// The pin of the README and banner example (a rate fraction: 5 %).
pub const EXAMPLE_PIN: &str = "0.05";

/// The example policy with the minimum hold time removed, as TOML.
pub fn demo_policy_toml() -> String {
    EXAMPLE_POLICY_TOML
        .lines()
        .map(|line| {
            if line.trim_start().starts_with("min_hold_minutes") {
                "min_hold_minutes = 0"
            } else {
                line
            }
        })
        .collect::<Vec<_>>()
        .join("\n")
}

/// Writes the demo policy to a file of this process and returns its path.
pub fn write_demo_policy() -> anyhow::Result<std::path::PathBuf> {
    let path =
        std::env::temp_dir().join(format!("ratemesh-demo-policy-{}.toml", std::process::id()));
    std::fs::write(&path, demo_policy_toml())
        .map_err(|e| anyhow::anyhow!("writing the demo policy to {}: {e}", path.display()))?;
    Ok(path)
}

/// The simulated stock of every demo SKU.
#[derive(Debug, Clone)]
pub struct Simulation {
    on_hand: Vec<Decimal>,
    /// Ticks left until a sold-out SKU is restocked.
    restock_in: Vec<u32>,
    tick: u64,
}

impl Default for Simulation {
    fn default() -> Self {
        Self::new()
    }
}

impl Simulation {
    /// Every SKU at its starting cover.
    pub fn new() -> Self {
        Simulation {
            on_hand: CATALOGUE
                .iter()
                .map(|s| Decimal::from(s.velocity * s.start_cover_days))
                .collect(),
            restock_in: vec![0; CATALOGUE.len()],
            tick: 0,
        }
    }

    /// Current units on hand of catalogue entry `i`.
    pub fn on_hand(&self, i: usize) -> Decimal {
        self.on_hand[i]
    }

    /// Advances one tick of sales (deterministic: a small wobble from the tick number).
    pub fn step(&mut self) {
        self.tick += 1;
        for (i, s) in CATALOGUE.iter().enumerate() {
            let wobble = Decimal::from((self.tick + i as u64 * 7) % 5) / Decimal::from(10); // 0.0–0.4
            let rate = match s.profile {
                FastSeller => Decimal::ONE + wobble,
                Steady => Decimal::from_parts(8, 0, 0, false, 1) + wobble,
                Overstocked => Decimal::from_parts(5, 0, 0, false, 1) + wobble,
            };
            let sold = (Decimal::from(s.velocity) * SIM_DAYS_PER_TICK * rate).round();
            if self.on_hand[i].is_zero() {
                if self.restock_in[i] == 0 {
                    // Restocked to a healthy cover after a short outage.
                    self.on_hand[i] = Decimal::from(s.velocity * 30);
                } else {
                    self.restock_in[i] -= 1;
                }
                continue;
            }
            let next = (self.on_hand[i] - sold).max(Decimal::ZERO);
            if next.is_zero() {
                self.restock_in[i] = 3;
            }
            // Steady SKUs get topped up before they run low.
            self.on_hand[i] = if s.profile == Steady && next < Decimal::from(s.velocity * 15) {
                next + Decimal::from(s.velocity * 20)
            } else {
                next
            };
        }
    }
}

fn run_id() -> u128 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap_or_default()
        .as_millis()
}

/// Upserts the catalogue, then pushes the simulated stock every [`TICK`] until
/// `shutdown` resolves, through `InventoryIngest` at `grpc` with `erp_key`.
pub async fn run_feed(
    grpc: SocketAddr,
    erp_key: String,
    shutdown: impl Future<Output = ()> + Send,
) -> anyhow::Result<()> {
    let mut shutdown = std::pin::pin!(shutdown);
    let host = if grpc.ip().is_unspecified() {
        SocketAddr::from(([127, 0, 0, 1], grpc.port()))
    } else {
        grpc
    };
    let channel = tonic::transport::Endpoint::from_shared(format!("http://{host}"))?
        .connect()
        .await?;
    let bearer: MetadataValue<_> = format!("Bearer {erp_key}")
        .parse()
        .map_err(|_| anyhow::anyhow!("the erp key is not printable ascii"))?;
    let mut client =
        InventoryIngestClient::with_interceptor(channel, move |mut r: tonic::Request<()>| {
            r.metadata_mut().insert("authorization", bearer.clone());
            Ok(r)
        });
    let run = run_id();
    client
        .upsert_products(v1::UpsertProductsRequest {
            batch_id: format!("demo-products-{run}"),
            products: CATALOGUE
                .iter()
                .map(|s| v1::Product {
                    sku: s.sku.into(),
                    category: s.category.into(),
                    price: s.price.into(),
                    unit_cost: s.unit_cost.into(),
                    base_rate: None,
                    currency: "USD".into(),
                    title: Some(s.title.into()),
                    as_of: Some(ratemesh_contract::time::to_timestamp(chrono::Utc::now())),
                })
                .collect(),
        })
        .await
        .map_err(|s| anyhow::anyhow!("demo: upserting the catalogue failed: {}", s.message()))?;

    let mut sim = Simulation::new();
    let mut ticker = tokio::time::interval(TICK);
    for n in 0u64.. {
        tokio::select! {
            () = &mut shutdown => return Ok(()),
            _ = ticker.tick() => {}
        }
        if n > 0 {
            sim.step();
        }
        // Sequences grow with wall time, so a restart against a kept Redis is not stale.
        let sequence = u64::try_from(run_id()).unwrap_or(u64::MAX);
        let updates = CATALOGUE
            .iter()
            .enumerate()
            .map(|(i, s)| v1::StockUpdate {
                sku: s.sku.into(),
                location: "dc-east".into(),
                on_hand: sim.on_hand(i).to_string(),
                reserved: None,
                as_of: Some(ratemesh_contract::time::to_timestamp(chrono::Utc::now())),
                sequence,
                velocity: Some(s.velocity.to_string()),
            })
            .collect();
        let pushed = client
            .push_stock(v1::PushStockRequest {
                batch_id: format!("demo-stock-{run}-{n}"),
                updates,
            })
            .await;
        if let Err(status) = pushed {
            tracing::warn!(error = %status.message(), "demo: stock push failed; next tick retries");
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn demo_policy_is_valid_and_has_no_hold() {
        ratemesh_core::Policy::from_toml_str(&demo_policy_toml()).expect("valid");
        assert!(!demo_policy_toml().contains("min_hold_minutes = 60"));
    }

    #[test]
    fn fast_sellers_sell_out_and_are_restocked_overstock_stays_high() {
        let mut sim = Simulation::new();
        let fast = CATALOGUE
            .iter()
            .position(|s| s.sku == "DEMO-CONSOLE")
            .expect("sku");
        let over = CATALOGUE
            .iter()
            .position(|s| s.sku == "DEMO-CABLE-2M")
            .expect("sku");
        let mut sold_out = false;
        for _ in 0..40 {
            sim.step();
            sold_out |= sim.on_hand(fast).is_zero();
        }
        assert!(sold_out, "a fast seller sells out within 40 ticks");
        assert!(sim.on_hand(fast) > Decimal::ZERO, "and is restocked");
        let cover = sim.on_hand(over) / Decimal::from(CATALOGUE[over].velocity);
        assert!(
            cover > Decimal::from(120),
            "overstock keeps deep cover: {cover}"
        );
    }

    #[test]
    fn the_example_pin_is_within_every_guardrail_of_the_example_sku() {
        let policy = ratemesh_core::Policy::from_toml_str(&demo_policy_toml()).expect("valid");
        let item = CATALOGUE
            .iter()
            .find(|s| s.sku == EXAMPLE_SKU)
            .expect("the example SKU is in the catalogue");
        let category = policy.category(item.category);
        let pin: Decimal = EXAMPLE_PIN.parse().expect("pin");
        let price: Decimal = item.price.parse().expect("price");
        let cost: Decimal = item.unit_cost.parse().expect("cost");
        let margin_limit = category.margin_share * (price - cost) / price;
        assert!(pin >= category.floor.get(), "below the floor");
        assert!(pin <= category.cap.get(), "above the cap");
        assert!(
            pin <= margin_limit,
            "the margin guard holds {EXAMPLE_SKU} at {}",
            margin_limit.round_dp(4)
        );
    }

    #[test]
    fn catalogue_skus_are_unique_and_valid() {
        let mut seen = std::collections::HashSet::new();
        for s in CATALOGUE {
            ratemesh_core::Sku::new(s.sku).expect("valid sku");
            assert!(seen.insert(s.sku), "{} twice", s.sku);
            assert!(
                s.price.parse::<Decimal>().expect("price")
                    > s.unit_cost.parse::<Decimal>().expect("cost")
            );
        }
        assert!(CATALOGUE.len() >= 30);
    }
}
