//! The JSON gateway under `/api/…`: one module per page, each handler one or a few gRPC
//! calls made as the signed-in user.

mod incentives;
mod overrides;
mod partners;
mod rates;
mod session;
mod whatif;

use axum::Json;
use axum::Router;
use axum::extract::rejection::JsonRejection;
use axum::routing::{get, post};

use crate::ConsoleState;
use crate::error::GatewayError;

/// Every `/api/…` route.
pub(crate) fn routes() -> Router<ConsoleState> {
    Router::new()
        .route(
            "/api/session",
            get(session::current)
                .post(session::sign_in)
                .delete(session::sign_out),
        )
        .route("/api/rates", get(rates::list))
        .route("/api/rates/stream", get(rates::stream))
        .route("/api/skus/{sku}", get(rates::sku))
        .route("/api/skus/{sku}/history", get(rates::history))
        .route("/api/overrides", get(overrides::list).post(overrides::set))
        .route("/api/overrides/audit", get(overrides::audit))
        .route("/api/overrides/{id}/clear", post(overrides::clear))
        .route(
            "/api/incentives",
            get(incentives::list).post(incentives::trigger),
        )
        .route("/api/incentives/{id}/cancel", post(incentives::cancel))
        .route("/api/partners", get(partners::list))
        .route("/api/partners/{id}/deliveries", get(partners::deliveries))
        .route("/api/partners/{id}/redeliver", post(partners::redeliver))
        .route("/api/whatif", post(whatif::run))
        .fallback(not_found)
}

async fn not_found() -> GatewayError {
    GatewayError::BadRequest {
        message: "no such console endpoint".into(),
        field: None,
    }
}

/// A JSON body, or a JSON answer saying what is wrong with it.
fn body<T>(body: Result<Json<T>, JsonRejection>) -> Result<T, GatewayError> {
    body.map(|Json(body)| body)
        .map_err(|rejection| GatewayError::bad_request(rejection.body_text(), None))
}

/// A time the form sent as RFC 3339 text, naming `field` when it is not one; empty: `None`.
fn time(field: &str, text: Option<String>) -> Result<Option<prost_types::Timestamp>, GatewayError> {
    match non_empty(text) {
        None => Ok(None),
        Some(text) => crate::json::parse_time(&text).map(Some).ok_or_else(|| {
            GatewayError::bad_request(
                format!("`{text}` is not a date and time (RFC 3339)"),
                Some(field),
            )
        }),
    }
}

/// `text` trimmed, or `None` when empty.
fn non_empty(text: Option<String>) -> Option<String> {
    text.map(|t| t.trim().to_owned()).filter(|t| !t.is_empty())
}
