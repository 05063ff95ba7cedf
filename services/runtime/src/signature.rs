//! The `Ratemesh-Signature` scheme (DESIGN §4.2, §4.3), used for ERP webhooks in and partner
//! webhooks out.
//!
//! `Ratemesh-Signature: t=<unix seconds>,v1=<hex HMAC-SHA256(secret, "<t>.<raw body>")>`.
//! Several `v1=` may be sent while a secret is being rotated; any one matching any current
//! secret is enough. Timestamps outside the tolerance are refused as replays. Comparison
//! is constant-time.

use hmac::{Hmac, KeyInit, Mac};
use sha2::Sha256;

/// The header carrying the signature.
pub const SIGNATURE_HEADER: &str = "ratemesh-signature";

/// Why a signature was refused. The messages are safe to return to the sender.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SignatureError {
    /// No `Ratemesh-Signature` header.
    #[error("missing Ratemesh-Signature header")]
    Missing,
    /// The header is not `t=<unix seconds>,v1=<hex>[,v1=<hex>…]`.
    #[error("malformed Ratemesh-Signature header: {0}")]
    Malformed(&'static str),
    /// The timestamp is further from now than the tolerance.
    #[error(
        "signature timestamp is {age_secs} s away from server time (tolerance {tolerance_secs} s); re-sign the request with the current time"
    )]
    Expired {
        /// Signed time minus now, in seconds.
        age_secs: i64,
        /// The allowed distance.
        tolerance_secs: u64,
    },
    /// No `v1` matched any current secret.
    #[error("signature does not match the body under any current secret")]
    Mismatch,
}

/// Signs `body` at `timestamp` with `secret`: the value for the `Ratemesh-Signature` header.
pub fn sign(secret: &[u8], timestamp: i64, body: &[u8]) -> String {
    format!(
        "t={timestamp},v1={}",
        hex::encode(mac(secret, timestamp, body))
    )
}

/// Signs `body` with each of `secrets` (e.g. the old and the new one during a rotation).
pub fn sign_many<'a>(
    secrets: impl IntoIterator<Item = &'a [u8]>,
    timestamp: i64,
    body: &[u8],
) -> String {
    let mut header = format!("t={timestamp}");
    for secret in secrets {
        header.push_str(",v1=");
        header.push_str(&hex::encode(mac(secret, timestamp, body)));
    }
    header
}

fn hmac_for(secret: &[u8], timestamp: i64, body: &[u8]) -> Hmac<Sha256> {
    // HMAC takes keys of any length; `new_from_slice` cannot fail for it.
    let mut mac = <Hmac<Sha256> as KeyInit>::new_from_slice(secret)
        .unwrap_or_else(|_| unreachable!("hmac accepts keys of any length"));
    mac.update(timestamp.to_string().as_bytes());
    mac.update(b".");
    mac.update(body);
    mac
}

fn mac(secret: &[u8], timestamp: i64, body: &[u8]) -> Vec<u8> {
    hmac_for(secret, timestamp, body)
        .finalize()
        .into_bytes()
        .to_vec()
}

/// A parsed header.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ParsedSignature {
    /// The signed unix time.
    pub timestamp: i64,
    /// Every `v1` signature, decoded.
    pub signatures: Vec<Vec<u8>>,
}

/// Parses `t=…,v1=…[,v1=…]`. Unknown schemes (`v0=`, `v2=`) are ignored so senders can add
/// new ones ahead of receivers.
pub fn parse(header: &str) -> Result<ParsedSignature, SignatureError> {
    let mut timestamp = None;
    let mut signatures = Vec::new();
    for part in header.split(',') {
        let (key, value) = part
            .trim()
            .split_once('=')
            .ok_or(SignatureError::Malformed(
                "expected comma-separated key=value pairs",
            ))?;
        match key {
            "t" => {
                if timestamp.is_some() {
                    return Err(SignatureError::Malformed("t= given twice"));
                }
                timestamp = Some(
                    value
                        .parse::<i64>()
                        .map_err(|_| SignatureError::Malformed("t= must be unix seconds"))?,
                );
            }
            "v1" => {
                let bytes =
                    hex::decode(value).map_err(|_| SignatureError::Malformed("v1= must be hex"))?;
                if bytes.len() != 32 {
                    return Err(SignatureError::Malformed("v1= must be 64 hex characters"));
                }
                if signatures.len() >= 8 {
                    return Err(SignatureError::Malformed("at most 8 v1= signatures"));
                }
                signatures.push(bytes);
            }
            _ => {}
        }
    }
    let timestamp = timestamp.ok_or(SignatureError::Malformed("missing t="))?;
    if signatures.is_empty() {
        return Err(SignatureError::Malformed("missing v1="));
    }
    Ok(ParsedSignature {
        timestamp,
        signatures,
    })
}

/// Checks what a header says without the body: its form and that its timestamp is within
/// `tolerance_secs` of `now`. A receiver calls this before reading a body, so a request that
/// can never verify is refused before it costs a buffer or a slot.
pub fn check_header(
    header: Option<&str>,
    now: i64,
    tolerance_secs: u64,
) -> Result<ParsedSignature, SignatureError> {
    let parsed = parse(header.ok_or(SignatureError::Missing)?)?;
    let age = parsed.timestamp.saturating_sub(now);
    if age.unsigned_abs() > tolerance_secs {
        return Err(SignatureError::Expired {
            age_secs: age,
            tolerance_secs,
        });
    }
    Ok(parsed)
}

/// Verifies a body as it arrives, chunk by chunk, so the receiver never has to hold a body
/// it has not verified in order to verify it.
pub struct StreamingVerifier {
    signatures: Vec<Vec<u8>>,
    macs: Vec<Hmac<Sha256>>,
}

impl std::fmt::Debug for StreamingVerifier {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("StreamingVerifier")
            .field("secrets", &self.macs.len())
            .finish_non_exhaustive()
    }
}

impl StreamingVerifier {
    /// A verifier of `parsed` (from [`check_header`]) against each of `secrets`.
    pub fn new<'a>(parsed: ParsedSignature, secrets: impl IntoIterator<Item = &'a [u8]>) -> Self {
        let macs = secrets
            .into_iter()
            .map(|secret| hmac_for(secret, parsed.timestamp, b""))
            .collect();
        Self {
            signatures: parsed.signatures,
            macs,
        }
    }

    /// Feeds the next chunk of the body.
    pub fn update(&mut self, chunk: &[u8]) {
        for mac in &mut self.macs {
            mac.update(chunk);
        }
    }

    /// The index of the first secret under which a `v1` matches the whole body.
    pub fn finish(self) -> Result<usize, SignatureError> {
        for (index, mac) in self.macs.into_iter().enumerate() {
            for candidate in &self.signatures {
                // `verify_slice` compares in constant time.
                if mac.clone().verify_slice(candidate).is_ok() {
                    return Ok(index);
                }
            }
        }
        Err(SignatureError::Mismatch)
    }
}

/// Verifies `header` for `body` against `secrets` at time `now` (unix seconds). Returns the
/// index of the secret that matched.
pub fn verify<'a>(
    header: Option<&str>,
    body: &[u8],
    secrets: impl IntoIterator<Item = &'a [u8]>,
    now: i64,
    tolerance_secs: u64,
) -> Result<usize, SignatureError> {
    let parsed = check_header(header, now, tolerance_secs)?;
    let mut verifier = StreamingVerifier::new(parsed, secrets);
    verifier.update(body);
    verifier.finish()
}

#[cfg(test)]
mod tests {
    use super::*;

    const NOW: i64 = 1_764_300_000;

    #[test]
    fn a_signed_body_verifies() {
        let header = sign(b"s3cret", NOW, b"{\"updates\":[]}");
        assert_eq!(
            verify(
                Some(&header),
                b"{\"updates\":[]}",
                [b"s3cret".as_slice()],
                NOW + 10,
                300
            ),
            Ok(0)
        );
    }

    #[test]
    fn the_format_is_the_documented_one() {
        // Computed independently: printf '1.{}' | openssl dgst -sha256 -hmac key
        assert_eq!(
            sign(b"key", 1, b"{}"),
            "t=1,v1=1ba6b8171186efc613e8bcc0cbdab2748f24984d7c5a84faa2637afa0e40d224"
        );
    }

    #[test]
    fn a_changed_body_or_wrong_secret_is_a_mismatch() {
        let header = sign(b"s3cret", NOW, b"body");
        assert_eq!(
            verify(Some(&header), b"bodY", [b"s3cret".as_slice()], NOW, 300),
            Err(SignatureError::Mismatch)
        );
        assert_eq!(
            verify(Some(&header), b"body", [b"other".as_slice()], NOW, 300),
            Err(SignatureError::Mismatch)
        );
    }

    #[test]
    fn old_and_future_timestamps_are_replays() {
        let header = sign(b"k", NOW - 301, b"body");
        assert!(matches!(
            verify(Some(&header), b"body", [b"k".as_slice()], NOW, 300),
            Err(SignatureError::Expired { age_secs: -301, .. })
        ));
        let header = sign(b"k", NOW + 400, b"body");
        assert!(matches!(
            verify(Some(&header), b"body", [b"k".as_slice()], NOW, 300),
            Err(SignatureError::Expired { .. })
        ));
    }

    #[test]
    fn rotation_accepts_either_secret_and_any_v1() {
        let header = sign_many([b"old".as_slice(), b"new".as_slice()], NOW, b"body");
        assert_eq!(
            verify(Some(&header), b"body", [b"new".as_slice()], NOW, 300),
            Ok(0)
        );
        assert_eq!(
            verify(Some(&header), b"body", [b"old".as_slice()], NOW, 300),
            Ok(0)
        );
        let header = sign(b"new", NOW, b"body");
        assert_eq!(
            verify(
                Some(&header),
                b"body",
                [b"old".as_slice(), b"new".as_slice()],
                NOW,
                300
            ),
            Ok(1)
        );
    }

    #[test]
    fn a_body_verified_in_chunks_matches_the_whole() {
        let body = b"{\"updates\":[{\"sku\":\"A\"}]}";
        let header = sign(b"new", NOW, body);
        let parsed = check_header(Some(&header), NOW, 300).expect("well formed");
        let mut verifier =
            StreamingVerifier::new(parsed.clone(), [b"old".as_slice(), b"new".as_slice()]);
        for chunk in body.chunks(3) {
            verifier.update(chunk);
        }
        assert_eq!(verifier.finish(), Ok(1));
        let mut verifier = StreamingVerifier::new(parsed, [b"new".as_slice()]);
        verifier.update(&body[..body.len() - 1]);
        assert_eq!(verifier.finish(), Err(SignatureError::Mismatch));
    }

    #[test]
    fn malformed_headers_say_what_is_wrong() {
        for header in [
            "",
            "t=abc,v1=00",
            "v1=00",
            "t=1",
            "t=1,v1=zz",
            "t=1,v1=abcd",
            "garbage",
        ] {
            assert!(
                matches!(
                    verify(Some(header), b"", [b"k".as_slice()], 1, 300),
                    Err(SignatureError::Malformed(_))
                ),
                "{header:?}"
            );
        }
        assert_eq!(
            verify(None, b"", [b"k".as_slice()], 1, 300),
            Err(SignatureError::Missing)
        );
    }
}
