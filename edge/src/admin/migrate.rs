//! `missive-edge admin migrate --from ENGINE --to ENGINE`: moves a stopped edge's store to the
//! other storage engine (see `missive_storage::migrate`) and tells the sysadmin what to change.

use crate::config::Config;
use missive_storage::Engine;

/// Copies the store in `config`'s data directory from `from` to `to`, verifies it, makes `to`
/// the active engine, and prints what was copied and what to do next.
pub(super) async fn run(config: &Config, from: Engine, to: Engine) -> Result<(), String> {
    let dir = super::store_dir(config);
    let mut store_config = config.storage.store_config();
    store_config.engine = to;
    let started = std::time::Instant::now();
    let report = tokio::task::spawn_blocking({
        let dir = dir.clone();
        move || missive_storage::migrate(&dir, from, to, &store_config)
    })
    .await
    .map_err(|e| e.to_string())?
    .map_err(|e| e.to_string())?;
    println!(
        "migrated {} from {from} to {to} in {:.1} s and verified every entry:",
        dir.display(),
        started.elapsed().as_secs_f64()
    );
    println!("  users: {}", report.counts.users);
    println!("  device keys: {}", report.counts.device_keys);
    println!("  invites: {}", report.counts.invites);
    println!("  queued mailbox items: {}", report.counts.mailbox_items);
    println!("  mailbox seq counters: {}", report.counts.seq_counters);
    println!("  dedup keys: {}", report.counts.dedup_keys);
    println!("  contacts: {}", report.counts.contacts);
    if report.counts.other > 0 {
        println!("  other entries: {}", report.counts.other);
    }
    println!(
        "  total: {} entries, {} bytes",
        report.counts.entries(),
        report.counts.bytes
    );
    println!(
        "the {from} files stay in {} as a backup; delete them once the edge runs well on {to}",
        report.backup.display()
    );
    if let Some(old) = &report.replaced {
        println!("an older {to} copy was moved to {}", old.display());
    }
    if config.storage.engine != to {
        println!("now set `engine = \"{to}\"` in the [storage] section of the config file");
    }
    Ok(())
}
