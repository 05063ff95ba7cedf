//! `PartnerService`: partners, their secrets and their deliveries.
//!
//! Access: the auth layer lets `admin` call everything and a `partner` key call
//! `GetPartner`, `ListDeliveries` and `RotateSecret`; here a partner key is narrowed to its
//! own partner id (anything else is PERMISSION_DENIED).

use ratemesh_contract::time::from_millis;
use std::sync::Arc;
use std::time::Duration;

use base64::Engine as _;
use ratemesh_bus::{Bus, BusError};
use ratemesh_core::input;
use ratemesh_proto::v1;
use ratemesh_proto::v1::partner_service_server::PartnerService;
use ratemesh_runtime::{ApiError, FieldViolation, Principal, Role};
use rust_decimal::Decimal;
use tonic::{Request, Response, Status};

use crate::config::Config;
use crate::model::{
    ATTEMPTS, DeliveryRecord, EVENT_TYPES, Filters, PartnerRecord, Status as DeliveryStatus,
};
use crate::store::{Deliveries, IndexWalk, Partners, now_ms, time_of};

/// Longest rotation overlap.
const MAX_OVERLAP: Duration = Duration::from_secs(7 * 24 * 3600);
/// Overlap when the request gives none.
const DEFAULT_OVERLAP: Duration = Duration::from_secs(24 * 3600);
/// Most items per page.
const MAX_PAGE: u32 = 1_000;
const DEFAULT_PAGE: u32 = 100;
/// How many deliveries a listing or a redelivery reads or requeues in one round trip.
const DELIVERIES_PER_ROUND_TRIP: usize = 500;

#[derive(Debug, Clone)]
pub(crate) struct PartnersApi {
    pub(crate) bus: Bus,
    pub(crate) config: Arc<Config>,
    pub(crate) partners: Partners,
    pub(crate) deliveries: Deliveries,
}

/// A new signing secret: 32 random bytes, base64url.
fn new_secret() -> String {
    let mut bytes = [0u8; 32];
    rand::fill(&mut bytes);
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(bytes)
}

/// Admin may act on any partner; a partner key only on its own.
fn authorize(principal: &Principal, partner_id: &str) -> Result<(), ApiError> {
    match principal.role {
        Role::Admin => Ok(()),
        Role::Partner if principal.partner_id.as_deref() == Some(partner_id) => Ok(()),
        _ => Err(ApiError::PermissionDenied(format!(
            "key `{}` may not act on partner `{partner_id}`",
            principal.name
        ))),
    }
}

/// Reading a partner and its deliveries, and requeueing its dead letters: what a partner
/// may do for itself, merchandisers may do for every partner (the role table decides
/// which of these a role reaches at all).
fn authorize_read(principal: &Principal, partner_id: &str) -> Result<(), ApiError> {
    match principal.role {
        Role::Merchandiser => Ok(()),
        _ => authorize(principal, partner_id),
    }
}

fn valid_partner_id(id: &str) -> bool {
    !id.is_empty()
        && id.len() <= 64
        && id
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
}

fn page_size(requested: u32, field: &str) -> Result<usize, ApiError> {
    match requested {
        0 => Ok(DEFAULT_PAGE as usize),
        n if n <= MAX_PAGE => Ok(n as usize),
        _ => Err(ApiError::invalid(field, "must be at most 1000")),
    }
}

fn required_id(id: &str, field: &str) -> Result<(), ApiError> {
    if valid_partner_id(id) {
        Ok(())
    } else {
        Err(ApiError::invalid(
            field,
            "must be 1 to 64 characters of [a-z0-9-]",
        ))
    }
}

fn to_proto(p: &PartnerRecord) -> v1::Partner {
    v1::Partner {
        id: p.id.clone(),
        name: p.name.clone(),
        endpoint_url: p.endpoint_url.clone(),
        filters: Some(v1::PartnerFilter {
            skus: p.filters.skus.clone(),
            categories: p.filters.categories.clone(),
            event_types: p.filters.event_types.clone(),
            min_change: p
                .filters
                .min_change
                .map(|d| d.to_string())
                .unwrap_or_default(),
        }),
        enabled: p.enabled,
        created_at: Some(from_millis(p.created_at_ms)),
        updated_at: Some(from_millis(p.updated_at_ms)),
    }
}

fn delivery_to_proto(d: &crate::model::DeliveryRecord) -> v1::Delivery {
    let status = match d.status {
        DeliveryStatus::Pending => v1::DeliveryStatus::Pending,
        DeliveryStatus::Delivered => v1::DeliveryStatus::Delivered,
        DeliveryStatus::Retrying => v1::DeliveryStatus::Retrying,
        DeliveryStatus::Dead => v1::DeliveryStatus::Dead,
    };
    v1::Delivery {
        id: d.id.clone(),
        partner_id: d.partner_id.clone(),
        event_id: d.event_id.clone(),
        event_type: d.event_type.clone(),
        status: status as i32,
        attempts: d.attempts,
        last_error: d.last_error.clone(),
        last_response_code: u32::from(d.last_response_code),
        next_attempt_at: d
            .next_attempt_at_ms
            .filter(|_| d.status.is_open())
            .map(from_millis),
        created_at: Some(from_millis(d.created_at_ms)),
        delivered_at: d.delivered_at_ms.map(from_millis),
        skus: d.skus.clone(),
    }
}

/// Checks the fields a caller may set; returns the filters parsed.
async fn validate(config: &Config, partner: &v1::Partner) -> Result<Filters, ApiError> {
    let mut violations = Vec::new();
    if !partner.id.is_empty() && !valid_partner_id(&partner.id) {
        violations.push(FieldViolation::new(
            "partner.id",
            "must be 1 to 64 characters of [a-z0-9-]",
        ));
    }
    let name_len = partner.name.trim().chars().count();
    if name_len == 0 || partner.name.chars().count() > 256 {
        violations.push(FieldViolation::new(
            "partner.name",
            "must be 1 to 256 characters",
        ));
    }
    if partner.endpoint_url.len() > 2048 {
        violations.push(FieldViolation::new(
            "partner.endpoint_url",
            "must be at most 2048 characters",
        ));
    } else if let Err(e) = config.destinations.check(&partner.endpoint_url).await {
        violations.push(FieldViolation::new("partner.endpoint_url", e.to_string()));
    }
    let f = partner.filters.clone().unwrap_or_default();
    if f.skus.len() > 10_000 {
        violations.push(FieldViolation::new(
            "partner.filters.skus",
            "must hold at most 10000 SKUs",
        ));
    }
    for (i, sku) in f.skus.iter().enumerate().take(10_000) {
        if let Err(e) = input::sku(sku) {
            violations.push(FieldViolation::new(format!("partner.filters.skus[{i}]"), e));
        }
    }
    if f.categories.len() > 1_000 {
        violations.push(FieldViolation::new(
            "partner.filters.categories",
            "must hold at most 1000 categories",
        ));
    }
    // Categories are compared with the cards' (stored in lower case), so kept that way.
    let mut categories = Vec::with_capacity(f.categories.len().min(1_000));
    for (i, category) in f.categories.iter().enumerate().take(1_000) {
        match input::category(category) {
            Ok(c) => categories.push(c),
            Err(e) => violations.push(FieldViolation::new(
                format!("partner.filters.categories[{i}]"),
                e,
            )),
        }
    }
    for (i, t) in f.event_types.iter().enumerate() {
        if !EVENT_TYPES.contains(&t.as_str()) {
            violations.push(FieldViolation::new(
                format!("partner.filters.event_types[{i}]"),
                "must be rate.changed or incentive.changed",
            ));
        }
    }
    let min_change = match f.min_change.trim() {
        "" => None,
        text => match text.parse::<Decimal>() {
            Ok(d) if d >= Decimal::ZERO && d <= Decimal::ONE => Some(d),
            _ => {
                violations.push(FieldViolation::new(
                    "partner.filters.min_change",
                    "must be a decimal fraction between 0 and 1",
                ));
                None
            }
        },
    };
    if !violations.is_empty() {
        return Err(ApiError::InvalidArgument(violations));
    }
    let dedup = |mut v: Vec<String>| {
        v.sort();
        v.dedup();
        v
    };
    Ok(Filters {
        skus: dedup(f.skus),
        categories: dedup(categories),
        event_types: dedup(f.event_types),
        min_change,
    })
}

impl PartnersApi {
    async fn existing(&self, id: &str) -> Result<(u64, PartnerRecord), ApiError> {
        self.partners
            .get(id)
            .await?
            .ok_or_else(|| ApiError::NotFound {
                what: "partner",
                key: id.to_owned(),
            })
    }

    async fn upsert(
        &self,
        principal: &Principal,
        request: v1::UpsertPartnerRequest,
    ) -> Result<v1::UpsertPartnerResponse, ApiError> {
        let partner = request
            .partner
            .ok_or_else(|| ApiError::invalid("partner", "is required"))?;
        let id = if partner.id.is_empty() {
            format!(
                "p-{}",
                ulid::Ulid::generate().to_string().to_ascii_lowercase()
            )
        } else {
            partner.id.clone()
        };
        // Who may act on the record comes first: the URL check below resolves names, and a
        // caller who may not touch this partner must learn nothing from it.
        if principal.role != Role::Admin {
            required_id(&id, "partner.id")?;
            authorize(principal, &id)?;
            if self.partners.get(&id).await?.is_none() {
                return Err(ApiError::PermissionDenied(
                    "only admin may create partners".into(),
                ));
            }
        }
        let filters = validate(&self.config, &partner).await?;
        // Compare-and-set, so two concurrent upserts cannot lose a secret rotation.
        let (record, secret) = self
            .partners
            .update(&id, |current| {
                let now = now_ms();
                if principal.role != Role::Admin {
                    // Partners may edit their own record but neither create one nor switch
                    // deliveries on or off.
                    match &current {
                        None => {
                            return Err(ApiError::PermissionDenied(
                                "only admin may create partners".into(),
                            ));
                        }
                        Some(p) if p.enabled != partner.enabled => {
                            return Err(ApiError::PermissionDenied(
                                "only admin may change `enabled`".into(),
                            ));
                        }
                        _ => {}
                    }
                }
                let (record, secret) = match current {
                    Some(existing) => (
                        PartnerRecord {
                            name: partner.name.trim().to_owned(),
                            endpoint_url: partner.endpoint_url.trim().to_owned(),
                            filters: filters.clone(),
                            enabled: partner.enabled,
                            updated_at_ms: now,
                            ..existing
                        },
                        None,
                    ),
                    None => {
                        let secret = new_secret();
                        (
                            PartnerRecord {
                                id: id.clone(),
                                name: partner.name.trim().to_owned(),
                                endpoint_url: partner.endpoint_url.trim().to_owned(),
                                filters: filters.clone(),
                                enabled: partner.enabled,
                                created_at_ms: now,
                                updated_at_ms: now,
                                secret: secret.clone(),
                                previous_secret: None,
                                previous_valid_until_ms: 0,
                            },
                            Some(secret),
                        )
                    }
                };
                Ok((Some(record.clone()), (record, secret)))
            })
            .await?;
        tracing::info!(partner = %id, created = secret.is_some(), "partner saved");
        Ok(v1::UpsertPartnerResponse {
            partner: Some(to_proto(&record)),
            created: secret.is_some(),
            signing_secret: secret.unwrap_or_default(),
        })
    }

    async fn rotate(
        &self,
        principal: &Principal,
        request: v1::RotateSecretRequest,
    ) -> Result<v1::RotateSecretResponse, ApiError> {
        required_id(&request.id, "id")?;
        authorize(principal, &request.id)?;
        let overlap = match request.overlap {
            None => DEFAULT_OVERLAP,
            Some(d) => {
                if d.seconds < 0 || d.nanos < 0 {
                    return Err(ApiError::invalid("overlap", "must not be negative"));
                }
                let overlap = Duration::new(d.seconds as u64, d.nanos as u32);
                if overlap > MAX_OVERLAP {
                    return Err(ApiError::invalid("overlap", "must be at most 7 days"));
                }
                overlap
            }
        };
        let (record, secret, until) = self
            .partners
            .update(&request.id, |current| {
                let mut record = current.ok_or_else(|| ApiError::NotFound {
                    what: "partner",
                    key: request.id.clone(),
                })?;
                let now = now_ms();
                let secret = new_secret();
                let until = now + overlap.as_millis() as i64;
                record.previous_secret =
                    Some(std::mem::replace(&mut record.secret, secret.clone()));
                record.previous_valid_until_ms = until;
                record.updated_at_ms = now;
                Ok::<_, ApiError>((Some(record.clone()), (record, secret, until)))
            })
            .await?;
        tracing::info!(partner = %record.id, overlap_ms = overlap.as_millis() as u64, "signing secret rotated");
        Ok(v1::RotateSecretResponse {
            signing_secret: secret,
            previous_valid_until: Some(from_millis(until)),
        })
    }

    async fn list_deliveries(
        &self,
        principal: &Principal,
        request: v1::ListDeliveriesRequest,
    ) -> Result<v1::ListDeliveriesResponse, ApiError> {
        required_id(&request.partner_id, "partner_id")?;
        authorize_read(principal, &request.partner_id)?;
        let limit = page_size(request.page_size, "page_size")?;
        let wanted = match v1::DeliveryStatus::try_from(request.status) {
            Ok(v1::DeliveryStatus::Unspecified) => None,
            Ok(v1::DeliveryStatus::Pending) => Some(DeliveryStatus::Pending),
            Ok(v1::DeliveryStatus::Delivered) => Some(DeliveryStatus::Delivered),
            Ok(v1::DeliveryStatus::Retrying) => Some(DeliveryStatus::Retrying),
            Ok(v1::DeliveryStatus::Dead) => Some(DeliveryStatus::Dead),
            Err(_) => return Err(ApiError::invalid("status", "unknown delivery status")),
        };
        if !request.page_token.is_empty() && ulid::Ulid::from_string(&request.page_token).is_err() {
            return Err(ApiError::invalid(
                "page_token",
                "is not a token from a previous page",
            ));
        }
        self.existing(&request.partner_id).await?;
        let before = (!request.page_token.is_empty()).then_some(request.page_token.as_str());
        // Dead ones alone are read from the partner's dead deliveries; the others from its
        // index, newest hours first, until the page is full.
        let mut listing = match wanted {
            Some(DeliveryStatus::Dead) => {
                let dead = self.deliveries.dead_ids(&request.partner_id).await?;
                let dead = (dead.into_iter())
                    .filter(|id| before.is_none_or(|b| id.as_str() < b))
                    .map(|id| (id, DeliveryStatus::Dead))
                    .collect();
                Listing::Dead(Some(dead))
            }
            _ => Listing::Index(self.deliveries.walk(&request.partner_id, before).await?),
        };
        let mut out = Vec::new();
        let mut next_page_token = String::new();
        'pages: while let Some(entries) = listing.next().await? {
            let candidates: Vec<String> = (entries.into_iter())
                .filter(|(_, status)| wanted.is_none_or(|w| w == *status))
                .map(|(id, _)| id)
                .collect();
            // Newest first, as many read together as the page still has room for.
            let mut rest = candidates.as_slice();
            while !rest.is_empty() {
                if out.len() == limit {
                    next_page_token = out
                        .last()
                        .map(|d: &v1::Delivery| d.id.clone())
                        .unwrap_or_default();
                    break 'pages;
                }
                let room = (limit - out.len()).min(DELIVERIES_PER_ROUND_TRIP);
                let (batch, after) = rest.split_at(room.min(rest.len()));
                rest = after;
                // The record has the last word: an index written just before a change of
                // it may name an old status.
                for delivery in self.deliveries.get_many(batch).await?.into_iter().flatten() {
                    if wanted.is_none_or(|w| w == delivery.status) {
                        out.push(delivery_to_proto(&delivery));
                    }
                }
            }
        }
        Ok(v1::ListDeliveriesResponse {
            deliveries: out,
            next_page_token,
        })
    }

    async fn redeliver(
        &self,
        principal: &Principal,
        request: v1::RedeliverDeadLettersRequest,
    ) -> Result<v1::RedeliverDeadLettersResponse, ApiError> {
        required_id(&request.partner_id, "partner_id")?;
        authorize_read(principal, &request.partner_id)?;
        if request.delivery_ids.len() > 1_000 {
            return Err(ApiError::invalid(
                "delivery_ids",
                "must hold at most 1000 ids",
            ));
        }
        self.existing(&request.partner_id).await?;
        let partner = request.partner_id.as_str();
        let is_dead =
            |d: &DeliveryRecord| d.partner_id == partner && d.status == DeliveryStatus::Dead;
        let requeued = if request.delivery_ids.is_empty() {
            // Every dead one, a batch at a time, so memory holds one batch however many
            // there are. Nothing to check: an id whose record is no longer dead (a requeue
            // cut short between its writes) is not one to requeue, and is no longer listed.
            let ids = self.deliveries.dead_ids(partner).await?;
            let mut requeued = 0;
            for chunk in ids.chunks(DELIVERIES_PER_ROUND_TRIP) {
                let records = self.deliveries.get_many(chunk).await?;
                let (mut dead, mut stale) = (Vec::new(), Vec::new());
                for (id, record) in chunk.iter().zip(records) {
                    match record {
                        Some(d) if is_dead(&d) => dead.push(d),
                        _ => stale.push(id.clone()),
                    }
                }
                self.deliveries.forget_dead(partner, stale).await?;
                requeued += self.requeue(partner, dead).await?;
            }
            requeued
        } else {
            // Check everything first: nothing is requeued unless every listed one can be.
            let ids = &request.delivery_ids;
            let records = self.deliveries.get_many(ids).await?;
            let mut dead = Vec::with_capacity(ids.len());
            let mut conflicts = Vec::new();
            for (id, record) in ids.iter().zip(records) {
                match record {
                    Some(d) if is_dead(&d) => dead.push(d),
                    Some(d) if d.partner_id == partner => {
                        conflicts.push(ratemesh_runtime::error::Conflict {
                            kind: "NOT_DEAD".into(),
                            subject: id.clone(),
                            description: format!("delivery is {}, not dead", d.status.as_str()),
                        })
                    }
                    _ => conflicts.push(ratemesh_runtime::error::Conflict {
                        kind: "UNKNOWN_DELIVERY".into(),
                        subject: id.clone(),
                        description: "no dead delivery with this id for this partner".into(),
                    }),
                }
            }
            if !conflicts.is_empty() {
                return Err(ApiError::FailedPrecondition {
                    message: format!(
                        "{} of the listed deliveries cannot be redelivered; nothing was requeued",
                        conflicts.len()
                    ),
                    conflicts,
                });
            }
            self.requeue(partner, dead).await?
        };
        tracing::info!(partner, requeued, "dead deliveries requeued");
        Ok(v1::RedeliverDeadLettersResponse {
            requeued: requeued as u32,
        })
    }

    /// Starts a fresh round of attempts for dead deliveries of `partner`, due now; how
    /// many.
    async fn requeue(
        &self,
        partner: &str,
        mut dead: Vec<DeliveryRecord>,
    ) -> Result<usize, ApiError> {
        let now = now_ms();
        for delivery in &mut dead {
            delivery.status = DeliveryStatus::Pending;
            delivery.attempts = 0;
            // A fresh round: the last round's failure is history, not this round's state.
            delivery.last_error.clear();
            delivery.last_response_code = 0;
            delivery.round_started_at_ms = now;
            delivery.next_attempt_at_ms = Some(now);
        }
        for chunk in dead.chunks(DELIVERIES_PER_ROUND_TRIP) {
            self.deliveries.requeue(partner, chunk).await?;
            let timers: Vec<_> = (chunk.iter())
                .map(|d| (d.timer_member(), time_of(now)))
                .collect();
            self.bus.schedule_many(ATTEMPTS, &timers).await?;
        }
        Ok(dead.len())
    }
}

/// Where a listing of deliveries reads them from.
enum Listing {
    /// The partner's dead deliveries, all at once.
    Dead(Option<Vec<(String, DeliveryStatus)>>),
    /// The partner's index, an hour or a few at a time.
    Index(IndexWalk),
}

impl Listing {
    async fn next(&mut self) -> Result<Option<Vec<(String, DeliveryStatus)>>, BusError> {
        match self {
            Listing::Dead(dead) => Ok(dead.take()),
            Listing::Index(walk) => walk.next().await,
        }
    }
}

#[tonic::async_trait]
impl PartnerService for PartnersApi {
    #[tracing::instrument(skip_all, fields(partner = ?request.get_ref().partner.as_ref().map(|p| &p.id)))]
    async fn upsert_partner(
        &self,
        request: Request<v1::UpsertPartnerRequest>,
    ) -> Result<Response<v1::UpsertPartnerResponse>, Status> {
        let principal = Principal::of(&request)?.clone();
        Ok(Response::new(
            self.upsert(&principal, request.into_inner()).await?,
        ))
    }

    #[tracing::instrument(skip_all, fields(partner = %request.get_ref().id))]
    async fn get_partner(
        &self,
        request: Request<v1::GetPartnerRequest>,
    ) -> Result<Response<v1::GetPartnerResponse>, Status> {
        let principal = Principal::of(&request)?;
        let id = &request.get_ref().id;
        required_id(id, "id")?;
        authorize_read(principal, id)?;
        let (_, partner) = self.existing(id).await?;
        Ok(Response::new(v1::GetPartnerResponse {
            partner: Some(to_proto(&partner)),
        }))
    }

    #[tracing::instrument(skip_all)]
    async fn list_partners(
        &self,
        request: Request<v1::ListPartnersRequest>,
    ) -> Result<Response<v1::ListPartnersResponse>, Status> {
        let principal = Principal::of(&request)?;
        if !matches!(principal.role, Role::Admin | Role::Merchandiser) {
            return Err(ApiError::PermissionDenied(
                "only merchandisers and admin may list partners".into(),
            )
            .into());
        }
        let request = request.get_ref();
        let limit = page_size(request.page_size, "page_size")?;
        if !request.page_token.is_empty() && !valid_partner_id(&request.page_token) {
            return Err(
                ApiError::invalid("page_token", "is not a token from a previous page").into(),
            );
        }
        let all = self.partners.load_all().await.map_err(ApiError::from)?;
        let mut page: Vec<v1::Partner> = all
            .iter()
            .filter(|p| request.page_token.is_empty() || p.id > request.page_token)
            .take(limit + 1)
            .map(to_proto)
            .collect();
        let next_page_token = if page.len() > limit {
            page.truncate(limit);
            page.last().map(|p| p.id.clone()).unwrap_or_default()
        } else {
            String::new()
        };
        Ok(Response::new(v1::ListPartnersResponse {
            partners: page,
            next_page_token,
        }))
    }

    #[tracing::instrument(skip_all, fields(partner = %request.get_ref().id))]
    async fn rotate_secret(
        &self,
        request: Request<v1::RotateSecretRequest>,
    ) -> Result<Response<v1::RotateSecretResponse>, Status> {
        let principal = Principal::of(&request)?.clone();
        Ok(Response::new(
            self.rotate(&principal, request.into_inner()).await?,
        ))
    }

    #[tracing::instrument(skip_all, fields(partner = %request.get_ref().partner_id))]
    async fn list_deliveries(
        &self,
        request: Request<v1::ListDeliveriesRequest>,
    ) -> Result<Response<v1::ListDeliveriesResponse>, Status> {
        let principal = Principal::of(&request)?.clone();
        Ok(Response::new(
            PartnersApi::list_deliveries(self, &principal, request.into_inner()).await?,
        ))
    }

    #[tracing::instrument(skip_all, fields(partner = %request.get_ref().partner_id))]
    async fn redeliver_dead_letters(
        &self,
        request: Request<v1::RedeliverDeadLettersRequest>,
    ) -> Result<Response<v1::RedeliverDeadLettersResponse>, Status> {
        let principal = Principal::of(&request)?.clone();
        Ok(Response::new(
            self.redeliver(&principal, request.into_inner()).await?,
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::tests::{T0, delivery};
    use ratemesh_bus::BusOptions;
    use ratemesh_runtime::settings::Section;
    use std::time::SystemTime;

    #[tokio::test]
    async fn every_dead_delivery_is_requeued_however_many_batches_they_take() {
        let bus = Bus::memory(BusOptions::embedded()).expect("bus");
        let settings = crate::NotifierSettings::defaults();
        let api = PartnersApi {
            bus: bus.clone(),
            config: Arc::new(Config::from_settings(&settings)),
            partners: Partners::new(bus.clone(), Duration::ZERO),
            deliveries: Deliveries::new(bus.clone()),
        };
        let partner = PartnerRecord {
            id: "acme".into(),
            name: "Acme".into(),
            endpoint_url: "https://acme.example/hook".into(),
            filters: Filters::default(),
            enabled: true,
            created_at_ms: T0,
            updated_at_ms: T0,
            secret: new_secret(),
            previous_secret: None,
            previous_valid_until_ms: 0,
        };
        (api.partners)
            .update("acme", |_| Ok::<_, BusError>((Some(partner.clone()), ())))
            .await
            .expect("partner");
        let count = 2 * DELIVERIES_PER_ROUND_TRIP as u32 + 1;
        for n in 0..count {
            let dead = delivery("acme", T0 + i64::from(n), n, DeliveryStatus::Dead);
            api.deliveries.create(&dead).await.expect("create");
        }
        let admin = Principal {
            name: "ops".into(),
            role: Role::Admin,
            partner_id: None,
        };
        let every_dead = v1::RedeliverDeadLettersRequest {
            partner_id: "acme".into(),
            delivery_ids: vec![],
        };
        let answer = api
            .redeliver(&admin, every_dead.clone())
            .await
            .expect("redeliver");
        assert_eq!(answer.requeued, count);
        assert_eq!(api.deliveries.dead_count("acme").await.expect("dead"), 0);
        let open = api.deliveries.open_ids("acme").await.expect("open");
        assert_eq!(open.len(), count as usize);
        let requeued = api.deliveries.get_many(&open).await.expect("read");
        assert!(
            requeued
                .iter()
                .flatten()
                .all(|d| d.status == DeliveryStatus::Pending
                    && d.attempts == 0
                    && d.next_attempt_at_ms.is_some())
        );
        let due = bus
            .claim_due(ATTEMPTS, SystemTime::now() + Duration::from_secs(1), 10_000)
            .await
            .expect("due");
        assert_eq!(due.len(), count as usize, "an attempt due for each");
        let again = api.redeliver(&admin, every_dead).await.expect("redeliver");
        assert_eq!(again.requeued, 0, "none dead any more");
    }
}
