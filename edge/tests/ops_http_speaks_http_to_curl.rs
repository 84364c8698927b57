//! The operations endpoint is real HTTP/1.1 (hyper): curl, which nobody here wrote, gets
//! `/metrics` twice over one kept-alive connection, 404 for an unknown path, 405 for a POST,
//! and 431 for a request head past the limit.

mod common;

use common::Edge;
use std::process::Command;

/// Runs curl with `args` against the edge's ops endpoint; (stdout, stderr).
fn curl(args: &[&str]) -> (String, String) {
    let out = Command::new("curl")
        .args(["--silent", "--show-error", "--max-time", "10"])
        .args(args)
        .output()
        .expect("curl must be installed (.ci/run installs it)");
    (
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[test]
fn curl_gets_metrics_and_typed_statuses() {
    let dir = tempfile::tempdir().unwrap();
    let edge = Edge::start(dir.path(), &[]);
    let base = format!("http://{}", edge.metrics.unwrap());
    let status = |extra: &[&str], path: &str| {
        let url = format!("{base}{path}");
        let mut args = vec!["--output", "/dev/null", "--write-out", "%{http_code}"];
        args.extend_from_slice(extra);
        args.push(&url);
        curl(&args).0
    };

    // Two GETs in one curl run: the second reuses the first's connection.
    let (body, log) = curl(&[
        "--verbose",
        &format!("{base}/metrics"),
        &format!("{base}/healthz"),
    ]);
    assert!(body.contains("missive_connections_open"), "{body}");
    assert!(body.ends_with("ok\n"), "{body}");
    assert!(log.contains("Re-using existing connection"), "{log}");

    assert_eq!(status(&[], "/readyz"), "200");
    assert_eq!(status(&[], "/no-such-page"), "404");
    assert_eq!(status(&["--request", "POST"], "/metrics"), "405");
    let huge = format!("X-Filler: {}", "a".repeat(20 * 1024));
    assert_eq!(status(&["--header", &huge], "/metrics"), "431");
}
