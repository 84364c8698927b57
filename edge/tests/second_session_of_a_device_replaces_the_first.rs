//! Two instances of one device (same device key): the newer login holds the session, the
//! older one is told `SessionReplaced` and stops instead of reconnecting and taking it back.

mod common;

use common::{collect_messages, next_matching, sdk_user, text, Edge};
use missive_client::{Client, ClientError, Event};
use std::time::Duration;

#[tokio::test]
async fn the_newer_instance_keeps_the_session_and_the_older_stops() {
    let dir = tempfile::tempdir().unwrap();
    let edge = Edge::start(dir.path(), &[]);
    let (alice, _alice_events, _) = sdk_user(&edge, "alice").await;
    let (old_bob, mut old_events, bob_cfg) = sdk_user(&edge, "bob").await;

    let (new_bob, mut new_events) = Client::connect(bob_cfg).await.unwrap();
    let ev = next_matching(&mut old_events, Duration::from_secs(10), |e| {
        matches!(e, Event::Disconnected { .. })
    })
    .await;
    let Event::Disconnected { reason } = ev else {
        unreachable!()
    };
    assert!(reason.contains("another connection"), "{reason}");

    // The older instance does not come back: no reconnect within a few backoff periods, and
    // it refuses further requests (its driver stopped on the fatal error).
    let back = tokio::time::timeout(Duration::from_secs(3), async {
        loop {
            match old_events.next().await {
                Some(Event::Connected { .. }) => return true,
                Some(_) => continue,
                None => return false,
            }
        }
    })
    .await;
    assert!(
        !matches!(back, Ok(true)),
        "the replaced instance reconnected"
    );
    let refused = old_bob.send("alice", text("from the old one")).await;
    assert!(
        matches!(refused, Err(ClientError::ClientClosed)),
        "{refused:?}"
    );

    // The newer one holds the session.
    alice.send("bob", text("hello new bob")).await.unwrap();
    let got = collect_messages(&mut new_events, 1, Duration::from_secs(10)).await;
    assert_eq!(got[0].2, "hello new bob");
    new_bob.send("alice", text("hi")).await.unwrap();
}
