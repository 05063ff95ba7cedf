//! `IncentiveService`: list, trigger and cancel.

use std::sync::Arc;

use chrono::TimeDelta;
use ratemesh_core::{Rate, input};
use ratemesh_proto::v1::incentive_service_server::IncentiveService;
use ratemesh_proto::v1::{
    CancelIncentiveRequest, CancelIncentiveResponse, IncentiveState, ListIncentivesRequest,
    ListIncentivesResponse, TriggerIncentiveRequest, TriggerIncentiveResponse,
};
use ratemesh_runtime::{ApiError, FieldViolation, Principal};
use rust_decimal::Decimal;
use tonic::{Request, Response, Status};

use crate::engine::{Engine, Trigger};

/// Limits of requests that come from settings.
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    /// Largest bonus a merchandiser may give.
    pub max_bonus: Decimal,
    /// Longest window a merchandiser may give.
    pub max_duration: TimeDelta,
}

/// The `IncentiveService` implementation.
#[derive(Debug, Clone)]
pub struct IncentivesApi {
    pub(crate) engine: Arc<Engine>,
    pub(crate) limits: Limits,
}

const DEFAULT_PAGE: usize = 100;
const MAX_PAGE: usize = 1000;
const MAX_REASON: usize = 1024;

fn check_reason(field: &str, reason: &str, violations: &mut Vec<FieldViolation>) {
    let len = reason.trim().chars().count();
    if len == 0 || reason.chars().count() > MAX_REASON {
        violations.push(FieldViolation::new(
            field,
            "must be 1 to 1024 characters (and not only spaces)",
        ));
    } else if let Err(e) = input::text(reason.trim(), MAX_REASON) {
        violations.push(FieldViolation::new(field, e));
    }
}

fn positive_decimal(
    field: &str,
    text: &str,
    violations: &mut Vec<FieldViolation>,
) -> Option<Decimal> {
    match text.trim().parse::<Decimal>() {
        Ok(d) if d > Decimal::ZERO => Some(d),
        Ok(_) => {
            violations.push(FieldViolation::new(field, "must be positive"));
            None
        }
        Err(_) => {
            violations.push(FieldViolation::new(
                field,
                format!("{} is not a decimal number", input::quote(text)),
            ));
            None
        }
    }
}

impl IncentivesApi {
    fn parse_trigger(
        &self,
        req: &TriggerIncentiveRequest,
        author: String,
    ) -> Result<Trigger, ApiError> {
        let mut v = Vec::new();
        let sku = match input::sku(&req.sku) {
            Ok(s) => Some(s),
            Err(e) => {
                v.push(FieldViolation::new("sku", e));
                None
            }
        };
        let bonus = positive_decimal("bonus_rate", &req.bonus_rate, &mut v).and_then(|b| {
            if b > self.limits.max_bonus {
                v.push(FieldViolation::new(
                    "bonus_rate",
                    format!(
                        "must be at most {} (incentives.max_bonus_bps)",
                        self.limits.max_bonus.normalize()
                    ),
                ));
                return None;
            }
            Rate::new(b).ok()
        });
        let duration = match &req.duration {
            None => {
                v.push(FieldViolation::new("duration", "is required"));
                None
            }
            Some(d) => {
                // Out-of-range parts (the protobuf bounds are ±10,000 years) are refused
                // like any other too-long window, never overflowed.
                let d = TimeDelta::try_seconds(d.seconds)
                    .filter(|_| (-999_999_999..=999_999_999).contains(&d.nanos))
                    .map(|s| s + TimeDelta::nanoseconds(i64::from(d.nanos)))
                    .unwrap_or(TimeDelta::MAX);
                if d <= TimeDelta::zero() {
                    v.push(FieldViolation::new("duration", "must be positive"));
                    None
                } else if d > self.limits.max_duration {
                    v.push(FieldViolation::new(
                        "duration",
                        format!(
                            "must be at most {} hours (incentives.max_duration_hours)",
                            self.limits.max_duration.num_hours()
                        ),
                    ));
                    None
                } else {
                    Some(d)
                }
            }
        };
        let budget_spend = req
            .budget_spend
            .as_deref()
            .map(|s| positive_decimal("budget_spend", s, &mut v));
        let budget_units = req
            .budget_units
            .as_deref()
            .map(|s| positive_decimal("budget_units", s, &mut v));
        check_reason("reason", &req.reason, &mut v);
        match (sku, bonus, duration) {
            (Some(sku), Some(bonus), Some(duration)) if v.is_empty() => Ok(Trigger {
                sku,
                bonus,
                duration,
                budget_spend: budget_spend.flatten(),
                budget_units: budget_units.flatten(),
                reason: req.reason.trim().to_owned(),
                author,
            }),
            _ => Err(ApiError::InvalidArgument(v)),
        }
    }
}

#[tonic::async_trait]
impl IncentiveService for IncentivesApi {
    #[tracing::instrument(skip_all, fields(sku = ?request.get_ref().sku))]
    async fn list_incentives(
        &self,
        request: Request<ListIncentivesRequest>,
    ) -> Result<Response<ListIncentivesResponse>, Status> {
        let req = request.into_inner();
        let page_size = match req.page_size as usize {
            0 => DEFAULT_PAGE,
            n if n > MAX_PAGE => {
                return Err(ApiError::invalid("page_size", "must be at most 1000").into());
            }
            n => n,
        };
        // Ids are ULIDs, so ordering by id is ordering by opening time; the token is the
        // last id of the previous page.
        let after = match req.page_token.trim() {
            "" => None,
            t if t.len() == 26 && ulid::Ulid::from_string(t).is_ok() => Some(t.to_owned()),
            _ => {
                return Err(
                    ApiError::invalid("page_token", "is not a token from a previous page").into(),
                );
            }
        };
        if let Some(sku) = req.sku.as_deref() {
            input::sku(sku).map_err(|e| ApiError::invalid("sku", e))?;
        }
        let category = match req.category.as_deref() {
            Some(c) => Some(input::category(c).map_err(|e| ApiError::invalid("category", e))?),
            None => None,
        };
        let state = IncentiveState::try_from(req.state).unwrap_or(IncentiveState::Unspecified);
        let mut all = self
            .engine
            .store
            .all_logged()
            .await
            .map_err(ApiError::from)?;
        all.retain(|i| {
            req.sku.as_deref().is_none_or(|s| i.sku == s)
                && category.as_deref().is_none_or(|c| i.category == c)
                && (state == IncentiveState::Unspecified || i.state == state as i32)
                && after.as_deref().is_none_or(|a| i.id.as_str() < a)
        });
        all.sort_by(|a, b| b.id.cmp(&a.id));
        let more = all.len() > page_size;
        all.truncate(page_size);
        let next_page_token = if more {
            all.last().map(|i| i.id.clone()).unwrap_or_default()
        } else {
            String::new()
        };
        Ok(Response::new(ListIncentivesResponse {
            incentives: all,
            next_page_token,
        }))
    }

    #[tracing::instrument(skip_all, fields(sku = %request.get_ref().sku))]
    async fn trigger_incentive(
        &self,
        request: Request<TriggerIncentiveRequest>,
    ) -> Result<Response<TriggerIncentiveResponse>, Status> {
        let author = Principal::of(&request)?.name.clone();
        let trigger = self.parse_trigger(request.get_ref(), author)?;
        let incentive = self.engine.trigger(trigger).await?;
        Ok(Response::new(TriggerIncentiveResponse {
            incentive: Some(incentive),
        }))
    }

    #[tracing::instrument(skip_all, fields(id = %request.get_ref().id))]
    async fn cancel_incentive(
        &self,
        request: Request<CancelIncentiveRequest>,
    ) -> Result<Response<CancelIncentiveResponse>, Status> {
        let author = Principal::of(&request)?.name.clone();
        let req = request.into_inner();
        let mut v = Vec::new();
        if let Err(e) = input::id(req.id.trim()) {
            v.push(FieldViolation::new("id", e));
        }
        check_reason("reason", &req.reason, &mut v);
        if !v.is_empty() {
            return Err(ApiError::InvalidArgument(v).into());
        }
        let incentive = self
            .engine
            .cancel(req.id.trim(), req.reason.trim(), &author)
            .await?;
        Ok(Response::new(CancelIncentiveResponse {
            incentive: Some(incentive),
        }))
    }
}
