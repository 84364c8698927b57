//! `missive-edge`: the server binary.

#![forbid(unsafe_code)]

use clap::{Parser, Subcommand};
use missive_edge::config::{Config, LogFormat, RegistrationMode};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;

/// mimalloc instead of glibc malloc: at saturation glibc's malloc, free and consolidation
/// took about a fifth of the edge's CPU (perf, bench/RESULTS.md, "Allocator").
#[cfg(feature = "mimalloc")]
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// Missive edge server: QUIC + TCP/TLS messaging with durable delivery.
#[derive(Parser, Debug)]
#[command(name = "missive-edge", version)]
struct Cli {
    /// TOML config file; flags below override its values.
    #[arg(long, global = true)]
    config: Option<PathBuf>,
    /// Data directory (database, generated dev certificate).
    #[arg(long, global = true)]
    data_dir: Option<PathBuf>,
    /// QUIC (UDP) listen address, e.g. 127.0.0.1:4433 (port 0 picks a free one).
    #[arg(long)]
    listen: Option<SocketAddr>,
    /// TCP+TLS fallback listen address (default: same as --listen; "" disables).
    #[arg(long)]
    tcp_listen: Option<String>,
    /// Operations HTTP address for /metrics, /healthz, /readyz ("" disables).
    #[arg(long)]
    metrics_listen: Option<String>,
    /// HTTPS address for signed media downloads, e.g. [::]:8443 (default off).
    #[arg(long)]
    media_listen: Option<String>,
    /// UDP address of the STUN/TURN relay, e.g. 0.0.0.0:3478 (default off; "" turns it off).
    #[arg(long)]
    relay_listen: Option<String>,
    /// Log format.
    #[arg(long, value_enum)]
    log_format: Option<LogFormat>,
    /// Require invite tokens for registration.
    #[arg(long)]
    invite_only: bool,
    /// Push gateway URL (http://host:port/path); enables push wake-ups.
    #[arg(long)]
    push_url: Option<String>,
    /// Idle timeout in seconds.
    #[arg(long)]
    idle_timeout_secs: Option<u64>,
    /// Maximum frame payload in bytes.
    #[arg(long)]
    max_frame_bytes: Option<u32>,
    /// Maximum concurrent connections.
    #[arg(long)]
    max_connections: Option<usize>,
    /// Sends per second allowed per connection (the burst becomes twice this).
    #[arg(long)]
    send_rate: Option<u32>,
    /// Undelivered items one device mailbox holds (storage.mailbox_max_items).
    #[arg(long)]
    mailbox_max_items: Option<u64>,
    /// Undelivered messages of one sender in one device mailbox
    /// (storage.mailbox_max_items_per_sender).
    #[arg(long)]
    mailbox_max_items_per_sender: Option<u64>,
    #[command(subcommand)]
    command: Option<Command>,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Administration of a stopped edge's data directory.
    Admin {
        #[command(subcommand)]
        action: missive_edge::admin::AdminAction,
    },
}

fn main() -> ExitCode {
    restrict_file_modes();
    let mut cli = Cli::parse();
    let command = cli.command.take();
    let mut config = match Config::load(cli.config.as_deref()) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("missive-edge: {e}");
            return ExitCode::from(2);
        }
    };
    apply_flags(&cli, &mut config);
    if let Err(e) = config.validate() {
        eprintln!("missive-edge: {e}");
        return ExitCode::from(2);
    }
    init_logging(&config);
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .worker_threads(config.network_threads())
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("missive-edge: cannot start runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    let result = runtime.block_on(async {
        match command {
            None => {
                // SIGHUP: the file is read again and the same flags applied on top.
                let reload = Box::new(move || {
                    let mut c = Config::load(cli.config.as_deref()).map_err(|e| e.to_string())?;
                    apply_flags(&cli, &mut c);
                    c.validate().map_err(|e| e.to_string())?;
                    Ok(c)
                });
                missive_edge::server::run(config, reload)
                    .await
                    .map_err(|e| e.to_string())
            }
            Some(Command::Admin { action }) => missive_edge::admin::run(config, action).await,
        }
    });
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("missive-edge: {e}");
            ExitCode::FAILURE
        }
    }
}

/// Everything the edge creates (data dir 0700, database files, keys, backups 0600) is for
/// the service user only: the process umask gains every group and other bit. Under systemd
/// the unit's `UMask=` is kept and only tightened.
fn restrict_file_modes() {
    use rustix::fs::Mode;
    let old = rustix::process::umask(Mode::from_raw_mode(0o077));
    rustix::process::umask(old | Mode::from_raw_mode(0o077));
}

fn apply_flags(cli: &Cli, config: &mut Config) {
    if let Some(d) = &cli.data_dir {
        config.data_dir = d.clone();
    }
    if let Some(l) = cli.listen {
        config.listen = l;
    }
    if let Some(t) = &cli.tcp_listen {
        config.tcp_listen = Some(t.clone());
    }
    if let Some(m) = &cli.metrics_listen {
        config.metrics_listen = Some(m.clone());
    }
    if let Some(m) = &cli.media_listen {
        config.media.listen = Some(m.clone());
    }
    if let Some(r) = &cli.relay_listen {
        config.relay.listen = Some(r.clone());
    }
    if let Some(f) = cli.log_format {
        config.log.format = f;
    }
    if cli.invite_only {
        config.registration.mode = RegistrationMode::Invite;
    }
    if let Some(u) = &cli.push_url {
        config.push.gateway_url = Some(u.clone());
    }
    if let Some(s) = cli.idle_timeout_secs {
        config.limits.idle_timeout_secs = s;
    }
    if let Some(m) = cli.max_frame_bytes {
        config.limits.max_frame_bytes = m;
    }
    if let Some(m) = cli.max_connections {
        config.limits.max_connections = m;
    }
    if let Some(n) = cli.mailbox_max_items {
        config.storage.mailbox_max_items = n;
    }
    if let Some(n) = cli.mailbox_max_items_per_sender {
        config.storage.mailbox_max_items_per_sender = n;
    }
    if let Some(r) = cli.send_rate {
        // Every send is a frame: the frame budget follows a raised send rate.
        config.limits.frame_rate_per_sec = config.limits.frame_rate_per_sec.max(r);
        config.limits.send_rate_per_sec = r;
        // Same shape as the defaults: a burst of twice the sustained rate.
        config.limits.send_burst = r.saturating_mul(2);
    }
}

fn init_logging(config: &Config) {
    use tracing_subscriber::EnvFilter;
    let spec = std::env::var("RUST_LOG")
        .ok()
        .filter(|s| EnvFilter::try_new(s).is_ok())
        .unwrap_or_else(|| config.log.filter.clone());
    let mut filter = EnvFilter::try_new(&spec).unwrap_or_else(|_| EnvFilter::new("info"));
    // The STUN codec logs every malformed datagram at `warn`: a flood of garbage at the
    // relay port would flood the log. Its errors stay; an explicit directive wins.
    if !spec.contains("stun_types") {
        if let Ok(quiet) = "stun_types=error".parse() {
            filter = filter.add_directive(quiet);
        }
    }
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    match config.log.format {
        LogFormat::Json => builder.json().init(),
        LogFormat::Human => builder.init(),
    }
}
