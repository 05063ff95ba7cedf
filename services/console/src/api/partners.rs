//! The partners page: subscriptions, deliveries, dead letters, redelivery. The notifier
//! lets merchandisers and admins read these and requeue dead deliveries (a partner key only
//! reads its own); other roles see its refusal.

use axum::Json;
use axum::extract::rejection::JsonRejection;
use axum::extract::{Path, Query, State};
use ratemesh_proto::v1;
use serde::Deserialize;
use serde_json::{Value, json};

use super::body;
use crate::ConsoleState;
use crate::error::GatewayError;
use crate::json;
use crate::session::SignedIn;

/// `GET /api/partners`: every partner, by id.
#[tracing::instrument(skip_all)]
pub(super) async fn list(
    State(state): State<ConsoleState>,
    user: SignedIn,
) -> Result<Json<Value>, GatewayError> {
    let mut client = state.gateway.partners(&user)?;
    let mut partners = Vec::new();
    let mut page_token = String::new();
    loop {
        let page = client
            .list_partners(v1::ListPartnersRequest {
                page_size: 1000,
                page_token,
            })
            .await?
            .into_inner();
        partners.extend(page.partners);
        page_token = page.next_page_token;
        if page_token.is_empty() {
            break;
        }
    }
    Ok(Json(json!({
        "partners": partners.iter().map(json::partner).collect::<Vec<_>>(),
    })))
}

#[derive(Deserialize, Default)]
pub(super) struct DeliveriesQuery {
    /// `pending`, `delivered`, `retrying`, `dead`; empty: any.
    #[serde(default)]
    status: String,
}

/// `GET /api/partners/{id}/deliveries`: the partner's deliveries, newest first.
#[tracing::instrument(skip_all, fields(partner = %id))]
pub(super) async fn deliveries(
    State(state): State<ConsoleState>,
    user: SignedIn,
    Path(id): Path<String>,
    Query(query): Query<DeliveriesQuery>,
) -> Result<Json<Value>, GatewayError> {
    let deliveries = state
        .gateway
        .partners(&user)?
        .list_deliveries(v1::ListDeliveriesRequest {
            partner_id: id,
            status: json::parse_delivery_status(&query.status) as i32,
            page_size: 200,
            page_token: String::new(),
        })
        .await?
        .into_inner()
        .deliveries;
    Ok(Json(json!({
        "deliveries": deliveries.iter().map(json::delivery).collect::<Vec<_>>(),
    })))
}

#[derive(Deserialize, Default)]
pub(super) struct Redeliver {
    /// Dead deliveries to retry; empty: all of the partner's.
    #[serde(default)]
    delivery_ids: Vec<String>,
}

/// `POST /api/partners/{id}/redeliver {delivery_ids}`: dead deliveries go back to the
/// queue.
#[tracing::instrument(skip_all, fields(partner = %id))]
pub(super) async fn redeliver(
    State(state): State<ConsoleState>,
    user: SignedIn,
    Path(id): Path<String>,
    request: Result<Json<Redeliver>, JsonRejection>,
) -> Result<Json<Value>, GatewayError> {
    let request = body(request)?;
    let requeued = state
        .gateway
        .partners(&user)?
        .redeliver_dead_letters(v1::RedeliverDeadLettersRequest {
            partner_id: id,
            delivery_ids: request.delivery_ids,
        })
        .await?
        .into_inner()
        .requeued;
    Ok(Json(json!({ "requeued": requeued })))
}
