//! A full disk, on both engines, on a tmpfs this test mounts (CI runs as root):
//!
//! - below the free-space watermark, new messages are refused with the typed, retryable
//!   `StorageUnavailable`, `/readyz` says not ready, acks still go through, and once space
//!   is back the same message is taken without a restart;
//! - with the watermark off, the disk filling to the last byte fails the engine: every send
//!   in flight is answered `StorageUnavailable` (none hangs), the engine is closed and
//!   reopened from its files once space is back, and every acknowledged message, and every
//!   retried one, is delivered exactly once (counted in the frames the edge sends), also
//!   after a kill -9.

mod common;

use common::{config_file, one_copy, sdk_user, Edge, Raw, Received};
use missive_proto::{ClientMsgId, ErrorCode, Frame, Payload, Send};
use std::collections::HashMap;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

/// A tmpfs of `mib` MiB mounted on `dir` (created), unmounted when dropped.
struct Tmpfs(PathBuf);

impl Tmpfs {
    fn mount(dir: &Path, mib: u64) -> Self {
        std::fs::create_dir_all(dir).unwrap();
        let ok = Command::new("mount")
            .args([
                "-t",
                "tmpfs",
                "-o",
                &format!("size={mib}m,mode=0700"),
                "tmpfs",
            ])
            .arg(dir)
            .status()
            .map(|s| s.success())
            .unwrap_or(false);
        assert!(
            ok,
            "cannot mount a tmpfs on {}: this test needs root (CI runs as root)",
            dir.display()
        );
        Self(dir.to_owned())
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg("-l").arg(&self.0).status();
    }
}

/// Fills `dir`'s filesystem with a file until fewer than `leave` bytes are free (0: until it
/// is full). Returns the file's path.
fn fill(dir: &Path, leave: u64) -> PathBuf {
    let path = dir.join("filler");
    let mut f = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(&path)
        .unwrap();
    let chunk = vec![0x5au8; 64 * 1024];
    loop {
        let free = free_bytes(dir);
        if leave > 0 && free < leave {
            break;
        }
        let n = if leave == 0 {
            chunk.len()
        } else {
            chunk.len().min((free - leave + 1) as usize)
        };
        if f.write_all(&chunk[..n]).is_err() {
            break;
        }
    }
    let _ = f.flush();
    path
}

fn free_bytes(dir: &Path) -> u64 {
    let st = rustix::fs::statvfs(dir).unwrap();
    st.f_bavail * st.f_frsize
}

fn id(n: u32) -> ClientMsgId {
    let mut b = [0u8; 16];
    b[..4].copy_from_slice(&n.to_be_bytes());
    ClientMsgId(b)
}

/// Sends message `n` to bob and waits for its answer: `Ok(())` for `Sent`, `Err(code)`.
async fn send_and_wait(alice: &mut Raw, n: u32) -> Result<(), u16> {
    alice
        .send(
            Send {
                client_msg_id: id(n),
                to: "bob".into(),
                envelopes: one_copy(vec![n as u8; 200]),
                own: Vec::new(),
                expires_in_secs: 0,
            }
            .into(),
        )
        .await;
    loop {
        match alice.recv().await {
            Some(Frame::Sent(s)) if s.client_msg_id == id(n) => return Ok(()),
            Some(Frame::Rejected(r)) if r.client_msg_id == id(n) => return Err(r.code),
            Some(_) => continue,
            None => panic!("alice's connection closed while message {n} was in flight"),
        }
    }
}

/// Logs bob in raw, reads his mailbox and counts each message id in the `Deliver` frames
/// the edge sends (no filter in between), acknowledging as it goes, until `want` distinct
/// ids have arrived and then a second of silence.
async fn drain_bob(edge: &Edge, bob: &missive_client::Identity, want: usize) -> HashMap<u32, u32> {
    let mut raw = Raw::connect(edge, false).await;
    raw.login(bob).await;
    let mut seen: HashMap<u32, u32> = HashMap::new();
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let wait = if seen.len() >= want {
            Duration::from_secs(1)
        } else {
            deadline.saturating_duration_since(Instant::now())
        };
        match raw.recv_within(wait).await {
            Received::Frame(Frame::Deliver(d)) => {
                if let Payload::Envelope(_) = d.payload {
                    let n = u32::from_be_bytes(d.client_msg_id.0[..4].try_into().unwrap());
                    *seen.entry(n).or_default() += 1;
                }
                raw.send(missive_proto::AckDelivery { up_to: d.seq }.into())
                    .await;
            }
            Received::Frame(_) => {}
            Received::Closed => panic!("bob's connection closed"),
            Received::Silence if seen.len() >= want => return seen,
            Received::Silence => panic!("only {} of {want} messages arrived", seen.len()),
        }
    }
}

/// Waits (bounded) until `/readyz` answers `status`.
async fn readyz_becomes(edge: &Edge, status: u16, within: Duration, engine: &str) {
    let deadline = Instant::now() + within;
    while edge.http_get("/readyz").0 != status {
        assert!(
            Instant::now() < deadline,
            "{engine}: /readyz not {status} within {within:?}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

fn start(parent: &Path, engine: &str, min_free_mb: u64) -> Edge {
    let cfg = config_file(
        parent,
        &format!(
            "[storage]\nengine = \"{engine}\"\nmin_free_mb = {min_free_mb}\ncache_mb = 8\nmemtable_mb = 1\n"
        ),
    );
    Edge::start_fresh(parent, &[&cfg[0], &cfg[1]])
}

#[tokio::test]
async fn below_the_watermark_sends_are_refused_then_taken_again() {
    for engine in ["sled", "fjall"] {
        let dir = tempfile::tempdir().unwrap();
        let _fs = Tmpfs::mount(&dir.path().join("data"), 64);
        let edge = start(dir.path(), engine, 16);
        let (bob, _bob_events, bob_cfg) = sdk_user(&edge, "bob").await;
        bob.close().await.unwrap();
        let mut alice = Raw::connect(&edge, false).await;
        alice.register("alice").await;
        for n in 0..20 {
            send_and_wait(&mut alice, n).await.expect("stored");
        }
        let filler = fill(&edge.data_dir, 8 << 20);
        // The edge looks at the free space every second, and at every write.
        readyz_becomes(&edge, 503, Duration::from_secs(5), engine).await;
        let refused = send_and_wait(&mut alice, 20).await;
        assert_eq!(
            refused,
            Err(ErrorCode::StorageUnavailable.as_u16()),
            "{engine}"
        );
        assert_eq!(edge.http_get("/readyz").0, 503, "{engine}");
        assert_eq!(
            edge.metric("missive_storage_health{state=\"low_space\"} "),
            1.0
        );
        common::eventually("the log line", Duration::from_secs(5), || {
            edge.logs().contains("free-space watermark")
        })
        .await;
        // Acks (which free space) go on: bob reads his 20 messages below the watermark.
        let seen = drain_bob(&edge, &bob_cfg.identity, 20).await;
        assert!(seen.values().all(|c| *c == 1), "{engine}: {seen:?}");
        // Space comes back: no restart needed, the same message is taken.
        std::fs::remove_file(filler).unwrap();
        readyz_becomes(&edge, 200, Duration::from_secs(10), engine).await;
        send_and_wait(&mut alice, 20).await.expect("taken again");
        let seen = drain_bob(&edge, &bob_cfg.identity, 1).await;
        assert_eq!(seen, HashMap::from([(20, 1)]), "{engine}");
    }
}

#[tokio::test]
async fn a_full_disk_fails_the_engine_which_reopens_and_loses_nothing() {
    for engine in ["sled", "fjall"] {
        let dir = tempfile::tempdir().unwrap();
        let _fs = Tmpfs::mount(&dir.path().join("data"), 48);
        let mut edge = start(dir.path(), engine, 0);
        let (bob, _bob_events, bob_cfg) = sdk_user(&edge, "bob").await;
        bob.close().await.unwrap();
        let mut alice = Raw::connect(&edge, false).await;
        alice.register("alice").await;
        for n in 0..20 {
            send_and_wait(&mut alice, n).await.expect("stored");
        }
        let filler = fill(&edge.data_dir, 0);
        // Sends until one is refused: each is answered (none hangs), and the first refusal
        // is the typed, retryable one.
        let mut acked: Vec<u32> = (0..20).collect();
        let mut refused = Vec::new();
        let mut n = 20;
        let until = Instant::now() + Duration::from_secs(60);
        while refused.len() < 5 {
            assert!(
                Instant::now() < until,
                "{engine}: the full disk never refused a send"
            );
            let big = Send {
                client_msg_id: id(n),
                to: "bob".into(),
                envelopes: one_copy(vec![7; 64 * 1024]),
                own: Vec::new(),
                expires_in_secs: 0,
            };
            alice.send(big.into()).await;
            loop {
                match alice.recv().await {
                    Some(Frame::Sent(s)) if s.client_msg_id == id(n) => {
                        acked.push(n);
                        break;
                    }
                    Some(Frame::Rejected(r)) if r.client_msg_id == id(n) => {
                        assert_eq!(
                            r.code,
                            ErrorCode::StorageUnavailable.as_u16(),
                            "{engine}: {r:?}"
                        );
                        refused.push(n);
                        break;
                    }
                    Some(_) => {}
                    None => panic!("{engine}: alice was disconnected by the full disk"),
                }
            }
            n += 1;
        }
        assert_eq!(edge.http_get("/readyz").0, 503, "{engine}");
        assert_eq!(
            edge.metric("missive_storage_health{state=\"failed\"} "),
            1.0,
            "{engine}"
        );
        assert!(edge.metric("missive_storage_failures_total ") >= 1.0);
        // Space comes back: the engine is reopened, no restart.
        std::fs::remove_file(filler).unwrap();
        readyz_becomes(&edge, 200, Duration::from_secs(15), engine).await;
        assert!(edge.metric("missive_storage_reopens_total ") >= 1.0);
        // The refused sends are retried under their ids and taken once.
        for n in &refused {
            send_and_wait(&mut alice, *n).await.expect("retry taken");
            acked.push(*n);
        }
        // Nothing acknowledged is lost, across a kill -9 as well.
        edge.kill9();
        edge.restart();
        let seen = drain_bob(&edge, &bob_cfg.identity, acked.len()).await;
        for n in &acked {
            assert_eq!(
                seen.get(n),
                Some(&1),
                "{engine}: message {n} seen {:?} times",
                seen.get(n)
            );
        }
        assert!(
            seen.values().all(|c| *c == 1),
            "{engine}: a message was delivered twice: {seen:?}"
        );
    }
}
