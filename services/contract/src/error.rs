//! Why a stream entry or shared record does not decode.

/// An entry that cannot be decoded: retrying will not help, so consumers dead-letter it
/// after the bus's maximum deliveries with this text, which names the field.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct DecodeError(pub String);

impl DecodeError {
    /// `field: problem`.
    pub fn field(field: &str, problem: impl std::fmt::Display) -> Self {
        DecodeError(format!("{field}: {problem}"))
    }
}
