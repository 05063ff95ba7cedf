//! The partner side: a webhook sink that answers 200 and notes when each (SKU, version)
//! arrived, registered as a partner so the notifier delivers to it.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Instant;

use axum::extract::State;
use axum::http::StatusCode;
use axum::routing::post;
use ratemesh_proto::v1::{self, partner_service_client::PartnerServiceClient};
use ratemesh_runtime::Role;
use tokio_util::sync::CancellationToken;

use crate::target::Target;

#[derive(Default)]
struct Seen {
    /// Highest version delivered per SKU, and when it arrived.
    latest: Mutex<HashMap<String, (u64, Instant)>>,
    posts: AtomicU64,
    rates: AtomicU64,
    incentives: AtomicU64,
}

/// A running sink; stops when dropped.
pub struct Sink {
    /// Where it listens.
    pub addr: SocketAddr,
    seen: Arc<Seen>,
    stop: CancellationToken,
}

impl Drop for Sink {
    fn drop(&mut self) {
        self.stop.cancel();
    }
}

async fn receive(State(seen): State<Arc<Seen>>, body: axum::body::Bytes) -> StatusCode {
    let at = Instant::now();
    seen.posts.fetch_add(1, Ordering::Relaxed);
    let Ok(body) = serde_json::from_slice::<serde_json::Value>(&body) else {
        return StatusCode::BAD_REQUEST;
    };
    if body.get("incentive").is_some_and(|i| !i.is_null()) {
        seen.incentives.fetch_add(1, Ordering::Relaxed);
    }
    if let Some(rates) = body.get("rates").and_then(|r| r.as_array()) {
        seen.rates.fetch_add(rates.len() as u64, Ordering::Relaxed);
        let mut latest = seen.latest.lock().expect("sink lock");
        for rate in rates {
            let (Some(sku), Some(version)) = (
                rate.get("sku").and_then(|s| s.as_str()),
                rate.get("version").and_then(|v| v.as_u64()),
            ) else {
                continue;
            };
            let slot = latest.entry(sku.to_owned()).or_insert((0, at));
            if version > slot.0 {
                *slot = (version, at);
            }
        }
    }
    StatusCode::OK
}

impl Sink {
    /// Starts the sink on 127.0.0.1 and registers it as partner `id` (every SKU).
    pub async fn start(target: &Target, id: &str) -> anyhow::Result<Self> {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
        let addr = listener.local_addr()?;
        let seen = Arc::new(Seen::default());
        let stop = CancellationToken::new();
        let app = axum::Router::new()
            .route("/hooks/ratemesh", post(receive))
            .with_state(seen.clone());
        let shutdown = stop.clone();
        tokio::spawn(async move {
            let _ = axum::serve(listener, app)
                .with_graceful_shutdown(shutdown.cancelled_owned())
                .await;
        });
        let channel = target.channels(1).await?.remove(0);
        PartnerServiceClient::with_interceptor(channel, target.bearer(Role::Admin))
            .upsert_partner(v1::UpsertPartnerRequest {
                partner: Some(v1::Partner {
                    id: id.to_owned(),
                    name: "load-test sink".into(),
                    endpoint_url: format!("http://{addr}/hooks/ratemesh"),
                    enabled: true,
                    ..Default::default()
                }),
            })
            .await?;
        Ok(Self { addr, seen, stop })
    }

    /// When `sku` was delivered at `version` or later, if it was.
    pub fn arrived(&self, sku: &str, version: u64) -> Option<Instant> {
        let latest = self.seen.latest.lock().expect("sink lock");
        latest
            .get(sku)
            .filter(|(v, _)| *v >= version)
            .map(|(_, at)| *at)
    }

    /// Highest version delivered for `sku`.
    pub fn version(&self, sku: &str) -> u64 {
        let latest = self.seen.latest.lock().expect("sink lock");
        latest.get(sku).map(|(v, _)| *v).unwrap_or(0)
    }

    /// POSTs received, rates in them, incentive deliveries.
    pub fn counts(&self) -> (u64, u64, u64) {
        (
            self.seen.posts.load(Ordering::Relaxed),
            self.seen.rates.load(Ordering::Relaxed),
            self.seen.incentives.load(Ordering::Relaxed),
        )
    }
}
