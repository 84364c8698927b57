//! Call quality: what the receiver measures (loss, jitter), the feedback each side sends
//! the other (small, validated, inside SRTCP), RTT from the echoed feedback times, an
//! E-model-style MOS estimate, and the video rate controller.
//!
//! All of it is plain arithmetic on times given by the caller (microseconds since the
//! session's epoch), tested with made-up arrivals.

use super::PathKind;
use std::time::Duration;

/// Statistics of a call, as [`super::MediaCall::stats`] reports them. A "frame" here is one
/// SRTP media packet: an audio frame is one packet, a video frame several.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct CallStats {
    /// The path media takes now; `None` before the call connected.
    pub path: Option<PathKind>,
    /// Round-trip time (ms), smoothed, from the echoed feedback.
    pub rtt_ms: f64,
    /// Loss (%) of the media this side received, over the last seconds.
    pub loss_percent: f64,
    /// Loss (%) of the media this side sent, as the peer reported it.
    pub remote_loss_percent: f64,
    /// Interarrival jitter (ms) of the media this side received (RFC 3550 §6.4.1).
    pub jitter_ms: f64,
    /// Bitrate sent (kbit/s, SRTP packets), over the last interval.
    pub send_kbps: f64,
    /// Bitrate received (kbit/s), over the last interval.
    pub recv_kbps: f64,
    /// What the rate controller lets video send (kbit/s); 0 without video.
    pub video_target_kbps: f64,
    /// Estimated listening quality (1-4.5), from an E-model R factor of RTT, jitter, loss.
    pub mos: f64,
    /// Media packets sent.
    pub frames_sent: u64,
    /// Media packets received (SRTP-shaped datagrams, before authentication).
    pub frames_received: u64,
    /// Media packets that authenticated and decrypted.
    pub frames_decrypted: u64,
    /// Media and feedback packets that failed authentication, decryption or replay checks.
    pub decrypt_failures: u64,
    /// Times the call moved to another candidate pair after connecting.
    pub path_switches: u32,
    /// From `start()` to the first decrypted media packet.
    pub first_media_after: Option<Duration>,
}

/// Feedback one side sends the other every interval (inside an SRTCP APP packet named
/// `MSVF`): 40 bytes, fixed layout, big-endian.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Feedback {
    /// When the sender sent this (its clock, µs).
    pub sent_us: u64,
    /// `sent_us` of the last feedback the sender received from us (0: none yet).
    pub echo_us: u64,
    /// How long the sender held that echo before sending this (µs).
    pub echo_delay_us: u32,
    /// Loss of our media over the sender's last interval (parts per million).
    pub loss_ppm: u32,
    /// Interarrival jitter the sender measures on our media (µs).
    pub jitter_us: u32,
    /// Bytes per second the sender received from us over its last interval.
    pub recv_bytes_per_s: u32,
    /// Media packets the sender received from us in all.
    pub packets_received: u64,
}

impl Feedback {
    /// Encoded length.
    pub const LEN: usize = 40;

    /// The wire form.
    pub fn encode(&self) -> [u8; Self::LEN] {
        let mut b = [0u8; Self::LEN];
        b[0..8].copy_from_slice(&self.sent_us.to_be_bytes());
        b[8..16].copy_from_slice(&self.echo_us.to_be_bytes());
        b[16..20].copy_from_slice(&self.echo_delay_us.to_be_bytes());
        b[20..24].copy_from_slice(&self.loss_ppm.to_be_bytes());
        b[24..28].copy_from_slice(&self.jitter_us.to_be_bytes());
        b[28..32].copy_from_slice(&self.recv_bytes_per_s.to_be_bytes());
        b[32..40].copy_from_slice(&self.packets_received.to_be_bytes());
        b
    }

    /// Parses exactly [`Feedback::LEN`] bytes; loss above 100 % is refused.
    pub fn decode(b: &[u8]) -> Option<Self> {
        let b: &[u8; Self::LEN] = b.try_into().ok()?;
        let u64_at = |i: usize| {
            let mut a = [0u8; 8];
            a.copy_from_slice(&b[i..i + 8]);
            u64::from_be_bytes(a)
        };
        let u32_at = |i: usize| u32::from_be_bytes([b[i], b[i + 1], b[i + 2], b[i + 3]]);
        let f = Self {
            sent_us: u64_at(0),
            echo_us: u64_at(8),
            echo_delay_us: u32_at(16),
            loss_ppm: u32_at(20),
            jitter_us: u32_at(24),
            recv_bytes_per_s: u32_at(28),
            packets_received: u64_at(32),
        };
        (f.loss_ppm <= 1_000_000).then_some(f)
    }
}

/// What one side measures on one received stream (RFC 3550 appendix A.1/A.8, simplified:
/// no probation, reordering within a window).
#[derive(Debug, Default, Clone)]
pub struct StreamReceiver {
    started: bool,
    base_seq: u64,
    max_seq: u64,
    received: u64,
    /// `max_seq - base_seq + 1` and `received` at the last interval boundary.
    interval_start: (u64, u64),
    last_transit_us: Option<i64>,
    jitter_us: f64,
}

impl StreamReceiver {
    /// A packet with sequence number `seq` sent at `sent_us` (sender's clock) arrived at
    /// `arrival_us` (ours).
    pub fn on_packet(&mut self, seq: u16, sent_us: u64, arrival_us: u64) {
        let seq = u64::from(seq);
        if !self.started {
            self.started = true;
            // Extended numbers start high enough that a reordered earlier packet fits.
            self.base_seq = seq + 65536;
            self.max_seq = seq + 65536;
            self.interval_start = (0, 0);
        } else {
            // Extend the 16-bit number to the candidate nearest the highest seen.
            let cycle = self.max_seq & !0xFFFF;
            let cands = [
                cycle.wrapping_sub(65536) + seq,
                cycle + seq,
                cycle + 65536 + seq,
            ];
            let ext = cands
                .into_iter()
                .min_by_key(|c| c.abs_diff(self.max_seq))
                .unwrap_or(cycle + seq);
            if ext < self.base_seq {
                return;
            }
            self.max_seq = self.max_seq.max(ext);
        }
        self.received += 1;
        let transit = arrival_us as i64 - sent_us as i64;
        if let Some(prev) = self.last_transit_us {
            let d = (transit - prev).unsigned_abs() as f64;
            self.jitter_us += (d - self.jitter_us) / 16.0;
        }
        self.last_transit_us = Some(transit);
    }

    /// Packets expected so far.
    pub fn expected(&self) -> u64 {
        if self.started {
            self.max_seq - self.base_seq + 1
        } else {
            0
        }
    }

    /// Packets received so far.
    pub fn received(&self) -> u64 {
        self.received
    }

    /// Jitter (µs).
    pub fn jitter_us(&self) -> f64 {
        self.jitter_us
    }

    /// Expected and received since the last call; starts a new interval.
    pub fn take_interval(&mut self) -> (u64, u64) {
        let now = (self.expected(), self.received);
        let d = (
            now.0.saturating_sub(self.interval_start.0),
            now.1.saturating_sub(self.interval_start.1),
        );
        self.interval_start = now;
        d
    }
}

/// Loss fraction of an interval (0-1); duplicates do not make it negative.
pub fn loss_fraction(expected: u64, received: u64) -> f64 {
    if expected == 0 {
        0.0
    } else {
        expected.saturating_sub(received) as f64 / expected as f64
    }
}

/// Estimated MOS (ITU-T G.107 E-model, simplified): R = 93.2 − Id − Ie,eff, with the
/// one-way delay as half the RTT plus a 2×jitter buffer and 20 ms of packetization, and
/// Opus-like loss robustness (Ie = 0, Bpl = 20); mapped to MOS by G.107's formula.
pub fn mos(rtt_ms: f64, jitter_ms: f64, loss_percent: f64) -> f64 {
    let d = rtt_ms / 2.0 + 2.0 * jitter_ms + 20.0;
    let id = 0.024 * d + if d > 177.3 { 0.11 * (d - 177.3) } else { 0.0 };
    let ppl = loss_percent.clamp(0.0, 100.0);
    let ie = 95.0 * ppl / (ppl + 20.0);
    let r = (93.2 - id - ie).clamp(0.0, 100.0);
    let m = 1.0 + 0.035 * r + 7e-6 * r * (r - 60.0) * (100.0 - r);
    m.clamp(1.0, 4.5)
}

/// The video rate controller: loss-and-delay based, audio untouched. Decreases quickly
/// (15 %, 30 % above 10 % loss, at most once per [`RateController::HOLD`]), increases slowly
/// (5 % per good report, only after the hold since the last decrease).
#[derive(Debug, Clone)]
pub struct RateController {
    target_bps: f64,
    min_bps: f64,
    max_bps: f64,
    last_decrease_us: Option<u64>,
}

impl RateController {
    /// Time between two decreases, and from a decrease to the first increase.
    pub const HOLD: Duration = Duration::from_millis(1000);
    /// Loss above which the controller decreases.
    pub const LOSS_HIGH: f64 = 0.02;
    /// Loss below which it may increase.
    pub const LOSS_LOW: f64 = 0.01;
    /// RTT (ms) above which it decreases (queues are building).
    pub const RTT_HIGH_MS: f64 = 400.0;
    /// RTT (ms) below which it may increase.
    pub const RTT_LOW_MS: f64 = 250.0;

    /// Starts at `max_bps`.
    pub fn new(min_bps: u32, max_bps: u32) -> Self {
        Self {
            target_bps: f64::from(max_bps),
            min_bps: f64::from(min_bps.min(max_bps)),
            max_bps: f64::from(max_bps),
            last_decrease_us: None,
        }
    }

    /// The current target (bits/s).
    pub fn target_bps(&self) -> f64 {
        self.target_bps
    }

    /// A report of `loss` (0-1) and `rtt_ms` at `now_us`.
    pub fn on_report(&mut self, now_us: u64, loss: f64, rtt_ms: f64) {
        let hold = Self::HOLD.as_micros() as u64;
        let since = self.last_decrease_us.map(|t| now_us.saturating_sub(t));
        if loss > Self::LOSS_HIGH || rtt_ms > Self::RTT_HIGH_MS {
            if since.is_none_or(|s| s >= hold) {
                let factor = if loss > 0.10 { 0.7 } else { 0.85 };
                self.target_bps = (self.target_bps * factor).max(self.min_bps);
                self.last_decrease_us = Some(now_us);
            }
        } else if loss < Self::LOSS_LOW
            && rtt_ms < Self::RTT_LOW_MS
            && since.is_none_or(|s| s >= hold)
        {
            self.target_bps = (self.target_bps * 1.05).min(self.max_bps);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn feedback_round_trips_and_is_validated() {
        let f = Feedback {
            sent_us: 1,
            echo_us: 2,
            echo_delay_us: 3,
            loss_ppm: 50_000,
            jitter_us: 5,
            recv_bytes_per_s: 6,
            packets_received: 7,
        };
        assert_eq!(Feedback::decode(&f.encode()), Some(f));
        assert_eq!(Feedback::decode(&f.encode()[..39]), None);
        let mut bad = f.encode();
        bad[20..24].copy_from_slice(&2_000_000u32.to_be_bytes());
        assert_eq!(Feedback::decode(&bad), None);
    }

    #[test]
    fn receiver_counts_loss_and_wraps_sequence_numbers() {
        let mut r = StreamReceiver::default();
        // 200 packets from 65500 on (wrapping), every 10th lost.
        let mut t = 0;
        for i in 0..200u32 {
            let seq = (65_500 + i) as u16;
            t += 20_000;
            if i % 10 != 5 {
                r.on_packet(seq, t, t + 30_000);
            }
        }
        assert_eq!(r.expected(), 200);
        assert_eq!(r.received(), 180);
        let (e, rc) = r.take_interval();
        assert!((loss_fraction(e, rc) - 0.1).abs() < 1e-9);
        assert_eq!(r.take_interval(), (0, 0));
        // Constant transit: no jitter.
        assert!(r.jitter_us() < 1.0);
    }

    #[test]
    fn jitter_follows_transit_variation() {
        let mut r = StreamReceiver::default();
        for i in 0..2000u64 {
            // Transit alternates 10 ms and 14 ms: |D| = 4 ms every packet.
            let transit = if i % 2 == 0 { 10_000 } else { 14_000 };
            r.on_packet(i as u16, i * 20_000, i * 20_000 + transit);
        }
        assert!((r.jitter_us() - 4_000.0).abs() < 100.0, "{}", r.jitter_us());
    }

    #[test]
    fn mos_falls_with_loss_and_delay() {
        let clean = mos(20.0, 1.0, 0.0);
        assert!(clean > 4.3, "{clean}");
        assert!(mos(20.0, 1.0, 5.0) < clean);
        assert!(mos(600.0, 1.0, 0.0) < mos(100.0, 1.0, 0.0));
        assert!(mos(20.0, 1.0, 5.0) > 3.0);
        assert!((1.0..=4.5).contains(&mos(5000.0, 500.0, 100.0)));
    }

    #[test]
    fn rate_drops_fast_on_loss_and_climbs_back_slowly() {
        let mut c = RateController::new(150_000, 1_500_000);
        let mut now = 0u64;
        // Two reports a second at 5 % loss for 10 s.
        for _ in 0..20 {
            now += 500_000;
            c.on_report(now, 0.05, 60.0);
        }
        let low = c.target_bps();
        assert!(low < 400_000.0, "{low}");
        assert!(low >= 150_000.0);
        // Clean again: one second later it climbs, by at most 5 % per report.
        let mut prev = low;
        for _ in 0..4 {
            now += 500_000;
            c.on_report(now, 0.0, 60.0);
            assert!(c.target_bps() <= prev * 1.051);
            prev = c.target_bps();
        }
        assert!(prev > low);
        for _ in 0..200 {
            now += 500_000;
            c.on_report(now, 0.0, 60.0);
        }
        assert_eq!(c.target_bps(), 1_500_000.0);
        // High RTT alone also backs off.
        now += 2_000_000;
        c.on_report(now, 0.0, 800.0);
        assert!(c.target_bps() < 1_500_000.0);
    }
}
