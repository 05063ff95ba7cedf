//! The API error every service returns, and the one place it becomes a gRPC `Status` or an
//! HTTP response.
//!
//! gRPC errors carry google.rpc details: `BadRequest` field violations for invalid
//! arguments, `PreconditionFailure` for conflicts, `RetryInfo` when the caller should back
//! off. The HTTP side answers a JSON body `{"error": {"code", "message", "violations"}}` with
//! the matching status code and `Retry-After`.

use std::time::Duration;

use axum::response::{IntoResponse, Response};
use http::{HeaderValue, StatusCode};
use serde::Serialize;
use tonic::{Code, Status};
use tonic_types::{ErrorDetails, StatusExt};

/// One problem with one field of a request, e.g. `updates[3].on_hand`: `must not be negative`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct FieldViolation {
    /// Path of the field, with indexes for repeated items.
    pub field: String,
    /// What is wrong with it, lowercase, no trailing period.
    pub description: String,
}

impl FieldViolation {
    /// A violation of `field`.
    pub fn new(field: impl Into<String>, description: impl Into<String>) -> Self {
        Self {
            field: field.into(),
            description: description.into(),
        }
    }
}

/// Something the caller must resolve before retrying, e.g. an overlapping override.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Conflict {
    /// Kind of conflict, e.g. `OVERLAPPING_OVERRIDE`.
    pub kind: String,
    /// What it conflicts with, e.g. an override id.
    pub subject: String,
    /// Human explanation.
    pub description: String,
}

/// Errors the API returns. Each maps to exactly one gRPC code and one HTTP status.
#[derive(Debug, Clone, thiserror::Error)]
pub enum ApiError {
    /// One or more fields are invalid; nothing was applied.
    #[error("{}", describe_violations(.0))]
    InvalidArgument(Vec<FieldViolation>),
    /// The request could not be parsed at all (malformed JSON, bad encoding).
    #[error("{0}")]
    Malformed(String),
    /// The request body or batch is larger than allowed.
    #[error("{0}")]
    TooLarge(String),
    /// Something named in the request does not exist.
    #[error("{what} `{key}` not found")]
    NotFound {
        /// What kind of thing, e.g. `sku`.
        what: &'static str,
        /// Which one.
        key: String,
    },
    /// The request conflicts with current state.
    #[error("{message}")]
    FailedPrecondition {
        /// Summary.
        message: String,
        /// Each conflict.
        conflicts: Vec<Conflict>,
    },
    /// The request reuses an identifier (e.g. a batch id) for different content.
    #[error("{0}")]
    AlreadyExists(String),
    /// No valid credentials.
    #[error("{0}")]
    Unauthenticated(String),
    /// Valid credentials without the role this call needs.
    #[error("{0}")]
    PermissionDenied(String),
    /// Shedding load; try again after `retry_after`.
    #[error("{message}")]
    ResourceExhausted {
        /// Why the call was shed.
        message: String,
        /// Suggested back-off.
        retry_after: Duration,
    },
    /// A dependency (Redis) is not reachable; try again after `retry_after`.
    #[error("{message}")]
    Unavailable {
        /// What is unavailable.
        message: String,
        /// Suggested back-off.
        retry_after: Duration,
    },
    /// The client took too long to send its request (a body trickling in).
    #[error("{0}")]
    RequestTimeout(String),
    /// A bug or an unexpected state; details are logged, not returned.
    #[error("internal error: {0}")]
    Internal(String),
}

fn describe_violations(violations: &[FieldViolation]) -> String {
    match violations {
        [] => "invalid argument".to_owned(),
        [one] => format!("{}: {}", one.field, one.description),
        [first, rest @ ..] => format!(
            "{}: {} (and {} more)",
            first.field,
            first.description,
            rest.len()
        ),
    }
}

impl ApiError {
    /// A single invalid field.
    pub fn invalid(field: impl Into<String>, description: impl Into<String>) -> Self {
        Self::InvalidArgument(vec![FieldViolation::new(field, description)])
    }

    /// An unavailable backend, with the default back-off.
    pub fn unavailable(message: impl Into<String>) -> Self {
        Self::Unavailable {
            message: message.into(),
            retry_after: Duration::from_secs(1),
        }
    }

    /// The gRPC code of this error.
    pub fn code(&self) -> Code {
        match self {
            ApiError::InvalidArgument(_) | ApiError::Malformed(_) | ApiError::TooLarge(_) => {
                Code::InvalidArgument
            }
            ApiError::NotFound { .. } => Code::NotFound,
            ApiError::FailedPrecondition { .. } => Code::FailedPrecondition,
            ApiError::AlreadyExists(_) => Code::AlreadyExists,
            ApiError::Unauthenticated(_) => Code::Unauthenticated,
            ApiError::PermissionDenied(_) => Code::PermissionDenied,
            ApiError::ResourceExhausted { .. } => Code::ResourceExhausted,
            ApiError::Unavailable { .. } => Code::Unavailable,
            ApiError::RequestTimeout(_) => Code::DeadlineExceeded,
            ApiError::Internal(_) => Code::Internal,
        }
    }

    /// The HTTP status of this error on the webhook side.
    pub fn http_status(&self) -> StatusCode {
        match self {
            ApiError::InvalidArgument(_) => StatusCode::UNPROCESSABLE_ENTITY,
            ApiError::Malformed(_) => StatusCode::BAD_REQUEST,
            ApiError::TooLarge(_) => StatusCode::PAYLOAD_TOO_LARGE,
            ApiError::NotFound { .. } => StatusCode::NOT_FOUND,
            ApiError::FailedPrecondition { .. } | ApiError::AlreadyExists(_) => {
                StatusCode::CONFLICT
            }
            ApiError::Unauthenticated(_) => StatusCode::UNAUTHORIZED,
            ApiError::PermissionDenied(_) => StatusCode::FORBIDDEN,
            ApiError::ResourceExhausted { .. } => StatusCode::TOO_MANY_REQUESTS,
            ApiError::Unavailable { .. } => StatusCode::SERVICE_UNAVAILABLE,
            ApiError::RequestTimeout(_) => StatusCode::REQUEST_TIMEOUT,
            ApiError::Internal(_) => StatusCode::INTERNAL_SERVER_ERROR,
        }
    }

    /// The back-off to advertise, if the caller should retry later.
    pub fn retry_after(&self) -> Option<Duration> {
        match self {
            ApiError::ResourceExhausted { retry_after, .. }
            | ApiError::Unavailable { retry_after, .. } => Some(*retry_after),
            _ => None,
        }
    }

    /// The message shown to callers. Internal details stay in the logs.
    fn public_message(&self) -> String {
        match self {
            ApiError::Internal(_) => "internal error".to_owned(),
            other => other.to_string(),
        }
    }

    fn log(&self) {
        if let ApiError::Internal(detail) = self {
            tracing::error!(error = %detail, "internal error");
        }
    }

    /// The snake_case name of the code, used in JSON bodies and metrics labels.
    pub fn code_name(&self) -> &'static str {
        match self {
            ApiError::InvalidArgument(_) => "invalid_argument",
            ApiError::Malformed(_) => "malformed",
            ApiError::TooLarge(_) => "too_large",
            ApiError::NotFound { .. } => "not_found",
            ApiError::FailedPrecondition { .. } => "failed_precondition",
            ApiError::AlreadyExists(_) => "already_exists",
            ApiError::Unauthenticated(_) => "unauthenticated",
            ApiError::PermissionDenied(_) => "permission_denied",
            ApiError::ResourceExhausted { .. } => "resource_exhausted",
            ApiError::Unavailable { .. } => "unavailable",
            ApiError::RequestTimeout(_) => "request_timeout",
            ApiError::Internal(_) => "internal",
        }
    }
}

impl From<ApiError> for Status {
    fn from(err: ApiError) -> Status {
        err.log();
        let message = err.public_message();
        let mut details = ErrorDetails::new();
        match &err {
            ApiError::InvalidArgument(violations) => {
                for v in violations {
                    details.add_bad_request_violation(v.field.clone(), v.description.clone());
                }
            }
            ApiError::FailedPrecondition { conflicts, .. } => {
                for c in conflicts {
                    details.add_precondition_failure_violation(
                        c.kind.clone(),
                        c.subject.clone(),
                        c.description.clone(),
                    );
                }
            }
            ApiError::ResourceExhausted { retry_after, .. }
            | ApiError::Unavailable { retry_after, .. } => {
                details.set_retry_info(Some(*retry_after));
            }
            _ => return Status::new(err.code(), message),
        }
        Status::with_error_details(err.code(), message, details)
    }
}

impl From<ratemesh_bus::BusError> for ApiError {
    fn from(err: ratemesh_bus::BusError) -> Self {
        match err {
            ratemesh_bus::BusError::Unavailable(_) => ApiError::unavailable(err.to_string()),
            other => ApiError::Internal(other.to_string()),
        }
    }
}

/// The JSON error body of the HTTP side.
#[derive(Debug, Serialize)]
struct ErrorBody<'a> {
    error: ErrorPayload<'a>,
}

#[derive(Debug, Serialize)]
struct ErrorPayload<'a> {
    code: &'static str,
    message: String,
    #[serde(skip_serializing_if = "<[_]>::is_empty")]
    violations: &'a [FieldViolation],
    #[serde(skip_serializing_if = "<[_]>::is_empty")]
    conflicts: &'a [Conflict],
    #[serde(skip_serializing_if = "Option::is_none")]
    retry_after_seconds: Option<u64>,
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        self.log();
        let retry_after = self
            .retry_after()
            .map(|d| d.as_secs_f64().ceil().max(1.0) as u64);
        let body = ErrorBody {
            error: ErrorPayload {
                code: self.code_name(),
                message: self.public_message(),
                violations: match &self {
                    ApiError::InvalidArgument(v) => v,
                    _ => &[],
                },
                conflicts: match &self {
                    ApiError::FailedPrecondition { conflicts, .. } => conflicts,
                    _ => &[],
                },
                retry_after_seconds: retry_after,
            },
        };
        let mut response = (self.http_status(), axum::Json(body)).into_response();
        if let Some(secs) = retry_after {
            response
                .headers_mut()
                .insert(http::header::RETRY_AFTER, HeaderValue::from(secs));
        }
        response
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn invalid_argument_carries_field_violations() {
        let err = ApiError::InvalidArgument(vec![
            FieldViolation::new("updates[0].sku", "must not be empty"),
            FieldViolation::new("updates[2].on_hand", "must not be negative"),
        ]);
        assert_eq!(
            err.to_string(),
            "updates[0].sku: must not be empty (and 1 more)"
        );
        let status = Status::from(err);
        assert_eq!(status.code(), Code::InvalidArgument);
        let bad = status
            .get_details_bad_request()
            .expect("bad request details");
        assert_eq!(bad.field_violations.len(), 2);
        assert_eq!(bad.field_violations[1].field, "updates[2].on_hand");
    }

    #[test]
    fn shedding_carries_retry_info() {
        let status = Status::from(ApiError::ResourceExhausted {
            message: "server is at its concurrency limit".into(),
            retry_after: Duration::from_millis(250),
        });
        assert_eq!(status.code(), Code::ResourceExhausted);
        let retry = status.get_details_retry_info().expect("retry info");
        assert_eq!(retry.retry_delay, Some(Duration::from_millis(250)));
    }

    #[test]
    fn internal_details_are_not_returned() {
        let status = Status::from(ApiError::Internal("redis said WRONGTYPE at key x".into()));
        assert_eq!(status.code(), Code::Internal);
        assert_eq!(status.message(), "internal error");
    }

    #[test]
    fn http_answers_have_status_body_and_retry_after() {
        let response = ApiError::invalid("products[1].price", "must be positive").into_response();
        assert_eq!(response.status(), StatusCode::UNPROCESSABLE_ENTITY);

        let response = ApiError::unavailable("redis is down").into_response();
        assert_eq!(response.status(), StatusCode::SERVICE_UNAVAILABLE);
        assert_eq!(response.headers()[http::header::RETRY_AFTER], "1");
    }
}
