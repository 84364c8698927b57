//! The key directory: each device's end-to-end identity keys, its unclaimed one-time keys and
//! its fallback key. Uploads and claims are applied by the committer, one at a time, so two
//! claimers can never take the same one-time key: a claim deletes the key it hands out in the
//! batch that answers it, and later claims in that batch skip it.

use crate::engine::{KvEngine, WriteBatch};
use crate::records::{decode, encode, FallbackRecord};
use crate::{keys, StorageError};
use missive_proto::{DeviceBundle, DeviceId, IdentityKeys, SignedKey};
use std::collections::HashSet;

/// Keys a device publishes (its identity is checked by the caller: signed by the device).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KeyUpload {
    /// The device's user.
    pub user: String,
    /// The device.
    pub device: DeviceId,
    /// Identity keys: stored once; the same keys again are fine, others are refused.
    pub identity: Option<IdentityKeys>,
    /// New one-time keys (keys already held are ignored).
    pub one_time_keys: Vec<SignedKey>,
    /// A fallback key replacing the current one.
    pub fallback_key: Option<SignedKey>,
    /// Most unclaimed one-time keys the device may hold.
    pub max_held: u32,
}

/// What an upload did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum UploadOutcome {
    /// Stored; the device now holds this many unclaimed one-time keys.
    Stored {
        /// Unclaimed one-time keys held.
        one_time_keys: u32,
    },
    /// The device already published other identity keys; nothing was stored.
    IdentityConflict,
    /// The upload would take the device past `max_held` one-time keys; nothing was stored.
    TooManyKeys {
        /// Unclaimed one-time keys held now.
        held: u32,
    },
    /// No such device.
    UnknownDevice,
}

/// One device's bundle handed to a claimer, with what the device should be told.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClaimedBundle {
    /// The bundle.
    pub bundle: DeviceBundle,
    /// Unclaimed one-time keys the device has left.
    pub remaining: u32,
}

/// A device's standing in the directory (what it should upload).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct KeyStatus {
    /// Unclaimed one-time keys held.
    pub one_time_keys: u32,
    /// The fallback key was handed out since it was uploaded (or there is none).
    pub fallback_used: bool,
    /// The device's identity keys are published.
    pub has_identity: bool,
}

/// Unclaimed one-time keys of a device, skipping those claimed earlier in this batch.
fn one_time_keys<'a>(
    db: &'a dyn KvEngine,
    user: &str,
    device: DeviceId,
    claimed: &'a HashSet<Vec<u8>>,
) -> impl Iterator<Item = Result<(Vec<u8>, Vec<u8>), StorageError>> + 'a {
    let prefix = keys::one_time_keys_of(user, device);
    db.prefix(&prefix)
        .filter(move |kv| kv.as_ref().map_or(true, |(k, _)| !claimed.contains(k)))
}

fn count_one_time_keys(
    db: &dyn KvEngine,
    user: &str,
    device: DeviceId,
    claimed: &HashSet<Vec<u8>>,
) -> Result<u32, StorageError> {
    let mut n = 0u32;
    for kv in one_time_keys(db, user, device, claimed) {
        kv?;
        n = n.saturating_add(1);
    }
    Ok(n)
}

fn identity_of(
    db: &dyn KvEngine,
    user: &str,
    device: DeviceId,
) -> Result<Option<IdentityKeys>, StorageError> {
    db.get(&keys::identity(user, device))?
        .map(|v| decode::<IdentityKeys>(&v, "identity keys"))
        .transpose()
}

fn fallback_of(
    db: &dyn KvEngine,
    user: &str,
    device: DeviceId,
) -> Result<Option<FallbackRecord>, StorageError> {
    db.get(&keys::fallback_key(user, device))?
        .map(|v| decode::<FallbackRecord>(&v, "fallback key"))
        .transpose()
}

/// Applies an upload to `batch`. `device_exists` says whether the device is registered
/// (including in this batch).
pub(crate) fn upload(
    db: &dyn KvEngine,
    batch: &mut WriteBatch,
    claimed: &HashSet<Vec<u8>>,
    device_exists: bool,
    u: KeyUpload,
) -> Result<UploadOutcome, StorageError> {
    if !device_exists {
        return Ok(UploadOutcome::UnknownDevice);
    }
    if let Some(identity) = &u.identity {
        match identity_of(db, &u.user, u.device)? {
            Some(known) if &known != identity => return Ok(UploadOutcome::IdentityConflict),
            Some(_) => {}
            None => batch.insert(keys::identity(&u.user, u.device), encode(identity)?),
        }
    }
    let held = count_one_time_keys(db, &u.user, u.device, claimed)?;
    let mut fresh = Vec::new();
    let mut seen = HashSet::new();
    for k in u.one_time_keys {
        let key = keys::one_time_key(&u.user, u.device, &k.key);
        if seen.insert(k.key) && !claimed.contains(&key) && db.get(&key)?.is_none() {
            fresh.push((key, k.signature));
        }
    }
    let total = held.saturating_add(fresh.len() as u32);
    if total > u.max_held {
        return Ok(UploadOutcome::TooManyKeys { held });
    }
    for (key, signature) in fresh {
        batch.insert(key, signature.to_vec());
    }
    if let Some(key) = u.fallback_key {
        let record = FallbackRecord { key, used: false };
        batch.insert(keys::fallback_key(&u.user, u.device), encode(&record)?);
    }
    Ok(UploadOutcome::Stored {
        one_time_keys: total,
    })
}

/// Claims one key for each of `devices` of `user` (ascending): an unclaimed one-time key,
/// deleted in `batch` and remembered in `claimed`, or else the fallback key, marked used.
pub(crate) fn claim(
    db: &dyn KvEngine,
    batch: &mut WriteBatch,
    claimed: &mut HashSet<Vec<u8>>,
    user: &str,
    devices: &[DeviceId],
) -> Result<Vec<ClaimedBundle>, StorageError> {
    let mut out = Vec::with_capacity(devices.len());
    for &device in devices {
        let device_key: [u8; 32] = match db.get(&keys::device(user, device))? {
            Some(v) => v
                .as_slice()
                .try_into()
                .map_err(|_| StorageError::Corrupt(format!("device key of {user}")))?,
            None => continue,
        };
        let identity = identity_of(db, user, device)?;
        let mut taken = None;
        let mut remaining = 0u32;
        for kv in one_time_keys(db, user, device, claimed) {
            let (k, v) = kv?;
            if taken.is_none() {
                taken = Some((k, v));
            } else {
                remaining = remaining.saturating_add(1);
            }
        }
        let (one_time_key, fallback) = match taken {
            Some((k, v)) => {
                let key = signed_key_from_record(&k, &v)?;
                batch.remove(k.clone());
                claimed.insert(k);
                (Some(key), false)
            }
            None => match fallback_of(db, user, device)? {
                Some(mut record) => {
                    if !record.used {
                        record.used = true;
                        batch.insert(keys::fallback_key(user, device), encode(&record)?);
                    }
                    (Some(record.key), true)
                }
                None => (None, false),
            },
        };
        out.push(ClaimedBundle {
            bundle: DeviceBundle {
                device,
                device_key,
                identity,
                one_time_key,
                fallback,
            },
            remaining,
        });
    }
    Ok(out)
}

/// A device's standing: keys held, fallback used, identity published.
pub(crate) fn status(
    db: &dyn KvEngine,
    user: &str,
    device: DeviceId,
) -> Result<KeyStatus, StorageError> {
    Ok(KeyStatus {
        one_time_keys: count_one_time_keys(db, user, device, &HashSet::new())?,
        fallback_used: fallback_of(db, user, device)?.is_none_or(|f| f.used),
        has_identity: identity_of(db, user, device)?.is_some(),
    })
}

/// Removes every key of a device (when the device is removed).
pub(crate) fn forget_device(
    db: &dyn KvEngine,
    batch: &mut WriteBatch,
    user: &str,
    device: DeviceId,
) -> Result<(), StorageError> {
    batch.remove(keys::identity(user, device));
    batch.remove(keys::fallback_key(user, device));
    for kv in db.prefix(&keys::one_time_keys_of(user, device)) {
        batch.remove(kv?.0);
    }
    Ok(())
}

fn signed_key_from_record(k: &[u8], v: &[u8]) -> Result<SignedKey, StorageError> {
    let corrupt = || StorageError::Corrupt("one-time key record".into());
    let key: [u8; 32] = k
        .get(k.len().saturating_sub(32)..)
        .and_then(|t| t.try_into().ok())
        .ok_or_else(corrupt)?;
    let signature: [u8; 64] = v.try_into().map_err(|_| corrupt())?;
    Ok(SignedKey { key, signature })
}
