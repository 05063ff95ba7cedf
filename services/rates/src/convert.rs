//! Conversions between core types and the `ratemesh.v1` wire types.
//!
//! - [`card_to_proto`]: a core [`RateCard`] as the published proto card (decimals as strings,
//!   reason codes in upper snake case with their human text).
//! - [`override_to_proto`] / [`override_from_proto`]: merchandiser overrides.
//! - [`explain`]: the stored `engine` field of a `rate` state record as [`v1::RateInputs`],
//!   for `ExplainRate`.
//! - [`timestamp`] / [`from_timestamp`]: `DateTime<Utc>` ↔ `google.protobuf.Timestamp`.

use chrono::{DateTime, Utc};
use prost_types::Timestamp;
use ratemesh_core::card::PendingCut;
use ratemesh_core::overrides::ActiveOverrides;
use ratemesh_core::policy::config::Mode;
use ratemesh_core::{Override, OverrideKind, OverrideScope, Policy, Rate, RateCard, Reason, Sku};
use ratemesh_proto::v1;
use ratemesh_runtime::FieldViolation;
use rust_decimal::Decimal;

use crate::engine::record::EngineRecord;

pub use ratemesh_contract::time::{from_timestamp, to_timestamp as timestamp};

fn dec(d: Decimal) -> String {
    d.normalize().to_string()
}

/// The wire code of a reason: the core code in upper snake case (`LOW_COVER`,
/// `OVERRIDE_PIN`, …).
pub fn reason_code(reason: &Reason) -> String {
    reason.code().as_str().to_ascii_uppercase()
}

/// The code of the reason a card carries when no rule acted (its rate is the base rate).
pub const BASE_RATE_CODE: &str = "BASE_RATE";

/// Every reason code a published card can carry: core's codes in upper snake case and
/// [`BASE_RATE_CODE`]. The `Reason.code` comment in `proto/ratemesh/v1/common.proto`
/// lists exactly these (checked by a test).
pub fn emitted_reason_codes() -> Vec<String> {
    let mut codes: Vec<String> = ratemesh_core::ReasonCode::ALL
        .iter()
        .map(|c| c.as_str().to_ascii_uppercase())
        .collect();
    codes.push(BASE_RATE_CODE.to_owned());
    codes
}

/// The proto reason: code and human text.
pub fn reason_to_proto(reason: &Reason) -> v1::Reason {
    v1::Reason {
        code: reason_code(reason),
        text: reason.text(),
    }
}

/// Name of the band a card's state points at, if the SKU has one.
pub fn band_name(policy: &Policy, category: &str, card: &RateCard) -> String {
    let Some(position) = card.state.band else {
        return String::new();
    };
    let cat = policy.category(category);
    let table = match position.table {
        0 => Some(&cat.bands),
        n => cat.peak_bands.get(n as usize - 1),
    };
    table
        .and_then(|t| t.get(position.index as usize))
        .map(|b| b.name.clone())
        .unwrap_or_default()
}

/// The published proto card for a core card.
///
/// `version` is the published version (it grows by one per publication, see
/// [`crate::engine`]); `previous_rate` is the effective rate of the previous publication.
pub fn card_to_proto(
    policy: &Policy,
    card: &RateCard,
    category: &str,
    version: u64,
    previous_rate: Option<Rate>,
) -> v1::RateCard {
    let mut reasons: Vec<v1::Reason> = card.reasons.iter().map(reason_to_proto).collect();
    if reasons.is_empty() {
        reasons.push(v1::Reason {
            code: BASE_RATE_CODE.into(),
            text: format!(
                "base rate of {} % applies",
                (card.parts.base.get() * Decimal::ONE_HUNDRED).normalize()
            ),
        });
    }
    let p = &card.parts;
    v1::RateCard {
        sku: card.sku.to_string(),
        category: category.to_owned(),
        effective_rate: dec(card.effective_rate.get()),
        parts: Some(v1::RateParts {
            base: dec(p.base.get()),
            inventory_adjustment: dec(p.inventory_adjustment),
            boost: dec(p.boost),
            incentive: dec(p.incentive),
            override_adjustment: dec(p.overrides),
            guardrail_adjustment: dec(p.guardrails),
        }),
        reasons,
        version,
        computed_at: Some(timestamp(card.computed_at)),
        guaranteed_until: card.guaranteed_until.map(timestamp),
        previous_rate: previous_rate.map(|r| dec(r.get())).unwrap_or_default(),
        band: band_name(policy, category, card),
        scheduled_change: None,
    }
}

/// The proto form of an announced base cut: the new base, when, and the effective rate
/// `forecast` the card will have then if nothing else changes.
pub fn scheduled_change_to_proto(cut: &PendingCut, forecast: Rate) -> v1::ScheduledChange {
    v1::ScheduledChange {
        base_rate: dec(cut.to.get()),
        effective_at: Some(timestamp(cut.effective_at)),
        rate: dec(forecast.get()),
    }
}

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

/// A core override as proto (output fields `created_at` and `status` are the caller's).
pub fn override_to_proto(o: &Override) -> v1::Override {
    let (kind, value) = match &o.kind {
        OverrideKind::Pin { rate } => (v1::OverrideKind::Pin, dec(rate.get())),
        OverrideKind::Floor { rate } => (v1::OverrideKind::Floor, dec(rate.get())),
        OverrideKind::Cap { rate } => (v1::OverrideKind::Cap, dec(rate.get())),
        OverrideKind::Multiplier { factor } => (v1::OverrideKind::Multiplier, dec(*factor)),
        OverrideKind::Exclude => (v1::OverrideKind::Exclude, String::new()),
    };
    v1::Override {
        id: o.id.clone(),
        scope: Some(match &o.scope {
            OverrideScope::Sku(s) => v1::r#override::Scope::Sku(s.to_string()),
            OverrideScope::Category(c) => v1::r#override::Scope::Category(c.clone()),
        }),
        kind: kind as i32,
        value,
        starts_at: Some(timestamp(o.starts_at)),
        ends_at: o.ends_at.map(timestamp),
        reason: o.reason.clone(),
        author: o.author.clone(),
        created_at: None,
        status: v1::OverrideStatus::Unspecified as i32,
    }
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

/// A stored proto override (as written by the override service) as a core override.
/// `None` when it does not decode (never written by this crate). Validated as of its own
/// start, so an override that has ended since still decodes.
pub fn override_from_stored(o: &v1::Override) -> Option<Override> {
    let at = o.starts_at.as_ref().and_then(from_timestamp)?;
    override_from_proto(o, "override", o.id.clone(), o.author.clone(), at).ok()
}

/// The inputs a stored card was computed from, for `ExplainRate`: pass the `engine` field
/// of the SKU's `rate` state record, the program's category overrides in force (may be
/// empty), the policy and `now`. `None` when the field does not decode.
pub fn explain(
    engine_field: &[u8],
    category_overrides: &[Override],
    policy: &Policy,
    now: DateTime<Utc>,
) -> Option<v1::RateInputs> {
    let record = EngineRecord::decode(engine_field).ok()?;
    Some(inputs_to_proto(&record, category_overrides, policy, now))
}

fn inputs_to_proto(
    record: &EngineRecord,
    category_overrides: &[Override],
    policy: &Policy,
    now: DateTime<Utc>,
) -> v1::RateInputs {
    let state = &record.state;
    let inputs = state.inputs_with(category_overrides);
    let category = state
        .product
        .as_ref()
        .map(|p| p.category.clone())
        .unwrap_or_default();
    let velocity = inputs.velocity;
    let erp = state.velocity.estimate() != velocity && velocity.is_some();
    let days = velocity.filter(|v| !v.get().is_zero()).map(|v| {
        ratemesh_core::DaysOfCover::from_stock(inputs.available, v)
            .get()
            .round_dp(2)
    });
    let at = record.card.as_ref().map_or(now, |c| c.computed_at);
    let active = ActiveOverrides::resolve(
        state.overrides.overrides.iter().chain(category_overrides),
        &state.sku,
        &category,
        at,
    );
    let mut overrides = Vec::new();
    for o in [active.exclude]
        .into_iter()
        .chain([
            active.pin.map(|p| p.0),
            active.multiplier.map(|p| p.0),
            active.floor.map(|p| p.0),
            active.cap.map(|p| p.0),
        ])
        .flatten()
    {
        let mut p = override_to_proto(o);
        p.status = v1::OverrideStatus::Active as i32;
        overrides.push(p);
    }
    let incentive = state
        .incentive
        .as_ref()
        .filter(|i| i.is_active(at))
        .map(|i| v1::Incentive {
            id: i.id.clone(),
            sku: i.sku.to_string(),
            category: i.category.clone(),
            bonus_rate: dec(i.bonus.get()),
            starts_at: Some(timestamp(i.opened_at)),
            ends_at: Some(timestamp(i.ends_at)),
            spent: dec(i.spent.get()),
            units_sold: dec(i.units_sold.get()),
            budget_spend: Some(dec(i.budget_spend.get())),
            budget_units: Some(dec(i.budget_units.get())),
            units_over_budget: dec(i.units_over_budget().get()),
            spend_over_budget: dec(i.spend_over_budget().get()),
            state: v1::IncentiveState::Active as i32,
            origin: if i.manual {
                v1::IncentiveOrigin::Manual
            } else {
                v1::IncentiveOrigin::Automatic
            } as i32,
            ..Default::default()
        });
    // Where the policy wants the rate while it is held or damped, and when it may move.
    let (mut target, mut may_move_at) = (None, None);
    for reason in record.card.iter().flat_map(|c| &c.reasons) {
        match reason {
            Reason::Held { target: t, until } => {
                target = Some(*t);
                may_move_at = Some(*until);
            }
            Reason::Damped { target: t, .. } => target = target.or(Some(*t)),
            _ => {}
        }
    }
    v1::RateInputs {
        product: state.product.as_ref().map(|p| v1::Product {
            sku: state.sku.to_string(),
            category: p.category.clone(),
            price: dec(p.price.get()),
            unit_cost: dec(p.unit_cost.get()),
            base_rate: p.base_rate.map(|r| dec(r.get())),
            currency: String::new(),
            title: None,
            as_of: state.product_at.map(timestamp),
        }),
        available: dec(inputs.available.get()),
        locations: state
            .stock
            .iter()
            .map(|(location, level)| v1::LocationStock {
                location: location.clone(),
                on_hand: dec(level.on_hand.get()),
                reserved: dec(level.reserved.get()),
                as_of: Some(timestamp(level.as_of)),
                sequence: level.sequence,
            })
            .collect(),
        velocity: velocity.map(|v| dec(v.get())).unwrap_or_default(),
        velocity_source: match (velocity, erp) {
            (None, _) => v1::VelocitySource::None,
            (Some(_), true) => v1::VelocitySource::Erp,
            (Some(_), false) => v1::VelocitySource::Observed,
        } as i32,
        days_of_cover: days.map(dec).unwrap_or_default(),
        band: record
            .card
            .as_ref()
            .map(|c| band_name(policy, &category, c))
            .unwrap_or_default(),
        peak_window: policy
            .peak_window_at(at)
            .map(|(_, w)| w.name.clone())
            .unwrap_or_default(),
        overrides,
        incentive,
        policy_mode: match policy.mode {
            Mode::Direct => v1::PolicyMode::Direct,
            Mode::Boost => v1::PolicyMode::Boost,
        } as i32,
        target_rate: target.map(|t| dec(t.get())).unwrap_or_default(),
        may_move_at: may_move_at.map(timestamp),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::TimeZone;
    use ratemesh_core::Money;
    use ratemesh_core::{Product, compute};
    use rust_decimal_macros::dec;

    fn t0() -> DateTime<Utc> {
        Utc.with_ymd_and_hms(2025, 3, 1, 12, 0, 0).unwrap()
    }

    /// The codes listed in the doc comment of `ratemesh.v1.Reason.code`, as compiled into
    /// the descriptor set from `proto/ratemesh/v1/common.proto`.
    fn documented_reason_codes() -> std::collections::BTreeSet<String> {
        use prost::Message as _;
        let fds =
            prost_types::FileDescriptorSet::decode(ratemesh_proto::FILE_DESCRIPTOR_SET).unwrap();
        let file = fds
            .file
            .iter()
            .find(|f| f.name().ends_with("ratemesh/v1/common.proto"))
            .expect("common.proto");
        let message = file
            .message_type
            .iter()
            .position(|m| m.name() == "Reason")
            .expect("Reason");
        let field = file.message_type[message]
            .field
            .iter()
            .position(|f| f.name() == "code")
            .expect("Reason.code");
        // SourceCodeInfo path: message_type (4), index, field (2), index.
        let path = [4, message as i32, 2, field as i32];
        let comment = file
            .source_code_info
            .as_ref()
            .and_then(|info| info.location.iter().find(|l| l.path == path))
            .map(|l| l.leading_comments().to_owned())
            .expect("Reason.code has a comment");
        comment
            .lines()
            .filter_map(|line| line.trim().strip_prefix("- "))
            .filter_map(|item| item.split_once(':').map(|(codes, _)| codes))
            .flat_map(|codes| codes.split(',').map(|c| c.trim().to_owned()))
            .collect()
    }

    #[test]
    fn the_contract_lists_exactly_the_reason_codes_a_card_can_carry() {
        let emitted: std::collections::BTreeSet<String> =
            emitted_reason_codes().into_iter().collect();
        let documented = documented_reason_codes();
        let undocumented: Vec<_> = emitted.difference(&documented).collect();
        let never_emitted: Vec<_> = documented.difference(&emitted).collect();
        assert!(
            undocumented.is_empty() && never_emitted.is_empty(),
            "Reason.code in common.proto: missing {undocumented:?}, never emitted {never_emitted:?}"
        );
        // and every core reason maps to one of them
        let card_code = reason_code(&Reason::NoVelocityData);
        assert!(documented.contains(&card_code));
    }

    #[test]
    fn card_carries_decimals_as_strings_and_reason_codes() {
        let policy = Policy::example();
        let sku = Sku::new("S-1").unwrap();
        let mut state = ratemesh_core::SkuState::new(sku.clone(), &policy.velocity);
        state.product = Some(Product {
            category: "home".into(),
            price: Money::new(dec!(100)).unwrap(),
            unit_cost: Money::new(dec!(40)).unwrap(),
            base_rate: None,
        });
        let card = compute(&policy, &state.inputs(), None, t0());
        let proto = card_to_proto(&policy, &card, "home", 1, None);
        assert_eq!(proto.sku, "S-1");
        assert_eq!(proto.effective_rate, "0.06");
        assert_eq!(proto.parts.as_ref().unwrap().base, "0.06");
        assert_eq!(proto.version, 1);
        assert_eq!(proto.previous_rate, "");
        // out of stock (nothing observed yet) is a reason with its text
        assert_eq!(proto.reasons[0].code, "OUT_OF_STOCK");
        assert!(proto.reasons[0].text.contains("out of stock"));
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
        assert_eq!(override_from_stored(&p), Some(o));

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
