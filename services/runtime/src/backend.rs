//! Chooses and connects the streams and state backend from settings.

use anyhow::Context as _;
use ratemesh_bus::{Bus, BusOptions, RedisTls};

use crate::settings::{RedisSettings, Settings};

/// Bus options derived from settings.
pub fn bus_options(settings: &Settings) -> BusOptions {
    let mut options = BusOptions::embedded();
    options.partitions = u32::from(settings.redis.partitions);
    options.lease_ttl = std::time::Duration::from_millis(settings.redis.partition_lease_ms);
    options.batch_size = settings.redis.read_batch;
    options
}

/// The Redis backend when `redis.url` is set, otherwise the embedded in-process one.
pub async fn connect(settings: &Settings) -> anyhow::Result<Bus> {
    let options = bus_options(settings);
    let redis = &settings.redis;
    let tls = redis_tls(&settings.redis)?;
    match (redis.url(), tls) {
        (Some(_), tls) if redis.cluster => {
            let seeds = redis.urls();
            match tls {
                Some(tls) => {
                    Bus::redis_cluster_with_tls(&seeds, &redis.key_prefix, options, &tls).await
                }
                None => Bus::redis_cluster(&seeds, &redis.key_prefix, options).await,
            }
            .with_context(|| {
                format!(
                    "connecting to the redis cluster at {}",
                    redis.redacted_url()
                )
            })
        }
        (Some(url), tls) => match tls {
            Some(tls) => Bus::redis_with_tls(url, &redis.key_prefix, options, &tls).await,
            None => Bus::redis(url, &redis.key_prefix, options).await,
        }
        .with_context(|| format!("connecting to redis at {}", redis.redacted_url())),
        (None, _) => Bus::memory(options).context("starting the embedded backend"),
    }
}

/// The CA and client certificate of `redis.tls_*`, read now; `None` when none is set (a
/// `rediss://` URL then trusts the system's roots).
fn redis_tls(redis: &RedisSettings) -> anyhow::Result<Option<RedisTls>> {
    let read = |key: &str, path: &str| -> anyhow::Result<Option<Vec<u8>>> {
        let path = path.trim();
        if path.is_empty() {
            return Ok(None);
        }
        std::fs::read(path)
            .map(Some)
            .with_context(|| format!("{key}: cannot read {path}"))
    };
    let root_cert_pem = read("redis.tls_ca_file", &redis.tls_ca_file)?;
    let cert = read("redis.tls_client_cert_file", &redis.tls_client_cert_file)?;
    let key = read("redis.tls_client_key_file", &redis.tls_client_key_file)?;
    let client_pem = cert.zip(key);
    Ok(
        (root_cert_pem.is_some() || client_pem.is_some()).then_some(RedisTls {
            root_cert_pem,
            client_pem,
        }),
    )
}
