//! What a bench message carries: who sent it, its sequence in that sender's stream, and when
//! it was sent (µs since the run's start, on this process's monotonic clock).

/// Decoded header of a bench message.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Stamp {
    /// Index of the sending stream (one per sender→recipient direction).
    pub stream: u32,
    /// Sequence within that stream, from 0.
    pub seq: u64,
    /// Send time, µs since the run started.
    pub sent_us: u64,
}

/// Encodes a stamp padded with `x` to `size` bytes (never shorter than the stamp itself).
pub fn encode(stamp: Stamp, size: usize) -> String {
    let mut s = format!("{}:{}:{}|", stamp.stream, stamp.seq, stamp.sent_us);
    if s.len() < size {
        s.extend(std::iter::repeat_n('x', size - s.len()));
    }
    s
}

/// Decodes a stamp; `None` for text that is not a bench message.
pub fn decode(text: &str) -> Option<Stamp> {
    let head = text.split('|').next()?;
    let mut parts = head.split(':');
    let stamp = Stamp {
        stream: parts.next()?.parse().ok()?,
        seq: parts.next()?.parse().ok()?,
        sent_us: parts.next()?.parse().ok()?,
    };
    parts.next().is_none().then_some(stamp)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip_and_padding() {
        let s = Stamp {
            stream: 3,
            seq: 99,
            sent_us: 123_456,
        };
        let t = encode(s, 100);
        assert_eq!(t.len(), 100);
        assert_eq!(decode(&t), Some(s));
        assert_eq!(decode("hello"), None);
        assert_eq!(decode("1:2|"), None);
    }
}
