//! The one set of checks every API applies to what a caller sends: identifiers, SKUs,
//! categories, times and decimals, on gRPC and on the ERP webhooks alike.
//!
//! Each check returns the value in its canonical form or a description of what is wrong
//! (lowercase, no field name: the caller knows which field it checked). A description
//! quotes at most a short prefix of the rejected value ([`quote`]), so a hostile value of
//! any size never makes an error too big for a client to read.

pub use crate::quote::{MAX_QUOTED_CHARS, quote};
use chrono::{DateTime, Utc};
use rust_decimal::Decimal;

use crate::types::Sku;

/// Longest identifier (override, incentive, partner, batch ids, cursors' parts) accepted.
pub const MAX_ID_LEN: usize = 128;

/// Longest category accepted, in characters.
pub const MAX_CATEGORY_LEN: usize = 64;

/// Earliest instant a `google.protobuf.Timestamp` may hold: 0001-01-01T00:00:00Z.
pub const MIN_TIMESTAMP_SECONDS: i64 = -62_135_596_800;

/// Latest whole second a `google.protobuf.Timestamp` may hold: 9999-12-31T23:59:59Z.
pub const MAX_TIMESTAMP_SECONDS: i64 = 253_402_300_799;

/// An identifier: 1 to [`MAX_ID_LEN`] printable ASCII characters without spaces.
pub fn id(value: &str) -> Result<&str, String> {
    if value.is_empty() {
        return Err("is required".to_owned());
    }
    if value.len() > MAX_ID_LEN {
        return Err(format!(
            "must be at most {MAX_ID_LEN} characters, got {}",
            value.chars().count()
        ));
    }
    if !value.bytes().all(|b| b.is_ascii_graphic()) {
        return Err(format!(
            "must be printable ASCII without spaces, got {}",
            quote(value)
        ));
    }
    Ok(value)
}

/// A SKU: 1 to 128 of `A-Z a-z 0-9 . _ : / -` ([`Sku`]).
pub fn sku(value: &str) -> Result<Sku, String> {
    Sku::new(value).map_err(|err| sku_error(&err))
}

/// As [`sku`], without copying the SKU (for reads that only look it up).
pub fn check_sku(value: &str) -> Result<(), String> {
    Sku::check(value).map_err(|err| sku_error(&err))
}

fn sku_error(err: &crate::types::TypeError) -> String {
    err.to_string().trim_start_matches("sku: ").to_owned()
}

/// A category: 1 to [`MAX_CATEGORY_LEN`] of `A-Z a-z 0-9 - _ .`, compared and stored in
/// lower case (the form the ERP's product data is stored in).
pub fn category(value: &str) -> Result<String, String> {
    let value = value.trim();
    if value.is_empty()
        || value.len() > MAX_CATEGORY_LEN
        || !value
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.'))
    {
        return Err(format!(
            "must be 1 to {MAX_CATEGORY_LEN} characters of A-Z a-z 0-9 - _ ."
        ));
    }
    Ok(value.to_ascii_lowercase())
}

/// A `google.protobuf.Timestamp` (`seconds`, `nanos`) as a time, within the range the
/// protobuf JSON mapping can express (years 1 to 9999), so that every stored time can be
/// listed back to any standard client.
pub fn timestamp(seconds: i64, nanos: i32) -> Result<DateTime<Utc>, String> {
    if !(0..1_000_000_000).contains(&nanos) {
        return Err("nanos must be between 0 and 999999999".to_owned());
    }
    if !(MIN_TIMESTAMP_SECONDS..=MAX_TIMESTAMP_SECONDS).contains(&seconds) {
        return Err("must be between 0001-01-01T00:00:00Z and 9999-12-31T23:59:59Z".to_owned());
    }
    DateTime::from_timestamp(seconds, nanos as u32).ok_or_else(|| "is out of range".to_owned())
}

/// An RFC 3339 time, within the same range as [`timestamp`].
pub fn rfc3339(text: &str) -> Result<DateTime<Utc>, String> {
    let parsed = DateTime::parse_from_rfc3339(text.trim())
        .map_err(|err| format!("{} is not an RFC 3339 time ({err})", quote(text)))?
        .with_timezone(&Utc);
    timestamp(parsed.timestamp(), parsed.timestamp_subsec_nanos() as i32)
}

/// A decimal number with at most `max_places` decimal places (trailing zeros do not count).
pub fn decimal(text: &str, max_places: u32) -> Result<Decimal, String> {
    let text = text.trim();
    let value: Decimal = text
        .parse()
        .map_err(|_| format!("{} is not a decimal number", quote(text)))?;
    let value = value.normalize();
    if value.scale() > max_places {
        return Err(format!("must have at most {max_places} decimal places"));
    }
    Ok(value)
}

/// Free text (a reason, a title): at most `max_chars` characters, no control characters.
pub fn text(value: &str, max_chars: usize) -> Result<&str, String> {
    if value.chars().count() > max_chars {
        return Err(format!("must be at most {max_chars} characters"));
    }
    if value.chars().any(char::is_control) {
        return Err("must not contain control characters".to_owned());
    }
    Ok(value)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn long_values_are_quoted_by_a_short_prefix() {
        assert_eq!(quote("abc"), "\"abc\"");
        let long = "x".repeat(4096);
        let quoted = quote(&long);
        assert!(quoted.len() < 64, "{quoted}");
        assert!(quoted.ends_with("(4096 characters)"), "{quoted}");
        let err = id(&format!("{long} ")).unwrap_err();
        assert!(err.len() < 80, "{err}");
        let err = decimal(&long, 4).unwrap_err();
        assert!(err.len() < 100, "{err}");
    }

    #[test]
    fn ids_are_bounded_printable_ascii() {
        assert_eq!(id("01J9ZQ-abc_1.2:3"), Ok("01J9ZQ-abc_1.2:3"));
        assert!(id("").is_err());
        assert!(id(&"a".repeat(MAX_ID_LEN)).is_ok());
        assert!(id(&"a".repeat(4096)).is_err());
        assert!(id("a b").is_err());
        assert!(id("a\0b").is_err());
        assert!(id("é").is_err());
    }

    #[test]
    fn categories_are_a_small_alphabet_in_lower_case() {
        assert_eq!(
            category(" Home-Garden_2.0 "),
            Ok("home-garden_2.0".to_owned())
        );
        for bad in ["", "a\0b", "a b", "tv/audio", &"a".repeat(65)] {
            assert!(category(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn times_stay_within_the_protobuf_range() {
        assert!(timestamp(0, 0).is_ok());
        assert!(timestamp(MIN_TIMESTAMP_SECONDS, 0).is_ok());
        assert!(timestamp(MAX_TIMESTAMP_SECONDS, 999_999_999).is_ok());
        // Year 0 and year 10000.
        assert!(timestamp(MIN_TIMESTAMP_SECONDS - 1, 0).is_err());
        assert!(timestamp(MAX_TIMESTAMP_SECONDS + 1, 0).is_err());
        assert!(timestamp(0, -1).is_err());
        assert!(timestamp(0, 1_000_000_000).is_err());
        assert!(rfc3339("2026-11-27T05:00:00Z").is_ok());
        assert!(rfc3339("0000-12-31T00:00:00Z").is_err());
        assert!(rfc3339("yesterday").is_err());
    }

    #[test]
    fn decimals_are_limited_in_places() {
        assert_eq!(
            decimal("0.0825", 4),
            Ok(Decimal::new(825, 4)),
            "four places fit"
        );
        assert_eq!(decimal("0.08250000", 4), Ok(Decimal::new(825, 4)));
        assert!(decimal("0.08250001", 4).is_err());
        assert!(decimal("abc", 4).is_err());
    }

    #[test]
    fn text_has_no_control_characters() {
        assert!(text("fine, thanks", 20).is_ok());
        assert!(text("nul\0", 20).is_err());
        assert!(text("too long", 3).is_err());
    }
}
