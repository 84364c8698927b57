//! With `force_relay` on both ends the call offers and uses only relayed candidates: the
//! path is Relayed, the edge's `missive_relay_*` counters show the media's bytes, every
//! frame decrypts, and a UDP proxy between the caller and the relay sees plenty of
//! datagrams but never the synthetic frames' plaintext marker.

mod calls;

use calls::*;
use missive_client::call_media::{
    CandidateKind, MediaEndpoint, PathKind, TurnServer, SYNTHETIC_MARKER,
};
use missive_testkit::UdpProxy;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn forced_relay_path_carries_only_ciphertext() {
    let e = relay_edge();
    let (_alice, ca) = credentials(&e.edge, "alice").await;
    let (_bob, cb) = credentials(&e.edge, "bob").await;
    // The caller reaches the relay through the proxy, which looks for the plaintext marker.
    let proxy = UdpProxy::in_front_of(e.relay);
    proxy.watch_for(SYNTHETIC_MARKER);
    let mut oa = options(&ca);
    oa.force_relay = true;
    oa.turn = Some(TurnServer {
        addr: proxy.a_side,
        ..TurnServer::from_credentials(&ca).unwrap()
    });
    let mut ob = options(&cb);
    ob.force_relay = true;
    let a = MediaEndpoint::gather(oa).await.unwrap();
    let b = MediaEndpoint::gather(ob).await.unwrap();
    let (da, db) = (a.description(), b.description());
    for d in [&da, &db] {
        assert_eq!(d.candidates.len(), 1, "{d:?}");
        assert_eq!(d.candidates[0].kind, CandidateKind::Relayed);
    }
    let bytes_before = metric(&e.edge, "missive_relay_bytes_to_peers_total");
    let (call_a, call_b) = start_pair(a, &db, b, &da);
    assert_eq!(call_a.connected(WAIT).await.unwrap(), PathKind::Relayed);
    assert_eq!(call_b.connected(WAIT).await.unwrap(), PathKind::Relayed);
    eventually("media both ways", WAIT, [&call_a, &call_b], |a, b| {
        a.frames_received > 300 && b.frames_received > 300
    })
    .await;
    // The proxy carried the caller's relayed media, and none of it in plaintext.
    assert!(proxy.forwarded() > 300, "{}", proxy.forwarded());
    assert_eq!(proxy.marker_hits(), 0, "plaintext frames crossed the relay");
    let (sa, sb) = (call_a.stop().await, call_b.stop().await);
    for (name, s) in [("caller", &sa), ("callee", &sb)] {
        assert_clean(name, s);
        assert_eq!(s.path, Some(PathKind::Relayed));
        eprintln!(
            "{name}: relayed set-up (start to first decrypted frame) {:?}, rtt {:.1} ms",
            s.first_media_after.unwrap(),
            s.rtt_ms
        );
    }
    // Both directions' media went through the relay: at least the frames received, at
    // least 100 bytes each (audio frames are the smallest).
    let relayed = metric(&e.edge, "missive_relay_bytes_to_peers_total") - bytes_before;
    let frames = (sa.frames_received + sb.frames_received) as f64;
    assert!(
        relayed > frames * 100.0,
        "relayed {relayed} bytes for {frames} frames"
    );
    assert!(metric(&e.edge, "missive_relay_packets_to_clients_total") >= frames);
    // The proxy carried the caller's relayed media, and none of it in plaintext.
    assert!(
        proxy.forwarded() as f64 > frames / 2.0,
        "{}",
        proxy.forwarded()
    );
    assert_eq!(proxy.marker_hits(), 0, "plaintext frames crossed the relay");
    assert_eq!(metric(&e.edge, "missive_relay_allocations_active"), 0.0);
}
