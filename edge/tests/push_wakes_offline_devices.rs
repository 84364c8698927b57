//! A device with no live session is woken through the push gateway: a content-free JSON POST,
//! retried after a gateway failure.

mod common;

use common::{sdk_user, text, Edge};
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;

/// Reads one HTTP request (headers + Content-Length body) and answers with `status`.
async fn serve_one(listener: &TcpListener, status: &str) -> String {
    let (mut s, _) = listener.accept().await.unwrap();
    let mut buf = Vec::new();
    let mut chunk = [0u8; 1024];
    loop {
        let n = s.read(&mut chunk).await.unwrap();
        assert!(n > 0, "gateway connection closed mid-request");
        buf.extend_from_slice(&chunk[..n]);
        let text = String::from_utf8_lossy(&buf).to_string();
        if let Some(end) = text.find("\r\n\r\n") {
            let len: usize = text
                .lines()
                .find_map(|l| {
                    l.to_ascii_lowercase()
                        .strip_prefix("content-length:")
                        .map(|v| v.trim().parse().unwrap())
                })
                .unwrap_or(0);
            if buf.len() >= end + 4 + len {
                let resp = format!("HTTP/1.1 {status}\r\nContent-Length: 0\r\n\r\n");
                s.write_all(resp.as_bytes()).await.unwrap();
                return text;
            }
        }
    }
}

#[tokio::test]
async fn offline_recipient_gets_a_content_free_wake_up() {
    let gateway = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}/wake", gateway.local_addr().unwrap());
    let dir = tempfile::tempdir().unwrap();
    let edge = Edge::start(dir.path(), &["--push-url", &url]);
    let (alice, _a, _) = sdk_user(&edge, "alice").await;
    let (bob, _b, _) = sdk_user(&edge, "bob").await;
    bob.close().await.unwrap();

    alice.send("bob", text("top secret words")).await.unwrap();
    // First attempt fails with 503; the notifier retries.
    let first = tokio::time::timeout(Duration::from_secs(10), serve_one(&gateway, "503 Busy"))
        .await
        .expect("no wake-up POST");
    let second = tokio::time::timeout(
        Duration::from_secs(10),
        serve_one(&gateway, "204 No Content"),
    )
    .await
    .expect("no retry after 503");
    for req in [&first, &second] {
        assert!(req.starts_with("POST /wake HTTP/1.1\r\n"), "{req}");
        let body = &req[req.find("\r\n\r\n").unwrap() + 4..];
        let v: serde_json::Value = serde_json::from_str(body).unwrap();
        assert_eq!(v["user"], "bob");
        assert_eq!(v["device"], 1);
        assert!(!req.contains("secret"), "push carried content: {req}");
    }
    alice.close().await.unwrap();
}
