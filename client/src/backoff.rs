//! The reconnect schedule: exponential backoff with jitter.

use std::time::Duration;

/// How the driver spaces reconnect attempts after a connection is lost.
///
/// Attempt `n` (0-based) waits `min(initial * 2^n, max)`, reduced by a random fraction of up
/// to `jitter` of itself, so that many clients cut off at once (an edge restart) do not all
/// come back in the same millisecond. The wait never exceeds `max`.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct ReconnectPolicy {
    /// Wait before the first retry (default 200 ms).
    pub initial: Duration,
    /// Longest wait between retries (default 10 s).
    pub max: Duration,
    /// Fraction in `0.0..=1.0` by which a wait may be shortened at random (default 0.3).
    pub jitter: f64,
}

impl Default for ReconnectPolicy {
    fn default() -> Self {
        Self {
            initial: Duration::from_millis(200),
            max: Duration::from_secs(10),
            jitter: 0.3,
        }
    }
}

impl ReconnectPolicy {
    /// The wait before retry `attempt` (0-based), given a uniform random `unit` in `0.0..1.0`.
    ///
    /// Pure, so the schedule can be tested; [`ReconnectPolicy::delay_random`] draws `unit`.
    pub fn delay(&self, attempt: u32, unit: f64) -> Duration {
        let factor = 2u32.saturating_pow(attempt.min(31));
        let base = self.initial.saturating_mul(factor).min(self.max);
        let jitter = self.jitter.clamp(0.0, 1.0) * unit.clamp(0.0, 1.0);
        base.mul_f64(1.0 - jitter)
    }

    /// [`ReconnectPolicy::delay`] with a random jitter.
    pub fn delay_random(&self, attempt: u32) -> Duration {
        self.delay(attempt, rand::random::<f64>())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn doubles_up_to_the_cap() {
        let p = ReconnectPolicy::default();
        let ms = |a| p.delay(a, 0.0).as_millis();
        assert_eq!(
            (0..9).map(ms).collect::<Vec<_>>(),
            vec![200, 400, 800, 1600, 3200, 6400, 10_000, 10_000, 10_000]
        );
        assert_eq!(ms(1000), 10_000, "huge attempt counts must not overflow");
    }

    #[test]
    fn jitter_only_shortens_within_its_fraction() {
        let p = ReconnectPolicy::default();
        for a in 0..12 {
            let full = p.delay(a, 0.0);
            for u in [0.0, 0.25, 0.5, 0.999] {
                let d = p.delay(a, u);
                assert!(d <= full && d <= p.max);
                assert!(d >= full.mul_f64(0.7) - Duration::from_micros(1));
            }
            let r = p.delay_random(a);
            assert!(r <= full && r >= full.mul_f64(0.69));
        }
    }
}
