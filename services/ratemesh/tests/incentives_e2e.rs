//! End to end on a real redis-server, every service in one process: an overstock stock
//! push opens a flash incentive, the rate card shows it with its reason and
//! `guaranteed_until`, and when the incentive ends (cancelled, or its window expires on
//! the durable timer) the rate falls back.

use ratemesh::IncentivesSettings;
use ratemesh_bus::testkit::RedisServer;
use ratemesh_proto::v1;
use ratemesh_proto::v1::incentive_service_client::IncentiveServiceClient;
use ratemesh_proto::v1::inventory_ingest_client::InventoryIngestClient;
use ratemesh_runtime::Role;
use ratemesh_testkit::{Bearer, TestApp, test_settings};

/// A reading taken now, selling 5 a day. The timestamp is built from a generated
/// message's default so this test needs no direct prost-types dependency.
fn stock_update(sku: &str, on_hand: &str) -> v1::StockUpdate {
    let mut as_of = v1::StockUpdate::default().as_of.unwrap_or_default();
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .expect("clock after 1970");
    as_of.seconds = i64::try_from(now.as_secs()).expect("seconds");
    v1::StockUpdate {
        sku: sku.into(),
        on_hand: on_hand.into(),
        as_of: Some(as_of),
        sequence: 1,
        velocity: Some("5".into()),
        ..Default::default()
    }
}

fn has_incentive(card: &v1::RateCard) -> bool {
    card.reasons.iter().any(|r| r.code == "INCENTIVE")
}

fn incentive_part(card: &v1::RateCard) -> String {
    card.parts
        .as_ref()
        .map(|p| p.incentive.clone())
        .unwrap_or_default()
}

#[tokio::test]
async fn overstock_push_opens_an_incentive_the_card_shows_and_its_end_takes_back() {
    let redis = RedisServer::start();
    let mut settings = test_settings();
    settings.section_mut::<IncentivesSettings>().timer_poll_ms = 50;
    let app = TestApp::spawn_on_redis(&redis, settings).await;
    let channel = app.channel().await;
    let mut ingest =
        InventoryIngestClient::with_interceptor(channel.clone(), Bearer::role(Role::Erp));
    let mut incentives =
        IncentiveServiceClient::with_interceptor(channel, Bearer::role(Role::Merchandiser));

    // Garden uses the example policy's defaults: incentives open at 150 days of cover.
    // SHED-1: 2000 units selling 5 a day = 400 days. HOSE-1: 100 units = 20 days.
    ingest
        .upsert_products(v1::UpsertProductsRequest {
            batch_id: "products-1".into(),
            products: ["SHED-1", "HOSE-1"]
                .into_iter()
                .map(|sku| v1::Product {
                    sku: sku.into(),
                    category: "garden".into(),
                    price: "200".into(),
                    unit_cost: "80".into(),
                    currency: "EUR".into(),
                    ..Default::default()
                })
                .collect(),
        })
        .await
        .expect("products");
    ingest
        .push_stock(v1::PushStockRequest {
            batch_id: "stock-1".into(),
            updates: [("SHED-1", "2000"), ("HOSE-1", "100")]
                .into_iter()
                .map(|(sku, on_hand)| stock_update(sku, on_hand))
                .collect(),
        })
        .await
        .expect("stock");

    // The incentive opens by rule and the card carries it.
    let card = app.wait_card("SHED-1", has_incentive).await;
    let listed = incentives
        .list_incentives(v1::ListIncentivesRequest {
            sku: Some("SHED-1".into()),
            ..Default::default()
        })
        .await
        .expect("list")
        .into_inner()
        .incentives;
    assert_eq!(listed.len(), 1);
    let opened = &listed[0];
    assert_eq!(opened.origin, v1::IncentiveOrigin::Automatic as i32);
    assert_eq!(
        opened.reason,
        "overstock: 400 days of cover, at least 150 required"
    );
    assert_eq!(incentive_part(&card), "0.02");
    let reason = card
        .reasons
        .iter()
        .find(|r| r.code == "INCENTIVE")
        .expect("incentive reason");
    assert!(!reason.text.is_empty());
    assert_eq!(
        card.guaranteed_until, opened.ends_at,
        "guaranteed_until is the incentive's end"
    );

    // Cancelling ends it and the rate falls back by the bonus.
    incentives
        .cancel_incentive(v1::CancelIncentiveRequest {
            id: opened.id.clone(),
            reason: "end-to-end test".into(),
        })
        .await
        .expect("cancel");
    let fallen = app.wait_card("SHED-1", |c| !has_incentive(c)).await;
    assert_ne!(
        fallen.effective_rate, card.effective_rate,
        "the bonus is taken back"
    );
    assert!(
        matches!(incentive_part(&fallen).as_str(), "" | "0"),
        "{fallen:?}"
    );

    // A short manual incentive on HOSE-1 expires on its timer and the card falls back.
    let mut two_seconds = v1::TriggerIncentiveRequest::default()
        .duration
        .unwrap_or_default();
    two_seconds.seconds = 2;
    let manual = incentives
        .trigger_incentive(v1::TriggerIncentiveRequest {
            sku: "HOSE-1".into(),
            bonus_rate: "0.01".into(),
            duration: Some(two_seconds),
            reason: "weekend push".into(),
            ..Default::default()
        })
        .await
        .expect("trigger")
        .into_inner()
        .incentive
        .expect("incentive");
    let card = app.wait_card("HOSE-1", has_incentive).await;
    assert_eq!(incentive_part(&card), "0.01");
    assert_eq!(card.guaranteed_until, manual.ends_at);
    let card = app.wait_card("HOSE-1", |c| !has_incentive(c)).await;
    assert!(
        matches!(incentive_part(&card).as_str(), "" | "0"),
        "{card:?}"
    );
    let ended = incentives
        .list_incentives(v1::ListIncentivesRequest {
            sku: Some("HOSE-1".into()),
            ..Default::default()
        })
        .await
        .expect("list")
        .into_inner()
        .incentives;
    assert_eq!(ended[0].id, manual.id);
    assert_eq!(ended[0].end_reason, v1::IncentiveEndReason::Expired as i32);
    app.stop().await.expect("clean stop");
}
