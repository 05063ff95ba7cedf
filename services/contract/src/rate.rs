//! What rates publishes: the `RateChanged` entries of the `rates` stream, and the `rate`
//! state record whose `card` field other services and the read path may read. The
//! record's `engine` field is rates' own; nothing else reads it.

use chrono::{DateTime, Utc};
use prost::Message;
use ratemesh_bus::{Bus, BusError, StateRecord};
use ratemesh_proto::v1;

use crate::DecodeError;
use crate::header::meta;
use crate::kinds::RATE_CHANGED;

/// State namespace of the per-SKU rate records (written only by rates).
pub const NAMESPACE: &str = "rate";
/// Field of a `rate` record holding the published `ratemesh.v1.RateCard` (protobuf);
/// absent until the SKU has product data and so a rate.
pub const FIELD_CARD: &str = "card";
/// Field of a `rate` record holding rates' own engine state (private to rates).
pub const FIELD_ENGINE: &str = "engine";

/// The `rates` stream entry publishing `card` (computed at `computed_at`), keyed by its
/// SKU; it carries the card's `previous_rate`.
pub fn rate_changed(card: v1::RateCard, computed_at: DateTime<Utc>) -> ratemesh_bus::Event {
    let key = card.sku.clone();
    let message = v1::RateChanged {
        meta: Some(meta(computed_at)),
        previous_rate: card.previous_rate.clone(),
        card: Some(card),
    };
    ratemesh_bus::Event::new(key, message.encode_to_vec()).with_kind(RATE_CHANGED)
}

/// A `RateChanged` payload.
pub fn decode_rate_changed(payload: &[u8]) -> Result<v1::RateChanged, DecodeError> {
    v1::RateChanged::decode(payload)
        .map_err(|e| DecodeError(format!("RateChanged does not decode: {e}")))
}

/// Why a published card could not be read.
#[derive(Debug, thiserror::Error)]
pub enum CardReadError {
    /// The backend failed; retry later.
    #[error(transparent)]
    Bus(#[from] BusError),
    /// The stored card is corrupt.
    #[error("stored card of sku {sku}: {problem}")]
    Corrupt {
        /// The SKU.
        sku: String,
        /// What is wrong.
        problem: DecodeError,
    },
}

/// The published card in a `rate` record, if it has one.
pub fn card_of(sku: &str, record: &StateRecord) -> Result<Option<v1::RateCard>, CardReadError> {
    record
        .fields
        .get(FIELD_CARD)
        .map(|bytes| {
            v1::RateCard::decode(bytes.as_ref()).map_err(|e| CardReadError::Corrupt {
                sku: sku.to_owned(),
                problem: DecodeError(e.to_string()),
            })
        })
        .transpose()
}

/// The card rates last published for `sku`, read from the backend (`None` while the SKU
/// has no rate).
pub async fn published_card(bus: &Bus, sku: &str) -> Result<Option<v1::RateCard>, CardReadError> {
    match bus.get_state(NAMESPACE, sku).await? {
        None => Ok(None),
        Some(record) => card_of(sku, &record),
    }
}

#[cfg(test)]
mod tests {
    use ratemesh_bus::{BusOptions, StateWrite};

    use super::*;

    #[tokio::test]
    async fn a_published_card_reads_back_and_a_corrupt_one_is_named() {
        let bus = Bus::memory(BusOptions::default()).unwrap();
        assert!(published_card(&bus, "SKU-1").await.unwrap().is_none());
        let card = v1::RateCard {
            sku: "SKU-1".into(),
            effective_rate: "0.05".into(),
            version: 3,
            ..Default::default()
        };
        bus.write_state(StateWrite::new(NAMESPACE, "SKU-1").set(FIELD_CARD, card.encode_to_vec()))
            .await
            .unwrap();
        assert_eq!(
            published_card(&bus, "SKU-1").await.unwrap(),
            Some(card.clone())
        );
        let entry = rate_changed(card.clone(), Utc::now());
        assert_eq!(entry.kind.as_deref(), Some(RATE_CHANGED));
        assert_eq!(
            decode_rate_changed(&entry.payload).unwrap().card,
            Some(card)
        );

        bus.write_state(StateWrite::new(NAMESPACE, "SKU-2").set(FIELD_CARD, b"\xff\xff".to_vec()))
            .await
            .unwrap();
        let err = published_card(&bus, "SKU-2").await.unwrap_err();
        assert!(
            err.to_string().starts_with("stored card of sku SKU-2"),
            "{err}"
        );
    }
}
