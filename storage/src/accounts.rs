//! What accounts write: a user with its first device (consuming an invite when invites are
//! required), updates of the user record, invite tokens, and devices added by an admin.

use crate::records::{decode_user, encode, UserRecord};
use crate::store::RegisterOutcome;
use crate::write::{Class, Reads, Tx, Write};
use crate::{keys, StorageError};
use missive_proto::{DeviceId, Visibility};

/// The user record of `user`, as this batch sees it.
pub(crate) fn user_record(
    r: &(impl Reads + ?Sized),
    user: &str,
) -> Result<Option<UserRecord>, StorageError> {
    r.read(&keys::user(user))?
        .map(|v| decode_user(&v))
        .transpose()
}

/// Creates a user with its first device and login key. When `require_invite`, the `invite`
/// token must exist (younger than the invite lifetime) and is consumed in the same batch.
#[derive(Debug)]
pub(crate) struct Register {
    pub(crate) user: String,
    pub(crate) device: DeviceId,
    pub(crate) key: [u8; 32],
    pub(crate) invite: Option<String>,
    pub(crate) require_invite: bool,
    pub(crate) now_ms: u64,
}

impl Write for Register {
    type Output = RegisterOutcome;

    fn class(&self) -> Class {
        Class::ADDS
    }

    fn apply(self, tx: &mut Tx<'_>) -> Result<RegisterOutcome, StorageError> {
        if user_record(tx, &self.user)?.is_some() {
            return Ok(RegisterOutcome::Taken);
        }
        if self.require_invite {
            let Some(token) = self.invite else {
                return Ok(RegisterOutcome::InviteInvalid);
            };
            let ttl_ms = tx.limits.invite_ttl.as_millis() as u64;
            let valid = tx
                .read(&keys::invite(&token))?
                .and_then(|v| keys::be_u64(&v))
                .is_some_and(|created| self.now_ms.saturating_sub(created) <= ttl_ms);
            if !valid {
                return Ok(RegisterOutcome::InviteInvalid);
            }
            tx.remove(keys::invite(&token));
        }
        let rec = UserRecord {
            created_ms: self.now_ms,
            visibility: Visibility::Everyone,
            last_seen_ms: 0,
            disabled: false,
        };
        tx.put(keys::user(&self.user), encode(&rec)?);
        tx.put(keys::device(&self.user, self.device), self.key.to_vec());
        tx.device_added(&self.user, self.device);
        Ok(RegisterOutcome::Created)
    }
}

/// A change to a user record.
#[derive(Debug)]
pub(crate) enum UserUpdate {
    Visibility(Visibility),
    LastSeen(u64),
    Disabled(bool),
}

/// Changes a user record; answers false for an unknown user.
#[derive(Debug)]
pub(crate) struct UpdateUser {
    pub(crate) user: String,
    pub(crate) update: UserUpdate,
}

impl Write for UpdateUser {
    type Output = bool;

    fn class(&self) -> Class {
        Class::UPDATE
    }

    fn apply(self, tx: &mut Tx<'_>) -> Result<bool, StorageError> {
        let Some(mut rec) = user_record(tx, &self.user)? else {
            return Ok(false);
        };
        match self.update {
            UserUpdate::Visibility(v) => rec.visibility = v,
            UserUpdate::LastSeen(ms) => rec.last_seen_ms = rec.last_seen_ms.max(ms),
            UserUpdate::Disabled(d) => rec.disabled = d,
        }
        tx.put(keys::user(&self.user), encode(&rec)?);
        Ok(true)
    }
}

/// Stores an invite token that one registration may consume.
#[derive(Debug)]
pub(crate) struct AddInvite {
    pub(crate) token: String,
    pub(crate) now_ms: u64,
}

impl Write for AddInvite {
    type Output = ();

    fn class(&self) -> Class {
        Class::ADDS
    }

    fn apply(self, tx: &mut Tx<'_>) -> Result<(), StorageError> {
        tx.put(
            keys::invite(&self.token),
            self.now_ms.to_be_bytes().to_vec(),
        );
        Ok(())
    }
}

/// Adds a device with its login key to an existing user; false when the user does not exist
/// or already has that device id.
#[derive(Debug)]
pub(crate) struct AddDevice {
    pub(crate) user: String,
    pub(crate) device: DeviceId,
    pub(crate) key: [u8; 32],
}

impl Write for AddDevice {
    type Output = bool;

    fn class(&self) -> Class {
        Class::ADDS
    }

    fn apply(self, tx: &mut Tx<'_>) -> Result<bool, StorageError> {
        if user_record(tx, &self.user)?.is_none() || tx.devices(&self.user)?.contains(&self.device)
        {
            return Ok(false);
        }
        tx.put(keys::device(&self.user, self.device), self.key.to_vec());
        tx.device_added(&self.user, self.device);
        tx.start_group_cursors(&self.user, self.device)?;
        Ok(true)
    }
}
