//! A call on the direct path (through a UDP proxy) moves to the relay when that path dies
//! (the proxy blackholes it): consent checks fail, the controlling side nominates a relayed
//! pair, and media continues both ways, still all decrypting. When the direct path comes
//! back the call returns to it.

mod calls;

use calls::*;
use missive_client::call_media::{MediaEndpoint, PathKind};
use missive_testkit::UdpProxy;
use std::time::Instant;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dead_direct_path_moves_the_call_to_the_relay() {
    let e = relay_edge();
    let (_alice, ca) = credentials(&e.edge, "alice").await;
    let (_bob, cb) = credentials(&e.edge, "bob").await;
    let a = MediaEndpoint::gather(options(&ca)).await.unwrap();
    let b = MediaEndpoint::gather(options(&cb)).await.unwrap();
    let (da, db) = (a.description(), b.description());
    let proxy = UdpProxy::between(host_of(&da), host_of(&db));
    let (call_a, call_b) = start_pair(
        a,
        &via_proxy(&db, proxy.a_side),
        b,
        &via_proxy(&da, proxy.b_side),
    );
    assert_eq!(call_a.connected(WAIT).await.unwrap(), PathKind::Direct);
    assert_eq!(call_b.connected(WAIT).await.unwrap(), PathKind::Direct);
    eventually(
        "media on the direct path",
        WAIT,
        [&call_a, &call_b],
        |a, b| a.frames_decrypted > 200 && b.frames_decrypted > 200,
    )
    .await;
    let forwarded = proxy.forwarded();
    assert!(forwarded > 400, "media went through the proxy: {forwarded}");
    let relayed_before = metric(&e.edge, "missive_relay_bytes_to_peers_total");

    proxy.set_blackhole(true);
    let died = Instant::now();
    eventually(
        "both sides on the relay",
        WAIT,
        [&call_a, &call_b],
        |a, b| a.path == Some(PathKind::Relayed) && b.path == Some(PathKind::Relayed),
    )
    .await;
    let switched_after = died.elapsed();
    let (a_at, b_at) = (call_a.stats(), call_b.stats());
    // Media continues both ways on the relay.
    eventually("media on the relay", WAIT, [&call_a, &call_b], |a, b| {
        a.frames_decrypted > a_at.frames_decrypted + 300
            && b.frames_decrypted > b_at.frames_decrypted + 300
    })
    .await;
    let relayed = metric(&e.edge, "missive_relay_bytes_to_peers_total") - relayed_before;
    assert!(relayed > 300.0 * 100.0, "relayed {relayed} bytes");
    for (name, s) in [("caller", call_a.stats()), ("callee", call_b.stats())] {
        assert_eq!(s.decrypt_failures, 0, "{name}: {s:?}");
        assert!(s.path_switches >= 1, "{name}: {s:?}");
    }

    // The direct path comes back: after a few seconds of answers the call returns to it.
    proxy.set_blackhole(false);
    let back = Instant::now();
    eventually(
        "both sides direct again",
        WAIT,
        [&call_a, &call_b],
        |a, b| a.path == Some(PathKind::Direct) && b.path == Some(PathKind::Direct),
    )
    .await;
    let back_after = back.elapsed();
    let (a_at, b_at) = (call_a.stats(), call_b.stats());
    let forwarded = proxy.forwarded();
    eventually(
        "media on the direct path again",
        WAIT,
        [&call_a, &call_b],
        |a, b| {
            a.frames_decrypted > a_at.frames_decrypted + 300
                && b.frames_decrypted > b_at.frames_decrypted + 300
        },
    )
    .await;
    assert!(
        proxy.forwarded() > forwarded + 300,
        "media through the proxy again"
    );
    let (sa, sb) = (call_a.stop().await, call_b.stop().await);
    for (name, s) in [("caller", &sa), ("callee", &sb)] {
        assert_clean(name, s);
        assert_eq!(s.path, Some(PathKind::Direct), "{name}: {s:?}");
        assert!(s.path_switches >= 2, "{name}: {s:?}");
    }
    eprintln!(
        "switched to the relay {switched_after:?} after the direct path died, \
         back to direct {back_after:?} after it returned"
    );
}
