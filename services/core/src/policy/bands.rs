//! Band tables on days of cover, and band selection with hysteresis.

use rust_decimal::Decimal;

use crate::types::Rate;

/// How a band changes the base rate.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Adjustment {
    /// Base rate × factor.
    Multiplier(Decimal),
    /// Base rate + amount (may be negative).
    Add(Decimal),
}

impl Adjustment {
    /// The adjusted rate, clamped into `0..=1`.
    pub fn apply(self, base: Rate) -> Rate {
        let value = match self {
            Adjustment::Multiplier(m) => base.get() * m,
            Adjustment::Add(a) => base.get() + a,
        };
        Rate::clamped(value)
    }

    /// Whether the band lowers (`Less`), keeps or raises the rate.
    pub fn direction(self) -> std::cmp::Ordering {
        match self {
            Adjustment::Multiplier(m) => m.cmp(&Decimal::ONE),
            Adjustment::Add(a) => a.cmp(&Decimal::ZERO),
        }
    }
}

/// One band: covers days of cover from the previous band's `max_days` (inclusive) up to
/// its own `max_days` (exclusive).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Band {
    /// Name used in reasons.
    pub name: String,
    /// Exclusive upper bound; `None` only on the last band.
    pub max_days: Option<Decimal>,
    /// What the band does to the base rate.
    pub adjustment: Adjustment,
}

/// Bands ordered by strictly increasing `max_days`, the last one unbounded. Validation
/// guarantees at least one band.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BandTable {
    bands: Vec<Band>,
}

impl BandTable {
    /// Wraps bands that validation has already checked.
    pub(crate) fn new(bands: Vec<Band>) -> Self {
        Self { bands }
    }

    /// The bands, scarcest first.
    pub fn bands(&self) -> &[Band] {
        &self.bands
    }

    /// Band `index`, if it exists.
    pub fn get(&self, index: usize) -> Option<&Band> {
        self.bands.get(index)
    }

    /// The band `cover` falls in, ignoring hysteresis.
    pub fn raw_index(&self, cover: Decimal) -> usize {
        self.bands
            .iter()
            .position(|b| b.max_days.is_none_or(|max| cover < max))
            .unwrap_or(self.bands.len().saturating_sub(1))
    }

    /// The band for `cover` given the band the SKU was in before. Leaving a band needs
    /// the cover to cross the threshold by `margin` (a fraction of the threshold): up
    /// into band `k` needs `cover >= max_days[k-1] × (1 + margin)`, down into band `k`
    /// needs `cover < max_days[k] × (1 - margin)`. Without a previous band (or one that
    /// no longer exists after a config change) the raw band is used.
    pub fn select(&self, cover: Decimal, previous: Option<usize>, margin: Decimal) -> usize {
        let raw = self.raw_index(cover);
        let Some(prev) = previous.filter(|p| *p < self.bands.len()) else {
            return raw;
        };
        let mut chosen = prev;
        if raw > prev {
            for k in (prev + 1)..=raw {
                let Some(threshold) = self.bands[k - 1].max_days else {
                    break;
                };
                if cover >= threshold * (Decimal::ONE + margin) {
                    chosen = k;
                } else {
                    break;
                }
            }
        } else if raw < prev {
            for k in (raw..prev).rev() {
                let Some(threshold) = self.bands[k].max_days else {
                    break;
                };
                if cover < threshold * (Decimal::ONE - margin) {
                    chosen = k;
                } else {
                    break;
                }
            }
        }
        chosen
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rust_decimal_macros::dec;

    fn table() -> BandTable {
        BandTable::new(vec![
            Band {
                name: "scarce".into(),
                max_days: Some(dec!(3)),
                adjustment: Adjustment::Multiplier(dec!(0.5)),
            },
            Band {
                name: "normal".into(),
                max_days: Some(dec!(60)),
                adjustment: Adjustment::Multiplier(dec!(1)),
            },
            Band {
                name: "overstock".into(),
                max_days: None,
                adjustment: Adjustment::Add(dec!(0.02)),
            },
        ])
    }

    #[test]
    fn raw_band_uses_exclusive_upper_bounds() {
        let t = table();
        assert_eq!(t.raw_index(dec!(0)), 0);
        assert_eq!(t.raw_index(dec!(2.99)), 0);
        assert_eq!(t.raw_index(dec!(3)), 1);
        assert_eq!(t.raw_index(dec!(60)), 2);
        assert_eq!(t.raw_index(dec!(100000)), 2);
    }

    #[test]
    fn hysteresis_needs_the_margin_to_move_up() {
        let t = table();
        // threshold 3, margin 10 %: need >= 3.3 to leave scarce
        assert_eq!(t.select(dec!(3.2), Some(0), dec!(0.1)), 0);
        assert_eq!(t.select(dec!(3.3), Some(0), dec!(0.1)), 1);
        // a jump across two thresholds lands in the highest one crossed by the margin
        assert_eq!(t.select(dec!(65), Some(0), dec!(0.1)), 1);
        assert_eq!(t.select(dec!(66), Some(0), dec!(0.1)), 2);
    }

    #[test]
    fn hysteresis_needs_the_margin_to_move_down() {
        let t = table();
        // threshold 60: need < 54 to leave overstock
        assert_eq!(t.select(dec!(55), Some(2), dec!(0.1)), 2);
        assert_eq!(t.select(dec!(53.9), Some(2), dec!(0.1)), 1);
        assert_eq!(t.select(dec!(1), Some(2), dec!(0.1)), 0);
        assert_eq!(t.select(dec!(2.8), Some(1), dec!(0.1)), 1);
    }

    #[test]
    fn without_history_the_raw_band_is_used() {
        let t = table();
        assert_eq!(t.select(dec!(3.1), None, dec!(0.1)), 1);
        assert_eq!(t.select(dec!(3.1), Some(7), dec!(0.1)), 1);
    }

    #[test]
    fn adjustments_clamp_into_range() {
        let base = Rate::new(dec!(0.05)).unwrap();
        assert_eq!(
            Adjustment::Multiplier(dec!(1.5)).apply(base).get(),
            dec!(0.075)
        );
        assert_eq!(Adjustment::Add(dec!(-0.1)).apply(base), Rate::ZERO);
        assert_eq!(
            Adjustment::Add(dec!(0.02)).direction(),
            std::cmp::Ordering::Greater
        );
    }
}
