//! STUN/TURN wire glue over the relay's codec (`stun-types`): ICE and TURN attributes,
//! ChannelData framing, and the demultiplexing of the one media socket (RFC 7983). Bytes
//! from the network become typed values here and nowhere else in the call media path.

use std::net::SocketAddr;
use stun_types::attribute::{
    AttributeType, ErrorCode, Nonce, RawAttribute, Realm, Username, XorMappedAddress, XorSocketAddr,
};
use stun_types::message::{
    IntegrityAlgorithm, LongTermKeyCredentials, Message, MessageClass, MessageHeader,
    MessageIntegrityCredentials, MessageWrite, MessageWriteExt, MessageWriteVec, Method,
    ShortTermCredentials, TransactionId, BINDING,
};

pub(crate) use stun_types::message::{Message as StunMessage, TransactionId as Tid};

/// TURN methods (RFC 8656 §18.1).
pub(crate) mod method {
    use super::Method;
    pub(crate) const ALLOCATE: Method = Method::new(0x003);
    pub(crate) const REFRESH: Method = Method::new(0x004);
    pub(crate) const SEND: Method = Method::new(0x006);
    pub(crate) const DATA: Method = Method::new(0x007);
    pub(crate) const CREATE_PERMISSION: Method = Method::new(0x008);
    pub(crate) const CHANNEL_BIND: Method = Method::new(0x009);
}

/// Attribute types (RFC 8489 §18.3, RFC 8656 §18.2, RFC 8445 §16.1).
pub(crate) mod attr {
    use super::AttributeType;
    pub(crate) const CHANNEL_NUMBER: AttributeType = AttributeType::new(0x000C);
    pub(crate) const LIFETIME: AttributeType = AttributeType::new(0x000D);
    pub(crate) const XOR_PEER_ADDRESS: AttributeType = AttributeType::new(0x0012);
    pub(crate) const DATA: AttributeType = AttributeType::new(0x0013);
    pub(crate) const XOR_RELAYED_ADDRESS: AttributeType = AttributeType::new(0x0016);
    pub(crate) const REQUESTED_TRANSPORT: AttributeType = AttributeType::new(0x0019);
    pub(crate) const XOR_MAPPED_ADDRESS: AttributeType = AttributeType::new(0x0020);
    pub(crate) const PRIORITY: AttributeType = AttributeType::new(0x0024);
    pub(crate) const USE_CANDIDATE: AttributeType = AttributeType::new(0x0025);
    pub(crate) const ICE_CONTROLLED: AttributeType = AttributeType::new(0x8029);
    pub(crate) const ICE_CONTROLLING: AttributeType = AttributeType::new(0x802A);
}

/// IANA protocol number of UDP (REQUESTED-TRANSPORT).
const PROTO_UDP: u8 = 17;

/// What a datagram on the media socket is (RFC 7983's first-byte ranges).
pub(crate) enum Datagram<'a> {
    /// A STUN message whose length matches the datagram.
    Stun(Message<'a>),
    /// A TURN ChannelData message: channel and payload.
    ChannelData(u16, &'a [u8]),
    /// An SRTP or SRTCP packet (first byte 128-191), unchecked beyond that.
    Srtp(&'a [u8]),
}

/// Classifies a datagram; `None` for anything malformed or unknown (dropped).
pub(crate) fn classify(buf: &[u8]) -> Option<Datagram<'_>> {
    match *buf.first()? {
        0..=3 => {
            if buf.len() < MessageHeader::LENGTH {
                return None;
            }
            let len = usize::from(u16::from_be_bytes([buf[2], buf[3]]));
            if len % 4 != 0 || MessageHeader::LENGTH + len != buf.len() {
                return None;
            }
            Message::from_bytes(buf).ok().map(Datagram::Stun)
        }
        64..=79 => {
            let (c, p) = parse_channel_data(buf)?;
            Some(Datagram::ChannelData(c, p))
        }
        128..=191 => Some(Datagram::Srtp(buf)),
        _ => None,
    }
}

/// Splits ChannelData into channel and payload (up to 3 bytes of padding allowed).
pub(crate) fn parse_channel_data(buf: &[u8]) -> Option<(u16, &[u8])> {
    if buf.len() < 4 {
        return None;
    }
    let channel = u16::from_be_bytes([buf[0], buf[1]]);
    let len = usize::from(u16::from_be_bytes([buf[2], buf[3]]));
    let rest = &buf[4..];
    if len > rest.len() || rest.len() - len > 3 {
        return None;
    }
    Some((channel, &rest[..len]))
}

/// A ChannelData message (payloads come from one datagram, so they fit 16 bits).
pub(crate) fn channel_data(channel: u16, payload: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(4 + payload.len());
    out.extend_from_slice(&channel.to_be_bytes());
    out.extend_from_slice(&(payload.len().min(usize::from(u16::MAX)) as u16).to_be_bytes());
    out.extend_from_slice(payload);
    out
}

/// A builder for one request or indication.
pub(crate) struct Builder(MessageWriteVec);

impl Builder {
    /// A request of `method` with a fresh transaction id.
    pub(crate) fn request(method: Method) -> Self {
        Self(Message::builder_request(
            method,
            MessageWriteVec::with_capacity(160),
        ))
    }

    /// A Binding request.
    pub(crate) fn binding() -> Self {
        Self::request(BINDING)
    }

    /// An indication of `method`.
    pub(crate) fn indication(method: Method) -> Self {
        Self(Message::builder_indication(
            method,
            MessageWriteVec::with_capacity(160),
        ))
    }

    /// A success response to `req`; `None` when `req` is not a request.
    pub(crate) fn success(req: &Message<'_>) -> Option<Self> {
        req.has_class(MessageClass::Request).then(|| {
            Self(Message::builder_success(
                req,
                MessageWriteVec::with_capacity(96),
            ))
        })
    }

    /// The transaction id.
    pub(crate) fn tid(&self) -> TransactionId {
        self.0.transaction_id()
    }

    fn push(mut self, a: &dyn stun_types::attribute::AttributeWrite) -> Self {
        // Fails only on an attribute after integrity, which these builders never add.
        let _ = self.0.add_attribute(a);
        self
    }

    /// Adds a raw attribute.
    pub(crate) fn raw(self, atype: AttributeType, value: &[u8]) -> Self {
        self.push(&RawAttribute::new(atype, value))
    }

    /// Adds a 32-bit attribute.
    pub(crate) fn u32(self, atype: AttributeType, v: u32) -> Self {
        self.raw(atype, &v.to_be_bytes())
    }

    /// Adds a 64-bit attribute (ICE-CONTROLLING/CONTROLLED tie-breaker).
    pub(crate) fn u64(self, atype: AttributeType, v: u64) -> Self {
        self.raw(atype, &v.to_be_bytes())
    }

    /// Adds REQUESTED-TRANSPORT UDP.
    pub(crate) fn udp_transport(self) -> Self {
        self.raw(attr::REQUESTED_TRANSPORT, &[PROTO_UDP, 0, 0, 0])
    }

    /// Adds an XOR address attribute of `atype`.
    pub(crate) fn xor_addr(self, atype: AttributeType, addr: SocketAddr) -> Self {
        let a = XorSocketAddr::new(addr, self.tid());
        let raw = a.to_raw(atype).into_owned();
        self.push(&raw)
    }

    /// Adds XOR-MAPPED-ADDRESS.
    pub(crate) fn mapped(self, addr: SocketAddr) -> Self {
        let a = XorMappedAddress::new(addr, self.tid());
        self.push(&a)
    }

    /// Adds USERNAME; dropped when too long for STUN (never for our own values).
    pub(crate) fn username(self, name: &str) -> Self {
        match Username::new(name) {
            Ok(u) => self.push(&u),
            Err(_) => self,
        }
    }

    /// Adds REALM and NONCE.
    pub(crate) fn realm_nonce(mut self, realm: &str, nonce: &str) -> Self {
        if let Ok(r) = Realm::new(realm) {
            self = self.push(&r);
        }
        if let Ok(n) = Nonce::new(nonce) {
            self = self.push(&n);
        }
        self
    }

    /// Finishes with FINGERPRINT only.
    pub(crate) fn finish(mut self) -> Vec<u8> {
        let _ = self.0.add_fingerprint();
        self.0.finish()
    }

    /// Finishes with MESSAGE-INTEGRITY (short-term `password`, ICE) and FINGERPRINT.
    pub(crate) fn sign_short(mut self, password: &str) -> Vec<u8> {
        let creds: MessageIntegrityCredentials = ShortTermCredentials::new(password.into()).into();
        // Fails only when integrity is already present; this is the one place adding it.
        let _ = self
            .0
            .add_message_integrity(&creds, IntegrityAlgorithm::Sha1);
        let _ = self.0.add_fingerprint();
        self.0.finish()
    }

    /// Finishes with MESSAGE-INTEGRITY (long-term credentials, TURN) and FINGERPRINT.
    pub(crate) fn sign_long(mut self, creds: &MessageIntegrityCredentials) -> Vec<u8> {
        let _ = self
            .0
            .add_message_integrity(creds, IntegrityAlgorithm::Sha1);
        let _ = self.0.add_fingerprint();
        self.0.finish()
    }
}

/// Long-term credentials for `username`/`password` in `realm`.
pub(crate) fn long_term(
    username: &str,
    password: &str,
    realm: &str,
) -> MessageIntegrityCredentials {
    LongTermKeyCredentials::new(username.into(), password.into(), realm.into()).into()
}

/// Whether `msg`'s MESSAGE-INTEGRITY checks with the short-term `password`.
pub(crate) fn verify_short(msg: &Message<'_>, password: &str) -> bool {
    let creds: MessageIntegrityCredentials = ShortTermCredentials::new(password.into()).into();
    msg.validate_integrity(&creds).is_ok()
}

/// Whether `msg`'s MESSAGE-INTEGRITY checks with long-term `creds`.
pub(crate) fn verify_long(msg: &Message<'_>, creds: &MessageIntegrityCredentials) -> bool {
    msg.validate_integrity(creds).is_ok()
}

/// USERNAME, when present and valid UTF-8.
pub(crate) fn username(msg: &Message<'_>) -> Option<String> {
    msg.attribute::<Username>()
        .ok()
        .map(|u| u.username().to_owned())
}

/// ERROR-CODE's code.
pub(crate) fn error_code(msg: &Message<'_>) -> Option<u16> {
    msg.attribute::<ErrorCode>().ok().map(|e| e.code())
}

/// REALM and NONCE of a challenge.
pub(crate) fn realm_nonce(msg: &Message<'_>) -> Option<(String, String)> {
    let realm = msg.attribute::<Realm>().ok()?.realm().to_owned();
    let nonce = msg.attribute::<Nonce>().ok()?.nonce().to_owned();
    Some((realm, nonce))
}

/// An XOR address attribute of `atype` (XOR-MAPPED, XOR-RELAYED, XOR-PEER).
pub(crate) fn xor_addr(msg: &Message<'_>, atype: AttributeType) -> Option<SocketAddr> {
    let raw = msg.raw_attribute(atype)?;
    XorSocketAddr::from_raw(&raw)
        .ok()
        .map(|a| a.addr(msg.transaction_id()))
}

/// A 32-bit attribute (PRIORITY, LIFETIME); `None` when absent or of another length.
pub(crate) fn u32_attr(msg: &Message<'_>, atype: AttributeType) -> Option<u32> {
    let raw = msg.raw_attribute(atype)?;
    <[u8; 4]>::try_from(&*raw.value)
        .ok()
        .map(u32::from_be_bytes)
}

/// DATA's payload, copied.
pub(crate) fn data(msg: &Message<'_>) -> Option<Vec<u8>> {
    msg.raw_attribute(attr::DATA).map(|r| r.value.to_vec())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn short_term_signature_round_trips() {
        let bytes = Builder::binding()
            .username("a:b")
            .u32(attr::PRIORITY, 7)
            .sign_short("password-password-pass");
        let Some(Datagram::Stun(msg)) = classify(&bytes) else {
            panic!("not STUN")
        };
        assert!(verify_short(&msg, "password-password-pass"));
        assert!(!verify_short(&msg, "another-password-12345"));
        assert_eq!(username(&msg).as_deref(), Some("a:b"));
        assert_eq!(u32_attr(&msg, attr::PRIORITY), Some(7));
    }

    #[test]
    fn demux_by_first_byte_and_garbage_is_dropped() {
        assert!(matches!(
            classify(&[0x80, 0, 0, 0]),
            Some(Datagram::Srtp(_))
        ));
        assert!(matches!(
            classify(&channel_data(0x4001, b"x")),
            Some(Datagram::ChannelData(0x4001, b"x"))
        ));
        assert!(classify(&[]).is_none());
        assert!(classify(&[0x40, 1, 0, 9, 1]).is_none());
        assert!(classify(&[0xff; 30]).is_none());
        let mut x: u32 = 1;
        for len in 0..200usize {
            let mut b: Vec<u8> = (0..len)
                .map(|_| {
                    x = x.wrapping_mul(1_103_515_245).wrapping_add(12345);
                    (x >> 16) as u8
                })
                .collect();
            if let Some(first) = b.first_mut() {
                *first &= 0x03;
            }
            let _ = classify(&b);
        }
    }
}
