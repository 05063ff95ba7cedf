//! The two ways of applying load.
//!
//! - [`open_loop`]: requests are *scheduled* at a fixed (or shaped) rate whatever the
//!   server does, and each latency is measured from its scheduled send time. A stall
//!   therefore shows up as latency of every request that should have been sent during it
//!   (no coordinated omission). `concurrency` bounds requests in flight; when it is
//!   exhausted, later requests wait, and that wait is part of their latency.
//! - [`closed_loop`]: `concurrency` workers send back to back; what they reach is the
//!   saturation throughput, which the baselines and ratios are built on.

use std::future::Future;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use indicatif::{ProgressBar, ProgressStyle};
use tokio::sync::Semaphore;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use crate::recorder::{Outcome, Recorder};

/// A rate over time, piecewise linear: each segment ramps from `from` to `to` requests
/// per second over `length`.
#[derive(Debug, Clone)]
pub struct Shape {
    segments: Vec<Segment>,
}

#[derive(Debug, Clone, Copy)]
struct Segment {
    length: Duration,
    from: f64,
    to: f64,
}

impl Shape {
    /// `rate` requests per second for `length`.
    pub fn constant(rate: f64, length: Duration) -> Self {
        Self {
            segments: vec![Segment {
                length,
                from: rate,
                to: rate,
            }],
        }
    }

    /// Appends a ramp from `from` to `to` per second over `length`.
    pub fn then_ramp(mut self, from: f64, to: f64, length: Duration) -> Self {
        self.segments.push(Segment { length, from, to });
        self
    }

    /// Appends a constant `rate` for `length`.
    pub fn then(self, rate: f64, length: Duration) -> Self {
        self.then_ramp(rate, rate, length)
    }

    /// Total length.
    pub fn length(&self) -> Duration {
        self.segments.iter().map(|s| s.length).sum()
    }

    /// The rate at `t` after the start, and when the segment holding `t` ends.
    fn at(&self, t: f64) -> Option<(f64, f64)> {
        let mut start = 0.0;
        for s in &self.segments {
            let end = start + s.length.as_secs_f64();
            if t < end {
                let frac = (t - start) / (end - start).max(1e-9);
                return Some((s.from + (s.to - s.from) * frac, end));
            }
            start = end;
        }
        None
    }

    /// Where each segment starts, then where the last one ends: the windows a phase
    /// driven by this shape is summarised by ([`Recorder::windows`]).
    pub fn bounds(&self) -> Vec<Duration> {
        let mut at = Duration::ZERO;
        let mut out = vec![at];
        for s in &self.segments {
            at += s.length;
            out.push(at);
        }
        out
    }

    /// Highest rate anywhere in the shape.
    pub fn peak(&self) -> f64 {
        self.segments
            .iter()
            .map(|s| s.from.max(s.to))
            .fold(0.0, f64::max)
    }
}

/// How a phase is driven.
#[derive(Debug, Clone)]
pub struct Drive {
    /// Name shown on the progress bar.
    pub name: String,
    /// Requests in flight at most.
    pub concurrency: usize,
    /// The first part of the run that is plotted but not summarised.
    pub warmup: Duration,
    /// Show a progress bar on the terminal.
    pub progress: bool,
    /// Ends the phase early (Ctrl-C).
    pub stop: CancellationToken,
}

fn bar(drive: &Drive, length: Duration) -> ProgressBar {
    if !drive.progress {
        return ProgressBar::hidden();
    }
    let bar = ProgressBar::new(length.as_millis() as u64);
    bar.set_style(
        ProgressStyle::with_template("{prefix:>24} [{bar:30}] {elapsed:>4}/{duration:4} {msg}")
            .unwrap_or_else(|_| ProgressStyle::default_bar())
            .progress_chars("=> "),
    );
    bar.set_prefix(drive.name.clone());
    bar
}

/// Runs `op(i)` for the i-th request at the times `shape` schedules. Returns the record
/// (also summarised per segment of the shape, by scheduled time) and how long the
/// measured window was.
pub async fn open_loop<F, Fut>(drive: &Drive, shape: &Shape, op: F) -> (Recorder, Duration)
where
    F: Fn(u64) -> Fut + Send + Sync + 'static,
    Fut: Future<Output = Outcome> + Send + 'static,
{
    let op = Arc::new(op);
    let recorder = Arc::new(Mutex::new(Recorder::with_windows(
        &shape.bounds(),
        drive.warmup,
    )));
    let permits = Arc::new(Semaphore::new(drive.concurrency.max(1)));
    let bar = bar(drive, shape.length());
    let start = Instant::now();
    let warmup = drive.warmup;
    let mut t = 0.0f64;
    let mut i = 0u64;
    // Requests owed so far: the integral of the rate, so ramps from zero and rates below
    // one per second come out right. The first request goes at t = 0.
    let mut credit = 1.0f64;
    let mut last_tick = Instant::now();
    'schedule: while let Some((rate, segment_end)) = shape.at(t) {
        if credit >= 1.0 && rate > 0.0 {
            credit -= 1.0;
            let scheduled = start + Duration::from_secs_f64(t);
            if scheduled > Instant::now() {
                tokio::select! {
                    () = tokio::time::sleep_until(scheduled) => {}
                    () = drive.stop.cancelled() => break 'schedule,
                }
            }
            let permit = tokio::select! {
                p = permits.clone().acquire_owned() => match p { Ok(p) => p, Err(_) => break 'schedule },
                () = drive.stop.cancelled() => break 'schedule,
            };
            let (op, recorder) = (op.clone(), recorder.clone());
            let offset = scheduled - start;
            tokio::spawn(async move {
                let sent = Instant::now();
                let outcome = op(i).await;
                let answered = Instant::now();
                let latency = answered.saturating_duration_since(scheduled);
                let measured = offset >= warmup;
                let mut recorder = recorder.lock().expect("recorder lock");
                recorder.record(offset, latency, &outcome, measured);
                if measured {
                    recorder.record_send(
                        offset,
                        sent.saturating_duration_since(scheduled),
                        answered.saturating_duration_since(sent),
                        &outcome,
                    );
                }
                drop(recorder);
                drop(permit);
            });
            i += 1;
            if last_tick.elapsed() > Duration::from_millis(100) {
                last_tick = Instant::now();
                bar.set_position(start.elapsed().as_millis() as u64);
            }
        }
        // Step to when the next request is owed, at most 50 ms (the rate may change) and
        // never past the segment's end.
        let step = if rate > 0.0 {
            ((1.0 - credit) / rate).clamp(1e-7, 0.05)
        } else {
            0.05
        };
        let step = step.min((segment_end - t).max(1e-7));
        credit += rate * step;
        t += step;
    }
    let scheduled_until = Duration::from_secs_f64(t.min(shape.length().as_secs_f64()));
    // Wait for the requests still in flight (they belong to the measured window).
    let _all = permits.acquire_many(drive.concurrency.max(1) as u32).await;
    bar.finish_and_clear();
    let measured = scheduled_until.saturating_sub(warmup);
    let recorder = recorder.lock().expect("recorder lock").clone();
    (recorder, measured)
}

/// Runs `concurrency` workers that call `op` back to back for `length` (warm-up
/// included). Returns the record and the measured window.
pub async fn closed_loop<F, Fut>(drive: &Drive, length: Duration, op: F) -> (Recorder, Duration)
where
    F: Fn(u64) -> Fut + Send + Sync + 'static,
    Fut: Future<Output = Outcome> + Send + 'static,
{
    let op = Arc::new(op);
    let recorder = Arc::new(Mutex::new(Recorder::default()));
    let bar = bar(drive, length);
    let start = Instant::now();
    let deadline = start + length;
    let warmup = drive.warmup;
    let mut workers = Vec::new();
    for worker in 0..drive.concurrency.max(1) {
        let (op, recorder, stop) = (op.clone(), recorder.clone(), drive.stop.clone());
        let stride = drive.concurrency.max(1) as u64;
        workers.push(tokio::spawn(async move {
            let mut i = worker as u64;
            while Instant::now() < deadline && !stop.is_cancelled() {
                let sent = Instant::now();
                let outcome = op(i).await;
                let latency = sent.elapsed();
                let offset = sent - start;
                recorder.lock().expect("recorder lock").record(
                    offset,
                    latency,
                    &outcome,
                    offset >= warmup,
                );
                i += stride;
            }
        }));
    }
    let ticker = {
        let bar = bar.clone();
        tokio::spawn(async move {
            loop {
                tokio::time::sleep(Duration::from_millis(100)).await;
                bar.set_position(start.elapsed().as_millis() as u64);
            }
        })
    };
    for w in workers {
        let _ = w.await;
    }
    ticker.abort();
    bar.finish_and_clear();
    let ran = start.elapsed().min(length);
    let recorder = recorder.lock().expect("recorder lock").clone();
    (recorder, ran.saturating_sub(warmup))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn drive(concurrency: usize) -> Drive {
        Drive {
            name: "test".into(),
            concurrency,
            warmup: Duration::ZERO,
            progress: false,
            stop: CancellationToken::new(),
        }
    }

    #[tokio::test(start_paused = true)]
    async fn open_loop_sends_on_schedule_and_charges_a_stall_to_every_waiting_request() {
        // One slot; every call takes 100 ms; 20 calls/s for 1 s are scheduled 50 ms apart,
        // so the queue grows and the last call waits ~1 s beyond its schedule.
        let (rec, measured) = open_loop(
            &drive(1),
            &Shape::constant(20.0, Duration::from_secs(1)),
            |_| async {
                tokio::time::sleep(Duration::from_millis(100)).await;
                Outcome::Ok(1)
            },
        )
        .await;
        let s = rec.summary(measured);
        assert!((19..=21).contains(&s.ok), "{}", s.ok);
        assert!(s.max_ms >= 1000.0, "stall hidden: max {} ms", s.max_ms);
        assert!(s.p50_ms >= 500.0, "p50 {} ms", s.p50_ms);
    }

    #[tokio::test(start_paused = true)]
    async fn a_ramp_sends_the_integral_of_its_rate() {
        let shape = Shape::constant(0.0, Duration::from_secs(1)).then_ramp(
            0.0,
            100.0,
            Duration::from_secs(2),
        );
        let (rec, _) = open_loop(&drive(64), &shape, |_| async { Outcome::Ok(1) }).await;
        let sent = rec.summary(Duration::from_secs(1)).ok;
        // ∫ 0..2 of 50 t dt = 100 requests (the first waits for the rate to rise).
        assert!((90..=110).contains(&sent), "{sent}");
    }

    #[tokio::test(start_paused = true)]
    async fn an_open_loop_phase_is_summarised_per_segment_of_its_shape() {
        let shape = Shape::constant(10.0, Duration::from_secs(1))
            .then(100.0, Duration::from_secs(1))
            .then(10.0, Duration::from_secs(1));
        // The step's calls are refused at once; the others take 5 ms.
        let (rec, _) = open_loop(&drive(64), &shape, |i| async move {
            if (10..110).contains(&i) {
                Outcome::Shed
            } else {
                tokio::time::sleep(Duration::from_millis(5)).await;
                Outcome::Ok(1)
            }
        })
        .await;
        let w = rec.windows();
        assert_eq!(w.len(), 3);
        assert_eq!((w[0].ok, w[0].shed), (10, 0));
        assert_eq!((w[1].ok, w[1].shed), (0, 100));
        assert!((9..=11).contains(&w[2].ok), "{}", w[2].ok);
        assert!(w[0].served.p99_ms >= 5.0, "{}", w[0].served.p99_ms);
        assert!(w[1].refused.max_ms < 1.0, "{}", w[1].refused.max_ms);
    }
}
