//! What travels inside an envelope.
//!
//! The server forwards envelopes as opaque bytes. Each device's envelope holds a
//! [`DevicePlaintext`]: the sealed [`Content`] (see [`seal`]) and, in the copy a sender's own
//! other devices get, the user it was sent to. End-to-end encryption encrypts exactly these
//! plaintext bytes for each device; nothing else in the SDK looks inside them.

use crate::ClientError;
use missive_proto::HARD_MAX_FRAME;

pub use wire::{
    ArchivedContent, CallSignal, CallSignalKind, Content, GroupKey, MediaMessage, PostKey,
};

// rkyv's derive generates helper types for the `Read { ids }` variant that carry no docs;
// the allow is scoped to this module, which holds nothing but the documented `Content`.
#[allow(missing_docs)]
mod wire {
    use missive_proto::{ClientMsgId, GroupId};
    use rkyv::{Archive, Deserialize, Serialize};

    /// The plaintext of one message.
    #[derive(Archive, Serialize, Deserialize, Debug, Clone, PartialEq, Eq)]
    pub enum Content {
        /// A text message.
        Text(String),
        /// A read receipt: the recipient has read these messages of the sender.
        Read {
            /// The `client_msg_id`s of the messages that were read.
            ids: Vec<ClientMsgId>,
        },
        /// Disappearing messages: from now on this chat's messages disappear `secs` after
        /// they are sent (0: they stay). Either side may set it; both apply it.
        Timer {
            /// Seconds (0: off).
            secs: u32,
        },
        /// Delete for everyone: the sender withdraws these messages of its own; clients that
        /// have them hide them (the server dropped the copies not yet delivered).
        Delete {
            /// The `client_msg_id`s withdrawn.
            ids: Vec<ClientMsgId>,
        },
        /// The SDK's own request: "I could not decrypt these messages of yours, send them
        /// again" (sent on a fresh session; never shown to the app).
        ResendRequest {
            /// The `client_msg_id`s that could not be decrypted.
            ids: Vec<ClientMsgId>,
        },
        /// The SDK's own message: the key of the sender's new Megolm session for a group
        /// (sent over Olm to every other member when the sender starts a session; never
        /// shown to the app). Taken only from a member's device. Boxed: the archived enum
        /// keeps the size and alignment it had before groups, so contents made by SDKs
        /// without groups still decode (and theirs by them).
        GroupKey(Box<GroupKey>),
        /// The SDK's own message: the key of one of the sender's status updates (sent over
        /// Olm to its audience before the post; never shown to the app). Boxed like
        /// `GroupKey`.
        PostKey(Box<PostKey>),
        /// A file: photo, video, voice note or document, encrypted and uploaded by the
        /// sender; what it takes to fetch, verify and decrypt it. Boxed like `GroupKey`.
        Media(Box<MediaMessage>),
        /// The SDK's own: a call's offer, answer or candidates, sealed for the one device
        /// that takes part (it travels in call frames, never as a message; one that arrives
        /// as a message is dropped). Boxed like `GroupKey`.
        Call(Box<CallSignal>),
    }

    /// What a call's sealed payload says (inside [`Content::Call`]). It names its call, so
    /// the edge cannot move a payload of one call into another.
    #[derive(Archive, Serialize, Deserialize, Clone, PartialEq, Eq)]
    pub struct CallSignal {
        /// The call (its `CallId` bytes).
        pub call: [u8; 16],
        /// What it carries.
        pub kind: CallSignalKind,
    }

    impl std::fmt::Debug for CallSignal {
        fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
            // Never the call's secret.
            let kind = match self.kind {
                CallSignalKind::Offer { .. } => "Offer",
                CallSignalKind::Answer { .. } => "Answer",
                CallSignalKind::Candidates { .. } => "Candidates",
            };
            f.debug_struct("CallSignal")
                .field("kind", &kind)
                .finish_non_exhaustive()
        }
    }

    /// The three payloads of a call.
    #[derive(Archive, Serialize, Deserialize, Clone, PartialEq, Eq)]
    pub enum CallSignalKind {
        /// The caller's offer: the call's secret (its media keys derive from it) and the
        /// caller's media description (ICE credentials and candidates).
        Offer {
            /// 32 random bytes chosen by the caller.
            secret: [u8; 32],
            /// The caller's encoded media description.
            description: Vec<u8>,
        },
        /// The callee's answer: its media description.
        Answer {
            /// The callee's encoded media description.
            description: Vec<u8>,
        },
        /// Candidates found later (trickled), encoded as a media description.
        Candidates {
            /// The encoded description carrying them.
            description: Vec<u8>,
        },
    }

    /// A file sent as a message (inside [`Content::Media`]).
    #[derive(Archive, Serialize, Deserialize, Clone, PartialEq, Eq)]
    pub struct MediaMessage {
        /// The blob on the edge: BLAKE3 of the ciphertext.
        pub blob: [u8; 32],
        /// The file's ChaCha20-Poly1305 key (fresh per file).
        pub key: [u8; 32],
        /// Ciphertext size (what the edge stores).
        pub size: u64,
        /// Plaintext size.
        pub plaintext_size: u64,
        /// The file's name, as the sender had it (no directories).
        pub name: String,
        /// MIME type, detected from the file's first bytes.
        pub mime: String,
        /// The sender's caption (may be empty).
        pub caption: String,
        /// A small JPEG preview of an image (metadata stripped); empty when none.
        pub preview: Vec<u8>,
    }

    impl std::fmt::Debug for MediaMessage {
        fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
            // Never the key.
            f.debug_struct("MediaMessage")
                .field("size", &self.size)
                .field("name", &self.name)
                .field("mime", &self.mime)
                .finish_non_exhaustive()
        }
    }

    /// The key of one status update (inside [`Content::PostKey`]).
    #[derive(Archive, Serialize, Deserialize, Debug, Clone, PartialEq, Eq)]
    pub struct PostKey {
        /// The post's id.
        pub post: ClientMsgId,
        /// Its ChaCha20-Poly1305 key.
        pub key: [u8; 32],
    }

    /// A Megolm session key for a group (inside [`Content::GroupKey`]).
    #[derive(Archive, Serialize, Deserialize, Debug, Clone, PartialEq, Eq)]
    pub struct GroupKey {
        /// The group.
        pub group: GroupId,
        /// The membership epoch the session is for.
        pub epoch: u64,
        /// The session's id.
        pub session_id: String,
        /// The exported Megolm session key.
        pub session_key: Vec<u8>,
    }

    /// What one device's envelope carries once decrypted.
    #[derive(Archive, Serialize, Deserialize, Debug, Clone, PartialEq, Eq)]
    pub struct DevicePlaintext {
        /// Set in the copy for the sender's own other devices: the user the message went to.
        pub sent_to: Option<String>,
        /// Set when this is a message sent again on request (its first copy could not be
        /// decrypted somewhere): the id it was first sent under.
        pub resend_of: Option<ClientMsgId>,
        /// The chat's disappearing-message timer when it was sent, seconds (0: none).
        pub expires_in_secs: u32,
        /// The sealed [`Content`] (its archive, see `seal`).
        pub content: Vec<u8>,
    }
}

pub(crate) use wire::DevicePlaintext;

impl DevicePlaintext {
    /// The archive of this plaintext (what gets encrypted for one device).
    pub(crate) fn encode(&self) -> Vec<u8> {
        rkyv::to_bytes::<rkyv::rancor::Error>(self)
            .expect("archiving a plaintext below the frame cap into a growable buffer cannot fail")
            .into_vec()
    }

    /// Validates and decodes a plaintext, and the content inside it.
    pub(crate) fn decode(bytes: &[u8]) -> Result<Opened, ClientError> {
        let mut aligned = rkyv::util::AlignedVec::<16>::with_capacity(bytes.len());
        aligned.extend_from_slice(bytes);
        let p = rkyv::from_bytes::<Self, rkyv::rancor::Error>(&aligned)
            .map_err(|e| ClientError::InvalidContent(e.to_string()))?;
        Ok(Opened {
            sent_to: p.sent_to,
            resend_of: p.resend_of,
            expires_in_secs: p.expires_in_secs,
            content: Content::decode(&p.content)?,
        })
    }
}

/// A decrypted and decoded envelope.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Opened {
    /// See [`DevicePlaintext::sent_to`].
    pub(crate) sent_to: Option<String>,
    /// See [`DevicePlaintext::resend_of`].
    pub(crate) resend_of: Option<missive_proto::ClientMsgId>,
    /// See [`DevicePlaintext::expires_in_secs`].
    pub(crate) expires_in_secs: u32,
    /// The content.
    pub(crate) content: Content,
}

/// Bytes of archive overhead allowed on top of the variable-length parts when checking size.
const ARCHIVE_OVERHEAD: usize = 64;

impl Content {
    /// An upper bound on the encoded size, computed without encoding.
    pub fn encoded_size_hint(&self) -> usize {
        ARCHIVE_OVERHEAD
            + match self {
                Self::Text(t) => t.len(),
                Self::Timer { .. } => 4,
                Self::Read { ids } | Self::ResendRequest { ids } | Self::Delete { ids } => {
                    ids.len().saturating_mul(16)
                }
                Self::GroupKey(k) => 32 + k.session_id.len() + k.session_key.len(),
                Self::PostKey(_) => 48,
                Self::Media(m) => {
                    96 + m.name.len() + m.mime.len() + m.caption.len() + m.preview.len()
                }
                Self::Call(c) => {
                    64 + match &c.kind {
                        CallSignalKind::Offer { description, .. }
                        | CallSignalKind::Answer { description }
                        | CallSignalKind::Candidates { description } => description.len(),
                    }
                }
            }
    }

    /// The rkyv archive of this content.
    ///
    /// # Panics
    /// Only when the content is larger than rkyv's 32-bit relative pointers can address
    /// (about 2 GiB); [`seal`] refuses anything above the 16 MiB frame cap before getting here.
    pub fn encode(&self) -> Vec<u8> {
        rkyv::to_bytes::<rkyv::rancor::Error>(self)
            .expect("archiving a Content below 2 GiB into a growable buffer cannot fail")
            .into_vec()
    }

    /// Validates (bytecheck) and decodes an archive produced by [`Content::encode`].
    ///
    /// The bytes are first copied into a 16-byte-aligned buffer, as rkyv requires; they are
    /// never accessed unchecked.
    pub fn decode(bytes: &[u8]) -> Result<Self, ClientError> {
        let mut aligned = rkyv::util::AlignedVec::<16>::with_capacity(bytes.len());
        aligned.extend_from_slice(bytes);
        rkyv::from_bytes::<Self, rkyv::rancor::Error>(&aligned)
            .map_err(|e| ClientError::InvalidContent(e.to_string()))
    }
}

/// Encodes content for sending, refusing what could never fit a frame. Each device's
/// envelope then wraps these bytes in a [`DevicePlaintext`].
pub fn seal(content: &Content) -> Result<Vec<u8>, ClientError> {
    let size = content.encoded_size_hint();
    if size > HARD_MAX_FRAME {
        return Err(ClientError::TooLarge {
            size,
            max: HARD_MAX_FRAME,
        });
    }
    Ok(content.encode())
}

/// Decodes what [`seal`] made.
pub fn open(envelope: &[u8]) -> Result<Content, ClientError> {
    Content::decode(envelope)
}

#[cfg(test)]
mod tests {
    use super::*;
    use missive_proto::ClientMsgId;

    #[test]
    fn content_round_trips() {
        for c in [
            Content::Text(String::new()),
            Content::Text("hello, wörld 👋".into()),
            Content::Text("x".repeat(100_000)),
            Content::Read { ids: vec![] },
            Content::Read {
                ids: vec![ClientMsgId([1; 16]), ClientMsgId([0xfe; 16])],
            },
            Content::PostKey(Box::new(PostKey {
                post: ClientMsgId([3; 16]),
                key: [9; 32],
            })),
            Content::GroupKey(Box::new(GroupKey {
                group: missive_proto::GroupId(u64::MAX),
                epoch: 3,
                session_id: "s".repeat(43),
                session_key: vec![7; 229],
            })),
        ] {
            let bytes = seal(&c).unwrap();
            assert!(bytes.len() <= c.encoded_size_hint(), "size hint too small");
            assert_eq!(open(&bytes).unwrap(), c);
            // Unaligned input must work too (decode copies into an aligned buffer).
            let mut shifted = vec![0u8];
            shifted.extend_from_slice(&bytes);
            assert_eq!(Content::decode(&shifted[1..]).unwrap(), c);
        }
    }

    #[test]
    fn garbage_is_rejected_not_panicking() {
        assert!(Content::decode(&[]).is_err());
        assert!(Content::decode(&[0xff; 3]).is_err());
        // Layout of an out-of-line text: [bytes][tag u8 + pad][len u32][rel ptr i32] (root last).
        let long = Content::Text("hello world, long".into()).encode();
        let n = long.len();
        let mut bad_ptr = long.clone();
        bad_ptr[n - 4..].copy_from_slice(&0x7fff_fff0i32.to_le_bytes());
        assert!(Content::decode(&bad_ptr).is_err(), "pointer out of bounds");
        let mut bad_tag = long.clone();
        bad_tag[n - 12] = 7;
        assert!(Content::decode(&bad_tag).is_err(), "unknown variant tag");
        let mut truncated = long.clone();
        truncated.drain(..4);
        assert!(Content::decode(&truncated).is_err(), "string bytes cut off");
        // Layout of Read: [ids][tag + pad][rel ptr i32][len u32].
        let read = Content::Read {
            ids: vec![ClientMsgId([1; 16])],
        }
        .encode();
        let n = read.len();
        let mut bad_len = read.clone();
        bad_len[n - 4..].copy_from_slice(&1000u32.to_le_bytes());
        assert!(
            Content::decode(&bad_len).is_err(),
            "length beyond the buffer"
        );
        // Deterministic pseudo-random inputs: never a panic.
        let mut x: u64 = 0x2545_f491_4f6c_dd1d;
        for len in 0..2000usize {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            let bytes: Vec<u8> = (0..len % 48).map(|i| (x >> ((i % 8) * 8)) as u8).collect();
            let _ = Content::decode(&bytes);
        }
    }

    #[test]
    fn invalid_utf8_text_is_rejected() {
        let mut bytes = Content::Text("hello world, long".into()).encode();
        assert_eq!(&bytes[..5], b"hello");
        bytes[0] = 0xff;
        bytes[1] = 0xfe;
        assert!(Content::decode(&bytes).is_err());
    }

    #[test]
    fn oversized_content_is_refused_before_encoding() {
        let big = Content::Text("a".repeat(HARD_MAX_FRAME + 1));
        assert!(matches!(seal(&big), Err(ClientError::TooLarge { .. })));
    }
}
