//! A UDP proxy for tests that need a bad network without netem (this kernel has none):
//! bidirectional, with a loss rate, a fixed one-way delay, a switch that blackholes
//! everything, counters, and a byte pattern it looks for in what it forwards (to prove that
//! something did *not* cross it in plaintext).
//!
//! Two sockets, `a_side` and `b_side`. What arrives at `a_side` leaves from `b_side`
//! towards B; what arrives at `b_side` leaves from `a_side` towards A. So A talks to
//! `a_side` as if it were B, and B sees the datagrams come from `b_side`.

use std::net::{SocketAddr, UdpSocket};
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering};
use std::sync::{mpsc, Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

/// Where datagrams for one side go.
#[derive(Debug, Clone, Copy)]
enum Target {
    /// A fixed address.
    Fixed(SocketAddr),
    /// Whoever last sent to the other socket (a client in front of a server).
    LastSender,
}

#[derive(Default)]
struct Shared {
    /// Loss in hundredths of a percent (500 = 5 %).
    loss: AtomicU32,
    delay_us: AtomicU64,
    blackhole: AtomicBool,
    stop: AtomicBool,
    forwarded: AtomicU64,
    forwarded_bytes: AtomicU64,
    dropped: AtomicU64,
    marker: Mutex<Option<Vec<u8>>>,
    marker_hits: AtomicU64,
    last_a: Mutex<Option<SocketAddr>>,
}

/// A running proxy; dropping it stops its threads.
pub struct UdpProxy {
    /// Where A sends (it stands for B).
    pub a_side: SocketAddr,
    /// Where B sends (it stands for A).
    pub b_side: SocketAddr,
    shared: Arc<Shared>,
    threads: Vec<JoinHandle<()>>,
}

impl UdpProxy {
    /// A proxy between `a` and `b` (both fixed addresses, e.g. two call endpoints): tell A
    /// that B is at `a_side` and B that A is at `b_side`.
    pub fn between(a: SocketAddr, b: SocketAddr) -> Self {
        Self::start(Target::Fixed(a), b)
    }

    /// A proxy in front of a server at `upstream`: clients send to `a_side`; the server sees
    /// them all as `b_side`; answers go to the client that sent last.
    pub fn in_front_of(upstream: SocketAddr) -> Self {
        Self::start(Target::LastSender, upstream)
    }

    fn start(a: Target, b: SocketAddr) -> Self {
        let ip = b.ip();
        let sa = Arc::new(UdpSocket::bind((ip, 0)).expect("bind the proxy's A side"));
        let sb = Arc::new(UdpSocket::bind((ip, 0)).expect("bind the proxy's B side"));
        for s in [&sa, &sb] {
            s.set_read_timeout(Some(Duration::from_millis(20)))
                .expect("read timeout");
        }
        let shared = Arc::new(Shared::default());
        let mut threads = Vec::new();
        // A → B: read at a_side, send from b_side to b.
        threads.extend(direction(
            shared.clone(),
            sa.clone(),
            sb.clone(),
            Target::Fixed(b),
            true,
            1,
        ));
        // B → A: read at b_side, send from a_side to a.
        threads.extend(direction(
            shared.clone(),
            sb.clone(),
            sa.clone(),
            a,
            false,
            2,
        ));
        Self {
            a_side: sa.local_addr().expect("address"),
            b_side: sb.local_addr().expect("address"),
            shared,
            threads,
        }
    }

    /// Drops `percent` of the datagrams, each direction independently.
    pub fn set_loss(&self, percent: f64) {
        self.shared
            .loss
            .store((percent * 100.0).round() as u32, Ordering::Relaxed);
    }

    /// Holds every datagram this long before forwarding it (each direction).
    pub fn set_delay(&self, delay: Duration) {
        self.shared
            .delay_us
            .store(delay.as_micros() as u64, Ordering::Relaxed);
    }

    /// Drops everything (`true`) or forwards again (`false`).
    pub fn set_blackhole(&self, on: bool) {
        self.shared.blackhole.store(on, Ordering::Relaxed);
    }

    /// Counts the forwarded datagrams that contain `marker`.
    pub fn watch_for(&self, marker: &[u8]) {
        *self.shared.marker.lock().expect("marker lock") = Some(marker.to_vec());
    }

    /// Forwarded datagrams that contained the [`UdpProxy::watch_for`] marker.
    pub fn marker_hits(&self) -> u64 {
        self.shared.marker_hits.load(Ordering::Relaxed)
    }

    /// Datagrams forwarded (both directions).
    pub fn forwarded(&self) -> u64 {
        self.shared.forwarded.load(Ordering::Relaxed)
    }

    /// Bytes forwarded (both directions).
    pub fn forwarded_bytes(&self) -> u64 {
        self.shared.forwarded_bytes.load(Ordering::Relaxed)
    }

    /// Datagrams dropped (loss and blackhole).
    pub fn dropped(&self) -> u64 {
        self.shared.dropped.load(Ordering::Relaxed)
    }
}

impl Drop for UdpProxy {
    fn drop(&mut self) {
        self.shared.stop.store(true, Ordering::Relaxed);
        for t in self.threads.drain(..) {
            let _ = t.join();
        }
    }
}

/// The reader and the delayed sender of one direction.
fn direction(
    shared: Arc<Shared>,
    from: Arc<UdpSocket>,
    out: Arc<UdpSocket>,
    target: Target,
    from_a: bool,
    seed: u64,
) -> [JoinHandle<()>; 2] {
    let (tx, rx) = mpsc::channel::<(Instant, SocketAddr, Vec<u8>)>();
    let reader = {
        let shared = shared.clone();
        std::thread::spawn(move || {
            let mut rng = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
            let mut buf = vec![0u8; 65536];
            while !shared.stop.load(Ordering::Relaxed) {
                let Ok((n, src)) = from.recv_from(&mut buf) else {
                    continue;
                };
                if from_a {
                    *shared.last_a.lock().expect("lock") = Some(src);
                }
                let to = match target {
                    Target::Fixed(t) => t,
                    Target::LastSender => match *shared.last_a.lock().expect("lock") {
                        Some(t) => t,
                        None => continue,
                    },
                };
                rng ^= rng << 13;
                rng ^= rng >> 7;
                rng ^= rng << 17;
                let loss = u64::from(shared.loss.load(Ordering::Relaxed));
                if shared.blackhole.load(Ordering::Relaxed) || rng % 10_000 < loss {
                    shared.dropped.fetch_add(1, Ordering::Relaxed);
                    continue;
                }
                let data = buf[..n].to_vec();
                if let Some(m) = shared.marker.lock().expect("lock").as_deref() {
                    if !m.is_empty() && data.windows(m.len()).any(|w| w == m) {
                        shared.marker_hits.fetch_add(1, Ordering::Relaxed);
                    }
                }
                let due =
                    Instant::now() + Duration::from_micros(shared.delay_us.load(Ordering::Relaxed));
                if tx.send((due, to, data)).is_err() {
                    return;
                }
            }
        })
    };
    let sender = std::thread::spawn(move || {
        // A fixed delay keeps the order: each datagram waits for its own due time.
        while !shared.stop.load(Ordering::Relaxed) {
            let Ok((due, to, data)) = rx.recv_timeout(Duration::from_millis(20)) else {
                continue;
            };
            let wait = due.saturating_duration_since(Instant::now());
            if !wait.is_zero() {
                std::thread::sleep(wait);
            }
            if out.send_to(&data, to).is_ok() {
                shared.forwarded.fetch_add(1, Ordering::Relaxed);
                shared
                    .forwarded_bytes
                    .fetch_add(data.len() as u64, Ordering::Relaxed);
            }
        }
    });
    [reader, sender]
}

#[cfg(test)]
mod tests {
    use super::*;

    fn socket() -> UdpSocket {
        let s = UdpSocket::bind("127.0.0.1:0").unwrap();
        s.set_read_timeout(Some(Duration::from_secs(2))).unwrap();
        s
    }

    #[test]
    fn forwards_both_ways_delays_drops_and_blackholes() {
        let a = socket();
        let b = socket();
        let p = UdpProxy::between(a.local_addr().unwrap(), b.local_addr().unwrap());
        p.watch_for(b"needle");
        p.set_delay(Duration::from_millis(30));
        let t = Instant::now();
        a.send_to(b"hay needle hay", p.a_side).unwrap();
        let mut buf = [0u8; 64];
        let (n, from) = b.recv_from(&mut buf).unwrap();
        assert!(t.elapsed() >= Duration::from_millis(30));
        assert_eq!((&buf[..n], from), (&b"hay needle hay"[..], p.b_side));
        b.send_to(b"back", p.b_side).unwrap();
        let (n, from) = a.recv_from(&mut buf).unwrap();
        assert_eq!((&buf[..n], from), (&b"back"[..], p.a_side));
        assert_eq!(p.marker_hits(), 1);
        // 50 % loss: roughly half of 400 arrive.
        p.set_delay(Duration::ZERO);
        p.set_loss(50.0);
        for _ in 0..400 {
            a.send_to(b"x", p.a_side).unwrap();
        }
        b.set_read_timeout(Some(Duration::from_millis(300)))
            .unwrap();
        let mut got = 0;
        while b.recv_from(&mut buf).is_ok() {
            got += 1;
        }
        assert!((120..280).contains(&got), "{got}");
        p.set_loss(0.0);
        p.set_blackhole(true);
        a.send_to(b"gone", p.a_side).unwrap();
        assert!(b.recv_from(&mut buf).is_err());
        assert!(p.dropped() > 100);
    }
}
