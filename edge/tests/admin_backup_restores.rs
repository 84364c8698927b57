//! `missive-edge admin backup` copies a running edge (through its admin socket, the edge makes
//! a consistent copy) and a stopped one (a file copy), and an edge started on either copy
//! delivers what was queued.

mod common;

use common::{collect_messages, sdk_user, text, Edge};
use missive_client::Client;
use std::process::Command;
use std::time::Duration;

fn backup(data_dir: &std::path::Path, to: &std::path::Path) -> (bool, String) {
    let out = Command::new(common::edge_bin())
        .arg("--data-dir")
        .arg(data_dir)
        .args(["admin", "backup", "--to"])
        .arg(to)
        .output()
        .unwrap();
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).to_string() + &String::from_utf8_lossy(&out.stderr),
    )
}

#[tokio::test]
async fn backup_of_a_running_or_stopped_edge_restores() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("edge");
    let copy = dir.path().join("copy");
    let mut edge = Edge::start(&data, &[]);
    let (alice, _a, _) = sdk_user(&edge, "alice").await;
    let (bob, _b, bob_cfg) = sdk_user(&edge, "bob").await;
    bob.close().await.unwrap();
    for i in 0..5 {
        alice.send("bob", text(&format!("b{i}"))).await.unwrap();
    }
    alice.close().await.unwrap();

    // Running: the edge makes the copy.
    let live_copy = dir.path().join("live-copy");
    let (ok, out) = backup(&data, &live_copy);
    assert!(ok, "{out}");
    assert!(out.contains("(via running edge)"), "{out}");
    assert!(
        out.contains("2 users, 5 queued envelopes, verified"),
        "{out}"
    );
    // Stopped: a file copy.
    assert!(edge.terminate().success());
    let (ok, out) = backup(&data, &copy);
    assert!(ok, "{out}");
    assert!(out.contains("(offline"), "{out}");
    assert!(
        out.contains("2 users, 5 queued envelopes, verified"),
        "{out}"
    );

    // Both copies carry the QUIC reset key (an edge restored in the old one's place lets
    // its clients reconnect at once), still private.
    let key = std::fs::read(data.join(missive_edge::reset_key::FILE_NAME)).unwrap();
    for from in [&copy, &live_copy] {
        let copied = from.join(missive_edge::reset_key::FILE_NAME);
        assert_eq!(std::fs::read(&copied).unwrap(), key, "{}", from.display());
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(&copied).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o600);
    }

    // Serve from each copy: bob gets the five. His SDK reads them from the first copy; the
    // second holds the same five envelopes (the same ids, in order), which his device cannot
    // decrypt twice: the message keys are spent, as end-to-end encryption wants.
    let restored = Edge::start(&copy, &[]);
    let mut cfg = bob_cfg.clone();
    cfg.server = restored.quic;
    cfg.ca_pem = restored.ca_pem();
    let (bob, mut ev) = Client::connect(cfg).await.unwrap();
    let got = collect_messages(&mut ev, 5, Duration::from_secs(10)).await;
    let texts: Vec<&str> = got.iter().map(|(_, _, t)| t.as_str()).collect();
    assert_eq!(texts, ["b0", "b1", "b2", "b3", "b4"]);
    bob.close().await.unwrap();
    let ids: Vec<_> = got.iter().map(|(_, id, _)| *id).collect();

    let restored = Edge::start(&live_copy, &[]);
    let mut raw = common::Raw::connect(&restored, false).await;
    raw.login(&bob_cfg.identity).await;
    let queued: Vec<_> = raw
        .deliveries(5)
        .await
        .into_iter()
        .map(|d| d.client_msg_id)
        .collect();
    assert_eq!(queued, ids, "the live copy holds the same five");
}
