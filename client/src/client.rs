//! The SDK handle an app embeds: [`Client`], its [`ClientConfig`], [`register`] and [`link`].

use crate::backoff::ReconnectPolicy;
use crate::call::CallDo;
use crate::connection::establish;
use crate::content::{seal, Content};
use crate::dedup::SeenSet;
use crate::driver::{Command, Driver};
use crate::event::EventStream;
use crate::login::LoginMode;
use crate::receipt_id::ReceiptIds;
use crate::transport::TransportConfig;
use crate::{ClientError, Identity};
use missive_proto::{
    validate_group_name, validate_user_name, ClientMsgId, CreateLinkCode, DeviceId, Frame,
    GroupAnswerKind, GroupId, GroupInfo, GroupOp, GroupRead, GroupReceipt, GroupRequest,
    GroupSummary, ListDevices, RemoveDevice, Retract, Visibility,
};
use std::borrow::Borrow;
use std::net::SocketAddr;
use std::time::Duration;
use tokio::sync::{mpsc, oneshot};
use tracing::Instrument;

/// Longest [`Client::close`] waits, whatever state the connection is in.
const CLOSE_LIMIT: Duration = Duration::from_secs(6);

/// Everything needed to connect as one device.
#[derive(Debug, Clone)]
pub struct ClientConfig {
    /// The edge's address (QUIC and TCP+TLS).
    pub server: SocketAddr,
    /// Name the server certificate must carry (default `"localhost"`).
    pub server_name: String,
    /// PEM certificate(s) to trust for the edge.
    pub ca_pem: Vec<u8>,
    /// Who to log in as.
    pub identity: Identity,
    /// How long to wait for QUIC before falling back to TCP+TLS (default 1.5 s).
    pub quic_timeout: Duration,
    /// Use TCP+TLS only (default false).
    pub force_tcp: bool,
    /// Reconnect schedule (default 200 ms doubling to 10 s, 30 % jitter).
    pub reconnect: ReconnectPolicy,
    /// Acknowledge each delivery as soon as its events are in the [`EventStream`] (default
    /// true). Turn off to ack with [`Client::ack`] after the app has stored what it got.
    pub auto_ack: bool,
    /// Sent in `Hello` for the server's logs (default `missive-client/<version>`).
    pub client_name: String,
    /// Deliveries already handled (e.g. loaded from disk by an app that records the
    /// [`crate::Event::delivery_key`] of every event it processed); they are dropped, and
    /// acknowledged, if delivered again. Bounded by its own capacity (default 10 000).
    pub seen: SeenSet,
    /// Run QUIC on this shared UDP endpoint instead of one socket per connection (default
    /// none). For load generators and apps holding many accounts at once.
    pub quic_endpoint: Option<crate::transport::QuicEndpoint>,
    /// Handle deliveries (default true). False leaves them in the mailbox untouched, neither
    /// decrypted nor acknowledged: for a short-lived process that only sends while another
    /// instance of the same device (sharing its E2EE state on disk) receives.
    pub receive: bool,
    /// Disappearing-message timers per chat (other user → seconds), as the app saved them
    /// from `Event::TimerChanged` and [`Client::set_disappearing`] (default none).
    pub disappearing: std::collections::HashMap<String, u32>,
    /// A group's Megolm session is replaced after this many messages (default 100): a key
    /// copied from a member's device reads at most this many messages ahead. It is also
    /// replaced at every membership change.
    pub rotate_after_messages: u32,
    /// ... and once it is this old, however few messages it carried (default 7 days).
    pub rotate_after: Duration,
}

impl ClientConfig {
    /// A configuration with every default.
    pub fn new(server: SocketAddr, ca_pem: impl Into<Vec<u8>>, identity: Identity) -> Self {
        Self {
            server,
            server_name: "localhost".into(),
            ca_pem: ca_pem.into(),
            identity,
            quic_timeout: Duration::from_millis(1500),
            force_tcp: false,
            reconnect: ReconnectPolicy::default(),
            auto_ack: true,
            client_name: concat!("missive-client/", env!("CARGO_PKG_VERSION")).into(),
            seen: SeenSet::default(),
            quic_endpoint: None,
            receive: true,
            disappearing: std::collections::HashMap::new(),
            rotate_after_messages: crate::e2ee::RotationPolicy::default().messages,
            rotate_after: crate::e2ee::RotationPolicy::default().age,
        }
    }

    pub(crate) fn transport(&self) -> TransportConfig {
        TransportConfig {
            server: self.server,
            server_name: self.server_name.clone(),
            ca_pem: self.ca_pem.clone(),
            quic_timeout: self.quic_timeout,
            force_tcp: self.force_tcp,
            quic_endpoint: self.quic_endpoint.clone(),
        }
    }
}

/// The server's answer to a send: the message is durably stored.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SendReceipt {
    /// The message's id (what receipts will refer to).
    pub client_msg_id: ClientMsgId,
    /// When the server stored it, ms since the Unix epoch.
    pub server_ts_ms: u64,
    /// True when the server had already stored this id (a retry); it was not stored twice.
    pub duplicate: bool,
}

/// An invite token of a group (see [`Client::create_group_invite`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GroupInvite {
    /// The group.
    pub group: GroupId,
    /// The token; share it out of band. Whoever holds it may join ([`Client::join_group`]).
    pub token: String,
    /// When it stops working, ms since the Unix epoch (0: only when revoked).
    pub expires_at_ms: u64,
}

/// QUIC streams one upload runs on.
const UPLOAD_STREAMS: usize = 4;

/// A connected client. Cheap to clone; every clone drives the same connection.
///
/// A background task owns the connection: it reconnects with backoff, logs in again,
/// resends unanswered sends with their original ids, answers pings and hands events to the
/// [`EventStream`]. When every clone is dropped the task closes the connection; prefer
/// [`Client::close`], which waits until the server has applied everything sent before it.
#[derive(Debug, Clone)]
pub struct Client {
    cmd: mpsc::UnboundedSender<Command>,
    receipt_ids: ReceiptIds,
    counters: std::sync::Arc<crate::delivery_stats::DeliveryCounters>,
    /// This device's user (status updates bind it into their encryption).
    user: String,
    /// This device's end-to-end state (shared with the driver).
    e2ee: crate::e2ee::E2eeStore,
    /// The logged-in QUIC connection, for media transfer streams (`None` while disconnected
    /// or on TCP+TLS).
    links: tokio::sync::watch::Receiver<crate::transfer::Link>,
}

impl Client {
    /// Connects and logs in; fails if the first connection cannot be made or is refused.
    /// Later connection losses are handled in the background (see [`crate::Event`]).
    pub async fn connect(config: ClientConfig) -> Result<(Self, EventStream), ClientError> {
        validate_user_name(&config.identity.user)
            .map_err(|e| ClientError::InvalidName(e.to_string()))?;
        let conn = establish(
            &config.transport(),
            &config.identity,
            LoginMode::Login,
            &config.client_name,
        )
        .await?;
        let (cmd_tx, cmd_rx) = mpsc::unbounded_channel();
        let (ev_tx, ev_rx) = mpsc::unbounded_channel();
        let receipt_ids = ReceiptIds::new(&config.identity.signing_key);
        let (user, e2ee) = (config.identity.user.clone(), config.identity.e2ee.clone());
        let counters = std::sync::Arc::default();
        let mut driver = Driver::new(config, cmd_rx, ev_tx, std::sync::Arc::clone(&counters));
        let (links_tx, links) = tokio::sync::watch::channel(crate::transfer::Link::Down);
        driver.links = Some(links_tx);
        let span = tracing::info_span!(
            "client",
            user = %config_user(&conn),
            device = conn.welcome.device.0
        );
        tokio::spawn(driver.run(conn).instrument(span));
        let client = Self {
            cmd: cmd_tx,
            receipt_ids,
            counters,
            user,
            e2ee,
            links,
        };
        Ok((client, EventStream::new(ev_rx)))
    }

    /// Sends `content` to every device of `to` under a fresh random id; resolves once the
    /// server has stored it (`Sent`). The send is queued when this is *called* (not when the
    /// future is first polled), so messages go out in call order. Survives reconnects: the
    /// send is repeated with the same id until answered, so it waits as long as the server is
    /// unreachable (wrap it in a timeout if needed).
    pub fn send(
        &self,
        to: impl Into<String>,
        content: Content,
    ) -> impl std::future::Future<Output = Result<SendReceipt, ClientError>> + Send + 'static {
        self.send_with_id(ClientMsgId(rand::random()), to, content)
    }

    /// Like [`Client::send`] with a caller-chosen id. Sending an id again (e.g. after a crash)
    /// is answered `duplicate: true` and stored once.
    pub fn send_with_id(
        &self,
        id: ClientMsgId,
        to: impl Into<String>,
        content: Content,
    ) -> impl std::future::Future<Output = Result<SendReceipt, ClientError>> + Send + 'static {
        let queued = seal(&content).and_then(|envelope| {
            let (reply, rx) = oneshot::channel();
            self.command(Command::Send {
                id,
                to: to.into(),
                envelope,
                reply,
            })?;
            Ok(rx)
        });
        async move { queued?.await.map_err(|_| ClientError::ClientClosed)? }
    }

    /// Tells `to_user` that these of their messages were read (a `Content::Read` message).
    ///
    /// Its id is marked as this device's read receipt, so the `Delivered` receipt the edge
    /// generates for it is dropped instead of reaching the app.
    pub fn mark_read(
        &self,
        to_user: impl Into<String>,
        ids: Vec<ClientMsgId>,
    ) -> impl std::future::Future<Output = Result<SendReceipt, ClientError>> + Send + 'static {
        let id = self.receipt_ids.generate();
        self.send_with_id(id, to_user, Content::Read { ids })
    }

    /// A one-time code that links a new device to this account (`missive link new`), and how
    /// long it stays valid. Type it on the new device: [`link`].
    pub async fn create_link_code(&self) -> Result<(String, Duration), ClientError> {
        match self
            .device_request(|request_id| CreateLinkCode { request_id }.into())
            .await?
        {
            Frame::LinkCode(c) => Ok((c.code, Duration::from_millis(u64::from(c.expires_in_ms)))),
            other => Err(unexpected(&other)),
        }
    }

    /// Short-lived credentials and ICE URLs for the edge's STUN/TURN relay, for a call's
    /// relayed candidates. `ClientError::Rejected` with code `RelayUnavailable` when the edge
    /// runs no relay, `RateLimited` when asked too often (the edge allows 30 a minute).
    pub async fn turn_credentials(&self) -> Result<crate::TurnCredentials, ClientError> {
        match self
            .device_request(|request_id| {
                missive_proto::TurnCredentialsRequest { request_id }.into()
            })
            .await?
        {
            Frame::TurnCredentials(t) => Ok(t.into()),
            other => Err(unexpected(&other)),
        }
    }

    /// Rings every device of `to` with `offer` (sealed for each of them); returns the new
    /// call's id. What follows comes as [`crate::Event::Call`]: `Ringing`, then `Accepted`
    /// (with the callee's media description) or `Ended`.
    pub fn invite_call(
        &self,
        to: impl Into<String>,
        media: missive_proto::CallMedia,
        offer: crate::CallOffer,
    ) -> Result<missive_proto::CallId, ClientError> {
        self.invite(to.into(), media, None, offer)
    }

    /// Like [`Client::invite_call`], for one leg of the group call `conference` (an id the
    /// group call's starter picks at random; at most 4 users, a full mesh of calls). A callee
    /// that picks up hears `CallEvent::Conference` with the others already in, and calls
    /// each of them with the same `conference`; a user rung for a leg of a group call it is
    /// in already is rung only on the device it takes part with.
    pub fn invite_to_group_call(
        &self,
        to: impl Into<String>,
        media: missive_proto::CallMedia,
        offer: crate::CallOffer,
        conference: missive_proto::CallId,
    ) -> Result<missive_proto::CallId, ClientError> {
        self.invite(to.into(), media, Some(conference), offer)
    }

    fn invite(
        &self,
        to: String,
        media: missive_proto::CallMedia,
        conference: Option<missive_proto::CallId>,
        offer: crate::CallOffer,
    ) -> Result<missive_proto::CallId, ClientError> {
        let call_id = missive_proto::CallId(rand::random());
        self.command(Command::Invite {
            call_id,
            to,
            media,
            conference,
            offer,
        })?;
        Ok(call_id)
    }

    /// Picks up a ringing call on this device, with this device's media description (sealed
    /// for the caller's device). The callee's other devices stop ringing.
    pub fn accept_call(
        &self,
        call: missive_proto::CallId,
        description: Vec<u8>,
    ) -> Result<(), ClientError> {
        self.command(Command::CallDo(call, CallDo::Accept(description)))
    }

    /// Declines a ringing call (every device of this user stops ringing).
    pub fn decline_call(&self, call: missive_proto::CallId) -> Result<(), ClientError> {
        self.command(Command::CallDo(call, CallDo::Decline))
    }

    /// Hangs up (a call we placed and nobody answered yet is cancelled).
    pub fn hang_up(&self, call: missive_proto::CallId) -> Result<(), ClientError> {
        self.command(Command::CallDo(call, CallDo::Hangup))
    }

    /// Sends candidates found later (an encoded media description) to the other side of an
    /// answered call.
    pub fn send_call_candidates(
        &self,
        call: missive_proto::CallId,
        description: Vec<u8>,
    ) -> Result<(), ClientError> {
        self.command(Command::CallDo(call, CallDo::Candidates(description)))
    }

    /// This user's most recent calls (at most `limit`, and at most 200), newest first.
    pub async fn call_history(
        &self,
        limit: u16,
    ) -> Result<Vec<missive_proto::CallRecord>, ClientError> {
        match self
            .device_request(move |request_id| {
                missive_proto::CallHistoryRequest { request_id, limit }.into()
            })
            .await?
        {
            Frame::CallHistory(h) => Ok(h.records),
            other => Err(unexpected(&other)),
        }
    }

    /// This account's devices, ascending.
    pub async fn devices(&self) -> Result<Vec<DeviceId>, ClientError> {
        match self
            .device_request(|request_id| ListDevices { request_id }.into())
            .await?
        {
            Frame::DeviceList(l) => Ok(l.devices),
            other => Err(unexpected(&other)),
        }
    }

    /// Disappearing messages for the chat with `user`: from now on messages both ways
    /// disappear `secs` after they are sent (0: off). The server drops the copies still
    /// undelivered at that time; the clients hide the rest (`Event::Message::expires_in_secs`).
    /// `user`'s devices and this user's other devices hear it as `Event::TimerChanged`.
    pub fn set_disappearing(&self, user: impl Into<String>, secs: u32) -> Result<(), ClientError> {
        // Tagged like a read receipt: the `Delivered` it earns is not the app's.
        let id = self.receipt_ids.generate();
        self.command(Command::Timer(id, user.into(), secs))
    }

    /// Delete for everyone: the server drops the copies of our message `client_msg_id` to
    /// `to` that no device has taken yet, and a tombstone (end-to-end encrypted) tells the
    /// devices that have it to hide it (`Event::Deleted`). Returns how many undelivered
    /// copies the server dropped.
    pub async fn delete_for_everyone(
        &self,
        to: impl Into<String>,
        client_msg_id: ClientMsgId,
    ) -> Result<u32, ClientError> {
        let to = to.into();
        let user = to.clone();
        let removed = match self
            .device_request(move |request_id| {
                Retract {
                    request_id,
                    client_msg_id,
                    to: user,
                }
                .into()
            })
            .await?
        {
            Frame::Retracted(r) => r.removed,
            other => return Err(unexpected(&other)),
        };
        self.send(
            to,
            Content::Delete {
                ids: vec![client_msg_id],
            },
        )
        .await?;
        Ok(removed)
    }

    /// Removes a device of this account (this one too): the server deletes its mailbox and
    /// keys and closes its session; it receives nothing more.
    pub async fn remove_device(&self, device: DeviceId) -> Result<(), ClientError> {
        match self
            .device_request(move |request_id| RemoveDevice { request_id, device }.into())
            .await?
        {
            Frame::DeviceRemoved(_) => Ok(()),
            other => Err(unexpected(&other)),
        }
    }

    /// Creates a group named `name` (1 to 128 bytes, no control characters); this user is
    /// its first member and admin.
    pub async fn create_group(&self, name: impl Into<String>) -> Result<GroupInfo, ClientError> {
        let name = name.into();
        validate_group_name(&name).map_err(|e| ClientError::InvalidInput(e.to_string()))?;
        self.group_info_request(GroupOp::Create { name }).await
    }

    /// Adds users to a group (admins only). Returns the group after the change; the next
    /// group message from any member uses a new key that the new members get.
    pub async fn add_members(
        &self,
        group: GroupId,
        users: Vec<String>,
    ) -> Result<GroupInfo, ClientError> {
        self.group_info_request(GroupOp::Add { group, users }).await
    }

    /// Removes members from a group (admins only). They get no key made after this, so they
    /// cannot read what is sent from now on.
    pub async fn remove_members(
        &self,
        group: GroupId,
        users: Vec<String>,
    ) -> Result<GroupInfo, ClientError> {
        self.group_info_request(GroupOp::Remove { group, users })
            .await
    }

    /// Makes a member an admin (admins only).
    pub async fn promote(
        &self,
        group: GroupId,
        user: impl Into<String>,
    ) -> Result<GroupInfo, ClientError> {
        let user = user.into();
        self.group_info_request(GroupOp::Promote { group, user })
            .await
    }

    /// Leaves a group. The last admin leaving makes the longest-standing member admin.
    pub async fn leave_group(&self, group: GroupId) -> Result<(), ClientError> {
        match self.group_request(GroupOp::Leave { group }).await? {
            GroupAnswerKind::Left { .. } => Ok(()),
            other => Err(unexpected_group(&other)),
        }
    }

    /// A group's name, epoch and members (members only).
    pub async fn group_info(&self, group: GroupId) -> Result<GroupInfo, ClientError> {
        self.group_info_request(GroupOp::Info { group }).await
    }

    /// The groups this user is a member of.
    pub async fn groups(&self) -> Result<Vec<GroupSummary>, ClientError> {
        match self.group_request(GroupOp::List).await? {
            GroupAnswerKind::List(list) => Ok(list),
            other => Err(unexpected_group(&other)),
        }
    }

    /// An invite token that lets anyone holding it join the group (admins only); it stops
    /// working after `expires_in_secs` (0: only when revoked).
    pub async fn create_group_invite(
        &self,
        group: GroupId,
        expires_in_secs: u32,
    ) -> Result<GroupInvite, ClientError> {
        let op = GroupOp::CreateInvite {
            group,
            expires_in_secs,
        };
        match self.group_request(op).await? {
            GroupAnswerKind::Invite {
                group,
                token,
                expires_at_ms,
            } => Ok(GroupInvite {
                group,
                token,
                expires_at_ms,
            }),
            other => Err(unexpected_group(&other)),
        }
    }

    /// Joins a group with an invite token. Messages sent before joining stay unreadable.
    pub async fn join_group(&self, token: impl Into<String>) -> Result<GroupInfo, ClientError> {
        let token = token.into();
        self.group_info_request(GroupOp::Join { token }).await
    }

    /// Revokes an invite token (admins only).
    pub async fn revoke_group_invite(
        &self,
        group: GroupId,
        token: impl Into<String>,
    ) -> Result<(), ClientError> {
        let token = token.into();
        match self.group_request(GroupOp::Revoke { group, token }).await? {
            GroupAnswerKind::Revoked => Ok(()),
            other => Err(unexpected_group(&other)),
        }
    }

    /// Sends `text` to every member of `group` under a fresh random id (in the receipt);
    /// resolves once the server has stored it. Queued at call time, like [`Client::send`].
    /// When the membership changed since this device last looked, the SDK learns the new
    /// members, makes a new key for them and sends again under the same id. A refusal
    /// (`NotGroupMember`, `UnknownGroup`) is [`ClientError::GroupRefused`].
    pub fn send_group(
        &self,
        group: GroupId,
        text: impl Into<String>,
    ) -> impl std::future::Future<Output = Result<SendReceipt, ClientError>> + Send + 'static {
        self.send_group_content(group, Content::Text(text.into()))
    }

    /// Sends `content` (text or media) to every member of `group`, as [`Client::send_group`].
    pub fn send_group_content(
        &self,
        group: GroupId,
        content: Content,
    ) -> impl std::future::Future<Output = Result<SendReceipt, ClientError>> + Send + 'static {
        let id = ClientMsgId(rand::random());
        let queued = seal(&content).and_then(|envelope| {
            let (reply, rx) = oneshot::channel();
            self.command(Command::GroupSend {
                id,
                group,
                envelope,
                reply,
            })?;
            Ok(rx)
        });
        async move { queued?.await.map_err(|_| ClientError::ClientClosed)? }
    }

    /// Tells the server that `from`'s group message `id` was read here; the sender's devices
    /// get the group's counts (`Event::GroupReceipt`). Sent once connected; not answered
    /// ([`Client::close`] waits until the server applied it).
    pub fn mark_group_read(
        &self,
        group: GroupId,
        from: impl Into<String>,
        id: ClientMsgId,
    ) -> Result<(), ClientError> {
        self.command(Command::GroupRead(GroupRead {
            group,
            from: from.into(),
            client_msg_id: id,
        }))
    }

    /// Delivery and read counts of this user's group messages `ids` (those the server still
    /// knows).
    pub async fn group_receipts(
        &self,
        group: GroupId,
        ids: Vec<ClientMsgId>,
    ) -> Result<Vec<GroupReceipt>, ClientError> {
        match self.group_request(GroupOp::Receipts { group, ids }).await? {
            GroupAnswerKind::Receipts(r) => Ok(r),
            other => Err(unexpected_group(&other)),
        }
    }

    /// Posts a status update with `text` to `audience` (user names; see
    /// [`Client::contacts`] for the usual audience). The post is encrypted once under a fresh
    /// key, the key goes to each user of the audience (and this user's other devices) over
    /// Olm first, then the server stores the post once for all of them and drops it after its
    /// lifetime (24 h by default). Resolves once the post is stored.
    pub async fn post_status(
        &self,
        text: impl Into<String>,
        audience: Vec<String>,
    ) -> Result<SendReceipt, ClientError> {
        let id = ClientMsgId(rand::random());
        let plain = seal(&Content::Text(text.into()))?;
        let (key, body) = crate::e2ee::status_key::seal_status(&self.user, &id, &plain);
        let key_content = seal(&Content::PostKey(Box::new(crate::content::PostKey {
            post: id,
            key,
        })))?;
        let mut keys = Vec::with_capacity(audience.len());
        for user in &audience {
            let (reply, rx) = oneshot::channel();
            self.command(Command::Send {
                id: ClientMsgId(rand::random()),
                to: user.clone(),
                envelope: key_content.clone(),
                reply,
            })?;
            keys.push(rx);
        }
        // The post goes only once every key is stored ahead of it in each mailbox.
        for rx in keys {
            rx.await.map_err(|_| ClientError::ClientClosed)??;
        }
        let (reply, rx) = oneshot::channel();
        self.command(Command::StoryPost {
            id,
            audience,
            body,
            reply,
        })?;
        rx.await.map_err(|_| ClientError::ClientClosed)?
    }

    /// Tells `from` that their status update `id` was viewed here.
    pub fn view_status(&self, from: impl Into<String>, id: ClientMsgId) -> Result<(), ClientError> {
        self.command(Command::StoryViewed(missive_proto::StoryViewed {
            from: from.into(),
            client_msg_id: id,
        }))
    }

    /// This user's status updates that have not expired, with who viewed each.
    pub async fn my_statuses(&self) -> Result<Vec<missive_proto::StorySummary>, ClientError> {
        match self
            .device_request(|request_id| missive_proto::ListStories { request_id }.into())
            .await?
        {
            Frame::StoryList(l) => Ok(l.stories),
            other => Err(unexpected(&other)),
        }
    }

    /// Sends `text` to each of `users` as its own 1:1 message (a broadcast list: each
    /// recipient sees an ordinary message from this user). One result per user, in order.
    pub async fn broadcast(
        &self,
        users: &[String],
        text: &str,
    ) -> Vec<Result<SendReceipt, ClientError>> {
        let pending: Vec<_> = users
            .iter()
            .map(|u| self.send(u.clone(), Content::Text(text.to_owned())))
            .collect();
        let mut out = Vec::with_capacity(pending.len());
        for p in pending {
            out.push(p.await);
        }
        out
    }

    /// The users this device has end-to-end sessions with (whose identities it pinned):
    /// the usual audience of a status update.
    pub fn contacts(&self) -> Vec<String> {
        self.e2ee.known_users()
    }

    async fn group_info_request(&self, op: GroupOp) -> Result<GroupInfo, ClientError> {
        match self.group_request(op).await? {
            GroupAnswerKind::Info(info) => Ok(info),
            other => Err(unexpected_group(&other)),
        }
    }

    /// A group request and its answer; a refusal is [`ClientError::GroupRefused`].
    async fn group_request(&self, op: GroupOp) -> Result<GroupAnswerKind, ClientError> {
        let answer = self
            .device_request(move |request_id| GroupRequest { request_id, op }.into())
            .await;
        match answer {
            Ok(Frame::GroupAnswer(a)) => Ok(a.answer),
            Ok(other) => Err(unexpected(&other)),
            Err(ClientError::Rejected { code, message }) => {
                Err(ClientError::GroupRefused { code, message })
            }
            Err(e) => Err(e),
        }
    }

    async fn device_request(
        &self,
        build: impl FnOnce(u32) -> Frame + Send + 'static,
    ) -> Result<Frame, ClientError> {
        let (reply, rx) = oneshot::channel();
        self.command(Command::DeviceRequest {
            build: Box::new(build),
            reply,
        })?;
        rx.await.map_err(|_| ClientError::ClientClosed)?
    }

    /// Messages the server delivered to this client so far, counted before the duplicate
    /// filter: how many, how many again after a reconnect (expected), and how many the server
    /// had stored twice (never expected; see [`crate::delivery_stats`]).
    pub fn delivery_stats(&self) -> crate::DeliveryStats {
        self.counters.snapshot()
    }

    /// Watches `user`'s presence: an event now and on every change, also after reconnects.
    /// The server shows presence only to a user's contacts (those the user has written to);
    /// to anyone else it is `Hidden`. Call again to ask again (e.g. after they replied).
    pub fn subscribe_presence(&self, user: impl Into<String>) -> Result<(), ClientError> {
        self.command(Command::Subscribe(user.into()))
    }

    /// Who may see this user's presence (kept across reconnects).
    pub fn set_visibility(&self, visibility: Visibility) -> Result<(), ClientError> {
        self.command(Command::Visibility(visibility))
    }

    /// Typing indicator towards `to`; dropped while disconnected.
    pub fn typing(&self, to: impl Into<String>, typing: bool) -> Result<(), ClientError> {
        self.command(Command::Typing(to.into(), typing))
    }

    /// Acknowledges every delivery up to `point` in its mailbox or group log (only needed
    /// without `auto_ack`; a `ServerSeq` names a mailbox position). Ack only what the app
    /// has durably processed: the server deletes it (moves this device's group cursor).
    pub fn ack(&self, point: impl Into<crate::event::AckPoint>) -> Result<(), ClientError> {
        self.command(Command::Ack(point.into()))
    }

    /// The QUIC path of the logged-in connection (packet size, round trip, losses), for an
    /// app's connection-quality view; `None` while not connected or on the TCP+TLS fallback.
    pub fn quic_path(&self) -> Option<crate::transport::QuicPath> {
        match &*self.links.borrow() {
            crate::transfer::Link::Quic(conn) => Some(crate::transport::QuicPath::of(conn)),
            _ => None,
        }
    }

    /// Uploads a ciphertext file (see [`crate::media`] to make one) on `parallel` QUIC
    /// streams beside the control stream, with `progress` called as the edge acknowledges
    /// bytes. After a lost connection it waits for the client to reconnect and sends only
    /// what the edge does not hold; a connection that migrates to a new address goes on.
    /// Refusals (too large, over quota, hash mismatch) are [`ClientError::MediaRefused`].
    pub async fn upload_blob(
        &self,
        src: &crate::transfer::upload::UploadSource,
        parallel: usize,
        progress: impl Fn(crate::transfer::Progress) + Send + Sync + 'static,
    ) -> Result<crate::transfer::upload::UploadReport, ClientError> {
        let mut links = crate::transfer::Links(self.links.clone());
        crate::transfer::upload::upload(&mut links, src, parallel, std::sync::Arc::new(progress))
            .await
    }

    /// Downloads the ciphertext of `blob` (`size` bytes) into `out`, resuming from what
    /// `out` already holds. The bytes are not verified here: decrypting them is.
    pub async fn download_blob(
        &self,
        blob: missive_proto::BlobId,
        size: u64,
        out: &std::path::Path,
        progress: impl Fn(crate::transfer::Progress) + Send + Sync + 'static,
    ) -> Result<(), ClientError> {
        let mut links = crate::transfer::Links(self.links.clone());
        crate::transfer::download::download(
            &mut links,
            blob,
            size,
            out,
            std::sync::Arc::new(progress),
        )
        .await
    }

    /// Uploads the ciphertext of `media` (made by [`crate::media::prepare_file`]) from
    /// `ciphertext`; then send `Content::Media(media)` to the recipients. `downloads` is the
    /// number of recipient devices after whose downloads the edge may delete it (0: it
    /// stays until the edge's media lifetime ends).
    pub async fn upload_media(
        &self,
        media: &crate::content::MediaMessage,
        ciphertext: &std::path::Path,
        downloads: u32,
        progress: impl Fn(crate::transfer::Progress) + Send + Sync + 'static,
    ) -> Result<crate::transfer::upload::UploadReport, ClientError> {
        let src = crate::transfer::upload::UploadSource {
            path: ciphertext.to_owned(),
            blob: missive_proto::BlobId(media.blob),
            size: media.size,
            downloads,
        };
        self.upload_blob(&src, UPLOAD_STREAMS, progress).await
    }

    /// Downloads, verifies and decrypts the file of a media message into `out`. The
    /// ciphertext is kept beside `out` (`<out>.download`) until it verified, so a broken
    /// download resumes where it stopped; a tampered, truncated or wrongly named blob is
    /// [`ClientError::MediaInvalid`] and leaves no file at `out`.
    pub async fn fetch_media(
        &self,
        media: &crate::content::MediaMessage,
        out: &std::path::Path,
        progress: impl Fn(crate::transfer::Progress) + Send + Sync + 'static,
    ) -> Result<u64, ClientError> {
        let mut part = out.as_os_str().to_owned();
        part.push(".download");
        let part = std::path::PathBuf::from(part);
        self.download_blob(
            missive_proto::BlobId(media.blob),
            media.size,
            &part,
            progress,
        )
        .await?;
        let (media, out2, part2) = (media.clone(), out.to_owned(), part.clone());
        let opened =
            tokio::task::spawn_blocking(move || crate::media::open_file(&media, &part2, &out2))
                .await
                .map_err(|e| ClientError::InvalidInput(format!("decrypting: {e}")))?;
        // Verified or not, these bytes are done with: a bad blob is fetched anew next time.
        let _ = std::fs::remove_file(&part);
        opened
    }

    /// A signed HTTPS URL of `blob` (for a plain HTTP client or a CDN), valid for the edge's
    /// `media.url_ttl_secs`.
    pub async fn media_url(
        &self,
        blob: missive_proto::BlobId,
    ) -> Result<missive_proto::MediaUrl, ClientError> {
        let mut links = crate::transfer::Links(self.links.clone());
        let conn = links.connection(None).await?;
        crate::transfer::sign_url(&conn, blob).await
    }

    /// Drops the connection and connects again at once, as an app does when the OS reports
    /// a network change that QUIC cannot migrate across. Sends, media transfers and
    /// deliveries resume on the new connection.
    pub fn reconnect(&self) -> Result<(), ClientError> {
        self.cmd
            .send(Command::Reconnect)
            .map_err(|_| ClientError::ClientClosed)
    }

    /// Closes orderly: sends `Bye` and waits (at most 5 s) for the server's `Bye`, so acks and
    /// sends made before are applied by the server. Sends still unanswered fail with
    /// [`ClientError::ClientClosed`]. Closing a closed client is a no-op.
    pub async fn close(&self) -> Result<(), ClientError> {
        let (reply, rx) = oneshot::channel();
        if self.cmd.send(Command::Close(reply)).is_err() {
            return Ok(());
        }
        // The driver bounds the Bye exchange itself; this outer bound keeps the promise even
        // if the driver is stuck elsewhere (a transport that does not finish shutting down).
        match tokio::time::timeout(CLOSE_LIMIT, rx).await {
            Ok(r) => r.unwrap_or(Ok(())),
            Err(_) => Err(ClientError::Timeout("closing the connection")),
        }
    }

    fn command(&self, cmd: Command) -> Result<(), ClientError> {
        self.cmd.send(cmd).map_err(|_| ClientError::ClientClosed)
    }
}

fn config_user(conn: &crate::connection::LiveConnection) -> &str {
    &conn.welcome.user
}

/// Joins `config.identity.user`'s account as a new device with a link code from one of its
/// devices (see [`Client::create_link_code`]). The server picks the device id; the returned
/// identity carries it (and `config.identity`'s key and E2EE state), with the device's keys
/// published. Save it: it is the new device.
pub async fn link(
    config: impl Borrow<ClientConfig>,
    code: impl Into<String>,
) -> Result<Identity, ClientError> {
    new_device(config.borrow(), LoginMode::Link { code: code.into() }).await
}

/// Creates the account `config.identity.user` bound to its device key, on one connection
/// that registers and then says `Bye`. Takes the configuration by value or by reference.
pub async fn register(
    config: impl Borrow<ClientConfig>,
    invite: Option<String>,
) -> Result<(), ClientError> {
    new_device(config.borrow(), LoginMode::Register { invite }).await?;
    Ok(())
}

/// The first connection of a new device (registered or linked): log in as `mode` says,
/// publish the device's keys, say `Bye`. Returns the identity under the id the server gave.
async fn new_device(config: &ClientConfig, mode: LoginMode) -> Result<Identity, ClientError> {
    validate_user_name(&config.identity.user)
        .map_err(|e| ClientError::InvalidName(e.to_string()))?;
    let mut conn = establish(
        &config.transport(),
        &config.identity,
        mode,
        &config.client_name,
    )
    .await?;
    let mut identity = config.identity.clone();
    identity.device = conn.welcome.device;
    // Others can encrypt to the device from now on, not only after its next connection.
    // The device exists whatever happens here: keys that did not get through are published
    // at its next connection (the server asks with `KeysLow`), and a failed goodbye undoes
    // nothing.
    if let Err(e) = conn.publish_keys(&identity).await {
        tracing::warn!(error = %e, "device created, but publishing its keys failed");
    }
    if let Err(e) = conn.bye().await {
        tracing::warn!(error = %e, "device created, but the closing Bye exchange failed");
    }
    Ok(identity)
}

fn unexpected_group(answer: &GroupAnswerKind) -> ClientError {
    let name = match answer {
        GroupAnswerKind::Info(_) => "Info",
        GroupAnswerKind::Left { .. } => "Left",
        GroupAnswerKind::List(_) => "List",
        GroupAnswerKind::Invite { .. } => "Invite",
        GroupAnswerKind::Revoked => "Revoked",
        GroupAnswerKind::Receipts(_) => "Receipts",
    };
    ClientError::MalformedFrame(format!("unexpected group answer {name}"))
}

fn unexpected(frame: &Frame) -> ClientError {
    ClientError::MalformedFrame(format!("unexpected answer {}", frame.name()))
}
