//! A swarm of slow clients (partial headers, silent connections, unsigned and forged
//! trickled bodies) holds hundreds of webhook connections while a signed ERP keeps
//! pushing: every push is answered 202 in its normal time.
//!
//! Swarm clients connect from 127.0.0.2 and up, the ERP from 127.0.0.1, as from other
//! hosts. One test in its own binary: nothing else shares the loopback meanwhile.

mod support;

use ratemesh_ingest::IngestSettings;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use support::slow::{connect_from, forged_signature, head, timed_push};
use support::start;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

#[tokio::test]
async fn signed_pushes_are_answered_while_slow_clients_hold_hundreds_of_connections() {
    const SWARM: usize = 300;
    const PUSHES: u64 = 40;
    // Fewer slots than slow clients, so any slot a slow client held would show. Every
    // timeout is long enough that no slow client is cut off while the pushes run: what keeps
    // the ERP answered is that slow clients never hold a slot.
    let ingest = start(|s| {
        s.section_mut::<IngestSettings>().max_in_flight = 32;
        s.server.http_header_read_timeout_ms = 60_000;
        s.section_mut::<IngestSettings>().body_read_timeout_ms = 60_000;
    })
    .await;
    let server = ingest.http;

    // Clients whose connection is still open: unsigned ones are refused and closed at once,
    // the others stay until a timeout this test does not reach.
    let open = Arc::new(AtomicUsize::new(0));
    let connected = Arc::new(AtomicUsize::new(0));
    let closed_by_kind: Arc<[AtomicUsize; 4]> = Arc::new(Default::default());
    let mut swarm = tokio::task::JoinSet::new();
    for n in 0..SWARM {
        let host = 2 + (n % 30) as u8;
        let (open, connected) = (open.clone(), connected.clone());
        let closed_by_kind = closed_by_kind.clone();
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
            closed_by_kind[n % 4].fetch_add(1, Ordering::SeqCst);
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
    // The unsigned quarter is refused and closed at once; the other three quarters stay.
    // On a loaded machine a handful of trickling clients have been seen reset
    // (ECONNRESET, with no close on the server's side); the bound leaves room for that
    // while still requiring the swarm to hold two hundred connections throughout.
    let still_open = open.load(Ordering::SeqCst);
    assert!(
        still_open >= 200,
        "only {still_open} of {SWARM} slow clients were still connected when the pushes ended ({:?} closed by kind)",
        closed_by_kind
            .iter()
            .map(|c| c.load(Ordering::SeqCst))
            .collect::<Vec<_>>()
    );
    swarm.abort_all();
    assert_eq!(ingest.stock_updates().await.len(), PUSHES as usize);
    ingest.stop().await;
}
