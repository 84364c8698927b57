//! A TURN client (RFC 8656) as a state machine without sockets or clocks: Allocate (the
//! first one unauthenticated, answered 401 with REALM and NONCE, then with long-term
//! credentials), Refresh, CreatePermission, ChannelBind, ChannelData and Send/Data
//! indications, and the release (Refresh with LIFETIME 0).
//!
//! Inputs: [`TurnClient::allocate`], [`TurnClient::add_peer`], [`TurnClient::release`],
//! [`TurnClient::handle_stun`] / [`TurnClient::handle_channel_data`] for datagrams from the
//! server, [`TurnClient::handle_timeout`]. Outputs, drained after every input:
//! [`TurnClient::poll_transmit`] (datagrams for the server), [`TurnClient::poll_event`],
//! then [`TurnClient::poll_timeout`] for when to call `handle_timeout` next.

use super::wire::{self, attr, method, Builder, StunMessage, Tid};
use std::collections::{HashMap, VecDeque};
use std::net::{IpAddr, SocketAddr};
use std::time::{Duration, Instant};
use stun_types::message::{MessageClass, MessageIntegrityCredentials};

/// First retransmission timeout of a request (RFC 8489 suggests 500 ms; a call wants its
/// relay sooner and the edge is near).
const RTO: Duration = Duration::from_millis(250);
/// Transmissions of one request before it fails.
const MAX_TRIES: u8 = 6;
/// Lifetime asked for an allocation (seconds).
const LIFETIME_SECS: u32 = 600;
/// Permissions last 300 s (RFC 8656 §9); refreshed after this.
const PERMISSION_REFRESH: Duration = Duration::from_secs(240);
/// Channel bindings last 600 s (§12); refreshed after this.
const CHANNEL_REFRESH: Duration = Duration::from_secs(540);
/// First channel number (RFC 8656 §12: 0x4000-0x4FFF).
const FIRST_CHANNEL: u16 = 0x4000;
/// Peers (channels) one call binds at most.
const MAX_CHANNELS: usize = 64;

/// What the client tells its owner.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TurnEvent {
    /// The allocation exists: its relayed address, and the client's address as the server
    /// sees it (a server-reflexive candidate for free).
    Allocated {
        /// The relayed transport address (the relayed candidate).
        relayed: SocketAddr,
        /// XOR-MAPPED-ADDRESS from the Allocate response.
        mapped: Option<SocketAddr>,
    },
    /// The allocation failed or was lost (error code or no answer).
    Failed(String),
    /// The release was answered (or given up on).
    Released,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Req {
    Allocate,
    Refresh(u32),
    CreatePermission(SocketAddr),
    ChannelBind(u16, SocketAddr),
}

struct Pending {
    tid: Tid,
    req: Req,
    bytes: Vec<u8>,
    next_retx: Instant,
    tries: u8,
    /// 438 Stale Nonce retries left (a nonce may go stale once per request).
    stale_retries: u8,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    Idle,
    Allocating,
    Allocated {
        relayed: SocketAddr,
        refresh_at: Instant,
    },
    Releasing,
    Done,
}

struct Channel {
    number: u16,
    bound: bool,
    refresh_at: Instant,
}

/// One allocation on one TURN server. See the module doc for the call order.
pub struct TurnClient {
    server: SocketAddr,
    username: String,
    password: String,
    realm_nonce: Option<(String, String)>,
    creds: Option<MessageIntegrityCredentials>,
    state: State,
    pending: Vec<Pending>,
    permissions: HashMap<IpAddr, Instant>,
    channels: HashMap<SocketAddr, Channel>,
    transmits: VecDeque<Vec<u8>>,
    events: VecDeque<TurnEvent>,
}

impl TurnClient {
    /// A client for the server at `server` with long-term `username`/`password`.
    pub fn new(server: SocketAddr, username: String, password: String) -> Self {
        Self {
            server,
            username,
            password,
            realm_nonce: None,
            creds: None,
            state: State::Idle,
            pending: Vec::new(),
            permissions: HashMap::new(),
            channels: HashMap::new(),
            transmits: VecDeque::new(),
            events: VecDeque::new(),
        }
    }

    /// The server's address (every transmit goes there).
    pub fn server(&self) -> SocketAddr {
        self.server
    }

    /// The relayed address, once allocated.
    pub fn relayed(&self) -> Option<SocketAddr> {
        match self.state {
            State::Allocated { relayed, .. } => Some(relayed),
            _ => None,
        }
    }

    /// Starts the allocation (once; later calls do nothing).
    pub fn allocate(&mut self, now: Instant) {
        if self.state == State::Idle {
            self.state = State::Allocating;
            self.request(now, Req::Allocate);
        }
    }

    /// Lets `peer` send to the relayed address and binds it a channel, so media to it goes
    /// as 4-byte-header ChannelData. Until then [`TurnClient::wrap`] uses Send indications.
    pub fn add_peer(&mut self, now: Instant, peer: SocketAddr) {
        if !matches!(self.state, State::Allocated { .. }) || self.channels.contains_key(&peer) {
            return;
        }
        if self.channels.len() >= MAX_CHANNELS {
            return;
        }
        if let std::collections::hash_map::Entry::Vacant(e) = self.permissions.entry(peer.ip()) {
            e.insert(now + PERMISSION_REFRESH);
            self.request(now, Req::CreatePermission(peer));
        }
        let number = FIRST_CHANNEL + self.channels.len() as u16;
        self.channels.insert(
            peer,
            Channel {
                number,
                bound: false,
                refresh_at: now + CHANNEL_REFRESH,
            },
        );
        self.request(now, Req::ChannelBind(number, peer));
    }

    /// A datagram for the server that carries `payload` to `peer`: ChannelData when the
    /// peer's channel is bound, a Send indication otherwise.
    pub fn wrap(&self, peer: SocketAddr, payload: &[u8]) -> Vec<u8> {
        match self.channels.get(&peer) {
            Some(c) if c.bound => wire::channel_data(c.number, payload),
            _ => Builder::indication(method::SEND)
                .xor_addr(attr::XOR_PEER_ADDRESS, peer)
                .raw(attr::DATA, payload)
                .finish(),
        }
    }

    /// Releases the allocation (Refresh with LIFETIME 0); [`TurnEvent::Released`] follows.
    pub fn release(&mut self, now: Instant) {
        match self.state {
            State::Allocated { .. } => {
                self.pending.clear();
                self.state = State::Releasing;
                self.request(now, Req::Refresh(0));
            }
            State::Idle | State::Allocating => {
                self.pending.clear();
                self.state = State::Done;
                self.events.push_back(TurnEvent::Released);
            }
            State::Releasing | State::Done => {}
        }
    }

    /// Whether nothing more will happen (released, failed, or never started).
    pub fn is_done(&self) -> bool {
        matches!(self.state, State::Done | State::Idle)
    }

    /// A ChannelData message from the server: the peer and payload, when the channel is ours.
    pub fn handle_channel_data<'a>(
        &self,
        channel: u16,
        payload: &'a [u8],
    ) -> Option<(SocketAddr, &'a [u8])> {
        self.channels
            .iter()
            .find(|(_, c)| c.number == channel && c.bound)
            .map(|(peer, _)| (*peer, payload))
    }

    /// A STUN message from the server. A Data indication returns its peer and payload; a
    /// response to one of our requests moves the state machine.
    pub fn handle_stun(
        &mut self,
        now: Instant,
        msg: &StunMessage<'_>,
    ) -> Option<(SocketAddr, Vec<u8>)> {
        if msg.has_class(MessageClass::Indication) {
            if msg.has_method(method::DATA) {
                let peer = wire::xor_addr(msg, attr::XOR_PEER_ADDRESS)?;
                return Some((peer, wire::data(msg)?));
            }
            return None;
        }
        if !msg.is_response() {
            return None;
        }
        let tid = msg.transaction_id();
        let i = self.pending.iter().position(|p| p.tid == tid)?;
        let success = msg.has_class(MessageClass::Success);
        // A success to an authenticated request must carry our integrity; errors (401, 438)
        // may not.
        if success {
            if let Some(creds) = &self.creds {
                if !wire::verify_long(msg, creds) {
                    return None;
                }
            }
        }
        let p = self.pending.swap_remove(i);
        if success {
            self.on_success(now, p.req, msg);
            return None;
        }
        let code = wire::error_code(msg).unwrap_or(0);
        match code {
            401 if self.creds.is_none() && p.req == Req::Allocate => {
                if let Some((realm, nonce)) = wire::realm_nonce(msg) {
                    self.creds = Some(wire::long_term(&self.username, &self.password, &realm));
                    self.realm_nonce = Some((realm, nonce));
                    self.request(now, Req::Allocate);
                } else {
                    self.fail("401 without REALM/NONCE".into());
                }
            }
            438 if p.stale_retries > 0 => {
                if let Some((realm, nonce)) = wire::realm_nonce(msg) {
                    self.realm_nonce = Some((realm, nonce));
                    let stale = p.stale_retries - 1;
                    self.request(now, p.req);
                    if let Some(last) = self.pending.last_mut() {
                        last.stale_retries = stale;
                    }
                }
            }
            _ => self.on_error(p.req, code),
        }
        None
    }

    fn on_success(&mut self, now: Instant, req: Req, msg: &StunMessage<'_>) {
        match req {
            Req::Allocate => {
                let Some(relayed) = wire::xor_addr(msg, attr::XOR_RELAYED_ADDRESS) else {
                    self.fail("Allocate success without XOR-RELAYED-ADDRESS".into());
                    return;
                };
                let lifetime = wire::u32_attr(msg, attr::LIFETIME).unwrap_or(LIFETIME_SECS);
                self.state = State::Allocated {
                    relayed,
                    refresh_at: now + refresh_after(lifetime),
                };
                self.events.push_back(TurnEvent::Allocated {
                    relayed,
                    mapped: wire::xor_addr(msg, attr::XOR_MAPPED_ADDRESS),
                });
            }
            Req::Refresh(0) => {
                self.state = State::Done;
                self.events.push_back(TurnEvent::Released);
            }
            Req::Refresh(_) => {
                if let State::Allocated { relayed, .. } = self.state {
                    let lifetime = wire::u32_attr(msg, attr::LIFETIME).unwrap_or(LIFETIME_SECS);
                    self.state = State::Allocated {
                        relayed,
                        refresh_at: now + refresh_after(lifetime),
                    };
                }
            }
            Req::CreatePermission(_) => {}
            Req::ChannelBind(number, peer) => {
                if let Some(c) = self.channels.get_mut(&peer) {
                    if c.number == number {
                        c.bound = true;
                    }
                }
            }
        }
    }

    fn on_error(&mut self, req: Req, code: u16) {
        match req {
            Req::Allocate | Req::Refresh(1..) => self.fail(format!("{req:?} refused with {code}")),
            Req::Refresh(0) => {
                self.state = State::Done;
                self.events.push_back(TurnEvent::Released);
            }
            // A refused permission or channel leaves that peer on Send indications (or
            // unreachable through this relay); the ICE checks find out.
            Req::CreatePermission(_) | Req::ChannelBind(..) => {}
        }
    }

    fn fail(&mut self, why: String) {
        if matches!(self.state, State::Releasing) {
            self.state = State::Done;
            self.events.push_back(TurnEvent::Released);
            return;
        }
        self.state = State::Done;
        self.pending.clear();
        self.events.push_back(TurnEvent::Failed(why));
    }

    /// Sends `req` as a new transaction.
    fn request(&mut self, now: Instant, req: Req) {
        let b = match req {
            Req::Allocate => Builder::request(method::ALLOCATE)
                .udp_transport()
                .u32(attr::LIFETIME, LIFETIME_SECS),
            Req::Refresh(l) => Builder::request(method::REFRESH).u32(attr::LIFETIME, l),
            Req::CreatePermission(peer) => {
                Builder::request(method::CREATE_PERMISSION).xor_addr(attr::XOR_PEER_ADDRESS, peer)
            }
            Req::ChannelBind(n, peer) => Builder::request(method::CHANNEL_BIND)
                .u32(attr::CHANNEL_NUMBER, u32::from(n) << 16)
                .xor_addr(attr::XOR_PEER_ADDRESS, peer),
        };
        let tid = b.tid();
        let bytes = match (&self.creds, &self.realm_nonce) {
            (Some(creds), Some((realm, nonce))) => b
                .username(&self.username)
                .realm_nonce(realm, nonce)
                .sign_long(creds),
            _ => b.finish(),
        };
        self.transmits.push_back(bytes.clone());
        self.pending.push(Pending {
            tid,
            req,
            bytes,
            next_retx: now + RTO,
            tries: 1,
            stale_retries: 2,
        });
    }

    /// Retransmits, gives up on unanswered requests, refreshes what is due.
    pub fn handle_timeout(&mut self, now: Instant) {
        let mut failed = Vec::new();
        for p in &mut self.pending {
            if p.next_retx <= now {
                if p.tries >= MAX_TRIES {
                    failed.push(p.tid);
                    continue;
                }
                p.tries += 1;
                p.next_retx = now + RTO * (1 << (p.tries - 1).min(4));
                self.transmits.push_back(p.bytes.clone());
            }
        }
        for tid in failed {
            if let Some(i) = self.pending.iter().position(|p| p.tid == tid) {
                let p = self.pending.swap_remove(i);
                match p.req {
                    Req::Allocate | Req::Refresh(_) => self.fail("no answer".into()),
                    Req::CreatePermission(_) | Req::ChannelBind(..) => {}
                }
            }
        }
        if let State::Allocated { refresh_at, .. } = self.state {
            if refresh_at <= now
                && !self
                    .pending
                    .iter()
                    .any(|p| matches!(p.req, Req::Refresh(_)))
            {
                if let State::Allocated { relayed, .. } = self.state {
                    // Until the answer, do not ask again.
                    self.state = State::Allocated {
                        relayed,
                        refresh_at: now + refresh_after(LIFETIME_SECS),
                    };
                }
                self.request(now, Req::Refresh(LIFETIME_SECS));
            }
            let due: Vec<IpAddr> = self
                .permissions
                .iter()
                .filter(|(_, at)| **at <= now)
                .map(|(ip, _)| *ip)
                .collect();
            for ip in due {
                self.permissions.insert(ip, now + PERMISSION_REFRESH);
                if let Some(peer) = self.channels.keys().find(|p| p.ip() == ip).copied() {
                    self.request(now, Req::CreatePermission(peer));
                }
            }
            let due: Vec<(SocketAddr, u16)> = self
                .channels
                .iter_mut()
                .filter(|(_, c)| c.refresh_at <= now)
                .map(|(p, c)| {
                    c.refresh_at = now + CHANNEL_REFRESH;
                    (*p, c.number)
                })
                .collect();
            for (peer, n) in due {
                self.request(now, Req::ChannelBind(n, peer));
            }
        }
    }

    /// When [`TurnClient::handle_timeout`] must run next.
    pub fn poll_timeout(&self) -> Option<Instant> {
        let mut t = self.pending.iter().map(|p| p.next_retx).min();
        let mut at = |x: Instant| t = Some(t.map_or(x, |t: Instant| t.min(x)));
        if let State::Allocated { refresh_at, .. } = self.state {
            at(refresh_at);
            self.permissions.values().for_each(|x| at(*x));
            self.channels.values().for_each(|c| at(c.refresh_at));
        }
        t
    }

    /// The next datagram for the server.
    pub fn poll_transmit(&mut self) -> Option<Vec<u8>> {
        self.transmits.pop_front()
    }

    /// The next event.
    pub fn poll_event(&mut self) -> Option<TurnEvent> {
        self.events.pop_front()
    }
}

/// When to refresh an allocation of `lifetime` seconds: a minute early, or at half-life for
/// short ones.
fn refresh_after(lifetime: u32) -> Duration {
    let l = u64::from(lifetime);
    Duration::from_secs(if l > 120 { l - 60 } else { l / 2 }.max(1))
}

#[cfg(test)]
mod tests {
    use super::*;
    use stun_types::attribute::{ErrorCode, Nonce, Realm};
    use stun_types::message::{Message, MessageWrite, MessageWriteExt, MessageWriteVec};

    /// A scripted TURN server: answers requests like the edge's relay would.
    struct FakeServer {
        creds: MessageIntegrityCredentials,
        relayed: SocketAddr,
        requests: Vec<stun_types::message::Method>,
        lifetime_zero_seen: bool,
    }

    impl FakeServer {
        fn new() -> Self {
            Self {
                creds: wire::long_term("u", "p", "missive"),
                relayed: "192.0.2.9:50000".parse().unwrap(),
                requests: Vec::new(),
                lifetime_zero_seen: false,
            }
        }

        fn answer(&mut self, bytes: &[u8]) -> Option<Vec<u8>> {
            let msg = Message::from_bytes(bytes).ok()?;
            if !msg.has_class(MessageClass::Request) {
                return None;
            }
            self.requests.push(msg.method());
            if wire::verify_long(&msg, &self.creds) {
                assert_eq!(wire::username(&msg).as_deref(), Some("u"));
                if wire::u32_attr(&msg, attr::LIFETIME) == Some(0) {
                    self.lifetime_zero_seen = true;
                }
                let mut b = Message::builder_success(&msg, MessageWriteVec::new());
                if msg.has_method(method::ALLOCATE) {
                    let tid = b.transaction_id();
                    let a = stun_types::attribute::XorSocketAddr::new(self.relayed, tid);
                    b.add_attribute(&a.to_raw(attr::XOR_RELAYED_ADDRESS))
                        .unwrap();
                    b.add_attribute(&stun_types::attribute::RawAttribute::new(
                        attr::LIFETIME,
                        &600u32.to_be_bytes(),
                    ))
                    .unwrap();
                }
                b.add_message_integrity(&self.creds, stun_types::message::IntegrityAlgorithm::Sha1)
                    .unwrap();
                Some(b.finish())
            } else {
                let mut b = Message::builder_error(&msg, MessageWriteVec::new());
                b.add_attribute(&ErrorCode::builder(401).build().unwrap())
                    .unwrap();
                b.add_attribute(&Realm::new("missive").unwrap()).unwrap();
                b.add_attribute(&Nonce::new("n1").unwrap()).unwrap();
                Some(b.finish())
            }
        }
    }

    fn pump(c: &mut TurnClient, s: &mut FakeServer, now: Instant) {
        while let Some(out) = c.poll_transmit() {
            if let Some(reply) = s.answer(&out) {
                let msg = Message::from_bytes(&reply).unwrap();
                c.handle_stun(now, &msg);
            }
        }
    }

    #[test]
    fn allocates_after_the_challenge_binds_a_channel_and_releases() {
        let now = Instant::now();
        let mut s = FakeServer::new();
        let mut c = TurnClient::new("192.0.2.1:3478".parse().unwrap(), "u".into(), "p".into());
        c.allocate(now);
        pump(&mut c, &mut s, now);
        assert_eq!(
            c.poll_event(),
            Some(TurnEvent::Allocated {
                relayed: s.relayed,
                mapped: None
            })
        );
        // Unauthenticated, then authenticated.
        assert_eq!(s.requests, vec![method::ALLOCATE, method::ALLOCATE]);
        let peer: SocketAddr = "198.51.100.7:4000".parse().unwrap();
        // Before the channel is bound: a Send indication.
        let send = c.wrap(peer, b"hello");
        assert!(matches!(
            wire::classify(&send),
            Some(wire::Datagram::Stun(_))
        ));
        c.add_peer(now, peer);
        pump(&mut c, &mut s, now);
        assert!(s.requests.contains(&method::CREATE_PERMISSION));
        assert!(s.requests.contains(&method::CHANNEL_BIND));
        let cd = c.wrap(peer, b"hello");
        let Some(wire::Datagram::ChannelData(n, p)) = wire::classify(&cd) else {
            panic!("not ChannelData")
        };
        assert_eq!(c.handle_channel_data(n, p), Some((peer, &b"hello"[..])));
        assert_eq!(c.handle_channel_data(n + 1, p), None);
        // Refresh before the lifetime ends.
        let t = c.poll_timeout().expect("a refresh timer");
        assert!(t <= now + Duration::from_secs(600));
        c.release(now);
        pump(&mut c, &mut s, now);
        assert!(s.lifetime_zero_seen);
        assert_eq!(c.poll_event(), Some(TurnEvent::Released));
        assert!(c.is_done());
    }

    #[test]
    fn unanswered_allocate_retransmits_then_fails() {
        let mut now = Instant::now();
        let mut c = TurnClient::new("192.0.2.1:3478".parse().unwrap(), "u".into(), "p".into());
        c.allocate(now);
        let mut sent = 0;
        while c.poll_event().is_none() {
            while c.poll_transmit().is_some() {
                sent += 1;
            }
            now = c.poll_timeout().expect("a retransmission timer");
            c.handle_timeout(now);
            assert!(sent <= usize::from(MAX_TRIES));
        }
        assert_eq!(sent, usize::from(MAX_TRIES));
    }

    #[test]
    fn wrong_password_fails() {
        let now = Instant::now();
        let mut s = FakeServer::new();
        let mut c = TurnClient::new("192.0.2.1:3478".parse().unwrap(), "u".into(), "bad".into());
        c.allocate(now);
        let first = c.poll_transmit().unwrap();
        let challenge = s.answer(&first).unwrap();
        c.handle_stun(now, &Message::from_bytes(&challenge).unwrap());
        let second = c.poll_transmit().unwrap();
        // The server's answer to a wrongly signed request is another 401: the client stops.
        let reply = s.answer(&second).unwrap();
        c.handle_stun(now, &Message::from_bytes(&reply).unwrap());
        assert!(matches!(c.poll_event(), Some(TurnEvent::Failed(_))));
        assert!(c.relayed().is_none());
    }

    fn allocated(s: &mut FakeServer, now: Instant) -> TurnClient {
        let mut c = TurnClient::new("192.0.2.1:3478".parse().unwrap(), "u".into(), "p".into());
        c.allocate(now);
        pump(&mut c, s, now);
        assert!(matches!(c.poll_event(), Some(TurnEvent::Allocated { .. })));
        c
    }

    #[test]
    fn refreshes_before_the_lifetime_ends() {
        let now = Instant::now();
        let mut s = FakeServer::new();
        let mut c = allocated(&mut s, now);
        s.requests.clear();
        // Nothing due before the refresh time, a Refresh at it.
        c.handle_timeout(now + Duration::from_secs(60));
        assert!(c.poll_transmit().is_none());
        let at = c.poll_timeout().unwrap();
        assert!(at <= now + Duration::from_secs(540), "{:?}", at - now);
        c.handle_timeout(at);
        pump(&mut c, &mut s, at);
        assert_eq!(s.requests, vec![method::REFRESH]);
        assert!(!s.lifetime_zero_seen);
        assert!(c.relayed().is_some());
    }

    #[test]
    fn stale_nonce_is_retried_with_the_new_one() {
        let now = Instant::now();
        let mut s = FakeServer::new();
        let mut c = allocated(&mut s, now);
        let peer: SocketAddr = "198.51.100.7:4000".parse().unwrap();
        c.add_peer(now, peer);
        // The server answers the first request with 438 and a new nonce.
        let req = c.poll_transmit().unwrap();
        let msg = Message::from_bytes(&req).unwrap();
        let mut b = Message::builder_error(&msg, MessageWriteVec::new());
        b.add_attribute(&ErrorCode::builder(438).build().unwrap())
            .unwrap();
        b.add_attribute(&Realm::new("missive").unwrap()).unwrap();
        b.add_attribute(&Nonce::new("n2").unwrap()).unwrap();
        c.handle_stun(now, &Message::from_bytes(&b.finish()).unwrap());
        // The retry carries the new nonce and is accepted; the channel gets bound.
        let mut saw_new_nonce = false;
        while let Some(out) = c.poll_transmit() {
            let m = Message::from_bytes(&out).unwrap();
            saw_new_nonce |= wire::realm_nonce(&m).is_some_and(|(_, n)| n == "n2");
            if let Some(reply) = s.answer(&out) {
                c.handle_stun(now, &Message::from_bytes(&reply).unwrap());
            }
        }
        assert!(saw_new_nonce);
        assert!(matches!(
            wire::classify(&c.wrap(peer, b"x")),
            Some(wire::Datagram::ChannelData(..))
        ));
    }

    #[test]
    fn success_signed_with_other_credentials_is_ignored() {
        let now = Instant::now();
        let mut s = FakeServer::new();
        let mut c = TurnClient::new("192.0.2.1:3478".parse().unwrap(), "u".into(), "p".into());
        c.allocate(now);
        let first = c.poll_transmit().unwrap();
        let challenge = s.answer(&first).unwrap();
        c.handle_stun(now, &Message::from_bytes(&challenge).unwrap());
        let second = c.poll_transmit().unwrap();
        // A forger who knows the transaction id but not the password.
        let req = Message::from_bytes(&second).unwrap();
        let mut b = Message::builder_success(&req, MessageWriteVec::new());
        let tid = b.transaction_id();
        let fake =
            stun_types::attribute::XorSocketAddr::new("203.0.113.66:1".parse().unwrap(), tid);
        b.add_attribute(&fake.to_raw(attr::XOR_RELAYED_ADDRESS))
            .unwrap();
        b.add_message_integrity(
            &wire::long_term("u", "other", "missive"),
            stun_types::message::IntegrityAlgorithm::Sha1,
        )
        .unwrap();
        let forged = b.finish();
        c.handle_stun(now, &Message::from_bytes(&forged).unwrap());
        assert!(c.poll_event().is_none());
        assert!(c.relayed().is_none());
        // The real answer still works.
        let real = s.answer(&second).unwrap();
        c.handle_stun(now, &Message::from_bytes(&real).unwrap());
        assert_eq!(c.relayed(), Some(s.relayed));
    }
}
