//! Encoding a media frame without copying its bytes: the archive is written around them.
//!
//! rkyv writes a `Vec<u8>` field's bytes into the archive with one `write` of the whole
//! slice. [`SkipWriter`] takes that one write as a hole instead of copying it, and keeps
//! everything else; the frame's own buffer then fills the hole as an owned [`Bytes`]. The
//! chunks, one after the other, are exactly the bytes [`crate::encode_to_vec`] makes.

use crate::codec::{encode_to_chunks, Header};
use crate::{Frame, ProtoError};
use bytes::Bytes;
use rkyv::rancor::Fallible;
use rkyv::ser::{Positional, Writer};

/// Encodes `frame` as owned chunks, header first. A `MediaChunk` or `MediaData` frame hands
/// its bytes over as one of the chunks instead of copying them into the archive (a writer
/// that takes owned chunks, like a QUIC stream's `write_chunks`, then sends a 1 MiB chunk
/// with no copy of ours); any other frame is [`encode_to_chunks`].
pub fn encode_owned_to_chunks(frame: Frame) -> Result<Vec<Bytes>, ProtoError> {
    let kind = frame.kind();
    let (split, bytes) = match frame {
        Frame::MediaChunk(c) => match archive_around(&c, &c.bytes)? {
            Some(split) => (split, c.bytes),
            None => return Ok(encode_to_chunks(&c.into())?.to_vec()),
        },
        Frame::MediaData(d) => match archive_around(&d, &d.bytes)? {
            Some(split) => (split, d.bytes),
            None => return Ok(encode_to_chunks(&d.into())?.to_vec()),
        },
        other => return Ok(encode_to_chunks(&other)?.to_vec()),
    };
    let header = Header::for_payload(kind, 0, split.archived.len() + bytes.len())?;
    let mut archived = Bytes::from(split.archived);
    let after = archived.split_off(split.hole_at);
    let mut chunks = Vec::with_capacity(4);
    chunks.push(Bytes::copy_from_slice(&header.to_bytes()));
    chunks.extend(
        [archived, Bytes::from(bytes), after]
            .into_iter()
            .filter(|c| !c.is_empty()),
    );
    Ok(chunks)
}

/// An archive written around one slice: `archived` holds every other byte, and the slice
/// belongs at `hole_at` of it.
struct Split {
    archived: Vec<u8>,
    hole_at: usize,
}

/// The archive of `value` with `hole` (a field of it) left out; `None` when rkyv did not
/// write `hole` in one piece (the caller then copies as usual).
fn archive_around<'h, T>(value: &T, hole: &'h [u8]) -> Result<Option<Split>, ProtoError>
where
    T: for<'a> rkyv::Serialize<
        rkyv::api::high::HighSerializer<
            SkipWriter<'h>,
            rkyv::ser::allocator::ArenaHandle<'a>,
            rkyv::rancor::Error,
        >,
    >,
{
    let writer = SkipWriter {
        hole,
        hole_at: None,
        out: Vec::with_capacity(256),
        pos: 0,
    };
    let writer = rkyv::api::high::to_bytes_in::<_, rkyv::rancor::Error>(value, writer)
        .map_err(|e| ProtoError::Encode(e.to_string()))?;
    Ok(writer.hole_at.map(|hole_at| Split {
        archived: writer.out,
        hole_at,
    }))
}

/// An rkyv writer that keeps every write but the one of `hole`, whose place it notes.
struct SkipWriter<'a> {
    hole: &'a [u8],
    /// Where in `out` the hole's bytes belong, once they were written.
    hole_at: Option<usize>,
    out: Vec<u8>,
    /// Bytes written in all, the hole's included: rkyv's positions.
    pos: usize,
}

impl Fallible for SkipWriter<'_> {
    type Error = rkyv::rancor::Error;
}

impl Positional for SkipWriter<'_> {
    fn pos(&self) -> usize {
        self.pos
    }
}

impl<E> Writer<E> for SkipWriter<'_> {
    fn write(&mut self, bytes: &[u8]) -> Result<(), E> {
        let is_hole = self.hole_at.is_none()
            && !bytes.is_empty()
            && std::ptr::eq(bytes.as_ptr(), self.hole.as_ptr())
            && bytes.len() == self.hole.len();
        if is_hole {
            self.hole_at = Some(self.out.len());
        } else {
            self.out.extend_from_slice(bytes);
        }
        self.pos += bytes.len();
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{encode_to_vec, FrameDecoder, MediaChunk, MediaData};

    fn media_frames() -> Vec<Frame> {
        let mut frames = Vec::new();
        for len in [0usize, 1, 7, 1000, 65_536, 1 << 20] {
            let bytes: Vec<u8> = (0..len).map(|i| (i * 31 % 251) as u8).collect();
            frames.push(
                MediaChunk {
                    offset: len as u64 * 3,
                    bytes: bytes.clone(),
                }
                .into(),
            );
            frames.push(
                MediaData {
                    offset: 5,
                    size: 1 << 30,
                    bytes,
                }
                .into(),
            );
        }
        frames
    }

    #[test]
    fn the_chunks_are_the_flat_encoding_and_the_bytes_are_not_copied() {
        for frame in media_frames() {
            let flat = encode_to_vec(&frame).unwrap();
            let (ptr, len) = match &frame {
                Frame::MediaChunk(c) => (c.bytes.as_ptr(), c.bytes.len()),
                Frame::MediaData(d) => (d.bytes.as_ptr(), d.bytes.len()),
                _ => unreachable!("media frames only"),
            };
            let chunks = encode_owned_to_chunks(frame).unwrap();
            assert_eq!(chunks.concat(), flat, "{len} bytes");
            if len > 0 {
                assert!(
                    chunks.iter().any(|c| c.as_ptr() == ptr && c.len() == len),
                    "{len} bytes: the frame's buffer is one of the chunks"
                );
            }
        }
    }

    #[test]
    fn other_frames_encode_as_before_and_decode() {
        let frames: Vec<Frame> = vec![
            crate::Ping { nonce: 9 }.into(),
            MediaData {
                offset: 0,
                size: 3,
                bytes: vec![1, 2, 3],
            }
            .into(),
        ];
        let mut dec = FrameDecoder::new(1 << 20);
        for f in &frames {
            let chunks = encode_owned_to_chunks(f.clone()).unwrap();
            assert_eq!(chunks.concat(), encode_to_vec(f).unwrap());
            dec.feed(&chunks.concat());
            assert_eq!(dec.next_frame().unwrap().as_ref(), Some(f));
        }
    }
}
