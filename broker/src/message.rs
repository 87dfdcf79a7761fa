//! Application messages as they travel through the broker.
//!
//! A PUBLISH is turned into one `Arc<Message>` that every matching session shares; per-subscriber
//! facts (granted QoS, retain flag on this delivery, packet id) live beside it, never in it.

use std::sync::Arc;

use bytes::Bytes;
use bytestring::ByteString;

use crate::packet::{PacketId, Publish, QoS, Will};

/// An application message, stored once however many subscribers receive it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Message {
    pub topic: ByteString,
    pub payload: Bytes,
    /// The QoS the publisher used: the ceiling for every delivery.
    pub qos: QoS,
    pub retain: bool,
}

impl Message {
    pub fn from_publish(p: &Publish) -> Self {
        Message { topic: p.topic.clone(), payload: p.payload.clone(), qos: p.qos, retain: p.retain }
    }

    pub fn from_will(w: &Will) -> Self {
        Message { topic: w.topic.clone(), payload: w.payload.clone(), qos: w.qos, retain: w.retain }
    }

    /// Bytes this message costs a queue: what the limits in `[mqtt]` count.
    pub fn weight(&self) -> usize {
        self.topic.len() + self.payload.len()
    }
}

/// One message on its way to one session.
#[derive(Debug, Clone)]
pub struct Delivery {
    pub message: Arc<Message>,
    /// min(publish QoS, subscription QoS) [MQTT-3.8.4-6].
    pub qos: QoS,
    /// Set only for retained messages sent because of a new subscription [MQTT-3.3.1-8];
    /// normal forwarding clears it [MQTT-3.3.1-9].
    pub retain: bool,
}

impl Delivery {
    /// The PUBLISH that carries this delivery.
    pub fn to_publish(&self, packet_id: Option<PacketId>, dup: bool) -> Publish {
        Publish {
            dup,
            qos: self.qos,
            retain: self.retain,
            topic: self.message.topic.clone(),
            packet_id,
            payload: self.message.payload.clone(),
        }
    }
}
