//! Disappearing messages on the real edge: alice sets a chat timer, both sides apply it to
//! what they send and show, and the edge drops copies still undelivered when it runs out.

mod common;

use common::{config_file, next_matching, sdk_user, text, Edge};
use missive_client::{Client, Event, EventStream};
use std::time::Duration;

const WAIT: Duration = Duration::from_secs(10);

async fn next_message(events: &mut EventStream) -> (String, u32) {
    match next_matching(events, WAIT, |e| matches!(e, Event::Message { .. })).await {
        Event::Message {
            text,
            expires_in_secs,
            ..
        } => (text, expires_in_secs),
        _ => unreachable!(),
    }
}

#[tokio::test]
async fn a_chat_timer_applies_both_ways_and_the_edge_drops_what_waited_too_long() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = config_file(dir.path(), "[storage]\nsweep_interval_secs = 3600\n");
    let edge = Edge::start(&dir.path().join("edge"), &[&cfg[0], &cfg[1]]);
    let (alice, mut a_ev, _) = sdk_user(&edge, "alice").await;
    let (bob, mut b_ev, bob_cfg) = sdk_user(&edge, "bob").await;

    alice.set_disappearing("bob", 2).unwrap();
    let set = next_matching(&mut b_ev, WAIT, |e| matches!(e, Event::TimerChanged { .. })).await;
    assert!(
        matches!(&set, Event::TimerChanged { chat, by, secs: 2, .. } if chat == "alice" && by == "alice"),
        "{set:?}"
    );
    alice.send("bob", text("short-lived")).await.unwrap();
    assert_eq!(next_message(&mut b_ev).await, ("short-lived".into(), 2));
    // bob's SDK took the chat's timer from alice's message: his reply carries it too.
    bob.send("alice", text("me too")).await.unwrap();
    assert_eq!(next_message(&mut a_ev).await, ("me too".into(), 2));
    bob.close().await.unwrap();

    // Not delivered within its two seconds: the edge drops it.
    alice.send("bob", text("too late")).await.unwrap();
    tokio::time::sleep(Duration::from_secs(4)).await;
    alice.set_disappearing("bob", 0).unwrap();
    alice.send("bob", text("this one stays")).await.unwrap();
    let (bob, mut b_ev) = Client::connect(bob_cfg).await.unwrap();
    assert_eq!(next_message(&mut b_ev).await, ("this one stays".into(), 0));
    let extra = tokio::time::timeout(Duration::from_millis(500), next_message(&mut b_ev)).await;
    assert!(
        extra.is_err(),
        "an expired message was delivered: {extra:?}"
    );
    bob.close().await.unwrap();
    alice.close().await.unwrap();
}
