//! Garbage sprayed at a call's media socket (STUN-, ChannelData- and SRTP-shaped, every
//! length) neither panics nor disturbs the call: it is counted as failed decryption where it
//! looks like SRTP, and the peer's media keeps decrypting.

mod calls;

use calls::*;
use missive_client::call_media::{MediaEndpoint, PathKind};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn garbage_at_the_media_socket_changes_nothing() {
    let e = relay_edge();
    let (_alice, ca) = credentials(&e.edge, "alice").await;
    let (_bob, cb) = credentials(&e.edge, "bob").await;
    let a = MediaEndpoint::gather(options(&ca)).await.unwrap();
    let b = MediaEndpoint::gather(options(&cb)).await.unwrap();
    let (da, db) = (a.description(), b.description());
    let target = host_of(&db);
    let (call_a, call_b) = start_pair(a, &db, b, &da);
    assert_eq!(call_b.connected(WAIT).await.unwrap(), PathKind::Direct);
    let sock = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
    let mut x: u64 = 0x9E37_79B9_7F4A_7C15;
    let mut srtp_shaped = 0u64;
    for i in 0..3000usize {
        let len = i % 1300;
        let mut g: Vec<u8> = (0..len)
            .map(|_| {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                x as u8
            })
            .collect();
        if let Some(first) = g.first_mut() {
            // STUN, ChannelData, SRTP/SRTCP and unknown first bytes in turn.
            *first = [0x00, 0x01, 0x40, 0x80, 0x90, 0xC0, 0xFF][i % 7];
            if (128..=191).contains(first) {
                srtp_shaped += 1;
            }
        }
        if len >= 20 && g[0] < 4 {
            // A well-formed STUN header so the codec looks inside.
            g[2..4].copy_from_slice(&((len - 20) as u16 & !3).to_be_bytes());
            g[4..8].copy_from_slice(&0x2112_A442u32.to_be_bytes());
        }
        let _ = sock.send_to(&g, target);
    }
    let before = call_b.stats();
    eventually("media keeps flowing", WAIT, [&call_a, &call_b], |_, b| {
        b.frames_decrypted > before.frames_decrypted + 300
    })
    .await;
    let sb = call_b.stop().await;
    let sa = call_a.stop().await;
    assert_eq!(sb.path, Some(PathKind::Direct));
    assert_eq!(sb.path_switches, 0);
    // Every SRTP-shaped piece of garbage failed; nothing else did.
    assert!(
        sb.decrypt_failures > 0 && sb.decrypt_failures <= srtp_shaped,
        "{sb:?}"
    );
    // The frames that did not decrypt are the garbage (the peer's all did).
    assert!(
        sb.frames_received - sb.frames_decrypted <= sb.decrypt_failures,
        "{sb:?}"
    );
    assert_clean("caller", &sa);
}
