//! The Redis baselines, run against the same Redis as ratemesh: a pipelined XADD loop
//! (the most entries per second that Redis and one client process can append) and an
//! XADD → XREADGROUP latency probe (one stream hop, the floor under any freshness figure).

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use redis::aio::MultiplexedConnection;
use redis::streams::StreamReadReply;
use tokio::sync::oneshot;
use tokio_util::sync::CancellationToken;

use crate::load::{self, Drive, Shape};
use crate::recorder::{Outcome, Recorder};

/// Bytes of payload per baseline entry: about one encoded StockChanged event with its
/// envelope, so Redis moves the same amount per entry as it does for ingest.
pub const ENTRY_BYTES: usize = 256;

async fn connect(url: &str, response_timeout: Duration) -> anyhow::Result<MultiplexedConnection> {
    let client = redis::Client::open(url)?;
    let config = redis::AsyncConnectionConfig::new().set_response_timeout(Some(response_timeout));
    Ok(client
        .get_multiplexed_async_connection_with_config(&config)
        .await?)
}

/// What Redis holds, as [`memory`] reads it.
pub struct Memory {
    /// `used_memory`.
    pub used: u64,
    /// `MEMORY USAGE` summed over every stream partition (`…}:s:<stream>` keys).
    pub streams: u64,
    /// `MEMORY USAGE` of each key whose name ends with the suffix asked for, by key name.
    pub records: Vec<(String, u64)>,
}

/// Redis's `used_memory`, the `MEMORY USAGE` of the streams, and that of every key of
/// `url`'s database whose name ends with `suffix` (one SKU's records).
pub async fn memory(url: &str, suffix: &str) -> anyhow::Result<Memory> {
    let mut conn = connect(url, Duration::from_secs(60)).await?;
    let info: String = redis::cmd("INFO")
        .arg("memory")
        .query_async(&mut conn)
        .await?;
    let used = info
        .lines()
        .find_map(|l| l.strip_prefix("used_memory:"))
        .and_then(|v| v.trim().parse().ok())
        .ok_or_else(|| anyhow::anyhow!("INFO memory has no used_memory"))?;
    let mut streams = 0;
    for (_, bytes) in usage(&mut conn, "*}:s:*").await? {
        streams += bytes;
    }
    let records = usage(&mut conn, &format!("*{suffix}")).await?;
    Ok(Memory {
        used,
        streams,
        records,
    })
}

/// `MEMORY USAGE` of every key matching `pattern`, sorted by name.
async fn usage(
    conn: &mut MultiplexedConnection,
    pattern: &str,
) -> anyhow::Result<Vec<(String, u64)>> {
    let mut keys: Vec<String> = Vec::new();
    let mut cursor: u64 = 0;
    loop {
        let (next, page): (u64, Vec<String>) = redis::cmd("SCAN")
            .arg(cursor)
            .arg("MATCH")
            .arg(pattern)
            .arg("COUNT")
            .arg(10_000)
            .query_async(conn)
            .await?;
        keys.extend(page);
        if next == 0 {
            break;
        }
        cursor = next;
    }
    keys.sort();
    let mut sizes = Vec::with_capacity(keys.len());
    for key in keys {
        let bytes: Option<u64> = redis::cmd("MEMORY")
            .arg("USAGE")
            .arg(&key)
            .arg("SAMPLES")
            .arg(0)
            .query_async(conn)
            .await?;
        sizes.push((key, bytes.unwrap_or(0)));
    }
    Ok(sizes)
}

/// Appends to `key` in pipelines of `depth` entries from `drive.concurrency` workers (one
/// connection each) for `length`. Items are entries.
pub async fn xadd_pipelined(
    url: &str,
    key: &str,
    depth: usize,
    drive: &Drive,
    length: Duration,
) -> anyhow::Result<(Recorder, Duration)> {
    let mut conns = Vec::new();
    for _ in 0..drive.concurrency.max(1) {
        conns.push(connect(url, Duration::from_secs(10)).await?);
    }
    let conns = Arc::new(conns);
    let (key, del_key) = (key.to_owned(), key.to_owned());
    let payload = vec![b'x'; ENTRY_BYTES];
    let result = load::closed_loop(drive, length, move |i| {
        let mut conn = conns[i as usize % conns.len()].clone();
        let (key, payload) = (key.clone(), payload.clone());
        async move {
            let mut pipe = redis::pipe();
            for _ in 0..depth {
                // Trimmed like a real stream, so memory stays flat over a long run.
                pipe.cmd("XADD")
                    .arg(&key)
                    .arg("MAXLEN")
                    .arg("~")
                    .arg(100_000)
                    .arg("*")
                    .arg("p")
                    .arg(&payload)
                    .ignore();
            }
            match pipe.query_async::<()>(&mut conn).await {
                Ok(()) => Outcome::Ok(depth as u64),
                Err(e) => Outcome::Error(format!("xadd: {e}")),
            }
        }
    })
    .await;
    let mut conn = connect(url, Duration::from_secs(10)).await?;
    let _: () = redis::cmd("DEL")
        .arg(del_key)
        .query_async(&mut conn)
        .await?;
    Ok(result)
}

/// Sends one entry per scheduled slot of `shape` to `key` and measures, from the
/// scheduled time, until a consumer-group reader (XREADGROUP BLOCK on its own
/// connection, acking what it reads) has it.
pub async fn hop_probe(
    url: &str,
    key: &str,
    drive: &Drive,
    shape: &Shape,
) -> anyhow::Result<(Recorder, Duration)> {
    let mut admin = connect(url, Duration::from_secs(10)).await?;
    let _: () = redis::cmd("XGROUP")
        .arg("CREATE")
        .arg(key)
        .arg("probe")
        .arg("$")
        .arg("MKSTREAM")
        .query_async(&mut admin)
        .await?;
    let waiting: Arc<Mutex<HashMap<u64, oneshot::Sender<()>>>> = Arc::default();
    let stop_reader = CancellationToken::new();
    let reader = {
        let mut conn = connect(url, Duration::from_secs(5)).await?;
        let (key, waiting, stop) = (key.to_owned(), waiting.clone(), stop_reader.clone());
        tokio::spawn(async move {
            while !stop.is_cancelled() {
                let reply: Result<StreamReadReply, _> = redis::cmd("XREADGROUP")
                    .arg("GROUP")
                    .arg("probe")
                    .arg("reader")
                    .arg("COUNT")
                    .arg(256)
                    .arg("BLOCK")
                    .arg(200)
                    .arg("STREAMS")
                    .arg(&key)
                    .arg(">")
                    .query_async(&mut conn)
                    .await;
                let Ok(reply) = reply else { continue };
                let mut ids = Vec::new();
                for stream in reply.keys {
                    for entry in stream.ids {
                        if let Some(i) = entry.get::<u64>("i")
                            && let Some(tx) = waiting.lock().expect("probe lock").remove(&i)
                        {
                            let _ = tx.send(());
                        }
                        ids.push(entry.id);
                    }
                }
                if !ids.is_empty() {
                    let _: Result<(), _> = redis::cmd("XACK")
                        .arg(&key)
                        .arg("probe")
                        .arg(&ids)
                        .query_async(&mut conn)
                        .await;
                }
            }
        })
    };
    let writer = connect(url, Duration::from_secs(10)).await?;
    let payload = vec![b'x'; ENTRY_BYTES];
    let key_owned = key.to_owned();
    let result = load::open_loop(drive, shape, move |i| {
        let (mut conn, waiting, key, payload) = (
            writer.clone(),
            waiting.clone(),
            key_owned.clone(),
            payload.clone(),
        );
        async move {
            let (tx, rx) = oneshot::channel();
            waiting.lock().expect("probe lock").insert(i, tx);
            let sent: Result<String, _> = redis::cmd("XADD")
                .arg(&key)
                .arg("*")
                .arg("i")
                .arg(i)
                .arg("p")
                .arg(&payload)
                .query_async(&mut conn)
                .await;
            if let Err(e) = sent {
                waiting.lock().expect("probe lock").remove(&i);
                return Outcome::Error(format!("xadd: {e}"));
            }
            match tokio::time::timeout(Duration::from_secs(10), rx).await {
                Ok(Ok(())) => Outcome::Ok(1),
                _ => Outcome::Error(format!("entry {i} not read within 10 s")),
            }
        }
    })
    .await;
    stop_reader.cancel();
    let _ = reader.await;
    let _: () = redis::cmd("DEL").arg(key).query_async(&mut admin).await?;
    Ok(result)
}
