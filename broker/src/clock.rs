//! A monotonic time scale that fits in an atomic integer: durations since the first reading
//! in this process. Deadlines and timestamps shared between tasks are stored on it.

use std::sync::OnceLock;
use std::time::Duration;

// tokio's, so that tests with a paused clock move this one too.
use tokio::time::Instant;

/// How long after the first call in this process `at` is (zero for earlier instants).
pub fn since_start(at: Instant) -> Duration {
    static START: OnceLock<Instant> = OnceLock::new();
    at.saturating_duration_since(*START.get_or_init(Instant::now))
}
