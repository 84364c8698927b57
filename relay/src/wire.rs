//! STUN/TURN wire glue over the `stun-types` codec: TURN's methods and attributes (RFC 8656
//! §18), ChannelData framing (§12.4), and the builders for the relay's responses and
//! indications. Bytes from the network become typed values here and nowhere else.

use std::net::SocketAddr;
use stun_types::attribute::{
    Attribute as _, AttributeType, ErrorCode, Nonce, RawAttribute, Realm, XorMappedAddress,
    XorSocketAddr,
};
use stun_types::message::{
    IntegrityAlgorithm, Message, MessageHeader, MessageIntegrityCredentials, MessageWrite,
    MessageWriteExt, MessageWriteVec, Method, TransactionId,
};

/// TURN methods (RFC 8656 §18.1); Binding is `stun_types::message::BINDING`.
pub(crate) mod method {
    use super::Method;
    /// Allocate (request/response).
    pub(crate) const ALLOCATE: Method = Method::new(0x003);
    /// Refresh (request/response).
    pub(crate) const REFRESH: Method = Method::new(0x004);
    /// Send (indication only).
    pub(crate) const SEND: Method = Method::new(0x006);
    /// Data (indication only).
    pub(crate) const DATA: Method = Method::new(0x007);
    /// CreatePermission (request/response).
    pub(crate) const CREATE_PERMISSION: Method = Method::new(0x008);
    /// ChannelBind (request/response).
    pub(crate) const CHANNEL_BIND: Method = Method::new(0x009);
}

/// Attribute types (RFC 8489 §18.3, RFC 8656 §18.2).
pub(crate) mod attr {
    use super::AttributeType;
    pub(crate) const USERNAME: AttributeType = AttributeType::new(0x0006);
    pub(crate) const MESSAGE_INTEGRITY: AttributeType = AttributeType::new(0x0008);
    pub(crate) const REALM: AttributeType = AttributeType::new(0x0014);
    pub(crate) const NONCE: AttributeType = AttributeType::new(0x0015);
    pub(crate) const MESSAGE_INTEGRITY_SHA256: AttributeType = AttributeType::new(0x001C);
    pub(crate) const FINGERPRINT: AttributeType = AttributeType::new(0x8028);
    pub(crate) const CHANNEL_NUMBER: AttributeType = AttributeType::new(0x000C);
    pub(crate) const LIFETIME: AttributeType = AttributeType::new(0x000D);
    pub(crate) const XOR_PEER_ADDRESS: AttributeType = AttributeType::new(0x0012);
    pub(crate) const DATA: AttributeType = AttributeType::new(0x0013);
    pub(crate) const XOR_RELAYED_ADDRESS: AttributeType = AttributeType::new(0x0016);
    pub(crate) const REQUESTED_ADDRESS_FAMILY: AttributeType = AttributeType::new(0x0017);
    pub(crate) const EVEN_PORT: AttributeType = AttributeType::new(0x0018);
    pub(crate) const REQUESTED_TRANSPORT: AttributeType = AttributeType::new(0x0019);
    pub(crate) const RESERVATION_TOKEN: AttributeType = AttributeType::new(0x0022);

    /// Comprehension-required attributes (type < 0x8000) this relay understands; any other
    /// gets 420 Unknown Attribute (RFC 8489 §6.3.1).
    pub(crate) const KNOWN_REQUIRED: &[u16] = &[
        0x0001, // MAPPED-ADDRESS
        0x0006, // USERNAME
        0x0008, // MESSAGE-INTEGRITY
        0x0009, // ERROR-CODE
        0x000A, // UNKNOWN-ATTRIBUTES
        0x000C, // CHANNEL-NUMBER
        0x000D, // LIFETIME
        0x0012, // XOR-PEER-ADDRESS
        0x0013, // DATA
        0x0014, // REALM
        0x0015, // NONCE
        0x0016, // XOR-RELAYED-ADDRESS
        0x0017, // REQUESTED-ADDRESS-FAMILY
        0x0018, // EVEN-PORT
        0x0019, // REQUESTED-TRANSPORT
        0x001A, // DONT-FRAGMENT (accepted; the relay sockets do not fragment small payloads)
        0x001C, // MESSAGE-INTEGRITY-SHA256
        0x001D, // PASSWORD-ALGORITHM
        0x0020, // XOR-MAPPED-ADDRESS
        0x0022, // RESERVATION-TOKEN (understood, refused with 508)
        0x0024, // PRIORITY (ICE, on Binding)
        0x0025, // USE-CANDIDATE (ICE, on Binding)
    ];
}

/// IANA protocol number of UDP, the only REQUESTED-TRANSPORT this relay serves.
pub(crate) const PROTO_UDP: u8 = 17;

/// Channel numbers a client may bind. RFC 8656 §12 narrowed the range to 0x4000-0x4FFF, but
/// RFC 5766 clients (coturn's own `turnutils_uclient` among them) still pick up to 0x7FFE,
/// and a ChannelData header can carry any of them, so the old range is accepted.
pub(crate) const CHANNELS: std::ops::RangeInclusive<u16> = 0x4000..=0x7FFE;

/// What the first bytes of a datagram on the listening socket are.
pub(crate) enum Datagram<'a> {
    /// A STUN message whose length field matches the datagram.
    Stun(Message<'a>),
    /// A ChannelData message: channel number and payload.
    ChannelData(u16, &'a [u8]),
}

/// Classifies a datagram from a client; `None` for anything malformed (dropped).
pub(crate) fn parse_datagram(buf: &[u8]) -> Option<Datagram<'_>> {
    let first = *buf.first()?;
    match first >> 6 {
        0 => {
            // UDP carries exactly one message: a length that disagrees with the datagram
            // (trailing bytes included) is a malformed packet.
            if buf.len() < MessageHeader::LENGTH {
                return None;
            }
            let len = usize::from(u16::from_be_bytes([buf[2], buf[3]]));
            if len % 4 != 0 || MessageHeader::LENGTH + len != buf.len() {
                return None;
            }
            Message::from_bytes(buf).ok().map(Datagram::Stun)
        }
        1 => {
            let (channel, payload) = parse_channel_data(buf)?;
            Some(Datagram::ChannelData(channel, payload))
        }
        _ => None,
    }
}

/// Splits a ChannelData message into channel number and payload. Over UDP the datagram may
/// carry up to 3 bytes of padding after the payload (RFC 8656 §12.5); more is malformed.
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

/// A ChannelData message carrying `payload` on `channel`, padded with zeroes to a multiple
/// of 4 bytes when `padded` (over TCP, RFC 8656 §12.5; UDP does not need it).
pub(crate) fn channel_data(channel: u16, payload: &[u8], padded: bool) -> Vec<u8> {
    let mut out = Vec::with_capacity(4 + payload.len() + 3);
    out.extend_from_slice(&channel.to_be_bytes());
    // The caller only relays payloads that arrived in one datagram, so they fit in 16 bits;
    // clamp rather than panic if that ever changes.
    out.extend_from_slice(&(payload.len().min(usize::from(u16::MAX)) as u16).to_be_bytes());
    out.extend_from_slice(payload);
    if padded {
        out.resize(out.len().next_multiple_of(4), 0);
    }
    out
}

/// The largest message a client's TCP stream can carry: a STUN header and a 16-bit length
/// (ChannelData is at most 4 + 65,535 + 1 byte of padding).
pub(crate) const MAX_STREAM_MESSAGE: usize = MessageHeader::LENGTH + u16::MAX as usize;

/// STUN's magic cookie (RFC 8489 §5), checked on every message of a stream before trusting
/// its length.
const MAGIC_COOKIE: [u8; 4] = [0x21, 0x12, 0xA4, 0x42];

/// Where the next message of a client's TCP stream ends (RFC 8656 §5, §12.5).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum StreamFrame {
    /// Not enough bytes yet to know or to hold the next message (never more than
    /// [`MAX_STREAM_MESSAGE`] are needed).
    Incomplete,
    /// The first `len` bytes are one message, followed by `skip` bytes of ChannelData
    /// padding that belong to no message.
    Complete {
        /// Length of the message (what [`parse_datagram`] takes).
        len: usize,
        /// Padding after it.
        skip: usize,
    },
    /// The stream does not continue with a STUN or ChannelData header: close the connection.
    Malformed,
}

/// Finds the next message at the start of `buf`, the bytes buffered from a client's stream.
/// A STUN message must carry the magic cookie and a length that is a multiple of 4; a
/// ChannelData message a channel number in [`CHANNELS`] and its padding to 4 bytes.
pub(crate) fn stream_frame(buf: &[u8]) -> StreamFrame {
    let Some(&first) = buf.first() else {
        return StreamFrame::Incomplete;
    };
    match first >> 6 {
        0 => {
            if buf.len() < 8 {
                return StreamFrame::Incomplete;
            }
            let len = usize::from(u16::from_be_bytes([buf[2], buf[3]]));
            if buf[4..8] != MAGIC_COOKIE || len % 4 != 0 {
                return StreamFrame::Malformed;
            }
            let total = MessageHeader::LENGTH + len;
            if buf.len() < total {
                StreamFrame::Incomplete
            } else {
                StreamFrame::Complete {
                    len: total,
                    skip: 0,
                }
            }
        }
        1 => {
            if buf.len() < 4 {
                return StreamFrame::Incomplete;
            }
            let channel = u16::from_be_bytes([buf[0], buf[1]]);
            if !CHANNELS.contains(&channel) {
                return StreamFrame::Malformed;
            }
            let len = 4 + usize::from(u16::from_be_bytes([buf[2], buf[3]]));
            let skip = len.next_multiple_of(4) - len;
            if buf.len() < len + skip {
                StreamFrame::Incomplete
            } else {
                StreamFrame::Complete { len, skip }
            }
        }
        _ => StreamFrame::Malformed,
    }
}

/// A Data indication carrying `payload` from `peer` (RFC 8656 §11.4).
pub(crate) fn data_indication(peer: SocketAddr, payload: &[u8]) -> Option<Vec<u8>> {
    let cap = MessageHeader::LENGTH + 24 + 4 + payload.len() + 4;
    let mut msg = Message::builder_indication(method::DATA, MessageWriteVec::with_capacity(cap));
    let tid = msg.transaction_id();
    let peer_attr = XorSocketAddr::new(peer, tid);
    msg.add_attribute(&peer_attr.to_raw(attr::XOR_PEER_ADDRESS))
        .ok()?;
    msg.add_attribute(&RawAttribute::new(attr::DATA, payload))
        .ok()?;
    Some(msg.finish())
}

/// The first comprehension-required attribute types of `msg` this relay does not know.
pub(crate) fn unknown_required(msg: &Message<'_>) -> Vec<AttributeType> {
    msg.iter_attributes()
        .map(|(_, a)| a.get_type())
        .filter(|t| t.comprehension_required() && !attr::KNOWN_REQUIRED.contains(&t.value()))
        .collect()
}

/// The n-th XOR-PEER-ADDRESS of `msg`, decoded; `Err` when present but malformed.
pub(crate) fn xor_peer_address(msg: &Message<'_>, n: usize) -> Option<Result<SocketAddr, ()>> {
    let raw = msg.nth_raw_attribute(attr::XOR_PEER_ADDRESS, n)?;
    Some(
        XorSocketAddr::from_raw(&raw)
            .map(|a| a.addr(msg.transaction_id()))
            .map_err(|_| ()),
    )
}

/// A 32-bit attribute value (LIFETIME); `Err` when present with another length.
pub(crate) fn u32_attr(msg: &Message<'_>, atype: AttributeType) -> Option<Result<u32, ()>> {
    let raw = msg.raw_attribute(atype)?;
    Some(match <[u8; 4]>::try_from(&*raw.value) {
        Ok(b) => Ok(u32::from_be_bytes(b)),
        Err(_) => Err(()),
    })
}

/// The first byte of a 4-byte attribute (REQUESTED-TRANSPORT's protocol, EVEN-PORT's flags,
/// REQUESTED-ADDRESS-FAMILY's family); `Err` when present with another length. EVEN-PORT is
/// 1 byte on the wire but padded, and some clients send 4: both are accepted.
pub(crate) fn first_byte_attr(msg: &Message<'_>, atype: AttributeType) -> Option<Result<u8, ()>> {
    let raw = msg.raw_attribute(atype)?;
    Some(match raw.value.len() {
        1 | 4 => Ok(raw.value[0]),
        _ => Err(()),
    })
}

/// CHANNEL-NUMBER's channel; `Err` when present but not 4 bytes.
pub(crate) fn channel_number(msg: &Message<'_>) -> Option<Result<u16, ()>> {
    let raw = msg.raw_attribute(attr::CHANNEL_NUMBER)?;
    Some(match &*raw.value {
        [a, b, _, _] => Ok(u16::from_be_bytes([*a, *b])),
        _ => Err(()),
    })
}

/// DATA's payload.
pub(crate) fn data_attr<'a>(msg: &'a Message<'_>) -> Option<RawAttribute<'a>> {
    msg.raw_attribute(attr::DATA)
}

/// The UTF-8 value of a text attribute (USERNAME, REALM, NONCE); `Err` when not UTF-8 or
/// longer than RFC 8489 allows (763 bytes for the longest, REALM and NONCE).
pub(crate) fn text_attr(msg: &Message<'_>, atype: AttributeType) -> Option<Result<String, ()>> {
    let raw = msg.raw_attribute(atype)?;
    Some(if raw.value.len() > 763 {
        Err(())
    } else {
        std::str::from_utf8(&raw.value)
            .map(str::to_owned)
            .map_err(|_| ())
    })
}

/// Builder for one response; finished unsigned (to an unauthenticated client) or signed.
pub(crate) struct Reply {
    msg: MessageWriteVec,
}

impl Reply {
    /// A success response to `req`, which must be a request (the caller checks the class).
    pub(crate) fn success(req: &Message<'_>) -> Self {
        Self {
            msg: Message::builder_success(req, MessageWriteVec::with_capacity(128)),
        }
    }

    /// An error response to `req` with `code`, and its reason phrase when `with_reason`.
    pub(crate) fn error(req: &Message<'_>, code: u16, with_reason: bool) -> Self {
        let mut reply = Self {
            msg: Message::builder_error(req, MessageWriteVec::with_capacity(128)),
        };
        let reason = if with_reason {
            ErrorCode::default_reason_for_code(code)
        } else {
            ""
        };
        if let Ok(err) = ErrorCode::builder(code).reason(reason).build() {
            reply.push(&err);
        }
        reply
    }

    /// The transaction id (for XOR-encoding addresses).
    pub(crate) fn transaction_id(&self) -> TransactionId {
        self.msg.transaction_id()
    }

    /// Adds REALM and NONCE (the 401/438 challenge).
    pub(crate) fn challenge(mut self, realm: &str, nonce: &str) -> Self {
        if let Ok(realm) = Realm::new(realm) {
            self.push(&realm);
        }
        if let Ok(nonce) = Nonce::new(nonce) {
            self.push(&nonce);
        }
        self
    }

    /// Adds XOR-MAPPED-ADDRESS.
    pub(crate) fn mapped(mut self, addr: SocketAddr) -> Self {
        let tid = self.transaction_id();
        self.push(&XorMappedAddress::new(addr, tid));
        self
    }

    /// Adds an address attribute (XOR-RELAYED-ADDRESS).
    pub(crate) fn xor_address(mut self, atype: AttributeType, addr: SocketAddr) -> Self {
        let tid = self.transaction_id();
        let a = XorSocketAddr::new(addr, tid);
        self.push(&a.to_raw(atype));
        self
    }

    /// Adds a 32-bit attribute (LIFETIME).
    pub(crate) fn u32(mut self, atype: AttributeType, value: u32) -> Self {
        let bytes = value.to_be_bytes();
        self.push(&RawAttribute::new(atype, &bytes));
        self
    }

    /// Finishes without integrity, with FINGERPRINT when `fingerprint`.
    pub(crate) fn finish(mut self, fingerprint: bool) -> Vec<u8> {
        if fingerprint {
            // Only fails when a FINGERPRINT is already there, which this builder never adds.
            let _ = self.msg.add_fingerprint();
        }
        self.msg.finish()
    }

    /// Finishes with MESSAGE-INTEGRITY(-SHA256) under `creds` and FINGERPRINT.
    pub(crate) fn sign(
        mut self,
        creds: &MessageIntegrityCredentials,
        algorithm: IntegrityAlgorithm,
    ) -> Vec<u8> {
        // Fails only when integrity or FINGERPRINT is already present; this builder adds
        // them here and nowhere else.
        let _ = self.msg.add_message_integrity(creds, algorithm);
        let _ = self.msg.add_fingerprint();
        self.msg.finish()
    }

    fn push(&mut self, a: &dyn stun_types::attribute::AttributeWrite) {
        // Fails only on a duplicate attribute or one after integrity, which the callers of
        // this builder never produce; dropping it then is better than panicking.
        let _ = self.msg.add_attribute(a);
    }
}

/// Adds UNKNOWN-ATTRIBUTES to a 420 response.
pub(crate) fn unknown_attributes(mut reply: Reply, types: &[AttributeType]) -> Reply {
    let ua = stun_types::attribute::UnknownAttributes::new(types);
    reply.push(&ua);
    reply
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn channel_data_roundtrip_and_bounds() {
        let m = channel_data(0x4001, b"hello", false);
        assert_eq!(parse_channel_data(&m), Some((0x4001, &b"hello"[..])));
        let mut padded = m.clone();
        padded.extend_from_slice(&[0, 0, 0]);
        assert_eq!(parse_channel_data(&padded), Some((0x4001, &b"hello"[..])));
        padded.push(0);
        assert_eq!(parse_channel_data(&padded), None);
        assert_eq!(parse_channel_data(&m[..6]), None);
        assert_eq!(parse_channel_data(&[0x40]), None);
    }

    #[test]
    fn channel_data_over_tcp_is_padded_to_four_bytes() {
        for n in 0..9usize {
            let payload = vec![0xAB; n];
            let m = channel_data(0x4001, &payload, true);
            assert_eq!(m.len() % 4, 0, "{n}");
            assert_eq!(m.len(), (4 + n).next_multiple_of(4));
            assert_eq!(parse_channel_data(&m), Some((0x4001, &payload[..])));
            assert_eq!(
                stream_frame(&m),
                StreamFrame::Complete {
                    len: 4 + n,
                    skip: m.len() - 4 - n
                }
            );
        }
    }

    #[test]
    fn stream_frames_cut_stun_and_channel_data_and_wait_for_more() {
        let stun = data_indication("192.0.2.1:1".parse().expect("addr"), b"abc").expect("fits");
        let chan = channel_data(0x4002, b"hello", true);
        let mut stream = stun.clone();
        stream.extend_from_slice(&chan);
        stream.extend_from_slice(&stun);
        let mut at = 0;
        let mut seen = Vec::new();
        while at < stream.len() {
            // Every prefix of a message is Incomplete, never Malformed.
            match stream_frame(&stream[at..]) {
                StreamFrame::Complete { len, skip } => {
                    for cut in 0..len + skip {
                        assert_eq!(
                            stream_frame(&stream[at..at + cut]),
                            StreamFrame::Incomplete,
                            "prefix {cut} of the message at {at}"
                        );
                    }
                    assert!(parse_datagram(&stream[at..at + len]).is_some());
                    seen.push((len, skip));
                    at += len + skip;
                }
                other => panic!("{other:?} at {at}"),
            }
        }
        assert_eq!(seen, vec![(stun.len(), 0), (9, 3), (stun.len(), 0)]);
    }

    #[test]
    fn stream_garbage_is_malformed_not_incomplete() {
        // Top bits 10 and 11 are neither STUN nor ChannelData.
        assert_eq!(stream_frame(&[0x80]), StreamFrame::Malformed);
        assert_eq!(stream_frame(&[0xC0, 0, 0, 0]), StreamFrame::Malformed);
        // A STUN header without the magic cookie, or with a length not a multiple of 4.
        assert_eq!(
            stream_frame(&[0, 1, 0, 0, 1, 2, 3, 4]),
            StreamFrame::Malformed
        );
        assert_eq!(
            stream_frame(&[0, 1, 0, 3, 0x21, 0x12, 0xA4, 0x42]),
            StreamFrame::Malformed
        );
        // Channel 0x7FFF is outside the channel range.
        assert_eq!(stream_frame(&[0x7F, 0xFF, 0, 0]), StreamFrame::Malformed);
        // The largest STUN length is waited for, not refused.
        let mut big = vec![0, 1, 0xFF, 0xFC, 0x21, 0x12, 0xA4, 0x42];
        big.resize(64, 0);
        assert_eq!(stream_frame(&big), StreamFrame::Incomplete);
        const { assert!(20 + 0xFFFC <= MAX_STREAM_MESSAGE) };
    }

    #[test]
    fn data_indication_parses_back() {
        let peer: SocketAddr = "[2001:db8::5]:7000".parse().expect("addr");
        let bytes = data_indication(peer, b"xyz").expect("fits");
        let Some(Datagram::Stun(msg)) = parse_datagram(&bytes) else {
            panic!("not a STUN message")
        };
        assert_eq!(msg.method(), method::DATA);
        assert_eq!(xor_peer_address(&msg, 0), Some(Ok(peer)));
        assert_eq!(&*data_attr(&msg).expect("data").value, b"xyz");
    }

    #[test]
    fn trailing_bytes_make_a_stun_message_malformed() {
        let bytes = data_indication("192.0.2.1:1".parse().expect("addr"), b"x").expect("fits");
        let mut longer = bytes.clone();
        longer.extend_from_slice(&[0; 4]);
        assert!(parse_datagram(&longer).is_none());
        assert!(parse_datagram(&bytes[..bytes.len() - 4]).is_none());
    }
}
