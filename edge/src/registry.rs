//! Who is connected here: live sessions by device mailbox, and presence subscriptions.
//!
//! The store's commit listener calls [`Registry::push`] for every durable item; a session that
//! cannot keep up has its queue marked overflowed and re-reads from storage instead.

use crate::group_streams::LiveItem;
use crate::session_queue::{self, Refused};
use dashmap::DashMap;
use missive_proto::{Frame, GroupId, ServerSeq};
use missive_storage::{MailboxId, StoredItem};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

/// Items a session's live queue holds before overflowing to storage reads.
pub const SESSION_QUEUE: usize = 1024;

/// Something delivered to a session task from outside its connection. Payloads are boxed,
/// so that a queued event stays small whatever it carries.
#[derive(Debug)]
pub enum SessionEvent {
    /// A durable item for this device's mailbox.
    Pushed(ServerSeq, Box<StoredItem>),
    /// A durable item of a group's log this device reads (shared by all its readers).
    GroupPushed(GroupId, ServerSeq, Arc<LiveItem>),
    /// A frame to forward as is (presence, typing).
    Forward(Box<Frame>),
    /// The same device logged in on another connection: go away.
    Replaced,
    /// An administrator disabled the account: tell the client `AccountDisabled` and close.
    AccountDisabled,
    /// Storage came back after a failure: read the mailbox again (items found in the
    /// engine's journal were never pushed).
    Reread,
    /// The device was removed from its account: tell the client `DeviceRemoved` and close.
    Removed,
}

/// Longest wait for room in a full session queue when an event must not be dropped.
const MUST_DELIVER_TIMEOUT: Duration = Duration::from_secs(5);

/// Handle to a live session.
#[derive(Debug, Clone)]
pub struct SessionHandle {
    /// Unique connection id.
    pub conn_id: u64,
    tx: session_queue::Sender<SessionEvent>,
}

impl SessionHandle {
    /// A handle and the inbox the session task reads.
    pub fn new(conn_id: u64) -> (Self, session_queue::Receiver<SessionEvent>) {
        let (tx, rx) = session_queue::inbox(SESSION_QUEUE);
        (Self { conn_id, tx }, rx)
    }

    /// Queues an event without waiting; a full queue marks the session overflowed (so it
    /// re-reads storage; a dropped `Forward` is acceptable for ephemeral frames) and a closed
    /// one is ignored.
    pub fn offer(&self, ev: SessionEvent) {
        self.tx.offer(ev);
    }
}

/// Presence change of a user, for subscribers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OnlineChange {
    /// First device came online.
    CameOnline,
    /// Last device went offline.
    WentOffline,
    /// No change in the user's overall state.
    Unchanged,
}

/// Sessions and presence subscriptions of this edge.
#[derive(Debug, Default)]
pub struct Registry {
    sessions: DashMap<MailboxId, SessionHandle>,
    /// user → devices with a live session here.
    online_devices: DashMap<String, Vec<missive_proto::DeviceId>>,
    /// watched user → (subscriber conn id → handle).
    subscribers: DashMap<String, Vec<SessionHandle>>,
    next_conn_id: AtomicU64,
}

impl Registry {
    /// A fresh connection id.
    pub fn next_conn_id(&self) -> u64 {
        self.next_conn_id.fetch_add(1, Ordering::Relaxed) + 1
    }

    /// Registers a logged-in session; a previous session of the same device is told to go.
    pub fn register(&self, mb: MailboxId, handle: SessionHandle) -> OnlineChange {
        let (user, device) = (mb.user.clone(), mb.device);
        let previous = self.sessions.insert(mb, handle);
        if let Some(prev) = previous {
            prev.offer(SessionEvent::Replaced);
            return OnlineChange::Unchanged;
        }
        let mut devices = self.online_devices.entry(user).or_default();
        devices.push(device);
        if devices.len() == 1 {
            OnlineChange::CameOnline
        } else {
            OnlineChange::Unchanged
        }
    }

    /// Removes a session (only if it is still the registered one for its device).
    pub fn unregister(&self, mb: &MailboxId, conn_id: u64) -> OnlineChange {
        let removed = self
            .sessions
            .remove_if(mb, |_, h| h.conn_id == conn_id)
            .is_some();
        if !removed {
            return OnlineChange::Unchanged;
        }
        let gone = {
            let mut devices = self.online_devices.entry(mb.user.clone()).or_default();
            devices.retain(|d| *d != mb.device);
            devices.is_empty()
        };
        if gone {
            self.online_devices.remove_if(&mb.user, |_, d| d.is_empty());
            OnlineChange::WentOffline
        } else {
            OnlineChange::Unchanged
        }
    }

    /// True when any device of `user` has a live session here.
    pub fn is_online(&self, user: &str) -> bool {
        self.online_devices.get(user).is_some_and(|d| !d.is_empty())
    }

    /// The devices of `user` with a live session here.
    pub fn online_devices(&self, user: &str) -> Vec<missive_proto::DeviceId> {
        self.online_devices
            .get(user)
            .map(|d| d.clone())
            .unwrap_or_default()
    }

    /// Live sessions.
    pub fn session_count(&self) -> usize {
        self.sessions.len()
    }

    /// Tells every live session of `user` on this edge that the account was disabled; each
    /// one sends `AccountDisabled` and closes. Unlike a push, this event is never dropped: a
    /// full session queue is waited on (bounded). Returns how many sessions were told.
    ///
    /// Call it after the disabled flag is durable, so that a reconnect is refused at login.
    pub async fn disconnect_user(&self, user: &str) -> usize {
        // Handles are cloned out first: no map guard may be held across an await.
        let handles: Vec<SessionHandle> = self
            .sessions
            .iter()
            .filter(|entry| entry.key().user == user)
            .map(|entry| entry.value().clone())
            .collect();
        let mut told = 0;
        for h in handles {
            match h
                .tx
                .send_timeout(SessionEvent::AccountDisabled, MUST_DELIVER_TIMEOUT)
                .await
            {
                Ok(()) => told += 1,
                Err(Refused::Closed(_)) => {} // already gone
                Err(Refused::Full(_) | Refused::Timeout(_)) => {
                    tracing::warn!(
                        user,
                        conn = h.conn_id,
                        "session did not take the disable event"
                    );
                }
            }
        }
        told
    }

    /// Hands a durable item to the device's live session. Returns false when the device
    /// has no session here (the caller may then wake it with a push notification).
    pub fn push(&self, mb: &MailboxId, seq: ServerSeq, item: &StoredItem) -> bool {
        match self.sessions.get(mb) {
            Some(h) => {
                h.offer(SessionEvent::Pushed(seq, Box::new(item.clone())));
                true
            }
            None => false,
        }
    }

    /// Hands a durable item of `group`'s log to the live sessions of every device of
    /// `readers`. Offline readers catch up from the log when they log in.
    pub fn push_group(
        &self,
        group: GroupId,
        seq: ServerSeq,
        item: &Arc<LiveItem>,
        readers: &[String],
    ) {
        for user in readers {
            let Some(devices) = self.online_devices.get(user.as_str()).map(|d| d.clone()) else {
                continue;
            };
            for device in devices {
                if let Some(h) = self.sessions.get(&MailboxId::new(user.clone(), device)) {
                    h.offer(SessionEvent::GroupPushed(group, seq, item.clone()));
                }
            }
        }
    }

    /// Tells every live session to read its mailbox again (after storage recovered).
    pub fn reread_all(&self) {
        for entry in self.sessions.iter() {
            entry.value().offer(SessionEvent::Reread);
        }
    }

    /// Tells the live session of a removed device (if any) to close.
    pub fn device_removed(&self, mb: &MailboxId) {
        if let Some(h) = self.sessions.get(mb) {
            h.offer(SessionEvent::Removed);
        }
    }

    /// Forwards a frame to the live session of one device, if it has one here.
    pub fn forward_to_device(&self, mb: &MailboxId, frame: &Frame) {
        if let Some(h) = self.sessions.get(mb) {
            h.offer(SessionEvent::Forward(Box::new(frame.clone())));
        }
    }

    /// Forwards a frame to every live session of `user`.
    pub fn forward_to_user(&self, user: &str, frame: &Frame) {
        let devices = match self.online_devices.get(user) {
            Some(d) => d.clone(),
            None => return,
        };
        for device in devices {
            if let Some(h) = self.sessions.get(&MailboxId::new(user, device)) {
                h.offer(SessionEvent::Forward(Box::new(frame.clone())));
            }
        }
    }

    /// Subscribes a session to `watched`'s presence.
    pub fn subscribe(&self, watched: &str, handle: SessionHandle) {
        let mut subs = self.subscribers.entry(watched.to_owned()).or_default();
        if !subs.iter().any(|h| h.conn_id == handle.conn_id) {
            subs.push(handle);
        }
    }

    /// Removes every subscription of a closing session.
    pub fn unsubscribe_all(&self, watched: &[String], conn_id: u64) {
        for w in watched {
            if let Some(mut subs) = self.subscribers.get_mut(w) {
                subs.retain(|h| h.conn_id != conn_id);
            }
            self.subscribers.remove_if(w, |_, v| v.is_empty());
        }
    }

    /// Sends a presence frame to everyone subscribed to `watched`.
    pub fn notify_subscribers(&self, watched: &str, frame: &Frame) {
        if let Some(subs) = self.subscribers.get(watched) {
            for h in subs.iter() {
                h.offer(SessionEvent::Forward(Box::new(frame.clone())));
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use missive_proto::DeviceId;

    #[tokio::test]
    async fn disconnect_user_tells_every_session_of_that_user_only() {
        let registry = Registry::default();
        let mut receivers = Vec::new();
        for (user, device) in [("alice", 1), ("alice", 2), ("bob", 1)] {
            let (handle, rx) = SessionHandle::new(registry.next_conn_id());
            registry.register(MailboxId::new(user, DeviceId(device)), handle);
            receivers.push(rx);
        }
        // A full queue does not lose the event: it waits for room.
        for _ in 0..SESSION_QUEUE {
            registry.push(
                &MailboxId::new("alice", DeviceId(2)),
                ServerSeq(1),
                &StoredItem {
                    from: "bob".into(),
                    from_device: DeviceId(1),
                    client_msg_id: missive_proto::ClientMsgId([0; 16]),
                    server_ts_ms: 1,
                    payload: missive_proto::Payload::Envelope(vec![1]),
                },
            );
        }
        let full = receivers.remove(1);
        let drainer = tokio::spawn(async move {
            let mut full = full;
            loop {
                let ev = full.recv().await;
                if matches!(ev, SessionEvent::AccountDisabled) {
                    return ev;
                }
            }
        });
        assert_eq!(registry.disconnect_user("alice").await, 2);
        assert!(matches!(
            receivers[0].try_recv(),
            Some(SessionEvent::AccountDisabled)
        ));
        assert!(receivers[1].try_recv().is_none(), "bob was not told");
        assert!(matches!(
            drainer.await.unwrap(),
            SessionEvent::AccountDisabled
        ));
        assert_eq!(registry.disconnect_user("carol").await, 0);
    }
}
