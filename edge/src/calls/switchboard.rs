//! Call signaling as a state machine without sockets or clocks (CONVENTIONS §1): every call
//! on this edge, who it rings, who picked up, and when it times out.
//!
//! # Contract
//!
//! Inputs: [`Switchboard::invite`], [`Switchboard::action`], [`Switchboard::device_online`],
//! [`Switchboard::device_offline`], [`Switchboard::handle_timeout`] and
//! [`Switchboard::shut_down`], each with the current [`Now`]. After each, drain
//! [`Switchboard::poll_output`] until `None` (frames in the order they must reach each
//! device), then arm a timer for [`Switchboard::poll_timeout`].
//!
//! # Rules
//!
//! - A user is in at most one call at a time, as caller or callee (ringing counts): a second
//!   caller gets `Busy`, and both histories keep it.
//! - Glare: when the callee of a ringing call calls its caller back, the later invite ends
//!   with `Glare` (it never rang; no record) and the first one goes on ringing, so both users
//!   end up in exactly one call; the clients pick it up.
//! - Ringing ends as `Missed` after the ring timeout. A callee device that comes online while
//!   its user is rung starts ringing with what is left of it.
//! - Accepting on one device sends `AnsweredElsewhere` to the callee's other ringing devices.
//! - A participant's device that goes away (the caller's at any time, the callee's once it
//!   picked up) has the reconnect grace to come back before the call ends as
//!   `ConnectionLost`: media flows peer to peer, so a signaling reconnect must not end it.
//! - Every participant's device gets `Ended` when a call ends, whoever ended it; the caller
//!   and the callee each get a [`CallRecord`] for their history.

use missive_proto::{
    CallActionKind, CallEndReason, CallId, CallIncoming, CallInvite, CallMedia, CallRecord,
    CallUpdate, CallUpdateKind, DeviceEnvelope, DeviceId, ErrorCode, Frame, MAX_CONFERENCE,
};
use std::collections::{HashMap, VecDeque};
use std::time::{Duration, Instant};

/// One device of one user.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Party {
    /// User name.
    pub user: String,
    /// Device.
    pub device: DeviceId,
}

impl Party {
    /// `user`'s `device`.
    pub fn new(user: impl Into<String>, device: DeviceId) -> Self {
        Self {
            user: user.into(),
            device,
        }
    }
}

/// The time an input happens at: the monotonic instant for timers, the wall clock for
/// records.
#[derive(Debug, Clone, Copy)]
pub struct Now {
    /// Monotonic time.
    pub at: Instant,
    /// Wall clock, ms since the Unix epoch.
    pub ms: u64,
}

/// Timers and limits of the switchboard.
#[derive(Debug, Clone, Copy)]
pub struct CallPolicy {
    /// How long an unanswered call rings before it ends as missed.
    pub ring_timeout: Duration,
    /// How long a participant's device may be gone before its call ends.
    pub reconnect_grace: Duration,
    /// Most calls at once on this edge (ringing or answered).
    pub max_calls: usize,
}

/// What the driver must do.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Output {
    /// Send `frame` to `to`'s live session, if it has one.
    Frame {
        /// The device.
        to: Party,
        /// The frame (`CallIncoming` or `CallUpdate`).
        frame: Frame,
    },
    /// Wake `to` with a push: it is rung and not online.
    Push {
        /// The device.
        to: Party,
    },
    /// Add `record` to `user`'s call history.
    Record {
        /// Whose history.
        user: String,
        /// The call as that user sees it.
        record: CallRecord,
    },
}

#[derive(Debug)]
enum Stage {
    /// Ringing until `deadline`.
    Ringing {
        /// The devices ringing now (online ones that have an offer).
        ringing: Vec<DeviceId>,
        deadline: Instant,
    },
    /// Answered on `device`.
    Answered { device: DeviceId, at_ms: u64 },
}

#[derive(Debug)]
struct Call {
    caller: Party,
    callee: String,
    media: CallMedia,
    started_ms: u64,
    /// One sealed offer per callee device (kept while ringing, for devices that come online).
    offers: Vec<DeviceEnvelope>,
    /// The callee devices it was offered to (the ones that may pick up or decline).
    offered: Vec<DeviceId>,
    stage: Stage,
    /// Participants' devices that went away, and when the call ends unless they come back.
    lost: Vec<(Party, Instant)>,
    /// The group call it is a leg of.
    conference: Option<CallId>,
}

impl Call {
    /// The callee's device in the call, once answered.
    fn answered_device(&self) -> Option<Party> {
        match self.stage {
            Stage::Answered { device, .. } => Some(Party::new(self.callee.clone(), device)),
            Stage::Ringing { .. } => None,
        }
    }

    fn is_participant(&self, p: &Party) -> bool {
        *p == self.caller || self.answered_device().as_ref() == Some(p)
    }

    fn next_deadline(&self) -> Option<Instant> {
        let ring = match self.stage {
            Stage::Ringing { deadline, .. } => Some(deadline),
            Stage::Answered { .. } => None,
        };
        self.lost.iter().map(|(_, at)| *at).chain(ring).min()
    }
}

/// Every call on this edge. See the module docs for the contract.
#[derive(Debug)]
pub struct Switchboard {
    policy: CallPolicy,
    calls: HashMap<CallId, Call>,
    /// Each user's one call.
    by_user: HashMap<String, Vec<CallId>>,
    outputs: VecDeque<Output>,
}

fn update(call_id: CallId, update: CallUpdateKind) -> Frame {
    CallUpdate { call_id, update }.into()
}

impl Switchboard {
    /// An empty switchboard.
    pub fn new(policy: CallPolicy) -> Self {
        Self {
            policy,
            calls: HashMap::new(),
            by_user: HashMap::new(),
            outputs: VecDeque::new(),
        }
    }

    /// Replaces the timers and limits (calls already ringing keep their deadline).
    pub fn set_policy(&mut self, policy: CallPolicy) {
        self.policy = policy;
    }

    /// Calls in progress (ringing or answered).
    pub fn len(&self) -> usize {
        self.calls.len()
    }

    /// No call is in progress.
    pub fn is_empty(&self) -> bool {
        self.calls.is_empty()
    }

    /// Next output for the driver.
    pub fn poll_output(&mut self) -> Option<Output> {
        self.outputs.pop_front()
    }

    /// When [`Switchboard::handle_timeout`] must run next.
    pub fn poll_timeout(&self) -> Option<Instant> {
        self.calls.values().filter_map(Call::next_deadline).min()
    }

    /// The calls `user` takes part in (ringing or answered).
    fn calls_of(&self, user: &str) -> Vec<&Call> {
        self.by_user
            .get(user)
            .into_iter()
            .flatten()
            .filter_map(|id| self.calls.get(id))
            .collect()
    }

    /// The users with an answered leg of group call `g`.
    fn participants(&self, g: CallId) -> Vec<String> {
        let mut users = Vec::new();
        for c in self.calls.values() {
            if c.conference == Some(g) && matches!(c.stage, Stage::Answered { .. }) {
                for u in [&c.caller.user, &c.callee] {
                    if !users.contains(u) {
                        users.push(u.clone());
                    }
                }
            }
        }
        users
    }

    /// The devices `user` takes part in answered legs of group call `g` with.
    fn devices_in(&self, g: CallId, user: &str) -> Vec<DeviceId> {
        let mut devices = Vec::new();
        for c in self.calls.values() {
            if c.conference != Some(g) {
                continue;
            }
            let device = match c.stage {
                Stage::Answered { device, .. } if c.callee == user => Some(device),
                Stage::Answered { .. } if c.caller.user == user => Some(c.caller.device),
                _ => None,
            };
            if let Some(d) = device.filter(|d| !devices.contains(d)) {
                devices.push(d);
            }
        }
        devices
    }

    fn send(&mut self, to: Party, frame: Frame) {
        self.outputs.push_back(Output::Frame { to, frame });
    }

    fn refuse(&mut self, to: Party, call_id: CallId, code: ErrorCode) {
        let reason = CallEndReason::Refused(code as u16);
        self.send(to, update(call_id, CallUpdateKind::Ended { reason }));
    }

    /// `caller` invites `invite.to`, whose devices `online` have a live session now. The
    /// invite's fields are checked already (`check_invite`), and its callee exists.
    pub fn invite(&mut self, now: Now, caller: Party, invite: CallInvite, online: &[DeviceId]) {
        let id = invite.call_id;
        if let Some(existing) = self.calls.get(&id) {
            // The same invite again (a resend after a reconnect) is answered with where it
            // stands; an id someone else uses is refused.
            if existing.caller == caller {
                if let Stage::Ringing { ringing, .. } = &existing.stage {
                    let devices = u16::try_from(ringing.len()).unwrap_or(u16::MAX);
                    self.send(caller, update(id, CallUpdateKind::Ringing { devices }));
                }
            } else {
                self.refuse(caller, id, ErrorCode::ProtocolViolation);
            }
            return;
        }
        if invite.to == caller.user {
            self.refuse(caller, id, ErrorCode::ProtocolViolation);
            return;
        }
        let conference = invite.conference;
        let mine = self.calls_of(&caller.user);
        if !mine.is_empty() && !joins(&mine, conference, &invite.to) {
            let glare = conference.is_none()
                && mine.iter().any(|c| {
                    c.conference.is_none()
                        && c.caller.user == invite.to
                        && c.callee == caller.user
                        && matches!(c.stage, Stage::Ringing { .. })
                });
            let reason = if glare {
                CallEndReason::Glare
            } else {
                CallEndReason::Refused(ErrorCode::LimitExceeded as u16)
            };
            self.send(caller, update(id, CallUpdateKind::Ended { reason }));
            return;
        }
        if self.calls.len() >= self.policy.max_calls {
            self.refuse(caller, id, ErrorCode::LimitExceeded);
            return;
        }
        if let Some(g) = conference {
            let mut users = self.participants(g);
            for u in [&caller.user, &invite.to] {
                if !users.contains(u) {
                    users.push(u.clone());
                }
            }
            if users.len() > MAX_CONFERENCE {
                self.refuse(caller, id, ErrorCode::LimitExceeded);
                return;
            }
        }
        let theirs = self.calls_of(&invite.to);
        if !theirs.is_empty() && !joins(&theirs, conference, &caller.user) {
            let reason = CallEndReason::Busy;
            self.send(caller.clone(), update(id, CallUpdateKind::Ended { reason }));
            let record = |outgoing: bool, peer: &str| CallRecord {
                call_id: id,
                peer: peer.to_owned(),
                outgoing,
                media: invite.media,
                started_ms: now.ms,
                answered_ms: 0,
                ended_ms: now.ms,
                end: reason,
                conference,
            };
            self.outputs.push_back(Output::Record {
                user: caller.user.clone(),
                record: record(true, &invite.to),
            });
            self.outputs.push_back(Output::Record {
                user: invite.to.clone(),
                record: record(false, &caller.user),
            });
            return;
        }
        // A callee already in the group call is rung only on the device it takes part with.
        let joined: Vec<DeviceId> = conference
            .map(|g| self.devices_in(g, &invite.to))
            .unwrap_or_default();
        let mut invite = invite;
        if !joined.is_empty() {
            invite.offers.retain(|o| joined.contains(&o.device));
        }
        let deadline = now.at + self.policy.ring_timeout;
        let mut ringing = Vec::new();
        for offer in &invite.offers {
            let to = Party::new(invite.to.clone(), offer.device);
            if online.contains(&offer.device) {
                ringing.push(offer.device);
                let frame = incoming(
                    id,
                    &caller,
                    (invite.media, conference),
                    offer,
                    self.policy.ring_timeout,
                );
                self.send(to, frame);
            } else {
                self.outputs.push_back(Output::Push { to });
            }
        }
        let devices = u16::try_from(ringing.len()).unwrap_or(u16::MAX);
        self.send(
            caller.clone(),
            update(id, CallUpdateKind::Ringing { devices }),
        );
        self.by_user
            .entry(caller.user.clone())
            .or_default()
            .push(id);
        self.by_user.entry(invite.to.clone()).or_default().push(id);
        self.calls.insert(
            id,
            Call {
                caller,
                callee: invite.to,
                media: invite.media,
                started_ms: now.ms,
                offered: invite.offers.iter().map(|o| o.device).collect(),
                offers: invite.offers,
                stage: Stage::Ringing { ringing, deadline },
                lost: Vec::new(),
                conference,
            },
        );
    }

    /// `by` does `action` in call `id` (checked already: `check_action`).
    pub fn action(&mut self, now: Now, by: Party, id: CallId, action: CallActionKind) {
        let Some(call) = self.calls.get_mut(&id) else {
            self.refuse(by, id, ErrorCode::UnknownCall);
            return;
        };
        let rung = call.callee == by.user && call.offered.contains(&by.device);
        if !call.is_participant(&by) && !rung {
            self.refuse(by, id, ErrorCode::UnknownCall);
            return;
        }
        match action {
            CallActionKind::Accept(answer) => {
                let Stage::Ringing { ringing, .. } = &call.stage else {
                    // Picked up twice, or on a second device after the first: that device
                    // was told `AnsweredElsewhere`; this one is late.
                    if call.answered_device().as_ref() != Some(&by) {
                        let device = call.answered_device().map_or(by.device, |p| p.device);
                        self.send(by, update(id, CallUpdateKind::AnsweredElsewhere { device }));
                    }
                    return;
                };
                if by.user != call.callee {
                    self.refuse(by, id, ErrorCode::ProtocolViolation);
                    return;
                }
                let others: Vec<DeviceId> = ringing
                    .iter()
                    .copied()
                    .filter(|d| *d != by.device)
                    .collect();
                call.stage = Stage::Answered {
                    device: by.device,
                    at_ms: now.ms,
                };
                call.offers = Vec::new();
                let caller = call.caller.clone();
                let conference = call.conference;
                // Only a newcomer completes the mesh: a user already in the group call picks
                // up a leg from a newcomer, who does the calling.
                let newcomer = conference.is_some_and(|g| {
                    self.calls.iter().all(|(cid, c)| {
                        *cid == id
                            || c.conference != Some(g)
                            || !matches!(c.stage, Stage::Answered { .. })
                            || (c.caller.user != by.user && c.callee != by.user)
                    })
                });
                let device = by.device;
                self.send(
                    caller.clone(),
                    update(id, CallUpdateKind::Accepted { device, answer }),
                );
                for other in others {
                    let to = Party::new(by.user.clone(), other);
                    self.send(to, update(id, CallUpdateKind::AnsweredElsewhere { device }));
                }
                if let Some(g) = conference.filter(|_| newcomer) {
                    // The newcomer calls everyone else already in (the mesh's other legs).
                    let others: Vec<String> = self
                        .participants(g)
                        .into_iter()
                        .filter(|u| *u != by.user && *u != caller.user)
                        .collect();
                    self.send(by, update(id, CallUpdateKind::Conference { others }));
                }
            }
            CallActionKind::Decline => match call.stage {
                Stage::Ringing { .. } if by.user == call.callee => {
                    self.end(now, id, CallEndReason::Declined)
                }
                // Declining an answered call (or as the caller) is hanging up.
                _ => self.hang_up(now, id, &by),
            },
            CallActionKind::Candidates(blob) => {
                let (caller, answered) = (call.caller.clone(), call.answered_device());
                let Some(callee) = answered else {
                    // Before an answer the other device is unknown: the offer carries the
                    // caller's candidates, the answer the callee's.
                    self.refuse(by, id, ErrorCode::ProtocolViolation);
                    return;
                };
                let to = if by == caller { callee } else { caller };
                self.send(to, update(id, CallUpdateKind::Candidates(blob)));
            }
            CallActionKind::Hangup => self.hang_up(now, id, &by),
        }
    }

    fn hang_up(&mut self, now: Now, id: CallId, by: &Party) {
        let Some(call) = self.calls.get(&id) else {
            return;
        };
        let reason = match call.stage {
            Stage::Ringing { .. } if *by == call.caller => CallEndReason::Cancelled,
            // A ringing device that hangs up declines.
            Stage::Ringing { .. } => CallEndReason::Declined,
            Stage::Answered { .. } => CallEndReason::HungUp,
        };
        self.end(now, id, reason);
    }

    /// `party`'s device has a live session again (a login, or a reconnect).
    pub fn device_online(&mut self, now: Now, party: &Party) {
        for id in self.by_user.get(&party.user).cloned().unwrap_or_default() {
            self.device_online_in(now, party, id);
        }
    }

    fn device_online_in(&mut self, now: Now, party: &Party, id: CallId) {
        let policy = self.policy;
        let Some(call) = self.calls.get_mut(&id) else {
            return;
        };
        call.lost.retain(|(p, _)| p != party);
        if call.callee != party.user {
            return;
        }
        let Stage::Ringing { ringing, deadline } = &mut call.stage else {
            return;
        };
        let Some(offer) = call.offers.iter().find(|o| o.device == party.device) else {
            return;
        };
        if ringing.contains(&party.device) {
            // A reconnect of a ringing device: its new session has not seen the ring.
            ringing.retain(|d| *d != party.device);
        }
        ringing.push(party.device);
        let left = deadline.saturating_duration_since(now.at);
        let frame = incoming(
            id,
            &call.caller,
            (call.media, call.conference),
            offer,
            left.min(policy.ring_timeout),
        );
        self.send(party.clone(), frame);
    }

    /// `party`'s device has no live session any more.
    pub fn device_offline(&mut self, now: Now, party: &Party) {
        for id in self.by_user.get(&party.user).cloned().unwrap_or_default() {
            self.device_offline_in(now, party, id);
        }
    }

    fn device_offline_in(&mut self, now: Now, party: &Party, id: CallId) {
        let grace = self.policy.reconnect_grace;
        let Some(call) = self.calls.get_mut(&id) else {
            return;
        };
        if let Stage::Ringing { ringing, .. } = &mut call.stage {
            if call.callee == party.user {
                ringing.retain(|d| *d != party.device);
            }
        }
        if call.is_participant(party) && !call.lost.iter().any(|(p, _)| p == party) {
            call.lost.push((party.clone(), now.at + grace));
        }
    }

    /// Ends what is due: rings past their timeout, participants gone past the grace.
    pub fn handle_timeout(&mut self, now: Now) {
        let due: Vec<(CallId, CallEndReason)> = self
            .calls
            .iter()
            .filter_map(|(id, call)| {
                if call.lost.iter().any(|(_, at)| *at <= now.at) {
                    return Some((*id, CallEndReason::ConnectionLost));
                }
                match call.stage {
                    Stage::Ringing { deadline, .. } if deadline <= now.at => {
                        Some((*id, CallEndReason::Missed))
                    }
                    _ => None,
                }
            })
            .collect();
        for (id, reason) in due {
            self.end(now, id, reason);
        }
    }

    /// The edge is going away: every call ends.
    pub fn shut_down(&mut self, now: Now) {
        let ids: Vec<CallId> = self.calls.keys().copied().collect();
        for id in ids {
            self.end(now, id, CallEndReason::ShuttingDown);
        }
    }

    fn end(&mut self, now: Now, id: CallId, reason: CallEndReason) {
        let Some(call) = self.calls.remove(&id) else {
            return;
        };
        for user in [&call.caller.user, &call.callee] {
            if let Some(ids) = self.by_user.get_mut(user) {
                ids.retain(|c| *c != id);
                if ids.is_empty() {
                    self.by_user.remove(user);
                }
            }
        }
        let ended = || update(id, CallUpdateKind::Ended { reason });
        self.send(call.caller.clone(), ended());
        let (answered_ms, callee_devices) = match &call.stage {
            Stage::Ringing { ringing, .. } => (0, ringing.clone()),
            Stage::Answered { device, at_ms } => (*at_ms, vec![*device]),
        };
        for device in callee_devices {
            self.send(Party::new(call.callee.clone(), device), ended());
        }
        let record = |outgoing: bool, peer: &str| CallRecord {
            call_id: id,
            peer: peer.to_owned(),
            outgoing,
            media: call.media,
            started_ms: call.started_ms,
            answered_ms,
            ended_ms: now.ms.max(call.started_ms),
            end: reason,
            conference: call.conference,
        };
        self.outputs.push_back(Output::Record {
            user: call.caller.user.clone(),
            record: record(true, &call.callee),
        });
        self.outputs.push_back(Output::Record {
            user: call.callee.clone(),
            record: record(false, &call.caller.user),
        });
    }
}

fn incoming(
    call_id: CallId,
    caller: &Party,
    (media, conference): (CallMedia, Option<CallId>),
    offer: &DeviceEnvelope,
    left: Duration,
) -> Frame {
    CallIncoming {
        call_id,
        from: caller.user.clone(),
        from_device: caller.device,
        media,
        offer: offer.envelope.clone(),
        rings_for_ms: u32::try_from(left.as_millis()).unwrap_or(u32::MAX),
        conference,
    }
    .into()
}

/// Whether a user in `calls` may take part in one more leg of `conference` with `peer`: all
/// its calls are legs of that group call, none with `peer` already, and the mesh has room.
fn joins(calls: &[&Call], conference: Option<CallId>, peer: &str) -> bool {
    conference.is_some()
        && calls.len() < MAX_CONFERENCE - 1
        && calls.iter().all(|c| c.conference == conference)
        && !calls
            .iter()
            .any(|c| c.caller.user == peer || c.callee == peer)
}

#[cfg(test)]
#[path = "switchboard_tests.rs"]
mod tests;
