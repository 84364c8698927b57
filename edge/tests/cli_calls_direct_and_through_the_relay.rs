//! Calls with the real `missive` CLI through a real edge running its relay:
//!
//! - `missive call bob --video` rings bob, whose `missive answer` picks up; the media goes
//!   peer to peer (path `direct`), both sides print RTT, loss, jitter, bitrate and MOS, and
//!   each side decrypted every media packet it got (nothing failed authentication);
//! - with `--force-relay` on both sides the media goes through the edge's TURN relay (path
//!   `relay`), whose counters show the relayed bytes, and again every packet decrypts;
//! - `missive calls --json` lists both calls on both sides, answered, with their talk time.

mod common;

use common::cli::{cli_bin, of_type, ok, register_profiles};
use common::Edge;
use serde_json::Value;
use std::path::Path;
use std::process::{Command, Stdio};

fn lines(out: &str) -> Vec<Value> {
    out.lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("not JSON ({e}): {l}")))
        .collect()
}

/// An edge with its relay on loopback (loopback peers allowed: both clients are here).
fn start_edge(dir: &Path) -> Edge {
    let config = dir.join("edge.toml");
    std::fs::write(&config, "[relay]\nallow_loopback_peers = true\n").unwrap();
    Edge::start(
        &dir.join("edge"),
        &[
            "--config",
            config.to_str().unwrap(),
            "--relay-listen",
            "127.0.0.1:0",
        ],
    )
}

/// bob answers in the background while alice calls; both outputs, parsed.
fn call(alice: &Path, bob: &Path, extra: &[&str]) -> (Vec<Value>, Vec<Value>) {
    let mut answer_args = vec![
        "--profile",
        bob.to_str().unwrap(),
        "answer",
        "--wait",
        "30",
        "--json",
    ];
    answer_args.extend_from_slice(extra);
    let answering = Command::new(cli_bin())
        .args(&answer_args)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    // bob's `answer` must be logged in before the ring, or he is rung when it logs in: either
    // works; give it a moment so the common case is tested.
    std::thread::sleep(std::time::Duration::from_millis(500));
    let mut call_args = vec!["call", "bob", "--video", "--seconds", "3", "--json"];
    call_args.extend_from_slice(extra);
    let caller = lines(&ok(alice, &call_args));
    let out = answering.wait_with_output().unwrap();
    assert!(
        out.status.success(),
        "answer failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    (caller, lines(&String::from_utf8_lossy(&out.stdout)))
}

fn summary(events: &[Value]) -> &Value {
    of_type(events, "call_summary")
        .first()
        .copied()
        .unwrap_or_else(|| panic!("no summary in {events:?}"))
}

/// Both sides connected over `path`, media flowed both ways, and everything received
/// decrypted.
fn check_call(caller: &[Value], callee: &[Value], path: &str) {
    for (who, events) in [("alice", caller), ("bob", callee)] {
        let s = summary(events);
        assert_eq!(s["path"], path, "{who}: {s}");
        let received = s["frames_received"].as_u64().unwrap();
        assert!(received > 50, "{who} got media: {s}");
        assert_eq!(
            s["frames_decrypted"].as_u64().unwrap(),
            received,
            "{who} decrypted every packet it got: {s}"
        );
        assert_eq!(s["decrypt_failures"], 0, "{who}: {s}");
        assert!(s["frames_sent"].as_u64().unwrap() > 50, "{who}: {s}");
        for key in [
            "rtt_ms",
            "loss_percent",
            "jitter_ms",
            "send_kbps",
            "recv_kbps",
            "mos",
        ] {
            assert!(s[key].is_number(), "{who} reports {key}: {s}");
        }
        assert!(
            s["mos"].as_f64().unwrap() > 3.5,
            "{who}: loopback is a good line: {s}"
        );
        assert!(
            s["send_kbps"].as_f64().unwrap() > 500.0,
            "{who} sends video in a video call: {s}"
        );
        let setup = s["setup_ms"].as_f64().unwrap();
        assert!(setup > 0.0 && setup < 5_000.0, "{who}: set-up {setup} ms");
        assert!(
            !of_type(events, "call_stats").is_empty(),
            "{who} printed stats while the call ran"
        );
        let connected = events
            .iter()
            .find(|e| e["event"] == "connected")
            .unwrap_or_else(|| panic!("{who} never connected: {events:?}"));
        assert_eq!(connected["path"], path);
    }
    assert!(
        caller.iter().any(|e| e["event"] == "ringing"),
        "alice heard it ring: {caller:?}"
    );
    assert!(
        callee.iter().any(|e| e["event"] == "incoming"),
        "bob was rung: {callee:?}"
    );
    assert_eq!(summary(caller)["ended"], "hung_up");
    assert_eq!(summary(callee)["ended"], "hung_up");
}

#[test]
fn calls_go_direct_or_through_the_relay_and_decrypt_everything() {
    let dir = tempfile::tempdir().unwrap();
    let edge = start_edge(dir.path());
    let p = |n: &str| dir.path().join(n);
    register_profiles(&edge, dir.path(), &["alice", "bob"]);
    let (alice, bob) = (p("alice"), p("bob"));

    let (caller, callee) = call(&alice, &bob, &[]);
    check_call(&caller, &callee, "direct");
    let relayed_before = edge.metric("missive_relay_bytes_to_peers_total ");

    let (caller, callee) = call(&alice, &bob, &["--force-relay"]);
    check_call(&caller, &callee, "relay");
    let relayed = edge.metric("missive_relay_bytes_to_peers_total ") - relayed_before;
    assert!(
        relayed > 100_000.0,
        "the relay carried the call's media: {relayed} bytes"
    );

    for profile in [&alice, &bob] {
        let history = lines(&ok(profile, &["calls", "--json"]));
        assert_eq!(history.len(), 2, "{history:?}");
        for r in &history {
            assert_eq!(r["end"], "hung_up", "{r}");
            assert_eq!(r["media"], "video");
            assert!(r["duration_ms"].as_u64().unwrap() >= 2_000, "{r}");
        }
    }
}

/// A `missive answer` in the background for `profile`.
fn answering(profile: &Path) -> std::process::Child {
    Command::new(cli_bin())
        .args([
            "--profile",
            profile.to_str().unwrap(),
            "answer",
            "--wait",
            "30",
            "--seconds",
            "6",
            "--json",
        ])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap()
}

fn output(child: std::process::Child) -> Vec<Value> {
    let out = child.wait_with_output().unwrap();
    assert!(
        out.status.success(),
        "answer failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    lines(&String::from_utf8_lossy(&out.stdout))
}

#[test]
fn a_group_call_of_three_is_a_full_mesh() {
    let dir = tempfile::tempdir().unwrap();
    let edge = start_edge(dir.path());
    let p = |n: &str| dir.path().join(n);
    register_profiles(&edge, dir.path(), &["alice", "bob", "carol"]);
    let (bob, carol) = (answering(&p("bob")), answering(&p("carol")));
    std::thread::sleep(std::time::Duration::from_millis(500));
    let alice = lines(&ok(
        &p("alice"),
        &["call", "bob", "carol", "--seconds", "4", "--json"],
    ));
    let (bob, carol) = (output(bob), output(carol));

    // Each of the three talked with both others, and decrypted everything it got.
    for (who, events, peers) in [
        ("alice", &alice, ["bob", "carol"]),
        ("bob", &bob, ["alice", "carol"]),
        ("carol", &carol, ["alice", "bob"]),
    ] {
        let summaries = of_type(events, "call_summary");
        let mut talked: Vec<&str> = summaries
            .iter()
            .map(|s| s["peer"].as_str().unwrap())
            .collect();
        talked.sort_unstable();
        assert_eq!(talked, peers, "{who}: {events:?}");
        for s in summaries {
            let received = s["frames_received"].as_u64().unwrap();
            assert!(received > 20, "{who} got media from {}: {s}", s["peer"]);
            assert_eq!(
                s["frames_decrypted"].as_u64().unwrap(),
                received,
                "{who}: {s}"
            );
            assert_eq!(s["decrypt_failures"], 0, "{who}: {s}");
        }
    }
    // The one who picked up last called the one already in.
    let joined: Vec<&Value> = bob
        .iter()
        .chain(carol.iter())
        .filter(|e| e["event"] == "conference")
        .collect();
    assert_eq!(joined.len(), 2, "{joined:?}");
    let called: Vec<&Value> = joined
        .iter()
        .copied()
        .filter(|e| e["others"] != serde_json::json!([]))
        .collect();
    assert_eq!(
        called.len(),
        1,
        "only the later one calls the other: {joined:?}"
    );
    for events in [&alice, &bob, &carol] {
        assert!(
            !events
                .iter()
                .any(|e| e["reason"] == "refused:limit_exceeded"),
            "no leg was tried twice: {events:?}"
        );
    }
    let history = lines(&ok(&p("alice"), &["calls", "--json"]));
    assert_eq!(history.len(), 2, "alice's two legs: {history:?}");
}
