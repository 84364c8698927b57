//! `group --decrypt`: the group scenario with the SDK at both ends, to show what the clients
//! pay. Member 0's SDK creates the group, adds the others and sends `messages` group
//! messages keeping `window` unanswered (Megolm: one encryption per message, and the
//! session key to every member device over Olm before the first); `online_share` of the
//! others receive through the SDK, which decrypts each message and acknowledges on its own
//! (`auto_ack`). The tracker counts the decrypted stamps, one stream per member.
//!
//! The figure this adds is `client_cpu_us_per_delivery`: this process's CPU over the message
//! phase per decrypted delivery (the receivers' decryption, QUIC and framing, and the
//! sender's share). Set it beside the frame-level run's (`group` without `--decrypt`) for the
//! cost of decryption alone.

use super::{cpu_between, lock, Knobs, Run, RunClock, Under};
use crate::fleet::{connect_all, register_users, run_prefix};
use crate::payload::{self, Stamp};
use crate::tracker::Tracker;
use hdrhistogram::Histogram;
use missive_client::{Client, Event, EventStream};
use missive_proto::{GroupId, MAX_USERS_PER_CHANGE};
use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tokio::sync::watch;

/// How long every answered message may take to reach every online member after the last
/// `Sent` before the remainder counts as lost.
const DRAIN_TIMEOUT: Duration = Duration::from_secs(60);

/// Runs the scenario.
pub async fn run(
    under: &mut Under<'_>,
    knobs: &Knobs,
    tracker: Arc<Mutex<Tracker>>,
) -> Result<Run, String> {
    let n = knobs.clients.max(2);
    let online = super::group::online_count(n, knobs.online_share);
    let m = super::group::message_count(knobs)?;
    if knobs.senders > 1 {
        return Err("--decrypt has one sender (member 0): leave --senders out".into());
    }
    let users = register_users(&under.target, &run_prefix("group"), n).await?;
    let (owner, owner_events) = Client::connect(users[0].config.clone())
        .await
        .map_err(|e| format!("connect the sender: {e}"))?;
    let group = create_group(&owner, &users).await?;
    let receipts = tokio::spawn(count_receipts(owner_events));

    let (stop_tx, stop_rx) = watch::channel(false);
    let clock = RunClock(Instant::now());
    let mut clients = Vec::with_capacity(online);
    let mut receivers = Vec::with_capacity(online);
    for (member, (client, events)) in connect_all(&users[1..=online])
        .await?
        .into_iter()
        .enumerate()
    {
        clients.push(client);
        receivers.push(tokio::spawn(receive(
            member as u32,
            events,
            tracker.clone(),
            clock,
            stop_rx.clone(),
        )));
    }

    let cpu_start = under.server_cpu_seconds();
    let bench_cpu_start = crate::edge_process::cpu_seconds(std::process::id());
    let delivered_before = lock(&tracker).delivered;
    let send_start = clock.now_us();
    let mut sent_latency_us = Histogram::<u64>::new_with_bounds(1, 3_600_000_000, 3)
        .expect("static histogram bounds are valid");
    let mut first_sent_ms = 0.0;
    let mut rejected = 0u64;
    let mut inflight = tokio::task::JoinSet::new();
    let mut seq = 0u64;
    while seq < m || !inflight.is_empty() {
        if seq < m && inflight.len() < knobs.window.max(1) {
            let stamp = Stamp {
                stream: 0,
                seq,
                sent_us: clock.now_us(),
            };
            lock(&tracker).on_sent();
            let send = owner.send_group(group, payload::encode(stamp, knobs.size));
            let at = Instant::now();
            inflight.spawn(async move { (seq, at, send.await) });
            seq += 1;
            continue;
        }
        let Some(joined) = inflight.join_next().await else {
            break;
        };
        let (seq, at, result) = joined.map_err(|e| e.to_string())?;
        match result {
            Ok(_) => {
                let us = (at.elapsed().as_micros() as u64).max(1);
                let _ = sent_latency_us.record(us);
                if seq == 0 {
                    first_sent_ms = us as f64 / 1000.0;
                }
                let mut t = lock(&tracker);
                for member in 0..online as u32 {
                    t.on_acked(member, seq);
                }
            }
            Err(e) => {
                if rejected == 0 {
                    eprintln!("missive-bench: group send {seq} failed: {e}");
                }
                rejected += 1;
            }
        }
    }
    let last_sent_us = clock.now_us();

    let drain_deadline = Instant::now() + DRAIN_TIMEOUT;
    while lock(&tracker).lost() > 0 && Instant::now() < drain_deadline {
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let last_us = clock.now_us();
    let message_phase_cpu_s = cpu_between(cpu_start, under.server_cpu_seconds());
    let bench_cpu = cpu_between(
        bench_cpu_start,
        crate::edge_process::cpu_seconds(std::process::id()),
    );
    let delivered = lock(&tracker).delivered - delivered_before;
    // Stray duplicates get a moment to show, then everyone closes.
    tokio::time::sleep(Duration::from_millis(200)).await;
    let _ = stop_tx.send(true);
    for r in receivers {
        r.await.map_err(|e| e.to_string())?;
    }
    clients.push(owner);
    super::close_all(clients, &tracker).await;
    let receipts = receipts.await.map_err(|e| e.to_string())?;

    let delivery_s = ((last_us - send_start) as f64 / 1e6).max(1e-9);
    let ms = |q: f64| sent_latency_us.value_at_quantile(q) as f64 / 1000.0;
    let mut extra = BTreeMap::new();
    extra.insert("members".into(), n as f64);
    extra.insert("online".into(), online as f64);
    extra.insert("group_msgs_sent".into(), m as f64);
    extra.insert("group_msgs_failed".into(), rejected as f64);
    extra.insert(
        "member_deliveries_per_s".into(),
        delivered as f64 / delivery_s,
    );
    extra.insert("sent_p50_ms".into(), ms(0.5));
    extra.insert("sent_p99_ms".into(), ms(0.99));
    extra.insert("first_sent_ms".into(), first_sent_ms);
    extra.insert("group_receipts_to_sender".into(), receipts as f64);
    if let (Some(cpu), true) = (message_phase_cpu_s, m > 0) {
        extra.insert("server_cpu_us_per_group_msg".into(), cpu * 1e6 / m as f64);
    }
    if let (Some(cpu), true) = (bench_cpu, delivered > 0) {
        extra.insert("client_cpu_s".into(), cpu);
        extra.insert(
            "client_cpu_us_per_delivery".into(),
            cpu * 1e6 / delivered as f64,
        );
    }
    Ok(Run {
        tracker,
        duration: Duration::from_micros(last_us.max(last_sent_us) - send_start),
        extra,
        message_phase_cpu_s,
    })
}

/// Member 0 creates the group and adds every other user.
async fn create_group(owner: &Client, users: &[crate::fleet::User]) -> Result<GroupId, String> {
    let group = owner
        .create_group("bench")
        .await
        .map_err(|e| format!("create the group: {e}"))?
        .group;
    for chunk in users[1..].chunks(MAX_USERS_PER_CHANGE) {
        let names = chunk.iter().map(|u| u.name.clone()).collect();
        owner
            .add_members(group, names)
            .await
            .map_err(|e| format!("add members: {e}"))?;
    }
    Ok(group)
}

/// The sender's events: counts the group receipts until its client closes.
async fn count_receipts(mut events: EventStream) -> u64 {
    let mut receipts = 0;
    while let Some(ev) = events.next().await {
        if matches!(ev, Event::GroupReceipt { .. }) {
            receipts += 1;
        }
    }
    receipts
}

/// One online member: each decrypted group message's stamp goes to the tracker as stream
/// `member` (the SDK acknowledges on its own).
async fn receive(
    member: u32,
    mut events: EventStream,
    tracker: Arc<Mutex<Tracker>>,
    clock: RunClock,
    mut stop: watch::Receiver<bool>,
) {
    loop {
        tokio::select! {
            ev = events.next() => match ev {
                Some(Event::GroupMessage { text, .. }) => {
                    if let Some(stamp) = payload::decode(&text) {
                        lock(&tracker).on_delivered(Stamp { stream: member, ..stamp }, clock.now_us());
                    }
                }
                Some(_) => {}
                None => break,
            },
            _ = stop.changed() => break,
        }
    }
}
