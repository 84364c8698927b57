//! `missive-bench`: load scenarios against a Missive edge.
//!
//! ```text
//! missive-bench SCENARIO [--spawn [--edge-bin PATH] | --server HOST:PORT --ca CERT]
//!               [--clients N] [--messages M | --seconds S] [--rate R] [--size BYTES]
//!               [--window W] [--json FILE] [--svg FILE]
//! ```
//!
//! Scenarios: `chat`, `offline`, `crash` (needs `--spawn`), `connections`, `group`, `media`,
//! `relay` (coturn's `turnutils_uclient` against the edge's relay or `--turn-server`). The harness checks
//! loss, duplicates and per-sender order itself; it exits 1 when an acknowledged message was
//! lost or duplicated. `--flood KIND` runs hostile connections beside the scenario (see
//! `flood.rs`), so the report shows what they cost the edge and the legitimate clients.

#![forbid(unsafe_code)]

use clap::{Parser, ValueEnum};
use missive_bench::edge_process::{find_edge_bin, SpawnedEdge};
use missive_bench::fleet::Target;
use missive_bench::scenario::{self, lock, Knobs, Under};
use missive_bench::{report, tracker};
use std::io::IsTerminal;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::{Arc, Mutex};
use std::time::Duration;

/// Load scenarios against a Missive edge.
#[derive(Debug, Parser)]
#[command(name = "missive-bench", version, about)]
struct Cli {
    /// What to run.
    #[arg(value_enum)]
    scenario: Scenario,
    /// Start a fresh missive-edge on a temp data dir (and stop it afterwards).
    #[arg(long, conflicts_with = "server")]
    spawn: bool,
    /// The missive-edge binary for --spawn [default: next to missive-bench, then PATH].
    #[arg(long)]
    edge_bin: Option<PathBuf>,
    /// Config file for the spawned edge (e.g. to pick `[storage] engine = "fjall"`).
    #[arg(long)]
    edge_config: Option<PathBuf>,
    /// A running edge to target.
    #[arg(long, requires = "ca")]
    server: Option<SocketAddr>,
    /// With --server: the edge's operations address (its `metrics_listen`), to report its
    /// CPU and peak RSS from `/metrics`.
    #[arg(long, requires = "server")]
    metrics: Option<SocketAddr>,
    /// PEM certificate of --server.
    #[arg(long)]
    ca: Option<PathBuf>,
    /// Clients (pairs are two clients; for `connections`, idle connections).
    #[arg(long, default_value_t = 200)]
    clients: usize,
    /// Total messages to send.
    #[arg(long, default_value_t = 20_000, conflicts_with = "seconds")]
    messages: u64,
    /// Send for this many seconds instead of a fixed count (`connections`: how long to hold).
    #[arg(long, value_parser = positive_number)]
    seconds: Option<f64>,
    /// Total offered rate, msgs/s (default: as fast as the window allows).
    #[arg(long, value_parser = positive_number)]
    rate: Option<f64>,
    /// Message size in bytes.
    #[arg(long, default_value_t = 100)]
    size: usize,
    /// Unacknowledged sends per sender.
    #[arg(long, default_value_t = 10)]
    window: usize,
    /// `chat`/`crash`: only one client of each pair sends (the MQTT peers' workload shape).
    #[arg(long)]
    one_way: bool,
    /// With `--rate`: every sender starts at the same instant, so each interval opens with a
    /// burst of one message per sender (the MQTT peers' shape). Default: start times spread
    /// evenly over one interval, a smooth load.
    #[arg(long, requires = "rate")]
    aligned: bool,
    /// `group`: the share of the members that are online and receive; the rest stay offline
    /// and keep their references.
    #[arg(long, default_value_t = 0.2, value_parser = share)]
    online_share: f64,
    /// `group`: members sending at once, each keeping `--window` sends unanswered (the
    /// messages are split between them). They are online, and not counted as receivers.
    #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u32).range(1..=64))]
    senders: u32,
    /// `group`: SDK clients at both ends, so every message is Megolm-encrypted once and
    /// decrypted by every receiver (what the clients pay); one sender.
    #[arg(long)]
    decrypt: bool,
    /// `call`: calls made on each path (direct, then through the relay).
    #[arg(long, default_value_t = 20)]
    calls: usize,
    /// `media`: size of the file uploaded and downloaded, in MB (10^6 bytes).
    #[arg(long, default_value_t = 50.0, value_parser = positive_number)]
    file_mb: f64,
    /// `media`: upload, download and TLS-copy the file this many times, alternating, and
    /// report each figure's median (with the lowest and highest rate and share).
    #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u32).range(1..=50))]
    rounds: u32,
    /// QUIC clients sharing one UDP socket (0 = one each while the process's open-file limit
    /// allows, else as few per socket as fit in half of it).
    #[arg(long, default_value_t = 0)]
    clients_per_socket: usize,
    /// Write the JSON report here.
    #[arg(long)]
    json: Option<PathBuf>,
    /// Draw latency over time as SVG here.
    #[arg(long)]
    svg: Option<PathBuf>,
    /// `relay`: a TURN server to load instead of a spawned edge's relay (e.g. coturn), on
    /// loopback, taking REST credentials made with `--turn-secret`.
    #[arg(long)]
    turn_server: Option<SocketAddr>,
    /// `relay`: the REST shared secret of `--turn-server` (the spawned edge is given this one).
    #[arg(long, default_value = "missive-bench-turn-secret")]
    turn_secret: String,
    /// `relay`: process id of `--turn-server`, for its CPU per relayed packet and RSS.
    #[arg(long)]
    server_pid: Option<u32>,
    /// `relay`: parallel `turnutils_uclient` processes sharing the `--clients` allocations
    /// (one process tops out near 15-20k msgs/s by its own pacing).
    #[arg(long, default_value_t = 4)]
    uclient_procs: usize,
    /// `relay`: clients reach the relay over TCP (`turnutils_uclient -t`).
    #[arg(long)]
    tcp: bool,
    /// `relay`: every session sends to a UDP echo (`turnutils_peer`, started on this free
    /// loopback port) through its relay socket, instead of client to client (`-y`).
    #[arg(long)]
    turn_peer_port: Option<u16>,
    /// Hostile connections beside the scenario: what they send.
    #[arg(long, value_enum)]
    flood: Option<missive_bench::flood::FloodKind>,
    /// How many hostile connections (each starts again when the edge closes it).
    #[arg(long, default_value_t = 8, requires = "flood")]
    flood_connections: usize,
    /// The local address the hostile connections leave from: another loopback address than
    /// the scenario's clients, so the edge's per-address limits tell them apart.
    #[arg(long, default_value = "127.0.0.2:0", requires = "flood")]
    flood_from: SocketAddr,
}

#[derive(Debug, Clone, Copy, ValueEnum)]
enum Scenario {
    Chat,
    Offline,
    Crash,
    Connections,
    /// One group of `--clients` members: member 0 sends, `--online-share` of the others
    /// receive on frame-level connections (fan-out, `Sent` latency, disk per message).
    Group,
    /// A `--file-mb` file uploaded and downloaded (MB/s beside a plain TLS copy, time to first
    /// byte, edge RSS), then `--clients` concurrent 1 MB uploads (p50/p99).
    Media,
    /// `--calls` calls direct, then as many through the edge's TURN relay: set-up time from
    /// the invite to the first decrypted media packet (p50/p99), MOS, packets that failed to
    /// decrypt. A spawned edge runs its relay with loopback peers allowed.
    Call,
    /// TURN relay load with coturn's `turnutils_uclient -y`: `--clients` allocations,
    /// `--messages` in all of `--size` bytes, at `--rate` msgs/s in all (default: as fast as
    /// uclient goes), against the spawned edge's relay or `--turn-server`. Reports relayed
    /// packets/s, Mbit/s and server CPU per relayed packet.
    Relay,
}

/// Parses a share: a number above 0 and at most 1.
fn share(s: &str) -> Result<f64, String> {
    let v = positive_number(s)?;
    if v <= 1.0 {
        Ok(v)
    } else {
        Err(format!("must be at most 1, got {s}"))
    }
}

/// Parses a finite number above zero (a rate or a duration; zero, negative, NaN or infinite
/// values have no meaning there).
fn positive_number(s: &str) -> Result<f64, String> {
    let v: f64 = s.parse().map_err(|e| format!("not a number: {e}"))?;
    if v.is_finite() && v > 0.0 {
        Ok(v)
    } else {
        Err(format!("must be a finite number above 0, got {s}"))
    }
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    if matches!(cli.scenario, Scenario::Relay) {
        return match run_relay(&cli) {
            Ok(()) => ExitCode::SUCCESS,
            Err(e) => {
                eprintln!("missive-bench: {e}");
                ExitCode::FAILURE
            }
        };
    }
    let rt = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("missive-bench: {e}");
            return ExitCode::FAILURE;
        }
    };
    match rt.block_on(run(cli)) {
        Ok(true) => ExitCode::SUCCESS,
        Ok(false) => {
            eprintln!("missive-bench: acknowledged messages were lost, duplicated or out of order");
            ExitCode::FAILURE
        }
        Err(e) => {
            eprintln!("missive-bench: {e}");
            ExitCode::FAILURE
        }
    }
}

async fn run(cli: Cli) -> Result<bool, String> {
    // Holds the config a spawned edge gets for the `call` scenario while the edge runs.
    let relay_config = tempfile::tempdir().map_err(|e| e.to_string())?;
    let mut spawned = if cli.spawn || cli.server.is_none() {
        let bin = find_edge_bin(cli.edge_bin.as_deref());
        let mut extra: Vec<String> = match &cli.edge_config {
            Some(c) => vec!["--config".into(), c.display().to_string()],
            None => Vec::new(),
        };
        if matches!(cli.scenario, Scenario::Call) {
            // Calls need the relay, and both of their clients are on loopback.
            extra.extend(["--relay-listen".into(), "127.0.0.1:0".into()]);
            if cli.edge_config.is_none() {
                let config = relay_config.path().join("edge.toml");
                // One bench client places and answers calls far faster than a person.
                std::fs::write(
                    &config,
                    "[relay]\nallow_loopback_peers = true\ncredential_requests_per_min = 100000\n\
                     [calls]\ninvites_per_min = 100000\n",
                )
                .map_err(|e| e.to_string())?;
                extra.extend(["--config".into(), config.display().to_string()]);
            }
        }
        Some(SpawnedEdge::start(&bin, &extra)?)
    } else {
        None
    };
    let clients_per_socket = match cli.clients_per_socket {
        0 => missive_bench::fleet::auto_clients_per_socket(cli.clients),
        n => n,
    };
    let target = match (&spawned, cli.server, &cli.ca) {
        (Some(e), _, _) => Target {
            addr: e.addr,
            ca_pem: std::fs::read(&e.cert).map_err(|err| err.to_string())?,
            clients_per_socket,
        },
        (None, Some(addr), Some(ca)) => Target {
            addr,
            ca_pem: std::fs::read(ca).map_err(|e| format!("{}: {e}", ca.display()))?,
            clients_per_socket,
        },
        _ => return Err("give --spawn, or --server with --ca".into()),
    };
    let knobs = Knobs {
        clients: cli.clients,
        messages: cli.messages,
        seconds: cli.seconds,
        rate: cli.rate,
        size: cli.size,
        window: cli.window,
        one_way: cli.one_way,
        aligned: cli.aligned,
        online_share: cli.online_share,
        senders: cli.senders as usize,
        decrypt: cli.decrypt,
        file_bytes: (cli.file_mb * 1e6) as u64,
        rounds: cli.rounds as usize,
        calls: cli.calls,
    };
    let remote_start = cli.metrics.and_then(missive_bench::remote::sample);
    let cpu_start = spawned.as_ref().map(|e| e.cpu_seconds());
    let tracker = std::sync::Arc::new(std::sync::Mutex::new(tracker::Tracker::default()));
    let progress = spawn_progress(tracker.clone());
    let (stop_flood, flood_stop) = tokio::sync::watch::channel(false);
    let flood = cli.flood.map(|kind| {
        tokio::spawn(missive_bench::flood::run(
            target.clone(),
            kind,
            cli.flood_connections,
            cli.flood_from,
            flood_stop,
        ))
    });
    let mut under = Under {
        target,
        spawned: spawned.as_mut(),
        metrics: cli.metrics,
    };
    let result = match cli.scenario {
        Scenario::Chat => scenario::chat::run(&mut under, &knobs, tracker, false).await,
        Scenario::Crash => scenario::chat::run(&mut under, &knobs, tracker, true).await,
        Scenario::Offline => scenario::offline::run(&mut under, &knobs, tracker).await,
        Scenario::Connections => scenario::connections::run(&mut under, &knobs, tracker).await,
        Scenario::Group if knobs.decrypt => {
            scenario::group_sdk::run(&mut under, &knobs, tracker).await
        }
        Scenario::Group => scenario::group::run(&mut under, &knobs, tracker).await,
        Scenario::Media => scenario::media::run(&mut under, &knobs, tracker).await,
        Scenario::Call => scenario::call::run(&mut under, &knobs, tracker).await,
        // Handled in `main` before the runtime starts; never reaches here.
        Scenario::Relay => Err("the relay scenario runs without the SDK harness".to_owned()),
    };
    progress.abort();
    let _ = stop_flood.send(true);
    let mut run = result?;
    if let Some(flood) = flood {
        let stats = flood.await.map_err(|e| e.to_string())?;
        let get =
            |c: &std::sync::atomic::AtomicU64| c.load(std::sync::atomic::Ordering::Relaxed) as f64;
        run.extra
            .insert("flood_connections".into(), get(&stats.connections));
        run.extra.insert("flood_frames".into(), get(&stats.frames));
        run.extra
            .insert("flood_closed_by_edge".into(), get(&stats.closed));
    }
    let mut cpu = spawned
        .as_ref()
        .zip(cpu_start)
        .map(|(e, start)| e.cpu_seconds() - start);
    let mut rss = spawned.as_ref().map(|e| e.peak_rss());
    if let (Some(addr), Some(start)) = (cli.metrics, remote_start) {
        if let Some(end) = missive_bench::remote::sample(addr) {
            cpu = Some(end.cpu_seconds - start.cpu_seconds);
            rss = Some(end.peak_rss_bytes);
        }
    }
    let name = format!("{:?}", cli.scenario).to_lowercase();
    let report = report::Report::new(&name, cli.clients, &run, cpu, rss);
    if std::io::stderr().is_terminal() {
        eprintln!();
    }
    print!("{}", report.table());
    if let Some(path) = &cli.json {
        let json = serde_json::to_string_pretty(&report).map_err(|e| e.to_string())?;
        std::fs::write(path, json).map_err(|e| format!("{}: {e}", path.display()))?;
    }
    if let Some(path) = &cli.svg {
        std::fs::write(path, report.svg()).map_err(|e| format!("{}: {e}", path.display()))?;
    }
    // In a group every member must see the one sender's messages in its order.
    let in_order = !matches!(cli.scenario, Scenario::Group) || report.out_of_order == 0;
    Ok(report.correct() && in_order)
}

/// The `relay` scenario: no SDK clients, so no runtime; the edge (if spawned) only relays.
fn run_relay(cli: &Cli) -> Result<(), String> {
    let dir = tempfile::tempdir().map_err(|e| e.to_string())?;
    let mut spawned = None;
    let (server, pid, label) = match cli.turn_server {
        Some(addr) => (addr, cli.server_pid, format!("server {addr}")),
        None => {
            let secret = dir.path().join("turn-secret");
            std::fs::write(&secret, &cli.turn_secret).map_err(|e| e.to_string())?;
            let config = dir.path().join("relay.toml");
            // Loopback peers (the load is on loopback), no per-allocation rate limits and
            // room for every allocation and connection of one bench user on one address.
            let text = format!(
                "[relay]\nallow_loopback_peers = true\nsecret_file = {:?}\n\
                 max_bytes_per_sec = 0\nmax_packets_per_sec = 0\n\
                 max_allocations_per_user = 100000\nmax_tcp_connections_per_ip = 100000\n",
                secret.display().to_string()
            );
            std::fs::write(&config, text).map_err(|e| e.to_string())?;
            let bin = find_edge_bin(cli.edge_bin.as_deref());
            let extra = vec![
                "--config".to_owned(),
                config.display().to_string(),
                "--relay-listen".to_owned(),
                "127.0.0.1:0".to_owned(),
            ];
            let edge = SpawnedEdge::start(&bin, &extra)?;
            let addr = edge.relay.ok_or("the spawned edge runs no relay")?;
            let pid = edge.pid();
            spawned = Some(edge);
            (addr, Some(pid), "missive-edge relay".to_owned())
        }
    };
    let allocations = cli.clients.max(2);
    let messages_per_session = (cli.messages / allocations as u64).max(1);
    // `--rate` is for all sessions; uclient paces each session by whole milliseconds.
    let interval_ms = cli
        .rate
        .map(|r| ((1000.0 * allocations as f64 / r).round() as u64).max(1))
        .unwrap_or(0);
    let load = missive_bench::scenario::relay::RelayLoad {
        server,
        secret: cli.turn_secret.clone(),
        server_pid: pid,
        allocations,
        procs: cli.uclient_procs,
        messages_per_session,
        size: cli.size,
        interval_ms,
        tcp: cli.tcp,
        peer: cli
            .turn_peer_port
            .map(|port| SocketAddr::from(([127, 0, 0, 1], port))),
        timeout: Duration::from_secs(300),
    };
    let echo = match load.peer {
        Some(peer) => Some(missive_bench::scenario::relay::start_echo(peer)?),
        None => None,
    };
    let report = missive_bench::scenario::relay::run(&load);
    if let Some(mut p) = echo {
        let _ = p.kill();
        let _ = p.wait();
    }
    let report = report?;
    drop(spawned);
    print!("{}", report.table(&label));
    if let Some(path) = &cli.json {
        let json = serde_json::to_string_pretty(&report).map_err(|e| e.to_string())?;
        std::fs::write(path, json).map_err(|e| format!("{}: {e}", path.display()))?;
    }
    if report.procs_ok < cli.uclient_procs.max(1) {
        return Err(format!(
            "only {} of {} uclient processes finished",
            report.procs_ok, cli.uclient_procs
        ));
    }
    Ok(())
}

/// A one-line progress display on stderr (sent / acked / delivered and the current rate), only
/// when stderr is a terminal.
fn spawn_progress(tracker: Arc<Mutex<tracker::Tracker>>) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        if !std::io::stderr().is_terminal() {
            return;
        }
        let started = std::time::Instant::now();
        let mut last = 0u64;
        loop {
            tokio::time::sleep(Duration::from_millis(500)).await;
            let (sent, acked, delivered) = {
                let t = lock(&tracker);
                (t.sent, t.acked(), t.delivered)
            };
            eprint!(
                "\r{:>6.1} s  sent {sent:>9}  acked {acked:>9}  delivered {delivered:>9}  {:>8.0} msgs/s ",
                started.elapsed().as_secs_f64(),
                (delivered - last) as f64 * 2.0,
            );
            last = delivered;
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rates_and_durations_must_be_finite_and_positive() {
        assert_eq!(positive_number("4000"), Ok(4000.0));
        assert_eq!(positive_number("0.5"), Ok(0.5));
        for bad in ["0", "-1", "NaN", "inf", "fast"] {
            assert!(positive_number(bad).is_err(), "{bad} was accepted");
        }
        let err = Cli::try_parse_from(["missive-bench", "chat", "--spawn", "--rate", "0"])
            .expect_err("--rate 0 must be refused");
        assert!(err.to_string().contains("--rate"), "{err}");
        assert_eq!(share("0.2"), Ok(0.2));
        assert_eq!(share("1"), Ok(1.0));
        assert!(share("1.5").is_err() && share("0").is_err());
    }
}
