//! Presence and typing follow contacts, as WhatsApp's defaults do: a user's online state and
//! last-seen are shown only to the users that user has written to, and typing notices go
//! only into a conversation the recipient has taken part in. To a stranger a user is
//! `Hidden`, exactly like a name that does not exist.

mod common;

use common::{next_matching, sdk_user, text, Edge};
use missive_client::Event;
use missive_proto::PresenceState;
use std::time::Duration;

fn presence_of(e: &Event, who: &str) -> Option<PresenceState> {
    match e {
        Event::Presence { user, state } if user == who => Some(*state),
        _ => None,
    }
}

#[tokio::test]
async fn strangers_see_hidden_and_cannot_pester() {
    let dir = tempfile::tempdir().unwrap();
    let edge = Edge::start(dir.path(), &[]);
    let (bob, mut bob_events, _) = sdk_user(&edge, "bob").await;
    let (mallory, mut mallory_events, _) = sdk_user(&edge, "mallory").await;

    // bob is online, but mallory is no contact of his: Hidden, as for a made-up name.
    mallory.subscribe_presence("bob").unwrap();
    let seen = next_matching(&mut mallory_events, Duration::from_secs(10), |e| {
        presence_of(e, "bob").is_some()
    })
    .await;
    assert_eq!(presence_of(&seen, "bob"), Some(PresenceState::Hidden));
    mallory.subscribe_presence("nosuchuser").unwrap();
    let seen = next_matching(&mut mallory_events, Duration::from_secs(10), |e| {
        presence_of(e, "nosuchuser").is_some()
    })
    .await;
    assert_eq!(
        presence_of(&seen, "nosuchuser"),
        Some(PresenceState::Hidden)
    );

    // mallory writes to bob (a message is always allowed) and types at him: bob never wrote
    // to mallory, so no notice reaches him. (Ten: the rest of the typing budget, a burst of
    // 30, is for later.)
    for _ in 0..10 {
        mallory.typing("bob", true).unwrap();
    }
    mallory.send("bob", text("hello?")).await.unwrap();
    let got = next_matching(&mut bob_events, Duration::from_secs(10), |e| {
        matches!(e, Event::Message { .. } | Event::Typing { .. })
    })
    .await;
    assert!(
        matches!(&got, Event::Message { text, .. } if text == "hello?"),
        "a stranger's typing reached bob first: {got:?}"
    );

    // bob answers: mallory is now bob's contact. He sees bob online, and his typing is
    // forwarded (rate-limited: a burst of 30, then dropped, never fatal).
    bob.send("mallory", text("who is this")).await.unwrap();
    mallory.subscribe_presence("bob").unwrap();
    let seen = next_matching(&mut mallory_events, Duration::from_secs(10), |e| {
        presence_of(e, "bob").is_some()
    })
    .await;
    assert_eq!(presence_of(&seen, "bob"), Some(PresenceState::Online));
    for _ in 0..100 {
        mallory.typing("bob", true).unwrap();
    }
    mallory.send("bob", text("marker")).await.unwrap();
    let mut typings = 0;
    loop {
        match next_matching(&mut bob_events, Duration::from_secs(10), |e| {
            matches!(e, Event::Message { .. } | Event::Typing { .. })
        })
        .await
        {
            Event::Typing { from, .. } => {
                assert_eq!(from, "mallory");
                typings += 1;
            }
            Event::Message { text, .. } if text == "marker" => break,
            _ => {}
        }
    }
    // About 20 were left of the burst of 30 (more refilled at 10/s meanwhile; never more
    // than the burst): the other 70-odd were dropped.
    assert!(
        (15..=30).contains(&typings),
        "{typings} typing notices of 100 reached bob"
    );
    // bob goes offline: mallory, now a contact, hears of it.
    bob.close().await.unwrap();
    let seen = next_matching(&mut mallory_events, Duration::from_secs(10), |e| {
        matches!(presence_of(e, "bob"), Some(PresenceState::LastSeen(_)))
    })
    .await;
    assert!(matches!(
        presence_of(&seen, "bob"),
        Some(PresenceState::LastSeen(_))
    ));
    mallory.close().await.unwrap();
}
