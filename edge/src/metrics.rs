//! Counters kept by the edge's components, rendered in Prometheus text format on `/metrics`.
//!
//! Everything here is a relaxed atomic bumped on the hot path; rendering reads them once.

use crate::connection::Transport;
use missive_proto::{ErrorCode, Frame};
use std::fmt::Write as _;
use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};

const KINDS: usize = 256;
const CODES: usize = 64;

use missive_storage::FLUSH_BUCKETS_US;

/// Edge-wide counters.
#[derive(Debug)]
pub struct Metrics {
    open: [AtomicI64; 2],
    accepted: [AtomicU64; 2],
    frames_in: Vec<AtomicU64>,
    frames_out: Vec<AtomicU64>,
    errors: Vec<AtomicU64>,
    /// Deliver frames carrying messages or receipts, sent to clients.
    pub deliveries: AtomicU64,
    refused: [AtomicU64; REFUSAL_REASONS.len()],
    key_claims_over_budget: AtomicU64,
}

/// Why connections are refused or closed by the edge's own protection, as metric labels.
pub const REFUSAL_REASONS: [&str; 5] = [
    "address_connections",
    "address_handshake_rate",
    "connection_limit",
    "quic_retry",
    "slow_reader",
];

impl Default for Metrics {
    fn default() -> Self {
        Self {
            open: Default::default(),
            accepted: Default::default(),
            frames_in: (0..KINDS).map(|_| AtomicU64::new(0)).collect(),
            frames_out: (0..KINDS).map(|_| AtomicU64::new(0)).collect(),
            errors: (0..CODES).map(|_| AtomicU64::new(0)).collect(),
            deliveries: AtomicU64::new(0),
            refused: Default::default(),
            key_claims_over_budget: AtomicU64::new(0),
        }
    }
}

fn t(transport: Transport) -> usize {
    match transport {
        Transport::Quic => 0,
        Transport::Tcp => 1,
    }
}

impl Metrics {
    /// A key claim past its user's budget, answered with fallback keys only.
    pub fn key_claim_over_budget(&self) {
        self.key_claims_over_budget.fetch_add(1, Ordering::Relaxed);
    }

    /// A connection was accepted (after its handshake).
    pub fn connection_opened(&self, transport: Transport) {
        self.open[t(transport)].fetch_add(1, Ordering::Relaxed);
        self.accepted[t(transport)].fetch_add(1, Ordering::Relaxed);
    }

    /// A connection ended.
    pub fn connection_closed(&self, transport: Transport) {
        self.open[t(transport)].fetch_sub(1, Ordering::Relaxed);
    }

    /// Connections open now on `transport`.
    pub fn open_connections(&self, transport: Transport) -> i64 {
        self.open[t(transport)].load(Ordering::Relaxed)
    }

    /// A frame arrived from a client.
    pub fn frame_in(&self, frame: &Frame) {
        self.frames_in[frame.kind() as usize].fetch_add(1, Ordering::Relaxed);
    }

    /// A frame was queued to a client.
    pub fn frame_out(&self, frame: &Frame) {
        self.frame_out_kind(
            frame.kind(),
            matches!(frame, Frame::Deliver(_) | Frame::GroupDeliver(_)),
        );
        match frame {
            Frame::Error(e) => self.error(e.code),
            Frame::Rejected(r) => self.error(r.code),
            Frame::RequestRefused(r) => self.error(r.code),
            Frame::DeviceMismatch(_) => {
                self.error(missive_proto::ErrorCode::DeviceMismatch.as_u16())
            }
            _ => {}
        }
    }

    /// A frame of kind `kind` written (already encoded); `delivery` when it delivers an item.
    pub fn frame_out_kind(&self, kind: u8, delivery: bool) {
        self.frames_out[kind as usize].fetch_add(1, Ordering::Relaxed);
        if delivery {
            self.deliveries.fetch_add(1, Ordering::Relaxed);
        }
    }

    /// A connection was refused before its handshake (or sent to a QUIC Retry), or closed
    /// for not reading; `reason` is one of [`REFUSAL_REASONS`].
    pub fn connection_refused(&self, reason: &str) {
        if let Some(i) = REFUSAL_REASONS.iter().position(|r| *r == reason) {
            self.refused[i].fetch_add(1, Ordering::Relaxed);
        }
    }

    fn error(&self, code: u16) {
        if let Some(c) = self.errors.get(code as usize) {
            c.fetch_add(1, Ordering::Relaxed);
        }
    }
}

/// Figures owned by other components, sampled when `/metrics` is rendered.
#[derive(Debug, Default)]
pub struct Sampled {
    /// Group commits done.
    pub commits: u64,
    /// Operations in those commits.
    pub commit_ops: u64,
    /// Largest batch.
    pub max_batch: u64,
    /// Microseconds spent in flush + fsync, total.
    pub flush_micros_total: u64,
    /// Flush latency histogram counts, per `FLUSH_BUCKETS_US` bound (non-cumulative), plus
    /// overflow as the last element.
    pub flush_buckets: Vec<u64>,
    /// Microseconds spent building batches (their storage reads), total.
    pub build_micros_total: u64,
    /// Batch-build latency histogram counts, as `flush_buckets`.
    pub build_buckets: Vec<u64>,
    /// Mailbox items appended (messages per device and receipts).
    pub items_appended: u64,
    /// Mailbox items deleted (acks and expiry).
    pub items_deleted: u64,
    /// Items queued in all mailboxes (from the start-up scan plus changes since), if known.
    pub mailbox_items: Option<i64>,
    /// Live sessions (logged in).
    pub sessions: usize,
    /// Push wake-ups accepted / failed / dropped / coalesced.
    pub push: [u64; 4],
    /// Whether the edge is draining.
    pub draining: bool,
    /// The store's health (`ok`, `low_space`, `failed`).
    pub storage_health: &'static str,
    /// Times the storage engine failed / was reopened.
    pub storage_failures: u64,
    /// Times a failed storage engine was reopened.
    pub storage_reopens: u64,
}

/// The memory allocator this build of the edge uses (the `mimalloc` cargo feature).
pub const ALLOCATOR: &str = if cfg!(feature = "mimalloc") {
    "mimalloc"
} else {
    "system"
};

impl Metrics {
    /// The Prometheus text exposition of everything.
    pub fn render(&self, s: &Sampled) -> String {
        let mut out = String::with_capacity(8 * 1024);
        let add = |out: &mut String, name: &str, kind: &str, help: &str, body: String| {
            let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} {kind}");
            out.push_str(&body);
        };
        add(
            &mut out,
            "missive_build_info",
            "gauge",
            "Always 1; its labels name the edge's version and memory allocator.",
            format!(
                "missive_build_info{{version=\"{}\",allocator=\"{ALLOCATOR}\"}} 1\n",
                env!("CARGO_PKG_VERSION")
            ),
        );
        let mut body = String::new();
        for (i, name) in ["quic", "tcp"].iter().enumerate() {
            let _ = writeln!(
                body,
                "missive_connections_open{{transport=\"{name}\"}} {}",
                self.open[i].load(Ordering::Relaxed)
            );
        }
        add(
            &mut out,
            "missive_connections_open",
            "gauge",
            "Connections open now, by transport.",
            body,
        );
        let mut body = String::new();
        for (i, name) in ["quic", "tcp"].iter().enumerate() {
            let _ = writeln!(
                body,
                "missive_connections_accepted_total{{transport=\"{name}\"}} {}",
                self.accepted[i].load(Ordering::Relaxed)
            );
        }
        add(
            &mut out,
            "missive_connections_accepted_total",
            "counter",
            "Connections accepted, by transport.",
            body,
        );
        add(
            &mut out,
            "missive_sessions",
            "gauge",
            "Logged-in device sessions.",
            format!("missive_sessions {}\n", s.sessions),
        );
        for (name, help, table) in [
            (
                "missive_frames_in_total",
                "Frames received from clients, by type.",
                &self.frames_in,
            ),
            (
                "missive_frames_out_total",
                "Frames sent to clients, by type.",
                &self.frames_out,
            ),
        ] {
            let mut body = String::new();
            for (kind, c) in table.iter().enumerate() {
                let v = c.load(Ordering::Relaxed);
                if let (Some(ty), true) = (Frame::kind_name(kind as u8), v > 0) {
                    let _ = writeln!(body, "{name}{{type=\"{ty}\"}} {v}");
                }
            }
            add(&mut out, name, "counter", help, body);
        }
        let mut body = String::new();
        for (code, c) in self.errors.iter().enumerate() {
            let v = c.load(Ordering::Relaxed);
            if let (Some(ec), true) = (ErrorCode::from_u16(code as u16), v > 0) {
                let _ = writeln!(body, "missive_errors_total{{code=\"{}\"}} {v}", ec.name());
            }
        }
        add(
            &mut out,
            "missive_errors_total",
            "counter",
            "Error and Rejected frames sent, by code.",
            body,
        );
        add(
            &mut out,
            "missive_messages_stored_total",
            "counter",
            "Mailbox items durably appended (one per recipient device, receipts included).",
            format!("missive_messages_stored_total {}\n", s.items_appended),
        );
        add(
            &mut out,
            "missive_messages_delivered_total",
            "counter",
            "Deliver frames sent to clients.",
            format!(
                "missive_messages_delivered_total {}\n",
                self.deliveries.load(Ordering::Relaxed)
            ),
        );
        add(
            &mut out,
            "missive_key_claims_fallback_only_total",
            "counter",
            "Key claims past the claimer's budget (limits.key_claims_per_min), answered with the \
             devices' fallback keys so that no one-time key is drained.",
            format!(
                "missive_key_claims_fallback_only_total {}\n",
                self.key_claims_over_budget.load(Ordering::Relaxed)
            ),
        );
        add(
            &mut out,
            "missive_messages_deleted_total",
            "counter",
            "Mailbox items deleted by acknowledgement or expiry.",
            format!("missive_messages_deleted_total {}\n", s.items_deleted),
        );
        if let Some(depth) = s.mailbox_items {
            add(
                &mut out,
                "missive_mailbox_items",
                "gauge",
                "Items waiting in all mailboxes.",
                format!("missive_mailbox_items {depth}\n"),
            );
        }
        add(
            &mut out,
            "missive_group_commit_ops_total",
            "counter",
            "Operations made durable by group commits (ops / commits = mean batch size).",
            format!("missive_group_commit_ops_total {}\n", s.commit_ops),
        );
        add(
            &mut out,
            "missive_group_commit_batch_max",
            "gauge",
            "Largest group-commit batch so far.",
            format!("missive_group_commit_batch_max {}\n", s.max_batch),
        );
        add(
            &mut out,
            "missive_group_commit_flush_seconds",
            "histogram",
            "Time of one group commit's flush + fsync (it covers every batch applied since the last).",
            latency_histogram(
                "missive_group_commit_flush_seconds",
                &s.flush_buckets,
                s.flush_micros_total,
            ),
        );
        add(
            &mut out,
            "missive_group_commit_build_seconds",
            "histogram",
            "Time to build and apply one batch: the storage reads it needs (duplicate checks, seq \
             counters, acked items), its memtable inserts and journal write. Several batches may \
             share one fsync (storage.commit_delay_us). Slow builds with fast flushes mean the \
             engine held its readers and writers back.",
            latency_histogram(
                "missive_group_commit_build_seconds",
                &s.build_buckets,
                s.build_micros_total,
            ),
        );
        let mut body = String::new();
        for (i, outcome) in ["delivered", "failed", "dropped", "coalesced"]
            .iter()
            .enumerate()
        {
            let _ = writeln!(
                body,
                "missive_push_wakeups_total{{outcome=\"{outcome}\"}} {}",
                s.push[i]
            );
        }
        add(
            &mut out,
            "missive_push_wakeups_total",
            "counter",
            "Push wake-ups, by outcome.",
            body,
        );
        let mut body = String::new();
        for (i, reason) in REFUSAL_REASONS.iter().enumerate() {
            let _ = writeln!(
                body,
                "missive_connections_refused_total{{reason=\"{reason}\"}} {}",
                self.refused[i].load(Ordering::Relaxed)
            );
        }
        add(
            &mut out,
            "missive_connections_refused_total",
            "counter",
            "Connections refused before their handshake, sent to a QUIC Retry, or closed for not reading, by reason.",
            body,
        );
        let mut body = String::new();
        for state in ["ok", "low_space", "failed"] {
            let _ = writeln!(
                body,
                "missive_storage_health{{state=\"{state}\"}} {}",
                u8::from(s.storage_health == state)
            );
        }
        add(
            &mut out,
            "missive_storage_health",
            "gauge",
            "1 for the store's current state: ok, low_space (below the free-space watermark: new messages refused) or failed (engine closed, being reopened).",
            body,
        );
        add(
            &mut out,
            "missive_storage_failures_total",
            "counter",
            "Times the storage engine failed a write or an fsync and was closed.",
            format!("missive_storage_failures_total {}\n", s.storage_failures),
        );
        add(
            &mut out,
            "missive_storage_reopens_total",
            "counter",
            "Times a failed storage engine was reopened.",
            format!("missive_storage_reopens_total {}\n", s.storage_reopens),
        );
        add(
            &mut out,
            "missive_draining",
            "gauge",
            "1 while the edge is shutting down.",
            format!("missive_draining {}\n", u8::from(s.draining)),
        );
        out
    }
}

/// The sample lines of a Prometheus histogram over [`FLUSH_BUCKETS_US`]: cumulative buckets
/// from non-cumulative `counts` (the last one counting what exceeds every bound), `_sum` from
/// `sum_micros`, and `_count`.
fn latency_histogram(name: &str, counts: &[u64], sum_micros: u64) -> String {
    let mut body = String::new();
    let mut cumulative = 0u64;
    for (i, bound) in FLUSH_BUCKETS_US.iter().enumerate() {
        cumulative += counts.get(i).copied().unwrap_or(0);
        let _ = writeln!(
            body,
            "{name}_bucket{{le=\"{}\"}} {cumulative}",
            *bound as f64 / 1e6
        );
    }
    let total: u64 = counts.iter().sum();
    let _ = writeln!(body, "{name}_bucket{{le=\"+Inf\"}} {total}");
    let _ = writeln!(body, "{name}_sum {}", sum_micros as f64 / 1e6);
    let _ = writeln!(body, "{name}_count {total}");
    body
}

#[cfg(test)]
mod tests {
    use super::*;
    use missive_proto::{Error, Ping};

    #[test]
    fn renders_counters_by_label() {
        let m = Metrics::default();
        m.connection_opened(Transport::Quic);
        m.connection_opened(Transport::Tcp);
        m.connection_closed(Transport::Tcp);
        m.frame_in(&Ping { nonce: 1 }.into());
        m.frame_out(&Error::new(ErrorCode::RateLimited, "x").into());
        let text = m.render(&Sampled {
            commits: 3,
            flush_buckets: vec![1, 2],
            build_buckets: vec![0, 0, 0, 0, 0, 0, 0, 0, 0, 1, 0, 0, 1],
            build_micros_total: 2_100_000,
            ..Sampled::default()
        });
        let allocator = if cfg!(feature = "mimalloc") {
            "mimalloc"
        } else {
            "system"
        };
        let build_info = format!(
            "missive_build_info{{version=\"{}\",allocator=\"{allocator}\"}} 1\n",
            env!("CARGO_PKG_VERSION")
        );
        assert!(
            text.contains(&build_info),
            "missing {build_info:?} in:\n{text}"
        );
        for expected in [
            "missive_connections_open{transport=\"quic\"} 1\n",
            "missive_connections_open{transport=\"tcp\"} 0\n",
            "missive_frames_in_total{type=\"Ping\"} 1\n",
            "missive_errors_total{code=\"rate_limited\"} 1\n",
            "missive_group_commit_flush_seconds_bucket{le=\"0.00025\"} 3\n",
            "missive_group_commit_flush_seconds_count 3\n",
            // The build histogram: one build within 100 ms, one slower than every bound.
            "missive_group_commit_build_seconds_bucket{le=\"0.05\"} 0\n",
            "missive_group_commit_build_seconds_bucket{le=\"0.1\"} 1\n",
            "missive_group_commit_build_seconds_bucket{le=\"1\"} 1\n",
            "missive_group_commit_build_seconds_bucket{le=\"+Inf\"} 2\n",
            "missive_group_commit_build_seconds_sum 2.1\n",
            "missive_group_commit_build_seconds_count 2\n",
        ] {
            assert!(text.contains(expected), "missing {expected:?} in:\n{text}");
        }
        // Every sample line belongs to a declared metric.
        for line in text.lines().filter(|l| !l.starts_with('#')) {
            let name = line.split(['{', ' ']).next().unwrap();
            let base = name
                .trim_end_matches("_bucket")
                .trim_end_matches("_sum")
                .trim_end_matches("_count");
            assert!(
                text.contains(&format!("# TYPE {base} ")),
                "undeclared {name}"
            );
        }
    }
}
