//! The admin HTTP port: `/metrics` for Prometheus, `/livez` and `/readyz` for Kubernetes.

use axum::Router;
use axum::extract::State;
use axum::http::StatusCode;
use axum::response::IntoResponse;
use axum::routing::get;

use crate::health::HealthState;

/// Routes of the admin port.
pub(crate) fn router(health: HealthState) -> Router {
    Router::new()
        .route("/metrics", get(metrics))
        .route("/livez", get(livez))
        .route("/readyz", get(readyz))
        .with_state(health)
}

async fn metrics(State(health): State<HealthState>) -> impl IntoResponse {
    let connected = if *health.backend.borrow() { 1.0 } else { 0.0 };
    metrics::gauge!("ratemesh_backend_connected").set(connected);
    (
        [(
            http::header::CONTENT_TYPE,
            "text/plain; version=0.0.4; charset=utf-8",
        )],
        crate::metrics::render(),
    )
}

/// Alive as long as the process answers: restarting would not fix a lost Redis.
async fn livez() -> &'static str {
    "ok\n"
}

async fn readyz(State(health): State<HealthState>) -> impl IntoResponse {
    let backend = *health.backend.borrow();
    if health.all_ready() {
        let body = if backend {
            "ready\n"
        } else {
            "ready (backend disconnected: answering from memory; writes wait for it)\n"
        };
        (StatusCode::OK, body.to_owned())
    } else {
        let mut why = String::from("not ready:");
        if *health.shutting_down.borrow() {
            why.push_str(" shutting down;");
        }
        for entry in &health.entries {
            if !entry.readiness.get() {
                why.push_str(&format!(" {} not ready;", entry.grpc_services.join(",")));
            } else if !health.is_ready(entry) {
                why.push_str(&format!(
                    " {} needs the backend, which is disconnected;",
                    entry.grpc_services.join(",")
                ));
            }
        }
        why.push('\n');
        (StatusCode::SERVICE_UNAVAILABLE, why)
    }
}
