//! Where a device's E2EE state lives: in memory (tests, load generators) or in a file in the
//! profile directory, encrypted with a 32-byte key (see `Profile` for where the key comes
//! from). A handle is cheap to clone; clones share the state, as the connections of one
//! device do.

use super::olm::{OlmMachine, PeerIdentity};
use crate::ClientError;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, MutexGuard};

/// A device's end-to-end encryption state (its Olm account and sessions).
#[derive(Clone, Debug)]
pub struct E2eeStore {
    machine: Arc<Mutex<OlmMachine>>,
    file: Option<Arc<StateFile>>,
}

struct StateFile {
    path: PathBuf,
    key: [u8; 32],
}

impl std::fmt::Debug for StateFile {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("StateFile")
            .field("path", &self.path)
            .finish_non_exhaustive()
    }
}

impl Default for E2eeStore {
    fn default() -> Self {
        Self::in_memory()
    }
}

impl E2eeStore {
    /// A new device identity kept in memory only (lost with the process).
    pub fn in_memory() -> Self {
        Self {
            machine: Arc::new(Mutex::new(OlmMachine::new())),
            file: None,
        }
    }

    /// The state saved at `path` under `key`, or a new identity saved there when the file
    /// does not exist. A wrong key or a damaged file is an error (never a new identity: that
    /// would silently make this a new device to everyone).
    pub fn open(path: &Path, key: [u8; 32]) -> Result<Self, ClientError> {
        let machine = match std::fs::read(path) {
            Ok(bytes) => OlmMachine::from_bytes(&bytes, &key)
                .map_err(|e| ClientError::E2eeState(format!("{}: {e}", path.display())))?,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => OlmMachine::new(),
            Err(e) => {
                return Err(ClientError::E2eeState(format!("{}: {e}", path.display())));
            }
        };
        let store = Self {
            machine: Arc::new(Mutex::new(machine)),
            file: Some(Arc::new(StateFile {
                path: path.to_owned(),
                key,
            })),
        };
        store.save()?;
        Ok(store)
    }

    /// This device's identity keys.
    pub fn identity(&self) -> PeerIdentity {
        self.lock().identity()
    }

    /// The safety number of `me` (on `my_device`) and `other` (see `missive safety-number`);
    /// `None` while no device of `other` is known (no message exchanged yet).
    pub fn safety_number(
        &self,
        me: &str,
        my_device: missive_proto::DeviceId,
        other: &str,
    ) -> Option<String> {
        self.lock().safety_number((me, my_device), other)
    }

    /// Writes the state to its file (no-op in memory): a new file beside it, fsync'd, then
    /// renamed over the old one, so a crash leaves the old state or the new, never half.
    pub fn save(&self) -> Result<(), ClientError> {
        let Some(file) = &self.file else {
            return Ok(());
        };
        let bytes = self.lock().to_bytes(&file.key);
        write_atomically(&file.path, &bytes)
            .map_err(|e| ClientError::E2eeState(format!("{}: {e}", file.path.display())))
    }

    pub(crate) fn lock(&self) -> MutexGuard<'_, OlmMachine> {
        // A panic while holding the lock leaves a state that is still a valid machine.
        self.machine
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }
}

fn write_atomically(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    use std::io::Write;
    let tmp = path.with_extension("tmp");
    let mut options = std::fs::OpenOptions::new();
    options.write(true).create(true).truncate(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt;
        options.mode(0o600);
    }
    let mut f = options.open(&tmp)?;
    f.write_all(bytes)?;
    f.sync_all()?;
    drop(f);
    std::fs::rename(&tmp, path)?;
    if let Some(dir) = path.parent() {
        // The rename itself must survive a crash too.
        if let Ok(d) = std::fs::File::open(dir) {
            let _ = d.sync_all();
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_saved_identity_comes_back_only_with_its_key() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("e2ee.state");
        let first = E2eeStore::open(&path, [1; 32]).unwrap();
        let again = E2eeStore::open(&path, [1; 32]).unwrap();
        assert_eq!(first.identity(), again.identity());
        assert!(matches!(
            E2eeStore::open(&path, [2; 32]),
            Err(ClientError::E2eeState(_))
        ));
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            let mode = std::fs::metadata(&path).unwrap().permissions().mode();
            assert_eq!(mode & 0o077, 0, "readable by others: {mode:o}");
        }
        assert_ne!(E2eeStore::in_memory().identity(), first.identity());
    }
}
