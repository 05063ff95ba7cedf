//! What every ratemesh service shares: settings, telemetry, the gRPC server plumbing
//! (health, reflection, timeouts, load shedding, authentication, metrics), the API error
//! type, the admin port and graceful shutdown.
//!
//! - [`settings`]: defaults → file → `RATEMESH__…` environment, validated with key names.
//! - [`telemetry`] and [`trace_context`]: logs, OpenTelemetry traces, `traceparent` on the wire.
//! - [`auth`]: API keys (hashed), roles and the RPC → roles table.
//! - [`error`]: [`ApiError`] and its one mapping to gRPC status and HTTP responses.
//! - [`app`]: [`Context`], [`ServiceModule`] and [`App`], which binds and runs services.
//! - [`grpc`]: the layer every gRPC call passes through (admission under overload, auth,
//!   trace context, metrics); it reads the runtime's scheduling delay from a probe task.
//!   [`grpc::serve`] is the HTTP/2 serve loop that answers refusals on the connection task.
//! - [`http_server`]: the webhook listener and its connection limits.
//! - [`tls`]: the listeners' TLS (certificates reloaded from files, optional mTLS).
//! - [`health`]: per-service readiness feeding `grpc.health.v1` and `/readyz`.
//! - [`shutdown`]: SIGTERM/SIGINT handling.
//! - [`consumer`]: the one consumer-group driver every service's stream handling runs in
//!   (join, read, settle, shutdown), the periodic-task loop, consumer names.
//! - [`policy`]: loading the rate policy named by `policy.file`.
//! - [`retention`] and [`stream_gauges`]: per-process upkeep of the shared streams
//!   (trimming under `[retention]`; backlog, pending, length and dead-letter gauges).

mod admin;
pub mod app;
pub mod auth;
pub mod backend;
mod background;
pub mod consumer;
pub mod error;
pub mod grpc;
pub mod health;
pub mod http_server;
pub mod metrics;
pub mod policy;
mod process_metrics;
pub mod retention;
pub mod role;
mod schedule_delay;
pub mod settings;
pub mod shutdown;
pub mod signature;
pub mod stream_gauges;
pub mod telemetry;
pub mod tls;
pub mod trace_context;

pub use app::{App, Context, ServiceModule};
pub use auth::{Principal, Role};
pub use error::{ApiError, FieldViolation};
pub use health::{BACKEND_HEALTH, Readiness};
pub use settings::Settings;
