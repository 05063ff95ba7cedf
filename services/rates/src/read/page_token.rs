//! `ListRates` page tokens.
//!
//! A token carries what the next page needs and nothing a replica holds: the listing's
//! start position (captured before its first page was read, returned as the `cursor` on
//! the last page), the last SKU examined, and a fingerprint of the parameters it was
//! issued for. Any replica can continue any listing.
//!
//! Format (version 1): lowercase hex of `1 \n <cursor token> \n <fingerprint> \n <sku>`.
//! Clients treat it as opaque.

use ratemesh_bus::Cursor;

const VERSION: &str = "1";

/// The state of a listing between pages.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PageToken {
    /// Replica position captured before the listing's first page was read.
    pub start: Cursor,
    /// Fingerprint of `changed_since` and `category`.
    pub fingerprint: u64,
    /// The last SKU examined; the next page starts after it.
    pub after: String,
}

/// FNV-1a over the parameters that must not change between pages (stable across builds
/// and replicas, unlike `std`'s hasher).
pub fn fingerprint(changed_since: &str, category: Option<&str>) -> u64 {
    let mut hash: u64 = 0xcbf2_9ce4_8422_2325;
    let mut feed = |bytes: &[u8]| {
        for b in bytes {
            hash ^= u64::from(*b);
            hash = hash.wrapping_mul(0x0000_0100_0000_01b3);
        }
    };
    feed(changed_since.as_bytes());
    match category {
        Some(c) => {
            feed(b"\x01");
            feed(c.as_bytes());
        }
        None => feed(b"\x00"),
    }
    hash
}

impl PageToken {
    /// The opaque text form.
    pub fn encode(&self) -> String {
        let plain = format!(
            "{VERSION}\n{}\n{:016x}\n{}",
            self.start, self.fingerprint, self.after
        );
        plain.bytes().map(|b| format!("{b:02x}")).collect()
    }

    /// Parses a token for a stream of `partitions` partitions; the error says what is
    /// wrong, for a field violation on `page_token`.
    pub fn decode(token: &str, partitions: u32) -> Result<Self, String> {
        let bad = || "is not a token this service issued".to_owned();
        if !token.len().is_multiple_of(2) {
            return Err(bad());
        }
        let bytes = (0..token.len())
            .step_by(2)
            .map(|i| {
                token
                    .get(i..i + 2)
                    .and_then(|pair| u8::from_str_radix(pair, 16).ok())
            })
            .collect::<Option<Vec<u8>>>()
            .ok_or_else(bad)?;
        let plain = String::from_utf8(bytes).map_err(|_| bad())?;
        let mut parts = plain.splitn(4, '\n');
        let (Some(VERSION), Some(cursor), Some(fp), Some(after)) =
            (parts.next(), parts.next(), parts.next(), parts.next())
        else {
            return Err(bad());
        };
        let start = Cursor::parse_for(cursor, partitions).map_err(|_| bad())?;
        let fingerprint = u64::from_str_radix(fp, 16).map_err(|_| bad())?;
        Ok(PageToken {
            start,
            fingerprint,
            after: after.to_owned(),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use ratemesh_bus::EntryId;

    #[test]
    fn round_trips_and_rejects_garbage() {
        let mut start = Cursor::start(4);
        start.advance(2, EntryId::new(1_700_000_000_000, 3));
        let token = PageToken {
            start,
            fingerprint: fingerprint("", Some("toys")),
            after: "SKU-9".into(),
        };
        let text = token.encode();
        assert_eq!(PageToken::decode(&text, 4), Ok(token));
        assert!(
            PageToken::decode(&text, 2).is_err(),
            "partition count checked"
        );
        for garbage in ["", "zz", "0", "31", "310a"] {
            assert!(PageToken::decode(garbage, 4).is_err(), "{garbage}");
        }
    }

    #[test]
    fn fingerprint_tells_parameters_apart() {
        assert_ne!(fingerprint("", None), fingerprint("", Some("")));
        assert_ne!(fingerprint("a", None), fingerprint("", Some("a")));
        assert_eq!(fingerprint("c", Some("x")), fingerprint("c", Some("x")));
    }
}
