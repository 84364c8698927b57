//! Group chat through whole session machines: several in-memory devices and a small
//! in-memory server that stores, routes and answers frames as the edge does (key claims,
//! device lists, group membership and epochs, mailboxes in order), on a virtual clock.

use super::*;
use crate::content::GroupKey;
use crate::e2ee::megolm::GroupSessions;
use crate::e2ee::RotationPolicy;
use crate::group::body::GroupBody;
use missive_proto::{
    DeviceBundle, GroupAnswer, GroupAnswerKind, GroupChange, GroupInfo, GroupMember, GroupMessage,
    GroupNotice, Rejected, RequestRefused, Sent, UserDevices,
};
use std::collections::BTreeMap;

fn login_key(user: &str, device: DeviceId) -> ed25519_dalek::SigningKey {
    let mut seed = [device.0 as u8; 32];
    let n = user.len().min(31);
    seed[1..1 + n].copy_from_slice(&user.as_bytes()[..n]);
    ed25519_dalek::SigningKey::from_bytes(&seed)
}

/// One device: its session machine, its E2EE state and what it told its app.
struct Dev {
    user: String,
    device: DeviceId,
    s: Session,
    store: E2eeStore,
    events: Vec<Event>,
    mailbox: VecDeque<Deliver>,
    /// Outcomes of this device's sends.
    done: Vec<(ClientMsgId, Result<SendReceipt, ClientError>)>,
}

/// A group on the server: name, epoch, members (longest-standing first) with admin flags.
struct ServerGroup {
    name: String,
    epoch: u64,
    members: Vec<(String, bool)>,
}

/// The devices and the server between them.
struct Net {
    now: Instant,
    policy: RotationPolicy,
    devs: Vec<Dev>,
    groups: BTreeMap<GroupId, ServerGroup>,
    next_group: u64,
    seq: u64,
    /// Every `Send` and `GroupSend` the server stored, in order: (sender, frame).
    stored: Vec<(String, Frame)>,
}

impl Net {
    fn new(policy: RotationPolicy) -> Self {
        Self {
            now: Instant::now(),
            policy,
            devs: Vec::new(),
            groups: BTreeMap::new(),
            next_group: 1,
            seq: 0,
            stored: Vec::new(),
        }
    }

    fn add_device(&mut self, user: &str, device: u32, store: E2eeStore) {
        let device = DeviceId(device);
        let key = login_key(user, device);
        let mut s = Session::new(
            true,
            SeenSet::new(1000),
            ReceiptIds::new(&key),
            Arc::default(),
            Me {
                user: user.into(),
                device,
                login_key: key,
                e2ee: store.clone(),
            },
            self.now,
        );
        s.configure_groups(
            self.policy,
            WallClock {
                at: self.now,
                unix_ms: 1_700_000_000_000,
            },
        );
        s.connected(self.now, 1 << 20);
        self.devs.push(Dev {
            user: user.into(),
            device,
            s,
            store,
            events: Vec::new(),
            mailbox: VecDeque::new(),
            done: Vec::new(),
        });
    }

    fn with(users: &[&str]) -> Self {
        let mut net = Self::new(RotationPolicy::default());
        for u in users {
            net.add_device(u, 1, E2eeStore::in_memory());
        }
        net.run();
        net
    }

    fn dev(&mut self, user: &str) -> &mut Dev {
        self.devs
            .iter_mut()
            .find(|d| d.user == user)
            .expect("a device of this user")
    }

    fn devices_of(&self, user: &str) -> Vec<DeviceId> {
        self.devs
            .iter()
            .filter(|d| d.user == user)
            .map(|d| d.device)
            .collect()
    }

    fn push(
        &mut self,
        to: &str,
        device: DeviceId,
        from: (&str, DeviceId),
        id: ClientMsgId,
        payload: Payload,
    ) {
        self.seq += 1;
        let seq = ServerSeq(self.seq);
        let d = self
            .devs
            .iter_mut()
            .find(|d| d.user == to && d.device == device)
            .expect("a device");
        d.mailbox.push_back(Deliver {
            seq,
            from: from.0.into(),
            from_device: from.1,
            client_msg_id: id,
            server_ts_ms: 1000 + seq.0,
            payload,
        });
    }

    /// The server applies a membership change `actor` made and tells every device of the
    /// members before and after it.
    fn change(&mut self, group: GroupId, actor: &str, change: GroupChange) {
        let g = self.groups.get_mut(&group).expect("a group");
        let before: Vec<String> = g.members.iter().map(|(u, _)| u.clone()).collect();
        match &change {
            GroupChange::Created(_) => unreachable!("create_group"),
            GroupChange::Added(users) => {
                for u in users {
                    g.members.push((u.clone(), false));
                }
            }
            GroupChange::Removed(users) => g.members.retain(|(u, _)| !users.contains(u)),
            GroupChange::Left => g.members.retain(|(u, _)| u != actor),
            GroupChange::Joined => g.members.push((actor.into(), false)),
            GroupChange::Promoted(users) => {
                for (u, admin) in &mut g.members {
                    *admin |= users.contains(u);
                }
            }
        }
        g.epoch += 1;
        let epoch = g.epoch;
        let mut told: Vec<String> = before;
        for (u, _) in &g.members {
            if !told.contains(u) {
                told.push(u.clone());
            }
        }
        self.tell(group, actor, epoch, change, &told);
    }

    fn tell(
        &mut self,
        group: GroupId,
        actor: &str,
        epoch: u64,
        change: GroupChange,
        users: &[String],
    ) {
        for u in users {
            for device in self.devices_of(u) {
                let notice = GroupNotice {
                    group,
                    epoch,
                    change: change.clone(),
                };
                self.push(
                    u,
                    device,
                    (actor, DeviceId(0)),
                    ClientMsgId(rand::random()),
                    Payload::GroupEvent(Box::new(notice)),
                );
            }
        }
    }

    fn create_group(&mut self, admin: &str, members: &[&str]) -> GroupId {
        let group = GroupId(self.next_group);
        self.next_group += 1;
        self.groups.insert(
            group,
            ServerGroup {
                name: "team".into(),
                epoch: 1,
                members: vec![(admin.into(), true)],
            },
        );
        self.tell(
            group,
            admin,
            1,
            GroupChange::Created("team".into()),
            &[admin.into()],
        );
        if !members.is_empty() {
            let users = members.iter().map(|u| u.to_string()).collect();
            self.change(group, admin, GroupChange::Added(users));
        }
        self.run();
        group
    }

    fn info(&self, group: GroupId) -> GroupInfo {
        let g = &self.groups[&group];
        GroupInfo {
            group,
            name: g.name.clone(),
            epoch: g.epoch,
            members: g
                .members
                .iter()
                .map(|(user, admin)| GroupMember {
                    user: user.clone(),
                    admin: *admin,
                })
                .collect(),
        }
    }

    fn is_member(&self, group: GroupId, user: &str) -> bool {
        self.groups[&group].members.iter().any(|(u, _)| u == user)
    }

    /// `user` sends `text` to `group`; returns the message id.
    fn send_group(&mut self, user: &str, group: GroupId, text: &str) -> ClientMsgId {
        let id = ClientMsgId(rand::random());
        let content = seal(&Content::Text(text.into())).unwrap();
        assert!(self.dev(user).s.send_group(id, group, content));
        id
    }

    /// Moves frames until nothing moves any more: outputs to the server, its answers back,
    /// mailboxes to their devices.
    fn run(&mut self) {
        for _ in 0..1000 {
            let mut moved = false;
            for i in 0..self.devs.len() {
                let outs: Vec<Output> =
                    std::iter::from_fn(|| self.devs[i].s.poll_output()).collect();
                for out in outs {
                    moved = true;
                    match out {
                        Output::Transmit(f) => self.serve(i, f),
                        Output::Events(e) => self.devs[i].events.extend(e),
                        Output::SendDone { id, result } => self.devs[i].done.push((id, result)),
                        Output::RequestDone { request_id, .. } => {
                            panic!("no app request was made, yet {request_id} was answered")
                        }
                        _ => {}
                    }
                }
            }
            let now = self.now;
            for d in &mut self.devs {
                while let Some(item) = d.mailbox.pop_front() {
                    moved = true;
                    d.s.handle_frame(now, item.into());
                }
                d.s.flush_acks();
            }
            if !moved {
                return;
            }
        }
        panic!("the devices and the server never settled");
    }

    fn answer(&mut self, i: usize, f: Frame) {
        let now = self.now;
        self.devs[i].s.handle_frame(now, f);
    }

    /// What the server does with frame `f` from device `i`.
    fn serve(&mut self, i: usize, f: Frame) {
        let (me, my_device) = (self.devs[i].user.clone(), self.devs[i].device);
        match f {
            Frame::ClaimKeys(c) => {
                let bundles: Vec<DeviceBundle> = self
                    .devs
                    .iter()
                    .filter(|d| d.user == c.user)
                    .map(|d| {
                        let key = login_key(&d.user, d.device);
                        let u = d.store.lock().upload(
                            (&d.user, d.device, &key),
                            0,
                            0,
                            false,
                            false,
                            1 << 20,
                        );
                        DeviceBundle {
                            device: d.device,
                            device_key: key.verifying_key().to_bytes(),
                            identity: u.identity.map(|b| *b),
                            one_time_key: u.one_time_keys.into_iter().next(),
                            fallback: false,
                        }
                    })
                    .collect();
                self.answer(
                    i,
                    missive_proto::KeyBundles {
                        request_id: c.request_id,
                        user: c.user,
                        bundles,
                    }
                    .into(),
                );
            }
            Frame::Send(s) => {
                let theirs = self.devices_of(&s.to);
                let mine: Vec<DeviceId> = self
                    .devices_of(&me)
                    .into_iter()
                    .filter(|d| *d != my_device)
                    .collect();
                let sent_to: Vec<DeviceId> = s.envelopes.iter().map(|e| e.device).collect();
                let own: Vec<DeviceId> = s.own.iter().map(|e| e.device).collect();
                if sent_to != theirs || (s.to != me && own != mine) {
                    let current = vec![
                        UserDevices {
                            user: s.to.clone(),
                            devices: theirs,
                        },
                        UserDevices {
                            user: me.clone(),
                            devices: self.devices_of(&me),
                        },
                    ];
                    let m = DeviceMismatch {
                        client_msg_id: s.client_msg_id,
                        current,
                    };
                    return self.answer(i, m.into());
                }
                for e in &s.envelopes {
                    self.push(
                        &s.to,
                        e.device,
                        (&me, my_device),
                        s.client_msg_id,
                        Payload::Envelope(e.envelope.clone()),
                    );
                }
                for e in &s.own {
                    self.push(
                        &me,
                        e.device,
                        (&me, my_device),
                        s.client_msg_id,
                        Payload::Envelope(e.envelope.clone()),
                    );
                }
                let id = s.client_msg_id;
                self.stored.push((me.clone(), s.into()));
                self.answer(i, sent(id));
            }
            Frame::GroupSend(g) => {
                let refuse = |code: ErrorCode| {
                    Rejected {
                        client_msg_id: g.client_msg_id,
                        code: code.as_u16(),
                        message: code.name().into(),
                    }
                    .into()
                };
                if !self.is_member(g.group, &me) {
                    return self.answer(i, refuse(ErrorCode::NotGroupMember));
                }
                if g.epoch != self.groups[&g.group].epoch {
                    return self.answer(i, refuse(ErrorCode::GroupChanged));
                }
                let members: Vec<String> = self.groups[&g.group]
                    .members
                    .iter()
                    .map(|(u, _)| u.clone())
                    .collect();
                for u in members {
                    for device in self.devices_of(&u) {
                        if u == me && device == my_device {
                            continue;
                        }
                        let m = GroupMessage {
                            group: g.group,
                            body: g.body.clone(),
                        };
                        self.push(
                            &u,
                            device,
                            (&me, my_device),
                            g.client_msg_id,
                            Payload::Group(Box::new(m)),
                        );
                    }
                }
                let id = g.client_msg_id;
                self.stored.push((me.clone(), g.into()));
                self.answer(i, sent(id));
            }
            Frame::GroupRequest(r) => match r.op {
                GroupOp::Info { group } if self.is_member(group, &me) => {
                    let answer = GroupAnswer {
                        request_id: r.request_id,
                        answer: GroupAnswerKind::Info(self.info(group)),
                    };
                    self.answer(i, answer.into());
                }
                GroupOp::Info { .. } => {
                    let refused = RequestRefused::new(
                        r.request_id,
                        ErrorCode::NotGroupMember,
                        "members only",
                    );
                    self.answer(i, refused.into());
                }
                other => panic!("the session asked {other:?} on its own"),
            },
            _ => {}
        }
    }

    /// The group texts `user` was shown.
    fn texts(&mut self, user: &str) -> Vec<String> {
        self.dev(user)
            .events
            .iter()
            .filter_map(|e| match e {
                Event::GroupMessage { text, .. } => Some(text.clone()),
                _ => None,
            })
            .collect()
    }

    /// The group messages `user` could not decrypt.
    fn undecryptable(&mut self, user: &str) -> Vec<ClientMsgId> {
        self.dev(user)
            .events
            .iter()
            .filter_map(|e| match e {
                Event::GroupUndecryptable { client_msg_id, .. } => Some(*client_msg_id),
                _ => None,
            })
            .collect()
    }

    /// The key sends (their recipients) and group sends the server stored from `user`.
    fn stored_from(&self, user: &str) -> Vec<String> {
        self.stored
            .iter()
            .filter(|(from, _)| from == user)
            .map(|(_, f)| match f {
                Frame::Send(s) => format!("key>{}", s.to),
                Frame::GroupSend(_) => "group".to_string(),
                other => other.name().to_string(),
            })
            .collect()
    }

    /// The body of the last `GroupSend` stored.
    fn last_body(&self) -> (ClientMsgId, GroupMessage) {
        self.stored
            .iter()
            .rev()
            .find_map(|(_, f)| match f {
                Frame::GroupSend(g) => Some((
                    g.client_msg_id,
                    GroupMessage {
                        group: g.group,
                        body: g.body.clone(),
                    },
                )),
                _ => None,
            })
            .expect("a group send")
    }

    /// The sessions (ids) the stored group sends used, in order.
    fn sessions_used(&self) -> Vec<String> {
        self.stored
            .iter()
            .filter_map(|(_, f)| match f {
                Frame::GroupSend(g) => Some(GroupBody::decode(&g.body).unwrap().session_id),
                _ => None,
            })
            .collect()
    }

    fn all_sent(&mut self, user: &str) -> bool {
        let d = self.dev(user);
        d.s.pending_sends() == 0 && d.done.iter().all(|(_, r)| r.is_ok())
    }
}

fn sent(id: ClientMsgId) -> Frame {
    Sent {
        client_msg_id: id,
        server_ts_ms: 1,
        duplicate: false,
    }
    .into()
}

#[test]
fn members_read_what_a_member_sends_and_keys_are_stored_first() {
    let mut net = Net::with(&["alice", "bob", "carol"]);
    let g = net.create_group("alice", &["bob", "carol"]);
    net.send_group("alice", g, "hello team");
    net.run();
    assert!(net.all_sent("alice"));
    assert_eq!(net.texts("bob"), ["hello team"]);
    assert_eq!(net.texts("carol"), ["hello team"]);
    // One key per other member, both stored before the message.
    assert_eq!(net.stored_from("alice"), ["key>bob", "key>carol", "group"]);
    // bob answers: a session of his own, on the same group.
    net.send_group("bob", g, "hi alice");
    net.run();
    assert_eq!(net.texts("alice"), ["hi alice"]);
    assert_eq!(net.texts("carol"), ["hello team", "hi alice"]);
    // The second message of alice reuses her session: no new keys.
    net.send_group("alice", g, "again");
    net.run();
    assert_eq!(
        net.stored_from("alice"),
        ["key>bob", "key>carol", "group", "group"]
    );
    assert_eq!(net.texts("bob"), ["hello team", "again"]);
    for u in ["alice", "bob", "carol"] {
        assert!(net.undecryptable(u).is_empty(), "{u}");
        let changes = net
            .dev(u)
            .events
            .iter()
            .filter(|e| matches!(e, Event::GroupChanged { .. }))
            .count();
        assert!(changes >= 1, "{u} was told of the membership");
    }
}

#[test]
fn a_new_member_cannot_read_what_was_sent_before_it_joined() {
    let mut net = Net::with(&["alice", "bob", "carol"]);
    let g = net.create_group("alice", &["bob"]);
    net.send_group("alice", g, "before carol");
    net.run();
    let (early_id, early) = net.last_body();
    net.change(g, "alice", GroupChange::Added(vec!["carol".into()]));
    net.run();
    // The server would not hand carol the earlier message; suppose it did.
    net.push(
        "carol",
        DeviceId(1),
        ("alice", DeviceId(1)),
        early_id,
        Payload::Group(Box::new(early)),
    );
    net.run();
    assert_eq!(net.undecryptable("carol"), [early_id]);
    assert!(net.texts("carol").is_empty());
    net.send_group("alice", g, "welcome carol");
    net.run();
    assert_eq!(net.texts("carol"), ["welcome carol"]);
    assert_eq!(net.texts("bob"), ["before carol", "welcome carol"]);
    // The membership changed: a new session, its key to both members.
    let used = net.sessions_used();
    assert_eq!(used.len(), 2);
    assert_ne!(used[0], used[1]);
    assert_eq!(
        net.stored_from("alice"),
        ["key>bob", "group", "key>bob", "key>carol", "group"]
    );
}

#[test]
fn a_removed_member_never_gets_the_key_of_what_is_sent_after() {
    let mut net = Net::with(&["alice", "bob", "carol"]);
    let g = net.create_group("alice", &["bob", "carol"]);
    net.send_group("alice", g, "all three");
    net.run();
    assert_eq!(net.texts("carol"), ["all three"]);
    net.change(g, "alice", GroupChange::Removed(vec!["carol".into()]));
    net.run();
    let keys_before = net.stored_from("alice").len();
    net.send_group("alice", g, "without carol");
    net.run();
    assert_eq!(
        net.stored_from("alice")[keys_before..],
        ["key>bob", "group"],
        "the new key went to bob alone"
    );
    let (id, body) = net.last_body();
    net.push(
        "carol",
        DeviceId(1),
        ("alice", DeviceId(1)),
        id,
        Payload::Group(Box::new(body)),
    );
    net.run();
    assert_eq!(net.undecryptable("carol"), [id]);
    assert_eq!(net.texts("carol"), ["all three"]);
    assert_eq!(net.texts("bob"), ["all three", "without carol"]);
    // carol knows she is out: her own send waits for nothing and is refused by the server.
    let mine = net.send_group("carol", g, "still here?");
    net.run();
    let done: Vec<_> = net
        .dev("carol")
        .done
        .iter()
        .filter(|(i, _)| *i == mine)
        .collect();
    assert!(
        matches!(&done[..], [(_, Err(ClientError::GroupRefused { code, .. }))] if *code == ErrorCode::NotGroupMember.as_u16()),
        "{done:?}"
    );
}

#[test]
fn a_stale_epoch_is_refused_then_fetched_rotated_and_sent_again_under_its_id() {
    let mut net = Net::with(&["alice", "bob", "dave"]);
    let g = net.create_group("alice", &["bob"]);
    net.send_group("alice", g, "one");
    net.run();
    // dave joins with an invite; alice's device has not seen the notice yet.
    let alice_mailbox_len = net.dev("alice").mailbox.len();
    net.change(g, "dave", GroupChange::Joined);
    let held: Vec<Deliver> = net
        .dev("alice")
        .mailbox
        .drain(alice_mailbox_len..)
        .collect();
    let id = net.send_group("alice", g, "two");
    net.run();
    let done: Vec<_> = net
        .dev("alice")
        .done
        .iter()
        .filter(|(i, _)| *i == id)
        .collect();
    assert!(
        matches!(&done[..], [(_, Ok(_))]),
        "sent under the same id after the refusal: {done:?}"
    );
    assert_eq!(net.texts("dave"), ["two"]);
    assert_eq!(net.texts("bob"), ["one", "two"]);
    assert_eq!(
        net.stored_from("alice"),
        ["key>bob", "group", "key>bob", "key>dave", "group"]
    );
    // The notice arrives late: applied, and no further rotation.
    net.dev("alice").mailbox.extend(held);
    net.run();
    net.send_group("alice", g, "three");
    net.run();
    assert_eq!(net.texts("dave"), ["two", "three"]);
    assert_eq!(net.sessions_used().len(), 3);
    assert_eq!(net.sessions_used()[1], net.sessions_used()[2]);
}

#[test]
fn sessions_rotate_after_the_configured_number_of_messages() {
    let mut net = Net::new(RotationPolicy {
        messages: 3,
        age: Duration::from_secs(3600),
    });
    for u in ["alice", "bob"] {
        net.add_device(u, 1, E2eeStore::in_memory());
    }
    let g = net.create_group("alice", &["bob"]);
    for i in 0..7 {
        net.send_group("alice", g, &format!("m{i}"));
    }
    net.run();
    let used = net.sessions_used();
    assert_eq!(used.len(), 7);
    let distinct: Vec<&String> = used.iter().fold(Vec::new(), |mut v, s| {
        if !v.contains(&s) {
            v.push(s);
        }
        v
    });
    assert_eq!(distinct.len(), 3, "3 + 3 + 1 messages");
    assert_eq!(used[0], used[2]);
    assert_ne!(used[2], used[3]);
    assert_eq!(used[3], used[5]);
    assert_ne!(used[5], used[6]);
    let keys = net
        .stored_from("alice")
        .iter()
        .filter(|s| *s == "key>bob")
        .count();
    assert_eq!(keys, 3);
    assert_eq!(net.texts("bob"), ["m0", "m1", "m2", "m3", "m4", "m5", "m6"]);
}

#[test]
fn group_state_survives_a_restart() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("e2ee.state");
    let mut net = Net::new(RotationPolicy::default());
    net.add_device("alice", 1, E2eeStore::open(&path, [5; 32]).unwrap());
    net.add_device(
        "bob",
        1,
        E2eeStore::open(&dir.path().join("bob.state"), [6; 32]).unwrap(),
    );
    let g = net.create_group("alice", &["bob"]);
    net.send_group("alice", g, "before");
    net.run();
    net.dev("alice").store.save().unwrap();
    net.dev("bob").store.save().unwrap();
    // Both restart from their files alone.
    let devs = std::mem::take(&mut net.devs);
    drop(devs);
    net.add_device("alice", 1, E2eeStore::open(&path, [5; 32]).unwrap());
    net.add_device(
        "bob",
        1,
        E2eeStore::open(&dir.path().join("bob.state"), [6; 32]).unwrap(),
    );
    net.send_group("alice", g, "after");
    net.run();
    assert!(net.all_sent("alice"));
    assert_eq!(net.texts("bob"), ["after"]);
    // Epoch, members and the shared session came back: no Info, no new key.
    assert_eq!(net.stored_from("alice"), ["key>bob", "group", "group"]);
    let used = net.sessions_used();
    assert_eq!(used[0], used[1]);
}

#[test]
fn a_key_from_a_non_member_is_not_taken() {
    let mut net = Net::with(&["alice", "bob", "mallory"]);
    let g = net.create_group("alice", &["bob"]);
    // mallory (not a member) shares a key with bob over Olm and has a message for him.
    let mut sessions = GroupSessions::default();
    let key = sessions.rotate(g, 2, 0, ("mallory", DeviceId(1)));
    let content = Content::GroupKey(Box::new(GroupKey {
        group: g,
        epoch: 2,
        session_id: key.session_id.clone(),
        session_key: key.session_key,
    }));
    let key_id = ClientMsgId(rand::random());
    net.dev("mallory")
        .s
        .send(key_id, "bob".into(), seal(&content).unwrap());
    net.run();
    let id = ClientMsgId(rand::random());
    let plain = crate::group::body::GroupPlaintext {
        group: g,
        client_msg_id: id,
        content: seal(&Content::Text("trust me".into())).unwrap(),
    }
    .encode();
    let (session_id, ciphertext) = sessions.encrypt(g, &plain).unwrap();
    let body = GroupBody {
        version: crate::group::body::BODY_VERSION,
        session_id,
        ciphertext,
    }
    .encode();
    net.push(
        "bob",
        DeviceId(1),
        ("mallory", DeviceId(1)),
        id,
        Payload::Group(Box::new(GroupMessage { group: g, body })),
    );
    net.run();
    assert!(net.texts("bob").is_empty());
    assert_eq!(net.undecryptable("bob"), [id]);
}

#[test]
fn garbage_group_bodies_are_told_not_dropped() {
    let mut net = Net::with(&["alice", "bob"]);
    let g = net.create_group("alice", &["bob"]);
    let id = ClientMsgId([9; 16]);
    net.push(
        "bob",
        DeviceId(1),
        ("alice", DeviceId(1)),
        id,
        Payload::Group(Box::new(GroupMessage {
            group: g,
            body: vec![1, 2, 3],
        })),
    );
    net.run();
    assert_eq!(net.undecryptable("bob"), [id]);
}

#[test]
fn keys_refused_for_a_device_mismatch_still_reach_the_server_before_the_message() {
    let mut net = Net::new(RotationPolicy::default());
    net.add_device("alice", 1, E2eeStore::in_memory());
    // A second device of alice that alice's first device does not know of yet: the first
    // key send names too few of alice's devices and is refused (DeviceMismatch).
    net.add_device("alice", 2, E2eeStore::in_memory());
    net.add_device("bob", 1, E2eeStore::in_memory());
    let g = net.create_group("alice", &["bob"]);
    let i = net
        .devs
        .iter()
        .position(|d| d.device == DeviceId(1))
        .unwrap();
    let id = ClientMsgId(rand::random());
    let content = seal(&Content::Text("from the phone".into())).unwrap();
    net.devs[i].s.send_group(id, g, content);
    net.run();
    assert_eq!(net.stored_from("alice"), ["key>bob", "group"]);
    assert_eq!(net.texts("bob"), ["from the phone"]);
    // alice's other device got the key with bob's copy, and reads her message.
    let laptop = net
        .devs
        .iter()
        .find(|d| d.user == "alice" && d.device == DeviceId(2))
        .unwrap();
    let texts: Vec<&Event> = laptop
        .events
        .iter()
        .filter(|e| matches!(e, Event::GroupMessage { from, .. } if from == "alice"))
        .collect();
    assert_eq!(texts.len(), 1, "{:?}", laptop.events);
}

#[test]
fn key_sends_cut_off_by_a_reconnect_go_before_their_message() {
    let mut net = Net::with(&["alice", "bob", "carol"]);
    let g = net.create_group("alice", &["bob", "carol"]);
    net.send_group("alice", g, "across a reconnect");
    // The connection drops before the server saw anything (the claims are lost).
    let now = net.now;
    let alice = net.dev("alice");
    let lost: Vec<Output> = std::iter::from_fn(|| alice.s.poll_output()).collect();
    assert!(lost
        .iter()
        .any(|o| matches!(o, Output::Transmit(Frame::ClaimKeys(_)))));
    alice.s.disconnected();
    alice.s.connected(now, 1 << 20);
    net.run();
    assert!(net.all_sent("alice"));
    // Both keys before the message; the keys' own order is the claim answers' (any).
    let mut stored = net.stored_from("alice");
    assert_eq!(stored.pop().as_deref(), Some("group"), "{stored:?}");
    stored.sort();
    assert_eq!(stored, ["key>bob", "key>carol"]);
    assert_eq!(net.texts("bob"), ["across a reconnect"]);
    assert_eq!(net.texts("carol"), ["across a reconnect"]);
}
