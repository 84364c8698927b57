//! The report: a human table, the JSON file, and an SVG of latency over time.

use crate::scenario::{lock, Run};
use serde::Serialize;
use std::collections::BTreeMap;

/// Latency percentiles in milliseconds.
#[derive(Debug, Serialize)]
pub struct LatencyMs {
    /// Median.
    pub p50: f64,
    /// 90th percentile.
    pub p90: f64,
    /// 99th percentile.
    pub p99: f64,
    /// 99.9th percentile.
    pub p999: f64,
    /// Maximum.
    pub max: f64,
}

/// Figures about the edge process.
#[derive(Debug, Serialize)]
pub struct ServerFigures {
    /// Peak RSS (VmHWM) in bytes; `None` when the edge is remote.
    pub rss_peak_bytes: Option<u64>,
    /// CPU seconds (user + system) over the whole run, registrations, logins and closes
    /// included; `None` when the edge is not observable.
    pub cpu_seconds: Option<f64>,
    /// CPU seconds from the first send to the last delivery (see `Run::message_phase_cpu_s`).
    pub message_phase_cpu_seconds: Option<f64>,
    /// Server CPU per delivered message in the message phase, µs (`None` for scenarios
    /// whose CPU is mostly not messages, like `connections`).
    pub cpu_us_per_msg: Option<f64>,
}

/// The JSON report (`--json FILE`).
#[derive(Debug, Serialize)]
pub struct Report {
    /// Scenario name.
    pub scenario: String,
    /// Clients used.
    pub clients: usize,
    /// Sends attempted.
    pub sent: u64,
    /// Sends acknowledged by the server (durably stored).
    pub acked: u64,
    /// Unique messages delivered.
    pub delivered: u64,
    /// Acknowledged messages never delivered.
    pub lost: u64,
    /// Messages delivered more than once.
    pub duplicates: u64,
    /// Messages delivered after a later one of the same sender.
    pub out_of_order: u64,
    /// Measured wall time.
    pub duration_s: f64,
    /// Delivered messages per second.
    pub throughput_msgs_per_s: f64,
    /// Send → deliver latency.
    pub latency_ms: LatencyMs,
    /// Edge process figures.
    pub server: ServerFigures,
    /// Scenario-specific figures.
    pub extra: BTreeMap<String, f64>,
    /// Per-second p50/p99 latency (ms), for plotting.
    pub timeline_ms: Vec<[f64; 2]>,
}

impl Report {
    /// Builds the report from a run and the edge's CPU/RSS (if spawned).
    pub fn new(
        scenario: &str,
        clients: usize,
        run: &Run,
        cpu_seconds: Option<f64>,
        rss_peak: Option<u64>,
    ) -> Self {
        let t = lock(&run.tracker);
        let ms = |q: f64| t.latency_us.value_at_quantile(q) as f64 / 1000.0;
        let duration_s = run.duration.as_secs_f64();
        Self {
            scenario: scenario.to_owned(),
            clients,
            sent: t.sent,
            acked: t.acked(),
            delivered: t.delivered,
            lost: t.lost(),
            duplicates: t.duplicates,
            out_of_order: t.out_of_order,
            duration_s,
            throughput_msgs_per_s: t.delivered as f64 / duration_s.max(1e-9),
            latency_ms: LatencyMs {
                p50: ms(0.5),
                p90: ms(0.9),
                p99: ms(0.99),
                p999: ms(0.999),
                max: t.latency_us.max() as f64 / 1000.0,
            },
            server: ServerFigures {
                rss_peak_bytes: rss_peak,
                cpu_seconds,
                message_phase_cpu_seconds: run.message_phase_cpu_s,
                cpu_us_per_msg: run
                    .message_phase_cpu_s
                    .filter(|_| t.delivered > 0)
                    .map(|c| c * 1e6 / t.delivered as f64),
            },
            extra: run.extra.clone(),
            timeline_ms: t
                .per_second
                .iter()
                .map(|h| {
                    [
                        h.value_at_quantile(0.5) as f64 / 1000.0,
                        h.value_at_quantile(0.99) as f64 / 1000.0,
                    ]
                })
                .collect(),
        }
    }

    /// True when nothing acknowledged was lost or duplicated.
    pub fn correct(&self) -> bool {
        self.lost == 0 && self.duplicates == 0
    }

    /// The human-readable table.
    pub fn table(&self) -> String {
        let mut rows: Vec<(String, String)> = vec![
            ("scenario".into(), self.scenario.clone()),
            ("clients".into(), self.clients.to_string()),
            (
                "sent / acked / delivered".into(),
                format!("{} / {} / {}", self.sent, self.acked, self.delivered),
            ),
            (
                "lost / duplicates / out of order".into(),
                format!(
                    "{} / {} / {}",
                    self.lost, self.duplicates, self.out_of_order
                ),
            ),
            ("duration".into(), format!("{:.2} s", self.duration_s)),
            (
                "throughput".into(),
                format!("{:.0} msgs/s", self.throughput_msgs_per_s),
            ),
            (
                "latency p50 / p90 / p99 / p99.9 / max".into(),
                format!(
                    "{:.2} / {:.2} / {:.2} / {:.2} / {:.2} ms",
                    self.latency_ms.p50,
                    self.latency_ms.p90,
                    self.latency_ms.p99,
                    self.latency_ms.p999,
                    self.latency_ms.max
                ),
            ),
        ];
        if let Some(c) = self.server.cpu_seconds {
            rows.push(("server CPU (whole run)".into(), format!("{c:.2} s")));
        }
        if let Some(c) = self.server.message_phase_cpu_seconds {
            rows.push(("server CPU (message phase)".into(), format!("{c:.2} s")));
        }
        if let Some(c) = self.server.cpu_us_per_msg {
            rows.push(("server CPU per message".into(), format!("{c:.1} µs")));
        }
        if let Some(r) = self.server.rss_peak_bytes {
            rows.push((
                "server peak RSS".into(),
                format!("{:.1} MiB", r as f64 / 1048576.0),
            ));
        }
        for (k, v) in &self.extra {
            rows.push((k.clone(), format!("{v:.2}")));
        }
        let w = rows
            .iter()
            .map(|(k, _)| k.chars().count())
            .max()
            .unwrap_or(0);
        rows.iter()
            .map(|(k, v)| format!("{k:<w$}  {v}\n"))
            .collect()
    }

    /// An SVG of per-second p50 and p99 latency.
    pub fn svg(&self) -> String {
        let (w, h, pad) = (800.0, 400.0, 50.0);
        let n = self.timeline_ms.len().max(2) as f64;
        let ymax = self
            .timeline_ms
            .iter()
            .map(|p| p[1])
            .fold(1.0_f64, f64::max)
            * 1.1;
        let x = |i: usize| pad + (i as f64) * (w - 2.0 * pad) / (n - 1.0);
        let y = |v: f64| h - pad - v / ymax * (h - 2.0 * pad);
        let line = |k: usize| {
            self.timeline_ms
                .iter()
                .enumerate()
                .map(|(i, p)| format!("{:.1},{:.1}", x(i), y(p[k])))
                .collect::<Vec<_>>()
                .join(" ")
        };
        format!(
            r##"<svg xmlns="http://www.w3.org/2000/svg" width="{w}" height="{h}" font-family="sans-serif" font-size="12">
<rect width="100%" height="100%" fill="white"/>
<text x="{pad}" y="20">{} — send→deliver latency per second (ms): p50 blue, p99 red</text>
<line x1="{pad}" y1="{b}" x2="{r}" y2="{b}" stroke="black"/>
<line x1="{pad}" y1="{pad}" x2="{pad}" y2="{b}" stroke="black"/>
<text x="5" y="{pad}">{ymax:.1}</text><text x="5" y="{b}">0</text>
<text x="{r}" y="{lb}" text-anchor="end">{secs} s</text>
<polyline fill="none" stroke="#1f77b4" stroke-width="2" points="{p50}"/>
<polyline fill="none" stroke="#d62728" stroke-width="2" points="{p99}"/>
</svg>
"##,
            self.scenario,
            b = h - pad,
            r = w - pad,
            lb = h - pad + 20.0,
            secs = self.timeline_ms.len(),
            p50 = line(0),
            p99 = line(1),
        )
    }
}
