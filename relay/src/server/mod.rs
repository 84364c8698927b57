//! The socket driver: runs a [`Relay`] on tokio with real sockets.
//!
//! - UDP: one listening socket per core (`SO_REUSEPORT`, so the kernel spreads clients over
//!   them by 5-tuple), each read by its own task; one task per allocation reads its relay
//!   socket; one task ticks the timers. Reads are batched (`recvmmsg`, [`batch_recv`]): a
//!   burst costs one system call per batch, and a short batch proves the queue empty, which
//!   saves the call that would only have said `EAGAIN`.
//! - TCP (`tcp = true`): a listener on the same port number; one task per connection cuts
//!   the stream into messages and writes what the relay sends back ([`tcp`]).
//!
//! The state machine is the one owner of the relay's state, behind a mutex held only while
//! a batch of messages is handled and its outputs collected, never across a send or an
//! `.await` (CONVENTIONS §4: one owner per concern). Sends go out after the lock is
//! released. To peers: `try_send_to` first, and an awaited `send_to` when the socket buffer
//! is full, so a burst slows the reader instead of being dropped by us. To UDP clients: into
//! the worker's [`client_outbox`], which its flush task sends with one `sendmmsg` per
//! scheduler round ([`batch_send`]); a full outbox makes the pushing task wait, the same
//! back-pressure.

mod batch_recv;
mod batch_send;
mod client_outbox;
mod ports;
mod tcp;

use crate::config::{ConfigError, RelayConfig, Secret};
use crate::credentials::{mint, Credentials};
use crate::turn::{AllocationId, OpenRelayError, Output, Relay, Stats, Transport};
use batch_recv::RecvBatch;
use client_outbox::ClientOutbox;
use ports::PortRange;
use std::collections::HashMap;
use std::io;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};
use tokio::net::UdpSocket;
use tokio::sync::{mpsc, watch};
use tokio::task::JoinHandle;
use tracing::{debug, warn};

/// Datagrams one read of a listening socket takes.
const LISTEN_SLOTS: usize = 32;
/// Largest datagram read from a listening socket. STUN requests and ChannelData with media
/// stay under the path MTU; a longer datagram is cut, fails to parse and is dropped as
/// malformed.
const LISTEN_SLOT: usize = 4_096;
/// Datagrams one read of a relay socket takes: a few, so that one short read (a single
/// datagram, the common case at call rates) proves the socket drained.
const RELAY_SLOTS: usize = 4;
/// Largest datagram read from a relay socket. Media payloads stay under the path MTU; a
/// bigger datagram from a peer is truncated by the kernel and then relayed truncated, which
/// is what an MTU-sized path would have done to it anyway. (Two slots of 4 KiB hold the
/// memory per allocation where one 8 KiB buffer was.)
const RELAY_SLOT: usize = 4_096;
/// Most listening UDP sockets (one per core up to this).
const MAX_LISTEN_SOCKETS: usize = 8;
/// How often expired allocations, permissions and channels are swept.
const TICK: Duration = Duration::from_secs(1);

/// Why the relay could not start.
#[derive(Debug, thiserror::Error)]
pub enum ServerError {
    /// A configuration value is refused (the error names the key).
    #[error(transparent)]
    Config(#[from] ConfigError),
    /// A worker thread or its runtime could not be started.
    #[error("cannot start the relay's worker threads: {0}")]
    Runtime(io::Error),
    /// The listening socket could not be bound.
    #[error("cannot bind the relay's listening socket {addr}: {source}")]
    Bind {
        /// The address from `listen`.
        addr: SocketAddr,
        /// Why.
        source: io::Error,
    },
}

/// A relay thread: a single-threaded tokio runtime that reads one listening socket and the
/// relay sockets of the allocations it created. A thread per core rather than tasks on the
/// edge's multi-threaded runtime: a datagram wakes one thread, which handles it and sends
/// on, without handing work to (and waking) another thread.
#[derive(Debug)]
struct Worker {
    handle: tokio::runtime::Handle,
    /// Dropping it ends the thread (and drops the tasks still on its runtime).
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Worker {
    fn start(index: usize) -> io::Result<Self> {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()?;
        let handle = rt.handle().clone();
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let thread = std::thread::Builder::new()
            .name(format!("relay-{index}"))
            .spawn(move || {
                rt.block_on(async {
                    let _ = stopped.await;
                });
            })?;
        Ok(Self {
            handle,
            stop: Some(stop),
            thread: Some(thread),
        })
    }
}

/// The listening sockets: the UDP group and the TCP listener on the same port number.
struct Listeners {
    udp: Vec<std::net::UdpSocket>,
    tcp: Option<std::net::TcpListener>,
    addr: SocketAddr,
}

/// Binds `count` UDP sockets on `listen` (one `SO_REUSEPORT` group when more than one) and,
/// with `tcp`, a TCP listener on the same port. With port 0 the port is the kernel's choice
/// for the first UDP socket; if TCP cannot have that port too, another is tried.
fn bind_listeners(config: &RelayConfig, count: usize) -> io::Result<Listeners> {
    let attempts = if config.listen.port() == 0 { 16 } else { 1 };
    let mut last = None;
    for _ in 0..attempts {
        let reuse = count > 1;
        let first = ports::bind_udp(config.listen, Some(config.socket_buffer_bytes), reuse)?;
        let addr = first.local_addr()?;
        let mut udp = vec![first];
        for _ in 1..count {
            udp.push(ports::bind_udp(
                addr,
                Some(config.socket_buffer_bytes),
                true,
            )?);
        }
        if !config.tcp {
            return Ok(Listeners {
                udp,
                tcp: None,
                addr,
            });
        }
        match ports::bind_tcp(addr) {
            Ok(tcp) => {
                return Ok(Listeners {
                    udp,
                    tcp: Some(tcp),
                    addr,
                })
            }
            Err(e) => last = Some(e),
        }
    }
    Err(last.unwrap_or_else(|| io::ErrorKind::AddrInUse.into()))
}

/// Starts relays.
#[derive(Debug)]
pub struct RelayServer;

impl RelayServer {
    /// Validates `config`, binds the listening socket and starts the relay's tasks on the
    /// current tokio runtime. The relay runs until [`RelayHandle::shutdown`] (or the handle
    /// is dropped, which stops it without waiting).
    pub async fn start(config: RelayConfig) -> Result<RelayHandle, ServerError> {
        config.validate()?;
        let bind_err = |source| ServerError::Bind {
            addr: config.listen,
            source,
        };
        let count = std::thread::available_parallelism()
            .map(|n| n.get())
            .unwrap_or(1)
            .clamp(1, MAX_LISTEN_SOCKETS);
        let bound = bind_listeners(&config, count).map_err(bind_err)?;
        let workers = (0..bound.udp.len())
            .map(Worker::start)
            .collect::<io::Result<Vec<_>>>()
            .map_err(ServerError::Runtime)?;
        // Each socket registers with the reactor of the worker that reads it.
        let mut listen = Vec::with_capacity(bound.udp.len());
        for (sock, worker) in bound.udp.into_iter().zip(&workers) {
            let _in = worker.handle.enter();
            listen.push(UdpSocket::from_std(sock).map_err(bind_err)?);
        }
        let tcp_listener = match bound.tcp {
            Some(l) => {
                let _in = workers[0].handle.enter();
                Some(tokio::net::TcpListener::from_std(l).map_err(bind_err)?)
            }
            None => None,
        };
        let local_addr = bound.addr;
        let ports = PortRange::new(
            config.relay_ip(),
            config.min_port,
            config.max_port,
            rand::random(),
            // The kernel's default. Tried 1 MiB (2026-12-04): fewer drops under a
            // `turnutils_uclient -z 0` blast, but 4.5 s of queue (RTT) instead of 0.25 s;
            // late media is worse than lost media (bench/RESULTS.md).
            None,
        );
        let tcp_limits = tcp::Limits::new(&config);
        let relay = Relay::new(config, rand::random(), Instant::now(), unix_now());
        let shared = Arc::new(Shared {
            core: Mutex::new(Core {
                relay,
                sockets: HashMap::new(),
                ports,
                tcp: HashMap::new(),
            }),
            outboxes: listen.iter().map(|_| ClientOutbox::new()).collect(),
            listen,
            tcp_limits,
            runtimes: workers.iter().map(|w| w.handle.clone()).collect(),
            tcp_refused: AtomicU64::new(0),
            tcp_backlog: AtomicU64::new(0),
        });
        let (shutdown, watch_rx) = watch::channel(false);
        let mut tasks = Vec::new();
        for (idx, worker) in workers.iter().enumerate() {
            tasks.push(
                worker
                    .handle
                    .spawn(listen_loop(shared.clone(), idx, watch_rx.clone())),
            );
            let (outbox_shared, stopped) = (shared.clone(), watch_rx.clone());
            tasks.push(worker.handle.spawn(async move {
                let s = &outbox_shared;
                s.outboxes[idx].run(&s.listen[idx], stopped).await;
            }));
        }
        if let Some(l) = tcp_listener {
            tasks.push(workers[0].handle.spawn(tcp::accept_loop(
                shared.clone(),
                l,
                watch_rx.clone(),
            )));
        }
        tasks.push(workers[0].handle.spawn(tick_loop(shared.clone(), watch_rx)));
        Ok(RelayHandle {
            shared,
            local_addr,
            shutdown,
            tasks,
            workers,
        })
    }
}

/// A running relay: its address, counters, secret rotation and shutdown.
#[derive(Debug)]
pub struct RelayHandle {
    shared: Arc<Shared>,
    local_addr: SocketAddr,
    shutdown: watch::Sender<bool>,
    tasks: Vec<JoinHandle<()>>,
    workers: Vec<Worker>,
}

impl RelayHandle {
    /// The listening address (the real port when `listen` asked for port 0); TCP, when on,
    /// listens on the same one.
    pub fn local_addr(&self) -> SocketAddr {
        self.local_addr
    }

    /// A snapshot of the counters.
    pub fn stats(&self) -> Stats {
        let mut stats = self.shared.lock().relay.stats();
        stats.refusals.tcp_connections = self.shared.tcp_refused.load(Ordering::Relaxed);
        stats.refusals.tcp_backlog = self.shared.tcp_backlog.load(Ordering::Relaxed);
        stats
    }

    /// Replaces the REST secret (on SIGHUP). Credentials minted with the previous secret keep
    /// working until they expire.
    pub fn set_secret(&self, secret: Secret) {
        self.shared.lock().relay.set_secret(secret);
    }

    /// Mints credentials for `user` valid for `ttl` under the current secret.
    pub fn mint(&self, user: &str, ttl: Duration) -> Credentials {
        let secret = self.shared.lock().relay.secret().clone();
        mint(secret.as_bytes(), user, ttl, unix_now())
    }

    /// Stops reading, closes every relay socket, and waits for the tasks to end.
    pub async fn shutdown(mut self) {
        let _ = self.shutdown.send(true);
        for task in self.tasks.drain(..) {
            let _ = task.await;
        }
        let sockets: Vec<RelaySocket> = {
            let mut core = self.shared.lock();
            core.sockets.drain().map(|(_, s)| s).collect()
        };
        for s in sockets {
            s.task.abort();
            let _ = s.task.await;
        }
        for mut w in self.workers.drain(..) {
            drop(w.stop.take());
            if let Some(t) = w.thread.take() {
                let _ = tokio::task::spawn_blocking(move || t.join()).await;
            }
        }
    }
}

impl Drop for RelayHandle {
    fn drop(&mut self) {
        let _ = self.shutdown.send(true);
        if let Ok(mut core) = self.shared.core.lock() {
            for (_, s) in core.sockets.drain() {
                s.task.abort();
            }
        }
    }
}

#[derive(Debug)]
struct Shared {
    core: Mutex<Core>,
    /// The listening UDP sockets (one `SO_REUSEPORT` group); any of them may answer any
    /// client, since they share the address.
    listen: Vec<UdpSocket>,
    /// What goes out of each listening socket (same index), sent by a task on its worker.
    outboxes: Vec<ClientOutbox>,
    tcp_limits: tcp::Limits,
    /// The workers' runtimes: TCP connections are spread over them (with the relay sockets
    /// of their allocations), as the kernel spreads UDP clients over the listening sockets.
    runtimes: Vec<tokio::runtime::Handle>,
    /// TCP connections closed at accept (over a limit).
    tcp_refused: AtomicU64,
    /// Messages dropped for TCP clients that did not read.
    tcp_backlog: AtomicU64,
}

impl Shared {
    fn lock(&self) -> MutexGuard<'_, Core> {
        // A panic while holding the lock would be a bug in the state machine; the state is
        // still the best we have, so keep relaying rather than poisoning every task.
        self.core.lock().unwrap_or_else(|e| e.into_inner())
    }
}

#[derive(Debug)]
struct Core {
    relay: Relay,
    sockets: HashMap<AllocationId, RelaySocket>,
    ports: PortRange,
    /// The outgoing queue of every TCP client connection, by its remote address.
    tcp: HashMap<SocketAddr, mpsc::Sender<Vec<u8>>>,
}

#[derive(Debug)]
struct RelaySocket {
    socket: Arc<UdpSocket>,
    task: JoinHandle<()>,
}

/// A message to send once the lock is released.
enum Send {
    /// From listening socket number `.0` to a UDP client.
    Client(usize, SocketAddr, Vec<u8>),
    /// From a relay socket to a peer.
    Peer(Arc<UdpSocket>, SocketAddr, Vec<u8>),
    /// Onto a TCP client's queue.
    Tcp(mpsc::Sender<Vec<u8>>, Vec<u8>),
}

fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

/// Performs the relay's outputs that need the core (opening and closing sockets) and
/// collects the sends; UDP clients are answered from listening socket number `via`.
fn drain(core: &mut Core, shared: &Arc<Shared>, sends: &mut Vec<Send>, via: usize) {
    while let Some(out) = core.relay.poll_output() {
        match out {
            Output::ToClient {
                transport: Transport::Udp,
                to,
                data,
            } => sends.push(Send::Client(via, to, data)),
            Output::ToClient {
                transport: Transport::Tcp,
                to,
                data,
            } => {
                // A connection that just closed has no queue: its messages go nowhere.
                if let Some(tx) = core.tcp.get(&to) {
                    sends.push(Send::Tcp(tx.clone(), data));
                }
            }
            Output::ToPeer { alloc, to, data } => {
                if let Some(s) = core.sockets.get(&alloc) {
                    sends.push(Send::Peer(s.socket.clone(), to, data));
                }
            }
            Output::OpenRelay {
                alloc, even_port, ..
            } => {
                let result = open_relay(core, shared, alloc, even_port, via);
                core.relay.relay_opened(Instant::now(), alloc, result);
            }
            Output::CloseRelay { alloc } => {
                if let Some(s) = core.sockets.remove(&alloc) {
                    s.task.abort();
                    debug!(%alloc, "relay socket closed");
                }
            }
        }
    }
}

fn open_relay(
    core: &mut Core,
    shared: &Arc<Shared>,
    alloc: AllocationId,
    even_port: bool,
    via: usize,
) -> Result<SocketAddr, OpenRelayError> {
    let (std_sock, addr) = core.ports.bind(even_port).ok_or(OpenRelayError::NoPort)?;
    let socket = match UdpSocket::from_std(std_sock) {
        Ok(s) => Arc::new(s),
        Err(e) => {
            warn!(%alloc, error = %e, "cannot register a relay socket");
            return Err(OpenRelayError::NoPort);
        }
    };
    // On the worker whose listening socket took the Allocate (the current runtime), which
    // also answers this client from that socket.
    let task = tokio::spawn(peer_loop(shared.clone(), alloc, socket.clone(), via));
    core.sockets.insert(alloc, RelaySocket { socket, task });
    debug!(%alloc, port = addr.port(), "relay socket opened");
    Ok(addr)
}

async fn send_all(shared: &Shared, sends: &mut Vec<Send>) {
    // Datagrams for peers, by relay socket: a socket with several goes out in one sendmmsg.
    let mut to_peers: Vec<(Arc<UdpSocket>, Vec<batch_send::Datagram>)> = Vec::new();
    for send in sends.drain(..) {
        match send {
            Send::Client(via, to, data) => shared.outboxes[via].push(to, data).await,
            Send::Peer(sock, to, data) => {
                match to_peers.iter_mut().find(|(s, _)| Arc::ptr_eq(s, &sock)) {
                    Some((_, group)) => group.push((to, data)),
                    None => to_peers.push((sock, vec![(to, data)])),
                }
            }
            Send::Tcp(tx, data) => {
                if tx.try_send(data).is_err() {
                    shared.tcp_backlog.fetch_add(1, Ordering::Relaxed);
                }
            }
        }
    }
    for (sock, group) in to_peers {
        match group.as_slice() {
            [(to, data)] => send_one(&sock, *to, data).await,
            _ => batch_send::send(&sock, &group).await,
        }
    }
}

async fn send_one(sock: &UdpSocket, to: SocketAddr, data: &[u8]) {
    match sock.try_send_to(data, to) {
        Ok(_) => {}
        Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
            let _ = sock.send_to(data, to).await;
        }
        // UDP send errors (unreachable network, a peer's ICMP error) concern one datagram;
        // the relay carries on.
        Err(_) => {}
    }
}

async fn listen_loop(shared: Arc<Shared>, idx: usize, mut shutdown: watch::Receiver<bool>) {
    let mut batch = RecvBatch::new(LISTEN_SLOTS, LISTEN_SLOT);
    let mut sends = Vec::new();
    let sock = &shared.listen[idx];
    loop {
        let n = tokio::select! {
            r = batch_recv::recv(sock, &mut batch) => match r {
                Ok(n) => n,
                Err(e) => {
                    // Errors on an unconnected UDP socket are per-datagram (e.g. an ICMP
                    // error reported late); back off briefly so a persistent one cannot spin.
                    debug!(error = %e, "relay listen socket error");
                    tokio::time::sleep(Duration::from_millis(5)).await;
                    continue;
                }
            },
            _ = shutdown.changed() => break,
        };
        {
            let mut core = shared.lock();
            let now = Instant::now();
            for i in 0..n {
                if let Some((from, data)) = batch.get(i) {
                    core.relay.handle_client(now, Transport::Udp, from, data);
                    drain(&mut core, &shared, &mut sends, idx);
                }
            }
        }
        send_all(&shared, &mut sends).await;
        // After a full batch (a burst), let the relay sockets of this worker drain what it
        // sent them before the next batch comes in; without it a burst on the listening
        // socket ran 4,096 datagrams (tokio's budget) ahead and overflowed them. Not after a
        // short one: the socket is drained anyway, and a yield costs the runtime a poll of
        // its I/O driver.
        if n == LISTEN_SLOTS {
            tokio::task::yield_now().await;
        }
    }
}

async fn peer_loop(shared: Arc<Shared>, alloc: AllocationId, socket: Arc<UdpSocket>, via: usize) {
    let mut batch = RecvBatch::new(RELAY_SLOTS, RELAY_SLOT);
    let mut sends = Vec::new();
    loop {
        let n = match batch_recv::recv(&socket, &mut batch).await {
            Ok(n) => n,
            Err(_) => {
                tokio::time::sleep(Duration::from_millis(5)).await;
                continue;
            }
        };
        {
            let mut core = shared.lock();
            let now = Instant::now();
            for i in 0..n {
                if let Some((from, data)) = batch.get(i) {
                    core.relay.handle_peer(now, alloc, from, data);
                }
            }
            drain(&mut core, &shared, &mut sends, via);
        }
        send_all(&shared, &mut sends).await;
    }
}

async fn tick_loop(shared: Arc<Shared>, mut shutdown: watch::Receiver<bool>) {
    let mut tick = tokio::time::interval(TICK);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut sends = Vec::new();
    loop {
        tokio::select! {
            _ = tick.tick() => {}
            _ = shutdown.changed() => break,
        }
        {
            let mut core = shared.lock();
            core.relay.handle_timeout(Instant::now());
            drain(&mut core, &shared, &mut sends, 0);
        }
        send_all(&shared, &mut sends).await;
    }
}
