//! Key claims per requesting user, across all of its connections: each claim hands out
//! one of someone's one-time keys, so a client must not be able to drain them by claiming
//! fast or by reconnecting for a fresh budget. Claims past it get fallback keys only.

use crate::budget::{Rate, TokenBucket};
use std::collections::HashMap;
use std::sync::Mutex;
use std::time::Instant;

/// Users tracked at most; past it, users whose bucket has refilled are forgotten (a full
/// bucket is what a new one would be).
const TRACKED_USERS: usize = 100_000;

/// One token bucket per user that claimed recently.
#[derive(Debug)]
pub struct ClaimBudgets {
    rate: Rate,
    buckets: Mutex<HashMap<String, TokenBucket>>,
}

impl ClaimBudgets {
    /// Budgets of `rate` per user.
    pub fn new(rate: Rate) -> Self {
        Self {
            rate,
            buckets: Mutex::new(HashMap::new()),
        }
    }

    /// Spends one claim of `user`'s budget; false when it is spent.
    pub fn try_claim(&self, user: &str, now: Instant) -> bool {
        let mut buckets = self
            .buckets
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        if buckets.len() >= TRACKED_USERS && !buckets.contains_key(user) {
            buckets.retain(|_, b| !b.is_full(now));
        }
        let rate = self.rate;
        buckets
            .entry(user.to_owned())
            .or_insert_with(|| TokenBucket::new(rate, now))
            .try_take(now, 1.0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn a_user_spends_one_budget_whatever_the_connection() {
        let budgets = ClaimBudgets::new(Rate::per_minute(60, 3));
        let now = Instant::now();
        assert!((0..3).all(|_| budgets.try_claim("mallory", now)));
        assert!(!budgets.try_claim("mallory", now), "burst spent");
        assert!(budgets.try_claim("alice", now), "others keep theirs");
        // One claim a second comes back.
        assert!(budgets.try_claim("mallory", now + Duration::from_secs(1)));
        assert!(!budgets.try_claim("mallory", now + Duration::from_secs(1)));
    }
}
