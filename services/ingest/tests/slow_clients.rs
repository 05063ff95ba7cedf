//! Slow, idle and unsigned clients on the webhook port, through real loopback sockets: they
//! are cut off or refused early (the swarm of them beside a pushing ERP is in
//! `slow_swarm.rs`, a binary of its own so nothing else runs beside it).
//!
//! Clients connect from other loopback addresses (127.0.0.2 and up) than the ERP
//! (127.0.0.1), as they would from other hosts.

mod support;

use ratemesh_ingest::IngestSettings;
use std::time::{Duration, Instant};

use ratemesh_runtime::signature;
use support::slow::{
    closed_within, connect_from, forged_signature, head, status_within, timed_push,
};
use support::{now, start, stock_body};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

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
        s.section_mut::<IngestSettings>().body_read_timeout_ms = 300;
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
