//! Rate cards in their wire form.
//!
//! The replica keeps every card as the protobuf bytes the engine published and answers
//! `GetRate`, `BatchGetRates` and `ListRates` by copying those bytes into the response: a
//! card is encoded once, when it is published, however often it is read. This module
//! reads the few fields the replica needs straight from the bytes ([`CardHead`]) and
//! writes the responses around pre-encoded cards, byte for byte what prost would encode
//! for the same messages (fields in number order, defaults omitted).

use bytes::BufMut;
use prost::encoding::{decode_varint, encode_varint, encoded_len_varint};
use ratemesh_core::Sku;

/// `RateCard` field numbers read here (see `proto/ratemesh/v1/common.proto`).
mod card_field {
    pub(super) const SKU: u32 = 1;
    pub(super) const CATEGORY: u32 = 2;
    pub(super) const VERSION: u32 = 6;
    pub(super) const COMPUTED_AT: u32 = 7;
}

/// Why bytes are not a card (or a snapshot block).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct WireError(pub String);

fn bad(what: impl Into<String>) -> WireError {
    WireError(what.into())
}

/// One field of a message: its number and its value.
#[derive(Debug, Clone, Copy)]
enum Value<'a> {
    Varint(u64),
    Bytes(&'a [u8]),
    Fixed,
}

/// Walks the top-level fields of a message.
struct Fields<'a> {
    rest: &'a [u8],
}

impl<'a> Fields<'a> {
    fn new(bytes: &'a [u8]) -> Self {
        Self { rest: bytes }
    }

    fn varint(&mut self) -> Result<u64, WireError> {
        decode_varint(&mut self.rest).map_err(|e| bad(e.to_string()))
    }

    fn take(&mut self, n: usize) -> Result<&'a [u8], WireError> {
        if self.rest.len() < n {
            return Err(bad("truncated field"));
        }
        let (head, tail) = self.rest.split_at(n);
        self.rest = tail;
        Ok(head)
    }

    fn next_field(&mut self) -> Option<Result<(u32, Value<'a>), WireError>> {
        if self.rest.is_empty() {
            return None;
        }
        Some(self.read_field())
    }

    fn read_field(&mut self) -> Result<(u32, Value<'a>), WireError> {
        let key = self.varint()?;
        let number = u32::try_from(key >> 3).map_err(|_| bad("field number out of range"))?;
        if number == 0 {
            return Err(bad("field number 0"));
        }
        let value = match key & 7 {
            0 => Value::Varint(self.varint()?),
            1 => {
                self.take(8)?;
                Value::Fixed
            }
            2 => {
                let len = usize::try_from(self.varint()?).map_err(|_| bad("length overflow"))?;
                Value::Bytes(self.take(len)?)
            }
            5 => {
                self.take(4)?;
                Value::Fixed
            }
            other => return Err(bad(format!("unsupported wire type {other}"))),
        };
        Ok((number, value))
    }
}

fn text<'a>(bytes: &'a [u8], field: &str) -> Result<&'a str, WireError> {
    std::str::from_utf8(bytes).map_err(|_| bad(format!("{field} is not UTF-8")))
}

/// The fields of an encoded card the replica files it under.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CardHead<'a> {
    /// The SKU.
    pub sku: &'a str,
    /// Its category.
    pub category: &'a str,
    /// The card's version.
    pub version: u64,
    /// `computed_at` as (seconds, nanos); `None` when absent.
    pub computed_at: Option<(i64, i32)>,
}

impl CardHead<'_> {
    /// `computed_at` as a time (the epoch when absent or out of range, so it sorts first).
    pub fn computed_at(&self) -> chrono::DateTime<chrono::Utc> {
        self.computed_at
            .and_then(|(s, n)| chrono::DateTime::from_timestamp(s, u32::try_from(n).ok()?))
            .unwrap_or(chrono::DateTime::UNIX_EPOCH)
    }
}

/// Reads the SKU, category, version and computation time of an encoded `RateCard`,
/// checking the top-level framing of every field.
pub fn card_head(card: &[u8]) -> Result<CardHead<'_>, WireError> {
    let mut head = CardHead {
        sku: "",
        category: "",
        version: 0,
        computed_at: None,
    };
    let mut fields = Fields::new(card);
    while let Some(field) = fields.next_field() {
        match field? {
            (card_field::SKU, Value::Bytes(b)) => head.sku = text(b, "sku")?,
            (card_field::CATEGORY, Value::Bytes(b)) => head.category = text(b, "category")?,
            (card_field::VERSION, Value::Varint(v)) => head.version = v,
            (card_field::COMPUTED_AT, Value::Bytes(b)) => head.computed_at = Some(timestamp(b)?),
            (
                card_field::SKU
                | card_field::CATEGORY
                | card_field::VERSION
                | card_field::COMPUTED_AT,
                _,
            ) => return Err(bad("a card field has the wrong wire type")),
            _ => {}
        }
    }
    if head.sku.is_empty() {
        return Err(bad("card has no sku"));
    }
    Ok(head)
}

/// The SKU of an encoded card, fast when it is the first field (as prost writes it).
pub fn card_sku(card: &[u8]) -> &[u8] {
    if card.first() == Some(&0x0a) {
        let mut rest = &card[1..];
        if let Ok(len) = decode_varint(&mut rest)
            && let Ok(len) = usize::try_from(len)
            && len <= rest.len()
        {
            return &rest[..len];
        }
    }
    card_head(card)
        .map(|h| h.sku.as_bytes())
        .unwrap_or_default()
}

fn timestamp(bytes: &[u8]) -> Result<(i64, i32), WireError> {
    let (mut seconds, mut nanos) = (0i64, 0i32);
    let mut fields = Fields::new(bytes);
    while let Some(field) = fields.next_field() {
        match field? {
            // Two's complement, as prost encodes int64 / int32.
            (1, Value::Varint(v)) => seconds = v as i64,
            (2, Value::Varint(v)) => nanos = v as i32,
            _ => {}
        }
    }
    Ok((seconds, nanos))
}

/// The range of the `card` field (2) inside an encoded `RateChanged`, when it appears
/// exactly once (as the engine writes it), so the card can be kept without re-encoding.
pub fn rate_changed_card(payload: &[u8]) -> Option<std::ops::Range<usize>> {
    let mut fields = Fields::new(payload);
    let mut found = None;
    while let Some(field) = fields.next_field() {
        match field.ok()? {
            (2, Value::Bytes(b)) => {
                if found.is_some() {
                    return None;
                }
                let start = b.as_ptr() as usize - payload.as_ptr() as usize;
                found = Some(start..start + b.len());
            }
            (2, _) => return None,
            _ => {}
        }
    }
    found
}

fn put_key(out: &mut impl BufMut, field: u32, wire_type: u32) {
    encode_varint(u64::from(field << 3 | wire_type), out);
}

fn put_bytes(out: &mut impl BufMut, field: u32, bytes: &[u8]) {
    put_key(out, field, 2);
    encode_varint(bytes.len() as u64, out);
    out.put_slice(bytes);
}

fn bytes_len(field: u32, len: usize) -> usize {
    encoded_len_varint(u64::from(field << 3)) + encoded_len_varint(len as u64) + len
}

/// `GetRateResponse { card }` around an encoded card.
pub fn get_rate_response(card: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(bytes_len(1, card.len()));
    put_bytes(&mut out, 1, card);
    out
}

/// Room for a result's bytes before its card: its key and length, the SKU's field (a
/// valid SKU's at most), the card's key and length.
const RESULT_HEAD: usize = 2 * (1 + 5) + (1 + 2 + Sku::MAX_LEN);

/// A card result's bytes before the card (its key and length, the SKU's field, the card's
/// key and length), gathered on the stack and written at once: a buffer checks its room
/// on every write, and a batch makes a hundred of these.
struct ResultHead {
    bytes: [u8; RESULT_HEAD],
    len: usize,
}

impl ResultHead {
    fn new() -> Self {
        Self {
            bytes: [0; RESULT_HEAD],
            len: 0,
        }
    }

    /// The result's key and length, and the SKU field's key and length.
    fn open(&mut self, sku: &str, card_len: usize) {
        let inner = sku_field_len(sku) + bytes_len(2, card_len);
        self.varint(1 << 3 | 2);
        self.varint(inner as u64);
        if !sku.is_empty() {
            self.varint(1 << 3 | 2);
            self.varint(sku.len() as u64);
        }
    }

    /// The SKU itself, of at most [`Sku::MAX_LEN`] bytes.
    fn sku(&mut self, sku: &str) {
        self.bytes[self.len..self.len + sku.len()].copy_from_slice(sku.as_bytes());
        self.len += sku.len();
    }

    /// The card field's key and length.
    fn close(&mut self, card_len: usize) {
        self.varint(2 << 3 | 2);
        self.varint(card_len as u64);
    }

    fn varint(&mut self, mut value: u64) {
        while value >= 0x80 {
            self.bytes[self.len] = value as u8 | 0x80;
            self.len += 1;
            value >>= 7;
        }
        self.bytes[self.len] = value as u8;
        self.len += 1;
    }

    /// Writes what is gathered to `out`, and starts again.
    fn write_to(&mut self, out: &mut impl BufMut) {
        out.put_slice(&self.bytes[..self.len]);
        self.len = 0;
    }
}

/// Writes `BatchGetRatesResponse` results one at a time, in request order, into a
/// buffer of its own or straight into the outgoing frame.
#[derive(Debug, Default)]
pub struct BatchWriter<B = Vec<u8>> {
    out: B,
}

/// A buffer that can make room ahead of writing, so a batch sized first grows it once
/// instead of doubling it (and copying what it holds) as results arrive.
pub trait Reserve: BufMut {
    /// Makes room for at least `additional` more bytes.
    fn reserve(&mut self, additional: usize);
}

impl Reserve for Vec<u8> {
    fn reserve(&mut self, additional: usize) {
        Vec::reserve(self, additional);
    }
}

impl<T: Reserve + ?Sized> Reserve for &mut T {
    fn reserve(&mut self, additional: usize) {
        (**self).reserve(additional);
    }
}

/// The length of field 1 (the SKU) of a `RateResult`: nothing when empty, as prost omits
/// it.
fn sku_field_len(sku: &str) -> usize {
    if sku.is_empty() {
        0
    } else {
        bytes_len(1, sku.len())
    }
}

/// The length of an `ItemError { code, message }` with a message of `message_len` bytes.
fn item_error_len(code: i32, message_len: usize) -> usize {
    let code_len = if code == 0 {
        0
    } else {
        1 + encoded_len_varint(code as u64)
    };
    let msg_len = if message_len == 0 {
        0
    } else {
        bytes_len(2, message_len)
    };
    code_len + msg_len
}

/// The encoded length of a result carrying a card of `card_len` bytes, as
/// [`BatchWriter::card`] writes it (the field's key and length included).
pub fn card_result_len(sku: &str, card_len: usize) -> usize {
    bytes_len(1, sku_field_len(sku) + bytes_len(2, card_len))
}

/// The encoded length of a result carrying an item error with a message of `message_len`
/// bytes, as [`BatchWriter::error`] writes it.
pub fn error_result_len(sku: &str, code: i32, message_len: usize) -> usize {
    bytes_len(
        1,
        sku_field_len(sku) + bytes_len(3, item_error_len(code, message_len)),
    )
}

impl<B: BufMut> BatchWriter<B> {
    /// A writer appending to `out`.
    pub fn new(out: B) -> Self {
        Self { out }
    }

    /// A result carrying the card (`RateResult { sku, card }`).
    pub fn card(&mut self, sku: &str, card: &[u8]) {
        let mut head = ResultHead::new();
        head.open(sku, card.len());
        if sku.len() <= Sku::MAX_LEN {
            head.sku(sku);
        } else {
            // Too long to be valid, so it is never a found card's SKU: written on its own.
            head.write_to(&mut self.out);
            self.out.put_slice(sku.as_bytes());
        }
        head.close(card.len());
        head.write_to(&mut self.out);
        self.out.put_slice(card);
    }

    /// A result carrying an item error (`RateResult { sku, error { code, message } }`).
    pub fn error(&mut self, sku: &str, code: i32, message: &str) {
        let error_len = item_error_len(code, message.len());
        let inner = sku_field_len(sku) + bytes_len(3, error_len);
        put_key(&mut self.out, 1, 2);
        encode_varint(inner as u64, &mut self.out);
        if !sku.is_empty() {
            put_bytes(&mut self.out, 1, sku.as_bytes());
        }
        put_key(&mut self.out, 3, 2);
        encode_varint(error_len as u64, &mut self.out);
        if code != 0 {
            put_key(&mut self.out, 1, 0);
            // Enums are int32 on the wire: negative values are ten bytes, as prost writes.
            encode_varint(code as u64, &mut self.out);
        }
        if !message.is_empty() {
            put_bytes(&mut self.out, 2, message.as_bytes());
        }
    }

    /// The encoded response.
    pub fn finish(self) -> B {
        self.out
    }
}

impl<B: Reserve> BatchWriter<B> {
    /// Makes room for `additional` more bytes of results.
    pub fn reserve(&mut self, additional: usize) {
        self.out.reserve(additional);
    }
}

/// `ListRatesResponse { cards, next_page_token, cursor }` around encoded cards.
pub fn list_rates_response<'a>(
    cards: impl IntoIterator<Item = &'a [u8]>,
    next_page_token: &str,
    cursor: &str,
) -> Vec<u8> {
    let mut out = Vec::new();
    for card in cards {
        put_bytes(&mut out, 1, card);
    }
    if !next_page_token.is_empty() {
        put_bytes(&mut out, 2, next_page_token.as_bytes());
    }
    if !cursor.is_empty() {
        put_bytes(&mut out, 3, cursor.as_bytes());
    }
    out
}

/// The SKUs of an encoded `BatchGetRatesRequest`: their text one after another, each
/// checked as UTF-8 once, and where each ends, instead of a `String` each.
#[derive(Debug, Clone, Default)]
pub struct SkuList {
    text: String,
    ends: Vec<u32>,
}

impl SkuList {
    /// Reads `skus` (field 1) of an encoded `BatchGetRatesRequest`; other fields are
    /// skipped, as prost skips unknown fields.
    pub fn parse(buf: bytes::Bytes) -> Result<Self, WireError> {
        // A field is at least two bytes (its tag and a zero length): room for every SKU
        // the request can hold, up to a batch's most, so the list is allocated once, not
        // grown SKU by SKU.
        let mut text = Vec::with_capacity(buf.len());
        let mut ends = Vec::with_capacity((buf.len() / 2).min(super::point::MAX_BATCH));
        let mut fields = Fields::new(&buf);
        loop {
            // The usual field, read without decoding varints: `skus` (tag 0x0a) with a
            // length under 128.
            if let [0x0a, len @ 0..=0x7f, rest @ ..] = fields.rest
                && let Some((sku, rest)) = rest.split_at_checked(usize::from(*len))
            {
                text.extend_from_slice(sku);
                ends.push(end_of(&text)?);
                fields.rest = rest;
                continue;
            }
            let Some(field) = fields.next_field() else {
                break;
            };
            match field? {
                (1, Value::Bytes(b)) => {
                    text.extend_from_slice(b);
                    ends.push(end_of(&text)?);
                }
                (1, _) => return Err(bad("skus has the wrong wire type")),
                _ => {}
            }
        }
        // Checked as UTF-8 in one pass; the SKUs are too when each also ends on a
        // character boundary (a character split across two SKUs leaves both invalid).
        let text = String::from_utf8(text).map_err(|_| bad("skus is not UTF-8"))?;
        if !ends.iter().all(|&end| text.is_char_boundary(end as usize)) {
            return Err(bad("skus is not UTF-8"));
        }
        Ok(Self { text, ends })
    }

    /// The SKUs, in request order.
    pub fn iter(&self) -> impl Iterator<Item = &str> {
        let mut start = 0;
        self.ends.iter().map(move |&end| {
            // Every end is a boundary between two SKUs, so between characters.
            let sku = self.text.get(start..end as usize).unwrap_or_default();
            start = end as usize;
            sku
        })
    }

    /// How many.
    pub fn len(&self) -> usize {
        self.ends.len()
    }

    /// True when there are none.
    pub fn is_empty(&self) -> bool {
        self.ends.is_empty()
    }
}

/// Where the text of the SKUs read so far ends.
fn end_of(text: &[u8]) -> Result<u32, WireError> {
    u32::try_from(text.len()).map_err(|_| bad("request too large"))
}

/// Appends a varint (for snapshot blocks).
pub(crate) fn put_varint(out: &mut Vec<u8>, value: u64) {
    encode_varint(value, out);
}

/// Reads a varint (for snapshot blocks).
pub(crate) fn get_varint(rest: &mut &[u8]) -> Result<u64, WireError> {
    decode_varint(rest).map_err(|e| bad(e.to_string()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use prost::Message;
    use ratemesh_proto::v1;

    fn card(sku: &str, version: u64) -> v1::RateCard {
        v1::RateCard {
            sku: sku.into(),
            category: "shoes".into(),
            effective_rate: "0.0825".into(),
            parts: Some(v1::RateParts {
                base: "0.08".into(),
                inventory_adjustment: "0.0025".into(),
                ..Default::default()
            }),
            reasons: vec![v1::Reason {
                code: "OVERSTOCK".into(),
                text: "days of cover 74.2 above overstock threshold 60".into(),
            }],
            version,
            computed_at: Some(prost_types::Timestamp {
                seconds: 1_764_000_000,
                nanos: 123_000_000,
            }),
            previous_rate: "0.08".into(),
            band: "overstock".into(),
            ..Default::default()
        }
    }

    #[test]
    fn the_head_is_read_from_the_bytes() {
        let bytes = card("SKU-1", 7).encode_to_vec();
        let head = card_head(&bytes).expect("head");
        assert_eq!(head.sku, "SKU-1");
        assert_eq!(head.category, "shoes");
        assert_eq!(head.version, 7);
        assert_eq!(head.computed_at, Some((1_764_000_000, 123_000_000)));
        assert_eq!(card_sku(&bytes), b"SKU-1");
    }

    #[test]
    fn truncated_or_skuless_bytes_are_not_a_card() {
        let bytes = card("SKU-1", 7).encode_to_vec();
        assert!(card_head(&bytes[..bytes.len() - 3]).is_err());
        assert!(card_head(&[]).is_err());
        assert!(card_head(&[0x0b]).is_err());
    }

    #[test]
    fn responses_are_what_prost_encodes() {
        let (a, b) = (card("SKU-1", 1), card("SKU-2", 9));
        let (ab, bb) = (a.encode_to_vec(), b.encode_to_vec());
        assert_eq!(
            get_rate_response(&ab),
            v1::GetRateResponse {
                card: Some(a.clone())
            }
            .encode_to_vec()
        );

        let mut batch = BatchWriter::new(Vec::new());
        batch.card("SKU-1", &ab);
        batch.error(
            "bad sku",
            v1::ItemErrorCode::InvalidSku as i32,
            "has a space",
        );
        batch.error("", v1::ItemErrorCode::NotFound as i32, "");
        batch.card("SKU-2", &bb);
        // Both ways a result's head is written: in one piece, or around a SKU too long to
        // be valid; and a result without a SKU.
        let long = "L".repeat(Sku::MAX_LEN + 1);
        batch.card(&long, &ab);
        batch.card(&"M".repeat(Sku::MAX_LEN), &bb);
        batch.card("", &ab);
        let expected = v1::BatchGetRatesResponse {
            results: vec![
                v1::RateResult {
                    sku: "SKU-1".into(),
                    outcome: Some(v1::rate_result::Outcome::Card(a.clone())),
                },
                v1::RateResult {
                    sku: "bad sku".into(),
                    outcome: Some(v1::rate_result::Outcome::Error(v1::ItemError {
                        code: v1::ItemErrorCode::InvalidSku as i32,
                        message: "has a space".into(),
                    })),
                },
                v1::RateResult {
                    sku: String::new(),
                    outcome: Some(v1::rate_result::Outcome::Error(v1::ItemError {
                        code: v1::ItemErrorCode::NotFound as i32,
                        message: String::new(),
                    })),
                },
                v1::RateResult {
                    sku: "SKU-2".into(),
                    outcome: Some(v1::rate_result::Outcome::Card(b.clone())),
                },
                v1::RateResult {
                    sku: long,
                    outcome: Some(v1::rate_result::Outcome::Card(a.clone())),
                },
                v1::RateResult {
                    sku: "M".repeat(Sku::MAX_LEN),
                    outcome: Some(v1::rate_result::Outcome::Card(b.clone())),
                },
                v1::RateResult {
                    sku: String::new(),
                    outcome: Some(v1::rate_result::Outcome::Card(a.clone())),
                },
            ],
        };
        assert_eq!(batch.finish(), expected.encode_to_vec());

        let list = list_rates_response([ab.as_slice(), bb.as_slice()], "tok", "");
        assert_eq!(
            list,
            v1::ListRatesResponse {
                cards: vec![a, b],
                next_page_token: "tok".into(),
                cursor: String::new(),
            }
            .encode_to_vec()
        );
    }

    #[test]
    fn result_lengths_are_what_the_writer_writes() {
        let long = card("SKU-LONG", 3).encode_to_vec().repeat(2);
        let short = card("S", 1).encode_to_vec();
        for card in [short.as_slice(), long.as_slice(), &[]] {
            for sku in ["", "S", &"x".repeat(200)] {
                let mut out = BatchWriter::new(Vec::new());
                out.card(sku, card);
                assert_eq!(out.finish().len(), card_result_len(sku, card.len()));
            }
        }
        let message = "m".repeat(150);
        for code in [0, v1::ItemErrorCode::NotFound as i32, -1] {
            for text in ["", "no rate", message.as_str()] {
                for sku in ["", "S", &"x".repeat(200)] {
                    let mut out = BatchWriter::new(Vec::new());
                    out.error(sku, code, text);
                    assert_eq!(out.finish().len(), error_result_len(sku, code, text.len()));
                }
            }
        }
    }

    #[test]
    fn batch_requests_are_read_into_one_string() {
        let request = v1::BatchGetRatesRequest {
            skus: vec!["A-1".into(), String::new(), "ü".into(), "x".repeat(200)],
        };
        let list = SkuList::parse(request.encode_to_vec().into()).expect("parse");
        let long = "x".repeat(200);
        assert_eq!(
            list.iter().collect::<Vec<_>>(),
            ["A-1", "", "ü", long.as_str()]
        );
        assert_eq!(list.len(), 4);
        assert!(
            SkuList::parse(vec![0x0a, 0x01, 0xff].into()).is_err(),
            "not UTF-8"
        );
        assert!(
            SkuList::parse(vec![0x0a, 0x05, b'a'].into()).is_err(),
            "truncated"
        );
        assert!(SkuList::parse(Vec::new().into()).expect("empty").is_empty());
        // "aé" with the é split between two SKUs: the text is UTF-8, neither SKU is.
        assert!(
            SkuList::parse(vec![0x0a, 0x02, b'a', 0xc3, 0x0a, 0x01, 0xa9].into()).is_err(),
            "a character split across two SKUs"
        );
        // Another field (2, a varint) is skipped between SKUs; field 1 as a varint is not a
        // SKU.
        let list = SkuList::parse(vec![0x0a, 0x01, b'y', 0x10, 0x05, 0x0a, 0x01, b'z'].into())
            .expect("unknown field skipped");
        assert_eq!(list.iter().collect::<Vec<_>>(), ["y", "z"]);
        assert!(
            SkuList::parse(vec![0x08, 0x01].into()).is_err(),
            "skus with the wrong wire type"
        );
    }

    #[test]
    fn the_card_of_a_rate_changed_is_sliced_out() {
        let c = card("SKU-3", 2);
        let event = v1::RateChanged {
            meta: Some(v1::EventMeta::default()),
            card: Some(c.clone()),
            previous_rate: "0.07".into(),
        };
        let payload = event.encode_to_vec();
        let range = rate_changed_card(&payload).expect("card");
        assert_eq!(&payload[range], c.encode_to_vec().as_slice());
        assert_eq!(rate_changed_card(&[]), None);
    }
}
