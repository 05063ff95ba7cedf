//! `ratemesh stock push FILE` and `ratemesh products push FILE`: sign and send an ERP feed
//! through the webhooks, the way an integrator tests their own feed.
//!
//! A file is JSON (a batch object, or an array of items) or CSV with a header row naming
//! the fields. It is sent in batches; each batch's `Idempotency-Key` is derived from the
//! file's content and the batch number, so re-running a push after a failure applies
//! nothing twice. 429/503 answers are retried after their `Retry-After`. An `https://` URL
//! is called over TLS (the system's roots, or `--ca-file`).

use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{Context as _, bail};
use bytes::Bytes;
use clap::{Args, Subcommand};
use http_body_util::{BodyExt, Full};
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use indicatif::{ProgressBar, ProgressStyle};
use serde_json::{Map, Value};
use sha2::{Digest, Sha256};

use super::client::TlsArgs;

/// Where pushes go unless told otherwise.
pub(crate) const DEFAULT_WEBHOOK_URL: &str = "http://127.0.0.1:8080";

#[derive(Debug, Subcommand)]
pub(crate) enum StockCommand {
    /// Sign and send a file of stock updates to `POST /v1/stock`.
    Push(PushArgs),
}

#[derive(Debug, Subcommand)]
pub(crate) enum ProductsCommand {
    /// Sign and send a file of product master data (category, price, unit cost) to
    /// `POST /v1/products`.
    Push(PushArgs),
}

#[derive(Debug, Args)]
pub(crate) struct PushArgs {
    /// A .json file (batch object or array of items) or a .csv file with a header row.
    file: PathBuf,
    /// The webhook base URL of the ingest service.
    #[arg(
        long,
        default_value = DEFAULT_WEBHOOK_URL,
        env = "RATEMESH_WEBHOOK_URL"
    )]
    url: String,
    /// The ERP source's signing secret.
    #[arg(long, env = "RATEMESH_ERP_SECRET", hide_env_values = true)]
    secret: String,
    /// Items per request.
    #[arg(long, default_value_t = 1000)]
    batch_size: usize,
    /// Print each batch's answer as one JSON line on stdout instead of a progress bar and
    /// a summary, for scripts.
    #[arg(long)]
    json: bool,
    /// For an https:// --url.
    #[command(flatten)]
    tls: TlsArgs,
}

/// Which endpoint a push goes to.
#[derive(Debug, Clone, Copy)]
pub(crate) enum Feed {
    Stock,
    Products,
}

impl Feed {
    fn path(self) -> &'static str {
        match self {
            Feed::Stock => "/v1/stock",
            Feed::Products => "/v1/products",
        }
    }

    /// The body this endpoint takes.
    fn body(self) -> ratemesh_ingest::payload::Feed {
        match self {
            Feed::Stock => ratemesh_ingest::payload::Feed::Stock,
            Feed::Products => ratemesh_ingest::payload::Feed::Products,
        }
    }

    fn items_key(self) -> &'static str {
        self.body().items_key()
    }
}

pub(crate) async fn run(feed: Feed, args: &PushArgs) -> anyhow::Result<()> {
    if args.batch_size == 0 {
        bail!("--batch-size must be at least 1");
    }
    let raw =
        std::fs::read(&args.file).with_context(|| format!("reading {}", args.file.display()))?;
    let items = read_items(feed, &args.file, &raw)?;
    if items.is_empty() {
        bail!("{} holds no items", args.file.display());
    }
    let file_id = hex_prefix(&Sha256::digest(&raw), 16);
    let https = args.url.to_ascii_lowercase().starts_with("https://");
    if !https && (args.tls.ca_file.is_some() || args.tls.client_cert.is_some()) {
        bail!(
            "--url {} is plaintext: --ca-file and --client-cert apply to https:// URLs",
            args.url
        );
    }
    let connector = hyper_rustls::HttpsConnectorBuilder::new()
        .with_tls_config(if https {
            args.tls.rustls_config()?
        } else {
            // Never used for http:// URLs; an empty store keeps the system's unread.
            rustls::ClientConfig::builder_with_provider(std::sync::Arc::new(
                rustls::crypto::ring::default_provider(),
            ))
            .with_safe_default_protocol_versions()?
            .with_root_certificates(rustls::RootCertStore::empty())
            .with_no_client_auth()
        })
        .https_or_http()
        .enable_http1()
        .build();
    let client = Client::builder(TokioExecutor::new()).build::<_, Full<Bytes>>(connector);
    let url = format!("{}{}", args.url.trim_end_matches('/'), feed.path());

    // With --json stdout is for the answers alone, and a script has no use for a bar.
    let progress = if args.json {
        ProgressBar::hidden()
    } else {
        ProgressBar::new(items.len() as u64)
    };
    progress.set_style(
        ProgressStyle::with_template("{bar:40} {pos}/{len} items  {msg}")
            .unwrap_or_else(|_| ProgressStyle::default_bar()),
    );
    let mut counts = Counts::default();
    for (n, chunk) in items.chunks(args.batch_size).enumerate() {
        let first_row = n * args.batch_size;
        let mut body = Map::new();
        body.insert(feed.items_key().to_owned(), Value::Array(chunk.to_vec()));
        let body = Value::Object(body).to_string();
        let batch_id = format!("{file_id}-{n}");
        let answer = send(&client, &url, &args.secret, &batch_id, body).await?;
        match answer.status {
            202 => {
                counts.add(&answer.body, chunk.len() as u64);
                if args.json {
                    println!("{}", answer.body);
                }
            }
            status => {
                progress.abandon();
                bail!(
                    "{}",
                    describe_refusal(status, &answer.body, feed, first_row)
                );
            }
        }
        progress.inc(chunk.len() as u64);
        progress.set_message(counts.to_string());
    }
    progress.finish();
    if !args.json {
        println!(
            "pushed {} items from {}: {counts}",
            items.len(),
            args.file.display()
        );
    }
    Ok(())
}

/// What the server did with the items of a push.
#[derive(Debug, Default)]
struct Counts {
    applied: u64,
    duplicate: u64,
    stale: u64,
    /// Items of batches the server had already applied: it answered them again
    /// (`"replayed": true`) and applied nothing this time.
    replayed: u64,
}

impl Counts {
    fn add(&mut self, answer: &Value, items: u64) {
        if answer["replayed"].as_bool() == Some(true) {
            self.replayed += items;
            return;
        }
        let count = |k: &str| answer[k].as_u64().unwrap_or(0);
        self.applied += count("applied");
        self.duplicate += count("duplicate");
        self.stale += count("stale");
    }
}

impl std::fmt::Display for Counts {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let fresh = self.applied + self.duplicate + self.stale > 0 || self.replayed == 0;
        if fresh {
            write!(
                f,
                "applied {}, duplicate {}, stale {}",
                self.applied, self.duplicate, self.stale
            )?;
        }
        if self.replayed > 0 {
            if fresh {
                f.write_str("; ")?;
            }
            write!(f, "already applied (replayed) {}", self.replayed)?;
        }
        Ok(())
    }
}

struct Answer {
    status: u16,
    body: Value,
}

async fn send(
    client: &Client<
        hyper_rustls::HttpsConnector<hyper_util::client::legacy::connect::HttpConnector>,
        Full<Bytes>,
    >,
    url: &str,
    secret: &str,
    batch_id: &str,
    body: String,
) -> anyhow::Result<Answer> {
    const ATTEMPTS: u32 = 8;
    for attempt in 1..=ATTEMPTS {
        // Signed afresh each attempt: a retry after a long back-off must not look like a replay.
        let signature = ratemesh_runtime::signature::sign(
            secret.as_bytes(),
            chrono::Utc::now().timestamp(),
            body.as_bytes(),
        );
        let request = http::Request::post(url)
            .header(http::header::CONTENT_TYPE, "application/json")
            .header(ratemesh_runtime::signature::SIGNATURE_HEADER, signature)
            .header("idempotency-key", batch_id)
            .body(Full::new(Bytes::from(body.clone())))?;
        let response = client
            .request(request)
            .await
            .with_context(|| format!("cannot reach {url}"))?;
        let status = response.status().as_u16();
        let retry_after = response
            .headers()
            .get(http::header::RETRY_AFTER)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.parse::<u64>().ok());
        let bytes = response.into_body().collect().await?.to_bytes();
        let body = serde_json::from_slice(&bytes)
            .unwrap_or_else(|_| Value::String(String::from_utf8_lossy(&bytes).into_owned()));
        if matches!(status, 429 | 503) && attempt < ATTEMPTS {
            tokio::time::sleep(Duration::from_secs(retry_after.unwrap_or(2).clamp(1, 60))).await;
            continue;
        }
        return Ok(Answer { status, body });
    }
    unreachable!("the last attempt always returns")
}

/// Rewrites `updates[3].on_hand` into the file's item number so the integrator can find it.
fn describe_refusal(status: u16, body: &Value, feed: Feed, first_row: usize) -> String {
    let error = &body["error"];
    let mut message = format!(
        "refused with {status}: {}",
        error["message"].as_str().unwrap_or(&body.to_string())
    );
    if let Some(violations) = error["violations"].as_array() {
        let prefix = format!("{}[", feed.items_key());
        for v in violations {
            let field = v["field"].as_str().unwrap_or("");
            let located = field
                .strip_prefix(&prefix)
                .and_then(|rest| rest.split_once(']'))
                .and_then(|(index, rest)| index.parse::<usize>().ok().map(|i| (i, rest)))
                .map(|(i, rest)| format!("item {} of the file{rest}", first_row + i + 1))
                .unwrap_or_else(|| field.to_owned());
            message.push_str(&format!(
                "\n  {located}: {}",
                v["description"].as_str().unwrap_or("")
            ));
        }
    }
    message
}

fn read_items(feed: Feed, path: &Path, raw: &[u8]) -> anyhow::Result<Vec<Value>> {
    let is_csv = path
        .extension()
        .and_then(|e| e.to_str())
        .is_some_and(|e| e.eq_ignore_ascii_case("csv"));
    if is_csv {
        return read_csv(feed, raw);
    }
    let value: Value =
        serde_json::from_slice(raw).with_context(|| format!("{} is not JSON", path.display()))?;
    match value {
        Value::Array(items) => Ok(items),
        Value::Object(mut batch) => match batch.remove(feed.items_key()) {
            Some(Value::Array(items)) => Ok(items),
            _ => bail!(
                "{} must be an array of items or an object with an `{}` array",
                path.display(),
                feed.items_key()
            ),
        },
        _ => bail!("{} must be a JSON array or object", path.display()),
    }
}

/// Rows as the items the webhook takes, converted as every ratemesh reader of ERP CSV
/// converts them; the first bad row stops the push.
fn read_csv(feed: Feed, raw: &[u8]) -> anyhow::Result<Vec<Value>> {
    ratemesh_ingest::csv_feed::csv_items(feed.body(), raw)
        .into_iter()
        .map(|row| {
            row.map(|row| Value::Object(row.item))
                .map_err(|problem| anyhow::anyhow!("csv {problem}"))
        })
        .collect()
}

fn hex_prefix(bytes: &[u8], chars: usize) -> String {
    bytes
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect::<String>()
        .chars()
        .take(chars)
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn csv_rows_become_items_with_numbers_where_the_api_wants_them() {
        let raw = b"sku,location,on_hand,as_of,sequence\nA-1,dc-1,12,2026-11-27T05:00:00Z,7\nB-2,,0,2026-11-27T05:00:00Z,8\n";
        let items = read_csv(Feed::Stock, raw).expect("csv");
        assert_eq!(items.len(), 2);
        assert_eq!(items[0]["sequence"], 7);
        assert_eq!(items[0]["on_hand"], "12");
        assert!(items[1].get("location").is_none());
        let err = read_csv(Feed::Stock, b"sku,on_hand,as_of,sequence\nA-1,1,x,seven\n")
            .expect_err("bad sequence");
        assert_eq!(
            err.to_string(),
            "csv line 2 field sequence: \"seven\" is not a whole number"
        );
    }

    #[test]
    fn a_replayed_batch_is_not_counted_as_applied() {
        let mut counts = Counts::default();
        counts.add(
            &serde_json::json!({"applied": 2, "duplicate": 0, "stale": 0, "replayed": true}),
            2,
        );
        assert_eq!(counts.to_string(), "already applied (replayed) 2");
        counts.add(
            &serde_json::json!({"applied": 1, "duplicate": 0, "stale": 0, "replayed": false}),
            1,
        );
        assert!(counts.to_string().starts_with("applied 1, "), "{counts}");
    }

    #[test]
    fn refusals_point_at_the_file_item() {
        let body = serde_json::json!({"error": {"message": "x", "violations": [{"field": "updates[2].on_hand", "description": "must not be negative"}]}});
        let text = describe_refusal(422, &body, Feed::Stock, 1000);
        assert!(
            text.contains("item 1003 of the file.on_hand: must not be negative"),
            "{text}"
        );
    }
}
