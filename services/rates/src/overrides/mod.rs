//! `OverrideService`: merchandisers pin, floor, cap, scale or exclude rates, and read the
//! audit trail.
//!
//! - [`store`] — overrides, their audit entries and the per-scope index in bus state.
//!
//! An override takes effect on the next read after `SetOverride`/`ClearOverride`
//! returns: before answering, the call folds the change into the affected SKU's state and
//! publishes the recomputed card through the same compare-and-set path as the consumer.
//! For a category override the call recomputes the category's SKUs before answering,
//! for at most `rates.override_recompute_timeout_ms`; past that it answers anyway and
//! the `overrides` consumer (which receives the same change) finishes the sweep, so the
//! guarantee then is "within the sweep's duration" rather than "on the next read".
//!
//! Conflicts are core's [`find_conflicts`]: overlapping windows on the same scope with
//! kinds that contradict each other (two pins with different rates, a pin or exclude
//! with anything else, one kind with two values, a floor above a cap). Compatible
//! overlaps (a floor under a cap, a multiplier with a floor) are allowed.

pub mod store;
pub mod wire;

use std::time::Duration;

use chrono::{DateTime, Utc};
use ratemesh_bus::Update;
use ratemesh_core::{Override, OverrideKind, OverrideScope, Sku, find_conflicts, input};
use ratemesh_proto::v1;
use ratemesh_proto::v1::override_service_server::OverrideService;
use ratemesh_runtime::error::Conflict;
use ratemesh_runtime::{ApiError, FieldViolation, Principal};
use tonic::{Request, Response, Status};

use crate::convert::from_timestamp;
use crate::engine::Engine;
use crate::engine::record::{EngineRecord, FIELD_ENGINE, NAMESPACE as RATE_NAMESPACE};
use crate::overrides::wire::{check_override_input, override_from_proto};
use store::{Stored, scope_key};

/// The `OverrideService` implementation.
#[derive(Debug, Clone)]
pub struct OverridesApi {
    engine: Engine,
    recompute_timeout: Duration,
}

const MAX_PAGE: u32 = 1000;
const DEFAULT_PAGE: u32 = 100;

impl OverridesApi {
    /// The service over `engine`; category recomputes wait at most `recompute_timeout`.
    pub fn new(engine: Engine, recompute_timeout: Duration) -> Self {
        Self {
            engine,
            recompute_timeout,
        }
    }

    async fn category_of(&self, sku: &Sku) -> Result<Option<String>, ApiError> {
        let rec = self
            .engine
            .bus()
            .get_state(RATE_NAMESPACE, sku.as_str())
            .await?;
        Ok(rec
            .and_then(|r| r.fields.get(FIELD_ENGINE).cloned())
            .and_then(|b| EngineRecord::decode(&b).ok())
            .and_then(|r| r.category().map(str::to_owned)))
    }

    /// A pin outside the policy's floor and cap for the scope's category would never be
    /// what the card shows, so it is refused when set.
    async fn check_pin(&self, value: &Override) -> Result<(), ApiError> {
        let OverrideKind::Pin { rate } = value.kind else {
            return Ok(());
        };
        let category = match &value.scope {
            OverrideScope::Sku(sku) => self.category_of(sku).await?,
            OverrideScope::Category(c) => Some(c.clone()),
        };
        let cat = match &category {
            Some(c) => self.engine.policy().category(c),
            None => self.engine.policy().default_category(),
        };
        if rate < cat.floor || rate > cat.cap {
            return Err(ApiError::invalid(
                "override.value",
                format!(
                    "a pin of {rate} is outside the policy's guardrails ({} to {}) for category {:?}",
                    cat.floor,
                    cat.cap,
                    category.as_deref().unwrap_or("(default)")
                ),
            ));
        }
        Ok(())
    }

    async fn set(
        &self,
        author: String,
        req: v1::SetOverrideRequest,
    ) -> Result<v1::SetOverrideResponse, ApiError> {
        let now = Utc::now();
        let mut proto = req
            .r#override
            .ok_or_else(|| ApiError::invalid("override", "is required"))?;
        let violations =
            check_override_input(&mut proto, "override", self.engine.policy().rate_decimals);
        if !violations.is_empty() {
            return Err(ApiError::InvalidArgument(violations));
        }
        let id = next_override_id();
        let value = override_from_proto(&proto, "override", id, author.clone(), now)
            .map_err(ApiError::InvalidArgument)?;
        self.check_pin(&value).await?;
        let key = scope_key(&value.scope);
        // The index write serialises sets on one scope: a set that lost the race to
        // another checks again against what that one stored.
        let replace_conflicting = req.replace_conflicting;
        let replaced = store::update_scope_ids(&self.engine, &key, |ids| {
            let (value, key) = (&value, &key);
            async move {
                let live: Vec<Stored> = store::load_many(&self.engine, &ids)
                    .await?
                    .into_iter()
                    .filter(|s| s.is_live(now))
                    .collect();
                let mut candidates: Vec<Override> =
                    live.iter().map(|s| s.value.clone()).collect();
                candidates.push(value.clone());
                let conflicts: Vec<_> = find_conflicts(&candidates)
                    .into_iter()
                    .filter(|c| c.first == value.id || c.second == value.id)
                    .collect();
                if !conflicts.is_empty() && !replace_conflicting {
                    let list = conflicts
                        .iter()
                        .map(|c| {
                            let other = if c.first == value.id {
                                &c.second
                            } else {
                                &c.first
                            };
                            Conflict {
                                kind: "OVERRIDE_CONFLICT".into(),
                                subject: other.clone(),
                                description: c.text(),
                            }
                        })
                        .collect::<Vec<_>>();
                    return Err(ApiError::FailedPrecondition {
                        message: format!(
                            "override conflicts with {} existing override(s) on {key}; clear them or set replace_conflicting",
                            list.len()
                        ),
                        conflicts: list,
                    });
                }
                let conflicting: Vec<&String> = conflicts
                    .iter()
                    .map(|c| {
                        if c.first == value.id {
                            &c.second
                        } else {
                            &c.first
                        }
                    })
                    .collect();
                let replaced: Vec<Stored> = live
                    .iter()
                    .filter(|s| conflicting.contains(&&s.value.id))
                    .cloned()
                    .collect();
                // Every id stays indexed (cleared and ended ones too): listings with
                // include_inactive and the audit trail of a scope read them from here.
                let mut next_ids = ids;
                next_ids.push(value.id.clone());
                Ok((next_ids, replaced))
            }
        })
        .await?;
        let mut events = Vec::new();
        let mut replaced_out = Vec::new();
        for old in &replaced {
            let reason = format!("replaced by override {}: {}", value.id, value.reason);
            // A concurrent clear of the replaced override is fine: it is cleared either way.
            let done = store::update(&self.engine, &old.value.id, |current, write| {
                Ok::<_, ApiError>(match current {
                    Some(current) if current.meta.cleared_at.is_none() => store::clear(
                        &current,
                        write,
                        v1::OverrideAction::Replace,
                        &author,
                        &reason,
                        now,
                    )
                    .map(Some),
                    _ => Update::Keep(None),
                })
            })
            .await?;
            if let Some(done) = done {
                replaced_out.push(done.to_proto(now));
                events.push(store::clear_event(&old.value, now));
            }
        }
        let stored = store::insert(&self.engine, &value, now).await?;
        if let Some(end) = value.ends_at {
            crate::engine::timers::schedule_expiry(self.engine.bus(), &value.id, end).await?;
        }
        events.push(ratemesh_core::Event::OverrideSet {
            value: value.clone(),
            at: now,
        });
        let complete =
            store::take_effect(&self.engine, &value.scope, &events, self.recompute_timeout)
                .await
                .map_err(|e| ApiError::Internal(e.to_string()))?;
        if !complete {
            tracing::warn!(id = %value.id, "category recompute still running after the override was set");
        }
        tracing::info!(id = %value.id, scope = %key, author = %author, "override set");
        Ok(v1::SetOverrideResponse {
            r#override: Some(stored.to_proto(now)),
            replaced: replaced_out,
        })
    }

    async fn clear(
        &self,
        author: String,
        req: v1::ClearOverrideRequest,
    ) -> Result<v1::ClearOverrideResponse, ApiError> {
        let mut violations = Vec::new();
        if let Err(e) = input::id(&req.id) {
            violations.push(FieldViolation::new("id", e));
        }
        let reason = req.reason.trim();
        if reason.is_empty() || reason.chars().count() > 1024 {
            violations.push(FieldViolation::new(
                "reason",
                "must be 1 to 1024 characters",
            ));
        } else if let Err(e) = input::text(reason, 1024) {
            violations.push(FieldViolation::new("reason", e));
        }
        if !violations.is_empty() {
            return Err(ApiError::InvalidArgument(violations));
        }
        let now = Utc::now();
        let (done, cleared) = store::update(&self.engine, &req.id, |current, write| {
            let Some(current) = current else {
                return Err(ApiError::NotFound {
                    what: "override",
                    key: req.id.clone(),
                });
            };
            if !current.is_live(now) {
                return Ok(Update::Keep((current, false)));
            }
            Ok(store::clear(
                &current,
                write,
                v1::OverrideAction::Clear,
                &author,
                reason,
                now,
            )
            .map(|done| (done, true)))
        })
        .await?;
        if cleared {
            let event = store::clear_event(&done.value, now);
            store::take_effect(
                &self.engine,
                &done.value.scope,
                &[event],
                self.recompute_timeout,
            )
            .await
            .map_err(|e| ApiError::Internal(e.to_string()))?;
            tracing::info!(id = %req.id, author = %author, "override cleared");
        }
        Ok(v1::ClearOverrideResponse {
            cleared: Some(done.to_proto(now)),
        })
    }

    /// The overrides a SKU and/or category filter can see.
    async fn scoped(
        &self,
        sku: Option<&str>,
        category: Option<&str>,
    ) -> Result<Vec<Stored>, ApiError> {
        let mut keys = Vec::new();
        if let Some(sku) = sku {
            let sku = input::sku(sku).map_err(|e| ApiError::invalid("sku", e))?;
            keys.push(scope_key(&OverrideScope::Sku(sku.clone())));
            if let Some(c) = self.category_of(&sku).await? {
                keys.push(scope_key(&OverrideScope::Category(c)));
            }
        }
        if let Some(c) = category {
            let c = input::category(c).map_err(|e| ApiError::invalid("category", e))?;
            let key = scope_key(&OverrideScope::Category(c));
            if sku.is_some() {
                keys.retain(|k| *k == key);
            } else {
                keys.push(key);
            }
        }
        if sku.is_none() && category.is_none() {
            return Ok(store::load_all(&self.engine).await?);
        }
        let mut out = Vec::new();
        for key in keys {
            let (ids, _) = store::scope_ids(&self.engine, &key).await?;
            out.extend(store::load_many(&self.engine, &ids).await?);
        }
        Ok(out)
    }

    async fn list(
        &self,
        req: v1::ListOverridesRequest,
    ) -> Result<v1::ListOverridesResponse, ApiError> {
        let size = page_size(req.page_size, "page_size")?;
        let after = PageKey::parse(&req.page_token)?;
        let now = Utc::now();
        let mut items: Vec<(PageKey, v1::Override)> = self
            .scoped(req.sku.as_deref(), req.category.as_deref())
            .await?
            .into_iter()
            .filter(|s| req.include_inactive || s.is_live(now) && s.value.is_active(now))
            .map(|s| {
                let key = PageKey {
                    at: s.meta.created_at.unwrap_or(s.value.starts_at),
                    id: s.value.id.clone(),
                    seq: 0,
                };
                (key, s.to_proto(now))
            })
            .collect();
        let (page, next) = paginate(&mut items, after, size);
        Ok(v1::ListOverridesResponse {
            overrides: page,
            next_page_token: next,
        })
    }

    async fn audit(
        &self,
        req: v1::ListOverrideAuditRequest,
    ) -> Result<v1::ListOverrideAuditResponse, ApiError> {
        let size = page_size(req.page_size, "page_size")?;
        let after = PageKey::parse(&req.page_token)?;
        let stored = match req.override_id.as_deref() {
            Some(id) => {
                let id = input::id(id).map_err(|e| ApiError::invalid("override_id", e))?;
                store::load(&self.engine, id).await?.into_iter().collect()
            }
            None => self.scoped(req.sku.as_deref(), None).await?,
        };
        let mut items: Vec<(PageKey, v1::OverrideAuditEntry)> = Vec::new();
        for s in stored {
            if let Some(sku) = req.sku.as_deref()
                && req.override_id.is_some()
                && !matches!(&s.value.scope, OverrideScope::Sku(x) if x.as_str() == sku)
                && !matches!(&s.value.scope, OverrideScope::Category(_))
            {
                continue;
            }
            for (seq, entry) in s.audit.into_iter().enumerate() {
                let at = entry
                    .at
                    .as_ref()
                    .and_then(from_timestamp)
                    .unwrap_or(s.value.starts_at);
                items.push((
                    PageKey {
                        at,
                        id: s.value.id.clone(),
                        seq: seq as u32,
                    },
                    entry,
                ));
            }
        }
        let (page, next) = paginate(&mut items, after, size);
        Ok(v1::ListOverrideAuditResponse {
            entries: page,
            next_page_token: next,
        })
    }
}

/// Override ids grow in creation order within a process, also within one millisecond:
/// listings and the audit trail break ties between same-instant entries by id, so a
/// plain random ULID could list a later override before an earlier one.
fn next_override_id() -> String {
    static GENERATOR: std::sync::Mutex<ulid::Generator> =
        std::sync::Mutex::new(ulid::Generator::new());
    let mut generator = GENERATOR
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner());
    match generator.generate() {
        Ok(id) => id.to_string(),
        // Eighty random bits used up within one millisecond: step into the next one.
        Err(overflow) => overflow.commit_overflow_increment().to_string(),
    }
}

fn page_size(requested: u32, field: &str) -> Result<usize, ApiError> {
    match requested {
        0 => Ok(DEFAULT_PAGE as usize),
        n if n > MAX_PAGE => Err(ApiError::invalid(
            field,
            format!("must be at most {MAX_PAGE}, got {n}"),
        )),
        n => Ok(n as usize),
    }
}

/// Position in a newest-first listing: items strictly older than it come next. Stable
/// under concurrent inserts (new items sort before the position).
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
struct PageKey {
    at: DateTime<Utc>,
    id: String,
    seq: u32,
}

impl PageKey {
    fn parse(token: &str) -> Result<Option<PageKey>, ApiError> {
        if token.is_empty() {
            return Ok(None);
        }
        let bad = || ApiError::invalid("page_token", "is not a token this service issued");
        if token.len() > 256 {
            return Err(bad());
        }
        let mut parts = token.splitn(3, '.');
        let nanos: i64 = parts.next().and_then(|p| p.parse().ok()).ok_or_else(bad)?;
        let seq: u32 = parts.next().and_then(|p| p.parse().ok()).ok_or_else(bad)?;
        let id = parts.next().filter(|p| !p.is_empty()).ok_or_else(bad)?;
        Ok(Some(PageKey {
            at: DateTime::from_timestamp_nanos(nanos),
            id: id.to_owned(),
            seq,
        }))
    }

    fn token(&self) -> String {
        let nanos = self.at.timestamp_nanos_opt().unwrap_or(i64::MAX);
        format!("{nanos}.{}.{}", self.seq, self.id)
    }
}

fn paginate<T>(
    items: &mut Vec<(PageKey, T)>,
    after: Option<PageKey>,
    size: usize,
) -> (Vec<T>, String) {
    items.sort_by(|a, b| b.0.cmp(&a.0));
    let start = match &after {
        Some(key) => items.partition_point(|(k, _)| k >= key),
        None => 0,
    };
    let rest: Vec<(PageKey, T)> = items.drain(..).skip(start).collect();
    let more = rest.len() > size;
    let mut page = Vec::with_capacity(size.min(rest.len()));
    let mut last = None;
    for (key, item) in rest.into_iter().take(size) {
        last = Some(key);
        page.push(item);
    }
    let next = match (more, last) {
        (true, Some(key)) => key.token(),
        _ => String::new(),
    };
    (page, next)
}

fn author_of<T>(request: &Request<T>) -> Result<String, Status> {
    Ok(Principal::of(request)?.name.clone())
}

#[tonic::async_trait]
impl OverrideService for OverridesApi {
    async fn set_override(
        &self,
        request: Request<v1::SetOverrideRequest>,
    ) -> Result<Response<v1::SetOverrideResponse>, Status> {
        let author = author_of(&request)?;
        Ok(Response::new(self.set(author, request.into_inner()).await?))
    }

    async fn clear_override(
        &self,
        request: Request<v1::ClearOverrideRequest>,
    ) -> Result<Response<v1::ClearOverrideResponse>, Status> {
        let author = author_of(&request)?;
        Ok(Response::new(
            self.clear(author, request.into_inner()).await?,
        ))
    }

    async fn list_overrides(
        &self,
        request: Request<v1::ListOverridesRequest>,
    ) -> Result<Response<v1::ListOverridesResponse>, Status> {
        Ok(Response::new(self.list(request.into_inner()).await?))
    }

    async fn list_override_audit(
        &self,
        request: Request<v1::ListOverrideAuditRequest>,
    ) -> Result<Response<v1::ListOverrideAuditResponse>, Status> {
        Ok(Response::new(self.audit(request.into_inner()).await?))
    }
}
