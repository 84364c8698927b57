//! A direct call through a UDP proxy with 5 % loss each way and 30 ms delay each way keeps
//! going: both sides measure about that loss and an RTT of about 60 ms, the SDK lowers its
//! video bitrate (audio keeps its frames), and what arrives still decrypts. When the loss
//! stops, video climbs back.

mod calls;

use calls::*;
use missive_client::call_media::{MediaEndpoint, PathKind};
use missive_testkit::UdpProxy;
use std::time::Duration;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn lossy_delayed_path_keeps_the_call_and_lowers_video() {
    let e = relay_edge();
    let (_alice, ca) = credentials(&e.edge, "alice").await;
    let (_bob, cb) = credentials(&e.edge, "bob").await;
    // No TURN: the only path is the proxied direct one.
    let mut oa = options(&ca);
    oa.turn = None;
    let mut ob = options(&cb);
    ob.turn = None;
    let a = MediaEndpoint::gather(oa).await.unwrap();
    let b = MediaEndpoint::gather(ob).await.unwrap();
    let (da, db) = (a.description(), b.description());
    let proxy = UdpProxy::between(host_of(&da), host_of(&db));
    proxy.set_loss(5.0);
    proxy.set_delay(Duration::from_millis(30));
    let (call_a, call_b) = start_pair(
        a,
        &via_proxy(&db, proxy.a_side),
        b,
        &via_proxy(&da, proxy.b_side),
    );
    assert_eq!(call_a.connected(WAIT).await.unwrap(), PathKind::Direct);
    assert_eq!(call_b.connected(WAIT).await.unwrap(), PathKind::Direct);
    // The controller backs off within a few feedback rounds.
    eventually("video backs off", WAIT, [&call_a, &call_b], |a, b| {
        a.video_target_kbps < 1000.0 && b.video_target_kbps < 1000.0
    })
    .await;
    // Let the measurements settle over a few more seconds of media.
    let settled = call_a.stats().frames_received + 400;
    eventually("more media", WAIT, [&call_a, &call_b], |a, _| {
        a.frames_received > settled
    })
    .await;
    let (a_mid, b_mid) = (call_a.stats(), call_b.stats());
    for (name, s) in [("caller", &a_mid), ("callee", &b_mid)] {
        eprintln!(
            "{name}: loss {:.1} % (peer reports {:.1} %), rtt {:.1} ms, jitter {:.1} ms, \
             video {:.0} kbit/s, send {:.0} kbit/s, mos {:.2}",
            s.loss_percent,
            s.remote_loss_percent,
            s.rtt_ms,
            s.jitter_ms,
            s.video_target_kbps,
            s.send_kbps,
            s.mos
        );
        assert!((1.5..12.0).contains(&s.loss_percent), "{name}: {s:?}");
        assert!((50.0..250.0).contains(&s.rtt_ms), "{name}: {s:?}");
        assert!(s.video_target_kbps < 1000.0, "{name}: {s:?}");
        assert!(s.mos < 4.3, "{name}: {s:?}");
        // Audio alone is 32 kbit/s plus headers: the call still sends more than that.
        assert!(s.send_kbps > 40.0, "{name}: {s:?}");
        assert_eq!(s.path_switches, 0, "{name}: {s:?}");
    }
    // The network recovers: video climbs back, slowly (5 % a report after a 1 s hold).
    proxy.set_loss(0.0);
    let low = a_mid.video_target_kbps.max(b_mid.video_target_kbps);
    eventually("video climbs back", WAIT, [&call_a, &call_b], |a, b| {
        a.video_target_kbps > low * 1.3 && b.video_target_kbps > low * 1.3
    })
    .await;
    let (sa, sb) = (call_a.stop().await, call_b.stop().await);
    assert_clean("caller", &sa);
    assert_clean("callee", &sb);
    assert!(proxy.dropped() > 50, "the proxy lost {}", proxy.dropped());
}
