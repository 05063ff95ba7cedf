//! The archiver: one consumer per input stream in the `archive` consumer group, through
//! the runtime's shared consumer driver, appending each batch to its day files before the
//! batch is acknowledged; and the daily retention sweep.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use chrono::Utc;
use ratemesh_bus::{Bus, Delivery};
use ratemesh_contract::streams;
use ratemesh_runtime::consumer::{self, ConsumerSpec, Settled};
use tokio_util::sync::CancellationToken;

use crate::record::Record;
use crate::{retention, segment};

/// The archive's consumer group on every stream it reads.
pub const GROUP: &str = "archive";

/// The streams archived: what a replay needs as input. Rate cards (the `rates` stream) are
/// outputs, recomputed by a replay, and are not archived.
pub const STREAMS: [&str; 3] = [streams::STOCK, streams::OVERRIDES, streams::INCENTIVES];

/// How often retention looks for day files past their time.
const PRUNE_EVERY: Duration = Duration::from_secs(3600);

/// Where and as whom the archiver writes.
#[derive(Debug, Clone)]
pub struct ArchiveConfig {
    /// The archive directory (created if missing).
    pub dir: PathBuf,
    /// Day files older than this many days are deleted.
    pub retention_days: u32,
    /// This replica's consumer name; it is also part of every file name it writes, so
    /// replicas never write the same file.
    pub writer: String,
}

/// Archives every stream of [`STREAMS`] until `shutdown`, and prunes on the hour.
pub async fn run(
    bus: Bus,
    config: ArchiveConfig,
    shutdown: CancellationToken,
) -> anyhow::Result<()> {
    std::fs::create_dir_all(&config.dir).map_err(|e| {
        anyhow::anyhow!(
            "cannot create the archive directory {}: {e}",
            config.dir.display()
        )
    })?;
    tracing::info!(dir = %config.dir.display(), retention_days = config.retention_days, writer = %config.writer, "input archive on");
    let config = Arc::new(config);
    let consumers = STREAMS.map(|stream| {
        let config = config.clone();
        let stop = shutdown.clone();
        consumer::run(
            bus.clone(),
            ConsumerSpec {
                stream,
                group: GROUP,
                name: config.writer.clone(),
            },
            None,
            shutdown.clone(),
            move |batch| archive_batch(config.clone(), stream, batch, stop.clone()),
        )
    });
    let [stock, overrides, incentives] = consumers;
    let pruning = {
        let config = config.clone();
        async move {
            prune_now(&config).await;
            consumer::every("archive retention", PRUNE_EVERY, shutdown, || {
                let config = config.clone();
                async move {
                    prune_now(&config).await;
                    Ok::<(), std::convert::Infallible>(())
                }
            })
            .await
        }
    };
    tokio::try_join!(stock, overrides, incentives, pruning)?;
    Ok(())
}

/// The first wait before a failed write is tried again; it doubles up to
/// [`RETRY_WAIT_MAX`].
const RETRY_WAIT: Duration = Duration::from_millis(100);
/// The longest wait between two tries of a failed write.
const RETRY_WAIT_MAX: Duration = Duration::from_secs(5);

/// Writes one batch: records of archived kinds are appended and acknowledged with the
/// entries of other kinds; entries that do not decode are nacked (dead-lettered in the
/// `archive` group, as the services dead-letter them). A write that fails (a full or
/// read-only volume) is tried again, with waits growing to `RETRY_WAIT_MAX`, until it
/// succeeds: the entries are not nacked, which would dead-letter them after a few
/// deliveries and leave a hole in the archive. If `stop` is cancelled first they are left
/// pending, neither acknowledged nor nacked, and come back after a restart.
pub async fn archive_batch(
    config: Arc<ArchiveConfig>,
    stream: &'static str,
    batch: Vec<Delivery>,
    stop: CancellationToken,
) -> Settled {
    let mut settled = Settled::default();
    let mut records = Vec::with_capacity(batch.len());
    let mut written = Vec::with_capacity(batch.len());
    for delivery in batch {
        match Record::of(&delivery) {
            Ok(Some(record)) => {
                records.push(record);
                written.push(delivery);
            }
            Ok(None) => settled.ack.push(delivery),
            Err(e) => settled.nack.push((delivery, e.to_string())),
        }
    }
    if records.is_empty() {
        return settled;
    }
    let count = records.len() as u64;
    let records = Arc::new(records);
    let mut wait = RETRY_WAIT;
    loop {
        let (writer, batch) = (config.clone(), records.clone());
        let result = tokio::task::spawn_blocking(move || {
            segment::append(&writer.dir, &writer.writer, &batch)
        })
        .await;
        let error = match result {
            Ok(Ok(())) => break,
            Ok(Err(e)) => e.to_string(),
            Err(e) => format!("the write did not finish: {e}"),
        };
        tracing::error!(stream, dir = %config.dir.display(), %error, retry_in = ?wait, "writing to the archive failed; the batch stays pending and is tried again");
        metrics::counter!("ratemesh_archive_write_failures_total", "stream" => stream).increment(1);
        tokio::select! {
            _ = stop.cancelled() => return settled,
            _ = tokio::time::sleep(wait) => {}
        }
        wait = (wait * 2).min(RETRY_WAIT_MAX);
    }
    metrics::counter!("ratemesh_archive_records_total", "stream" => stream).increment(count);
    settled.ack.extend(written);
    settled
}

async fn prune_now(config: &Arc<ArchiveConfig>) {
    let config = config.clone();
    let today = Utc::now().date_naive();
    let result = tokio::task::spawn_blocking(move || {
        retention::prune(&config.dir, today, config.retention_days)
    })
    .await;
    match result {
        Ok(Ok(deleted)) if !deleted.is_empty() => {
            metrics::counter!("ratemesh_archive_files_deleted_total")
                .increment(deleted.len() as u64);
            tracing::info!(
                files = deleted.len(),
                "archive day files past retention deleted"
            );
        }
        Ok(Ok(_)) => {}
        Ok(Err(e)) => {
            tracing::warn!(error = %e, "archive retention failed; it runs again in an hour")
        }
        Err(e) => tracing::warn!(error = %e, "archive retention did not finish"),
    }
}
