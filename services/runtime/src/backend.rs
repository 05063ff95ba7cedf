//! Chooses and connects the streams and state backend from settings.

use anyhow::Context as _;
use ratemesh_bus::{Bus, BusOptions};

use crate::settings::Settings;

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
    match redis.url() {
        Some(_) if redis.cluster => Bus::redis_cluster(&redis.urls(), &redis.key_prefix, options)
            .await
            .with_context(|| {
                format!(
                    "connecting to the redis cluster at {}",
                    redis.redacted_url()
                )
            }),
        Some(url) => Bus::redis(url, &redis.key_prefix, options)
            .await
            .with_context(|| format!("connecting to redis at {}", redis.redacted_url())),
        None => Bus::memory(options).context("starting the embedded backend"),
    }
}
