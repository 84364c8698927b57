//! `connections`: open `clients` mostly idle connections (the SDK keeps them alive with
//! pings) while a few active pairs keep chatting; reports handshakes/s, the edge's RSS per
//! connection, and whether messages still flowed.

use super::{close_all, lock, Knobs, Run, RunClock, Under};
use crate::fleet::{connect_all, register_users, run_prefix};
use crate::payload::{self, Stamp};
use crate::tracker::Tracker;
use missive_client::{Content, Event};
use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// Active pairs chatting while the idle connections are open.
const ACTIVE_PAIRS: usize = 4;
/// Their combined rate, msgs/s.
const ACTIVE_RATE: f64 = 200.0;

/// Runs the scenario.
pub async fn run(
    under: &mut Under<'_>,
    knobs: &Knobs,
    tracker: Arc<Mutex<Tracker>>,
) -> Result<Run, String> {
    let prefix = run_prefix("connections");
    let idle_users = register_users(&under.target, &format!("{prefix}i"), knobs.clients).await?;
    let active_users =
        register_users(&under.target, &format!("{prefix}a"), ACTIVE_PAIRS * 2).await?;
    let rss_before = under.spawned.as_deref().map(|e| e.rss());

    let clock = RunClock(Instant::now());
    let active = connect_all(&active_users).await?;
    let mut active_clients = Vec::new();
    let mut tasks = Vec::new();
    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    for (i, (client, mut events)) in active.into_iter().enumerate() {
        let rx_tracker = tracker.clone();
        tasks.push(tokio::spawn(async move {
            while let Some(ev) = events.next().await {
                if let Event::Message { text, .. } = ev {
                    if let Some(stamp) = payload::decode(&text) {
                        lock(&rx_tracker).on_delivered(stamp, clock.now_us());
                    }
                }
            }
        }));
        let (client2, tracker, stop) = (client.clone(), tracker.clone(), stop.clone());
        let to = active_users[i ^ 1].name.clone();
        let size = knobs.size;
        tasks.push(tokio::spawn(async move {
            let per = ACTIVE_RATE / (ACTIVE_PAIRS * 2) as f64;
            let mut seq = 0u64;
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                let stamp = Stamp {
                    stream: i as u32,
                    seq,
                    sent_us: clock.now_us(),
                };
                lock(&tracker).on_sent();
                if client2
                    .send(to.clone(), Content::Text(payload::encode(stamp, size)))
                    .await
                    .is_ok()
                {
                    lock(&tracker).on_acked(stamp.stream, seq);
                }
                seq += 1;
                tokio::time::sleep(Duration::from_secs_f64(1.0 / per)).await;
            }
        }));
        active_clients.push(client);
    }

    let opening = Instant::now();
    let idle = connect_all(&idle_users).await?;
    let open_time = opening.elapsed();
    // Let the edge settle, then read its memory with everything open.
    let hold = Duration::from_secs_f64(knobs.seconds.unwrap_or(3.0));
    tokio::time::sleep(hold).await;
    let rss_after = under.spawned.as_deref().map(|e| e.rss());

    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    tokio::time::sleep(Duration::from_millis(300)).await;
    let duration = clock.0.elapsed();
    let idle_count = idle.len();
    close_all(
        idle.iter()
            .map(|(c, _)| c.clone())
            .chain(active_clients.iter().cloned()),
        &tracker,
    )
    .await;
    for t in tasks {
        t.abort();
    }
    let mut extra = BTreeMap::new();
    extra.insert("idle_connections".into(), idle_count as f64);
    extra.insert("open_s".into(), open_time.as_secs_f64());
    extra.insert(
        "handshakes_per_s".into(),
        idle_count as f64 / open_time.as_secs_f64().max(1e-9),
    );
    if let (Some(b), Some(a)) = (rss_before, rss_after) {
        extra.insert("rss_before_bytes".into(), b as f64);
        extra.insert("rss_after_bytes".into(), a as f64);
        extra.insert(
            "rss_per_connection_bytes".into(),
            a.saturating_sub(b) as f64 / idle_count.max(1) as f64,
        );
    }
    Ok(Run {
        tracker,
        duration,
        extra,
        message_phase_cpu_s: None,
    })
}
