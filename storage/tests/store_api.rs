//! Behaviour of the storage API on a real directory, for every engine: each scenario below is
//! an `async fn(Engine)`, and `for_each_engine!` turns it into one test per engine
//! (`on_sled::name`, `on_fjall::name`).

mod common;

use common::{config, id, to_device_1};
use missive_proto::{
    ClientMsgId, DeviceEnvelope, DeviceId, Payload, ServerSeq, UserDevices, Visibility,
};
use missive_proto::{IdentityKeys, SignedKey};
use missive_storage::{
    AppendOutcome, Appended, ClaimFrom, Engine, KeyStatus, KeyUpload, LinkOutcome, MailboxId,
    RegisterOutcome, StorageError, Store, StoreConfig, StoredItem, UploadOutcome, SEQ_RESERVATION,
};
use std::sync::{Arc, Mutex};
use std::time::Duration;

macro_rules! for_each_engine {
    ($($scenario:ident),* $(,)?) => {
        mod on_sled {
            $(
                #[tokio::test]
                async fn $scenario() {
                    super::$scenario(missive_storage::Engine::Sled).await
                }
            )*
        }
        mod on_fjall {
            $(
                #[tokio::test]
                async fn $scenario() {
                    super::$scenario(missive_storage::Engine::Fjall).await
                }
            )*
        }
    };
}

for_each_engine!(
    append_read_ack_and_delivery_receipts,
    unknown_recipient_is_refused,
    dedup_and_seq_survive_reopen,
    every_device_gets_its_own_copy_or_nobody_does,
    registration_names_and_invites,
    expiry_sweep_removes_only_old_items_and_dedup_keys,
    concurrent_writers_are_group_committed,
    a_store_refuses_the_other_engine,
    acked_items_stay_deleted_across_reopen,
    acks_across_a_restart_cover_old_and_new_items_once,
    seq_counters_reserve_ahead_and_a_reopen_goes_on_from_the_mark,
    mailbox_quotas_refuse_before_writing_and_free_up_on_ack,
    invites_expire_and_are_swept,
    a_message_makes_its_sender_count_the_recipient_as_a_contact,
    reads_stop_at_their_byte_budget,
    one_time_keys_are_claimed_once_then_the_fallback_serves,
    linked_devices_get_new_ids_and_removal_takes_everything,
    a_retraction_drops_only_the_senders_undelivered_copies,
    disappearing_copies_go_when_their_timer_runs_out,
);

async fn mailbox_quotas_refuse_before_writing_and_free_up_on_ack(engine: Engine) {
    let dir = tempfile::tempdir().unwrap();
    let mut cfg = config(engine);
    cfg.mailbox_max_items = 3;
    cfg.mailbox_max_bytes = 10_000;
    let store = Store::open(dir.path(), cfg, None).unwrap();
    with_users(&store, &["alice", "bob", "carol"]).await;
    let send = |n: u8, len: usize| {
        store.append_message(
            "alice",
            DeviceId(1),
            id(n.into()),
            "bob",
            to_device_1(vec![n; len]),
            Vec::new(),
            5,
        )
    };
    for n in 0..3 {
        assert!(matches!(
            send(n, 10).await.unwrap(),
            AppendOutcome::Stored { .. }
        ));
    }
    assert_eq!(send(3, 10).await.unwrap(), AppendOutcome::MailboxFull);
    let bob = MailboxId::new("bob", DeviceId(1));
    assert_eq!(
        store.mailbox_depth(&bob).unwrap(),
        3,
        "the refused item is not stored"
    );
    // A refused message leaves no dedup key: once there is room, the same id is stored.
    let items = store
        .read_mailbox(&bob, ServerSeq(0), 10, usize::MAX)
        .unwrap();
    store.ack(bob.clone(), items[1].0, 6).await.unwrap();
    assert!(matches!(
        send(3, 10).await.unwrap(),
        AppendOutcome::Stored { .. }
    ));
    // One sender's share of a mailbox: with two per sender, carol still gets through where
    // alice no longer does.
    drop(store);
    let dir = tempfile::tempdir().unwrap();
    let mut cfg = config(engine);
    cfg.mailbox_max_items_per_sender = 2;
    cfg.mailbox_max_bytes = 10_000;
    let store = Store::open(dir.path(), cfg, None).unwrap();
    with_users(&store, &["alice", "bob", "carol"]).await;
    let from = |who: &'static str, n: u64| {
        store.append_message(
            who,
            DeviceId(1),
            id(n),
            "bob",
            to_device_1(vec![1; 10]),
            Vec::new(),
            5,
        )
    };
    for n in 0..2 {
        assert!(matches!(
            from("alice", n).await.unwrap(),
            AppendOutcome::Stored { .. }
        ));
    }
    assert_eq!(from("alice", 2).await.unwrap(), AppendOutcome::MailboxFull);
    assert!(matches!(
        from("carol", 3).await.unwrap(),
        AppendOutcome::Stored { .. }
    ));
    // bob reads alice's first message: alice has room again.
    store.ack(bob.clone(), ServerSeq(1), 6).await.unwrap();
    assert!(matches!(
        from("alice", 2).await.unwrap(),
        AppendOutcome::Stored { .. }
    ));
    // Bytes count too: carol's mailbox takes no single item above its byte quota.
    let big = store
        .append_message(
            "alice",
            DeviceId(1),
            id(9),
            "carol",
            to_device_1(vec![0; 10_001]),
            Vec::new(),
            5,
        )
        .await
        .unwrap();
    assert_eq!(big, AppendOutcome::MailboxFull);
}

async fn invites_expire_and_are_swept(engine: Engine) {
    let dir = tempfile::tempdir().unwrap();
    let mut cfg = config(engine);
    cfg.invite_ttl = Duration::from_secs(60);
    let store = Store::open(dir.path(), cfg, None).unwrap();
    store.add_invite("old", 1_000).await.unwrap();
    store.add_invite("fresh", 100_000).await.unwrap();
    // At 100 s the first token is 99 s old: past its 60 s.
    let late = store
        .register(
            "al",
            DeviceId(1),
            [1; 32],
            Some("old".into()),
            true,
            100_000,
        )
        .await
        .unwrap();
    assert_eq!(late, RegisterOutcome::InviteInvalid);
    let swept = store.sweep(100_000).await.unwrap();
    assert_eq!(swept.invites, 1);
    let ok = store
        .register(
            "bo",
            DeviceId(1),
            [1; 32],
            Some("fresh".into()),
            true,
            100_000,
        )
        .await
        .unwrap();
    assert_eq!(ok, RegisterOutcome::Created);
}

async fn a_message_makes_its_sender_count_the_recipient_as_a_contact(engine: Engine) {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(dir.path(), config(engine), None).unwrap();
    with_users(&store, &["alice", "bob"]).await;
    assert!(!store.is_contact("alice", "bob").unwrap());
    store
        .append_message(
            "alice",
            DeviceId(1),
            id(1),
            "bob",
            to_device_1(vec![1]),
            Vec::new(),
            5,
        )
        .await
        .unwrap();
    assert!(store.is_contact("alice", "bob").unwrap());
    assert!(
        !store.is_contact("bob", "alice").unwrap(),
        "not the other way round"
    );
    store.shutdown().await;
    drop(store);
    let store = Store::open(dir.path(), config(engine), None).unwrap();
    assert!(store.is_contact("alice", "bob").unwrap(), "durable");
}

async fn reads_stop_at_their_byte_budget(engine: Engine) {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(dir.path(), config(engine), None).unwrap();
    with_users(&store, &["alice", "bob"]).await;
    for n in 0..5u8 {
        store
            .append_message(
                "alice",
                DeviceId(1),
                id(n.into()),
                "bob",
                to_device_1(vec![n; 1000]),
                Vec::new(),
                5,
            )
            .await
            .unwrap();
    }
    let bob = MailboxId::new("bob", DeviceId(1));
    // Envelopes of 1000 bytes: a 2500-byte budget stops after the third.
    let items = store.read_mailbox(&bob, ServerSeq(0), 10, 2500).unwrap();
    assert_eq!(items.len(), 3);
    // At least one item, however small the budget.
    assert_eq!(
        store.read_mailbox(&bob, ServerSeq(0), 10, 1).unwrap().len(),
        1
    );
}

async fn with_users(store: &Store, names: &[&str]) {
    for n in names {
        let r = store
            .register(n, DeviceId(1), [1; 32], None, false, 1)
            .await
            .unwrap();
        assert_eq!(r, RegisterOutcome::Created);
    }
}

async fn append_read_ack_and_delivery_receipts(engine: Engine) {
    let dir = tempfile::tempdir().unwrap();
    let events: Arc<Mutex<Vec<(MailboxId, ServerSeq, StoredItem)>>> = Default::default();
    let ev = events.clone();
    let store = Store::open(
        dir.path(),
        config(engine),
        Some(Arc::new(move |appended: &Appended| {
            if let Appended::Mailbox { mailbox, seq, item } = appended {
                ev.lock()
                    .unwrap()
                    .push((mailbox.clone(), *seq, item.clone()))
            }
        })),
    )
    .unwrap();
    with_users(&store, &["alice", "bob"]).await;
    for n in 0..5 {
        let r = store
            .append_message(
                "alice",
                DeviceId(1),
                id(n),
                "bob",
                to_device_1(vec![n as u8; 10]),
                Vec::new(),
                1000 + n,
            )
            .await
            .unwrap();
        assert!(matches!(r, AppendOutcome::Stored { devices: 1, .. }));
    }
    let bob = MailboxId::new("bob", DeviceId(1));
    let items = store
        .read_mailbox(&bob, ServerSeq(0), 100, usize::MAX)
        .unwrap();
    let seqs: Vec<u64> = items.iter().map(|(s, _)| s.0).collect();
    assert_eq!(seqs, vec![1, 2, 3, 4, 5]);
    assert_eq!(items[2].1.payload, Payload::Envelope(vec![2; 10]));
    assert_eq!(
        store
            .read_mailbox(&bob, ServerSeq(4), 100, usize::MAX)
            .unwrap()
            .len(),
        2
    );
    assert_eq!(
        store
            .read_mailbox(&bob, ServerSeq(1), 2, usize::MAX)
            .unwrap()
            .len(),
        2
    );
    // The listener saw every append, in order.
    assert_eq!(events.lock().unwrap().len(), 5);

    let out = store.ack(bob.clone(), ServerSeq(3), 2000).await.unwrap();
    assert_eq!((out.deleted, out.receipts), (3, 3));
    assert_eq!(store.mailbox_depth(&bob).unwrap(), 2);
    let alice = MailboxId::new("alice", DeviceId(1));
    let receipts = store
        .read_mailbox(&alice, ServerSeq(0), 100, usize::MAX)
        .unwrap();
    assert_eq!(receipts.len(), 3);
    for (i, (_, r)) in receipts.iter().enumerate() {
        assert_eq!(r.payload, Payload::Delivered);
        assert_eq!(r.client_msg_id, id(i as u64));
        assert_eq!(r.from, "bob");
    }
    // Acking the same range again changes nothing and makes no second receipt.
    let again = store.ack(bob.clone(), ServerSeq(3), 2001).await.unwrap();
    assert_eq!((again.deleted, again.receipts), (0, 0));
    // Acking receipts makes no receipts of receipts.
    let r = store.ack(alice.clone(), ServerSeq(10), 2002).await.unwrap();
    assert_eq!((r.deleted, r.receipts), (3, 0));
    store.shutdown().await;
}

async fn unknown_recipient_is_refused(engine: Engine) {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(dir.path(), config(engine), None).unwrap();
    with_users(&store, &["alice"]).await;
    let r = store
        .append_message(
            "alice",
            DeviceId(1),
            id(1),
            "nobody",
            to_device_1(vec![1]),
            Vec::new(),
            1,
        )
        .await
        .unwrap();
    assert_eq!(r, AppendOutcome::UnknownRecipient);
    // Once the name registers, and again when it links a second device, appends follow.
    with_users(&store, &["nobody"]).await;
    let r = store
        .append_message(
            "alice",
            DeviceId(1),
            id(2),
            "nobody",
            to_device_1(vec![1]),
            Vec::new(),
            1,
        )
        .await
        .unwrap();
    assert!(
        matches!(r, AppendOutcome::Stored { devices: 1, .. }),
        "{r:?}"
    );
    assert!(store
        .add_device("nobody", DeviceId(0), [2; 32])
        .await
        .unwrap());
    let r = store
        .append_message(
            "alice",
            DeviceId(1),
            id(3),
            "nobody",
            [0, 1]
                .map(|d| DeviceEnvelope {
                    device: DeviceId(d),
                    envelope: vec![1],
                })
                .to_vec(),
            Vec::new(),
            1,
        )
        .await
        .unwrap();
    assert!(
        matches!(r, AppendOutcome::Stored { devices: 2, .. }),
        "{r:?}"
    );
    assert_eq!(
        store
            .mailbox_depth(&MailboxId::new("nobody", DeviceId(0)))
            .unwrap(),
        1
    );
    store.shutdown().await;
}

/// Appends one message from alice to the drained mailbox `bob` and returns the seq it got.
async fn seq_of_one_append_to_empty(store: &Store, bob: &MailboxId, msg: ClientMsgId) -> ServerSeq {
    store
        .append_message(
            "alice",
            DeviceId(1),
            msg,
            "bob",
            to_device_1(vec![1]),
            Vec::new(),
            20,
        )
        .await
        .unwrap();
    let items = store
        .read_mailbox(bob, ServerSeq(0), 10, usize::MAX)
        .unwrap();
    assert_eq!(items.len(), 1, "the mailbox held more than the new item");
    items[0].0
}

async fn dedup_and_seq_survive_reopen(engine: Engine) {
    let dir = tempfile::tempdir().unwrap();
    let bob = MailboxId::new("bob", DeviceId(1));
    {
        let store = Store::open(dir.path(), config(engine), None).unwrap();
        with_users(&store, &["alice", "bob"]).await;
        for n in 0..3 {
            store
                .append_message(
                    "alice",
                    DeviceId(1),
                    id(n),
                    "bob",
                    to_device_1(vec![1]),
                    Vec::new(),
                    10,
                )
                .await
                .unwrap();
        }
        // Same id in the same batch window: stored once.
        let (a, b) = tokio::join!(
            store.append_message(
                "alice",
                DeviceId(1),
                id(9),
                "bob",
                to_device_1(vec![1]),
                Vec::new(),
                11
            ),
            store.append_message(
                "alice",
                DeviceId(1),
                id(9),
                "bob",
                to_device_1(vec![1]),
                Vec::new(),
                11
            )
        );
        let outcomes = [a.unwrap(), b.unwrap()];
        assert_eq!(
            outcomes
                .iter()
                .filter(|o| matches!(o, AppendOutcome::Stored { .. }))
                .count(),
            1
        );
        // Drain the whole mailbox so only the persisted counter remembers the seq.
        store
            .ack(bob.clone(), ServerSeq(u64::MAX), 12)
            .await
            .unwrap();
        store.shutdown().await;
    }
    let store = Store::open(dir.path(), config(engine), None).unwrap();
    let r = store
        .append_message(
            "alice",
            DeviceId(1),
            id(1),
            "bob",
            to_device_1(vec![1]),
            Vec::new(),
            20,
        )
        .await
        .unwrap();
    assert_eq!(r, AppendOutcome::Duplicate { server_ts_ms: 10 });
    // Seqs 1..=4 were used; the counter reserves seqs ahead, so after a reopen the next one
    // may come after a gap, but never at or below an earlier one.
    assert!(
        seq_of_one_append_to_empty(&store, &bob, id(100)).await > ServerSeq(4),
        "seq must keep increasing after a full drain"
    );
    store.shutdown().await;
}

async fn every_device_gets_its_own_copy_or_nobody_does(engine: Engine) {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(dir.path(), config(engine), None).unwrap();
    with_users(&store, &["alice", "bob"]).await;
    assert!(store.add_device("bob", DeviceId(2), [9; 32]).await.unwrap());
    assert!(!store.add_device("bob", DeviceId(2), [9; 32]).await.unwrap());
    assert!(!store
        .add_device("nobody", DeviceId(2), [9; 32])
        .await
        .unwrap());
    assert!(store
        .add_device("alice", DeviceId(3), [8; 32])
        .await
        .unwrap());
    assert_eq!(
        store.devices("bob").unwrap(),
        vec![DeviceId(1), DeviceId(2)]
    );
    let copies = |devices: &[u32], tag: u8| -> Vec<DeviceEnvelope> {
        devices
            .iter()
            .map(|d| DeviceEnvelope {
                device: DeviceId(*d),
                envelope: vec![tag, *d as u8],
            })
            .collect()
    };
    let send = |n: u64, to: &[u32], own: &[u32]| {
        store.append_message(
            "alice",
            DeviceId(1),
            id(n),
            "bob",
            copies(to, 7),
            copies(own, 8),
            1,
        )
    };
    // A stale list (bob's laptop missing, alice's own tablet missing), a duplicate, an extra
    // device: each is refused with the current lists and writes nothing.
    let stale = send(1, &[1], &[]).await.unwrap();
    assert_eq!(
        stale,
        AppendOutcome::DeviceMismatch(vec![
            UserDevices {
                user: "bob".into(),
                devices: vec![DeviceId(1), DeviceId(2)],
            },
            UserDevices {
                user: "alice".into(),
                devices: vec![DeviceId(1), DeviceId(3)],
            },
        ])
    );
    for (to, own) in [
        (&[1, 1][..], &[3][..]),
        (&[1, 2, 5][..], &[3][..]),
        (&[1, 2][..], &[1, 3][..]),
    ] {
        assert!(matches!(
            send(1, to, own).await.unwrap(),
            AppendOutcome::DeviceMismatch(_)
        ));
    }
    assert_eq!(
        store.total_queued().unwrap(),
        0,
        "a refused send wrote nothing"
    );
    // The same id, once the lists are right, is stored (the refusals kept no dedup key).
    let r = send(1, &[2, 1], &[3]).await.unwrap();
    assert!(matches!(r, AppendOutcome::Stored { devices: 3, .. }));
    for (user, device, want) in [
        ("bob", 1, vec![7, 1]),
        ("bob", 2, vec![7, 2]),
        ("alice", 3, vec![8, 3]),
    ] {
        let mb = MailboxId::new(user, DeviceId(device));
        let items = store
            .read_mailbox(&mb, ServerSeq(0), 10, usize::MAX)
            .unwrap();
        assert_eq!(items.len(), 1, "{mb}");
        assert_eq!(items[0].1.payload, Payload::Envelope(want), "{mb}");
    }
    let receipts_of = |device: u32| {
        store
            .read_mailbox(
                &MailboxId::new("alice", DeviceId(device)),
                ServerSeq(0),
                10,
                usize::MAX,
            )
            .unwrap()
            .into_iter()
            .filter(|(_, item)| item.payload == Payload::Delivered)
            .map(|(_, item)| item.from_device)
            .collect::<Vec<_>>()
    };
    // alice's tablet taking its copy is no delivery to bob: no receipt.
    let own = store
        .ack(MailboxId::new("alice", DeviceId(3)), ServerSeq(1), 2)
        .await
        .unwrap();
    assert_eq!((own.deleted, own.receipts), (1, 0));
    // Each of bob's devices makes its own receipt, naming that device, for each of alice's.
    store
        .ack(MailboxId::new("bob", DeviceId(2)), ServerSeq(1), 2)
        .await
        .unwrap();
    assert_eq!(receipts_of(1), vec![DeviceId(2)]);
    assert_eq!(receipts_of(3), vec![DeviceId(2)]);
    // A note to self reaches every own device through `envelopes`; `own` must stay empty.
    let to_self = |own: &[u32]| {
        store.append_message(
            "alice",
            DeviceId(1),
            id(9),
            "alice",
            copies(&[1, 3], 5),
            copies(own, 6),
            3,
        )
    };
    assert!(matches!(
        to_self(&[3]).await.unwrap(),
        AppendOutcome::DeviceMismatch(_)
    ));
    assert!(matches!(
        to_self(&[]).await.unwrap(),
        AppendOutcome::Stored { devices: 2, .. }
    ));
    store.shutdown().await;
}

async fn registration_names_and_invites(engine: Engine) {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(dir.path(), config(engine), None).unwrap();
    with_users(&store, &["alice"]).await;
    let again = store
        .register("alice", DeviceId(1), [2; 32], None, false, 2)
        .await
        .unwrap();
    assert_eq!(again, RegisterOutcome::Taken);
    assert_eq!(
        store.device_key("alice", DeviceId(1)).unwrap(),
        Some([1; 32])
    );
    let no_invite = store
        .register("carol", DeviceId(1), [3; 32], None, true, 3)
        .await
        .unwrap();
    assert_eq!(no_invite, RegisterOutcome::InviteInvalid);
    store.add_invite("tok-1", 3).await.unwrap();
    let ok = store
        .register("carol", DeviceId(1), [3; 32], Some("tok-1".into()), true, 4)
        .await
        .unwrap();
    assert_eq!(ok, RegisterOutcome::Created);
    let reused = store
        .register("dave", DeviceId(1), [4; 32], Some("tok-1".into()), true, 5)
        .await
        .unwrap();
    assert_eq!(
        reused,
        RegisterOutcome::InviteInvalid,
        "an invite is single-use"
    );
    assert!(store
        .set_visibility("carol", Visibility::Nobody)
        .await
        .unwrap());
    assert!(store.set_last_seen("carol", 77).await.unwrap());
    let rec = store.user("carol").unwrap().unwrap();
    assert_eq!((rec.visibility, rec.last_seen_ms), (Visibility::Nobody, 77));
    assert!(!store.set_last_seen("nobody", 1).await.unwrap());
    store.shutdown().await;
}

async fn expiry_sweep_removes_only_old_items_and_dedup_keys(engine: Engine) {
    let dir = tempfile::tempdir().unwrap();
    let config = StoreConfig {
        retention: Duration::from_millis(1000),
        ..config(engine)
    };
    let store = Store::open(dir.path(), config, None).unwrap();
    with_users(&store, &["alice", "bob", "carol"]).await;
    for n in 0..4 {
        store
            .append_message(
                "alice",
                DeviceId(1),
                id(n),
                "bob",
                to_device_1(vec![1]),
                Vec::new(),
                100 + n,
            )
            .await
            .unwrap();
    }
    store
        .append_message(
            "alice",
            DeviceId(1),
            id(10),
            "bob",
            to_device_1(vec![1]),
            Vec::new(),
            5000,
        )
        .await
        .unwrap();
    store
        .append_message(
            "alice",
            DeviceId(1),
            id(11),
            "carol",
            to_device_1(vec![1]),
            Vec::new(),
            100,
        )
        .await
        .unwrap();
    let out = store.sweep(5500).await.unwrap();
    assert_eq!(out.items, 5);
    assert_eq!(out.dedup_keys, 5);
    assert!(!out.more);
    let left = store
        .read_mailbox(
            &MailboxId::new("bob", DeviceId(1)),
            ServerSeq(0),
            10,
            usize::MAX,
        )
        .unwrap();
    assert_eq!(left.len(), 1);
    assert_eq!(left[0].1.client_msg_id, id(10));
    assert_eq!(
        store
            .mailbox_depth(&MailboxId::new("carol", DeviceId(1)))
            .unwrap(),
        0
    );
    store.shutdown().await;
}

async fn concurrent_writers_are_group_committed(engine: Engine) {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(dir.path(), config(engine), None).unwrap();
    with_users(&store, &["alice", "bob"]).await;
    let mut tasks = Vec::new();
    for w in 0..32u64 {
        let s = store.clone();
        tasks.push(tokio::spawn(async move {
            for n in 0..50u64 {
                s.append_message(
                    "alice",
                    DeviceId(1),
                    id(w * 1000 + n),
                    "bob",
                    to_device_1(vec![0; 100]),
                    Vec::new(),
                    1,
                )
                .await
                .unwrap();
            }
        }));
    }
    for t in tasks {
        t.await.unwrap();
    }
    let items = store
        .read_mailbox(
            &MailboxId::new("bob", DeviceId(1)),
            ServerSeq(0),
            10_000,
            usize::MAX,
        )
        .unwrap();
    assert_eq!(items.len(), 32 * 50);
    assert!(items.windows(2).all(|w| w[0].0 < w[1].0));
    let stats = store.stats();
    assert!(
        stats.mean_batch() > 1.0,
        "32 concurrent writers never shared a commit (mean batch {})",
        stats.mean_batch()
    );
    // Every commit (none failed) had its fsync time recorded; every batch its build time, and
    // a commit covers one batch or more (those applied within the commit delay).
    let commits = stats.commits.load(std::sync::atomic::Ordering::Relaxed);
    assert!(commits > 0);
    assert!(stats.build_histogram().iter().sum::<u64>() >= commits);
    assert_eq!(stats.flush_histogram().iter().sum::<u64>(), commits);
    // The seq counter holds a mark above every seq used (raised SEQ_RESERVATION at a time):
    // after a full drain and a reopen the next item comes after the last one, within that.
    let bob = MailboxId::new("bob", DeviceId(1));
    store
        .ack(bob.clone(), ServerSeq(u64::MAX), 2)
        .await
        .unwrap();
    store.shutdown().await;
    drop(store);
    let store = Store::open(dir.path(), config(engine), None).unwrap();
    let next = seq_of_one_append_to_empty(&store, &bob, id(999_999)).await;
    assert!(
        next > ServerSeq(32 * 50) && next.0 <= 32 * 50 + SEQ_RESERVATION,
        "{next:?}"
    );
    store.shutdown().await;
}

async fn a_store_refuses_the_other_engine(engine: Engine) {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(dir.path(), config(engine), None).unwrap();
    with_users(&store, &["alice"]).await;
    store.shutdown().await;
    drop(store);
    for other in Engine::ALL.into_iter().filter(|e| *e != engine) {
        let err = Store::open(dir.path(), config(other), None).unwrap_err();
        assert!(
            matches!(err, StorageError::EngineMismatch { found, wanted, .. } if found == engine && wanted == other),
            "{err}"
        );
        let msg = err.to_string();
        assert!(
            msg.contains(engine.name()) && msg.contains(other.name()),
            "{msg}"
        );
    }
    // The refusal changed nothing: the store still opens with its own engine.
    let store = Store::open(dir.path(), config(engine), None).unwrap();
    assert_eq!(store.user_count().unwrap(), 1);
    assert_eq!(store.engine(), engine);
    store.shutdown().await;
}

async fn acked_items_stay_deleted_across_reopen(engine: Engine) {
    let dir = tempfile::tempdir().unwrap();
    let bob = MailboxId::new("bob", DeviceId(1));
    // A 1 MiB memtable makes fjall seal and flush several times during the run, so reads and
    // deletes cross memtables and tables.
    let small = StoreConfig {
        memtable_bytes: 1024 * 1024,
        ..config(engine)
    };
    {
        let store = Store::open(dir.path(), small.clone(), None).unwrap();
        with_users(&store, &["alice", "bob"]).await;
        let mut tasks = Vec::new();
        for w in 0..16u64 {
            let s = store.clone();
            tasks.push(tokio::spawn(async move {
                for n in 0..250u64 {
                    let r = s
                        .append_message(
                            "alice",
                            DeviceId(1),
                            id(w * 1000 + n),
                            "bob",
                            to_device_1(vec![w as u8; 1000]),
                            Vec::new(),
                            1,
                        )
                        .await
                        .unwrap();
                    assert!(matches!(r, AppendOutcome::Stored { .. }));
                }
            }));
        }
        for t in tasks {
            t.await.unwrap();
        }
        assert_eq!(store.mailbox_depth(&bob).unwrap(), 4000);
        let out = store.ack(bob.clone(), ServerSeq(2500), 2).await.unwrap();
        assert_eq!(out.deleted, 2500);
        store.shutdown().await;
    }
    let store = Store::open(dir.path(), small, None).unwrap();
    let items = store
        .read_mailbox(&bob, ServerSeq(0), usize::MAX, usize::MAX)
        .unwrap();
    let seqs: Vec<u64> = items.iter().map(|(s, _)| s.0).collect();
    assert_eq!(seqs, (2501..=4000).collect::<Vec<_>>());
    assert_eq!(
        store.total_queued().unwrap(),
        1500 + 2500,
        "plus alice's receipts"
    );
    // Every message id is still remembered, acked or not.
    for w in [0u64, 15] {
        let r = store
            .append_message(
                "alice",
                DeviceId(1),
                id(w * 1000 + 3),
                "bob",
                to_device_1(vec![1]),
                Vec::new(),
                3,
            )
            .await
            .unwrap();
        assert_eq!(r, AppendOutcome::Duplicate { server_ts_ms: 1 });
    }
    store.shutdown().await;
}

/// Items stored before a restart are not in the committer's memory of unacked items; acks
/// that span them and newer ones still delete each once and make one receipt each.
async fn acks_across_a_restart_cover_old_and_new_items_once(engine: Engine) {
    let dir = tempfile::tempdir().unwrap();
    let bob = MailboxId::new("bob", DeviceId(1));
    let alice = MailboxId::new("alice", DeviceId(1));
    let send = |store: Store, n: u64| async move {
        let r = store
            .append_message(
                "alice",
                DeviceId(1),
                id(n),
                "bob",
                to_device_1(vec![n as u8]),
                Vec::new(),
                1,
            )
            .await
            .unwrap();
        assert!(matches!(r, AppendOutcome::Stored { .. }));
    };
    {
        let store = Store::open(dir.path(), config(engine), None).unwrap();
        with_users(&store, &["alice", "bob"]).await;
        for n in 1..=3 {
            send(store.clone(), n).await;
        }
        store.shutdown().await;
    }
    let store = Store::open(dir.path(), config(engine), None).unwrap();
    for n in 4..=5 {
        send(store.clone(), n).await;
    }
    // Seqs after the restart come from the counter's reserved mark: read them.
    let seqs = |store: &Store| -> Vec<ServerSeq> {
        let items = store
            .read_mailbox(&bob, ServerSeq(0), 100, usize::MAX)
            .unwrap();
        items.into_iter().map(|(seq, _)| seq).collect()
    };
    let s = seqs(&store);
    assert_eq!(s.len(), 5);
    assert!(s.windows(2).all(|w| w[0] < w[1]), "{s:?}");
    let acks = [
        (s[1], (2, 2)),
        (s[4], (3, 3)),
        (s[4], (0, 0)),
        (s[3], (0, 0)),
    ];
    for (up_to, want) in acks {
        let out = store.ack(bob.clone(), up_to, 2).await.unwrap();
        assert_eq!((out.deleted, out.receipts), want, "ack up to {up_to:?}");
    }
    send(store.clone(), 6).await;
    let last = seqs(&store)[0];
    assert!(last > s[4]);
    let out = store.ack(bob.clone(), last, 3).await.unwrap();
    assert_eq!((out.deleted, out.receipts), (1, 1));
    assert_eq!(store.mailbox_depth(&bob).unwrap(), 0);
    let receipts = store
        .read_mailbox(&alice, ServerSeq(0), 100, usize::MAX)
        .unwrap();
    let ids: Vec<ClientMsgId> = receipts.iter().map(|(_, r)| r.client_msg_id).collect();
    assert_eq!(ids, (1..=6).map(id).collect::<Vec<_>>());
    // Receipts are acked from the log too, and make no receipts of their own.
    let last_receipt = receipts.last().map(|(seq, _)| *seq).unwrap();
    let out = store.ack(alice.clone(), last_receipt, 4).await.unwrap();
    assert_eq!((out.deleted, out.receipts), (6, 0));
    store.shutdown().await;
}

/// The counter of a mailbox is raised `SEQ_RESERVATION` seqs at a time, in the batch that takes
/// the first seq past it: a reopen goes on from the mark, above every seq used, and exactly at
/// it when the last item used the last reserved seq.
async fn seq_counters_reserve_ahead_and_a_reopen_goes_on_from_the_mark(engine: Engine) {
    let dir = tempfile::tempdir().unwrap();
    let bob = MailboxId::new("bob", DeviceId(1));
    let r = SEQ_RESERVATION;
    // (items appended before the reopen, the seq the next one gets after it). Round 0 uses
    // seqs 1..=r, exactly the first reservation: no gap. The append after each reopen takes
    // the mark and reserves the next r (so round 1 opens at 2r+1, round 2 at 4r+1).
    let rounds = [(r, r + 1), (1, 3 * r + 1), (r - 1, 5 * r + 1)];
    let mut next_id = 0;
    let mut used = 0;
    for (round, (items, want)) in rounds.into_iter().enumerate() {
        let store = Store::open(dir.path(), config(engine), None).unwrap();
        if round == 0 {
            with_users(&store, &["alice", "bob"]).await;
        }
        for _ in 0..items {
            next_id += 1;
            store
                .append_message(
                    "alice",
                    DeviceId(1),
                    id(next_id),
                    "bob",
                    to_device_1(vec![1]),
                    Vec::new(),
                    1,
                )
                .await
                .unwrap();
        }
        let last = store
            .read_mailbox(&bob, ServerSeq(0), 100_000, usize::MAX)
            .unwrap();
        used += items;
        assert_eq!(last.len() as u64, used);
        store.shutdown().await;
        drop(store);
        let store = Store::open(dir.path(), config(engine), None).unwrap();
        next_id += 1;
        store
            .append_message(
                "alice",
                DeviceId(1),
                id(next_id),
                "bob",
                to_device_1(vec![1]),
                Vec::new(),
                1,
            )
            .await
            .unwrap();
        used += 1;
        let items = store
            .read_mailbox(&bob, ServerSeq(0), 100_000, usize::MAX)
            .unwrap();
        let seq = items.last().map(|(seq, _)| *seq).unwrap();
        assert_eq!(seq, ServerSeq(want), "round {round}");
        store.shutdown().await;
    }
}

fn signed(n: u8) -> SignedKey {
    SignedKey {
        key: [n; 32],
        signature: [n; 64],
    }
}

fn upload(user: &str, device: u32, identity: u8, keys: std::ops::Range<u8>) -> KeyUpload {
    KeyUpload {
        user: user.into(),
        device: DeviceId(device),
        identity: Some(IdentityKeys {
            curve25519: [identity; 32],
            ed25519: [identity; 32],
            signature: [identity; 64],
        }),
        one_time_keys: keys.map(signed).collect(),
        fallback_key: Some(signed(200)),
        max_held: 8,
    }
}

async fn one_time_keys_are_claimed_once_then_the_fallback_serves(engine: Engine) {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(dir.path(), config(engine), None).unwrap();
    with_users(&store, &["alice", "bob"]).await;
    assert!(store.add_device("bob", DeviceId(2), [9; 32]).await.unwrap());
    assert_eq!(
        store.upload_keys(upload("bob", 1, 7, 1..6)).await.unwrap(),
        UploadOutcome::Stored { one_time_keys: 5 }
    );
    // The same identity again (a retry) is fine, and keys already held are not counted twice.
    assert_eq!(
        store.upload_keys(upload("bob", 1, 7, 4..7)).await.unwrap(),
        UploadOutcome::Stored { one_time_keys: 6 }
    );
    assert_eq!(
        store.upload_keys(upload("bob", 1, 8, 0..0)).await.unwrap(),
        UploadOutcome::IdentityConflict,
        "a new identity is a new device"
    );
    assert_eq!(
        store
            .upload_keys(upload("bob", 1, 7, 10..13))
            .await
            .unwrap(),
        UploadOutcome::TooManyKeys { held: 6 }
    );
    assert_eq!(
        store.upload_keys(upload("bob", 5, 7, 0..1)).await.unwrap(),
        UploadOutcome::UnknownDevice
    );
    let status = store.key_status("bob", DeviceId(1)).unwrap();
    assert_eq!(
        status,
        KeyStatus {
            one_time_keys: 6,
            fallback_used: false,
            has_identity: true
        }
    );
    // Ten claimers at once for six keys: six distinct one-time keys, then the fallback.
    let claims: Vec<_> = (0..10)
        .map(|_| store.claim_keys("bob", ClaimFrom::OneTimeKeys))
        .collect();
    let mut handed = Vec::new();
    let mut fallbacks = 0;
    for claim in claims {
        let bundles = claim.await.unwrap();
        assert_eq!(bundles.len(), 2, "one bundle per device");
        let (phone, laptop) = (&bundles[0].bundle, &bundles[1].bundle);
        assert_eq!((phone.device, laptop.device), (DeviceId(1), DeviceId(2)));
        assert_eq!(phone.device_key, [1; 32]);
        assert_eq!(phone.identity.as_ref().map(|i| i.curve25519), Some([7; 32]));
        assert!(laptop.identity.is_none() && laptop.one_time_key.is_none());
        let key = phone.one_time_key.clone().expect("a key or the fallback");
        if phone.fallback {
            assert_eq!(key, signed(200));
            fallbacks += 1;
        } else {
            handed.push(key.key);
        }
    }
    let distinct: std::collections::HashSet<_> = handed.iter().collect();
    assert_eq!((handed.len(), distinct.len(), fallbacks), (6, 6, 4));
    // The claims were durable: after a reopen nothing comes back.
    store.shutdown().await;
    drop(store);
    let store = Store::open(dir.path(), config(engine), None).unwrap();
    let status = store.key_status("bob", DeviceId(1)).unwrap();
    assert_eq!((status.one_time_keys, status.fallback_used), (0, true));
    assert!(store
        .claim_keys("nobody", ClaimFrom::OneTimeKeys)
        .await
        .unwrap()
        .is_empty());
    // A new fallback key resets the flag.
    store
        .upload_keys(upload("bob", 1, 7, 20..21))
        .await
        .unwrap();
    let status = store.key_status("bob", DeviceId(1)).unwrap();
    assert_eq!((status.one_time_keys, status.fallback_used), (1, false));
    // A claimer past its budget gets the fallback key, and the one-time key stays.
    let bundles = store
        .claim_keys("bob", ClaimFrom::FallbackOnly)
        .await
        .unwrap();
    let phone = &bundles[0].bundle;
    assert!(phone.fallback, "{phone:?}");
    assert_eq!(phone.one_time_key, Some(signed(200)));
    assert_eq!(bundles[0].remaining, 1);
    let status = store.key_status("bob", DeviceId(1)).unwrap();
    assert_eq!((status.one_time_keys, status.fallback_used), (1, true));
    store.shutdown().await;
}

async fn linked_devices_get_new_ids_and_removal_takes_everything(engine: Engine) {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(dir.path(), config(engine), None).unwrap();
    with_users(&store, &["alice", "bob"]).await;
    assert!(store
        .create_link_code("bob", "CODE-1", 1_000)
        .await
        .unwrap());
    assert!(!store
        .create_link_code("nobody", "CODE-X", 1_000)
        .await
        .unwrap());
    // Wrong user, then the right one; a code links once.
    assert_eq!(
        store
            .link_device("alice", "CODE-1", [5; 32], 5, 2_000)
            .await
            .unwrap(),
        LinkOutcome::CodeInvalid
    );
    assert_eq!(
        store
            .link_device("bob", "CODE-1", [5; 32], 5, 2_000)
            .await
            .unwrap(),
        LinkOutcome::Linked(DeviceId(2))
    );
    assert_eq!(
        store
            .link_device("bob", "CODE-1", [6; 32], 5, 2_000)
            .await
            .unwrap(),
        LinkOutcome::CodeInvalid
    );
    // Expired (the default lifetime is five minutes), and the device limit.
    store.create_link_code("bob", "OLD", 1_000).await.unwrap();
    assert_eq!(
        store
            .link_device("bob", "OLD", [6; 32], 5, 400_000)
            .await
            .unwrap(),
        LinkOutcome::CodeInvalid
    );
    store.create_link_code("bob", "FULL", 1_000).await.unwrap();
    assert_eq!(
        store
            .link_device("bob", "FULL", [6; 32], 2, 2_000)
            .await
            .unwrap(),
        LinkOutcome::TooManyDevices
    );
    assert_eq!(store.device_key("bob", DeviceId(2)).unwrap(), Some([5; 32]));
    // The laptop has mail and keys; removing it takes both, and its id is never reused.
    store.upload_keys(upload("bob", 2, 7, 1..4)).await.unwrap();
    store
        .append_message(
            "alice",
            DeviceId(1),
            id(1),
            "bob",
            [1, 2]
                .map(|d| DeviceEnvelope {
                    device: DeviceId(d),
                    envelope: vec![d as u8],
                })
                .to_vec(),
            Vec::new(),
            5,
        )
        .await
        .unwrap();
    let laptop = MailboxId::new("bob", DeviceId(2));
    assert_eq!(store.mailbox_depth(&laptop).unwrap(), 1);
    assert_eq!(
        store.remove_device("bob", DeviceId(2)).await.unwrap(),
        Some(1)
    );
    assert_eq!(store.remove_device("bob", DeviceId(2)).await.unwrap(), None);
    assert_eq!(store.mailbox_depth(&laptop).unwrap(), 0);
    assert_eq!(store.device_key("bob", DeviceId(2)).unwrap(), None);
    assert_eq!(store.devices("bob").unwrap(), vec![DeviceId(1)]);
    let status = store.key_status("bob", DeviceId(2)).unwrap();
    assert_eq!((status.one_time_keys, status.has_identity), (0, false));
    // A send naming the removed device is a mismatch now.
    let stale = store
        .append_message(
            "alice",
            DeviceId(1),
            id(2),
            "bob",
            [1, 2]
                .map(|d| DeviceEnvelope {
                    device: DeviceId(d),
                    envelope: vec![d as u8],
                })
                .to_vec(),
            Vec::new(),
            6,
        )
        .await
        .unwrap();
    assert!(
        matches!(stale, AppendOutcome::DeviceMismatch(_)),
        "{stale:?}"
    );
    store.create_link_code("bob", "NEXT", 10_000).await.unwrap();
    assert_eq!(
        store
            .link_device("bob", "NEXT", [8; 32], 5, 10_000)
            .await
            .unwrap(),
        LinkOutcome::Linked(DeviceId(3)),
        "device 2 is never handed out again"
    );
    store.shutdown().await;
}

async fn a_retraction_drops_only_the_senders_undelivered_copies(engine: Engine) {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(dir.path(), config(engine), None).unwrap();
    with_users(&store, &["alice", "bob", "carol"]).await;
    for (from, n) in [("alice", 1), ("alice", 2), ("carol", 1)] {
        store
            .append_message(
                from,
                DeviceId(1),
                id(n),
                "bob",
                to_device_1(vec![n as u8]),
                Vec::new(),
                5,
            )
            .await
            .unwrap();
    }
    let bob = MailboxId::new("bob", DeviceId(1));
    // carol's message 1 has the same id as alice's: only the retracting sender's goes.
    assert_eq!(store.retract("alice", id(1), "bob").await.unwrap(), 1);
    assert_eq!(store.retract("alice", id(1), "bob").await.unwrap(), 0);
    assert_eq!(store.retract("alice", id(9), "bob").await.unwrap(), 0);
    let left: Vec<(String, ClientMsgId)> = store
        .read_mailbox(&bob, ServerSeq(0), 10, usize::MAX)
        .unwrap()
        .into_iter()
        .map(|(_, item)| (item.from, item.client_msg_id))
        .collect();
    assert_eq!(
        left,
        vec![("alice".to_string(), id(2)), ("carol".to_string(), id(1))]
    );
    // The retried original is still a duplicate: nothing comes back.
    let again = store
        .append_message(
            "alice",
            DeviceId(1),
            id(1),
            "bob",
            to_device_1(vec![1]),
            Vec::new(),
            6,
        )
        .await
        .unwrap();
    assert!(matches!(again, AppendOutcome::Duplicate { .. }));
    // Acks after a retraction still work and count right.
    let out = store.ack(bob.clone(), ServerSeq(10), 7).await.unwrap();
    assert_eq!(out.deleted, 2);
    assert_eq!(store.mailbox_depth(&bob).unwrap(), 0);
    store.shutdown().await;
}

async fn disappearing_copies_go_when_their_timer_runs_out(engine: Engine) {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(dir.path(), config(engine), None).unwrap();
    with_users(&store, &["alice", "bob"]).await;
    let bob = MailboxId::new("bob", DeviceId(1));
    for (n, secs) in [(1u64, 10u32), (2, 0), (3, 20)] {
        store
            .append_expiring(
                ("alice", DeviceId(1), id(n)),
                "bob",
                (to_device_1(vec![n as u8]), Vec::new()),
                secs,
                1_000,
            )
            .await
            .unwrap();
    }
    // Acked before its timer: nothing left to drop later.
    let out = store.expire(5_000).await.unwrap();
    assert_eq!(out.items, 0);
    let at_11s = store.expire(11_000).await.unwrap();
    assert_eq!(at_11s.items, 1, "message 1's ten seconds are over");
    let left: Vec<ClientMsgId> = store
        .read_mailbox(&bob, ServerSeq(0), 10, usize::MAX)
        .unwrap()
        .into_iter()
        .map(|(_, i)| i.client_msg_id)
        .collect();
    assert_eq!(left, vec![id(2), id(3)]);
    store.ack(bob.clone(), ServerSeq(10), 12_000).await.unwrap();
    assert_eq!(
        store.expire(30_000).await.unwrap().items,
        0,
        "acked already"
    );
    assert_eq!(store.mailbox_depth(&bob).unwrap(), 0);
    store.shutdown().await;
}
