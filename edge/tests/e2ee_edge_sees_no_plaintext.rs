//! alice and bob talk through the real edge with the SDK's end-to-end encryption: nothing
//! the edge stores (every file under its data dir) or hands out (the `Deliver` frames, byte
//! for byte) contains their text, and yet bob's SDK reads every message.

mod common;

use common::{collect_messages, sdk_user, text, Edge, Raw};
use missive_client::Client;
use missive_proto::Payload;
use std::path::Path;
use std::time::Duration;

const SECRETS: [&str; 3] = [
    "hi bob, the spare key is under the blue flowerpot",
    "meet at the old mill at seven",
    "my PIN is 4921, do not tell anyone",
];

/// Every file under `dir`, recursively, with its bytes.
fn files(dir: &Path) -> Vec<(std::path::PathBuf, Vec<u8>)> {
    let mut out = Vec::new();
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        if path.is_dir() {
            out.extend(files(&path));
        } else if let Ok(bytes) = std::fs::read(&path) {
            out.push((path, bytes));
        }
    }
    out
}

fn contains(haystack: &[u8], needle: &str) -> bool {
    haystack
        .windows(needle.len())
        .any(|w| w == needle.as_bytes())
}

#[tokio::test]
async fn the_edge_never_holds_the_text() {
    let dir = tempfile::tempdir().unwrap();
    let mut edge = Edge::start(dir.path(), &[]);
    let (alice, _a, _) = sdk_user(&edge, "alice").await;
    let (bob, mut b_events, bob_cfg) = sdk_user(&edge, "bob").await;
    // A first exchange while both are online, then bob goes offline and messages queue.
    alice.send("bob", text(SECRETS[0])).await.unwrap();
    let got = collect_messages(&mut b_events, 1, Duration::from_secs(10)).await;
    assert_eq!(got[0].2, SECRETS[0]);
    bob.send("alice", text("ok")).await.unwrap();
    bob.close().await.unwrap();
    for secret in &SECRETS[1..] {
        alice.send("bob", text(secret)).await.unwrap();
    }
    alice.close().await.unwrap();

    // What the edge hands out for bob's queued messages, exactly: no text in it.
    let mut raw = Raw::connect(&edge, true).await;
    raw.login(&bob_cfg.identity).await;
    // bob's mailbox also holds the receipt for his "ok": skip receipts.
    let mut envelopes = Vec::new();
    while envelopes.len() < 2 {
        for d in raw.deliveries(1).await {
            if let Payload::Envelope(e) = d.payload {
                envelopes.push(e);
            }
        }
    }
    for e in &envelopes {
        assert!(e.len() > 16, "an envelope of {} bytes", e.len());
        for secret in SECRETS {
            assert!(!contains(e, secret), "the edge forwarded plaintext");
        }
    }
    drop(raw);

    // Nothing on disk either: the database, its journal, the keys, while the messages are
    // queued and after a clean stop.
    let data = edge.data_dir.clone();
    edge.terminate();
    let on_disk = files(&data);
    assert!(on_disk.len() > 3, "{on_disk:?}");
    for (path, bytes) in &on_disk {
        for secret in SECRETS {
            assert!(
                !contains(bytes, secret),
                "{} holds a plaintext message",
                path.display()
            );
        }
    }

    // And bob reads them all: they were his messages, encrypted for his device.
    edge.restart();
    let (bob, mut b_events) = Client::connect(bob_cfg).await.unwrap();
    let got = collect_messages(&mut b_events, 2, Duration::from_secs(10)).await;
    let texts: Vec<&str> = got.iter().map(|(_, _, t)| t.as_str()).collect();
    assert_eq!(texts, &SECRETS[1..]);
    bob.close().await.unwrap();
}
