//! QUIC packets grow to what the route to the edge carries, and no further.
//!
//! Over loopback (a 65,536-byte MTU on Linux) a client's path MTU discovery takes its
//! packets to `MAX_UDP_PAYLOAD`, the edge accepts them, and an upload goes through with not
//! one packet lost (above 6,550 bytes quinn's GSO batches fail and the size falls back to
//! 1,200: this would catch it). The edge's packets towards such a client grow too, to what
//! its first congestion window holds. A client bound on an explicit address, whose route is
//! not looked up, stays within an internet path's 1,452 bytes both ways.

#![cfg(any(target_os = "linux", target_os = "android"))]

mod common;

use common::{random_upload as random_file, sdk_user_on as user_on, Edge};
use missive_client::{Client, QuicEndpoint};
use missive_proto::{EDGE_UDP_PAYLOAD, MAX_UDP_PAYLOAD};

/// Average UDP payload `client` received while `download` ran.
async fn average_received_during(
    client: &Client,
    download: impl std::future::Future<Output = ()>,
) -> u64 {
    let before = client.quic_path().expect("on QUIC");
    download.await;
    let after = client.quic_path().expect("still on QUIC");
    (after.received_bytes - before.received_bytes)
        / (after.received_datagrams - before.received_datagrams).max(1)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn packets_over_loopback_grow_without_loss_and_explicit_binds_stay_internet_sized() {
    let dir = tempfile::tempdir().expect("temp dir");
    let edge = Edge::start(dir.path(), &[]);

    // Their own endpoints, bound for the edge's address: the route (loopback) is read.
    let alice = user_on(&edge, "alice", None).await;
    let bob = user_on(&edge, "bob", None).await;
    // An explicit bind: internet-sized packets.
    let endpoint = QuicEndpoint::bind("127.0.0.1:0".parse().expect("address")).expect("bind");
    let carol = user_on(&edge, "carol", Some(endpoint)).await;

    // Uploads.
    let mut large = random_file(&dir.path().join("a.bin"), 16 << 20, 1);
    large.downloads = 2;
    alice
        .upload_blob(&large, 4, |_| {})
        .await
        .expect("upload over large packets");
    let path = alice.quic_path().expect("alice is on QUIC");
    assert_eq!(path.mtu, MAX_UDP_PAYLOAD, "grown to the ceiling: {path:?}");
    assert_eq!(path.lost_packets, 0, "no packet lost: {path:?}");
    assert_eq!(path.black_holes, 0, "never fell back: {path:?}");
    assert!(
        path.sent_packets < (16 << 20) / 1452,
        "16 MiB in fewer packets than 1,452-byte ones take: {path:?}"
    );

    let small = random_file(&dir.path().join("c.bin"), 4 << 20, 2);
    carol
        .upload_blob(&small, 4, |_| {})
        .await
        .expect("upload over small packets");
    let path = carol.quic_path().expect("carol is on QUIC");
    assert!(path.mtu <= 1452, "an internet path's size: {path:?}");
    assert!(
        path.sent_packets > (4 << 20) / 1452,
        "4 MiB took 1,452-byte packets: {path:?}"
    );

    // Downloads: the edge's packets follow what each client takes.
    let out = dir.path().join("bob.bin");
    let to_bob = average_received_during(&bob, async {
        bob.download_blob(large.blob, large.size, &out, |_| {})
            .await
            .expect("bob downloads");
    })
    .await;
    assert!(
        to_bob > 1452,
        "the edge sent bob larger packets: {to_bob} bytes on average"
    );
    assert!(
        to_bob <= u64::from(EDGE_UDP_PAYLOAD),
        "within the edge's first window: {to_bob}"
    );
    let path = bob.quic_path().expect("bob is on QUIC");
    assert_eq!(path.black_holes, 0, "{path:?}");

    let out = dir.path().join("carol.bin");
    let to_carol = average_received_during(&carol, async {
        carol
            .download_blob(large.blob, large.size, &out, |_| {})
            .await
            .expect("carol downloads");
    })
    .await;
    assert!(to_carol <= 1452, "internet-sized towards carol: {to_carol}");
    assert!(to_carol > 1000, "mostly full packets: {to_carol}");
}
