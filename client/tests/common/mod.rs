//! A small in-memory stand-in for the edge, speaking the real protocol over real QUIC and
//! TCP+TLS sockets on 127.0.0.1, so the SDK can be tested before (and independently of)
//! the real edge. It verifies login signatures against its own TLS exporter, which is what
//! proves the client computes the exporter the way the protocol says.
//!
//! Not modelled: persistence, delivery windows, rate limits, multiple devices per user.

#![allow(dead_code, unreachable_pub, missing_docs)]

use ed25519_dalek::{Signature, Verifier, VerifyingKey};
use missive_proto::*;
use std::collections::{BTreeMap, HashMap, HashSet};
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::sync::mpsc;

/// Knobs a test can turn.
#[derive(Debug, Default, Clone)]
pub struct Faults {
    /// Store the next N sends but drop the connection instead of answering `Sent`.
    pub drop_after_store: usize,
    /// Answer the next N sends with `Rejected{RateLimited}`.
    pub rate_limit: usize,
    /// Require this invite token to register.
    pub invite: Option<String>,
}

#[derive(Debug, Clone)]
struct Item {
    from: String,
    from_device: DeviceId,
    client_msg_id: ClientMsgId,
    ts: u64,
    payload: Payload,
}

#[derive(Default)]
struct State {
    keys: HashMap<String, [u8; 32]>,
    mailboxes: HashMap<String, BTreeMap<u64, Item>>,
    next_seq: HashMap<String, u64>,
    sessions: HashMap<String, (u64, mpsc::UnboundedSender<Frame>)>,
    stored: HashSet<(String, ClientMsgId)>,
    faults: Faults,
    next_session: u64,
    pub logins: Vec<(String, &'static str)>,
    pub sends_seen: Vec<ClientMsgId>,
}

impl State {
    fn append(&mut self, to: &str, item: Item) {
        let seq = self.next_seq.entry(to.to_string()).or_insert(1);
        let s = *seq;
        *seq += 1;
        self.mailboxes
            .entry(to.to_string())
            .or_default()
            .insert(s, item.clone());
        if let Some((_, tx)) = self.sessions.get(to) {
            let _ = tx.send(deliver(s, &item));
        }
    }
}

fn deliver(seq: u64, item: &Item) -> Frame {
    Deliver {
        seq: ServerSeq(seq),
        from: item.from.clone(),
        from_device: item.from_device,
        client_msg_id: item.client_msg_id,
        server_ts_ms: item.ts,
        payload: item.payload.clone(),
    }
    .into()
}

pub struct FakeEdge {
    pub addr: SocketAddr,
    pub ca_pem: Vec<u8>,
    state: Arc<Mutex<State>>,
    tasks: Vec<tokio::task::JoinHandle<()>>,
    endpoint: Option<quinn::Endpoint>,
}

impl Drop for FakeEdge {
    fn drop(&mut self) {
        for t in &self.tasks {
            t.abort();
        }
        if let Some(e) = &self.endpoint {
            e.close(0u32.into(), b"test over");
        }
    }
}

impl FakeEdge {
    /// Starts an edge on 127.0.0.1 with QUIC (if `quic`) and TCP+TLS on the same port.
    pub async fn start(quic: bool) -> Self {
        let certified = rcgen::generate_simple_self_signed(vec!["localhost".into()]).unwrap();
        let ca_pem = certified.cert.pem().into_bytes();
        let cert_der = certified.cert.der().clone();
        let key_der = rustls::pki_types::PrivateKeyDer::Pkcs8(
            rustls::pki_types::PrivatePkcs8KeyDer::from(certified.key_pair.serialize_der()),
        );
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let mut tls = rustls::ServerConfig::builder_with_provider(provider)
            .with_protocol_versions(&[&rustls::version::TLS13])
            .unwrap()
            .with_no_client_auth()
            .with_single_cert(vec![cert_der], key_der)
            .unwrap();
        tls.alpn_protocols = vec![ALPN.to_vec()];
        let tls = Arc::new(tls);
        let state = Arc::new(Mutex::new(State::default()));
        let mut tasks = Vec::new();

        // Same port for both, as the real edge does; retry if the port is taken on one side.
        let (udp, tcp) = loop {
            let udp = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
            let port = udp.local_addr().unwrap().port();
            if let Ok(tcp) = tokio::net::TcpListener::bind(("127.0.0.1", port)).await {
                break (udp, tcp);
            }
        };
        let addr = tcp.local_addr().unwrap();

        let mut endpoint = None;
        if quic {
            let crypto =
                quinn::crypto::rustls::QuicServerConfig::try_from(tls.as_ref().clone()).unwrap();
            let server_config = quinn::ServerConfig::with_crypto(Arc::new(crypto));
            let ep = quinn::Endpoint::new(
                quinn::EndpointConfig::default(),
                Some(server_config),
                udp,
                Arc::new(quinn::TokioRuntime),
            )
            .unwrap();
            let st = state.clone();
            let ep2 = ep.clone();
            tasks.push(tokio::spawn(async move {
                while let Some(incoming) = ep2.accept().await {
                    let st = st.clone();
                    tokio::spawn(async move {
                        let Ok(conn) = incoming.await else { return };
                        let Ok((send, recv)) = conn.accept_bi().await else {
                            return;
                        };
                        let mut exporter = [0u8; 32];
                        conn.export_keying_material(&mut exporter, EXPORTER_LABEL, b"")
                            .unwrap();
                        serve(recv, send, exporter, st).await;
                        conn.close(0u32.into(), b"");
                    });
                }
            }));
            endpoint = Some(ep);
        } else {
            drop(udp);
        }

        let st = state.clone();
        let acceptor = tokio_rustls::TlsAcceptor::from(tls);
        tasks.push(tokio::spawn(async move {
            loop {
                let Ok((sock, _)) = tcp.accept().await else {
                    continue;
                };
                let st = st.clone();
                let acceptor = acceptor.clone();
                tokio::spawn(async move {
                    let Ok(stream) = acceptor.accept(sock).await else {
                        return;
                    };
                    let exporter = stream
                        .get_ref()
                        .1
                        .export_keying_material([0u8; 32], EXPORTER_LABEL, Some(b""))
                        .unwrap();
                    let (r, w) = tokio::io::split(stream);
                    serve(r, w, exporter, st).await;
                });
            }
        }));
        Self {
            addr,
            ca_pem,
            state,
            tasks,
            endpoint,
        }
    }

    pub fn set_faults(&self, f: Faults) {
        self.state.lock().unwrap().faults = f;
    }

    /// Items waiting in `user`'s mailbox.
    pub fn mailbox_len(&self, user: &str) -> usize {
        self.state
            .lock()
            .unwrap()
            .mailboxes
            .get(user)
            .map_or(0, |m| m.len())
    }

    /// How often each id arrived in a `Send` (retries included).
    pub fn sends_seen(&self) -> Vec<ClientMsgId> {
        self.state.lock().unwrap().sends_seen.clone()
    }

    /// (user, "login"|"register") for every successful login.
    pub fn logins(&self) -> Vec<(String, &'static str)> {
        self.state.lock().unwrap().logins.clone()
    }

    /// Sends `Goaway` to `user`'s live session.
    pub fn goaway(&self, user: &str, after_ms: u32) {
        let st = self.state.lock().unwrap();
        if let Some((_, tx)) = st.sessions.get(user) {
            let _ = tx.send(
                Goaway {
                    reconnect_after_ms: after_ms,
                }
                .into(),
            );
        }
    }
}

async fn read_frame<R: AsyncRead + Unpin>(
    r: &mut R,
    dec: &mut FrameDecoder,
    buf: &mut [u8],
) -> Option<Frame> {
    loop {
        match dec.next_frame() {
            Ok(Some(f)) => return Some(f),
            Ok(None) => {}
            Err(_) => return None,
        }
        let n = r.read(buf).await.ok()?;
        if n == 0 {
            return None;
        }
        dec.feed(&buf[..n]);
    }
}

/// Marker frame telling the writer to close the connection abruptly.
fn is_kill(f: &Frame) -> bool {
    matches!(f, Frame::Error(e) if e.code == u16::MAX)
}

async fn serve<R, W>(mut r: R, mut w: W, exporter: [u8; 32], st: Arc<Mutex<State>>)
where
    R: AsyncRead + Unpin + std::marker::Send,
    W: AsyncWrite + Unpin + std::marker::Send + 'static,
{
    let mut dec = FrameDecoder::new(1 << 20);
    let mut buf = vec![0u8; 65536];
    let (tx, mut rx) = mpsc::unbounded_channel::<Frame>();
    let writer = tokio::spawn(async move {
        while let Some(f) = rx.recv().await {
            if is_kill(&f) {
                return;
            }
            let closing = matches!(f, Frame::Bye(_) | Frame::Error(_) | Frame::Goaway(_));
            if w.write_all(&encode_to_vec(&f).unwrap()).await.is_err() {
                return;
            }
            let _ = w.flush().await;
            if closing {
                tokio::time::sleep(Duration::from_millis(50)).await;
                let _ = w.shutdown().await;
                return;
            }
        }
    });

    let Some(Frame::Hello(_)) = read_frame(&mut r, &mut dec, &mut buf).await else {
        return;
    };
    let challenge: [u8; 32] = rand::random();
    let _ = tx.send(
        ServerHello {
            version: PROTOCOL_VERSION,
            challenge,
            max_frame: 1 << 20,
        }
        .into(),
    );
    let login = match read_frame(&mut r, &mut dec, &mut buf).await {
        Some(Frame::Register(reg)) => {
            let refusal = {
                let mut s = st.lock().unwrap();
                if !verify(
                    &reg.device_key,
                    &challenge,
                    &exporter,
                    &reg.user,
                    reg.device,
                    &reg.signature,
                ) {
                    Some(ErrorCode::AuthFailed)
                } else if s.faults.invite.is_some() && s.faults.invite != reg.invite {
                    Some(ErrorCode::InviteRequired)
                } else if validate_user_name(&reg.user).is_err() {
                    Some(ErrorCode::InvalidName)
                } else if s.keys.contains_key(&reg.user) {
                    Some(ErrorCode::UserTaken)
                } else {
                    s.keys.insert(reg.user.clone(), reg.device_key);
                    None
                }
            };
            match refusal {
                Some(code) => Err(code),
                None => Ok((reg.user, reg.device, "register")),
            }
        }
        Some(Frame::Login(l)) => {
            let key = st.lock().unwrap().keys.get(&l.user).copied();
            if key
                .is_some_and(|k| verify(&k, &challenge, &exporter, &l.user, l.device, &l.signature))
            {
                Ok((l.user, l.device, "login"))
            } else {
                Err(ErrorCode::AuthFailed)
            }
        }
        _ => return,
    };
    let (user, device, kind) = match login {
        Ok(l) => l,
        Err(code) => {
            let _ = tx.send(Error::new(code, code.name()).into());
            drop(tx);
            let _ = writer.await;
            return;
        }
    };
    let session_id;
    {
        let mut s = st.lock().unwrap();
        s.next_session += 1;
        session_id = s.next_session;
        s.logins.push((user.clone(), kind));
        let _ = tx.send(
            Welcome {
                user: user.clone(),
                device,
                server_time_ms: 1,
            }
            .into(),
        );
        if let Some(old) = s.sessions.insert(user.clone(), (session_id, tx.clone())) {
            let _ = old.1.send(
                Goaway {
                    reconnect_after_ms: 100,
                }
                .into(),
            );
        }
        if let Some(mb) = s.mailboxes.get(&user) {
            for (seq, item) in mb {
                let _ = tx.send(deliver(*seq, item));
            }
        }
    }

    while let Some(frame) = read_frame(&mut r, &mut dec, &mut buf).await {
        let mut s = st.lock().unwrap();
        match frame {
            Frame::Send(send) => {
                s.sends_seen.push(send.client_msg_id);
                if s.faults.rate_limit > 0 {
                    s.faults.rate_limit -= 1;
                    let _ = tx.send(
                        Rejected {
                            client_msg_id: send.client_msg_id,
                            code: ErrorCode::RateLimited.as_u16(),
                            message: "slow down".into(),
                        }
                        .into(),
                    );
                    continue;
                }
                if !s.keys.contains_key(&send.to) {
                    let _ = tx.send(
                        Rejected {
                            client_msg_id: send.client_msg_id,
                            code: ErrorCode::UnknownRecipient.as_u16(),
                            message: "no such user".into(),
                        }
                        .into(),
                    );
                    continue;
                }
                // Every user here has the one device 1.
                if send.envelopes.len() != 1 || send.envelopes[0].device != DeviceId(1) {
                    let _ = tx.send(
                        DeviceMismatch {
                            client_msg_id: send.client_msg_id,
                            current: vec![UserDevices {
                                user: send.to.clone(),
                                devices: vec![DeviceId(1)],
                            }],
                        }
                        .into(),
                    );
                    continue;
                }
                let duplicate = !s.stored.insert((user.clone(), send.client_msg_id));
                if !duplicate {
                    s.append(
                        &send.to,
                        Item {
                            from: user.clone(),
                            from_device: device,
                            client_msg_id: send.client_msg_id,
                            ts: 1000,
                            payload: Payload::Envelope(send.envelopes[0].envelope.clone()),
                        },
                    );
                }
                if s.faults.drop_after_store > 0 {
                    s.faults.drop_after_store -= 1;
                    let _ = tx.send(kill_frame());
                    break;
                }
                let _ = tx.send(
                    Sent {
                        client_msg_id: send.client_msg_id,
                        server_ts_ms: 1000,
                        duplicate,
                    }
                    .into(),
                );
            }
            Frame::AckDelivery(a) => {
                let mb = s.mailboxes.entry(user.clone()).or_default();
                let rest = mb.split_off(&(a.up_to.0 + 1));
                let done = std::mem::replace(mb, rest);
                for (_, item) in done {
                    if let Payload::Envelope(_) = item.payload {
                        let receipt = Item {
                            from: user.clone(),
                            from_device: device,
                            client_msg_id: item.client_msg_id,
                            ts: 2000,
                            payload: Payload::Delivered,
                        };
                        s.append(&item.from, receipt);
                    }
                }
            }
            Frame::SubscribePresence(p) => {
                let state = if s.sessions.contains_key(&p.user) {
                    PresenceState::Online
                } else {
                    PresenceState::Offline
                };
                let _ = tx.send(
                    Presence {
                        user: p.user,
                        state,
                    }
                    .into(),
                );
            }
            Frame::Typing(t) => {
                if let Some((_, other)) = s.sessions.get(&t.to) {
                    let _ = other.send(
                        TypingNotice {
                            from: user.clone(),
                            typing: t.typing,
                        }
                        .into(),
                    );
                }
            }
            Frame::Ping(p) => {
                let _ = tx.send(Pong { nonce: p.nonce }.into());
            }
            Frame::Bye(_) => {
                let _ = tx.send(Bye {}.into());
                break;
            }
            _ => {}
        }
    }
    {
        let mut s = st.lock().unwrap();
        if s.sessions
            .get(&user)
            .is_some_and(|(id, _)| *id == session_id)
        {
            s.sessions.remove(&user);
        }
    }
    drop(tx);
    let _ = writer.await;
}

fn kill_frame() -> Frame {
    Error {
        code: u16::MAX,
        message: String::new(),
    }
    .into()
}

fn verify(
    key: &[u8; 32],
    challenge: &[u8; 32],
    exporter: &[u8; 32],
    user: &str,
    device: DeviceId,
    sig: &[u8; 64],
) -> bool {
    let Ok(vk) = VerifyingKey::from_bytes(key) else {
        return false;
    };
    vk.verify(
        &login_transcript(challenge, exporter, user, device),
        &Signature::from_bytes(sig),
    )
    .is_ok()
}

/// A client configuration for `user` against `edge` (auto-ack on, fast reconnects).
pub fn config(edge: &FakeEdge, identity: missive_client::Identity) -> missive_client::ClientConfig {
    let mut cfg = missive_client::ClientConfig::new(edge.addr, edge.ca_pem.clone(), identity);
    cfg.reconnect.initial = Duration::from_millis(20);
    cfg.reconnect.max = Duration::from_millis(200);
    cfg
}

/// Registers a fresh identity for `user` and returns it.
pub async fn registered(edge: &FakeEdge, user: &str) -> missive_client::Identity {
    let id = missive_client::Identity::generate(user, DeviceId(1));
    missive_client::register(&config(edge, id.clone()), None)
        .await
        .unwrap();
    id
}

/// Waits (at most 5 s) for the first event matching `pred`, skipping others.
pub async fn wait_for(
    events: &mut missive_client::EventStream,
    what: &str,
    mut pred: impl FnMut(&missive_client::Event) -> bool,
) -> missive_client::Event {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
    loop {
        match tokio::time::timeout_at(deadline, events.next()).await {
            Ok(Some(e)) if pred(&e) => return e,
            Ok(Some(_)) => {}
            Ok(None) => panic!("event stream ended while waiting for {what}"),
            Err(_) => panic!("timed out waiting for {what}"),
        }
    }
}
