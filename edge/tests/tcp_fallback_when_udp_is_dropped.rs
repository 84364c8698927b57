//! A client pointed at an address where UDP gets no answer (only TCP is open there) connects
//! through the TCP+TLS fallback and exchanges messages with a QUIC client.

mod common;

use common::{next_matching, text, Edge};
use missive_client::{register, Client, ClientConfig, Event, Identity, TransportKind};
use missive_proto::DeviceId;
use std::time::Duration;

const T: Duration = Duration::from_secs(10);

#[tokio::test]
async fn client_falls_back_to_tcp_and_chats() {
    let dir = tempfile::tempdir().unwrap();
    // QUIC on one port, TCP on another: the TCP port's UDP side has nothing behind it.
    let edge = Edge::start(dir.path(), &["--tcp-listen", "127.0.0.1:0"]);
    let tcp = edge.tcp.expect("tcp enabled");
    assert_ne!(tcp.port(), edge.quic.port());

    let mut cfg = ClientConfig::new(tcp, edge.ca_pem(), Identity::generate("tess", DeviceId(1)));
    cfg.quic_timeout = Duration::from_millis(700);
    register(&cfg, None)
        .await
        .expect("register over the fallback");
    let (tess, mut tess_ev) = Client::connect(cfg)
        .await
        .expect("connect over the fallback");
    next_matching(&mut tess_ev, T, |e| {
        matches!(
            e,
            Event::Connected {
                transport: TransportKind::Tcp
            }
        )
    })
    .await;

    let (quinn_user, mut q_ev, _) = common::sdk_user(&edge, "quincy").await;
    next_matching(&mut q_ev, T, |e| {
        matches!(
            e,
            Event::Connected {
                transport: TransportKind::Quic
            }
        )
    })
    .await;

    tess.send("quincy", text("over tcp")).await.unwrap();
    let e = next_matching(&mut q_ev, T, |e| matches!(e, Event::Message { .. })).await;
    assert!(matches!(e, Event::Message { text, from, .. } if text == "over tcp" && from == "tess"));
    quinn_user.send("tess", text("over quic")).await.unwrap();
    let e = next_matching(&mut tess_ev, T, |e| matches!(e, Event::Message { .. })).await;
    assert!(matches!(e, Event::Message { text, .. } if text == "over quic"));
    tess.close().await.unwrap();
    quinn_user.close().await.unwrap();
}
