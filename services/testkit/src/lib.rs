//! The one way ratemesh tests (and the in-process load target) start ratemesh and talk to
//! it, so a test reads as the user's story:
//!
//! ```text
//! let app = TestApp::spawn().await;
//! let sink = Sink::start().await;
//! app.register_partner("p", &sink.url(), Default::default()).await;
//! app.push_products(&[Product::new("SKU-1", "home", "100", "40")]).await;
//! app.push_stock(&[Stock::new("SKU-1", 20).velocity("10")]).await;
//! let card = app.wait_card("SKU-1", |c| c.band == "scarce").await;
//! eventually("the partner hears of it", Duration::from_secs(10), || async { sink.received().pop() }).await;
//! ```
//!
//! Layout: [`settings`] (ports, one key per role, one ERP source, test policy),
//! [`bearer`] (the API-key interceptor), [`eventually()`] (polling with a deadline), [`health`] (waiting for SERVING),
//! [`erp`] (stock and product lines, the signed webhook client), [`app`] (the running
//! services and their verbs), [`sink`] (a partner endpoint that records webhooks),
//! [`promtool`] (Prometheus's checker of the exposition and the alert rules),
//! [`collector`] (an OTLP trace collector that keeps what the app exports).

#![allow(unreachable_pub)]

pub mod app;
pub mod bearer;
pub mod collector;
pub mod erp;
pub mod eventually;
pub mod health;
pub mod promtool;
pub mod settings;
pub mod sink;

pub use app::TestApp;
pub use bearer::Bearer;
pub use collector::{CollectedSpan, Collector, SpanKind};
pub use erp::{Answer, ErpClient, Product, Stock};
pub use eventually::{eventually, wait_for};
pub use health::wait_serving;
pub use ratemesh::ServiceName;
pub use ratemesh_bus::testkit::RedisServer;
pub use settings::{ERP_SECRET, key_of, policy_file, test_bus_options, test_settings};
pub use sink::{Received, Sink};
