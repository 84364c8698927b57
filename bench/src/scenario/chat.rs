//! `chat` (and `crash`): 1:1 traffic between client pairs, both directions, each sender
//! keeping at most `window` sends unacknowledged, open loop or paced at `rate`. With
//! `crash_midway`, the spawned edge is SIGKILLed and restarted once half the messages are
//! acknowledged; every acknowledged message must still arrive exactly once.

use super::{
    close_all, cpu_between, lock, send_stream, Knobs, Pacing, Run, RunClock, Under, Until,
};
use crate::fleet::{connect_all, register_users, run_prefix};
use crate::payload;
use crate::tracker::Tracker;
use missive_client::Event;
use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tokio::sync::watch;

/// How long to wait for the last deliveries after the last send was acknowledged.
const DRAIN_TIMEOUT: Duration = Duration::from_secs(30);

/// Runs the scenario.
pub async fn run(
    under: &mut Under<'_>,
    knobs: &Knobs,
    tracker: Arc<Mutex<Tracker>>,
    crash_midway: bool,
) -> Result<Run, String> {
    let n = knobs.clients.max(2) & !1;
    let users = register_users(&under.target, &run_prefix("chat"), n).await?;
    let clients = connect_all(&users).await?;
    let cpu_start = under.server_cpu_seconds();
    // The clients' side (this process: the SDKs' encryption, framing, TLS).
    let bench_cpu_start = crate::edge_process::cpu_seconds(std::process::id());
    let clock = RunClock(Instant::now());
    let (stop_tx, stop_rx) = watch::channel(false);

    // Receivers.
    let mut receivers = Vec::new();
    let mut senders_clients = Vec::with_capacity(n);
    for (client, mut events) in clients {
        let (tracker, mut stop) = (tracker.clone(), stop_rx.clone());
        receivers.push(tokio::spawn(async move {
            loop {
                tokio::select! {
                    ev = events.next() => match ev {
                        Some(Event::Message { text, .. }) => {
                            if let Some(stamp) = payload::decode(&text) {
                                lock(&tracker).on_delivered(stamp, clock.now_us());
                            }
                        }
                        Some(_) => {}
                        None => break,
                    },
                    _ = stop.changed() => break,
                }
            }
        }));
        senders_clients.push(client);
    }

    // Senders: client i talks to i^1 (only even i when one-way).
    let sending = if knobs.one_way { n / 2 } else { n };
    let per_sender = knobs.messages.div_ceil(sending as u64);
    let deadline = knobs.seconds.map(|s| clock.0 + Duration::from_secs_f64(s));
    let mut senders = Vec::new();
    for (i, client) in senders_clients.iter().enumerate() {
        if knobs.one_way && i % 2 == 1 {
            continue;
        }
        let to = users[i ^ 1].name.clone();
        let sender_index = if knobs.one_way { i / 2 } else { i };
        let pacing = knobs
            .rate
            .map(|r| Pacing::for_sender(r, sender_index, sending, knobs.aligned));
        let until = match deadline {
            Some(d) => Until::Deadline(d),
            None => Until::Count(per_sender),
        };
        senders.push(tokio::spawn(send_stream(
            client.clone(),
            to,
            i as u32,
            until,
            pacing,
            knobs.window,
            knobs.size,
            tracker.clone(),
            clock,
        )));
    }

    // Wait for the senders, crashing the edge midway if asked.
    let total_planned = per_sender * sending as u64;
    let mut crashed = !crash_midway;
    let mut extra = BTreeMap::new();
    let all_sent = futures_join(senders);
    tokio::pin!(all_sent);
    loop {
        tokio::select! {
            _ = &mut all_sent => break,
            _ = tokio::time::sleep(Duration::from_millis(10)), if !crashed => {
                let acked = lock(&tracker).acked();
                let half = match deadline {
                    Some(d) => Instant::now() + Duration::from_secs_f64(knobs.seconds.unwrap_or(0.0) / 2.0) >= d,
                    None => acked >= total_planned / 2,
                };
                if half {
                    crashed = true;
                    if let Some(edge) = under.spawned.as_deref_mut() {
                        let restart = edge.kill9_and_restart()?;
                        extra.insert("crash_at_acked".into(), acked as f64);
                        extra.insert("restart_ready_s".into(), restart.as_secs_f64());
                    } else {
                        return Err("crash needs --spawn (the bench must own the edge to kill it)".into());
                    }
                }
            }
        }
    }

    // Drain: wait until every acknowledged message arrived (or time out and count losses).
    let drain_deadline = Instant::now() + DRAIN_TIMEOUT;
    loop {
        let (acked, lost) = {
            let t = lock(&tracker);
            (t.acked(), t.lost())
        };
        if lost == 0 || Instant::now() >= drain_deadline {
            let _ = acked;
            break;
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let duration = clock.0.elapsed();
    let message_phase_cpu_s = cpu_between(cpu_start, under.server_cpu_seconds());
    let bench_cpu = cpu_between(
        bench_cpu_start,
        crate::edge_process::cpu_seconds(std::process::id()),
    );
    let delivered = lock(&tracker).delivered;
    if let (Some(cpu), true) = (bench_cpu, delivered > 0) {
        // Sender and receiver SDKs both run here: this is the cost of one message at both ends.
        extra.insert("client_cpu_us_per_msg".into(), cpu * 1e6 / delivered as f64);
    }
    // Give stray duplicates a moment to show up before counting.
    tokio::time::sleep(Duration::from_millis(200)).await;
    let _ = stop_tx.send(true);
    for r in receivers {
        let _ = r.await;
    }
    close_all(senders_clients, &tracker).await;
    Ok(Run {
        tracker,
        duration,
        extra,
        message_phase_cpu_s,
    })
}

/// Awaits every task (a tiny join_all, to avoid a dependency for it).
async fn futures_join(tasks: Vec<tokio::task::JoinHandle<()>>) {
    for t in tasks {
        let _ = t.await;
    }
}
