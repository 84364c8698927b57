//! Helpers for the SDK's tests, which run against the real edge binary
//! ([`missive_testkit::Edge`]): client configurations, registration, waiting for events and
//! metrics, and a TCP proxy that can lose what the edge sends.

#![allow(dead_code, unreachable_pub, missing_docs)]

pub use missive_testkit::Edge;

use missive_client::{ClientConfig, Event, EventStream, Identity};
use missive_proto::DeviceId;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::Notify;

/// How long a test waits for an event or a metric.
pub const WAIT: Duration = Duration::from_secs(10);

/// A client configuration for `identity` against `edge` (QUIC first; fast reconnects).
pub fn config(edge: &Edge, identity: Identity) -> ClientConfig {
    let mut cfg = ClientConfig::new(edge.quic, edge.ca_pem(), identity);
    cfg.reconnect.initial = Duration::from_millis(20);
    cfg.reconnect.max = Duration::from_millis(200);
    cfg
}

/// Registers a fresh identity for `user` (device 1) and returns it.
pub async fn registered(edge: &Edge, user: &str) -> Identity {
    let id = Identity::generate(user, DeviceId(1));
    missive_client::register(&config(edge, id.clone()), None)
        .await
        .unwrap_or_else(|e| panic!("registering {user}: {e}"));
    id
}

/// Waits (at most [`WAIT`]) for the first event matching `pred`, skipping others.
pub async fn wait_for(
    events: &mut EventStream,
    what: &str,
    mut pred: impl FnMut(&Event) -> bool,
) -> Event {
    let deadline = tokio::time::Instant::now() + WAIT;
    loop {
        match tokio::time::timeout_at(deadline, events.next()).await {
            Ok(Some(e)) if pred(&e) => return e,
            Ok(Some(_)) => {}
            Ok(None) => panic!("event stream ended while waiting for {what}"),
            Err(_) => panic!("timed out waiting for {what}"),
        }
    }
}

/// Waits (at most [`WAIT`]) until the edge's `/metrics` sample `line_start` is `value`.
pub async fn metric_becomes(edge: &Edge, line_start: &str, value: f64) {
    let deadline = tokio::time::Instant::now() + WAIT;
    loop {
        let now = edge.try_metric(line_start);
        if now == Some(value) {
            return;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "{line_start} is {now:?}, not {value}, after {WAIT:?}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// A TCP proxy on 127.0.0.1 in front of `upstream` (the edge's TCP+TLS port). It can mute
/// the connections open now (what the edge sends them is dropped) and cut them.
pub struct Proxy {
    pub addr: SocketAddr,
    links: Arc<Mutex<Vec<Arc<Link>>>>,
    accepted: Arc<AtomicUsize>,
    acceptor: tokio::task::JoinHandle<()>,
}

/// One proxied connection's switches.
#[derive(Default)]
struct Link {
    muted: AtomicBool,
    cut: Notify,
}

impl Proxy {
    pub async fn start(upstream: SocketAddr) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let links = Arc::new(Mutex::new(Vec::new()));
        let accepted = Arc::new(AtomicUsize::new(0));
        let (l, a) = (links.clone(), accepted.clone());
        let acceptor = tokio::spawn(async move {
            while let Ok((client, _)) = listener.accept().await {
                let Ok(server) = TcpStream::connect(upstream).await else {
                    continue;
                };
                a.fetch_add(1, Ordering::SeqCst);
                let link = Arc::new(Link::default());
                l.lock().unwrap().push(link.clone());
                tokio::spawn(link.pump(client, server));
            }
        });
        Self {
            addr,
            links,
            accepted,
            acceptor,
        }
    }

    /// From now on, what the edge sends on the connections open now is dropped.
    pub fn mute(&self) {
        for link in self.links.lock().unwrap().iter() {
            link.muted.store(true, Ordering::SeqCst);
        }
    }

    /// Closes the connections open now, both sides. Later connections are proxied normally.
    pub fn cut(&self) {
        for link in self.links.lock().unwrap().drain(..) {
            link.cut.notify_one();
        }
    }

    /// Connections proxied so far.
    pub fn accepted(&self) -> usize {
        self.accepted.load(Ordering::SeqCst)
    }
}

impl Drop for Proxy {
    fn drop(&mut self) {
        self.acceptor.abort();
        self.cut();
    }
}

impl Link {
    /// Copies bytes both ways until either side closes or the link is cut; dropping the
    /// sockets then closes both connections.
    async fn pump(self: Arc<Self>, client: TcpStream, server: TcpStream) {
        let (mut client_rx, mut client_tx) = client.into_split();
        let (mut server_rx, mut server_tx) = server.into_split();
        let up = tokio::io::copy(&mut client_rx, &mut server_tx);
        let down = async {
            let mut buf = vec![0u8; 64 * 1024];
            loop {
                let n = match server_rx.read(&mut buf).await {
                    Ok(0) | Err(_) => return,
                    Ok(n) => n,
                };
                if !self.muted.load(Ordering::SeqCst)
                    && client_tx.write_all(&buf[..n]).await.is_err()
                {
                    return;
                }
            }
        };
        tokio::select! {
            _ = up => {}
            _ = down => {}
            _ = self.cut.notified() => {}
        }
    }
}
