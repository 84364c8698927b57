//! Groups, status updates and broadcast lists with the real `missive` CLI: alice creates a
//! group, adds bob and carol, everyone's `recv --json` shows the group's messages with its
//! id and the membership events; a removed member gets nothing after; a status post reaches
//! the contacts and its view reaches the poster's `status list`; a broadcast list sends
//! separate 1:1 messages.

mod common;

use common::Edge;
use serde_json::Value;
use std::path::{Path, PathBuf};
use std::process::Command;

/// The `missive` binary beside `missive-edge` (built by `cargo test --workspace`; built here
/// when only this package's tests run).
fn cli_bin() -> PathBuf {
    let edge = PathBuf::from(common::edge_bin());
    let bin = edge.with_file_name(format!("missive{}", std::env::consts::EXE_SUFFIX));
    if !bin.exists() {
        let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
        let mut cmd = Command::new(cargo);
        cmd.args(["build", "-p", "missive-client", "--bin", "missive"]);
        if edge.components().any(|c| c.as_os_str() == "release") {
            cmd.arg("--release");
        }
        assert!(
            cmd.status().unwrap().success(),
            "building the missive CLI failed"
        );
    }
    bin
}

fn missive(profile: &Path, args: &[&str]) -> (bool, String, String) {
    let out = Command::new(cli_bin())
        .arg("--profile")
        .arg(profile)
        .args(args)
        .output()
        .unwrap();
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

fn recv(profile: &Path, secs: &str) -> Vec<Value> {
    recv_args(profile, &["recv", "--wait", secs, "--json"])
}

fn recv_args(profile: &Path, args: &[&str]) -> Vec<Value> {
    let (ok, out, err) = missive(profile, args);
    assert!(ok, "recv failed: {err}");
    out.lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("not JSON ({e}): {l}")))
        .collect()
}

fn of_type<'a>(events: &'a [Value], t: &str) -> Vec<&'a Value> {
    events.iter().filter(|e| e["type"] == t).collect()
}

fn ok(profile: &Path, args: &[&str]) -> String {
    let (ok, out, err) = missive(profile, args);
    assert!(ok, "missive {args:?} failed: {err}");
    out
}

#[test]
fn cli_groups_status_and_broadcasts() {
    let dir = tempfile::tempdir().unwrap();
    let edge = Edge::start(&dir.path().join("edge"), &[]);
    let (server, ca) = (edge.quic.to_string(), edge.cert.display().to_string());
    let p = |n: &str| dir.path().join(n);
    for name in ["alice", "bob", "carol"] {
        ok(
            &p(name),
            &["--server", &server, "--ca", &ca, "register", name],
        );
    }
    let (alice, bob, carol) = (p("alice"), p("bob"), p("carol"));

    // A group: create, add, send; each member sees the message with the group's id.
    let id = ok(&alice, &["group", "create", "hikers"]).trim().to_owned();
    assert!(
        id.parse::<u64>().is_ok(),
        "group create prints the id: {id:?}"
    );
    ok(&alice, &["group", "add", &id, "bob", "carol"]);
    let (refused, _, err) = missive(&bob, &["group", "add", &id, "alice"]);
    assert!(
        !refused && err.contains("admin"),
        "a non-admin's add: {err}"
    );
    ok(&alice, &["send", "--group", &id, "hello hikers"]);
    for who in [&bob, &carol] {
        let got = recv(who, "3");
        let msgs = of_type(&got, "group_message");
        assert_eq!(msgs.len(), 1, "{got:?}");
        assert_eq!(msgs[0]["group"].as_u64(), id.parse::<u64>().ok());
        assert_eq!(
            (msgs[0]["from"].as_str(), msgs[0]["text"].as_str()),
            (Some("alice"), Some("hello hikers"))
        );
        assert!(
            !of_type(&got, "group_changed").is_empty(),
            "membership events: {got:?}"
        );
    }
    // carol is removed: she is told, and gets nothing sent after.
    ok(&alice, &["group", "remove", &id, "carol"]);
    ok(&alice, &["send", "--group", &id, "without carol"]);
    let got = recv(&bob, "3");
    assert_eq!(of_type(&got, "group_message").len(), 1, "{got:?}");
    let got = recv(&carol, "2");
    assert!(of_type(&got, "group_message").is_empty(), "{got:?}");
    assert!(!of_type(&got, "group_changed").is_empty(), "{got:?}");

    // A broadcast list: separate 1:1 messages.
    ok(&alice, &["broadcast", "create", "friends", "bob", "carol"]);
    let sent = ok(
        &alice,
        &["broadcast", "send", "friends", "see you saturday"],
    );
    assert_eq!(sent.lines().count(), 2, "{sent}");
    for who in [&bob, &carol] {
        let got = recv(who, "3");
        let msgs = of_type(&got, "message");
        assert_eq!(msgs.len(), 1, "{got:?}");
        assert_eq!(msgs[0]["text"], "see you saturday");
    }

    // A status to alice's contacts (bob and carol, from the broadcast); bob views it.
    let post = ok(&alice, &["status", "post", "at the beach"])
        .trim()
        .to_owned();
    let got: Vec<Value> = ok(&bob, &["status", "list", "--wait", "3", "--json"])
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    let statuses = of_type(&got, "status");
    assert_eq!(statuses.len(), 1, "{got:?}");
    assert_eq!(statuses[0]["text"], "at the beach");
    assert_eq!(statuses[0]["client_msg_id"], post.as_str());
    ok(&bob, &["status", "view", "alice", &post]);
    let mut viewers = Vec::new();
    for _ in 0..20 {
        let mine: Vec<Value> = ok(&alice, &["status", "list", "--wait", "0", "--json"])
            .lines()
            .map(|l| serde_json::from_str(l).unwrap())
            .collect();
        let m = of_type(&mine, "my_status");
        assert_eq!(m.len(), 1, "{mine:?}");
        assert_eq!(m[0]["audience"], 2);
        viewers = m[0]["viewers"].as_array().cloned().unwrap_or_default();
        if !viewers.is_empty() {
            break;
        }
        std::thread::sleep(std::time::Duration::from_millis(200));
    }
    assert_eq!(viewers, vec![Value::from("bob")]);
}
