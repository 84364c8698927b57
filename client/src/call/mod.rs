//! Call signaling in the SDK: what the app hears of calls ([`CallEvent`]) and the session's
//! bookkeeping of them ([`CallBook`]): invites waiting for keys, and the one device on the
//! other side of each call, which every sealed payload is for.
//!
//! The offer, the answer and later candidates are [`CallSignal`]s sealed with Olm for one
//! device each (the caller's offer once per device of the callee): the edge routes them and
//! keeps the call's state, and never reads them. The call's secret, from which the media
//! keys derive, is in the offer.

use crate::content::{CallSignal, CallSignalKind};
use missive_proto::{CallEndReason, CallId, CallMedia, DeviceId};
use std::collections::{HashMap, VecDeque};
use std::time::Duration;
use zeroize::Zeroize;

/// What a caller offers: the call's secret and its media description.
#[derive(Clone, PartialEq, Eq)]
pub struct CallOffer {
    /// 32 random bytes; both sides derive the call's media keys from them.
    pub secret: [u8; 32],
    /// The caller's encoded media description (ICE credentials and candidates).
    pub description: Vec<u8>,
}

impl Drop for CallOffer {
    fn drop(&mut self) {
        self.secret.zeroize();
    }
}

impl std::fmt::Debug for CallOffer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Never the secret.
        f.debug_struct("CallOffer")
            .field("description_len", &self.description.len())
            .finish_non_exhaustive()
    }
}

/// Something that happened to a call.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CallEvent {
    /// A call rings this device.
    Incoming {
        /// The call.
        call_id: CallId,
        /// The caller.
        from: String,
        /// The caller's device.
        from_device: DeviceId,
        /// Audio or video.
        media: CallMedia,
        /// The decrypted offer.
        offer: CallOffer,
        /// How much longer it rings.
        rings_for: Duration,
        /// The group call it is a leg of (see [`crate::Client::invite_to_group_call`]).
        conference: Option<CallId>,
    },
    /// A call rings this device, but its offer could not be decrypted (it cannot be
    /// answered here; it may be on another device).
    Unreadable {
        /// The call.
        call_id: CallId,
        /// The caller.
        from: String,
        /// Why (never content).
        reason: String,
    },
    /// Our invite rings this many of the callee's devices (0: none is online; they were
    /// pushed, and it rings until the timeout).
    Ringing {
        /// The call.
        call_id: CallId,
        /// Devices ringing now.
        devices: u16,
    },
    /// The callee picked up on `device`.
    Accepted {
        /// The call.
        call_id: CallId,
        /// The callee's device in the call.
        device: DeviceId,
        /// The callee's decrypted media description.
        description: Vec<u8>,
    },
    /// Picked up on another of this user's devices: stop ringing.
    AnsweredElsewhere {
        /// The call.
        call_id: CallId,
        /// The device that picked up.
        device: DeviceId,
    },
    /// We picked up a leg of a group call: these users are in it already; call each of them
    /// (same conference) to complete the mesh.
    Conference {
        /// The leg we picked up.
        call_id: CallId,
        /// Participants other than us and the leg's caller.
        others: Vec<String>,
    },
    /// More candidates from the other side (decrypted media description).
    Candidates {
        /// The call.
        call_id: CallId,
        /// The encoded description carrying them.
        description: Vec<u8>,
    },
    /// The call is over on this device.
    Ended {
        /// The call.
        call_id: CallId,
        /// Why.
        reason: CallEndReason,
    },
}

impl CallEvent {
    /// The call it is about.
    pub fn call_id(&self) -> CallId {
        match self {
            Self::Incoming { call_id, .. }
            | Self::Unreadable { call_id, .. }
            | Self::Ringing { call_id, .. }
            | Self::Accepted { call_id, .. }
            | Self::AnsweredElsewhere { call_id, .. }
            | Self::Candidates { call_id, .. }
            | Self::Conference { call_id, .. }
            | Self::Ended { call_id, .. } => *call_id,
        }
    }
}

/// What this device does in a call (see [`crate::Client::accept_call`] and its siblings).
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum CallDo {
    /// Pick up, with our media description.
    Accept(Vec<u8>),
    /// Decline a ringing call.
    Decline,
    /// Send more candidates (an encoded media description).
    Candidates(Vec<u8>),
    /// Hang up.
    Hangup,
}

/// An invite waiting for the callee's keys (or a connection).
#[derive(Debug)]
pub(crate) struct PendingInvite {
    pub(crate) call_id: CallId,
    pub(crate) to: String,
    pub(crate) media: CallMedia,
    /// The group call it is a leg of.
    pub(crate) conference: Option<CallId>,
    /// The sealed offer's plaintext (a `DevicePlaintext` holding the `CallSignal`).
    pub(crate) plaintext: Vec<u8>,
}

impl Drop for PendingInvite {
    fn drop(&mut self) {
        // It holds the call's secret.
        self.plaintext.zeroize();
    }
}

/// Calls this device takes part in, as far as the session needs them.
#[derive(Debug, Default)]
pub(crate) struct CallBook {
    /// Invites not sent yet, in order.
    pub(crate) pending: VecDeque<PendingInvite>,
    /// Invites sent and not answered yet (`Ringing` or `Ended`), kept in case the edge
    /// tells us the callee's devices changed and they must be sealed again.
    sent: HashMap<CallId, PendingInvite>,
    /// Actions taken while offline, sent on the next connection.
    actions: Vec<missive_proto::CallAction>,
    /// Calls we placed: call → callee.
    outgoing: HashMap<CallId, String>,
    /// The other side's device of each call once known: the caller's for a ringing or
    /// answered incoming call, the callee's once it picked up.
    peers: HashMap<CallId, (String, DeviceId)>,
}

/// Calls one device remembers at once; past it the oldest are forgotten (a device is in one
/// call at a time; this only bounds what a flood of rings can make it keep).
const MAX_CALLS_KEPT: usize = 64;

impl CallBook {
    /// An invite placed: keep it until it can be sealed.
    pub(crate) fn invite(&mut self, invite: PendingInvite) {
        self.outgoing.insert(invite.call_id, invite.to.clone());
        self.pending.push_back(invite);
        self.bound();
    }

    /// `invite` went out.
    pub(crate) fn sent(&mut self, invite: PendingInvite) {
        self.sent.insert(invite.call_id, invite);
        while self.sent.len() > MAX_CALLS_KEPT {
            let Some(k) = self.sent.keys().next().copied() else {
                break;
            };
            self.sent.remove(&k);
        }
    }

    /// The edge took (or ended) the invite of `call`: it will not be sealed again.
    pub(crate) fn settled(&mut self, call: &CallId) {
        self.sent.remove(call);
    }

    /// The callee's devices changed under the invite of `call`: seal it again, first.
    /// False when no such invite waits for an answer.
    pub(crate) fn seal_again(&mut self, call: &CallId) -> bool {
        match self.sent.remove(call) {
            Some(invite) => {
                self.pending.push_front(invite);
                true
            }
            None => false,
        }
    }

    /// An action to send once connected.
    pub(crate) fn queue_action(&mut self, action: missive_proto::CallAction) {
        if self.actions.len() < MAX_CALLS_KEPT {
            self.actions.push(action);
        }
    }

    /// The actions waiting for a connection.
    pub(crate) fn take_actions(&mut self) -> Vec<missive_proto::CallAction> {
        std::mem::take(&mut self.actions)
    }

    /// Who we called in `call`, if we placed it.
    pub(crate) fn callee(&self, call: &CallId) -> Option<&str> {
        self.outgoing.get(call).map(String::as_str)
    }

    /// The other side's device in `call` is `peer`.
    pub(crate) fn set_peer(&mut self, call: CallId, peer: (String, DeviceId)) {
        self.peers.insert(call, peer);
        self.bound();
    }

    /// The other side's device in `call`, if known.
    pub(crate) fn peer(&self, call: &CallId) -> Option<&(String, DeviceId)> {
        self.peers.get(call)
    }

    /// `call` is over: forget it (and an invite of it not sent yet).
    pub(crate) fn forget(&mut self, call: &CallId) {
        self.outgoing.remove(call);
        self.peers.remove(call);
        self.sent.remove(call);
        self.pending.retain(|p| p.call_id != *call);
    }

    fn bound(&mut self) {
        // Hash maps have no order: past the bound, forget arbitrary ones. A device in more
        // calls than this is being flooded; its real call is the one it acts on.
        while self.peers.len() > MAX_CALLS_KEPT {
            let Some(k) = self.peers.keys().next().copied() else {
                break;
            };
            self.peers.remove(&k);
        }
        while self.outgoing.len() > MAX_CALLS_KEPT {
            let Some(k) = self.outgoing.keys().next().copied() else {
                break;
            };
            self.outgoing.remove(&k);
        }
        while self.pending.len() > MAX_CALLS_KEPT {
            self.pending.pop_front();
        }
    }
}

/// The signal a sealed payload must carry for `call`, or why not.
pub(crate) fn expect_signal(
    content: crate::Content,
    call: &CallId,
) -> Result<CallSignalKind, &'static str> {
    match content {
        crate::Content::Call(signal) => {
            let CallSignal { call: named, kind } = *signal;
            if named != call.0 {
                return Err("the payload names another call");
            }
            Ok(kind)
        }
        _ => Err("not a call payload"),
    }
}
