//! One TURN allocation: its relayed address, lifetime, permissions, channels and budget.

use super::relay::Transport;
use crate::rate_limit::TokenBucket;
use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::time::{Duration, Instant};
use stun_types::message::{IntegrityAlgorithm, MessageIntegrityCredentials, TransactionId};

/// How long a permission lasts without refresh (RFC 8656 §9: 300 s, not configurable).
pub(crate) const PERMISSION_LIFETIME: Duration = Duration::from_secs(300);
/// How long a channel binding lasts without refresh (RFC 8656 §12: 600 s).
pub(crate) const CHANNEL_LIFETIME: Duration = Duration::from_secs(600);

/// Identifies an allocation between the state machine and the socket driver.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct AllocationId(pub u64);

impl std::fmt::Display for AllocationId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "alloc-{}", self.0)
    }
}

/// Who owns an allocation and how its responses are signed.
#[derive(Debug, Clone)]
pub(crate) struct Owner {
    /// The full REST username (`expiry:user`): later requests must carry the same (441).
    pub(crate) username: String,
    /// The user part, which the per-user quota counts.
    pub(crate) user: String,
    /// Credentials for MESSAGE-INTEGRITY on responses.
    pub(crate) creds: MessageIntegrityCredentials,
    /// The integrity algorithm the client used.
    pub(crate) algorithm: IntegrityAlgorithm,
}

#[derive(Debug, Clone, Copy)]
struct Channel {
    peer: SocketAddr,
    expires: Instant,
}

/// A channel number or peer already bound otherwise (400 on ChannelBind, RFC 8656 §11.2).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct ChannelConflict;

/// The state of one allocation. Expired permissions and channels are ignored at use and
/// swept by [`Allocation::sweep`].
#[derive(Debug)]
pub(crate) struct Allocation {
    pub(crate) client: SocketAddr,
    /// How the client reaches the relay (UDP unless set after [`Allocation::new`]).
    pub(crate) transport: Transport,
    pub(crate) owner: Owner,
    pub(crate) relayed: SocketAddr,
    pub(crate) expires: Instant,
    /// The Allocate transaction and its response, resent when the client retransmits.
    pub(crate) allocate_tid: TransactionId,
    pub(crate) allocate_response: Vec<u8>,
    permissions: HashMap<IpAddr, Instant>,
    channels: HashMap<u16, Channel>,
    channel_by_peer: HashMap<SocketAddr, u16>,
    bytes: TokenBucket,
    packets: TokenBucket,
}

/// Why a datagram was not admitted by the budget.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct OverBudget;

impl Allocation {
    /// A fresh allocation with no permissions and a full budget.
    #[allow(clippy::too_many_arguments)]
    pub(crate) fn new(
        client: SocketAddr,
        owner: Owner,
        relayed: SocketAddr,
        expires: Instant,
        allocate_tid: TransactionId,
        allocate_response: Vec<u8>,
        bytes_per_sec: u64,
        packets_per_sec: u64,
        now: Instant,
    ) -> Self {
        Self {
            client,
            transport: Transport::Udp,
            owner,
            relayed,
            expires,
            allocate_tid,
            allocate_response,
            permissions: HashMap::new(),
            channels: HashMap::new(),
            channel_by_peer: HashMap::new(),
            bytes: TokenBucket::new(bytes_per_sec, now),
            packets: TokenBucket::new(packets_per_sec, now),
        }
    }

    /// Installs or refreshes the permission for `ip`.
    pub(crate) fn permit(&mut self, ip: IpAddr, now: Instant) {
        self.permissions.insert(ip, now + PERMISSION_LIFETIME);
    }

    /// Whether a live permission covers `ip`.
    pub(crate) fn permitted(&self, ip: IpAddr, now: Instant) -> bool {
        self.permissions.get(&ip).is_some_and(|exp| *exp > now)
    }

    /// Binds (or refreshes) `channel` to `peer`, and refreshes the peer's permission.
    pub(crate) fn bind_channel(
        &mut self,
        channel: u16,
        peer: SocketAddr,
        now: Instant,
    ) -> Result<(), ChannelConflict> {
        if let Some(existing) = self.channels.get(&channel) {
            if existing.peer != peer && existing.expires > now {
                return Err(ChannelConflict);
            }
        }
        if let Some(existing) = self.channel_by_peer.get(&peer) {
            let live = self.channels.get(existing).is_some_and(|c| c.expires > now);
            if *existing != channel && live {
                return Err(ChannelConflict);
            }
        }
        if let Some(old) = self.channels.get(&channel) {
            // An expired binding of this number to another peer is replaced.
            if old.peer != peer {
                self.channel_by_peer.remove(&old.peer);
            }
        }
        if let Some(old) = self.channel_by_peer.insert(peer, channel) {
            if old != channel {
                self.channels.remove(&old);
            }
        }
        self.channels.insert(
            channel,
            Channel {
                peer,
                expires: now + CHANNEL_LIFETIME,
            },
        );
        self.permit(peer.ip(), now);
        Ok(())
    }

    /// The peer bound to `channel`, if the binding is live.
    pub(crate) fn peer_of(&self, channel: u16, now: Instant) -> Option<SocketAddr> {
        self.channels
            .get(&channel)
            .filter(|c| c.expires > now)
            .map(|c| c.peer)
    }

    /// The live channel bound to `peer`, if any.
    pub(crate) fn channel_of(&self, peer: SocketAddr, now: Instant) -> Option<u16> {
        let ch = *self.channel_by_peer.get(&peer)?;
        self.peer_of(ch, now).map(|_| ch)
    }

    /// Takes `len` bytes and one packet from the budget, or neither.
    pub(crate) fn admit(&mut self, len: usize, now: Instant) -> Result<(), OverBudget> {
        let len = len as u64;
        if !self.bytes.try_take(len, now) {
            return Err(OverBudget);
        }
        if !self.packets.try_take(1, now) {
            self.bytes.give_back(len);
            return Err(OverBudget);
        }
        Ok(())
    }

    /// Forgets expired permissions and channels.
    pub(crate) fn sweep(&mut self, now: Instant) {
        self.permissions.retain(|_, exp| *exp > now);
        let channels = &mut self.channels;
        self.channel_by_peer.retain(|_, ch| {
            let live = channels.get(ch).is_some_and(|c| c.expires > now);
            if !live {
                channels.remove(ch);
            }
            live
        });
        channels.retain(|_, c| c.expires > now);
    }

    /// Live permissions (for tests and debugging).
    #[cfg(test)]
    pub(crate) fn permission_count(&self) -> usize {
        self.permissions.len()
    }

    /// Live channels (for tests and debugging).
    #[cfg(test)]
    pub(crate) fn channel_count(&self) -> usize {
        self.channels.len()
    }
}
