//! `ExplainRate`: the published card next to the SKU's current inputs. Unlike the other
//! reads it reads the SKU's stored state from the backend, because the inputs (stock per
//! location, velocity, overrides, …) are the engine's internal state, not part of the
//! replica. The card is the last publication (rewritten only when the rate, guarantee or
//! category changes); the inputs are those of the latest recompute, so the two may
//! disagree on band and reasons while the rate holds.

use std::sync::Arc;

use ratemesh_bus::{Bus, StateRecord};
use ratemesh_proto::v1;
use ratemesh_runtime::ApiError;

use super::error::ReadError;
use super::point::parse_sku;

/// Decodes the rate inputs from a SKU's stored state (the engine's `engine` field); the
/// engine provides it (see `convert::explain`).
pub type InputsDecoder =
    Arc<dyn Fn(&StateRecord) -> Result<Option<v1::RateInputs>, String> + Send + Sync>;

/// Serves `ExplainRate` from the backend.
#[derive(Clone)]
pub struct Explainer {
    bus: Bus,
    decode_inputs: InputsDecoder,
}

impl std::fmt::Debug for Explainer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Explainer").finish_non_exhaustive()
    }
}

impl Explainer {
    /// An explainer reading `bus` and decoding inputs with `decode_inputs`.
    pub fn new(bus: Bus, decode_inputs: InputsDecoder) -> Self {
        Self { bus, decode_inputs }
    }

    /// `ExplainRate`.
    pub async fn explain(
        &self,
        request: &v1::ExplainRateRequest,
    ) -> Result<v1::ExplainRateResponse, ReadError> {
        let sku = parse_sku("sku", &request.sku)?;
        let not_found = || ApiError::NotFound {
            what: "rate for sku",
            key: sku.as_str().to_owned(),
        };
        let record = self
            .bus
            .get_state(super::STATE_NAMESPACE, sku.as_str())
            .await
            .map_err(ApiError::from)?
            .ok_or_else(not_found)?;
        let card_bytes = record.fields.get(super::CARD_FIELD).ok_or_else(not_found)?;
        let card: v1::RateCard = prost::Message::decode(card_bytes.as_ref()).map_err(|e| {
            ApiError::Internal(format!(
                "stored card of sku {} is corrupt: {e}",
                sku.as_str()
            ))
        })?;
        let inputs = (self.decode_inputs)(&record).map_err(|e| {
            ApiError::Internal(format!(
                "stored state of sku {} is corrupt: {e}",
                sku.as_str()
            ))
        })?;
        Ok(v1::ExplainRateResponse {
            card: Some(card),
            inputs,
        })
    }
}
