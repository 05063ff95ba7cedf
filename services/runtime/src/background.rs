//! Background work — stream consumers, timers, partner deliveries, stream upkeep — runs on
//! a runtime of its own, whose threads the OS runs after the listeners' when the CPU is
//! saturated.
//!
//! On one shared runtime a BFCM surge of stock updates fills the workers' queues with
//! consumer work, and every gRPC call and webhook then waits its turn behind it, in each
//! of the several scheduling rounds a call needs (connection task, stream task, writing the
//! answer): reads a network needs within its deadline wait for work that has a durable
//! backlog and can finish later. With the background on threads of a higher nice value
//! (`server.background_nice`), the kernel gives the listeners' threads the CPU first; the
//! background still gets what is left (and all of an idle core), its streams' backlog
//! shows the delay (`ratemesh_stream_backlog_entries`), and ingest's backlog limits push
//! back on the ERP if it grows too far.
//!
//! Only Linux lowers the priority; elsewhere the runtime is still separate.

use std::sync::atomic::{AtomicBool, Ordering};

use tokio::runtime::{Handle, Runtime};

/// Where background tasks run: a runtime of their own, shut down (its remaining tasks
/// dropped) when this is dropped, which is safe inside an async context; or the caller's.
#[derive(Debug)]
pub(crate) struct Background {
    runtime: Option<Runtime>,
    handle: Handle,
}

impl Background {
    /// Starts `threads` workers (0: one per CPU) whose nice value is `nice` above the
    /// process's (0: the listeners' priority).
    pub(crate) fn start(threads: usize, nice: i32) -> std::io::Result<Self> {
        Self::named("ratemesh-background", threads, nice)
    }

    /// The same, with threads called `name`: a runtime of its own for other work.
    pub(crate) fn named(name: &str, threads: usize, nice: i32) -> std::io::Result<Self> {
        let mut builder = tokio::runtime::Builder::new_multi_thread();
        builder
            .enable_all()
            .thread_name(name)
            .on_thread_start(move || lower_priority(nice));
        if threads > 0 {
            builder.worker_threads(threads);
        }
        let runtime = builder.build()?;
        Ok(Self {
            handle: runtime.handle().clone(),
            runtime: Some(runtime),
        })
    }

    /// Background tasks on the current runtime, beside the listeners.
    pub(crate) fn shared() -> Self {
        Self {
            runtime: None,
            handle: Handle::current(),
        }
    }

    /// Where background tasks are spawned.
    pub(crate) fn handle(&self) -> &Handle {
        &self.handle
    }
}

impl Drop for Background {
    fn drop(&mut self) {
        if let Some(runtime) = self.runtime.take() {
            runtime.shutdown_background();
        }
    }
}

/// Warned about once per process: every thread would fail the same way.
static WARNED: AtomicBool = AtomicBool::new(false);

#[cfg(target_os = "linux")]
fn lower_priority(nice: i32) {
    if nice == 0 {
        return;
    }
    // On Linux a nice value belongs to the thread, so this leaves the listeners' alone. A
    // new thread starts at its creator's value; the background goes `nice` above it.
    let tid = rustix::thread::gettid();
    let lowered = rustix::process::getpriority_process(Some(tid))
        .and_then(|own| rustix::process::setpriority_process(Some(tid), (own + nice).min(19)));
    if let Err(err) = lowered
        && !WARNED.swap(true, Ordering::Relaxed)
    {
        tracing::warn!(
            nice,
            error = %err,
            "cannot lower the background threads' priority; they compete with the listeners"
        );
    }
}

#[cfg(not(target_os = "linux"))]
fn lower_priority(nice: i32) {
    if nice != 0 && !WARNED.swap(true, Ordering::Relaxed) {
        tracing::info!(
            nice,
            "background threads keep the listeners' priority on this platform"
        );
    }
}

#[cfg(all(test, target_os = "linux"))]
mod tests {
    use super::*;

    /// The nice value of the calling thread.
    fn own_nice() -> i32 {
        rustix::process::getpriority_process(Some(rustix::thread::gettid())).expect("getpriority")
    }

    #[test]
    fn background_threads_run_at_the_configured_nice_value_and_others_keep_theirs() {
        let before = own_nice();
        let background = Background::start(1, 7).expect("runtime");
        let seen = background
            .handle()
            .block_on(async { tokio::spawn(async { own_nice() }).await })
            .expect("task");
        // block_on runs on this thread; the spawned task ran on a worker.
        assert_eq!(seen, (before + 7).min(19));
        assert_eq!(own_nice(), before, "the caller's priority changed");
        drop(background);
    }

    #[tokio::test]
    async fn dropping_it_inside_a_runtime_does_not_panic() {
        let background = Background::start(1, 0).expect("runtime");
        let answer = background.handle().spawn(async { 42 }).await.expect("task");
        assert_eq!(answer, 42);
        drop(background);
    }
}
