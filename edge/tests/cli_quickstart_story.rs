//! The README quickstart as a script would run it, with the real `missive` CLI: register
//! alice and bob, chat both ways, queue ten messages for an offline bob, SIGKILL and restart
//! the edge; bob gets all ten once each in order, alice sees delivered then read.

mod common;

use common::cli::{cli_bin, missive, of_type, recv, recv_args};
use common::Edge;
use serde_json::Value;
use std::path::Path;
use std::process::Command;

/// `recv --json --stats`: the events, then the delivery counts.
fn recv_with_stats(profile: &Path, secs: &str) -> Vec<Value> {
    recv_args(profile, &["recv", "--wait", secs, "--json", "--stats"])
}

/// Registers profiles `alice` and `bob` with the CLI against `edge`.
fn register_alice_and_bob(edge: &Edge, alice: &Path, bob: &Path) {
    let server = edge.quic.to_string();
    let ca = edge.cert.display().to_string();
    for (p, name) in [(alice, "alice"), (bob, "bob")] {
        let (ok, _, err) = missive(p, &["--server", &server, "--ca", &ca, "register", name]);
        assert!(ok, "register {name}: {err}");
    }
}

#[test]
fn cli_quickstart_story() {
    let dir = tempfile::tempdir().unwrap();
    let mut edge = Edge::start(&dir.path().join("edge"), &[]);
    let alice = dir.path().join("alice");
    let bob = dir.path().join("bob");
    register_alice_and_bob(&edge, &alice, &bob);
    let (server, ca) = (edge.quic.to_string(), edge.cert.display().to_string());
    // Registering a taken name fails with exit code 1 and a message.
    let (ok, _, err) = missive(
        &dir.path().join("mallory"),
        &["--server", &server, "--ca", &ca, "register", "alice"],
    );
    assert!(!ok && !err.is_empty());

    // Both ways, live-ish.
    let (ok, hello_id, err) = missive(&alice, &["send", "bob", "hello bob"]);
    assert!(ok, "send: {err}");
    let hello_id = hello_id.trim().to_owned();
    assert_eq!(
        hello_id.len(),
        32,
        "send prints the client_msg_id: {hello_id:?}"
    );
    let got = recv(&bob, "2");
    let msgs = of_type(&got, "message");
    assert_eq!(msgs.len(), 1, "{got:?}");
    assert_eq!(msgs[0]["from"], "alice");
    assert_eq!(msgs[0]["text"], "hello bob");
    assert_eq!(msgs[0]["client_msg_id"], hello_id.as_str());
    assert!(msgs[0]["server_seq"].as_u64().unwrap() >= 1);
    let (ok, _, err) = missive(&bob, &["send", "alice", "hi alice"]);
    assert!(ok, "{err}");
    let got = recv(&alice, "2");
    let msgs = of_type(&got, "message");
    assert_eq!(msgs.len(), 1);
    assert_eq!(msgs[0]["text"], "hi alice");
    let statuses: Vec<&str> = of_type(&got, "receipt")
        .iter()
        .filter(|r| r["client_msg_id"] == hello_id.as_str())
        .map(|r| r["status"].as_str().unwrap())
        .collect();
    assert_eq!(statuses, vec!["delivered", "read"], "{got:?}");

    // Bob is offline (no recv running); alice sends ten, each acked.
    let mut ids = Vec::new();
    for i in 0..10 {
        let (ok, id, err) = missive(&alice, &["send", "bob", &format!("offline {i}")]);
        assert!(ok, "{err}");
        ids.push(id.trim().to_owned());
    }
    edge.kill9();
    edge.restart();

    let got = recv_with_stats(&bob, "3");
    let texts: Vec<&str> = of_type(&got, "message")
        .iter()
        .map(|m| m["text"].as_str().unwrap())
        .collect();
    let want: Vec<String> = (0..10).map(|i| format!("offline {i}")).collect();
    assert_eq!(texts, want, "lost, duplicated or reordered after kill -9");
    // Counted before the CLI's duplicate filter (and its seen.txt): the ten messages and
    // alice's read receipt for "hi alice" (an envelope too, one id in it), each at its own
    // seq, none stored twice.
    let stats = of_type(&got, "deliveries");
    assert_eq!(stats.len(), 1, "{got:?}");
    assert_eq!(stats[0]["duplicates"], 0, "{stats:?}");
    let read_receipts = of_type(&got, "receipt")
        .iter()
        .filter(|r| r["status"] == "read")
        .count() as u64;
    assert_eq!(read_receipts, 1, "{got:?}");
    assert_eq!(
        stats[0]["deliveries"].as_u64().unwrap() - stats[0]["redeliveries"].as_u64().unwrap(),
        10 + read_receipts,
        "{stats:?}"
    );
    // Nothing is delivered again: the edge sends no message at all.
    let again = recv_with_stats(&bob, "1");
    assert!(of_type(&again, "message").is_empty());
    assert_eq!(
        of_type(&again, "deliveries")[0]["deliveries"],
        0,
        "{again:?}"
    );

    // Alice sees every one of the ten go delivered, then read.
    let got = recv(&alice, "3");
    for id in &ids {
        let statuses: Vec<&str> = of_type(&got, "receipt")
            .iter()
            .filter(|r| r["client_msg_id"] == id.as_str())
            .map(|r| r["status"].as_str().unwrap())
            .collect();
        assert_eq!(
            statuses,
            vec!["delivered", "read"],
            "receipts for {id}: {got:?}"
        );
    }
}

/// Waits (bounded) until the edge has received `n` `Login` frames.
fn wait_for_logins(edge: &Edge, n: u64) {
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(15);
    loop {
        let (_, body) = edge.http_get("/metrics");
        let logins = body
            .lines()
            .find_map(|l| l.strip_prefix("missive_frames_in_total{type=\"Login\"} "))
            .and_then(|v| v.trim().parse::<u64>().ok())
            .unwrap_or(0);
        if logins >= n {
            return;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "only {logins} of {n} logins arrived"
        );
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
}

/// `missive send` on the profile a `missive recv` is using takes the device's session; the
/// server tells the receiver `SessionReplaced`, and `recv` takes the session back a moment
/// later instead of ending (or of fighting for it), so it still prints what comes after.
#[test]
fn recv_yields_to_a_send_on_its_profile_and_comes_back() {
    let dir = tempfile::tempdir().unwrap();
    let edge = Edge::start(&dir.path().join("edge"), &[]);
    let alice = dir.path().join("alice");
    let bob = dir.path().join("bob");
    register_alice_and_bob(&edge, &alice, &bob);
    let receiver = Command::new(cli_bin())
        .arg("--profile")
        .arg(&bob)
        .args(["recv", "--wait", "8", "--json", "--no-read"])
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    // Waited on by the edge's count of Login frames: recv's login, the send's (which takes
    // the session), then recv's again (which takes it back).
    wait_for_logins(&edge, 1);
    let (ok, _, err) = missive(&bob, &["send", "alice", "from bob's other window"]);
    assert!(ok, "send while recv runs: {err}");
    wait_for_logins(&edge, 3);
    let (ok, _, err) = missive(&alice, &["send", "bob", "after the interruption"]);
    assert!(ok, "send: {err}");

    let out = receiver.wait_with_output().unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "recv failed: {stderr}");
    assert!(stderr.contains("another connection"), "{stderr}");
    let got: Vec<Value> = String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    let msgs = of_type(&got, "message");
    assert_eq!(msgs.len(), 1, "{got:?}");
    assert_eq!(msgs[0]["text"], "after the interruption");
    let at_alice = recv(&alice, "2");
    assert_eq!(
        of_type(&at_alice, "message")[0]["text"],
        "from bob's other window"
    );
}

/// The README's "linking a laptop" with the CLI: `link new` on the phone, `link join` on the
/// laptop, both read what alice sends, `devices list`, equal safety numbers on both sides,
/// and `devices remove` locks the laptop out. The profile's E2EE state holds no plaintext.
#[test]
fn link_a_laptop_compare_safety_numbers_and_remove_it() {
    let dir = tempfile::tempdir().unwrap();
    let edge = Edge::start(&dir.path().join("edge"), &[]);
    let alice = dir.path().join("alice");
    let bob = dir.path().join("bob");
    let laptop = dir.path().join("bob-laptop");
    register_alice_and_bob(&edge, &alice, &bob);
    // alice has written to bob's phone before: her device knows bob's devices.
    let (ok, _, err) = missive(&alice, &["send", "bob", "before the laptop"]);
    assert!(ok, "send: {err}");
    assert_eq!(of_type(&recv(&bob, "1"), "message").len(), 1);

    let (ok, code, err) = missive(&bob, &["link", "new"]);
    assert!(ok, "link new: {err}");
    let code = code.trim().to_string();
    assert_eq!(code.len(), 11, "{code:?}");
    let (server, ca) = (edge.quic.to_string(), edge.cert.display().to_string());
    let (ok, out, err) = missive(
        &laptop,
        &[
            "--server", &server, "--ca", &ca, "link", "join", "bob", &code,
        ],
    );
    assert!(ok, "link join: {err}");
    assert_eq!(out.trim(), "linked bob device 2");
    let (ok, out, err) = missive(&bob, &["devices", "list"]);
    assert!(ok, "devices list: {err}");
    assert_eq!(out, "1 (this device)\n2\n");

    let (ok, _, err) = missive(&alice, &["send", "bob", "to both of you"]);
    assert!(ok, "send: {err}");
    // Told before the message was encrypted for it, in a new `missive` process.
    assert!(err.contains("bob has a new device (2)"), "{err}");
    for p in [&bob, &laptop] {
        let got = recv(p, "1");
        let msgs = of_type(&got, "message");
        assert_eq!(msgs.len(), 1, "{}: {got:?}", p.display());
        assert_eq!(msgs[0]["text"], "to both of you");
    }
    // bob answers from the phone: alice reads it, the laptop sees it as sent to alice.
    let (ok, _, err) = missive(&bob, &["send", "alice", "from the phone"]);
    assert!(ok, "send: {err}");
    let got = recv(&laptop, "1");
    let copy = of_type(&got, "message");
    assert_eq!(copy.len(), 1, "{got:?}");
    assert_eq!(copy[0]["sent_to"], "alice");
    assert_eq!(copy[0]["text"], "from the phone");
    let got = recv(&alice, "1");
    assert_eq!(of_type(&got, "message")[0]["text"], "from the phone");

    let (ok, at_alice, err) = missive(&alice, &["safety-number", "bob"]);
    assert!(ok, "safety-number: {err}");
    let (ok, at_bob, err) = missive(&bob, &["safety-number", "alice"]);
    assert!(ok, "safety-number: {err}");
    assert_eq!(at_alice, at_bob);
    assert_eq!(at_alice.trim().split(' ').count(), 12, "{at_alice}");
    let (ok, _, err) = missive(&alice, &["safety-number", "nobody"]);
    assert!(!ok && err.contains("no keys of nobody"), "{err}");

    // Nothing in the profiles' files is a message's text.
    for p in [&alice, &bob, &laptop] {
        for entry in std::fs::read_dir(p).unwrap() {
            let bytes = std::fs::read(entry.unwrap().path()).unwrap();
            for text in ["to both of you", "from the phone"] {
                assert!(!bytes.windows(text.len()).any(|w| w == text.as_bytes()));
            }
        }
    }

    let (ok, out, err) = missive(&bob, &["devices", "remove", "2"]);
    assert!(ok, "devices remove: {err}");
    assert_eq!(out.trim(), "removed device 2");
    let (ok, _, err) = missive(&laptop, &["recv", "--wait", "1"]);
    assert!(!ok, "a removed device still logs in");
    assert!(err.contains("unknown device"), "{err}");
}
