//! The switchboard on a virtual clock: every rule of the module docs, one scenario each.

use super::*;

const RING: Duration = Duration::from_secs(30);
const GRACE: Duration = Duration::from_secs(10);

fn board() -> (Switchboard, Now) {
    let policy = CallPolicy {
        ring_timeout: RING,
        reconnect_grace: GRACE,
        max_calls: 100,
    };
    let now = Now {
        at: Instant::now(),
        ms: 1_000_000,
    };
    (Switchboard::new(policy), now)
}

fn later(now: Now, d: Duration) -> Now {
    Now {
        at: now.at + d,
        ms: now.ms + d.as_millis() as u64,
    }
}

fn p(user: &str, device: u32) -> Party {
    Party::new(user, DeviceId(device))
}

fn id(n: u8) -> CallId {
    CallId([n; 16])
}

fn invite(n: u8, to: &str, devices: &[u32]) -> CallInvite {
    CallInvite {
        call_id: id(n),
        to: to.into(),
        media: CallMedia::Video,
        conference: None,
        offers: devices
            .iter()
            .map(|d| DeviceEnvelope {
                device: DeviceId(*d),
                envelope: vec![*d as u8; 8],
            })
            .collect(),
    }
}

fn on(devices: &[u32]) -> Vec<DeviceId> {
    devices.iter().map(|d| DeviceId(*d)).collect()
}

fn drain(b: &mut Switchboard) -> Vec<Output> {
    std::iter::from_fn(|| b.poll_output()).collect()
}

/// The updates each device got, in order.
fn updates_to(outs: &[Output], to: &Party) -> Vec<CallUpdateKind> {
    outs.iter()
        .filter_map(|o| match o {
            Output::Frame {
                to: t,
                frame: Frame::CallUpdate(u),
            } if t == to => Some(u.update.clone()),
            _ => None,
        })
        .collect()
}

fn rung(outs: &[Output]) -> Vec<Party> {
    outs.iter()
        .filter_map(|o| match o {
            Output::Frame {
                to,
                frame: Frame::CallIncoming(_),
            } => Some(to.clone()),
            _ => None,
        })
        .collect()
}

fn records(outs: &[Output]) -> Vec<(String, CallRecord)> {
    outs.iter()
        .filter_map(|o| match o {
            Output::Record { user, record } => Some((user.clone(), record.clone())),
            _ => None,
        })
        .collect()
}

fn ended(reason: CallEndReason) -> CallUpdateKind {
    CallUpdateKind::Ended { reason }
}

#[test]
fn an_invite_rings_online_devices_pushes_offline_ones_and_tells_the_caller() {
    let (mut b, now) = board();
    b.invite(
        now,
        p("alice", 1),
        invite(1, "bob", &[1, 2, 3]),
        &on(&[1, 3]),
    );
    let outs = drain(&mut b);
    assert_eq!(rung(&outs), vec![p("bob", 1), p("bob", 3)]);
    assert!(outs.contains(&Output::Push { to: p("bob", 2) }));
    assert_eq!(
        updates_to(&outs, &p("alice", 1)),
        vec![CallUpdateKind::Ringing { devices: 2 }]
    );
    // Each device gets its own sealed offer.
    let offers: Vec<Vec<u8>> = outs
        .iter()
        .filter_map(|o| match o {
            Output::Frame {
                frame: Frame::CallIncoming(i),
                ..
            } => Some(i.offer.clone()),
            _ => None,
        })
        .collect();
    assert_eq!(offers, vec![vec![1; 8], vec![3; 8]]);
    assert_eq!(b.poll_timeout(), Some(now.at + RING));
}

#[test]
fn accepting_on_one_device_stops_the_others_and_answers_the_caller() {
    let (mut b, now) = board();
    b.invite(now, p("alice", 1), invite(1, "bob", &[1, 2]), &on(&[1, 2]));
    drain(&mut b);
    let t = later(now, Duration::from_secs(3));
    b.action(t, p("bob", 2), id(1), CallActionKind::Accept(vec![9; 4]));
    let outs = drain(&mut b);
    assert_eq!(
        updates_to(&outs, &p("alice", 1)),
        vec![CallUpdateKind::Accepted {
            device: DeviceId(2),
            answer: vec![9; 4]
        }]
    );
    assert_eq!(
        updates_to(&outs, &p("bob", 1)),
        vec![CallUpdateKind::AnsweredElsewhere {
            device: DeviceId(2)
        }]
    );
    assert!(updates_to(&outs, &p("bob", 2)).is_empty());
    // A late pick-up on the first device learns it was answered elsewhere.
    b.action(t, p("bob", 1), id(1), CallActionKind::Accept(vec![1]));
    let outs = drain(&mut b);
    assert_eq!(
        updates_to(&outs, &p("bob", 1)),
        vec![CallUpdateKind::AnsweredElsewhere {
            device: DeviceId(2)
        }]
    );
    // No ring timeout once answered.
    assert_eq!(b.poll_timeout(), None);
    // Candidates go between the two devices in the call only.
    b.action(t, p("alice", 1), id(1), CallActionKind::Candidates(vec![5]));
    b.action(t, p("bob", 2), id(1), CallActionKind::Candidates(vec![6]));
    let outs = drain(&mut b);
    assert_eq!(
        updates_to(&outs, &p("bob", 2)),
        vec![CallUpdateKind::Candidates(vec![5])]
    );
    assert_eq!(
        updates_to(&outs, &p("alice", 1)),
        vec![CallUpdateKind::Candidates(vec![6])]
    );
    // Hanging up ends it for both and records talk time on both sides.
    let end = later(t, Duration::from_secs(20));
    b.action(end, p("bob", 2), id(1), CallActionKind::Hangup);
    let outs = drain(&mut b);
    assert_eq!(
        updates_to(&outs, &p("alice", 1)),
        vec![ended(CallEndReason::HungUp)]
    );
    assert_eq!(
        updates_to(&outs, &p("bob", 2)),
        vec![ended(CallEndReason::HungUp)]
    );
    let recs = records(&outs);
    assert_eq!(recs.len(), 2);
    for (user, r) in &recs {
        assert_eq!(r.duration_ms(), 20_000, "{user}");
        assert_eq!(r.end, CallEndReason::HungUp);
    }
    assert!(recs
        .iter()
        .any(|(u, r)| u == "alice" && r.outgoing && r.peer == "bob"));
    assert!(recs
        .iter()
        .any(|(u, r)| u == "bob" && !r.outgoing && r.peer == "alice"));
    assert!(b.is_empty());
}

#[test]
fn ringing_past_the_timeout_is_a_missed_call_on_both_sides() {
    let (mut b, now) = board();
    b.invite(now, p("alice", 1), invite(1, "bob", &[1]), &on(&[1]));
    drain(&mut b);
    b.handle_timeout(later(now, RING - Duration::from_millis(1)));
    assert!(drain(&mut b).is_empty(), "not yet");
    b.handle_timeout(later(now, RING));
    let outs = drain(&mut b);
    assert_eq!(
        updates_to(&outs, &p("alice", 1)),
        vec![ended(CallEndReason::Missed)]
    );
    assert_eq!(
        updates_to(&outs, &p("bob", 1)),
        vec![ended(CallEndReason::Missed)]
    );
    let recs = records(&outs);
    assert_eq!(recs.len(), 2);
    let bob = &recs.iter().find(|(u, _)| u == "bob").unwrap().1;
    assert!(bob.missed());
    assert_eq!(bob.end, CallEndReason::Missed);
    assert!(b.is_empty());
}

#[test]
fn a_second_caller_gets_busy_and_both_histories_keep_it() {
    let (mut b, now) = board();
    b.invite(now, p("alice", 1), invite(1, "bob", &[1]), &on(&[1]));
    b.action(now, p("bob", 1), id(1), CallActionKind::Accept(vec![1]));
    drain(&mut b);
    b.invite(now, p("carol", 1), invite(2, "bob", &[1]), &on(&[1]));
    let outs = drain(&mut b);
    assert_eq!(
        updates_to(&outs, &p("carol", 1)),
        vec![ended(CallEndReason::Busy)]
    );
    assert!(rung(&outs).is_empty(), "bob's device does not ring");
    let recs = records(&outs);
    assert_eq!(recs.len(), 2);
    assert!(recs.iter().all(|(_, r)| r.end == CallEndReason::Busy));
    // Being rung counts as busy too.
    b.invite(now, p("dave", 1), invite(3, "erin", &[1]), &on(&[1]));
    drain(&mut b);
    b.invite(now, p("frank", 1), invite(4, "erin", &[1]), &on(&[1]));
    let outs = drain(&mut b);
    assert_eq!(
        updates_to(&outs, &p("frank", 1)),
        vec![ended(CallEndReason::Busy)]
    );
    assert_eq!(b.len(), 2);
}

#[test]
fn glare_leaves_exactly_one_call() {
    let (mut b, now) = board();
    b.invite(now, p("alice", 1), invite(1, "bob", &[1]), &on(&[1]));
    b.invite(now, p("bob", 1), invite(2, "alice", &[1]), &on(&[1]));
    let outs = drain(&mut b);
    assert_eq!(
        updates_to(&outs, &p("bob", 1)),
        vec![ended(CallEndReason::Glare)]
    );
    assert_eq!(rung(&outs), vec![p("bob", 1)], "only alice's call rings");
    assert!(records(&outs).is_empty(), "the lost invite never rang");
    assert_eq!(b.len(), 1);
    // Bob picks up the surviving call.
    b.action(now, p("bob", 1), id(1), CallActionKind::Accept(vec![1]));
    let outs = drain(&mut b);
    assert!(matches!(
        updates_to(&outs, &p("alice", 1))[..],
        [CallUpdateKind::Accepted { .. }]
    ));
}

#[test]
fn a_device_that_comes_online_while_rung_rings_for_what_is_left() {
    let (mut b, now) = board();
    b.invite(now, p("alice", 1), invite(1, "bob", &[1, 2]), &on(&[]));
    let outs = drain(&mut b);
    assert!(rung(&outs).is_empty());
    assert_eq!(
        updates_to(&outs, &p("alice", 1)),
        vec![CallUpdateKind::Ringing { devices: 0 }]
    );
    let t = later(now, Duration::from_secs(12));
    b.device_online(t, &p("bob", 2));
    let outs = drain(&mut b);
    match &outs[..] {
        [Output::Frame {
            to,
            frame: Frame::CallIncoming(i),
        }] => {
            assert_eq!(*to, p("bob", 2));
            assert_eq!(i.rings_for_ms, 18_000);
        }
        other => panic!("expected one ring, got {other:?}"),
    }
    // A device without an offer (linked after the invite) does not ring.
    b.device_online(t, &p("bob", 7));
    assert!(drain(&mut b).is_empty());
    // The timeout ends it on the device that rings now.
    b.handle_timeout(later(now, RING));
    let outs = drain(&mut b);
    assert_eq!(
        updates_to(&outs, &p("bob", 2)),
        vec![ended(CallEndReason::Missed)]
    );
}

#[test]
fn a_participant_gone_past_the_grace_ends_the_call_and_a_reconnect_keeps_it() {
    let (mut b, now) = board();
    b.invite(now, p("alice", 1), invite(1, "bob", &[1]), &on(&[1]));
    b.action(now, p("bob", 1), id(1), CallActionKind::Accept(vec![1]));
    drain(&mut b);
    // Bob's signaling reconnects within the grace: the call goes on.
    b.device_offline(now, &p("bob", 1));
    assert_eq!(b.poll_timeout(), Some(now.at + GRACE));
    b.device_online(later(now, Duration::from_secs(2)), &p("bob", 1));
    assert_eq!(b.poll_timeout(), None);
    b.handle_timeout(later(now, GRACE * 2));
    assert!(drain(&mut b).is_empty());
    // Alice's device is gone for good.
    let t = later(now, Duration::from_secs(60));
    b.device_offline(t, &p("alice", 1));
    b.handle_timeout(later(t, GRACE));
    let outs = drain(&mut b);
    assert_eq!(
        updates_to(&outs, &p("bob", 1)),
        vec![ended(CallEndReason::ConnectionLost)]
    );
    assert_eq!(records(&outs).len(), 2);
    assert!(b.is_empty());
}

#[test]
fn strangers_and_stale_actions_get_unknown_call() {
    let (mut b, now) = board();
    let unknown = ended(CallEndReason::Refused(ErrorCode::UnknownCall as u16));
    b.action(now, p("mallory", 1), id(9), CallActionKind::Hangup);
    assert_eq!(
        updates_to(&drain(&mut b), &p("mallory", 1)),
        vec![unknown.clone()]
    );
    b.invite(now, p("alice", 1), invite(1, "bob", &[1]), &on(&[1]));
    drain(&mut b);
    // Someone outside the call cannot end it, accept it or send into it.
    for action in [
        CallActionKind::Hangup,
        CallActionKind::Accept(vec![1]),
        CallActionKind::Candidates(vec![1]),
    ] {
        b.action(now, p("mallory", 1), id(1), action);
        assert_eq!(
            updates_to(&drain(&mut b), &p("mallory", 1)),
            vec![unknown.clone()]
        );
    }
    // Nor can a device of the callee that was not offered the call.
    b.action(now, p("bob", 5), id(1), CallActionKind::Accept(vec![1]));
    assert_eq!(
        updates_to(&drain(&mut b), &p("bob", 5)),
        vec![unknown.clone()]
    );
    // The caller cannot accept its own call, nor send candidates before the answer.
    b.action(
        now,
        p("alice", 1),
        id(1),
        CallActionKind::Candidates(vec![1]),
    );
    let violation = ended(CallEndReason::Refused(ErrorCode::ProtocolViolation as u16));
    assert_eq!(
        updates_to(&drain(&mut b), &p("alice", 1)),
        vec![violation.clone()]
    );
    assert_eq!(b.len(), 1, "the call rings on");
}

#[test]
fn a_resent_invite_is_answered_once_and_a_reused_id_refused() {
    let (mut b, now) = board();
    b.invite(now, p("alice", 1), invite(1, "bob", &[1]), &on(&[1]));
    drain(&mut b);
    b.invite(now, p("alice", 1), invite(1, "bob", &[1]), &on(&[1]));
    let outs = drain(&mut b);
    assert!(rung(&outs).is_empty(), "no second ring");
    assert_eq!(
        updates_to(&outs, &p("alice", 1)),
        vec![CallUpdateKind::Ringing { devices: 1 }]
    );
    b.invite(now, p("carol", 1), invite(1, "dave", &[1]), &on(&[1]));
    assert_eq!(
        updates_to(&drain(&mut b), &p("carol", 1)),
        vec![ended(CallEndReason::Refused(
            ErrorCode::ProtocolViolation as u16
        ))]
    );
}

#[test]
fn cancel_decline_and_shutdown_end_calls_with_their_reason() {
    let (mut b, now) = board();
    b.invite(now, p("alice", 1), invite(1, "bob", &[1, 2]), &on(&[1, 2]));
    drain(&mut b);
    b.action(now, p("alice", 1), id(1), CallActionKind::Hangup);
    let outs = drain(&mut b);
    for to in [p("alice", 1), p("bob", 1), p("bob", 2)] {
        assert_eq!(
            updates_to(&outs, &to),
            vec![ended(CallEndReason::Cancelled)]
        );
    }
    let bob = records(&outs)
        .into_iter()
        .find(|(u, _)| u == "bob")
        .unwrap();
    assert!(bob.1.missed(), "a cancelled incoming call shows as missed");

    b.invite(now, p("alice", 1), invite(2, "bob", &[1, 2]), &on(&[1, 2]));
    drain(&mut b);
    b.action(now, p("bob", 2), id(2), CallActionKind::Decline);
    let outs = drain(&mut b);
    assert_eq!(
        updates_to(&outs, &p("alice", 1)),
        vec![ended(CallEndReason::Declined)]
    );
    assert_eq!(
        updates_to(&outs, &p("bob", 1)),
        vec![ended(CallEndReason::Declined)]
    );

    b.invite(now, p("alice", 1), invite(3, "bob", &[1]), &on(&[1]));
    b.invite(now, p("carol", 1), invite(4, "dave", &[1]), &on(&[1]));
    drain(&mut b);
    b.shut_down(now);
    let outs = drain(&mut b);
    assert_eq!(
        updates_to(&outs, &p("carol", 1)),
        vec![ended(CallEndReason::ShuttingDown)]
    );
    assert!(b.is_empty());
}

#[test]
fn a_caller_already_in_a_call_and_the_edge_cap_are_refused() {
    let (mut b, now) = board();
    b.set_policy(CallPolicy {
        ring_timeout: RING,
        reconnect_grace: GRACE,
        max_calls: 1,
    });
    b.invite(now, p("alice", 1), invite(1, "bob", &[1]), &on(&[1]));
    drain(&mut b);
    let limit = ended(CallEndReason::Refused(ErrorCode::LimitExceeded as u16));
    b.invite(now, p("alice", 1), invite(2, "carol", &[1]), &on(&[1]));
    assert_eq!(
        updates_to(&drain(&mut b), &p("alice", 1)),
        vec![limit.clone()]
    );
    b.invite(now, p("dave", 1), invite(3, "erin", &[1]), &on(&[1]));
    assert_eq!(updates_to(&drain(&mut b), &p("dave", 1)), vec![limit]);
}

fn leg(n: u8, to: &str, devices: &[u32], conference: u8) -> CallInvite {
    CallInvite {
        conference: Some(id(conference)),
        ..invite(n, to, devices)
    }
}

#[test]
fn a_group_call_is_a_mesh_of_legs_of_up_to_four() {
    let (mut b, now) = board();
    // alice starts a group call with bob and carol: a leg each.
    b.invite(now, p("alice", 1), leg(1, "bob", &[1, 2], 99), &on(&[1, 2]));
    b.invite(now, p("alice", 1), leg(2, "carol", &[1], 99), &on(&[1]));
    let outs = drain(&mut b);
    assert_eq!(rung(&outs), vec![p("bob", 1), p("bob", 2), p("carol", 1)]);
    // bob picks up on his laptop: nobody else is in yet.
    b.action(now, p("bob", 2), id(1), CallActionKind::Accept(vec![1]));
    let outs = drain(&mut b);
    assert_eq!(
        updates_to(&outs, &p("bob", 2)),
        vec![CallUpdateKind::Conference { others: vec![] }]
    );
    // carol picks up: bob is in, so she calls him to complete the mesh.
    b.action(now, p("carol", 1), id(2), CallActionKind::Accept(vec![1]));
    let outs = drain(&mut b);
    assert_eq!(
        updates_to(&outs, &p("carol", 1)),
        vec![CallUpdateKind::Conference {
            others: vec!["bob".into()]
        }]
    );
    // carol → bob is allowed although both are in calls: same group call. bob is rung only
    // on the device he is in it with.
    b.invite(now, p("carol", 1), leg(3, "bob", &[1, 2], 99), &on(&[1, 2]));
    let outs = drain(&mut b);
    assert_eq!(rung(&outs), vec![p("bob", 2)]);
    b.action(now, p("bob", 2), id(3), CallActionKind::Accept(vec![1]));
    let outs = drain(&mut b);
    assert!(
        updates_to(&outs, &p("bob", 2)).is_empty(),
        "bob was in already: he calls nobody"
    );
    assert_eq!(b.len(), 3);

    // Outsiders: a 1:1 call to a participant is busy; a fifth user cannot join; a second
    // leg between the same two users is refused.
    b.invite(now, p("dave", 1), invite(4, "bob", &[1]), &on(&[1]));
    assert_eq!(
        updates_to(&drain(&mut b), &p("dave", 1)),
        vec![ended(CallEndReason::Busy)]
    );
    b.invite(now, p("alice", 1), leg(5, "dave", &[1], 99), &on(&[1]));
    b.action(now, p("dave", 1), id(5), CallActionKind::Accept(vec![1]));
    drain(&mut b);
    b.invite(now, p("alice", 1), leg(6, "erin", &[1], 99), &on(&[1]));
    assert_eq!(
        updates_to(&drain(&mut b), &p("alice", 1)),
        vec![ended(CallEndReason::Refused(
            ErrorCode::LimitExceeded as u16
        ))]
    );
    b.invite(now, p("bob", 2), leg(7, "carol", &[1], 99), &on(&[1]));
    assert_eq!(
        updates_to(&drain(&mut b), &p("bob", 2)),
        vec![ended(CallEndReason::Refused(
            ErrorCode::LimitExceeded as u16
        ))],
        "bob and carol have their leg already"
    );

    // alice leaves: her legs end, bob and carol talk on; records name the group call.
    b.action(now, p("alice", 1), id(1), CallActionKind::Hangup);
    b.action(now, p("alice", 1), id(2), CallActionKind::Hangup);
    b.action(now, p("alice", 1), id(5), CallActionKind::Hangup);
    let outs = drain(&mut b);
    assert!(records(&outs)
        .iter()
        .all(|(_, r)| r.conference == Some(id(99))));
    assert_eq!(b.len(), 1, "carol and bob's leg goes on");
}
