//! A message goes from alice to bob; alice gets the delivery receipt when bob's client acks,
//! and the read receipt when bob marks it read. Presence and typing reach the other side
//! (the edge shows bob's presence to alice once he has written to her).

mod common;

use common::*;
use missive_client::{Client, ClientError, Content, Event, PresenceState, ReceiptStatus};

#[tokio::test]
async fn message_delivered_and_read() {
    let edge = Edge::start();
    let alice = registered(&edge, "alice").await;
    let bob = registered(&edge, "bob").await;
    let (a, mut a_events) = Client::connect(config(&edge, alice)).await.unwrap();
    let (b, mut b_events) = Client::connect(config(&edge, bob)).await.unwrap();

    let sent = a.send("bob", Content::Text("hi bob".into())).await.unwrap();
    assert!(!sent.duplicate);
    let msg = wait_for(&mut b_events, "message", |e| {
        matches!(e, Event::Message { .. })
    })
    .await;
    let Event::Message {
        from,
        client_msg_id,
        text,
        ..
    } = msg
    else {
        unreachable!()
    };
    assert_eq!((from.as_str(), text.as_str()), ("alice", "hi bob"));
    assert_eq!(client_msg_id, sent.client_msg_id);

    let delivered = wait_for(&mut a_events, "delivered", |e| {
        matches!(e, Event::Receipt { .. })
    })
    .await;
    assert!(
        matches!(delivered, Event::Receipt { ref from, client_msg_id, status: ReceiptStatus::Delivered, .. } if from == "bob" && client_msg_id == sent.client_msg_id)
    );

    b.mark_read("alice", vec![client_msg_id]).await.unwrap();
    let read = wait_for(&mut a_events, "read", |e| {
        matches!(
            e,
            Event::Receipt {
                status: ReceiptStatus::Read,
                ..
            }
        )
    })
    .await;
    assert!(
        matches!(read, Event::Receipt { ref from, client_msg_id, .. } if from == "bob" && client_msg_id == sent.client_msg_id)
    );

    // bob writes back: alice may now watch his presence.
    b.send("alice", Content::Text("hi alice".into()))
        .await
        .unwrap();
    a.subscribe_presence("bob").unwrap();
    let p = wait_for(&mut a_events, "presence", |e| {
        matches!(e, Event::Presence { .. })
    })
    .await;
    assert_eq!(
        p,
        Event::Presence {
            user: "bob".into(),
            state: PresenceState::Online
        }
    );

    b.typing("alice", true).unwrap();
    let t = wait_for(&mut a_events, "typing", |e| {
        matches!(e, Event::Typing { .. })
    })
    .await;
    assert_eq!(
        t,
        Event::Typing {
            from: "bob".into(),
            typing: true
        }
    );

    let err = a
        .send("nobody", Content::Text("?".into()))
        .await
        .unwrap_err();
    assert!(
        matches!(err, ClientError::Rejected { code: 8, .. }),
        "{err:?}"
    );

    a.close().await.unwrap();
    b.close().await.unwrap();
    // Everything bob got was acked before his Bye was answered; alice's receipts and message
    // too: no mailbox holds anything.
    metric_becomes(&edge, "missive_mailbox_items", 0.0).await;
    assert!(matches!(
        a.send("bob", Content::Text("late".into())).await,
        Err(ClientError::ClientClosed)
    ));
}
