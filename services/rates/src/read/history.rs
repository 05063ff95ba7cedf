//! `GetRate` with `as_of`: the card that was in force at a past instant, the same on every
//! replica and after any restart.
//!
//! The engine keeps every published card version in the backend's durable history
//! (bounded by `rates.history_retention_days` and `rates.history_max_versions`), in the
//! same atomic step as the publication. A replica answers from its own recent versions
//! when they settle the question (see [`ReplicaReader::get_at_cached`]) and otherwise
//! reads the durable history — the one read that may wait on the backend, because a
//! settlement lookup for an order weeks ago is worth it and cannot be answered otherwise.

use chrono::{DateTime, TimeDelta, Utc};
use prost::Message;
use ratemesh_bus::Bus;
use ratemesh_proto::v1;
use ratemesh_runtime::ApiError;

use super::error::ReadError;
use super::point::{ensure_loaded, parse_sku, timestamp_to_utc};
use super::replica::ReplicaReader;

/// How far in the future `as_of` may be (client clock skew); it then reads "now".
const AS_OF_SKEW: TimeDelta = TimeDelta::seconds(5);

/// Reads the durable rate history.
#[derive(Debug, Clone)]
pub struct RateHistory {
    bus: Bus,
    retention: TimeDelta,
}

impl RateHistory {
    /// History in `bus`, kept for `retention`.
    pub fn new(bus: Bus, retention: TimeDelta) -> Self {
        Self { bus, retention }
    }

    /// `GetRate` with `as_of` set.
    pub async fn get_rate_at(
        &self,
        reader: &ReplicaReader,
        request: &v1::GetRateRequest,
        as_of: &prost_types::Timestamp,
    ) -> Result<v1::GetRateResponse, ReadError> {
        ensure_loaded(reader)?;
        let sku = parse_sku("sku", &request.sku)?;
        let as_of = timestamp_to_utc("as_of", as_of)?;
        let now = reader.now();
        if as_of > now + AS_OF_SKEW {
            return Err(ReadError::invalid("as_of", "must not be in the future"));
        }
        let as_of = as_of.min(now);
        let horizon = now - self.retention;
        if as_of < horizon {
            return Err(ReadError::OutOfRange(format!(
                "as_of {} is before the rate history horizon {} (rates are kept for {} days)",
                rfc3339(as_of),
                rfc3339(horizon),
                self.retention.num_days()
            )));
        }
        metrics::counter!("ratemesh_rates_reads_total", "method" => "GetRate").increment(1);
        reader.count_reads(1);
        if let Some(card) = reader.get_at_cached(sku.as_str(), as_of) {
            metrics::counter!("ratemesh_rates_history_reads_total", "from" => "replica")
                .increment(1);
            return Ok(v1::GetRateResponse {
                card: Some((*card).clone()),
            });
        }
        metrics::counter!("ratemesh_rates_history_reads_total", "from" => "backend").increment(1);
        let lookup = self
            .bus
            .history_at(super::STATE_NAMESPACE, sku.as_str(), micros(as_of))
            .await
            .map_err(ApiError::from)?;
        if let Some(entry) = lookup.found {
            let card = v1::RateCard::decode(entry.payload.as_ref()).map_err(|e| {
                ApiError::Internal(format!(
                    "kept version {} of sku {} is corrupt: {e}",
                    entry.version,
                    sku.as_str()
                ))
            })?;
            return Ok(v1::GetRateResponse { card: Some(card) });
        }
        let current = reader.get(sku.as_str());
        match (lookup.oldest, current) {
            (Some((1, first_us)), _) => Err(ReadError::NotFound(format!(
                "sku {} had no rate at {}: its first rate was published at {}",
                sku.as_str(),
                rfc3339(as_of),
                rfc3339(from_micros(first_us))
            ))),
            (Some((_, kept_us)), _) => Err(ReadError::OutOfRange(format!(
                "as_of {} is before the kept rate history of sku {} (kept from {}; at most the \
                 newest versions up to rates.history_max_versions are kept)",
                rfc3339(as_of),
                sku.as_str(),
                rfc3339(from_micros(kept_us))
            ))),
            // Nothing durable: a replica that saw the first card still knows it came later.
            (None, Some(_))
                if reader
                    .first_card_at(sku.as_str())
                    .is_some_and(|t| t > as_of) =>
            {
                Err(ReadError::NotFound(format!(
                    "sku {} had no rate at {}: its first rate was published later",
                    sku.as_str(),
                    rfc3339(as_of)
                )))
            }
            // Published before its versions were kept: nothing older than the current one.
            (None, Some(card)) => Err(ReadError::OutOfRange(format!(
                "as_of {} is before the kept rate history of sku {} (kept from {})",
                rfc3339(as_of),
                sku.as_str(),
                rfc3339(super::replica::computed_at(&card))
            ))),
            (None, None) => Err(ReadError::NotFound(format!(
                "sku {} has no rate (no product data has been received for it)",
                sku.as_str()
            ))),
        }
    }
}

/// Microseconds since the Unix epoch, the history's time scale.
pub fn micros(at: DateTime<Utc>) -> i64 {
    at.timestamp_micros()
}

fn from_micros(us: i64) -> DateTime<Utc> {
    DateTime::from_timestamp_micros(us).unwrap_or(DateTime::UNIX_EPOCH)
}

fn rfc3339(at: DateTime<Utc>) -> String {
    at.to_rfc3339_opts(chrono::SecondsFormat::Millis, true)
}
