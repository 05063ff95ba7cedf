//! Readiness of each service, mirrored into `grpc.health.v1` and `/readyz`.
//!
//! Every service starts NOT_SERVING. A service marks itself ready when it can do its job
//! (for rates: the replica is loaded). The backend's connection state gates every service
//! that needs it to answer (ingest, incentives, notifier); a service that answers from
//! memory (rates, once its replica is loaded) stays SERVING through a Redis outage, so a
//! failover does not take reads away from networks. Whether the backend is reachable is
//! reported apart, as the health service [`BACKEND_HEALTH`] and the
//! `ratemesh_backend_connected` gauge. Shutdown turns everything NOT_SERVING again before
//! the listeners close.

use std::sync::Arc;

use tokio::sync::watch;
use tonic_health::ServingStatus;
use tonic_health::server::HealthReporter;

/// A service's handle on its own readiness.
#[derive(Debug, Clone)]
pub struct Readiness {
    tx: Arc<watch::Sender<bool>>,
}

impl Readiness {
    /// A new, not-ready handle.
    pub fn new() -> Self {
        Self {
            tx: Arc::new(watch::Sender::new(false)),
        }
    }

    /// Marks the service ready (or not).
    pub fn set(&self, ready: bool) {
        self.tx
            .send_if_modified(|current| std::mem::replace(current, ready) != ready);
    }

    /// Whether the service says it is ready.
    pub fn get(&self) -> bool {
        *self.tx.borrow()
    }

    /// A receiver that sees every change.
    pub fn subscribe(&self) -> watch::Receiver<bool> {
        self.tx.subscribe()
    }
}

impl Default for Readiness {
    fn default() -> Self {
        Self::new()
    }
}

/// The health service name that reports the backend (Redis) connection: SERVING while it
/// is reachable. The write path (stream appends, consumers) waits while it is not.
pub const BACKEND_HEALTH: &str = "ratemesh.backend";

fn serving(yes: bool) -> ServingStatus {
    if yes {
        ServingStatus::Serving
    } else {
        ServingStatus::NotServing
    }
}

/// One entry of the health table: a service's gRPC names and its readiness.
#[derive(Debug, Clone)]
pub(crate) struct HealthEntry {
    pub(crate) grpc_services: Vec<&'static str>,
    pub(crate) readiness: Readiness,
    /// Those of `grpc_services` that answer from memory once ready. A service with any
    /// stays ready while the backend is disconnected.
    pub(crate) from_memory: Vec<&'static str>,
}

impl HealthEntry {
    fn needs_backend(&self) -> bool {
        self.from_memory.is_empty()
    }
}

/// Everything that decides what health reports.
#[derive(Debug, Clone)]
pub(crate) struct HealthState {
    pub(crate) entries: Vec<HealthEntry>,
    pub(crate) backend: watch::Receiver<bool>,
    pub(crate) shutting_down: watch::Receiver<bool>,
}

impl HealthState {
    /// Ready means: not shutting down, and every service ready to answer (ready itself,
    /// and the backend connected if it needs it).
    pub(crate) fn all_ready(&self) -> bool {
        self.entries.iter().all(|e| self.is_ready(e))
    }

    /// Whether `entry` can answer now (what it answers from memory, at least).
    pub(crate) fn is_ready(&self, entry: &HealthEntry) -> bool {
        self.answers(entry, entry.needs_backend())
    }

    fn answers(&self, entry: &HealthEntry, needs_backend: bool) -> bool {
        let backend = *self.backend.borrow();
        !*self.shutting_down.borrow() && entry.readiness.get() && (backend || !needs_backend)
    }

    /// The status of `entry`'s gRPC service `name`.
    fn status_of(&self, entry: &HealthEntry, name: &str) -> ServingStatus {
        serving(self.answers(entry, !entry.from_memory.contains(&name)))
    }

    /// Pushes the current state into the reporter.
    pub(crate) async fn publish(&self, reporter: &HealthReporter) {
        for entry in &self.entries {
            for name in &entry.grpc_services {
                let status = self.status_of(entry, name);
                reporter.set_service_status(*name, status).await;
            }
        }
        let backend = serving(*self.backend.borrow());
        reporter.set_service_status(BACKEND_HEALTH, backend).await;
        let overall = serving(self.all_ready());
        reporter.set_service_status("", overall).await;
    }

    /// Keeps the reporter in line with the state until every sender is gone.
    pub(crate) async fn follow(mut self, reporter: HealthReporter) {
        let mut readiness: Vec<_> = self
            .entries
            .iter()
            .map(|e| e.readiness.subscribe())
            .collect();
        loop {
            self.publish(&reporter).await;
            let changed = futures::future::select_all(
                readiness
                    .iter_mut()
                    .map(|rx| Box::pin(rx.changed()))
                    .chain([
                        Box::pin(self.backend.changed()),
                        Box::pin(self.shutting_down.changed()),
                    ]),
            );
            if changed.await.0.is_err() {
                // A sender is gone: the app is being torn down.
                self.publish(&reporter).await;
                return;
            }
        }
    }
}
