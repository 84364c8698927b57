//! What one account or one address can make the edge store or do is bounded, each bound
//! with a typed refusal before any work: registrations per address, presence visibility
//! changes, presence subscriptions, and undelivered items per mailbox. Meanwhile another
//! pair of users keeps chatting.

mod common;

use common::{config_file, one_copy, sdk_user, text, Edge, Raw};
use missive_proto::{ClientMsgId, ErrorCode, Frame, Send, SetPresenceVisibility, Visibility};
use std::time::Duration;

#[tokio::test]
async fn floods_are_refused_with_typed_errors_while_others_chat() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = config_file(
        dir.path(),
        "[limits]\naddress_exempt = []\n\
         [registration]\nper_address_per_hour = 5\n\
         [storage]\nmailbox_max_items = 20\n",
    );
    let edge = Edge::start(&dir.path().join("edge"), &[&cfg[0], &cfg[1]]);
    // Two registrations spent on the chatting pair.
    let (alice, _alice_events, _) = sdk_user(&edge, "alice").await;
    let (bob, mut bob_events, _) = sdk_user(&edge, "bob").await;
    let chat = tokio::spawn(async move {
        for i in 0..100 {
            alice
                .send("bob", text(&format!("c{i}")))
                .await
                .expect("chat send");
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        alice
    });

    // Registration flood from this address: three more succeed, then RateLimited.
    let mut names = Vec::new();
    for i in 0..3 {
        let mut c = Raw::connect(&edge, false).await;
        let name = format!("flood{i}");
        c.register(&name).await;
        names.push(c);
    }
    let mut c = Raw::connect(&edge, false).await;
    let ch = c.hello().await;
    let key = common::test_key("flood9");
    use ed25519_dalek::Signer;
    c.send(
        missive_proto::Register {
            user: "flood9".into(),
            device: missive_proto::DeviceId(1),
            device_key: key.verifying_key().to_bytes(),
            invite: None,
            signature: key
                .sign(&missive_proto::login_transcript(
                    &ch,
                    &c.exporter,
                    "flood9",
                    missive_proto::DeviceId(1),
                ))
                .to_bytes(),
        }
        .into(),
    )
    .await;
    assert_eq!(c.expect_error_then_close().await, ErrorCode::RateLimited);

    // Presence visibility flood: the writes are coalesced, then the connection is refused.
    let flooder = &mut names[0];
    let mut frames = Vec::new();
    for i in 0..50_000 {
        let visibility = if i % 2 == 0 {
            Visibility::Nobody
        } else {
            Visibility::Everyone
        };
        missive_proto::encode(&SetPresenceVisibility { visibility }.into(), &mut frames).unwrap();
    }
    use tokio::io::AsyncWriteExt;
    let _ = flooder.writer.write_all(&frames).await;
    assert_eq!(
        flooder.expect_error_then_close().await,
        ErrorCode::RateLimited
    );

    // Subscription flood: distinct names past the per-connection count.
    let flooder = &mut names[1];
    let mut frames = Vec::new();
    for i in 0..1_500 {
        missive_proto::encode(
            &missive_proto::SubscribePresence {
                user: format!("u{i}"),
            }
            .into(),
            &mut frames,
        )
        .unwrap();
    }
    let _ = flooder.writer.write_all(&frames).await;
    assert_eq!(
        flooder.expect_error_then_close().await,
        ErrorCode::LimitExceeded
    );

    // Mailbox quota: the offline recipient's mailbox takes 20 items; the 21st is refused,
    // typed and retryable, and nothing of it is stored.
    let sender = &mut names[2];
    let mut frames = Vec::new();
    for n in 0..25u8 {
        missive_proto::encode(
            &Send {
                client_msg_id: ClientMsgId([n; 16]),
                to: "flood1".into(),
                envelopes: one_copy(vec![n; 32]),
                own: Vec::new(),
                expires_in_secs: 0,
            }
            .into(),
            &mut frames,
        )
        .unwrap();
    }
    sender.send_bytes(&frames).await;
    let (mut sent, mut full) = (0, 0);
    while sent + full < 25 {
        match sender.recv().await {
            Some(Frame::Sent(_)) => sent += 1,
            Some(Frame::Rejected(r)) if r.code == ErrorCode::MailboxFull.as_u16() => full += 1,
            Some(Frame::Rejected(r)) => panic!("refused for another reason: {r:?}"),
            Some(_) => {}
            None => panic!("the sender was closed"),
        }
    }
    assert_eq!((sent, full), (20, 5));

    // The chat went on throughout, every message once and in order.
    let alice = chat.await.unwrap();
    let got = common::collect_messages(&mut bob_events, 100, Duration::from_secs(20)).await;
    let texts: Vec<String> = got.into_iter().map(|(_, _, t)| t).collect();
    let want: Vec<String> = (0..100).map(|i| format!("c{i}")).collect();
    assert_eq!(texts, want);
    alice.close().await.unwrap();
    bob.close().await.unwrap();
}
