//! The largest QUIC packet worth trying towards a server, read from the route the kernel
//! would take to it: RFC 8899's largest packetization-layer MTU, which is never above what
//! the outgoing interface carries.
//!
//! quinn's path MTU discovery probes up to this ceiling. Towards the internet (Ethernet,
//! Wi-Fi, cellular: an MTU of 1,500 bytes or less) it is what quinn assumes without a route,
//! so a phone probes exactly as before. Over loopback or a jumbo-frame LAN it is larger, and a
//! bulk transfer costs both ends a fraction of the packets.

use std::net::SocketAddr;

/// UDP payload quinn assumes when the route is unknown: a 1,500-byte MTU less an IPv6 and a
/// UDP header.
pub(crate) const INTERNET_PAYLOAD: u16 = 1452;

/// The smallest UDP payload QUIC runs on (RFC 9000, section 14).
const MIN_PAYLOAD: u16 = 1200;

/// The largest UDP payload used on any route.
const MAX_PAYLOAD: u16 = missive_proto::MAX_UDP_PAYLOAD;

/// IP and UDP headers taken off a route's MTU: IPv6's 40 bytes and UDP's 8, so a 1,500-byte
/// route gives [`INTERNET_PAYLOAD`] for either IP version.
const IP_UDP_HEADERS: u32 = 48;

/// The ceiling for QUIC packets towards `server`: from the route's MTU where the platform
/// tells it, [`INTERNET_PAYLOAD`] where it does not.
pub(crate) fn payload_ceiling(server: SocketAddr) -> u16 {
    route_mtu(server)
        .map(ceiling_for_mtu)
        .unwrap_or(INTERNET_PAYLOAD)
}

/// The UDP payload a route of `mtu` bytes carries, within [`MIN_PAYLOAD`]..=[`MAX_PAYLOAD`].
fn ceiling_for_mtu(mtu: u32) -> u16 {
    let payload = mtu
        .saturating_sub(IP_UDP_HEADERS)
        .clamp(u32::from(MIN_PAYLOAD), u32::from(MAX_PAYLOAD));
    u16::try_from(payload).unwrap_or(MAX_PAYLOAD)
}

/// The MTU of the route to `server`, as a connected UDP socket reports it (`IP_MTU`). No
/// packet is sent: connecting a UDP socket only picks the route.
#[cfg(any(target_os = "linux", target_os = "android"))]
fn route_mtu(server: SocketAddr) -> Option<u32> {
    use std::net::{Ipv4Addr, Ipv6Addr};
    let local: SocketAddr = if server.is_ipv6() {
        (Ipv6Addr::UNSPECIFIED, 0).into()
    } else {
        (Ipv4Addr::UNSPECIFIED, 0).into()
    };
    let socket = std::net::UdpSocket::bind(local).ok()?;
    socket.connect(server).ok()?;
    if server.is_ipv6() {
        rustix::net::sockopt::ipv6_mtu(&socket).ok()
    } else {
        rustix::net::sockopt::ip_mtu(&socket).ok()
    }
}

/// Elsewhere the route's MTU is not read: quinn's default ceiling.
#[cfg(not(any(target_os = "linux", target_os = "android")))]
fn route_mtu(_server: SocketAddr) -> Option<u32> {
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_1500_byte_route_gives_what_quinn_assumes_and_larger_ones_are_capped() {
        assert_eq!(ceiling_for_mtu(1500), INTERNET_PAYLOAD);
        assert_eq!(ceiling_for_mtu(1280), 1232, "IPv6's minimum MTU");
        assert_eq!(
            ceiling_for_mtu(576),
            MIN_PAYLOAD,
            "never below QUIC's minimum"
        );
        assert_eq!(ceiling_for_mtu(0), MIN_PAYLOAD);
        assert_eq!(ceiling_for_mtu(1400), 1352, "a cellular link");
        assert_eq!(ceiling_for_mtu(9000), MAX_PAYLOAD, "jumbo frames");
        assert_eq!(ceiling_for_mtu(65536), MAX_PAYLOAD, "Linux loopback");
    }

    #[cfg(any(target_os = "linux", target_os = "android"))]
    #[test]
    fn loopback_reads_its_route_and_gets_the_capped_ceiling() {
        // Linux gives loopback a 65,536-byte MTU.
        let loopback = SocketAddr::from(([127, 0, 0, 1], 9));
        let mtu = route_mtu(loopback).expect("IP_MTU on loopback");
        assert!(mtu > u32::from(MAX_PAYLOAD), "loopback MTU {mtu}");
        assert_eq!(payload_ceiling(loopback), MAX_PAYLOAD);
    }
}
