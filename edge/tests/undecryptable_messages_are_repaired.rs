//! "Unable to decrypt", then recovery, on the real edge: bob's device goes back to an older
//! copy of its E2EE state (a restored backup) and cannot read what alice sends on the newer
//! ratchet. His SDK reports the message as undecryptable (never a silent drop), starts a
//! fresh session and asks alice to send it again; she does, and the conversation goes on.

mod common;

use common::{next_matching, sdk_user, text, Edge};
use missive_client::e2ee::E2eeStore;
use missive_client::{Client, ClientConfig, Event, EventStream, Identity};
use missive_proto::DeviceId;
use std::time::Duration;

const WAIT: Duration = Duration::from_secs(10);

async fn next_text(events: &mut EventStream) -> (missive_proto::ClientMsgId, String) {
    match next_matching(events, WAIT, |e| matches!(e, Event::Message { .. })).await {
        Event::Message {
            client_msg_id,
            text,
            ..
        } => (client_msg_id, text),
        _ => unreachable!(),
    }
}

#[tokio::test]
async fn a_device_behind_on_its_ratchet_asks_again_and_reads_on() {
    let dir = tempfile::tempdir().unwrap();
    let edge = Edge::start(&dir.path().join("edge"), &[]);
    let state = dir.path().join("bob.e2ee");
    let key = [42u8; 32];
    let bob_id = Identity {
        e2ee: E2eeStore::open(&state, key).unwrap(),
        ..Identity::generate("bob", DeviceId(1))
    };
    let bob_cfg = ClientConfig::new(edge.quic, edge.ca_pem(), bob_id.clone());
    missive_client::register(&bob_cfg, None).await.unwrap();
    let (bob, mut b_ev) = Client::connect(bob_cfg.clone()).await.unwrap();
    let (alice, mut a_ev, _) = sdk_user(&edge, "alice").await;

    alice.send("bob", text("one")).await.unwrap();
    assert_eq!(next_text(&mut b_ev).await.1, "one");
    bob.send("alice", text("reply")).await.unwrap();
    assert_eq!(next_text(&mut a_ev).await.1, "reply");
    let old = dir.path().join("bob.e2ee.old");
    std::fs::copy(&state, &old).unwrap();
    // The ratchet turns again after the copy.
    alice.send("bob", text("two")).await.unwrap();
    assert_eq!(next_text(&mut b_ev).await.1, "two");
    bob.send("alice", text("reply 2")).await.unwrap();
    assert_eq!(next_text(&mut a_ev).await.1, "reply 2");
    bob.close().await.unwrap();

    // bob's device comes back from the older copy.
    std::fs::copy(&old, &state).unwrap();
    let restored = Identity {
        e2ee: E2eeStore::open(&state, key).unwrap(),
        ..bob_id
    };
    let mut cfg = bob_cfg;
    cfg.identity = restored;
    let (bob, mut b_ev) = Client::connect(cfg).await.unwrap();
    let three = alice.send("bob", text("three")).await.unwrap();
    let lost = next_matching(&mut b_ev, WAIT, |e| {
        matches!(e, Event::Undecryptable { .. })
    })
    .await;
    assert!(
        matches!(&lost, Event::Undecryptable { from, client_msg_id, .. } if from == "alice" && *client_msg_id == three.client_msg_id),
        "{lost:?}"
    );
    // Sent again on request, on the fresh session: it arrives as the message it repeats.
    let (id, body) = next_text(&mut b_ev).await;
    assert_eq!((id, body.as_str()), (three.client_msg_id, "three"));
    // And the conversation goes on, both ways.
    alice.send("bob", text("four")).await.unwrap();
    assert_eq!(next_text(&mut b_ev).await.1, "four");
    bob.send("alice", text("all good")).await.unwrap();
    assert_eq!(next_text(&mut a_ev).await.1, "all good");
    bob.close().await.unwrap();
    alice.close().await.unwrap();
}
