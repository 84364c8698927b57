//! A child process appends and prints each acknowledged id; it is SIGKILLed mid-stream. After
//! reopening, every printed id must be in the mailbox exactly once, with no seq repeated.
//! One child run per engine.

use missive_proto::{ClientMsgId, DeviceEnvelope, DeviceId, Payload, ServerSeq};
use missive_storage::{AppendOutcome, Engine, MailboxId, RegisterOutcome, Store, StoreConfig};
use std::collections::HashSet;
use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

const CHILD_ENV: &str = "MISSIVE_KILL9_CHILD_DIR";
const ENGINE_ENV: &str = "MISSIVE_KILL9_CHILD_ENGINE";

fn config(engine: Engine) -> StoreConfig {
    StoreConfig {
        engine,
        ..StoreConfig::default()
    }
}

/// In the child: append forever from 16 concurrent writers, printing each acked id.
#[tokio::test]
async fn child_writer() {
    let Ok(dir) = std::env::var(CHILD_ENV) else {
        return; // only meaningful when spawned by the parent test below
    };
    let engine: Engine = std::env::var(ENGINE_ENV).unwrap().parse().unwrap();
    let store = Store::open(dir.as_ref(), config(engine), None).unwrap();
    let r = store
        .register("bob", DeviceId(1), [1; 32], None, false, 1)
        .await
        .unwrap();
    assert_eq!(r, RegisterOutcome::Created);
    println!("READY");
    let mut tasks = Vec::new();
    for w in 0..16u64 {
        let s = store.clone();
        tasks.push(tokio::spawn(async move {
            for n in 0.. {
                let mut b = [0u8; 16];
                b[..8].copy_from_slice(&w.to_be_bytes());
                b[8..].copy_from_slice(&(n as u64).to_be_bytes());
                let r = s
                    .append_message(
                        "alice",
                        DeviceId(1),
                        ClientMsgId(b),
                        "bob",
                        vec![DeviceEnvelope {
                            device: DeviceId(1),
                            envelope: vec![7; 100],
                        }],
                        Vec::new(),
                        1,
                    )
                    .await
                    .unwrap();
                assert!(matches!(r, AppendOutcome::Stored { .. }));
                println!("ACK {}", ClientMsgId(b).to_hex());
            }
        }));
    }
    for t in tasks {
        t.await.unwrap();
    }
}

#[test]
fn kill9_loses_no_acked_append() {
    if std::env::var(CHILD_ENV).is_ok() {
        return;
    }
    for engine in Engine::ALL {
        kill_child_and_check(engine);
    }
}

fn kill_child_and_check(engine: Engine) {
    let dir = tempfile::tempdir().unwrap();
    let mut child = Command::new(std::env::current_exe().unwrap())
        .args(["--exact", "child_writer", "--nocapture", "--test-threads=1"])
        .env(CHILD_ENV, dir.path())
        .env(ENGINE_ENV, engine.name())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let stdout = child.stdout.take().unwrap();
    let mut acked = HashSet::new();
    let started = Instant::now();
    let mut lines = BufReader::new(stdout).lines();
    // Let it write for a while (bounded by count and time), then SIGKILL it mid-stream.
    while acked.len() < 3000 && started.elapsed() < Duration::from_secs(60) {
        match lines.next() {
            Some(Ok(l)) => {
                if let Some(id) = l.strip_prefix("ACK ") {
                    acked.insert(id.to_owned());
                }
            }
            _ => break,
        }
    }
    child.kill().unwrap(); // SIGKILL
    child.wait().unwrap();
    // Acks printed before the kill but not yet read from the pipe still count.
    for l in lines.map_while(Result::ok) {
        if let Some(id) = l.strip_prefix("ACK ") {
            acked.insert(id.to_owned());
        }
    }
    assert!(
        acked.len() >= 100,
        "{engine}: child acked only {} appends",
        acked.len()
    );

    let rt = tokio::runtime::Runtime::new().unwrap();
    rt.block_on(async {
        let store = Store::open(dir.path(), config(engine), None).unwrap();
        let items = store
            .read_mailbox(
                &MailboxId::new("bob", DeviceId(1)),
                ServerSeq(0),
                usize::MAX,
                usize::MAX,
            )
            .unwrap();
        let mut seen = HashSet::new();
        let mut seqs = HashSet::new();
        for (seq, item) in &items {
            assert!(seqs.insert(*seq), "{engine}: seq {seq:?} repeated");
            assert!(
                seen.insert(item.client_msg_id.to_hex()),
                "{engine}: id stored twice"
            );
            assert_eq!(item.payload, Payload::Envelope(vec![7; 100]));
        }
        let lost: Vec<_> = acked.iter().filter(|id| !seen.contains(*id)).collect();
        assert!(
            lost.is_empty(),
            "{engine}: {} acked appends lost, e.g. {:?}",
            lost.len(),
            lost.first()
        );
        store.shutdown().await;
    });
}
