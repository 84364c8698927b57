//! The thin async driver of one connection: moves bytes, timers, storage results and
//! registry events in and out of the [`Session`] state machine. Transport-agnostic: QUIC
//! streams and TLS streams both arrive here as an `AsyncRead` and an `AsyncWrite`.

use crate::group_streams::LogItem;
use crate::key_requests::KeyStoreRefusal;
use crate::registry::{OnlineChange, SessionEvent, SessionHandle};
use crate::session::{Action, DeviceLookup, Session, StoreRefusal};
use crate::session_queue;
use crate::shared::{now_ms, Shared};
use futures_util::stream::{FuturesUnordered, StreamExt};
use missive_proto::{
    encode, ClientMsgId, ErrorCode, Frame, FrameDecoder, GroupId, PresenceState, ServerSeq,
    TypingNotice, Visibility, EXPORTER_LEN,
};
use missive_storage::{
    AppendOutcome, ClaimFrom, ClaimedBundle, GroupSendOutcome, KeyStatus, LinkOutcome, MailboxId,
    RegisterOutcome, StorageError, StoredItem, StoryOutcome, UploadOutcome,
};
use rand::RngCore;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::sync::watch;
use tracing::Instrument;

/// How long the writer may take to flush the last frames when a connection closes.
const CLOSE_FLUSH: Duration = Duration::from_secs(5);
/// Above this, an emptied output buffer gives its memory back.
const OUTBUF_KEEP: usize = 64 * 1024;
/// Room in the output buffer beyond the delivery window and two frames: presence, typing,
/// `Sent`/`Rejected` answers. A peer that lets the buffer pass the sum is not reading.
const OUTBUF_SLACK: usize = 256 * 1024;

/// The write half of a connection, whatever the transport.
type Outbound = Box<dyn AsyncWrite + Send + Unpin>;

/// What one step of the writer did.
enum WriteProgress {
    /// This many bytes of the output buffer were taken by the transport.
    Wrote(usize),
    /// Everything taken was flushed to the transport.
    Flushed,
    /// The transport failed or was closed.
    Failed,
}

/// One cancel-safe step of writing: takes what it can of `out`, or flushes when `out` is
/// empty. `poll_write` either takes bytes or not at all, and `poll_flush` can be resumed, so
/// dropping this future in a `select!` loses nothing.
async fn write_step(writer: &mut Outbound, out: &[u8]) -> WriteProgress {
    if out.is_empty() {
        match writer.flush().await {
            Ok(()) => WriteProgress::Flushed,
            Err(_) => WriteProgress::Failed,
        }
    } else {
        match writer.write(out).await {
            Ok(0) | Err(_) => WriteProgress::Failed,
            Ok(n) => WriteProgress::Wrote(n),
        }
    }
}

/// Events a session handles per wake-up at most, before its frames are written.
const EVENTS_PER_WAKE: usize = 64;

/// Results of storage work started for the session.
///
/// Their futures are polled by the connection's own task (no task spawned per message, no
/// channel per connection): the storage call is enqueued when the action is executed, the
/// future only waits for the commit.
enum Completion {
    Registered(Option<RegisterOutcome>),
    KeysUploaded(u32, Result<UploadOutcome, KeyStoreRefusal>),
    KeysClaimed(u32, String, Result<Vec<ClaimedBundle>, KeyStoreRefusal>),
    KeyStatus(Option<KeyStatus>),
    Linked(Option<LinkOutcome>),
    /// A device-management answer for the client.
    Answer(Frame),
    Stored(ClientMsgId, Result<AppendOutcome, StoreRefusal>),
    StoredGroup(ClientMsgId, Result<GroupSendOutcome, StoreRefusal>),
    StoredStory(ClientMsgId, Result<StoryOutcome, StoreRefusal>),
    Acked,
    /// Nothing for the session to hear (a group read receipt was counted).
    Done,
    Read(usize, Result<Vec<(ServerSeq, StoredItem)>, ()>),
    GroupPositions(Result<Vec<missive_storage::LogPosition>, ()>),
    GroupRead(GroupId, usize, Result<Vec<(ServerSeq, StoredItem)>, ()>),
    GroupAcked(GroupId),
    VisibilityStored(Visibility, bool),
}

/// The refusal of request `request_id` when storage failed it.
fn storage_failed(request_id: u32) -> Frame {
    missive_proto::RequestRefused::new(request_id, ErrorCode::Internal, "storage failed; retry")
        .into()
}

fn store_refusal(e: StorageError) -> StoreRefusal {
    match e {
        StorageError::Unavailable(why) => {
            tracing::debug!(why, "send refused: storage unavailable");
            StoreRefusal::Unavailable
        }
        e => {
            tracing::error!(error = %e, "storing a send failed");
            StoreRefusal::Failed
        }
    }
}

fn key_store_refusal(e: StorageError) -> KeyStoreRefusal {
    match e {
        StorageError::Unavailable(_) => KeyStoreRefusal::Unavailable,
        e => {
            tracing::error!(error = %e, "key directory request failed");
            KeyStoreRefusal::Failed
        }
    }
}

/// Which transport a connection uses (for logs and metrics).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Transport {
    /// QUIC stream.
    Quic,
    /// TCP + TLS 1.3.
    Tcp,
}

impl Transport {
    /// Lower-case name.
    pub fn name(self) -> &'static str {
        match self {
            Self::Quic => "quic",
            Self::Tcp => "tcp",
        }
    }
}

/// Where a connection's inbound bytes come from.
pub enum Inbound {
    /// A QUIC stream: quinn lends out the bytes it already holds, so an idle connection keeps
    /// no read buffer of ours.
    Quic(quinn::RecvStream),
    /// A byte stream (TLS over TCP), read through a small buffer.
    Stream(Box<dyn AsyncRead + Send + Unpin>),
}

impl Inbound {
    /// The transport this input arrives on.
    fn transport(&self) -> Transport {
        match self {
            Self::Quic(_) => Transport::Quic,
            Self::Stream(_) => Transport::Tcp,
        }
    }
}

/// Reads the next bytes into `decoder`; false when the peer closed or the transport failed.
/// Cancel-safe: nothing is lost when the future is dropped before it completes.
async fn read_into(inbound: &mut Inbound, buf: &mut Vec<u8>, decoder: &mut FrameDecoder) -> bool {
    match inbound {
        Inbound::Quic(recv) => match recv.read_chunk(READ_CHUNK, true).await {
            Ok(Some(chunk)) => {
                decoder.feed(&chunk.bytes);
                true
            }
            Ok(None) | Err(_) => false,
        },
        Inbound::Stream(reader) => {
            if buf.is_empty() {
                buf.resize(READ_CHUNK, 0);
            }
            match reader.read(buf).await {
                Ok(0) | Err(_) => false,
                Ok(n) => {
                    decoder.feed(&buf[..n]);
                    true
                }
            }
        }
    }
}

/// The most bytes taken from the transport per read.
const READ_CHUNK: usize = 4 * 1024;

/// A storage result on its way back to the session.
type PendingCompletion = std::pin::Pin<Box<dyn std::future::Future<Output = Completion> + Send>>;

/// Serves one connection until it closes. Returns after the last frame was handed to the
/// transport (the writer has flushed and shut down its half).
pub async fn serve(
    shared: Arc<Shared>,
    peer: SocketAddr,
    inbound: Inbound,
    writer: Outbound,
    exporter: [u8; EXPORTER_LEN],
    shutdown: watch::Receiver<bool>,
    on_login: Option<tokio::sync::oneshot::Sender<crate::media::streams::Owner>>,
) {
    let transport = inbound.transport();
    let conn_id = shared.registry.next_conn_id();
    shared.metrics.connection_opened(transport);
    let metrics_shared = shared.clone();
    let span = tracing::info_span!(
        "conn",
        id = conn_id,
        transport = transport.name(),
        user = tracing::field::Empty,
        device = tracing::field::Empty
    );
    let mut driver = Driver::new(shared, conn_id, peer, exporter, writer);
    driver.on_login = on_login;
    let handover = driver.run(inbound, shutdown).instrument(span.clone()).await;
    if let (Some(h), Some(media)) = (handover, metrics_shared.media.clone()) {
        crate::media::streams::serve_transfer(
            crate::media::streams::TransferReader::Stream(h.reader),
            crate::media::streams::TransferWriter::Stream(h.writer),
            h.decoder,
            media,
            Arc::new(h.owner),
        )
        .instrument(span)
        .await;
    }
    metrics_shared.metrics.connection_closed(transport);
}

/// A connection handed from its session to a media transfer.
struct Handover {
    owner: crate::media::streams::Owner,
    reader: Box<dyn AsyncRead + Send + Unpin>,
    writer: Outbound,
    /// With what was read past the `TransferLogin` already in it.
    decoder: FrameDecoder,
}

struct Driver {
    shared: Arc<Shared>,
    session: Session,
    handle: SessionHandle,
    events: session_queue::Receiver<SessionEvent>,
    /// Encoded frames not yet taken by the transport: everything produced while the
    /// transport was busy goes out in one write (one TLS record, fewer QUIC packets).
    outbuf: Vec<u8>,
    /// Bytes were written since the last flush.
    unflushed: bool,
    /// The transport refused a write; nothing more can be sent.
    write_failed: bool,
    writer: Outbound,
    pending: FuturesUnordered<PendingCompletion>,
    mailbox: Option<MailboxId>,
    peer: SocketAddr,
    /// Output above this means the peer is not reading: the connection is closed.
    max_outbuf: usize,
    /// The output buffer passed `max_outbuf`.
    slow_reader: bool,
    /// Told who logged in (QUIC: the connection's transfer streams wait for it).
    on_login: Option<tokio::sync::oneshot::Sender<crate::media::streams::Owner>>,
    /// Set by a `TransferLogin`: the connection leaves the session to carry one transfer.
    transfer: Option<crate::media::streams::Owner>,
}

impl Driver {
    fn new(
        shared: Arc<Shared>,
        conn_id: u64,
        peer: SocketAddr,
        exporter: [u8; EXPORTER_LEN],
        writer: Outbound,
    ) -> Self {
        let mut challenge = [0u8; 32];
        rand::thread_rng().fill_bytes(&mut challenge);
        let config = shared.session_config();
        let max_outbuf =
            config.delivery_window_bytes + 2 * config.max_frame as usize + OUTBUF_SLACK;
        let session = Session::new(Instant::now(), config, challenge, exporter);
        let (handle, events) = SessionHandle::new(conn_id);
        Self {
            shared,
            session,
            handle,
            events,
            outbuf: Vec::new(),
            unflushed: false,
            write_failed: false,
            writer,
            pending: FuturesUnordered::new(),
            mailbox: None,
            peer,
            max_outbuf,
            slow_reader: false,
            on_login: None,
            transfer: None,
        }
    }

    /// Serves the session until the connection closes; `Some` when it became a media
    /// transfer instead (everything the session sent is flushed by then).
    async fn run(
        mut self,
        mut inbound: Inbound,
        mut shutdown: watch::Receiver<bool>,
    ) -> Option<Handover> {
        let mut decoder = FrameDecoder::new(self.session.max_frame() as usize);
        // Only byte streams need one; allocated on their first read.
        let mut buf = Vec::new();
        let mut draining = *shutdown.borrow();
        if draining {
            self.session.handle_goaway(1000);
        }
        loop {
            if self.drain_actions() {
                break;
            }
            if self.slow_reader {
                tracing::info!(
                    buffered = self.outbuf.len(),
                    "peer does not read its frames; closing"
                );
                self.shared.metrics.connection_refused("slow_reader");
                // What is buffered cannot reach a peer that does not read.
                self.write_failed = true;
                self.outbuf = Vec::new();
                break;
            }
            let deadline = self
                .session
                .poll_timeout()
                .unwrap_or_else(|| Instant::now() + Duration::from_secs(3600));
            tokio::select! {
                more = read_into(&mut inbound, &mut buf, &mut decoder) => match more {
                    false => break, // peer closed or transport failed
                    true => {
                        let now = Instant::now();
                        loop {
                            match decoder.next_frame() {
                                Ok(Some(f)) => {
                                    self.shared.metrics.frame_in(&f);
                                    self.session.handle_frame(now, f)
                                }
                                Ok(None) => break,
                                Err(e) => {
                                    tracing::info!(error = %e, "malformed input, closing");
                                    self.session.handle_decode_error(&e);
                                    break;
                                }
                            }
                            if self.session.is_closed() {
                                break;
                            }
                        }
                    }
                },
                ev = self.events.recv() => {
                    let now = Instant::now();
                    self.on_event(now, ev);
                    // What queued up meanwhile goes in the same write: a burst of deliveries
                    // then leaves in a few packets instead of one wake-up and write each.
                    for _ in 1..EVENTS_PER_WAKE {
                        match self.events.try_recv() {
                            Some(ev) => self.on_event(now, ev),
                            None => break,
                        }
                    }
                }
                Some(c) = self.pending.next(), if !self.pending.is_empty() => self.complete(c),
                step = write_step(&mut self.writer, &self.outbuf),
                    if !self.write_failed && (self.unflushed || !self.outbuf.is_empty()) =>
                {
                    self.wrote(step)
                }
                _ = tokio::time::sleep_until(deadline.into()) => {
                    self.session.handle_timeout(Instant::now())
                }
                r = shutdown.changed(), if !draining => {
                    draining = true;
                    if r.is_ok() {
                        self.session.handle_goaway(1000);
                    }
                }
            }
            if self.events.take_overflow() {
                self.session.handle_overflow();
            }
        }
        if let Some(owner) = self.transfer.take() {
            let out = std::mem::take(&mut self.outbuf);
            let writer = &mut self.writer;
            let flushed = tokio::time::timeout(CLOSE_FLUSH, async move {
                writer.write_all(&out).await.is_ok() && writer.flush().await.is_ok()
            })
            .await;
            if flushed == Ok(true) && !self.write_failed {
                decoder.set_max_frame(crate::media::transfer::MAX_TRANSFER_FRAME);
                let reader: Box<dyn AsyncRead + Send + Unpin> = match inbound {
                    Inbound::Quic(r) => Box::new(r),
                    Inbound::Stream(r) => r,
                };
                return Some(Handover {
                    owner,
                    reader,
                    writer: self.writer,
                    decoder,
                });
            }
            return None;
        }
        self.finish().await;
        None
    }

    /// Executes queued actions; true when the session asked to close.
    fn drain_actions(&mut self) -> bool {
        while let Some(action) = self.session.poll_action() {
            match action {
                Action::Send(frame) => self.write(&frame),
                Action::SendGroupDelivery(live) => self.write_encoded(live.kind, &live.wire),
                Action::Close => return true,
                Action::BecomeTransfer { user, device } => {
                    self.transfer = Some(crate::media::streams::Owner {
                        user,
                        device: device.0,
                    });
                    return true;
                }
                Action::LookupDevice { user, device } => {
                    let store = &self.shared.store;
                    let lookup = match (store.device_key(&user, device), store.user(&user)) {
                        (Ok(Some(key)), Ok(Some(rec))) => DeviceLookup::Found {
                            key,
                            disabled: rec.disabled,
                        },
                        (Ok(_), Ok(_)) => DeviceLookup::Unknown,
                        _ => DeviceLookup::Failed,
                    };
                    self.session.handle_device_key(now_ms(), lookup);
                }
                Action::Register {
                    user,
                    device,
                    key,
                    invite,
                    require_invite,
                } => {
                    // Counted before any storage work: one address cannot mint accounts.
                    let addresses = &self.shared.addresses;
                    if !addresses.allow_registration(self.peer.ip(), Instant::now()) {
                        self.session.handle_register_refused(
                            missive_proto::ErrorCode::RateLimited,
                            "too many registrations from this address; try later",
                        );
                        continue;
                    }
                    let fut = self.shared.store.register(
                        &user,
                        device,
                        key,
                        invite,
                        require_invite,
                        now_ms(),
                    );
                    self.pending.push(Box::pin(
                        async move { Completion::Registered(fut.await.ok()) },
                    ));
                }
                Action::Online { user, device } => self.go_online(user, device),
                Action::Store {
                    client_msg_id,
                    to,
                    envelopes,
                    own,
                    expires_in_secs,
                } => {
                    let Some(me) = &self.mailbox else { continue };
                    // Enqueued now, in frame order; resolves after the fsync.
                    let fut = self.shared.store.append_expiring(
                        (&me.user, me.device, client_msg_id),
                        &to,
                        (envelopes, own),
                        expires_in_secs,
                        now_ms(),
                    );
                    self.pending.push(Box::pin(async move {
                        let r = fut.await.map_err(store_refusal);
                        Completion::Stored(client_msg_id, r)
                    }));
                }
                Action::Ack { up_to } => {
                    let Some(me) = self.mailbox.clone() else {
                        continue;
                    };
                    let fut = self.shared.store.ack(me, up_to, now_ms());
                    let registry = self.shared.registry.clone();
                    self.pending.push(Box::pin(async move {
                        match fut.await {
                            // Group senders hear their new counts live (they are not queued).
                            Ok(outcome) => {
                                for (sender, receipt) in outcome.group_receipts {
                                    registry.forward_to_user(&sender, &receipt.into());
                                }
                            }
                            Err(e) => {
                                tracing::warn!(error = %e, "ack not applied; items will be redelivered")
                            }
                        }
                        Completion::Acked
                    }));
                }
                Action::StoreGroup {
                    client_msg_id,
                    group,
                    epoch,
                    body,
                    expires_in_secs,
                } => {
                    let Some(me) = &self.mailbox else { continue };
                    // Enqueued now, in frame order (after the key messages the sender sent
                    // before it); resolves after the fsync.
                    let fut = self.shared.store.group_send(
                        (&me.user, me.device, client_msg_id),
                        group,
                        epoch,
                        body,
                        expires_in_secs,
                        now_ms(),
                    );
                    self.pending.push(Box::pin(async move {
                        let r = fut.await.map_err(store_refusal);
                        Completion::StoredGroup(client_msg_id, r)
                    }));
                }
                Action::Group {
                    request_id,
                    op,
                    max_members,
                } => {
                    let Some(me) = &self.mailbox else { continue };
                    let fut = crate::group_service::answer(
                        &self.shared.store,
                        &me.user,
                        request_id,
                        op,
                        max_members,
                        now_ms(),
                    );
                    self.pending
                        .push(Box::pin(async move { Completion::Answer(fut.await) }));
                }
                Action::StoreStory {
                    client_msg_id,
                    audience,
                    body,
                } => {
                    let Some(me) = &self.mailbox else { continue };
                    let fut = self.shared.store.post_story(
                        (&me.user, me.device, client_msg_id),
                        audience,
                        body,
                        self.shared.story_ttl,
                        now_ms(),
                    );
                    self.pending.push(Box::pin(async move {
                        let r = fut.await.map_err(store_refusal);
                        Completion::StoredStory(client_msg_id, r)
                    }));
                }
                Action::StoryViewed(v) => {
                    let Some(me) = &self.mailbox else { continue };
                    let fut =
                        self.shared
                            .store
                            .mark_story_viewed(&me.user, &v.from, v.client_msg_id);
                    let registry = self.shared.registry.clone();
                    let viewer = me.user.clone();
                    self.pending.push(Box::pin(async move {
                        if let Ok(true) = fut.await {
                            let view = missive_proto::StoryView {
                                client_msg_id: v.client_msg_id,
                                viewer,
                            };
                            registry.forward_to_user(&v.from, &view.into());
                        }
                        Completion::Done
                    }));
                }
                Action::Call(request) => {
                    let (Some(me), Some(calls)) = (&self.mailbox, &self.shared.calls) else {
                        continue;
                    };
                    let party = crate::calls::Party::new(me.user.clone(), me.device);
                    calls.request(&self.shared.registry, party, request);
                }
                Action::CallHistory { request_id, limit } => {
                    let Some(me) = &self.mailbox else { continue };
                    let answer = match self.shared.store.calls_of(&me.user, limit) {
                        Ok(records) => missive_proto::CallHistory {
                            request_id,
                            records,
                        }
                        .into(),
                        Err(_) => storage_failed(request_id),
                    };
                    self.session.answer(answer);
                }
                Action::ListStories { request_id } => {
                    let Some(me) = &self.mailbox else { continue };
                    let answer = match self.shared.store.stories_of(&me.user, now_ms()) {
                        Ok(stories) => missive_proto::StoryList {
                            request_id,
                            stories,
                        }
                        .into(),
                        Err(_) => storage_failed(request_id),
                    };
                    self.session.answer(answer);
                }
                Action::GroupRead(r) => {
                    let Some(me) = &self.mailbox else { continue };
                    let fut = self.shared.store.mark_group_read(
                        &me.user,
                        r.group,
                        &r.from,
                        r.client_msg_id,
                    );
                    let registry = self.shared.registry.clone();
                    self.pending.push(Box::pin(async move {
                        if let Ok(Some(receipt)) = fut.await {
                            registry.forward_to_user(&r.from, &receipt.into());
                        }
                        Completion::Done
                    }));
                }
                Action::ReadMailbox {
                    from,
                    limit,
                    max_bytes,
                } => {
                    let Some(me) = self.mailbox.clone() else {
                        continue;
                    };
                    let store = self.shared.store.clone();
                    let read = tokio::task::spawn_blocking(move || {
                        store
                            .read_mailbox(&me, from, limit, max_bytes)
                            .map_err(|e| {
                                tracing::error!(error = %e, "mailbox read failed");
                            })
                    });
                    self.pending.push(Box::pin(async move {
                        Completion::Read(limit, read.await.unwrap_or(Err(())))
                    }));
                }
                Action::ReadGroupPositions => {
                    let Some(me) = self.mailbox.clone() else {
                        continue;
                    };
                    let store = self.shared.store.clone();
                    let read = tokio::task::spawn_blocking(move || {
                        store.group_positions(&me.user, me.device).map_err(|e| {
                            tracing::error!(error = %e, "reading group log positions failed");
                        })
                    });
                    self.pending.push(Box::pin(async move {
                        Completion::GroupPositions(read.await.unwrap_or(Err(())))
                    }));
                }
                Action::ReadGroupLog {
                    group,
                    from,
                    until,
                    limit,
                    max_bytes,
                } => {
                    let store = self.shared.store.clone();
                    let read = tokio::task::spawn_blocking(move || {
                        store
                            .read_group_log(group, from, until, limit, max_bytes)
                            .map_err(|e| {
                                tracing::error!(error = %e, "group log read failed");
                            })
                    });
                    self.pending.push(Box::pin(async move {
                        Completion::GroupRead(group, limit, read.await.unwrap_or(Err(())))
                    }));
                }
                Action::AckGroup { group, up_to } => {
                    let Some(me) = &self.mailbox else { continue };
                    let write = write_group_cursor(&self.shared, me, group, up_to);
                    self.pending.push(Box::pin(async move {
                        write.await;
                        Completion::GroupAcked(group)
                    }));
                }
                Action::SetVisibility(v) => {
                    let Some(me) = self.mailbox.clone() else {
                        continue;
                    };
                    // One write at a time per session (the session coalesces the rest), polled
                    // here like every storage completion: no task per frame.
                    let fut = self.shared.store.set_visibility(&me.user, v);
                    self.pending.push(Box::pin(async move {
                        Completion::VisibilityStored(v, fut.await.is_ok())
                    }));
                }
                Action::SubscribePresence(user) => {
                    let Some(me) = &self.mailbox else { continue };
                    // Only `user`'s contacts watch it; anyone else sees `Hidden`, as for a
                    // name that does not exist.
                    let contact = self
                        .shared
                        .store
                        .is_contact(&user, &me.user)
                        .unwrap_or(false);
                    let state = if contact {
                        self.shared.registry.subscribe(&user, self.handle.clone());
                        self.shared.presence_of(&user)
                    } else {
                        PresenceState::Hidden
                    };
                    self.write(&missive_proto::Presence { user, state }.into());
                }
                Action::UploadKeys { request_id, upload } => {
                    let fut = self.shared.store.upload_keys(upload);
                    self.pending.push(Box::pin(async move {
                        let r = fut.await.map_err(key_store_refusal);
                        Completion::KeysUploaded(request_id, r)
                    }));
                }
                Action::ClaimKeys { request_id, user } => {
                    let Some(me) = &self.mailbox else { continue };
                    // Past its budget a claimer gets the fallback keys: it cannot drain anyone's
                    // one-time keys, and its sessions still start (a sender's first message
                    // to a 1,024-member group needs a session with every member device).
                    let from = if self.shared.key_claims.try_claim(&me.user, Instant::now()) {
                        ClaimFrom::OneTimeKeys
                    } else {
                        self.shared.metrics.key_claim_over_budget();
                        ClaimFrom::FallbackOnly
                    };
                    let fut = self.shared.store.claim_keys(&user, from);
                    self.pending.push(Box::pin(async move {
                        let r = fut.await.map_err(key_store_refusal);
                        Completion::KeysClaimed(request_id, user, r)
                    }));
                }
                Action::LinkDevice {
                    user,
                    code,
                    key,
                    max_devices,
                } => {
                    // Budgeted like registrations: a code is not to be guessed.
                    let addresses = &self.shared.addresses;
                    if !addresses.allow_registration(self.peer.ip(), Instant::now()) {
                        self.session.handle_register_refused(
                            missive_proto::ErrorCode::RateLimited,
                            "too many attempts from this address; try later",
                        );
                        continue;
                    }
                    let fut =
                        self.shared
                            .store
                            .link_device(&user, &code, key, max_devices, now_ms());
                    self.pending
                        .push(Box::pin(async move { Completion::Linked(fut.await.ok()) }));
                }
                Action::CreateLinkCode { request_id } => {
                    let Some(me) = &self.mailbox else { continue };
                    let code = crate::link_code::generate();
                    let expires_in_ms = self.shared.link_code_ttl.as_millis() as u32;
                    let fut = self
                        .shared
                        .store
                        .create_link_code(&me.user, &code, now_ms());
                    self.pending.push(Box::pin(async move {
                        Completion::Answer(match fut.await {
                            Ok(true) => missive_proto::LinkCode {
                                request_id,
                                code,
                                expires_in_ms,
                            }
                            .into(),
                            _ => storage_failed(request_id),
                        })
                    }));
                }
                Action::TurnCredentials { request_id } => {
                    let Some(me) = &self.mailbox else { continue };
                    let answer = match self
                        .shared
                        .turn
                        .as_ref()
                        .and_then(|t| t.credentials(&me.user, request_id))
                    {
                        Some(credentials) => credentials.into(),
                        None => missive_proto::RequestRefused::new(
                            request_id,
                            ErrorCode::RelayUnavailable,
                            "this server runs no TURN relay",
                        )
                        .into(),
                    };
                    self.session.answer(answer);
                }
                Action::ListDevices { request_id } => {
                    let Some(me) = &self.mailbox else { continue };
                    let answer = match self.shared.store.devices(&me.user) {
                        Ok(devices) => missive_proto::DeviceList {
                            request_id,
                            devices,
                        }
                        .into(),
                        Err(_) => storage_failed(request_id),
                    };
                    self.session.answer(answer);
                }
                Action::Retract {
                    request_id,
                    client_msg_id,
                    to,
                } => {
                    let Some(me) = &self.mailbox else { continue };
                    let fut = self.shared.store.retract(&me.user, client_msg_id, &to);
                    self.pending.push(Box::pin(async move {
                        Completion::Answer(match fut.await {
                            Ok(n) => missive_proto::Retracted {
                                request_id,
                                removed: u32::try_from(n).unwrap_or(u32::MAX),
                            }
                            .into(),
                            Err(_) => storage_failed(request_id),
                        })
                    }));
                }
                Action::RemoveDevice { request_id, device } => {
                    let Some(me) = self.mailbox.clone() else {
                        continue;
                    };
                    let fut = self.shared.store.remove_device(&me.user, device);
                    let registry = self.shared.registry.clone();
                    self.pending.push(Box::pin(async move {
                        Completion::Answer(match fut.await {
                            Ok(Some(_)) => {
                                registry.device_removed(&MailboxId::new(me.user, device));
                                missive_proto::DeviceRemoved { request_id, device }.into()
                            }
                            Ok(None) => missive_proto::RequestRefused::new(
                                request_id,
                                ErrorCode::UnknownRecipient,
                                "no such device",
                            )
                            .into(),
                            Err(_) => storage_failed(request_id),
                        })
                    }));
                }
                Action::CheckKeys => {
                    let Some(me) = self.mailbox.clone() else {
                        continue;
                    };
                    let store = self.shared.store.clone();
                    let read = tokio::task::spawn_blocking(move || {
                        store.key_status(&me.user, me.device).ok()
                    });
                    self.pending.push(Box::pin(async move {
                        Completion::KeyStatus(read.await.ok().flatten())
                    }));
                }
                Action::Typing { to, typing } => {
                    let Some(me) = &self.mailbox else { continue };
                    // Typing goes only into an existing conversation: `to` has written to us.
                    if self.shared.store.is_contact(&to, &me.user).unwrap_or(false) {
                        let f: Frame = TypingNotice {
                            from: me.user.clone(),
                            typing,
                        }
                        .into();
                        self.shared.registry.forward_to_user(&to, &f);
                    }
                }
            }
        }
        false
    }

    /// Devices whose keys a claim took below the low watermark (or whose fallback key it
    /// handed out) hear it now if they are online; the others at their next login.
    fn tell_devices_short_of_keys(&self, user: &str, bundles: &[ClaimedBundle]) {
        for b in bundles {
            let status = KeyStatus {
                one_time_keys: b.remaining,
                fallback_used: b.bundle.fallback,
                has_identity: b.bundle.identity.is_some(),
            };
            if let Some(notice) = self.session.low_notice(status) {
                let mb = MailboxId::new(user, b.bundle.device);
                self.shared.registry.forward_to_device(&mb, &notice.into());
            }
        }
    }

    fn go_online(&mut self, user: String, device: missive_proto::DeviceId) {
        let span = tracing::Span::current();
        span.record("user", user.as_str());
        span.record("device", device.0);
        let mb = MailboxId::new(user.clone(), device);
        self.mailbox = Some(mb.clone());
        if let Some(tx) = self.on_login.take() {
            let _ = tx.send(crate::media::streams::Owner {
                user: user.clone(),
                device: device.0,
            });
        }
        // Registered before the first mailbox read (the next action): every item is then
        // either in that read or pushed after it.
        if self.shared.registry.register(mb, self.handle.clone()) == OnlineChange::CameOnline {
            let state = self.shared.presence_of(&user);
            self.shared.announce_presence(&user, state);
        }
        // After the registration, so that a ring the switchboard sends at once finds it. A
        // session of an older protocol is never rung: it could not read the frames.
        if let Some(calls) = self.shared.calls.as_ref().filter(|_| self.rings()) {
            calls.device_online(crate::calls::Party::new(user.clone(), device));
        }
        tracing::info!("logged in");
    }

    /// This session may be rung (it speaks call signaling).
    fn rings(&self) -> bool {
        self.session.version() >= 5
    }

    fn complete(&mut self, c: Completion) {
        match c {
            Completion::Registered(r) => self.session.handle_register_result(now_ms(), r),
            Completion::KeysUploaded(id, r) => self.session.handle_keys_uploaded(id, r),
            Completion::KeysClaimed(id, user, r) => {
                if let Ok(bundles) = &r {
                    self.tell_devices_short_of_keys(&user, bundles);
                }
                self.session.handle_keys_claimed(id, user, r);
            }
            Completion::KeyStatus(status) => self.session.handle_key_status(status),
            Completion::Linked(outcome) => self.session.handle_link_result(now_ms(), outcome),
            Completion::Answer(frame) => self.session.answer(frame),
            Completion::Stored(id, r) => self.session.handle_send_result(id, r, now_ms()),
            Completion::StoredStory(id, r) => self.session.handle_story_result(id, r, now_ms()),
            Completion::StoredGroup(id, r) => {
                self.session.handle_group_send_result(id, r, now_ms())
            }
            Completion::Acked => self.session.handle_ack_result(),
            Completion::Done => {}
            Completion::Read(limit, r) => self.session.handle_mailbox_read(limit, r),
            Completion::GroupPositions(r) => self.session.handle_group_positions(Instant::now(), r),
            Completion::GroupRead(group, limit, r) => {
                self.session
                    .handle_group_log_read(Instant::now(), group, limit, r)
            }
            Completion::GroupAcked(group) => {
                self.session.handle_group_ack_result(Instant::now(), group)
            }
            Completion::VisibilityStored(v, stored) => {
                if let (true, Some(me)) = (stored, &self.mailbox) {
                    let state = if v == Visibility::Nobody {
                        PresenceState::Hidden
                    } else {
                        self.shared.presence_of(&me.user)
                    };
                    self.shared.announce_presence(&me.user, state);
                }
                self.session.handle_visibility_stored();
            }
        }
    }

    fn on_event(&mut self, now: Instant, ev: SessionEvent) {
        match ev {
            SessionEvent::Pushed(seq, item) => self.session.handle_pushed(seq, *item),
            SessionEvent::GroupPushed(group, seq, item) => {
                self.session
                    .handle_group_pushed(now, group, seq, LogItem::Live(item))
            }
            SessionEvent::Forward(f) => self.write(&f),
            SessionEvent::Replaced => self.session.handle_replaced(),
            SessionEvent::AccountDisabled => self.session.handle_account_disabled(),
            SessionEvent::Reread => self.session.handle_overflow(),
            SessionEvent::Removed => self.session.handle_removed(),
        }
    }

    /// Writes a delivery frame encoded already (shared by every reader of a group item).
    fn write_encoded(&mut self, kind: u8, wire: &[u8]) {
        if self.slow_reader {
            return;
        }
        self.shared.metrics.frame_out_kind(kind, true);
        self.outbuf.extend_from_slice(wire);
        if self.outbuf.len() > self.max_outbuf {
            self.slow_reader = true;
        }
    }

    fn write(&mut self, frame: &Frame) {
        if self.slow_reader {
            return;
        }
        self.shared.metrics.frame_out(frame);
        if let Err(e) = encode(frame, &mut self.outbuf) {
            tracing::error!(error = %e, frame = frame.name(), "cannot encode frame");
        }
        if self.outbuf.len() > self.max_outbuf {
            self.slow_reader = true;
        }
    }

    fn wrote(&mut self, step: WriteProgress) {
        match step {
            WriteProgress::Wrote(n) => {
                self.outbuf.drain(..n);
                self.unflushed = true;
                if self.outbuf.is_empty() && self.outbuf.capacity() > OUTBUF_KEEP {
                    self.outbuf = Vec::new();
                }
            }
            WriteProgress::Flushed => self.unflushed = false,
            WriteProgress::Failed => {
                // The peer is gone; reading will notice too. Drop what cannot be sent.
                self.write_failed = true;
                self.outbuf = Vec::new();
            }
        }
    }

    /// Leaves the registry and flushes what is left. Borrows the driver: taking it by value
    /// would keep a second copy of it in the connection's future for its whole life.
    async fn finish(&mut self) {
        if let Some(mb) = &self.mailbox {
            // Acknowledged group cursors the session paced and had not written: the client
            // must not get those items again on its next connection.
            for (group, up_to) in self.session.take_unwritten_cursors() {
                tokio::spawn(write_group_cursor(&self.shared, mb, group, up_to));
            }
            let registry = &self.shared.registry;
            let unregistered = registry.unregister(mb, self.handle.conn_id);
            // Only when this session was still the device's (a replaced one must not end the
            // replacing session's call).
            if let Some(calls) = self.shared.calls.as_ref().filter(|_| self.rings()) {
                if registry.online_devices(&mb.user).contains(&mb.device) {
                    // Replaced by a newer session of the same device: it is online.
                } else {
                    calls.device_offline(crate::calls::Party::new(mb.user.clone(), mb.device));
                }
            }
            if unregistered == OnlineChange::WentOffline {
                let now = now_ms();
                // Best effort: last-seen is a convenience, not worth delaying the close for.
                let fut = self.shared.store.set_last_seen(&mb.user, now);
                tokio::spawn(fut);
                let hidden = self
                    .shared
                    .store
                    .user(&mb.user)
                    .ok()
                    .flatten()
                    .is_some_and(|r| r.visibility == Visibility::Nobody);
                let state = if hidden {
                    PresenceState::Hidden
                } else {
                    PresenceState::LastSeen(now)
                };
                self.shared.announce_presence(&mb.user, state);
            }
        }
        let watched: Vec<String> = self.session.subscriptions().map(str::to_owned).collect();
        self.shared
            .registry
            .unsubscribe_all(&watched, self.handle.conn_id);
        tracing::debug!(reason = ?self.session.close_reason(), "connection closed");
        let out = std::mem::take(&mut self.outbuf);
        let (writer, failed) = (&mut self.writer, self.write_failed);
        let _ = tokio::time::timeout(CLOSE_FLUSH, async move {
            if !failed && writer.write_all(&out).await.is_ok() && writer.flush().await.is_ok() {
                let _ = writer.shutdown().await;
            }
        })
        .await;
    }
}

/// Writes `me`'s cursor in `group` as `up_to`; the group senders whose counts it changed
/// hear them live (receipts are not queued).
fn write_group_cursor(
    shared: &Shared,
    me: &MailboxId,
    group: GroupId,
    up_to: ServerSeq,
) -> impl std::future::Future<Output = ()> + Send + 'static {
    let fut = shared.store.ack_group((&me.user, me.device), group, up_to);
    let registry = shared.registry.clone();
    async move {
        match fut.await {
            Ok(told) => {
                for (sender, receipt) in told {
                    registry.forward_to_user(&sender, &receipt.into());
                }
            }
            Err(e) => {
                tracing::warn!(error = %e, "group ack not applied; items will be redelivered")
            }
        }
    }
}
