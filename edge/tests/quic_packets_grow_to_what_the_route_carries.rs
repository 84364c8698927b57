//! QUIC packets grow to what the route to the edge carries, and no further.
//!
//! Over loopback (a 65,536-byte MTU on Linux) a client's path MTU discovery takes its
//! packets to `MAX_UDP_PAYLOAD`, the edge accepts them, and an upload goes through with not
//! one packet lost (above 6,550 bytes quinn's GSO batches fail and the size falls back to
//! 1,200: this would catch it). A client bound on an explicit address, whose route is not
//! looked up, stays within an internet path's 1,452 bytes.

#![cfg(any(target_os = "linux", target_os = "android"))]

mod common;

use common::Edge;
use missive_client::transfer::upload::UploadSource;
use missive_client::{Client, ClientConfig, Identity, QuicEndpoint};
use missive_proto::{BlobId, DeviceId, MAX_UDP_PAYLOAD};
use std::path::Path;

fn random_file(path: &Path, len: usize, seed: u32) -> UploadSource {
    let mut x = 0x9e37_79b9_u32 ^ seed;
    let data: Vec<u8> = (0..len)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 17;
            x ^= x << 5;
            x as u8
        })
        .collect();
    std::fs::write(path, &data).expect("write the file");
    UploadSource {
        path: path.to_owned(),
        blob: BlobId(*blake3::hash(&data).as_bytes()),
        size: len as u64,
        downloads: 1,
    }
}

async fn user_on(edge: &Edge, name: &str, endpoint: Option<QuicEndpoint>) -> Client {
    let identity = Identity::generate(name, DeviceId(1));
    let mut cfg = ClientConfig::new(edge.quic, edge.ca_pem(), identity);
    cfg.quic_endpoint = endpoint;
    missive_client::register(&cfg, None)
        .await
        .expect("register");
    Client::connect(cfg).await.expect("connect").0
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn uploads_over_loopback_use_large_packets_without_loss_and_explicit_binds_stay_small() {
    let dir = tempfile::tempdir().expect("temp dir");
    let edge = Edge::start(dir.path(), &[]);

    // Its own endpoint, bound for the edge's address: the route (loopback) is read.
    let alice = user_on(&edge, "alice", None).await;
    let file = random_file(&dir.path().join("a.bin"), 16 << 20, 1);
    alice
        .upload_blob(&file, 4, |_| {})
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

    // An explicit bind: internet-sized packets.
    let endpoint = QuicEndpoint::bind("127.0.0.1:0".parse().expect("address")).expect("bind");
    let bob = user_on(&edge, "bob", Some(endpoint)).await;
    let file = random_file(&dir.path().join("b.bin"), 4 << 20, 2);
    bob.upload_blob(&file, 4, |_| {})
        .await
        .expect("upload over small packets");
    let path = bob.quic_path().expect("bob is on QUIC");
    assert!(path.mtu <= 1452, "an internet path's size: {path:?}");
    assert!(
        path.sent_packets > (4 << 20) / 1452,
        "4 MiB took 1,452-byte packets: {path:?}"
    );
}
