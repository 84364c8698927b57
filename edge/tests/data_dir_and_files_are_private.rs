//! Outside systemd too, what the edge writes is for its own user: the data dir is created
//! 0700 and every file in it 0600 (directories 0700), whatever the caller's umask.

mod common;

use common::{sdk_user, text, Edge};
use std::os::unix::fs::PermissionsExt;
use std::path::Path;

fn walk(dir: &Path, out: &mut Vec<(String, u32, bool)>) {
    for e in std::fs::read_dir(dir).unwrap().flatten() {
        let meta = e.metadata().unwrap();
        let path = e.path();
        out.push((
            path.display().to_string(),
            meta.permissions().mode() & 0o777,
            meta.is_dir(),
        ));
        if meta.is_dir() {
            walk(&path, out);
        }
    }
}

#[tokio::test]
async fn the_data_dir_and_its_files_are_private() {
    let dir = tempfile::tempdir().unwrap();
    // A data dir the edge creates itself, under this test's umask (022 as a rule).
    let edge = Edge::start_fresh(dir.path(), &[]);
    let data = edge.data_dir.clone();
    let (alice, _a, _) = sdk_user(&edge, "alice").await;
    let (bob, _b, _) = sdk_user(&edge, "bob").await;
    alice.send("bob", text("private")).await.unwrap();
    alice.close().await.unwrap();
    bob.close().await.unwrap();
    let mode = std::fs::metadata(&data).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode, 0o700, "data dir mode {mode:o}");
    let mut entries = Vec::new();
    walk(&data, &mut entries);
    assert!(entries.len() > 5, "too few files to judge: {entries:?}");
    for (path, mode, is_dir) in entries {
        let want = if is_dir { 0o700 } else { 0o600 };
        // A Unix socket's mode is set on purpose (0600); fine either way here.
        assert!(
            mode & !want == 0,
            "{path} has mode {mode:o}, more open than {want:o}"
        );
    }
}
