//! SSRF protection: which partner URLs may be called.
//!
//! Checked twice: when a partner is saved (the URL and what it resolves to now), and on
//! every connection, by the HTTP client's resolver ([`GuardedResolver`]), so a name that
//! later resolves to an internal address (DNS rebinding) is still refused. Only `http`
//! and `https` are allowed, `http` only when configured.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::sync::Arc;

use reqwest::Url;
use reqwest::dns::{Addrs, Name, Resolve, Resolving};

/// What the settings allow.
#[derive(Debug, Clone, Copy)]
pub(crate) struct DestinationPolicy {
    pub(crate) allow_private: bool,
    pub(crate) allow_plain_http: bool,
}

/// Why a URL is refused; the message names the problem for the caller.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub(crate) enum DestinationError {
    #[error("must be an absolute http(s) URL: {0}")]
    Malformed(String),
    #[error("scheme `{0}` is not allowed (use https)")]
    Scheme(String),
    #[error("must not carry credentials")]
    Credentials,
    // The address itself is not repeated: the message reaches partners, who must not learn
    // how internal names resolve.
    #[error("host {host} is or resolves to a private, loopback or link-local address")]
    Private { host: String },
    #[error("host {0} does not resolve")]
    Unresolvable(String),
}

impl DestinationPolicy {
    /// Parses and checks `url` without resolving it.
    pub(crate) fn parse(&self, url: &str) -> Result<Url, DestinationError> {
        let parsed =
            Url::parse(url.trim()).map_err(|e| DestinationError::Malformed(e.to_string()))?;
        match parsed.scheme() {
            "https" => {}
            "http" if self.allow_plain_http => {}
            other => return Err(DestinationError::Scheme(other.to_owned())),
        }
        if !parsed.username().is_empty() || parsed.password().is_some() {
            return Err(DestinationError::Credentials);
        }
        let host = parsed
            .host_str()
            .filter(|h| !h.is_empty())
            .ok_or_else(|| DestinationError::Malformed("no host".into()))?;
        // An IP literal never reaches the resolver, so check it here.
        if let Ok(ip) = host.trim_matches(['[', ']']).parse::<IpAddr>() {
            self.check_ip(host, ip)?;
        }
        Ok(parsed)
    }

    /// Parses, checks and resolves `url`; every address it resolves to must be allowed.
    pub(crate) async fn check(&self, url: &str) -> Result<Url, DestinationError> {
        let parsed = self.parse(url)?;
        let host = parsed.host_str().unwrap_or_default().to_owned();
        let port = parsed.port_or_known_default().unwrap_or(443);
        let addrs: Vec<SocketAddr> = tokio::net::lookup_host((host.trim_matches(['[', ']']), port))
            .await
            .map_err(|_| DestinationError::Unresolvable(host.clone()))?
            .collect();
        if addrs.is_empty() {
            return Err(DestinationError::Unresolvable(host));
        }
        for addr in addrs {
            self.check_ip(&host, addr.ip())?;
        }
        Ok(parsed)
    }

    fn check_ip(&self, host: &str, ip: IpAddr) -> Result<(), DestinationError> {
        if self.allow_private || is_public(ip) {
            Ok(())
        } else {
            // Operators see the address in the log; callers only learn that it is refused.
            tracing::info!(host, %ip, "partner destination refused: not a public address");
            Err(DestinationError::Private {
                host: host.to_owned(),
            })
        }
    }
}

/// Whether `ip` is a globally routable unicast address. An IPv6 address that carries an
/// IPv4 address (mapped, translated, NAT64, 6to4) is judged by the IPv4 address it
/// reaches, so `::ffff:0:127.0.0.1` is loopback like `127.0.0.1`.
pub(crate) fn is_public(ip: IpAddr) -> bool {
    match ip {
        IpAddr::V4(v4) => is_public_v4(v4),
        IpAddr::V6(v6) => {
            if let Some(v4) = embedded_v4(v6) {
                return is_public_v4(v4);
            }
            let segments = v6.segments();
            let first = segments[0];
            !(v6.is_loopback()
                || v6.is_unspecified()
                || v6.is_multicast()
                || (first & 0xfe00) == 0xfc00 // unique local fc00::/7
                || (first & 0xffc0) == 0xfe80 // link-local fe80::/10
                || (first & 0xffc0) == 0xfec0 // site-local fec0::/10 (deprecated)
                || segments[..6] == [0, 0, 0, 0, 0, 0] // IPv4-compatible (deprecated)
                || (first == 0x2001 && segments[1] == 0x0db8) // documentation
                || (first == 0x2001 && segments[1] == 0) // Teredo: tunnels to anywhere
                || (first == 0x0100 && segments[1..4] == [0, 0, 0])) // discard-only 100::/64
        }
    }
}

/// The IPv4 address an IPv6 address delivers to, for every form that embeds one:
/// IPv4-mapped `::ffff:0:0/96`, IPv4-translated `::ffff:0:0:0/96`, the NAT64 prefixes
/// `64:ff9b::/96` and `64:ff9b:1::/48`, and 6to4 `2002::/16`.
fn embedded_v4(v6: Ipv6Addr) -> Option<Ipv4Addr> {
    let s = v6.segments();
    let low = |hi: u16, lo: u16| Ipv4Addr::from((u32::from(hi) << 16) | u32::from(lo));
    match s {
        [0, 0, 0, 0, 0, 0xffff, hi, lo] => Some(low(hi, lo)),
        [0, 0, 0, 0, 0xffff, 0, hi, lo] => Some(low(hi, lo)),
        [0x0064, 0xff9b, 0, 0, 0, 0, hi, lo] => Some(low(hi, lo)),
        [0x0064, 0xff9b, 0x0001, _, _, _, hi, lo] => Some(low(hi, lo)),
        [0x2002, hi, lo, ..] => Some(low(hi, lo)),
        _ => None,
    }
}

fn is_public_v4(ip: Ipv4Addr) -> bool {
    let [a, b, ..] = ip.octets();
    !(ip.is_private()
        || ip.is_loopback()
        || ip.is_link_local()
        || ip.is_unspecified()
        || ip.is_broadcast()
        || ip.is_multicast()
        || ip.is_documentation()
        || a == 0 // "this network"
        || (a == 100 && (64..128).contains(&b)) // carrier-grade NAT 100.64/10
        || (a == 192 && b == 0 && ip.octets()[2] == 0) // IETF protocol assignments
        || (a == 198 && (b == 18 || b == 19)) // benchmarking
        || a >= 240) // reserved
}

/// The HTTP client's resolver: resolves with the system resolver and refuses names whose
/// addresses are not allowed, on every new connection.
#[derive(Debug, Clone)]
pub(crate) struct GuardedResolver {
    pub(crate) policy: DestinationPolicy,
}

impl Resolve for GuardedResolver {
    fn resolve(&self, name: Name) -> Resolving {
        let policy = self.policy;
        Box::pin(async move {
            let host = name.as_str().to_owned();
            let addrs: Vec<SocketAddr> =
                tokio::net::lookup_host((host.as_str(), 0)).await?.collect();
            for addr in &addrs {
                policy.check_ip(&host, addr.ip())?;
            }
            if addrs.is_empty() {
                return Err(DestinationError::Unresolvable(host).into());
            }
            let addrs: Addrs = Box::new(addrs.into_iter());
            Ok(addrs)
        })
    }
}

impl GuardedResolver {
    pub(crate) fn shared(policy: DestinationPolicy) -> Arc<GuardedResolver> {
        Arc::new(GuardedResolver { policy })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const STRICT: DestinationPolicy = DestinationPolicy {
        allow_private: false,
        allow_plain_http: false,
    };

    #[test]
    fn internal_addresses_are_not_public() {
        for ip in [
            "127.0.0.1",
            "10.1.2.3",
            "172.16.0.1",
            "192.168.1.1",
            "169.254.169.254",
            "0.0.0.0",
            "100.64.0.1",
            "::1",
            "fe80::1",
            "fd00::1",
            "::ffff:127.0.0.1",
            "::ffff:10.0.0.1",
            // IPv4-translated, NAT64 (well-known and local-use), 6to4 and IPv4-compatible
            // forms of loopback, private and metadata addresses.
            "::ffff:0:127.0.0.1",
            "::ffff:0:7f00:1",
            "::ffff:0:169.254.169.254",
            "64:ff9b::127.0.0.1",
            "64:ff9b::10.0.0.1",
            "64:ff9b:1::a9fe:a9fe",
            "2002:7f00:1::1",
            "2002:a00:1::",
            "2002:c0a8:101::1",
            "::127.0.0.1",
            "2001:0:4136:e378:8000:63bf:3fff:fdd2",
        ] {
            assert!(!is_public(ip.parse().expect("ip")), "{ip}");
        }
        for ip in [
            "93.184.216.34",
            "8.8.8.8",
            "2606:4700::1111",
            "64:ff9b::8.8.8.8",
            "2002:808:808::1",
            "::ffff:0:8.8.8.8",
        ] {
            assert!(is_public(ip.parse().expect("ip")), "{ip}");
        }
    }

    #[test]
    fn only_https_without_credentials_or_private_literals() {
        assert!(STRICT.parse("https://hooks.example.com/x").is_ok());
        assert!(matches!(
            STRICT.parse("http://hooks.example.com/x"),
            Err(DestinationError::Scheme(_))
        ));
        assert!(matches!(
            STRICT.parse("ftp://hooks.example.com/x"),
            Err(DestinationError::Scheme(_))
        ));
        assert!(matches!(
            STRICT.parse("https://u:p@hooks.example.com/"),
            Err(DestinationError::Credentials)
        ));
        assert!(matches!(
            STRICT.parse("https://169.254.169.254/latest"),
            Err(DestinationError::Private { .. })
        ));
        assert!(matches!(
            STRICT.parse("https://[::1]:8443/"),
            Err(DestinationError::Private { .. })
        ));
        let plain = DestinationPolicy {
            allow_private: false,
            allow_plain_http: true,
        };
        for url in [
            "http://[::ffff:0:127.0.0.1]/",
            "https://[::ffff:0:127.0.0.1]/",
            "https://[64:ff9b::a9fe:a9fe]/latest",
            "https://[2002:7f00:1::]/",
        ] {
            assert!(
                matches!(plain.parse(url), Err(DestinationError::Private { .. })),
                "{url}"
            );
        }
        let err = STRICT.parse("https://[::ffff:0:127.0.0.1]/").unwrap_err();
        assert!(!err.to_string().contains("127.0.0.1"), "{err}");
        assert!(matches!(
            STRICT.parse("not a url"),
            Err(DestinationError::Malformed(_))
        ));
        let open = DestinationPolicy {
            allow_private: true,
            allow_plain_http: true,
        };
        assert!(open.parse("http://127.0.0.1:8080/hook").is_ok());
    }

    #[tokio::test]
    async fn names_resolving_to_loopback_are_refused_without_naming_the_address() {
        let err = STRICT.check("https://localhost/hook").await.unwrap_err();
        assert!(matches!(err, DestinationError::Private { .. }));
        let message = err.to_string();
        assert!(
            !message.contains("127.0.0.1") && !message.contains("::1"),
            "{message}"
        );
    }
}
