//! The handle the edge holds: after `set_secret` (SIGHUP) credentials it mints work with a
//! standard client (coturn's `turnutils_uclient`), and `shutdown` releases the listening
//! and relay ports.

use missive_relay::credentials::password_for;
use missive_relay::{RelayConfig, RelayServer, Secret};
use std::net::UdpSocket;
use std::path::PathBuf;
use std::process::Stdio;
use std::time::Duration;
use tokio::process::Command;

fn tool(name: &str) -> PathBuf {
    let path = std::env::var_os("PATH").unwrap_or_default();
    std::env::split_paths(&path)
        .map(|dir| dir.join(name))
        .find(|p| p.is_file())
        .unwrap_or_else(|| {
            panic!(
                "`{name}` is not installed: this test needs Debian's coturn tools \
                 (apt-get install -y coturn; .ci/run installs it when missing)"
            )
        })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rotated_secret_mints_working_credentials_and_shutdown_frees_the_ports() {
    let uclient = tool("turnutils_uclient");
    // A dedicated relay port range, found free, so the test can check it is released.
    let probe = UdpSocket::bind("127.0.0.1:0").expect("bind");
    let base = probe.local_addr().expect("addr").port();
    drop(probe);
    let range = base..=base.saturating_add(7);
    let free_before: Vec<u16> = range
        .clone()
        .filter(|p| UdpSocket::bind(("127.0.0.1", *p)).is_ok())
        .collect();
    let config = RelayConfig {
        listen: "127.0.0.1:0".parse().expect("addr"),
        relay_ip: Some("127.0.0.1".parse().expect("ip")),
        min_port: *range.start(),
        max_port: *range.end(),
        secret: Secret::new("first"),
        allow_loopback_peers: true,
        ..RelayConfig::default()
    };
    let relay = RelayServer::start(config).await.expect("starts");
    relay.set_secret(Secret::new("second"));
    let creds = relay.mint("rotated", Duration::from_secs(300));
    assert_eq!(creds.password, password_for(b"second", &creds.username));

    let port = relay.local_addr().port().to_string();
    let out = tokio::time::timeout(
        Duration::from_secs(60),
        Command::new(&uclient)
            .args([
                "-p",
                &port,
                "-u",
                &creds.username,
                "-w",
                &creds.password,
                "-y",
                "-c",
                "-m",
                "1",
                "-n",
                "20",
                "-l",
                "100",
                "-z",
                "5",
                "127.0.0.1",
            ])
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .kill_on_drop(true)
            .output(),
    )
    .await
    .expect("uclient finished within 60 s")
    .expect("uclient ran");
    let text =
        String::from_utf8_lossy(&out.stdout).into_owned() + &String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{text}");
    // The final totals line (progress lines carry "msz=" and show whatever was counted at
    // that second): `-y` runs two sessions, one per end, of 20 messages each.
    assert!(
        text.contains("start_mclient: tot_send_msgs=40, tot_recv_msgs=40"),
        "{text}"
    );
    let stats = relay.stats();
    assert!(stats.allocations_created >= 2, "{stats:?}");

    let listen = relay.local_addr();
    relay.shutdown().await;
    UdpSocket::bind(listen).expect("listening port released");
    for p in free_before {
        UdpSocket::bind(("127.0.0.1", p)).unwrap_or_else(|e| panic!("relay port {p}: {e}"));
    }
}
