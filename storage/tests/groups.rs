//! Groups in storage: membership rules, a group message stored once in the group's log and
//! read by every member device through its cursor, the item freed once every cursor passed
//! it, receipts counted per member, epochs, and invite tokens.

mod common;

use common::{config, id};
use missive_proto::{DeviceId, GroupChange, GroupId, Payload, ServerSeq};
use missive_storage::{
    Engine, GroupChangeRequest, GroupRefusal, GroupSendOutcome, Store, StoredItem,
};

async fn store_with(dir: &std::path::Path, engine: Engine, users: &[&str]) -> Store {
    let store = Store::open(dir, config(engine), None).unwrap();
    for u in users {
        store
            .register(u, DeviceId(1), [7; 32], None, false, 1)
            .await
            .unwrap();
    }
    store
}

/// What device 1 of `user` has left to read in its groups' logs, as (group, seq, item).
fn unread(store: &Store, user: &str) -> Vec<(GroupId, ServerSeq, StoredItem)> {
    let mut out = Vec::new();
    for p in store.group_positions(user, DeviceId(1)).unwrap() {
        let items = store
            .read_group_log(p.group, p.next, p.until, usize::MAX, usize::MAX)
            .unwrap();
        out.extend(items.into_iter().map(|(seq, item)| (p.group, seq, item)));
    }
    out
}

/// Device 1 of `user` acknowledges everything its groups' logs hold so far.
async fn read_all(store: &Store, user: &str) {
    for (group, seq, _) in unread(store, user) {
        store
            .ack_group((user, DeviceId(1)), group, seq)
            .await
            .unwrap();
    }
}

fn mailbox(store: &Store, user: &str) -> Vec<(ServerSeq, StoredItem)> {
    unread(store, user)
        .into_iter()
        .map(|(_, seq, item)| (seq, item))
        .collect()
}

fn group_bodies(items: &[(ServerSeq, StoredItem)]) -> Vec<Vec<u8>> {
    items
        .iter()
        .filter_map(|(_, i)| match &i.payload {
            Payload::Group(g) => Some(g.body.clone()),
            _ => None,
        })
        .collect()
}

fn changes(items: &[(ServerSeq, StoredItem)]) -> Vec<GroupChange> {
    items
        .iter()
        .filter_map(|(_, i)| match &i.payload {
            Payload::GroupEvent(n) => Some(n.change.clone()),
            _ => None,
        })
        .collect()
}

async fn add(
    store: &Store,
    actor: &str,
    group: GroupId,
    users: &[&str],
) -> Result<u64, GroupRefusal> {
    store
        .change_group(
            actor,
            group,
            GroupChangeRequest::Add(users.iter().map(|u| u.to_string()).collect()),
            1024,
            2,
        )
        .await
        .unwrap()
        .map(|i| i.epoch)
}

#[tokio::test]
async fn only_admins_change_membership_and_members_hear_of_it_in_order() {
    let dir = tempfile::tempdir().unwrap();
    let store = store_with(dir.path(), Engine::Sled, &["alice", "bob", "carol", "dave"]).await;
    let g = store.create_group("alice", "hikers", 1).await.unwrap();
    assert_eq!(g.epoch, 1);
    assert_eq!(
        add(&store, "alice", g.group, &["bob", "carol"]).await,
        Ok(2)
    );
    // bob is no admin yet.
    assert_eq!(
        add(&store, "bob", g.group, &["dave"]).await,
        Err(GroupRefusal::NotAdmin)
    );
    assert_eq!(
        add(&store, "dave", g.group, &["dave"]).await,
        Err(GroupRefusal::NotMember)
    );
    assert_eq!(
        add(&store, "alice", g.group, &["nobody"]).await,
        Err(GroupRefusal::UnknownUser("nobody".into()))
    );
    let promoted = store
        .change_group(
            "alice",
            g.group,
            GroupChangeRequest::Promote("bob".into()),
            1024,
            3,
        )
        .await
        .unwrap()
        .unwrap();
    assert!(promoted.members.iter().any(|m| m.user == "bob" && m.admin));
    assert_eq!(add(&store, "bob", g.group, &["dave"]).await, Ok(4));
    // alice and bob leave: carol, the longest-standing member left, becomes admin.
    for who in ["alice", "bob"] {
        store
            .change_group(who, g.group, GroupChangeRequest::Leave, 1024, 5)
            .await
            .unwrap()
            .unwrap();
    }
    let info = store.group_info(g.group, "carol").unwrap().unwrap();
    assert_eq!(info.members.len(), 2);
    assert!(info.members.iter().any(|m| m.user == "carol" && m.admin));
    assert_eq!(
        store.group_info(g.group, "alice").unwrap(),
        Err(GroupRefusal::NotMember)
    );
    assert_eq!(store.groups_of("carol").unwrap().len(), 1);
    assert!(store.groups_of("alice").unwrap().is_empty());
    // carol saw every change since she joined, in order; dave since he joined.
    assert_eq!(
        changes(&mailbox(&store, "carol")),
        vec![
            GroupChange::Added(vec!["bob".into(), "carol".into()]),
            GroupChange::Promoted(vec!["bob".into()]),
            GroupChange::Added(vec!["dave".into()]),
            GroupChange::Left,
            GroupChange::Left,
            GroupChange::Promoted(vec!["carol".into()]),
        ]
    );
    assert_eq!(changes(&mailbox(&store, "dave")).len(), 4);
}

#[tokio::test]
async fn a_group_message_is_stored_once_and_read_by_each_member_device() {
    for engine in Engine::ALL {
        let dir = tempfile::tempdir().unwrap();
        let names: Vec<String> = (0..257).map(|i| format!("u{i}")).collect();
        let refs: Vec<&str> = names.iter().map(String::as_str).collect();
        let store = store_with(dir.path(), engine, &refs).await;
        let g = store.create_group("u0", "big", 1).await.unwrap();
        let epoch = add(&store, "u0", g.group, &refs[1..]).await.unwrap();
        read_all(&store, "u0").await;
        let before = store.logical_bytes().unwrap();
        let body = vec![0xAB; 4096];
        let sent = store
            .group_send(
                ("u0", DeviceId(1), id(1)),
                g.group,
                epoch,
                body.clone(),
                0,
                3,
            )
            .await
            .unwrap();
        assert_eq!(
            sent,
            GroupSendOutcome::Stored {
                server_ts_ms: 3,
                seq: 3,
                of: 256
            }
        );
        let grown = store.logical_bytes().unwrap().saturating_sub(before);
        // 256 copies would be over 1 MiB; one item in the log (and its receipt record) is
        // a small fraction of that.
        assert!(
            grown < 256 * 4096 / 4,
            "{engine:?}: one group message grew the store by {grown} bytes"
        );
        assert!(
            grown > 4096,
            "{engine:?}: the body is not in the store ({grown} bytes)"
        );
        for name in ["u1", "u128", "u256"] {
            assert_eq!(group_bodies(&mailbox(&store, name)), vec![body.clone()]);
        }
        // The sending device reads it too (its session skips it and acknowledges past it).
        assert_eq!(group_bodies(&mailbox(&store, "u0")), vec![body.clone()]);
        store.shutdown().await;
    }
}

#[tokio::test]
async fn acks_count_members_and_the_sweep_frees_what_every_cursor_passed() {
    let dir = tempfile::tempdir().unwrap();
    let store = store_with(dir.path(), Engine::Fjall, &["alice", "bob", "carol"]).await;
    let g = store.create_group("alice", "trio", 1).await.unwrap();
    let epoch = add(&store, "alice", g.group, &["bob", "carol"])
        .await
        .unwrap();
    // A stale epoch and a non-member are refused; nothing is stored.
    let stale = store
        .group_send(
            ("alice", DeviceId(1), id(1)),
            g.group,
            epoch - 1,
            vec![1],
            0,
            3,
        )
        .await
        .unwrap();
    assert_eq!(
        stale,
        GroupSendOutcome::Refused(GroupRefusal::Changed { epoch })
    );
    store
        .register("mallory", DeviceId(1), [7; 32], None, false, 1)
        .await
        .unwrap();
    let outsider = store
        .group_send(
            ("mallory", DeviceId(1), id(1)),
            g.group,
            epoch,
            vec![1],
            0,
            3,
        )
        .await
        .unwrap();
    assert_eq!(outsider, GroupSendOutcome::Refused(GroupRefusal::NotMember));
    read_all(&store, "alice").await;
    store
        .group_send(
            ("alice", DeviceId(1), id(1)),
            g.group,
            epoch,
            vec![9; 10],
            0,
            3,
        )
        .await
        .unwrap();
    // A retry is stored once.
    let again = store
        .group_send(
            ("alice", DeviceId(1), id(1)),
            g.group,
            epoch,
            vec![9; 10],
            0,
            4,
        )
        .await
        .unwrap();
    assert_eq!(again, GroupSendOutcome::Duplicate { server_ts_ms: 3 });
    let receipts = |s: &Store| s.group_receipts(g.group, "alice", &[id(1)]).unwrap();
    assert_eq!(
        (receipts(&store)[0].delivered, receipts(&store)[0].of),
        (0, 2)
    );
    let bob = mailbox(&store, "bob");
    let last = bob.last().unwrap().0;
    let told = store
        .ack_group(("bob", DeviceId(1)), g.group, last)
        .await
        .unwrap();
    assert_eq!(told.len(), 1);
    assert_eq!(told[0].0, "alice");
    assert_eq!(told[0].1.delivered, 1);
    // An ack again, or below the cursor, tells nobody anything.
    assert!(store
        .ack_group(("bob", DeviceId(1)), g.group, last)
        .await
        .unwrap()
        .is_empty());
    let read = store
        .mark_group_read("bob", g.group, "alice", id(1))
        .await
        .unwrap()
        .unwrap();
    assert_eq!((read.delivered, read.read, read.of), (1, 1, 2));
    // Read twice counts once.
    assert_eq!(
        store
            .mark_group_read("bob", g.group, "alice", id(1))
            .await
            .unwrap(),
        None
    );
    // carol has not read it: the sweep keeps it for her.
    store.sweep(7).await.unwrap();
    assert_eq!(group_bodies(&mailbox(&store, "carol")), vec![vec![9; 10]]);
    let last = mailbox(&store, "carol").last().unwrap().0;
    store
        .ack_group(("carol", DeviceId(1)), g.group, last)
        .await
        .unwrap();
    assert_eq!(
        (receipts(&store)[0].delivered, receipts(&store)[0].read),
        (2, 1)
    );
    // alice's session skips her own message and acknowledges past it. Then every cursor
    // passed it: the sweep drops it from the log (a device that would read from the start
    // finds nothing left).
    read_all(&store, "alice").await;
    store.sweep(8).await.unwrap();
    assert!(store
        .read_group_log(g.group, ServerSeq(1), ServerSeq(u64::MAX), 100, usize::MAX)
        .unwrap()
        .is_empty());
    store.shutdown().await;
    drop(store);
    // After a reopen the counts are still there.
    let store = Store::open(dir.path(), config(Engine::Fjall), None).unwrap();
    assert_eq!(receipts(&store)[0].delivered, 2);
}

#[tokio::test]
async fn a_revoked_or_expired_invite_joins_nobody() {
    let dir = tempfile::tempdir().unwrap();
    let store = store_with(dir.path(), Engine::Sled, &["alice", "bob", "carol"]).await;
    let g = store.create_group("alice", "club", 1).await.unwrap();
    store
        .create_group_invite("alice", g.group, "tok-1", 0)
        .await
        .unwrap()
        .unwrap();
    store
        .create_group_invite("alice", g.group, "tok-2", 10)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(
        store
            .create_group_invite("bob", g.group, "tok-3", 0)
            .await
            .unwrap(),
        Err(GroupRefusal::NotMember)
    );
    let joined = store
        .join_group("bob", "tok-1", 1024, 5)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(joined.members.len(), 2);
    store
        .revoke_group_invite("alice", g.group, "tok-1")
        .await
        .unwrap()
        .unwrap();
    assert_eq!(
        store.join_group("carol", "tok-1", 1024, 6).await.unwrap(),
        Err(GroupRefusal::InviteInvalid)
    );
    assert_eq!(
        store.join_group("carol", "tok-2", 1024, 11).await.unwrap(),
        Err(GroupRefusal::InviteInvalid),
        "expired"
    );
    assert_eq!(
        store.join_group("carol", "tok-2", 2, 9).await.unwrap(),
        Err(GroupRefusal::Full)
    );
}

async fn send(store: &Store, from: &str, group: GroupId, epoch: u64, n: u8) {
    let sent = store
        .group_send(
            (from, DeviceId(1), id(n.into())),
            group,
            epoch,
            vec![n; 8],
            0,
            10,
        )
        .await
        .unwrap();
    assert!(matches!(sent, GroupSendOutcome::Stored { .. }), "{sent:?}");
}

#[tokio::test]
async fn each_reader_gets_its_span_of_the_log_and_a_drained_removal_goes() {
    let dir = tempfile::tempdir().unwrap();
    let store = store_with(dir.path(), Engine::Fjall, &["alice", "bob", "carol"]).await;
    let g = store.create_group("alice", "span", 1).await.unwrap();
    let epoch = add(&store, "alice", g.group, &["bob"]).await.unwrap();
    send(&store, "alice", g.group, epoch, 1).await;
    // carol joins after message 1 and reads from her addition on.
    let epoch = add(&store, "alice", g.group, &["carol"]).await.unwrap();
    send(&store, "alice", g.group, epoch, 2).await;
    assert_eq!(group_bodies(&mailbox(&store, "carol")), vec![vec![2; 8]]);
    // bob is removed: he reads up to his removal and nothing after.
    let removed = store
        .change_group(
            "alice",
            g.group,
            GroupChangeRequest::Remove(vec!["bob".into()]),
            1024,
            11,
        )
        .await
        .unwrap()
        .unwrap();
    send(&store, "alice", g.group, removed.epoch, 3).await;
    let bob = mailbox(&store, "bob");
    assert_eq!(
        group_bodies(&bob),
        vec![vec![1; 8], vec![2; 8]],
        "bob gets nothing sent after his removal"
    );
    assert_eq!(
        changes(&bob).last(),
        Some(&GroupChange::Removed(vec!["bob".into()]))
    );
    // A device linked to carol now starts at the log's end: nothing from before.
    assert!(store
        .add_device("carol", DeviceId(2), [8; 32])
        .await
        .unwrap());
    assert!(store
        .group_positions("carol", DeviceId(2))
        .unwrap()
        .iter()
        .all(|p| p.next == p.head));
    // Once bob read his removal, his span and cursors go: the group is gone for him.
    read_all(&store, "bob").await;
    assert!(store
        .group_positions("bob", DeviceId(1))
        .unwrap()
        .is_empty());
    assert!(store.groups_of("bob").unwrap().is_empty());
}
