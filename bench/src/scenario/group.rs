//! `group`: the edge's group fan-out. `clients` members are registered; member 0 creates a
//! group and adds the others (in chunks of [`MAX_USERS_PER_CHANGE`]); a share of the others
//! (`online_share`) log in and receive, acknowledging cumulatively; the first `senders`
//! members (1 by default) send `messages` group messages between them, each keeping `window`
//! unanswered.
//!
//! Frame-level connections ([`crate::raw`]) carry the group part: the bench counts the
//! edge's deliveries without decrypting them (the body is a bench stamp, not a Megolm
//! ciphertext; the edge never reads it either way). Each (receiving member, sender) pair is
//! one tracker stream: a message answered `Sent` is owed once to every receiving member, and
//! a member that misses it, gets it twice or out of its sender's order shows in the report.
//! Senders are online members too; they acknowledge what the other senders send, and those
//! deliveries are not counted. Offline members' cursors
//! hold every message in the group's log, so the store's growth per message
//! (`stored_bytes_per_group_msg`, keys and values, from the edge's admin `stats`) is what one
//! message costs a group that is mostly offline.

use super::{cpu_between, lock, Knobs, Run, RunClock, Under};
use crate::fleet::{register_users, run_prefix};
use crate::payload::{self, Stamp};
use crate::raw::{self, Acker, RawReader, RawWriter, Received};
use crate::tracker::Tracker;
use hdrhistogram::Histogram;
use missive_proto::{
    Bye, ClientMsgId, Frame, GroupAnswerKind, GroupId, GroupOp, GroupRequest, GroupSend, Payload,
    MAX_USERS_PER_CHANGE,
};
use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tokio::sync::{oneshot, watch, Semaphore};

/// A member acknowledges after this many deliveries (the edge's default window is 256), and
/// whenever its connection goes quiet for [`IDLE`].
const ACK_EVERY: u64 = 64;
/// Quiet time after which a member acknowledges what it has.
const IDLE: Duration = Duration::from_millis(2);
/// How long every answered message may take to reach every online member after the last
/// `Sent` before the remainder counts as lost. Below the edge's default idle timeout (60 s):
/// a connection quiet for that long is closed, and the members' final acks need theirs.
const DRAIN_TIMEOUT: Duration = Duration::from_secs(30);
/// How long the sends may wait for their answers after the last one was written.
const ANSWER_TIMEOUT: Duration = Duration::from_secs(60);
/// Quiet time that ends a member's catch-up of the membership events before the run.
const SETTLE_QUIET: Duration = Duration::from_millis(300);
/// How long a closing connection waits for the edge's `Bye`.
const BYE_TIMEOUT: Duration = Duration::from_secs(10);

/// Online members for `members` and a share: at least one, never the sender.
pub fn online_count(members: usize, share: f64) -> usize {
    let wanted = (members as f64 * share).round() as usize;
    wanted.clamp(1, members.saturating_sub(1).max(1))
}

/// The messages a group run sends: a fixed count, above 0.
pub fn message_count(knobs: &Knobs) -> Result<u64, String> {
    if knobs.messages == 0 || knobs.seconds.is_some() {
        return Err("group sends a fixed count: give --messages above 0 (not --seconds)".into());
    }
    Ok(knobs.messages)
}

/// Runs the scenario.
pub async fn run(
    under: &mut Under<'_>,
    knobs: &Knobs,
    tracker: Arc<Mutex<Tracker>>,
) -> Result<Run, String> {
    let n = knobs.clients.max(2);
    // Every sender is a member, and at least one member receives.
    let senders = knobs.senders.clamp(1, n - 1);
    let online = online_count(n, knobs.online_share).min(n - senders);
    let m = message_count(knobs)?;
    let users = register_users(&under.target, &run_prefix("group"), n).await?;
    let (mut owner_r, mut owner_w) = raw::login(&users[0]).await?;
    let mut owner_acks = Acker::new(ACK_EVERY);
    let (group, epoch) = create_group(&mut owner_r, &mut owner_w, &mut owner_acks, &users).await?;
    // The owner's membership events (its only deliveries: a sender gets no copy of its own
    // group messages) are acknowledged before the run.
    if let Some(a) = owner_acks.idle() {
        owner_w.send(&[a]).await?;
    }

    // The online members log in and catch up with the membership events, so that the data
    // dir's baseline below holds their acks.
    // The other senders log in with them.
    let mut conns = raw::login_all(&users[1..senders + online]).await?;
    let settling: Vec<_> = conns
        .drain(..)
        .map(|(mut r, mut w)| {
            tokio::spawn(async move {
                let mut acks = Acker::new(ACK_EVERY);
                loop {
                    match r.recv_within(SETTLE_QUIET).await? {
                        Received::Frame(Frame::GroupDeliver(g)) => {
                            acks.delivered_in(g.group, g.deliver.seq.0);
                        }
                        Received::Frame(_) => {}
                        Received::Silence => break,
                        Received::Closed => return Err("the edge closed a member".to_owned()),
                    }
                }
                if let Some(a) = acks.idle() {
                    w.send(&[a]).await?;
                }
                Ok::<_, String>((r, w))
            })
        })
        .collect();
    for s in settling {
        conns.push(s.await.map_err(|e| e.to_string())??);
    }
    let receiving = conns.split_off(senders - 1);
    let mut sender_conns = vec![(owner_r, owner_w)];
    sender_conns.extend(conns);

    let disk_start = under.spawned.as_ref().map(|e| e.data_dir_bytes());
    let stored_start = under
        .spawned
        .as_ref()
        .map(|e| e.stored_bytes())
        .transpose()?;
    let cpu_start = under.server_cpu_seconds();
    let bench_cpu_start = crate::edge_process::cpu_seconds(std::process::id());
    let clock = RunClock(Instant::now());
    let (stop_tx, stop_rx) = watch::channel(false);
    let last_delivery_us = Arc::new(std::sync::atomic::AtomicU64::new(0));

    let receivers: Vec<_> = receiving
        .into_iter()
        .enumerate()
        .map(|(i, (r, w))| {
            tokio::spawn(receive(
                (i as u32, senders as u32),
                r,
                w,
                tracker.clone(),
                clock,
                stop_rx.clone(),
                last_delivery_us.clone(),
            ))
        })
        .collect();

    // Each sender's writer keeps `window` unanswered; its reader takes the answers.
    let sending: Vec<Sender> = sender_conns
        .into_iter()
        .enumerate()
        .map(|(k, (r, w))| {
            let share = m / senders as u64 + u64::from((k as u64) < m % senders as u64);
            Sender::start(
                SenderShared {
                    window: Arc::new(Semaphore::new(knobs.window.max(1))),
                    inflight: Arc::default(),
                    tracker: tracker.clone(),
                    online: online as u32,
                    stream: k as u32,
                    streams: senders as u32,
                    expected: share,
                    clock,
                },
                (r, w),
                (group, epoch, knobs.size),
                stop_rx.clone(),
            )
        })
        .collect();
    let mut send_done_us = 0;
    let mut last_sent_us = 0;
    let mut finishing = Vec::with_capacity(senders);
    for mut s in sending {
        let (writer, done_us, answered_us) = match s.wait_answered(clock).await {
            Ok(x) => x,
            Err(e) => {
                let _ = stop_tx.send(true);
                return Err(e);
            }
        };
        send_done_us = send_done_us.max(done_us);
        last_sent_us = last_sent_us.max(answered_us);
        finishing.push((writer, s.reader));
    }

    // Every answered message must reach every online member.
    let drain_deadline = Instant::now() + DRAIN_TIMEOUT;
    while lock(&tracker).lost() > 0 && Instant::now() < drain_deadline {
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let last_us = last_delivery_us.load(std::sync::atomic::Ordering::Relaxed);
    let message_phase_cpu_s = cpu_between(cpu_start, under.server_cpu_seconds());
    let bench_cpu = cpu_between(
        bench_cpu_start,
        crate::edge_process::cpu_seconds(std::process::id()),
    );
    // Give stray duplicates a moment to show up, then every member acknowledges what it has
    // and closes; the edge answers `Bye` once those acks are applied.
    tokio::time::sleep(Duration::from_millis(200)).await;
    let _ = stop_tx.send(true);
    let mut closed_early = Vec::new();
    for (i, r) in receivers.into_iter().enumerate() {
        if let Err(e) = r.await.map_err(|e| e.to_string())? {
            closed_early.push(format!("member {}: {e}", i + 1));
        }
    }
    let disk_end = under.spawned.as_ref().map(|e| e.data_dir_bytes());
    let stored_end = under
        .spawned
        .as_ref()
        .map(|e| e.stored_bytes())
        .transpose()?;
    // The senders have been quiet since their last send; if the edge closed one meanwhile,
    // its reader has already ended.
    let mut sender = SenderOutcome::default();
    for (writer, reader) in finishing {
        let _ = writer.lock().await.send(&[Bye {}.into()]).await;
        sender.add(reader.await.map_err(|e| e.to_string())??);
    }
    if let Some(first) = closed_early.first() {
        eprintln!(
            "missive-bench: {} member connection(s) failed; first: {first}",
            closed_early.len()
        );
    }
    if let Some((code, message)) = &sender.first_rejection {
        eprintln!(
            "missive-bench: {} group send(s) rejected; first: code {code} {message:?}",
            sender.rejected
        );
    }

    let delivered = lock(&tracker).delivered;
    let delivery_s = (last_us as f64 / 1e6).max(1e-9);
    let sending_s = (last_sent_us as f64 / 1e6).max(1e-9);
    let ms = |q: f64| sender.sent_latency_us.value_at_quantile(q) as f64 / 1000.0;
    let mut extra = BTreeMap::new();
    extra.insert("members".into(), n as f64);
    extra.insert("online".into(), online as f64);
    extra.insert("senders".into(), senders as f64);
    extra.insert("group_msgs_sent".into(), m as f64);
    extra.insert("group_msgs_answered_sent".into(), sender.answered as f64);
    extra.insert("group_msgs_rejected".into(), sender.rejected as f64);
    extra.insert(
        "member_connections_failed".into(),
        closed_early.len() as f64,
    );
    extra.insert(
        "member_deliveries_per_s".into(),
        delivered as f64 / delivery_s,
    );
    extra.insert(
        "group_msgs_per_s".into(),
        sender.answered as f64 / sending_s,
    );
    extra.insert("sent_p50_ms".into(), ms(0.5));
    extra.insert("sent_p99_ms".into(), ms(0.99));
    extra.insert("sent_p999_ms".into(), ms(0.999));
    extra.insert("send_write_s".into(), send_done_us as f64 / 1e6);
    extra.insert("group_receipts_to_sender".into(), sender.receipts as f64);
    if let (Some(start), Some(end), true) = (disk_start, disk_end, m > 0) {
        extra.insert(
            "disk_bytes_per_group_msg".into(),
            (end as f64 - start as f64) / m as f64,
        );
        extra.insert("data_dir_bytes_after".into(), end as f64);
    }
    if let (Some(start), Some(end), true) = (stored_start, stored_end, m > 0) {
        extra.insert(
            "stored_bytes_per_group_msg".into(),
            (end as f64 - start as f64) / m as f64,
        );
    }
    if let (Some(cpu), true) = (message_phase_cpu_s, m > 0) {
        extra.insert("server_cpu_us_per_group_msg".into(), cpu * 1e6 / m as f64);
    }
    if let Some(cpu) = bench_cpu {
        extra.insert("client_cpu_s".into(), cpu);
    }
    Ok(Run {
        tracker,
        duration: Duration::from_micros(last_us.max(last_sent_us)),
        extra,
        message_phase_cpu_s,
    })
}

/// A group message's id: the run's tag and the message's seq.
fn msg_id(tag: u64, seq: u64) -> ClientMsgId {
    let mut b = [0u8; 16];
    b[..8].copy_from_slice(&tag.to_be_bytes());
    b[8..].copy_from_slice(&seq.to_be_bytes());
    ClientMsgId(b)
}

fn lock_map<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

/// Member 0 creates the group and adds every other user; returns the group and its epoch
/// after the last addition.
async fn create_group(
    r: &mut RawReader,
    w: &mut RawWriter,
    acks: &mut Acker,
    users: &[crate::fleet::User],
) -> Result<(GroupId, u64), String> {
    let created = ask(
        r,
        w,
        acks,
        1,
        GroupOp::Create {
            name: "bench".into(),
        },
    )
    .await?;
    let (group, mut epoch) = (created.group, created.epoch);
    for (i, chunk) in users[1..].chunks(MAX_USERS_PER_CHANGE).enumerate() {
        let users = chunk.iter().map(|u| u.name.clone()).collect();
        let info = ask(r, w, acks, 2 + i as u32, GroupOp::Add { group, users }).await?;
        epoch = info.epoch;
        if info.members.len() != 1 + (i * MAX_USERS_PER_CHANGE + chunk.len()) {
            return Err(format!(
                "after adding {} users the group has {} members",
                i * MAX_USERS_PER_CHANGE + chunk.len(),
                info.members.len()
            ));
        }
    }
    Ok((group, epoch))
}

/// Sends a group request and waits for its answer (the group's info), acknowledging the
/// owner's own deliveries (membership events) meanwhile.
async fn ask(
    r: &mut RawReader,
    w: &mut RawWriter,
    acks: &mut Acker,
    request_id: u32,
    op: GroupOp,
) -> Result<missive_proto::GroupInfo, String> {
    w.send(&[GroupRequest { request_id, op }.into()]).await?;
    loop {
        match r.recv().await? {
            Some(Frame::GroupAnswer(a)) if a.request_id == request_id => {
                return match a.answer {
                    GroupAnswerKind::Info(i) => Ok(i),
                    other => Err(format!("group request {request_id}: answered {other:?}")),
                }
            }
            Some(Frame::RequestRefused(x)) if x.request_id == request_id => {
                return Err(format!(
                    "group request {request_id} refused: code {} {:?}",
                    x.code, x.message
                ))
            }
            Some(Frame::GroupDeliver(g)) => {
                if let Some(a) = acks.delivered_in(g.group, g.deliver.seq.0) {
                    w.send(&[a]).await?;
                }
            }
            Some(_) => {}
            None => return Err("the edge closed the owner's connection".into()),
        }
    }
}

/// What a sender's writer and reader share with the rest of the run.
struct SenderShared {
    window: Arc<Semaphore>,
    inflight: Arc<Mutex<HashMap<ClientMsgId, (u64, Instant)>>>,
    tracker: Arc<Mutex<Tracker>>,
    /// Receiving members.
    online: u32,
    /// This sender's index, the stamp's stream.
    stream: u32,
    /// Senders in all.
    streams: u32,
    /// Messages this sender sends.
    expected: u64,
    clock: RunClock,
}

/// One sending member: a writer task keeping `window` sends unanswered, and a reader task
/// taking the answers.
struct Sender {
    writer: tokio::task::JoinHandle<Result<(), String>>,
    conn: Arc<tokio::sync::Mutex<RawWriter>>,
    reader: tokio::task::JoinHandle<Result<SenderOutcome, String>>,
    all_answered: oneshot::Receiver<u64>,
    inflight: Arc<Mutex<HashMap<ClientMsgId, (u64, Instant)>>>,
    expected: u64,
}

impl Sender {
    fn start(
        s: SenderShared,
        (r, w): (RawReader, RawWriter),
        (group, epoch, size): (GroupId, u64, usize),
        stop: watch::Receiver<bool>,
    ) -> Self {
        let conn = Arc::new(tokio::sync::Mutex::new(w));
        let (all_answered_tx, all_answered) = oneshot::channel();
        let tag: u64 = rand::random();
        let (window, inflight, tracker) = (s.window.clone(), s.inflight.clone(), s.tracker.clone());
        let (stream, expected, clock) = (s.stream, s.expected, s.clock);
        let reader = tokio::spawn(read_answers(r, conn.clone(), s, all_answered_tx, stop));
        let writer = {
            let (conn, inflight) = (conn.clone(), inflight.clone());
            tokio::spawn(async move {
                for seq in 0..expected {
                    window.acquire().await.map_err(|e| e.to_string())?.forget();
                    let stamp = Stamp {
                        stream,
                        seq,
                        sent_us: clock.now_us(),
                    };
                    let id = msg_id(tag, seq);
                    lock_map(&inflight).insert(id, (seq, Instant::now()));
                    lock(&tracker).on_sent();
                    let send = GroupSend {
                        client_msg_id: id,
                        group,
                        epoch,
                        body: payload::encode(stamp, size).into_bytes(),
                        expires_in_secs: 0,
                    };
                    conn.lock().await.send(&[send.into()]).await.map_err(|e| {
                        format!("sender {stream}'s connection failed after {seq} sends: {e}")
                    })?;
                }
                Ok(())
            })
        };
        Self {
            writer,
            conn,
            reader,
            all_answered,
            inflight,
            expected,
        }
    }

    /// Waits until every send was written and answered: (the connection's writer, µs since
    /// the run's start of the last write, of the last answer).
    async fn wait_answered(
        &mut self,
        clock: RunClock,
    ) -> Result<(Arc<tokio::sync::Mutex<RawWriter>>, u64, u64), String> {
        (&mut self.writer).await.map_err(|e| e.to_string())??;
        let written_us = clock.now_us();
        match tokio::time::timeout(ANSWER_TIMEOUT, &mut self.all_answered).await {
            Ok(Ok(us)) => Ok((self.conn.clone(), written_us, us)),
            Ok(Err(_)) => match (&mut self.reader).await.map_err(|e| e.to_string())? {
                Err(e) => Err(e),
                Ok(_) => Err("a sender's reader ended before every send was answered".into()),
            },
            Err(_) => Err(format!(
                "{} of a sender's {} group sends still unanswered {ANSWER_TIMEOUT:?} after the \
                 last one",
                lock_map(&self.inflight).len(),
                self.expected
            )),
        }
    }
}

/// What the senders' connections saw.
struct SenderOutcome {
    answered: u64,
    rejected: u64,
    first_rejection: Option<(u16, String)>,
    receipts: u64,
    sent_latency_us: Histogram<u64>,
}

impl Default for SenderOutcome {
    fn default() -> Self {
        Self {
            answered: 0,
            rejected: 0,
            first_rejection: None,
            receipts: 0,
            sent_latency_us: Histogram::new_with_bounds(1, 3_600_000_000, 3)
                .expect("static histogram bounds are valid"),
        }
    }
}

impl SenderOutcome {
    /// Adds another sender's outcome to this one.
    fn add(&mut self, other: Self) {
        self.answered += other.answered;
        self.rejected += other.rejected;
        if self.first_rejection.is_none() {
            self.first_rejection = other.first_rejection;
        }
        self.receipts += other.receipts;
        let _ = self.sent_latency_us.add(&other.sent_latency_us);
    }
}

/// Takes a sender's answers: each `Sent` makes the message owed to every receiving member
/// and frees a window slot. Reports on `all_answered` (µs since the run's start) when every
/// send is answered, then keeps reading (the live group receipts) until the edge's `Bye`
/// after `stop`. The other senders' messages are acknowledged, not counted.
async fn read_answers(
    mut r: RawReader,
    w: Arc<tokio::sync::Mutex<RawWriter>>,
    s: SenderShared,
    all_answered: oneshot::Sender<u64>,
    mut stop: watch::Receiver<bool>,
) -> Result<SenderOutcome, String> {
    let mut out = SenderOutcome::default();
    let mut acks = Acker::new(ACK_EVERY);
    let mut all_answered = Some(all_answered);
    if s.expected == 0 {
        if let Some(tx) = all_answered.take() {
            let _ = tx.send(0);
        }
    }
    let mut stopping = false;
    let mut bye_deadline = None;
    loop {
        let frame = if stopping {
            let left = bye_deadline.get_or_insert_with(|| Instant::now() + BYE_TIMEOUT);
            match r
                .recv_within(left.saturating_duration_since(Instant::now()))
                .await?
            {
                Received::Frame(f) => Some(f),
                Received::Closed | Received::Silence => return Ok(out),
            }
        } else {
            tokio::select! {
                f = r.recv() => f?,
                _ = stop.changed() => { stopping = true; continue; }
            }
        };
        let answer = match frame {
            Some(Frame::Sent(x)) => Some((x.client_msg_id, None)),
            Some(Frame::Rejected(x)) => Some((x.client_msg_id, Some((x.code, x.message)))),
            Some(Frame::GroupReceipt(_)) => {
                out.receipts += 1;
                None
            }
            Some(Frame::GroupDeliver(g)) => {
                if let (Some(a), false) = (acks.delivered_in(g.group, g.deliver.seq.0), stopping) {
                    w.lock().await.send(&[a]).await?;
                }
                None
            }
            Some(Frame::Bye(_)) if stopping => return Ok(out),
            Some(Frame::Error(e)) => {
                return Err(format!(
                    "the edge sent a sender Error {{ code: {}, {:?} }} after {} answers",
                    e.code, e.message, out.answered
                ))
            }
            Some(_) => None,
            None if stopping => return Ok(out),
            None => {
                return Err(format!(
                    "the edge closed a sender's connection after {} answers",
                    out.answered
                ))
            }
        };
        let Some((id, refusal)) = answer else {
            continue;
        };
        let Some((seq, at)) = lock_map(&s.inflight).remove(&id) else {
            return Err("the edge answered a group send that was not in flight".into());
        };
        out.answered += 1;
        match refusal {
            None => {
                let _ = out
                    .sent_latency_us
                    .record((at.elapsed().as_micros() as u64).max(1));
                let mut t = lock(&s.tracker);
                for member in 0..s.online {
                    t.on_acked(member * s.streams + s.stream, seq);
                }
            }
            Some(why) => {
                out.rejected += 1;
                out.first_rejection.get_or_insert(why);
            }
        }
        s.window.add_permits(1);
        if out.answered == s.expected {
            if let Some(tx) = all_answered.take() {
                let _ = tx.send(s.clock.now_us());
            }
        }
    }
}

/// One receiving member: counts each group delivery in the tracker as stream
/// `member * senders + sender`,
/// acknowledges cumulatively, and on `stop` acknowledges the rest and closes with `Bye`
/// (the edge answers once the acks are applied). Fails when the edge closes it first.
async fn receive(
    (member, senders): (u32, u32),
    mut r: RawReader,
    mut w: RawWriter,
    tracker: Arc<Mutex<Tracker>>,
    clock: RunClock,
    mut stop: watch::Receiver<bool>,
    last_delivery_us: Arc<std::sync::atomic::AtomicU64>,
) -> Result<(), String> {
    let mut acks = Acker::new(ACK_EVERY);
    // Deliveries go to the tracker in batches (one lock per batch, not per frame).
    let mut batch: Vec<(Stamp, u64)> = Vec::with_capacity(ACK_EVERY as usize);
    let mut closing_deadline: Option<Instant> = None;
    loop {
        let wait = match (closing_deadline, acks.pending()) {
            (Some(d), _) => d.saturating_duration_since(Instant::now()),
            (None, true) => IDLE,
            (None, false) => Duration::from_secs(3600),
        };
        let received = if closing_deadline.is_some() {
            r.recv_within(wait).await?
        } else {
            tokio::select! {
                x = r.recv_within(wait) => x?,
                _ = stop.changed() => {
                    record(&tracker, &mut batch, &last_delivery_us);
                    let mut frames: Vec<Frame> = acks.idle().into_iter().collect();
                    frames.push(Bye {}.into());
                    w.send(&frames).await?;
                    closing_deadline = Some(Instant::now() + BYE_TIMEOUT);
                    continue;
                }
            }
        };
        match received {
            Received::Frame(Frame::GroupDeliver(gd)) => {
                let d = &gd.deliver;
                if let Payload::Group(g) = &d.payload {
                    let stamp = std::str::from_utf8(&g.body)
                        .ok()
                        .and_then(payload::decode)
                        .ok_or("a group delivery without a bench stamp")?;
                    batch.push((
                        Stamp {
                            stream: member * senders + stamp.stream,
                            ..stamp
                        },
                        clock.now_us(),
                    ));
                }
                if let Some(a) = acks.delivered_in(gd.group, d.seq.0) {
                    record(&tracker, &mut batch, &last_delivery_us);
                    if closing_deadline.is_none() {
                        w.send(&[a]).await?;
                    }
                }
            }
            Received::Frame(Frame::Bye(_)) if closing_deadline.is_some() => {
                record(&tracker, &mut batch, &last_delivery_us);
                return Ok(());
            }
            Received::Frame(Frame::Error(e)) => {
                record(&tracker, &mut batch, &last_delivery_us);
                return Err(format!("Error {{ code: {}, {:?} }}", e.code, e.message));
            }
            Received::Frame(_) => {}
            Received::Silence => {
                record(&tracker, &mut batch, &last_delivery_us);
                if closing_deadline.is_some() {
                    return Err("no Bye from the edge".into());
                }
                if let Some(a) = acks.idle() {
                    w.send(&[a]).await?;
                }
            }
            Received::Closed => {
                record(&tracker, &mut batch, &last_delivery_us);
                return if closing_deadline.is_some() {
                    Ok(())
                } else {
                    Err("the edge closed the connection".into())
                };
            }
        }
    }
}

/// Puts a member's batch of deliveries in the tracker and moves the run's last delivery time.
fn record(
    tracker: &Mutex<Tracker>,
    batch: &mut Vec<(Stamp, u64)>,
    last_delivery_us: &std::sync::atomic::AtomicU64,
) {
    let Some(last) = batch.iter().map(|(_, at)| *at).max() else {
        return;
    };
    let mut t = lock(tracker);
    for (stamp, at) in batch.drain(..) {
        t.on_delivered(stamp, at);
    }
    last_delivery_us.fetch_max(last, std::sync::atomic::Ordering::Relaxed);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn online_members_are_a_share_never_the_sender_and_at_least_one() {
        assert_eq!(online_count(256, 0.2), 51);
        assert_eq!(online_count(1024, 0.2), 205);
        assert_eq!(online_count(2, 0.2), 1);
        assert_eq!(online_count(10, 1.0), 9, "member 0 sends");
    }

    #[test]
    fn message_ids_differ_by_seq_and_by_run() {
        assert_ne!(msg_id(1, 0), msg_id(1, 1));
        assert_ne!(msg_id(1, 0), msg_id(2, 0));
    }
}
