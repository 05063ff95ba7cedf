//! Errors of the read RPCs, and the one place they become a gRPC `Status`.
//!
//! Most are [`ApiError`]s; the read path also needs codes the shared type has no variant
//! for: OUT_OF_RANGE (`as_of` before the kept history), NOT_FOUND with its own message
//! (`as_of` before a SKU's first rate) and ABORTED (a watcher fell behind). `CURSOR_EXPIRED` never happens here: every card keeps the position of its last
//! change, so any well-formed cursor can be served (see `replica`).

use ratemesh_runtime::ApiError;
use tonic::{Code, Status};

/// Why a read RPC failed.
#[derive(Debug, Clone, thiserror::Error)]
pub enum ReadError {
    /// The shared errors (invalid argument, not found, unavailable, …).
    #[error(transparent)]
    Api(#[from] ApiError),
    /// `as_of` is before the history kept.
    #[error("{0}")]
    OutOfRange(String),
    /// Nothing existed at the instant asked for (a message that says why).
    #[error("{0}")]
    NotFound(String),
    /// A watcher could not keep up and was disconnected.
    #[error("{0}")]
    Aborted(String),
}

impl ReadError {
    /// A single invalid field.
    pub fn invalid(field: impl Into<String>, description: impl Into<String>) -> Self {
        ReadError::Api(ApiError::invalid(field, description))
    }

    /// The gRPC code.
    pub fn code(&self) -> Code {
        match self {
            ReadError::Api(e) => e.code(),
            ReadError::OutOfRange(_) => Code::OutOfRange,
            ReadError::NotFound(_) => Code::NotFound,
            ReadError::Aborted(_) => Code::Aborted,
        }
    }
}

impl From<ReadError> for Status {
    fn from(err: ReadError) -> Status {
        match err {
            ReadError::Api(e) => e.into(),
            ReadError::OutOfRange(message) => Status::new(Code::OutOfRange, message),
            ReadError::NotFound(message) => Status::new(Code::NotFound, message),
            ReadError::Aborted(message) => Status::new(Code::Aborted, message),
        }
    }
}
