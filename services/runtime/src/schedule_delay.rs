//! How long a task that became ready waits before a worker runs it: the queueing a call
//! meets before the gRPC layer ever sees it.
//!
//! When the CPU saturates, a call's time inside the layer can stay microseconds (an
//! in-memory read) while it waited milliseconds or seconds for a worker — in hyper's
//! connection task, its stream task, and again to have its answer written. No in-layer
//! timing shows that, so a probe task measures it: every [`PERIOD`] it sleeps and records
//! how late it was woken. The layer reads the result on every call, so reading is two
//! atomic loads; while the probe itself is overdue, the time it is overdue counts too, so
//! a stall is seen before the probe gets to run again.
//!
//! Exported as `ratemesh_runtime_schedule_delay_seconds` (smoothed) and
//! `ratemesh_runtime_schedule_delay_max_seconds` (the worst of about the last second).

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Weak};
use std::time::{Duration, Instant};

/// How often the probe wakes.
const PERIOD: Duration = Duration::from_millis(5);
/// Time constant of the smoothed delay while it rises: a saturation shows within a few ticks.
const RISE: Duration = Duration::from_millis(20);
/// Time constant while it falls: one quick tick does not undo a saturation.
const FALL: Duration = Duration::from_millis(100);
/// About how long the exported maximum remembers a peak.
const MAX_MEMORY: Duration = Duration::from_secs(1);

/// The scheduling delay of the runtime the probe runs on.
#[derive(Debug)]
pub(crate) struct ScheduleDelay {
    epoch: Instant,
    /// Smoothed lateness of the probe's wake-ups, in nanoseconds.
    smoothed_nanos: AtomicU64,
    /// When the probe is next due to wake, in nanoseconds since `epoch`; 0 while no probe
    /// runs (outside a runtime), when only the smoothed value counts.
    due_nanos: AtomicU64,
}

impl ScheduleDelay {
    /// A delay that stays zero: no probe runs.
    pub(crate) fn idle() -> Self {
        Self {
            epoch: Instant::now(),
            smoothed_nanos: AtomicU64::new(0),
            due_nanos: AtomicU64::new(0),
        }
    }

    /// Starts a probe on the current tokio runtime (outside one, the delay stays zero),
    /// exported as the handlers' runtime's delay. The probe stops once the returned value
    /// is dropped.
    pub(crate) fn start() -> Arc<Self> {
        Self::start_exported_as(HANDLERS)
    }

    /// [`Self::start`], exported under `gauges` (smoothed, maximum).
    pub(crate) fn start_exported_as(gauges: (&'static str, &'static str)) -> Arc<Self> {
        let delay = Arc::new(Self::idle());
        if let Ok(runtime) = tokio::runtime::Handle::try_current() {
            let due = Instant::now() + PERIOD;
            delay
                .due_nanos
                .store(delay.nanos_at(due), Ordering::Relaxed);
            runtime.spawn(probe(Arc::downgrade(&delay), due, gauges));
        }
        delay
    }

    /// The delay a task becoming ready at `now` can expect: the smoothed lateness, or how
    /// overdue the probe is right now if that is more.
    pub(crate) fn at(&self, now: Instant) -> Duration {
        let smoothed = self.smoothed_nanos.load(Ordering::Relaxed);
        let due = self.due_nanos.load(Ordering::Relaxed);
        let overdue = match due {
            0 => 0,
            due => self.nanos_at(now).saturating_sub(due),
        };
        Duration::from_nanos(smoothed.max(overdue))
    }

    fn nanos_at(&self, at: Instant) -> u64 {
        // Over 500 years of uptime before this saturates.
        u64::try_from(at.saturating_duration_since(self.epoch).as_nanos()).unwrap_or(u64::MAX)
    }
}

/// Weight of a new reading taken `elapsed` after the previous one, for time constant `tau`.
fn weight(elapsed: Duration, tau: Duration) -> f64 {
    1.0 - (-elapsed.as_secs_f64() / tau.as_secs_f64()).exp()
}

/// The gauges of the runtime calls are handled on.
const HANDLERS: (&str, &str) = (
    "ratemesh_runtime_schedule_delay_seconds",
    "ratemesh_runtime_schedule_delay_max_seconds",
);

/// The gauges of the gRPC connections' runtime, when it is apart.
pub(crate) const CONNECTIONS: (&str, &str) = (
    "ratemesh_grpc_connection_schedule_delay_seconds",
    "ratemesh_grpc_connection_schedule_delay_max_seconds",
);

async fn probe(
    delay: Weak<ScheduleDelay>,
    mut due: Instant,
    (smoothed, max): (&'static str, &'static str),
) {
    let smoothed_gauge = metrics::gauge!(smoothed);
    let max_gauge = metrics::gauge!(max);
    let (mut smoothed, mut max) = (0.0_f64, 0.0_f64);
    let mut previous = Instant::now();
    loop {
        tokio::time::sleep_until(due.into()).await;
        let woke = Instant::now();
        let Some(delay) = delay.upgrade() else {
            return;
        };
        let late = woke.saturating_duration_since(due).as_secs_f64();
        let elapsed = woke.saturating_duration_since(previous);
        previous = woke;
        let tau = if late > smoothed { RISE } else { FALL };
        smoothed += (late - smoothed) * weight(elapsed, tau);
        max = late.max(max * (1.0 - weight(elapsed, MAX_MEMORY)));
        delay
            .smoothed_nanos
            .store((smoothed * 1e9) as u64, Ordering::Relaxed);
        smoothed_gauge.set(smoothed);
        max_gauge.set(max);
        due = Instant::now() + PERIOD;
        delay
            .due_nanos
            .store(delay.nanos_at(due), Ordering::Relaxed);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn without_a_runtime_the_delay_stays_zero() {
        let delay = ScheduleDelay::start();
        assert_eq!(
            delay.at(Instant::now() + Duration::from_secs(5)),
            Duration::ZERO
        );
    }

    #[tokio::test(flavor = "current_thread")]
    async fn a_blocked_worker_shows_as_delay() {
        let delay = ScheduleDelay::start();
        // Let the probe settle on an idle runtime.
        tokio::time::sleep(Duration::from_millis(50)).await;
        assert!(
            delay.at(Instant::now()) < Duration::from_millis(40),
            "idle: {:?}",
            delay.at(Instant::now())
        );
        // Hold the only worker: the probe is overdue, which counts at once.
        std::thread::sleep(Duration::from_millis(120));
        assert!(
            delay.at(Instant::now()) >= Duration::from_millis(100),
            "{:?}",
            delay.at(Instant::now())
        );
        // The probe runs again, records the lateness and keeps it for a while (it falls
        // with a 100 ms time constant).
        tokio::time::sleep(Duration::from_millis(1)).await;
        assert!(delay.at(Instant::now()) >= Duration::from_millis(30));
        // Then, on an idle runtime, it falls back.
        tokio::time::sleep(Duration::from_millis(800)).await;
        assert!(
            delay.at(Instant::now()) < Duration::from_millis(40),
            "{:?}",
            delay.at(Instant::now())
        );
    }

    #[tokio::test(flavor = "current_thread")]
    async fn the_probe_stops_with_its_owner() {
        let tasks = || {
            tokio::runtime::Handle::current()
                .metrics()
                .num_alive_tasks()
        };
        let before = tasks();
        let delay = ScheduleDelay::start();
        assert_eq!(tasks(), before + 1);
        tokio::time::sleep(Duration::from_millis(20)).await;
        assert_eq!(tasks(), before + 1, "the probe keeps running");
        drop(delay);
        tokio::time::sleep(Duration::from_millis(20)).await;
        assert_eq!(tasks(), before, "the probe ended with its owner");
    }
}
