//! Call signaling (version 5): invites ring every device of the callee, one device picks up,
//! the two devices then trade end-to-end encrypted ICE candidates through the edge until one
//! side hangs up. The edge keeps each call's state (ringing, busy, ring timeout, glare) and a
//! record per participant; it never reads the offer, the answer or the candidates: they are
//! envelopes sealed by the clients for one device each (the SRTP keys travel inside them).

use crate::frame::DeviceEnvelope;
use crate::ids::DeviceId;
use rkyv::{Archive, Deserialize, Serialize};

/// Largest sealed offer, answer or candidate blob, in bytes (an ICE description with a few
/// candidates is a few hundred bytes; Olm adds about a hundred).
pub const MAX_CALL_PAYLOAD: usize = 8 * 1024;

/// Most participants of a group call (a full mesh: each pair of them has a call of its own).
pub const MAX_CONFERENCE: usize = 4;

/// Most records one `CallHistory` carries.
pub const MAX_CALL_HISTORY: usize = 200;

/// A call, named by its caller with 16 random bytes.
#[derive(
    Archive, Serialize, Deserialize, Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord,
)]
pub struct CallId(pub [u8; 16]);

impl CallId {
    /// Lower-case hex form, as the CLI prints it.
    pub fn to_hex(&self) -> String {
        self.0.iter().map(|b| format!("{b:02x}")).collect()
    }
}

/// What a call carries.
#[derive(Archive, Serialize, Deserialize, Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum CallMedia {
    /// Voice only.
    Audio,
    /// Voice and video.
    Video,
}

/// Client → server: ring every device of `to`. Each device that gets an offer rings (now, or
/// when it comes online before the ring times out); offline ones get a push. Answered with
/// `CallUpdate`s for `call_id`: `Ringing`, then `Accepted` or `Ended`. When the offers do not
/// name exactly the callee's current devices, nothing rings and the answer is a
/// `DeviceMismatch` (its `client_msg_id` holds the call id's bytes): seal for the devices it
/// lists and invite again with the same id.
#[derive(Archive, Serialize, Deserialize, Debug, Clone, PartialEq, Eq)]
pub struct CallInvite {
    /// Caller-chosen random id.
    pub call_id: CallId,
    /// The callee.
    pub to: String,
    /// Audio or video.
    pub media: CallMedia,
    /// The offer sealed for each device of the callee (at most one per device, each at most
    /// [`MAX_CALL_PAYLOAD`] bytes).
    pub offers: Vec<DeviceEnvelope>,
    /// The group call this call is a leg of (`None`: a call between two users). A group call
    /// of up to [`MAX_CONFERENCE`] users is a full mesh of such legs, one per pair.
    pub conference: Option<CallId>,
}

/// Client → server: something this device does in a call it placed or is rung for.
#[derive(Archive, Serialize, Deserialize, Debug, Clone, PartialEq, Eq)]
pub struct CallAction {
    /// The call.
    pub call_id: CallId,
    /// What it does.
    pub action: CallActionKind,
}

/// What a device does in a call.
#[derive(Archive, Serialize, Deserialize, Debug, Clone, PartialEq, Eq)]
pub enum CallActionKind {
    /// The callee picks up on this device, with its answer sealed for the caller's device;
    /// the callee's other devices stop ringing.
    Accept(Vec<u8>),
    /// The callee declines: every device stops ringing and the caller hears `Declined`.
    Decline,
    /// More ICE candidates (found after the offer or answer went out, e.g. after a network
    /// change), sealed for the other side's device. Only once the call is answered: before
    /// that the other side's device is not known.
    Candidates(Vec<u8>),
    /// Either side hangs up (the caller before an answer: the call is cancelled).
    Hangup,
}

/// Client → server: this user's most recent calls, newest first (answered `CallHistory`).
#[derive(Archive, Serialize, Deserialize, Debug, Clone, PartialEq, Eq)]
pub struct CallHistoryRequest {
    /// Echoed in the answer.
    pub request_id: u32,
    /// Most records wanted (capped at [`MAX_CALL_HISTORY`]).
    pub limit: u16,
}

/// Server → client: a call rings this device.
#[derive(Archive, Serialize, Deserialize, Debug, Clone, PartialEq, Eq)]
pub struct CallIncoming {
    /// The call.
    pub call_id: CallId,
    /// The caller.
    pub from: String,
    /// The caller's device (the one the answer is sealed for).
    pub from_device: DeviceId,
    /// Audio or video.
    pub media: CallMedia,
    /// The offer sealed for this device.
    pub offer: Vec<u8>,
    /// How much longer it rings before it ends as missed, ms.
    pub rings_for_ms: u32,
    /// The group call it is a leg of, if any.
    pub conference: Option<CallId>,
}

/// Server → client: what happened to a call this device is in.
#[derive(Archive, Serialize, Deserialize, Debug, Clone, PartialEq, Eq)]
pub struct CallUpdate {
    /// The call.
    pub call_id: CallId,
    /// What happened.
    pub update: CallUpdateKind,
}

mod update_kind_def {
    //! rkyv derives a resolver with undocumented fields for enums with named fields; the
    //! fields are documented on the enum itself.
    #![allow(missing_docs)]
    use super::*;

    /// What happened to a call.
    #[derive(Archive, Serialize, Deserialize, Debug, Clone, PartialEq, Eq)]
    pub enum CallUpdateKind {
        /// To the caller: the invite is taken; this many of the callee's devices ring now (0:
        /// none is online, a push went out and the call rings until its timeout).
        Ringing {
            /// Devices ringing now.
            devices: u16,
        },
        /// To the caller: the callee picked up on `device`, with its sealed answer.
        Accepted {
            /// The callee's device in the call.
            device: DeviceId,
            /// The answer, sealed for the caller's device.
            answer: Vec<u8>,
        },
        /// To the callee's other devices: picked up on `device`; stop ringing.
        AnsweredElsewhere {
            /// The device that picked up.
            device: DeviceId,
        },
        /// The other side's sealed ICE candidates.
        Candidates(Vec<u8>),
        /// To a callee that picked up a leg of a group call: the other users in the group
        /// call already, whom it calls (same `conference`) to complete the mesh.
        Conference {
            /// Participants other than the callee and the leg's caller.
            others: Vec<String>,
        },
        /// The call is over for this device.
        Ended {
            /// Why.
            reason: CallEndReason,
        },
    }
}
pub use update_kind_def::{ArchivedCallUpdateKind, CallUpdateKind};

/// Why a call ended.
#[derive(Archive, Serialize, Deserialize, Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum CallEndReason {
    /// A participant hung up after the call was answered.
    HungUp,
    /// The caller hung up before anyone answered.
    Cancelled,
    /// The callee declined.
    Declined,
    /// The callee was already in a call.
    Busy,
    /// Nobody answered before the ring timeout.
    Missed,
    /// Both users called each other at once: this invite lost to the other one, which rings
    /// (the surviving call is the one the edge took first).
    Glare,
    /// A participant's device was gone longer than the reconnect grace.
    ConnectionLost,
    /// The invite was refused before ringing (the code says why: `UnknownRecipient`,
    /// `RateLimited`, `LimitExceeded` for a caller already in a call, `ProtocolViolation`).
    Refused(u16),
    /// The edge is shutting down.
    ShuttingDown,
}

/// Server → client: answer to `CallHistoryRequest`.
#[derive(Archive, Serialize, Deserialize, Debug, Clone, PartialEq, Eq)]
pub struct CallHistory {
    /// The request's id.
    pub request_id: u32,
    /// Newest first.
    pub records: Vec<CallRecord>,
}

/// One call as one of its participants' history keeps it.
#[derive(Archive, Serialize, Deserialize, Debug, Clone, PartialEq, Eq)]
pub struct CallRecord {
    /// The call.
    pub call_id: CallId,
    /// The other participant.
    pub peer: String,
    /// This user placed it.
    pub outgoing: bool,
    /// Audio or video.
    pub media: CallMedia,
    /// When the invite reached the edge, ms since the Unix epoch.
    pub started_ms: u64,
    /// When it was answered (0: never).
    pub answered_ms: u64,
    /// When it ended.
    pub ended_ms: u64,
    /// Why it ended.
    pub end: CallEndReason,
    /// The group call it was a leg of, if any.
    pub conference: Option<CallId>,
}

impl CallRecord {
    /// Talk time in ms (0 when it was never answered).
    pub fn duration_ms(&self) -> u64 {
        if self.answered_ms == 0 {
            0
        } else {
            self.ended_ms.saturating_sub(self.answered_ms)
        }
    }

    /// An incoming call nobody answered.
    pub fn missed(&self) -> bool {
        !self.outgoing && self.answered_ms == 0
    }
}

/// The reason an invite or action is malformed (before any state is looked at).
pub fn check_invite(invite: &CallInvite) -> Result<(), &'static str> {
    crate::validate_user_name(&invite.to)?;
    if invite.offers.is_empty() || invite.offers.len() > crate::MAX_DEVICES_PER_USER {
        return Err("an invite carries one offer per device of the callee");
    }
    let mut devices: Vec<DeviceId> = invite.offers.iter().map(|o| o.device).collect();
    devices.sort_unstable();
    devices.dedup();
    if devices.len() != invite.offers.len() {
        return Err("two offers for one device");
    }
    if invite
        .offers
        .iter()
        .any(|o| o.envelope.is_empty() || o.envelope.len() > MAX_CALL_PAYLOAD)
    {
        return Err("an offer is empty or larger than allowed");
    }
    Ok(())
}

/// The reason an action is malformed.
pub fn check_action(action: &CallActionKind) -> Result<(), &'static str> {
    match action {
        CallActionKind::Accept(b) | CallActionKind::Candidates(b)
            if b.is_empty() || b.len() > MAX_CALL_PAYLOAD =>
        {
            Err("a sealed answer or candidate blob is empty or larger than allowed")
        }
        _ => Ok(()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn invite(offers: Vec<(u32, usize)>) -> CallInvite {
        CallInvite {
            call_id: CallId([1; 16]),
            to: "bob".into(),
            media: CallMedia::Audio,
            conference: None,
            offers: offers
                .into_iter()
                .map(|(d, n)| DeviceEnvelope {
                    device: DeviceId(d),
                    envelope: vec![7; n],
                })
                .collect(),
        }
    }

    #[test]
    fn invites_are_checked_before_any_state() {
        assert!(check_invite(&invite(vec![(1, 10), (2, 10)])).is_ok());
        assert!(check_invite(&invite(vec![])).is_err());
        assert!(check_invite(&invite(vec![(1, 10), (1, 10)])).is_err());
        assert!(check_invite(&invite(vec![(1, 0)])).is_err());
        assert!(check_invite(&invite(vec![(1, MAX_CALL_PAYLOAD + 1)])).is_err());
        let mut bad_name = invite(vec![(1, 10)]);
        bad_name.to = "no such\0name".into();
        assert!(check_invite(&bad_name).is_err());
        assert!(check_action(&CallActionKind::Accept(vec![])).is_err());
        assert!(check_action(&CallActionKind::Candidates(vec![0; MAX_CALL_PAYLOAD + 1])).is_err());
        assert!(check_action(&CallActionKind::Hangup).is_ok());
    }

    #[test]
    fn duration_counts_talk_time_only() {
        let mut r = CallRecord {
            call_id: CallId([0; 16]),
            peer: "bob".into(),
            outgoing: false,
            media: CallMedia::Video,
            started_ms: 1_000,
            answered_ms: 0,
            ended_ms: 31_000,
            end: CallEndReason::Missed,
            conference: None,
        };
        assert_eq!(r.duration_ms(), 0);
        assert!(r.missed());
        r.answered_ms = 5_000;
        r.end = CallEndReason::HungUp;
        assert_eq!(r.duration_ms(), 26_000);
        assert!(!r.missed());
    }
}
