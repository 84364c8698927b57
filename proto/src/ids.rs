//! Identifier newtypes, so a user id can never be passed where a sequence is expected.

use rkyv::{Archive, Deserialize, Serialize};

/// Longest user name accepted, in bytes.
pub const MAX_USER_NAME: usize = 32;

/// Most devices one user can ever have at once (a server's configured limit is lower): the
/// bound on the copies one `Send` may carry per user.
pub const MAX_DEVICES_PER_USER: usize = 16;

/// A device of a user (phone, later web/desktop). Mailboxes are keyed by (user, device).
#[derive(
    Archive, Serialize, Deserialize, Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord,
)]
pub struct DeviceId(pub u32);

/// A group, numbered by the server that created it.
#[derive(
    Archive, Serialize, Deserialize, Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord,
)]
pub struct GroupId(pub u64);

impl std::fmt::Display for GroupId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}", self.0)
    }
}

/// Position of an envelope in one device's mailbox; strictly increasing per mailbox.
#[derive(
    Archive, Serialize, Deserialize, Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord,
)]
pub struct ServerSeq(pub u64);

/// Sender-chosen id of one message; retries reuse it so the edge stores the message once.
#[derive(
    Archive, Serialize, Deserialize, Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord,
)]
pub struct ClientMsgId(pub [u8; 16]);

impl ClientMsgId {
    /// Lower-case hex form, as printed by the CLI.
    pub fn to_hex(&self) -> String {
        self.0.iter().map(|b| format!("{b:02x}")).collect()
    }

    /// Parses the 32-character hex form produced by [`ClientMsgId::to_hex`].
    pub fn from_hex(s: &str) -> Option<Self> {
        if s.len() != 32 || !s.is_ascii() {
            return None;
        }
        let mut out = [0u8; 16];
        for (i, byte) in out.iter_mut().enumerate() {
            *byte = u8::from_str_radix(&s[2 * i..2 * i + 2], 16).ok()?;
        }
        Some(Self(out))
    }
}

impl std::fmt::Display for ClientMsgId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.to_hex())
    }
}

/// Checks a user name: 1..=32 bytes of `a-z`, `0-9`, `_`, `.`, `-`, starting with a letter
/// or digit. Names are keys in storage, so this set is kept free of separators.
pub fn validate_user_name(name: &str) -> Result<(), &'static str> {
    if name.is_empty() || name.len() > MAX_USER_NAME {
        return Err("user name must be 1 to 32 bytes");
    }
    let mut chars = name.chars();
    let first_ok = chars
        .next()
        .is_some_and(|c| c.is_ascii_lowercase() || c.is_ascii_digit());
    let rest_ok = name
        .chars()
        .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || matches!(c, '_' | '.' | '-'));
    if first_ok && rest_ok {
        Ok(())
    } else {
        Err("user name may contain only a-z, 0-9, '_', '.', '-' and must start with a letter or digit")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn msg_id_hex_round_trip() {
        let id = ClientMsgId([0xab; 16]);
        assert_eq!(ClientMsgId::from_hex(&id.to_hex()), Some(id));
        assert_eq!(ClientMsgId::from_hex("zz"), None);
        assert_eq!(ClientMsgId::from_hex(&"g".repeat(32)), None);
    }

    #[test]
    fn user_names() {
        assert!(validate_user_name("alice").is_ok());
        assert!(validate_user_name("bob_2.x-y").is_ok());
        assert!(validate_user_name("").is_err());
        assert!(validate_user_name("Alice").is_err());
        assert!(validate_user_name("_x").is_err());
        assert!(validate_user_name("a/b").is_err());
        assert!(validate_user_name(&"a".repeat(33)).is_err());
    }
}
