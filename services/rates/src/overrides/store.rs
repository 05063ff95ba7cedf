//! How overrides are kept in bus state, and every change to them.
//!
//! - `override/<id>`: field `override` (the proto `Override` as set, with author and
//!   created_at), field `meta` (JSON: when it was cleared or whether it expired) and field
//!   `audit` (every change as `OverrideAuditEntry`s, in a `ListOverrideAuditResponse`).
//!   Each change rewrites the record (compare-and-set) and appends its `OverrideChanged`
//!   to the `overrides` stream in one atomic operation, so the audit trail and the stream
//!   never disagree.
//! - `override_scope/sku:<SKU>` and `override_scope/category:<name>`: field `ids`, the JSON
//!   list of override ids set on that scope. Setting an override compare-and-sets this
//!   index, which serialises concurrent sets on one scope, so two overlapping overrides
//!   cannot both pass the conflict check.

use bytes::Bytes;
use chrono::{DateTime, Utc};
use prost::Message;
use ratemesh_bus::{BusError, StateRecord, StateWrite, Update};
use ratemesh_contract::overrides::{override_changed, override_from_proto, override_to_proto};
use ratemesh_contract::streams;
use ratemesh_core::{Event, Override, OverrideScope};
use ratemesh_proto::v1;
use serde::{Deserialize, Serialize};

use crate::convert::timestamp;
use crate::engine::{Engine, EngineError};
use crate::overrides::wire::override_status;

/// Namespace of override records.
pub const NAMESPACE: &str = "override";
/// Namespace of the per-scope id index.
pub const SCOPE_NAMESPACE: &str = "override_scope";
const FIELD_OVERRIDE: &str = "override";
const FIELD_META: &str = "meta";
const FIELD_AUDIT: &str = "audit";
const FIELD_IDS: &str = "ids";
/// Author recorded for changes nobody made by hand.
pub const SYSTEM: &str = "system";

/// Lifecycle of a stored override.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct OverrideMeta {
    /// When it was set.
    pub created_at: Option<DateTime<Utc>>,
    /// When a merchandiser cleared it (or a replacing override did).
    pub cleared_at: Option<DateTime<Utc>>,
    /// Whether its end was recorded.
    #[serde(default)]
    pub expired: bool,
}

/// One stored override.
#[derive(Debug, Clone)]
pub struct Stored {
    /// The override.
    pub value: Override,
    /// Its lifecycle.
    pub meta: OverrideMeta,
    /// Its audit entries, oldest first.
    pub audit: Vec<v1::OverrideAuditEntry>,
    /// State version read.
    pub version: u64,
}

impl Stored {
    /// Whether it may still act at or after `now` (not cleared, not ended).
    pub fn is_live(&self, now: DateTime<Utc>) -> bool {
        self.meta.cleared_at.is_none() && !self.value.has_ended(now)
    }

    /// The proto form with its output fields filled in as of `now`.
    pub fn to_proto(&self, now: DateTime<Utc>) -> v1::Override {
        let mut p = override_to_proto(&self.value);
        p.created_at = self.meta.created_at.map(timestamp);
        p.status = override_status(&self.value, self.meta.cleared_at.is_some(), now) as i32;
        p
    }

    fn from_record(record: &StateRecord) -> Option<Stored> {
        let proto = v1::Override::decode(record.fields.get(FIELD_OVERRIDE)?.as_ref()).ok()?;
        let value = override_from_proto(&proto).ok()?;
        let meta = record
            .fields
            .get(FIELD_META)
            .and_then(|m| serde_json::from_slice(m).ok())
            .unwrap_or_default();
        let audit = record
            .fields
            .get(FIELD_AUDIT)
            .and_then(|a| v1::ListOverrideAuditResponse::decode(a.as_ref()).ok())
            .map(|a| a.entries)
            .unwrap_or_default();
        Some(Stored {
            value,
            meta,
            audit,
            version: record.version,
        })
    }
}

/// The index key of a scope.
pub fn scope_key(scope: &OverrideScope) -> String {
    match scope {
        OverrideScope::Sku(s) => format!("sku:{s}"),
        OverrideScope::Category(c) => format!("category:{c}"),
    }
}

/// Loads one override.
pub async fn load(engine: &Engine, id: &str) -> Result<Option<Stored>, BusError> {
    Ok(engine
        .bus()
        .get_state(NAMESPACE, id)
        .await?
        .as_ref()
        .and_then(Stored::from_record))
}

/// The ids indexed under a scope key, and the index version.
pub async fn scope_ids(engine: &Engine, key: &str) -> Result<(Vec<String>, u64), BusError> {
    match engine.bus().get_state(SCOPE_NAMESPACE, key).await? {
        None => Ok((Vec::new(), 0)),
        Some(rec) => Ok((
            rec.fields
                .get(FIELD_IDS)
                .and_then(|b| serde_json::from_slice(b).ok())
                .unwrap_or_default(),
            rec.version,
        )),
    }
}

/// Read-modify-write of a scope's id index through [`ratemesh_bus::Bus::update_state`]:
/// `change` gets the ids indexed now and returns the ids to store, with the value to
/// answer; it is asked again with the new ids when another writer got in first.
pub async fn update_scope_ids<T, E, F, Fut>(
    engine: &Engine,
    key: &str,
    mut change: F,
) -> Result<T, E>
where
    E: From<BusError>,
    F: FnMut(Vec<String>) -> Fut,
    Fut: Future<Output = Result<(Vec<String>, T), E>>,
{
    engine
        .bus()
        .update_state(SCOPE_NAMESPACE, key, |record, write| {
            let ids = record
                .and_then(|r| r.fields.get(FIELD_IDS).cloned())
                .and_then(|b| serde_json::from_slice(&b).ok())
                .unwrap_or_default();
            let changed = change(ids);
            async move {
                let (ids, value) = changed.await?;
                let json = serde_json::to_vec(&ids).unwrap_or_default();
                Ok(Update::Write(write.set(FIELD_IDS, json), value))
            }
        })
        .await
}

/// Every stored override (a scan; merchandiser-scale data).
pub async fn load_all(engine: &Engine) -> Result<Vec<Stored>, BusError> {
    let mut out = Vec::new();
    let mut page: Option<String> = None;
    loop {
        let batch = engine
            .bus()
            .scan_states(NAMESPACE, page.as_deref(), 500)
            .await?;
        out.extend(
            batch
                .items
                .iter()
                .filter_map(|(_, r)| Stored::from_record(r)),
        );
        match batch.next {
            Some(next) => page = Some(next),
            None => return Ok(out),
        }
    }
}

/// Loads the overrides with these ids (missing ones are skipped).
pub async fn load_many(engine: &Engine, ids: &[String]) -> Result<Vec<Stored>, BusError> {
    let mut out = Vec::with_capacity(ids.len());
    for id in ids {
        if let Some(s) = load(engine, id).await? {
            out.push(s);
        }
    }
    Ok(out)
}

/// Read-modify-write of override `id` through [`ratemesh_bus::Bus::update_state`]:
/// `change` gets the stored override (`None`: there is none) and the write bound to the
/// version read, and says what to do ([`clear`] makes the change that clears it); it is
/// asked again with the new record when another writer got in first.
pub async fn update<T, E, F>(engine: &Engine, id: &str, mut change: F) -> Result<T, E>
where
    E: From<BusError>,
    F: FnMut(Option<Stored>, StateWrite) -> Result<Update<T>, E>,
{
    engine
        .bus()
        .update_state(NAMESPACE, id, |record, write| {
            let stored = record.as_ref().and_then(Stored::from_record);
            std::future::ready(change(stored, write))
        })
        .await
}

/// Records a change in `write` (to the override's record): rewrites the record with
/// `meta` and appends the audit entry; returns it with the `OverrideChanged` to publish
/// in the same atomic step.
#[allow(clippy::too_many_arguments)]
fn change_of(
    write: StateWrite,
    value: &Override,
    meta: &OverrideMeta,
    mut audit: Vec<v1::OverrideAuditEntry>,
    action: v1::OverrideAction,
    before: Option<v1::Override>,
    after: v1::Override,
    author: &str,
    reason: &str,
    at: DateTime<Utc>,
) -> (StateWrite, ratemesh_bus::Event) {
    audit.push(v1::OverrideAuditEntry {
        at: Some(timestamp(at)),
        author: author.to_owned(),
        action: action as i32,
        reason: reason.to_owned(),
        before: before.clone(),
        after: Some(after.clone()),
    });
    let mut stored = override_to_proto(value);
    stored.created_at = meta.created_at.map(timestamp);
    let event = override_changed(action, before, after, author, reason, at);
    let write = write
        .set(FIELD_OVERRIDE, Bytes::from(stored.encode_to_vec()))
        .set(FIELD_META, serde_json::to_vec(meta).unwrap_or_default())
        .set(
            FIELD_AUDIT,
            Bytes::from(
                v1::ListOverrideAuditResponse {
                    entries: audit,
                    next_page_token: String::new(),
                }
                .encode_to_vec(),
            ),
        );
    (write, event)
}

/// Stores a new override (its id must be new) and publishes SET.
pub async fn insert(
    engine: &Engine,
    value: &Override,
    at: DateTime<Utc>,
) -> Result<Stored, BusError> {
    let meta = OverrideMeta {
        created_at: Some(at),
        ..OverrideMeta::default()
    };
    let stored = Stored {
        value: value.clone(),
        meta: meta.clone(),
        audit: Vec::new(),
        version: 0,
    };
    let after = stored.to_proto(at);
    let (write, event) = change_of(
        StateWrite::new(NAMESPACE, value.id.as_str()).expect_version(0),
        value,
        &meta,
        Vec::new(),
        v1::OverrideAction::Set,
        None,
        after,
        &value.author,
        &value.reason,
        at,
    );
    engine
        .bus()
        .write_state_and_publish(write, streams::OVERRIDES, event)
        .await?;
    Ok(Stored {
        version: 1,
        ..stored
    })
}

/// The change (for [`update`], with its `write`) that marks `current` cleared at `at`
/// (CLEAR or REPLACE) and publishes it; its value is the stored override after it.
pub fn clear(
    current: &Stored,
    write: StateWrite,
    action: v1::OverrideAction,
    author: &str,
    reason: &str,
    at: DateTime<Utc>,
) -> Update<Stored> {
    let before = current.to_proto(at);
    let mut meta = current.meta.clone();
    meta.cleared_at = Some(at);
    let mut next = current.clone();
    next.meta = meta.clone();
    let after = next.to_proto(at);
    let (write, event) = change_of(
        write,
        &current.value,
        &meta,
        current.audit.clone(),
        action,
        Some(before),
        after,
        author,
        reason,
        at,
    );
    next.version += 1;
    Update::WriteAndPublish(write, streams::OVERRIDES, event, next)
}

/// The core event that folds `stored`'s current lifecycle into a SKU's or the category
/// book's overrides.
pub fn clear_event(value: &Override, at: DateTime<Utc>) -> Event {
    Event::OverrideCleared {
        id: value.id.clone(),
        scope: value.scope.clone(),
        at,
    }
}

/// Applies the effect of a set or clear to the cards: the SKU's card, or the category's
/// SKUs (bounded by `timeout`; the consumer of the `overrides` stream finishes the rest).
pub async fn take_effect(
    engine: &Engine,
    scope: &OverrideScope,
    events: &[Event],
    timeout: std::time::Duration,
) -> Result<bool, EngineError> {
    match scope {
        OverrideScope::Sku(sku) => {
            engine.apply(sku, events).await?;
            Ok(true)
        }
        OverrideScope::Category(category) => {
            let work = async {
                for event in events {
                    engine.apply_category(category, event).await?;
                }
                Ok::<(), EngineError>(())
            };
            match tokio::time::timeout(timeout, work).await {
                Ok(result) => result.map(|()| true),
                Err(_) => Ok(false),
            }
        }
    }
}

/// Records that override `id` reached its end at `at` (timer `expire:`), publishes
/// EXPIRE and recomputes what it applied to. Nothing happens if it was cleared, already
/// expired, or moved.
pub async fn expire(engine: &Engine, id: &str, at: DateTime<Utc>) -> Result<(), EngineError> {
    let expired = update(engine, id, |current, write| {
        let Some(current) = current else {
            return Ok::<_, EngineError>(Update::Keep(None));
        };
        if current.meta.cleared_at.is_some()
            || current.meta.expired
            || current.value.ends_at.map(crate::engine::timers::ceil_ms)
                != Some(at.timestamp_millis())
        {
            return Ok(Update::Keep(None));
        }
        let before = current.to_proto(at - chrono::TimeDelta::milliseconds(1));
        let mut meta = current.meta.clone();
        meta.expired = true;
        let mut next = current.clone();
        next.meta = meta.clone();
        let after = next.to_proto(at);
        let (write, event) = change_of(
            write,
            &current.value,
            &meta,
            current.audit.clone(),
            v1::OverrideAction::Expire,
            Some(before),
            after,
            SYSTEM,
            "",
            at,
        );
        Ok(Update::WriteAndPublish(
            write,
            streams::OVERRIDES,
            event,
            Some(current.value),
        ))
    })
    .await?;
    if let Some(value) = expired {
        let event = clear_event(&value, at);
        take_effect(
            engine,
            &value.scope,
            &[event],
            std::time::Duration::from_secs(3600),
        )
        .await?;
    }
    Ok(())
}

/// Loads the category overrides into the engine's book (at start), as the events that
/// made them: set at creation, cleared when cleared.
pub async fn load_category_book(engine: &Engine) -> Result<usize, BusError> {
    let mut n = 0;
    for s in load_all(engine).await? {
        if !matches!(s.value.scope, OverrideScope::Category(_)) {
            continue;
        }
        if let Some(created) = s.meta.created_at {
            engine.categories().set(&s.value, created);
            n += 1;
        }
        if let Some(cleared) = s.meta.cleared_at {
            engine.categories().clear(&s.value.id, cleared);
        }
    }
    Ok(n)
}
