//! The running edge's admin socket: a Unix socket (`admin_socket`, default
//! `<data_dir>/admin.sock`) on which `missive-edge admin …` asks the running edge to act on its
//! live store and sessions (see `protocol.rs` for the wire format).
//!
//! Access: the socket file is mode 0600, so only the service user (and root) can connect;
//! each peer's credentials are checked as well (the file's owner or root), which also covers
//! the moment between `bind` and `chmod`. A socket file left by a killed edge is removed at
//! start when nobody answers on it; a clean shutdown removes the file.
//!
//! Each connection carries one request line and gets one response line. At most
//! [`MAX_CONCURRENT`] requests run at once; a client that sends nothing is dropped after
//! [`READ_TIMEOUT`].

use super::protocol::{self, LiveStats, Request, Response, MAX_REQUEST_LINE};
use crate::shared::Shared;
use missive_storage::StorageError;
use std::os::unix::fs::{FileTypeExt, MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt};
use tokio::sync::{watch, Semaphore};

/// Admin requests served at once; more get a "busy" answer.
pub const MAX_CONCURRENT: usize = 4;

/// Longest wait for the request line after a client connects.
pub const READ_TIMEOUT: Duration = Duration::from_secs(10);

/// Why the admin socket could not be opened; the edge does not start.
#[derive(Debug, thiserror::Error)]
pub enum AdminSocketError {
    /// A live process answers on the path.
    #[error(
        "config key `admin_socket`: another process answers on {path} (is another missive-edge \
         running with this data dir or admin_socket?)"
    )]
    InUse {
        /// The socket path.
        path: PathBuf,
    },
    /// Something that is not a socket sits at the path.
    #[error("config key `admin_socket`: {path} exists and is not a socket: move it away or set another path")]
    NotASocket {
        /// The path.
        path: PathBuf,
    },
    /// Creating, binding or securing the socket failed.
    #[error("config key `admin_socket`: cannot open {path}: {source}")]
    Io {
        /// The socket path.
        path: PathBuf,
        /// Why.
        source: std::io::Error,
    },
}

/// What the request handler needs from the running edge.
#[derive(Debug)]
pub struct AdminCtx {
    /// The live store, registry and metrics.
    pub shared: Arc<Shared>,
    /// The edge's data directory (for backups of its TLS material).
    pub data_dir: PathBuf,
}

/// A bound admin socket, ready to [`AdminSocket::serve`].
#[derive(Debug)]
pub struct AdminSocket {
    listener: tokio::net::UnixListener,
    path: PathBuf,
    /// The uid that owns the socket file (the edge's own): peers must have it, or be root.
    owner: u32,
    /// The socket file's inode, so that shutdown removes only our own file.
    inode: u64,
}

impl AdminSocket {
    /// Binds the socket at `path` with mode 0600, replacing a stale socket file that nobody
    /// answers on. Must run inside a tokio runtime.
    pub fn bind(path: &Path) -> Result<Self, AdminSocketError> {
        let io = |source| AdminSocketError::Io {
            path: path.to_path_buf(),
            source,
        };
        match std::fs::symlink_metadata(path) {
            Ok(meta) if !meta.file_type().is_socket() => {
                return Err(AdminSocketError::NotASocket {
                    path: path.to_path_buf(),
                })
            }
            Ok(_) => {
                if std::os::unix::net::UnixStream::connect(path).is_ok() {
                    return Err(AdminSocketError::InUse {
                        path: path.to_path_buf(),
                    });
                }
                // Left by an edge that did not shut down cleanly.
                tracing::info!(path = %path.display(), "removing a stale admin socket");
                std::fs::remove_file(path).map_err(io)?;
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => return Err(io(e)),
        }
        if let Some(parent) = path.parent().filter(|p| !p.as_os_str().is_empty()) {
            std::fs::create_dir_all(parent).map_err(io)?;
        }
        let listener = std::os::unix::net::UnixListener::bind(path).map_err(io)?;
        std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600)).map_err(io)?;
        let meta = std::fs::metadata(path).map_err(io)?;
        listener.set_nonblocking(true).map_err(io)?;
        let listener = tokio::net::UnixListener::from_std(listener).map_err(io)?;
        Ok(Self {
            listener,
            path: path.to_path_buf(),
            owner: meta.uid(),
            inode: meta.ino(),
        })
    }

    /// The socket's path.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Answers admin requests until `shutdown` turns true, then removes the socket file.
    /// Requests already running finish on their own tasks.
    pub async fn serve(self, ctx: Arc<AdminCtx>, mut shutdown: watch::Receiver<bool>) {
        let limit = Arc::new(Semaphore::new(MAX_CONCURRENT));
        while !*shutdown.borrow() {
            let accepted = tokio::select! {
                r = self.listener.accept() => r,
                changed = shutdown.changed() => {
                    if changed.is_err() {
                        break; // the edge is gone
                    }
                    continue;
                }
            };
            let stream = match accepted {
                Ok((stream, _)) => stream,
                Err(e) => {
                    // E.g. out of file descriptors: back off instead of spinning.
                    tracing::warn!(error = %e, "admin socket accept failed");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    continue;
                }
            };
            match stream.peer_cred() {
                Ok(cred) if cred.uid() == self.owner || cred.uid() == 0 => {}
                Ok(cred) => {
                    tracing::warn!(
                        uid = cred.uid(),
                        "admin socket: refused a peer of another user"
                    );
                    let refused = Response::error(format!(
                        "uid {} may not administer this edge: run as its service user or root",
                        cred.uid()
                    ));
                    tokio::spawn(async move {
                        let _ = write_response(stream, &refused).await;
                    });
                    continue;
                }
                Err(e) => {
                    tracing::warn!(error = %e, "admin socket: peer credentials unavailable");
                    continue;
                }
            }
            let permit = limit.clone().try_acquire_owned();
            let ctx = ctx.clone();
            tokio::spawn(async move {
                match permit {
                    Ok(_permit) => serve_one(stream, &ctx).await,
                    Err(_) => {
                        let busy = Response::error(format!(
                            "the edge is already running {MAX_CONCURRENT} admin requests; try again"
                        ));
                        let _ = write_response(stream, &busy).await;
                    }
                }
            });
        }
        // Dropping `self` removes the socket file.
    }
}

impl Drop for AdminSocket {
    fn drop(&mut self) {
        // Only our own socket: another edge may have replaced it meanwhile.
        let ours = std::fs::symlink_metadata(&self.path).is_ok_and(|m| m.ino() == self.inode);
        if ours {
            if let Err(e) = std::fs::remove_file(&self.path) {
                tracing::warn!(path = %self.path.display(), error = %e, "cannot remove the admin socket");
            }
        }
    }
}

/// Reads one request line (bounded in length and time), runs it, writes the answer.
async fn serve_one(stream: tokio::net::UnixStream, ctx: &AdminCtx) {
    let (read, write) = stream.into_split();
    let mut line = Vec::new();
    // One byte more than allowed, so that an over-long line is seen as such.
    let mut reader = tokio::io::BufReader::new(read).take(MAX_REQUEST_LINE as u64 + 1);
    let response =
        match tokio::time::timeout(READ_TIMEOUT, reader.read_until(b'\n', &mut line)).await {
            Err(_) => Response::error(format!(
                "no request line within {} s",
                READ_TIMEOUT.as_secs()
            )),
            Ok(Err(e)) => Response::error(format!("reading the request failed: {e}")),
            Ok(Ok(_)) => match protocol::parse_request(&line) {
                Ok(request) => handle(ctx, request).await,
                Err(e) => Response::error(e),
            },
        };
    if let Err(e) = write_response(write, &response).await {
        tracing::info!(error = %e, "admin client left before the answer");
    }
}

async fn write_response<W: tokio::io::AsyncWrite + Unpin>(
    mut w: W,
    response: &Response,
) -> std::io::Result<()> {
    w.write_all(protocol::to_line(response).as_bytes()).await?;
    w.shutdown().await
}

/// Runs one admin request on the running edge. Never panics: every failure is an
/// [`Response::Error`] that says what to do.
pub async fn handle(ctx: &AdminCtx, request: Request) -> Response {
    let store = &ctx.shared.store;
    let result = match request {
        Request::Stats => super::stats(store).map(|mut r| {
            if let Response::Stats { live, .. } = &mut r {
                *live = Some(live_stats(&ctx.shared));
            }
            r
        }),
        Request::Invite => super::invite(store).await,
        Request::UserDisable { name, enable } => user_disable(ctx, name, enable).await,
        Request::Backup { to } => backup(ctx, to).await,
        Request::Compact => compact(ctx).await,
    };
    match result {
        Ok(r) => r,
        Err(message) => {
            tracing::warn!(error = %message, "admin request failed");
            Response::error(message)
        }
    }
}

fn live_stats(shared: &Shared) -> LiveStats {
    use crate::connection::Transport;
    let s = shared.store.stats();
    LiveStats {
        sessions: shared.registry.session_count() as u64,
        quic_connections: shared.metrics.open_connections(Transport::Quic),
        tcp_connections: shared.metrics.open_connections(Transport::Tcp),
        group_commits: s.commits.load(Ordering::Relaxed),
        committed_ops: s.ops.load(Ordering::Relaxed),
    }
}

async fn user_disable(ctx: &AdminCtx, name: String, enable: bool) -> Result<Response, String> {
    super::set_disabled(&ctx.shared.store, &name, !enable).await?;
    // The flag is durable first, so a session told to go cannot log straight back in. (A
    // login that read the flag just before it changed and registers just after this call
    // would survive; its next login is refused.)
    let closed = if enable {
        0
    } else {
        ctx.shared.registry.disconnect_user(&name).await
    };
    tracing::info!(user = %name, enabled = enable, sessions_closed = closed, "admin: account flag set");
    Ok(Response::UserDisable {
        name,
        enabled: enable,
        sessions_closed: Some(closed as u64),
    })
}

async fn backup(ctx: &AdminCtx, to: PathBuf) -> Result<Response, String> {
    if !to.is_absolute() {
        return Err(format!(
            "the backup destination must be an absolute path, got {}",
            to.display()
        ));
    }
    super::check_backup_destination(&to)?;
    let report = ctx
        .shared
        .store
        .backup_to(&super::store_dir_in(&to))
        .await
        .map_err(|e| e.to_string())?;
    let tls = ctx.data_dir.join("tls");
    if tls.exists() {
        let dst = to.join("tls");
        tokio::task::spawn_blocking(move || super::copy_tree(&tls, &dst))
            .await
            .map_err(|e| e.to_string())?
            .map_err(|e| format!("copying the TLS material: {e}"))?;
    }
    super::copy_reset_key(&ctx.data_dir, &to)?;
    super::sync_dir(&to)?;
    tracing::info!(to = %to.display(), entries = report.counts.entries(), "admin: backup made");
    Ok(Response::Backup {
        from: ctx.data_dir.clone(),
        to,
        users: report.counts.users,
        queued: report.counts.mailbox_items,
    })
}

async fn compact(ctx: &AdminCtx) -> Result<Response, String> {
    match ctx.shared.store.compact().await {
        Ok(r) => {
            tracing::info!(
                before = r.bytes_before,
                after = r.bytes_after,
                "admin: store compacted"
            );
            Ok(super::compact_response(&r))
        }
        Err(StorageError::CompactionNeedsStop { engine }) => Err(format!(
            "the {engine} engine cannot compact a store while the edge runs: stop the edge, run \
             `missive-edge admin compact` (it rewrites the store into a fresh copy and verifies \
             it), then start the edge again"
        )),
        Err(e) => Err(e.to_string()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Config;
    use crate::notifier::Notifier;
    use crate::registry::{Registry, SessionEvent, SessionHandle};
    use missive_proto::DeviceId;
    use missive_storage::{Engine, MailboxId};

    async fn ctx(dir: &Path, engine: Engine) -> AdminCtx {
        let mut config = Config {
            data_dir: dir.to_path_buf(),
            ..Config::default()
        };
        config.storage.engine = engine;
        let registry = Arc::new(Registry::default());
        let store =
            crate::server::open_store(&config, registry.clone(), Notifier::disabled()).unwrap();
        store
            .register("alice", DeviceId(1), [1; 32], None, false, 1)
            .await
            .unwrap();
        AdminCtx {
            shared: Arc::new(Shared {
                store,
                registry,
                notifier: Notifier::disabled(),
                session: std::sync::RwLock::new(crate::server::session_config(&config)),
                metrics: crate::metrics::Metrics::default(),
                addresses: Arc::new(crate::address_limits::AddressLimits::new(
                    config.address_budgets(),
                )),
                key_claims: crate::claim_budget::ClaimBudgets::new(
                    crate::budget::Rate::per_minute(60, 60),
                ),
                link_code_ttl: std::time::Duration::from_secs(300),
                story_ttl: std::time::Duration::from_secs(86_400),
                media: None,
                transfers_per_min: 1,
                turn: None,
                calls: None,
            }),
            data_dir: dir.to_path_buf(),
        }
    }

    #[tokio::test]
    async fn requests_act_on_the_live_store_and_sessions() {
        let dir = tempfile::tempdir().unwrap();
        let ctx = ctx(dir.path(), Engine::Fjall).await;
        let (session, mut events) = SessionHandle::new(1);
        ctx.shared
            .registry
            .register(MailboxId::new("alice", DeviceId(1)), session);

        let Response::Stats { users, live, .. } = handle_ok(&ctx, Request::Stats).await else {
            panic!("not stats")
        };
        assert_eq!(users, 1);
        assert_eq!(live.unwrap().sessions, 1);

        let Response::Invite { token } = handle_ok(&ctx, Request::Invite).await else {
            panic!("not an invite")
        };
        assert_eq!(token.len(), 32);

        let r = handle_ok(
            &ctx,
            Request::UserDisable {
                name: "alice".into(),
                enable: false,
            },
        )
        .await;
        assert!(
            matches!(
                r,
                Response::UserDisable {
                    sessions_closed: Some(1),
                    enabled: false,
                    ..
                }
            ),
            "{r:?}"
        );
        assert!(matches!(
            events.try_recv(),
            Some(SessionEvent::AccountDisabled)
        ));
        assert!(ctx.shared.store.user("alice").unwrap().unwrap().disabled);
        let r = handle(
            &ctx,
            Request::UserDisable {
                name: "nobody".into(),
                enable: false,
            },
        )
        .await;
        assert!(
            matches!(&r, Response::Error { message } if message.contains("no such user")),
            "{r:?}"
        );

        // Backups: relative paths and non-empty destinations are refused.
        let r = handle(&ctx, Request::Backup { to: "rel".into() }).await;
        assert!(
            matches!(&r, Response::Error { message } if message.contains("absolute")),
            "{r:?}"
        );
        let to = dir.path().join("backup");
        let r = handle_ok(&ctx, Request::Backup { to: to.clone() }).await;
        assert!(
            matches!(
                r,
                Response::Backup {
                    users: 1,
                    queued: 0,
                    ..
                }
            ),
            "{r:?}"
        );
        let r = handle(&ctx, Request::Backup { to }).await;
        assert!(
            matches!(&r, Response::Error { message } if message.contains("not empty")),
            "{r:?}"
        );

        let r = handle_ok(&ctx, Request::Compact).await;
        assert!(
            matches!(
                r,
                Response::Compact {
                    rewritten_entries: None,
                    ..
                }
            ),
            "{r:?}"
        );
        ctx.shared.store.shutdown().await;
    }

    #[tokio::test]
    async fn compact_on_a_running_sled_store_says_to_stop_the_edge() {
        let dir = tempfile::tempdir().unwrap();
        let ctx = ctx(dir.path(), Engine::Sled).await;
        let r = handle(&ctx, Request::Compact).await;
        let Response::Error { message } = r else {
            panic!("{r:?}")
        };
        assert!(message.contains("stop the edge"), "{message}");
        assert!(message.contains("admin compact"), "{message}");
        ctx.shared.store.shutdown().await;
    }

    async fn handle_ok(ctx: &AdminCtx, r: Request) -> Response {
        let out = handle(ctx, r).await;
        assert!(!matches!(out, Response::Error { .. }), "{out:?}");
        out
    }

    /// Talks to a served socket like the CLI does: one line out, one line back.
    async fn ask(path: &Path, line: &[u8]) -> Response {
        let mut s = tokio::net::UnixStream::connect(path).await.unwrap();
        s.write_all(line).await.unwrap();
        s.shutdown().await.unwrap();
        let mut out = Vec::new();
        s.read_to_end(&mut out).await.unwrap();
        protocol::parse_response(&out).unwrap()
    }

    #[tokio::test]
    async fn the_socket_is_private_bounded_and_answers_bad_input_with_errors() {
        let dir = tempfile::tempdir().unwrap();
        let ctx = Arc::new(ctx(dir.path(), Engine::Sled).await);
        let path = dir.path().join("admin.sock");
        // A stale socket file (nobody listening) is replaced.
        drop(std::os::unix::net::UnixListener::bind(&path).unwrap());
        let socket = AdminSocket::bind(&path).unwrap();
        let mode = std::fs::metadata(&path).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600);
        // A second edge on the same path is refused while the first one listens.
        let e = AdminSocket::bind(&path).unwrap_err();
        assert!(e.to_string().contains("admin_socket"), "{e}");
        let (stop_tx, stop_rx) = watch::channel(false);
        let served = tokio::spawn(socket.serve(ctx.clone(), stop_rx));

        let r = ask(&path, b"{\"action\":\"stats\"}\n").await;
        assert!(matches!(r, Response::Stats { users: 1, .. }), "{r:?}");
        let r = ask(&path, b"{\"action\":\"rm -rf\"}\n").await;
        assert!(
            matches!(&r, Response::Error { message } if message.contains("malformed")),
            "{r:?}"
        );
        let r = ask(&path, b"not json\n").await;
        assert!(matches!(r, Response::Error { .. }), "{r:?}");
        // Over-long line without a newline: refused once the limit is passed.
        let mut long = vec![b'x'; MAX_REQUEST_LINE + 10];
        long.push(b'\n');
        let r = ask(&path, &long).await;
        assert!(
            matches!(&r, Response::Error { message } if message.contains("longer than")),
            "{r:?}"
        );
        // A request without a newline, then end of input: still parsed.
        let r = ask(&path, b"{\"action\":\"stats\"}").await;
        assert!(matches!(r, Response::Stats { .. }), "{r:?}");

        stop_tx.send(true).unwrap();
        served.await.unwrap();
        assert!(!path.exists(), "clean shutdown removes the socket");
        ctx.shared.store.shutdown().await;
    }
}
