//! A position in every partition of a stream, as an opaque token clients can hold on to.
//!
//! Token format (version 1): lowercase hex of `[1, varint(P), (varint(ms), varint(seq)) × P]`
//! with LEB128 varints. Clients must treat it as opaque; the version byte lets us change it.

use std::fmt;
use std::str::FromStr;

use crate::entry::EntryId;
use crate::error::BusError;

const TOKEN_VERSION: u8 = 1;
/// Bounds the work a hostile token can cause.
const MAX_PARTITIONS: u64 = 4096;

/// The last id seen in each partition of one stream. Reading "after" a cursor returns
/// only entries newer than it, per partition.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Cursor {
    ids: Vec<EntryId>,
}

impl Cursor {
    /// The cursor before every entry of a stream with `partitions` partitions.
    pub fn start(partitions: u32) -> Self {
        Cursor {
            ids: vec![EntryId::ZERO; partitions.max(1) as usize],
        }
    }

    /// A cursor from explicit per-partition ids (index = partition).
    pub fn from_ids(ids: Vec<EntryId>) -> Self {
        Cursor { ids }
    }

    /// Number of partitions this cursor covers.
    pub fn partitions(&self) -> u32 {
        u32::try_from(self.ids.len()).unwrap_or(u32::MAX)
    }

    /// The last id seen in `partition` (ZERO when out of range).
    pub fn get(&self, partition: u32) -> EntryId {
        self.ids
            .get(partition as usize)
            .copied()
            .unwrap_or(EntryId::ZERO)
    }

    /// All ids, index = partition.
    pub fn ids(&self) -> &[EntryId] {
        &self.ids
    }

    /// Moves `partition` forward to `id` (never backwards).
    pub fn advance(&mut self, partition: u32, id: EntryId) {
        if let Some(slot) = self.ids.get_mut(partition as usize)
            && id > *slot
        {
            *slot = id;
        }
    }

    /// True when this cursor is at or past `other` in every partition.
    pub fn covers(&self, other: &Cursor) -> bool {
        self.ids.len() == other.ids.len() && self.ids.iter().zip(&other.ids).all(|(a, b)| a >= b)
    }

    /// Parses a token made by `to_string`, checking it covers `partitions` partitions.
    pub fn parse_for(token: &str, partitions: u32) -> Result<Self, BusError> {
        let cursor: Cursor = token.parse()?;
        if cursor.partitions() != partitions {
            return Err(BusError::InvalidInput(format!(
                "cursor covers {} partitions, the stream has {partitions}",
                cursor.partitions()
            )));
        }
        Ok(cursor)
    }
}

impl fmt::Display for Cursor {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut bytes = vec![TOKEN_VERSION];
        put_varint(&mut bytes, self.ids.len() as u64);
        for id in &self.ids {
            put_varint(&mut bytes, id.ms);
            put_varint(&mut bytes, id.seq);
        }
        for b in bytes {
            write!(f, "{b:02x}")?;
        }
        Ok(())
    }
}

impl FromStr for Cursor {
    type Err = BusError;

    fn from_str(token: &str) -> Result<Self, Self::Err> {
        // The token itself is not repeated: it may be anything a caller sent, of any size.
        let bad = |why: &str| BusError::InvalidInput(format!("cursor is invalid: {why}"));
        if !token.len().is_multiple_of(2) || token.is_empty() {
            return Err(bad("not a hex token"));
        }
        let bytes = (0..token.len())
            .step_by(2)
            .map(|i| {
                token
                    .get(i..i + 2)
                    .and_then(|pair| u8::from_str_radix(pair, 16).ok())
            })
            .collect::<Option<Vec<u8>>>()
            .ok_or_else(|| bad("not a hex token"))?;
        let mut rest = bytes.as_slice();
        let version = take_byte(&mut rest).ok_or_else(|| bad("empty"))?;
        if version != TOKEN_VERSION {
            return Err(bad("unknown version"));
        }
        let n = take_varint(&mut rest).ok_or_else(|| bad("truncated"))?;
        if n == 0 || n > MAX_PARTITIONS {
            return Err(bad("partition count out of range"));
        }
        let mut ids = Vec::with_capacity(n as usize);
        for _ in 0..n {
            let ms = take_varint(&mut rest).ok_or_else(|| bad("truncated"))?;
            let seq = take_varint(&mut rest).ok_or_else(|| bad("truncated"))?;
            ids.push(EntryId::new(ms, seq));
        }
        if !rest.is_empty() {
            return Err(bad("trailing bytes"));
        }
        Ok(Cursor { ids })
    }
}

fn put_varint(out: &mut Vec<u8>, mut v: u64) {
    while v >= 0x80 {
        out.push((v as u8 & 0x7f) | 0x80);
        v >>= 7;
    }
    out.push(v as u8);
}

fn take_byte(rest: &mut &[u8]) -> Option<u8> {
    let (first, tail) = rest.split_first()?;
    *rest = tail;
    Some(*first)
}

fn take_varint(rest: &mut &[u8]) -> Option<u64> {
    let mut v: u64 = 0;
    for shift in (0..64).step_by(7) {
        let b = take_byte(rest)?;
        v |= u64::from(b & 0x7f).checked_shl(shift)?;
        if b & 0x80 == 0 {
            return Some(v);
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trips_through_its_token() {
        let mut c = Cursor::start(3);
        c.advance(0, EntryId::new(1_700_000_000_123, 4));
        c.advance(2, EntryId::new(u64::MAX, u64::MAX));
        let token = c.to_string();
        assert!(token.chars().all(|ch| ch.is_ascii_hexdigit()));
        assert_eq!(token.parse::<Cursor>().unwrap(), c);
        assert_eq!(Cursor::parse_for(&token, 3).unwrap(), c);
        assert!(Cursor::parse_for(&token, 4).is_err());
    }

    #[test]
    fn advance_never_goes_backwards() {
        let mut c = Cursor::start(1);
        c.advance(0, EntryId::new(5, 0));
        c.advance(0, EntryId::new(4, 9));
        assert_eq!(c.get(0), EntryId::new(5, 0));
    }

    #[test]
    fn rejects_garbage_tokens() {
        for token in [
            "",
            "zz",
            "0",
            "02",
            "0101",
            "010100",
            "01010000ff",
            "01808080808080808080800100",
        ] {
            assert!(token.parse::<Cursor>().is_err(), "{token} parsed");
        }
    }
}
