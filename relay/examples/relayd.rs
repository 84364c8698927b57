//! A stand-alone relay for interop checks and benchmarks: `relayd <config.toml>`, where the
//! file holds a [`missive_relay::RelayConfig`] (the edge's `[relay]` table). Prints
//! `listening <addr>` once ready, runs until SIGINT or SIGTERM, then prints its counters.

use missive_relay::{RelayConfig, RelayServer};
use tokio::signal::unix::{signal, SignalKind};

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let path = std::env::args()
        .nth(1)
        .ok_or("usage: relayd <config.toml>")?;
    let text = std::fs::read_to_string(&path)?;
    let config: RelayConfig = toml::from_str(&text)?;
    let server = RelayServer::start(config).await?;
    println!("listening {}", server.local_addr());
    let mut term = signal(SignalKind::terminate())?;
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        _ = term.recv() => {}
    }
    let stats = server.stats();
    server.shutdown().await;
    println!("{stats:?}");
    Ok(())
}
