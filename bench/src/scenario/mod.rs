//! Load scenarios. Each drives real SDK clients against a real edge and fills a [`Run`].

pub mod call;
pub mod chat;
pub mod connections;
pub mod group;
pub mod group_sdk;
pub mod media;
pub mod offline;
pub mod relay;

use crate::edge_process::SpawnedEdge;
use crate::fleet::Target;
use crate::tracker::Tracker;
use std::collections::{BTreeMap, VecDeque};
use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::Poll;
use std::time::{Duration, Instant};

/// Knobs shared by the scenarios (from the command line).
#[derive(Debug, Clone)]
pub struct Knobs {
    /// Clients (a pair is two clients).
    pub clients: usize,
    /// Total messages to send (ignored when `seconds` is set).
    pub messages: u64,
    /// Send for this long instead of a fixed count.
    pub seconds: Option<f64>,
    /// Total offered rate in msgs/s; `None` = as fast as the window allows.
    pub rate: Option<f64>,
    /// Message size in bytes.
    pub size: usize,
    /// Unacknowledged sends per sender.
    pub window: usize,
    /// `chat`: only the first client of each pair sends (the MQTT peers' shape) instead of both.
    pub one_way: bool,
    /// Paced senders all start at the same instant, so each interval opens with a burst of
    /// one message per sender (the MQTT peers' `msgload` shape). Otherwise their start times
    /// are spread evenly over one interval, so the offered load is smooth, as a fleet of
    /// independent phones makes it.
    pub aligned: bool,
    /// `group`: the share of the members that are online and receive (0 < share <= 1).
    pub online_share: f64,
    /// `group`: members sending at once.
    pub senders: usize,
    /// `group`: SDK clients at both ends (Megolm encryption and decryption) instead of
    /// frame-level ones.
    pub decrypt: bool,
    /// `media`: bytes of the file uploaded and downloaded.
    pub file_bytes: u64,
    /// `media`: rounds of the file's upload, download and TLS copies (figures are medians).
    pub rounds: usize,
    /// `call`: calls made on each path (direct, relayed).
    pub calls: usize,
}

/// When one paced sender sends: `rate` msgs/s, the first at `phase` after the run starts.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Pacing {
    /// This sender's msgs/s.
    pub rate: f64,
    /// Offset of this sender's first send from the start of the run.
    pub phase: Duration,
}

impl Pacing {
    /// Pacing of sender `index` of `senders` sharing `total_rate` msgs/s: aligned senders all
    /// start at 0; otherwise sender `index` starts `index / senders` of an interval late.
    pub fn for_sender(total_rate: f64, index: usize, senders: usize, aligned: bool) -> Self {
        let senders = senders.max(1);
        let rate = total_rate / senders as f64;
        let phase = if aligned {
            Duration::ZERO
        } else {
            Duration::from_secs_f64(index as f64 / senders as f64 / rate)
        };
        Self { rate, phase }
    }

    /// When send number `seq` is due, counted from `start`.
    pub fn due(&self, start: Instant, seq: u64) -> Instant {
        start + self.phase + Duration::from_secs_f64(seq as f64 / self.rate)
    }
}

/// What a scenario measured.
#[derive(Debug)]
pub struct Run {
    /// Loss / duplicates / order / latency.
    pub tracker: Arc<Mutex<Tracker>>,
    /// Wall time of the measured phase.
    pub duration: Duration,
    /// Scenario-specific figures (name → value), printed and put in the JSON `extra`.
    pub extra: BTreeMap<String, f64>,
    /// Edge CPU seconds from the first send to the last delivery, without registrations,
    /// logins and closes (`None`: not measured, or the edge is not observable).
    pub message_phase_cpu_s: Option<f64>,
}

/// The clock every stamp uses: µs since the run started.
#[derive(Debug, Clone, Copy)]
pub struct RunClock(pub Instant);

impl RunClock {
    /// µs since start.
    pub fn now_us(&self) -> u64 {
        self.0.elapsed().as_micros() as u64
    }
}

/// The edge under test: where it is and, when spawned, the process itself.
pub struct Under<'a> {
    /// Address and certificate.
    pub target: Target,
    /// The spawned edge, if `--spawn`.
    pub spawned: Option<&'a mut SpawnedEdge>,
    /// The remote edge's `/metrics` address, if given.
    pub metrics: Option<std::net::SocketAddr>,
}

impl Under<'_> {
    /// The edge's CPU seconds so far (user + system), from `/proc` of the spawned edge or the
    /// remote edge's `/metrics`; `None` when neither is available.
    pub fn server_cpu_seconds(&self) -> Option<f64> {
        match (&self.spawned, self.metrics) {
            (Some(e), _) => Some(e.cpu_seconds()),
            (None, Some(addr)) => crate::remote::sample(addr).map(|s| s.cpu_seconds),
            (None, None) => None,
        }
    }
}

/// CPU used between two readings, when both exist.
pub fn cpu_between(start: Option<f64>, end: Option<f64>) -> Option<f64> {
    Some(end? - start?).filter(|d| *d >= 0.0)
}

/// Closes every client at once: each close waits for the server's `Bye` and for its QUIC
/// close to leave, and a few hundred of those one after another took half a minute. First
/// each client's count of messages the edge stored twice (seen by the SDK before its
/// duplicate filter, which the tracker comes after) goes to the tracker.
pub async fn close_all(
    clients: impl IntoIterator<Item = missive_client::Client>,
    tracker: &Mutex<Tracker>,
) {
    let clients: Vec<_> = clients.into_iter().collect();
    for c in &clients {
        lock(tracker).on_client_stats(c.delivery_stats());
    }
    let closing: Vec<_> = clients
        .into_iter()
        .map(|c| tokio::spawn(async move { c.close().await }))
        .collect();
    for t in closing {
        let _ = t.await;
    }
}

/// Locks the tracker; a poisoned lock (a panicked task) still yields the counts.
pub fn lock(t: &Mutex<Tracker>) -> std::sync::MutexGuard<'_, Tracker> {
    t.lock().unwrap_or_else(|p| p.into_inner())
}

/// How long one sender keeps sending.
#[derive(Debug, Clone, Copy)]
pub enum Until {
    /// This many messages.
    Count(u64),
    /// Until this instant.
    Deadline(Instant),
}

/// One sender's stream: stamped messages to `to`, at most `window` unacknowledged, optionally
/// paced. Each send is queued in sequence order and its answer kept in a FIFO: one
/// connection's answers come in the order of its sends, so the oldest is the one to wait for
/// when the window is full. Answers are recorded in the tracker as they are taken (ready ones
/// before every send). Returns when every send was answered.
#[allow(clippy::too_many_arguments)]
pub async fn send_stream(
    client: missive_client::Client,
    to: String,
    stream: u32,
    until: Until,
    pacing: Option<Pacing>,
    window: usize,
    size: usize,
    tracker: Arc<Mutex<Tracker>>,
    clock: RunClock,
) {
    let window = window.max(1);
    let mut inflight = VecDeque::with_capacity(window);
    let mut seq = 0u64;
    loop {
        let done = match until {
            Until::Count(n) => seq >= n,
            Until::Deadline(d) => Instant::now() >= d,
        };
        if done {
            break;
        }
        if let Some(p) = pacing {
            tokio::time::sleep_until(p.due(clock.0, seq).into()).await;
        }
        take_answers(&mut inflight, window - 1, &tracker).await;
        let stamp = crate::payload::Stamp {
            stream,
            seq,
            sent_us: clock.now_us(),
        };
        lock(&tracker).on_sent();
        let text = crate::payload::encode(stamp, size);
        let answer = client.send(to.clone(), missive_client::Content::Text(text));
        inflight.push_back((stamp, Box::pin(answer)));
        seq += 1;
    }
    take_answers(&mut inflight, 0, &tracker).await;
}

/// Records the answers at the front of `inflight` that are already in, then waits for more
/// until at most `keep` are left.
async fn take_answers<F>(
    inflight: &mut VecDeque<(crate::payload::Stamp, Pin<Box<F>>)>,
    keep: usize,
    tracker: &Mutex<Tracker>,
) where
    F: Future<Output = Result<missive_client::SendReceipt, missive_client::ClientError>>,
{
    loop {
        let must_wait = inflight.len() > keep;
        let Some((stamp, answer)) = inflight.front_mut() else {
            break;
        };
        let stamp = *stamp;
        let result = if must_wait {
            Some(answer.await)
        } else {
            std::future::poll_fn(|cx| match answer.as_mut().poll(cx) {
                Poll::Ready(r) => Poll::Ready(Some(r)),
                Poll::Pending => Poll::Ready(None),
            })
            .await
        };
        let Some(result) = result else { break };
        inflight.pop_front();
        if result.is_ok() {
            lock(tracker).on_acked(stamp.stream, stamp.seq);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn spread_senders_divide_one_interval_and_aligned_ones_start_together() {
        let start = Instant::now();
        // 4 senders sharing 400 msgs/s: 100/s each, an interval of 10 ms.
        let spread: Vec<_> = (0..4)
            .map(|i| Pacing::for_sender(400.0, i, 4, false))
            .collect();
        for (i, p) in spread.iter().enumerate() {
            assert_eq!(p.rate, 100.0);
            assert_eq!(p.phase, Duration::from_micros(2_500 * i as u64));
            assert_eq!(
                p.due(start, 3),
                start + Duration::from_micros(30_000 + 2_500 * i as u64)
            );
        }
        let aligned = Pacing::for_sender(400.0, 3, 4, true);
        assert_eq!(aligned.phase, Duration::ZERO);
        assert_eq!(aligned.due(start, 3), start + Duration::from_millis(30));
    }
}
