//! What a run produces: phases (each a summary plus a per-second timeline), the ratios
//! against the same-run baselines, other figures, and checks (errors, lost events).
//! Rendered as a terminal table, a JSON file and an SVG plot of throughput and latency
//! percentiles over time.

use std::fmt::Write as _;
use std::path::{Path, PathBuf};

use serde::Serialize;

use crate::recorder::{Point, Recorder, Summary, WindowSummary};

/// One measured phase.
#[derive(Debug, Clone, Serialize)]
pub struct Phase {
    /// What was measured, e.g. "GetRate saturation".
    pub name: String,
    /// "open" (scheduled rate) or "closed" (saturation).
    pub mode: String,
    /// Scheduled rate (open loop, peak of the shape) or 0.
    pub target_rate: f64,
    /// Requests in flight at most.
    pub concurrency: usize,
    /// Seconds after the scenario started that this phase started.
    pub started_at_s: f64,
    pub summary: Summary,
    /// The same per segment of an open-loop shape with more than one (e.g. steady, the
    /// surge, steady again), by scheduled time.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub windows: Vec<WindowSummary>,
    pub timeline: Vec<Point>,
}

/// A ratio the issue asks for, with both sides.
#[derive(Debug, Clone, Serialize)]
pub struct Ratio {
    pub name: String,
    pub numerator: String,
    pub numerator_value: f64,
    pub denominator: String,
    pub denominator_value: f64,
    pub value: f64,
    /// What bounds it, as far as this run shows.
    pub note: String,
}

/// Any other figure.
#[derive(Debug, Clone, Serialize)]
pub struct Figure {
    pub name: String,
    pub value: f64,
    pub unit: String,
}

/// A pass/fail condition of the run (what the smoke test asserts).
#[derive(Debug, Clone, Serialize)]
pub struct Check {
    pub name: String,
    pub ok: bool,
    pub detail: String,
}

/// A whole run.
#[derive(Debug, Clone, Serialize)]
pub struct Report {
    pub scenario: String,
    pub smoke: bool,
    pub target: String,
    pub cores: usize,
    pub started: String,
    /// True when Ctrl-C ended the run early.
    pub interrupted: bool,
    pub phases: Vec<Phase>,
    pub ratios: Vec<Ratio>,
    pub figures: Vec<Figure>,
    pub checks: Vec<Check>,
    #[serde(skip)]
    clock: Option<std::time::Instant>,
}

impl Report {
    /// An empty report for `scenario`; phase start offsets count from now.
    pub fn new(scenario: &str, smoke: bool, target: &str) -> Self {
        Self {
            scenario: scenario.to_owned(),
            smoke,
            target: target.to_owned(),
            cores: std::thread::available_parallelism()
                .map(|n| n.get())
                .unwrap_or(1),
            started: chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Secs, true),
            interrupted: false,
            phases: Vec::new(),
            ratios: Vec::new(),
            figures: Vec::new(),
            checks: Vec::new(),
            clock: Some(std::time::Instant::now()),
        }
    }

    /// Seconds since the report was created.
    pub fn elapsed_s(&self) -> f64 {
        self.clock.map(|c| c.elapsed().as_secs_f64()).unwrap_or(0.0)
    }

    /// Adds a phase that started `started_at_s` into the run; returns its summary. Any
    /// error in it becomes a failed check.
    pub fn phase(
        &mut self,
        name: &str,
        mode: &str,
        target_rate: f64,
        concurrency: usize,
        started_at_s: f64,
        (recorder, measured): &(Recorder, std::time::Duration),
    ) -> Summary {
        let summary = recorder.summary(*measured);
        let mut windows = recorder.windows();
        if windows.len() < 2 {
            windows.clear();
        }
        self.check(
            &format!("{name}: no errors"),
            summary.errors == 0,
            summary
                .first_error
                .clone()
                .map(|e| format!("{} errors, first: {e}", summary.errors))
                .unwrap_or_else(|| format!("{} ok", summary.ok)),
        );
        self.phases.push(Phase {
            name: name.to_owned(),
            mode: mode.to_owned(),
            target_rate,
            concurrency,
            started_at_s,
            summary: summary.clone(),
            windows,
            timeline: recorder.timeline(),
        });
        summary
    }

    /// Adds a ratio.
    pub fn ratio(&mut self, name: &str, num: (&str, f64), den: (&str, f64), note: &str) {
        let value = if den.1 > 0.0 { num.1 / den.1 } else { f64::NAN };
        self.ratios.push(Ratio {
            name: name.to_owned(),
            numerator: num.0.to_owned(),
            numerator_value: num.1,
            denominator: den.0.to_owned(),
            denominator_value: den.1,
            value,
            note: note.to_owned(),
        });
    }

    /// Adds a figure.
    pub fn figure(&mut self, name: &str, value: f64, unit: &str) {
        self.figures.push(Figure {
            name: name.to_owned(),
            value,
            unit: unit.to_owned(),
        });
    }

    /// Adds a check.
    pub fn check(&mut self, name: &str, ok: bool, detail: impl Into<String>) {
        self.checks.push(Check {
            name: name.to_owned(),
            ok,
            detail: detail.into(),
        });
    }

    /// The failed checks: errors and lost events, and in a full `whatif` run its
    /// SKU-events-per-minute target (the one check that is a throughput figure).
    pub fn failures(&self) -> Vec<&Check> {
        self.checks.iter().filter(|c| !c.ok).collect()
    }

    /// The human table.
    pub fn table(&self) -> String {
        let mut out = String::new();
        let _ = writeln!(
            out,
            "\n== {} {}on {} ({} cores){}",
            self.scenario,
            if self.smoke { "(smoke) " } else { "" },
            self.target,
            self.cores,
            if self.interrupted {
                " — INTERRUPTED"
            } else {
                ""
            }
        );
        let _ = writeln!(
            out,
            "{:<40} {:>6} {:>9} {:>11} {:>12} {:>7} {:>6} {:>8} {:>8} {:>8} {:>8} {:>8}",
            "phase",
            "mode",
            "target/s",
            "ops/s",
            "items/s",
            "errors",
            "shed",
            "p50 ms",
            "p90 ms",
            "p99 ms",
            "p99.9",
            "max ms"
        );
        for p in &self.phases {
            let s = &p.summary;
            let _ = writeln!(
                out,
                "{:<40} {:>6} {:>9.0} {:>11.1} {:>12.1} {:>7} {:>6} {:>8.3} {:>8.3} {:>8.3} {:>8.3} {:>8.3}",
                truncate(&p.name, 40),
                p.mode,
                p.target_rate,
                s.ops_per_sec,
                s.items_per_sec,
                s.errors,
                s.shed,
                s.p50_ms,
                s.p90_ms,
                s.p99_ms,
                s.p999_ms,
                s.max_ms
            );
        }
        if !self.ratios.is_empty() {
            let _ = writeln!(out, "\nratios (same run, same machine):");
            for r in &self.ratios {
                // A long name gets a line of its own, so the values stay in their column.
                let name = if r.name.chars().count() > 52 {
                    let _ = writeln!(out, "  {}", r.name);
                    ""
                } else {
                    r.name.as_str()
                };
                let _ = writeln!(
                    out,
                    "  {:<52} {:>8.3}   = {} {:.1} / {} {:.1}",
                    name,
                    r.value,
                    r.numerator,
                    r.numerator_value,
                    r.denominator,
                    r.denominator_value
                );
                if !r.note.is_empty() {
                    let _ = writeln!(out, "  {:<52}            {}", "", r.note);
                }
            }
        }
        if !self.figures.is_empty() {
            let _ = writeln!(out, "\nfigures:");
            for f in &self.figures {
                let _ = writeln!(out, "  {:<60} {:>12.3} {}", f.name, f.value, f.unit);
            }
        }
        let _ = writeln!(out, "\nchecks:");
        for c in &self.checks {
            let _ = writeln!(
                out,
                "  [{}] {} — {}",
                if c.ok { "ok" } else { "FAIL" },
                c.name,
                c.detail
            );
        }
        out
    }

    /// Writes `<dir>/<scenario>.json` and `<dir>/<scenario>.svg`; returns their paths.
    pub fn write(&self, dir: &Path) -> anyhow::Result<(PathBuf, PathBuf)> {
        std::fs::create_dir_all(dir)?;
        let json = dir.join(format!("{}.json", self.scenario));
        std::fs::write(&json, serde_json::to_vec_pretty(self)?)?;
        let svg = dir.join(format!("{}.svg", self.scenario));
        std::fs::write(&svg, self.svg())?;
        Ok((json, svg))
    }

    /// Throughput (top) and latency percentiles on a log scale (bottom) over the run's
    /// time, one colour per phase, p50 solid, p99 dashed, max dotted.
    pub fn svg(&self) -> String {
        const W: f64 = 1000.0;
        const H: f64 = 300.0;
        const LEFT: f64 = 70.0;
        const TOP1: f64 = 40.0;
        const TOP2: f64 = 400.0;
        const COLOURS: [&str; 8] = [
            "#1f77b4", "#d62728", "#2ca02c", "#ff7f0e", "#9467bd", "#8c564b", "#e377c2", "#17becf",
        ];
        let end = self
            .phases
            .iter()
            .map(|p| p.started_at_s + p.timeline.len() as f64)
            .fold(1.0, f64::max);
        let max_tp = self
            .phases
            .iter()
            .flat_map(|p| p.timeline.iter().map(|t| (t.ok + t.shed + t.errors) as f64))
            .fold(1.0, f64::max);
        let lat: Vec<f64> = self
            .phases
            .iter()
            .flat_map(|p| {
                p.timeline
                    .iter()
                    .flat_map(|t| [t.p50_ms, t.p99_ms, t.max_ms])
            })
            .filter(|v| *v > 0.0)
            .collect();
        // Decades spanned by the latencies (a fixed range when there are none).
        let (lo, hi) = if lat.is_empty() {
            (-1.0, 2.0)
        } else {
            let min = lat.iter().copied().fold(f64::INFINITY, f64::min).max(0.001);
            let max = lat.iter().copied().fold(0.0, f64::max).max(0.01);
            let (lo, hi) = (min.log10().floor(), max.log10().ceil());
            (lo, if hi <= lo { lo + 1.0 } else { hi })
        };
        let x = |t: f64| LEFT + t / end * W;
        let y_tp = |v: f64| TOP1 + H - v / max_tp * H;
        let y_lat = |v: f64| TOP2 + H - (v.max(10f64.powf(lo)).log10() - lo) / (hi - lo) * H;
        let mut s = String::new();
        let _ = writeln!(
            s,
            r#"<svg xmlns="http://www.w3.org/2000/svg" width="{}" height="{}" font-family="sans-serif" font-size="12">"#,
            W + LEFT + 260.0,
            TOP2 + H + 60.0
        );
        let _ = writeln!(s, r#"<rect width="100%" height="100%" fill="white"/>"#);
        let _ = writeln!(
            s,
            r#"<text x="{LEFT}" y="20" font-size="15">ratemesh-loadtest {} — {} ({} cores)</text>"#,
            xml(&self.scenario),
            xml(&self.target),
            self.cores
        );
        for (top, label) in [
            (TOP1, "requests/s (ok + shed + errors)"),
            (TOP2, "latency ms (log): p50 solid, p99 dashed, max dotted"),
        ] {
            let _ = writeln!(
                s,
                r##"<rect x="{LEFT}" y="{top}" width="{W}" height="{H}" fill="none" stroke="#999"/>"##
            );
            let _ = writeln!(s, r#"<text x="{LEFT}" y="{}">{label}</text>"#, top - 6.0);
            let _ = writeln!(
                s,
                r#"<text x="{}" y="{}">{end:.0} s</text>"#,
                LEFT + W - 30.0,
                top + H + 15.0
            );
        }
        for k in 0..=4 {
            let v = max_tp * f64::from(k) / 4.0;
            let _ = writeln!(
                s,
                r#"<text x="5" y="{:.1}">{}</text>"#,
                y_tp(v) + 4.0,
                human(v)
            );
        }
        let mut e = lo;
        while e <= hi {
            let v = 10f64.powf(e);
            let _ = writeln!(
                s,
                r##"<line x1="{LEFT}" x2="{}" y1="{y:.1}" y2="{y:.1}" stroke="#eee"/><text x="5" y="{:.1}">{}</text>"##,
                LEFT + W,
                y_lat(v) + 4.0,
                human(v),
                y = y_lat(v)
            );
            e += 1.0;
        }
        for (n, p) in self.phases.iter().enumerate() {
            let colour = COLOURS[n % COLOURS.len()];
            let t0 = p.started_at_s;
            let pts = |f: &dyn Fn(&Point) -> Option<f64>, y: &dyn Fn(f64) -> f64| {
                p.timeline
                    .iter()
                    .filter_map(|t| {
                        f(t).map(|v| format!("{:.1},{:.1}", x(t0 + t.second as f64 + 0.5), y(v)))
                    })
                    .collect::<Vec<_>>()
                    .join(" ")
            };
            let tp = pts(&|t| Some((t.ok + t.shed + t.errors) as f64), &y_tp);
            let _ = writeln!(
                s,
                r#"<polyline fill="none" stroke="{colour}" stroke-width="1.5" points="{tp}"/>"#
            );
            for (field, dash) in [
                (0, ""),
                (1, r#" stroke-dasharray="5,3""#),
                (2, r#" stroke-dasharray="1,3""#),
            ] {
                let line = pts(
                    &|t| {
                        let v = [t.p50_ms, t.p99_ms, t.max_ms][field];
                        (t.ok > 0).then_some(v)
                    },
                    &y_lat,
                );
                let _ = writeln!(
                    s,
                    r#"<polyline fill="none" stroke="{colour}" stroke-width="1.2"{dash} points="{line}"/>"#
                );
            }
            let _ = writeln!(
                s,
                r#"<rect x="{}" y="{}" width="12" height="12" fill="{colour}"/><text x="{}" y="{}">{}</text>"#,
                LEFT + W + 15.0,
                TOP1 + 18.0 * n as f64,
                LEFT + W + 32.0,
                TOP1 + 18.0 * n as f64 + 11.0,
                xml(&truncate(&p.name, 36))
            );
        }
        s.push_str("</svg>\n");
        s
    }
}

fn truncate(s: &str, n: usize) -> String {
    s.chars().take(n).collect()
}

fn xml(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
}

fn human(v: f64) -> String {
    if v >= 1e6 {
        format!("{:.1}M", v / 1e6)
    } else if v >= 1e3 {
        format!("{:.1}k", v / 1e3)
    } else if v >= 1.0 {
        format!("{v:.0}")
    } else {
        format!("{v}")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_report_without_phases_still_plots() {
        let mut report = Report::new("scale", true, "nowhere");
        report.figure("x", 1.0, "s");
        let svg = report.svg();
        assert!(
            svg.ends_with("</svg>\n") && svg.len() < 10_000,
            "{}",
            svg.len()
        );
    }
}
