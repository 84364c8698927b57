//! Token buckets: the rate and burst budgets a session or an address spends before work is
//! done. Plain values; time is an argument (`now`), never read here.

use std::time::{Duration, Instant};

/// A rate and the burst allowed above it: `rate` tokens per `per` refill the bucket, which
/// holds at most `burst`.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Rate {
    /// Tokens added per `per`.
    pub rate: f64,
    /// The refill period `rate` is counted over.
    pub per: Duration,
    /// Most tokens the bucket holds (what a quiet client may spend at once).
    pub burst: f64,
}

impl Rate {
    /// `rate` per second with room for `burst` at once (at least one).
    pub fn per_second(rate: u32, burst: u32) -> Self {
        Self {
            rate: f64::from(rate),
            per: Duration::from_secs(1),
            burst: f64::from(burst.max(1)),
        }
    }

    /// `rate` per minute with room for `burst` at once (at least one).
    pub fn per_minute(rate: u32, burst: u32) -> Self {
        Self {
            rate: f64::from(rate),
            per: Duration::from_secs(60),
            burst: f64::from(burst.max(1)),
        }
    }
}

/// One bucket, full at start.
#[derive(Debug, Clone)]
pub struct TokenBucket {
    rate: Rate,
    tokens: f64,
    at: Instant,
}

impl TokenBucket {
    /// A full bucket.
    pub fn new(rate: Rate, now: Instant) -> Self {
        Self {
            rate,
            tokens: rate.burst,
            at: now,
        }
    }

    fn refill(&mut self, now: Instant) {
        let elapsed = now.saturating_duration_since(self.at).as_secs_f64();
        self.at = now;
        let per = self.rate.per.as_secs_f64().max(f64::MIN_POSITIVE);
        self.tokens = (self.tokens + elapsed * self.rate.rate / per).min(self.rate.burst);
    }

    /// Takes `cost` tokens if the bucket holds them; false (and nothing taken) otherwise.
    /// A cost above the burst can never be paid; callers bound costs first.
    pub fn try_take(&mut self, now: Instant, cost: f64) -> bool {
        self.refill(now);
        if self.tokens >= cost {
            self.tokens -= cost;
            true
        } else {
            false
        }
    }

    /// True once the bucket is full again: it then says nothing a fresh bucket would not,
    /// so a table of buckets may drop it.
    pub fn is_full(&mut self, now: Instant) -> bool {
        self.refill(now);
        self.tokens >= self.rate.burst
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_bucket_allows_its_burst_then_its_rate() {
        let t0 = Instant::now();
        let mut b = TokenBucket::new(Rate::per_second(10, 5), t0);
        assert_eq!((0..20).filter(|_| b.try_take(t0, 1.0)).count(), 5);
        // One second later: ten more tokens, capped at the burst of five.
        let t1 = t0 + Duration::from_secs(1);
        assert_eq!((0..20).filter(|_| b.try_take(t1, 1.0)).count(), 5);
        // 100 ms later: one token.
        let t2 = t1 + Duration::from_millis(100);
        assert!(b.try_take(t2, 1.0));
        assert!(!b.try_take(t2, 1.0));
    }

    #[test]
    fn costs_are_taken_whole_or_not_at_all() {
        let t0 = Instant::now();
        let mut b = TokenBucket::new(Rate::per_second(100, 100), t0);
        assert!(b.try_take(t0, 60.0));
        assert!(!b.try_take(t0, 60.0), "only 40 left");
        assert!(b.try_take(t0, 40.0));
        assert!(!b.is_full(t0));
        assert!(b.is_full(t0 + Duration::from_secs(1)));
    }

    #[test]
    fn per_minute_rates_refill_slowly() {
        let t0 = Instant::now();
        let mut b = TokenBucket::new(Rate::per_minute(6, 1), t0);
        assert!(b.try_take(t0, 1.0));
        assert!(!b.try_take(t0 + Duration::from_secs(9), 1.0));
        assert!(b.try_take(t0 + Duration::from_secs(10), 1.0));
    }
}
