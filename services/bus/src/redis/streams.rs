//! Streams on Redis: publish, consumer groups with reclaim and dead letters, tails,
//! trimming that respects groups, and stats.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use redis::Value;

use crate::clock::{millis_at_least_one, unix_ms};
use crate::cursor::Cursor;
use crate::entry::{Appended, DeadLetter, DeadLetterRef, Delivery, EntryId, Event, NackOutcome};
use crate::error::{BusError, BusResult};
use crate::lease::Ownership;
use crate::memory::lock;
use crate::state::{GroupInfo, Retention, StreamStats};

use super::reply::{self, event_fields, unexpected};
use super::{Conn, IdlePoll, RedisBackend, SharedRedis};

/// Most entries one trim call removes under a length limit: the script reads them, and a
/// partition far over its limit (a backlog at peak) must not stall Redis for everyone.
const TRIM_CHUNK: u64 = 2_000;

fn delivery(stream: &str, partition: u32, id: EntryId, event: Event, count: u64) -> Delivery {
    Delivery {
        stream: stream.to_owned(),
        partition,
        id,
        key: event.key,
        kind: event.kind,
        payload: event.payload,
        traceparent: event.traceparent,
        delivery_count: count,
    }
}

fn xadd(cmd: &mut redis::Cmd, key: &str, event: &Event) {
    cmd.arg(key).arg("*");
    for (name, value) in event_fields(event) {
        cmd.arg(name).arg(value);
    }
}

/// Maps XREAD/XREADGROUP replies back to partitions by stream key.
fn deliveries_of(v: &Value, stream: &str, keys: &[String], count: u64) -> BusResult<Vec<Delivery>> {
    let per_stream = reply::streams_of(v).ok_or_else(|| unexpected("a stream read"))?;
    let mut out = Vec::new();
    for (key, entries) in per_stream {
        let Some(p) = keys.iter().position(|k| k.as_bytes() == key.as_slice()) else {
            return Err(unexpected("a stream read (unknown key)"));
        };
        let partition = u32::try_from(p).unwrap_or(u32::MAX);
        out.extend(
            entries
                .into_iter()
                .map(|(id, event)| delivery(stream, partition, id, event, count)),
        );
    }
    Ok(out)
}

fn is_busygroup(e: &redis::RedisError) -> bool {
    e.code() == Some("BUSYGROUP")
}

fn is_nogroup(e: &redis::RedisError) -> bool {
    e.code() == Some("NOGROUP")
}

impl RedisBackend {
    pub(crate) async fn publish(
        &self,
        stream: &str,
        events: Vec<Event>,
    ) -> BusResult<Vec<Appended>> {
        let mut cmds = Vec::with_capacity(events.len());
        let mut partitions = Vec::with_capacity(events.len());
        for event in &events {
            let p = self.keys.partition_of(&event.key);
            partitions.push(p);
            let mut cmd = redis::cmd("XADD");
            xadd(&mut cmd, &self.keys.stream(stream, p), event);
            cmds.push((p, cmd));
        }
        let ids: Vec<String> = self
            .query_by_partition(cmds)
            .await
            .map_err(|e| self.fail(e, || format!("publish to stream {stream}")))?;
        let touched: BTreeSet<u32> = partitions.iter().copied().collect();
        for p in touched {
            self.confirm_replicated(p).await?;
        }
        partitions
            .into_iter()
            .zip(ids)
            .map(|(partition, id)| {
                Ok(Appended {
                    partition,
                    id: id.parse()?,
                })
            })
            .collect()
    }

    /// Creates `group` on every partition at the start of the stream; existing groups are
    /// kept (BUSYGROUP is success).
    pub(crate) async fn create_group(&self, stream: &str, group: &str) -> BusResult<()> {
        let mut conn = self.conn();
        for key in self.keys.stream_keys(stream) {
            let created: Result<Value, _> = redis::cmd("XGROUP")
                .arg("CREATE")
                .arg(&key)
                .arg(group)
                .arg("0")
                .arg("MKSTREAM")
                .query_async(&mut conn)
                .await;
            match created {
                Ok(_) => {}
                Err(e) if is_busygroup(&e) => {}
                Err(e) => {
                    return Err(self.fail(e, || format!("create group {group} on stream {stream}")));
                }
            }
        }
        Ok(())
    }

    pub(crate) async fn read_after(
        &self,
        stream: &str,
        cursor: &Cursor,
        limit: usize,
        block: Option<(Duration, &mut Conn)>,
    ) -> BusResult<Vec<Delivery>> {
        let keys = self.keys.stream_keys(stream);
        if self.is_cluster() {
            return self.read_after_each(stream, cursor, limit, &keys).await;
        }
        let mut cmd = redis::cmd("XREAD");
        cmd.arg("COUNT").arg(limit);
        if let Some((block, _)) = &block {
            cmd.arg("BLOCK").arg(millis_at_least_one(*block));
        }
        cmd.arg("STREAMS").arg(&keys);
        for p in 0..self.opts.partitions {
            cmd.arg(cursor.get(p).to_string());
        }
        let reply: Result<Value, _> = match block {
            Some((_, conn)) => cmd.query_async(conn).await,
            None => cmd.query_async(&mut self.conn()).await,
        };
        let reply = reply.map_err(|e| self.fail(e, || format!("read of stream {stream}")))?;
        deliveries_of(&reply, stream, &keys, 0)
    }

    /// [`RedisBackend::read_after`] without blocking, one `XREAD` per partition sent
    /// concurrently (on a cluster a read names keys of one slot).
    async fn read_after_each(
        &self,
        stream: &str,
        cursor: &Cursor,
        limit: usize,
        keys: &[String],
    ) -> BusResult<Vec<Delivery>> {
        let cmds = keys
            .iter()
            .enumerate()
            .map(|(p, key)| {
                let p = u32::try_from(p).unwrap_or(u32::MAX);
                let mut cmd = redis::cmd("XREAD");
                cmd.arg("COUNT")
                    .arg(limit)
                    .arg("STREAMS")
                    .arg(key)
                    .arg(cursor.get(p).to_string());
                (p, cmd)
            })
            .collect();
        let replies: Vec<Value> = self
            .query_by_partition(cmds)
            .await
            .map_err(|e| self.fail(e, || format!("read of stream {stream}")))?;
        let mut out = Vec::new();
        for reply in &replies {
            out.extend(deliveries_of(reply, stream, keys, 0)?);
        }
        Ok(out)
    }

    pub(crate) async fn end_cursor(&self, stream: &str) -> BusResult<Cursor> {
        let cmds = (0..self.opts.partitions)
            .map(|p| {
                let mut cmd = redis::cmd("XREVRANGE");
                cmd.arg(self.keys.stream(stream, p))
                    .arg("+")
                    .arg("-")
                    .arg("COUNT")
                    .arg(1);
                (p, cmd)
            })
            .collect();
        let replies: Vec<Value> = self
            .query_by_partition(cmds)
            .await
            .map_err(|e| self.fail(e, || format!("end cursor of stream {stream}")))?;
        let mut ids = Vec::with_capacity(replies.len());
        for r in &replies {
            let last = reply::entries_of(r).ok_or_else(|| unexpected("XREVRANGE"))?;
            ids.push(last.first().map_or(EntryId::ZERO, |(id, _, _)| *id));
        }
        Ok(Cursor::from_ids(ids))
    }

    pub(crate) async fn trim(&self, stream: &str, retention: &Retention) -> BusResult<u64> {
        let max_len = retention
            .max_len_per_partition
            .map(|n| n.to_string())
            .unwrap_or_default();
        let min_id = retention
            .max_age
            .map(|age| {
                let ms = u64::try_from(age.as_millis()).unwrap_or(u64::MAX);
                EntryId::new(unix_ms().saturating_sub(ms), 0).to_string()
            })
            .unwrap_or_default();
        let calls = (0..self.opts.partitions).map(|p| {
            let mut conn = self.conn();
            let mut inv = self.scripts.trim.prepare_invoke();
            inv.key(self.keys.stream(stream, p))
                .key(self.keys.trim_marker(stream, p))
                .arg(&max_len)
                .arg(&min_id)
                .arg(TRIM_CHUNK);
            async move {
                let mut removed = 0u64;
                loop {
                    let n = inv.invoke_async::<u64>(&mut conn).await?;
                    removed += n;
                    if n < TRIM_CHUNK {
                        return Ok::<u64, redis::RedisError>(removed);
                    }
                }
            }
        });
        let removed = futures::future::try_join_all(calls)
            .await
            .map_err(|e| self.fail(e, || format!("trim of stream {stream}")))?;
        Ok(removed.into_iter().sum())
    }

    pub(crate) async fn trimmed_past(&self, stream: &str, cursor: &Cursor) -> BusResult<bool> {
        let cmds = (0..self.opts.partitions)
            .map(|p| {
                let mut cmd = redis::cmd("GET");
                cmd.arg(self.keys.trim_marker(stream, p));
                (p, cmd)
            })
            .collect();
        let markers: Vec<Option<String>> = self
            .query_by_partition(cmds)
            .await
            .map_err(|e| self.fail(e, || format!("trim check of stream {stream}")))?;
        for (marker, seen) in markers.iter().zip(cursor.ids()) {
            let Some(marker) = marker else { continue };
            let removed: EntryId = marker.parse().map_err(|_| unexpected("trim marker"))?;
            if removed > *seen {
                return Ok(true);
            }
        }
        Ok(false)
    }

    pub(crate) async fn stats(&self, stream: &str, group: &str) -> BusResult<StreamStats> {
        let calls = (0..self.opts.partitions).map(|p| {
            let mut conn = self.conn();
            let mut inv = self.scripts.stats.prepare_invoke();
            inv.key(self.keys.stream(stream, p))
                .key(self.keys.dead_letters(stream, group, p))
                .key(self.keys.dead_total(stream, group, p))
                .arg(group);
            async move { inv.invoke_async::<Vec<u64>>(&mut conn).await }
        });
        let parts = futures::future::try_join_all(calls)
            .await
            .map_err(|e| self.fail(e, || format!("stats of stream {stream} group {group}")))?;
        let mut s = StreamStats::default();
        for part in parts {
            let [length, pending, undelivered, dead, total] = part[..] else {
                return Err(unexpected("stream stats"));
            };
            s.length += length;
            s.pending += pending;
            s.undelivered += undelivered;
            s.dead_letters += dead;
            s.dead_lettered_total += total;
        }
        s.backlog = s.pending + s.undelivered;
        Ok(s)
    }

    pub(crate) async fn groups(&self, stream: &str) -> BusResult<Vec<GroupInfo>> {
        let calls = (0..self.opts.partitions).map(|p| {
            let mut conn = self.conn();
            let mut inv = self.scripts.groups.prepare_invoke();
            inv.key(self.keys.stream(stream, p));
            async move { inv.invoke_async::<Vec<String>>(&mut conn).await }
        });
        let parts = futures::future::try_join_all(calls)
            .await
            .map_err(|e| self.fail(e, || format!("groups of stream {stream}")))?;
        let mut found: BTreeMap<String, GroupInfo> = BTreeMap::new();
        for part in parts {
            for row in part.chunks(3) {
                let [name, pending, undelivered] = row else {
                    return Err(unexpected("stream groups"));
                };
                let count =
                    |text: &str| text.parse::<u64>().map_err(|_| unexpected("stream groups"));
                let info = found.entry(name.clone()).or_insert_with(|| GroupInfo {
                    group: name.clone(),
                    ..GroupInfo::default()
                });
                info.pending += count(pending)?;
                info.undelivered += count(undelivered)?;
            }
        }
        for info in found.values_mut() {
            let group = info.group.as_str();
            let cmds = (0..self.opts.partitions)
                .map(|p| {
                    let mut cmd = redis::cmd("XLEN");
                    cmd.arg(self.keys.dead_letters(stream, group, p));
                    (p, cmd)
                })
                .collect();
            let dead: Vec<u64> = self.query_by_partition(cmds).await.map_err(|e| {
                self.fail(e, || {
                    format!("dead letters of stream {stream} group {group}")
                })
            })?;
            info.dead_letters = dead.into_iter().sum();
            info.readers = self
                .scripts
                .live_members
                .key(self.keys.lease_members(stream, group))
                .invoke_async(&mut self.conn())
                .await
                .map_err(|e| {
                    self.fail(e, || format!("readers of stream {stream} group {group}"))
                })?;
        }
        Ok(found.into_values().collect())
    }

    pub(crate) async fn drop_group(&self, stream: &str, group: &str) -> BusResult<bool> {
        let calls = (0..self.opts.partitions).map(|p| {
            let mut conn = self.conn();
            let mut inv = self.scripts.drop_group.prepare_invoke();
            inv.key(self.keys.stream(stream, p))
                .key(self.keys.dead_letters(stream, group, p))
                .key(self.keys.errors(stream, group, p))
                .key(self.keys.dead_total(stream, group, p))
                .arg(group);
            async move { inv.invoke_async::<u64>(&mut conn).await }
        });
        let dropped = futures::future::try_join_all(calls)
            .await
            .map_err(|e| self.fail(e, || format!("drop group {group} of stream {stream}")))?;
        // The leases' two keys share one slot (one hash tag).
        let _: u64 = redis::cmd("DEL")
            .arg(self.keys.lease_members(stream, group))
            .arg(self.keys.lease_owners(stream, group))
            .query_async(&mut self.conn())
            .await
            .map_err(|e| {
                self.fail(e, || {
                    format!("drop the leases of group {group} of stream {stream}")
                })
            })?;
        Ok(dropped.into_iter().any(|n| n > 0))
    }

    pub(crate) async fn dead_letters(
        &self,
        stream: &str,
        group: &str,
        limit: usize,
    ) -> BusResult<Vec<DeadLetter>> {
        let cmds = (0..self.opts.partitions)
            .map(|p| {
                let mut cmd = redis::cmd("XRANGE");
                cmd.arg(self.keys.dead_letters(stream, group, p))
                    .arg("-")
                    .arg("+")
                    .arg("COUNT")
                    .arg(limit);
                (p, cmd)
            })
            .collect();
        let replies: Vec<Value> = self
            .query_by_partition(cmds)
            .await
            .map_err(|e| self.fail(e, || format!("list dead letters of stream {stream}")))?;
        let mut out = Vec::new();
        for (p, r) in replies.iter().enumerate() {
            let partition = u32::try_from(p).unwrap_or(u32::MAX);
            for (id, event, dead) in reply::entries_of(r).ok_or_else(|| unexpected("XRANGE"))? {
                out.push(DeadLetter {
                    at: DeadLetterRef { partition, id },
                    stream: stream.to_owned(),
                    group: group.to_owned(),
                    source_id: dead.source_id.unwrap_or_default(),
                    delivery_count: dead.count,
                    error: dead.error,
                    dead_at_ms: dead.at_ms,
                    event,
                });
            }
        }
        out.sort_by_key(|d| (d.at.id, d.at.partition));
        out.truncate(limit);
        Ok(out)
    }

    pub(crate) async fn replay_dead_letters(
        &self,
        stream: &str,
        group: &str,
        refs: &[DeadLetterRef],
    ) -> BusResult<Vec<Appended>> {
        let mut out = Vec::new();
        for p in 0..self.opts.partitions {
            let ids: Vec<String> = refs
                .iter()
                .filter(|r| r.partition == p)
                .map(|r| r.id.to_string())
                .collect();
            if ids.is_empty() {
                continue;
            }
            let new_ids: Vec<String> = self
                .scripts
                .replay
                .key(self.keys.stream(stream, p))
                .key(self.keys.dead_letters(stream, group, p))
                .arg(ids)
                .invoke_async(&mut self.conn())
                .await
                .map_err(|e| self.fail(e, || format!("replay dead letters of stream {stream}")))?;
            for id in new_ids.into_iter().filter(|id| !id.is_empty()) {
                out.push(Appended {
                    partition: p,
                    id: id.parse()?,
                });
            }
        }
        Ok(out)
    }

    pub(crate) async fn delete_dead_letters(
        &self,
        stream: &str,
        group: &str,
        refs: &[DeadLetterRef],
    ) -> BusResult<u64> {
        let mut cmds = Vec::new();
        for p in 0..self.opts.partitions {
            let ids: Vec<String> = refs
                .iter()
                .filter(|r| r.partition == p)
                .map(|r| r.id.to_string())
                .collect();
            if !ids.is_empty() {
                let mut cmd = redis::cmd("XDEL");
                cmd.arg(self.keys.dead_letters(stream, group, p)).arg(ids);
                cmds.push((p, cmd));
            }
        }
        let removed: Vec<u64> = self
            .query_by_partition(cmds)
            .await
            .map_err(|e| self.fail(e, || format!("delete dead letters of stream {stream}")))?;
        Ok(removed.into_iter().sum())
    }
}

/// How often a consumer looks for idle entries to take over (see the memory backend).
fn reclaim_interval(idle: Duration) -> Duration {
    (idle / 2).max(Duration::from_millis(5))
}

/// A consumer of one group on Redis. Blocking reads go over its own connection so they
/// neither time out under the shared connection's response timeout nor hold it up; on a
/// cluster it reads without blocking (see [`IdlePoll`]).
pub(crate) struct RedisConsumer {
    backend: SharedRedis,
    /// `None` on a cluster.
    blocking: Option<Conn>,
    idle: Mutex<IdlePoll>,
    stream: String,
    group: String,
    name: String,
    keys: Vec<String>,
    ownership: Mutex<Ownership>,
    /// `None` = reclaim on the next call.
    last_reclaim: Mutex<Option<Instant>>,
    /// XAUTOCLAIM scan position per partition.
    reclaim_from: Mutex<Vec<String>>,
}

impl RedisConsumer {
    pub(crate) async fn new(
        backend: SharedRedis,
        stream: &str,
        group: &str,
        name: &str,
    ) -> BusResult<Self> {
        backend.create_group(stream, group).await?;
        let blocking = backend.blocking_conn()?;
        let keys = backend.keys.stream_keys(stream);
        let partitions = keys.len();
        Ok(RedisConsumer {
            blocking,
            idle: Mutex::new(IdlePoll::new()),
            stream: stream.to_owned(),
            group: group.to_owned(),
            name: name.to_owned(),
            keys,
            ownership: Mutex::new(Ownership::default()),
            last_reclaim: Mutex::new(None),
            reclaim_from: Mutex::new(vec!["0-0".to_owned(); partitions]),
            backend,
        })
    }

    fn during(&self, what: &str) -> impl FnOnce() -> String {
        let s = format!("{what} on stream {} group {}", self.stream, self.group);
        move || s
    }

    /// Runs the lease script: renews membership and leases (or gives them up when
    /// `leaving`) and returns the partitions held.
    async fn refresh_leases(&self, leaving: bool) -> BusResult<BTreeSet<u32>> {
        let b = &self.backend;
        let held: Vec<u32> = b
            .scripts
            .leases
            .key(b.keys.lease_members(&self.stream, &self.group))
            .key(b.keys.lease_owners(&self.stream, &self.group))
            .arg(&self.name)
            .arg(u64::try_from(b.opts.lease_ttl.as_millis()).unwrap_or(u64::MAX))
            .arg(b.opts.partitions)
            .arg(if leaving { "1" } else { "0" })
            .invoke_async(&mut b.conn())
            .await
            .map_err(|e| b.fail(e, self.during("partition leases")))?;
        Ok(held.into_iter().collect())
    }

    /// Renews membership and leases when due, and takes over the pending entries of
    /// partitions just taken; returns those entries (oldest first per partition).
    async fn own_partitions(&self) -> BusResult<Vec<Delivery>> {
        let ttl = self.backend.opts.lease_ttl;
        if lock(&self.ownership).due(Instant::now(), ttl) {
            let held = self.refresh_leases(false).await?;
            lock(&self.ownership).update(held, Instant::now(), &self.stream, &self.group);
        }
        let taking_over: Vec<(u32, EntryId)> = lock(&self.ownership)
            .taking_over
            .iter()
            .map(|(p, after)| (*p, *after))
            .collect();
        if taking_over.is_empty() {
            return Ok(Vec::new());
        }
        let (parts, starts): (Vec<u32>, Vec<String>) = taking_over
            .into_iter()
            .map(|(p, after)| (p, after.to_string()))
            .unzip();
        let (out, next) = self.reclaim(&parts, 0, &starts).await?;
        let mut ownership = lock(&self.ownership);
        for (p, next) in parts.into_iter().zip(next) {
            // XAUTOCLAIM answers 0-0 once it has scanned to the end.
            match next.parse::<EntryId>() {
                Ok(id) if id != EntryId::ZERO => {
                    ownership.taking_over.insert(p, id);
                }
                _ => {
                    ownership.taking_over.remove(&p);
                }
            }
        }
        Ok(out)
    }

    /// The partitions this consumer holds.
    pub(crate) fn owned_partitions(&self) -> Vec<u32> {
        lock(&self.ownership).owned.iter().copied().collect()
    }

    /// Gives up membership and every lease, so the others take over at their next refresh.
    pub(crate) async fn leave(&self) -> BusResult<()> {
        self.refresh_leases(true).await?;
        lock(&self.ownership).clear();
        Ok(())
    }

    /// Takes over entries of `parts` idle at least `idle_ms`, scanning each from its entry
    /// of `starts`; returns them and where each scan continues.
    async fn reclaim(
        &self,
        parts: &[u32],
        idle_ms: u64,
        starts: &[String],
    ) -> BusResult<(Vec<Delivery>, Vec<String>)> {
        let b = &self.backend;
        let opts = &b.opts;
        let now = unix_ms();
        let calls = parts.iter().zip(starts).map(|(&p, start)| {
            let mut conn = b.conn();
            let mut inv = b.scripts.reclaim.prepare_invoke();
            inv.key(b.keys.stream(&self.stream, p))
                .key(b.keys.dead_letters(&self.stream, &self.group, p))
                .key(b.keys.errors(&self.stream, &self.group, p))
                .key(b.keys.dead_total(&self.stream, &self.group, p))
                .arg(&self.group)
                .arg(&self.name)
                .arg(idle_ms)
                .arg(start)
                .arg(opts.batch_size)
                .arg(opts.max_deliveries)
                .arg(now);
            async move { inv.invoke_async::<Value>(&mut conn).await }
        });
        let replies = match futures::future::try_join_all(calls).await {
            Ok(r) => r,
            Err(e) if is_nogroup(&e) => {
                b.create_group(&self.stream, &self.group).await?;
                return Ok((Vec::new(), starts.to_vec()));
            }
            Err(e) => return Err(b.fail(e, self.during("reclaim"))),
        };
        let mut out = Vec::new();
        let mut next = Vec::with_capacity(replies.len());
        for (&partition, r) in parts.iter().zip(&replies) {
            let items = reply::items(r).ok_or_else(|| unexpected("reclaim"))?;
            let (first, rest) = items.split_first().ok_or_else(|| unexpected("reclaim"))?;
            next.push(reply::string_of(first).ok_or_else(|| unexpected("reclaim"))?);
            for triple in rest.chunks_exact(3) {
                let id = reply::id_of(&triple[0]).ok_or_else(|| unexpected("reclaim"))?;
                let count = reply::u64_of(&triple[1]).ok_or_else(|| unexpected("reclaim"))?;
                let (event, _) =
                    reply::event_of(&triple[2]).ok_or_else(|| unexpected("reclaim"))?;
                out.push(delivery(&self.stream, partition, id, event, count));
            }
        }
        Ok((out, next))
    }

    /// Redelivers this consumer's own entries idle past `reclaim_idle` (nacked, or not
    /// acknowledged by a handler that gave up), in the partitions it owns.
    async fn reclaim_idle(&self, owned: &[u32]) -> BusResult<Vec<Delivery>> {
        let starts: Vec<String> = {
            let from = lock(&self.reclaim_from);
            owned
                .iter()
                .map(|p| {
                    from.get(*p as usize)
                        .cloned()
                        .unwrap_or_else(|| "0-0".to_owned())
                })
                .collect()
        };
        let idle = millis_at_least_one(self.backend.opts.reclaim_idle);
        let (out, next) = self.reclaim(owned, idle, &starts).await?;
        let mut from = lock(&self.reclaim_from);
        for (p, next) in owned.iter().zip(next) {
            if let Some(slot) = from.get_mut(*p as usize) {
                *slot = next;
            }
        }
        Ok(out)
    }

    pub(crate) async fn next_batch(&self) -> BusResult<Vec<Delivery>> {
        let taken_over = self.own_partitions().await?;
        if !taken_over.is_empty() {
            return Ok(taken_over);
        }
        let opts = &self.backend.opts;
        let owned = self.owned_partitions();
        let next_refresh = lock(&self.ownership).next_refresh(opts.lease_ttl);
        if owned.is_empty() {
            // Nothing to read until a refresh hands this consumer a partition.
            let wait = opts
                .read_block
                .min(next_refresh.saturating_duration_since(Instant::now()));
            tokio::time::sleep(wait.max(Duration::from_millis(1))).await;
            return Ok(Vec::new());
        }
        let now = Instant::now();
        let interval = reclaim_interval(opts.reclaim_idle);
        let due = lock(&self.last_reclaim).is_none_or(|t| now >= t + interval);
        if due {
            let reclaimed = self.reclaim_idle(&owned).await?;
            // Found some: look again next call, there may be more.
            *lock(&self.last_reclaim) = (reclaimed.is_empty()).then_some(now);
            if !reclaimed.is_empty() {
                return Ok(reclaimed);
            }
        }
        let next_reclaim = lock(&self.last_reclaim).map_or(now, |t| t + interval);
        let block = opts
            .read_block
            .min(next_reclaim.saturating_duration_since(Instant::now()))
            .min(next_refresh.saturating_duration_since(Instant::now()))
            .max(Duration::from_millis(1));
        let Some(blocking) = &self.blocking else {
            return self.read_each(&owned, block).await;
        };
        let keys: Vec<&String> = owned.iter().map(|p| &self.keys[*p as usize]).collect();
        let mut cmd = redis::cmd("XREADGROUP");
        cmd.arg("GROUP")
            .arg(&self.group)
            .arg(&self.name)
            .arg("COUNT")
            .arg(opts.batch_size)
            .arg("BLOCK")
            .arg(millis_at_least_one(block))
            .arg("STREAMS")
            .arg(&keys);
        for _ in &keys {
            cmd.arg(">");
        }
        let mut conn = blocking.clone();
        match cmd.query_async::<Value>(&mut conn).await {
            Ok(v) => deliveries_of(&v, &self.stream, &self.keys, 1),
            Err(e) if is_nogroup(&e) => {
                // The server lost the group (restart without persistence): recreate it.
                self.backend.create_group(&self.stream, &self.group).await?;
                Ok(Vec::new())
            }
            Err(e) => Err(self.backend.fail(e, self.during("read"))),
        }
    }

    /// The read of a cluster consumer: new entries of each owned partition, one
    /// `XREADGROUP` per partition sent concurrently; when there are none, a pause of at
    /// most `block` before answering empty.
    async fn read_each(&self, owned: &[u32], block: Duration) -> BusResult<Vec<Delivery>> {
        let b = &self.backend;
        let cmds = owned
            .iter()
            .map(|&p| {
                let mut cmd = redis::cmd("XREADGROUP");
                cmd.arg("GROUP")
                    .arg(&self.group)
                    .arg(&self.name)
                    .arg("COUNT")
                    .arg(b.opts.batch_size)
                    .arg("STREAMS")
                    .arg(&self.keys[p as usize])
                    .arg(">");
                (p, cmd)
            })
            .collect();
        let replies: Vec<Value> = match b.query_by_partition(cmds).await {
            Ok(r) => r,
            Err(e) if is_nogroup(&e) => {
                b.create_group(&self.stream, &self.group).await?;
                return Ok(Vec::new());
            }
            Err(e) => return Err(b.fail(e, self.during("read"))),
        };
        let mut out = Vec::new();
        for reply in &replies {
            out.extend(deliveries_of(reply, &self.stream, &self.keys, 1)?);
        }
        let pause = lock(&self.idle).after(!out.is_empty());
        if let Some(pause) = pause {
            tokio::time::sleep(pause.min(block)).await;
        }
        Ok(out)
    }

    pub(crate) async fn ack(&self, items: &[(u32, EntryId)]) -> BusResult<()> {
        let b = &self.backend;
        let mut cmds = Vec::new();
        for p in 0..b.opts.partitions {
            let ids: Vec<String> = items
                .iter()
                .filter(|(ip, _)| *ip == p)
                .map(|(_, id)| id.to_string())
                .collect();
            if ids.is_empty() {
                continue;
            }
            let mut xack = redis::cmd("XACK");
            xack.arg(b.keys.stream(&self.stream, p))
                .arg(&self.group)
                .arg(&ids);
            let mut hdel = redis::cmd("HDEL");
            hdel.arg(b.keys.errors(&self.stream, &self.group, p))
                .arg(&ids);
            cmds.push((p, xack));
            cmds.push((p, hdel));
        }
        if cmds.is_empty() {
            return Ok(());
        }
        b.query_by_partition::<Value>(cmds)
            .await
            .map(|_| ())
            .map_err(|e| b.fail(e, self.during("ack")))
    }

    pub(crate) async fn nack(
        &self,
        partition: u32,
        id: EntryId,
        error: &str,
    ) -> BusResult<NackOutcome> {
        let b = &self.backend;
        if partition >= b.opts.partitions {
            return Ok(NackOutcome::NotOwner);
        }
        let outcome: String = b
            .scripts
            .nack
            .key(b.keys.stream(&self.stream, partition))
            .key(b.keys.dead_letters(&self.stream, &self.group, partition))
            .key(b.keys.errors(&self.stream, &self.group, partition))
            .key(b.keys.dead_total(&self.stream, &self.group, partition))
            .arg(&self.group)
            .arg(&self.name)
            .arg(id.to_string())
            .arg(error)
            .arg(b.opts.max_deliveries)
            .arg(unix_ms())
            .invoke_async(&mut b.conn())
            .await
            .map_err(|e| b.fail(e, self.during("nack")))?;
        match outcome.as_str() {
            "dead" => Ok(NackOutcome::DeadLettered),
            "retry" => Ok(NackOutcome::WillRetry),
            "not-owner" => Ok(NackOutcome::NotOwner),
            _ => Err(BusError::Backend(format!(
                "unexpected nack outcome {outcome:?}"
            ))),
        }
    }
}

/// A tail reader on Redis, with its own connection for blocking reads (none on a cluster,
/// where it reads without blocking and pauses between empty reads).
pub(crate) struct RedisTail {
    backend: SharedRedis,
    blocking: Option<Conn>,
    idle: IdlePoll,
    stream: String,
    cursor: Cursor,
}

impl RedisTail {
    pub(crate) fn new(backend: SharedRedis, stream: &str, cursor: Cursor) -> BusResult<Self> {
        let blocking = backend.blocking_conn()?;
        Ok(RedisTail {
            backend,
            blocking,
            idle: IdlePoll::new(),
            stream: stream.to_owned(),
            cursor,
        })
    }

    pub(crate) fn cursor(&self) -> &Cursor {
        &self.cursor
    }

    pub(crate) async fn next_batch(&mut self) -> BusResult<Vec<Delivery>> {
        let block = self.backend.opts.read_block;
        let batch = self
            .backend
            .read_after(
                &self.stream,
                &self.cursor,
                self.backend.opts.batch_size,
                self.blocking.as_mut().map(|conn| (block, conn)),
            )
            .await?;
        if self.blocking.is_none()
            && let Some(pause) = self.idle.after(!batch.is_empty())
        {
            tokio::time::sleep(pause.min(block)).await;
        }
        for d in &batch {
            self.cursor.advance(d.partition, d.id);
        }
        Ok(batch)
    }
}
