//! Merchandiser overrides: pin, floor, cap, multiplier and exclude, scoped to a SKU or a
//! category and bounded in time.
//!
//! # Precedence
//!
//! Overrides act on the rate the policy produced (base, inventory adjustment or boost,
//! plus any flash incentive), after damping and before the guardrails:
//!
//! 1. **exclude** — the rate is 0 and nothing else applies, not even the policy floor.
//! 2. **pin** — the rate is the pinned value; multiplier, floor and cap overrides are
//!    ignored. The policy guardrails (floor, cap, margin guard) still apply after it.
//! 3. **multiplier** — the rate is multiplied by the factor;
//! 4. then **floor** — raised to at least the floor;
//! 5. then **cap** — lowered to at most the cap (so a cap wins over a floor above it).
//!
//! Where several overrides of one kind are active for a SKU, one is chosen: a SKU-scoped
//! override beats a category-scoped one, then the later `starts_at`, then the greater
//! `id`. Such overlaps within one scope are reported by [`find_conflicts`], never merged
//! silently; the choice above only keeps the rate defined until a merchandiser resolves
//! them.

use std::collections::BTreeMap;

use chrono::{DateTime, Utc};
use rust_decimal::Decimal;
use serde::{Deserialize, Serialize};
use thiserror::Error;

use crate::types::{Rate, Sku};

/// What an override applies to.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum OverrideScope {
    /// One SKU.
    Sku(Sku),
    /// Every SKU whose product is in this category.
    Category(String),
}

/// What an override does.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum OverrideKind {
    /// Set the rate to exactly this.
    Pin {
        /// The pinned rate.
        rate: Rate,
    },
    /// Never below this.
    Floor {
        /// The floor.
        rate: Rate,
    },
    /// Never above this.
    Cap {
        /// The cap.
        rate: Rate,
    },
    /// Multiply the policy rate by this factor (0 to 10).
    Multiplier {
        /// The factor.
        factor: Decimal,
    },
    /// No commission at all.
    Exclude,
}

/// A merchandiser override.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Override {
    /// Unique id, chosen by whoever creates it.
    pub id: String,
    /// SKU or category.
    pub scope: OverrideScope,
    /// What it does.
    pub kind: OverrideKind,
    /// First instant it is active.
    pub starts_at: DateTime<Utc>,
    /// First instant it is no longer active; open-ended when absent.
    #[serde(default)]
    pub ends_at: Option<DateTime<Utc>>,
    /// Why (shown in explanations).
    pub reason: String,
    /// Who set it.
    pub author: String,
}

/// Why an override was rejected.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum OverrideError {
    /// A required text field was empty.
    #[error("{0}: must not be empty")]
    Empty(&'static str),
    /// The id was longer than 128 characters.
    #[error("id: must be at most 128 characters")]
    IdTooLong,
    /// The window ends before it starts.
    #[error("ends_at: must be after starts_at")]
    EndsBeforeStart,
    /// A multiplier outside 0..=10.
    #[error("kind.factor: must be between 0 and 10, got {0}")]
    Factor(Decimal),
}

impl Override {
    /// The largest multiplier accepted.
    pub const MAX_FACTOR: Decimal = Decimal::TEN;

    /// Checks the fields the types cannot: non-empty texts, a sane window and factor.
    pub fn validate(&self) -> Result<(), OverrideError> {
        if self.id.trim().is_empty() {
            return Err(OverrideError::Empty("id"));
        }
        if self.id.chars().count() > 128 {
            return Err(OverrideError::IdTooLong);
        }
        if self.reason.trim().is_empty() {
            return Err(OverrideError::Empty("reason"));
        }
        if self.author.trim().is_empty() {
            return Err(OverrideError::Empty("author"));
        }
        if let OverrideScope::Category(c) = &self.scope
            && c.trim().is_empty()
        {
            return Err(OverrideError::Empty("scope.category"));
        }
        if self.ends_at.is_some_and(|end| end <= self.starts_at) {
            return Err(OverrideError::EndsBeforeStart);
        }
        if let OverrideKind::Multiplier { factor } = self.kind
            && (factor < Decimal::ZERO || factor > Self::MAX_FACTOR)
        {
            return Err(OverrideError::Factor(factor));
        }
        Ok(())
    }

    /// Whether the override is in force at `now` (`starts_at <= now < ends_at`).
    pub fn is_active(&self, now: DateTime<Utc>) -> bool {
        self.starts_at <= now && self.ends_at.is_none_or(|end| now < end)
    }

    /// Whether it has ended by `now` and can be forgotten.
    pub fn has_ended(&self, now: DateTime<Utc>) -> bool {
        self.ends_at.is_some_and(|end| end <= now)
    }

    /// Whether it applies to `sku` in `category`.
    pub fn applies_to(&self, sku: &Sku, category: &str) -> bool {
        match &self.scope {
            OverrideScope::Sku(s) => s == sku,
            OverrideScope::Category(c) => c == category,
        }
    }

    fn overlap(&self, other: &Override) -> Option<(DateTime<Utc>, Option<DateTime<Utc>>)> {
        let start = self.starts_at.max(other.starts_at);
        let end = match (self.ends_at, other.ends_at) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        };
        match end {
            Some(e) if e <= start => None,
            _ => Some((start, end)),
        }
    }

    /// Ranking among overrides of one kind: SKU scope first, then later start, then id.
    fn outranks(&self, other: &Override) -> bool {
        let key = |o: &Override| (matches!(o.scope, OverrideScope::Sku(_)), o.starts_at);
        match key(self).cmp(&key(other)) {
            std::cmp::Ordering::Equal => self.id > other.id,
            ord => ord.is_gt(),
        }
    }
}

/// The overrides in force for one SKU at one instant, one per kind, chosen by the
/// documented precedence. Borrowed, so resolving allocates nothing.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct ActiveOverrides<'a> {
    /// Chosen exclude.
    pub exclude: Option<&'a Override>,
    /// Chosen pin and its rate.
    pub pin: Option<(&'a Override, Rate)>,
    /// Chosen multiplier and its factor.
    pub multiplier: Option<(&'a Override, Decimal)>,
    /// Chosen floor and its rate.
    pub floor: Option<(&'a Override, Rate)>,
    /// Chosen cap and its rate.
    pub cap: Option<(&'a Override, Rate)>,
}

impl<'a> ActiveOverrides<'a> {
    /// Picks, per kind, the override that wins among those active at `now` that apply to
    /// `sku` in `category`.
    pub fn resolve(
        overrides: impl IntoIterator<Item = &'a Override>,
        sku: &Sku,
        category: &str,
        now: DateTime<Utc>,
    ) -> Self {
        fn pick<'a, T: Copy>(slot: &mut Option<(&'a Override, T)>, o: &'a Override, v: T) {
            if slot.is_none_or(|(cur, _)| o.outranks(cur)) {
                *slot = Some((o, v));
            }
        }
        let mut out = ActiveOverrides::default();
        for o in overrides {
            if !o.is_active(now) || !o.applies_to(sku, category) {
                continue;
            }
            match &o.kind {
                OverrideKind::Exclude => {
                    if out.exclude.is_none_or(|cur| o.outranks(cur)) {
                        out.exclude = Some(o);
                    }
                }
                OverrideKind::Pin { rate } => pick(&mut out.pin, o, *rate),
                OverrideKind::Multiplier { factor } => pick(&mut out.multiplier, o, *factor),
                OverrideKind::Floor { rate } => pick(&mut out.floor, o, *rate),
                OverrideKind::Cap { rate } => pick(&mut out.cap, o, *rate),
            }
        }
        out
    }

    /// Whether any override is in force.
    pub fn is_empty(&self) -> bool {
        self.exclude.is_none()
            && self.pin.is_none()
            && self.multiplier.is_none()
            && self.floor.is_none()
            && self.cap.is_none()
    }
}

/// Why two overlapping overrides conflict.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ConflictKind {
    /// A pin overlaps a different override (another pin with another rate, or any
    /// floor, cap, multiplier or exclude).
    PinWithOther,
    /// An exclude overlaps a non-exclude override.
    ExcludeWithOther,
    /// Two overrides of one kind with different values.
    SameKindDifferentValue,
    /// A floor above a cap.
    FloorAboveCap,
}

/// Two overrides of the same scope whose windows overlap and whose kinds conflict.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct OverrideConflict {
    /// The shared scope.
    pub scope: OverrideScope,
    /// Id of the override that starts first (then the smaller id).
    pub first: String,
    /// Id of the other override.
    pub second: String,
    /// Start of the overlap.
    pub overlap_starts_at: DateTime<Utc>,
    /// End of the overlap; open-ended when absent.
    pub overlap_ends_at: Option<DateTime<Utc>>,
    /// What conflicts.
    pub kind: ConflictKind,
}

impl OverrideConflict {
    /// Human text for the report.
    pub fn text(&self) -> String {
        let what = match self.kind {
            ConflictKind::PinWithOther => "a pin overlaps another override",
            ConflictKind::ExcludeWithOther => "an exclude overlaps another override",
            ConflictKind::SameKindDifferentValue => {
                "two overrides of one kind set different values"
            }
            ConflictKind::FloorAboveCap => "a floor is above a cap",
        };
        format!(
            "overrides {} and {} conflict: {what}",
            self.first, self.second
        )
    }
}

fn conflict_kind(a: &OverrideKind, b: &OverrideKind) -> Option<ConflictKind> {
    use OverrideKind as K;
    match (a, b) {
        (K::Exclude, K::Exclude) => None,
        (K::Pin { rate: x }, K::Pin { rate: y }) => (x != y).then_some(ConflictKind::PinWithOther),
        (K::Pin { .. }, _) | (_, K::Pin { .. }) => Some(ConflictKind::PinWithOther),
        (K::Exclude, _) | (_, K::Exclude) => Some(ConflictKind::ExcludeWithOther),
        (K::Floor { rate: x }, K::Floor { rate: y }) | (K::Cap { rate: x }, K::Cap { rate: y }) => {
            (x != y).then_some(ConflictKind::SameKindDifferentValue)
        }
        (K::Multiplier { factor: x }, K::Multiplier { factor: y }) => {
            (x != y).then_some(ConflictKind::SameKindDifferentValue)
        }
        (K::Floor { rate: f }, K::Cap { rate: c }) | (K::Cap { rate: c }, K::Floor { rate: f }) => {
            (f > c).then_some(ConflictKind::FloorAboveCap)
        }
        (K::Multiplier { .. }, K::Floor { .. } | K::Cap { .. })
        | (K::Floor { .. } | K::Cap { .. }, K::Multiplier { .. }) => None,
    }
}

/// Every pair of overrides with the same scope, overlapping windows and conflicting
/// kinds, sorted by scope and then by the pair's ids. Compatible overlaps (a floor below a
/// cap, a multiplier with a floor, identical duplicates) are not reported.
pub fn find_conflicts(overrides: &[Override]) -> Vec<OverrideConflict> {
    let mut by_scope: BTreeMap<&OverrideScope, Vec<&Override>> = BTreeMap::new();
    for o in overrides {
        by_scope.entry(&o.scope).or_default().push(o);
    }
    let mut out = Vec::new();
    for (scope, mut group) in by_scope {
        group.sort_by(|a, b| (a.starts_at, &a.id).cmp(&(b.starts_at, &b.id)));
        for (i, a) in group.iter().enumerate() {
            for b in &group[i + 1..] {
                if a.id == b.id {
                    continue;
                }
                let Some((from, until)) = a.overlap(b) else {
                    continue;
                };
                if let Some(kind) = conflict_kind(&a.kind, &b.kind) {
                    out.push(OverrideConflict {
                        scope: scope.clone(),
                        first: a.id.clone(),
                        second: b.id.clone(),
                        overlap_starts_at: from,
                        overlap_ends_at: until,
                        kind,
                    });
                }
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::{TimeDelta, TimeZone};
    use rust_decimal_macros::dec;

    fn t(h: i64) -> DateTime<Utc> {
        Utc.with_ymd_and_hms(2025, 6, 1, 0, 0, 0).unwrap() + TimeDelta::hours(h)
    }
    fn sku(s: &str) -> Sku {
        Sku::new(s).unwrap()
    }
    fn rate(d: Decimal) -> Rate {
        Rate::new(d).unwrap()
    }
    fn ov(
        id: &str,
        scope: OverrideScope,
        kind: OverrideKind,
        from: i64,
        to: Option<i64>,
    ) -> Override {
        Override {
            id: id.into(),
            scope,
            kind,
            starts_at: t(from),
            ends_at: to.map(t),
            reason: "test".into(),
            author: "tester".into(),
        }
    }

    #[test]
    fn validation_names_the_field() {
        let mut o = ov(
            "a",
            OverrideScope::Sku(sku("S1")),
            OverrideKind::Exclude,
            0,
            Some(1),
        );
        assert_eq!(o.validate(), Ok(()));
        o.author = " ".into();
        assert_eq!(
            o.validate().unwrap_err().to_string(),
            "author: must not be empty"
        );
        o.author = "me".into();
        o.ends_at = Some(t(0));
        assert_eq!(
            o.validate().unwrap_err().to_string(),
            "ends_at: must be after starts_at"
        );
        o.ends_at = None;
        o.kind = OverrideKind::Multiplier { factor: dec!(11) };
        assert_eq!(o.validate(), Err(OverrideError::Factor(dec!(11))));
    }

    #[test]
    fn windows_are_half_open() {
        let o = ov(
            "a",
            OverrideScope::Sku(sku("S1")),
            OverrideKind::Exclude,
            1,
            Some(2),
        );
        assert!(!o.is_active(t(0)));
        assert!(o.is_active(t(1)));
        assert!(!o.is_active(t(2)));
        assert!(o.has_ended(t(2)));
    }

    #[test]
    fn sku_scope_beats_category_then_later_start_then_id() {
        let s = sku("S1");
        let list = vec![
            ov(
                "cat",
                OverrideScope::Category("home".into()),
                OverrideKind::Pin {
                    rate: rate(dec!(0.1)),
                },
                5,
                None,
            ),
            ov(
                "old",
                OverrideScope::Sku(s.clone()),
                OverrideKind::Pin {
                    rate: rate(dec!(0.2)),
                },
                0,
                None,
            ),
            ov(
                "b",
                OverrideScope::Sku(s.clone()),
                OverrideKind::Cap {
                    rate: rate(dec!(0.3)),
                },
                1,
                None,
            ),
            ov(
                "a",
                OverrideScope::Sku(s.clone()),
                OverrideKind::Cap {
                    rate: rate(dec!(0.4)),
                },
                1,
                None,
            ),
            ov(
                "other",
                OverrideScope::Sku(sku("S2")),
                OverrideKind::Exclude,
                0,
                None,
            ),
        ];
        let active = ActiveOverrides::resolve(&list, &s, "home", t(6));
        assert_eq!(active.pin.unwrap().0.id, "old");
        assert_eq!(active.cap.unwrap().0.id, "b");
        assert!(active.exclude.is_none());
        let later = ActiveOverrides::resolve(&list, &sku("S3"), "home", t(6));
        assert_eq!(later.pin.unwrap().0.id, "cat");
        assert!(ActiveOverrides::resolve(&list, &sku("S3"), "toys", t(6)).is_empty());
    }

    #[test]
    fn conflicts_are_reported_not_resolved() {
        let s = OverrideScope::Sku(sku("S1"));
        let list = vec![
            ov(
                "pin1",
                s.clone(),
                OverrideKind::Pin {
                    rate: rate(dec!(0.1)),
                },
                0,
                Some(10),
            ),
            ov(
                "cap1",
                s.clone(),
                OverrideKind::Cap {
                    rate: rate(dec!(0.05)),
                },
                5,
                Some(20),
            ),
            ov(
                "floor1",
                s.clone(),
                OverrideKind::Floor {
                    rate: rate(dec!(0.06)),
                },
                12,
                None,
            ),
            ov(
                "mult",
                s.clone(),
                OverrideKind::Multiplier { factor: dec!(2) },
                0,
                None,
            ),
            // touching, not overlapping
            ov(
                "later-pin",
                s.clone(),
                OverrideKind::Pin {
                    rate: rate(dec!(0.2)),
                },
                10,
                Some(11),
            ),
        ];
        let found = find_conflicts(&list);
        let pairs: Vec<(&str, &str, ConflictKind)> = found
            .iter()
            .map(|c| (c.first.as_str(), c.second.as_str(), c.kind))
            .collect();
        assert_eq!(
            pairs,
            vec![
                ("mult", "pin1", ConflictKind::PinWithOther),
                ("mult", "later-pin", ConflictKind::PinWithOther),
                ("pin1", "cap1", ConflictKind::PinWithOther),
                ("cap1", "later-pin", ConflictKind::PinWithOther),
                ("cap1", "floor1", ConflictKind::FloorAboveCap),
            ]
        );
        let c = &found[2];
        assert_eq!(
            (c.overlap_starts_at, c.overlap_ends_at),
            (t(5), Some(t(10)))
        );
        assert!(c.text().contains("pin1 and cap1"));
    }

    #[test]
    fn compatible_or_separate_overrides_are_not_conflicts() {
        let s = OverrideScope::Sku(sku("S1"));
        let list = vec![
            ov(
                "f",
                s.clone(),
                OverrideKind::Floor {
                    rate: rate(dec!(0.02)),
                },
                0,
                None,
            ),
            ov(
                "c",
                s.clone(),
                OverrideKind::Cap {
                    rate: rate(dec!(0.05)),
                },
                0,
                None,
            ),
            ov(
                "m",
                s.clone(),
                OverrideKind::Multiplier { factor: dec!(1.2) },
                0,
                None,
            ),
            ov("x1", s.clone(), OverrideKind::Exclude, 0, None),
            ov("x2", s.clone(), OverrideKind::Exclude, 0, None),
            // a different scope never conflicts
            ov(
                "p",
                OverrideScope::Category("home".into()),
                OverrideKind::Pin {
                    rate: rate(dec!(0.3)),
                },
                0,
                None,
            ),
        ];
        let found = find_conflicts(&list);
        // only the exclude-with-others pairs
        assert!(
            found
                .iter()
                .all(|c| c.kind == ConflictKind::ExcludeWithOther),
            "{found:?}"
        );
        assert_eq!(found.len(), 6);
    }
}
