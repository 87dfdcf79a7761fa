//! A client's session state, independent of any socket (sans-IO).
//!
//! The connection task owns its `Session` outright. Packets and deliveries go in through
//! `handle_*` methods; packets to send come out into a caller-provided `Vec`. When the network
//! connection closes, a persistent session stays alive in an offline task and is handed, by
//! value, to the next connection with the same client id (see `registry.rs`).

pub mod qos;
pub mod queue;
pub mod registry;

use std::collections::HashMap;
use std::fmt;

use bytestring::ByteString;

use crate::message::Delivery;
use crate::packet::{Packet, PacketId, ProtocolVersion, QoS};
use qos::{InboundQos2, OutboundWindow, UnexpectedAck};
use queue::{PendingQueue, QueueLimits};

/// A client identifier. Cheap to clone.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ClientId(pub ByteString);

impl From<&str> for ClientId {
    fn from(s: &str) -> Self {
        ClientId(ByteString::from(s))
    }
}

impl fmt::Display for ClientId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// Limits that shape a session's delivery.
#[derive(Debug, Clone, Copy)]
pub struct SessionLimits {
    pub max_inflight: usize,
    pub queue: QueueLimits,
}

/// Deliveries moved from the pending queue to the wire per wake-up, so one busy subscriber
/// cannot starve reading its own socket. 64 keeps a write batch near a few dozen KiB for
/// small messages.
const DELIVERY_BATCH: usize = 64;

#[derive(Debug)]
pub struct Session {
    pub client_id: ClientId,
    /// Protocol of the connection that last used the session.
    pub version: ProtocolVersion,
    /// Clean session 0: the session outlives the network connection [MQTT-3.1.2-4].
    pub persistent: bool,
    /// Topic filter -> granted QoS.
    pub subscriptions: HashMap<ByteString, QoS>,
    pub pending: PendingQueue,
    pub outbound: OutboundWindow,
    pub inbound: InboundQos2,
}

impl Session {
    pub fn new(
        client_id: ClientId,
        version: ProtocolVersion,
        persistent: bool,
        limits: SessionLimits,
    ) -> Self {
        Session {
            pending: PendingQueue::new(client_id.clone(), limits.queue),
            client_id,
            version,
            persistent,
            subscriptions: HashMap::new(),
            outbound: OutboundWindow::new(limits.max_inflight),
            inbound: InboundQos2::default(),
        }
    }

    /// True when another delivery can be taken from the pending queue.
    pub fn can_deliver(&self) -> bool {
        self.outbound.has_credit()
    }

    /// Sends one delivery: QoS 0 goes straight out, QoS 1/2 enters the in-flight window.
    pub fn handle_deliver(&mut self, delivery: Delivery, out: &mut Vec<Packet>) {
        if delivery.qos == QoS::AtMostOnce {
            out.push(Packet::Publish(delivery.to_publish(None, false)));
        } else {
            out.push(self.outbound.send(delivery));
        }
    }

    /// Moves pending deliveries to the wire while the window has room, at most one batch.
    pub fn pump(&mut self, out: &mut Vec<Packet>) {
        for _ in 0..DELIVERY_BATCH {
            if !self.can_deliver() {
                break;
            }
            let Some(delivery) = self.pending.try_pop() else { break };
            self.handle_deliver(delivery, out);
        }
    }

    /// On reconnect of a persistent session: the unacknowledged window first, in order.
    pub fn resume(&mut self, out: &mut Vec<Packet>) {
        self.outbound.resend_all(out);
        self.pump(out);
    }

    /// PUBACK, PUBREC or PUBCOMP from the client.
    pub fn handle_ack(&mut self, packet: &Packet, out: &mut Vec<Packet>) -> Result<(), UnexpectedAck> {
        match *packet {
            Packet::PubAck(id) => self.outbound.handle_puback(id)?,
            Packet::PubRec(id) => out.push(self.outbound.handle_pubrec(id)?),
            Packet::PubComp(id) => self.outbound.handle_pubcomp(id)?,
            _ => unreachable!("handle_ack takes PUBACK, PUBREC and PUBCOMP only"),
        }
        self.pump(out);
        Ok(())
    }

    /// QoS 2 PUBLISH from the client: true when it is new and must be routed.
    pub fn handle_inbound_qos2(&mut self, packet_id: PacketId) -> bool {
        self.inbound.handle_publish(packet_id)
    }

    pub fn handle_pubrel(&mut self, packet_id: PacketId) -> Packet {
        self.inbound.handle_pubrel(packet_id)
    }
}
