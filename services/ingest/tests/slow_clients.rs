//! Slow, idle and unsigned clients on the webhook port, through real loopback sockets: they
//! are cut off or refused early and never keep a signed ERP push from being answered.
//!
//! Swarm clients connect from other loopback addresses (127.0.0.2 and up) than the ERP
//! (127.0.0.1), as they would from other hosts.

mod support;

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use ratemesh_runtime::signature;
use support::{Ingest, now, start, stock_body};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpSocket, TcpStream};

/// A TCP connection to `server` from the loopback address `127.0.0.<host>`.
async fn connect_from(host: u8, server: SocketAddr) -> TcpStream {
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
fn head(length: usize, signature: Option<String>) -> String {
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
fn forged_signature() -> String {
    format!("t={},v1={}", now(), "ab".repeat(32))
}

/// Reads until the server closes the connection or `within` passes; true if it closed.
async fn closed_within(stream: &mut TcpStream, within: Duration) -> bool {
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
async fn status_within(stream: &mut TcpStream, within: Duration) -> Option<u16> {
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
async fn timed_push(ingest: &Ingest, n: u64) -> (u16, Duration) {
    let body = stock_body(&[(&format!("SKU-{n}"), 10, n + 1)]);
    let started = Instant::now();
    let answer = ingest.post_signed("/v1/stock", &body, &[]).await;
    (answer.status, started.elapsed())
}

#[tokio::test]
async fn signed_pushes_are_answered_while_slow_clients_hold_hundreds_of_connections() {
    const SWARM: usize = 300;
    const PUSHES: u64 = 40;
    // Fewer slots than slow clients, so any slot a slow client held would show. Every
    // timeout is long enough that no slow client is cut off while the pushes run: what keeps
    // the ERP answered is that slow clients never hold a slot.
    let ingest = start(|s| {
        s.ingest.max_in_flight = 32;
        s.server.http_header_read_timeout_ms = 60_000;
        s.ingest.body_read_timeout_ms = 60_000;
    })
    .await;
    let server = ingest.http;

    // Clients whose connection is still open: unsigned ones are refused and closed at once,
    // the others stay until a timeout this test does not reach.
    let open = Arc::new(AtomicUsize::new(0));
    let connected = Arc::new(AtomicUsize::new(0));
    let mut swarm = tokio::task::JoinSet::new();
    for n in 0..SWARM {
        let host = 2 + (n % 30) as u8;
        let (open, connected) = (open.clone(), connected.clone());
        swarm.spawn(async move {
            let mut stream = connect_from(host, server).await;
            open.fetch_add(1, Ordering::SeqCst);
            connected.fetch_add(1, Ordering::SeqCst);
            let trickle = match n % 4 {
                // Stops in the middle of its headers.
                0 => {
                    let _ = stream
                        .write_all(b"POST /v1/stock HTTP/1.1\r\nhost: ratemesh\r\ncontent-le")
                        .await;
                    false
                }
                // Unsigned, then a body one byte at a time.
                1 => {
                    let _ = stream.write_all(head(1_000_000, None).as_bytes()).await;
                    true
                }
                // A well-formed signature that matches nothing, then a trickled body.
                2 => {
                    let _ = stream
                        .write_all(head(1_000_000, Some(forged_signature())).as_bytes())
                        .await;
                    true
                }
                // Connects and says nothing.
                _ => false,
            };
            let until = tokio::time::Instant::now() + Duration::from_secs(30);
            while tokio::time::Instant::now() < until {
                if trickle && stream.write_all(b"[").await.is_err() {
                    break;
                }
                let mut buf = [0u8; 512];
                match tokio::time::timeout(Duration::from_millis(200), stream.read(&mut buf)).await
                {
                    Ok(Ok(0)) | Ok(Err(_)) => break,
                    _ => {}
                }
            }
            open.fetch_sub(1, Ordering::SeqCst);
        });
    }
    // Let the whole swarm connect and send its headers before the ERP starts.
    let deadline = Instant::now() + Duration::from_secs(20);
    while connected.load(Ordering::SeqCst) < SWARM && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(
        connected.load(Ordering::SeqCst),
        SWARM,
        "the swarm connected"
    );
    tokio::time::sleep(Duration::from_millis(300)).await;

    let mut slow = Vec::new();
    for n in 0..PUSHES {
        let (status, took) = timed_push(&ingest, n).await;
        assert_eq!(
            status, 202,
            "push {n} of {PUSHES} was refused during the swarm"
        );
        if took > Duration::from_secs(2) {
            slow.push((n, took));
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(slow.is_empty(), "pushes answered late: {slow:?}");
    let still_open = open.load(Ordering::SeqCst);
    assert!(
        still_open >= SWARM * 3 / 4,
        "only {still_open} of {SWARM} slow clients were still connected when the pushes ended"
    );
    swarm.abort_all();
    assert_eq!(ingest.stock_updates().await.len(), PUSHES as usize);
    ingest.stop().await;
}

#[tokio::test]
async fn an_unsigned_request_is_refused_before_its_body_is_sent() {
    let ingest = start(|_| {}).await;
    for signature in [
        None,
        Some("t=1,v1=zz".to_owned()),
        // Well formed but far outside the tolerance.
        Some(format!("t={},v1={}", now() - 3600, "ab".repeat(32))),
    ] {
        let mut stream = connect_from(2, ingest.http).await;
        stream
            .write_all(head(4_000_000, signature.clone()).as_bytes())
            .await
            .expect("headers");
        // Not a byte of the body is sent.
        assert_eq!(
            status_within(&mut stream, Duration::from_secs(2)).await,
            Some(401),
            "{signature:?}"
        );
        assert!(
            closed_within(&mut stream, Duration::from_secs(2)).await,
            "the connection of a refused request is closed, not kept for its body"
        );
    }
    ingest.stop().await;
}

#[tokio::test]
async fn partial_headers_idle_connections_and_trickled_bodies_are_cut_off() {
    let ingest = start(|s| {
        s.server.http_header_read_timeout_ms = 300;
        s.server.http_keep_alive_timeout_ms = 300;
        s.ingest.body_read_timeout_ms = 300;
    })
    .await;

    // Stops mid-headers.
    let mut partial = connect_from(2, ingest.http).await;
    partial
        .write_all(b"POST /v1/stock HTTP/1.1\r\nhost: ratemesh\r\n")
        .await
        .expect("write");
    // Connects and never sends anything.
    let mut silent = connect_from(3, ingest.http).await;
    // A complete signed request on a kept-alive connection, then nothing.
    let mut kept = connect_from(4, ingest.http).await;
    let body = stock_body(&[("SKU-1", 5, 1)]);
    let signed = signature::sign(support::SECRET.as_bytes(), now(), body.as_bytes());
    kept.write_all(format!("{}{body}", head(body.len(), Some(signed))).as_bytes())
        .await
        .expect("write");
    assert_eq!(
        status_within(&mut kept, Duration::from_secs(5)).await,
        Some(202)
    );
    let started = Instant::now();
    for (what, stream) in [
        ("partial headers", &mut partial),
        ("silent connection", &mut silent),
        ("idle kept-alive connection", &mut kept),
    ] {
        assert!(
            closed_within(stream, Duration::from_secs(3)).await,
            "{what} still open after {:?}",
            started.elapsed()
        );
    }

    // A well-formed signature, then a body that trickles: 408 once the body deadline passes.
    let mut trickler = connect_from(5, ingest.http).await;
    trickler
        .write_all(head(1000, Some(forged_signature())).as_bytes())
        .await
        .expect("write");
    let started = Instant::now();
    let (mut reader, mut writer) = trickler.into_split();
    let trickle = tokio::spawn(async move {
        for _ in 0..40 {
            if writer.write_all(b" ").await.is_err() {
                break;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    });
    let mut response = Vec::new();
    let _ = tokio::time::timeout(Duration::from_secs(1), reader.read_to_end(&mut response)).await;
    trickle.abort();
    let response = String::from_utf8_lossy(&response);
    assert!(
        response.starts_with("HTTP/1.1 408"),
        "after {:?}: {response}",
        started.elapsed()
    );
    assert_eq!(ingest.stock_updates().await.len(), 1);
    ingest.stop().await;
}

#[tokio::test]
async fn connections_are_capped_per_peer_and_in_total() {
    let ingest = start(|s| {
        s.server.http_max_connections = 6;
        s.server.http_max_connections_per_peer = 3;
    })
    .await;

    // Three from one peer are admitted; a fourth from it is closed at once.
    let mut held = Vec::new();
    for _ in 0..3 {
        held.push(connect_from(2, ingest.http).await);
    }
    tokio::time::sleep(Duration::from_millis(100)).await;
    let mut fourth = connect_from(2, ingest.http).await;
    assert!(closed_within(&mut fourth, Duration::from_secs(1)).await);
    for stream in &mut held {
        assert!(!closed_within(stream, Duration::from_millis(50)).await);
    }

    // Another peer still gets in, and so does the ERP.
    let (status, _) = timed_push(&ingest, 1).await;
    assert_eq!(status, 202);

    // Two more peers fill the total (3 + 1 ERP + 2); the next connection is closed.
    held.push(connect_from(3, ingest.http).await);
    held.push(connect_from(4, ingest.http).await);
    tokio::time::sleep(Duration::from_millis(100)).await;
    let mut over = connect_from(5, ingest.http).await;
    assert!(closed_within(&mut over, Duration::from_secs(1)).await);

    // Closing connections frees their places.
    held.clear();
    tokio::time::sleep(Duration::from_millis(200)).await;
    let mut again = connect_from(5, ingest.http).await;
    assert!(!closed_within(&mut again, Duration::from_millis(300)).await);
    ingest.stop().await;
}
