//! The real `missive` CLI, as the CLI scenarios run it.

use serde_json::Value;
use std::path::{Path, PathBuf};
use std::process::Command;

/// The `missive` binary beside `missive-edge` (built by `cargo test --workspace`; built here
/// when only this package's tests run).
pub fn cli_bin() -> PathBuf {
    let edge = PathBuf::from(super::edge_bin());
    let bin = edge.with_file_name(format!("missive{}", std::env::consts::EXE_SUFFIX));
    if !bin.exists() {
        let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
        let mut cmd = Command::new(cargo);
        cmd.args(["build", "-p", "missive-client", "--bin", "missive"]);
        if edge.components().any(|c| c.as_os_str() == "release") {
            cmd.arg("--release");
        }
        assert!(
            cmd.status().unwrap().success(),
            "building the missive CLI failed"
        );
    }
    bin
}

pub fn missive(profile: &Path, args: &[&str]) -> (bool, String, String) {
    let out = Command::new(cli_bin())
        .arg("--profile")
        .arg(profile)
        .args(args)
        .output()
        .unwrap();
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// Runs the CLI and returns what it printed; a failure fails the test with its stderr.
pub fn ok(profile: &Path, args: &[&str]) -> String {
    let (ok, out, err) = missive(profile, args);
    assert!(ok, "missive {args:?} failed: {err}");
    out
}

/// Registers each of `names` with `edge`, each in the profile directory `dir/<name>`; the
/// profile directories, in the same order.
pub fn register_profiles(edge: &super::Edge, dir: &Path, names: &[&str]) -> Vec<PathBuf> {
    let (server, ca) = (edge.quic.to_string(), edge.cert.display().to_string());
    names
        .iter()
        .map(|name| {
            let profile = dir.join(name);
            ok(
                &profile,
                &["--server", &server, "--ca", &ca, "register", name],
            );
            profile
        })
        .collect()
}

pub fn recv(profile: &Path, secs: &str) -> Vec<Value> {
    recv_args(profile, &["recv", "--wait", secs, "--json"])
}

pub fn recv_args(profile: &Path, args: &[&str]) -> Vec<Value> {
    let (ok, out, err) = missive(profile, args);
    assert!(ok, "recv failed: {err}");
    out.lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("not JSON ({e}): {l}")))
        .collect()
}

pub fn of_type<'a>(events: &'a [Value], t: &str) -> Vec<&'a Value> {
    events.iter().filter(|e| e["type"] == t).collect()
}
