//! Media transfers. Files are encrypted by the sending client and named by the BLAKE3 hash
//! of their ciphertext ([`BlobId`]); the server stores and serves opaque bytes.
//!
//! Transfer frames travel on their own QUIC streams, one transfer per stream, opened by the
//! client after login (so a large upload never blocks chat frames on the control stream).
//! The first frame on such a stream says what it is for: `MediaUploadOpen`,
//! `MediaDownload` or `MediaSignUrl`. Over the TCP+TLS fallback they travel on the one
//! connection, interleaved with chat frames.

use rkyv::{Archive, Deserialize, Serialize};

/// A blob's name: the BLAKE3 hash of its ciphertext.
#[derive(
    Archive, Serialize, Deserialize, Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord,
)]
pub struct BlobId(pub [u8; 32]);

impl BlobId {
    /// Lower-case hex, as in download URLs.
    pub fn to_hex(&self) -> String {
        self.0.iter().map(|b| format!("{b:02x}")).collect()
    }

    /// Parses 64 hex digits (either case); `None` for anything else.
    pub fn from_hex(s: &str) -> Option<Self> {
        if s.len() != 64 || !s.is_ascii() {
            return None;
        }
        let mut out = [0u8; 32];
        for (i, byte) in out.iter_mut().enumerate() {
            *byte = u8::from_str_radix(&s[2 * i..2 * i + 2], 16).ok()?;
        }
        Some(Self(out))
    }
}

impl std::fmt::Display for BlobId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.to_hex())
    }
}

/// Bytes `start..end` of a blob (end exclusive).
#[derive(Archive, Serialize, Deserialize, Debug, Clone, Copy, PartialEq, Eq)]
pub struct ByteRange {
    /// First byte.
    pub start: u64,
    /// One past the last byte.
    pub end: u64,
}

/// Client → server, first frame of an upload stream: upload (or resume uploading) a blob.
/// Answered `MediaUploadState`, or `RequestRefused` (too large, over quota).
#[derive(Archive, Serialize, Deserialize, Debug, Clone, PartialEq, Eq)]
pub struct MediaUploadOpen {
    /// The blob: BLAKE3 of the whole ciphertext, checked before the blob is complete.
    pub blob: BlobId,
    /// Ciphertext size in bytes.
    pub size: u64,
    /// How many recipient devices will download it; the blob is deleted once that many
    /// distinct devices did (0: kept until it expires).
    pub downloads: u32,
    /// The client's id for this try (random; the same on every stream of one try). A try
    /// with a new id supersedes the one before: chunks still arriving from an older try
    /// (a connection that died with chunks in flight) are not written, so the ranges a
    /// resuming client is told stay true.
    pub attempt: u64,
}

/// Server → client: which bytes of the blob the server holds. `complete` once every byte is
/// there and the hash was verified (then nothing more needs sending).
#[derive(Archive, Serialize, Deserialize, Debug, Clone, PartialEq, Eq)]
pub struct MediaUploadState {
    /// The blob.
    pub blob: BlobId,
    /// Ciphertext size.
    pub size: u64,
    /// Ranges held, sorted and disjoint.
    pub have: Vec<ByteRange>,
    /// Every byte is held and the hash verified.
    pub complete: bool,
}

/// Client → server, on an upload stream after `MediaUploadOpen`: bytes at `offset`.
#[derive(Archive, Serialize, Deserialize, Debug, Clone, PartialEq, Eq)]
pub struct MediaChunk {
    /// Where the bytes go.
    pub offset: u64,
    /// The ciphertext bytes.
    pub bytes: Vec<u8>,
}

/// Server → client: a chunk of this stream's upload was written (`held` bytes of the blob are
/// held in all, across every stream of the upload).
#[derive(Archive, Serialize, Deserialize, Debug, Clone, PartialEq, Eq)]
pub struct MediaChunkAck {
    /// The chunk's offset.
    pub offset: u64,
    /// Bytes of the blob held so far.
    pub held: u64,
}

/// Client → server, first frame of a download stream: send `range` of a blob (clamped to
/// its size). Answered with `MediaData` frames up to the range's end, then the stream ends;
/// or `RequestRefused` (`UnknownMedia`).
#[derive(Archive, Serialize, Deserialize, Debug, Clone, PartialEq, Eq)]
pub struct MediaDownload {
    /// The blob.
    pub blob: BlobId,
    /// Which bytes.
    pub range: ByteRange,
}

/// Server → client: bytes of a blob being downloaded.
#[derive(Archive, Serialize, Deserialize, Debug, Clone, PartialEq, Eq)]
pub struct MediaData {
    /// Where the bytes are in the blob.
    pub offset: u64,
    /// Size of the whole blob.
    pub size: u64,
    /// The ciphertext bytes.
    pub bytes: Vec<u8>,
}

/// Client → server: a signed HTTPS URL for a blob (for a CDN or a plain HTTP client).
/// Answered `MediaUrl`, or `RequestRefused` (`UnknownMedia`).
#[derive(Archive, Serialize, Deserialize, Debug, Clone, PartialEq, Eq)]
pub struct MediaSignUrl {
    /// The blob.
    pub blob: BlobId,
}

/// Server → client: a signed download URL.
#[derive(Archive, Serialize, Deserialize, Debug, Clone, PartialEq, Eq)]
pub struct MediaUrl {
    /// The blob.
    pub blob: BlobId,
    /// The URL, valid until `expires_at_secs`.
    pub url: String,
    /// When the signature expires, seconds since the Unix epoch.
    pub expires_at_secs: u64,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn blob_ids_round_trip_through_hex_and_refuse_anything_else() {
        let id = BlobId([0xab; 32]);
        assert_eq!(BlobId::from_hex(&id.to_hex()), Some(id));
        assert_eq!(BlobId::from_hex(&id.to_hex().to_uppercase()), Some(id));
        assert_eq!(BlobId::from_hex("ab"), None);
        assert_eq!(BlobId::from_hex(&"g".repeat(64)), None);
        assert_eq!(BlobId::from_hex(&format!("../{}", "a".repeat(61))), None);
        assert_eq!(BlobId::from_hex(&"é".repeat(32)), None);
    }
}
