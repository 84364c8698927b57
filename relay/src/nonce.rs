//! Stateless NONCEs for the long-term credential mechanism.
//!
//! A nonce is 6 bytes in unpadded base64url (8 characters): the minute it was issued (16 bits,
//! wrapping every 45 days) and the first 32 bits of HMAC-SHA1(key, minute ‖ client address).
//! The relay keeps no state per unauthenticated client (a flood of Allocates costs no
//! memory), a nonce only works from the address it was sent to, and it ages out.
//!
//! Why so short: the 401 that carries it goes to an address nobody has verified yet, and must
//! not be larger than the request (no amplification); coturn's 401 is 2.4 times the request
//! and pion's was 2.2 times until it shortened its nonces (pion/turn#460). The nonce only
//! proves a round trip and limits replay; the credentials' MESSAGE-INTEGRITY does the
//! authentication, so 32 bits of MAC are enough to make a forged nonce useless.

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine as _;
use hmac::{Hmac, Mac};
use sha1::Sha1;
use std::net::{IpAddr, SocketAddr};

type HmacSha1 = Hmac<Sha1>;

/// Length of a nonce on the wire (characters).
pub(crate) const NONCE_LEN: usize = 8;

/// What a presented nonce is worth.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum NonceCheck {
    /// Issued by this relay to this address and still fresh.
    Fresh,
    /// Too old, not ours, or for another address: the client gets 438 and a new one.
    Stale,
}

/// Issues and checks nonces with a per-process key.
pub(crate) struct Nonces {
    key: [u8; 32],
    lifetime_minutes: u16,
}

impl Nonces {
    /// `lifetime_secs` is at most a day (checked by the config), so it fits the 16-bit minute.
    pub(crate) fn new(key: [u8; 32], lifetime_secs: u64) -> Self {
        let minutes = lifetime_secs.div_ceil(60).clamp(1, 1440) as u16;
        Self {
            key,
            lifetime_minutes: minutes,
        }
    }

    /// The nonce for `client` at `now_unix`.
    pub(crate) fn issue(&self, client: SocketAddr, now_unix: u64) -> String {
        let minute = (now_unix / 60) as u16;
        let mut raw = [0u8; 6];
        raw[..2].copy_from_slice(&minute.to_be_bytes());
        raw[2..].copy_from_slice(&self.mac(minute, client)[..4]);
        URL_SAFE_NO_PAD.encode(raw)
    }

    /// Whether `nonce` is a fresh one of ours for `client`.
    pub(crate) fn check(&self, nonce: &str, client: SocketAddr, now_unix: u64) -> NonceCheck {
        if nonce.len() != NONCE_LEN {
            return NonceCheck::Stale;
        }
        let mut raw = [0u8; 6];
        match URL_SAFE_NO_PAD.decode_slice(nonce.as_bytes(), &mut raw) {
            Ok(6) => {}
            _ => return NonceCheck::Stale,
        }
        let minute = u16::from_be_bytes([raw[0], raw[1]]);
        let age = ((now_unix / 60) as u16).wrapping_sub(minute);
        if age > self.lifetime_minutes {
            return NonceCheck::Stale;
        }
        match self.hmac(minute, client).verify_truncated_left(&raw[2..]) {
            Ok(()) => NonceCheck::Fresh,
            Err(_) => NonceCheck::Stale,
        }
    }

    fn hmac(&self, minute: u16, client: SocketAddr) -> HmacSha1 {
        // HMAC accepts keys of any length; `new_from_slice` cannot fail for HMAC.
        let mut mac = HmacSha1::new_from_slice(&self.key).expect("HMAC takes keys of any length");
        mac.update(&minute.to_be_bytes());
        match client.ip() {
            IpAddr::V4(ip) => mac.update(&ip.octets()),
            IpAddr::V6(ip) => mac.update(&ip.octets()),
        }
        mac.update(&client.port().to_be_bytes());
        mac
    }

    fn mac(&self, minute: u16, client: SocketAddr) -> [u8; 20] {
        self.hmac(minute, client).finalize().into_bytes().into()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nonces_are_bound_to_client_and_time() {
        let n = Nonces::new([7; 32], 600);
        let a: SocketAddr = "192.0.2.1:5000".parse().expect("addr");
        let b: SocketAddr = "192.0.2.1:5001".parse().expect("addr");
        let t = 1_700_000_000;
        let nonce = n.issue(a, t);
        assert_eq!(nonce.len(), NONCE_LEN);
        assert_eq!(n.check(&nonce, a, t), NonceCheck::Fresh);
        assert_eq!(n.check(&nonce, a, t + 600), NonceCheck::Fresh);
        assert_eq!(n.check(&nonce, a, t + 700), NonceCheck::Stale);
        assert_eq!(n.check(&nonce, b, t), NonceCheck::Stale);
        assert_eq!(
            Nonces::new([8; 32], 600).check(&nonce, a, t),
            NonceCheck::Stale
        );
        for junk in ["", "AAAAAAAA", "!!!!!!!!", "AAAAAAAAAAAA", "é"] {
            assert_eq!(n.check(junk, a, t), NonceCheck::Stale, "{junk}");
        }
    }
}
