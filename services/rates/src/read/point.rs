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
    let sku = checked_sku(reader, request)?;
    found(reader, sku, reader.with_card(sku, wire::get_rate_response))
}

/// As [`get_rate`] without waiting for the replica's writer: `None` when it holds the
/// card's shard (nothing is counted then).
pub fn try_get_rate(
    reader: &ReplicaReader,
    request: &v1::GetRateRequest,
) -> Option<Result<Vec<u8>, ReadError>> {
    let sku = match checked_sku(reader, request) {
        Ok(sku) => sku,
        Err(err) => return Some(Err(err)),
    };
    let card = reader.try_with_card(sku, wire::get_rate_response)?;
    Some(found(reader, sku, card))
}

fn checked_sku<'r>(
    reader: &ReplicaReader,
    request: &'r v1::GetRateRequest,
) -> Result<&'r str, ReadError> {
    ensure_loaded(reader)?;
    check_sku("sku", &request.sku)?;
    Ok(&request.sku)
}

/// Counts a `GetRate` of `sku` and answers with its `card`, NOT_FOUND without one.
fn found(reader: &ReplicaReader, sku: &str, card: Option<Vec<u8>>) -> Result<Vec<u8>, ReadError> {
    count("GetRate", 1);
    reader.count_reads(1);
    card.ok_or_else(|| {
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
    let mut out = wire::BatchWriter::new(Vec::new());
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

/// Room reserved for an item error's message beyond the SKU's length: "no rate for sku"
/// and the SKU, or why a SKU is invalid (the buffer grows for a longer message; item
/// errors are rare, and their messages are not built twice to size them).
const ITEM_ERROR_ROOM: usize = 96;

/// The results of a checked `BatchGetRates`, one per SKU in order, written to `out`.
///
/// The cards are looked up together ([`ReplicaReader::with_cards`]) and the answer's size
/// is reserved before the first result is written, so `out` grows once.
pub fn write_batch<'a, B: wire::Reserve>(
    reader: &ReplicaReader,
    skus: impl Iterator<Item = &'a str>,
    out: &mut wire::BatchWriter<B>,
) {
    let skus: Vec<&str> = skus.collect();
    // An invalid SKU is looked up too and found in no shard (every card's SKU is valid);
    // checking first would walk the SKUs once more for what almost never happens.
    reader.with_cards(&skus, |cards| {
        let size: usize = skus
            .iter()
            .zip(cards)
            .map(|(sku, card)| match card {
                Some(card) => wire::card_result_len(sku, card.len()),
                None => wire::error_result_len(
                    sku,
                    v1::ItemErrorCode::InvalidSku.into(),
                    sku.len() + ITEM_ERROR_ROOM,
                ),
            })
            .sum();
        out.reserve(size);
        // A card found is the SKU's own, so the SKU is valid; only the rest are checked.
        for (sku, card) in skus.iter().zip(cards) {
            match card {
                Some(card) => out.card(sku, card),
                None => match Sku::check(sku) {
                    Err(e) => out.error(sku, v1::ItemErrorCode::InvalidSku.into(), &e.to_string()),
                    Ok(()) => out.error(
                        sku,
                        v1::ItemErrorCode::NotFound.into(),
                        &format!("no rate for sku {sku}"),
                    ),
                },
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::read::replica::{Incoming, Replica, ReplicaOptions, system_clock};
    use prost::Message;
    use ratemesh_bus::EntryId;

    fn reader_with(skus: &[&str]) -> ReplicaReader {
        let replica = Replica::new(
            ReplicaOptions {
                partitions: 1,
                history_retention: chrono::Duration::days(1),
                watch_buffer: 16,
            },
            system_clock(),
        );
        for sku in skus {
            let card = v1::RateCard {
                sku: (*sku).into(),
                category: "toys".into(),
                effective_rate: "0.05".into(),
                version: 1,
                ..Default::default()
            }
            .encode_to_vec();
            replica.apply_block_card(
                Incoming::new(&card).expect("card"),
                EntryId { ms: 1, seq: 0 },
            );
        }
        replica.set_loaded();
        replica.reader()
    }

    #[test]
    fn a_batch_answer_is_sized_before_it_is_written() {
        let skus: Vec<String> = (0..100).map(|i| format!("SKU-{i:03}")).collect();
        let skus: Vec<&str> = skus.iter().map(String::as_str).collect();
        let reader = reader_with(&skus);

        // Every card found: the reservation is the answer's size to the byte.
        let mut out = wire::BatchWriter::new(Vec::new());
        write_batch(&reader, skus.iter().copied(), &mut out);
        let answer = out.finish();
        assert_eq!(answer.capacity(), answer.len());
        let decoded = v1::BatchGetRatesResponse::decode(answer.as_slice()).expect("answer");
        assert_eq!(decoded.results.len(), 100);

        // Item errors are given room by estimate, enough for their messages: the buffer is
        // still the one reserved, not grown (and so reallocated) as results went in.
        let long = "L".repeat(Sku::MAX_LEN);
        let mixed = [
            "SKU-001",
            "SKU-404",
            "bad sku",
            "",
            long.as_str(),
            "SKU-002",
        ];
        let mut out = wire::BatchWriter::new(Vec::new());
        write_batch(&reader, mixed.iter().copied(), &mut out);
        let answer = out.finish();
        let card_len = reader.with_card("SKU-001", <[u8]>::len).expect("card");
        let reserved = 2 * wire::card_result_len("SKU-001", card_len)
            + ["SKU-404", "bad sku", "", long.as_str()]
                .iter()
                .map(|sku| {
                    let code = v1::ItemErrorCode::InvalidSku.into();
                    wire::error_result_len(sku, code, sku.len() + ITEM_ERROR_ROOM)
                })
                .sum::<usize>();
        assert_eq!(answer.capacity(), reserved);
        assert!(answer.len() <= reserved);
        let decoded = v1::BatchGetRatesResponse::decode(answer.as_slice()).expect("answer");
        let codes: Vec<Option<i32>> = decoded
            .results
            .iter()
            .map(|r| match r.outcome.as_ref().expect("outcome") {
                v1::rate_result::Outcome::Card(_) => None,
                v1::rate_result::Outcome::Error(e) => Some(e.code),
            })
            .collect();
        let (not_found, invalid) = (
            Some(v1::ItemErrorCode::NotFound as i32),
            Some(v1::ItemErrorCode::InvalidSku as i32),
        );
        assert_eq!(
            codes,
            [None, not_found, invalid, invalid, not_found, None],
            "{decoded:?}"
        );
    }
}
