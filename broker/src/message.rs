//! Application messages as they travel through the broker.
//!
//! A PUBLISH is turned into one `Arc<Message>` that every matching session shares; per-subscriber
//! facts (granted QoS, retain flag on this delivery, subscription identifiers, packet id) live
//! beside it in a `Delivery`, never in it.

use std::fmt;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use bytestring::ByteString;
use tokio::time::Instant;

use crate::packet::{PacketId, Publish, PublishProperties, QoS, Will};
use crate::session::ClientId;

/// An application message, stored once however many subscribers receive it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Message {
    pub topic: ByteString,
    pub payload: Bytes,
    /// The QoS the publisher used: the ceiling for every delivery.
    pub qos: QoS,
    pub retain: bool,
    /// Forwarded MQTT 5 properties (never a topic alias or subscription identifiers: those
    /// belong to one connection and one subscriber).
    pub properties: PublishProperties,
    /// When the broker took the message, for Message Expiry [MQTT-3.3.2-6].
    pub received: Instant,
    /// The publishing client, for No Local [MQTT-3.8.3-3]; `None` for messages the broker made.
    pub origin: Option<ClientId>,
    /// Storage identity and the number of stored deliveries that reference it.
    pub durable: Durable,
}

/// A message is stored once, when the first persistent session receives it, and deleted when
/// the last stored delivery referencing it is.
#[derive(Debug, Default)]
pub struct Durable {
    id: AtomicU64,
    refs: AtomicUsize,
}

impl Clone for Durable {
    /// A copy of a message is a different message: not stored.
    fn clone(&self) -> Self {
        Durable::default()
    }
}

impl PartialEq for Durable {
    /// Storage identity does not make two messages different.
    fn eq(&self, _: &Self) -> bool {
        true
    }
}

impl Eq for Durable {}

impl Durable {
    /// The stored id (0 when not stored).
    pub fn id(&self) -> u64 {
        self.id.load(Ordering::Acquire)
    }

    /// Adds `n` references; returns the id to store the message under when this made it
    /// stored (it had no id yet). `allocate` provides a fresh id.
    /// A message whose references had all been released (its deletion is already in a
    /// journal) is stored again under its id: the put follows the delete in commit order.
    pub fn acquire(&self, n: usize, allocate: impl FnOnce() -> u64) -> Option<u64> {
        let before = self.refs.fetch_add(n, Ordering::AcqRel);
        let id = self.id.load(Ordering::Acquire);
        if id != 0 {
            return (before == 0).then_some(id);
        }
        let id = allocate();
        self.id.compare_exchange(0, id, Ordering::AcqRel, Ordering::Acquire).ok().map(|_| id)
    }

    /// Takes the stored id of a message loaded at start, with its reference count.
    pub fn restore(&self, id: u64, refs: usize) {
        self.id.store(id, Ordering::Release);
        self.refs.store(refs, Ordering::Release);
    }

    /// Drops one reference; returns the id to delete when it was the last.
    pub fn release(&self) -> Option<u64> {
        let before = self.refs.fetch_sub(1, Ordering::AcqRel);
        (before == 1).then(|| self.id())
    }

    pub fn refs(&self) -> usize {
        self.refs.load(Ordering::Acquire)
    }
}

impl Message {
    /// A message without properties, received now, from no client (tests, benchmarks).
    pub fn new(topic: impl Into<ByteString>, payload: impl Into<Bytes>, qos: QoS) -> Self {
        Message {
            topic: topic.into(),
            payload: payload.into(),
            qos,
            retain: false,
            properties: PublishProperties::default(),
            received: Instant::now(),
            origin: None,
            durable: Durable::default(),
        }
    }

    pub fn from_publish(p: &Publish, origin: &ClientId) -> Self {
        let mut properties = p.properties.clone();
        properties.topic_alias = None;
        properties.subscription_ids.clear();
        Message {
            topic: p.topic.clone(),
            payload: p.payload.clone(),
            qos: p.qos,
            retain: p.retain,
            properties,
            received: Instant::now(),
            origin: Some(origin.clone()),
            durable: Durable::default(),
        }
    }

    pub fn from_will(w: &Will, origin: &ClientId) -> Self {
        Message {
            topic: w.topic.clone(),
            payload: w.payload.clone(),
            qos: w.qos,
            retain: w.retain,
            properties: w.properties.clone(),
            received: Instant::now(),
            origin: Some(origin.clone()),
            durable: Durable::default(),
        }
    }

    /// Bytes this message costs a queue: what the limits in `[mqtt]` count.
    pub fn weight(&self) -> usize {
        self.topic.len() + self.payload.len()
    }

    /// Seconds of life left at `now`: `None` without an expiry, `Some(0)` once expired.
    pub fn remaining_expiry(&self, now: Instant) -> Option<u32> {
        let interval = self.properties.message_expiry?;
        let waited = now.saturating_duration_since(self.received);
        let left = Duration::from_secs(u64::from(interval)).saturating_sub(waited);
        // Rounded up, so a message with life left is never forwarded with an interval of 0.
        Some(left.as_secs_f64().ceil() as u32)
    }

    /// True once the Message Expiry Interval has passed [MQTT-3.3.2-5].
    pub fn is_expired(&self, now: Instant) -> bool {
        self.remaining_expiry(now) == Some(0)
    }
}

/// Identifies the shared subscription a delivery came through, so it can be handed to another
/// member of the group if this one leaves with it unacknowledged.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SharedRoute {
    /// The full `$share/{group}/{filter}` string.
    pub share: ByteString,
}

/// One message on its way to one session.
#[derive(Debug, Clone)]
pub struct Delivery {
    pub message: Arc<Message>,
    /// min(publish QoS, subscription QoS) [MQTT-3.8.4-6].
    pub qos: QoS,
    /// Retained messages sent because of a new subscription carry 1 [MQTT-3.3.1-8]; normal
    /// forwarding clears it [MQTT-3.3.1-9] unless Retain As Published [MQTT-3.3.1-12].
    pub retain: bool,
    /// Identifiers of every matching subscription of the receiver [MQTT-3.3.4-3].
    pub subscription_ids: Vec<u32>,
    /// Boxed: rare, and a `Delivery` stays within a cache line, which every hand-over to
    /// another core's session writes.
    pub shared: Option<Box<SharedRoute>>,
    /// Key of the stored delivery in the receiving session (persistent sessions, QoS 1/2).
    pub seq: Option<u64>,
}

impl Delivery {
    /// A delivery to a single subscription.
    pub fn new(message: Arc<Message>, qos: QoS, retain: bool) -> Self {
        Delivery { message, qos, retain, subscription_ids: Vec::new(), shared: None, seq: None }
    }

    /// The PUBLISH that carries this delivery at `now` (expiry decremented [MQTT-3.3.2-6]).
    pub fn into_forward(self, packet_id: Option<PacketId>, dup: bool, now: Instant) -> Forward {
        Forward {
            message_expiry: self.message.remaining_expiry(now),
            message: self.message,
            qos: self.qos,
            retain: self.retain,
            dup,
            packet_id,
            subscription_ids: self.subscription_ids,
        }
    }
}

/// A PUBLISH the broker sends to a subscriber: the shared message and what belongs to this one
/// delivery. The 3.1.1 encoder writes topic and payload straight from the message, so a fan-out
/// neither copies them nor touches their reference counts per subscriber.
#[derive(Clone, PartialEq, Eq)]
pub struct Forward {
    pub message: Arc<Message>,
    pub qos: QoS,
    pub retain: bool,
    pub dup: bool,
    /// Present exactly when `qos` is 1 or 2.
    pub packet_id: Option<PacketId>,
    pub subscription_ids: Vec<u32>,
    /// Seconds left when the PUBLISH was made, forwarded in place of the original interval.
    pub message_expiry: Option<u32>,
}

impl Forward {
    /// The packet as a stand-alone PUBLISH, properties included (what MQTT 5 encodes).
    pub fn into_publish(self) -> Publish {
        let mut properties = self.message.properties.clone();
        properties.message_expiry = self.message_expiry;
        properties.subscription_ids = self.subscription_ids;
        Publish {
            dup: self.dup,
            qos: self.qos,
            retain: self.retain,
            topic: self.message.topic.clone(),
            packet_id: self.packet_id,
            payload: self.message.payload.clone(),
            properties,
        }
    }
}

impl fmt::Debug for Forward {
    // Payloads are user data: never written to logs.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Forward")
            .field("topic", &self.message.topic)
            .field("qos", &self.qos)
            .field("packet_id", &self.packet_id)
            .field("dup", &self.dup)
            .field("retain", &self.retain)
            .field("payload_len", &self.message.payload.len())
            .field("subscription_ids", &self.subscription_ids)
            .field("message_expiry", &self.message_expiry)
            .finish()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn message(expiry: Option<u32>) -> Message {
        Message {
            topic: "t".into(),
            payload: "p".into(),
            qos: QoS::AtLeastOnce,
            retain: false,
            properties: PublishProperties { message_expiry: expiry, ..Default::default() },
            received: Instant::now(),
            origin: None,
            durable: Durable::default(),
        }
    }

    #[test]
    fn expiry_counts_down_from_receipt() {
        let m = message(Some(10));
        assert_eq!(m.remaining_expiry(m.received), Some(10));
        assert_eq!(m.remaining_expiry(m.received + Duration::from_millis(2500)), Some(8));
        assert!(!m.is_expired(m.received + Duration::from_millis(9999)));
        assert!(m.is_expired(m.received + Duration::from_secs(10)));
        assert_eq!(message(None).remaining_expiry(Instant::now()), None);
    }

    #[test]
    fn publish_carries_remaining_expiry_and_subscription_ids() {
        let m = Arc::new(message(Some(60)));
        let mut d = Delivery::new(m.clone(), QoS::AtLeastOnce, false);
        d.subscription_ids = vec![3, 9];
        let p = d.into_forward(None, false, m.received + Duration::from_secs(15)).into_publish();
        assert_eq!(p.properties.message_expiry, Some(45));
        assert_eq!(p.properties.subscription_ids, vec![3, 9]);
    }
}
