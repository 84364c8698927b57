//! `missive-edge admin …`: administration of an edge's data directory, running or stopped.
//!
//! Each action first tries the running edge's admin socket (`admin_socket`, default
//! `<data_dir>/admin.sock`; see [`socket`]). When an edge answers there, the action runs inside
//! it, on its live store and sessions. When nobody answers, it runs offline on the stopped
//! edge's data directory (opening the store takes the database lock, which a running edge
//! holds). Both paths produce the same [`protocol::Response`] and so print the same; stderr
//! says which one ran.
//!
//! | action | running edge | stopped edge |
//! | --- | --- | --- |
//! | `stats` | census + live sessions, connections, commits | census |
//! | `invite` | token through the live store | token written to the store |
//! | `user-disable` | flag set, live sessions closed with `AccountDisabled` | flag set |
//! | `backup` | consistent copy by the committer (writes wait meanwhile) | file copy |
//! | `compact` | fjall: major compaction; sled: refused (stop first) | fjall: major compaction; sled: rewrite into a verified fresh copy |
//! | `migrate`, `bench-storage` | refused: stop the edge first | run |

mod bench_storage;
mod migrate;
pub mod protocol;
pub mod socket;

use crate::config::Config;
use crate::notifier::Notifier;
use crate::registry::Registry;
use crate::shared::now_ms;
use missive_storage::{CompactReport, Engine, Store};
use protocol::{Request, Response};
use std::path::{Path, PathBuf};
use std::sync::Arc;

pub use bench_storage::BenchArgs;

/// `missive-edge admin …` subcommands.
#[derive(clap::Subcommand, Debug)]
pub enum AdminAction {
    /// Create an invite token (prints it) for servers with `registration.mode = "invite"`.
    Invite,
    /// Print users, queued envelopes and disk use (and live sessions on a running edge).
    Stats,
    /// Disable (or with --enable, re-enable) a user's logins; on a running edge, disabling
    /// also closes the user's live sessions.
    UserDisable {
        /// The user.
        name: String,
        /// Re-enable instead.
        #[arg(long)]
        enable: bool,
    },
    /// Copy the stopped edge's store to the other storage engine, verify the copy entry by
    /// entry, and make it the active one; then set `storage.engine` to match. Refused while an
    /// edge runs.
    Migrate {
        /// The engine the store is on now (`sled` or `fjall`).
        #[arg(long)]
        from: Engine,
        /// The engine to move it to.
        #[arg(long)]
        to: Engine,
    },
    /// Copy the edge's database and TLS material to a new directory and verify the copy holds
    /// the same entries. On a running edge the edge makes the copy (writes wait meanwhile), so
    /// DIR must be writable by the service user. Restore: stop the edge and use the copy as its
    /// `data_dir`.
    Backup {
        /// Destination directory (must not exist, or be empty).
        #[arg(long)]
        to: PathBuf,
    },
    /// Give back the disk space of deleted entries and print disk bytes before and after.
    /// fjall: a major compaction, running or stopped. sled: only on a stopped edge, by
    /// rewriting the store into a fresh copy (verified entry by entry; the old files are
    /// deleted).
    Compact,
    /// Measure the storage engine without the network: concurrent durable appends, then disk,
    /// memory, reopen and drain times. Uses a fresh directory, never the data directory.
    /// Refused while an edge runs (it would compete for the same disk).
    BenchStorage(BenchArgs),
}

/// Opens the store in `config`'s data dir, as a stopped edge's (fails while an edge runs).
fn open_offline(config: &Config) -> Result<Store, String> {
    crate::server::open_store(config, Arc::new(Registry::default()), Notifier::disabled())
        .map_err(|e| e.to_string())
}

/// Users and queued envelopes of the store in `config`'s data dir (opens and closes it).
async fn census(config: &Config) -> Result<(usize, usize), String> {
    let store = open_offline(config)?;
    let counts = store
        .user_count()
        .and_then(|u| Ok((u, store.total_queued()?)))
        .map_err(|e| e.to_string());
    store.shutdown().await;
    drop(store);
    counts
}

/// A backup destination must not exist, or be an empty directory.
fn check_backup_destination(to: &Path) -> Result<(), String> {
    if to.exists()
        && std::fs::read_dir(to)
            .map_err(|e| format!("{}: {e}", to.display()))?
            .next()
            .is_some()
    {
        return Err(format!("{} exists and is not empty", to.display()));
    }
    Ok(())
}

/// Offline backup: a file copy of the stopped edge's database and TLS material, then both
/// are opened and their users and queued envelopes compared.
async fn backup_offline(config: &Config, to: &Path) -> Result<Response, String> {
    check_backup_destination(to)?;
    // Opening takes the database lock: this fails if an edge runs without an admin socket.
    let before = census(config).await?;
    for part in ["db", "tls"] {
        let src = config.data_dir.join(part);
        if src.exists() {
            copy_tree(&src, &to.join(part))
                .map_err(|e| format!("copying {}: {e}", src.display()))?;
        }
    }
    copy_reset_key(&config.data_dir, to)?;
    sync_dir(to)?;
    let mut copy_config = config.clone();
    copy_config.data_dir = to.to_path_buf();
    let after = census(&copy_config).await?;
    if before != after {
        return Err(format!(
            "backup does not match: {} users / {} queued in the source, {} / {} in the copy",
            before.0, before.1, after.0, after.1
        ));
    }
    Ok(Response::Backup {
        from: config.data_dir.clone(),
        to: to.to_path_buf(),
        users: after.0 as u64,
        queued: after.1 as u64,
    })
}

/// Copies the QUIC reset key (if any) into a backup, so that an edge restored from it in the
/// old one's place lets the old clients reconnect at once (see `reset_key`).
fn copy_reset_key(data_dir: &Path, to: &Path) -> Result<(), String> {
    let src = data_dir.join(crate::reset_key::FILE_NAME);
    if !src.exists() {
        return Ok(());
    }
    let dst = to.join(crate::reset_key::FILE_NAME);
    // `fs::copy` keeps the 0600 mode.
    std::fs::copy(&src, &dst)
        .and_then(|_| std::fs::File::open(&dst)?.sync_all())
        .map_err(|e| format!("copying {}: {e}", src.display()))
}

fn copy_tree(src: &Path, dst: &Path) -> std::io::Result<()> {
    std::fs::create_dir_all(dst)?;
    for entry in std::fs::read_dir(src)? {
        let entry = entry?;
        let target = dst.join(entry.file_name());
        if entry.file_type()?.is_dir() {
            copy_tree(&entry.path(), &target)?;
        } else {
            std::fs::copy(entry.path(), &target)?;
        }
    }
    // Make the copy durable before saying it is done.
    std::fs::File::open(dst)?.sync_all()
}

/// fsyncs a directory, so that what was created in it survives power loss.
fn sync_dir(dir: &Path) -> Result<(), String> {
    std::fs::File::open(dir)
        .and_then(|f| f.sync_all())
        .map_err(|e| format!("{}: {e}", dir.display()))
}

/// The store directory inside the data directory (as `server::open_store` opens it).
fn store_dir(config: &Config) -> PathBuf {
    store_dir_in(&config.data_dir)
}

/// The store directory inside `data_dir`.
fn store_dir_in(data_dir: &Path) -> PathBuf {
    data_dir.join("db")
}

/// Store census, without live figures.
fn stats(store: &Store) -> Result<Response, String> {
    let e = |e: missive_storage::StorageError| e.to_string();
    Ok(Response::Stats {
        engine: store.engine().to_string(),
        users: store.user_count().map_err(e)? as u64,
        queued: store.total_queued().map_err(e)? as u64,
        disk_bytes: store.size_on_disk().map_err(e)?,
        stored_bytes: store.logical_bytes().map_err(e)?,
        live: None,
    })
}

/// Creates and stores a random invite token.
async fn invite(store: &Store) -> Result<Response, String> {
    use rand::RngCore;
    let mut raw = [0u8; 16];
    rand::thread_rng().fill_bytes(&mut raw);
    let token: String = raw.iter().map(|b| format!("{b:02x}")).collect();
    store
        .add_invite(&token, now_ms())
        .await
        .map_err(|e| e.to_string())?;
    Ok(Response::Invite { token })
}

/// Sets `name`'s disabled flag; an unknown user is an error.
async fn set_disabled(store: &Store, name: &str, disabled: bool) -> Result<(), String> {
    match store.set_disabled(name, disabled).await {
        Ok(true) => Ok(()),
        Ok(false) => Err(format!("no such user: {name}")),
        Err(e) => Err(e.to_string()),
    }
}

fn compact_response(r: &CompactReport) -> Response {
    Response::Compact {
        engine: r.engine.to_string(),
        bytes_before: r.bytes_before,
        bytes_after: r.bytes_after,
        rewritten_entries: r.rewritten.map(|c| c.entries()),
    }
}

/// Runs `request` on the stopped edge's data directory.
async fn run_offline(config: &Config, request: Request) -> Result<Response, String> {
    match request {
        Request::Stats => {
            let store = open_offline(config)?;
            let r = stats(&store);
            store.shutdown().await;
            r
        }
        Request::Invite => {
            let store = open_offline(config)?;
            let r = invite(&store).await;
            store.shutdown().await;
            r
        }
        Request::UserDisable { name, enable } => {
            let store = open_offline(config)?;
            let r = set_disabled(&store, &name, !enable).await;
            store.shutdown().await;
            r.map(|()| Response::UserDisable {
                name,
                enabled: enable,
                sessions_closed: None,
            })
        }
        Request::Backup { to } => backup_offline(config, &to).await,
        Request::Compact => {
            let dir = store_dir(config);
            let store_config = config.store_config();
            let report =
                tokio::task::spawn_blocking(move || missive_storage::compact(&dir, &store_config))
                    .await
                    .map_err(|e| e.to_string())?
                    .map_err(|e| match e {
                        // The engines' file lock: most likely an edge without admin socket.
                        missive_storage::StorageError::Db(_) => format!(
                            "{e} (is a missive-edge running on {} without an admin socket?)",
                            config.data_dir.display()
                        ),
                        e => e.to_string(),
                    })?;
            Ok(compact_response(&report))
        }
    }
}

/// How the CLI reached the running edge, if it did.
enum Reached {
    /// Nobody answers on the socket (or it is disabled): the edge is stopped.
    Nobody,
    /// A live edge answers on this socket.
    Edge(tokio::net::UnixStream),
}

/// Connects to the admin socket. "Not there" and "nobody listening" mean a stopped edge; any
/// other failure (e.g. permission denied) is an error, since an edge may well be running.
async fn reach(config: &Config) -> Result<Reached, String> {
    let Some(path) = config.admin_socket_path() else {
        return Ok(Reached::Nobody);
    };
    match tokio::net::UnixStream::connect(&path).await {
        Ok(s) => Ok(Reached::Edge(s)),
        Err(e)
            if matches!(
                e.kind(),
                std::io::ErrorKind::NotFound | std::io::ErrorKind::ConnectionRefused
            ) =>
        {
            Ok(Reached::Nobody)
        }
        Err(e) => {
            let hint = if e.kind() == std::io::ErrorKind::PermissionDenied {
                " (run this as the edge's service user, or root)"
            } else {
                ""
            };
            Err(format!(
                "cannot reach the running edge's admin socket {}: {e}{hint}",
                path.display()
            ))
        }
    }
}

/// Sends one request on a connected admin socket and reads the answer.
async fn ask(stream: tokio::net::UnixStream, request: &Request) -> Result<Response, String> {
    use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt};
    let (read, mut write) = stream.into_split();
    write
        .write_all(protocol::to_line(request).as_bytes())
        .await
        .map_err(|e| format!("sending the request to the edge: {e}"))?;
    let mut line = Vec::new();
    tokio::io::BufReader::new(read)
        .take(protocol::MAX_RESPONSE_LINE as u64)
        .read_until(b'\n', &mut line)
        .await
        .map_err(|e| format!("reading the edge's answer: {e}"))?;
    if line.is_empty() {
        return Err("the edge closed the admin connection without answering (see its log)".into());
    }
    protocol::parse_response(&line)
}

/// Runs one admin action: inside the running edge when one answers on the admin socket,
/// offline on the data directory otherwise. Prints the result on stdout and the mode on
/// stderr.
pub async fn run(config: Config, action: AdminAction) -> Result<(), String> {
    let request = match action {
        AdminAction::Migrate { from, to } => {
            refuse_if_running(&config, "migrate").await?;
            return migrate::run(&config, from, to).await;
        }
        AdminAction::BenchStorage(args) => {
            refuse_if_running(&config, "bench-storage").await?;
            return bench_storage::run(&config, args).await;
        }
        AdminAction::Stats => Request::Stats,
        AdminAction::Invite => Request::Invite,
        AdminAction::UserDisable { name, enable } => Request::UserDisable { name, enable },
        AdminAction::Compact => Request::Compact,
        AdminAction::Backup { to } => Request::Backup {
            // The running edge resolves paths from its own working directory.
            to: std::path::absolute(&to).map_err(|e| format!("{}: {e}", to.display()))?,
        },
    };
    let response = match reach(&config).await? {
        Reached::Edge(stream) => {
            eprintln!("(via running edge)");
            ask(stream, &request).await?
        }
        Reached::Nobody => {
            eprintln!(
                "(offline: no running edge answers; working on the data dir {})",
                config.data_dir.display()
            );
            run_offline(&config, request).await?
        }
    };
    print!("{}", response.render()?);
    Ok(())
}

/// Fails with what to do when a live edge answers on the admin socket.
async fn refuse_if_running(config: &Config, action: &str) -> Result<(), String> {
    match reach(config).await? {
        Reached::Nobody => Ok(()),
        Reached::Edge(_) => Err(format!(
            "an edge is running on {} (it answers on its admin socket): `admin {action}` works \
             only on a stopped edge; stop the edge first (e.g. systemctl stop missive-edge), \
             then run it again",
            config.data_dir.display()
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config_on(data_dir: &std::path::Path, engine: Engine) -> Config {
        let mut c = Config {
            data_dir: data_dir.to_path_buf(),
            ..Config::default()
        };
        c.storage.engine = engine;
        c
    }

    #[tokio::test]
    async fn migrate_switches_a_stopped_edges_store_and_back() {
        let dir = tempfile::tempdir().unwrap();
        let sled = config_on(dir.path(), Engine::Sled);
        let fjall = config_on(dir.path(), Engine::Fjall);
        let store = crate::server::open_store(
            &sled,
            std::sync::Arc::new(Registry::default()),
            Notifier::disabled(),
        )
        .unwrap();
        store
            .register("alice", missive_proto::DeviceId(1), [1; 32], None, false, 1)
            .await
            .unwrap();
        store.shutdown().await;
        drop(store);

        run(
            sled.clone(),
            AdminAction::Migrate {
                from: Engine::Sled,
                to: Engine::Fjall,
            },
        )
        .await
        .unwrap();
        // The old engine is refused with a message that says what to do.
        let e = run(sled.clone(), AdminAction::Stats).await.unwrap_err();
        assert!(e.contains("holds a fjall store"), "{e}");
        run(fjall.clone(), AdminAction::Stats).await.unwrap();
        let store = crate::server::open_store(
            &fjall,
            std::sync::Arc::new(Registry::default()),
            Notifier::disabled(),
        )
        .unwrap();
        assert!(store.user("alice").unwrap().is_some());
        store.shutdown().await;
        drop(store);

        // Wrong direction: refused, nothing changes.
        let e = run(
            fjall.clone(),
            AdminAction::Migrate {
                from: Engine::Sled,
                to: Engine::Fjall,
            },
        )
        .await
        .unwrap_err();
        assert!(e.contains("on fjall, not sled"), "{e}");
        run(
            fjall,
            AdminAction::Migrate {
                from: Engine::Fjall,
                to: Engine::Sled,
            },
        )
        .await
        .unwrap();
        run(sled, AdminAction::Stats).await.unwrap();
    }
}
