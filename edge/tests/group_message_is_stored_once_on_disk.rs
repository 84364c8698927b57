//! Disk on the real edge: one 4 KiB message to a 256-member group (everyone offline) grows
//! the edge's store by about one body plus 256 small references, not by 256 copies. The
//! running edge's `admin stats` tells the bytes of every key and value stored (file sizes
//! would measure the engines' preallocation instead).

mod common;

use common::{Edge, Raw};
use missive_proto::{ClientMsgId, Frame, GroupAnswerKind, GroupOp, GroupRequest, GroupSend};

/// The running edge's "stored bytes" from `admin stats`.
fn stored_bytes(edge: &Edge) -> u64 {
    let run = common::admin(
        &["--data-dir".as_ref(), edge.data_dir.as_os_str()],
        &["stats"],
    );
    assert!(run.ok, "{run:?}");
    run.stdout
        .lines()
        .find_map(|l| l.strip_prefix("stored bytes: "))
        .and_then(|n| n.trim().parse().ok())
        .unwrap_or_else(|| panic!("no stored bytes in {run:?}"))
}

async fn answer(raw: &mut Raw, request_id: u32, op: GroupOp) -> GroupAnswerKind {
    raw.send(GroupRequest { request_id, op }.into()).await;
    loop {
        match raw.recv().await {
            Some(Frame::GroupAnswer(a)) if a.request_id == request_id => return a.answer,
            Some(Frame::RequestRefused(r)) => panic!("refused: {r:?}"),
            Some(_) => {}
            None => panic!("closed"),
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_4k_message_to_256_members_is_one_body_and_small_references() {
    let dir = tempfile::tempdir().unwrap();
    let edge = Edge::start_fresh(dir.path(), &[]);
    let names: Vec<String> = (0..257).map(|i| format!("u{i:03}")).collect();
    let mut owner = Raw::connect(&edge, false).await;
    owner.register(&names[0]).await;
    for n in &names[1..] {
        let mut r = Raw::connect(&edge, false).await;
        r.register(n).await;
    }
    let GroupAnswerKind::Info(g) =
        answer(&mut owner, 1, GroupOp::Create { name: "big".into() }).await
    else {
        panic!("no group")
    };
    let GroupAnswerKind::Info(g) = answer(
        &mut owner,
        2,
        GroupOp::Add {
            group: g.group,
            users: names[1..].to_vec(),
        },
    )
    .await
    else {
        panic!("not added")
    };
    let before = stored_bytes(&edge);
    let id = ClientMsgId([7; 16]);
    owner
        .send(
            GroupSend {
                client_msg_id: id,
                group: g.group,
                epoch: g.epoch,
                body: vec![0x5a; 4096],
                expires_in_secs: 0,
            }
            .into(),
        )
        .await;
    loop {
        match owner.recv().await {
            Some(Frame::Sent(s)) if s.client_msg_id == id => break,
            Some(Frame::Rejected(r)) => panic!("refused: {r:?}"),
            Some(_) => {}
            None => panic!("closed"),
        }
    }
    let grown = stored_bytes(&edge).saturating_sub(before);
    // 256 copies of the body alone would be 1 MiB.
    assert!(
        grown < 256 * 4096 / 4,
        "one group message grew the store by {grown} bytes"
    );
    assert!(grown >= 4096, "the body is not on disk ({grown} bytes)");
}
