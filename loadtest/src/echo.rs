//! The gRPC baseline: a bare tonic server (no auth, no layers, no lookup) that answers
//! `GetRate`-shaped calls with a fixed `GetRateResponse` captured from ratemesh, so both
//! sides move exactly the bytes a real `GetRate` moves.

use std::net::SocketAddr;

use ratemesh_proto::v1::{GetRateRequest, GetRateResponse};
use tokio_util::sync::CancellationToken;
use tonic::transport::server::TcpIncoming;
use tonic::{Request, Response, Status};

/// Generated code of `proto/echo.proto`.
#[allow(unreachable_pub, missing_docs, clippy::all)]
pub mod pb {
    tonic::include_proto!("ratemesh.loadtest.v1");
}

struct Echo {
    response: GetRateResponse,
}

#[tonic::async_trait]
impl pb::echo_server::Echo for Echo {
    async fn get_rate(
        &self,
        _request: Request<GetRateRequest>,
    ) -> Result<Response<GetRateResponse>, Status> {
        Ok(Response::new(self.response.clone()))
    }
}

/// A running echo server; stops when dropped.
#[derive(Debug)]
pub struct EchoServer {
    /// Where it listens (127.0.0.1, a free port).
    pub addr: SocketAddr,
    stop: CancellationToken,
}

impl Drop for EchoServer {
    fn drop(&mut self) {
        self.stop.cancel();
    }
}

/// Starts the echo server answering `response` to every call.
pub async fn start(response: GetRateResponse) -> anyhow::Result<EchoServer> {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let addr = listener.local_addr()?;
    let stop = CancellationToken::new();
    let serve = tonic::transport::Server::builder()
        .add_service(pb::echo_server::EchoServer::new(Echo { response }))
        // Like ratemesh's own server: no Nagle delay on small answers.
        .serve_with_incoming_shutdown(
            TcpIncoming::from(listener).with_nodelay(Some(true)),
            stop.clone().cancelled_owned(),
        );
    tokio::spawn(async move {
        if let Err(e) = serve.await {
            eprintln!("echo server stopped: {e}");
        }
    });
    Ok(EchoServer { addr, stop })
}
