//! Client-side media: what happens to a photo, video, voice note or document before it
//! leaves the device and after it arrives.
//!
//! - [`cipher`]: the file is encrypted in 64 KiB chunks under a fresh key (ChaCha20-Poly1305
//!   in the STREAM construction: chunk index and final flag in the nonce) and named by the
//!   BLAKE3 hash of its ciphertext. Encryption and decryption stream with two chunks of
//!   memory, so a 2 GiB file costs what a 64 KiB one does.
//! - [`kind`]: the media type from the file's first bytes (not its name), for the message.
//! - [`preview`](mod@preview): a small JPEG thumbnail of a JPEG/PNG photo with every metadata block
//!   (EXIF, GPS, XMP, ICC) left behind, sent encrypted inside the message (cargo feature
//!   `previews`, on by default).
//!
//! The key, hash, ciphertext length, type and preview travel inside the end-to-end encrypted
//! message; the edge only ever sees the ciphertext and its hash. Nothing here logs keys or
//! content.

pub mod cipher;
pub mod file;
pub mod kind;
pub mod preview;

pub use cipher::{
    ciphertext_len, decrypt_chunk, decrypt_file, decrypt_to_path, encrypt_file, plaintext_len,
    MediaError, MediaKey, Sealed, CHUNK_PLAINTEXT, CHUNK_SEALED, TAG_LEN,
};
pub use file::{open_file, prepare_file};
pub use kind::{detect_mime, SNIFF_LEN};
pub use preview::{preview, Preview, PREVIEW_MAX_BYTES, PREVIEW_MAX_SIDE};
