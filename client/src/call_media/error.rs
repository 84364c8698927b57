//! The call media path's errors.

/// Why gathering, decoding a description or connecting a call failed.
#[derive(Debug, thiserror::Error)]
pub enum MediaError {
    /// A socket operation failed (binding the media socket, most often).
    #[error("media socket: {0}")]
    Io(#[from] std::io::Error),
    /// A [`super::MediaDescription`] from the peer was malformed (which rule it broke).
    #[error("bad media description: {0}")]
    BadDescription(&'static str),
    /// `force_relay` was asked but no relayed candidate could be gathered.
    #[error("no relayed candidate (force_relay needs a TURN server that answers)")]
    NoRelay,
    /// The TURN server refused the allocation (error code) or never answered.
    #[error("TURN allocation failed: {0}")]
    Turn(String),
    /// No candidate pair worked before the timeout, or every pair failed.
    #[error("no working path to the peer")]
    NoPath,
    /// The call was stopped (or its task ended) before it connected.
    #[error("call stopped")]
    Stopped,
    /// Keys could not be set up for SRTP (a library error; should not happen).
    #[error("SRTP setup: {0}")]
    Srtp(String),
}
