//! `offline`: recipients are offline while senders queue `messages` (each sender keeping
//! `window` unacknowledged); then the recipients connect and drain. Reports the accept rate
//! while queueing and the catch-up (drain) rate.

use super::{close_all, cpu_between, lock, send_stream, Knobs, Run, RunClock, Under, Until};
use crate::fleet::{connect_all, register_users, run_prefix};
use crate::payload;
use crate::tracker::Tracker;
use missive_client::Event;
use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// Longest the drain may take before the remainder counts as lost.
const DRAIN_TIMEOUT: Duration = Duration::from_secs(120);

/// Runs the scenario.
pub async fn run(
    under: &mut Under<'_>,
    knobs: &Knobs,
    tracker: Arc<Mutex<Tracker>>,
) -> Result<Run, String> {
    let pairs = (knobs.clients / 2).max(1);
    let prefix = run_prefix("offline");
    let senders = register_users(&under.target, &format!("{prefix}s"), pairs).await?;
    let recipients = register_users(&under.target, &format!("{prefix}r"), pairs).await?;
    let sender_clients = connect_all(&senders).await?;
    let cpu_start = under.server_cpu_seconds();
    let clock = RunClock(Instant::now());

    // Phase 1: queue.
    let per_sender = knobs.messages.div_ceil(pairs as u64);
    let mut tasks = Vec::new();
    for (i, (client, _)) in sender_clients.iter().enumerate() {
        tasks.push(tokio::spawn(send_stream(
            client.clone(),
            recipients[i].name.clone(),
            i as u32,
            Until::Count(per_sender),
            None,
            knobs.window,
            knobs.size,
            tracker.clone(),
            clock,
        )));
    }
    for t in tasks {
        let _ = t.await;
    }
    let queue_time = clock.0.elapsed();
    let queued = lock(&tracker).acked();

    // Phase 2: recipients connect and drain.
    let drain_start = Instant::now();
    let recipient_clients = connect_all(&recipients).await?;
    let mut drains = Vec::new();
    let mut clients_only = Vec::new();
    for (client, mut events) in recipient_clients {
        let tracker = tracker.clone();
        drains.push(tokio::spawn(async move {
            let deadline = tokio::time::Instant::now() + DRAIN_TIMEOUT;
            let mut got = 0u64;
            while got < per_sender {
                match tokio::time::timeout_at(deadline, events.next()).await {
                    Ok(Some(Event::Message { text, .. })) => {
                        if let Some(stamp) = payload::decode(&text) {
                            lock(&tracker).on_delivered(stamp, clock.now_us());
                            got += 1;
                        }
                    }
                    Ok(Some(_)) => {}
                    Ok(None) | Err(_) => break,
                }
            }
        }));
        clients_only.push(client);
    }
    for d in drains {
        let _ = d.await;
    }
    let drain_time = drain_start.elapsed();
    // Includes the recipients' logins: their drains start while the others still connect.
    let message_phase_cpu_s = cpu_between(cpu_start, under.server_cpu_seconds());
    close_all(
        sender_clients
            .iter()
            .map(|(c, _)| c.clone())
            .chain(clients_only),
        &tracker,
    )
    .await;
    let mut extra = BTreeMap::new();
    extra.insert("queued".into(), queued as f64);
    extra.insert("queue_s".into(), queue_time.as_secs_f64());
    extra.insert(
        "accept_msgs_per_s".into(),
        queued as f64 / queue_time.as_secs_f64().max(1e-9),
    );
    extra.insert("drain_s".into(), drain_time.as_secs_f64());
    extra.insert(
        "drain_msgs_per_s".into(),
        lock(&tracker).delivered as f64 / drain_time.as_secs_f64().max(1e-9),
    );
    Ok(Run {
        tracker,
        duration: queue_time + drain_time,
        extra,
        message_phase_cpu_s,
    })
}
