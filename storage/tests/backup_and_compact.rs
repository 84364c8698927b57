//! `Store::backup_to` copies a store while writes keep arriving and the copy holds exactly
//! what was committed before it; compaction (online on fjall, offline on both engines by
//! compaction or rewrite) keeps every queued envelope and reports disk bytes.

mod common;

use common::{config, id, to_device_1};
use missive_proto::{DeviceId, ServerSeq};
use missive_storage::{compact, Engine, MailboxId, StorageError, Store, StoredItem};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

fn bob() -> MailboxId {
    MailboxId::new("bob", DeviceId(1))
}

/// A store with users alice and bob and `n` envelopes from alice queued for bob.
async fn filled(dir: &std::path::Path, engine: Engine, n: u64) -> Store {
    let store = Store::open(dir, config(engine), None).unwrap();
    for name in ["alice", "bob"] {
        store
            .register(name, DeviceId(1), [7; 32], None, false, 1)
            .await
            .unwrap();
    }
    for i in 0..n {
        store
            .append_message(
                "alice",
                DeviceId(1),
                id(i),
                "bob",
                to_device_1(vec![i as u8; 100]),
                Vec::new(),
                2,
            )
            .await
            .unwrap();
    }
    store
}

fn queued(store: &Store) -> Vec<(ServerSeq, StoredItem)> {
    store
        .read_mailbox(&bob(), ServerSeq(0), usize::MAX, usize::MAX)
        .unwrap()
}

#[tokio::test]
async fn a_backup_taken_under_writes_holds_exactly_what_came_before_it() {
    for engine in Engine::ALL {
        let dir = tempfile::tempdir().unwrap();
        let store = filled(&dir.path().join("db"), engine, 200).await;
        // A writer keeps going while the backup runs; the backup starts once 50 of its
        // writes are acknowledged.
        let submitted = Arc::new(AtomicUsize::new(0));
        let acked = Arc::new(AtomicUsize::new(0));
        let (started_tx, started) = tokio::sync::oneshot::channel();
        let writer = {
            let (store, submitted, acked) = (store.clone(), submitted.clone(), acked.clone());
            tokio::spawn(async move {
                let mut started_tx = Some(started_tx);
                for i in 1000..1300u64 {
                    submitted.fetch_add(1, Ordering::SeqCst);
                    store
                        .append_message(
                            "alice",
                            DeviceId(1),
                            id(i),
                            "bob",
                            to_device_1(vec![1; 100]),
                            Vec::new(),
                            3,
                        )
                        .await
                        .unwrap();
                    if acked.fetch_add(1, Ordering::SeqCst) + 1 == 50 {
                        let _ = started_tx.take().map(|tx| tx.send(()));
                    }
                }
            })
        };
        started.await.unwrap();
        let acked_before = acked.load(Ordering::SeqCst);
        let dest = dir.path().join("copy");
        let report = store.backup_to(&dest).await.unwrap();
        let submitted_by_then = submitted.load(Ordering::SeqCst);
        writer.await.unwrap();
        assert_eq!(report.engine, engine);
        assert_eq!(report.counts.users, 2, "{engine}: {report:?}");
        let copied = report.counts.mailbox_items as usize;
        // Every write acknowledged before the backup was asked for is in it; none submitted
        // after it answered is; and the writes overlapped it (some came after).
        assert!(
            (200 + acked_before..=200 + submitted_by_then).contains(&copied),
            "{engine}: {copied} copied, {acked_before} acked before, {submitted_by_then} submitted by the end"
        );
        assert!(
            copied < 500,
            "{engine}: the writer had finished before the backup"
        );
        let live = queued(&store);
        assert_eq!(live.len(), 500);
        store.shutdown().await;
        drop(store);

        let copy = Store::open(&dest, config(engine), None).unwrap();
        assert_eq!(copy.user_count().unwrap(), 2);
        // A prefix of the live mailbox, in order, with the same seqs: nothing torn.
        assert_eq!(queued(&copy), live[..copied].to_vec(), "{engine}");
        copy.shutdown().await;

        // A second backup into the same (now full) directory is refused.
        let store = Store::open(&dir.path().join("db"), config(engine), None).unwrap();
        let e = store.backup_to(&dest).await.unwrap_err();
        assert!(matches!(e, StorageError::Backup(_)), "{e}");
        assert!(e.to_string().contains("not empty"), "{e}");
        store.shutdown().await;
    }
}

#[tokio::test]
async fn fjall_compacts_while_open_and_sled_asks_for_a_stop() {
    for engine in Engine::ALL {
        let dir = tempfile::tempdir().unwrap();
        let store = filled(dir.path(), engine, 300).await;
        store.ack(bob(), ServerSeq(200), 4).await.unwrap();
        let before = queued(&store);
        match (engine, store.compact().await) {
            (Engine::Fjall, Ok(report)) => {
                assert!(report.bytes_before > 0, "{report:?}");
                assert!(report.bytes_after > 0, "{report:?}");
                assert_eq!(report.rewritten, None);
            }
            (Engine::Sled, Err(StorageError::CompactionNeedsStop { engine: e })) => {
                assert_eq!(e, Engine::Sled)
            }
            (engine, other) => panic!("{engine}: {other:?}"),
        }
        // Still serving, with the same content.
        assert_eq!(queued(&store), before);
        store
            .append_message(
                "alice",
                DeviceId(1),
                id(9999),
                "bob",
                to_device_1(vec![2; 10]),
                Vec::new(),
                5,
            )
            .await
            .unwrap();
        assert_eq!(queued(&store).len(), before.len() + 1);
        store.shutdown().await;
    }
}

#[tokio::test]
async fn offline_compaction_keeps_every_queued_envelope() {
    for engine in Engine::ALL {
        let dir = tempfile::tempdir().unwrap();
        let store = filled(dir.path(), engine, 2000).await;
        // Acked envelopes are deleted entries: what compaction gives back.
        store.ack(bob(), ServerSeq(1500), 4).await.unwrap();
        let before = queued(&store);
        assert_eq!(before.len(), 500);
        store.shutdown().await;
        drop(store);

        let report = compact(dir.path(), &config(engine)).unwrap();
        assert_eq!(report.engine, engine);
        assert!(
            report.bytes_before > 0 && report.bytes_after > 0,
            "{report:?}"
        );
        match engine {
            Engine::Sled => {
                let counts = report.rewritten.expect("sled is rewritten");
                assert_eq!(counts.mailbox_items, 500 + 1500, "{counts:?}");
                assert!(!dir.path().join("sled.compacting").exists());
                assert!(!dir.path().join("sled.precompact").exists());
            }
            Engine::Fjall => assert_eq!(report.rewritten, None),
        }

        let store = Store::open(dir.path(), config(engine), None).unwrap();
        assert_eq!(queued(&store), before, "{engine}");
        assert_eq!(store.user_count().unwrap(), 2);
        // Seqs go on past every earlier one (from the mailbox's reserved mark: a gap is fine).
        store
            .append_message(
                "alice",
                DeviceId(1),
                id(5000),
                "bob",
                to_device_1(vec![3; 10]),
                Vec::new(),
                6,
            )
            .await
            .unwrap();
        let after = queued(&store);
        assert_eq!(after.len(), 501, "{engine}");
        assert!(after.last().unwrap().0 > ServerSeq(2000), "{engine}");
        store.shutdown().await;
    }
}

#[test]
fn offline_compaction_of_nothing_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let e = compact(dir.path(), &config(Engine::Fjall)).unwrap_err();
    assert!(e.to_string().contains("no fjall store"), "{e}");
    assert!(!dir.path().join("engine").exists());
}
