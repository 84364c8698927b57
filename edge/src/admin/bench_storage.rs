//! `missive-edge admin bench-storage`: the storage API driven directly, without the network.
//!
//! N writer tasks append envelopes of random (incompressible, like ciphertext) bytes to
//! recipients' mailboxes, each waiting for its durable ack before the next append, as a
//! connection with one send in flight would. Then it measures what an operator pays for the
//! resulting queue: disk per envelope, RSS, the time to shut down and reopen, and the time a
//! client needs to drain a 10,000-message mailbox (read + ack in batches of 256).

use crate::config::Config;
use crate::shared::now_ms;
use hdrhistogram::Histogram;
use missive_proto::{ClientMsgId, DeviceEnvelope, DeviceId, ServerSeq};
use missive_storage::{AppendOutcome, Engine, MailboxId, Store, StoreConfig};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// The mailbox whose drain is timed, and who filled it.
const DRAINER: &str = "bench-drainer";
const DRAIN_SENDER: &str = "bench-drain-sender";
/// Items a client reads and acks per round while draining, as the edge delivers them.
const DRAIN_BATCH: usize = 256;

/// Options of `admin bench-storage`.
#[derive(clap::Args, Debug, Clone)]
pub struct BenchArgs {
    /// Engine to measure. Default: `storage.engine` of the configuration.
    #[arg(long)]
    pub engine: Option<Engine>,
    /// Concurrent writers, each with one append in flight.
    #[arg(long, default_value_t = 64)]
    pub writers: u64,
    /// Envelopes to append in total.
    #[arg(long, default_value_t = 1_000_000)]
    pub envelopes: u64,
    /// Envelope size, bytes.
    #[arg(long, default_value_t = 100)]
    pub size: usize,
    /// Recipients the envelopes are spread over, one device each.
    #[arg(long, default_value_t = 1000)]
    pub recipients: u64,
    /// Messages in the mailbox whose drain is timed.
    #[arg(long, default_value_t = 10_000)]
    pub drain: u64,
    /// Store directory: must be empty or absent, and is kept. Default: a fresh directory
    /// under the system temp dir, removed afterwards.
    #[arg(long)]
    pub dir: Option<PathBuf>,
    /// Also write the results as JSON to this file.
    #[arg(long)]
    pub json: Option<PathBuf>,
    /// After filling the store, SIGKILL this process instead of shutting down, to measure a
    /// crash reopen afterwards with `--reopen-only`. Needs `--dir`.
    #[arg(long, requires = "dir")]
    pub crash_after_fill: bool,
    /// Only time reopening the existing store in `--dir` (open + first read) and count what
    /// it holds.
    #[arg(long, requires = "dir", conflicts_with = "crash_after_fill")]
    pub reopen_only: bool,
}

/// One row of the results table.
struct Row {
    key: &'static str,
    label: &'static str,
    value: serde_json::Value,
    shown: String,
}

#[derive(Default)]
struct Report {
    rows: Vec<Row>,
}

impl Report {
    fn add(
        &mut self,
        key: &'static str,
        label: &'static str,
        value: impl Into<serde_json::Value>,
        shown: String,
    ) {
        eprintln!("  {label}: {shown}");
        self.rows.push(Row {
            key,
            label,
            value: value.into(),
            shown,
        });
    }

    fn print(&self) {
        let width = self.rows.iter().map(|r| r.label.len()).max().unwrap_or(0);
        println!("| {:width$} | value |", "metric");
        println!("| {:-<width$} | ----- |", "");
        for r in &self.rows {
            println!("| {:width$} | {} |", r.label, r.shown);
        }
    }

    fn write_json(&self, path: &Path) -> Result<(), String> {
        let map: serde_json::Map<String, serde_json::Value> = self
            .rows
            .iter()
            .map(|r| (r.key.to_owned(), r.value.clone()))
            .collect();
        let text = serde_json::to_string_pretty(&map).map_err(|e| e.to_string())?;
        std::fs::write(path, text + "\n").map_err(|e| format!("{}: {e}", path.display()))
    }
}

/// Runs the benchmark described by `args` with the storage tuning of `config`.
pub(super) async fn run(config: &Config, args: BenchArgs) -> Result<(), String> {
    let mut store_config = config.storage.store_config();
    // The benchmark queues its whole load in a few mailboxes: no quota, no watermark.
    store_config.mailbox_max_items = u64::MAX;
    store_config.mailbox_max_bytes = u64::MAX;
    store_config.mailbox_max_items_per_sender = u64::MAX;
    store_config.mailbox_max_bytes_per_sender = u64::MAX;
    store_config.min_free_bytes = 0;
    if let Some(e) = args.engine {
        store_config.engine = e;
    }
    let (dir, temporary) = match &args.dir {
        Some(d) => (d.clone(), false),
        None => (
            std::env::temp_dir().join(format!(
                "missive-bench-storage-{}-{}",
                std::process::id(),
                store_config.engine
            )),
            true,
        ),
    };
    let result = if args.reopen_only {
        reopen_only(&dir, store_config, &args).await
    } else {
        if dir.exists()
            && std::fs::read_dir(&dir)
                .map_err(|e| format!("{}: {e}", dir.display()))?
                .next()
                .is_some()
        {
            return Err(format!(
                "{} is not empty: bench-storage needs a fresh directory",
                dir.display()
            ));
        }
        full(&dir, store_config, &args).await
    };
    if temporary {
        let _ = std::fs::remove_dir_all(&dir);
    }
    let report = result?;
    report.print();
    if let Some(path) = &args.json {
        report.write_json(path)?;
    }
    Ok(())
}

async fn full(dir: &Path, cfg: StoreConfig, args: &BenchArgs) -> Result<Report, String> {
    let err = |e: missive_storage::StorageError| e.to_string();
    let writers = args.writers.max(1);
    let recipients = args.recipients.max(1);
    let mut report = Report::default();
    eprintln!(
        "bench-storage: {} engine in {}: {} writers, {} envelopes of {} bytes to {} recipients",
        cfg.engine,
        dir.display(),
        writers,
        args.envelopes,
        args.size,
        recipients
    );
    report.add(
        "engine",
        "engine",
        cfg.engine.name(),
        cfg.engine.to_string(),
    );
    report.add(
        "workload",
        "workload",
        format!(
            "{} writers, {} envelopes x {} B",
            writers, args.envelopes, args.size
        ),
        format!(
            "{} writers, {} envelopes x {} B, {} recipients",
            writers,
            group(args.envelopes),
            args.size,
            group(recipients)
        ),
    );

    let store = Store::open(dir, cfg.clone(), None).map_err(err)?;
    for r in 0..recipients {
        store
            .register(&recipient(r), DeviceId(1), [1; 32], None, false, now_ms())
            .await
            .map_err(err)?;
    }
    for user in [DRAINER, DRAIN_SENDER] {
        store
            .register(user, DeviceId(1), [2; 32], None, false, now_ms())
            .await
            .map_err(err)?;
    }

    // The append phase.
    let commits_before = store.stats().commits.load(Ordering::Relaxed);
    let acked = Arc::new(AtomicU64::new(0));
    let progress = tokio::spawn(progress(acked.clone(), args.envelopes));
    let started = Instant::now();
    let mut tasks = Vec::new();
    for w in 0..writers {
        let store = store.clone();
        let acked = acked.clone();
        let (count, size) = (args.envelopes, args.size);
        tasks.push(tokio::spawn(async move {
            writer(store, w, writers, count, size, recipients, acked).await
        }));
    }
    let mut hist = new_histogram()?;
    for t in tasks {
        let h = t.await.map_err(|e| e.to_string())??;
        hist.add(h).map_err(|e| e.to_string())?;
    }
    let elapsed = started.elapsed();
    progress.abort();
    let commits = store.stats().commits.load(Ordering::Relaxed) - commits_before;
    let secs = elapsed.as_secs_f64();
    let rate = args.envelopes as f64 / secs;
    report.add(
        "acks_per_sec",
        "acked appends/s",
        rate.round(),
        format!("{} ({:.1} s)", group(rate as u64), secs),
    );
    for (key, label, q) in [
        ("ack_p50_us", "ack latency p50", 0.50),
        ("ack_p99_us", "ack latency p99", 0.99),
        ("ack_p999_us", "ack latency p99.9", 0.999),
    ] {
        let v = hist.value_at_quantile(q);
        report.add(key, label, v, ms(v));
    }
    report.add("ack_max_us", "ack latency max", hist.max(), ms(hist.max()));
    let fsyncs = commits as f64 / secs;
    report.add(
        "fsyncs_per_sec",
        "fsyncs/s (group commits)",
        fsyncs.round(),
        format!(
            "{} (mean {:.1} appends each)",
            group(fsyncs as u64),
            args.envelopes as f64 / commits.max(1) as f64
        ),
    );
    let disk = store.size_on_disk().map_err(err)?;
    report.add(
        "disk_bytes_per_envelope",
        "disk per envelope",
        disk / args.envelopes.max(1),
        format!(
            "{} B ({} MiB in all)",
            group(disk / args.envelopes.max(1)),
            disk >> 20
        ),
    );
    let (rss, peak) = rss_kib();
    report.add(
        "rss_mib",
        "RSS after appends",
        rss / 1024,
        format!("{} MiB (peak {} MiB)", rss / 1024, peak / 1024),
    );

    // The mailbox to drain, among everything else.
    let drain_mb = MailboxId::new(DRAINER, DeviceId(1));
    fill_drain_mailbox(&store, args.drain, args.size, writers).await?;
    if args.crash_after_fill {
        eprintln!(
            "bench-storage: store filled; SIGKILLing myself (reopen with --reopen-only --dir {})",
            dir.display()
        );
        report.print();
        kill_myself();
    }

    let t = Instant::now();
    store.shutdown().await;
    drop(store);
    let shutdown = t.elapsed();
    report.add(
        "shutdown_ms",
        "clean shutdown",
        shutdown.as_millis() as u64,
        secs_text(shutdown),
    );
    let t = Instant::now();
    let store = Store::open(dir, cfg, None).map_err(err)?;
    let first = store
        .read_mailbox(&drain_mb, ServerSeq(0), DRAIN_BATCH, usize::MAX)
        .map_err(err)?;
    let reopen = t.elapsed();
    if first.is_empty() && args.drain > 0 {
        return Err("the drain mailbox is empty after reopen".into());
    }
    report.add(
        "reopen_ms",
        "reopen (open + first read)",
        reopen.as_millis() as u64,
        secs_text(reopen),
    );
    let disk = store.size_on_disk().map_err(err)?;
    report.add(
        "disk_bytes_per_envelope_reopened",
        "disk per envelope after reopen",
        disk / args.envelopes.max(1),
        format!("{} B", group(disk / args.envelopes.max(1))),
    );

    let t = Instant::now();
    let drained = drain(&store, &drain_mb).await?;
    let took = t.elapsed();
    if drained != args.drain {
        return Err(format!("drained {drained} of {} messages", args.drain));
    }
    report.add(
        "drain_ms",
        "mailbox drain (read + ack by 256)",
        took.as_millis() as u64,
        format!("{} ({} messages)", secs_text(took), group(drained)),
    );
    let queued = store.total_queued().map_err(err)? as u64;
    // Every envelope is still queued, plus one receipt per drained message.
    if queued != args.envelopes + drained {
        return Err(format!(
            "{queued} items queued after the run, expected {}",
            args.envelopes + drained
        ));
    }
    store.shutdown().await;
    Ok(report)
}

async fn reopen_only(dir: &Path, cfg: StoreConfig, _args: &BenchArgs) -> Result<Report, String> {
    let err = |e: missive_storage::StorageError| e.to_string();
    let mut report = Report::default();
    report.add(
        "engine",
        "engine",
        cfg.engine.name(),
        cfg.engine.to_string(),
    );
    let t = Instant::now();
    let store = Store::open(dir, cfg, None).map_err(err)?;
    let drain_mb = MailboxId::new(DRAINER, DeviceId(1));
    let first = store
        .read_mailbox(&drain_mb, ServerSeq(0), DRAIN_BATCH, usize::MAX)
        .map_err(err)?;
    let reopen = t.elapsed();
    report.add(
        "reopen_ms",
        "reopen (open + first read)",
        reopen.as_millis() as u64,
        format!("{} (first read: {} items)", secs_text(reopen), first.len()),
    );
    let queued = store.total_queued().map_err(err)? as u64;
    report.add("queued", "items queued", queued, group(queued));
    store.shutdown().await;
    Ok(report)
}

/// Writer `w` of `writers`: appends its share of `total` envelopes, one at a time, and
/// returns its ack latencies in microseconds.
async fn writer(
    store: Store,
    w: u64,
    writers: u64,
    total: u64,
    size: usize,
    recipients: u64,
    acked: Arc<AtomicU64>,
) -> Result<Histogram<u64>, String> {
    let mut hist = new_histogram()?;
    let mut rng = XorShift(0x9e37_79b9_7f4a_7c15 ^ (w + 1));
    let sender = format!("bench-sender-{w}");
    let mut i = w;
    while i < total {
        let to = recipient(i % recipients);
        let t = Instant::now();
        let r = store
            .append_message(
                &sender,
                DeviceId(1),
                msg_id(i),
                &to,
                vec![DeviceEnvelope {
                    device: DeviceId(1),
                    envelope: rng.bytes(size),
                }],
                Vec::new(),
                now_ms(),
            )
            .await
            .map_err(|e| e.to_string())?;
        if !matches!(r, AppendOutcome::Stored { .. }) {
            return Err(format!("append {i} was not stored: {r:?}"));
        }
        hist.saturating_record(t.elapsed().as_micros() as u64);
        acked.fetch_add(1, Ordering::Relaxed);
        i += writers;
    }
    Ok(hist)
}

async fn fill_drain_mailbox(
    store: &Store,
    count: u64,
    size: usize,
    writers: u64,
) -> Result<(), String> {
    let mut tasks = Vec::new();
    for w in 0..writers {
        let store = store.clone();
        tasks.push(tokio::spawn(async move {
            let mut rng = XorShift(0x5851_f42d_4c95_7f2d ^ (w + 1));
            let mut i = w;
            while i < count {
                store
                    .append_message(
                        DRAIN_SENDER,
                        DeviceId(1),
                        msg_id(i),
                        DRAINER,
                        vec![DeviceEnvelope {
                            device: DeviceId(1),
                            envelope: rng.bytes(size),
                        }],
                        Vec::new(),
                        now_ms(),
                    )
                    .await
                    .map_err(|e| e.to_string())?;
                i += writers;
            }
            Ok::<(), String>(())
        }));
    }
    for t in tasks {
        t.await.map_err(|e| e.to_string())??;
    }
    Ok(())
}

/// Reads and acks `mb` in batches like a client draining its queue; returns how many it took.
async fn drain(store: &Store, mb: &MailboxId) -> Result<u64, String> {
    let mut next = ServerSeq(0);
    let mut drained = 0;
    loop {
        let items = store
            .read_mailbox(mb, next, DRAIN_BATCH, usize::MAX)
            .map_err(|e| e.to_string())?;
        let Some((last, _)) = items.last() else {
            return Ok(drained);
        };
        drained += items.len() as u64;
        store
            .ack(mb.clone(), *last, now_ms())
            .await
            .map_err(|e| e.to_string())?;
        next = ServerSeq(last.0 + 1);
    }
}

async fn progress(acked: Arc<AtomicU64>, total: u64) {
    let started = Instant::now();
    let mut tick = tokio::time::interval(Duration::from_secs(5));
    tick.tick().await;
    loop {
        tick.tick().await;
        let n = acked.load(Ordering::Relaxed);
        eprintln!(
            "  … {} / {} acked, {}/s",
            group(n),
            group(total),
            group((n as f64 / started.elapsed().as_secs_f64()) as u64)
        );
    }
}

fn recipient(r: u64) -> String {
    format!("bench-user-{r}")
}

fn msg_id(i: u64) -> ClientMsgId {
    let mut b = [0u8; 16];
    b[8..].copy_from_slice(&i.to_be_bytes());
    ClientMsgId(b)
}

fn new_histogram() -> Result<Histogram<u64>, String> {
    // 1 µs .. 10 min, 3 significant digits.
    Histogram::new_with_bounds(1, 600_000_000, 3).map_err(|e| e.to_string())
}

/// Resident and peak resident memory of this process, KiB (0 where /proc is missing).
fn rss_kib() -> (u64, u64) {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    let field = |name: &str| {
        status
            .lines()
            .find_map(|l| l.strip_prefix(name))
            .and_then(|rest| rest.split_whitespace().next())
            .and_then(|n| n.parse().ok())
            .unwrap_or(0)
    };
    (field("VmRSS:"), field("VmHWM:"))
}

/// Ends the process the way a crash does: no destructor, no flush, no fsync.
fn kill_myself() -> ! {
    let _ = std::process::Command::new("kill")
        .args(["-KILL", &std::process::id().to_string()])
        .status();
    // `kill` missing: abort also skips every destructor and flush.
    std::process::abort()
}

/// xorshift64*: cheap bytes with no structure for the block compressor to find, like
/// ciphertext.
struct XorShift(u64);

impl XorShift {
    fn bytes(&mut self, n: usize) -> Vec<u8> {
        let mut out = Vec::with_capacity(n + 8);
        while out.len() < n {
            self.0 ^= self.0 >> 12;
            self.0 ^= self.0 << 25;
            self.0 ^= self.0 >> 27;
            out.extend_from_slice(&self.0.wrapping_mul(0x2545_f491_4f6c_dd1d).to_le_bytes());
        }
        out.truncate(n);
        out
    }
}

fn ms(us: u64) -> String {
    format!("{:.2} ms", us as f64 / 1000.0)
}

fn secs_text(d: Duration) -> String {
    format!("{:.2} s", d.as_secs_f64())
}

/// 1234567 -> "1,234,567".
fn group(n: u64) -> String {
    let s = n.to_string();
    let mut out = String::new();
    for (i, c) in s.chars().enumerate() {
        if i > 0 && (s.len() - i).is_multiple_of(3) {
            out.push(',');
        }
        out.push(c);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn numbers_are_grouped() {
        assert_eq!(group(0), "0");
        assert_eq!(group(999), "999");
        assert_eq!(group(1000), "1,000");
        assert_eq!(group(1_234_567), "1,234,567");
    }

    #[tokio::test]
    async fn a_small_run_completes_on_both_engines() {
        for engine in Engine::ALL {
            let dir = tempfile::tempdir().unwrap();
            let args = BenchArgs {
                engine: Some(engine),
                writers: 4,
                envelopes: 400,
                size: 100,
                recipients: 10,
                drain: 600,
                dir: Some(dir.path().join("store")),
                json: Some(dir.path().join("out.json")),
                crash_after_fill: false,
                reopen_only: false,
            };
            run(&Config::default(), args.clone()).await.unwrap();
            let json: serde_json::Value =
                serde_json::from_slice(&std::fs::read(dir.path().join("out.json")).unwrap())
                    .unwrap();
            assert_eq!(json["engine"], engine.name());
            assert!(json["acks_per_sec"].as_f64().unwrap() > 0.0);
            // The kept store reopens, holding the appended envelopes and the receipts.
            let reopen = BenchArgs {
                reopen_only: true,
                json: None,
                ..args
            };
            run(&Config::default(), reopen).await.unwrap();
        }
    }
}
