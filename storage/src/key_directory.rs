//! The key directory: each device's end-to-end identity keys, its unclaimed one-time keys and
//! its fallback key. Uploads and claims are applied by the committer, one at a time, so two
//! claimers can never take the same one-time key: a claim deletes the key it hands out in the
//! batch that answers it, and later claims in that batch skip it.

use crate::engine::KvEngine;
use crate::records::{decode, encode, FallbackRecord};
use crate::write::{Class, Reads, Tx, Write};
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

/// Unclaimed one-time keys of a device (in a [`Tx`]: without those claimed earlier in the
/// batch).
fn one_time_keys<'a>(
    r: &'a (impl Reads + ?Sized),
    user: &str,
    device: DeviceId,
) -> impl Iterator<Item = Result<(Vec<u8>, Vec<u8>), StorageError>> + 'a {
    r.scan(&keys::one_time_keys_of(user, device))
}

fn count_one_time_keys(
    r: &(impl Reads + ?Sized),
    user: &str,
    device: DeviceId,
) -> Result<u32, StorageError> {
    let mut n = 0u32;
    for kv in one_time_keys(r, user, device) {
        kv?;
        n = n.saturating_add(1);
    }
    Ok(n)
}

fn identity_of(
    r: &(impl Reads + ?Sized),
    user: &str,
    device: DeviceId,
) -> Result<Option<IdentityKeys>, StorageError> {
    r.read(&keys::identity(user, device))?
        .map(|v| decode::<IdentityKeys>(&v, "identity keys"))
        .transpose()
}

fn fallback_of(
    r: &(impl Reads + ?Sized),
    user: &str,
    device: DeviceId,
) -> Result<Option<FallbackRecord>, StorageError> {
    r.read(&keys::fallback_key(user, device))?
        .map(|v| decode::<FallbackRecord>(&v, "fallback key"))
        .transpose()
}

/// Publishing keys of a device is a write of the key directory.
impl Write for KeyUpload {
    type Output = UploadOutcome;

    fn class(&self) -> Class {
        Class::ADDS
    }

    fn apply(self, tx: &mut Tx<'_>) -> Result<UploadOutcome, StorageError> {
        let u = self;
        if !tx.devices(&u.user)?.contains(&u.device) {
            return Ok(UploadOutcome::UnknownDevice);
        }
        let identity_known = match &u.identity {
            Some(identity) => match identity_of(tx, &u.user, u.device)? {
                Some(known) if &known != identity => return Ok(UploadOutcome::IdentityConflict),
                Some(_) => true,
                None => false,
            },
            None => true,
        };
        let held = count_one_time_keys(tx, &u.user, u.device)?;
        let mut fresh = Vec::new();
        let mut seen = HashSet::new();
        for k in u.one_time_keys {
            let key = keys::one_time_key(&u.user, u.device, &k.key);
            // A key claimed earlier in this batch reads as absent: it is not taken back.
            if seen.insert(k.key) && !tx.removed(&key) && tx.read(&key)?.is_none() {
                fresh.push((key, k.signature));
            }
        }
        let total = held.saturating_add(fresh.len() as u32);
        if total > u.max_held {
            return Ok(UploadOutcome::TooManyKeys { held });
        }
        if let (false, Some(identity)) = (identity_known, &u.identity) {
            tx.put(keys::identity(&u.user, u.device), encode(identity)?);
        }
        for (key, signature) in fresh {
            tx.put(key, signature.to_vec());
        }
        if let Some(key) = u.fallback_key {
            let record = FallbackRecord { key, used: false };
            tx.put(keys::fallback_key(&u.user, u.device), encode(&record)?);
        }
        Ok(UploadOutcome::Stored {
            one_time_keys: total,
        })
    }
}

/// Which key a claim may take.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ClaimFrom {
    /// An unclaimed one-time key, else the fallback key.
    OneTimeKeys,
    /// Only the fallback key (the claimer spent its budget of one-time keys: it must not
    /// drain them, and its sessions still start).
    FallbackOnly,
}

/// Claims one key for each current device of `user` (ascending): an unclaimed one-time key,
/// deleted in the same batch (so no two claimers get it), or else the fallback key, marked
/// used.
#[derive(Debug)]
pub(crate) struct ClaimKeys {
    pub(crate) user: String,
    pub(crate) from: ClaimFrom,
}

impl Write for ClaimKeys {
    type Output = Vec<ClaimedBundle>;

    fn class(&self) -> Class {
        Class::UPDATE
    }

    fn apply(self, tx: &mut Tx<'_>) -> Result<Vec<ClaimedBundle>, StorageError> {
        let user = self.user.as_str();
        let devices = tx.devices(user)?;
        let mut out = Vec::with_capacity(devices.len());
        for device in devices {
            let device_key: [u8; 32] = match tx.read(&keys::device(user, device))? {
                Some(v) => v
                    .as_slice()
                    .try_into()
                    .map_err(|_| StorageError::Corrupt(format!("device key of {user}")))?,
                None => continue,
            };
            let identity = identity_of(tx, user, device)?;
            let mut taken = None;
            let mut remaining = 0u32;
            for kv in one_time_keys(tx, user, device) {
                let (k, v) = kv?;
                if taken.is_none() && self.from == ClaimFrom::OneTimeKeys {
                    taken = Some((k, v));
                } else {
                    remaining = remaining.saturating_add(1);
                }
            }
            let (one_time_key, fallback) = match taken {
                Some((k, v)) => {
                    let key = signed_key_from_record(&k, &v)?;
                    tx.remove(k);
                    (Some(key), false)
                }
                None => match fallback_of(tx, user, device)? {
                    Some(mut record) => {
                        if !record.used {
                            record.used = true;
                            tx.put(keys::fallback_key(user, device), encode(&record)?);
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
}

/// A device's standing: keys held, fallback used, identity published.
pub(crate) fn status(
    db: &dyn KvEngine,
    user: &str,
    device: DeviceId,
) -> Result<KeyStatus, StorageError> {
    Ok(KeyStatus {
        one_time_keys: count_one_time_keys(db, user, device)?,
        fallback_used: fallback_of(db, user, device)?.is_none_or(|f| f.used),
        has_identity: identity_of(db, user, device)?.is_some(),
    })
}

/// Removes every key of a device (when the device is removed).
pub(crate) fn forget_device(
    tx: &mut Tx<'_>,
    user: &str,
    device: DeviceId,
) -> Result<(), StorageError> {
    tx.remove(keys::identity(user, device));
    tx.remove(keys::fallback_key(user, device));
    let held: Vec<Vec<u8>> = tx
        .scan(&keys::one_time_keys_of(user, device))
        .map(|kv| kv.map(|(k, _)| k))
        .collect::<Result<_, _>>()?;
    for k in held {
        tx.remove(k);
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
