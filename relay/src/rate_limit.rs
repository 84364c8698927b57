//! Token buckets for the per-allocation relay budget (bytes/s and packets/s).

use std::time::Instant;

/// A token bucket refilled at `rate` tokens per second up to `rate` tokens (a one-second
/// burst). A rate of 0 means unlimited.
#[derive(Debug, Clone)]
pub(crate) struct TokenBucket {
    rate: u64,
    /// Tokens in millionths, so a refill over a few microseconds is not rounded away.
    micro_tokens: u64,
    last: Instant,
}

impl TokenBucket {
    /// A full bucket.
    pub(crate) fn new(rate: u64, now: Instant) -> Self {
        Self {
            rate,
            micro_tokens: rate.saturating_mul(1_000_000),
            last: now,
        }
    }

    /// Takes `n` tokens if they are there; `false` (and nothing taken) otherwise.
    pub(crate) fn try_take(&mut self, n: u64, now: Instant) -> bool {
        if self.rate == 0 {
            return true;
        }
        self.refill(now);
        let need = n.saturating_mul(1_000_000);
        if self.micro_tokens >= need {
            self.micro_tokens -= need;
            true
        } else {
            false
        }
    }

    /// Gives back `n` tokens taken by a `try_take` whose packet was then dropped for another
    /// reason (the other bucket was empty).
    pub(crate) fn give_back(&mut self, n: u64) {
        let cap = self.rate.saturating_mul(1_000_000);
        self.micro_tokens = self
            .micro_tokens
            .saturating_add(n.saturating_mul(1_000_000))
            .min(cap);
    }

    fn refill(&mut self, now: Instant) {
        // Time going backwards (a caller mixing clocks) refills nothing rather than panicking.
        let elapsed = now.saturating_duration_since(self.last);
        self.last = self.last.max(now);
        let add = (elapsed.as_micros()).saturating_mul(u128::from(self.rate));
        let cap = self.rate.saturating_mul(1_000_000);
        let add = u64::try_from(add).unwrap_or(u64::MAX);
        self.micro_tokens = self.micro_tokens.saturating_add(add).min(cap);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn bucket_allows_a_burst_then_the_rate() {
        let t0 = Instant::now();
        let mut b = TokenBucket::new(100, t0);
        assert!((0..100).all(|_| b.try_take(1, t0)));
        assert!(!b.try_take(1, t0));
        let t1 = t0 + Duration::from_millis(100);
        assert_eq!((0..20).filter(|_| b.try_take(1, t1)).count(), 10);
        let t2 = t1 + Duration::from_secs(60);
        assert_eq!((0..200).filter(|_| b.try_take(1, t2)).count(), 100);
        b.give_back(5);
        assert_eq!((0..20).filter(|_| b.try_take(1, t2)).count(), 5);
        let mut unlimited = TokenBucket::new(0, t0);
        assert!((0..10_000).all(|_| unlimited.try_take(1500, t0)));
    }
}
