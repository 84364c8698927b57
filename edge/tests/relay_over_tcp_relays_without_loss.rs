//! TURN over TCP in the edge's relay (RFC 8656 §5): a client whose network drops UDP reaches
//! the relay on the same port number over TCP, with credentials the edge minted for it;
//! coturn's `turnutils_uclient -t` relays a bounded load to `turnutils_peer` (UDP) and
//! client to client with nothing lost, and `/metrics` counts it. Garbage on one TCP
//! connection closes that connection only.

mod common;

use common::turn_tools::{
    relay_metric, relayed_without_loss, start_relay_edge, uclient_over_tcp, Peer,
};
use common::{sdk_user, Edge};
use std::io::{Read, Write};
use std::net::TcpStream;
use std::path::Path;
use std::time::Duration;

const SECRET: &str = "edge-relay-tcp-test-secret";

fn start_edge(dir: &Path) -> Edge {
    start_relay_edge(dir, SECRET)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn uclient_over_tcp_with_minted_credentials_loses_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let edge = start_edge(dir.path());
    let relay = edge.relay.unwrap();
    let port = relay.port();
    let (alice, _events, _) = sdk_user(&edge, "alice").await;
    let creds = alice.turn_credentials().await.expect("credentials");
    assert!(
        creds
            .urls
            .contains(&format!("turn:127.0.0.1:{port}?transport=tcp")),
        "{:?}",
        creds.urls
    );
    alice.close().await.unwrap();

    // Client → relay over TCP → turnutils_peer over UDP, and back.
    let peer = Peer::start();
    let (sessions, msgs) = (4u64, 200u64);
    let sent = relayed_without_loss(
        &mut uclient_over_tcp(
            port,
            &creds.username,
            &creds.password,
            Some(peer.port),
            sessions,
            msgs,
        ),
        sessions,
        msgs,
    );
    let to_peer = relay_metric(&edge, "packets_to_peers_total");
    assert!(to_peer >= sent as f64, "{to_peer} < {sent}");
    assert!(relay_metric(&edge, "packets_to_clients_total") >= sent as f64);
    assert!(relay_metric(&edge, "bytes_to_clients_total") >= sent as f64 * 173.0);

    // Client to client (`-y`): both legs over TCP, each message relayed twice.
    let sent2 = relayed_without_loss(
        &mut uclient_over_tcp(port, &creds.username, &creds.password, None, sessions, msgs),
        sessions,
        msgs,
    );
    assert!(relay_metric(&edge, "packets_to_peers_total") >= to_peer + sent2 as f64);
    assert!(relay_metric(&edge, "allocations_created_total") >= 2.0 * sessions as f64);
    // uclient closed its connections: their allocations ended with them.
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while relay_metric(&edge, "allocations_active") > 0.0 {
        assert!(
            std::time::Instant::now() < deadline,
            "allocations outlived their TCP connections"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[test]
fn garbage_on_one_tcp_connection_closes_only_that_one() {
    let dir = tempfile::tempdir().unwrap();
    let edge = start_edge(dir.path());
    let relay = edge.relay.unwrap();
    let binding = |tid: u8| {
        let mut m = vec![0x00, 0x01, 0x00, 0x00, 0x21, 0x12, 0xA4, 0x42];
        m.extend_from_slice(&[tid; 12]);
        m
    };
    let answer = |s: &mut TcpStream| {
        let mut head = [0u8; 20];
        s.read_exact(&mut head).expect("answer");
        let mut rest = vec![0u8; usize::from(u16::from_be_bytes([head[2], head[3]]))];
        s.read_exact(&mut rest).expect("body");
        (u16::from_be_bytes([head[0], head[1]]), head[8])
    };
    let mut good = TcpStream::connect(relay).expect("connect");
    good.set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    good.write_all(&binding(1)).unwrap();
    assert_eq!(answer(&mut good), (0x0101, 1));

    let mut bad = TcpStream::connect(relay).expect("connect");
    bad.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    // First byte 0xC0: top bits 11, neither STUN (00) nor ChannelData (01). (An HTTP request
    // would not do: "GE" reads as channel 0x4745 with a 21 KB length, which the framing
    // must wait for; such a connection ends by the idle timeout instead.)
    bad.write_all(&[0xC0; 24]).unwrap();
    let mut buf = [0u8; 64];
    match bad.read(&mut buf) {
        Ok(0) => {}
        Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset => {}
        other => panic!("expected the relay to close the connection, got {other:?}"),
    }
    assert!(
        edge.metric("missive_relay_refusals_total{reason=\"malformed\"} ") >= 1.0,
        "not counted"
    );
    good.write_all(&binding(2)).unwrap();
    assert_eq!(answer(&mut good), (0x0101, 2));
}
