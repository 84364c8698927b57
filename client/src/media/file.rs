//! A file made ready to send: encrypted to a ciphertext file, described by the message that
//! will carry its key (type, size, preview), and opened again on arrival.

use super::{decrypt_to_path, detect_mime, encrypt_file, MediaError, MediaKey, SNIFF_LEN};
use crate::content::MediaMessage;
use crate::ClientError;
use std::io::Read;
use std::path::Path;

/// Largest image a preview is made of (the decoder reads all of it into memory).
const PREVIEW_SOURCE_MAX: u64 = 32 << 20;

/// Encrypts `source` into `ciphertext` (bounded memory) and describes it for a message:
/// the key, the blob's hash and sizes, the file's name and type, `caption`, and a preview
/// when it is a JPEG or PNG photo.
pub fn prepare_file(
    source: &Path,
    ciphertext: &Path,
    caption: &str,
) -> Result<MediaMessage, ClientError> {
    let io = |e: std::io::Error| ClientError::InvalidInput(format!("{}: {e}", source.display()));
    let mut file = std::fs::File::open(source).map_err(io)?;
    let mut head = vec![0u8; SNIFF_LEN];
    let n = read_up_to(&mut file, &mut head).map_err(io)?;
    let mime = detect_mime(&head[..n]).to_owned();
    let len = file.metadata().map_err(io)?.len();
    let preview =
        if matches!(mime.as_str(), "image/jpeg" | "image/png") && len <= PREVIEW_SOURCE_MAX {
            std::fs::read(source)
                .ok()
                .and_then(|bytes| super::preview(&bytes))
                .map(|p| p.jpeg)
                .unwrap_or_default()
        } else {
            Vec::new()
        };
    let mut plain = std::io::BufReader::new(std::fs::File::open(source).map_err(io)?);
    let mut out = std::io::BufWriter::new(std::fs::File::create(ciphertext)?);
    let (key, sealed) = encrypt_file(&mut plain, &mut out).map_err(media_error)?;
    let file = out
        .into_inner()
        .map_err(|e| ClientError::from(e.into_error()))?;
    file.sync_all()?;
    let name = source
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_else(|| "file".into());
    Ok(MediaMessage {
        blob: sealed.hash,
        key: *key.as_bytes(),
        size: sealed.ciphertext_len,
        plaintext_size: sealed.plaintext_len,
        name,
        mime,
        caption: caption.to_owned(),
        preview,
    })
}

/// Verifies and decrypts a downloaded `ciphertext` of `media` into `out`: `out` appears
/// only when every chunk, the length and the hash check out.
pub fn open_file(media: &MediaMessage, ciphertext: &Path, out: &Path) -> Result<u64, ClientError> {
    let key = MediaKey::from_bytes(media.key);
    decrypt_to_path(&key, &media.blob, media.size, ciphertext, out).map_err(media_error)
}

/// The SDK's error for a media failure.
pub fn media_error(e: MediaError) -> ClientError {
    match e {
        MediaError::Io(e) => ClientError::from(e),
        e => ClientError::MediaInvalid(e.to_string()),
    }
}

fn read_up_to(file: &mut std::fs::File, buf: &mut [u8]) -> std::io::Result<usize> {
    let mut n = 0;
    while n < buf.len() {
        match file.read(&mut buf[n..])? {
            0 => break,
            k => n += k,
        }
    }
    Ok(n)
}
