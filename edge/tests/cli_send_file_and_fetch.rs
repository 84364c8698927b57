//! Media with the real `missive` CLI on the real edge:
//!
//! - alice `send-file`s a 50 MB file to bob; the edge's data dir holds none of its plaintext;
//!   bob's `recv --json` shows the media message (id, name, type, size, caption) and
//!   `fetch ID --out FILE` writes a byte-identical file;
//! - a `send-file` killed (SIGKILL) mid-upload and run again resumes: the edge wrote each
//!   byte once, and the second run says it resumed;
//! - a blob tampered with or truncated on the edge's disk is refused by the receiving
//!   client, which leaves no file behind;
//! - `send-file --group ID` reaches the group's members.

mod common;

use common::cli::{cli_bin, missive, of_type, ok, recv, register_profiles};
use common::Edge;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

fn random_bytes(len: usize, seed: u32) -> Vec<u8> {
    let mut x = seed.max(1);
    (0..len)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 17;
            x ^= x << 5;
            x as u8
        })
        .collect()
}

/// Every file under `dir`.
fn files(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    if let Ok(rd) = std::fs::read_dir(dir) {
        for e in rd.flatten() {
            let p = e.path();
            let Ok(kind) = e.file_type() else { continue };
            if kind.is_dir() {
                out.extend(files(&p));
            } else if kind.is_file() {
                out.push(p);
            }
        }
    }
    out
}

fn contains(haystack: &[u8], needle: &[u8]) -> bool {
    haystack.windows(needle.len()).any(|w| w == needle)
}

fn the_blob(edge: &Edge) -> PathBuf {
    let blobs = files(&edge.data_dir.join("media/blobs"));
    assert_eq!(blobs.len(), 1, "{blobs:?}");
    blobs[0].clone()
}

#[test]
fn send_file_fetch_resume_and_refuse_bad_blobs() {
    let dir = tempfile::tempdir().unwrap();
    let edge = Edge::start(&dir.path().join("edge"), &[]);
    let p = |n: &str| dir.path().join(n);
    register_profiles(&edge, dir.path(), &["alice", "bob"]);
    let (alice, bob) = (p("alice"), p("bob"));
    // A first message makes the Olm sessions both ways.
    ok(&alice, &["send", "bob", "hi"]);
    recv(&bob, "2");

    // 1. 50 MB, sent and fetched.
    let plain = random_bytes(50_000_000, 7);
    let file = dir.path().join("holiday.mp4");
    std::fs::write(&file, &plain).unwrap();
    let out = ok(
        &alice,
        &[
            "send-file",
            "bob",
            file.to_str().unwrap(),
            "--caption",
            "look",
        ],
    );
    let media_id = out
        .split_whitespace()
        .nth(1)
        .expect("message id and media id")
        .to_owned();
    assert_eq!(media_id.len(), 64, "{out}");
    for f in files(&edge.data_dir) {
        let bytes = std::fs::read(&f).unwrap();
        for at in [0, 12_345_678, 49_999_000] {
            assert!(
                !contains(&bytes, &plain[at..at + 64]),
                "plaintext at {at} found in {}",
                f.display()
            );
        }
    }
    let got = recv(&bob, "3");
    let media = of_type(&got, "media");
    assert_eq!(media.len(), 1, "{got:?}");
    let m = media[0];
    assert_eq!(m["id"], media_id.as_str());
    assert_eq!(m["from"], "alice");
    assert_eq!(m["name"], "holiday.mp4");
    assert_eq!(m["size"], 50_000_000);
    assert_eq!(m["caption"], "look");
    assert!(m["mime"].is_string());
    let fetched = dir.path().join("fetched.mp4");
    ok(
        &bob,
        &["fetch", &media_id[..12], "--out", fetched.to_str().unwrap()],
    );
    assert!(
        std::fs::read(&fetched).unwrap() == plain,
        "the fetched file differs"
    );
    std::fs::remove_file(&fetched).unwrap();

    // 2. Tampered on the edge's disk: refused, nothing written. Then truncated: the same.
    let blob = the_blob(&edge);
    let good = std::fs::read(&blob).unwrap();
    let mut bad = good.clone();
    bad[30_000_000] ^= 0x40;
    std::fs::write(&blob, &bad).unwrap();
    let (fine, _, err) = missive(
        &bob,
        &["fetch", &media_id, "--out", fetched.to_str().unwrap()],
    );
    assert!(!fine && err.contains("verification"), "{err}");
    assert!(!fetched.exists());
    std::fs::write(&blob, &good[..good.len() - 100]).unwrap();
    let (fine, _, err) = missive(
        &bob,
        &["fetch", &media_id, "--out", fetched.to_str().unwrap()],
    );
    assert!(!fine && err.contains("verification"), "{err}");
    assert!(!fetched.exists());
    std::fs::write(&blob, &good).unwrap();

    // 3. Killed at ~60 % and run again: resumed, every byte written once.
    let before = edge.metric("missive_media_bytes_received_total");
    let second = dir.path().join("second.bin");
    std::fs::write(&second, random_bytes(30_000_000, 9)).unwrap();
    let mut child = Command::new(cli_bin())
        .arg("--profile")
        .arg(&alice)
        .args(["send-file", "bob", second.to_str().unwrap()])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(120);
    while edge.metric("missive_media_bytes_received_total") - before < 18_000_000.0 {
        assert!(Instant::now() < deadline, "the upload never reached 60 %");
        assert!(child.try_wait().unwrap().is_none(), "send-file ended early");
        std::thread::sleep(Duration::from_millis(20));
    }
    child.kill().unwrap();
    child.wait().unwrap();
    let (fine, out, err) = missive(&alice, &["send-file", "bob", second.to_str().unwrap()]);
    assert!(
        fine,
        "{err}\n{}",
        edge.logs()
            .lines()
            .filter(|l| l.contains("WARN") || l.contains("ERROR"))
            .collect::<Vec<_>>()
            .join("\n")
    );
    assert!(err.contains("resuming"), "{err}");
    let written = edge.metric("missive_media_bytes_received_total") - before;
    let ciphertext = 30_000_000.0 + 16.0 * (30_000_000f64 / 65_536.0).ceil();
    assert_eq!(written, ciphertext, "the edge wrote some bytes twice");
    let id2 = out.split_whitespace().nth(1).unwrap().to_owned();
    let got = recv(&bob, "3");
    assert_eq!(of_type(&got, "media").len(), 1, "{got:?}");
    ok(&bob, &["fetch", &id2, "--out", fetched.to_str().unwrap()]);
    assert!(std::fs::read(&fetched).unwrap() == std::fs::read(&second).unwrap());

    // 4. To a group: the member's recv shows it with the group's id, and fetch works.
    let group = ok(&alice, &["group", "create", "trip"]).trim().to_owned();
    ok(&alice, &["group", "add", &group, "bob"]);
    let photo = dir.path().join("photo.bin");
    std::fs::write(&photo, random_bytes(300_000, 11)).unwrap();
    let out = ok(
        &alice,
        &["send-file", "--group", &group, photo.to_str().unwrap()],
    );
    let id3 = out.split_whitespace().nth(1).unwrap().to_owned();
    let got = recv(&bob, "3");
    let media = of_type(&got, "media");
    assert_eq!(media.len(), 1, "{got:?}");
    assert_eq!(media[0]["group"].to_string(), group, "{got:?}");
    let fetched = dir.path().join("photo-fetched.bin");
    ok(&bob, &["fetch", &id3, "--out", fetched.to_str().unwrap()]);
    assert!(std::fs::read(&fetched).unwrap() == std::fs::read(&photo).unwrap());
}
