//! Framing: the 8-byte header, compression, and a sans-I/O decoder fed with raw bytes.

use crate::{Frame, ProtoError};
use bytes::Bytes;
use rkyv::util::AlignedVec;

/// Bytes in a frame header.
pub const HEADER_LEN: usize = 8;
/// Header flag: the payload is zstd-compressed.
pub const FLAG_ZSTD: u8 = 0x01;
/// Payloads larger than this are compressed when that makes them smaller.
pub const COMPRESS_THRESHOLD: usize = 1024;
/// No configuration may raise the maximum frame size above this (16 MiB).
pub const HARD_MAX_FRAME: usize = 16 * 1024 * 1024;
/// zstd level used for outgoing payloads: fast, as frames are mostly already-encrypted bytes.
const ZSTD_LEVEL: i32 = 1;

/// A parsed frame header.
///
/// Layout (big-endian): `len: u32` (payload bytes that follow), `kind: u8`, `flags: u8`,
/// `reserved: u16` (must be zero).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Header {
    /// Payload length in bytes (compressed length when `FLAG_ZSTD` is set).
    pub len: u32,
    /// Frame kind (see `Frame::kind`).
    pub kind: u8,
    /// Flag bits.
    pub flags: u8,
}

impl Header {
    /// Parses and checks a header against `max_frame` before any payload is read or allocated.
    pub fn parse(bytes: &[u8; HEADER_LEN], max_frame: usize) -> Result<Self, ProtoError> {
        let len = u32::from_be_bytes([bytes[0], bytes[1], bytes[2], bytes[3]]);
        let kind = bytes[4];
        let flags = bytes[5];
        if bytes[6] != 0 || bytes[7] != 0 {
            return Err(ProtoError::ReservedBits);
        }
        if flags & !FLAG_ZSTD != 0 {
            return Err(ProtoError::UnknownFlags(flags));
        }
        if Frame::kind_name(kind).is_none() {
            return Err(ProtoError::UnknownKind(kind));
        }
        let max = max_frame.min(HARD_MAX_FRAME);
        if len as usize > max {
            return Err(ProtoError::TooLarge {
                len: len as usize,
                max,
            });
        }
        Ok(Self { len, kind, flags })
    }

    /// The header of an outgoing payload of `len` bytes; refused above [`HARD_MAX_FRAME`].
    pub(crate) fn for_payload(kind: u8, flags: u8, len: usize) -> Result<Self, ProtoError> {
        if len > HARD_MAX_FRAME {
            return Err(ProtoError::TooLarge {
                len,
                max: HARD_MAX_FRAME,
            });
        }
        Ok(Self {
            len: len as u32,
            kind,
            flags,
        })
    }

    /// Serialises the header.
    pub fn to_bytes(self) -> [u8; HEADER_LEN] {
        let l = self.len.to_be_bytes();
        [l[0], l[1], l[2], l[3], self.kind, self.flags, 0, 0]
    }
}

/// Appends the encoded `frame` (header and payload) to `out`.
///
/// Payloads above [`COMPRESS_THRESHOLD`] are zstd-compressed when that saves bytes, except
/// media bytes: encrypted, they never shrink, and trying costs more CPU than the transfer.
pub fn encode(frame: &Frame, out: &mut Vec<u8>) -> Result<(), ProtoError> {
    let (header, payload) = encode_parts(frame)?;
    out.reserve(HEADER_LEN + payload.as_ref().len());
    out.extend_from_slice(&header.to_bytes());
    out.extend_from_slice(payload.as_ref());
    Ok(())
}

/// Encodes one frame into a fresh buffer.
pub fn encode_to_vec(frame: &Frame) -> Result<Vec<u8>, ProtoError> {
    let mut out = Vec::new();
    encode(frame, &mut out)?;
    Ok(out)
}

/// Encodes one frame as two buffers, its header and its payload, without copying the
/// payload out of the buffer it was serialised into: a writer that takes owned chunks (a
/// QUIC stream's `write_chunks`) sends a 1 MiB media frame without another copy.
pub fn encode_to_chunks(frame: &Frame) -> Result<[Bytes; 2], ProtoError> {
    let (header, payload) = encode_parts(frame)?;
    let payload = match payload {
        EncodedPayload::Archived(archived) => Bytes::from_owner(archived),
        EncodedPayload::Compressed(compressed) => Bytes::from(compressed),
    };
    Ok([Bytes::copy_from_slice(&header.to_bytes()), payload])
}

/// A serialised payload: the archive itself, or its zstd compression.
enum EncodedPayload {
    Archived(AlignedVec),
    Compressed(Vec<u8>),
}

impl AsRef<[u8]> for EncodedPayload {
    fn as_ref(&self) -> &[u8] {
        match self {
            Self::Archived(a) => a,
            Self::Compressed(c) => c,
        }
    }
}

fn encode_parts(frame: &Frame) -> Result<(Header, EncodedPayload), ProtoError> {
    let archived = frame
        .archive()
        .map_err(|e| ProtoError::Encode(e.to_string()))?;
    let mut flags = 0u8;
    let ciphertext = matches!(frame, Frame::MediaChunk(_) | Frame::MediaData(_));
    let payload = if archived.len() > COMPRESS_THRESHOLD && !ciphertext {
        let compressed = zstd::bulk::compress(&archived, ZSTD_LEVEL)
            .map_err(|e| ProtoError::Encode(e.to_string()))?;
        if compressed.len() < archived.len() {
            flags |= FLAG_ZSTD;
            EncodedPayload::Compressed(compressed)
        } else {
            EncodedPayload::Archived(archived)
        }
    } else {
        EncodedPayload::Archived(archived)
    };
    let header = Header::for_payload(frame.kind(), flags, payload.as_ref().len())?;
    Ok((header, payload))
}

/// Validates and decodes one payload whose header was already parsed.
///
/// Compressed payloads are inflated with a hard cap of `max_frame` bytes, so a small
/// compressed frame cannot expand into a large allocation.
pub fn decode_payload(
    header: &Header,
    payload: &[u8],
    max_frame: usize,
) -> Result<Frame, ProtoError> {
    let max = max_frame.min(HARD_MAX_FRAME);
    let mut aligned = AlignedVec::<16>::new();
    if header.flags & FLAG_ZSTD != 0 {
        let inflated = zstd::bulk::decompress(payload, max)
            .map_err(|e| ProtoError::Decompress(e.to_string()))?;
        aligned.extend_from_slice(&inflated);
    } else {
        aligned.extend_from_slice(payload);
    }
    Frame::from_archive(header.kind, &aligned)
}

/// Sans-I/O frame decoder: feed it bytes as they arrive, take frames out.
///
/// `next_frame` returns `Ok(None)` while a frame is incomplete and `Err` for a bad one; after
/// an error the connection must be closed (the stream position is no longer trustworthy).
#[derive(Debug)]
pub struct FrameDecoder {
    /// Received bytes from `start` on; the bytes before `start` are consumed (or the lead).
    buf: AlignedVec<PAYLOAD_ALIGN>,
    start: usize,
    max_frame: usize,
}

/// Alignment an archive needs to be validated where it lies.
const PAYLOAD_ALIGN: usize = 16;
/// Unused bytes kept at the front of the decoder's buffer: a frame moved to the front starts
/// at `LEAD`, so its payload starts at [`PAYLOAD_ALIGN`] and is decoded in place instead of
/// being copied into an aligned buffer first.
const LEAD: usize = PAYLOAD_ALIGN - HEADER_LEN;

impl FrameDecoder {
    /// A decoder refusing payloads larger than `max_frame` bytes.
    pub fn new(max_frame: usize) -> Self {
        let mut buf = AlignedVec::new();
        buf.resize(LEAD, 0);
        Self {
            buf,
            start: LEAD,
            max_frame: max_frame.min(HARD_MAX_FRAME),
        }
    }

    /// Appends received bytes.
    pub fn feed(&mut self, bytes: &[u8]) {
        if self.start == self.buf.len() {
            self.buf.resize(LEAD, 0);
            self.start = LEAD;
        }
        self.buf.extend_from_slice(bytes);
    }

    /// Changes the largest payload accepted from now on (a connection that becomes a media
    /// transfer takes larger frames than chat); capped at [`HARD_MAX_FRAME`].
    pub fn set_max_frame(&mut self, max_frame: usize) {
        self.max_frame = max_frame.min(HARD_MAX_FRAME);
    }

    /// Bytes buffered but not yet consumed as frames.
    pub fn buffered(&self) -> usize {
        self.buf.len() - self.start
    }

    /// Takes the next complete frame, if any.
    ///
    /// The header is checked (including the size limit) as soon as its 8 bytes are present,
    /// so an oversized frame is refused before its payload is buffered.
    pub fn next_frame(&mut self) -> Result<Option<Frame>, ProtoError> {
        let avail = &self.buf[self.start..];
        if avail.len() < HEADER_LEN {
            self.compact();
            return Ok(None);
        }
        let mut head = [0u8; HEADER_LEN];
        head.copy_from_slice(&avail[..HEADER_LEN]);
        let header = Header::parse(&head, self.max_frame)?;
        let total = HEADER_LEN + header.len as usize;
        if avail.len() < total {
            self.compact();
            return Ok(None);
        }
        let payload = &avail[HEADER_LEN..total];
        let aligned = (self.start + HEADER_LEN).is_multiple_of(PAYLOAD_ALIGN);
        let frame = if aligned && header.flags & FLAG_ZSTD == 0 {
            // The buffer is PAYLOAD_ALIGN-aligned, so is this payload: no copy needed.
            Frame::from_archive(header.kind, payload)?
        } else {
            decode_payload(&header, payload, self.max_frame)?
        };
        self.start += total;
        Ok(Some(frame))
    }

    /// Moves the unconsumed bytes to the front (after the lead), so the frame they begin
    /// has an aligned payload once complete.
    fn compact(&mut self) {
        if self.start != LEAD {
            let end = self.buf.len();
            self.buf.as_mut_slice().copy_within(self.start..end, LEAD);
            self.buf.resize(LEAD + end - self.start, 0);
            self.start = LEAD;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::*;

    fn all_frames() -> Vec<Frame> {
        let id = ClientMsgId([7; 16]);
        vec![
            Hello {
                min_version: 1,
                max_version: 3,
                client: "test".into(),
            }
            .into(),
            Register {
                user: "alice".into(),
                device: DeviceId(1),
                device_key: [1; 32],
                invite: Some("tok".into()),
                signature: [2; 64],
            }
            .into(),
            Login {
                user: "bob".into(),
                device: DeviceId(2),
                signature: [3; 64],
            }
            .into(),
            Send {
                client_msg_id: id,
                to: "bob".into(),
                envelopes: vec![DeviceEnvelope {
                    device: DeviceId(1),
                    envelope: vec![9; 100],
                }],
                own: vec![DeviceEnvelope {
                    device: DeviceId(2),
                    envelope: vec![8; 100],
                }],
                expires_in_secs: 3600,
            }
            .into(),
            AckDelivery {
                up_to: ServerSeq(42),
            }
            .into(),
            AckGroup {
                group: GroupId(9),
                up_to: ServerSeq(43),
            }
            .into(),
            GroupDeliver {
                group: GroupId(9),
                deliver: Deliver {
                    seq: ServerSeq(7),
                    from: "carol".into(),
                    from_device: DeviceId(2),
                    client_msg_id: id,
                    server_ts_ms: 9,
                    payload: Payload::Group(Box::new(GroupMessage {
                        group: GroupId(9),
                        body: vec![6],
                    })),
                },
            }
            .into(),
            SetPresenceVisibility {
                visibility: Visibility::Nobody,
            }
            .into(),
            SubscribePresence { user: "bob".into() }.into(),
            Typing {
                to: "bob".into(),
                typing: true,
            }
            .into(),
            Ping { nonce: 5 }.into(),
            Pong { nonce: 5 }.into(),
            Bye {}.into(),
            ServerHello {
                version: 1,
                challenge: [4; 32],
                max_frame: 1 << 20,
            }
            .into(),
            Welcome {
                user: "alice".into(),
                device: DeviceId(1),
                server_time_ms: 123,
            }
            .into(),
            Sent {
                client_msg_id: id,
                server_ts_ms: 99,
                duplicate: true,
            }
            .into(),
            Rejected {
                client_msg_id: id,
                code: ErrorCode::RateLimited.as_u16(),
                message: "slow down".into(),
            }
            .into(),
            Deliver {
                seq: ServerSeq(3),
                from: "alice".into(),
                from_device: DeviceId(1),
                client_msg_id: id,
                server_ts_ms: 5,
                payload: Payload::Envelope(vec![1, 2, 3]),
            }
            .into(),
            Deliver {
                seq: ServerSeq(4),
                from: "bob".into(),
                from_device: DeviceId(1),
                client_msg_id: id,
                server_ts_ms: 6,
                payload: Payload::Delivered,
            }
            .into(),
            Deliver {
                seq: ServerSeq(5),
                from: "carol".into(),
                from_device: DeviceId(2),
                client_msg_id: id,
                server_ts_ms: 7,
                payload: Payload::Group(Box::new(GroupMessage {
                    group: GroupId(9),
                    body: vec![4, 5],
                })),
            }
            .into(),
            Deliver {
                seq: ServerSeq(6),
                from: "alice".into(),
                from_device: DeviceId(1),
                client_msg_id: id,
                server_ts_ms: 8,
                payload: Payload::GroupEvent(Box::new(GroupNotice {
                    group: GroupId(9),
                    epoch: 2,
                    change: GroupChange::Added(vec!["bob".into()]),
                })),
            }
            .into(),
            GroupRequest {
                request_id: 10,
                op: GroupOp::Add {
                    group: GroupId(9),
                    users: vec!["bob".into(), "carol".into()],
                },
            }
            .into(),
            GroupSend {
                client_msg_id: id,
                group: GroupId(9),
                epoch: 2,
                body: vec![1; 40],
                expires_in_secs: 0,
            }
            .into(),
            GroupRead {
                group: GroupId(9),
                from: "alice".into(),
                client_msg_id: id,
            }
            .into(),
            GroupAnswer {
                request_id: 10,
                answer: GroupAnswerKind::Info(GroupInfo {
                    group: GroupId(9),
                    name: "hikers".into(),
                    epoch: 2,
                    members: vec![GroupMember {
                        user: "alice".into(),
                        admin: true,
                    }],
                }),
            }
            .into(),
            GroupReceipt {
                group: GroupId(9),
                client_msg_id: id,
                delivered: 2,
                read: 1,
                of: 2,
            }
            .into(),
            StoryPost {
                client_msg_id: id,
                audience: vec!["bob".into()],
                body: vec![3; 20],
            }
            .into(),
            StoryViewed {
                from: "alice".into(),
                client_msg_id: id,
            }
            .into(),
            ListStories { request_id: 11 }.into(),
            StoryView {
                client_msg_id: id,
                viewer: "bob".into(),
            }
            .into(),
            StoryList {
                request_id: 11,
                stories: vec![StorySummary {
                    client_msg_id: id,
                    posted_ms: 1,
                    expires_at_ms: 2,
                    audience: 3,
                    viewers: vec!["bob".into()],
                }],
            }
            .into(),
            MediaUploadOpen {
                blob: crate::BlobId([7; 32]),
                size: 1 << 31,
                downloads: 2,
                attempt: 77,
            }
            .into(),
            MediaUploadState {
                blob: crate::BlobId([7; 32]),
                size: 100,
                have: vec![crate::ByteRange { start: 0, end: 60 }],
                complete: false,
            }
            .into(),
            MediaChunk {
                offset: 60,
                bytes: vec![9; 40],
            }
            .into(),
            MediaChunkAck {
                offset: 60,
                held: 100,
            }
            .into(),
            MediaDownload {
                blob: crate::BlobId([7; 32]),
                range: crate::ByteRange { start: 0, end: 100 },
            }
            .into(),
            MediaData {
                offset: 0,
                size: 100,
                bytes: vec![1; 100],
            }
            .into(),
            MediaSignUrl {
                blob: crate::BlobId([7; 32]),
            }
            .into(),
            TransferLogin {
                user: "alice".into(),
                device: DeviceId(2),
                signature: [5; 64],
            }
            .into(),
            MediaUrl {
                blob: crate::BlobId([7; 32]),
                url: "https://edge/media/07".into(),
                expires_at_secs: 9,
            }
            .into(),
            TurnCredentialsRequest { request_id: 12 }.into(),
            TurnCredentials {
                request_id: 12,
                username: "1700003600:alice".into(),
                password: "bUIJIVaC05oyFgKsQvKAparqg1Q=".into(),
                ttl_secs: 3600,
                urls: vec![
                    "stun:127.0.0.1:3478".into(),
                    "turn:127.0.0.1:3478?transport=udp".into(),
                ],
            }
            .into(),
            Deliver {
                seq: ServerSeq(7),
                from: "alice".into(),
                from_device: DeviceId(1),
                client_msg_id: id,
                server_ts_ms: 9,
                payload: Payload::Story(Box::new(StoryMessage {
                    expires_at_ms: 100,
                    body: vec![1],
                })),
            }
            .into(),
            Presence {
                user: "bob".into(),
                state: PresenceState::LastSeen(77),
            }
            .into(),
            TypingNotice {
                from: "alice".into(),
                typing: false,
            }
            .into(),
            Error::new(ErrorCode::AuthFailed, "nope").into(),
            Goaway {
                reconnect_after_ms: 500,
            }
            .into(),
            UploadKeys {
                request_id: 1,
                identity: Some(Box::new(IdentityKeys {
                    curve25519: [1; 32],
                    ed25519: [2; 32],
                    signature: [3; 64],
                })),
                one_time_keys: vec![SignedKey {
                    key: [4; 32],
                    signature: [5; 64],
                }],
                fallback_key: None,
            }
            .into(),
            ClaimKeys {
                request_id: 2,
                user: "bob".into(),
            }
            .into(),
            KeysStored {
                request_id: 1,
                one_time_keys: 7,
            }
            .into(),
            KeyBundles {
                request_id: 2,
                user: "bob".into(),
                bundles: vec![DeviceBundle {
                    device: DeviceId(1),
                    device_key: [6; 32],
                    identity: None,
                    one_time_key: Some(SignedKey {
                        key: [7; 32],
                        signature: [8; 64],
                    }),
                    fallback: true,
                }],
            }
            .into(),
            KeysLow {
                one_time_keys: 3,
                fallback_used: true,
                has_identity: false,
            }
            .into(),
            LinkDevice {
                user: "bob".into(),
                code: "ABCD-EFGH".into(),
                device_key: [1; 32],
                signature: [2; 64],
            }
            .into(),
            CreateLinkCode { request_id: 3 }.into(),
            ListDevices { request_id: 4 }.into(),
            RemoveDevice {
                request_id: 5,
                device: DeviceId(2),
            }
            .into(),
            LinkCode {
                request_id: 3,
                code: "ABCD-EFGH".into(),
                expires_in_ms: 300_000,
            }
            .into(),
            DeviceList {
                request_id: 4,
                devices: vec![DeviceId(1), DeviceId(2)],
            }
            .into(),
            DeviceRemoved {
                request_id: 5,
                device: DeviceId(2),
            }
            .into(),
            Retract {
                request_id: 6,
                client_msg_id: id,
                to: "bob".into(),
            }
            .into(),
            Retracted {
                request_id: 6,
                removed: 2,
            }
            .into(),
            RequestRefused {
                request_id: 9,
                code: 9,
                message: "slow down".into(),
            }
            .into(),
            DeviceMismatch {
                client_msg_id: id,
                current: vec![UserDevices {
                    user: "bob".into(),
                    devices: vec![DeviceId(1), DeviceId(3)],
                }],
            }
            .into(),
            CallInvite {
                call_id: CallId([4; 16]),
                to: "bob".into(),
                media: CallMedia::Video,
                offers: vec![DeviceEnvelope {
                    device: DeviceId(1),
                    envelope: vec![5; 300],
                }],
                conference: Some(CallId([8; 16])),
            }
            .into(),
            CallAction {
                call_id: CallId([4; 16]),
                action: CallActionKind::Accept(vec![6; 200]),
            }
            .into(),
            CallAction {
                call_id: CallId([4; 16]),
                action: CallActionKind::Hangup,
            }
            .into(),
            CallHistoryRequest {
                request_id: 3,
                limit: 50,
            }
            .into(),
            CallIncoming {
                call_id: CallId([4; 16]),
                from: "alice".into(),
                from_device: DeviceId(2),
                media: CallMedia::Audio,
                offer: vec![1; 64],
                rings_for_ms: 30_000,
                conference: None,
            }
            .into(),
            CallUpdate {
                call_id: CallId([4; 16]),
                update: CallUpdateKind::Ended {
                    reason: CallEndReason::Refused(9),
                },
            }
            .into(),
            CallUpdate {
                call_id: CallId([4; 16]),
                update: CallUpdateKind::Conference {
                    others: vec!["carol".into()],
                },
            }
            .into(),
            CallUpdate {
                call_id: CallId([4; 16]),
                update: CallUpdateKind::Accepted {
                    device: DeviceId(3),
                    answer: vec![2; 40],
                },
            }
            .into(),
            CallHistory {
                request_id: 3,
                records: vec![CallRecord {
                    call_id: CallId([4; 16]),
                    peer: "bob".into(),
                    outgoing: true,
                    media: CallMedia::Video,
                    started_ms: 1,
                    answered_ms: 2,
                    ended_ms: 3,
                    end: CallEndReason::HungUp,
                    conference: Some(CallId([8; 16])),
                }],
            }
            .into(),
        ]
    }

    /// Mailbox items on disk hold an archived `Payload`: new kinds must not change its size,
    /// or items stored by an earlier version would no longer read.
    #[test]
    fn the_archived_payload_keeps_its_size() {
        assert_eq!(std::mem::size_of::<ArchivedPayload>(), 12);
    }

    #[test]
    fn every_frame_round_trips() {
        let frames = all_frames();
        // Every kind declared in the frame table appears in the test list.
        let kinds: std::collections::BTreeSet<u8> = frames.iter().map(Frame::kind).collect();
        let declared: std::collections::BTreeSet<u8> = (0..=255u8)
            .filter(|k| Frame::kind_name(*k).is_some())
            .collect();
        assert_eq!(kinds, declared);
        let mut wire = Vec::new();
        for f in &frames {
            encode(f, &mut wire).unwrap();
        }
        let mut dec = FrameDecoder::new(1 << 20);
        // Feed byte by byte: every prefix must be "incomplete", never an error.
        let mut out = Vec::new();
        for b in &wire {
            dec.feed(std::slice::from_ref(b));
            while let Some(f) = dec.next_frame().unwrap() {
                out.push(f);
            }
        }
        assert_eq!(out, frames);
        assert_eq!(dec.buffered(), 0);
    }

    #[test]
    fn large_payloads_are_compressed_and_round_trip() {
        let f: Frame = Send {
            client_msg_id: ClientMsgId([1; 16]),
            to: "bob".into(),
            envelopes: vec![DeviceEnvelope {
                device: DeviceId(1),
                envelope: vec![b'a'; 64 * 1024],
            }],
            own: Vec::new(),
            expires_in_secs: 0,
        }
        .into();
        let wire = encode_to_vec(&f).unwrap();
        assert_eq!(wire[5] & FLAG_ZSTD, FLAG_ZSTD);
        assert!(wire.len() < 4096, "compressible payload was not compressed");
        let mut dec = FrameDecoder::new(1 << 20);
        dec.feed(&wire);
        assert_eq!(dec.next_frame().unwrap(), Some(f));
    }

    #[test]
    fn oversized_frame_refused_from_header_alone() {
        let mut dec = FrameDecoder::new(1024);
        dec.feed(
            &Header {
                len: 1025,
                kind: 4,
                flags: 0,
            }
            .to_bytes(),
        );
        assert_eq!(
            dec.next_frame(),
            Err(ProtoError::TooLarge {
                len: 1025,
                max: 1024
            })
        );
        assert_eq!(
            dec.next_frame().unwrap_err().code(),
            ErrorCode::FrameTooLarge
        );
    }

    #[test]
    fn decompression_bomb_is_capped() {
        // 1 MiB of zeros compresses to a few hundred bytes; a 64 KiB receiver must refuse it.
        let raw = vec![0u8; 1 << 20];
        let comp = zstd::bulk::compress(&raw, 1).unwrap();
        let mut wire = Header {
            len: comp.len() as u32,
            kind: 4,
            flags: FLAG_ZSTD,
        }
        .to_bytes()
        .to_vec();
        wire.extend_from_slice(&comp);
        let mut dec = FrameDecoder::new(64 * 1024);
        dec.feed(&wire);
        assert!(matches!(dec.next_frame(), Err(ProtoError::Decompress(_))));
    }

    #[test]
    fn bad_headers_are_errors() {
        let mut h = Header {
            len: 0,
            kind: 1,
            flags: 0,
        }
        .to_bytes();
        h[6] = 1;
        assert_eq!(Header::parse(&h, 1024), Err(ProtoError::ReservedBits));
        let h = Header {
            len: 0,
            kind: 200,
            flags: 0,
        }
        .to_bytes();
        assert_eq!(Header::parse(&h, 1024), Err(ProtoError::UnknownKind(200)));
        let h = Header {
            len: 0,
            kind: 1,
            flags: 0x80,
        }
        .to_bytes();
        assert_eq!(Header::parse(&h, 1024), Err(ProtoError::UnknownFlags(0x80)));
    }

    #[test]
    fn truncated_streams_are_incomplete_not_frames() {
        for f in all_frames() {
            let wire = encode_to_vec(&f).unwrap();
            for cut in 0..wire.len() {
                let mut dec = FrameDecoder::new(1 << 20);
                dec.feed(&wire[..cut]);
                assert_eq!(dec.next_frame(), Ok(None), "{} cut to {cut}", f.name());
            }
        }
    }

    #[test]
    fn shortened_payloads_under_a_lying_header_never_panic() {
        // rkyv keeps the root at the end, so a suffix can occasionally be a valid (different)
        // archive; what matters is no panic and never the original frame back.
        for f in all_frames() {
            let wire = encode_to_vec(&f).unwrap();
            let body = &wire[HEADER_LEN..];
            for skip in 1..body.len() {
                let h = Header {
                    len: (body.len() - skip) as u32,
                    kind: f.kind(),
                    flags: 0,
                };
                let r = decode_payload(&h, &body[skip..], 1 << 20);
                assert_ne!(r.as_ref().ok(), Some(&f));
                let r = decode_payload(&h, &body[..body.len() - skip], 1 << 20);
                assert_ne!(r.as_ref().ok(), Some(&f));
            }
        }
    }

    #[test]
    fn garbage_never_panics() {
        // Deterministic xorshift so the test is reproducible.
        let mut x: u64 = 0x9e37_79b9_7f4a_7c15;
        let mut next = || {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x
        };
        let mut errors = 0;
        for _ in 0..20_000 {
            let len = (next() % 64) as usize;
            let mut bytes: Vec<u8> = (0..len + HEADER_LEN).map(|_| next() as u8).collect();
            // Make about half the headers plausible so payload validation is exercised too.
            if next() % 2 == 0 {
                bytes[..HEADER_LEN].copy_from_slice(
                    &Header {
                        len: len as u32,
                        kind: [1, 2, 3, 4, 5, 68][(next() % 6) as usize],
                        flags: 0,
                    }
                    .to_bytes(),
                );
            }
            let mut dec = FrameDecoder::new(1 << 20);
            dec.feed(&bytes);
            if dec.next_frame().is_err() {
                errors += 1;
            }
        }
        assert!(errors > 10_000, "garbage mostly decoded: {errors}");
    }

    #[test]
    fn wrong_kind_for_payload_is_refused() {
        let wire = encode_to_vec(&Ping { nonce: 1 }.into()).unwrap();
        let h = Header {
            len: (wire.len() - HEADER_LEN) as u32,
            kind: 4,
            flags: 0,
        };
        assert!(decode_payload(&h, &wire[HEADER_LEN..], 1 << 20).is_err());
    }

    #[test]
    fn frames_decode_alike_however_the_bytes_are_split() {
        // Media frames of odd sizes between every kind: payloads land at every alignment,
        // some decoded in place, some copied first; all must come out the same.
        let mut frames = Vec::new();
        for (i, f) in all_frames().into_iter().enumerate() {
            frames.push(f);
            frames.push(
                MediaData {
                    offset: i as u64,
                    size: 1 << 20,
                    bytes: (0..(i * 4099) % 70_001).map(|b| b as u8).collect(),
                }
                .into(),
            );
        }
        let mut wire = Vec::new();
        for f in &frames {
            encode(f, &mut wire).unwrap();
        }
        for piece in [1, 3, 8, 13, 4096, 65_536, wire.len()] {
            let mut dec = FrameDecoder::new(1 << 20);
            let mut out = Vec::new();
            for bytes in wire.chunks(piece) {
                dec.feed(bytes);
                while let Some(f) = dec.next_frame().unwrap() {
                    out.push(f);
                }
            }
            assert_eq!(out, frames, "pieces of {piece} bytes");
            assert_eq!(dec.buffered(), 0);
        }
    }

    #[test]
    fn chunks_are_the_same_bytes_as_the_flat_encoding() {
        let mut frames = all_frames();
        frames.push(
            MediaChunk {
                offset: 7,
                bytes: vec![9; 300_000],
            }
            .into(),
        );
        for f in &frames {
            let [head, payload] = encode_to_chunks(f).unwrap();
            assert_eq!(head.len(), HEADER_LEN);
            assert_eq!(
                [&head[..], &payload[..]].concat(),
                encode_to_vec(f).unwrap()
            );
        }
    }
}
