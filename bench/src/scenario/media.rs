//! `media`: the media path end to end through the SDK and the real edge.
//!
//! 1. One file of `--file-mb` MB uploaded on 4 QUIC streams, then downloaded by another
//!    user: MB/s each way, the edge's and the SDK clients' CPU per MB each way, time to the
//!    first downloaded byte, the edge's RSS above idle while the upload runs.
//! 2. The same bytes copied over one plain TLS 1.3 connection (rustls, loopback, this
//!    process) into a synced file, into a file, and over the wire alone: the baselines the
//!    transfers are compared with (`*_share_of_tls_{synced,file,wire}`).
//! 3. `--clients` uploaders at once, a 1 MB "photo" each: upload time p50/p99.
//!
//! With `--rounds N`, parts 1 and 2 run N times in turn, each with a fresh file, and every
//! figure is the median of its N values (rates and shares also give their `_min` and `_max`).

use super::{Knobs, Run, Under};
use crate::fleet::{connect_all, register_users, run_prefix};
use crate::tracker::Tracker;
use missive_client::transfer::upload::UploadSource;
use missive_proto::BlobId;
use std::collections::BTreeMap;
use std::path::Path;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// Size of each concurrent uploader's photo.
const PHOTO_BYTES: usize = 1 << 20;

/// Random bytes into `path`, written in pieces (a 1 GiB file never sits in memory).
fn random_file(path: &Path, len: u64) -> Result<BlobId, String> {
    use rand::RngCore;
    use std::io::Write;
    let mut file = std::fs::File::create(path).map_err(|e| e.to_string())?;
    let mut hasher = blake3::Hasher::new();
    let mut buf = vec![0u8; 1 << 20];
    let mut left = len;
    while left > 0 {
        let n = left.min(buf.len() as u64) as usize;
        rand::thread_rng().fill_bytes(&mut buf[..n]);
        hasher.update(&buf[..n]);
        file.write_all(&buf[..n]).map_err(|e| e.to_string())?;
        left -= n as u64;
    }
    Ok(BlobId(*hasher.finalize().as_bytes()))
}

/// Writes `len` bytes to a scratch file under `dir` and deletes it, so the page cache the
/// timed phases write into is memory touched before. In a VM the first touch of a guest page
/// is slow (on the 2-core box of bench/RESULTS.md, writing a file cost 0.92 ms of CPU per
/// MB into fresh memory and 0.22 ms into pages a deleted file had used); without this, the
/// transfers (which run first) pay it and the TLS copies (which reuse the pages of the
/// deleted download) do not.
fn touch_page_cache(dir: &Path, len: u64) -> Result<(), String> {
    use std::io::Write;
    let path = dir.join("scratch.bin");
    let mut file = std::fs::File::create(&path).map_err(|e| e.to_string())?;
    let buf = vec![0x5au8; 1 << 20];
    let mut left = len;
    while left > 0 {
        let n = left.min(buf.len() as u64) as usize;
        file.write_all(&buf[..n]).map_err(|e| e.to_string())?;
        left -= n as u64;
    }
    drop(file);
    std::fs::remove_file(&path).map_err(|e| e.to_string())
}

/// Runs the scenario.
pub async fn run(
    under: &mut Under<'_>,
    knobs: &Knobs,
    tracker: Arc<Mutex<Tracker>>,
) -> Result<Run, String> {
    let started = Instant::now();
    let dir = tempfile::tempdir().map_err(|e| e.to_string())?;
    let prefix = run_prefix("media");
    let pair = register_users(&under.target, &format!("{prefix}p"), 2).await?;
    let clients = connect_all(&pair).await?;
    let (sender, receiver) = (clients[0].0.clone(), clients[1].0.clone());
    let mut extra = BTreeMap::new();

    // 1 and 2, `--rounds` times: the transfers and the TLS copies alternate, so a shift of
    // the machine's speed between them (seen on shared VMs) lands in every round alike.
    let spawned = under.spawned.as_deref();
    let mut rounds = Vec::with_capacity(knobs.rounds.max(1));
    for round in 0..knobs.rounds.max(1) {
        rounds.push(
            transfer_round(
                spawned,
                &sender,
                &receiver,
                dir.path(),
                knobs.file_bytes,
                round,
            )
            .await?,
        );
    }
    extra.extend(summarise(rounds));

    // 3. Concurrent photo uploads.
    let n = knobs.clients.max(1);
    let users = register_users(&under.target, &format!("{prefix}u"), n).await?;
    let uploaders = connect_all(&users).await?;
    let mut photos = Vec::with_capacity(n);
    for i in 0..n {
        let p = dir.path().join(format!("photo{i}.jpg"));
        let blob = random_file(&p, PHOTO_BYTES as u64)?;
        photos.push(UploadSource {
            path: p,
            blob,
            size: PHOTO_BYTES as u64,
            downloads: 1,
        });
    }
    let gate = Arc::new(tokio::sync::Barrier::new(n));
    let mut tasks = Vec::with_capacity(n);
    for ((client, _), photo) in uploaders.iter().zip(photos) {
        let (client, gate) = (client.clone(), gate.clone());
        tasks.push(tokio::spawn(async move {
            gate.wait().await;
            let t = Instant::now();
            client
                .upload_blob(&photo, 2, |_| {})
                .await
                .map(|_| t.elapsed())
        }));
    }
    let mut hist = hdrhistogram::Histogram::<u64>::new(3).map_err(|e| e.to_string())?;
    for t in tasks {
        let took = t
            .await
            .map_err(|e| e.to_string())?
            .map_err(|e| format!("photo upload: {e}"))?;
        hist.record(took.as_micros() as u64)
            .map_err(|e| e.to_string())?;
    }
    extra.insert("photo_uploaders".into(), n as f64);
    extra.insert(
        "photo_upload_p50_ms".into(),
        hist.value_at_quantile(0.5) as f64 / 1e3,
    );
    extra.insert(
        "photo_upload_p99_ms".into(),
        hist.value_at_quantile(0.99) as f64 / 1e3,
    );
    for (c, _) in uploaders.iter().chain(clients.iter()) {
        let _ = c.close().await;
    }
    Ok(Run {
        tracker,
        duration: started.elapsed(),
        extra,
        message_phase_cpu_s: None,
    })
}

/// One round of parts 1 and 2: a fresh `size`-byte file (so the edge holds none of it)
/// uploaded by `sender`, downloaded by `receiver`, then copied over plain TLS.
async fn transfer_round(
    spawned: Option<&crate::edge_process::SpawnedEdge>,
    sender: &missive_client::Client,
    receiver: &missive_client::Client,
    dir: &Path,
    size: u64,
    round: usize,
) -> Result<BTreeMap<String, f64>, String> {
    let mut extra = BTreeMap::new();
    // 1. One big file up and down.
    let path = dir.join(format!("file{round}.bin"));
    let blob = random_file(&path, size)?;
    // The upload's blob and the downloaded file.
    touch_page_cache(dir, 2 * size)?;
    let src = UploadSource {
        path: path.clone(),
        blob,
        size,
        downloads: 1,
    };
    let rss_idle = spawned.map(|e| e.rss());
    let peak = Arc::new(AtomicU64::new(0));
    let sampling = Arc::new(AtomicBool::new(true));
    let sampler = spawned.map(|e| {
        let (pid, peak, sampling) = (e.pid(), peak.clone(), sampling.clone());
        tokio::spawn(async move {
            while sampling.load(Ordering::Relaxed) {
                if let Some(rss) = crate::edge_process::rss_of(pid) {
                    peak.fetch_max(rss, Ordering::Relaxed);
                }
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        })
    });
    let cpu = || spawned.map(|e| e.cpu_seconds());
    // This process's CPU: in these two phases only the two SDK clients run in it.
    let own_cpu = || crate::edge_process::cpu_seconds(std::process::id());
    let own_before_up = own_cpu();
    let cpu_before_up = cpu();
    let up = Instant::now();
    sender
        .upload_blob(&src, 4, |_| {})
        .await
        .map_err(|e| format!("upload: {e}"))?;
    let up_s = up.elapsed().as_secs_f64();
    let cpu_after_up = cpu();
    // The packet size the upload grew to (the route's, see the SDK's path_mtu) and what it
    // lost: a larger size with losses would be a false gain.
    if let Some(path) = sender.quic_path() {
        extra.insert("upload_path_mtu".into(), f64::from(path.mtu));
        extra.insert("upload_lost_packets".into(), path.lost_packets as f64);
    }
    let received_before = receiver.quic_path();
    let own_after_up = own_cpu();
    sampling.store(false, Ordering::Relaxed);
    if let Some(s) = sampler {
        let _ = s.await;
    }
    let mb = size as f64 / 1e6;
    extra.insert("file_mb".into(), mb);
    extra.insert("upload_mb_per_s".into(), mb / up_s);
    if let Some(idle) = rss_idle {
        extra.insert(
            "upload_rss_above_idle_mb".into(),
            peak.load(Ordering::Relaxed).saturating_sub(idle) as f64 / 1e6,
        );
    }
    let out = dir.join("down.bin");
    let first_byte = Arc::new(Mutex::new(None::<Duration>));
    let down = Instant::now();
    let fb = first_byte.clone();
    receiver
        .download_blob(blob, size, &out, move |_| {
            fb.lock()
                .unwrap_or_else(|p| p.into_inner())
                .get_or_insert_with(|| down.elapsed());
        })
        .await
        .map_err(|e| format!("download: {e}"))?;
    let down_s = down.elapsed().as_secs_f64();
    if let (Some(a), Some(b)) = (received_before, receiver.quic_path()) {
        let datagrams = b
            .received_datagrams
            .saturating_sub(a.received_datagrams)
            .max(1);
        extra.insert(
            "download_datagram_bytes".into(),
            b.received_bytes.saturating_sub(a.received_bytes) as f64 / datagrams as f64,
        );
    }
    let cpu_after_down = cpu();
    let own_after_down = own_cpu();
    // The edge's CPU per MB each way: steadier than MB/s on a shared machine.
    if let (Some(a), Some(b), Some(c)) = (cpu_before_up, cpu_after_up, cpu_after_down) {
        extra.insert("upload_edge_cpu_ms_per_mb".into(), (b - a) * 1e3 / mb);
        extra.insert("download_edge_cpu_ms_per_mb".into(), (c - b) * 1e3 / mb);
    }
    if let (Some(a), Some(b), Some(c)) = (own_before_up, own_after_up, own_after_down) {
        extra.insert("upload_client_cpu_ms_per_mb".into(), (b - a) * 1e3 / mb);
        extra.insert("download_client_cpu_ms_per_mb".into(), (c - b) * 1e3 / mb);
    }
    extra.insert("download_mb_per_s".into(), mb / down_s);
    if let Some(t) = *first_byte.lock().unwrap_or_else(|p| p.into_inner()) {
        extra.insert("download_first_byte_ms".into(), t.as_secs_f64() * 1e3);
    }
    let same = std::fs::metadata(&out).map(|m| m.len()).unwrap_or(0) == size;
    extra.insert("download_complete".into(), f64::from(u8::from(same)));
    let _ = std::fs::remove_file(&out);

    // 2. The same bytes over one plain TLS connection: into a file synced at the end (what
    // the edge does with an upload), into a file (what a downloading client does), and over
    // the wire alone.
    use crate::tls_copy::{copy_file, Sink};
    let copy = dir.join("copy.bin");
    let synced_s = copy_file(&path, Sink::SyncedFile(&copy)).await?;
    let _ = std::fs::remove_file(&copy);
    let file_s = copy_file(&path, Sink::File(&copy)).await?;
    let _ = std::fs::remove_file(&copy);
    let wire_s = copy_file(&path, Sink::Drop).await?;
    for (name, tls_s) in [("synced", synced_s), ("file", file_s), ("wire", wire_s)] {
        extra.insert(format!("plain_tls_{name}_mb_per_s"), mb / tls_s);
        extra.insert(format!("upload_share_of_tls_{name}"), tls_s / up_s);
        extra.insert(format!("download_share_of_tls_{name}"), tls_s / down_s);
    }
    let _ = std::fs::remove_file(&path);
    Ok(extra)
}

/// The rounds' figures: one round as it is; several as each figure's median (RSS: its
/// highest), with the lowest and highest beside the rates and shares (`*_min`, `*_max`).
fn summarise(rounds: Vec<BTreeMap<String, f64>>) -> BTreeMap<String, f64> {
    if rounds.len() == 1 {
        return rounds.into_iter().next().unwrap_or_default();
    }
    let mut out = BTreeMap::new();
    out.insert("rounds".into(), rounds.len() as f64);
    let keys: Vec<String> = rounds.iter().flat_map(|r| r.keys().cloned()).collect();
    for key in keys {
        if out.contains_key(&key) {
            continue;
        }
        let mut values: Vec<f64> = rounds.iter().filter_map(|r| r.get(&key).copied()).collect();
        values.sort_by(f64::total_cmp);
        let mid = values.len() / 2;
        let median = if values.len() % 2 == 1 {
            values[mid]
        } else {
            (values[mid - 1] + values[mid]) / 2.0
        };
        if key.contains("share_of_tls_file") || key.ends_with("_mb_per_s") {
            out.insert(format!("{key}_min"), values[0]);
            out.insert(format!("{key}_max"), values[values.len() - 1]);
        }
        // Memory is a ceiling: the worst round counts.
        let value = if key.contains("rss") {
            values[values.len() - 1]
        } else {
            median
        };
        out.insert(key, value);
    }
    out
}
