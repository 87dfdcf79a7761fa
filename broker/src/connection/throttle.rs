//! `limits.max_publish_rate`: a token bucket per connection. A client publishing faster than
//! the rate is not disconnected and nothing it sent is dropped: the connection stops reading
//! until the bucket refills, so TCP flow control slows the publisher down.

use std::time::Duration;

use tokio::time::Instant;
use tracing::warn;

pub(super) struct Throttle {
    /// PUBLISH packets per second; also the burst size.
    rate: f64,
    tokens: f64,
    refilled: Instant,
    /// Inside a throttled episode (logged once per episode).
    limiting: bool,
}

impl Throttle {
    /// `None` when the rate is 0 (unlimited).
    pub fn new(rate: u32, now: Instant) -> Option<Throttle> {
        (rate > 0).then(|| {
            let rate = f64::from(rate);
            Throttle { rate, tokens: rate, refilled: now, limiting: false }
        })
    }

    fn refill(&mut self, now: Instant) {
        let elapsed = now.saturating_duration_since(self.refilled).as_secs_f64();
        self.tokens = (self.tokens + elapsed * self.rate).min(self.rate);
        self.refilled = now;
    }

    /// Counts one PUBLISH (the bucket may go below zero: the packet was already read).
    pub fn take(&mut self, now: Instant) {
        self.refill(now);
        self.tokens -= 1.0;
    }

    /// When reading may go on; `None` means now.
    pub fn resume_at(&mut self, now: Instant) -> Option<Instant> {
        self.refill(now);
        if self.tokens >= 0.0 {
            self.limiting = false;
            return None;
        }
        if !self.limiting {
            self.limiting = true;
            warn!(rate = self.rate, "limits.max_publish_rate reached: reading paused");
        }
        Some(now + Duration::from_secs_f64(-self.tokens / self.rate))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_burst_beyond_the_rate_pauses_reading_until_it_is_paid_back() {
        let start = Instant::now();
        assert!(Throttle::new(0, start).is_none(), "0 = unlimited");
        let mut t = Throttle::new(10, start).unwrap();
        for _ in 0..10 {
            t.take(start);
        }
        assert_eq!(t.resume_at(start), None, "one second's worth is a burst");
        for _ in 0..5 {
            t.take(start);
        }
        let resume = t.resume_at(start).unwrap();
        assert_eq!(resume.duration_since(start), Duration::from_millis(500), "5 over at 10/s");
        assert_eq!(t.resume_at(resume), None);
        // The bucket refills to one burst at most.
        let later = resume + Duration::from_secs(60);
        for _ in 0..10 {
            t.take(later);
        }
        assert_eq!(t.resume_at(later), None);
        t.take(later);
        assert!(t.resume_at(later).is_some());
    }
}
