//! Status updates on the real edge: a post reaches its audience (and only it), its views
//! reach the poster live and in `ListStories`, and the edge drops it when its lifetime
//! (2 s here, `stories.ttl_secs`) ends: an audience member who comes online later gets
//! nothing.

mod common;

use common::{config_file, test_key, Edge, Raw, Received};
use missive_proto::{
    AckDelivery, ClientMsgId, DeviceId, Frame, ListStories, Payload, StoryPost, StoryViewed,
};
use std::time::Duration;

async fn user(edge: &Edge, name: &str) -> Raw {
    let mut r = Raw::connect(edge, false).await;
    r.register(name).await;
    r
}

/// Status bodies delivered until `quiet` passes without a frame (acknowledged as they come).
async fn stories(raw: &mut Raw, quiet: Duration) -> Vec<(String, Vec<u8>)> {
    let mut out = Vec::new();
    loop {
        match raw.recv_within(quiet).await {
            Received::Frame(Frame::Deliver(d)) => {
                if let Payload::Story(s) = d.payload {
                    out.push((d.from.clone(), s.body));
                }
                raw.send(AckDelivery { up_to: d.seq }.into()).await;
            }
            Received::Frame(_) => {}
            Received::Silence => return out,
            Received::Closed => panic!("closed"),
        }
    }
}

async fn my_stories(raw: &mut Raw) -> Vec<missive_proto::StorySummary> {
    raw.send(ListStories { request_id: 1 }.into()).await;
    loop {
        match raw.recv().await {
            Some(Frame::StoryList(l)) => return l.stories,
            Some(_) => {}
            None => panic!("closed"),
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_status_reaches_its_audience_reports_views_and_expires() {
    let dir = tempfile::tempdir().unwrap();
    let args = config_file(dir.path(), "[stories]\nttl_secs = 2\n");
    let extra: Vec<&str> = args.iter().map(String::as_str).collect();
    let edge = Edge::start_fresh(dir.path(), &extra);
    let mut alice = user(&edge, "alice").await;
    let mut bob = user(&edge, "bob").await;
    let carol = user(&edge, "carol").await;
    let mut dave = user(&edge, "dave").await;
    drop(carol); // offline from here on

    let id = ClientMsgId([5; 16]);
    alice
        .send(
            StoryPost {
                client_msg_id: id,
                audience: vec!["bob".into(), "carol".into()],
                body: b"encrypted status".to_vec(),
            }
            .into(),
        )
        .await;
    loop {
        match alice.recv().await {
            Some(Frame::Sent(s)) if s.client_msg_id == id => break,
            Some(Frame::Rejected(r)) => panic!("refused: {r:?}"),
            Some(_) => {}
            None => panic!("closed"),
        }
    }
    let quiet = Duration::from_millis(500);
    assert_eq!(
        stories(&mut bob, quiet).await,
        vec![("alice".to_string(), b"encrypted status".to_vec())]
    );
    assert!(
        stories(&mut dave, quiet).await.is_empty(),
        "dave is not in the audience"
    );

    // bob views it: alice hears at once, and sees it in her list; dave's "view" counts not.
    for viewer in [&mut bob, &mut dave] {
        viewer
            .send(
                StoryViewed {
                    from: "alice".into(),
                    client_msg_id: id,
                }
                .into(),
            )
            .await;
    }
    loop {
        match alice.recv().await {
            Some(Frame::StoryView(v)) => {
                assert_eq!((v.client_msg_id, v.viewer.as_str()), (id, "bob"));
                break;
            }
            Some(_) => {}
            None => panic!("closed"),
        }
    }
    let mine = my_stories(&mut alice).await;
    assert_eq!(mine.len(), 1);
    assert_eq!(
        (mine[0].audience, mine[0].viewers.clone()),
        (2, vec!["bob".to_string()])
    );

    // Past its 2 s lifetime it is no longer listed, and the edge's expiry (every 2 s) drops
    // the post: the expiry counts as one deleted item.
    let deleted_before = edge.metric("missive_messages_deleted_total");
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    while !my_stories(&mut alice).await.is_empty() {
        assert!(
            tokio::time::Instant::now() < deadline,
            "the status is still listed"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    common::eventually(
        "the edge drops the expired status",
        Duration::from_secs(10),
        || edge.metric("missive_messages_deleted_total") > deleted_before,
    )
    .await;
    let mut carol = Raw::connect(&edge, false).await;
    carol
        .login(&missive_client::Identity {
            user: "carol".into(),
            device: DeviceId(1),
            signing_key: test_key("carol"),
            e2ee: Default::default(),
        })
        .await;
    assert!(
        stories(&mut carol, quiet).await.is_empty(),
        "an expired status was delivered"
    );
}
