//! The edge's configuration: one TOML file (`--config`), overridden by CLI flags. Every key has
//! a default; every value is checked at start and a bad one is refused naming its key.

use missive_storage::Engine;
use serde::Deserialize;
use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;
use std::time::Duration;

/// Longest path a Unix socket address holds (`sun_path` is 108 bytes with its NUL on Linux).
const MAX_UNIX_SOCKET_PATH: usize = 107;

/// A configuration problem, naming the key at fault.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// The file could not be read.
    #[error("cannot read config file {path}: {source}")]
    Read {
        /// The file.
        path: PathBuf,
        /// Why.
        source: std::io::Error,
    },
    /// The file is not valid TOML for this schema (unknown key, wrong type).
    #[error("config file {path}: {message}")]
    Parse {
        /// The file.
        path: PathBuf,
        /// The parser's message, which names the key and line.
        message: String,
    },
    /// A value is out of range or inconsistent.
    #[error("config key `{key}`: {message}")]
    Invalid {
        /// Dotted key, e.g. `limits.max_frame_bytes`.
        key: &'static str,
        /// What is wrong and what is accepted.
        message: String,
    },
}

/// Everything the edge reads from its config file. See `systemd/missive-edge.toml` for a
/// commented example with every key.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Config {
    /// Directory for the database and the generated dev certificate. Default `./data`.
    pub data_dir: PathBuf,
    /// QUIC (UDP) listen address. Default `127.0.0.1:4433`: loopback until you choose otherwise.
    pub listen: SocketAddr,
    /// TCP+TLS fallback listen address. Default: the same address as `listen` (UDP and TCP can
    /// share a port number). Empty string disables the fallback.
    pub tcp_listen: Option<String>,
    /// Address of the operations HTTP endpoint (`/metrics`, `/healthz`, `/readyz`). Default
    /// `127.0.0.1:9464` (loopback: scrapers run on the host). Empty string disables it.
    pub metrics_listen: Option<String>,
    /// Unix socket on which the running edge answers `missive-edge admin …` (stats, invite,
    /// user-disable, backup, compact). Default `<data_dir>/admin.sock`: the CLI finds it from
    /// the same config or `--data-dir`. Created mode 0600 (only the service user; the edge
    /// also refuses peers of another uid, root aside). Empty string disables it; the admin
    /// commands then work only on a stopped edge. When the default path would be longer than
    /// a Unix socket path may be (107 bytes), the socket is off and the edge warns at start.
    pub admin_socket: Option<String>,
    /// Seconds a SIGTERM'd edge waits for connections to finish their in-flight work before
    /// closing them and flushing storage. Default 10 (well inside systemd's 90 s stop timeout).
    pub drain_timeout_secs: u64,
    /// Threads running the network (QUIC, TCP, sessions). Default 0: one per CPU core but one,
    /// which is left to the storage committer; at least one. At most 1024. Not reloadable.
    pub worker_threads: usize,
    /// TLS settings.
    pub tls: TlsConfig,
    /// Per-connection and global limits.
    pub limits: LimitsConfig,
    /// Who may register.
    pub registration: RegistrationConfig,
    /// Group chats.
    pub groups: GroupsConfig,
    /// Status updates.
    pub stories: StoriesConfig,
    /// Media uploads and downloads.
    pub media: MediaConfig,
    /// The STUN/TURN relay for calls.
    pub relay: RelayConfig,
    /// Call signaling.
    pub calls: CallsConfig,
    /// Storage tuning.
    pub storage: StorageConfig,
    /// Push notifications for offline devices.
    pub push: PushConfig,
    /// Logging.
    pub log: LogConfig,
}

/// TLS certificate settings.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct TlsConfig {
    /// PEM certificate chain. Empty: a self-signed development certificate is generated in
    /// `<data_dir>/tls/` on first start and reused afterwards.
    pub cert: Option<PathBuf>,
    /// PEM private key matching `cert`.
    pub key: Option<PathBuf>,
    /// Names put in the generated development certificate. Default `["localhost", "127.0.0.1", "::1"]`.
    pub dev_cert_names: Vec<String>,
}

/// Limits; exceeding any gives the client a typed error, never a crash.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct LimitsConfig {
    /// Concurrent connections (both transports). Default 100000; raise `LimitNOFILE` with it.
    pub max_connections: usize,
    /// Largest frame payload in bytes. Default 1 MiB (media travels on its own streams);
    /// 1 KiB..=16 MiB.
    pub max_frame_bytes: u32,
    /// Sustained sends per second per connection. Default 2000: far above a human, low enough
    /// that one client cannot monopolise the committer.
    pub send_rate_per_sec: u32,
    /// Extra sends allowed in a burst. Default 4000.
    pub send_burst: u32,
    /// Sends awaiting their ack per connection. Default 1024.
    pub max_in_flight_sends: usize,
    /// Unacknowledged deliveries per connection. Default 256: enough to keep a mobile link
    /// busy, small enough to bound per-connection memory.
    pub delivery_window: usize,
    /// Seconds without a client frame before the connection is closed. Default 60.
    pub idle_timeout_secs: u64,
    /// Seconds a TLS/QUIC handshake may take. Default 10.
    pub handshake_timeout_secs: u64,
    /// Seconds after its handshake within which a connection must log in or register, or be
    /// closed with `LoginTimeout`. Default 10. Before login only `Hello`, `Register`, `Login`
    /// and `Bye` are accepted.
    pub login_timeout_secs: u64,
    /// Envelope bytes per second one connection may send (bursts up to twice this, and at
    /// least one `max_frame_bytes`). Default 8 MiB: far above chat, bounded for one client.
    pub send_bytes_per_sec: u64,
    /// Frames of any kind per second after login (bursts up to twice this); past it the
    /// connection is closed with `RateLimited`. Default 5000: above `send_rate_per_sec` plus
    /// acks.
    pub frame_rate_per_sec: u32,
    /// `SetPresenceVisibility` frames per minute (bursts of 10). Default 30; each is a write.
    pub presence_changes_per_min: u32,
    /// `SubscribePresence` frames per second (bursts up to twice `max_subscriptions`).
    /// Default 100.
    pub subscribes_per_sec: u32,
    /// Distinct users one connection may watch. Default 1000 (a large contact list).
    pub max_subscriptions: usize,
    /// `Typing` frames per second (bursts up to three times this). Default 10.
    pub typing_per_sec: u32,
    /// `Ping` frames per second (bursts up to four times this); past it the connection is
    /// closed with `RateLimited`. Default 5: a client pings every few seconds at most.
    pub pings_per_sec: u32,
    /// Envelope bytes delivered and not yet acknowledged per connection, at most (one item
    /// always goes out however large). With `delivery_window` it bounds what a connection
    /// buffers for its peer; a peer that stops reading while its buffer passes this plus two
    /// frames is closed. Default 4 MiB.
    pub delivery_window_bytes: usize,
    /// Connections one address may hold (handshaking or logged in). Default 1000: mobile
    /// carriers put many phones behind one address.
    pub per_address_connections: u32,
    /// Handshakes one address may start per second (bursts up to twice this). Default 100.
    pub per_address_handshakes_per_sec: u32,
    /// Addresses the per-address limits (connections, handshakes, registrations) do not apply
    /// to, as `addr/prefix`. Default loopback (`127.0.0.0/8`, `::1`): local tools and load
    /// tests. Set `[]` to limit everyone.
    pub address_exempt: Vec<String>,
    /// QUIC handshakes in progress above which new QUIC clients must first prove their
    /// address (a Retry round trip) before the edge spends a handshake on them. Default 64.
    pub quic_retry_above_handshakes: usize,
    /// Key bundles with one-time keys one user may claim per minute, over all of its
    /// connections (bursts up to `key_claim_burst`). Each such claim takes one of someone's
    /// one-time keys; past the budget a claim gets the devices' fallback keys instead, so
    /// nobody can drain them. Default 60.
    pub key_claims_per_min: u32,
    /// Claims one user may make at once. Default 100 (a new contact list, a new group).
    pub key_claim_burst: u32,
    /// `UploadKeys` frames per minute per connection (bursts of 10). Default 10.
    pub key_uploads_per_min: u32,
    /// Unclaimed one-time keys one device may hold. Default 100.
    pub max_one_time_keys: u32,
    /// Below this many unclaimed one-time keys a device is told (`KeysLow`) to upload more.
    /// Default 20.
    pub one_time_keys_low: u32,
}

/// Registration policy.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RegistrationConfig {
    /// `open` (default: anyone may register a free name) or `invite` (a token made with
    /// `missive-edge admin invite` is required and consumed).
    pub mode: RegistrationMode,
    /// Registrations one address may make per hour (all at once at most). Default 20.
    /// Addresses in `limits.address_exempt` are not limited.
    pub per_address_per_hour: u32,
    /// Hours an invite token stays valid; older ones register nobody and are swept.
    /// Default 168 (a week).
    pub invite_ttl_hours: u64,
    /// Companion devices a user may link beside its first (the phone). Default 4.
    pub max_linked_devices: usize,
    /// Seconds a device link code (`missive link new`) stays valid. Default 300.
    pub link_code_ttl_secs: u64,
    /// Link codes one connection may create per hour. Default 10.
    pub link_codes_per_hour: u32,
}

/// Group chats.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct GroupsConfig {
    /// Most members a group may have. Default 1024 (WhatsApp's limit); at most 4096. A group
    /// message writes one small reference per member device, all in one batch.
    pub max_members: usize,
    /// Group requests (create, add, remove, invites, info...) one connection may make per
    /// minute, in bursts of 20. Default 60.
    pub requests_per_min: u32,
}

impl Default for GroupsConfig {
    fn default() -> Self {
        Self {
            max_members: 1024,
            requests_per_min: 60,
        }
    }
}

/// Status updates ("stories").
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct StoriesConfig {
    /// Seconds a status update lives before the edge drops it (body, references, viewers).
    /// Default 86400 (24 h, as users expect of a status); 1..=604800.
    pub ttl_secs: u64,
    /// Most users one status update may go to. Default 1024.
    pub max_audience: usize,
}

impl Default for StoriesConfig {
    fn default() -> Self {
        Self {
            ttl_secs: 86_400,
            max_audience: 1024,
        }
    }
}

/// Call signaling: ringing, timeouts and per-connection budgets.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct CallsConfig {
    /// Seconds an unanswered call rings before it ends as missed. Default 30; 5..=300.
    pub ring_timeout_secs: u64,
    /// Seconds a device in a call may be disconnected from the edge (a network change, a
    /// reconnect) before its call ends; media flows peer to peer meanwhile. Default 15;
    /// 1..=300.
    pub reconnect_grace_secs: u64,
    /// Most calls at once on this edge, ringing or answered. Default 100000.
    pub max_calls: usize,
    /// Invites one connection may place per minute, in bursts of 5. Default 10.
    pub invites_per_min: u32,
    /// Call actions (accept, decline, candidates, hang up) one connection may send per
    /// second, in bursts of 50. Default 20.
    pub actions_per_sec: u32,
}

impl Default for CallsConfig {
    fn default() -> Self {
        Self {
            ring_timeout_secs: 30,
            reconnect_grace_secs: 15,
            max_calls: 100_000,
            invites_per_min: 10,
            actions_per_sec: 20,
        }
    }
}

/// Media: client-encrypted blobs uploaded on transfer streams, downloaded there or over
/// HTTPS with signed URLs.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct MediaConfig {
    /// HTTPS listener for signed downloads (what a CDN pulls from), with the edge's TLS
    /// certificate, e.g. `"[::]:8443"`. Default off: clients then download over their own
    /// connection, and asking for a signed URL is refused.
    pub listen: Option<String>,
    /// Start of download URLs, e.g. `https://media.example.com` when a CDN sits in front.
    /// Default: `https://<first dev_cert_names entry or localhost>:<listen port>`.
    pub public_url: Option<String>,
    /// Largest file, bytes of ciphertext. Default 2 GiB (2147483648 plus the encryption's
    /// 16 bytes per 64 KiB); at most 64 GiB.
    pub max_file_bytes: u64,
    /// Bytes of live blobs one user may have uploaded. Default 20 GiB.
    pub quota_bytes: u64,
    /// Days a blob lives whether or not everyone downloaded it. Default 30; 1..=365.
    pub ttl_days: u64,
    /// Seconds an unfinished upload may go without new bytes before it is collected.
    /// Default 86400; at least 1.
    pub stall_secs: u64,
    /// Seconds between two collection passes (expired blobs, stalled uploads). Default 60;
    /// 1..=3600.
    pub collect_interval_secs: u64,
    /// Seconds a signed download URL stays valid. Default 3600; 10..=604800.
    pub url_ttl_secs: u64,
    /// Transfers (uploads, downloads, URL requests) one connection may open per minute, in
    /// bursts of 32. Default 240.
    pub transfers_per_min: u32,
}

impl Default for MediaConfig {
    fn default() -> Self {
        Self {
            listen: None,
            public_url: None,
            max_file_bytes: (2u64 << 30) + (2u64 << 30) / (64 * 1024) * 16 + 16,
            quota_bytes: 20 << 30,
            ttl_days: 30,
            stall_secs: 86_400,
            collect_interval_secs: 60,
            url_ttl_secs: 3600,
            transfers_per_min: 240,
        }
    }
}

impl MediaConfig {
    /// The HTTPS listener's address, `None` when off.
    pub fn listen_addr(&self) -> Result<Option<SocketAddr>, String> {
        match self.listen.as_deref() {
            None | Some("") => Ok(None),
            Some(s) => s
                .parse()
                .map(Some)
                .map_err(|e| format!("not an address ({e})")),
        }
    }
}

/// The STUN/TURN relay (`missive-relay`) the edge runs for calls, and the credentials it
/// hands to logged-in clients. The relay's own keys keep the names and defaults of
/// [`missive_relay::RelayConfig`], which documents why each default is what it is.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RelayConfig {
    /// UDP address answering STUN and TURN, e.g. `"0.0.0.0:3478"` (3478 is the IANA port,
    /// so ICE URLs need no port). Default off (unset or `""`): a relay must advertise an
    /// address its peers can reach, which the edge cannot guess behind a wildcard bind, and
    /// it opens a port range to the Internet; both are the operator's decision, as for
    /// `media.listen`. Clients then get `RelayUnavailable` when they ask for credentials.
    pub listen: Option<String>,
    /// Address the relay sockets bind and advertise (XOR-RELAYED-ADDRESS). Default: the
    /// `listen` IP; required when `listen` is `0.0.0.0` or `::`.
    pub relay_ip: Option<IpAddr>,
    /// Host name or IP put in the ICE URLs handed to clients. Default: `relay_ip`, else the
    /// `listen` IP.
    pub public_host: Option<String>,
    /// Lowest relay port. Default 49152 (start of the dynamic range, RFC 6335).
    pub min_port: u16,
    /// Highest relay port (inclusive). Default 65535. Open `min_port..=max_port` (UDP) in
    /// the firewall; the range bounds concurrent allocations.
    pub max_port: u16,
    /// File holding the REST shared secret (coturn's `static-auth-secret`), read at start
    /// and again on SIGHUP (credentials minted before keep working until they expire). One
    /// line of text; surrounding whitespace is ignored. Default unset: a random secret is
    /// made in `<data_dir>/turn-secret` (mode 0600) on first start and kept.
    pub secret_file: Option<PathBuf>,
    /// Seconds the credentials handed to a client stay valid. Default 3600: longer than
    /// most calls (an allocation outlives them only while refreshed), short enough that a
    /// leaked pair is soon useless. 60..=86400. Reloadable.
    pub credential_ttl_secs: u64,
    /// Credential requests one connection may make per minute, in bursts of 10. Default 30:
    /// a client asks once per call (and again before the TTL runs out). Reloadable.
    pub credential_requests_per_min: u32,
    /// REALM of the long-term credentials. Default `missive`.
    pub realm: String,
    /// Allocation lifetime (seconds) when the client asks for none or less. Default 600.
    pub default_lifetime_secs: u64,
    /// Longest allocation lifetime (seconds); longer requests are clamped. Default 3600.
    pub max_lifetime_secs: u64,
    /// Seconds a nonce stays valid (438 after). Default 600.
    pub nonce_lifetime_secs: u64,
    /// Allocations one user may hold at once (486 past it). Default 10.
    pub max_allocations_per_user: usize,
    /// Allocations the relay holds at once (508 past it). Default 10000.
    pub max_allocations: usize,
    /// Relayed payload bytes per second per allocation, both directions (0: no limit).
    /// Default 1250000 (10 Mbit/s).
    pub max_bytes_per_sec: u64,
    /// Relayed packets per second per allocation, both directions (0: no limit). Default 2000.
    pub max_packets_per_sec: u64,
    /// Let peers be loopback addresses. Default false (a relay into its own host is an open
    /// door); tests turn it on.
    pub allow_loopback_peers: bool,
    /// Peer ranges allowed although private or link-local, e.g. `["10.1.0.0/16"]`.
    /// Default empty.
    pub allow_peers: Vec<missive_relay::peer_policy::IpRange>,
    /// Further peer ranges refused (403): the edge's own addresses, a cloud metadata
    /// endpoint. Default empty.
    pub deny_peers: Vec<missive_relay::peer_policy::IpRange>,
    /// How large (percent of the request) a minimized 401/438 challenge may be. Default 200;
    /// 100 is strict (see `missive-relay`'s docs for why not by default).
    pub challenge_amplification_percent: u16,
    /// Receive and send buffer asked for the listening socket. Default 4 MiB.
    pub socket_buffer_bytes: usize,
    /// Also serve TURN over TCP on the same port number as `listen` (RFC 8656 §5), for
    /// clients whose network drops UDP; peers are still reached over UDP, and clients get a
    /// `turn:HOST:PORT?transport=tcp` URL too. Default true: open `<port>/tcp` as well.
    pub tcp: bool,
    /// TCP connections one client address may hold. Default 64.
    pub max_tcp_connections_per_ip: usize,
    /// TCP connections the relay holds at once. Default 10000.
    pub max_tcp_connections: usize,
    /// Seconds a TCP connection without an allocation may stay silent. Default 30.
    pub tcp_idle_timeout_secs: u64,
}

impl Default for RelayConfig {
    fn default() -> Self {
        // The relay crate's defaults, so the two cannot drift apart.
        let r = missive_relay::RelayConfig::default();
        Self {
            listen: None,
            relay_ip: r.relay_ip,
            public_host: None,
            min_port: r.min_port,
            max_port: r.max_port,
            secret_file: None,
            credential_ttl_secs: 3600,
            credential_requests_per_min: 30,
            realm: r.realm,
            default_lifetime_secs: r.default_lifetime_secs,
            max_lifetime_secs: r.max_lifetime_secs,
            nonce_lifetime_secs: r.nonce_lifetime_secs,
            max_allocations_per_user: r.max_allocations_per_user,
            max_allocations: r.max_allocations,
            max_bytes_per_sec: r.max_bytes_per_sec,
            max_packets_per_sec: r.max_packets_per_sec,
            allow_loopback_peers: r.allow_loopback_peers,
            allow_peers: r.allow_peers,
            deny_peers: r.deny_peers,
            challenge_amplification_percent: r.challenge_amplification_percent,
            socket_buffer_bytes: r.socket_buffer_bytes,
            tcp: r.tcp,
            max_tcp_connections_per_ip: r.max_tcp_connections_per_ip,
            max_tcp_connections: r.max_tcp_connections,
            tcp_idle_timeout_secs: r.tcp_idle_timeout_secs,
        }
    }
}

impl RelayConfig {
    /// The relay's listening address: `None` when it is off.
    pub fn listen_addr(&self) -> Result<Option<SocketAddr>, String> {
        match self.listen.as_deref() {
            None | Some("") => Ok(None),
            Some(s) => s
                .parse()
                .map(Some)
                .map_err(|e| format!("not an address ({e}): {s:?}")),
        }
    }

    /// The relay crate's configuration for `listen` with `secret`.
    pub fn relay_config(
        &self,
        listen: SocketAddr,
        secret: missive_relay::Secret,
    ) -> missive_relay::RelayConfig {
        missive_relay::RelayConfig {
            listen,
            relay_ip: self.relay_ip,
            min_port: self.min_port,
            max_port: self.max_port,
            realm: self.realm.clone(),
            secret,
            default_lifetime_secs: self.default_lifetime_secs,
            max_lifetime_secs: self.max_lifetime_secs,
            nonce_lifetime_secs: self.nonce_lifetime_secs,
            max_allocations_per_user: self.max_allocations_per_user,
            max_allocations: self.max_allocations,
            max_bytes_per_sec: self.max_bytes_per_sec,
            max_packets_per_sec: self.max_packets_per_sec,
            allow_loopback_peers: self.allow_loopback_peers,
            allow_peers: self.allow_peers.clone(),
            deny_peers: self.deny_peers.clone(),
            challenge_amplification_percent: self.challenge_amplification_percent,
            socket_buffer_bytes: self.socket_buffer_bytes,
            tcp: self.tcp,
            max_tcp_connections_per_ip: self.max_tcp_connections_per_ip,
            max_tcp_connections: self.max_tcp_connections,
            tcp_idle_timeout_secs: self.tcp_idle_timeout_secs,
        }
    }

    /// The host in the ICE URLs: `public_host`, else the relay address (IPv6 in brackets).
    pub fn url_host(&self, listen: SocketAddr) -> String {
        if let Some(h) = self.public_host.as_deref().filter(|h| !h.is_empty()) {
            return h.to_owned();
        }
        match self.relay_ip.unwrap_or(listen.ip()) {
            IpAddr::V6(ip) => format!("[{ip}]"),
            IpAddr::V4(ip) => ip.to_string(),
        }
    }

    /// Checks the `[relay]` keys; the first bad one is named `relay.<key>`.
    fn validate(&self) -> Result<(), ConfigError> {
        let bad = |key: &'static str, message: String| ConfigError::Invalid { key, message };
        let listen = self.listen_addr().map_err(|e| bad("relay.listen", e))?;
        if !(60..=86_400).contains(&self.credential_ttl_secs) {
            return Err(bad(
                "relay.credential_ttl_secs",
                "must be 60..=86400".into(),
            ));
        }
        if self.credential_requests_per_min == 0 {
            return Err(bad(
                "relay.credential_requests_per_min",
                "must be at least 1".into(),
            ));
        }
        if let Some(h) = &self.public_host {
            if h.is_empty() || h.contains(|c: char| c.is_whitespace() || c == '/' || c == '?') {
                return Err(bad(
                    "relay.public_host",
                    format!("must be a host name or IP address, got {h:?}"),
                ));
            }
        }
        if let Some(path) = &self.secret_file {
            if path.as_os_str().is_empty() {
                return Err(bad(
                    "relay.secret_file",
                    "must not be empty (leave it unset for a generated secret)".into(),
                ));
            }
        }
        // The relay crate checks its own keys; the placeholder secret only stands in for the
        // one read from the file at start. When the relay is off, its keys are checked
        // against the default address so that a mistake shows before it is turned on.
        let at = listen.unwrap_or_else(|| SocketAddr::from(([127, 0, 0, 1], 3478)));
        self.relay_config(at, missive_relay::Secret::new("placeholder"))
            .validate()
            .map_err(|e| bad(relay_key(e.key), e.message))
    }
}

/// `relay.<key>` for a key of the relay crate's configuration.
fn relay_key(key: &str) -> &'static str {
    match key {
        "relay_ip" => "relay.relay_ip",
        "min_port" => "relay.min_port",
        "max_port" => "relay.max_port",
        "realm" => "relay.realm",
        "default_lifetime_secs" => "relay.default_lifetime_secs",
        "max_lifetime_secs" => "relay.max_lifetime_secs",
        "nonce_lifetime_secs" => "relay.nonce_lifetime_secs",
        "max_allocations_per_user" => "relay.max_allocations_per_user",
        "max_allocations" => "relay.max_allocations",
        "challenge_amplification_percent" => "relay.challenge_amplification_percent",
        "max_tcp_connections_per_ip" => "relay.max_tcp_connections_per_ip",
        "max_tcp_connections" => "relay.max_tcp_connections",
        "tcp_idle_timeout_secs" => "relay.tcp_idle_timeout_secs",
        "secret" => "relay.secret_file",
        _ => "relay",
    }
}

/// Registration policy values.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum RegistrationMode {
    /// Anyone may register a free name.
    Open,
    /// An invite token is required.
    Invite,
}

/// Storage engine and tuning.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct StorageConfig {
    /// Embedded database engine: `"sled"` (default, the design card's engine) or `"fjall"`
    /// (an LSM tree: on the reference machine less disk per queued envelope and faster acks,
    /// see bench/RESULTS.md). A data directory opens only with the engine that wrote
    /// it; switch with `missive-edge admin migrate --from sled --to fjall` on a stopped edge.
    #[serde(deserialize_with = "engine_by_name")]
    pub engine: Engine,
    /// Database cache in MiB: sled's page cache or fjall's block cache. Default 256 (sled's
    /// own default of 1 GiB costs RSS).
    pub cache_mb: u64,
    /// fjall only: the in-memory write buffer (memtable) in MiB, flushed to a table when full.
    /// Default 32: it bounds the journal fjall replays after a crash (reopen time) and the
    /// memory it holds, while keeping flushes rare. 1..=1024.
    pub memtable_mb: u64,
    /// Most operations per group commit. Default 4096.
    pub max_batch: usize,
    /// Least microseconds between two fsyncs, so that under load one fsync covers several
    /// batches; a write after a quiet spell is fsync'd at once. Live delivery never waits for
    /// it; a sender's `Sent` waits for it at most. Default 1000; 0 fsyncs every batch at once;
    /// at most 100000.
    pub commit_delay_us: u64,
    /// Days an undelivered envelope (and a dedup key) is kept. Default 30.
    pub retention_days: u64,
    /// Seconds between expiry sweeps. Default 3600.
    pub sweep_interval_secs: u64,
    /// Undelivered items one device mailbox holds at most; a send past it is refused with
    /// `MailboxFull` (retryable). Default 10000.
    pub mailbox_max_items: u64,
    /// MiB of undelivered items one device mailbox holds at most. Default 256.
    pub mailbox_max_mb: u64,
    /// Undelivered messages of one sender one device mailbox holds at most (a stranger cannot
    /// fill a mailbox alone); past it that sender gets `MailboxFull`. Default 2000.
    pub mailbox_max_items_per_sender: u64,
    /// MiB of one sender's undelivered messages one device mailbox holds at most. Default 64.
    pub mailbox_max_mb_per_sender: u64,
    /// Deliver a message to a live recipient as soon as it is written, before the fsync that
    /// makes it durable, instead of after. Default false: nobody hears of a message before it
    /// is on disk. True saves about one fsync of delivery latency (about 1 ms of p50 at a
    /// paced 4,000 msgs/s on the reference VM, bench/RESULTS.md); should that fsync fail, the
    /// recipient has a message its sender is told to send again (the SDK drops the repeat).
    /// The sender's `Sent` waits for the fsync either way.
    pub deliver_before_fsync: bool,
    /// MiB of free disk below which new messages, accounts, invites and devices are refused
    /// with `StorageUnavailable` (retryable) while acks and expiry go on, and `/readyz` says
    /// not ready. 0 turns the watermark off. Default 256.
    pub min_free_mb: u64,
}

impl StorageConfig {
    /// These settings as the store takes them (engine, cache, memtable, batch, retention).
    pub fn store_config(&self) -> missive_storage::StoreConfig {
        const MIB: u64 = 1024 * 1024;
        missive_storage::StoreConfig {
            engine: self.engine,
            cache_capacity_bytes: self.cache_mb * MIB,
            memtable_bytes: self.memtable_mb * MIB,
            max_batch: self.max_batch,
            retention: Duration::from_secs(self.retention_days * 24 * 3600),
            commit_delay: Duration::from_micros(self.commit_delay_us),
            mailbox_max_items: self.mailbox_max_items,
            mailbox_max_bytes: self.mailbox_max_mb.saturating_mul(MIB),
            mailbox_max_items_per_sender: self.mailbox_max_items_per_sender,
            mailbox_max_bytes_per_sender: self.mailbox_max_mb_per_sender.saturating_mul(MIB),
            deliver_before_fsync: self.deliver_before_fsync,
            // Set from `registration.*` by `Config::store_config`.
            invite_ttl: missive_storage::StoreConfig::default().invite_ttl,
            link_code_ttl: missive_storage::StoreConfig::default().link_code_ttl,
            min_free_bytes: self.min_free_mb.saturating_mul(MIB),
        }
    }
}

/// Reads `storage.engine` by name ("sled", "fjall"); an unknown name is refused with the
/// names that are accepted.
fn engine_by_name<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Engine, D::Error> {
    let name = String::deserialize(d)?;
    name.parse().map_err(serde::de::Error::custom)
}

/// Push notifier.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct PushConfig {
    /// `http://host:port/path` of a push gateway that receives a content-free JSON wake-up
    /// (`{"user":..,"device":..,"reason":"message"}`) when a device without a live session
    /// gets a message. Empty (default): push is off.
    pub gateway_url: Option<String>,
    /// Attempts per wake-up (with exponential backoff from 200 ms). Default 4.
    pub max_attempts: u32,
    /// Per-request timeout in milliseconds. Default 5000.
    pub timeout_ms: u64,
}

/// Logging.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct LogConfig {
    /// `human` (default) or `json`.
    pub format: LogFormat,
    /// `RUST_LOG`-style filter; the `RUST_LOG` variable wins when set. Default `info`.
    pub filter: String,
}

/// Log output formats.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    /// Human-readable lines.
    Human,
    /// One JSON object per line.
    Json,
}

impl Default for Config {
    fn default() -> Self {
        Self {
            data_dir: PathBuf::from("./data"),
            listen: SocketAddr::from(([127, 0, 0, 1], 4433)),
            tcp_listen: None,
            metrics_listen: None,
            admin_socket: None,
            drain_timeout_secs: 10,
            worker_threads: 0,
            tls: TlsConfig::default(),
            limits: LimitsConfig::default(),
            registration: RegistrationConfig::default(),
            groups: GroupsConfig::default(),
            media: MediaConfig::default(),
            relay: RelayConfig::default(),
            calls: CallsConfig::default(),
            stories: StoriesConfig::default(),
            storage: StorageConfig::default(),
            push: PushConfig::default(),
            log: LogConfig::default(),
        }
    }
}

impl Default for TlsConfig {
    fn default() -> Self {
        Self {
            cert: None,
            key: None,
            dev_cert_names: vec!["localhost".into(), "127.0.0.1".into(), "::1".into()],
        }
    }
}

impl Default for LimitsConfig {
    fn default() -> Self {
        Self {
            max_connections: 100_000,
            max_frame_bytes: 1024 * 1024,
            send_rate_per_sec: 2000,
            send_burst: 4000,
            max_in_flight_sends: 1024,
            delivery_window: 256,
            idle_timeout_secs: 60,
            handshake_timeout_secs: 10,
            login_timeout_secs: 10,
            send_bytes_per_sec: 8 * 1024 * 1024,
            frame_rate_per_sec: 5000,
            presence_changes_per_min: 30,
            subscribes_per_sec: 100,
            max_subscriptions: 1000,
            typing_per_sec: 10,
            pings_per_sec: 5,
            delivery_window_bytes: 4 * 1024 * 1024,
            per_address_connections: 1000,
            per_address_handshakes_per_sec: 100,
            address_exempt: vec!["127.0.0.0/8".into(), "::1".into()],
            quic_retry_above_handshakes: 64,
            key_claims_per_min: 60,
            key_claim_burst: 100,
            key_uploads_per_min: 10,
            max_one_time_keys: 100,
            one_time_keys_low: 20,
        }
    }
}

impl Default for RegistrationConfig {
    fn default() -> Self {
        Self {
            mode: RegistrationMode::Open,
            per_address_per_hour: 20,
            invite_ttl_hours: 168,
            max_linked_devices: 4,
            link_code_ttl_secs: 300,
            link_codes_per_hour: 10,
        }
    }
}

impl Default for StorageConfig {
    fn default() -> Self {
        Self {
            engine: Engine::Sled,
            cache_mb: 256,
            memtable_mb: 32,
            max_batch: 4096,
            commit_delay_us: 1000,
            retention_days: 30,
            sweep_interval_secs: 3600,
            mailbox_max_items: 10_000,
            mailbox_max_mb: 256,
            mailbox_max_items_per_sender: 2_000,
            mailbox_max_mb_per_sender: 64,
            deliver_before_fsync: false,
            min_free_mb: 256,
        }
    }
}

impl Default for PushConfig {
    fn default() -> Self {
        Self {
            gateway_url: None,
            max_attempts: 4,
            timeout_ms: 5000,
        }
    }
}

impl Default for LogConfig {
    fn default() -> Self {
        Self {
            format: LogFormat::Human,
            filter: "info".into(),
        }
    }
}

/// A parsed push gateway address.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GatewayUrl {
    /// `host:port` to connect to.
    pub authority: String,
    /// Request path, starting with `/`.
    pub path: String,
}

impl GatewayUrl {
    /// Parses `http://host[:port]/path`.
    pub fn parse(url: &str) -> Result<Self, String> {
        let rest = url
            .strip_prefix("http://")
            .ok_or("must start with http:// (put a TLS-terminating proxy in front for https)")?;
        let (authority, path) = match rest.find('/') {
            Some(i) => (&rest[..i], &rest[i..]),
            None => (rest, "/"),
        };
        if authority.is_empty() {
            return Err("has no host".into());
        }
        let authority = if authority.contains(':') {
            authority.to_owned()
        } else {
            format!("{authority}:80")
        };
        Ok(Self {
            authority,
            path: path.to_owned(),
        })
    }
}

impl Config {
    /// Reads `path` (TOML); `None` gives the defaults.
    pub fn load(path: Option<&std::path::Path>) -> Result<Self, ConfigError> {
        let Some(path) = path else {
            return Ok(Self::default());
        };
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: path.to_owned(),
            source,
        })?;
        toml::from_str(&text).map_err(|e| ConfigError::Parse {
            path: path.to_owned(),
            message: e.to_string(),
        })
    }

    /// Checks every value; the first bad one is reported with its key.
    pub fn validate(&self) -> Result<(), ConfigError> {
        fn bad(key: &'static str, message: impl Into<String>) -> Result<(), ConfigError> {
            Err(ConfigError::Invalid {
                key,
                message: message.into(),
            })
        }
        let l = &self.limits;
        if !(1024..=missive_proto::HARD_MAX_FRAME as u32).contains(&l.max_frame_bytes) {
            return bad(
                "limits.max_frame_bytes",
                format!("must be 1024..=16777216, got {}", l.max_frame_bytes),
            );
        }
        if l.max_connections == 0 {
            return bad("limits.max_connections", "must be at least 1");
        }
        if l.send_rate_per_sec == 0 {
            return bad("limits.send_rate_per_sec", "must be at least 1");
        }
        if l.max_in_flight_sends == 0 {
            return bad("limits.max_in_flight_sends", "must be at least 1");
        }
        if !(1..=65536).contains(&l.delivery_window) {
            return bad("limits.delivery_window", "must be 1..=65536");
        }
        if !(1..=86400).contains(&l.idle_timeout_secs) {
            return bad("limits.idle_timeout_secs", "must be 1..=86400");
        }
        if !(1..=600).contains(&l.handshake_timeout_secs) {
            return bad("limits.handshake_timeout_secs", "must be 1..=600");
        }
        if !(1..=600).contains(&l.login_timeout_secs) {
            return bad("limits.login_timeout_secs", "must be 1..=600");
        }
        if l.send_bytes_per_sec == 0 {
            return bad("limits.send_bytes_per_sec", "must be at least 1");
        }
        if l.frame_rate_per_sec == 0 {
            return bad("limits.frame_rate_per_sec", "must be at least 1");
        }
        if l.key_claims_per_min == 0 {
            return bad("limits.key_claims_per_min", "must be at least 1");
        }
        if l.key_uploads_per_min == 0 {
            return bad("limits.key_uploads_per_min", "must be at least 1");
        }
        if l.max_one_time_keys == 0 || l.max_one_time_keys > 10_000 {
            return bad("limits.max_one_time_keys", "must be 1..=10000");
        }
        if l.one_time_keys_low > l.max_one_time_keys {
            return bad(
                "limits.one_time_keys_low",
                "must be at most limits.max_one_time_keys",
            );
        }
        if l.frame_rate_per_sec < l.send_rate_per_sec {
            return bad(
                "limits.frame_rate_per_sec",
                "must be at least limits.send_rate_per_sec (every send is a frame)",
            );
        }
        if l.presence_changes_per_min == 0 {
            return bad("limits.presence_changes_per_min", "must be at least 1");
        }
        if l.subscribes_per_sec == 0 {
            return bad("limits.subscribes_per_sec", "must be at least 1");
        }
        if l.typing_per_sec == 0 {
            return bad("limits.typing_per_sec", "must be at least 1");
        }
        if l.pings_per_sec == 0 {
            return bad("limits.pings_per_sec", "must be at least 1");
        }
        if l.delivery_window_bytes < 1024 {
            return bad("limits.delivery_window_bytes", "must be at least 1024");
        }
        if l.per_address_connections == 0 {
            return bad("limits.per_address_connections", "must be at least 1");
        }
        if l.per_address_handshakes_per_sec == 0 {
            return bad(
                "limits.per_address_handshakes_per_sec",
                "must be at least 1",
            );
        }
        if let Err(e) = self.address_exempt() {
            return bad("limits.address_exempt", e);
        }
        if self.registration.per_address_per_hour == 0 {
            return bad("registration.per_address_per_hour", "must be at least 1");
        }
        if self.registration.max_linked_devices >= missive_proto::MAX_DEVICES_PER_USER {
            return bad(
                "registration.max_linked_devices",
                "must be below 16 (a user's devices, the first included, are at most 16)",
            );
        }
        if !(10..=86_400).contains(&self.registration.link_code_ttl_secs) {
            return bad("registration.link_code_ttl_secs", "must be 10..=86400");
        }
        if !(2..=missive_proto::MAX_GROUP_MEMBERS).contains(&self.groups.max_members) {
            return bad("groups.max_members", "must be 2..=4096");
        }
        if !(5..=300).contains(&self.calls.ring_timeout_secs) {
            return bad("calls.ring_timeout_secs", "must be 5..=300");
        }
        if !(1..=300).contains(&self.calls.reconnect_grace_secs) {
            return bad("calls.reconnect_grace_secs", "must be 1..=300");
        }
        if self.calls.max_calls == 0 {
            return bad("calls.max_calls", "must be at least 1");
        }
        if self.calls.invites_per_min == 0 {
            return bad("calls.invites_per_min", "must be at least 1");
        }
        if self.calls.actions_per_sec == 0 {
            return bad("calls.actions_per_sec", "must be at least 1");
        }
        if !(1..=604_800).contains(&self.stories.ttl_secs) {
            return bad("stories.ttl_secs", "must be 1..=604800 (a week)");
        }
        if !(1..=missive_proto::MAX_GROUP_MEMBERS).contains(&self.stories.max_audience) {
            return bad("stories.max_audience", "must be 1..=4096");
        }
        if let Err(e) = self.media.listen_addr() {
            return bad("media.listen", e);
        }
        if let Some(u) = &self.media.public_url {
            if !(u.starts_with("https://") || u.starts_with("http://")) || u.ends_with('/') {
                return bad(
                    "media.public_url",
                    "must be an http(s) URL without a trailing slash",
                );
            }
        }
        if !(1..=64u64 << 30).contains(&self.media.max_file_bytes) {
            return bad("media.max_file_bytes", "must be 1..=68719476736");
        }
        if self.media.quota_bytes == 0 {
            return bad("media.quota_bytes", "must be at least 1");
        }
        if !(1..=365).contains(&self.media.ttl_days) {
            return bad("media.ttl_days", "must be 1..=365");
        }
        if self.media.stall_secs == 0 {
            return bad("media.stall_secs", "must be at least 1");
        }
        if !(1..=3600).contains(&self.media.collect_interval_secs) {
            return bad("media.collect_interval_secs", "must be 1..=3600");
        }
        if !(10..=604_800).contains(&self.media.url_ttl_secs) {
            return bad("media.url_ttl_secs", "must be 10..=604800");
        }
        if self.media.transfers_per_min == 0 {
            return bad("media.transfers_per_min", "must be at least 1");
        }
        if self.groups.requests_per_min == 0 {
            return bad("groups.requests_per_min", "must be at least 1");
        }
        if self.registration.link_codes_per_hour == 0 {
            return bad("registration.link_codes_per_hour", "must be at least 1");
        }
        if self.registration.invite_ttl_hours == 0 {
            return bad("registration.invite_ttl_hours", "must be at least 1");
        }
        if self.storage.mailbox_max_items == 0 {
            return bad("storage.mailbox_max_items", "must be at least 1");
        }
        if self.storage.mailbox_max_mb == 0 {
            return bad("storage.mailbox_max_mb", "must be at least 1");
        }
        if self.storage.mailbox_max_items_per_sender == 0 {
            return bad("storage.mailbox_max_items_per_sender", "must be at least 1");
        }
        if self.storage.mailbox_max_mb_per_sender == 0 {
            return bad("storage.mailbox_max_mb_per_sender", "must be at least 1");
        }
        if self.storage.cache_mb < 8 {
            return bad("storage.cache_mb", "must be at least 8");
        }
        if !(1..=1024).contains(&self.storage.memtable_mb) {
            return bad(
                "storage.memtable_mb",
                format!("must be 1..=1024, got {}", self.storage.memtable_mb),
            );
        }
        if self.storage.max_batch == 0 {
            return bad("storage.max_batch", "must be at least 1");
        }
        let max_delay_us = missive_storage::MAX_COMMIT_DELAY.as_micros() as u64;
        if self.storage.commit_delay_us > max_delay_us {
            return bad(
                "storage.commit_delay_us",
                format!(
                    "must be at most {max_delay_us} (a sender's Sent waits for it), got {}",
                    self.storage.commit_delay_us
                ),
            );
        }
        if self.storage.retention_days == 0 {
            return bad("storage.retention_days", "must be at least 1");
        }
        if self.storage.sweep_interval_secs == 0 {
            return bad("storage.sweep_interval_secs", "must be at least 1");
        }
        if self.tls.cert.is_some() != self.tls.key.is_some() {
            return bad("tls.cert", "tls.cert and tls.key must be given together");
        }
        if let Some(url) = self.push.gateway_url.as_deref().filter(|u| !u.is_empty()) {
            if let Err(e) = GatewayUrl::parse(url) {
                return bad("push.gateway_url", e);
            }
        }
        if self.push.max_attempts == 0 {
            return bad("push.max_attempts", "must be at least 1");
        }
        self.relay.validate()?;
        if let Err(e) = self.tcp_listen_addr() {
            return bad("tcp_listen", e);
        }
        if let Err(e) = self.metrics_listen_addr() {
            return bad("metrics_listen", e);
        }
        if self.worker_threads > 1024 {
            return bad("worker_threads", "must be 0 (automatic)..=1024");
        }
        if !(1..=3600).contains(&self.drain_timeout_secs) {
            return bad("drain_timeout_secs", "must be 1..=3600");
        }
        if self.data_dir.as_os_str().is_empty() {
            return bad("data_dir", "must not be empty");
        }
        if let Some(path) = self.admin_socket.as_deref().filter(|p| !p.is_empty()) {
            if path.len() > MAX_UNIX_SOCKET_PATH {
                return bad(
                    "admin_socket",
                    format!(
                        "{path} is {} bytes long; a Unix socket path may have at most \
                         {MAX_UNIX_SOCKET_PATH}: set a shorter path, or \"\" to disable the \
                         admin socket",
                        path.len()
                    ),
                );
            }
        }
        Ok(())
    }

    /// The TCP fallback address: `None` when disabled.
    pub fn tcp_listen_addr(&self) -> Result<Option<SocketAddr>, String> {
        match self.tcp_listen.as_deref() {
            None => Ok(Some(self.listen)),
            Some("") => Ok(None),
            Some(s) => s
                .parse()
                .map(Some)
                .map_err(|e| format!("not an address ({e}): {s:?}")),
        }
    }

    /// Network worker threads to start: `worker_threads`, or when 0 one per CPU core but one
    /// (left to the storage committer), at least one.
    pub fn network_threads(&self) -> usize {
        if self.worker_threads > 0 {
            return self.worker_threads;
        }
        let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
        cores.saturating_sub(1).max(1)
    }

    /// The operations HTTP address: `None` when disabled.
    pub fn metrics_listen_addr(&self) -> Result<Option<SocketAddr>, String> {
        match self.metrics_listen.as_deref() {
            None => Ok(Some(SocketAddr::from(([127, 0, 0, 1], 9464)))),
            Some("") => Ok(None),
            Some(s) => s
                .parse()
                .map(Some)
                .map_err(|e| format!("not an address ({e}): {s:?}")),
        }
    }

    /// The admin socket's path: `None` when disabled, or when it is left to its default and
    /// `<data_dir>/admin.sock` is too long for a Unix socket (see
    /// [`Config::admin_socket_too_long`]).
    pub fn admin_socket_path(&self) -> Option<PathBuf> {
        match self.admin_socket.as_deref() {
            None if self.admin_socket_too_long() => None,
            None => Some(self.data_dir.join("admin.sock")),
            Some("") => None,
            Some(s) => Some(PathBuf::from(s)),
        }
    }

    /// True when `admin_socket` is left to its default and `<data_dir>/admin.sock` is longer
    /// than a Unix socket path may be: the socket is then off (the edge warns at start)
    /// rather than the edge refusing to start on a data dir that worked before.
    pub fn admin_socket_too_long(&self) -> bool {
        self.admin_socket.is_none()
            && self.data_dir.join("admin.sock").as_os_str().len() > MAX_UNIX_SOCKET_PATH
    }

    /// Idle timeout as a duration.
    pub fn idle_timeout(&self) -> Duration {
        Duration::from_secs(self.limits.idle_timeout_secs)
    }

    /// `limits.address_exempt` parsed.
    pub fn address_exempt(&self) -> Result<Vec<crate::address_limits::AddressRange>, String> {
        self.limits
            .address_exempt
            .iter()
            .map(|s| s.parse())
            .collect()
    }

    /// The per-address budgets (`limits.per_address_*`, `registration.per_address_per_hour`).
    pub fn address_budgets(&self) -> crate::address_limits::AddressBudgets {
        use crate::budget::Rate;
        let l = &self.limits;
        let per_hour = self.registration.per_address_per_hour;
        crate::address_limits::AddressBudgets {
            max_connections: l.per_address_connections,
            handshakes: Rate::per_second(
                l.per_address_handshakes_per_sec,
                l.per_address_handshakes_per_sec.saturating_mul(2),
            ),
            registrations: Rate {
                rate: f64::from(per_hour),
                per: Duration::from_secs(3600),
                burst: f64::from(per_hour.max(1)),
            },
            // Validated at start; a bad entry cannot get here.
            exempt: self.address_exempt().unwrap_or_default(),
        }
    }

    /// The store's settings: `[storage]` plus the invite lifetime from `[registration]`.
    pub fn store_config(&self) -> missive_storage::StoreConfig {
        let mut c = self.storage.store_config();
        c.invite_ttl = Duration::from_secs(self.registration.invite_ttl_hours * 3600);
        c.link_code_ttl = Duration::from_secs(self.registration.link_code_ttl_secs);
        c
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(s: &str) -> Result<Config, String> {
        let c: Config = toml::from_str(s).map_err(|e| e.to_string())?;
        c.validate().map_err(|e| e.to_string())?;
        Ok(c)
    }

    #[test]
    fn defaults_are_valid() {
        assert!(Config::default().validate().is_ok());
        let c = parse("").unwrap();
        assert_eq!(c.limits.delivery_window, 256);
        assert_eq!(c.tcp_listen_addr().unwrap(), Some(c.listen));
    }

    #[test]
    fn bad_values_name_their_key() {
        let e = parse("[limits]\nmax_frame_bytes = 5\n").unwrap_err();
        assert!(e.contains("limits.max_frame_bytes"), "{e}");
        let e = parse("[limits]\nmax_frame_byts = 5000\n").unwrap_err();
        assert!(e.contains("max_frame_byts"), "{e}");
        let e = parse("listen = \"nope\"\n").unwrap_err();
        assert!(e.contains("listen"), "{e}");
        let e = parse("[push]\ngateway_url = \"ftp://x\"\n").unwrap_err();
        assert!(e.contains("push.gateway_url"), "{e}");
        let e = parse("[registration]\nmode = \"closed\"\n").unwrap_err();
        assert!(e.contains("mode") || e.contains("closed"), "{e}");
        let e = parse("tcp_listen = \"x:y\"\n").unwrap_err();
        assert!(e.contains("tcp_listen"), "{e}");
        let e = parse("worker_threads = 5000\n").unwrap_err();
        assert!(e.contains("worker_threads"), "{e}");
        let e = parse("[storage]\ncommit_delay_us = 100001\n").unwrap_err();
        assert!(e.contains("storage.commit_delay_us"), "{e}");
    }

    #[test]
    fn shipped_example_config_is_valid_and_matches_defaults() {
        let c = parse(include_str!("../../systemd/missive-edge.toml")).unwrap();
        let d = Config::default();
        assert_eq!(c.listen, d.listen);
        assert_eq!(c.limits.max_frame_bytes, d.limits.max_frame_bytes);
        assert_eq!(c.limits.delivery_window, d.limits.delivery_window);
        assert_eq!(c.storage.cache_mb, d.storage.cache_mb);
        assert_eq!(c.storage.engine, d.storage.engine);
        assert_eq!(c.storage.memtable_mb, d.storage.memtable_mb);
        assert_eq!(c.storage.commit_delay_us, d.storage.commit_delay_us);
        assert_eq!(
            c.storage.store_config().commit_delay,
            missive_storage::StoreConfig::default().commit_delay
        );
        assert_eq!(c.push.max_attempts, d.push.max_attempts);
        assert_eq!(c.registration.mode, d.registration.mode);
        assert_eq!(c.admin_socket_path(), d.admin_socket_path());
        assert_eq!(c.limits.login_timeout_secs, d.limits.login_timeout_secs);
        assert_eq!(c.limits.address_exempt, d.limits.address_exempt);
        assert_eq!(
            c.limits.delivery_window_bytes,
            d.limits.delivery_window_bytes
        );
        assert_eq!(c.limits.frame_rate_per_sec, d.limits.frame_rate_per_sec);
        assert_eq!(
            c.registration.per_address_per_hour,
            d.registration.per_address_per_hour
        );
        assert_eq!(c.storage.min_free_mb, d.storage.min_free_mb);
        assert_eq!(c.storage.mailbox_max_items, d.storage.mailbox_max_items);
        assert_eq!(c.relay, d.relay);
    }

    #[test]
    fn relay_is_off_by_default_and_its_keys_are_checked() {
        let c = parse("").unwrap();
        assert_eq!(c.relay.listen_addr().unwrap(), None);
        assert_eq!(c.relay.credential_ttl_secs, 3600);
        let c = parse("[relay]\nlisten = \"127.0.0.1:3478\"\n").unwrap();
        let at = c.relay.listen_addr().unwrap().unwrap();
        assert_eq!(c.relay.url_host(at), "127.0.0.1");
        let c = parse("[relay]\nlisten = \"[::1]:3478\"\n").unwrap();
        assert_eq!(c.relay.url_host("[::1]:3478".parse().unwrap()), "[::1]");
        let c = parse(
            "[relay]\nlisten = \"0.0.0.0:3478\"\nrelay_ip = \"192.0.2.1\"\npublic_host = \"turn.example.com\"\n",
        )
        .unwrap();
        assert_eq!(
            c.relay.url_host("0.0.0.0:3478".parse().unwrap()),
            "turn.example.com"
        );
        for (text, key) in [
            ("listen = \"nope\"", "relay.listen"),
            // A wildcard bind cannot be advertised: the relay address is required.
            ("listen = \"0.0.0.0:3478\"", "relay.relay_ip"),
            ("min_port = 5000\nmax_port = 4000", "relay.max_port"),
            ("credential_ttl_secs = 10", "relay.credential_ttl_secs"),
            (
                "credential_requests_per_min = 0",
                "relay.credential_requests_per_min",
            ),
            ("public_host = \"a b\"", "relay.public_host"),
            ("secret_file = \"\"", "relay.secret_file"),
            ("realm = \"\"", "relay.realm"),
        ] {
            let e = parse(&format!("[relay]\n{text}\n")).unwrap_err();
            assert!(e.contains(&format!("`{key}`")), "{text}: {e}");
        }
        let e = parse("[relay]\nsecret = \"inline\"\n").unwrap_err();
        assert!(e.contains("secret"), "{e}");
    }

    #[test]
    fn new_limits_are_checked_and_name_their_key() {
        let e = parse("[limits]\naddress_exempt = [\"10.0.0.0/40\"]\n").unwrap_err();
        assert!(e.contains("limits.address_exempt"), "{e}");
        let e = parse("[limits]\nframe_rate_per_sec = 10\n").unwrap_err();
        assert!(e.contains("limits.frame_rate_per_sec"), "{e}");
        let e = parse("[limits]\nlogin_timeout_secs = 0\n").unwrap_err();
        assert!(e.contains("limits.login_timeout_secs"), "{e}");
        let e = parse("[registration]\nper_address_per_hour = 0\n").unwrap_err();
        assert!(e.contains("registration.per_address_per_hour"), "{e}");
        let e = parse("[storage]\nmailbox_max_items = 0\n").unwrap_err();
        assert!(e.contains("storage.mailbox_max_items"), "{e}");
        let c = parse("[limits]\naddress_exempt = []\n").unwrap();
        assert!(c.address_budgets().exempt.is_empty());
        let c = parse("[registration]\ninvite_ttl_hours = 2\n").unwrap();
        assert_eq!(c.store_config().invite_ttl, Duration::from_secs(7200));
    }

    #[test]
    fn worker_threads_leave_a_core_to_the_committer_unless_set() {
        let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
        let auto = parse("").unwrap();
        assert_eq!(auto.network_threads(), cores.saturating_sub(1).max(1));
        assert!(auto.network_threads() >= 1);
        let set = parse("worker_threads = 3\n").unwrap();
        assert_eq!(set.network_threads(), 3);
    }

    #[test]
    fn storage_engine_and_its_tuning() {
        let c = parse("").unwrap();
        assert_eq!(c.storage.engine, Engine::Sled);
        let c = parse("[storage]\nengine = \"fjall\"\nmemtable_mb = 16\n").unwrap();
        assert_eq!(
            (c.storage.engine, c.storage.memtable_mb),
            (Engine::Fjall, 16)
        );
        let e = parse("[storage]\nengine = \"rocksdb\"\n").unwrap_err();
        assert!(e.contains("engine") && e.contains("rocksdb"), "{e}");
        assert!(e.contains("\"sled\" or \"fjall\""), "{e}");
        let e = parse("[storage]\nmemtable_mb = 0\n").unwrap_err();
        assert!(e.contains("storage.memtable_mb"), "{e}");
        let e = parse("[storage]\nmemtable_mb = 4096\n").unwrap_err();
        assert!(e.contains("storage.memtable_mb"), "{e}");
    }

    #[test]
    fn admin_socket_defaults_to_the_data_dir_and_can_be_disabled() {
        let c = parse("data_dir = \"/var/lib/missive\"\n").unwrap();
        assert_eq!(
            c.admin_socket_path(),
            Some(PathBuf::from("/var/lib/missive/admin.sock"))
        );
        let c = parse("admin_socket = \"/run/missive/admin.sock\"\n").unwrap();
        assert_eq!(
            c.admin_socket_path(),
            Some(PathBuf::from("/run/missive/admin.sock"))
        );
        let c = parse("admin_socket = \"\"\n").unwrap();
        assert_eq!(c.admin_socket_path(), None);
        let long = format!("admin_socket = \"/{}\"\n", "x".repeat(200));
        let e = parse(&long).unwrap_err();
        assert!(
            e.contains("admin_socket") && e.contains("at most 107"),
            "{e}"
        );
        // A long data dir makes a default path too long for a socket: the socket is off,
        // and the edge still starts.
        let c = parse(&format!("data_dir = \"/{}\"\n", "d".repeat(120))).unwrap();
        assert!(c.admin_socket_too_long());
        assert_eq!(c.admin_socket_path(), None);
    }

    #[test]
    fn gateway_urls() {
        let g = GatewayUrl::parse("http://127.0.0.1:9/push").unwrap();
        assert_eq!(g.authority, "127.0.0.1:9");
        assert_eq!(g.path, "/push");
        assert_eq!(GatewayUrl::parse("http://h").unwrap().authority, "h:80");
        assert!(GatewayUrl::parse("https://h").is_err());
    }
}
