//! Binding relay sockets on the relay address within the configured port range.

use socket2::{Domain, Protocol, Socket, Type};
use std::io;
use std::net::{IpAddr, SocketAddr, UdpSocket};

/// Hands out relay sockets, walking the port range from a cursor so a freed port is not
/// reused at once (a late datagram for the old allocation would reach the new one).
#[derive(Debug)]
pub(crate) struct PortRange {
    ip: IpAddr,
    /// Receive/send buffer asked for each relay socket.
    buffer: Option<usize>,
    min: u16,
    max: u16,
    next: u16,
}

impl PortRange {
    /// `start` picks where the walk begins (random at boot, so ports are not predictable).
    /// Relay sockets get `buffer` bytes of socket buffer when given.
    pub(crate) fn new(ip: IpAddr, min: u16, max: u16, start: u16, buffer: Option<usize>) -> Self {
        let span = u32::from(max - min) + 1;
        let next = min + (u32::from(start) % span) as u16;
        Self {
            ip,
            buffer,
            min,
            max,
            next,
        }
    }

    /// Binds a non-blocking UDP socket on the next free port (an even one if `even`).
    /// `None` when every port of the range is taken.
    pub(crate) fn bind(&mut self, even: bool) -> Option<(UdpSocket, SocketAddr)> {
        let span = u32::from(self.max - self.min) + 1;
        for _ in 0..span {
            let port = self.next;
            self.next = if self.next >= self.max {
                self.min
            } else {
                self.next + 1
            };
            if even && !port.is_multiple_of(2) {
                continue;
            }
            let addr = SocketAddr::new(self.ip, port);
            // Taken ports (EADDRINUSE) and ports we may not use (EACCES) are skipped alike.
            if let Ok(sock) = bind_udp(addr, self.buffer, false) {
                return Some((sock, addr));
            }
        }
        None
    }
}

/// A non-blocking UDP socket bound to `addr`, with `buffer` bytes of receive and send
/// buffer when given (the kernel may clamp them to `net.core.{r,w}mem_max`), in a
/// `SO_REUSEPORT` group with the other sockets of this process bound so when `reuse_port`.
pub(crate) fn bind_udp(
    addr: SocketAddr,
    buffer: Option<usize>,
    reuse_port: bool,
) -> io::Result<UdpSocket> {
    let domain = if addr.is_ipv4() {
        Domain::IPV4
    } else {
        Domain::IPV6
    };
    let sock = Socket::new(domain, Type::DGRAM, Some(Protocol::UDP))?;
    if addr.is_ipv6() {
        // An IPv6 relay address serves IPv6 peers only; dual-stack would let an IPv4-mapped
        // peer through a socket the policy judged as IPv6.
        sock.set_only_v6(true)?;
    }
    if let Some(bytes) = buffer {
        // Best effort: a smaller buffer than asked is not a reason to refuse to start.
        let _ = sock.set_recv_buffer_size(bytes);
        let _ = sock.set_send_buffer_size(bytes);
    }
    if reuse_port {
        sock.set_reuse_port(true)?;
    }
    sock.set_nonblocking(true)?;
    sock.bind(&addr.into())?;
    Ok(sock.into())
}

/// A non-blocking TCP listener on `addr` (`SO_REUSEADDR`, so a restart does not wait for
/// the previous run's connections in TIME_WAIT; never `SO_REUSEPORT`, so a second relay on
/// the same port fails to start instead of sharing it).
pub(crate) fn bind_tcp(addr: SocketAddr) -> io::Result<std::net::TcpListener> {
    let domain = if addr.is_ipv4() {
        Domain::IPV4
    } else {
        Domain::IPV6
    };
    let sock = Socket::new(domain, Type::STREAM, Some(Protocol::TCP))?;
    if addr.is_ipv6() {
        sock.set_only_v6(true)?;
    }
    sock.set_reuse_address(true)?;
    sock.set_nonblocking(true)?;
    sock.bind(&addr.into())?;
    sock.listen(1024)?;
    Ok(sock.into())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn walks_the_range_and_honours_even() {
        let ip: IpAddr = "127.0.0.1".parse().expect("ip");
        // Find a run of 4 free ports by letting the OS pick one and trying around it.
        let probe = UdpSocket::bind("127.0.0.1:0").expect("bind");
        let base = probe.local_addr().expect("addr").port();
        drop(probe);
        let (min, max) = (base & !1, (base & !1) + 3);
        let mut range = PortRange::new(ip, min, max, 0, None);
        let mut held = Vec::new();
        while let Some((sock, addr)) = range.bind(true) {
            assert_eq!(addr.port() % 2, 0);
            assert!((min..=max).contains(&addr.port()));
            held.push(sock);
            if held.len() > 4 {
                break;
            }
        }
        // At most the two even ports (fewer if another process holds one).
        assert!(held.len() <= 2, "{}", held.len());
    }
}
