//! Property tests over arbitrary bytes for everything that reads untrusted input: the body
//! parser, validation, and the signature check. None may panic, whatever arrives.
//!
//! CI runs a few thousand cases per target. A long run (what a fuzzing session would do):
//! `PROPTEST_CASES=100000 cargo test --release -p ratemesh-ingest fuzz_`.

use chrono::Utc;
use proptest::prelude::*;

use crate::payload::{self, ProductBatch, StockBatch};
use crate::validate::{self, Limits};

fn config() -> ProptestConfig {
    let cases = std::env::var("PROPTEST_CASES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(3_000);
    ProptestConfig {
        cases,
        failure_persistence: None,
        ..ProptestConfig::default()
    }
}

fn limits() -> Limits {
    Limits {
        max_items: 5_000,
        max_text_len: 256,
        max_future_skew: chrono::Duration::seconds(300),
    }
}

const VALID_STOCK: &str = r#"{"batch_id":"b-1","updates":[{"sku":"SKU-1","location":"dc-1","on_hand":12,"reserved":"1.5","as_of":"2026-11-27T05:00:00Z","sequence":7,"velocity":0.25}]}"#;
const VALID_PRODUCTS: &str = r#"{"products":[{"sku":"P-1","category":"home","price":"19.99","unit_cost":8,"base_rate":"0.07","currency":"USD","title":"Lamp","as_of":"2026-11-01T00:00:00Z"}]}"#;

/// Parses and, when it parses, validates: the whole path a body takes before the hand-off.
fn read_body(bytes: &[u8]) {
    let now = Utc::now();
    if let Ok(batch) = payload::parse::<StockBatch>(bytes) {
        let _ = validate::stock(&batch.updates, now, &limits());
    }
    if let Ok(batch) = payload::parse::<ProductBatch>(bytes) {
        let _ = validate::products(&batch.products, now, &limits());
    }
}

/// A valid body with some bytes replaced: reaches deeper into the parser than pure noise.
fn mutated(base: &'static str) -> impl Strategy<Value = Vec<u8>> {
    proptest::collection::vec((any::<prop::sample::Index>(), any::<u8>()), 1..8).prop_map(
        move |edits| {
            let mut bytes = base.as_bytes().to_vec();
            for (at, byte) in edits {
                let i = at.index(bytes.len());
                bytes[i] = byte;
            }
            bytes
        },
    )
}

proptest! {
    #![proptest_config(config())]

    #[test]
    fn fuzz_body_parser_takes_any_bytes(bytes in proptest::collection::vec(any::<u8>(), 0..512)) {
        read_body(&bytes);
    }

    #[test]
    fn fuzz_body_parser_takes_mutated_stock_bodies(bytes in mutated(VALID_STOCK)) {
        read_body(&bytes);
    }

    #[test]
    fn fuzz_body_parser_takes_mutated_product_bodies(bytes in mutated(VALID_PRODUCTS)) {
        read_body(&bytes);
    }

    #[test]
    fn fuzz_body_parser_takes_any_json_text(text in "\\PC{0,256}") {
        read_body(text.as_bytes());
    }

    #[test]
    fn fuzz_signature_check_takes_any_header(
        header in "\\PC{0,200}",
        body in proptest::collection::vec(any::<u8>(), 0..64),
        now in any::<i64>(),
    ) {
        let result = ratemesh_runtime::signature::verify(Some(&header), &body, [b"k".as_slice()], now, 300);
        prop_assert!(result.is_err() || header.contains("v1="));
    }

    #[test]
    fn fuzz_signature_check_takes_header_shaped_input(
        t in any::<i64>(),
        sigs in proptest::collection::vec("[0-9a-fA-Fx]{0,70}", 0..10),
        now in any::<i64>(),
    ) {
        let mut header = format!("t={t}");
        for sig in &sigs {
            header.push_str(",v1=");
            header.push_str(sig);
        }
        let result = ratemesh_runtime::signature::verify(Some(&header), b"{}", [b"k".as_slice()], now, 300);
        // Random hex never matches a real HMAC.
        prop_assert!(result.is_err());
    }
}
