//! Measures call set-up on loopback against the real edge's relay: `start()` to the first
//! decrypted media frame, direct and forced through the relay, over several calls. Not a
//! pass/fail test of speed (the machine is shared); it asserts only that every call
//! connected on the expected path within the bound, and prints the figures:
//!
//! `cargo test -p missive-client --test call_setup_time -- --ignored --nocapture`

mod calls;

use calls::*;
use missive_client::call_media::{MediaEndpoint, PathKind};
use std::time::{Duration, Instant};

const CALLS: usize = 10;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "a measurement; run with --ignored --nocapture"]
async fn call_setup_time_direct_and_relayed() {
    let e = relay_edge();
    let (_alice, ca) = credentials(&e.edge, "alice").await;
    let (_bob, cb) = credentials(&e.edge, "bob").await;
    for (force_relay, path) in [(false, PathKind::Direct), (true, PathKind::Relayed)] {
        let mut setup = Vec::new();
        let mut gather = Vec::new();
        for _ in 0..CALLS {
            let mut oa = options(&ca);
            oa.force_relay = force_relay;
            let mut ob = options(&cb);
            ob.force_relay = force_relay;
            let t = Instant::now();
            let (a, b) = tokio::join!(MediaEndpoint::gather(oa), MediaEndpoint::gather(ob));
            gather.push(t.elapsed());
            let (a, b) = (a.unwrap(), b.unwrap());
            let (da, db) = (a.description(), b.description());
            let (call_a, call_b) = start_pair(a, &db, b, &da);
            assert_eq!(call_a.connected(WAIT).await.unwrap(), path);
            eventually("first media both ways", WAIT, [&call_a, &call_b], |a, b| {
                a.first_media_after.is_some() && b.first_media_after.is_some()
            })
            .await;
            let (sa, sb) = (call_a.stop().await, call_b.stop().await);
            // The later of the two sides: when media flows both ways.
            setup.push(
                sa.first_media_after
                    .max(sb.first_media_after)
                    .unwrap_or_default(),
            );
        }
        let show = |v: &mut Vec<Duration>| {
            v.sort();
            format!(
                "median {:?}, min {:?}, max {:?}",
                v[v.len() / 2],
                v[0],
                v[v.len() - 1]
            )
        };
        eprintln!(
            "{path:?} ({CALLS} calls): start() to first decrypted frame both ways: {}; gathering: {}",
            show(&mut setup),
            show(&mut gather)
        );
    }
}
