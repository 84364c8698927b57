//! `migrate` moves a stopped store to the other engine with everything in it — users, device
//! keys, invites, mailboxes with their seqs, seq counters, dedup keys — and back again; the
//! old engine can no longer open the store.

mod common;

use common::{config, id, to_device_1};
use missive_proto::{DeviceEnvelope, DeviceId, ServerSeq, Visibility};
use missive_storage::{
    migrate, AppendOutcome, Engine, MailboxId, RegisterOutcome, StorageError, Store, StoreConfig,
    StoredItem, UserRecord,
};
use std::path::Path;

fn mailboxes() -> Vec<MailboxId> {
    vec![
        MailboxId::new("alice", DeviceId(1)),
        MailboxId::new("bob", DeviceId(1)),
        MailboxId::new("bob", DeviceId(2)),
        MailboxId::new("carol", DeviceId(1)),
    ]
}

/// Everything a client or the edge can observe through the API.
#[derive(Debug, PartialEq)]
struct Snapshot {
    users: Vec<Option<UserRecord>>,
    keys: Vec<Option<[u8; 32]>>,
    devices: Vec<Vec<DeviceId>>,
    mailboxes: Vec<Vec<(ServerSeq, StoredItem)>>,
    total_queued: usize,
    user_count: usize,
}

fn snapshot(store: &Store) -> Snapshot {
    let names = ["alice", "bob", "carol", "dave"];
    Snapshot {
        users: names.iter().map(|n| store.user(n).unwrap()).collect(),
        keys: names
            .iter()
            .flat_map(|n| [DeviceId(1), DeviceId(2)].map(|d| store.device_key(n, d).unwrap()))
            .collect(),
        devices: names.iter().map(|n| store.devices(n).unwrap()).collect(),
        mailboxes: mailboxes()
            .iter()
            .map(|mb| {
                store
                    .read_mailbox(mb, ServerSeq(0), usize::MAX, usize::MAX)
                    .unwrap()
            })
            .collect(),
        total_queued: store.total_queued().unwrap(),
        user_count: store.user_count().unwrap(),
    }
}

/// Fills a fresh store with one of everything.
async fn populate(dir: &Path, engine: Engine) -> Snapshot {
    let store = Store::open(dir, config(engine), None).unwrap();
    for (n, name) in ["alice", "bob", "dave"].iter().enumerate() {
        let r = store
            .register(name, DeviceId(1), [n as u8; 32], None, false, 10)
            .await
            .unwrap();
        assert_eq!(r, RegisterOutcome::Created);
    }
    assert!(store.add_device("bob", DeviceId(2), [7; 32]).await.unwrap());
    store.add_invite("used", 11).await.unwrap();
    store.add_invite("unused", 11).await.unwrap();
    let r = store
        .register("carol", DeviceId(1), [3; 32], Some("used".into()), true, 12)
        .await
        .unwrap();
    assert_eq!(r, RegisterOutcome::Created);
    assert!(store
        .set_visibility("carol", Visibility::Nobody)
        .await
        .unwrap());
    assert!(store.set_last_seen("carol", 99).await.unwrap());
    assert!(store.set_disabled("dave", true).await.unwrap());
    for n in 0..5 {
        let r = store
            .append_message(
                "alice",
                DeviceId(1),
                id(n),
                "bob",
                vec![1, 2]
                    .into_iter()
                    .map(|d| DeviceEnvelope {
                        device: DeviceId(d),
                        envelope: vec![n as u8; 100],
                    })
                    .collect(),
                Vec::new(),
                20 + n,
            )
            .await
            .unwrap();
        assert!(matches!(r, AppendOutcome::Stored { devices: 2, .. }));
    }
    store
        .append_message(
            "bob",
            DeviceId(2),
            id(50),
            "carol",
            to_device_1(vec![5; 10]),
            vec![DeviceEnvelope {
                device: DeviceId(1),
                envelope: vec![5; 10],
            }],
            30,
        )
        .await
        .unwrap();
    // bob's phone takes two: they leave its mailbox, and alice gets two receipts.
    let out = store
        .ack(MailboxId::new("bob", DeviceId(1)), ServerSeq(2), 40)
        .await
        .unwrap();
    assert_eq!((out.deleted, out.receipts), (2, 2));
    let snap = snapshot(&store);
    store.shutdown().await;
    snap
}

#[tokio::test]
async fn migrate_there_and_back_keeps_everything() {
    for (a, b) in [(Engine::Sled, Engine::Fjall), (Engine::Fjall, Engine::Sled)] {
        let dir = tempfile::tempdir().unwrap();
        let before = populate(dir.path(), a).await;

        let report = migrate(dir.path(), a, b, &config(b)).unwrap();
        assert_eq!((report.from, report.to), (a, b));
        assert_eq!(report.counts.users, 4, "{report:?}");
        assert_eq!(report.counts.device_keys, 5, "{report:?}");
        assert_eq!(report.counts.invites, 1, "{report:?}");
        assert_eq!(report.counts.mailbox_items, before.total_queued as u64);
        assert_eq!(report.counts.seq_counters, 4, "{report:?}");
        assert_eq!(report.counts.dedup_keys, 6, "{report:?}");
        assert_eq!(report.counts.other, 0);
        assert_eq!(report.backup, dir.path().join(a.name()));
        assert_eq!(report.replaced, None);

        // The old engine no longer opens the store; the new one shows the same store.
        let err = Store::open(dir.path(), config(a), None).unwrap_err();
        assert!(
            matches!(err, StorageError::EngineMismatch { .. }),
            "{a}->{b}: {err}"
        );
        let store = Store::open(dir.path(), config(b), None).unwrap();
        assert_eq!(snapshot(&store), before, "{a}->{b}");
        // Dedup keys came along; so did the seq counters (bob's phone has used 1 to 5, so the
        // next seq comes after 5, from the counter's reserved mark; without the counter it would
        // start again at 1); the unused invite still works, the used one not.
        let dup = store
            .append_message(
                "alice",
                DeviceId(1),
                id(3),
                "bob",
                to_device_1(vec![1]),
                Vec::new(),
                50,
            )
            .await
            .unwrap();
        assert_eq!(dup, AppendOutcome::Duplicate { server_ts_ms: 23 });
        store
            .append_message(
                "alice",
                DeviceId(1),
                id(6),
                "bob",
                to_device_1(vec![6]),
                Vec::new(),
                51,
            )
            .await
            .unwrap();
        let bob = store
            .read_mailbox(
                &MailboxId::new("bob", DeviceId(1)),
                ServerSeq(0),
                10,
                usize::MAX,
            )
            .unwrap();
        let seqs: Vec<u64> = bob.iter().map(|(s, _)| s.0).collect();
        assert_eq!(seqs[..3], [3, 4, 5]);
        assert_eq!(seqs.len(), 4);
        assert!(seqs[3] > 5, "{seqs:?}");
        let again = store
            .register("erin", DeviceId(1), [9; 32], Some("used".into()), true, 52)
            .await
            .unwrap();
        assert_eq!(again, RegisterOutcome::InviteInvalid);
        let ok = store
            .register(
                "erin",
                DeviceId(1),
                [9; 32],
                Some("unused".into()),
                true,
                52,
            )
            .await
            .unwrap();
        assert_eq!(ok, RegisterOutcome::Created);
        let after_writes = snapshot(&store);
        store.shutdown().await;
        drop(store);

        // And back: the stale backup of `a` is moved aside, not reused.
        let back = migrate(dir.path(), b, a, &config(a)).unwrap();
        assert_eq!(back.counts.users, 5);
        let aside = back.replaced.clone().expect("old copy moved aside");
        assert!(aside.is_dir(), "{aside:?}");
        let store = Store::open(dir.path(), config(a), None).unwrap();
        assert_eq!(snapshot(&store), after_writes, "{a}->{b}->{a}");
        store.shutdown().await;
    }
}

#[tokio::test]
async fn migrate_refuses_a_store_of_the_other_engine_and_an_empty_dir() {
    let dir = tempfile::tempdir().unwrap();
    let e = migrate(
        dir.path(),
        Engine::Sled,
        Engine::Fjall,
        &StoreConfig::default(),
    )
    .unwrap_err();
    assert!(e.to_string().contains("no sled store"), "{e}");
    populate(dir.path(), Engine::Fjall).await;
    let e = migrate(
        dir.path(),
        Engine::Sled,
        Engine::Fjall,
        &StoreConfig::default(),
    )
    .unwrap_err();
    assert!(e.to_string().contains("on fjall, not sled"), "{e}");
    let e = migrate(
        dir.path(),
        Engine::Fjall,
        Engine::Fjall,
        &StoreConfig::default(),
    )
    .unwrap_err();
    assert!(matches!(e, StorageError::Migration(_)), "{e}");
    // Nothing changed: the store still opens with fjall.
    let store = Store::open(dir.path(), config(Engine::Fjall), None).unwrap();
    assert_eq!(store.user_count().unwrap(), 4);
    store.shutdown().await;
}
