//! The synthetic catalogue and the ERP side: SKU names, product and stock batches, the
//! signed webhook client and the gRPC pushes, and waiting until every SKU has a card.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use anyhow::Context as _;
use bytes::Bytes;
use futures::{StreamExt, TryStreamExt};
use http_body_util::{BodyExt, Full};
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;
use ratemesh_proto::v1::{
    self, inventory_ingest_client::InventoryIngestClient, rate_service_client::RateServiceClient,
};
use ratemesh_runtime::Role;
use serde_json::json;

use crate::recorder::Outcome;
use crate::target::Target;

/// Product categories the catalogue cycles through.
pub const CATEGORIES: [&str; 5] = ["home", "apparel", "electronics", "toys", "garden"];

/// The SKU of catalogue rank `i`.
pub fn sku(i: usize) -> String {
    format!("LT-{i:07}")
}

/// Units sold per day in every stock update (so days of cover = on hand / 10).
pub const VELOCITY: u64 = 10;

/// A starting stock level that spreads the catalogue over every band (1–200 days of
/// cover, never out of stock, so every card moves when the band table changes).
pub fn seed_on_hand(i: usize) -> u64 {
    (i as u64 * 37 % 200 + 1) * VELOCITY
}

/// ERP sequence numbers, increasing across runs (microseconds since the epoch at start,
/// then +1 per update) so a rerun against the same deployment is never "stale".
#[derive(Debug)]
pub struct Sequences(AtomicU64);

impl Default for Sequences {
    fn default() -> Self {
        let micros = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|d| d.as_micros() as u64)
            .unwrap_or(1);
        Self(AtomicU64::new(micros))
    }
}

impl Sequences {
    /// The next sequence number.
    pub fn next(&self) -> u64 {
        self.0.fetch_add(1, Ordering::Relaxed)
    }
}

/// One stock reading to push.
#[derive(Debug, Clone)]
pub struct StockItem {
    pub sku: String,
    pub on_hand: u64,
    pub sequence: u64,
}

fn now_rfc3339() -> String {
    (chrono::Utc::now() - chrono::Duration::seconds(1))
        .to_rfc3339_opts(chrono::SecondsFormat::Millis, true)
}

fn timestamp_now() -> prost_types::Timestamp {
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap_or_default();
    prost_types::Timestamp {
        seconds: now.as_secs() as i64 - 1,
        nanos: now.subsec_nanos() as i32,
    }
}

/// The webhook body of a stock batch.
pub fn stock_json(batch_id: &str, items: &[StockItem]) -> Vec<u8> {
    let as_of = now_rfc3339();
    let updates: Vec<_> = items
        .iter()
        .map(|i| {
            json!({"sku": i.sku, "on_hand": i.on_hand.to_string(), "as_of": as_of,
                   "sequence": i.sequence, "velocity": VELOCITY.to_string()})
        })
        .collect();
    serde_json::to_vec(&json!({"batch_id": batch_id, "updates": updates})).unwrap_or_default()
}

/// The gRPC twin of [`stock_json`].
pub fn stock_request(batch_id: &str, items: &[StockItem]) -> v1::PushStockRequest {
    let as_of = timestamp_now();
    v1::PushStockRequest {
        batch_id: batch_id.to_owned(),
        updates: items
            .iter()
            .map(|i| v1::StockUpdate {
                sku: i.sku.clone(),
                on_hand: i.on_hand.to_string(),
                as_of: Some(as_of),
                sequence: i.sequence,
                velocity: Some(VELOCITY.to_string()),
                ..Default::default()
            })
            .collect(),
    }
}

/// Signs and posts ERP webhooks over pooled keep-alive HTTP/1.1 connections.
#[derive(Clone)]
pub struct WebhookClient {
    client: Client<HttpConnector, Full<Bytes>>,
    base: String,
    secret: Arc<str>,
}

/// The ingest service's answer to an accepted batch.
#[derive(Debug, Clone, Copy, Default, serde::Deserialize)]
pub struct Counts {
    pub applied: u64,
    #[serde(default)]
    pub duplicate: u64,
    #[serde(default)]
    pub stale: u64,
}

impl WebhookClient {
    /// A client for the target's webhook.
    pub fn new(target: &Target) -> Self {
        Self::at(&target.webhook, &target.erp_secret)
    }

    /// A client for the webhook at `addr` (host:port), signing with `secret`.
    pub fn at(addr: &str, secret: &str) -> Self {
        let mut connector = HttpConnector::new();
        connector.set_nodelay(true);
        let client = Client::builder(TokioExecutor::new())
            .pool_max_idle_per_host(1024)
            .build(connector);
        Self {
            client,
            base: format!("http://{addr}"),
            secret: secret.into(),
        }
    }

    /// Posts a signed body to `path`; `Ok(counts)` on 202, `Outcome`-ready errors else.
    pub async fn post(&self, path: &str, body: Vec<u8>) -> Result<Counts, Outcome> {
        let now = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap_or_default()
            .as_secs() as i64;
        let signature = ratemesh_runtime::signature::sign(self.secret.as_bytes(), now, &body);
        let request = http::Request::post(format!("{}{path}", self.base))
            .header("content-type", "application/json")
            .header("ratemesh-signature", signature)
            .body(Full::new(Bytes::from(body)))
            .map_err(|e| Outcome::Error(format!("building request: {e}")))?;
        let response = tokio::time::timeout(Duration::from_secs(30), self.client.request(request))
            .await
            .map_err(|_| Outcome::Error(format!("POST {path}: no answer within 30 s")))?
            .map_err(|e| Outcome::Error(format!("POST {path}: {e}")))?;
        let status = response.status().as_u16();
        let body = response
            .into_body()
            .collect()
            .await
            .map_err(|e| Outcome::Error(format!("POST {path}: reading the answer: {e}")))?
            .to_bytes();
        match status {
            202 => serde_json::from_slice(&body)
                .map_err(|e| Outcome::Error(format!("POST {path}: answer is not counts: {e}"))),
            429 | 503 => Err(Outcome::Shed),
            _ => Err(Outcome::Error(format!(
                "POST {path}: {status} {}",
                String::from_utf8_lossy(&body)
                    .chars()
                    .take(300)
                    .collect::<String>()
            ))),
        }
    }
}

/// Maps a gRPC status to an outcome (shedding, RESOURCE_EXHAUSTED, apart from errors).
pub fn status_outcome(what: &str, status: &tonic::Status) -> Outcome {
    if status.code() == tonic::Code::ResourceExhausted {
        Outcome::Shed
    } else {
        Outcome::Error(format!(
            "{what}: {:?} {}{}",
            status.code(),
            status.message(),
            causes(status)
        ))
    }
}

/// The chain of errors under a client-side status (a transport failure says little
/// without it), each after a colon; empty for a status the server sent.
fn causes(status: &tonic::Status) -> String {
    let mut out = String::new();
    let mut source = std::error::Error::source(status);
    while let Some(e) = source {
        out.push_str(&format!(": {e}"));
        source = e.source();
    }
    out
}

/// Maps the status of a call made with a `deadline` as a network's client sees it:
/// RESOURCE_EXHAUSTED and UNAVAILABLE are refusals (come back later), DEADLINE_EXCEEDED
/// and the client's own expiry (tonic's CANCELLED "Timeout expired") are errors that name
/// the deadline, and anything else is an error. A transport failure also comes back as
/// UNAVAILABLE from tonic, so it counts as a refusal here; the scenario reports how many
/// refusals were UNAVAILABLE.
pub fn deadline_outcome(what: &str, status: &tonic::Status, deadline: Duration) -> Outcome {
    match status.code() {
        tonic::Code::ResourceExhausted | tonic::Code::Unavailable => Outcome::Shed,
        tonic::Code::DeadlineExceeded => Outcome::Error(format!(
            "{what}: DEADLINE_EXCEEDED from the server ({} ms deadline): {}",
            deadline.as_millis(),
            status.message()
        )),
        tonic::Code::Cancelled if status.message().contains("Timeout expired") => {
            Outcome::Error(format!(
                "{what}: no answer within the {} ms deadline (client side)",
                deadline.as_millis()
            ))
        }
        _ => status_outcome(what, status),
    }
}

/// Seeding honours ingest's backpressure the way an ERP should: a shed batch is sent again
/// after the advised delay, with the same batch id, so it is applied once.
async fn retry_shed<T, F, Fut>(mut call: F) -> Result<T, tonic::Status>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Result<T, tonic::Status>>,
{
    use tonic_types::StatusExt;
    const ATTEMPTS: u32 = 1_000;
    let mut attempt = 0;
    loop {
        attempt += 1;
        match call().await {
            Err(status)
                if attempt < ATTEMPTS
                    && matches!(
                        status.code(),
                        tonic::Code::ResourceExhausted | tonic::Code::Unavailable
                    ) =>
            {
                let delay = status
                    .get_details_retry_info()
                    .and_then(|r| r.retry_delay)
                    .unwrap_or(Duration::from_millis(500));
                tokio::time::sleep(delay).await;
            }
            other => return other,
        }
    }
}

/// Loads products and a first stock reading for SKUs `0..n` over gRPC, `batch` items per
/// call, `parallel` calls at once. Returns stock updates applied.
pub async fn seed(
    target: &Target,
    n: usize,
    batch: usize,
    parallel: usize,
    seqs: &Sequences,
) -> anyhow::Result<u64> {
    let channels = target.channels(2).await?;
    let bearer = target.bearer(Role::Erp);
    let run = format!("{:x}", seqs.next());
    let chunks: Vec<(usize, usize)> = (0..n)
        .step_by(batch.max(1))
        .map(|s| (s, (s + batch).min(n)))
        .collect();
    futures::stream::iter(chunks.iter().copied().enumerate())
        .map(|(c, (from, to))| {
            let client = InventoryIngestClient::with_interceptor(
                channels[c % channels.len()].clone(),
                bearer.clone(),
            );
            let run = run.clone();
            async move {
                let products = (from..to)
                    .map(|i| v1::Product {
                        sku: sku(i),
                        category: CATEGORIES[i % CATEGORIES.len()].to_owned(),
                        price: "100".into(),
                        unit_cost: "40".into(),
                        currency: "EUR".into(),
                        ..Default::default()
                    })
                    .collect();
                let request = v1::UpsertProductsRequest {
                    batch_id: format!("lt-{run}-p-{c}"),
                    products,
                };
                retry_shed(|| {
                    let (mut client, request) = (client.clone(), request.clone());
                    async move { client.upsert_products(request).await }
                })
                .await
                .with_context(|| format!("seeding products {from}..{to}"))?;
                Ok::<_, anyhow::Error>(())
            }
        })
        .buffer_unordered(parallel.max(1))
        .try_collect::<Vec<_>>()
        .await?;
    let applied = futures::stream::iter(chunks.iter().copied().enumerate())
        .map(|(c, (from, to))| {
            let client = InventoryIngestClient::with_interceptor(
                channels[c % channels.len()].clone(),
                bearer.clone(),
            );
            let items: Vec<StockItem> = (from..to)
                .map(|i| StockItem {
                    sku: sku(i),
                    on_hand: seed_on_hand(i),
                    sequence: seqs.next(),
                })
                .collect();
            let request = stock_request(&format!("lt-{run}-s-{c}"), &items);
            async move {
                let answer = retry_shed(|| {
                    let (mut client, request) = (client.clone(), request.clone());
                    async move { client.push_stock(request).await }
                })
                .await
                .with_context(|| format!("seeding stock {from}..{to}"))?
                .into_inner();
                Ok::<_, anyhow::Error>(u64::from(answer.applied))
            }
        })
        .buffer_unordered(parallel.max(1))
        .try_fold(0u64, |acc, n| async move { Ok(acc + n) })
        .await?;
    Ok(applied)
}

/// Waits until every SKU in `0..n` has a rate card, reading them in batches of 1,000.
/// Returns how long it took.
/// Repeats `call` while the server refuses it for load (RESOURCE_EXHAUSTED, UNAVAILABLE),
/// pausing between tries as a well-behaved client does, for at most a minute: for the
/// set-up and check reads around the measured phases, which must not fail because the
/// server sheds reads while it computes the catalogue.
pub async fn until_admitted<T, F, Fut>(mut call: F) -> Result<T, tonic::Status>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Result<T, tonic::Status>>,
{
    let give_up = Instant::now() + Duration::from_secs(60);
    loop {
        match call().await {
            Err(s)
                if matches!(
                    s.code(),
                    tonic::Code::ResourceExhausted | tonic::Code::Unavailable
                ) && Instant::now() < give_up =>
            {
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
            other => return other,
        }
    }
}

pub async fn wait_for_cards(
    target: &Target,
    n: usize,
    within: Duration,
) -> anyhow::Result<Duration> {
    let started = Instant::now();
    let channel = target.channels(1).await?.remove(0);
    let client = RateServiceClient::with_interceptor(channel, target.bearer(Role::Network));
    let mut from = 0;
    while from < n {
        let to = (from + 1000).min(n);
        let answer = until_admitted(|| {
            let mut client = client.clone();
            let request = v1::BatchGetRatesRequest {
                skus: (from..to).map(sku).collect(),
            };
            async move { client.batch_get_rates(request).await }
        })
        .await
        .context("reading cards")?
        .into_inner();
        let missing = answer
            .results
            .iter()
            .position(|r| !matches!(r.outcome, Some(v1::rate_result::Outcome::Card(_))));
        match missing {
            None => from = to,
            Some(at) => {
                from += at;
                if started.elapsed() > within {
                    anyhow::bail!("sku {} has no rate card after {within:?}", sku(from));
                }
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        }
    }
    Ok(started.elapsed())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn under_a_deadline_refusals_are_shed_and_expiry_is_an_error() {
        let deadline = Duration::from_millis(1000);
        let outcome = |status: tonic::Status| deadline_outcome("GetRate", &status, deadline);
        assert_eq!(
            outcome(tonic::Status::resource_exhausted("busy")),
            Outcome::Shed
        );
        assert_eq!(
            outcome(tonic::Status::unavailable("draining")),
            Outcome::Shed
        );
        for expired in [
            tonic::Status::deadline_exceeded("too slow"),
            tonic::Status::cancelled("Timeout expired"),
        ] {
            match outcome(expired) {
                Outcome::Error(message) => assert!(message.contains("1000 ms"), "{message}"),
                other => panic!("an expired deadline is an error, got {other:?}"),
            }
        }
        assert!(matches!(
            outcome(tonic::Status::not_found("no card")),
            Outcome::Error(_)
        ));
        // Without a deadline, only RESOURCE_EXHAUSTED is shedding.
        assert!(matches!(
            status_outcome("GetRate", &tonic::Status::unavailable("x")),
            Outcome::Error(_)
        ));
    }
}
