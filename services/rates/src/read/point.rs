//! `GetRate`, `BatchGetRates` and `ListRates`: answered from the replica alone.
//!
//! These functions take a [`ReplicaReader`] and nothing else, so they cannot reach the
//! backend: a read never waits on Redis, and keeps answering while Redis is down. They
//! answer with the encoded response, assembled from the replica's pre-encoded cards
//! ([`super::wire`]).

use chrono::{DateTime, Utc};
use ratemesh_core::Sku;
use ratemesh_proto::v1;
use ratemesh_runtime::ApiError;

use super::error::ReadError;
use super::page_token::{PageToken, fingerprint};
use super::replica::{ListQuery, ReplicaReader};
use super::wire;

/// Most SKUs in one `BatchGetRates`.
pub const MAX_BATCH: usize = 1_000;
/// Most cards per `ListRates` page, and the default.
pub const MAX_PAGE: u32 = 1_000;
/// Page size when the request says 0.
pub const DEFAULT_PAGE: u32 = 500;
/// Most SKUs one `ListRates` page examines, so a sparse `changed_since` or category
/// cannot make one call scan the whole table; the page comes back short with a token.
pub const SCAN_BUDGET: usize = 20_000;

/// Fails with UNAVAILABLE until the replica has loaded.
pub fn ensure_loaded(reader: &ReplicaReader) -> Result<(), ReadError> {
    if reader.is_loaded() {
        Ok(())
    } else {
        Err(ApiError::unavailable("the rate replica is still loading; retry shortly").into())
    }
}

fn count(method: &'static str, n: u64) {
    // Resolved once per method: the read path runs this on every call.
    static HANDLES: std::sync::OnceLock<[(&'static str, metrics::Counter); 3]> =
        std::sync::OnceLock::new();
    let handles = HANDLES.get_or_init(|| {
        ["GetRate", "BatchGetRates", "ListRates"].map(|m| {
            (
                m,
                metrics::counter!("ratemesh_rates_reads_total", "method" => m),
            )
        })
    });
    match handles.iter().find(|(m, _)| *m == method) {
        Some((_, counter)) => counter.increment(n),
        None => metrics::counter!("ratemesh_rates_reads_total", "method" => method).increment(n),
    }
}

/// Validates a SKU, naming `field` in the error.
pub fn parse_sku(field: &str, sku: &str) -> Result<Sku, ReadError> {
    ratemesh_core::input::sku(sku).map_err(|e| ReadError::invalid(field, e))
}

/// As [`parse_sku`], without copying the SKU.
pub fn check_sku(field: &str, sku: &str) -> Result<(), ReadError> {
    ratemesh_core::input::check_sku(sku).map_err(|e| ReadError::invalid(field, e))
}

pub(crate) fn timestamp_to_utc(
    field: &str,
    ts: &prost_types::Timestamp,
) -> Result<DateTime<Utc>, ReadError> {
    ratemesh_core::input::timestamp(ts.seconds, ts.nanos).map_err(|e| ReadError::invalid(field, e))
}

/// `GetRate` for the current card (`as_of` is answered by [`super::history`]): the
/// encoded `GetRateResponse`.
pub fn get_rate(
    reader: &ReplicaReader,
    request: &v1::GetRateRequest,
) -> Result<Vec<u8>, ReadError> {
    ensure_loaded(reader)?;
    let sku = request.sku.as_str();
    check_sku("sku", sku)?;
    count("GetRate", 1);
    reader.count_reads(1);
    reader
        .with_card(sku, wire::get_rate_response)
        .ok_or_else(|| {
            ApiError::NotFound {
                what: "rate for sku",
                key: sku.to_owned(),
            }
            .into()
        })
}

/// `BatchGetRates`: one result per requested SKU, in order; a bad or unknown SKU is an
/// item error, not a failed call. The encoded `BatchGetRatesResponse`.
pub fn batch_get_rates<'a>(
    reader: &ReplicaReader,
    skus: impl ExactSizeIterator<Item = &'a str>,
) -> Result<Vec<u8>, ReadError> {
    check_batch(reader, skus.len())?;
    let mut out = wire::BatchWriter::with_capacity(skus.len(), 256);
    write_batch(reader, skus, &mut out);
    Ok(out.finish())
}

/// What fails a whole `BatchGetRates` of `n` SKUs (the replica still loading, no SKUs,
/// too many); counts the reads when it does not.
pub fn check_batch(reader: &ReplicaReader, n: usize) -> Result<(), ReadError> {
    ensure_loaded(reader)?;
    if n == 0 {
        return Err(ReadError::invalid("skus", "must hold at least one sku"));
    }
    if n > MAX_BATCH {
        return Err(ReadError::invalid(
            "skus",
            format!("must hold at most {MAX_BATCH} skus (got {n}); split the batch"),
        ));
    }
    count("BatchGetRates", n as u64);
    reader.count_reads(n as u64);
    Ok(())
}

/// The results of a checked `BatchGetRates`, one per SKU in order, written to `out`.
///
/// The cards are looked up together ([`ReplicaReader::with_cards`]).
pub fn write_batch<'a, B: bytes::BufMut>(
    reader: &ReplicaReader,
    skus: impl Iterator<Item = &'a str>,
    out: &mut wire::BatchWriter<B>,
) {
    let skus: Vec<&str> = skus.collect();
    // An invalid SKU is looked up too and found in no shard (every card's SKU is valid);
    // checking first would walk the SKUs once more for what almost never happens.
    reader.with_cards(&skus, |cards| {
        for (sku, card) in skus.iter().zip(cards) {
            match (Sku::check(sku), card) {
                (Err(e), _) => out.error(sku, v1::ItemErrorCode::InvalidSku.into(), &e.to_string()),
                (Ok(()), Some(card)) => out.card(sku, card),
                (Ok(()), None) => out.error(
                    sku,
                    v1::ItemErrorCode::NotFound.into(),
                    &format!("no rate for sku {sku}"),
                ),
            }
        }
    });
}

/// `ListRates`: a page in SKU order, the encoded `ListRatesResponse`. The `cursor` on the
/// last page is the replica position captured before the first page was read, so every
/// change made during the listing is returned again by the next `changed_since` call.
pub fn list_rates(
    reader: &ReplicaReader,
    request: &v1::ListRatesRequest,
) -> Result<Vec<u8>, ReadError> {
    ensure_loaded(reader)?;
    if request.page_size > MAX_PAGE {
        return Err(ReadError::invalid(
            "page_size",
            format!("must be at most {MAX_PAGE} (got {})", request.page_size),
        ));
    }
    let limit = match request.page_size {
        0 => DEFAULT_PAGE,
        n => n,
    } as usize;
    let category = match request.category.as_deref() {
        Some(c) => Some(ratemesh_core::input::category(c).map_err(|e| {
            ReadError::invalid(
                "category",
                format!("{e} (leave it unset for every category)"),
            )
        })?),
        None => None,
    };
    let since = match request.changed_since.as_str() {
        "" => None,
        token => Some(
            ratemesh_bus::Cursor::parse_for(token, reader.partitions())
                .map_err(|e| ReadError::invalid("changed_since", e.to_string()))?,
        ),
    };
    let fp = fingerprint(&request.changed_since, request.category.as_deref());
    let token = match request.page_token.as_str() {
        "" => PageToken {
            start: reader.position(),
            fingerprint: fp,
            after: String::new(),
        },
        text => {
            let token = PageToken::decode(text, reader.partitions())
                .map_err(|why| ReadError::invalid("page_token", why))?;
            if token.fingerprint != fp {
                return Err(ReadError::invalid(
                    "page_token",
                    "was issued for different changed_since or category; start the listing again",
                ));
            }
            token
        }
    };
    let page = reader.list(&ListQuery {
        after: (!token.after.is_empty()).then_some(token.after.as_str()),
        changed_since: since.as_ref(),
        category: category.as_deref(),
        limit,
        scan_budget: SCAN_BUDGET,
    });
    count("ListRates", page.cards.len() as u64);
    let (next_page_token, cursor) = match page.resume_after {
        Some(after) => (
            PageToken {
                after,
                ..token.clone()
            }
            .encode(),
            String::new(),
        ),
        None => (String::new(), token.start.to_string()),
    };
    Ok(wire::list_rates_response(
        page.cards.iter().map(Vec::as_slice),
        &next_page_token,
        &cursor,
    ))
}
