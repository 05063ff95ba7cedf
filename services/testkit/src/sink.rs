//! A partner endpoint: a real HTTP server on 127.0.0.1 that records every webhook and
//! answers as the test tells it to.

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::body::Bytes;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use ratemesh_notifier::webhook::{WebhookBody, WebhookRate};

/// One webhook as the sink received it.
#[derive(Debug, Clone)]
pub struct Received {
    pub headers: HeaderMap,
    pub body: Bytes,
}

impl Received {
    /// The body as the documented webhook JSON.
    pub fn json(&self) -> WebhookBody {
        serde_json::from_slice(&self.body).expect("webhook body is the documented JSON")
    }

    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.get(name).and_then(|v| v.to_str().ok())
    }

    /// Whether `Ratemesh-Signature` verifies under `secret` now (300 s tolerance).
    pub fn verifies(&self, secret: &str) -> bool {
        self.verify_at(secret, chrono::Utc::now().timestamp())
    }

    /// Whether `Ratemesh-Signature` verifies under `secret` at unix second `now`.
    pub fn verify_at(&self, secret: &str, now: i64) -> bool {
        ratemesh_runtime::signature::verify(
            self.header("ratemesh-signature"),
            &self.body,
            [secret.as_bytes()],
            now,
            300,
        )
        .is_ok()
    }
}

#[derive(Default)]
struct SinkState {
    /// Every request, answered or not.
    received: Vec<Received>,
    /// Requests answered 2xx.
    accepted: Vec<Received>,
    status: u16,
    delay: Duration,
    completed: usize,
}

/// A partner endpoint on 127.0.0.1:0; answers 200 on any path until told otherwise.
#[derive(Clone)]
pub struct Sink {
    pub addr: SocketAddr,
    state: Arc<Mutex<SinkState>>,
}

async fn receive(
    State(state): State<Arc<Mutex<SinkState>>>,
    headers: HeaderMap,
    body: Bytes,
) -> StatusCode {
    let (status, delay) = {
        let mut s = state.lock().expect("sink lock");
        s.received.push(Received {
            headers: headers.clone(),
            body: body.clone(),
        });
        (s.status, s.delay)
    };
    if !delay.is_zero() {
        tokio::time::sleep(delay).await;
    }
    let mut s = state.lock().expect("sink lock");
    s.completed += 1;
    if (200..300).contains(&status) {
        s.accepted.push(Received { headers, body });
    }
    StatusCode::from_u16(status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR)
}

impl Sink {
    pub async fn start() -> Sink {
        let state = Arc::new(Mutex::new(SinkState {
            status: 200,
            ..SinkState::default()
        }));
        let router = axum::Router::new()
            .fallback(axum::routing::post(receive))
            .with_state(state.clone());
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind sink");
        let addr = listener.local_addr().expect("addr");
        tokio::spawn(async move {
            let _ = axum::serve(listener, router).await;
        });
        Sink { addr, state }
    }

    /// The URL to register as the partner's endpoint.
    pub fn url(&self) -> String {
        format!("http://{}/hook", self.addr)
    }

    /// Answers every following request with `status`.
    pub fn answer(&self, status: u16) {
        self.state.lock().expect("sink lock").status = status;
    }

    /// Answers every following request only after `delay`.
    pub fn delay(&self, delay: Duration) {
        self.state.lock().expect("sink lock").delay = delay;
    }

    /// Every request so far, answered or not.
    pub fn received(&self) -> Vec<Received> {
        self.state.lock().expect("sink lock").received.clone()
    }

    /// The requests answered 2xx.
    pub fn accepted(&self) -> Vec<Received> {
        self.state.lock().expect("sink lock").accepted.clone()
    }

    /// How many requests have been answered.
    pub fn completed(&self) -> usize {
        self.state.lock().expect("sink lock").completed
    }

    /// The first received rate change for which `pred` holds, with its request.
    pub fn find_rate(
        &self,
        pred: impl Fn(&WebhookRate) -> bool,
    ) -> Option<(Received, WebhookRate)> {
        self.received().into_iter().find_map(|r| {
            let body: WebhookBody = serde_json::from_slice(&r.body).ok()?;
            let rate = body.rates?.into_iter().find(|rate| pred(rate))?;
            Some((r, rate))
        })
    }
}
