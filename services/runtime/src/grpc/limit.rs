//! The adaptive concurrency limit of one method, and the service-time estimate the deadline
//! check reads.
//!
//! # What is counted
//!
//! A method's *occupancy* is its calls inside the layer plus the ones admitted recently
//! enough that they are, by Little's law, still queued for a worker: the admission rate of
//! the last ~10 ms times the runtime's scheduling delay (never less than the delay target,
//! so the limit is sized for the rate the method sustains at the queueing we accept, and
//! noise in a small delay refuses nothing). Counting only calls inside the layer would not
//! do: a CPU-bound in-memory read is inside for microseconds and never more than one per
//! worker, however long the calls queued before it, so no limit on that count would bite.
//! A call is admitted while occupancy is under the limit.
//!
//! # How the limit moves (AIMD on latency)
//!
//! Each finished call is a sample: its *observed latency* is the scheduling delay when it
//! was admitted plus its time in the layer. The method keeps a short EWMA of it and a
//! no-load baseline (the minimum of a long EWMA, forgotten slowly). A sample is *slow*
//! when the runtime's scheduling delay is over the target, or the short EWMA is over twice
//! the baseline plus the target; then the limit becomes what was in use (the sample's
//! occupancy, if lower than the limit) times the gradient (target ÷ delay or
//! tolerated ÷ observed, kept within [0.5, 0.9]), at most once per observed latency. An
//! arriving call that finds the scheduling delay over the target and the limit under half
//! used brings it down the same way (from the occupancy it finds), without waiting for a
//! call to finish: when a burst meets an already saturated runtime, nothing of that method
//! may have finished since the saturation began, and a limit still at its ceiling would
//! admit the whole burst into the queue. A fast sample that found the limit at least half
//! used (itself included), or that follows a refusal by the limit, raises it by 1. The
//! limit stays within [min, max] and starts at max: nothing is refused below the server's
//! ceiling before there is evidence of overload.

use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::sync::{Mutex, TryLockError};
use std::time::{Duration, Instant};

/// Bounds and target of a limit.
#[derive(Debug, Clone, Copy)]
pub(crate) struct LimitConfig {
    /// Whether the limit adapts; when not, it stays at `max` (and the service time is
    /// still estimated, for deadlines).
    pub(crate) adaptive: bool,
    /// The lowest the limit goes.
    pub(crate) min: u32,
    /// The highest, and where it starts: no limit below the server's ceiling until there is
    /// evidence of overload.
    pub(crate) max: u32,
    /// The scheduling delay above which limits shrink.
    pub(crate) delay_target: Duration,
}

/// Weight of a sample in the service-time EWMA (what deadlines are checked against).
const SERVICE_WEIGHT: f64 = 0.1;
/// Weight of a sample in the short latency EWMA (what is compared to the baseline)...
const SHORT_WEIGHT: f64 = 0.2;
/// ... or more after a pause: over about this long it forgets, so the first calls after a
/// quiet spell are not judged by the latency of the last busy one.
const SHORT_MEMORY: Duration = Duration::from_millis(100);
/// Weight of a sample in the long latency EWMA (whose minimum is the baseline).
const LONG_WEIGHT: f64 = 0.02;
/// Over about this long, the baseline moves up to the long EWMA: an old minimum is
/// forgotten, so a method that got slower for good stops being penalised for it.
const BASELINE_MEMORY: Duration = Duration::from_secs(30);
/// Bounds of the time between two decreases (one observed latency).
const DECREASE_INTERVAL: (Duration, Duration) = (Duration::from_millis(10), Duration::from_secs(1));
/// Bounds of one decrease's factor.
const BACKOFF: (f64, f64) = (0.5, 0.9);

/// One finished call.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Sample {
    /// When it finished.
    pub(crate) at: Instant,
    /// Its time inside the layer.
    pub(crate) in_layer: Duration,
    /// The scheduling delay when it was admitted.
    pub(crate) delay_at_admission: Duration,
    /// The scheduling delay when it finished.
    pub(crate) delay_now: Duration,
    /// The method's occupancy when it was admitted, itself excluded.
    pub(crate) occupancy: u32,
    /// Whether the limit refused a call since the previous sample: it is binding, even if
    /// this call (admitted, so under it) found room.
    pub(crate) limited: bool,
}

/// The arithmetic of the limit, apart from any clock or concurrency.
#[derive(Debug, Clone)]
pub(crate) struct LimitState {
    limit: f64,
    service: Option<f64>,
    short: Option<f64>,
    long: Option<f64>,
    baseline: Option<f64>,
    last_sample: Option<Instant>,
    last_decrease: Option<Instant>,
}

fn ewma(previous: Option<f64>, sample: f64, weight: f64) -> f64 {
    previous.map_or(sample, |p| p + (sample - p) * weight)
}

impl LimitState {
    pub(crate) fn new(config: &LimitConfig) -> Self {
        Self {
            limit: f64::from(config.max),
            service: None,
            short: None,
            long: None,
            baseline: None,
            last_sample: None,
            last_decrease: None,
        }
    }

    /// The current limit.
    pub(crate) fn limit(&self) -> u32 {
        self.limit as u32
    }

    /// The method's usual time in the layer, once a call has finished.
    pub(crate) fn service_time(&self) -> Option<Duration> {
        self.service.map(Duration::from_secs_f64)
    }

    /// Learns from a call arriving at `at` while the runtime's scheduling delay is `delay`,
    /// the method's occupancy then `occupancy` (the call excluded): a delay over the target
    /// is overload already, so a limit far above what is in use (under half used) comes
    /// down to it, as a slow sample would bring it, without waiting for a call to finish.
    /// Until one does, a limit left at the ceiling would admit a whole burst into a
    /// saturated server.
    pub(crate) fn arrival(
        &mut self,
        config: &LimitConfig,
        at: Instant,
        delay: Duration,
        occupancy: u32,
    ) {
        let target = config.delay_target.as_secs_f64();
        let delay = delay.as_secs_f64();
        // A limit at least half used is one the method's own calls bear on: finished calls
        // move it (as they raise it), and arrivals, many more than finished calls once
        // most are refused, would only shrink it again and again.
        let in_use = f64::from(occupancy) + 1.0;
        if !config.adaptive || delay <= target || in_use * 2.0 >= self.limit {
            return;
        }
        self.decrease(config, at, target / delay, occupancy);
    }

    /// Brings the limit down to what was in use, times `gradient`, unless it came down less
    /// than one observed latency before `at`.
    fn decrease(&mut self, config: &LimitConfig, at: Instant, gradient: f64, occupancy: u32) {
        let interval = Duration::from_secs_f64(self.short.unwrap_or(0.0))
            .clamp(DECREASE_INTERVAL.0, DECREASE_INTERVAL.1);
        let due = self
            .last_decrease
            .is_none_or(|t| at.saturating_duration_since(t) >= interval);
        if due {
            // What was in use when the call was admitted is what proved too much; a
            // limit far above it (the ceiling it starts at) would take many steps to
            // come down to where it bites.
            let in_use = self.limit.min(f64::from(occupancy) + 1.0);
            let lowered =
                (in_use * gradient.clamp(BACKOFF.0, BACKOFF.1)).max(f64::from(config.min));
            self.limit = self.limit.min(lowered);
            self.last_decrease = Some(at);
        }
    }

    /// Learns from one finished call.
    pub(crate) fn record(&mut self, config: &LimitConfig, sample: Sample) {
        let in_layer = sample.in_layer.as_secs_f64();
        let observed = sample.delay_at_admission.as_secs_f64() + in_layer;
        self.service = Some(ewma(self.service, in_layer, SERVICE_WEIGHT));
        let elapsed = self
            .last_sample
            .map_or(Duration::ZERO, |t| sample.at.saturating_duration_since(t));
        let fresh = 1.0 - (-elapsed.as_secs_f64() / SHORT_MEMORY.as_secs_f64()).exp();
        let short = ewma(self.short, observed, SHORT_WEIGHT.max(fresh));
        let long = ewma(self.long, observed, LONG_WEIGHT);
        let baseline = match self.baseline {
            None => long,
            Some(b) if long > b => {
                let forget = (elapsed.as_secs_f64() / BASELINE_MEMORY.as_secs_f64()).min(1.0);
                b + (long - b) * forget
            }
            Some(_) => long,
        };
        (self.short, self.long, self.baseline) = (Some(short), Some(long), Some(baseline));
        self.last_sample = Some(sample.at);
        if !config.adaptive {
            return;
        }

        let target = config.delay_target.as_secs_f64();
        let delay = sample.delay_now.as_secs_f64();
        let tolerated = 2.0 * baseline + target;
        let queue_gradient = if delay > target { target / delay } else { 1.0 };
        let latency_gradient = if short > tolerated {
            tolerated / short
        } else {
            1.0
        };
        let gradient = queue_gradient.min(latency_gradient);
        let max = f64::from(config.max);
        if gradient < 1.0 {
            self.decrease(config, sample.at, gradient, sample.occupancy);
        } else if sample.limited || (f64::from(sample.occupancy) + 1.0) * 2.0 >= self.limit {
            self.limit = (self.limit + 1.0).min(max);
        }
    }
}

/// Width of the window admissions are counted in.
const WINDOW_NANOS: u64 = 10_000_000;

/// Recent admissions per second, from two fixed 10 ms windows (the previous one weighted by
/// how much of it still overlaps the last 10 ms). Races between threads rolling the window
/// may lose a count, which an estimate can afford; there is no lock.
#[derive(Debug, Default)]
struct AdmissionRate {
    window: AtomicU64,
    current: AtomicU32,
    previous: AtomicU32,
}

impl AdmissionRate {
    fn per_second(&self, now_nanos: u64) -> f64 {
        let window = now_nanos / WINDOW_NANOS;
        let seen = self.window.load(Ordering::Acquire);
        if window > seen
            && self
                .window
                .compare_exchange(seen, window, Ordering::AcqRel, Ordering::Acquire)
                .is_ok()
        {
            let count = self.current.swap(0, Ordering::AcqRel);
            let previous = if window == seen + 1 { count } else { 0 };
            self.previous.store(previous, Ordering::Release);
        }
        let into = (now_nanos % WINDOW_NANOS) as f64 / WINDOW_NANOS as f64;
        let count = f64::from(self.previous.load(Ordering::Acquire)) * (1.0 - into)
            + f64::from(self.current.load(Ordering::Acquire));
        count * 1e9 / WINDOW_NANOS as f64
    }

    fn record(&self) {
        self.current.fetch_add(1, Ordering::AcqRel);
    }
}

/// A method's limit as the layer uses it: admission is a handful of atomic operations, and
/// a finished call updates the arithmetic only if no other thread is doing so right then
/// (samples are statistics; none is worth waiting for).
#[derive(Debug)]
pub(crate) struct Limiter {
    config: LimitConfig,
    in_flight: AtomicU32,
    limit: AtomicU32,
    /// Calls refused by the limit since the last sample was learnt from.
    refused: AtomicU32,
    service_nanos: AtomicU64,
    admitted: AdmissionRate,
    state: Mutex<LimitState>,
    gauge: metrics::Gauge,
}

impl Limiter {
    /// A limiter at `config.max`, exported to `gauge`.
    pub(crate) fn new(config: LimitConfig, gauge: metrics::Gauge) -> Self {
        let state = LimitState::new(&config);
        gauge.set(f64::from(state.limit()));
        Self {
            config,
            in_flight: AtomicU32::new(0),
            limit: AtomicU32::new(state.limit()),
            refused: AtomicU32::new(0),
            service_nanos: AtomicU64::new(0),
            admitted: AdmissionRate::default(),
            state: Mutex::new(state),
            gauge,
        }
    }

    /// The method's usual time in the layer; zero until a call has finished.
    pub(crate) fn service_time(&self) -> Duration {
        Duration::from_nanos(self.service_nanos.load(Ordering::Relaxed))
    }

    /// Admits a call unless the method is at its limit: `at` when it arrived, `now_nanos`
    /// the same on the layer's clock, `delay` the current scheduling delay. Returns the
    /// occupancy the call was admitted at; the caller must pair it with [`Self::finish`].
    pub(crate) fn try_admit(&self, at: Instant, now_nanos: u64, delay: Duration) -> Option<u32> {
        let in_flight = self.in_flight.fetch_add(1, Ordering::AcqRel);
        if !self.config.adaptive {
            return Some(in_flight);
        }
        let wait = delay.max(self.config.delay_target).as_secs_f64();
        let queued = (self.admitted.per_second(now_nanos) * wait) as u32;
        let occupancy = in_flight.saturating_add(queued);
        let mut limit = self.limit.load(Ordering::Relaxed);
        // Only a limit under half used can move on arrival (`LimitState::arrival`); past
        // the published limit (the state's, rounded down) it cannot, and the lock is spared.
        let under_half_used = u64::from(occupancy) * 2 + 2 <= u64::from(limit);
        if delay > self.config.delay_target && under_half_used {
            limit = self
                .update(|state| state.arrival(&self.config, at, delay, occupancy))
                .unwrap_or(limit);
        }
        if occupancy >= limit {
            self.in_flight.fetch_sub(1, Ordering::AcqRel);
            self.refused.fetch_add(1, Ordering::Relaxed);
            return None;
        }
        self.admitted.record();
        Some(occupancy)
    }

    /// Ends an admitted call, learning from it when `sample` is given (its `limited` is
    /// filled in here).
    pub(crate) fn finish(&self, sample: Option<Sample>) {
        self.in_flight.fetch_sub(1, Ordering::AcqRel);
        let Some(sample) = sample else {
            return;
        };
        self.update(|state| {
            let limited = self.refused.swap(0, Ordering::Relaxed) > 0;
            state.record(&self.config, Sample { limited, ..sample });
            if let Some(service) = state.service_time() {
                let nanos = u64::try_from(service.as_nanos()).unwrap_or(u64::MAX);
                self.service_nanos.store(nanos, Ordering::Relaxed);
            }
        });
    }

    /// Applies `learn` to the arithmetic and publishes the limit it leaves, unless another
    /// thread holds the arithmetic right then (nothing learnt is worth waiting for).
    /// Returns the limit, if `learn` ran.
    fn update(&self, learn: impl FnOnce(&mut LimitState)) -> Option<u32> {
        let mut state = match self.state.try_lock() {
            Ok(state) => state,
            Err(TryLockError::Poisoned(poisoned)) => poisoned.into_inner(),
            Err(TryLockError::WouldBlock) => return None,
        };
        let before = state.limit();
        learn(&mut state);
        let after = state.limit();
        drop(state);
        if after != before {
            self.limit.store(after, Ordering::Relaxed);
            self.gauge.set(f64::from(after));
        }
        Some(after)
    }

    /// The current limit.
    #[cfg(test)]
    pub(crate) fn limit(&self) -> u32 {
        self.limit.load(Ordering::Relaxed)
    }

    #[cfg(test)]
    fn state(&self) -> LimitState {
        self.state
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .clone()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MS: Duration = Duration::from_millis(1);

    fn config() -> LimitConfig {
        LimitConfig {
            adaptive: true,
            min: 4,
            max: 1000,
            delay_target: 25 * MS,
        }
    }

    /// Feeds `n` samples one `spacing` apart, starting at `*now`.
    fn feed(
        state: &mut LimitState,
        now: &mut Instant,
        n: usize,
        spacing: Duration,
        sample: impl Fn(Instant) -> Sample,
    ) {
        for _ in 0..n {
            *now += spacing;
            state.record(&config(), sample(*now));
        }
    }

    fn call(at: Instant, in_layer: Duration, delay: Duration, occupancy: u32) -> Sample {
        Sample {
            at,
            in_layer,
            delay_at_admission: delay,
            delay_now: delay,
            occupancy,
            limited: false,
        }
    }

    #[test]
    fn starts_at_the_ceiling_and_holds_while_calls_are_fast() {
        let mut state = LimitState::new(&config());
        let mut now = Instant::now();
        feed(&mut state, &mut now, 10_000, MS, |at| {
            call(at, 50 * Duration::from_micros(1), MS, 900)
        });
        assert_eq!(state.limit(), 1000);
        let service = state.service_time().expect("estimated");
        assert!(service.abs_diff(Duration::from_micros(50)) < Duration::from_micros(1));
    }

    #[test]
    fn a_scheduling_delay_over_the_target_shrinks_the_limit_to_its_floor_then_it_grows_back() {
        let mut state = LimitState::new(&config());
        let mut now = Instant::now();
        let fast = Duration::from_micros(30);
        // Saturation: the runtime is 100 ms late, the handler itself stays fast, and
        // calls keep coming, 300 in use.
        feed(&mut state, &mut now, 1, MS, |at| {
            call(at, fast, 100 * MS, 299)
        });
        assert_eq!(state.limit(), 150, "from what was in use, halved at most");
        // While the limit binds, each decrease starts from it; decreases are spaced by the
        // observed latency (just over 100 ms here).
        let mut previous = state.limit();
        for _ in 0..4 {
            for _ in 0..101 {
                now += MS;
                let occupancy = state.limit() - 1;
                state.record(&config(), call(now, fast, 100 * MS, occupancy));
            }
            assert_eq!(state.limit(), (previous / 2).max(4));
            previous = state.limit();
        }
        feed(&mut state, &mut now, 1000, MS, |at| {
            call(at, fast, 100 * MS, 3)
        });
        assert_eq!(state.limit(), 4, "never below min");

        // The delay falls: fast samples that use the limit raise it by one each.
        feed(&mut state, &mut now, 10, MS, |at| call(at, fast, MS, 10));
        assert_eq!(state.limit(), 14);
        // A limit far above what is used does not grow further.
        feed(&mut state, &mut now, 10, MS, |at| call(at, fast, MS, 3));
        assert_eq!(state.limit(), 14);
        feed(&mut state, &mut now, 5000, MS, |at| {
            call(at, fast, MS, 2000)
        });
        assert_eq!(state.limit(), 1000, "never above max");
    }

    #[test]
    fn a_binding_limit_grows_even_when_the_admitted_calls_found_it_empty() {
        let mut state = LimitState::new(&config());
        let mut now = Instant::now();
        feed(&mut state, &mut now, 1, MS, |at| call(at, MS, 200 * MS, 0));
        assert_eq!(state.limit(), 4);
        // Fast calls that each found nothing else in flight: the limit is not in use.
        feed(&mut state, &mut now, 20, MS, |at| call(at, MS, MS, 0));
        assert_eq!(state.limit(), 4);
        // The same calls, with refusals between them: it binds, so it grows.
        feed(&mut state, &mut now, 20, MS, |at| Sample {
            limited: true,
            ..call(at, MS, MS, 0)
        });
        assert_eq!(state.limit(), 24);
    }

    #[test]
    fn after_a_pause_a_call_is_judged_on_its_own_latency() {
        let mut state = LimitState::new(&config());
        let mut now = Instant::now();
        feed(&mut state, &mut now, 200, MS, |at| call(at, 5 * MS, MS, 10));
        feed(&mut state, &mut now, 20, MS, |at| {
            call(at, 200 * MS, MS, 10)
        });
        let shrunk = state.limit();
        assert!(shrunk < 11, "{shrunk}");
        // Two quiet seconds, then a call as fast as ever, after a refusal: the last busy
        // spell's latency is forgotten, so it grows instead of shrinking again.
        now += Duration::from_secs(2);
        state.record(
            &config(),
            Sample {
                limited: true,
                ..call(now, 5 * MS, MS, 0)
            },
        );
        assert_eq!(state.limit(), shrunk + 1);
    }

    #[test]
    fn a_method_getting_slower_than_its_baseline_shrinks_its_limit() {
        let mut state = LimitState::new(&config());
        let mut now = Instant::now();
        // No-load: 20 ms in the layer.
        feed(&mut state, &mut now, 500, 10 * MS, |at| {
            call(at, 20 * MS, MS, 100)
        });
        assert_eq!(state.limit(), 1000);
        // Its backend slows to 60 ms: within 2 × 21 + 25 ms, tolerated.
        feed(&mut state, &mut now, 200, 10 * MS, |at| {
            call(at, 60 * MS, MS, 100)
        });
        assert_eq!(state.limit(), 1000);
        // To 400 ms, with the runtime itself idle: shrinks all the same.
        feed(&mut state, &mut now, 200, 10 * MS, |at| {
            call(at, 400 * MS, MS, 100)
        });
        assert!(state.limit() < 500, "{}", state.limit());
    }

    #[test]
    fn a_lasting_slowdown_becomes_the_new_baseline() {
        let mut state = LimitState::new(&config());
        let mut now = Instant::now();
        feed(&mut state, &mut now, 100, 10 * MS, |at| {
            call(at, 5 * MS, MS, 10)
        });
        // 200 ms for a minute (a slower backend, not overload): it shrinks at first ...
        feed(&mut state, &mut now, 200, 10 * MS, |at| {
            call(at, 200 * MS, MS, 10)
        });
        assert!(state.limit() < 11, "{}", state.limit());
        feed(&mut state, &mut now, 6000, 10 * MS, |at| {
            call(at, 200 * MS, MS, 10)
        });
        // ... then the baseline has moved up: it grew back to just over twice what is used
        // (10 others and itself), and no longer shrinks.
        assert_eq!(state.limit(), 23);
        feed(&mut state, &mut now, 1000, 10 * MS, |at| {
            call(at, 200 * MS, MS, 10)
        });
        assert_eq!(state.limit(), 23);
    }

    #[test]
    fn a_fixed_limit_only_estimates_the_service_time() {
        let fixed = LimitConfig {
            adaptive: false,
            ..config()
        };
        let mut state = LimitState::new(&fixed);
        let mut now = Instant::now();
        for _ in 0..100 {
            now += MS;
            state.record(&fixed, call(now, 3 * MS, 500 * MS, 1000));
        }
        assert_eq!(state.limit(), 1000);
        let service = state.service_time().expect("estimated");
        assert!(service.abs_diff(3 * MS) < Duration::from_micros(10));
    }

    fn limiter(config: LimitConfig) -> Limiter {
        Limiter::new(config, metrics::Gauge::noop())
    }

    /// Offers a call to `limiter` arriving `nanos` into the layer's clock.
    fn admit(limiter: &Limiter, nanos: u64, delay: Duration) -> Option<u32> {
        static EPOCH: std::sync::LazyLock<Instant> = std::sync::LazyLock::new(Instant::now);
        limiter.try_admit(*EPOCH + Duration::from_nanos(nanos), nanos, delay)
    }

    #[test]
    fn admission_counts_calls_queued_for_a_worker() {
        let limiter = limiter(LimitConfig {
            max: 100,
            ..config()
        });
        // 80 calls arriving within 1.6 ms while the runtime is 25 ms late (at the target,
        // not over it): by Little's law about k / 10 ms × 25 ms are queued after k were
        // admitted, so the limit of 100 is reached at about 40 — later calls are refused
        // although none of the admitted ones is still inside the layer.
        let mut admitted = 0;
        for i in 0..80u64 {
            if let Some(_occupancy) = admit(&limiter, 1_000_000_000 + i * 20_000, 25 * MS) {
                admitted += 1;
                limiter.finish(None);
            }
        }
        assert!((35..=45).contains(&admitted), "{admitted}");
        assert_eq!(limiter.limit(), 100, "a delay at the target lowers nothing");
        // Once the window has passed with nothing admitted, calls are admitted again.
        assert!(admit(&limiter, 1_030_000_000, 25 * MS).is_some());
        limiter.finish(None);
    }

    #[test]
    fn a_burst_into_a_saturated_runtime_is_refused_before_any_call_finishes() {
        let limiter = limiter(config());
        // The method was idle; the runtime is 100 ms late (four times the target) when 150
        // calls arrive within 1.5 ms. None has finished, so no sample has shrunk the limit
        // from its ceiling of 1000: the first arrival brings it down to what is in use (the
        // call itself), halved, that is to the floor.
        let mut admitted = 0;
        for i in 0..150u64 {
            if admit(&limiter, 2_000_000_000 + i * 10_000, 100 * MS).is_some() {
                admitted += 1;
            }
        }
        assert_eq!(limiter.limit(), 4);
        assert!((1..=4).contains(&admitted), "{admitted}");
        // Calls already admitted stay in; they are not refused after the fact.
        for _ in 0..admitted {
            limiter.finish(None);
        }
    }

    #[test]
    fn arrivals_lower_a_limit_far_above_what_is_in_use_at_most_once_per_observed_latency() {
        let mut state = LimitState::new(&config());
        let mut now = Instant::now();
        // Calls of 30 ms observed latency: decreases are at least that far apart.
        feed(&mut state, &mut now, 200, MS, |at| {
            call(at, 29 * MS, MS, 300)
        });
        assert_eq!(state.limit(), 1000);
        state.arrival(&config(), now, 50 * MS, 399);
        assert_eq!(state.limit(), 200, "400 in use, halved (25 ms ÷ 50 ms)");
        state.arrival(&config(), now + 20 * MS, 50 * MS, 9);
        assert_eq!(state.limit(), 200, "too soon after the last decrease");
        state.arrival(&config(), now + 40 * MS, 40 * MS, 59);
        assert_eq!(state.limit(), 37, "60 in use, × 25 ms ÷ 40 ms");
        state.arrival(&config(), now + 80 * MS, 40 * MS, 29);
        assert_eq!(
            state.limit(),
            37,
            "half used: finished calls move it, not arrivals"
        );
        state.arrival(&config(), now + 200 * MS, 20 * MS, 0);
        assert_eq!(state.limit(), 37, "a delay under the target lowers nothing");
    }

    #[test]
    fn admission_at_the_limit_is_refused_and_finishing_frees_a_place() {
        // A target so small that the queued estimate is nil: only calls inside count.
        let limiter = limiter(LimitConfig {
            max: 4,
            delay_target: Duration::from_micros(1),
            ..config()
        });
        let now = 5_000_000_000;
        for _ in 0..4 {
            assert!(admit(&limiter, now, Duration::ZERO).is_some());
        }
        assert!(admit(&limiter, now, Duration::ZERO).is_none());
        limiter.finish(None);
        assert_eq!(admit(&limiter, now, Duration::ZERO), Some(3));
        assert!(admit(&limiter, now, Duration::ZERO).is_none());
    }

    #[test]
    fn finished_calls_move_the_published_limit_and_service_time() {
        let limiter = limiter(LimitConfig {
            max: 64,
            ..config()
        });
        let start = Instant::now();
        let mut refused = 0;
        for i in 0..200u32 {
            let Some(occupancy) = admit(&limiter, u64::from(i) * 1_000_000, 80 * MS) else {
                refused += 1;
                continue;
            };
            limiter.finish(Some(Sample {
                at: start + MS * i,
                in_layer: 2 * MS,
                delay_at_admission: 80 * MS,
                delay_now: 80 * MS,
                occupancy,
                limited: false,
            }));
        }
        assert!(refused > 0);
        assert_eq!(limiter.limit(), limiter.state().limit());
        assert!(limiter.limit() < 64, "{}", limiter.limit());
        assert!(limiter.service_time().abs_diff(2 * MS) < Duration::from_micros(10));
    }
}
