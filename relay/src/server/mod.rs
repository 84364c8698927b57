//! The socket driver: runs a [`Relay`] on tokio with real UDP sockets.
//!
//! One task reads the listening socket; one task per allocation reads its relay socket; one
//! task ticks the timers. The state machine is the one owner of the relay's state, behind a
//! mutex held only while a datagram is handled and its outputs collected, never across a
//! send or an `.await` (CONVENTIONS §4: one owner per concern). Sends go out after the lock
//! is released: `try_send_to` first, and an awaited `send_to` when the socket buffer is full,
//! so a burst slows the reader instead of being dropped by us.

mod ports;

use crate::config::{ConfigError, RelayConfig, Secret};
use crate::credentials::{mint, Credentials};
use crate::turn::{AllocationId, OpenRelayError, Output, Relay, Stats, Transport};
use ports::PortRange;
use std::collections::HashMap;
use std::io;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};
use tokio::net::UdpSocket;
use tokio::sync::watch;
use tokio::task::JoinHandle;
use tracing::{debug, warn};

/// Largest datagram read from the listening socket (the UDP maximum).
const LISTEN_BUFFER: usize = 65_536;
/// Largest datagram read from a relay socket. Media payloads stay under the path MTU; a
/// bigger datagram from a peer is truncated by the kernel and then relayed truncated, which
/// is what an MTU-sized path would have done to it anyway.
const RELAY_BUFFER: usize = 8_192;
/// How often expired allocations, permissions and channels are swept.
const TICK: Duration = Duration::from_secs(1);

/// Why the relay could not start.
#[derive(Debug, thiserror::Error)]
pub enum ServerError {
    /// A configuration value is refused (the error names the key).
    #[error(transparent)]
    Config(#[from] ConfigError),
    /// The listening socket could not be bound.
    #[error("cannot bind the relay's listening socket {addr}: {source}")]
    Bind {
        /// The address from `listen`.
        addr: SocketAddr,
        /// Why.
        source: io::Error,
    },
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
        let listen_std =
            ports::bind_udp(config.listen, Some(config.socket_buffer_bytes)).map_err(|source| {
                ServerError::Bind {
                    addr: config.listen,
                    source,
                }
            })?;
        let listen = UdpSocket::from_std(listen_std).map_err(|source| ServerError::Bind {
            addr: config.listen,
            source,
        })?;
        let local_addr = listen.local_addr().map_err(|source| ServerError::Bind {
            addr: config.listen,
            source,
        })?;
        let ports = PortRange::new(
            config.relay_ip(),
            config.min_port,
            config.max_port,
            rand::random(),
        );
        let relay = Relay::new(config, rand::random(), Instant::now(), unix_now());
        let shared = Arc::new(Shared {
            core: Mutex::new(Core {
                relay,
                sockets: HashMap::new(),
                ports,
            }),
            listen,
        });
        let (shutdown, watch_rx) = watch::channel(false);
        let listener = tokio::spawn(listen_loop(shared.clone(), watch_rx.clone()));
        let ticker = tokio::spawn(tick_loop(shared.clone(), watch_rx));
        Ok(RelayHandle {
            shared,
            local_addr,
            shutdown,
            tasks: vec![listener, ticker],
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
}

impl RelayHandle {
    /// The listening socket's address (the real port when `listen` asked for port 0).
    pub fn local_addr(&self) -> SocketAddr {
        self.local_addr
    }

    /// A snapshot of the counters.
    pub fn stats(&self) -> Stats {
        self.shared.lock().relay.stats()
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
    listen: UdpSocket,
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
}

#[derive(Debug)]
struct RelaySocket {
    socket: Arc<UdpSocket>,
    task: JoinHandle<()>,
}

/// A datagram to send once the lock is released.
enum Send {
    Client(SocketAddr, Vec<u8>),
    Peer(Arc<UdpSocket>, SocketAddr, Vec<u8>),
}

fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

/// Performs the relay's outputs that need the core (opening and closing sockets) and
/// collects the sends.
fn drain(core: &mut Core, shared: &Arc<Shared>, sends: &mut Vec<Send>) {
    while let Some(out) = core.relay.poll_output() {
        match out {
            Output::ToClient {
                transport: Transport::Udp,
                to,
                data,
            } => sends.push(Send::Client(to, data)),
            Output::ToPeer { alloc, to, data } => {
                if let Some(s) = core.sockets.get(&alloc) {
                    sends.push(Send::Peer(s.socket.clone(), to, data));
                }
            }
            Output::OpenRelay {
                alloc, even_port, ..
            } => {
                let result = open_relay(core, shared, alloc, even_port);
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
) -> Result<SocketAddr, OpenRelayError> {
    let (std_sock, addr) = core.ports.bind(even_port).ok_or(OpenRelayError::NoPort)?;
    let socket = match UdpSocket::from_std(std_sock) {
        Ok(s) => Arc::new(s),
        Err(e) => {
            warn!(%alloc, error = %e, "cannot register a relay socket");
            return Err(OpenRelayError::NoPort);
        }
    };
    let task = tokio::spawn(peer_loop(shared.clone(), alloc, socket.clone()));
    core.sockets.insert(alloc, RelaySocket { socket, task });
    debug!(%alloc, port = addr.port(), "relay socket opened");
    Ok(addr)
}

async fn send_all(shared: &Shared, sends: &mut Vec<Send>) {
    for send in sends.drain(..) {
        match send {
            Send::Client(to, data) => send_one(&shared.listen, to, &data).await,
            Send::Peer(sock, to, data) => send_one(&sock, to, &data).await,
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

async fn listen_loop(shared: Arc<Shared>, mut shutdown: watch::Receiver<bool>) {
    let mut buf = vec![0u8; LISTEN_BUFFER];
    let mut sends = Vec::new();
    loop {
        let (n, from) = tokio::select! {
            r = shared.listen.recv_from(&mut buf) => match r {
                Ok(x) => x,
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
            core.relay
                .handle_client(Instant::now(), Transport::Udp, from, &buf[..n]);
            drain(&mut core, &shared, &mut sends);
        }
        send_all(&shared, &mut sends).await;
    }
}

async fn peer_loop(shared: Arc<Shared>, alloc: AllocationId, socket: Arc<UdpSocket>) {
    let mut buf = vec![0u8; RELAY_BUFFER];
    let mut sends = Vec::new();
    loop {
        let (n, from) = match socket.recv_from(&mut buf).await {
            Ok(x) => x,
            Err(_) => {
                tokio::time::sleep(Duration::from_millis(5)).await;
                continue;
            }
        };
        {
            let mut core = shared.lock();
            core.relay
                .handle_peer(Instant::now(), alloc, from, &buf[..n]);
            drain(&mut core, &shared, &mut sends);
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
            drain(&mut core, &shared, &mut sends);
        }
        send_all(&shared, &mut sends).await;
    }
}
