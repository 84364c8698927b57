//! `relay`: TURN relay load with coturn's own client, so the same load can be pointed at
//! the edge's relay or at coturn (`bench/relay-compare.sh` runs both in one go).
//!
//! `procs` parallel `turnutils_uclient -y -c` processes (one tops out near 15-20k msgs/s by
//! its own pacing) share `allocations` sessions: each session is one allocation, paired
//! client to client, so a delivered message crossed the relay twice (client → its relay
//! socket → the other relay socket → the other client). Credentials are the REST scheme
//! (`-W secret`) for both servers. Figures cover the data phase only: from the moment every
//! process has made its allocations (its second "Total connect time" line, or its first
//! progress line with messages sent) until the last growth of any process's received count
//! (uclient prints progress about once a second and lingers for seconds after its last
//! message, so the window is exact to about a second).
//!
//! With `peer` set, each session sends to that UDP echo (`turnutils_peer`) instead (`-e`): a
//! message goes client → its relay socket → the echo → back in, so it still crosses the
//! relay twice, but through real relay sockets both ways; with `-y` both ends are
//! allocations of the same relay, which may hand the datagram over in the process.
//!
//! - relayed packets/s = 2 × messages delivered in the data window / the window (packets
//!   lost on the way are not counted; what a process received before the window began, while
//!   another still allocated, is left out), Mbit/s = relayed packets × payload bytes × 8 / window;
//! - server CPU per relayed packet = utime + stime of the server process over the data
//!   window (from `/proc/<pid>/stat`) / relayed packets.

use serde::Serialize;
use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

/// What to run.
#[derive(Debug, Clone)]
pub struct RelayLoad {
    /// The TURN server (loopback only).
    pub server: SocketAddr,
    /// The REST shared secret (`-W`).
    pub secret: String,
    /// Process id of the server, for its CPU and RSS.
    pub server_pid: Option<u32>,
    /// Allocations in all (uclient sessions), split over `procs`.
    pub allocations: usize,
    /// uclient processes in parallel.
    pub procs: usize,
    /// Messages per session.
    pub messages_per_session: u64,
    /// Payload bytes per message.
    pub size: usize,
    /// Milliseconds between a session's messages (0: as fast as uclient goes).
    pub interval_ms: u64,
    /// Client to relay over TCP (`-t`).
    pub tcp: bool,
    /// Send to this UDP echo (a `turnutils_peer`, `-e`/`-r`) instead of client to client.
    pub peer: Option<SocketAddr>,
    /// Hard bound on each uclient process.
    pub timeout: Duration,
}

/// What a run measured.
#[derive(Debug, Clone, Serialize)]
pub struct RelayReport {
    /// Allocations asked for.
    pub allocations: usize,
    /// uclient processes that printed their totals.
    pub procs_ok: usize,
    /// Messages sent by the clients.
    pub sent: u64,
    /// Messages that came back to a client.
    pub delivered: u64,
    /// (sent − delivered) / sent, percent.
    pub loss_pct: f64,
    /// Seconds from "all allocations made" to the last client's totals.
    pub data_window_s: f64,
    /// Seconds the allocation phase took (first start to last "connect time").
    pub connect_s: f64,
    /// Delivered messages / window.
    pub delivered_msgs_per_s: f64,
    /// 2 × delivered / window.
    pub relayed_packets_per_s: f64,
    /// Relayed payload megabits per second.
    pub relayed_mbit_per_s: f64,
    /// Server CPU seconds in the data window (`None`: no pid).
    pub server_cpu_s: Option<f64>,
    /// Server CPU µs per relayed packet.
    pub server_cpu_us_per_packet: Option<f64>,
    /// Share of one core the server used in the window, percent.
    pub server_cpu_pct: Option<f64>,
    /// Server RSS at the end, MB.
    pub server_rss_mb: Option<f64>,
    /// Average round trip reported by uclient (whole ms resolution), weighted by delivered.
    pub rtt_avg_ms: f64,
    /// Messages received before the data phase began (by processes that finished their
    /// allocations before the others), left out of the packets per second and per CPU.
    pub delivered_before_window: u64,
    /// The command each process ran (with its share of sessions).
    pub command: String,
}

/// Runs the load once and measures it.
pub fn run(load: &RelayLoad) -> Result<RelayReport, String> {
    if !load.server.ip().is_loopback() {
        return Err(format!(
            "refusing: {} is not a loopback address",
            load.server
        ));
    }
    let uclient = tool("turnutils_uclient")?;
    let procs = load.procs.max(1);
    // -y pairs sessions, so each process gets an even count.
    let per_proc = match load.peer {
        None => (load.allocations / procs).max(2) & !1,
        Some(_) => (load.allocations / procs).max(1),
    };
    let args = |sessions: usize| -> Vec<String> {
        let mut a = Vec::new();
        if load.tcp {
            a.push("-t".to_owned());
        }
        match load.peer {
            None => a.push("-y".to_owned()),
            Some(peer) => a.extend([
                "-e".to_owned(),
                peer.ip().to_string(),
                "-r".to_owned(),
                peer.port().to_string(),
            ]),
        }
        a.extend(
            [
                "-p",
                &load.server.port().to_string(),
                "-W",
                &load.secret,
                "-c",
                "-m",
                &sessions.to_string(),
                "-n",
                &load.messages_per_session.to_string(),
                "-l",
                &load.size.to_string(),
                "-z",
                &load.interval_ms.to_string(),
                &load.server.ip().to_string(),
            ]
            .map(str::to_owned),
        );
        a
    };
    let shown = args(per_proc)
        .iter()
        .map(|a| {
            if *a == load.secret {
                "SECRET"
            } else {
                a.as_str()
            }
        })
        .collect::<Vec<_>>()
        .join(" ");
    let command = format!("{procs} x turnutils_uclient {shown}");
    let started = Instant::now();
    let (tx, rx) = mpsc::channel::<Event>();
    let mut children: Vec<Child> = Vec::new();
    let mut readers = Vec::new();
    for index in 0..procs {
        let mut child = Command::new(&uclient)
            .args(args(per_proc))
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .map_err(|e| format!("cannot start turnutils_uclient: {e}"))?;
        let out = child.stdout.take().ok_or("no stdout")?;
        let tx = tx.clone();
        let peer_mode = load.peer.is_some();
        readers.push(std::thread::spawn(move || {
            let mut text = String::new();
            let (mut connects, mut flowing) = (0, false);
            // When this process's received count last grew (its progress lines come about
            // once a second): after that it only lingers, waiting for stragglers.
            let (mut last_recv, mut last_growth) = (0u64, None::<Instant>);
            for line in BufReader::new(out).lines().map_while(Result::ok) {
                // With -y uclient prints its connect time twice (both sides of the pairs),
                // towards a peer once; the last, or the first progress line with messages
                // sent, starts the data.
                if !flowing {
                    if line.contains("Total connect time") {
                        connects += 1;
                    }
                    let sending =
                        line.contains("tot_send_msgs=") && !line.contains("tot_send_msgs=0,");
                    let all_connected = connects >= if peer_mode { 1 } else { 2 };
                    if all_connected || sending {
                        flowing = true;
                        let _ = tx.send(Event::Connected);
                    }
                }
                if line.contains("start_mclient: msz=") {
                    if let Some(r) = progress_recv(&line) {
                        if r > last_recv {
                            last_recv = r;
                            last_growth = Some(Instant::now());
                            let _ = tx.send(Event::Received { index, total: r });
                        }
                    }
                }
                text.push_str(&line);
                text.push('\n');
            }
            let _ = tx.send(Event::Exited);
            (text, last_growth)
        }));
        children.push(child);
    }
    drop(tx);
    let deadline = started + load.timeout;
    let (mut connected, mut exited) = (0, 0);
    // Each process's received count as of its last progress line: a process that made its
    // allocations early sends while the others still allocate, and what it received before
    // the data phase is left out of the phase's packets as its CPU is.
    let mut received = vec![0u64; procs];
    let mut received_before = 0u64;
    let mut data_start: Option<(Instant, Option<f64>)> = None;
    // The server's CPU every 100 ms, to read it where the data phase turns out to end.
    let mut samples: Vec<(Instant, f64)> = Vec::new();
    while exited < procs && Instant::now() < deadline {
        match rx.recv_timeout(Duration::from_millis(100)) {
            Ok(Event::Connected) => connected += 1,
            Ok(Event::Exited) => exited += 1,
            Ok(Event::Received { index, total }) => received[index] = total,
            Err(mpsc::RecvTimeoutError::Timeout) => {}
            Err(mpsc::RecvTimeoutError::Disconnected) => break,
        }
        let now = Instant::now();
        let cpu = load.server_pid.and_then(cpu_seconds);
        if let Some(c) = cpu {
            samples.push((now, c));
        }
        if data_start.is_none() && connected + exited >= procs {
            data_start = Some((now, cpu));
            received_before = received.iter().sum();
        }
    }
    for c in &mut children {
        // Past the deadline: stopped, and what it printed so far still counts.
        let _ = c.kill();
        let _ = c.wait();
    }
    let rss = load.server_pid.and_then(rss_mb);
    let finished: Vec<(String, Option<Instant>)> = readers
        .into_iter()
        .map(|r| r.join().unwrap_or_default())
        .collect();
    let outputs: Vec<String> = finished.iter().map(|(t, _)| t.clone()).collect();
    let (data_at, cpu_start) = data_start.unwrap_or((started, None));
    // The data phase ends with the last growth of any process's received count (uclient
    // lingers for seconds after its last message); the CPU sample at or just after it.
    let end = finished
        .iter()
        .filter_map(|(_, t)| *t)
        .max()
        .unwrap_or_else(Instant::now)
        .max(data_at);
    let cpu_end = samples
        .iter()
        .find(|(t, _)| *t >= end)
        .or(samples.last())
        .map(|(_, c)| *c);
    let mut report = RelayReport {
        allocations: per_proc * procs,
        procs_ok: 0,
        sent: 0,
        delivered: 0,
        loss_pct: 0.0,
        data_window_s: (end - data_at).as_secs_f64(),
        connect_s: (data_at - started).as_secs_f64(),
        delivered_msgs_per_s: 0.0,
        relayed_packets_per_s: 0.0,
        relayed_mbit_per_s: 0.0,
        server_cpu_s: None,
        server_cpu_us_per_packet: None,
        server_cpu_pct: None,
        server_rss_mb: rss,
        rtt_avg_ms: 0.0,
        delivered_before_window: 0,
        command,
    };
    let mut rtt_weighted = 0.0;
    for out in &outputs {
        let Some(t) = totals(out) else { continue };
        report.procs_ok += 1;
        report.sent += t.sent;
        report.delivered += t.recv;
        rtt_weighted += t.rtt_ms * t.recv as f64;
    }
    if report.sent > 0 {
        report.loss_pct =
            100.0 * (report.sent - report.delivered.min(report.sent)) as f64 / report.sent as f64;
    }
    if report.delivered > 0 {
        report.rtt_avg_ms = rtt_weighted / report.delivered as f64;
    }
    report.delivered_before_window = received_before.min(report.delivered);
    let packets = 2.0 * (report.delivered - report.delivered_before_window) as f64;
    let w = report.data_window_s.max(1e-9);
    report.delivered_msgs_per_s = packets / 2.0 / w;
    report.relayed_packets_per_s = packets / w;
    report.relayed_mbit_per_s = packets * load.size as f64 * 8.0 / w / 1e6;
    if let (Some(a), Some(b)) = (cpu_start, cpu_end) {
        let cpu = b - a;
        report.server_cpu_s = Some(cpu);
        report.server_cpu_pct = Some(100.0 * cpu / w);
        if packets > 0.0 {
            report.server_cpu_us_per_packet = Some(1e6 * cpu / packets);
        }
    }
    Ok(report)
}

/// Starts `turnutils_peer` (coturn's UDP echo) on `at` and waits until it listens.
pub fn start_echo(at: SocketAddr) -> Result<Child, String> {
    if !at.ip().is_loopback() {
        return Err(format!("refusing: {at} is not a loopback address"));
    }
    let mut child = Command::new(tool("turnutils_peer")?)
        .args(["-L", &at.ip().to_string(), "-p", &at.port().to_string()])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .map_err(|e| format!("cannot start turnutils_peer: {e}"))?;
    let deadline = Instant::now() + Duration::from_secs(5);
    // Bound: the port is taken once the echo listens.
    while std::net::UdpSocket::bind(at).is_ok() {
        if Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            return Err(format!("turnutils_peer did not listen on {at} within 5 s"));
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    Ok(child)
}

enum Event {
    /// A process made its allocations.
    Connected,
    /// A process's output ended.
    Exited,
    /// A process's received count grew to `total` (its progress line).
    Received { index: usize, total: u64 },
}

/// The received count of a progress line (`..., tot_recv_msgs=N, ...`).
fn progress_recv(line: &str) -> Option<u64> {
    let rest = &line[line.find("tot_recv_msgs=")? + "tot_recv_msgs=".len()..];
    rest.chars()
        .take_while(|c| c.is_ascii_digit())
        .collect::<String>()
        .parse()
        .ok()
}

struct Totals {
    sent: u64,
    recv: u64,
    rtt_ms: f64,
}

/// The totals uclient prints last: `tot_send_msgs=N, tot_recv_msgs=M` (the line without
/// `msz=`) and `Average round trip delay X ms`.
fn totals(out: &str) -> Option<Totals> {
    let number_after = |line: &str, key: &str| -> Option<f64> {
        let rest = &line[line.find(key)? + key.len()..];
        let num: String = rest
            .chars()
            .take_while(|c| c.is_ascii_digit() || *c == '.')
            .collect();
        num.parse().ok()
    };
    let line = out
        .lines()
        .rev()
        .find(|l| l.contains("start_mclient: tot_send_msgs="))?;
    let rtt = out
        .lines()
        .find_map(|l| number_after(l, "Average round trip delay "))
        .unwrap_or(0.0);
    Some(Totals {
        sent: number_after(line, "tot_send_msgs=")? as u64,
        recv: number_after(line, "tot_recv_msgs=")? as u64,
        rtt_ms: rtt,
    })
}

fn tool(name: &str) -> Result<PathBuf, String> {
    let path = std::env::var_os("PATH").unwrap_or_default();
    std::env::split_paths(&path)
        .map(|dir| dir.join(name))
        .find(|p| p.is_file())
        .ok_or_else(|| {
            format!("`{name}` is not installed (Debian: apt-get install coturn; ../shared/peers/install.sh)")
        })
}

fn cpu_seconds(pid: u32) -> Option<f64> {
    crate::edge_process::cpu_seconds(pid)
}

fn rss_mb(pid: u32) -> Option<f64> {
    crate::edge_process::rss_of(pid).map(|b| b as f64 / 1e6)
}

impl RelayReport {
    /// The report as a table.
    pub fn table(&self, label: &str) -> String {
        let opt = |v: Option<f64>, d: usize| match v {
            Some(x) => format!("{x:.d$}"),
            None => "–".to_owned(),
        };
        format!(
            "relay ({label}): {} allocations, {} of the uclient processes finished\n\
             {}\n\
             sent {}  delivered {} ({} before the window)  loss {:.2} %  connect {:.1} s  data window {:.2} s\n\
             delivered {:.0} msgs/s  relayed {:.0} packets/s  {:.1} Mbit/s  rtt {:.1} ms\n\
             server CPU {} s ({} % of a core), {} µs per relayed packet, RSS {} MB\n",
            self.allocations,
            self.procs_ok,
            self.command,
            self.sent,
            self.delivered,
            self.delivered_before_window,
            self.loss_pct,
            self.connect_s,
            self.data_window_s,
            self.delivered_msgs_per_s,
            self.relayed_packets_per_s,
            self.relayed_mbit_per_s,
            self.rtt_avg_ms,
            opt(self.server_cpu_s, 2),
            opt(self.server_cpu_pct, 0),
            opt(self.server_cpu_us_per_packet, 2),
            opt(self.server_rss_mb, 1),
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn totals_are_the_last_summary_line_not_a_progress_line() {
        let out = "\
0: : start_mclient: msz=4, tot_send_msgs=10, tot_recv_msgs=9, tot_send_bytes ~ 1000
1: : start_mclient: tot_send_msgs=800, tot_recv_msgs=790
1: : Total lost packets 10 (1.25%), total send dropped 0 (0.000000%)
1: : Average round trip delay 3.500000 ms; min = 0 ms, max = 9 ms
";
        let t = totals(out).expect("totals");
        assert_eq!((t.sent, t.recv), (800, 790));
        assert!((t.rtt_ms - 3.5).abs() < 1e-9);
        assert!(totals("no summary here").is_none());
        assert_eq!(
            progress_recv("0: : start_mclient: msz=4, tot_send_msgs=10, tot_recv_msgs=9, x"),
            Some(9)
        );
    }
}
