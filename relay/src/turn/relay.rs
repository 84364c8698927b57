//! The relay's state machine: STUN Binding and TURN (clients over UDP or TCP, peers over
//! UDP), without sockets or clocks.

use super::allocation::{Allocation, AllocationId, Owner};
use super::stats::Stats;
use crate::config::{RelayConfig, Secret};
use crate::credentials::{check_username, password_for};
use crate::nonce::{NonceCheck, Nonces};
use crate::peer_policy::{canonical, PeerPolicy};
use crate::wire::{self, attr, method, Datagram, Reply};
use std::collections::{HashMap, VecDeque};
use std::net::{IpAddr, SocketAddr};
use std::time::{Duration, Instant};
use stun_types::message::{
    LongTermKeyCredentials, Message, MessageClass, MessageIntegrityCredentials, BINDING,
};

/// The transport a client reached the relay over. Peers are always reached over UDP
/// (REQUESTED-TRANSPORT 17); only the client's leg differs.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Transport {
    /// UDP on the listening socket: one message per datagram.
    Udp,
    /// A TCP connection to the listening port (RFC 8656 §5): the driver cuts the stream into
    /// whole STUN or ChannelData messages and passes one per [`Relay::handle_client`]; the
    /// address is the connection's remote address. ChannelData to such a client is padded
    /// to a multiple of 4 bytes (§12.5), and the allocation ends when the driver reports
    /// the connection closed ([`Relay::client_closed`]).
    Tcp,
}

/// What [`Relay::handle_client`] made of a message.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Received {
    /// A STUN or ChannelData message (answered, relayed or refused by the protocol's rules).
    Handled,
    /// Not a STUN or ChannelData message at all: dropped and counted. Over TCP the stream is
    /// no longer trustworthy and the driver closes that connection.
    Malformed,
}

/// The address family of a relay socket to open.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Family {
    /// IPv4.
    V4,
    /// IPv6.
    V6,
}

/// Something the driver must do. Drain with [`Relay::poll_output`] after every `handle_*`
/// call, in order: a response may follow an [`Output::OpenRelay`] only once the driver has
/// answered it with [`Relay::relay_opened`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Output {
    /// Send `data` from the listening socket to the client at `to`.
    ToClient {
        /// The transport the client uses.
        transport: Transport,
        /// The client's address.
        to: SocketAddr,
        /// One datagram.
        data: Vec<u8>,
    },
    /// Send `data` from the relay socket of `alloc` to the peer at `to`.
    ToPeer {
        /// The allocation whose socket sends.
        alloc: AllocationId,
        /// The peer's address.
        to: SocketAddr,
        /// One datagram (the payload only).
        data: Vec<u8>,
    },
    /// Bind a UDP socket on the relay address and a port of the configured range for
    /// `alloc` (an even port when `even_port`), then call [`Relay::relay_opened`].
    OpenRelay {
        /// The allocation the socket belongs to.
        alloc: AllocationId,
        /// Which family (always the relay address's family).
        family: Family,
        /// The client asked for an even port (EVEN-PORT).
        even_port: bool,
    },
    /// Close the relay socket of `alloc` (expired, deleted, or refused after opening).
    CloseRelay {
        /// The allocation that ended.
        alloc: AllocationId,
    },
}

/// The driver could not open a relay socket.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum OpenRelayError {
    /// Every port of the range is taken (the client gets 508 Insufficient Capacity).
    #[error("no free relay port")]
    NoPort,
}

#[derive(Debug)]
struct Pending {
    client: SocketAddr,
    transport: Transport,
    owner: Owner,
    lifetime: Duration,
    tid: stun_types::message::TransactionId,
    /// The Allocate request, kept to build the response once the socket is open.
    request: Vec<u8>,
}

/// Where an allocation stands for a client's 5-tuple.
#[derive(Debug, Clone, Copy)]
enum Slot {
    Pending(AllocationId),
    Ready(AllocationId),
}

/// The STUN/TURN relay as a state machine (CONVENTIONS §1).
///
/// Inputs: [`Relay::handle_client`] for every datagram on the listening socket,
/// [`Relay::handle_peer`] for every datagram on a relay socket, [`Relay::relay_opened`] to
/// answer [`Output::OpenRelay`], and [`Relay::handle_timeout`] when [`Relay::poll_timeout`]
/// passes (or about once a second). After each input, drain [`Relay::poll_output`] until it
/// returns `None` and perform the outputs in order.
///
/// Time is always an argument: `now` for lifetimes and budgets, and the Unix time is
/// derived from the `(Instant, unix seconds)` pair given to [`Relay::new`], for the expiry
/// of REST usernames and nonces.
pub struct Relay {
    config: RelayConfig,
    policy: PeerPolicy,
    secret: Secret,
    /// The secret before the last [`Relay::set_secret`]: credentials minted just before a
    /// rotation keep working until they expire (minted ones live minutes, not days).
    previous_secret: Option<Secret>,
    nonces: Nonces,
    epoch: Instant,
    epoch_unix: u64,
    next_id: u64,
    slots: HashMap<(Transport, SocketAddr), Slot>,
    allocations: HashMap<AllocationId, Allocation>,
    /// The allocations by relayed address: what a client sends to another allocation of
    /// this relay is handed over here, not through two sockets (see `relay_to_peer`).
    by_relayed: HashMap<SocketAddr, AllocationId>,
    pending: HashMap<AllocationId, Pending>,
    per_user: HashMap<String, usize>,
    out: VecDeque<Output>,
    stats: Stats,
}

impl std::fmt::Debug for Relay {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Relay")
            .field("allocations", &self.allocations.len())
            .field("pending", &self.pending.len())
            .field("stats", &self.stats)
            .finish_non_exhaustive()
    }
}

impl Relay {
    /// A relay with `config` (already validated), a random `nonce_key`, and the clock pair
    /// `(now, now_unix)` that maps later `Instant`s to Unix time.
    pub fn new(config: RelayConfig, nonce_key: [u8; 32], now: Instant, now_unix: u64) -> Self {
        let policy = PeerPolicy {
            allow_loopback: config.allow_loopback_peers,
            allow: config.allow_peers.clone(),
            deny: config.deny_peers.clone(),
        };
        Self {
            nonces: Nonces::new(nonce_key, config.nonce_lifetime_secs),
            secret: config.secret.clone(),
            previous_secret: None,
            policy,
            config,
            epoch: now,
            epoch_unix: now_unix,
            next_id: 1,
            slots: HashMap::new(),
            by_relayed: HashMap::new(),
            allocations: HashMap::new(),
            pending: HashMap::new(),
            per_user: HashMap::new(),
            out: VecDeque::new(),
            stats: Stats::default(),
        }
    }

    /// Replaces the REST secret (SIGHUP). Credentials minted with the previous secret are
    /// still accepted until they expire; those older than that are refused.
    pub fn set_secret(&mut self, secret: Secret) {
        if secret != self.secret {
            self.previous_secret = Some(std::mem::replace(&mut self.secret, secret));
        }
    }

    /// The current REST secret (what the edge mints with).
    pub fn secret(&self) -> &Secret {
        &self.secret
    }

    /// The counters.
    pub fn stats(&self) -> Stats {
        let mut s = self.stats;
        s.allocations_active = (self.allocations.len() + self.pending.len()) as u64;
        s
    }

    /// The next output to perform, in order.
    pub fn poll_output(&mut self) -> Option<Output> {
        self.out.pop_front()
    }

    /// When [`Relay::handle_timeout`] should run next: the earliest allocation expiry.
    /// Permissions and channels are checked at use, so they need no timer.
    pub fn poll_timeout(&self) -> Option<Instant> {
        self.allocations.values().map(|a| a.expires).min()
    }

    /// Ends expired allocations (emitting [`Output::CloseRelay`]) and forgets expired
    /// permissions and channels.
    pub fn handle_timeout(&mut self, now: Instant) {
        let expired: Vec<AllocationId> = self
            .allocations
            .iter()
            .filter(|(_, a)| a.expires <= now)
            .map(|(id, _)| *id)
            .collect();
        for id in expired {
            self.remove_allocation(id);
        }
        for a in self.allocations.values_mut() {
            a.sweep(now);
        }
    }

    /// A datagram from a client on the listening socket.
    pub fn handle_client(
        &mut self,
        now: Instant,
        transport: Transport,
        from: SocketAddr,
        data: &[u8],
    ) -> Received {
        match wire::parse_datagram(data) {
            None => {
                self.stats.refusals.malformed += 1;
                return Received::Malformed;
            }
            Some(Datagram::ChannelData(channel, payload)) => {
                self.channel_data_from_client(now, (transport, from), channel, payload)
            }
            Some(Datagram::Stun(msg)) => match msg.class() {
                MessageClass::Request => self.request(now, (transport, from), data, &msg),
                MessageClass::Indication if msg.method() == method::SEND => {
                    self.send_indication(now, (transport, from), &msg)
                }
                // Responses and other indications have no business here.
                _ => self.stats.refusals.malformed += 1,
            },
        }
        Received::Handled
    }

    /// The client's TCP connection closed (or was closed by the driver): its allocation, if
    /// any, ends at once (RFC 8656 §5: an allocation over TCP lives as long as its
    /// connection). For UDP there is no such event; allocations expire instead.
    pub fn client_closed(&mut self, transport: Transport, from: SocketAddr) {
        match self.slots.get(&(transport, from)).copied() {
            Some(Slot::Ready(id)) => self.remove_allocation(id),
            Some(Slot::Pending(id)) => {
                // The socket being opened is closed when `relay_opened` finds no pending.
                if let Some(p) = self.pending.remove(&id) {
                    self.release_slot((transport, from), &p.owner.user);
                }
            }
            None => {}
        }
    }

    /// Counts a client's TCP stream closed for bytes that start no STUN or ChannelData
    /// message (the driver's framing saw them before any message could be handed in).
    pub(crate) fn stream_malformed(&mut self) {
        self.stats.refusals.malformed += 1;
    }

    /// Whether the client at `from` holds an allocation (or one is being opened): the
    /// driver's idle rule for TCP connections closes only those that hold none.
    pub fn has_allocation(&self, transport: Transport, from: SocketAddr) -> bool {
        self.slots.contains_key(&(transport, from))
    }

    /// A datagram from `from` on the relay socket of `alloc`.
    pub fn handle_peer(
        &mut self,
        now: Instant,
        alloc: AllocationId,
        from: SocketAddr,
        data: &[u8],
    ) {
        let Some(a) = self.allocations.get_mut(&alloc) else {
            self.stats.refusals.no_permission += 1;
            return;
        };
        if a.expires <= now || !a.permitted(from.ip(), now) {
            self.stats.refusals.no_permission += 1;
            return;
        }
        if a.admit(data.len(), now).is_err() {
            self.stats.refusals.rate_limited += 1;
            return;
        }
        let framed = match a.channel_of(from, now) {
            Some(ch) => wire::channel_data(ch, data, a.transport == Transport::Tcp),
            None => match wire::data_indication(from, data) {
                Some(m) => m,
                None => {
                    self.stats.refusals.malformed += 1;
                    return;
                }
            },
        };
        self.stats.packets_to_clients += 1;
        self.stats.bytes_to_clients += data.len() as u64;
        self.out.push_back(Output::ToClient {
            transport: a.transport,
            to: a.client,
            data: framed,
        });
    }

    /// The driver's answer to [`Output::OpenRelay`]: the relayed address, or why not.
    pub fn relay_opened(
        &mut self,
        now: Instant,
        alloc: AllocationId,
        result: Result<SocketAddr, OpenRelayError>,
    ) {
        let Some(p) = self.pending.remove(&alloc) else {
            // Not ours (or already gone): make sure the socket does not linger.
            if result.is_ok() {
                self.out.push_back(Output::CloseRelay { alloc });
            }
            return;
        };
        let key = (p.transport, p.client);
        // The request was parsed once already; it parses again.
        let Some(Datagram::Stun(req)) = wire::parse_datagram(&p.request) else {
            self.release_slot(key, &p.owner.user);
            return;
        };
        let relayed = match result {
            Ok(addr) => addr,
            Err(OpenRelayError::NoPort) => {
                self.release_slot(key, &p.owner.user);
                self.stats.refusals.insufficient_capacity += 1;
                let reply = Reply::error(&req, 508, true).sign(&p.owner.creds, p.owner.algorithm);
                self.send_client(key, reply);
                return;
            }
        };
        let lifetime_secs = p.lifetime.as_secs().min(u64::from(u32::MAX)) as u32;
        let response = Reply::success(&req)
            .xor_address(attr::XOR_RELAYED_ADDRESS, relayed)
            .u32(attr::LIFETIME, lifetime_secs)
            .mapped(p.client)
            .sign(&p.owner.creds, p.owner.algorithm);
        let mut allocation = Allocation::new(
            p.client,
            p.owner,
            relayed,
            now + p.lifetime,
            p.tid,
            response.clone(),
            self.config.max_bytes_per_sec,
            self.config.max_packets_per_sec,
            now,
        );
        allocation.transport = p.transport;
        self.allocations.insert(alloc, allocation);
        self.by_relayed.insert(relayed, alloc);
        self.slots.insert(key, Slot::Ready(alloc));
        self.stats.allocations_created += 1;
        self.send_client(key, response);
    }

    fn unix(&self, now: Instant) -> u64 {
        self.epoch_unix + now.saturating_duration_since(self.epoch).as_secs()
    }

    fn send_client(&mut self, (transport, to): (Transport, SocketAddr), data: Vec<u8>) {
        self.out.push_back(Output::ToClient {
            transport,
            to,
            data,
        });
    }

    /// Sends an unauthenticated response: with reason phrases if that is no larger than the
    /// request, else minimized (no reason phrase, nothing optional) if that is no larger;
    /// otherwise a minimized 401/438 challenge (`challenge`) may be up to
    /// `challenge_amplification_percent` of the request, because without it a client whose
    /// first Allocate is small can never authenticate; anything else is dropped and counted.
    fn reply_bounded(
        &mut self,
        key: (Transport, SocketAddr),
        request_len: usize,
        challenge: bool,
        build: impl Fn(bool) -> Vec<u8>,
    ) {
        let full = build(true);
        if full.len() <= request_len {
            return self.send_client(key, full);
        }
        let minimal = build(false);
        if minimal.len() <= request_len {
            return self.send_client(key, minimal);
        }
        let allowance =
            request_len * usize::from(self.config.challenge_amplification_percent) / 100;
        if challenge && minimal.len() <= allowance {
            self.stats.amplified_challenges += 1;
            return self.send_client(key, minimal);
        }
        self.stats.refusals.amplification += 1;
    }

    fn request(
        &mut self,
        now: Instant,
        key: (Transport, SocketAddr),
        raw: &[u8],
        msg: &Message<'_>,
    ) {
        let unknown = wire::unknown_required(msg);
        if !unknown.is_empty() {
            self.stats.refusals.unknown_attribute += 1;
            return self.reply_bounded(key, raw.len(), false, |reason| {
                wire::unknown_attributes(Reply::error(msg, 420, reason), &unknown).finish(false)
            });
        }
        let m = msg.method();
        if m == BINDING {
            return self.binding(key, msg);
        }
        if ![
            method::ALLOCATE,
            method::REFRESH,
            method::CREATE_PERMISSION,
            method::CHANNEL_BIND,
        ]
        .contains(&m)
        {
            self.stats.refusals.bad_request += 1;
            return self.reply_bounded(key, raw.len(), false, |reason| {
                Reply::error(msg, 400, reason).finish(false)
            });
        }
        let Some(owner) = self.authenticate(now, key, raw.len(), msg) else {
            return;
        };
        if m == method::ALLOCATE {
            self.allocate(key, raw, msg, owner)
        } else {
            let id = match self.slots.get(&key) {
                Some(Slot::Ready(id)) => *id,
                _ => {
                    self.stats.refusals.allocation_mismatch += 1;
                    return self.signed_error(key, msg, &owner, 437);
                }
            };
            let Some(a) = self.allocations.get(&id) else {
                return;
            };
            if a.owner.username != owner.username {
                self.stats.refusals.wrong_credentials += 1;
                return self.signed_error(key, msg, &owner, 441);
            }
            match m {
                method::REFRESH => self.refresh(now, key, id, msg, owner),
                method::CREATE_PERMISSION => self.create_permission(now, key, id, msg, owner),
                _ => self.channel_bind(now, key, id, msg, owner),
            }
        }
    }

    /// Binding: XOR-MAPPED-ADDRESS, plus FINGERPRINT when the request carried one. This is
    /// the one unauthenticated answer that may exceed its request: a bare 20-byte Binding
    /// request (what `turnutils_stunclient` and browsers send) gets the 32-byte answer, the
    /// smallest that carries an IPv4 address (44 bytes for IPv6), with no SOFTWARE and no
    /// other optional attribute; that 1.6x bound is coturn's best setting too.
    fn binding(&mut self, key: (Transport, SocketAddr), msg: &Message<'_>) {
        self.stats.bindings += 1;
        let fingerprint = msg.has_attribute(attr::FINGERPRINT);
        let reply = Reply::success(msg).mapped(key.1).finish(fingerprint);
        self.send_client(key, reply);
    }

    /// Answers 401 or 438 with REALM and a fresh NONCE, within the amplification bound.
    fn challenge(
        &mut self,
        now: Instant,
        key: (Transport, SocketAddr),
        request_len: usize,
        msg: &Message<'_>,
        code: u16,
    ) {
        let nonce = self.nonces.issue(key.1, self.unix(now));
        let realm = self.config.realm.clone();
        self.reply_bounded(key, request_len, true, |reason| {
            Reply::error(msg, code, reason)
                .challenge(&realm, &nonce)
                .finish(false)
        });
    }

    /// The long-term credential check (RFC 8489 §9.2.4) with REST usernames. Sends the
    /// error itself and returns `None` when the request is not authenticated.
    fn authenticate(
        &mut self,
        now: Instant,
        key: (Transport, SocketAddr),
        request_len: usize,
        msg: &Message<'_>,
    ) -> Option<Owner> {
        let from = key.1;
        let has_integrity = msg.has_attribute(attr::MESSAGE_INTEGRITY)
            || msg.has_attribute(attr::MESSAGE_INTEGRITY_SHA256);
        if !has_integrity {
            self.stats.refusals.unauthorized += 1;
            self.challenge(now, key, request_len, msg, 401);
            return None;
        }
        let text = |a| wire::text_attr(msg, a).and_then(Result::ok);
        let (Some(username), Some(realm), Some(nonce)) =
            (text(attr::USERNAME), text(attr::REALM), text(attr::NONCE))
        else {
            self.stats.refusals.bad_request += 1;
            self.reply_bounded(key, request_len, false, |reason| {
                Reply::error(msg, 400, reason).finish(false)
            });
            return None;
        };
        let unix = self.unix(now);
        let unauthorized = |this: &mut Self| {
            this.stats.refusals.unauthorized += 1;
            this.challenge(now, key, request_len, msg, 401);
        };
        if self.nonces.check(&nonce, from, unix) == NonceCheck::Stale {
            self.stats.refusals.stale_nonce += 1;
            self.challenge(now, key, request_len, msg, 438);
            return None;
        }
        if realm != self.config.realm {
            unauthorized(self);
            return None;
        }
        let Ok(rest) = check_username(&username, unix) else {
            unauthorized(self);
            return None;
        };
        let user = rest.user.to_owned();
        let secrets = std::iter::once(&self.secret).chain(self.previous_secret.as_ref());
        for secret in secrets {
            let password = password_for(secret.as_bytes(), &username);
            let creds: MessageIntegrityCredentials =
                LongTermKeyCredentials::new(username.clone(), password, realm.clone()).into();
            if let Ok(algorithm) = msg.validate_integrity(&creds) {
                return Some(Owner {
                    username,
                    user,
                    creds,
                    algorithm,
                });
            }
        }
        unauthorized(self);
        None
    }

    fn signed_error(
        &mut self,
        key: (Transport, SocketAddr),
        msg: &Message<'_>,
        owner: &Owner,
        code: u16,
    ) {
        let reply = Reply::error(msg, code, true).sign(&owner.creds, owner.algorithm);
        self.send_client(key, reply);
    }

    fn bad_request(&mut self, key: (Transport, SocketAddr), msg: &Message<'_>, owner: &Owner) {
        self.stats.refusals.bad_request += 1;
        self.signed_error(key, msg, owner, 400);
    }

    fn family(&self) -> Family {
        match self.config.relay_ip() {
            IpAddr::V4(_) => Family::V4,
            IpAddr::V6(_) => Family::V6,
        }
    }

    fn allocate(
        &mut self,
        key: (Transport, SocketAddr),
        raw: &[u8],
        msg: &Message<'_>,
        owner: Owner,
    ) {
        match self.slots.get(&key).copied() {
            Some(Slot::Ready(id)) => {
                let retransmit = self
                    .allocations
                    .get(&id)
                    .filter(|a| a.allocate_tid == msg.transaction_id())
                    .map(|a| a.allocate_response.clone());
                match retransmit {
                    Some(response) => self.send_client(key, response),
                    None => {
                        self.stats.refusals.allocation_mismatch += 1;
                        self.signed_error(key, msg, &owner, 437);
                    }
                }
                return;
            }
            Some(Slot::Pending(id)) => {
                let same = self
                    .pending
                    .get(&id)
                    .is_some_and(|p| p.tid == msg.transaction_id());
                if !same {
                    self.stats.refusals.allocation_mismatch += 1;
                    self.signed_error(key, msg, &owner, 437);
                }
                // A retransmission while the socket opens: the response is on its way.
                return;
            }
            None => {}
        }
        match wire::first_byte_attr(msg, attr::REQUESTED_TRANSPORT) {
            Some(Ok(wire::PROTO_UDP)) => {}
            Some(Ok(_)) => {
                self.stats.refusals.unsupported_transport += 1;
                return self.signed_error(key, msg, &owner, 442);
            }
            None | Some(Err(())) => return self.bad_request(key, msg, &owner),
        }
        let even_port = match wire::first_byte_attr(msg, attr::EVEN_PORT) {
            None => false,
            Some(Err(())) => return self.bad_request(key, msg, &owner),
            // The R bit asks to reserve the next port too, which this relay does not do.
            Some(Ok(flags)) if flags & 0x80 != 0 => {
                self.stats.refusals.insufficient_capacity += 1;
                return self.signed_error(key, msg, &owner, 508);
            }
            Some(Ok(_)) => true,
        };
        if msg.has_attribute(attr::RESERVATION_TOKEN) {
            self.stats.refusals.insufficient_capacity += 1;
            return self.signed_error(key, msg, &owner, 508);
        }
        match wire::first_byte_attr(msg, attr::REQUESTED_ADDRESS_FAMILY) {
            None => {}
            Some(Ok(f)) => {
                let wanted = match f {
                    0x01 => Family::V4,
                    0x02 => Family::V6,
                    _ => return self.bad_request(key, msg, &owner),
                };
                if wanted != self.family() {
                    self.stats.refusals.address_family += 1;
                    return self.signed_error(key, msg, &owner, 440);
                }
            }
            Some(Err(())) => return self.bad_request(key, msg, &owner),
        }
        let lifetime = match wire::u32_attr(msg, attr::LIFETIME) {
            None => self.config.default_lifetime(),
            Some(Ok(secs)) => Duration::from_secs(u64::from(secs))
                .clamp(self.config.default_lifetime(), self.config.max_lifetime()),
            Some(Err(())) => return self.bad_request(key, msg, &owner),
        };
        let held = self.per_user.get(&owner.user).copied().unwrap_or(0);
        if held >= self.config.max_allocations_per_user {
            self.stats.refusals.quota += 1;
            return self.signed_error(key, msg, &owner, 486);
        }
        if self.allocations.len() + self.pending.len() >= self.config.max_allocations {
            self.stats.refusals.insufficient_capacity += 1;
            return self.signed_error(key, msg, &owner, 508);
        }
        let id = AllocationId(self.next_id);
        self.next_id += 1;
        *self.per_user.entry(owner.user.clone()).or_insert(0) += 1;
        self.slots.insert(key, Slot::Pending(id));
        self.pending.insert(
            id,
            Pending {
                client: key.1,
                transport: key.0,
                owner,
                lifetime,
                tid: msg.transaction_id(),
                request: raw.to_vec(),
            },
        );
        self.out.push_back(Output::OpenRelay {
            alloc: id,
            family: self.family(),
            even_port,
        });
    }

    fn refresh(
        &mut self,
        now: Instant,
        key: (Transport, SocketAddr),
        id: AllocationId,
        msg: &Message<'_>,
        owner: Owner,
    ) {
        let lifetime = match wire::u32_attr(msg, attr::LIFETIME) {
            None => self.config.default_lifetime(),
            Some(Ok(secs)) => Duration::from_secs(u64::from(secs)).min(self.config.max_lifetime()),
            Some(Err(())) => return self.bad_request(key, msg, &owner),
        };
        if lifetime.is_zero() {
            self.remove_allocation(id);
        } else if let Some(a) = self.allocations.get_mut(&id) {
            a.expires = now + lifetime;
        }
        let reply = Reply::success(msg)
            .u32(attr::LIFETIME, lifetime.as_secs() as u32)
            .sign(&owner.creds, owner.algorithm);
        self.send_client(key, reply);
    }

    /// The peers of a CreatePermission or ChannelBind, checked for family and policy.
    /// `Err(code)` is the error to answer with.
    fn checked_peers(
        &mut self,
        id: AllocationId,
        msg: &Message<'_>,
    ) -> Result<Vec<SocketAddr>, u16> {
        let relayed_v4 = self
            .allocations
            .get(&id)
            .map(|a| a.relayed.is_ipv4())
            .unwrap_or(true);
        let mut peers = Vec::new();
        while let Some(peer) = wire::xor_peer_address(msg, peers.len()) {
            let Ok(peer) = peer else {
                self.stats.refusals.bad_request += 1;
                return Err(400);
            };
            peers.push(peer);
            if peers.len() > 64 {
                self.stats.refusals.bad_request += 1;
                return Err(400);
            }
        }
        if peers.is_empty() {
            self.stats.refusals.bad_request += 1;
            return Err(400);
        }
        for peer in &peers {
            if peer.is_ipv4() != relayed_v4 {
                self.stats.refusals.address_family += 1;
                return Err(443);
            }
            if self.policy.check(peer.ip()).is_err() && !self.is_relay_ip(peer.ip()) {
                self.stats.refusals.forbidden_peer += 1;
                return Err(403);
            }
        }
        Ok(peers)
    }

    /// Whether `ip` is the address this relay's sockets have. A permission for it is granted
    /// whatever the policy says of it (operators list their own ranges in `deny_peers`), as
    /// the relay only hands datagrams for it to its own allocations: sends to any other port
    /// of it are dropped in `relay_to_peer`.
    fn is_relay_ip(&self, ip: IpAddr) -> bool {
        canonical(ip) == canonical(self.config.relay_ip())
    }

    fn create_permission(
        &mut self,
        now: Instant,
        key: (Transport, SocketAddr),
        id: AllocationId,
        msg: &Message<'_>,
        owner: Owner,
    ) {
        let peers = match self.checked_peers(id, msg) {
            Ok(p) => p,
            Err(code) => return self.signed_error(key, msg, &owner, code),
        };
        if let Some(a) = self.allocations.get_mut(&id) {
            for peer in peers {
                a.permit(peer.ip(), now);
            }
        }
        let reply = Reply::success(msg).sign(&owner.creds, owner.algorithm);
        self.send_client(key, reply);
    }

    fn channel_bind(
        &mut self,
        now: Instant,
        key: (Transport, SocketAddr),
        id: AllocationId,
        msg: &Message<'_>,
        owner: Owner,
    ) {
        let channel = match wire::channel_number(msg) {
            Some(Ok(ch)) if wire::CHANNELS.contains(&ch) => ch,
            _ => return self.bad_request(key, msg, &owner),
        };
        let peers = match self.checked_peers(id, msg) {
            Ok(p) if p.len() == 1 => p,
            Ok(_) => return self.bad_request(key, msg, &owner),
            Err(code) => return self.signed_error(key, msg, &owner, code),
        };
        let bound = self
            .allocations
            .get_mut(&id)
            .map(|a| a.bind_channel(channel, peers[0], now));
        match bound {
            Some(Ok(())) => {
                let reply = Reply::success(msg).sign(&owner.creds, owner.algorithm);
                self.send_client(key, reply);
            }
            _ => self.bad_request(key, msg, &owner),
        }
    }

    fn send_indication(&mut self, now: Instant, key: (Transport, SocketAddr), msg: &Message<'_>) {
        let Some(Slot::Ready(id)) = self.slots.get(&key).copied() else {
            self.stats.refusals.no_permission += 1;
            return;
        };
        let (Some(Ok(peer)), Some(data)) = (wire::xor_peer_address(msg, 0), wire::data_attr(msg))
        else {
            self.stats.refusals.bad_request += 1;
            return;
        };
        self.relay_to_peer(now, id, peer, &data.value);
    }

    fn channel_data_from_client(
        &mut self,
        now: Instant,
        key: (Transport, SocketAddr),
        channel: u16,
        payload: &[u8],
    ) {
        let Some(Slot::Ready(id)) = self.slots.get(&key).copied() else {
            self.stats.refusals.no_permission += 1;
            return;
        };
        let Some(peer) = self
            .allocations
            .get(&id)
            .and_then(|a| a.peer_of(channel, now))
        else {
            self.stats.refusals.no_permission += 1;
            return;
        };
        self.relay_to_peer(now, id, peer, payload);
    }

    /// Sends (Send indication) and ChannelData both come here, so the peer policy is
    /// checked once per datagram, not only at CreatePermission: a permission for this
    /// relay's own address (see `is_relay_ip`) reaches its allocations, never the host's
    /// other ports.
    fn relay_to_peer(&mut self, now: Instant, id: AllocationId, peer: SocketAddr, payload: &[u8]) {
        let within = self.by_relayed.get(&peer).copied();
        if within.is_none() && self.policy.check(peer.ip()).is_err() {
            self.stats.refusals.forbidden_peer += 1;
            return;
        }
        let Some(a) = self.allocations.get_mut(&id) else {
            self.stats.refusals.no_permission += 1;
            return;
        };
        if a.expires <= now || !a.permitted(peer.ip(), now) {
            self.stats.refusals.no_permission += 1;
            return;
        }
        if a.admit(payload.len(), now).is_err() {
            self.stats.refusals.rate_limited += 1;
            return;
        }
        self.stats.packets_to_peers += 1;
        self.stats.bytes_to_peers += payload.len() as u64;
        // The peer is another allocation of this relay (both parties of a call relaying
        // through the same edge): what its relay socket would receive from ours is handed to
        // it directly, with its own permission check, budget and framing, as if it had
        // crossed the two sockets. Half the system calls and no loopback delivery; the
        // datagram its client gets is the same.
        if let Some(target) = within {
            let from = a.relayed;
            self.stats.packets_within += 1;
            self.handle_peer(now, target, from, payload);
            return;
        }
        self.out.push_back(Output::ToPeer {
            alloc: id,
            to: peer,
            data: payload.to_vec(),
        });
    }

    fn release_slot(&mut self, key: (Transport, SocketAddr), user: &str) {
        self.slots.remove(&key);
        if let Some(n) = self.per_user.get_mut(user) {
            *n = n.saturating_sub(1);
            if *n == 0 {
                self.per_user.remove(user);
            }
        }
    }

    fn remove_allocation(&mut self, id: AllocationId) {
        if let Some(a) = self.allocations.remove(&id) {
            if self.by_relayed.get(&a.relayed) == Some(&id) {
                self.by_relayed.remove(&a.relayed);
            }
            let user = a.owner.user.clone();
            self.release_slot((a.transport, a.client), &user);
            self.out.push_back(Output::CloseRelay { alloc: id });
        }
    }

    /// The allocation id of a client (tests).
    #[cfg(test)]
    pub(crate) fn allocation_id_of(
        &self,
        transport: Transport,
        client: SocketAddr,
    ) -> Option<AllocationId> {
        match self.slots.get(&(transport, client))? {
            Slot::Ready(id) => Some(*id),
            Slot::Pending(_) => None,
        }
    }

    /// The allocation of a client (tests).
    #[cfg(test)]
    pub(crate) fn allocation_of(&self, client: SocketAddr) -> Option<&Allocation> {
        match self.slots.get(&(Transport::Udp, client))? {
            Slot::Ready(id) => self.allocations.get(id),
            Slot::Pending(_) => None,
        }
    }
}
