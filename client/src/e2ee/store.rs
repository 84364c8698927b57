//! Where a device's E2EE state lives: in memory (tests, load generators) or in a file in the
//! profile directory, encrypted with a 32-byte key (see `Profile` for where the key comes
//! from). A handle is cheap to clone; clones share the state, as the connections of one
//! device do.
//!
//! The file holds the Olm state and, since groups, the group state (Megolm sessions and the
//! groups this device is in): `[0xFF 'M' 'S' 2][Olm length u32 LE][Olm][groups]`. A file
//! without that prefix is the Olm state alone, as written before groups (its first byte is
//! base64 text, never 0xFF); it is read with no groups and rewritten in the new form.

use super::megolm::GroupSessions;
use super::olm::{OlmMachine, PeerIdentity};
use crate::group::directory::GroupDirectory;
use crate::ClientError;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, MutexGuard};

/// First bytes of a state file that holds group state too.
const MAGIC: [u8; 4] = [0xFF, b'M', b'S', 2];

/// A device's end-to-end encryption state (its Olm account and sessions, its Megolm
/// sessions and the groups it is in).
#[derive(Clone, Debug)]
pub struct E2eeStore {
    machine: Arc<Mutex<OlmMachine>>,
    groups: Arc<Mutex<GroupState>>,
    file: Option<Arc<StateFile>>,
}

/// The group half of the state.
#[derive(Debug, Default)]
pub(crate) struct GroupState {
    /// Megolm sessions.
    pub(crate) sessions: GroupSessions,
    /// The groups this device is in, as last told.
    pub(crate) directory: GroupDirectory,
}

/// The stored form of [`GroupState`] (rkyv).
#[derive(rkyv::Archive, rkyv::Serialize, rkyv::Deserialize)]
struct StoredGroups {
    sessions: super::megolm::stored::Sessions,
    directory: Vec<crate::group::directory::stored::Group>,
}

impl GroupState {
    fn to_bytes(&self, key: &[u8; 32]) -> Vec<u8> {
        let stored = StoredGroups {
            sessions: self.sessions.to_stored(key),
            directory: self.directory.to_stored(),
        };
        rkyv::to_bytes::<rkyv::rancor::Error>(&stored)
            .expect("archiving the group state into a growable buffer cannot fail")
            .into_vec()
    }

    fn from_bytes(bytes: &[u8], key: &[u8; 32]) -> Result<Self, String> {
        let mut aligned = rkyv::util::AlignedVec::<16>::with_capacity(bytes.len());
        aligned.extend_from_slice(bytes);
        let stored = rkyv::from_bytes::<StoredGroups, rkyv::rancor::Error>(&aligned)
            .map_err(|e| format!("damaged group state: {e}"))?;
        Ok(Self {
            sessions: GroupSessions::from_stored(stored.sessions, key)?,
            directory: GroupDirectory::from_stored(stored.directory),
        })
    }
}

/// The file's bytes for this state.
fn encode_state(olm: &OlmMachine, groups: &GroupState, key: &[u8; 32]) -> Vec<u8> {
    let olm = olm.to_bytes(key);
    let groups = groups.to_bytes(key);
    let mut out = Vec::with_capacity(8 + olm.len() + groups.len());
    out.extend_from_slice(&MAGIC);
    out.extend_from_slice(&(olm.len() as u32).to_le_bytes());
    out.extend_from_slice(&olm);
    out.extend_from_slice(&groups);
    out
}

/// Reads what [`encode_state`] (or a version before groups) wrote.
fn decode_state(bytes: &[u8], key: &[u8; 32]) -> Result<(OlmMachine, GroupState), String> {
    let Some(rest) = bytes.strip_prefix(&MAGIC) else {
        return Ok((OlmMachine::from_bytes(bytes, key)?, GroupState::default()));
    };
    let (len, rest) = rest
        .split_first_chunk::<4>()
        .ok_or("damaged E2EE state: cut short")?;
    let len = u32::from_le_bytes(*len) as usize;
    if len > rest.len() {
        return Err("damaged E2EE state: cut short".into());
    }
    let (olm, groups) = rest.split_at(len);
    Ok((
        OlmMachine::from_bytes(olm, key)?,
        GroupState::from_bytes(groups, key)?,
    ))
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
            groups: Arc::default(),
            file: None,
        }
    }

    /// The state saved at `path` under `key`, or a new identity saved there when the file
    /// does not exist. A wrong key or a damaged file is an error (never a new identity: that
    /// would silently make this a new device to everyone).
    pub fn open(path: &Path, key: [u8; 32]) -> Result<Self, ClientError> {
        let (machine, groups) = match std::fs::read(path) {
            Ok(bytes) => decode_state(&bytes, &key)
                .map_err(|e| ClientError::E2eeState(format!("{}: {e}", path.display())))?,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                (OlmMachine::new(), GroupState::default())
            }
            Err(e) => {
                return Err(ClientError::E2eeState(format!("{}: {e}", path.display())));
            }
        };
        let store = Self {
            machine: Arc::new(Mutex::new(machine)),
            groups: Arc::new(Mutex::new(groups)),
            file: Some(Arc::new(StateFile {
                path: path.to_owned(),
                key,
            })),
        };
        store.save()?;
        Ok(store)
    }

    /// The users whose device identities this device pinned (it exchanged messages with
    /// them), sorted.
    pub fn known_users(&self) -> Vec<String> {
        self.lock().known_users()
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
        // Olm first, then groups: the order every other holder of both locks keeps.
        let bytes = {
            let olm = self.lock();
            let groups = self.lock_groups();
            encode_state(&olm, &groups, &file.key)
        };
        write_atomically(&file.path, &bytes)
            .map_err(|e| ClientError::E2eeState(format!("{}: {e}", file.path.display())))
    }

    pub(crate) fn lock(&self) -> MutexGuard<'_, OlmMachine> {
        // A panic while holding the lock leaves a state that is still a valid machine.
        self.machine
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// The group half of the state. Never held while taking [`E2eeStore::lock`].
    pub(crate) fn lock_groups(&self) -> MutexGuard<'_, GroupState> {
        // As for `lock`: a panic leaves a usable state.
        self.groups
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

    #[test]
    fn group_state_survives_a_restart_and_old_files_still_open() {
        use missive_proto::{DeviceId, GroupId, GroupInfo, GroupMember};
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("e2ee.state");
        // A file written before groups: the Olm state alone.
        let olm = OlmMachine::new();
        std::fs::write(&path, olm.to_bytes(&[1; 32])).unwrap();
        let store = E2eeStore::open(&path, [1; 32]).unwrap();
        assert_eq!(store.identity(), olm.identity());
        let key = {
            let mut g = store.lock_groups();
            g.directory.set_info(&GroupInfo {
                group: GroupId(4),
                name: "team".into(),
                epoch: 9,
                members: vec![GroupMember {
                    user: "me".into(),
                    admin: true,
                }],
            });
            g.sessions.rotate(GroupId(4), 9, 0, ("me", DeviceId(1)))
        };
        store.save().unwrap();
        let bytes = std::fs::read(&path).unwrap();
        assert!(bytes.starts_with(&MAGIC));
        assert!(!bytes
            .windows(key.session_key.len())
            .any(|w| w == key.session_key));
        let again = E2eeStore::open(&path, [1; 32]).unwrap();
        assert_eq!(again.identity(), olm.identity());
        let g = again.lock_groups();
        assert_eq!(g.directory.get(GroupId(4)).unwrap().epoch, 9);
        assert!(g.sessions.has_inbound("me", DeviceId(1), &key.session_id));
        drop(g);
        assert!(E2eeStore::open(&path, [2; 32]).is_err());
        std::fs::write(&path, &bytes[..bytes.len() - 3]).unwrap();
        assert!(E2eeStore::open(&path, [1; 32]).is_err());
    }
}
