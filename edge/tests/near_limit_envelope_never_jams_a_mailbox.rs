//! An envelope as large as the frame limit allows is either refused at send (typed, before
//! anything is stored) or delivered; either way the messages after it still arrive. The edge
//! derives the envelope limit from the largest frame that carries it (a `Deliver` to a
//! recipient with the longest name), so nothing it accepts can jam a mailbox.

mod common;

use common::{one_copy, sdk_user, text, Edge, Raw};
use missive_proto::{max_envelope_len, ClientMsgId, ErrorCode, Frame, Payload, Send};
use std::time::Duration;

const MAX_FRAME: u32 = 8192;

#[tokio::test]
async fn the_largest_accepted_envelope_is_delivered_and_what_follows_too() {
    let dir = tempfile::tempdir().unwrap();
    let frame = MAX_FRAME.to_string();
    let edge = Edge::start(dir.path(), &["--max-frame-bytes", &frame]);
    // The recipient's name is as long as names go: its Deliver frames are the largest.
    let bob_name = "b".repeat(missive_proto::MAX_USER_NAME);
    let (bob, bob_events, bob_cfg) = sdk_user(&edge, &bob_name).await;
    bob.close().await.unwrap();
    // Long sender name too: the Deliver carries it.
    let sender = "s".repeat(missive_proto::MAX_USER_NAME);
    let mut raw = Raw::connect(&edge, false).await;
    raw.register(&sender).await;
    let max = max_envelope_len(MAX_FRAME);
    // Incompressible bytes, as encrypted envelopes are.
    let noise = |len: usize, seed: u64| -> Vec<u8> {
        let mut x = seed | 1;
        (0..len)
            .map(|_| {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                x as u8
            })
            .collect()
    };
    // (Some 30 bytes past `max` the `Send` frame itself would exceed the limit and close.)
    for (n, len) in [(1u8, max), (2, max + 1), (3, max + 10)] {
        raw.send(
            Send {
                client_msg_id: ClientMsgId([n; 16]),
                to: bob_name.clone(),
                envelopes: one_copy(noise(len, u64::from(n))),
                own: Vec::new(),
                expires_in_secs: 0,
            }
            .into(),
        )
        .await;
    }
    let mut answers = Vec::new();
    while answers.len() < 3 {
        match raw.recv().await {
            Some(Frame::Sent(s)) => answers.push((s.client_msg_id.0[0], None)),
            Some(Frame::Rejected(r)) => answers.push((r.client_msg_id.0[0], Some(r.code))),
            Some(_) => {}
            None => panic!("connection closed"),
        }
    }
    answers.sort();
    let too_large = Some(ErrorCode::EnvelopeTooLarge.as_u16());
    assert_eq!(answers, vec![(1, None), (2, too_large), (3, too_large)]);

    // A later ordinary message from someone else.
    let (carol, _carol_events, _) = sdk_user(&edge, "carol").await;
    carol.send(bob_name.clone(), text("after")).await.unwrap();

    // bob, raw, sees the largest envelope as it was sent, in a frame within the limit.
    let mut bob_raw = Raw::connect(&edge, false).await;
    bob_raw.login(&bob_cfg.identity).await;
    let mut delivered = Vec::new();
    while delivered.len() < 2 {
        match bob_raw.recv().await {
            Some(Frame::Deliver(d)) => {
                let bytes = missive_proto::encode_to_vec(&Frame::Deliver(d.clone())).unwrap();
                assert!(bytes.len() - missive_proto::HEADER_LEN <= MAX_FRAME as usize);
                delivered.push(d);
            }
            Some(_) => {}
            None => panic!("bob's connection closed"),
        }
    }
    assert!(
        matches!(&delivered[0].payload, Payload::Envelope(e) if *e == noise(max, 1)),
        "the largest envelope arrives whole"
    );
    assert_eq!(delivered[1].from, "carol");
    drop(bob_raw);

    // And the SDK, which cannot read the first item (it is no `Content`), is not wedged by it:
    // it acknowledges it and goes on to carol's message.
    let (bob, mut bob_events2) = missive_client::Client::connect(bob_cfg).await.unwrap();
    let got = common::collect_messages(&mut bob_events2, 1, Duration::from_secs(10)).await;
    assert_eq!(got[0].2, "after");
    drop(bob_events);
    bob.close().await.unwrap();
    carol.close().await.unwrap();
}
