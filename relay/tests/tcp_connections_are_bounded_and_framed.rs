//! TURN over TCP on the relay's port: a STUN Binding over a stream is answered on the same
//! port number as UDP; bytes that are no STUN or ChannelData message close that connection
//! only (another one keeps being answered); a client address past
//! `max_tcp_connections_per_ip` is closed at accept; a silent connection without an
//! allocation is closed after `tcp_idle_timeout_secs`. Every wait is bounded.

use missive_relay::{RelayConfig, RelayHandle, RelayServer, Secret};
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpStream, UdpSocket};
use tokio::time::timeout;

const WAIT: Duration = Duration::from_secs(10);

async fn relay(per_ip: usize, idle_secs: u64) -> RelayHandle {
    let config = RelayConfig {
        listen: "127.0.0.1:0".parse().expect("addr"),
        secret: Secret::new("tcp-test"),
        max_tcp_connections_per_ip: per_ip,
        tcp_idle_timeout_secs: idle_secs,
        ..RelayConfig::default()
    };
    RelayServer::start(config).await.expect("starts")
}

/// A Binding request (RFC 8489 §6: type 0x0001, no attributes) with transaction id `tid`.
fn binding(tid: u8) -> Vec<u8> {
    let mut m = vec![0x00, 0x01, 0x00, 0x00, 0x21, 0x12, 0xA4, 0x42];
    m.extend_from_slice(&[tid; 12]);
    m
}

/// Sends a Binding and reads the whole answer; returns its type and transaction id.
async fn bind_over(stream: &mut TcpStream, tid: u8) -> (u16, [u8; 12]) {
    stream.write_all(&binding(tid)).await.expect("write");
    let mut head = [0u8; 20];
    timeout(WAIT, stream.read_exact(&mut head))
        .await
        .expect("answer within the bound")
        .expect("read");
    let len = usize::from(u16::from_be_bytes([head[2], head[3]]));
    let mut rest = vec![0u8; len];
    timeout(WAIT, stream.read_exact(&mut rest))
        .await
        .expect("body within the bound")
        .expect("read");
    let mut id = [0u8; 12];
    id.copy_from_slice(&head[8..20]);
    (u16::from_be_bytes([head[0], head[1]]), id)
}

/// Waits for the relay to close `stream`: EOF (or a reset) within the bound.
async fn closed_by_relay(stream: &mut TcpStream) -> bool {
    let mut buf = [0u8; 64];
    loop {
        match timeout(WAIT, stream.read(&mut buf)).await {
            Err(_) => return false,
            Ok(Ok(0)) | Ok(Err(_)) => return true,
            Ok(Ok(_)) => continue,
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn binding_over_tcp_on_the_udp_port_and_garbage_closes_only_its_connection() {
    let relay = relay(8, 30).await;
    let addr = relay.local_addr();
    // UDP answers on that port...
    let udp = UdpSocket::bind("127.0.0.1:0").await.expect("bind");
    udp.send_to(&binding(1), addr).await.expect("send");
    let mut buf = [0u8; 128];
    let (n, _) = timeout(WAIT, udp.recv_from(&mut buf))
        .await
        .expect("udp answer")
        .expect("recv");
    assert_eq!(
        u16::from_be_bytes([buf[0], buf[1]]),
        0x0101,
        "{:?}",
        &buf[..n]
    );
    // ...and so does TCP, on the same port number.
    let mut good = TcpStream::connect(addr).await.expect("connect");
    assert_eq!(bind_over(&mut good, 2).await, (0x0101, [2; 12]));

    let mut bad = TcpStream::connect(addr).await.expect("connect");
    let before = relay.stats().refusals.malformed;
    // Top bits 11: neither STUN nor ChannelData.
    bad.write_all(&[0xFF; 16]).await.expect("write");
    assert!(closed_by_relay(&mut bad).await, "garbage did not close");
    assert_eq!(relay.stats().refusals.malformed, before + 1);
    // The other connection is untouched.
    assert_eq!(bind_over(&mut good, 3).await, (0x0101, [3; 12]));
    // A Binding split over two writes is waited for, not refused.
    let req = binding(4);
    good.write_all(&req[..7]).await.expect("write");
    good.flush().await.expect("flush");
    tokio::time::sleep(Duration::from_millis(50)).await;
    good.write_all(&req[7..]).await.expect("write");
    let mut head = [0u8; 20];
    timeout(WAIT, good.read_exact(&mut head))
        .await
        .expect("answer")
        .expect("read");
    assert_eq!(&head[8..20], &[4; 12]);
    relay.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connections_per_address_are_bounded_and_idle_ones_are_closed() {
    let relay = relay(2, 1).await;
    let addr = relay.local_addr();
    let mut a = TcpStream::connect(addr).await.expect("connect");
    let mut b = TcpStream::connect(addr).await.expect("connect");
    // Both are served (proves they were accepted before the third arrives).
    assert_eq!(bind_over(&mut a, 1).await.0, 0x0101);
    assert_eq!(bind_over(&mut b, 2).await.0, 0x0101);
    let mut c = TcpStream::connect(addr).await.expect("connect");
    assert!(
        closed_by_relay(&mut c).await,
        "third connection stayed open"
    );
    assert_eq!(relay.stats().refusals.tcp_connections, 1);
    // No allocation and no message for 1 s: both are closed (within the 10 s bound).
    assert!(closed_by_relay(&mut a).await, "idle connection stayed open");
    assert!(closed_by_relay(&mut b).await, "idle connection stayed open");
    // Their slots are free again.
    let mut d = TcpStream::connect(addr).await.expect("connect");
    assert_eq!(bind_over(&mut d, 3).await.0, 0x0101);
    relay.shutdown().await;
}
