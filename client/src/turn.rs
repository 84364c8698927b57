//! Credentials for the edge's STUN/TURN relay, as a call's ICE agent takes them.

use std::time::Duration;

/// Short-lived credentials for the edge's TURN relay ([`crate::Client::turn_credentials`]),
/// in coturn's REST scheme, so any standard TURN client accepts them.
#[derive(Clone, PartialEq, Eq)]
pub struct TurnCredentials {
    /// TURN username, `<expiry unix seconds>:<user>`.
    pub username: String,
    /// TURN password.
    pub password: String,
    /// How long they stay valid from when the edge minted them: ask again before then.
    pub ttl: Duration,
    /// ICE server URLs, e.g. `stun:HOST:3478` and `turn:HOST:3478?transport=udp`.
    pub urls: Vec<String>,
}

impl std::fmt::Debug for TurnCredentials {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // The password is a key to the relay: never in logs.
        f.debug_struct("TurnCredentials")
            .field("username", &self.username)
            .field("ttl", &self.ttl)
            .field("urls", &self.urls)
            .finish_non_exhaustive()
    }
}

impl From<missive_proto::TurnCredentials> for TurnCredentials {
    fn from(t: missive_proto::TurnCredentials) -> Self {
        Self {
            username: t.username,
            password: t.password,
            ttl: Duration::from_secs(u64::from(t.ttl_secs)),
            urls: t.urls,
        }
    }
}
