//! The key directory on a real edge: a device publishes identity keys signed by its login
//! key, one-time keys and a fallback key; claimers each get a different one-time key, then
//! the fallback; the device hears that it runs low; a claimer past its per-user budget gets
//! the fallback key and takes no one-time key.

mod common;

use common::{config_file, test_key, Edge, Raw, Received};
use ed25519_dalek::Signer;
use missive_proto::{
    identity_transcript, ClaimKeys, DeviceId, ErrorCode, Frame, IdentityKeys, KeyBundles,
    SignedKey, UploadKeys,
};
use std::collections::HashSet;
use std::time::Duration;

fn identity(name: &str, curve: u8) -> IdentityKeys {
    let (curve25519, ed25519) = ([curve; 32], [curve ^ 0xff; 32]);
    let signature = test_key(name)
        .sign(&identity_transcript(
            name,
            DeviceId(1),
            &curve25519,
            &ed25519,
        ))
        .to_bytes();
    IdentityKeys {
        curve25519,
        ed25519,
        signature,
    }
}

fn keys(range: std::ops::Range<u8>) -> Vec<SignedKey> {
    range
        .map(|n| SignedKey {
            key: [n; 32],
            signature: [n; 64],
        })
        .collect()
}

async fn upload(raw: &mut Raw, u: UploadKeys) -> Frame {
    raw.send(u.into()).await;
    raw.recv().await.expect("an answer")
}

async fn claim(raw: &mut Raw, id: u32, user: &str) -> Frame {
    raw.send(
        ClaimKeys {
            request_id: id,
            user: user.into(),
        }
        .into(),
    )
    .await;
    raw.recv().await.expect("an answer")
}

/// Waits until the edge has sent `raw` a `KeysLow` (set aside by `recv`).
async fn keys_low(raw: &mut Raw) -> missive_proto::KeysLow {
    for _ in 0..50 {
        if let Some(k) = raw.keys_low.pop() {
            return k;
        }
        if let Received::Frame(f) = raw.recv_within(Duration::from_millis(100)).await {
            panic!("unexpected {f:?}");
        }
    }
    panic!("no KeysLow within 5 s");
}

#[tokio::test]
async fn one_time_keys_go_to_one_claimer_each_then_the_fallback_serves() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = config_file(
        dir.path(),
        "[limits]\none_time_keys_low = 2\nkey_claims_per_min = 1\nkey_claim_burst = 12\n",
    );
    let edge = Edge::start(&dir.path().join("data"), &[&cfg[0], &cfg[1]]);
    let mut bob = Raw::connect(&edge, false).await;
    bob.register("bob").await;
    let first = keys_low(&mut bob).await;
    assert!(
        !first.has_identity && first.one_time_keys == 0,
        "a new device is asked for keys: {first:?}"
    );

    // Identity keys signed by someone else's key, or published for another device, are refused.
    let mut forged = identity("bob", 1);
    forged.signature = test_key("mallory")
        .sign(&identity_transcript(
            "bob",
            DeviceId(1),
            &forged.curve25519,
            &forged.ed25519,
        ))
        .to_bytes();
    let answer = upload(
        &mut bob,
        UploadKeys {
            request_id: 1,
            identity: Some(Box::new(forged)),
            one_time_keys: keys(0..3),
            fallback_key: None,
        },
    )
    .await;
    assert!(
        matches!(answer, Frame::RequestRefused(ref r) if r.request_id == 1 && r.code == ErrorCode::InvalidKeys.as_u16()),
        "{answer:?}"
    );
    let answer = upload(
        &mut bob,
        UploadKeys {
            request_id: 2,
            identity: Some(Box::new(identity("bob", 1))),
            one_time_keys: keys(1..6),
            fallback_key: Some(SignedKey {
                key: [99; 32],
                signature: [99; 64],
            }),
        },
    )
    .await;
    assert!(
        matches!(answer, Frame::KeysStored(ref k) if k.request_id == 2 && k.one_time_keys == 5),
        "{answer:?}"
    );
    // Another identity for the same device is a conflict: a new identity is a new device.
    let answer = upload(
        &mut bob,
        UploadKeys {
            request_id: 3,
            identity: Some(Box::new(identity("bob", 2))),
            one_time_keys: Vec::new(),
            fallback_key: None,
        },
    )
    .await;
    assert!(
        matches!(answer, Frame::RequestRefused(ref r) if r.code == ErrorCode::InvalidKeys.as_u16()),
        "{answer:?}"
    );

    // Two claimers on two connections, interleaved: every one-time key goes out once.
    let mut alice = Raw::connect(&edge, true).await;
    alice.register("alice").await;
    let mut carol = Raw::connect(&edge, false).await;
    carol.register("carol").await;
    let mut handed = Vec::new();
    let mut fallbacks = 0;
    for i in 0..4u32 {
        for raw in [&mut alice, &mut carol] {
            let Frame::KeyBundles(KeyBundles { bundles, user, .. }) = claim(raw, i, "bob").await
            else {
                panic!("expected bundles")
            };
            assert_eq!(user, "bob");
            assert_eq!(bundles.len(), 1);
            let b = &bundles[0];
            assert_eq!(b.device, DeviceId(1));
            assert_eq!(b.device_key, test_key("bob").verifying_key().to_bytes());
            assert_eq!(b.identity, Some(identity("bob", 1)));
            let key = b.one_time_key.clone().expect("a key");
            if b.fallback {
                assert_eq!(key.key, [99; 32]);
                fallbacks += 1;
            } else {
                handed.push(key.key);
            }
        }
    }
    let distinct: HashSet<_> = handed.iter().collect();
    assert_eq!((handed.len(), distinct.len(), fallbacks), (5, 5, 3));
    // bob, online, was told when fewer than two were left, and that the fallback was used.
    let mut notices = Vec::new();
    while !notices
        .iter()
        .any(|k: &missive_proto::KeysLow| k.fallback_used)
    {
        notices.push(keys_low(&mut bob).await);
    }
    assert!(
        notices
            .iter()
            .all(|k| k.one_time_keys < 2 && k.has_identity),
        "{notices:?}"
    );

    // An unknown user has no bundles.
    let Frame::KeyBundles(none) = claim(&mut alice, 50, "nobody").await else {
        panic!("expected bundles")
    };
    assert!(none.bundles.is_empty());
    // bob uploads twelve new one-time keys. alice's budget (a burst of 12, 5 spent) is shared
    // by her connections: seven more claims take one-time keys, the eighth gets the fallback
    // key although one-time keys are left, and those stay for others.
    let answer = upload(
        &mut bob,
        UploadKeys {
            request_id: 4,
            identity: Some(Box::new(identity("bob", 1))),
            one_time_keys: keys(10..22),
            fallback_key: None,
        },
    )
    .await;
    assert!(
        matches!(answer, Frame::KeysStored(ref k) if k.one_time_keys == 12),
        "{answer:?}"
    );
    let (mut taken, mut fallback_only) = (0, 0);
    for i in 0..8 {
        let mut again = Raw::connect(&edge, false).await;
        again
            .login(&missive_client::Identity {
                user: "alice".into(),
                device: DeviceId(1),
                signing_key: test_key("alice"),
                e2ee: Default::default(),
            })
            .await;
        let Frame::KeyBundles(b) = claim(&mut again, 100 + i, "bob").await else {
            panic!("expected bundles")
        };
        match &b.bundles[0] {
            b if b.fallback => fallback_only += 1,
            b => {
                assert!(b.one_time_key.is_some());
                taken += 1;
            }
        }
    }
    assert_eq!(
        (taken, fallback_only),
        (7, 1),
        "reconnecting does not refill the budget"
    );
    let Frame::KeyBundles(b) = claim(&mut carol, 200, "bob").await else {
        panic!("expected bundles")
    };
    assert!(
        !b.bundles[0].fallback && b.bundles[0].one_time_key.is_some(),
        "carol, within her budget, still gets one of bob's one-time keys: {b:?}"
    );
    assert_eq!(edge.metric("missive_key_claims_fallback_only_total"), 1.0);
}
