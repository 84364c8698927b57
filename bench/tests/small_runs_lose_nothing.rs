//! Small `chat`, `crash`, `offline` and `group` runs (frame-level and through the SDK)
//! against a spawned edge: correctness only (nothing acknowledged lost or duplicated, order
//! kept). The figures are benchmarks, never asserted.

use serde_json::Value;
use std::path::PathBuf;
use std::process::Command;

/// `missive-edge` beside `missive-bench` (built by `cargo test --workspace`; built here when
/// only this package's tests run).
fn edge_bin() -> PathBuf {
    let bench = PathBuf::from(env!("CARGO_BIN_EXE_missive-bench"));
    let edge = bench.with_file_name(format!("missive-edge{}", std::env::consts::EXE_SUFFIX));
    if !edge.exists() {
        let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
        let mut cmd = Command::new(cargo);
        cmd.args(["build", "-p", "missive-edge", "--bin", "missive-edge"]);
        if bench.components().any(|c| c.as_os_str() == "release") {
            cmd.arg("--release");
        }
        assert!(
            cmd.status().unwrap().success(),
            "building missive-edge failed"
        );
    }
    edge
}

fn run(args: &[&str]) -> Value {
    let dir = tempfile::tempdir().unwrap();
    let json = dir.path().join("report.json");
    let svg = dir.path().join("latency.svg");
    let out = Command::new(env!("CARGO_BIN_EXE_missive-bench"))
        .args(args)
        .arg("--spawn")
        .arg("--edge-bin")
        .arg(edge_bin())
        .arg("--json")
        .arg(&json)
        .arg("--svg")
        .arg(&svg)
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "bench failed:\n{stdout}\n{stderr}");
    assert!(stdout.contains("throughput"), "no table printed:\n{stdout}");
    assert!(std::fs::read_to_string(&svg).unwrap().starts_with("<svg"));
    let report: Value = serde_json::from_str(&std::fs::read_to_string(&json).unwrap()).unwrap();
    for key in [
        "scenario",
        "clients",
        "sent",
        "acked",
        "delivered",
        "lost",
        "duplicates",
        "out_of_order",
        "duration_s",
        "throughput_msgs_per_s",
    ] {
        assert!(!report[key].is_null(), "report lacks {key}: {report}");
    }
    for q in ["p50", "p90", "p99", "p999", "max"] {
        assert!(
            report["latency_ms"][q].is_number(),
            "latency_ms.{q} missing"
        );
    }
    assert!(report["server"]["rss_peak_bytes"].as_u64().unwrap() > 0);
    assert!(report["server"]["cpu_seconds"].is_number());
    report
}

fn assert_exact(report: &Value, expected: u64) {
    assert_eq!(report["acked"], expected, "{report}");
    assert_eq!(report["delivered"], expected, "{report}");
    assert_eq!(report["lost"], 0, "{report}");
    assert_eq!(report["duplicates"], 0, "{report}");
    assert_eq!(report["out_of_order"], 0, "{report}");
}

#[test]
fn chat_small() {
    let r = run(&["chat", "--clients", "8", "--messages", "800"]);
    assert_eq!(r["scenario"], "chat");
    assert_exact(&r, 800);
}

#[test]
fn crash_small() {
    let r = run(&["crash", "--clients", "8", "--messages", "1600"]);
    assert_eq!(r["scenario"], "crash");
    assert!(
        r["extra"]["crash_at_acked"].as_f64().unwrap() > 0.0,
        "edge was never killed"
    );
    assert_exact(&r, 1600);
}

#[test]
fn offline_small() {
    let r = run(&["offline", "--clients", "8", "--messages", "2000"]);
    assert_exact(&r, 2000);
    assert!(r["extra"]["drain_msgs_per_s"].as_f64().unwrap() > 0.0);
}

#[test]
fn group_small() {
    // 12 members, 6 online (member 0 sends): each answered message is owed to 6 members.
    let r = run(&[
        "group",
        "--clients",
        "12",
        "--online-share",
        "0.5",
        "--messages",
        "300",
        "--window",
        "8",
    ]);
    assert_eq!(r["scenario"], "group");
    assert_exact(&r, 300 * 6);
    let extra = &r["extra"];
    assert_eq!(extra["members"], 12.0, "{r}");
    assert_eq!(extra["online"], 6.0, "{r}");
    assert_eq!(extra["group_msgs_answered_sent"], 300.0, "{r}");
    assert_eq!(extra["group_msgs_rejected"], 0.0, "{r}");
    assert_eq!(extra["member_connections_failed"], 0.0, "{r}");
    for key in [
        "member_deliveries_per_s",
        "group_msgs_per_s",
        "sent_p50_ms",
        "sent_p99_ms",
        "disk_bytes_per_group_msg",
    ] {
        assert!(extra[key].as_f64().unwrap() > 0.0, "{key}: {r}");
    }
}

#[test]
fn group_small_with_three_senders() {
    // 12 members: 3 send (301 messages split 101/100/100), 6 of the others receive. Each
    // answered message is owed to the 6 receivers, in its sender's order.
    let r = run(&[
        "group",
        "--clients",
        "12",
        "--online-share",
        "0.5",
        "--senders",
        "3",
        "--messages",
        "301",
        "--window",
        "8",
    ]);
    assert_exact(&r, 301 * 6);
    let extra = &r["extra"];
    assert_eq!(extra["senders"], 3.0, "{r}");
    assert_eq!(extra["online"], 6.0, "{r}");
    assert_eq!(extra["group_msgs_answered_sent"], 301.0, "{r}");
    assert_eq!(extra["member_connections_failed"], 0.0, "{r}");
}

#[test]
fn group_small_through_the_sdk() {
    // 12 members, 6 online, SDK clients at both ends: each answered message is decrypted
    // once by each of the 6.
    let r = run(&[
        "group",
        "--clients",
        "12",
        "--online-share",
        "0.5",
        "--decrypt",
        "--messages",
        "100",
    ]);
    assert_exact(&r, 100 * 6);
    let extra = &r["extra"];
    assert_eq!(extra["group_msgs_failed"], 0.0, "{r}");
    assert!(
        extra["client_cpu_us_per_delivery"].as_f64().unwrap() > 0.0,
        "{r}"
    );
}
