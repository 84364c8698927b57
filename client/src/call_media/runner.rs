//! The async shell: one UDP socket and one tokio task per call, moving datagrams and timers
//! between the socket and the state machines (ICE agent, TURN client, media session).

use super::description::{Candidate, CandidateKind, MediaDescription};
use super::ice::{IceAgent, IceConfig, IceEvent, Via};
use super::quality::CallStats;
use super::reflexive::ServerBinding;
use super::session::MediaSession;
use super::turn_client::{TurnClient, TurnEvent};
use super::wire::{self, Datagram};
use super::{CallSecret, MediaError, MediaOptions, PathKind, Role};
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::time::{Duration, Instant};
use tokio::net::UdpSocket;
use tokio::sync::{mpsc, oneshot, watch};

/// Largest datagram read (media packets are far smaller; anything longer is cut and then
/// fails its checks).
const RECV_BUF: usize = 2048;
/// How often the shared statistics are refreshed.
const STATS_EVERY: Duration = Duration::from_millis(100);
/// How long `stop` waits for the TURN server to confirm the release.
const RELEASE_WAIT: Duration = Duration::from_secs(2);

/// The local side of a call after gathering: a bound UDP socket, its candidates and (with a
/// TURN server) an allocation. Hand [`MediaEndpoint::description`] to the peer, then
/// [`MediaEndpoint::start`] with theirs.
pub struct MediaEndpoint {
    socket: UdpSocket,
    opts: MediaOptions,
    ufrag: String,
    pwd: String,
    host: Option<Candidate>,
    reflexive: Option<Candidate>,
    relayed: Option<Candidate>,
    turn: Option<TurnClient>,
}

impl std::fmt::Debug for MediaEndpoint {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MediaEndpoint")
            .field("host", &self.host)
            .field("reflexive", &self.reflexive)
            .field("relayed", &self.relayed)
            .finish_non_exhaustive()
    }
}

/// The IP the OS would send from towards `towards` (no packet is sent), or loopback.
fn route_ip(towards: Option<SocketAddr>) -> IpAddr {
    let towards = towards.unwrap_or_else(|| SocketAddr::from(([127, 0, 0, 1], 9)));
    let bind: SocketAddr = if towards.is_ipv4() {
        (Ipv4Addr::UNSPECIFIED, 0).into()
    } else {
        (std::net::Ipv6Addr::UNSPECIFIED, 0).into()
    };
    std::net::UdpSocket::bind(bind)
        .and_then(|s| {
            s.connect(towards)?;
            s.local_addr()
        })
        .map(|a| a.ip())
        .unwrap_or(IpAddr::V4(Ipv4Addr::LOCALHOST))
}

impl MediaEndpoint {
    /// Binds the media socket and gathers candidates: host; server-reflexive from
    /// `opts.stun`; relayed from a TURN allocation on `opts.turn`. Waits at most
    /// `opts.gather_timeout` for the servers. Without `force_relay` a missing STUN or TURN
    /// answer only means fewer candidates; with it, no relayed candidate is an error.
    pub async fn gather(opts: MediaOptions) -> Result<Self, MediaError> {
        if opts.force_relay && opts.turn.is_none() {
            return Err(MediaError::NoRelay);
        }
        let socket = UdpSocket::bind(opts.bind).await?;
        let local = socket.local_addr()?;
        let host_ip = if local.ip().is_unspecified() {
            route_ip(opts.stun.or(opts.turn.as_ref().map(|t| t.addr)))
        } else {
            local.ip()
        };
        let host = Candidate::new(CandidateKind::Host, SocketAddr::new(host_ip, local.port()));
        let (ufrag, pwd) = MediaDescription::random_credentials();
        let start = Instant::now();
        let deadline = start + opts.gather_timeout;
        let mut binding = opts
            .stun
            .filter(|_| !opts.force_relay)
            .map(|s| ServerBinding::new(start, s));
        let mut turn = opts
            .turn
            .as_ref()
            .map(|t| TurnClient::new(t.addr, t.username.clone(), t.password.clone()));
        if let Some(t) = &mut turn {
            t.allocate(start);
        }
        let mut reflexive = None;
        let mut relayed = None;
        let mut turn_done = turn.is_none();
        let mut buf = vec![0u8; RECV_BUF];
        loop {
            if let Some(b) = &mut binding {
                while let Some(d) = b.poll_transmit() {
                    let _ = socket.send_to(&d, b.server()).await;
                }
            }
            if let Some(t) = &mut turn {
                while let Some(d) = t.poll_transmit() {
                    let _ = socket.send_to(&d, t.server()).await;
                }
                while let Some(e) = t.poll_event() {
                    match e {
                        TurnEvent::Allocated { relayed: r, mapped } => {
                            relayed = Some(Candidate::new(CandidateKind::Relayed, r));
                            if reflexive.is_none() && !opts.force_relay {
                                reflexive = mapped;
                            }
                            turn_done = true;
                        }
                        TurnEvent::Failed(why) => {
                            tracing::warn!(%why, "TURN allocation failed");
                            turn_done = true;
                        }
                        TurnEvent::Released => turn_done = true,
                    }
                }
            }
            let binding_done = binding.as_ref().is_none_or(|b| b.result().is_some());
            if binding_done && turn_done {
                break;
            }
            let now = Instant::now();
            if now >= deadline {
                break;
            }
            let wake = [
                binding.as_ref().and_then(ServerBinding::poll_timeout),
                turn.as_ref().and_then(TurnClient::poll_timeout),
                Some(deadline),
            ]
            .into_iter()
            .flatten()
            .min()
            .unwrap_or(deadline);
            tokio::select! {
                r = socket.recv_from(&mut buf) => {
                    let Ok((n, from)) = r else { continue };
                    let now = Instant::now();
                    let Some(Datagram::Stun(msg)) = wire::classify(&buf[..n]) else { continue };
                    if let Some(b) = binding.as_mut().filter(|b| b.server() == from) {
                        if b.handle_stun(&msg) {
                            reflexive = b.result().flatten();
                            continue;
                        }
                    }
                    if let Some(t) = turn.as_mut().filter(|t| t.server() == from) {
                        t.handle_stun(now, &msg);
                    }
                }
                _ = tokio::time::sleep_until(wake.into()) => {
                    let now = Instant::now();
                    if let Some(b) = &mut binding {
                        b.handle_timeout(now);
                    }
                    if let Some(t) = &mut turn {
                        t.handle_timeout(now);
                    }
                }
            }
        }
        if opts.force_relay && relayed.is_none() {
            return Err(MediaError::NoRelay);
        }
        let turn = turn.filter(|t| t.relayed().is_some());
        // Behind no NAT the reflexive address is the host's: not a second candidate.
        let reflexive = reflexive
            .filter(|r: &SocketAddr| *r != host.addr)
            .map(|r| Candidate::new(CandidateKind::ServerReflexive, r));
        Ok(Self {
            socket,
            host: (!opts.force_relay).then_some(host),
            reflexive: if opts.force_relay { None } else { reflexive },
            relayed,
            turn,
            opts,
            ufrag,
            pwd,
        })
    }

    /// Gives up the endpoint without a call (declined, cancelled): releases the TURN
    /// allocation (Refresh with lifetime 0, waiting up to 2 s for the answer). Dropping it
    /// instead leaves the allocation to time out on the server.
    pub async fn close(mut self) {
        if let Some(t) = &mut self.turn {
            release(&self.socket, t).await;
        }
    }

    /// What to send the peer: ICE credentials and the candidates (only the relayed one with
    /// `force_relay`).
    pub fn description(&self) -> MediaDescription {
        MediaDescription {
            ufrag: self.ufrag.clone(),
            pwd: self.pwd.clone(),
            candidates: [self.host, self.reflexive, self.relayed]
                .into_iter()
                .flatten()
                .collect(),
        }
    }

    /// Starts the call against the peer's `remote` description: spawns the task that runs
    /// the checks and, once a pair is selected, the media. Must be called inside a tokio
    /// runtime.
    pub fn start(self, remote: MediaDescription, role: Role, secret: &CallSecret) -> MediaCall {
        let now = Instant::now();
        let mut locals = Vec::new();
        if let Some(h) = self.host {
            locals.push((Via::Host, h.priority));
        }
        if let Some(r) = self.relayed {
            locals.push((Via::Relay, r.priority));
        }
        let mut ice = IceAgent::new(
            now,
            IceConfig {
                role,
                local: (self.ufrag.clone(), self.pwd.clone()),
                remote: (remote.ufrag.clone(), remote.pwd.clone()),
                locals,
            },
        );
        let mut turn = self.turn;
        for c in &remote.candidates {
            ice.add_remote_candidate(*c);
            if let Some(t) = &mut turn {
                t.add_peer(now, c.addr);
            }
        }
        let session = MediaSession::new(now, role, secret, &self.opts);
        let (cmd_tx, cmd_rx) = mpsc::unbounded_channel();
        let (stats_tx, stats_rx) = watch::channel(Status::default());
        let task = tokio::spawn(async move {
            let session = match session {
                Ok(s) => s,
                Err(e) => {
                    let _ = stats_tx.send(Status {
                        error: Some(e.to_string()),
                        ..Status::default()
                    });
                    return CallStats::default();
                }
            };
            let mut r = Runner {
                socket: self.socket,
                ice,
                turn,
                session,
                path: None,
                switches: 0,
                stats_tx,
                started: now,
            };
            r.run(cmd_rx).await
        });
        MediaCall {
            cmd: cmd_tx,
            status: stats_rx,
            task: Some(task),
        }
    }
}

/// What the task shares with the [`MediaCall`] handle.
#[derive(Debug, Clone, Default)]
struct Status {
    stats: CallStats,
    error: Option<String>,
}

enum Cmd {
    Candidate(Candidate),
    Stop(oneshot::Sender<()>),
}

/// A running call's media. Dropping it without [`MediaCall::stop`] ends the task without
/// releasing the TURN allocation (the server times it out).
pub struct MediaCall {
    cmd: mpsc::UnboundedSender<Cmd>,
    status: watch::Receiver<Status>,
    /// `None` only inside [`MediaCall::stop`].
    task: Option<tokio::task::JoinHandle<CallStats>>,
}

impl Drop for MediaCall {
    fn drop(&mut self) {
        if let Some(t) = &self.task {
            t.abort();
        }
    }
}

impl MediaCall {
    /// A candidate the peer trickled after its description.
    pub fn add_remote_candidate(&self, c: Candidate) {
        let _ = self.cmd.send(Cmd::Candidate(c));
    }

    /// Waits until a candidate pair is selected (media flows from then on), at most
    /// `timeout`.
    pub async fn connected(&self, timeout: Duration) -> Result<PathKind, MediaError> {
        let mut rx = self.status.clone();
        let wait = async {
            loop {
                {
                    let s = rx.borrow_and_update();
                    if let Some(p) = s.stats.path {
                        return Ok(p);
                    }
                    if let Some(e) = &s.error {
                        return Err(MediaError::Srtp(e.clone()));
                    }
                }
                if rx.changed().await.is_err() {
                    return Err(MediaError::Stopped);
                }
            }
        };
        tokio::time::timeout(timeout, wait)
            .await
            .unwrap_or(Err(MediaError::NoPath))
    }

    /// The statistics now (refreshed every 100 ms).
    pub fn stats(&self) -> CallStats {
        self.status.borrow().stats.clone()
    }

    /// Ends the call: stops sending, releases the TURN allocation (Refresh with lifetime 0,
    /// waiting up to 2 s for the answer) and returns the final statistics.
    pub async fn stop(mut self) -> CallStats {
        let (tx, rx) = oneshot::channel();
        if self.cmd.send(Cmd::Stop(tx)).is_ok() {
            let _ = rx.await;
        }
        match self.task.take() {
            Some(task) => match task.await {
                Ok(s) => s,
                Err(_) => self.status.borrow().stats.clone(),
            },
            None => self.status.borrow().stats.clone(),
        }
    }
}

struct Runner {
    socket: UdpSocket,
    ice: IceAgent,
    turn: Option<TurnClient>,
    session: MediaSession,
    path: Option<PathKind>,
    switches: u32,
    stats_tx: watch::Sender<Status>,
    started: Instant,
}

impl Runner {
    async fn run(&mut self, mut cmds: mpsc::UnboundedReceiver<Cmd>) -> CallStats {
        let mut buf = vec![0u8; RECV_BUF];
        let mut next_stats = self.started;
        let stop_reply = loop {
            self.flush().await;
            let now = Instant::now();
            if now >= next_stats {
                next_stats = now + STATS_EVERY;
                self.publish();
            }
            let wake = [
                self.ice.poll_timeout(),
                self.turn.as_ref().and_then(TurnClient::poll_timeout),
                Some(self.session.poll_timeout()),
                Some(next_stats),
            ]
            .into_iter()
            .flatten()
            .min()
            .unwrap_or(next_stats);
            tokio::select! {
                r = self.socket.recv_from(&mut buf) => {
                    if let Ok((n, from)) = r {
                        self.on_datagram(Instant::now(), from, &buf[..n]);
                    }
                }
                _ = tokio::time::sleep_until(wake.into()) => {}
                cmd = cmds.recv() => match cmd {
                    Some(Cmd::Candidate(c)) => {
                        self.ice.add_remote_candidate(c);
                        if let Some(t) = &mut self.turn {
                            t.add_peer(Instant::now(), c.addr);
                        }
                    }
                    Some(Cmd::Stop(reply)) => break Some(reply),
                    None => break None,
                },
            }
            let now = Instant::now();
            self.ice.handle_timeout(now);
            if let Some(t) = &mut self.turn {
                t.handle_timeout(now);
            }
            self.session.handle_timeout(now);
        };
        self.session.set_sending(Instant::now(), false);
        if let Some(t) = &mut self.turn {
            release(&self.socket, t).await;
        }
        self.publish();
        if let Some(r) = stop_reply {
            let _ = r.send(());
        }
        self.stats_tx.borrow().stats.clone()
    }

    fn publish(&self) {
        let mut s = self.session.stats();
        s.path = self.path;
        s.path_switches = self.switches;
        self.stats_tx.send_modify(|st| st.stats = s);
    }

    fn on_datagram(&mut self, now: Instant, from: SocketAddr, data: &[u8]) {
        if let Some(t) = self.turn.as_mut().filter(|t| t.server() == from) {
            match wire::classify(data) {
                Some(Datagram::Stun(msg)) => {
                    if let Some((peer, payload)) = t.handle_stun(now, &msg) {
                        self.on_inner(now, Via::Relay, peer, &payload);
                    }
                }
                Some(Datagram::ChannelData(ch, payload)) => {
                    if let Some((peer, payload)) = t.handle_channel_data(ch, payload) {
                        self.on_inner(now, Via::Relay, peer, payload);
                    }
                }
                _ => {}
            }
            return;
        }
        self.on_inner(now, Via::Host, from, data);
    }

    fn on_inner(&mut self, now: Instant, via: Via, from: SocketAddr, data: &[u8]) {
        match wire::classify(data) {
            Some(Datagram::Stun(msg)) => {
                self.ice.handle_stun(now, via, from, &msg);
            }
            Some(Datagram::Srtp(p)) => self.session.handle_packet(now, p),
            _ => {}
        }
    }

    /// Sends everything the machines queued and applies the ICE agent's events.
    async fn flush(&mut self) {
        while let Some(t) = self.ice.poll_transmit() {
            send(&self.socket, self.turn.as_ref(), t.via, t.to, &t.data).await;
        }
        if let Some(turn) = &mut self.turn {
            let server = turn.server();
            while let Some(d) = turn.poll_transmit() {
                let _ = self.socket.send_to(&d, server).await;
            }
            while let Some(e) = turn.poll_event() {
                if let TurnEvent::Failed(why) = e {
                    tracing::warn!(%why, "TURN allocation lost");
                }
            }
        }
        let mut changed = false;
        while let Some(e) = self.ice.poll_event() {
            changed = true;
            match e {
                IceEvent::Selected { path, via, .. } => {
                    if self.path.is_some() {
                        self.switches += 1;
                    }
                    tracing::debug!(?path, ?via, "call media path selected");
                    self.path = Some(path);
                    self.session.set_sending(Instant::now(), true);
                }
                IceEvent::Disconnected => {
                    tracing::debug!("call media path lost");
                    self.path = None;
                    self.session.set_sending(Instant::now(), false);
                }
            }
        }
        if changed {
            self.publish();
        }
        if let Some((via, to, _)) = self.ice.selected() {
            while let Some(p) = self.session.poll_transmit() {
                send(&self.socket, self.turn.as_ref(), via, to, &p).await;
            }
        } else {
            while self.session.poll_transmit().is_some() {}
        }
    }
}

/// Sends `data` to `to` from local base `via` (through the TURN server for the relay).
async fn send(
    socket: &UdpSocket,
    turn: Option<&TurnClient>,
    via: Via,
    to: SocketAddr,
    data: &[u8],
) {
    // A failed send is a lost datagram, which checks and media already survive.
    match via {
        Via::Host => {
            let _ = socket.send_to(data, to).await;
        }
        Via::Relay => {
            if let Some(t) = turn {
                let _ = socket.send_to(&t.wrap(to, data), t.server()).await;
            }
        }
    }
}

/// Releases `turn`'s allocation and waits (at most [`RELEASE_WAIT`]) for the server's answer.
async fn release(socket: &UdpSocket, t: &mut TurnClient) {
    t.release(Instant::now());
    let deadline = Instant::now() + RELEASE_WAIT;
    let mut buf = vec![0u8; RECV_BUF];
    loop {
        while let Some(d) = t.poll_transmit() {
            let _ = socket.send_to(&d, t.server()).await;
        }
        while let Some(e) = t.poll_event() {
            if e == TurnEvent::Released {
                return;
            }
        }
        if t.is_done() || Instant::now() >= deadline {
            return;
        }
        let wake = t.poll_timeout().unwrap_or(deadline).min(deadline);
        tokio::select! {
            r = socket.recv_from(&mut buf) => {
                if let Ok((n, from)) = r {
                    if from == t.server() {
                        if let Some(Datagram::Stun(msg)) = wire::classify(&buf[..n]) {
                            t.handle_stun(Instant::now(), &msg);
                        }
                    }
                }
            }
            _ = tokio::time::sleep_until(wake.into()) => t.handle_timeout(Instant::now()),
        }
    }
}
