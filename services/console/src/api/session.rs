//! Sign-in, who is signed in, sign-out.

use axum::Json;
use axum::extract::State;
use axum::extract::rejection::JsonRejection;
use axum::response::{IntoResponse, Response};
use http::header::SET_COOKIE;
use serde::Deserialize;
use serde_json::{Value, json};

use super::body;
use crate::ConsoleState;
use crate::error::GatewayError;
use crate::session::{Session, SignedIn};

#[derive(Deserialize)]
pub(super) struct SignIn {
    key: String,
}

fn describe(session: &Session) -> Value {
    json!({
        "name": session.name,
        "role": session.role.as_str(),
        "csrf": session.csrf,
    })
}

/// `POST /api/session {key}`: a merchandiser or admin key opens a session.
#[tracing::instrument(skip_all)]
pub(super) async fn sign_in(
    State(state): State<ConsoleState>,
    request: Result<Json<SignIn>, JsonRejection>,
) -> Result<Response, GatewayError> {
    let request = body(request)?;
    let (id, session) = state.sessions.sign_in(&request.key)?;
    tracing::info!(name = %session.name, role = %session.role.as_str(), "console sign-in");
    Ok((
        [(SET_COOKIE, state.sessions.cookie(&id))],
        Json(describe(&session)),
    )
        .into_response())
}

/// `GET /api/session`: who is signed in, and the CSRF token for changes.
pub(super) async fn current(user: SignedIn) -> Json<Value> {
    Json(describe(&user.session))
}

/// `DELETE /api/session`: signs out.
pub(super) async fn sign_out(State(state): State<ConsoleState>, user: SignedIn) -> Response {
    state.sessions.sign_out(&user.id);
    (
        [(SET_COOKIE, state.sessions.expired_cookie())],
        Json(json!({ "signed_out": true })),
    )
        .into_response()
}
