//! Overrides as a merchandiser sends them: the `ratemesh.v1.Override` of a request,
//! checked with the shared input rules, then for what the values mean, with every
//! problem reported as the field it is in; an override's status; command-line times for
//! the CLI. The stored form (override records and the `overrides` stream) is the
//! contract's, in [`ratemesh_contract::overrides`].

use chrono::{DateTime, Utc};
use prost_types::Timestamp;
use ratemesh_core::{Override, OverrideKind, OverrideScope, Rate, Sku};
use ratemesh_proto::v1;
use ratemesh_runtime::FieldViolation;
use rust_decimal::Decimal;

use crate::convert::{from_timestamp, timestamp};

/// Where an override stands at `now`, given whether it was cleared.
pub fn override_status(o: &Override, cleared: bool, now: DateTime<Utc>) -> v1::OverrideStatus {
    if cleared {
        v1::OverrideStatus::Cleared
    } else if o.has_ended(now) {
        v1::OverrideStatus::Expired
    } else if o.is_active(now) {
        v1::OverrideStatus::Active
    } else {
        v1::OverrideStatus::Scheduled
    }
}

/// Parses a time given on a command line: RFC 3339 (`2025-11-28T00:00:00Z`) or relative
/// to now as `+<n><unit>` with unit `s`, `m`, `h` or `d` (`+2h`).
pub fn parse_time(text: &str) -> Result<Timestamp, String> {
    parse_time_at(text, Utc::now())
}

/// [`parse_time`] relative to `now`.
pub fn parse_time_at(text: &str, now: DateTime<Utc>) -> Result<Timestamp, String> {
    let text = text.trim();
    if let Some(rel) = text.strip_prefix('+') {
        let split = rel.len().saturating_sub(1);
        let (n, unit) = rel.split_at(split);
        let n: i64 = n
            .parse()
            .map_err(|_| format!("{text:?}: expected +<number><s|m|h|d>"))?;
        let delta = match unit {
            "s" => chrono::TimeDelta::try_seconds(n),
            "m" => chrono::TimeDelta::try_minutes(n),
            "h" => chrono::TimeDelta::try_hours(n),
            "d" => chrono::TimeDelta::try_days(n),
            _ => None,
        }
        .ok_or_else(|| format!("{text:?}: expected +<number><s|m|h|d>"))?;
        return Ok(timestamp(now + delta));
    }
    DateTime::parse_from_rfc3339(text)
        .map(|t| timestamp(t.with_timezone(&Utc)))
        .map_err(|e| format!("{text:?}: not an RFC 3339 time ({e})"))
}

/// Checks an override a merchandiser sends with the shared input rules: SKU or category
/// (the category is normalised to its stored lower-case form in place), a value with at
/// most `rate_decimals` decimal places, times within the protobuf range, and a reason of
/// plain text. [`override_from_proto`] then checks what the values mean.
pub fn check_override_input(
    o: &mut v1::Override,
    prefix: &str,
    rate_decimals: u32,
) -> Vec<FieldViolation> {
    use ratemesh_core::input;
    let mut violations = Vec::new();
    let field = |name: &str| format!("{prefix}.{name}");
    match &mut o.scope {
        Some(v1::r#override::Scope::Sku(s)) => {
            if let Err(e) = input::sku(s) {
                violations.push(FieldViolation::new(field("sku"), e));
            }
        }
        Some(v1::r#override::Scope::Category(c)) => match input::category(c) {
            Ok(normal) => *c = normal,
            Err(e) => violations.push(FieldViolation::new(field("category"), e)),
        },
        None => {}
    }
    if !o.value.trim().is_empty()
        && let Err(e) = input::decimal(&o.value, rate_decimals)
    {
        violations.push(FieldViolation::new(field("value"), e));
    }
    for (name, at) in [("starts_at", &o.starts_at), ("ends_at", &o.ends_at)] {
        if let Some(t) = at
            && let Err(e) = input::timestamp(t.seconds, t.nanos)
        {
            violations.push(FieldViolation::new(field(name), e));
        }
    }
    if let Err(e) = input::text(o.reason.trim(), 1024) {
        violations.push(FieldViolation::new(field("reason"), e));
    }
    violations
}

/// A proto override from a request as a core override, with every problem reported as a
/// field violation under `prefix` (e.g. `override`). `id` and `author` are the server's;
/// an absent `starts_at` means `now`.
pub fn override_from_proto(
    o: &v1::Override,
    prefix: &str,
    id: String,
    author: String,
    now: DateTime<Utc>,
) -> Result<Override, Vec<FieldViolation>> {
    let mut violations = Vec::new();
    let field = |name: &str| format!("{prefix}.{name}");
    let scope = match &o.scope {
        None => {
            violations.push(FieldViolation::new(
                field("scope"),
                "one of sku or category is required",
            ));
            None
        }
        Some(v1::r#override::Scope::Sku(s)) => match Sku::new(s.clone()) {
            Ok(s) => Some(OverrideScope::Sku(s)),
            Err(e) => {
                violations.push(FieldViolation::new(field("sku"), e.to_string()));
                None
            }
        },
        Some(v1::r#override::Scope::Category(c)) => {
            let len = c.chars().count();
            if c.trim().is_empty() || len > 128 {
                violations.push(FieldViolation::new(
                    field("category"),
                    "must be 1 to 128 characters",
                ));
                None
            } else {
                Some(OverrideScope::Category(c.clone()))
            }
        }
    };
    let value = o.value.trim();
    let rate = |violations: &mut Vec<FieldViolation>| match value.parse::<Rate>() {
        Ok(r) => Some(r),
        Err(_) => {
            violations.push(FieldViolation::new(
                field("value"),
                format!(
                    "must be a decimal fraction between 0 and 1, got {}",
                    ratemesh_core::input::quote(value)
                ),
            ));
            None
        }
    };
    let kind = match v1::OverrideKind::try_from(o.kind) {
        Ok(v1::OverrideKind::Pin) => rate(&mut violations).map(|rate| OverrideKind::Pin { rate }),
        Ok(v1::OverrideKind::Floor) => {
            rate(&mut violations).map(|rate| OverrideKind::Floor { rate })
        }
        Ok(v1::OverrideKind::Cap) => rate(&mut violations).map(|rate| OverrideKind::Cap { rate }),
        Ok(v1::OverrideKind::Multiplier) => match value.parse::<Decimal>() {
            Ok(f) if f > Decimal::ZERO && f <= Override::MAX_FACTOR => {
                Some(OverrideKind::Multiplier { factor: f })
            }
            _ => {
                violations.push(FieldViolation::new(
                    field("value"),
                    format!(
                        "must be a positive factor of at most 10, got {}",
                        ratemesh_core::input::quote(value)
                    ),
                ));
                None
            }
        },
        Ok(v1::OverrideKind::Exclude) => {
            if !value.is_empty() {
                violations.push(FieldViolation::new(
                    field("value"),
                    "must be empty for EXCLUDE",
                ));
            }
            Some(OverrideKind::Exclude)
        }
        Ok(v1::OverrideKind::Unspecified) | Err(_) => {
            violations.push(FieldViolation::new(
                field("kind"),
                "must be one of PIN, FLOOR, CAP, MULTIPLIER or EXCLUDE",
            ));
            None
        }
    };
    let starts_at = match &o.starts_at {
        None => Some(now),
        Some(t) => from_timestamp(t).or_else(|| {
            violations.push(FieldViolation::new(field("starts_at"), "is out of range"));
            None
        }),
    };
    let ends_at = match &o.ends_at {
        None => Some(None),
        Some(t) => match from_timestamp(t) {
            Some(end) => Some(Some(end)),
            None => {
                violations.push(FieldViolation::new(field("ends_at"), "is out of range"));
                None
            }
        },
    };
    if let (Some(start), Some(Some(end))) = (starts_at, ends_at) {
        if end <= start {
            violations.push(FieldViolation::new(
                field("ends_at"),
                "must be after starts_at",
            ));
        } else if end <= now {
            violations.push(FieldViolation::new(
                field("ends_at"),
                "must be in the future",
            ));
        }
    }
    let reason = o.reason.trim();
    if reason.is_empty() || reason.chars().count() > 1024 {
        violations.push(FieldViolation::new(
            field("reason"),
            "must be 1 to 1024 characters",
        ));
    }
    match (scope, kind, starts_at, ends_at) {
        (Some(scope), Some(kind), Some(starts_at), Some(ends_at)) if violations.is_empty() => {
            let value = Override {
                id,
                scope,
                kind,
                starts_at,
                ends_at,
                reason: reason.to_owned(),
                author,
            };
            value.validate().map_err(|e| {
                let text = e.to_string();
                let (name, description) = text.split_once(": ").unwrap_or(("", text.as_str()));
                vec![FieldViolation::new(field(name), description)]
            })?;
            Ok(value)
        }
        _ => Err(violations),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::TimeZone;
    use ratemesh_contract::overrides::override_to_proto;
    use rust_decimal_macros::dec;

    fn t0() -> DateTime<Utc> {
        Utc.with_ymd_and_hms(2025, 3, 1, 12, 0, 0).unwrap()
    }

    #[test]
    fn overrides_round_trip_and_bad_fields_are_named() {
        let o = Override {
            id: "01J".into(),
            scope: OverrideScope::Sku(Sku::new("S-1").unwrap()),
            kind: OverrideKind::Pin {
                rate: Rate::new(dec!(0.07)).unwrap(),
            },
            starts_at: t0(),
            ends_at: Some(t0() + chrono::TimeDelta::hours(2)),
            reason: "launch".into(),
            author: "ann".into(),
        };
        let p = override_to_proto(&o);
        assert_eq!(p.value, "0.07");
        let back = override_from_proto(&p, "override", "01J".into(), "ann".into(), t0()).unwrap();
        assert_eq!(back, o);

        let mut bad = p.clone();
        bad.value = "1.5".into();
        bad.reason = String::new();
        let err =
            override_from_proto(&bad, "override", "x".into(), "ann".into(), t0()).unwrap_err();
        let fields: Vec<_> = err.iter().map(|v| v.field.as_str()).collect();
        assert_eq!(fields, ["override.value", "override.reason"]);
    }

    #[test]
    fn command_line_times_are_absolute_or_relative() {
        let at = parse_time_at("+90m", t0()).unwrap();
        assert_eq!(
            from_timestamp(&at),
            Some(t0() + chrono::TimeDelta::minutes(90))
        );
        let at = parse_time_at("2025-11-28T05:00:00Z", t0()).unwrap();
        assert_eq!(at.seconds, 1_764_306_000);
        assert!(parse_time_at("+5x", t0()).is_err());
        assert!(parse_time_at("tomorrow", t0()).is_err());
    }
}
