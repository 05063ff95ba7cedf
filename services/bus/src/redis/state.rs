//! Versioned state, idempotency keys and timers on Redis.

use std::time::Duration;

use bytes::Bytes;
use redis::Value;

use crate::clock::millis_at_least_one;
use crate::entry::{Appended, Event};
use crate::error::{BusError, BusResult};
use crate::state::{
    DueTimer, Expect, HistoryEntry, HistoryLookup, Idempotency, Staged, StatePage, StateRecord,
    StateWrite, Written, page_token, parse_page_token,
};

use super::RedisBackend;
use super::reply::{self, event_fields, unexpected};

/// Version field of a state hash; user fields are stored as `f:<name>`.
const VERSION_FIELD: &[u8] = b"_v";
const FIELD_PREFIX: &[u8] = b"f:";

fn record_of(v: &Value) -> BusResult<Option<StateRecord>> {
    let pairs = reply::pairs(v).ok_or_else(|| unexpected("HGETALL"))?;
    if pairs.is_empty() {
        return Ok(None);
    }
    let mut record = StateRecord::default();
    for (name, value) in pairs {
        let name = reply::bytes_of(name).ok_or_else(|| unexpected("HGETALL"))?;
        if name == VERSION_FIELD {
            record.version = reply::u64_of(value).ok_or_else(|| unexpected("HGETALL"))?;
        } else if let Some(field) = name.strip_prefix(FIELD_PREFIX) {
            let field = String::from_utf8(field.to_vec()).map_err(|_| unexpected("HGETALL"))?;
            let value = reply::bytes_of(value).ok_or_else(|| unexpected("HGETALL"))?;
            record.fields.insert(field, Bytes::copy_from_slice(value));
        }
    }
    Ok(Some(record))
}

/// A record's field as its state hash holds it.
fn prefixed(field: &str) -> Vec<u8> {
    let mut name = Vec::with_capacity(FIELD_PREFIX.len() + field.len());
    name.extend_from_slice(FIELD_PREFIX);
    name.extend_from_slice(field.as_bytes());
    name
}

fn expect_args(expect: Expect) -> (&'static str, u64) {
    match expect {
        Expect::Any => ("any", 0),
        Expect::Version(v) => ("eq", v),
    }
}

impl RedisBackend {
    pub(crate) async fn get_state(&self, ns: &str, key: &str) -> BusResult<Option<StateRecord>> {
        let v: Value = redis::cmd("HGETALL")
            .arg(self.keys.state(ns, key))
            .query_async(&mut self.conn())
            .await
            .map_err(|e| self.fail(e, || format!("read of state {ns}/{key}")))?;
        record_of(&v)
    }

    /// `HMGET` of the version and `fields`: the record's version with the fields it holds
    /// of those, or `None` when it does not exist.
    pub(crate) async fn get_state_fields<F: AsRef<str>>(
        &self,
        ns: &str,
        key: &str,
        fields: &[F],
    ) -> BusResult<Option<StateRecord>> {
        let mut cmd = redis::cmd("HMGET");
        cmd.arg(self.keys.state(ns, key)).arg(VERSION_FIELD);
        for field in fields {
            cmd.arg(prefixed(field.as_ref()));
        }
        let v: Value = cmd
            .query_async(&mut self.conn())
            .await
            .map_err(|e| self.fail(e, || format!("read of state {ns}/{key}")))?;
        let values = reply::items(&v).ok_or_else(|| unexpected("HMGET"))?;
        let Some((version, values)) = values.split_first() else {
            return Err(unexpected("HMGET"));
        };
        if matches!(version, Value::Nil) {
            return Ok(None);
        }
        let mut record = StateRecord {
            version: reply::u64_of(version).ok_or_else(|| unexpected("HMGET"))?,
            ..StateRecord::default()
        };
        for (field, value) in fields.iter().zip(values) {
            if matches!(value, Value::Nil) {
                continue;
            }
            let value = reply::bytes_of(value).ok_or_else(|| unexpected("HMGET"))?;
            record
                .fields
                .insert(field.as_ref().to_owned(), Bytes::copy_from_slice(value));
        }
        Ok(Some(record))
    }

    /// `HLEN` less the bookkeeping fields the hash holds (`_v`, `_h`, `_g`), in one
    /// round trip: constant time whatever the record's size.
    pub(crate) async fn count_state_fields(&self, ns: &str, key: &str) -> BusResult<u64> {
        let state = self.keys.state(ns, key);
        let mut pipe = redis::pipe();
        pipe.cmd("HLEN").arg(&state);
        pipe.cmd("HMGET").arg(&state).arg("_v").arg("_h").arg("_g");
        let (len, kept): (u64, Vec<Option<Vec<u8>>>) = pipe
            .query_async(&mut self.conn())
            .await
            .map_err(|e| self.fail(e, || format!("count of state {ns}/{key}")))?;
        let bookkeeping = kept.iter().filter(|f| f.is_some()).count() as u64;
        Ok(len.saturating_sub(bookkeeping))
    }

    pub(crate) async fn get_states<K: AsRef<str>>(
        &self,
        ns: &str,
        keys: &[K],
    ) -> BusResult<Vec<Option<StateRecord>>> {
        if keys.is_empty() {
            return Ok(Vec::new());
        }
        let cmds = keys
            .iter()
            .map(|key| {
                let key = key.as_ref();
                let mut cmd = redis::cmd("HGETALL");
                cmd.arg(self.keys.state(ns, key));
                (self.keys.partition_of(key), cmd)
            })
            .collect();
        let replies: Vec<Value> = self
            .query_by_partition(cmds)
            .await
            .map_err(|e| self.fail(e, || format!("read of {} states {ns}/…", keys.len())))?;
        replies.iter().map(record_of).collect()
    }

    pub(crate) async fn write_state(
        &self,
        write: StateWrite,
        publish: Option<(&str, Vec<Event>)>,
    ) -> BusResult<Written> {
        let p = self.keys.partition_of(&write.key);
        let mut written = self.write_states(p, vec![(write, publish)]).await?;
        written
            .pop()
            .unwrap_or_else(|| Err(unexpected("state write")))
    }

    /// Writes records of partition `p` in one script: each under its own version check,
    /// the whole batch atomically. Per record: the new version and the appended entry, or
    /// [`BusError::Conflict`].
    pub(crate) async fn write_states(
        &self,
        p: u32,
        writes: Vec<Staged<'_>>,
    ) -> BusResult<Vec<BusResult<Written>>> {
        if writes.is_empty() {
            return Ok(Vec::new());
        }
        let mut inv = self.scripts.write_states.prepare_invoke();
        inv.arg(writes.len());
        for (write, publish) in &writes {
            let (ns, key) = (&write.namespace, &write.key);
            let (mode, expected) = expect_args(write.expect);
            inv.key(self.keys.state(ns, key))
                .key(self.keys.state_index(ns, p));
            inv.arg(mode)
                .arg(expected)
                .arg(key.as_str())
                .arg(match (&write.group, write.listed) {
                    (_, false) => "0".to_owned(),
                    (None, true) => "1".to_owned(),
                    (Some(group), true) => format!("g{group}"),
                });
            let grouped = write.group.as_ref().filter(|_| write.listed);
            let reserved =
                1 + usize::from(write.history.is_some()) + usize::from(grouped.is_some());
            inv.arg(reserved + write.set.len()).arg("_v").arg("");
            if write.history.is_some() {
                inv.arg("_h").arg("");
            }
            if let Some(group) = grouped {
                inv.arg("_g").arg(group.as_str());
            }
            for (field, value) in &write.set {
                inv.arg(prefixed(field)).arg(value.as_ref());
            }
            inv.arg(write.remove.len());
            for field in &write.remove {
                inv.arg(prefixed(field));
            }
            match publish {
                Some((stream, events)) if !events.is_empty() => {
                    inv.key(self.keys.stream(stream, p));
                    inv.arg(events.len());
                    for event in events {
                        let fields = event_fields(event);
                        inv.arg(fields.len());
                        for (name, value) in fields {
                            inv.arg(name).arg(value);
                        }
                    }
                }
                _ => {
                    inv.arg(0);
                }
            }
            match &write.history {
                Some((field, entry, limits)) => {
                    inv.key(self.keys.history(ns, key))
                        .key(self.keys.legacy_history(ns, key));
                    inv.arg(1)
                        .arg(entry.at_us)
                        .arg(entry.version)
                        .arg(field.as_str())
                        .arg(limits.keep_since_us)
                        .arg(limits.max_versions.max(1));
                }
                None => {
                    inv.arg(0);
                }
            }
        }
        let reply: Value = inv.invoke_async(&mut self.conn()).await.map_err(|e| {
            self.fail(e, || match &writes[..] {
                [(w, _)] => format!("write of state {}/{}", w.namespace, w.key),
                many => format!("write of {} states in partition {p}", many.len()),
            })
        })?;
        let results = reply::items(&reply).ok_or_else(|| unexpected("state write"))?;
        if results.len() != writes.len() {
            return Err(unexpected("state write"));
        }
        self.confirm_replicated(p).await?;
        results
            .iter()
            .zip(&writes)
            .map(|(result, (write, _))| {
                let items = reply::items(result).ok_or_else(|| unexpected("state write"))?;
                let num = |i: usize| items.get(i).and_then(reply::u64_of);
                Ok(match (num(0), num(1)) {
                    (Some(1), Some(version)) => {
                        let appended = items[2..]
                            .iter()
                            .map(|id| {
                                Ok(Appended {
                                    partition: p,
                                    id: reply::id_of(id)
                                        .ok_or_else(|| unexpected("state write"))?,
                                })
                            })
                            .collect::<BusResult<Vec<_>>>()?;
                        Ok((version, appended))
                    }
                    (Some(0), Some(current)) => Err(BusError::Conflict {
                        key: format!("{}/{}", write.namespace, write.key),
                        expected: expect_args(write.expect).1,
                        current,
                    }),
                    _ => return Err(unexpected("state write")),
                })
            })
            .collect()
    }

    pub(crate) async fn history_at(
        &self,
        ns: &str,
        key: &str,
        at_us: i64,
    ) -> BusResult<HistoryLookup> {
        let reply: Value = self
            .scripts
            .history_at
            .key(self.keys.history(ns, key))
            .key(self.keys.state(ns, key))
            .key(self.keys.legacy_history(ns, key))
            .invoke_async(&mut self.conn())
            .await
            .map_err(|e| self.fail(e, || format!("history of state {ns}/{key}")))?;
        let bad = || unexpected("history read");
        let parts = reply::items(&reply).ok_or_else(bad)?;
        let [meta, current, superseded] = parts else {
            return if parts.is_empty() {
                Ok(HistoryLookup::default())
            } else {
                Err(bad())
            };
        };
        let bytes = |v: &Value| {
            reply::bytes_of(v)
                .map(Bytes::copy_from_slice)
                .ok_or_else(bad)
        };
        let mut versions = kept_versions(&bytes(superseded)?).ok_or_else(bad)?;
        let meta = bytes(meta)?;
        let (at, version) = std::str::from_utf8(&meta)
            .ok()
            .and_then(|m| {
                let mut parts = m.splitn(3, ',');
                Some((parts.next()?.parse().ok()?, parts.next()?.parse().ok()?))
            })
            .ok_or_else(bad)?;
        versions.push(HistoryEntry {
            at_us: at,
            version,
            payload: bytes(current)?,
        });
        Ok(HistoryLookup {
            oldest: versions.first().map(|e| (e.version, e.at_us)),
            found: versions.into_iter().rev().find(|e| e.at_us <= at_us),
        })
    }

    pub(crate) async fn delete_state(
        &self,
        ns: &str,
        key: &str,
        expect: Expect,
    ) -> BusResult<bool> {
        let (mode, expected) = expect_args(expect);
        let reply: Vec<u64> = self
            .scripts
            .delete_state
            .key(self.keys.state(ns, key))
            .key(self.keys.state_index(ns, self.keys.partition_of(key)))
            .key(self.keys.history(ns, key))
            .key(self.keys.legacy_history(ns, key))
            .arg(mode)
            .arg(expected)
            .arg(key)
            .invoke_async(&mut self.conn())
            .await
            .map_err(|e| self.fail(e, || format!("delete of state {ns}/{key}")))?;
        match reply[..] {
            [1, n] => Ok(n > 0),
            [0, current] => Err(BusError::Conflict {
                key: format!("{ns}/{key}"),
                expected,
                current,
            }),
            _ => Err(unexpected("state delete")),
        }
    }

    /// A page of `ns` (of its records listed under `group`, if given), ordered by
    /// partition and then index member: a group's records are one range of the
    /// partition's index (`<group>\0<key>`, see `WRITE_STATES`). A page token holds the
    /// last member read, less the group's prefix in a group scan.
    pub(crate) async fn scan_states(
        &self,
        ns: &str,
        group: Option<&str>,
        page: Option<&str>,
        limit: usize,
    ) -> BusResult<StatePage> {
        let (mut p, mut after) = match page {
            Some(token) => {
                let (p, key) = parse_page_token(token)?;
                (p, Some(key))
            }
            None => (0, None),
        };
        let prefix = group.map(|g| format!("{g}\0")).unwrap_or_default();
        let max = group.map_or("+".to_owned(), |g| format!("({g}\u{1}"));
        let mut conn = self.conn();
        let mut items = Vec::new();
        while p < self.opts.partitions && items.len() < limit {
            let want = limit - items.len();
            let min = match &after {
                Some(a) => format!("({prefix}{a}"),
                None if group.is_some() => format!("[{prefix}"),
                None => "-".to_owned(),
            };
            let members: Vec<String> = redis::cmd("ZRANGEBYLEX")
                .arg(self.keys.state_index(ns, p))
                .arg(min)
                .arg(&max)
                .arg("LIMIT")
                .arg(0)
                .arg(want)
                .query_async(&mut conn)
                .await
                .map_err(|e| self.fail(e, || format!("scan of state namespace {ns}")))?;
            let keys: Vec<&str> = members
                .iter()
                .map(|m| m.split_once('\0').map_or(m.as_str(), |(_, key)| key))
                .collect();
            if !keys.is_empty() {
                let mut pipe = redis::pipe();
                for k in &keys {
                    pipe.cmd("HGETALL").arg(self.keys.state(ns, k));
                }
                let records: Vec<Value> = pipe
                    .query_async(&mut conn)
                    .await
                    .map_err(|e| self.fail(e, || format!("scan of state namespace {ns}")))?;
                for (k, r) in keys.iter().zip(&records) {
                    if let Some(record) = record_of(r)? {
                        items.push(((*k).to_owned(), record));
                    }
                }
            }
            if members.len() < want {
                p += 1;
                after = None;
            } else {
                after = members.last().map(|m| m[prefix.len()..].to_owned());
            }
        }
        let next =
            (p < self.opts.partitions).then(|| page_token(p, after.as_deref().unwrap_or("")));
        Ok(StatePage { items, next })
    }

    pub(crate) async fn idempotency_begin(
        &self,
        scope: &str,
        key: &str,
        owner: &str,
        ttl: Duration,
    ) -> BusResult<Idempotency> {
        let reply: Value = self
            .scripts
            .idempotency_begin
            .key(self.keys.idempotency(scope, key))
            .arg(millis_at_least_one(ttl))
            .arg(owner)
            .invoke_async(&mut self.conn())
            .await
            .map_err(|e| self.fail(e, || format!("idempotency key {scope}/{key}")))?;
        let items = reply::items(&reply).ok_or_else(|| unexpected("idempotency begin"))?;
        match items.first().and_then(reply::bytes_of) {
            Some(b"new") => Ok(Idempotency::New),
            Some(b"progress") => Ok(Idempotency::InProgress),
            Some(b"done") => {
                let outcome = items.get(1).and_then(reply::bytes_of).unwrap_or_default();
                Ok(Idempotency::Done(Bytes::copy_from_slice(outcome)))
            }
            _ => Err(unexpected("idempotency begin")),
        }
    }

    pub(crate) async fn idempotency_renew(
        &self,
        scope: &str,
        key: &str,
        owner: &str,
        ttl: Duration,
    ) -> BusResult<bool> {
        self.scripts
            .idempotency_renew
            .key(self.keys.idempotency(scope, key))
            .arg(millis_at_least_one(ttl))
            .arg(owner)
            .invoke_async::<i64>(&mut self.conn())
            .await
            .map(|held| held == 1)
            .map_err(|e| self.fail(e, || format!("idempotency key {scope}/{key}")))
    }

    pub(crate) async fn idempotency_complete(
        &self,
        scope: &str,
        key: &str,
        owner: &str,
        outcome: Bytes,
        ttl: Duration,
    ) -> BusResult<bool> {
        self.scripts
            .idempotency_complete
            .key(self.keys.idempotency(scope, key))
            .arg(millis_at_least_one(ttl))
            .arg(owner)
            .arg(outcome.as_ref())
            .invoke_async::<i64>(&mut self.conn())
            .await
            .map(|stored| stored == 1)
            .map_err(|e| self.fail(e, || format!("idempotency key {scope}/{key}")))
    }

    pub(crate) async fn idempotency_release(
        &self,
        scope: &str,
        key: &str,
        owner: &str,
    ) -> BusResult<()> {
        self.scripts
            .idempotency_release
            .key(self.keys.idempotency(scope, key))
            .arg(owner)
            .invoke_async::<i64>(&mut self.conn())
            .await
            .map(|_| ())
            .map_err(|e| self.fail(e, || format!("idempotency key {scope}/{key}")))
    }

    pub(crate) async fn schedule<M: AsRef<str>>(
        &self,
        queue: &str,
        timers: &[(M, std::time::SystemTime)],
    ) -> BusResult<()> {
        let mut zadd = redis::cmd("ZADD");
        zadd.arg(self.keys.timers(queue));
        for (member, due_at) in timers {
            zadd.arg(crate::clock::ms_of(*due_at)).arg(member.as_ref());
        }
        zadd.query_async::<()>(&mut self.conn())
            .await
            .map_err(|e| self.fail(e, || format!("schedule on timer queue {queue}")))
    }

    pub(crate) async fn cancel(&self, queue: &str, member: &str) -> BusResult<bool> {
        redis::cmd("ZREM")
            .arg(self.keys.timers(queue))
            .arg(member)
            .query_async::<u64>(&mut self.conn())
            .await
            .map(|n| n > 0)
            .map_err(|e| self.fail(e, || format!("cancel on timer queue {queue}")))
    }

    pub(crate) async fn claim_due(
        &self,
        queue: &str,
        now_ms: u64,
        limit: usize,
    ) -> BusResult<Vec<DueTimer>> {
        let flat: Vec<String> = self
            .scripts
            .claim_due
            .key(self.keys.timers(queue))
            .arg(now_ms)
            .arg(limit)
            .invoke_async(&mut self.conn())
            .await
            .map_err(|e| self.fail(e, || format!("claim on timer queue {queue}")))?;
        flat.chunks_exact(2)
            .map(|c| {
                let due: f64 = c[1].parse().map_err(|_| unexpected("timer claim"))?;
                Ok(DueTimer {
                    member: c[0].clone(),
                    due_at_ms: due as u64,
                })
            })
            .collect()
    }
}

/// A history member: the version big-endian (so versions of one instant sort by version)
/// followed by the payload.
/// Decodes the superseded versions of a history key: `<from µs>,<version>,<length>:<payload>`
/// each, oldest first (see `WRITE_STATES`).
fn kept_versions(blob: &Bytes) -> Option<Vec<HistoryEntry>> {
    let mut out = Vec::new();
    let mut pos = 0;
    while pos < blob.len() {
        let colon = pos + blob[pos..].iter().position(|b| *b == b':')?;
        let head = std::str::from_utf8(&blob[pos..colon]).ok()?;
        let mut fields = head.split(',');
        let at_us = fields.next()?.parse().ok()?;
        let version = fields.next()?.parse().ok()?;
        let len: usize = fields.next()?.parse().ok()?;
        let end = colon.checked_add(1 + len).filter(|e| *e <= blob.len())?;
        out.push(HistoryEntry {
            at_us,
            version,
            payload: blob.slice(colon + 1..end),
        });
        pos = end;
    }
    Some(out)
}
