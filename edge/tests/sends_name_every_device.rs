//! A `Send` carries one envelope per current device of the recipient and of the sender's
//! other devices. A wrong set is refused with `DeviceMismatch` listing the current devices,
//! nothing is stored, and the same id goes through once the set is right.

mod common;

use common::{one_copy, Edge, Raw};
use missive_proto::{
    ClientMsgId, DeviceEnvelope, DeviceId, DeviceMismatch, Frame, Payload, Send, UserDevices,
};

fn send(n: u8, to: &[u32], own: &[u32]) -> Frame {
    let copies = |devices: &[u32]| {
        devices
            .iter()
            .map(|d| DeviceEnvelope {
                device: DeviceId(*d),
                envelope: vec![n, *d as u8],
            })
            .collect()
    };
    Send {
        client_msg_id: ClientMsgId([n; 16]),
        to: "bob".into(),
        envelopes: copies(to),
        own: copies(own),
        expires_in_secs: 0,
    }
    .into()
}

#[tokio::test]
async fn a_wrong_device_set_gets_the_current_lists_and_stores_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let edge = Edge::start(dir.path(), &[]);
    let mut bob = Raw::connect(&edge, false).await;
    bob.register("bob").await;
    let mut alice = Raw::connect(&edge, true).await;
    alice.register("alice").await;

    let bob_list = UserDevices {
        user: "bob".into(),
        devices: vec![DeviceId(1)],
    };
    let alice_list = UserDevices {
        user: "alice".into(),
        devices: vec![DeviceId(1)],
    };
    for (to, own, want) in [
        (&[][..], &[][..], vec![bob_list.clone()]),
        (&[1, 2][..], &[][..], vec![bob_list.clone()]),
        (&[1, 1][..], &[][..], vec![bob_list.clone()]),
        (&[1][..], &[2][..], vec![alice_list.clone()]),
        (
            &[3][..],
            &[1][..],
            vec![bob_list.clone(), alice_list.clone()],
        ),
    ] {
        alice.send(send(1, to, own)).await;
        match alice.recv().await {
            Some(Frame::DeviceMismatch(DeviceMismatch {
                client_msg_id,
                current,
            })) => {
                assert_eq!(client_msg_id, ClientMsgId([1; 16]));
                assert_eq!(current, want, "for {to:?} / {own:?}");
            }
            other => panic!("expected DeviceMismatch for {to:?} / {own:?}, got {other:?}"),
        }
    }
    // Nothing of the refused sends reached bob; the same id with the right set does, once.
    alice.send(send(1, &[1], &[])).await;
    match alice.recv().await {
        Some(Frame::Sent(s)) => assert!(!s.duplicate, "a refused send left a dedup key"),
        other => panic!("expected Sent, got {other:?}"),
    }
    match bob.recv().await {
        Some(Frame::Deliver(d)) => {
            assert_eq!(d.payload, Payload::Envelope(vec![1, 1]));
            assert_eq!(d.client_msg_id, ClientMsgId([1; 16]));
        }
        other => panic!("expected Deliver, got {other:?}"),
    }
    assert!(
        edge.metric("missive_errors_total{code=\"device_mismatch\"}") >= 5.0,
        "mismatches are counted by code"
    );
    // Copies are checked against the frame limit one by one (the edge's single-copy tests
    // cover the bound); a well-formed send with the one device still works.
    alice
        .send(
            Send {
                client_msg_id: ClientMsgId([2; 16]),
                to: "bob".into(),
                envelopes: one_copy(vec![9]),
                own: Vec::new(),
                expires_in_secs: 0,
            }
            .into(),
        )
        .await;
    assert!(matches!(alice.recv().await, Some(Frame::Sent(_))));
}
