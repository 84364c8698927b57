//! Status updates and broadcast lists through the SDK on the real edge: a status is
//! encrypted once under its own key (sent to the audience over Olm first), the audience
//! reads it and nobody else gets it, a view reaches the poster live and in its list; a
//! broadcast reaches each recipient as an ordinary 1:1 message.

mod common;

use common::{next_matching, sdk_user, Edge};
use missive_client::Event;
use std::time::Duration;

const WAIT: Duration = Duration::from_secs(30);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_status_reaches_its_audience_only_and_its_views_reach_the_poster() {
    let dir = tempfile::tempdir().unwrap();
    let edge = Edge::start_fresh(dir.path(), &[]);
    let (alice, mut a_ev, _) = sdk_user(&edge, "alice").await;
    let (bob, mut b_ev, _) = sdk_user(&edge, "bob").await;
    let (_carol, mut c_ev, _) = sdk_user(&edge, "carol").await;
    let (_dave, mut d_ev, _) = sdk_user(&edge, "dave").await;

    // A broadcast list: separate 1:1 messages, which also make bob and carol contacts.
    let sent = alice
        .broadcast(&["bob".into(), "carol".into()], "hello both")
        .await;
    assert!(sent.iter().all(Result::is_ok), "{sent:?}");
    for events in [&mut b_ev, &mut c_ev] {
        match next_matching(events, WAIT, |e| matches!(e, Event::Message { .. })).await {
            Event::Message {
                from,
                text,
                sent_to,
                ..
            } => assert_eq!(
                (from.as_str(), text.as_str(), sent_to),
                ("alice", "hello both", None)
            ),
            _ => unreachable!(),
        }
    }
    assert_eq!(
        alice.contacts(),
        vec!["bob".to_string(), "carol".to_string()]
    );

    let posted = alice
        .post_status("at the beach", alice.contacts())
        .await
        .unwrap();
    let id = posted.client_msg_id;
    for events in [&mut b_ev, &mut c_ev] {
        match next_matching(events, WAIT, |e| {
            matches!(e, Event::Status { .. } | Event::StatusUnreadable { .. })
        })
        .await
        {
            Event::Status {
                from,
                client_msg_id,
                text,
                expires_at_ms,
                ..
            } => {
                assert_eq!(
                    (from.as_str(), client_msg_id, text.as_str()),
                    ("alice", id, "at the beach")
                );
                let now_ms = std::time::SystemTime::now()
                    .duration_since(std::time::UNIX_EPOCH)
                    .unwrap()
                    .as_millis() as u64;
                assert!(expires_at_ms > now_ms + 23 * 3600 * 1000, "a day to live");
            }
            other => panic!("bob or carol could not read it: {other:?}"),
        }
    }
    // dave is not in the audience: nothing reaches him.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(1);
    while let Ok(Some(e)) = tokio::time::timeout_at(deadline, d_ev.next()).await {
        assert!(
            !matches!(e, Event::Status { .. } | Event::StatusUnreadable { .. }),
            "dave got {e:?}"
        );
    }
    bob.view_status("alice", id).unwrap();
    match next_matching(&mut a_ev, WAIT, |e| matches!(e, Event::StatusViewed { .. })).await {
        Event::StatusViewed {
            client_msg_id,
            viewer,
        } => assert_eq!((client_msg_id, viewer.as_str()), (id, "bob")),
        _ => unreachable!(),
    }
    let mine = alice.my_statuses().await.unwrap();
    assert_eq!(mine.len(), 1);
    assert_eq!(
        (mine[0].audience, mine[0].viewers.clone()),
        (2, vec!["bob".to_string()])
    );
}
