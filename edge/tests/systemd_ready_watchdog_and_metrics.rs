//! Under systemd's notify protocol the edge says READY=1 only once its listeners accept (the
//! test connects on READY=1 alone, to the addresses READY's STATUS names, without waiting for
//! anything else the edge prints), pings the watchdog at half its interval, says STOPPING=1
//! on SIGTERM; `/metrics`, `/healthz`, `/readyz` answer.

mod common;

use common::{sdk_user, text, Edge, Raw};
use std::os::unix::net::UnixDatagram;
use std::time::{Duration, Instant};

fn recv_until(sock: &UnixDatagram, want: &str, timeout: Duration) -> String {
    let deadline = Instant::now() + timeout;
    let mut buf = [0u8; 4096];
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        assert!(!left.is_zero(), "no {want} notification within {timeout:?}");
        sock.set_read_timeout(Some(left)).unwrap();
        let n = sock.recv(&mut buf).expect("notification");
        let msg = String::from_utf8_lossy(&buf[..n]).to_string();
        if msg.lines().any(|l| l == want) {
            return msg;
        }
    }
}

/// The edge started by hand, not through the harness (which waits for the edge's stdout
/// line): what the test knows of it comes from READY=1 alone.
#[tokio::test]
async fn ready_is_sent_only_once_both_listeners_accept() {
    let dir = tempfile::tempdir().unwrap();
    let sock_path = dir.path().join("notify.sock");
    let sock = UnixDatagram::bind(&sock_path).unwrap();
    let data = dir.path().join("edge");
    let mut child = std::process::Command::new(common::edge_bin())
        .args([
            "--data-dir",
            data.to_str().unwrap(),
            "--listen",
            "127.0.0.1:0",
        ])
        .args(["--metrics-listen", "127.0.0.1:0"])
        .env("NOTIFY_SOCKET", &sock_path)
        .env("RUST_LOG", "warn")
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let ready = recv_until(&sock, "READY=1", Duration::from_secs(30));
    let addr = |name: &str| -> std::net::SocketAddr {
        ready
            .split(['\n', ' '])
            .find_map(|kv| kv.strip_prefix(&format!("{name}=")))
            .unwrap_or_else(|| panic!("READY lacks {name}: {ready}"))
            .parse()
            .unwrap()
    };
    let ca = std::fs::read(data.join("tls").join("dev-cert.pem")).unwrap();
    for (server, force_tcp) in [(addr("quic"), false), (addr("tcp"), true)] {
        let cfg = missive_client::transport::TransportConfig {
            server,
            server_name: "localhost".into(),
            ca_pem: ca.clone(),
            quic_timeout: Duration::from_secs(2),
            force_tcp,
            quic_endpoint: None,
        };
        let t = missive_client::transport::Transport::connect(&cfg).await;
        assert!(
            t.is_ok(),
            "not accepting at READY (tcp: {force_tcp}): {:?}",
            t.err()
        );
    }
    let _ = child.kill();
    let _ = child.wait();
}

#[tokio::test]
async fn ready_only_after_listeners_accept_then_watchdog_and_stopping() {
    let dir = tempfile::tempdir().unwrap();
    let sock_path = dir.path().join("notify.sock");
    let sock = UnixDatagram::bind(&sock_path).unwrap();
    let mut edge = Edge::start_with_env(
        &dir.path().join("edge"),
        &[],
        &[
            ("NOTIFY_SOCKET", sock_path.to_str().unwrap()),
            ("WATCHDOG_USEC", "400000"),
        ],
    );
    let ready = recv_until(&sock, "READY=1", Duration::from_secs(30));
    assert!(
        ready.contains(&format!("MAINPID={}", edge.pid())),
        "{ready}"
    );
    let mut q = Raw::connect(&edge, false).await;
    q.hello().await;
    let mut t = Raw::connect(&edge, true).await;
    t.hello().await;
    // The watchdog is pinged at half the requested interval (400 ms): over five gaps the
    // pings come about 200 ms apart on average, and no gap comes near the interval itself.
    // (A late tick is followed by an early one, so single gaps are bounded above only.)
    recv_until(&sock, "WATCHDOG=1", Duration::from_secs(5));
    let first = Instant::now();
    let mut last = first;
    for _ in 0..5 {
        recv_until(&sock, "WATCHDOG=1", Duration::from_secs(5));
        let gap = last.elapsed();
        last = Instant::now();
        assert!(
            gap < Duration::from_millis(380),
            "watchdog pings {gap:?} apart; the interval asked for is 400 ms"
        );
    }
    let mean = first.elapsed() / 5;
    assert!(
        mean >= Duration::from_millis(150) && mean <= Duration::from_millis(280),
        "watchdog pings {mean:?} apart on average; half the interval is 200 ms"
    );

    // Operations endpoint.
    assert_eq!(edge.http_get("/healthz").0, 200);
    assert_eq!(edge.http_get("/readyz").0, 200);
    assert_eq!(edge.http_get("/nope").0, 404);
    let (alice, _a, _) = sdk_user(&edge, "alice").await;
    let (bob, _b, _) = sdk_user(&edge, "bob").await;
    alice.send("bob", text("counted")).await.unwrap();
    let (status, body) = edge.http_get("/metrics");
    assert_eq!(status, 200);
    for needle in [
        "missive_connections_open{transport=\"quic\"}",
        "missive_connections_open{transport=\"tcp\"} 1",
        // The SDK claimed bob's keys (and so learnt his devices) before its one send.
        "missive_frames_in_total{type=\"Send\"} 1",
        "missive_frames_in_total{type=\"ClaimKeys\"} 1",
        "missive_frames_in_total{type=\"Hello\"}",
        "missive_sessions 2",
        "missive_group_commit_flush_seconds_bucket{le=\"+Inf\"}",
        "missive_group_commit_build_seconds_bucket{le=\"+Inf\"}",
        "missive_messages_stored_total",
        "process_cpu_seconds_total",
        "process_resident_memory_max_bytes",
        // The default build's allocator (the `mimalloc` feature).
        "missive_build_info{version=\"",
        "allocator=\"mimalloc\"} 1",
    ] {
        assert!(body.contains(needle), "metrics lack {needle}:\n{body}");
    }
    alice.close().await.unwrap();
    bob.close().await.unwrap();
    drop((q, t));

    edge.signal("TERM");
    recv_until(&sock, "STOPPING=1", Duration::from_secs(10));
    let status = edge.terminate();
    assert!(
        status.success(),
        "edge exited with {status:?} after SIGTERM"
    );
}
