//! The SDK's one error type.

use missive_proto::ErrorCode;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;

/// Everything that can go wrong in the SDK and the CLI.
///
/// The variants for server `Error` frames mirror the wire's stable [`ErrorCode`]s; see
/// [`ClientError::from_error_frame`]. The type is `Clone` so one failure can complete every
/// waiter that depended on it.
#[derive(Debug, Clone, thiserror::Error)]
pub enum ClientError {
    /// Neither QUIC nor TCP+TLS reached a logged-in-able connection to the server.
    #[error("cannot connect to {addr}: {reason}")]
    Connect {
        /// The server address that was tried.
        addr: SocketAddr,
        /// What failed on each transport.
        reason: String,
    },
    /// The TLS setup is unusable (no certificate in the CA PEM, bad server name, ...).
    #[error("TLS setup: {0}")]
    Tls(String),
    /// Reading or writing an established connection failed.
    #[error("connection I/O: {0}")]
    Io(Arc<std::io::Error>),
    /// The server sent bytes that are not a valid frame.
    #[error("malformed frame from server: {0}")]
    MalformedFrame(String),
    /// The server sent a valid frame that the protocol does not allow at this point.
    #[error("unexpected {frame} from server while {state}")]
    UnexpectedFrame {
        /// The frame's name.
        frame: &'static str,
        /// What the client was waiting for.
        state: &'static str,
    },
    /// The server closed the connection (or it dropped) before the exchange finished.
    #[error("connection closed: {0}")]
    ConnectionClosed(String),
    /// No protocol version is shared with the server.
    #[error("server speaks protocol version {server}, this client {min}..={max}")]
    UnsupportedVersion {
        /// Version the server chose (or 0 when it refused with an error frame).
        server: u16,
        /// Lowest version this client speaks.
        min: u16,
        /// Highest version this client speaks.
        max: u16,
    },
    /// Login or registration was refused: unknown device, wrong key, or replayed login.
    #[error("authentication failed: {0}")]
    AuthFailed(String),
    /// Registration named a user that already exists.
    #[error("user name taken")]
    UserTaken,
    /// The server requires a valid invite token to register.
    #[error("invite required (or invite token not valid)")]
    InviteRequired,
    /// The server refused the user name.
    #[error("invalid user name: {0}")]
    InvalidName(String),
    /// The account was disabled by an administrator.
    #[error("account disabled")]
    AccountDisabled,
    /// This device logged in on another connection (another process or app instance with the
    /// same device key), which now holds the session. Not retried: reconnecting would take the
    /// session back and the two would replace each other in turn.
    #[error("this device is logged in on another connection; not reconnecting")]
    SessionReplaced,
    /// Any other `Error` frame from the server; the connection is closed.
    #[error("server error {}: {message}", code_name(*code))]
    Server {
        /// Raw wire code (see [`ErrorCode::from_u16`]).
        code: u16,
        /// The server's reason.
        message: String,
    },
    /// The server refused one send with `Rejected`; the connection stays open.
    #[error("send rejected ({}): {message}", code_name(*code))]
    Rejected {
        /// Raw wire code (`UnknownRecipient`, `Internal`, ...).
        code: u16,
        /// The server's reason.
        message: String,
    },
    /// The server refused a group request or a group send (`UnknownGroup`, `NotGroupMember`,
    /// `NotGroupAdmin`, `GroupFull`, `GroupInviteInvalid`, ...; see [`ClientError::code`]).
    #[error("group request refused ({}): {message}", code_name(*code))]
    GroupRefused {
        /// Raw wire code.
        code: u16,
        /// The server's reason.
        message: String,
    },
    /// The server refused a media transfer (`MediaTooLarge`, `MediaQuotaExceeded`,
    /// `UnknownMedia`, `MediaHashMismatch`, `RateLimited`, ...; see [`ClientError::code`]).
    #[error("media transfer refused ({}): {message}", code_name(*code))]
    MediaRefused {
        /// Raw wire code.
        code: u16,
        /// The server's reason.
        message: String,
    },
    /// Downloaded media failed verification (tampered, truncated, wrong hash or size); the
    /// plaintext was not written.
    #[error("media failed verification: {0}")]
    MediaInvalid(String),
    /// Media transfers need a QUIC connection; this one fell back to TCP+TLS.
    #[error("media transfers need QUIC; this connection uses TCP+TLS")]
    MediaNeedsQuic,
    /// The content is too large for one frame of this server.
    #[error("message too large: {size} bytes, the server accepts at most {max}")]
    TooLarge {
        /// Estimated frame payload size.
        size: usize,
        /// The server's maximum frame payload.
        max: usize,
    },
    /// Envelope bytes are not a valid `Content` archive.
    #[error("invalid message content: {0}")]
    InvalidContent(String),
    /// A waited-for step did not finish in time.
    #[error("timed out {0}")]
    Timeout(&'static str),
    /// The client was closed (or its driver stopped) before the request completed.
    #[error("client is closed")]
    ClientClosed,
    /// A profile directory could not be read or written.
    #[error("profile {}: {reason}", path.display())]
    Profile {
        /// The file or directory concerned.
        path: PathBuf,
        /// What went wrong.
        reason: String,
    },
    /// A caller-supplied value is not acceptable (bad name, bad address, ...).
    #[error("{0}")]
    InvalidInput(String),
    /// This device was removed from its account; it can no longer log in.
    #[error("this device was removed from its account")]
    DeviceRemoved,
    /// The device's end-to-end encryption state could not be read or written (a wrong key,
    /// a damaged file, a full disk).
    #[error("end-to-end encryption state: {0}")]
    E2eeState(String),
}

fn code_name(code: u16) -> String {
    match ErrorCode::from_u16(code) {
        Some(c) => c.name().to_string(),
        None => format!("code {code}"),
    }
}

impl From<std::io::Error> for ClientError {
    fn from(e: std::io::Error) -> Self {
        Self::Io(Arc::new(e))
    }
}

impl From<missive_proto::ProtoError> for ClientError {
    fn from(e: missive_proto::ProtoError) -> Self {
        Self::MalformedFrame(e.to_string())
    }
}

impl ClientError {
    /// Maps a server `Error{code, message}` frame to a typed error.
    pub fn from_error_frame(code: u16, message: &str) -> Self {
        use missive_proto::{MIN_PROTOCOL_VERSION, PROTOCOL_VERSION};
        match ErrorCode::from_u16(code) {
            Some(ErrorCode::AuthFailed) => Self::AuthFailed(message.to_string()),
            Some(ErrorCode::UserTaken) => Self::UserTaken,
            Some(ErrorCode::InviteRequired) => Self::InviteRequired,
            Some(ErrorCode::InvalidName) => Self::InvalidName(message.to_string()),
            Some(ErrorCode::AccountDisabled) => Self::AccountDisabled,
            Some(ErrorCode::SessionReplaced) => Self::SessionReplaced,
            Some(ErrorCode::DeviceRemoved) => Self::DeviceRemoved,
            Some(ErrorCode::UnsupportedVersion) => Self::UnsupportedVersion {
                server: 0,
                min: MIN_PROTOCOL_VERSION,
                max: PROTOCOL_VERSION,
            },
            _ => Self::Server {
                code,
                message: message.to_string(),
            },
        }
    }

    /// The wire error code behind this error, when it came from an `Error` or `Rejected` frame.
    pub fn code(&self) -> Option<ErrorCode> {
        match self {
            Self::AuthFailed(_) => Some(ErrorCode::AuthFailed),
            Self::UserTaken => Some(ErrorCode::UserTaken),
            Self::InviteRequired => Some(ErrorCode::InviteRequired),
            Self::InvalidName(_) => Some(ErrorCode::InvalidName),
            Self::AccountDisabled => Some(ErrorCode::AccountDisabled),
            Self::SessionReplaced => Some(ErrorCode::SessionReplaced),
            Self::DeviceRemoved => Some(ErrorCode::DeviceRemoved),
            Self::UnsupportedVersion { .. } => Some(ErrorCode::UnsupportedVersion),
            Self::Server { code, .. }
            | Self::Rejected { code, .. }
            | Self::GroupRefused { code, .. }
            | Self::MediaRefused { code, .. } => ErrorCode::from_u16(*code),
            _ => None,
        }
    }

    /// True when reconnecting cannot help: the account or the configuration is wrong.
    ///
    /// The driver stops and fails every pending request on such an error instead of retrying.
    pub fn is_fatal(&self) -> bool {
        matches!(
            self,
            Self::AuthFailed(_)
                | Self::UserTaken
                | Self::InviteRequired
                | Self::InvalidName(_)
                | Self::AccountDisabled
                | Self::SessionReplaced
                | Self::UnsupportedVersion { .. }
                | Self::Tls(_)
                | Self::InvalidInput(_)
                | Self::Profile { .. }
                | Self::E2eeState(_)
                | Self::DeviceRemoved
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn error_frames_map_to_typed_errors() {
        assert!(matches!(
            ClientError::from_error_frame(ErrorCode::UserTaken.as_u16(), "x"),
            ClientError::UserTaken
        ));
        assert!(ClientError::from_error_frame(5, "bad sig").is_fatal());
        let idle = ClientError::from_error_frame(ErrorCode::IdleTimeout.as_u16(), "idle");
        assert!(!idle.is_fatal());
        assert_eq!(idle.code(), Some(ErrorCode::IdleTimeout));
        assert_eq!(idle.to_string(), "server error idle_timeout: idle");
        let unknown = ClientError::from_error_frame(999, "new");
        assert_eq!(unknown.to_string(), "server error code 999: new");
        assert_eq!(ClientError::UserTaken.to_string(), "user name taken");
        let replaced = ClientError::from_error_frame(ErrorCode::SessionReplaced.as_u16(), "x");
        assert!(matches!(replaced, ClientError::SessionReplaced));
        assert!(
            replaced.is_fatal(),
            "reconnecting would take the session back"
        );
        assert_eq!(replaced.code(), Some(ErrorCode::SessionReplaced));
        let refused = ClientError::GroupRefused {
            code: ErrorCode::NotGroupAdmin.as_u16(),
            message: "admins only".into(),
        };
        assert_eq!(refused.code(), Some(ErrorCode::NotGroupAdmin));
        assert!(!refused.is_fatal());
        assert_eq!(
            refused.to_string(),
            "group request refused (not_group_admin): admins only"
        );
    }
}
