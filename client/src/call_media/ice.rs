//! An ICE-style agent (RFC 8445 checks, RFC 7675 consent) as a state machine without
//! sockets or clocks.
//!
//! Each local base ([`Via::Host`]: the media socket itself; [`Via::Relay`]: through the TURN
//! allocation) is paired with each remote candidate. Pairs are checked in priority order,
//! one every [`PACING`], with Binding requests signed with the peer's password; the
//! controlling side (the caller) nominates the best pair that answered, with
//! USE-CANDIDATE, and both sides send media on the selected pair. Every pair that answered
//! keeps being checked (the selected one every [`CONSENT_INTERVAL`]); when the selected
//! pair has not answered for [`CONSENT_TIMEOUT`] the call moves to the best pair still
//! answering (the relay when the direct path died), and back to a better pair once it has
//! answered for [`RECOVERY_HOLD`] (the direct path came back).
//!
//! Inputs: [`IceAgent::add_remote_candidate`], [`IceAgent::handle_stun`],
//! [`IceAgent::handle_timeout`]. Outputs, drained after every input:
//! [`IceAgent::poll_transmit`], [`IceAgent::poll_event`], then [`IceAgent::poll_timeout`].

use super::description::{priority, Candidate, CandidateKind};
use super::wire::{self, attr, Builder, StunMessage, Tid};
use super::{PathKind, Role};
use std::collections::VecDeque;
use std::net::SocketAddr;
use std::time::{Duration, Instant};
use stun_types::message::{MessageClass, BINDING};

/// Time between two new checks (RFC 8445's Ta; 50 ms there, 20 ms for a handful of pairs).
pub const PACING: Duration = Duration::from_millis(20);
/// First retransmission timeout of a check; doubles on each retransmission.
const CHECK_RTO: Duration = Duration::from_millis(100);
/// Transmissions of one check before it counts as unanswered.
const CHECK_TRIES: u8 = 5;
/// How often the selected pair is checked (consent and keepalive).
pub const CONSENT_INTERVAL: Duration = Duration::from_millis(300);
/// How often other pairs are checked once they answered or failed (so a fallback is known
/// to work before it is needed, and a path that comes back is noticed).
const BACKUP_INTERVAL: Duration = Duration::from_millis(1000);
/// A pair that has not answered for this long has lost consent. RFC 7675 says 30 s; a call
/// cannot wait that long, and with checks every 300 ms and retransmissions a live path
/// answers many times within it even at 20 % loss.
pub const CONSENT_TIMEOUT: Duration = Duration::from_millis(2500);
/// How long the controlling side waits after the first answered pair for a better one
/// before nominating.
const NOMINATION_WAIT: Duration = Duration::from_millis(150);
/// How long a better pair than the selected one must have answered without a break before
/// the controlling side moves the call back to it (a direct path that came back).
pub const RECOVERY_HOLD: Duration = Duration::from_secs(3);
/// Most pairs an agent keeps (16 remote candidates × 2 local bases).
const MAX_PAIRS: usize = 32;

/// The local base a datagram leaves from or arrived at.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Via {
    /// The media socket, straight.
    Host,
    /// The TURN allocation (the datagram goes to the TURN server, wrapped).
    Relay,
}

/// A datagram the agent wants sent.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Transmit {
    /// Which local base sends it.
    pub via: Via,
    /// The remote address.
    pub to: SocketAddr,
    /// The STUN message.
    pub data: Vec<u8>,
}

/// What the agent tells its owner.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum IceEvent {
    /// Media now goes on this pair (first selection, or a switch).
    Selected {
        /// The local base.
        via: Via,
        /// The remote address.
        remote: SocketAddr,
        /// Direct or through a relay.
        path: PathKind,
    },
    /// The selected pair lost consent and no other pair answers.
    Disconnected,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum PairState {
    Waiting,
    InProgress,
    Succeeded,
    Failed,
}

#[derive(Debug)]
struct Check {
    tid: Tid,
    next_retx: Instant,
    tries: u8,
    use_candidate: bool,
    bytes: Vec<u8>,
}

#[derive(Debug)]
struct Pair {
    via: Via,
    remote: Candidate,
    priority: u64,
    state: PairState,
    last_ok: Option<Instant>,
    /// Start of the current unbroken run of answers.
    ok_since: Option<Instant>,
    check: Option<Check>,
    next_check: Option<Instant>,
    triggered: bool,
    nominated: bool,
}

impl Pair {
    fn path(&self) -> PathKind {
        if self.via == Via::Relay || self.remote.kind == CandidateKind::Relayed {
            PathKind::Relayed
        } else {
            PathKind::Direct
        }
    }

    fn alive(&self, now: Instant) -> bool {
        self.last_ok
            .is_some_and(|t| now.saturating_duration_since(t) < CONSENT_TIMEOUT)
    }
}

/// The agent for one call. See the module doc for the call order.
pub struct IceAgent {
    role: Role,
    tiebreaker: u64,
    local_ufrag: String,
    local_pwd: String,
    remote_ufrag: String,
    remote_pwd: String,
    /// Local bases and their candidate priorities.
    locals: Vec<(Via, u32)>,
    pairs: Vec<Pair>,
    selected: Option<usize>,
    /// When the controlling side stops waiting for better pairs and nominates.
    nominate_at: Option<Instant>,
    next_pace: Instant,
    transmits: VecDeque<Transmit>,
    events: VecDeque<IceEvent>,
    disconnected: bool,
}

/// The credentials and local bases an agent starts with.
pub struct IceConfig {
    /// Caller (controlling) or callee.
    pub role: Role,
    /// This side's username fragment and password.
    pub local: (String, String),
    /// The peer's username fragment and password.
    pub remote: (String, String),
    /// Local bases with their candidates' priorities.
    pub locals: Vec<(Via, u32)>,
}

impl IceAgent {
    /// An agent with no remote candidates yet.
    pub fn new(now: Instant, cfg: IceConfig) -> Self {
        Self {
            role: cfg.role,
            tiebreaker: rand::random(),
            local_ufrag: cfg.local.0,
            local_pwd: cfg.local.1,
            remote_ufrag: cfg.remote.0,
            remote_pwd: cfg.remote.1,
            locals: cfg.locals,
            pairs: Vec::new(),
            selected: None,
            nominate_at: None,
            next_pace: now,
            transmits: VecDeque::new(),
            events: VecDeque::new(),
            disconnected: false,
        }
    }

    /// Pairs `c` with every local base (duplicates are ignored).
    pub fn add_remote_candidate(&mut self, c: Candidate) {
        for (via, _) in self.locals.clone() {
            self.add_pair(via, c);
        }
    }

    /// Pairs `c` with the local base `via`.
    fn add_pair(&mut self, via: Via, c: Candidate) {
        let Some(local_prio) = self.locals.iter().find(|(v, _)| *v == via).map(|l| l.1) else {
            return;
        };
        if self.pairs.len() >= MAX_PAIRS || self.find(via, c.addr).is_some() {
            return;
        }
        let (g, d) = match self.role {
            Role::Caller => (u64::from(local_prio), u64::from(c.priority)),
            Role::Callee => (u64::from(c.priority), u64::from(local_prio)),
        };
        let priority = (g.min(d) << 32) + 2 * g.max(d) + u64::from(g > d);
        self.pairs.push(Pair {
            via,
            remote: c,
            priority,
            state: PairState::Waiting,
            last_ok: None,
            ok_since: None,
            check: None,
            next_check: None,
            triggered: false,
            nominated: false,
        });
    }

    fn find(&self, via: Via, remote: SocketAddr) -> Option<usize> {
        self.pairs
            .iter()
            .position(|p| p.via == via && p.remote.addr == remote)
    }

    /// The selected pair: local base, remote address, path kind.
    pub fn selected(&self) -> Option<(Via, SocketAddr, PathKind)> {
        self.selected.map(|i| {
            let p = &self.pairs[i];
            (p.via, p.remote.addr, p.path())
        })
    }

    /// A STUN message that arrived at `via` from `from`. Returns false when it is not a
    /// Binding request or response for this agent (the caller may try it elsewhere).
    pub fn handle_stun(
        &mut self,
        now: Instant,
        via: Via,
        from: SocketAddr,
        msg: &StunMessage<'_>,
    ) -> bool {
        if !msg.has_method(BINDING) {
            return false;
        }
        if msg.has_class(MessageClass::Request) {
            self.on_request(now, via, from, msg)
        } else if msg.is_response() {
            self.on_response(now, via, from, msg)
        } else {
            false
        }
    }

    fn on_request(
        &mut self,
        now: Instant,
        via: Via,
        from: SocketAddr,
        msg: &StunMessage<'_>,
    ) -> bool {
        let Some(user) = wire::username(msg) else {
            return false;
        };
        let expected = format!("{}:{}", self.local_ufrag, self.remote_ufrag);
        if user != expected || !wire::verify_short(msg, &self.local_pwd) {
            return false;
        }
        if !self.locals.iter().any(|(v, _)| *v == via) {
            return true;
        }
        let i = match self.find(via, from) {
            Some(i) => i,
            None => {
                // Peer-reflexive: the peer reached us from an address it did not signal.
                // Paired only with the base it arrived at (RFC 8445 §7.3.1.3): an address
                // learned through the relay is not a direct path.
                let prio = wire::u32_attr(msg, attr::PRIORITY)
                    .filter(|p| *p > 0)
                    .unwrap_or_else(|| priority(CandidateKind::PeerReflexive, 65535));
                self.add_pair(
                    via,
                    Candidate {
                        kind: if via == Via::Relay {
                            CandidateKind::Relayed
                        } else {
                            CandidateKind::PeerReflexive
                        },
                        addr: from,
                        priority: prio,
                    },
                );
                match self.find(via, from) {
                    Some(i) => i,
                    None => return true,
                }
            }
        };
        if let Some(reply) = Builder::success(msg) {
            self.transmits.push_back(Transmit {
                via,
                to: from,
                data: reply.mapped(from).sign_short(&self.local_pwd),
            });
        }
        let use_candidate = msg.has_attribute(attr::USE_CANDIDATE);
        let p = &mut self.pairs[i];
        if p.state != PairState::Succeeded || !p.alive(now) {
            p.triggered = true;
            match &mut p.check {
                None => p.next_check = Some(now),
                // RFC 8445 §7.3.1.4: a triggered check on a pair in progress goes out now
                // (our first check may have been dropped, e.g. by a relay that had no
                // permission for us yet) instead of waiting for its retransmission timer.
                Some(c) => c.next_retx = c.next_retx.min(now),
            }
        }
        if use_candidate && self.role == Role::Callee {
            p.nominated = true;
            if p.alive(now) {
                self.select(i);
            }
        }
        true
    }

    fn on_response(
        &mut self,
        now: Instant,
        via: Via,
        from: SocketAddr,
        msg: &StunMessage<'_>,
    ) -> bool {
        let tid = msg.transaction_id();
        let Some(i) = self
            .pairs
            .iter()
            .position(|p| p.check.as_ref().is_some_and(|c| c.tid == tid))
        else {
            return false;
        };
        if !wire::verify_short(msg, &self.remote_pwd) {
            return true;
        }
        let p = &mut self.pairs[i];
        // Symmetric: the answer must come back the way the check went.
        if p.via != via || p.remote.addr != from {
            return true;
        }
        let check = p.check.take();
        if !msg.has_class(MessageClass::Success) {
            // 487 role conflict and the like: the check failed; try again later.
            p.next_check = Some(now + BACKUP_INTERVAL);
            return true;
        }
        if !p.alive(now) {
            p.ok_since = Some(now);
        }
        p.state = PairState::Succeeded;
        p.last_ok = Some(now);
        p.triggered = false;
        p.next_check = Some(now + BACKUP_INTERVAL);
        if self.role == Role::Caller && self.selected.is_none() && self.nominate_at.is_none() {
            self.nominate_at = Some(now + NOMINATION_WAIT);
        }
        let nominated_check = check.is_some_and(|c| c.use_candidate);
        match self.role {
            Role::Caller if nominated_check => {
                self.pairs[i].nominated = true;
                self.select(i);
            }
            Role::Callee if self.pairs[i].nominated => self.select(i),
            _ => {}
        }
        if self.selected == Some(i) {
            self.pairs[i].next_check = Some(now + CONSENT_INTERVAL);
        }
        true
    }

    fn select(&mut self, i: usize) {
        if self.selected == Some(i) {
            return;
        }
        self.selected = Some(i);
        self.disconnected = false;
        // One nomination at a time: an older one answered late must not move the call back.
        for (j, p) in self.pairs.iter_mut().enumerate() {
            if j != i {
                p.nominated = false;
                if let Some(c) = &mut p.check {
                    c.use_candidate = false;
                }
            }
        }
        let p = &self.pairs[i];
        self.events.push_back(IceEvent::Selected {
            via: p.via,
            remote: p.remote.addr,
            path: p.path(),
        });
    }

    /// Sends a check on pair `i` (a new transaction).
    fn send_check(&mut self, now: Instant, i: usize, use_candidate: bool) {
        let local_prio = self
            .locals
            .iter()
            .find(|(v, _)| *v == self.pairs[i].via)
            .map_or(1, |(_, p)| *p);
        let mut b = Builder::binding()
            .username(&format!("{}:{}", self.remote_ufrag, self.local_ufrag))
            .u32(attr::PRIORITY, local_prio);
        b = match self.role {
            Role::Caller => b.u64(attr::ICE_CONTROLLING, self.tiebreaker),
            Role::Callee => b.u64(attr::ICE_CONTROLLED, self.tiebreaker),
        };
        if use_candidate {
            b = b.raw(attr::USE_CANDIDATE, &[]);
        }
        let tid = b.tid();
        let bytes = b.sign_short(&self.remote_pwd);
        let p = &mut self.pairs[i];
        if p.state == PairState::Waiting {
            p.state = PairState::InProgress;
        }
        p.triggered = false;
        self.transmits.push_back(Transmit {
            via: p.via,
            to: p.remote.addr,
            data: bytes.clone(),
        });
        p.check = Some(Check {
            tid,
            next_retx: now + CHECK_RTO,
            tries: 1,
            use_candidate,
            bytes,
        });
        p.next_check = None;
    }

    /// Retransmits, starts paced and periodic checks, nominates, notices lost consent.
    pub fn handle_timeout(&mut self, now: Instant) {
        // Retransmissions and unanswered checks.
        for p in &mut self.pairs {
            let Some(c) = &mut p.check else { continue };
            if c.next_retx > now {
                continue;
            }
            if c.tries >= CHECK_TRIES {
                p.check = None;
                if p.state != PairState::Succeeded {
                    p.state = PairState::Failed;
                }
                p.next_check = Some(now + BACKUP_INTERVAL);
                continue;
            }
            c.tries += 1;
            c.next_retx = now + CHECK_RTO * (1 << (c.tries - 1));
            self.transmits.push_back(Transmit {
                via: p.via,
                to: p.remote.addr,
                data: c.bytes.clone(),
            });
        }
        // Lost consent on the selected pair: move to the best pair still answering.
        if let Some(s) = self.selected {
            if !self.pairs[s].alive(now) {
                self.pairs[s].nominated = false;
                match self.best_alive(now) {
                    Some(i) => {
                        self.select(i);
                        if self.role == Role::Caller {
                            self.pairs[i].check = None;
                            self.send_check(now, i, true);
                        }
                    }
                    None if !self.disconnected => {
                        self.disconnected = true;
                        self.events.push_back(IceEvent::Disconnected);
                    }
                    None => {}
                }
            }
        }
        // Back to a better pair (the direct path) once it has answered for a while. Checked
        // on every call; the periodic checks make sure there is one at least every second.
        if let (Role::Caller, Some(s)) = (self.role, self.selected) {
            let nominating = self
                .pairs
                .iter()
                .any(|p| p.check.as_ref().is_some_and(|c| c.use_candidate));
            if !nominating && self.pairs[s].alive(now) {
                let current = self.pairs[s].priority;
                let better = self
                    .pairs
                    .iter()
                    .enumerate()
                    .filter(|(_, p)| {
                        p.priority > current
                            && p.alive(now)
                            && p.ok_since
                                .is_some_and(|t| now.saturating_duration_since(t) >= RECOVERY_HOLD)
                    })
                    .max_by_key(|(_, p)| p.priority)
                    .map(|(i, _)| i);
                if let Some(i) = better {
                    self.pairs[i].check = None;
                    self.send_check(now, i, true);
                }
            }
        }
        // Nomination by the controlling side.
        if self.role == Role::Caller && self.selected.is_none() {
            let nominating = self
                .pairs
                .iter()
                .any(|p| p.check.as_ref().is_some_and(|c| c.use_candidate));
            let waited = self.nominate_at.is_some_and(|t| t <= now);
            if waited {
                self.nominate_at = None;
            }
            if !nominating {
                if let Some(best) = self.best_alive(now) {
                    let better_pending = self.pairs.iter().any(|p| {
                        p.priority > self.pairs[best].priority
                            && matches!(p.state, PairState::Waiting | PairState::InProgress)
                    });
                    if !better_pending || waited {
                        self.pairs[best].check = None;
                        self.send_check(now, best, true);
                    }
                }
            }
        }
        // Periodic checks on pairs that answered or failed.
        for i in 0..self.pairs.len() {
            let p = &self.pairs[i];
            if p.check.is_none() && p.next_check.is_some_and(|t| t <= now) && !p.triggered {
                self.send_check(now, i, false);
            }
        }
        // One new (or triggered) check per pacing interval.
        if self.next_pace <= now {
            let next = self
                .pairs
                .iter()
                .enumerate()
                .filter(|(_, p)| {
                    p.check.is_none() && (p.triggered || p.state == PairState::Waiting)
                })
                .max_by_key(|(_, p)| (p.triggered, p.priority))
                .map(|(i, _)| i);
            if let Some(i) = next {
                let nominate = self.role == Role::Caller && self.pairs[i].nominated;
                self.send_check(now, i, nominate);
                self.next_pace = now + PACING;
            }
        }
    }

    fn best_alive(&self, now: Instant) -> Option<usize> {
        self.pairs
            .iter()
            .enumerate()
            .filter(|(_, p)| p.alive(now))
            .max_by_key(|(_, p)| p.priority)
            .map(|(i, _)| i)
    }

    /// When [`IceAgent::handle_timeout`] must run next.
    pub fn poll_timeout(&self) -> Option<Instant> {
        let mut t: Option<Instant> = None;
        let mut at = |x: Instant| t = Some(t.map_or(x, |t| t.min(x)));
        for (i, p) in self.pairs.iter().enumerate() {
            if let Some(c) = &p.check {
                at(c.next_retx);
            } else if p.triggered || p.state == PairState::Waiting {
                at(self.next_pace);
            } else if let Some(n) = p.next_check {
                at(n);
            }
            if self.selected == Some(i) && !self.disconnected {
                if let Some(ok) = p.last_ok {
                    at(ok + CONSENT_TIMEOUT);
                }
            }
        }
        if self.selected.is_none() && self.role == Role::Caller {
            if let Some(n) = self.nominate_at {
                at(n);
            }
        }
        t
    }

    /// The next datagram to send.
    pub fn poll_transmit(&mut self) -> Option<Transmit> {
        self.transmits.pop_front()
    }

    /// The next event.
    pub fn poll_event(&mut self) -> Option<IceEvent> {
        self.events.pop_front()
    }
}

#[cfg(test)]
mod tests;
