//! Names of the streams the services share and of the consumer groups that read them.
//! A stream is written by one service and read by groups named after their reader.
//!
//! [`readers`] is the one table of who consumes what: each reading service starts one
//! consumer per stream of its [`Reader`], in its group, so the groups that exist in Redis
//! are exactly the ones listed here. The stream gauges ([`CONSUMED`]), `ratemesh streams`
//! and, through it, the Helm chart's autoscaling triggers are derived from the same table.

/// ERP stock and product changes (`StockChanged`, `ProductChanged`), written by ingest.
pub const STOCK: &str = "stock";
/// Published rate cards (`RateChanged`), written by rates.
pub const RATES: &str = "rates";
/// Merchandiser overrides (`OverrideChanged`), written by rates' `OverrideService`.
pub const OVERRIDES: &str = "overrides";
/// Flash-incentive transitions (`IncentiveChanged`), written by incentives.
pub const INCENTIVES: &str = "incentives";

/// Consumer groups, one per reading service.
pub mod groups {
    /// The rates service.
    pub const RATES: &str = "rates";
    /// The incentives service.
    pub const INCENTIVES: &str = "incentives";
    /// The notifier.
    pub const NOTIFIER: &str = "notifier";
}

/// A service that consumes streams: its consumer group and the streams it reads in it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Reader {
    /// The consumer group, the same on every stream the service reads.
    pub group: &'static str,
    /// The streams the service consumes, one consumer each.
    pub streams: &'static [&'static str],
}

/// What each reading service consumes. A service starts its consumers from its entry, so
/// adding a stream here is what makes the service read it.
pub mod readers {
    use super::{Reader, groups};

    /// The rates service: stock readings, overrides and incentive transitions re-price cards.
    pub const RATES: Reader = Reader {
        group: groups::RATES,
        streams: &[super::STOCK, super::OVERRIDES, super::INCENTIVES],
    };
    /// The incentives service: stock readings open and close incentives.
    pub const INCENTIVES: Reader = Reader {
        group: groups::INCENTIVES,
        streams: &[super::STOCK],
    };
    /// The notifier: rate cards and incentive transitions go out to partners.
    pub const NOTIFIER: Reader = Reader {
        group: groups::NOTIFIER,
        streams: &[super::RATES, super::INCENTIVES],
    };

    /// Every reading service's entry.
    pub const ALL: [Reader; 3] = [RATES, INCENTIVES, NOTIFIER];
}

/// Every (stream, group) pair the services consume through a consumer group: what the
/// stream gauges report and what autoscaling reads. Flattened from [`readers::ALL`]; the
/// length is checked when this compiles.
pub const CONSUMED: [(&str, &str); 6] = consumed(&readers::ALL);

/// The (stream, group) pairs of `readers`, in table order. Fails to compile (a panic in
/// const evaluation) unless there are exactly `N`.
const fn consumed<const N: usize>(readers: &[Reader]) -> [(&'static str, &'static str); N] {
    let mut out = [("", ""); N];
    let mut n = 0;
    let mut r = 0;
    while r < readers.len() {
        let mut s = 0;
        while s < readers[r].streams.len() {
            assert!(n < N, "CONSUMED is shorter than the readers' streams");
            out[n] = (readers[r].streams[s], readers[r].group);
            n += 1;
            s += 1;
        }
        r += 1;
    }
    assert!(n == N, "CONSUMED is longer than the readers' streams");
    out
}

#[cfg(test)]
mod tests {
    use std::collections::HashSet;

    use super::*;

    #[test]
    fn consumed_lists_every_stream_of_every_reader_once() {
        let expected: Vec<(&str, &str)> = readers::ALL
            .iter()
            .flat_map(|r| r.streams.iter().map(move |s| (*s, r.group)))
            .collect();
        assert_eq!(CONSUMED.to_vec(), expected);
        let unique: HashSet<_> = CONSUMED.iter().collect();
        assert_eq!(unique.len(), CONSUMED.len(), "a pair is listed twice");
    }

    #[test]
    fn each_reader_has_a_group_of_its_own_and_reads_only_known_streams() {
        let groups: HashSet<&str> = readers::ALL.iter().map(|r| r.group).collect();
        assert_eq!(groups.len(), readers::ALL.len());
        let known = [STOCK, RATES, OVERRIDES, INCENTIVES];
        for reader in readers::ALL {
            assert!(!reader.streams.is_empty(), "{} reads nothing", reader.group);
            for stream in reader.streams {
                assert!(known.contains(stream), "{} reads {stream}", reader.group);
            }
        }
    }

    #[test]
    fn incentives_reads_the_stock_stream_only() {
        // The rates stream has no `incentives` group: a trigger or gauge on it would fail
        // with NOGROUP.
        assert_eq!(readers::INCENTIVES.streams, &[STOCK]);
        assert!(!CONSUMED.contains(&(RATES, groups::INCENTIVES)));
    }
}
