//! With Redis gone, both front doors answer 503 / `UNAVAILABLE` and advise the configured
//! `ingest.retry_after_secs`, so an ERP backs off as long as the operator asked.

mod support;

use std::time::Duration;

use ratemesh_bus::testkit::RedisServer;
use ratemesh_bus::{Bus, BusOptions};
use ratemesh_ingest::IngestSettings;
use ratemesh_proto::v1;
use ratemesh_proto::v1::inventory_ingest_client::InventoryIngestClient;
use ratemesh_testkit::{ErpClient, ServiceName, TestApp};
use support::{SECRET, erp_key, settings, stock_body};
use tonic_types::StatusExt;

const RETRY_AFTER_SECS: u64 = 7;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pushes_while_redis_is_down_advise_the_configured_retry_after() {
    let mut redis = RedisServer::start();
    let bus = Bus::redis(&redis.url(), &redis.unique_prefix(), BusOptions::default())
        .await
        .expect("redis bus");
    let mut settings = settings();
    settings.section_mut::<IngestSettings>().retry_after_secs = RETRY_AFTER_SECS;
    let app = TestApp::spawn_services(settings, bus, &[ServiceName::Ingest]).await;
    let erp = ErpClient::new(app.http.expect("webhook port"), SECRET);
    let accepted = erp
        .post_signed("/v1/stock", &stock_body(&[("SKU-1", 5, 1)]), &[])
        .await;
    assert_eq!(accepted.status, 202, "{}", accepted.body);

    redis.kill();

    // With and without a batch id: the first bus call differs, the answer does not.
    for extra in [vec![], vec![("idempotency-key", "erp-down-1".to_owned())]] {
        let refused = erp
            .post_signed("/v1/stock", &stock_body(&[("SKU-1", 4, 2)]), &extra)
            .await;
        assert_eq!(refused.status, 503, "{}", refused.body);
        assert_eq!(refused.body["error"]["code"], "unavailable");
        assert_eq!(
            refused.headers[http::header::RETRY_AFTER],
            RETRY_AFTER_SECS.to_string()
        );
    }

    let mut client = InventoryIngestClient::new(app.channel().await);
    let mut request = tonic::Request::new(v1::PushStockRequest {
        batch_id: "grpc-down-1".into(),
        updates: vec![v1::StockUpdate {
            sku: "SKU-1".into(),
            location: "dc-1".into(),
            on_hand: "3".into(),
            reserved: None,
            as_of: Some(prost_types::Timestamp {
                seconds: chrono::Utc::now().timestamp() - 5,
                nanos: 0,
            }),
            sequence: 3,
            velocity: None,
        }],
    });
    request.metadata_mut().insert(
        "authorization",
        format!("Bearer {}", erp_key()).parse().expect("ascii"),
    );
    let refused = client
        .push_stock(request)
        .await
        .expect_err("no backend to append to");
    assert_eq!(refused.code(), tonic::Code::Unavailable, "{refused:?}");
    let retry = refused.get_details_retry_info().expect("retry info");
    assert_eq!(
        retry.retry_delay,
        Some(Duration::from_secs(RETRY_AFTER_SECS))
    );

    let _ = tokio::time::timeout(Duration::from_secs(10), app.try_stop()).await;
}
