//! coturn's own tools (`turnutils_stunclient`, `turnutils_uclient`, `turnutils_peer`; Debian
//! package `coturn`) driven against the edge's relay. A compact version of what
//! `relay/tests/coturn_tools_interop.rs` does (test crates cannot share code). A missing
//! tool fails the test with the install command; it never passes silently.

use std::io::Read;
use std::net::UdpSocket;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// Hard bound on every tool run.
pub const TOOL_TIMEOUT: Duration = Duration::from_secs(90);

/// The tool's path on `PATH`.
pub fn tool(name: &str) -> PathBuf {
    let path = std::env::var_os("PATH").unwrap_or_default();
    std::env::split_paths(&path)
        .map(|dir| dir.join(name))
        .find(|p| p.is_file())
        .unwrap_or_else(|| {
            panic!(
                "`{name}` is not installed: the relay tests need Debian's coturn tools \
                 (apt-get install -y coturn; .ci/run installs it when missing)"
            )
        })
}

/// Runs a tool to completion within [`TOOL_TIMEOUT`] (killed and failed past it); returns
/// whether it succeeded and its stdout+stderr.
pub fn run(cmd: &mut Command) -> (bool, String) {
    let mut child = cmd
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("tool starts");
    // Readers on their own threads, so a chatty tool never blocks on a full pipe.
    let drain = |mut r: Box<dyn Read + Send>| {
        std::thread::spawn(move || {
            let mut s = String::new();
            let _ = r.read_to_string(&mut s);
            s
        })
    };
    let out = drain(Box::new(child.stdout.take().expect("piped")));
    let err = drain(Box::new(child.stderr.take().expect("piped")));
    let deadline = Instant::now() + TOOL_TIMEOUT;
    let status = loop {
        if let Some(s) = child.try_wait().expect("wait") {
            break s;
        }
        if Instant::now() >= deadline {
            let _ = child.kill();
            let _ = child.wait();
            panic!("tool did not finish within {TOOL_TIMEOUT:?}");
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    let mut text = out.join().unwrap_or_default();
    text.push_str(&err.join().unwrap_or_default());
    (status.success(), text)
}

/// Runs a [`uclient`] command of `sessions` × `msgs` to its end and checks that every
/// message came back (none lost); how many were sent.
pub fn relayed_without_loss(cmd: &mut Command, sessions: u64, msgs: u64) -> u64 {
    let (ok, out) = run(cmd);
    assert!(ok, "uclient failed:\n{out}");
    let (sent, recv, lost) = uclient_totals(&out);
    assert_eq!(sent, sessions * msgs, "{out}");
    assert_eq!((recv, lost), (sent, 0), "{out}");
    sent
}

/// `turnutils_uclient` on loopback against the relay at `port` with these credentials:
/// `sessions` allocations sending `msgs` 100-byte messages each, to `turnutils_peer` at
/// `peer_port` when given, else client to client (`-y`).
pub fn uclient(
    port: u16,
    user: &str,
    pass: &str,
    peer_port: Option<u16>,
    sessions: u64,
    msgs: u64,
) -> Command {
    let mut cmd = Command::new(tool("turnutils_uclient"));
    cmd.args(["-p", &port.to_string(), "-u", user, "-w", pass]);
    match peer_port {
        Some(p) => cmd.args(["-e", "127.0.0.1", "-r", &p.to_string()]),
        None => cmd.arg("-y"),
    };
    cmd.args([
        "-c",
        "-m",
        &sessions.to_string(),
        "-n",
        &msgs.to_string(),
        "-l",
        "100",
        "-z",
        "5",
        "127.0.0.1",
    ]);
    cmd
}

/// [`uclient`] with the client-to-relay leg over TCP (`-t`); peers are still reached over
/// UDP. Payloads are 173 bytes, not 100, so every ChannelData message needs the padding to 4
/// bytes that TCP framing requires (RFC 8656 §12.5).
pub fn uclient_over_tcp(
    port: u16,
    user: &str,
    pass: &str,
    peer_port: Option<u16>,
    sessions: u64,
    msgs: u64,
) -> Command {
    let mut cmd = Command::new(tool("turnutils_uclient"));
    cmd.arg("-t");
    let base = uclient(port, user, pass, peer_port, sessions, msgs);
    let mut after_len = false;
    for arg in base.get_args() {
        cmd.arg(if after_len { "173".as_ref() } else { arg });
        after_len = arg == "-l";
    }
    cmd
}

/// The totals `turnutils_uclient` prints at the end: (sent, received, lost).
pub fn uclient_totals(output: &str) -> (u64, u64, u64) {
    let number_after = |line: &str, key: &str| -> Option<u64> {
        let rest = &line[line.find(key)? + key.len()..];
        let digits: String = rest.chars().take_while(|c| c.is_ascii_digit()).collect();
        digits.parse().ok()
    };
    let totals = output
        .lines()
        .rev()
        .find(|l| l.contains("start_mclient: tot_send_msgs="))
        .unwrap_or_else(|| panic!("no totals in uclient output:\n{output}"));
    let sent = number_after(totals, "tot_send_msgs=").expect("sent count");
    let recv = number_after(totals, "tot_recv_msgs=").expect("received count");
    let lost = output
        .lines()
        .find_map(|l| number_after(l, "Total lost packets "))
        .unwrap_or_else(|| panic!("no loss line in uclient output:\n{output}"));
    (sent, recv, lost)
}

/// `turnutils_peer` (a UDP echo peer) on a free loopback port; killed on drop.
pub struct Peer {
    child: Child,
    /// Its UDP port.
    pub port: u16,
}

impl Peer {
    /// Starts the peer and waits (bounded) until it holds its port.
    pub fn start() -> Self {
        let port = {
            let s = UdpSocket::bind("127.0.0.1:0").expect("bind");
            s.local_addr().expect("addr").port()
        };
        let child = Command::new(tool("turnutils_peer"))
            .args(["-L", "127.0.0.1", "-p", &port.to_string()])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("turnutils_peer starts");
        let deadline = Instant::now() + Duration::from_secs(10);
        // Binding its port fails once the peer holds it.
        while UdpSocket::bind(("127.0.0.1", port)).is_ok() {
            assert!(
                Instant::now() < deadline,
                "turnutils_peer did not bind {port}"
            );
            std::thread::sleep(Duration::from_millis(20));
        }
        Self { child, port }
    }
}

impl Drop for Peer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// An edge with its relay on a free loopback port, loopback peers allowed (the test's peers
/// and clients are on 127.0.0.1) and `secret` as its TURN secret.
pub fn start_relay_edge(dir: &std::path::Path, secret: &str) -> super::Edge {
    let secret_file = dir.join("turn-secret.txt");
    std::fs::write(&secret_file, format!("{secret}\n")).unwrap();
    let config = dir.join("edge.toml");
    std::fs::write(
        &config,
        format!(
            "[relay]\nallow_loopback_peers = true\nsecret_file = {:?}\n",
            secret_file.display().to_string()
        ),
    )
    .unwrap();
    let edge = super::Edge::start(
        &dir.join("edge"),
        &[
            "--config",
            config.to_str().unwrap(),
            "--relay-listen",
            "127.0.0.1:0",
        ],
    );
    assert!(edge.relay.is_some(), "ready line names the relay");
    edge
}

/// A `missive_relay_<name>` counter of `edge`.
pub fn relay_metric(edge: &super::Edge, name: &str) -> f64 {
    edge.metric(&format!("missive_relay_{name} "))
}
