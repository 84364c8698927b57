//! Call history in storage: newest first, per user, bounded, and still there after a reopen;
//! on both engines.

mod common;

use common::config;
use missive_proto::{CallEndReason, CallId, CallMedia, CallRecord};
use missive_storage::{Engine, Store, MAX_CALLS_KEPT};

fn record(n: u32, peer: &str) -> CallRecord {
    CallRecord {
        call_id: CallId([(n % 251) as u8; 16]),
        peer: peer.into(),
        outgoing: n.is_multiple_of(2),
        media: CallMedia::Audio,
        started_ms: u64::from(n) * 1_000,
        answered_ms: 0,
        ended_ms: u64::from(n) * 1_000 + 500,
        end: CallEndReason::Missed,
        conference: None,
    }
}

#[tokio::test]
async fn history_is_newest_first_bounded_and_durable() {
    for engine in [Engine::Sled, Engine::Fjall] {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path(), config(engine), None).unwrap();
        for n in 1..=3 {
            store.record_call("alice", record(n, "bob")).await.unwrap();
        }
        store.record_call("bob", record(9, "alice")).await.unwrap();
        let alice = store.calls_of("alice", 10).unwrap();
        let ends: Vec<u64> = alice.iter().map(|r| r.ended_ms).collect();
        assert_eq!(ends, vec![3_500, 2_500, 1_500], "{engine:?}");
        assert_eq!(store.calls_of("alice", 2).unwrap().len(), 2);
        assert_eq!(store.calls_of("bob", 10).unwrap(), vec![record(9, "alice")]);
        assert!(
            store.calls_of("al", 10).unwrap().is_empty(),
            "prefixes do not leak"
        );

        // Past the bound the oldest go.
        for n in 4..=(MAX_CALLS_KEPT as u32 + 5) {
            store
                .record_call("alice", record(n, "carol"))
                .await
                .unwrap();
        }
        let all = store.calls_of("alice", usize::MAX).unwrap();
        assert_eq!(all.len(), MAX_CALLS_KEPT);
        assert_eq!(all.last().unwrap().ended_ms, 6_500, "1..=5 were dropped");

        store.shutdown().await;
        drop(store);
        let store = Store::open(dir.path(), config(engine), None).unwrap();
        assert_eq!(
            store.calls_of("alice", usize::MAX).unwrap().len(),
            MAX_CALLS_KEPT
        );
        assert_eq!(store.calls_of("bob", 10).unwrap().len(), 1);
    }
}
