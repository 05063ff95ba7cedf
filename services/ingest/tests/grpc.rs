//! gRPC `InventoryIngest` runs the same validation and hand-off as the webhooks.

mod support;

use ratemesh_proto::v1;
use ratemesh_proto::v1::inventory_ingest_client::InventoryIngestClient;
use support::{erp_key, start};
use tonic_types::StatusExt;

fn update(sku: &str, on_hand: &str, sequence: u64) -> v1::StockUpdate {
    let as_of = chrono::Utc::now() - chrono::Duration::seconds(5);
    v1::StockUpdate {
        sku: sku.into(),
        location: "dc-1".into(),
        on_hand: on_hand.into(),
        reserved: None,
        as_of: Some(prost_types::Timestamp {
            seconds: as_of.timestamp(),
            nanos: 0,
        }),
        sequence,
        velocity: Some("2.5".into()),
    }
}

fn authed<T>(message: T) -> tonic::Request<T> {
    let mut request = tonic::Request::new(message);
    request.metadata_mut().insert(
        "authorization",
        format!("Bearer {}", erp_key()).parse().expect("ascii"),
    );
    request
}

#[tokio::test]
async fn push_stock_validates_deduplicates_and_counts_like_the_webhook() {
    let ingest = start(|_| {}).await;
    let mut client = InventoryIngestClient::new(ingest.channel().await);

    let batch = v1::PushStockRequest {
        batch_id: "grpc-1".into(),
        updates: vec![update("SKU-1", "12", 1), update("SKU-2", "0", 4)],
    };
    let answer = client
        .push_stock(authed(batch.clone()))
        .await
        .expect("accepted")
        .into_inner();
    assert_eq!(
        (
            answer.applied,
            answer.duplicate,
            answer.stale,
            answer.replayed
        ),
        (2, 0, 0, false)
    );
    let again = client
        .push_stock(authed(batch))
        .await
        .expect("accepted")
        .into_inner();
    assert!(again.replayed);
    assert_eq!(again.applied, 2);

    let stale = v1::PushStockRequest {
        batch_id: String::new(),
        updates: vec![update("SKU-2", "9", 3)],
    };
    let answer = client
        .push_stock(authed(stale))
        .await
        .expect("accepted")
        .into_inner();
    assert_eq!(answer.stale, 1);

    let invalid = v1::PushStockRequest {
        batch_id: String::new(),
        updates: vec![update("SKU-3", "1", 1), update("", "lots", 0)],
    };
    let status = client
        .push_stock(authed(invalid))
        .await
        .expect_err("invalid");
    assert_eq!(status.code(), tonic::Code::InvalidArgument);
    let fields: Vec<_> = status
        .get_details_bad_request()
        .expect("field violations")
        .field_violations
        .into_iter()
        .map(|v| v.field)
        .collect();
    assert_eq!(
        fields,
        [
            "updates[1].sku",
            "updates[1].on_hand",
            "updates[1].sequence"
        ]
    );

    let updates = ingest.stock_updates().await;
    assert_eq!(updates.len(), 2, "only the first batch was applied");
    assert!(updates.iter().all(|u| u.source == "erp-grpc"));
    ingest.stop().await;
}

#[tokio::test]
async fn upsert_products_needs_the_erp_role() {
    let ingest = start(|_| {}).await;
    let mut client = InventoryIngestClient::new(ingest.channel().await);
    let request = v1::UpsertProductsRequest {
        batch_id: String::new(),
        products: vec![v1::Product {
            sku: "P-1".into(),
            category: "home".into(),
            price: "25.00".into(),
            unit_cost: "10.00".into(),
            base_rate: Some("0.06".into()),
            currency: "USD".into(),
            title: Some("Throw blanket".into()),
            as_of: None,
        }],
    };
    let status = client
        .upsert_products(tonic::Request::new(request.clone()))
        .await
        .expect_err("no key");
    assert_eq!(status.code(), tonic::Code::Unauthenticated);
    let answer = client
        .upsert_products(authed(request))
        .await
        .expect("accepted")
        .into_inner();
    assert_eq!(answer.applied, 1);
    ingest.stop().await;
}
