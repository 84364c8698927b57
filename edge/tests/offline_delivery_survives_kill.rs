//! Bob is offline; alice's sends are acked; the edge is SIGKILLed and restarted; bob then gets
//! every acked message exactly once and in order, and alice gets every delivery receipt.

mod common;

use common::{collect_messages, next_matching, sdk_user, text, Edge};
use missive_client::{Client, Event, ReceiptStatus};
use std::collections::HashSet;
use std::time::Duration;

const T: Duration = Duration::from_secs(20);

#[tokio::test]
async fn offline_delivery_survives_kill9() {
    let dir = tempfile::tempdir().unwrap();
    let mut edge = Edge::start(dir.path(), &[]);
    let (alice, _alice_ev, alice_cfg) = sdk_user(&edge, "alice").await;
    let (bob, _bob_ev, bob_cfg) = sdk_user(&edge, "bob").await;
    bob.close().await.unwrap();

    let mut sent = Vec::new();
    for i in 0..50 {
        let r = alice
            .send("bob", text(&format!("m{i:02}")))
            .await
            .expect("acked");
        sent.push(r.client_msg_id);
    }
    // Every send above was acked (fsync'd) before this point; now crash the edge.
    edge.kill9();
    drop(alice);
    edge.restart();

    let (bob, mut bob_ev) = Client::connect(bob_cfg).await.expect("bob reconnects");
    let got = collect_messages(&mut bob_ev, 50, T).await;
    let texts: Vec<&str> = got.iter().map(|(_, _, t)| t.as_str()).collect();
    let want: Vec<String> = (0..50).map(|i| format!("m{i:02}")).collect();
    assert_eq!(texts, want, "messages lost, duplicated or out of order");
    let ids: Vec<_> = got.iter().map(|(_, id, _)| *id).collect();
    assert_eq!(ids, sent);
    // Nothing more arrives (no duplicates after the batch).
    let extra = tokio::time::timeout(Duration::from_millis(500), async {
        next_matching(&mut bob_ev, Duration::from_secs(5), |e| {
            matches!(e, Event::Message { .. })
        })
        .await
    })
    .await;
    assert!(extra.is_err(), "a message arrived twice: {extra:?}");
    // Before the SDK's filter: 50 stored messages, none stored twice.
    let stats = bob.delivery_stats();
    assert_eq!(stats.duplicates, 0, "{stats:?}");
    assert_eq!(stats.deliveries - stats.redeliveries, 50, "{stats:?}");
    bob.close().await.unwrap();

    // Alice gets a delivered receipt for each of the 50.
    let (alice, mut alice_ev) = Client::connect(alice_cfg).await.expect("alice reconnects");
    let mut delivered = HashSet::new();
    while delivered.len() < 50 {
        if let Event::Receipt { client_msg_id, .. } = next_matching(&mut alice_ev, T, |e| {
            matches!(
                e,
                Event::Receipt {
                    status: ReceiptStatus::Delivered,
                    ..
                }
            )
        })
        .await
        {
            delivered.insert(client_msg_id);
        }
    }
    assert_eq!(delivered, sent.iter().copied().collect::<HashSet<_>>());
    alice.close().await.unwrap();
}
