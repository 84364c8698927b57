//! The TURN REST secret (coturn's `static-auth-secret`): the key both the relay (to check a
//! client's password) and the edge (to mint credentials) use.
//!
//! Read from `relay.secret_file` when set, so that an operator can share it with other TURN
//! servers or rotate it (then SIGHUP); otherwise made once, at random, in
//! `<data_dir>/turn-secret` (mode 0600) and kept, so credentials handed out survive a
//! restart.

use missive_relay::Secret;
use rand::RngCore;
use std::io::Read;
use std::path::{Path, PathBuf};

/// File name of the generated secret inside the data directory.
pub const FILE_NAME: &str = "turn-secret";
/// Random bytes in a generated secret (stored as hex: coturn's secrets are text).
const GENERATED_BYTES: usize = 32;
/// Longest secret file read. A secret is a line of text; anything this long is a wrong path.
const MAX_FILE_BYTES: u64 = 4096;

/// Why the secret could not be read or made.
#[derive(Debug, thiserror::Error)]
pub enum TurnSecretError {
    /// Reading or writing the file failed.
    #[error("TURN secret {path}: {source}")]
    Io {
        /// The file.
        path: PathBuf,
        /// Why.
        source: std::io::Error,
    },
    /// The file does not hold a usable secret.
    #[error("TURN secret {path}: {why}")]
    Malformed {
        /// The file.
        path: PathBuf,
        /// What is wrong with it.
        why: &'static str,
    },
}

/// The secret from `secret_file`, or from (and, on first start, made in)
/// `<data_dir>/turn-secret`.
pub fn load(secret_file: Option<&Path>, data_dir: &Path) -> Result<Secret, TurnSecretError> {
    match secret_file {
        Some(path) => read(path),
        None => load_or_create(&data_dir.join(FILE_NAME), data_dir),
    }
}

fn load_or_create(path: &Path, data_dir: &Path) -> Result<Secret, TurnSecretError> {
    match read(path) {
        Err(TurnSecretError::Io { source, .. })
            if source.kind() == std::io::ErrorKind::NotFound =>
        {
            let io = |source| TurnSecretError::Io {
                path: path.to_owned(),
                source,
            };
            let mut bytes = [0u8; GENERATED_BYTES];
            rand::thread_rng().fill_bytes(&mut bytes);
            let text: String = bytes.iter().map(|b| format!("{b:02x}")).collect();
            std::fs::create_dir_all(data_dir).map_err(io)?;
            // Temporary file, fsync, rename: a crash leaves no secret or a whole one.
            crate::reset_key::write_new(path, text.as_bytes()).map_err(io)?;
            tracing::info!(path = %path.display(), "generated a TURN secret");
            Ok(Secret::new(text))
        }
        other => other,
    }
}

/// Reads a secret file: one line of UTF-8 text, surrounding whitespace ignored.
fn read(path: &Path) -> Result<Secret, TurnSecretError> {
    let io = |source| TurnSecretError::Io {
        path: path.to_owned(),
        source,
    };
    let malformed = |why| TurnSecretError::Malformed {
        path: path.to_owned(),
        why,
    };
    let file = std::fs::File::open(path).map_err(io)?;
    warn_if_readable_by_others(path, &file);
    let mut buf = Vec::new();
    // One byte past the limit tells a too-long file from one exactly at it.
    file.take(MAX_FILE_BYTES + 1)
        .read_to_end(&mut buf)
        .map_err(io)?;
    if buf.len() as u64 > MAX_FILE_BYTES {
        return Err(malformed("longer than 4096 bytes: not a secret file"));
    }
    let text = String::from_utf8(buf).map_err(|_| malformed("not UTF-8 text"))?;
    let secret = text.trim();
    if secret.is_empty() {
        return Err(malformed("empty"));
    }
    if secret.contains(['\n', '\r']) {
        return Err(malformed("more than one line"));
    }
    Ok(Secret::new(secret))
}

/// Whoever reads the secret can mint credentials for anyone: say so when the file is open
/// to the group or everyone (the edge still starts: the operator may have a reason).
fn warn_if_readable_by_others(path: &Path, file: &std::fs::File) {
    use std::os::unix::fs::PermissionsExt;
    if let Ok(meta) = file.metadata() {
        if meta.permissions().mode() & 0o077 != 0 {
            tracing::warn!(
                path = %path.display(),
                "TURN secret file is readable by group or others; chmod 600 it"
            );
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    #[test]
    fn a_generated_secret_is_private_and_kept() {
        let dir = tempfile::tempdir().unwrap();
        let first = load(None, dir.path()).unwrap();
        let path = dir.path().join(FILE_NAME);
        let mode = std::fs::metadata(&path).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o600);
        assert_eq!(first.as_bytes().len(), 2 * GENERATED_BYTES);
        assert_eq!(load(None, dir.path()).unwrap(), first);
        let other = tempfile::tempdir().unwrap();
        assert_ne!(load(None, other.path()).unwrap(), first);
    }

    #[test]
    fn a_secret_file_is_read_trimmed_and_checked() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("s");
        std::fs::write(&path, "  s3cret\n").unwrap();
        assert_eq!(
            load(Some(&path), dir.path()).unwrap(),
            Secret::new("s3cret")
        );
        // A configured file is never made up: missing is an error naming it.
        let missing = dir.path().join("missing");
        let e = load(Some(&missing), dir.path()).unwrap_err().to_string();
        assert!(e.contains("missing"), "{e}");
        assert!(!dir.path().join(FILE_NAME).exists());
        for (content, why) in [
            (&b"\n \n"[..], "empty"),
            (&b"a\nb\n"[..], "more than one line"),
            (&[0xff, 0xfe][..], "not UTF-8"),
        ] {
            std::fs::write(&path, content).unwrap();
            let e = load(Some(&path), dir.path()).unwrap_err().to_string();
            assert!(e.contains(why), "{e}");
        }
        std::fs::write(&path, vec![b'a'; 5000]).unwrap();
        let e = load(Some(&path), dir.path()).unwrap_err().to_string();
        assert!(e.contains("longer than"), "{e}");
    }
}
