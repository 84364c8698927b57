//! Counters the relay keeps for the edge's `/metrics`.

/// A snapshot of the relay's counters. Counters only grow; `allocations_active` is a gauge.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Stats {
    /// Allocations currently held (including those waiting for their relay socket).
    pub allocations_active: u64,
    /// Allocations created since start.
    pub allocations_created: u64,
    /// Binding requests answered.
    pub bindings: u64,
    /// Datagrams relayed from clients to peers.
    pub packets_to_peers: u64,
    /// Payload bytes relayed from clients to peers.
    pub bytes_to_peers: u64,
    /// Datagrams relayed from peers to clients.
    pub packets_to_clients: u64,
    /// Payload bytes relayed from peers to clients.
    pub bytes_to_clients: u64,
    /// Of `packets_to_peers`, those whose peer was another allocation of this relay, handed
    /// over in the process instead of through the two relay sockets.
    pub packets_within: u64,
    /// Minimized 401/438 challenges sent although larger than their request (allowed up to
    /// `challenge_amplification_percent`); 0 with the strict setting of 100.
    pub amplified_challenges: u64,
    /// Requests refused and packets dropped, by reason.
    pub refusals: Refusals,
}

impl Stats {
    /// Datagrams relayed in both directions.
    pub fn packets_relayed(&self) -> u64 {
        self.packets_to_peers + self.packets_to_clients
    }

    /// Payload bytes relayed in both directions.
    pub fn bytes_relayed(&self) -> u64 {
        self.bytes_to_peers + self.bytes_to_clients
    }
}

/// Refusals and drops by reason. The names in [`Refusals::by_reason`] are stable: they
/// become the `reason` label of a Prometheus counter.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Refusals {
    /// 401: no or bad credentials, expired REST username, wrong password.
    pub unauthorized: u64,
    /// 438: stale or foreign nonce.
    pub stale_nonce: u64,
    /// 400: a request missing or garbling an attribute.
    pub bad_request: u64,
    /// 420: a comprehension-required attribute the relay does not know.
    pub unknown_attribute: u64,
    /// 403, or a Send dropped: the peer address is refused by policy.
    pub forbidden_peer: u64,
    /// 437: no allocation for this 5-tuple, or a second one.
    pub allocation_mismatch: u64,
    /// 441: a request for an allocation under another username.
    pub wrong_credentials: u64,
    /// 442: a transport other than UDP asked for.
    pub unsupported_transport: u64,
    /// 440/443: an address family the relay or allocation does not serve.
    pub address_family: u64,
    /// 486: the user holds as many allocations as allowed.
    pub quota: u64,
    /// 508: no relay port (or reservation) available, or the global cap reached.
    pub insufficient_capacity: u64,
    /// Datagrams dropped over an allocation's bytes/s or packets/s budget.
    pub rate_limited: u64,
    /// Datagrams dropped for lack of a permission, channel or allocation.
    pub no_permission: u64,
    /// Unauthenticated responses not sent because even minimized they would have been
    /// larger than the request (anti-amplification).
    pub amplification: u64,
    /// Datagrams that are neither a valid STUN message nor ChannelData (over TCP: streams
    /// closed for it).
    pub malformed: u64,
    /// TCP connections closed at accept: their address or the relay held as many as allowed
    /// (`max_tcp_connections_per_ip`, `max_tcp_connections`).
    pub tcp_connections: u64,
    /// Messages for a TCP client dropped because it did not read its connection fast
    /// enough (its bounded queue was full), as a UDP socket buffer would have dropped them.
    pub tcp_backlog: u64,
}

impl Refusals {
    /// Every counter with its stable name.
    pub fn by_reason(&self) -> [(&'static str, u64); 17] {
        [
            ("unauthorized", self.unauthorized),
            ("stale_nonce", self.stale_nonce),
            ("bad_request", self.bad_request),
            ("unknown_attribute", self.unknown_attribute),
            ("forbidden_peer", self.forbidden_peer),
            ("allocation_mismatch", self.allocation_mismatch),
            ("wrong_credentials", self.wrong_credentials),
            ("unsupported_transport", self.unsupported_transport),
            ("address_family", self.address_family),
            ("quota", self.quota),
            ("insufficient_capacity", self.insufficient_capacity),
            ("rate_limited", self.rate_limited),
            ("no_permission", self.no_permission),
            ("amplification", self.amplification),
            ("malformed", self.malformed),
            ("tcp_connections", self.tcp_connections),
            ("tcp_backlog", self.tcp_backlog),
        ]
    }
}
