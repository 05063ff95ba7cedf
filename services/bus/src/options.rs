//! Tuning knobs shared by both backends.

use std::time::Duration;

use crate::error::BusError;

/// How the bus partitions, redelivers and reads. `Default` suits production; the embedded
/// mode uses one partition.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BusOptions {
    /// Number of partitions `P` per stream. Every process of a deployment must agree on it:
    /// it decides which partition (and Redis Cluster slot) a key lives in.
    pub partitions: u32,
    /// An entry delivered this many times without an ack goes to the dead-letter stream.
    pub max_deliveries: u32,
    /// A pending entry idle this long is taken over by whichever consumer reclaims next;
    /// it is also the retry delay after a [`crate::Consumer::nack`].
    pub reclaim_idle: Duration,
    /// How long a consumer or tail read waits for new entries before returning empty,
    /// so callers can check for shutdown.
    pub read_block: Duration,
    /// Most entries returned by one read, per partition.
    pub batch_size: usize,
    /// How long a consumer's partition leases and group membership last without renewal
    /// (see [`crate::lease`]): a partition whose owner died is taken over within this
    /// plus a quarter of it. Consumers renew between batches, so it must exceed the
    /// longest time a consumer spends handling one batch.
    pub lease_ttl: Duration,
}

impl Default for BusOptions {
    fn default() -> Self {
        BusOptions {
            partitions: 16,
            max_deliveries: 5,
            reclaim_idle: Duration::from_secs(30),
            read_block: Duration::from_secs(1),
            batch_size: 128,
            lease_ttl: Duration::from_secs(10),
        }
    }
}

impl BusOptions {
    /// Defaults for `ratemesh up` without Redis: one partition.
    pub fn embedded() -> Self {
        BusOptions {
            partitions: 1,
            ..BusOptions::default()
        }
    }

    pub(crate) fn validate(&self) -> Result<(), BusError> {
        let bad = |what: &str| Err(BusError::InvalidInput(what.to_owned()));
        if self.partitions == 0 || self.partitions > 4096 {
            return bad("partitions must be between 1 and 4096");
        }
        if self.max_deliveries == 0 {
            return bad("max_deliveries must be at least 1");
        }
        if self.reclaim_idle.is_zero() {
            return bad("reclaim_idle must be positive");
        }
        if self.lease_ttl < Duration::from_millis(20) {
            return bad("lease_ttl must be at least 20 ms");
        }
        if self.batch_size == 0 {
            return bad("batch_size must be at least 1");
        }
        Ok(())
    }
}

/// TLS material for `rediss://` URLs, beyond what the URL says: the CA the server's
/// certificate must chain to (else the system's roots) and a client certificate for a
/// server that requires one. PEM bytes each.
#[derive(Clone, Default, PartialEq, Eq)]
pub struct RedisTls {
    /// PEM CA certificates; `None` trusts the system's roots.
    pub root_cert_pem: Option<Vec<u8>>,
    /// PEM client certificate chain and its PEM private key.
    pub client_pem: Option<(Vec<u8>, Vec<u8>)>,
}

impl std::fmt::Debug for RedisTls {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RedisTls")
            .field("custom_roots", &self.root_cert_pem.is_some())
            .field("client_cert", &self.client_pem.is_some())
            .finish()
    }
}

impl RedisTls {
    pub(crate) fn certificates(&self) -> redis::TlsCertificates {
        redis::TlsCertificates {
            client_tls: self.client_pem.clone().map(|(client_cert, client_key)| {
                redis::ClientTlsConfig {
                    client_cert,
                    client_key,
                }
            }),
            root_cert: self.root_cert_pem.clone(),
        }
    }
}
