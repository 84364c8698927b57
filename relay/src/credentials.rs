//! TURN credentials in coturn's REST scheme (`use-auth-secret`, draft-uberti-behave-turn-rest):
//! the username is `<expiry unix seconds>:<user>` and the password is
//! base64(HMAC-SHA1(secret, username)). The edge mints them for a logged-in client; the relay
//! derives the password again from the username, so it keeps no user table, and any standard
//! TURN client (coturn's `turnutils_uclient -W`, browsers) can use them.

use base64::engine::general_purpose::STANDARD;
use base64::Engine as _;
use hmac::{Hmac, Mac};
use sha1::Sha1;
use std::time::Duration;

type HmacSha1 = Hmac<Sha1>;

/// A username/password pair for one client, valid for `ttl`.
#[derive(Clone, PartialEq, Eq)]
pub struct Credentials {
    /// `<expiry unix seconds>:<user>`.
    pub username: String,
    /// base64(HMAC-SHA1(secret, username)).
    pub password: String,
    /// How long the credentials stay valid from when they were minted.
    pub ttl: Duration,
}

impl std::fmt::Debug for Credentials {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Credentials")
            .field("username", &self.username)
            .field("ttl", &self.ttl)
            .finish_non_exhaustive()
    }
}

/// Mints credentials for `user` that expire `ttl` after `now_unix` (seconds since the Unix
/// epoch). Everything after the first `:` of the username is the user, so `user` may itself
/// contain `:`.
pub fn mint(secret: &[u8], user: &str, ttl: Duration, now_unix: u64) -> Credentials {
    let expiry = now_unix.saturating_add(ttl.as_secs());
    let username = format!("{expiry}:{user}");
    let password = password_for(secret, &username);
    Credentials {
        username,
        password,
        ttl,
    }
}

/// The REST password of `username` under `secret`.
pub fn password_for(secret: &[u8], username: &str) -> String {
    // HMAC accepts keys of any length; `new_from_slice` cannot fail for HMAC.
    let mut mac = HmacSha1::new_from_slice(secret).expect("HMAC takes keys of any length");
    mac.update(username.as_bytes());
    STANDARD.encode(mac.finalize().into_bytes())
}

/// A REST username taken apart.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RestUsername<'a> {
    /// Unix second after which the credentials are refused.
    pub expiry_unix: u64,
    /// The user the edge minted them for (the whole username when it has no `:`), which is
    /// what the per-user allocation quota counts.
    pub user: &'a str,
}

/// Why a REST username is refused (the client gets 401 either way).
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum UsernameError {
    /// The part before `:` is not a decimal timestamp.
    #[error("username is not `<expiry>:<user>`")]
    Malformed,
    /// The expiry is in the past.
    #[error("credentials expired")]
    Expired,
}

/// Parses `username` and checks its expiry against `now_unix`.
pub fn check_username(username: &str, now_unix: u64) -> Result<RestUsername<'_>, UsernameError> {
    let (expiry, user) = match username.split_once(':') {
        Some((expiry, user)) => (expiry, user),
        // coturn also accepts a bare timestamp as the username.
        None => (username, username),
    };
    if expiry.is_empty() || expiry.len() > 20 || !expiry.bytes().all(|b| b.is_ascii_digit()) {
        return Err(UsernameError::Malformed);
    }
    let expiry_unix: u64 = expiry.parse().map_err(|_| UsernameError::Malformed)?;
    if expiry_unix < now_unix {
        return Err(UsernameError::Expired);
    }
    Ok(RestUsername { expiry_unix, user })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn minted_credentials_match_coturns_formula() {
        // Reference value computed with coturn's documented recipe:
        // echo -n "1700000600:alice" | openssl dgst -binary -sha1 -hmac s3cret | base64
        let c = mint(b"s3cret", "alice", Duration::from_secs(600), 1_700_000_000);
        assert_eq!(c.username, "1700000600:alice");
        assert_eq!(c.password, "bUIJIVaC05oyFgKsQvKAparqg1Q=");
        assert_ne!(c.password, password_for(b"other", "1700000600:alice"));
        assert!(!format!("{c:?}").contains(&c.password));
    }

    #[test]
    fn usernames_are_checked() {
        assert_eq!(
            check_username("100:bob", 50),
            Ok(RestUsername {
                expiry_unix: 100,
                user: "bob"
            })
        );
        assert_eq!(check_username("100:bob", 101), Err(UsernameError::Expired));
        assert_eq!(check_username("bob:100", 1), Err(UsernameError::Malformed));
        assert_eq!(check_username(":bob", 1), Err(UsernameError::Malformed));
        assert_eq!(check_username("", 1), Err(UsernameError::Malformed));
        assert_eq!(
            check_username("99999999999999999999999:x", 1),
            Err(UsernameError::Malformed)
        );
        assert_eq!(check_username("100", 1).map(|u| u.user), Ok("100"));
        assert_eq!(check_username("100:a:b", 1).map(|u| u.user), Ok("a:b"));
    }
}
