//! A partner key may watch rates (DESIGN §1, §4.4), and sees only the changes its
//! subscription covers, whatever its request asks for.

use std::time::Duration;

use ratemesh_proto::v1;
use ratemesh_proto::v1::inventory_ingest_client::InventoryIngestClient;
use ratemesh_proto::v1::partner_service_client::PartnerServiceClient;
use ratemesh_proto::v1::rate_service_client::RateServiceClient;
use ratemesh_runtime::Role;
use ratemesh_testkit::{Bearer, TestApp};
use tonic::Code;

fn product(sku: &str, category: &str) -> v1::Product {
    v1::Product {
        sku: sku.into(),
        category: category.into(),
        price: "100".into(),
        unit_cost: "40".into(),
        currency: "USD".into(),
        ..Default::default()
    }
}

/// The SKUs of the next cards on `watch` until `last` arrives (heartbeats skipped).
async fn skus_until(watch: &mut tonic::Streaming<v1::RateUpdate>, last: &str) -> Vec<String> {
    let mut seen = Vec::new();
    while !seen.iter().any(|s| s == last) {
        let update = tokio::time::timeout(Duration::from_secs(10), watch.message())
            .await
            .unwrap_or_else(|_| panic!("no card for {last} within 10 s; saw {seen:?}"))
            .expect("stream")
            .expect("stream open");
        if let Some(card) = update.card {
            seen.push(card.sku);
        }
    }
    seen
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_partner_watches_only_what_it_subscribes_to() {
    let app = TestApp::spawn().await;
    let mut partner_rates =
        RateServiceClient::with_interceptor(app.channel().await, Bearer::role(Role::Partner));

    // Not registered yet: nothing to watch.
    let err = partner_rates
        .watch_rates(v1::WatchRatesRequest::default())
        .await
        .expect_err("unregistered partner");
    assert_eq!(err.code(), Code::PermissionDenied, "{err:?}");

    PartnerServiceClient::with_interceptor(app.channel().await, Bearer::role(Role::Admin))
        .upsert_partner(v1::UpsertPartnerRequest {
            partner: Some(v1::Partner {
                id: "test-partner".into(),
                name: "Test partner".into(),
                endpoint_url: "https://93.184.216.34/hook".into(),
                enabled: true,
                filters: Some(v1::PartnerFilter {
                    categories: vec!["home".into()],
                    ..Default::default()
                }),
                ..Default::default()
            }),
        })
        .await
        .expect("partner registered");

    // Asks for everything, and for a garden SKU by name: the subscription still narrows.
    let mut watch = partner_rates
        .watch_rates(v1::WatchRatesRequest {
            skus: vec!["GARDEN-1".into(), "HOME-1".into()],
            categories: vec!["garden".into(), "home".into()],
            ..Default::default()
        })
        .await
        .expect("a registered partner may watch")
        .into_inner();
    let mut everything =
        RateServiceClient::with_interceptor(app.channel().await, Bearer::role(Role::Network))
            .watch_rates(v1::WatchRatesRequest::default())
            .await
            .expect("network watch")
            .into_inner();

    let mut erp =
        InventoryIngestClient::with_interceptor(app.channel().await, Bearer::role(Role::Erp));
    for (n, (sku, category)) in [
        ("GARDEN-1", "garden"),
        ("HOME-1", "home"),
        ("GARDEN-2", "garden"),
        ("HOME-2", "home"),
    ]
    .into_iter()
    .enumerate()
    {
        erp.upsert_products(v1::UpsertProductsRequest {
            batch_id: format!("products-{n}"),
            products: vec![product(sku, category)],
        })
        .await
        .expect("products accepted");
    }

    let all = skus_until(&mut everything, "HOME-2").await;
    assert!(all.iter().any(|s| s.starts_with("GARDEN")), "{all:?}");
    let seen = skus_until(&mut watch, "HOME-2").await;
    assert!(seen.contains(&"HOME-1".to_owned()), "{seen:?}");
    assert!(
        seen.iter().all(|s| s.starts_with("HOME")),
        "the partner saw SKUs outside its subscription: {seen:?}"
    );
    app.stop().await.expect("clean stop");
}
