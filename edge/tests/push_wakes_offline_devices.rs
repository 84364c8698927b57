//! A device with no live session is woken through the push gateway: a content-free JSON POST,
//! retried after a gateway failure.

mod common;

use common::push_gateway::serve_one;
use common::{sdk_user, text, Edge};
use std::time::Duration;
use tokio::net::TcpListener;

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
