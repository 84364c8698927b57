//! Group chat through the SDK on the real edge, end-to-end encrypted (Megolm over Olm):
//! a 50-member group where every member decrypts every message exactly once and in the same
//! order, with most members offline and the edge SIGKILLed and restarted in between; a
//! removed member gets nothing sent after its removal and its send is refused; a new member
//! reads what is sent after it joined and nothing from before.

mod common;

use common::{next_matching, sdk_user, Edge};
use missive_client::{Client, ClientConfig, ClientError, Event, EventStream};
use missive_proto::{ClientMsgId, ErrorCode};
use std::collections::HashMap;
use std::time::Duration;

const WAIT: Duration = Duration::from_secs(60);

/// Group texts received until `n` have arrived: (sender, id, text), in arrival order. Fails
/// on an undecryptable group message.
async fn group_texts(events: &mut EventStream, n: usize) -> Vec<(String, ClientMsgId, String)> {
    let mut out = Vec::new();
    while out.len() < n {
        match next_matching(events, WAIT, |e| {
            matches!(
                e,
                Event::GroupMessage { .. } | Event::GroupUndecryptable { .. }
            )
        })
        .await
        {
            Event::GroupMessage {
                from,
                client_msg_id,
                text,
                ..
            } => out.push((from, client_msg_id, text)),
            other => panic!("could not decrypt: {other:?}"),
        }
    }
    out
}

/// Whatever group messages arrive within `quiet` (none expected).
async fn no_group_text(events: &mut EventStream, quiet: Duration) -> Vec<String> {
    let mut got = Vec::new();
    let deadline = tokio::time::Instant::now() + quiet;
    while let Ok(Some(e)) = tokio::time::timeout_at(deadline, events.next()).await {
        if let Event::GroupMessage { text, .. } = e {
            got.push(text);
        }
    }
    got
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fifty_members_decrypt_every_message_once_in_order_across_a_sigkill() {
    const MEMBERS: usize = 50;
    const ONLINE: usize = 5;
    let dir = tempfile::tempdir().unwrap();
    let mut edge = Edge::start_fresh(dir.path(), &[]);
    let mut members: Vec<(String, Client, EventStream, ClientConfig)> = Vec::new();
    for i in 0..MEMBERS {
        let name = format!("m{i:02}");
        let (c, e, cfg) = sdk_user(&edge, &name).await;
        members.push((name, c, e, cfg));
    }
    let owner = &members[0].1;
    let g = owner.create_group("fifty").await.unwrap();
    let others: Vec<String> = members[1..].iter().map(|m| m.0.clone()).collect();
    let info = owner.add_members(g.group, others).await.unwrap();
    assert_eq!(info.members.len(), MEMBERS);
    // Three senders take turns: the owner, then two members (their devices learn the
    // membership from the events in their mailboxes, or ask).
    let senders = [0usize, 1, 2];
    // All but the senders and a few more go offline before anything is sent.
    let mut offline: Vec<(String, ClientConfig)> = Vec::new();
    for (name, client, _, cfg) in members.drain(ONLINE..) {
        client.close().await.unwrap();
        offline.push((name, cfg));
    }
    let mut sent = Vec::new();
    for round in 0..2 {
        for &s in &senders {
            let text = format!("round {round} from {}", members[s].0);
            let receipt = members[s]
                .1
                .send_group(g.group, text.clone())
                .await
                .unwrap();
            sent.push((members[s].0.clone(), receipt.client_msg_id, text));
        }
    }
    // Every send was answered `Sent`: durable. Kill the edge without warning.
    edge.kill9();
    edge.restart();
    // The online members reconnect by themselves; the offline ones log in now.
    for (name, cfg) in offline {
        let (c, e) = Client::connect(cfg.clone()).await.unwrap();
        members.push((name, c, e, cfg));
    }
    let mut orders: HashMap<String, Vec<ClientMsgId>> = HashMap::new();
    for (name, client, events, _) in members.iter_mut() {
        let mine = sent.iter().filter(|(from, _, _)| from == name).count();
        let got = group_texts(events, sent.len() - mine).await;
        let expected: Vec<_> = sent
            .iter()
            .filter(|(from, _, _)| from != name)
            .cloned()
            .collect();
        let mut sorted_got = got.clone();
        sorted_got.sort_by_key(|m| m.1);
        let mut sorted_expected = expected.clone();
        sorted_expected.sort_by_key(|m| m.1);
        assert_eq!(
            sorted_got, sorted_expected,
            "{name} decrypted each message once"
        );
        // A sender's own messages come back to it only on its other devices (none here).
        orders.insert(name.clone(), got.iter().map(|m| m.1).collect());
        assert!(
            no_group_text(events, Duration::from_millis(300))
                .await
                .is_empty(),
            "{name} got a message twice"
        );
        let stats = client.delivery_stats();
        assert_eq!(
            stats.duplicates, 0,
            "{name}: the edge stored a message twice"
        );
    }
    // The same order everywhere: each member's sequence is the global order without its
    // own messages.
    let reference = &orders["m04"];
    for (name, order) in &orders {
        let filtered: Vec<_> = reference.iter().filter(|id| order.contains(id)).collect();
        let own: Vec<_> = order.iter().collect();
        assert_eq!(filtered, own, "{name} saw another order");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn removed_and_new_members_read_only_their_share() {
    let dir = tempfile::tempdir().unwrap();
    let edge = Edge::start_fresh(dir.path(), &[]);
    let (alice, _a_ev, _) = sdk_user(&edge, "alice").await;
    let (_bob, mut b_ev, _) = sdk_user(&edge, "bob").await;
    let (carol, mut c_ev, _) = sdk_user(&edge, "carol").await;
    let (dave, mut d_ev, _) = sdk_user(&edge, "dave").await;
    let g = alice.create_group("trio").await.unwrap().group;
    alice
        .add_members(g, vec!["bob".into(), "carol".into()])
        .await
        .unwrap();
    alice.send_group(g, "all three").await.unwrap();
    assert_eq!(group_texts(&mut c_ev, 1).await[0].2, "all three");
    assert_eq!(group_texts(&mut b_ev, 1).await[0].2, "all three");

    // carol is removed: she hears of it, gets nothing after, and may not send.
    alice.remove_members(g, vec!["carol".into()]).await.unwrap();
    next_matching(&mut c_ev, WAIT, |e| matches!(e, Event::GroupChanged { .. })).await;
    alice.send_group(g, "without carol").await.unwrap();
    assert_eq!(group_texts(&mut b_ev, 1).await[0].2, "without carol");
    assert!(no_group_text(&mut c_ev, Duration::from_secs(1))
        .await
        .is_empty());
    match carol.send_group(g, "still here?").await {
        Err(ClientError::GroupRefused { code, .. }) => {
            assert_eq!(code, ErrorCode::NotGroupMember.as_u16())
        }
        other => panic!("a removed member's send: {other:?}"),
    }

    // dave joins with an invite (a revoked one is refused first): he reads what comes next,
    // and nothing from before (the edge never gives it to him, and its key never reached him).
    let revoked = alice.create_group_invite(g, 0).await.unwrap();
    alice
        .revoke_group_invite(g, revoked.token.clone())
        .await
        .unwrap();
    match dave.join_group(revoked.token).await {
        Err(ClientError::GroupRefused { code, .. }) => {
            assert_eq!(code, ErrorCode::GroupInviteInvalid.as_u16())
        }
        other => panic!("a revoked invite: {other:?}"),
    }
    let invite = alice.create_group_invite(g, 3600).await.unwrap();
    dave.join_group(invite.token).await.unwrap();
    alice.send_group(g, "welcome dave").await.unwrap();
    let got = group_texts(&mut d_ev, 1).await;
    assert_eq!(got[0].2, "welcome dave");
    assert!(no_group_text(&mut d_ev, Duration::from_secs(1))
        .await
        .is_empty());
}
