//! Latency and throughput bookkeeping: one HDR histogram for the measured window and a
//! per-second timeline (for the plot), both in microseconds.

use std::time::Duration;

use hdrhistogram::Histogram;
use serde::Serialize;

/// Highest latency recorded exactly; slower answers are clamped to it (and still counted).
const MAX_MICROS: u64 = 120_000_000;

fn histogram() -> Histogram<u64> {
    Histogram::new_with_bounds(1, MAX_MICROS, 3).expect("static histogram bounds are valid")
}

/// How one operation ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    /// Success, with the number of items it carried (SKUs read, updates pushed).
    Ok(u64),
    /// Refused by load shedding (`RESOURCE_EXHAUSTED`, 429, 503): designed behaviour,
    /// counted apart from errors.
    Shed,
    /// Anything else.
    Error(String),
}

/// One second of the timeline.
#[derive(Debug, Clone)]
struct Second {
    ok: u64,
    items: u64,
    shed: u64,
    errors: u64,
    latency: Histogram<u64>,
}

/// Everything recorded for one phase.
#[derive(Debug, Clone)]
pub struct Recorder {
    measured: Histogram<u64>,
    ok: u64,
    items: u64,
    shed: u64,
    errors: u64,
    first_error: Option<String>,
    timeline: Vec<Second>,
}

impl Default for Recorder {
    fn default() -> Self {
        Self {
            measured: histogram(),
            ok: 0,
            items: 0,
            shed: 0,
            errors: 0,
            first_error: None,
            timeline: Vec::new(),
        }
    }
}

impl Recorder {
    /// Records one operation scheduled `offset` after the phase started. `measured` is
    /// false during warm-up: the timeline shows it, the summary does not.
    pub fn record(
        &mut self,
        offset: Duration,
        latency: Duration,
        outcome: &Outcome,
        measured: bool,
    ) {
        let micros = (latency.as_micros() as u64).clamp(1, MAX_MICROS);
        let second = offset.as_secs() as usize;
        if self.timeline.len() <= second {
            self.timeline.resize_with(second + 1, || Second {
                ok: 0,
                items: 0,
                shed: 0,
                errors: 0,
                latency: histogram(),
            });
        }
        let slot = &mut self.timeline[second];
        match outcome {
            Outcome::Ok(items) => {
                slot.ok += 1;
                slot.items += items;
                slot.latency.saturating_record(micros);
                if measured {
                    self.ok += 1;
                    self.items += items;
                    self.measured.saturating_record(micros);
                }
            }
            Outcome::Shed => {
                slot.shed += 1;
                if measured {
                    self.shed += 1;
                }
            }
            Outcome::Error(message) => {
                slot.errors += 1;
                // Errors count during warm-up too: a smoke run fails on any of them.
                self.errors += 1;
                if self.first_error.is_none() {
                    self.first_error = Some(message.clone());
                }
            }
        }
    }

    /// The summary over the measured window of `measured_for`.
    pub fn summary(&self, measured_for: Duration) -> Summary {
        let secs = measured_for.as_secs_f64().max(1e-9);
        let q = |q: f64| {
            if self.measured.is_empty() {
                0.0
            } else {
                self.measured.value_at_quantile(q) as f64 / 1000.0
            }
        };
        Summary {
            ok: self.ok,
            items: self.items,
            shed: self.shed,
            errors: self.errors,
            first_error: self.first_error.clone(),
            seconds: measured_for.as_secs_f64(),
            ops_per_sec: self.ok as f64 / secs,
            items_per_sec: self.items as f64 / secs,
            p50_ms: q(0.50),
            p90_ms: q(0.90),
            p99_ms: q(0.99),
            p999_ms: q(0.999),
            max_ms: if self.measured.is_empty() {
                0.0
            } else {
                self.measured.max() as f64 / 1000.0
            },
        }
    }

    /// The per-second timeline.
    pub fn timeline(&self) -> Vec<Point> {
        self.timeline
            .iter()
            .enumerate()
            .map(|(second, s)| {
                let q = |q: f64| {
                    if s.latency.is_empty() {
                        0.0
                    } else {
                        s.latency.value_at_quantile(q) as f64 / 1000.0
                    }
                };
                Point {
                    second: second as u64,
                    ok: s.ok,
                    items: s.items,
                    shed: s.shed,
                    errors: s.errors,
                    p50_ms: q(0.5),
                    p90_ms: q(0.9),
                    p99_ms: q(0.99),
                    max_ms: s.latency.max() as f64 / 1000.0,
                }
            })
            .collect()
    }

    /// Latency quantile of the measured window, in milliseconds.
    pub fn quantile_ms(&self, q: f64) -> f64 {
        if self.measured.is_empty() {
            0.0
        } else {
            self.measured.value_at_quantile(q) as f64 / 1000.0
        }
    }
}

/// Figures of one phase's measured window.
#[derive(Debug, Clone, Default, Serialize)]
pub struct Summary {
    /// Successful operations.
    pub ok: u64,
    /// Items those operations carried.
    pub items: u64,
    /// Operations refused by load shedding.
    pub shed: u64,
    /// Failed operations (warm-up included).
    pub errors: u64,
    /// The first error seen, to say what went wrong.
    pub first_error: Option<String>,
    /// Length of the measured window.
    pub seconds: f64,
    /// Successful operations per second.
    pub ops_per_sec: f64,
    /// Items per second.
    pub items_per_sec: f64,
    /// Latency percentiles and maximum, milliseconds.
    pub p50_ms: f64,
    pub p90_ms: f64,
    pub p99_ms: f64,
    pub p999_ms: f64,
    pub max_ms: f64,
}

/// One second of a phase, for the plot.
#[derive(Debug, Clone, Serialize)]
pub struct Point {
    /// Seconds since the phase started (by scheduled send time).
    pub second: u64,
    pub ok: u64,
    pub items: u64,
    pub shed: u64,
    pub errors: u64,
    pub p50_ms: f64,
    pub p90_ms: f64,
    pub p99_ms: f64,
    pub max_ms: f64,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn warm_up_is_plotted_but_not_summarised_and_errors_always_count() {
        let mut r = Recorder::default();
        r.record(
            Duration::ZERO,
            Duration::from_millis(100),
            &Outcome::Ok(1),
            false,
        );
        r.record(
            Duration::from_millis(1500),
            Duration::from_millis(2),
            &Outcome::Ok(10),
            true,
        );
        r.record(
            Duration::from_millis(1600),
            Duration::from_millis(3),
            &Outcome::Shed,
            true,
        );
        r.record(
            Duration::ZERO,
            Duration::ZERO,
            &Outcome::Error("boom".into()),
            false,
        );
        let s = r.summary(Duration::from_secs(1));
        assert_eq!((s.ok, s.items, s.shed, s.errors), (1, 10, 1, 1));
        assert_eq!(s.first_error.as_deref(), Some("boom"));
        assert!(s.p99_ms >= 1.9 && s.p99_ms <= 2.1, "{}", s.p99_ms);
        let t = r.timeline();
        assert_eq!(t.len(), 2);
        assert_eq!((t[0].ok, t[0].errors, t[1].items, t[1].shed), (1, 1, 10, 1));
    }
}
