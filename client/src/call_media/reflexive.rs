//! The server-reflexive address: one Binding transaction with the edge's STUN server, as a
//! state machine without sockets or clocks (RFC 8489 §6.2.1 retransmissions).
//!
//! Inputs: [`ServerBinding::handle_stun`], [`ServerBinding::handle_timeout`]. Outputs:
//! [`ServerBinding::poll_transmit`], [`ServerBinding::result`], [`ServerBinding::poll_timeout`].

use super::wire::{self, attr, Builder, StunMessage, Tid};
use std::net::SocketAddr;
use std::time::{Duration, Instant};
use stun_types::message::{MessageClass, BINDING};

/// First retransmission timeout; doubles each time.
const RTO: Duration = Duration::from_millis(250);
/// Transmissions before giving up.
const TRIES: u8 = 5;

/// One Binding request to a STUN server.
pub struct ServerBinding {
    server: SocketAddr,
    tid: Tid,
    bytes: Vec<u8>,
    tries: u8,
    next_retx: Option<Instant>,
    pending_send: bool,
    result: Option<Option<SocketAddr>>,
}

impl ServerBinding {
    /// Starts the transaction with `server` at `now`.
    pub fn new(now: Instant, server: SocketAddr) -> Self {
        let b = Builder::binding();
        let tid = b.tid();
        Self {
            server,
            tid,
            bytes: b.finish(),
            tries: 1,
            next_retx: Some(now + RTO),
            pending_send: true,
            result: None,
        }
    }

    /// The server's address.
    pub fn server(&self) -> SocketAddr {
        self.server
    }

    /// A STUN message from the server; true when it answered this transaction.
    pub fn handle_stun(&mut self, msg: &StunMessage<'_>) -> bool {
        if self.result.is_some() || msg.transaction_id() != self.tid || !msg.has_method(BINDING) {
            return false;
        }
        let mapped = msg
            .has_class(MessageClass::Success)
            .then(|| wire::xor_addr(msg, attr::XOR_MAPPED_ADDRESS))
            .flatten();
        self.result = Some(mapped);
        self.next_retx = None;
        true
    }

    /// Retransmits or gives up.
    pub fn handle_timeout(&mut self, now: Instant) {
        if let Some(t) = self.next_retx {
            if t <= now {
                if self.tries >= TRIES {
                    self.result = Some(None);
                    self.next_retx = None;
                } else {
                    self.tries += 1;
                    self.pending_send = true;
                    self.next_retx = Some(now + RTO * (1 << (self.tries - 1)));
                }
            }
        }
    }

    /// The request, when it is due (first send or a retransmission).
    pub fn poll_transmit(&mut self) -> Option<Vec<u8>> {
        std::mem::take(&mut self.pending_send).then(|| self.bytes.clone())
    }

    /// When to call [`ServerBinding::handle_timeout`].
    pub fn poll_timeout(&self) -> Option<Instant> {
        self.next_retx
    }

    /// `None` while waiting; then the mapped address, or `None` inside when it failed.
    pub fn result(&self) -> Option<Option<SocketAddr>> {
        self.result
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use stun_types::message::{Message, MessageWrite, MessageWriteExt, MessageWriteVec};

    #[test]
    fn answer_gives_the_mapped_address_and_silence_gives_up() {
        let now = Instant::now();
        let server: SocketAddr = "192.0.2.1:3478".parse().unwrap();
        let mut b = ServerBinding::new(now, server);
        let req = b.poll_transmit().unwrap();
        assert!(b.poll_transmit().is_none());
        let req = Message::from_bytes(&req).unwrap();
        let mapped: SocketAddr = "198.51.100.4:999".parse().unwrap();
        let mut resp = Message::builder_success(&req, MessageWriteVec::new());
        let tid = resp.transaction_id();
        resp.add_attribute(&stun_types::attribute::XorMappedAddress::new(mapped, tid))
            .unwrap();
        let resp = resp.finish();
        // Another transaction's answer is ignored.
        let other = Builder::binding().finish();
        assert!(!b.handle_stun(&Message::from_bytes(&other).unwrap()));
        assert!(b.handle_stun(&Message::from_bytes(&resp).unwrap()));
        assert_eq!(b.result(), Some(Some(mapped)));

        let mut t = now;
        let mut b = ServerBinding::new(now, server);
        let mut sent = 0;
        while b.result().is_none() {
            while b.poll_transmit().is_some() {
                sent += 1;
            }
            t = b.poll_timeout().unwrap();
            b.handle_timeout(t);
        }
        assert_eq!(sent, usize::from(TRIES));
        assert_eq!(b.result(), Some(None));
        assert!(t < now + Duration::from_secs(10));
    }
}
