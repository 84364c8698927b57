//! SIGTERM while sends are in flight: clients get Goaway, the edge finishes in-flight writes,
//! flushes and exits 0; after a restart every acknowledged message is delivered exactly once,
//! and the sender's unacknowledged ones arrive through its automatic resend.

mod common;

use common::{collect_messages, next_matching, sdk_user, text, Edge};
use missive_client::{Client, Event};
use std::collections::HashSet;
use std::sync::{Arc, Mutex};
use std::time::Duration;

#[tokio::test]
async fn sigterm_drains_and_loses_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let mut edge = Edge::start(dir.path(), &[]);
    let (alice, mut alice_ev, _) = sdk_user(&edge, "alice").await;
    let (bob, _b, bob_cfg) = sdk_user(&edge, "bob").await;
    bob.close().await.unwrap();

    const N: usize = 400;
    let acked = Arc::new(Mutex::new(HashSet::new()));
    let mut sends = Vec::new();
    for i in 0..N {
        let fut = alice.send("bob", text(&format!("t{i:03}")));
        let acked = acked.clone();
        sends.push(tokio::spawn(async move {
            if let Ok(r) = fut.await {
                acked.lock().unwrap().insert(r.client_msg_id);
            }
        }));
    }
    edge.signal("TERM");
    // The client is told to go away (and reconnects later by itself).
    next_matching(&mut alice_ev, Duration::from_secs(10), |e| {
        matches!(e, Event::Disconnected { .. })
    })
    .await;
    let status = edge.terminate();
    assert!(status.success(), "edge exit after SIGTERM: {status:?}");
    let acked_before_restart = acked.lock().unwrap().len();

    edge.restart();
    // Alice's SDK reconnects and resends whatever was not acked; all sends complete.
    for s in sends {
        tokio::time::timeout(Duration::from_secs(30), s)
            .await
            .expect("send never completed after restart")
            .unwrap();
    }
    assert_eq!(acked.lock().unwrap().len(), N);
    let (bob, mut bob_ev) = Client::connect(bob_cfg).await.unwrap();
    let got = collect_messages(&mut bob_ev, N, Duration::from_secs(30)).await;
    let texts: Vec<String> = got.iter().map(|(_, _, t)| t.clone()).collect();
    let want: Vec<String> = (0..N).map(|i| format!("t{i:03}")).collect();
    assert_eq!(
        texts, want,
        "lost, duplicated or reordered across a SIGTERM"
    );
    eprintln!("{acked_before_restart} of {N} were acked before the drain finished");
    bob.close().await.unwrap();
    alice.close().await.unwrap();
}
