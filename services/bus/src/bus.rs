//! [`Bus`], the one handle services hold, and the [`Consumer`] and [`Tail`] it makes.
//!
//! Dispatch to the backend is a plain `match` on an enum: no generics leak into services
//! and no virtual call or boxed future sits on the hot path.

use std::sync::Arc;
use std::time::{Duration, SystemTime};

use bytes::Bytes;
use tokio::sync::watch;

use crate::clock::ms_of;
use crate::cursor::Cursor;
use crate::entry::{Appended, DeadLetter, DeadLetterRef, Delivery, EntryId, Event, NackOutcome};
use crate::error::{BusError, BusResult};
use crate::memory::{MemoryBackend, MemoryConsumer, MemoryTail};
use crate::names::{check_group, check_key, check_name, check_state_key};
use crate::options::{BusOptions, RedisTls};
use crate::partition::partition_of;
use crate::redis::{RedisBackend, RedisConsumer, RedisTail, Target};
use crate::state::{
    CAS_ATTEMPTS, DueTimer, Expect, GroupInfo, HistoryLookup, Idempotency, Retention, Staged,
    StatePage, StateRecord, StateWrite, StreamStats, Update, Written,
};
use crate::trace_context::{current_traceparent, producer_span, traceparent_of};

#[derive(Clone)]
enum Backend {
    Memory(Arc<MemoryBackend>),
    Redis(Arc<RedisBackend>),
}

/// Streams, state and timers — in memory or on Redis, with the same semantics.
///
/// Cheap to clone; clones share the backend and its connections.
#[derive(Clone)]
pub struct Bus {
    backend: Backend,
    opts: Arc<BusOptions>,
}

impl std::fmt::Debug for Bus {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Bus")
            .field("backend", &self.backend_name())
            .field("options", &self.opts)
            .finish()
    }
}

/// Gives `event` the trace context of the append when it names none: a PRODUCER span for
/// `stream`, child of the current span, made once per call (`producer`) and kept open by
/// the caller until the append returns.
fn fill_traceparent(mut event: Event, stream: &str, producer: &mut Option<tracing::Span>) -> Event {
    if event.traceparent.is_none() {
        let span = producer.get_or_insert_with(|| producer_span(stream));
        // A disabled producer span (filtered out) still leaves the caller's trace.
        event.traceparent = traceparent_of(span).or_else(current_traceparent);
    }
    event
}

/// Runs a Redis call in a CLIENT span (`db.*` attributes) when it is part of a trace. A
/// call outside any span (a timer poll, a sweep) makes none, so background loops add no
/// root spans of their own. Only the calls that serve a whole batch (appends, reads and
/// writes of many keys, timers) are wrapped: single-key reads and writes run once per
/// item on some paths, and a span each would make a 5,000-item push 10,000 spans.
async fn redis_call<T>(operation: &'static str, call: impl std::future::Future<Output = T>) -> T {
    if tracing::Span::current().is_none() {
        return call.await;
    }
    let span = tracing::info_span!(
        "redis",
        otel.name = operation,
        otel.kind = "client",
        db.system = "redis",
        db.operation.name = operation,
    );
    tracing::Instrument::instrument(call, span).await
}

fn check_event(stream: &str, event: &Event) -> BusResult<()> {
    check_key(&format!("event key on stream {stream}"), &event.key)
}

impl Bus {
    /// An in-process bus that keeps nothing on restart (the engine of `ratemesh up`
    /// without Redis).
    pub fn memory(opts: BusOptions) -> BusResult<Bus> {
        opts.validate()?;
        Ok(Bus {
            backend: Backend::Memory(Arc::new(MemoryBackend::new(opts.clone()))),
            opts: Arc::new(opts),
        })
    }

    /// A bus on Redis at `url` (`redis://host:port/db`), with every key under `prefix`
    /// (one prefix per deployment, `[A-Za-z0-9._-]`).
    ///
    /// An unreachable server is not an error: the bus reconnects by itself with backoff,
    /// [`Bus::connected`] reports when it is up, and operations fail with
    /// [`BusError::Unavailable`] meanwhile. Only a bad URL, prefix or options fail here.
    pub async fn redis(url: &str, prefix: &str, opts: BusOptions) -> BusResult<Bus> {
        Self::on_redis(Target::open(&[url.to_owned()], false, None)?, prefix, opts).await
    }

    /// [`Bus::redis`] at a `rediss://` URL with a CA or client certificate of its own.
    pub async fn redis_with_tls(
        url: &str,
        prefix: &str,
        opts: BusOptions,
        tls: &RedisTls,
    ) -> BusResult<Bus> {
        let target = Target::open(&[url.to_owned()], false, Some(tls))?;
        Self::on_redis(target, prefix, opts).await
    }

    /// A bus on a Redis Cluster known by `seeds` (`redis://host:port` each; any reachable
    /// node will do, the rest of the cluster is discovered from it), with every key under
    /// `prefix`. A partition's keys share one slot, so partitions spread over the cluster's
    /// primaries. Redirections (`MOVED`, `ASK`), failovers and slot moves are followed
    /// with a few retries; an operation that still fails is [`BusError::Unavailable`].
    pub async fn redis_cluster(seeds: &[String], prefix: &str, opts: BusOptions) -> BusResult<Bus> {
        Self::on_redis(Target::open(seeds, true, None)?, prefix, opts).await
    }

    /// [`Bus::redis_cluster`] with `rediss://` seeds and a CA or client certificate of its
    /// own (used for every node of the cluster).
    pub async fn redis_cluster_with_tls(
        seeds: &[String],
        prefix: &str,
        opts: BusOptions,
        tls: &RedisTls,
    ) -> BusResult<Bus> {
        Self::on_redis(Target::open(seeds, true, Some(tls))?, prefix, opts).await
    }

    async fn on_redis(target: Target, prefix: &str, opts: BusOptions) -> BusResult<Bus> {
        opts.validate()?;
        check_name("key prefix", prefix)?;
        let backend = RedisBackend::connect(target, prefix, opts.clone()).await?;
        Ok(Bus {
            backend: Backend::Redis(Arc::new(backend)),
            opts: Arc::new(opts),
        })
    }

    /// This bus with appends that count as done only once `replicas` Redis replicas
    /// confirmed them (`WAIT`) within `timeout`: a write or publish that is not confirmed
    /// in time fails with [`BusError::Unavailable`] although the primary applied it, so a
    /// caller answers "retry" rather than "accepted" for what a failover could lose. The
    /// handle has a connection of its own (`WAIT` holds the connection it is sent on).
    /// With `replicas` 0 it is the bus itself; on the in-memory backend, which has no
    /// replicas, `replicas` > 0 is refused.
    pub fn with_replica_acks(&self, replicas: u32, timeout: Duration) -> BusResult<Bus> {
        if replicas == 0 {
            return Ok(self.clone());
        }
        match &self.backend {
            Backend::Memory(_) => Err(BusError::InvalidInput(
                "replica acknowledgements need Redis: the in-memory bus has no replicas".to_owned(),
            )),
            Backend::Redis(r) => Ok(Bus {
                backend: Backend::Redis(Arc::new(r.with_replica_acks(replicas, timeout)?)),
                opts: self.opts.clone(),
            }),
        }
    }

    /// `"memory"` or `"redis"`, for logs and the start-up banner.
    pub fn backend_name(&self) -> &'static str {
        match self.backend {
            Backend::Memory(_) => "memory",
            Backend::Redis(_) => "redis",
        }
    }

    /// The options the bus was built with.
    pub fn options(&self) -> &BusOptions {
        &self.opts
    }

    /// Number of partitions per stream.
    pub fn partitions(&self) -> u32 {
        self.opts.partitions
    }

    /// The partition of `key`.
    pub fn partition_of(&self, key: &str) -> u32 {
        partition_of(key, self.opts.partitions)
    }

    /// Connected (`true`) / disconnected (`false`) signal, for readiness. Always `true` in
    /// memory.
    pub fn connected(&self) -> watch::Receiver<bool> {
        match &self.backend {
            Backend::Memory(m) => m.connected(),
            Backend::Redis(r) => r.connected(),
        }
    }

    // ----- streams -----

    /// Appends one event to the partition of its key. Returns once the backend has
    /// acknowledged the append (for Redis: XADD replied, so with `appendfsync always` the
    /// entry is on disk).
    pub async fn publish(&self, stream: &str, event: Event) -> BusResult<Appended> {
        let mut out = self.publish_batch(stream, vec![event]).await?;
        out.pop()
            .ok_or_else(|| BusError::Backend(format!("publish to stream {stream} returned no id")))
    }

    /// Appends events in order (order is kept per partition), pipelined in one round trip
    /// on Redis. Returns their positions in input order. Not atomic: on error some may
    /// have been appended; retrying may duplicate them (consumers are idempotent).
    pub async fn publish_batch(
        &self,
        stream: &str,
        events: Vec<Event>,
    ) -> BusResult<Vec<Appended>> {
        check_name("stream", stream)?;
        if events.is_empty() {
            return Ok(Vec::new());
        }
        for e in &events {
            check_event(stream, e)?;
        }
        let mut producer = None;
        let events: Vec<Event> = events
            .into_iter()
            .map(|e| fill_traceparent(e, stream, &mut producer))
            .collect();
        let _producer = producer;
        match &self.backend {
            Backend::Memory(m) => Ok(m.publish(stream, events)),
            Backend::Redis(r) => redis_call("XADD", r.publish(stream, events)).await,
        }
    }

    /// Joins consumer group `group` of `stream` as consumer `name` (unique per process,
    /// e.g. host and pid). The group is created at the start of the stream if it does not
    /// exist, so nothing published before the first consumer started is missed.
    pub async fn consumer(&self, stream: &str, group: &str, name: &str) -> BusResult<Consumer> {
        check_name("stream", stream)?;
        check_name("group", group)?;
        check_name("consumer", name)?;
        let inner = match &self.backend {
            Backend::Memory(m) => ConsumerInner::Memory(m.consumer(stream, group, name)),
            Backend::Redis(r) => {
                ConsumerInner::Redis(RedisConsumer::new(r.clone(), stream, group, name).await?)
            }
        };
        Ok(Consumer {
            inner: Arc::new(inner),
        })
    }

    /// A reader of every entry after `from`, without a group (read replicas, `WatchRates`).
    pub fn tail(&self, stream: &str, from: Cursor) -> BusResult<Tail> {
        check_name("stream", stream)?;
        self.check_cursor(&from)?;
        let inner = match &self.backend {
            Backend::Memory(m) => TailInner::Memory(m.tail(stream, from)),
            Backend::Redis(r) => TailInner::Redis(RedisTail::new(r.clone(), stream, from)?),
        };
        Ok(Tail { inner })
    }

    /// Entries after `cursor` (up to `limit` per partition) without waiting, and the cursor
    /// to continue from (for delta sync).
    pub async fn read_after(
        &self,
        stream: &str,
        cursor: &Cursor,
        limit: usize,
    ) -> BusResult<(Vec<Delivery>, Cursor)> {
        check_name("stream", stream)?;
        self.check_cursor(cursor)?;
        let limit = limit.max(1);
        let batch = match &self.backend {
            Backend::Memory(m) => m.read_after(stream, cursor, limit),
            Backend::Redis(r) => r.read_after(stream, cursor, limit, None).await?,
        };
        let mut next = cursor.clone();
        for d in &batch {
            next.advance(d.partition, d.id);
        }
        Ok((batch, next))
    }

    /// The cursor at the current end of `stream`: note it, load a snapshot, then tail from
    /// it to miss nothing.
    pub async fn end_cursor(&self, stream: &str) -> BusResult<Cursor> {
        check_name("stream", stream)?;
        match &self.backend {
            Backend::Memory(m) => Ok(m.end_cursor(stream)),
            Backend::Redis(r) => r.end_cursor(stream).await,
        }
    }

    /// The cursor before every entry.
    pub fn start_cursor(&self) -> Cursor {
        Cursor::start(self.opts.partitions)
    }

    /// Parses a cursor token from a client, checking it fits this bus.
    pub fn parse_cursor(&self, token: &str) -> BusResult<Cursor> {
        Cursor::parse_for(token, self.opts.partitions)
    }

    fn check_cursor(&self, cursor: &Cursor) -> BusResult<()> {
        if cursor.partitions() != self.opts.partitions {
            return Err(BusError::InvalidInput(format!(
                "cursor covers {} partitions, the bus has {}",
                cursor.partitions(),
                self.opts.partitions
            )));
        }
        Ok(())
    }

    /// Drops old entries of `stream` under `retention`. Entries pending in, or not yet
    /// delivered to, any consumer group are never dropped. Returns how many were removed.
    pub async fn trim(&self, stream: &str, retention: Retention) -> BusResult<u64> {
        check_name("stream", stream)?;
        match &self.backend {
            Backend::Memory(m) => Ok(m.trim(stream, &retention)),
            Backend::Redis(r) => r.trim(stream, &retention).await,
        }
    }

    /// Whether retention has removed entries of `stream` that come after `cursor`: a reader
    /// positioned there has missed them for good and must reload from state (read replicas
    /// check this after an outage).
    pub async fn trimmed_past(&self, stream: &str, cursor: &Cursor) -> BusResult<bool> {
        check_name("stream", stream)?;
        self.check_cursor(cursor)?;
        match &self.backend {
            Backend::Memory(m) => Ok(m.trimmed_past(stream, cursor)),
            Backend::Redis(r) => r.trimmed_past(stream, cursor).await,
        }
    }

    /// Length, backlog, pending and dead-letter counts of `stream` for `group`.
    pub async fn stream_stats(&self, stream: &str, group: &str) -> BusResult<StreamStats> {
        check_name("stream", stream)?;
        check_name("group", group)?;
        match &self.backend {
            Backend::Memory(m) => Ok(m.stats(stream, group)),
            Backend::Redis(r) => r.stats(stream, group).await,
        }
    }

    /// Every consumer group of `stream`, by name: its live readers, what it has not been
    /// given or not acknowledged yet (what trimming keeps for it) and its dead letters.
    /// A group with no readers and a growing backlog is one nobody consumes any more: it
    /// stops [`Bus::trim`] at its position until it is dropped ([`Bus::drop_group`]).
    pub async fn groups(&self, stream: &str) -> BusResult<Vec<GroupInfo>> {
        check_name("stream", stream)?;
        match &self.backend {
            Backend::Memory(m) => Ok(m.groups(stream)),
            Backend::Redis(r) => r.groups(stream).await,
        }
    }

    /// Destroys consumer group `group` of `stream` on every partition (Redis: `XGROUP
    /// DESTROY`), with its pending entries, dead letters and partition leases, so
    /// trimming no longer keeps entries for it. `false` when the group did not exist
    /// (nothing to do, not an error).
    ///
    /// Stop the group's consumers first: a consumer still running creates the group again
    /// at the start of the stream and reads everything the stream still holds.
    pub async fn drop_group(&self, stream: &str, group: &str) -> BusResult<bool> {
        check_name("stream", stream)?;
        check_name("group", group)?;
        match &self.backend {
            Backend::Memory(m) => Ok(m.drop_group(stream, group)),
            Backend::Redis(r) => r.drop_group(stream, group).await,
        }
    }

    /// The oldest `limit` dead letters of `group` on `stream`.
    pub async fn dead_letters(
        &self,
        stream: &str,
        group: &str,
        limit: usize,
    ) -> BusResult<Vec<DeadLetter>> {
        check_name("stream", stream)?;
        check_name("group", group)?;
        let limit = limit.max(1);
        match &self.backend {
            Backend::Memory(m) => Ok(m.dead_letters(stream, group, limit)),
            Backend::Redis(r) => r.dead_letters(stream, group, limit).await,
        }
    }

    /// Appends the named dead letters to `stream` again (as new entries, with their
    /// original key, payload and traceparent) and removes them from the dead-letter
    /// stream, atomically per partition. Every group of the stream sees them again.
    /// Unknown refs are skipped.
    pub async fn replay_dead_letters(
        &self,
        stream: &str,
        group: &str,
        refs: &[DeadLetterRef],
    ) -> BusResult<Vec<Appended>> {
        check_name("stream", stream)?;
        check_name("group", group)?;
        if refs.is_empty() {
            return Ok(Vec::new());
        }
        match &self.backend {
            Backend::Memory(m) => Ok(m.replay_dead_letters(stream, group, refs)),
            Backend::Redis(r) => r.replay_dead_letters(stream, group, refs).await,
        }
    }

    /// Removes the named dead letters for good. Returns how many existed.
    pub async fn delete_dead_letters(
        &self,
        stream: &str,
        group: &str,
        refs: &[DeadLetterRef],
    ) -> BusResult<u64> {
        check_name("stream", stream)?;
        check_name("group", group)?;
        if refs.is_empty() {
            return Ok(0);
        }
        match &self.backend {
            Backend::Memory(m) => Ok(m.delete_dead_letters(stream, group, refs)),
            Backend::Redis(r) => r.delete_dead_letters(stream, group, refs).await,
        }
    }

    // ----- state -----

    /// The state of `namespace`/`key`, if any.
    pub async fn get_state(&self, namespace: &str, key: &str) -> BusResult<Option<StateRecord>> {
        check_name("namespace", namespace)?;
        check_key("state key", key)?;
        match &self.backend {
            Backend::Memory(m) => Ok(m.get_state(namespace, key)),
            Backend::Redis(r) => r.get_state(namespace, key).await,
        }
    }

    /// The version of `namespace`/`key` with only the named `fields` (those it holds), if
    /// the record exists: what a writer that reads or changes a few fields of a large
    /// record (an outbox of thousands of items) reads instead of all of it.
    pub async fn get_state_fields<F: AsRef<str>>(
        &self,
        namespace: &str,
        key: &str,
        fields: &[F],
    ) -> BusResult<Option<StateRecord>> {
        check_name("namespace", namespace)?;
        check_key("state key", key)?;
        for field in fields {
            check_key(&format!("field of state {namespace}/{key}"), field.as_ref())?;
        }
        match &self.backend {
            Backend::Memory(m) => Ok(m.get_state_fields(namespace, key, fields)),
            Backend::Redis(r) => r.get_state_fields(namespace, key, fields).await,
        }
    }

    /// How many fields `namespace`/`key` holds (0 when it does not exist), without
    /// reading them: what a gauge over a record of a field per item (a set of thousands)
    /// reads instead of all of it.
    pub async fn count_state_fields(&self, namespace: &str, key: &str) -> BusResult<u64> {
        check_name("namespace", namespace)?;
        check_key("state key", key)?;
        match &self.backend {
            Backend::Memory(m) => Ok(m.count_state_fields(namespace, key)),
            Backend::Redis(r) => r.count_state_fields(namespace, key).await,
        }
    }

    /// The states of `namespace`/`keys`, in the order of `keys`, read in one round trip:
    /// what a consumer reads before folding a batch of entries for many keys.
    pub async fn get_states<K: AsRef<str>>(
        &self,
        namespace: &str,
        keys: &[K],
    ) -> BusResult<Vec<Option<StateRecord>>> {
        check_name("namespace", namespace)?;
        for key in keys {
            check_key("state key", key.as_ref())?;
        }
        match &self.backend {
            Backend::Memory(m) => Ok(keys
                .iter()
                .map(|k| m.get_state(namespace, k.as_ref()))
                .collect()),
            Backend::Redis(r) => redis_call("HGETALL", r.get_states(namespace, keys)).await,
        }
    }

    fn check_write(write: &StateWrite) -> BusResult<()> {
        check_name("namespace", &write.namespace)?;
        check_state_key(&write.key)?;
        if let Some(group) = &write.group {
            check_group(group)?;
        }
        for field in write.set.keys().chain(&write.remove) {
            check_key(
                &format!("field of state {}/{}", write.namespace, write.key),
                field,
            )?;
        }
        Ok(())
    }

    /// Applies `write` if its version check passes; returns the new version.
    /// A failed check is [`BusError::Conflict`] carrying the current version.
    pub async fn write_state(&self, write: StateWrite) -> BusResult<u64> {
        Self::check_write(&write)?;
        let (version, _) = match &self.backend {
            Backend::Memory(m) => m.write_state(write, None)?,
            Backend::Redis(r) => r.write_state(write, None).await?,
        };
        Ok(version)
    }

    /// Applies `write` and appends `event` to `stream` atomically: both happen or neither
    /// does, and no reader sees one without the other. `event.key` must be in the same
    /// partition as the state key (use the same SKU).
    pub async fn write_state_and_publish(
        &self,
        write: StateWrite,
        stream: &str,
        event: Event,
    ) -> BusResult<(u64, Appended)> {
        Self::check_write(&write)?;
        check_name("stream", stream)?;
        check_event(stream, &event)?;
        if self.partition_of(&event.key) != self.partition_of(&write.key) {
            return Err(BusError::InvalidInput(format!(
                "event key {:?} is not in the partition of state key {:?}",
                event.key, write.key
            )));
        }
        let mut producer = None;
        let event = fill_traceparent(event, stream, &mut producer);
        let _producer = producer;
        let (version, appended) = match &self.backend {
            Backend::Memory(m) => m.write_state(write, Some((stream, vec![event])))?,
            Backend::Redis(r) => r.write_state(write, Some((stream, vec![event]))).await?,
        };
        let appended = appended.into_iter().next().ok_or_else(|| {
            BusError::Backend(format!("state write to stream {stream} returned no id"))
        })?;
        Ok((version, appended))
    }

    /// Applies many writes, each under its own version check and each atomically with
    /// the events appended with it (if any) — what a consumer does with a batch it
    /// folded in memory. On Redis the writes of one partition are one script (one round
    /// trip, one atomic step); partitions are written concurrently. The answer is per
    /// write, in order: its new version and appended entry, [`BusError::Conflict`] when
    /// its check failed (nothing of it was written; the others were), or the error that
    /// kept it from being written. The events of a write go to its stream in order and
    /// must be in the state key's partition.
    pub async fn write_states(&self, writes: Vec<Staged<'_>>) -> Vec<BusResult<Written>> {
        let mut results: Vec<Option<BusResult<Written>>> =
            (0..writes.len()).map(|_| None).collect();
        let mut by_partition: std::collections::BTreeMap<u32, Vec<usize>> = Default::default();
        let mut checked = Vec::with_capacity(writes.len());
        // One PRODUCER span for the appends of the call that name no trace of their own.
        let mut producer: Option<tracing::Span> = None;
        for (i, (write, publish)) in writes.into_iter().enumerate() {
            let verdict = Self::check_write(&write).and_then(|()| match &publish {
                Some((stream, events)) => {
                    check_name("stream", stream)?;
                    for event in events {
                        check_event(stream, event)?;
                        if self.partition_of(&event.key) != self.partition_of(&write.key) {
                            return Err(BusError::InvalidInput(format!(
                                "event key {:?} is not in the partition of state key {:?}",
                                event.key, write.key
                            )));
                        }
                    }
                    Ok(())
                }
                None => Ok(()),
            });
            match verdict {
                Ok(()) => {
                    by_partition
                        .entry(self.partition_of(&write.key))
                        .or_default()
                        .push(i);
                }
                Err(e) => results[i] = Some(Err(e)),
            }
            let publish = publish.map(|(stream, events)| {
                let events = events
                    .into_iter()
                    .map(|e| fill_traceparent(e, stream, &mut producer))
                    .collect();
                (stream, events)
            });
            checked.push(Some((write, publish)));
        }
        match &self.backend {
            Backend::Memory(m) => {
                for i in by_partition.into_values().flatten() {
                    if let Some((write, publish)) = checked[i].take() {
                        results[i] = Some(m.write_state(write, publish));
                    }
                }
            }
            Backend::Redis(r) => {
                let calls = by_partition.into_iter().map(|(p, indices)| {
                    let batch: Vec<_> = indices.iter().filter_map(|&i| checked[i].take()).collect();
                    async move {
                        (
                            indices,
                            redis_call("EVALSHA", r.write_states(p, batch)).await,
                        )
                    }
                });
                for (indices, written) in futures::future::join_all(calls).await {
                    match written {
                        Ok(written) => {
                            for (i, result) in indices.into_iter().zip(written) {
                                results[i] = Some(result);
                            }
                        }
                        Err(e) => {
                            for i in indices {
                                results[i] = Some(Err(e.clone()));
                            }
                        }
                    }
                }
            }
        }
        results
            .into_iter()
            .map(|r| r.unwrap_or_else(|| Err(BusError::Backend("state write lost".to_owned()))))
            .collect()
    }

    /// The version of `namespace`/`key`'s history (see [`StateWrite::set_kept`])
    /// that was current at `at_us` (µs since the Unix epoch), and the oldest one kept.
    pub async fn history_at(
        &self,
        namespace: &str,
        key: &str,
        at_us: i64,
    ) -> BusResult<HistoryLookup> {
        check_name("namespace", namespace)?;
        check_key("state key", key)?;
        match &self.backend {
            Backend::Memory(m) => Ok(m.history_at(namespace, key, at_us)),
            Backend::Redis(r) => r.history_at(namespace, key, at_us).await,
        }
    }

    /// Read-modify-write of one state record, the one compare-and-set loop every
    /// service uses: reads `namespace`/`key`, lets `change` decide from the record (or
    /// `None`) what to write — it gets a [`StateWrite`] already bound to the version read
    /// — and writes it; when another writer won in between, it reads again and asks
    /// again, at most [`CAS_ATTEMPTS`] times, then fails with `Unavailable` (the caller
    /// retries later; nothing was half-written). After the second lost race in a row it
    /// waits a little before reading again, a random time that grows with each loss
    /// (up to 50 ms), so writers colliding on a hot record spread out.
    pub async fn update_state<T, E, F, Fut>(
        &self,
        namespace: &str,
        key: &str,
        change: F,
    ) -> Result<T, E>
    where
        E: From<BusError>,
        F: FnMut(Option<StateRecord>, StateWrite) -> Fut,
        Fut: std::future::Future<Output = Result<Update<T>, E>>,
    {
        self.update_state_loop(namespace, key, None, None, change)
            .await
    }

    /// [`Bus::update_state`] that reads only `fields` of the record (with its version,
    /// see [`Bus::get_state_fields`]): `change` decides from them, and the write is still
    /// checked against the whole record's version. For a change to a few fields of a
    /// record too large to read on every change.
    pub async fn update_state_fields<T, E, F, Fut>(
        &self,
        namespace: &str,
        key: &str,
        fields: &[&str],
        change: F,
    ) -> Result<T, E>
    where
        E: From<BusError>,
        F: FnMut(Option<StateRecord>, StateWrite) -> Fut,
        Fut: std::future::Future<Output = Result<Update<T>, E>>,
    {
        self.update_state_loop(namespace, key, Some(fields), None, change)
            .await
    }

    /// [`Bus::update_state`] whose first step decides from `seen`, the record as the
    /// caller last read or wrote it (`None`: absent), instead of reading it again. A
    /// caller making several changes to one record in a row saves a read per change; a
    /// `seen` that is out of date only costs one lost race, after which the record is
    /// read as usual.
    pub async fn update_state_from<T, E, F, Fut>(
        &self,
        namespace: &str,
        key: &str,
        seen: Option<StateRecord>,
        change: F,
    ) -> Result<T, E>
    where
        E: From<BusError>,
        F: FnMut(Option<StateRecord>, StateWrite) -> Fut,
        Fut: std::future::Future<Output = Result<Update<T>, E>>,
    {
        self.update_state_loop(namespace, key, None, Some(seen), change)
            .await
    }

    async fn update_state_loop<T, E, F, Fut>(
        &self,
        namespace: &str,
        key: &str,
        fields: Option<&[&str]>,
        mut seen: Option<Option<StateRecord>>,
        mut change: F,
    ) -> Result<T, E>
    where
        E: From<BusError>,
        F: FnMut(Option<StateRecord>, StateWrite) -> Fut,
        Fut: std::future::Future<Output = Result<Update<T>, E>>,
    {
        for lost in 0..CAS_ATTEMPTS {
            let wait = crate::state::cas_backoff(lost);
            if !wait.is_zero() {
                tokio::time::sleep(wait).await;
            }
            let current = match seen.take() {
                Some(record) => record.filter(|r| r.version > 0),
                None => match fields {
                    Some(fields) => self.get_state_fields(namespace, key, fields).await?,
                    None => self.get_state(namespace, key).await?,
                },
            };
            let version = current.as_ref().map_or(0, |r| r.version);
            let write = StateWrite::new(namespace, key).expect_version(version);
            let result = match change(current, write).await? {
                Update::Keep(value) => return Ok(value),
                Update::Write(write, value) => self.write_state(write).await.map(|_| value),
                Update::WriteAndPublish(write, stream, event, value) => self
                    .write_state_and_publish(write, stream, event)
                    .await
                    .map(|_| value),
            };
            match result {
                Ok(value) => return Ok(value),
                Err(BusError::Conflict { .. }) => {
                    tracing::debug!(
                        namespace,
                        key,
                        "state changed under an update; reading again"
                    );
                }
                Err(e) => return Err(e.into()),
            }
        }
        Err(BusError::Unavailable(format!(
            "state {namespace}/{key} stayed contended after {CAS_ATTEMPTS} attempts"
        ))
        .into())
    }

    /// Deletes `namespace`/`key` if the version check passes, with its kept versions
    /// ([`StateWrite::set_kept`]); true if it existed.
    pub async fn delete_state(
        &self,
        namespace: &str,
        key: &str,
        expect: Expect,
    ) -> BusResult<bool> {
        check_name("namespace", namespace)?;
        check_state_key(key)?;
        match &self.backend {
            Backend::Memory(m) => m.delete_state(namespace, key, expect),
            Backend::Redis(r) => r.delete_state(namespace, key, expect).await,
        }
    }

    /// One page of every listed state in `namespace` (snapshot load; records created by an
    /// [`StateWrite::unlisted`] write are not listed). Pass the previous page's
    /// `next` token to continue; `None` starts from the beginning. Keys written during a
    /// scan may or may not appear; keys present throughout appear exactly once.
    pub async fn scan_states(
        &self,
        namespace: &str,
        page: Option<&str>,
        limit: usize,
    ) -> BusResult<StatePage> {
        check_name("namespace", namespace)?;
        let limit = limit.max(1);
        match &self.backend {
            Backend::Memory(m) => m.scan_states(namespace, None, page, limit),
            Backend::Redis(r) => r.scan_states(namespace, None, page, limit).await,
        }
    }

    /// One page of the records of `namespace` listed under `group`
    /// ([`StateWrite::listed_in`]), reading only those: a category's SKUs without walking
    /// the catalogue. Pages and guarantees as [`Self::scan_states`].
    pub async fn scan_group(
        &self,
        namespace: &str,
        group: &str,
        page: Option<&str>,
        limit: usize,
    ) -> BusResult<StatePage> {
        check_name("namespace", namespace)?;
        check_group(group)?;
        let limit = limit.max(1);
        match &self.backend {
            Backend::Memory(m) => m.scan_states(namespace, Some(group), page, limit),
            Backend::Redis(r) => r.scan_states(namespace, Some(group), page, limit).await,
        }
    }

    // ----- idempotency -----

    /// Starts an attempt under idempotency key `scope`/`key` on behalf of `owner` (a token
    /// unique to this attempt). `New` makes `owner` the holder for `ttl`: a short lease the
    /// holder keeps with [`Self::idempotency_renew`] while it works, so an attempt that
    /// dies frees the key soon after and a retry takes it over.
    pub async fn idempotency_begin(
        &self,
        scope: &str,
        key: &str,
        owner: &str,
        ttl: Duration,
    ) -> BusResult<Idempotency> {
        check_name("idempotency scope", scope)?;
        check_key("idempotency key", key)?;
        check_key("idempotency owner", owner)?;
        match &self.backend {
            Backend::Memory(m) => Ok(m.idempotency_begin(scope, key, owner, ttl)),
            Backend::Redis(r) => r.idempotency_begin(scope, key, owner, ttl).await,
        }
    }

    /// Extends `owner`'s hold on an attempt to `ttl` from now. `false` when `owner` no
    /// longer holds it (its lease lapsed, and another attempt may have taken over): the
    /// work must stop, since whatever it stores now is no longer its to store.
    pub async fn idempotency_renew(
        &self,
        scope: &str,
        key: &str,
        owner: &str,
        ttl: Duration,
    ) -> BusResult<bool> {
        check_name("idempotency scope", scope)?;
        check_key("idempotency key", key)?;
        check_key("idempotency owner", owner)?;
        match &self.backend {
            Backend::Memory(m) => Ok(m.idempotency_renew(scope, key, owner, ttl)),
            Backend::Redis(r) => r.idempotency_renew(scope, key, owner, ttl).await,
        }
    }

    /// Stores the outcome of `owner`'s attempt; later `begin`s return it until `ttl`
    /// passes. `false`, storing nothing, when another attempt holds the key or already
    /// stored its outcome (this one's lease lapsed and the key was taken over); a key that
    /// merely lapsed is still stored, since nobody else is working on it.
    pub async fn idempotency_complete(
        &self,
        scope: &str,
        key: &str,
        owner: &str,
        outcome: Bytes,
        ttl: Duration,
    ) -> BusResult<bool> {
        check_name("idempotency scope", scope)?;
        check_key("idempotency key", key)?;
        check_key("idempotency owner", owner)?;
        match &self.backend {
            Backend::Memory(m) => Ok(m.idempotency_complete(scope, key, owner, outcome, ttl)),
            Backend::Redis(r) => {
                r.idempotency_complete(scope, key, owner, outcome, ttl)
                    .await
            }
        }
    }

    /// Gives up `owner`'s attempt that failed, so a retry starts afresh. A completed key,
    /// or one another attempt holds, is kept.
    pub async fn idempotency_release(&self, scope: &str, key: &str, owner: &str) -> BusResult<()> {
        check_name("idempotency scope", scope)?;
        check_key("idempotency key", key)?;
        check_key("idempotency owner", owner)?;
        match &self.backend {
            Backend::Memory(m) => {
                m.idempotency_release(scope, key, owner);
                Ok(())
            }
            Backend::Redis(r) => r.idempotency_release(scope, key, owner).await,
        }
    }

    // ----- timers -----

    /// Schedules (or moves) `member` of timer queue `queue` to fire at `due_at`.
    pub async fn schedule(&self, queue: &str, member: &str, due_at: SystemTime) -> BusResult<()> {
        self.schedule_many(queue, &[(member, due_at)]).await
    }

    /// Schedules many timers on `queue` in one step (one command on Redis), with the
    /// semantics of [`Bus::schedule`] for each.
    pub async fn schedule_many<M: AsRef<str>>(
        &self,
        queue: &str,
        timers: &[(M, SystemTime)],
    ) -> BusResult<()> {
        check_name("timer queue", queue)?;
        for (member, _) in timers {
            check_key("timer member", member.as_ref())?;
        }
        if timers.is_empty() {
            return Ok(());
        }
        match &self.backend {
            Backend::Memory(m) => {
                for (member, due_at) in timers {
                    m.schedule(queue, member.as_ref(), ms_of(*due_at));
                }
                Ok(())
            }
            Backend::Redis(r) => redis_call("ZADD", r.schedule(queue, timers)).await,
        }
    }

    /// Cancels a timer; true if it was scheduled.
    pub async fn cancel(&self, queue: &str, member: &str) -> BusResult<bool> {
        check_name("timer queue", queue)?;
        check_key("timer member", member)?;
        match &self.backend {
            Backend::Memory(m) => Ok(m.cancel(queue, member)),
            Backend::Redis(r) => r.cancel(queue, member).await,
        }
    }

    /// Removes and returns up to `limit` timers due at or before `now`, earliest first.
    /// Atomic: of two replicas claiming at once, each timer goes to exactly one. A claimed
    /// timer is gone; if firing it fails, schedule it again.
    pub async fn claim_due(
        &self,
        queue: &str,
        now: SystemTime,
        limit: usize,
    ) -> BusResult<Vec<DueTimer>> {
        check_name("timer queue", queue)?;
        let (now, limit) = (ms_of(now), limit.max(1));
        match &self.backend {
            Backend::Memory(m) => Ok(m.claim_due(queue, now, limit)),
            Backend::Redis(r) => r.claim_due(queue, now, limit).await,
        }
    }
}

enum ConsumerInner {
    Memory(MemoryConsumer),
    Redis(RedisConsumer),
}

/// A member of a consumer group. Cheap to clone (clones are the same consumer), so acks
/// can be sent from the tasks that do the work.
///
/// Each partition is read by one member at a time (a lease per partition, see
/// [`crate::lease`]), so a key's entries reach the group in stream order whatever the
/// number of members. Ask for the next batch only once the previous one is settled:
/// partitions change hands between batches.
///
/// At-least-once: handle a batch, commit its effect, then [`Consumer::ack`]. Entries not
/// acked are delivered again to the partition's owner once idle for `reclaim_idle`, or
/// taken over first thing by the next owner if the owner died or left, with their
/// delivery count raised; after `max_deliveries` they go to the dead-letter stream.
#[derive(Clone)]
pub struct Consumer {
    inner: Arc<ConsumerInner>,
}

impl Consumer {
    /// The next entries for this consumer, from the partitions it owns: the previous
    /// owner's unacknowledged entries of a partition just taken first, then its own idle
    /// ones, then new ones. Waits up to `read_block` and returns an empty batch if nothing
    /// came, so the caller can check for shutdown.
    pub async fn next_batch(&self) -> BusResult<Vec<Delivery>> {
        match &*self.inner {
            ConsumerInner::Memory(c) => Ok(c.next_batch().await),
            ConsumerInner::Redis(c) => c.next_batch().await,
        }
    }

    /// The partitions this consumer owns as of its last batch.
    pub fn owned_partitions(&self) -> Vec<u32> {
        match &*self.inner {
            ConsumerInner::Memory(c) => c.owned_partitions(),
            ConsumerInner::Redis(c) => c.owned_partitions(),
        }
    }

    /// Leaves the group: gives up every partition at once, so the other members take them
    /// over at their next refresh instead of after `lease_ttl`. Settle what was delivered
    /// first; anything unacknowledged is taken over by the next owner.
    pub async fn leave(&self) -> BusResult<()> {
        match &*self.inner {
            ConsumerInner::Memory(c) => {
                c.leave();
                Ok(())
            }
            ConsumerInner::Redis(c) => c.leave().await,
        }
    }

    /// Acknowledges entries whose effect is committed; they will not be delivered again.
    pub async fn ack<'a>(
        &self,
        deliveries: impl IntoIterator<Item = &'a Delivery>,
    ) -> BusResult<()> {
        let items: Vec<(u32, EntryId)> = deliveries
            .into_iter()
            .map(|d| (d.partition, d.id))
            .collect();
        if items.is_empty() {
            return Ok(());
        }
        match &*self.inner {
            ConsumerInner::Memory(c) => {
                c.ack(&items);
                Ok(())
            }
            ConsumerInner::Redis(c) => c.ack(&items).await,
        }
    }

    /// Reports that handling `delivery` failed with `error`. It is retried after the idle
    /// threshold, or dead-lettered with `error` if it has had `max_deliveries` deliveries.
    pub async fn nack(&self, delivery: &Delivery, error: &str) -> BusResult<NackOutcome> {
        match &*self.inner {
            ConsumerInner::Memory(c) => Ok(c.nack(delivery.partition, delivery.id, error)),
            ConsumerInner::Redis(c) => c.nack(delivery.partition, delivery.id, error).await,
        }
    }
}

enum TailInner {
    Memory(MemoryTail),
    Redis(RedisTail),
}

/// Reads a stream from a cursor onwards, without a group: every reader sees every entry.
pub struct Tail {
    inner: TailInner,
}

impl Tail {
    /// The next entries after the cursor (up to `batch_size` per partition), waiting up to
    /// `read_block`; empty if nothing came. Advances the cursor.
    pub async fn next_batch(&mut self) -> BusResult<Vec<Delivery>> {
        match &mut self.inner {
            TailInner::Memory(t) => Ok(t.next_batch().await),
            TailInner::Redis(t) => t.next_batch().await,
        }
    }

    /// The position after the last entry returned; hand `to_string()` of it to clients to
    /// resume.
    pub fn cursor(&self) -> &Cursor {
        match &self.inner {
            TailInner::Memory(t) => t.cursor(),
            TailInner::Redis(t) => t.cursor(),
        }
    }
}
