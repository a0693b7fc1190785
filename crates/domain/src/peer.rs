//! Where a call comes from: the address that audit entries, usage figures
//! and the failed-authentication throttle are keyed on.
//!
//! It is the transport peer, unless that peer is one of the operator's
//! trusted proxies (`--trusted-proxies`, CIDR blocks): then it is the
//! rightmost address of `x-forwarded-for` that is not itself a trusted proxy
//! (the standard walk: each proxy appends the address it received the
//! connection from, and only addresses appended by trusted proxies can be
//! believed). A caller that is not a trusted proxy cannot choose its address
//! with the header. The header is read up to [`MAX_FORWARDED_LEN`] bytes and
//! [`MAX_HOPS`] addresses.
//!
//! One rule for the server (`--trusted-proxies`) and the interceptor
//! (`Settings::trusted_proxies`), which read it from gRPC metadata and from
//! HTTP headers.

use std::net::IpAddr;

use tonic::{codegen::http::HeaderMap, metadata::MetadataMap};

/// Most bytes of `x-forwarded-for` read.
pub const MAX_FORWARDED_LEN: usize = 1024;
/// Most addresses of `x-forwarded-for` walked.
pub const MAX_HOPS: usize = 32;
/// Most trusted proxy blocks.
pub const MAX_TRUSTED_PROXIES: usize = 64;

/// An address block, e.g. `10.0.0.0/8` or `fd00::/8`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Cidr {
    address: IpAddr,
    prefix: u8,
}

impl Cidr {
    /// Parses `a.b.c.d/n`, `x::/n`, or a bare address (a single host).
    pub fn parse(text: &str) -> Result<Cidr, String> {
        let text = text.trim();
        let (address, prefix) = match text.split_once('/') {
            Some((address, prefix)) => (address, Some(prefix)),
            None => (text, None),
        };
        let address: IpAddr = address
            .parse()
            .map_err(|_| format!("`{}` is not an IP address or CIDR block", truncate(text)))?;
        let max = if address.is_ipv4() { 32 } else { 128 };
        let prefix = match prefix {
            None => max,
            Some(prefix) => prefix
                .parse::<u8>()
                .ok()
                .filter(|prefix| *prefix <= max)
                .ok_or_else(|| format!("`{}` has an invalid prefix length", truncate(text)))?,
        };
        Ok(Cidr { address, prefix })
    }

    /// Whether `address` lies in the block.
    pub fn contains(&self, address: IpAddr) -> bool {
        match (self.address, address) {
            (IpAddr::V4(block), IpAddr::V4(address)) => {
                let mask = u32::MAX
                    .checked_shl(32 - u32::from(self.prefix))
                    .unwrap_or(0);
                u32::from(block) & mask == u32::from(address) & mask
            }
            (IpAddr::V6(block), IpAddr::V6(address)) => {
                let mask = u128::MAX
                    .checked_shl(128 - u32::from(self.prefix))
                    .unwrap_or(0);
                u128::from(block) & mask == u128::from(address) & mask
            }
            (IpAddr::V4(_), IpAddr::V6(address)) => address
                .to_ipv4_mapped()
                .is_some_and(|address| self.contains(IpAddr::V4(address))),
            (IpAddr::V6(_), IpAddr::V4(_)) => false,
        }
    }
}

fn truncate(text: &str) -> &str {
    crate::input::truncate(text, 64)
}

/// The proxies whose `x-forwarded-for` is believed.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct TrustedProxies(Vec<Cidr>);

impl TrustedProxies {
    /// Parses `10.0.0.0/8,fd00::/8,192.0.2.7` (empty: none).
    pub fn parse(text: &str) -> Result<TrustedProxies, String> {
        let blocks: Vec<Cidr> = text
            .split(',')
            .map(str::trim)
            .filter(|part| !part.is_empty())
            .map(Cidr::parse)
            .collect::<Result<_, _>>()?;
        if blocks.len() > MAX_TRUSTED_PROXIES {
            return Err(format!(
                "at most {MAX_TRUSTED_PROXIES} trusted proxy blocks"
            ));
        }
        Ok(TrustedProxies(blocks))
    }

    /// Whether `address` is a trusted proxy.
    pub fn trusts(&self, address: IpAddr) -> bool {
        self.0.iter().any(|block| block.contains(address))
    }

    /// The client's address: the transport `peer`, or, behind trusted
    /// proxies, the rightmost untrusted address they forwarded.
    pub fn client_address(&self, peer: Option<IpAddr>, metadata: &MetadataMap) -> Option<IpAddr> {
        self.client_behind(
            peer,
            metadata
                .get_all("x-forwarded-for")
                .iter()
                .map(|value| value.to_str().ok()),
        )
    }

    /// [`TrustedProxies::client_address`] from HTTP headers.
    pub fn client_address_in(&self, peer: Option<IpAddr>, headers: &HeaderMap) -> Option<IpAddr> {
        self.client_behind(
            peer,
            headers
                .get_all("x-forwarded-for")
                .iter()
                .map(|value| value.to_str().ok()),
        )
    }

    /// The walk, over every `x-forwarded-for` value (`None`: not text).
    fn client_behind<'a>(
        &self,
        peer: Option<IpAddr>,
        values: impl Iterator<Item = Option<&'a str>>,
    ) -> Option<IpAddr> {
        let peer = peer?;
        if !self.trusts(peer) {
            return Some(peer);
        }
        let mut forwarded: Vec<IpAddr> = Vec::new();
        for value in values {
            let Some(value) = value else {
                return Some(peer);
            };
            if value.len() > MAX_FORWARDED_LEN {
                return Some(peer);
            }
            for hop in value.split(',').map(str::trim) {
                if forwarded.len() == MAX_HOPS {
                    return Some(peer);
                }
                match hop.parse() {
                    Ok(address) => forwarded.push(address),
                    // One unreadable hop: nothing left of it can be believed.
                    Err(_) => forwarded.clear(),
                }
            }
        }
        let mut client = peer;
        for address in forwarded.into_iter().rev() {
            client = address;
            if !self.trusts(address) {
                break;
            }
        }
        Some(client)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ratelimit::throttle_key;

    fn metadata(forwarded: &[&str]) -> MetadataMap {
        let mut metadata = MetadataMap::new();
        for value in forwarded {
            metadata.append("x-forwarded-for", value.parse().expect("ascii"));
        }
        metadata
    }

    fn ip(text: &str) -> IpAddr {
        text.parse().expect("ip")
    }

    #[test]
    fn blocks_parse_and_contain() {
        let block = Cidr::parse("10.1.0.0/16").expect("cidr");
        assert!(block.contains(ip("10.1.200.3")));
        assert!(!block.contains(ip("10.2.0.1")));
        assert!(block.contains(ip("::ffff:10.1.0.9")));
        let v6 = Cidr::parse("fd00::/8").expect("cidr");
        assert!(v6.contains(ip("fd12::1")));
        assert!(!v6.contains(ip("fe80::1")));
        assert!(
            Cidr::parse("0.0.0.0/0")
                .expect("all")
                .contains(ip("192.0.2.1"))
        );
        assert!(
            Cidr::parse("192.0.2.7")
                .expect("host")
                .contains(ip("192.0.2.7"))
        );
        for bad in ["10.0.0.0/33", "nope", "::/129", "1.2.3.4/x"] {
            assert!(Cidr::parse(bad).is_err(), "{bad}");
        }
        assert!(TrustedProxies::parse(&vec!["10.0.0.1"; 65].join(",")).is_err());
    }

    #[test]
    fn http_headers_follow_the_same_walk_and_bounds() {
        let proxies = TrustedProxies::parse("10.0.0.0/8").expect("proxies");
        let headers = |value: &str| {
            let mut headers = HeaderMap::new();
            headers.append("x-forwarded-for", value.parse().expect("ascii"));
            headers
        };
        assert_eq!(
            proxies.client_address_in(
                Some(ip("10.0.0.5")),
                &headers("203.0.113.66, 198.51.100.9, 10.0.0.4")
            ),
            Some(ip("198.51.100.9"))
        );
        // Past 1 KiB or 32 hops nothing of it is believed: the proxy.
        let long = format!("{}198.51.100.9", " ".repeat(MAX_FORWARDED_LEN));
        assert_eq!(
            proxies.client_address_in(Some(ip("10.0.0.5")), &headers(&long)),
            Some(ip("10.0.0.5"))
        );
        let hops = vec!["198.51.100.9"; MAX_HOPS + 1].join(",");
        assert_eq!(
            proxies.client_address_in(Some(ip("10.0.0.5")), &headers(&hops)),
            Some(ip("10.0.0.5"))
        );
        // Not a proxy: the header is ignored.
        assert_eq!(
            proxies.client_address_in(Some(ip("192.0.2.1")), &headers("198.51.100.9")),
            Some(ip("192.0.2.1"))
        );
    }

    #[test]
    fn only_trusted_proxies_forward_addresses() {
        let proxies = TrustedProxies::parse("10.0.0.0/8").expect("proxies");
        // Not a proxy: the header is ignored.
        assert_eq!(
            proxies.client_address(Some(ip("192.0.2.1")), &metadata(&["198.51.100.9"])),
            Some(ip("192.0.2.1"))
        );
        // A proxy: the rightmost untrusted hop; a forged leftmost entry
        // (added by the client) is not believed.
        assert_eq!(
            proxies.client_address(
                Some(ip("10.0.0.5")),
                &metadata(&["203.0.113.66, 198.51.100.9, 10.0.0.4"])
            ),
            Some(ip("198.51.100.9"))
        );
        // Several header lines count as one list.
        assert_eq!(
            proxies.client_address(
                Some(ip("10.0.0.5")),
                &metadata(&["203.0.113.66", "198.51.100.9"])
            ),
            Some(ip("198.51.100.9"))
        );
        // Nothing forwarded: the proxy itself.
        assert_eq!(
            proxies.client_address(Some(ip("10.0.0.5")), &MetadataMap::new()),
            Some(ip("10.0.0.5"))
        );
        // Garbage and oversize headers are not believed.
        assert_eq!(
            proxies.client_address(Some(ip("10.0.0.5")), &metadata(&["not-an-ip"])),
            Some(ip("10.0.0.5"))
        );
        let long = vec!["198.51.100.1"; 100].join(",");
        assert_eq!(
            proxies.client_address(Some(ip("10.0.0.5")), &metadata(&[&long])),
            Some(ip("10.0.0.5"))
        );
        assert_eq!(
            TrustedProxies::default().client_address(None, &MetadataMap::new()),
            None
        );
    }

    #[test]
    fn ipv6_clients_share_their_64() {
        assert_eq!(
            throttle_key(ip("2001:db8:1:2:aaaa::1")),
            ip("2001:db8:1:2::")
        );
        assert_eq!(
            throttle_key(ip("2001:db8:1:2:bbbb::9")),
            ip("2001:db8:1:2::")
        );
        assert_eq!(throttle_key(ip("192.0.2.1")), ip("192.0.2.1"));
        assert_eq!(throttle_key(ip("::ffff:192.0.2.1")), ip("192.0.2.1"));
    }
}
