//! Batched UDP send: one `sendmmsg(2)` sends up to [`MAX_SLOTS`] datagrams, each to its own
//! address, from one socket.
//!
//! Why `unsafe` here: as for [`super::batch_recv`], neither tokio nor std nor socket2 exposes
//! `sendmmsg`, and quinn-udp's and nix's wrappers bring the costs listed there. The unsafe
//! part is one libc call on stack arrays that point into the caller's datagrams and into
//! socket2's encoded addresses; every pointer outlives the call and the kernel only reads
//! through them.

#![allow(unsafe_code)]

use std::io;
use std::mem::zeroed;
use std::net::SocketAddr;
use std::os::fd::AsRawFd;
use tokio::io::Interest;
use tokio::net::UdpSocket;

/// A datagram to send: where to and its bytes.
pub(crate) type Datagram = (SocketAddr, Vec<u8>);

/// Most datagrams one call sends; longer lists go out in several calls.
const MAX_SLOTS: usize = 64;

/// One non-blocking `sendmmsg` on `fd` with the first [`MAX_SLOTS`] of `datagrams`: how many
/// the kernel took (at least 1), `WouldBlock` when the socket buffer had no room for the
/// first, or the first datagram's own error (a later datagram's error is reported by the call
/// that starts with it, as `sendmmsg(2)` does).
fn send_raw(fd: &impl AsRawFd, datagrams: &[Datagram]) -> io::Result<usize> {
    let count = datagrams.len().min(MAX_SLOTS);
    if count == 0 {
        return Ok(0);
    }
    // socket2 encodes the addresses (the layout the kernel expects for the family).
    let names: Vec<socket2::SockAddr> = datagrams[..count]
        .iter()
        .map(|(to, _)| socket2::SockAddr::from(*to))
        .collect();
    // SAFETY: iovec and mmsghdr are plain old data; zeroes are valid (null pointers, 0
    // lengths) and every field the kernel reads is set below.
    let mut iovs: [libc::iovec; MAX_SLOTS] = unsafe { zeroed() };
    let mut hdrs: [libc::mmsghdr; MAX_SLOTS] = unsafe { zeroed() };
    for (i, ((_, data), name)) in datagrams.iter().zip(&names).enumerate() {
        iovs[i] = libc::iovec {
            // The kernel only reads from a send buffer; iovec has no const variant.
            iov_base: data.as_ptr().cast_mut().cast(),
            iov_len: data.len(),
        };
        let h = &mut hdrs[i].msg_hdr;
        h.msg_name = name.as_ptr().cast_mut().cast();
        h.msg_namelen = name.len();
        h.msg_iov = &mut iovs[i];
        h.msg_iovlen = 1;
    }
    loop {
        // SAFETY: `hdrs[..count]` point at `iovs`, `names` and the caller's datagrams, all
        // alive and unmodified for the duration of the call; the lengths given are theirs.
        // `sendmmsg` reads them and writes only `msg_len` of each header.
        let n = unsafe {
            libc::sendmmsg(
                fd.as_raw_fd(),
                hdrs.as_mut_ptr(),
                count as libc::c_uint,
                libc::MSG_DONTWAIT,
            )
        };
        if n > 0 {
            return Ok(n as usize);
        }
        if n == 0 {
            // Not documented for a non-empty vector; treat it as a full buffer rather than
            // spinning on it.
            return Err(io::ErrorKind::WouldBlock.into());
        }
        let e = io::Error::last_os_error();
        if e.kind() != io::ErrorKind::Interrupted {
            return Err(e);
        }
    }
}

/// Sends every datagram of `datagrams` from `sock`, in order, in as few system calls as the
/// kernel allows; waits for room when the socket buffer is full, so a burst slows its
/// sender instead of being dropped here. A datagram the kernel refuses (an unreachable
/// network, a peer's ICMP error reported late) is skipped: UDP errors concern one datagram.
pub(crate) async fn send(sock: &UdpSocket, datagrams: &[Datagram]) {
    let mut done = 0;
    while done < datagrams.len() {
        // `try_io` clears the writable readiness it saw on `WouldBlock`, so the `writable()`
        // below waits for the next event instead of returning at once.
        match sock.try_io(Interest::WRITABLE, || send_raw(sock, &datagrams[done..])) {
            Ok(n) => done += n,
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                if sock.writable().await.is_err() {
                    return; // the socket's reactor is gone (shutdown)
                }
            }
            Err(_) => done += 1,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    /// Reads datagrams from `rx` until `want` came or 5 s passed: (source, bytes) in order.
    fn read_all(rx: &std::net::UdpSocket, want: usize) -> Vec<(SocketAddr, Vec<u8>)> {
        rx.set_read_timeout(Some(Duration::from_secs(5)))
            .expect("timeout");
        let mut got = Vec::new();
        let mut buf = [0u8; 2048];
        while got.len() < want {
            let (n, from) = rx.recv_from(&mut buf).expect("datagram within 5 s");
            got.push((from, buf[..n].to_vec()));
        }
        got
    }

    #[tokio::test]
    async fn sends_more_than_one_call_takes_in_order_to_each_address() {
        let tx = UdpSocket::bind("127.0.0.1:0").await.expect("bind");
        let a = std::net::UdpSocket::bind("127.0.0.1:0").expect("bind");
        let b = std::net::UdpSocket::bind("127.0.0.1:0").expect("bind");
        let (to_a, to_b) = (a.local_addr().expect("addr"), b.local_addr().expect("addr"));
        // More than one call's worth, alternating destinations, distinct lengths and bytes.
        let total = MAX_SLOTS + 7;
        let datagrams: Vec<(SocketAddr, Vec<u8>)> = (0..total)
            .map(|i| {
                let to = if i % 2 == 0 { to_a } else { to_b };
                (to, vec![i as u8; 1 + i % 13])
            })
            .collect();
        send(&tx, &datagrams).await;
        let from = tx.local_addr().expect("addr");
        let want = |dest: SocketAddr| -> Vec<(SocketAddr, Vec<u8>)> {
            datagrams
                .iter()
                .filter(|(to, _)| *to == dest)
                .map(|(_, d)| (from, d.clone()))
                .collect()
        };
        assert_eq!(read_all(&a, total.div_ceil(2)), want(to_a));
        assert_eq!(read_all(&b, total / 2), want(to_b));
    }

    #[tokio::test]
    async fn one_call_takes_at_most_the_slots_and_reports_how_many() {
        let tx = std::net::UdpSocket::bind("127.0.0.1:0").expect("bind");
        let rx = std::net::UdpSocket::bind("127.0.0.1:0").expect("bind");
        let to = rx.local_addr().expect("addr");
        let datagrams: Vec<(SocketAddr, Vec<u8>)> =
            (0..MAX_SLOTS + 3).map(|i| (to, vec![i as u8; 4])).collect();
        assert_eq!(send_raw(&tx, &datagrams).expect("send"), MAX_SLOTS);
        assert_eq!(send_raw(&tx, &datagrams[..0]).expect("empty"), 0);
        let got = read_all(&rx, MAX_SLOTS);
        assert_eq!(got.last().map(|(_, d)| d[0]), Some((MAX_SLOTS - 1) as u8));
    }

    #[tokio::test]
    async fn a_refused_datagram_is_skipped_and_the_rest_still_go() {
        let tx = UdpSocket::bind("127.0.0.1:0").await.expect("bind");
        let rx = std::net::UdpSocket::bind("127.0.0.1:0").expect("bind");
        let to = rx.local_addr().expect("addr");
        // Port 0 is no destination: the kernel refuses that one datagram with EINVAL.
        let bad: SocketAddr = "127.0.0.1:0".parse().expect("addr");
        let datagrams = vec![(to, vec![1]), (bad, vec![2]), (to, vec![3])];
        tokio::time::timeout(Duration::from_secs(5), send(&tx, &datagrams))
            .await
            .expect("within 5 s");
        let got: Vec<Vec<u8>> = read_all(&rx, 2).into_iter().map(|(_, d)| d).collect();
        assert_eq!(got, vec![vec![1], vec![3]]);
    }
}
