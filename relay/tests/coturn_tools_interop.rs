//! Interop with tools nobody here wrote: coturn's `turnutils_stunclient`,
//! `turnutils_uclient` and `turnutils_peer` (Debian package `coturn`) against our relay,
//! started in-process on real sockets on loopback. A missing tool fails the test with the
//! install command (CI installs it in `.ci/run`); it never passes silently.

use missive_relay::{RelayConfig, RelayHandle, RelayServer, Secret};
use std::net::{SocketAddr, UdpSocket};
use std::path::PathBuf;
use std::process::Stdio;
use std::time::Duration;
use tokio::process::Command;

const SECRET: &str = "interop-secret";
/// Hard bound on every tool run.
const TOOL_TIMEOUT: Duration = Duration::from_secs(90);

fn tool(name: &str) -> PathBuf {
    let path = std::env::var_os("PATH").unwrap_or_default();
    std::env::split_paths(&path)
        .map(|dir| dir.join(name))
        .find(|p| p.is_file())
        .unwrap_or_else(|| {
            panic!(
                "`{name}` is not installed: these interop tests need Debian's coturn tools \
                 (apt-get install -y coturn; .ci/run installs it when missing)"
            )
        })
}

async fn start_relay() -> RelayHandle {
    let config = RelayConfig {
        listen: "127.0.0.1:0".parse().expect("addr"),
        relay_ip: Some("127.0.0.1".parse().expect("ip")),
        min_port: 40_000,
        max_port: 59_999,
        secret: Secret::new(SECRET),
        allow_loopback_peers: true,
        max_allocations_per_user: 100,
        ..RelayConfig::default()
    };
    RelayServer::start(config).await.expect("relay starts")
}

/// Runs a tool to completion within [`TOOL_TIMEOUT`]; returns its stdout+stderr.
async fn run(cmd: &mut Command) -> (bool, String) {
    let child = cmd
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .expect("tool starts");
    let out = tokio::time::timeout(TOOL_TIMEOUT, child.wait_with_output())
        .await
        .expect("tool finished within the timeout")
        .expect("tool output");
    let mut text = String::from_utf8_lossy(&out.stdout).into_owned();
    text.push_str(&String::from_utf8_lossy(&out.stderr));
    (out.status.success(), text)
}

/// The totals `turnutils_uclient` prints at the end: (sent, received, lost).
fn uclient_totals(output: &str) -> (u64, u64, u64) {
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

fn free_udp_port() -> u16 {
    let s = UdpSocket::bind("127.0.0.1:0").expect("bind");
    s.local_addr().expect("addr").port()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stunclient_gets_its_real_source_address() {
    let stunclient = tool("turnutils_stunclient");
    let relay = start_relay().await;
    let port = relay.local_addr().port().to_string();
    // From 127.0.0.2 (any loopback address reaches 127.0.0.1): the answer must carry that
    // address, not one the relay made up.
    let (ok, out) =
        run(Command::new(&stunclient).args(["-p", &port, "-L", "127.0.0.2", "127.0.0.1"])).await;
    assert!(ok, "stunclient failed:\n{out}");
    let mapped: SocketAddr = out
        .lines()
        .find_map(|l| l.split("UDP reflexive addr: ").nth(1))
        .unwrap_or_else(|| panic!("no reflexive address in:\n{out}"))
        .trim()
        .parse()
        .expect("an address");
    assert_eq!(mapped.ip().to_string(), "127.0.0.2", "{out}");
    assert_ne!(mapped.port(), 0);
    assert_ne!(mapped.port(), relay.local_addr().port());
    assert!(relay.stats().bindings >= 1);
    relay.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn uclient_client_to_client_with_the_rest_secret_loses_nothing() {
    let uclient = tool("turnutils_uclient");
    let relay = start_relay().await;
    let port = relay.local_addr().port().to_string();
    let (sessions, msgs) = (10u64, 200u64);
    let (ok, out) = run(Command::new(&uclient).args([
        "-p",
        &port,
        "-W",
        SECRET,
        "-y",
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
    ]))
    .await;
    assert!(ok, "uclient failed:\n{out}");
    let (sent, recv, lost) = uclient_totals(&out);
    assert_eq!(sent, sessions * msgs, "{out}");
    assert_eq!((recv, lost), (sent, 0), "{out}");
    // Every message crossed our relay twice: into one allocation and out of the other. Both
    // are allocations of this relay, so each was handed over in the process.
    let stats = relay.stats();
    assert!(stats.packets_to_peers >= sent, "{stats:?}");
    assert!(stats.packets_within >= sent, "{stats:?}");
    assert!(stats.packets_to_clients >= sent, "{stats:?}");
    assert!(stats.allocations_created >= sessions, "{stats:?}");
    relay.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn uclient_to_turnutils_peer_with_minted_credentials_loses_nothing() {
    let uclient = tool("turnutils_uclient");
    let peer_bin = tool("turnutils_peer");
    let relay = start_relay().await;
    let port = relay.local_addr().port().to_string();
    let peer_port = free_udp_port().to_string();
    let mut peer = Command::new(&peer_bin)
        .args(["-L", "127.0.0.1", "-p", &peer_port])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .kill_on_drop(true)
        .spawn()
        .expect("turnutils_peer starts");
    wait_for_udp_listener(&peer_port).await;

    let creds = relay.mint("interop-user", Duration::from_secs(600));
    let (sessions, msgs) = (5u64, 200u64);
    let (ok, out) = run(Command::new(&uclient).args([
        "-p",
        &port,
        "-u",
        &creds.username,
        "-w",
        &creds.password,
        "-e",
        "127.0.0.1",
        "-r",
        &peer_port,
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
    ]))
    .await;
    assert!(ok, "uclient failed:\n{out}");
    let (sent, recv, lost) = uclient_totals(&out);
    assert_eq!(sent, sessions * msgs, "{out}");
    assert_eq!((recv, lost), (sent, 0), "{out}");
    let stats = relay.stats();
    assert!(
        stats.packets_to_peers >= sent && stats.packets_to_clients >= sent,
        "{stats:?}"
    );
    // turnutils_peer is no allocation: every datagram went through the relay sockets.
    assert_eq!(stats.packets_within, 0, "{stats:?}");
    let _ = peer.kill().await;
    relay.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn uclient_with_a_wrong_password_gets_nothing_relayed() {
    let uclient = tool("turnutils_uclient");
    let relay = start_relay().await;
    let port = relay.local_addr().port().to_string();
    let creds = relay.mint("interop-user", Duration::from_secs(600));
    // uclient keeps retrying a refused Allocate: give it a few seconds, then stop it.
    let mut child = Command::new(&uclient)
        .args([
            "-p",
            &port,
            "-u",
            &creds.username,
            "-w",
            "not-the-password",
            "-y",
            "-c",
            "-m",
            "1",
            "-n",
            "5",
            "-l",
            "100",
            "-z",
            "5",
            "127.0.0.1",
        ])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .kill_on_drop(true)
        .spawn()
        .expect("uclient starts");
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    while relay.stats().refusals.unauthorized < 2 {
        assert!(
            tokio::time::Instant::now() < deadline,
            "no second 401 within 20 s"
        );
        if let Ok(Some(_)) = child.try_wait() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let _ = child.kill().await;
    let stats = relay.stats();
    assert!(stats.refusals.unauthorized >= 2, "{stats:?}");
    assert_eq!(stats.allocations_created, 0, "{stats:?}");
    assert_eq!(stats.packets_relayed(), 0, "{stats:?}");
    relay.shutdown().await;
}

/// Waits (bounded) until something listens on the UDP port, by asking `ss`-free means:
/// binding it fails once the peer holds it.
async fn wait_for_udp_listener(port: &str) {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    loop {
        if UdpSocket::bind(format!("127.0.0.1:{port}")).is_err() {
            return;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "turnutils_peer did not bind port {port}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}
