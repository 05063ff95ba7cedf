//! The HTML report of the shipped sample season: the figures as the table prints them,
//! one titled SVG per plot, data escaped, nothing fetched from outside the file.

use std::path::{Path, PathBuf};
use std::sync::OnceLock;

use chrono::{TimeDelta, TimeZone, Utc};
use ratemesh_whatif::{
    Gap, HistoryOptions, Report, WhatIfOptions, load_history, load_policy, render_html,
    render_table, run,
};
use rust_decimal::Decimal;
use rust_decimal_macros::dec;

fn sample() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("sample")
}

/// The sample season under the example policy and the sample candidate, with an
/// elasticity so the estimate section is drawn. Replayed once for every test here.
fn sample_report() -> &'static Report {
    static REPORT: OnceLock<Report> = OnceLock::new();
    REPORT.get_or_init(|| {
        let history = load_history(
            &sample().join("history"),
            &HistoryOptions {
                max_gap: TimeDelta::days(1),
                now: Utc.with_ymd_and_hms(2026, 1, 1, 0, 0, 0).unwrap(),
            },
        )
        .expect("sample history");
        let baseline = load_policy(Path::new(concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/../core/policy.example.toml"
        )))
        .expect("example policy");
        let candidate = load_policy(&sample().join("candidate.toml")).expect("candidate policy");
        run(
            &history,
            &baseline,
            &candidate,
            &WhatIfOptions {
                threads: 2,
                elasticity: Some(dec!(0.5)),
                ..WhatIfOptions::default()
            },
        )
    })
}

fn money(d: Decimal) -> String {
    format!("{:.2}", d.round_dp(2))
}

/// The `<svg …>…</svg>` element whose id is `id`.
fn svg_by_id<'a>(html: &'a str, id: &str) -> &'a str {
    let start = html
        .find(&format!("<svg id=\"{id}\""))
        .unwrap_or_else(|| panic!("no svg with id {id}"));
    let end = html[start..].find("</svg>").expect("svg closes") + start + "</svg>".len();
    &html[start..end]
}

/// The value of attribute `name` in the first tag of `element`.
fn attribute<'a>(element: &'a str, name: &str) -> &'a str {
    let key = format!(" {name}=\"");
    let tag_end = element.find('>').expect("tag closes");
    let start = element[..tag_end]
        .find(&key)
        .unwrap_or_else(|| panic!("no {name} in {}", &element[..tag_end]))
        + key.len();
    let len = element[start..].find('"').expect("attribute closes");
    &element[start..start + len]
}

#[test]
fn the_sample_report_renders_a_titled_page_naming_both_policies_and_the_period() {
    let report = sample_report();
    let html = render_html(report);
    assert!(html.starts_with("<!DOCTYPE html>"));
    assert!(html.contains("<html lang=\"en\">"));
    assert!(html.trim_end().ends_with("</html>"));
    let title_start = html.find("<title>").expect("a document title") + "<title>".len();
    let title = &html[title_start..title_start + html[title_start..].find("</title>").unwrap()];
    assert!(title.contains(&report.baseline_policy.program), "{title}");
    assert!(title.contains(&report.candidate_policy.program), "{title}");
    let from = report.history.from.unwrap().format("%Y-%m-%d").to_string();
    let until = report.history.until.unwrap().format("%Y-%m-%d").to_string();
    assert!(title.contains(&from) && title.contains(&until), "{title}");
    for category in report.categories.keys() {
        assert!(
            html.contains(&format!(
                "<th scope=\"rowgroup\" rowspan=\"10\">{category}</th>"
            )),
            "category {category} has its rows"
        );
    }
    assert!(html.contains("No gaps in the history"));
}

#[test]
fn the_summary_shows_the_program_totals_as_the_table_prints_them() {
    let report = sample_report();
    let html = render_html(report);
    let table = render_table(report);
    let summary_start = html.find("id=\"summary\"").expect("a summary section");
    let summary =
        &html[summary_start..summary_start + html[summary_start..].find("</table>").unwrap()];
    let p = &report.program;
    let rows = [
        (
            "commission spend",
            p.baseline.commission_spend,
            p.candidate.commission_spend,
        ),
        (
            "margin after commission",
            p.baseline.margin_after_commission,
            p.candidate.margin_after_commission,
        ),
        (
            "spend while scarce",
            p.baseline.scarce_spend,
            p.candidate.scarce_spend,
        ),
        (
            "spend on overstock",
            p.baseline.overstock_spend,
            p.candidate.overstock_spend,
        ),
    ];
    for (label, base, cand) in rows {
        let (b, c) = (money(base), money(cand));
        let change = cand.round_dp(2) - base.round_dp(2);
        let change = if change > Decimal::ZERO {
            format!("+{change:.2}")
        } else {
            format!("{change:.2}")
        };
        let line = table
            .lines()
            .find(|l| l.contains(label))
            .unwrap_or_else(|| panic!("the table has {label}"));
        assert!(
            line.contains(&b) && line.contains(&c) && line.contains(&change),
            "the table prints {label} as {b} {c} {change}: {line}"
        );
        let row = format!(
            "<tr><th scope=\"row\">{label}</th><td class=\"num\">{b}</td><td class=\"num\">{c}</td><td class=\"num\">{change}</td></tr>"
        );
        assert!(summary.contains(&row), "summary row {row}");
    }
    for (label, base, cand) in [
        (
            "rate changes sent",
            p.baseline.rate_changes,
            p.candidate.rate_changes,
        ),
        (
            "cuts blocked by network",
            p.baseline.cuts_blocked,
            p.candidate.cuts_blocked,
        ),
    ] {
        let row = format!(
            "<tr><th scope=\"row\">{label}</th><td class=\"num\">{base}</td><td class=\"num\">{cand}</td><td class=\"num\">{}</td></tr>",
            cand as i64 - base as i64
        );
        assert!(summary.contains(&row), "summary row {row}");
    }
    assert_ne!(
        p.baseline.rate_changes, p.candidate.rate_changes,
        "the sample's policies differ, so the rows above can tell the columns apart"
    );
}

#[test]
fn there_is_one_titled_svg_per_plot() {
    let report = sample_report();
    let html = render_html(report);
    let top = report.series.top_skus.len();
    assert!(top > 0, "the sample has top SKUs to plot");
    assert_eq!(html.matches("<svg").count(), 2 + top);
    assert_eq!(html.matches("</svg>").count(), 2 + top);
    let mut ids = vec!["spend-chart".to_owned(), "band-chart".to_owned()];
    ids.extend((0..top).map(|i| format!("rate-chart-{i}")));
    for id in &ids {
        let svg = svg_by_id(&html, id);
        assert_eq!(attribute(svg, "role"), "img", "{id}");
        assert_eq!(
            attribute(svg, "preserveAspectRatio"),
            "xMidYMid meet",
            "{id}"
        );
        assert!(attribute(svg, "viewBox").starts_with("0 0 "), "{id}");
        assert!(
            svg.contains(&format!("<title id=\"{id}-title\">")),
            "{id} has a title"
        );
        assert!(
            svg.contains(&format!("<desc id=\"{id}-desc\">")),
            "{id} has a description"
        );
    }
    for (i, series) in report.series.top_skus.iter().enumerate() {
        let svg = svg_by_id(&html, &format!("rate-chart-{i}"));
        assert!(
            svg.contains(&series.sku),
            "rate chart {i} names {}",
            series.sku
        );
        assert_eq!(
            svg.matches("<path ").count(),
            2,
            "a baseline and a candidate line"
        );
        assert_eq!(
            svg.matches("stroke-dasharray").count(),
            2,
            "legend and candidate dashed"
        );
    }
    let bands = svg_by_id(&html, "band-chart");
    for band in report.program.baseline.spend_by_band.keys() {
        assert!(
            bands.contains(&format!(">{band}</text>")),
            "band {band} is labelled"
        );
    }
}

#[test]
fn the_spend_lines_run_left_to_right_inside_the_view_box() {
    let report = sample_report();
    let html = render_html(report);
    let svg = svg_by_id(&html, "spend-chart");
    let view: Vec<f64> = attribute(svg, "viewBox")
        .split(' ')
        .map(|v| v.parse().unwrap())
        .collect();
    let (width, height) = (view[2], view[3]);
    let lines: Vec<&str> = svg
        .match_indices("<polyline")
        .map(|(i, _)| &svg[i..])
        .collect();
    assert_eq!(lines.len(), 2, "a baseline and a candidate line");
    let mut classes = Vec::new();
    for line in lines {
        classes.push(attribute(line, "class"));
        let points: Vec<(f64, f64)> = attribute(line, "points")
            .split(' ')
            .map(|p| {
                let (x, y) = p.split_once(',').expect("x,y");
                (x.parse().unwrap(), y.parse().unwrap())
            })
            .collect();
        assert_eq!(points.len(), report.series.spend.len());
        for pair in points.windows(2) {
            assert!(pair[0].0 < pair[1].0, "x increases: {pair:?}");
        }
        for (x, y) in points {
            assert!(
                (0.0..=width).contains(&x) && (0.0..=height).contains(&y),
                "({x}, {y})"
            );
        }
    }
    assert_eq!(classes, ["baseline", "candidate"]);
    let candidate = &svg[svg.find("<polyline class=\"candidate\"").unwrap()..];
    assert!(
        attribute(candidate, "stroke-dasharray").contains(' '),
        "candidate is dashed"
    );
}

/// The sample report with data strings that are markup, and a gap.
fn hostile_report() -> Report {
    let mut report = sample_report().clone();
    report.skus[0].sku = "<script>alert('sku')</script>".to_owned();
    report.skus[0].category = "toys & <games>".to_owned();
    report.series.top_skus[0].sku = "<script>x&y</script>".to_owned();
    let figures = report.categories.values().next().unwrap().clone();
    report
        .categories
        .insert("<b>bold</b> & co".to_owned(), figures);
    report
        .program
        .baseline
        .spend_by_band
        .insert("<i>band</i>&".to_owned(), dec!(12.5));
    report.candidate_policy.program = "promo<\"2026\">".to_owned();
    report.history.gaps.push(Gap {
        from: Utc.with_ymd_and_hms(2025, 11, 10, 0, 0, 0).unwrap(),
        until: Utc.with_ymd_and_hms(2025, 11, 12, 6, 0, 0).unwrap(),
        hours: 54,
    });
    // Make the first SKU the biggest mover so the SKU table lists it.
    report.skus[0].figures.candidate.commission_spend += dec!(1000000);
    report
}

#[test]
fn data_strings_are_escaped() {
    let html = render_html(&hostile_report());
    assert_eq!(
        html.matches("<script").count(),
        0,
        "no script element at all"
    );
    for raw in ["<b>bold</b>", "<i>band</i>", "<games>", "promo<\"2026\">"] {
        assert!(!html.contains(raw), "{raw} is escaped");
    }
    for escaped in [
        "&lt;script&gt;alert(&#39;sku&#39;)&lt;/script&gt;",
        "toys &amp; &lt;games&gt;",
        "&lt;script&gt;x&amp;y&lt;/script&gt;",
        "&lt;b&gt;bold&lt;/b&gt; &amp; co",
        "&lt;i&gt;band&lt;/i&gt;&amp;",
        "promo&lt;&quot;2026&quot;&gt;",
    ] {
        assert!(html.contains(escaped), "{escaped} is shown as text");
    }
    // Every `&` starts an entity.
    for (i, _) in html.match_indices('&') {
        let entity = &html[i..html.len().min(i + 8)];
        assert!(
            ["&amp;", "&lt;", "&gt;", "&quot;", "&#39;"]
                .iter()
                .any(|e| entity.starts_with(e)),
            "bare & at {i}: {entity}"
        );
    }
}

#[test]
fn a_gap_is_a_visible_warning_and_shaded_in_the_spend_chart() {
    let html = render_html(&hostile_report());
    assert!(html.contains("<section class=\"warning\" id=\"gaps\""));
    assert!(html.contains("Warning: 1 gap in the history"));
    assert!(html.contains("<li>from 2025-11-10T00:00:00Z to 2025-11-12T06:00:00Z (54 h)</li>"));
    assert!(!html.contains("No gaps in the history"));
    assert!(
        svg_by_id(&html, "spend-chart")
            .contains("<title>gap: no stock data from 2025-11-10T00:00:00Z")
    );
}

#[test]
fn the_estimate_has_its_own_labelled_section_only_when_assumed() {
    let report = sample_report();
    let html = render_html(report);
    let estimate = report
        .estimate
        .as_ref()
        .expect("the sample run assumes an elasticity");
    assert!(html.contains("<section class=\"estimate\" id=\"estimate\""));
    assert!(html.contains("Estimate, not observed: assumes elasticity 0.5</h2>"));
    assert!(html.contains(&format!(
        "<td class=\"num\">{}</td>",
        money(estimate.estimated_candidate_spend)
    )));
    let mut without = report.clone();
    without.estimate = None;
    let html = render_html(&without);
    assert!(!html.contains("id=\"estimate\""));
    assert!(!html.contains("elasticity"));
}

#[test]
fn nothing_is_fetched_from_outside_the_file() {
    let mut report = hostile_report();
    report.skus[0].sku = "https://example.com/sku?a=1".to_owned();
    let html = render_html(&report);
    assert!(
        html.contains("https://example.com/sku?a=1"),
        "shown as text"
    );
    for scheme in ["http://", "https://", "//"] {
        for (i, _) in html.match_indices(scheme) {
            // Inside a tag when the last `<` before it is after the last `>`.
            let open = html[..i].rfind('<');
            let close = html[..i].rfind('>');
            assert!(
                open < close,
                "{scheme} inside a tag at {i}: {}",
                &html[open.unwrap_or(0)..html.len().min(i + 40)]
            );
        }
    }
    let lower = html.to_lowercase();
    for external in [
        "<script",
        "<link",
        "<img",
        "<iframe",
        " src=",
        " href=",
        "@import",
        "@font-face",
    ] {
        assert!(!lower.contains(external), "{external}");
    }
    for (i, _) in lower.match_indices("url(") {
        assert!(
            lower[i..].starts_with("url(#"),
            "url( refers inside the file: {}",
            &lower[i..i + 30]
        );
    }
}

#[test]
fn an_empty_history_renders_every_plot_saying_there_is_nothing_to_plot() {
    let history = ratemesh_whatif::History::from_events(Vec::new(), TimeDelta::days(1));
    let policy = ratemesh_core::Policy::example();
    let report = run(&history, &policy, &policy, &WhatIfOptions::default());
    let html = render_html(&report);
    assert!(html.contains("History replayed: no events."));
    assert_eq!(
        html.matches("<svg").count(),
        2,
        "spend and band charts, no rate charts"
    );
    for id in ["spend-chart", "band-chart"] {
        assert!(
            svg_by_id(&html, id).contains(">no spend to plot</text>"),
            "{id}"
        );
    }
    assert!(html.contains("<p>No SKU had a rate in force.</p>"));
    for broken in ["NaN", "\"inf", "\"-inf", ",inf", ",-inf"] {
        assert!(!html.contains(broken), "no broken coordinates: {broken}");
    }
}
