//! The per-connection protocol as a plain state machine: no sockets, no clock, no storage.
//!
//! The connection driver (`connection.rs`) feeds inputs and executes outputs:
//!
//! - inputs: [`Session::handle_frame`], [`Session::handle_decode_error`],
//!   [`Session::handle_device_key`], [`Session::handle_register_result`],
//!   [`Session::handle_send_result`], [`Session::handle_ack_result`],
//!   [`Session::handle_mailbox_read`], [`Session::handle_pushed`],
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
//! `ReadMailbox`, so every item is either in that read or pushed after it.

use ed25519_dalek::{Signature, Verifier, VerifyingKey};
use missive_proto::{
    login_transcript, validate_user_name, AckDelivery, ClientMsgId, Deliver, DeviceId, Error,
    ErrorCode, Frame, Goaway, Payload, Pong, ProtoError, Rejected, Send, Sent, ServerHello,
    ServerSeq, Visibility, Welcome, EXPORTER_LEN, MIN_PROTOCOL_VERSION, PROTOCOL_VERSION,
};
use missive_storage::{AppendOutcome, RegisterOutcome, StoredItem};
use std::collections::VecDeque;
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
}

/// Something the driver must do for the session.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Action {
    /// Write this frame to the client.
    Send(Frame),
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
        /// Opaque envelope.
        envelope: Vec<u8>,
    },
    /// Delete this device's mailbox up to `up_to` (and queue receipts); answer with
    /// `handle_ack_result`.
    Ack {
        /// Highest acknowledged seq.
        up_to: ServerSeq,
    },
    /// Read up to `limit` mailbox items from `from`; answer with `handle_mailbox_read`.
    ReadMailbox {
        /// First seq wanted.
        from: ServerSeq,
        /// Most items wanted.
        limit: usize,
    },
    /// Persist this user's presence visibility and tell subscribers.
    SetVisibility(Visibility),
    /// Subscribe this session to a user's presence (and send the current state).
    SubscribePresence(String),
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
    },
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
    challenge: [u8; 32],
    exporter: [u8; EXPORTER_LEN],
    phase: Phase,
    actions: VecDeque<Action>,
    last_client_frame: Instant,
    /// Send-rate token bucket: tokens and when they were last refilled.
    tokens: f64,
    tokens_at: Instant,
    sends_in_flight: usize,
    acks_in_flight: usize,
    /// Next mailbox seq to deliver (everything below was delivered on this connection).
    next_deliver: ServerSeq,
    /// Delivered, not yet acknowledged.
    unacked: VecDeque<ServerSeq>,
    reading: bool,
    /// Items may be waiting in storage beyond what was delivered.
    backlog: bool,
    /// Items pushed while a read was outstanding.
    held_pushes: Vec<(ServerSeq, StoredItem)>,
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
        let tokens = f64::from(config.send_burst.max(1));
        Self {
            config,
            challenge,
            exporter,
            phase: Phase::AwaitHello,
            actions: VecDeque::new(),
            last_client_frame: now,
            tokens,
            tokens_at: now,
            sends_in_flight: 0,
            acks_in_flight: 0,
            next_deliver: ServerSeq(0),
            unacked: VecDeque::new(),
            reading: false,
            backlog: false,
            held_pushes: Vec::new(),
            bye_requested: false,
            draining: false,
            close_reason: None,
        }
    }

    /// Next action for the driver, in order.
    pub fn poll_action(&mut self) -> Option<Action> {
        self.actions.pop_front()
    }

    /// When `handle_timeout` must be called next (the idle deadline).
    pub fn poll_timeout(&self) -> Option<Instant> {
        if self.is_closed() {
            None
        } else {
            Some(self.last_client_frame + self.config.idle_timeout)
        }
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

    /// Idle deadline check.
    pub fn handle_timeout(&mut self, now: Instant) {
        if !self.is_closed() && now >= self.last_client_frame + self.config.idle_timeout {
            self.fail(ErrorCode::IdleTimeout, "idle timeout");
        }
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

    /// A decoded frame from the client.
    pub fn handle_frame(&mut self, now: Instant, frame: Frame) {
        if self.is_closed() {
            return;
        }
        self.last_client_frame = now;
        match (&self.phase, frame) {
            (_, Frame::Ping(p)) => self.send(Pong { nonce: p.nonce }),
            (_, Frame::Pong(_)) => {}
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
                self.send(ServerHello {
                    version,
                    challenge: self.challenge,
                    max_frame: self.config.max_frame,
                });
            }
            (Phase::AwaitAuth, Frame::Login(l)) => {
                if validate_user_name(&l.user).is_err() {
                    self.fail(ErrorCode::AuthFailed, "unknown device");
                    return;
                }
                self.phase = Phase::Authenticating {
                    user: l.user.clone(),
                    device: l.device,
                    signature: Some(l.signature),
                };
                self.actions.push_back(Action::LookupDevice {
                    user: l.user,
                    device: l.device,
                });
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
                };
                self.actions.push_back(Action::Register {
                    user: r.user,
                    device: r.device,
                    key: r.device_key,
                    invite: r.invite,
                });
            }
            (Phase::Active { .. }, Frame::Send(s)) => self.on_send(now, s),
            (Phase::Active { .. }, Frame::AckDelivery(a)) => self.on_ack(a),
            (Phase::Active { .. }, Frame::SetPresenceVisibility(v)) => {
                self.actions.push_back(Action::SetVisibility(v.visibility))
            }
            (Phase::Active { .. }, Frame::SubscribePresence(s)) => {
                if validate_user_name(&s.user).is_ok() {
                    self.actions.push_back(Action::SubscribePresence(s.user));
                }
            }
            (Phase::Active { .. }, Frame::Typing(t)) => {
                if validate_user_name(&t.to).is_ok() {
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

    /// Storage's answer to `Action::LookupDevice`.
    pub fn handle_device_key(&mut self, now_ms: u64, lookup: DeviceLookup) {
        let Phase::Authenticating {
            user,
            device,
            signature: Some(sig),
        } = self.phase.clone()
        else {
            return;
        };
        match lookup {
            DeviceLookup::Found { key, disabled } => {
                if !self.signature_valid(&key, &user, device, &sig) {
                    self.fail(ErrorCode::AuthFailed, "login signature does not verify");
                } else if disabled {
                    self.fail(ErrorCode::AccountDisabled, "account disabled");
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
        self.actions.push_back(Action::Online { user, device });
        self.backlog = true;
        self.pump();
    }

    fn refill(&mut self, now: Instant) {
        let elapsed = now.saturating_duration_since(self.tokens_at).as_secs_f64();
        self.tokens_at = now;
        self.tokens = (self.tokens + elapsed * f64::from(self.config.send_rate_per_sec))
            .min(f64::from(self.config.send_burst.max(1)));
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
        if self.sends_in_flight >= self.config.max_in_flight_sends {
            let r = reject(ErrorCode::TooManyInFlight, "too many unanswered sends");
            self.send(r);
            return;
        }
        self.refill(now);
        if self.tokens < 1.0 {
            let r = reject(ErrorCode::RateLimited, "send rate exceeded");
            self.send(r);
            return;
        }
        self.tokens -= 1.0;
        self.sends_in_flight += 1;
        self.actions.push_back(Action::Store {
            client_msg_id: s.client_msg_id,
            to: s.to,
            envelope: s.envelope,
        });
    }

    /// Storage's answer to `Action::Store` (`Err(())` when storage failed).
    pub fn handle_send_result(
        &mut self,
        client_msg_id: ClientMsgId,
        result: Result<AppendOutcome, ()>,
        now_ms: u64,
    ) {
        self.sends_in_flight = self.sends_in_flight.saturating_sub(1);
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
            Err(()) => self.send(Rejected {
                client_msg_id,
                code: ErrorCode::Internal.as_u16(),
                message: "storage unavailable, retry".into(),
            }),
        }
        self.maybe_finish();
    }

    fn on_ack(&mut self, a: AckDelivery) {
        // Only what this connection delivered may be deleted: an ack beyond it (e.g. for
        // items seen on an earlier connection) is clamped, never trusted.
        if self.next_deliver.0 == 0 {
            return;
        }
        let up_to = ServerSeq(a.up_to.0.min(self.next_deliver.0 - 1));
        let a = AckDelivery { up_to };
        while self.unacked.front().is_some_and(|s| *s <= a.up_to) {
            self.unacked.pop_front();
        }
        self.acks_in_flight += 1;
        self.actions.push_back(Action::Ack { up_to: a.up_to });
        self.pump();
    }

    /// Storage's answer to `Action::Ack`. A failed ack only means the items are delivered
    /// again on a later connection.
    pub fn handle_ack_result(&mut self) {
        self.acks_in_flight = self.acks_in_flight.saturating_sub(1);
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
                self.backlog = items.len() >= requested;
                for (seq, item) in items {
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
        } else if self.backlog || self.unacked.len() >= self.config.delivery_window {
            // Storage has it; the next read picks it up in order.
            self.backlog = true;
        } else {
            self.deliver(seq, item);
        }
    }

    /// Live pushes were lost (the session's queue was full): read from storage instead.
    pub fn handle_overflow(&mut self) {
        self.backlog = true;
        self.pump();
    }

    fn deliver(&mut self, seq: ServerSeq, item: StoredItem) {
        if seq < self.next_deliver {
            return;
        }
        self.next_deliver = ServerSeq(seq.0 + 1);
        self.unacked.push_back(seq);
        let payload = match item.payload {
            Payload::Envelope(e) => Payload::Envelope(e),
            Payload::Delivered => Payload::Delivered,
        };
        self.send(Deliver {
            seq,
            from: item.from,
            from_device: item.from_device,
            client_msg_id: item.client_msg_id,
            server_ts_ms: item.server_ts_ms,
            payload,
        });
    }

    /// Starts a mailbox read when the window has room and storage may hold more.
    fn pump(&mut self) {
        if !matches!(self.phase, Phase::Active { .. }) || self.reading || !self.backlog {
            return;
        }
        let room = self
            .config
            .delivery_window
            .saturating_sub(self.unacked.len());
        if room == 0 {
            return;
        }
        self.reading = true;
        self.actions.push_back(Action::ReadMailbox {
            from: self.next_deliver,
            limit: room,
        });
    }

    fn maybe_finish(&mut self) {
        if self.is_closed() || self.sends_in_flight > 0 || self.acks_in_flight > 0 {
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

fn phase_name(p: &Phase) -> &'static str {
    match p {
        Phase::AwaitHello => "await-hello",
        Phase::AwaitAuth => "await-auth",
        Phase::Authenticating { .. } => "authenticating",
        Phase::Active { .. } => "active",
        Phase::Closed => "closed",
    }
}
