//! Getting a TLS 1.3 byte stream to the edge: QUIC first, TCP+TLS when UDP gets no answer.
//!
//! Both transports carry the same frames. On QUIC they travel on the one bidirectional
//! stream the client opens (the server sees the stream only once data is written to it, so
//! the caller must send `Hello` right after [`Transport::connect`]). Each transport also
//! yields the TLS exporter that login signatures are bound to.

use crate::ClientError;
use missive_proto::{ALPN, EXPORTER_LABEL, EXPORTER_LEN};
use std::net::{Ipv4Addr, Ipv6Addr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;
use tokio::io::{AsyncRead, AsyncWrite};

/// How long a TCP connect plus TLS handshake may take before giving up.
const TCP_TIMEOUT: Duration = Duration::from_secs(10);
/// QUIC keep-alive: keeps NAT bindings open; does not count as client activity for the edge.
const QUIC_KEEP_ALIVE: Duration = Duration::from_secs(10);
/// QUIC idle timeout: above the 15 s application ping so a live connection never hits it.
const QUIC_IDLE_TIMEOUT: Duration = Duration::from_secs(40);
/// Ack-eliciting packets the server may receive before it must send an ACK (QUIC ACK
/// frequency extension; its ACK delay still bounds how long it waits).
/// Below the 8 full-size packets of a new connection's congestion window (12,000 bytes), so
/// that window gets an ACK at once; at 10 it waited out the 25 ms ACK delay, and the first
/// byte of a download with it (bench/RESULTS.md). Chat sends fewer packets than this within
/// an ACK delay, so its ACKs still ride on its next frame.
const ACK_ELICITING_THRESHOLD: u32 = 4;

/// How long closing a QUIC connection waits for the close to reach the peer.
const QUIC_CLOSE_WAIT: Duration = Duration::from_millis(500);

/// Which transport a connection uses.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum TransportKind {
    /// QUIC over UDP (preferred).
    Quic,
    /// TCP + TLS 1.3 fallback.
    Tcp,
}

impl TransportKind {
    /// `"quic"` or `"tcp"`.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Quic => "quic",
            Self::Tcp => "tcp",
        }
    }
}

impl std::fmt::Display for TransportKind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Receive buffer asked for the QUIC socket. A download arrives in bursts faster than a busy
/// client task may read them; with the system default (208 KiB on Linux) the kernel dropped
/// datagrams and QUIC's congestion control slowed the download. The kernel caps it at its
/// `net.core.rmem_max`.
const UDP_RECV_BUFFER: usize = 4 << 20;

/// A UDP socket bound on `local` for QUIC, dual-stack when IPv6, with a large receive buffer
/// (best effort).
fn udp_socket(local: SocketAddr) -> std::io::Result<std::net::UdpSocket> {
    use socket2::{Domain, Protocol, Socket, Type};
    let socket = Socket::new(Domain::for_address(local), Type::DGRAM, Some(Protocol::UDP))?;
    if local.is_ipv6() {
        let _ = socket.set_only_v6(false);
    }
    let _ = socket.set_recv_buffer_size(UDP_RECV_BUFFER);
    socket.bind(&local.into())?;
    Ok(socket.into())
}

/// A QUIC client endpoint (one UDP socket) that many connections can share: load
/// generators and apps with many accounts need one socket, not one per connection. Cheap to
/// clone; the socket closes when the last clone and the last connection on it are gone.
#[derive(Debug, Clone)]
pub struct QuicEndpoint {
    endpoint: quinn::Endpoint,
    /// The largest UDP payload its connections probe for (`path_mtu`).
    payload_ceiling: u16,
}

impl QuicEndpoint {
    /// Binds a new endpoint on an ephemeral port of the unspecified address of `server`'s
    /// IP version, for connections to `server`: their packets grow to what the route to it
    /// carries (larger than the internet's over loopback or a jumbo-frame LAN).
    pub fn bind_for(server: SocketAddr) -> Result<Self, ClientError> {
        let bind: SocketAddr = if server.is_ipv6() {
            (Ipv6Addr::UNSPECIFIED, 0).into()
        } else {
            (Ipv4Addr::UNSPECIFIED, 0).into()
        };
        Self::bind_with_ceiling(bind, crate::path_mtu::payload_ceiling(server))
    }

    /// Binds a new endpoint on `local` (an address of this host, port 0 for any): to leave
    /// from a chosen interface or address. Its packets stay within what an internet path
    /// carries.
    pub fn bind(local: SocketAddr) -> Result<Self, ClientError> {
        Self::bind_with_ceiling(local, crate::path_mtu::INTERNET_PAYLOAD)
    }

    fn bind_with_ceiling(local: SocketAddr, payload_ceiling: u16) -> Result<Self, ClientError> {
        let socket = udp_socket(local)?;
        let runtime = Arc::new(quinn::TokioRuntime);
        let mut config = quinn::EndpointConfig::default();
        // What the server may send us (the `max_udp_payload_size` transport parameter): no
        // more than our route takes, so its probes towards a phone stay internet-sized, and
        // no more than the edge sends, since quinn's receive buffer grows with it.
        config
            .max_udp_payload_size(payload_ceiling.min(missive_proto::EDGE_UDP_PAYLOAD))
            .map_err(|e| ClientError::InvalidInput(format!("QUIC payload ceiling: {e}")))?;
        let endpoint = quinn::Endpoint::new(config, None, socket, runtime)?;
        Ok(Self {
            endpoint,
            payload_ceiling,
        })
    }

    /// Moves the endpoint to a new UDP socket bound on `local` (port 0 for any): its
    /// connections migrate to the new address without reconnecting (what a phone does when
    /// it moves from Wi-Fi to LTE).
    pub fn rebind(&self, local: SocketAddr) -> Result<(), ClientError> {
        let socket = udp_socket(local)?;
        self.endpoint.rebind(socket).map_err(ClientError::from)
    }

    /// The local UDP address.
    pub fn local_addr(&self) -> Result<SocketAddr, ClientError> {
        self.endpoint.local_addr().map_err(ClientError::from)
    }
}

/// A QUIC connection's path as it is now ([`crate::Client::quic_path`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct QuicPath {
    /// UDP payload of a full-size packet: 1,200 bytes at first, grown by path MTU discovery
    /// up to what the route carries (1,452 on the internet).
    pub mtu: u16,
    /// Smoothed round-trip time.
    pub rtt: Duration,
    /// Packets sent on it.
    pub sent_packets: u64,
    /// Packets declared lost.
    pub lost_packets: u64,
    /// Times larger packets stopped getting through and the size fell back to 1,200 bytes.
    pub black_holes: u64,
    /// UDP datagrams received on the connection.
    pub received_datagrams: u64,
    /// UDP payload bytes received on the connection.
    pub received_bytes: u64,
}

impl QuicPath {
    pub(crate) fn of(conn: &quinn::Connection) -> Self {
        let stats = conn.stats();
        Self {
            mtu: stats.path.current_mtu,
            rtt: stats.path.rtt,
            sent_packets: stats.path.sent_packets,
            lost_packets: stats.path.lost_packets,
            black_holes: stats.path.black_holes_detected,
            received_datagrams: stats.udp_rx.datagrams,
            received_bytes: stats.udp_rx.bytes,
        }
    }
}

/// Where and how to connect.
#[derive(Debug, Clone)]
pub struct TransportConfig {
    /// The edge's address (QUIC and TCP use the same one).
    pub server: SocketAddr,
    /// Name checked against the server certificate (default `"localhost"`).
    pub server_name: String,
    /// PEM of the certificate(s) to trust (the edge's self-signed certificate in development).
    pub ca_pem: Vec<u8>,
    /// How long to wait for the QUIC handshake before falling back to TCP (default 1.5 s).
    pub quic_timeout: Duration,
    /// Skip QUIC and connect with TCP+TLS directly (for tests and UDP-hostile networks).
    pub force_tcp: bool,
    /// Open QUIC connections on this shared endpoint instead of a socket of their own.
    pub quic_endpoint: Option<QuicEndpoint>,
}

/// The read half of a transport.
pub type TransportReader = Box<dyn AsyncRead + Send + Unpin>;
/// The write half of a transport.
pub type TransportWriter = Box<dyn AsyncWrite + Send + Unpin>;

/// An established, TLS-authenticated byte stream to the edge.
pub struct Transport {
    kind: TransportKind,
    exporter: [u8; EXPORTER_LEN],
    reader: TransportReader,
    writer: TransportWriter,
    closer: TransportCloser,
}

impl std::fmt::Debug for Transport {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Transport")
            .field("kind", &self.kind)
            .finish_non_exhaustive()
    }
}

/// Keeps the QUIC endpoint and connection alive while the halves are in use, and closes
/// them. Dropping it without [`TransportCloser::close`] closes the connection abruptly.
pub struct TransportCloser {
    quic: Option<(QuicSocket, quinn::Connection)>,
}

/// The UDP socket a QUIC connection runs on.
enum QuicSocket {
    /// Its own: closing the connection waits for the close to leave, then drops the socket.
    Own(quinn::Endpoint),
    /// Shared with other connections: it outlives this one and sends the close on its own.
    Shared,
}

impl TransportCloser {
    /// The QUIC connection, for opening transfer streams beside the control stream; `None`
    /// over TCP+TLS.
    pub fn quic_connection(&self) -> Option<quinn::Connection> {
        self.quic.as_ref().map(|(_, c)| c.clone())
    }

    /// Closes the connection (QUIC: CONNECTION_CLOSE and a short wait for it to be sent; TCP:
    /// nothing beyond the write half's shutdown and dropping the halves).
    pub async fn close(self) {
        if let Some((socket, conn)) = self.quic {
            conn.close(0u32.into(), b"bye");
            if let QuicSocket::Own(endpoint) = socket {
                let _ = tokio::time::timeout(QUIC_CLOSE_WAIT, endpoint.wait_idle()).await;
            }
        }
    }
}

impl Transport {
    /// Connects: QUIC first (unless `force_tcp`), then TCP+TLS if the QUIC handshake does not
    /// complete within `quic_timeout` or fails.
    pub async fn connect(cfg: &TransportConfig) -> Result<Self, ClientError> {
        let tls = client_tls_config(&cfg.ca_pem)?;
        let quic_err = if cfg.force_tcp {
            None
        } else {
            match tokio::time::timeout(cfg.quic_timeout, connect_quic(cfg, tls.clone())).await {
                Ok(Ok(t)) => return Ok(t),
                Ok(Err(e)) => Some(e),
                Err(_) => Some(format!(
                    "no QUIC handshake within {} ms",
                    cfg.quic_timeout.as_millis()
                )),
            }
        };
        if let Some(e) = &quic_err {
            tracing::debug!(server = %cfg.server, error = %e, "QUIC failed, falling back to TCP");
        }
        match tokio::time::timeout(TCP_TIMEOUT, connect_tcp(cfg, tls)).await {
            Ok(Ok(t)) => Ok(t),
            Ok(Err(ClientError::Tls(e))) => Err(ClientError::Tls(e)),
            Ok(Err(e)) => Err(connect_error(cfg.server, quic_err, e.to_string())),
            Err(_) => Err(connect_error(
                cfg.server,
                quic_err,
                format!("no TCP+TLS handshake within {} s", TCP_TIMEOUT.as_secs()),
            )),
        }
    }

    /// QUIC only, with no TCP+TLS fallback: for tools that must leave from the address their
    /// QUIC endpoint is bound to (a TCP fallback would leave from another).
    pub async fn connect_quic_only(cfg: &TransportConfig) -> Result<Self, ClientError> {
        let tls = client_tls_config(&cfg.ca_pem)?;
        let err = match tokio::time::timeout(cfg.quic_timeout, connect_quic(cfg, tls)).await {
            Ok(Ok(t)) => return Ok(t),
            Ok(Err(e)) => e,
            Err(_) => format!(
                "no QUIC handshake within {} ms",
                cfg.quic_timeout.as_millis()
            ),
        };
        Err(connect_error(
            cfg.server,
            Some(err),
            "no TCP fallback (QUIC only)".into(),
        ))
    }

    /// Which transport this is.
    pub fn kind(&self) -> TransportKind {
        self.kind
    }

    /// The TLS exporter of this connection (label `EXPORTER_LABEL`, empty context, 32 bytes).
    pub fn exporter(&self) -> [u8; EXPORTER_LEN] {
        self.exporter
    }

    /// The read half (frames from the server).
    pub fn reader(&mut self) -> &mut TransportReader {
        &mut self.reader
    }

    /// The write half (frames to the server).
    pub fn writer(&mut self) -> &mut TransportWriter {
        &mut self.writer
    }

    /// Splits into the two halves and the closer that keeps the connection alive.
    pub fn into_parts(self) -> (TransportReader, TransportWriter, TransportCloser) {
        (self.reader, self.writer, self.closer)
    }
}

fn connect_error(addr: SocketAddr, quic: Option<String>, tcp: String) -> ClientError {
    let reason = match quic {
        Some(q) => format!("quic: {q}; tcp: {tcp}"),
        None => tcp,
    };
    ClientError::Connect { addr, reason }
}

/// The rustls client configuration shared by both transports: TLS 1.3 only, the given CA as
/// the only trust anchor, ALPN `missive/1`.
fn client_tls_config(ca_pem: &[u8]) -> Result<rustls::ClientConfig, ClientError> {
    let mut roots = rustls::RootCertStore::empty();
    let mut found = 0usize;
    for cert in rustls_pemfile::certs(&mut &ca_pem[..]) {
        let cert = cert.map_err(|e| ClientError::Tls(format!("cannot parse CA PEM: {e}")))?;
        roots
            .add(cert)
            .map_err(|e| ClientError::Tls(format!("unusable CA certificate: {e}")))?;
        found += 1;
    }
    if found == 0 {
        return Err(ClientError::Tls(
            "no certificate found in the CA PEM".into(),
        ));
    }
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut tls = rustls::ClientConfig::builder_with_provider(provider)
        .with_protocol_versions(&[&rustls::version::TLS13])
        .map_err(|e| ClientError::Tls(e.to_string()))?
        .with_root_certificates(roots)
        .with_no_client_auth();
    tls.alpn_protocols = vec![ALPN.to_vec()];
    Ok(tls)
}

async fn connect_quic(
    cfg: &TransportConfig,
    tls: rustls::ClientConfig,
) -> Result<Transport, String> {
    let crypto =
        quinn::crypto::rustls::QuicClientConfig::try_from(tls).map_err(|e| e.to_string())?;
    let mut client_config = quinn::ClientConfig::new(Arc::new(crypto));
    let mut transport = quinn::TransportConfig::default();
    transport.keep_alive_interval(Some(QUIC_KEEP_ALIVE));
    transport.max_idle_timeout(Some(
        quinn::IdleTimeout::try_from(QUIC_IDLE_TIMEOUT).map_err(|e| e.to_string())?,
    ));
    // The server never opens streams towards the client (yet); do not pre-size tables for it.
    transport.max_concurrent_bidi_streams(0u32.into());
    transport.max_concurrent_uni_streams(0u32.into());
    // Let the server acknowledge every 5th ack-eliciting packet (or after its 25 ms ACK
    // delay) instead of every 2nd, so its ACKs ride on its next frame (QUIC ACK frequency).
    let mut ack_frequency = quinn::AckFrequencyConfig::default();
    ack_frequency.ack_eliciting_threshold(ACK_ELICITING_THRESHOLD.into());
    transport.ack_frequency_config(Some(ack_frequency));

    let (endpoint, socket) = match &cfg.quic_endpoint {
        Some(shared) => (shared.clone(), QuicSocket::Shared),
        None => {
            let own = QuicEndpoint::bind_for(cfg.server).map_err(|e| e.to_string())?;
            (own.clone(), QuicSocket::Own(own.endpoint))
        }
    };
    size_packets_for_route(&mut transport, endpoint.payload_ceiling);
    client_config.transport_config(Arc::new(transport));
    let endpoint = endpoint.endpoint;
    let conn = endpoint
        .connect_with(client_config, cfg.server, &cfg.server_name)
        .map_err(|e| e.to_string())?
        .await
        .map_err(|e| e.to_string())?;
    let (send, recv) = conn.open_bi().await.map_err(|e| e.to_string())?;
    let mut exporter = [0u8; EXPORTER_LEN];
    conn.export_keying_material(&mut exporter, EXPORTER_LABEL, b"")
        .map_err(|_| "TLS exporter unavailable".to_string())?;
    Ok(Transport {
        kind: TransportKind::Quic,
        exporter,
        reader: Box::new(recv),
        writer: Box::new(send),
        closer: TransportCloser {
            quic: Some((socket, conn)),
        },
    })
}

/// Lets path MTU discovery probe up to `ceiling` (the route's, see `path_mtu`). Above an
/// internet-sized ceiling the first congestion window also grows, to hold the packets the
/// server may wait for before it acknowledges ([`ACK_ELICITING_THRESHOLD`] + 1): with 8
/// packets of 1,452 bytes it held them, with 2 of 6,400 the server waited out its ACK delay
/// and a transfer stalled 25 ms at a time while the window grew.
fn size_packets_for_route(transport: &mut quinn::TransportConfig, ceiling: u16) {
    let mut mtu = quinn::MtuDiscoveryConfig::default();
    mtu.upper_bound(ceiling);
    transport.mtu_discovery_config(Some(mtu));
    if ceiling > crate::path_mtu::INTERNET_PAYLOAD {
        let held = u64::from(ACK_ELICITING_THRESHOLD + 1) * u64::from(ceiling);
        let mut cubic = quinn::congestion::CubicConfig::default();
        cubic.initial_window(held.max(u64::from(missive_proto::QUIC_INITIAL_WINDOW)));
        transport.congestion_controller_factory(Arc::new(cubic));
    }
}

async fn connect_tcp(
    cfg: &TransportConfig,
    tls: rustls::ClientConfig,
) -> Result<Transport, ClientError> {
    let name = rustls::pki_types::ServerName::try_from(cfg.server_name.clone())
        .map_err(|e| ClientError::Tls(format!("bad server name {:?}: {e}", cfg.server_name)))?;
    let tcp = tokio::net::TcpStream::connect(cfg.server).await?;
    // Frames are batched by the writer task; Nagle would only add latency.
    tcp.set_nodelay(true)?;
    let connector = tokio_rustls::TlsConnector::from(Arc::new(tls));
    let stream = connector.connect(name, tcp).await?;
    let exporter = stream
        .get_ref()
        .1
        .export_keying_material([0u8; EXPORTER_LEN], EXPORTER_LABEL, Some(b""))
        .map_err(|e| ClientError::Tls(format!("TLS exporter unavailable: {e}")))?;
    let (reader, writer) = tokio::io::split(stream);
    Ok(Transport {
        kind: TransportKind::Tcp,
        exporter,
        reader: Box::new(reader),
        writer: Box::new(writer),
        closer: TransportCloser { quic: None },
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ca_pem_without_certificates_is_a_tls_error() {
        assert!(matches!(client_tls_config(b""), Err(ClientError::Tls(_))));
        assert!(matches!(
            client_tls_config(b"-----BEGIN PRIVATE KEY-----\nAAAA\n-----END PRIVATE KEY-----\n"),
            Err(ClientError::Tls(_))
        ));
    }
}
