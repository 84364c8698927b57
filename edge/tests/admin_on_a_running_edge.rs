//! `missive-edge admin` against a RUNNING edge goes through its admin socket and acts on the
//! live store and sessions: stats shows the connected session and the queue, an invite token
//! lets someone register on an invite-only edge, user-disable closes the live session and
//! refuses the next login (and --enable undoes it), a backup made while running restores,
//! compaction keeps every queued message. Offline-only actions are refused while it runs, and
//! sled's compaction asks for a stop and then works offline.

mod common;

use common::{admin, collect_messages, sdk_user, text, Edge};
use missive_client::{Client, ClientConfig, ClientError, Event, Identity};
use missive_proto::DeviceId;
use std::ffi::OsStr;
use std::path::Path;
use std::time::Duration;

const WAIT: Duration = Duration::from_secs(10);

/// `--config FILE --data-dir DIR`, as the sysadmin gives them to the service and to the CLI.
fn global<'a>(config: &'a Path, data: &'a Path) -> Vec<&'a OsStr> {
    vec![
        OsStr::new("--config"),
        config.as_os_str(),
        OsStr::new("--data-dir"),
        data.as_os_str(),
    ]
}

fn write_config(dir: &Path, engine: &str) -> std::path::PathBuf {
    let path = dir.join("missive-edge.toml");
    std::fs::write(&path, format!("[storage]\nengine = \"{engine}\"\n")).unwrap();
    path
}

fn line_value<'a>(stdout: &'a str, key: &str) -> &'a str {
    stdout
        .lines()
        .find_map(|l| l.strip_prefix(key))
        .unwrap_or_else(|| panic!("no `{key}` line in:\n{stdout}"))
        .trim()
}

/// Registers `name` with an invite token and connects it.
async fn invited_user(
    edge: &Edge,
    name: &str,
    token: String,
) -> (Client, missive_client::EventStream, ClientConfig) {
    let cfg = ClientConfig::new(
        edge.quic,
        edge.ca_pem(),
        Identity::generate(name, DeviceId(1)),
    );
    missive_client::register(&cfg, Some(token))
        .await
        .expect("register with the invite");
    let (client, events) = Client::connect(cfg.clone()).await.expect("connect");
    (client, events, cfg)
}

#[tokio::test]
async fn admin_actions_act_on_a_running_fjall_edge() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("edge");
    let config = write_config(dir.path(), "fjall");
    let g = global(&config, &data);
    let edge = Edge::start(
        &data,
        &["--config", config.to_str().unwrap(), "--invite-only"],
    );
    let socket = data.join("admin.sock");
    assert!(socket.exists());
    use std::os::unix::fs::PermissionsExt;
    let mode = std::fs::metadata(&socket).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode, 0o600, "admin socket is for the service user only");

    // invite: tokens made by the running edge let two people register.
    let mut tokens = Vec::new();
    for _ in 0..2 {
        let run = admin(&g, &["invite"]);
        assert!(run.ok, "{run:?}");
        assert!(run.stderr.contains("(via running edge)"), "{run:?}");
        tokens.push(run.stdout.trim().to_owned());
    }
    // Without one, registration is refused: the edge really is invite-only.
    let stranger = ClientConfig::new(
        edge.quic,
        edge.ca_pem(),
        Identity::generate("mallory", DeviceId(1)),
    );
    assert!(matches!(
        missive_client::register(&stranger, None).await,
        Err(ClientError::InviteRequired)
    ));
    let (alice, mut alice_events, alice_cfg) =
        invited_user(&edge, "alice", tokens.pop().unwrap()).await;
    let (bob, _bob_events, bob_cfg) = invited_user(&edge, "bob", tokens.pop().unwrap()).await;
    bob.close().await.unwrap();
    for i in 0..3 {
        alice.send("bob", text(&format!("m{i}"))).await.unwrap();
    }

    // stats: the census plus the live session.
    let run = admin(&g, &["stats"]);
    assert!(run.ok, "{run:?}");
    assert!(run.stderr.contains("(via running edge)"), "{run:?}");
    assert_eq!(line_value(&run.stdout, "storage engine:"), "fjall");
    assert_eq!(line_value(&run.stdout, "users:"), "2");
    assert_eq!(line_value(&run.stdout, "queued envelopes:"), "3");
    assert_eq!(line_value(&run.stdout, "live sessions:"), "1");

    // backup while running: made by the edge, verified.
    let copy = dir.path().join("copy");
    let run = admin(&g, &["backup", "--to", copy.to_str().unwrap()]);
    assert!(run.ok, "{run:?}");
    assert!(
        run.stdout.contains("2 users, 3 queued envelopes, verified"),
        "{run:?}"
    );
    assert!(copy.join("tls").is_dir(), "TLS material copied");
    // A second one into the same place is refused.
    let run = admin(&g, &["backup", "--to", copy.to_str().unwrap()]);
    assert!(!run.ok && run.stderr.contains("not empty"), "{run:?}");

    // user-disable: the live session is closed with a typed error, a new login is refused.
    let run = admin(&g, &["user-disable", "alice"]);
    assert!(run.ok, "{run:?}");
    assert!(run.stdout.contains("alice: disabled"), "{run:?}");
    assert!(run.stdout.contains("closed 1 live session"), "{run:?}");
    let ev = common::next_matching(&mut alice_events, WAIT, |e| {
        matches!(e, Event::Disconnected { .. })
    })
    .await;
    assert!(
        matches!(&ev, Event::Disconnected { reason } if reason.contains("disabled")),
        "{ev:?}"
    );
    assert!(matches!(
        Client::connect(alice_cfg.clone()).await,
        Err(ClientError::AccountDisabled)
    ));
    let run = admin(&g, &["user-disable", "nobody"]);
    assert!(!run.ok && run.stderr.contains("no such user"), "{run:?}");
    // --enable restores the account.
    let run = admin(&g, &["user-disable", "alice", "--enable"]);
    assert!(run.ok && run.stdout.contains("alice: enabled"), "{run:?}");
    let (alice, _ev) = Client::connect(alice_cfg).await.expect("alice is back");
    alice.close().await.unwrap();

    // compact on fjall: works while running, and every queued message still arrives.
    let run = admin(&g, &["compact"]);
    assert!(run.ok, "{run:?}");
    assert!(run.stdout.contains("compacted the fjall store"), "{run:?}");
    assert!(run.stdout.contains("disk bytes"), "{run:?}");

    // Offline-only actions are refused while the edge runs.
    for args in [
        &["migrate", "--from", "fjall", "--to", "sled"][..],
        &["bench-storage", "--envelopes", "10"][..],
    ] {
        let run = admin(&g, args);
        assert!(!run.ok, "{args:?}: {run:?}");
        assert!(run.stderr.contains("stop the edge first"), "{run:?}");
    }

    let (bob, mut bob_events) = Client::connect(bob_cfg.clone()).await.unwrap();
    let got = collect_messages(&mut bob_events, 3, WAIT).await;
    let ids: Vec<_> = got.iter().map(|(_, id, _)| *id).collect();
    let texts: Vec<String> = got.into_iter().map(|(_, _, t)| t).collect();
    assert_eq!(texts, ["m0", "m1", "m2"]);
    bob.close().await.unwrap();

    // A clean stop removes the socket; the CLI then works offline on the stopped data dir.
    let mut edge = edge;
    assert!(edge.terminate().success());
    assert!(!socket.exists(), "clean shutdown removes the admin socket");
    let run = admin(&g, &["compact"]);
    assert!(run.ok, "{run:?}");
    assert!(run.stderr.contains("(offline"), "{run:?}");
    assert!(run.stdout.contains("major compaction"), "{run:?}");

    // The backup made while running holds the three messages bob had waiting then: the same
    // envelopes (bob's device read them already, and end-to-end encryption does not let it
    // decrypt them twice, so they are checked as the edge hands them out).
    let restored = Edge::start(&copy, &["--config", config.to_str().unwrap()]);
    let mut raw = common::Raw::connect(&restored, false).await;
    raw.login(&bob_cfg.identity).await;
    let queued: Vec<_> = raw
        .deliveries(3)
        .await
        .into_iter()
        .map(|d| d.client_msg_id)
        .collect();
    assert_eq!(queued, ids);
}

#[tokio::test]
async fn sled_compaction_needs_a_stop_and_then_rewrites_the_store() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("edge");
    let config = write_config(dir.path(), "sled");
    let g = global(&config, &data);
    let mut edge = Edge::start(&data, &["--config", config.to_str().unwrap()]);
    let (alice, _a, _) = sdk_user(&edge, "alice").await;
    let (bob, _b, bob_cfg) = sdk_user(&edge, "bob").await;
    bob.close().await.unwrap();
    for i in 0..4 {
        alice.send("bob", text(&format!("s{i}"))).await.unwrap();
    }
    alice.close().await.unwrap();

    let run = admin(&g, &["compact"]);
    assert!(!run.ok, "{run:?}");
    assert!(run.stderr.contains("stop the edge"), "{run:?}");
    assert!(run.stderr.contains("admin compact"), "{run:?}");

    // A killed edge leaves its socket behind: the CLI sees nobody answers and works offline.
    edge.kill9();
    assert!(data.join("admin.sock").exists());
    let run = admin(&g, &["compact"]);
    assert!(run.ok, "{run:?}");
    assert!(run.stderr.contains("(offline"), "{run:?}");
    assert!(run.stdout.contains("compacted the sled store"), "{run:?}");
    assert!(run.stdout.contains("fresh copy"), "{run:?}");
    let before: u64 = run
        .stdout
        .split("disk bytes ")
        .nth(1)
        .and_then(|s| s.split(' ').next())
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("no byte count: {run:?}"));
    assert!(before > 0, "{run:?}");
    let run = admin(&g, &["stats"]);
    assert!(
        run.ok && run.stdout.contains("queued envelopes: 4"),
        "{run:?}"
    );

    // The restarted edge replaces the stale socket and delivers all four.
    edge.restart();
    let run = admin(&g, &["stats"]);
    assert!(
        run.ok && run.stderr.contains("(via running edge)"),
        "{run:?}"
    );
    let mut cfg = bob_cfg;
    cfg.server = edge.quic;
    let (bob, mut ev) = Client::connect(cfg).await.unwrap();
    let got = collect_messages(&mut ev, 4, WAIT).await;
    let texts: Vec<String> = got.into_iter().map(|(_, _, t)| t).collect();
    assert_eq!(texts, ["s0", "s1", "s2", "s3"]);
    bob.close().await.unwrap();
}
