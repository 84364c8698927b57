//! `missive-edge admin backup` refuses a running edge, copies a stopped one, and an edge started
//! on the copy delivers what was queued.

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
async fn backup_of_a_stopped_edge_restores() {
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

    let (ok, out) = backup(&data, &copy);
    assert!(!ok, "backup of a running edge must be refused: {out}");
    assert!(edge.terminate().success());
    let (ok, out) = backup(&data, &copy);
    assert!(ok, "{out}");
    assert!(
        out.contains("2 users, 5 queued envelopes, verified"),
        "{out}"
    );

    // Serve from the copy: bob gets the five.
    let restored = Edge::start(&copy, &[]);
    let mut cfg = bob_cfg;
    cfg.server = restored.quic;
    cfg.ca_pem = restored.ca_pem();
    let (bob, mut ev) = Client::connect(cfg).await.unwrap();
    let got = collect_messages(&mut ev, 5, Duration::from_secs(10)).await;
    let texts: Vec<String> = got.into_iter().map(|(_, _, t)| t).collect();
    assert_eq!(texts, ["b0", "b1", "b2", "b3", "b4"]);
    bob.close().await.unwrap();
}
