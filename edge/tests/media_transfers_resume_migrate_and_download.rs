//! Media transfers through the real edge, on QUIC streams beside the control stream:
//!
//! - an upload whose connection is dropped at ~60 % resumes on the next connection and no
//!   byte reaches the edge twice (the edge's own count of bytes written equals the size);
//! - an upload whose client moves to a new UDP socket mid-transfer (QUIC migration) finishes
//!   on the same connection;
//! - the recipient downloads byte-identical ciphertext, after which the blob (one expected
//!   download) is deleted from the edge's disk;
//! - size, quota and hash refusals are typed errors.

mod common;

use common::{config_file, random_upload as random_file, sdk_user_on as user_on, Edge};
use missive_client::transfer::Progress;
use missive_client::{Client, ClientConfig, ClientError, Identity, QuicEndpoint};
use missive_proto::{BlobId, DeviceId, ErrorCode};
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

fn blob_files(edge: &Edge) -> usize {
    fn walk(dir: &Path) -> usize {
        std::fs::read_dir(dir).map_or(0, |rd| {
            rd.flatten()
                .map(|e| {
                    if e.path().is_dir() {
                        walk(&e.path())
                    } else {
                        1
                    }
                })
                .sum()
        })
    }
    walk(&edge.data_dir.join("media/blobs"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn uploads_resume_after_a_drop_survive_migration_and_download_identically() {
    let dir = tempfile::tempdir().unwrap();
    let edge = Edge::start(dir.path(), &[]);
    let endpoint = QuicEndpoint::bind("127.0.0.1:0".parse().unwrap()).unwrap();
    let alice = user_on(&edge, "alice", Some(endpoint.clone())).await;
    let bob = user_on(&edge, "bob", None).await;

    // 1. Dropped at ~60 %: resumed on a second connection, nothing sent twice.
    let first = random_file(&dir.path().join("one.bin"), 24 << 20, 1);
    let dropped = Arc::new(AtomicBool::new(false));
    let (a, d, total) = (alice.clone(), dropped.clone(), first.size);
    let report = alice
        .upload_blob(&first, 4, move |p: Progress| {
            if p.done * 10 >= total * 6 && !d.swap(true, Ordering::SeqCst) {
                a.reconnect().unwrap();
            }
        })
        .await
        .unwrap();
    assert!(dropped.load(Ordering::SeqCst));
    assert_eq!(report.connections, 2, "{report:?}");
    assert_eq!(
        edge.metric("missive_media_bytes_received_total") as u64,
        first.size,
        "the edge wrote some bytes twice"
    );
    // Resent: at most what was in flight at the drop (4 streams × 2 chunks of up to 1 MiB).
    assert!(report.sent <= first.size + (8 << 20), "{report:?}");

    // 2. The client's address changes mid-upload: QUIC migrates, no reconnect.
    let second = random_file(&dir.path().join("two.bin"), 16 << 20, 2);
    let moved = Arc::new(AtomicBool::new(false));
    let (ep, m, total) = (endpoint.clone(), moved.clone(), second.size);
    let old_addr = endpoint.local_addr().unwrap();
    let report = alice
        .upload_blob(&second, 2, move |p: Progress| {
            if p.done * 2 >= total && !m.swap(true, Ordering::SeqCst) {
                ep.rebind("127.0.0.1:0".parse().unwrap()).unwrap();
            }
        })
        .await
        .unwrap();
    assert!(moved.load(Ordering::SeqCst));
    assert_ne!(endpoint.local_addr().unwrap(), old_addr);
    assert_eq!(
        report.connections, 1,
        "migration must not reconnect: {report:?}"
    );
    assert_eq!(report.sent, second.size);

    // 3. bob downloads the first blob: identical bytes, then it is gone from the edge.
    assert_eq!(blob_files(&edge), 2);
    let out = dir.path().join("downloaded.bin");
    bob.download_blob(first.blob, first.size, &out, |_| {})
        .await
        .unwrap();
    assert_eq!(
        std::fs::read(&out).unwrap(),
        std::fs::read(&first.path).unwrap()
    );
    common::eventually(
        "the downloaded blob deleted",
        Duration::from_secs(10),
        || blob_files(&edge) == 1,
    )
    .await;
    assert_eq!(edge.metric("missive_media_blobs_deleted_total"), 1.0);
    // The same ciphertext uploaded again is stored once more (it was deleted), and an
    // identical upload while it exists sends nothing.
    let again = alice.upload_blob(&second, 1, |_| {}).await.unwrap();
    assert_eq!((again.sent, again.already_held), (0, second.size));
}

#[tokio::test]
async fn size_quota_and_hash_refusals_are_typed() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = config_file(
        dir.path(),
        "[media]\nmax_file_bytes = 1000000\nquota_bytes = 1500000\n",
    );
    let edge = Edge::start(dir.path(), &[&cfg[0], &cfg[1]]);
    let alice = user_on(&edge, "alice", None).await;
    let code = |r: Result<_, ClientError>| match r {
        Err(e) => e.code(),
        Ok(_) => None,
    };

    let big = random_file(&dir.path().join("big"), 1_000_001, 3);
    assert_eq!(
        code(alice.upload_blob(&big, 1, |_| {}).await),
        Some(ErrorCode::MediaTooLarge)
    );
    let one = random_file(&dir.path().join("one"), 900_000, 4);
    alice.upload_blob(&one, 2, |_| {}).await.unwrap();
    let two = random_file(&dir.path().join("two"), 900_000, 5);
    assert_eq!(
        code(alice.upload_blob(&two, 1, |_| {}).await),
        Some(ErrorCode::MediaQuotaExceeded)
    );
    let mut forged = random_file(&dir.path().join("forged"), 100_000, 6);
    forged.blob = BlobId(*blake3::hash(b"something else").as_bytes());
    assert_eq!(
        code(alice.upload_blob(&forged, 1, |_| {}).await),
        Some(ErrorCode::MediaHashMismatch)
    );
    assert_eq!(edge.metric("missive_media_hash_mismatches_total"), 1.0);
    // Nothing of the refused uploads is left on disk or in the quota: a small one fits.
    let small = random_file(&dir.path().join("small"), 500_000, 7);
    alice.upload_blob(&small, 1, |_| {}).await.unwrap();
    let unknown = alice
        .download_blob(BlobId([9; 32]), 10, &dir.path().join("x"), |_| {})
        .await;
    assert_eq!(
        unknown.err().and_then(|e| e.code()),
        Some(ErrorCode::UnknownMedia)
    );
}

/// Over the TCP+TLS fallback each transfer gets a TLS connection of its own (logged in with
/// `TransferLogin`, the device's session untouched): uploads resume after a drop, and a
/// TCP client downloads what a QUIC client uploaded and the other way round.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn transfers_work_and_resume_over_the_tcp_fallback() {
    let dir = tempfile::tempdir().unwrap();
    let edge = Edge::start(dir.path(), &[]);
    let tcp_user = |name: &'static str| {
        let identity = Identity::generate(name, DeviceId(1));
        let mut cfg = ClientConfig::new(edge.quic, edge.ca_pem(), identity);
        cfg.force_tcp = true;
        cfg
    };
    let alice_cfg = tcp_user("alice");
    missive_client::register(&alice_cfg, None).await.unwrap();
    let (alice, mut alice_events) = Client::connect(alice_cfg).await.unwrap();
    let bob = user_on(&edge, "bob", None).await;

    let file = random_file(&dir.path().join("tcp.bin"), 12 << 20, 3);
    let dropped = Arc::new(AtomicBool::new(false));
    let (a, d, total) = (alice.clone(), dropped.clone(), file.size);
    let report = alice
        .upload_blob(&file, 2, move |p: Progress| {
            if p.done * 2 >= total && !d.swap(true, Ordering::SeqCst) {
                a.reconnect().unwrap();
            }
        })
        .await
        .unwrap();
    assert!(dropped.load(Ordering::SeqCst));
    assert!(report.connections >= 2, "{report:?}");
    assert_eq!(
        edge.metric("missive_media_bytes_received_total") as u64,
        file.size,
        "the edge wrote some bytes twice"
    );
    let out = dir.path().join("via-quic.bin");
    bob.download_blob(file.blob, file.size, &out, |_| {})
        .await
        .unwrap();
    assert_eq!(
        std::fs::read(&out).unwrap(),
        std::fs::read(&file.path).unwrap()
    );

    // bob (QUIC) uploads; alice downloads over TCP.
    let back = random_file(&dir.path().join("back.bin"), 3 << 20, 4);
    bob.upload_blob(&back, 2, |_| {}).await.unwrap();
    let out = dir.path().join("via-tcp.bin");
    alice
        .download_blob(back.blob, back.size, &out, |_| {})
        .await
        .unwrap();
    assert_eq!(
        std::fs::read(&out).unwrap(),
        std::fs::read(&back.path).unwrap()
    );
    // The transfers left alice's session alone: still connected over TCP, no replacement.
    let mut seen = Vec::new();
    while let Some(e) = alice_events.try_next() {
        seen.push(e);
    }
    assert!(
        !seen
            .iter()
            .any(|e| matches!(e, missive_client::Event::Disconnected { reason } if reason.contains("another connection"))),
        "{seen:?}"
    );
}
