//! The overrides stream: `OverrideChanged`, written by rates' `OverrideService` on every
//! change to a merchandiser override (set, replace, clear, expire) and folded into rate
//! cards by rates' engine; and the stored `ratemesh.v1.Override` ⇄ core [`Override`] it
//! and the override records carry.
//!
//! This is structure only: what an override written by the service reads back as. The
//! checks on a merchandiser's request (which field is wrong and how it is reported to
//! the caller) are the override service's.

use chrono::{DateTime, Utc};
use prost::Message;
use ratemesh_core::{Event, Override, OverrideKind, OverrideScope, Rate, Sku};
use ratemesh_proto::v1;
use rust_decimal::Decimal;

use crate::DecodeError;
use crate::header::{meta, occurred_at};
use crate::kinds::OVERRIDE_CHANGED;
use crate::time::{from_timestamp, required, to_timestamp};

fn decimal(d: Decimal) -> String {
    d.normalize().to_string()
}

/// A core override as proto. The output fields `created_at` and `status` are left unset
/// for the caller, who knows the override's lifecycle.
pub fn override_to_proto(o: &Override) -> v1::Override {
    let (kind, value) = match &o.kind {
        OverrideKind::Pin { rate } => (v1::OverrideKind::Pin, decimal(rate.get())),
        OverrideKind::Floor { rate } => (v1::OverrideKind::Floor, decimal(rate.get())),
        OverrideKind::Cap { rate } => (v1::OverrideKind::Cap, decimal(rate.get())),
        OverrideKind::Multiplier { factor } => (v1::OverrideKind::Multiplier, decimal(*factor)),
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
        starts_at: Some(to_timestamp(o.starts_at)),
        ends_at: o.ends_at.map(to_timestamp),
        reason: o.reason.clone(),
        author: o.author.clone(),
        created_at: None,
        status: v1::OverrideStatus::Unspecified as i32,
    }
}

/// A stored proto override (an override record's, or an `OverrideChanged`'s) as the core
/// override, with the offending field named under `override.` when it does not decode.
pub fn override_from_proto(o: &v1::Override) -> Result<Override, DecodeError> {
    from_proto(o, "override")
}

fn from_proto(o: &v1::Override, prefix: &str) -> Result<Override, DecodeError> {
    let field = |name: &str| format!("{prefix}.{name}");
    let scope = match &o.scope {
        None => return Err(DecodeError::field(&field("scope"), "missing")),
        Some(v1::r#override::Scope::Sku(s)) => OverrideScope::Sku(
            Sku::new(s.clone()).map_err(|e| DecodeError::field(&field("sku"), e))?,
        ),
        Some(v1::r#override::Scope::Category(c)) => OverrideScope::Category(c.clone()),
    };
    let value = o.value.trim();
    let rate = || {
        value
            .parse::<Rate>()
            .map_err(|e| DecodeError::field(&field("value"), e))
    };
    let kind = match v1::OverrideKind::try_from(o.kind) {
        Ok(v1::OverrideKind::Pin) => OverrideKind::Pin { rate: rate()? },
        Ok(v1::OverrideKind::Floor) => OverrideKind::Floor { rate: rate()? },
        Ok(v1::OverrideKind::Cap) => OverrideKind::Cap { rate: rate()? },
        Ok(v1::OverrideKind::Multiplier) => match value.parse::<Decimal>() {
            Ok(factor) if factor > Decimal::ZERO => OverrideKind::Multiplier { factor },
            _ => {
                return Err(DecodeError::field(
                    &field("value"),
                    format!("not a positive factor ({value:?})"),
                ));
            }
        },
        Ok(v1::OverrideKind::Exclude) => OverrideKind::Exclude,
        Ok(v1::OverrideKind::Unspecified) | Err(_) => {
            return Err(DecodeError::field(
                &field("kind"),
                format!("unspecified or unknown ({})", o.kind),
            ));
        }
    };
    let ends_at = match &o.ends_at {
        None => None,
        Some(t) => Some(
            from_timestamp(t)
                .ok_or_else(|| DecodeError::field(&field("ends_at"), "out of range"))?,
        ),
    };
    let value = Override {
        id: o.id.clone(),
        scope,
        kind,
        starts_at: required(o.starts_at.as_ref(), &field("starts_at"))?,
        ends_at,
        reason: o.reason.clone(),
        author: o.author.clone(),
    };
    // The core's own rules, whose messages are `field: problem`.
    value
        .validate()
        .map_err(|e| DecodeError(format!("{prefix}.{e}")))?;
    Ok(value)
}

/// The `overrides` stream entry recording that `action` took an override from `before`
/// (absent for SET) to `after` at `at`, by `author` for `reason`; keyed by the override's
/// id. `before` and `after` are the override as the service shows it then, output fields
/// included.
pub fn override_changed(
    action: v1::OverrideAction,
    before: Option<v1::Override>,
    after: v1::Override,
    author: &str,
    reason: &str,
    at: DateTime<Utc>,
) -> ratemesh_bus::Event {
    let key = after.id.clone();
    let message = v1::OverrideChanged {
        meta: Some(meta(at)),
        action: action as i32,
        before,
        after: Some(after),
        author: author.to_owned(),
        reason: reason.to_owned(),
    };
    ratemesh_bus::Event::new(key, message.encode_to_vec()).with_kind(OVERRIDE_CHANGED)
}

/// The core event an `OverrideChanged` payload stands for (`OverrideSet` for SET, else
/// `OverrideCleared`), with the scope it applies to, which a reader routes it by.
pub fn decode(payload: &[u8]) -> Result<(OverrideScope, Event), DecodeError> {
    let m = v1::OverrideChanged::decode(payload)
        .map_err(|e| DecodeError(format!("OverrideChanged does not decode: {e}")))?;
    let at = occurred_at(m.meta.as_ref())?;
    let action = v1::OverrideAction::try_from(m.action).unwrap_or(v1::OverrideAction::Unspecified);
    let value = match (&m.after, &m.before) {
        (Some(after), _) => from_proto(after, "after")?,
        (None, Some(before)) => from_proto(before, "before")?,
        (None, None) => return Err(DecodeError::field("after", "missing")),
    };
    let scope = value.scope.clone();
    let event = match action {
        v1::OverrideAction::Set => Event::OverrideSet { value, at },
        v1::OverrideAction::Replace | v1::OverrideAction::Clear | v1::OverrideAction::Expire => {
            Event::OverrideCleared {
                id: value.id,
                scope: scope.clone(),
                at,
            }
        }
        v1::OverrideAction::Unspecified => {
            return Err(DecodeError::field("action", "unspecified"));
        }
    };
    Ok((scope, event))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(s: i64) -> DateTime<Utc> {
        DateTime::from_timestamp(1_700_000_000 + s, 0).unwrap()
    }

    fn pin() -> Override {
        Override {
            id: "01J".into(),
            scope: OverrideScope::Sku(Sku::new("SKU-1").unwrap()),
            kind: OverrideKind::Pin {
                rate: "0.070".parse().unwrap(),
            },
            starts_at: at(0),
            ends_at: Some(at(7200)),
            reason: "launch".into(),
            author: "ann".into(),
        }
    }

    #[test]
    fn every_kind_and_scope_round_trips() {
        let kinds = [
            pin().kind,
            OverrideKind::Floor {
                rate: "0.02".parse().unwrap(),
            },
            OverrideKind::Cap {
                rate: "0.1".parse().unwrap(),
            },
            OverrideKind::Multiplier {
                factor: "1.50".parse().unwrap(),
            },
            OverrideKind::Exclude,
        ];
        for kind in kinds {
            for scope in [
                OverrideScope::Sku(Sku::new("SKU-1").unwrap()),
                OverrideScope::Category("home".into()),
            ] {
                let o = Override {
                    kind: kind.clone(),
                    scope,
                    ends_at: None,
                    ..pin()
                };
                assert_eq!(override_from_proto(&override_to_proto(&o)), Ok(o));
            }
        }
        assert_eq!(override_to_proto(&pin()).value, "0.07");
    }

    #[test]
    fn what_the_service_publishes_decodes_as_the_core_event() {
        let o = pin();
        let entry = override_changed(
            v1::OverrideAction::Set,
            None,
            override_to_proto(&o),
            "ann",
            "launch",
            at(5),
        );
        assert_eq!(entry.key, "01J");
        assert_eq!(entry.kind.as_deref(), Some(OVERRIDE_CHANGED));
        assert_eq!(
            decode(&entry.payload),
            Ok((
                o.scope.clone(),
                Event::OverrideSet {
                    value: o.clone(),
                    at: at(5),
                }
            ))
        );

        let category = Override {
            scope: OverrideScope::Category("home".into()),
            ..o
        };
        let proto = override_to_proto(&category);
        let entry = override_changed(
            v1::OverrideAction::Expire,
            Some(proto.clone()),
            proto,
            "system",
            "",
            at(7200),
        );
        assert_eq!(
            decode(&entry.payload),
            Ok((
                category.scope.clone(),
                Event::OverrideCleared {
                    id: "01J".into(),
                    scope: category.scope,
                    at: at(7200),
                }
            ))
        );
    }

    #[test]
    fn a_malformed_override_names_its_field() {
        let mut proto = override_to_proto(&pin());
        proto.value = "1.5".into();
        let err = override_from_proto(&proto).unwrap_err();
        assert!(err.0.starts_with("override.value: "), "{err}");

        let mut proto = override_to_proto(&pin());
        proto.ends_at = Some(to_timestamp(at(0)));
        assert_eq!(
            override_from_proto(&proto).unwrap_err().0,
            "override.ends_at: must be after starts_at"
        );

        let mut proto = override_to_proto(&pin());
        proto.kind = v1::OverrideKind::Multiplier as i32;
        proto.value = "0".into();
        assert_eq!(
            override_from_proto(&proto).unwrap_err().0,
            "override.value: not a positive factor (\"0\")"
        );

        let mut proto = override_to_proto(&pin());
        proto.scope = None;
        let entry = override_changed(v1::OverrideAction::Set, None, proto, "ann", "x", at(0));
        assert_eq!(
            decode(&entry.payload).unwrap_err().0,
            "after.scope: missing"
        );

        let mut proto = override_to_proto(&pin());
        proto.kind = v1::OverrideKind::Unspecified as i32;
        let entry = override_changed(
            v1::OverrideAction::Clear,
            Some(override_to_proto(&pin())),
            proto,
            "ann",
            "x",
            at(0),
        );
        assert_eq!(
            decode(&entry.payload).unwrap_err().0,
            "after.kind: unspecified or unknown (0)"
        );
    }

    #[test]
    fn a_malformed_entry_names_what_is_wrong() {
        let entry = override_changed(
            v1::OverrideAction::Unspecified,
            None,
            override_to_proto(&pin()),
            "ann",
            "x",
            at(0),
        );
        assert_eq!(decode(&entry.payload).unwrap_err().0, "action: unspecified");

        let no_subject = v1::OverrideChanged {
            meta: Some(meta(at(0))),
            action: v1::OverrideAction::Clear as i32,
            ..Default::default()
        };
        assert_eq!(
            decode(&no_subject.encode_to_vec()).unwrap_err().0,
            "after: missing"
        );

        let no_meta = v1::OverrideChanged {
            action: v1::OverrideAction::Set as i32,
            after: Some(override_to_proto(&pin())),
            ..Default::default()
        };
        assert_eq!(
            decode(&no_meta.encode_to_vec()).unwrap_err().0,
            "meta.occurred_at: missing or out of range"
        );

        assert!(
            decode(b"\xff\xff")
                .unwrap_err()
                .0
                .starts_with("OverrideChanged does not decode")
        );
    }
}
