//! The QUIC stateless-reset key, kept in the data directory so that it survives restarts.
//!
//! Every connection ID the edge hands out carries a reset token derived from this key. After a
//! crash or restart the new process does not know the old connections; when a client's packet
//! arrives for one of them, the edge answers with a stateless reset whose token the client
//! recognises, and the client reconnects at once. With a fresh key per process (quinn's
//! default) the client cannot recognise the reset and only notices the dead connection when its
//! own timeouts expire (45 s here).
//!
//! The same file keys the connection-ID generator: quinn drops packets whose connection ID
//! its generator does not recognise before it would answer them with a reset, so the
//! generator's key must survive restarts too.

use rand::RngCore;
use std::io::{Read, Write};
use std::path::{Path, PathBuf};

/// Bytes of key material (HMAC-SHA256 key).
const KEY_LEN: usize = 32;
/// File name inside the data directory.
pub const FILE_NAME: &str = "quic-reset.key";

/// Why the reset key could not be read or made.
#[derive(Debug, thiserror::Error)]
pub enum ResetKeyError {
    /// Reading or writing the key file failed.
    #[error("QUIC reset key {path}: {source}")]
    Io {
        /// The file.
        path: PathBuf,
        /// Why.
        source: std::io::Error,
    },
    /// The file exists but does not hold a key.
    #[error("QUIC reset key {path}: expected {KEY_LEN} bytes, found {found} (delete the file to make a new key)")]
    Malformed {
        /// The file.
        path: PathBuf,
        /// Bytes found.
        found: usize,
    },
}

/// The keys a restarted edge needs to reset its predecessor's connections.
pub struct RestartKeys {
    /// quinn's stateless-reset key (HMAC-SHA256).
    pub reset: ring::hmac::Key,
    /// Key of the connection-ID generator (quinn's `HashedConnectionIdGenerator`).
    pub cid: u64,
    /// Key of the media download URL signatures (keyed BLAKE3): URLs an edge signed stay
    /// valid across its restarts.
    pub media_url: [u8; 32],
}

impl std::fmt::Debug for RestartKeys {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Never print key material.
        f.write_str("RestartKeys")
    }
}

/// Reads the key from `<data_dir>/quic-reset.key`, creating it (random, mode 0600, fsync'd)
/// on first start.
pub fn load_or_create(data_dir: &Path) -> Result<RestartKeys, ResetKeyError> {
    let path = data_dir.join(FILE_NAME);
    let io = |source| ResetKeyError::Io {
        path: path.clone(),
        source,
    };
    let bytes = match std::fs::File::open(&path) {
        Ok(mut f) => {
            let mut buf = Vec::with_capacity(KEY_LEN);
            // One byte more than a key: a longer file is malformed, not truncated silently.
            Read::by_ref(&mut f)
                .take(KEY_LEN as u64 + 1)
                .read_to_end(&mut buf)
                .map_err(io)?;
            if buf.len() != KEY_LEN {
                return Err(ResetKeyError::Malformed {
                    path,
                    found: buf.len(),
                });
            }
            buf
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            let mut key = vec![0u8; KEY_LEN];
            rand::thread_rng().fill_bytes(&mut key);
            std::fs::create_dir_all(data_dir).map_err(io)?;
            write_new(&path, &key).map_err(io)?;
            key
        }
        Err(e) => return Err(io(e)),
    };
    let reset = ring::hmac::Key::new(ring::hmac::HMAC_SHA256, &bytes);
    // A separate key for the generator, derived so that neither reveals the other.
    let derived = ring::hmac::sign(&reset, b"missive quic connection-id generator key");
    let mut cid = [0u8; 8];
    cid.copy_from_slice(&derived.as_ref()[..8]);
    let mut media_url = [0u8; 32];
    media_url.copy_from_slice(
        &ring::hmac::sign(&reset, b"missive media url signing key").as_ref()[..32],
    );
    Ok(RestartKeys {
        reset,
        cid: u64::from_le_bytes(cid),
        media_url,
    })
}

/// Writes `bytes` to a temporary file (0600), fsyncs it, and renames it into place, so a crash
/// leaves either no key file or a whole one.
pub(crate) fn write_new(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    use std::os::unix::fs::OpenOptionsExt;
    let tmp = path.with_extension("key.partial");
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(&tmp)?;
    f.write_all(bytes)?;
    f.sync_all()?;
    std::fs::rename(&tmp, path)?;
    if let Some(dir) = path.parent() {
        std::fs::File::open(dir)?.sync_all()?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    fn tag(keys: &RestartKeys) -> (Vec<u8>, u64) {
        let tag = ring::hmac::sign(&keys.reset, b"connection id");
        (tag.as_ref().to_vec(), keys.cid)
    }

    #[test]
    fn the_key_is_made_once_and_read_back_the_same() {
        let dir = tempfile::tempdir().unwrap();
        let first = load_or_create(dir.path()).unwrap();
        let path = dir.path().join(FILE_NAME);
        let mode = std::fs::metadata(&path).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o600);
        let again = load_or_create(dir.path()).unwrap();
        assert_eq!(tag(&first), tag(&again));
        let other = tempfile::tempdir().unwrap();
        assert_ne!(tag(&first), tag(&load_or_create(other.path()).unwrap()));
    }

    #[test]
    fn a_damaged_key_file_is_an_error_naming_it() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join(FILE_NAME), b"short").unwrap();
        let e = load_or_create(dir.path()).unwrap_err().to_string();
        assert!(e.contains(FILE_NAME) && e.contains("found 5"), "{e}");
    }
}
