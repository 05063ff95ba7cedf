//! The Lua scripts that make multi-key operations atomic. Each runs on keys of one hash
//! slot (see `keys.rs`), so they stay valid on Redis Cluster.

use redis::Script;

/// Moves pending entry `id` to the dead-letter stream with its error, acks it and counts it.
/// `fields` may be nil; then the entry is read from the stream.
const DEAD_LETTER_FN: &str = r#"
local function dead_letter(stream, dlq, errs, total, group, id, count, err, now, fields)
  if not fields then
    local e = redis.call('XRANGE', stream, id, id)
    if e[1] then fields = e[1][2] end
  end
  if fields then
    local args = {dlq, '*', 'src', id, 'n', count, 'err', err, 'at', now}
    for i = 1, #fields do args[#args + 1] = fields[i] end
    redis.call('XADD', unpack(args))
    redis.call('INCR', total)
  end
  redis.call('XACK', stream, group, id)
  redis.call('HDEL', errs, id)
end
"#;

/// KEYS: stream, dlq, errors, dead total.
/// ARGV: group, consumer, min idle ms, start id, count, max deliveries, now ms.
/// Returns `{next_start, id, count, fields, id, count, fields, ...}`.
const RECLAIM: &str = r#"
local r = redis.call('XAUTOCLAIM', KEYS[1], ARGV[1], ARGV[2], ARGV[3], ARGV[4], 'COUNT', ARGV[5])
local out = {r[1]}
local max = tonumber(ARGV[6])
for _, e in ipairs(r[2]) do
  local id, fields = e[1], e[2]
  if fields then
    local p = redis.call('XPENDING', KEYS[1], ARGV[1], id, id, 1)
    local count = 1
    if p[1] then count = tonumber(p[1][4]) end
    if count > max then
      local err = redis.call('HGET', KEYS[3], id) or 'not acknowledged within the reclaim idle threshold'
      dead_letter(KEYS[1], KEYS[2], KEYS[3], KEYS[4], ARGV[1], id, count - 1, err, ARGV[7], fields)
    else
      out[#out + 1] = id
      out[#out + 1] = count
      out[#out + 1] = fields
    end
  end
end
return out
"#;

/// The lease rule of `crate::lease::LeaseBook::refresh`, on the group's member zset and
/// lease hash, with the server's clock (replicas' clocks may differ).
/// KEYS: members, owners. ARGV: me, ttl ms, partitions, leaving (1/0).
/// Returns the partitions `me` holds.
const LEASES: &str = r#"
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local me, ttl, n = ARGV[1], tonumber(ARGV[2]), tonumber(ARGV[3])
local leaving = ARGV[4] == '1'
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', now)
if leaving then
  redis.call('ZREM', KEYS[1], me)
else
  redis.call('ZADD', KEYS[1], now + ttl, me)
end
redis.call('PEXPIRE', KEYS[1], ttl * 4)
local live = redis.call('ZRANGE', KEYS[1], 0, -1)
table.sort(live)
local held = {}
for p = 0, n - 1 do
  local wanted = (not leaving) and #live > 0 and live[(p % #live) + 1] == me
  local cur = redis.call('HGET', KEYS[2], p)
  local owner, expiry = nil, 0
  if cur then
    local bar = string.find(cur, '|', 1, true)
    owner = string.sub(cur, 1, bar - 1)
    expiry = tonumber(string.sub(cur, bar + 1))
  end
  local free = (not cur) or expiry <= now
  if wanted then
    if free or owner == me then
      redis.call('HSET', KEYS[2], p, me .. '|' .. (now + ttl))
      held[#held + 1] = p
    end
  elseif owner == me and not free then
    redis.call('HDEL', KEYS[2], p)
  end
end
if #held > 0 then redis.call('PEXPIRE', KEYS[2], ttl * 4) end
return held
"#;

/// KEYS: stream, dlq, errors, dead total.
/// ARGV: group, consumer, id, error, max deliveries, now ms.
const NACK: &str = r#"
local p = redis.call('XPENDING', KEYS[1], ARGV[1], ARGV[3], ARGV[3], 1)
if not p[1] or p[1][2] ~= ARGV[2] then return 'not-owner' end
local count = tonumber(p[1][4])
if count >= tonumber(ARGV[5]) then
  dead_letter(KEYS[1], KEYS[2], KEYS[3], KEYS[4], ARGV[1], ARGV[3], count, ARGV[4], ARGV[6], nil)
  return 'dead'
end
redis.call('HSET', KEYS[3], ARGV[3], ARGV[4])
return 'retry'
"#;

/// KEYS: stream, dlq. ARGV: dead-letter ids. Returns the new ids ('' for unknown ids).
const REPLAY: &str = r#"
local out = {}
for i = 1, #ARGV do
  local e = redis.call('XRANGE', KEYS[2], ARGV[i], ARGV[i])
  if e[1] then
    local f = e[1][2]
    local args = {KEYS[1], '*'}
    for j = 1, #f, 2 do
      local n = f[j]
      if n == 'k' or n == 'p' or n == 't' or n == 'tp' then
        args[#args + 1] = n
        args[#args + 1] = f[j + 1]
      end
    end
    out[#out + 1] = redis.call('XADD', unpack(args))
    redis.call('XDEL', KEYS[2], ARGV[i])
  else
    out[#out + 1] = ''
  end
end
return out
"#;

/// KEYS: stream, dlq, dead total. ARGV: group.
/// Returns `{length, pending, undelivered, dead letters, dead total}`.
const STATS: &str = r#"
local len = redis.call('XLEN', KEYS[1])
local dlq = redis.call('XLEN', KEYS[2])
local total = tonumber(redis.call('GET', KEYS[3]) or '0')
local pending, undelivered = 0, len
if redis.call('EXISTS', KEYS[1]) == 1 then
  for _, g in ipairs(redis.call('XINFO', 'GROUPS', KEYS[1])) do
    local info = {}
    for i = 1, #g, 2 do info[g[i]] = g[i + 1] end
    if info['name'] == ARGV[1] then
      pending = info['pending']
      if info['lag'] then
        undelivered = info['lag']
      else
        undelivered = #redis.call('XRANGE', KEYS[1], '(' .. info['last-delivered-id'], '+')
      end
    end
  end
end
return {len, pending, undelivered, dlq, total}
"#;

/// KEYS: stream. Returns `{name, pending, undelivered, ...}` for every group of the
/// stream (counts as decimal strings, which `tostring` would write in exponent form once
/// large); nothing for a stream that does not exist.
const GROUPS: &str = r#"
if redis.call('EXISTS', KEYS[1]) == 0 then return {} end
local out = {}
for _, g in ipairs(redis.call('XINFO', 'GROUPS', KEYS[1])) do
  local info = {}
  for i = 1, #g, 2 do info[g[i]] = g[i + 1] end
  local lag = info['lag']
  if not lag then
    lag = #redis.call('XRANGE', KEYS[1], '(' .. info['last-delivered-id'], '+')
  end
  out[#out + 1] = info['name']
  out[#out + 1] = string.format('%d', info['pending'])
  out[#out + 1] = string.format('%d', lag)
end
return out
"#;

/// KEYS: stream, dlq, errors, dead total. ARGV: group.
/// Destroys the group on this partition with its dead letters and errors. Returns 1 if
/// the group existed, else 0 (a missing stream or group is not an error).
const DROP_GROUP: &str = r#"
local dropped = 0
if redis.call('EXISTS', KEYS[1]) == 1 then
  dropped = redis.call('XGROUP', 'DESTROY', KEYS[1], ARGV[1])
end
redis.call('DEL', KEYS[2], KEYS[3], KEYS[4])
return dropped
"#;

/// KEYS: the group's lease members. Returns the members whose lease has not lapsed, by
/// the server's clock (the one the lease rule uses).
const LIVE_MEMBERS: &str = r#"
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
return redis.call('ZCOUNT', KEYS[1], '(' .. now, '+inf')
"#;

/// KEYS: stream, trim marker. ARGV: max length ('' = none), min id from max age ('' = none),
/// most entries the length rule may remove in this call.
/// Trims to the policy but never past what a group still needs, and records the newest id
/// removed in the marker (readers without a group learn from it that they missed
/// entries). Returns entries removed. The length rule reads the entries it removes, so it
/// is bounded per call: the caller repeats while a call removed its whole bound, and Redis
/// serves other clients in between.
const TRIM: &str = r#"
if redis.call('EXISTS', KEYS[1]) == 0 then return 0 end
local function parse(id)
  local d = string.find(id, '-', 1, true)
  return tonumber(string.sub(id, 1, d - 1)), tonumber(string.sub(id, d + 1))
end
local function less(a, b)
  local am, as = parse(a)
  local bm, bs = parse(b)
  return am < bm or (am == bm and as < bs)
end
local function succ(id)
  local m, s = parse(id)
  return string.format('%.0f-%.0f', m, s + 1)
end
local target = nil
if ARGV[1] ~= '' then
  local len = redis.call('XLEN', KEYS[1])
  local maxlen = tonumber(ARGV[1])
  if len > maxlen then
    local r = redis.call('XRANGE', KEYS[1], '-', '+', 'COUNT', math.min(len - maxlen, tonumber(ARGV[3])))
    target = succ(r[#r][1])
  end
end
if ARGV[2] ~= '' and (target == nil or less(target, ARGV[2])) then target = ARGV[2] end
if target == nil then return 0 end
for _, g in ipairs(redis.call('XINFO', 'GROUPS', KEYS[1])) do
  local info = {}
  for i = 1, #g, 2 do info[g[i]] = g[i + 1] end
  local floor = succ(info['last-delivered-id'])
  if info['pending'] > 0 then
    floor = redis.call('XPENDING', KEYS[1], info['name'])[2]
  end
  if less(floor, target) then target = floor end
end
local newest = redis.call('XREVRANGE', KEYS[1], '(' .. target, '-', 'COUNT', 1)
local removed = redis.call('XTRIM', KEYS[1], 'MINID', target)
if removed > 0 and newest[1] then redis.call('SET', KEYS[2], newest[1][1]) end
return removed
"#;

/// Writes a batch of state records of one partition (one slot), each with its own version
/// check: a record whose check fails is left as it is and reported, the others are
/// written. Each record's write, append and history entry happen together, and the whole
/// batch is one atomic step.
///
/// ARGV[1] is the number of records; then per record, with its keys taken in order from
/// KEYS: state hash and state index (always), stream (only when publishing), history and
/// the key's history in the earlier layout (only when keeping a version).
/// ARGV per record: mode ('any'|'eq'), expected version, key, listed ('0': a record
/// this write creates goes into no index; '1': into the index; 'g' .. group: into the
/// index under that group, moving a listed record from the group it was in); n set, then
/// (hash field, value)×n: `_v` (any value: the new version replaces it), `_h` when keeping
/// a version (any value: the history marker replaces it), `_g` and the group when listing
/// under one, then the record's fields as `f:<name>`; n remove, `f:<name>`×n; n events,
/// then per event: n fields, (name, value)×n; n history (0|1), then for 1: from when (µs),
/// version, kept field (its name without `f:`), horizon (µs), max versions.
///
/// History: the state hash's `_h` holds `<from µs>,<version>,<n>,<oldest from µs>,<field>`
/// of the current version, whose payload is the field itself (the oldest version's start
/// tells whether the horizon can drop anything without reading the versions); the history
/// key is a string of the `n` superseded versions, oldest first, each
/// `<from µs>,<version>,<length>:<payload>`. A
/// kept write appends the current version to it, becomes the current one, and drops
/// versions from the front: beyond max versions (the current counts), or superseded
/// before the horizon (the one current at it stays). A key kept in the earlier layout (a
/// sorted set of 8-byte big-endian version ‖ payload, scored by from µs) is moved into
/// the string on its next kept write.
/// Index: the state index is a sorted set of members with score 0, ordered by member:
/// the key of an ungrouped record, `<group>\0<key>` of a grouped one, whose group the
/// hash's `_g` holds, so a group's records are one range of it.
///
/// Returns per record `{1, version, id...}` (the appended ids in order) or
/// `{0, current version}`.
const WRITE_STATES: &str = r#"
local function keep(state, hk, lk, meta, at, ver, field, horizon, maxv)
  local n, oldest = 0, at
  if meta then
    local ma, mv, mc, mo, mf = string.match(meta, '^(-?%d+),(%d+),(%d+),(-?%d+),(.*)$')
    local old = redis.call('HGET', state, 'f:' .. mf) or ''
    local entry = ma .. ',' .. mv .. ',' .. #old .. ':' .. old
    n = tonumber(mc)
    if n > 0 then
      redis.call('APPEND', hk, entry)
    else
      mo = ma
      redis.call('SET', hk, entry)
    end
    n, oldest = n + 1, mo
  else
    local z = redis.call('ZRANGE', lk, 0, -1, 'WITHSCORES')
    if #z > 0 then
      redis.call('SET', hk, legacy_entries(z, #z))
      redis.call('DEL', lk)
      n, oldest = #z / 2, z[2]
    end
  end
  -- A limit can only bite when there are more versions than kept, or the oldest began
  -- before the horizon (versions grow with their start, so otherwise none was superseded
  -- before it).
  if n > 0 and (n + 1 > maxv or tonumber(oldest) < horizon) then
    local drop = 0
    while n > 0 do
      local head = redis.call('GETRANGE', hk, drop, drop + 63)
      local a, _, l, p = string.match(head, '^(-?%d+),(%d+),(%d+):()')
      local size = p - 1 + tonumber(l)
      oldest = a
      local next_at = at
      if n > 1 then
        next_at = string.match(redis.call('GETRANGE', hk, drop + size, drop + size + 31), '^(-?%d+),')
      end
      if n + 1 > maxv or tonumber(next_at) < horizon then
        drop = drop + size
        n = n - 1
        oldest = next_at
      else
        break
      end
    end
    if n == 0 then
      redis.call('DEL', hk)
    elseif drop > 0 then
      redis.call('SET', hk, redis.call('GETRANGE', hk, drop, -1))
    end
  end
  return at .. ',' .. ver .. ',' .. n .. ',' .. oldest .. ',' .. field
end
local out = {}
local k, i = 1, 2
for r = 1, tonumber(ARGV[1]) do
  local state, index = KEYS[k], KEYS[k + 1]
  k = k + 2
  local mode, expected, key, listed = ARGV[i], tonumber(ARGV[i + 1]), ARGV[i + 2], ARGV[i + 3]
  i = i + 4
  -- The fields to set are one slice of ARGV, passed to HSET as it is: `_v` first, then
  -- `_h` when keeping a version and `_g` when listing under a group (their values are
  -- filled in below), then the record's fields, already prefixed.
  local nset = tonumber(ARGV[i])
  local set_from = i + 1
  i = set_from + 2 * nset
  local nrem = tonumber(ARGV[i])
  local rem_from = i + 1
  i = rem_from + nrem
  local nev = tonumber(ARGV[i])
  local ev_from = i + 1
  i = ev_from
  local stream
  if nev > 0 then
    stream = KEYS[k]
    k = k + 1
    for _ = 1, nev do i = i + 1 + 2 * tonumber(ARGV[i]) end
  end
  local nh = tonumber(ARGV[i]); i = i + 1
  local hk, lk, h = nil, nil, i
  if nh > 0 then
    hk, lk = KEYS[k], KEYS[k + 1]
    k = k + 2
    i = i + 5
  end
  local group
  if string.byte(listed, 1) == 103 then group = string.sub(listed, 2) end
  local cur, meta, held
  if hk or group then
    local vm = redis.call('HMGET', state, '_v', '_h', '_g')
    cur, meta, held = tonumber(vm[1] or '0'), vm[2], vm[3]
  else
    cur = tonumber(redis.call('HGET', state, '_v') or '0')
  end
  if mode == 'eq' and cur ~= expected then
    out[r] = {0, cur}
  else
    -- Append first: it is the step that can fail, and nothing of this record is
    -- written before it.
    local ok = {1, 0}
    local j = ev_from
    for e = 1, nev do
      local nf = tonumber(ARGV[j])
      ok[e + 2] = redis.call('XADD', stream, '*', unpack(ARGV, j + 1, j + 2 * nf))
      j = j + 1 + 2 * nf
    end
    if hk then
      ARGV[set_from + 3] = keep(state, hk, lk, meta, ARGV[h], ARGV[h + 1], ARGV[h + 2],
        tonumber(ARGV[h + 3]), tonumber(ARGV[h + 4]))
    end
    if cur == 0 and listed ~= '0' then
      if group then
        redis.call('ZADD', index, 0, group .. '\0' .. key)
      else
        redis.call('ZADD', index, 0, key)
      end
    elseif group and held ~= group then
      -- Moves a listed record to its new group; a record created unlisted is in no index
      -- (and keeps the group only as a field).
      local was = key
      if held then was = held .. '\0' .. key end
      if redis.call('ZREM', index, was) == 1 then
        redis.call('ZADD', index, 0, group .. '\0' .. key)
      end
    end
    if nrem > 0 then redis.call('HDEL', state, unpack(ARGV, rem_from, rem_from + nrem - 1)) end
    local v = cur + 1
    ARGV[set_from + 1] = v
    redis.call('HSET', state, unpack(ARGV, set_from, set_from + 2 * nset - 1))
    ok[2] = v
    out[r] = ok
  end
end
return out
"#;

/// KEYS: state hash, state index, history, history in the earlier layout. ARGV: mode,
/// expected version, key. The record's kept versions and its index member (of its group,
/// if any) go with it.
const DELETE_STATE: &str = r#"
local vg = redis.call('HMGET', KEYS[1], '_v', '_g')
local cur = tonumber(vg[1] or '0')
if ARGV[1] == 'eq' and cur ~= tonumber(ARGV[2]) then return {0, cur} end
local n = redis.call('DEL', KEYS[1])
redis.call('DEL', KEYS[3], KEYS[4])
local member = ARGV[3]
if vg[2] then member = vg[2] .. '\0' .. member end
redis.call('ZREM', KEYS[2], member)
return {1, n}
"#;

/// KEYS: history, state hash, the key's history in the earlier layout. Returns `{}` when
/// nothing is kept, else `{current's `_h`, its payload, superseded versions}` in the
/// layout `WRITE_STATES` describes (a key still in the earlier layout is answered in the
/// same form).
const HISTORY_AT: &str = r#"
local meta = redis.call('HGET', KEYS[2], '_h')
if meta then
  local field = string.match(meta, '^[^,]*,[^,]*,[^,]*,[^,]*,(.*)$')
  return {meta, redis.call('HGET', KEYS[2], 'f:' .. field) or '', redis.call('GET', KEYS[1]) or ''}
end
local z = redis.call('ZRANGE', KEYS[3], 0, -1, 'WITHSCORES')
if #z == 0 then return {} end
local last = z[#z - 1]
return {z[#z] .. ',' .. legacy_version(last) .. ',0,' .. z[#z] .. ',', string.sub(last, 9), legacy_entries(z, #z - 2)}
"#;

/// Reading the earlier history layout: a member's 8-byte big-endian version as decimal,
/// and the first `upto` items of a `ZRANGE ... WITHSCORES` reply as history entries.
const LEGACY_HISTORY_FN: &str = r#"
local function legacy_version(member)
  local v = 0
  for j = 1, 8 do v = v * 256 + string.byte(member, j) end
  return string.format('%.0f', v)
end
local function legacy_entries(z, upto)
  local parts = {}
  for j = 1, upto, 2 do
    local payload = string.sub(z[j], 9)
    parts[#parts + 1] = z[j + 1] .. ',' .. legacy_version(z[j]) .. ',' .. #payload .. ':' .. payload
  end
  return table.concat(parts)
end
"#;

/// An idempotency key holds `'p' .. owner` while an attempt is in progress and
/// `'d' .. outcome` once it completed.
///
/// KEYS: idempotency key. ARGV: ttl ms, owner.
/// Returns `{'new'}`, `{'progress'}` or `{'done', outcome}`.
const IDEMPOTENCY_BEGIN: &str = r#"
local v = redis.call('GET', KEYS[1])
if not v then
  redis.call('SET', KEYS[1], 'p' .. ARGV[2], 'PX', ARGV[1])
  return {'new'}
end
if string.sub(v, 1, 1) == 'p' then return {'progress'} end
return {'done', string.sub(v, 2)}
"#;

/// KEYS: idempotency key. ARGV: ttl ms, owner. Extends the key only while `owner` holds
/// it. Returns 1 when extended, 0 when not held.
const IDEMPOTENCY_RENEW: &str = r#"
if redis.call('GET', KEYS[1]) == 'p' .. ARGV[2] then
  redis.call('PEXPIRE', KEYS[1], ARGV[1])
  return 1
end
return 0
"#;

/// KEYS: idempotency key. ARGV: ttl ms, owner, outcome. Stores the outcome when `owner`
/// holds the key or nobody does. Returns 1 when stored, 0 when another attempt has it.
const IDEMPOTENCY_COMPLETE: &str = r#"
local v = redis.call('GET', KEYS[1])
if v and v ~= 'p' .. ARGV[2] then return 0 end
redis.call('SET', KEYS[1], 'd' .. ARGV[3], 'PX', ARGV[1])
return 1
"#;

/// KEYS: idempotency key. ARGV: owner. Deletes it only while `owner` holds it.
const IDEMPOTENCY_RELEASE: &str = r#"
if redis.call('GET', KEYS[1]) == 'p' .. ARGV[1] then return redis.call('DEL', KEYS[1]) end
return 0
"#;

/// KEYS: timer queue. ARGV: now ms, limit. Returns `{member, score, ...}`.
const CLAIM_DUE: &str = r#"
local r = redis.call('ZRANGEBYSCORE', KEYS[1], '-inf', ARGV[1], 'WITHSCORES', 'LIMIT', 0, ARGV[2])
for i = 1, #r, 2 do redis.call('ZREM', KEYS[1], r[i]) end
return r
"#;

/// All scripts, hashed once per backend.
pub(crate) struct Scripts {
    pub(crate) reclaim: Script,
    pub(crate) leases: Script,
    pub(crate) nack: Script,
    pub(crate) replay: Script,
    pub(crate) stats: Script,
    pub(crate) groups: Script,
    pub(crate) drop_group: Script,
    pub(crate) live_members: Script,
    pub(crate) trim: Script,
    pub(crate) write_states: Script,
    pub(crate) history_at: Script,
    pub(crate) delete_state: Script,
    pub(crate) idempotency_begin: Script,
    pub(crate) idempotency_renew: Script,
    pub(crate) idempotency_complete: Script,
    pub(crate) idempotency_release: Script,
    pub(crate) claim_due: Script,
}

impl Scripts {
    pub(crate) fn new() -> Self {
        Scripts {
            reclaim: Script::new(&format!("{DEAD_LETTER_FN}{RECLAIM}")),
            leases: Script::new(LEASES),
            nack: Script::new(&format!("{DEAD_LETTER_FN}{NACK}")),
            replay: Script::new(REPLAY),
            stats: Script::new(STATS),
            groups: Script::new(GROUPS),
            drop_group: Script::new(DROP_GROUP),
            live_members: Script::new(LIVE_MEMBERS),
            trim: Script::new(TRIM),
            write_states: Script::new(&format!("{LEGACY_HISTORY_FN}{WRITE_STATES}")),
            history_at: Script::new(&format!("{LEGACY_HISTORY_FN}{HISTORY_AT}")),
            delete_state: Script::new(DELETE_STATE),
            idempotency_begin: Script::new(IDEMPOTENCY_BEGIN),
            idempotency_renew: Script::new(IDEMPOTENCY_RENEW),
            idempotency_complete: Script::new(IDEMPOTENCY_COMPLETE),
            idempotency_release: Script::new(IDEMPOTENCY_RELEASE),
            claim_due: Script::new(CLAIM_DUE),
        }
    }
}
