//! Reasons: one for every rule that acted on a rate card, as a machine-readable code with
//! the few parameters needed to render its human text. Text is rendered on demand
//! ([`Reason::text`], `Display`), never while computing, so the hot path does not format.

use std::fmt;

use chrono::{DateTime, SecondsFormat, Utc};
use rust_decimal::Decimal;
use serde::{Deserialize, Serialize};

use crate::types::{DaysOfCover, Rate};

/// Declares [`ReasonCode`] with its wire names and the list of all codes from one table,
/// so a new code cannot be left out of [`ReasonCode::ALL`] (the contract test reads it).
macro_rules! reason_codes {
    ($($variant:ident => $name:literal,)*) => {
        /// The code of a [`Reason`], without parameters (for metrics and filtering).
        #[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
        #[serde(rename_all = "snake_case")]
        pub enum ReasonCode {
            $(
                #[doc = concat!("See [`Reason::", stringify!($variant), "`].")]
                $variant,
            )*
        }

        impl ReasonCode {
            /// Every code, in declaration order.
            pub const ALL: &'static [ReasonCode] = &[$(ReasonCode::$variant),*];

            /// The code as it appears on the wire (`low_cover`, `margin_guard`, …).
            pub fn as_str(self) -> &'static str {
                match self {
                    $(ReasonCode::$variant => $name,)*
                }
            }
        }
    };
}

reason_codes! {
    NoProductData => "no_product_data",
    OutOfStock => "out_of_stock",
    NoVelocityData => "no_velocity_data",
    LowCover => "low_cover",
    Overstock => "overstock",
    PeakWindow => "peak_window",
    Damped => "damped",
    Held => "held",
    Floor => "floor",
    Cap => "cap",
    MarginGuard => "margin_guard",
    OverridePin => "override_pin",
    OverrideFloor => "override_floor",
    OverrideCap => "override_cap",
    OverrideMultiplier => "override_multiplier",
    OverrideExclude => "override_exclude",
    Boost => "boost",
    BoostGuaranteed => "boost_guaranteed",
    BoostLapsed => "boost_lapsed",
    BaseCutScheduled => "base_cut_scheduled",
    BaseCut => "base_cut",
    BaseCutLimited => "base_cut_limited",
    Incentive => "incentive",
}

/// Why a rate card is what it is. Serialised with its code in `code` and its parameters
/// as sibling fields, e.g. `{"code":"cap","cap":"0.2"}`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "code", rename_all = "snake_case")]
pub enum Reason {
    /// No product master data yet: price and unit cost are unknown, so the rate is zero.
    NoProductData,
    /// Nothing available to sell; the policy target is `rate`.
    OutOfStock {
        /// The out-of-stock target (base rate unless configured).
        rate: Rate,
    },
    /// Velocity is not known yet, so no band applies and the base rate is used.
    NoVelocityData,
    /// Cover is in a band that lowers the rate.
    LowCover {
        /// Days of cover.
        days: DaysOfCover,
        /// Band name.
        band: String,
    },
    /// Cover is in a band that raises the rate.
    Overstock {
        /// Days of cover.
        days: DaysOfCover,
        /// Band name.
        band: String,
    },
    /// A peak window's band table is in force.
    PeakWindow {
        /// Window name.
        window: String,
    },
    /// The policy rate moved only `max_step` towards `target`.
    Damped {
        /// Where the policy wants to be.
        target: Rate,
        /// Largest move per recompute.
        max_step: Decimal,
    },
    /// The policy rate changed too recently to move towards `target` before `until`.
    Held {
        /// Where the policy wants to be.
        target: Rate,
        /// When it may move again.
        until: DateTime<Utc>,
    },
    /// Raised to the policy floor.
    Floor {
        /// The floor.
        floor: Rate,
    },
    /// Lowered to the policy cap.
    Cap {
        /// The cap.
        cap: Rate,
    },
    /// Lowered so commission stays within the configured share of the unit margin.
    MarginGuard {
        /// The highest rate the margin allows.
        max_rate: Rate,
    },
    /// A merchandiser pinned the rate.
    OverridePin {
        /// Override id.
        id: String,
        /// Pinned rate.
        rate: Rate,
    },
    /// A merchandiser floor raised the rate.
    OverrideFloor {
        /// Override id.
        id: String,
        /// The floor.
        floor: Rate,
    },
    /// A merchandiser cap lowered the rate.
    OverrideCap {
        /// Override id.
        id: String,
        /// The cap.
        cap: Rate,
    },
    /// A merchandiser multiplier scaled the rate.
    OverrideMultiplier {
        /// Override id.
        id: String,
        /// The factor.
        factor: Decimal,
    },
    /// A merchandiser excluded the SKU: no commission.
    OverrideExclude {
        /// Override id.
        id: String,
    },
    /// Boost mode: an inventory boost on top of the published base.
    Boost {
        /// Boost in rate units.
        boost: Decimal,
        /// The boost is not withdrawn before this.
        guaranteed_until: DateTime<Utc>,
    },
    /// Boost mode: the policy wants less, but the published boost is guaranteed until then.
    BoostGuaranteed {
        /// End of the guarantee.
        until: DateTime<Utc>,
    },
    /// Boost mode: a boost lapsed (fully or partly) instead of cutting the base.
    BoostLapsed {
        /// Boost before.
        from: Decimal,
        /// Boost now.
        to: Decimal,
    },
    /// Boost mode: a cut of the published base is announced and takes effect at `effective_at`.
    BaseCutScheduled {
        /// The announced base.
        to: Rate,
        /// When it takes effect.
        effective_at: DateTime<Utc>,
    },
    /// Boost mode: the published base was cut.
    BaseCut {
        /// Base before.
        from: Rate,
        /// Base now.
        to: Rate,
    },
    /// Boost mode: the cut stopped at `allowed` because of the maximum cut per period.
    BaseCutLimited {
        /// The base the policy wants.
        target: Rate,
        /// The lowest base the network rules allow now.
        allowed: Rate,
    },
    /// A flash incentive adds a bonus.
    Incentive {
        /// Incentive id.
        id: String,
        /// Bonus.
        bonus: Rate,
        /// End of the window.
        ends_at: DateTime<Utc>,
    },
}

fn pct(d: Decimal) -> String {
    let p = (d * Decimal::ONE_HUNDRED).normalize();
    format!("{p} %")
}

fn when(t: &DateTime<Utc>) -> String {
    t.to_rfc3339_opts(SecondsFormat::Secs, true)
}

impl Reason {
    /// The parameterless code.
    pub fn code(&self) -> ReasonCode {
        match self {
            Reason::NoProductData => ReasonCode::NoProductData,
            Reason::OutOfStock { .. } => ReasonCode::OutOfStock,
            Reason::NoVelocityData => ReasonCode::NoVelocityData,
            Reason::LowCover { .. } => ReasonCode::LowCover,
            Reason::Overstock { .. } => ReasonCode::Overstock,
            Reason::PeakWindow { .. } => ReasonCode::PeakWindow,
            Reason::Damped { .. } => ReasonCode::Damped,
            Reason::Held { .. } => ReasonCode::Held,
            Reason::Floor { .. } => ReasonCode::Floor,
            Reason::Cap { .. } => ReasonCode::Cap,
            Reason::MarginGuard { .. } => ReasonCode::MarginGuard,
            Reason::OverridePin { .. } => ReasonCode::OverridePin,
            Reason::OverrideFloor { .. } => ReasonCode::OverrideFloor,
            Reason::OverrideCap { .. } => ReasonCode::OverrideCap,
            Reason::OverrideMultiplier { .. } => ReasonCode::OverrideMultiplier,
            Reason::OverrideExclude { .. } => ReasonCode::OverrideExclude,
            Reason::Boost { .. } => ReasonCode::Boost,
            Reason::BoostGuaranteed { .. } => ReasonCode::BoostGuaranteed,
            Reason::BoostLapsed { .. } => ReasonCode::BoostLapsed,
            Reason::BaseCutScheduled { .. } => ReasonCode::BaseCutScheduled,
            Reason::BaseCut { .. } => ReasonCode::BaseCut,
            Reason::BaseCutLimited { .. } => ReasonCode::BaseCutLimited,
            Reason::Incentive { .. } => ReasonCode::Incentive,
        }
    }

    /// Human text for people reading an explanation.
    pub fn text(&self) -> String {
        self.to_string()
    }
}

impl fmt::Display for Reason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Reason::NoProductData => f.write_str("no product data (price, cost) yet: rate is 0"),
            Reason::OutOfStock { rate } => {
                write!(
                    f,
                    "out of stock: rate set to {} until restocked",
                    pct(rate.get())
                )
            }
            Reason::NoVelocityData => {
                f.write_str("no sales velocity yet: base rate used without inventory adjustment")
            }
            Reason::LowCover { days, band } => write!(
                f,
                "low cover: {} days of cover is in band {band:?}, rate lowered",
                days.get().round_dp(1).normalize()
            ),
            Reason::Overstock { days, band } => write!(
                f,
                "overstock: {} days of cover is in band {band:?}, rate raised",
                days.get().round_dp(1).normalize()
            ),
            Reason::PeakWindow { window } => {
                write!(f, "peak window {window:?}: peak band table in force")
            }
            Reason::Damped { target, max_step } => write!(
                f,
                "damped: moving towards {} by at most {} per recompute",
                pct(target.get()),
                pct(*max_step)
            ),
            Reason::Held { target, until } => write!(
                f,
                "held: changed recently, may move towards {} after {}",
                pct(target.get()),
                when(until)
            ),
            Reason::Floor { floor } => write!(f, "raised to the floor of {}", pct(floor.get())),
            Reason::Cap { cap } => write!(f, "lowered to the cap of {}", pct(cap.get())),
            Reason::MarginGuard { max_rate } => write!(
                f,
                "margin guard: commission limited to a share of unit margin, at most {}",
                pct(max_rate.get())
            ),
            Reason::OverridePin { id, rate } => {
                write!(f, "pinned at {} by override {id}", pct(rate.get()))
            }
            Reason::OverrideFloor { id, floor } => {
                write!(f, "raised to {} by floor override {id}", pct(floor.get()))
            }
            Reason::OverrideCap { id, cap } => {
                write!(f, "lowered to {} by cap override {id}", pct(cap.get()))
            }
            Reason::OverrideMultiplier { id, factor } => {
                write!(f, "multiplied by {} by override {id}", factor.normalize())
            }
            Reason::OverrideExclude { id } => {
                write!(f, "excluded from commission by override {id}")
            }
            Reason::Boost {
                boost,
                guaranteed_until,
            } => write!(
                f,
                "inventory boost of {} guaranteed until {}",
                pct(*boost),
                when(guaranteed_until)
            ),
            Reason::BoostGuaranteed { until } => {
                write!(f, "boost kept: it is guaranteed until {}", when(until))
            }
            Reason::BoostLapsed { from, to } => write!(
                f,
                "boost lapsed from {} to {} instead of cutting the base",
                pct(*from),
                pct(*to)
            ),
            Reason::BaseCutScheduled { to, effective_at } => write!(
                f,
                "base rate cut to {} announced, effective {}",
                pct(to.get()),
                when(effective_at)
            ),
            Reason::BaseCut { from, to } => write!(
                f,
                "base rate cut from {} to {}",
                pct(from.get()),
                pct(to.get())
            ),
            Reason::BaseCutLimited { target, allowed } => write!(
                f,
                "base rate cut towards {} stopped at {} by the network's maximum cut per period",
                pct(target.get()),
                pct(allowed.get())
            ),
            Reason::Incentive { id, bonus, ends_at } => write!(
                f,
                "flash incentive {id}: +{} until {}",
                pct(bonus.get()),
                when(ends_at)
            ),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rust_decimal_macros::dec;

    #[test]
    fn text_is_rendered_from_code_and_parameters() {
        let r = Reason::Cap {
            cap: Rate::new(dec!(0.08)).unwrap(),
        };
        assert_eq!(r.code(), ReasonCode::Cap);
        assert_eq!(r.text(), "lowered to the cap of 8 %");
        let r = Reason::LowCover {
            days: DaysOfCover::new(dec!(2.345)).unwrap(),
            band: "scarce".into(),
        };
        assert_eq!(
            r.text(),
            "low cover: 2.3 days of cover is in band \"scarce\", rate lowered"
        );
    }

    #[test]
    fn all_lists_every_code_once_under_its_serde_name() {
        let mut seen = std::collections::BTreeSet::new();
        for code in ReasonCode::ALL {
            assert!(seen.insert(*code), "{code:?} twice");
            let json = serde_json::to_string(code).unwrap();
            assert_eq!(json, format!("\"{}\"", code.as_str()));
        }
    }

    #[test]
    fn serialises_with_the_code_as_tag() {
        #[derive(Serialize, Deserialize)]
        struct W {
            r: Vec<Reason>,
        }
        let w = W {
            r: vec![
                Reason::NoProductData,
                Reason::OverridePin {
                    id: "ov-1".into(),
                    rate: Rate::new(dec!(0.1)).unwrap(),
                },
            ],
        };
        let text = toml::to_string(&w).unwrap();
        assert!(text.contains("code = \"override_pin\""), "{text}");
        let back: W = toml::from_str(&text).unwrap();
        assert_eq!(back.r, w.r);
        assert_eq!(ReasonCode::OverridePin.as_str(), "override_pin");
    }
}
