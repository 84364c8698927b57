//! A spawned `missive-edge` on a temp data dir (for `--spawn`), and the server figures read
//! from its `/proc` entry.

use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

/// A running edge started by the bench.
pub struct SpawnedEdge {
    child: Child,
    bin: PathBuf,
    args: Vec<String>,
    /// QUIC (and TCP) address.
    pub addr: SocketAddr,
    /// PEM certificate to trust.
    pub cert: PathBuf,
    /// The STUN/TURN relay's address, when the edge runs one (`--relay-listen`).
    pub relay: Option<SocketAddr>,
    /// Keeps the temp data dir alive for the run.
    dir: tempfile::TempDir,
    /// CPU seconds of earlier incarnations (before a restart).
    cpu_before_restart: f64,
    /// Peak RSS of earlier incarnations.
    peak_before_restart: u64,
}

/// Finds `missive-edge`: an explicit path, else next to this binary, else on `PATH`.
pub fn find_edge_bin(explicit: Option<&Path>) -> PathBuf {
    if let Some(p) = explicit {
        return p.to_owned();
    }
    if let Ok(me) = std::env::current_exe() {
        let sibling = me.with_file_name(format!("missive-edge{}", std::env::consts::EXE_SUFFIX));
        if sibling.exists() {
            return sibling;
        }
    }
    PathBuf::from("missive-edge")
}

impl SpawnedEdge {
    /// Starts an edge on a fresh temp dir, listening on a free loopback port.
    pub fn start(bin: &Path, extra: &[String]) -> Result<Self, String> {
        let dir = tempfile::tempdir().map_err(|e| e.to_string())?;
        let mut args = vec![
            "--data-dir".to_owned(),
            dir.path().display().to_string(),
            "--listen".into(),
            "127.0.0.1:0".into(),
            "--metrics-listen".into(),
            "127.0.0.1:0".into(),
            // Bench clients legitimately exceed a human's send rate, and the offline scenario
            // queues far more for one recipient than a person would leave unread.
            "--send-rate".into(),
            "10000000".into(),
            "--mailbox-max-items".into(),
            "100000000".into(),
            "--mailbox-max-items-per-sender".into(),
            "100000000".into(),
        ];
        args.extend(extra.iter().cloned());
        let (child, addr, cert, relay) = spawn(bin, &args)?;
        Ok(Self {
            child,
            bin: bin.to_owned(),
            args,
            addr,
            cert,
            relay,
            dir,
            cpu_before_restart: 0.0,
            peak_before_restart: 0,
        })
    }

    /// Process id.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// SIGKILL, then start again on the same data dir and port.
    pub fn kill9_and_restart(&mut self) -> Result<Duration, String> {
        self.cpu_before_restart += cpu_seconds(self.pid()).unwrap_or(0.0);
        self.peak_before_restart = self
            .peak_before_restart
            .max(peak_rss(self.pid()).unwrap_or(0));
        let _ = self.child.kill();
        let _ = self.child.wait();
        let started = Instant::now();
        let mut args = self.args.clone();
        if let Some(i) = args.iter().position(|a| a == "--listen") {
            args[i + 1] = self.addr.to_string();
        }
        let (child, addr, _, _) = spawn(&self.bin, &args)?;
        self.child = child;
        self.addr = addr;
        Ok(started.elapsed())
    }

    /// CPU seconds (user + system) used so far, across restarts.
    pub fn cpu_seconds(&self) -> f64 {
        self.cpu_before_restart + cpu_seconds(self.pid()).unwrap_or(0.0)
    }

    /// Peak resident set size in bytes, across restarts.
    pub fn peak_rss(&self) -> u64 {
        self.peak_before_restart
            .max(peak_rss(self.pid()).unwrap_or(0))
    }

    /// Bytes in the edge's data dir (the sum of its files' lengths, recursively): what the
    /// store holds on disk, garbage not yet compacted included.
    pub fn data_dir_bytes(&self) -> u64 {
        dir_bytes(self.dir.path())
    }

    /// Bytes of every key and value the edge's store holds, asked of the running edge over
    /// its admin socket (`stats`): what writes added, whatever the engine's file layout (fjall
    /// preallocates its journal, so file lengths do not grow with small writes).
    pub fn stored_bytes(&self) -> Result<u64, String> {
        use std::io::{BufRead, BufReader, Write};
        let path = self.dir.path().join("admin.sock");
        let mut sock = std::os::unix::net::UnixStream::connect(&path)
            .map_err(|e| format!("admin socket {}: {e}", path.display()))?;
        sock.write_all(b"{\"action\":\"stats\"}\n")
            .map_err(|e| format!("admin socket: {e}"))?;
        let mut line = String::new();
        BufReader::new(sock)
            .read_line(&mut line)
            .map_err(|e| format!("admin socket: {e}"))?;
        let answer: serde_json::Value =
            serde_json::from_str(&line).map_err(|e| format!("admin answer {line:?}: {e}"))?;
        answer["stored_bytes"]
            .as_u64()
            .ok_or_else(|| format!("admin answer without stored_bytes: {line}"))
    }

    /// Current resident set size in bytes.
    pub fn rss(&self) -> u64 {
        status_kib(self.pid(), "VmRSS:").unwrap_or(0) * 1024
    }
}

impl Drop for SpawnedEdge {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The lengths of the files under `dir`, summed (unreadable entries count 0).
fn dir_bytes(dir: &Path) -> u64 {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return 0;
    };
    entries
        .flatten()
        .map(|e| match e.file_type() {
            Ok(t) if t.is_dir() => dir_bytes(&e.path()),
            Ok(t) if t.is_file() => e.metadata().map(|m| m.len()).unwrap_or(0),
            _ => 0,
        })
        .sum()
}

/// The started child, its QUIC address, certificate and relay address (from the ready line).
type Spawned = (Child, SocketAddr, PathBuf, Option<SocketAddr>);

fn spawn(bin: &Path, args: &[String]) -> Result<Spawned, String> {
    let mut child = Command::new(bin)
        .args(args)
        .env("RUST_LOG", "warn")
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .map_err(|e| format!("cannot start {}: {e}", bin.display()))?;
    let stdout = child.stdout.take().ok_or("no stdout")?;
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines().map_while(Result::ok) {
            if tx.send(line).is_err() {
                break;
            }
        }
    });
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        let line = rx
            .recv_timeout(left)
            .map_err(|_| "edge did not print its ready line within 60 s".to_owned())?;
        if let Some(rest) = line.strip_prefix("missive-edge ready ") {
            let field = |name: &str| {
                rest.split(' ')
                    .find_map(|kv| kv.strip_prefix(&format!("{name}=")))
                    .map(str::to_owned)
                    .ok_or(format!("ready line lacks {name}"))
            };
            let addr = field("quic")?.parse().map_err(|e| format!("{e}"))?;
            let cert = PathBuf::from(field("cert")?);
            let relay = field("relay").ok().and_then(|r| r.parse().ok());
            return Ok((child, addr, cert, relay));
        }
    }
}

/// CPU seconds (user + system) process `pid` has used so far.
pub fn cpu_seconds(pid: u32) -> Option<f64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // Fields after the parenthesised command name; utime and stime are the 14th and 15th.
    let rest = &stat[stat.rfind(')')? + 2..];
    let fields: Vec<&str> = rest.split(' ').collect();
    let utime: f64 = fields.get(11)?.parse().ok()?;
    let stime: f64 = fields.get(12)?.parse().ok()?;
    Some((utime + stime) / clock_ticks())
}

fn clock_ticks() -> f64 {
    // USER_HZ is 100 on every Linux configuration we run on.
    100.0
}

fn status_kib(pid: u32, key: &str) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    status
        .lines()
        .find_map(|l| l.strip_prefix(key))
        .and_then(|v| v.split_whitespace().next()?.parse().ok())
}

fn peak_rss(pid: u32) -> Option<u64> {
    status_kib(pid, "VmHWM:").map(|k| k * 1024)
}

/// Current resident set size of process `pid` in bytes.
pub fn rss_of(pid: u32) -> Option<u64> {
    status_kib(pid, "VmRSS:").map(|k| k * 1024)
}
