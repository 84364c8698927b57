//! What the committer remembers of the items it stored in this process and that are not
//! acknowledged yet, so that an ack needs no read of the tree.
//!
//! Profiles at saturation on fjall showed a third of the committer's time in the reads an ack
//! made (a merged range scan, or point reads, over memtables and tables) only to find the
//! items to delete and the senders to send "delivered" receipts to. Both are known when the
//! item is stored; this log keeps them until the ack.
//!
//! The log of a mailbox is exact from its `complete_from` seq on: every item stored there
//! with a seq at or above it is in the log until acknowledged. Items below it (stored before
//! a restart, or while the log was full) are unknown here, and acks that reach them read
//! the tree as before. The log is bounded; past the bound, mailboxes stop being logged and
//! fall back to reads.

use crate::MailboxId;
use missive_proto::{ClientMsgId, GroupId};

/// What a mailbox reference points at.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Reference {
    /// A message of this group.
    Group(GroupId),
    /// A status update.
    Story,
}
use std::collections::{HashMap, VecDeque};

/// A stored item as an ack needs it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct LoggedItem {
    /// Its seq in the mailbox.
    pub(crate) seq: u64,
    /// For an envelope: who sent it (and which of their messages it was), to receive a
    /// "delivered" receipt. `None` for items that make no receipt (receipts themselves).
    pub(crate) receipt_to: Option<(String, ClientMsgId)>,
    /// For a reference to a message stored once (a group message, a status update): what it
    /// refers to (`receipt_to` then names the message, whose receipts are counted where it
    /// is stored instead of sent one by one).
    pub(crate) reference: Option<Reference>,
    /// Bytes of its stored record (what it counts against the mailbox's byte quota).
    pub(crate) bytes: u64,
}

#[derive(Debug)]
struct MailboxLog {
    complete_from: u64,
    items: VecDeque<LoggedItem>,
}

/// The unacknowledged items of every logged mailbox (see the module doc).
#[derive(Debug)]
pub(crate) struct UnackedLog {
    mailboxes: HashMap<MailboxId, MailboxLog>,
    entries: usize,
    limit: usize,
}

/// What [`UnackedLog::take_acked`] found.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Taken {
    /// Every item in the acked span that still exists: delete these, nothing else.
    Exact(Vec<LoggedItem>),
    /// The log does not cover the span: read the tree. (Logged items in the span were
    /// dropped from the log.)
    Unknown,
}

impl UnackedLog {
    /// An empty log holding at most `limit` items.
    pub(crate) fn new(limit: usize) -> Self {
        Self {
            mailboxes: HashMap::new(),
            entries: 0,
            limit,
        }
    }

    /// Items held now.
    #[cfg(test)]
    pub(crate) fn len(&self) -> usize {
        self.entries
    }

    /// Records an item stored in `mb` (seqs of one mailbox must come in increasing order).
    pub(crate) fn stored(&mut self, mb: &MailboxId, item: LoggedItem) {
        if let Some(log) = self.mailboxes.get_mut(mb) {
            if self.entries >= self.limit {
                // Full: this mailbox is not logged any more; its acks read the tree.
                self.entries -= log.items.len();
                self.mailboxes.remove(mb);
                return;
            }
            log.items.push_back(item);
            self.entries += 1;
        } else if self.entries < self.limit {
            // Nothing is known below this seq (items from before a restart or a drop).
            let mut items = VecDeque::new();
            let complete_from = item.seq;
            items.push_back(item);
            self.entries += 1;
            self.mailboxes.insert(
                mb.clone(),
                MailboxLog {
                    complete_from,
                    items,
                },
            );
        }
    }

    /// Takes the items of `mb` with seqs in `first..=up_to` out of the log; says whether
    /// they are exactly the items of that span that exist.
    pub(crate) fn take_acked(&mut self, mb: &MailboxId, first: u64, up_to: u64) -> Taken {
        let Some(log) = self.mailboxes.get_mut(mb) else {
            return Taken::Unknown;
        };
        let mut taken = Vec::new();
        while log.items.front().is_some_and(|i| i.seq <= up_to) {
            if let Some(item) = log.items.pop_front() {
                // Every item popped leaves the count, whether it is reported or not.
                self.entries -= 1;
                if item.seq >= first {
                    taken.push(item);
                }
            }
        }
        let exact = first >= log.complete_from;
        if log.items.is_empty() {
            self.mailboxes.remove(mb);
        }
        if exact {
            Taken::Exact(taken)
        } else {
            Taken::Unknown
        }
    }

    /// Forgets everything (after a failed commit, or a sweep that deleted items).
    pub(crate) fn clear(&mut self) {
        self.mailboxes.clear();
        self.entries = 0;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use missive_proto::DeviceId;

    fn mb(u: &str) -> MailboxId {
        MailboxId::new(u.to_owned(), DeviceId(1))
    }

    fn item(seq: u64) -> LoggedItem {
        LoggedItem {
            seq,
            receipt_to: Some(("s".into(), ClientMsgId([seq as u8; 16]))),
            reference: None,
            bytes: 10,
        }
    }

    fn seqs(t: &Taken) -> Vec<u64> {
        match t {
            Taken::Exact(v) => v.iter().map(|i| i.seq).collect(),
            Taken::Unknown => panic!("expected an exact answer"),
        }
    }

    #[test]
    fn acks_of_logged_items_are_exact_and_leave_the_log() {
        let mut log = UnackedLog::new(100);
        for s in 1..=5 {
            log.stored(&mb("a"), item(s));
        }
        assert_eq!(seqs(&log.take_acked(&mb("a"), 1, 3)), vec![1, 2, 3]);
        assert_eq!(log.len(), 2);
        // Acked again (a duplicate ack): nothing left to take, still exact.
        assert_eq!(seqs(&log.take_acked(&mb("a"), 4, 3)), Vec::<u64>::new());
        assert_eq!(seqs(&log.take_acked(&mb("a"), 4, 9)), vec![4, 5]);
        assert_eq!(log.len(), 0);
    }

    #[test]
    fn spans_reaching_below_the_log_are_unknown() {
        let mut log = UnackedLog::new(100);
        // Seqs 1..=9 were stored before a restart; this process logged from 10 on.
        for s in 10..=12 {
            log.stored(&mb("a"), item(s));
        }
        assert_eq!(log.take_acked(&mb("a"), 1, 11), Taken::Unknown);
        // The logged ones in the span left the log all the same.
        assert_eq!(log.len(), 1);
        assert_eq!(seqs(&log.take_acked(&mb("a"), 12, 12)), vec![12]);
        assert_eq!(log.take_acked(&mb("never"), 1, 1), Taken::Unknown);
    }

    #[test]
    fn a_full_log_stops_logging_a_mailbox_and_its_acks_read_the_tree() {
        let mut log = UnackedLog::new(3);
        log.stored(&mb("a"), item(1));
        log.stored(&mb("a"), item(2));
        log.stored(&mb("b"), item(1));
        // Full: a's next item drops a's log (its items go back to the count).
        log.stored(&mb("a"), item(3));
        assert_eq!(log.len(), 1);
        assert_eq!(log.take_acked(&mb("a"), 1, 3), Taken::Unknown);
        // Room again: a new log starts at the next item, exact from there on.
        log.stored(&mb("a"), item(4));
        assert_eq!(seqs(&log.take_acked(&mb("a"), 4, 4)), vec![4]);
        assert_eq!(seqs(&log.take_acked(&mb("b"), 1, 1)), vec![1]);
        assert_eq!(log.len(), 0);
    }

    #[test]
    fn clear_forgets_everything() {
        let mut log = UnackedLog::new(10);
        log.stored(&mb("a"), item(1));
        log.clear();
        assert_eq!(log.len(), 0);
        assert_eq!(log.take_acked(&mb("a"), 1, 1), Taken::Unknown);
    }
}
