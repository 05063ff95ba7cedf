//! The stream gauges on the admin `/metrics` endpoint: backlog, pending, length and dead
//! letters for every (stream, group) pair the services consume, and for any other group
//! found on their streams.
//!
//! One test per binary: the gauges are process-wide, and a second app would report its
//! own bus into them.

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use ratemesh_bus::{Bus, BusOptions, Event};
use ratemesh_contract::streams;
use ratemesh_runtime::{App, Context, Settings};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

async fn scrape(admin: SocketAddr) -> String {
    let mut conn = tokio::net::TcpStream::connect(admin)
        .await
        .expect("connect");
    conn.write_all(b"GET /metrics HTTP/1.0\r\nHost: test\r\n\r\n")
        .await
        .expect("request");
    let mut response = String::new();
    conn.read_to_string(&mut response).await.expect("response");
    assert!(response.starts_with("HTTP/1.0 200"), "{response}");
    response
}

/// The value of `name{group="..",stream=".."}` in a Prometheus text page.
fn gauge(page: &str, name: &str, stream: &str, group: &str) -> Option<f64> {
    page.lines().find_map(|line| {
        let rest = line.strip_prefix(name)?.strip_prefix('{')?;
        let (labels, value) = rest.split_once("} ")?;
        let mut labels: Vec<&str> = labels.split(',').collect();
        labels.sort_unstable();
        let want_group = format!("group=\"{group}\"");
        let want_stream = format!("stream=\"{stream}\"");
        (labels == [want_group.as_str(), want_stream.as_str()])
            .then(|| value.trim().parse().ok())
            .flatten()
    })
}

#[tokio::test]
async fn metrics_show_backlog_pending_length_and_dead_letters_per_stream_and_group() {
    ratemesh_runtime::telemetry::init_for_tests();
    let bus = Bus::memory(BusOptions {
        read_block: Duration::from_millis(50),
        max_deliveries: 1,
        ..BusOptions::embedded()
    })
    .expect("memory bus");
    let mut settings = Settings::default();
    let any: SocketAddr = "127.0.0.1:0".parse().expect("addr");
    settings.server.grpc_addr = any;
    settings.server.http_addr = any;
    settings.server.admin_addr = any;
    settings.telemetry.gauge_interval_ms = 50;
    let ctx = Context::new(settings, bus.clone());
    let app = App::bind(&ctx, Vec::new()).await.expect("bind");
    let admin = app.admin_addr();
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let running = tokio::spawn(app.run(async move {
        let _ = stopped.await;
    }));

    // stock × rates: five entries, four delivered, one of those acked, one dead-lettered.
    let rates = bus
        .consumer(streams::STOCK, streams::groups::RATES, "r1")
        .await
        .expect("consumer");
    // stock × archive: a group the services do not consume, which reads nothing here.
    let _archive = bus
        .consumer(streams::STOCK, "archive", "a1")
        .await
        .expect("consumer");
    for sku in ["a", "b", "c", "d"] {
        bus.publish(streams::STOCK, Event::new(sku, b"x".to_vec()))
            .await
            .expect("publish");
    }
    let batch = rates.next_batch().await.expect("batch");
    assert_eq!(batch.len(), 4);
    rates.ack(&batch[..1]).await.expect("ack");
    rates.nack(&batch[1], "bad entry").await.expect("nack");
    bus.publish(streams::STOCK, Event::new("e", b"x".to_vec()))
        .await
        .expect("publish");
    // rates × notifier: two entries nobody has read yet.
    for sku in ["a", "b"] {
        bus.publish(streams::RATES, Event::new(sku, b"x".to_vec()))
            .await
            .expect("publish");
    }

    let (stock, rates_stream) = (streams::STOCK, streams::RATES);
    let (g_rates, g_notifier) = (streams::groups::RATES, streams::groups::NOTIFIER);
    let want = [
        ("ratemesh_stream_length_entries", stock, g_rates, 5.0),
        ("ratemesh_stream_pending_entries", stock, g_rates, 2.0),
        ("ratemesh_stream_backlog_entries", stock, g_rates, 3.0),
        ("ratemesh_stream_dead_letter_entries", stock, g_rates, 1.0),
        (
            "ratemesh_stream_backlog_entries",
            stock,
            streams::groups::INCENTIVES,
            5.0,
        ),
        (
            "ratemesh_stream_length_entries",
            rates_stream,
            g_notifier,
            2.0,
        ),
        (
            "ratemesh_stream_backlog_entries",
            rates_stream,
            g_notifier,
            2.0,
        ),
        (
            "ratemesh_stream_pending_entries",
            rates_stream,
            g_notifier,
            0.0,
        ),
        (
            "ratemesh_stream_dead_letter_entries",
            streams::OVERRIDES,
            g_rates,
            0.0,
        ),
        (
            "ratemesh_stream_backlog_entries",
            streams::INCENTIVES,
            g_notifier,
            0.0,
        ),
        ("ratemesh_stream_backlog_entries", stock, "archive", 5.0),
        ("ratemesh_stream_pending_entries", stock, "archive", 0.0),
    ];
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let page = scrape(admin).await;
        let wrong: Vec<_> = want
            .iter()
            .filter(|(name, stream, group, value)| {
                gauge(&page, name, stream, group) != Some(*value)
            })
            .collect();
        if wrong.is_empty() {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "gauges not as expected: {wrong:?}\n{page}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let _ = stop.send(());
    running.await.expect("join").expect("app stops cleanly");
}
