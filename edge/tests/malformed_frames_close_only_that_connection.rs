//! Garbage, truncated, oversized and unknown frames each get a typed error and close their own
//! connection, while two other clients keep chatting throughout without loss.

mod common;

use common::{collect_messages, one_copy, sdk_user, text, Edge, Raw};
use missive_proto::{encode_to_vec, ErrorCode, Header, Ping, HEADER_LEN};
use std::time::Duration;

#[tokio::test]
async fn bad_input_closes_only_that_connection() {
    let dir = tempfile::tempdir().unwrap();
    let edge = Edge::start(dir.path(), &["--max-frame-bytes", "65536"]);
    let (alice, _a, _) = sdk_user(&edge, "alice").await;
    let (bob, mut bob_ev, _) = sdk_user(&edge, "bob").await;

    // Alice keeps sending while the attacks run.
    const N: usize = 200;
    let sender = tokio::spawn(async move {
        for i in 0..N {
            alice
                .send("bob", text(&format!("n{i}")))
                .await
                .expect("send acked");
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        alice
    });

    for force_tcp in [false, true] {
        // 1. Garbage instead of a Hello.
        let mut c = Raw::connect(&edge, force_tcp).await;
        c.send_bytes(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n").await;
        assert_eq!(c.expect_error_then_close().await, ErrorCode::MalformedFrame);

        // 2. Oversized: a header announcing more than the 64 KiB limit.
        let mut c = Raw::connect(&edge, force_tcp).await;
        c.hello().await;
        c.send_bytes(
            &Header {
                len: 10_000_000,
                kind: 4,
                flags: 0,
            }
            .to_bytes(),
        )
        .await;
        assert_eq!(c.expect_error_then_close().await, ErrorCode::FrameTooLarge);

        // 3. Truncated: an honest header over a payload cut short.
        let mut c = Raw::connect(&edge, force_tcp).await;
        c.hello().await;
        let full = encode_to_vec(&Ping { nonce: 7 }.into()).unwrap();
        let payload = &full[HEADER_LEN..HEADER_LEN + 3];
        let mut bytes = Header {
            len: 3,
            kind: full[4],
            flags: 0,
        }
        .to_bytes()
        .to_vec();
        bytes.extend_from_slice(payload);
        c.send_bytes(&bytes).await;
        assert_eq!(c.expect_error_then_close().await, ErrorCode::MalformedFrame);

        // 4. Unknown frame kind and random bytes after a valid Hello.
        let mut c = Raw::connect(&edge, force_tcp).await;
        c.hello().await;
        let mut bytes = Header {
            len: 4,
            kind: 250,
            flags: 0,
        }
        .to_bytes()
        .to_vec();
        bytes.extend_from_slice(&[1, 2, 3, 4]);
        c.send_bytes(&bytes).await;
        assert_eq!(c.expect_error_then_close().await, ErrorCode::MalformedFrame);

        // 5. A valid frame in the wrong state (Send before login).
        let mut c = Raw::connect(&edge, force_tcp).await;
        c.hello().await;
        c.send(
            missive_proto::Send {
                client_msg_id: missive_proto::ClientMsgId([1; 16]),
                to: "bob".into(),
                envelopes: one_copy(vec![1]),
                own: Vec::new(),
                expires_in_secs: 0,
            }
            .into(),
        )
        .await;
        assert_eq!(
            c.expect_error_then_close().await,
            ErrorCode::ProtocolViolation
        );
    }

    let alice = sender.await.unwrap();
    let got = collect_messages(&mut bob_ev, N, Duration::from_secs(20)).await;
    let want: Vec<String> = (0..N).map(|i| format!("n{i}")).collect();
    let texts: Vec<String> = got.into_iter().map(|(_, _, t)| t).collect();
    assert_eq!(texts, want);
    alice.close().await.unwrap();
    bob.close().await.unwrap();
}
