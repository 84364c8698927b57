//! The media of one call as a state machine without sockets or clocks: a synthetic audio
//! and video source, SRTP protection in both directions, the receiver's measurements, the
//! feedback exchange, and the video rate controller.
//!
//! Inputs: [`MediaSession::set_sending`] (once a path is selected),
//! [`MediaSession::handle_packet`] (SRTP/SRTCP from the peer), [`MediaSession::handle_timeout`].
//! Outputs: [`MediaSession::poll_transmit`] (SRTP/SRTCP packets for the selected path), then
//! [`MediaSession::poll_timeout`].
//!
//! Packets: RTP (RFC 3550, no CSRC, no extension) with payload type 111 (audio, 20 ms,
//! 48 kHz clock) or 96 (video, 90 kHz clock, a frame split into packets of at most
//! [`MAX_PAYLOAD`] bytes, marker on the last). Each payload starts with
//! [`SYNTHETIC_MARKER`], the frame number, the packet's index and count in the frame and
//! its send time, so the receiver measures loss and jitter. Feedback is an RTCP APP packet
//! (PT 204, name `MSVF`) carrying a [`Feedback`], protected as SRTCP.

use super::quality::{self, CallStats, Feedback, RateController, StreamReceiver};
use super::secret::CallSecret;
use super::{MediaError, MediaOptions, Role};
use std::collections::VecDeque;
use std::time::{Duration, Instant};
use webrtc_srtp::context::Context;
use webrtc_srtp::option::{srtcp_replay_protection, srtp_replay_protection};
use webrtc_srtp::protection_profile::ProtectionProfile;

/// The first bytes of every synthetic payload (plaintext): a test can look for them in
/// what went over the wire.
pub const SYNTHETIC_MARKER: &[u8; 8] = b"MSVSYNTH";
/// Largest RTP payload of a video packet: with RTP, SRTP's 16-byte tag and TURN's 4-byte
/// ChannelData header, a packet stays well under a 1280-byte IPv6 MTU.
pub const MAX_PAYLOAD: usize = 1100;
/// Time between two feedback packets.
pub const FEEDBACK_INTERVAL: Duration = Duration::from_millis(500);
/// Audio frame duration.
const AUDIO_FRAME: Duration = Duration::from_millis(20);
/// Payload type of audio (the Opus convention) and video (the first dynamic type).
const PT_AUDIO: u8 = 111;
const PT_VIDEO: u8 = 96;
/// RTCP APP.
const PT_APP: u8 = 204;
/// Bytes of the synthetic header inside each payload.
const SYNTH_HEADER: usize = 8 + 4 + 2 + 2 + 8;
/// RTP header length (no CSRC, no extension).
const RTP_HEADER: usize = 12;
/// AEAD-AES-GCM tag.
const TAG: usize = 16;
/// SRTP replay window (packets); a path switch can reorder a few.
const REPLAY_WINDOW: usize = 512;
/// Weight of a new interval in the smoothed loss.
const LOSS_EWMA: f64 = 0.3;
/// Weight of a new RTT sample.
const RTT_EWMA: f64 = 0.25;

/// The SSRCs a role sends: (audio, video).
fn ssrcs(role: Role) -> (u32, u32) {
    match role {
        Role::Caller => (0x4D53_0001, 0x4D53_0002),
        Role::Callee => (0x4D53_1001, 0x4D53_1002),
    }
}

fn other(role: Role) -> Role {
    match role {
        Role::Caller => Role::Callee,
        Role::Callee => Role::Caller,
    }
}

struct OutStream {
    ssrc: u32,
    pt: u8,
    seq: u16,
    frame_no: u32,
    next_at: Instant,
}

/// One call's media. See the module doc for the call order.
pub struct MediaSession {
    epoch: Instant,
    send_ctx: Context,
    recv_ctx: Context,
    feedback_ssrc: u32,
    peer_ssrcs: (u32, u32),
    audio: OutStream,
    audio_frame_bytes: usize,
    video: Option<OutStream>,
    video_interval: Duration,
    rate: RateController,
    sending: bool,
    recv_audio: StreamReceiver,
    recv_video: StreamReceiver,
    next_feedback: Instant,
    /// The peer's last feedback: its send time and when it arrived.
    last_peer_feedback: Option<(u64, Instant)>,
    out: VecDeque<Vec<u8>>,
    stats: CallStats,
    interval_sent_bytes: u64,
    interval_recv_bytes: u64,
    interval_started: Instant,
    rtt_ms: Option<f64>,
}

impl MediaSession {
    /// A session for `role` keyed from `secret`, starting at `now`.
    pub fn new(
        now: Instant,
        role: Role,
        secret: &CallSecret,
        opts: &MediaOptions,
    ) -> Result<Self, MediaError> {
        let ctx = |sender: Role, replay: bool| {
            let keys = secret.srtp_keys(sender);
            let (a, b) = if replay {
                (
                    Some(srtp_replay_protection(REPLAY_WINDOW)),
                    Some(srtcp_replay_protection(REPLAY_WINDOW)),
                )
            } else {
                (None, None)
            };
            Context::new(
                &keys.key,
                &keys.salt,
                ProtectionProfile::AeadAes128Gcm,
                a,
                b,
            )
            .map_err(|e| MediaError::Srtp(e.to_string()))
        };
        let (audio_ssrc, video_ssrc) = ssrcs(role);
        let fps = opts.video_fps.clamp(1, 120);
        let rand_seq = || rand::random::<u16>() & 0x7FFF;
        Ok(Self {
            epoch: now,
            send_ctx: ctx(role, false)?,
            recv_ctx: ctx(other(role), true)?,
            feedback_ssrc: audio_ssrc,
            peer_ssrcs: ssrcs(other(role)),
            audio: OutStream {
                ssrc: audio_ssrc,
                pt: PT_AUDIO,
                seq: rand_seq(),
                frame_no: 0,
                next_at: now,
            },
            audio_frame_bytes: (opts.audio_bps as usize / 8 / 50).clamp(SYNTH_HEADER, MAX_PAYLOAD),
            video: opts.video.then(|| OutStream {
                ssrc: video_ssrc,
                pt: PT_VIDEO,
                seq: rand_seq(),
                frame_no: 0,
                next_at: now,
            }),
            video_interval: Duration::from_secs(1) / fps,
            rate: RateController::new(opts.video_min_bps, opts.video_max_bps),
            sending: false,
            recv_audio: StreamReceiver::default(),
            recv_video: StreamReceiver::default(),
            next_feedback: now + FEEDBACK_INTERVAL,
            last_peer_feedback: None,
            out: VecDeque::new(),
            stats: CallStats::default(),
            interval_sent_bytes: 0,
            interval_recv_bytes: 0,
            interval_started: now,
            rtt_ms: None,
        })
    }

    fn us(&self, t: Instant) -> u64 {
        t.saturating_duration_since(self.epoch).as_micros() as u64
    }

    /// Starts or stops the source (media needs a selected path).
    pub fn set_sending(&mut self, now: Instant, on: bool) {
        if on && !self.sending {
            self.audio.next_at = now;
            if let Some(v) = &mut self.video {
                v.next_at = now;
            }
        }
        self.sending = on;
    }

    /// The video bitrate the controller allows now (bits/s).
    pub fn video_target_bps(&self) -> f64 {
        if self.video.is_some() {
            self.rate.target_bps()
        } else {
            0.0
        }
    }

    /// Produces the frames and feedback that are due.
    pub fn handle_timeout(&mut self, now: Instant) {
        if self.sending {
            while self.audio.next_at <= now {
                let at = self.audio.next_at;
                self.audio.next_at += AUDIO_FRAME;
                // A runner that fell behind skips frames instead of bursting them.
                if now.saturating_duration_since(at) > AUDIO_FRAME * 5 {
                    continue;
                }
                let n = self.audio_frame_bytes;
                self.send_frame(now, false, &[n], (self.us(at) * 48 / 1000) as u32);
            }
            if self.video.is_some() {
                let interval = self.video_interval;
                let fps = (Duration::from_secs(1).as_secs_f64() / interval.as_secs_f64()).max(1.0);
                while self.video.as_ref().is_some_and(|v| v.next_at <= now) {
                    let Some(v) = &mut self.video else { break };
                    let at = v.next_at;
                    v.next_at += interval;
                    if now.saturating_duration_since(at) > interval * 3 {
                        continue;
                    }
                    let bytes = ((self.rate.target_bps() / 8.0 / fps) as usize).max(SYNTH_HEADER);
                    let count = bytes.div_ceil(MAX_PAYLOAD).clamp(1, 200);
                    let each = (bytes / count).max(SYNTH_HEADER);
                    let sizes = vec![each; count];
                    self.send_frame(now, true, &sizes, (self.us(at) * 90 / 1000) as u32);
                }
            }
        }
        if self.next_feedback <= now {
            self.next_feedback = now + FEEDBACK_INTERVAL;
            self.send_feedback(now);
        }
    }

    fn send_frame(&mut self, now: Instant, video: bool, sizes: &[usize], rtp_ts: u32) {
        let sent_us = self.us(now);
        let count = sizes.len();
        for (idx, size) in sizes.iter().enumerate() {
            let s = if video {
                match &mut self.video {
                    Some(v) => v,
                    None => return,
                }
            } else {
                &mut self.audio
            };
            let mut pkt = Vec::with_capacity(RTP_HEADER + size + TAG);
            pkt.push(0x80);
            let marker = if idx + 1 == count { 0x80 } else { 0 };
            pkt.push(marker | s.pt);
            pkt.extend_from_slice(&s.seq.to_be_bytes());
            pkt.extend_from_slice(&rtp_ts.to_be_bytes());
            pkt.extend_from_slice(&s.ssrc.to_be_bytes());
            pkt.extend_from_slice(SYNTHETIC_MARKER);
            pkt.extend_from_slice(&s.frame_no.to_be_bytes());
            pkt.extend_from_slice(&(idx as u16).to_be_bytes());
            pkt.extend_from_slice(&(count as u16).to_be_bytes());
            pkt.extend_from_slice(&sent_us.to_be_bytes());
            // Filler a compressor would not shrink to nothing, and no plaintext marker.
            let fill = size.saturating_sub(SYNTH_HEADER);
            pkt.extend((0..fill).map(|i| (i as u8).wrapping_mul(31).wrapping_add(s.seq as u8)));
            s.seq = s.seq.wrapping_add(1);
            if let Ok(enc) = self.send_ctx.encrypt_rtp(&pkt) {
                self.interval_sent_bytes += enc.len() as u64;
                self.stats.frames_sent += 1;
                self.out.push_back(enc.to_vec());
            }
            if idx + 1 == count {
                s.frame_no = s.frame_no.wrapping_add(1);
            }
        }
    }

    fn send_feedback(&mut self, now: Instant) {
        let interval = now
            .saturating_duration_since(self.interval_started)
            .as_secs_f64();
        self.interval_started = now;
        let (ea, ra) = self.recv_audio.take_interval();
        let (ev, rv) = self.recv_video.take_interval();
        let loss = quality::loss_fraction(ea + ev, ra + rv);
        if ea + ev > 0 {
            self.stats.loss_percent = if self.stats.loss_percent == 0.0 && ra + rv == ea + ev {
                0.0
            } else {
                self.stats.loss_percent * (1.0 - LOSS_EWMA) + loss * 100.0 * LOSS_EWMA
            };
        }
        if interval > 0.0 {
            self.stats.send_kbps = self.interval_sent_bytes as f64 * 8.0 / 1000.0 / interval;
            self.stats.recv_kbps = self.interval_recv_bytes as f64 * 8.0 / 1000.0 / interval;
        }
        let recv_bps = if interval > 0.0 {
            (self.interval_recv_bytes as f64 / interval) as u32
        } else {
            0
        };
        self.interval_sent_bytes = 0;
        self.interval_recv_bytes = 0;
        let jitter = self.recv_audio.jitter_us().max(self.recv_video.jitter_us());
        let (echo_us, echo_delay_us) = match self.last_peer_feedback {
            Some((sent, at)) => (
                sent,
                now.saturating_duration_since(at)
                    .as_micros()
                    .min(u128::from(u32::MAX)) as u32,
            ),
            None => (0, 0),
        };
        let fb = Feedback {
            sent_us: self.us(now).max(1),
            echo_us,
            echo_delay_us,
            loss_ppm: (loss * 1e6) as u32,
            jitter_us: jitter as u32,
            recv_bytes_per_s: recv_bps,
            packets_received: self.recv_audio.received() + self.recv_video.received(),
        };
        let mut pkt = Vec::with_capacity(12 + Feedback::LEN);
        pkt.push(0x80);
        pkt.push(PT_APP);
        pkt.extend_from_slice(&(((12 + Feedback::LEN) / 4 - 1) as u16).to_be_bytes());
        pkt.extend_from_slice(&self.feedback_ssrc.to_be_bytes());
        pkt.extend_from_slice(b"MSVF");
        pkt.extend_from_slice(&fb.encode());
        if let Ok(enc) = self.send_ctx.encrypt_rtcp(&pkt) {
            self.out.push_back(enc.to_vec());
        }
    }

    /// An SRTP or SRTCP packet from the peer (first byte 128-191). Anything that does not
    /// authenticate is counted and dropped.
    pub fn handle_packet(&mut self, now: Instant, data: &[u8]) {
        // RFC 5761: RTCP packet types 192-223 in the second byte.
        let is_rtcp = data.len() >= 2 && (192..=223).contains(&data[1]);
        if is_rtcp {
            self.handle_rtcp(now, data);
            return;
        }
        self.stats.frames_received += 1;
        // Our packets: version 2, no padding, no extension, no CSRC, a full header, a tag.
        if data.len() < RTP_HEADER + SYNTH_HEADER + TAG || data[0] != 0x80 {
            self.stats.decrypt_failures += 1;
            return;
        }
        let Ok(plain) = self.recv_ctx.decrypt_rtp(data) else {
            self.stats.decrypt_failures += 1;
            return;
        };
        self.stats.frames_decrypted += 1;
        self.interval_recv_bytes += data.len() as u64;
        if self.stats.first_media_after.is_none() {
            self.stats.first_media_after = Some(now.saturating_duration_since(self.epoch));
        }
        let Some(p) = plain.get(RTP_HEADER..) else {
            return;
        };
        if p.len() < SYNTH_HEADER || &p[..8] != SYNTHETIC_MARKER {
            return;
        }
        let seq = u16::from_be_bytes([plain[2], plain[3]]);
        let ssrc = u32::from_be_bytes([plain[8], plain[9], plain[10], plain[11]]);
        let mut sent = [0u8; 8];
        sent.copy_from_slice(&p[16..24]);
        let sent_us = u64::from_be_bytes(sent);
        let arrival = self.us(now);
        if ssrc == self.peer_ssrcs.0 {
            self.recv_audio.on_packet(seq, sent_us, arrival);
        } else if ssrc == self.peer_ssrcs.1 {
            self.recv_video.on_packet(seq, sent_us, arrival);
        }
    }

    fn handle_rtcp(&mut self, now: Instant, data: &[u8]) {
        // Header, SSRC, tag and the 4-byte SRTCP index, before the library indexes them.
        if data.len() < 8 + TAG + 4 || data[0] >> 6 != 2 {
            self.stats.decrypt_failures += 1;
            return;
        }
        let Ok(plain) = self.recv_ctx.decrypt_rtcp(data) else {
            self.stats.decrypt_failures += 1;
            return;
        };
        if plain.len() != 12 + Feedback::LEN || plain[1] != PT_APP || &plain[8..12] != b"MSVF" {
            return;
        }
        let Some(fb) = Feedback::decode(&plain[12..]) else {
            return;
        };
        self.last_peer_feedback = Some((fb.sent_us, now));
        let now_us = self.us(now);
        if fb.echo_us > 0 {
            let rtt_us = now_us
                .saturating_sub(fb.echo_us)
                .saturating_sub(u64::from(fb.echo_delay_us));
            let sample = rtt_us as f64 / 1000.0;
            let rtt = match self.rtt_ms {
                Some(r) => r * (1.0 - RTT_EWMA) + sample * RTT_EWMA,
                None => sample,
            };
            self.rtt_ms = Some(rtt);
        }
        let loss = f64::from(fb.loss_ppm) / 1e6;
        self.stats.remote_loss_percent = loss * 100.0;
        if self.video.is_some() {
            self.rate
                .on_report(now_us, loss, self.rtt_ms.unwrap_or(0.0));
        }
    }

    /// The next packet to send on the selected path.
    pub fn poll_transmit(&mut self) -> Option<Vec<u8>> {
        self.out.pop_front()
    }

    /// When [`MediaSession::handle_timeout`] must run next.
    pub fn poll_timeout(&self) -> Instant {
        let mut t = self.next_feedback;
        if self.sending {
            t = t.min(self.audio.next_at);
            if let Some(v) = &self.video {
                t = t.min(v.next_at);
            }
        }
        t
    }

    /// The statistics so far (the path fields are the runner's).
    pub fn stats(&self) -> CallStats {
        let mut s = self.stats.clone();
        s.rtt_ms = self.rtt_ms.unwrap_or(0.0);
        s.jitter_ms = self.recv_audio.jitter_us().max(self.recv_video.jitter_us()) / 1000.0;
        s.video_target_kbps = self.video_target_bps() / 1000.0;
        s.mos = quality::mos(s.rtt_ms, s.jitter_ms, s.loss_percent);
        s
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pair(video: bool) -> (MediaSession, MediaSession, Instant) {
        let now = Instant::now();
        let secret = CallSecret::from_bytes([9; 32]);
        let opts = MediaOptions {
            video,
            ..MediaOptions::default()
        };
        let mut a = MediaSession::new(now, Role::Caller, &secret, &opts).unwrap();
        let mut b = MediaSession::new(now, Role::Callee, &secret, &opts).unwrap();
        a.set_sending(now, true);
        b.set_sending(now, true);
        (a, b, now)
    }

    /// Runs both sessions for `secs` with a one-way delay and every `drop_every`-th packet
    /// lost (0: none); returns whether a plaintext marker was ever seen on the wire.
    fn run(
        a: &mut MediaSession,
        b: &mut MediaSession,
        start: Instant,
        secs: u64,
        delay: Duration,
        drop_every: usize,
    ) -> bool {
        let mut wire: Vec<(Instant, bool, Vec<u8>)> = Vec::new();
        let mut now = start;
        let end = start + Duration::from_secs(secs);
        let mut n = 0usize;
        let mut marker_seen = false;
        while now < end {
            a.handle_timeout(now);
            b.handle_timeout(now);
            for (to_b, s) in [(true, &mut *a), (false, &mut *b)] {
                while let Some(p) = s.poll_transmit() {
                    n += 1;
                    marker_seen |= p.windows(8).any(|w| w == SYNTHETIC_MARKER);
                    if drop_every == 0 || !n.is_multiple_of(drop_every) {
                        wire.push((now + delay, to_b, p));
                    }
                }
            }
            let (due, rest): (Vec<_>, Vec<_>) = wire.drain(..).partition(|w| w.0 <= now);
            wire = rest;
            for (_, to_b, p) in due {
                if to_b {
                    b.handle_packet(now, &p);
                } else {
                    a.handle_packet(now, &p);
                }
            }
            now += Duration::from_millis(1);
        }
        marker_seen
    }

    #[test]
    fn media_flows_encrypted_both_ways_at_the_configured_rates() {
        let (mut a, mut b, t0) = pair(true);
        let seen = run(&mut a, &mut b, t0, 10, Duration::from_millis(10), 0);
        assert!(!seen, "a plaintext marker went over the wire");
        for s in [a.stats(), b.stats()] {
            assert!(s.frames_received > 0);
            assert_eq!(s.frames_decrypted, s.frames_received);
            assert_eq!(s.decrypt_failures, 0);
            // 32 kbit/s audio + 1.5 Mbit/s video, plus RTP/SRTP overhead.
            assert!((1_500.0..1_800.0).contains(&s.send_kbps), "{s:?}");
            assert!((15.0..30.0).contains(&s.rtt_ms), "{s:?}");
            assert!(s.loss_percent < 0.5, "{s:?}");
            assert!(s.mos > 4.0, "{s:?}");
            assert_eq!(s.video_target_kbps, 1500.0);
            assert!(s
                .first_media_after
                .is_some_and(|d| d < Duration::from_millis(50)));
        }
        // Audio alone: 50 frames a second.
        let (mut a, mut b, t0) = pair(false);
        run(&mut a, &mut b, t0, 2, Duration::from_millis(10), 0);
        let sent = a.stats().frames_sent;
        assert!((99..=101).contains(&sent), "{sent}");
        assert!(
            (30.0..50.0).contains(&a.stats().send_kbps),
            "{:?}",
            a.stats()
        );
    }

    #[test]
    fn loss_is_measured_and_video_backs_off_but_audio_does_not() {
        let (mut a, mut b, t0) = pair(true);
        // Every 20th packet lost: 5 %.
        run(&mut a, &mut b, t0, 10, Duration::from_millis(30), 20);
        for s in [a.stats(), b.stats()] {
            assert!((3.0..7.5).contains(&s.loss_percent), "{s:?}");
            assert!((50.0..80.0).contains(&s.rtt_ms), "{s:?}");
            assert!(s.video_target_kbps < 700.0, "{s:?}");
            assert!(s.mos < 4.3, "{s:?}");
        }
    }

    #[test]
    fn forged_replayed_and_garbage_packets_are_refused() {
        let (mut a, mut b, t0) = pair(false);
        a.handle_timeout(t0);
        let pkt = a.poll_transmit().expect("an audio frame");
        b.handle_packet(t0, &pkt);
        assert_eq!(b.stats().frames_decrypted, 1);
        // Replayed.
        b.handle_packet(t0, &pkt);
        // Flipped bit.
        let mut forged = pkt.clone();
        let last = forged.len() - 1;
        forged[last] ^= 1;
        b.handle_packet(t0, &forged);
        // A key from another call.
        let other = CallSecret::from_bytes([1; 32]);
        let mut c = MediaSession::new(t0, Role::Caller, &other, &MediaOptions::default()).unwrap();
        c.set_sending(t0, true);
        c.handle_timeout(t0);
        b.handle_packet(t0, &c.poll_transmit().unwrap());
        let s = b.stats();
        assert_eq!(s.frames_decrypted, 1);
        assert_eq!(s.decrypt_failures, 3);
        // Garbage of every length, SRTP- and SRTCP-shaped.
        let mut x: u32 = 3;
        for len in 0..400usize {
            for second in [0x6F, 204, 200] {
                let mut g: Vec<u8> = (0..len)
                    .map(|_| {
                        x ^= x << 13;
                        x ^= x >> 17;
                        x ^= x << 5;
                        x as u8
                    })
                    .collect();
                if len > 1 {
                    g[0] = 0x80;
                    g[1] = second;
                }
                b.handle_packet(t0, &g);
            }
        }
        assert_eq!(b.stats().frames_decrypted, 1);
    }
}
