//! What an ERP sends: stock and product lines, and a client that posts them to the ingest
//! webhook signed as `Ratemesh-Signature` requires.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};

use bytes::Bytes;
use chrono::{DateTime, SecondsFormat, Utc};
use http_body_util::{BodyExt, Full};
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;
use serde_json::{Map, Value, json};

/// One stock reading of an ERP push. `as_of` defaults to now, `sequence` to 1.
#[derive(Debug, Clone)]
pub struct Stock {
    fields: Map<String, Value>,
}

impl Stock {
    /// A reading of `on_hand` units (a number or a decimal string, sent as given).
    pub fn new(sku: &str, on_hand: impl Into<Value>) -> Self {
        let mut fields = Map::new();
        fields.insert("sku".into(), sku.into());
        fields.insert("on_hand".into(), on_hand.into());
        fields.insert("as_of".into(), rfc3339(Utc::now()).into());
        fields.insert("sequence".into(), 1.into());
        Self { fields }
    }

    /// The ERP's per-SKU sequence number.
    pub fn sequence(self, sequence: u64) -> Self {
        self.with("sequence", sequence)
    }

    /// When the ERP counted.
    pub fn as_of(self, at: DateTime<Utc>) -> Self {
        self.with("as_of", rfc3339(at))
    }

    /// The ERP's own sales velocity (units a day).
    pub fn velocity(self, velocity: &str) -> Self {
        self.with("velocity", velocity)
    }

    /// The location of the count.
    pub fn location(self, location: &str) -> Self {
        self.with("location", location)
    }

    /// Any other field, as sent.
    pub fn with(mut self, field: &str, value: impl Into<Value>) -> Self {
        self.fields.insert(field.into(), value.into());
        self
    }

    /// The line as the webhook's JSON.
    pub fn json(&self) -> Value {
        Value::Object(self.fields.clone())
    }
}

/// One product of an ERP push.
#[derive(Debug, Clone)]
pub struct Product {
    fields: Map<String, Value>,
}

impl Product {
    /// A product with its category, price and unit cost (decimal strings), in USD.
    pub fn new(sku: &str, category: &str, price: &str, unit_cost: &str) -> Self {
        let mut fields = Map::new();
        fields.insert("sku".into(), sku.into());
        fields.insert("category".into(), category.into());
        fields.insert("price".into(), price.into());
        fields.insert("unit_cost".into(), unit_cost.into());
        fields.insert("currency".into(), "USD".into());
        Self { fields }
    }

    /// The retailer's own base rate for the SKU.
    pub fn base_rate(self, rate: &str) -> Self {
        self.with("base_rate", rate)
    }

    /// When the master data was exported.
    pub fn as_of(self, at: DateTime<Utc>) -> Self {
        self.with("as_of", rfc3339(at))
    }

    /// The currency of price and cost.
    pub fn currency(self, currency: &str) -> Self {
        self.with("currency", currency)
    }

    /// Any other field, as sent.
    pub fn with(mut self, field: &str, value: impl Into<Value>) -> Self {
        self.fields.insert(field.into(), value.into());
        self
    }

    /// The line as the webhook's JSON.
    pub fn json(&self) -> Value {
        Value::Object(self.fields.clone())
    }
}

/// `at` as RFC 3339 UTC to the second, as ERPs send it.
pub fn rfc3339(at: DateTime<Utc>) -> String {
    at.to_rfc3339_opts(SecondsFormat::Secs, true)
}

/// A batch id no other batch of this process has, so a push is never taken for a replay.
pub fn fresh_batch_id(kind: &str) -> String {
    static NEXT: AtomicU64 = AtomicU64::new(0);
    format!(
        "{kind}-{}-{}-{}",
        std::process::id(),
        Utc::now().timestamp_nanos_opt().unwrap_or_default(),
        NEXT.fetch_add(1, Ordering::Relaxed)
    )
}

/// The body of a stock push.
pub fn stock_batch(batch_id: &str, lines: &[Stock]) -> String {
    let updates: Vec<Value> = lines.iter().map(Stock::json).collect();
    json!({ "batch_id": batch_id, "updates": updates }).to_string()
}

/// The body of a product push.
pub fn product_batch(batch_id: &str, lines: &[Product]) -> String {
    let products: Vec<Value> = lines.iter().map(Product::json).collect();
    json!({ "batch_id": batch_id, "products": products }).to_string()
}

/// The webhook's answer.
#[derive(Debug)]
pub struct Answer {
    pub status: u16,
    pub headers: http::HeaderMap,
    /// The JSON body, or the raw text as a JSON string when it is not JSON.
    pub body: Value,
}

/// An ERP posting to the ingest webhook at `addr`, signing with `secret`.
#[derive(Clone)]
pub struct ErpClient {
    pub addr: SocketAddr,
    secret: String,
    client: Client<HttpConnector, Full<Bytes>>,
}

impl ErpClient {
    pub fn new(addr: SocketAddr, secret: &str) -> Self {
        Self {
            addr,
            secret: secret.to_owned(),
            client: Client::builder(TokioExecutor::new()).build_http(),
        }
    }

    /// POSTs `body` to `path` with exactly these extra headers (no signature added).
    pub async fn post(
        &self,
        path: &str,
        body: impl Into<Bytes>,
        headers: &[(&str, String)],
    ) -> Answer {
        let mut request = http::Request::post(format!("http://{}{path}", self.addr))
            .header(http::header::CONTENT_TYPE, "application/json");
        for (name, value) in headers {
            request = request.header(*name, value);
        }
        let response = self
            .client
            .request(request.body(Full::new(body.into())).expect("request"))
            .await
            .expect("webhook answered");
        let status = response.status().as_u16();
        let headers = response.headers().clone();
        let bytes = response
            .into_body()
            .collect()
            .await
            .expect("body")
            .to_bytes();
        let body = serde_json::from_slice(&bytes)
            .unwrap_or_else(|_| Value::String(String::from_utf8_lossy(&bytes).into_owned()));
        Answer {
            status,
            headers,
            body,
        }
    }

    /// POSTs `body` signed now with the client's secret, plus `extra` headers.
    pub async fn post_signed(&self, path: &str, body: &str, extra: &[(&str, String)]) -> Answer {
        let mut headers = vec![(
            "ratemesh-signature",
            ratemesh_runtime::signature::sign(
                self.secret.as_bytes(),
                Utc::now().timestamp(),
                body.as_bytes(),
            ),
        )];
        headers.extend(extra.iter().cloned());
        self.post(path, body.to_owned(), &headers).await
    }

    /// Pushes stock lines as one fresh batch; the push must be accepted (`202`).
    pub async fn push_stock(&self, lines: &[Stock]) -> Answer {
        let body = stock_batch(&fresh_batch_id("stock"), lines);
        accepted(self.post_signed("/v1/stock", &body, &[]).await)
    }

    /// Pushes products as one fresh batch; the push must be accepted (`202`).
    pub async fn push_products(&self, lines: &[Product]) -> Answer {
        let body = product_batch(&fresh_batch_id("products"), lines);
        accepted(self.post_signed("/v1/products", &body, &[]).await)
    }
}

fn accepted(answer: Answer) -> Answer {
    assert_eq!(answer.status, 202, "push not accepted: {:?}", answer.body);
    answer
}
