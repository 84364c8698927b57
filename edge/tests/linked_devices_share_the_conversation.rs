//! bob links a laptop beside his phone: from then on every message to bob reaches both, each
//! encrypted for it; what bob sends from either shows on the other; alice hears "bob has a
//! new device" before her next message goes out; messages queued for both across an edge
//! SIGKILL arrive once each; a removed device receives nothing more.

mod common;

use common::{collect_messages, next_matching, sdk_user, text, Edge};
use missive_client::{Client, ClientConfig, ClientError, Event, EventStream, Identity};
use missive_proto::DeviceId;
use std::time::Duration;

const WAIT: Duration = Duration::from_secs(10);

/// The next message event, with who sent it and, for an own device's copy, to whom.
async fn message(events: &mut EventStream) -> (String, String, Option<String>) {
    match next_matching(events, WAIT, |e| matches!(e, Event::Message { .. })).await {
        Event::Message {
            from,
            text,
            sent_to,
            ..
        } => (from, text, sent_to),
        _ => unreachable!(),
    }
}

#[tokio::test]
async fn a_linked_laptop_reads_and_writes_until_it_is_removed() {
    let dir = tempfile::tempdir().unwrap();
    let mut edge = Edge::start(dir.path(), &[]);
    let (alice, mut a_ev, alice_cfg) = sdk_user(&edge, "alice").await;
    let (phone, mut p_ev, phone_cfg) = sdk_user(&edge, "bob").await;
    alice.send("bob", text("one device")).await.unwrap();
    assert_eq!(message(&mut p_ev).await.1, "one device");

    // The phone makes a code; the laptop joins with it and gets the next device id.
    let (code, valid) = phone.create_link_code().await.unwrap();
    assert!(valid >= Duration::from_secs(60), "{valid:?}");
    let laptop_cfg = ClientConfig::new(
        edge.quic,
        edge.ca_pem(),
        Identity::generate("bob", DeviceId(0)),
    );
    let laptop_id = missive_client::link(&laptop_cfg, code.clone())
        .await
        .unwrap();
    assert_eq!(laptop_id.device, DeviceId(2));
    let again = ClientConfig::new(
        edge.quic,
        edge.ca_pem(),
        Identity::generate("bob", DeviceId(0)),
    );
    assert!(
        matches!(
            missive_client::link(&again, code).await,
            Err(ClientError::AuthFailed(_))
        ),
        "a code links one device"
    );
    let mut laptop_cfg = laptop_cfg;
    laptop_cfg.identity = laptop_id;
    let (laptop, mut l_ev) = Client::connect(laptop_cfg.clone()).await.unwrap();
    assert_eq!(
        phone.devices().await.unwrap(),
        vec![DeviceId(1), DeviceId(2)]
    );

    // alice's next message: she hears of the new device first, then both devices read it.
    alice.send("bob", text("two devices")).await.unwrap();
    let changed = next_matching(&mut a_ev, WAIT, |e| {
        matches!(e, Event::DevicesChanged { .. })
    })
    .await;
    assert_eq!(
        changed,
        Event::DevicesChanged {
            user: "bob".into(),
            added: vec![DeviceId(2)],
            removed: vec![],
        }
    );
    assert_eq!(message(&mut p_ev).await.1, "two devices");
    assert_eq!(message(&mut l_ev).await.1, "two devices");

    // What bob sends from either device shows on the other, as sent to alice.
    phone.send("alice", text("from the phone")).await.unwrap();
    assert_eq!(message(&mut a_ev).await.1, "from the phone");
    assert_eq!(
        message(&mut l_ev).await,
        ("bob".into(), "from the phone".into(), Some("alice".into()))
    );
    laptop.send("alice", text("from the laptop")).await.unwrap();
    assert_eq!(message(&mut a_ev).await.1, "from the laptop");
    assert_eq!(
        message(&mut p_ev).await,
        ("bob".into(), "from the laptop".into(), Some("alice".into()))
    );
    // Both users compute the same safety number over the devices they know of each other.
    let at_alice = alice_cfg.identity.safety_number("bob").unwrap();
    let at_bob = phone_cfg.identity.safety_number("alice").unwrap();
    assert_eq!(at_alice, at_bob);

    // Queued for both devices across a SIGKILL of the edge: each gets each message once.
    phone.close().await.unwrap();
    laptop.close().await.unwrap();
    for i in 0..5 {
        alice
            .send("bob", text(&format!("queued {i}")))
            .await
            .unwrap();
    }
    edge.kill9();
    edge.restart();
    let want: Vec<String> = (0..5).map(|i| format!("queued {i}")).collect();
    for cfg in [phone_cfg.clone(), laptop_cfg.clone()] {
        let (bob, mut ev) = Client::connect(cfg).await.unwrap();
        let got = collect_messages(&mut ev, 5, WAIT).await;
        let texts: Vec<String> = got.into_iter().map(|(_, _, t)| t).collect();
        assert_eq!(texts, want);
        let stats = bob.delivery_stats();
        assert_eq!(stats.duplicates, 0, "{stats:?}");
        bob.close().await.unwrap();
    }

    // The phone removes the laptop: it cannot log in again and receives nothing more.
    let (phone, mut p_ev) = Client::connect(phone_cfg).await.unwrap();
    phone.remove_device(DeviceId(2)).await.unwrap();
    assert_eq!(phone.devices().await.unwrap(), vec![DeviceId(1)]);
    assert!(matches!(
        Client::connect(laptop_cfg).await,
        Err(ClientError::AuthFailed(_))
    ));
    alice.send("bob", text("after the removal")).await.unwrap();
    let changed = next_matching(&mut a_ev, WAIT, |e| {
        matches!(e, Event::DevicesChanged { .. })
    })
    .await;
    assert!(
        matches!(&changed, Event::DevicesChanged { removed, .. } if removed == &vec![DeviceId(2)]),
        "{changed:?}"
    );
    assert_eq!(message(&mut p_ev).await.1, "after the removal");
    phone.close().await.unwrap();
    alice.close().await.unwrap();
}
