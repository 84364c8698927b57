//! How large an envelope may be so that every frame that carries it fits the frame limit.
//!
//! An envelope travels twice: inside the sender's `Send` and inside each recipient device's
//! `Deliver`, which adds the sender's name, device, seq and timestamp. Encrypted envelopes do
//! not compress, so the bound is on the uncompressed archive. A server that accepted an
//! envelope whose `Deliver` exceeded the recipient's frame limit would jam that mailbox: the
//! limit is derived here, from the worst-case frame, in one place for both sides.

use crate::MAX_USER_NAME;

/// Bytes a `Deliver` (or `Send`) archive adds around its envelope, at most: the fixed fields,
/// a sender name of [`MAX_USER_NAME`] bytes, and alignment padding. The unit tests below
/// archive the worst cases and check this bound holds with room to spare.
pub const ENVELOPE_FRAME_OVERHEAD: usize = 128;

/// The largest envelope a server with frame limit `max_frame` accepts in a `Send`: its
/// `Deliver` to any recipient then fits in `max_frame` too.
pub fn max_envelope_len(max_frame: u32) -> usize {
    (max_frame as usize)
        .min(crate::HARD_MAX_FRAME)
        .saturating_sub(ENVELOPE_FRAME_OVERHEAD)
}

const _: () = assert!(
    MAX_USER_NAME <= 32,
    "ENVELOPE_FRAME_OVERHEAD assumes short names"
);

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{
        encode_to_vec, ClientMsgId, Deliver, DeviceEnvelope, DeviceId, Frame, Payload, Send,
        ServerSeq,
    };
    use crate::{HARD_MAX_FRAME, HEADER_LEN};

    fn deliver(envelope: Vec<u8>) -> Frame {
        Deliver {
            seq: ServerSeq(u64::MAX),
            from: "a".repeat(MAX_USER_NAME),
            from_device: DeviceId(u32::MAX),
            client_msg_id: ClientMsgId([0xff; 16]),
            server_ts_ms: u64::MAX,
            payload: Payload::Envelope(envelope),
        }
        .into()
    }

    fn send(envelope: Vec<u8>) -> Frame {
        Send {
            client_msg_id: ClientMsgId([0xff; 16]),
            to: "a".repeat(MAX_USER_NAME),
            envelopes: vec![DeviceEnvelope {
                device: DeviceId(u32::MAX),
                envelope,
            }],
            own: Vec::new(),
            expires_in_secs: 0,
        }
        .into()
    }

    /// Random bytes do not compress, so the encoder sends them as they are: the worst case.
    fn incompressible(len: usize) -> Vec<u8> {
        let mut x = 0x9e37_79b9_7f4a_7c15u64;
        (0..len)
            .map(|_| {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                x as u8
            })
            .collect()
    }

    #[test]
    fn the_largest_accepted_envelope_fits_every_frame_that_carries_it() {
        for max_frame in [1024u32, 4096, 65_536, 1 << 20, 1 << 20 | 7] {
            let len = max_envelope_len(max_frame);
            for frame in [deliver(incompressible(len)), send(incompressible(len))] {
                let payload = encode_to_vec(&frame).unwrap().len() - HEADER_LEN;
                assert!(
                    payload <= max_frame as usize,
                    "{} of {len}-byte envelope is {payload} bytes > {max_frame}",
                    frame.name()
                );
            }
        }
    }

    #[test]
    fn the_overhead_bound_is_not_loose_by_much() {
        // Not loose by much: measured overheads are 53 to 103 bytes (rkyv pads by length).
        for len in [
            0usize,
            1,
            7,
            8,
            9,
            127,
            128,
            255,
            256,
            1000,
            65_535,
            65_536,
            1 << 20,
        ] {
            let f = deliver(incompressible(len));
            let overhead = encode_to_vec(&f).unwrap().len() - HEADER_LEN - len;
            assert!(overhead <= ENVELOPE_FRAME_OVERHEAD, "overhead {overhead}");
            assert!(
                overhead + 80 >= ENVELOPE_FRAME_OVERHEAD,
                "overhead {overhead}"
            );
        }
    }

    #[test]
    fn limits_never_exceed_the_hard_cap() {
        assert_eq!(
            max_envelope_len(u32::MAX),
            HARD_MAX_FRAME - ENVELOPE_FRAME_OVERHEAD
        );
        assert_eq!(max_envelope_len(10), 0);
    }
}
