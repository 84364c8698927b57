//! A user's devices beyond the first: one-time link codes, linking a device under the next
//! id (ids are never reused, so a new identity is always a new device to everyone), and
//! removing a device with everything the store holds for it. Applied by the committer.

use crate::engine::{KvEngine, WriteBatch};
use crate::{keys, MailboxId, StorageError};
use missive_proto::DeviceId;
use std::collections::HashSet;

/// Result of linking a device with a code.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LinkOutcome {
    /// The device was added under this id.
    Linked(DeviceId),
    /// The code is unknown, used, expired, or for another user.
    CodeInvalid,
    /// The user has as many devices as allowed.
    TooManyDevices,
}

/// A link code's stored value: creation time (ms, big-endian) then the user name.
pub(crate) fn link_code_value(user: &str, now_ms: u64) -> Vec<u8> {
    let mut v = now_ms.to_be_bytes().to_vec();
    v.extend_from_slice(user.as_bytes());
    v
}

/// (created ms, user) of a stored link code.
pub(crate) fn parse_link_code(v: &[u8]) -> Option<(u64, &str)> {
    let created = keys::be_u64(v.get(..8)?)?;
    Some((created, std::str::from_utf8(v.get(8..)?).ok()?))
}

/// The id the next linked device of `user` gets: past every id it ever had.
fn next_device_id(
    db: &dyn KvEngine,
    user: &str,
    devices: &[DeviceId],
) -> Result<u32, StorageError> {
    let counted = db
        .get(&keys::next_device(user))?
        .and_then(|v| Some(u32::from_be_bytes(v.as_slice().try_into().ok()?)))
        .unwrap_or(0);
    let above = devices
        .iter()
        .map(|d| d.0.saturating_add(1))
        .max()
        .unwrap_or(1);
    Ok(counted.max(above))
}

/// Links a device to `user` with `code` (consumed). `devices` are the user's current ones.
#[allow(clippy::too_many_arguments)]
pub(crate) fn link(
    db: &dyn KvEngine,
    batch: &mut WriteBatch,
    used_codes: &mut HashSet<String>,
    (user, code, key): (&str, &str, [u8; 32]),
    devices: &[DeviceId],
    max_devices: usize,
    ttl_ms: u64,
    now_ms: u64,
) -> Result<LinkOutcome, StorageError> {
    if used_codes.contains(code) {
        return Ok(LinkOutcome::CodeInvalid);
    }
    let Some(v) = db.get(&keys::link_code(code))? else {
        return Ok(LinkOutcome::CodeInvalid);
    };
    let valid = parse_link_code(&v)
        .is_some_and(|(created, owner)| owner == user && now_ms.saturating_sub(created) <= ttl_ms);
    if !valid {
        return Ok(LinkOutcome::CodeInvalid);
    }
    if devices.len() >= max_devices {
        return Ok(LinkOutcome::TooManyDevices);
    }
    let id = next_device_id(db, user, devices)?;
    batch.insert(keys::device(user, DeviceId(id)), key);
    batch.insert(keys::next_device(user), id.saturating_add(1).to_be_bytes());
    batch.remove(keys::link_code(code));
    used_codes.insert(code.to_owned());
    Ok(LinkOutcome::Linked(DeviceId(id)))
}

/// Removes `device` of `user`: its login key, its keys in the key directory, its mailbox and
/// seq counter. Returns the mailbox items removed.
pub(crate) fn remove(
    db: &dyn KvEngine,
    batch: &mut WriteBatch,
    user: &str,
    device: DeviceId,
    devices: &[DeviceId],
) -> Result<usize, StorageError> {
    // Its id is never handed out again.
    let next = next_device_id(db, user, devices)?;
    batch.insert(keys::next_device(user), next.to_be_bytes());
    batch.remove(keys::device(user, device));
    crate::key_directory::forget_device(db, batch, user, device)?;
    let mb = MailboxId::new(user, device);
    let mut items = 0;
    for kv in db.prefix(&keys::mailbox_prefix(&mb)) {
        batch.remove(kv?.0);
        items += 1;
    }
    batch.remove(keys::seq_counter(&mb));
    Ok(items)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn link_code_values_round_trip() {
        let v = link_code_value("bob", 42);
        assert_eq!(parse_link_code(&v), Some((42, "bob")));
        assert_eq!(parse_link_code(&v[..5]), None);
    }
}
