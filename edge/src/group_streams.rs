//! The group logs one session reads (protocol version 6): a stream per group, each read in
//! order from the device's cursor, fed by live pushes when it is caught up, and acknowledged
//! by the client with `AckGroup`. A plain state machine like the session that owns it: it
//! says what to read, send and store as [`GroupOut`]s.
//!
//! Delivery rule, per stream as for the mailbox: items pushed live are delivered directly
//! only when no read of that stream is outstanding and nothing older may wait in the log;
//! pushes that arrive while the positions are being loaded are held and replayed after.
//! The sending device skips its own messages; its cursor moves past them with the acks
//! around them.
//!
//! Cursor writes: the window opens as soon as the client acknowledges, but the durable
//! cursor is written at most once per [`CURSOR_WRITE_INTERVAL`] per stream (the first write
//! after a quiet spell goes at once). A client acknowledging every few deliveries would
//! otherwise cost the store one write per ack and member: 200 members reading a busy group
//! are tens of thousands of writes a second. What a crash loses is at most that interval of
//! acknowledgements, delivered again on the next connection (the SDK drops what it has seen);
//! a `Bye`, a drain and a closing connection write what is owed at once.

use missive_proto::{Deliver, DeviceId, Frame, GroupDeliver, GroupId, Payload, ServerSeq};
use missive_storage::{LogPosition, StoredItem};
use std::collections::{HashMap, VecDeque};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// Least time between two cursor writes of one group stream.
pub const CURSOR_WRITE_INTERVAL: Duration = Duration::from_millis(100);

/// An item of a group's log as it was just stored, with its `GroupDeliver` frame encoded
/// once for the sessions of all its readers (a 1,024-member group's message would otherwise
/// be copied and encoded once per online member).
#[derive(Debug, PartialEq, Eq)]
pub struct LiveItem {
    /// The sender.
    pub from: String,
    /// The sending device.
    pub from_device: DeviceId,
    /// Body bytes (what it counts against the delivery window).
    pub body_bytes: usize,
    /// The frame's kind, for the metrics.
    pub kind: u8,
    /// The encoded frame, header included.
    pub wire: Vec<u8>,
}

impl LiveItem {
    /// `item`, stored as `seq` of `group`'s log, encoded once.
    pub fn new(
        group: GroupId,
        seq: ServerSeq,
        item: &StoredItem,
    ) -> Result<Self, missive_proto::ProtoError> {
        let frame: Frame = GroupDeliver {
            group,
            deliver: Deliver {
                seq,
                from: item.from.clone(),
                from_device: item.from_device,
                client_msg_id: item.client_msg_id,
                server_ts_ms: item.server_ts_ms,
                payload: item.payload.clone(),
            },
        }
        .into();
        Ok(Self {
            from: item.from.clone(),
            from_device: item.from_device,
            body_bytes: body_bytes(item),
            kind: frame.kind(),
            wire: missive_proto::encode_to_vec(&frame)?,
        })
    }
}

/// An item a stream delivers: read from the log, or pushed live (already encoded).
#[derive(Debug, Clone)]
pub enum LogItem {
    /// Read from storage.
    Stored(StoredItem),
    /// Pushed by the commit listener.
    Live(Arc<LiveItem>),
}

impl LogItem {
    fn sender(&self) -> (&str, DeviceId) {
        match self {
            Self::Stored(i) => (&i.from, i.from_device),
            Self::Live(l) => (&l.from, l.from_device),
        }
    }

    fn body_bytes(&self) -> usize {
        match self {
            Self::Stored(i) => body_bytes(i),
            Self::Live(l) => l.body_bytes,
        }
    }
}

/// What the group streams ask of the session.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum GroupOut {
    /// Write this frame.
    Deliver(GroupDeliver),
    /// Write this frame, encoded already.
    DeliverEncoded(Arc<LiveItem>),
    /// Write the device's cursor in `group` as `up_to`; answer with `acked`.
    Ack {
        /// The group.
        group: GroupId,
        /// The new cursor.
        up_to: ServerSeq,
    },
    /// Read `group`'s log `from..=until`; answer with `read_done`.
    Read {
        /// The group.
        group: GroupId,
        /// First seq.
        from: ServerSeq,
        /// Last seq the device may read.
        until: ServerSeq,
        /// Most items.
        limit: usize,
        /// Body bytes after which the read may stop.
        max_bytes: usize,
    },
    /// Load where the device stands in each of its groups; answer with `positions`.
    LoadPositions,
}

/// Where the device's mailbox stands, as the group streams must know it.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct MailboxShare {
    /// Mailbox items delivered and not acknowledged.
    pub unacked: usize,
    /// Their body bytes.
    pub bytes: usize,
    /// The mailbox may hold items not delivered yet (a read is due or outstanding). The
    /// keys of a group's messages travel in the mailbox (Olm) before them: while the mailbox
    /// is behind, the group streams wait, so a message does not overtake its key.
    pub behind: bool,
}

/// The delivery window shared with the mailbox: unacknowledged items and bytes, at most.
#[derive(Debug, Clone, Copy)]
pub struct Window {
    /// Items.
    pub count: usize,
    /// Body bytes.
    pub bytes: usize,
}

#[derive(Debug, Default)]
struct Stream {
    /// The next seq to deliver.
    next: u64,
    /// The last seq the device may read.
    until: u64,
    /// The log may hold items from `next` on that were not delivered.
    backlog: bool,
    reading: bool,
    read_max_bytes: usize,
    /// Pushes that came during a read, replayed after it.
    held: Vec<(u64, LogItem)>,
    /// Delivered and not acknowledged: (seq, body bytes).
    unacked: VecDeque<(u64, usize)>,
    /// The highest of this device's own messages skipped.
    skipped_through: u64,
    /// A cursor write is being applied.
    ack_in_flight: bool,
    /// Acknowledged and not written yet.
    pending_ack: Option<u64>,
    /// When the last cursor write went out.
    last_write: Option<Instant>,
    /// The highest cursor written (or being written).
    written: u64,
}

impl Stream {
    /// When the pending cursor write may go out, if one is owed and none is in flight. (A
    /// stream's first write goes out at once, so an owed write always follows an earlier one.)
    fn write_due_at(&self) -> Option<Instant> {
        match (self.pending_ack, self.ack_in_flight) {
            (Some(_), false) => self.last_write.map(|t| t + CURSOR_WRITE_INTERVAL),
            _ => None,
        }
    }
}

/// Every group stream of one session.
#[derive(Debug)]
pub struct GroupStreams {
    device: (String, DeviceId),
    window: Window,
    streams: HashMap<GroupId, Stream>,
    loading: bool,
    reload: bool,
    held: Vec<(GroupId, u64, LogItem)>,
    unacked: usize,
    unacked_bytes: usize,
    /// Closing: owed cursors are written at once, not paced.
    closing: bool,
    /// A log read is outstanding (one at a time, so what reads bring in stays within one
    /// delivery window however many groups have a backlog).
    read_in_flight: bool,
    /// The group read last: the next read goes to the next group with a backlog after it.
    last_read: Option<GroupId>,
}

fn body_bytes(item: &StoredItem) -> usize {
    match &item.payload {
        Payload::Group(g) => g.body.len(),
        _ => 0,
    }
}

impl GroupStreams {
    /// Streams of `user`'s `device`, within `window` (shared with the mailbox).
    pub fn new(user: String, device: DeviceId, window: Window) -> Self {
        Self {
            device: (user, device),
            window,
            streams: HashMap::new(),
            loading: false,
            reload: false,
            held: Vec::new(),
            unacked: 0,
            unacked_bytes: 0,
            closing: false,
            read_in_flight: false,
            last_read: None,
        }
    }

    /// Items delivered and not acknowledged, and their body bytes.
    pub fn unacked(&self) -> (usize, usize) {
        (self.unacked, self.unacked_bytes)
    }

    /// Whether a cursor write is being applied or owed.
    pub fn cursors_owed(&self) -> bool {
        self.streams
            .values()
            .any(|s| s.ack_in_flight || s.pending_ack.is_some())
    }

    /// When [`GroupStreams::write_due`] must run next: the earliest paced cursor write.
    pub fn poll_timeout(&self) -> Option<Instant> {
        self.streams.values().filter_map(Stream::write_due_at).min()
    }

    /// Writes the paced cursors whose time has come.
    pub fn write_due(&mut self, now: Instant, out: &mut Vec<GroupOut>) {
        for (group, s) in &mut self.streams {
            if s.write_due_at().is_some_and(|due| due <= now) {
                Self::write_cursor(s, *group, Some(now), out);
            }
        }
    }

    /// The session closes: every owed cursor is written now, and later acks unpaced.
    pub fn write_all_owed(&mut self, out: &mut Vec<GroupOut>) {
        self.closing = true;
        for (group, s) in &mut self.streams {
            if s.write_due_at().is_some() {
                Self::write_cursor(s, *group, None, out);
            }
        }
    }

    /// The connection is gone: the acknowledged cursors not written yet, for the driver to
    /// write on its way out (writes in flight are already with the store, which applies
    /// these after them).
    pub fn take_unwritten(&mut self) -> Vec<(GroupId, ServerSeq)> {
        self.streams
            .iter_mut()
            .filter_map(|(g, s)| s.pending_ack.take().map(|up_to| (*g, ServerSeq(up_to))))
            .collect()
    }

    /// (Re)loads the positions: at login, and when live pushes were lost.
    pub fn start(&mut self, out: &mut Vec<GroupOut>) {
        if self.loading {
            self.reload = true;
        } else {
            self.loading = true;
            out.push(GroupOut::LoadPositions);
        }
    }

    fn room(&self, mailbox: MailboxShare) -> bool {
        let count = self.unacked + mailbox.unacked;
        let bytes = self.unacked_bytes + mailbox.bytes;
        count == 0 || (count < self.window.count && bytes < self.window.bytes)
    }

    /// The positions loaded by `LoadPositions`.
    pub fn positions(
        &mut self,
        now: Instant,
        positions: Vec<LogPosition>,
        mailbox: MailboxShare,
        out: &mut Vec<GroupOut>,
    ) {
        self.loading = false;
        for p in positions {
            let s = self.streams.entry(p.group).or_insert_with(|| Stream {
                next: p.next.0,
                ..Stream::default()
            });
            s.next = s.next.max(p.next.0);
            s.until = p.until.0;
            s.backlog = s.backlog || s.next < p.head.0;
        }
        for (group, seq, item) in std::mem::take(&mut self.held) {
            self.pushed(now, group, ServerSeq(seq), item, mailbox, out);
        }
        if std::mem::take(&mut self.reload) {
            self.start(out);
        }
        self.pump(mailbox, out);
    }

    /// An item the store just made durable in `group`'s log, for this device's user.
    pub fn pushed(
        &mut self,
        now: Instant,
        group: GroupId,
        seq: ServerSeq,
        item: LogItem,
        mailbox: MailboxShare,
        out: &mut Vec<GroupOut>,
    ) {
        if self.loading {
            self.held.push((group, seq.0, item));
            return;
        }
        let room = self.room(mailbox);
        // A group this device did not read when the positions were loaded: it joined since,
        // and this is its first item.
        let s = self.streams.entry(group).or_insert_with(|| Stream {
            next: seq.0,
            until: u64::MAX,
            ..Stream::default()
        });
        if seq.0 < s.next {
            return;
        }
        if s.reading {
            s.held.push((seq.0, item));
        } else if s.backlog || !room || mailbox.behind {
            s.backlog = true;
        } else {
            self.deliver(now, group, seq.0, item, out);
        }
    }

    fn deliver(
        &mut self,
        now: Instant,
        group: GroupId,
        seq: u64,
        item: LogItem,
        out: &mut Vec<GroupOut>,
    ) {
        let paced = !self.closing;
        let Some(s) = self.streams.get_mut(&group) else {
            return;
        };
        if seq < s.next || seq > s.until {
            return;
        }
        s.next = seq + 1;
        let (from, from_device) = item.sender();
        if from == self.device.0 && from_device == self.device.1 {
            s.skipped_through = seq;
            if s.unacked.is_empty() {
                Self::queue_ack(s, group, seq, paced, now, out);
            }
            return;
        }
        let bytes = item.body_bytes();
        s.unacked.push_back((seq, bytes));
        self.unacked += 1;
        self.unacked_bytes += bytes;
        out.push(match item {
            LogItem::Live(live) => GroupOut::DeliverEncoded(live),
            LogItem::Stored(item) => GroupOut::Deliver(GroupDeliver {
                group,
                deliver: Deliver {
                    seq: ServerSeq(seq),
                    from: item.from,
                    from_device: item.from_device,
                    client_msg_id: item.client_msg_id,
                    server_ts_ms: item.server_ts_ms,
                    payload: item.payload,
                },
            }),
        });
    }

    /// The answer to a `Read` that asked for `requested` items (`Err` when storage failed:
    /// the stream reads again on the next pump).
    pub fn read_done(
        &mut self,
        now: Instant,
        group: GroupId,
        requested: usize,
        result: Result<Vec<(ServerSeq, StoredItem)>, ()>,
        mailbox: MailboxShare,
        out: &mut Vec<GroupOut>,
    ) {
        self.read_in_flight = false;
        let Some(s) = self.streams.get_mut(&group) else {
            return;
        };
        s.reading = false;
        let held = std::mem::take(&mut s.held);
        match result {
            // Read again once the mailbox caught up.
            Ok(_) if mailbox.behind => s.backlog = true,
            Ok(items) => {
                let bytes: usize = items.iter().map(|(_, i)| body_bytes(i)).sum();
                s.backlog =
                    items.len() >= requested || (!items.is_empty() && bytes >= s.read_max_bytes);
                for (seq, item) in items {
                    if !self.room(mailbox) {
                        if let Some(s) = self.streams.get_mut(&group) {
                            s.backlog = true;
                        }
                        break;
                    }
                    self.deliver(now, group, seq.0, LogItem::Stored(item), out);
                }
            }
            Err(()) => s.backlog = true,
        }
        for (seq, item) in held {
            self.pushed(now, group, ServerSeq(seq), item, mailbox, out);
        }
        self.pump(mailbox, out);
    }

    /// The client's `AckGroup`: clamped to what this connection delivered.
    pub fn client_ack(
        &mut self,
        now: Instant,
        group: GroupId,
        up_to: ServerSeq,
        mailbox: MailboxShare,
        out: &mut Vec<GroupOut>,
    ) {
        let Some(s) = self.streams.get_mut(&group) else {
            return;
        };
        if s.next == 0 {
            return;
        }
        let mut up_to = up_to.0.min(s.next - 1);
        while let Some(&(seq, bytes)) = s.unacked.front() {
            if seq > up_to {
                break;
            }
            s.unacked.pop_front();
            self.unacked -= 1;
            self.unacked_bytes -= bytes;
        }
        // Only own messages lie between the ack and what was skipped.
        if s.unacked.is_empty() && s.skipped_through > up_to {
            up_to = s.skipped_through;
        }
        Self::queue_ack(s, group, up_to, !self.closing, now, out);
        self.pump(mailbox, out);
    }

    /// Owes a cursor write of `up_to`, and makes it now when the pace allows.
    fn queue_ack(
        s: &mut Stream,
        group: GroupId,
        up_to: u64,
        paced: bool,
        now: Instant,
        out: &mut Vec<GroupOut>,
    ) {
        if up_to <= s.written && s.pending_ack.is_none() {
            return; // an ack of nothing new
        }
        s.pending_ack = Some(s.pending_ack.map_or(up_to, |p| p.max(up_to)));
        Self::write_when_due(s, group, paced, now, out);
    }

    fn write_when_due(
        s: &mut Stream,
        group: GroupId,
        paced: bool,
        now: Instant,
        out: &mut Vec<GroupOut>,
    ) {
        let due = match s.last_write {
            Some(t) if paced => now >= t + CURSOR_WRITE_INTERVAL,
            _ => true,
        };
        if due && !s.ack_in_flight {
            Self::write_cursor(s, group, Some(now), out);
        }
    }

    /// Writes the owed cursor; `at` paces the next one (`None` when closing: unpaced).
    fn write_cursor(s: &mut Stream, group: GroupId, at: Option<Instant>, out: &mut Vec<GroupOut>) {
        if let Some(up_to) = s.pending_ack.take() {
            s.ack_in_flight = true;
            s.last_write = at.or(s.last_write);
            s.written = s.written.max(up_to);
            out.push(GroupOut::Ack {
                group,
                up_to: ServerSeq(up_to),
            });
        }
    }

    /// The store applied an `Ack` of `group` (or failed to: the items then come again on a
    /// later connection).
    pub fn acked(&mut self, now: Instant, group: GroupId, out: &mut Vec<GroupOut>) {
        let paced = !self.closing;
        let Some(s) = self.streams.get_mut(&group) else {
            return;
        };
        s.ack_in_flight = false;
        Self::write_when_due(s, group, paced, now, out);
    }

    /// Starts a read of the next stream that may hold more, while the window has room and
    /// no other read is outstanding. The streams with a backlog take turns (in group order,
    /// after the one read last), so one busy group does not hold the others back.
    pub fn pump(&mut self, mailbox: MailboxShare, out: &mut Vec<GroupOut>) {
        if self.loading || mailbox.behind || self.read_in_flight || !self.room(mailbox) {
            return;
        }
        let used = (
            self.unacked + mailbox.unacked,
            self.unacked_bytes + mailbox.bytes,
        );
        let limit = self.window.count.saturating_sub(used.0).max(1);
        let max_bytes = self.window.bytes.saturating_sub(used.1);
        let after = self.last_read.map_or(0, |g| g.0);
        let waiting = self
            .streams
            .iter()
            .filter(|(_, s)| s.backlog && !s.reading && s.next <= s.until)
            .map(|(g, _)| *g);
        // The lowest group after the last one read, else the lowest of all.
        let next = waiting
            .clone()
            .filter(|g| g.0 > after)
            .min_by_key(|g| g.0)
            .or_else(|| waiting.min_by_key(|g| g.0));
        let Some(group) = next else {
            return;
        };
        let Some(s) = self.streams.get_mut(&group) else {
            return;
        };
        s.reading = true;
        s.read_max_bytes = max_bytes;
        self.read_in_flight = true;
        self.last_read = Some(group);
        out.push(GroupOut::Read {
            group,
            from: ServerSeq(s.next),
            until: ServerSeq(s.until),
            limit,
            max_bytes,
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use missive_proto::{ClientMsgId, GroupMessage};

    const G: GroupId = GroupId(7);
    const IDLE: MailboxShare = MailboxShare {
        unacked: 0,
        bytes: 0,
        behind: false,
    };

    fn item(from: &str, device: u32, n: u8) -> LogItem {
        LogItem::Stored(stored(from, device, n))
    }

    fn stored(from: &str, device: u32, n: u8) -> StoredItem {
        StoredItem {
            from: from.into(),
            from_device: DeviceId(device),
            client_msg_id: ClientMsgId([n; 16]),
            server_ts_ms: 1,
            payload: Payload::Group(Box::new(GroupMessage {
                group: G,
                body: vec![n; 10],
            })),
        }
    }

    fn streams() -> GroupStreams {
        GroupStreams::new(
            "bob".into(),
            DeviceId(1),
            Window {
                count: 4,
                bytes: 1 << 20,
            },
        )
    }

    fn position(next: u64, head: u64) -> LogPosition {
        LogPosition {
            group: G,
            next: ServerSeq(next),
            until: ServerSeq(u64::MAX),
            head: ServerSeq(head),
        }
    }

    fn delivered(out: &[GroupOut]) -> Vec<u64> {
        out.iter()
            .filter_map(|o| match o {
                GroupOut::Deliver(d) => Some(d.deliver.seq.0),
                _ => None,
            })
            .collect()
    }

    #[test]
    fn a_backlog_is_read_then_pushes_go_straight_out() {
        let t0 = Instant::now();
        let mut s = streams();
        let mut out = Vec::new();
        s.start(&mut out);
        assert_eq!(out, vec![GroupOut::LoadPositions]);
        out.clear();
        s.positions(t0, vec![position(4, 6)], IDLE, &mut out);
        assert!(matches!(
            out[..],
            [GroupOut::Read {
                from: ServerSeq(4),
                ..
            }]
        ));
        out.clear();
        // A push during the read is held, then delivered after what the read found.
        s.pushed(t0, G, ServerSeq(6), item("alice", 1, 6), IDLE, &mut out);
        assert!(out.is_empty());
        let read = vec![
            (ServerSeq(4), stored("alice", 1, 4)),
            (ServerSeq(5), stored("alice", 1, 5)),
        ];
        s.read_done(t0, G, 4, Ok(read), IDLE, &mut out);
        assert_eq!(delivered(&out), vec![4, 5, 6]);
        out.clear();
        s.pushed(t0, G, ServerSeq(6), item("alice", 1, 6), IDLE, &mut out);
        assert!(out.is_empty(), "delivered once");
        s.pushed(t0, G, ServerSeq(7), item("alice", 1, 7), IDLE, &mut out);
        // The window (4) is full now: the next push waits for a read.
        s.pushed(t0, G, ServerSeq(8), item("alice", 1, 8), IDLE, &mut out);
        assert_eq!(delivered(&out), vec![7]);
        out.clear();
        s.client_ack(t0, G, ServerSeq(99), IDLE, &mut out);
        assert_eq!(
            out[0],
            GroupOut::Ack {
                group: G,
                up_to: ServerSeq(7)
            },
            "clamped to what was delivered"
        );
        assert!(matches!(
            out[1],
            GroupOut::Read {
                from: ServerSeq(8),
                ..
            }
        ));
    }

    #[test]
    fn pushes_while_the_positions_load_are_held_and_a_new_group_starts_at_its_first_item() {
        let t0 = Instant::now();
        let mut s = streams();
        let mut out = Vec::new();
        s.start(&mut out);
        out.clear();
        s.pushed(t0, G, ServerSeq(6), item("alice", 1, 6), IDLE, &mut out);
        assert!(out.is_empty());
        // Caught up at 6 when the positions were read: the held push goes out.
        s.positions(t0, vec![position(6, 6)], IDLE, &mut out);
        assert_eq!(delivered(&out), vec![6]);
        out.clear();
        // Joined another group since: its first push starts the stream.
        let other = GroupId(8);
        s.pushed(
            t0,
            other,
            ServerSeq(40),
            item("alice", 1, 40),
            IDLE,
            &mut out,
        );
        assert!(matches!(
            &out[..],
            [GroupOut::Deliver(d)] if d.group == other && d.deliver.seq == ServerSeq(40)
        ));
        // The mailbox's share of the window counts too.
        out.clear();
        s.pushed(
            t0,
            G,
            ServerSeq(7),
            item("alice", 1, 7),
            MailboxShare { unacked: 2, ..IDLE },
            &mut out,
        );
        assert!(out.is_empty(), "window of 4 full with 2 + 2");
    }

    #[test]
    fn a_mailbox_behind_holds_the_groups_back() {
        let t0 = Instant::now();
        let mut s = streams();
        let mut out = Vec::new();
        s.start(&mut out);
        s.positions(t0, vec![position(1, 1)], IDLE, &mut out);
        out.clear();
        let behind = MailboxShare {
            behind: true,
            ..IDLE
        };
        // The message's key may still be in the mailbox: the message waits.
        s.pushed(t0, G, ServerSeq(1), item("alice", 1, 1), behind, &mut out);
        s.pump(behind, &mut out);
        assert!(out.is_empty());
        // Caught up: the log is read from where the device stands.
        s.pump(IDLE, &mut out);
        assert!(matches!(
            out[..],
            [GroupOut::Read {
                from: ServerSeq(1),
                ..
            }]
        ));
    }

    #[test]
    fn a_live_item_goes_out_as_its_shared_encoding() {
        let t0 = Instant::now();
        let mut s = streams();
        let mut out = Vec::new();
        s.start(&mut out);
        s.positions(t0, vec![position(1, 1)], IDLE, &mut out);
        out.clear();
        let live = Arc::new(LiveItem::new(G, ServerSeq(1), &stored("alice", 1, 1)).unwrap());
        s.pushed(
            t0,
            G,
            ServerSeq(1),
            LogItem::Live(live.clone()),
            IDLE,
            &mut out,
        );
        assert_eq!(out, vec![GroupOut::DeliverEncoded(live.clone())]);
        assert_eq!(s.unacked(), (1, 10));
        // The bytes are the frame a read would have produced.
        let mut decoder = missive_proto::FrameDecoder::new(1 << 20);
        decoder.feed(&live.wire);
        let Some(Frame::GroupDeliver(d)) = decoder.next_frame().unwrap() else {
            panic!("not a GroupDeliver");
        };
        assert_eq!(
            (d.group, d.deliver.seq, d.deliver.from.as_str()),
            (G, ServerSeq(1), "alice")
        );
    }

    #[test]
    fn own_messages_are_skipped_and_acked_past() {
        let t0 = Instant::now();
        let mut s = streams();
        let mut out = Vec::new();
        s.start(&mut out);
        s.positions(t0, vec![position(1, 1)], IDLE, &mut out);
        out.clear();
        s.pushed(t0, G, ServerSeq(1), item("bob", 1, 1), IDLE, &mut out);
        assert_eq!(
            out,
            vec![GroupOut::Ack {
                group: G,
                up_to: ServerSeq(1)
            }]
        );
        out.clear();
        s.pushed(t0, G, ServerSeq(2), item("alice", 1, 2), IDLE, &mut out);
        // Another device of bob's is a reader like any other.
        s.pushed(t0, G, ServerSeq(3), item("bob", 2, 3), IDLE, &mut out);
        s.pushed(t0, G, ServerSeq(4), item("bob", 1, 4), IDLE, &mut out);
        assert_eq!(delivered(&out), vec![2, 3]);
        out.clear();
        s.acked(t0, G, &mut out);
        s.client_ack(t0 + CURSOR_WRITE_INTERVAL, G, ServerSeq(3), IDLE, &mut out);
        assert_eq!(
            out,
            vec![GroupOut::Ack {
                group: G,
                up_to: ServerSeq(4)
            }],
            "the ack covers the own message after it"
        );
        assert_eq!(s.unacked(), (0, 0));
    }

    #[test]
    fn backlogged_groups_are_read_one_at_a_time_in_turn() {
        let t0 = Instant::now();
        let mut s = streams();
        let mut out = Vec::new();
        s.start(&mut out);
        let at = |group: u64, next: u64| LogPosition {
            group: GroupId(group),
            next: ServerSeq(next),
            until: ServerSeq(u64::MAX),
            head: ServerSeq(next + 100),
        };
        out.clear();
        s.positions(t0, vec![at(3, 1), at(1, 1), at(2, 1)], IDLE, &mut out);
        let reads = |out: &[GroupOut]| -> Vec<u64> {
            out.iter()
                .filter_map(|o| match o {
                    GroupOut::Read { group, .. } => Some(group.0),
                    _ => None,
                })
                .collect()
        };
        assert_eq!(reads(&out), vec![1], "one read, however many groups wait");
        let mut order = Vec::new();
        for _ in 0..4 {
            let group = GroupId(*reads(&out).last().unwrap());
            order.push(group.0);
            out.clear();
            // A full read (the window's worth), acknowledged at once: the group still has
            // more, and the next read goes to the next group.
            let items: Vec<_> = (1..=4u8)
                .map(|n| (ServerSeq(u64::from(n)), stored("alice", 1, n)))
                .collect();
            s.read_done(t0, group, 4, Ok(items), IDLE, &mut out);
            s.client_ack(t0, group, ServerSeq(4), IDLE, &mut out);
            assert_eq!(reads(&out).len(), 1, "{out:?}");
        }
        assert_eq!(order, vec![1, 2, 3, 1], "the groups take turns");
    }

    #[test]
    fn acks_during_a_write_merge_and_wait_for_the_pace() {
        let t0 = Instant::now();
        let mut s = streams();
        let mut out = Vec::new();
        s.start(&mut out);
        s.positions(t0, vec![position(1, 1)], IDLE, &mut out);
        for n in 1..=3 {
            s.pushed(
                t0,
                G,
                ServerSeq(n),
                item("alice", 1, n as u8),
                IDLE,
                &mut out,
            );
        }
        out.clear();
        s.client_ack(t0, G, ServerSeq(1), IDLE, &mut out);
        s.client_ack(t0, G, ServerSeq(2), IDLE, &mut out);
        s.client_ack(t0, G, ServerSeq(3), IDLE, &mut out);
        assert_eq!(out.len(), 1);
        assert!(s.cursors_owed());
        out.clear();
        s.acked(t0, G, &mut out);
        assert!(out.is_empty(), "the next write waits for the pace");
        let due = t0 + CURSOR_WRITE_INTERVAL;
        assert_eq!(s.poll_timeout(), Some(due));
        s.write_due(due - Duration::from_millis(1), &mut out);
        assert!(out.is_empty());
        s.write_due(due, &mut out);
        assert_eq!(
            out,
            vec![GroupOut::Ack {
                group: G,
                up_to: ServerSeq(3)
            }]
        );
        assert_eq!(s.poll_timeout(), None, "nothing more owed");
        // An ack of nothing new writes nothing.
        out.clear();
        s.acked(due, G, &mut out);
        s.client_ack(due + CURSOR_WRITE_INTERVAL, G, ServerSeq(3), IDLE, &mut out);
        assert!(out.is_empty(), "{out:?}");
        assert!(!s.cursors_owed());
    }
}
