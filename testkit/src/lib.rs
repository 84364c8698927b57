//! Test harness: runs the real `missive-edge` binary as a child process on 127.0.0.1, with a
//! temporary data dir and free ports, so tests of the SDK and the CLI talk to the server that
//! ships instead of a model of it.
//!
//! The binary is the one beside the test executable (`target/<profile>/missive-edge`).
//! `cargo test --workspace` builds it; when only another package's tests are built (e.g.
//! `cargo test -p missive-client`) and it is missing, [`edge_bin`] builds it once. A binary
//! already there is used as it is: after changing the edge, build it again (or run the
//! workspace's tests).

pub mod udp_proxy;

pub use udp_proxy::UdpProxy;

use std::io::{BufRead, BufReader, Read, Write};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Output, Stdio};
use std::sync::{mpsc, OnceLock};
use std::time::{Duration, Instant};

/// How long the edge may take to print its ready line, or to exit after SIGTERM.
const PROCESS_TIMEOUT: Duration = Duration::from_secs(30);

/// The `missive-edge` binary of the running test's build, built first if it is missing.
pub fn edge_bin() -> &'static Path {
    static BIN: OnceLock<PathBuf> = OnceLock::new();
    BIN.get_or_init(|| {
        // target/<profile>/deps/<test>-<hash> → target/<profile>
        let exe = std::env::current_exe().expect("path of the test executable");
        let mut profile_dir = exe.parent().expect("its directory").to_path_buf();
        if profile_dir.ends_with("deps") {
            profile_dir.pop();
        }
        let bin = profile_dir.join(format!("missive-edge{}", std::env::consts::EXE_SUFFIX));
        if !bin.exists() {
            build_edge(&profile_dir);
        }
        bin
    })
}

/// `cargo build -p missive-edge --bin missive-edge` into the target dir `profile_dir` is in.
fn build_edge(profile_dir: &Path) {
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    let mut cmd = Command::new(cargo);
    cmd.args(["build", "-p", "missive-edge", "--bin", "missive-edge"])
        .current_dir(env!("CARGO_MANIFEST_DIR"));
    // What cargo set for this test process (e.g. CARGO_MANIFEST_DIR, which ring's build
    // script watches) would make this build differ from a build from the shell.
    for (name, _) in std::env::vars_os() {
        let name = name.to_string_lossy();
        if [
            "CARGO_MANIFEST_",
            "CARGO_PKG_",
            "CARGO_CRATE_",
            "CARGO_BIN_",
            "CARGO_PRIMARY_",
        ]
        .iter()
        .any(|p| name.starts_with(p))
            || name == "CARGO_TARGET_TMPDIR"
        {
            cmd.env_remove(&*name);
        }
    }
    if let Some(target_dir) = profile_dir.parent() {
        cmd.arg("--target-dir").arg(target_dir);
    }
    if profile_dir.ends_with("release") {
        cmd.arg("--release");
    }
    let built = cmd.status().is_ok_and(|s| s.success());
    assert!(built, "building missive-edge failed: {cmd:?}");
}

/// A running `missive-edge` process. Dropping it kills the process and deletes its data dir.
pub struct Edge {
    child: Child,
    /// The QUIC (UDP) address.
    pub quic: SocketAddr,
    /// The TCP+TLS address (the port of `quic` unless `--tcp-listen` said otherwise); `None`
    /// when TCP is off.
    pub tcp: Option<SocketAddr>,
    /// The operations HTTP address (`/metrics`, `/healthz`, `/readyz`); `None` when off.
    pub metrics: Option<SocketAddr>,
    /// The STUN/TURN relay's UDP address (`--relay-listen`); `None` when off.
    pub relay: Option<SocketAddr>,
    /// The certificate clients must trust (the edge's generated development certificate).
    pub cert: PathBuf,
    /// Holds the data dir (`data/`) and the edge's logs (`edge-<pid>.log`, one per process).
    dir: tempfile::TempDir,
    /// The command line, for [`Edge::restart`].
    args: Vec<String>,
}

impl Edge {
    /// Starts an edge with a fresh data dir on free loopback ports (QUIC and TCP on one port,
    /// metrics on another).
    pub fn start() -> Self {
        Self::start_with(&[])
    }

    /// Like [`Edge::start`] with `extra` command-line flags (e.g. `["--send-rate", "1"]`).
    pub fn start_with(extra: &[&str]) -> Self {
        let dir = tempfile::tempdir().expect("temp dir for the edge");
        let mut args: Vec<String> = vec![
            "--data-dir".into(),
            dir.path().join("data").display().to_string(),
            "--listen".into(),
            "127.0.0.1:0".into(),
            "--metrics-listen".into(),
            "127.0.0.1:0".into(),
        ];
        args.extend(extra.iter().map(|s| s.to_string()));
        let (child, ready) = launch(dir.path(), &args);
        Self {
            child,
            quic: ready.quic,
            tcp: ready.tcp,
            metrics: ready.metrics,
            relay: ready.relay,
            cert: ready.cert,
            dir,
            args,
        }
    }

    /// The edge's data directory.
    pub fn data_dir(&self) -> PathBuf {
        self.dir.path().join("data")
    }

    /// The PEM certificate clients must trust.
    pub fn ca_pem(&self) -> Vec<u8> {
        std::fs::read(&self.cert).expect("read the edge's certificate")
    }

    /// The process id.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// SIGKILL and wait: the edge gets no chance to flush or say goodbye.
    pub fn kill9(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    /// SIGTERM (the edge sends `Goaway`, drains and exits) and wait, bounded, for the exit.
    pub fn terminate(&mut self) -> ExitStatus {
        self.signal("TERM");
        let deadline = Instant::now() + PROCESS_TIMEOUT;
        loop {
            if let Some(status) = self.child.try_wait().expect("wait for missive-edge") {
                return status;
            }
            assert!(
                Instant::now() < deadline,
                "missive-edge did not exit after SIGTERM; its log:\n{}",
                self.logs()
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Starts the edge again (after [`Edge::terminate`] or [`Edge::kill9`]; a running one is
    /// killed first) with the same flags, data dir and ports.
    pub fn restart(&mut self) {
        self.kill9();
        let mut args = self.args.clone();
        set_flag(&mut args, "--listen", self.quic);
        if let Some(tcp) = self.tcp {
            set_flag(&mut args, "--tcp-listen", tcp);
        }
        if let Some(metrics) = self.metrics {
            set_flag(&mut args, "--metrics-listen", metrics);
        }
        let (child, ready) = launch(self.dir.path(), &args);
        self.child = child;
        assert_eq!(
            (ready.quic, ready.tcp, ready.metrics),
            (self.quic, self.tcp, self.metrics),
            "restarted on other ports"
        );
    }

    /// Sends a signal by name (e.g. `"HUP"`, `"TERM"`).
    pub fn signal(&self, name: &str) {
        let sent = Command::new("kill")
            .args([format!("-{name}"), self.child.id().to_string()])
            .status()
            .is_ok_and(|s| s.success());
        assert!(sent, "kill -{name} {} failed", self.child.id());
    }

    /// `GET path` on the operations endpoint: (status, body).
    pub fn http_get(&self, path: &str) -> (u16, String) {
        let addr = self.metrics.expect("the metrics endpoint is on");
        let mut s = std::net::TcpStream::connect(addr).expect("connect to the metrics endpoint");
        s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
        write!(
            s,
            "GET {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"
        )
        .unwrap();
        let mut out = String::new();
        s.read_to_string(&mut out).expect("read the HTTP answer");
        let status = out
            .split(' ')
            .nth(1)
            .and_then(|c| c.parse().ok())
            .unwrap_or(0);
        let body = out.split_once("\r\n\r\n").map_or("", |(_, b)| b).to_owned();
        (status, body)
    }

    /// The value of the first `/metrics` sample line starting with `line_start` (the name and
    /// labels, e.g. `missive_errors_total{code="rate_limited"}`), or `None` when there is none.
    pub fn try_metric(&self, line_start: &str) -> Option<f64> {
        let (_, body) = self.http_get("/metrics");
        body.lines()
            .find_map(|l| l.strip_prefix(line_start)?.strip_prefix(' '))
            .and_then(|v| v.trim().parse().ok())
    }

    /// Like [`Edge::try_metric`]; panics (showing `/metrics`) when the sample is missing.
    pub fn metric(&self, line_start: &str) -> f64 {
        self.try_metric(line_start).unwrap_or_else(|| {
            panic!(
                "no metric {line_start} in:\n{}",
                self.http_get("/metrics").1
            )
        })
    }

    /// Runs `missive-edge --data-dir DIR admin ARGS` to completion: on a running edge the
    /// action goes through its admin socket (e.g. `["invite"]` mints an invite token).
    pub fn admin(&self, args: &[&str]) -> Output {
        Command::new(edge_bin())
            .arg("--data-dir")
            .arg(self.data_dir())
            .arg("admin")
            .args(args)
            .env("RUST_LOG", "warn")
            .output()
            .expect("run missive-edge admin")
    }

    /// Everything the edge logged (stderr) so far, across restarts.
    pub fn logs(&self) -> String {
        logs_in(self.dir.path())
    }
}

impl Drop for Edge {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        // A failing test deletes the data dir with its logs: show them first.
        if std::thread::panicking() {
            let logs = self.logs();
            let lines: Vec<&str> = logs.lines().collect();
            let tail = &lines[lines.len().saturating_sub(200)..];
            eprintln!(
                "missive-edge log (last {} lines):\n{}",
                tail.len(),
                tail.join("\n")
            );
        }
    }
}

/// Sets `flag`'s value in `args`, replacing the one there (a flag may be given only once).
fn set_flag(args: &mut Vec<String>, flag: &str, value: SocketAddr) {
    match args.iter().position(|a| a == flag) {
        Some(i) => args[i + 1] = value.to_string(),
        None => args.extend([flag.to_owned(), value.to_string()]),
    }
}

/// What the edge's ready line says.
struct Ready {
    quic: SocketAddr,
    tcp: Option<SocketAddr>,
    metrics: Option<SocketAddr>,
    relay: Option<SocketAddr>,
    cert: PathBuf,
}

/// Starts `missive-edge ARGS` with its stderr in `dir/edge-<pid>.log` and waits for
/// `missive-edge ready quic=ADDR tcp=ADDR|off metrics=ADDR|off media=ADDR|off relay=ADDR|off admin=PATH|off cert=PATH`.
fn launch(dir: &Path, args: &[String]) -> (Child, Ready) {
    let mut child = Command::new(edge_bin())
        .args(args)
        .env("RUST_LOG", "info")
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn missive-edge");
    let (tx, rx) = mpsc::channel();
    let stdout = child.stdout.take().expect("piped stdout");
    std::thread::spawn(move || {
        // Reads to the end, past the ready line: the edge must never write into a closed pipe.
        for line in BufReader::new(stdout).lines().map_while(Result::ok) {
            let _ = tx.send(line);
        }
    });
    let stderr = child.stderr.take().expect("piped stderr");
    let log_path = dir.join(format!("edge-{}.log", child.id()));
    std::thread::spawn(move || {
        let mut log = std::fs::File::create(log_path).ok();
        for line in BufReader::new(stderr).lines().map_while(Result::ok) {
            if let Some(f) = log.as_mut() {
                let _ = writeln!(f, "{line}");
            }
        }
    });
    let deadline = Instant::now() + PROCESS_TIMEOUT;
    let line = loop {
        match rx.recv_timeout(deadline.saturating_duration_since(Instant::now())) {
            Ok(line) if line.starts_with("missive-edge ready ") => break line,
            Ok(_) => {}
            Err(_) => {
                let _ = child.kill();
                panic!(
                    "missive-edge did not become ready ({:?}); its log:\n{}",
                    child.wait(),
                    logs_in(dir)
                );
            }
        }
    };
    let field = |name: &str| -> &str {
        line.split(' ')
            .find_map(|kv| kv.strip_prefix(name)?.strip_prefix('='))
            .unwrap_or_else(|| panic!("ready line lacks {name}: {line}"))
    };
    let ready = Ready {
        quic: field("quic").parse().expect("quic address"),
        tcp: field("tcp").parse().ok(),
        metrics: field("metrics").parse().ok(),
        // Optional: an edge built before the relay has no such field.
        relay: line
            .split(' ')
            .find_map(|kv| kv.strip_prefix("relay="))
            .and_then(|v| v.parse().ok()),
        // Last on the line: the path may contain spaces.
        cert: PathBuf::from(line.split_once(" cert=").expect("cert path").1),
    };
    (child, ready)
}

/// The contents of the `edge-*.log` files in `dir`, oldest process first.
fn logs_in(dir: &Path) -> String {
    let mut files: Vec<_> = std::fs::read_dir(dir)
        .into_iter()
        .flatten()
        .flatten()
        .filter(|e| e.file_name().to_string_lossy().starts_with("edge-"))
        .filter_map(|e| Some((e.metadata().ok()?.modified().ok()?, e.path())))
        .collect();
    files.sort();
    files
        .iter()
        .map(|(_, p)| std::fs::read_to_string(p).unwrap_or_default())
        .collect()
}
