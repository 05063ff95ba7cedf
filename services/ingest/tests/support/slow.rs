//! Raw loopback clients for the slow-client tests: they connect from chosen loopback
//! addresses, send partial requests and watch how the server ends them.

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::time::{Duration, Instant};

use tokio::io::AsyncReadExt;
use tokio::net::{TcpSocket, TcpStream};

use super::{Ingest, now, stock_body};

/// A TCP connection to `server` from the loopback address `127.0.0.<host>`.
pub async fn connect_from(host: u8, server: SocketAddr) -> TcpStream {
    let socket = TcpSocket::new_v4().expect("socket");
    socket
        .bind(SocketAddr::new(
            IpAddr::V4(Ipv4Addr::new(127, 0, 0, host)),
            0,
        ))
        .expect("bind a loopback source address");
    socket.connect(server).await.expect("connect")
}

/// Request headers for `POST /v1/stock` declaring a body of `length` bytes.
pub fn head(length: usize, signature: Option<String>) -> String {
    let mut head = format!(
        "POST /v1/stock HTTP/1.1\r\nhost: ratemesh\r\ncontent-type: application/json\r\ncontent-length: {length}\r\n"
    );
    if let Some(signature) = signature {
        head.push_str(&format!("ratemesh-signature: {signature}\r\n"));
    }
    head.push_str("\r\n");
    head
}

/// A well-formed, in-tolerance header whose HMAC matches nothing.
pub fn forged_signature() -> String {
    format!("t={},v1={}", now(), "ab".repeat(32))
}

/// Reads until the server closes the connection or `within` passes; true if it closed.
pub async fn closed_within(stream: &mut TcpStream, within: Duration) -> bool {
    let mut buf = [0u8; 4096];
    let deadline = tokio::time::Instant::now() + within;
    loop {
        match tokio::time::timeout_at(deadline, stream.read(&mut buf)).await {
            Err(_) => return false,
            Ok(Ok(0)) | Ok(Err(_)) => return true,
            Ok(Ok(_)) => continue,
        }
    }
}

/// Reads a response's status line (and whatever else has arrived), within `within`.
pub async fn status_within(stream: &mut TcpStream, within: Duration) -> Option<u16> {
    let mut got = Vec::new();
    let mut buf = [0u8; 4096];
    let deadline = tokio::time::Instant::now() + within;
    while !got.windows(4).any(|w| w == b"\r\n\r\n") {
        match tokio::time::timeout_at(deadline, stream.read(&mut buf)).await {
            Ok(Ok(n)) if n > 0 => got.extend_from_slice(&buf[..n]),
            _ => return None,
        }
    }
    let text = String::from_utf8_lossy(&got);
    text.split(' ').nth(1).and_then(|code| code.parse().ok())
}

/// Pushes a signed batch and returns its status and how long the answer took.
pub async fn timed_push(ingest: &Ingest, n: u64) -> (u16, Duration) {
    let body = stock_body(&[(&format!("SKU-{n}"), 10, n + 1)]);
    let started = Instant::now();
    let answer = ingest.erp.post_signed("/v1/stock", &body, &[]).await;
    (answer.status, started.elapsed())
}
