//! Readiness through a Redis outage, as `ratemesh serve <service>` pods report it: a rates
//! pod keeps answering reads from memory, so it stays ready (a failover must not empty the
//! Service networks read through), while the write path says the backend is gone — ingest
//! turns not-ready, and every pod reports `ratemesh.backend` NOT_SERVING — and all of it
//! comes back when Redis does.

use std::time::{Duration, Instant};

use ratemesh_bus::testkit::RedisServer;
use ratemesh_proto::v1;
use ratemesh_runtime::{BACKEND_HEALTH, Role};
use ratemesh_testkit::{Product, ServiceName, Stock, TestApp, test_settings};
use tonic_health::pb::health_check_response::ServingStatus;

const RATES: &str = "ratemesh.v1.RateService";
const OVERRIDES: &str = "ratemesh.v1.OverrideService";

/// Waits until `app` reports `status` for the health service `name`.
async fn wait_health(app: &TestApp, name: &str, status: ServingStatus) {
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        let now = app.health(name).await;
        if now == status {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "{name:?} stayed {now:?}, expected {status:?}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

async fn get_rate(app: &TestApp, sku: &str) -> Result<v1::RateCard, tonic::Status> {
    let response = app
        .rates(Role::Network)
        .await
        .get_rate(v1::GetRateRequest {
            sku: sku.into(),
            as_of: None,
        })
        .await?;
    Ok(response.into_inner().card.expect("a card"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_redis_outage_keeps_rates_ready_and_reports_the_write_path_down() {
    let mut redis = RedisServer::start();
    let prefix = redis.unique_prefix();
    let spawn = |service| TestApp::spawn_services_at(&redis, test_settings(), &prefix, service);
    let rates = spawn(&[ServiceName::Rates]).await;
    let ingest = spawn(&[ServiceName::Ingest]).await;
    rates.wait_until_serving().await;
    ingest.wait_until_serving().await;
    for app in [&rates, &ingest] {
        assert_eq!(app.health(BACKEND_HEALTH).await, ServingStatus::Serving);
    }
    let product = Product::new("SKU-READY", "home", "100", "40");
    assert_eq!(ingest.push_products(&[product]).await.status, 202);
    let stock = Stock::new("SKU-READY", "40").velocity("2");
    assert_eq!(ingest.push_stock(&[stock]).await.status, 202);
    let card = rates.wait_card("SKU-READY", |_| true).await;

    redis.kill();
    for app in [&rates, &ingest] {
        wait_health(app, BACKEND_HEALTH, ServingStatus::NotServing).await;
    }

    // Rates: ready, reads answered from memory; what writes (overrides) says it cannot.
    assert_eq!(rates.health("").await, ServingStatus::Serving);
    assert_eq!(rates.health(RATES).await, ServingStatus::Serving);
    assert_eq!(rates.health(OVERRIDES).await, ServingStatus::NotServing);
    let (status, body) = rates.admin_get("/readyz").await;
    assert_eq!(status, 200, "{body}");
    assert!(body.contains("backend disconnected"), "{body}");
    let first = get_rate(&rates, "SKU-READY")
        .await
        .expect("read from memory");
    assert!(first.version >= card.version);
    for _ in 0..20 {
        let read = get_rate(&rates, "SKU-READY")
            .await
            .expect("read from memory");
        assert_eq!(read, first);
    }

    // Ingest cannot accept a push without Redis: not ready, and says why.
    wait_health(&ingest, "", ServingStatus::NotServing).await;
    let (status, body) = ingest.admin_get("/readyz").await;
    assert_eq!(status, 503, "{body}");
    assert!(body.contains("needs the backend"), "{body}");

    redis.restart();
    for app in [&rates, &ingest] {
        wait_health(app, BACKEND_HEALTH, ServingStatus::Serving).await;
        wait_health(app, "", ServingStatus::Serving).await;
        assert_eq!(app.admin_get("/readyz").await, (200, "ready\n".to_owned()));
    }
    assert_eq!(rates.health(OVERRIDES).await, ServingStatus::Serving);

    for app in [rates, ingest] {
        let _ = tokio::time::timeout(Duration::from_secs(10), app.try_stop()).await;
    }
}
