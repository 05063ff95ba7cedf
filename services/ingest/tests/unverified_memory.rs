//! A flood of large bodies with forged signatures does not grow the process by more than
//! the budget for unverified bodies: RSS is read from /proc/self/status while the flood
//! runs (the service runs in this process). One test in its own binary, so nothing else
//! allocates meanwhile.

mod support;

use ratemesh_ingest::IngestSettings;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;

use support::slow::{connect_from, forged_signature, head, status_within, timed_push};
use support::start;
use tokio::io::AsyncWriteExt;
use tokio::sync::Semaphore;

const MIB: usize = 1 << 20;
const BODY: usize = 8 * MIB;
const POSTS: usize = 128;
const AT_ONCE: usize = 64;
const BUDGET: usize = 32 * MIB;

/// Resident set size of this process, in bytes.
fn rss() -> u64 {
    let status = std::fs::read_to_string("/proc/self/status").expect("/proc/self/status");
    status
        .lines()
        .find_map(|line| line.strip_prefix("VmRSS:"))
        .and_then(|rest| {
            rest.trim()
                .trim_end_matches("kB")
                .trim()
                .parse::<u64>()
                .ok()
        })
        .map(|kib| kib * 1024)
        .expect("VmRSS in /proc/self/status")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_flood_of_forged_8_mib_bodies_stays_within_the_unverified_budget() {
    let ingest = start(|s| {
        // The sizes of the report: 8 MiB bodies allowed, 64 sent at a time.
        s.section_mut::<IngestSettings>().max_body_bytes = BODY;
        s.section_mut::<IngestSettings>().max_unverified_body_bytes = BUDGET;
        // Slow debug-build hashing must not turn the flood into timeouts.
        s.section_mut::<IngestSettings>().body_read_timeout_ms = 120_000;
    })
    .await;
    // One body, shared by every sender, allocated before the baseline.
    let body: Arc<Vec<u8>> = Arc::new(vec![b' '; BODY]);
    let (status, _) = timed_push(&ingest, 1).await;
    assert_eq!(status, 202);

    let baseline = rss();
    let peak = Arc::new(AtomicU64::new(baseline));
    let done = Arc::new(AtomicBool::new(false));
    let sampler = {
        let (peak, done) = (peak.clone(), done.clone());
        std::thread::spawn(move || {
            while !done.load(Ordering::Relaxed) {
                peak.fetch_max(rss(), Ordering::Relaxed);
                std::thread::sleep(Duration::from_millis(5));
            }
        })
    };

    let slots = Arc::new(Semaphore::new(AT_ONCE));
    let mut flood = tokio::task::JoinSet::new();
    for n in 0..POSTS {
        let permit = slots.clone().acquire_owned().await.expect("slot");
        let (server, body) = (ingest.http, body.clone());
        flood.spawn(async move {
            let _permit = permit;
            let mut stream = connect_from(2 + (n % 30) as u8, server).await;
            let _ = stream
                .write_all(head(BODY, Some(forged_signature())).as_bytes())
                .await;
            for chunk in body.chunks(256 * 1024) {
                if stream.write_all(chunk).await.is_err() {
                    // Refused before its body was read: the server closed the connection.
                    break;
                }
            }
            status_within(&mut stream, Duration::from_secs(150)).await
        });
    }
    let mut answers = std::collections::BTreeMap::<Option<u16>, usize>::new();
    while let Some(answer) = flood.join_next().await {
        *answers.entry(answer.expect("sender")).or_default() += 1;
    }
    done.store(true, Ordering::Relaxed);
    sampler.join().expect("sampler");
    let grew = peak.load(Ordering::Relaxed).saturating_sub(baseline);

    // The budget, plus room for what the flood costs besides the bodies (connections,
    // tasks, buffers of bodies read but not yet freed).
    let allowed = (BUDGET + 48 * MIB) as u64;
    assert!(
        grew <= allowed,
        "RSS grew by {} MiB during {POSTS} forged {} MiB posts ({AT_ONCE} at a time); at most {} MiB expected ({answers:?})",
        grew / MIB as u64,
        BODY / MIB,
        allowed / MIB as u64
    );

    // Every forged post is refused: 401 once its whole body proved not to verify, or 503
    // when the budget was full (or the reset that follows a 503 sent before the body).
    let refused: usize = answers
        .iter()
        .filter(|(status, _)| matches!(status, Some(401) | Some(503) | None))
        .map(|(_, n)| n)
        .sum();
    assert_eq!(refused, POSTS, "{answers:?}");
    assert!(
        answers.get(&Some(401)).copied().unwrap_or(0) > 0,
        "some bodies were read to the end: {answers:?}"
    );
    println!(
        "{POSTS} forged {} MiB posts, {AT_ONCE} at a time: RSS grew by {} MiB; answers {answers:?}",
        BODY / MIB,
        grew / MIB as u64
    );

    // And the ERP is still served.
    let (status, _) = timed_push(&ingest, 2).await;
    assert_eq!(status, 202);
    ingest.stop().await;
}
