//! The merchandiser web console: pages a merchandiser (or admin) signs into with an API key
//! to find a SKU, see why its rate is what it is and how it moved, pin or cap it, start or
//! stop a flash incentive, see which partners missed a change, and try a candidate policy
//! on what the input archive recorded (what-if).
//!
//! The console holds no rule of its own. Its JSON gateway (`/api/…`) calls the gRPC
//! services with the signed-in user's key, so roles, validation and override conflicts are
//! decided where they are for every other client, and a `tonic::Status` becomes an HTTP
//! answer in one place ([`error`]).
//!
//! Layout:
//! - [`config`]: what the console is built from (key table, each service's gRPC endpoint,
//!   cookie flags).
//! - [`session`]: server-side sessions, the session cookie and the CSRF check.
//! - [`gateway`]: the gRPC clients, called as the signed-in user.
//! - [`error`]: the one mapping of gateway failures to HTTP status and `{error, field?}`.
//! - [`json`]: the contract's messages as the JSON the pages read.
//! - [`api`]: the `/api/…` handlers, one module per page.
//! - [`assets`]: the HTML shell, script and stylesheet, compiled into the binary.

#![forbid(unsafe_code)]

pub mod api;
pub mod assets;
pub mod config;
pub mod error;
pub mod gateway;
pub mod json;
pub mod session;

use std::net::SocketAddr;
use std::sync::Arc;

use axum::Router;
use tokio::net::TcpListener;
use tokio_rustls::TlsAcceptor;
use tokio_util::sync::CancellationToken;

pub use config::ConsoleConfig;

use crate::gateway::Gateway;
use crate::session::Sessions;

/// What every handler shares.
#[derive(Clone)]
pub struct ConsoleState {
    /// The gRPC services, called as the signed-in user.
    pub(crate) gateway: Gateway,
    /// Who is signed in.
    pub(crate) sessions: Arc<Sessions>,
    /// Cancelled when the process shuts down, so live streams end and the listener can
    /// drain.
    pub(crate) stop: CancellationToken,
}

/// A console bound to its listener, ready to [`Console::run`].
pub struct Console {
    listener: TcpListener,
    addr: SocketAddr,
    config: ConsoleConfig,
}

impl Console {
    /// Binds `addr` (port 0 picks a free one).
    pub async fn bind(addr: SocketAddr, config: ConsoleConfig) -> std::io::Result<Self> {
        let listener = TcpListener::bind(addr).await?;
        let addr = listener.local_addr()?;
        Ok(Self {
            listener,
            addr,
            config,
        })
    }

    /// The address the console listens on.
    pub fn local_addr(&self) -> SocketAddr {
        self.addr
    }

    /// Whether the console serves TLS (and so marks its cookie `Secure`).
    pub fn is_tls(&self) -> bool {
        self.config.tls.is_some()
    }

    /// Serves until `stop` is cancelled, then lets open requests finish; live streams end
    /// at once.
    pub async fn run(self, stop: CancellationToken) -> std::io::Result<()> {
        let Console {
            listener, config, ..
        } = self;
        let tls: Option<TlsAcceptor> = config.tls.clone();
        let limits = config.limits;
        let router = router(&config, stop.clone());
        ratemesh_runtime::http_server::serve(listener, router, limits, tls, stop).await
    }
}

/// The console's routes: pages, assets and the JSON gateway.
pub fn router(config: &ConsoleConfig, stop: CancellationToken) -> Router {
    let state = ConsoleState {
        gateway: Gateway::new(config.channels.clone()),
        sessions: Arc::new(Sessions::new(
            config.keys.clone(),
            config.session_idle,
            config.tls.is_some(),
        )),
        stop,
    };
    assets::routes().merge(api::routes()).with_state(state)
}
