//! The STUN/TURN relay the edge runs for calls (`[relay]`, DESIGN.md "Relay and calls"), and
//! the credentials it hands to logged-in clients.
//!
//! The protocol lives in `missive-relay`; this module is its owner inside the edge (one
//! owner per concern, CONVENTIONS §4): it starts the relay beside the other listeners, mints
//! credentials for sessions (`TurnCredentialsRequest`), reports its counters to `/metrics`,
//! swaps the secret and the credential lifetime on SIGHUP, and stops it on drain.

use crate::config::Config;
use crate::turn_secret::TurnSecretError;
use missive_relay::{RelayHandle, RelayServer, Stats};
use std::net::SocketAddr;
use std::sync::Mutex;
use std::time::Duration;

/// Why the relay could not start.
#[derive(Debug, thiserror::Error)]
pub enum TurnError {
    /// The secret could not be read or made.
    #[error(transparent)]
    Secret(#[from] TurnSecretError),
    /// The relay refused its configuration or could not bind its socket.
    #[error("relay: {0}")]
    Relay(#[from] missive_relay::ServerError),
}

/// The running relay: credentials, counters, reload and shutdown.
#[derive(Debug)]
pub struct TurnService {
    /// `None` once shut down. A std mutex: held only to mint, read counters or swap the
    /// secret, never across an `.await`.
    inner: Mutex<Inner>,
    local_addr: SocketAddr,
    urls: Vec<String>,
}

#[derive(Debug)]
struct Inner {
    handle: Option<RelayHandle>,
    ttl: Duration,
}

impl TurnService {
    /// Starts the relay when `relay.listen` is set (`Ok(None)` when it is off): reads or
    /// makes the secret, binds the listening socket, starts the relay's tasks.
    pub async fn start(config: &Config) -> Result<Option<Self>, TurnError> {
        let relay = &config.relay;
        // Validated at start; a bad address cannot get here.
        let Some(listen) = relay.listen_addr().ok().flatten() else {
            return Ok(None);
        };
        let secret = crate::turn_secret::load(relay.secret_file.as_deref(), &config.data_dir)?;
        let handle = RelayServer::start(relay.relay_config(listen, secret)).await?;
        let local_addr = handle.local_addr();
        let host = relay.url_host(local_addr);
        let port = local_addr.port();
        let mut urls = vec![
            format!("stun:{host}:{port}"),
            format!("turn:{host}:{port}?transport=udp"),
        ];
        if relay.tcp {
            // The same port number over TCP, for networks that drop UDP.
            urls.push(format!("turn:{host}:{port}?transport=tcp"));
        }
        Ok(Some(Self {
            inner: Mutex::new(Inner {
                handle: Some(handle),
                ttl: Duration::from_secs(relay.credential_ttl_secs),
            }),
            local_addr,
            urls,
        }))
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        // Nothing panics while holding it; a poisoned lock still holds a usable handle.
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The listening socket's address (the real port when port 0 was asked for).
    pub fn local_addr(&self) -> SocketAddr {
        self.local_addr
    }

    /// Credentials for `user` under the current secret, as the answer to `request_id`;
    /// `None` after shutdown.
    pub fn credentials(
        &self,
        user: &str,
        request_id: u32,
    ) -> Option<missive_proto::TurnCredentials> {
        let inner = self.lock();
        let minted = inner.handle.as_ref()?.mint(user, inner.ttl);
        Some(missive_proto::TurnCredentials {
            request_id,
            username: minted.username,
            password: minted.password,
            ttl_secs: u32::try_from(minted.ttl.as_secs()).unwrap_or(u32::MAX),
            urls: self.urls.clone(),
        })
    }

    /// A snapshot of the relay's counters; `None` after shutdown.
    pub fn stats(&self) -> Option<Stats> {
        self.lock().handle.as_ref().map(RelayHandle::stats)
    }

    /// SIGHUP: reads the secret again and takes the new credential lifetime. Credentials
    /// minted before keep working until they expire (the relay keeps the previous secret).
    /// A secret that cannot be read keeps the running one, and the error is returned.
    pub fn reload(&self, config: &Config) -> Result<(), TurnSecretError> {
        let secret =
            crate::turn_secret::load(config.relay.secret_file.as_deref(), &config.data_dir);
        let mut inner = self.lock();
        inner.ttl = Duration::from_secs(config.relay.credential_ttl_secs);
        let secret = secret?;
        if let Some(handle) = inner.handle.as_ref() {
            handle.set_secret(secret);
        }
        Ok(())
    }

    /// Stops the relay: closes its sockets and waits for its tasks.
    pub async fn shutdown(&self) {
        let handle = self.lock().handle.take();
        if let Some(handle) = handle {
            handle.shutdown().await;
        }
    }
}
