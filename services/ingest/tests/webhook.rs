//! The ERP webhooks through real sockets and a real Redis: what is accepted lands on the
//! stock stream with its trace context; every refusal has its status and body and leaves
//! the stream unchanged.

mod support;

use ratemesh_ingest::IngestSettings;
use ratemesh_runtime::signature;
use support::{NEXT_SECRET, SECRET, now, start, stock_body};

const TRACE_ID: &str = "4bf92f3577b34da6a3ce929d0e0e4736";

#[tokio::test]
async fn a_signed_batch_is_acknowledged_and_on_the_stream_with_trace_context() {
    let ingest = start(|_| {}).await;
    let body = stock_body(&[("SKU-1", 120, 1), ("SKU-2", 3, 7)]);
    let answer = ingest
        .erp
        .post_signed(
            "/v1/stock",
            &body,
            &[("traceparent", format!("00-{TRACE_ID}-00f067aa0ba902b7-01"))],
        )
        .await;
    assert_eq!(answer.status, 202, "{}", answer.body);
    assert_eq!(answer.body["applied"], 2);
    assert_eq!(answer.body["duplicate"], 0);
    assert_eq!(answer.body["stale"], 0);
    assert_eq!(answer.body["replayed"], false);

    let entries = ingest.stock_entries().await;
    assert_eq!(entries.len(), 2);
    for entry in &entries {
        let traceparent = entry
            .traceparent
            .as_deref()
            .expect("entry carries traceparent");
        assert!(traceparent.contains(TRACE_ID), "{traceparent}");
    }
    let mut updates = ingest.stock_updates().await;
    updates.sort_by(|a, b| {
        a.update
            .as_ref()
            .map(|u| u.sku.clone())
            .cmp(&b.update.as_ref().map(|u| u.sku.clone()))
    });
    let first = updates[0].update.as_ref().expect("update");
    assert_eq!(first.sku, "SKU-1");
    assert_eq!(first.on_hand, "120");
    assert_eq!(first.location, "dc-1");
    assert_eq!(updates[0].source, "erp-main");
    assert!(
        updates[0]
            .meta
            .as_ref()
            .is_some_and(|m| m.traceparent.contains(TRACE_ID))
    );
    ingest.stop().await;
}

#[tokio::test]
async fn every_refusal_has_its_status_and_changes_nothing() {
    let ingest = start(|s| {
        s.section_mut::<IngestSettings>().max_body_bytes = 4096;
        s.section_mut::<IngestSettings>().max_batch_items = 3;
    })
    .await;
    let body = stock_body(&[("SKU-1", 1, 1)]);

    // Bad signature: signed with a secret the server does not know.
    let header = signature::sign(b"not-the-secret-at-all", now(), body.as_bytes());
    let answer = ingest
        .erp
        .post("/v1/stock", body.clone(), &[("ratemesh-signature", header)])
        .await;
    assert_eq!(answer.status, 401);
    assert_eq!(answer.body["error"]["code"], "unauthenticated");

    // No signature at all.
    let answer = ingest.erp.post("/v1/stock", body.clone(), &[]).await;
    assert_eq!(answer.status, 401);
    assert!(
        answer.body["error"]["message"]
            .as_str()
            .unwrap_or("")
            .contains("missing")
    );

    // Old timestamp: a replay of a once-valid request.
    let header = signature::sign(SECRET.as_bytes(), now() - 600, body.as_bytes());
    let answer = ingest
        .erp
        .post("/v1/stock", body.clone(), &[("ratemesh-signature", header)])
        .await;
    assert_eq!(answer.status, 401);
    assert!(
        answer.body["error"]["message"]
            .as_str()
            .unwrap_or("")
            .contains("tolerance"),
        "{}",
        answer.body
    );

    // Malformed JSON, with the position of the problem.
    let answer = ingest
        .erp
        .post_signed("/v1/stock", r#"{"updates":[{"sku":"A",}]}"#, &[])
        .await;
    assert_eq!(answer.status, 400);
    assert_eq!(answer.body["error"]["code"], "malformed");
    assert!(
        answer.body["error"]["message"]
            .as_str()
            .unwrap_or("")
            .contains("column"),
        "{}",
        answer.body
    );

    // Unknown field.
    let as_of = chrono::Utc::now().to_rfc3339();
    let unknown = format!(
        r#"{{"updates":[{{"sku":"A","on_hand":1,"as_of":"{as_of}","sequence":1,"onhand":2}}]}}"#
    );
    let answer = ingest.erp.post_signed("/v1/stock", &unknown, &[]).await;
    assert_eq!(answer.status, 400);
    assert!(
        answer.body["error"]["message"]
            .as_str()
            .unwrap_or("")
            .contains("onhand"),
        "{}",
        answer.body
    );

    // One invalid item among valid ones: 422 naming it, nothing applied.
    let invalid = stock_body(&[("SKU-1", 1, 1), ("SKU 2", -4, 1)]);
    let answer = ingest.erp.post_signed("/v1/stock", &invalid, &[]).await;
    assert_eq!(answer.status, 422);
    let fields: Vec<_> = answer.body["error"]["violations"]
        .as_array()
        .expect("violations")
        .iter()
        .map(|v| v["field"].as_str().unwrap_or("").to_owned())
        .collect();
    assert_eq!(fields, ["updates[1].sku", "updates[1].on_hand"]);

    // Too many items.
    let many = stock_body(&[("A", 1, 1), ("B", 1, 1), ("C", 1, 1), ("D", 1, 1)]);
    let answer = ingest.erp.post_signed("/v1/stock", &many, &[]).await;
    assert_eq!(answer.status, 413);
    assert!(
        answer.body["error"]["message"]
            .as_str()
            .unwrap_or("")
            .contains("at most 3"),
        "{}",
        answer.body
    );

    // Too large a body.
    let big = format!(r#"{{"updates":[],"batch_id":"{}"}}"#, "x".repeat(5000));
    let answer = ingest.erp.post_signed("/v1/stock", &big, &[]).await;
    assert_eq!(answer.status, 413);

    assert!(
        ingest.stock_entries().await.is_empty(),
        "a refused push changed the stream"
    );

    // And the service keeps serving.
    let answer = ingest.erp.post_signed("/v1/stock", &body, &[]).await;
    assert_eq!(answer.status, 202, "{}", answer.body);
    assert_eq!(ingest.stock_entries().await.len(), 1);
    ingest.stop().await;
}

#[tokio::test]
async fn a_repeated_batch_is_applied_once_and_answered_again() {
    let ingest = start(|_| {}).await;
    let body = stock_body(&[("SKU-1", 10, 1), ("SKU-2", 20, 1)]);
    let key = [("idempotency-key", "batch-42".to_owned())];
    let first = ingest.erp.post_signed("/v1/stock", &body, &key).await;
    assert_eq!(first.status, 202);
    assert_eq!(first.body["replayed"], false);
    let again = ingest.erp.post_signed("/v1/stock", &body, &key).await;
    assert_eq!(again.status, 202);
    assert_eq!(again.body["replayed"], true);
    assert_eq!(again.body["applied"], first.body["applied"]);
    assert_eq!(again.body["batch_id"], "batch-42");
    assert_eq!(ingest.stock_entries().await.len(), 2);

    // The same id for different content is refused rather than silently answered.
    let other = stock_body(&[("SKU-3", 1, 1)]);
    let answer = ingest.erp.post_signed("/v1/stock", &other, &key).await;
    assert_eq!(answer.status, 409, "{}", answer.body);
    assert_eq!(ingest.stock_entries().await.len(), 2);
    ingest.stop().await;
}

#[tokio::test]
async fn stale_and_duplicate_sequences_are_counted_not_applied() {
    let ingest = start(|_| {}).await;
    let answer = ingest
        .erp
        .post_signed("/v1/stock", &stock_body(&[("SKU-1", 10, 5)]), &[])
        .await;
    assert_eq!(answer.body["applied"], 1);
    let answer = ingest
        .erp
        .post_signed("/v1/stock", &stock_body(&[("SKU-1", 99, 3)]), &[])
        .await;
    assert_eq!(answer.status, 202);
    assert_eq!(answer.body["stale"], 1);
    assert_eq!(answer.body["applied"], 0);
    let answer = ingest
        .erp
        .post_signed(
            "/v1/stock",
            &stock_body(&[("SKU-1", 10, 5), ("SKU-1", 8, 6)]),
            &[],
        )
        .await;
    assert_eq!(answer.body["duplicate"], 1);
    assert_eq!(answer.body["applied"], 1);
    let sequences: Vec<u64> = ingest
        .stock_updates()
        .await
        .iter()
        .filter_map(|u| u.update.as_ref().map(|u| u.sequence))
        .collect();
    assert_eq!(sequences, [5, 6]);
    ingest.stop().await;
}

#[tokio::test]
async fn both_secrets_are_accepted_during_a_rotation() {
    let ingest = start(|_| {}).await;
    let body = stock_body(&[("SKU-1", 1, 1)]);
    let new = signature::sign(NEXT_SECRET.as_bytes(), now(), body.as_bytes());
    assert_eq!(
        ingest
            .erp
            .post("/v1/stock", body.clone(), &[("ratemesh-signature", new)])
            .await
            .status,
        202
    );
    let body = stock_body(&[("SKU-1", 1, 2)]);
    let both = signature::sign_many(
        [b"retired-secret-xxxxx".as_slice(), SECRET.as_bytes()],
        now(),
        body.as_bytes(),
    );
    assert_eq!(
        ingest
            .erp
            .post("/v1/stock", body, &[("ratemesh-signature", both)])
            .await
            .status,
        202
    );
    assert_eq!(ingest.stock_entries().await.len(), 2);
    ingest.stop().await;
}

#[tokio::test]
async fn products_are_upserted_with_staleness_by_as_of() {
    let ingest = start(|_| {}).await;
    let product = |price: &str, as_of: &str| {
        serde_json::json!({"products": [{"sku": "P-1", "category": "electronics", "price": price, "unit_cost": "40", "base_rate": "0.08", "as_of": as_of}]})
            .to_string()
    };
    let answer = ingest
        .erp
        .post_signed(
            "/v1/products",
            &product("99.99", "2026-11-01T00:00:00Z"),
            &[],
        )
        .await;
    assert_eq!(answer.status, 202, "{}", answer.body);
    assert_eq!(answer.body["applied"], 1);
    let answer = ingest
        .erp
        .post_signed(
            "/v1/products",
            &product("99.99", "2026-11-01T00:00:00Z"),
            &[],
        )
        .await;
    assert_eq!(answer.body["duplicate"], 1);
    let answer = ingest
        .erp
        .post_signed(
            "/v1/products",
            &product("79.99", "2026-10-01T00:00:00Z"),
            &[],
        )
        .await;
    assert_eq!(answer.body["stale"], 1);
    let answer = ingest
        .erp
        .post_signed(
            "/v1/products",
            &product("89.99", "2026-11-02T00:00:00Z"),
            &[],
        )
        .await;
    assert_eq!(answer.body["applied"], 1);
    let answer = ingest
        .erp
        .post_signed("/v1/products", &product("-1", "2026-11-03T00:00:00Z"), &[])
        .await;
    assert_eq!(answer.status, 422);
    assert_eq!(
        answer.body["error"]["violations"][0]["field"],
        "products[0].price"
    );
    let kinds: Vec<_> = ingest
        .stock_entries()
        .await
        .into_iter()
        .filter_map(|e| e.kind)
        .collect();
    assert_eq!(
        kinds,
        [
            ratemesh_ingest::PRODUCT_CHANGED,
            ratemesh_ingest::PRODUCT_CHANGED
        ]
    );
    ingest.stop().await;
}

#[tokio::test]
async fn a_backlogged_stream_sheds_pushes_with_retry_after() {
    let ingest = start(|s| {
        s.section_mut::<IngestSettings>().max_stock_backlog = 2;
        s.section_mut::<IngestSettings>().retry_after_secs = 3;
    })
    .await;
    // The rates group exists but consumes nothing, so its backlog grows.
    let _idle_consumer = ingest
        .bus
        .consumer(
            ratemesh_contract::streams::STOCK,
            ratemesh_contract::streams::groups::RATES,
            "idle",
        )
        .await
        .expect("consumer");
    let answer = ingest
        .erp
        .post_signed(
            "/v1/stock",
            &stock_body(&[("A", 1, 1), ("B", 1, 1), ("C", 1, 1)]),
            &[],
        )
        .await;
    assert_eq!(answer.status, 202);
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    let shed = loop {
        let answer = ingest
            .erp
            .post_signed("/v1/stock", &stock_body(&[("D", 1, 1)]), &[])
            .await;
        if answer.status == 429 {
            break answer;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "never shed: {}",
            answer.body
        );
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    };
    assert_eq!(shed.headers[http::header::RETRY_AFTER], "3");
    assert_eq!(shed.body["error"]["code"], "resource_exhausted");
    ingest.stop().await;
}
