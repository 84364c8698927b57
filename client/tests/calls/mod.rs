//! Helpers for the call media tests: an edge with its STUN/TURN relay on loopback, minted
//! TURN credentials, endpoints, and waiting on statistics.

#![allow(dead_code, unreachable_pub, missing_docs)]

use missive_client::call_media::{
    CallSecret, CallStats, Candidate, CandidateKind, MediaCall, MediaDescription, MediaEndpoint,
    MediaOptions, Role,
};
use missive_client::{Client, ClientConfig, Identity, TurnCredentials};
use missive_proto::DeviceId;
use missive_testkit::Edge;
use std::net::SocketAddr;
use std::time::{Duration, Instant};

/// How long a test waits for a call to connect or for media to reach a count.
pub const WAIT: Duration = Duration::from_secs(15);

/// An edge running the relay on a free loopback port with loopback peers allowed (both
/// call ends are on 127.0.0.1).
pub struct RelayEdge {
    pub edge: Edge,
    pub relay: SocketAddr,
    _dir: tempfile::TempDir,
}

pub fn relay_edge() -> RelayEdge {
    let dir = tempfile::tempdir().unwrap();
    let secret = dir.path().join("turn-secret.txt");
    std::fs::write(&secret, "call-media-test-secret\n").unwrap();
    let config = dir.path().join("edge.toml");
    std::fs::write(
        &config,
        format!(
            "[relay]\nallow_loopback_peers = true\nsecret_file = {:?}\n",
            secret.display().to_string()
        ),
    )
    .unwrap();
    let edge = Edge::start_with(&[
        "--config",
        config.to_str().unwrap(),
        "--relay-listen",
        "127.0.0.1:0",
    ]);
    let relay = edge.relay.expect("the ready line names the relay");
    RelayEdge {
        edge,
        relay,
        _dir: dir,
    }
}

/// Registers `user`, logs in and asks the edge for TURN credentials.
pub async fn credentials(edge: &Edge, user: &str) -> (Client, TurnCredentials) {
    let id = Identity::generate(user, DeviceId(1));
    let cfg = ClientConfig::new(edge.quic, edge.ca_pem(), id);
    missive_client::register(&cfg, None).await.unwrap();
    let (client, _events) = Client::connect(cfg).await.unwrap();
    let creds = client.turn_credentials().await.expect("TURN credentials");
    (client, creds)
}

/// Options for the edge's relay from `creds`, video on.
pub fn options(creds: &TurnCredentials) -> MediaOptions {
    MediaOptions::from_credentials(creds)
}

/// `d` with its host candidates replaced by `host` (a proxy standing for that side) and
/// its server-reflexive ones dropped, so the only direct path goes through the proxy.
pub fn via_proxy(d: &MediaDescription, host: SocketAddr) -> MediaDescription {
    let mut d = d.clone();
    d.candidates
        .retain(|c| c.kind != CandidateKind::ServerReflexive);
    for c in &mut d.candidates {
        if c.kind == CandidateKind::Host {
            c.addr = host;
        }
    }
    d
}

pub fn host_of(d: &MediaDescription) -> SocketAddr {
    d.candidates
        .iter()
        .find(|c| c.kind == CandidateKind::Host)
        .map(|c: &Candidate| c.addr)
        .expect("a host candidate")
}

/// Starts both ends (`a` the caller) with the descriptions each should see; the encoded
/// descriptions go through `decode` as they would through signaling.
pub fn start_pair(
    a: MediaEndpoint,
    a_sees: &MediaDescription,
    b: MediaEndpoint,
    b_sees: &MediaDescription,
) -> (MediaCall, MediaCall) {
    let secret = CallSecret::random();
    let peer = CallSecret::from_bytes(*secret.expose_bytes());
    let a_sees = MediaDescription::decode(&a_sees.encode()).unwrap();
    let b_sees = MediaDescription::decode(&b_sees.encode()).unwrap();
    (
        a.start(a_sees, Role::Caller, &secret),
        b.start(b_sees, Role::Callee, &peer),
    )
}

/// Polls `f` until it holds, at most `within`; panics with `what` and the last stats.
pub async fn eventually(
    what: &str,
    within: Duration,
    calls: [&MediaCall; 2],
    mut f: impl FnMut(&CallStats, &CallStats) -> bool,
) {
    let deadline = Instant::now() + within;
    loop {
        let (a, b) = (calls[0].stats(), calls[1].stats());
        if f(&a, &b) {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "timed out waiting for {what}:\ncaller {a:?}\ncallee {b:?}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// The end-to-end media checks every call test makes on final statistics: frames flowed,
/// and everything that arrived decrypted.
pub fn assert_clean(name: &str, s: &CallStats) {
    assert!(s.frames_sent > 0, "{name} sent nothing: {s:?}");
    assert!(s.frames_received > 0, "{name} received nothing: {s:?}");
    assert_eq!(
        s.frames_decrypted, s.frames_received,
        "{name} failed to decrypt some frames: {s:?}"
    );
    assert_eq!(s.decrypt_failures, 0, "{name}: {s:?}");
}

/// Sample of a `/metrics` counter, 0 when absent.
pub fn metric(edge: &Edge, name: &str) -> f64 {
    edge.try_metric(name).unwrap_or(0.0)
}
