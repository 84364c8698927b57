//! With no answer on UDP, the client falls back to TCP+TLS within the QUIC timeout.

mod common;

use common::*;
use missive_client::{Client, Content, Event, TransportKind};
use std::time::{Duration, Instant};

#[tokio::test]
async fn falls_back_to_tcp_when_udp_is_silent() {
    // TCP on a port of its own: on that port's UDP side nothing answers.
    let edge = Edge::start_with(&["--tcp-listen", "127.0.0.1:0"]);
    let tcp = edge.tcp.expect("tcp on");
    assert_ne!(tcp.port(), edge.quic.port());
    let mut cfg = config(
        &edge,
        missive_client::Identity::generate("erin", missive_proto::DeviceId(1)),
    );
    cfg.server = tcp;
    cfg.quic_timeout = Duration::from_millis(300);
    let started = Instant::now();
    missive_client::register(&cfg, None).await.unwrap();
    let (client, mut events) = Client::connect(cfg).await.unwrap();
    assert!(started.elapsed() < Duration::from_secs(3));
    let e = wait_for(&mut events, "connected", |e| {
        matches!(e, Event::Connected { .. })
    })
    .await;
    assert_eq!(
        e,
        Event::Connected {
            transport: TransportKind::Tcp
        }
    );
    // Frames flow normally over the fallback.
    let r = client
        .send("erin", Content::Text("note to self".into()))
        .await
        .unwrap();
    let e = wait_for(&mut events, "own message", |e| {
        matches!(e, Event::Message { .. })
    })
    .await;
    assert!(
        matches!(e, Event::Message { client_msg_id, ref text, .. } if client_msg_id == r.client_msg_id && text == "note to self")
    );
    client.close().await.unwrap();
    // Both connections (registration and session) came over TCP; none over QUIC.
    assert_eq!(
        edge.metric("missive_connections_accepted_total{transport=\"tcp\"}"),
        2.0
    );
    assert_eq!(
        edge.metric("missive_connections_accepted_total{transport=\"quic\"}"),
        0.0
    );
}
