//! What the operations endpoint reports: metrics sampled from every component, liveness
//! and readiness.

use crate::http::ops::OpsState;
use crate::shared::Shared;
use std::sync::atomic::{AtomicBool, AtomicI64, AtomicU64, Ordering};
use std::sync::Arc;

/// The edge's answer to `/metrics`, `/healthz` and `/readyz`.
#[derive(Debug)]
pub struct EdgeOps {
    shared: Arc<Shared>,
    ready: AtomicBool,
    /// Items queued at the start-up scan (−1 until the scan finished).
    depth_at_scan: AtomicI64,
    appended_at_scan: AtomicU64,
    deleted_at_scan: AtomicU64,
}

impl EdgeOps {
    /// Not ready until [`EdgeOps::set_ready`].
    pub fn new(shared: Arc<Shared>) -> Self {
        Self {
            shared,
            ready: AtomicBool::new(false),
            depth_at_scan: AtomicI64::new(-1),
            appended_at_scan: AtomicU64::new(0),
            deleted_at_scan: AtomicU64::new(0),
        }
    }

    /// Marks the edge ready (listeners bound, storage open) or not (draining).
    pub fn set_ready(&self, ready: bool) {
        self.ready.store(ready, Ordering::Release);
    }

    /// Counts queued items once in the background, so the mailbox-depth gauge can follow
    /// appends and deletes from there without slowing start-up.
    pub fn start_depth_scan(self: &Arc<Self>) {
        let me = self.clone();
        tokio::task::spawn_blocking(move || {
            let stats = me.shared.store.stats();
            let a = stats.items_appended.load(Ordering::Relaxed);
            let d = stats.items_deleted.load(Ordering::Relaxed);
            if let Ok(n) = me.shared.store.total_queued() {
                me.appended_at_scan.store(a, Ordering::Relaxed);
                me.deleted_at_scan.store(d, Ordering::Relaxed);
                me.depth_at_scan.store(n as i64, Ordering::Release);
            }
        });
    }
}

impl OpsState for EdgeOps {
    fn metrics(&self) -> String {
        let stats = self.shared.store.stats();
        let appended = stats.items_appended.load(Ordering::Relaxed);
        let deleted = stats.items_deleted.load(Ordering::Relaxed);
        let base = self.depth_at_scan.load(Ordering::Acquire);
        let push = &self.shared.notifier.stats;
        let sampled = crate::metrics::Sampled {
            commits: stats.commits.load(Ordering::Relaxed),
            commit_ops: stats.ops.load(Ordering::Relaxed),
            max_batch: stats.max_batch_seen.load(Ordering::Relaxed),
            flush_micros_total: stats.flush_micros_total.load(Ordering::Relaxed),
            flush_buckets: stats.flush_histogram(),
            build_micros_total: stats.build_micros_total.load(Ordering::Relaxed),
            build_buckets: stats.build_histogram(),
            items_appended: appended,
            items_deleted: deleted,
            mailbox_items: (base >= 0).then(|| {
                base + (appended - self.appended_at_scan.load(Ordering::Relaxed)) as i64
                    - (deleted - self.deleted_at_scan.load(Ordering::Relaxed)) as i64
            }),
            sessions: self.shared.registry.session_count(),
            push: [
                push.delivered.load(Ordering::Relaxed),
                push.failed.load(Ordering::Relaxed),
                push.dropped.load(Ordering::Relaxed),
                push.coalesced.load(Ordering::Relaxed),
            ],
            draining: !self.ready.load(Ordering::Acquire),
            storage_health: self.shared.store.health().0.name(),
            storage_failures: stats.failures.load(Ordering::Relaxed),
            storage_reopens: stats.reopens.load(Ordering::Relaxed),
        };
        let mut text = self.shared.metrics.render(&sampled);
        if let Some(media) = &self.shared.media {
            text.push_str(&media_metrics(&media.stats));
        }
        if let Some(calls) = &self.shared.calls {
            text.push_str(&call_metrics(&calls.stats));
        }
        if let Some(stats) = self.shared.turn.as_ref().and_then(|t| t.stats()) {
            text.push_str(&relay_metrics(&stats));
        }
        text.push_str(&process_metrics());
        text
    }

    fn healthy(&self) -> bool {
        self.shared.store.is_healthy()
    }

    /// Ready: not draining, the committer alive, and storage taking new messages (not below
    /// its free-space watermark, not failed): a load balancer then sends new users elsewhere.
    fn ready(&self) -> bool {
        self.ready.load(Ordering::Acquire)
            && self.healthy()
            && self.shared.store.health().0 == missive_storage::StorageHealth::Ok
    }
}

/// The standard `process_*` metrics (CPU seconds, resident and peak memory, open fds), read
/// from `/proc/self`, so a remote bench can report server CPU and RSS.
fn process_metrics() -> String {
    let mut out = String::new();
    let stat = std::fs::read_to_string("/proc/self/stat").unwrap_or_default();
    if let Some(rest) = stat.rfind(')').map(|i| &stat[i + 2..]) {
        let f: Vec<&str> = rest.split(' ').collect();
        let ticks = |i: usize| f.get(i).and_then(|v| v.parse::<f64>().ok()).unwrap_or(0.0);
        // USER_HZ is 100 on Linux.
        let cpu = (ticks(11) + ticks(12)) / 100.0;
        out.push_str(&format!(
            "# HELP process_cpu_seconds_total User and system CPU time.\n# TYPE process_cpu_seconds_total counter\nprocess_cpu_seconds_total {cpu}\n"
        ));
    }
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    let kib = |key: &str| {
        status
            .lines()
            .find_map(|l| l.strip_prefix(key))
            .and_then(|v| v.split_whitespace().next()?.parse::<u64>().ok())
    };
    if let Some(rss) = kib("VmRSS:") {
        out.push_str(&format!(
            "# HELP process_resident_memory_bytes Resident memory.\n# TYPE process_resident_memory_bytes gauge\nprocess_resident_memory_bytes {}\n",
            rss * 1024
        ));
    }
    if let Some(hwm) = kib("VmHWM:") {
        out.push_str(&format!(
            "# HELP process_resident_memory_max_bytes Peak resident memory.\n# TYPE process_resident_memory_max_bytes gauge\nprocess_resident_memory_max_bytes {}\n",
            hwm * 1024
        ));
    }
    if let Ok(fds) = std::fs::read_dir("/proc/self/fd") {
        out.push_str(&format!(
            "# HELP process_open_fds Open file descriptors.\n# TYPE process_open_fds gauge\nprocess_open_fds {}\n",
            fds.count()
        ));
    }
    out
}

/// The media counters in Prometheus text.
fn media_metrics(stats: &crate::media::service::MediaStats) -> String {
    let mut out = String::new();
    for (name, help, value) in [
        (
            "missive_media_bytes_received_total",
            "Upload bytes written into blob files.",
            &stats.bytes_received,
        ),
        (
            "missive_media_bytes_sent_total",
            "Download bytes sent (transfer streams and HTTPS).",
            &stats.bytes_sent,
        ),
        (
            "missive_media_uploads_completed_total",
            "Blobs verified and stored.",
            &stats.uploads_completed,
        ),
        (
            "missive_media_hash_mismatches_total",
            "Uploads whose bytes did not hash to their name.",
            &stats.hash_mismatches,
        ),
        (
            "missive_media_blobs_deleted_total",
            "Blobs deleted: downloaded by every recipient, expired, or stalled.",
            &stats.blobs_deleted,
        ),
    ] {
        out.push_str(&format!(
            "# HELP {name} {help}\n# TYPE {name} counter\n{name} {}\n",
            value.load(Ordering::Relaxed)
        ));
    }
    out
}

/// Call signaling's counters in Prometheus text.
fn call_metrics(stats: &crate::calls::CallStats) -> String {
    use std::fmt::Write as _;
    let mut out = String::new();
    let _ = write!(
        out,
        "# HELP missive_calls_active Calls ringing or answered now.\n# TYPE missive_calls_active gauge\nmissive_calls_active {}\n",
        stats.active.load(Ordering::Relaxed)
    );
    for (name, help, value) in [
        (
            "missive_calls_started_total",
            "Invites that rang (or pushed) the callee.",
            &stats.started,
        ),
        (
            "missive_calls_answered_total",
            "Calls picked up.",
            &stats.answered,
        ),
        (
            "missive_calls_overloaded_total",
            "Call requests refused because the switchboard's queue was full.",
            &stats.overloaded,
        ),
    ] {
        let _ = write!(
            out,
            "# HELP {name} {help}\n# TYPE {name} counter\n{name} {}\n",
            value.load(Ordering::Relaxed)
        );
    }
    out.push_str("# HELP missive_calls_ended_total Calls ended (and invites refused), by reason.\n# TYPE missive_calls_ended_total counter\n");
    for (reason, value) in crate::calls::service::REASONS.iter().zip(&stats.ended) {
        let _ = writeln!(
            out,
            "missive_calls_ended_total{{reason=\"{reason}\"}} {}",
            value.load(Ordering::Relaxed)
        );
    }
    out
}

/// The STUN/TURN relay's counters in Prometheus text: allocations, what was relayed each
/// way, and refusals (requests refused and datagrams dropped) by their stable reason names.
fn relay_metrics(stats: &missive_relay::Stats) -> String {
    let mut out = String::new();
    out.push_str(&format!(
        "# HELP missive_relay_allocations_active TURN allocations held now.\n# TYPE missive_relay_allocations_active gauge\nmissive_relay_allocations_active {}\n",
        stats.allocations_active
    ));
    for (name, help, value) in [
        (
            "missive_relay_allocations_created_total",
            "TURN allocations created.",
            stats.allocations_created,
        ),
        (
            "missive_relay_bindings_total",
            "STUN Binding requests answered.",
            stats.bindings,
        ),
        (
            "missive_relay_packets_to_peers_total",
            "Datagrams relayed from clients to peers.",
            stats.packets_to_peers,
        ),
        (
            "missive_relay_packets_within_total",
            "Of the datagrams relayed to peers, those whose peer was another allocation of this relay (handed over in the process).",
            stats.packets_within,
        ),
        (
            "missive_relay_bytes_to_peers_total",
            "Payload bytes relayed from clients to peers.",
            stats.bytes_to_peers,
        ),
        (
            "missive_relay_packets_to_clients_total",
            "Datagrams relayed from peers to clients.",
            stats.packets_to_clients,
        ),
        (
            "missive_relay_bytes_to_clients_total",
            "Payload bytes relayed from peers to clients.",
            stats.bytes_to_clients,
        ),
        (
            "missive_relay_amplified_challenges_total",
            "Minimized 401/438 challenges larger than their request (within challenge_amplification_percent).",
            stats.amplified_challenges,
        ),
    ] {
        out.push_str(&format!(
            "# HELP {name} {help}\n# TYPE {name} counter\n{name} {value}\n"
        ));
    }
    out.push_str(
        "# HELP missive_relay_refusals_total Relay requests refused and datagrams dropped, by reason.\n# TYPE missive_relay_refusals_total counter\n",
    );
    for (reason, value) in stats.refusals.by_reason() {
        out.push_str(&format!(
            "missive_relay_refusals_total{{reason=\"{reason}\"}} {value}\n"
        ));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn relay_metrics_name_every_refusal_reason() {
        let mut stats = missive_relay::Stats {
            allocations_active: 2,
            packets_to_peers: 7,
            ..Default::default()
        };
        stats.refusals.unauthorized = 3;
        let text = relay_metrics(&stats);
        assert!(
            text.contains("missive_relay_allocations_active 2\n"),
            "{text}"
        );
        assert!(
            text.contains("missive_relay_packets_to_peers_total 7\n"),
            "{text}"
        );
        assert!(
            text.contains("missive_relay_refusals_total{reason=\"unauthorized\"} 3\n"),
            "{text}"
        );
        for (reason, _) in stats.refusals.by_reason() {
            assert!(text.contains(&format!("reason=\"{reason}\"")), "{reason}");
        }
    }
}
