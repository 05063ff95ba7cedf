//! Decoding of raw Redis replies into bus types. Done by hand on [`Value`] so entries are
//! decoded once, payloads stay bytes, and RESP2 arrays and RESP3 maps both work.

use bytes::Bytes;
use redis::Value;

use crate::entry::{EntryId, Event};
use crate::error::BusError;

pub(crate) fn unexpected(what: &str) -> BusError {
    BusError::Backend(format!("unexpected reply from redis for {what}"))
}

/// The bytes of a string-like value.
pub(crate) fn bytes_of(v: &Value) -> Option<&[u8]> {
    match v {
        Value::BulkString(b) => Some(b),
        Value::SimpleString(s) => Some(s.as_bytes()),
        Value::VerbatimString { text, .. } => Some(text.as_bytes()),
        Value::Okay => Some(b"OK"),
        _ => None,
    }
}

pub(crate) fn string_of(v: &Value) -> Option<String> {
    bytes_of(v).and_then(|b| String::from_utf8(b.to_vec()).ok())
}

pub(crate) fn int_of(v: &Value) -> Option<i64> {
    match v {
        Value::Int(i) => Some(*i),
        other => std::str::from_utf8(bytes_of(other)?).ok()?.parse().ok(),
    }
}

pub(crate) fn u64_of(v: &Value) -> Option<u64> {
    int_of(v).and_then(|i| u64::try_from(i).ok())
}

pub(crate) fn id_of(v: &Value) -> Option<EntryId> {
    std::str::from_utf8(bytes_of(v)?).ok()?.parse().ok()
}

/// The items of an array-like value (`Nil` is empty).
pub(crate) fn items(v: &Value) -> Option<&[Value]> {
    match v {
        Value::Array(a) | Value::Set(a) => Some(a),
        Value::Nil => Some(&[]),
        _ => None,
    }
}

/// Name/value pairs of a flat array (`[n1, v1, n2, v2]`) or a map.
pub(crate) fn pairs(v: &Value) -> Option<Vec<(&Value, &Value)>> {
    match v {
        Value::Map(m) => Some(m.iter().map(|(a, b)| (a, b)).collect()),
        Value::Nil => Some(Vec::new()),
        other => {
            let flat = items(other)?;
            Some(flat.chunks_exact(2).map(|c| (&c[0], &c[1])).collect())
        }
    }
}

/// Extra fields a dead-letter entry carries besides the event.
#[derive(Debug, Default)]
pub(crate) struct DeadFields {
    pub(crate) source_id: Option<EntryId>,
    pub(crate) count: u64,
    pub(crate) error: String,
    pub(crate) at_ms: u64,
}

/// Decodes entry fields (`k`, `p`, `t`, `tp`, plus dead-letter fields) into an event.
pub(crate) fn event_of(fields: &Value) -> Option<(Event, DeadFields)> {
    let mut key = None;
    let mut event = Event::new(String::new(), Bytes::new());
    let mut dead = DeadFields::default();
    for (name, value) in pairs(fields)? {
        match bytes_of(name)? {
            b"k" => key = Some(string_of(value)?),
            b"p" => event.payload = Bytes::copy_from_slice(bytes_of(value)?),
            b"t" => event.kind = Some(string_of(value)?),
            b"tp" => event.traceparent = Some(string_of(value)?),
            b"src" => dead.source_id = id_of(value),
            b"n" => dead.count = u64_of(value).unwrap_or(0),
            b"err" => dead.error = string_of(value).unwrap_or_default(),
            b"at" => dead.at_ms = u64_of(value).unwrap_or(0),
            _ => {}
        }
    }
    event.key = key?;
    Some((event, dead))
}

/// Decodes `[[id, fields], ...]`.
pub(crate) fn entries_of(v: &Value) -> Option<Vec<(EntryId, Event, DeadFields)>> {
    let mut out = Vec::new();
    for e in items(v)? {
        let e = items(e)?;
        // Entries deleted while pending come back with nil fields; skip them.
        if e.len() < 2 || matches!(e[1], Value::Nil) {
            continue;
        }
        let (event, dead) = event_of(&e[1])?;
        out.push((id_of(&e[0])?, event, dead));
    }
    Some(out)
}

/// Entries read from one stream key.
pub(crate) type StreamRead = (Vec<u8>, Vec<(EntryId, Event)>);

/// Decodes an XREAD/XREADGROUP reply: `[[stream key, entries], ...]` or a map of them.
pub(crate) fn streams_of(v: &Value) -> Option<Vec<StreamRead>> {
    let per_stream: Vec<(&Value, &Value)> = match v {
        Value::Map(_) => pairs(v)?,
        other => items(other)?
            .iter()
            .map(|s| {
                let s = items(s)?;
                (s.len() == 2).then(|| (&s[0], &s[1]))
            })
            .collect::<Option<Vec<_>>>()?,
    };
    per_stream
        .into_iter()
        .map(|(key, entries)| {
            let entries = entries_of(entries)?
                .into_iter()
                .map(|(id, event, _)| (id, event))
                .collect();
            Some((bytes_of(key)?.to_vec(), entries))
        })
        .collect()
}

/// Encodes the stream fields of an event.
pub(crate) fn event_fields(event: &Event) -> Vec<(&'static str, &[u8])> {
    let mut fields: Vec<(&'static str, &[u8])> = vec![("k", event.key.as_bytes())];
    if let Some(kind) = &event.kind {
        fields.push(("t", kind.as_bytes()));
    }
    if let Some(tp) = &event.traceparent {
        fields.push(("tp", tp.as_bytes()));
    }
    fields.push(("p", &event.payload));
    fields
}
