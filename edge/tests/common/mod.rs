//! Test harness: runs the real `missive-edge` binary on a temp data dir and real sockets.
#![allow(dead_code, unreachable_pub, missing_docs)]

pub mod cli;
pub mod push_gateway;
pub mod turn_tools;
use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

/// A running edge process.
pub struct Edge {
    child: Child,
    pub quic: SocketAddr,
    pub tcp: Option<SocketAddr>,
    pub cert: PathBuf,
    pub metrics: Option<SocketAddr>,
    /// The HTTPS media listener, when started with `--media-listen`.
    pub media: Option<SocketAddr>,
    /// The STUN/TURN relay's UDP address, when started with `--relay-listen`.
    pub relay: Option<SocketAddr>,
    pub data_dir: PathBuf,
    /// Where the harness keeps the edge's stderr (the data dir unless said otherwise).
    log_dir: PathBuf,
    args: Vec<String>,
    envs: Vec<(String, String)>,
}

/// The flags every test edge gets (data dir, free loopback ports), then `extra`.
fn base_args(data_dir: &Path, extra: &[&str]) -> Vec<String> {
    let mut args: Vec<String> = vec![
        "--data-dir".into(),
        data_dir.display().to_string(),
        "--listen".into(),
        "127.0.0.1:0".into(),
        "--metrics-listen".into(),
        "127.0.0.1:0".into(),
    ];
    args.extend(extra.iter().map(|s| s.to_string()));
    args
}

pub fn edge_bin() -> &'static str {
    env!("CARGO_BIN_EXE_missive-edge")
}

impl Edge {
    /// Starts an edge on `127.0.0.1:0` (UDP and TCP on the same free port) with extra flags.
    pub fn start(data_dir: &Path, extra: &[&str]) -> Self {
        Self::start_with_env(data_dir, extra, &[])
    }

    /// Starts an edge whose data dir `parent/data` does not exist yet: the edge creates it.
    /// The harness keeps the logs in `parent`.
    pub fn start_fresh(parent: &Path, extra: &[&str]) -> Self {
        let data_dir = parent.join("data");
        let args = base_args(&data_dir, extra);
        Self::spawn_logging_to(parent, &data_dir, args, Vec::new())
    }

    /// `GET /metrics` and the value of the first sample line starting with `line_start`
    /// (name and labels, then a space).
    pub fn metric(&self, line_start: &str) -> f64 {
        let (_, body) = self.http_get("/metrics");
        body.lines()
            .find_map(|l| l.strip_prefix(line_start))
            .and_then(|v| v.trim().parse().ok())
            .unwrap_or_else(|| panic!("no metric {line_start} in:\n{body}"))
    }

    /// Like [`Edge::start`] with extra environment variables (e.g. `NOTIFY_SOCKET`).
    pub fn start_with_env(data_dir: &Path, extra: &[&str], envs: &[(&str, &str)]) -> Self {
        let args = base_args(data_dir, extra);
        let envs = envs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        Self::spawn(data_dir, args, envs)
    }

    fn spawn(data_dir: &Path, args: Vec<String>, envs: Vec<(String, String)>) -> Self {
        std::fs::create_dir_all(data_dir).unwrap();
        Self::spawn_logging_to(data_dir, data_dir, args, envs)
    }

    fn spawn_logging_to(
        log_dir: &Path,
        data_dir: &Path,
        args: Vec<String>,
        envs: Vec<(String, String)>,
    ) -> Self {
        std::fs::create_dir_all(log_dir).unwrap();
        let mut child = Command::new(edge_bin())
            .args(&args)
            .env("RUST_LOG", "info")
            // After the default, so a test can ask for more (e.g. `RUST_LOG`).
            .envs(envs.iter().map(|(k, v)| (k.as_str(), v.as_str())))
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("spawn missive-edge");
        let stdout = child.stdout.take().unwrap();
        let stderr = child.stderr.take().unwrap();
        let (tx, rx) = mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                if tx.send(line).is_err() {
                    break;
                }
            }
        });
        let log_path = log_dir.join(format!("edge-{}.log", child.id()));
        std::thread::spawn(move || {
            use std::io::Write;
            let mut f = std::fs::File::create(log_path).ok();
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                if let Some(f) = f.as_mut() {
                    let _ = writeln!(f, "{line}");
                }
            }
        });
        let deadline = Instant::now() + Duration::from_secs(30);
        let ready = loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match rx.recv_timeout(left) {
                Ok(line) if line.starts_with("missive-edge ready ") => break line,
                Ok(_) => continue,
                Err(_) => {
                    let _ = child.kill();
                    panic!("edge did not become ready: {:?}", child.wait());
                }
            }
        };
        let field = |name: &str| -> String {
            ready
                .split(' ')
                .find_map(|kv| kv.strip_prefix(&format!("{name}=")))
                .unwrap_or_else(|| panic!("ready line lacks {name}: {ready}"))
                .to_owned()
        };
        let quic: SocketAddr = field("quic").parse().unwrap();
        let tcp = field("tcp").parse().ok();
        let metrics = field("metrics").parse().ok();
        let media = field("media").parse().ok();
        // Optional, so the harness also reads the line of an edge built before the relay.
        let relay = ready
            .split(' ')
            .find_map(|kv| kv.strip_prefix("relay="))
            .and_then(|v| v.parse().ok());
        let cert = PathBuf::from(field("cert"));
        Self {
            child,
            quic,
            tcp,
            cert,
            metrics,
            media,
            relay,
            data_dir: data_dir.to_owned(),
            log_dir: log_dir.to_owned(),
            args,
            envs,
        }
    }

    pub fn ca_pem(&self) -> Vec<u8> {
        std::fs::read(&self.cert).unwrap()
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// SIGKILL: no chance to flush anything.
    pub fn kill9(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    /// SIGTERM and wait (bounded) for the exit status.
    pub fn terminate(&mut self) -> std::process::ExitStatus {
        let _ = Command::new("kill")
            .args(["-TERM", &self.child.id().to_string()])
            .status();
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            if let Some(s) = self.child.try_wait().unwrap() {
                return s;
            }
            if Instant::now() >= deadline {
                let logs = self.logs();
                let tail: Vec<&str> = logs.lines().rev().take(40).collect();
                panic!(
                    "edge did not exit after SIGTERM; last log lines (newest first):\n{}",
                    tail.join("\n")
                );
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Starts the edge again on the same data dir and the same ports.
    pub fn restart(&mut self) {
        let mut args = self.args.clone();
        if let Some(i) = args.iter().position(|a| a == "--listen") {
            args[i + 1] = self.quic.to_string();
        }
        if let Some(tcp) = self.tcp {
            args.push("--tcp-listen".into());
            args.push(tcp.to_string());
        }
        let fresh = Self::spawn_logging_to(&self.log_dir, &self.data_dir, args, self.envs.clone());
        let old = std::mem::replace(self, fresh);
        drop(old);
    }

    /// Sends a signal by name (e.g. "HUP").
    pub fn signal(&self, name: &str) {
        let ok = Command::new("kill")
            .args([&format!("-{name}"), &self.child.id().to_string()])
            .status()
            .unwrap()
            .success();
        assert!(ok, "kill -{name} failed");
    }

    /// `GET path` on the operations endpoint: (status, body).
    pub fn http_get(&self, path: &str) -> (u16, String) {
        use std::io::{Read, Write};
        let addr = self.metrics.expect("metrics endpoint enabled");
        let mut s = std::net::TcpStream::connect(addr).unwrap();
        s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
        write!(
            s,
            "GET {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"
        )
        .unwrap();
        let mut out = String::new();
        s.read_to_string(&mut out).unwrap();
        let status = out
            .split(' ')
            .nth(1)
            .and_then(|c| c.parse().ok())
            .unwrap_or(0);
        let body = out.split("\r\n\r\n").nth(1).unwrap_or("").to_owned();
        (status, body)
    }

    /// Everything the edge logged so far (stderr), across restarts.
    pub fn logs(&self) -> String {
        let mut out = String::new();
        if let Ok(rd) = std::fs::read_dir(&self.log_dir) {
            for e in rd.flatten() {
                if e.file_name().to_string_lossy().starts_with("edge-") {
                    out.push_str(&std::fs::read_to_string(e.path()).unwrap_or_default());
                }
            }
        }
        out
    }
}

impl Drop for Edge {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Waits for `cond` with a timeout, polling (no sleeps as synchronisation elsewhere).
pub async fn eventually<F: FnMut() -> bool>(what: &str, timeout: Duration, mut cond: F) {
    let deadline = Instant::now() + timeout;
    while !cond() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// A raw protocol connection (for tests that must send what a well-behaved SDK never would).
pub struct Raw {
    pub reader: missive_client::transport::TransportReader,
    pub writer: missive_client::transport::TransportWriter,
    pub closer: missive_client::transport::TransportCloser,
    pub exporter: [u8; 32],
    decoder: missive_proto::FrameDecoder,
    /// `KeysLow` notices the edge sent (a device without keys gets one after each login);
    /// `recv` sets them aside here so that tests of other frames need not expect them.
    pub keys_low: Vec<missive_proto::KeysLow>,
}

impl Raw {
    pub async fn connect(edge: &Edge, force_tcp: bool) -> Self {
        let cfg = transport_config(edge, force_tcp);
        let t = missive_client::transport::Transport::connect(&cfg)
            .await
            .expect("raw connect");
        Self::from_transport(t)
    }

    /// A raw connection over an established transport.
    pub fn from_transport(t: missive_client::transport::Transport) -> Self {
        let exporter = t.exporter();
        let (reader, writer, closer) = t.into_parts();
        Self {
            reader,
            writer,
            closer,
            exporter,
            decoder: missive_proto::FrameDecoder::new(16 << 20),
            keys_low: Vec::new(),
        }
    }

    /// The connection's halves, with what was read but not yet decoded.
    pub fn into_halves(
        self,
    ) -> (
        missive_client::transport::TransportReader,
        missive_client::transport::TransportWriter,
        missive_proto::FrameDecoder,
    ) {
        (self.reader, self.writer, self.decoder)
    }

    pub async fn send_bytes(&mut self, bytes: &[u8]) {
        use tokio::io::AsyncWriteExt;
        self.writer.write_all(bytes).await.unwrap();
        self.writer.flush().await.unwrap();
    }

    pub async fn send(&mut self, frame: missive_proto::Frame) {
        let bytes = missive_proto::encode_to_vec(&frame).unwrap();
        self.send_bytes(&bytes).await;
    }

    /// Next frame, or `None` when the server closed the connection. Panics when neither
    /// happens within 10 s: silence is not a close.
    pub async fn recv(&mut self) -> Option<missive_proto::Frame> {
        match self.recv_within(Duration::from_secs(10)).await {
            Received::Frame(f) => Some(f),
            Received::Closed => None,
            Received::Silence => panic!("neither a frame nor a close within 10 s"),
        }
    }

    /// What arrives within `within`: a frame, the end of the stream, or nothing.
    pub async fn recv_within(&mut self, within: Duration) -> Received {
        use tokio::io::AsyncReadExt;
        let deadline = tokio::time::Instant::now() + within;
        let mut buf = [0u8; 4096];
        loop {
            match self.decoder.next_frame().expect("server sent a bad frame") {
                Some(missive_proto::Frame::KeysLow(k)) => {
                    self.keys_low.push(k);
                    continue;
                }
                Some(f) => return Received::Frame(f),
                None => {}
            }
            match tokio::time::timeout_at(deadline, self.reader.read(&mut buf)).await {
                Ok(Ok(0)) | Ok(Err(_)) => return Received::Closed,
                Err(_) => return Received::Silence,
                Ok(Ok(n)) => self.decoder.feed(&buf[..n]),
            }
        }
    }

    /// The next `n` mailbox items the edge delivers (other frames are skipped). Panics if
    /// the edge closes first.
    pub async fn deliveries(&mut self, n: usize) -> Vec<missive_proto::Deliver> {
        let mut out = Vec::with_capacity(n);
        while out.len() < n {
            match self.recv().await {
                Some(missive_proto::Frame::Deliver(d)) => out.push(d),
                Some(_) => {}
                None => panic!("the edge closed after {} of {n} deliveries", out.len()),
            }
        }
        out
    }

    /// Logs in as `identity` on this connection and waits for `Welcome`.
    pub async fn login(&mut self, identity: &missive_client::Identity) {
        use ed25519_dalek::Signer;
        let challenge = self.hello().await;
        let transcript = missive_proto::login_transcript(
            &challenge,
            &self.exporter,
            &identity.user,
            identity.device,
        );
        self.send(
            missive_proto::Login {
                user: identity.user.clone(),
                device: identity.device,
                signature: identity.signing_key.sign(&transcript).to_bytes(),
            }
            .into(),
        )
        .await;
        match self.recv().await {
            Some(missive_proto::Frame::Welcome(_)) => {}
            other => panic!(
                "logging in {}: expected Welcome, got {other:?}",
                identity.user
            ),
        }
    }

    /// Registers `name` (device 1, a key derived from the name) on this connection and
    /// waits for `Welcome`.
    pub async fn register(&mut self, name: &str) {
        use ed25519_dalek::Signer;
        let challenge = self.hello().await;
        let key = test_key(name);
        let device = missive_proto::DeviceId(1);
        let transcript = missive_proto::login_transcript(&challenge, &self.exporter, name, device);
        self.send(
            missive_proto::Register {
                user: name.into(),
                device,
                device_key: key.verifying_key().to_bytes(),
                invite: None,
                signature: key.sign(&transcript).to_bytes(),
            }
            .into(),
        )
        .await;
        match self.recv().await {
            Some(missive_proto::Frame::Welcome(_)) => {}
            other => panic!("registering {name}: expected Welcome, got {other:?}"),
        }
    }

    /// Sends Hello and returns the challenge.
    pub async fn hello(&mut self) -> [u8; 32] {
        self.server_hello().await.challenge
    }

    /// Sends Hello and returns the server's answer.
    pub async fn server_hello(&mut self) -> missive_proto::ServerHello {
        self.try_server_hello(Duration::from_secs(10))
            .await
            .unwrap_or_else(|other| panic!("expected ServerHello, got {other}"))
    }

    /// Sends Hello; the `ServerHello` when it comes within `within`, or what came instead.
    pub async fn try_server_hello(
        &mut self,
        within: Duration,
    ) -> Result<missive_proto::ServerHello, String> {
        self.send(
            missive_proto::Hello {
                min_version: missive_proto::MIN_PROTOCOL_VERSION,
                max_version: missive_proto::PROTOCOL_VERSION,
                client: "raw-test".into(),
            }
            .into(),
        )
        .await;
        match self.recv_within(within).await {
            Received::Frame(missive_proto::Frame::ServerHello(h)) => Ok(h),
            other => Err(format!("{other:?}")),
        }
    }

    /// Reads until an `Error` frame and returns its code; asserts the connection then ends
    /// (end of stream, not silence) within [`CLOSE_WITHIN`].
    pub async fn expect_error_then_close(&mut self) -> missive_proto::ErrorCode {
        loop {
            match self.recv().await {
                Some(missive_proto::Frame::Error(e)) => {
                    self.expect_close().await;
                    return missive_proto::ErrorCode::from_u16(e.code).expect("known code");
                }
                Some(_) => continue,
                None => panic!("connection closed without an Error frame"),
            }
        }
    }

    /// Asserts that the server ends the stream within [`CLOSE_WITHIN`] (frames before the
    /// end are skipped).
    pub async fn expect_close(&mut self) {
        let deadline = tokio::time::Instant::now() + CLOSE_WITHIN;
        loop {
            let left = deadline.saturating_duration_since(tokio::time::Instant::now());
            match self.recv_within(left).await {
                Received::Closed => return,
                Received::Frame(_) => continue,
                Received::Silence => panic!("connection still open {CLOSE_WITHIN:?} after its end"),
            }
        }
    }
}

/// How a test connects to `edge` on one transport.
pub fn transport_config(
    edge: &Edge,
    force_tcp: bool,
) -> missive_client::transport::TransportConfig {
    missive_client::transport::TransportConfig {
        server: if force_tcp {
            edge.tcp.unwrap()
        } else {
            edge.quic
        },
        server_name: "localhost".into(),
        ca_pem: edge.ca_pem(),
        quic_timeout: Duration::from_secs(3),
        force_tcp,
        quic_endpoint: None,
    }
}

/// How soon a connection must end after the frame that ends it.
pub const CLOSE_WITHIN: Duration = Duration::from_secs(3);

/// What [`Raw::recv_within`] saw.
#[derive(Debug)]
pub enum Received {
    /// A frame.
    Frame(missive_proto::Frame),
    /// The server ended the stream (or the connection).
    Closed,
    /// Nothing arrived in time.
    Silence,
}

/// The signing key the raw helpers use for `name`.
pub fn test_key(name: &str) -> ed25519_dalek::SigningKey {
    let mut seed = [0u8; 32];
    for (i, b) in name.bytes().enumerate() {
        seed[i % 32] ^= b.wrapping_add(i as u8);
    }
    seed[31] ^= 0x5a;
    ed25519_dalek::SigningKey::from_bytes(&seed)
}

/// Writes `toml` to a config file in `dir` and returns the `--config` flag pair for it.
pub fn config_file(dir: &Path, toml: &str) -> [String; 2] {
    let path = dir.join("edge.toml");
    std::fs::write(&path, toml).unwrap();
    ["--config".into(), path.display().to_string()]
}

/// Registers `name` (device 1) and connects it with the SDK.
pub async fn sdk_user(
    edge: &Edge,
    name: &str,
) -> (
    missive_client::Client,
    missive_client::EventStream,
    missive_client::ClientConfig,
) {
    let identity = missive_client::Identity::generate(name, missive_proto::DeviceId(1));
    let cfg = missive_client::ClientConfig::new(edge.quic, edge.ca_pem(), identity);
    missive_client::register(&cfg, None)
        .await
        .expect("register");
    let (client, events) = missive_client::Client::connect(cfg.clone())
        .await
        .expect("connect");
    (client, events, cfg)
}

/// Registers `name` (device 1) and connects it with the SDK, on `endpoint` if given (else a
/// socket of its own, bound for the edge's address).
pub async fn sdk_user_on(
    edge: &Edge,
    name: &str,
    endpoint: Option<missive_client::QuicEndpoint>,
) -> missive_client::Client {
    let identity = missive_client::Identity::generate(name, missive_proto::DeviceId(1));
    let mut cfg = missive_client::ClientConfig::new(edge.quic, edge.ca_pem(), identity);
    cfg.quic_endpoint = endpoint;
    missive_client::register(&cfg, None)
        .await
        .expect("register");
    missive_client::Client::connect(cfg)
        .await
        .expect("connect")
        .0
}

/// `len` pseudo-random bytes (xorshift from `seed`) written to `path`, as an upload source
/// named by their BLAKE3 hash, expected to be downloaded once.
pub fn random_upload(
    path: &Path,
    len: usize,
    seed: u32,
) -> missive_client::transfer::upload::UploadSource {
    let mut x = 0x9e37_79b9_u32 ^ seed;
    let data: Vec<u8> = (0..len)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 17;
            x ^= x << 5;
            x as u8
        })
        .collect();
    std::fs::write(path, &data).expect("write the file");
    missive_client::transfer::upload::UploadSource {
        path: path.to_owned(),
        blob: missive_proto::BlobId(*blake3::hash(&data).as_bytes()),
        size: len as u64,
        downloads: 1,
    }
}

/// Waits (bounded) for the first event matching `pred`, skipping others.
pub async fn next_matching<F>(
    events: &mut missive_client::EventStream,
    timeout: Duration,
    mut pred: F,
) -> missive_client::Event
where
    F: FnMut(&missive_client::Event) -> bool,
{
    let deadline = tokio::time::Instant::now() + timeout;
    loop {
        match tokio::time::timeout_at(deadline, events.next()).await {
            Ok(Some(e)) if pred(&e) => return e,
            Ok(Some(_)) => continue,
            Ok(None) => panic!("event stream ended"),
            Err(_) => panic!("no matching event within {timeout:?}"),
        }
    }
}

/// Collects `n` text messages (skipping other events), bounded by `timeout`.
pub async fn collect_messages(
    events: &mut missive_client::EventStream,
    n: usize,
    timeout: Duration,
) -> Vec<(String, missive_proto::ClientMsgId, String)> {
    let mut out = Vec::new();
    while out.len() < n {
        if let missive_client::Event::Message {
            from,
            client_msg_id,
            text,
            ..
        } = next_matching(events, timeout, |e| {
            matches!(e, missive_client::Event::Message { .. })
        })
        .await
        {
            out.push((from, client_msg_id, text));
        }
    }
    out
}

pub fn text(s: &str) -> missive_client::Content {
    missive_client::Content::Text(s.to_owned())
}

/// What one `missive-edge … admin …` run printed.
pub struct AdminRun {
    pub ok: bool,
    pub stdout: String,
    pub stderr: String,
}

impl std::fmt::Debug for AdminRun {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "ok={} stdout:\n{}stderr:\n{}",
            self.ok, self.stdout, self.stderr
        )
    }
}

/// Runs `missive-edge [global args] admin ARGS` to completion (bounded by the action itself).
pub fn admin(global: &[&std::ffi::OsStr], args: &[&str]) -> AdminRun {
    let out = Command::new(edge_bin())
        .args(global)
        .arg("admin")
        .args(args)
        .env("RUST_LOG", "warn")
        .output()
        .expect("run missive-edge admin");
    AdminRun {
        ok: out.status.success(),
        stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
    }
}

/// The copies of a message for a recipient with the one device 1 (the raw tests' users).
pub fn one_copy(envelope: Vec<u8>) -> Vec<missive_proto::DeviceEnvelope> {
    vec![missive_proto::DeviceEnvelope {
        device: missive_proto::DeviceId(1),
        envelope,
    }]
}
