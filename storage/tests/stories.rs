//! Status updates in storage: stored once for an audience, views recorded once per audience
//! member, the post gone (and its references skipped) once its lifetime ends.

mod common;

use common::{config, id};
use missive_proto::{DeviceId, Payload, ServerSeq};
use missive_storage::{Engine, MailboxId, Store, StoryOutcome};
use std::time::Duration;

fn stories_in(store: &Store, user: &str) -> Vec<Vec<u8>> {
    store
        .read_mailbox(
            &MailboxId::new(user, DeviceId(1)),
            ServerSeq(0),
            usize::MAX,
            usize::MAX,
        )
        .unwrap()
        .into_iter()
        .filter_map(|(_, i)| match i.payload {
            Payload::Story(s) => Some(s.body),
            _ => None,
        })
        .collect()
}

#[tokio::test]
async fn a_story_reaches_its_audience_records_views_and_expires() {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(dir.path(), config(Engine::Fjall), None).unwrap();
    for u in ["alice", "bob", "carol", "dave"] {
        store
            .register(u, DeviceId(1), [7; 32], None, false, 1)
            .await
            .unwrap();
    }
    let post = |audience: &[&str], n| {
        store.post_story(
            ("alice", DeviceId(1), id(n)),
            audience.iter().map(|u| u.to_string()).collect(),
            vec![n as u8; 32],
            Duration::from_secs(60),
            1_000,
        )
    };
    assert_eq!(
        post(&["bob", "nobody"], 1).await.unwrap(),
        StoryOutcome::UnknownUser("nobody".into())
    );
    assert_eq!(
        post(&["bob", "carol"], 2).await.unwrap(),
        StoryOutcome::Stored {
            server_ts_ms: 1_000,
            references: 2
        }
    );
    assert_eq!(stories_in(&store, "bob"), vec![vec![2u8; 32]]);
    assert!(stories_in(&store, "dave").is_empty(), "not in the audience");
    // Views: once per audience member, never by outsiders.
    assert!(store
        .mark_story_viewed("bob", "alice", id(2))
        .await
        .unwrap());
    assert!(!store
        .mark_story_viewed("bob", "alice", id(2))
        .await
        .unwrap());
    assert!(!store
        .mark_story_viewed("dave", "alice", id(2))
        .await
        .unwrap());
    let mine = store.stories_of("alice", 2_000).unwrap();
    assert_eq!(mine.len(), 1);
    assert_eq!(
        (mine[0].audience, mine[0].viewers.clone()),
        (2, vec!["bob".to_string()])
    );
    // Past its lifetime the post is dropped: gone from the list and from the mailboxes.
    let swept = store.expire(1_000 + 60_001).await.unwrap();
    assert_eq!(swept.items, 1);
    assert!(store
        .stories_of("alice", 1_000 + 60_001)
        .unwrap()
        .is_empty());
    assert!(
        stories_in(&store, "carol").is_empty(),
        "an expired post is not delivered"
    );
}
