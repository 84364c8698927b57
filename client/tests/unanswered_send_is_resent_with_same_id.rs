//! A send whose answer is lost with the connection is sent again, with the same id, after
//! the client reconnects; the edge stores it once. Rate-limited sends are retried. After a
//! `Goaway` (the edge stopping) the client reconnects and watches what it watched.

mod common;

use common::*;
use missive_client::{Client, Content, Event, TransportKind};
use std::collections::HashSet;

fn text(s: &str) -> Content {
    Content::Text(s.into())
}

#[tokio::test]
async fn resend_after_connection_loss_is_stored_once() {
    let edge = Edge::start();
    let alice = registered(&edge, "alice").await;
    let bob = registered(&edge, "bob").await;
    // alice talks TCP+TLS through a proxy that can lose the edge's answers; bob directly.
    let proxy = Proxy::start(edge.tcp.unwrap()).await;
    let mut cfg = config(&edge, alice);
    cfg.server = proxy.addr;
    cfg.force_tcp = true;
    let (a, mut a_events) = Client::connect(cfg).await.unwrap();
    let (b, mut b_events) = Client::connect(config(&edge, bob)).await.unwrap();
    // A first message makes alice's SDK claim bob's keys and start its Olm session, so what
    // follows counts only the lost answer.
    a.send("bob", text("hello")).await.unwrap();
    wait_for(&mut b_events, "hello", |e| {
        matches!(e, Event::Message { .. })
    })
    .await;
    assert_eq!(edge.metric("missive_frames_in_total{type=\"Send\"}"), 1.0);

    proxy.mute();
    let send = tokio::spawn(a.send("bob", text("survives")));
    // bob gets it: the edge stored it. Its `Sent` went out, and the proxy dropped it.
    let first = wait_for(&mut b_events, "message", |e| {
        matches!(e, Event::Message { .. })
    })
    .await;
    metric_becomes(&edge, "missive_frames_out_total{type=\"Sent\"}", 2.0).await;
    assert!(!send.is_finished(), "the answer was lost");
    proxy.cut();

    let receipt = tokio::time::timeout(WAIT, send)
        .await
        .expect("the send is answered after the reconnect")
        .unwrap()
        .unwrap();
    assert!(receipt.duplicate, "the resend found the stored copy");
    assert!(
        matches!(first, Event::Message { client_msg_id, .. } if client_msg_id == receipt.client_msg_id)
    );
    wait_for(&mut a_events, "disconnect", |e| {
        matches!(e, Event::Disconnected { .. })
    })
    .await;
    let e = wait_for(&mut a_events, "reconnect", |e| {
        matches!(e, Event::Connected { .. })
    })
    .await;
    assert_eq!(
        e,
        Event::Connected {
            transport: TransportKind::Tcp
        }
    );
    assert_eq!(proxy.accepted(), 2, "alice reconnected through the proxy");
    // The edge got the send twice: the original and the resend.
    assert_eq!(edge.metric("missive_frames_in_total{type=\"Send\"}"), 3.0);

    a.close().await.unwrap();
    b.close().await.unwrap();
    // Counted before the SDK's duplicate filter: one stored copy, delivered once.
    let stats = b.delivery_stats();
    assert_eq!((stats.deliveries, stats.duplicates), (2, 0), "{stats:?}");
    // Everything is acked: the edge stored each message once, plus bob's delivery receipts.
    metric_becomes(&edge, "missive_mailbox_items", 0.0).await;
    assert_eq!(edge.metric("missive_messages_stored_total"), 4.0);
}

#[tokio::test]
async fn rate_limited_sends_are_retried_not_failed() {
    // One send a second, in bursts of two: of four sends at once, two are refused at first.
    let edge = Edge::start_with(&["--send-rate", "1"]);
    let alice = registered(&edge, "alice").await;
    registered(&edge, "bob").await;
    let (a, _events) = Client::connect(config(&edge, alice)).await.unwrap();
    let sends: Vec<_> = (0..4)
        .map(|i| a.send("bob", text(&format!("eventually {i}"))))
        .collect();
    let mut ids = HashSet::new();
    for send in sends {
        let receipt = tokio::time::timeout(WAIT, send)
            .await
            .expect("every send is answered")
            .unwrap();
        assert!(!receipt.duplicate);
        ids.insert(receipt.client_msg_id);
    }
    assert_eq!(ids.len(), 4);
    let refused = edge.metric("missive_errors_total{code=\"rate_limited\"}");
    assert!(refused >= 2.0, "{refused} sends refused");
    // Every `Send` frame was stored or refused for the rate (the SDK learnt bob's devices
    // from the key directory before the first went out); each refusal was followed by one
    // retry.
    let mismatched = edge
        .try_metric("missive_errors_total{code=\"device_mismatch\"}")
        .unwrap_or(0.0);
    assert_eq!(
        edge.metric("missive_frames_in_total{type=\"Send\"}"),
        4.0 + refused + mismatched
    );
    a.close().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn goaway_reconnects_and_keeps_subscriptions() {
    let mut edge = Edge::start();
    let alice = registered(&edge, "alice").await;
    let bob = registered(&edge, "bob").await;
    // bob writes to alice: she may watch his presence.
    let (b, _b_events) = Client::connect(config(&edge, bob)).await.unwrap();
    b.send("alice", text("hi")).await.unwrap();
    let (a, mut events) = Client::connect(config(&edge, alice)).await.unwrap();
    a.subscribe_presence("bob").unwrap();
    wait_for(
        &mut events,
        "presence",
        |e| matches!(e, Event::Presence { user, .. } if user == "bob"),
    )
    .await;

    // SIGTERM: the edge tells every session `Goaway`, drains and exits. It comes back on
    // the same ports and data dir.
    let status = tokio::task::block_in_place(|| edge.terminate());
    assert!(status.success(), "{status:?}");
    let e = wait_for(&mut events, "disconnect", |e| {
        matches!(e, Event::Disconnected { .. })
    })
    .await;
    assert!(
        matches!(&e, Event::Disconnected { reason } if reason.contains("Goaway")),
        "{e:?}"
    );
    tokio::task::block_in_place(|| edge.restart());
    wait_for(&mut events, "reconnect", |e| {
        matches!(e, Event::Connected { .. })
    })
    .await;
    // The new edge process knows of the subscription only if the client sent it again.
    wait_for(
        &mut events,
        "presence again",
        |e| matches!(e, Event::Presence { user, .. } if user == "bob"),
    )
    .await;
    a.close().await.unwrap();
    b.close().await.unwrap();
}
