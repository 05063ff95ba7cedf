//! Snapshots of the rate table, so a cold replica serves in seconds.
//!
//! A replica starting on a large catalogue would otherwise read every SKU's state record
//! one by one. Instead one replica at a time (the *writer*, holding a lease) keeps a
//! compact copy of its table in the backend: up to [`BLOCKS`] blocks, one per SKU bucket
//! that holds a SKU, each a single value holding the bucket's encoded cards back to back,
//! and a head record naming the blocks' epoch, which buckets have one, and the stream
//! position they are complete up to. A cold
//! replica reads the head and the blocks (a few large values, fetched many at a time),
//! then tails the `rates` stream from that position.
//!
//! Refreshes are incremental: every `rates.snapshot_interval_ms` the writer rewrites only
//! the buckets that changed since its last round (the replica marks a bucket dirty before
//! its position moves past the change), then moves the head's position forward. A block
//! not rewritten did not change, so every block is complete up to the head's position.
//!
//! Ownership: the head also holds the writer's name and lease expiry, and every head
//! write checks the version it last saw. A replica takes an expired lease with a fresh
//! epoch and writes every block under it before the head points at it; a writer that
//! lost its lease can then only write into its own old epoch, which no head names, and
//! deletes it when it notices. Two writers for a moment cost work, never correctness.
//!
//! Block format: a format byte ([`BLOCK_FORMAT`]), then per card: the position of its
//! last change (milliseconds and sequence, varints), the card's length (varint) and its
//! bytes.
//!
//! When the head is missing, names another block count, or its position was trimmed from
//! the stream, or a block is missing or unreadable, the loader falls back to reading
//! every state record.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use futures::StreamExt;
use ratemesh_bus::{Bus, BusError, BusResult, Cursor, EntryId, StateWrite};
use ratemesh_contract::streams;
use tokio_util::sync::CancellationToken;

use super::replica::{BLOCKS, Incoming, Replica, SHARDS};
use super::wire::{self, WireError};

/// State namespace of the snapshot's head and blocks.
pub const NAMESPACE: &str = "rate-snapshot";
/// Format byte of a block.
pub const BLOCK_FORMAT: u8 = 1;
const HEAD: &str = "head";
const FIELD_BLOCK: &str = "block";
const FIELD_OWNER: &str = "owner";
const FIELD_EXPIRES: &str = "expires_ms";
const FIELD_EPOCH: &str = "epoch";
const FIELD_CURSOR: &str = "cursor";
const FIELD_BLOCKS: &str = "blocks";
const FIELD_FILLED: &str = "filled";
/// Blocks fetched per round trip, and round trips in flight, while loading.
const READ_CHUNK: usize = 16;
const READS_IN_FLIGHT: usize = 4;
/// Block writes in flight.
const WRITES_IN_FLIGHT: usize = 8;

fn block_key(epoch: u64, bucket: usize) -> String {
    format!("e{epoch}-b{bucket:04}")
}

/// Appends one card to a block.
pub(crate) fn put_entry(block: &mut Vec<u8>, changed: EntryId, card: &[u8]) {
    wire::put_varint(block, changed.ms);
    wire::put_varint(block, changed.seq);
    wire::put_varint(block, card.len() as u64);
    block.extend_from_slice(card);
}

/// The cards of a block with their change positions.
pub fn read_block(bytes: &[u8]) -> Result<Vec<(EntryId, &[u8])>, WireError> {
    let Some((&format, mut rest)) = bytes.split_first() else {
        return Err(WireError("empty block".into()));
    };
    if format != BLOCK_FORMAT {
        return Err(WireError(format!("unknown block format {format}")));
    }
    let mut out = Vec::new();
    while !rest.is_empty() {
        let ms = wire::get_varint(&mut rest)?;
        let seq = wire::get_varint(&mut rest)?;
        let len = usize::try_from(wire::get_varint(&mut rest)?)
            .map_err(|_| WireError("card length overflow".into()))?;
        if rest.len() < len {
            return Err(WireError("truncated card".into()));
        }
        let (card, tail) = rest.split_at(len);
        out.push((EntryId { ms, seq }, card));
        rest = tail;
    }
    Ok(out)
}

fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
}

/// The head record, parsed.
#[derive(Debug, Default)]
struct Head {
    version: u64,
    owner: String,
    expires_ms: u64,
    epoch: u64,
    cursor: Option<String>,
    blocks: Option<usize>,
    /// Which buckets have a block (buckets with no SKU have none).
    filled: Option<Vec<bool>>,
}

/// A set of buckets as hex, bucket 0 in the lowest bit of the first byte.
fn encode_filled(filled: &[bool]) -> String {
    let bytes: Vec<u8> = filled
        .chunks(8)
        .map(|bits| {
            bits.iter()
                .enumerate()
                .fold(0u8, |acc, (i, &on)| acc | (u8::from(on) << i))
        })
        .collect();
    hex_encode(&bytes)
}

fn decode_filled(text: &str) -> Option<Vec<bool>> {
    if text.len() != BLOCKS / 4 || !text.is_ascii() {
        return None;
    }
    let mut filled = Vec::with_capacity(BLOCKS);
    for pair in text.as_bytes().chunks(2) {
        let byte = u8::from_str_radix(std::str::from_utf8(pair).ok()?, 16).ok()?;
        filled.extend((0..8).map(|i| byte >> i & 1 == 1));
    }
    Some(filled)
}

fn hex_encode(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

async fn read_head(bus: &Bus) -> BusResult<Head> {
    let Some(record) = bus.get_state(NAMESPACE, HEAD).await? else {
        return Ok(Head::default());
    };
    let text = |field: &str| {
        record
            .fields
            .get(field)
            .and_then(|v| std::str::from_utf8(v).ok())
            .map(str::to_owned)
    };
    Ok(Head {
        version: record.version,
        owner: text(FIELD_OWNER).unwrap_or_default(),
        expires_ms: text(FIELD_EXPIRES)
            .and_then(|v| v.parse().ok())
            .unwrap_or(0),
        epoch: text(FIELD_EPOCH).and_then(|v| v.parse().ok()).unwrap_or(0),
        cursor: text(FIELD_CURSOR),
        blocks: text(FIELD_BLOCKS).and_then(|v| v.parse().ok()),
        filled: text(FIELD_FILLED).and_then(|v| decode_filled(&v)),
    })
}

/// What a snapshot load did.
#[derive(Debug)]
pub struct Loaded {
    /// The position the snapshot is complete up to: tail from here.
    pub cursor: Cursor,
    /// Cards read.
    pub cards: usize,
}

/// Loads the snapshot into `replica`; `None` when there is no usable one (the caller
/// then reads every state record).
pub async fn load(bus: &Bus, replica: &Replica) -> BusResult<Option<Loaded>> {
    let head = read_head(bus).await?;
    let (Some(cursor), Some(blocks), Some(filled)) = (&head.cursor, head.blocks, &head.filled)
    else {
        return Ok(None);
    };
    if blocks != BLOCKS {
        tracing::info!(
            blocks,
            expected = BLOCKS,
            "the rate snapshot has another block count; reading every record"
        );
        return Ok(None);
    }
    let Ok(cursor) = Cursor::parse_for(cursor, bus.partitions()) else {
        tracing::info!(
            "the rate snapshot's position is for another partition count; reading every record"
        );
        return Ok(None);
    };
    if bus.trimmed_past(streams::RATES, &cursor).await? {
        tracing::info!(
            "the rate snapshot is older than the rates stream keeps; reading every record"
        );
        return Ok(None);
    }
    let epoch = head.epoch;
    let buckets: Vec<usize> = (0..BLOCKS).filter(|&b| filled[b]).collect();
    let reads = (0..buckets.len()).step_by(READ_CHUNK).map(|start| {
        let bus = bus.clone();
        let keys: Vec<String> = buckets[start..(start + READ_CHUNK).min(buckets.len())]
            .iter()
            .map(|&b| block_key(epoch, b))
            .collect();
        async move { bus.get_states(NAMESPACE, &keys).await }
    });
    let mut reads = futures::stream::iter(reads).buffered(READS_IN_FLIGHT);
    let mut cards = 0;
    while let Some(records) = reads.next().await {
        for record in records? {
            let Some(block) = record.as_ref().and_then(|r| r.fields.get(FIELD_BLOCK)) else {
                tracing::warn!(
                    epoch = head.epoch,
                    "a rate snapshot block is missing; reading every record"
                );
                return Ok(None);
            };
            let entries = match read_block(block) {
                Ok(entries) => entries,
                Err(err) => {
                    tracing::warn!(error = %err, "a rate snapshot block does not decode; reading every record");
                    return Ok(None);
                }
            };
            for (changed, bytes) in entries {
                match Incoming::new(bytes) {
                    Ok(card) => {
                        replica.apply_block_card(card, changed);
                        cards += 1;
                    }
                    Err(err) => {
                        tracing::warn!(error = %err, "a card in the rate snapshot does not decode; reading every record");
                        return Ok(None);
                    }
                }
            }
        }
    }
    Ok(Some(Loaded { cursor, cards }))
}

/// The lease this replica holds.
#[derive(Debug)]
struct Lease {
    /// The epoch it writes blocks under.
    epoch: u64,
    /// The head's version after this replica's last write.
    head_version: u64,
    /// The epoch the head named when the lease was taken (deleted once ours is complete).
    replaced: Option<u64>,
    /// Whether the head names `epoch` yet.
    published: bool,
    /// Buckets with a block under `epoch`.
    filled: Vec<bool>,
}

/// Keeps the snapshot fresh while this replica holds the writer's lease.
#[derive(Debug)]
pub struct Writer {
    bus: Bus,
    replica: Replica,
    me: String,
    ttl: Duration,
    lease: Option<Lease>,
}

impl Writer {
    /// A writer named `me` (unique per process) whose lease lasts `ttl` between rounds.
    pub fn new(bus: Bus, replica: Replica, me: String, ttl: Duration) -> Self {
        Self {
            bus,
            replica,
            me,
            ttl,
            lease: None,
        }
    }

    /// Whether this replica holds the lease.
    pub fn is_writer(&self) -> bool {
        self.lease.is_some()
    }

    /// One round: take the lease if it is free, write the dirty blocks, move the head.
    /// Returns the blocks written.
    pub async fn round(&mut self) -> BusResult<usize> {
        let head = read_head(&self.bus).await?;
        if let Some(lease) = &self.lease
            && head.version != lease.head_version
        {
            tracing::info!(owner = %head.owner, "another replica took the rate snapshot's lease");
            let stale = lease.epoch;
            self.lease = None;
            if head.epoch != stale {
                self.delete_epoch(stale).await;
            }
        }
        if self.lease.is_none() {
            let now = now_ms();
            if !head.owner.is_empty() && head.owner != self.me && head.expires_ms > now {
                return Ok(0);
            }
            let taken = StateWrite::new(NAMESPACE, HEAD)
                .unlisted()
                .expect_version(head.version)
                .set(FIELD_OWNER, self.me.clone().into_bytes())
                .set(FIELD_EXPIRES, self.expiry(now).into_bytes());
            let version = match self.bus.write_state(taken).await {
                Ok(v) => v,
                Err(BusError::Conflict { .. }) => return Ok(0),
                Err(e) => return Err(e),
            };
            tracing::info!(
                epoch = head.epoch + 1,
                "this replica writes the rate snapshot"
            );
            self.lease = Some(Lease {
                epoch: head.epoch + 1,
                head_version: version,
                replaced: head.cursor.is_some().then_some(head.epoch),
                published: false,
                filled: vec![false; BLOCKS],
            });
            self.replica.mark_all_dirty();
        }
        let Some(epoch) = self.lease.as_ref().map(|l| l.epoch) else {
            return Ok(0);
        };
        // Every change up to here is marked dirty or already written.
        let position = self.replica.reader().position();
        let mut written = 0;
        for shard in 0..SHARDS {
            let buckets = self.replica.take_dirty(shard);
            if buckets.is_empty() {
                continue;
            }
            let blocks = self.replica.dump_blocks(shard, &buckets);
            let bus = &self.bus;
            let results: Vec<(usize, BusResult<u64>)> = futures::stream::iter(blocks)
                .map(|(bucket, block)| {
                    let write = StateWrite::new(NAMESPACE, block_key(epoch, bucket))
                        .unlisted()
                        .set(FIELD_BLOCK, block);
                    async move { (bucket, bus.write_state(write).await) }
                })
                .buffer_unordered(WRITES_IN_FLIGHT)
                .collect()
                .await;
            let failed: Vec<usize> = results
                .iter()
                .filter(|(_, r)| r.is_err())
                .map(|(b, _)| *b)
                .collect();
            written += results.len() - failed.len();
            if let Some(lease) = self.lease.as_mut() {
                for (bucket, result) in &results {
                    if result.is_ok() {
                        lease.filled[*bucket] = true;
                    }
                }
            }
            if !failed.is_empty() {
                self.replica.mark_dirty(failed);
                // Later shards keep their marks; the head stays where it was.
                if let Some((_, Err(e))) = results.into_iter().find(|(_, r)| r.is_err()) {
                    return Err(e);
                }
            }
        }
        let expiry = self.expiry(now_ms());
        let Some(lease) = self.lease.as_mut() else {
            return Ok(written);
        };
        let head_write = StateWrite::new(NAMESPACE, HEAD)
            .unlisted()
            .expect_version(lease.head_version)
            .set(FIELD_OWNER, self.me.clone().into_bytes())
            .set(FIELD_EXPIRES, expiry.into_bytes())
            .set(FIELD_EPOCH, epoch.to_string().into_bytes())
            .set(FIELD_CURSOR, position.to_string().into_bytes())
            .set(FIELD_BLOCKS, BLOCKS.to_string().into_bytes())
            .set(FIELD_FILLED, encode_filled(&lease.filled).into_bytes());
        match self.bus.write_state(head_write).await {
            Ok(version) => {
                lease.head_version = version;
                if !lease.published {
                    lease.published = true;
                    if let Some(old) = lease.replaced.take()
                        && old != epoch
                    {
                        self.delete_epoch(old).await;
                    }
                }
                metrics::counter!("ratemesh_rates_snapshot_blocks_written_total")
                    .increment(written as u64);
                Ok(written)
            }
            Err(BusError::Conflict { .. }) => {
                tracing::info!("another replica took the rate snapshot's lease");
                let stale = epoch;
                self.lease = None;
                self.delete_epoch(stale).await;
                Ok(written)
            }
            Err(e) => Err(e),
        }
    }

    /// Gives the lease up (on shutdown), so another replica takes it at once.
    pub async fn release(&mut self) {
        let Some(lease) = self.lease.take() else {
            return;
        };
        let write = StateWrite::new(NAMESPACE, HEAD)
            .unlisted()
            .expect_version(lease.head_version)
            .set(FIELD_EXPIRES, b"0".to_vec());
        if let Err(err) = self.bus.write_state(write).await {
            tracing::debug!(error = %err, "releasing the rate snapshot's lease failed; it expires");
        }
    }

    fn expiry(&self, now: u64) -> String {
        (now + u64::try_from(self.ttl.as_millis()).unwrap_or(u64::MAX / 2)).to_string()
    }

    /// Deletes the blocks of an epoch no head names (best effort).
    async fn delete_epoch(&self, epoch: u64) {
        let failures = futures::stream::iter(0..BLOCKS)
            .map(|b| {
                let key = block_key(epoch, b);
                async move {
                    self.bus
                        .delete_state(NAMESPACE, &key, ratemesh_bus::Expect::Any)
                        .await
                }
            })
            .buffer_unordered(32)
            .filter(|r| std::future::ready(r.is_err()))
            .count()
            .await;
        if failures > 0 {
            tracing::warn!(
                epoch,
                failures,
                "deleting an old rate snapshot left blocks behind"
            );
        }
    }
}

/// Runs the writer every `interval` once the replica is loaded, until `shutdown`. A round
/// that took long (a bulk load moves every bucket) spaces the next ones out, so the
/// writer spends at most a fifth of its time writing.
pub async fn run(
    mut writer: Writer,
    interval: Duration,
    shutdown: CancellationToken,
) -> anyhow::Result<()> {
    let reader = writer.replica.reader();
    while !reader.is_loaded() {
        tokio::select! {
            () = shutdown.cancelled() => return Ok(()),
            () = tokio::time::sleep(Duration::from_millis(100)) => {}
        }
    }
    loop {
        let started = tokio::time::Instant::now();
        match writer.round().await {
            Ok(blocks) if blocks > 0 => {
                tracing::debug!(
                    blocks,
                    took_ms = started.elapsed().as_millis() as u64,
                    "rate snapshot refreshed"
                );
            }
            Ok(_) => {}
            Err(err) => {
                metrics::counter!("ratemesh_rates_snapshot_failures_total").increment(1);
                tracing::warn!(error = %err, "refreshing the rate snapshot failed; retrying next round");
            }
        }
        metrics::gauge!("ratemesh_rates_snapshot_writer").set(if writer.is_writer() {
            1.0
        } else {
            0.0
        });
        let pause = interval.max(started.elapsed() * 4);
        tokio::select! {
            () = shutdown.cancelled() => {
                writer.release().await;
                return Ok(());
            }
            () = tokio::time::sleep(pause) => {}
        }
    }
}
