//! Two endpoints gather against the real edge's STUN/TURN relay on loopback and call each
//! other: ICE picks the direct path (host over relayed), SRTP media flows both ways and
//! every frame that arrived decrypts; stopping releases both TURN allocations.

mod calls;

use calls::*;
use missive_client::call_media::{CandidateKind, MediaEndpoint, PathKind};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn direct_path_is_chosen_and_media_decrypts_both_ways() {
    let e = relay_edge();
    let (_alice, ca) = credentials(&e.edge, "alice").await;
    let (_bob, cb) = credentials(&e.edge, "bob").await;
    let a = MediaEndpoint::gather(options(&ca)).await.unwrap();
    let b = MediaEndpoint::gather(options(&cb)).await.unwrap();
    for d in [a.description(), b.description()] {
        let kinds: Vec<_> = d.candidates.iter().map(|c| c.kind).collect();
        assert!(kinds.contains(&CandidateKind::Host), "{d:?}");
        assert!(kinds.contains(&CandidateKind::Relayed), "{d:?}");
    }
    assert_eq!(metric(&e.edge, "missive_relay_allocations_active"), 2.0);
    assert!(metric(&e.edge, "missive_relay_bindings_total") >= 2.0);
    let (da, db) = (a.description(), b.description());
    let (call_a, call_b) = start_pair(a, &db, b, &da);
    assert_eq!(call_a.connected(WAIT).await.unwrap(), PathKind::Direct);
    assert_eq!(call_b.connected(WAIT).await.unwrap(), PathKind::Direct);
    // A few seconds of audio and video each way.
    eventually("media both ways", WAIT, [&call_a, &call_b], |a, b| {
        a.frames_decrypted > 500 && b.frames_decrypted > 500
    })
    .await;
    let relayed_before = metric(&e.edge, "missive_relay_bytes_to_peers_total");
    let (sa, sb) = (call_a.stop().await, call_b.stop().await);
    for (name, s) in [("caller", &sa), ("callee", &sb)] {
        assert_clean(name, s);
        assert_eq!(s.path, Some(PathKind::Direct));
        assert_eq!(s.path_switches, 0);
        assert!(s.first_media_after.is_some());
        assert!(s.rtt_ms > 0.0 && s.rtt_ms < 200.0, "{name}: {s:?}");
        assert!(s.mos > 4.0, "{name}: {s:?}");
        eprintln!(
            "{name}: set-up (start to first decrypted frame) {:?}, rtt {:.1} ms",
            s.first_media_after.unwrap(),
            s.rtt_ms
        );
    }
    // The direct call relayed no media: only the backup checks of relayed pairs (~100-byte
    // messages, one per pair a second), far less than one byte in 20 of the media.
    let frames = (sa.frames_received + sb.frames_received) as f64;
    assert!(
        relayed_before < frames * 50.0,
        "{relayed_before} bytes for {frames} frames"
    );
    // stop() released both allocations.

    assert_eq!(metric(&e.edge, "missive_relay_allocations_active"), 0.0);
}
