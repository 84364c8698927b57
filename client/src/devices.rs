//! Which devices each user has, as the server last told us: the lists a send encrypts for.
//!
//! A `Send` carries one envelope per device of the recipient and per other device of the
//! sender. The lists start empty (or, for ourselves, just this device) and are corrected by
//! the server's `DeviceMismatch` answer, after which the send goes again with the same id.

use missive_proto::{DeviceId, UserDevices};
use std::collections::HashMap;

/// How a user's device list changed.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub(crate) struct ListChange {
    /// Devices that appeared.
    pub(crate) added: Vec<DeviceId>,
    /// Devices that went away.
    pub(crate) removed: Vec<DeviceId>,
    /// Whether a list was known before (a first look is no change to tell the app about).
    pub(crate) was_known: bool,
}

/// Device lists per user, and who we are.
#[derive(Debug)]
pub(crate) struct DeviceDirectory {
    me: String,
    my_device: DeviceId,
    lists: HashMap<String, Vec<DeviceId>>,
}

impl DeviceDirectory {
    /// A directory for `me` on `my_device`, knowing no list yet.
    pub(crate) fn new(me: impl Into<String>, my_device: DeviceId) -> Self {
        Self {
            me: me.into(),
            my_device,
            lists: HashMap::new(),
        }
    }

    /// This device's user.
    pub(crate) fn me(&self) -> &str {
        &self.me
    }

    /// Whether the server told us `user`'s devices yet.
    pub(crate) fn knows(&self, user: &str) -> bool {
        self.lists.contains_key(user)
    }

    /// The devices of `to` a send must carry an envelope for (all of them, this device too
    /// when `to` is ourselves). Empty when `to`'s devices are not known yet.
    pub(crate) fn recipients(&self, to: &str) -> Vec<DeviceId> {
        match self.lists.get(to) {
            Some(list) => list.clone(),
            // Before the server told us more, ourselves is at least this device.
            None if to == self.me => vec![self.my_device],
            None => Vec::new(),
        }
    }

    /// Our other devices, which get a copy of everything we send to someone else.
    pub(crate) fn own_others(&self, to: &str) -> Vec<DeviceId> {
        if to == self.me {
            return Vec::new();
        }
        self.lists
            .get(&self.me)
            .into_iter()
            .flatten()
            .filter(|d| **d != self.my_device)
            .copied()
            .collect()
    }

    /// Takes the server's current list of a user; returns what changed.
    pub(crate) fn update(&mut self, current: UserDevices) -> ListChange {
        let mut devices = current.devices;
        devices.sort_unstable();
        devices.dedup();
        let old = self.lists.insert(current.user, devices.clone());
        let was_known = old.is_some();
        let old = old.unwrap_or_default();
        ListChange {
            added: devices
                .iter()
                .filter(|d| !old.contains(d))
                .copied()
                .collect(),
            removed: old
                .iter()
                .filter(|d| !devices.contains(d))
                .copied()
                .collect(),
            was_known,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn list(user: &str, devices: &[u32]) -> UserDevices {
        UserDevices {
            user: user.into(),
            devices: devices.iter().map(|d| DeviceId(*d)).collect(),
        }
    }

    #[test]
    fn lists_follow_the_server_and_report_changes() {
        let mut dir = DeviceDirectory::new("bob", DeviceId(2));
        assert!(dir.recipients("alice").is_empty());
        assert_eq!(dir.recipients("bob"), vec![DeviceId(2)]);
        assert!(dir.own_others("alice").is_empty());

        let first = dir.update(list("alice", &[3, 1]));
        assert!(!first.was_known);
        assert_eq!(dir.recipients("alice"), vec![DeviceId(1), DeviceId(3)]);

        let change = dir.update(list("alice", &[1, 4]));
        assert!(change.was_known);
        assert_eq!(change.added, vec![DeviceId(4)]);
        assert_eq!(change.removed, vec![DeviceId(3)]);

        dir.update(list("bob", &[1, 2]));
        assert_eq!(dir.own_others("alice"), vec![DeviceId(1)]);
        // A note to self goes to every own device through the recipients' list.
        assert!(dir.own_others("bob").is_empty());
        assert_eq!(dir.recipients("bob"), vec![DeviceId(1), DeviceId(2)]);
    }
}
