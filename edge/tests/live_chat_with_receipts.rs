//! Two online users chat both ways and see sent → delivered → read; typing and presence flow
//! live; the edge's logs never carry message text.

mod common;

use common::{next_matching, sdk_user, text, Edge};
use missive_client::{Client, Event, EventStream, PresenceState, ReceiptStatus, Visibility};
use std::time::Duration;

const T: Duration = Duration::from_secs(10);

/// `from` sends `body` to `to`; checks the message, then "delivered", then "read".
#[allow(clippy::too_many_arguments)]
async fn exchange(
    from: &Client,
    from_ev: &mut EventStream,
    to: &Client,
    to_ev: &mut EventStream,
    from_name: &str,
    to_name: &str,
    body: &str,
) {
    let sent = from.send(to_name, text(body)).await.expect("sent");
    assert!(!sent.duplicate);
    let got = next_matching(to_ev, T, |e| matches!(e, Event::Message { .. })).await;
    let Event::Message {
        from: sender,
        client_msg_id,
        text: t,
        ..
    } = got
    else {
        unreachable!()
    };
    assert_eq!((sender.as_str(), t.as_str()), (from_name, body));
    assert_eq!(client_msg_id, sent.client_msg_id);
    // auto_ack acknowledged it: the sender gets "delivered".
    let id = sent.client_msg_id;
    next_matching(from_ev, T, |e| {
        matches!(e, Event::Receipt { status: ReceiptStatus::Delivered, client_msg_id, from, .. }
            if *client_msg_id == id && from == to_name)
    })
    .await;
    // The recipient reads it: the sender gets "read".
    to.mark_read(from_name, vec![id])
        .await
        .expect("read receipt sent");
    next_matching(from_ev, T, |e| {
        matches!(e, Event::Receipt { status: ReceiptStatus::Read, client_msg_id, .. }
            if *client_msg_id == id)
    })
    .await;
}

#[tokio::test]
async fn live_chat_both_ways_with_receipts() {
    let dir = tempfile::tempdir().unwrap();
    let edge = Edge::start(dir.path(), &[]);
    let (alice, mut alice_ev, _) = sdk_user(&edge, "alice").await;
    let (bob, mut bob_ev, _) = sdk_user(&edge, "bob").await;

    exchange(
        &alice,
        &mut alice_ev,
        &bob,
        &mut bob_ev,
        "alice",
        "bob",
        "secret-text-from-alice",
    )
    .await;
    exchange(
        &bob,
        &mut bob_ev,
        &alice,
        &mut alice_ev,
        "bob",
        "alice",
        "secret-text-from-bob",
    )
    .await;

    // Typing is forwarded live.
    alice.typing("bob", true).unwrap();
    next_matching(
        &mut bob_ev,
        T,
        |e| matches!(e, Event::Typing { from, typing: true } if from == "alice"),
    )
    .await;

    // Presence: bob watches alice; alice online, then last seen after she leaves.
    bob.subscribe_presence("alice").unwrap();
    next_matching(
        &mut bob_ev,
        T,
        |e| matches!(e, Event::Presence { user, state: PresenceState::Online } if user == "alice"),
    )
    .await;
    alice.close().await.unwrap();
    next_matching(&mut bob_ev, T, |e| {
        matches!(e, Event::Presence { user, state: PresenceState::LastSeen(ms) } if user == "alice" && *ms > 0)
    })
    .await;

    // A user who hides presence is reported hidden.
    bob.set_visibility(Visibility::Nobody).unwrap();
    let (carol, mut carol_ev, _) = sdk_user(&edge, "carol").await;
    // Visibility is applied asynchronously; subscribe until the hidden state shows.
    let deadline = tokio::time::Instant::now() + T;
    loop {
        carol.subscribe_presence("bob").unwrap();
        let e = next_matching(&mut carol_ev, T, |e| matches!(e, Event::Presence { .. })).await;
        if matches!(
            e,
            Event::Presence {
                state: PresenceState::Hidden,
                ..
            }
        ) {
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "bob never became hidden"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }

    bob.close().await.unwrap();
    carol.close().await.unwrap();
    let logs = edge.logs();
    assert!(logs.contains("logged in"), "edge logs were not captured");
    assert!(
        !logs.contains("secret-text"),
        "message content reached the edge's logs"
    );
}
