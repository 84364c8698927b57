//! A login must be signed by the registered device key over *this* connection's challenge and
//! TLS exporter: a wrong key, or a login copied from another connection, is refused.

mod common;

use common::{Edge, Raw};
use ed25519_dalek::{Signer, SigningKey};
use missive_proto::{login_transcript, DeviceId, ErrorCode, Frame, Login, Register};

fn sign(key: &SigningKey, challenge: &[u8; 32], exporter: &[u8; 32], user: &str) -> [u8; 64] {
    key.sign(&login_transcript(challenge, exporter, user, DeviceId(1)))
        .to_bytes()
}

#[tokio::test]
async fn login_with_wrong_or_replayed_signature_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let edge = Edge::start(dir.path(), &[]);
    let key = SigningKey::from_bytes(&[42; 32]);

    // Register alice on connection A.
    let mut a = Raw::connect(&edge, false).await;
    let ch = a.hello().await;
    a.send(
        Register {
            user: "alice".into(),
            device: DeviceId(1),
            device_key: key.verifying_key().to_bytes(),
            invite: None,
            signature: sign(&key, &ch, &a.exporter, "alice"),
        }
        .into(),
    )
    .await;
    assert!(matches!(a.recv().await, Some(Frame::Welcome(_))));

    // A correct login on connection B works...
    let mut b = Raw::connect(&edge, false).await;
    let ch_b = b.hello().await;
    let good_b = Login {
        user: "alice".into(),
        device: DeviceId(1),
        signature: sign(&key, &ch_b, &b.exporter, "alice"),
    };
    b.send(good_b.clone().into()).await;
    assert!(matches!(b.recv().await, Some(Frame::Welcome(_))));

    // ...but the same Login frame replayed on connection C is refused.
    let mut c = Raw::connect(&edge, false).await;
    c.hello().await;
    c.send(good_b.into()).await;
    assert_eq!(c.expect_error_then_close().await, ErrorCode::AuthFailed);

    // Even with C's own challenge, a signature bound to another connection's exporter (a
    // relayed challenge) is refused.
    let mut d = Raw::connect(&edge, false).await;
    let ch_d = d.hello().await;
    d.send(
        Login {
            user: "alice".into(),
            device: DeviceId(1),
            signature: sign(&key, &ch_d, &b.exporter, "alice"),
        }
        .into(),
    )
    .await;
    assert_eq!(d.expect_error_then_close().await, ErrorCode::AuthFailed);

    // A signature by the wrong key is refused, over TCP as well.
    let mut e = Raw::connect(&edge, true).await;
    let ch_e = e.hello().await;
    let wrong = SigningKey::from_bytes(&[7; 32]);
    e.send(
        Login {
            user: "alice".into(),
            device: DeviceId(1),
            signature: sign(&wrong, &ch_e, &e.exporter, "alice"),
        }
        .into(),
    )
    .await;
    assert_eq!(e.expect_error_then_close().await, ErrorCode::AuthFailed);

    // Registering a taken name is refused too.
    let mut f = Raw::connect(&edge, false).await;
    let ch_f = f.hello().await;
    f.send(
        Register {
            user: "alice".into(),
            device: DeviceId(1),
            device_key: wrong.verifying_key().to_bytes(),
            invite: None,
            signature: sign(&wrong, &ch_f, &f.exporter, "alice"),
        }
        .into(),
    )
    .await;
    assert_eq!(f.expect_error_then_close().await, ErrorCode::UserTaken);
}
