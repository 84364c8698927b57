//! Groups, status updates and broadcast lists with the real `missive` CLI: alice creates a
//! group, adds bob and carol, everyone's `recv --json` shows the group's messages with its
//! id and the membership events; a removed member gets nothing after; a status post reaches
//! the contacts and its view reaches the poster's `status list`; a broadcast list sends
//! separate 1:1 messages.

mod common;

use common::cli::{missive, of_type, ok, recv, register_profiles};
use common::Edge;
use serde_json::Value;

#[test]
fn cli_groups_status_and_broadcasts() {
    let dir = tempfile::tempdir().unwrap();
    let edge = Edge::start(&dir.path().join("edge"), &[]);
    let p = |n: &str| dir.path().join(n);
    register_profiles(&edge, dir.path(), &["alice", "bob", "carol"]);
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
