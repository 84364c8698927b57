//! Delete for everyone on the real edge: the edge drops the copies nobody has taken yet, and
//! the (encrypted) tombstone tells devices that already have the message to hide it. Nobody
//! can withdraw someone else's message.

mod common;

use common::{next_matching, sdk_user, text, Edge};
use missive_client::{Client, Event, EventStream};
use std::time::Duration;

const WAIT: Duration = Duration::from_secs(10);

async fn next_kind(events: &mut EventStream) -> Event {
    next_matching(events, WAIT, |e| {
        matches!(e, Event::Message { .. } | Event::Deleted { .. })
    })
    .await
}

#[tokio::test]
async fn undelivered_copies_go_and_delivered_ones_are_withdrawn() {
    let dir = tempfile::tempdir().unwrap();
    let edge = Edge::start(dir.path(), &[]);
    let (alice, mut a_ev, _) = sdk_user(&edge, "alice").await;
    let (carol, _c, _) = sdk_user(&edge, "carol").await;
    let (bob, mut b_ev, bob_cfg) = sdk_user(&edge, "bob").await;

    // Delivered already: the tombstone withdraws it.
    let seen = alice.send("bob", text("visible")).await.unwrap();
    assert!(matches!(next_kind(&mut b_ev).await, Event::Message { text, .. } if text == "visible"));
    // bob's ack has reached the edge once alice hears "delivered" (under load the ack can
    // still be on its way when the event arrives, and the copy would count as waiting).
    next_matching(&mut a_ev, WAIT, |e| {
        matches!(e, Event::Receipt { client_msg_id, .. } if *client_msg_id == seen.client_msg_id)
    })
    .await;
    assert_eq!(
        alice
            .delete_for_everyone("bob", seen.client_msg_id)
            .await
            .unwrap(),
        0,
        "nothing was waiting"
    );
    let gone = next_kind(&mut b_ev).await;
    assert!(
        matches!(&gone, Event::Deleted { from, client_msg_id, .. } if from == "alice" && *client_msg_id == seen.client_msg_id),
        "{gone:?}"
    );
    bob.close().await.unwrap();

    // Not delivered yet: the edge drops it; only the tombstone reaches bob.
    let oops = alice.send("bob", text("oops")).await.unwrap();
    let kept = alice.send("bob", text("kept")).await.unwrap();
    // carol cannot withdraw alice's message.
    assert_eq!(
        carol
            .delete_for_everyone("bob", kept.client_msg_id)
            .await
            .unwrap(),
        0
    );
    assert_eq!(
        alice
            .delete_for_everyone("bob", oops.client_msg_id)
            .await
            .unwrap(),
        1,
        "bob's one device had it waiting"
    );
    let (bob, mut b_ev) = Client::connect(bob_cfg).await.unwrap();
    let mut got = Vec::new();
    while got.len() < 3 {
        got.push(next_kind(&mut b_ev).await);
    }
    let texts: Vec<&str> = got
        .iter()
        .filter_map(|e| match e {
            Event::Message { text, .. } => Some(text.as_str()),
            _ => None,
        })
        .collect();
    // carol's tombstone names a message of alice's: it withdraws nothing of carol's own.
    assert_eq!(texts, ["kept"], "{got:?}");
    let deleted: Vec<(&str, _)> = got
        .iter()
        .filter_map(|e| match e {
            Event::Deleted {
                from,
                client_msg_id,
                ..
            } => Some((from.as_str(), *client_msg_id)),
            _ => None,
        })
        .collect();
    assert!(deleted.contains(&("alice", oops.client_msg_id)), "{got:?}");
    // An app hides a withdrawn message only when the tombstone comes from its sender.
    assert!(deleted.contains(&("carol", kept.client_msg_id)), "{got:?}");
    bob.close().await.unwrap();
    alice.close().await.unwrap();
    carol.close().await.unwrap();
}
