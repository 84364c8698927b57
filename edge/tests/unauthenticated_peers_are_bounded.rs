//! What a peer can make the edge hold before (and without) logging in is bounded: only
//! Hello/Register/Login are accepted before login, a login deadline closes the rest, a peer
//! that does not read its frames is closed with its buffer bounded, one address holds a
//! bounded number of connections and handshakes, and under a handshake load QUIC clients
//! must prove their address first (Retry), which a real client passes without noticing.

mod common;

use common::{config_file, one_copy, sdk_user, text, Edge, Raw};
use missive_proto::{ErrorCode, Ping};
use std::time::{Duration, Instant};

#[tokio::test]
async fn before_login_only_login_frames_count_and_a_deadline_applies() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = config_file(dir.path(), "[limits]\nlogin_timeout_secs = 1\n");
    let edge = Edge::start(&dir.path().join("edge"), &[&cfg[0], &cfg[1]]);
    for force_tcp in [false, true] {
        // A Ping before login is a protocol violation, not a way to keep the connection.
        let mut c = Raw::connect(&edge, force_tcp).await;
        c.hello().await;
        c.send(Ping { nonce: 1 }.into()).await;
        assert_eq!(
            c.expect_error_then_close().await,
            ErrorCode::ProtocolViolation
        );
        // A peer that says Hello and nothing more is closed at the login deadline.
        let mut c = Raw::connect(&edge, force_tcp).await;
        let started = Instant::now();
        c.hello().await;
        assert_eq!(c.expect_error_then_close().await, ErrorCode::LoginTimeout);
        let took = started.elapsed();
        assert!(
            took >= Duration::from_millis(900) && took < Duration::from_secs(4),
            "closed after {took:?}, the deadline is 1 s"
        );
    }
}

#[tokio::test]
async fn a_peer_that_does_not_read_is_closed_and_others_go_on() {
    let dir = tempfile::tempdir().unwrap();
    // A small delivery window makes the output bound small (window + 2 frames + 256 KiB);
    // the send and frame budgets are raised so that it is the output bound that acts.
    let cfg = config_file(
        dir.path(),
        "[limits]\nmax_frame_bytes = 4096\ndelivery_window_bytes = 4096\n\
         frame_rate_per_sec = 10000000\nsend_rate_per_sec = 10000000\nsend_burst = 10000000\n",
    );
    let edge = Edge::start(&dir.path().join("edge"), &[&cfg[0], &cfg[1]]);
    let (alice, _a, _) = sdk_user(&edge, "alice").await;
    let (bob, mut bob_events, _) = sdk_user(&edge, "bob").await;
    let rss_before = edge.metric("process_resident_memory_bytes ");

    // The reader-less peer logs in, then sends and sends and never reads: every send is
    // answered (`Sent`, or `Rejected` once its mailbox is full), answers it never takes.
    let mut quiet = Raw::connect(&edge, false).await;
    quiet.register("quiet").await;
    let mut next_id = 0u32;
    let mut burst = || {
        let mut bytes = Vec::new();
        for _ in 0..4096 {
            next_id += 1;
            let mut id = [0u8; 16];
            id[..4].copy_from_slice(&next_id.to_be_bytes());
            missive_proto::encode(
                &missive_proto::Send {
                    client_msg_id: missive_proto::ClientMsgId(id),
                    // No such user: each send costs a look-up and an answer, and stores nothing.
                    to: "nobody".into(),
                    envelopes: one_copy(vec![0; 16]),
                    own: Vec::new(),
                    expires_in_secs: 0,
                }
                .into(),
                &mut bytes,
            )
            .unwrap();
        }
        bytes
    };
    let flood = async {
        use tokio::io::AsyncWriteExt;
        for _ in 0..400 {
            // The edge stops reading once it closes the connection: a failed write ends it.
            if quiet.writer.write_all(&burst()).await.is_err() {
                return true;
            }
        }
        false
    };
    let _ = tokio::time::timeout(Duration::from_secs(60), flood).await;
    common::eventually(
        "the slow reader to be closed",
        Duration::from_secs(20),
        || edge.metric("missive_connections_refused_total{reason=\"slow_reader\"} ") >= 1.0,
    )
    .await;
    let rss_after = edge.metric("process_resident_memory_bytes ");
    assert!(
        rss_after - rss_before < 32.0 * 1024.0 * 1024.0,
        "RSS grew by {} MiB while a peer did not read",
        (rss_after - rss_before) / 1048576.0
    );
    // Others were not affected.
    alice.send("bob", text("still here")).await.unwrap();
    let got = common::collect_messages(&mut bob_events, 1, Duration::from_secs(10)).await;
    assert_eq!(got[0].2, "still here");
    alice.close().await.unwrap();
    bob.close().await.unwrap();
}

#[tokio::test]
async fn one_address_holds_a_bounded_number_of_connections_and_handshakes() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = config_file(
        dir.path(),
        "[limits]\naddress_exempt = []\nper_address_connections = 3\nper_address_handshakes_per_sec = 1000\n",
    );
    let edge = Edge::start(&dir.path().join("edge"), &[&cfg[0], &cfg[1]]);
    let mut held = Vec::new();
    for i in 0..3 {
        let mut c = Raw::connect(&edge, i % 2 == 1).await;
        c.hello().await;
        held.push(c);
    }
    // The fourth from the same address is refused before any handshake, on either transport.
    for force_tcp in [false, true] {
        let r = try_connect(&edge, force_tcp).await;
        assert!(
            r.is_err(),
            "a fourth connection was admitted (tcp: {force_tcp})"
        );
    }
    assert!(
        edge.metric("missive_connections_refused_total{reason=\"address_connections\"} ") >= 2.0
    );
    // One ends: there is room again (once the edge has seen the close).
    drop(held.pop());
    let mut again = None;
    for _ in 0..50 {
        if let Ok(t) = try_connect(&edge, false).await {
            again = Some(t);
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(again.is_some(), "the released slot was not reusable");
}

#[tokio::test]
async fn handshakes_per_address_are_rate_limited() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = config_file(
        dir.path(),
        "[limits]\naddress_exempt = []\nper_address_handshakes_per_sec = 2\n",
    );
    let edge = Edge::start(&dir.path().join("edge"), &[&cfg[0], &cfg[1]]);
    // Burst 4, then 2 per second: of 12 attempts in a row, the burst and what refilled
    // while they ran are admitted, the rest refused before any TLS work.
    let started = std::time::Instant::now();
    let mut ok = 0u32;
    let mut refused = 0u32;
    for _ in 0..12 {
        match try_connect(&edge, true).await {
            Ok(_) => ok += 1,
            Err(_) => refused += 1,
        }
    }
    let refilled = (2.0 * started.elapsed().as_secs_f64()).ceil() as u32;
    assert!(
        ok >= 4 && ok <= 4 + refilled,
        "{ok} handshakes admitted in {:?}",
        started.elapsed()
    );
    assert!(refused >= 1, "nothing was refused");
    assert!(
        edge.metric("missive_connections_refused_total{reason=\"address_handshake_rate\"} ")
            >= f64::from(refused)
    );
}

#[tokio::test]
async fn under_handshake_load_quic_clients_pass_a_retry_first() {
    let dir = tempfile::tempdir().unwrap();
    // Threshold 0: every new QUIC client is asked to prove its address.
    let cfg = config_file(dir.path(), "[limits]\nquic_retry_above_handshakes = 0\n");
    let edge = Edge::start(&dir.path().join("edge"), &[&cfg[0], &cfg[1]]);
    let (alice, _a, _) = sdk_user(&edge, "alice").await;
    let (bob, mut bob_events, _) = sdk_user(&edge, "bob").await;
    assert!(edge.metric("missive_connections_refused_total{reason=\"quic_retry\"} ") >= 2.0);
    alice.send("bob", text("through a retry")).await.unwrap();
    let got = common::collect_messages(&mut bob_events, 1, Duration::from_secs(10)).await;
    assert_eq!(got[0].2, "through a retry");
    alice.close().await.unwrap();
    bob.close().await.unwrap();
}

/// Connects and says Hello; `Err` when the connection is refused or ends before `ServerHello`.
async fn try_connect(edge: &Edge, force_tcp: bool) -> Result<Raw, String> {
    let mut cfg = common::transport_config(edge, force_tcp);
    cfg.quic_timeout = Duration::from_secs(2);
    let t = tokio::time::timeout(
        Duration::from_secs(5),
        missive_client::transport::Transport::connect(&cfg),
    )
    .await
    .map_err(|_| "connect timed out".to_string())?
    .map_err(|e| e.to_string())?;
    let mut raw = Raw::from_transport(t);
    raw.try_server_hello(Duration::from_secs(5))
        .await
        .map_err(|other| format!("no ServerHello: {other}"))?;
    Ok(raw)
}
