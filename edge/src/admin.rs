//! `missive-edge admin …`: offline administration of a stopped edge's data directory
//! (the database is locked while an edge runs), a storage migration between engines, and a
//! storage benchmark.

mod bench_storage;
mod migrate;

use crate::config::Config;
use crate::notifier::Notifier;
use crate::registry::Registry;
use crate::shared::now_ms;
use missive_storage::Engine;
use std::path::{Path, PathBuf};
use std::sync::Arc;

pub use bench_storage::BenchArgs;

/// `missive-edge admin …` subcommands.
#[derive(clap::Subcommand, Debug)]
pub enum AdminAction {
    /// Create an invite token (prints it) for servers with `registration.mode = "invite"`.
    Invite,
    /// Print users, queued envelopes and disk use.
    Stats,
    /// Disable (or with --enable, re-enable) a user's logins.
    UserDisable {
        /// The user.
        name: String,
        /// Re-enable instead.
        #[arg(long)]
        enable: bool,
    },
    /// Copy the stopped edge's store to the other storage engine, verify the copy entry by
    /// entry, and make it the active one; then set `storage.engine` to match.
    Migrate {
        /// The engine the store is on now (`sled` or `fjall`).
        #[arg(long)]
        from: Engine,
        /// The engine to move it to.
        #[arg(long)]
        to: Engine,
    },
    /// Copy the stopped edge's database and TLS material to a new directory and verify the
    /// copy opens with the same users and queued envelopes. Restore: stop the edge and use the
    /// copy as its `data_dir`.
    Backup {
        /// Destination directory (must not exist, or be empty).
        #[arg(long)]
        to: PathBuf,
    },
    /// Measure the storage engine without the network: concurrent durable appends, then disk,
    /// memory, reopen and drain times. Uses a fresh directory, never the data directory.
    BenchStorage(BenchArgs),
}

/// Users and queued envelopes of the store in `config`'s data dir (opens and closes it).
async fn census(config: &Config) -> Result<(usize, usize), String> {
    let store =
        crate::server::open_store(config, Arc::new(Registry::default()), Notifier::disabled())
            .map_err(|e| e.to_string())?;
    let counts = store
        .user_count()
        .and_then(|u| Ok((u, store.total_queued()?)))
        .map_err(|e| e.to_string());
    store.shutdown().await;
    drop(store);
    counts
}

async fn backup(config: &Config, to: &Path) -> Result<(), String> {
    if to.exists()
        && std::fs::read_dir(to)
            .map_err(|e| format!("{}: {e}", to.display()))?
            .next()
            .is_some()
    {
        return Err(format!("{} exists and is not empty", to.display()));
    }
    // Opening takes the database lock: this fails while an edge runs on the data dir.
    let before = census(config).await?;
    for part in ["db", "tls"] {
        let src = config.data_dir.join(part);
        if src.exists() {
            copy_tree(&src, &to.join(part))
                .map_err(|e| format!("copying {}: {e}", src.display()))?;
        }
    }
    let mut copy_config = config.clone();
    copy_config.data_dir = to.to_path_buf();
    let after = census(&copy_config).await?;
    if before != after {
        return Err(format!(
            "backup does not match: {} users / {} queued in the source, {} / {} in the copy",
            before.0, before.1, after.0, after.1
        ));
    }
    println!(
        "backup of {} in {}: {} users, {} queued envelopes, verified",
        config.data_dir.display(),
        to.display(),
        after.0,
        after.1
    );
    Ok(())
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

/// The store directory inside the data directory (as `server::open_store` opens it).
fn store_dir(config: &Config) -> PathBuf {
    config.data_dir.join("db")
}

/// Runs one admin action against `config.data_dir`.
pub async fn run(config: Config, action: AdminAction) -> Result<(), String> {
    // These two do not open the configured store.
    let action = match action {
        AdminAction::Migrate { from, to } => return migrate::run(&config, from, to).await,
        AdminAction::BenchStorage(args) => return bench_storage::run(&config, args).await,
        AdminAction::Backup { to } => return backup(&config, &to).await,
        other => other,
    };
    let store = crate::server::open_store(
        &config,
        std::sync::Arc::new(Registry::default()),
        Notifier::disabled(),
    )
    .map_err(|e| e.to_string())?;
    let result = match action {
        AdminAction::Invite => {
            use rand::RngCore;
            let mut raw = [0u8; 16];
            rand::thread_rng().fill_bytes(&mut raw);
            let token: String = raw.iter().map(|b| format!("{b:02x}")).collect();
            store
                .add_invite(&token, now_ms())
                .await
                .map_err(|e| e.to_string())
                .map(|()| println!("{token}"))
        }
        AdminAction::Stats => (|| {
            println!("storage engine: {}", store.engine());
            println!("users: {}", store.user_count().map_err(|e| e.to_string())?);
            println!(
                "queued envelopes: {}",
                store.total_queued().map_err(|e| e.to_string())?
            );
            println!(
                "disk bytes: {}",
                store.size_on_disk().map_err(|e| e.to_string())?
            );
            Ok(())
        })(),
        AdminAction::UserDisable { name, enable } => {
            match store.set_disabled(&name, !enable).await {
                Ok(true) => {
                    println!("{name}: {}", if enable { "enabled" } else { "disabled" });
                    Ok(())
                }
                Ok(false) => Err(format!("no such user: {name}")),
                Err(e) => Err(e.to_string()),
            }
        }
        AdminAction::Migrate { .. } | AdminAction::BenchStorage(_) | AdminAction::Backup { .. } => {
            Err("handled before the store is opened".into())
        }
    };
    store.shutdown().await;
    result
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
