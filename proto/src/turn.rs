//! TURN credentials: how a logged-in client gets a short-lived username and password for the
//! edge's STUN/TURN relay (RFC 8656), and the URLs to use them with.
//!
//! The credentials follow coturn's REST scheme (`use-auth-secret`): the username is
//! `<expiry unix seconds>:<user>`, the password base64(HMAC-SHA1(secret, username)), so any
//! standard TURN client (a browser's ICE agent, coturn's `turnutils_uclient`) can use them.

use rkyv::{Archive, Deserialize, Serialize};

/// Client → server: TURN credentials for this user (answered `TurnCredentials`, or
/// `RequestRefused` with `RelayUnavailable` when the edge runs no relay, `RateLimited` past
/// the per-connection budget).
#[derive(Archive, Serialize, Deserialize, Debug, Clone, PartialEq, Eq)]
pub struct TurnCredentialsRequest {
    /// Echoed in the answer.
    pub request_id: u32,
}

/// Server → client: credentials for the edge's relay, valid for `ttl_secs` from now.
#[derive(Archive, Serialize, Deserialize, Debug, Clone, PartialEq, Eq)]
pub struct TurnCredentials {
    /// The request's id.
    pub request_id: u32,
    /// TURN username, `<expiry unix seconds>:<user>`.
    pub username: String,
    /// TURN password (long-term credential mechanism, RFC 8489 §9.2).
    pub password: String,
    /// Seconds the credentials stay valid. Allocations made with them keep working after
    /// that only as long as they are refreshed with fresh credentials.
    pub ttl_secs: u32,
    /// ICE server URLs (RFC 7064/7065) of the relay, e.g. `stun:relay.example.com:3478` and
    /// `turn:relay.example.com:3478?transport=udp`.
    pub urls: Vec<String>,
}
