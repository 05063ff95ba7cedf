//! Validated domain newtypes: a value of one of these types is always in range, so the
//! policy code never re-checks it.

use std::fmt;
use std::str::FromStr;

use rust_decimal::Decimal;
use serde::{Deserialize, Serialize};
use thiserror::Error;

/// Why a domain value was rejected. Every variant names the kind of value that was wrong.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum TypeError {
    /// A SKU was empty or longer than [`Sku::MAX_LEN`] characters.
    #[error("sku: must be 1 to 128 characters long, got {0}")]
    SkuLength(usize),
    /// A SKU contained a character outside `[A-Za-z0-9._:/-]`.
    #[error("sku: character {ch:?} at position {pos} is not one of A-Z a-z 0-9 . _ : / -")]
    SkuCharacter {
        /// The offending character.
        ch: char,
        /// Its zero-based character position.
        pos: usize,
    },
    /// A rate was outside `0..=1`.
    #[error("rate: must be between 0 and 1 (a fraction of the sale price), got {0}")]
    RateOutOfRange(Decimal),
    /// A value that must not be negative was negative.
    #[error("{what}: must not be negative, got {value}")]
    Negative {
        /// Which kind of value (`money`, `quantity`, `days of cover`, `velocity`).
        what: &'static str,
        /// The rejected value.
        value: Decimal,
    },
    /// A text was not a decimal number.
    #[error("{what}: {text} is not a decimal number")]
    NotDecimal {
        /// Which kind of value was being parsed.
        what: &'static str,
        /// The rejected text, quoted and cut short ([`crate::quote::quote`]).
        text: String,
    },
}

/// A stock keeping unit: 1 to 128 characters of `[A-Za-z0-9._:/-]`.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct Sku(String);

impl Sku {
    /// The longest SKU accepted, in characters.
    pub const MAX_LEN: usize = 128;

    /// Validates and wraps a SKU.
    pub fn new(value: impl Into<String>) -> Result<Self, TypeError> {
        let value = value.into();
        Self::check(&value)?;
        Ok(Self(value))
    }

    /// Checks that `value` is a valid SKU without copying it (the read path's check).
    pub fn check(value: &str) -> Result<(), TypeError> {
        // The common case in one pass over the bytes: every byte allowed (so ASCII).
        if (1..=Self::MAX_LEN).contains(&value.len())
            && value
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b':' | b'/' | b'-'))
        {
            return Ok(());
        }
        let len = value.chars().count();
        if len == 0 || len > Self::MAX_LEN {
            return Err(TypeError::SkuLength(len));
        }
        if let Some((pos, ch)) = value
            .chars()
            .enumerate()
            .find(|(_, c)| !(c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | ':' | '/' | '-')))
        {
            return Err(TypeError::SkuCharacter { ch, pos });
        }
        Ok(())
    }

    /// The SKU as text.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl TryFrom<String> for Sku {
    type Error = TypeError;
    fn try_from(value: String) -> Result<Self, Self::Error> {
        Self::new(value)
    }
}

impl From<Sku> for String {
    fn from(value: Sku) -> Self {
        value.0
    }
}

impl FromStr for Sku {
    type Err = TypeError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Self::new(s)
    }
}

impl fmt::Display for Sku {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// A commission rate as a fraction of the sale price, `0..=1` (`0.0825` is 8.25 %).
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default, Serialize, Deserialize,
)]
#[serde(try_from = "Decimal", into = "Decimal")]
pub struct Rate(Decimal);

impl Rate {
    /// No commission.
    pub const ZERO: Rate = Rate(Decimal::ZERO);
    /// The whole sale price.
    pub const ONE: Rate = Rate(Decimal::ONE);

    /// Validates that `value` lies in `0..=1`.
    pub fn new(value: Decimal) -> Result<Self, TypeError> {
        if value < Decimal::ZERO || value > Decimal::ONE {
            return Err(TypeError::RateOutOfRange(value));
        }
        Ok(Self(value))
    }

    /// Clamps any decimal into `0..=1`; used where the policy arithmetic may leave the range
    /// and the guardrails bring it back.
    pub(crate) fn clamped(value: Decimal) -> Self {
        Self(value.clamp(Decimal::ZERO, Decimal::ONE))
    }

    /// The rate as a decimal fraction.
    pub fn get(self) -> Decimal {
        self.0
    }
}

impl TryFrom<Decimal> for Rate {
    type Error = TypeError;
    fn try_from(value: Decimal) -> Result<Self, Self::Error> {
        Self::new(value)
    }
}

impl From<Rate> for Decimal {
    fn from(value: Rate) -> Self {
        value.0
    }
}

impl FromStr for Rate {
    type Err = TypeError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let d = Decimal::from_str(s).map_err(|_| TypeError::NotDecimal {
            what: "rate",
            text: crate::quote::quote(s),
        })?;
        Self::new(d)
    }
}

impl fmt::Display for Rate {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(&self.0, f)
    }
}

/// Defines a non-negative decimal newtype with the same conversions as [`Rate`].
macro_rules! non_negative_decimal {
    ($(#[$meta:meta])* $name:ident, $what:literal) => {
        $(#[$meta])*
        #[derive(
            Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default, Serialize, Deserialize,
        )]
        #[serde(try_from = "Decimal", into = "Decimal")]
        pub struct $name(Decimal);

        impl $name {
            /// Zero.
            pub const ZERO: $name = $name(Decimal::ZERO);

            /// Validates that `value` is not negative.
            pub fn new(value: Decimal) -> Result<Self, TypeError> {
                if value.is_sign_negative() && !value.is_zero() {
                    return Err(TypeError::Negative { what: $what, value });
                }
                Ok(Self(value))
            }

            /// Clamps a decimal at zero from below.
            #[allow(dead_code)]
            pub(crate) fn clamped(value: Decimal) -> Self {
                Self(value.max(Decimal::ZERO))
            }

            /// The value as a decimal.
            pub fn get(self) -> Decimal {
                self.0
            }
        }

        impl TryFrom<Decimal> for $name {
            type Error = TypeError;
            fn try_from(value: Decimal) -> Result<Self, Self::Error> {
                Self::new(value)
            }
        }

        impl From<$name> for Decimal {
            fn from(value: $name) -> Self {
                value.0
            }
        }

        impl FromStr for $name {
            type Err = TypeError;
            fn from_str(s: &str) -> Result<Self, Self::Err> {
                let d = Decimal::from_str(s).map_err(|_| TypeError::NotDecimal {
                    what: $what,
                    text: crate::quote::quote(s),
                })?;
                Self::new(d)
            }
        }

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                fmt::Display::fmt(&self.0, f)
            }
        }
    };
}

non_negative_decimal!(
    /// An amount of money in the program's currency (prices, unit costs, budgets); never negative.
    Money,
    "money"
);
non_negative_decimal!(
    /// A number of units in stock or sold; never negative (units may be fractional, e.g. kg).
    Quantity,
    "quantity"
);
non_negative_decimal!(
    /// Days of cover: available stock divided by sales velocity; never negative.
    DaysOfCover,
    "days of cover"
);
non_negative_decimal!(
    /// Sales velocity in units per day; never negative.
    Velocity,
    "velocity"
);

impl DaysOfCover {
    /// The cover reported when a SKU has stock but no sales (velocity zero): ten years,
    /// which lands in the last (most overstocked) band of any sensible table.
    pub const UNBOUNDED: DaysOfCover = DaysOfCover(Decimal::from_parts(3650, 0, 0, false, 0));

    /// Days of cover for `available` units selling at `velocity`, or `None` when velocity
    /// is zero and stock is zero (nothing to cover).
    pub fn from_stock(available: Quantity, velocity: Velocity) -> DaysOfCover {
        if velocity.0.is_zero() {
            if available.0.is_zero() {
                return DaysOfCover::ZERO;
            }
            return DaysOfCover::UNBOUNDED;
        }
        // Both operands are non-negative and velocity is non-zero, so the quotient is a
        // non-negative number; a quotient too large to represent saturates.
        match available.0.checked_div(velocity.0) {
            Some(days) => DaysOfCover(days.min(Self::UNBOUNDED.0)),
            None => DaysOfCover::UNBOUNDED,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rust_decimal_macros::dec;

    #[test]
    fn sku_accepts_the_documented_alphabet() {
        assert!(Sku::new("ABC-123_x.y:z/9").is_ok());
        assert!(Sku::new("a".repeat(128)).is_ok());
    }

    #[test]
    fn sku_errors_name_what_was_wrong() {
        assert_eq!(Sku::new(""), Err(TypeError::SkuLength(0)));
        assert_eq!(Sku::new("a".repeat(129)), Err(TypeError::SkuLength(129)));
        let err = Sku::new("ab c").unwrap_err();
        assert_eq!(err, TypeError::SkuCharacter { ch: ' ', pos: 2 });
        assert!(
            err.to_string()
                .starts_with("sku: character ' ' at position 2")
        );
    }

    #[test]
    fn rate_must_be_a_fraction() {
        assert!(Rate::new(dec!(0)).is_ok());
        assert!(Rate::new(dec!(1)).is_ok());
        assert_eq!(
            Rate::new(dec!(1.01)),
            Err(TypeError::RateOutOfRange(dec!(1.01)))
        );
        assert!(Rate::new(dec!(-0.01)).is_err());
        assert_eq!(
            "abc".parse::<Rate>().unwrap_err().to_string(),
            "rate: \"abc\" is not a decimal number"
        );
    }

    #[test]
    fn non_negative_types_reject_negatives_by_name() {
        assert_eq!(
            Money::new(dec!(-1)).unwrap_err().to_string(),
            "money: must not be negative, got -1"
        );
        assert!(Quantity::new(dec!(-0.5)).is_err());
        assert!(DaysOfCover::new(dec!(-2)).is_err());
        assert!(Velocity::new(dec!(-2)).is_err());
        assert_eq!(Quantity::new(dec!(0)).unwrap(), Quantity::ZERO);
    }

    #[test]
    fn serde_round_trips_as_strings_and_validates() {
        let r: Rate = serde_json_like("\"0.0825\"");
        assert_eq!(r.get(), dec!(0.0825));
        let sku = toml::from_str::<Wrap<Sku>>("v = \"bad sku\"");
        assert!(sku.is_err());
    }

    #[derive(Deserialize)]
    struct Wrap<T> {
        v: T,
    }

    fn serde_json_like(text: &str) -> Rate {
        toml::from_str::<Wrap<Rate>>(&format!("v = {text}"))
            .unwrap()
            .v
    }

    #[test]
    fn cover_is_stock_over_velocity() {
        let q = Quantity::new(dec!(30)).unwrap();
        let v = Velocity::new(dec!(4)).unwrap();
        assert_eq!(DaysOfCover::from_stock(q, v).get(), dec!(7.5));
        assert_eq!(
            DaysOfCover::from_stock(q, Velocity::ZERO),
            DaysOfCover::UNBOUNDED
        );
        assert_eq!(
            DaysOfCover::from_stock(Quantity::ZERO, Velocity::ZERO),
            DaysOfCover::ZERO
        );
        assert_eq!(DaysOfCover::UNBOUNDED.get(), dec!(3650));
    }
}
