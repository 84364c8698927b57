//! Login signatures verify against the edge's own TLS exporter on both transports, and a
//! wrong key is refused with a typed, fatal error; so are registrations the edge refuses.

mod common;

use common::*;
use missive_client::{Client, ClientError, Event, Identity, TransportKind};
use missive_proto::DeviceId;

#[tokio::test]
async fn register_and_login_over_quic_and_tcp() {
    let edge = Edge::start();
    let alice = registered(&edge, "alice").await;

    let (client, mut events) = Client::connect(config(&edge, alice.clone())).await.unwrap();
    let e = wait_for(&mut events, "connected", |e| {
        matches!(e, Event::Connected { .. })
    })
    .await;
    assert_eq!(
        e,
        Event::Connected {
            transport: TransportKind::Quic
        }
    );
    client.close().await.unwrap();

    let mut cfg = config(&edge, alice);
    cfg.force_tcp = true;
    let (client, mut events) = Client::connect(cfg).await.unwrap();
    let e = wait_for(&mut events, "connected", |e| {
        matches!(e, Event::Connected { .. })
    })
    .await;
    assert_eq!(
        e,
        Event::Connected {
            transport: TransportKind::Tcp
        }
    );
    client.close().await.unwrap();

    // The edge saw one registration and two logins, and refused none of them.
    assert_eq!(
        edge.metric("missive_frames_in_total{type=\"Register\"}"),
        1.0
    );
    assert_eq!(edge.metric("missive_frames_in_total{type=\"Login\"}"), 2.0);
    assert_eq!(
        edge.metric("missive_connections_accepted_total{transport=\"tcp\"}"),
        1.0
    );
    assert_eq!(
        edge.try_metric("missive_errors_total{code=\"auth_failed\"}"),
        None
    );
}

#[tokio::test]
async fn registration_refusals_are_typed() {
    let edge = Edge::start();
    registered(&edge, "bob").await;
    let again = Identity::generate("bob", DeviceId(1));
    let err = missive_client::register(&config(&edge, again), None)
        .await
        .unwrap_err();
    assert!(matches!(err, ClientError::UserTaken), "{err:?}");
    assert_eq!(err.to_string(), "user name taken");

    let bad = Identity::generate("Not Valid", DeviceId(1));
    let err = missive_client::register(&config(&edge, bad), None)
        .await
        .unwrap_err();
    assert!(matches!(err, ClientError::InvalidName(_)), "{err:?}");
}

#[tokio::test]
async fn invite_only_edge_registers_with_a_minted_token_once() {
    let edge = Edge::start_with(&["--invite-only"]);
    let erin = config(&edge, Identity::generate("erin", DeviceId(1)));
    let err = missive_client::register(&erin, None).await.unwrap_err();
    assert!(matches!(err, ClientError::InviteRequired), "{err:?}");

    let minted = edge.admin(&["invite"]);
    assert!(minted.status.success(), "{minted:?}");
    let token = String::from_utf8(minted.stdout).unwrap().trim().to_owned();
    assert!(!token.is_empty());
    missive_client::register(&erin, Some(token.clone()))
        .await
        .unwrap();
    let (client, _events) = Client::connect(erin).await.unwrap();
    client.close().await.unwrap();

    // The token is spent.
    let frank = config(&edge, Identity::generate("frank", DeviceId(1)));
    let err = missive_client::register(&frank, Some(token))
        .await
        .unwrap_err();
    assert!(matches!(err, ClientError::InviteRequired), "{err:?}");
}

#[tokio::test]
async fn wrong_key_is_auth_failed() {
    let edge = Edge::start();
    registered(&edge, "carol").await;
    let impostor = Identity::generate("carol", DeviceId(1));
    let err = Client::connect(config(&edge, impostor)).await.unwrap_err();
    assert!(matches!(err, ClientError::AuthFailed(_)), "{err:?}");
    assert!(err.is_fatal());
    assert_eq!(
        edge.metric("missive_errors_total{code=\"auth_failed\"}"),
        1.0
    );
}

#[tokio::test]
async fn unreachable_server_names_the_address() {
    // A port with nothing behind it (bound then released).
    let addr = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap();
    let edge = Edge::start();
    let mut cfg = config(&edge, Identity::generate("dave", DeviceId(1)));
    cfg.server = addr;
    cfg.quic_timeout = std::time::Duration::from_millis(200);
    let err = Client::connect(cfg).await.unwrap_err();
    let msg = err.to_string();
    assert!(
        msg.starts_with(&format!("cannot connect to {addr}: ")),
        "{msg}"
    );
}

#[tokio::test]
async fn untrusted_certificate_is_refused_on_both_transports() {
    let edge = Edge::start();
    let other = Edge::start();
    let alice = registered(&edge, "alice").await;
    let mut cfg = config(&edge, alice);
    cfg.ca_pem = other.ca_pem();
    let err = Client::connect(cfg).await.unwrap_err();
    let msg = err.to_string();
    assert!(matches!(err, ClientError::Connect { .. }), "{err:?}");
    assert!(msg.contains("quic:") && msg.contains("tcp:"), "{msg}");
    assert!(msg.to_lowercase().contains("certificate"), "{msg}");
}
