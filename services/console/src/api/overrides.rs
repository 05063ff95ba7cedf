//! The overrides page: list, set (with the server's validation and conflicts), clear, and
//! the audit log.

use axum::Json;
use axum::extract::rejection::JsonRejection;
use axum::extract::{Path, Query, State};
use http::StatusCode;
use ratemesh_proto::v1;
use serde::Deserialize;
use serde_json::{Value, json};

use super::{body, non_empty, time};
use crate::ConsoleState;
use crate::error::GatewayError;
use crate::json;
use crate::session::SignedIn;

#[derive(Deserialize, Default)]
pub(super) struct ListQuery {
    sku: Option<String>,
    category: Option<String>,
    /// Also scheduled, expired and cleared ones.
    #[serde(default)]
    all: bool,
}

/// `GET /api/overrides`: overrides, newest first.
#[tracing::instrument(skip_all)]
pub(super) async fn list(
    State(state): State<ConsoleState>,
    user: SignedIn,
    Query(query): Query<ListQuery>,
) -> Result<Json<Value>, GatewayError> {
    let overrides = state
        .gateway
        .overrides(&user)?
        .list_overrides(v1::ListOverridesRequest {
            sku: non_empty(query.sku),
            category: non_empty(query.category),
            include_inactive: query.all,
            page_size: 500,
            page_token: String::new(),
        })
        .await?
        .into_inner()
        .overrides;
    Ok(Json(json!({
        "overrides": overrides.iter().map(json::override_).collect::<Vec<_>>(),
    })))
}

#[derive(Deserialize, Default)]
pub(super) struct AuditQuery {
    sku: Option<String>,
}

/// `GET /api/overrides/audit`: who changed which override, newest first.
#[tracing::instrument(skip_all)]
pub(super) async fn audit(
    State(state): State<ConsoleState>,
    user: SignedIn,
    Query(query): Query<AuditQuery>,
) -> Result<Json<Value>, GatewayError> {
    let entries = state
        .gateway
        .overrides(&user)?
        .list_override_audit(v1::ListOverrideAuditRequest {
            sku: non_empty(query.sku),
            page_size: 200,
            ..Default::default()
        })
        .await?
        .into_inner()
        .entries;
    Ok(Json(json!({
        "entries": entries.iter().map(json::audit_entry).collect::<Vec<_>>(),
    })))
}

/// A new override as the form sends it.
#[derive(Deserialize)]
pub(super) struct NewOverride {
    sku: Option<String>,
    category: Option<String>,
    kind: String,
    #[serde(default)]
    value: String,
    /// RFC 3339; absent: now.
    starts_at: Option<String>,
    /// RFC 3339; absent: until cleared.
    ends_at: Option<String>,
    #[serde(default)]
    reason: String,
    #[serde(default)]
    replace_conflicting: bool,
}

/// `POST /api/overrides`: sets an override. A conflict answers 409 with the conflicting
/// overrides themselves, so the page can show what is in the way.
#[tracing::instrument(skip_all)]
pub(super) async fn set(
    State(state): State<ConsoleState>,
    user: SignedIn,
    request: Result<Json<NewOverride>, JsonRejection>,
) -> Result<(StatusCode, Json<Value>), GatewayError> {
    let request = body(request)?;
    let scope = match (non_empty(request.sku), non_empty(request.category)) {
        (Some(sku), None) => Some(v1::r#override::Scope::Sku(sku)),
        (None, Some(category)) => Some(v1::r#override::Scope::Category(category)),
        // Both or neither: the service says what it expects.
        (Some(sku), Some(_)) => Some(v1::r#override::Scope::Sku(sku)),
        (None, None) => None,
    };
    let lookup_sku = match &scope {
        Some(v1::r#override::Scope::Sku(sku)) => Some(sku.clone()),
        _ => None,
    };
    let lookup_category = match &scope {
        Some(v1::r#override::Scope::Category(category)) => Some(category.clone()),
        _ => None,
    };
    let starts_at = time("override.starts_at", request.starts_at)?;
    let ends_at = time("override.ends_at", request.ends_at)?;
    let mut client = state.gateway.overrides(&user)?;
    let answer = client
        .set_override(v1::SetOverrideRequest {
            r#override: Some(v1::Override {
                scope,
                kind: json::parse_override_kind(&request.kind) as i32,
                value: request.value.trim().to_owned(),
                starts_at,
                ends_at,
                reason: request.reason,
                ..Default::default()
            }),
            replace_conflicting: request.replace_conflicting,
        })
        .await;
    match answer {
        Ok(answer) => {
            let answer = answer.into_inner();
            Ok((
                StatusCode::CREATED,
                Json(json!({
                    "override": answer.r#override.as_ref().map(json::override_),
                    "replaced": answer.replaced.iter().map(json::override_).collect::<Vec<_>>(),
                })),
            ))
        }
        Err(status) => {
            let error = GatewayError::from(status);
            let ids = error.conflict_ids();
            if ids.is_empty() {
                return Err(error);
            }
            // Show the overrides in the way; if they cannot be read, the error alone.
            let in_scope = client
                .list_overrides(v1::ListOverridesRequest {
                    sku: lookup_sku,
                    category: lookup_category,
                    include_inactive: true,
                    page_size: 1000,
                    page_token: String::new(),
                })
                .await
                .map(|r| r.into_inner().overrides)
                .unwrap_or_default();
            let conflicts = in_scope
                .iter()
                .filter(|o| ids.contains(&o.id))
                .map(json::override_)
                .collect();
            Err(match error {
                GatewayError::Service { status, .. } => GatewayError::Service { status, conflicts },
                other => other,
            })
        }
    }
}

#[derive(Deserialize)]
pub(super) struct Reason {
    #[serde(default)]
    pub(super) reason: String,
}

/// `POST /api/overrides/{id}/clear {reason}`: ends an override now.
#[tracing::instrument(skip_all, fields(id = %id))]
pub(super) async fn clear(
    State(state): State<ConsoleState>,
    user: SignedIn,
    Path(id): Path<String>,
    request: Result<Json<Reason>, JsonRejection>,
) -> Result<Json<Value>, GatewayError> {
    let request = body(request)?;
    let cleared = state
        .gateway
        .overrides(&user)?
        .clear_override(v1::ClearOverrideRequest {
            id,
            reason: request.reason,
        })
        .await?
        .into_inner()
        .cleared;
    Ok(Json(
        json!({ "override": cleared.as_ref().map(json::override_) }),
    ))
}
