//! Missive wire format.
//!
//! Every frame on a Missive connection (the QUIC control stream or the TCP+TLS fallback)
//! is an 8-byte [`Header`] followed by a payload: the rkyv archive of one frame struct,
//! optionally zstd-compressed (flag bit [`FLAG_ZSTD`]). The header carries the payload
//! length, which is checked against the receiver's maximum *before* anything is
//! allocated, and the frame kind, which selects the archived type to validate.
//!
//! Design rules kept here:
//! - network bytes become typed [`Frame`]s only through [`FrameDecoder`] /
//!   [`decode_payload`], which validate with bytecheck (never unchecked access);
//! - an incomplete frame (`Ok(None)`) is distinct from a bad one (`Err`);
//! - every error maps to a stable [`ErrorCode`] that never changes meaning once shipped.
//!
//! `PROTOCOL.md` in this crate is the wire contract.

pub mod call;
pub mod codec;
pub mod envelope_limit;
pub mod error;
pub mod frame;
pub mod group;
pub mod ids;
pub mod media;
pub mod owned_chunks;
pub mod story;
pub mod turn;

pub use call::{
    check_action, check_invite, CallActionKind, CallEndReason, CallId, CallMedia, CallRecord,
    CallUpdateKind, MAX_CALL_HISTORY, MAX_CALL_PAYLOAD, MAX_CONFERENCE,
};
pub use codec::{
    decode_payload, encode, encode_to_chunks, encode_to_vec, FrameDecoder, Header,
    COMPRESS_THRESHOLD, FLAG_ZSTD, HARD_MAX_FRAME, HEADER_LEN,
};
pub use envelope_limit::{max_envelope_len, ENVELOPE_FRAME_OVERHEAD};
pub use error::{ErrorCode, ProtoError};
pub use frame::*;
pub use group::*;
pub use ids::{
    validate_user_name, ClientMsgId, DeviceId, GroupId, ServerSeq, MAX_DEVICES_PER_USER,
    MAX_USER_NAME,
};
pub use media::{BlobId, ByteRange};
pub use owned_chunks::encode_owned_to_chunks;
pub use story::*;

/// The protocol version this build speaks best. Peers negotiate in [`Hello`]/[`ServerHello`].
pub const PROTOCOL_VERSION: u16 = 6;
/// The oldest protocol version this build still accepts (version 2 made `Send` carry one
/// envelope per device; a version 1 `Send` cannot be stored). Version 3 added groups: frames
/// a version 2 client never sends, and `Payload` kinds it is only sent once it speaks 3.
/// Version 4 added media transfers: frames that travel on transfer streams of their own.
/// Version 5 added call signaling: a device is rung only once its session speaks 5.
/// Version 6 reads group messages from each group's log through a per-device cursor
/// (`GroupDeliver`, `AckGroup`): a session below 6 gets no group items.
pub const MIN_PROTOCOL_VERSION: u16 = 2;
/// Most one-time keys one `UploadKeys` may carry.
pub const MAX_KEYS_PER_UPLOAD: usize = 100;

/// The bytes a device's login key signs to publish its E2EE identity keys: binding user and
/// device means the keys cannot be moved to another device.
pub fn identity_transcript(
    user: &str,
    device: DeviceId,
    curve25519: &[u8; 32],
    ed25519: &[u8; 32],
) -> Vec<u8> {
    let mut out = Vec::with_capacity(19 + 4 + user.len() + 4 + 64);
    out.extend_from_slice(b"missive-identity-v1");
    out.extend_from_slice(&(user.len() as u32).to_be_bytes());
    out.extend_from_slice(user.as_bytes());
    out.extend_from_slice(&device.0.to_be_bytes());
    out.extend_from_slice(curve25519);
    out.extend_from_slice(ed25519);
    out
}

/// The bytes a device's E2EE Ed25519 key signs for each one-time or fallback key it
/// publishes, so a claimer can tell the server did not substitute a key of its own.
pub fn signed_key_transcript(user: &str, device: DeviceId, key: &[u8; 32]) -> Vec<u8> {
    let mut out = Vec::with_capacity(14 + 4 + user.len() + 4 + 32);
    out.extend_from_slice(b"missive-otk-v1");
    out.extend_from_slice(&(user.len() as u32).to_be_bytes());
    out.extend_from_slice(user.as_bytes());
    out.extend_from_slice(&device.0.to_be_bytes());
    out.extend_from_slice(key);
    out
}

/// ALPN identifier used on both QUIC and TCP+TLS.
pub const ALPN: &[u8] = b"missive/1";
/// Label for the TLS exporter that binds a login signature to one connection (RFC 5705/8446).
pub const EXPORTER_LABEL: &[u8] = b"EXPORTER-missive-login";
/// Length of the exported keying material mixed into the login signature.
pub const EXPORTER_LEN: usize = 32;
/// The largest UDP payload a client's QUIC packets grow to, where the route carries it
/// (loopback, jumbo-frame LANs; the internet stops at 1,452), and so what the edge takes in.
/// quinn hands up to 10 packets to one GSO send, and one send carries at most 65,507 bytes
/// (an IPv4 datagram's limit): above 6,550 such a batch fails with `EMSGSIZE` and its
/// packets are lost. With 9,000-byte packets on loopback quinn lost them and fell back to
/// 1,200 bytes.
pub const MAX_UDP_PAYLOAD: u16 = 6400;
/// A new QUIC connection's first congestion window in bytes, on both sides: quinn's default,
/// 10 packets of QUIC's minimum 1,200 bytes (RFC 9002).
pub const QUIC_INITIAL_WINDOW: u32 = 12_000;
/// The largest UDP payload the edge's QUIC packets grow to, where the client's route carries
/// it, and so what a client takes in. Five of them (the most a client waits for before it
/// acknowledges) fit a new connection's first congestion window of 12,000 bytes: with
/// 6,400-byte packets two filled it, the client waited out its 25 ms ACK delay, and a
/// download's first byte took 29-54 ms instead of 2-4. A client takes in no more than this:
/// quinn sizes an endpoint's receive buffer as this × 64 GRO segments × 32.
pub const EDGE_UDP_PAYLOAD: u16 = 2400;

/// The bytes a device signs to register or log in: a domain-separation tag, the server's
/// challenge, the TLS exporter of this connection, the user name and the device id.
///
/// Binding the exporter means a signature captured on one connection is useless on any
/// other; binding name and device means it cannot be moved to another account.
pub fn login_transcript(
    challenge: &[u8; 32],
    exporter: &[u8; EXPORTER_LEN],
    user: &str,
    device: DeviceId,
) -> Vec<u8> {
    let mut out = Vec::with_capacity(16 + 32 + EXPORTER_LEN + user.len() + 8);
    out.extend_from_slice(b"missive-login-v1");
    out.extend_from_slice(challenge);
    out.extend_from_slice(exporter);
    out.extend_from_slice(&(user.len() as u32).to_be_bytes());
    out.extend_from_slice(user.as_bytes());
    out.extend_from_slice(&device.0.to_be_bytes());
    out
}
