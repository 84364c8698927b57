//! Wiring: open storage, bind listeners, announce readiness, run until SIGTERM/SIGINT, drain.

use crate::config::{Config, GatewayUrl, RegistrationMode};
use crate::group_streams::LiveItem;
use crate::listener::{run_quic, run_tcp, ListenerCtx};
use crate::notifier::Notifier;
use crate::registry::Registry;
use crate::session::SessionConfig;
use crate::shared::{now_ms, Shared};
use crate::tls;
use missive_storage::{Appended, Store, StoreConfig};
use std::net::{SocketAddr, UdpSocket};
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::{mpsc, watch, Semaphore};

/// UDP socket buffer size requested for QUIC (see DESIGN.md "Performance notes": at the
/// 208 KB default the edge dropped packets under load). The kernel caps it at
/// `net.core.rmem_max`/`wmem_max`; `systemd/` ships a sysctl drop-in raising those.
const UDP_BUFFER: usize = 4 * 1024 * 1024;

/// Bytes a client may send on one stream ahead of the edge reading them: room for a few
/// 1 MiB media chunks while the edge writes the last one. It costs a chat connection nothing:
/// its connection window (512 KiB) bounds what all its streams together may send ahead.
const STREAM_WINDOW: u32 = 4 * 1024 * 1024;

/// Media transfer streams one QUIC connection may have open at once (a client uploads a
/// file on a few in parallel).
const TRANSFER_STREAMS: u32 = 8;

/// Least time between two QUIC stateless resets (10,000 per second).
const RESET_INTERVAL: Duration = Duration::from_micros(100);

/// Ack-eliciting packets a client may receive before it must send an ACK (QUIC ACK frequency
/// extension; the ACK delay still bounds how long it waits).
/// Below the 8 full-size packets of a new connection's congestion window (12,000 bytes), so
/// that window gets an ACK at once; at 10 it waited out the 25 ms ACK delay, and the first
/// byte of a download with it (bench/RESULTS.md). Chat sends fewer packets than this within
/// an ACK delay, so its ACKs still ride on its next frame.
const ACK_ELICITING_THRESHOLD: u32 = 4;

/// The largest UDP payload the edge sends, where the client's route carries it.
const SEND_PAYLOAD: u16 = missive_proto::EDGE_UDP_PAYLOAD;
// As many packets as a client waits for before it acknowledges fit a new connection's
// first congestion window (see EDGE_UDP_PAYLOAD).
const _: () = assert!(
    SEND_PAYLOAD as u32 * (ACK_ELICITING_THRESHOLD + 1) <= missive_proto::QUIC_INITIAL_WINDOW
);

/// The ACK frequency the edge asks of its clients.
fn ack_frequency() -> quinn::AckFrequencyConfig {
    let mut config = quinn::AckFrequencyConfig::default();
    config.ack_eliciting_threshold(ACK_ELICITING_THRESHOLD.into());
    config
}

/// A failure that stops the edge from starting.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    /// The configuration is invalid.
    #[error(transparent)]
    Config(#[from] crate::config::ConfigError),
    /// TLS material could not be loaded or made.
    #[error(transparent)]
    Tls(#[from] tls::TlsError),
    /// Storage could not be opened.
    #[error(
        "cannot open storage in {dir}: {source} (is another missive-edge using this data dir?)"
    )]
    Storage {
        /// The data directory.
        dir: String,
        /// Why.
        source: missive_storage::StorageError,
        /// A likely cause, when the error does not say it itself.
        hint: &'static str,
    },
    /// The QUIC stateless-reset key could not be read or made.
    #[error(transparent)]
    ResetKey(#[from] crate::reset_key::ResetKeyError),
    /// The admin socket could not be opened.
    #[error(transparent)]
    AdminSocket(#[from] crate::admin::socket::AdminSocketError),
    /// The media directory could not be made or opened.
    #[error("cannot open the media directory {dir}: {source}")]
    Media {
        /// The directory.
        dir: String,
        /// Why.
        source: std::io::Error,
    },
    /// The STUN/TURN relay could not start (its secret, its configuration, its socket).
    #[error(transparent)]
    Turn(#[from] crate::turn::TurnError),
    /// A listener could not be bound.
    #[error("cannot listen on {what} {addr}: {source}")]
    Bind {
        /// `quic` or `tcp`.
        what: &'static str,
        /// The address.
        addr: SocketAddr,
        /// Why.
        source: std::io::Error,
    },
}

/// Addresses actually bound (ports resolved when 0 was asked for).
#[derive(Debug, Clone, Copy)]
pub struct Bound {
    /// QUIC (UDP).
    pub quic: SocketAddr,
    /// TCP+TLS, when enabled.
    pub tcp: Option<SocketAddr>,
}

/// Opens the store with a commit listener that pushes to live sessions or wakes offline
/// devices.
pub fn open_store(
    config: &Config,
    registry: Arc<Registry>,
    notifier: Notifier,
) -> Result<Store, StartError> {
    let store_config: StoreConfig = config.store_config();
    let listener: missive_storage::CommitListener = Arc::new(move |appended| match appended {
        Appended::Mailbox { mailbox, seq, item } => {
            let is_message = matches!(item.payload, missive_proto::Payload::Envelope(_));
            if !registry.push(mailbox, *seq, item) && is_message {
                notifier.wake(mailbox);
            }
        }
        Appended::Group {
            group,
            seq,
            item,
            readers,
        } => match LiveItem::new(*group, *seq, item) {
            Ok(live) => registry.push_group(*group, *seq, &Arc::new(live), readers),
            // Readers then read it from the log on their next login.
            Err(e) => tracing::error!(error = %e, group = group.0, "cannot encode a group item"),
        },
    });
    Store::open(&config.data_dir.join("db"), store_config, Some(listener)).map_err(|source| {
        let hint = match source {
            missive_storage::StorageError::Db(_) => {
                " (is another missive-edge using this data dir?)"
            }
            _ => "",
        };
        StartError::Storage {
            dir: config.data_dir.display().to_string(),
            source,
            hint,
        }
    })
}

fn udp_socket(addr: SocketAddr) -> std::io::Result<UdpSocket> {
    use socket2::{Domain, Protocol, Socket, Type};
    let socket = Socket::new(Domain::for_address(addr), Type::DGRAM, Some(Protocol::UDP))?;
    if addr.is_ipv6() {
        let _ = socket.set_only_v6(false);
    }
    // Best effort: the kernel clamps to its maximum; we log what we got.
    let _ = socket.set_recv_buffer_size(UDP_BUFFER);
    let _ = socket.set_send_buffer_size(UDP_BUFFER);
    socket.bind(&addr.into())?;
    let got = socket.recv_buffer_size().unwrap_or(0);
    if got < UDP_BUFFER {
        tracing::warn!(
            requested = UDP_BUFFER,
            got,
            "UDP receive buffer capped by net.core.rmem_max; install systemd/99-missive.conf"
        );
    }
    Ok(socket.into())
}

/// Binds the UDP socket and the TCP listener. When the QUIC port is 0 and TCP shares the
/// address, the TCP listener takes the same port number as the UDP socket got.
fn bind(config: &Config) -> Result<(UdpSocket, Option<std::net::TcpListener>, Bound), StartError> {
    let tcp_addr = config.tcp_listen_addr().ok().flatten();
    // Only when TCP follows `listen` implicitly does it take the UDP socket's port number.
    let same_port = config.tcp_listen.is_none() && config.listen.port() == 0;
    let mut attempts = 0;
    loop {
        attempts += 1;
        let udp = udp_socket(config.listen).map_err(|source| StartError::Bind {
            what: "quic",
            addr: config.listen,
            source,
        })?;
        let quic = udp.local_addr().map_err(|source| StartError::Bind {
            what: "quic",
            addr: config.listen,
            source,
        })?;
        let Some(mut tcp_at) = tcp_addr else {
            return Ok((udp, None, Bound { quic, tcp: None }));
        };
        if same_port {
            tcp_at.set_port(quic.port());
        }
        match std::net::TcpListener::bind(tcp_at) {
            Ok(l) => {
                let tcp = l.local_addr().ok();
                return Ok((udp, Some(l), Bound { quic, tcp }));
            }
            Err(_) if same_port && attempts < 20 => continue,
            Err(source) => {
                return Err(StartError::Bind {
                    what: "tcp",
                    addr: tcp_at,
                    source,
                })
            }
        }
    }
}

/// Re-reads the configuration (file + flags) on SIGHUP.
pub type Reload = Box<dyn Fn() -> Result<Config, String> + Send + Sync>;

/// The limits a new session gets under `config`.
pub(crate) fn session_config(config: &Config) -> SessionConfig {
    use crate::budget::Rate;
    let l = &config.limits;
    let send_bytes_burst = l
        .send_bytes_per_sec
        .saturating_mul(2)
        .max(u64::from(l.max_frame_bytes));
    SessionConfig {
        max_frame: l.max_frame_bytes,
        delivery_window: l.delivery_window,
        max_in_flight_sends: l.max_in_flight_sends,
        send_rate_per_sec: l.send_rate_per_sec,
        send_burst: l.send_burst,
        idle_timeout: config.idle_timeout(),
        require_invite: config.registration.mode == RegistrationMode::Invite,
        login_timeout: Duration::from_secs(l.login_timeout_secs),
        send_bytes: Rate {
            rate: l.send_bytes_per_sec as f64,
            per: Duration::from_secs(1),
            burst: send_bytes_burst as f64,
        },
        frames: Rate::per_second(l.frame_rate_per_sec, l.frame_rate_per_sec.saturating_mul(2)),
        presence_changes: Rate::per_minute(l.presence_changes_per_min, 10),
        // A whole contact list at once, and again after a reconnect, fits the burst: the
        // count limit, not the rate, is what a flood of new names meets first.
        subscribes: Rate::per_second(
            l.subscribes_per_sec,
            u32::try_from(l.max_subscriptions.saturating_mul(2)).unwrap_or(u32::MAX),
        ),
        typing: Rate::per_second(l.typing_per_sec, l.typing_per_sec.saturating_mul(3)),
        pings: Rate::per_second(l.pings_per_sec, l.pings_per_sec.saturating_mul(4)),
        max_subscriptions: l.max_subscriptions,
        delivery_window_bytes: l.delivery_window_bytes,
        keys: crate::key_requests::KeyPolicy {
            uploads: Rate::per_minute(l.key_uploads_per_min, 10),
            max_one_time_keys: l.max_one_time_keys,
            low_watermark: l.one_time_keys_low,
        },
        max_devices: config.registration.max_linked_devices + 1,
        link_codes: Rate {
            rate: f64::from(config.registration.link_codes_per_hour),
            per: Duration::from_secs(3600),
            burst: 3.0,
        },
        group_requests: Rate::per_minute(config.groups.requests_per_min, 20),
        max_group_members: config.groups.max_members,
        max_story_audience: config.stories.max_audience,
        turn_credentials: Rate::per_minute(config.relay.credential_requests_per_min, 10),
        call_invites: Rate::per_minute(config.calls.invites_per_min, 5),
        call_actions: Rate::per_second(config.calls.actions_per_sec, 50),
    }
}

/// The media service over `<data_dir>/media`, signing URLs that start with the configured
/// public URL, or the HTTPS listener's own address (`https://<certificate name>:<port>`).
fn open_media(
    config: &Config,
    store: Store,
    url_key: [u8; 32],
    https: Option<SocketAddr>,
) -> Result<crate::media::MediaService, StartError> {
    let root = config.data_dir.join("media");
    let files = missive_storage::BlobFiles::open(&root).map_err(|e| StartError::Media {
        dir: root.display().to_string(),
        source: e,
    })?;
    let public_url = match (&config.media.public_url, https) {
        (Some(u), _) => Some(u.clone()),
        (None, Some(addr)) => {
            let host = config
                .tls
                .dev_cert_names
                .first()
                .cloned()
                .unwrap_or_else(|| "localhost".into());
            Some(format!("https://{host}:{}", addr.port()))
        }
        (None, None) => None,
    };
    Ok(crate::media::MediaService::new(
        store,
        files,
        missive_storage::MediaLimits {
            max_size: config.media.max_file_bytes,
            quota: config.media.quota_bytes,
            ttl_ms: config.media.ttl_days * 86_400_000,
        },
        crate::media::url::UrlSigner::new(url_key),
        public_url,
        Duration::from_secs(config.media.url_ttl_secs),
        Duration::from_secs(config.media.stall_secs),
    ))
}

/// Runs the edge until SIGTERM or SIGINT, then drains and returns. SIGHUP reloads the TLS
/// certificate and the limits for new sessions via `reload`.
pub async fn run(config: Config, reload: Reload) -> Result<(), StartError> {
    config.validate()?;
    // Registered before anything starts so an early SIGTERM is not lost.
    let mut signals = Signals::register();
    let material = tls::load_or_generate(&config)?;
    let cert_resolver = tls::ReloadableCert::new(&material)?;
    let rustls_config = tls::server_config(cert_resolver.clone())?;

    let registry = Arc::new(Registry::default());
    let notifier = match config.push.gateway_url.as_deref().filter(|u| !u.is_empty()) {
        Some(url) => {
            let gw =
                GatewayUrl::parse(url).map_err(|message| crate::config::ConfigError::Invalid {
                    key: "push.gateway_url",
                    message,
                })?;
            Notifier::start(
                gw,
                config.push.max_attempts,
                Duration::from_millis(config.push.timeout_ms),
            )
        }
        None => Notifier::disabled(),
    };
    let store = open_store(&config, registry.clone(), notifier.clone())?;

    let (udp, tcp, bound) = bind(&config)?;
    // After the store: its lock already proves no other edge runs on this data dir.
    if config.admin_socket_too_long() {
        tracing::warn!(
            data_dir = %config.data_dir.display(),
            "admin socket off: <data_dir>/admin.sock is too long for a Unix socket; set admin_socket to a shorter path"
        );
    }
    let admin_socket = config
        .admin_socket_path()
        .map(|p| crate::admin::socket::AdminSocket::bind(&p))
        .transpose()?;
    let admin_text = admin_socket
        .as_ref()
        .map(|s| s.path().display().to_string())
        .unwrap_or_else(|| "off".into());
    let quic_crypto = quinn::crypto::rustls::QuicServerConfig::try_from((*rustls_config).clone())
        .map_err(|e| tls::TlsError::Config(e.to_string()))?;
    let mut quic_config = quinn::ServerConfig::with_crypto(Arc::new(quic_crypto));
    let mut transport = quinn::TransportConfig::default();
    // The control stream, and up to `TRANSFER_STREAMS` media transfers at once (each on its
    // own stream, so a large upload never blocks chat frames).
    transport.max_concurrent_bidi_streams((1 + TRANSFER_STREAMS).into());
    transport.max_concurrent_uni_streams(0u8.into());
    // No QUIC datagrams yet (typing indicators ride the stream); without this quinn reserves a
    // receive buffer budget per connection.
    transport.datagram_receive_buffer_size(None);
    // Bounded per-connection windows: a chat connection never needs quinn's multi-megabyte
    // defaults, and they bound what one slow peer can make us buffer.
    transport.stream_receive_window(STREAM_WINDOW.into());
    transport.receive_window((512u32 * 1024).into());
    transport.send_window(512 * 1024);
    // Ask clients to acknowledge every 5th ack-eliciting packet (or after their 25 ms ACK
    // delay) instead of every 2nd: their ACKs then ride on their next frame. QUIC ACK
    // frequency extension; paced at 4,000 msgs/s over 100 pairs it cut UDP datagrams from
    // 6.4 to 5.4 per message (no change over 200 pairs, whose frames are 50 ms apart: more
    // than the 25 ms ACK delay).
    transport.ack_frequency_config(Some(ack_frequency()));
    // Packets towards a client grow up to SEND_PAYLOAD where its route carries them (it
    // says how far in `max_udp_payload_size`: a phone says 1,452).
    let mut mtu = quinn::MtuDiscoveryConfig::default();
    mtu.upper_bound(SEND_PAYLOAD);
    transport.mtu_discovery_config(Some(mtu));
    let idle = config.idle_timeout() + Duration::from_secs(15);
    transport.max_idle_timeout(Some(
        idle.try_into()
            .map_err(|_| tls::TlsError::Config("idle timeout too large".into()))?,
    ));
    quic_config.transport_config(Arc::new(transport));
    // A reset key that survives restarts: clients of a crashed or restarted edge learn at
    // their next packet that their connection is gone (see `reset_key`).
    let keys = crate::reset_key::load_or_create(&config.data_dir)?;
    let media_url_key = keys.media_url;
    let mut endpoint_config = quinn::EndpointConfig::new(Arc::new(keys.reset));
    endpoint_config.cid_generator(move || {
        Box::new(quinn_proto::HashedConnectionIdGenerator::from_key(keys.cid))
    });
    // quinn sends at most one reset per 20 ms by default: after a restart with thousands of
    // clients, most of their packets would go unanswered and each client would wait out a
    // growing retransmission backoff. A reset is always smaller than the packet it answers,
    // so a higher rate amplifies nothing.
    endpoint_config.min_reset_interval(RESET_INTERVAL);
    // Take packets up to MAX_UDP_PAYLOAD: a client whose route carries them (loopback, a
    // jumbo-frame LAN) uploads in a fraction of the packets; a phone's route stops it at
    // 1,452.
    endpoint_config
        .max_udp_payload_size(missive_proto::MAX_UDP_PAYLOAD)
        .map_err(|e| tls::TlsError::Config(format!("QUIC payload size: {e}")))?;
    let endpoint = quinn::Endpoint::new(
        endpoint_config,
        Some(quic_config),
        udp,
        Arc::new(quinn::TokioRuntime),
    )
    .map_err(|source| StartError::Bind {
        what: "quic",
        addr: bound.quic,
        source,
    })?;
    let metrics_listener = match config.metrics_listen_addr().ok().flatten() {
        Some(addr) => Some(
            tokio::net::TcpListener::bind(addr)
                .await
                .map_err(|source| StartError::Bind {
                    what: "metrics",
                    addr,
                    source,
                })?,
        ),
        None => None,
    };

    let media_listener = match config.media.listen_addr().ok().flatten() {
        Some(addr) => Some(
            tokio::net::TcpListener::bind(addr)
                .await
                .map_err(|source| StartError::Bind {
                    what: "media",
                    addr,
                    source,
                })?,
        ),
        None => None,
    };
    // Beside the other listeners: a relay that cannot bind stops the start like they do.
    let turn = crate::turn::TurnService::start(&config).await?;
    let relay_text = turn
        .as_ref()
        .map(|t| t.local_addr().to_string())
        .unwrap_or_else(|| "off".into());
    let media = Arc::new(open_media(
        &config,
        store.clone(),
        media_url_key,
        media_listener.as_ref().and_then(|l| l.local_addr().ok()),
    )?);

    let shared = Arc::new(Shared {
        store: store.clone(),
        registry: registry.clone(),
        notifier: notifier.clone(),
        session: std::sync::RwLock::new(session_config(&config)),
        metrics: crate::metrics::Metrics::default(),
        addresses: Arc::new(crate::address_limits::AddressLimits::new(
            config.address_budgets(),
        )),
        key_claims: crate::claim_budget::ClaimBudgets::new(crate::budget::Rate::per_minute(
            config.limits.key_claims_per_min,
            config.limits.key_claim_burst,
        )),
        link_code_ttl: Duration::from_secs(config.registration.link_code_ttl_secs),
        story_ttl: Duration::from_secs(config.stories.ttl_secs),
        media: Some(media.clone()),
        transfers_per_min: config.media.transfers_per_min,
        turn,
        calls: Some(crate::calls::CallService::start(
            call_policy(&config),
            store.clone(),
            registry.clone(),
            notifier.clone(),
        )),
    });
    let (shutdown_tx, shutdown_rx) = watch::channel(false);
    let (done_guard, mut all_done) = mpsc::channel::<()>(1);
    let ctx = ListenerCtx {
        shared: shared.clone(),
        limit: Arc::new(Semaphore::new(config.limits.max_connections)),
        shutdown: shutdown_rx.clone(),
        done_guard,
        handshake_timeout: Duration::from_secs(config.limits.handshake_timeout_secs),
        refusals: Arc::new(Semaphore::new(crate::listener::REFUSAL_HANDSHAKES)),
        handshaking: Arc::default(),
        retry_above: config.limits.quic_retry_above_handshakes,
    };
    let quic_task = tokio::spawn(run_quic(endpoint.clone(), ctx.clone()));
    let tcp_task = match tcp {
        Some(l) => {
            l.set_nonblocking(true).map_err(|source| StartError::Bind {
                what: "tcp",
                addr: bound.tcp.unwrap_or(config.listen),
                source,
            })?;
            let listener =
                tokio::net::TcpListener::from_std(l).map_err(|source| StartError::Bind {
                    what: "tcp",
                    addr: bound.tcp.unwrap_or(config.listen),
                    source,
                })?;
            let acceptor = tokio_rustls::TlsAcceptor::from(rustls_config.clone());
            Some(tokio::spawn(run_tcp(listener, acceptor, ctx.clone())))
        }
        None => None,
    };
    let ops = Arc::new(crate::ops::EdgeOps::new(shared.clone()));
    let metrics_text = match metrics_listener {
        Some(l) => {
            let addr = l.local_addr().map(|a| a.to_string()).unwrap_or_default();
            let router =
                crate::http::ops::routes(ops.clone()).fallback(crate::http::ops::not_found);
            tokio::spawn(crate::http::serve(l, router, None, shutdown_rx.clone()));
            addr
        }
        None => "off".into(),
    };
    let media_text = match media_listener {
        Some(l) => {
            let addr = l.local_addr().map(|a| a.to_string()).unwrap_or_default();
            let router =
                crate::http::media::routes(media.clone()).fallback(crate::http::ops::not_found);
            let tls =
                tokio_rustls::TlsAcceptor::from(tls::http_server_config(cert_resolver.clone())?);
            tokio::spawn(crate::http::serve(
                l,
                router,
                Some(tls),
                shutdown_rx.clone(),
            ));
            addr
        }
        None => "off".into(),
    };
    tokio::spawn(crate::media::janitor::run(
        media.clone(),
        Duration::from_secs(config.media.collect_interval_secs),
        shutdown_rx.clone(),
    ));
    ops.start_depth_scan();
    let admin_task = admin_socket.map(|socket| {
        let ctx = Arc::new(crate::admin::socket::AdminCtx {
            shared: shared.clone(),
            data_dir: config.data_dir.clone(),
        });
        tokio::spawn(socket.serve(ctx, shutdown_rx.clone()))
    });
    let storage_watch = tokio::spawn(watch_storage(shared.clone()));
    let expirer = tokio::spawn(expire_loop(store.clone()));
    let sweeper = tokio::spawn(sweep_loop(
        store.clone(),
        Duration::from_secs(config.storage.sweep_interval_secs),
    ));
    drop(ctx);

    let tcp_text = bound
        .tcp
        .map(|a| a.to_string())
        .unwrap_or_else(|| "off".into());
    ops.set_ready(true);
    tracing::info!(quic = %bound.quic, tcp = %tcp_text, metrics = %metrics_text, relay = %relay_text, admin = %admin_text, cert = %material.trust_path.display(), "missive-edge ready");
    // A stable, greppable line on stdout for scripts and tests.
    println!(
        "missive-edge ready quic={} tcp={} metrics={} media={} relay={} admin={} cert={}",
        bound.quic,
        tcp_text,
        metrics_text,
        media_text,
        relay_text,
        admin_text,
        material.trust_path.display()
    );
    if material.generated {
        println!(
            "clients must trust this development certificate: {}",
            material.trust_path.display()
        );
    }
    crate::sd_notify::notify(&format!(
        "READY=1\nSTATUS=serving quic={} tcp={tcp_text}\nMAINPID={}",
        bound.quic,
        std::process::id()
    ));
    let watchdog = crate::sd_notify::watchdog_interval().map(|every| {
        let ops = ops.clone();
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(every);
            loop {
                tick.tick().await;
                // Only a live committer earns a ping: a wedged store should get us restarted.
                if crate::http::ops::OpsState::healthy(&*ops) {
                    crate::sd_notify::notify("WATCHDOG=1");
                }
            }
        })
    });

    let mut config = config;
    loop {
        match signals.next().await {
            Signal::Stop => break,
            Signal::Reload => match reload() {
                Ok(new) => {
                    apply_reload(&config, &new, &cert_resolver, &shared);
                    config = new;
                }
                Err(e) => {
                    tracing::error!(error = %e, "reload refused; keeping the running configuration")
                }
            },
        }
    }
    tracing::info!("shutting down: refusing new connections, draining");
    crate::sd_notify::notify("STOPPING=1");
    ops.set_ready(false);
    let _ = shutdown_tx.send(true);
    let _ = quic_task.await;
    if let Some(t) = tcp_task {
        let _ = t.await;
    }
    // Calls in progress lose their relay here, as chat connections get their Goaway: the
    // clients reconnect to another edge (or this one restarted) and allocate again.
    if let Some(turn) = &shared.turn {
        turn.shutdown().await;
    }
    // Calls end with `ShuttingDown` while their sessions can still tell the clients.
    if let Some(calls) = &shared.calls {
        calls.shut_down().await;
    }
    // Stops taking admin requests and removes the socket file; a request already running
    // (e.g. a backup) finishes before the store shuts down below.
    if let Some(t) = admin_task {
        let _ = t.await;
    }
    sweeper.abort();
    expirer.abort();
    storage_watch.abort();
    // Every connection task holds a guard clone; recv() returns None once all are gone.
    let drain = Duration::from_secs(config.drain_timeout_secs);
    if tokio::time::timeout(drain, all_done.recv()).await.is_err() {
        tracing::warn!("drain timeout: closing remaining connections");
    }
    endpoint.close(0u32.into(), b"shutdown");
    store.shutdown().await;
    let _ = tokio::time::timeout(Duration::from_secs(2), endpoint.wait_idle()).await;
    if let Some(w) = watchdog {
        w.abort();
    }
    tracing::info!("stopped");
    Ok(())
}

/// The switchboard's timers and limits from the config.
fn call_policy(config: &Config) -> crate::calls::CallPolicy {
    crate::calls::CallPolicy {
        ring_timeout: Duration::from_secs(config.calls.ring_timeout_secs),
        reconnect_grace: Duration::from_secs(config.calls.reconnect_grace_secs),
        max_calls: config.calls.max_calls,
    }
}

/// Applies what can change without a restart; says what cannot.
fn apply_reload(old: &Config, new: &Config, cert: &tls::ReloadableCert, shared: &Shared) {
    match tls::load_or_generate(new).and_then(|m| cert.replace(&m)) {
        Ok(()) => tracing::info!("TLS certificate reloaded"),
        Err(e) => tracing::error!(error = %e, "TLS certificate not reloaded; keeping the old one"),
    }
    shared.set_session_config(session_config(new));
    shared.addresses.set_budgets(new.address_budgets());
    if let Some(calls) = &shared.calls {
        calls.set_policy(call_policy(new));
    }
    if let Some(turn) = &shared.turn {
        match turn.reload(new) {
            Ok(()) => tracing::info!("TURN secret reloaded"),
            Err(e) => tracing::error!(error = %e, "TURN secret not reloaded; keeping the old one"),
        }
    }
    if relay_needs_restart(&old.relay, &new.relay) {
        tracing::warn!(
            "relay settings other than secret_file, credential_ttl_secs and credential_requests_per_min need a restart"
        );
    }
    let restart_needed = old.listen != new.listen
        || old.tcp_listen != new.tcp_listen
        || old.metrics_listen != new.metrics_listen
        || old.admin_socket_path() != new.admin_socket_path()
        || old.data_dir != new.data_dir
        || old.limits.max_connections != new.limits.max_connections
        || old.push.gateway_url != new.push.gateway_url;
    if restart_needed {
        tracing::warn!(
            "listen addresses, admin_socket, data_dir, max_connections and push changes need a restart"
        );
    }
    tracing::info!("configuration reloaded: limits apply to new connections");
}

/// Whether a `[relay]` change needs a restart: everything but the secret file's content,
/// the credential lifetime and the request budget belongs to the running relay.
fn relay_needs_restart(old: &crate::config::RelayConfig, new: &crate::config::RelayConfig) -> bool {
    let running = |c: &crate::config::RelayConfig| crate::config::RelayConfig {
        credential_ttl_secs: 0,
        credential_requests_per_min: 0,
        ..c.clone()
    };
    running(old) != running(new)
}

enum Signal {
    Stop,
    Reload,
}

/// The process signals the edge reacts to, registered once at start.
struct Signals {
    #[cfg(unix)]
    term: Option<tokio::signal::unix::Signal>,
    #[cfg(unix)]
    hup: Option<tokio::signal::unix::Signal>,
}

impl Signals {
    fn register() -> Self {
        #[cfg(unix)]
        {
            use tokio::signal::unix::{signal, SignalKind};
            Self {
                term: signal(SignalKind::terminate()).ok(),
                hup: signal(SignalKind::hangup()).ok(),
            }
        }
        #[cfg(not(unix))]
        Self {}
    }

    async fn next(&mut self) -> Signal {
        #[cfg(unix)]
        {
            let term = async {
                match self.term.as_mut() {
                    Some(t) => {
                        t.recv().await;
                    }
                    None => std::future::pending::<()>().await,
                }
            };
            let hup = async {
                match self.hup.as_mut() {
                    Some(h) => {
                        h.recv().await;
                    }
                    None => std::future::pending::<()>().await,
                }
            };
            tokio::select! {
                _ = term => Signal::Stop,
                _ = tokio::signal::ctrl_c() => Signal::Stop,
                _ = hup => Signal::Reload,
            }
        }
        #[cfg(not(unix))]
        {
            let _ = tokio::signal::ctrl_c().await;
            Signal::Stop
        }
    }
}

/// Follows the store's health: when it comes back from a failure, live sessions read their
/// mailboxes again (the reopened engine may hold items from its journal that nobody was told
/// about). The store itself logs each change.
async fn watch_storage(shared: Arc<Shared>) {
    let mut tick = tokio::time::interval(Duration::from_millis(250));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut seen_reopens = 0;
    loop {
        tick.tick().await;
        let stats = shared.store.stats();
        let reopens = stats.reopens.load(std::sync::atomic::Ordering::Relaxed);
        if reopens != seen_reopens {
            seen_reopens = reopens;
            shared.registry.reread_all();
        }
    }
}

/// Expires old envelopes and dedup keys, in bounded steps, every `interval`.
/// How often disappearing messages past their timer are looked for (the look reads only the
/// due entries of a time-ordered index, so it is cheap).
const EXPIRE_EVERY: Duration = Duration::from_secs(2);

/// Drops the undelivered copies of disappearing messages whose timer ran out.
async fn expire_loop(store: Store) {
    let mut tick = tokio::time::interval(EXPIRE_EVERY);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        loop {
            match store.expire(now_ms()).await {
                Ok(out) => {
                    if out.items > 0 {
                        tracing::debug!(items = out.items, "disappearing messages dropped");
                    }
                    if !out.more {
                        break;
                    }
                }
                Err(e) => {
                    tracing::debug!(error = %e, "disappearing-message expiry failed");
                    break;
                }
            }
        }
    }
}

async fn sweep_loop(store: Store, interval: Duration) {
    let mut tick = tokio::time::interval(interval);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        loop {
            match store.sweep(now_ms()).await {
                Ok(out) => {
                    if out.items > 0 || out.dedup_keys > 0 {
                        tracing::info!(items = out.items, dedup_keys = out.dedup_keys, "expired");
                    }
                    if !out.more {
                        break;
                    }
                }
                Err(e) => {
                    tracing::warn!(error = %e, "expiry sweep failed");
                    break;
                }
            }
        }
    }
}
