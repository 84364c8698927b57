//! State shared by every connection task: one owner per concern.

use crate::notifier::Notifier;
use crate::registry::Registry;
use crate::session::SessionConfig;
use missive_proto::{Frame, Presence, PresenceState, Visibility};
use missive_storage::Store;
use std::sync::Arc;
use std::time::{SystemTime, UNIX_EPOCH};

/// What every connection task needs.
#[derive(Debug)]
pub struct Shared {
    /// The durable store.
    pub store: Store,
    /// Live sessions and presence subscriptions.
    pub registry: Arc<Registry>,
    /// Push wake-ups for offline devices.
    pub notifier: Notifier,
    /// Limits each new session enforces; replaced on SIGHUP (live sessions keep theirs).
    pub session: std::sync::RwLock<SessionConfig>,
    /// Counters for `/metrics`.
    pub metrics: crate::metrics::Metrics,
    /// Per-address connection, handshake and registration budgets.
    pub addresses: Arc<crate::address_limits::AddressLimits>,
    /// Key claims per requesting user, across its connections.
    pub key_claims: crate::claim_budget::ClaimBudgets,
    /// How long a device link code stays valid (`registration.link_code_ttl_secs`).
    pub link_code_ttl: std::time::Duration,
    /// How long a status update lives (`stories.ttl_secs`).
    pub story_ttl: std::time::Duration,
    /// Media uploads and downloads; `None` only in tools that serve no connections.
    pub media: Option<Arc<crate::media::MediaService>>,
    /// Transfers one connection may open per minute (`media.transfers_per_min`).
    pub transfers_per_min: u32,
    /// The STUN/TURN relay and its credentials; `None` when `relay.listen` is off.
    pub turn: Option<crate::turn::TurnService>,
    /// Call signaling; `None` only in tools that serve no connections.
    pub calls: Option<crate::calls::CallService>,
}

/// Wall clock in ms since the Unix epoch (0 if the clock is before 1970).
pub fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

impl Shared {
    /// The limits a session starting now gets.
    pub fn session_config(&self) -> SessionConfig {
        self.session
            .read()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
            .clone()
    }

    /// Replaces the limits for sessions starting from now on.
    pub fn set_session_config(&self, config: SessionConfig) {
        *self
            .session
            .write()
            .unwrap_or_else(|poisoned| poisoned.into_inner()) = config;
    }

    /// `user`'s presence as its contacts see it (to anyone else it is `Hidden`, which the
    /// connection decides: see `Action::SubscribePresence` in `connection.rs`); a name that
    /// does not exist is `Hidden` too.
    pub fn presence_of(&self, user: &str) -> PresenceState {
        let record = self.store.user(user).ok().flatten();
        match record {
            None => PresenceState::Hidden,
            Some(r) if r.visibility == Visibility::Nobody => PresenceState::Hidden,
            _ if self.registry.is_online(user) => PresenceState::Online,
            Some(r) if r.last_seen_ms > 0 => PresenceState::LastSeen(r.last_seen_ms),
            _ => PresenceState::Offline,
        }
    }

    /// Tells `user`'s subscribers its current presence.
    pub fn announce_presence(&self, user: &str, state: PresenceState) {
        let frame: Frame = Presence {
            user: user.to_owned(),
            state,
        }
        .into();
        self.registry.notify_subscribers(user, &frame);
    }
}
