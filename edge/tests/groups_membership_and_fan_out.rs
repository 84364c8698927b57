//! Groups on the real edge, frame by frame: only admins change membership, a revoked invite
//! is refused, non-members and stale epochs are refused with typed errors, a group message
//! reaches every member in the same order, receipts are aggregated for the sender, a removed
//! member gets nothing sent after its removal, a 50-member group with most members
//! offline loses nothing across a SIGKILL, and acknowledged items do not come again.

mod common;

use common::{test_key, Edge, Raw, Received};
use missive_proto::{
    ClientMsgId, DeviceId, ErrorCode, Frame, GroupAnswerKind, GroupChange, GroupId, GroupInfo,
    GroupOp, GroupRequest, GroupSend, Payload,
};
use std::time::Duration;

fn identity(name: &str) -> missive_client::Identity {
    missive_client::Identity {
        user: name.into(),
        device: DeviceId(1),
        signing_key: test_key(name),
        e2ee: Default::default(),
    }
}

async fn user(edge: &Edge, name: &str) -> Raw {
    let mut r = Raw::connect(edge, false).await;
    r.register(name).await;
    r
}

async fn online(edge: &Edge, name: &str) -> Raw {
    let mut r = Raw::connect(edge, false).await;
    r.login(&identity(name)).await;
    r
}

/// Sends a group request and returns its answer (a `GroupAnswer` kind, or the refusal's code).
async fn ask(raw: &mut Raw, request_id: u32, op: GroupOp) -> Result<GroupAnswerKind, ErrorCode> {
    raw.send(GroupRequest { request_id, op }.into()).await;
    loop {
        match raw.recv().await {
            Some(Frame::GroupAnswer(a)) if a.request_id == request_id => return Ok(a.answer),
            Some(Frame::RequestRefused(r)) if r.request_id == request_id => {
                return Err(ErrorCode::from_u16(r.code).expect("known code"))
            }
            Some(_) => {}
            None => panic!("closed while waiting for a group answer"),
        }
    }
}

fn info(a: Result<GroupAnswerKind, ErrorCode>) -> GroupInfo {
    match a {
        Ok(GroupAnswerKind::Info(i)) => i,
        other => panic!("expected group info, got {other:?}"),
    }
}

fn msg_id(n: u32) -> ClientMsgId {
    let mut b = [0u8; 16];
    b[..4].copy_from_slice(&n.to_be_bytes());
    ClientMsgId(b)
}

/// Sends a group message; the `Sent` or the refusal's code.
async fn group_send(raw: &mut Raw, group: GroupId, epoch: u64, n: u32) -> Result<(), ErrorCode> {
    let id = msg_id(n);
    raw.send(
        GroupSend {
            client_msg_id: id,
            group,
            epoch,
            body: format!("ciphertext {n}").into_bytes(),
            expires_in_secs: 0,
        }
        .into(),
    )
    .await;
    loop {
        match raw.recv().await {
            Some(Frame::Sent(s)) if s.client_msg_id == id => return Ok(()),
            Some(Frame::Rejected(r)) if r.client_msg_id == id => {
                return Err(ErrorCode::from_u16(r.code).expect("known code"))
            }
            Some(_) => {}
            None => panic!("closed while waiting for Sent"),
        }
    }
}

/// Group messages and changes delivered to `raw` until nothing more comes for `quiet`,
/// acknowledged as they come: (group bodies, changes).
async fn drain(raw: &mut Raw, quiet: Duration) -> (Vec<Vec<u8>>, Vec<GroupChange>) {
    let (mut bodies, mut changes) = (Vec::new(), Vec::new());
    loop {
        match raw.recv_within(quiet).await {
            Received::Frame(Frame::GroupDeliver(g)) => {
                let (group, d) = (g.group, g.deliver);
                match d.payload {
                    Payload::Group(g) => bodies.push(g.body),
                    Payload::GroupEvent(e) => changes.push(e.change),
                    _ => {}
                }
                raw.send(
                    missive_proto::AckGroup {
                        group,
                        up_to: d.seq,
                    }
                    .into(),
                )
                .await;
            }
            Received::Frame(_) => {}
            Received::Silence => return (bodies, changes),
            Received::Closed => panic!("closed while draining"),
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn membership_rules_fan_out_and_aggregated_receipts() {
    let dir = tempfile::tempdir().unwrap();
    let edge = Edge::start_fresh(dir.path(), &[]);
    let mut alice = user(&edge, "alice").await;
    let mut bob = user(&edge, "bob").await;
    let mut carol = user(&edge, "carol").await;
    let mut mallory = user(&edge, "mallory").await;

    let g = info(
        ask(
            &mut alice,
            1,
            GroupOp::Create {
                name: "hikers".into(),
            },
        )
        .await,
    );
    let add = |users: &[&str]| GroupOp::Add {
        group: g.group,
        users: users.iter().map(|u| u.to_string()).collect(),
    };
    let g = info(ask(&mut alice, 2, add(&["bob", "carol"])).await);
    assert_eq!(g.members.len(), 3);
    // Only admins change membership.
    assert_eq!(
        ask(&mut bob, 3, add(&["mallory"])).await,
        Err(ErrorCode::NotGroupAdmin)
    );
    assert_eq!(
        ask(&mut mallory, 4, GroupOp::Info { group: g.group }).await,
        Err(ErrorCode::NotGroupMember)
    );
    assert_eq!(
        ask(
            &mut alice,
            5,
            GroupOp::Info {
                group: GroupId(999)
            }
        )
        .await,
        Err(ErrorCode::UnknownGroup)
    );
    let promoted = info(
        ask(
            &mut alice,
            6,
            GroupOp::Promote {
                group: g.group,
                user: "bob".into(),
            },
        )
        .await,
    );
    assert!(promoted.members.iter().any(|m| m.user == "bob" && m.admin));
    // A revoked invite token is refused.
    let Ok(GroupAnswerKind::Invite { token, .. }) = ask(
        &mut bob,
        7,
        GroupOp::CreateInvite {
            group: g.group,
            expires_in_secs: 3600,
        },
    )
    .await
    else {
        panic!("no invite")
    };
    assert_eq!(
        ask(
            &mut alice,
            8,
            GroupOp::Revoke {
                group: g.group,
                token: token.clone()
            }
        )
        .await,
        Ok(GroupAnswerKind::Revoked)
    );
    assert_eq!(
        ask(&mut mallory, 9, GroupOp::Join { token }).await,
        Err(ErrorCode::GroupInviteInvalid)
    );

    // A non-member's send and a stale epoch are refused; nothing is stored.
    assert_eq!(
        group_send(&mut mallory, g.group, promoted.epoch, 1).await,
        Err(ErrorCode::NotGroupMember)
    );
    assert_eq!(
        group_send(&mut alice, g.group, promoted.epoch - 1, 2).await,
        Err(ErrorCode::GroupChanged)
    );

    // Three messages from two senders: every member sees the same order. (bob sends first:
    // waiting for his `Sent`, this test's helper skips what else arrives.)
    group_send(&mut bob, g.group, promoted.epoch, 11)
        .await
        .unwrap();
    group_send(&mut alice, g.group, promoted.epoch, 10)
        .await
        .unwrap();
    group_send(&mut alice, g.group, promoted.epoch, 12)
        .await
        .unwrap();
    let quiet = Duration::from_millis(700);
    let (carol_got, carol_changes) = drain(&mut carol, quiet).await;
    let expected: Vec<Vec<u8>> = [11, 10, 12]
        .iter()
        .map(|n| format!("ciphertext {n}").into_bytes())
        .collect();
    assert_eq!(carol_got, expected);
    assert_eq!(
        carol_changes,
        vec![
            GroupChange::Added(vec!["bob".into(), "carol".into()]),
            GroupChange::Promoted(vec!["bob".into()]),
        ]
    );
    let (bob_got, _) = drain(&mut bob, quiet).await;
    assert_eq!(bob_got, expected[1..].to_vec(), "all but his own (11)");

    // alice heard her messages' counts grow live, and can ask for them.
    carol
        .send(
            missive_proto::GroupRead {
                group: g.group,
                from: "alice".into(),
                client_msg_id: msg_id(10),
            }
            .into(),
        )
        .await;
    let mut live = Vec::new();
    while let Received::Frame(f) = alice.recv_within(quiet).await {
        if let Frame::GroupReceipt(r) = f {
            live.push(r);
        }
    }
    let last_of_10 = live
        .iter()
        .rfind(|r| r.client_msg_id == msg_id(10))
        .expect("live receipts of message 10");
    assert_eq!(
        (last_of_10.delivered, last_of_10.read, last_of_10.of),
        (2, 1, 2)
    );
    let Ok(GroupAnswerKind::Receipts(r)) = ask(
        &mut alice,
        10,
        GroupOp::Receipts {
            group: g.group,
            ids: vec![msg_id(10), msg_id(12)],
        },
    )
    .await
    else {
        panic!("no receipts")
    };
    assert_eq!(
        r.iter()
            .map(|r| (r.delivered, r.read, r.of))
            .collect::<Vec<_>>(),
        vec![(2, 1, 2), (2, 0, 2)]
    );

    // carol is removed: she hears of it, and of nothing sent after.
    let after = info(
        ask(
            &mut alice,
            11,
            GroupOp::Remove {
                group: g.group,
                users: vec!["carol".into()],
            },
        )
        .await,
    );
    group_send(&mut alice, g.group, after.epoch, 13)
        .await
        .unwrap();
    let (carol_after, carol_told) = drain(&mut carol, quiet).await;
    assert!(
        carol_after.is_empty(),
        "carol got {carol_after:?} after her removal"
    );
    assert_eq!(carol_told, vec![GroupChange::Removed(vec!["carol".into()])]);
    assert_eq!(
        group_send(&mut carol, g.group, after.epoch, 14).await,
        Err(ErrorCode::NotGroupMember)
    );
    let (bob_after, _) = drain(&mut bob, quiet).await;
    assert_eq!(bob_after, vec![b"ciphertext 13".to_vec()]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_50_member_group_loses_nothing_across_a_sigkill() {
    const MEMBERS: usize = 50;
    const MESSAGES: u32 = 20;
    let dir = tempfile::tempdir().unwrap();
    let mut edge = Edge::start_fresh(dir.path(), &[]);
    let names: Vec<String> = (0..MEMBERS).map(|i| format!("m{i:02}")).collect();
    let mut conns = Vec::new();
    for n in &names {
        conns.push(user(&edge, n).await);
    }
    let mut owner = conns.remove(0);
    let g = info(
        ask(
            &mut owner,
            1,
            GroupOp::Create {
                name: "fifty".into(),
            },
        )
        .await,
    );
    let g = info(
        ask(
            &mut owner,
            2,
            GroupOp::Add {
                group: g.group,
                users: names[1..].to_vec(),
            },
        )
        .await,
    );
    assert_eq!(g.members.len(), MEMBERS);
    // Most members go offline; five stay.
    let mut live: Vec<(String, Raw)> = names[1..6].iter().cloned().zip(conns.drain(..5)).collect();
    drop(conns);
    for n in 0..MESSAGES {
        group_send(&mut owner, g.group, g.epoch, n).await.unwrap();
    }
    // Every message was answered `Sent`: it is on disk. Kill the edge without warning.
    edge.kill9();
    drop(live.drain(..));
    drop(owner);
    edge.restart();
    let expected: Vec<Vec<u8>> = (0..MESSAGES)
        .map(|n| format!("ciphertext {n}").into_bytes())
        .collect();
    for name in &names[1..] {
        let mut r = online(&edge, name).await;
        let (bodies, changes) = drain(&mut r, Duration::from_millis(400)).await;
        assert_eq!(bodies, expected, "{name} got each message once, in order");
        assert_eq!(changes.len(), 1, "{name}: the Added event");
    }
}

/// The edge writes a device's group cursor at most every 100 ms; what a device acknowledged
/// must still not come again, whether it said `Bye` or its connection just went away.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn acknowledged_group_items_do_not_come_again_after_a_bye_or_a_lost_connection() {
    let dir = tempfile::tempdir().unwrap();
    let edge = Edge::start_fresh(dir.path(), &[]);
    let mut alice = user(&edge, "alice").await;
    drop(user(&edge, "bob").await);
    let g = info(ask(&mut alice, 1, GroupOp::Create { name: "g".into() }).await);
    let g = info(
        ask(
            &mut alice,
            2,
            GroupOp::Add {
                group: g.group,
                users: vec!["bob".into()],
            },
        )
        .await,
    );
    let quiet = Duration::from_millis(400);
    let body = |n: u32| format!("ciphertext {n}").into_bytes();
    let mut next = 0;
    for round in ["lost connection", "bye"] {
        let mut bob = online(&edge, "bob").await;
        drain(&mut bob, quiet).await;
        // A burst of messages, each acknowledged as it comes: most of those acks fall within
        // the pacing interval of the one before.
        let sent: Vec<u32> = (next..next + 8).collect();
        next += 8;
        for &n in &sent {
            group_send(&mut alice, g.group, g.epoch, n).await.unwrap();
        }
        // Taken and acknowledged one by one, and the connection ends right after the last:
        // no quiet spell in which the edge's pacing timer would write the cursor.
        let mut got = Vec::new();
        while got.len() < sent.len() {
            match bob.recv().await {
                Some(Frame::GroupDeliver(d)) => {
                    if let Payload::Group(m) = d.deliver.payload {
                        got.push(m.body);
                    }
                    let ack = missive_proto::AckGroup {
                        group: d.group,
                        up_to: d.deliver.seq,
                    };
                    bob.send(ack.into()).await;
                }
                Some(_) => {}
                None => panic!("closed while receiving"),
            }
        }
        assert_eq!(got, sent.iter().map(|&n| body(n)).collect::<Vec<_>>());
        // A request answered after the acks: the edge has taken them (a connection dropped
        // at once would lose them in the transport).
        info(ask(&mut bob, 3, GroupOp::Info { group: g.group }).await);
        if round == "bye" {
            bob.send(missive_proto::Bye {}.into()).await;
            loop {
                match bob.recv().await {
                    Some(Frame::Bye(_)) | None => break,
                    Some(_) => {}
                }
            }
        } else {
            drop(bob);
        }
        // The connection's last writes land in a moment; nothing may come again after.
        tokio::time::sleep(Duration::from_millis(300)).await;
        let mut again = online(&edge, "bob").await;
        let (repeated, _) = drain(&mut again, quiet).await;
        let repeated: Vec<_> = repeated
            .iter()
            .map(|b| String::from_utf8_lossy(b))
            .collect();
        assert!(repeated.is_empty(), "{round}: came again: {repeated:?}");
    }
}
