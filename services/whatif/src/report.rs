//! The result of a what-if run: figures per program, category and SKU for the baseline and
//! the candidate, an optional elasticity estimate kept apart from what was observed, and
//! the time series a report plots. [`Report`] serialises to JSON (money and rates as
//! decimal strings); [`render_table`] draws it for a terminal.

use std::collections::BTreeMap;
use std::fmt::Write as _;

use chrono::{DateTime, SecondsFormat, Utc};
use rust_decimal::Decimal;
use serde::{Deserialize, Serialize};

use crate::history::HistorySummary;

/// What one policy would have done over a set of SKUs.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct PolicyFigures {
    /// Σ units sold × price × the rate in force when they sold.
    pub commission_spend: Decimal,
    /// Revenue − unit cost of the units sold − commission.
    pub margin_after_commission: Decimal,
    /// Commission paid while the rate in force came from a band that lowers the rate
    /// (`low_cover`): SKUs that were selling out anyway, where commission bought little.
    pub scarce_spend: Decimal,
    /// Commission paid while the rate in force came from a band that raises the rate
    /// (`overstock`).
    pub overstock_spend: Decimal,
    /// Changes of the published rate: each is a delivery to every subscribed partner.
    pub rate_changes: u64,
    /// Times the policy wanted a lower rate than the network's terms allowed yet (boost
    /// mode): a base cut waiting out the notice period (`base_cut_scheduled`), a cut
    /// limited by the maximum cut per period (`base_cut_limited`), or a boost kept up
    /// because it was guaranteed for `[network] boost_hours` (`boost_guaranteed`).
    /// Counted when a card newly carries one of these.
    pub cuts_blocked: u64,
    /// Flash incentives the policy's rules opened (its `flash` rules and concurrency
    /// limits, decided as the incentives service decides them). A merchandiser's own
    /// incentives from the history replay as they happened under both policies and are
    /// not counted here or in `incentive_spend`.
    #[serde(default)]
    pub incentives_opened: u64,
    /// The part of the commission spend the incentives' bonus paid: units sold during
    /// their windows × price × the bonus the rate carried (after cap and margin guard),
    /// as their budgets count it.
    #[serde(default)]
    pub incentive_spend: Decimal,
    /// Commission by the band the rate in force came from: the band's name, prefixed with
    /// the peak window's (`bfcm-2025/scarce`) when a window's table was in force;
    /// `(none)` before a band applied (no sales velocity yet).
    pub spend_by_band: BTreeMap<String, Decimal>,
}

impl PolicyFigures {
    pub(crate) fn add(&mut self, other: &PolicyFigures) {
        for (band, spend) in &other.spend_by_band {
            *self.spend_by_band.entry(band.clone()).or_default() += spend;
        }
        self.commission_spend += other.commission_spend;
        self.margin_after_commission += other.margin_after_commission;
        self.scarce_spend += other.scarce_spend;
        self.overstock_spend += other.overstock_spend;
        self.rate_changes += other.rate_changes;
        self.cuts_blocked += other.cuts_blocked;
        self.incentives_opened += other.incentives_opened;
        self.incentive_spend += other.incentive_spend;
    }
}

/// Observed sales and what each policy would have paid on them.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Figures {
    /// Units sold, inferred from stock depletion between consecutive readings (observed,
    /// the same under both policies).
    pub units_sold: Decimal,
    /// Units sold × price.
    pub revenue: Decimal,
    /// The baseline policy.
    pub baseline: PolicyFigures,
    /// The candidate policy.
    pub candidate: PolicyFigures,
}

impl Figures {
    pub(crate) fn add(&mut self, other: &Figures) {
        self.units_sold += other.units_sold;
        self.revenue += other.revenue;
        self.baseline.add(&other.baseline);
        self.candidate.add(&other.candidate);
    }
}

/// One SKU's figures.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SkuFigures {
    /// The SKU.
    pub sku: String,
    /// Its category (from its latest product data).
    pub category: String,
    /// Its figures.
    #[serde(flatten)]
    pub figures: Figures,
}

/// An estimate, not an observation: how sell-through might have moved with the
/// commission, under an assumed elasticity. Kept apart from the observed figures.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ElasticityEstimate {
    /// Always `"estimate"`, so a script cannot mistake these for observed figures.
    pub kind: String,
    /// The assumption: the relative change of units sold per relative change of the
    /// commission rate (0.5: 10 % more commission sells 5 % more).
    pub elasticity: Decimal,
    /// Units actually sold (under the baseline).
    pub observed_units: Decimal,
    /// Units the candidate might have sold.
    pub estimated_candidate_units: Decimal,
    /// Commission the candidate might have paid on them.
    pub estimated_candidate_spend: Decimal,
    /// Margin after commission the candidate might have made.
    pub estimated_candidate_margin: Decimal,
}

/// Commission paid in one time bucket.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SpendPoint {
    /// Start of the bucket.
    pub at: DateTime<Utc>,
    /// Baseline spend in it.
    pub baseline: Decimal,
    /// Candidate spend in it.
    pub candidate: Decimal,
}

/// The rates in force from `at` on.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RatePoint {
    /// When either rate changed.
    pub at: DateTime<Utc>,
    /// Baseline rate (absent before its first card).
    pub baseline: Option<Decimal>,
    /// Candidate rate (absent before its first card).
    pub candidate: Option<Decimal>,
}

/// One SKU's rates over time.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RateSeries {
    /// The SKU.
    pub sku: String,
    /// Every change of either rate, oldest first.
    pub points: Vec<RatePoint>,
}

/// What a report plots.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Series {
    /// Length of a spend bucket, in seconds (86400: spend per day).
    pub bucket_seconds: i64,
    /// Spend per bucket, baseline and candidate, for every bucket from the first to the
    /// last (empty buckets are zero).
    pub spend: Vec<SpendPoint>,
    /// Rates over time of the SKUs with the highest baseline spend.
    pub top_skus: Vec<RateSeries>,
}

/// The policies compared.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PolicyLabel {
    /// `[program] id`.
    pub program: String,
    /// `direct` or `boost`.
    pub mode: String,
}

/// A what-if run's result.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Report {
    /// What was replayed.
    pub history: HistorySummary,
    /// The baseline policy.
    pub baseline_policy: PolicyLabel,
    /// The candidate policy.
    pub candidate_policy: PolicyLabel,
    /// The whole program.
    pub program: Figures,
    /// Per category.
    pub categories: BTreeMap<String, Figures>,
    /// Per SKU, highest baseline spend first.
    pub skus: Vec<SkuFigures>,
    /// Units that sold before the SKU had product data (no price, so no commission).
    pub unpriced_units: Decimal,
    /// Present when an elasticity was assumed.
    pub estimate: Option<ElasticityEstimate>,
    /// Time series for plots.
    pub series: Series,
}

/// Money as the table and the HTML page print it.
pub(crate) fn money(d: Decimal) -> String {
    format!("{:.2}", d.round_dp(2))
}

/// The change between the two figures as shown, so a row adds up on screen.
pub(crate) fn delta(base: Decimal, cand: Decimal) -> String {
    let d = cand.round_dp(2) - base.round_dp(2);
    if d > Decimal::ZERO {
        format!("+{d:.2}")
    } else {
        format!("{d:.2}")
    }
}

/// "N files, " for a history read from files; nothing for one read from the input
/// archive (which names no files).
pub(crate) fn files_read(files: usize) -> String {
    match files {
        0 => String::new(),
        1 => "1 file, ".to_owned(),
        n => format!("{n} files, "),
    }
}

fn when(t: DateTime<Utc>) -> String {
    t.to_rfc3339_opts(SecondsFormat::Secs, true)
}

fn rows(out: &mut String, name: &str, f: &Figures) {
    let b = &f.baseline;
    let c = &f.candidate;
    let lines: [(&str, String, String, String); 9] = [
        (
            "commission spend",
            money(b.commission_spend),
            money(c.commission_spend),
            delta(b.commission_spend, c.commission_spend),
        ),
        (
            "margin after commission",
            money(b.margin_after_commission),
            money(c.margin_after_commission),
            delta(b.margin_after_commission, c.margin_after_commission),
        ),
        (
            "spend while scarce",
            money(b.scarce_spend),
            money(c.scarce_spend),
            delta(b.scarce_spend, c.scarce_spend),
        ),
        (
            "spend on overstock",
            money(b.overstock_spend),
            money(c.overstock_spend),
            delta(b.overstock_spend, c.overstock_spend),
        ),
        (
            "rate changes sent",
            b.rate_changes.to_string(),
            c.rate_changes.to_string(),
            (c.rate_changes as i64 - b.rate_changes as i64).to_string(),
        ),
        (
            "cuts blocked by network",
            b.cuts_blocked.to_string(),
            c.cuts_blocked.to_string(),
            (c.cuts_blocked as i64 - b.cuts_blocked as i64).to_string(),
        ),
        (
            "incentives opened",
            b.incentives_opened.to_string(),
            c.incentives_opened.to_string(),
            (c.incentives_opened as i64 - b.incentives_opened as i64).to_string(),
        ),
        (
            "spend on incentives",
            money(b.incentive_spend),
            money(c.incentive_spend),
            delta(b.incentive_spend, c.incentive_spend),
        ),
        (
            "units sold (observed)",
            f.units_sold.normalize().to_string(),
            f.units_sold.normalize().to_string(),
            "0".to_owned(),
        ),
    ];
    for (i, (label, base, cand, change)) in lines.iter().enumerate() {
        let scope = if i == 0 { name } else { "" };
        let _ = writeln!(
            out,
            "{scope:<16} {label:<26} {base:>14} {cand:>14} {change:>12}"
        );
    }
}

/// The report as a plain-text table for a terminal: the program, each category, and the
/// SKUs whose spend moves most.
pub fn render_table(report: &Report) -> String {
    let mut out = String::new();
    let h = &report.history;
    let span = match (h.from, h.until) {
        (Some(a), Some(b)) => format!("{} to {}", when(a), when(b)),
        _ => "no events".to_owned(),
    };
    let _ = writeln!(
        out,
        "what-if: baseline {} ({}) vs candidate {} ({})",
        report.baseline_policy.program,
        report.baseline_policy.mode,
        report.candidate_policy.program,
        report.candidate_policy.mode
    );
    let _ = writeln!(
        out,
        "history: {span}; {}{} stock readings, {} products, {} SKUs",
        files_read(h.files),
        h.stock_readings,
        h.products,
        h.skus
    );
    if h.gaps.is_empty() {
        let _ = writeln!(out, "gaps: none");
    } else {
        for gap in &h.gaps {
            let _ = writeln!(
                out,
                "GAP: no stock data from {} to {} ({} h); figures do not cover it",
                when(gap.from),
                when(gap.until),
                gap.hours
            );
        }
    }
    if report.unpriced_units > Decimal::ZERO {
        let _ = writeln!(
            out,
            "{} units sold before their SKU had product data (no price): not in the figures",
            report.unpriced_units.normalize()
        );
    }
    let _ = writeln!(out);
    let _ = writeln!(
        out,
        "{:<16} {:<26} {:>14} {:>14} {:>12}",
        "scope", "figure", "baseline", "candidate", "change"
    );
    rows(&mut out, "program", &report.program);
    for (category, figures) in &report.categories {
        let _ = writeln!(out);
        rows(&mut out, category, figures);
    }

    let _ = writeln!(out);
    let _ = writeln!(out, "program commission by band of the rate in force:");
    let bands: std::collections::BTreeSet<&String> = report
        .program
        .baseline
        .spend_by_band
        .keys()
        .chain(report.program.candidate.spend_by_band.keys())
        .collect();
    for band in bands {
        let get = |f: &PolicyFigures| f.spend_by_band.get(band).copied().unwrap_or_default();
        let (b, c) = (
            get(&report.program.baseline),
            get(&report.program.candidate),
        );
        let _ = writeln!(
            out,
            "{:<16} {band:<26} {:>14} {:>14} {:>12}",
            "",
            money(b),
            money(c),
            delta(b, c)
        );
    }

    let mut movers: Vec<&SkuFigures> = report.skus.iter().collect();
    movers.sort_by(|a, b| {
        let da = (a.figures.candidate.commission_spend - a.figures.baseline.commission_spend).abs();
        let db = (b.figures.candidate.commission_spend - b.figures.baseline.commission_spend).abs();
        db.cmp(&da).then_with(|| a.sku.cmp(&b.sku))
    });
    let _ = writeln!(out);
    let _ = writeln!(out, "SKUs whose commission spend moves most:");
    let _ = writeln!(
        out,
        "{:<20} {:<14} {:>10} {:>14} {:>14} {:>12}",
        "sku", "category", "units", "baseline", "candidate", "change"
    );
    for s in movers.iter().take(10) {
        let f = &s.figures;
        let _ = writeln!(
            out,
            "{:<20} {:<14} {:>10} {:>14} {:>14} {:>12}",
            s.sku,
            s.category,
            f.units_sold.normalize(),
            money(f.baseline.commission_spend),
            money(f.candidate.commission_spend),
            delta(f.baseline.commission_spend, f.candidate.commission_spend)
        );
    }
    if let Some(e) = &report.estimate {
        let _ = writeln!(out);
        let _ = writeln!(
            out,
            "ESTIMATE (not observed), assuming elasticity {}:",
            e.elasticity.normalize()
        );
        let _ = writeln!(
            out,
            "  units {} observed -> {} estimated under the candidate",
            e.observed_units.normalize(),
            e.estimated_candidate_units.round_dp(1).normalize()
        );
        let _ = writeln!(
            out,
            "  candidate commission spend {} and margin after commission {} (estimated)",
            money(e.estimated_candidate_spend),
            money(e.estimated_candidate_margin)
        );
    }
    out
}
