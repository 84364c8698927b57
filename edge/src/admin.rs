//! `missive-edge admin …`: offline administration of a stopped edge's data directory
//! (the database is locked while an edge runs).

use crate::config::Config;
use crate::notifier::Notifier;
use crate::registry::Registry;
use crate::shared::now_ms;

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
}

/// Runs one admin action against `config.data_dir`.
pub async fn run(config: Config, action: AdminAction) -> Result<(), String> {
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
    };
    store.shutdown().await;
    result
}
