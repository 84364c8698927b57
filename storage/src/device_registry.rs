//! A user's devices beyond the first: one-time link codes, linking a device under the next
//! id (ids are never reused, so a new identity is always a new device to everyone), and
//! removing a device with everything the store holds for it. Applied by the committer.

use crate::accounts::user_record;
use crate::write::{Class, Reads, Tx, Write};
use crate::{keys, MailboxId, StorageError};
use missive_proto::DeviceId;

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
fn next_device_id(tx: &Tx<'_>, user: &str, devices: &[DeviceId]) -> Result<u32, StorageError> {
    let counted = tx
        .read(&keys::next_device(user))?
        .and_then(|v| Some(u32::from_be_bytes(v.as_slice().try_into().ok()?)))
        .unwrap_or(0);
    let above = devices
        .iter()
        .map(|d| d.0.saturating_add(1))
        .max()
        .unwrap_or(1);
    Ok(counted.max(above))
}

/// Stores a one-time code that links one more device to `user`; false for an unknown user.
#[derive(Debug)]
pub(crate) struct CreateLinkCode {
    pub(crate) user: String,
    pub(crate) code: String,
    pub(crate) now_ms: u64,
}

impl Write for CreateLinkCode {
    type Output = bool;

    fn class(&self) -> Class {
        Class::ADDS
    }

    fn apply(self, tx: &mut Tx<'_>) -> Result<bool, StorageError> {
        if user_record(tx, &self.user)?.is_none() {
            return Ok(false);
        }
        tx.put(
            keys::link_code(&self.code),
            link_code_value(&self.user, self.now_ms),
        );
        Ok(true)
    }
}

/// Links a device to `user` with `code` (consumed), under the next id the user never had,
/// unless it already has `max_devices`.
#[derive(Debug)]
pub(crate) struct LinkDevice {
    pub(crate) user: String,
    pub(crate) code: String,
    pub(crate) key: [u8; 32],
    pub(crate) max_devices: usize,
    pub(crate) now_ms: u64,
}

impl Write for LinkDevice {
    type Output = LinkOutcome;

    fn class(&self) -> Class {
        Class::ADDS
    }

    fn apply(self, tx: &mut Tx<'_>) -> Result<LinkOutcome, StorageError> {
        let (user, code) = (self.user.as_str(), self.code.as_str());
        let ttl_ms = tx.limits.link_code_ttl.as_millis() as u64;
        let Some(v) = tx.read(&keys::link_code(code))? else {
            return Ok(LinkOutcome::CodeInvalid);
        };
        let valid = parse_link_code(&v).is_some_and(|(created, owner)| {
            owner == user && self.now_ms.saturating_sub(created) <= ttl_ms
        });
        if !valid {
            return Ok(LinkOutcome::CodeInvalid);
        }
        let devices = tx.devices(user)?;
        if devices.len() >= self.max_devices {
            return Ok(LinkOutcome::TooManyDevices);
        }
        let id = next_device_id(tx, user, &devices)?;
        tx.put(keys::device(user, DeviceId(id)), self.key.to_vec());
        tx.put(
            keys::next_device(user),
            id.saturating_add(1).to_be_bytes().to_vec(),
        );
        tx.remove(keys::link_code(code));
        tx.device_added(user, DeviceId(id));
        tx.start_group_cursors(user, DeviceId(id))?;
        Ok(LinkOutcome::Linked(DeviceId(id)))
    }
}

/// Removes a device of `user` and everything stored for it: its login key, its keys in the
/// key directory, its mailbox and seq counter. Answers the mailbox items removed, or `None`
/// when there is no such device.
#[derive(Debug)]
pub(crate) struct RemoveDevice {
    pub(crate) user: String,
    pub(crate) device: DeviceId,
}

impl Write for RemoveDevice {
    type Output = Option<usize>;

    fn class(&self) -> Class {
        Class::UPDATE
    }

    fn apply(self, tx: &mut Tx<'_>) -> Result<Option<usize>, StorageError> {
        let (user, device) = (self.user.as_str(), self.device);
        let devices = tx.devices(user)?;
        if !devices.contains(&device) {
            return Ok(None);
        }
        // Its id is never handed out again.
        let next = next_device_id(tx, user, &devices)?;
        tx.put(keys::next_device(user), next.to_be_bytes().to_vec());
        tx.remove(keys::device(user, device));
        crate::key_directory::forget_device(tx, user, device)?;
        let mb = MailboxId::new(user, device);
        let items: Vec<Vec<u8>> = tx
            .scan(&keys::mailbox_prefix(&mb))
            .map(|kv| kv.map(|(k, _)| k))
            .collect::<Result<_, _>>()?;
        let n = items.len();
        for k in items {
            tx.remove(k);
        }
        tx.remove(keys::seq_counter(&mb));
        tx.drop_group_cursors(user, device)?;
        tx.pending.removed_devices.insert((user.to_owned(), device));
        Ok(Some(n))
    }
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
