//! Call signaling through a real edge with real SDK clients: an invite rings every device of
//! the callee (each decrypts its own sealed offer), picking up on one stops the others, the
//! sealed answer and candidates reach the other side, and both histories keep the call. A
//! ring timeout is a missed call on both sides, a second caller gets busy, two users calling
//! each other end up in exactly one call, and an offline callee is woken with a content-free
//! "call" push and rung once it comes online.

mod common;

use common::push_gateway::{body, serve_one};
use common::{next_matching, sdk_user, text, Edge};
use missive_client::{
    CallEndReason, CallEvent, CallId, CallMedia, CallOffer, Client, ClientConfig, DeviceId, Event,
    EventStream, Identity,
};
use std::time::Duration;
use tokio::net::TcpListener;

const WAIT: Duration = Duration::from_secs(20);

fn offer(secret: u8, description: &[u8]) -> CallOffer {
    CallOffer {
        secret: [secret; 32],
        description: description.to_vec(),
    }
}

/// The next call event of `call` (any call when `None`), skipping everything else.
async fn call_event(events: &mut EventStream, call: Option<CallId>) -> CallEvent {
    let ev = next_matching(
        events,
        WAIT,
        |e| matches!(e, Event::Call(c) if call.is_none_or(|id| c.call_id() == id)),
    )
    .await;
    match ev {
        Event::Call(c) => c,
        other => unreachable!("{other:?}"),
    }
}

async fn ended(events: &mut EventStream, call: CallId) -> CallEndReason {
    loop {
        if let CallEvent::Ended { reason, .. } = call_event(events, Some(call)).await {
            return reason;
        }
    }
}

/// `client`'s call history once `done` holds for it: records are written as a call ends,
/// just after its participants are told.
async fn history_when(
    client: &Client,
    done: impl Fn(&[missive_client::CallRecord]) -> bool,
) -> Vec<missive_client::CallRecord> {
    let deadline = std::time::Instant::now() + WAIT;
    loop {
        let records = client.call_history(50).await.unwrap();
        if done(&records) || std::time::Instant::now() > deadline {
            return records;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Links a second device to `phone`'s account and connects it.
async fn link_second(edge: &Edge, phone: &Client, user: &str) -> (Client, EventStream) {
    let (code, _) = phone.create_link_code().await.unwrap();
    let mut cfg = ClientConfig::new(
        edge.quic,
        edge.ca_pem(),
        Identity::generate(user, DeviceId(0)),
    );
    cfg.identity = missive_client::link(&cfg, code).await.unwrap();
    Client::connect(cfg).await.unwrap()
}

#[tokio::test]
async fn a_call_rings_every_device_and_is_answered_on_one() {
    let dir = tempfile::tempdir().unwrap();
    let edge = Edge::start(dir.path(), &[]);
    let (alice, mut a_ev, _) = sdk_user(&edge, "alice").await;
    let (phone, mut p_ev, _) = sdk_user(&edge, "bob").await;
    // alice knows bob's first device only: the edge makes her seal for the laptop too.
    alice.send("bob", text("hi")).await.unwrap();
    let (laptop, mut l_ev) = link_second(&edge, &phone, "bob").await;

    let call = alice
        .invite_call("bob", CallMedia::Video, offer(7, b"alice's description"))
        .unwrap();
    for events in [&mut p_ev, &mut l_ev] {
        match call_event(events, Some(call)).await {
            CallEvent::Incoming {
                from,
                from_device,
                media,
                offer,
                rings_for,
                ..
            } => {
                assert_eq!((from.as_str(), from_device), ("alice", DeviceId(1)));
                assert_eq!(media, CallMedia::Video);
                assert_eq!(offer.secret, [7; 32], "each device decrypts its own offer");
                assert_eq!(offer.description, b"alice's description");
                assert!(rings_for > Duration::from_secs(20), "{rings_for:?}");
            }
            other => panic!("expected a ring, got {other:?}"),
        }
    }
    assert_eq!(
        call_event(&mut a_ev, Some(call)).await,
        CallEvent::Ringing {
            call_id: call,
            devices: 2
        }
    );

    laptop
        .accept_call(call, b"bob's description".to_vec())
        .unwrap();
    assert_eq!(
        call_event(&mut a_ev, Some(call)).await,
        CallEvent::Accepted {
            call_id: call,
            device: DeviceId(2),
            description: b"bob's description".to_vec()
        }
    );
    assert_eq!(
        call_event(&mut p_ev, Some(call)).await,
        CallEvent::AnsweredElsewhere {
            call_id: call,
            device: DeviceId(2)
        },
        "the phone stops ringing"
    );

    alice
        .send_call_candidates(call, b"relay candidate".to_vec())
        .unwrap();
    laptop
        .send_call_candidates(call, b"reflexive candidate".to_vec())
        .unwrap();
    assert_eq!(
        call_event(&mut l_ev, Some(call)).await,
        CallEvent::Candidates {
            call_id: call,
            description: b"relay candidate".to_vec()
        }
    );
    assert_eq!(
        call_event(&mut a_ev, Some(call)).await,
        CallEvent::Candidates {
            call_id: call,
            description: b"reflexive candidate".to_vec()
        }
    );

    tokio::time::sleep(Duration::from_millis(1100)).await;
    alice.hang_up(call).unwrap();
    assert_eq!(ended(&mut l_ev, call).await, CallEndReason::HungUp);
    assert_eq!(ended(&mut a_ev, call).await, CallEndReason::HungUp);

    let mine = history_when(&alice, |r| !r.is_empty()).await;
    let theirs = history_when(&laptop, |r| !r.is_empty()).await;
    assert_eq!((mine.len(), theirs.len()), (1, 1), "{mine:?} {theirs:?}");
    let (a, b) = (&mine[0], &theirs[0]);
    assert_eq!((a.call_id, b.call_id), (call, call));
    assert!(a.outgoing && !b.outgoing);
    assert_eq!((a.peer.as_str(), b.peer.as_str()), ("bob", "alice"));
    assert_eq!(a.media, CallMedia::Video);
    assert!(a.duration_ms() >= 1000, "{a:?}");
    assert_eq!(a.end, CallEndReason::HungUp);
    assert!(edge.metric("missive_calls_answered_total ") >= 1.0);
    assert_eq!(edge.metric("missive_calls_active "), 0.0);
}

#[tokio::test]
async fn missed_busy_and_glare() {
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("edge.toml");
    std::fs::write(&config, "[calls]\nring_timeout_secs = 5\n").unwrap();
    let edge = Edge::start(dir.path(), &["--config", config.to_str().unwrap()]);
    let (alice, mut a_ev, _) = sdk_user(&edge, "alice").await;
    let (bob, mut b_ev, _) = sdk_user(&edge, "bob").await;
    let (carol, mut c_ev, _) = sdk_user(&edge, "carol").await;

    // Nobody picks up: missed, on both sides.
    let missed = alice
        .invite_call("bob", CallMedia::Audio, offer(1, b"a"))
        .unwrap();
    assert!(matches!(
        call_event(&mut b_ev, Some(missed)).await,
        CallEvent::Incoming { .. }
    ));
    let started = std::time::Instant::now();
    assert_eq!(ended(&mut a_ev, missed).await, CallEndReason::Missed);
    assert_eq!(ended(&mut b_ev, missed).await, CallEndReason::Missed);
    let rang = started.elapsed();
    assert!(rang >= Duration::from_secs(4), "rang {rang:?}");
    let bobs = history_when(&bob, |r| !r.is_empty()).await;
    assert_eq!(bobs.len(), 1);
    assert!(bobs[0].missed() && bobs[0].end == CallEndReason::Missed);
    let alices = history_when(&alice, |r| !r.is_empty()).await;
    assert!(alices[0].outgoing && alices[0].end == CallEndReason::Missed);

    // bob is in a call with alice: carol hears busy.
    let talk = alice
        .invite_call("bob", CallMedia::Audio, offer(2, b"a"))
        .unwrap();
    assert!(matches!(
        call_event(&mut b_ev, Some(talk)).await,
        CallEvent::Incoming { .. }
    ));
    bob.accept_call(talk, b"b".to_vec()).unwrap();
    assert!(matches!(
        call_event(&mut a_ev, Some(talk)).await,
        CallEvent::Ringing { .. }
    ));
    assert!(matches!(
        call_event(&mut a_ev, Some(talk)).await,
        CallEvent::Accepted { .. }
    ));
    let busy = carol
        .invite_call("bob", CallMedia::Video, offer(3, b"c"))
        .unwrap();
    assert_eq!(ended(&mut c_ev, busy).await, CallEndReason::Busy);
    let bobs = history_when(&bob, |r| r.iter().any(|r| r.call_id == busy)).await;
    assert!(
        bobs.iter()
            .any(|r| r.call_id == busy && r.peer == "carol" && r.end == CallEndReason::Busy),
        "{bobs:?}"
    );
    bob.hang_up(talk).unwrap();
    assert_eq!(ended(&mut a_ev, talk).await, CallEndReason::HungUp);

    // carol and alice call each other at once: exactly one call comes of it.
    let from_carol = carol
        .invite_call("alice", CallMedia::Audio, offer(4, b"c"))
        .unwrap();
    let from_alice = alice
        .invite_call("carol", CallMedia::Audio, offer(5, b"a"))
        .unwrap();
    // Each side hears how its own invite went; the side whose invite lost is rung by the
    // other one's.
    let (mut survivor, mut lost, mut rung) = (None, 0, None);
    for (events, mine, user) in [
        (&mut c_ev, from_carol, "carol"),
        (&mut a_ev, from_alice, "alice"),
    ] {
        let (mut outcome, mut incoming) = (None, None);
        while outcome.is_none() || (outcome == Some(false) && incoming.is_none()) {
            match call_event(events, None).await {
                CallEvent::Ringing { call_id, .. } if call_id == mine => outcome = Some(true),
                CallEvent::Ended {
                    call_id,
                    reason: CallEndReason::Glare,
                } if call_id == mine => outcome = Some(false),
                CallEvent::Incoming { call_id, .. } => incoming = Some(call_id),
                other => panic!("unexpected {other:?}"),
            }
        }
        if outcome == Some(true) {
            survivor = Some(mine);
        } else {
            lost += 1;
            rung = Some((user, incoming.unwrap()));
        }
    }
    assert_eq!(lost, 1, "exactly one invite loses the race");
    let survivor = survivor.expect("one invite rings");
    let (rung_user, rung_call) = rung.unwrap();
    assert_eq!(
        rung_call, survivor,
        "the loser is rung by the surviving call"
    );
    let (callee, callee_ev) = if rung_user == "alice" {
        (&alice, &mut a_ev)
    } else {
        (&carol, &mut c_ev)
    };
    callee.accept_call(survivor, b"x".to_vec()).unwrap();
    callee.hang_up(survivor).unwrap();
    assert_eq!(ended(callee_ev, survivor).await, CallEndReason::HungUp);
    let carols = history_when(&carol, |r| r.iter().any(|r| r.call_id == survivor)).await;
    let glare_records: Vec<_> = carols.iter().filter(|r| r.peer == "alice").collect();
    assert_eq!(
        glare_records.len(),
        1,
        "one call in carol's history: {carols:?}"
    );
    assert_eq!(glare_records[0].call_id, survivor);
    assert!(edge.metric("missive_calls_ended_total{reason=\"glare\"} ") >= 1.0);
}

#[tokio::test]
async fn an_offline_callee_is_pushed_and_rung_when_it_comes_online() {
    let gateway = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}/wake", gateway.local_addr().unwrap());
    let dir = tempfile::tempdir().unwrap();
    let edge = Edge::start(dir.path(), &["--push-url", &url]);
    let (alice, mut a_ev, _) = sdk_user(&edge, "alice").await;
    let (bob, _b_ev, bob_cfg) = sdk_user(&edge, "bob").await;
    bob.close().await.unwrap();

    let call = alice
        .invite_call("bob", CallMedia::Audio, offer(9, b"offer"))
        .unwrap();
    assert_eq!(
        call_event(&mut a_ev, Some(call)).await,
        CallEvent::Ringing {
            call_id: call,
            devices: 0
        }
    );
    let request = tokio::time::timeout(WAIT, serve_one(&gateway, "204 No Content"))
        .await
        .expect("no wake-up POST");
    let body = body(&request);
    let v: serde_json::Value = serde_json::from_str(body).unwrap();
    assert_eq!(v["reason"], "call", "{body}");
    assert_eq!(v["user"], "bob");
    assert!(!body.contains("alice"), "the push names no caller: {body}");

    let (bob, mut b_ev) = Client::connect(bob_cfg).await.unwrap();
    match call_event(&mut b_ev, Some(call)).await {
        CallEvent::Incoming {
            offer, rings_for, ..
        } => {
            assert_eq!(offer.description, b"offer");
            assert!(rings_for < Duration::from_secs(30), "{rings_for:?}");
        }
        other => panic!("expected a late ring, got {other:?}"),
    }
    bob.decline_call(call).unwrap();
    assert_eq!(ended(&mut a_ev, call).await, CallEndReason::Declined);
}
