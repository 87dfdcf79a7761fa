//! The broker's one set of counters: `$SYS` (`sys.rs`) and `GET /metrics` (`http.rs`) both
//! read them, so the two never disagree.
//!
//! Invariants and costs:
//! - Every counter is an atomic updated with `Relaxed` ordering: no lock, no clock read and no
//!   allocation on the hot path. A reader sees each counter exact, not a consistent snapshot of
//!   all of them at one instant (as Mosquitto's `$SYS` does).
//! - Counters only ever rise. Gauges (`*_current`) rise and fall; each fall matches an earlier
//!   rise of the same code path, so they cannot underflow.
//! - Gauges that would need a shared counter on the delivery path (messages queued per session)
//!   are not here: `Registry::queued` sums the sessions' own counters when someone asks.
//! - One process-wide set (`METRICS`). The places that count include the sans-IO session and
//!   its queue, which hold no handle on the broker; threading one through every constructor
//!   for a fact about the process (like its RSS) would buy nothing. One broker runs per
//!   process; in-process tests that start several share the counters, so exact counts are
//!   asserted by the black-box tests (one process per broker), and by unit tests on a local
//!   `Metrics`.

use std::sync::atomic::{AtomicU64, Ordering};

use crate::dead_letter::{Reason, Suppressed};
use crate::latency::Histogram;
use crate::packet::{QoS, ReasonCode};

/// The counters of this process.
pub static METRICS: Metrics = Metrics::new();

/// Why a message was not delivered to a subscriber (or not routed at all).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DropReason {
    /// A matching session's pending queue was over its limits (`mqtt.max_queued_*`).
    QueueFull = 0,
    /// Its Message Expiry Interval passed while it was queued [MQTT-3.3.2-5].
    Expired = 1,
    /// Larger than the subscriber's Maximum Packet Size [MQTT-3.1.2-25].
    TooLarge = 2,
    /// The publisher may not publish to the topic (ACL, or `$SYS/`).
    NotAuthorized = 3,
    /// No subscription matched the topic.
    NoSubscribers = 4,
}

impl DropReason {
    pub const ALL: [DropReason; 5] = [
        DropReason::QueueFull,
        DropReason::Expired,
        DropReason::TooLarge,
        DropReason::NotAuthorized,
        DropReason::NoSubscribers,
    ];

    /// The label value in `/metrics`.
    pub fn label(self) -> &'static str {
        match self {
            DropReason::QueueFull => "queue_full",
            DropReason::Expired => "expired",
            DropReason::TooLarge => "too_large",
            DropReason::NotAuthorized => "not_authorized",
            DropReason::NoSubscribers => "no_subscribers",
        }
    }
}

/// Protocol versions, in the order of `Metrics::connects_accepted`.
pub const PROTOCOLS: [&str; 3] = ["3.1", "3.1.1", "5.0"];

/// Packets and PUBLISHes of one batch, counted locally and added to the shared counters at
/// once (`Metrics::received`, `Metrics::sent`): updating those for every packet made the two
/// cores fight over their cache lines (closed-loop fan-out QoS 1 spent 0.24 µs more per
/// delivery, at 0.81 of the rate).
#[derive(Debug, Default)]
pub struct Tally {
    packets: u64,
    publishes: [u64; 3],
    publish_bytes: u64,
}

impl Tally {
    pub fn packet(&mut self) {
        self.packets += 1;
    }

    pub fn publish(&mut self, qos: QoS, payload_len: usize) {
        self.publishes[qos as usize] += 1;
        self.publish_bytes += payload_len as u64;
    }

    fn add_to(&self, packets: &AtomicU64, publishes: &[AtomicU64; 3], publish_bytes: &AtomicU64) {
        let add = |counter: &AtomicU64, n: u64| {
            if n > 0 {
                counter.fetch_add(n, Ordering::Relaxed);
            }
        };
        add(packets, self.packets);
        for (counter, &n) in publishes.iter().zip(&self.publishes) {
            add(counter, n);
        }
        add(publish_bytes, self.publish_bytes);
    }
}

/// Counters and gauges. All fields are public for reading; the methods name each event.
#[derive(Debug)]
pub struct Metrics {
    /// Clients with an open, accepted MQTT connection.
    pub clients_connected: AtomicU64,
    /// The most clients connected at once since start.
    pub clients_maximum: AtomicU64,
    /// Persistent sessions that ended by expiry or eviction while their client was away.
    pub sessions_expired: AtomicU64,
    /// TCP connections accepted (before any handshake).
    pub sockets_accepted: AtomicU64,
    /// CONNECTs accepted, by protocol (index into `PROTOCOLS`).
    pub connects_accepted: [AtomicU64; 3],
    /// CONNECTs refused with a CONNACK, by its (MQTT 5) reason code.
    pub connects_refused: [AtomicU64; 256],
    /// MQTT control packets of every kind.
    pub packets_received: AtomicU64,
    pub packets_sent: AtomicU64,
    /// PUBLISH packets by QoS.
    pub publish_received: [AtomicU64; 3],
    pub publish_sent: [AtomicU64; 3],
    /// Payload bytes of those PUBLISH packets.
    pub publish_bytes_received: AtomicU64,
    pub publish_bytes_sent: AtomicU64,
    /// MQTT bytes read from and written to clients (inside TLS and WebSocket framing).
    pub bytes_received: AtomicU64,
    pub bytes_sent: AtomicU64,
    /// Messages not delivered, by `DropReason`.
    pub dropped: [AtomicU64; 5],
    /// PUBLISH (index 0) and SUBSCRIBE filters (index 1) the ACL denied.
    pub acl_denied: [AtomicU64; 2],
    /// Subscriptions held by all sessions (shared ones included).
    pub subscriptions_current: AtomicU64,
    /// Retained messages, and their topic + payload bytes.
    pub retained_current: AtomicU64,
    pub retained_bytes_current: AtomicU64,
    /// Dead letters published, by `dead_letter::Reason`.
    pub dead_letters: [AtomicU64; Reason::ALL.len()],
    /// Lost copies that got no dead letter, by `dead_letter::Suppressed`.
    pub dead_letters_suppressed: [AtomicU64; Suppressed::ALL.len()],
    /// RocksDB write batches (group commits) and how long each took.
    pub storage_commits: Histogram,
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

/// A zero counter, for array initialisers in a `const fn`.
#[allow(clippy::declare_interior_mutable_const)]
const ZERO: AtomicU64 = AtomicU64::new(0);

impl Metrics {
    pub const fn new() -> Self {
        Metrics {
            clients_connected: ZERO,
            clients_maximum: ZERO,
            sessions_expired: ZERO,
            sockets_accepted: ZERO,
            connects_accepted: [ZERO; 3],
            connects_refused: [ZERO; 256],
            packets_received: ZERO,
            packets_sent: ZERO,
            publish_received: [ZERO; 3],
            publish_sent: [ZERO; 3],
            publish_bytes_received: ZERO,
            publish_bytes_sent: ZERO,
            bytes_received: ZERO,
            bytes_sent: ZERO,
            dropped: [ZERO; 5],
            acl_denied: [ZERO; 2],
            subscriptions_current: ZERO,
            retained_current: ZERO,
            retained_bytes_current: ZERO,
            dead_letters: [ZERO; Reason::ALL.len()],
            dead_letters_suppressed: [ZERO; Suppressed::ALL.len()],
            storage_commits: Histogram::new(),
        }
    }

    /// A client's CONNECT was accepted (`protocol` indexes `PROTOCOLS`).
    pub fn client_connected(&self, protocol: usize) {
        self.connects_accepted[protocol.min(2)].fetch_add(1, Ordering::Relaxed);
        let now = self.clients_connected.fetch_add(1, Ordering::Relaxed) + 1;
        self.clients_maximum.fetch_max(now, Ordering::Relaxed);
    }

    /// A connected client's connection ended (after `client_connected`).
    pub fn client_disconnected(&self) {
        self.clients_connected.fetch_sub(1, Ordering::Relaxed);
    }

    pub fn connect_refused(&self, reason: ReasonCode) {
        self.connects_refused[usize::from(reason.0)].fetch_add(1, Ordering::Relaxed);
    }

    /// Adds what a connection received in one batch of packets.
    pub fn received(&self, tally: &Tally) {
        tally.add_to(&self.packets_received, &self.publish_received, &self.publish_bytes_received);
    }

    /// Adds what a connection encoded in one batch of packets.
    pub fn sent(&self, tally: &Tally) {
        tally.add_to(&self.packets_sent, &self.publish_sent, &self.publish_bytes_sent);
    }

    pub fn packet_received(&self) {
        self.packets_received.fetch_add(1, Ordering::Relaxed);
    }

    pub fn packet_sent(&self) {
        self.packets_sent.fetch_add(1, Ordering::Relaxed);
    }

    pub fn bytes_received(&self, n: usize) {
        self.bytes_received.fetch_add(n as u64, Ordering::Relaxed);
    }

    pub fn bytes_sent(&self, n: usize) {
        self.bytes_sent.fetch_add(n as u64, Ordering::Relaxed);
    }

    pub fn dropped(&self, reason: DropReason, messages: usize) {
        self.dropped[reason as usize].fetch_add(messages as u64, Ordering::Relaxed);
    }

    pub fn dead_letter(&self, reason: Reason) {
        self.dead_letters[reason as usize].fetch_add(1, Ordering::Relaxed);
    }

    pub fn dead_letters_suppressed(&self, cause: Suppressed, copies: usize) {
        if copies > 0 {
            self.dead_letters_suppressed[cause as usize].fetch_add(copies as u64, Ordering::Relaxed);
        }
    }

    /// A subscription was added (`true`) or removed (`false`).
    pub fn subscription(&self, added: bool) {
        if added {
            self.subscriptions_current.fetch_add(1, Ordering::Relaxed);
        } else {
            self.subscriptions_current.fetch_sub(1, Ordering::Relaxed);
        }
    }

    /// A retained message of `weight` bytes was stored (`true`) or removed (`false`).
    pub fn retained(&self, added: bool, weight: usize) {
        if added {
            self.retained_current.fetch_add(1, Ordering::Relaxed);
            self.retained_bytes_current.fetch_add(weight as u64, Ordering::Relaxed);
        } else {
            self.retained_current.fetch_sub(1, Ordering::Relaxed);
            self.retained_bytes_current.fetch_sub(weight as u64, Ordering::Relaxed);
        }
    }

    /// Sum of an array of counters.
    pub fn sum(counters: &[AtomicU64]) -> u64 {
        counters.iter().map(|c| c.load(Ordering::Relaxed)).sum()
    }

    /// PUBLISH packets not delivered for lack of room, time or size: what Mosquitto counts as
    /// `publish/messages/dropped`. Refused (not authorized) and unmatched messages are not in it.
    pub fn publish_dropped(&self) -> u64 {
        [DropReason::QueueFull, DropReason::Expired, DropReason::TooLarge]
            .iter()
            .map(|&r| self.dropped[r as usize].load(Ordering::Relaxed))
            .sum()
    }
}

/// Reads a counter (shorthand for `load(Relaxed)`).
pub fn get(counter: &AtomicU64) -> u64 {
    counter.load(Ordering::Relaxed)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn maximum_follows_the_peak_of_connected() {
        let m = Metrics::new();
        m.client_connected(2);
        m.client_connected(1);
        m.client_disconnected();
        m.client_connected(1);
        m.client_disconnected();
        assert_eq!(get(&m.clients_connected), 1);
        assert_eq!(get(&m.clients_maximum), 2);
        assert_eq!(get(&m.connects_accepted[1]), 2);
        assert_eq!(get(&m.connects_accepted[2]), 1);
    }

    #[test]
    fn gauges_rise_and_fall() {
        let m = Metrics::new();
        m.subscription(true);
        m.subscription(true);
        m.subscription(false);
        m.retained(true, 10);
        m.retained(true, 5);
        m.retained(false, 10);
        assert_eq!(get(&m.subscriptions_current), 1);
        assert_eq!((get(&m.retained_current), get(&m.retained_bytes_current)), (1, 5));
    }

    #[test]
    fn publish_counts_by_qos_and_dropped_sums_the_undelivered() {
        let m = Metrics::new();
        let mut received = Tally::default();
        received.publish(QoS::AtLeastOnce, 4);
        received.publish(QoS::ExactlyOnce, 6);
        received.packet();
        received.packet();
        m.received(&received);
        let mut sent = Tally::default();
        sent.publish(QoS::AtMostOnce, 4);
        m.sent(&sent);
        assert_eq!(get(&m.packets_received), 2);
        assert_eq!(get(&m.packets_sent), 0);
        assert_eq!(Metrics::sum(&m.publish_received), 2);
        assert_eq!(get(&m.publish_received[1]), 1);
        assert_eq!(get(&m.publish_bytes_received), 10);
        assert_eq!(get(&m.publish_sent[0]), 1);
        for reason in DropReason::ALL {
            m.dropped(reason, 1);
        }
        assert_eq!(m.publish_dropped(), 3, "queue full, expired and too large");
        m.connect_refused(ReasonCode::NOT_AUTHORIZED);
        assert_eq!(get(&m.connects_refused[0x87]), 1);
    }
}
