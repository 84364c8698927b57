//! Checks what arrived against what was acknowledged, by id: loss, duplicates, order; and
//! records send→deliver latency. Trusts nothing the server reports.

use crate::payload::Stamp;
use hdrhistogram::Histogram;
use std::collections::{HashMap, HashSet};

/// Seqs below this are kept in a bitmap (8 MiB at most per set); a larger one (only from a
/// damaged stamp) goes to a hash set instead of growing the bitmap.
const DENSE_SEQS: u64 = 1 << 26;

/// A set of seqs. A stream's seqs count up from 0, so a bitmap holds them in 1 bit each and
/// costs no hashing on the hot path.
#[derive(Debug, Default)]
struct SeqSet {
    words: Vec<u64>,
    sparse: HashSet<u64>,
    len: u64,
}

impl SeqSet {
    /// Adds `seq`; false when it was already there.
    fn insert(&mut self, seq: u64) -> bool {
        let added = if seq < DENSE_SEQS {
            let (word, bit) = ((seq / 64) as usize, 1u64 << (seq % 64));
            if word >= self.words.len() {
                self.words.resize(word + 1, 0);
            }
            let fresh = self.words[word] & bit == 0;
            self.words[word] |= bit;
            fresh
        } else {
            self.sparse.insert(seq)
        };
        self.len += u64::from(added);
        added
    }

    /// How many seqs of `self` are not in `other`.
    fn count_missing_from(&self, other: &Self) -> u64 {
        let dense: u64 = self
            .words
            .iter()
            .enumerate()
            .map(|(i, w)| (w & !other.words.get(i).copied().unwrap_or(0)).count_ones() as u64)
            .sum();
        dense + self.sparse.difference(&other.sparse).count() as u64
    }
}

/// Per-stream bookkeeping.
#[derive(Debug, Default)]
struct Stream {
    acked: SeqSet,
    delivered: SeqSet,
    highest_delivered: Option<u64>,
}

/// Everything observed during a run.
#[derive(Debug)]
pub struct Tracker {
    streams: HashMap<u32, Stream>,
    /// Send → deliver latency in µs.
    pub latency_us: Histogram<u64>,
    /// Latency per one-second bucket of the run, for the SVG.
    pub per_second: Vec<Histogram<u64>>,
    /// Sends attempted.
    pub sent: u64,
    /// Deliveries seen more than once here, plus messages the clients' SDK dropped before
    /// this tracker saw them because the edge had stored them twice (see
    /// [`Tracker::on_client_stats`]).
    pub duplicates: u64,
    /// Deliveries that arrived after a later one of the same stream.
    pub out_of_order: u64,
    /// Deliveries (unique).
    pub delivered: u64,
}

fn histogram() -> Histogram<u64> {
    // 1 µs .. 1 h, 3 significant digits.
    Histogram::new_with_bounds(1, 3_600_000_000, 3).expect("static histogram bounds are valid")
}

impl Default for Tracker {
    fn default() -> Self {
        Self {
            streams: HashMap::new(),
            latency_us: histogram(),
            per_second: Vec::new(),
            sent: 0,
            duplicates: 0,
            out_of_order: 0,
            delivered: 0,
        }
    }
}

impl Tracker {
    /// A send was attempted.
    pub fn on_sent(&mut self) {
        self.sent += 1;
    }

    /// A client's delivery counts, taken before the SDK's duplicate filter: a message the
    /// edge stored twice is a duplicate even though the filter kept it from this tracker.
    pub fn on_client_stats(&mut self, stats: missive_client::DeliveryStats) {
        self.duplicates += stats.duplicates;
    }

    /// The server acknowledged (stored) this message: it must arrive.
    pub fn on_acked(&mut self, stream: u32, seq: u64) {
        self.streams.entry(stream).or_default().acked.insert(seq);
    }

    /// A message arrived at `now_us` (µs since the run's start).
    pub fn on_delivered(&mut self, stamp: Stamp, now_us: u64) {
        let s = self.streams.entry(stamp.stream).or_default();
        if !s.delivered.insert(stamp.seq) {
            self.duplicates += 1;
            return;
        }
        self.delivered += 1;
        if s.highest_delivered.is_some_and(|h| stamp.seq < h) {
            self.out_of_order += 1;
        }
        s.highest_delivered = Some(s.highest_delivered.map_or(stamp.seq, |h| h.max(stamp.seq)));
        let lat = now_us.saturating_sub(stamp.sent_us).max(1);
        let _ = self.latency_us.record(lat);
        let bucket = (now_us / 1_000_000) as usize;
        while self.per_second.len() <= bucket {
            self.per_second.push(histogram());
        }
        let _ = self.per_second[bucket].record(lat);
    }

    /// Acknowledged messages.
    pub fn acked(&self) -> u64 {
        self.streams.values().map(|s| s.acked.len).sum()
    }

    /// Acknowledged messages that never arrived.
    pub fn lost(&self) -> u64 {
        self.streams
            .values()
            .map(|s| s.acked.count_missing_from(&s.delivered))
            .sum()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn st(stream: u32, seq: u64) -> Stamp {
        Stamp {
            stream,
            seq,
            sent_us: 10,
        }
    }

    #[test]
    fn counts_loss_duplicates_and_reordering() {
        let mut t = Tracker::default();
        for seq in 0..4 {
            t.on_sent();
            t.on_acked(1, seq);
        }
        t.on_delivered(st(1, 0), 100);
        t.on_delivered(st(1, 2), 200);
        t.on_delivered(st(1, 1), 300);
        t.on_delivered(st(1, 1), 400);
        assert_eq!(t.acked(), 4);
        assert_eq!(t.delivered, 3);
        assert_eq!(t.duplicates, 1);
        assert_eq!(t.out_of_order, 1);
        assert_eq!(t.lost(), 1);
        assert_eq!(t.latency_us.len(), 3);
        assert_eq!(t.per_second.len(), 1);
        // A message the edge stored twice, which the SDK's filter kept from the tracker.
        t.on_client_stats(missive_client::DeliveryStats {
            deliveries: 5,
            redeliveries: 1,
            duplicates: 1,
        });
        assert_eq!(
            t.duplicates, 2,
            "redeliveries are expected, duplicates are not"
        );
    }

    #[test]
    fn seq_sets_count_across_words_and_beyond_the_bitmap() {
        let (mut a, mut b) = (SeqSet::default(), SeqSet::default());
        for seq in [0, 63, 64, 1000, DENSE_SEQS + 5] {
            assert!(a.insert(seq));
        }
        assert!(!a.insert(64));
        assert!(!a.insert(DENSE_SEQS + 5));
        assert_eq!(a.len, 5);
        b.insert(63);
        b.insert(DENSE_SEQS + 5);
        b.insert(5000);
        assert_eq!(a.count_missing_from(&b), 3);
        assert_eq!(b.count_missing_from(&a), 1);
    }
}
