//! Validation shared by the webhook and gRPC paths: every item is checked, every problem is
//! reported with its item index and field, and a batch with any problem is refused whole.

use std::str::FromStr;

use chrono::{DateTime, Utc};
use ratemesh_core::input;
use ratemesh_core::types::Sku;
use ratemesh_runtime::FieldViolation;
use rust_decimal::Decimal;

use crate::payload::{RawProduct, RawStock};

/// Limits a batch must respect (from `[ingest]` settings).
#[derive(Debug, Clone)]
pub struct Limits {
    /// Most items in one batch (`ingest.max_batch_items`).
    pub max_items: usize,
    /// Longest free-text field (a title) accepted.
    pub max_text_len: usize,
    /// How far an `as_of` may be ahead of the receiver's clock.
    pub max_future_skew: chrono::Duration,
}

/// The largest quantity or money amount accepted: beyond any real stock level or price, and
/// far inside the decimal range so arithmetic on it cannot overflow.
const MAX_AMOUNT: Decimal = Decimal::from_parts(1_000_000_000, 0, 0, false, 0);
/// Most decimal places accepted.
const MAX_SCALE: u32 = 6;

/// A validated stock update.
#[derive(Debug, Clone, PartialEq)]
pub struct StockItem {
    /// The SKU.
    pub sku: Sku,
    /// The stock location; empty when none was sent.
    pub location: String,
    /// Units on hand, non-negative.
    pub on_hand: Decimal,
    /// Units reserved, non-negative (zero when not sent).
    pub reserved: Decimal,
    /// When the ERP counted.
    pub as_of: DateTime<Utc>,
    /// The ERP's per-SKU counter, at least 1.
    pub sequence: u64,
    /// The ERP's own sell-through figure, when sent.
    pub velocity: Option<Decimal>,
}

/// A validated product.
#[derive(Debug, Clone, PartialEq)]
pub struct ProductItem {
    /// The SKU.
    pub sku: Sku,
    /// The category, normalised (lower case).
    pub category: String,
    /// Selling price, non-negative.
    pub price: Decimal,
    /// Unit cost, non-negative.
    pub unit_cost: Decimal,
    /// The SKU's own base rate in 0..=1, when sent.
    pub base_rate: Option<Decimal>,
    /// ISO 4217 currency code.
    pub currency: String,
    /// Display title, when sent.
    pub title: Option<String>,
    /// When the ERP's record was taken, when sent.
    pub as_of: Option<DateTime<Utc>>,
}

/// Collects violations for one item.
struct Check<'a> {
    prefix: String,
    violations: &'a mut Vec<FieldViolation>,
}

impl Check<'_> {
    fn fail(&mut self, field: &str, description: impl Into<String>) {
        self.violations.push(FieldViolation::new(
            format!("{}.{field}", self.prefix),
            description,
        ));
    }

    fn sku(&mut self, raw: &str) -> Option<Sku> {
        match input::sku(raw) {
            Ok(sku) => Some(sku),
            Err(err) => {
                self.fail("sku", err);
                None
            }
        }
    }

    fn decimal(
        &mut self,
        field: &str,
        raw: &str,
        min: Decimal,
        min_inclusive: bool,
    ) -> Option<Decimal> {
        let value = match Decimal::from_str(raw.trim()) {
            Ok(value) => value,
            Err(_) => {
                self.fail(
                    field,
                    format!("{} is not a decimal number", input::quote(raw)),
                );
                return None;
            }
        };
        if value.scale() > MAX_SCALE && value.normalize().scale() > MAX_SCALE {
            self.fail(field, format!("at most {MAX_SCALE} decimal places"));
            return None;
        }
        let too_small = if min_inclusive {
            value < min
        } else {
            value <= min
        };
        if too_small {
            let bound = if min_inclusive {
                "at least"
            } else {
                "greater than"
            };
            self.fail(field, format!("must be {bound} {min}, got {value}"));
            return None;
        }
        if value > MAX_AMOUNT {
            self.fail(field, format!("must be at most {MAX_AMOUNT}, got {value}"));
            return None;
        }
        Some(value.normalize())
    }

    fn text(&mut self, field: &str, raw: &str, max: usize) -> Option<String> {
        match input::text(raw, max) {
            Ok(text) => Some(text.to_owned()),
            Err(err) => {
                self.fail(field, err);
                None
            }
        }
    }

    fn time(
        &mut self,
        field: &str,
        raw: &str,
        now: DateTime<Utc>,
        limits: &Limits,
    ) -> Option<DateTime<Utc>> {
        match input::rfc3339(raw) {
            Ok(t) => {
                if t > now + limits.max_future_skew {
                    self.fail(
                        field,
                        format!(
                            "{} is more than {} s in the future; check the sender's clock",
                            input::quote(raw),
                            limits.max_future_skew.num_seconds()
                        ),
                    );
                    None
                } else {
                    Some(t)
                }
            }
            Err(err) => {
                self.fail(field, err);
                None
            }
        }
    }
}

fn check_count(what: &str, count: usize) -> Result<(), Vec<FieldViolation>> {
    if count == 0 {
        return Err(vec![FieldViolation::new(
            what,
            "must hold at least one item",
        )]);
    }
    Ok(())
}

/// Whether a batch has more items than allowed (answered as too large, not invalid).
pub(crate) fn too_many(count: usize, limits: &Limits) -> Option<String> {
    (count > limits.max_items).then(|| {
        format!(
            "batch has {count} items; at most {} are accepted per request, split it",
            limits.max_items
        )
    })
}

/// Validates every stock update; any violation refuses the whole batch.
pub fn stock(
    raw: &[RawStock],
    now: DateTime<Utc>,
    limits: &Limits,
) -> Result<Vec<StockItem>, Vec<FieldViolation>> {
    check_count("updates", raw.len())?;
    let mut violations = Vec::new();
    let mut items = Vec::with_capacity(raw.len());
    for (i, update) in raw.iter().enumerate() {
        let mut check = Check {
            prefix: format!("updates[{i}]"),
            violations: &mut violations,
        };
        let sku = check.sku(&update.sku);
        let location = check.text("location", update.location.as_deref().unwrap_or(""), 64);
        let on_hand = check.decimal("on_hand", &update.on_hand, Decimal::ZERO, true);
        let reserved = match &update.reserved {
            Some(r) => check.decimal("reserved", r, Decimal::ZERO, true),
            None => Some(Decimal::ZERO),
        };
        let as_of = check.time("as_of", &update.as_of, now, limits);
        if update.sequence == 0 {
            check.fail(
                "sequence",
                "must be at least 1 (a per-SKU counter from the ERP)",
            );
        }
        let velocity = match &update.velocity {
            Some(v) => check.decimal("velocity", v, Decimal::ZERO, true).map(Some),
            None => Some(None),
        };
        if let (
            Some(sku),
            Some(location),
            Some(on_hand),
            Some(reserved),
            Some(as_of),
            Some(velocity),
        ) = (sku, location, on_hand, reserved, as_of, velocity)
            && update.sequence > 0
        {
            items.push(StockItem {
                sku,
                location,
                on_hand,
                reserved,
                as_of,
                sequence: update.sequence,
                velocity,
            });
        }
    }
    if violations.is_empty() {
        Ok(items)
    } else {
        Err(violations)
    }
}

/// Validates every product; any violation refuses the whole batch.
pub fn products(
    raw: &[RawProduct],
    now: DateTime<Utc>,
    limits: &Limits,
) -> Result<Vec<ProductItem>, Vec<FieldViolation>> {
    check_count("products", raw.len())?;
    let mut violations = Vec::new();
    let mut items = Vec::with_capacity(raw.len());
    for (i, product) in raw.iter().enumerate() {
        let mut check = Check {
            prefix: format!("products[{i}]"),
            violations: &mut violations,
        };
        let sku = check.sku(&product.sku);
        let category = match input::category(&product.category) {
            Ok(c) => Some(c),
            Err(err) => {
                check.fail("category", err);
                None
            }
        };
        let price = check.decimal("price", &product.price, Decimal::ZERO, false);
        let unit_cost = check.decimal("unit_cost", &product.unit_cost, Decimal::ZERO, true);
        let base_rate = match &product.base_rate {
            Some(r) => match check.decimal("base_rate", r, Decimal::ZERO, true) {
                Some(rate) if rate > Decimal::ONE => {
                    check.fail(
                        "base_rate",
                        format!("must be a fraction between 0 and 1 (0.08 = 8 %), got {rate}"),
                    );
                    None
                }
                other => other.map(Some),
            },
            None => Some(None),
        };
        let currency = match product.currency.as_deref() {
            None | Some("") => Some("USD".to_owned()),
            Some(c) if c.len() == 3 && c.bytes().all(|b| b.is_ascii_uppercase()) => {
                Some(c.to_owned())
            }
            Some(c) => {
                check.fail(
                    "currency",
                    format!("{} is not an ISO 4217 code such as USD", input::quote(c)),
                );
                None
            }
        };
        let title = match &product.title {
            Some(t) => check.text("title", t, limits.max_text_len).map(Some),
            None => Some(None),
        };
        let as_of = match &product.as_of {
            Some(t) => check.time("as_of", t, now, limits).map(Some),
            None => Some(None),
        };
        if let (
            Some(sku),
            Some(category),
            Some(price),
            Some(unit_cost),
            Some(base_rate),
            Some(currency),
            Some(title),
            Some(as_of),
        ) = (
            sku, category, price, unit_cost, base_rate, currency, title, as_of,
        ) {
            items.push(ProductItem {
                sku,
                category,
                price,
                unit_cost,
                base_rate,
                currency,
                title,
                as_of,
            });
        }
    }
    if violations.is_empty() {
        Ok(items)
    } else {
        Err(violations)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn limits() -> Limits {
        Limits {
            max_items: 100,
            max_text_len: 256,
            max_future_skew: chrono::Duration::seconds(300),
        }
    }

    fn now() -> DateTime<Utc> {
        DateTime::parse_from_rfc3339("2026-11-27T05:00:00Z")
            .expect("time")
            .with_timezone(&Utc)
    }

    fn raw(sku: &str, on_hand: &str, sequence: u64) -> RawStock {
        RawStock {
            sku: sku.into(),
            location: None,
            on_hand: on_hand.into(),
            reserved: None,
            as_of: "2026-11-27T04:59:00Z".into(),
            sequence,
            velocity: None,
        }
    }

    #[test]
    fn a_valid_batch_validates() {
        let items =
            stock(&[raw("A-1", "10", 1), raw("B-2", "0", 9)], now(), &limits()).expect("valid");
        assert_eq!(items.len(), 2);
        assert_eq!(items[0].on_hand, Decimal::from(10));
        assert_eq!(items[0].location, "");
    }

    #[test]
    fn every_problem_is_reported_with_index_and_field() {
        let mut bad_time = raw("C", "1", 1);
        bad_time.as_of = "yesterday".into();
        let violations = stock(
            &[raw("ok", "1", 1), raw("bad sku", "-1", 0), bad_time],
            now(),
            &limits(),
        )
        .expect_err("invalid");
        let fields: Vec<_> = violations.iter().map(|v| v.field.as_str()).collect();
        assert_eq!(
            fields,
            [
                "updates[1].sku",
                "updates[1].on_hand",
                "updates[1].sequence",
                "updates[2].as_of"
            ]
        );
    }

    #[test]
    fn future_times_and_absurd_amounts_are_refused() {
        let mut future = raw("A", "1", 1);
        future.as_of = "2026-11-28T00:00:00Z".into();
        assert!(stock(&[future], now(), &limits()).is_err());
        assert!(stock(&[raw("A", "10000000000", 1)], now(), &limits()).is_err());
        assert!(stock(&[raw("A", "1.1234567", 1)], now(), &limits()).is_err());
        assert!(stock(&[], now(), &limits()).is_err());
    }

    #[test]
    fn times_outside_the_protobuf_range_and_huge_values_are_refused_briefly() {
        let mut year_0 = raw("A", "1", 1);
        year_0.as_of = "0000-06-01T00:00:00Z".into();
        let violations = stock(&[year_0], now(), &limits()).expect_err("year 0");
        assert_eq!(violations[0].field, "updates[0].as_of");
        let mut huge = raw("A", &"9".repeat(4096), 1);
        huge.as_of = "x".repeat(4096);
        let violations = stock(&[huge], now(), &limits()).expect_err("huge");
        assert_eq!(violations.len(), 2);
        for v in &violations {
            assert!(v.description.len() < 200, "{}", v.description);
        }
    }

    #[test]
    fn products_check_price_rate_and_currency() {
        let product = |price: &str, rate: Option<&str>, currency: Option<&str>| RawProduct {
            sku: "P-1".into(),
            category: "Electronics".into(),
            price: price.into(),
            unit_cost: "10".into(),
            base_rate: rate.map(str::to_owned),
            currency: currency.map(str::to_owned),
            title: None,
            as_of: None,
        };
        let ok =
            products(&[product("19.99", Some("0.08"), None)], now(), &limits()).expect("valid");
        assert_eq!(ok[0].category, "electronics");
        assert_eq!(ok[0].currency, "USD");
        let violations = products(&[product("0", Some("8"), Some("usd"))], now(), &limits())
            .expect_err("invalid");
        let fields: Vec<_> = violations.iter().map(|v| v.field.as_str()).collect();
        assert_eq!(
            fields,
            [
                "products[0].price",
                "products[0].base_rate",
                "products[0].currency"
            ]
        );
    }

    #[test]
    fn too_many_items_is_its_own_answer() {
        assert!(too_many(101, &limits()).is_some());
        assert!(too_many(100, &limits()).is_none());
    }
}
