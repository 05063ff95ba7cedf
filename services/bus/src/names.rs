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

/// A state key: a key that also names its record in the scan indexes, where a NUL byte
/// separates a record's group from its key.
pub(crate) fn check_state_key(key: &str) -> Result<(), BusError> {
    check_key("state key", key)?;
    no_nul("state key", key)
}

/// A group a state record is listed under (1-1024 bytes, no NUL byte).
pub(crate) fn check_group(group: &str) -> Result<(), BusError> {
    check_key("state group", group)?;
    no_nul("state group", group)
}

fn no_nul(what: &str, value: &str) -> Result<(), BusError> {
    if value.contains('\0') {
        return Err(BusError::InvalidInput(format!(
            "{what} {value:?} must not contain a NUL byte"
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
