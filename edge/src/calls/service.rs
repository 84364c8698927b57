//! The task that runs the [`Switchboard`]: one owner for every call on this edge. Sessions
//! hand it requests without waiting; it answers through the registry (the same path as
//! presence and typing), wakes offline callees through the notifier, and writes call records.

use super::switchboard::{CallPolicy, Now, Output, Party, Switchboard};
use crate::notifier::Notifier;
use crate::registry::Registry;
use crate::session::CallRequest;
use crate::shared::now_ms;
use missive_proto::{
    CallEndReason, CallInvite, CallUpdate, CallUpdateKind, ClientMsgId, DeviceId, DeviceMismatch,
    ErrorCode, Frame, UserDevices,
};
use missive_storage::{MailboxId, Store};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Instant;
use tokio::sync::{mpsc, oneshot};

/// Requests waiting for the switchboard task, at most; past it a request is refused
/// (`LimitExceeded`) rather than queued without bound.
const QUEUE: usize = 4096;

/// Counters for `/metrics`.
#[derive(Debug, Default)]
pub struct CallStats {
    /// Calls ringing or answered now.
    pub active: AtomicU64,
    /// Invites that rang.
    pub started: AtomicU64,
    /// Calls answered.
    pub answered: AtomicU64,
    /// Calls ended, by reason (index: [`reason_index`]).
    pub ended: [AtomicU64; REASONS.len()],
    /// Requests refused because the switchboard's queue was full.
    pub overloaded: AtomicU64,
}

/// Stable names of end reasons, for metric labels.
pub const REASONS: [&str; 9] = [
    "hung_up",
    "cancelled",
    "declined",
    "busy",
    "missed",
    "glare",
    "connection_lost",
    "refused",
    "shutting_down",
];

/// The index of `reason` in [`REASONS`].
pub fn reason_index(reason: CallEndReason) -> usize {
    match reason {
        CallEndReason::HungUp => 0,
        CallEndReason::Cancelled => 1,
        CallEndReason::Declined => 2,
        CallEndReason::Busy => 3,
        CallEndReason::Missed => 4,
        CallEndReason::Glare => 5,
        CallEndReason::ConnectionLost => 6,
        CallEndReason::Refused(_) => 7,
        CallEndReason::ShuttingDown => 8,
    }
}

enum Command {
    Request(Party, CallRequest),
    Online(Party),
    Offline(Party),
    Policy(CallPolicy),
    ShutDown(oneshot::Sender<()>),
}

/// Handle to the switchboard task.
#[derive(Debug, Clone)]
pub struct CallService {
    tx: mpsc::Sender<Command>,
    /// Counters for `/metrics`.
    pub stats: Arc<CallStats>,
}

impl std::fmt::Debug for Command {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Self::Request(..) => "Request",
            Self::Online(_) => "Online",
            Self::Offline(_) => "Offline",
            Self::Policy(_) => "Policy",
            Self::ShutDown(_) => "ShutDown",
        })
    }
}

/// What the task carries outputs to.
struct Wiring {
    store: Store,
    registry: Arc<Registry>,
    notifier: Notifier,
    stats: Arc<CallStats>,
}

impl CallService {
    /// Spawns the switchboard task on the current runtime.
    pub fn start(
        policy: CallPolicy,
        store: Store,
        registry: Arc<Registry>,
        notifier: Notifier,
    ) -> Self {
        let (tx, rx) = mpsc::channel(QUEUE);
        let stats = Arc::new(CallStats::default());
        let wiring = Wiring {
            store,
            registry,
            notifier,
            stats: stats.clone(),
        };
        tokio::spawn(run(Switchboard::new(policy), rx, wiring));
        Self { tx, stats }
    }

    /// A request of `party`'s device (checked by its session). Never waits: with the queue
    /// full the request is refused as `LimitExceeded`.
    pub fn request(&self, registry: &Registry, party: Party, request: CallRequest) {
        let call_id = match &request {
            CallRequest::Invite(i) => i.call_id,
            CallRequest::Action(a) => a.call_id,
        };
        if self
            .tx
            .try_send(Command::Request(party.clone(), request))
            .is_err()
        {
            self.stats.overloaded.fetch_add(1, Ordering::Relaxed);
            let reason = CallEndReason::Refused(ErrorCode::LimitExceeded.as_u16());
            let frame: Frame = CallUpdate {
                call_id,
                update: CallUpdateKind::Ended { reason },
            }
            .into();
            registry.forward_to_device(&MailboxId::new(party.user, party.device), &frame);
        }
    }

    /// `party`'s device logged in (a session speaking version 5 or later).
    pub fn device_online(&self, party: Party) {
        self.tell(Command::Online(party));
    }

    /// `party`'s device's session ended.
    pub fn device_offline(&self, party: Party) {
        self.tell(Command::Offline(party));
    }

    /// New timers and limits (SIGHUP).
    pub fn set_policy(&self, policy: CallPolicy) {
        self.tell(Command::Policy(policy));
    }

    /// Ends every call (the edge is draining) and waits until the participants were told.
    pub async fn shut_down(&self) {
        let (done, wait) = oneshot::channel();
        if self.tx.send(Command::ShutDown(done)).await.is_ok() {
            let _ = wait.await;
        }
    }

    fn tell(&self, command: Command) {
        if self.tx.try_send(command).is_err() {
            // A presence change of a device lost under overload: at worst a late device does
            // not ring, or a call ends at its ring timeout instead of the grace.
            self.stats.overloaded.fetch_add(1, Ordering::Relaxed);
        }
    }
}

fn now() -> Now {
    Now {
        at: Instant::now(),
        ms: now_ms(),
    }
}

async fn run(mut board: Switchboard, mut rx: mpsc::Receiver<Command>, wiring: Wiring) {
    loop {
        let deadline = board.poll_timeout();
        let command = tokio::select! {
            c = rx.recv() => match c {
                Some(c) => c,
                None => return,
            },
            () = sleep_until(deadline) => {
                board.handle_timeout(now());
                wiring.carry(&mut board);
                continue;
            }
        };
        match command {
            Command::Request(party, CallRequest::Invite(invite)) => {
                // The switchboard decides on who exists and who is online; this side looks.
                match wiring.store.devices(&invite.to) {
                    Ok(devices) if devices.is_empty() => {
                        wiring.refuse(&party, &invite, ErrorCode::UnknownRecipient)
                    }
                    Ok(devices) => {
                        let mut offered: Vec<DeviceId> =
                            invite.offers.iter().map(|o| o.device).collect();
                        offered.sort_unstable();
                        if offered == devices {
                            let online = wiring.registry.online_devices(&invite.to);
                            board.invite(now(), party, invite, &online);
                        } else {
                            // Every device must ring: the caller learns the current list (as
                            // for a send) and seals the offer again.
                            let frame: Frame = DeviceMismatch {
                                client_msg_id: ClientMsgId(invite.call_id.0),
                                current: vec![UserDevices {
                                    user: invite.to.clone(),
                                    devices,
                                }],
                            }
                            .into();
                            wiring.frame(&party, &frame);
                        }
                    }
                    Err(_) => wiring.refuse(&party, &invite, ErrorCode::StorageUnavailable),
                }
            }
            Command::Request(party, CallRequest::Action(a)) => {
                board.action(now(), party, a.call_id, a.action)
            }
            Command::Online(party) => board.device_online(now(), &party),
            Command::Offline(party) => board.device_offline(now(), &party),
            Command::Policy(policy) => board.set_policy(policy),
            Command::ShutDown(done) => {
                board.shut_down(now());
                wiring.carry(&mut board);
                let _ = done.send(());
                continue;
            }
        }
        wiring.carry(&mut board);
    }
}

async fn sleep_until(deadline: Option<Instant>) {
    match deadline {
        Some(at) => tokio::time::sleep_until(at.into()).await,
        None => std::future::pending().await,
    }
}

impl Wiring {
    fn refuse(&self, to: &Party, invite: &CallInvite, code: ErrorCode) {
        let frame: Frame = CallUpdate {
            call_id: invite.call_id,
            update: CallUpdateKind::Ended {
                reason: CallEndReason::Refused(code.as_u16()),
            },
        }
        .into();
        self.count(&frame);
        self.frame(to, &frame);
    }

    fn frame(&self, to: &Party, frame: &Frame) {
        let mb = MailboxId::new(to.user.clone(), to.device);
        self.registry.forward_to_device(&mb, frame);
    }

    /// Carries every output of the switchboard out.
    fn carry(&self, board: &mut Switchboard) {
        while let Some(out) = board.poll_output() {
            match out {
                Output::Frame { to, frame } => {
                    self.count(&frame);
                    self.frame(&to, &frame);
                }
                Output::Push { to } => self
                    .notifier
                    .wake_for_call(&MailboxId::new(to.user, to.device)),
                Output::Record { user, record } => {
                    if record.outgoing {
                        self.stats.ended[reason_index(record.end)].fetch_add(1, Ordering::Relaxed);
                    }
                    let write = self.store.record_call(&user, record);
                    tokio::spawn(async move {
                        if let Err(e) = write.await {
                            tracing::warn!(%user, error = %e, "call record not stored");
                        }
                    });
                }
            }
        }
        self.stats
            .active
            .store(board.len() as u64, Ordering::Relaxed);
    }

    fn count(&self, frame: &Frame) {
        let Frame::CallUpdate(u) = frame else { return };
        let counter = match &u.update {
            CallUpdateKind::Ringing { .. } => &self.stats.started,
            CallUpdateKind::Accepted { .. } => &self.stats.answered,
            // Refusals and lost glare races leave no record: counted here, once (only the
            // asking device hears of them). Every other end is counted on its caller's record.
            CallUpdateKind::Ended { reason }
                if matches!(reason, CallEndReason::Refused(_) | CallEndReason::Glare) =>
            {
                &self.stats.ended[reason_index(*reason)]
            }
            _ => return,
        };
        counter.fetch_add(1, Ordering::Relaxed);
    }
}
