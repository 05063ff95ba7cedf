//! One signed webhook POST: the HTTP client, headers and how the outcome is classified.

use std::time::Duration;

use ratemesh_runtime::signature::{SIGNATURE_HEADER, sign_many};

use crate::config::Config;
use crate::destination::{DestinationPolicy, GuardedResolver};
use crate::webhook::EVENT_ID_HEADER;

/// The result of one attempt.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Outcome {
    /// The partner answered 2xx.
    pub(crate) delivered: bool,
    /// HTTP status, 0 when no response arrived.
    pub(crate) status: u16,
    /// What went wrong, in a few words; empty on success.
    pub(crate) error: String,
}

/// Sends webhooks. Cheap to clone (shares the connection pool).
#[derive(Debug, Clone)]
pub(crate) struct Sender {
    client: reqwest::Client,
    request_timeout: Duration,
    /// Checked again on every attempt: an IP-literal URL never reaches the resolver, and
    /// the settings may have tightened since the partner was saved.
    destinations: DestinationPolicy,
}

/// What one attempt sends.
pub(crate) struct Request<'a> {
    pub(crate) url: &'a str,
    pub(crate) body: &'a [u8],
    pub(crate) event_id: &'a str,
    pub(crate) secrets: Vec<&'a [u8]>,
    pub(crate) traceparent: Option<String>,
    pub(crate) now_secs: i64,
}

impl Sender {
    pub(crate) fn new(config: &Config) -> anyhow::Result<Self> {
        // reqwest is built without a default TLS provider (so no C toolchain is needed);
        // install ring once per process. An error means one is installed already.
        let _ = rustls::crypto::ring::default_provider().install_default();
        let client = reqwest::Client::builder()
            .connect_timeout(config.connect_timeout)
            .timeout(config.request_timeout)
            // A redirect could point anywhere, including inside the network.
            .redirect(reqwest::redirect::Policy::none())
            .no_proxy()
            .pool_max_idle_per_host(config.max_in_flight_per_partner)
            .user_agent(concat!("ratemesh-notifier/", env!("CARGO_PKG_VERSION")))
            .dns_resolver(GuardedResolver::shared(config.destinations))
            .build()?;
        Ok(Self {
            client,
            request_timeout: config.request_timeout,
            destinations: config.destinations,
        })
    }

    /// POSTs the body, signed with every secret, and classifies the answer.
    pub(crate) async fn send(&self, request: Request<'_>) -> Outcome {
        if let Err(e) = self.destinations.parse(request.url) {
            return Outcome {
                delivered: false,
                status: 0,
                error: format!("refused destination: {e}"),
            };
        }
        let signature = sign_many(
            request.secrets.iter().copied(),
            request.now_secs,
            request.body,
        );
        let mut builder = self
            .client
            .post(request.url)
            .header("content-type", "application/json")
            .header(SIGNATURE_HEADER, signature)
            .header(EVENT_ID_HEADER, request.event_id)
            .body(request.body.to_vec());
        if let Some(tp) = &request.traceparent {
            builder = builder.header(ratemesh_runtime::trace_context::TRACEPARENT, tp);
        }
        match builder.send().await {
            Ok(response) => {
                let status = response.status();
                // The body is not needed; dropping the response frees the connection.
                drop(response);
                if status.is_success() {
                    Outcome {
                        delivered: true,
                        status: status.as_u16(),
                        error: String::new(),
                    }
                } else {
                    Outcome {
                        delivered: false,
                        status: status.as_u16(),
                        error: format!("HTTP {}", status.as_u16()),
                    }
                }
            }
            Err(e) => Outcome {
                delivered: false,
                status: 0,
                error: describe(&e, self.request_timeout),
            },
        }
    }
}

fn describe(e: &reqwest::Error, timeout: Duration) -> String {
    if e.is_timeout() {
        return format!("timeout after {timeout:?}");
    }
    // The root cause says most ("connection refused", "refused destination …").
    let mut source: &dyn std::error::Error = e;
    while let Some(next) = source.source() {
        source = next;
    }
    let root = source.to_string();
    if e.is_connect() {
        format!("connect failed: {root}")
    } else {
        format!("request failed: {root}")
    }
}
