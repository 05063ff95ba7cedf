//! The webhook JSON bodies, parsed strictly: unknown fields are refused, and a body that
//! does not parse is answered with the path and position of the problem
//! (`updates[3].on_hand at line 1 column 212: invalid type: …`).
//!
//! Numbers may be sent as JSON numbers or strings; both become exact decimals (a JSON
//! number is read from its shortest text, never through a float's binary value).

use std::fmt;

use serde::Deserialize;
use serde::de::{self, Deserializer};

/// Which webhook body a feed is for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Feed {
    /// `POST /v1/stock`: a [`StockBatch`].
    Stock,
    /// `POST /v1/products`: a [`ProductBatch`].
    Products,
}

impl Feed {
    /// The key of the body's item array.
    pub fn items_key(self) -> &'static str {
        match self {
            Feed::Stock => "updates",
            Feed::Products => "products",
        }
    }

    /// Item fields that must be JSON numbers; every other field may be sent as text.
    pub fn whole_number_fields(self) -> &'static [&'static str] {
        match self {
            Feed::Stock => &["sequence"],
            Feed::Products => &[],
        }
    }
}

/// `POST /v1/stock`.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct StockBatch {
    /// Idempotency key when the `Idempotency-Key` header is absent.
    #[serde(default)]
    pub batch_id: Option<String>,
    /// The updates, applied together or not at all.
    pub updates: Vec<RawStock>,
}

/// `POST /v1/products`.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ProductBatch {
    /// Idempotency key when the `Idempotency-Key` header is absent.
    #[serde(default)]
    pub batch_id: Option<String>,
    /// The products, applied together or not at all.
    pub products: Vec<RawProduct>,
}

/// A stock update as sent, before validation. The gRPC path builds the same struct.
#[derive(Debug, Clone, Default, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawStock {
    /// The SKU, checked by [`crate::validate::stock`].
    pub sku: String,
    /// The stock location; absent is the empty location.
    #[serde(default)]
    pub location: Option<String>,
    /// Units on hand, as decimal text.
    #[serde(deserialize_with = "decimal_text")]
    pub on_hand: String,
    /// Units reserved for open orders, as decimal text; absent is zero.
    #[serde(default, deserialize_with = "optional_decimal_text")]
    pub reserved: Option<String>,
    /// When the ERP counted, RFC 3339.
    pub as_of: String,
    /// The ERP's per-SKU counter, so late readings are recognised as stale.
    pub sequence: u64,
    /// The ERP's own sell-through estimate in units per day, as decimal text.
    #[serde(default, deserialize_with = "optional_decimal_text")]
    pub velocity: Option<String>,
}

/// A product as sent, before validation.
#[derive(Debug, Clone, Default, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawProduct {
    /// The SKU, checked by [`crate::validate::products`].
    pub sku: String,
    /// The merchandising category the policy's category rules key on.
    pub category: String,
    /// Selling price, as decimal text.
    #[serde(deserialize_with = "decimal_text")]
    pub price: String,
    /// Unit cost, as decimal text; margin after commission is priced from it.
    #[serde(deserialize_with = "decimal_text")]
    pub unit_cost: String,
    /// The SKU's own base commission rate (0..=1), as decimal text.
    #[serde(default, deserialize_with = "optional_decimal_text")]
    pub base_rate: Option<String>,
    /// ISO 4217 currency of `price` and `unit_cost`; absent is USD.
    #[serde(default)]
    pub currency: Option<String>,
    /// Display title, for partners.
    #[serde(default)]
    pub title: Option<String>,
    /// When the ERP's record was taken, RFC 3339.
    #[serde(default)]
    pub as_of: Option<String>,
}

/// A number or a string, kept as text for exact decimal parsing during validation. A
/// visitor, not an untagged enum: that would buffer each value and build an error for
/// every string before trying it as text, on every quantity of every batch.
fn decimal_text<'de, D: Deserializer<'de>>(deserializer: D) -> Result<String, D::Error> {
    struct DecimalText;

    impl de::Visitor<'_> for DecimalText {
        type Value = String;

        fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
            f.write_str("a decimal number or a string holding one")
        }

        fn visit_u64<E: de::Error>(self, v: u64) -> Result<String, E> {
            Ok(v.to_string())
        }

        fn visit_i64<E: de::Error>(self, v: i64) -> Result<String, E> {
            Ok(v.to_string())
        }

        /// The shortest text that reads back as the same float, as serde_json writes it.
        fn visit_f64<E: de::Error>(self, v: f64) -> Result<String, E> {
            serde_json::Number::from_f64(v)
                .map(|n| n.to_string())
                .ok_or_else(|| E::invalid_value(de::Unexpected::Float(v), &self))
        }

        fn visit_str<E: de::Error>(self, v: &str) -> Result<String, E> {
            Ok(v.to_owned())
        }

        fn visit_string<E: de::Error>(self, v: String) -> Result<String, E> {
            Ok(v)
        }
    }

    deserializer.deserialize_any(DecimalText)
}

fn optional_decimal_text<'de, D: Deserializer<'de>>(
    deserializer: D,
) -> Result<Option<String>, D::Error> {
    #[derive(Deserialize)]
    struct Wrapped(#[serde(deserialize_with = "decimal_text")] String);
    Ok(Option::<Wrapped>::deserialize(deserializer)?.map(|w| w.0))
}

/// A body that could not be parsed: where and why.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{message}")]
pub struct ParseError {
    /// `path at line L column C: problem`.
    pub message: String,
}

/// Parses a JSON body, reporting the field path and position of the first problem.
pub fn parse<T: de::DeserializeOwned>(body: &[u8]) -> Result<T, ParseError> {
    let mut deserializer = serde_json::Deserializer::from_slice(body);
    let value = serde_path_to_error::deserialize(&mut deserializer).map_err(|err| {
        let path = err.path().to_string();
        let inner = err.into_inner();
        let position = format!("line {} column {}", inner.line(), inner.column());
        // serde_json appends " at line L column C" to its messages; keep one copy.
        let text = inner.to_string();
        let problem = text
            .rsplit_once(" at line ")
            .map_or(text.as_str(), |(head, _)| head);
        let message = if path == "." || path.is_empty() {
            format!("malformed JSON at {position}: {problem}")
        } else {
            format!("malformed JSON at {path} ({position}): {problem}")
        };
        ParseError { message }
    })?;
    deserializer.end().map_err(|err| ParseError {
        message: format!(
            "malformed JSON at line {} column {}: trailing characters after the body",
            err.line(),
            err.column()
        ),
    })?;
    Ok(value)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn numbers_and_strings_are_both_exact_decimals() {
        let batch: StockBatch = parse(
            br#"{"updates":[{"sku":"A","on_hand":12.10,"reserved":"3","as_of":"2026-11-27T05:00:00Z","sequence":7,"velocity":0.1}]}"#,
        )
        .expect("valid");
        let update = &batch.updates[0];
        assert_eq!(update.on_hand, "12.1");
        assert_eq!(update.reserved.as_deref(), Some("3"));
        assert_eq!(update.velocity.as_deref(), Some("0.1"));
        assert_eq!(update.location, None);
    }

    #[test]
    fn whole_negative_and_exponent_numbers_keep_their_shortest_text() {
        let batch: StockBatch = parse(
            br#"{"updates":[{"sku":"A","on_hand":18446744073709551615,"reserved":-5,"as_of":"x","sequence":1,"velocity":2.5e-3}]}"#,
        )
        .expect("valid");
        let update = &batch.updates[0];
        assert_eq!(update.on_hand, "18446744073709551615");
        assert_eq!(update.reserved.as_deref(), Some("-5"));
        assert_eq!(update.velocity.as_deref(), Some("0.0025"));
    }

    #[test]
    fn a_decimal_of_the_wrong_type_names_the_field_and_what_was_expected() {
        let err = parse::<StockBatch>(
            br#"{"updates":[{"sku":"A","on_hand":true,"as_of":"x","sequence":1}]}"#,
        )
        .expect_err("bad type");
        assert!(
            err.message.contains("updates[0].on_hand"),
            "{}",
            err.message
        );
        assert!(
            err.message
                .contains("expected a decimal number or a string holding one"),
            "{}",
            err.message
        );
        let err = parse::<StockBatch>(
            br#"{"updates":[{"sku":"A","on_hand":1,"reserved":[1],"as_of":"x","sequence":1}]}"#,
        )
        .expect_err("bad type");
        assert!(
            err.message.contains("updates[0].reserved"),
            "{}",
            err.message
        );
    }

    #[test]
    fn unknown_fields_are_named_with_their_position() {
        let err = parse::<StockBatch>(
            br#"{"updates":[{"sku":"A","on_hand":1,"as_of":"x","sequence":1,"onhand":2}]}"#,
        )
        .expect_err("unknown field");
        assert!(err.message.contains("updates[0]"), "{}", err.message);
        assert!(err.message.contains("onhand"), "{}", err.message);
        assert!(err.message.contains("column"), "{}", err.message);
    }

    #[test]
    fn wrong_types_name_the_field() {
        let err = parse::<StockBatch>(
            br#"{"updates":[{"sku":"A","on_hand":1,"as_of":"x","sequence":1},{"sku":"B","on_hand":1,"as_of":"x","sequence":"seven"}]}"#,
        )
        .expect_err("bad type");
        assert!(
            err.message.contains("updates[1].sequence"),
            "{}",
            err.message
        );
    }

    #[test]
    fn truncated_and_trailing_bodies_are_malformed() {
        assert!(parse::<StockBatch>(br#"{"updates":[{"sku":"A""#).is_err());
        assert!(parse::<StockBatch>(br#"{"updates":[]} x"#).is_err());
        assert!(parse::<StockBatch>(b"").is_err());
        assert!(parse::<StockBatch>(b"\xff\xfe").is_err());
    }
}
