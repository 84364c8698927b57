//! Scenario tests of the state machine on a virtual clock: a test client builds requests
//! with the codec, the harness plays the driver (answers OpenRelay with a made-up relayed
//! address) and collects outputs.

use super::allocation::AllocationId;
use super::relay::{Output, Relay, Transport};
use crate::config::{RelayConfig, Secret};
use crate::credentials::{mint, Credentials};
use crate::wire::{attr, method};
use std::net::SocketAddr;
use std::time::{Duration, Instant};
use stun_types::attribute::{
    ErrorCode, Nonce, RawAttribute, Realm, Software, Username, XorMappedAddress, XorSocketAddr,
};
use stun_types::message::{
    IntegrityAlgorithm, LongTermKeyCredentials, Message, MessageClass, MessageIntegrityCredentials,
    MessageWrite, MessageWriteExt, MessageWriteVec, Method, TransactionId, BINDING,
};

const UNIX0: u64 = 1_700_000_000;
const SECRET: &str = "test-secret";
const PEER: &str = "198.51.100.7:9000";

fn addr(s: &str) -> SocketAddr {
    s.parse().expect("test address")
}

fn config() -> RelayConfig {
    RelayConfig {
        listen: addr("192.0.2.1:3478"),
        secret: Secret::new(SECRET),
        ..RelayConfig::default()
    }
}

struct Harness {
    relay: Relay,
    /// The transport the test clients use (UDP unless a test sets it).
    transport: Transport,
    now: Instant,
    t0: Instant,
    next_port: u16,
}

impl Harness {
    fn new(cfg: RelayConfig) -> Self {
        cfg.validate().expect("valid test config");
        let now = Instant::now();
        Self {
            relay: Relay::new(cfg, [9; 32], now, UNIX0),
            transport: Transport::Udp,
            now,
            t0: now,
            next_port: 50_000,
        }
    }

    fn unix(&self) -> u64 {
        UNIX0 + (self.now - self.t0).as_secs()
    }

    fn advance(&mut self, d: Duration) -> Vec<Output> {
        self.now += d;
        self.relay.handle_timeout(self.now);
        self.drain()
    }

    /// Drains outputs, answering OpenRelay like a driver would.
    fn drain(&mut self) -> Vec<Output> {
        let mut all = Vec::new();
        while let Some(out) = self.relay.poll_output() {
            if let Output::OpenRelay { alloc, .. } = out {
                let relayed = SocketAddr::from(([192, 0, 2, 1], self.next_port));
                self.next_port += 2;
                self.relay.relay_opened(self.now, alloc, Ok(relayed));
            }
            all.push(out);
        }
        all
    }

    fn client_sends(&mut self, from: SocketAddr, bytes: &[u8]) -> Vec<Output> {
        self.relay
            .handle_client(self.now, self.transport, from, bytes);
        self.drain()
    }

    fn peer_sends(&mut self, alloc: AllocationId, from: SocketAddr, bytes: &[u8]) -> Vec<Output> {
        self.relay.handle_peer(self.now, alloc, from, bytes);
        self.drain()
    }

    /// Sends a request and returns the one response to the client.
    fn request(&mut self, client: &mut Client, method: Method, attrs: &[Attr]) -> Vec<u8> {
        let req = client.request(method, attrs);
        let outs = self.client_sends(client.addr, &req);
        let replies: Vec<Vec<u8>> = outs
            .into_iter()
            .filter_map(|o| match o {
                Output::ToClient { to, data, .. } if to == client.addr => Some(data),
                _ => None,
            })
            .collect();
        assert_eq!(replies.len(), 1, "exactly one response expected");
        let reply = replies.into_iter().next().expect("one reply");
        client.learn(&reply);
        reply
    }

    /// A request retried once after a 438 (the nonce aged while the test advanced time).
    fn request_fresh(&mut self, client: &mut Client, method: Method, attrs: &[Attr]) -> Vec<u8> {
        let reply = self.request(client, method, attrs);
        if code(&reply) == Some(438) {
            return self.request(client, method, attrs);
        }
        reply
    }

    /// Allocate with the 401 round trip; returns the allocation id and relayed address.
    fn allocate(&mut self, client: &mut Client) -> (AllocationId, SocketAddr) {
        let first = self.request(client, method::ALLOCATE, &[Attr::Transport(17)]);
        if code(&first) == Some(401) {
            let reply = self.request(client, method::ALLOCATE, &[Attr::Transport(17)]);
            assert_eq!(class(&reply), MessageClass::Success, "{:?}", code(&reply));
            client.check_integrity(&reply);
            let relayed = xor_addr(&reply, attr::XOR_RELAYED_ADDRESS).expect("relayed address");
            let id = self.alloc_id(client);
            return (id, relayed);
        }
        panic!("first Allocate got {:?}, expected 401", code(&first));
    }

    fn alloc_id(&self, client: &Client) -> AllocationId {
        self.relay
            .allocation_id_of(self.transport, client.addr)
            .expect("allocation")
    }
}

/// Attributes the test client can put in a request.
#[derive(Clone)]
enum Attr {
    Transport(u8),
    Lifetime(u32),
    Peer(SocketAddr),
    Channel(u16),
    EvenPort(u8),
    Raw(u16, Vec<u8>),
}

struct Client {
    addr: SocketAddr,
    creds: Credentials,
    realm: Option<String>,
    nonce: Option<String>,
    /// Transaction id to reuse (retransmission tests).
    fixed_tid: Option<TransactionId>,
    /// Add a SOFTWARE attribute, as most clients do; it also makes the first Allocate big
    /// enough for the 401 (the amplification test turns it off).
    software: bool,
}

impl Client {
    fn new(addr_s: &str, creds: Credentials) -> Self {
        Self {
            addr: addr(addr_s),
            creds,
            realm: None,
            nonce: None,
            fixed_tid: None,
            software: true,
        }
    }

    fn integrity(&self) -> MessageIntegrityCredentials {
        LongTermKeyCredentials::new(
            self.creds.username.clone(),
            self.creds.password.clone(),
            self.realm.clone().expect("realm learned"),
        )
        .into()
    }

    fn request(&mut self, method: Method, attrs: &[Attr]) -> Vec<u8> {
        let tid = self.fixed_tid.unwrap_or_else(TransactionId::generate);
        let mtype =
            stun_types::message::MessageType::from_class_method(MessageClass::Request, method);
        let mut msg = Message::builder(mtype, tid, MessageWriteVec::new());
        for a in attrs {
            add_attr(&mut msg, a, tid);
        }
        if self.software {
            msg.add_attribute(&Software::new("missive relay test client").expect("software"))
                .expect("add");
        }
        if let (Some(realm), Some(nonce)) = (&self.realm, &self.nonce) {
            msg.add_attribute(&Username::new(&self.creds.username).expect("username"))
                .expect("add");
            msg.add_attribute(&Realm::new(realm).expect("realm"))
                .expect("add");
            msg.add_attribute(&Nonce::new(nonce).expect("nonce"))
                .expect("add");
            msg.add_message_integrity(&self.integrity(), IntegrityAlgorithm::Sha1)
                .expect("integrity");
        }
        msg.add_fingerprint().expect("fingerprint");
        msg.finish()
    }

    fn learn(&mut self, reply: &[u8]) {
        let msg = Message::from_bytes(reply).expect("reply parses");
        if let Ok(r) = msg.attribute::<Realm>() {
            self.realm = Some(r.realm().to_owned());
        }
        if let Ok(n) = msg.attribute::<Nonce>() {
            self.nonce = Some(n.nonce().to_owned());
        }
    }

    fn check_integrity(&self, reply: &[u8]) {
        let msg = Message::from_bytes(reply).expect("reply parses");
        msg.validate_integrity(&self.integrity())
            .expect("response signed with the client's key");
    }
}

fn add_attr(msg: &mut MessageWriteVec, a: &Attr, tid: TransactionId) {
    let res = match a {
        Attr::Transport(p) => msg.add_attribute(&RawAttribute::new(
            attr::REQUESTED_TRANSPORT,
            &[*p, 0, 0, 0],
        )),
        Attr::Lifetime(s) => {
            msg.add_attribute(&RawAttribute::new(attr::LIFETIME, &s.to_be_bytes()))
        }
        Attr::Peer(p) => {
            let x = XorSocketAddr::new(*p, tid);
            msg.add_attribute(&x.to_raw(attr::XOR_PEER_ADDRESS))
        }
        Attr::Channel(c) => {
            let b = c.to_be_bytes();
            msg.add_attribute(&RawAttribute::new(
                attr::CHANNEL_NUMBER,
                &[b[0], b[1], 0, 0],
            ))
        }
        Attr::EvenPort(f) => msg.add_attribute(&RawAttribute::new(attr::EVEN_PORT, &[*f])),
        Attr::Raw(t, v) => msg.add_attribute(&RawAttribute::new((*t).into(), v)),
    };
    res.expect("attribute added");
}

fn class(reply: &[u8]) -> MessageClass {
    Message::from_bytes(reply).expect("parses").class()
}

fn code(reply: &[u8]) -> Option<u16> {
    let msg = Message::from_bytes(reply).expect("parses");
    msg.attribute::<ErrorCode>().ok().map(|e| e.code())
}

fn xor_addr(reply: &[u8], atype: stun_types::attribute::AttributeType) -> Option<SocketAddr> {
    let msg = Message::from_bytes(reply).expect("parses");
    let raw = msg.raw_attribute(atype)?;
    Some(
        XorSocketAddr::from_raw(&raw)
            .ok()?
            .addr(msg.transaction_id()),
    )
}

fn lifetime(reply: &[u8]) -> Option<u32> {
    let msg = Message::from_bytes(reply).expect("parses");
    let raw = msg.raw_attribute(attr::LIFETIME)?;
    Some(u32::from_be_bytes(raw.value[..4].try_into().ok()?))
}

fn send_indication(peer: SocketAddr, payload: &[u8]) -> Vec<u8> {
    let mut msg = Message::builder_indication(method::SEND, MessageWriteVec::new());
    let tid = msg.transaction_id();
    add_attr(&mut msg, &Attr::Peer(peer), tid);
    msg.add_attribute(&RawAttribute::new(attr::DATA, payload))
        .expect("data");
    msg.finish()
}

fn creds(user: &str) -> Credentials {
    mint(SECRET.as_bytes(), user, Duration::from_secs(3600), UNIX0)
}

fn to_peer(outs: &[Output]) -> Vec<(SocketAddr, Vec<u8>)> {
    outs.iter()
        .filter_map(|o| match o {
            Output::ToPeer { to, data, .. } => Some((*to, data.clone())),
            _ => None,
        })
        .collect()
}

fn to_client(outs: &[Output]) -> Vec<Vec<u8>> {
    outs.iter()
        .filter_map(|o| match o {
            Output::ToClient { data, .. } => Some(data.clone()),
            _ => None,
        })
        .collect()
}

fn loopback_ok() -> RelayConfig {
    RelayConfig {
        allow_loopback_peers: true,
        ..config()
    }
}

#[test]
fn binding_answers_the_source_address_without_amplifying_beyond_the_minimum() {
    let mut h = Harness::new(config());
    let mut req = Message::builder_request(BINDING, MessageWriteVec::new()).finish();
    assert_eq!(req.len(), 20);
    let outs = h.client_sends(addr("203.0.113.5:41000"), &req);
    let replies = to_client(&outs);
    assert_eq!(replies.len(), 1);
    let msg = Message::from_bytes(&replies[0]).expect("parses");
    assert_eq!(msg.class(), MessageClass::Success);
    let mapped = msg.attribute::<XorMappedAddress>().expect("xor-mapped");
    assert_eq!(mapped.addr(msg.transaction_id()), addr("203.0.113.5:41000"));
    assert_eq!(
        replies[0].len(),
        32,
        "the smallest IPv4 answer, nothing optional"
    );

    // With FINGERPRINT in the request, the answer has one and is no larger than... 40 bytes.
    let mut w = Message::builder_request(BINDING, MessageWriteVec::new());
    w.add_fingerprint().expect("fp");
    req = w.finish();
    let replies = to_client(&h.client_sends(addr("[2001:db8::9]:5000"), &req));
    assert_eq!(replies[0].len(), 20 + 24 + 8);
    assert_eq!(h.relay.stats().bindings, 2);
}

#[test]
fn allocate_send_data_and_channels_end_to_end() {
    let mut h = Harness::new(config());
    let mut c = Client::new("203.0.113.5:41000", creds("alice"));
    let first = h.request(&mut c, method::ALLOCATE, &[Attr::Transport(17)]);
    assert_eq!(code(&first), Some(401));
    let (id, relayed) = {
        let reply = h.request(&mut c, method::ALLOCATE, &[Attr::Transport(17)]);
        assert_eq!(class(&reply), MessageClass::Success);
        c.check_integrity(&reply);
        assert_eq!(lifetime(&reply), Some(600));
        let msg = Message::from_bytes(&reply).expect("parses");
        let mapped = msg.attribute::<XorMappedAddress>().expect("xor-mapped");
        assert_eq!(mapped.addr(msg.transaction_id()), c.addr);
        (
            h.alloc_id(&c),
            xor_addr(&reply, attr::XOR_RELAYED_ADDRESS).expect("relayed"),
        )
    };
    assert_eq!(relayed, addr("192.0.2.1:50000"));
    assert_eq!(h.relay.stats().allocations_active, 1);

    // Send without a permission: dropped.
    let peer = addr(PEER);
    assert!(to_peer(&h.client_sends(c.addr, &send_indication(peer, b"early"))).is_empty());
    assert_eq!(h.relay.stats().refusals.no_permission, 1);

    let reply = h.request(&mut c, method::CREATE_PERMISSION, &[Attr::Peer(peer)]);
    assert_eq!(class(&reply), MessageClass::Success);
    c.check_integrity(&reply);

    let sent = to_peer(&h.client_sends(c.addr, &send_indication(peer, b"hello peer")));
    assert_eq!(sent, vec![(peer, b"hello peer".to_vec())]);

    // The peer answers: a Data indication to the client.
    let back = to_client(&h.peer_sends(id, peer, b"hello client"));
    assert_eq!(back.len(), 1);
    let msg = Message::from_bytes(&back[0]).expect("data indication parses");
    assert_eq!(
        (msg.class(), msg.method()),
        (MessageClass::Indication, method::DATA)
    );
    assert_eq!(
        &*msg.raw_attribute(attr::DATA).expect("data").value,
        b"hello client"
    );
    let from = XorSocketAddr::from_raw(&msg.raw_attribute(attr::XOR_PEER_ADDRESS).expect("peer"))
        .expect("addr")
        .addr(msg.transaction_id());
    assert_eq!(from, peer);

    // Another address of the same peer IP is permitted (permissions are per IP); another
    // IP is not.
    assert_eq!(
        to_client(&h.peer_sends(id, addr("198.51.100.7:1"), b"x")).len(),
        1
    );
    assert!(to_client(&h.peer_sends(id, addr("198.51.100.8:9000"), b"x")).is_empty());

    // ChannelBind, then ChannelData both ways.
    let reply = h.request(
        &mut c,
        method::CHANNEL_BIND,
        &[Attr::Channel(0x4001), Attr::Peer(peer)],
    );
    assert_eq!(class(&reply), MessageClass::Success, "{:?}", code(&reply));
    let sent = to_peer(&h.client_sends(
        c.addr,
        &crate::wire::channel_data(0x4001, b"via channel", false),
    ));
    assert_eq!(sent, vec![(peer, b"via channel".to_vec())]);
    let back = to_client(&h.peer_sends(id, peer, b"channel back"));
    assert_eq!(
        back,
        vec![crate::wire::channel_data(0x4001, b"channel back", false)]
    );
    // An unbound channel number is dropped.
    assert!(
        to_peer(&h.client_sends(c.addr, &crate::wire::channel_data(0x4002, b"x", false)))
            .is_empty()
    );
    // The same channel for another peer, or another channel for the same peer: 400.
    let other = addr("198.51.100.9:9000");
    let reply = h.request(
        &mut c,
        method::CHANNEL_BIND,
        &[Attr::Channel(0x4001), Attr::Peer(other)],
    );
    assert_eq!(code(&reply), Some(400));
    let reply = h.request(
        &mut c,
        method::CHANNEL_BIND,
        &[Attr::Channel(0x4003), Attr::Peer(peer)],
    );
    assert_eq!(code(&reply), Some(400));
    // Out of range channel: 400.
    let reply = h.request(
        &mut c,
        method::CHANNEL_BIND,
        &[Attr::Channel(0x3FFF), Attr::Peer(other)],
    );
    assert_eq!(code(&reply), Some(400));

    let s = h.relay.stats();
    assert_eq!((s.packets_to_peers, s.packets_to_clients), (2, 3));
    assert_eq!(
        s.bytes_to_peers,
        (b"hello peer".len() + b"via channel".len()) as u64
    );
}

#[test]
fn a_peer_that_is_another_allocation_of_this_relay_is_handed_over_in_the_process() {
    let mut h = Harness::new(config());
    let mut a = Client::new("203.0.113.5:41000", creds("alice"));
    let mut b = Client::new("203.0.113.6:42000", creds("bob"));
    let (_, a_relayed) = h.allocate(&mut a);
    let (_, b_relayed) = h.allocate(&mut b);
    let reply = h.request(&mut a, method::CREATE_PERMISSION, &[Attr::Peer(b_relayed)]);
    assert_eq!(class(&reply), MessageClass::Success);

    // Bob has no permission for alice's relayed address yet: his side drops it, as his
    // relay socket would, and nothing goes out through a socket either.
    let outs = h.client_sends(a.addr, &send_indication(b_relayed, b"early"));
    assert!(
        to_peer(&outs).is_empty() && to_client(&outs).is_empty(),
        "{outs:?}"
    );
    assert_eq!(h.relay.stats().refusals.no_permission, 1);

    // With it, bob's client gets a Data indication from alice's relayed address, and no
    // datagram goes to a peer socket.
    let reply = h.request(&mut b, method::CREATE_PERMISSION, &[Attr::Peer(a_relayed)]);
    assert_eq!(class(&reply), MessageClass::Success);
    let outs = h.client_sends(a.addr, &send_indication(b_relayed, b"hi bob"));
    assert!(to_peer(&outs).is_empty(), "{outs:?}");
    let delivered: Vec<_> = outs
        .iter()
        .filter_map(|o| match o {
            Output::ToClient { to, data, .. } => Some((*to, data.clone())),
            _ => None,
        })
        .collect();
    assert_eq!(delivered.len(), 1);
    assert_eq!(delivered[0].0, b.addr);
    let msg = Message::from_bytes(&delivered[0].1).expect("data indication parses");
    assert_eq!(
        (msg.class(), msg.method()),
        (MessageClass::Indication, method::DATA)
    );
    assert_eq!(
        &*msg.raw_attribute(attr::DATA).expect("data").value,
        b"hi bob"
    );
    let from = XorSocketAddr::from_raw(&msg.raw_attribute(attr::XOR_PEER_ADDRESS).expect("peer"))
        .expect("addr")
        .addr(msg.transaction_id());
    assert_eq!(from, a_relayed);

    // Bob's channel to alice's relayed address frames it as ChannelData.
    let reply = h.request(
        &mut b,
        method::CHANNEL_BIND,
        &[Attr::Channel(0x4001), Attr::Peer(a_relayed)],
    );
    assert_eq!(class(&reply), MessageClass::Success);
    let back = to_client(&h.client_sends(a.addr, &send_indication(b_relayed, b"again")));
    assert_eq!(
        back,
        vec![crate::wire::channel_data(0x4001, b"again", false)]
    );
    let s = h.relay.stats();
    assert_eq!(
        (s.packets_to_peers, s.packets_within, s.packets_to_clients),
        (3, 3, 2)
    );

    // Once bob's allocation is gone, his old address is an ordinary peer again.
    let reply = h.request(&mut b, method::REFRESH, &[Attr::Lifetime(0)]);
    assert_eq!(class(&reply), MessageClass::Success);
    assert!(h.relay.allocation_id_of(Transport::Udp, b.addr).is_none());
    let outs = h.client_sends(a.addr, &send_indication(b_relayed, b"gone"));
    assert_eq!(to_peer(&outs), vec![(b_relayed, b"gone".to_vec())]);
}

#[test]
fn the_relays_own_address_in_deny_peers_still_reaches_its_allocations_and_nothing_else() {
    // What the README tells operators to do: their own addresses in `deny_peers`.
    let mut cfg = config();
    cfg.deny_peers = vec!["192.0.2.0/24".parse().expect("range")];
    let mut h = Harness::new(cfg);
    let mut a = Client::new("203.0.113.5:41000", creds("alice"));
    let mut b = Client::new("203.0.113.6:42000", creds("bob"));
    let (_, a_relayed) = h.allocate(&mut a);
    let (_, b_relayed) = h.allocate(&mut b);
    for (c, peer) in [(&mut a, b_relayed), (&mut b, a_relayed)] {
        let r = h.request(c, method::CREATE_PERMISSION, &[Attr::Peer(peer)]);
        assert_eq!(class(&r), MessageClass::Success, "{:?}", code(&r));
    }
    let r = h.request(
        &mut a,
        method::CHANNEL_BIND,
        &[Attr::Channel(0x4000), Attr::Peer(b_relayed)],
    );
    assert_eq!(class(&r), MessageClass::Success, "{:?}", code(&r));
    // Both ways of sending reach bob's client.
    let outs = h.client_sends(a.addr, &send_indication(b_relayed, b"send"));
    assert_eq!(to_client(&outs).len(), 1, "{outs:?}");
    let outs = h.client_sends(
        a.addr,
        &crate::wire::channel_data(0x4000, b"channel", false),
    );
    assert_eq!(to_client(&outs).len(), 1, "{outs:?}");
    // Another port of the same address is not an allocation: dropped, however sent.
    let service = SocketAddr::new(b_relayed.ip(), 22);
    let outs = h.client_sends(a.addr, &send_indication(service, b"ssh?"));
    assert!(
        to_peer(&outs).is_empty() && to_client(&outs).is_empty(),
        "{outs:?}"
    );
    let r = h.request(
        &mut a,
        method::CHANNEL_BIND,
        &[Attr::Channel(0x4001), Attr::Peer(service)],
    );
    assert_eq!(class(&r), MessageClass::Success, "{:?}", code(&r));
    let outs = h.client_sends(a.addr, &crate::wire::channel_data(0x4001, b"ssh?", false));
    assert!(
        to_peer(&outs).is_empty() && to_client(&outs).is_empty(),
        "{outs:?}"
    );
    let s = h.relay.stats();
    assert_eq!((s.packets_within, s.refusals.forbidden_peer), (2, 2));
    // The rest of the denied range stays refused.
    let r = h.request(
        &mut a,
        method::CREATE_PERMISSION,
        &[Attr::Peer(addr("192.0.2.77:9"))],
    );
    assert_eq!(code(&r), Some(403));
}

#[test]
fn refresh_extends_and_lifetime_zero_deletes() {
    let mut h = Harness::new(config());
    let mut c = Client::new("203.0.113.5:41000", creds("alice"));
    let (id, _) = h.allocate(&mut c);
    // Asked for more than the maximum: clamped to 3600.
    let reply = h.request(&mut c, method::REFRESH, &[Attr::Lifetime(100_000)]);
    assert_eq!(lifetime(&reply), Some(3600));
    c.check_integrity(&reply);
    // Still alive after the first 600 s thanks to the refresh.
    assert!(h.advance(Duration::from_secs(700)).is_empty());
    assert!(h.relay.allocation_of(c.addr).is_some());

    let reply = h.request_fresh(&mut c, method::REFRESH, &[Attr::Lifetime(0)]);
    assert_eq!(
        (class(&reply), lifetime(&reply)),
        (MessageClass::Success, Some(0))
    );
    // The CloseRelay was emitted with the response.
    assert!(h.relay.allocation_of(c.addr).is_none());
    assert_eq!(h.relay.stats().allocations_active, 0);
    let reply = h.request(&mut c, method::REFRESH, &[Attr::Lifetime(600)]);
    assert_eq!(code(&reply), Some(437));
    // Data to the deleted allocation is dropped.
    assert!(to_client(&h.peer_sends(id, addr(PEER), b"late")).is_empty());
}

#[test]
fn refresh_zero_emits_close_relay() {
    let mut h = Harness::new(config());
    let mut c = Client::new("203.0.113.5:41000", creds("alice"));
    let (id, _) = h.allocate(&mut c);
    let req = c.request(method::REFRESH, &[Attr::Lifetime(0)]);
    let outs = h.client_sends(c.addr, &req);
    assert!(outs.contains(&Output::CloseRelay { alloc: id }), "{outs:?}");
}

#[test]
fn allocations_permissions_and_channels_expire() {
    let mut h = Harness::new(loopback_ok());
    let mut c = Client::new("203.0.113.5:41000", creds("alice"));
    let (id, _) = h.allocate(&mut c);
    let peer = addr(PEER);
    let channel_peer = addr("198.51.100.20:7");
    let r = h.request(&mut c, method::CREATE_PERMISSION, &[Attr::Peer(peer)]);
    assert_eq!(class(&r), MessageClass::Success);
    let r = h.request(
        &mut c,
        method::CHANNEL_BIND,
        &[Attr::Channel(0x4000), Attr::Peer(channel_peer)],
    );
    assert_eq!(class(&r), MessageClass::Success);

    // 299 s: all alive.
    h.advance(Duration::from_secs(299));
    assert_eq!(
        to_peer(&h.client_sends(c.addr, &send_indication(peer, b"a"))).len(),
        1
    );
    // 301 s: both permissions expired (the channel's too), the channel itself lives on but
    // without a permission nothing passes.
    h.advance(Duration::from_secs(2));
    assert!(to_peer(&h.client_sends(c.addr, &send_indication(peer, b"b"))).is_empty());
    assert!(to_client(&h.peer_sends(id, peer, b"c")).is_empty());
    assert!(
        to_peer(&h.client_sends(c.addr, &crate::wire::channel_data(0x4000, b"d", false)))
            .is_empty()
    );
    // Refreshing the channel binding refreshes its permission.
    let r = h.request(
        &mut c,
        method::CHANNEL_BIND,
        &[Attr::Channel(0x4000), Attr::Peer(channel_peer)],
    );
    assert_eq!(class(&r), MessageClass::Success);
    assert_eq!(
        to_peer(&h.client_sends(c.addr, &crate::wire::channel_data(0x4000, b"e", false))).len(),
        1
    );
    let a = h.relay.allocation_of(c.addr).expect("alive");
    assert_eq!(
        (a.permission_count(), a.channel_count()),
        (1, 1),
        "sweep dropped the stale permission"
    );

    // The allocation (600 s) ends at 600 s after the Allocate: CloseRelay.
    let outs = h.advance(Duration::from_secs(300));
    assert_eq!(outs, vec![Output::CloseRelay { alloc: id }]);
    assert_eq!(h.relay.stats().allocations_active, 0);
    assert!(h.relay.poll_timeout().is_none());
}

#[test]
fn second_allocate_is_437_and_a_retransmission_gets_the_same_answer() {
    let mut h = Harness::new(config());
    let mut c = Client::new("203.0.113.5:41000", creds("alice"));
    let _ = h.request(&mut c, method::ALLOCATE, &[Attr::Transport(17)]);
    c.fixed_tid = Some(TransactionId::generate());
    let first = h.request(&mut c, method::ALLOCATE, &[Attr::Transport(17)]);
    assert_eq!(class(&first), MessageClass::Success);
    let again = h.request(&mut c, method::ALLOCATE, &[Attr::Transport(17)]);
    assert_eq!(
        again, first,
        "retransmission answered with the stored response"
    );
    c.fixed_tid = None;
    let other = h.request(&mut c, method::ALLOCATE, &[Attr::Transport(17)]);
    assert_eq!(code(&other), Some(437));
    c.check_integrity(&other);
    // A request on a 5-tuple without an allocation: 437.
    let mut d = Client::new("203.0.113.5:41001", creds("alice"));
    let _ = h.request(&mut d, method::REFRESH, &[]);
    let r = h.request(&mut d, method::CREATE_PERMISSION, &[Attr::Peer(addr(PEER))]);
    assert_eq!(code(&r), Some(437));
    assert_eq!(h.relay.stats().refusals.allocation_mismatch, 2);
}

#[test]
fn stale_nonce_gets_438_and_the_new_nonce_works() {
    let mut h = Harness::new(config());
    let mut c = Client::new("203.0.113.5:41000", creds("alice"));
    h.allocate(&mut c);
    h.request(&mut c, method::REFRESH, &[Attr::Lifetime(3600)]);
    h.advance(Duration::from_secs(11 * 60));
    let r = h.request(&mut c, method::REFRESH, &[]);
    assert_eq!(code(&r), Some(438));
    let old = c.nonce.clone();
    // learn() took the new nonce from the 438.
    let r = h.request(&mut c, method::REFRESH, &[]);
    assert_eq!(class(&r), MessageClass::Success, "{:?}", code(&r));
    assert_eq!(c.nonce, old, "no new nonce on success");
    // A nonce issued to another address is stale here.
    let mut d = Client::new("203.0.113.5:41001", creds("alice"));
    d.realm = c.realm.clone();
    d.nonce = c.nonce.clone();
    let r = h.request(&mut d, method::ALLOCATE, &[Attr::Transport(17)]);
    assert_eq!(code(&r), Some(438));
    assert_eq!(h.relay.stats().refusals.stale_nonce, 2);
}

#[test]
fn denied_peers_get_403_and_sends_to_them_are_dropped() {
    let mut cfg = config();
    cfg.deny_peers = vec!["203.0.113.0/24".parse().expect("range")];
    let mut h = Harness::new(cfg);
    let mut c = Client::new("192.0.2.200:41000", creds("alice"));
    h.allocate(&mut c);
    for peer in [
        "127.0.0.1:9",
        "10.0.0.1:9",
        "192.168.1.1:9",
        "169.254.169.254:80",
        "224.0.0.251:5353",
        "0.0.0.0:9",
        "203.0.113.50:9",
    ] {
        let r = h.request(&mut c, method::CREATE_PERMISSION, &[Attr::Peer(addr(peer))]);
        assert_eq!(code(&r), Some(403), "{peer}");
        c.check_integrity(&r);
        let r = h.request(
            &mut c,
            method::CHANNEL_BIND,
            &[Attr::Channel(0x4000), Attr::Peer(addr(peer))],
        );
        assert_eq!(code(&r), Some(403), "{peer}");
    }
    // One bad peer among good ones refuses the whole request and installs nothing.
    let r = h.request(
        &mut c,
        method::CREATE_PERMISSION,
        &[Attr::Peer(addr(PEER)), Attr::Peer(addr("10.0.0.1:1"))],
    );
    assert_eq!(code(&r), Some(403));
    assert_eq!(
        h.relay
            .allocation_of(c.addr)
            .expect("alloc")
            .permission_count(),
        0
    );
    // An IPv6 peer for an IPv4 allocation: 443.
    let r = h.request(
        &mut c,
        method::CREATE_PERMISSION,
        &[Attr::Peer(addr("[2001:db8::1]:9"))],
    );
    assert_eq!(code(&r), Some(443));
    // Send to a denied peer: dropped (indications get no response).
    let outs = h.client_sends(c.addr, &send_indication(addr("10.0.0.1:9"), b"x"));
    assert!(outs.is_empty());
    assert_eq!(h.relay.stats().refusals.forbidden_peer, 16);

    // With allow_loopback_peers, loopback passes.
    let mut h = Harness::new(loopback_ok());
    let mut c = Client::new("192.0.2.200:41000", creds("alice"));
    h.allocate(&mut c);
    let r = h.request(
        &mut c,
        method::CREATE_PERMISSION,
        &[Attr::Peer(addr("127.0.0.1:9"))],
    );
    assert_eq!(class(&r), MessageClass::Success);
}

#[test]
fn per_user_quota_gives_486_until_one_is_freed() {
    let mut cfg = config();
    cfg.max_allocations_per_user = 2;
    let mut h = Harness::new(cfg);
    let mut a = Client::new("203.0.113.5:1001", creds("alice"));
    let mut b = Client::new("203.0.113.5:1002", creds("alice"));
    let mut c = Client::new("203.0.113.5:1003", creds("alice"));
    h.allocate(&mut a);
    h.allocate(&mut b);
    let _ = h.request(&mut c, method::ALLOCATE, &[Attr::Transport(17)]);
    let r = h.request(&mut c, method::ALLOCATE, &[Attr::Transport(17)]);
    assert_eq!(code(&r), Some(486));
    c.check_integrity(&r);
    // Another user is not affected.
    let mut bob = Client::new("203.0.113.5:1004", creds("bob"));
    h.allocate(&mut bob);
    // Newer credentials of the same user count against the same quota.
    let mut a2 = Client::new(
        "203.0.113.5:1005",
        mint(SECRET.as_bytes(), "alice", Duration::from_secs(60), UNIX0),
    );
    let _ = h.request(&mut a2, method::ALLOCATE, &[Attr::Transport(17)]);
    let r = h.request(&mut a2, method::ALLOCATE, &[Attr::Transport(17)]);
    assert_eq!(code(&r), Some(486));
    let _ = h.request(&mut a, method::REFRESH, &[Attr::Lifetime(0)]);
    let r = h.request(&mut c, method::ALLOCATE, &[Attr::Transport(17)]);
    assert_eq!(class(&r), MessageClass::Success);
    assert_eq!(h.relay.stats().refusals.quota, 2);
}

#[test]
fn expired_or_wrong_credentials_get_401() {
    let mut h = Harness::new(config());
    let expired = mint(
        SECRET.as_bytes(),
        "alice",
        Duration::from_secs(60),
        UNIX0 - 120,
    );
    let mut c = Client::new("203.0.113.5:1001", expired);
    let r = h.request(&mut c, method::ALLOCATE, &[Attr::Transport(17)]);
    assert_eq!(code(&r), Some(401));
    let r = h.request(&mut c, method::ALLOCATE, &[Attr::Transport(17)]);
    assert_eq!(code(&r), Some(401), "expired username");

    let mut wrong = creds("alice");
    wrong.password = crate::credentials::password_for(b"not the secret", &wrong.username);
    let mut c = Client::new("203.0.113.5:1002", wrong);
    let _ = h.request(&mut c, method::ALLOCATE, &[Attr::Transport(17)]);
    let r = h.request(&mut c, method::ALLOCATE, &[Attr::Transport(17)]);
    assert_eq!(code(&r), Some(401), "wrong password");

    let mut c = Client::new("203.0.113.5:1003", creds("alice"));
    let _ = h.request(&mut c, method::ALLOCATE, &[Attr::Transport(17)]);
    c.realm = Some("other-realm".into());
    let r = h.request(&mut c, method::ALLOCATE, &[Attr::Transport(17)]);
    assert_eq!(code(&r), Some(401), "foreign realm");
    assert_eq!(h.relay.stats().refusals.unauthorized, 6);
    assert_eq!(h.relay.stats().allocations_active, 0);

    // Credentials expire while the allocation lives: the next refresh is refused.
    let short = mint(SECRET.as_bytes(), "alice", Duration::from_secs(100), UNIX0);
    let mut c = Client::new("203.0.113.5:1004", short);
    h.allocate(&mut c);
    h.advance(Duration::from_secs(120));
    let r = h.request(&mut c, method::REFRESH, &[]);
    assert_eq!(code(&r), Some(401));
    assert!(h.unix() > UNIX0 + 100);
}

#[test]
fn another_username_on_an_allocation_gets_441() {
    let mut h = Harness::new(config());
    let mut c = Client::new("203.0.113.5:1001", creds("alice"));
    h.allocate(&mut c);
    c.creds = creds("mallory");
    let r = h.request(&mut c, method::REFRESH, &[]);
    assert_eq!(code(&r), Some(441));
}

#[test]
fn secret_rotation_keeps_the_previous_secret_only() {
    let mut h = Harness::new(config());
    h.relay.set_secret(Secret::new("second"));
    let mut old = Client::new("203.0.113.5:1001", creds("alice"));
    h.allocate(&mut old);
    let mut new = Client::new(
        "203.0.113.5:1002",
        mint(b"second", "alice", Duration::from_secs(600), UNIX0),
    );
    h.allocate(&mut new);
    assert_eq!(h.relay.secret().as_bytes(), b"second");
    h.relay.set_secret(Secret::new("third"));
    let mut older = Client::new("203.0.113.5:1003", creds("alice"));
    let _ = h.request(&mut older, method::ALLOCATE, &[Attr::Transport(17)]);
    let r = h.request(&mut older, method::ALLOCATE, &[Attr::Transport(17)]);
    assert_eq!(code(&r), Some(401), "two rotations ago");
}

/// The 401 to an unauthenticated Allocate is never larger than the request. With the
/// default realm it fits the smallest Allocate a standard client sends
/// (`turnutils_uclient`: REQUESTED-TRANSPORT, LIFETIME, EVEN-PORT, FINGERPRINT = 52 bytes);
/// a request smaller than any possible challenge gets nothing.
#[test]
fn unauthenticated_responses_never_exceed_the_request() {
    let mut h = Harness::new(config());
    let mut c = Client::new("203.0.113.5:1001", creds("alice"));
    c.software = false;
    let req = c.request(
        method::ALLOCATE,
        &[Attr::Transport(17), Attr::Lifetime(600), Attr::EvenPort(0)],
    );
    assert_eq!(req.len(), 52);
    let replies = to_client(&h.client_sends(c.addr, &req));
    assert_eq!(replies.len(), 1);
    assert!(
        replies[0].len() <= req.len(),
        "{} > {}",
        replies[0].len(),
        req.len()
    );
    assert_eq!(code(&replies[0]), Some(401));
    c.learn(&replies[0]);
    assert!(c.nonce.is_some() && c.realm.as_deref() == Some("missive"));

    // Smaller requests: no challenge can fit. Strict (100): nothing is sent. Default (200):
    // the minimal challenge, at most twice the request.
    for strict in [false, true] {
        let mut cfg = config();
        if strict {
            cfg.challenge_amplification_percent = 100;
        }
        let mut h = Harness::new(cfg);
        for attrs in [
            vec![Attr::Transport(17), Attr::Lifetime(600)], // 44 bytes with FINGERPRINT
            vec![Attr::Transport(17)],                      // 36
            vec![],                                         // 28
        ] {
            let mut fresh = Client::new("203.0.113.5:1002", creds("alice"));
            fresh.software = false;
            let req = fresh.request(method::ALLOCATE, &attrs);
            let replies = to_client(&h.client_sends(fresh.addr, &req));
            if strict {
                assert!(replies.is_empty(), "strict: {} bytes answered", req.len());
            } else {
                assert_eq!(replies.len(), 1);
                assert!(replies[0].len() <= 2 * req.len());
                assert_eq!(replies[0].len(), 52, "the minimal challenge");
                assert_eq!(code(&replies[0]), Some(401));
            }
        }
        let s = h.relay.stats();
        if strict {
            assert_eq!((s.refusals.amplification, s.amplified_challenges), (3, 0));
        } else {
            assert_eq!((s.refusals.amplification, s.amplified_challenges), (0, 3));
        }
    }

    // A long realm makes the minimal challenge too big even for the allowance: dropped.
    let mut cfg = config();
    cfg.realm = "a-very-long-realm.example.org".into();
    let mut h = Harness::new(cfg);
    let mut tiny = Client::new("203.0.113.5:1009", creds("alice"));
    tiny.software = false;
    let req = tiny.request(method::ALLOCATE, &[]);
    assert_eq!(req.len(), 28);
    assert!(to_client(&h.client_sends(tiny.addr, &req)).is_empty());
    assert_eq!(h.relay.stats().refusals.amplification, 1);

    // Unknown method and unknown comprehension-required attribute: bounded too.
    let mut h = Harness::new(config());
    let mut d = Client::new("203.0.113.5:1003", creds("alice"));
    d.software = false;
    for (m, attrs) in [
        (Method::new(0x0AB), vec![Attr::Raw(0x0030, vec![0; 40])]),
        (
            method::ALLOCATE,
            vec![
                Attr::Raw(0x0031, vec![0; 4]),
                Attr::Raw(0x0032, vec![0; 36]),
            ],
        ),
    ] {
        let req = d.request(m, &attrs);
        let replies = to_client(&h.client_sends(d.addr, &req));
        assert_eq!(replies.len(), 1);
        assert!(replies[0].len() <= req.len());
        assert!(matches!(code(&replies[0]), Some(400) | Some(420)));
    }
}

#[test]
fn unsupported_transport_and_reservations_are_refused() {
    let mut h = Harness::new(config());
    let mut c = Client::new("203.0.113.5:1001", creds("alice"));
    let _ = h.request(&mut c, method::ALLOCATE, &[Attr::Transport(6)]);
    let r = h.request(&mut c, method::ALLOCATE, &[Attr::Transport(6)]);
    assert_eq!(code(&r), Some(442));
    let r = h.request(&mut c, method::ALLOCATE, &[]);
    assert_eq!(code(&r), Some(400));
    let r = h.request(
        &mut c,
        method::ALLOCATE,
        &[Attr::Transport(17), Attr::EvenPort(0x80)],
    );
    assert_eq!(code(&r), Some(508));
    // EVEN-PORT without R is honoured: the driver is asked for an even port.
    let req = c.request(method::ALLOCATE, &[Attr::Transport(17), Attr::EvenPort(0)]);
    h.relay.handle_client(h.now, Transport::Udp, c.addr, &req);
    let out = h.relay.poll_output();
    assert!(
        matches!(
            out,
            Some(Output::OpenRelay {
                even_port: true,
                ..
            })
        ),
        "{out:?}"
    );
}

#[test]
fn no_port_gives_508_and_frees_the_quota() {
    let mut cfg = config();
    cfg.max_allocations_per_user = 1;
    let mut h = Harness::new(cfg);
    let mut c = Client::new("203.0.113.5:1001", creds("alice"));
    let _ = h.request(&mut c, method::ALLOCATE, &[Attr::Transport(17)]);
    let req = c.request(method::ALLOCATE, &[Attr::Transport(17)]);
    h.relay.handle_client(h.now, Transport::Udp, c.addr, &req);
    let Some(Output::OpenRelay { alloc, .. }) = h.relay.poll_output() else {
        panic!("expected OpenRelay")
    };
    h.relay
        .relay_opened(h.now, alloc, Err(super::relay::OpenRelayError::NoPort));
    let replies = to_client(&h.drain());
    assert_eq!(code(&replies[0]), Some(508));
    let (_, relayed) = {
        let r = h.request(&mut c, method::ALLOCATE, &[Attr::Transport(17)]);
        assert_eq!(class(&r), MessageClass::Success, "quota released after 508");
        (0, xor_addr(&r, attr::XOR_RELAYED_ADDRESS))
    };
    assert!(relayed.is_some());
}

#[test]
fn relayed_traffic_over_budget_is_dropped_and_counted() {
    let mut cfg = loopback_ok();
    cfg.max_packets_per_sec = 10;
    cfg.max_bytes_per_sec = 1_000;
    let mut h = Harness::new(cfg);
    let mut c = Client::new("203.0.113.5:1001", creds("alice"));
    let (id, _) = h.allocate(&mut c);
    let peer = addr(PEER);
    h.request(
        &mut c,
        method::CHANNEL_BIND,
        &[Attr::Channel(0x4000), Attr::Peer(peer)],
    );
    let mut passed = 0;
    for _ in 0..15 {
        passed +=
            to_peer(&h.client_sends(c.addr, &crate::wire::channel_data(0x4000, b"x", false))).len();
    }
    assert_eq!(passed, 10, "packets/s budget");
    assert_eq!(h.relay.stats().refusals.rate_limited, 5);
    // The budget covers both directions.
    assert!(to_client(&h.peer_sends(id, peer, b"y")).is_empty());
    // Half a second later, half the budget is back.
    h.advance(Duration::from_millis(500));
    let mut passed = 0;
    for _ in 0..15 {
        passed += to_client(&h.peer_sends(id, peer, b"y")).len();
    }
    assert_eq!(passed, 5);
    // The bytes/s budget: 1,000 bytes per second.
    h.advance(Duration::from_secs(5));
    let big = vec![0u8; 400];
    let mut passed = 0;
    for _ in 0..5 {
        passed +=
            to_peer(&h.client_sends(c.addr, &crate::wire::channel_data(0x4000, &big, false))).len();
    }
    assert_eq!(passed, 2, "bytes/s budget");
}

#[test]
fn over_tcp_channel_data_is_padded_and_the_allocation_ends_with_the_connection() {
    let mut h = Harness::new(config());
    h.transport = Transport::Tcp;
    let mut c = Client::new("203.0.113.5:41000", creds("alice"));
    let (id, _) = h.allocate(&mut c);
    assert!(h.relay.has_allocation(Transport::Tcp, c.addr));
    // The same address over UDP is another 5-tuple, with no allocation.
    assert!(!h.relay.has_allocation(Transport::Udp, c.addr));
    let peer = addr(PEER);
    let reply = h.request(
        &mut c,
        method::CHANNEL_BIND,
        &[Attr::Channel(0x4001), Attr::Peer(peer)],
    );
    assert_eq!(class(&reply), MessageClass::Success, "{:?}", code(&reply));
    // Client to peer: the driver hands in the message without its padding.
    let sent =
        to_peer(&h.client_sends(c.addr, &crate::wire::channel_data(0x4001, b"abcde", false)));
    assert_eq!(sent, vec![(peer, b"abcde".to_vec())]);
    // Peer to client: 4 + 5 bytes, padded to 12 for the stream, sent over TCP.
    let outs = h.peer_sends(id, peer, b"abcde");
    match &outs[..] {
        [Output::ToClient {
            transport: Transport::Tcp,
            to,
            data,
        }] => {
            assert_eq!(*to, c.addr);
            assert_eq!(data.len(), 12);
            assert_eq!(data, &crate::wire::channel_data(0x4001, b"abcde", true));
        }
        other => panic!("expected one TCP message, got {other:?}"),
    }
    // The connection closes: the allocation ends and its relay socket is closed.
    h.relay.client_closed(Transport::Tcp, c.addr);
    let outs = h.drain();
    assert_eq!(outs, vec![Output::CloseRelay { alloc: id }]);
    assert!(!h.relay.has_allocation(Transport::Tcp, c.addr));
    assert_eq!(h.relay.stats().allocations_active, 0);
    // Closing again, or a UDP client that never had one, changes nothing.
    h.relay.client_closed(Transport::Tcp, c.addr);
    h.relay.client_closed(Transport::Udp, c.addr);
    assert!(h.drain().is_empty());
}

#[test]
fn a_tcp_connection_closed_while_its_socket_opens_leaves_nothing_behind() {
    let mut h = Harness::new(config());
    h.transport = Transport::Tcp;
    let mut c = Client::new("203.0.113.5:41000", creds("alice"));
    let first = h.request(&mut c, method::ALLOCATE, &[Attr::Transport(17)]);
    assert_eq!(code(&first), Some(401));
    // Play a driver that has not answered OpenRelay yet when the connection closes.
    let req = c.request(method::ALLOCATE, &[Attr::Transport(17)]);
    h.relay.handle_client(h.now, Transport::Tcp, c.addr, &req);
    let alloc = match h.relay.poll_output() {
        Some(Output::OpenRelay { alloc, .. }) => alloc,
        other => panic!("expected OpenRelay, got {other:?}"),
    };
    assert!(h.relay.has_allocation(Transport::Tcp, c.addr));
    h.relay.client_closed(Transport::Tcp, c.addr);
    assert!(!h.relay.has_allocation(Transport::Tcp, c.addr));
    // The socket opened late is closed again, and no response goes out.
    h.relay
        .relay_opened(h.now, alloc, Ok(addr("192.0.2.1:50000")));
    assert_eq!(h.drain(), vec![Output::CloseRelay { alloc }]);
    assert_eq!(h.relay.stats().allocations_active, 0);
    // The user's quota was given back: a new connection may allocate.
    let mut d = Client::new("203.0.113.5:41001", creds("alice"));
    h.allocate(&mut d);
}
