//! TURN over TCP (RFC 8656 §5): a client whose network drops UDP reaches the relay on a TCP
//! connection to the listening port; its peers are still reached over UDP.
//!
//! One task per connection, spread round robin over the relay's worker threads, reads the
//! stream, cuts it into STUN and ChannelData messages
//! ([`wire::stream_frame`](crate::wire::stream_frame)) and hands each to the relay as
//! [`Transport::Tcp`], and writes what the relay sends back from a bounded queue, coalescing
//! what is waiting into one write. Limits: connections per client address and in total
//! (closed at accept, counted), an idle timeout for connections without an allocation, a
//! write that does not finish within [`WRITE_TIMEOUT`] closes the connection, and a queue
//! that is full drops the message (counted), as a UDP socket buffer would. Anything that is
//! not a STUN or ChannelData message closes that connection only; the allocation it held
//! ends with it.

use super::{drain, send_all, Shared};
use crate::config::RelayConfig;
use crate::turn::{Received, Transport};
use crate::wire::{self, StreamFrame};
use std::collections::HashMap;
use std::io;
use std::net::{IpAddr, SocketAddr};
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{mpsc, watch};
use tokio::task::JoinSet;
use tracing::debug;

/// Messages waiting for one client's connection before further ones are dropped: about
/// 100 ms of a video call's packets.
const QUEUE: usize = 256;
/// A write to a client that takes longer than this closes the connection (the client does
/// not read).
const WRITE_TIMEOUT: Duration = Duration::from_secs(10);
/// Bytes gathered from the queue into one write.
const WRITE_BATCH: usize = 64 * 1024;
/// First size of a connection's read buffer; it grows up to one whole message at most.
const READ_BUFFER: usize = 4 * 1024;

/// Counts TCP connections by client address and in total.
#[derive(Debug)]
pub(super) struct Limits {
    per_ip_max: usize,
    total_max: usize,
    idle: Duration,
    held: Mutex<(HashMap<IpAddr, usize>, usize)>,
}

impl Limits {
    pub(super) fn new(config: &RelayConfig) -> Self {
        Self {
            per_ip_max: config.max_tcp_connections_per_ip,
            total_max: config.max_tcp_connections,
            idle: config.tcp_idle_timeout(),
            held: Mutex::new((HashMap::new(), 0)),
        }
    }

    /// Counts a connection from `ip` in, or `false` when a limit is reached.
    fn admit(&self, ip: IpAddr) -> bool {
        let mut held = self.held.lock().unwrap_or_else(|e| e.into_inner());
        let (per_ip, total) = &mut *held;
        let n = per_ip.entry(ip).or_insert(0);
        if *n >= self.per_ip_max || *total >= self.total_max {
            if *n == 0 {
                per_ip.remove(&ip);
            }
            return false;
        }
        *n += 1;
        *total += 1;
        true
    }

    fn release(&self, ip: IpAddr) {
        let mut held = self.held.lock().unwrap_or_else(|e| e.into_inner());
        let (per_ip, total) = &mut *held;
        *total = total.saturating_sub(1);
        if let Some(n) = per_ip.get_mut(&ip) {
            *n -= 1;
            if *n == 0 {
                per_ip.remove(&ip);
            }
        }
    }
}

/// Ends a connection's presence in the relay however its task ends (closed, failed or
/// aborted at shutdown): releases its count, forgets its queue and ends its allocation.
struct Registered {
    shared: Arc<Shared>,
    from: SocketAddr,
}

impl Drop for Registered {
    fn drop(&mut self) {
        self.shared.tcp_limits.release(self.from.ip());
        let mut core = self.shared.lock();
        core.tcp.remove(&self.from);
        core.relay.client_closed(Transport::Tcp, self.from);
        // Only socket closes come out of this; there is no one left to send to.
        let mut sends = Vec::new();
        drain(&mut core, &self.shared, &mut sends, 0);
    }
}

/// Accepts connections until shutdown, then aborts those still open.
pub(super) async fn accept_loop(
    shared: Arc<Shared>,
    listener: TcpListener,
    mut shutdown: watch::Receiver<bool>,
) {
    let mut conns = JoinSet::new();
    let mut backoff = Duration::from_millis(5);
    let mut next_worker = 0usize;
    loop {
        tokio::select! {
            r = listener.accept() => match r {
                Ok((stream, from)) => {
                    backoff = Duration::from_millis(5);
                    if !shared.tcp_limits.admit(from.ip()) {
                        shared.tcp_refused.fetch_add(1, Ordering::Relaxed);
                        continue; // dropped: closed
                    }
                    // Moved to the worker it runs on (its reactor then reports the socket's
                    // readiness); still non-blocking.
                    let Ok(stream) = stream.into_std() else {
                        shared.tcp_limits.release(from.ip());
                        continue;
                    };
                    let registered = register(&shared, from);
                    // Round robin over the workers; the connection's allocation opens its
                    // relay socket on the same one (the current runtime of its task).
                    let worker = next_worker % shared.runtimes.len().max(1);
                    next_worker = next_worker.wrapping_add(1);
                    let task = connection(registered, stream, shutdown.clone(), worker);
                    match shared.runtimes.get(worker) {
                        Some(rt) => conns.spawn_on(task, rt),
                        None => conns.spawn(task),
                    };
                }
                Err(e) => {
                    // Out of file descriptors and the like: wait rather than spin.
                    debug!(error = %e, "relay tcp accept error");
                    tokio::time::sleep(backoff).await;
                    backoff = (backoff * 2).min(Duration::from_secs(1));
                }
            },
            Some(_) = conns.join_next(), if !conns.is_empty() => {}
            _ = shutdown.changed() => break,
        }
    }
    conns.shutdown().await;
}

fn register(shared: &Arc<Shared>, from: SocketAddr) -> (Registered, mpsc::Receiver<Vec<u8>>) {
    let (tx, rx) = mpsc::channel(QUEUE);
    shared.lock().tcp.insert(from, tx);
    (
        Registered {
            shared: shared.clone(),
            from,
        },
        rx,
    )
}

/// Why a connection ended (read only by the debug log, through `Debug`).
#[derive(Debug)]
#[allow(dead_code)]
enum End {
    Eof,
    Malformed,
    Idle,
    Io(io::ErrorKind),
    WriteTimeout,
    Shutdown,
}

async fn connection(
    (registered, mut queue): (Registered, mpsc::Receiver<Vec<u8>>),
    stream: std::net::TcpStream,
    mut shutdown: watch::Receiver<bool>,
    worker: usize,
) {
    let shared = registered.shared.clone();
    let from = registered.from;
    let Ok(mut stream) = TcpStream::from_std(stream) else {
        return; // dropping `registered` ends it cleanly
    };
    let _ = stream.set_nodelay(true);
    let (mut rd, mut wr) = stream.split();
    let mut buf = vec![0u8; READ_BUFFER];
    let (mut start, mut end) = (0usize, 0usize);
    let mut out = Vec::with_capacity(WRITE_BATCH);
    let mut sends = Vec::new();
    let idle = shared.tcp_limits.idle;
    let mut deadline = tokio::time::Instant::now() + idle;
    let end_reason = loop {
        tokio::select! {
            r = rd.read(&mut buf[end..]) => {
                let n = match r {
                    Ok(0) => break End::Eof,
                    Ok(n) => n,
                    Err(e) => break End::Io(e.kind()),
                };
                end += n;
                let mut malformed = false;
                let mut complete = 0;
                {
                    let mut core = shared.lock();
                    let now = Instant::now();
                    loop {
                        match wire::stream_frame(&buf[start..end]) {
                            StreamFrame::Complete { len, skip } => {
                                let msg = &buf[start..start + len];
                                if core.relay.handle_client(now, Transport::Tcp, from, msg)
                                    == Received::Malformed
                                {
                                    malformed = true;
                                }
                                drain(&mut core, &shared, &mut sends, worker);
                                start += len + skip;
                                complete += 1;
                                if malformed {
                                    break;
                                }
                            }
                            StreamFrame::Incomplete => break,
                            StreamFrame::Malformed => {
                                core.relay.stream_malformed();
                                malformed = true;
                                break;
                            }
                        }
                    }
                }
                send_all(&shared, &mut sends).await;
                if malformed {
                    break End::Malformed;
                }
                // As the UDP listening loop does after a full batch: let this worker's relay
                // sockets drain what these messages sent them before reading more.
                if complete > 1 {
                    tokio::task::yield_now().await;
                }
                if complete > 0 {
                    deadline = tokio::time::Instant::now() + idle;
                }
                // Keep the unread tail at the front; grow only for a message longer than
                // the buffer (bounded by the largest message a stream can carry).
                if start == end {
                    (start, end) = (0, 0);
                } else if start > 0 {
                    buf.copy_within(start..end, 0);
                    end -= start;
                    start = 0;
                }
                if end == buf.len() {
                    let want = (buf.len() * 2).min(wire::MAX_STREAM_MESSAGE + 4);
                    if want <= buf.len() {
                        break End::Malformed; // cannot happen: a frame fits the maximum
                    }
                    buf.resize(want, 0);
                }
            }
            Some(first) = queue.recv() => {
                out.clear();
                out.extend_from_slice(&first);
                while out.len() < WRITE_BATCH {
                    match queue.try_recv() {
                        Ok(m) => out.extend_from_slice(&m),
                        Err(_) => break,
                    }
                }
                match tokio::time::timeout(WRITE_TIMEOUT, wr.write_all(&out)).await {
                    Ok(Ok(())) => {}
                    Ok(Err(e)) => break End::Io(e.kind()),
                    Err(_) => break End::WriteTimeout,
                }
            }
            _ = tokio::time::sleep_until(deadline) => {
                if shared.lock().relay.has_allocation(Transport::Tcp, from) {
                    deadline = tokio::time::Instant::now() + idle;
                } else {
                    break End::Idle;
                }
            }
            _ = shutdown.changed() => break End::Shutdown,
        }
    };
    debug!(%from, reason = ?end_reason, "relay tcp connection closed");
    let _ = wr.shutdown().await;
    drop(registered);
}
