//! gRPC `InventoryIngest`: the same validation and hand-off as the webhooks, authenticated
//! by API key (role `erp`) instead of a body signature.

use chrono::Utc;
use ratemesh_proto::v1;
use ratemesh_proto::v1::inventory_ingest_server::InventoryIngest;
use ratemesh_runtime::{ApiError, Principal};
use tonic::{Request, Response, Status};

use crate::handoff::{Answer, Handoff};
use crate::payload::{RawProduct, RawStock};
use crate::validate::{self, Limits};
use crate::webhook::checked_batch_id;

/// The `InventoryIngest` implementation.
#[derive(Debug, Clone)]
pub(crate) struct IngestApi {
    pub(crate) handoff: Handoff,
    pub(crate) limits: Limits,
}

fn rfc3339(t: Option<&prost_types::Timestamp>) -> String {
    t.and_then(ratemesh_contract::time::from_timestamp)
        .map(|t| t.to_rfc3339())
        .unwrap_or_default()
}

fn raw_stock(u: &v1::StockUpdate) -> RawStock {
    RawStock {
        sku: u.sku.clone(),
        location: Some(u.location.clone()),
        on_hand: u.on_hand.clone(),
        reserved: u.reserved.clone(),
        as_of: rfc3339(u.as_of.as_ref()),
        sequence: u.sequence,
        velocity: u.velocity.clone(),
    }
}

fn raw_product(p: &v1::Product) -> RawProduct {
    RawProduct {
        sku: p.sku.clone(),
        category: p.category.clone(),
        price: p.price.clone(),
        unit_cost: p.unit_cost.clone(),
        base_rate: p.base_rate.clone(),
        currency: Some(p.currency.clone()),
        title: p.title.clone(),
        as_of: p.as_of.as_ref().map(|t| rfc3339(Some(t))),
    }
}

fn answer_counts(answer: &Answer) -> (u32, u32, u32) {
    (
        answer.counts.applied,
        answer.counts.duplicate,
        answer.counts.stale,
    )
}

#[tonic::async_trait]
impl InventoryIngest for IngestApi {
    #[tracing::instrument(skip_all, fields(updates = request.get_ref().updates.len()))]
    async fn push_stock(
        &self,
        request: Request<v1::PushStockRequest>,
    ) -> Result<Response<v1::PushStockResponse>, Status> {
        let source = Principal::of(&request)?.name.clone();
        let request = request.into_inner();
        if let Some(message) = validate::too_many(request.updates.len(), &self.limits) {
            return Err(ApiError::TooLarge(message).into());
        }
        let raw: Vec<RawStock> = request.updates.iter().map(raw_stock).collect();
        let now = Utc::now();
        let items = validate::stock(&raw, now, &self.limits).map_err(ApiError::InvalidArgument)?;
        let batch_id = checked_batch_id(Some(request.batch_id))?;
        let answer = self
            .handoff
            .push_stock(&source, batch_id, items, now)
            .await?;
        let (applied, duplicate, stale) = answer_counts(&answer);
        Ok(Response::new(v1::PushStockResponse {
            batch_id: answer.batch_id,
            applied,
            duplicate,
            stale,
            replayed: answer.replayed,
        }))
    }

    #[tracing::instrument(skip_all, fields(products = request.get_ref().products.len()))]
    async fn upsert_products(
        &self,
        request: Request<v1::UpsertProductsRequest>,
    ) -> Result<Response<v1::UpsertProductsResponse>, Status> {
        let source = Principal::of(&request)?.name.clone();
        let request = request.into_inner();
        if let Some(message) = validate::too_many(request.products.len(), &self.limits) {
            return Err(ApiError::TooLarge(message).into());
        }
        let raw: Vec<RawProduct> = request.products.iter().map(raw_product).collect();
        let now = Utc::now();
        let items =
            validate::products(&raw, now, &self.limits).map_err(ApiError::InvalidArgument)?;
        let batch_id = checked_batch_id(Some(request.batch_id))?;
        let answer = self
            .handoff
            .push_products(&source, batch_id, items, now)
            .await?;
        let (applied, duplicate, stale) = answer_counts(&answer);
        Ok(Response::new(v1::UpsertProductsResponse {
            batch_id: answer.batch_id,
            applied,
            duplicate,
            stale,
            replayed: answer.replayed,
        }))
    }
}
