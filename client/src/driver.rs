//! The background task behind a [`crate::Client`]: moves frames, commands and timers in and
//! out of the [`Session`], and reconnects when a connection ends.

use crate::connection::{establish, LiveConnection, BYE_TIMEOUT};
use crate::event::Event;
use crate::frame_io::FrameWriter;
use crate::login::LoginMode;
use crate::receipt_id::ReceiptIds;
use crate::session::{Output, Session};
use crate::transport::TransportConfig;
use crate::{ClientConfig, ClientError, Identity, SendReceipt};
use missive_proto::{ClientMsgId, Visibility};
use std::collections::HashMap;
use std::time::{Duration, Instant};
use tokio::sync::{mpsc, oneshot};

/// A connection that lasted this long resets the backoff schedule.
const STABLE_AFTER: Duration = Duration::from_secs(5);

/// What a [`crate::Client`] asks its driver to do.
pub(crate) enum Command {
    Send {
        id: ClientMsgId,
        to: String,
        envelope: Vec<u8>,
        reply: oneshot::Sender<Result<SendReceipt, ClientError>>,
    },
    /// A message to every member of a group (the content sealed).
    GroupSend {
        id: ClientMsgId,
        group: missive_proto::GroupId,
        envelope: Vec<u8>,
        reply: oneshot::Sender<Result<SendReceipt, ClientError>>,
    },
    /// A group message was read.
    GroupRead(missive_proto::GroupRead),
    /// A status update (encrypted under its key, which went to the audience before).
    StoryPost {
        id: ClientMsgId,
        audience: Vec<String>,
        body: Vec<u8>,
        reply: oneshot::Sender<Result<SendReceipt, ClientError>>,
    },
    /// A status update was viewed.
    StoryViewed(missive_proto::StoryViewed),
    Ack(crate::event::AckPoint),
    Subscribe(String),
    Visibility(Visibility),
    Typing(String, bool),
    /// Set a chat's disappearing-message timer (and tell the chat under this id).
    Timer(ClientMsgId, String, u32),
    /// A device-management request built from its id; answered with the server's frame.
    DeviceRequest {
        build: Box<dyn FnOnce(u32) -> missive_proto::Frame + Send>,
        reply: oneshot::Sender<Result<missive_proto::Frame, ClientError>>,
    },
    Close(oneshot::Sender<Result<(), ClientError>>),
    /// Place a call.
    Invite {
        call_id: missive_proto::CallId,
        to: String,
        media: missive_proto::CallMedia,
        conference: Option<missive_proto::CallId>,
        offer: crate::call::CallOffer,
    },
    /// Act in a call.
    CallDo(missive_proto::CallId, crate::call::CallDo),
    /// Drop the connection and connect again now (the network changed).
    Reconnect,
}

impl std::fmt::Debug for Command {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // No recipients or content in logs.
        f.write_str(match self {
            Self::Send { .. } => "Send",
            Self::GroupSend { .. } => "GroupSend",
            Self::GroupRead(_) => "GroupRead",
            Self::StoryPost { .. } => "StoryPost",
            Self::StoryViewed(_) => "StoryViewed",
            Self::Ack(_) => "Ack",
            Self::Subscribe(_) => "Subscribe",
            Self::Visibility(_) => "Visibility",
            Self::Typing(..) => "Typing",
            Self::DeviceRequest { .. } => "DeviceRequest",
            Self::Timer(..) => "Timer",
            Self::Close(_) => "Close",
            Self::Invite { .. } => "Invite",
            Self::CallDo(..) => "CallDo",
            Self::Reconnect => "Reconnect",
        })
    }
}

/// How one connection ended.
enum ConnEnd {
    /// Our `Bye` was answered (or its wait timed out: `Err`).
    Closed(Result<(), ClientError>),
    /// Lost or dropped by the server; reconnect.
    Lost {
        reason: String,
        retry_after: Option<Duration>,
    },
    /// Reconnecting cannot help.
    Fatal(ClientError),
}

/// What a command asked of the connection loop.
#[derive(PartialEq, Eq)]
enum Flow {
    Continue,
    /// Stop now (a close while offline, or every handle dropped).
    Stop,
}

pub(crate) struct Driver {
    identity: Identity,
    /// Where the session's E2EE state is saved (`Output::Persist`).
    e2ee: crate::e2ee::E2eeStore,
    transport: TransportConfig,
    client_name: String,
    policy: crate::ReconnectPolicy,
    session: Session,
    cmd_rx: mpsc::UnboundedReceiver<Command>,
    cmd_open: bool,
    events: mpsc::UnboundedSender<Vec<Event>>,
    waiters: HashMap<ClientMsgId, Vec<oneshot::Sender<Result<SendReceipt, ClientError>>>>,
    close_waiters: Vec<oneshot::Sender<Result<(), ClientError>>>,
    /// Waiters of device requests, by request id.
    requests: HashMap<u32, oneshot::Sender<Result<missive_proto::Frame, ClientError>>>,
    close_deadline: Option<Instant>,
    /// Where the logged-in QUIC connection is published for media transfers.
    pub(crate) links: Option<tokio::sync::watch::Sender<crate::transfer::Link>>,
    /// The app asked to drop the connection and connect again.
    reconnect_now: bool,
}

impl Driver {
    pub(crate) fn new(
        config: ClientConfig,
        cmd_rx: mpsc::UnboundedReceiver<Command>,
        events: mpsc::UnboundedSender<Vec<Event>>,
        counters: std::sync::Arc<crate::delivery_stats::DeliveryCounters>,
    ) -> Self {
        let transport = config.transport();
        let mut session = Session::new(
            config.auto_ack,
            config.seen,
            ReceiptIds::new(&config.identity.signing_key),
            counters,
            crate::session::Me {
                user: config.identity.user.clone(),
                device: config.identity.device,
                login_key: config.identity.signing_key.clone(),
                e2ee: config.identity.e2ee.clone(),
            },
            Instant::now(),
        );
        session.set_receive(config.receive);
        session.configure_groups(
            crate::e2ee::RotationPolicy {
                messages: config.rotate_after_messages,
                age: config.rotate_after,
            },
            crate::group::WallClock {
                at: Instant::now(),
                unix_ms: std::time::SystemTime::now()
                    .duration_since(std::time::UNIX_EPOCH)
                    .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX)),
            },
        );
        session.load_timers(config.disappearing);
        Self {
            session,
            e2ee: config.identity.e2ee.clone(),
            identity: config.identity,
            transport,
            client_name: config.client_name,
            policy: config.reconnect,
            cmd_rx,
            cmd_open: true,
            events,
            waiters: HashMap::new(),
            requests: HashMap::new(),
            close_waiters: Vec::new(),
            close_deadline: None,
            links: None,
            reconnect_now: false,
        }
    }

    /// Runs until closed or a fatal error, starting on an already logged-in connection.
    pub(crate) async fn run(mut self, first: LiveConnection) {
        let mut conn = first;
        let mut attempt: u32 = 0;
        loop {
            let started = Instant::now();
            tracing::debug!(transport = %conn.kind, "connected");
            self.emit(vec![Event::Connected {
                transport: conn.kind,
            }]);
            self.session.connected(Instant::now(), conn.max_frame);
            let end = self.run_connection(conn).await;
            self.session.disconnected();
            let mut delay = match end {
                ConnEnd::Closed(result) => return self.finish(result, ClientError::ClientClosed),
                ConnEnd::Fatal(e) => {
                    self.emit(vec![Event::Disconnected {
                        reason: e.to_string(),
                    }]);
                    return self.finish(Err(e.clone()), e);
                }
                ConnEnd::Lost { reason, .. } if self.close_deadline.is_some() => {
                    // Asked to close: do not come back, but say the Bye was not confirmed.
                    self.emit(vec![Event::Disconnected {
                        reason: reason.clone(),
                    }]);
                    let err = ClientError::ConnectionClosed(format!(
                        "{reason} (before the server answered Bye)"
                    ));
                    return self.finish(Err(err), ClientError::ClientClosed);
                }
                ConnEnd::Lost {
                    reason,
                    retry_after,
                } => {
                    tracing::info!(%reason, "connection lost; reconnecting");
                    self.emit(vec![Event::Disconnected { reason }]);
                    if started.elapsed() >= STABLE_AFTER {
                        attempt = 0;
                    }
                    match retry_after {
                        Some(d) => d,
                        None => self.next_delay(&mut attempt),
                    }
                }
            };
            conn = loop {
                if self.wait_offline(delay).await == Flow::Stop {
                    return self.finish(Ok(()), ClientError::ClientClosed);
                }
                match self.connect_offline().await {
                    Ok(Some(c)) => break c,
                    Ok(None) => return self.finish(Ok(()), ClientError::ClientClosed),
                    Err(e) if e.is_fatal() => {
                        self.emit(vec![Event::Disconnected {
                            reason: e.to_string(),
                        }]);
                        return self.finish(Ok(()), e);
                    }
                    Err(e) => {
                        tracing::info!(error = %e, "reconnect failed");
                        delay = self.next_delay(&mut attempt);
                    }
                }
            };
        }
    }

    fn next_delay(&self, attempt: &mut u32) -> Duration {
        let d = self.policy.delay_random(*attempt);
        *attempt = attempt.saturating_add(1);
        d
    }

    /// Drives one logged-in connection until it ends.
    async fn run_connection(&mut self, conn: LiveConnection) -> ConnEnd {
        let LiveConnection {
            mut reader,
            mut writer,
            closer,
            ..
        } = conn;
        // Asked while offline: this new connection is what was asked for.
        self.reconnect_now = false;
        let (lost_tx, lost_rx) = tokio::sync::watch::channel(false);
        if let Some(links) = &self.links {
            let link = match closer.quic_connection() {
                Some(c) => crate::transfer::Link::Quic(c),
                None => {
                    crate::transfer::Link::Tcp(std::sync::Arc::new(crate::transfer::TcpTransfers {
                        transport: crate::transport::TransportConfig {
                            force_tcp: true,
                            ..self.transport.clone()
                        },
                        identity: self.identity.clone(),
                        client_name: self.client_name.clone(),
                        lost: lost_rx,
                    }))
                }
            };
            links.send_replace(link);
        }
        let mut end = self.drain(Some(&writer));
        while end.is_none() {
            let deadline = [self.session.poll_timeout(), self.close_deadline]
                .into_iter()
                .flatten()
                .min();
            let sleep_until = deadline.map(tokio::time::Instant::from_std);
            tokio::select! {
                r = reader.next() => match r {
                    Ok(Some(frame)) => {
                        let now = Instant::now();
                        self.session.handle_frame(now, frame);
                        // Take every frame already buffered, then ack them with one frame.
                        loop {
                            match reader.next_buffered() {
                                Ok(Some(f)) => self.session.handle_frame(now, f),
                                Ok(None) => break,
                                Err(e) => {
                                    end = Some(lost(e.to_string()));
                                    break;
                                }
                            }
                        }
                        self.session.flush_acks();
                    }
                    Ok(None) => end = Some(lost("server closed the connection".into())),
                    Err(e) => end = Some(lost(e.to_string())),
                },
                cmd = self.cmd_rx.recv(), if self.cmd_open => {
                    if self.handle_command(cmd) == Flow::Stop {
                        end = Some(ConnEnd::Closed(Ok(())));
                    }
                }
                _ = sleep_until_opt(sleep_until), if sleep_until.is_some() => {
                    let now = Instant::now();
                    if self.close_deadline.is_some_and(|d| now >= d) {
                        end = Some(ConnEnd::Closed(Err(ClientError::Timeout(
                            "waiting for the server's Bye",
                        ))));
                    } else {
                        self.session.handle_timeout(now);
                    }
                }
                e = writer.failed() => end = Some(lost(e.to_string())),
            }
            if let Some(e) = self.drain(Some(&writer)) {
                end.get_or_insert(e);
            }
            if std::mem::take(&mut self.reconnect_now) {
                end.get_or_insert(ConnEnd::Lost {
                    reason: "reconnect asked".into(),
                    retry_after: Some(Duration::ZERO),
                });
            }
        }
        if let Some(links) = &self.links {
            links.send_replace(crate::transfer::Link::Down);
        }
        lost_tx.send_replace(true);
        writer.shutdown().await;
        drop(reader);
        closer.close().await;
        end.unwrap_or(ConnEnd::Closed(Ok(())))
    }

    /// Waits `delay` while disconnected, still taking commands.
    async fn wait_offline(&mut self, delay: Duration) -> Flow {
        let sleep = tokio::time::sleep(delay);
        tokio::pin!(sleep);
        loop {
            tokio::select! {
                _ = &mut sleep => return Flow::Continue,
                cmd = self.cmd_rx.recv(), if self.cmd_open => {
                    if self.handle_command(cmd) == Flow::Stop {
                        return Flow::Stop;
                    }
                    self.drain(None);
                }
            }
        }
    }

    /// Connects and logs in while still taking commands. `Ok(None)`: closed meanwhile.
    async fn connect_offline(&mut self) -> Result<Option<LiveConnection>, ClientError> {
        let transport = self.transport.clone();
        let identity = self.identity.clone();
        let name = self.client_name.clone();
        let attempt =
            async move { establish(&transport, &identity, LoginMode::Login, &name).await };
        tokio::pin!(attempt);
        loop {
            tokio::select! {
                r = &mut attempt => return r.map(Some),
                cmd = self.cmd_rx.recv(), if self.cmd_open => {
                    if self.handle_command(cmd) == Flow::Stop {
                        return Ok(None);
                    }
                    self.drain(None);
                }
            }
        }
    }

    fn handle_command(&mut self, cmd: Option<Command>) -> Flow {
        let Some(cmd) = cmd else {
            // Every Client handle is gone: close as if asked to.
            self.cmd_open = false;
            return self.begin_close();
        };
        match cmd {
            Command::Send {
                id,
                to,
                envelope,
                reply,
            } => {
                self.waiters.entry(id).or_default().push(reply);
                self.session.send(id, to, envelope);
            }
            Command::GroupSend {
                id,
                group,
                envelope,
                reply,
            } => {
                self.waiters.entry(id).or_default().push(reply);
                self.session.send_group(id, group, envelope);
            }
            Command::GroupRead(read) => self.session.group_read(read),
            Command::StoryPost {
                id,
                audience,
                body,
                reply,
            } => {
                self.waiters.entry(id).or_default().push(reply);
                self.session.post_story(id, audience, body);
            }
            Command::StoryViewed(viewed) => self.session.story_viewed(viewed),
            Command::Ack(seq) => {
                self.session.ack(seq);
                self.session.flush_acks();
            }
            Command::Subscribe(user) => self.session.subscribe_presence(user),
            Command::Visibility(v) => self.session.set_visibility(v),
            Command::Typing(to, typing) => self.session.typing(to, typing),
            Command::Timer(id, user, secs) => self.session.set_timer(id, user, secs),
            Command::DeviceRequest { build, reply } => match self.session.device_request(build) {
                Some(id) => {
                    self.requests.insert(id, reply);
                }
                None => {
                    let _ = reply.send(Err(ClientError::ConnectionClosed(
                        "not connected; try again once connected".into(),
                    )));
                }
            },
            Command::Close(reply) => {
                self.close_waiters.push(reply);
                return self.begin_close();
            }
            Command::Reconnect => self.reconnect_now = true,
            Command::Invite {
                call_id,
                to,
                media,
                conference,
                offer,
            } => self
                .session
                .invite_call(call_id, to, (media, conference), offer),
            Command::CallDo(call_id, what) => self.session.call_do(call_id, what),
        }
        Flow::Continue
    }

    fn begin_close(&mut self) -> Flow {
        if self.session.close() {
            self.close_deadline
                .get_or_insert_with(|| Instant::now() + BYE_TIMEOUT);
            Flow::Continue
        } else {
            Flow::Stop
        }
    }

    /// Acts on the session's outputs in order; returns how the connection must end, if it must.
    fn drain(&mut self, writer: Option<&FrameWriter>) -> Option<ConnEnd> {
        let mut end = None;
        while let Some(out) = self.session.poll_output() {
            match out {
                Output::Transmit(frame) => {
                    if end.is_some() {
                        continue;
                    }
                    match writer {
                        Some(w) => {
                            if let Err(e) = w.send(&frame) {
                                end = Some(lost(e.to_string()));
                            }
                        }
                        None => {
                            tracing::debug!(frame = frame.name(), "dropping frame while offline")
                        }
                    }
                }
                Output::Events(events) => self.emit(events),
                Output::Persist => {
                    if end.is_none() {
                        if let Err(e) = self.e2ee.save() {
                            // Nothing made with the unsaved state may leave: the frames
                            // after this are dropped with the connection.
                            tracing::error!(error = %e, "cannot save the E2EE state");
                            end = Some(ConnEnd::Fatal(e));
                        }
                    }
                }
                Output::RequestDone { request_id, result } => {
                    if let Some(w) = self.requests.remove(&request_id) {
                        let _ = w.send(result);
                    }
                }
                Output::SendDone { id, result } => {
                    for w in self.waiters.remove(&id).unwrap_or_default() {
                        let _ = w.send(result.clone());
                    }
                }
                Output::Disconnect {
                    reason,
                    retry_after,
                } => {
                    end.get_or_insert(ConnEnd::Lost {
                        reason,
                        retry_after,
                    });
                }
                Output::Fatal(e) => {
                    end.get_or_insert(ConnEnd::Fatal(e));
                }
                Output::Closed => {
                    end.get_or_insert(ConnEnd::Closed(Ok(())));
                }
            }
        }
        end
    }

    fn emit(&self, events: Vec<Event>) {
        // An app that dropped its EventStream just does not get events.
        let _ = self.events.send(events);
    }

    /// Stops: completes close waiters with `close_result` and everything else with `err`.
    fn finish(mut self, close_result: Result<(), ClientError>, err: ClientError) {
        for w in self.close_waiters.drain(..) {
            let _ = w.send(close_result.clone());
        }
        for (_, ws) in self.waiters.drain() {
            for w in ws {
                let _ = w.send(Err(err.clone()));
            }
        }
        tracing::debug!(
            pending = self.session.pending_sends(),
            "client driver stopped"
        );
    }
}

fn lost(reason: String) -> ConnEnd {
    ConnEnd::Lost {
        reason,
        retry_after: None,
    }
}

async fn sleep_until_opt(at: Option<tokio::time::Instant>) {
    match at {
        Some(at) => tokio::time::sleep_until(at).await,
        None => std::future::pending().await,
    }
}
