//! Replies that scripts pack into one string.
//!
//! A batch read answered the ordinary way (a pipeline of `HGETALL`, an `XREADGROUP` of
//! hundreds of entries) comes back as a tree of thousands of RESP values, each parsed and
//! allocated on its own. The hot reads instead run a script that concatenates the same
//! items into one bulk string, which is parsed here in one pass, with every item a slice
//! of that one buffer (no copy per field).
//!
//! The format is a sequence of two token kinds, written by [`LUA_PACK`]'s helpers:
//! - a **count** `<decimal>#` (how many items follow, e.g. a hash's fields and values);
//! - an **item** `<decimal length>:<bytes>` (a netstring without the trailing comma).

use bytes::Bytes;

use crate::error::BusError;

use super::reply::unexpected;

/// Lua helpers shared by the packing scripts: `count(out, n)` appends a count, `item(out,
/// s)` an item, `pairs_of(out, flat)` a count and the items of a flat reply (`HGETALL`, a
/// stream entry's fields), `false`/nil as 0 items.
pub(crate) const LUA_PACK: &str = r#"
local function count(out, n) out[#out + 1] = n .. '#' end
local function item(out, s)
  out[#out + 1] = #s .. ':'
  out[#out + 1] = s
end
local function flat(out, a)
  if not a then count(out, 0) return end
  count(out, #a)
  for j = 1, #a do item(out, a[j]) end
end
"#;

/// A cursor over a packed reply.
pub(crate) struct Packed {
    buf: Bytes,
    pos: usize,
    what: &'static str,
}

impl Packed {
    /// Reads the bulk string reply of a packing script (`what` names the read in errors).
    pub(crate) fn of(reply: redis::Value, what: &'static str) -> Result<Self, BusError> {
        let buf = match reply {
            redis::Value::BulkString(b) => Bytes::from(b),
            // An empty table.concat comes back as an empty bulk string; nil means nothing.
            redis::Value::Nil => Bytes::new(),
            _ => return Err(unexpected(what)),
        };
        Ok(Packed { buf, pos: 0, what })
    }

    /// True once every token was read.
    pub(crate) fn is_done(&self) -> bool {
        self.pos >= self.buf.len()
    }

    fn number(&mut self, end: u8) -> Result<usize, BusError> {
        let rest = self.buf.get(self.pos..).unwrap_or_default();
        let digits = rest
            .iter()
            .position(|b| *b == end)
            .filter(|n| (1..=10).contains(n))
            .ok_or_else(|| unexpected(self.what))?;
        let mut n = 0usize;
        for b in &rest[..digits] {
            if !b.is_ascii_digit() {
                return Err(unexpected(self.what));
            }
            n = n * 10 + usize::from(b - b'0');
        }
        self.pos += digits + 1;
        Ok(n)
    }

    /// The next token, which must be a count.
    pub(crate) fn count(&mut self) -> Result<usize, BusError> {
        self.number(b'#')
    }

    /// The next token, which must be an item.
    pub(crate) fn item(&mut self) -> Result<Bytes, BusError> {
        let len = self.number(b':')?;
        let end = self
            .pos
            .checked_add(len)
            .filter(|end| *end <= self.buf.len())
            .ok_or_else(|| unexpected(self.what))?;
        let item = self.buf.slice(self.pos..end);
        self.pos = end;
        Ok(item)
    }

    /// The next item as UTF-8 text.
    pub(crate) fn text(&mut self) -> Result<String, BusError> {
        let item = self.item()?;
        String::from_utf8(item.to_vec()).map_err(|_| unexpected(self.what))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn packed(s: &[u8]) -> Packed {
        Packed::of(redis::Value::BulkString(s.to_vec()), "test").unwrap()
    }

    #[test]
    fn reads_counts_and_items_including_empty_and_binary_ones() {
        let mut p = packed(b"3#2:_v1:70:4:a\x00:b");
        assert_eq!(p.count().unwrap(), 3);
        assert_eq!(&p.item().unwrap()[..], b"_v");
        assert_eq!(&p.item().unwrap()[..], b"7");
        assert_eq!(&p.item().unwrap()[..], b"");
        assert_eq!(&p.item().unwrap()[..], b"a\x00:b");
        assert!(p.is_done());
    }

    #[test]
    fn a_truncated_or_malformed_reply_is_an_error_not_a_panic() {
        for bad in [
            &b"5:abc"[..],
            b"x:abc",
            b":abc",
            b"3",
            b"99999999999:a",
            b"1#",
        ] {
            let mut p = packed(bad);
            let read = p.item().and_then(|_| p.item());
            assert!(read.is_err(), "{:?}", String::from_utf8_lossy(bad));
        }
        assert!(packed(b"2:ab").count().is_err());
    }
}
