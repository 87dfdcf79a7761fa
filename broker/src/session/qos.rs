//! The QoS 1 and QoS 2 handshakes, as state machines whose states are named after the packet
//! they await.
//!
//! `Outbound` is the broker-to-client window: PUBLISH sent, awaiting PUBACK (QoS 1) or PUBREC
//! (QoS 2); PUBREL sent, awaiting PUBCOMP. Entries stay in send order so a resumed session
//! re-sends them in their original order [MQTT-4.4.0-1], [MQTT-4.6.0-1].
//!
//! `Inbound` is the client-to-broker side of QoS 2: the packet ids whose PUBLISH was accepted
//! and routed but whose PUBREL has not come yet. A PUBLISH re-sent with one of these ids is
//! acknowledged again but never routed twice (the de-duplication that makes QoS 2 exactly once).

use std::collections::{HashSet, VecDeque};
use std::num::NonZeroU16;

use tokio::time::Instant;

use crate::message::Delivery;
use crate::packet::{Ack, Packet, PacketId, QoS, ReasonCode};

/// Where one outbound QoS 1/2 message stands.
#[derive(Debug, Clone)]
pub enum Outbound {
    /// QoS 1 PUBLISH sent.
    AwaitingPubAck(Delivery),
    /// QoS 2 PUBLISH sent.
    AwaitingPubRec(Delivery),
    /// QoS 2 PUBREC received and PUBREL sent; the message itself is no longer needed, only
    /// the key of its stored delivery.
    AwaitingPubComp { seq: Option<u64> },
}

/// What an acknowledgement settled, for the session's storage journal.
#[derive(Debug)]
pub enum Settled {
    /// The delivery is complete (PUBACK, PUBCOMP, or a PUBREC with an error reason).
    Done { delivery: Option<Delivery>, seq: Option<u64> },
    /// PUBREC: the delivery now awaits PUBCOMP; answer with this PUBREL.
    Released { delivery: Delivery, pubrel: Packet },
    /// A repeated PUBREC: answer with PUBREL again; nothing changed.
    Repeated { pubrel: Packet },
}

/// An acknowledgement that does not fit the window. Logged and ignored: the client may be
/// acknowledging a message from before a reconnect that was already settled.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("{packet} for packet id {packet_id} matches nothing in flight")]
pub struct UnexpectedAck {
    pub packet: &'static str,
    pub packet_id: PacketId,
}

/// The outbound in-flight window of one session.
#[derive(Debug)]
pub struct OutboundWindow {
    /// Each entry with the number of times its PUBLISH was sent (for the delivery limit; 1
    /// after a restart, which does not remember it).
    entries: VecDeque<(PacketId, Outbound, u16)>,
    capacity: usize,
    /// The most QoS 2 entries (awaiting PUBREC or PUBCOMP) at once.
    qos2_capacity: usize,
    last_id: u16,
    /// A packet id held outside the window: a bridge's SUBSCRIBE awaiting its SUBACK.
    reserved: Option<PacketId>,
    /// Stored QoS 1 deliveries up to this sequence number, loaded at start, may have been
    /// sent before the restart (under their `derived_id`, which leaves no record).
    maybe_sent_upto: Option<u64>,
}

/// The packet id of a stored QoS 1 delivery, derived from its sequence number, so that it needs
/// no stored in-flight record: after a restart the id it was sent with follows from the
/// stored delivery, and it is re-sent under that id [MQTT-4.4.0-1]. Sequence numbers grow by
/// one per stored delivery of a session, so an id comes back only 65,535 deliveries later; if
/// it is still in use then, `OutboundWindow::send` allocates another one, which the session
/// stores as before.
pub fn derived_id(seq: u64) -> PacketId {
    let id = u16::try_from(seq % 65_535).unwrap_or_else(|_| unreachable!("below 65,535")) + 1;
    PacketId(NonZeroU16::new(id).unwrap_or_else(|| unreachable!("1 to 65,535")))
}

impl OutboundWindow {
    /// `capacity` is the most QoS 1/2 messages in flight at once, `qos2_capacity` the most
    /// QoS 2 ones among them (both at least 1).
    pub fn new(capacity: usize, qos2_capacity: usize) -> Self {
        OutboundWindow {
            entries: VecDeque::new(),
            capacity: capacity.max(1),
            qos2_capacity: qos2_capacity.max(1),
            last_id: 0,
            reserved: None,
            maybe_sent_upto: None,
        }
    }

    pub fn has_credit(&self) -> bool {
        self.entries.len() < self.capacity
    }

    /// True when one more QoS 2 flow fits. Only counted when that limit is below the window's.
    pub fn has_qos2_credit(&self) -> bool {
        self.qos2_capacity >= self.capacity
            || self
                .entries
                .iter()
                .filter(|(_, state, _)| !matches!(state, Outbound::AwaitingPubAck(_)))
                .count()
                < self.qos2_capacity
    }

    pub fn capacity(&self) -> usize {
        self.capacity
    }

    /// A new connection may allow a different number in flight (its Receive Maximum); entries
    /// already in flight stay, new ones wait until the window is below the new capacity.
    pub fn set_capacity(&mut self, capacity: usize) {
        self.capacity = capacity.max(1);
    }

    pub fn len(&self) -> usize {
        self.entries.len()
    }

    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// Starts delivering a QoS 1/2 message: takes a packet id (a stored QoS 1 delivery's
    /// `derived_id` when free) and returns the PUBLISH. One that may have been sent before a
    /// restart (`set_maybe_sent_upto`) carries DUP=1 [MQTT-3.3.1-1].
    /// The caller checks `has_credit` first.
    pub fn send(&mut self, delivery: Delivery, now: Instant) -> Packet {
        let stored_qos1 = delivery.seq.filter(|_| delivery.qos == QoS::AtLeastOnce);
        let derived = stored_qos1.map(derived_id).filter(|id| !self.in_use(*id));
        let packet_id = derived.unwrap_or_else(|| self.allocate_id());
        let dup = stored_qos1.is_some_and(|seq| self.maybe_sent_upto.is_some_and(|upto| seq <= upto));
        let forward = delivery.clone().into_forward(Some(packet_id), dup, now);
        let state = match delivery.qos {
            QoS::AtLeastOnce => Outbound::AwaitingPubAck(delivery),
            QoS::ExactlyOnce => Outbound::AwaitingPubRec(delivery),
            QoS::AtMostOnce => unreachable!("QoS 0 never enters the window"),
        };
        self.entries.push_back((packet_id, state, 1));
        Packet::Forward(forward)
    }

    /// Drops an entry without an acknowledgement: its PUBLISH could not be sent to this
    /// client (larger than its Maximum Packet Size), which counts as delivered [MQTT-3.1.2-25].
    pub fn forget(&mut self, packet_id: PacketId) -> Option<Delivery> {
        let at = self.position(packet_id)?;
        match self.entries.remove(at)?.1 {
            Outbound::AwaitingPubAck(d) | Outbound::AwaitingPubRec(d) => Some(d),
            Outbound::AwaitingPubComp { .. } => None,
        }
    }

    /// When the oldest message still awaiting PUBACK or PUBREC was received.
    pub fn oldest_received(&self) -> Option<Instant> {
        self.entries.iter().find_map(|(_, state, _)| match state {
            Outbound::AwaitingPubAck(d) | Outbound::AwaitingPubRec(d) => Some(d.message.received),
            Outbound::AwaitingPubComp { .. } => None,
        })
    }

    /// The storage key of the delivery in flight under `packet_id` (the JetStream sink names
    /// messages by it).
    pub fn seq(&self, packet_id: PacketId) -> Option<u64> {
        match &self.entries[self.position(packet_id)?].1 {
            Outbound::AwaitingPubAck(d) | Outbound::AwaitingPubRec(d) => d.seq,
            Outbound::AwaitingPubComp { seq } => *seq,
        }
    }

    /// Puts back an entry loaded from storage (recovery), in stored order.
    pub fn restore(&mut self, packet_id: PacketId, state: Outbound) {
        self.last_id = packet_id.get();
        self.entries.push_back((packet_id, state, 1));
    }

    /// Empties the window (the session ends); returns what it held for the journal.
    pub fn drain(&mut self) -> Vec<Outbound> {
        self.entries.drain(..).map(|(_, state, _)| state).collect()
    }

    /// The deliveries whose PUBLISH awaits its acknowledgement (PUBACK or PUBREC).
    pub fn unacknowledged(&self) -> impl Iterator<Item = &Delivery> {
        self.entries.iter().filter_map(|(_, state, _)| match state {
            Outbound::AwaitingPubAck(d) | Outbound::AwaitingPubRec(d) => Some(d),
            Outbound::AwaitingPubComp { .. } => None,
        })
    }

    /// Removes the unacknowledged QoS 1 PUBLISHes that came through shared subscriptions, for
    /// another member of the group [MQTT-4.8.2-6]. QoS 2 deliveries already started stay with
    /// this client: they are completed when it returns and never sent to another member
    /// [MQTT-4.8.2-4], [MQTT-4.8.2-5].
    pub fn take_shared(&mut self) -> Vec<Delivery> {
        let mut taken = Vec::new();
        self.entries.retain(|(_, state, _)| match state {
            Outbound::AwaitingPubAck(d) if d.shared.is_some() => {
                taken.push(d.clone());
                false
            }
            _ => true,
        });
        taken
    }

    /// Next id after the last one handed out, skipping ids still in flight. The window holds
    /// at most 65,535 entries, so a free id always exists when `has_credit` is true.
    fn allocate_id(&mut self) -> PacketId {
        loop {
            self.last_id = self.last_id.wrapping_add(1);
            let Some(id) = NonZeroU16::new(self.last_id) else { continue };
            let id = PacketId(id);
            if !self.in_use(id) {
                return id;
            }
        }
    }

    fn in_use(&self, packet_id: PacketId) -> bool {
        self.reserved == Some(packet_id) || self.position(packet_id).is_some()
    }

    /// Reserves a packet id for a packet outside the window (a bridge's SUBSCRIBE)
    /// [MQTT-2.3.1-2]: one not in flight, and the one `allocate_id` reaches last (ids go up
    /// from `last_id`). No PUBLISH takes it until `release_reserved`, and it replaces an
    /// earlier reservation (a SUBSCRIBE of a link that ended).
    /// `None` only when all 65,535 ids are in flight.
    pub fn reserve_spare_id(&mut self) -> Option<PacketId> {
        self.reserved = None;
        let mut candidate = self.last_id;
        for _ in 0..=u16::MAX {
            if let Some(id) = NonZeroU16::new(candidate).map(PacketId) {
                if self.position(id).is_none() {
                    self.reserved = Some(id);
                    return Some(id);
                }
            }
            candidate = candidate.wrapping_sub(1);
        }
        None
    }

    /// The reserved packet id is acknowledged (SUBACK): free for PUBLISHes again.
    pub fn release_reserved(&mut self) {
        self.reserved = None;
    }

    /// Stored QoS 1 deliveries up to `seq` may have been sent before the restart.
    pub fn set_maybe_sent_upto(&mut self, seq: u64) {
        self.maybe_sent_upto = Some(seq);
    }

    /// The QoS 1 entries sent under their derived id, which have no stored in-flight record:
    /// stored when the session goes offline, so that a restart finds them exactly.
    pub fn sent_under_derived_ids(&self) -> impl Iterator<Item = (PacketId, u64, &Delivery)> {
        self.entries.iter().filter_map(|(id, state, _)| match state {
            Outbound::AwaitingPubAck(d) => {
                d.seq.filter(|seq| derived_id(*seq) == *id).map(|seq| (*id, seq, d))
            }
            _ => None,
        })
    }

    fn position(&self, packet_id: PacketId) -> Option<usize> {
        self.entries.iter().position(|(id, _, _)| *id == packet_id)
    }

    /// PUBACK: completes a QoS 1 delivery.
    pub fn handle_puback(&mut self, packet_id: PacketId) -> Result<Settled, UnexpectedAck> {
        match self.position(packet_id) {
            Some(at) if matches!(self.entries[at].1, Outbound::AwaitingPubAck(_)) => {
                let Some((_, Outbound::AwaitingPubAck(delivery), _)) = self.entries.remove(at) else {
                    unreachable!("matched above")
                };
                let seq = delivery.seq;
                Ok(Settled::Done { delivery: Some(delivery), seq })
            }
            _ => Err(UnexpectedAck { packet: "PUBACK", packet_id }),
        }
    }

    /// PUBREC: the client has the message; answer with PUBREL [MQTT-4.3.3-1]. A repeated
    /// PUBREC for a message already released is answered with PUBREL again. A PUBREC with an
    /// error reason (MQTT 5) ends the exchange: no PUBREL, the packet id is free [MQTT-4.3.3-4].
    pub fn handle_pubrec(&mut self, ack: Ack) -> Result<Settled, UnexpectedAck> {
        let packet_id = ack.packet_id;
        let unexpected = UnexpectedAck { packet: "PUBREC", packet_id };
        let at = self.position(packet_id).ok_or(unexpected)?;
        let pubrel = Packet::PubRel(Ack::success(packet_id));
        let seq = match &self.entries[at].1 {
            Outbound::AwaitingPubAck(_) => return Err(unexpected),
            Outbound::AwaitingPubRec(d) => d.seq,
            Outbound::AwaitingPubComp { .. } if ack.reason.is_success() => {
                return Ok(Settled::Repeated { pubrel })
            }
            Outbound::AwaitingPubComp { seq } => *seq,
        };
        let previous = std::mem::replace(&mut self.entries[at].1, Outbound::AwaitingPubComp { seq });
        if !ack.reason.is_success() {
            self.entries.remove(at);
            let delivery = match previous {
                Outbound::AwaitingPubRec(d) => Some(d),
                _ => None,
            };
            return Ok(Settled::Done { delivery, seq });
        }
        match previous {
            Outbound::AwaitingPubRec(delivery) => Ok(Settled::Released { delivery, pubrel }),
            _ => unreachable!("only AwaitingPubRec reaches here with a success reason"),
        }
    }

    /// PUBCOMP: completes a QoS 2 delivery.
    pub fn handle_pubcomp(&mut self, packet_id: PacketId) -> Result<Settled, UnexpectedAck> {
        match self.position(packet_id) {
            Some(at) if matches!(self.entries[at].1, Outbound::AwaitingPubComp { .. }) => {
                let Some((_, Outbound::AwaitingPubComp { seq }, _)) = self.entries.remove(at) else {
                    unreachable!("matched above")
                };
                Ok(Settled::Done { delivery: None, seq })
            }
            _ => Err(UnexpectedAck { packet: "PUBCOMP", packet_id }),
        }
    }

    /// On resuming a session: everything unacknowledged, again, in the original order, PUBLISH
    /// with DUP set [MQTT-3.3.1-1] and PUBREL as it was [MQTT-4.4.0-1]. Delivery of these has
    /// started, so they are re-sent even if their Message Expiry has passed [MQTT-3.3.2-5].
    /// A PUBLISH already sent `delivery_limit` times is not: it leaves the window and is
    /// returned (a PUBREL is always re-sent: the client has the message).
    pub fn resend_all(
        &mut self,
        out: &mut Vec<Packet>,
        now: Instant,
        delivery_limit: Option<u16>,
    ) -> Vec<Delivery> {
        let mut over_limit = Vec::new();
        let limit = delivery_limit.unwrap_or(u16::MAX);
        self.entries.retain_mut(|(packet_id, state, sends)| match state {
            Outbound::AwaitingPubAck(d) | Outbound::AwaitingPubRec(d) if *sends >= limit => {
                over_limit.push(d.clone());
                false
            }
            Outbound::AwaitingPubAck(d) | Outbound::AwaitingPubRec(d) => {
                *sends = sends.saturating_add(1);
                out.push(Packet::Forward(d.clone().into_forward(Some(*packet_id), true, now)));
                true
            }
            Outbound::AwaitingPubComp { .. } => {
                out.push(Packet::PubRel(Ack::success(*packet_id)));
                true
            }
        });
        over_limit
    }
}

/// Inbound QoS 2 packet ids awaiting PUBREL. The set is allocated with the first one: most
/// clients never publish at QoS 2, and every session carries this.
#[derive(Debug, Default)]
pub struct InboundQos2 {
    // Boxed on purpose: the empty set inline costs 48 bytes in every session, the box 8.
    #[allow(clippy::box_collection)]
    awaiting_pubrel: Option<Box<HashSet<PacketId>>>,
}

impl InboundQos2 {
    /// A QoS 2 PUBLISH arrived: true when it is new and must be routed, false for a re-send
    /// of one already routed [MQTT-4.3.3-2]. Either way the answer is PUBREC.
    pub fn handle_publish(&mut self, packet_id: PacketId) -> bool {
        self.awaiting_pubrel.get_or_insert_default().insert(packet_id)
    }

    /// PUBREL: forget the id and answer PUBCOMP, also for an id already forgotten (the
    /// client re-sends PUBREL until it sees PUBCOMP) [MQTT-4.3.3-1]; MQTT 5 clients then see
    /// reason 0x92, Packet Identifier not found.
    pub fn handle_pubrel(&mut self, packet_id: PacketId) -> Packet {
        let removed = self.awaiting_pubrel.as_mut().is_some_and(|ids| ids.remove(&packet_id));
        let reason = if removed { ReasonCode::SUCCESS } else { ReasonCode::PACKET_IDENTIFIER_NOT_FOUND };
        Packet::PubComp(Ack { packet_id, reason })
    }

    /// True while `packet_id`'s PUBLISH was routed and its PUBREL has not come.
    pub fn contains(&self, packet_id: PacketId) -> bool {
        self.awaiting_pubrel.as_ref().is_some_and(|ids| ids.contains(&packet_id))
    }

    pub fn len(&self) -> usize {
        self.awaiting_pubrel.as_ref().map_or(0, |ids| ids.len())
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use super::*;
    use crate::message::{Forward, Message};

    impl OutboundWindow {
        fn send_now(&mut self, d: Delivery) -> Packet {
            self.send(d, Instant::now())
        }
    }

    fn delivery(qos: QoS, n: u8) -> Delivery {
        let mut message = Message::new("t", &b""[..], qos);
        message.payload = vec![n].into();
        Delivery::new(Arc::new(message), qos, false)
    }

    fn ok(id: PacketId) -> Ack {
        Ack::success(id)
    }

    fn pid(n: u16) -> PacketId {
        PacketId(NonZeroU16::new(n).unwrap())
    }

    fn stored(qos: QoS, seq: u64) -> Delivery {
        let mut d = delivery(qos, seq as u8);
        d.seq = Some(seq);
        d
    }

    // [MQTT-4.4.0-1]: a stored QoS 1 delivery goes under the id its sequence number gives, so
    // a restart re-sends it under the same id without a stored in-flight record.
    #[test]
    fn a_stored_qos1_delivery_takes_its_derived_id() {
        let mut w = OutboundWindow::new(8, 8);
        assert_eq!(publish_of(&w.send_now(stored(QoS::AtLeastOnce, 41))).packet_id, Some(pid(42)));
        assert_eq!(derived_id(65_534), pid(65_535));
        assert_eq!(derived_id(65_535), pid(1));
        // Not for QoS 2 (its state is stored) nor for a delivery that is not stored.
        assert_eq!(publish_of(&w.send_now(stored(QoS::ExactlyOnce, 7))).packet_id, Some(pid(1)));
        assert_eq!(publish_of(&w.send_now(delivery(QoS::AtLeastOnce, 0))).packet_id, Some(pid(2)));
    }

    // [MQTT-2.2.1-3]: an id in use is never taken twice: a derived id still in flight (65,535
    // deliveries apart) or reserved for a SUBSCRIBE gives way to an allocated one.
    #[test]
    fn a_derived_id_in_use_or_reserved_is_not_taken() {
        let mut w = OutboundWindow::new(8, 8);
        assert_eq!(publish_of(&w.send_now(stored(QoS::AtLeastOnce, 1))).packet_id, Some(pid(2)));
        let again = publish_of(&w.send_now(stored(QoS::AtLeastOnce, 1 + 65_535))).packet_id;
        assert_ne!(again, Some(pid(2)));
        let reserved = w.reserve_spare_id().unwrap();
        let seq = u64::from(reserved.get()) - 1;
        assert_ne!(publish_of(&w.send_now(stored(QoS::AtLeastOnce, seq))).packet_id, Some(reserved));
        w.release_reserved();
        assert_eq!(publish_of(&w.send_now(stored(QoS::AtLeastOnce, seq + 65_535))).packet_id, Some(reserved));
    }

    // [MQTT-3.3.1-1]: what may have been sent before a restart goes DUP=1, nothing else.
    #[test]
    fn maybe_sent_deliveries_go_dup_after_a_restart() {
        let mut w = OutboundWindow::new(8, 8);
        w.set_maybe_sent_upto(5);
        assert!(publish_of(&w.send_now(stored(QoS::AtLeastOnce, 5))).dup);
        assert!(!publish_of(&w.send_now(stored(QoS::AtLeastOnce, 6))).dup);
        assert!(!publish_of(&w.send_now(stored(QoS::ExactlyOnce, 4))).dup);
        let sent: Vec<_> = w.sent_under_derived_ids().map(|(id, seq, _)| (id, seq)).collect();
        assert_eq!(sent, [(pid(6), 5), (pid(7), 6)]);
    }

    fn publish_of(p: &Packet) -> &Forward {
        match p {
            Packet::Forward(p) => p,
            other => panic!("expected PUBLISH, got {other:?}"),
        }
    }

    #[test]
    fn qos1_publish_then_puback_frees_the_slot() {
        let mut w = OutboundWindow::new(1, 1);
        let p = w.send_now(delivery(QoS::AtLeastOnce, 1));
        let id = publish_of(&p).packet_id.unwrap();
        assert!(!w.has_credit());
        assert_eq!(w.handle_pubrec(ok(id)).unwrap_err(), UnexpectedAck { packet: "PUBREC", packet_id: id });
        assert!(matches!(w.handle_puback(id), Ok(Settled::Done { delivery: Some(_), .. })));
        assert!(w.has_credit());
        assert!(w.handle_puback(id).is_err(), "a second PUBACK matches nothing");
    }

    #[test]
    fn qos2_walks_pubrec_pubrel_pubcomp() {
        let mut w = OutboundWindow::new(4, 4);
        let id = publish_of(&w.send_now(delivery(QoS::ExactlyOnce, 1))).packet_id.unwrap();
        assert!(w.handle_pubcomp(id).is_err(), "PUBCOMP before PUBREC");
        assert!(w.handle_puback(id).is_err(), "PUBACK for a QoS 2 message");
        let pubrel = Packet::PubRel(ok(id));
        assert!(matches!(w.handle_pubrec(ok(id)), Ok(Settled::Released { pubrel: p, .. }) if p == pubrel));
        assert!(
            matches!(w.handle_pubrec(ok(id)), Ok(Settled::Repeated { pubrel: p }) if p == pubrel),
            "repeated PUBREC is answered again"
        );
        assert!(matches!(w.handle_pubcomp(id), Ok(Settled::Done { delivery: None, .. })));
        assert!(w.is_empty());
    }

    #[test]
    fn resend_keeps_order_sets_dup_and_repeats_pubrel() {
        // [MQTT-4.4.0-1], [MQTT-3.3.1-1]
        let mut w = OutboundWindow::new(8, 8);
        let a = publish_of(&w.send_now(delivery(QoS::AtLeastOnce, 1))).packet_id.unwrap();
        let b = publish_of(&w.send_now(delivery(QoS::ExactlyOnce, 2))).packet_id.unwrap();
        let c = publish_of(&w.send_now(delivery(QoS::ExactlyOnce, 3))).packet_id.unwrap();
        w.handle_pubrec(ok(b)).unwrap();
        let mut out = Vec::new();
        assert!(w.resend_all(&mut out, Instant::now(), None).is_empty());
        assert_eq!(out.len(), 3);
        let first = publish_of(&out[0]);
        assert!(first.dup && first.packet_id == Some(a) && first.message.payload[..] == [1]);
        assert_eq!(out[1], Packet::PubRel(ok(b)));
        let third = publish_of(&out[2]);
        assert!(third.dup && third.packet_id == Some(c) && third.qos == QoS::ExactlyOnce);
    }

    #[test]
    fn a_publish_sent_delivery_limit_times_leaves_the_window_but_a_pubrel_stays() {
        let mut w = OutboundWindow::new(8, 8);
        let a = publish_of(&w.send_now(delivery(QoS::AtLeastOnce, 1))).packet_id.unwrap();
        let b = publish_of(&w.send_now(delivery(QoS::ExactlyOnce, 2))).packet_id.unwrap();
        w.handle_pubrec(ok(b)).unwrap();
        for resume in 1..=2 {
            let mut out = Vec::new();
            assert!(w.resend_all(&mut out, Instant::now(), Some(3)).is_empty(), "resume {resume}");
            assert_eq!(publish_of(&out[0]).packet_id, Some(a));
            assert_eq!(out[1], Packet::PubRel(ok(b)));
        }
        let mut out = Vec::new();
        let over = w.resend_all(&mut out, Instant::now(), Some(3));
        assert_eq!(over.len(), 1, "sent 3 times: not a 4th");
        assert_eq!(over[0].message.payload[..], [1]);
        assert_eq!(out, vec![Packet::PubRel(ok(b))]);
        assert_eq!(w.len(), 1);
    }

    #[test]
    fn pubrec_with_an_error_reason_ends_the_exchange() {
        // [MQTT-4.3.3-4]
        let mut w = OutboundWindow::new(1, 1);
        let id = publish_of(&w.send_now(delivery(QoS::ExactlyOnce, 1))).packet_id.unwrap();
        let refused = Ack { packet_id: id, reason: ReasonCode::QUOTA_EXCEEDED };
        assert!(matches!(w.handle_pubrec(refused), Ok(Settled::Done { delivery: Some(_), .. })));
        assert!(w.is_empty());
    }

    #[test]
    fn shared_entries_leave_with_take_shared() {
        let mut w = OutboundWindow::new(4, 4);
        let mut shared = delivery(QoS::AtLeastOnce, 1);
        shared.shared = Some(Box::new(crate::message::SharedRoute { share: "$share/g/t".into() }));
        w.send_now(shared);
        w.send_now(delivery(QoS::AtLeastOnce, 2));
        let taken = w.take_shared();
        assert_eq!(taken.len(), 1);
        assert_eq!(w.len(), 1);
    }

    #[test]
    fn packet_ids_skip_ids_in_flight_and_wrap() {
        let mut w = OutboundWindow::new(3, 3);
        w.last_id = 65_533;
        let first = publish_of(&w.send_now(delivery(QoS::AtLeastOnce, 0))).packet_id.unwrap();
        assert_eq!(first, pid(65_534));
        let second = publish_of(&w.send_now(delivery(QoS::AtLeastOnce, 0))).packet_id.unwrap();
        assert_eq!(second, pid(65_535));
        let third = publish_of(&w.send_now(delivery(QoS::AtLeastOnce, 0))).packet_id.unwrap();
        assert_eq!(third, pid(1), "wraps past 65535 and never yields 0");
        w.handle_puback(second).unwrap();
        w.last_id = 65_533; // next candidates: 65534 (in use), 65535 (free)
        let fourth = publish_of(&w.send_now(delivery(QoS::AtLeastOnce, 0))).packet_id.unwrap();
        assert_eq!(fourth, pid(65_535));
    }

    #[test]
    fn inbound_qos2_routes_once_until_pubrel() {
        // [MQTT-4.3.3-2]: a re-sent PUBLISH with the same id is not delivered again.
        let mut inbound = InboundQos2::default();
        assert!(inbound.handle_publish(pid(7)));
        assert!(!inbound.handle_publish(pid(7)));
        assert_eq!(inbound.handle_pubrel(pid(7)), Packet::PubComp(ok(pid(7))));
        assert!(inbound.is_empty());
        let unknown = Ack { packet_id: pid(7), reason: ReasonCode::PACKET_IDENTIFIER_NOT_FOUND };
        assert_eq!(inbound.handle_pubrel(pid(7)), Packet::PubComp(unknown));
        assert!(inbound.handle_publish(pid(7)), "after PUBREL the id starts a new message");
    }
}
