//! The what-if [`Report`] as one self-contained HTML page a merchandiser opens offline:
//! inline CSS, SVG plots drawn here (no script, no font, no image, no link out), every
//! text that comes from data escaped.
//!
//! Printed figures use the terminal table's formatting (money to two places, changes
//! signed). Money and rates stay [`Decimal`] for every printed figure; they become `f64`
//! only to place a pixel. Baseline and candidate differ by more than colour: the baseline
//! is a solid line with round markers or a solid bar, the candidate a dashed line with
//! square markers or a hatched bar.

use std::collections::BTreeSet;
use std::fmt::Write as _;

use chrono::{DateTime, SecondsFormat, Utc};
use rust_decimal::Decimal;
use rust_decimal::prelude::ToPrimitive;

use crate::report::{Figures, PolicyFigures, RateSeries, Report, SkuFigures, delta, money};

/// Baseline colour: 8.9:1 on white.
const BASE: &str = "#1f4e79";
/// Candidate colour: 5.3:1 on white.
const CAND: &str = "#a64b00";
/// Axis and label colour.
const INK: &str = "#333333";
/// Grid line colour.
const GRID: &str = "#d9d9d9";
/// Spend-chart markers are drawn up to this many buckets; beyond, they would blur.
const MAX_MARKERS: usize = 80;
/// SKUs listed in the "moves most" table, as in the terminal table.
const MOVERS: usize = 10;

const CSS: &str = "\
:root{color-scheme:light}
*{box-sizing:border-box}
body{margin:0;font:16px/1.5 system-ui,-apple-system,'Segoe UI',Roboto,'Helvetica Neue',Arial,sans-serif;color:#1a1a1a;background:#fff}
main{max-width:1100px;margin:0 auto;padding:1rem 1.25rem 3rem}
h1{font-size:1.6rem;line-height:1.25;margin:.5rem 0}
h2{font-size:1.25rem;margin:2rem 0 .5rem;border-bottom:1px solid #ccc;padding-bottom:.25rem}
.lede{color:#3a3a3a;margin:.25rem 0 1rem}
.table-wrap{overflow-x:auto}
table{border-collapse:collapse;margin:.5rem 0 1rem;min-width:60%}
caption{text-align:left;font-weight:600;padding:.25rem 0}
th,td{padding:.3rem .6rem;border-bottom:1px solid #e0e0e0;text-align:left;vertical-align:top}
td.num,th.num{text-align:right;font-variant-numeric:tabular-nums;white-space:nowrap}
thead th{border-bottom:2px solid #555}
tbody th[scope=rowgroup]{background:#f4f6f8}
tbody+tbody tr:first-child>*{border-top:2px solid #999}
svg{display:block;width:100%;height:auto;margin:.5rem 0}
svg text{font-family:system-ui,-apple-system,'Segoe UI',Roboto,Arial,sans-serif}
.grid{display:grid;grid-template-columns:repeat(auto-fill,minmax(320px,1fr));gap:1rem}
figure{margin:0}
figcaption{font-weight:600}
.warning{background:#fff4e5;border-left:6px solid #a64b00;padding:.5rem 1rem;margin:1rem 0}
.warning h2{border:0;margin:.25rem 0}
.note{background:#f4f6f8;border-left:6px solid #1f4e79;padding:.5rem 1rem;margin:1rem 0}
.estimate{background:#f7f3fb;border:2px dashed #5b3a8c;padding:.5rem 1rem;margin:2rem 0}
.estimate h2{border:0;margin:.25rem 0}
footer{margin-top:2rem;color:#3a3a3a;font-size:.9rem}
";

/// The report as a self-contained HTML document.
pub fn render_html(report: &Report) -> String {
    let mut out = String::with_capacity(64 * 1024);
    let title = format!(
        "What-if: {} ({}) vs {} ({}), {}",
        report.baseline_policy.program,
        report.baseline_policy.mode,
        report.candidate_policy.program,
        report.candidate_policy.mode,
        period(report, "%Y-%m-%d"),
    );
    let _ = write!(
        out,
        "<!DOCTYPE html>\n<html lang=\"en\">\n<head>\n<meta charset=\"utf-8\">\n\
         <meta name=\"viewport\" content=\"width=device-width, initial-scale=1\">\n\
         <title>{}</title>\n<style>\n{CSS}</style>\n</head>\n<body>\n<main>\n",
        escape(&title)
    );
    header(&mut out, report);
    summary(&mut out, report);
    spend_chart(&mut out, report);
    rate_charts(&mut out, &report.series.top_skus, report);
    band_chart(&mut out, &report.program);
    categories(&mut out, report);
    movers(&mut out, &report.skus);
    estimate(&mut out, report);
    out.push_str(
        "<footer><p>Units sold are observed: inferred from stock depletion between readings, \
         the same under both policies. What a policy changes is the commission paid on them, \
         the margin left and the rate changes partners receive. Only the section marked \
         estimate assumes anything about sales moving with the commission.</p></footer>\n\
         </main>\n</body>\n</html>\n",
    );
    out
}

/// `s` with the five HTML-significant characters replaced, safe in text and in quoted
/// attribute values.
pub(crate) fn escape(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            c => out.push(c),
        }
    }
    out
}

/// A change of a count as the terminal table prints it.
fn count_delta(base: u64, cand: u64) -> String {
    (i128::from(cand) - i128::from(base)).to_string()
}

/// A rate as a percentage, exactly (0.035 is `3.5 %`).
fn percent(rate: Decimal) -> String {
    format!("{} %", (rate * Decimal::ONE_HUNDRED).normalize())
}

fn when(t: DateTime<Utc>) -> String {
    t.to_rfc3339_opts(SecondsFormat::Secs, true)
}

fn period(report: &Report, format: &str) -> String {
    match (report.history.from, report.history.until) {
        (Some(a), Some(b)) => format!("{} to {}", a.format(format), b.format(format)),
        _ => "no events".to_owned(),
    }
}

fn header(out: &mut String, report: &Report) {
    let h = &report.history;
    let _ = write!(
        out,
        "<header>\n<h1>What-if: baseline <b>{}</b> ({}) vs candidate <b>{}</b> ({})</h1>\n\
         <p class=\"lede\">History replayed: {}. {}{} stock readings, {} products, \
         {} SKUs.</p>\n</header>\n",
        escape(&report.baseline_policy.program),
        escape(&report.baseline_policy.mode),
        escape(&report.candidate_policy.program),
        escape(&report.candidate_policy.mode),
        escape(&period(report, "%Y-%m-%d %H:%M UTC")),
        crate::report::files_read(h.files),
        h.stock_readings,
        h.products,
        h.skus
    );
    if h.gaps.is_empty() {
        out.push_str(
            "<p class=\"note\">No gaps in the history: stock data covers the whole period.</p>\n",
        );
    } else {
        let _ = write!(
            out,
            "<section class=\"warning\" id=\"gaps\" aria-labelledby=\"gaps-h\">\n\
             <h2 id=\"gaps-h\">Warning: {} gap{} in the history</h2>\n\
             <p>No stock data for these stretches. The figures do not cover them; they are \
             shaded in the spend chart, not bridged.</p>\n<ul>\n",
            h.gaps.len(),
            if h.gaps.len() == 1 { "" } else { "s" }
        );
        for gap in &h.gaps {
            let _ = writeln!(
                out,
                "<li>from {} to {} ({} h)</li>",
                when(gap.from),
                when(gap.until),
                gap.hours
            );
        }
        out.push_str("</ul>\n</section>\n");
    }
    if report.unpriced_units > Decimal::ZERO {
        let _ = writeln!(
            out,
            "<p class=\"note\">{} units sold before their SKU had product data (no price): \
             not in the figures.</p>",
            report.unpriced_units.normalize()
        );
    }
}

/// The rows of a figures table: label, baseline, candidate, change.
fn figure_rows(f: &Figures) -> [(&'static str, String, String, String); 10] {
    let b: &PolicyFigures = &f.baseline;
    let c: &PolicyFigures = &f.candidate;
    let m = |label, x: Decimal, y: Decimal| (label, money(x), money(y), delta(x, y));
    let n = |label, x: u64, y: u64| (label, x.to_string(), y.to_string(), count_delta(x, y));
    let units = f.units_sold.normalize().to_string();
    [
        m("commission spend", b.commission_spend, c.commission_spend),
        m(
            "margin after commission",
            b.margin_after_commission,
            c.margin_after_commission,
        ),
        m("spend while scarce", b.scarce_spend, c.scarce_spend),
        m("spend on overstock", b.overstock_spend, c.overstock_spend),
        n("rate changes sent", b.rate_changes, c.rate_changes),
        n("cuts blocked by network", b.cuts_blocked, c.cuts_blocked),
        n(
            "incentives opened",
            b.incentives_opened,
            c.incentives_opened,
        ),
        m("spend on incentives", b.incentive_spend, c.incentive_spend),
        (
            "units sold (observed)",
            units.clone(),
            units,
            "0".to_owned(),
        ),
        (
            "revenue (observed)",
            money(f.revenue),
            money(f.revenue),
            delta(f.revenue, f.revenue),
        ),
    ]
}

fn figures_head(out: &mut String, first: &str) {
    let _ = writeln!(
        out,
        "<thead><tr>{first}<th scope=\"col\">figure</th><th scope=\"col\" class=\"num\">baseline</th>\
         <th scope=\"col\" class=\"num\">candidate</th><th scope=\"col\" class=\"num\">change</th></tr></thead>"
    );
}

fn summary(out: &mut String, report: &Report) {
    out.push_str("<h2 id=\"summary\">Program summary</h2>\n<div class=\"table-wrap\"><table>\n");
    let _ = writeln!(
        out,
        "<caption>Whole program: what each policy would have paid on the units actually sold</caption>"
    );
    figures_head(out, "");
    out.push_str("<tbody>\n");
    for (label, base, cand, change) in figure_rows(&report.program) {
        let _ = writeln!(
            out,
            "<tr><th scope=\"row\">{label}</th><td class=\"num\">{base}</td>\
             <td class=\"num\">{cand}</td><td class=\"num\">{change}</td></tr>"
        );
    }
    out.push_str("</tbody>\n</table></div>\n");
}

fn categories(out: &mut String, report: &Report) {
    out.push_str("<h2 id=\"categories\">By category</h2>\n<div class=\"table-wrap\"><table>\n");
    let _ = writeln!(
        out,
        "<caption>Each category's figures, baseline vs candidate</caption>"
    );
    figures_head(out, "<th scope=\"col\">category</th>");
    for (category, figures) in &report.categories {
        out.push_str("<tbody>\n");
        let rows = figure_rows(figures);
        let span = rows.len();
        for (i, (label, base, cand, change)) in rows.into_iter().enumerate() {
            out.push_str("<tr>");
            if i == 0 {
                let _ = write!(
                    out,
                    "<th scope=\"rowgroup\" rowspan=\"{span}\">{}</th>",
                    escape(category)
                );
            }
            let _ = writeln!(
                out,
                "<th scope=\"row\">{label}</th><td class=\"num\">{base}</td>\
                 <td class=\"num\">{cand}</td><td class=\"num\">{change}</td></tr>"
            );
        }
        out.push_str("</tbody>\n");
    }
    out.push_str("</table></div>\n");
}

fn movers(out: &mut String, skus: &[SkuFigures]) {
    let mut movers: Vec<&SkuFigures> = skus.iter().collect();
    movers.sort_by(|a, b| {
        let da = (a.figures.candidate.commission_spend - a.figures.baseline.commission_spend).abs();
        let db = (b.figures.candidate.commission_spend - b.figures.baseline.commission_spend).abs();
        db.cmp(&da).then_with(|| a.sku.cmp(&b.sku))
    });
    out.push_str(
        "<h2 id=\"movers\">SKUs whose commission spend moves most</h2>\n\
         <div class=\"table-wrap\"><table>\n\
         <caption>The SKUs with the largest change of commission spend</caption>\n\
         <thead><tr><th scope=\"col\">SKU</th><th scope=\"col\">category</th>\
         <th scope=\"col\" class=\"num\">units sold</th><th scope=\"col\" class=\"num\">baseline spend</th>\
         <th scope=\"col\" class=\"num\">candidate spend</th><th scope=\"col\" class=\"num\">change</th></tr></thead>\n<tbody>\n",
    );
    for s in movers.iter().take(MOVERS) {
        let f = &s.figures;
        let _ = writeln!(
            out,
            "<tr><th scope=\"row\">{}</th><td>{}</td><td class=\"num\">{}</td><td class=\"num\">{}</td>\
             <td class=\"num\">{}</td><td class=\"num\">{}</td></tr>",
            escape(&s.sku),
            escape(&s.category),
            f.units_sold.normalize(),
            money(f.baseline.commission_spend),
            money(f.candidate.commission_spend),
            delta(f.baseline.commission_spend, f.candidate.commission_spend)
        );
    }
    out.push_str("</tbody>\n</table></div>\n");
}

fn estimate(out: &mut String, report: &Report) {
    let Some(e) = &report.estimate else {
        return;
    };
    let elasticity = e.elasticity.normalize();
    let observed = &report.program.candidate;
    let est_units = e.estimated_candidate_units.round_dp(1).normalize();
    let _ = write!(
        out,
        "<section class=\"estimate\" id=\"estimate\" aria-labelledby=\"estimate-h\">\n\
         <h2 id=\"estimate-h\">Estimate, not observed: assumes elasticity {elasticity}</h2>\n\
         <p>If units sold moved by {elasticity} × the relative change of the commission rate, \
         the candidate might have done this. Everything above this section is observed; \
         this is an assumption.</p>\n<div class=\"table-wrap\"><table>\n\
         <caption>Candidate figures under the elasticity assumption {elasticity}</caption>\n\
         <thead><tr><th scope=\"col\">figure</th><th scope=\"col\" class=\"num\">observed sales</th>\
         <th scope=\"col\" class=\"num\">estimated</th><th scope=\"col\" class=\"num\">change</th></tr></thead>\n\
         <tbody>\n\
         <tr><th scope=\"row\">units sold</th><td class=\"num\">{}</td><td class=\"num\">{est_units}</td><td class=\"num\">{}</td></tr>\n\
         <tr><th scope=\"row\">candidate commission spend</th><td class=\"num\">{}</td><td class=\"num\">{}</td><td class=\"num\">{}</td></tr>\n\
         <tr><th scope=\"row\">candidate margin after commission</th><td class=\"num\">{}</td><td class=\"num\">{}</td><td class=\"num\">{}</td></tr>\n\
         </tbody>\n</table></div>\n</section>\n",
        e.observed_units.normalize(),
        (e.estimated_candidate_units.round_dp(1) - e.observed_units).normalize(),
        money(observed.commission_spend),
        money(e.estimated_candidate_spend),
        delta(observed.commission_spend, e.estimated_candidate_spend),
        money(observed.margin_after_commission),
        money(e.estimated_candidate_margin),
        delta(
            observed.margin_after_commission,
            e.estimated_candidate_margin
        ),
    );
}

// ---- plots ---------------------------------------------------------------------------

/// The plot area inside a viewBox of `width` × `height`.
#[derive(Debug, Clone, Copy)]
struct Frame {
    width: f64,
    height: f64,
    left: f64,
    right: f64,
    top: f64,
    bottom: f64,
}

impl Frame {
    fn x(&self, frac: f64) -> f64 {
        self.left + frac.clamp(0.0, 1.0) * (self.width - self.left - self.right)
    }
    fn y(&self, frac: f64) -> f64 {
        self.height - self.bottom - frac.clamp(0.0, 1.0) * (self.height - self.top - self.bottom)
    }
}

/// `value / max` as a pixel fraction.
fn frac(value: Decimal, max: Decimal) -> f64 {
    if max <= Decimal::ZERO {
        return 0.0;
    }
    (value / max).to_f64().unwrap_or(0.0)
}

/// Where `t` falls between `from` and `until`, as a fraction.
fn time_frac(t: DateTime<Utc>, from: DateTime<Utc>, until: DateTime<Utc>) -> f64 {
    let span = (until - from).num_seconds();
    if span <= 0 {
        return 0.5;
    }
    (t - from).num_seconds() as f64 / span as f64
}

/// A round tick step (1, 2 or 5 × a power of ten) giving at most `ticks` steps up to
/// `max`, and the axis top: the first multiple of the step at or above `max`.
fn axis(max: Decimal, ticks: u32) -> (Decimal, Decimal) {
    if max <= Decimal::ZERO {
        return (Decimal::ONE, Decimal::ONE);
    }
    let ticks = Decimal::from(ticks.max(1));
    let mut chosen = Decimal::ONE;
    'search: for exp in -6i32..=18 {
        let power = if exp < 0 {
            Decimal::new(1, exp.unsigned_abs())
        } else {
            Decimal::from(10u64.pow(exp.unsigned_abs()))
        };
        for m in [1u32, 2, 5] {
            chosen = power * Decimal::from(m);
            if chosen * ticks >= max {
                break 'search;
            }
        }
    }
    (chosen, (max / chosen).ceil() * chosen)
}

fn svg_open(out: &mut String, id: &str, width: f64, height: f64, title: &str, desc: &str) {
    let _ = write!(
        out,
        "<svg id=\"{id}\" viewBox=\"0 0 {width} {height}\" role=\"img\" \
         aria-labelledby=\"{id}-title {id}-desc\" preserveAspectRatio=\"xMidYMid meet\">\n\
         <title id=\"{id}-title\">{}</title>\n<desc id=\"{id}-desc\">{}</desc>\n",
        escape(title),
        escape(desc)
    );
}

/// A legend in the top margin: a solid line with a round marker for the baseline, a
/// dashed line with a square marker for the candidate.
fn line_legend(out: &mut String, x: f64, y: f64) {
    let _ = writeln!(
        out,
        "<g font-size=\"13\" fill=\"{INK}\">\
         <line x1=\"{x}\" y1=\"{y}\" x2=\"{}\" y2=\"{y}\" stroke=\"{BASE}\" stroke-width=\"2.5\"/>\
         <circle cx=\"{}\" cy=\"{y}\" r=\"3.5\" fill=\"{BASE}\"/>\
         <text x=\"{}\" y=\"{}\">baseline</text>\
         <line x1=\"{}\" y1=\"{y}\" x2=\"{}\" y2=\"{y}\" stroke=\"{CAND}\" stroke-width=\"2.5\" stroke-dasharray=\"7 4\"/>\
         <rect x=\"{}\" y=\"{}\" width=\"7\" height=\"7\" fill=\"{CAND}\"/>\
         <text x=\"{}\" y=\"{}\">candidate</text></g>",
        x + 28.0,
        x + 14.0,
        x + 34.0,
        y + 4.5,
        x + 105.0,
        x + 133.0,
        x + 115.5,
        y - 3.5,
        x + 139.0,
        y + 4.5,
    );
}

/// Horizontal grid lines and labels for a value axis from zero to `top` by `step`.
fn value_axis(
    out: &mut String,
    f: &Frame,
    step: Decimal,
    top: Decimal,
    label: fn(Decimal) -> String,
) {
    let mut v = Decimal::ZERO;
    while v <= top {
        let y = f.y(frac(v, top));
        let _ = writeln!(
            out,
            "<line x1=\"{:.1}\" y1=\"{y:.1}\" x2=\"{:.1}\" y2=\"{y:.1}\" stroke=\"{GRID}\"/>\
             <text x=\"{:.1}\" y=\"{:.1}\" text-anchor=\"end\" font-size=\"13\" fill=\"{INK}\">{}</text>",
            f.left,
            f.width - f.right,
            f.left - 6.0,
            y + 4.0,
            escape(&label(v))
        );
        v += step;
    }
}

fn bucket_label(t: DateTime<Utc>, bucket_seconds: i64) -> String {
    if bucket_seconds >= 86_400 {
        t.format("%b %-d").to_string()
    } else {
        t.format("%b %-d %H:%M").to_string()
    }
}

fn spend_chart(out: &mut String, report: &Report) {
    let points = &report.series.spend;
    let f = Frame {
        width: 960.0,
        height: 380.0,
        left: 96.0,
        right: 24.0,
        top: 40.0,
        bottom: 48.0,
    };
    let bucket = report.series.bucket_seconds;
    let unit = match bucket {
        86_400 => "day".to_owned(),
        3_600 => "hour".to_owned(),
        s if s % 3_600 == 0 => format!("{} hours", s / 3_600),
        s => format!("{s} seconds"),
    };
    let _ = writeln!(
        out,
        "<h2 id=\"spend\">Commission spend per {unit}, baseline vs candidate</h2>"
    );
    let total_b = money(report.program.baseline.commission_spend);
    let total_c = money(report.program.candidate.commission_spend);
    svg_open(
        out,
        "spend-chart",
        f.width,
        f.height,
        &format!("Commission spend per {unit}, baseline vs candidate"),
        &format!(
            "Line chart of commission spend per {unit} from {}. Baseline solid line, \
             total {total_b}; candidate dashed line, total {total_c}.",
            period(report, "%Y-%m-%d")
        ),
    );
    line_legend(out, f.left, 18.0);
    let (Some(first), Some(last)) = (points.first(), points.last()) else {
        let _ = writeln!(
            out,
            "<text x=\"{}\" y=\"{}\" text-anchor=\"middle\" fill=\"{INK}\">no spend to plot</text>\n</svg>",
            f.width / 2.0,
            f.height / 2.0
        );
        return;
    };
    let (t0, t1) = (first.at, last.at);
    let max = points
        .iter()
        .map(|p| p.baseline.max(p.candidate))
        .max()
        .unwrap_or_default();
    let (step, top) = axis(max, 5);
    value_axis(out, &f, step, top, money);

    // Gaps: shaded, so a drop to zero there reads as missing data, not as no sales.
    for gap in &report.history.gaps {
        if gap.until < t0 || gap.from > t1 {
            continue;
        }
        let (x0, x1) = (
            f.x(time_frac(gap.from, t0, t1)),
            f.x(time_frac(gap.until, t0, t1)),
        );
        let _ = writeln!(
            out,
            "<rect x=\"{x0:.1}\" y=\"{:.1}\" width=\"{:.1}\" height=\"{:.1}\" fill=\"#f2dcc7\">\
             <title>gap: no stock data from {} to {}</title></rect>\
             <text x=\"{:.1}\" y=\"{:.1}\" font-size=\"12\" fill=\"{INK}\" text-anchor=\"middle\">gap</text>",
            f.top,
            (x1 - x0).max(2.0),
            f.height - f.top - f.bottom,
            when(gap.from),
            when(gap.until),
            (x0 + x1) / 2.0,
            f.top + 14.0
        );
    }

    // Time axis: a label every `every` buckets, at most eight.
    let every = points.len().div_ceil(8).max(1);
    let _ = writeln!(
        out,
        "<line x1=\"{:.1}\" y1=\"{:.1}\" x2=\"{:.1}\" y2=\"{:.1}\" stroke=\"{INK}\"/>",
        f.left,
        f.y(0.0),
        f.width - f.right,
        f.y(0.0)
    );
    for p in points.iter().step_by(every) {
        let x = f.x(time_frac(p.at, t0, t1));
        let _ = writeln!(
            out,
            "<line x1=\"{x:.1}\" y1=\"{:.1}\" x2=\"{x:.1}\" y2=\"{:.1}\" stroke=\"{INK}\"/>\
             <text x=\"{x:.1}\" y=\"{:.1}\" text-anchor=\"middle\" font-size=\"13\" fill=\"{INK}\">{}</text>",
            f.y(0.0),
            f.y(0.0) + 5.0,
            f.y(0.0) + 20.0,
            escape(&bucket_label(p.at, bucket))
        );
    }
    let _ = writeln!(
        out,
        "<text x=\"{:.1}\" y=\"{:.1}\" text-anchor=\"middle\" font-size=\"13\" fill=\"{INK}\">start of each {unit} (UTC)</text>",
        f.x(0.5),
        f.height - 6.0
    );

    for (k, colour) in [(0usize, BASE), (1, CAND)] {
        let value = |p: &crate::report::SpendPoint| if k == 0 { p.baseline } else { p.candidate };
        let coords: Vec<(f64, f64)> = points
            .iter()
            .map(|p| (f.x(time_frac(p.at, t0, t1)), f.y(frac(value(p), top))))
            .collect();
        let dash = if k == 0 {
            ""
        } else {
            " stroke-dasharray=\"7 4\""
        };
        out.push_str("<polyline class=\"");
        out.push_str(if k == 0 { "baseline" } else { "candidate" });
        let _ = write!(
            out,
            "\" fill=\"none\" stroke=\"{colour}\" stroke-width=\"2.5\" stroke-linejoin=\"round\"{dash} points=\""
        );
        for (i, (x, y)) in coords.iter().enumerate() {
            if i > 0 {
                out.push(' ');
            }
            let _ = write!(out, "{x:.1},{y:.1}");
        }
        out.push_str("\"/>\n");
        if points.len() <= MAX_MARKERS {
            let who = if k == 0 { "baseline" } else { "candidate" };
            for (p, (x, y)) in points.iter().zip(&coords) {
                let tip = format!("{} {who}: {}", bucket_label(p.at, bucket), money(value(p)));
                if k == 0 {
                    let _ = writeln!(
                        out,
                        "<circle cx=\"{x:.1}\" cy=\"{y:.1}\" r=\"3.5\" fill=\"{colour}\"><title>{}</title></circle>",
                        escape(&tip)
                    );
                } else {
                    let _ = writeln!(
                        out,
                        "<rect x=\"{:.1}\" y=\"{:.1}\" width=\"7\" height=\"7\" fill=\"{colour}\"><title>{}</title></rect>",
                        x - 3.5,
                        y - 3.5,
                        escape(&tip)
                    );
                }
            }
        }
    }
    out.push_str("</svg>\n");
}

fn rate_charts(out: &mut String, top_skus: &[RateSeries], report: &Report) {
    out.push_str("<h2 id=\"rates\">Rate over time, top SKUs by baseline spend</h2>\n");
    if top_skus.is_empty() {
        out.push_str("<p>No SKU had a rate in force.</p>\n");
        return;
    }
    let all = top_skus.iter().flat_map(|s| &s.points);
    let first = all.clone().map(|p| p.at).min();
    let last = all.clone().map(|p| p.at).max();
    let (Some(t0), Some(t1)) = (
        [report.history.from, first].into_iter().flatten().min(),
        [report.history.until, last].into_iter().flatten().max(),
    ) else {
        out.push_str("<p>No SKU had a rate in force.</p>\n");
        return;
    };
    let max = all
        .flat_map(|p| [p.baseline, p.candidate])
        .flatten()
        .max()
        .unwrap_or_default();
    // One scale for every SKU, so the small multiples compare.
    let (step, top) = axis(max, 4);
    let f = Frame {
        width: 400.0,
        height: 230.0,
        left: 56.0,
        right: 14.0,
        top: 34.0,
        bottom: 40.0,
    };
    out.push_str(
        "<p>The published rate in force for each SKU (same scale in every chart). \
         Baseline solid, candidate dashed; where they overlap the policies agree.</p>\n\
         <div class=\"grid\">\n",
    );
    for (i, series) in top_skus.iter().enumerate() {
        let id = format!("rate-chart-{i}");
        let sku = escape(&series.sku);
        let _ = writeln!(out, "<figure><figcaption>{sku}</figcaption>");
        svg_open(
            out,
            &id,
            f.width,
            f.height,
            &format!("Commission rate over time for SKU {}", series.sku),
            &format!(
                "Step chart of the rate in force for {}: baseline solid, candidate dashed, \
                 {} changes of either rate.",
                series.sku,
                series.points.len()
            ),
        );
        line_legend(out, f.left, 14.0);
        value_axis(out, &f, step, top, percent);
        let _ = writeln!(
            out,
            "<line x1=\"{:.1}\" y1=\"{:.1}\" x2=\"{:.1}\" y2=\"{:.1}\" stroke=\"{INK}\"/>",
            f.left,
            f.y(0.0),
            f.width - f.right,
            f.y(0.0)
        );
        for k in 0..4 {
            let fr = f64::from(k) / 3.0;
            let t = t0 + (t1 - t0) * k / 3;
            let x = f.x(fr);
            let anchor = match k {
                0 => "start",
                3 => "end",
                _ => "middle",
            };
            let _ = writeln!(
                out,
                "<line x1=\"{x:.1}\" y1=\"{:.1}\" x2=\"{x:.1}\" y2=\"{:.1}\" stroke=\"{INK}\"/>\
                 <text x=\"{x:.1}\" y=\"{:.1}\" text-anchor=\"{anchor}\" font-size=\"13\" fill=\"{INK}\">{}</text>",
                f.y(0.0),
                f.y(0.0) + 5.0,
                f.y(0.0) + 20.0,
                t.format("%b %-d")
            );
        }
        for (k, colour) in [(0usize, BASE), (1, CAND)] {
            let mut d = String::new();
            let mut prev: Option<f64> = None;
            for p in &series.points {
                let x = f.x(time_frac(p.at, t0, t1));
                let rate = if k == 0 { p.baseline } else { p.candidate };
                match (rate, prev) {
                    (Some(r), Some(py)) => {
                        let y = f.y(frac(r, top));
                        let _ = write!(d, "L{x:.1},{py:.1}L{x:.1},{y:.1}");
                        prev = Some(y);
                    }
                    (Some(r), None) => {
                        let y = f.y(frac(r, top));
                        let _ = write!(d, "M{x:.1},{y:.1}");
                        prev = Some(y);
                    }
                    (None, _) => prev = None,
                }
            }
            if let Some(py) = prev {
                let _ = write!(d, "L{:.1},{py:.1}", f.x(1.0));
            }
            let dash = if k == 0 {
                ""
            } else {
                " stroke-dasharray=\"7 4\""
            };
            let _ = writeln!(
                out,
                "<path d=\"{d}\" fill=\"none\" stroke=\"{colour}\" stroke-width=\"2.5\"{dash}/>"
            );
        }
        out.push_str("</svg>\n</figure>\n");
    }
    out.push_str("</div>\n");
}

fn band_chart(out: &mut String, program: &Figures) {
    let bands: BTreeSet<&String> = program
        .baseline
        .spend_by_band
        .keys()
        .chain(program.candidate.spend_by_band.keys())
        .collect();
    let get =
        |f: &PolicyFigures, band: &str| f.spend_by_band.get(band).copied().unwrap_or_default();
    let bar = 16.0;
    let row = 2.0 * bar + 14.0;
    let f = Frame {
        width: 960.0,
        height: 70.0 + row * bands.len().max(1) as f64,
        left: 210.0,
        right: 110.0,
        top: 40.0,
        bottom: 30.0,
    };
    out.push_str("<h2 id=\"bands\">Commission spend by band of the rate in force</h2>\n");
    svg_open(
        out,
        "band-chart",
        f.width,
        f.height,
        "Commission spend by band, baseline vs candidate",
        "Grouped bar chart: for each band of the rate in force (a peak window's bands \
         prefixed with its name), the baseline's spend as a solid bar and the candidate's as \
         a hatched bar.",
    );
    let _ = write!(
        out,
        "<defs><pattern id=\"candidate-hatch\" patternUnits=\"userSpaceOnUse\" width=\"6\" height=\"6\" \
         patternTransform=\"rotate(45)\"><rect width=\"6\" height=\"6\" fill=\"#f6e3d3\"/>\
         <line x1=\"0\" y1=\"0\" x2=\"0\" y2=\"6\" stroke=\"{CAND}\" stroke-width=\"3\"/></pattern></defs>\n\
         <g font-size=\"13\" fill=\"{INK}\">\
         <rect x=\"{l}\" y=\"10\" width=\"22\" height=\"12\" fill=\"{BASE}\"/><text x=\"{}\" y=\"20\">baseline</text>\
         <rect x=\"{}\" y=\"10\" width=\"22\" height=\"12\" fill=\"url(#candidate-hatch)\" stroke=\"{CAND}\"/>\
         <text x=\"{}\" y=\"20\">candidate</text></g>\n",
        f.left + 28.0,
        f.left + 100.0,
        f.left + 128.0,
        l = f.left,
    );
    if bands.is_empty() {
        let _ = writeln!(
            out,
            "<text x=\"{}\" y=\"{}\" text-anchor=\"middle\" fill=\"{INK}\">no spend to plot</text>\n</svg>",
            f.width / 2.0,
            f.height / 2.0
        );
        return;
    }
    let max = bands
        .iter()
        .map(|b| get(&program.baseline, b).max(get(&program.candidate, b)))
        .max()
        .unwrap_or_default();
    let (step, top) = axis(max, 5);
    let plot_w = f.width - f.left - f.right;
    let bottom = f.height - f.bottom;
    let mut v = Decimal::ZERO;
    while v <= top {
        let x = f.left + frac(v, top) * plot_w;
        let _ = writeln!(
            out,
            "<line x1=\"{x:.1}\" y1=\"{:.1}\" x2=\"{x:.1}\" y2=\"{bottom:.1}\" stroke=\"{GRID}\"/>\
             <text x=\"{x:.1}\" y=\"{:.1}\" text-anchor=\"middle\" font-size=\"13\" fill=\"{INK}\">{}</text>",
            f.top,
            bottom + 18.0,
            money(v)
        );
        v += step;
    }
    for (i, band) in bands.iter().enumerate() {
        let y = f.top + 8.0 + row * i as f64;
        let _ = writeln!(
            out,
            "<text x=\"{:.1}\" y=\"{:.1}\" text-anchor=\"end\" font-size=\"14\" fill=\"{INK}\">{}</text>",
            f.left - 8.0,
            y + bar + 4.0,
            escape(band)
        );
        for (k, figures) in [(0usize, &program.baseline), (1, &program.candidate)] {
            let spend = get(figures, band);
            let w = frac(spend, top) * plot_w;
            let by = y + bar * k as f64;
            let fill = if k == 0 {
                format!("fill=\"{BASE}\"")
            } else {
                format!("fill=\"url(#candidate-hatch)\" stroke=\"{CAND}\"")
            };
            let who = if k == 0 { "baseline" } else { "candidate" };
            let _ = writeln!(
                out,
                "<rect x=\"{:.1}\" y=\"{by:.1}\" width=\"{w:.1}\" height=\"{:.1}\" {fill}>\
                 <title>{} {who}: {}</title></rect>\
                 <text x=\"{:.1}\" y=\"{:.1}\" font-size=\"12\" fill=\"{INK}\">{}</text>",
                f.left,
                bar - 2.0,
                escape(band),
                money(spend),
                f.left + w + 4.0,
                by + bar - 5.0,
                money(spend)
            );
        }
    }
    let _ = writeln!(
        out,
        "<line x1=\"{l:.1}\" y1=\"{:.1}\" x2=\"{l:.1}\" y2=\"{bottom:.1}\" stroke=\"{INK}\"/>\n</svg>",
        f.top,
        l = f.left
    );
}

#[cfg(test)]
mod tests {
    use super::*;
    use rust_decimal_macros::dec;

    #[test]
    fn escape_replaces_every_markup_character() {
        assert_eq!(
            escape(r#"<a href="x">&'</a>"#),
            "&lt;a href=&quot;x&quot;&gt;&amp;&#39;&lt;/a&gt;"
        );
    }

    #[test]
    fn axis_steps_are_round_and_cover_the_maximum() {
        assert_eq!(axis(dec!(13700), 5), (dec!(5000), dec!(15000)));
        assert_eq!(axis(dec!(0.066), 4), (dec!(0.02), dec!(0.08)));
        assert_eq!(axis(Decimal::ZERO, 5), (Decimal::ONE, Decimal::ONE));
    }

    #[test]
    fn rates_print_as_exact_percentages() {
        assert_eq!(percent(dec!(0.035)), "3.5 %");
        assert_eq!(percent(dec!(0.060)), "6 %");
    }
}
