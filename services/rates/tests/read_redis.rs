//! The read path on a real Redis, through real sockets: reads keep answering from memory
//! while Redis is killed, and the reads counter shows they were served.

mod read_support;

use std::net::SocketAddr;
use std::time::Duration;

use chrono::Utc;
use ratemesh_bus::testkit::RedisServer;
use ratemesh_bus::{Bus, BusOptions};
use ratemesh_proto::v1;
use ratemesh_proto::v1::rate_result::Outcome;
use ratemesh_proto::v1::rate_service_client::RateServiceClient;
use ratemesh_runtime::settings::ApiKeySettings;
use ratemesh_runtime::{App, Context, Role, auth};
use read_support::{card, publish, wait_for};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

const KEY: &str = "read-test-network-key";

async fn metrics_body(admin: SocketAddr) -> String {
    let mut stream = tokio::net::TcpStream::connect(admin).await.expect("admin");
    stream
        .write_all(b"GET /metrics HTTP/1.0\r\n\r\n")
        .await
        .expect("write");
    let mut body = String::new();
    stream.read_to_string(&mut body).await.expect("read");
    body
}

#[tokio::test]
async fn get_rate_keeps_answering_while_redis_is_killed() {
    ratemesh_runtime::telemetry::init_for_tests();
    let mut redis = RedisServer::start();
    let options = BusOptions {
        partitions: 4,
        read_block: Duration::from_millis(100),
        ..BusOptions::default()
    };
    let prefix = redis.unique_prefix();
    let bus = Bus::redis(&redis.url(), &prefix, options.clone())
        .await
        .expect("bus");
    for i in 0..40 {
        publish(
            &bus,
            &card(&format!("SKU-{i:02}"), "toys", "0.05", 1, Utc::now()),
        )
        .await;
    }

    let mut settings = read_support::settings();
    let any: SocketAddr = "127.0.0.1:0".parse().expect("addr");
    settings.server.grpc_addr = any;
    settings.server.http_addr = any;
    settings.server.admin_addr = any;
    settings.redis.url = redis.url();
    settings.redis.key_prefix = prefix;
    settings.redis.partitions = 4;
    settings.auth.keys = vec![ApiKeySettings {
        name: "network".into(),
        role: Role::Network,
        sha256: auth::hash_key(KEY),
        partner_id: None,
    }];
    let ctx = Context::new(settings, bus.clone());
    let module = ratemesh_rates::build(&ctx).await.expect("rates module");
    let app = App::bind(&ctx, vec![module]).await.expect("bind");
    let (grpc, admin) = (app.grpc_addr(), app.admin_addr());
    let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
    let running = tokio::spawn(app.run(async move {
        let _ = stop_rx.await;
    }));

    let channel = tonic::transport::Endpoint::from_shared(format!("http://{grpc}"))
        .expect("endpoint")
        .connect()
        .await
        .expect("connect");
    let bearer: tonic::metadata::MetadataValue<_> = format!("Bearer {KEY}").parse().expect("ascii");
    let mut client =
        RateServiceClient::with_interceptor(channel, move |mut r: tonic::Request<()>| {
            r.metadata_mut().insert("authorization", bearer.clone());
            Ok(r)
        });
    let get = |sku: &str| v1::GetRateRequest {
        sku: sku.into(),
        as_of: None,
    };
    // Wait for the replica to load (UNAVAILABLE until then).
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while client.get_rate(get("SKU-00")).await.is_err() {
        assert!(std::time::Instant::now() < deadline, "replica never loaded");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    publish(&bus, &card("SKU-07", "toys", "0.09", 2, Utc::now())).await;
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    loop {
        let card = client
            .get_rate(get("SKU-07"))
            .await
            .expect("read")
            .into_inner()
            .card;
        if card.is_some_and(|c| c.version == 2) {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "tail never applied v2"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }

    redis.kill();
    wait_for("bus disconnected", || !*bus.connected().borrow()).await;

    for round in 0..200 {
        let sku = format!("SKU-{:02}", round % 40);
        let card = client
            .get_rate(get(&sku))
            .await
            .unwrap_or_else(|s| panic!("read {round} failed with redis down: {s:?}"))
            .into_inner()
            .card
            .expect("card");
        assert_eq!(card.sku, sku);
    }
    let batch = client
        .batch_get_rates(v1::BatchGetRatesRequest {
            skus: (0..40)
                .map(|i| format!("SKU-{i:02}"))
                .chain(["SKU-404".into()])
                .collect(),
        })
        .await
        .expect("batch with redis down")
        .into_inner();
    assert_eq!(batch.results.len(), 41);
    assert!(
        batch.results[..40]
            .iter()
            .all(|r| matches!(r.outcome, Some(Outcome::Card(_))))
    );
    assert!(
        matches!(&batch.results[7].outcome, Some(Outcome::Card(c)) if c.version == 2),
        "{:?}",
        batch.results[7]
    );
    assert!(matches!(batch.results[40].outcome, Some(Outcome::Error(_))));

    // The reads were served and counted.
    let body = metrics_body(admin).await;
    let count: f64 = body
        .lines()
        .filter(|l| l.starts_with("ratemesh_rates_reads_total") && l.contains("method=\"GetRate\""))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum();
    assert!(count >= 200.0, "reads counter: {count}");

    let _ = stop_tx.send(());
    let _ = tokio::time::timeout(Duration::from_secs(10), running).await;
}
