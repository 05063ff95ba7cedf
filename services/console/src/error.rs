//! The one place a gateway failure becomes an HTTP answer: a status and a JSON body
//! `{"error": "...", "field": "...", "conflicts": [...]}` (`field` when the service named
//! the offending field, `conflicts` when an override collided with others).

use axum::Json;
use axum::response::{IntoResponse, Response};
use http::StatusCode;
use serde_json::{Value, json};
use tonic::Code;
use tonic_types::StatusExt as _;

use crate::session::SignInError;

/// Why a console request failed.
#[derive(Debug, thiserror::Error)]
pub enum GatewayError {
    /// No session, or it ended.
    #[error("not signed in")]
    SignedOut,
    /// A change without the session's CSRF token.
    #[error("missing or wrong CSRF token: reload the page and try again")]
    Csrf,
    /// Sign-in refused.
    #[error(transparent)]
    SignIn(#[from] SignInError),
    /// The request itself is malformed (bad JSON, a missing parameter).
    #[error("{message}")]
    BadRequest {
        /// What is wrong.
        message: String,
        /// The field it is wrong in, when there is one.
        field: Option<String>,
    },
    /// A service refused or failed the call.
    #[error("{}", .status.message())]
    Service {
        /// The service's answer.
        status: tonic::Status,
        /// The overrides an override conflicted with, as the page shows them.
        conflicts: Vec<Value>,
    },
}

impl GatewayError {
    /// A malformed request, naming `field`.
    pub fn bad_request(message: impl Into<String>, field: Option<&str>) -> Self {
        Self::BadRequest {
            message: message.into(),
            field: field.map(str::to_owned),
        }
    }

    /// The ids of the overrides a FAILED_PRECONDITION names as conflicting.
    pub fn conflict_ids(&self) -> Vec<String> {
        match self {
            GatewayError::Service { status, .. } if status.code() == Code::FailedPrecondition => {
                status
                    .get_details_precondition_failure()
                    .map(|failure| {
                        failure
                            .violations
                            .into_iter()
                            .filter(|v| v.r#type == "OVERRIDE_CONFLICT")
                            .map(|v| v.subject)
                            .collect()
                    })
                    .unwrap_or_default()
            }
            _ => Vec::new(),
        }
    }

    /// The HTTP status this failure answers with.
    pub fn http_status(&self) -> StatusCode {
        match self {
            GatewayError::SignedOut => StatusCode::UNAUTHORIZED,
            GatewayError::Csrf => StatusCode::FORBIDDEN,
            GatewayError::SignIn(SignInError::Missing) => StatusCode::BAD_REQUEST,
            GatewayError::SignIn(SignInError::Unknown) => StatusCode::UNAUTHORIZED,
            GatewayError::SignIn(SignInError::Role(_)) => StatusCode::FORBIDDEN,
            GatewayError::BadRequest { .. } => StatusCode::BAD_REQUEST,
            GatewayError::Service { status, .. } => http_status_of(status.code()),
        }
    }

    /// The field the failure is about: ours, or the first of the service's violations.
    fn field(&self) -> Option<String> {
        match self {
            GatewayError::BadRequest { field, .. } => field.clone(),
            GatewayError::Service { status, .. } => status
                .get_details_bad_request()
                .and_then(|bad| bad.field_violations.into_iter().next())
                .map(|violation| violation.field),
            _ => None,
        }
    }
}

impl From<tonic::Status> for GatewayError {
    fn from(status: tonic::Status) -> Self {
        GatewayError::Service {
            status,
            conflicts: Vec::new(),
        }
    }
}

/// The HTTP status of a gRPC code.
pub fn http_status_of(code: Code) -> StatusCode {
    match code {
        Code::Ok => StatusCode::OK,
        Code::InvalidArgument | Code::OutOfRange => StatusCode::BAD_REQUEST,
        Code::Unauthenticated => StatusCode::UNAUTHORIZED,
        Code::PermissionDenied => StatusCode::FORBIDDEN,
        Code::NotFound => StatusCode::NOT_FOUND,
        Code::AlreadyExists | Code::FailedPrecondition | Code::Aborted => StatusCode::CONFLICT,
        Code::ResourceExhausted => StatusCode::TOO_MANY_REQUESTS,
        Code::Unavailable => StatusCode::SERVICE_UNAVAILABLE,
        Code::DeadlineExceeded | Code::Cancelled => StatusCode::GATEWAY_TIMEOUT,
        Code::Unimplemented => StatusCode::NOT_IMPLEMENTED,
        Code::Unknown | Code::Internal | Code::DataLoss => StatusCode::BAD_GATEWAY,
    }
}

impl GatewayError {
    /// The JSON body of the answer: `{error, field?, conflicts?}`.
    pub fn body(&self) -> Value {
        let message = match self {
            // The gateway could not reach the services at all: say so, not tonic's words.
            GatewayError::Service { status: s, .. }
                if s.code() == Code::Unavailable && s.message().is_empty() =>
            {
                "the ratemesh services cannot be reached".to_owned()
            }
            other => other.to_string(),
        };
        let status = self.http_status();
        if status.is_server_error() {
            tracing::warn!(%status, error = %message, "console request failed");
        }
        let mut body = json!({ "error": message });
        if let Some(field) = self.field() {
            body["field"] = json!(field);
        }
        if let GatewayError::Service { conflicts, .. } = self
            && !conflicts.is_empty()
        {
            body["conflicts"] = json!(conflicts);
        }
        body
    }
}

impl IntoResponse for GatewayError {
    fn into_response(self) -> Response {
        (self.http_status(), Json(self.body())).into_response()
    }
}

#[cfg(test)]
mod tests {
    use ratemesh_runtime::Role;
    use tonic_types::{ErrorDetails, StatusExt as _};

    use super::*;

    #[test]
    fn every_refusal_has_its_http_status() {
        assert_eq!(
            GatewayError::SignedOut.http_status(),
            StatusCode::UNAUTHORIZED
        );
        assert_eq!(GatewayError::Csrf.http_status(), StatusCode::FORBIDDEN);
        assert_eq!(
            GatewayError::from(SignInError::Role(Role::Network)).http_status(),
            StatusCode::FORBIDDEN
        );
        assert_eq!(
            GatewayError::from(SignInError::Unknown).http_status(),
            StatusCode::UNAUTHORIZED
        );
        for (code, http) in [
            (Code::InvalidArgument, 400),
            (Code::NotFound, 404),
            (Code::PermissionDenied, 403),
            (Code::FailedPrecondition, 409),
            (Code::ResourceExhausted, 429),
            (Code::Unavailable, 503),
        ] {
            let err = GatewayError::from(tonic::Status::new(code, "x"));
            assert_eq!(err.http_status().as_u16(), http, "{code:?}");
        }
    }

    #[test]
    fn the_field_and_conflicts_come_from_the_status_details() {
        let mut details = ErrorDetails::new();
        details.add_bad_request_violation("override.value", "must be at most 1");
        let status =
            tonic::Status::with_error_details(Code::InvalidArgument, "value out of range", details);
        assert_eq!(
            GatewayError::from(status).field().as_deref(),
            Some("override.value")
        );
        let mut details = ErrorDetails::new();
        details.add_precondition_failure_violation("OVERRIDE_CONFLICT", "01ABC", "overlaps");
        let status =
            tonic::Status::with_error_details(Code::FailedPrecondition, "conflict", details);
        assert_eq!(GatewayError::from(status).conflict_ids(), vec!["01ABC"]);
    }
}
