//! The per-connection protocol as a plain state machine: no sockets, no clock, no storage.
//!
//! The connection driver (`connection.rs`) feeds inputs and executes outputs:
//!
//! - inputs: [`Session::handle_frame`], [`Session::handle_decode_error`],
//!   [`Session::handle_device_key`], [`Session::handle_register_result`],
//!   [`Session::handle_send_result`], [`Session::handle_group_send_result`],
//!   [`Session::handle_ack_result`],
//!   [`Session::handle_mailbox_read`], [`Session::handle_pushed`],
//!   [`Session::handle_group_positions`], [`Session::handle_group_log_read`],
//!   [`Session::handle_group_pushed`], [`Session::handle_group_ack_result`],
//!   [`Session::handle_overflow`], [`Session::handle_goaway`], [`Session::handle_timeout`];
//! - outputs: after **every** input the driver drains [`Session::poll_action`] until `None`,
//!   executing actions in order (frames are written in that order), then re-arms its timer
//!   with [`Session::poll_timeout`]. `Action::Close` comes last: the driver flushes what
//!   was queued before it, then closes the transport.
//!
//! Delivery rule: the device's mailbox is read in order from `next_deliver`; items pushed live
//! by the store are delivered directly only when no read is outstanding and nothing older
//! may be waiting in storage; otherwise they are dropped and picked up by the next read. The
//! driver must register the session for live pushes *before* it executes the first
//! `ReadMailbox` (and `ReadGroupPositions`), so every item is either in that read or pushed
//! after it. The group logs (protocol version 6) follow the same rule per group, in
//! `group_streams.rs`, and share the delivery window with the mailbox.

use crate::budget::{Rate, TokenBucket};
use crate::group_requests;
use crate::group_streams::{GroupOut, GroupStreams, LiveItem, LogItem, MailboxShare, Window};
use crate::key_requests::{KeyPolicy, KeyRequests, KeyStep, KeyStoreRefusal};
use ed25519_dalek::{Signature, Verifier, VerifyingKey};
use missive_proto::{
    check_action, check_invite, CallAction, CallEndReason, CallId, CallInvite, CallUpdate,
    CallUpdateKind, MAX_CALL_HISTORY,
};
use missive_proto::{
    login_transcript, max_envelope_len, validate_user_name, AckDelivery, ClientMsgId, Deliver,
    DeviceEnvelope, DeviceId, DeviceMismatch, Error, ErrorCode, Frame, Goaway, GroupId, GroupOp,
    GroupRead, GroupRequest, GroupSend, Payload, Pong, ProtoError, Rejected, RequestRefused, Send,
    Sent, ServerHello, ServerSeq, StoryPost, StoryViewed, Visibility, Welcome, EXPORTER_LEN,
    MAX_DEVICES_PER_USER, MIN_PROTOCOL_VERSION, PROTOCOL_VERSION,
};
use missive_storage::{
    AppendOutcome, ClaimedBundle, GroupSendOutcome, KeyStatus, KeyUpload, LinkOutcome, LogPosition,
    RegisterOutcome, StoredItem, StoryOutcome, UploadOutcome,
};
use std::collections::{HashSet, VecDeque};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// Limits and policy a session enforces; built from the edge config.
#[derive(Debug, Clone)]
pub struct SessionConfig {
    /// Largest frame payload accepted (advertised in `ServerHello`).
    pub max_frame: u32,
    /// Most unacknowledged `Deliver` frames at once.
    pub delivery_window: usize,
    /// Most sends awaiting their `Sent`/`Rejected`.
    pub max_in_flight_sends: usize,
    /// Sustained sends per second allowed.
    pub send_rate_per_sec: u32,
    /// Sends allowed in a burst above the sustained rate.
    pub send_burst: u32,
    /// Close after this long without a frame from the client.
    pub idle_timeout: Duration,
    /// Registration needs an invite token.
    pub require_invite: bool,
    /// A connection not logged in this long after it started is closed (`LoginTimeout`).
    pub login_timeout: Duration,
    /// Envelope bytes a connection may send, per second and in a burst (`RateLimited`).
    pub send_bytes: Rate,
    /// Frames of any kind after login (`Error{RateLimited}` and close past it).
    pub frames: Rate,
    /// `SetPresenceVisibility` frames.
    pub presence_changes: Rate,
    /// `SubscribePresence` frames.
    pub subscribes: Rate,
    /// `Typing` frames forwarded; the excess is dropped.
    pub typing: Rate,
    /// `Ping` frames (`Error{RateLimited}` and close past it): a client pings every few
    /// seconds at most, and each one costs a `Pong`.
    pub pings: Rate,
    /// Distinct users one connection may watch (`Error{LimitExceeded}` past it).
    pub max_subscriptions: usize,
    /// Envelope bytes delivered and not yet acknowledged, at most (at least one item always
    /// goes out): with `delivery_window` it bounds what a connection buffers for its peer.
    pub delivery_window_bytes: usize,
    /// Key-directory budgets and thresholds.
    pub keys: KeyPolicy,
    /// Devices one user may have, the first included.
    pub max_devices: usize,
    /// `CreateLinkCode` requests per connection.
    pub link_codes: Rate,
    /// `GroupRequest` frames per connection (`RequestRefused{RateLimited}` past it).
    pub group_requests: Rate,
    /// Most members a group may have.
    pub max_group_members: usize,
    /// Most users one status update may go to.
    pub max_story_audience: usize,
    /// `TurnCredentialsRequest` frames per connection (`RequestRefused{RateLimited}` past
    /// it): each one is an HMAC, and a client needs one per call.
    pub turn_credentials: Rate,
    /// `CallInvite` frames per connection (the invite ends `Refused{RateLimited}` past it).
    pub call_invites: Rate,
    /// `CallAction` and `CallHistoryRequest` frames per connection (dropped past it).
    pub call_actions: Rate,
}

/// Something the driver must do for the session.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Action {
    /// Write this frame to the client.
    Send(Frame),
    /// The connection authenticated with `TransferLogin`: after the frames sent so far, it
    /// carries one media transfer of this device, outside the session.
    BecomeTransfer {
        /// User name.
        user: String,
        /// Device id.
        device: DeviceId,
    },
    /// Look up the stored key of a device; answer with `handle_device_key`.
    LookupDevice {
        /// User name.
        user: String,
        /// Device id.
        device: DeviceId,
    },
    /// Create an account; answer with `handle_register_result`.
    Register {
        /// User name (validated).
        user: String,
        /// Device id.
        device: DeviceId,
        /// Verified device public key.
        key: [u8; 32],
        /// Invite token as given.
        invite: Option<String>,
        /// Whether the token must be valid (and is consumed).
        require_invite: bool,
    },
    /// The session is authenticated: register it for live pushes and presence.
    Online {
        /// User name.
        user: String,
        /// Device id.
        device: DeviceId,
    },
    /// Store a message durably; answer with `handle_send_result`.
    Store {
        /// Sender's message id.
        client_msg_id: ClientMsgId,
        /// Recipient user.
        to: String,
        /// One opaque copy per device of `to`.
        envelopes: Vec<DeviceEnvelope>,
        /// One opaque copy per other device of the sender.
        own: Vec<DeviceEnvelope>,
        /// Undelivered copies are dropped after this many seconds (0: never).
        expires_in_secs: u32,
    },
    /// Delete this device's mailbox up to `up_to` (and queue receipts); answer with
    /// `handle_ack_result`.
    Ack {
        /// Highest acknowledged seq.
        up_to: ServerSeq,
    },
    /// Read up to `limit` mailbox items from `from`, stopping after the item whose envelopes
    /// reach `max_bytes` in all; answer with `handle_mailbox_read`.
    ReadMailbox {
        /// First seq wanted.
        from: ServerSeq,
        /// Most items wanted.
        limit: usize,
        /// Payload bytes after which the read stops (it always returns at least one item).
        max_bytes: usize,
    },
    /// Persist this user's presence visibility and tell subscribers; answer with
    /// `handle_visibility_stored`. At most one is in flight; changes meanwhile coalesce.
    SetVisibility(Visibility),
    /// Subscribe this session to a user's presence (and send the current state).
    SubscribePresence(String),
    /// Publish keys of this device; answer with `handle_keys_uploaded`.
    UploadKeys {
        /// The request's id.
        request_id: u32,
        /// What to store (checked: signed by this device, within the budgets).
        upload: KeyUpload,
    },
    /// Claim one bundle per device of `user` (if the requester's claim budget allows);
    /// answer with `handle_keys_claimed`.
    ClaimKeys {
        /// The request's id.
        request_id: u32,
        /// Whose devices.
        user: String,
    },
    /// Read this device's standing in the key directory; answer with `handle_key_status`.
    CheckKeys,
    /// Add a device to `user` with a link code; answer with `handle_link_result` (or
    /// `handle_register_refused`).
    LinkDevice {
        /// The account.
        user: String,
        /// The code.
        code: String,
        /// The new device's verified login key.
        key: [u8; 32],
        /// Devices the user may have, the first included.
        max_devices: usize,
    },
    /// Make and store a link code for this user; answer with `answer`.
    CreateLinkCode {
        /// The request's id.
        request_id: u32,
    },
    /// List this user's devices; answer with `answer`.
    ListDevices {
        /// The request's id.
        request_id: u32,
    },
    /// Drop the undelivered copies of this user's message to `to`; answer with `answer`.
    Retract {
        /// The request's id.
        request_id: u32,
        /// The message.
        client_msg_id: ClientMsgId,
        /// Its recipient.
        to: String,
    },
    /// Remove a device of this user; answer with `answer`.
    RemoveDevice {
        /// The request's id.
        request_id: u32,
        /// The device.
        device: DeviceId,
    },
    /// Carry out a group request of this user (already checked well-formed); answer with
    /// `answer` (a `GroupAnswer` or a `RequestRefused`).
    Group {
        /// The request's id.
        request_id: u32,
        /// What is asked.
        op: GroupOp,
        /// Most members a group may have.
        max_members: usize,
    },
    /// Store a group message once for every member; answer with `handle_group_send_result`.
    StoreGroup {
        /// Sender's message id.
        client_msg_id: ClientMsgId,
        /// The group.
        group: GroupId,
        /// The membership epoch it was encrypted for.
        epoch: u64,
        /// The ciphertext.
        body: Vec<u8>,
        /// Undelivered references are dropped after this many seconds (0: never).
        expires_in_secs: u32,
    },
    /// Count a read receipt of a group message and tell its sender's live devices.
    GroupRead(GroupRead),
    /// Store a status update once for its audience; answer with `handle_story_result`.
    StoreStory {
        /// Poster's id of the post.
        client_msg_id: ClientMsgId,
        /// Who may view it (checked names).
        audience: Vec<String>,
        /// The encrypted post.
        body: Vec<u8>,
    },
    /// Record a view of a status update and tell its poster's live devices.
    StoryViewed(StoryViewed),
    /// List this user's live status updates; answer with `answer`.
    ListStories {
        /// The request's id.
        request_id: u32,
    },
    /// Mint TURN credentials for this user; answer with `answer` (`TurnCredentials`, or
    /// `RequestRefused{RelayUnavailable}` when the edge runs no relay).
    TurnCredentials {
        /// The request's id.
        request_id: u32,
    },
    /// Hand a call invite or action of this device to the switchboard.
    Call(CallRequest),
    /// Read this user's call history; answer with `answer` (`CallHistory`).
    CallHistory {
        /// The request's id.
        request_id: u32,
        /// Most records (already capped).
        limit: usize,
    },
    /// Write a group log item's frame, encoded once for all its readers.
    SendGroupDelivery(Arc<LiveItem>),
    /// Load where this device stands in each of its groups' logs; answer with
    /// `handle_group_positions`.
    ReadGroupPositions,
    /// Read `group`'s log `from..=until`; answer with `handle_group_log_read`.
    ReadGroupLog {
        /// The group.
        group: GroupId,
        /// First seq.
        from: ServerSeq,
        /// Last seq this device may read.
        until: ServerSeq,
        /// Most items.
        limit: usize,
        /// Body bytes after which the read may stop.
        max_bytes: usize,
    },
    /// Move this device's cursor in `group`'s log to `up_to`; answer with
    /// `handle_group_ack_result`.
    AckGroup {
        /// The group.
        group: GroupId,
        /// The new cursor.
        up_to: ServerSeq,
    },
    /// Forward a typing indicator to the live sessions of `to`.
    Typing {
        /// Recipient user.
        to: String,
        /// Started or stopped.
        typing: bool,
    },
    /// Flush queued frames and close the connection.
    Close,
}

/// A well-formed call request of the logged-in device, for the switchboard.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CallRequest {
    /// Ring a user.
    Invite(CallInvite),
    /// Act in a call.
    Action(CallAction),
}

/// Result of looking up a device for login.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DeviceLookup {
    /// The device's key; `disabled` when an admin disabled the account.
    Found {
        /// Stored public key.
        key: [u8; 32],
        /// The account is disabled.
        disabled: bool,
    },
    /// No such user or device.
    Unknown,
    /// Storage failed.
    Failed,
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum Phase {
    AwaitHello,
    AwaitAuth,
    /// A login or registration is being checked against storage.
    Authenticating {
        user: String,
        device: DeviceId,
        /// For `Login`: the signature to verify once the key is known.
        signature: Option<[u8; 64]>,
        /// A `TransferLogin`: the connection becomes one media transfer.
        transfer: bool,
    },
    /// Handed over to a media transfer; the session takes no more frames.
    Transfer,
    Active {
        user: String,
        device: DeviceId,
    },
    Closed,
}

/// Why the session ended; for logs and metrics.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CloseReason {
    /// An error code was sent to the client.
    Error(ErrorCode),
    /// The client said `Bye`.
    Bye,
    /// The server is draining or the device logged in elsewhere.
    Goaway,
}

/// One connection's protocol state. See the module docs for the input/output contract.
#[derive(Debug)]
pub struct Session {
    config: SessionConfig,
    /// `CreateLinkCode` budget.
    link_codes: TokenBucket,
    /// `GroupRequest` budget.
    group_requests: TokenBucket,
    /// `TurnCredentialsRequest` budget.
    turn_credentials: TokenBucket,
    /// `CallInvite` budget.
    call_invites: TokenBucket,
    /// `CallAction` and `CallHistoryRequest` budget.
    call_actions: TokenBucket,
    /// The protocol version agreed in `Hello` (0 before it).
    version: u16,
    /// Key-directory requests (uploads, claims) and their budgets.
    keys: KeyRequests,
    /// The logged-in device's login key (verifies the identity keys it publishes).
    device_key: Option<[u8; 32]>,
    challenge: [u8; 32],
    exporter: [u8; EXPORTER_LEN],
    phase: Phase,
    actions: VecDeque<Action>,
    last_client_frame: Instant,
    /// When the connection must be logged in by.
    login_deadline: Instant,
    /// Send-rate budget (sends per second).
    sends: TokenBucket,
    /// Envelope-byte budget of sends.
    send_bytes: TokenBucket,
    /// Budget of every frame after login.
    frames: TokenBucket,
    presence_changes: TokenBucket,
    subscribes: TokenBucket,
    typing: TokenBucket,
    pings: TokenBucket,
    /// Users this connection watches (bounded by `max_subscriptions`).
    subscriptions: HashSet<String>,
    /// A visibility change is being stored; the latest later one waits here.
    visibility_in_flight: bool,
    pending_visibility: Option<Visibility>,
    sends_in_flight: usize,
    /// Ids of the sends whose `Sent` (or `Rejected`) has not been written yet.
    awaiting_sent: Vec<ClientMsgId>,
    /// `Deliver` frames held back, in seq order, because the first of them is the `Delivered`
    /// receipt of a message whose `Sent` is still to come (see [`Session::deliver`]).
    held_frames: VecDeque<Deliver>,
    /// An `Action::Ack` is being applied; later acks wait and merge into `pending_ack`.
    ack_in_flight: bool,
    pending_ack: Option<ServerSeq>,
    /// Next mailbox seq to deliver (everything below was delivered on this connection).
    next_deliver: ServerSeq,
    /// Delivered, not yet acknowledged, with the payload bytes of each.
    unacked: VecDeque<(ServerSeq, usize)>,
    /// Sum of the payload bytes in `unacked`.
    unacked_bytes: usize,
    reading: bool,
    /// The byte budget of the outstanding read: a read that reached it may have left items.
    read_max_bytes: usize,
    /// Items may be waiting in storage beyond what was delivered.
    backlog: bool,
    /// Items pushed while a read was outstanding.
    held_pushes: Vec<(ServerSeq, StoredItem)>,
    /// The group logs this device reads (version 6 and later, once logged in).
    groups: Option<GroupStreams>,
    bye_requested: bool,
    draining: bool,
    close_reason: Option<CloseReason>,
}

impl Session {
    /// A new session for a connection whose TLS exporter is `exporter`; `challenge` must be
    /// fresh randomness.
    pub fn new(
        now: Instant,
        config: SessionConfig,
        challenge: [u8; 32],
        exporter: [u8; EXPORTER_LEN],
    ) -> Self {
        let sends = TokenBucket::new(
            Rate::per_second(config.send_rate_per_sec, config.send_burst),
            now,
        );
        Self {
            link_codes: TokenBucket::new(config.link_codes, now),
            group_requests: TokenBucket::new(config.group_requests, now),
            turn_credentials: TokenBucket::new(config.turn_credentials, now),
            call_invites: TokenBucket::new(config.call_invites, now),
            call_actions: TokenBucket::new(config.call_actions, now),
            version: 0,
            keys: KeyRequests::new(config.keys, now),
            device_key: None,
            login_deadline: now + config.login_timeout,
            sends,
            send_bytes: TokenBucket::new(config.send_bytes, now),
            frames: TokenBucket::new(config.frames, now),
            presence_changes: TokenBucket::new(config.presence_changes, now),
            subscribes: TokenBucket::new(config.subscribes, now),
            typing: TokenBucket::new(config.typing, now),
            pings: TokenBucket::new(config.pings, now),
            subscriptions: HashSet::new(),
            visibility_in_flight: false,
            pending_visibility: None,
            config,
            challenge,
            exporter,
            phase: Phase::AwaitHello,
            actions: VecDeque::new(),
            last_client_frame: now,
            sends_in_flight: 0,
            awaiting_sent: Vec::new(),
            held_frames: VecDeque::new(),
            ack_in_flight: false,
            pending_ack: None,
            next_deliver: ServerSeq(0),
            unacked: VecDeque::new(),
            unacked_bytes: 0,
            reading: false,
            read_max_bytes: usize::MAX,
            backlog: false,
            held_pushes: Vec::new(),
            groups: None,
            bye_requested: false,
            draining: false,
            close_reason: None,
        }
    }

    /// Next action for the driver, in order. Once the queue is drained it gives its buffer
    /// back: most sessions sit idle between bursts, and four queued actions' room is 608
    /// bytes per connection (an allocation per burst costs far less than a message).
    pub fn poll_action(&mut self) -> Option<Action> {
        let action = self.actions.pop_front();
        if action.is_none() && self.actions.capacity() > 0 {
            self.actions = VecDeque::new();
        }
        action
    }

    /// When `handle_timeout` must be called next: the idle deadline, before login the login
    /// deadline, and after it a paced group cursor write, whichever comes first.
    pub fn poll_timeout(&self) -> Option<Instant> {
        let idle = self.last_client_frame + self.config.idle_timeout;
        match self.phase {
            Phase::Closed => None,
            Phase::Active { .. } => {
                let cursors = self.groups.as_ref().and_then(GroupStreams::poll_timeout);
                Some(cursors.map_or(idle, |c| c.min(idle)))
            }
            _ => Some(idle.min(self.login_deadline)),
        }
    }

    /// Group cursors the client acknowledged and that were not written yet: the driver
    /// writes them when the connection ends without a `Bye`.
    pub fn take_unwritten_cursors(&mut self) -> Vec<(GroupId, ServerSeq)> {
        self.groups
            .as_mut()
            .map(GroupStreams::take_unwritten)
            .unwrap_or_default()
    }

    /// The users this session watches (the driver unsubscribes them when it closes).
    pub fn subscriptions(&self) -> impl Iterator<Item = &str> {
        self.subscriptions.iter().map(String::as_str)
    }

    /// True once `Action::Close` was emitted.
    pub fn is_closed(&self) -> bool {
        self.phase == Phase::Closed
    }

    /// Why the session closed, once it has.
    pub fn close_reason(&self) -> Option<CloseReason> {
        self.close_reason
    }

    /// The authenticated (user, device), once logged in.
    pub fn identity(&self) -> Option<(&str, DeviceId)> {
        match &self.phase {
            Phase::Active { user, device } => Some((user, *device)),
            _ => None,
        }
    }

    /// The largest frame payload this session accepts.
    pub fn max_frame(&self) -> u32 {
        self.config.max_frame
    }

    /// Deliveries sent and not yet acknowledged.
    pub fn unacked_deliveries(&self) -> usize {
        self.unacked.len()
    }

    fn send(&mut self, frame: impl Into<Frame>) {
        self.actions.push_back(Action::Send(frame.into()));
    }

    fn fail(&mut self, code: ErrorCode, message: impl Into<String>) {
        if self.is_closed() {
            return;
        }
        self.send(Error::new(code, message));
        self.close(CloseReason::Error(code));
    }

    fn close(&mut self, reason: CloseReason) {
        self.phase = Phase::Closed;
        self.close_reason = Some(reason);
        self.actions.push_back(Action::Close);
    }

    /// Bytes that failed to decode: typed error, then close.
    pub fn handle_decode_error(&mut self, err: &ProtoError) {
        self.fail(err.code(), err.to_string());
    }

    /// Paced group cursor writes that are due, and the login and idle deadline check.
    pub fn handle_timeout(&mut self, now: Instant) {
        if self.is_closed() {
            return;
        }
        let logged_in = matches!(self.phase, Phase::Active { .. });
        self.with_groups(|g, _, out| g.write_due(now, out));
        if !logged_in && now >= self.login_deadline {
            self.fail(
                ErrorCode::LoginTimeout,
                "not logged in within the login deadline",
            );
        } else if now >= self.last_client_frame + self.config.idle_timeout {
            self.fail(ErrorCode::IdleTimeout, "idle timeout");
        }
    }

    /// The driver refused a registration before any work (its address registers too often).
    pub fn handle_register_refused(&mut self, code: ErrorCode, message: &str) {
        if matches!(
            self.phase,
            Phase::Authenticating {
                signature: None,
                ..
            }
        ) {
            self.fail(code, message);
        }
    }

    /// Storage's answer to `Action::SetVisibility`: the next waiting change (if any) goes.
    pub fn handle_visibility_stored(&mut self) {
        self.visibility_in_flight = false;
        if let Some(v) = self.pending_visibility.take() {
            self.visibility_in_flight = true;
            self.actions.push_back(Action::SetVisibility(v));
        }
        self.maybe_finish();
    }

    /// The server is draining, or this device logged in on another connection: tell the
    /// client to reconnect, finish in-flight work, then close.
    pub fn handle_goaway(&mut self, reconnect_after_ms: u32) {
        if self.is_closed() || self.draining {
            return;
        }
        self.draining = true;
        self.send(Goaway { reconnect_after_ms });
        self.maybe_finish();
    }

    /// An administrator disabled this account while it was logged in: tell the client with
    /// `AccountDisabled` and close now. Sends already handed to storage still complete there
    /// (their acks are lost; a retry after re-enabling is deduplicated by `client_msg_id`).
    pub fn handle_account_disabled(&mut self) {
        self.fail(
            ErrorCode::AccountDisabled,
            "account disabled by an administrator",
        );
    }

    /// Storage's answer to `Action::LinkDevice` (`None` when storage failed).
    pub fn handle_link_result(&mut self, now_ms: u64, outcome: Option<LinkOutcome>) {
        let Phase::Authenticating { user, .. } = self.phase.clone() else {
            return;
        };
        match outcome {
            Some(LinkOutcome::Linked(device)) => self.activate(user, device, now_ms),
            Some(LinkOutcome::CodeInvalid) => {
                self.fail(ErrorCode::AuthFailed, "link code unknown, used or expired")
            }
            Some(LinkOutcome::TooManyDevices) => self.fail(
                ErrorCode::LimitExceeded,
                "this account has as many devices as allowed; remove one first",
            ),
            None => self.fail(ErrorCode::Internal, "storage unavailable"),
        }
    }

    /// The answer to a device-management request (`LinkCode`, `DeviceList`,
    /// `DeviceRemoved`, `RequestRefused`), made by the driver.
    pub fn answer(&mut self, frame: Frame) {
        if !self.is_closed() {
            self.send(frame);
        }
    }

    /// This device was removed from its account: tell the client and close.
    pub fn handle_removed(&mut self) {
        self.fail(
            ErrorCode::DeviceRemoved,
            "this device was removed from its account",
        );
    }

    /// The same device logged in on another connection, which now owns the mailbox: tell
    /// this client with `SessionReplaced` (it must not reconnect on its own) and close.
    pub fn handle_replaced(&mut self) {
        self.fail(
            ErrorCode::SessionReplaced,
            "this device logged in on another connection",
        );
    }

    /// A decoded frame from the client.
    pub fn handle_frame(&mut self, now: Instant, frame: Frame) {
        if self.is_closed() {
            return;
        }
        self.last_client_frame = now;
        if matches!(self.phase, Phase::Active { .. }) && !self.frames.try_take(now, 1.0) {
            self.fail(ErrorCode::RateLimited, "frame rate exceeded");
            return;
        }
        match (&self.phase, frame) {
            // Only Hello, Register and Login (and Bye) before login: nothing else an
            // unauthenticated peer sends may cost the server work or output.
            (Phase::Active { .. }, Frame::Ping(p)) => {
                if self.pings.try_take(now, 1.0) {
                    self.send(Pong { nonce: p.nonce })
                } else {
                    self.fail(ErrorCode::RateLimited, "pings too often")
                }
            }
            (Phase::Active { .. }, Frame::Pong(_)) => {}
            (Phase::AwaitHello, Frame::Hello(h)) => {
                let version = PROTOCOL_VERSION.min(h.max_version);
                if h.min_version > h.max_version
                    || version < h.min_version.max(MIN_PROTOCOL_VERSION)
                {
                    self.fail(
                        ErrorCode::UnsupportedVersion,
                        format!(
                            "server speaks {MIN_PROTOCOL_VERSION}..={PROTOCOL_VERSION}, client {}..={}",
                            h.min_version, h.max_version
                        ),
                    );
                    return;
                }
                self.phase = Phase::AwaitAuth;
                self.version = version;
                self.send(ServerHello {
                    version,
                    challenge: self.challenge,
                    max_frame: self.config.max_frame,
                });
            }
            (Phase::AwaitAuth, Frame::Login(l)) => {
                self.begin_login(l.user, l.device, l.signature, false)
            }
            (Phase::AwaitAuth, Frame::TransferLogin(l)) => {
                self.begin_login(l.user, l.device, l.signature, true)
            }
            (Phase::AwaitAuth, Frame::Register(r)) => {
                if let Err(why) = validate_user_name(&r.user) {
                    self.fail(ErrorCode::InvalidName, why);
                    return;
                }
                if !self.signature_valid(&r.device_key, &r.user, r.device, &r.signature) {
                    self.fail(
                        ErrorCode::AuthFailed,
                        "registration signature does not verify",
                    );
                    return;
                }
                if self.config.require_invite && r.invite.is_none() {
                    self.fail(ErrorCode::InviteRequired, "this server requires an invite");
                    return;
                }
                self.phase = Phase::Authenticating {
                    user: r.user.clone(),
                    device: r.device,
                    signature: None,
                    transfer: false,
                };
                self.device_key = Some(r.device_key);
                self.actions.push_back(Action::Register {
                    user: r.user,
                    device: r.device,
                    key: r.device_key,
                    invite: r.invite,
                    require_invite: self.config.require_invite,
                });
            }
            (Phase::AwaitAuth, Frame::LinkDevice(l)) => {
                if let Err(why) = validate_user_name(&l.user) {
                    self.fail(ErrorCode::InvalidName, why);
                    return;
                }
                // Device 0 in the transcript: the server picks the new device's id.
                if !self.signature_valid(&l.device_key, &l.user, DeviceId(0), &l.signature) {
                    self.fail(ErrorCode::AuthFailed, "link signature does not verify");
                    return;
                }
                self.phase = Phase::Authenticating {
                    user: l.user.clone(),
                    device: DeviceId(0),
                    signature: None,
                    transfer: false,
                };
                self.device_key = Some(l.device_key);
                self.actions.push_back(Action::LinkDevice {
                    user: l.user,
                    code: l.code,
                    key: l.device_key,
                    max_devices: self.config.max_devices,
                });
            }
            (Phase::Active { .. }, Frame::CreateLinkCode(c)) => {
                if self.link_codes.try_take(now, 1.0) {
                    self.actions.push_back(Action::CreateLinkCode {
                        request_id: c.request_id,
                    });
                } else {
                    self.send(RequestRefused::new(
                        c.request_id,
                        ErrorCode::RateLimited,
                        "link code rate exceeded",
                    ));
                }
            }
            (Phase::Active { .. }, Frame::ListDevices(l)) => {
                self.actions.push_back(Action::ListDevices {
                    request_id: l.request_id,
                });
            }
            (Phase::Active { .. }, Frame::TurnCredentialsRequest(t)) => {
                // Spent before any work, so a flood costs a token check each.
                if self.turn_credentials.try_take(now, 1.0) {
                    self.actions.push_back(Action::TurnCredentials {
                        request_id: t.request_id,
                    });
                } else {
                    self.send(RequestRefused::new(
                        t.request_id,
                        ErrorCode::RateLimited,
                        "TURN credential request rate exceeded",
                    ));
                }
            }
            (Phase::Active { .. }, Frame::Retract(r)) => {
                // A retraction costs a storage scan: it spends the send budget.
                if validate_user_name(&r.to).is_ok() && self.sends.try_take(now, 1.0) {
                    self.actions.push_back(Action::Retract {
                        request_id: r.request_id,
                        client_msg_id: r.client_msg_id,
                        to: r.to,
                    });
                } else {
                    self.send(RequestRefused::new(
                        r.request_id,
                        ErrorCode::RateLimited,
                        "send rate exceeded (or no such user)",
                    ));
                }
            }
            (Phase::Active { .. }, Frame::RemoveDevice(r)) => {
                self.actions.push_back(Action::RemoveDevice {
                    request_id: r.request_id,
                    device: r.device,
                });
            }
            (Phase::Active { .. }, Frame::Send(s)) => self.on_send(now, s),
            (Phase::Active { .. }, Frame::GroupSend(g)) => self.on_group_send(now, g),
            (Phase::Active { .. }, Frame::GroupRequest(r)) => self.on_group_request(now, r),
            (Phase::Active { .. }, Frame::StoryPost(p)) => self.on_story_post(now, p),
            (Phase::Active { .. }, Frame::CallInvite(i)) => self.on_call_invite(now, i),
            (Phase::Active { .. }, Frame::CallAction(a)) => {
                // Past the budget an action is dropped: a client sends a handful per call.
                if self.call_actions.try_take(now, 1.0) {
                    match check_action(&a.action) {
                        Ok(()) => self.actions.push_back(Action::Call(CallRequest::Action(a))),
                        Err(why) => self.refuse_call(a.call_id, ErrorCode::ProtocolViolation, why),
                    }
                }
            }
            (Phase::Active { .. }, Frame::CallHistoryRequest(r)) => {
                if self.call_actions.try_take(now, 1.0) {
                    self.actions.push_back(Action::CallHistory {
                        request_id: r.request_id,
                        limit: usize::from(r.limit).min(MAX_CALL_HISTORY),
                    });
                } else {
                    self.send(RequestRefused::new(
                        r.request_id,
                        ErrorCode::RateLimited,
                        "call request rate exceeded",
                    ));
                }
            }
            (Phase::Active { .. }, Frame::StoryViewed(v)) => {
                if validate_user_name(&v.from).is_ok() && self.sends.try_take(now, 0.25) {
                    self.actions.push_back(Action::StoryViewed(v));
                }
            }
            (Phase::Active { .. }, Frame::ListStories(l)) => {
                if self.group_requests.try_take(now, 1.0) {
                    self.actions.push_back(Action::ListStories {
                        request_id: l.request_id,
                    });
                } else {
                    self.send(RequestRefused::new(
                        l.request_id,
                        ErrorCode::RateLimited,
                        "request rate exceeded",
                    ));
                }
            }
            (Phase::Active { .. }, Frame::GroupRead(r)) => {
                // A read receipt is a small write: a quarter of a send's budget.
                if validate_user_name(&r.from).is_ok() && self.sends.try_take(now, 0.25) {
                    self.actions.push_back(Action::GroupRead(r));
                }
            }
            (Phase::Active { user, device }, Frame::UploadKeys(u)) => {
                let key = self.device_key.unwrap_or_default();
                let step = self.keys.upload(now, (user, *device, &key), u);
                self.key_step(step);
            }
            (Phase::Active { .. }, Frame::ClaimKeys(c)) => {
                let step = self.keys.claim(c);
                self.key_step(step);
            }
            (Phase::Active { .. }, Frame::AckDelivery(a)) => self.on_ack(a),
            (Phase::Active { .. }, Frame::AckGroup(a)) => {
                self.with_groups(|g, mailbox, out| {
                    g.client_ack(now, a.group, a.up_to, mailbox, out)
                });
                self.pump();
            }
            (Phase::Active { .. }, Frame::SetPresenceVisibility(v)) => {
                if !self.presence_changes.try_take(now, 1.0) {
                    self.fail(
                        ErrorCode::RateLimited,
                        "presence visibility changes too often",
                    );
                } else if self.visibility_in_flight {
                    self.pending_visibility = Some(v.visibility);
                } else {
                    self.visibility_in_flight = true;
                    self.actions.push_back(Action::SetVisibility(v.visibility));
                }
            }
            (Phase::Active { .. }, Frame::SubscribePresence(s)) => self.on_subscribe(now, s.user),
            (Phase::Active { .. }, Frame::Typing(t)) => {
                // Over its budget a typing notice is dropped: it is ephemeral, and a fast
                // typist's client is not worth closing.
                if self.typing.try_take(now, 1.0) && validate_user_name(&t.to).is_ok() {
                    self.actions.push_back(Action::Typing {
                        to: t.to,
                        typing: t.typing,
                    });
                }
            }
            (Phase::Active { .. }, Frame::Bye(_)) => {
                self.bye_requested = true;
                self.maybe_finish();
            }
            (_, Frame::Bye(_)) => {
                self.send(missive_proto::Bye {});
                self.close(CloseReason::Bye);
            }
            (phase, f) => {
                let msg = format!("{} not allowed in state {}", f.name(), phase_name(phase));
                self.fail(ErrorCode::ProtocolViolation, msg);
            }
        }
    }

    fn on_subscribe(&mut self, now: Instant, user: String) {
        if !self.subscribes.try_take(now, 1.0) {
            self.fail(ErrorCode::RateLimited, "presence subscriptions too often");
            return;
        }
        if validate_user_name(&user).is_err() || self.subscriptions.contains(&user) {
            // Re-subscribing is allowed and answered with the current state.
            if self.subscriptions.contains(&user) {
                self.actions.push_back(Action::SubscribePresence(user));
            }
            return;
        }
        if self.subscriptions.len() >= self.config.max_subscriptions {
            let max = self.config.max_subscriptions;
            self.fail(
                ErrorCode::LimitExceeded,
                format!("at most {max} presence subscriptions per connection"),
            );
            return;
        }
        self.subscriptions.insert(user.clone());
        self.actions.push_back(Action::SubscribePresence(user));
    }

    fn signature_valid(
        &self,
        key: &[u8; 32],
        user: &str,
        device: DeviceId,
        sig: &[u8; 64],
    ) -> bool {
        let Ok(vk) = VerifyingKey::from_bytes(key) else {
            return false;
        };
        let transcript = login_transcript(&self.challenge, &self.exporter, user, device);
        vk.verify(&transcript, &Signature::from_bytes(sig)).is_ok()
    }

    /// A `Login` (or, `transfer`, a `TransferLogin`): the signature is checked once the
    /// device's key is looked up.
    fn begin_login(&mut self, user: String, device: DeviceId, signature: [u8; 64], transfer: bool) {
        if validate_user_name(&user).is_err() {
            self.fail(ErrorCode::AuthFailed, "unknown device");
            return;
        }
        self.phase = Phase::Authenticating {
            user: user.clone(),
            device,
            signature: Some(signature),
            transfer,
        };
        self.actions
            .push_back(Action::LookupDevice { user, device });
    }

    /// Storage's answer to `Action::LookupDevice`.
    pub fn handle_device_key(&mut self, now_ms: u64, lookup: DeviceLookup) {
        let Phase::Authenticating {
            user,
            device,
            signature: Some(sig),
            transfer,
        } = self.phase.clone()
        else {
            return;
        };
        match lookup {
            DeviceLookup::Found { key, disabled } => {
                self.device_key = Some(key);
                if !self.signature_valid(&key, &user, device, &sig) {
                    self.fail(ErrorCode::AuthFailed, "login signature does not verify");
                } else if disabled {
                    self.fail(ErrorCode::AccountDisabled, "account disabled");
                } else if transfer {
                    self.phase = Phase::Transfer;
                    self.send(Welcome {
                        user: user.clone(),
                        device,
                        server_time_ms: now_ms,
                    });
                    self.actions
                        .push_back(Action::BecomeTransfer { user, device });
                } else {
                    self.activate(user, device, now_ms);
                }
            }
            DeviceLookup::Unknown => self.fail(ErrorCode::AuthFailed, "unknown device"),
            DeviceLookup::Failed => self.fail(ErrorCode::Internal, "storage unavailable"),
        }
    }

    /// Storage's answer to `Action::Register` (`None` when storage failed).
    pub fn handle_register_result(&mut self, now_ms: u64, outcome: Option<RegisterOutcome>) {
        let Phase::Authenticating {
            user,
            device,
            signature: None,
            ..
        } = self.phase.clone()
        else {
            return;
        };
        match outcome {
            Some(RegisterOutcome::Created) => self.activate(user, device, now_ms),
            Some(RegisterOutcome::Taken) => self.fail(ErrorCode::UserTaken, "user name taken"),
            Some(RegisterOutcome::InviteInvalid) => self.fail(
                ErrorCode::InviteRequired,
                "invite token missing or already used",
            ),
            None => self.fail(ErrorCode::Internal, "storage unavailable"),
        }
    }

    fn activate(&mut self, user: String, device: DeviceId, now_ms: u64) {
        self.phase = Phase::Active {
            user: user.clone(),
            device,
        };
        self.send(Welcome {
            user: user.clone(),
            device,
            server_time_ms: now_ms,
        });
        self.actions.push_back(Action::Online {
            user: user.clone(),
            device,
        });
        self.backlog = true;
        if self.version >= 6 {
            let window = Window {
                count: self.config.delivery_window,
                bytes: self.config.delivery_window_bytes,
            };
            let mut streams = GroupStreams::new(user, device, window);
            let mut out = Vec::new();
            streams.start(&mut out);
            self.groups = Some(streams);
            self.group_outs(out);
        }
        self.pump();
        self.actions.push_back(Action::CheckKeys);
    }

    fn key_step(&mut self, step: KeyStep) {
        match step {
            KeyStep::Upload { request_id, upload } => self
                .actions
                .push_back(Action::UploadKeys { request_id, upload }),
            KeyStep::Claim { request_id, user } => self
                .actions
                .push_back(Action::ClaimKeys { request_id, user }),
            KeyStep::Answer(frame) => self.send(frame),
        }
    }

    /// Storage's answer to `Action::UploadKeys`.
    pub fn handle_keys_uploaded(
        &mut self,
        request_id: u32,
        result: Result<UploadOutcome, KeyStoreRefusal>,
    ) {
        let frame = self.keys.uploaded(request_id, result);
        if !self.is_closed() {
            self.send(frame);
        }
    }

    /// Storage's answer to `Action::ClaimKeys`.
    pub fn handle_keys_claimed(
        &mut self,
        request_id: u32,
        user: String,
        result: Result<Vec<ClaimedBundle>, KeyStoreRefusal>,
    ) {
        let frame = self.keys.claimed(request_id, user, result);
        if !self.is_closed() {
            self.send(frame);
        }
    }

    /// The answer to `Action::CheckKeys` (`None` when storage could not say): a device
    /// short of keys is told to upload.
    pub fn handle_key_status(&mut self, status: Option<KeyStatus>) {
        if let Some(notice) = status.and_then(|s| self.keys.low_notice(s)) {
            if !self.is_closed() {
                self.send(notice);
            }
        }
    }

    /// What a device whose keys were just claimed should be told, if anything.
    pub fn low_notice(&self, status: KeyStatus) -> Option<missive_proto::KeysLow> {
        self.keys.low_notice(status)
    }

    fn on_send(&mut self, now: Instant, s: Send) {
        let reject = |code: ErrorCode, message: &str| Rejected {
            client_msg_id: s.client_msg_id,
            code: code.as_u16(),
            message: message.to_owned(),
        };
        if self.bye_requested || self.draining {
            let r = reject(ErrorCode::ShuttingDown, "connection is closing");
            self.send(r);
            return;
        }
        if validate_user_name(&s.to).is_err() {
            let r = reject(ErrorCode::UnknownRecipient, "no such user");
            self.send(r);
            return;
        }
        // Checked before anything is stored: an envelope whose `Deliver` would exceed the
        // recipient's frame limit would jam that mailbox.
        let max_envelope = max_envelope_len(self.config.max_frame);
        if let Some(big) = s.copies().find(|c| c.envelope.len() > max_envelope) {
            let message = format!(
                "envelope of {} bytes exceeds the limit of {max_envelope}",
                big.envelope.len()
            );
            let r = reject(ErrorCode::EnvelopeTooLarge, &message);
            self.send(r);
            return;
        }
        // A user has a handful of devices; more copies than any account may hold is no
        // mismatch to report but a malformed request.
        if s.envelopes.len() > MAX_DEVICES_PER_USER || s.own.len() > MAX_DEVICES_PER_USER {
            let r = reject(ErrorCode::LimitExceeded, "more copies than devices allowed");
            self.send(r);
            return;
        }
        // The copies fit one frame, and the burst is at least one frame (config).
        let bytes: usize = s.copies().map(|c| c.envelope.len()).sum();
        if let Err((code, message)) = self.admit_send(now, s.client_msg_id, bytes) {
            let r = reject(code, message);
            self.send(r);
            return;
        }
        self.actions.push_back(Action::Store {
            client_msg_id: s.client_msg_id,
            to: s.to,
            envelopes: s.envelopes,
            own: s.own,
            expires_in_secs: s.expires_in_secs,
        });
    }

    /// Counts a send (1:1 or group) against the in-flight limit and the rate and byte
    /// budgets; on success it awaits its `Sent`.
    fn admit_send(
        &mut self,
        now: Instant,
        client_msg_id: ClientMsgId,
        bytes: usize,
    ) -> Result<(), (ErrorCode, &'static str)> {
        if self.sends_in_flight >= self.config.max_in_flight_sends {
            return Err((ErrorCode::TooManyInFlight, "too many unanswered sends"));
        }
        if !self.sends.try_take(now, 1.0) {
            return Err((ErrorCode::RateLimited, "send rate exceeded"));
        }
        if !self.send_bytes.try_take(now, bytes as f64) {
            return Err((ErrorCode::RateLimited, "send byte rate exceeded"));
        }
        self.sends_in_flight += 1;
        self.awaiting_sent.push(client_msg_id);
        Ok(())
    }

    fn on_group_send(&mut self, now: Instant, g: GroupSend) {
        let reject = |code: ErrorCode, message: &str| Rejected {
            client_msg_id: g.client_msg_id,
            code: code.as_u16(),
            message: message.to_owned(),
        };
        if self.bye_requested || self.draining {
            let r = reject(ErrorCode::ShuttingDown, "connection is closing");
            self.send(r);
            return;
        }
        // Every member's `Deliver` carries the body: it must fit their frame limit.
        let max_body = max_envelope_len(self.config.max_frame);
        if g.body.len() > max_body {
            let message = format!(
                "group message of {} bytes exceeds the limit of {max_body}",
                g.body.len()
            );
            let r = reject(ErrorCode::EnvelopeTooLarge, &message);
            self.send(r);
            return;
        }
        if let Err((code, message)) = self.admit_send(now, g.client_msg_id, g.body.len()) {
            let r = reject(code, message);
            self.send(r);
            return;
        }
        self.actions.push_back(Action::StoreGroup {
            client_msg_id: g.client_msg_id,
            group: g.group,
            epoch: g.epoch,
            body: g.body,
            expires_in_secs: g.expires_in_secs,
        });
    }

    fn on_call_invite(&mut self, now: Instant, invite: CallInvite) {
        let id = invite.call_id;
        if !self.call_invites.try_take(now, 1.0) {
            self.refuse_call(id, ErrorCode::RateLimited, "call invite rate exceeded");
            return;
        }
        match check_invite(&invite) {
            Ok(()) => self
                .actions
                .push_back(Action::Call(CallRequest::Invite(invite))),
            Err(why) => self.refuse_call(id, ErrorCode::ProtocolViolation, why),
        }
    }

    /// Ends a call request with a typed refusal; the connection stays open.
    fn refuse_call(&mut self, call_id: CallId, code: ErrorCode, why: &str) {
        tracing::debug!(call = %call_id.to_hex(), code = code.name(), why, "call request refused");
        self.send(CallUpdate {
            call_id,
            update: CallUpdateKind::Ended {
                reason: CallEndReason::Refused(code.as_u16()),
            },
        });
    }

    /// The protocol version agreed in `Hello` (0 before it): a device is rung only once its
    /// session speaks 5.
    pub fn version(&self) -> u16 {
        self.version
    }

    fn on_story_post(&mut self, now: Instant, p: StoryPost) {
        let reject = |code: ErrorCode, message: &str| Rejected {
            client_msg_id: p.client_msg_id,
            code: code.as_u16(),
            message: message.to_owned(),
        };
        if self.bye_requested || self.draining {
            let r = reject(ErrorCode::ShuttingDown, "connection is closing");
            self.send(r);
            return;
        }
        if p.audience.is_empty() || p.audience.len() > self.config.max_story_audience {
            let r = reject(
                ErrorCode::LimitExceeded,
                "a status goes to 1 to max_audience users",
            );
            self.send(r);
            return;
        }
        if p.audience.iter().any(|u| validate_user_name(u).is_err()) {
            let r = reject(ErrorCode::UnknownRecipient, "no such user in the audience");
            self.send(r);
            return;
        }
        if p.body.len() > max_envelope_len(self.config.max_frame) {
            let r = reject(ErrorCode::EnvelopeTooLarge, "status update too large");
            self.send(r);
            return;
        }
        if let Err((code, message)) = self.admit_send(now, p.client_msg_id, p.body.len()) {
            let r = reject(code, message);
            self.send(r);
            return;
        }
        self.actions.push_back(Action::StoreStory {
            client_msg_id: p.client_msg_id,
            audience: p.audience,
            body: p.body,
        });
    }

    /// Storage's answer to `Action::StoreStory`.
    pub fn handle_story_result(
        &mut self,
        client_msg_id: ClientMsgId,
        result: Result<StoryOutcome, StoreRefusal>,
        now_ms: u64,
    ) {
        let result = match result {
            Ok(StoryOutcome::Stored { server_ts_ms, .. }) => Ok(AppendOutcome::Stored {
                server_ts_ms,
                devices: 0,
            }),
            Ok(StoryOutcome::Duplicate { server_ts_ms }) => {
                Ok(AppendOutcome::Duplicate { server_ts_ms })
            }
            Ok(StoryOutcome::UnknownUser(_)) => Ok(AppendOutcome::UnknownRecipient),
            Err(e) => Err(e),
        };
        self.handle_send_result(client_msg_id, result, now_ms);
    }

    fn on_group_request(&mut self, now: Instant, r: GroupRequest) {
        let refuse = |code: ErrorCode, message: String| RequestRefused {
            request_id: r.request_id,
            code: code.as_u16(),
            message,
        };
        if let Err(why) = group_requests::check(&r.op) {
            let f = refuse(ErrorCode::InvalidName, why);
            self.send(f);
            return;
        }
        if !self.group_requests.try_take(now, 1.0) {
            let f = refuse(ErrorCode::RateLimited, "group request rate exceeded".into());
            self.send(f);
            return;
        }
        self.actions.push_back(Action::Group {
            request_id: r.request_id,
            op: r.op,
            max_members: self.config.max_group_members,
        });
    }

    /// Storage's answer to `Action::StoreGroup`.
    pub fn handle_group_send_result(
        &mut self,
        client_msg_id: ClientMsgId,
        result: Result<GroupSendOutcome, StoreRefusal>,
        now_ms: u64,
    ) {
        let result = match result {
            Ok(GroupSendOutcome::Stored { server_ts_ms, .. }) => Ok(AppendOutcome::Stored {
                server_ts_ms,
                devices: 0,
            }),
            Ok(GroupSendOutcome::Duplicate { server_ts_ms }) => {
                Ok(AppendOutcome::Duplicate { server_ts_ms })
            }
            Ok(GroupSendOutcome::Refused(why)) => {
                let (code, message) = group_requests::refusal(&why);
                self.sends_in_flight = self.sends_in_flight.saturating_sub(1);
                self.awaiting_sent.retain(|id| *id != client_msg_id);
                if !self.is_closed() {
                    self.send(Rejected {
                        client_msg_id,
                        code: code.as_u16(),
                        message,
                    });
                }
                self.release_held_frames();
                self.maybe_finish();
                return;
            }
            Err(e) => Err(e),
        };
        self.handle_send_result(client_msg_id, result, now_ms);
    }

    /// Storage's answer to `Action::Store`.
    pub fn handle_send_result(
        &mut self,
        client_msg_id: ClientMsgId,
        result: Result<AppendOutcome, StoreRefusal>,
        now_ms: u64,
    ) {
        self.sends_in_flight = self.sends_in_flight.saturating_sub(1);
        if let Some(i) = self
            .awaiting_sent
            .iter()
            .position(|id| *id == client_msg_id)
        {
            self.awaiting_sent.swap_remove(i);
        }
        if self.is_closed() {
            return;
        }
        match result {
            Ok(AppendOutcome::Stored { server_ts_ms, .. }) => self.send(Sent {
                client_msg_id,
                server_ts_ms,
                duplicate: false,
            }),
            Ok(AppendOutcome::Duplicate { server_ts_ms }) => self.send(Sent {
                client_msg_id,
                server_ts_ms: if server_ts_ms == 0 {
                    now_ms
                } else {
                    server_ts_ms
                },
                duplicate: true,
            }),
            Ok(AppendOutcome::UnknownRecipient) => self.send(Rejected {
                client_msg_id,
                code: ErrorCode::UnknownRecipient.as_u16(),
                message: "no such user".into(),
            }),
            Ok(AppendOutcome::DeviceMismatch(current)) => self.send(DeviceMismatch {
                client_msg_id,
                current,
            }),
            Ok(AppendOutcome::MailboxFull) => self.send(Rejected {
                client_msg_id,
                code: ErrorCode::MailboxFull.as_u16(),
                message: "the recipient's mailbox is full; retry later".into(),
            }),
            Err(StoreRefusal::Unavailable) => self.send(Rejected {
                client_msg_id,
                code: ErrorCode::StorageUnavailable.as_u16(),
                message: "storage is refusing writes for now; retry later".into(),
            }),
            Err(StoreRefusal::Failed) => self.send(Rejected {
                client_msg_id,
                code: ErrorCode::Internal.as_u16(),
                message: "storage failed; retry".into(),
            }),
        }
        self.release_held_frames();
        self.maybe_finish();
    }

    fn on_ack(&mut self, a: AckDelivery) {
        // Only what this connection delivered may be deleted: an ack beyond it (e.g. for
        // items seen on an earlier connection) is clamped, never trusted.
        if self.next_deliver.0 == 0 {
            return;
        }
        let up_to = ServerSeq(a.up_to.0.min(self.next_deliver.0 - 1));
        while let Some(&(seq, bytes)) = self.unacked.front() {
            if seq > up_to {
                break;
            }
            self.unacked.pop_front();
            self.unacked_bytes -= bytes;
        }
        // One ack commit at a time per session: acks arriving meanwhile merge into one
        // (they are cumulative), so a fast reader costs one commit per batch, not per frame.
        if self.ack_in_flight {
            self.pending_ack = Some(self.pending_ack.map_or(up_to, |p| p.max(up_to)));
        } else {
            self.ack_in_flight = true;
            self.actions.push_back(Action::Ack { up_to });
        }
        self.pump();
    }

    /// Storage's answer to `Action::Ack`. A failed ack only means the items are delivered
    /// again on a later connection.
    pub fn handle_ack_result(&mut self) {
        self.ack_in_flight = false;
        if let Some(up_to) = self.pending_ack.take() {
            self.ack_in_flight = true;
            self.actions.push_back(Action::Ack { up_to });
        }
        self.maybe_finish();
    }

    /// Storage's answer to `Action::ReadMailbox` (`Err(())` when storage failed).
    pub fn handle_mailbox_read(
        &mut self,
        requested: usize,
        result: Result<Vec<(ServerSeq, StoredItem)>, ()>,
    ) {
        self.reading = false;
        if self.is_closed() {
            return;
        }
        match result {
            Ok(items) => {
                // Storage stops a read at its item limit or its byte budget (envelope bytes,
                // the measure of `item_bytes`): either way more may be waiting.
                let bytes: usize = items.iter().map(|(_, i)| item_bytes(i)).sum();
                self.backlog =
                    items.len() >= requested || (!items.is_empty() && bytes >= self.read_max_bytes);
                for (seq, item) in items {
                    if !self.window_has_room() {
                        // The rest is read again once the client acknowledges.
                        self.backlog = true;
                        break;
                    }
                    self.deliver(seq, item);
                }
                let held = std::mem::take(&mut self.held_pushes);
                for (seq, item) in held {
                    self.handle_pushed(seq, item);
                }
            }
            Err(()) => {
                self.fail(ErrorCode::Internal, "storage unavailable");
                return;
            }
        }
        self.pump();
    }

    /// An item the store just made durable in this device's mailbox.
    pub fn handle_pushed(&mut self, seq: ServerSeq, item: StoredItem) {
        if !matches!(self.phase, Phase::Active { .. }) || seq < self.next_deliver {
            return;
        }
        if self.reading {
            self.held_pushes.push((seq, item));
        } else if self.backlog || !self.window_has_room() {
            // Storage has it; the next read picks it up in order.
            self.backlog = true;
        } else {
            self.deliver(seq, item);
        }
    }

    /// Live pushes were lost (the session's queue was full): read from storage instead.
    pub fn handle_overflow(&mut self) {
        self.backlog = true;
        self.with_groups(|g, _, out| g.start(out));
        self.pump();
    }

    /// Writes `item` to the client, or holds it back when it is the `Delivered` receipt of a
    /// message of this device whose `Sent` has not been written yet (the recipient often
    /// acknowledges before the message's fsync is done), and then everything after it, to keep
    /// seq order. The receipt then follows its `Sent` (the order a user expects) in the same
    /// QUIC packet, instead of a packet of its own that the client must acknowledge too.
    fn deliver(&mut self, seq: ServerSeq, item: StoredItem) {
        if seq < self.next_deliver {
            return;
        }
        self.next_deliver = ServerSeq(seq.0 + 1);
        let bytes = item_bytes(&item);
        self.unacked.push_back((seq, bytes));
        self.unacked_bytes += bytes;
        let frame = Deliver {
            seq,
            from: item.from,
            from_device: item.from_device,
            client_msg_id: item.client_msg_id,
            server_ts_ms: item.server_ts_ms,
            payload: item.payload,
        };
        if !self.held_frames.is_empty() || self.waits_for_its_sent(&frame) {
            self.held_frames.push_back(frame);
        } else {
            self.send(frame);
        }
    }

    /// Whether `frame` is the receipt of a send of this session still waiting for its `Sent`.
    fn waits_for_its_sent(&self, frame: &Deliver) -> bool {
        matches!(frame.payload, Payload::Delivered)
            && self.awaiting_sent.contains(&frame.client_msg_id)
    }

    /// Writes the held-back frames up to the next receipt that still waits for its `Sent`.
    fn release_held_frames(&mut self) {
        while let Some(front) = self.held_frames.front() {
            if self.waits_for_its_sent(front) {
                break;
            }
            if let Some(frame) = self.held_frames.pop_front() {
                self.send(frame);
            }
        }
    }

    /// Starts a mailbox read, and reads of the group logs, when the window has room and
    /// storage may hold more.
    fn pump(&mut self) {
        if matches!(self.phase, Phase::Active { .. }) {
            self.with_groups(|g, mailbox, out| g.pump(mailbox, out));
        }
        if !matches!(self.phase, Phase::Active { .. }) || self.reading || !self.backlog {
            return;
        }
        if !self.window_has_room() {
            return;
        }
        let room = self
            .config
            .delivery_window
            .saturating_sub(self.unacked.len());
        self.reading = true;
        let max_bytes = self
            .config
            .delivery_window_bytes
            .saturating_sub(self.unacked_bytes);
        self.read_max_bytes = max_bytes;
        self.actions.push_back(Action::ReadMailbox {
            from: self.next_deliver,
            limit: room,
            max_bytes,
        });
    }

    /// Whether one more item may be delivered: the window has room in count and in bytes
    /// (an empty window always takes one item, however large).
    fn window_has_room(&self) -> bool {
        let (count, bytes) = self.groups.as_ref().map_or((0, 0), |g| g.unacked());
        let (count, bytes) = (count + self.unacked.len(), bytes + self.unacked_bytes);
        count == 0
            || (count < self.config.delivery_window && bytes < self.config.delivery_window_bytes)
    }

    /// Where the mailbox stands, for the group streams: its share of the delivery window,
    /// and whether it may hold items not delivered yet.
    fn mailbox_share(&self) -> MailboxShare {
        MailboxShare {
            unacked: self.unacked.len(),
            bytes: self.unacked_bytes,
            behind: self.backlog
                || self.reading
                || !self.held_pushes.is_empty()
                || !self.held_frames.is_empty(),
        }
    }

    /// Runs `f` on the group streams (when logged in with version 6) with the mailbox's share
    /// of the window, then carries out what they asked for.
    fn with_groups(&mut self, f: impl FnOnce(&mut GroupStreams, MailboxShare, &mut Vec<GroupOut>)) {
        let mailbox = self.mailbox_share();
        let mut out = Vec::new();
        if let Some(g) = &mut self.groups {
            f(g, mailbox, &mut out);
        }
        self.group_outs(out);
    }

    /// Carries out what the group streams asked for.
    fn group_outs(&mut self, out: Vec<GroupOut>) {
        for o in out {
            match o {
                GroupOut::Deliver(frame) => self.send(frame),
                GroupOut::DeliverEncoded(live) => {
                    self.actions.push_back(Action::SendGroupDelivery(live))
                }
                GroupOut::Ack { group, up_to } => {
                    self.actions.push_back(Action::AckGroup { group, up_to })
                }
                GroupOut::Read {
                    group,
                    from,
                    until,
                    limit,
                    max_bytes,
                } => self.actions.push_back(Action::ReadGroupLog {
                    group,
                    from,
                    until,
                    limit,
                    max_bytes,
                }),
                GroupOut::LoadPositions => self.actions.push_back(Action::ReadGroupPositions),
            }
        }
    }

    /// Storage's answer to `Action::ReadGroupPositions` (`Err(())` when storage failed).
    pub fn handle_group_positions(&mut self, now: Instant, result: Result<Vec<LogPosition>, ()>) {
        if self.is_closed() {
            return;
        }
        let Ok(positions) = result else {
            self.fail(ErrorCode::Internal, "storage unavailable");
            return;
        };
        self.with_groups(|g, mailbox, out| g.positions(now, positions, mailbox, out));
    }

    /// Storage's answer to `Action::ReadGroupLog` for `requested` items.
    pub fn handle_group_log_read(
        &mut self,
        now: Instant,
        group: GroupId,
        requested: usize,
        result: Result<Vec<(ServerSeq, StoredItem)>, ()>,
    ) {
        if self.is_closed() {
            return;
        }
        self.with_groups(|g, mailbox, out| {
            g.read_done(now, group, requested, result, mailbox, out)
        });
    }

    /// An item the store just made durable in `group`'s log, for this device's user.
    pub fn handle_group_pushed(
        &mut self,
        now: Instant,
        group: GroupId,
        seq: ServerSeq,
        item: LogItem,
    ) {
        if !matches!(self.phase, Phase::Active { .. }) {
            return;
        }
        self.with_groups(|g, mailbox, out| g.pushed(now, group, seq, item, mailbox, out));
    }

    /// Storage's answer to `Action::AckGroup`. A failed ack only means the items are
    /// delivered again on a later connection.
    pub fn handle_group_ack_result(&mut self, now: Instant, group: GroupId) {
        self.with_groups(|g, _, out| g.acked(now, group, out));
        self.maybe_finish();
    }

    fn maybe_finish(&mut self) {
        if self.is_closed() {
            return;
        }
        if self.bye_requested || self.draining {
            // Paced cursor writes go now: the client expects its acks stored by the `Bye`.
            self.with_groups(|g, _, out| g.write_all_owed(out));
        }
        if self.sends_in_flight > 0
            || self.ack_in_flight
            || self.groups.as_ref().is_some_and(|g| g.cursors_owed())
            || self.visibility_in_flight
        {
            return;
        }
        if self.bye_requested {
            self.send(missive_proto::Bye {});
            self.close(CloseReason::Bye);
        } else if self.draining {
            self.close(CloseReason::Goaway);
        }
    }
}

/// What a delivered item counts against the byte window: its envelope or group body.
fn item_bytes(item: &StoredItem) -> usize {
    match &item.payload {
        Payload::Envelope(e) => e.len(),
        Payload::Group(g) => g.body.len(),
        Payload::Story(s) => s.body.len(),
        Payload::Delivered | Payload::GroupEvent(_) => 0,
    }
}

/// Why storage did not take a send.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StoreRefusal {
    /// Storage refuses writes for now (low disk, or failing and recovering): retryable.
    Unavailable,
    /// Storage failed this write.
    Failed,
}

fn phase_name(p: &Phase) -> &'static str {
    match p {
        Phase::AwaitHello => "await-hello",
        Phase::AwaitAuth => "await-auth",
        Phase::Authenticating { .. } => "authenticating",
        Phase::Active { .. } => "active",
        Phase::Transfer => "transfer",
        Phase::Closed => "closed",
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use ed25519_dalek::{Signer, SigningKey};
    use missive_proto::{
        Bye, Hello, Login, Payload, Ping, Pong, Register, SetPresenceVisibility, SubscribePresence,
        Typing,
    };

    const CHALLENGE: [u8; 32] = [5; 32];
    const EXPORTER: [u8; 32] = [6; 32];

    fn config() -> SessionConfig {
        SessionConfig {
            max_frame: 1 << 20,
            delivery_window: 4,
            max_in_flight_sends: 3,
            send_rate_per_sec: 10,
            send_burst: 5,
            idle_timeout: Duration::from_secs(60),
            require_invite: false,
            login_timeout: Duration::from_secs(10),
            send_bytes: Rate::per_second(1 << 20, 1 << 21),
            frames: Rate::per_second(1000, 1000),
            presence_changes: Rate::per_second(1, 3),
            subscribes: Rate::per_second(100, 100),
            typing: Rate::per_second(5, 5),
            pings: Rate::per_second(1000, 1000),
            max_subscriptions: 3,
            delivery_window_bytes: WINDOW_BYTES,
            keys: KeyPolicy {
                uploads: Rate::per_minute(10, 10),
                max_one_time_keys: 100,
                low_watermark: 10,
            },
            max_devices: 5,
            link_codes: Rate::per_minute(1, 2),
            group_requests: Rate::per_minute(60, 20),
            max_group_members: 1024,
            max_story_audience: 1024,
            turn_credentials: Rate::per_minute(1, 2),
            call_invites: Rate::per_minute(2, 2),
            call_actions: Rate::per_second(5, 5),
        }
    }

    const WINDOW_BYTES: usize = 1 << 20;

    fn key() -> SigningKey {
        SigningKey::from_bytes(&[7; 32])
    }

    fn sign(k: &SigningKey, exporter: &[u8; 32], user: &str) -> [u8; 64] {
        k.sign(&login_transcript(&CHALLENGE, exporter, user, DeviceId(1)))
            .to_bytes()
    }

    fn drain(s: &mut Session) -> Vec<Action> {
        std::iter::from_fn(|| s.poll_action()).collect()
    }

    fn frames(actions: &[Action]) -> Vec<&Frame> {
        actions
            .iter()
            .filter_map(|a| match a {
                Action::Send(f) => Some(f),
                _ => None,
            })
            .collect()
    }

    fn error_code(actions: &[Action]) -> Option<u16> {
        frames(actions).iter().find_map(|f| match f {
            Frame::Error(e) => Some(e.code),
            _ => None,
        })
    }

    fn hello(s: &mut Session, now: Instant) {
        s.handle_frame(
            now,
            Hello {
                min_version: missive_proto::MIN_PROTOCOL_VERSION,
                max_version: missive_proto::PROTOCOL_VERSION,
                client: "t".into(),
            }
            .into(),
        );
        let a = drain(s);
        assert!(matches!(frames(&a)[0], Frame::ServerHello(h) if h.challenge == CHALLENGE));
    }

    fn item(n: u64) -> StoredItem {
        StoredItem {
            from: "alice".into(),
            from_device: DeviceId(1),
            client_msg_id: ClientMsgId([n as u8; 16]),
            server_ts_ms: n,
            payload: Payload::Envelope(vec![n as u8]),
        }
    }

    /// A session logged in as bob; returns it with the first ReadMailbox limit checked.
    fn active(now: Instant) -> Session {
        active_with(now, config())
    }

    /// [`active`] with other limits (the window of 4 and 1 MiB kept).
    fn active_with(now: Instant, config: SessionConfig) -> Session {
        let mut s = Session::new(now, config, CHALLENGE, EXPORTER);
        hello(&mut s, now);
        let k = key();
        s.handle_frame(
            now,
            Login {
                user: "bob".into(),
                device: DeviceId(1),
                signature: sign(&k, &EXPORTER, "bob"),
            }
            .into(),
        );
        assert_eq!(
            drain(&mut s),
            vec![Action::LookupDevice {
                user: "bob".into(),
                device: DeviceId(1)
            }]
        );
        s.handle_device_key(
            42,
            DeviceLookup::Found {
                key: k.verifying_key().to_bytes(),
                disabled: false,
            },
        );
        let a = drain(&mut s);
        assert!(matches!(&a[0], Action::Send(Frame::Welcome(w)) if w.server_time_ms == 42));
        assert_eq!(
            a[1],
            Action::Online {
                user: "bob".into(),
                device: DeviceId(1)
            }
        );
        assert_eq!(a[2], Action::ReadGroupPositions);
        assert_eq!(
            a[3],
            Action::ReadMailbox {
                from: ServerSeq(0),
                limit: 4,
                max_bytes: WINDOW_BYTES,
            }
        );
        // In no group yet: nothing to read.
        s.handle_group_positions(now, Ok(Vec::new()));
        assert!(drain(&mut s).is_empty());
        s
    }

    fn delivered_seqs(actions: &[Action]) -> Vec<u64> {
        frames(actions)
            .iter()
            .filter_map(|f| match f {
                Frame::Deliver(d) => Some(d.seq.0),
                _ => None,
            })
            .collect()
    }

    #[test]
    fn a_drained_session_keeps_no_room_for_actions() {
        let now = Instant::now();
        let mut s = active(now);
        assert!(s.poll_action().is_none());
        assert_eq!(s.actions.capacity(), 0, "login's actions left their buffer");
        s.handle_frame(now, Ping { nonce: 1 }.into());
        assert!(s.actions.capacity() > 0);
        assert!(matches!(drain(&mut s)[..], [Action::Send(Frame::Pong(_))]));
        assert_eq!(s.actions.capacity(), 0);
    }

    #[test]
    fn version_mismatch_is_refused() {
        let now = Instant::now();
        let mut s = Session::new(now, config(), CHALLENGE, EXPORTER);
        s.handle_frame(
            now,
            Hello {
                min_version: 7,
                max_version: 9,
                client: "future".into(),
            }
            .into(),
        );
        let a = drain(&mut s);
        assert_eq!(error_code(&a), Some(ErrorCode::UnsupportedVersion.as_u16()));
        assert_eq!(a.last(), Some(&Action::Close));
    }

    #[test]
    fn frames_out_of_order_are_protocol_violations() {
        let now = Instant::now();
        let mut s = Session::new(now, config(), CHALLENGE, EXPORTER);
        s.handle_frame(
            now,
            Send {
                client_msg_id: ClientMsgId([1; 16]),
                to: "bob".into(),
                envelopes: one_copy(vec![]),
                own: Vec::new(),
                expires_in_secs: 0,
            }
            .into(),
        );
        assert_eq!(
            error_code(&drain(&mut s)),
            Some(ErrorCode::ProtocolViolation.as_u16())
        );
        assert!(s.is_closed());
        // Nothing happens after close.
        s.handle_frame(now, Ping { nonce: 1 }.into());
        assert!(drain(&mut s).is_empty());
    }

    #[test]
    fn wrong_signature_and_replayed_login_are_refused() {
        let now = Instant::now();
        let k = key();
        let stored = DeviceLookup::Found {
            key: k.verifying_key().to_bytes(),
            disabled: false,
        };
        // Signed by another key.
        let mut s = Session::new(now, config(), CHALLENGE, EXPORTER);
        hello(&mut s, now);
        let other = SigningKey::from_bytes(&[8; 32]);
        s.handle_frame(
            now,
            Login {
                user: "bob".into(),
                device: DeviceId(1),
                signature: sign(&other, &EXPORTER, "bob"),
            }
            .into(),
        );
        drain(&mut s);
        s.handle_device_key(0, stored);
        assert_eq!(
            error_code(&drain(&mut s)),
            Some(ErrorCode::AuthFailed.as_u16())
        );
        // Right key, but signed for another connection's exporter (a replay).
        let mut s = Session::new(now, config(), CHALLENGE, EXPORTER);
        hello(&mut s, now);
        s.handle_frame(
            now,
            Login {
                user: "bob".into(),
                device: DeviceId(1),
                signature: sign(&k, &[9; 32], "bob"),
            }
            .into(),
        );
        drain(&mut s);
        s.handle_device_key(0, stored);
        assert_eq!(
            error_code(&drain(&mut s)),
            Some(ErrorCode::AuthFailed.as_u16())
        );
        // Unknown device.
        let mut s = Session::new(now, config(), CHALLENGE, EXPORTER);
        hello(&mut s, now);
        s.handle_frame(
            now,
            Login {
                user: "bob".into(),
                device: DeviceId(1),
                signature: sign(&k, &EXPORTER, "bob"),
            }
            .into(),
        );
        drain(&mut s);
        s.handle_device_key(0, DeviceLookup::Unknown);
        assert_eq!(
            error_code(&drain(&mut s)),
            Some(ErrorCode::AuthFailed.as_u16())
        );
    }

    #[test]
    fn disabled_account_cannot_log_in() {
        let now = Instant::now();
        let k = key();
        let mut s = Session::new(now, config(), CHALLENGE, EXPORTER);
        hello(&mut s, now);
        s.handle_frame(
            now,
            Login {
                user: "bob".into(),
                device: DeviceId(1),
                signature: sign(&k, &EXPORTER, "bob"),
            }
            .into(),
        );
        drain(&mut s);
        s.handle_device_key(
            0,
            DeviceLookup::Found {
                key: k.verifying_key().to_bytes(),
                disabled: true,
            },
        );
        assert_eq!(
            error_code(&drain(&mut s)),
            Some(ErrorCode::AccountDisabled.as_u16())
        );
    }

    fn register_frame(user: &str, invite: Option<&str>, exporter: &[u8; 32]) -> Frame {
        let k = key();
        Register {
            user: user.into(),
            device: DeviceId(1),
            device_key: k.verifying_key().to_bytes(),
            invite: invite.map(str::to_owned),
            signature: sign(&k, exporter, user),
        }
        .into()
    }

    #[test]
    fn registration_checks_name_signature_and_invite() {
        let now = Instant::now();
        let mut s = Session::new(now, config(), CHALLENGE, EXPORTER);
        hello(&mut s, now);
        s.handle_frame(now, register_frame("Bad Name", None, &EXPORTER));
        assert_eq!(
            error_code(&drain(&mut s)),
            Some(ErrorCode::InvalidName.as_u16())
        );

        let mut s = Session::new(now, config(), CHALLENGE, EXPORTER);
        hello(&mut s, now);
        s.handle_frame(now, register_frame("carol", None, &[0; 32]));
        assert_eq!(
            error_code(&drain(&mut s)),
            Some(ErrorCode::AuthFailed.as_u16())
        );

        let mut cfg = config();
        cfg.require_invite = true;
        let mut s = Session::new(now, cfg, CHALLENGE, EXPORTER);
        hello(&mut s, now);
        s.handle_frame(now, register_frame("carol", None, &EXPORTER));
        assert_eq!(
            error_code(&drain(&mut s)),
            Some(ErrorCode::InviteRequired.as_u16())
        );

        let mut s = Session::new(now, config(), CHALLENGE, EXPORTER);
        hello(&mut s, now);
        s.handle_frame(now, register_frame("carol", None, &EXPORTER));
        assert!(matches!(drain(&mut s)[0], Action::Register { .. }));
        s.handle_register_result(1, Some(RegisterOutcome::Taken));
        assert_eq!(
            error_code(&drain(&mut s)),
            Some(ErrorCode::UserTaken.as_u16())
        );

        let mut s = Session::new(now, config(), CHALLENGE, EXPORTER);
        hello(&mut s, now);
        s.handle_frame(now, register_frame("carol", None, &EXPORTER));
        drain(&mut s);
        s.handle_register_result(1, Some(RegisterOutcome::Created));
        let a = drain(&mut s);
        assert!(matches!(&a[0], Action::Send(Frame::Welcome(w)) if w.user == "carol"));
        assert_eq!(s.identity(), Some(("carol", DeviceId(1))));
    }

    #[test]
    fn delivery_window_paces_mailbox_reads() {
        let now = Instant::now();
        let mut s = active(now);
        s.handle_mailbox_read(4, Ok((1..=4).map(|n| (ServerSeq(n), item(n))).collect()));
        let a = drain(&mut s);
        assert_eq!(delivered_seqs(&a), vec![1, 2, 3, 4]);
        // Window full: no further read even though storage may hold more.
        assert!(!a.iter().any(|x| matches!(x, Action::ReadMailbox { .. })));
        s.handle_frame(now, ack_frame(2));
        let a = drain(&mut s);
        assert_eq!(
            a[0],
            Action::Ack {
                up_to: ServerSeq(2)
            }
        );
        assert!(matches!(
            a[1],
            Action::ReadMailbox {
                from: ServerSeq(5),
                limit: 2,
                ..
            }
        ));
        // A short read means caught up; later pushes are delivered directly.
        s.handle_mailbox_read(2, Ok(vec![(ServerSeq(5), item(5))]));
        assert_eq!(delivered_seqs(&drain(&mut s)), vec![5]);
        s.handle_pushed(ServerSeq(6), item(6));
        assert_eq!(delivered_seqs(&drain(&mut s)), vec![6]);
        // Window full again (3,4,5,6 unacked): a push is left to storage.
        s.handle_pushed(ServerSeq(7), item(7));
        assert!(delivered_seqs(&drain(&mut s)).is_empty());
        s.handle_frame(now, ack_frame(6));
        let a = drain(&mut s);
        assert!(a.iter().any(|x| matches!(
            x,
            Action::ReadMailbox {
                from: ServerSeq(7),
                limit: 4,
                ..
            }
        )));
    }

    #[test]
    fn pushes_during_a_read_are_held_and_deduplicated() {
        let now = Instant::now();
        let mut s = active(now);
        // While the first read is outstanding, 2 and 3 are pushed.
        s.handle_pushed(ServerSeq(2), item(2));
        s.handle_pushed(ServerSeq(3), item(3));
        assert!(drain(&mut s).is_empty());
        // The read saw 1 and 2 (2 was committed before the read ran).
        s.handle_mailbox_read(
            4,
            Ok(vec![(ServerSeq(1), item(1)), (ServerSeq(2), item(2))]),
        );
        assert_eq!(delivered_seqs(&drain(&mut s)), vec![1, 2, 3]);
        // A stale push is ignored.
        s.handle_pushed(ServerSeq(2), item(2));
        assert!(drain(&mut s).is_empty());
    }

    #[test]
    fn a_receipt_waits_for_the_sent_of_its_message_and_what_follows_keeps_its_order() {
        let now = Instant::now();
        let mut s = active(now);
        s.handle_mailbox_read(4, Ok(vec![]));
        drain(&mut s);
        s.handle_frame(now, send(7));
        assert!(matches!(drain(&mut s)[..], [Action::Store { .. }]));
        // The recipient acknowledged message 7 before its fsync was done: its receipt (seq 1)
        // and a message after it (seq 2) wait for 7's `Sent`.
        let receipt = |n: u8| StoredItem {
            payload: Payload::Delivered,
            ..item(u64::from(n))
        };
        s.handle_pushed(ServerSeq(1), receipt(7));
        s.handle_pushed(ServerSeq(2), item(3));
        assert!(drain(&mut s).is_empty());
        stored(&mut s, 7, 9);
        let a = drain(&mut s);
        let f = frames(&a);
        assert_eq!(f.len(), 3);
        assert!(matches!(f[0], Frame::Sent(x) if x.client_msg_id == ClientMsgId([7; 16])));
        assert!(
            matches!(f[1], Frame::Deliver(d) if d.seq == ServerSeq(1) && d.payload == Payload::Delivered)
        );
        assert!(matches!(f[2], Frame::Deliver(d) if d.seq == ServerSeq(2)));
        // A receipt of a message whose `Sent` is out is written at once.
        s.handle_pushed(ServerSeq(3), receipt(9));
        assert_eq!(delivered_seqs(&drain(&mut s)), vec![3]);
    }

    #[test]
    fn acks_arriving_during_an_ack_commit_are_merged() {
        let now = Instant::now();
        let mut s = active(now);
        s.handle_mailbox_read(4, Ok((1..=4).map(|n| (ServerSeq(n), item(n))).collect()));
        drain(&mut s);
        s.handle_frame(now, ack_frame(1));
        assert_eq!(
            drain(&mut s)[0],
            Action::Ack {
                up_to: ServerSeq(1)
            }
        );
        s.handle_frame(now, ack_frame(2));
        s.handle_frame(now, ack_frame(4));
        assert!(!drain(&mut s)
            .iter()
            .any(|a| matches!(a, Action::Ack { .. })));
        s.handle_ack_result();
        assert_eq!(
            drain(&mut s),
            vec![Action::Ack {
                up_to: ServerSeq(4)
            }]
        );
        s.handle_ack_result();
        assert!(drain(&mut s).is_empty());
    }

    #[test]
    fn acks_are_clamped_to_what_was_delivered() {
        let now = Instant::now();
        let mut s = active(now);
        // Nothing delivered yet: an ack is ignored, not trusted.
        s.handle_frame(now, ack_frame(100));
        assert!(drain(&mut s).is_empty());
        s.handle_mailbox_read(4, Ok(vec![(ServerSeq(1), item(1))]));
        drain(&mut s);
        s.handle_frame(now, ack_frame(100));
        assert_eq!(
            drain(&mut s)[0],
            Action::Ack {
                up_to: ServerSeq(1)
            }
        );
    }

    /// The copies of a message for a recipient with the one device 1.
    fn one_copy(envelope: Vec<u8>) -> Vec<DeviceEnvelope> {
        vec![DeviceEnvelope {
            device: DeviceId(1),
            envelope,
        }]
    }

    fn send(n: u8) -> Frame {
        Send {
            client_msg_id: ClientMsgId([n; 16]),
            to: "alice".into(),
            envelopes: one_copy(vec![n]),
            own: Vec::new(),
            expires_in_secs: 0,
        }
        .into()
    }

    /// Storage answers the send `n` (sent with [`send`]): stored at `ts`, for one device.
    fn stored(s: &mut Session, n: u8, ts: u64) {
        let outcome = AppendOutcome::Stored {
            server_ts_ms: ts,
            devices: 1,
        };
        s.handle_send_result(ClientMsgId([n; 16]), Ok(outcome), ts);
    }

    fn rejected(actions: &[Action]) -> Vec<u16> {
        frames(actions)
            .iter()
            .filter_map(|f| match f {
                Frame::Rejected(r) => Some(r.code),
                _ => None,
            })
            .collect()
    }

    #[test]
    fn in_flight_sends_are_capped_and_answered() {
        let now = Instant::now();
        let mut s = active(now);
        drain(&mut s);
        for n in 0..4 {
            s.handle_frame(now, send(n));
        }
        let a = drain(&mut s);
        assert_eq!(
            a.iter()
                .filter(|x| matches!(x, Action::Store { .. }))
                .count(),
            3
        );
        assert_eq!(rejected(&a), vec![ErrorCode::TooManyInFlight.as_u16()]);
        stored(&mut s, 0, 9);
        s.handle_send_result(
            ClientMsgId([1; 16]),
            Ok(AppendOutcome::Duplicate { server_ts_ms: 3 }),
            9,
        );
        s.handle_send_result(ClientMsgId([2; 16]), Ok(AppendOutcome::UnknownRecipient), 9);
        let a = drain(&mut s);
        let f = frames(&a);
        assert!(matches!(f[0], Frame::Sent(x) if !x.duplicate && x.server_ts_ms == 9));
        assert!(matches!(f[1], Frame::Sent(x) if x.duplicate && x.server_ts_ms == 3));
        assert_eq!(rejected(&a), vec![ErrorCode::UnknownRecipient.as_u16()]);
    }

    #[test]
    fn send_rate_is_limited_by_a_token_bucket() {
        let now = Instant::now();
        let mut cfg = config();
        cfg.max_in_flight_sends = 100;
        let mut s = Session::new(now, cfg, CHALLENGE, EXPORTER);
        hello(&mut s, now);
        let k = key();
        s.handle_frame(
            now,
            Login {
                user: "bob".into(),
                device: DeviceId(1),
                signature: sign(&k, &EXPORTER, "bob"),
            }
            .into(),
        );
        drain(&mut s);
        s.handle_device_key(
            0,
            DeviceLookup::Found {
                key: k.verifying_key().to_bytes(),
                disabled: false,
            },
        );
        drain(&mut s);
        for n in 0..7 {
            s.handle_frame(now, send(n));
        }
        // Burst of 5, then two refusals.
        assert_eq!(rejected(&drain(&mut s)).len(), 2);
        // 10/s: after 300 ms, 3 more tokens.
        let later = now + Duration::from_millis(300);
        for n in 10..14 {
            s.handle_frame(later, send(n));
        }
        assert_eq!(
            rejected(&drain(&mut s)),
            vec![ErrorCode::RateLimited.as_u16()]
        );
    }

    #[test]
    fn idle_connections_time_out() {
        let now = Instant::now();
        let mut s = active(now);
        drain(&mut s);
        let deadline = s.poll_timeout().unwrap();
        assert_eq!(deadline, now + Duration::from_secs(60));
        s.handle_timeout(now + Duration::from_secs(30));
        assert!(drain(&mut s).is_empty());
        // Any client frame pushes the deadline out.
        let t = now + Duration::from_secs(50);
        s.handle_frame(t, Ping { nonce: 3 }.into());
        assert!(matches!(frames(&drain(&mut s))[0], Frame::Pong(p) if p.nonce == 3));
        s.handle_timeout(now + Duration::from_secs(61));
        assert!(drain(&mut s).is_empty());
        s.handle_timeout(t + Duration::from_secs(60));
        assert_eq!(
            error_code(&drain(&mut s)),
            Some(ErrorCode::IdleTimeout.as_u16())
        );
        assert_eq!(s.poll_timeout(), None);
    }

    #[test]
    fn bye_waits_for_sends_in_flight() {
        let now = Instant::now();
        let mut s = active(now);
        drain(&mut s);
        s.handle_frame(now, send(1));
        s.handle_frame(now, Bye {}.into());
        let a = drain(&mut s);
        assert!(!a.contains(&Action::Close));
        stored(&mut s, 1, 1);
        let a = drain(&mut s);
        let f = frames(&a);
        assert!(matches!(f[0], Frame::Sent(_)));
        assert!(matches!(f[1], Frame::Bye(_)));
        assert_eq!(a.last(), Some(&Action::Close));
        assert_eq!(s.close_reason(), Some(CloseReason::Bye));
    }

    #[test]
    fn group_log_items_go_out_as_group_deliver_and_bye_waits_for_the_cursor() {
        let now = Instant::now();
        let mut s = active(now);
        // The mailbox is read first: a group message waits while its key may be there.
        s.handle_mailbox_read(4, Ok(Vec::new()));
        drain(&mut s);
        let g = GroupId(3);
        let message = StoredItem {
            payload: Payload::Group(Box::new(missive_proto::GroupMessage {
                group: g,
                body: vec![1, 2],
            })),
            ..item(9)
        };
        s.handle_group_pushed(now, g, ServerSeq(9), LogItem::Stored(message));
        let a = drain(&mut s);
        assert!(
            matches!(&frames(&a)[..], [Frame::GroupDeliver(d)] if d.group == g && d.deliver.seq == ServerSeq(9)),
            "{a:?}"
        );
        s.handle_frame(
            now,
            missive_proto::AckGroup {
                group: g,
                up_to: ServerSeq(9),
            }
            .into(),
        );
        s.handle_frame(now, Bye {}.into());
        let a = drain(&mut s);
        assert!(a.contains(&Action::AckGroup {
            group: g,
            up_to: ServerSeq(9)
        }));
        assert!(!a.contains(&Action::Close), "the cursor is not written yet");
        s.handle_group_ack_result(now, g);
        assert_eq!(drain(&mut s).last(), Some(&Action::Close));
    }

    fn group_message(g: GroupId, seq: u64) -> LogItem {
        LogItem::Stored(StoredItem {
            payload: Payload::Group(Box::new(missive_proto::GroupMessage {
                group: g,
                body: vec![1, 2],
            })),
            ..item(seq)
        })
    }

    fn ack_group(g: GroupId, up_to: u64) -> Frame {
        missive_proto::AckGroup {
            group: g,
            up_to: ServerSeq(up_to),
        }
        .into()
    }

    #[test]
    fn group_cursor_writes_are_paced_and_a_bye_writes_what_is_owed() {
        let now = Instant::now();
        let mut s = active(now);
        s.handle_mailbox_read(4, Ok(Vec::new()));
        drain(&mut s);
        let g = GroupId(3);
        let write = |up_to| Action::AckGroup {
            group: g,
            up_to: ServerSeq(up_to),
        };
        // The first ack after a quiet spell is written at once.
        s.handle_group_pushed(now, g, ServerSeq(1), group_message(g, 1));
        s.handle_frame(now, ack_group(g, 1));
        assert!(drain(&mut s).contains(&write(1)));
        s.handle_group_ack_result(now, g);
        // The next within the interval waits for the session's timer, though the window
        // opened at once (the next item goes out).
        let t1 = now + Duration::from_millis(10);
        s.handle_group_pushed(t1, g, ServerSeq(2), group_message(g, 2));
        s.handle_frame(t1, ack_group(g, 2));
        s.handle_group_pushed(t1, g, ServerSeq(3), group_message(g, 3));
        s.handle_frame(t1, ack_group(g, 3));
        let a = drain(&mut s);
        let seqs: Vec<u64> = frames(&a)
            .iter()
            .filter_map(|f| match f {
                Frame::GroupDeliver(d) => Some(d.deliver.seq.0),
                _ => None,
            })
            .collect();
        assert_eq!(seqs, vec![2, 3]);
        assert!(
            !a.iter().any(|a| matches!(a, Action::AckGroup { .. })),
            "{a:?}"
        );
        let due = now + crate::group_streams::CURSOR_WRITE_INTERVAL;
        assert_eq!(s.poll_timeout(), Some(due));
        s.handle_timeout(due);
        assert_eq!(drain(&mut s), vec![write(3)], "one write for both acks");
        s.handle_group_ack_result(due, g);
        // An ack owed at the Bye is written before the Bye is answered.
        let t2 = due + Duration::from_millis(1);
        s.handle_group_pushed(t2, g, ServerSeq(4), group_message(g, 4));
        s.handle_frame(t2, ack_group(g, 4));
        assert!(!drain(&mut s).contains(&write(4)));
        s.handle_frame(t2, Bye {}.into());
        let a = drain(&mut s);
        assert!(a.contains(&write(4)), "{a:?}");
        assert!(!a.contains(&Action::Close));
        s.handle_group_ack_result(t2, g);
        assert_eq!(drain(&mut s).last(), Some(&Action::Close));
    }

    #[test]
    fn a_connection_lost_hands_over_the_unwritten_cursors() {
        let now = Instant::now();
        let mut s = active(now);
        s.handle_mailbox_read(4, Ok(Vec::new()));
        drain(&mut s);
        let g = GroupId(3);
        s.handle_group_pushed(now, g, ServerSeq(1), group_message(g, 1));
        s.handle_frame(now, ack_group(g, 1));
        s.handle_group_pushed(now, g, ServerSeq(2), group_message(g, 2));
        s.handle_frame(now, ack_group(g, 2));
        drain(&mut s);
        // 1 is being written; 2 waits for the pace when the transport goes away.
        assert_eq!(s.take_unwritten_cursors(), vec![(g, ServerSeq(2))]);
        assert!(s.take_unwritten_cursors().is_empty(), "handed over once");
    }

    #[test]
    fn goaway_tells_the_client_and_refuses_new_sends() {
        let now = Instant::now();
        let mut s = active(now);
        drain(&mut s);
        s.handle_frame(now, send(1));
        drain(&mut s);
        s.handle_goaway(500);
        let a = drain(&mut s);
        assert!(matches!(frames(&a)[0], Frame::Goaway(g) if g.reconnect_after_ms == 500));
        assert!(!a.contains(&Action::Close));
        s.handle_frame(now, send(2));
        assert_eq!(
            rejected(&drain(&mut s)),
            vec![ErrorCode::ShuttingDown.as_u16()]
        );
        s.handle_send_result(ClientMsgId([1; 16]), Err(StoreRefusal::Failed), 1);
        let a = drain(&mut s);
        assert_eq!(rejected(&a), vec![ErrorCode::Internal.as_u16()]);
        assert_eq!(a.last(), Some(&Action::Close));
    }

    #[test]
    fn disabling_a_live_account_closes_with_account_disabled() {
        let t0 = Instant::now();
        let mut s = active(t0);
        drain(&mut s);
        s.handle_account_disabled();
        let a = drain(&mut s);
        assert_eq!(error_code(&a), Some(ErrorCode::AccountDisabled.as_u16()));
        assert!(matches!(a.last(), Some(Action::Close)));
        assert!(s.is_closed());
        assert_eq!(
            s.close_reason(),
            Some(CloseReason::Error(ErrorCode::AccountDisabled))
        );
        // Nothing more once closed.
        s.handle_account_disabled();
        assert!(drain(&mut s).is_empty());
    }

    #[test]
    fn a_replaced_session_closes_with_session_replaced() {
        let t0 = Instant::now();
        let mut s = active(t0);
        drain(&mut s);
        s.handle_replaced();
        let a = drain(&mut s);
        assert_eq!(error_code(&a), Some(ErrorCode::SessionReplaced.as_u16()));
        assert!(matches!(a.last(), Some(Action::Close)));
        assert_eq!(
            s.close_reason(),
            Some(CloseReason::Error(ErrorCode::SessionReplaced))
        );
    }

    #[test]
    fn decode_errors_close_with_their_code() {
        let now = Instant::now();
        let mut s = Session::new(now, config(), CHALLENGE, EXPORTER);
        s.handle_decode_error(&ProtoError::TooLarge { len: 9, max: 1 });
        let a = drain(&mut s);
        assert_eq!(error_code(&a), Some(ErrorCode::FrameTooLarge.as_u16()));
        assert_eq!(a.last(), Some(&Action::Close));
    }

    /// A client's `AckDelivery` up to `seq`.
    fn ack_frame(seq: u64) -> Frame {
        AckDelivery {
            up_to: ServerSeq(seq),
        }
        .into()
    }

    fn big_item(n: u64, len: usize) -> StoredItem {
        StoredItem {
            payload: Payload::Envelope(vec![0; len]),
            ..item(n)
        }
    }

    #[test]
    fn only_hello_register_and_login_are_accepted_before_login() {
        let now = Instant::now();
        for early in [Ping { nonce: 1 }.into(), Pong { nonce: 1 }.into(), send(1)] {
            let mut s = Session::new(now, config(), CHALLENGE, EXPORTER);
            hello(&mut s, now);
            s.handle_frame(now, early);
            let a = drain(&mut s);
            assert_eq!(
                error_code(&a),
                Some(ErrorCode::ProtocolViolation.as_u16()),
                "{a:?}"
            );
            assert!(!frames(&a).iter().any(|f| matches!(f, Frame::Pong(_))));
            assert_eq!(a.last(), Some(&Action::Close));
        }
    }

    #[test]
    fn a_connection_not_logged_in_by_its_deadline_is_closed() {
        let now = Instant::now();
        let mut s = Session::new(now, config(), CHALLENGE, EXPORTER);
        hello(&mut s, now);
        // The login deadline comes before the idle deadline, and frames do not move it.
        assert_eq!(s.poll_timeout(), Some(now + Duration::from_secs(10)));
        s.handle_frame(now + Duration::from_secs(9), Bye {}.into());
        let mut s = Session::new(now, config(), CHALLENGE, EXPORTER);
        hello(&mut s, now + Duration::from_secs(9));
        assert_eq!(s.poll_timeout(), Some(now + Duration::from_secs(10)));
        s.handle_timeout(now + Duration::from_secs(10));
        let a = drain(&mut s);
        assert_eq!(error_code(&a), Some(ErrorCode::LoginTimeout.as_u16()));
        assert!(s.is_closed());
        // Once logged in only the idle deadline counts.
        let s = active(now);
        assert_eq!(s.poll_timeout(), Some(now + Duration::from_secs(60)));
    }

    #[test]
    fn an_envelope_is_accepted_only_if_its_deliver_fits_the_frame_limit() {
        let now = Instant::now();
        let mut s = active(now);
        let max = max_envelope_len(config().max_frame);
        for (n, len) in [(1u8, max), (2, max + 1)] {
            s.handle_frame(
                now,
                Send {
                    client_msg_id: ClientMsgId([n; 16]),
                    to: "alice".into(),
                    envelopes: one_copy(vec![0; len]),
                    own: Vec::new(),
                    expires_in_secs: 0,
                }
                .into(),
            );
        }
        let a = drain(&mut s);
        let stores = a
            .iter()
            .filter(|x| matches!(x, Action::Store { envelopes, .. } if envelopes[0].envelope.len() == max))
            .count();
        assert_eq!(stores, 1);
        assert_eq!(rejected(&a), vec![ErrorCode::EnvelopeTooLarge.as_u16()]);
        assert!(!s.is_closed());
    }

    #[test]
    fn frames_past_the_budget_close_the_connection() {
        let now = Instant::now();
        let mut s = active(now);
        // Burst 1000 (see `config`): the 1001st frame in the same instant is one too many.
        for i in 0..1000 {
            s.handle_frame(now, Ping { nonce: i }.into());
        }
        assert!(!s.is_closed());
        s.handle_frame(now, Ping { nonce: 0 }.into());
        let a = drain(&mut s);
        assert_eq!(error_code(&a), Some(ErrorCode::RateLimited.as_u16()));
        assert!(s.is_closed());
    }

    #[test]
    fn presence_subscriptions_are_counted_and_rate_limited() {
        let now = Instant::now();
        let mut s = active(now);
        for name in ["a", "b", "c", "a"] {
            s.handle_frame(now, SubscribePresence { user: name.into() }.into());
        }
        let a = drain(&mut s);
        let subs = a
            .iter()
            .filter(|x| matches!(x, Action::SubscribePresence(_)))
            .count();
        assert_eq!(subs, 4, "a repeat is answered again");
        assert_eq!(s.subscriptions().count(), 3);
        s.handle_frame(now, SubscribePresence { user: "d".into() }.into());
        assert_eq!(
            error_code(&drain(&mut s)),
            Some(ErrorCode::LimitExceeded.as_u16())
        );
        // The rate: 100 per second, burst 100.
        let mut s = active(now);
        for _ in 0..100 {
            s.handle_frame(now, SubscribePresence { user: "a".into() }.into());
        }
        assert!(!s.is_closed());
        s.handle_frame(now, SubscribePresence { user: "a".into() }.into());
        assert_eq!(
            error_code(&drain(&mut s)),
            Some(ErrorCode::RateLimited.as_u16())
        );
    }

    #[test]
    fn visibility_changes_coalesce_and_are_rate_limited() {
        let now = Instant::now();
        let mut s = active(now);
        let set = |v| SetPresenceVisibility { visibility: v }.into();
        s.handle_frame(now, set(Visibility::Nobody));
        s.handle_frame(now, set(Visibility::Everyone));
        s.handle_frame(now, set(Visibility::Nobody));
        // One write in flight; the later ones wait, and only the last of them is written.
        assert_eq!(
            drain(&mut s),
            vec![Action::SetVisibility(Visibility::Nobody)]
        );
        s.handle_visibility_stored();
        assert_eq!(
            drain(&mut s),
            vec![Action::SetVisibility(Visibility::Nobody)]
        );
        s.handle_visibility_stored();
        assert!(drain(&mut s).is_empty());
        // Burst 3 was spent: the fourth change in the same second closes the connection.
        s.handle_frame(now, set(Visibility::Everyone));
        assert_eq!(
            error_code(&drain(&mut s)),
            Some(ErrorCode::RateLimited.as_u16())
        );
    }

    #[test]
    fn typing_past_its_budget_is_dropped_not_fatal() {
        let now = Instant::now();
        let mut s = active(now);
        for _ in 0..20 {
            s.handle_frame(
                now,
                Typing {
                    to: "alice".into(),
                    typing: true,
                }
                .into(),
            );
        }
        let forwarded = drain(&mut s)
            .iter()
            .filter(|x| matches!(x, Action::Typing { .. }))
            .count();
        assert_eq!(forwarded, 5, "burst of 5");
        assert!(!s.is_closed());
    }

    #[test]
    fn the_delivery_window_is_bounded_in_bytes_too() {
        let now = Instant::now();
        let mut s = active(now);
        // Items of 600 KiB: storage stops the login's read (budget 1 MiB) after the second,
        // short of its item limit of 4. That is no sign of an empty mailbox: the items after
        // it are read once the client acknowledges (a push meanwhile waits for that read).
        s.handle_mailbox_read(
            4,
            Ok(vec![
                (ServerSeq(1), big_item(1, 600 << 10)),
                (ServerSeq(2), big_item(2, 600 << 10)),
            ]),
        );
        let a = drain(&mut s);
        assert_eq!(delivered_seqs(&a), vec![1, 2]);
        assert!(!a.iter().any(|x| matches!(x, Action::ReadMailbox { .. })));
        s.handle_pushed(ServerSeq(4), big_item(4, 10));
        assert!(delivered_seqs(&drain(&mut s)).is_empty());
        s.handle_frame(now, ack_frame(2));
        let a = drain(&mut s);
        assert!(a.iter().any(|x| matches!(
            x,
            Action::ReadMailbox {
                from: ServerSeq(3),
                limit: 4,
                max_bytes: WINDOW_BYTES,
            }
        )));
    }

    #[test]
    fn sends_spend_a_byte_budget() {
        let now = Instant::now();
        let mut cfg = config();
        cfg.send_bytes = Rate::per_second(1000, 1500);
        cfg.max_in_flight_sends = 10;
        let mut s = active_with(now, cfg);
        for n in 1..=2u8 {
            s.handle_frame(
                now,
                Send {
                    client_msg_id: ClientMsgId([n; 16]),
                    to: "alice".into(),
                    envelopes: one_copy(vec![0; 1000]),
                    own: Vec::new(),
                    expires_in_secs: 0,
                }
                .into(),
            );
        }
        assert_eq!(
            rejected(&drain(&mut s)),
            vec![ErrorCode::RateLimited.as_u16()]
        );
    }

    #[test]
    fn a_registration_refused_by_its_address_closes_with_that_code() {
        let now = Instant::now();
        let mut s = Session::new(now, config(), CHALLENGE, EXPORTER);
        hello(&mut s, now);
        s.handle_frame(now, register_frame("rita", None, &EXPORTER));
        assert!(matches!(drain(&mut s)[..], [Action::Register { .. }]));
        s.handle_register_refused(ErrorCode::RateLimited, "slow down");
        assert_eq!(
            error_code(&drain(&mut s)),
            Some(ErrorCode::RateLimited.as_u16())
        );
    }

    #[test]
    fn turn_credentials_are_asked_of_the_driver_within_their_budget() {
        let now = Instant::now();
        // Before login the request is a protocol violation like any other.
        let mut s = Session::new(now, config(), CHALLENGE, EXPORTER);
        hello(&mut s, now);
        s.handle_frame(
            now,
            missive_proto::TurnCredentialsRequest { request_id: 1 }.into(),
        );
        assert_eq!(
            error_code(&drain(&mut s)),
            Some(ErrorCode::ProtocolViolation.as_u16())
        );

        // The test budget: 1 per minute, bursts of 2.
        let mut s = active(now);
        for id in [1, 2] {
            s.handle_frame(
                now,
                missive_proto::TurnCredentialsRequest { request_id: id }.into(),
            );
            assert_eq!(
                drain(&mut s),
                vec![Action::TurnCredentials { request_id: id }]
            );
        }
        s.handle_frame(
            now,
            missive_proto::TurnCredentialsRequest { request_id: 3 }.into(),
        );
        let a = drain(&mut s);
        assert!(
            matches!(&a[..], [Action::Send(Frame::RequestRefused(r))]
                if r.request_id == 3 && r.code == ErrorCode::RateLimited.as_u16()),
            "{a:?}"
        );
        assert!(
            !s.is_closed(),
            "a refused request leaves the connection open"
        );
        let later = now + Duration::from_secs(60);
        s.handle_frame(
            later,
            missive_proto::TurnCredentialsRequest { request_id: 4 }.into(),
        );
        assert_eq!(
            drain(&mut s),
            vec![Action::TurnCredentials { request_id: 4 }]
        );
    }
}
