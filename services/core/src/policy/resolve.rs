//! Resolution of a [`PolicyConfig`] into a [`Policy`]: layering (built-in defaults, then
//! `[defaults]`, then `[categories.<name>]`), validation with the offending key named, and
//! conversion into the types the hot path uses.

use std::collections::BTreeMap;

use chrono::{DateTime, TimeDelta, Utc};
use chrono_tz::Tz;
use rust_decimal::Decimal;
use thiserror::Error;

use super::bands::{Adjustment, Band, BandTable};
use super::config::{BandSection, CategorySection, FlashSection, Mode, PolicyConfig};
use super::flash::FlashRules;
use super::peak::{PeakWindow, parse_local};
use crate::types::{DaysOfCover, Money, Quantity, Rate, Velocity};

/// Why a policy could not be loaded.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum PolicyError {
    /// The text is not valid TOML or does not match the schema (unknown key, wrong type).
    /// The message starts with the dotted path of the offending key when there is one
    /// (`program.mode: unknown variant ...`), and ends with its line.
    #[error("{0}")]
    Parse(String),
    /// A value is out of range or inconsistent; `key` is its dotted path.
    #[error("{key}: {message}")]
    Invalid {
        /// Dotted path of the bad key, e.g. `categories.electronics.bands[2].max_days`.
        key: String,
        /// What is wrong with it.
        message: String,
    },
}

fn invalid(key: impl Into<String>, message: impl Into<String>) -> PolicyError {
    PolicyError::Invalid {
        key: key.into(),
        message: message.into(),
    }
}

/// Program-wide velocity estimation settings.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct VelocitySettings {
    /// Half-life of the EWMA of units/day.
    pub half_life: TimeDelta,
    /// How long an ERP-supplied velocity figure stays authoritative.
    pub erp_max_age: TimeDelta,
}

/// The network's rules for cutting a published base rate, and the boost guarantee.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct NetworkRules {
    /// A cut takes effect no sooner than this after it was first scheduled.
    pub notice: TimeDelta,
    /// Largest fraction the base may fall below its highest value within `cut_period`.
    pub max_cut: Decimal,
    /// The trailing period `max_cut` is measured over.
    pub cut_period: TimeDelta,
    /// How long a raised or renewed boost is guaranteed.
    pub boost_duration: TimeDelta,
}

/// Fully resolved settings for one category.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CategoryPolicy {
    /// Base rate when the product has none.
    pub base_rate: Rate,
    /// Bands outside peak windows.
    pub bands: BandTable,
    /// Band table per peak window, indexed like [`Policy::peak_windows`].
    pub peak_bands: Vec<BandTable>,
    /// Hysteresis margin, a fraction of the threshold.
    pub hysteresis: Decimal,
    /// Largest change of the policy rate per recompute.
    pub max_step: Decimal,
    /// Minimum time between two changes of the policy rate.
    pub min_hold: TimeDelta,
    /// Guardrail: lowest rate.
    pub floor: Rate,
    /// Guardrail: highest rate.
    pub cap: Rate,
    /// Guardrail: commission ≤ `margin_share` × (price − unit cost).
    pub margin_share: Decimal,
    /// Target for out-of-stock SKUs; `None` means the base rate.
    pub out_of_stock_rate: Option<Rate>,
    /// Flash-incentive rules.
    pub flash: FlashRules,
}

/// A validated policy for one program. Build it with [`Policy::from_toml_str`] or
/// [`Policy::from_config`]; it is immutable and cheap to share.
#[derive(Debug, Clone, PartialEq)]
pub struct Policy {
    /// Program identifier.
    pub program_id: String,
    /// The retailer's time zone.
    pub time_zone: Tz,
    /// Direct or boost mode.
    pub mode: Mode,
    /// Decimal places rates are rounded to.
    pub rate_decimals: u32,
    /// Flash incentives open at once across the program.
    pub max_concurrent_incentives: u32,
    /// Velocity estimation.
    pub velocity: VelocitySettings,
    /// Network cut rules (boost mode).
    pub network: NetworkRules,
    /// Peak windows, in config order, non-overlapping.
    pub peak_windows: Vec<PeakWindow>,
    default_category: CategoryPolicy,
    categories: BTreeMap<String, CategoryPolicy>,
    config: PolicyConfig,
}

/// The example policy shipped in the repository (`services/core/policy.example.toml`),
/// which `ratemesh up` uses when no policy file is given.
pub const EXAMPLE_POLICY_TOML: &str = include_str!("../../policy.example.toml");

impl Policy {
    /// Parses and validates a TOML policy.
    pub fn from_toml_str(text: &str) -> Result<Policy, PolicyError> {
        let deserializer = toml::Deserializer::parse(text).map_err(|e| {
            PolicyError::Parse(format!(
                "policy file: {}{}",
                e.message(),
                location(&e, text)
            ))
        })?;
        // The dotted path names the key a person fixes; the line helps find it.
        let config: PolicyConfig = serde_path_to_error::deserialize(deserializer).map_err(|e| {
            let key = e.path().to_string();
            let inner = e.into_inner();
            let message = format!("{}{}", inner.message(), location(&inner, text));
            PolicyError::Parse(match key.as_str() {
                "" | "." => format!("policy file: {message}"),
                key => format!("{key}: {message}"),
            })
        })?;
        Policy::from_config(&config)
    }

    /// The example policy shipped with the crate.
    pub fn example() -> Policy {
        // The example file is compiled in and parsed by a unit test, so it cannot fail here.
        Policy::from_toml_str(EXAMPLE_POLICY_TOML).expect("the shipped example policy is valid")
    }

    /// The policy with nothing configured: every knob at its built-in default.
    pub fn builtin() -> Policy {
        // Built-in defaults are constants checked by a unit test.
        Policy::from_config(&PolicyConfig::default()).expect("built-in defaults are valid")
    }

    /// Validates a parsed config.
    pub fn from_config(config: &PolicyConfig) -> Result<Policy, PolicyError> {
        let p = &config.program;
        let program_id = p.id.clone().unwrap_or_else(|| "default".to_owned());
        if program_id.trim().is_empty() {
            return Err(invalid("program.id", "must not be empty"));
        }
        let tz_name = p.time_zone.as_deref().unwrap_or("UTC");
        let time_zone: Tz = tz_name.parse().map_err(|_| {
            invalid(
                "program.time_zone",
                format!("{tz_name:?} is not an IANA time zone name"),
            )
        })?;
        let rate_decimals = p.rate_decimals.unwrap_or(4);
        if !(2..=10).contains(&rate_decimals) {
            return Err(invalid("program.rate_decimals", "must be between 2 and 10"));
        }
        let velocity = VelocitySettings {
            half_life: hours(
                "program.velocity_half_life_hours",
                p.velocity_half_life_hours,
                72,
            )?,
            erp_max_age: hours(
                "program.erp_velocity_max_age_hours",
                p.erp_velocity_max_age_hours,
                72,
            )?,
        };
        let n = &config.network;
        let max_cut = n.max_cut.unwrap_or(Decimal::new(20, 2));
        if max_cut < Decimal::ZERO || max_cut > Decimal::ONE {
            return Err(invalid("network.max_cut", "must be between 0 and 1"));
        }
        let network = NetworkRules {
            notice: TimeDelta::hours(i64::from(n.notice_hours.unwrap_or(168))),
            max_cut,
            cut_period: days("network.cut_period_days", n.cut_period_days, 30)?,
            boost_duration: hours("network.boost_hours", n.boost_hours, 72)?,
        };

        let mut peak_windows: Vec<PeakWindow> = Vec::with_capacity(config.peak_windows.len());
        let mut peak_tables = Vec::with_capacity(config.peak_windows.len());
        for (i, w) in config.peak_windows.iter().enumerate() {
            let key = format!("peak_windows[{i}]");
            if w.name.trim().is_empty() {
                return Err(invalid(format!("{key}.name"), "must not be empty"));
            }
            if let Some(j) = peak_windows.iter().position(|o| o.name == w.name) {
                return Err(invalid(
                    format!("{key}.name"),
                    format!("{:?} is already used by peak_windows[{j}]", w.name),
                ));
            }
            let starts_at =
                parse_local(&w.start, time_zone).map_err(|m| invalid(format!("{key}.start"), m))?;
            let ends_at =
                parse_local(&w.end, time_zone).map_err(|m| invalid(format!("{key}.end"), m))?;
            if ends_at <= starts_at {
                return Err(invalid(format!("{key}.end"), "must be after start"));
            }
            if let Some(j) = peak_windows
                .iter()
                .position(|o| o.starts_at < ends_at && starts_at < o.ends_at)
            {
                return Err(invalid(key, format!("overlaps peak_windows[{j}]")));
            }
            peak_tables.push(band_table(&format!("{key}.bands"), &w.bands)?);
            peak_windows.push(PeakWindow {
                name: w.name.clone(),
                starts_at,
                ends_at,
            });
        }

        let default_category =
            resolve_category("defaults", &config.defaults, &peak_windows, &peak_tables)?;
        let mut categories = BTreeMap::new();
        for (name, section) in &config.categories {
            let key = format!("categories.{name}");
            if name.trim().is_empty() {
                return Err(invalid(key, "category name must not be empty"));
            }
            let merged = merge(&config.defaults, section);
            categories.insert(
                name.clone(),
                resolve_category(&key, &merged, &peak_windows, &peak_tables)?,
            );
        }
        let max_concurrent_incentives = p.max_concurrent_incentives.unwrap_or(100);

        Ok(Policy {
            program_id,
            time_zone,
            mode: p.mode.unwrap_or_default(),
            rate_decimals,
            max_concurrent_incentives,
            velocity,
            network,
            peak_windows,
            default_category,
            categories,
            config: config.clone(),
        })
    }

    /// Settings for `category`, falling back to `[defaults]` for unknown categories.
    pub fn category(&self, category: &str) -> &CategoryPolicy {
        self.categories
            .get(category)
            .unwrap_or(&self.default_category)
    }

    /// Settings used for categories without their own section.
    pub fn default_category(&self) -> &CategoryPolicy {
        &self.default_category
    }

    /// Names of the categories with their own section.
    pub fn category_names(&self) -> impl Iterator<Item = &str> {
        self.categories.keys().map(String::as_str)
    }

    /// The peak window containing `now`, with its index.
    pub fn peak_window_at(&self, now: DateTime<Utc>) -> Option<(usize, &PeakWindow)> {
        self.peak_windows
            .iter()
            .enumerate()
            .find(|(_, w)| w.contains(now))
    }

    /// The config this policy was built from (for display and round trips).
    pub fn config(&self) -> &PolicyConfig {
        &self.config
    }

    /// The same policy without its peak windows and the categories' peak band tables:
    /// what the program pays on an ordinary day, whatever the calendar says. For comparing
    /// peak with off-peak rates, and for checks that must not depend on today's date.
    pub fn off_peak(&self) -> Result<Policy, PolicyError> {
        let mut config = self.config.clone();
        config.peak_windows.clear();
        config.defaults.peak_bands = None;
        for category in config.categories.values_mut() {
            category.peak_bands = None;
        }
        Policy::from_config(&config)
    }

    /// The policy as a TOML file that [`Policy::from_toml_str`] reads back to the same
    /// policy.
    pub fn to_toml(&self) -> String {
        // Every field of the config is a string, number, table or array: always encodable.
        toml::to_string_pretty(&self.config).expect("a policy config encodes as TOML")
    }
}

fn location(err: &toml::de::Error, text: &str) -> String {
    match err.span() {
        Some(span) => {
            let line = text[..span.start.min(text.len())].matches('\n').count() + 1;
            format!(" (line {line})")
        }
        None => String::new(),
    }
}

fn hours(key: &str, value: Option<u32>, default: u32) -> Result<TimeDelta, PolicyError> {
    let v = value.unwrap_or(default);
    if v == 0 {
        return Err(invalid(key, "must be at least 1"));
    }
    Ok(TimeDelta::hours(i64::from(v)))
}

fn days(key: &str, value: Option<u32>, default: u32) -> Result<TimeDelta, PolicyError> {
    let v = value.unwrap_or(default);
    if v == 0 {
        return Err(invalid(key, "must be at least 1"));
    }
    Ok(TimeDelta::days(i64::from(v)))
}

/// `over` on top of `base`, field by field (the `flash` table and `peak_bands` map too).
fn merge(base: &CategorySection, over: &CategorySection) -> CategorySection {
    let flash = match (&base.flash, &over.flash) {
        (Some(b), Some(o)) => Some(FlashSection {
            enabled: o.enabled.or(b.enabled),
            min_cover_days: o.min_cover_days.or(b.min_cover_days),
            min_velocity: o.min_velocity.or(b.min_velocity),
            max_velocity: o.max_velocity.or(b.max_velocity),
            bonus: o.bonus.or(b.bonus),
            duration_hours: o.duration_hours.or(b.duration_hours),
            budget_spend: o.budget_spend.or(b.budget_spend),
            budget_units: o.budget_units.or(b.budget_units),
            cooldown_hours: o.cooldown_hours.or(b.cooldown_hours),
            max_extensions: o.max_extensions.or(b.max_extensions),
            exit_cover_days: o.exit_cover_days.or(b.exit_cover_days),
            max_concurrent: o.max_concurrent.or(b.max_concurrent),
            stop_on_forecast: o.stop_on_forecast.or(b.stop_on_forecast),
        }),
        (b, o) => o.clone().or_else(|| b.clone()),
    };
    let peak_bands = match (&base.peak_bands, &over.peak_bands) {
        (Some(b), Some(o)) => {
            let mut m = b.clone();
            m.extend(o.iter().map(|(k, v)| (k.clone(), v.clone())));
            Some(m)
        }
        (b, o) => o.clone().or_else(|| b.clone()),
    };
    CategorySection {
        base_rate: over.base_rate.or(base.base_rate),
        bands: over.bands.clone().or_else(|| base.bands.clone()),
        peak_bands,
        hysteresis: over.hysteresis.or(base.hysteresis),
        max_step: over.max_step.or(base.max_step),
        min_hold_minutes: over.min_hold_minutes.or(base.min_hold_minutes),
        floor: over.floor.or(base.floor),
        cap: over.cap.or(base.cap),
        margin_share: over.margin_share.or(base.margin_share),
        out_of_stock_rate: over.out_of_stock_rate.or(base.out_of_stock_rate),
        flash,
    }
}

fn rate(key: String, value: Decimal) -> Result<Rate, PolicyError> {
    Rate::new(value).map_err(|_| invalid(key, format!("must be between 0 and 1, got {value}")))
}

fn non_negative(key: &str, value: Decimal) -> Result<Decimal, PolicyError> {
    if value < Decimal::ZERO {
        return Err(invalid(key, format!("must not be negative, got {value}")));
    }
    Ok(value)
}

fn default_bands() -> Vec<BandSection> {
    vec![
        BandSection {
            name: "scarce".into(),
            max_days: Some(Decimal::from(3)),
            multiplier: Some(Decimal::new(6, 1)),
            add: None,
        },
        BandSection {
            name: "normal".into(),
            max_days: Some(Decimal::from(60)),
            multiplier: Some(Decimal::ONE),
            add: None,
        },
        BandSection {
            name: "overstock".into(),
            max_days: None,
            multiplier: Some(Decimal::new(15, 1)),
            add: None,
        },
    ]
}

fn band_table(key: &str, bands: &[BandSection]) -> Result<BandTable, PolicyError> {
    if bands.is_empty() {
        return Err(invalid(key, "must have at least one band"));
    }
    // The short name used to refer to sibling rows in messages (`bands[1].max_days`).
    let short = key.rsplit('.').next().unwrap_or(key);
    let last = bands.len() - 1;
    let mut out = Vec::with_capacity(bands.len());
    let mut previous_max: Option<Decimal> = None;
    for (i, b) in bands.iter().enumerate() {
        let row = format!("{key}[{i}]");
        if b.name.trim().is_empty() {
            return Err(invalid(format!("{row}.name"), "must not be empty"));
        }
        let adjustment = match (b.multiplier, b.add) {
            (Some(m), None) => {
                non_negative(&format!("{row}.multiplier"), m)?;
                Adjustment::Multiplier(m)
            }
            (None, Some(a)) => {
                if a < -Decimal::ONE || a > Decimal::ONE {
                    return Err(invalid(
                        format!("{row}.add"),
                        format!("must be between -1 and 1, got {a}"),
                    ));
                }
                Adjustment::Add(a)
            }
            _ => return Err(invalid(row, "needs exactly one of multiplier and add")),
        };
        match (i == last, b.max_days) {
            (true, Some(_)) => {
                return Err(invalid(
                    format!("{row}.max_days"),
                    "the last band must be unbounded (leave max_days out)",
                ));
            }
            (false, None) => {
                return Err(invalid(
                    format!("{row}.max_days"),
                    "is required on every band but the last",
                ));
            }
            (false, Some(max)) => {
                if max <= Decimal::ZERO {
                    return Err(invalid(format!("{row}.max_days"), "must be greater than 0"));
                }
                if let Some(prev) = previous_max
                    && max <= prev
                {
                    return Err(invalid(
                        format!("{row}.max_days"),
                        format!("must be greater than {short}[{}].max_days", i - 1),
                    ));
                }
                previous_max = Some(max);
            }
            (true, None) => {}
        }
        out.push(Band {
            name: b.name.clone(),
            max_days: b.max_days,
            adjustment,
        });
    }
    Ok(BandTable::new(out))
}

fn resolve_category(
    key: &str,
    s: &CategorySection,
    windows: &[PeakWindow],
    window_tables: &[BandTable],
) -> Result<CategoryPolicy, PolicyError> {
    let base_rate = rate(
        format!("{key}.base_rate"),
        s.base_rate.unwrap_or(Decimal::new(5, 2)),
    )?;
    let bands = match &s.bands {
        Some(b) => band_table(&format!("{key}.bands"), b)?,
        None => band_table(&format!("{key}.bands"), &default_bands())?,
    };
    let mut peak_bands = window_tables.to_vec();
    if let Some(map) = &s.peak_bands {
        for (name, rows) in map {
            let table_key = format!("{key}.peak_bands.{name}");
            let Some(i) = windows.iter().position(|w| &w.name == name) else {
                return Err(invalid(table_key, "names no peak window"));
            };
            peak_bands[i] = band_table(&table_key, rows)?;
        }
    }
    let hysteresis = s.hysteresis.unwrap_or(Decimal::new(10, 2));
    if hysteresis < Decimal::ZERO || hysteresis >= Decimal::ONE {
        return Err(invalid(
            format!("{key}.hysteresis"),
            "must be at least 0 and below 1",
        ));
    }
    let max_step = s.max_step.unwrap_or(Decimal::new(1, 2));
    if max_step <= Decimal::ZERO || max_step > Decimal::ONE {
        return Err(invalid(
            format!("{key}.max_step"),
            "must be greater than 0 and at most 1",
        ));
    }
    let min_hold = TimeDelta::minutes(i64::from(s.min_hold_minutes.unwrap_or(60)));
    let floor = rate(format!("{key}.floor"), s.floor.unwrap_or(Decimal::ZERO))?;
    let cap = rate(format!("{key}.cap"), s.cap.unwrap_or(Decimal::new(30, 2)))?;
    if floor > cap {
        return Err(invalid(
            format!("{key}.floor"),
            format!("must not be above cap ({cap})"),
        ));
    }
    let margin_share = s.margin_share.unwrap_or(Decimal::new(50, 2));
    if margin_share < Decimal::ZERO || margin_share > Decimal::ONE {
        return Err(invalid(
            format!("{key}.margin_share"),
            "must be between 0 and 1",
        ));
    }
    let out_of_stock_rate = s
        .out_of_stock_rate
        .map(|r| rate(format!("{key}.out_of_stock_rate"), r))
        .transpose()?;
    let flash = resolve_flash(
        &format!("{key}.flash"),
        s.flash.as_ref().unwrap_or(&FlashSection::default()),
    )?;
    Ok(CategoryPolicy {
        base_rate,
        bands,
        peak_bands,
        hysteresis,
        max_step,
        min_hold,
        floor,
        cap,
        margin_share,
        out_of_stock_rate,
        flash,
    })
}

fn resolve_flash(key: &str, f: &FlashSection) -> Result<FlashRules, PolicyError> {
    let k = |field: &str| format!("{key}.{field}");
    let cover = |field: &str, v: Decimal| {
        DaysOfCover::new(v).map_err(|_| invalid(k(field), format!("must not be negative, got {v}")))
    };
    let velocity = |field: &str, v: Decimal| {
        Velocity::new(v).map_err(|_| invalid(k(field), format!("must not be negative, got {v}")))
    };
    let min_cover = cover(
        "min_cover_days",
        f.min_cover_days.unwrap_or(Decimal::from(90)),
    )?;
    let exit_cover = cover(
        "exit_cover_days",
        f.exit_cover_days.unwrap_or(Decimal::from(30)),
    )?;
    if exit_cover > min_cover {
        return Err(invalid(
            k("exit_cover_days"),
            "must not be above min_cover_days",
        ));
    }
    let min_velocity = velocity("min_velocity", f.min_velocity.unwrap_or(Decimal::ZERO))?;
    let max_velocity = f
        .max_velocity
        .map(|v| velocity("max_velocity", v))
        .transpose()?;
    if let Some(max) = max_velocity
        && max < min_velocity
    {
        return Err(invalid(k("max_velocity"), "must not be below min_velocity"));
    }
    let bonus = rate(k("bonus"), f.bonus.unwrap_or(Decimal::new(2, 2)))?;
    let duration = hours(&k("duration_hours"), f.duration_hours, 48)?;
    let budget_spend = f.budget_spend.unwrap_or(Decimal::from(500));
    let budget_spend = Money::new(budget_spend).map_err(|_| {
        invalid(
            k("budget_spend"),
            format!("must not be negative, got {budget_spend}"),
        )
    })?;
    let budget_units = f.budget_units.unwrap_or(Decimal::from(200));
    let budget_units = Quantity::new(budget_units).map_err(|_| {
        invalid(
            k("budget_units"),
            format!("must not be negative, got {budget_units}"),
        )
    })?;
    Ok(FlashRules {
        enabled: f.enabled.unwrap_or(false),
        min_cover,
        min_velocity,
        max_velocity,
        bonus,
        duration,
        budget_spend,
        budget_units,
        cooldown: TimeDelta::hours(i64::from(f.cooldown_hours.unwrap_or(168))),
        max_extensions: f.max_extensions.unwrap_or(1),
        exit_cover,
        max_concurrent: f.max_concurrent.unwrap_or(10),
        stop_on_forecast: f.stop_on_forecast.unwrap_or(false),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::TimeZone;
    use rust_decimal_macros::dec;

    fn err(text: &str) -> String {
        Policy::from_toml_str(text).unwrap_err().to_string()
    }

    #[test]
    fn the_shipped_example_parses_and_is_realistic() {
        let p = Policy::from_toml_str(EXAMPLE_POLICY_TOML).unwrap();
        assert_eq!(p.program_id, "acme-us");
        assert_eq!(p.time_zone, chrono_tz::America::New_York);
        let names: Vec<&str> = p.category_names().collect();
        assert_eq!(names, ["apparel", "electronics", "home"]);
        assert_eq!(p.category("electronics").cap.get(), dec!(0.08));
        // inherited from [defaults]
        assert_eq!(p.category("electronics").hysteresis, dec!(0.10));
        assert_eq!(p.category("electronics").flash.bonus.get(), dec!(0.01));
        assert_eq!(
            p.category("electronics").flash.duration,
            TimeDelta::hours(48)
        );
        // unknown categories use [defaults]
        assert_eq!(p.category("toys").base_rate.get(), dec!(0.05));
        // BFCM 2025 starts at Thanksgiving midnight in New York
        let bfcm = &p.peak_windows[0];
        assert_eq!(
            bfcm.starts_at,
            Utc.with_ymd_and_hms(2025, 11, 27, 5, 0, 0).unwrap()
        );
        let black_friday = Utc.with_ymd_and_hms(2025, 11, 28, 15, 0, 0).unwrap();
        assert_eq!(p.peak_window_at(black_friday).map(|(i, _)| i), Some(0));
        // apparel has its own BFCM table, home uses the window's
        assert_eq!(
            p.category("apparel").peak_bands[0].bands()[1].max_days,
            Some(dec!(14))
        );
        assert_eq!(
            p.category("home").peak_bands[0].bands()[1].max_days,
            Some(dec!(21))
        );
        assert_eq!(Policy::example(), p);
    }

    #[test]
    fn off_peak_drops_every_peak_table_and_keeps_the_rest() {
        let example = Policy::example();
        let off_peak = example.off_peak().unwrap();
        let black_friday = Utc.with_ymd_and_hms(2026, 11, 27, 15, 0, 0).unwrap();
        assert!(example.peak_window_at(black_friday).is_some());
        assert!(off_peak.peak_window_at(black_friday).is_none());
        assert!(off_peak.category("apparel").peak_bands.is_empty());
        let mut home = example.category("home").clone();
        home.peak_bands.clear();
        assert_eq!(off_peak.category("home"), &home);
        assert_eq!(off_peak.program_id, example.program_id);
    }

    #[test]
    fn a_policy_reads_back_from_its_toml() {
        for policy in [Policy::example(), Policy::builtin()] {
            let text = policy.to_toml();
            assert_eq!(Policy::from_toml_str(&text).unwrap(), policy, "{text}");
        }
    }

    #[test]
    fn builtin_defaults_are_valid_and_documented_values() {
        let p = Policy::builtin();
        let c = p.default_category();
        assert_eq!(p.mode, Mode::Direct);
        assert_eq!(p.time_zone, chrono_tz::UTC);
        assert_eq!(p.rate_decimals, 4);
        assert_eq!(c.base_rate.get(), dec!(0.05));
        assert_eq!(c.cap.get(), dec!(0.30));
        assert_eq!(c.floor, Rate::ZERO);
        assert_eq!(c.margin_share, dec!(0.5));
        assert_eq!(c.max_step, dec!(0.01));
        assert_eq!(c.min_hold, TimeDelta::minutes(60));
        assert_eq!(c.bands.bands().len(), 3);
        assert!(!c.flash.enabled);
        assert_eq!(p.network.max_cut, dec!(0.2));
        assert_eq!(p.network.notice, TimeDelta::hours(168));
        assert_eq!(p.velocity.half_life, TimeDelta::hours(72));
    }

    #[test]
    fn band_errors_name_the_key() {
        let text = r#"
            [categories.electronics]
            bands = [
                { name = "scarce", max_days = "5", multiplier = "0.5" },
                { name = "normal", max_days = "60", multiplier = "1" },
                { name = "odd", max_days = "30", multiplier = "1.2" },
                { name = "overstock", multiplier = "1.5" },
            ]
        "#;
        assert_eq!(
            err(text),
            "categories.electronics.bands[2].max_days: must be greater than bands[1].max_days"
        );
        let text = r#"
            [defaults]
            bands = [{ name = "a", max_days = "5", multiplier = "0.5" }, { name = "b", max_days = "9", add = "0.1" }]
        "#;
        assert_eq!(
            err(text),
            "defaults.bands[1].max_days: the last band must be unbounded (leave max_days out)"
        );
        let text = r#"
            [defaults]
            bands = [{ name = "a", multiplier = "0.5", add = "0.1" }]
        "#;
        assert_eq!(
            err(text),
            "defaults.bands[0]: needs exactly one of multiplier and add"
        );
        assert_eq!(
            err("[defaults]\nbands = []"),
            "defaults.bands: must have at least one band"
        );
    }

    #[test]
    fn range_and_consistency_errors_name_the_key() {
        assert_eq!(
            err("[categories.home]\ncap = \"1.5\""),
            "categories.home.cap: must be between 0 and 1, got 1.5"
        );
        assert_eq!(
            err("[categories.home]\nfloor = \"0.4\""),
            "categories.home.floor: must not be above cap (0.30)"
        );
        assert_eq!(
            err("[program]\ntime_zone = \"Mars/Olympus\""),
            "program.time_zone: \"Mars/Olympus\" is not an IANA time zone name"
        );
        assert_eq!(
            err("[network]\nmax_cut = \"2\""),
            "network.max_cut: must be between 0 and 1"
        );
        assert_eq!(
            err("[defaults.flash]\nmin_cover_days = \"10\"\nexit_cover_days = \"20\""),
            "defaults.flash.exit_cover_days: must not be above min_cover_days"
        );
        assert_eq!(
            err("[categories.home.peak_bands]\nxmas = [{ name = \"a\", multiplier = \"1\" }]"),
            "categories.home.peak_bands.xmas: names no peak window"
        );
    }

    #[test]
    fn peak_window_errors_name_the_key() {
        let w = |start: &str, end: &str| {
            format!(
                "[[peak_windows]]\nname = \"w\"\nstart = \"{start}\"\nend = \"{end}\"\nbands = [{{ name = \"a\", multiplier = \"1\" }}]\n"
            )
        };
        assert_eq!(
            err(&w("2025-11-30", "2025-11-27")),
            "peak_windows[0].end: must be after start"
        );
        assert!(err(&w("soon", "2025-11-27")).starts_with("peak_windows[0].start: \"soon\""));
        let two = w("2025-11-27", "2025-12-02")
            + "[[peak_windows]]\nname = \"x\"\nstart = \"2025-12-01\"\nend = \"2025-12-05\"\nbands = [{ name = \"a\", multiplier = \"1\" }]\n";
        assert_eq!(err(&two), "peak_windows[1]: overlaps peak_windows[0]");
    }

    #[test]
    fn unknown_keys_are_rejected_with_their_name() {
        let e = err("[defaults]\nbase_rat = \"0.05\"");
        assert!(e.contains("base_rat"), "{e}");
        assert!(e.contains("line 2"), "{e}");
    }

    #[test]
    fn schema_errors_start_with_the_key_path() {
        let e = err("[program]\nid = \"acme\"\nmode = \"boosted\"\n");
        assert!(e.starts_with("program.mode: "), "{e}");
        assert!(e.contains("boosted"), "{e}");
        assert!(e.contains("line 3"), "{e}");
        let e = err("[defaults]\nbands = [{ name = 5, multiplier = \"2\" }]\n");
        assert!(e.starts_with("defaults.bands[0].name: "), "{e}");
        let e = err("[program\n");
        assert!(e.starts_with("policy file: "), "{e}");
    }

    #[test]
    fn category_sections_layer_over_defaults_field_by_field() {
        let p = Policy::from_toml_str(
            r#"
            [defaults]
            cap = "0.25"
            [defaults.flash]
            enabled = true
            bonus = "0.03"
            [categories.toys]
            base_rate = "0.07"
            [categories.toys.flash]
            bonus = "0.05"
            "#,
        )
        .unwrap();
        let toys = p.category("toys");
        assert_eq!(toys.base_rate.get(), dec!(0.07));
        assert_eq!(toys.cap.get(), dec!(0.25));
        assert!(toys.flash.enabled);
        assert_eq!(toys.flash.bonus.get(), dec!(0.05));
        assert_eq!(p.default_category().flash.bonus.get(), dec!(0.03));
    }
}
