//! The token bucket behind `dead_letter.max_rate`: a sustained rate with bursts of up to one
//! second's worth, so a sudden mass loss yields at most `2 × max_rate` dead letters in its
//! first second and `max_rate` per second after.

use tokio::time::Instant;

#[derive(Debug, Clone, Copy)]
pub struct TokenBucket {
    /// Tokens per second, and the most the bucket holds.
    rate: f64,
    tokens: f64,
    last: Instant,
}

impl TokenBucket {
    /// A full bucket of `rate` tokens refilled at `rate` per second; `None` for 0 (no limit).
    pub fn per_second(rate: u32, now: Instant) -> Option<Self> {
        (rate > 0).then(|| TokenBucket { rate: f64::from(rate), tokens: f64::from(rate), last: now })
    }

    /// Takes one token if there is one at `now`.
    pub fn take(&mut self, now: Instant) -> bool {
        let elapsed = now.saturating_duration_since(self.last);
        self.last = self.last.max(now);
        self.tokens = (self.tokens + elapsed.as_secs_f64() * self.rate).min(self.rate);
        if self.tokens >= 1.0 {
            self.tokens -= 1.0;
            true
        } else {
            false
        }
    }

    /// Time until the next token (tests).
    #[cfg(test)]
    pub fn next_in(&self) -> std::time::Duration {
        std::time::Duration::from_secs_f64(((1.0 - self.tokens) / self.rate).max(0.0))
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    #[test]
    fn bursts_one_second_then_sustains_the_rate() {
        let start = Instant::now();
        let mut bucket = TokenBucket::per_second(100, start).unwrap();
        let burst = (0..1000).filter(|_| bucket.take(start)).count();
        assert_eq!(burst, 100, "a full bucket holds one second's worth");
        assert!(!bucket.take(start));
        assert_eq!(bucket.next_in(), Duration::from_millis(10));
        // Over the next second, one token every 10 ms: 100 more, however often asked.
        let granted = (1..=10_000).filter(|i| bucket.take(start + Duration::from_micros(100 * i))).count();
        assert_eq!(granted, 100);
    }

    #[test]
    fn an_idle_bucket_refills_only_to_its_size() {
        let start = Instant::now();
        let mut bucket = TokenBucket::per_second(3, start).unwrap();
        let later = start + Duration::from_secs(3600);
        assert_eq!((0..10).filter(|_| bucket.take(later)).count(), 3);
        assert!(TokenBucket::per_second(0, start).is_none(), "0 = no limit");
    }
}
