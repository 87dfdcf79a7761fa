//! The memory that partly received large packets may hold, all connections together
//! (`limits.max_incomplete_packet_bytes`).
//!
//! A packet up to `mqtt.max_packet_size` is accepted, but a client that announces a large one
//! makes the broker hold its bytes until the last one arrives. Many clients doing that at once
//! (or slowly, on purpose) could exhaust memory; so a packet larger than one read buffer
//! reserves its whole size from this budget before its body is read, and a connection that
//! finds the budget spent stops reading until another packet completes. Reserving whole
//! packets, never parts, means two half-read packets can never wait on each other.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

use tokio::sync::Notify;

#[derive(Debug)]
pub struct PacketBudget {
    limit: usize,
    used: AtomicUsize,
    freed: Notify,
}

/// Bytes of the budget held by one connection's packet; given back when dropped.
#[derive(Debug)]
pub struct Reservation {
    budget: Arc<PacketBudget>,
    pub bytes: usize,
}

impl PacketBudget {
    pub fn new(limit: usize) -> Arc<PacketBudget> {
        Arc::new(PacketBudget { limit, used: AtomicUsize::new(0), freed: Notify::new() })
    }

    /// Reserves `bytes`, or `None` while the budget cannot hold them.
    pub fn try_reserve(self: &Arc<Self>, bytes: usize) -> Option<Reservation> {
        self.used
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |used| {
                used.checked_add(bytes).filter(|&total| total <= self.limit)
            })
            .ok()
            .map(|_| Reservation { budget: self.clone(), bytes })
    }

    /// Returns once `bytes` would fit (another connection may take them first; the caller
    /// tries again).
    pub async fn wait_for(self: Arc<Self>, bytes: usize) {
        loop {
            let freed = self.freed.notified();
            tokio::pin!(freed);
            freed.as_mut().enable();
            if self.used.load(Ordering::Acquire).saturating_add(bytes) <= self.limit {
                return;
            }
            freed.await;
        }
    }

    pub fn used(&self) -> usize {
        self.used.load(Ordering::Acquire)
    }
}

impl Drop for Reservation {
    fn drop(&mut self) {
        self.budget.used.fetch_sub(self.bytes, Ordering::AcqRel);
        self.budget.freed.notify_waiters();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn reservations_never_exceed_the_limit_and_are_given_back() {
        let budget = PacketBudget::new(100);
        let a = budget.try_reserve(60).unwrap();
        assert!(budget.try_reserve(41).is_none());
        let b = budget.try_reserve(40).unwrap();
        assert_eq!(budget.used(), 100);
        drop(a);
        assert_eq!(budget.used(), 40);
        drop(b);
        assert_eq!(budget.used(), 0);
        assert!(budget.try_reserve(101).is_none(), "larger than the whole budget");
    }

    #[tokio::test]
    async fn a_waiter_wakes_when_enough_is_given_back() {
        let budget = PacketBudget::new(100);
        let held = budget.try_reserve(80).unwrap();
        let waiter = tokio::spawn(budget.clone().wait_for(50));
        tokio::time::sleep(Duration::from_millis(20)).await;
        assert!(!waiter.is_finished());
        drop(held);
        tokio::time::timeout(Duration::from_secs(1), waiter).await.unwrap().unwrap();
        assert!(budget.try_reserve(50).is_some());
    }
}
