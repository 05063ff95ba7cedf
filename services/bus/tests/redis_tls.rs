//! `rediss://`: the bus talks to a real `redis-server` over TLS, with the server's
//! certificate checked against a CA made at test time, and with a client certificate when
//! the server requires one.

use std::time::Duration;

use ratemesh_bus::testkit::certs::TlsFiles;
use ratemesh_bus::testkit::{RedisCluster, RedisServer};
use ratemesh_bus::{Bus, BusError, BusOptions, Event, RedisTls};

fn options() -> BusOptions {
    BusOptions {
        read_block: Duration::from_millis(100),
        ..BusOptions::embedded()
    }
}

fn read(path: &std::path::Path) -> Vec<u8> {
    std::fs::read(path).expect("certificate file")
}

async fn round_trip(bus: &Bus) -> Result<Vec<String>, BusError> {
    bus.publish("stock", Event::new("SKU-1", "over tls"))
        .await?;
    let (entries, _) = bus.read_after("stock", &bus.start_cursor(), 10).await?;
    Ok(entries.into_iter().map(|d| d.key).collect())
}

#[tokio::test]
async fn a_bus_on_rediss_checks_the_server_certificate_against_the_ca() {
    let files = TlsFiles::new();
    let server = RedisServer::start_tls(&files, false);
    let tls = RedisTls {
        root_cert_pem: Some(read(&files.ca_file)),
        client_pem: None,
    };
    let bus = Bus::redis_with_tls(&server.tls_url(), &server.unique_prefix(), options(), &tls)
        .await
        .expect("bus");
    assert_eq!(round_trip(&bus).await.expect("round trip"), ["SKU-1"]);

    // A CA that did not issue the server's certificate: the handshake fails, nothing is sent.
    let other = TlsFiles::new();
    let untrusting = RedisTls {
        root_cert_pem: Some(read(&other.ca_file)),
        client_pem: None,
    };
    let bus = Bus::redis_with_tls(
        &server.tls_url(),
        &server.unique_prefix(),
        options(),
        &untrusting,
    )
    .await
    .expect("bus");
    assert!(
        round_trip(&bus).await.is_err(),
        "a server certificate from an unknown CA must be refused"
    );
}

#[tokio::test]
async fn a_server_that_requires_client_certificates_accepts_the_configured_one() {
    let files = TlsFiles::new();
    let server = RedisServer::start_tls(&files, true);
    let with_cert = RedisTls {
        root_cert_pem: Some(read(&files.ca_file)),
        client_pem: Some((read(&files.client_cert_file), read(&files.client_key_file))),
    };
    let bus = Bus::redis_with_tls(
        &server.tls_url(),
        &server.unique_prefix(),
        options(),
        &with_cert,
    )
    .await
    .expect("bus");
    assert_eq!(round_trip(&bus).await.expect("round trip"), ["SKU-1"]);

    let without_cert = RedisTls {
        client_pem: None,
        ..with_cert
    };
    let bus = Bus::redis_with_tls(
        &server.tls_url(),
        &server.unique_prefix(),
        options(),
        &without_cert,
    )
    .await
    .expect("bus");
    assert!(
        round_trip(&bus).await.is_err(),
        "a client without a certificate must be refused"
    );
}

#[tokio::test]
async fn a_bus_on_a_redis_cluster_over_tls_follows_the_cluster_on_tls_ports() {
    let files = TlsFiles::new();
    let cluster = tokio::task::spawn_blocking(move || {
        let cluster = RedisCluster::start_tls(&files);
        (cluster, files)
    });
    let (cluster, files) = cluster.await.expect("cluster starts");
    let tls = RedisTls {
        root_cert_pem: Some(read(&files.ca_file)),
        client_pem: None,
    };
    let opts = BusOptions {
        partitions: 4,
        ..options()
    };
    let bus =
        Bus::redis_cluster_with_tls(&cluster.tls_urls(), &cluster.unique_prefix(), opts, &tls)
            .await
            .expect("bus");
    // Keys of every partition: slots on all three primaries, reached through redirects.
    for i in 0..40 {
        bus.publish("stock", Event::new(format!("SKU-{i}"), "over tls"))
            .await
            .expect("append over tls");
    }
    // Read back across the partitions (each on its primary).
    let (entries, _) = bus
        .read_after("stock", &bus.start_cursor(), 100)
        .await
        .expect("read over tls");
    let seen = entries.len();
    assert_eq!(seen, 40);

    // Without the CA the cluster's certificates are refused.
    let other = TlsFiles::new();
    let untrusting = RedisTls {
        root_cert_pem: Some(read(&other.ca_file)),
        client_pem: None,
    };
    let refused = match Bus::redis_cluster_with_tls(
        &cluster.tls_urls(),
        &cluster.unique_prefix(),
        options(),
        &untrusting,
    )
    .await
    {
        Ok(bus) => round_trip(&bus).await.is_err(),
        Err(_) => true,
    };
    assert!(
        refused,
        "a cluster certificate from an unknown CA must be refused"
    );
}
