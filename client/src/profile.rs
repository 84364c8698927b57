//! A profile directory: one device's identity and server, as the `missive` CLI keeps it.
//!
//! ```text
//! PDIR/profile.toml   server, server_name, ca (path, relative to PDIR), user, device
//! PDIR/device.key     the 32-byte Ed25519 secret key, hex, mode 0600
//! PDIR/ca.pem         the edge's certificate, copied at registration
//! PDIR/seen.txt       recently handled deliveries (DeliveryKey lines), so a delivery that
//!                     was printed but not acknowledged is not printed again by the next run
//! PDIR/e2ee.state     the end-to-end encryption state (Olm account, sessions, the identity
//!                     keys of peer devices, Megolm group sessions, the groups this device
//!                     is in with their epochs and members); every secret in it is
//!                     encrypted with the key:
//! PDIR/e2ee.key       32 random bytes, hex, mode 0600 (the default), or
//! PDIR/e2ee.salt      a salt, when the key is derived (Argon2id) from the passphrase in
//!                     `MISSIVE_PASSPHRASE`: then nothing on disk opens the state without it
//! ```

use crate::dedup::{DeliveryKey, SeenSet};
use crate::{ClientError, Identity};
use ed25519_dalek::SigningKey;
use missive_proto::DeviceId;
use serde::{Deserialize, Serialize};
use std::io::Write;
use std::net::{SocketAddr, ToSocketAddrs};
use std::path::{Path, PathBuf};

/// The settings file's name.
pub const PROFILE_FILE: &str = "profile.toml";
/// The device key file's name.
pub const KEY_FILE: &str = "device.key";
/// The copied CA certificate's name.
pub const CA_FILE: &str = "ca.pem";
/// The seen-deliveries file's name.
pub const SEEN_FILE: &str = "seen.txt";
/// The disappearing-message timers file's name (`user seconds` lines).
pub const TIMERS_FILE: &str = "timers.txt";
/// The broadcast lists' file: one `NAME user user ...` line per list.
pub const BROADCASTS_FILE: &str = "broadcasts.txt";
/// The E2EE state file's name.
pub const E2EE_STATE_FILE: &str = "e2ee.state";
/// The E2EE state key file's name (when no passphrase is used).
pub const E2EE_KEY_FILE: &str = "e2ee.key";
/// The salt file's name (when the E2EE state key comes from a passphrase).
pub const E2EE_SALT_FILE: &str = "e2ee.salt";
/// The environment variable holding the passphrase the E2EE state key is derived from.
pub const PASSPHRASE_ENV: &str = "MISSIVE_PASSPHRASE";

/// The key that encrypts the E2EE state: from the passphrase (Argon2id over the profile's
/// salt) when the profile was created with one, else the key file.
fn e2ee_key(dir: &Path) -> Result<[u8; 32], ClientError> {
    let salt_path = dir.join(E2EE_SALT_FILE);
    if let Ok(salt) = std::fs::read(&salt_path) {
        let passphrase = std::env::var(PASSPHRASE_ENV).map_err(|_| {
            perr(
                &salt_path,
                format!("this profile's keys are locked by a passphrase: set {PASSPHRASE_ENV}"),
            )
        })?;
        return derive_key(&passphrase, &salt).map_err(|e| perr(&salt_path, e));
    }
    let key_path = dir.join(E2EE_KEY_FILE);
    let text = std::fs::read_to_string(&key_path).map_err(|e| perr(&key_path, e))?;
    hex::decode(text.trim())
        .ok()
        .and_then(|b| <[u8; 32]>::try_from(b).ok())
        .ok_or_else(|| perr(&key_path, "expected 32 bytes of hex"))
}

/// Argon2id (the crate's defaults: 19 MiB, 2 passes) of `passphrase` with `salt`.
fn derive_key(passphrase: &str, salt: &[u8]) -> Result<[u8; 32], String> {
    let mut key = [0u8; 32];
    argon2::Argon2::default()
        .hash_password_into(passphrase.as_bytes(), salt, &mut key)
        .map_err(|e| format!("cannot derive the key: {e}"))?;
    Ok(key)
}

/// Makes the E2EE state key of a new profile: a salt for the passphrase in the environment
/// if there is one, else a random key file.
fn new_e2ee_key(dir: &Path) -> Result<[u8; 32], ClientError> {
    use rand::RngCore;
    match std::env::var(PASSPHRASE_ENV) {
        Ok(passphrase) if !passphrase.is_empty() => {
            let mut salt = [0u8; 16];
            rand::rngs::OsRng.fill_bytes(&mut salt);
            let path = dir.join(E2EE_SALT_FILE);
            write_atomic(&path, &salt, true)?;
            derive_key(&passphrase, &salt).map_err(|e| perr(&path, e))
        }
        _ => {
            let mut key = [0u8; 32];
            rand::rngs::OsRng.fill_bytes(&mut key);
            let text = format!("{}\n", hex::encode(key));
            write_atomic(&dir.join(E2EE_KEY_FILE), text.as_bytes(), true)?;
            Ok(key)
        }
    }
}

fn open_e2ee(dir: &Path, key: [u8; 32]) -> Result<crate::e2ee::E2eeStore, ClientError> {
    crate::e2ee::E2eeStore::open(&dir.join(E2EE_STATE_FILE), key)
}

#[derive(Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct ProfileToml {
    /// `host:port` of the edge.
    server: String,
    /// Name the server certificate must carry.
    server_name: String,
    /// CA certificate path; relative paths are relative to the profile directory.
    ca: PathBuf,
    /// User name.
    user: String,
    /// Device id.
    device: u32,
}

/// A loaded profile.
#[derive(Debug, Clone)]
pub struct Profile {
    /// The profile directory.
    pub dir: PathBuf,
    /// `host:port` of the edge, as given at registration.
    pub server: String,
    /// Name the server certificate must carry.
    pub server_name: String,
    /// Path of the trusted CA certificate (PEM).
    pub ca_path: PathBuf,
    /// The device identity (with its secret key).
    pub identity: Identity,
}

fn perr(path: &Path, reason: impl std::fmt::Display) -> ClientError {
    ClientError::Profile {
        path: path.to_path_buf(),
        reason: reason.to_string(),
    }
}

impl Profile {
    /// Creates a profile in `dir` (created if missing): copies `ca_pem` to `ca.pem`, writes
    /// the key (mode 0600) and `profile.toml`. Refuses to overwrite an existing profile.
    pub fn create(
        dir: &Path,
        server: &str,
        server_name: &str,
        ca_pem: &[u8],
        identity: &Identity,
    ) -> Result<Self, ClientError> {
        let toml_path = dir.join(PROFILE_FILE);
        if toml_path.exists() || dir.join(KEY_FILE).exists() {
            return Err(perr(dir, "a profile already exists here"));
        }
        std::fs::create_dir_all(dir).map_err(|e| perr(dir, e))?;
        write_atomic(&dir.join(CA_FILE), ca_pem, false)?;
        let key_hex = format!("{}\n", hex::encode(identity.signing_key.to_bytes()));
        write_atomic(&dir.join(KEY_FILE), key_hex.as_bytes(), true)?;
        let settings = ProfileToml {
            server: server.to_string(),
            server_name: server_name.to_string(),
            ca: PathBuf::from(CA_FILE),
            user: identity.user.clone(),
            device: identity.device.0,
        };
        let text = toml::to_string(&settings).map_err(|e| perr(&toml_path, e))?;
        write_atomic(&toml_path, text.as_bytes(), false)?;
        // The device's E2EE identity is made here, in its file; nothing was encrypted with
        // the identity's in-memory state before the profile existed.
        let key = new_e2ee_key(dir)?;
        let mut identity = identity.clone();
        identity.e2ee = open_e2ee(dir, key)?;
        Ok(Self {
            dir: dir.to_path_buf(),
            server: settings.server,
            server_name: settings.server_name,
            ca_path: dir.join(CA_FILE),
            identity,
        })
    }

    /// Loads the profile in `dir`.
    pub fn load(dir: &Path) -> Result<Self, ClientError> {
        let toml_path = dir.join(PROFILE_FILE);
        let text = std::fs::read_to_string(&toml_path).map_err(|e| perr(&toml_path, e))?;
        let settings: ProfileToml = toml::from_str(&text).map_err(|e| perr(&toml_path, e))?;
        let key_path = dir.join(KEY_FILE);
        let key_text = std::fs::read_to_string(&key_path).map_err(|e| perr(&key_path, e))?;
        let key_bytes = hex::decode(key_text.trim()).map_err(|e| perr(&key_path, e))?;
        let secret: [u8; 32] = key_bytes
            .try_into()
            .map_err(|_| perr(&key_path, "expected 32 bytes of hex"))?;
        let ca_path = if settings.ca.is_absolute() {
            settings.ca
        } else {
            dir.join(settings.ca)
        };
        Ok(Self {
            dir: dir.to_path_buf(),
            server: settings.server,
            server_name: settings.server_name,
            ca_path,
            identity: Identity {
                user: settings.user,
                device: DeviceId(settings.device),
                signing_key: SigningKey::from_bytes(&secret),
                e2ee: open_e2ee(dir, e2ee_key(dir)?)?,
            },
        })
    }

    /// The disappearing-message timers of this profile's chats (missing file: none).
    pub fn timers(&self) -> Result<std::collections::HashMap<String, u32>, ClientError> {
        let path = self.dir.join(TIMERS_FILE);
        match std::fs::read_to_string(&path) {
            Ok(text) => Ok(text
                .lines()
                .filter_map(|l| {
                    let (user, secs) = l.split_once(' ')?;
                    Some((user.to_owned(), secs.trim().parse().ok()?))
                })
                .collect()),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(Default::default()),
            Err(e) => Err(perr(&path, e)),
        }
    }

    /// Records a chat's disappearing-message timer (0 removes it).
    pub fn set_timer(&self, user: &str, secs: u32) -> Result<(), ClientError> {
        let mut timers = self.timers()?;
        if secs == 0 {
            timers.remove(user);
        } else {
            timers.insert(user.to_owned(), secs);
        }
        let mut sorted: Vec<_> = timers.into_iter().collect();
        sorted.sort();
        let text: String = sorted.iter().map(|(u, s)| format!("{u} {s}\n")).collect();
        write_atomic(&self.dir.join(TIMERS_FILE), text.as_bytes(), false)
    }

    /// This profile's broadcast lists: name → recipients.
    pub fn broadcast_lists(
        &self,
    ) -> Result<std::collections::BTreeMap<String, Vec<String>>, ClientError> {
        let path = self.dir.join(BROADCASTS_FILE);
        match std::fs::read_to_string(&path) {
            Ok(text) => Ok(text
                .lines()
                .filter_map(|l| {
                    let mut words = l.split_whitespace();
                    let name = words.next()?.to_owned();
                    Some((name, words.map(str::to_owned).collect()))
                })
                .collect()),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(Default::default()),
            Err(e) => Err(perr(&path, e)),
        }
    }

    /// Saves the broadcast list `name` with `users` (replacing one of that name).
    pub fn save_broadcast_list(&self, name: &str, users: &[String]) -> Result<(), ClientError> {
        let mut lists = self.broadcast_lists()?;
        lists.insert(name.to_owned(), users.to_vec());
        let text: String = lists
            .iter()
            .map(|(n, u)| format!("{n} {}\n", u.join(" ")))
            .collect();
        write_atomic(&self.dir.join(BROADCASTS_FILE), text.as_bytes(), false)
    }

    /// Records the device id the server picked for this (linked) device.
    pub fn set_device(&mut self, device: DeviceId) -> Result<(), ClientError> {
        let toml_path = self.dir.join(PROFILE_FILE);
        let text = std::fs::read_to_string(&toml_path).map_err(|e| perr(&toml_path, e))?;
        let mut settings: ProfileToml = toml::from_str(&text).map_err(|e| perr(&toml_path, e))?;
        settings.device = device.0;
        let text = toml::to_string(&settings).map_err(|e| perr(&toml_path, e))?;
        write_atomic(&toml_path, text.as_bytes(), false)?;
        self.identity.device = device;
        Ok(())
    }

    /// Reads the CA certificate PEM.
    pub fn ca_pem(&self) -> Result<Vec<u8>, ClientError> {
        std::fs::read(&self.ca_path).map_err(|e| perr(&self.ca_path, e))
    }

    /// Resolves [`Profile::server`] to a socket address.
    pub fn server_addr(&self) -> Result<SocketAddr, ClientError> {
        resolve(&self.server)
    }

    /// Deletes the files [`Profile::create`] wrote (after a failed registration).
    pub fn remove_files(&self) {
        for f in [
            PROFILE_FILE,
            KEY_FILE,
            CA_FILE,
            SEEN_FILE,
            TIMERS_FILE,
            BROADCASTS_FILE,
            E2EE_STATE_FILE,
            E2EE_KEY_FILE,
            E2EE_SALT_FILE,
        ] {
            let _ = std::fs::remove_file(self.dir.join(f));
        }
        // Only removes the directory if nothing else is in it.
        let _ = std::fs::remove_dir(&self.dir);
    }

    /// Loads `seen.txt` (missing file: empty set); unparsable lines are skipped.
    pub fn load_seen(&self, capacity: usize) -> Result<SeenSet, ClientError> {
        let path = self.dir.join(SEEN_FILE);
        let mut seen = SeenSet::new(capacity);
        match std::fs::read_to_string(&path) {
            Ok(text) => {
                for key in text.lines().filter_map(DeliveryKey::from_line) {
                    seen.insert(key);
                }
                Ok(seen)
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(seen),
            Err(e) => Err(perr(&path, e)),
        }
    }

    /// Replaces `seen.txt` with `seen` (oldest first), atomically.
    pub fn save_seen(&self, seen: &SeenSet) -> Result<(), ClientError> {
        let mut text = String::with_capacity(seen.len() * 48);
        for key in seen.iter() {
            text.push_str(&key.to_line());
            text.push('\n');
        }
        write_atomic(&self.dir.join(SEEN_FILE), text.as_bytes(), false)
    }
}

/// Resolves `host:port` (or a literal socket address) to the first address found.
pub fn resolve(server: &str) -> Result<SocketAddr, ClientError> {
    if let Ok(addr) = server.parse() {
        return Ok(addr);
    }
    server
        .to_socket_addrs()
        .map_err(|e| ClientError::InvalidInput(format!("cannot resolve server {server:?}: {e}")))?
        .next()
        .ok_or_else(|| ClientError::InvalidInput(format!("server {server:?} has no address")))
}

/// Writes through a temporary file, fsyncs, and renames over `path`.
fn write_atomic(path: &Path, bytes: &[u8], secret: bool) -> Result<(), ClientError> {
    let tmp = path.with_extension("tmp");
    let mut opts = std::fs::OpenOptions::new();
    opts.write(true).create(true).truncate(true);
    #[cfg(unix)]
    if secret {
        use std::os::unix::fs::OpenOptionsExt;
        opts.mode(0o600);
    }
    #[cfg(not(unix))]
    let _ = secret;
    let mut f = opts.open(&tmp).map_err(|e| perr(&tmp, e))?;
    f.write_all(bytes).map_err(|e| perr(&tmp, e))?;
    f.sync_all().map_err(|e| perr(&tmp, e))?;
    drop(f);
    std::fs::rename(&tmp, path).map_err(|e| perr(path, e))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::dedup::DeliveryKind;
    use missive_proto::ClientMsgId;

    #[test]
    fn save_and_load_round_trip() {
        let dir = tempfile::tempdir().unwrap();
        let pdir = dir.path().join("alice");
        let id = Identity::generate("alice", DeviceId(2));
        let created = Profile::create(&pdir, "127.0.0.1:4433", "localhost", b"PEM", &id).unwrap();
        let loaded = Profile::load(&pdir).unwrap();
        assert_eq!(loaded.server, "127.0.0.1:4433");
        assert_eq!(loaded.server_name, "localhost");
        assert_eq!(loaded.identity.user, "alice");
        assert_eq!(loaded.identity.device, DeviceId(2));
        assert_eq!(loaded.identity.public_key(), id.public_key());
        assert_eq!(loaded.ca_pem().unwrap(), b"PEM");
        assert_eq!(loaded.ca_path, created.ca_path);
        assert_eq!(
            loaded.server_addr().unwrap(),
            "127.0.0.1:4433".parse::<SocketAddr>().unwrap()
        );
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            let mode = std::fs::metadata(pdir.join(KEY_FILE))
                .unwrap()
                .permissions()
                .mode();
            assert_eq!(mode & 0o777, 0o600);
        }
        // Never overwritten by a second registration.
        assert!(Profile::create(&pdir, "x:1", "y", b"", &id).is_err());
    }

    #[test]
    fn bad_files_are_profile_errors() {
        let dir = tempfile::tempdir().unwrap();
        assert!(matches!(
            Profile::load(dir.path()),
            Err(ClientError::Profile { .. })
        ));
        let id = Identity::generate("bob", DeviceId(1));
        Profile::create(dir.path(), "127.0.0.1:1", "localhost", b"", &id).unwrap();
        std::fs::write(dir.path().join(KEY_FILE), "abcd\n").unwrap();
        assert!(matches!(
            Profile::load(dir.path()),
            Err(ClientError::Profile { .. })
        ));
        std::fs::write(dir.path().join(PROFILE_FILE), "bogus = 1\n").unwrap();
        assert!(Profile::load(dir.path()).is_err());
    }

    #[test]
    fn seen_list_is_bounded_and_round_trips() {
        let dir = tempfile::tempdir().unwrap();
        let id = Identity::generate("carol", DeviceId(1));
        let p = Profile::create(dir.path(), "127.0.0.1:1", "localhost", b"", &id).unwrap();
        assert!(p.load_seen(10).unwrap().is_empty());
        let mut seen = SeenSet::new(5);
        for i in 0..8u8 {
            seen.insert(DeliveryKey {
                from: "dave".into(),
                client_msg_id: ClientMsgId([i; 16]),
                kind: DeliveryKind::Message,
            });
        }
        p.save_seen(&seen).unwrap();
        let back = p.load_seen(5).unwrap();
        assert_eq!(back.len(), 5);
        let firsts: Vec<u8> = back.iter().map(|k| k.client_msg_id.0[0]).collect();
        assert_eq!(firsts, vec![3, 4, 5, 6, 7]);
        let smaller = p.load_seen(2).unwrap();
        assert_eq!(smaller.len(), 2);
    }

    #[test]
    fn remove_files_cleans_up_after_a_failed_registration() {
        let dir = tempfile::tempdir().unwrap();
        let pdir = dir.path().join("p");
        let id = Identity::generate("erin", DeviceId(1));
        let p = Profile::create(&pdir, "127.0.0.1:1", "localhost", b"", &id).unwrap();
        p.remove_files();
        assert!(!pdir.exists());
    }
}
