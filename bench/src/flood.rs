//! Hostile load beside a scenario (`--flood KIND`): what an abusive peer sends, so that the
//! report shows what it costs the edge (CPU, RSS) and the legitimate clients (latency).
//! Each flooder connection leaves from `--flood-from` (default 127.0.0.2: another loopback
//! address than the scenario's clients, so that per-address limits meet only the flood) and
//! starts again whenever the edge closes it.

use crate::fleet::Target;
use clap::ValueEnum;
use missive_client::transport::{QuicEndpoint, Transport, TransportConfig};
use missive_proto::{
    encode, login_transcript, DeviceId, Frame, FrameDecoder, Hello, Ping, Register,
    SetPresenceVisibility, SubscribePresence, Visibility,
};
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::sync::watch;

/// What the flooders send.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum FloodKind {
    /// `Ping` frames before logging in, never reading the answers.
    Prelogin,
    /// Log in, then `Ping` frames without ever reading (the edge's output piles up).
    Unread,
    /// One registration after another.
    Register,
    /// Log in, then `SetPresenceVisibility` frames as fast as they go.
    Visibility,
    /// Log in, then `SubscribePresence` for ever new names.
    Subscribe,
}

/// What the flood did.
#[derive(Debug, Default)]
pub struct FloodStats {
    /// Connections opened (each one the edge closed was opened again).
    pub connections: AtomicU64,
    /// Frames written.
    pub frames: AtomicU64,
    /// Connections the edge refused or closed.
    pub closed: AtomicU64,
}

/// Runs `n` flooder connections of `kind` from `from` until `stop` turns true.
pub async fn run(
    target: Target,
    kind: FloodKind,
    n: usize,
    from: SocketAddr,
    stop: watch::Receiver<bool>,
) -> Arc<FloodStats> {
    let stats = Arc::new(FloodStats::default());
    let mut tasks = Vec::new();
    for i in 0..n {
        let (target, stats, mut stop) = (target.clone(), stats.clone(), stop.clone());
        tasks.push(tokio::spawn(async move {
            let mut round = 0u64;
            while !*stop.borrow() {
                round += 1;
                tokio::select! {
                    _ = one_connection(&target, kind, from, i, round, &stats) => {}
                    _ = stop.changed() => break,
                }
                stats.closed.fetch_add(1, Ordering::Relaxed);
                // A refused flooder comes back at once: the edge must bear that too.
                tokio::task::yield_now().await;
            }
        }));
    }
    for t in tasks {
        let _ = t.await;
    }
    stats
}

/// One connection's worth of flood; returns when the edge refuses or closes it.
async fn one_connection(
    target: &Target,
    kind: FloodKind,
    from: SocketAddr,
    index: usize,
    round: u64,
    stats: &FloodStats,
) {
    let Ok(endpoint) = QuicEndpoint::bind(from) else {
        tokio::time::sleep(Duration::from_millis(100)).await;
        return;
    };
    let cfg = TransportConfig {
        server: target.addr,
        server_name: "localhost".into(),
        ca_pem: target.ca_pem.clone(),
        quic_timeout: Duration::from_secs(3),
        force_tcp: false,
        quic_endpoint: Some(endpoint),
    };
    // QUIC only: a TCP fallback would leave from another address than `from`.
    let Ok(t) = Transport::connect_quic_only(&cfg).await else {
        return;
    };
    stats.connections.fetch_add(1, Ordering::Relaxed);
    let exporter = t.exporter();
    let (mut reader, mut writer, _closer) = t.into_parts();
    let mut decoder = FrameDecoder::new(missive_proto::HARD_MAX_FRAME);
    let mut buf = vec![0u8; 16 * 1024];
    let hello: Frame = Hello {
        min_version: missive_proto::MIN_PROTOCOL_VERSION,
        max_version: missive_proto::PROTOCOL_VERSION,
        client: "missive-bench flood".into(),
    }
    .into();
    if write_frames(&mut writer, &[hello], stats).await.is_err() {
        return;
    }
    let Some(Frame::ServerHello(sh)) = next_frame(&mut reader, &mut decoder, &mut buf).await else {
        return;
    };
    if kind == FloodKind::Prelogin {
        let pings: Vec<Frame> = (0..512).map(|n| Ping { nonce: n }.into()).collect();
        while write_frames(&mut writer, &pings, stats).await.is_ok() {}
        return;
    }
    // Register a fresh name (which is also the whole of the `register` flood).
    let name = format!("fl{index}x{round}x{}", std::process::id());
    let key = ed25519_dalek::SigningKey::from_bytes(&blake3::hash(name.as_bytes()).into());
    use ed25519_dalek::Signer;
    let register: Frame = Register {
        user: name.clone(),
        device: DeviceId(1),
        device_key: key.verifying_key().to_bytes(),
        invite: None,
        signature: key
            .sign(&login_transcript(
                &sh.challenge,
                &exporter,
                &name,
                DeviceId(1),
            ))
            .to_bytes(),
    }
    .into();
    if write_frames(&mut writer, &[register], stats).await.is_err() {
        return;
    }
    match next_frame(&mut reader, &mut decoder, &mut buf).await {
        Some(Frame::Welcome(_)) if kind != FloodKind::Register => {}
        _ => return,
    }
    let mut n = 0u64;
    loop {
        let batch: Vec<Frame> = (0..256)
            .map(|_| {
                n += 1;
                match kind {
                    FloodKind::Visibility => SetPresenceVisibility {
                        visibility: if n.is_multiple_of(2) {
                            Visibility::Nobody
                        } else {
                            Visibility::Everyone
                        },
                    }
                    .into(),
                    FloodKind::Subscribe => SubscribePresence {
                        user: format!("nobody{n}"),
                    }
                    .into(),
                    _ => Ping { nonce: n }.into(),
                }
            })
            .collect();
        if write_frames(&mut writer, &batch, stats).await.is_err() {
            return;
        }
        if kind != FloodKind::Unread {
            // Read what came back (so that only `unread` leaves output piling up), without
            // waiting for it.
            while let Ok(Ok(k)) = tokio::time::timeout(Duration::ZERO, reader.read(&mut buf)).await
            {
                if k == 0 {
                    return;
                }
            }
        }
    }
}

async fn write_frames(
    writer: &mut missive_client::transport::TransportWriter,
    frames: &[Frame],
    stats: &FloodStats,
) -> Result<(), ()> {
    let mut bytes = Vec::new();
    for f in frames {
        encode(f, &mut bytes).map_err(|_| ())?;
    }
    writer.write_all(&bytes).await.map_err(|_| ())?;
    stats
        .frames
        .fetch_add(frames.len() as u64, Ordering::Relaxed);
    Ok(())
}

async fn next_frame(
    reader: &mut missive_client::transport::TransportReader,
    decoder: &mut FrameDecoder,
    buf: &mut [u8],
) -> Option<Frame> {
    loop {
        if let Ok(Some(f)) = decoder.next_frame() {
            return Some(f);
        }
        match tokio::time::timeout(Duration::from_secs(5), reader.read(buf)).await {
            Ok(Ok(n)) if n > 0 => decoder.feed(&buf[..n]),
            _ => return None,
        }
    }
}
