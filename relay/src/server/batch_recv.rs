//! Batched UDP receive: one `recvmmsg(2)` reads up to [`RecvBatch::slots`] datagrams.
//!
//! Why `unsafe` here (the crate is otherwise `deny(unsafe_code)`): neither tokio nor std
//! nor socket2 exposes `recvmmsg`, and the crates that do were a worse fit: quinn-udp's
//! `UdpSocketState` turns on `UDP_GRO` (a NIC may then hand one 64 KiB coalesced buffer to a
//! small slot and truncate it) and sets the don't-fragment bit on every socket, which a
//! relay must not impose on its peers; nix's `recvmmsg` ties buffers and results to one
//! lifetime, so buffers cannot be reused across calls without allocating. The unsafe part
//! is one libc call on stack arrays that point into `self.buf`, plus reading the kernel's
//! `sockaddr_storage` as the family it names; every pointer outlives the call.
//!
//! Profile (2026-12-04, `perf record -g` on relayd under 4 x `turnutils_uclient -y`): 88 %
//! of the relay's CPU is in the kernel, 17 % in `recvfrom` alone, and on a per-allocation
//! socket half of those calls only learn `EAGAIN`. A batch that comes back short proves
//! the queue was empty, so [`recv`] tells tokio so without that extra call.

#![allow(unsafe_code)]

use std::io;
use std::mem::{size_of, zeroed, MaybeUninit};
use std::net::{Ipv4Addr, Ipv6Addr, SocketAddr, SocketAddrV4, SocketAddrV6};
use std::os::fd::AsRawFd;
use tokio::io::Interest;
use tokio::net::UdpSocket;

/// Most datagrams one call reads.
pub(crate) const MAX_SLOTS: usize = 32;

/// Reusable buffers for [`recv`]: `slots` datagrams of at most `slot` bytes each (longer
/// ones are truncated by the kernel).
pub(crate) struct RecvBatch {
    slots: usize,
    slot: usize,
    buf: Vec<u8>,
    names: Vec<libc::sockaddr_storage>,
    lens: [usize; MAX_SLOTS],
    count: usize,
}

impl RecvBatch {
    /// Buffers for `slots` (1..=[`MAX_SLOTS`]) datagrams of `slot` bytes.
    pub(crate) fn new(slots: usize, slot: usize) -> Self {
        let slots = slots.clamp(1, MAX_SLOTS);
        Self {
            slots,
            slot,
            buf: vec![0; slots * slot],
            // SAFETY: sockaddr_storage is plain old data; all zeroes is a valid value.
            names: (0..slots).map(|_| unsafe { zeroed() }).collect(),
            lens: [0; MAX_SLOTS],
            count: 0,
        }
    }

    /// Datagrams read by the last call.
    #[cfg(test)]
    pub(crate) fn len(&self) -> usize {
        self.count
    }

    /// Datagram `i` of the last call: its source and bytes. `None` past [`RecvBatch::len`]
    /// or for a source that is neither IPv4 nor IPv6.
    pub(crate) fn get(&self, i: usize) -> Option<(SocketAddr, &[u8])> {
        if i >= self.count {
            return None;
        }
        let from = decode(&self.names[i])?;
        let start = i * self.slot;
        Some((from, &self.buf[start..start + self.lens[i]]))
    }

    /// One non-blocking `recvmmsg` on `fd`: the number of datagrams read (at least 1), or
    /// `WouldBlock` when none was waiting.
    fn recv_raw(&mut self, fd: &impl AsRawFd) -> io::Result<usize> {
        self.count = 0;
        // SAFETY: iovec and mmsghdr are plain old data; zeroes are valid (null pointers, 0
        // lengths) and every field the kernel reads is set below.
        let mut iovs: [libc::iovec; MAX_SLOTS] = unsafe { zeroed() };
        let mut hdrs: [libc::mmsghdr; MAX_SLOTS] = unsafe { zeroed() };
        for (i, chunk) in self.buf.chunks_mut(self.slot).take(self.slots).enumerate() {
            iovs[i] = libc::iovec {
                iov_base: chunk.as_mut_ptr().cast(),
                iov_len: chunk.len(),
            };
            let h = &mut hdrs[i].msg_hdr;
            h.msg_name = (&mut self.names[i] as *mut libc::sockaddr_storage).cast();
            h.msg_namelen = size_of::<libc::sockaddr_storage>() as libc::socklen_t;
            h.msg_iov = &mut iovs[i];
            h.msg_iovlen = 1;
        }
        let n = loop {
            // SAFETY: `hdrs[..slots]` point at `iovs`, `self.names` and `self.buf`, all alive
            // and not otherwise borrowed for the duration of the call; the lengths given are
            // the lengths of those buffers.
            let n = unsafe {
                libc::recvmmsg(
                    fd.as_raw_fd(),
                    hdrs.as_mut_ptr(),
                    self.slots as libc::c_uint,
                    libc::MSG_DONTWAIT,
                    std::ptr::null_mut(),
                )
            };
            if n >= 0 {
                break n as usize;
            }
            let e = io::Error::last_os_error();
            if e.kind() != io::ErrorKind::Interrupted {
                return Err(e);
            }
        };
        if n == 0 {
            return Err(io::ErrorKind::WouldBlock.into());
        }
        for (i, h) in hdrs.iter().take(n).enumerate() {
            self.lens[i] = (h.msg_len as usize).min(self.slot);
        }
        self.count = n;
        Ok(n)
    }
}

/// Waits until `sock` has datagrams and reads a batch of them into `batch`; returns how many
/// (at least 1). A batch shorter than the slots proves the queue was empty, so readiness is
/// cleared then, saving the `recvmmsg` that would only have said `EAGAIN`; a packet that
/// arrives meanwhile raises readiness again (tokio clears only the readiness it saw).
pub(crate) async fn recv(sock: &UdpSocket, batch: &mut RecvBatch) -> io::Result<usize> {
    loop {
        sock.readable().await?;
        let mut got = 0;
        // Reporting `WouldBlock` for a short batch makes `try_io` clear the readable
        // readiness without another call. That cannot lose a datagram that arrives after
        // `recvmmsg` returned: tokio (runtime/io/registration.rs `try_io`,
        // scheduled_io.rs `set_readiness`) snapshots the readiness with its tick before
        // calling us and clears it only if the tick is unchanged (`Tick::Clear(t)` is a no-op
        // when the driver has stored a newer event since). A datagram that arrives later
        // makes a new epoll edge; the driver turns it into readiness with a newer tick
        // whenever it next polls, before or after the clear, so the next `readable()` sees
        // it. On a worker's current-thread runtime the driver cannot even run between the
        // read and the clear (same thread); on a multi-threaded one a racing event only
        // turns the clear into a no-op and costs one `EAGAIN` read.
        let result = sock.try_io(Interest::READABLE, || {
            got = batch.recv_raw(sock)?;
            if got < batch.slots {
                Err(io::ErrorKind::WouldBlock.into())
            } else {
                Ok(())
            }
        });
        match result {
            Ok(()) => return Ok(got),
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                if got > 0 {
                    return Ok(got);
                }
            }
            Err(e) => return Err(e),
        }
    }
}

/// The socket address the kernel wrote, as the family it names.
fn decode(name: &libc::sockaddr_storage) -> Option<SocketAddr> {
    let ptr = name as *const libc::sockaddr_storage;
    match i32::from(name.ss_family) {
        libc::AF_INET => {
            // SAFETY: ss_family says the storage holds a sockaddr_in, which is smaller than
            // sockaddr_storage and no more aligned.
            let a: libc::sockaddr_in = unsafe { read_as(ptr) };
            Some(SocketAddr::V4(SocketAddrV4::new(
                Ipv4Addr::from(u32::from_be(a.sin_addr.s_addr)),
                u16::from_be(a.sin_port),
            )))
        }
        libc::AF_INET6 => {
            // SAFETY: as above, for sockaddr_in6.
            let a: libc::sockaddr_in6 = unsafe { read_as(ptr) };
            Some(SocketAddr::V6(SocketAddrV6::new(
                Ipv6Addr::from(a.sin6_addr.s6_addr),
                u16::from_be(a.sin6_port),
                a.sin6_flowinfo,
                a.sin6_scope_id,
            )))
        }
        _ => None,
    }
}

/// Reads the storage as `T`.
///
/// # Safety
/// `T` must be a sockaddr type no larger than `sockaddr_storage` that the storage holds.
unsafe fn read_as<T>(ptr: *const libc::sockaddr_storage) -> T {
    let mut out = MaybeUninit::<T>::uninit();
    // SAFETY: the caller promises T fits in the storage; byte copy needs no alignment.
    unsafe {
        std::ptr::copy_nonoverlapping(
            ptr.cast::<u8>(),
            out.as_mut_ptr().cast::<u8>(),
            size_of::<T>(),
        );
        out.assume_init()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn reads_a_burst_in_one_batch_with_sources_and_lengths() {
        let rx = UdpSocket::bind("127.0.0.1:0").await.expect("bind");
        let tx = std::net::UdpSocket::bind("127.0.0.1:0").expect("bind");
        let to = rx.local_addr().expect("addr");
        for i in 0..5u8 {
            tx.send_to(&vec![i; usize::from(i) + 1], to).expect("send");
        }
        let mut batch = RecvBatch::new(8, 64);
        let mut seen = Vec::new();
        while seen.len() < 5 {
            let n = tokio::time::timeout(std::time::Duration::from_secs(5), recv(&rx, &mut batch))
                .await
                .expect("within 5 s")
                .expect("recv");
            assert_eq!(n, batch.len());
            for i in 0..n {
                let (from, data) = batch.get(i).expect("datagram");
                assert_eq!(from, tx.local_addr().expect("addr"));
                seen.push(data.to_vec());
            }
        }
        let want: Vec<Vec<u8>> = (0..5u8).map(|i| vec![i; usize::from(i) + 1]).collect();
        assert_eq!(seen, want);
        assert!(batch.get(batch.len()).is_none());
    }

    #[tokio::test]
    async fn a_short_batch_clears_readiness_and_a_later_datagram_raises_it_again() {
        let rx = UdpSocket::bind("127.0.0.1:0").await.expect("bind");
        let tx = std::net::UdpSocket::bind("127.0.0.1:0").expect("bind");
        let to = rx.local_addr().expect("addr");
        let mut batch = RecvBatch::new(4, 64);
        for round in 0..3u8 {
            tx.send_to(&[round], to).expect("send");
            let n = tokio::time::timeout(std::time::Duration::from_secs(5), recv(&rx, &mut batch))
                .await
                .expect("a datagram sent after a clear wakes the reader within 5 s")
                .expect("recv");
            assert_eq!(
                (n, batch.get(0).map(|(_, d)| d.to_vec())),
                (1, Some(vec![round]))
            );
            // The short batch cleared readiness: tokio reports `WouldBlock` without calling
            // the closure, i.e. without the system call that would only have said `EAGAIN`.
            let mut called = false;
            let r = rx.try_io(Interest::READABLE, || {
                called = true;
                Ok(())
            });
            assert!(!called, "readiness still set after a short batch");
            assert_eq!(r.map_err(|e| e.kind()), Err(io::ErrorKind::WouldBlock));
        }
    }

    #[tokio::test]
    async fn long_datagrams_are_cut_to_the_slot_and_ipv6_sources_decode() {
        let Ok(rx) = UdpSocket::bind("[::1]:0").await else {
            return; // no IPv6 loopback on this host
        };
        let tx = std::net::UdpSocket::bind("[::1]:0").expect("bind");
        tx.send_to(&[7u8; 100], rx.local_addr().expect("addr"))
            .expect("send");
        let mut batch = RecvBatch::new(2, 16);
        let n = tokio::time::timeout(std::time::Duration::from_secs(5), recv(&rx, &mut batch))
            .await
            .expect("within 5 s")
            .expect("recv");
        assert_eq!(n, 1);
        let (from, data) = batch.get(0).expect("datagram");
        assert_eq!(from, tx.local_addr().expect("addr"));
        assert_eq!(data, &[7u8; 16]);
    }
}
