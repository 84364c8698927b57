//! Many SDK clients on one shared QUIC endpoint (one UDP socket): each logs in as itself over
//! QUIC, messages between them arrive, and closing one leaves the others connected.

mod common;

use common::{collect_messages, text, Edge};
use missive_client::{Client, ClientConfig, Event, Identity, QuicEndpoint, TransportKind};
use missive_proto::DeviceId;
use std::time::Duration;

const CLIENTS: usize = 12;

#[tokio::test]
async fn clients_sharing_one_socket_each_get_their_own_messages() {
    let dir = tempfile::tempdir().unwrap();
    let edge = Edge::start(dir.path(), &[]);
    let socket = QuicEndpoint::bind_for(edge.quic).unwrap();

    let mut clients = Vec::new();
    for i in 0..CLIENTS {
        let mut cfg = ClientConfig::new(
            edge.quic,
            edge.ca_pem(),
            Identity::generate(format!("u{i}"), DeviceId(1)),
        );
        cfg.quic_endpoint = Some(socket.clone());
        missive_client::register(&cfg, None).await.unwrap();
        let (client, mut events) = Client::connect(cfg).await.unwrap();
        let connected = common::next_matching(&mut events, Duration::from_secs(10), |e| {
            matches!(e, Event::Connected { .. })
        })
        .await;
        assert!(
            matches!(
                connected,
                Event::Connected {
                    transport: TransportKind::Quic
                }
            ),
            "{connected:?}"
        );
        clients.push((client, events));
    }

    // Everyone writes to the next one around the ring.
    for (i, (client, _)) in clients.iter().enumerate() {
        let to = format!("u{}", (i + 1) % CLIENTS);
        client.send(to, text(&format!("from u{i}"))).await.unwrap();
    }
    for (i, (_, events)) in clients.iter_mut().enumerate() {
        let got = collect_messages(events, 1, Duration::from_secs(10)).await;
        let from = (i + CLIENTS - 1) % CLIENTS;
        assert_eq!(got[0].0, format!("u{from}"));
        assert_eq!(got[0].2, format!("from u{from}"));
    }

    // Closing one client does not take the shared socket (or the others) down.
    let (first, _) = clients.remove(0);
    first.close().await.unwrap();
    let (second, _) = &clients[0];
    second.send("u2", text("still here")).await.unwrap();
    let got = collect_messages(&mut clients[1].1, 1, Duration::from_secs(10)).await;
    assert_eq!(got[0].2, "still here");
    assert!(socket.local_addr().is_ok());
}
