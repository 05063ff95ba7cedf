//! Validation of the names callers pass in (streams, groups, namespaces, ...), so that
//! they can be embedded in Redis keys without ambiguity.

use crate::error::BusError;

/// Stream, group, consumer, namespace, scope and queue names: 1–128 ASCII characters
/// from `[A-Za-z0-9._-]`.
pub(crate) fn check_name(what: &str, name: &str) -> Result<(), BusError> {
    let ok = !name.is_empty()
        && name.len() <= 128
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-'));
    if ok {
        Ok(())
    } else {
        Err(BusError::InvalidInput(format!(
            "{what} name {name:?} must be 1-128 characters of [A-Za-z0-9._-]"
        )))
    }
}

/// Keys (SKUs, idempotency keys, timer members): non-empty, at most 1024 bytes.
pub(crate) fn check_key(what: &str, key: &str) -> Result<(), BusError> {
    if key.is_empty() || key.len() > 1024 {
        return Err(BusError::InvalidInput(format!(
            "{what} {key:?} must be 1-1024 bytes"
        )));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_are_restricted_keys_are_not() {
        assert!(check_name("stream", "stock").is_ok());
        assert!(check_name("stream", "rates.v1_x-y").is_ok());
        assert!(check_name("stream", "").is_err());
        assert!(check_name("stream", "a:b").is_err());
        assert!(check_name("stream", "{a}").is_err());
        assert!(check_key("key", "SKU 1/{x}:y").is_ok());
        assert!(check_key("key", "").is_err());
    }
}
