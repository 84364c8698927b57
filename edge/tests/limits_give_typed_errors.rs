//! Connection limit, idle timeout and send rate: each gives a typed error, never a crash, and
//! other clients keep working.

mod common;

use common::{one_copy, Edge, Raw};
use ed25519_dalek::{Signer, SigningKey};
use missive_proto::{login_transcript, ClientMsgId, DeviceId, ErrorCode, Frame, Register, Send};
use std::time::Duration;

#[tokio::test]
async fn connection_limit_and_idle_timeout() {
    let dir = tempfile::tempdir().unwrap();
    let edge = Edge::start(
        dir.path(),
        &["--max-connections", "2", "--idle-timeout-secs", "1"],
    );
    let mut a = Raw::connect(&edge, false).await;
    a.register("active").await;
    let mut b = Raw::connect(&edge, true).await;
    let b_spoke = std::time::Instant::now();
    b.hello().await;
    // Third connection: over the limit, on either transport.
    let mut c = Raw::connect(&edge, false).await;
    c.send(
        missive_proto::Hello {
            min_version: missive_proto::MIN_PROTOCOL_VERSION,
            max_version: missive_proto::PROTOCOL_VERSION,
            client: "c".into(),
        }
        .into(),
    )
    .await;
    assert_eq!(
        c.expect_error_then_close().await,
        ErrorCode::TooManyConnections
    );
    // b says nothing more: it is closed for idleness after ~1 s, while a, which keeps
    // talking, stays open.
    let keep_talking = async {
        for nonce in 0..8 {
            a.send(missive_proto::Ping { nonce }.into()).await;
            assert!(
                matches!(a.recv().await, Some(Frame::Pong(p)) if p.nonce == nonce),
                "the active client was cut off"
            );
            tokio::time::sleep(Duration::from_millis(300)).await;
        }
    };
    let (b_code, ()) = tokio::join!(b.expect_error_then_close(), keep_talking);
    assert_eq!(b_code, ErrorCode::IdleTimeout);
    let idle_for = b_spoke.elapsed();
    assert!(
        idle_for >= Duration::from_millis(900),
        "closed after {idle_for:?}, before the 1 s idle timeout"
    );
    // Then a goes quiet too, and is closed in its turn.
    let quiet = std::time::Instant::now();
    assert_eq!(a.expect_error_then_close().await, ErrorCode::IdleTimeout);
    let idle_for = quiet.elapsed();
    assert!(
        idle_for >= Duration::from_millis(600) && idle_for < Duration::from_secs(3),
        "the quiet client was closed after {idle_for:?}"
    );
    // Their slots are free again.
    let mut d = Raw::connect(&edge, false).await;
    d.hello().await;
}

#[tokio::test]
async fn send_rate_limit_rejects_only_the_excess() {
    let dir = tempfile::tempdir().unwrap();
    let edge = Edge::start(dir.path(), &["--send-rate", "20"]);
    let key = SigningKey::from_bytes(&[3; 32]);
    let mut c = Raw::connect(&edge, false).await;
    let ch = c.hello().await;
    c.send(
        Register {
            user: "rita".into(),
            device: DeviceId(1),
            device_key: key.verifying_key().to_bytes(),
            invite: None,
            signature: key
                .sign(&login_transcript(&ch, &c.exporter, "rita", DeviceId(1)))
                .to_bytes(),
        }
        .into(),
    )
    .await;
    assert!(matches!(c.recv().await, Some(Frame::Welcome(_))));
    // Rate 20/s, burst 40: send far more than that at once.
    let total = 2000u32;
    let mut bytes = Vec::new();
    for i in 0..total {
        let mut id = [0u8; 16];
        id[..4].copy_from_slice(&i.to_be_bytes());
        missive_proto::encode(
            &Send {
                client_msg_id: ClientMsgId(id),
                to: "rita".into(),
                envelopes: one_copy(vec![0; 10]),
                own: Vec::new(),
                expires_in_secs: 0,
            }
            .into(),
            &mut bytes,
        )
        .unwrap();
    }
    c.send_bytes(&bytes).await;
    let (mut sent, mut limited, mut other) = (0, 0, 0);
    while sent + limited + other < total {
        match tokio::time::timeout(Duration::from_secs(20), c.recv()).await {
            Ok(Some(Frame::Sent(_))) => sent += 1,
            Ok(Some(Frame::Rejected(r))) if r.code == ErrorCode::RateLimited.as_u16() => {
                limited += 1
            }
            Ok(Some(Frame::Rejected(_))) => other += 1,
            Ok(Some(Frame::Deliver(_))) => {}
            x => panic!("unexpected {x:?} after {sent} sent, {limited} limited"),
        }
    }
    assert!(
        (40..=100).contains(&sent),
        "{sent} sends got through a 40-burst limit"
    );
    assert_eq!(other, 0, "sends refused for another reason than the rate");
    assert_eq!(sent + limited, total);
    // The connection is still usable after being rate limited.
    c.send(missive_proto::Ping { nonce: 9 }.into()).await;
    loop {
        match c.recv().await {
            Some(Frame::Pong(p)) => {
                assert_eq!(p.nonce, 9);
                break;
            }
            Some(_) => continue,
            None => panic!("connection closed after rate limiting"),
        }
    }
}
