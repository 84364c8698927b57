//! The edge runs the STUN/TURN relay (`--relay-listen`) and hands TURN credentials to
//! logged-in clients; tools nobody here wrote (coturn's `turnutils_*`) use them against the
//! edge's relay: Binding gets the client's real address, minted credentials relay a bounded
//! load to a peer with no loss, wrong or expired ones get 401 and nothing relayed, and
//! `/metrics` counts it all. Without a relay the request is refused as `RelayUnavailable`.

mod common;

use common::turn_tools::{
    relay_metric, relayed_without_loss, run, start_relay_edge, tool, uclient, Peer,
};
use common::{sdk_user, Edge};
use missive_client::ClientError;
use missive_proto::ErrorCode;
use std::net::SocketAddr;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

const SECRET: &str = "edge-relay-test-secret";

fn start_edge(dir: &Path) -> Edge {
    start_relay_edge(dir, SECRET)
}

fn refusals(edge: &Edge, reason: &str) -> f64 {
    edge.metric(&format!(
        "missive_relay_refusals_total{{reason=\"{reason}\"}} "
    ))
}

#[test]
fn stunclient_gets_its_own_address_from_the_edge() {
    let dir = tempfile::tempdir().unwrap();
    let edge = start_edge(dir.path());
    let relay: SocketAddr = edge.relay.unwrap();
    // From 127.0.0.2: the answer must carry that address, not one the edge made up.
    let (ok, out) = run(Command::new(tool("turnutils_stunclient")).args([
        "-p",
        &relay.port().to_string(),
        "-L",
        "127.0.0.2",
        "127.0.0.1",
    ]));
    assert!(ok, "stunclient failed:\n{out}");
    let mapped: SocketAddr = out
        .lines()
        .find_map(|l| l.split("UDP reflexive addr: ").nth(1))
        .unwrap_or_else(|| panic!("no reflexive address in:\n{out}"))
        .trim()
        .parse()
        .expect("an address");
    assert_eq!(mapped.ip().to_string(), "127.0.0.2", "{out}");
    assert_ne!(mapped.port(), 0);
    assert_ne!(mapped.port(), relay.port());
    assert!(relay_metric(&edge, "bindings_total") >= 1.0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn minted_credentials_relay_without_loss_and_bad_ones_get_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let edge = start_edge(dir.path());
    let relay = edge.relay.unwrap();
    let (alice, _events, _) = sdk_user(&edge, "alice").await;
    let creds = alice.turn_credentials().await.expect("credentials");
    let (expiry, user) = creds.username.split_once(':').expect("REST username");
    assert_eq!(user, "alice");
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs();
    let expiry: u64 = expiry.parse().expect("expiry");
    assert!(
        (now + 3500..=now + 3700).contains(&expiry),
        "default ttl 1 h: {expiry} vs {now}"
    );
    assert_eq!(creds.ttl, Duration::from_secs(3600));
    // The edge mints with the configured secret, in coturn's formula.
    assert_eq!(
        creds.password,
        missive_relay::credentials::password_for(SECRET.as_bytes(), &creds.username)
    );
    let port = relay.port();
    assert_eq!(
        creds.urls,
        vec![
            format!("stun:127.0.0.1:{port}"),
            format!("turn:127.0.0.1:{port}?transport=udp"),
            format!("turn:127.0.0.1:{port}?transport=tcp"),
        ]
    );
    alice.close().await.unwrap();

    // Wrong password, then expired credentials (right password for their name): 401s, and
    // nothing allocated or relayed. uclient keeps retrying a refused Allocate, so it runs
    // until the edge counted two more 401s, then is stopped.
    let expired = missive_relay::mint(SECRET.as_bytes(), "alice", Duration::ZERO, now - 60);
    for (name, pass) in [
        (creds.username.as_str(), "not-the-password"),
        (expired.username.as_str(), expired.password.as_str()),
    ] {
        let before = refusals(&edge, "unauthorized");
        let mut child = uclient(port, name, pass, None, 1, 5)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("uclient starts");
        let deadline = Instant::now() + Duration::from_secs(20);
        while refusals(&edge, "unauthorized") < before + 2.0 {
            assert!(Instant::now() < deadline, "no 401s for {name} within 20 s");
            if let Ok(Some(_)) = child.try_wait() {
                break;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        let _ = child.kill();
        let _ = child.wait();
        assert!(refusals(&edge, "unauthorized") >= before + 2.0, "{name}");
    }
    assert_eq!(relay_metric(&edge, "allocations_created_total"), 0.0);
    assert_eq!(relay_metric(&edge, "packets_to_peers_total"), 0.0);
    assert_eq!(relay_metric(&edge, "packets_to_clients_total"), 0.0);

    // The minted credentials: every message reaches turnutils_peer and comes back.
    let peer = Peer::start();
    let (sessions, msgs) = (5u64, 200u64);
    let sent = relayed_without_loss(
        &mut uclient(
            port,
            &creds.username,
            &creds.password,
            Some(peer.port),
            sessions,
            msgs,
        ),
        sessions,
        msgs,
    );
    let sent = sent as f64;
    assert!(relay_metric(&edge, "allocations_created_total") >= sessions as f64);
    assert!(relay_metric(&edge, "packets_to_peers_total") >= sent);
    assert!(relay_metric(&edge, "packets_to_clients_total") >= sent);
    assert!(relay_metric(&edge, "bytes_to_peers_total") >= sent * 100.0);
    assert!(relay_metric(&edge, "bytes_to_clients_total") >= sent * 100.0);
    // Present as a gauge (uclient may or may not have deleted its allocations on exit).
    assert!(relay_metric(&edge, "allocations_active") >= 0.0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_a_relay_credentials_are_refused_as_unavailable() {
    let dir = tempfile::tempdir().unwrap();
    let edge = Edge::start(&dir.path().join("edge"), &[]);
    assert_eq!(edge.relay, None, "the relay is off by default");
    let (alice, _events, _) = sdk_user(&edge, "alice").await;
    match alice.turn_credentials().await {
        Err(ClientError::Rejected { code, .. }) => {
            assert_eq!(code, ErrorCode::RelayUnavailable.as_u16())
        }
        other => panic!("expected RelayUnavailable, got {other:?}"),
    }
    // The connection stays usable after the refusal.
    alice.devices().await.expect("still logged in");
    let (_, body) = edge.http_get("/metrics");
    assert!(
        !body.contains("missive_relay_"),
        "no relay, no relay metrics"
    );
}
