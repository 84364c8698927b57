//! The same client_msg_id sent twice, and again after an edge crash, is stored and delivered
//! once.

mod common;

use common::{collect_messages, next_matching, sdk_user, text, Edge};
use missive_client::{Client, ClientMsgId, Event};
use std::time::Duration;

#[tokio::test]
async fn same_client_msg_id_is_delivered_once() {
    let dir = tempfile::tempdir().unwrap();
    let mut edge = Edge::start(dir.path(), &[]);
    let (alice, _a, alice_cfg) = sdk_user(&edge, "alice").await;
    let (bob, _b, bob_cfg) = sdk_user(&edge, "bob").await;
    bob.close().await.unwrap();

    let id = ClientMsgId([0x42; 16]);
    let first = alice.send_with_id(id, "bob", text("once")).await.unwrap();
    assert!(!first.duplicate);
    let second = alice.send_with_id(id, "bob", text("once")).await.unwrap();
    assert!(
        second.duplicate,
        "a retry with the same id was stored again"
    );
    alice.close().await.unwrap();

    edge.kill9();
    edge.restart();
    let (alice, _a) = Client::connect(alice_cfg).await.unwrap();
    let third = alice.send_with_id(id, "bob", text("once")).await.unwrap();
    assert!(third.duplicate, "dedup did not survive the restart");
    let other = alice.send("bob", text("after")).await.unwrap();
    assert!(!other.duplicate);

    let (bob, mut bob_ev) = Client::connect(bob_cfg).await.unwrap();
    let got = collect_messages(&mut bob_ev, 2, Duration::from_secs(10)).await;
    assert_eq!(got[0].1, id);
    assert_eq!(got[0].2, "once");
    assert_eq!(got[1].2, "after");
    let extra = tokio::time::timeout(Duration::from_millis(500), async {
        next_matching(&mut bob_ev, Duration::from_secs(5), |e| {
            matches!(e, Event::Message { .. })
        })
        .await
    })
    .await;
    assert!(extra.is_err(), "duplicate delivered: {extra:?}");
    // Counted before the SDK's duplicate filter: the edge sent two stored messages, each at
    // its own seq, and nothing it had stored twice.
    let stats = bob.delivery_stats();
    assert_eq!(stats.duplicates, 0, "{stats:?}");
    assert_eq!(stats.deliveries - stats.redeliveries, 2, "{stats:?}");
    bob.close().await.unwrap();
    alice.close().await.unwrap();
}
