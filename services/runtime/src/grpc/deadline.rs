//! The deadline a caller sent: the `grpc-timeout` request header.

use std::time::Duration;

/// The header carrying the caller's timeout.
pub(crate) const GRPC_TIMEOUT: &str = "grpc-timeout";

/// The timeout in a `grpc-timeout` value: 1 to 8 ASCII digits and a unit (`H`ours,
/// `M`inutes, `S`econds, `m`illiseconds, `u`microseconds, `n`anoseconds), per the gRPC
/// HTTP/2 spec. Anything else is `None`: the layer then makes no deadline decision and
/// leaves the header to tonic.
pub(crate) fn parse_grpc_timeout(value: &[u8]) -> Option<Duration> {
    let (unit, digits) = value.split_last()?;
    if digits.is_empty() || digits.len() > 8 || !digits.iter().all(u8::is_ascii_digit) {
        return None;
    }
    // At most 8 digits: no overflow, even in hours.
    let n = digits
        .iter()
        .fold(0u64, |n, d| n * 10 + u64::from(d - b'0'));
    Some(match unit {
        b'H' => Duration::from_secs(n * 3600),
        b'M' => Duration::from_secs(n * 60),
        b'S' => Duration::from_secs(n),
        b'm' => Duration::from_millis(n),
        b'u' => Duration::from_micros(n),
        b'n' => Duration::from_nanos(n),
        _ => return None,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_unit_is_understood() {
        let cases = [
            ("2H", Duration::from_secs(7200)),
            ("3M", Duration::from_secs(180)),
            ("10S", Duration::from_secs(10)),
            ("250m", Duration::from_millis(250)),
            ("1500u", Duration::from_micros(1500)),
            ("999n", Duration::from_nanos(999)),
            ("0m", Duration::ZERO),
            ("00000007S", Duration::from_secs(7)),
            ("99999999H", Duration::from_secs(99_999_999 * 3600)),
        ];
        for (value, expected) in cases {
            assert_eq!(
                parse_grpc_timeout(value.as_bytes()),
                Some(expected),
                "{value}"
            );
        }
    }

    #[test]
    fn malformed_values_are_ignored() {
        for value in [
            "",
            "m",
            "S",
            "10",
            "10s",
            "10x",
            "123456789m",
            "-5m",
            "+5m",
            " 5m",
            "5 m",
            "5.0S",
            "5mm",
            "١٢m",
            "0xAm",
        ] {
            assert_eq!(parse_grpc_timeout(value.as_bytes()), None, "{value:?}");
        }
    }
}
