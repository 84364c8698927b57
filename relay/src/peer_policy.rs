//! Which peer addresses the relay may send to. A TURN relay sends UDP from inside the
//! operator's network on behalf of anyone holding credentials; without this filter it would
//! reach the host's own services, the LAN and cloud metadata endpoints.

use serde::Deserialize;
use std::fmt;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::str::FromStr;

/// A CIDR range such as `10.0.0.0/8` or `fd00::/8` (a bare address is a /32 or /128).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct IpRange {
    network: IpAddr,
    prefix: u8,
}

/// A string that is not a CIDR range.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("`{0}` is not an IP range (expected e.g. 10.0.0.0/8 or fd00::/8)")]
pub struct IpRangeError(String);

impl IpRange {
    /// The range `network/prefix`; `None` when the prefix is longer than the address.
    pub fn new(network: IpAddr, prefix: u8) -> Option<Self> {
        let bits = match network {
            IpAddr::V4(_) => 32,
            IpAddr::V6(_) => 128,
        };
        (prefix <= bits).then_some(Self { network, prefix })
    }

    /// Whether `ip` is inside the range. An IPv4 range never contains an IPv6 address:
    /// callers map IPv4-mapped IPv6 addresses to IPv4 first ([`canonical`]).
    pub fn contains(&self, ip: IpAddr) -> bool {
        match (self.network, ip) {
            (IpAddr::V4(net), IpAddr::V4(ip)) => {
                let mask = u32::MAX
                    .checked_shl(32 - u32::from(self.prefix))
                    .unwrap_or(0);
                u32::from(net) & mask == u32::from(ip) & mask
            }
            (IpAddr::V6(net), IpAddr::V6(ip)) => {
                let mask = u128::MAX
                    .checked_shl(128 - u32::from(self.prefix))
                    .unwrap_or(0);
                u128::from(net) & mask == u128::from(ip) & mask
            }
            _ => false,
        }
    }
}

impl FromStr for IpRange {
    type Err = IpRangeError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let err = || IpRangeError(s.to_owned());
        let (addr, prefix) = match s.split_once('/') {
            Some((addr, prefix)) => (addr, Some(prefix)),
            None => (s, None),
        };
        let network: IpAddr = addr.trim().parse().map_err(|_| err())?;
        let prefix = match prefix {
            Some(p) => p.trim().parse::<u8>().map_err(|_| err())?,
            None if network.is_ipv4() => 32,
            None => 128,
        };
        Self::new(network, prefix).ok_or_else(err)
    }
}

impl fmt::Display for IpRange {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.network, self.prefix)
    }
}

impl<'de> Deserialize<'de> for IpRange {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        s.parse().map_err(serde::de::Error::custom)
    }
}

/// Why a peer address is refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Denied {
    /// 127.0.0.0/8 or ::1.
    Loopback,
    /// RFC 1918, RFC 6598 shared space, or a unique local IPv6 address (fc00::/7).
    Private,
    /// 169.254.0.0/16 or fe80::/10.
    LinkLocal,
    /// Multicast or broadcast.
    Multicast,
    /// 0.0.0.0/8, ::, or otherwise not a destination.
    Unspecified,
    /// Inside one of the configured `deny_peers` ranges.
    Configured,
}

/// Maps an IPv4-mapped IPv6 address (`::ffff:a.b.c.d`) to IPv4, so `::ffff:127.0.0.1` is
/// judged as the loopback address it reaches.
pub fn canonical(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
            Some(v4) => IpAddr::V4(v4),
            None => IpAddr::V6(v6),
        },
        v4 => v4,
    }
}

/// The filter applied to CreatePermission, ChannelBind and Send.
#[derive(Debug, Clone, Default)]
pub struct PeerPolicy {
    /// Let loopback peers through (tests).
    pub allow_loopback: bool,
    /// Ranges allowed whatever their kind.
    pub allow: Vec<IpRange>,
    /// Ranges refused besides the built-in ones.
    pub deny: Vec<IpRange>,
}

impl PeerPolicy {
    /// `Ok` when the relay may send to `ip`.
    pub fn check(&self, ip: IpAddr) -> Result<(), Denied> {
        let ip = canonical(ip);
        if self.allow.iter().any(|r| r.contains(ip)) {
            return Ok(());
        }
        if let Some(kind) = builtin_denial(ip) {
            if !(kind == Denied::Loopback && self.allow_loopback) {
                return Err(kind);
            }
        }
        if self.deny.iter().any(|r| r.contains(ip)) {
            return Err(Denied::Configured);
        }
        Ok(())
    }
}

fn builtin_denial(ip: IpAddr) -> Option<Denied> {
    match ip {
        IpAddr::V4(v4) => v4_denial(v4),
        IpAddr::V6(v6) => v6_denial(v6),
    }
}

fn v4_denial(ip: Ipv4Addr) -> Option<Denied> {
    let o = ip.octets();
    if ip.is_loopback() {
        Some(Denied::Loopback)
    } else if ip.is_unspecified() || o[0] == 0 {
        Some(Denied::Unspecified)
    } else if ip.is_private() || (o[0] == 100 && (o[1] & 0xc0) == 64) {
        // 100.64.0.0/10 is carrier-grade NAT space: as internal as RFC 1918 for the host.
        Some(Denied::Private)
    } else if ip.is_link_local() {
        Some(Denied::LinkLocal)
    } else if ip.is_multicast() || ip.is_broadcast() || o[0] >= 240 {
        // 240.0.0.0/4 is reserved; nothing legitimate lives there.
        Some(Denied::Multicast)
    } else {
        None
    }
}

fn v6_denial(ip: Ipv6Addr) -> Option<Denied> {
    if ip.is_loopback() {
        Some(Denied::Loopback)
    } else if ip.is_unspecified() {
        Some(Denied::Unspecified)
    } else if ip.is_unique_local() {
        Some(Denied::Private)
    } else if ip.is_unicast_link_local() {
        Some(Denied::LinkLocal)
    } else if ip.is_multicast() {
        Some(Denied::Multicast)
    } else if let Some(v4) = ip.to_ipv4() {
        // IPv4-compatible (::a.b.c.d, deprecated) and NAT64-less embeddings: judge the IPv4
        // address inside, so ::127.0.0.1 does not slip through.
        if ip.segments()[..6].iter().all(|s| *s == 0) {
            v4_denial(v4)
        } else {
            None
        }
    } else {
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ip(s: &str) -> IpAddr {
        s.parse().expect("test address")
    }

    #[test]
    fn builtin_ranges_are_refused() {
        let p = PeerPolicy::default();
        for (addr, why) in [
            ("127.0.0.1", Denied::Loopback),
            ("::1", Denied::Loopback),
            ("::ffff:127.0.0.1", Denied::Loopback),
            ("::127.0.0.1", Denied::Loopback),
            ("10.1.2.3", Denied::Private),
            ("172.16.0.1", Denied::Private),
            ("192.168.1.1", Denied::Private),
            ("100.64.0.1", Denied::Private),
            ("fd12::1", Denied::Private),
            ("169.254.169.254", Denied::LinkLocal),
            ("fe80::1", Denied::LinkLocal),
            ("224.0.0.1", Denied::Multicast),
            ("255.255.255.255", Denied::Multicast),
            ("ff02::1", Denied::Multicast),
            ("0.0.0.0", Denied::Unspecified),
            ("::", Denied::Unspecified),
        ] {
            assert_eq!(p.check(ip(addr)), Err(why), "{addr}");
        }
        for addr in ["192.0.2.1", "8.8.8.8", "2001:db8::1", "::ffff:8.8.8.8"] {
            assert_eq!(p.check(ip(addr)), Ok(()), "{addr}");
        }
    }

    #[test]
    fn flags_and_lists_change_the_verdict() {
        let p = PeerPolicy {
            allow_loopback: true,
            allow: vec!["10.1.0.0/16".parse().expect("range")],
            deny: vec!["203.0.113.0/24".parse().expect("range")],
        };
        assert_eq!(p.check(ip("127.0.0.1")), Ok(()));
        assert_eq!(p.check(ip("10.1.9.9")), Ok(()));
        assert_eq!(p.check(ip("10.2.0.1")), Err(Denied::Private));
        assert_eq!(p.check(ip("203.0.113.7")), Err(Denied::Configured));
        assert_eq!(p.check(ip("::ffff:203.0.113.7")), Err(Denied::Configured));
        assert_eq!(p.check(ip("192.168.0.1")), Err(Denied::Private));
    }

    #[test]
    fn ranges_parse_and_match() {
        let r: IpRange = "fc00::/7".parse().expect("range");
        assert!(r.contains(ip("fdff::1")));
        assert!(!r.contains(ip("fe00::1")));
        let all: IpRange = "0.0.0.0/0".parse().expect("range");
        assert!(all.contains(ip("8.8.8.8")));
        assert!(!all.contains(ip("::1")));
        let one: IpRange = "192.0.2.1".parse().expect("range");
        assert!(one.contains(ip("192.0.2.1")) && !one.contains(ip("192.0.2.2")));
        for bad in ["10.0.0.0/33", "x/8", "::/129", ""] {
            assert!(bad.parse::<IpRange>().is_err(), "{bad}");
        }
    }
}
