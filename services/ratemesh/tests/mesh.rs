//! The whole mesh, end to end, on a real Redis and on a real Redis Cluster: a signed ERP
//! push to the ingest webhook becomes a rate card in the rates service and a signed
//! webhook at a partner's HTTP endpoint, with one trace id from the ERP request to the
//! partner delivery.

use ratemesh::NotifierSettings;
use std::time::Duration;

use ratemesh_bus::testkit::{RedisCluster, RedisServer};
use ratemesh_proto::v1;
use ratemesh_testkit::erp::{product_batch, stock_batch};
use ratemesh_testkit::{Product, Sink, Stock, TestApp, eventually, test_settings};

const TRACE_ID: &str = "4bf92f3577b34da6a3ce929d0e0e4736";

fn mesh_settings() -> ratemesh_runtime::Settings {
    let mut settings = test_settings();
    settings
        .section_mut::<NotifierSettings>()
        .coalesce_window_ms = 200;
    settings
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_signed_erp_push_reaches_the_partner_as_a_signed_webhook_in_one_trace() {
    let redis = RedisServer::start();
    let app = TestApp::spawn_on_redis(&redis, mesh_settings()).await;
    erp_push_reaches_the_partner(&app).await;
    app.stop().await.expect("clean shutdown");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn on_a_redis_cluster_a_signed_erp_push_reaches_the_partner_with_keys_on_every_primary() {
    let cluster = RedisCluster::start();
    // The deployment's default prefix: its partitions' slots lie on all three primaries.
    let app = TestApp::spawn_on_cluster_at(&cluster, mesh_settings(), "ratemesh").await;
    erp_push_reaches_the_partner(&app).await;
    let primaries = cluster.primaries().expect("the cluster's primaries");
    assert_eq!(primaries.len(), 3, "{primaries:?}");
    for node in primaries {
        let keys = cluster.key_count(node).expect("DBSIZE");
        assert!(
            keys > 0,
            "primary {node} holds none of the deployment's keys"
        );
    }
    app.stop().await.expect("clean shutdown");
}

async fn erp_push_reaches_the_partner(app: &TestApp) {
    let sink = Sink::start().await;
    let secret = app
        .register_partner(
            "mesh-partner",
            &sink.url(),
            v1::PartnerFilter {
                categories: vec!["home".into()],
                ..Default::default()
            },
        )
        .await;

    // One ERP sync (one trace), in the order an ERP sends it: the master data (the SKU
    // has no stock yet: out of stock), then a stock reading of 2 days of cover (scarce),
    // which moves the rate at once, not held by the out-of-stock card.
    let erp = app.erp();
    let products = product_batch(
        "mesh-products-1",
        &[Product::new("MESH-1", "home", "100", "40").currency("EUR")],
    );
    let answer = erp
        .post_signed(
            "/v1/products",
            &products,
            &[("traceparent", format!("00-{TRACE_ID}-00f067aa0ba902b8-01"))],
        )
        .await;
    assert_eq!(answer.status, 202, "{:?}", answer.body);
    let stock = stock_batch(
        "mesh-stock-1",
        &[Stock::new("MESH-1", "20").sequence(1).velocity("10")],
    );
    let answer = erp
        .post_signed(
            "/v1/stock",
            &stock,
            &[("traceparent", format!("00-{TRACE_ID}-00f067aa0ba902b7-01"))],
        )
        .await;
    assert_eq!(answer.status, 202, "{:?}", answer.body);

    // The partner receives the scarce rate, signed under its own secret.
    let (request, rate) = eventually(
        "a webhook with the scarce rate",
        Duration::from_secs(30),
        || async {
            sink.find_rate(|rate| {
                rate.sku == "MESH-1" && rate.reasons.iter().any(|x| x.code == "LOW_COVER")
            })
        },
    )
    .await;
    assert_eq!(rate.rate, "0.04", "{rate:?}");
    assert!(rate.version >= 1);
    assert!(!rate.reasons[0].text.is_empty());
    assert_eq!(rate.category, "home");

    assert!(
        request.verifies(&secret),
        "the webhook verifies under the partner's secret"
    );
    let body = request.json();
    assert_eq!(body.event_type, "rate.changed");
    assert_eq!(
        request.header("ratemesh-event-id"),
        Some(body.event_id.as_str())
    );

    // One trace from the ERP request to the partner delivery.
    let traceparent = request
        .header("traceparent")
        .expect("the delivery carries a traceparent");
    assert_eq!(
        traceparent.split('-').nth(1),
        Some(TRACE_ID),
        "trace id of the delivery: {traceparent}"
    );

    // The delivery is listed as delivered.
    let deliveries = app.deliveries("mesh-partner").await;
    assert!(deliveries.iter().any(|d| d.event_id == body.event_id));
}
