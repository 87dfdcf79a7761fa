//! The `max_rate` cap of a bridge: a token bucket of PUBLISH packets per second, holding at most
//! one second's worth, so a link that was idle sends one second's burst and then the rate.

use std::time::Duration;

use tokio::time::Instant;

#[derive(Debug)]
pub(super) struct TokenBucket {
    per_second: f64,
    tokens: f64,
    refilled: Instant,
}

impl TokenBucket {
    pub(super) fn new(per_second: u32, now: Instant) -> Self {
        let per_second = f64::from(per_second.max(1));
        TokenBucket { per_second, tokens: per_second, refilled: now }
    }

    fn refill(&mut self, now: Instant) {
        let elapsed = now.saturating_duration_since(self.refilled).as_secs_f64();
        self.tokens = (self.tokens + elapsed * self.per_second).min(self.per_second);
        self.refilled = now;
    }

    /// Whole packets that may go now.
    pub(super) fn available(&mut self, now: Instant) -> usize {
        self.refill(now);
        self.tokens as usize
    }

    /// Takes `n` packets' tokens (sent; may go below zero by a batch's excess).
    pub(super) fn take(&mut self, n: usize) {
        self.tokens -= n as f64;
    }

    /// When the next whole token is there.
    pub(super) fn next_at(&mut self, now: Instant) -> Instant {
        self.refill(now);
        let missing = (1.0 - self.tokens).max(0.0);
        now + Duration::from_secs_f64(missing / self.per_second)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_bucket_holds_one_second_and_refills_at_the_rate() {
        let start = Instant::now();
        let mut bucket = TokenBucket::new(100, start);
        assert_eq!(bucket.available(start), 100);
        bucket.take(100);
        assert_eq!(bucket.available(start), 0);
        let next = bucket.next_at(start) - start;
        assert!(next > Duration::from_millis(9) && next <= Duration::from_millis(10), "{next:?}");
        assert_eq!(bucket.available(start + Duration::from_millis(250)), 25);
        assert_eq!(bucket.available(start + Duration::from_secs(60)), 100, "one second's burst at most");
    }
}
