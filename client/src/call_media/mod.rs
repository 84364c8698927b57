//! The media path of voice and video calls: candidate gathering, ICE-style connectivity
//! checks, a TURN client, SRTP media and the quality loop that adapts the video bitrate.
//!
//! Call signaling (invite, accept, the E2EE offer that carries a [`MediaDescription`] and a
//! [`CallSecret`]) lives elsewhere and drives this module:
//!
//! ```text
//! let ep = MediaEndpoint::gather(opts).await?;      // UDP socket, host/srflx/relayed candidates
//! send ep.description() to the peer, receive theirs
//! let call = ep.start(remote, Role::Caller, &secret); // ICE checks, then SRTP both ways
//! call.connected(timeout).await?;                    // Direct or Relayed
//! call.stats(); call.stop().await;                   // releases the TURN allocation
//! ```
//!
//! # Design
//!
//! Everything that decides what happens next is a state machine without sockets or clocks
//! (CONVENTIONS.md §1), tested on a virtual clock:
//!
//! - [`ice::IceAgent`]: candidate pairs, Binding checks (USERNAME `remote:local`,
//!   MESSAGE-INTEGRITY with the remote password, PRIORITY, ICE-CONTROLLING/CONTROLLED,
//!   USE-CANDIDATE), nomination by the controlling side, consent checks that move the call
//!   to the best pair still answering when the selected one dies.
//! - [`turn_client::TurnClient`]: Allocate (401 challenge, then long-term credentials),
//!   Refresh, CreatePermission, ChannelBind, ChannelData/Send indications, release.
//! - [`session::MediaSession`]: the synthetic audio/video source, SRTP protect/unprotect,
//!   the feedback packets, and [`quality`]'s loss/jitter/RTT/MOS and video rate control.
//!
//! [`MediaEndpoint`]/[`MediaCall`] (`runner.rs`) only move datagrams and timers between one
//! UDP socket and those machines. One socket carries everything; datagrams are told apart
//! by their first byte (RFC 7983): 0-3 STUN, 64-79 TURN ChannelData, 128-191 SRTP/SRTCP.
//!
//! STUN/TURN bytes are parsed here with the relay's codec (`stun-types`), in `wire.rs` only:
//! the client must speak STUN to reach the edge's relay, so this is the one exception to
//! "only `relay/` parses STUN/TURN", and it uses the same codec crate.
//!
//! Media keys: per direction an SRTP master key and salt, BLAKE3 `derive_key` of the
//! [`CallSecret`] with distinct contexts (caller→callee, callee→caller), AEAD-AES-128-GCM
//! (webrtc-srtp's `Context`), with replay protection.

mod description;
mod error;
pub mod ice;
pub mod quality;
pub mod reflexive;
mod runner;
mod secret;
pub mod session;
pub mod turn_client;
mod wire;

pub use description::{priority, Candidate, CandidateKind, MediaDescription, MAX_CANDIDATES};
pub use error::MediaError;
pub use quality::CallStats;
pub use runner::{MediaCall, MediaEndpoint};
pub use secret::CallSecret;
pub use session::SYNTHETIC_MARKER;

use std::net::SocketAddr;

/// Which side of the call this endpoint is. The caller is ICE's controlling agent: it
/// nominates the pair the call uses.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Role {
    /// The side that sent the invite (ICE controlling).
    Caller,
    /// The side that accepted it (ICE controlled).
    Callee,
}

/// Which kind of path the call's media takes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PathKind {
    /// Straight between the two endpoints (host or server-reflexive candidates).
    Direct,
    /// Through a TURN relay (either side's relayed candidate).
    Relayed,
}

/// A TURN server and the credentials to allocate on it (from
/// [`crate::Client::turn_credentials`]).
#[derive(Clone, PartialEq, Eq)]
pub struct TurnServer {
    /// The server's UDP address.
    pub addr: SocketAddr,
    /// TURN username (`<expiry>:<user>` for the edge's minted credentials).
    pub username: String,
    /// TURN password; never logged.
    pub password: String,
}

impl std::fmt::Debug for TurnServer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TurnServer")
            .field("addr", &self.addr)
            .field("username", &self.username)
            .finish_non_exhaustive()
    }
}

impl TurnServer {
    /// The TURN server named by `creds.urls` (the first `turn:HOST:PORT` with an IP host)
    /// with `creds`' username and password; `None` when no URL names one.
    pub fn from_credentials(creds: &crate::TurnCredentials) -> Option<Self> {
        let addr = creds.urls.iter().find_map(|u| url_addr(u, "turn:"))?;
        Some(Self {
            addr,
            username: creds.username.clone(),
            password: creds.password.clone(),
        })
    }
}

/// The STUN server named by `urls` (the first `stun:HOST:PORT` with an IP host).
pub fn stun_server_from_urls(urls: &[String]) -> Option<SocketAddr> {
    urls.iter().find_map(|u| url_addr(u, "stun:"))
}

/// `scheme:IP:PORT[?...]` → the address.
fn url_addr(url: &str, scheme: &str) -> Option<SocketAddr> {
    let rest = url.strip_prefix(scheme)?;
    let hostport = rest.split('?').next()?;
    hostport.parse().ok()
}

/// What [`MediaEndpoint::gather`] binds and offers, and what media the call sends.
#[derive(Debug, Clone)]
pub struct MediaOptions {
    /// Send video as well as audio.
    pub video: bool,
    /// Offer and use only the relayed candidate (hides the device's addresses from the
    /// peer); gathering fails without [`MediaOptions::turn`].
    pub force_relay: bool,
    /// The STUN server for the server-reflexive candidate (the edge's relay).
    pub stun: Option<SocketAddr>,
    /// The TURN server for the relayed candidate.
    pub turn: Option<TurnServer>,
    /// The local address to bind. Default `0.0.0.0:0`; the host candidate's IP is then the
    /// one the OS routes towards the STUN/TURN server (or loopback without one).
    pub bind: SocketAddr,
    /// Audio bitrate (bits/s), 20 ms frames. Default 32,000 (a wideband Opus voice call).
    pub audio_bps: u32,
    /// Highest video bitrate (bits/s), where the rate controller starts and returns to.
    /// Default 1,500,000 (720p30).
    pub video_max_bps: u32,
    /// Lowest video bitrate (bits/s) the controller goes down to. Default 150,000: below it
    /// video is not worth its bytes and audio must keep the bandwidth.
    pub video_min_bps: u32,
    /// Video frames per second. Default 30.
    pub video_fps: u32,
    /// How long gathering waits for the STUN and TURN servers. Default 5 s.
    pub gather_timeout: std::time::Duration,
}

impl Default for MediaOptions {
    fn default() -> Self {
        Self {
            video: true,
            force_relay: false,
            stun: None,
            turn: None,
            bind: SocketAddr::from(([0, 0, 0, 0], 0)),
            audio_bps: 32_000,
            video_max_bps: 1_500_000,
            video_min_bps: 150_000,
            video_fps: 30,
            gather_timeout: std::time::Duration::from_secs(5),
        }
    }
}

impl MediaOptions {
    /// Options for the edge's relay described by `creds` (STUN and TURN from its URLs).
    pub fn from_credentials(creds: &crate::TurnCredentials) -> Self {
        Self {
            stun: stun_server_from_urls(&creds.urls),
            turn: TurnServer::from_credentials(creds),
            ..Self::default()
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn servers_come_from_the_edge_urls() {
        let creds = crate::TurnCredentials {
            username: "1:alice".into(),
            password: "pw".into(),
            ttl: std::time::Duration::from_secs(60),
            urls: vec![
                "stun:127.0.0.1:3478".into(),
                "turn:127.0.0.1:3478?transport=udp".into(),
            ],
        };
        let opts = MediaOptions::from_credentials(&creds);
        assert_eq!(opts.stun, Some("127.0.0.1:3478".parse().unwrap()));
        let turn = opts.turn.expect("turn");
        assert_eq!(turn.addr, "127.0.0.1:3478".parse::<SocketAddr>().unwrap());
        assert!(!format!("{turn:?}").contains("pw"));
        assert_eq!(url_addr("turn:example.org:3478", "turn:"), None);
    }
}
