//! Decoding errors and the wire's stable error codes.

/// Stable error codes carried in [`crate::Error`] and [`crate::Rejected`] frames.
///
/// A code never changes meaning once shipped; new codes are only appended.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[repr(u16)]
pub enum ErrorCode {
    /// The peer sent bytes that are not a valid frame (bad header, failed validation).
    MalformedFrame = 1,
    /// A frame's declared length exceeds the receiver's maximum frame size.
    FrameTooLarge = 2,
    /// No protocol version is shared by both peers.
    UnsupportedVersion = 3,
    /// A valid frame arrived in a state where it is not allowed (e.g. `Send` before login).
    ProtocolViolation = 4,
    /// Login or registration failed: unknown device, wrong signature, or replayed login.
    AuthFailed = 5,
    /// Registration named a user that already exists.
    UserTaken = 6,
    /// Registration needs a valid invite token on this server.
    InviteRequired = 7,
    /// The recipient of a send does not exist.
    UnknownRecipient = 8,
    /// The connection exceeded its send rate; the rejected send may be retried later.
    RateLimited = 9,
    /// The server is at its connection limit.
    TooManyConnections = 10,
    /// The connection was idle for longer than the server's idle timeout.
    IdleTimeout = 11,
    /// The server failed internally (storage). The request may be retried.
    Internal = 12,
    /// A user name is not acceptable (see `validate_user_name`).
    InvalidName = 13,
    /// The server is shutting down; reconnect (possibly elsewhere).
    ShuttingDown = 14,
    /// Too many requests are in flight on this connection; wait for acks before sending more.
    TooManyInFlight = 15,
    /// The account is disabled by an administrator.
    AccountDisabled = 16,
    /// The same device logged in on another connection, which now holds the session (another
    /// process or app instance with the same device key). Do not reconnect on your own: that
    /// would take the session back and the two would keep replacing each other.
    SessionReplaced = 17,
    /// A `Send`'s envelope is larger than [`crate::max_envelope_len`] of the server's
    /// `max_frame`: the `Deliver` frame carrying it could not reach the recipient.
    EnvelopeTooLarge = 18,
    /// The server refuses new writes for now: its disk is below the free-space watermark, or
    /// storage is failing and recovering. Nothing was stored; retry later with the same id.
    StorageUnavailable = 19,
    /// The recipient's mailbox holds its quota of undelivered items or bytes. Nothing was
    /// stored; retry later (the recipient frees room by reading).
    MailboxFull = 20,
    /// The client did not complete its login within the server's login deadline.
    LoginTimeout = 21,
    /// A per-connection count limit was reached (the message names which, e.g. presence
    /// subscriptions); the connection is closed.
    LimitExceeded = 22,
    /// A `Send` named other devices than the recipient's (or the sender's) current ones; the
    /// `DeviceMismatch` frame carries the current lists. Nothing was stored.
    DeviceMismatch = 23,
    /// Keys uploaded to the key directory are not acceptable: identity keys not signed by
    /// the uploading device, or other than the ones it already published.
    InvalidKeys = 24,
    /// This device was removed from its account (by one of its devices); it is closed and
    /// can no longer log in. Do not reconnect.
    DeviceRemoved = 25,
    /// No such group (or it is not visible to the requester).
    UnknownGroup = 26,
    /// Only members may do this (send to the group, read its info or receipts).
    NotGroupMember = 27,
    /// Only admins may do this (change membership, make invites).
    NotGroupAdmin = 28,
    /// The group has as many members as allowed.
    GroupFull = 29,
    /// The group's membership changed since the epoch the send named: fetch `Info`, rotate
    /// the group session, and send again. Nothing was stored.
    GroupChanged = 30,
    /// The group invite token is unknown, expired or revoked.
    GroupInviteInvalid = 31,
    /// A media upload is larger than the server's maximum file size.
    MediaTooLarge = 32,
    /// A media upload would take the user past their storage quota.
    MediaQuotaExceeded = 33,
    /// No such blob (never uploaded, not complete yet, deleted or expired).
    UnknownMedia = 34,
    /// A media upload's bytes do not hash to its name; what was held is dropped, send again.
    MediaHashMismatch = 35,
    /// The server runs no STUN/TURN relay (it is off in its configuration): a call has to do
    /// without relayed candidates.
    RelayUnavailable = 36,
    /// No such call (it ended, or this device is not in it).
    UnknownCall = 37,
}

impl ErrorCode {
    /// Maps a raw wire value back to a code; unknown values (from a newer peer) give `None`.
    pub fn from_u16(v: u16) -> Option<Self> {
        use ErrorCode::*;
        Some(match v {
            1 => MalformedFrame,
            2 => FrameTooLarge,
            3 => UnsupportedVersion,
            4 => ProtocolViolation,
            5 => AuthFailed,
            6 => UserTaken,
            7 => InviteRequired,
            8 => UnknownRecipient,
            9 => RateLimited,
            10 => TooManyConnections,
            11 => IdleTimeout,
            12 => Internal,
            13 => InvalidName,
            14 => ShuttingDown,
            15 => TooManyInFlight,
            16 => AccountDisabled,
            17 => SessionReplaced,
            18 => EnvelopeTooLarge,
            19 => StorageUnavailable,
            20 => MailboxFull,
            21 => LoginTimeout,
            22 => LimitExceeded,
            23 => DeviceMismatch,
            24 => InvalidKeys,
            25 => DeviceRemoved,
            26 => UnknownGroup,
            27 => NotGroupMember,
            28 => NotGroupAdmin,
            29 => GroupFull,
            30 => GroupChanged,
            31 => GroupInviteInvalid,
            32 => MediaTooLarge,
            33 => MediaQuotaExceeded,
            34 => UnknownMedia,
            35 => MediaHashMismatch,
            36 => RelayUnavailable,
            37 => UnknownCall,
            _ => return None,
        })
    }

    /// The wire value.
    pub fn as_u16(self) -> u16 {
        self as u16
    }

    /// A short stable name, used in logs and metrics labels.
    pub fn name(self) -> &'static str {
        use ErrorCode::*;
        match self {
            MalformedFrame => "malformed_frame",
            FrameTooLarge => "frame_too_large",
            UnsupportedVersion => "unsupported_version",
            ProtocolViolation => "protocol_violation",
            AuthFailed => "auth_failed",
            UserTaken => "user_taken",
            InviteRequired => "invite_required",
            UnknownRecipient => "unknown_recipient",
            RateLimited => "rate_limited",
            TooManyConnections => "too_many_connections",
            IdleTimeout => "idle_timeout",
            Internal => "internal",
            InvalidName => "invalid_name",
            ShuttingDown => "shutting_down",
            TooManyInFlight => "too_many_in_flight",
            AccountDisabled => "account_disabled",
            SessionReplaced => "session_replaced",
            EnvelopeTooLarge => "envelope_too_large",
            StorageUnavailable => "storage_unavailable",
            MailboxFull => "mailbox_full",
            LoginTimeout => "login_timeout",
            LimitExceeded => "limit_exceeded",
            DeviceMismatch => "device_mismatch",
            InvalidKeys => "invalid_keys",
            DeviceRemoved => "device_removed",
            UnknownGroup => "unknown_group",
            NotGroupMember => "not_group_member",
            NotGroupAdmin => "not_group_admin",
            GroupFull => "group_full",
            GroupChanged => "group_changed",
            GroupInviteInvalid => "group_invite_invalid",
            MediaTooLarge => "media_too_large",
            MediaQuotaExceeded => "media_quota_exceeded",
            UnknownMedia => "unknown_media",
            MediaHashMismatch => "media_hash_mismatch",
            RelayUnavailable => "relay_unavailable",
            UnknownCall => "unknown_call",
        }
    }
}

/// Why bytes could not become a frame.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum ProtoError {
    /// The header's reserved bytes were not zero.
    #[error("reserved header bytes must be zero")]
    ReservedBits,
    /// The header set a flag this version does not know.
    #[error("unknown flags {0:#04x}")]
    UnknownFlags(u8),
    /// The header named a frame kind this version does not know.
    #[error("unknown frame kind {0}")]
    UnknownKind(u8),
    /// The declared payload is longer than the receiver accepts.
    #[error("frame of {len} bytes exceeds the maximum of {max}")]
    TooLarge {
        /// Declared (or decompressed) payload length.
        len: usize,
        /// The receiver's limit.
        max: usize,
    },
    /// The payload failed rkyv/bytecheck validation for its kind.
    #[error("invalid {kind} payload: {reason}")]
    Invalid {
        /// The frame kind's name.
        kind: &'static str,
        /// What the validator reported.
        reason: String,
    },
    /// A compressed payload could not be decompressed within the size limit.
    #[error("bad compressed payload: {0}")]
    Decompress(String),
    /// Serialising a frame failed (only on the sending side).
    #[error("cannot encode frame: {0}")]
    Encode(String),
}

impl ProtoError {
    /// The stable wire code to send before closing the connection.
    pub fn code(&self) -> ErrorCode {
        match self {
            Self::TooLarge { .. } => ErrorCode::FrameTooLarge,
            _ => ErrorCode::MalformedFrame,
        }
    }
}
