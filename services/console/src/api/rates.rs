//! The rates page (search, sort, pages, live updates) and the SKU page (explanation,
//! history, overrides and incentives touching the SKU).

use std::convert::Infallible;
use std::time::Duration;

use axum::Json;
use axum::extract::{Path, Query, State};
use axum::response::sse::{Event, KeepAlive, Sse};
use futures::{Stream, StreamExt as _};
use http::HeaderMap;
use ratemesh_proto::v1;
use serde::Deserialize;
use serde_json::{Value, json};
use tonic::Code;

use super::non_empty;
use crate::ConsoleState;
use crate::error::GatewayError;
use crate::json;
use crate::session::SignedIn;

/// Cards the rates page searches at most (pages of the full listing it reads).
const MAX_CARDS: usize = 50_000;
/// Earlier versions the history chart walks back at most.
const MAX_HISTORY: usize = 60;

#[derive(Deserialize, Default)]
pub(super) struct RatesQuery {
    /// Part of a SKU, any case.
    q: Option<String>,
    category: Option<String>,
    band: Option<String>,
    /// A reason code the card carries.
    reason: Option<String>,
    /// `sku`, `category`, `band`, `effective_rate`, `version` or `computed_at`.
    sort: Option<String>,
    /// `asc` or `desc`.
    dir: Option<String>,
    page: Option<usize>,
    per_page: Option<usize>,
}

/// `GET /api/rates`: the cards matching the search, sorted, one page of them, and the
/// categories, bands and reasons there are to filter by.
#[tracing::instrument(skip_all)]
pub(super) async fn list(
    State(state): State<ConsoleState>,
    user: SignedIn,
    Query(query): Query<RatesQuery>,
) -> Result<Json<Value>, GatewayError> {
    let mut client = state.gateway.rates(&user)?;
    let mut cards = Vec::new();
    let mut page_token = String::new();
    loop {
        let page = client
            .list_rates(v1::ListRatesRequest {
                page_size: 1000,
                page_token,
                changed_since: String::new(),
                category: None,
            })
            .await?
            .into_inner();
        cards.extend(page.cards);
        page_token = page.next_page_token;
        if page_token.is_empty() || cards.len() >= MAX_CARDS {
            break;
        }
    }
    let facets = |pick: fn(&v1::RateCard) -> Vec<String>| {
        let mut all: Vec<String> = cards
            .iter()
            .flat_map(pick)
            .filter(|v| !v.is_empty())
            .collect();
        all.sort();
        all.dedup();
        all
    };
    let categories = facets(|c| vec![c.category.clone()]);
    let bands = facets(|c| vec![c.band.clone()]);
    let reasons = facets(|c| c.reasons.iter().map(|r| r.code.clone()).collect());

    let q = non_empty(query.q).map(|q| q.to_lowercase());
    let (category, band, reason) = (
        non_empty(query.category),
        non_empty(query.band),
        non_empty(query.reason),
    );
    cards.retain(|c| {
        q.as_ref().is_none_or(|q| c.sku.to_lowercase().contains(q))
            && category.as_ref().is_none_or(|x| &c.category == x)
            && band.as_ref().is_none_or(|x| &c.band == x)
            && reason
                .as_ref()
                .is_none_or(|x| c.reasons.iter().any(|r| &r.code == x))
    });
    let sort = non_empty(query.sort).unwrap_or_else(|| "sku".into());
    match sort.as_str() {
        "category" => cards.sort_by(|a, b| a.category.cmp(&b.category).then(a.sku.cmp(&b.sku))),
        "band" => cards.sort_by(|a, b| a.band.cmp(&b.band).then(a.sku.cmp(&b.sku))),
        "effective_rate" => cards.sort_by(|a, b| {
            decimal_cmp(&a.effective_rate, &b.effective_rate).then(a.sku.cmp(&b.sku))
        }),
        "version" => cards.sort_by_key(|c| c.version),
        "computed_at" => cards.sort_by_key(|c| c.computed_at.map(|t| (t.seconds, t.nanos))),
        "sku" => cards.sort_by(|a, b| a.sku.cmp(&b.sku)),
        other => {
            return Err(GatewayError::bad_request(
                format!(
                    "cannot sort by `{other}` (sku, category, band, effective_rate, version, computed_at)"
                ),
                Some("sort"),
            ));
        }
    }
    if query.dir.as_deref() == Some("desc") {
        cards.reverse();
    }
    let per_page = query.per_page.unwrap_or(50).clamp(1, 500);
    let total = cards.len();
    let pages = total.div_ceil(per_page).max(1);
    let page = query.page.unwrap_or(1).clamp(1, pages);
    let shown: Vec<Value> = cards
        .iter()
        .skip((page - 1) * per_page)
        .take(per_page)
        .map(json::card)
        .collect();
    Ok(Json(json!({
        "cards": shown,
        "total": total,
        "page": page,
        "pages": pages,
        "per_page": per_page,
        "sort": sort,
        "categories": categories,
        "bands": bands,
        "reasons": reasons,
    })))
}

#[derive(Deserialize, Default)]
pub(super) struct StreamQuery {
    /// Only this SKU's changes.
    sku: Option<String>,
}

/// `GET /api/rates/stream`: rate changes as Server-Sent Events (`event: rate`, the card and
/// its previous rate as data, the change-log cursor as id), fed by `WatchRates`. A browser
/// that reconnects sends the last id back and resumes where it left off.
#[tracing::instrument(skip_all)]
pub(super) async fn stream(
    State(state): State<ConsoleState>,
    user: SignedIn,
    headers: HeaderMap,
    Query(query): Query<StreamQuery>,
) -> Result<Sse<impl Stream<Item = Result<Event, Infallible>>>, GatewayError> {
    let cursor = headers
        .get("last-event-id")
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default()
        .to_owned();
    let updates = state
        .gateway
        .rates(&user)?
        .watch_rates(v1::WatchRatesRequest {
            skus: non_empty(query.sku).into_iter().collect(),
            categories: Vec::new(),
            cursor,
        })
        .await?
        .into_inner();
    let stop = state.stop.clone();
    let events = updates
        .take_until(stop.cancelled_owned())
        .filter_map(|update| async move {
            match update {
                Ok(update) => {
                    let card = update.card.as_ref()?;
                    let data =
                        json!({ "card": json::card(card), "previous_rate": update.previous_rate });
                    Some(
                        Event::default()
                            .event("rate")
                            .id(update.cursor)
                            .data(data.to_string()),
                    )
                }
                // Tell the page; the browser reconnects with the last id.
                Err(status) => Some(
                    Event::default()
                        .event("failed")
                        .data(json!({ "error": status.message() }).to_string()),
                ),
            }
        })
        .map(Ok);
    Ok(Sse::new(events).keep_alive(KeepAlive::new().interval(Duration::from_secs(15))))
}

/// `GET /api/skus/{sku}`: why the SKU's rate is what it is, with every override and
/// incentive that touched it.
#[tracing::instrument(skip_all, fields(sku = %sku))]
pub(super) async fn sku(
    State(state): State<ConsoleState>,
    user: SignedIn,
    Path(sku): Path<String>,
) -> Result<Json<Value>, GatewayError> {
    let explanation = state
        .gateway
        .rates(&user)?
        .explain_rate(v1::ExplainRateRequest { sku: sku.clone() })
        .await?
        .into_inner();
    let overrides = state
        .gateway
        .overrides(&user)?
        .list_overrides(v1::ListOverridesRequest {
            sku: Some(sku.clone()),
            include_inactive: true,
            page_size: 100,
            ..Default::default()
        })
        .await?
        .into_inner()
        .overrides;
    let incentives = state
        .gateway
        .incentives(&user)?
        .list_incentives(v1::ListIncentivesRequest {
            sku: Some(sku.clone()),
            page_size: 100,
            ..Default::default()
        })
        .await?
        .into_inner()
        .incentives;
    Ok(Json(json!({
        "sku": sku,
        "explanation": json::explanation(&explanation),
        "overrides": overrides.iter().map(json::override_).collect::<Vec<_>>(),
        "incentives": incentives.iter().map(json::incentive).collect::<Vec<_>>(),
    })))
}

/// `GET /api/skus/{sku}/history`: the SKU's published rates, oldest first, read back
/// version by version with `GetRate.as_of` (up to [`MAX_HISTORY`] versions, as far as the
/// kept history goes).
#[tracing::instrument(skip_all, fields(sku = %sku))]
pub(super) async fn history(
    State(state): State<ConsoleState>,
    user: SignedIn,
    Path(sku): Path<String>,
) -> Result<Json<Value>, GatewayError> {
    let mut client = state.gateway.rates(&user)?;
    let mut points = Vec::new();
    let mut as_of = None;
    while points.len() < MAX_HISTORY {
        let card = match client
            .get_rate(v1::GetRateRequest {
                sku: sku.clone(),
                as_of,
            })
            .await
        {
            Ok(response) => response.into_inner().card,
            // Before the first version, or older than the kept history: the chart starts here.
            Err(status)
                if !points.is_empty()
                    && matches!(status.code(), Code::NotFound | Code::OutOfRange) =>
            {
                None
            }
            Err(status) => return Err(status.into()),
        };
        let Some(card) = card else { break };
        let Some(computed_at) = card.computed_at else {
            break;
        };
        points.push(json!({
            "version": card.version,
            "rate": card.effective_rate,
            "band": card.band,
            "computed_at": json::time(Some(&computed_at)),
        }));
        if card.version <= 1 {
            break;
        }
        // Just before this version was computed: the version before it.
        let mut before = computed_at;
        if before.nanos >= 1_000_000 {
            before.nanos -= 1_000_000;
        } else {
            before.seconds -= 1;
            before.nanos += 999_000_000;
        }
        as_of = Some(before);
    }
    points.reverse();
    Ok(Json(json!({ "sku": sku, "points": points })))
}

/// Orders two non-negative decimal strings by value ("0.05" < "0.125" < "1"), without
/// converting them to floating point.
fn decimal_cmp(a: &str, b: &str) -> std::cmp::Ordering {
    let split = |s: &str| {
        let (int, frac) = s.trim().split_once('.').unwrap_or((s.trim(), ""));
        (
            int.trim_start_matches('0').to_owned(),
            frac.trim_end_matches('0').to_owned(),
        )
    };
    let ((ai, af), (bi, bf)) = (split(a), split(b));
    ai.len()
        .cmp(&bi.len())
        .then_with(|| ai.cmp(&bi))
        .then_with(|| af.cmp(&bf))
}

#[cfg(test)]
mod tests {
    use std::cmp::Ordering::{Equal, Greater, Less};

    use super::decimal_cmp;

    #[test]
    fn decimals_order_by_value() {
        assert_eq!(decimal_cmp("0.05", "0.125"), Less);
        assert_eq!(decimal_cmp("0.1", "0.10"), Equal);
        assert_eq!(decimal_cmp("1", "0.9999"), Greater);
        assert_eq!(decimal_cmp("0", "0.0001"), Less);
        assert_eq!(decimal_cmp("10.5", "9.75"), Greater);
    }
}
