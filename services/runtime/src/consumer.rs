//! Consuming a stream through a consumer group, written once for every service: join the
//! group (retrying while the backend is unreachable), read batches until shutdown, hand
//! each batch to the service's handler, then ack what it settled and nack what failed.
//!
//! One shutdown rule everywhere: once shutdown is signalled no new batch is read; a batch
//! already handed to the handler is finished and settled, so nothing is applied twice
//! without need. Entries read but not acked stay pending for another replica.

use std::future::Future;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use ratemesh_bus::{Bus, Consumer, Delivery};
use tokio_util::sync::CancellationToken;

use crate::health::Readiness;

/// How long to wait before retrying a failed join or read.
const JOIN_RETRY: Duration = Duration::from_secs(1);
const READ_RETRY: Duration = Duration::from_millis(500);

/// What a handler did with a batch: entries to ack (their effect is committed) and
/// entries to nack with the error (redelivered, dead-lettered after the bus's maximum).
#[derive(Debug, Default)]
pub struct Settled {
    /// Committed.
    pub ack: Vec<Delivery>,
    /// Failed, with why.
    pub nack: Vec<(Delivery, String)>,
}

impl Settled {
    /// Adds the outcome of `other`.
    pub fn extend(&mut self, other: Settled) {
        self.ack.extend(other.ack);
        self.nack.extend(other.nack);
    }
}

/// Which stream and group to consume, as whom.
#[derive(Debug, Clone)]
pub struct ConsumerSpec {
    /// The stream.
    pub stream: &'static str,
    /// The consumer group (the reading service).
    pub group: &'static str,
    /// This replica's consumer name (see [`consumer_name`]).
    pub name: String,
}

/// This replica's consumer name: `configured` when set, else `<host>-<pid>-<n>` with `n`
/// counting consumers built in this process (several services or test apps in one
/// process must differ). Only `[A-Za-z0-9._-]`, at most 128 characters.
pub fn consumer_name(configured: &str, service: &str) -> String {
    static BUILT: AtomicU64 = AtomicU64::new(0);
    let configured = configured.trim();
    let raw = if configured.is_empty() {
        let host = std::env::var("HOSTNAME")
            .ok()
            .or_else(|| std::fs::read_to_string("/proc/sys/kernel/hostname").ok())
            .map(|h| h.trim().to_owned())
            .filter(|h| !h.is_empty())
            .unwrap_or_else(|| service.to_owned());
        format!(
            "{host}-{}-{}",
            std::process::id(),
            BUILT.fetch_add(1, Ordering::Relaxed)
        )
    } else {
        configured.to_owned()
    };
    raw.chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-') {
                c
            } else {
                '-'
            }
        })
        .take(128)
        .collect()
}

/// Joins `spec`'s group, retrying retryable errors until `shutdown`; `None` on shutdown.
pub async fn join(
    bus: &Bus,
    spec: &ConsumerSpec,
    shutdown: &CancellationToken,
) -> anyhow::Result<Option<Consumer>> {
    loop {
        match bus.consumer(spec.stream, spec.group, &spec.name).await {
            Ok(c) => return Ok(Some(c)),
            Err(e) if e.is_retryable() => {
                tracing::warn!(stream = spec.stream, group = spec.group, error = %e, "cannot join the consumer group yet; retrying");
                tokio::select! {
                    () = tokio::time::sleep(JOIN_RETRY) => {}
                    () = shutdown.cancelled() => return Ok(None),
                }
            }
            Err(e) => return Err(e.into()),
        }
    }
}

/// Consumes `spec` until `shutdown`, calling `handle` with each non-empty batch and
/// settling what it returns, one batch at a time while the next one is read.
/// `readiness`, when given, follows whether the stream can be read.
pub async fn run<H, F>(
    bus: Bus,
    spec: ConsumerSpec,
    readiness: Option<Readiness>,
    shutdown: CancellationToken,
    mut handle: H,
) -> anyhow::Result<()>
where
    H: FnMut(Vec<Delivery>) -> F,
    F: Future<Output = Settled>,
{
    let Some(consumer) = join(&bus, &spec, &shutdown).await? else {
        return Ok(());
    };
    if let Some(r) = &readiness {
        r.set(true);
    }
    tracing::info!(stream = spec.stream, group = spec.group, consumer = %spec.name, "consumer started");
    let mut owned = Vec::new();
    let mut prefetched = None;
    loop {
        let batch = match prefetched.take() {
            Some(batch) => batch,
            None => tokio::select! {
                biased;
                () = shutdown.cancelled() => {
                    leave(&consumer, &spec).await;
                    return Ok(());
                }
                b = consumer.next_batch() => b,
            },
        };
        let now_owned = consumer.owned_partitions();
        if now_owned != owned {
            metrics::gauge!("ratemesh_consumer_partitions_owned", "stream" => spec.stream, "group" => spec.group)
                .set(now_owned.len() as f64);
            owned = now_owned;
        }
        let batch = match batch {
            Ok(b) => {
                if let Some(r) = &readiness {
                    r.set(true);
                }
                b
            }
            Err(e) => {
                if let Some(r) = &readiness {
                    r.set(false);
                }
                tracing::warn!(stream = spec.stream, group = spec.group, error = %e, "reading the stream failed; retrying");
                tokio::select! {
                    () = tokio::time::sleep(READ_RETRY) => continue,
                    () = shutdown.cancelled() => return Ok(()),
                }
            }
        };
        if batch.is_empty() {
            continue;
        }
        // The next batch is read while this one is handled and settled, so the read's
        // round trip overlaps the work. Entries of one key stay in order: the next batch
        // is handled only after this one is settled.
        let work = async {
            let settled = handle(batch).await;
            settle(&consumer, &spec, settled).await;
        };
        let next = async {
            tokio::select! {
                biased;
                () = shutdown.cancelled() => None,
                b = consumer.next_batch() => Some(b),
            }
        };
        let ((), next) = tokio::join!(work, next);
        match next {
            Some(next) => prefetched = Some(next),
            None => {
                // Entries read ahead and not handled stay pending; the partition's next
                // owner takes them over first.
                leave(&consumer, &spec).await;
                return Ok(());
            }
        }
    }
}

/// Nacks the failures and acks the rest, counting both.
/// Gives this consumer's partitions up at shutdown, so the other replicas take them over
/// at once rather than after the lease lapses.
async fn leave(consumer: &Consumer, spec: &ConsumerSpec) {
    match consumer.leave().await {
        Ok(()) => tracing::info!(
            stream = spec.stream,
            group = spec.group,
            "left the consumer group"
        ),
        Err(e) => {
            tracing::warn!(stream = spec.stream, group = spec.group, error = %e, "leaving the consumer group failed; its partitions move when the leases lapse")
        }
    }
}

async fn settle(consumer: &Consumer, spec: &ConsumerSpec, settled: Settled) {
    for (d, error) in &settled.nack {
        metrics::counter!("ratemesh_consumer_entries_total", "stream" => spec.stream, "group" => spec.group, "outcome" => "failed")
            .increment(1);
        tracing::warn!(stream = spec.stream, id = %d.id, key = %d.key, %error, "entry not applied");
        if let Err(e) = consumer.nack(d, error).await {
            tracing::warn!(stream = spec.stream, id = %d.id, error = %e, "nack failed; the entry will be reclaimed");
        }
    }
    if settled.ack.is_empty() {
        return;
    }
    metrics::counter!("ratemesh_consumer_entries_total", "stream" => spec.stream, "group" => spec.group, "outcome" => "applied")
        .increment(settled.ack.len() as u64);
    if let Err(e) = consumer.ack(&settled.ack).await {
        tracing::warn!(stream = spec.stream, error = %e, "ack failed; entries will be redelivered (handled idempotently)");
    }
}

/// Runs `tick` every `every` until `shutdown` (first after one interval); a failed tick is
/// logged under `what` and the next one runs on schedule.
pub async fn every<T, F, R, E>(
    what: &'static str,
    every: Duration,
    shutdown: CancellationToken,
    mut tick: T,
) -> anyhow::Result<()>
where
    T: FnMut() -> F,
    F: Future<Output = Result<R, E>>,
    E: std::fmt::Display,
{
    loop {
        tokio::select! {
            () = tokio::time::sleep(every) => {}
            () = shutdown.cancelled() => return Ok(()),
        }
        if let Err(e) = tick().await {
            tracing::warn!(task = what, error = %e, "periodic task failed; it runs again next interval");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn consumer_names_are_configured_or_unique_and_tame() {
        assert_eq!(consumer_name("rates-0", "rates"), "rates-0");
        assert_eq!(consumer_name("a b/c", "rates"), "a-b-c");
        let (a, b) = (consumer_name("", "rates"), consumer_name("", "rates"));
        assert_ne!(a, b);
        assert!(
            a.chars()
                .all(|c| c.is_ascii_alphanumeric() || "._-".contains(c)),
            "{a}"
        );
    }

    #[tokio::test]
    async fn a_consumer_settles_each_batch_and_stops_reading_at_shutdown() {
        let bus = Bus::memory(ratemesh_bus::BusOptions {
            partitions: 1,
            read_block: Duration::from_millis(20),
            ..ratemesh_bus::BusOptions::default()
        })
        .unwrap();
        for i in 0..5 {
            bus.publish("s", ratemesh_bus::Event::new(format!("k{i}"), vec![i]))
                .await
                .unwrap();
        }
        let shutdown = CancellationToken::new();
        let seen = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
        let task = tokio::spawn(run(
            bus.clone(),
            ConsumerSpec {
                stream: "s",
                group: "g",
                name: "c1".into(),
            },
            None,
            shutdown.clone(),
            {
                let seen = seen.clone();
                move |batch: Vec<Delivery>| {
                    let seen = seen.clone();
                    async move {
                        let mut settled = Settled::default();
                        for d in batch {
                            seen.lock().unwrap().push(d.key.clone());
                            if d.key == "k3" {
                                settled.nack.push((d, "bad entry".into()));
                            } else {
                                settled.ack.push(d);
                            }
                        }
                        settled
                    }
                }
            },
        ));
        let deadline = std::time::Instant::now() + Duration::from_secs(5);
        loop {
            let stats = bus.stream_stats("s", "g").await.unwrap();
            if stats.undelivered == 0 && stats.pending == 1 {
                break;
            }
            assert!(std::time::Instant::now() < deadline, "{stats:?}");
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        shutdown.cancel();
        task.await.unwrap().unwrap();
        assert_eq!(seen.lock().unwrap().len(), 5);
    }
}
