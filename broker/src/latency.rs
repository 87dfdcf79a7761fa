//! A latency histogram of atomics with fixed buckets, rendered as a Prometheus histogram
//! (`_bucket{le=...}`, `_sum`, `_count`). Recording is three relaxed `fetch_add`s and a
//! short scan of the bounds: cheap enough for a path that already waits on a disk write.

use std::fmt::Write as _;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

/// Upper bounds of the buckets, in microseconds (the last bucket, `+Inf`, is implicit).
pub const BOUNDS_MICROS: [u64; 12] =
    [100, 250, 500, 1_000, 2_500, 5_000, 10_000, 25_000, 50_000, 100_000, 250_000, 1_000_000];

/// Observations counted per bucket (not cumulative: `render` adds them up).
#[derive(Debug)]
pub struct Histogram {
    buckets: [AtomicU64; BOUNDS_MICROS.len() + 1],
    sum_micros: AtomicU64,
    count: AtomicU64,
}

impl Default for Histogram {
    fn default() -> Self {
        Self::new()
    }
}

/// A zero counter, for array initialisers in a `const fn`.
#[allow(clippy::declare_interior_mutable_const)]
const ZERO: AtomicU64 = AtomicU64::new(0);

impl Histogram {
    pub const fn new() -> Self {
        Histogram { buckets: [ZERO; BOUNDS_MICROS.len() + 1], sum_micros: ZERO, count: ZERO }
    }

    pub fn observe(&self, elapsed: Duration) {
        let micros = u64::try_from(elapsed.as_micros()).unwrap_or(u64::MAX);
        let bucket = BOUNDS_MICROS.iter().position(|&bound| micros <= bound).unwrap_or(BOUNDS_MICROS.len());
        self.buckets[bucket].fetch_add(1, Ordering::Relaxed);
        self.sum_micros.fetch_add(micros, Ordering::Relaxed);
        self.count.fetch_add(1, Ordering::Relaxed);
    }

    pub fn count(&self) -> u64 {
        self.count.load(Ordering::Relaxed)
    }

    /// The family `name` (in seconds) in the Prometheus text format. `_count` is read first and
    /// the buckets after, so a concurrent observation can make `+Inf` exceed it, never fall short:
    /// the count is taken as the `+Inf` bucket to keep the two equal, as the format requires.
    pub fn render(&self, out: &mut String, name: &str, help: &str) {
        let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} histogram");
        let mut cumulative = 0;
        for (bound, bucket) in BOUNDS_MICROS.iter().zip(&self.buckets) {
            cumulative += bucket.load(Ordering::Relaxed);
            let _ = writeln!(out, "{name}_bucket{{le=\"{}\"}} {cumulative}", *bound as f64 / 1e6);
        }
        cumulative += self.buckets[BOUNDS_MICROS.len()].load(Ordering::Relaxed);
        let sum = self.sum_micros.load(Ordering::Relaxed) as f64 / 1e6;
        let _ = writeln!(
            out,
            "{name}_bucket{{le=\"+Inf\"}} {cumulative}\n{name}_sum {sum}\n{name}_count {cumulative}"
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn buckets_are_cumulative_and_the_count_is_the_inf_bucket() {
        let h = Histogram::new();
        h.observe(Duration::from_micros(80));
        h.observe(Duration::from_micros(100));
        h.observe(Duration::from_millis(3));
        h.observe(Duration::from_secs(2));
        let mut out = String::new();
        h.render(&mut out, "t_seconds", "Test.");
        assert!(out.contains("# TYPE t_seconds histogram\n"), "{out}");
        assert!(out.contains("t_seconds_bucket{le=\"0.0001\"} 2\n"), "{out}");
        assert!(out.contains("t_seconds_bucket{le=\"0.0025\"} 2\n"), "{out}");
        assert!(out.contains("t_seconds_bucket{le=\"0.005\"} 3\n"), "{out}");
        assert!(out.contains("t_seconds_bucket{le=\"1\"} 3\n"), "{out}");
        assert!(
            out.contains("t_seconds_bucket{le=\"+Inf\"} 4\nt_seconds_sum 2.00318\nt_seconds_count 4\n"),
            "{out}"
        );
        assert_eq!(h.count(), 4);
    }
}
