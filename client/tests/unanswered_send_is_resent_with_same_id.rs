//! A send whose answer is lost with the connection is sent again, with the same id, after
//! the client reconnects; the edge stores it once. Rate-limited sends are retried.

mod common;

use common::*;
use missive_client::{Client, Content, Event};

#[tokio::test]
async fn resend_after_connection_loss_is_stored_once() {
    let edge = FakeEdge::start(true).await;
    let alice = registered(&edge, "alice").await;
    let bob = registered(&edge, "bob").await;
    let (a, mut a_events) = Client::connect(config(&edge, alice)).await.unwrap();
    edge.set_faults(Faults {
        drop_after_store: 1,
        ..Faults::default()
    });

    let receipt = a
        .send("bob", Content::Text("survives".into()))
        .await
        .unwrap();
    assert!(receipt.duplicate, "the retry found the stored copy");
    // The first try learns bob's devices (`DeviceMismatch`), the second is stored and its
    // answer lost, the third finds the stored copy.
    assert_eq!(edge.sends_seen(), vec![receipt.client_msg_id; 3]);
    wait_for(&mut a_events, "disconnect", |e| {
        matches!(e, Event::Disconnected { .. })
    })
    .await;
    wait_for(&mut a_events, "reconnect", |e| {
        matches!(e, Event::Connected { .. })
    })
    .await;

    let (b, mut b_events) = Client::connect(config(&edge, bob)).await.unwrap();
    wait_for(&mut b_events, "message", |e| {
        matches!(e, Event::Message { .. })
    })
    .await;
    // Counted before the SDK's duplicate filter: one stored copy, delivered once.
    let stats = b.delivery_stats();
    assert_eq!((stats.duplicates, stats.deliveries), (0, 1), "{stats:?}");
    b.close().await.unwrap();
    assert_eq!(edge.mailbox_len("bob"), 0, "exactly one copy, acked");
    a.close().await.unwrap();
}

#[tokio::test]
async fn rate_limited_send_is_retried_not_failed() {
    let edge = FakeEdge::start(true).await;
    let alice = registered(&edge, "alice").await;
    registered(&edge, "bob").await;
    let (a, _events) = Client::connect(config(&edge, alice)).await.unwrap();
    edge.set_faults(Faults {
        rate_limit: 2,
        ..Faults::default()
    });
    let receipt = a
        .send("bob", Content::Text("eventually".into()))
        .await
        .unwrap();
    assert!(!receipt.duplicate);
    // One try learns bob's devices, two are rate limited, the fourth is stored.
    assert_eq!(edge.sends_seen().len(), 4);
    a.close().await.unwrap();
}

#[tokio::test]
async fn goaway_reconnects_and_keeps_subscriptions() {
    let edge = FakeEdge::start(true).await;
    let alice = registered(&edge, "alice").await;
    registered(&edge, "bob").await;
    let (a, mut events) = Client::connect(config(&edge, alice)).await.unwrap();
    a.subscribe_presence("bob").unwrap();
    wait_for(&mut events, "presence", |e| {
        matches!(e, Event::Presence { .. })
    })
    .await;
    edge.goaway("alice", 50);
    wait_for(&mut events, "disconnect", |e| {
        matches!(e, Event::Disconnected { .. })
    })
    .await;
    wait_for(&mut events, "reconnect", |e| {
        matches!(e, Event::Connected { .. })
    })
    .await;
    // The subscription was sent again on the new connection.
    wait_for(&mut events, "presence again", |e| {
        matches!(e, Event::Presence { .. })
    })
    .await;
    a.close().await.unwrap();
}
