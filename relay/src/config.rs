//! The relay's configuration: the `[relay]` table of the edge's TOML file. Every key has a
//! default except `secret`; [`RelayConfig::validate`] refuses a bad value naming its key.

use crate::peer_policy::IpRange;
use serde::Deserialize;
use std::fmt;
use std::net::{IpAddr, SocketAddr};
use std::time::Duration;

/// A configuration value that is out of range or inconsistent, naming its key.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("relay config key `{key}`: {message}")]
pub struct ConfigError {
    /// The key at fault, e.g. `max_port`.
    pub key: &'static str,
    /// What is wrong and what is accepted.
    pub message: String,
}

impl ConfigError {
    fn new(key: &'static str, message: impl Into<String>) -> Self {
        Self {
            key,
            message: message.into(),
        }
    }
}

/// The shared secret of coturn's REST credentials (`static-auth-secret`). Its `Debug` does
/// not print it, so a config dump in a log does not leak it.
#[derive(Clone, Default, PartialEq, Eq, Deserialize)]
#[serde(transparent)]
pub struct Secret(String);

impl Secret {
    /// Wraps a secret.
    pub fn new(secret: impl Into<String>) -> Self {
        Self(secret.into())
    }

    /// The secret's bytes (the HMAC key).
    pub fn as_bytes(&self) -> &[u8] {
        self.0.as_bytes()
    }

    /// Whether the secret is empty (an empty secret is refused at start).
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Secret(..)")
    }
}

/// Everything the relay reads from the config file.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RelayConfig {
    /// UDP address that answers STUN and TURN. Default `0.0.0.0:3478`, the IANA port for
    /// STUN/TURN, so clients need no port in their ICE server URL.
    pub listen: SocketAddr,
    /// Address the relay sockets bind and advertise in XOR-RELAYED-ADDRESS. Default: the
    /// `listen` address when it is not unspecified; required otherwise, because a relayed
    /// address of 0.0.0.0 means nothing to a peer.
    pub relay_ip: Option<IpAddr>,
    /// Lowest port of the relay sockets. Default 49152, the start of the dynamic range
    /// (RFC 6335), which is what RFC 8656 suggests and what firewalls expect.
    pub min_port: u16,
    /// Highest port of the relay sockets (inclusive). Default 65535. The range bounds the
    /// number of concurrent allocations: open these ports in the firewall.
    pub max_port: u16,
    /// REALM of the long-term credentials. Default `missive`. Short on purpose: the 401
    /// challenge carries it and must not be larger than the request that triggered it.
    pub realm: String,
    /// Shared secret of the REST credentials (coturn's `static-auth-secret`). Required; the
    /// edge mints credentials with the same secret. Replaceable at runtime.
    pub secret: Secret,
    /// Lifetime (seconds) of an allocation when the client asks for none or for less.
    /// Default 600, RFC 8656's default.
    pub default_lifetime_secs: u64,
    /// Longest lifetime (seconds) a client may ask for; longer requests are clamped.
    /// Default 3600, RFC 8656's recommendation.
    pub max_lifetime_secs: u64,
    /// Seconds a NONCE stays valid before the client gets 438 Stale Nonce. Default 600
    /// (coturn's default): long enough for a call's refreshes, short enough to age out.
    pub nonce_lifetime_secs: u64,
    /// Allocations one user (the user part of the REST username) may hold at once; more get
    /// 486 Allocation Quota Reached. Default 10: a call needs one or two per device.
    pub max_allocations_per_user: usize,
    /// Allocations the relay holds at once; more get 508 Insufficient Capacity. Default
    /// 10,000, well inside the default port range.
    pub max_allocations: usize,
    /// Relayed payload bytes per second per allocation (both directions), with a one-second
    /// burst; packets over it are dropped and counted. Default 1,250,000 (10 Mbit/s: a 1080p
    /// video call with headroom). 0 means no limit.
    pub max_bytes_per_sec: u64,
    /// Relayed packets per second per allocation (both directions), with a one-second burst.
    /// Default 2,000 (audio is 50 pps, video a few hundred). 0 means no limit.
    pub max_packets_per_sec: u64,
    /// Allow loopback peers (127.0.0.0/8, ::1). Default false: a relay that reaches its own
    /// host's services is an open door. Tests turn it on.
    pub allow_loopback_peers: bool,
    /// Peer ranges allowed even though they are private, link-local or listed in
    /// `deny_peers`, e.g. `["10.1.0.0/16"]` for a LAN deployment. Default empty.
    pub allow_peers: Vec<IpRange>,
    /// Further peer ranges refused with 403: the edge's own ranges (its public addresses,
    /// its cloud metadata endpoint, ...). Default empty.
    pub deny_peers: Vec<IpRange>,
    /// How large (percent of the request) a minimized 401/438 challenge to an
    /// unauthenticated request may be when it cannot fit in the request. Every other
    /// unauthenticated response is at most the request's size. Default 200: standard clients
    /// send small first Allocates (`turnutils_uclient` 44 or 52 bytes; RFC 8656's minimum is
    /// 28) and the smallest challenge with the default realm is 52 bytes, so a strict 100
    /// leaves some of them unable ever to authenticate; 200 bounds the worst case at 1.86x
    /// (coturn answers 2.4-2.8x). 100 means strict.
    pub challenge_amplification_percent: u16,
    /// Receive and send buffer (bytes) asked for the listening socket. Default 4 MiB
    /// (DESIGN.md: at least 4 MB, or bursts overflow the kernel queue); the kernel may clamp
    /// it to `net.core.rmem_max`.
    pub socket_buffer_bytes: usize,
    /// Also accept TURN over TCP (RFC 8656 §5) on the same port number as `listen`, for
    /// clients whose network drops UDP; their peers are still reached over UDP. Default true
    /// (open `<port>/tcp` as well as `<port>/udp`).
    pub tcp: bool,
    /// TCP connections one client IP address may hold at once; more are closed at accept.
    /// Default 64: a call needs one or two per device, and a household or an office behind
    /// one NAT address needs headroom, while one host cannot hold the relay's file
    /// descriptors.
    pub max_tcp_connections_per_ip: usize,
    /// TCP connections the relay holds at once; more are closed at accept. Default 10,000,
    /// as `max_allocations` (each allocation over TCP needs its connection).
    pub max_tcp_connections: usize,
    /// Seconds a TCP connection may go without a complete message while it holds no
    /// allocation; it is closed then. Default 30: far more than a client needs between
    /// connecting and its Allocate, and a connection that holds an allocation lives by the
    /// allocation's lifetime and refreshes instead.
    pub tcp_idle_timeout_secs: u64,
}

impl Default for RelayConfig {
    fn default() -> Self {
        Self {
            listen: SocketAddr::from(([0, 0, 0, 0], 3478)),
            relay_ip: None,
            min_port: 49152,
            max_port: 65535,
            realm: "missive".to_owned(),
            secret: Secret::default(),
            default_lifetime_secs: 600,
            max_lifetime_secs: 3600,
            nonce_lifetime_secs: 600,
            max_allocations_per_user: 10,
            max_allocations: 10_000,
            max_bytes_per_sec: 1_250_000,
            max_packets_per_sec: 2_000,
            allow_loopback_peers: false,
            allow_peers: Vec::new(),
            deny_peers: Vec::new(),
            challenge_amplification_percent: 200,
            socket_buffer_bytes: 4 << 20,
            tcp: true,
            max_tcp_connections_per_ip: 64,
            max_tcp_connections: 10_000,
            tcp_idle_timeout_secs: 30,
        }
    }
}

impl RelayConfig {
    /// Checks every value; the first bad one is returned naming its key.
    pub fn validate(&self) -> Result<(), ConfigError> {
        if self.secret.is_empty() {
            return Err(ConfigError::new(
                "secret",
                "must be set (the TURN REST shared secret)",
            ));
        }
        if self.relay_ip.is_none() && self.listen.ip().is_unspecified() {
            return Err(ConfigError::new(
                "relay_ip",
                "required when `listen` is an unspecified address (0.0.0.0 or ::)",
            ));
        }
        if let Some(ip) = self.relay_ip {
            if ip.is_unspecified() || ip.is_multicast() {
                return Err(ConfigError::new(
                    "relay_ip",
                    format!("{ip} cannot be advertised to peers"),
                ));
            }
        }
        if self.min_port == 0 {
            return Err(ConfigError::new("min_port", "must be at least 1"));
        }
        if self.max_port < self.min_port {
            return Err(ConfigError::new(
                "max_port",
                format!("{} is below min_port {}", self.max_port, self.min_port),
            ));
        }
        if self.realm.is_empty() || self.realm.len() > 127 || !self.realm.is_ascii() {
            return Err(ConfigError::new(
                "realm",
                "must be 1 to 127 ASCII characters",
            ));
        }
        if self.default_lifetime_secs == 0 {
            return Err(ConfigError::new(
                "default_lifetime_secs",
                "must be at least 1",
            ));
        }
        if self.max_lifetime_secs < self.default_lifetime_secs {
            return Err(ConfigError::new(
                "max_lifetime_secs",
                "must be at least default_lifetime_secs",
            ));
        }
        // The LIFETIME attribute is 32 bits wide.
        if self.max_lifetime_secs > u64::from(u32::MAX) {
            return Err(ConfigError::new("max_lifetime_secs", "must fit in 32 bits"));
        }
        // Nonces carry their minute of issue in 16 bits (crate::nonce), so a lifetime must
        // stay well inside the 45 days they wrap around in.
        if self.nonce_lifetime_secs < 60 || self.nonce_lifetime_secs > 86_400 {
            return Err(ConfigError::new(
                "nonce_lifetime_secs",
                "must be between 60 and 86400",
            ));
        }
        if self.max_allocations_per_user == 0 {
            return Err(ConfigError::new(
                "max_allocations_per_user",
                "must be at least 1",
            ));
        }
        if !(100..=300).contains(&self.challenge_amplification_percent) {
            return Err(ConfigError::new(
                "challenge_amplification_percent",
                "must be between 100 (strict) and 300",
            ));
        }
        if self.max_allocations == 0 {
            return Err(ConfigError::new("max_allocations", "must be at least 1"));
        }
        if self.max_tcp_connections_per_ip == 0 {
            return Err(ConfigError::new(
                "max_tcp_connections_per_ip",
                "must be at least 1 (set `tcp = false` to turn TCP off)",
            ));
        }
        if self.max_tcp_connections == 0 {
            return Err(ConfigError::new(
                "max_tcp_connections",
                "must be at least 1 (set `tcp = false` to turn TCP off)",
            ));
        }
        if !(1..=3600).contains(&self.tcp_idle_timeout_secs) {
            return Err(ConfigError::new(
                "tcp_idle_timeout_secs",
                "must be between 1 and 3600",
            ));
        }
        Ok(())
    }

    /// The address relay sockets bind and advertise: `relay_ip`, else the `listen` address.
    pub fn relay_ip(&self) -> IpAddr {
        self.relay_ip.unwrap_or(self.listen.ip())
    }

    pub(crate) fn tcp_idle_timeout(&self) -> Duration {
        Duration::from_secs(self.tcp_idle_timeout_secs)
    }

    pub(crate) fn default_lifetime(&self) -> Duration {
        Duration::from_secs(self.default_lifetime_secs)
    }

    pub(crate) fn max_lifetime(&self) -> Duration {
        Duration::from_secs(self.max_lifetime_secs)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(text: &str) -> RelayConfig {
        toml::from_str(text).expect("valid toml for the schema")
    }

    #[test]
    fn defaults_need_a_secret_and_a_relay_ip() {
        let cfg = RelayConfig::default();
        assert_eq!(cfg.validate().unwrap_err().key, "secret");
        let cfg = parse("secret = \"s\"");
        assert_eq!(cfg.validate().unwrap_err().key, "relay_ip");
        let cfg = parse("secret = \"s\"\nrelay_ip = \"192.0.2.1\"");
        cfg.validate().expect("valid");
        assert_eq!(cfg.listen.port(), 3478);
    }

    #[test]
    fn bad_values_name_their_key() {
        let base = "secret = \"s\"\nlisten = \"127.0.0.1:3478\"\n";
        for (extra, key) in [
            ("min_port = 5000\nmax_port = 4000", "max_port"),
            ("min_port = 0", "min_port"),
            ("realm = \"\"", "realm"),
            ("max_lifetime_secs = 10", "max_lifetime_secs"),
            ("nonce_lifetime_secs = 1", "nonce_lifetime_secs"),
            ("max_allocations_per_user = 0", "max_allocations_per_user"),
            ("relay_ip = \"0.0.0.0\"", "relay_ip"),
            (
                "challenge_amplification_percent = 50",
                "challenge_amplification_percent",
            ),
        ] {
            let cfg = parse(&format!("{base}{extra}"));
            assert_eq!(cfg.validate().unwrap_err().key, key, "{extra}");
        }
    }

    #[test]
    fn unknown_keys_and_bad_ranges_are_refused_by_the_parser() {
        let err = toml::from_str::<RelayConfig>("secret = \"s\"\nno_such_key = 1").unwrap_err();
        assert!(err.to_string().contains("no_such_key"), "{err}");
        let err = toml::from_str::<RelayConfig>("allow_peers = [\"10.0.0.0/33\"]").unwrap_err();
        assert!(err.to_string().contains("10.0.0.0/33"), "{err}");
    }

    #[test]
    fn secret_is_not_in_debug_output() {
        let cfg = parse("secret = \"hunter2\"");
        assert!(!format!("{cfg:?}").contains("hunter2"));
    }
}
