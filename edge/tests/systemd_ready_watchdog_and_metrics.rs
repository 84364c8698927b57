//! Under systemd's notify protocol the edge says READY=1 only once its listeners accept, pings
//! the watchdog, says STOPPING=1 on SIGTERM; `/metrics`, `/healthz`, `/readyz` answer.

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
    // At READY both listeners already accept: a TCP+TLS and a QUIC login succeed at once.
    let mut q = Raw::connect(&edge, false).await;
    q.hello().await;
    let mut t = Raw::connect(&edge, true).await;
    t.hello().await;
    // The watchdog is pinged at half the requested interval.
    recv_until(&sock, "WATCHDOG=1", Duration::from_secs(5));
    recv_until(&sock, "WATCHDOG=1", Duration::from_secs(5));

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
        "missive_frames_in_total{type=\"Send\"} 1",
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
