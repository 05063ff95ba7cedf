//! The one error type of the bus, shaped so callers can map it to a gRPC status in one place.

use thiserror::Error;

/// What went wrong in a bus operation.
///
/// The variants are chosen by what a caller does about them: retry later
/// ([`BusError::Unavailable`] → gRPC `UNAVAILABLE`), re-read and retry
/// ([`BusError::Conflict`]), report to the user ([`BusError::NotFound`],
/// [`BusError::InvalidInput`]) or treat as a bug ([`BusError::Backend`] → `INTERNAL`).
#[derive(Debug, Clone, Error, PartialEq, Eq)]
#[non_exhaustive]
pub enum BusError {
    /// The backend cannot be reached right now (connection refused or dropped, timeout,
    /// Redis loading its data set). Safe to retry after a backoff.
    #[error("backend unavailable: {0}")]
    Unavailable(String),
    /// A compare-and-set found another version than the one expected.
    #[error("version conflict on {key}: expected version {expected}, current version {current}")]
    Conflict {
        /// The state key (`<namespace>/<key>`).
        key: String,
        /// The version the caller expected.
        expected: u64,
        /// The version the store holds now (0 = absent).
        current: u64,
    },
    /// The thing named does not exist.
    #[error("not found: {0}")]
    NotFound(String),
    /// The caller passed something the bus cannot accept (bad name, bad cursor, ...).
    #[error("invalid input: {0}")]
    InvalidInput(String),
    /// The backend answered with something unexpected; a bug or a misconfigured server.
    #[error("backend error: {0}")]
    Backend(String),
}

impl BusError {
    /// True when the operation may succeed if retried later unchanged.
    pub fn is_retryable(&self) -> bool {
        matches!(self, BusError::Unavailable(_) | BusError::Conflict { .. })
    }
}

/// Shorthand for results of bus operations.
pub type BusResult<T> = Result<T, BusError>;
