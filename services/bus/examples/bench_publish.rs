//! Batched publish throughput of the bus against a plain pipelined XADD loop on the same
//! Redis, printed as a ratio (bus / plain). Not a test: run it by hand.
//!
//! ```text
//! cargo run --release -p ratemesh-bus --example bench_publish            # private redis-server
//! cargo run --release -p ratemesh-bus --example bench_publish -- redis://127.0.0.1:6380/
//! ```
//! Environment: `EVENTS` (default 200000), `BATCH` (default 100), `PARTITIONS` (default 16).

use std::time::{Duration, Instant};

use bytes::Bytes;
use ratemesh_bus::testkit::{RedisServer, unique_prefix};
use ratemesh_bus::{Bus, BusOptions, Event};

fn env_or(name: &str, default: usize) -> usize {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let events = env_or("EVENTS", 200_000);
    let batch = env_or("BATCH", 100).max(1);
    let partitions = u32::try_from(env_or("PARTITIONS", 16))?;
    let (_server, url) = match std::env::args().nth(1) {
        Some(url) => (None, url),
        None => {
            let server = RedisServer::start();
            let url = server.url();
            (Some(server), url)
        }
    };
    let payload = Bytes::from(vec![7u8; 120]);
    let traceparent = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";
    let skus: Vec<String> = (0..10_000).map(|i| format!("SKU-{i:06}")).collect();

    // Plain: the same fields, pipelined XADDs on one multiplexed connection.
    let client = redis::Client::open(url.as_str())?;
    let mut conn = client.get_multiplexed_async_connection().await?;
    let plain_prefix = unique_prefix();
    let plain = {
        let started = Instant::now();
        let mut n = 0;
        while n < events {
            let mut pipe = redis::pipe();
            for i in n..(n + batch).min(events) {
                let sku = &skus[i % skus.len()];
                let p = ratemesh_bus::partition::partition_of(sku, partitions);
                pipe.cmd("XADD")
                    .arg(format!("{{{plain_prefix}:p{p}}}:s:stock"))
                    .arg("*")
                    .arg("k")
                    .arg(sku)
                    .arg("tp")
                    .arg(traceparent)
                    .arg("p")
                    .arg(payload.as_ref());
            }
            let _: Vec<String> = pipe.query_async(&mut conn).await?;
            n += batch;
        }
        started.elapsed()
    };

    let opts = BusOptions {
        partitions,
        ..BusOptions::default()
    };
    let bus = Bus::redis(&url, &unique_prefix(), opts).await?;
    let through_bus = {
        let started = Instant::now();
        let mut n = 0;
        while n < events {
            let batch_events = (n..(n + batch).min(events))
                .map(|i| {
                    Event::new(skus[i % skus.len()].clone(), payload.clone())
                        .with_traceparent(traceparent)
                })
                .collect();
            bus.publish_batch("stock", batch_events).await?;
            n += batch;
        }
        started.elapsed()
    };

    let rate = |d: Duration| events as f64 / d.as_secs_f64();
    println!("events={events} batch={batch} partitions={partitions} payload=120B");
    println!("plain pipelined XADD : {:>10.0} events/s", rate(plain));
    println!(
        "bus.publish_batch    : {:>10.0} events/s",
        rate(through_bus)
    );
    println!(
        "ratio bus/plain      : {:.2}",
        rate(through_bus) / rate(plain)
    );
    Ok(())
}
