//! Latency and throughput bookkeeping: HDR histograms for the measured window (answers
//! served and refusals apart), a per-second timeline (for the plot), and optionally the
//! same per window of scheduled time (an open-loop shape's segments, so a surge is
//! summarised apart from the steady load around it), all in microseconds.

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
    /// Refusals' latencies, once the second has one.
    shed_latency: Option<Histogram<u64>>,
}

/// The measured operations of one window of scheduled time.
#[derive(Debug, Clone)]
struct Window {
    from: Duration,
    to: Duration,
    ok: u64,
    items: u64,
    errors: u64,
    served: Histogram<u64>,
    refused: Histogram<u64>,
    /// How late each operation was sent (its task started), from its scheduled time.
    send_lag: Histogram<u64>,
    /// Refusals' latencies from when they were sent, the load generator's lateness apart.
    refused_from_send: Histogram<u64>,
}

/// Everything recorded for one phase.
#[derive(Debug, Clone)]
pub struct Recorder {
    measured: Histogram<u64>,
    /// Latencies of refusals: a quick "no" and a slow answer are different things.
    measured_shed: Histogram<u64>,
    ok: u64,
    items: u64,
    shed: u64,
    errors: u64,
    first_error: Option<String>,
    timeline: Vec<Second>,
    windows: Vec<Window>,
}

impl Default for Recorder {
    fn default() -> Self {
        Self {
            measured: histogram(),
            measured_shed: histogram(),
            ok: 0,
            items: 0,
            shed: 0,
            errors: 0,
            first_error: None,
            timeline: Vec::new(),
            windows: Vec::new(),
        }
    }
}

impl Recorder {
    /// A recorder that also summarises each window `[bounds[k], bounds[k + 1])` of
    /// scheduled time apart (see [`Recorder::windows`]), from `warmup` on: a window that
    /// starts earlier is cut there, one that ends earlier is empty. Operations scheduled
    /// after the last bound count in the last window; empty windows never match.
    pub fn with_windows(bounds: &[Duration], warmup: Duration) -> Self {
        let windows = bounds
            .windows(2)
            .map(|w| Window {
                from: w[0].max(warmup),
                to: w[1].max(warmup),
                ok: 0,
                items: 0,
                errors: 0,
                served: histogram(),
                refused: histogram(),
                send_lag: histogram(),
                refused_from_send: histogram(),
            })
            .collect();
        Self {
            windows,
            ..Self::default()
        }
    }

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
                shed_latency: None,
            });
        }
        if measured && let Some(window) = self.window_of(offset) {
            match outcome {
                Outcome::Ok(items) => {
                    window.ok += 1;
                    window.items += items;
                    window.served.saturating_record(micros);
                }
                Outcome::Shed => window.refused.saturating_record(micros),
                Outcome::Error(_) => window.errors += 1,
            }
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
                slot.shed_latency
                    .get_or_insert_with(histogram)
                    .saturating_record(micros);
                if measured {
                    self.shed += 1;
                    self.measured_shed.saturating_record(micros);
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

    /// Records, for the window of an operation scheduled `offset` after the phase started
    /// (already [`Recorder::record`]ed), how late it was sent (`lag`) and, if it was
    /// refused, how long the refusal took from the send (`from_send`): what the load
    /// generator's own lateness adds to the latencies from schedule.
    pub fn record_send(
        &mut self,
        offset: Duration,
        lag: Duration,
        from_send: Duration,
        outcome: &Outcome,
    ) {
        let micros = |d: Duration| (d.as_micros() as u64).clamp(1, MAX_MICROS);
        if let Some(window) = self.window_of(offset) {
            window.send_lag.saturating_record(micros(lag));
            if *outcome == Outcome::Shed {
                window
                    .refused_from_send
                    .saturating_record(micros(from_send));
            }
        }
    }

    /// The window an operation scheduled at `offset` belongs to.
    fn window_of(&mut self, offset: Duration) -> Option<&mut Window> {
        let last = self.windows.len().checked_sub(1)?;
        let k = self
            .windows
            .iter()
            .position(|w| w.from <= offset && offset < w.to)
            .unwrap_or(last);
        self.windows.get_mut(k)
    }

    /// Each window's operations (after warm-up), served and refused apart; empty unless
    /// made by [`Recorder::with_windows`].
    pub fn windows(&self) -> Vec<WindowSummary> {
        self.windows
            .iter()
            .map(|w| {
                let secs = w.to.saturating_sub(w.from).as_secs_f64().max(1e-9);
                WindowSummary {
                    from_s: w.from.as_secs_f64(),
                    to_s: w.to.as_secs_f64(),
                    ok: w.ok,
                    items: w.items,
                    shed: w.refused.len(),
                    errors: w.errors,
                    ops_per_sec: w.ok as f64 / secs,
                    served: Latencies::of(&w.served),
                    refused: Latencies::of(&w.refused),
                    send_lag: Latencies::of(&w.send_lag),
                    refused_from_send: Latencies::of(&w.refused_from_send),
                }
            })
            .collect()
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
            shed_latency: Latencies::of(&self.measured_shed),
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
                    shed_p99_ms: s
                        .shed_latency
                        .as_ref()
                        .map_or(0.0, |h| h.value_at_quantile(0.99) as f64 / 1000.0),
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
    /// Latencies of the refusals (from the scheduled time in open loop), apart from the
    /// served answers above.
    pub shed_latency: Latencies,
}

/// Latency percentiles of one kind of outcome, milliseconds.
#[derive(Debug, Clone, Copy, Default, Serialize)]
pub struct Latencies {
    pub p50_ms: f64,
    pub p90_ms: f64,
    pub p99_ms: f64,
    pub p999_ms: f64,
    pub max_ms: f64,
}

impl Latencies {
    fn of(h: &Histogram<u64>) -> Self {
        if h.is_empty() {
            return Self::default();
        }
        let q = |q: f64| h.value_at_quantile(q) as f64 / 1000.0;
        Self {
            p50_ms: q(0.5),
            p90_ms: q(0.9),
            p99_ms: q(0.99),
            p999_ms: q(0.999),
            max_ms: h.max() as f64 / 1000.0,
        }
    }
}

/// The operations scheduled in one window of a phase (after warm-up): what was served,
/// what was refused (shed) and how fast each was answered.
#[derive(Debug, Clone, Default, Serialize)]
pub struct WindowSummary {
    /// Start and end of the window, seconds after the phase started.
    pub from_s: f64,
    pub to_s: f64,
    /// Served answers and the items they carried.
    pub ok: u64,
    pub items: u64,
    /// Refusals (RESOURCE_EXHAUSTED and the like).
    pub shed: u64,
    /// Anything else.
    pub errors: u64,
    /// Served answers per second of the window.
    pub ops_per_sec: f64,
    /// Latencies of the served answers.
    pub served: Latencies,
    /// Latencies of the refusals.
    pub refused: Latencies,
    /// How late the operations were sent, from their scheduled time (open loop).
    pub send_lag: Latencies,
    /// Latencies of the refusals from when they were sent (open loop).
    pub refused_from_send: Latencies,
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
    /// The refusals' p99 (0 without refusals): refusals come in bursts, and a run's
    /// refusal p99 is often one burst's.
    pub shed_p99_ms: f64,
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
        assert_eq!(t[0].shed_p99_ms, 0.0, "no refusal in the first second");
        assert!(
            (2.9..=3.1).contains(&t[1].shed_p99_ms),
            "{}",
            t[1].shed_p99_ms
        );
    }

    #[test]
    fn windows_keep_served_and_refused_apart_by_scheduled_time() {
        let ms = Duration::from_millis;
        // Windows 0–1 s, 1–3 s, 3–4 s; warm-up 0.5 s cuts the first.
        let mut r = Recorder::with_windows(&[ms(0), ms(1000), ms(3000), ms(4000)], ms(500));
        let mut rec = |at: u64, latency: u64, outcome: Outcome| {
            r.record(ms(at), ms(latency), &outcome, at >= 500);
        };
        rec(100, 50, Outcome::Ok(1)); // warm-up: in no window
        rec(600, 2, Outcome::Ok(1));
        rec(900, 3, Outcome::Ok(1));
        rec(1200, 40, Outcome::Ok(1));
        rec(2500, 1, Outcome::Shed);
        rec(2600, 1, Outcome::Shed);
        rec(2700, 900, Outcome::Error("deadline".into()));
        rec(4200, 5, Outcome::Ok(1)); // after the last bound: the last window
        let w = r.windows();
        assert_eq!(w.len(), 3);
        assert_eq!((w[0].from_s, w[0].to_s), (0.5, 1.0));
        assert_eq!((w[0].ok, w[0].shed, w[0].errors), (2, 0, 0));
        assert!(
            (w[0].ops_per_sec - 4.0).abs() < 1e-9,
            "{}",
            w[0].ops_per_sec
        );
        assert!(w[0].served.p99_ms >= 2.9 && w[0].served.p99_ms <= 3.1);
        assert_eq!((w[1].ok, w[1].shed, w[1].errors), (1, 2, 1));
        assert!(w[1].served.p99_ms >= 39.0, "{}", w[1].served.p99_ms);
        assert!(w[1].refused.p99_ms <= 1.1, "{}", w[1].refused.p99_ms);
        assert_eq!((w[2].ok, w[2].shed), (1, 0));
        let s = r.summary(ms(3500));
        assert_eq!((s.ok, s.shed, s.errors), (4, 2, 1));
        assert!(s.shed_latency.max_ms <= 1.1, "{}", s.shed_latency.max_ms);
        assert!(s.max_ms >= 39.0, "refusals are not in the served latencies");
        assert!(Recorder::default().windows().is_empty());
    }

    #[test]
    fn send_lag_and_refusals_from_send_are_kept_per_window() {
        let ms = Duration::from_millis;
        let mut r = Recorder::with_windows(&[ms(0), ms(1000), ms(2000)], ms(0));
        for (at, lag, from_send, outcome) in [
            (100, 1, 3, Outcome::Ok(1)),
            (1100, 20, 2, Outcome::Shed),
            (1200, 30, 4, Outcome::Shed),
            (1300, 10, 50, Outcome::Ok(1)),
        ] {
            r.record(ms(at), ms(lag + from_send), &outcome, true);
            r.record_send(ms(at), ms(lag), ms(from_send), &outcome);
        }
        let w = r.windows();
        assert_eq!(w[0].refused_from_send.max_ms, 0.0, "nothing refused");
        assert!(w[0].send_lag.max_ms >= 0.9 && w[0].send_lag.max_ms <= 1.1);
        // From schedule the refusals took 22 and 34 ms; from their send, 2 and 4.
        assert!(w[1].refused.max_ms >= 33.9, "{}", w[1].refused.max_ms);
        assert!(
            (3.9..=4.1).contains(&w[1].refused_from_send.max_ms),
            "{}",
            w[1].refused_from_send.max_ms
        );
        assert!((29.9..=30.1).contains(&w[1].send_lag.max_ms));
    }
}
