//! `ExplainRate`: the published card next to the SKU's current inputs. Unlike the other
//! reads it reads the SKU's stored state from the backend, because the inputs (stock per
//! location, velocity, overrides, …) are the engine's internal state, not part of the
//! replica. The card is the last publication, made again whenever its band or reasons
//! change, so it explains the rate as of now; the inputs' numbers are those of the latest
//! recompute. Networks get a [`redact`]ed view.

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

    /// `ExplainRate`; `full` shows every input (merchandisers and admins), otherwise
    /// retailer-private inputs are withheld (networks).
    pub async fn explain(
        &self,
        request: &v1::ExplainRateRequest,
        full: bool,
    ) -> Result<v1::ExplainRateResponse, ReadError> {
        let sku = parse_sku("sku", &request.sku)?;
        let not_found = || ApiError::NotFound {
            what: "sku",
            key: sku.as_str().to_owned(),
        };
        let record = self
            .bus
            .get_state(super::STATE_NAMESPACE, sku.as_str())
            .await
            .map_err(ApiError::from)?
            .ok_or_else(not_found)?;
        let card = match record.fields.get(super::CARD_FIELD) {
            None => None,
            Some(bytes) => Some(prost::Message::decode(bytes.as_ref()).map_err(|e| {
                ApiError::Internal(format!(
                    "stored card of sku {} is corrupt: {e}",
                    sku.as_str()
                ))
            })?),
        };
        let inputs = (self.decode_inputs)(&record).map_err(|e| {
            ApiError::Internal(format!(
                "stored state of sku {} is corrupt: {e}",
                sku.as_str()
            ))
        })?;
        let status = match (&card, &inputs) {
            (Some(_), _) => String::new(),
            (None, Some(inputs)) if inputs.product.is_none() => WAITING_FOR_PRODUCT.to_owned(),
            (None, _) => return Err(not_found().into()),
        };
        let mut response = v1::ExplainRateResponse {
            card,
            inputs,
            redacted: false,
            status,
        };
        if !full {
            redact(&mut response);
        }
        Ok(response)
    }
}

/// What `ExplainRate` says of a SKU with stock but no product data.
pub const WAITING_FOR_PRODUCT: &str = "waiting for product data: stock is known, but no \
    category, price or unit cost yet, so no rate is published";

/// Withholds what is private to the retailer: stock levels, velocity, unit cost, override
/// notes and authors, incentive budgets and spend.
pub fn redact(response: &mut v1::ExplainRateResponse) {
    response.redacted = true;
    let Some(inputs) = response.inputs.as_mut() else {
        return;
    };
    if let Some(product) = inputs.product.as_mut() {
        product.unit_cost.clear();
        product.title = None;
    }
    inputs.available.clear();
    inputs.locations.clear();
    inputs.velocity.clear();
    inputs.velocity_source = v1::VelocitySource::Unspecified as i32;
    for o in &mut inputs.overrides {
        o.reason.clear();
        o.author.clear();
    }
    if let Some(incentive) = inputs.incentive.as_mut() {
        incentive.budget_spend = None;
        incentive.budget_units = None;
        incentive.spent.clear();
        incentive.units_sold.clear();
        incentive.units_over_budget.clear();
        incentive.spend_over_budget.clear();
        incentive.opened_by.clear();
        incentive.reason.clear();
        incentive.ended_by.clear();
        incentive.cancel_reason.clear();
    }
}
