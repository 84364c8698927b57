//! The TURN secret file is read again on SIGHUP: credentials the edge mints afterwards (asked
//! with the real `missive turn-credentials --json`) are under the new secret and relay with
//! coturn's `turnutils_uclient`; without a secret file the edge makes one, private, in its
//! data dir and keeps it across restarts.

mod common;

use common::cli::missive;
use common::turn_tools::{run, uclient, uclient_totals};
use common::Edge;
use missive_relay::credentials::password_for;
use serde_json::Value;
use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::time::{Duration, Instant};

/// `missive turn-credentials --json` for the profile: (username, password, urls).
fn cli_credentials(profile: &Path) -> (String, String, Vec<String>) {
    let (ok, out, err) = missive(profile, &["turn-credentials", "--json"]);
    assert!(ok, "turn-credentials failed: {err}");
    let v: Value = serde_json::from_str(out.trim()).unwrap_or_else(|e| panic!("{e}: {out}"));
    assert_eq!(v["ttl_secs"], 3600, "{v}");
    let urls = v["urls"]
        .as_array()
        .expect("urls")
        .iter()
        .map(|u| u.as_str().expect("a string").to_owned())
        .collect();
    (
        v["username"].as_str().expect("username").to_owned(),
        v["password"].as_str().expect("password").to_owned(),
        urls,
    )
}

#[test]
fn credentials_minted_after_a_sighup_use_the_new_secret_and_relay() {
    let dir = tempfile::tempdir().unwrap();
    let secret = dir.path().join("turn-secret.txt");
    std::fs::write(&secret, "first-secret\n").unwrap();
    let config = dir.path().join("edge.toml");
    std::fs::write(
        &config,
        format!(
            "[relay]\nallow_loopback_peers = true\nsecret_file = {:?}\n",
            secret.display().to_string()
        ),
    )
    .unwrap();
    let edge = Edge::start(
        &dir.path().join("edge"),
        &[
            "--config",
            config.to_str().unwrap(),
            "--relay-listen",
            "127.0.0.1:0",
        ],
    );
    let port = edge.relay.expect("relay on").port();
    let profile = dir.path().join("alice");
    let (server, ca) = (edge.quic.to_string(), edge.cert.display().to_string());
    let (ok, _, err) = missive(
        &profile,
        &["--server", &server, "--ca", &ca, "register", "alice"],
    );
    assert!(ok, "register: {err}");

    let (user, pass, urls) = cli_credentials(&profile);
    assert!(user.ends_with(":alice"), "{user}");
    assert_eq!(pass, password_for(b"first-secret", &user));
    assert!(
        urls.contains(&format!("turn:127.0.0.1:{port}?transport=udp")),
        "{urls:?}"
    );

    std::fs::write(&secret, "second-secret\n").unwrap();
    edge.signal("HUP");
    // The reload happens on the edge's own time: ask until it shows (bounded).
    let deadline = Instant::now() + Duration::from_secs(20);
    let (user, pass) = loop {
        let (user, pass, _) = cli_credentials(&profile);
        if pass == password_for(b"second-secret", &user) {
            break (user, pass);
        }
        assert_eq!(pass, password_for(b"first-secret", &user), "neither secret");
        assert!(Instant::now() < deadline, "secret not reloaded within 20 s");
        std::thread::sleep(Duration::from_millis(200));
    };
    assert!(edge.logs().contains("TURN secret reloaded"));

    // A standard client relays with them, client to client through two allocations.
    let (ok, out) = run(&mut uclient(port, &user, &pass, None, 1, 20));
    assert!(ok, "uclient failed:\n{out}");
    let (sent, recv, lost) = uclient_totals(&out);
    // `-y` pairs two clients, each sending 20.
    assert_eq!((sent, recv, lost), (40, 40, 0), "{out}");
    assert!(edge.metric("missive_relay_allocations_created_total ") >= 2.0);

    // An unreadable secret on reload keeps the running one (and says so).
    std::fs::remove_file(&secret).unwrap();
    edge.signal("HUP");
    let deadline = Instant::now() + Duration::from_secs(20);
    while !edge.logs().contains("TURN secret not reloaded") {
        assert!(Instant::now() < deadline, "failed reload not logged");
        std::thread::sleep(Duration::from_millis(50));
    }
    let (user, pass, _) = cli_credentials(&profile);
    assert_eq!(pass, password_for(b"second-secret", &user));
}

#[test]
fn without_a_secret_file_a_private_secret_is_made_and_kept() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("edge");
    let mut edge = Edge::start(&data, &["--relay-listen", "127.0.0.1:0"]);
    let path = data.join("turn-secret");
    let made = std::fs::read(&path).expect("secret made in the data dir");
    assert_eq!(made.len(), 64, "32 random bytes as hex");
    let mode = std::fs::metadata(&path).unwrap().permissions().mode();
    assert_eq!(mode & 0o777, 0o600);
    edge.terminate();
    edge.restart();
    assert!(edge.relay.is_some());
    assert_eq!(std::fs::read(&path).unwrap(), made, "kept across a restart");
}
