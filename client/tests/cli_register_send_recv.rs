//! The `missive` CLI contract scripts rely on: register, send (prints the id), recv --json
//! (acks what it printed, sends read receipts), presence, visibility, exit codes.

mod common;

use common::*;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

struct Cli {
    addr: String,
    ca: PathBuf,
    root: tempfile::TempDir,
}

impl Cli {
    fn profile(&self, name: &str) -> PathBuf {
        self.root.path().join(name)
    }

    async fn run(&self, profile: &str, args: &[&str]) -> Output {
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_missive"));
        cmd.arg("--profile").arg(self.profile(profile)).args(args);
        tokio::task::spawn_blocking(move || cmd.output().unwrap())
            .await
            .unwrap()
    }

    async fn register(&self, name: &str, extra: &[&str]) -> Output {
        let ca = self.ca.to_str().unwrap().to_string();
        let mut args = vec!["--server", &self.addr, "--ca", &ca, "register", name];
        args.extend_from_slice(extra);
        self.run(name, &args).await
    }
}

fn stdout(o: &Output) -> String {
    String::from_utf8_lossy(&o.stdout).into_owned()
}

fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

fn json_lines(o: &Output) -> Vec<serde_json::Value> {
    stdout(o)
        .lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("not JSON: {l:?}: {e}")))
        .collect()
}

fn ok(o: &Output) {
    assert!(
        o.status.success(),
        "exit {:?}\nstdout: {}\nstderr: {}",
        o.status.code(),
        stdout(o),
        stderr(o)
    );
}

async fn setup() -> (Edge, Cli) {
    let edge = Edge::start();
    let cli = Cli {
        addr: edge.quic.to_string(),
        ca: edge.cert.clone(),
        root: tempfile::tempdir().unwrap(),
    };
    (edge, cli)
}

#[tokio::test]
async fn register_send_recv_receipts() {
    let (edge, cli) = setup().await;
    ok(&cli.register("alice", &[]).await);
    ok(&cli.register("bob", &["--device", "1"]).await);
    assert!(Path::new(&cli.profile("alice").join("device.key")).exists());

    let sent = cli.run("alice", &["send", "bob", "hello bob"]).await;
    ok(&sent);
    let id = stdout(&sent).trim().to_string();
    assert_eq!(id.len(), 32, "{id:?}");
    assert!(id.chars().all(|c| c.is_ascii_hexdigit()));

    let got = cli.run("bob", &["recv", "--wait", "1", "--json"]).await;
    ok(&got);
    let lines = json_lines(&got);
    assert_eq!(lines.len(), 1, "{lines:?}");
    assert_eq!(lines[0]["type"], "message");
    assert_eq!(lines[0]["from"], "alice");
    assert_eq!(lines[0]["text"], "hello bob");
    assert_eq!(lines[0]["client_msg_id"], id.as_str());
    assert!(lines[0]["server_seq"].as_u64().is_some());
    assert!(lines[0]["server_ts_ms"].as_u64().is_some());
    // bob acked the message before the process exited: what is left are alice's receipts,
    // delivered and read.
    metric_becomes(&edge, "missive_mailbox_items", 2.0).await;

    // Nothing is printed twice.
    let again = cli.run("bob", &["recv", "--wait", "0.5", "--json"]).await;
    ok(&again);
    assert!(json_lines(&again).is_empty());

    let receipts = cli.run("alice", &["recv", "--wait", "1", "--json"]).await;
    ok(&receipts);
    let lines = json_lines(&receipts);
    let statuses: Vec<&str> = lines
        .iter()
        .map(|l| l["status"].as_str().unwrap())
        .collect();
    assert_eq!(statuses, vec!["delivered", "read"], "{lines:?}");
    for l in &lines {
        assert_eq!(l["type"], "receipt");
        assert_eq!(l["from"], "bob");
        assert_eq!(l["client_msg_id"], id.as_str());
    }

    // --no-read: no read receipt goes back.
    ok(&cli.run("alice", &["send", "bob", "second"]).await);
    let quiet = cli
        .run("bob", &["recv", "--wait", "1", "--json", "--no-read"])
        .await;
    ok(&quiet);
    assert_eq!(json_lines(&quiet).len(), 1);
    let only_delivered = cli.run("alice", &["recv", "--wait", "1", "--json"]).await;
    let statuses: Vec<String> = json_lines(&only_delivered)
        .iter()
        .map(|l| l["status"].as_str().unwrap().to_string())
        .collect();
    assert_eq!(statuses, vec!["delivered"]);

    // Human-readable output.
    ok(&cli.run("alice", &["send", "bob", "plain"]).await);
    let human = cli
        .run("bob", &["--force-tcp", "recv", "--wait", "1"])
        .await;
    ok(&human);
    assert!(
        stdout(&human).contains("alice: plain"),
        "{}",
        stdout(&human)
    );
}

#[tokio::test]
async fn presence_and_visibility() {
    let (_edge, cli) = setup().await;
    ok(&cli.register("carol", &[]).await);
    ok(&cli.register("dave", &[]).await);
    let presence = || async {
        let p = cli
            .run("carol", &["presence", "dave", "--wait", "0.5", "--json"])
            .await;
        ok(&p);
        let lines = json_lines(&p);
        assert_eq!(lines.len(), 1, "{lines:?}");
        assert_eq!(lines[0]["type"], "presence");
        assert_eq!(lines[0]["user"], "dave");
        lines[0].clone()
    };
    // dave has written to carol: she sees when he was last online.
    ok(&cli.run("dave", &["send", "carol", "hi"]).await);
    let seen = presence().await;
    assert_eq!(seen["state"], "offline", "{seen}");
    assert!(seen["last_seen_ms"].as_u64().is_some(), "{seen}");

    ok(&cli.run("dave", &["visibility", "nobody"]).await);
    let hidden = presence().await;
    assert_eq!(hidden["state"], "hidden", "{hidden}");
    assert!(hidden.get("last_seen_ms").is_none(), "{hidden}");
}

#[tokio::test]
async fn failures_exit_1_with_a_reason() {
    let (_edge, cli) = setup().await;
    ok(&cli.register("erin", &[]).await);
    let taken = cli
        .run(
            "erin2",
            &[
                "--server",
                &cli.addr,
                "--ca",
                cli.ca.to_str().unwrap(),
                "register",
                "erin",
            ],
        )
        .await;
    assert_eq!(taken.status.code(), Some(1));
    assert!(
        stderr(&taken).contains("user name taken"),
        "{}",
        stderr(&taken)
    );
    assert!(
        !cli.profile("erin2").join("profile.toml").exists(),
        "refused registration leaves no profile"
    );

    let unknown = cli.run("erin", &["send", "nobody", "x"]).await;
    assert_eq!(unknown.status.code(), Some(1));
    assert!(
        stderr(&unknown).contains("unknown_recipient"),
        "{}",
        stderr(&unknown)
    );

    let dead = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .to_string();
    let down = cli
        .run(
            "erin",
            &[
                "--server",
                &dead,
                "--quic-timeout-ms",
                "200",
                "send",
                "erin",
                "x",
            ],
        )
        .await;
    assert_eq!(down.status.code(), Some(1));
    assert!(
        stderr(&down).contains(&format!("cannot connect to {dead}")),
        "{}",
        stderr(&down)
    );

    let no_profile = cli.run("ghost", &["send", "erin", "x"]).await;
    assert_eq!(no_profile.status.code(), Some(1));
}
