//! The incentives page: active and ended incentives with their budgets, trigger, cancel.

use axum::Json;
use axum::extract::rejection::JsonRejection;
use axum::extract::{Path, Query, State};
use http::StatusCode;
use ratemesh_proto::v1;
use serde::Deserialize;
use serde_json::{Value, json};

use super::overrides::Reason;
use super::{body, non_empty};
use crate::ConsoleState;
use crate::error::GatewayError;
use crate::json;
use crate::session::SignedIn;

#[derive(Deserialize, Default)]
pub(super) struct ListQuery {
    sku: Option<String>,
    /// `active`, `ended`, or empty for both.
    state: Option<String>,
}

/// `GET /api/incentives`: incentives, newest first.
#[tracing::instrument(skip_all)]
pub(super) async fn list(
    State(state): State<ConsoleState>,
    user: SignedIn,
    Query(query): Query<ListQuery>,
) -> Result<Json<Value>, GatewayError> {
    let wanted = match non_empty(query.state).as_deref() {
        None => v1::IncentiveState::Unspecified,
        Some("active") => v1::IncentiveState::Active,
        Some("ended") => v1::IncentiveState::Ended,
        Some(other) => {
            return Err(GatewayError::bad_request(
                format!("state `{other}` is neither `active` nor `ended`"),
                Some("state"),
            ));
        }
    };
    let incentives = state
        .gateway
        .incentives(&user)?
        .list_incentives(v1::ListIncentivesRequest {
            sku: non_empty(query.sku),
            category: None,
            state: wanted as i32,
            page_size: 500,
            page_token: String::new(),
        })
        .await?
        .into_inner()
        .incentives;
    Ok(Json(json!({
        "incentives": incentives.iter().map(json::incentive).collect::<Vec<_>>(),
    })))
}

/// A hand-triggered incentive as the form sends it.
#[derive(Deserialize)]
pub(super) struct NewIncentive {
    #[serde(default)]
    sku: String,
    #[serde(default)]
    bonus_rate: String,
    /// How long it runs.
    duration_minutes: i64,
    budget_spend: Option<String>,
    budget_units: Option<String>,
    #[serde(default)]
    reason: String,
}

/// `POST /api/incentives`: opens an incentive now.
#[tracing::instrument(skip_all)]
pub(super) async fn trigger(
    State(state): State<ConsoleState>,
    user: SignedIn,
    request: Result<Json<NewIncentive>, JsonRejection>,
) -> Result<(StatusCode, Json<Value>), GatewayError> {
    let request = body(request)?;
    // Its range is the service's to check; only an overflow is refused here.
    let seconds = request
        .duration_minutes
        .checked_mul(60)
        .ok_or_else(|| GatewayError::bad_request("duration is too long", Some("duration")))?;
    let incentive = state
        .gateway
        .incentives(&user)?
        .trigger_incentive(v1::TriggerIncentiveRequest {
            sku: request.sku.trim().to_owned(),
            bonus_rate: request.bonus_rate.trim().to_owned(),
            duration: Some(prost_types::Duration { seconds, nanos: 0 }),
            budget_spend: non_empty(request.budget_spend),
            budget_units: non_empty(request.budget_units),
            reason: request.reason,
        })
        .await?
        .into_inner()
        .incentive;
    Ok((
        StatusCode::CREATED,
        Json(json!({ "incentive": incentive.as_ref().map(json::incentive) })),
    ))
}

/// `POST /api/incentives/{id}/cancel {reason}`: ends an active incentive now.
#[tracing::instrument(skip_all, fields(id = %id))]
pub(super) async fn cancel(
    State(state): State<ConsoleState>,
    user: SignedIn,
    Path(id): Path<String>,
    request: Result<Json<Reason>, JsonRejection>,
) -> Result<Json<Value>, GatewayError> {
    let request = body(request)?;
    let incentive = state
        .gateway
        .incentives(&user)?
        .cancel_incentive(v1::CancelIncentiveRequest {
            id,
            reason: request.reason,
        })
        .await?
        .into_inner()
        .incentive;
    Ok(Json(
        json!({ "incentive": incentive.as_ref().map(json::incentive) }),
    ))
}
