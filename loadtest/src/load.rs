//! The two ways of applying load.
//!
//! - [`open_loop`]: requests are *scheduled* at a fixed (or shaped) rate whatever the
//!   server does, and each latency is measured from its scheduled send time. A stall
//!   therefore shows up as latency of every request that should have been sent during it
//!   (no coordinated omission). `concurrency` bounds requests in flight; when it is
//!   exhausted, later requests wait, and that wait is part of their latency.
//! - [`closed_loop`]: `concurrency` workers send back to back; what they reach is the
//!   saturation throughput, which the baselines and ratios are built on. Loops whose
//!   throughputs make a ratio take turns ([`closed_loops_in_turns`]), so they meet the
//!   same state of the shared machine.

use std::future::Future;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures::FutureExt;
use futures::future::BoxFuture;
use indicatif::{ProgressBar, ProgressStyle};
use tokio::runtime::Handle;
use tokio::sync::{OwnedSemaphorePermit, Semaphore, TryAcquireError};
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
///
/// The schedule is kept by a thread of its own that sleeps to each send time and hands
/// the request to the runtime there: the runtime's timer ticks in whole milliseconds, and
/// a schedule kept on it would send a millisecond's requests at once, up to a millisecond
/// late, behind the tasks of the connections it drives.
pub async fn open_loop<F, Fut>(drive: &Drive, shape: &Shape, op: F) -> (Recorder, Duration)
where
    F: Fn(u64) -> Fut + Send + Sync + 'static,
    Fut: Future<Output = Outcome> + Send + 'static,
{
    let recorder = Arc::new(Mutex::new(Recorder::with_windows(
        &shape.bounds(),
        drive.warmup,
    )));
    let permits = Arc::new(Semaphore::new(drive.concurrency.max(1)));
    let bar = bar(drive, shape.length());
    let schedule = Schedule {
        runtime: Handle::current(),
        shape: shape.clone(),
        warmup: drive.warmup,
        stop: drive.stop.clone(),
        permits: permits.clone(),
        recorder: recorder.clone(),
        bar: bar.clone(),
    };
    let op = Arc::new(op);
    let scheduled_until = tokio::task::spawn_blocking(move || schedule.run(op))
        .await
        .expect("the schedule thread panicked");
    // Wait for the requests still in flight (they belong to the measured window).
    let _all = permits.acquire_many(drive.concurrency.max(1) as u32).await;
    bar.finish_and_clear();
    let measured = scheduled_until.saturating_sub(drive.warmup);
    let recorder = recorder.lock().expect("recorder lock").clone();
    (recorder, measured)
}

/// What the schedule thread of [`open_loop`] needs.
struct Schedule {
    runtime: Handle,
    shape: Shape,
    warmup: Duration,
    stop: CancellationToken,
    permits: Arc<Semaphore>,
    recorder: Arc<Mutex<Recorder>>,
    bar: ProgressBar,
}

impl Schedule {
    /// Sends every request `shape` owes, each on the runtime at its time; returns how far
    /// the schedule got (the shape's length unless stopped).
    fn run<F, Fut>(self, op: Arc<F>) -> Duration
    where
        F: Fn(u64) -> Fut + Send + Sync + 'static,
        Fut: Future<Output = Outcome> + Send + 'static,
    {
        let start = Instant::now();
        let mut t = 0.0f64;
        let mut i = 0u64;
        // Requests owed so far: the integral of the rate, so ramps from zero and rates
        // below one per second come out right. The first request goes at t = 0.
        let mut credit = 1.0f64;
        let mut last_tick = Instant::now();
        'schedule: while let Some((rate, segment_end)) = self.shape.at(t) {
            if self.stop.is_cancelled() {
                break;
            }
            if credit >= 1.0 && rate > 0.0 {
                credit -= 1.0;
                let scheduled = start + Duration::from_secs_f64(t);
                // In naps of at most 50 ms, so a stop is seen while a slow rate waits.
                loop {
                    let early = scheduled.saturating_duration_since(Instant::now());
                    if early.is_zero() {
                        break;
                    }
                    if self.stop.is_cancelled() {
                        break 'schedule;
                    }
                    std::thread::sleep(early.min(Duration::from_millis(50)));
                }
                let Some(permit) = self.permit() else { break };
                let (op, recorder) = (op.clone(), self.recorder.clone());
                let offset = scheduled - start;
                let measured = offset >= self.warmup;
                self.runtime.spawn(async move {
                    let sent = Instant::now();
                    let outcome = op(i).await;
                    let answered = Instant::now();
                    let latency = answered.saturating_duration_since(scheduled);
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
                    self.bar.set_position(start.elapsed().as_millis() as u64);
                }
            }
            // Step to when the next request is owed, at most 50 ms (the rate may change)
            // and never past the segment's end.
            let step = if rate > 0.0 {
                ((1.0 - credit) / rate).clamp(1e-7, 0.05)
            } else {
                0.05
            };
            let step = step.min((segment_end - t).max(1e-7));
            credit += rate * step;
            t += step;
        }
        let until = Duration::from_secs_f64(t.min(self.shape.length().as_secs_f64()));
        // Stopped, the schedule may have stepped past a send it never made.
        if self.stop.is_cancelled() {
            until.min(start.elapsed())
        } else {
            until
        }
    }

    /// A place in flight: at once if one is free, else when one frees up; `None` when the
    /// run is stopped first.
    fn permit(&self) -> Option<OwnedSemaphorePermit> {
        match self.permits.clone().try_acquire_owned() {
            Ok(permit) => Some(permit),
            Err(TryAcquireError::Closed) => None,
            Err(TryAcquireError::NoPermits) => self.runtime.block_on(async {
                tokio::select! {
                    p = self.permits.clone().acquire_owned() => p.ok(),
                    () = self.stop.cancelled() => None,
                }
            }),
        }
    }
}

/// Runs `concurrency` workers that call `op` back to back for `length` (warm-up
/// included). Returns the record and the measured window.
pub async fn closed_loop<F, Fut>(drive: &Drive, length: Duration, op: F) -> (Recorder, Duration)
where
    F: Fn(u64) -> Fut + Send + Sync + 'static,
    Fut: Future<Output = Outcome> + Send + 'static,
{
    closed_loops_in_turns(drive, length, length, &[turn_op(op)])
        .await
        .pop()
        .expect("one record per operation")
}

/// A closed-loop operation whose type is erased, so loops of different calls can take
/// turns ([`closed_loops_in_turns`]).
pub type TurnOp = Arc<dyn Fn(u64) -> BoxFuture<'static, Outcome> + Send + Sync>;

/// `op` as a [`TurnOp`].
pub fn turn_op<F, Fut>(op: F) -> TurnOp
where
    F: Fn(u64) -> Fut + Send + Sync + 'static,
    Fut: Future<Output = Outcome> + Send + 'static,
{
    Arc::new(move |i| op(i).boxed())
}

/// Runs the closed loop of each of `ops` (`concurrency` workers calling it back to back)
/// in turns of `turn`, round after round, until each has run for `length`, its first
/// `warmup` not summarised. Phases compared with each other thus meet the same machine:
/// run one after the other, a drift in what the shared cores give (a neighbour, the
/// CPU's clock) would move their ratio. A turn ends when its workers' last calls are
/// answered, before the next one starts. Returns each operation's record and measured
/// window, in the order of `ops`.
pub async fn closed_loops_in_turns(
    drive: &Drive,
    length: Duration,
    turn: Duration,
    ops: &[TurnOp],
) -> Vec<(Recorder, Duration)> {
    let recorders: Vec<_> = ops
        .iter()
        .map(|_| Arc::new(Mutex::new(Recorder::default())))
        .collect();
    let calls: Vec<_> = ops.iter().map(|_| Arc::new(AtomicU64::new(0))).collect();
    let mut ran = vec![Duration::ZERO; ops.len()];
    let bar = bar(drive, length * ops.len() as u32);
    let warmup = drive.warmup;
    let turn = turn.max(Duration::from_millis(1));
    'rounds: while ran.iter().any(|r| *r < length) {
        for (k, op) in ops.iter().enumerate() {
            if drive.stop.is_cancelled() {
                break 'rounds;
            }
            let this_turn = turn.min(length.saturating_sub(ran[k]));
            if this_turn.is_zero() {
                continue;
            }
            let (before, begun) = (ran[k], Instant::now());
            let deadline = begun + this_turn;
            let mut workers = Vec::new();
            for _ in 0..drive.concurrency.max(1) {
                let (op, recorder, calls, stop) = (
                    op.clone(),
                    recorders[k].clone(),
                    calls[k].clone(),
                    drive.stop.clone(),
                );
                workers.push(tokio::spawn(async move {
                    while Instant::now() < deadline && !stop.is_cancelled() {
                        let i = calls.fetch_add(1, Ordering::Relaxed);
                        let sent = Instant::now();
                        let outcome = op(i).await;
                        let latency = sent.elapsed();
                        // Offsets run on the operation's own clock: the time it has had.
                        let offset = before + (sent - begun);
                        recorder.lock().expect("recorder lock").record(
                            offset,
                            latency,
                            &outcome,
                            offset >= warmup,
                        );
                    }
                }));
            }
            let ticker = {
                let (bar, done) = (bar.clone(), ran.iter().sum::<Duration>());
                tokio::spawn(async move {
                    loop {
                        bar.set_position((done + begun.elapsed()).as_millis() as u64);
                        tokio::time::sleep(Duration::from_millis(100)).await;
                    }
                })
            };
            for w in workers {
                let _ = w.await;
            }
            ticker.abort();
            ran[k] = before + begun.elapsed().min(this_turn);
        }
    }
    bar.finish_and_clear();
    recorders
        .into_iter()
        .zip(ran)
        .map(|(recorder, ran)| {
            let recorder = recorder.lock().expect("recorder lock").clone();
            (recorder, ran.saturating_sub(warmup))
        })
        .collect()
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

    // The schedule runs on a thread of its own, on the real clock: these tests take
    // seconds, and assert only what scheduling late could not make true.

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
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

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_ramp_sends_the_integral_of_its_rate() {
        let shape = Shape::constant(0.0, Duration::from_millis(200)).then_ramp(
            0.0,
            1000.0,
            Duration::from_millis(200),
        );
        let (rec, _) = open_loop(&drive(64), &shape, |_| async { Outcome::Ok(1) }).await;
        let sent = rec.summary(Duration::from_secs(1)).ok;
        // ∫ 0..0.2 of 5000 t dt = 100 requests (the first waits for the rate to rise).
        assert!((90..=110).contains(&sent), "{sent}");
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn an_open_loop_phase_is_summarised_per_segment_of_its_shape() {
        let shape = Shape::constant(10.0, Duration::from_secs(1))
            .then(100.0, Duration::from_secs(1))
            .then(10.0, Duration::from_secs(1));
        // The step's calls are refused at once; the others take 50 ms.
        let (rec, _) = open_loop(&drive(64), &shape, |i| async move {
            if (10..110).contains(&i) {
                Outcome::Shed
            } else {
                tokio::time::sleep(Duration::from_millis(50)).await;
                Outcome::Ok(1)
            }
        })
        .await;
        let w = rec.windows();
        assert_eq!(w.len(), 3);
        assert_eq!((w[0].ok, w[0].shed), (10, 0));
        assert_eq!((w[1].ok, w[1].shed), (0, 100));
        assert!((9..=11).contains(&w[2].ok), "{}", w[2].ok);
        assert!(w[0].served.p99_ms >= 50.0, "{}", w[0].served.p99_ms);
        // Refusals are summarised apart from what was served.
        assert!(w[1].refused.max_ms < 50.0, "{}", w[1].refused.max_ms);
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_stop_ends_the_schedule_while_it_waits_for_a_slow_rate() {
        let drive = drive(4);
        let stop = drive.stop.clone();
        tokio::spawn(async move {
            tokio::time::sleep(Duration::from_millis(100)).await;
            stop.cancel();
        });
        // One call at t = 0, the next due 10 s later.
        let shape = Shape::constant(0.1, Duration::from_secs(600));
        let (rec, measured) = tokio::time::timeout(
            Duration::from_secs(60),
            open_loop(&drive, &shape, |_| async { Outcome::Ok(1) }),
        )
        .await
        .expect("the schedule did not see the stop");
        assert_eq!(rec.summary(measured).ok, 1);
        assert!(measured < Duration::from_secs(10), "{measured:?}");
    }

    #[tokio::test(start_paused = true)]
    async fn closed_loops_take_turns_and_each_is_measured_on_its_own_time() {
        let log = Arc::new(Mutex::new(Vec::new()));
        let op = |name: char, ms: u64| {
            let log = log.clone();
            turn_op(move |_| {
                let log = log.clone();
                async move {
                    tokio::time::sleep(Duration::from_millis(ms)).await;
                    log.lock().unwrap().push(name);
                    Outcome::Ok(1)
                }
            })
        };
        let mut drive = drive(2);
        drive.warmup = Duration::from_millis(100);
        let records = closed_loops_in_turns(
            &drive,
            Duration::from_millis(300),
            Duration::from_millis(100),
            &[op('a', 5), op('b', 10)],
        )
        .await;
        // Three turns each, one after the other: a's calls never overlap b's.
        let log = log.lock().unwrap().clone();
        let turns = 1 + log.windows(2).filter(|w| w[0] != w[1]).count();
        assert_eq!(turns, 6, "{log:?}");
        // Each measured on the 200 ms after its own first 100 ms: two workers calling
        // back to back.
        let (a, a_for) = &records[0];
        let (b, b_for) = &records[1];
        assert_eq!(
            (*a_for, *b_for),
            (Duration::from_millis(200), Duration::from_millis(200))
        );
        let (a, b) = (a.summary(*a_for), b.summary(*b_for));
        assert!((78..=82).contains(&a.ok), "{}", a.ok);
        assert!((38..=42).contains(&b.ok), "{}", b.ok);
    }
}
