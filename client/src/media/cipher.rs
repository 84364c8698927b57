//! Streaming encryption of a media file: a fresh key per file, ChaCha20-Poly1305 over
//! 64 KiB chunks in the STREAM construction, the BLAKE3 hash of the ciphertext as the blob's
//! name. Memory stays at two chunks whatever the file's size.
//!
//! # Format (version 1)
//!
//! - The plaintext is cut into chunks of [`CHUNK_PLAINTEXT`] bytes; the last chunk holds the
//!   rest, 1 to [`CHUNK_PLAINTEXT`] bytes, or 0 bytes only when the whole file is empty (so an
//!   empty file is one sealed empty chunk, never zero bytes).
//! - Chunk `i` is sealed with ChaCha20-Poly1305 under the file's key, empty associated data and
//!   the 12-byte nonce `[0; 7] ‖ u32_be(i) ‖ flag`, where `flag` is `0x01` on the last chunk and
//!   `0x00` on every other (RustCrypto's `aead_stream::StreamBE32`, the STREAM construction of
//!   Hoang, Reyhanitabar, Rogaway and Vizár). The 7-byte prefix can be zero because a key
//!   seals exactly one file (see [`encrypt_file`]).
//! - The ciphertext is the sealed chunks back to back, each `ciphertext ‖ 16-byte tag`: every
//!   chunk but the last is [`CHUNK_SEALED`] bytes. Its length is [`ciphertext_len`] of the
//!   plaintext's length, and chunk `i` starts at byte `i * CHUNK_SEALED`.
//! - The blob is named by BLAKE3 of the whole ciphertext.
//!
//! Because the index and the last-chunk flag are in the nonce, a chunk moved to another
//! place, a dropped or repeated chunk, a stream cut after a full chunk, or bytes appended
//! after the last chunk all fail to open.

use std::fmt;
use std::fs::File;
use std::io::{self, Read, Write};
use std::path::Path;

use aead_stream::{NewStream, StreamBE32, StreamPrimitive};
use chacha20poly1305::{ChaCha20Poly1305, KeyInit};
use rand::RngCore;
use zeroize::Zeroize;

/// Plaintext bytes per chunk: 64 KiB. Part of the format: changing it changes every
/// ciphertext.
pub const CHUNK_PLAINTEXT: usize = 64 * 1024;

/// Bytes ChaCha20-Poly1305 adds to each chunk (the Poly1305 tag).
pub const TAG_LEN: usize = 16;

/// Bytes of a sealed chunk other than the last: [`CHUNK_PLAINTEXT`] + [`TAG_LEN`].
pub const CHUNK_SEALED: usize = CHUNK_PLAINTEXT + TAG_LEN;

/// The STREAM flavour: 7-byte nonce prefix, 32-bit big-endian chunk counter, last-chunk byte.
type Stream = StreamBE32<ChaCha20Poly1305>;

/// The secret key of one media file (32 random bytes). It travels to the recipients inside
/// the end-to-end encrypted message, with the blob's hash and length.
///
/// Wiped from memory when dropped; its `Debug` output never shows it.
// No `PartialEq`: comparing secrets with a short-circuiting `==` is a timing leak waiting for
// a caller.
#[derive(Clone)]
pub struct MediaKey([u8; 32]);

impl MediaKey {
    /// A fresh key from the operating system's random source. [`encrypt_file`] makes one per
    /// file; this is for callers that need a key for something else of their own.
    pub fn generate() -> Self {
        let mut key = [0u8; 32];
        rand::rngs::OsRng.fill_bytes(&mut key);
        Self(key)
    }

    /// The key received in a media message, to decrypt that message's blob.
    pub fn from_bytes(bytes: [u8; 32]) -> Self {
        Self(bytes)
    }

    /// The key's bytes, to put inside the end-to-end encrypted message. Do not log them.
    pub fn as_bytes(&self) -> &[u8; 32] {
        &self.0
    }

    fn stream(&self) -> Stream {
        let aead = ChaCha20Poly1305::new(&self.0.into());
        // The prefix stays zero: the key is unique to one plaintext (module doc).
        Stream::from_aead(aead, &Default::default())
    }
}

impl Drop for MediaKey {
    fn drop(&mut self) {
        self.0.zeroize();
    }
}

impl fmt::Debug for MediaKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("MediaKey(..)")
    }
}

/// What [`encrypt_file`] produced besides the ciphertext itself: what a media message
/// carries (with the key) so a recipient can fetch and verify the blob.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Sealed {
    /// BLAKE3 of the whole ciphertext: the blob's name on the edge.
    pub hash: [u8; 32],
    /// Bytes of ciphertext written; always `ciphertext_len(plaintext_len)`.
    pub ciphertext_len: u64,
    /// Bytes of plaintext read.
    pub plaintext_len: u64,
}

/// Why a media file did not encrypt or decrypt.
#[derive(Debug, thiserror::Error)]
pub enum MediaError {
    /// A chunk did not open with the key: its bytes were changed, it was moved from another
    /// place in the blob (or another blob), or the final flag does not match where it is.
    #[error("media chunk {chunk} does not open with the file's key (tampered or reordered)")]
    Tampered {
        /// Index of the first chunk that failed, from 0.
        chunk: u64,
    },
    /// The ciphertext ends before its final chunk: cut short, or the final chunk dropped.
    #[error("the media ciphertext ends before its final chunk")]
    Truncated,
    /// Bytes follow the final chunk.
    #[error("bytes follow the final chunk of the media ciphertext")]
    TrailingData,
    /// Every chunk opened but the ciphertext is not the blob the message named.
    #[error("the media ciphertext does not have the BLAKE3 hash it was named by")]
    WrongHash,
    /// The expected ciphertext length is not one that [`ciphertext_len`] can give (the message
    /// describing the blob is wrong).
    #[error("the expected media length is impossible for this format")]
    WrongLength,
    /// The plaintext needs more than 2^32 chunks (256 TiB), past the chunk counter.
    #[error("the media file is too large for the chunk counter")]
    TooLarge,
    /// Reading the input or writing the output failed.
    #[error("media I/O: {0}")]
    Io(#[from] io::Error),
}

/// The ciphertext length of a plaintext of `plaintext_len` bytes: one tag per chunk, and at
/// least one chunk (an empty file is one sealed empty chunk).
pub fn ciphertext_len(plaintext_len: u64) -> u64 {
    let chunk = CHUNK_PLAINTEXT as u64;
    let chunks = plaintext_len.div_ceil(chunk).max(1);
    plaintext_len + chunks * TAG_LEN as u64
}

/// The plaintext length behind a ciphertext of `ciphertext_len` bytes, or `None` when no
/// plaintext encrypts to that length (or it needs more chunks than the counter allows).
pub fn plaintext_len(ciphertext_len: u64) -> Option<u64> {
    let sealed = CHUNK_SEALED as u64;
    let tag = TAG_LEN as u64;
    if ciphertext_len == tag {
        return Some(0);
    }
    // Full chunks before the last, then the last chunk: 1..=CHUNK_PLAINTEXT bytes + its tag.
    let full = ciphertext_len.checked_sub(1)? / sealed;
    let last = ciphertext_len - full * sealed;
    // The last chunk's index (`full`) must fit the 32-bit counter, as in `encrypt_file`.
    if last <= tag || full > u64::from(u32::MAX) {
        return None;
    }
    Some(ciphertext_len - (full + 1) * tag)
}

/// Encrypts everything `plaintext` yields into `ciphertext` under a fresh key, one chunk at a
/// time, and returns the key with the blob's hash and lengths.
///
/// The key is made here, not passed in, so that one key can never seal two different
/// plaintexts (the nonces repeat per key: two files under one key would leak both). To resume
/// an upload after a restart, keep the ciphertext this wrote rather than encrypting again.
///
/// Reads until `plaintext` reports end of file. `ciphertext` receives whole sealed chunks;
/// on an error it holds a prefix that must be discarded.
pub fn encrypt_file(
    plaintext: &mut impl Read,
    ciphertext: &mut impl Write,
) -> Result<(MediaKey, Sealed), MediaError> {
    let key = MediaKey::generate();
    let sealed = encrypt_with_key(&key, plaintext, ciphertext)?;
    Ok((key, sealed))
}

/// [`encrypt_file`] under a given key; private so that only tests can repeat a key.
fn encrypt_with_key(
    key: &MediaKey,
    plaintext: &mut impl Read,
    ciphertext: &mut impl Write,
) -> Result<Sealed, MediaError> {
    let stream = key.stream();
    let mut hasher = blake3::Hasher::new();
    let mut plaintext_len = 0u64;
    let mut ciphertext_len = 0u64;
    // Whether a chunk is the last is known only once the next read finds end of file, so one
    // chunk is read ahead. Both buffers have room for the tag: chunks are sealed in place.
    let mut current = Vec::with_capacity(CHUNK_SEALED);
    let mut next = Vec::with_capacity(CHUNK_SEALED);
    fill(plaintext, &mut current, CHUNK_PLAINTEXT)?;
    let mut index = 0u64;
    loop {
        let is_final = if current.len() < CHUNK_PLAINTEXT {
            true
        } else {
            fill(plaintext, &mut next, CHUNK_PLAINTEXT)?;
            next.is_empty()
        };
        plaintext_len += current.len() as u64;
        let position = u32::try_from(index).map_err(|_| MediaError::TooLarge)?;
        if !is_final && position == u32::MAX {
            // The last counter value must stay free for the final chunk.
            return Err(MediaError::TooLarge);
        }
        stream
            .encrypt_in_place(position, is_final, b"", &mut current)
            // ChaCha20-Poly1305 fails only past 256 GiB in one chunk; a Vec grows as needed.
            .map_err(|_| MediaError::TooLarge)?;
        hasher.update(&current);
        ciphertext.write_all(&current)?;
        ciphertext_len += current.len() as u64;
        if is_final {
            break;
        }
        std::mem::swap(&mut current, &mut next);
        index += 1;
    }
    ciphertext.flush()?;
    debug_assert_eq!(ciphertext_len, self::ciphertext_len(plaintext_len));
    Ok(Sealed {
        hash: *hasher.finalize().as_bytes(),
        ciphertext_len,
        plaintext_len,
    })
}

/// Decrypts a blob read from `ciphertext` into `plaintext` and returns the plaintext length.
///
/// Every chunk is authenticated before its plaintext is written, the final chunk must sit
/// exactly at `expected_ciphertext_len` with nothing after it, and the BLAKE3 hash of the
/// ciphertext must equal `expected_hash`. The hash is known only at the end, so on an error
/// `plaintext` may already hold a verified-chunk prefix of a blob that is not the one named:
/// write into a temporary place and keep it only on `Ok`, as [`decrypt_to_path`] does.
pub fn decrypt_file(
    key: &MediaKey,
    expected_hash: &[u8; 32],
    expected_ciphertext_len: u64,
    ciphertext: &mut impl Read,
    plaintext: &mut impl Write,
) -> Result<u64, MediaError> {
    if plaintext_len(expected_ciphertext_len).is_none() {
        return Err(MediaError::WrongLength);
    }
    let stream = key.stream();
    let mut hasher = blake3::Hasher::new();
    let mut buf = Vec::with_capacity(CHUNK_SEALED);
    let mut remaining = expected_ciphertext_len;
    let mut written = 0u64;
    let mut index = 0u64;
    loop {
        // The expected length fixes where the final chunk is; the stream must agree.
        let want = remaining.min(CHUNK_SEALED as u64) as usize;
        let is_final = remaining <= CHUNK_SEALED as u64;
        fill(ciphertext, &mut buf, want)?;
        if buf.len() < want {
            return Err(MediaError::Truncated);
        }
        hasher.update(&buf);
        // `plaintext_len` accepted the length, so the index fits the 32-bit counter.
        let position = u32::try_from(index).map_err(|_| MediaError::WrongLength)?;
        stream
            .decrypt_in_place(position, is_final, b"", &mut buf)
            .map_err(|_| MediaError::Tampered { chunk: index })?;
        plaintext.write_all(&buf)?;
        written += buf.len() as u64;
        remaining -= want as u64;
        if is_final {
            break;
        }
        index += 1;
    }
    let mut probe = [0u8; 1];
    if read_retrying(ciphertext, &mut probe)? != 0 {
        return Err(MediaError::TrailingData);
    }
    if hasher.finalize() != blake3::Hash::from_bytes(*expected_hash) {
        return Err(MediaError::WrongHash);
    }
    plaintext.flush()?;
    Ok(written)
}

/// Decrypts the blob in the file `ciphertext_path` to `out_path`, which appears (or is
/// replaced) only once every check of [`decrypt_file`] passed: the plaintext goes to a
/// temporary file in `out_path`'s directory, is synced, and is renamed over `out_path` on
/// success; on any error the temporary file is removed and `out_path` is left as it was.
pub fn decrypt_to_path(
    key: &MediaKey,
    expected_hash: &[u8; 32],
    expected_ciphertext_len: u64,
    ciphertext_path: &Path,
    out_path: &Path,
) -> Result<u64, MediaError> {
    let dir = match out_path.parent() {
        Some(dir) if !dir.as_os_str().is_empty() => dir,
        _ => Path::new("."),
    };
    let mut input = File::open(ciphertext_path)?;
    // Dropped (and so deleted) on every early return below.
    let mut temp = tempfile::NamedTempFile::new_in(dir)?;
    let written = decrypt_file(
        key,
        expected_hash,
        expected_ciphertext_len,
        &mut input,
        temp.as_file_mut(),
    )?;
    // Synced before the rename, so a crash cannot leave `out_path` naming a partial file.
    temp.as_file().sync_all()?;
    temp.persist(out_path)
        .map_err(|e| MediaError::Io(e.error))?;
    Ok(written)
}

/// Decrypts one sealed chunk on its own, for ranged playback of a blob fetched with HTTP
/// `Range`: chunk `index` is bytes `index * CHUNK_SEALED ..` of the blob, and `is_final` must
/// be true exactly for the last chunk (`index * CHUNK_SEALED + sealed.len()` equals the blob's
/// length). This checks the chunk, not the blob's hash.
pub fn decrypt_chunk(
    key: &MediaKey,
    index: u64,
    is_final: bool,
    sealed: &[u8],
) -> Result<Vec<u8>, MediaError> {
    let position = u32::try_from(index).map_err(|_| MediaError::Tampered { chunk: index })?;
    if sealed.len() > CHUNK_SEALED || (!is_final && sealed.len() != CHUNK_SEALED) {
        return Err(MediaError::Tampered { chunk: index });
    }
    let mut buf = sealed.to_vec();
    key.stream()
        .decrypt_in_place(position, is_final, b"", &mut buf)
        .map_err(|_| MediaError::Tampered { chunk: index })?;
    Ok(buf)
}

/// Reads into `buf` (cleared first) until it holds `len` bytes or the reader ends.
fn fill(reader: &mut impl Read, buf: &mut Vec<u8>, len: usize) -> io::Result<()> {
    buf.clear();
    buf.resize(len, 0);
    let mut filled = 0;
    while filled < len {
        let n = read_retrying(reader, &mut buf[filled..])?;
        if n == 0 {
            break;
        }
        filled += n;
    }
    buf.truncate(filled);
    Ok(())
}

fn read_retrying(reader: &mut impl Read, buf: &mut [u8]) -> io::Result<usize> {
    loop {
        match reader.read(buf) {
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            other => return other,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use chacha20poly1305::aead::Aead;
    use rand::Rng;
    use std::cell::Cell;
    use std::io::Cursor;
    use std::rc::Rc;

    fn random_bytes(len: usize) -> Vec<u8> {
        let mut bytes = vec![0u8; len];
        rand::thread_rng().fill(&mut bytes[..]);
        bytes
    }

    fn encrypt(plaintext: &[u8]) -> (MediaKey, Sealed, Vec<u8>) {
        let mut ciphertext = Vec::new();
        let (key, sealed) = encrypt_file(&mut Cursor::new(plaintext), &mut ciphertext).unwrap();
        (key, sealed, ciphertext)
    }

    fn decrypt(key: &MediaKey, sealed: &Sealed, ciphertext: &[u8]) -> Result<Vec<u8>, MediaError> {
        let mut plaintext = Vec::new();
        let n = decrypt_file(
            key,
            &sealed.hash,
            sealed.ciphertext_len,
            &mut Cursor::new(ciphertext),
            &mut plaintext,
        )?;
        assert_eq!(n, plaintext.len() as u64);
        Ok(plaintext)
    }

    /// A blob whose chunks still open (they were made with the key) but whose hash is the
    /// one of the changed bytes, so only the chunk checks can catch the change.
    fn renamed(sealed: &Sealed, ciphertext: &[u8]) -> Sealed {
        Sealed {
            hash: *blake3::hash(ciphertext).as_bytes(),
            ..*sealed
        }
    }

    #[test]
    fn files_of_every_boundary_size_round_trip() {
        for len in [
            0,
            1,
            CHUNK_PLAINTEXT - 1,
            CHUNK_PLAINTEXT,
            CHUNK_PLAINTEXT + 1,
            3 * CHUNK_PLAINTEXT,
            5_000_000,
        ] {
            let plaintext = random_bytes(len);
            let (key, sealed, ciphertext) = encrypt(&plaintext);
            assert_eq!(sealed.plaintext_len, len as u64);
            assert_eq!(sealed.ciphertext_len, ciphertext.len() as u64, "len {len}");
            assert_eq!(sealed.ciphertext_len, ciphertext_len(len as u64));
            assert_eq!(plaintext_len(sealed.ciphertext_len), Some(len as u64));
            assert_eq!(&sealed.hash, blake3::hash(&ciphertext).as_bytes());
            assert_eq!(
                decrypt(&key, &sealed, &ciphertext).unwrap(),
                plaintext,
                "len {len}"
            );
        }
    }

    #[test]
    fn lengths_follow_the_chunk_layout() {
        let c = CHUNK_PLAINTEXT as u64;
        let s = CHUNK_SEALED as u64;
        assert_eq!(
            ciphertext_len(0),
            16,
            "an empty file is one sealed empty chunk"
        );
        assert_eq!(ciphertext_len(1), 17);
        assert_eq!(ciphertext_len(c), s);
        assert_eq!(ciphertext_len(c + 1), s + 17);
        assert_eq!(ciphertext_len(2 << 30), (2 << 30) + 32768 * 16, "2 GiB");
        // No plaintext makes a last chunk without a whole tag plus at least one byte.
        for impossible in [0, 1, 15, s + 1, s + 16, 2 * s + 16] {
            assert_eq!(plaintext_len(impossible), None, "{impossible}");
        }
        for len in [0, 1, c - 1, c, c + 1, 2 * c, 2 * c + 1, 7 * c + 12_345] {
            assert_eq!(plaintext_len(ciphertext_len(len)), Some(len), "{len}");
        }
        // The 32-bit counter: 2^32 chunks (the last at index u32::MAX) and not one more.
        let most = (1u64 << 32) * c;
        assert_eq!(plaintext_len(ciphertext_len(most)), Some(most));
        assert_eq!(plaintext_len(ciphertext_len(most + 1)), None);
    }

    /// Pins the format: a change of nonce layout, flag or AAD breaks every blob in flight.
    #[test]
    fn chunks_are_chacha20poly1305_under_index_and_final_flag_nonces() {
        let key = MediaKey::from_bytes([7; 32]);
        let plaintext = random_bytes(CHUNK_PLAINTEXT + 5);
        let mut ciphertext = Vec::new();
        encrypt_with_key(&key, &mut Cursor::new(&plaintext), &mut ciphertext).unwrap();
        let aead = ChaCha20Poly1305::new(&[7; 32].into());
        let nonce = |index: u32, last: bool| {
            let mut n = [0u8; 12];
            n[7..11].copy_from_slice(&index.to_be_bytes());
            n[11] = u8::from(last);
            n
        };
        let first = aead
            .encrypt(&nonce(0, false).into(), &plaintext[..CHUNK_PLAINTEXT])
            .unwrap();
        let last = aead
            .encrypt(&nonce(1, true).into(), &plaintext[CHUNK_PLAINTEXT..])
            .unwrap();
        assert_eq!(ciphertext, [first, last].concat());
    }

    #[test]
    fn every_file_gets_a_fresh_key() {
        let plaintext = random_bytes(1000);
        let (key_a, sealed_a, _) = encrypt(&plaintext);
        let (key_b, sealed_b, _) = encrypt(&plaintext);
        assert_ne!(key_a.as_bytes(), key_b.as_bytes());
        assert_ne!(sealed_a.hash, sealed_b.hash);
    }

    #[test]
    fn the_key_never_shows_in_debug_output() {
        let key = MediaKey::from_bytes([0xAB; 32]);
        let shown = format!("{key:?} {:#?}", Some(&key));
        assert!(
            !shown.contains("171") && !shown.to_lowercase().contains("ab"),
            "{shown}"
        );
    }

    #[test]
    fn a_flipped_byte_names_its_chunk() {
        let plaintext = random_bytes(3 * CHUNK_PLAINTEXT + 100);
        let (key, sealed, mut ciphertext) = encrypt(&plaintext);
        ciphertext[CHUNK_SEALED + 1234] ^= 0x01;
        let err = decrypt(&key, &renamed(&sealed, &ciphertext), &ciphertext).unwrap_err();
        assert!(matches!(err, MediaError::Tampered { chunk: 1 }), "{err:?}");
        // The tag itself is covered too.
        let (key, sealed, mut ciphertext) = encrypt(&plaintext);
        let last = ciphertext.len() - 1;
        ciphertext[last] ^= 0x80;
        let err = decrypt(&key, &renamed(&sealed, &ciphertext), &ciphertext).unwrap_err();
        assert!(matches!(err, MediaError::Tampered { chunk: 3 }), "{err:?}");
    }

    #[test]
    fn swapped_chunks_do_not_open() {
        let plaintext = random_bytes(4 * CHUNK_PLAINTEXT);
        let (key, sealed, mut ciphertext) = encrypt(&plaintext);
        let (a, b) = ciphertext.split_at_mut(CHUNK_SEALED);
        a.swap_with_slice(&mut b[..CHUNK_SEALED]);
        let err = decrypt(&key, &renamed(&sealed, &ciphertext), &ciphertext).unwrap_err();
        assert!(matches!(err, MediaError::Tampered { chunk: 0 }), "{err:?}");
    }

    #[test]
    fn a_dropped_last_chunk_is_truncation() {
        let plaintext = random_bytes(2 * CHUNK_PLAINTEXT + 10);
        let (key, sealed, ciphertext) = encrypt(&plaintext);
        let cut = &ciphertext[..2 * CHUNK_SEALED];
        let err = decrypt(&key, &sealed, cut).unwrap_err();
        assert!(matches!(err, MediaError::Truncated), "{err:?}");
        // Cut inside a chunk, too.
        let err = decrypt(&key, &sealed, &ciphertext[..CHUNK_SEALED + 7]).unwrap_err();
        assert!(matches!(err, MediaError::Truncated), "{err:?}");
    }

    /// Even when the length and hash claimed for the blob are those of the cut ciphertext
    /// (a lying sender or a rewritten message), the last full chunk was not sealed as final.
    #[test]
    fn a_cut_after_a_full_chunk_fails_on_the_final_flag() {
        let plaintext = random_bytes(2 * CHUNK_PLAINTEXT + 10);
        let (key, sealed, ciphertext) = encrypt(&plaintext);
        let cut = &ciphertext[..2 * CHUNK_SEALED];
        let claimed = Sealed {
            ciphertext_len: cut.len() as u64,
            ..renamed(&sealed, cut)
        };
        let err = decrypt(&key, &claimed, cut).unwrap_err();
        assert!(matches!(err, MediaError::Tampered { chunk: 1 }), "{err:?}");
    }

    #[test]
    fn bytes_after_the_final_chunk_are_refused() {
        let plaintext = random_bytes(CHUNK_PLAINTEXT + 10);
        let (key, sealed, mut ciphertext) = encrypt(&plaintext);
        ciphertext.extend_from_slice(b"x");
        let err = decrypt(&key, &sealed, &ciphertext).unwrap_err();
        assert!(matches!(err, MediaError::TrailingData), "{err:?}");
    }

    #[test]
    fn another_blobs_hash_is_refused() {
        let (key, sealed, ciphertext) = encrypt(&random_bytes(1000));
        let wrong = Sealed {
            hash: [0; 32],
            ..sealed
        };
        let err = decrypt(&key, &wrong, &ciphertext).unwrap_err();
        assert!(matches!(err, MediaError::WrongHash), "{err:?}");
        // And another key opens nothing.
        let err = decrypt(&MediaKey::generate(), &sealed, &ciphertext).unwrap_err();
        assert!(matches!(err, MediaError::Tampered { chunk: 0 }), "{err:?}");
    }

    #[test]
    fn an_impossible_length_is_refused_before_reading() {
        let (key, sealed, ciphertext) = encrypt(&random_bytes(1000));
        let wrong = Sealed {
            ciphertext_len: 15,
            ..sealed
        };
        let err = decrypt(&key, &wrong, &ciphertext).unwrap_err();
        assert!(matches!(err, MediaError::WrongLength), "{err:?}");
    }

    #[test]
    fn one_chunk_opens_alone_for_ranged_playback() {
        let plaintext = random_bytes(2 * CHUNK_PLAINTEXT + 10);
        let (key, _, ciphertext) = encrypt(&plaintext);
        let middle = &ciphertext[CHUNK_SEALED..2 * CHUNK_SEALED];
        assert_eq!(
            decrypt_chunk(&key, 1, false, middle).unwrap(),
            &plaintext[CHUNK_PLAINTEXT..2 * CHUNK_PLAINTEXT]
        );
        let last = &ciphertext[2 * CHUNK_SEALED..];
        assert_eq!(
            decrypt_chunk(&key, 2, true, last).unwrap(),
            &plaintext[2 * CHUNK_PLAINTEXT..]
        );
        for (index, is_final, sealed) in [(0, false, middle), (1, true, middle), (1, true, last)] {
            let err = decrypt_chunk(&key, index, is_final, sealed).unwrap_err();
            assert!(matches!(err, MediaError::Tampered { chunk } if chunk == index));
        }
    }

    /// 64 MiB through a counting reader into a counting sink: proves ciphertext leaves before
    /// the input is read further than one chunk ahead, i.e. the file is never held whole.
    #[test]
    fn encryption_streams_with_two_chunks_in_memory() {
        struct CountingReader<R>(R, Rc<Cell<u64>>);
        impl<R: Read> Read for CountingReader<R> {
            fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
                let n = self.0.read(buf)?;
                self.1.set(self.1.get() + n as u64);
                Ok(n)
            }
        }
        struct CheckingWriter {
            read: Rc<Cell<u64>>,
            written: u64,
            most_ahead: u64,
        }
        impl Write for CheckingWriter {
            fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
                self.written += buf.len() as u64;
                // Plaintext read but not yet written out as ciphertext.
                let plaintext_out = self.written - self.written.div_ceil(CHUNK_SEALED as u64) * 16;
                self.most_ahead = self.most_ahead.max(self.read.get() - plaintext_out);
                Ok(buf.len())
            }
            fn flush(&mut self) -> io::Result<()> {
                Ok(())
            }
        }

        const LEN: u64 = 64 << 20;
        let read = Rc::new(Cell::new(0));
        let mut input = CountingReader(io::repeat(0x5A).take(LEN), read.clone());
        let mut output = CheckingWriter {
            read,
            written: 0,
            most_ahead: 0,
        };
        let (_, sealed) = encrypt_file(&mut input, &mut output).unwrap();
        assert_eq!(sealed.plaintext_len, LEN);
        assert_eq!(output.written, ciphertext_len(LEN));
        assert!(
            output.most_ahead <= CHUNK_PLAINTEXT as u64,
            "read {} bytes ahead of the output",
            output.most_ahead
        );
    }

    fn entries(dir: &Path) -> Vec<std::path::PathBuf> {
        let mut names: Vec<_> = std::fs::read_dir(dir)
            .unwrap()
            .map(|e| e.unwrap().path())
            .collect();
        names.sort();
        names
    }

    #[test]
    fn decrypt_to_path_leaves_nothing_unverified_behind() {
        let plaintext = random_bytes(3 * CHUNK_PLAINTEXT + 99);
        let (key, sealed, ciphertext) = encrypt(&plaintext);
        let blobs = tempfile::tempdir().unwrap();
        let out_dir = tempfile::tempdir().unwrap();
        let out = out_dir.path().join("photo.jpg");

        let mut flipped = ciphertext.clone();
        flipped[2 * CHUNK_SEALED + 5] ^= 1;
        let mut appended = ciphertext.clone();
        appended.push(0);
        let wrong_hash = Sealed {
            hash: [1; 32],
            ..sealed
        };
        // (name, blob on disk, what the message claims, the error expected)
        type Case<'a> = (&'a str, &'a [u8], Sealed, fn(&MediaError) -> bool);
        let cases: [Case<'_>; 4] = [
            ("flipped", &flipped, renamed(&sealed, &flipped), |e| {
                matches!(e, MediaError::Tampered { chunk: 2 })
            }),
            ("truncated", &ciphertext[..3 * CHUNK_SEALED], sealed, |e| {
                matches!(e, MediaError::Truncated)
            }),
            ("appended", &appended, sealed, |e| {
                matches!(e, MediaError::TrailingData)
            }),
            ("wrong-hash", &ciphertext, wrong_hash, |e| {
                matches!(e, MediaError::WrongHash)
            }),
        ];
        for (name, blob, claimed, expected) in cases {
            let path = blobs.path().join(name);
            std::fs::write(&path, blob).unwrap();
            let err = decrypt_to_path(&key, &claimed.hash, claimed.ciphertext_len, &path, &out)
                .unwrap_err();
            assert!(expected(&err), "{name}: {err:?}");
            assert_eq!(
                entries(out_dir.path()),
                Vec::<std::path::PathBuf>::new(),
                "{name}"
            );
        }

        // A file already at `out_path` is not touched by a failure...
        std::fs::write(&out, b"earlier").unwrap();
        let path = blobs.path().join("flipped");
        decrypt_to_path(&key, &sealed.hash, sealed.ciphertext_len, &path, &out).unwrap_err();
        assert_eq!(std::fs::read(&out).unwrap(), b"earlier");
        assert_eq!(entries(out_dir.path()), vec![out.clone()]);

        // ...and replaced by a verified one.
        let path = blobs.path().join("good");
        std::fs::write(&path, &ciphertext).unwrap();
        let n = decrypt_to_path(&key, &sealed.hash, sealed.ciphertext_len, &path, &out).unwrap();
        assert_eq!(n, plaintext.len() as u64);
        assert_eq!(std::fs::read(&out).unwrap(), plaintext);
        assert_eq!(entries(out_dir.path()), vec![out]);
    }
}
