//! SIGHUP reloads the TLS certificate and limits: live connections stay up, new connections
//! get the new certificate, and a bad config on reload is refused while the edge keeps running.

mod common;

use common::{Edge, Raw};
use missive_proto::Frame;
use std::time::Duration;

#[tokio::test]
async fn sighup_swaps_certificate_and_keeps_connections() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("edge");
    let cert_path = dir.path().join("cert.pem");
    let key_path = dir.path().join("key.pem");
    let write_cert = || {
        let ck = rcgen::generate_simple_self_signed(vec!["localhost".into()]).unwrap();
        std::fs::write(&cert_path, ck.cert.pem()).unwrap();
        std::fs::write(&key_path, ck.key_pair.serialize_pem()).unwrap();
        ck.cert.pem().into_bytes()
    };
    let first = write_cert();
    let config = dir.path().join("edge.toml");
    std::fs::write(
        &config,
        format!(
            "[tls]\ncert = {:?}\nkey = {:?}\n",
            cert_path.display().to_string(),
            key_path.display().to_string()
        ),
    )
    .unwrap();
    let edge = Edge::start(&data, &["--config", config.to_str().unwrap()]);
    assert_eq!(std::fs::read(&edge.cert).unwrap(), first);

    let mut live = Raw::connect(&edge, false).await;
    live.register("live").await;
    let mut live_tcp = Raw::connect(&edge, true).await;
    live_tcp.register("livetcp").await;

    // New certificate on disk and a new frame limit in the config, then SIGHUP.
    let second = write_cert();
    std::fs::write(
        &config,
        format!(
            "[tls]\ncert = {:?}\nkey = {:?}\n[limits]\nmax_frame_bytes = 65536\n",
            cert_path.display().to_string(),
            key_path.display().to_string()
        ),
    )
    .unwrap();
    edge.signal("HUP");
    // New connections present the new certificate (a client trusting only it connects).
    let cfg = |ca: Vec<u8>, force_tcp: bool| missive_client::TransportConfig {
        server: if force_tcp {
            edge.tcp.unwrap()
        } else {
            edge.quic
        },
        server_name: "localhost".into(),
        ca_pem: ca,
        quic_timeout: Duration::from_secs(2),
        force_tcp,
        quic_endpoint: None,
    };
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    loop {
        if missive_client::Transport::connect(&cfg(second.clone(), true))
            .await
            .is_ok()
        {
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "new certificate never served"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(
        missive_client::Transport::connect(&cfg(second.clone(), false))
            .await
            .is_ok()
    );
    assert!(
        missive_client::Transport::connect(&cfg(first.clone(), true))
            .await
            .is_err(),
        "the old certificate is still served"
    );

    // A broken config on reload is refused; the edge keeps running on the old one.
    std::fs::write(&config, "[limits]\nmax_frame_bytes = 1\n").unwrap();
    edge.signal("HUP");
    common::eventually(
        "the refused reload to be logged",
        Duration::from_secs(10),
        || edge.logs().contains("reload refused"),
    )
    .await;

    // New connections still come in, with the limits of the reload that was taken: the
    // ServerHello announces the new frame limit.
    for force_tcp in [false, true] {
        let t = missive_client::Transport::connect(&cfg(second.clone(), force_tcp))
            .await
            .expect("a new connection after the refused reload");
        let hello = Raw::from_transport(t).server_hello().await;
        assert_eq!(hello.max_frame, 65536, "limits not reloaded");
    }

    // Connections made before both reloads are still alive.
    for c in [&mut live, &mut live_tcp] {
        c.send(missive_proto::Ping { nonce: 5 }.into()).await;
        assert!(matches!(c.recv().await, Some(Frame::Pong(p)) if p.nonce == 5));
    }
}
