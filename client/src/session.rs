//! What the client decides once logged in, as a plain state machine (no sockets, no clocks).
//!
//! The [`Session`] outlives connections: it holds the outbox of unacknowledged sends, the
//! presence subscriptions, the duplicate filter and the acknowledgement state, and is told
//! when a connection comes and goes.
//!
//! Inputs: [`Session::connected`] / [`Session::disconnected`] around each logged-in
//! connection; [`Session::handle_frame`] for every frame received; the command methods
//! ([`Session::send`], [`Session::send_group`], [`Session::ack`], ...) for the app's requests;
//! [`Session::handle_timeout`] when [`Session::poll_timeout`]'s instant has passed.
//!
//! Outputs: after each input (or batch of frame inputs followed by
//! [`Session::flush_acks`]), the caller drains [`Session::poll_output`] until `None` and acts
//! on each [`Output`] **in order**: an `Events` output must reach the app before a later
//! `Transmit(AckDelivery)` is written, which is what "ack after handing to the app" relies on.

use crate::call::{CallBook, CallDo, CallEvent, CallOffer, PendingInvite};
use crate::content::{seal, CallSignal, CallSignalKind, Content, DevicePlaintext, Opened};
use crate::dedup::{DeliveryKey, DeliveryKind, SeenSet};
use crate::delivery_stats::DeliveryCounters;
use crate::devices::DeviceDirectory;
use crate::e2ee::sealer::{Readiness, Sealer};
use crate::e2ee::E2eeStore;
use crate::event::{Event, ReceiptStatus};
use crate::group::{GroupReadiness, Groups, Unopened, WallClock};
use crate::post_keys::PostKeys;
use crate::receipt_id::ReceiptIds;
use crate::{ClientError, SendReceipt};
use missive_proto::{
    AckDelivery, AckGroup, ClientMsgId, Deliver, DeviceId, DeviceMismatch, ErrorCode, Frame,
    GroupId, GroupOp, GroupRead, GroupRequest, GroupSend, Payload, Ping, Pong, ServerSeq,
    SetPresenceVisibility, StoryPost, SubscribePresence, Typing, Visibility,
};
use missive_proto::{
    CallAction, CallActionKind, CallEndReason, CallId, CallInvite, CallMedia, CallUpdateKind,
};
use std::collections::{BTreeMap, BTreeSet, HashMap, VecDeque};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// The client pings the server this often (the edge's idle timeout is 60 s).
pub(crate) const PING_INTERVAL: Duration = Duration::from_secs(15);
/// A connection with no frame from the server for this long is considered dead.
pub(crate) const DEAD_AFTER: Duration = Duration::from_secs(45);
/// Longest a lazily held ack of server "delivered" receipts waits for a frame to ride with.
pub(crate) const RECEIPT_ACK_DELAY: Duration = Duration::from_millis(200);
/// Receipts held unacknowledged at most (well below the server's delivery window).
pub(crate) const LAZY_ACK_LIMIT: usize = 32;
/// How long a send refused with `RateLimited` / `TooManyInFlight` / `ShuttingDown` waits
/// before going again (a reconnect sends it sooner).
pub(crate) const RETRY_DELAY: Duration = Duration::from_millis(200);
/// How long a send refused with `StorageUnavailable` / `MailboxFull` waits before going again.
pub(crate) const SLOW_RETRY_DELAY: Duration = Duration::from_secs(2);
/// Sends on the wire without an answer, per connection (the edge refuses above 1024).
pub(crate) const MAX_IN_FLIGHT: usize = 512;

/// Something the caller must do.
#[derive(Debug)]
pub(crate) enum Output {
    /// Save the E2EE state now, before anything that follows leaves (a ciphertext made with
    /// it, an acknowledgement of what it decrypted).
    Persist,
    /// Write this frame to the connection.
    Transmit(Frame),
    /// Hand these events to the app, together (they came from one frame).
    Events(Vec<Event>),
    /// Complete the waiters of this send.
    SendDone {
        /// The send.
        id: ClientMsgId,
        /// Receipt or failure.
        result: Result<SendReceipt, ClientError>,
    },
    /// End this connection and reconnect (after `retry_after`, or the backoff schedule).
    Disconnect {
        /// Why.
        reason: String,
        /// The server asked for this delay (`Goaway`).
        retry_after: Option<Duration>,
    },
    /// Complete the waiter of this device request with the server's answer.
    RequestDone {
        /// The request.
        request_id: u32,
        /// The answer frame (`LinkCode`, `DeviceList`, `DeviceRemoved`) or why not.
        result: Result<Frame, ClientError>,
    },
    /// End this connection and stop for good: reconnecting cannot help.
    Fatal(ClientError),
    /// Our `Bye` was answered; close the connection and stop.
    Closed,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Phase {
    Offline,
    Ready,
    Closing,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum SendState {
    Queued,
    InFlight,
    Retry,
}

/// Where a send goes.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Target {
    /// Every device of a user (and our other devices).
    User(String),
    /// Every member of a group (one Megolm ciphertext).
    Group(GroupId),
    /// A status update to these users (the content is the post, already encrypted under its
    /// own key, which went to them before).
    Story(Vec<String>),
}

#[derive(Debug)]
struct Pending {
    to: Target,
    /// The sealed content; each device's envelope is made from it when the send goes out.
    content: Vec<u8>,
    /// A message sent again on request: the id it was first sent under.
    resend_of: Option<ClientMsgId>,
    order: u64,
    state: SendState,
}

/// Sends not yet answered by `Sent`, in the order the app made them.
#[derive(Debug, Default)]
struct Outbox {
    entries: HashMap<ClientMsgId, Pending>,
    /// Ids waiting to be transmitted on the current connection, in order.
    queue: VecDeque<ClientMsgId>,
    /// Refused sends waiting for their retry time.
    retries: BTreeMap<(Instant, u64), ClientMsgId>,
    in_flight: usize,
    next_order: u64,
}

impl Outbox {
    fn add(
        &mut self,
        id: ClientMsgId,
        to: String,
        content: Vec<u8>,
        resend_of: Option<ClientMsgId>,
    ) -> bool {
        let added = self.insert(id, Target::User(to), content, resend_of);
        if added {
            self.queue.push_back(id);
        }
        added
    }

    /// Adds a send without queueing it (the caller puts it in the queue where it belongs).
    fn insert(
        &mut self,
        id: ClientMsgId,
        to: Target,
        content: Vec<u8>,
        resend_of: Option<ClientMsgId>,
    ) -> bool {
        if self.entries.contains_key(&id) {
            return false;
        }
        let order = self.next_order;
        self.next_order += 1;
        self.entries.insert(
            id,
            Pending {
                to,
                content,
                resend_of,
                order,
                state: SendState::Queued,
            },
        );
        true
    }

    /// Moves these queued sends to the front of the queue, in the given order. Returns
    /// whether any was queued.
    fn move_to_front(&mut self, ids: &[ClientMsgId]) -> bool {
        self.queue.retain(|q| !ids.contains(q));
        let queued: Vec<ClientMsgId> = ids
            .iter()
            .copied()
            .filter(|id| {
                self.entries
                    .get(id)
                    .is_some_and(|p| p.state == SendState::Queued)
            })
            .collect();
        for id in queued.iter().rev() {
            self.queue.push_front(*id);
        }
        !queued.is_empty()
    }

    fn remove(&mut self, id: &ClientMsgId) -> Option<Pending> {
        let p = self.entries.remove(id)?;
        if p.state == SendState::InFlight {
            self.in_flight -= 1;
        }
        Some(p)
    }

    fn retry_later(&mut self, id: ClientMsgId, at: Instant) -> bool {
        let Some(p) = self.entries.get_mut(&id) else {
            return false;
        };
        if p.state == SendState::InFlight {
            self.in_flight -= 1;
        }
        p.state = SendState::Retry;
        self.retries.insert((at, p.order), id);
        true
    }

    fn release_due(&mut self, now: Instant) {
        let mut due = Vec::new();
        while let Some(entry) = self.retries.first_entry() {
            if entry.key().0 > now {
                break;
            }
            due.push(entry.remove());
        }
        // Retries go before newer sends, oldest first.
        for id in due.into_iter().rev() {
            if let Some(p) = self.entries.get_mut(&id) {
                p.state = SendState::Queued;
                self.queue.push_front(id);
            }
        }
    }

    fn next_retry(&self) -> Option<Instant> {
        self.retries.keys().next().map(|(at, _)| *at)
    }

    /// Everything unanswered goes again, in the original order, on the next connection.
    fn requeue_all(&mut self) {
        self.in_flight = 0;
        self.retries.clear();
        let mut all: Vec<(u64, ClientMsgId)> = self
            .entries
            .iter_mut()
            .map(|(id, p)| {
                p.state = SendState::Queued;
                (p.order, *id)
            })
            .collect();
        all.sort_unstable();
        self.queue = all.into_iter().map(|(_, id)| id).collect();
    }
}

/// How long a group message waits for its key before it counts as undecryptable: the key
/// comes over Olm in the mailbox, which the edge delivers first, so this is only the rare
/// race between the two streams (or a key that was lost).
const KEY_WAIT: Duration = Duration::from_secs(10);

/// A group message waiting for its key.
#[derive(Debug)]
struct WaitingForKey {
    stream: Option<GroupId>,
    deliver: Deliver,
    key: DeliveryKey,
    since: Instant,
}

/// Acknowledgement bookkeeping. Acks are cumulative, so a seq may be acked only when every
/// seq below it that the app was given has been acked by the app.
#[derive(Debug, Default)]
struct Acks {
    /// Highest seq that may be acknowledged.
    target: Option<ServerSeq>,
    /// Handed to the app (manual ack mode) and not yet acked by it.
    outstanding: BTreeSet<ServerSeq>,
    /// Processed without the app (duplicates, undecodable, auto-acked) but blocked behind an
    /// outstanding lower seq.
    blocked: BTreeSet<ServerSeq>,
    /// Highest seq received on the current connection: never ack beyond what it delivered.
    received: Option<ServerSeq>,
    /// Highest ack written on the current connection.
    sent: Option<ServerSeq>,
}

impl Acks {
    fn raise_target(&mut self, seq: ServerSeq) {
        self.target = self.target.max(Some(seq));
    }

    /// The client is done with `seq` without the app having to ack it.
    fn processed(&mut self, seq: ServerSeq) {
        self.blocked.insert(seq);
        self.unblock();
    }

    /// The app now owns `seq` and will ack it.
    fn handed(&mut self, seq: ServerSeq) {
        if self.target < Some(seq) {
            self.outstanding.insert(seq);
        }
    }

    fn app_ack(&mut self, up_to: ServerSeq) {
        self.raise_target(up_to);
        self.outstanding = self
            .outstanding
            .split_off(&ServerSeq(up_to.0.saturating_add(1)));
        self.unblock();
    }

    fn unblock(&mut self) {
        let limit = self.outstanding.first().copied();
        let releasable: Vec<ServerSeq> = match limit {
            Some(l) => self.blocked.range(..l).copied().collect(),
            None => self.blocked.iter().copied().collect(),
        };
        for s in releasable {
            self.blocked.remove(&s);
            self.raise_target(s);
        }
    }

    fn received(&mut self, seq: ServerSeq) {
        self.received = self.received.max(Some(seq));
    }

    /// `seq` no longer waits in the SDK (it is handed on or processed next).
    fn release(&mut self, seq: ServerSeq) {
        self.outstanding.remove(&seq);
    }

    fn new_connection(&mut self) {
        self.received = None;
        self.sent = None;
    }

    /// The `AckDelivery` to write now, if any.
    fn flush(&mut self) -> Option<ServerSeq> {
        let up = self.target?.min(self.received?);
        if Some(up) > self.sent {
            self.sent = Some(up);
            Some(up)
        } else {
            None
        }
    }
}

/// The bit that marks a device request's id (key requests use ids below it).
const DEVICE_REQUEST: u32 = 1 << 31;

/// Sends kept for a resend request, at most.
const RECENT_SENDS: usize = 256;

/// Who this device is, for the session.
#[derive(Debug, Clone)]
pub(crate) struct Me {
    /// User name.
    pub(crate) user: String,
    /// Device id.
    pub(crate) device: DeviceId,
    /// The device's login key (signs its published identity keys).
    pub(crate) login_key: ed25519_dalek::SigningKey,
    /// Its E2EE state.
    pub(crate) e2ee: E2eeStore,
}

/// The client's state across connections. See the module doc for the input/output contract.
#[derive(Debug)]
pub(crate) struct Session {
    auto_ack: bool,
    phase: Phase,
    max_frame: usize,
    outbox: Outbox,
    subscriptions: BTreeSet<String>,
    visibility: Option<Visibility>,
    seen: SeenSet,
    receipt_ids: ReceiptIds,
    /// Device lists of the users we send to (ourselves included).
    devices: DeviceDirectory,
    /// End-to-end encryption: sessions, key claims, sealing and opening envelopes.
    sealer: Sealer,
    /// Groups: membership as known, Megolm sessions, key distribution.
    groups: Groups,
    /// Keys of status updates received (poster, post id), until the post arrives.
    post_keys: PostKeys,
    /// Calls: invites waiting for keys, the other side's device of each call.
    calls: CallBook,
    /// The latest time an input brought (the session never reads the clock).
    clock: Instant,
    /// Deliveries are handled (false: left untouched in the mailbox, see
    /// `ClientConfig::receive`).
    receive: bool,
    /// Disappearing-message timers per chat (the other user), seconds.
    timers: HashMap<String, u32>,
    /// Device requests on the wire (ids with [`DEVICE_REQUEST`] set, apart from the key
    /// requests' ids).
    device_requests: BTreeSet<u32>,
    next_device_request: u32,
    /// Recent sends (id, recipient, content), to send again when a device asks.
    recent: VecDeque<(ClientMsgId, String, Vec<u8>)>,
    /// Messages we asked to have sent again (at most once each).
    asked_again: VecDeque<(String, ClientMsgId)>,
    /// Messages delivered, counted before the duplicate filter.
    counters: Arc<DeliveryCounters>,
    /// The highest seq delivered so far (this device's mailbox; seqs only grow).
    max_seq_seen: Option<ServerSeq>,
    acks: Acks,
    /// Per group log (protocol version 6): the same bookkeeping as the mailbox's.
    group_acks: HashMap<GroupId, Acks>,
    /// Per group log, the highest seq delivered so far.
    group_max_seen: HashMap<GroupId, ServerSeq>,
    /// Group messages whose Megolm key has not arrived yet, in delivery order.
    waiting_for_keys: Vec<WaitingForKey>,
    /// Deliveries processed since the last ack were only server "delivered" receipts: their
    /// ack can wait (see [`RECEIPT_ACK_DELAY`]) and ride along with the next frame we send.
    lazy_acks: usize,
    /// When a lazily held ack must go out at the latest.
    ack_due: Option<Instant>,
    /// A delivery the server waits on (a message, a read receipt) arrived since the last ack.
    urgent_ack: bool,
    next_ping: Option<Instant>,
    last_rx: Instant,
    ping_nonce: u64,
    out: VecDeque<Output>,
}

impl Session {
    /// A session; `auto_ack` acknowledges every delivery once its events are handed out;
    /// `seen` holds deliveries already handled; `receipt_ids` recognises our read receipts;
    /// `me` is this device: its user, id, login key and E2EE state.
    pub(crate) fn new(
        auto_ack: bool,
        seen: SeenSet,
        receipt_ids: ReceiptIds,
        counters: Arc<DeliveryCounters>,
        me: Me,
        now: Instant,
    ) -> Self {
        Self {
            devices: DeviceDirectory::new(me.user.clone(), me.device),
            groups: Groups::new(me.e2ee.clone(), &me.user, me.device, now),
            post_keys: PostKeys::default(),
            calls: CallBook::default(),
            sealer: Sealer::new(me.e2ee, (&me.user, me.device, me.login_key)),
            recent: VecDeque::new(),
            asked_again: VecDeque::new(),
            clock: now,
            receive: true,
            device_requests: BTreeSet::new(),
            next_device_request: 0,
            timers: HashMap::new(),
            counters,
            max_seq_seen: None,
            auto_ack,
            phase: Phase::Offline,
            max_frame: crate::frame_io::MIN_RECV_FRAME,
            outbox: Outbox::default(),
            subscriptions: BTreeSet::new(),
            visibility: None,
            seen,
            receipt_ids,
            acks: Acks::default(),
            group_acks: HashMap::new(),
            group_max_seen: HashMap::new(),
            waiting_for_keys: Vec::new(),
            lazy_acks: 0,
            ack_due: None,
            urgent_ack: false,
            next_ping: None,
            last_rx: now,
            ping_nonce: 0,
            out: VecDeque::new(),
        }
    }

    /// A connection is logged in: restore subscriptions and resend every unanswered send.
    pub(crate) fn connected(&mut self, now: Instant, max_frame: u32) {
        self.clock = now;
        self.phase = Phase::Ready;
        self.max_frame = max_frame as usize;
        self.acks.new_connection();
        for acks in self.group_acks.values_mut() {
            acks.new_connection();
        }
        // Never acknowledged: the server delivers them again on this connection.
        for w in std::mem::take(&mut self.waiting_for_keys) {
            self.acks_of(w.stream).release(w.deliver.seq);
        }
        self.reset_ack_timer();
        self.last_rx = now;
        self.next_ping = Some(now + PING_INTERVAL);
        if let Some(visibility) = self.visibility {
            self.transmit(SetPresenceVisibility { visibility }.into());
        }
        let subs: Vec<String> = self.subscriptions.iter().cloned().collect();
        for user in subs {
            self.transmit(SubscribePresence { user }.into());
        }
        self.sealer.new_connection();
        self.groups.new_connection();
        for read in self.groups.take_reads() {
            self.transmit(read.into());
        }
        self.outbox.requeue_all();
        self.pump();
    }

    /// The connection ended; everything unanswered waits for the next one.
    pub(crate) fn disconnected(&mut self) {
        for request_id in std::mem::take(&mut self.device_requests) {
            self.out.push_back(Output::RequestDone {
                request_id,
                result: Err(ClientError::ConnectionClosed(
                    "the connection ended before the answer".into(),
                )),
            });
        }
        self.phase = Phase::Offline;
        self.next_ping = None;
        self.outbox.requeue_all();
    }

    /// True when logged in and not closing.
    pub(crate) fn is_ready(&self) -> bool {
        self.phase == Phase::Ready
    }

    /// Queues a send. Returns false when this id is already waiting for its `Sent` (the caller
    /// then just waits for the same outcome).
    pub(crate) fn send(&mut self, id: ClientMsgId, to: String, content: Vec<u8>) -> bool {
        let added = self.outbox.add(id, to.clone(), content.clone(), None);
        if added {
            self.remember(id, to, content);
            self.pump();
        }
        added
    }

    /// Queues a message to every member of `group` (`content` sealed). Returns false when
    /// this id is already waiting for its `Sent`.
    pub(crate) fn send_group(&mut self, id: ClientMsgId, group: GroupId, content: Vec<u8>) -> bool {
        let added = self.outbox.insert(id, Target::Group(group), content, None);
        if added {
            self.outbox.queue.push_back(id);
            self.pump();
        }
        added
    }

    /// Tells the server that the group message `id` of `from` was read (once connected).
    pub(crate) fn group_read(&mut self, read: GroupRead) {
        if self.is_ready() {
            self.transmit(read.into());
        } else {
            self.groups.queue_read(read);
        }
    }

    /// Tells the server a status update was viewed (only when connected: a view is not
    /// worth keeping across a reconnect).
    pub(crate) fn story_viewed(&mut self, viewed: missive_proto::StoryViewed) {
        if self.is_ready() {
            self.transmit(viewed.into());
        }
    }

    /// When group sessions rotate, and the Unix time at an instant (session ages are kept
    /// across runs).
    pub(crate) fn configure_groups(
        &mut self,
        policy: crate::e2ee::RotationPolicy,
        wall: WallClock,
    ) {
        self.groups.configure(policy, wall);
    }

    /// Watches `user`'s presence, now and after every reconnect. Asking again asks the
    /// server again: presence is shown only to a user's contacts, so a user who was `Hidden`
    /// may be visible once they have written to us.
    pub(crate) fn subscribe_presence(&mut self, user: String) {
        self.subscriptions.insert(user.clone());
        if self.is_ready() {
            self.transmit(SubscribePresence { user }.into());
        }
    }

    /// Sets (and remembers, for reconnects) this user's presence visibility.
    pub(crate) fn set_visibility(&mut self, visibility: Visibility) {
        self.visibility = Some(visibility);
        if self.is_ready() {
            self.transmit(SetPresenceVisibility { visibility }.into());
        }
    }

    /// A typing indicator; dropped when not connected (it is ephemeral anyway).
    pub(crate) fn typing(&mut self, to: String, typing: bool) {
        if self.is_ready() {
            self.transmit(Typing { to, typing }.into());
        }
    }

    /// The app has processed every delivery of a stream up to a seq. Call
    /// [`Session::flush_acks`] after.
    pub(crate) fn ack(&mut self, up_to: crate::event::AckPoint) {
        self.acks_of(up_to.group).app_ack(up_to.seq);
        // The app is done with it: the server may delete and send receipts now.
        self.urgent_ack = true;
    }

    /// Starts an orderly close. Returns true when a `Bye` was queued and its answer is
    /// awaited (`Output::Closed`), false when there is no connection to close.
    pub(crate) fn close(&mut self) -> bool {
        match self.phase {
            Phase::Ready => {
                // Acks the app made must reach the server before the Bye.
                self.flush_acks_now();
                self.transmit(missive_proto::Bye {}.into());
                self.phase = Phase::Closing;
                true
            }
            Phase::Closing => true,
            Phase::Offline => false,
        }
    }

    /// Writes an `AckDelivery` if something new may be acknowledged. Call after a batch of
    /// frames or an app ack, so acks are coalesced.
    ///
    /// When the batch held only server "delivered" receipts (nobody waits on their ack: it
    /// only deletes them from our mailbox), the ack is held for up to [`RECEIPT_ACK_DELAY`]
    /// or [`LAZY_ACK_LIMIT`] receipts, or until a delivery the server waits on arrives. A
    /// chatty client then acks its receipts in one frame (and the server deletes them in one
    /// commit) every 200 ms instead of one per message.
    pub(crate) fn flush_acks(&mut self) {
        if self.phase == Phase::Offline {
            return;
        }
        if self.urgent_ack || self.lazy_acks >= LAZY_ACK_LIMIT {
            self.flush_acks_now();
        } else if self.lazy_acks > 0 && self.ack_due.is_none() {
            self.ack_due = Some(self.last_rx + RECEIPT_ACK_DELAY);
        }
    }

    /// Writes the pending `AckDelivery`, if any, now.
    fn flush_acks_now(&mut self) {
        self.reset_ack_timer();
        if self.phase == Phase::Offline {
            return;
        }
        if let Some(up_to) = self.acks.flush() {
            self.transmit(AckDelivery { up_to }.into());
        }
        let mut group_acks = Vec::new();
        for (group, acks) in &mut self.group_acks {
            if let Some(up_to) = acks.flush() {
                group_acks.push(AckGroup {
                    group: *group,
                    up_to,
                });
            }
        }
        for ack in group_acks {
            self.transmit(ack.into());
        }
    }

    fn reset_ack_timer(&mut self) {
        self.lazy_acks = 0;
        self.ack_due = None;
        self.urgent_ack = false;
    }

    /// Handles one frame from the server.
    pub(crate) fn handle_frame(&mut self, now: Instant, frame: Frame) {
        self.clock = now;
        self.last_rx = now;
        match frame {
            Frame::Sent(s) => {
                if self.outbox.remove(&s.client_msg_id).is_some() {
                    self.groups.send_finished(s.client_msg_id, true);
                    self.out.push_back(Output::SendDone {
                        id: s.client_msg_id,
                        result: Ok(SendReceipt {
                            client_msg_id: s.client_msg_id,
                            server_ts_ms: s.server_ts_ms,
                            duplicate: s.duplicate,
                        }),
                    });
                }
                self.pump();
            }
            Frame::Rejected(r) => {
                let code = ErrorCode::from_u16(r.code);
                let group = match self.outbox.entries.get(&r.client_msg_id).map(|p| &p.to) {
                    Some(Target::Group(g)) => Some(*g),
                    _ => None,
                };
                if let (Some(group), Some(ErrorCode::GroupChanged)) = (group, code) {
                    // Nothing was stored: learn the members, rotate, send again (same id).
                    tracing::debug!(group = group.0, "group changed; fetching its members");
                    self.groups.mark_stale(group);
                    if self.outbox.retry_later(r.client_msg_id, now) {
                        self.outbox.release_due(now);
                    }
                    self.pump();
                    return;
                }
                // `ShuttingDown`: the server is draining this connection (a `Goaway` follows);
                // the send goes again after the reconnect, in its original order.
                // `StorageUnavailable` (the server's disk is low or failing) and `MailboxFull`
                // (the recipient has not read for long) clear up on their own: wait longer.
                let retry_after = match code {
                    Some(
                        ErrorCode::RateLimited
                        | ErrorCode::TooManyInFlight
                        | ErrorCode::ShuttingDown,
                    ) => Some(RETRY_DELAY),
                    Some(ErrorCode::StorageUnavailable | ErrorCode::MailboxFull) => {
                        Some(SLOW_RETRY_DELAY)
                    }
                    _ => None,
                };
                if let Some(delay) = retry_after {
                    tracing::debug!(code = r.code, "send refused for now; retrying");
                    self.outbox.retry_later(r.client_msg_id, now + delay);
                } else if self.outbox.remove(&r.client_msg_id).is_some() {
                    self.groups.send_finished(r.client_msg_id, false);
                    let (code, message) = (r.code, r.message);
                    let err = match group {
                        Some(_) => ClientError::GroupRefused { code, message },
                        None => ClientError::Rejected { code, message },
                    };
                    self.out.push_back(Output::SendDone {
                        id: r.client_msg_id,
                        result: Err(err),
                    });
                }
                self.pump();
            }
            Frame::DeviceMismatch(m) => self.on_device_mismatch(now, m),
            Frame::KeyBundles(kb) => {
                let events = self.sealer.on_bundles(kb, &mut self.devices);
                if !events.is_empty() {
                    self.out.push_back(Output::Events(events));
                }
                self.pump();
            }
            Frame::KeysLow(k) => {
                let upload = self.sealer.on_keys_low(&k, self.max_frame as u32);
                self.transmit(upload);
            }
            Frame::KeysStored(_) => {}
            Frame::RequestRefused(r) if r.request_id & DEVICE_REQUEST != 0 => {
                let id = r.request_id;
                if let Some(group) = self.groups.fetch_done(id) {
                    tracing::debug!(group = group.0, code = r.code, "group info refused");
                    self.fail_group_sends(group, r.code, &r.message);
                    self.pump();
                    return;
                }
                self.device_answer(
                    id,
                    Err(ClientError::Rejected {
                        code: r.code,
                        message: r.message,
                    }),
                );
            }
            Frame::RequestRefused(r) => {
                self.sealer.on_refused(now, &r);
                self.pump();
            }
            Frame::LinkCode(ref c) => self.device_answer(c.request_id, Ok(frame.clone())),
            Frame::DeviceList(ref l) => self.device_answer(l.request_id, Ok(frame.clone())),
            Frame::TurnCredentials(ref t) => self.device_answer(t.request_id, Ok(frame.clone())),
            Frame::DeviceRemoved(ref r) => self.device_answer(r.request_id, Ok(frame.clone())),
            Frame::Retracted(ref r) => self.device_answer(r.request_id, Ok(frame.clone())),
            Frame::GroupAnswer(a) => {
                self.groups.on_answer(&a.answer);
                if self.groups.fetch_done(a.request_id).is_none() {
                    self.device_answer(a.request_id, Ok(Frame::GroupAnswer(a)));
                }
                self.pump();
            }
            Frame::StoryView(v) => self.out.push_back(Output::Events(vec![Event::StatusViewed {
                client_msg_id: v.client_msg_id,
                viewer: v.viewer,
            }])),
            Frame::StoryList(ref l) => self.device_answer(l.request_id, Ok(frame.clone())),
            Frame::CallHistory(ref h) => self.device_answer(h.request_id, Ok(frame.clone())),
            Frame::CallIncoming(i) => self.on_call_incoming(i),
            Frame::CallUpdate(u) => self.on_call_update(u),
            Frame::GroupReceipt(r) => {
                self.out.push_back(Output::Events(vec![Event::GroupReceipt {
                    group: r.group,
                    client_msg_id: r.client_msg_id,
                    delivered: r.delivered,
                    read: r.read,
                    of: r.of,
                }]))
            }
            Frame::Deliver(d) => {
                let may_carry_key = matches!(d.payload, Payload::Envelope(_));
                self.on_deliver(None, d);
                if may_carry_key {
                    self.retry_waiting_for_keys();
                }
            }
            Frame::GroupDeliver(g) => self.on_deliver(Some(g.group), g.deliver),
            Frame::Presence(p) => self.out.push_back(Output::Events(vec![Event::Presence {
                user: p.user,
                state: p.state,
            }])),
            Frame::TypingNotice(t) => self.out.push_back(Output::Events(vec![Event::Typing {
                from: t.from,
                typing: t.typing,
            }])),
            Frame::Ping(p) => self.transmit(Pong { nonce: p.nonce }.into()),
            Frame::Pong(_) => {}
            Frame::Bye(_) => {
                if self.phase == Phase::Closing {
                    self.out.push_back(Output::Closed);
                } else {
                    self.out.push_back(Output::Disconnect {
                        reason: "server closed the session (Bye)".into(),
                        retry_after: None,
                    });
                }
            }
            Frame::Goaway(g) => self.out.push_back(Output::Disconnect {
                reason: "server is going away (Goaway)".into(),
                retry_after: Some(Duration::from_millis(u64::from(g.reconnect_after_ms))),
            }),
            Frame::Error(e) => {
                let err = ClientError::from_error_frame(e.code, &e.message);
                if err.is_fatal() {
                    self.out.push_back(Output::Fatal(err));
                } else {
                    self.out.push_back(Output::Disconnect {
                        reason: err.to_string(),
                        retry_after: None,
                    });
                }
            }
            other => {
                // A frame the server should not send now (or a client→server kind): the
                // protocol has no answer for it; ignore it rather than drop the connection.
                tracing::warn!(
                    frame = other.name(),
                    "ignoring unexpected frame from server"
                );
            }
        }
    }

    /// The server's device lists differ from ours: take them, tell the app about changes,
    /// and send again at once with the same id (first in line, so order holds).
    fn on_device_mismatch(&mut self, now: Instant, m: DeviceMismatch) {
        let mut events = Vec::new();
        for current in m.current {
            let user = current.user.clone();
            let change = self.devices.update(current);
            self.sealer.forget_devices(&user, &change.removed);
            if change.was_known && (!change.added.is_empty() || !change.removed.is_empty()) {
                events.push(Event::DevicesChanged {
                    user,
                    added: change.added,
                    removed: change.removed,
                });
            }
        }
        if !events.is_empty() {
            self.out.push_back(Output::Events(events));
        }
        if self.outbox.retry_later(m.client_msg_id, now) {
            self.outbox.release_due(now);
        }
        // Or it answered an invite: the call's id is in the message id's place.
        self.calls.seal_again(&CallId(m.client_msg_id.0));
        self.pump();
    }

    /// Sends a device-management request (`CreateLinkCode`, `ListDevices`, `RemoveDevice`)
    /// made by `build` from its request id; `None` when offline (the caller fails it: these
    /// are not repeated after a reconnect).
    pub(crate) fn device_request(&mut self, build: impl FnOnce(u32) -> Frame) -> Option<u32> {
        if self.phase != Phase::Ready {
            return None;
        }
        let id = self.next_request_id();
        self.device_requests.insert(id);
        self.transmit(build(id));
        Some(id)
    }

    /// Allocates the id of a request answered by `RequestDone` (or consumed by the session).
    fn next_request_id(&mut self) -> u32 {
        self.next_device_request = self.next_device_request.wrapping_add(1) & !DEVICE_REQUEST;
        DEVICE_REQUEST | self.next_device_request
    }

    /// Asks the server for `group`'s members (the session's own request), unless asked.
    fn fetch_info(&mut self, group: GroupId) {
        if self.phase != Phase::Ready || self.groups.fetching(group) {
            return;
        }
        let request_id = self.next_request_id();
        self.groups.fetch_started(request_id, group);
        self.transmit(
            GroupRequest {
                request_id,
                op: GroupOp::Info { group },
            }
            .into(),
        );
    }

    /// Fails every send to `group` with the server's refusal.
    fn fail_group_sends(&mut self, group: GroupId, code: u16, message: &str) {
        let ids: Vec<ClientMsgId> = self
            .outbox
            .entries
            .iter()
            .filter(|(_, p)| p.to == Target::Group(group))
            .map(|(id, _)| *id)
            .collect();
        for id in ids {
            self.outbox.remove(&id);
            self.out.push_back(Output::SendDone {
                id,
                result: Err(ClientError::GroupRefused {
                    code,
                    message: message.to_owned(),
                }),
            });
        }
    }

    fn device_answer(&mut self, request_id: u32, result: Result<Frame, ClientError>) {
        if self.device_requests.remove(&request_id) {
            self.out
                .push_back(Output::RequestDone { request_id, result });
        }
    }

    /// Sets the disappearing-message timer of the chat with `user` (0: off) and tells the
    /// chat (the other user's devices and ours) with a `Timer` message under `id`.
    pub(crate) fn set_timer(&mut self, id: ClientMsgId, user: String, secs: u32) {
        self.timers.insert(user.clone(), secs);
        if let Ok(content) = seal(&Content::Timer { secs }) {
            self.outbox.add(id, user, content, None);
            self.pump();
        }
    }

    /// Timers known from before (an app's saved chat settings).
    pub(crate) fn load_timers(&mut self, timers: impl IntoIterator<Item = (String, u32)>) {
        self.timers.extend(timers);
    }

    /// Whether deliveries are handled at all (see `ClientConfig::receive`).
    pub(crate) fn set_receive(&mut self, receive: bool) {
        self.receive = receive;
    }

    /// The acknowledgement bookkeeping of the mailbox (`None`) or of a group's log.
    fn acks_of(&mut self, group: Option<GroupId>) -> &mut Acks {
        match group {
            None => &mut self.acks,
            Some(g) => self.group_acks.entry(g).or_default(),
        }
    }

    /// A delivery from the mailbox (`stream` `None`) or from a group's log.
    fn on_deliver(&mut self, stream: Option<GroupId>, d: Deliver) {
        if !self.receive {
            // Another instance of this device reads the mailbox: decrypting here would spend
            // message keys it needs, acknowledging would take messages it has not shown.
            return;
        }
        self.acks_of(stream).received(d.seq);
        let new_seq = match stream {
            None => {
                let new = self.max_seq_seen.is_none_or(|m| d.seq > m);
                if new {
                    self.max_seq_seen = Some(d.seq);
                }
                new
            }
            Some(g) => {
                let max = self.group_max_seen.entry(g).or_insert(ServerSeq(0));
                let new = d.seq > *max;
                if new {
                    *max = d.seq;
                }
                new
            }
        };
        let kind = match d.payload {
            Payload::Envelope(_)
            | Payload::Group(_)
            | Payload::GroupEvent(_)
            | Payload::Story(_) => DeliveryKind::Message,
            Payload::Delivered => DeliveryKind::Delivered,
        };
        if kind == DeliveryKind::Delivered {
            self.lazy_acks += 1;
        } else {
            // Its sender waits for our ack to learn "delivered".
            self.urgent_ack = true;
        }
        let key = DeliveryKey {
            from: d.from.clone(),
            client_msg_id: d.client_msg_id,
            kind,
        };
        if kind == DeliveryKind::Delivered && self.receipt_ids.is_ours(&d.client_msg_id) {
            // "Delivered" for one of our read receipts: nobody asked about that.
            self.acks_of(stream).processed(d.seq);
            return;
        }
        if kind == DeliveryKind::Message {
            self.counters.delivered();
        }
        if self.seen.contains(&key) {
            tracing::debug!(seq = d.seq.0, "dropping duplicate delivery");
            if kind == DeliveryKind::Message {
                if new_seq {
                    tracing::warn!(seq = d.seq.0, from = %d.from, "the server stored a message twice");
                    self.counters.duplicated();
                } else {
                    self.counters.redelivered();
                }
            }
            self.acks_of(stream).processed(d.seq);
            return;
        }
        if let (Some(_), Payload::Group(m)) = (stream, &d.payload) {
            match self.on_group_message(&d, m, true) {
                Some(events) => self.handed_out(stream, &d, key, events),
                None => {
                    // Its key is still on the way: hold it (and the acks after it).
                    self.acks_of(stream).handed(d.seq);
                    self.waiting_for_keys.push(WaitingForKey {
                        stream,
                        deliver: d,
                        key,
                        since: self.clock,
                    });
                }
            }
            return;
        }
        let events = match &d.payload {
            Payload::Group(m) => self.on_group_message(&d, m, false).unwrap_or_default(),
            Payload::GroupEvent(n) => self.on_group_notice(&d, n),
            Payload::Story(post) => vec![self.on_story(&d, post)],
            Payload::Delivered => vec![Event::Receipt {
                from: d.from.clone(),
                client_msg_id: d.client_msg_id,
                status: ReceiptStatus::Delivered,
                server_seq: d.seq,
                server_ts_ms: d.server_ts_ms,
                envelope_id: d.client_msg_id,
            }],
            Payload::Envelope(bytes) => {
                let bytes = bytes.clone();
                match self.sealer.open(&d.from, d.from_device, &bytes) {
                    Ok(plain) => match DevicePlaintext::decode(&plain) {
                        Ok(opened) => {
                            if let Some(first) = opened.resend_of {
                                // Sent again on request: it counts as the message it repeats.
                                let original = DeliveryKey {
                                    from: d.from.clone(),
                                    client_msg_id: first,
                                    kind,
                                };
                                if !self.seen.insert(original) {
                                    self.seen.insert(key);
                                    self.acks_of(stream).processed(d.seq);
                                    return;
                                }
                            }
                            self.opened(&d, opened)
                        }
                        Err(e) => {
                            tracing::warn!(seq = d.seq.0, from = %d.from, error = %e, "dropping an envelope that decrypts to nothing valid");
                            Vec::new()
                        }
                    },
                    Err(e) => {
                        tracing::warn!(seq = d.seq.0, from = %d.from, device = d.from_device.0, error = %e, "cannot decrypt; starting a fresh session and asking for a resend");
                        self.repair(&d);
                        vec![Event::Undecryptable {
                            from: d.from.clone(),
                            from_device: d.from_device,
                            client_msg_id: d.client_msg_id,
                            server_seq: d.seq,
                        }]
                    }
                }
            }
        };
        self.handed_out(stream, &d, key, events);
    }

    /// Hands the events of delivery `d` to the app (or drops them as seen), and books its
    /// acknowledgement.
    fn handed_out(
        &mut self,
        stream: Option<GroupId>,
        d: &Deliver,
        key: DeliveryKey,
        events: Vec<Event>,
    ) {
        // An undecryptable message was not handled: its repeat (sent again on request under
        // this id) must still get through.
        let handled = matches!(
            events[..],
            [Event::Undecryptable { .. }]
                | [Event::GroupUndecryptable { .. }]
                | [Event::StatusUnreadable { .. }]
        );
        if !handled {
            self.seen.insert(key);
        }
        if events.is_empty() {
            self.acks_of(stream).processed(d.seq);
            return;
        }
        // The SDK handled an undecryptable delivery itself (it asked for a resend, or there
        // is nothing more to get): the app is told but has nothing to acknowledge.
        self.out.push_back(Output::Events(events));
        // A group item in the mailbox was stored before group logs existed: the app
        // acknowledges group events by their log, so the SDK acknowledges these itself.
        let legacy_group =
            stream.is_none() && matches!(d.payload, Payload::Group(_) | Payload::GroupEvent(_));
        if self.auto_ack || handled || legacy_group {
            self.acks_of(stream).processed(d.seq);
        } else {
            self.acks_of(stream).handed(d.seq);
        }
    }

    /// The events of a decrypted delivery (and the SDK's own requests it carries).
    fn opened(&mut self, d: &Deliver, opened: Opened) -> Vec<Event> {
        let Opened {
            sent_to,
            resend_of,
            content,
            expires_in_secs,
        } = opened;
        match content {
            Content::Text(text) => vec![Event::Message {
                from: d.from.clone(),
                from_device: d.from_device,
                client_msg_id: resend_of.unwrap_or(d.client_msg_id),
                server_seq: d.seq,
                server_ts_ms: d.server_ts_ms,
                text,
                sent_to,
                expires_in_secs,
            }],
            Content::Media(media) => vec![Event::Media {
                group: None,
                from: d.from.clone(),
                from_device: d.from_device,
                client_msg_id: resend_of.unwrap_or(d.client_msg_id),
                server_seq: d.seq,
                server_ts_ms: d.server_ts_ms,
                media,
                sent_to,
            }],
            Content::Timer { secs } => {
                let chat = sent_to.unwrap_or_else(|| d.from.clone());
                self.timers.insert(chat.clone(), secs);
                vec![Event::TimerChanged {
                    chat,
                    by: d.from.clone(),
                    secs,
                    server_seq: d.seq,
                }]
            }
            // Our own read receipts, copied from another of our devices: that device
            // already told the sender.
            Content::Read { .. } if sent_to.is_some() => Vec::new(),
            Content::Read { ids } => ids
                .into_iter()
                .map(|id| Event::Receipt {
                    from: d.from.clone(),
                    client_msg_id: id,
                    status: ReceiptStatus::Read,
                    server_seq: d.seq,
                    server_ts_ms: d.server_ts_ms,
                    envelope_id: d.client_msg_id,
                })
                .collect(),
            Content::Delete { ids } => ids
                .into_iter()
                .map(|id| Event::Deleted {
                    from: d.from.clone(),
                    client_msg_id: id,
                    server_seq: d.seq,
                    envelope_id: d.client_msg_id,
                })
                .collect(),
            Content::ResendRequest { ids } => {
                if sent_to.is_none() {
                    self.resend(&d.from, &ids);
                }
                Vec::new()
            }
            Content::PostKey(k) => {
                self.post_keys.insert((d.from.clone(), k.post), k.key);
                Vec::new()
            }
            Content::GroupKey(k) => {
                self.groups.accept_key(
                    (&d.from, d.from_device),
                    k.group,
                    &k.session_id,
                    &k.session_key,
                );
                Vec::new()
            }
            // Call payloads travel in call frames; one in a message is out of place.
            Content::Call(_) => Vec::new(),
        }
    }

    /// Queues a status update (`body`: the post encrypted under its key, which was sent to
    /// `audience` before). Returns false when this id is already waiting for its `Sent`.
    pub(crate) fn post_story(
        &mut self,
        id: ClientMsgId,
        audience: Vec<String>,
        body: Vec<u8>,
    ) -> bool {
        let added = self.outbox.insert(id, Target::Story(audience), body, None);
        if added {
            self.outbox.queue.push_back(id);
            self.pump();
        }
        added
    }

    /// The event of a delivered status update: its text, or why it cannot be read.
    fn on_story(&mut self, d: &Deliver, post: &missive_proto::StoryMessage) -> Event {
        let unreadable = |reason: &str| Event::StatusUnreadable {
            from: d.from.clone(),
            client_msg_id: d.client_msg_id,
            server_seq: d.seq,
            reason: reason.to_owned(),
        };
        let Some(key) = self.post_keys.take(&(d.from.clone(), d.client_msg_id)) else {
            return unreadable("its key never arrived");
        };
        let opened =
            crate::e2ee::status_key::open_status(&key, &d.from, &d.client_msg_id, &post.body)
                .map_err(|e| e.to_string())
                .and_then(|plain| crate::content::open(&plain).map_err(|e| e.to_string()));
        match opened {
            Ok(Content::Text(text)) => Event::Status {
                from: d.from.clone(),
                from_device: d.from_device,
                client_msg_id: d.client_msg_id,
                text,
                expires_at_ms: post.expires_at_ms,
                server_seq: d.seq,
                server_ts_ms: d.server_ts_ms,
            },
            Ok(_) => unreadable("not a text"),
            Err(e) => unreadable(&e),
        }
    }

    /// The events of a delivered group message.
    /// The events of a group message; `None` when its key has not arrived and `may_wait`.
    fn on_group_message(
        &mut self,
        d: &Deliver,
        m: &missive_proto::GroupMessage,
        may_wait: bool,
    ) -> Option<Vec<Event>> {
        let events = match self
            .groups
            .open((&d.from, d.from_device), d.client_msg_id, m)
        {
            Ok(Content::Text(text)) => vec![Event::GroupMessage {
                group: m.group,
                from: d.from.clone(),
                from_device: d.from_device,
                client_msg_id: d.client_msg_id,
                text,
                server_seq: d.seq,
                server_ts_ms: d.server_ts_ms,
            }],
            Ok(Content::Media(media)) => vec![Event::Media {
                group: Some(m.group),
                from: d.from.clone(),
                from_device: d.from_device,
                client_msg_id: d.client_msg_id,
                server_seq: d.seq,
                server_ts_ms: d.server_ts_ms,
                media,
                sent_to: None,
            }],
            Ok(_) => {
                // Other contents have no meaning in a group (yet).
                tracing::debug!(
                    seq = d.seq.0,
                    group = m.group.0,
                    "ignoring a group message that is not text"
                );
                Vec::new()
            }
            Err(Unopened::KeyMissing) if may_wait => return None,
            Err(e) => {
                tracing::warn!(seq = d.seq.0, group = m.group.0, from = %d.from, device = d.from_device.0, error = %e, "cannot decrypt a group message");
                vec![Event::GroupUndecryptable {
                    group: m.group,
                    from: d.from.clone(),
                    from_device: d.from_device,
                    client_msg_id: d.client_msg_id,
                    server_seq: d.seq,
                    reason: e.to_string(),
                }]
            }
        };
        Some(events)
    }

    /// Opens again the group messages that waited for their keys: after a delivery that may
    /// have brought one, and on every timer. One that waited [`KEY_WAIT`] is given up
    /// (`GroupUndecryptable`).
    fn retry_waiting_for_keys(&mut self) {
        if self.waiting_for_keys.is_empty() {
            return;
        }
        for w in std::mem::take(&mut self.waiting_for_keys) {
            let Payload::Group(m) = &w.deliver.payload else {
                continue;
            };
            let may_wait = self.clock.saturating_duration_since(w.since) < KEY_WAIT;
            match self.on_group_message(&w.deliver, m, may_wait) {
                Some(events) => {
                    self.acks_of(w.stream).release(w.deliver.seq);
                    self.urgent_ack = true;
                    self.handed_out(w.stream, &w.deliver, w.key, events);
                }
                None => self.waiting_for_keys.push(w),
            }
        }
    }

    /// The events of a delivered membership change (and the Info it may call for).
    fn on_group_notice(&mut self, d: &Deliver, n: &missive_proto::GroupNotice) -> Vec<Event> {
        let effect = self.groups.on_notice(&d.from, n);
        if effect.incomplete && self.groups.needs_members(n.group) {
            // Keys from members we do not know yet are taken provisionally until then.
            self.fetch_info(n.group);
        }
        vec![Event::GroupChanged {
            group: n.group,
            by: d.from.clone(),
            epoch: n.epoch,
            change: n.change.clone(),
            server_seq: d.seq,
        }]
    }

    /// A device of `from` could not decrypt `ids`: send them again (to every device of the
    /// user they went to; the others drop the repeat), each under a new id.
    fn resend(&mut self, from: &str, ids: &[ClientMsgId]) {
        let me = self.devices_me();
        let again: Vec<(String, Vec<u8>, ClientMsgId)> = self
            .recent
            .iter()
            .filter(|(id, to, _)| ids.contains(id) && (to == from || from == me))
            .map(|(id, to, content)| (to.clone(), content.clone(), *id))
            .collect();
        for (to, content, first) in again {
            let id = self.receipt_ids.generate();
            self.outbox.add(id, to, content, Some(first));
        }
        self.pump();
    }

    fn devices_me(&self) -> String {
        self.devices.me().to_owned()
    }

    /// After an undecryptable message: a fresh session with that device, and (once per
    /// message) a request to its user to send the message again.
    fn repair(&mut self, d: &Deliver) {
        self.sealer.reset_sessions(&d.from, d.from_device);
        let asked = (d.from.clone(), d.client_msg_id);
        if self.asked_again.contains(&asked) {
            return;
        }
        if self.asked_again.len() >= RECENT_SENDS {
            self.asked_again.pop_front();
        }
        self.asked_again.push_back(asked);
        let request = Content::ResendRequest {
            ids: vec![d.client_msg_id],
        };
        if let Ok(content) = seal(&request) {
            // Tagged like our read receipts: the `Delivered` it earns is not the app's.
            let id = self.receipt_ids.generate();
            self.outbox.add(id, d.from.clone(), content, None);
            self.pump();
        }
    }

    /// Handles the passing of time: due retries, pings, dead-connection detection.
    pub(crate) fn handle_timeout(&mut self, now: Instant) {
        self.clock = now;
        if self.phase == Phase::Offline {
            return;
        }
        self.outbox.release_due(now);
        self.retry_waiting_for_keys();
        if self.ack_due.is_some_and(|due| now >= due) {
            self.flush_acks_now();
        }
        self.pump();
        if now.saturating_duration_since(self.last_rx) >= DEAD_AFTER {
            self.out.push_back(Output::Disconnect {
                reason: format!("no frame from the server for {} s", DEAD_AFTER.as_secs()),
                retry_after: None,
            });
            return;
        }
        if let Some(at) = self.next_ping {
            if now >= at {
                self.ping_nonce = self.ping_nonce.wrapping_add(1);
                self.transmit(
                    Ping {
                        nonce: self.ping_nonce,
                    }
                    .into(),
                );
                self.next_ping = Some(now + PING_INTERVAL);
            }
        }
    }

    /// When [`Session::handle_timeout`] must be called next.
    pub(crate) fn poll_timeout(&self) -> Option<Instant> {
        if self.phase == Phase::Offline {
            return None;
        }
        [
            self.next_ping,
            self.ack_due,
            self.outbox.next_retry(),
            self.sealer.next_retry(),
            self.waiting_for_keys.first().map(|w| w.since + KEY_WAIT),
            Some(self.last_rx + DEAD_AFTER),
        ]
        .into_iter()
        .flatten()
        .min()
    }

    /// The next thing to do, in order.
    pub(crate) fn poll_output(&mut self) -> Option<Output> {
        self.out.pop_front()
    }

    /// Unanswered sends (queued, in flight or waiting for a retry).
    pub(crate) fn pending_sends(&self) -> usize {
        self.outbox.entries.len()
    }

    fn transmit(&mut self, frame: Frame) {
        let olm = self.sealer.take_dirty();
        let groups = self.groups.take_dirty();
        if olm || groups {
            self.out.push_back(Output::Persist);
        }
        self.out.push_back(Output::Transmit(frame));
    }

    fn pump(&mut self) {
        if self.phase != Phase::Ready {
            return;
        }
        self.pump_calls();
        while self.outbox.in_flight < MAX_IN_FLIGHT {
            let Some(id) = self.outbox.queue.pop_front() else {
                break;
            };
            let Some(p) = self.outbox.entries.get_mut(&id) else {
                continue;
            };
            if p.state != SendState::Queued {
                continue;
            }
            let to = match p.to.clone() {
                Target::User(to) => to,
                Target::Group(group) => {
                    if self.pump_group(id, group) {
                        continue;
                    }
                    break;
                }
                Target::Story(audience) => {
                    p.state = SendState::InFlight;
                    let body = p.content.clone();
                    self.outbox.in_flight += 1;
                    self.transmit(
                        StoryPost {
                            client_msg_id: id,
                            audience,
                            body,
                        }
                        .into(),
                    );
                    continue;
                }
            };
            let targets = match self.sealer.prepare(self.clock, &to, &self.devices) {
                Readiness::Ready(targets) => targets,
                Readiness::Waiting(claims) => {
                    // First in line waits for its keys, so messages keep their order.
                    self.outbox.queue.push_front(id);
                    for c in claims {
                        self.transmit(c);
                    }
                    break;
                }
            };
            let Some(p) = self.outbox.entries.get_mut(&id) else {
                continue;
            };
            let (content, resend_of) = (p.content.clone(), p.resend_of);
            let expires_in_secs = self.timers.get(&to).copied().unwrap_or(0);
            let (envelopes, own) = self.sealer.seal(&to, &targets, |sent_to| {
                DevicePlaintext {
                    sent_to: sent_to.map(str::to_owned),
                    resend_of,
                    expires_in_secs,
                    content: content.clone(),
                }
                .encode()
            });
            let frame = missive_proto::Send {
                client_msg_id: id,
                envelopes,
                own,
                to,
                expires_in_secs,
            };
            // The edge's bounds: each envelope must fit the `Deliver` that carries it, and
            // all of them the one `Send` frame.
            if let Err(e) = fits(&frame, self.max_frame) {
                self.outbox.remove(&id);
                // A group key that cannot go: its group's sends must not wait for it.
                self.groups.send_finished(id, false);
                self.out.push_back(Output::SendDone { id, result: Err(e) });
                continue;
            }
            p.state = SendState::InFlight;
            self.outbox.in_flight += 1;
            self.transmit(frame.into());
        }
    }
}

/// Calls: invites sealed once the callee's devices have sessions, actions with payloads
/// sealed for the other side's one device, and what comes back opened for the app.
impl Session {
    /// Places a call: the offer is sealed for every device of `to` once each has a session
    /// (claiming keys first if needed), then the invite goes.
    pub(crate) fn invite_call(
        &mut self,
        call_id: CallId,
        to: String,
        (media, conference): (CallMedia, Option<CallId>),
        offer: CallOffer,
    ) {
        let kind = CallSignalKind::Offer {
            secret: offer.secret,
            description: offer.description.clone(),
        };
        let plaintext = call_plaintext(call_id, kind);
        self.calls.invite(PendingInvite {
            call_id,
            to,
            media,
            conference,
            plaintext,
        });
        self.pump();
    }

    /// This device acts in `call_id`.
    pub(crate) fn call_do(&mut self, call_id: CallId, what: CallDo) {
        let action = match what {
            CallDo::Accept(description) => {
                match self.seal_for_peer(call_id, CallSignalKind::Answer { description }) {
                    Some(sealed) => CallActionKind::Accept(sealed),
                    None => return self.call_gone(call_id),
                }
            }
            CallDo::Candidates(description) => {
                match self.seal_for_peer(call_id, CallSignalKind::Candidates { description }) {
                    Some(sealed) => CallActionKind::Candidates(sealed),
                    None => return self.call_gone(call_id),
                }
            }
            CallDo::Decline => CallActionKind::Decline,
            CallDo::Hangup => {
                if self.calls.pending.iter().any(|p| p.call_id == call_id) {
                    // Never sent: nothing to tell the edge.
                    self.calls.forget(&call_id);
                    return self.call_event(CallEvent::Ended {
                        call_id,
                        reason: CallEndReason::Cancelled,
                    });
                }
                CallActionKind::Hangup
            }
        };
        if self.phase == Phase::Ready {
            self.transmit(CallAction { call_id, action }.into());
        } else {
            // Offline: the edge ends the call after its reconnect grace if we do not come
            // back; an action taken meanwhile goes once we are.
            self.calls.queue_action(CallAction { call_id, action });
        }
    }

    fn call_gone(&mut self, call_id: CallId) {
        self.call_event(CallEvent::Ended {
            call_id,
            reason: CallEndReason::Refused(ErrorCode::UnknownCall.as_u16()),
        });
    }

    fn call_event(&mut self, event: CallEvent) {
        if self.sealer.take_dirty() {
            self.out.push_back(Output::Persist);
        }
        self.out.push_back(Output::Events(vec![Event::Call(event)]));
    }

    /// `kind` sealed for the other side's device in `call_id` (`None`: no such device known,
    /// or no session with it).
    fn seal_for_peer(&mut self, call_id: CallId, kind: CallSignalKind) -> Option<Vec<u8>> {
        let (user, device) = self.calls.peer(&call_id)?.clone();
        let plaintext = call_plaintext(call_id, kind);
        let (sealed, _) = self
            .sealer
            .seal(&user, &[(user.clone(), device)], |_| plaintext.clone());
        sealed
            .into_iter()
            .next()
            .map(|e| e.envelope)
            .filter(|e| !e.is_empty())
    }

    /// Sends what waits: actions taken while offline, then invites whose keys are here.
    fn pump_calls(&mut self) {
        for action in self.calls.take_actions() {
            self.transmit(action.into());
        }
        while let Some(to) = self.calls.pending.front().map(|p| p.to.clone()) {
            let targets = match self.sealer.prepare(self.clock, &to, &self.devices) {
                Readiness::Ready(targets) => targets,
                Readiness::Waiting(claims) => {
                    for c in claims {
                        self.transmit(c);
                    }
                    return;
                }
            };
            let Some(invite) = self.calls.pending.pop_front() else {
                return;
            };
            // The callee's devices only: our own other devices are not rung.
            let targets: Vec<_> = targets.into_iter().filter(|a| a.0 == to).collect();
            let (offers, _) = self
                .sealer
                .seal(&to, &targets, |_| invite.plaintext.clone());
            let offers: Vec<_> = offers
                .into_iter()
                .filter(|o| !o.envelope.is_empty())
                .collect();
            if offers.is_empty() {
                self.calls.forget(&invite.call_id);
                self.call_event(CallEvent::Ended {
                    call_id: invite.call_id,
                    reason: CallEndReason::Refused(ErrorCode::UnknownRecipient.as_u16()),
                });
                continue;
            }
            self.transmit(
                CallInvite {
                    call_id: invite.call_id,
                    to: invite.to.clone(),
                    media: invite.media,
                    offers,
                    conference: invite.conference,
                }
                .into(),
            );
            self.calls.sent(invite);
        }
    }

    /// Opens a call payload from `from`'s `device`, which must be a signal of `call_id`.
    fn open_call(
        &mut self,
        from: &str,
        device: DeviceId,
        sealed: &[u8],
        call_id: &CallId,
    ) -> Result<CallSignalKind, String> {
        let plain = self
            .sealer
            .open(from, device, sealed)
            .map_err(|e| format!("cannot decrypt: {e:?}"))?;
        let opened = DevicePlaintext::decode(&plain).map_err(|e| e.to_string())?;
        crate::call::expect_signal(opened.content, call_id).map_err(str::to_owned)
    }

    fn on_call_incoming(&mut self, i: missive_proto::CallIncoming) {
        let event = match self.open_call(&i.from, i.from_device, &i.offer, &i.call_id) {
            Ok(CallSignalKind::Offer {
                secret,
                description,
            }) => {
                self.calls
                    .set_peer(i.call_id, (i.from.clone(), i.from_device));
                CallEvent::Incoming {
                    call_id: i.call_id,
                    from: i.from,
                    from_device: i.from_device,
                    media: i.media,
                    offer: CallOffer {
                        secret,
                        description,
                    },
                    rings_for: Duration::from_millis(u64::from(i.rings_for_ms)),
                    conference: i.conference,
                }
            }
            Ok(_) => CallEvent::Unreadable {
                call_id: i.call_id,
                from: i.from,
                reason: "the ring carries no offer".into(),
            },
            Err(reason) => CallEvent::Unreadable {
                call_id: i.call_id,
                from: i.from,
                reason,
            },
        };
        self.call_event(event);
    }

    fn on_call_update(&mut self, u: missive_proto::CallUpdate) {
        let call_id = u.call_id;
        let event = match u.update {
            CallUpdateKind::Ringing { devices } => {
                self.calls.settled(&call_id);
                CallEvent::Ringing { call_id, devices }
            }
            CallUpdateKind::Accepted { device, answer } => {
                let Some(callee) = self.calls.callee(&call_id).map(str::to_owned) else {
                    tracing::warn!(call = %call_id.to_hex(), "answer to a call we did not place");
                    return;
                };
                match self.open_call(&callee, device, &answer, &call_id) {
                    Ok(CallSignalKind::Answer { description }) => {
                        self.calls.set_peer(call_id, (callee, device));
                        CallEvent::Accepted {
                            call_id,
                            device,
                            description,
                        }
                    }
                    _ => {
                        // An answer we cannot read cannot become media: end the call rather
                        // than leave both sides waiting.
                        tracing::warn!(call = %call_id.to_hex(), "unreadable answer; hanging up");
                        self.transmit(
                            CallAction {
                                call_id,
                                action: CallActionKind::Hangup,
                            }
                            .into(),
                        );
                        return;
                    }
                }
            }
            CallUpdateKind::AnsweredElsewhere { device } => {
                self.calls.forget(&call_id);
                CallEvent::AnsweredElsewhere { call_id, device }
            }
            CallUpdateKind::Candidates(sealed) => {
                let Some((user, device)) = self.calls.peer(&call_id).cloned() else {
                    return;
                };
                match self.open_call(&user, device, &sealed, &call_id) {
                    Ok(CallSignalKind::Candidates { description }) => CallEvent::Candidates {
                        call_id,
                        description,
                    },
                    _ => {
                        tracing::warn!(call = %call_id.to_hex(), "unreadable candidates dropped");
                        return;
                    }
                }
            }
            CallUpdateKind::Conference { others } => CallEvent::Conference { call_id, others },
            CallUpdateKind::Ended { reason } => {
                self.calls.forget(&call_id);
                CallEvent::Ended { call_id, reason }
            }
        };
        self.call_event(event);
    }
}

/// The plaintext sealed for a call's device: a `DevicePlaintext` holding the signal.
fn call_plaintext(call_id: CallId, kind: CallSignalKind) -> Vec<u8> {
    let content = Content::Call(Box::new(CallSignal {
        call: call_id.0,
        kind,
    }));
    DevicePlaintext {
        sent_to: None,
        resend_of: None,
        expires_in_secs: 0,
        content: content.encode(),
    }
    .encode()
}

impl Session {
    /// One step of [`Session::pump`] for the group send `id` at the head of the queue.
    /// Returns whether pumping goes on (false: the send waits, first in line).
    fn pump_group(&mut self, id: ClientMsgId, group: GroupId) -> bool {
        match self.groups.readiness(group, self.clock) {
            GroupReadiness::Ready(epoch) => {
                let Some(content) = self.outbox.entries.get(&id).map(|p| p.content.clone()) else {
                    return true;
                };
                let body = self.groups.seal(group, id, &content);
                let max = missive_proto::max_envelope_len(self.max_frame as u32);
                if body.len() > max {
                    self.outbox.remove(&id);
                    self.out.push_back(Output::SendDone {
                        id,
                        result: Err(ClientError::TooLarge {
                            size: body.len(),
                            max,
                        }),
                    });
                    return true;
                }
                if let Some(p) = self.outbox.entries.get_mut(&id) {
                    p.state = SendState::InFlight;
                    self.outbox.in_flight += 1;
                }
                self.transmit(
                    GroupSend {
                        client_msg_id: id,
                        group,
                        epoch,
                        body,
                        // Disappearing messages are per 1:1 chat for now.
                        expires_in_secs: 0,
                    }
                    .into(),
                );
                true
            }
            GroupReadiness::Fetch => {
                self.outbox.queue.push_front(id);
                self.fetch_info(group);
                false
            }
            GroupReadiness::Wait => {
                self.outbox.queue.push_front(id);
                // After a reconnect its key sends may be queued behind it: they go first.
                let keys = self.groups.pending_keys(group);
                self.outbox.move_to_front(&keys)
            }
            GroupReadiness::Distribute { session_id, keys } => {
                let mut ids = Vec::with_capacity(keys.len());
                for (to, content) in keys {
                    // Tagged like our read receipts: the `Delivered` it earns is not the app's.
                    let key_id = self.receipt_ids.generate();
                    self.outbox
                        .insert(key_id, Target::User(to.clone()), content.clone(), None);
                    // A member's device that cannot decrypt it asks for it again.
                    self.remember(key_id, to, content);
                    ids.push(key_id);
                }
                self.groups
                    .distributing(group, session_id, ids.iter().copied());
                self.outbox.queue.push_front(id);
                self.outbox.move_to_front(&ids);
                true
            }
        }
    }

    /// Keeps a send for a resend request.
    fn remember(&mut self, id: ClientMsgId, to: String, content: Vec<u8>) {
        if self.recent.len() >= RECENT_SENDS {
            self.recent.pop_front();
        }
        self.recent.push_back((id, to, content));
    }
}

/// Archive bytes one `DeviceEnvelope` adds around its envelope, at most (device id, vector
/// header, alignment).
const COPY_OVERHEAD: usize = 32;

/// Whether `send` fits the server's limits: each envelope within `max_envelope_len` and the
/// whole frame within `max_frame`.
fn fits(send: &missive_proto::Send, max_frame: usize) -> Result<(), ClientError> {
    let max = missive_proto::max_envelope_len(max_frame as u32);
    if let Some(big) = send.copies().find(|c| c.envelope.len() > max) {
        return Err(ClientError::TooLarge {
            size: big.envelope.len(),
            max,
        });
    }
    let size = send
        .copies()
        .map(|c| c.envelope.len() + COPY_OVERHEAD)
        .sum::<usize>()
        + missive_proto::ENVELOPE_FRAME_OVERHEAD;
    if size > max_frame {
        return Err(ClientError::TooLarge {
            size,
            max: max_frame,
        });
    }
    Ok(())
}

#[cfg(test)]
mod group_tests;

#[cfg(test)]
mod tests {
    use super::*;
    use missive_proto::{
        DeviceEnvelope, DeviceId, Goaway, Presence, PresenceState, Rejected, Sent,
    };

    fn test_ids() -> ReceiptIds {
        ReceiptIds::new(&ed25519_dalek::SigningKey::from_bytes(&[7; 32]))
    }

    fn id(n: u8) -> ClientMsgId {
        ClientMsgId([n; 16])
    }

    fn drain(s: &mut Session) -> Vec<Output> {
        std::iter::from_fn(|| s.poll_output()).collect()
    }

    fn transmitted(outs: &[Output]) -> Vec<&Frame> {
        outs.iter()
            .filter_map(|o| match o {
                Output::Transmit(f) => Some(f),
                _ => None,
            })
            .collect()
    }

    use crate::e2ee::OlmMachine;
    use std::cell::RefCell;

    thread_local! {
        /// This test's own device state (each test runs on its own thread).
        static ME: RefCell<Option<E2eeStore>> = const { RefCell::new(None) };
        /// The peers' devices: their login keys and Olm state.
        static PEERS: RefCell<HashMap<(String, DeviceId), OlmMachine>> = RefCell::new(HashMap::new());
    }

    fn login_key(user: &str, device: DeviceId) -> ed25519_dalek::SigningKey {
        let mut seed = [device.0 as u8; 32];
        seed[..user.len().min(32)].copy_from_slice(&user.as_bytes()[..user.len().min(32)]);
        ed25519_dalek::SigningKey::from_bytes(&seed)
    }

    /// This device, with fresh E2EE state that the helpers below use.
    fn me() -> Me {
        let e2ee = E2eeStore::in_memory();
        ME.with(|m| *m.borrow_mut() = Some(e2ee.clone()));
        PEERS.with(|p| p.borrow_mut().clear());
        Me {
            user: "me".into(),
            device: DeviceId(1),
            login_key: login_key("me", DeviceId(1)),
            e2ee,
        }
    }

    /// What the key directory would hand a claimer of (`user`, `device`), whose Olm state is
    /// `olm`: its identity and one fresh one-time key.
    fn bundle_of(
        olm: &mut OlmMachine,
        user: &str,
        device: DeviceId,
    ) -> missive_proto::DeviceBundle {
        let key = login_key(user, device);
        let u = olm.upload((user, device, &key), 0, 0, false, false, 1 << 20);
        missive_proto::DeviceBundle {
            device,
            device_key: key.verifying_key().to_bytes(),
            identity: u.identity.map(|b| *b),
            one_time_key: u.one_time_keys.into_iter().next(),
            fallback: false,
        }
    }

    /// `user`'s devices, as if claimed from the key directory: the session knows them and has
    /// a session with each.
    fn know(s: &mut Session, user: &str, devices: &[u32]) {
        s.devices.update(missive_proto::UserDevices {
            user: user.into(),
            devices: devices.iter().map(|d| DeviceId(*d)).collect(),
        });
        for d in devices {
            let device = DeviceId(*d);
            let bundle = PEERS.with(|p| {
                let mut p = p.borrow_mut();
                let olm = p.entry((user.into(), device)).or_default();
                bundle_of(olm, user, device)
            });
            s.sealer
                .store()
                .lock()
                .accept_bundle(user, &bundle)
                .unwrap();
        }
    }

    /// What (`from`, `device`)'s SDK puts in an envelope of `content` for this device.
    fn envelope_from(from: &str, device: u32, sent_to: Option<&str>, content: &Content) -> Vec<u8> {
        let plain = DevicePlaintext {
            sent_to: sent_to.map(str::to_owned),
            resend_of: None,

            expires_in_secs: 0,
            content: seal(content).unwrap(),
        }
        .encode();
        let me = ("me".to_string(), DeviceId(1));
        PEERS.with(|p| {
            let mut p = p.borrow_mut();
            let olm = p.entry((from.into(), DeviceId(device))).or_default();
            if !olm.has_session(&me) {
                let bundle = ME.with(|m| {
                    let store = m.borrow().clone().expect("me() first");
                    let mut mine = store.lock();
                    bundle_of(&mut mine, "me", DeviceId(1))
                });
                olm.accept_bundle("me", &bundle).unwrap();
            }
            olm.encrypt(&me, &plain).unwrap()
        })
    }

    /// What (`user`, `device`) reads in an envelope this device sent it.
    fn open_as(user: &str, device: u32, envelope: &[u8]) -> Opened {
        let plain = PEERS.with(|p| {
            let mut p = p.borrow_mut();
            let olm = p
                .get_mut(&(user.into(), DeviceId(device)))
                .expect("a known peer");
            olm.decrypt(&("me".into(), DeviceId(1)), envelope).unwrap()
        });
        DevicePlaintext::decode(&plain).unwrap()
    }

    fn deliver_text(seq: u64, from: &str, msg: u8, text: &str) -> Frame {
        Deliver {
            seq: ServerSeq(seq),
            from: from.into(),
            from_device: DeviceId(1),
            client_msg_id: id(msg),
            server_ts_ms: 1000 + seq,
            payload: Payload::Envelope(envelope_from(from, 1, None, &Content::Text(text.into()))),
        }
        .into()
    }

    fn acks_in(outs: &[Output]) -> Vec<u64> {
        transmitted(outs)
            .into_iter()
            .filter_map(|f| match f {
                Frame::AckDelivery(a) => Some(a.up_to.0),
                _ => None,
            })
            .collect()
    }

    fn ready(auto_ack: bool) -> (Session, Instant) {
        let now = Instant::now();
        let mut s = Session::new(
            auto_ack,
            SeenSet::new(100),
            test_ids(),
            Arc::default(),
            me(),
            now,
        );
        s.connected(now, 1 << 20);
        drain(&mut s);
        know(&mut s, "bob", &[1]);
        know(&mut s, "carol", &[1]);
        (s, now)
    }

    /// A group-log delivery of a message from carol under a Megolm session we have no key of.
    fn keyless_group_message(seq: u64, n: u8) -> Frame {
        let body = crate::group::body::GroupBody {
            version: crate::group::body::BODY_VERSION,
            session_id: "unknown-session".into(),
            ciphertext: vec![n; 16],
        };
        missive_proto::GroupDeliver {
            group: GroupId(5),
            deliver: Deliver {
                seq: ServerSeq(seq),
                from: "carol".into(),
                from_device: DeviceId(1),
                client_msg_id: id(n),
                server_ts_ms: 1,
                payload: Payload::Group(Box::new(missive_proto::GroupMessage {
                    group: GroupId(5),
                    body: body.encode(),
                })),
            },
        }
        .into()
    }

    #[test]
    fn a_group_message_waits_for_its_key_then_is_given_up_and_acknowledged() {
        let (mut s, now) = ready(true);
        s.handle_frame(now, keyless_group_message(1, 1));
        s.flush_acks();
        let outs = drain(&mut s);
        assert!(
            !outs.iter().any(|o| matches!(o, Output::Events(_))),
            "held while its key may still come"
        );
        assert!(
            transmitted(&outs).is_empty(),
            "not acknowledged while it waits"
        );
        assert!(s.poll_timeout() <= Some(now + KEY_WAIT));
        // Nothing came: it is given up, told, and acknowledged on its group's log.
        s.handle_timeout(now + KEY_WAIT);
        s.flush_acks();
        let outs = drain(&mut s);
        assert!(outs.iter().any(|o| matches!(
            o,
            Output::Events(e) if matches!(e[..], [Event::GroupUndecryptable { .. }])
        )));
        assert!(transmitted(&outs).iter().any(|f| matches!(
            f,
            Frame::AckGroup(a) if a.group == GroupId(5) && a.up_to == ServerSeq(1)
        )));
    }

    #[test]
    fn sends_are_resent_with_the_same_id_after_reconnect() {
        let (mut s, now) = ready(true);
        assert!(s.send(id(1), "bob".into(), vec![1]));
        assert!(s.send(id(2), "bob".into(), vec![2]));
        assert!(
            !s.send(id(1), "bob".into(), vec![1]),
            "same id is one pending send"
        );
        let outs = drain(&mut s);
        assert_eq!(transmitted(&outs).len(), 2);
        s.handle_frame(
            now,
            Sent {
                client_msg_id: id(2),
                server_ts_ms: 5,
                duplicate: false,
            }
            .into(),
        );
        assert!(
            matches!(&drain(&mut s)[..], [Output::SendDone { id: i, result: Ok(_) }] if *i == id(2))
        );
        s.disconnected();
        assert!(s.send(id(3), "carol".into(), vec![3]));
        assert!(drain(&mut s).is_empty(), "nothing goes out while offline");
        s.connected(now, 1 << 20);
        let outs = drain(&mut s);
        let ids: Vec<ClientMsgId> = transmitted(&outs)
            .into_iter()
            .map(|f| match f {
                Frame::Send(x) => x.client_msg_id,
                other => panic!("{other:?}"),
            })
            .collect();
        assert_eq!(ids, vec![id(1), id(3)], "unanswered sends again, in order");
        assert_eq!(s.pending_sends(), 2);
    }

    #[test]
    fn rate_limited_sends_retry_after_a_pause_and_others_fail() {
        let (mut s, now) = ready(true);
        s.send(id(1), "bob".into(), vec![1]);
        s.send(id(2), "nobody".into(), vec![2]);
        drain(&mut s);
        s.handle_frame(
            now,
            Rejected {
                client_msg_id: id(1),
                code: ErrorCode::RateLimited.as_u16(),
                message: "slow".into(),
            }
            .into(),
        );
        s.handle_frame(
            now,
            Rejected {
                client_msg_id: id(2),
                code: ErrorCode::UnknownRecipient.as_u16(),
                message: "who".into(),
            }
            .into(),
        );
        let outs = drain(&mut s);
        assert!(matches!(
            &outs[..],
            [Output::SendDone { id: i, result: Err(ClientError::Rejected { code: 8, .. }) }] if *i == id(2)
        ));
        assert_eq!(s.poll_timeout(), Some(now + RETRY_DELAY));
        s.handle_timeout(now + RETRY_DELAY / 2);
        assert!(transmitted(&drain(&mut s)).is_empty());
        s.handle_timeout(now + RETRY_DELAY);
        let outs = drain(&mut s);
        assert!(matches!(transmitted(&outs)[..], [Frame::Send(ref x)] if x.client_msg_id == id(1)));
    }

    #[test]
    fn sends_refused_by_a_draining_server_go_again_after_the_reconnect_in_order() {
        let (mut s, now) = ready(true);
        for i in 1..=3 {
            s.send(id(i), "bob".into(), vec![i]);
        }
        drain(&mut s);
        // The server accepted 1, then started draining: 2 and 3 are refused.
        s.handle_frame(
            now,
            Sent {
                client_msg_id: id(1),
                server_ts_ms: 1,
                duplicate: false,
            }
            .into(),
        );
        for i in 2..=3 {
            s.handle_frame(
                now,
                Rejected {
                    client_msg_id: id(i),
                    code: ErrorCode::ShuttingDown.as_u16(),
                    message: "connection is closing".into(),
                }
                .into(),
            );
        }
        let outs = drain(&mut s);
        let failed = outs
            .iter()
            .any(|o| matches!(o, Output::SendDone { result: Err(_), .. }));
        assert!(
            !failed,
            "a draining server's refusal is not a failure: {outs:?}"
        );
        assert_eq!(s.pending_sends(), 2);
        s.disconnected();
        s.connected(now, 1 << 20);
        let outs = drain(&mut s);
        let ids: Vec<ClientMsgId> = transmitted(&outs)
            .into_iter()
            .filter_map(|f| match f {
                Frame::Send(x) => Some(x.client_msg_id),
                _ => None,
            })
            .collect();
        assert_eq!(ids, vec![id(2), id(3)]);
    }

    #[test]
    fn in_flight_sends_are_capped() {
        let (mut s, now) = ready(true);
        for i in 0..(MAX_IN_FLIGHT as u32 + 10) {
            let mut b = [0u8; 16];
            b[..4].copy_from_slice(&i.to_be_bytes());
            s.send(ClientMsgId(b), "bob".into(), vec![]);
        }
        assert_eq!(transmitted(&drain(&mut s)).len(), MAX_IN_FLIGHT);
        s.handle_frame(
            now,
            Sent {
                client_msg_id: ClientMsgId([0; 16]),
                server_ts_ms: 1,
                duplicate: false,
            }
            .into(),
        );
        assert_eq!(transmitted(&drain(&mut s)).len(), 1);
    }

    fn mismatch(n: u8, lists: &[(&str, &[u32])]) -> Frame {
        DeviceMismatch {
            client_msg_id: id(n),
            current: lists
                .iter()
                .map(|(user, devices)| missive_proto::UserDevices {
                    user: (*user).into(),
                    devices: devices.iter().map(|d| DeviceId(*d)).collect(),
                })
                .collect(),
        }
        .into()
    }

    fn sends_in(outs: &[Output]) -> Vec<&missive_proto::Send> {
        transmitted(outs)
            .into_iter()
            .filter_map(|f| match f {
                Frame::Send(s) => Some(s),
                _ => None,
            })
            .collect()
    }

    /// Answers the key claims among `outs` as the key directory would, for these devices.
    fn answer_claims(s: &mut Session, now: Instant, outs: &[Output], lists: &[(&str, &[u32])]) {
        for f in transmitted(outs) {
            let Frame::ClaimKeys(c) = f else { continue };
            let devices = lists
                .iter()
                .find(|(u, _)| *u == c.user)
                .map(|(_, d)| d.to_vec())
                .unwrap_or_default();
            let bundles = devices
                .iter()
                .map(|d| {
                    PEERS.with(|p| {
                        let mut p = p.borrow_mut();
                        let olm = p.entry((c.user.clone(), DeviceId(*d))).or_default();
                        bundle_of(olm, &c.user, DeviceId(*d))
                    })
                })
                .collect();
            let kb = missive_proto::KeyBundles {
                request_id: c.request_id,
                user: c.user.clone(),
                bundles,
            };
            s.handle_frame(now, kb.into());
        }
    }

    fn claimed_users(outs: &[Output]) -> Vec<String> {
        transmitted(outs)
            .into_iter()
            .filter_map(|f| match f {
                Frame::ClaimKeys(c) => Some(c.user.clone()),
                _ => None,
            })
            .collect()
    }

    #[test]
    fn encryption_adds_a_bounded_number_of_bytes_per_device() {
        let (mut s, now) = ready(true);
        let text = Content::Text("x".repeat(100));
        let plain_frame = |content: &Content| {
            let plain = DevicePlaintext {
                sent_to: None,
                resend_of: None,

                expires_in_secs: 0,
                content: seal(content).unwrap(),
            }
            .encode();
            missive_proto::encode_to_vec(
                &missive_proto::Send {
                    client_msg_id: id(0),
                    to: "bob".into(),
                    envelopes: vec![DeviceEnvelope {
                        device: DeviceId(1),
                        envelope: plain,
                    }],
                    own: Vec::new(),
                    expires_in_secs: 0,
                }
                .into(),
            )
            .unwrap()
            .len()
        };
        let mut sizes = Vec::new();
        for n in 1..=2u8 {
            s.send(id(n), "bob".into(), seal(&text).unwrap());
            let outs = drain(&mut s);
            let Some(Frame::Send(send)) = transmitted(&outs)
                .into_iter()
                .find(|f| matches!(f, Frame::Send(_)))
                .cloned()
            else {
                panic!("{outs:?}")
            };
            sizes.push(
                missive_proto::encode_to_vec(&send.clone().into())
                    .unwrap()
                    .len(),
            );
            // bob reads it and answers: from then on our messages are normal Olm messages.
            open_as("bob", 1, &send.envelopes[0].envelope);
            s.handle_frame(now, deliver_text(u64::from(n), "bob", 100 + n, "ok"));
            drain(&mut s);
        }
        let plain = plain_frame(&text);
        // The first message sets the session up (pre-key: base and one-time keys); the
        // following ones carry the ratchet key, a counter, a MAC and AES-CBC padding.
        // Measured when written: plaintext 212 B; Olm 376 B for the first, 272 B after.
        assert!(sizes[0] > sizes[1], "{sizes:?}");
        assert!(sizes[1] - plain <= 120, "{} > {plain} + 120", sizes[1]);
    }

    #[test]
    fn a_new_contact_is_claimed_then_encrypted_for() {
        let (mut s, now) = ready(true);
        s.send(
            id(1),
            "dave".into(),
            seal(&Content::Text("hey".into())).unwrap(),
        );
        let outs = drain(&mut s);
        assert_eq!(claimed_users(&outs), vec!["dave"]);
        assert!(sends_in(&outs).is_empty(), "nothing goes out unencrypted");
        // A second send to carol waits behind the first and claims nothing more.
        s.send(
            id(2),
            "dave".into(),
            seal(&Content::Text("2".into())).unwrap(),
        );
        assert!(claimed_users(&drain(&mut s)).is_empty());
        answer_claims(&mut s, now, &outs, &[("dave", &[1, 2])]);
        let outs = drain(&mut s);
        assert!(
            matches!(outs[0], Output::Persist),
            "saved before it leaves: {outs:?}"
        );
        let sends = sends_in(&outs);
        assert_eq!(sends.len(), 2);
        assert_eq!(sends[0].client_msg_id, id(1), "in order");
        for (i, c) in sends[0].envelopes.iter().enumerate() {
            assert_eq!(c.device, DeviceId(i as u32 + 1));
            assert!(!c.envelope.windows(3).any(|w| w == b"hey"), "encrypted");
            let opened = open_as("dave", c.device.0, &c.envelope);
            assert_eq!(opened.content, Content::Text("hey".into()));
            assert_eq!(opened.sent_to, None);
        }
    }

    #[test]
    fn a_mismatch_teaches_the_device_lists_and_the_send_goes_again_with_its_id() {
        let (mut s, now) = ready(true);
        s.send(
            id(1),
            "bob".into(),
            seal(&Content::Text("hi".into())).unwrap(),
        );
        let outs = drain(&mut s);
        let first = sends_in(&outs);
        assert_eq!(first[0].envelopes.len(), 1, "bob's one known device");
        assert!(first[0].own.is_empty(), "no other own device known yet");
        // bob has a phone and a laptop; we have a tablet (3) beside this device (1).
        s.handle_frame(now, mismatch(1, &[("bob", &[1, 2]), ("me", &[1, 3])]));
        let outs = drain(&mut s);
        let mut claimed = claimed_users(&outs);
        claimed.sort();
        assert_eq!(claimed, vec!["bob", "me"], "keys for the new devices");
        answer_claims(&mut s, now, &outs, &[("bob", &[1, 2]), ("me", &[1, 3])]);
        let outs = drain(&mut s);
        let again = sends_in(&outs);
        assert_eq!(again.len(), 1);
        assert_eq!(again[0].client_msg_id, id(1));
        let devices = |c: &[DeviceEnvelope]| c.iter().map(|c| c.device.0).collect::<Vec<_>>();
        assert_eq!(devices(&again[0].envelopes), vec![1, 2]);
        assert_eq!(devices(&again[0].own), vec![3]);
        let to_laptop = open_as("bob", 2, &again[0].envelopes[1].envelope);
        let to_tablet = open_as("me", 3, &again[0].own[0].envelope);
        assert_eq!(to_laptop.sent_to, None);
        assert_eq!(to_tablet.sent_to.as_deref(), Some("bob"));
        assert_eq!(to_tablet.content, Content::Text("hi".into()));

        // Later bob replaces his laptop: the app hears of it before the message goes again.
        s.send(
            id(2),
            "bob".into(),
            seal(&Content::Text("2".into())).unwrap(),
        );
        drain(&mut s);
        s.handle_frame(now, mismatch(2, &[("bob", &[1, 4])]));
        let outs = drain(&mut s);
        let Output::Events(e) = &outs[0] else {
            panic!("{outs:?}")
        };
        assert_eq!(
            e,
            &vec![Event::DevicesChanged {
                user: "bob".into(),
                added: vec![DeviceId(4)],
                removed: vec![DeviceId(2)],
            }]
        );
        answer_claims(&mut s, now, &outs, &[("bob", &[1, 4])]);
        let outs = drain(&mut s);
        assert_eq!(devices(&sends_in(&outs)[0].envelopes), vec![1, 4]);
        // The removed laptop no longer counts: no session, no identity (safety numbers).
        let olm = s.sealer.store().lock();
        assert!(olm.peer_identity(&("bob".into(), DeviceId(2))).is_none());
        assert!(olm.peer_identity(&("bob".into(), DeviceId(4))).is_some());
    }

    #[test]
    fn an_undecryptable_message_is_told_repaired_and_resent() {
        let (mut s, now) = ready(true);
        // A message on a session this device does not have (it lost its state, say).
        let mut stranger = OlmMachine::new();
        let bundle = ME.with(|m| {
            let store = m.borrow().clone().unwrap();
            let mut mine = store.lock();
            bundle_of(&mut mine, "me", DeviceId(1))
        });
        stranger.accept_bundle("me", &bundle).unwrap();
        let plain = DevicePlaintext {
            sent_to: None,
            resend_of: None,

            expires_in_secs: 0,
            content: seal(&Content::Text("lost".into())).unwrap(),
        }
        .encode();
        let mut broken = stranger
            .encrypt(&("me".into(), DeviceId(1)), &plain)
            .unwrap();
        let last = broken.len() - 1;
        broken[last] ^= 1;
        s.handle_frame(
            now,
            Deliver {
                seq: ServerSeq(4),
                from: "bob".into(),
                from_device: DeviceId(1),
                client_msg_id: id(40),
                server_ts_ms: 1,
                payload: Payload::Envelope(broken),
            }
            .into(),
        );
        s.flush_acks();
        let outs = drain(&mut s);
        assert!(outs.iter().any(|o| matches!(o, Output::Events(e) if matches!(&e[..], [Event::Undecryptable { client_msg_id, from, .. }] if *client_msg_id == id(40) && from == "bob"))), "{outs:?}");
        assert_eq!(acks_in(&outs), vec![4], "acknowledged, not stuck");
        // The session with bob was dropped: the resend request claims fresh keys first.
        assert_eq!(claimed_users(&outs), vec!["bob"]);
        answer_claims(&mut s, now, &outs, &[("bob", &[1])]);
        let outs = drain(&mut s);
        let request = sends_in(&outs);
        assert_eq!(request.len(), 1);
        let opened = open_as("bob", 1, &request[0].envelopes[0].envelope);
        assert_eq!(opened.content, Content::ResendRequest { ids: vec![id(40)] });

        // bob's side of the repair: a request for a message we sent sends it again, under
        // a new id that names the first.
        s.send(
            id(50),
            "bob".into(),
            seal(&Content::Text("again?".into())).unwrap(),
        );
        drain(&mut s);
        let ask = Deliver {
            seq: ServerSeq(5),
            from: "bob".into(),
            from_device: DeviceId(1),
            client_msg_id: id(60),
            server_ts_ms: 2,
            payload: Payload::Envelope(envelope_from(
                "bob",
                1,
                None,
                &Content::ResendRequest { ids: vec![id(50)] },
            )),
        };
        s.handle_frame(now, ask.into());
        let outs = drain(&mut s);
        assert!(
            !outs.iter().any(|o| matches!(o, Output::Events(_))),
            "not the app's business"
        );
        let resent = sends_in(&outs);
        assert_eq!(resent.len(), 1);
        assert_ne!(resent[0].client_msg_id, id(50));
        let opened = open_as("bob", 1, &resent[0].envelopes[0].envelope);
        assert_eq!(opened.resend_of, Some(id(50)));
        assert_eq!(opened.content, Content::Text("again?".into()));
    }

    #[test]
    fn a_resent_message_counts_as_the_one_it_repeats() {
        let (mut s, now) = ready(true);
        s.handle_frame(now, deliver_text(1, "bob", 7, "first"));
        let plain = DevicePlaintext {
            sent_to: None,
            resend_of: Some(id(7)),

            expires_in_secs: 0,
            content: seal(&Content::Text("first".into())).unwrap(),
        }
        .encode();
        let envelope = PEERS.with(|p| {
            p.borrow_mut()
                .get_mut(&("bob".into(), DeviceId(1)))
                .unwrap()
                .encrypt(&("me".into(), DeviceId(1)), &plain)
                .unwrap()
        });
        s.handle_frame(
            now,
            Deliver {
                seq: ServerSeq(2),
                from: "bob".into(),
                from_device: DeviceId(1),
                client_msg_id: id(8),
                server_ts_ms: 1,
                payload: Payload::Envelope(envelope),
            }
            .into(),
        );
        let events: Vec<Event> = drain(&mut s)
            .into_iter()
            .filter_map(|o| match o {
                Output::Events(e) => Some(e),
                _ => None,
            })
            .flatten()
            .collect();
        assert_eq!(events.len(), 1, "{events:?}");
    }

    #[test]
    fn a_copy_from_another_own_device_names_its_recipient() {
        let (mut s, now) = ready(true);
        s.handle_frame(
            now,
            Deliver {
                seq: ServerSeq(1),
                from: "me".into(),
                from_device: DeviceId(3),
                client_msg_id: id(7),
                server_ts_ms: 1,
                payload: Payload::Envelope(envelope_from(
                    "me",
                    3,
                    Some("bob"),
                    &Content::Text("yo".into()),
                )),
            }
            .into(),
        );
        let outs = drain(&mut s);
        assert!(matches!(
            &outs[0],
            Output::Events(e) if matches!(&e[..], [Event::Message { sent_to: Some(to), text, .. }] if to == "bob" && text == "yo")
        ));
    }

    #[test]
    fn oversized_sends_fail_instead_of_killing_the_connection() {
        let now = Instant::now();
        let mut s = Session::new(
            true,
            SeenSet::new(10),
            test_ids(),
            Arc::default(),
            me(),
            now,
        );
        s.connected(now, 1000);
        know(&mut s, "bob", &[1]);
        s.send(id(1), "bob".into(), vec![0; 2000]);
        assert!(matches!(
            &drain(&mut s)[..],
            [Output::SendDone {
                result: Err(ClientError::TooLarge { .. }),
                ..
            }]
        ));
        assert_eq!(s.pending_sends(), 0);
    }

    #[test]
    fn deliveries_are_counted_before_the_filter_and_told_apart_by_seq() {
        let now = Instant::now();
        let counters: Arc<DeliveryCounters> = Arc::default();
        let mut s = Session::new(
            true,
            SeenSet::new(100),
            test_ids(),
            counters.clone(),
            me(),
            now,
        );
        s.connected(now, 1 << 20);
        drain(&mut s);
        s.handle_frame(now, deliver_text(1, "alice", 1, "hi"));
        s.handle_frame(now, deliver_text(2, "alice", 2, "there"));
        // A reconnect redelivers seq 2 (not acked yet): expected, not a server mistake.
        s.handle_frame(now, deliver_text(2, "alice", 2, "there"));
        // The same message again under a new seq: the server stored it twice.
        s.handle_frame(now, deliver_text(3, "alice", 1, "hi"));
        let events = drain(&mut s)
            .iter()
            .filter(|o| matches!(o, Output::Events(_)))
            .count();
        assert_eq!(
            events, 2,
            "the filter still hides both repeats from the app"
        );
        let stats = counters.snapshot();
        assert_eq!(
            (stats.deliveries, stats.redeliveries, stats.duplicates),
            (4, 1, 1)
        );
    }

    #[test]
    fn duplicates_are_dropped_but_acked() {
        let (mut s, now) = ready(true);
        s.handle_frame(now, deliver_text(1, "alice", 1, "hi"));
        s.flush_acks();
        let outs = drain(&mut s);
        assert!(
            matches!(&outs[0], Output::Events(e) if matches!(&e[..], [Event::Message { text, .. }] if text == "hi"))
        );
        assert_eq!(acks_in(&outs), vec![1], "auto-ack after the event");
        // Redelivered on a new connection: no event, still acked.
        s.disconnected();
        s.connected(now, 1 << 20);
        drain(&mut s);
        s.handle_frame(now, deliver_text(1, "alice", 1, "hi"));
        s.flush_acks();
        let outs = drain(&mut s);
        assert!(!outs.iter().any(|o| matches!(o, Output::Events(_))));
        assert_eq!(acks_in(&outs), vec![1]);
        // Same id from another sender, and a delivery receipt with the same id, are not dups.
        s.handle_frame(now, deliver_text(2, "bob", 1, "yo"));
        s.handle_frame(
            now,
            Deliver {
                seq: ServerSeq(3),
                from: "alice".into(),
                from_device: DeviceId(1),
                client_msg_id: id(1),
                server_ts_ms: 1,
                payload: Payload::Delivered,
            }
            .into(),
        );
        s.flush_acks();
        let outs = drain(&mut s);
        assert_eq!(
            outs.iter()
                .filter(|o| matches!(o, Output::Events(_)))
                .count(),
            2
        );
        assert_eq!(acks_in(&outs), vec![3], "one coalesced ack per batch");
    }

    #[test]
    fn manual_acks_never_cover_what_the_app_has_not_acked() {
        let (mut s, now) = ready(false);
        s.handle_frame(now, deliver_text(1, "alice", 1, "a"));
        s.handle_frame(now, deliver_text(2, "alice", 2, "b"));
        s.handle_frame(now, deliver_text(3, "alice", 1, "a")); // duplicate of seq 1's message
        s.handle_frame(now, deliver_text(4, "alice", 3, "c"));
        s.flush_acks();
        let outs = drain(&mut s);
        assert!(acks_in(&outs).is_empty(), "the app acked nothing yet");
        s.ack(ServerSeq(1).into());
        s.flush_acks();
        assert_eq!(acks_in(&drain(&mut s)), vec![1]);
        s.ack(ServerSeq(2).into());
        s.flush_acks();
        // 3 was a duplicate: released once 2 is acked, but 4 is still the app's.
        assert_eq!(acks_in(&drain(&mut s)), vec![3]);
        s.ack(ServerSeq(4).into());
        s.flush_acks();
        assert_eq!(acks_in(&drain(&mut s)), vec![4]);
    }

    #[test]
    fn acks_after_reconnect_stay_within_what_was_redelivered() {
        let (mut s, now) = ready(false);
        s.handle_frame(now, deliver_text(5, "alice", 5, "a"));
        s.handle_frame(now, deliver_text(6, "alice", 6, "b"));
        drain(&mut s);
        s.disconnected();
        s.ack(ServerSeq(6).into());
        s.flush_acks();
        assert!(
            acks_in(&drain(&mut s)).is_empty(),
            "offline: nothing written"
        );
        s.connected(now, 1 << 20);
        s.flush_acks();
        assert!(
            acks_in(&drain(&mut s)).is_empty(),
            "nothing redelivered yet"
        );
        s.handle_frame(now, deliver_text(5, "alice", 5, "a"));
        s.flush_acks();
        assert_eq!(acks_in(&drain(&mut s)), vec![5]);
        s.handle_frame(now, deliver_text(6, "alice", 6, "b"));
        s.flush_acks();
        assert_eq!(acks_in(&drain(&mut s)), vec![6]);
    }

    #[test]
    fn read_receipts_become_one_event_per_id() {
        let (mut s, now) = ready(true);
        s.handle_frame(
            now,
            Deliver {
                seq: ServerSeq(9),
                from: "bob".into(),
                from_device: DeviceId(2),
                client_msg_id: id(50),
                server_ts_ms: 1,
                payload: Payload::Envelope(envelope_from(
                    "bob",
                    2,
                    None,
                    &Content::Read {
                        ids: vec![id(1), id(2)],
                    },
                )),
            }
            .into(),
        );
        let outs = drain(&mut s);
        let Output::Events(events) = &outs[0] else {
            panic!("{outs:?}")
        };
        assert_eq!(events.len(), 2);
        for (e, want) in events.iter().zip([id(1), id(2)]) {
            assert!(
                matches!(e, Event::Receipt { client_msg_id, status: ReceiptStatus::Read, server_seq: ServerSeq(9), envelope_id, .. } if *client_msg_id == want && *envelope_id == id(50))
            );
        }
    }

    #[test]
    fn delivered_receipts_for_our_read_receipts_are_dropped() {
        let (mut s, now) = ready(true);
        let ours = test_ids().generate();
        for (seq, msg_id) in [(1, ours), (2, id(3))] {
            s.handle_frame(
                now,
                Deliver {
                    seq: ServerSeq(seq),
                    from: "bob".into(),
                    from_device: DeviceId(1),
                    client_msg_id: msg_id,
                    server_ts_ms: 1,
                    payload: Payload::Delivered,
                }
                .into(),
            );
        }
        s.flush_acks();
        let outs = drain(&mut s);
        let events: Vec<&Event> = outs
            .iter()
            .filter_map(|o| match o {
                Output::Events(e) => Some(e),
                _ => None,
            })
            .flatten()
            .collect();
        assert!(
            matches!(events[..], [Event::Receipt { client_msg_id, .. }] if *client_msg_id == id(3))
        );
        // Only receipts: the ack is held, then goes out on its timer.
        assert_eq!(acks_in(&outs), Vec::<u64>::new());
        assert_eq!(s.poll_timeout(), Some(now + RECEIPT_ACK_DELAY));
        s.handle_timeout(now + RECEIPT_ACK_DELAY);
        assert_eq!(acks_in(&drain(&mut s)), vec![2]);
    }

    fn receipt(seq: u64) -> Frame {
        Deliver {
            seq: ServerSeq(seq),
            from: "bob".into(),
            from_device: DeviceId(1),
            client_msg_id: id(seq as u8),
            server_ts_ms: 1,
            payload: Payload::Delivered,
        }
        .into()
    }

    #[test]
    fn receipt_acks_are_held_and_coalesced_until_their_timer() {
        let (mut s, now) = ready(true);
        for seq in 1..=3 {
            let at = now + Duration::from_millis(10 * seq);
            s.handle_frame(at, receipt(seq));
            s.flush_acks();
            // Sends go out meanwhile; the held ack does not.
            s.send(id(100 + seq as u8), "bob".into(), vec![1]);
            let outs = drain(&mut s);
            assert_eq!(acks_in(&outs), Vec::<u64>::new());
            assert_eq!(transmitted(&outs).len(), 1);
        }
        // Due 200 ms after the first receipt, for all three.
        let due = now + Duration::from_millis(10) + RECEIPT_ACK_DELAY;
        assert_eq!(s.poll_timeout(), Some(due));
        s.handle_timeout(due - Duration::from_millis(1));
        assert_eq!(acks_in(&drain(&mut s)), Vec::<u64>::new());
        s.handle_timeout(due);
        assert_eq!(acks_in(&drain(&mut s)), vec![3]);
        assert_ne!(s.poll_timeout(), Some(due));
    }

    #[test]
    fn messages_are_acked_at_once_and_many_receipts_too() {
        let (mut s, now) = ready(true);
        for seq in 1..LAZY_ACK_LIMIT as u64 {
            s.handle_frame(now, receipt(seq));
        }
        s.flush_acks();
        assert_eq!(acks_in(&drain(&mut s)), Vec::<u64>::new());
        s.handle_frame(now, receipt(LAZY_ACK_LIMIT as u64));
        s.flush_acks();
        assert_eq!(acks_in(&drain(&mut s)), vec![LAZY_ACK_LIMIT as u64]);
        // A message (its sender waits for "delivered") takes any held receipt ack along.
        s.handle_frame(now, receipt(100));
        s.flush_acks();
        s.handle_frame(
            now,
            Deliver {
                seq: ServerSeq(101),
                from: "bob".into(),
                from_device: DeviceId(1),
                client_msg_id: id(200),
                server_ts_ms: 1,
                payload: Payload::Envelope(envelope_from(
                    "bob",
                    1,
                    None,
                    &Content::Text("hi".into()),
                )),
            }
            .into(),
        );
        s.flush_acks();
        assert_eq!(acks_in(&drain(&mut s)), vec![101]);
    }

    #[test]
    fn garbage_envelopes_are_acked_and_told_as_undecryptable() {
        let (mut s, now) = ready(false);
        s.handle_frame(
            now,
            Deliver {
                seq: ServerSeq(1),
                from: "mallory".into(),
                from_device: DeviceId(1),
                client_msg_id: id(1),
                server_ts_ms: 1,
                payload: Payload::Envelope(vec![0xff; 7]),
            }
            .into(),
        );
        s.flush_acks();
        let outs = drain(&mut s);
        let events: Vec<&Event> = outs
            .iter()
            .filter_map(|o| match o {
                Output::Events(e) => Some(e),
                _ => None,
            })
            .flatten()
            .collect();
        assert!(
            matches!(events[..], [Event::Undecryptable { from, .. }] if from == "mallory"),
            "never a silent drop: {events:?}"
        );
        // Handled by the SDK (it asked for a resend), so acknowledged at once even though
        // the app acknowledges its messages itself.
        assert_eq!(acks_in(&outs), vec![1]);
    }

    #[test]
    fn subscriptions_and_visibility_are_restored_on_reconnect() {
        let (mut s, now) = ready(true);
        s.subscribe_presence("bob".into());
        s.set_visibility(Visibility::Nobody);
        assert_eq!(transmitted(&drain(&mut s)).len(), 2);
        s.handle_frame(
            now,
            Presence {
                user: "bob".into(),
                state: PresenceState::Online,
            }
            .into(),
        );
        assert!(matches!(&drain(&mut s)[..], [Output::Events(_)]));
        s.disconnected();
        s.typing("bob".into(), true);
        assert!(drain(&mut s).is_empty(), "typing is dropped while offline");
        s.connected(now, 1 << 20);
        let outs = drain(&mut s);
        let frames = transmitted(&outs);
        assert!(matches!(
            frames[..],
            [Frame::SetPresenceVisibility(_), Frame::SubscribePresence(_)]
        ));
    }

    #[test]
    fn pings_on_schedule_and_gives_up_on_a_silent_server() {
        let (mut s, now) = ready(true);
        assert_eq!(s.poll_timeout(), Some(now + PING_INTERVAL));
        s.handle_timeout(now + PING_INTERVAL);
        assert!(matches!(transmitted(&drain(&mut s))[..], [Frame::Ping(_)]));
        s.handle_frame(now + PING_INTERVAL, Pong { nonce: 1 }.into());
        s.handle_frame(now, Ping { nonce: 77 }.into());
        assert!(matches!(
            transmitted(&drain(&mut s))[..],
            [Frame::Pong(Pong { nonce: 77 })]
        ));
        let silent = now + PING_INTERVAL + DEAD_AFTER;
        s.handle_timeout(silent);
        assert!(drain(&mut s).iter().any(|o| matches!(
            o,
            Output::Disconnect {
                retry_after: None,
                ..
            }
        )));
    }

    #[test]
    fn close_goaway_and_errors() {
        let (mut s, now) = ready(false);
        s.handle_frame(now, deliver_text(1, "alice", 1, "a"));
        drain(&mut s);
        s.ack(ServerSeq(1).into());
        assert!(s.close());
        let outs = drain(&mut s);
        let frames = transmitted(&outs);
        assert!(
            matches!(frames[..], [Frame::AckDelivery(_), Frame::Bye(_)]),
            "ack before Bye"
        );
        s.handle_frame(now, missive_proto::Bye {}.into());
        assert!(matches!(&drain(&mut s)[..], [Output::Closed]));

        let (mut s, now) = ready(true);
        s.handle_frame(
            now,
            Goaway {
                reconnect_after_ms: 750,
            }
            .into(),
        );
        assert!(
            matches!(&drain(&mut s)[..], [Output::Disconnect { retry_after: Some(d), .. }] if *d == Duration::from_millis(750))
        );
        s.handle_frame(
            now,
            missive_proto::Error::new(ErrorCode::IdleTimeout, "idle").into(),
        );
        assert!(matches!(
            &drain(&mut s)[..],
            [Output::Disconnect {
                retry_after: None,
                ..
            }]
        ));
        s.handle_frame(
            now,
            missive_proto::Error::new(ErrorCode::AuthFailed, "no").into(),
        );
        assert!(matches!(
            &drain(&mut s)[..],
            [Output::Fatal(ClientError::AuthFailed(_))]
        ));

        let now = Instant::now();
        let mut offline = Session::new(
            true,
            SeenSet::new(10),
            test_ids(),
            Arc::default(),
            me(),
            now,
        );
        assert!(!offline.close(), "nothing to wait for when offline");
    }
}
