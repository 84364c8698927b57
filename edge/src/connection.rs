//! The thin async driver of one connection: moves bytes, timers, storage results and
//! registry events in and out of the [`Session`] state machine. Transport-agnostic: QUIC
//! streams and TLS streams both arrive here as an `AsyncRead` and an `AsyncWrite`.

use crate::registry::{OnlineChange, SessionEvent, SessionHandle};
use crate::session::{Action, DeviceLookup, Session};
use crate::shared::{now_ms, Shared};
use missive_proto::{
    encode, ClientMsgId, Frame, FrameDecoder, PresenceState, ServerSeq, TypingNotice, Visibility,
    EXPORTER_LEN,
};
use missive_storage::{AppendOutcome, MailboxId, RegisterOutcome, StoredItem};
use rand::RngCore;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::sync::{mpsc, watch};
use tracing::Instrument;

/// How long the writer may take to flush the last frames when a connection closes.
const CLOSE_FLUSH: Duration = Duration::from_secs(5);

/// Results of storage work started for the session.
enum Completion {
    Registered(Option<RegisterOutcome>),
    Stored(ClientMsgId, Result<AppendOutcome, ()>),
    Acked,
    Read(usize, Result<Vec<(ServerSeq, StoredItem)>, ()>),
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

/// Serves one connection until it closes. Returns after the last frame was handed to the
/// transport (the writer has flushed and shut down its half).
pub async fn serve<R, W>(
    shared: Arc<Shared>,
    reader: R,
    writer: W,
    exporter: [u8; EXPORTER_LEN],
    transport: Transport,
    shutdown: watch::Receiver<bool>,
) where
    R: AsyncRead + Unpin + Send,
    W: AsyncWrite + Unpin + Send + 'static,
{
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
    Driver::new(shared, conn_id, exporter, writer)
        .run(reader, shutdown)
        .instrument(span)
        .await;
    metrics_shared.metrics.connection_closed(transport);
}

struct Driver {
    shared: Arc<Shared>,
    session: Session,
    handle: SessionHandle,
    events: mpsc::Receiver<SessionEvent>,
    overflowed: Arc<std::sync::atomic::AtomicBool>,
    out: mpsc::UnboundedSender<Vec<u8>>,
    writer: tokio::task::JoinHandle<()>,
    done_tx: mpsc::UnboundedSender<Completion>,
    done_rx: mpsc::UnboundedReceiver<Completion>,
    mailbox: Option<MailboxId>,
    subscriptions: Vec<String>,
}

impl Driver {
    fn new<W>(shared: Arc<Shared>, conn_id: u64, exporter: [u8; EXPORTER_LEN], writer: W) -> Self
    where
        W: AsyncWrite + Unpin + Send + 'static,
    {
        let mut challenge = [0u8; 32];
        rand::thread_rng().fill_bytes(&mut challenge);
        let session = Session::new(Instant::now(), shared.session_config(), challenge, exporter);
        let (handle, events, overflowed) = SessionHandle::new(conn_id);
        let (out, out_rx) = mpsc::unbounded_channel();
        let writer = tokio::spawn(write_loop(writer, out_rx).in_current_span());
        let (done_tx, done_rx) = mpsc::unbounded_channel();
        Self {
            shared,
            session,
            handle,
            events,
            overflowed,
            out,
            writer,
            done_tx,
            done_rx,
            mailbox: None,
            subscriptions: Vec::new(),
        }
    }

    async fn run<R: AsyncRead + Unpin + Send>(
        mut self,
        mut reader: R,
        mut shutdown: watch::Receiver<bool>,
    ) {
        let mut decoder = FrameDecoder::new(self.session.max_frame() as usize);
        // Small on purpose: it exists once per connection, and most connections are idle.
        let mut buf = vec![0u8; 4 * 1024];
        let mut draining = *shutdown.borrow();
        if draining {
            self.session.handle_goaway(1000);
        }
        loop {
            if self.drain_actions() {
                break;
            }
            let deadline = self
                .session
                .poll_timeout()
                .unwrap_or_else(|| Instant::now() + Duration::from_secs(3600));
            tokio::select! {
                r = reader.read(&mut buf) => match r {
                    Ok(0) | Err(_) => break, // peer closed or transport failed
                    Ok(n) => {
                        decoder.feed(&buf[..n]);
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
                Some(ev) = self.events.recv() => match ev {
                    SessionEvent::Pushed(seq, item) => self.session.handle_pushed(seq, *item),
                    SessionEvent::Forward(f) => self.write(&f),
                    SessionEvent::Replaced => self.session.handle_goaway(0),
                },
                Some(c) = self.done_rx.recv() => self.complete(c),
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
            if self.overflowed.swap(false, Ordering::AcqRel) {
                self.session.handle_overflow();
            }
        }
        self.finish().await;
    }

    /// Executes queued actions; true when the session asked to close.
    fn drain_actions(&mut self) -> bool {
        while let Some(action) = self.session.poll_action() {
            match action {
                Action::Send(frame) => self.write(&frame),
                Action::Close => return true,
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
                    let fut = self.shared.store.register(
                        &user,
                        device,
                        key,
                        invite,
                        require_invite,
                        now_ms(),
                    );
                    let done = self.done_tx.clone();
                    tokio::spawn(async move {
                        let _ = done.send(Completion::Registered(fut.await.ok()));
                    });
                }
                Action::Online { user, device } => self.go_online(user, device),
                Action::Store {
                    client_msg_id,
                    to,
                    envelope,
                } => {
                    let Some(me) = &self.mailbox else { continue };
                    // Enqueued now, in frame order; resolves after the fsync.
                    let fut = self.shared.store.append_message(
                        &me.user,
                        me.device,
                        client_msg_id,
                        &to,
                        envelope,
                        now_ms(),
                    );
                    let done = self.done_tx.clone();
                    tokio::spawn(async move {
                        let r = fut.await.map_err(|e| {
                            tracing::error!(error = %e, "append failed");
                        });
                        let _ = done.send(Completion::Stored(client_msg_id, r));
                    });
                }
                Action::Ack { up_to } => {
                    let Some(me) = self.mailbox.clone() else {
                        continue;
                    };
                    let fut = self.shared.store.ack(me, up_to, now_ms());
                    let done = self.done_tx.clone();
                    tokio::spawn(async move {
                        if let Err(e) = fut.await {
                            tracing::warn!(error = %e, "ack not applied; items will be redelivered");
                        }
                        let _ = done.send(Completion::Acked);
                    });
                }
                Action::ReadMailbox { from, limit } => {
                    let Some(me) = self.mailbox.clone() else {
                        continue;
                    };
                    let store = self.shared.store.clone();
                    let done = self.done_tx.clone();
                    tokio::task::spawn_blocking(move || {
                        let r = store.read_mailbox(&me, from, limit).map_err(|e| {
                            tracing::error!(error = %e, "mailbox read failed");
                        });
                        let _ = done.send(Completion::Read(limit, r));
                    });
                }
                Action::SetVisibility(v) => {
                    let Some(me) = self.mailbox.clone() else {
                        continue;
                    };
                    let fut = self.shared.store.set_visibility(&me.user, v);
                    let shared = self.shared.clone();
                    tokio::spawn(async move {
                        if fut.await.is_ok() {
                            let state = if v == Visibility::Nobody {
                                PresenceState::Hidden
                            } else {
                                shared.presence_of(&me.user)
                            };
                            shared.announce_presence(&me.user, state);
                        }
                    });
                }
                Action::SubscribePresence(user) => {
                    self.shared.registry.subscribe(&user, self.handle.clone());
                    if !self.subscriptions.contains(&user) {
                        self.subscriptions.push(user.clone());
                    }
                    let state = self.shared.presence_of(&user);
                    self.write(&missive_proto::Presence { user, state }.into());
                }
                Action::Typing { to, typing } => {
                    if let Some(me) = &self.mailbox {
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

    fn go_online(&mut self, user: String, device: missive_proto::DeviceId) {
        let span = tracing::Span::current();
        span.record("user", user.as_str());
        span.record("device", device.0);
        let mb = MailboxId::new(user.clone(), device);
        self.mailbox = Some(mb.clone());
        // Registered before the first mailbox read (the next action): every item is then
        // either in that read or pushed after it.
        if self.shared.registry.register(mb, self.handle.clone()) == OnlineChange::CameOnline {
            let state = self.shared.presence_of(&user);
            self.shared.announce_presence(&user, state);
        }
        tracing::info!("logged in");
    }

    fn complete(&mut self, c: Completion) {
        match c {
            Completion::Registered(r) => self.session.handle_register_result(now_ms(), r),
            Completion::Stored(id, r) => self.session.handle_send_result(id, r, now_ms()),
            Completion::Acked => self.session.handle_ack_result(),
            Completion::Read(limit, r) => self.session.handle_mailbox_read(limit, r),
        }
    }

    fn write(&self, frame: &Frame) {
        self.shared.metrics.frame_out(frame);
        let mut bytes = Vec::new();
        match encode(frame, &mut bytes) {
            Ok(()) => {
                let _ = self.out.send(bytes);
            }
            Err(e) => tracing::error!(error = %e, frame = frame.name(), "cannot encode frame"),
        }
    }

    async fn finish(self) {
        if let Some(mb) = &self.mailbox {
            let registry = &self.shared.registry;
            if registry.unregister(mb, self.handle.conn_id) == OnlineChange::WentOffline {
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
        self.shared
            .registry
            .unsubscribe_all(&self.subscriptions, self.handle.conn_id);
        tracing::debug!(reason = ?self.session.close_reason(), "connection closed");
        drop(self.out);
        let _ = tokio::time::timeout(CLOSE_FLUSH, self.writer).await;
    }
}

/// Writes queued frames, coalescing whatever is waiting into one write and one flush (one
/// TLS record / fewer QUIC packets). Shuts the write half down when the queue closes.
async fn write_loop<W: AsyncWrite + Unpin>(mut w: W, mut rx: mpsc::UnboundedReceiver<Vec<u8>>) {
    // Grows with the traffic it sees; idle connections keep it empty.
    let mut batch = Vec::new();
    while let Some(first) = rx.recv().await {
        batch.clear();
        if batch.capacity() > 256 * 1024 {
            batch.shrink_to(64 * 1024);
        }
        batch.extend_from_slice(&first);
        while batch.len() < 256 * 1024 {
            match rx.try_recv() {
                Ok(more) => batch.extend_from_slice(&more),
                Err(_) => break,
            }
        }
        if w.write_all(&batch).await.is_err() || w.flush().await.is_err() {
            return;
        }
    }
    let _ = w.shutdown().await;
}
