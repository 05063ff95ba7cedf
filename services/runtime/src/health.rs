//! Readiness of each service, mirrored into `grpc.health.v1` and `/readyz`.
//!
//! Every service starts NOT_SERVING. A service marks itself ready when it can do its job
//! (for rates: the replica is loaded); the backend's connection state gates every service;
//! shutdown turns everything NOT_SERVING again before the listeners close.

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

/// One entry of the health table: a service's gRPC names and its readiness.
#[derive(Debug, Clone)]
pub(crate) struct HealthEntry {
    pub(crate) grpc_services: Vec<&'static str>,
    pub(crate) readiness: Readiness,
}

/// Everything that decides what health reports.
#[derive(Debug, Clone)]
pub(crate) struct HealthState {
    pub(crate) entries: Vec<HealthEntry>,
    pub(crate) backend: watch::Receiver<bool>,
    pub(crate) shutting_down: watch::Receiver<bool>,
}

impl HealthState {
    /// Ready means: backend connected, not shutting down, every service ready.
    pub(crate) fn all_ready(&self) -> bool {
        *self.backend.borrow()
            && !*self.shutting_down.borrow()
            && self.entries.iter().all(|e| e.readiness.get())
    }

    fn status_of(&self, entry: &HealthEntry) -> ServingStatus {
        if *self.backend.borrow() && !*self.shutting_down.borrow() && entry.readiness.get() {
            ServingStatus::Serving
        } else {
            ServingStatus::NotServing
        }
    }

    /// Pushes the current state into the reporter.
    pub(crate) async fn publish(&self, reporter: &HealthReporter) {
        for entry in &self.entries {
            let status = self.status_of(entry);
            for name in &entry.grpc_services {
                reporter.set_service_status(*name, status).await;
            }
        }
        let overall = if self.all_ready() {
            ServingStatus::Serving
        } else {
            ServingStatus::NotServing
        };
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
