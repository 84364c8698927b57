//! SIGTERM while sends are in flight: the client is told `Goaway`, the edge finishes the
//! writes it took, flushes and exits 0; after a restart every acknowledged message is
//! delivered exactly once (counted before the SDK's duplicate filter), and the sender's
//! unacknowledged ones arrive through its automatic resend.
//!
//! The runtime has worker threads of its own, so the sender keeps sending while the test
//! thread signals and waits for the edge to exit: sends are in flight when SIGTERM lands, and
//! the test proves it (sends issued and not yet acknowledged at that moment).

mod common;

use common::{collect_messages, next_matching, one_copy, sdk_user, text, Edge};
use missive_client::{Client, Event};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_drains_and_loses_nothing() {
    let dir = tempfile::tempdir().unwrap();
    // The sender goes faster than a person may (bursts of 50).
    // (and more of them waits in bob's mailbox than the default quotas take).
    let mut edge = Edge::start(
        dir.path(),
        &[
            "--send-rate",
            "100000",
            "--mailbox-max-items",
            "1000000",
            "--mailbox-max-items-per-sender",
            "1000000",
        ],
    );
    let (alice, mut alice_ev, _) = sdk_user(&edge, "alice").await;
    let (bob, _b, bob_cfg) = sdk_user(&edge, "bob").await;
    bob.close().await.unwrap();

    const N: usize = 5000;
    let issued = Arc::new(AtomicUsize::new(0));
    let acked = Arc::new(AtomicUsize::new(0));
    // Bursts of 50 sends every 5 ms, each waited for in its own task: a stream that keeps
    // sends on the wire.
    let sender = {
        let (alice, issued, acked) = (alice.clone(), issued.clone(), acked.clone());
        tokio::spawn(async move {
            let mut tasks = Vec::new();
            for i in 0..N {
                let fut = alice.send("bob", text(&format!("t{i:04}")));
                issued.fetch_add(1, Ordering::SeqCst);
                let acked = acked.clone();
                tasks.push(tokio::spawn(async move {
                    let r = fut.await;
                    acked.fetch_add(1, Ordering::SeqCst);
                    r
                }));
                if i % 50 == 49 {
                    tokio::time::sleep(Duration::from_millis(5)).await;
                }
            }
            tasks
        })
    };
    // A raw client pipelines sends to itself without pause and reads everything the edge
    // says until it closes: `Sent` frames that come after the `Goaway` are sends the edge was
    // storing when SIGTERM came, finished by its drain.
    let mut carol = common::Raw::connect(&edge, false).await;
    carol.register("carol").await;
    let (mut carol_rx, mut carol_tx, mut decoder) = carol.into_halves();
    let carol_writer = tokio::spawn(async move {
        use tokio::io::AsyncWriteExt;
        for burst in 0u32.. {
            let mut bytes = Vec::new();
            for k in 0..50u32 {
                let mut id = [0u8; 16];
                id[..4].copy_from_slice(&(burst * 50 + k).to_be_bytes());
                missive_proto::encode(
                    &missive_proto::Send {
                        client_msg_id: missive_proto::ClientMsgId(id),
                        to: "carol".into(),
                        envelopes: one_copy(vec![1; 64]),
                        own: Vec::new(),
                        expires_in_secs: 0,
                    }
                    .into(),
                    &mut bytes,
                )
                .unwrap();
            }
            if carol_tx.write_all(&bytes).await.is_err() {
                break;
            }
            tokio::time::sleep(Duration::from_millis(2)).await;
        }
    });
    let carol_reader = tokio::spawn(async move {
        use tokio::io::AsyncReadExt;
        let (mut goaway, mut sent_after) = (false, 0u32);
        let mut buf = vec![0u8; 64 * 1024];
        loop {
            while let Ok(Some(f)) = decoder.next_frame() {
                match f {
                    missive_proto::Frame::Goaway(_) => goaway = true,
                    missive_proto::Frame::Sent(_) if goaway => sent_after += 1,
                    _ => {}
                }
            }
            match tokio::time::timeout(Duration::from_secs(20), carol_rx.read(&mut buf)).await {
                Ok(Ok(n)) if n > 0 => decoder.feed(&buf[..n]),
                _ => return (goaway, sent_after),
            }
        }
    });
    common::eventually(
        "sends acknowledged and more in flight",
        Duration::from_secs(20),
        || {
            let a = acked.load(Ordering::SeqCst);
            a >= 500 && issued.load(Ordering::SeqCst) >= a + 20
        },
    )
    .await;
    let (issued_at_signal, acked_at_signal) =
        (issued.load(Ordering::SeqCst), acked.load(Ordering::SeqCst));
    edge.signal("TERM");
    assert!(
        (500..N).contains(&acked_at_signal),
        "{acked_at_signal} acked when SIGTERM was sent"
    );
    assert!(
        issued_at_signal > acked_at_signal,
        "no send was in flight when SIGTERM was sent"
    );
    // The client is told to go away, by name (not any disconnect).
    let told = next_matching(&mut alice_ev, Duration::from_secs(10), |e| {
        matches!(e, Event::Disconnected { .. })
    })
    .await;
    assert!(
        matches!(&told, Event::Disconnected { reason } if reason.contains("Goaway")),
        "{told:?}"
    );
    let status = tokio::task::spawn_blocking(move || {
        let status = edge.terminate();
        (edge, status)
    })
    .await
    .unwrap();
    let (mut edge, status) = status;
    assert!(status.success(), "edge exit after SIGTERM: {status:?}");
    // Sends in flight when SIGTERM came were finished and answered by the draining edge.
    let (carol_told, sent_after_goaway) = carol_reader.await.unwrap();
    carol_writer.abort();
    assert!(carol_told, "carol was never told Goaway");
    assert!(
        sent_after_goaway > 0,
        "no send in flight at the Goaway was answered by the drain"
    );
    assert!(
        issued.load(Ordering::SeqCst) > issued_at_signal,
        "the sender stopped while the edge drained"
    );

    edge.restart();
    // Alice's SDK reconnects and resends whatever was not acked; every send completes.
    let tasks = tokio::time::timeout(Duration::from_secs(60), sender)
        .await
        .expect("the sender never finished")
        .unwrap();
    for t in tasks {
        tokio::time::timeout(Duration::from_secs(60), t)
            .await
            .expect("send never completed after restart")
            .unwrap()
            .expect("send failed");
    }
    assert_eq!(acked.load(Ordering::SeqCst), N);
    let (bob, mut bob_ev) = Client::connect(bob_cfg).await.unwrap();
    let got = collect_messages(&mut bob_ev, N, Duration::from_secs(60)).await;
    let texts: Vec<String> = got.iter().map(|(_, _, t)| t.clone()).collect();
    let want: Vec<String> = (0..N).map(|i| format!("t{i:04}")).collect();
    assert_eq!(
        texts, want,
        "lost, duplicated or reordered across a SIGTERM"
    );
    let stats = bob.delivery_stats();
    assert_eq!(
        stats.duplicates, 0,
        "the edge stored a message twice: {stats:?}"
    );
    assert_eq!(stats.deliveries - stats.redeliveries, N as u64, "{stats:?}");
    bob.close().await.unwrap();
    alice.close().await.unwrap();
}
