//! One transfer stream as a state machine without sockets, files or clocks: it checks every
//! frame the client sends on the stream, asks its driver for the I/O (open the upload, write
//! bytes, send a range, sign a URL) and says what to answer.
//!
//! A stream carries one transfer. Its first frame names it: `MediaUploadOpen` (then only
//! `MediaChunk` frames, each answered `MediaChunkAck`, until the blob is complete),
//! `MediaDownload` or `MediaSignUrl` (answered, then the stream ends). Anything else closes
//! the stream with a typed refusal; the connection and its other streams go on.

use missive_proto::{
    BlobId, ByteRange, ErrorCode, Frame, MediaChunkAck, MediaUploadOpen, MediaUploadState,
    RequestRefused,
};

/// Largest `MediaChunk` payload (the client adapts its chunks between 64 KiB and this).
pub const MAX_CHUNK: usize = 1024 * 1024;
/// Largest frame a transfer stream accepts: one chunk and its header.
pub const MAX_TRANSFER_FRAME: usize = MAX_CHUNK + 1024;

/// What the driver must do next.
#[derive(Debug, PartialEq, Eq)]
pub enum Effect {
    /// Send this frame on the stream.
    Reply(Frame),
    /// Open (or resume) the upload; then call [`Transfer::opened`].
    Open(MediaUploadOpen),
    /// Write `bytes` at `offset` of the upload; then call [`Transfer::written`].
    Write {
        /// The blob.
        blob: BlobId,
        /// The client's try the bytes belong to.
        attempt: u64,
        /// Where.
        offset: u64,
        /// What.
        bytes: Vec<u8>,
    },
    /// Send `range` of `blob` as `MediaData` frames, then finish the stream.
    Send {
        /// The blob.
        blob: BlobId,
        /// Which bytes.
        range: ByteRange,
    },
    /// Answer with a signed URL for `blob`, then finish the stream.
    Sign(BlobId),
    /// The transfer is over: finish the stream.
    Finish,
}

/// How opening an upload went.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Opened {
    /// Receiving; these ranges are held already.
    Ready(Vec<ByteRange>),
    /// The blob is complete already (stored once): nothing to send.
    Complete,
    /// Refused (too large, over quota, storage unavailable).
    Refused(ErrorCode, String),
}

/// How a write went.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Written {
    /// Written; `held` bytes of the blob are held now.
    Held(u64),
    /// That was the last byte: the blob is verified and stored.
    Complete,
    /// Refused (hash mismatch, storage failure).
    Refused(ErrorCode, String),
}

#[derive(Debug)]
enum State {
    /// Waiting for the frame that names the transfer.
    First,
    /// The upload is being opened.
    Opening {
        blob: BlobId,
        size: u64,
        attempt: u64,
    },
    /// Waiting for chunks, or for a write to finish (`writing`).
    Receiving {
        blob: BlobId,
        size: u64,
        attempt: u64,
        writing: Option<u64>,
    },
    /// Nothing more is accepted.
    Done,
}

/// One transfer stream.
#[derive(Debug)]
pub struct Transfer {
    state: State,
}

impl Default for Transfer {
    fn default() -> Self {
        Self::new()
    }
}

fn refuse(code: ErrorCode, why: impl Into<String>) -> Vec<Effect> {
    vec![
        Effect::Reply(RequestRefused::new(0, code, why).into()),
        Effect::Finish,
    ]
}

impl Transfer {
    /// A stream whose first frame has not come yet.
    pub fn new() -> Self {
        Self {
            state: State::First,
        }
    }

    /// Whether the stream is over.
    pub fn is_done(&self) -> bool {
        matches!(self.state, State::Done)
    }

    /// Whether the first frame has not come yet.
    pub fn is_waiting_for_first(&self) -> bool {
        matches!(self.state, State::First)
    }

    /// Whether the machine waits on its driver (no frame may be handled meanwhile).
    pub fn is_busy(&self) -> bool {
        matches!(
            self.state,
            State::Opening { .. }
                | State::Receiving {
                    writing: Some(_),
                    ..
                }
        )
    }

    /// A frame from the client.
    pub fn on_frame(&mut self, frame: Frame) -> Vec<Effect> {
        match (&mut self.state, frame) {
            (State::First, Frame::MediaUploadOpen(open)) => {
                self.state = State::Opening {
                    blob: open.blob,
                    size: open.size,
                    attempt: open.attempt,
                };
                vec![Effect::Open(open)]
            }
            (State::First, Frame::MediaDownload(d)) => {
                self.state = State::Done;
                if d.range.start > d.range.end {
                    return refuse(ErrorCode::ProtocolViolation, "range ends before it starts");
                }
                vec![Effect::Send {
                    blob: d.blob,
                    range: d.range,
                }]
            }
            (State::First, Frame::MediaSignUrl(s)) => {
                self.state = State::Done;
                vec![Effect::Sign(s.blob)]
            }
            (
                State::Receiving {
                    blob,
                    size,
                    attempt,
                    writing: writing @ None,
                },
                Frame::MediaChunk(chunk),
            ) => {
                let end = chunk.offset.checked_add(chunk.bytes.len() as u64);
                if chunk.bytes.is_empty() || chunk.bytes.len() > MAX_CHUNK {
                    self.state = State::Done;
                    return refuse(ErrorCode::ProtocolViolation, "chunk of 1 byte to 1 MiB");
                }
                if end.is_none_or(|end| end > *size) {
                    self.state = State::Done;
                    return refuse(ErrorCode::ProtocolViolation, "chunk past the blob's end");
                }
                *writing = Some(chunk.offset);
                vec![Effect::Write {
                    blob: *blob,
                    attempt: *attempt,
                    offset: chunk.offset,
                    bytes: chunk.bytes,
                }]
            }
            (State::Done, _) => Vec::new(),
            (_, other) => {
                self.state = State::Done;
                refuse(
                    ErrorCode::ProtocolViolation,
                    format!("{} not expected here on a transfer stream", other.name()),
                )
            }
        }
    }

    /// The driver opened the upload.
    pub fn opened(&mut self, outcome: Opened) -> Vec<Effect> {
        let State::Opening {
            blob,
            size,
            attempt,
        } = self.state
        else {
            return Vec::new();
        };
        let state = |have: Vec<ByteRange>, complete| {
            Effect::Reply(
                MediaUploadState {
                    blob,
                    size,
                    have,
                    complete,
                }
                .into(),
            )
        };
        match outcome {
            Opened::Ready(have) => {
                self.state = State::Receiving {
                    blob,
                    size,
                    attempt,
                    writing: None,
                };
                vec![state(have, false)]
            }
            Opened::Complete => {
                self.state = State::Done;
                let all = vec![ByteRange {
                    start: 0,
                    end: size,
                }];
                vec![state(all, true), Effect::Finish]
            }
            Opened::Refused(code, why) => {
                self.state = State::Done;
                refuse(code, why)
            }
        }
    }

    /// The driver wrote the last chunk.
    pub fn written(&mut self, outcome: Written) -> Vec<Effect> {
        let State::Receiving {
            blob,
            size,
            writing: ref mut writing @ Some(offset),
            ..
        } = self.state
        else {
            return Vec::new();
        };
        *writing = None;
        match outcome {
            Written::Held(held) => vec![Effect::Reply(MediaChunkAck { offset, held }.into())],
            Written::Complete => {
                self.state = State::Done;
                vec![
                    Effect::Reply(MediaChunkAck { offset, held: size }.into()),
                    Effect::Reply(
                        MediaUploadState {
                            blob,
                            size,
                            have: vec![ByteRange {
                                start: 0,
                                end: size,
                            }],
                            complete: true,
                        }
                        .into(),
                    ),
                    Effect::Finish,
                ]
            }
            Written::Refused(code, why) => {
                self.state = State::Done;
                refuse(code, why)
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use missive_proto::{MediaChunk, MediaDownload, Ping};

    const BLOB: BlobId = BlobId([5; 32]);

    fn open(size: u64) -> Frame {
        MediaUploadOpen {
            blob: BLOB,
            size,
            downloads: 1,
            attempt: 1,
        }
        .into()
    }

    fn chunk(offset: u64, len: usize) -> Frame {
        MediaChunk {
            offset,
            bytes: vec![1; len],
        }
        .into()
    }

    fn refused_code(effects: &[Effect]) -> Option<u16> {
        effects.iter().find_map(|e| match e {
            Effect::Reply(Frame::RequestRefused(r)) => Some(r.code),
            _ => None,
        })
    }

    #[test]
    fn an_upload_opens_takes_chunks_in_any_order_and_completes() {
        let mut t = Transfer::new();
        assert!(matches!(t.on_frame(open(10)).as_slice(), [Effect::Open(_)]));
        assert!(t.is_busy());
        let fx = t.opened(Opened::Ready(vec![ByteRange { start: 0, end: 4 }]));
        assert!(
            matches!(&fx[..], [Effect::Reply(Frame::MediaUploadState(s))] if !s.complete && s.have.len() == 1)
        );
        let fx = t.on_frame(chunk(7, 3));
        assert!(matches!(&fx[..], [Effect::Write { offset: 7, .. }]));
        assert!(t.is_busy());
        let fx = t.written(Written::Held(7));
        assert_eq!(
            fx,
            vec![Effect::Reply(MediaChunkAck { offset: 7, held: 7 }.into())]
        );
        t.on_frame(chunk(4, 3));
        let fx = t.written(Written::Complete);
        assert!(matches!(fx.last(), Some(Effect::Finish)));
        assert!(matches!(&fx[1], Effect::Reply(Frame::MediaUploadState(s)) if s.complete));
        assert!(t.is_done());
    }

    #[test]
    fn bad_chunks_and_unexpected_frames_end_only_the_stream_with_a_typed_refusal() {
        let violation = Some(ErrorCode::ProtocolViolation.as_u16());
        let receiving = || {
            let mut t = Transfer::new();
            t.on_frame(open(10));
            t.opened(Opened::Ready(Vec::new()));
            t
        };
        assert_eq!(refused_code(&receiving().on_frame(chunk(8, 3))), violation);
        assert_eq!(refused_code(&receiving().on_frame(chunk(0, 0))), violation);
        assert_eq!(
            refused_code(&receiving().on_frame(chunk(u64::MAX, 2))),
            violation
        );
        assert_eq!(
            refused_code(&receiving().on_frame(Ping { nonce: 1 }.into())),
            violation
        );
        assert_eq!(
            refused_code(&Transfer::new().on_frame(chunk(0, 1))),
            violation
        );
        let mut t = Transfer::new();
        let fx = t.on_frame(
            MediaDownload {
                blob: BLOB,
                range: ByteRange { start: 5, end: 1 },
            }
            .into(),
        );
        assert_eq!(refused_code(&fx), violation);
        assert!(t.is_done());
        assert!(t.on_frame(chunk(0, 1)).is_empty());
    }

    #[test]
    fn refusals_and_already_complete_blobs_end_the_upload() {
        let mut t = Transfer::new();
        t.on_frame(open(10));
        let fx = t.opened(Opened::Refused(
            ErrorCode::MediaQuotaExceeded,
            "quota".into(),
        ));
        assert_eq!(
            refused_code(&fx),
            Some(ErrorCode::MediaQuotaExceeded.as_u16())
        );
        let mut t = Transfer::new();
        t.on_frame(open(10));
        let fx = t.opened(Opened::Complete);
        assert!(matches!(&fx[0], Effect::Reply(Frame::MediaUploadState(s)) if s.complete));
        let mut t = Transfer::new();
        t.on_frame(open(10));
        t.opened(Opened::Ready(Vec::new()));
        t.on_frame(chunk(0, 10));
        let fx = t.written(Written::Refused(
            ErrorCode::MediaHashMismatch,
            "hash".into(),
        ));
        assert_eq!(
            refused_code(&fx),
            Some(ErrorCode::MediaHashMismatch.as_u16())
        );
    }
}
