//! After `kill -9` and a restart on the same port, QUIC clients learn at their next packet
//! that their connection is gone (a stateless reset the restarted edge can sign, because its
//! reset key survives in the data dir) and reconnect at once, instead of waiting out their
//! 45 s dead-connection timer.

mod common;

use common::{collect_messages, next_matching, sdk_user, text, Edge};
use missive_client::{Event, TransportKind};
use std::time::{Duration, Instant};

/// Well below the SDK's 45 s dead timer and the 40 s QUIC idle timeout, the only other ways a
/// client notices a vanished server.
const PROMPT: Duration = Duration::from_secs(8);

#[tokio::test]
async fn a_send_after_a_crash_reconnects_and_arrives_promptly() {
    let dir = tempfile::tempdir().unwrap();
    let mut edge = Edge::start(dir.path(), &[]);
    let key_file = dir.path().join(missive_edge::reset_key::FILE_NAME);
    let (alice, mut alice_events, _) = sdk_user(&edge, "alice").await;
    let (_bob, mut bob_events, _) = sdk_user(&edge, "bob").await;
    alice.send("bob", text("before")).await.unwrap();
    assert_eq!(
        collect_messages(&mut bob_events, 1, Duration::from_secs(10)).await[0].2,
        "before"
    );
    let key_before = std::fs::read(&key_file).unwrap();

    edge.kill9();
    edge.restart();
    assert_eq!(std::fs::read(&key_file).unwrap(), key_before, "same key");

    let started = Instant::now();
    // The send's first packet meets the new process: a reset, a reconnect, the resend.
    let receipt = tokio::time::timeout(PROMPT, alice.send("bob", text("after")))
        .await
        .expect("the send was not answered promptly after the restart")
        .unwrap();
    assert!(!receipt.duplicate);
    // Events come in order: the reconnect is the `Connected` after the crash's
    // `Disconnected` (an earlier `Connected` may still be queued from the first login).
    next_matching(&mut alice_events, PROMPT, |e| {
        matches!(e, Event::Disconnected { .. })
    })
    .await;
    let ev = next_matching(&mut alice_events, PROMPT, |e| {
        matches!(e, Event::Connected { .. })
    })
    .await;
    assert!(
        matches!(
            ev,
            Event::Connected {
                transport: TransportKind::Quic
            }
        ),
        "{ev:?}"
    );
    // Bob was idle: his keep-alive (every 10 s at most) meets the reset the same way.
    let got = collect_messages(&mut bob_events, 1, Duration::from_secs(10) + PROMPT).await;
    assert_eq!(got[0].2, "after");
    assert!(
        started.elapsed() < Duration::from_secs(10) + PROMPT,
        "took {:?}",
        started.elapsed()
    );
}
