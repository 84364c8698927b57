//! The shipped unit passes `systemd-analyze verify` with no complaint, and the sysctl drop-in
//! names only keys this kernel has.

use std::path::Path;
use std::process::Command;

#[test]
fn unit_file_verifies_cleanly() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    let unit = std::fs::read_to_string(root.join("systemd/missive-edge.service")).unwrap();
    for needed in [
        "Type=notify",
        "WatchdogSec=",
        "StateDirectory=",
        "ConfigurationDirectory=",
        "LimitNOFILE=",
        "AmbientCapabilities=CAP_NET_BIND_SERVICE",
        "ProtectSystem=strict",
        "NoNewPrivileges=yes",
        "PrivateTmp=yes",
        "ProtectHome=yes",
        "RestrictAddressFamilies=",
        "SystemCallFilter=@system-service",
        "Restart=on-failure",
    ] {
        assert!(unit.contains(needed), "unit lacks {needed}");
    }
    // verify checks that ExecStart exists: point it at the binary this build made.
    let dir = tempfile::tempdir().unwrap();
    let copy = dir.path().join("missive-edge.service");
    std::fs::write(
        &copy,
        unit.replace(
            "/usr/local/bin/missive-edge",
            env!("CARGO_BIN_EXE_missive-edge"),
        ),
    )
    .unwrap();
    let out = Command::new("systemd-analyze")
        .arg("verify")
        .arg(&copy)
        .output()
        .expect("systemd-analyze not found: .ci/run installs it (apt-get install systemd)");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "verify failed: {stderr}");
    // verify exits 0 even for unknown keys; any complaint about our file counts as a failure.
    let complaints: Vec<&str> = stderr
        .lines()
        .filter(|l| l.contains("missive-edge.service"))
        .collect();
    assert!(complaints.is_empty(), "verify complained: {complaints:?}");
}

#[test]
fn sysctl_drop_in_names_real_keys() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    let conf = std::fs::read_to_string(root.join("systemd/99-missive.conf")).unwrap();
    let keys: Vec<&str> = conf
        .lines()
        .filter(|l| !l.trim_start().starts_with('#') && l.contains('='))
        .map(|l| l.split('=').next().unwrap().trim())
        .collect();
    assert!(keys.contains(&"net.core.rmem_max"));
    for k in keys {
        let path = Path::new("/proc/sys").join(k.replace('.', "/"));
        assert!(path.exists(), "no such sysctl: {k}");
    }
}
