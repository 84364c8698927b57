//! Bench users: registration and connection of many SDK clients, concurrently but bounded.

use missive_client::{register, Client, ClientConfig, EventStream, Identity, QuicEndpoint};
use missive_proto::DeviceId;
use std::net::SocketAddr;
use std::sync::Arc;
use tokio::sync::Semaphore;

/// Where the edge is and what to trust.
#[derive(Debug, Clone)]
pub struct Target {
    /// Edge address.
    pub addr: SocketAddr,
    /// PEM of the edge's certificate.
    pub ca_pem: Vec<u8>,
    /// QUIC clients per UDP socket (1: a socket each, as phones have).
    pub clients_per_socket: usize,
}

/// Clients per UDP socket so that `clients` sockets fit in half of this process's open-file
/// limit (the rest is for the spawned edge's pipes, files, TCP fallbacks): 1 when they fit.
pub fn auto_clients_per_socket(clients: usize) -> usize {
    let budget = (open_file_limit().unwrap_or(1024) / 2).max(1);
    clients.div_ceil(budget).max(1)
}

/// The soft `Max open files` limit of this process, from `/proc/self/limits`.
fn open_file_limit() -> Option<usize> {
    let limits = std::fs::read_to_string("/proc/self/limits").ok()?;
    let line = limits.lines().find(|l| l.starts_with("Max open files"))?;
    line.split_whitespace().nth(3)?.parse().ok()
}

/// Registrations / connections in flight at once.
const SETUP_CONCURRENCY: usize = 64;

/// A registered bench user.
#[derive(Debug, Clone)]
pub struct User {
    /// User name.
    pub name: String,
    /// Config to connect as this user.
    pub config: ClientConfig,
}

/// Registers `n` users named `{prefix}{i}`.
pub async fn register_users(target: &Target, prefix: &str, n: usize) -> Result<Vec<User>, String> {
    let slots = Arc::new(Semaphore::new(SETUP_CONCURRENCY));
    let mut tasks = Vec::with_capacity(n);
    let per_socket = target.clients_per_socket.max(1);
    let mut socket = None;
    for i in 0..n {
        if per_socket > 1 && i % per_socket == 0 {
            socket = Some(QuicEndpoint::bind_for(target.addr).map_err(|e| e.to_string())?);
        }
        let name = format!("{prefix}{i}");
        let mut config = ClientConfig::new(
            target.addr,
            target.ca_pem.clone(),
            Identity::generate(name.clone(), DeviceId(1)),
        );
        // Bench load is not a human: retry quickly after a restart.
        config.reconnect.initial = std::time::Duration::from_millis(50);
        config.quic_endpoint = socket.clone();
        let slots = slots.clone();
        tasks.push(tokio::spawn(async move {
            let _permit = slots.acquire().await.map_err(|e| e.to_string())?;
            register(&config, None)
                .await
                .map_err(|e| format!("register {name}: {e}"))?;
            Ok::<_, String>(User { name, config })
        }));
    }
    let mut users = Vec::with_capacity(n);
    for t in tasks {
        users.push(t.await.map_err(|e| e.to_string())??);
    }
    Ok(users)
}

/// Connects every user; returns clients in the same order.
pub async fn connect_all(users: &[User]) -> Result<Vec<(Client, EventStream)>, String> {
    let slots = Arc::new(Semaphore::new(SETUP_CONCURRENCY));
    let mut tasks = Vec::with_capacity(users.len());
    for u in users {
        let (config, slots) = (u.config.clone(), slots.clone());
        tasks.push(tokio::spawn(async move {
            let _permit = slots.acquire().await.map_err(|e| e.to_string())?;
            Client::connect(config).await.map_err(|e| e.to_string())
        }));
    }
    let mut out = Vec::with_capacity(users.len());
    for t in tasks {
        out.push(t.await.map_err(|e| e.to_string())??);
    }
    Ok(out)
}

/// A short random prefix so repeated runs against one edge never collide on names.
pub fn run_prefix(scenario: &str) -> String {
    let tag: u32 = rand::random();
    format!("{}{:08x}u", &scenario[..1], tag)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn open_file_limit_is_read_and_shares_sockets_only_past_it() {
        let limit = open_file_limit().expect("Linux has /proc/self/limits");
        assert!(limit > 0);
        assert_eq!(auto_clients_per_socket(1), 1);
        assert_eq!(auto_clients_per_socket(limit / 2), 1);
        assert_eq!(auto_clients_per_socket(limit / 2 * 3), 3);
    }
}
