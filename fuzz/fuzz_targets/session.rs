//! The sans-IO session (`tern::session`): random sequences of what its connection does to it —
//! deliveries routed into its mailbox (as the router does: admitted, given a storage key when
//! the session is persistent, the message's stored references acquired, handed over) or pushed
//! by the session itself (retained messages on SUBSCRIBE), PUBACK/PUBREC/PUBREL/PUBCOMP with
//! ids in flight or random, pump, resume after a reconnect (new Receive Maximum, persistence
//! switched), going offline and absorbing, shared-subscription hand-back, inbound QoS 2, the
//! clock moving on (Message Expiry), PUBLISHes too large for the client, the end of the session.
//!
//! A model beside it tracks every delivery. Checks after every step:
//! - nothing panics; acknowledgements are accepted exactly when they match the in-flight state;
//! - a new QoS 1/2 PUBLISH is only sent while the in-flight window is below its capacity, with a
//!   packet id not in flight, and a QoS 2 one only while fewer than `max_inflight_qos2` QoS 2
//!   flows are open; the window and its capacity are what the model says;
//! - deliveries leave the pending queue in order (mailbox hand-overs in order, own pushes in
//!   order), and one leaves without being sent only when its Message Expiry has passed;
//! - a resumed session re-sends its whole window first, in order, DUP set, PUBREL as PUBREL;
//! - the queue's counters match its content; refused deliveries are counted as dropped;
//! - stored-state journal: each stored delivery deleted at most once and never touched after;
//!   a stored message's reference count is exactly the live stored deliveries holding it, and
//!   it is deleted exactly when that reaches 0 (never while another session still holds it);
//! - at the end, with every PUBLISH acknowledged, each delivery handed in was sent exactly once,
//!   or expired, taken back for another shared-subscription member, dropped as QoS 0 while
//!   offline, or not sent because it was too large for the client.
#![no_main]

use std::collections::{HashSet, VecDeque};
use std::future::Future;
use std::num::NonZeroU16;
use std::pin::pin;
use std::sync::Arc;
use std::task::{Context, Waker};
use std::time::Duration;

use arbitrary::Arbitrary;
use libfuzzer_sys::fuzz_target;
use tern::message::{Delivery, Message, SharedRoute};
use tern::packet::{Ack, Packet, PacketId, ProtocolVersion, QoS, ReasonCode};
use tern::session::queue::{Offer, QueueLimits};
use tern::session::{ClientId, Session, SessionLimits, NEVER_EXPIRES};
use tern::storage::{DeliveryState, Op as StoreOp};
use tokio::time::Instant;

#[derive(Arbitrary, Debug)]
struct Input {
    max_inflight: u8,
    /// A bridge's cap on QoS 2 flows (a client session's equals `max_inflight`).
    max_inflight_qos2: u8,
    max_messages: u8,
    max_bytes: u16,
    persistent: bool,
    /// PUBLISHes whose payload is longer than this are too large for the client.
    client_max: Option<u8>,
    ops: Vec<Step>,
}

#[derive(Arbitrary, Debug)]
enum Step {
    /// Routed by the router; `sibling`: another persistent session stores the message too.
    Offer {
        qos: u8,
        size: u8,
        expiry: Option<u8>,
        shared: bool,
        sibling: bool,
    },
    /// Pushed by the session itself (a retained message on SUBSCRIBE).
    Push {
        qos: u8,
        size: u8,
        sibling: bool,
    },
    Pump,
    /// A reconnect: online, the new Receive Maximum, persistence as the new CONNECT says.
    Resume {
        receive_maximum: u16,
        persistent: bool,
    },
    Offline,
    Absorb,
    PubAck(Id),
    PubRec(Id, bool),
    PubComp(Id),
    TakeShared,
    InboundQos2(u16),
    PubRel(u16),
    Advance(u8),
    End,
}

#[derive(Arbitrary, Debug, Clone, Copy)]
enum Id {
    /// The packet id of the n-th entry in flight.
    InFlight(u8),
    Raw(u16),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Awaiting {
    PubAck,
    PubRec,
    PubComp,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    Queued,
    InFlight,
    Done,
}

/// One delivery handed to the session.
struct Tracked {
    message: Arc<Message>,
    qos: QoS,
    shared: bool,
    seq: Option<u64>,
    /// Another session holds a stored reference to the message.
    sibling: bool,
    /// This session's stored reference is live.
    own_ref: bool,
    state: State,
    /// The message was deleted from storage (journal).
    message_deleted: bool,
}

struct Model {
    session: Session,
    tracked: Vec<Tracked>,
    /// The queue as the session holds it: its own deque, and what the mailbox was handed.
    local: VecDeque<usize>,
    inbox: VecDeque<usize>,
    window: VecDeque<(PacketId, usize, Awaiting)>,
    capacity: usize,
    max_inflight: u16,
    qos2_capacity: usize,
    inbound: HashSet<PacketId>,
    now: Instant,
    dropped: u64,
    online: bool,
    client_max: Option<usize>,
    message_ids: u64,
    deleted_seqs: HashSet<u64>,
    /// Order checks: the last hand-over and push numbers that left the queue.
    last_offer_out: Option<usize>,
    last_push_out: Option<usize>,
    pushed: HashSet<usize>,
}

fn pid(n: u16) -> PacketId {
    PacketId(NonZeroU16::new(n.max(1)).unwrap_or(NonZeroU16::MIN))
}

fn qos_of(n: u8) -> QoS {
    match n % 3 {
        0 => QoS::AtMostOnce,
        1 => QoS::AtLeastOnce,
        _ => QoS::ExactlyOnce,
    }
}

/// The delivery number carried in the first 8 payload bytes.
fn number(payload: &[u8]) -> usize {
    let mut n = [0; 8];
    n.copy_from_slice(&payload[..8]);
    u64::from_be_bytes(n) as usize
}

impl Model {
    fn new(input: &Input) -> Self {
        let limits = SessionLimits {
            max_inflight: usize::from(input.max_inflight),
            max_inflight_qos2: usize::from(input.max_inflight_qos2),
            queue: QueueLimits {
                max_messages: usize::from(input.max_messages),
                max_bytes: usize::from(input.max_bytes),
                stall_after_ms: 2000,
            },
        };
        let expiry = if input.persistent { NEVER_EXPIRES } else { 0 };
        let session = Session::new(ClientId::from("fuzz"), ProtocolVersion::V5, expiry, limits);
        let mailbox = session.pending.mailbox();
        mailbox.set_persistent(input.persistent);
        mailbox.set_online(true);
        Model {
            session,
            tracked: Vec::new(),
            local: VecDeque::new(),
            inbox: VecDeque::new(),
            window: VecDeque::new(),
            capacity: usize::from(input.max_inflight).max(1),
            max_inflight: u16::from(input.max_inflight),
            qos2_capacity: usize::from(input.max_inflight_qos2).max(1),
            inbound: HashSet::new(),
            now: Instant::now(),
            dropped: 0,
            online: true,
            client_max: input.client_max.map(usize::from),
            message_ids: 1,
            deleted_seqs: HashSet::new(),
            last_offer_out: None,
            last_push_out: None,
            pushed: HashSet::new(),
        }
    }

    fn new_delivery(&mut self, qos: QoS, size: u8, expiry: Option<u8>, retain: bool) -> (usize, Delivery) {
        let n = self.tracked.len();
        let mut payload = (n as u64).to_be_bytes().to_vec();
        payload.resize(8 + usize::from(size), 0xA5);
        let mut message = Message::new(format!("t/{}", n % 7), payload, qos);
        message.received = self.now;
        message.properties.message_expiry = expiry.map(u32::from);
        (n, Delivery::new(Arc::new(message), qos, retain))
    }

    /// Stored references: `sibling` for another session, one more for this delivery if it has
    /// a storage key. Acquired as the router does.
    fn acquire(&mut self, delivery: &Delivery, sibling: bool) {
        let refs = usize::from(sibling) + usize::from(delivery.seq.is_some());
        if refs > 0 {
            let ids = &mut self.message_ids;
            delivery.message.durable.acquire(refs, || {
                *ids += 1;
                *ids
            });
        }
    }

    fn offer(&mut self, qos: QoS, size: u8, expiry: Option<u8>, shared: bool, sibling: bool) {
        let (n, mut delivery) = self.new_delivery(qos, size, expiry, false);
        if shared {
            delivery.shared = Some(Box::new(SharedRoute { share: "$share/g/t/#".into() }));
        }
        let mailbox = self.session.pending.mailbox().clone();
        let offer = mailbox.admit(&delivery);
        if offer == Offer::Queued && qos != QoS::AtMostOnce {
            delivery.seq = mailbox.storage_seq();
        }
        let queued = offer == Offer::Queued;
        if queued {
            self.acquire(&delivery, sibling);
        }
        self.tracked.push(Tracked {
            message: delivery.message.clone(),
            qos,
            shared,
            seq: delivery.seq,
            sibling: sibling && queued,
            own_ref: delivery.seq.is_some(),
            state: if queued { State::Queued } else { State::Done },
            message_deleted: false,
        });
        match offer {
            Offer::Queued => {
                assert_eq!(mailbox.deliver(delivery), Offer::Queued);
                self.inbox.push_back(n);
            }
            Offer::DroppedFull => self.dropped += 1,
            Offer::SkippedOffline => assert!(qos == QoS::AtMostOnce && !self.online, "skipped {qos:?}"),
            Offer::Closed => panic!("the session is open"),
        }
    }

    fn push(&mut self, qos: QoS, size: u8, sibling: bool) {
        let (n, delivery) = self.new_delivery(qos, size, None, true);
        self.acquire(&delivery, sibling);
        let message = delivery.message.clone();
        let offer = self.session.pending.push(delivery);
        let queued = offer == Offer::Queued;
        self.tracked.push(Tracked {
            message,
            qos,
            shared: false,
            seq: None,
            sibling,
            own_ref: false,
            state: if queued { State::Queued } else { State::Done },
            message_deleted: false,
        });
        match offer {
            Offer::Queued => {
                self.local.push_back(n);
                self.pushed.insert(n);
            }
            Offer::DroppedFull => self.dropped += 1,
            other => panic!("push: {other:?}"),
        }
    }

    /// The next delivery to leave the queue, as `PendingQueue::take` picks it.
    fn pop(&mut self) -> usize {
        if self.local.is_empty() {
            self.local.extend(self.inbox.drain(..));
        }
        let n = self.local.pop_front().expect("the session took more than was queued");
        if self.pushed.contains(&n) {
            assert!(self.last_push_out.is_none_or(|last| last < n), "pushed deliveries out of order");
            self.last_push_out = Some(n);
        } else {
            assert!(self.last_offer_out.is_none_or(|last| last < n), "handed-over deliveries out of order");
            self.last_offer_out = Some(n);
        }
        n
    }

    fn queued(&self) -> usize {
        self.local.len() + self.inbox.len()
    }

    /// A delivery is complete: its stored reference goes.
    fn done(&mut self, n: usize) {
        let t = &mut self.tracked[n];
        t.state = State::Done;
        t.own_ref = false;
    }

    /// Pops deliveries that vanished without being sent: each must have expired.
    fn pop_expired(&mut self) {
        let n = self.pop();
        assert!(self.tracked[n].message.is_expired(self.now), "delivery {n} left the queue unsent");
        self.done(n);
    }

    /// Follows the session's output: `out` after any re-sends / PUBREL the caller checked.
    fn follow(&mut self, out: &[Packet]) {
        for packet in out {
            let Packet::Forward(f) = packet else { panic!("unexpected output {packet:?}") };
            assert!(!f.dup, "DUP set on a first send");
            let n = number(&f.message.payload);
            // Deliveries before it in the queue were taken and dropped as expired.
            loop {
                let next = if self.local.is_empty() { self.inbox.front() } else { self.local.front() };
                if *next.expect("sent something never queued") == n {
                    break;
                }
                self.pop_expired();
            }
            assert_eq!(self.pop(), n);
            let t = &self.tracked[n];
            assert_eq!(t.state, State::Queued);
            assert_eq!(f.qos, t.qos, "delivery {n} sent at another QoS");
            if f.qos == QoS::AtMostOnce {
                assert!(f.packet_id.is_none(), "QoS 0 with a packet id");
                self.done(n);
                continue;
            }
            let id = f.packet_id.expect("QoS 1/2 without a packet id");
            assert!(self.window.len() < self.capacity, "sent beyond the window of {}", self.capacity);
            if f.qos == QoS::ExactlyOnce {
                let open =
                    self.window.iter().filter(|(_, _, awaiting)| *awaiting != Awaiting::PubAck).count();
                assert!(
                    open < self.qos2_capacity,
                    "QoS 2 flow beyond max_inflight_qos2 {}",
                    self.qos2_capacity
                );
            }
            assert!(self.window.iter().all(|(used, _, _)| *used != id), "packet id {id:?} already in flight");
            let awaiting = if f.qos == QoS::AtLeastOnce { Awaiting::PubAck } else { Awaiting::PubRec };
            self.window.push_back((id, n, awaiting));
            self.tracked[n].state = State::InFlight;
        }
        // Whatever else left the queue was dropped as expired.
        while self.queued() > self.session.pending.mailbox().pending() {
            self.pop_expired();
        }
    }

    /// The connection encodes the output: PUBLISHes too large for the client are not sent and
    /// count as delivered (`Session::forget`).
    fn encode(&mut self, out: &[Packet]) {
        let Some(max) = self.client_max else { return };
        for packet in out {
            let Packet::Forward(f) = packet else { continue };
            if f.message.payload.len() <= max {
                continue;
            }
            if let Some(id) = f.packet_id {
                self.session.forget(id);
                let at = self
                    .window
                    .iter()
                    .position(|(used, _, _)| *used == id)
                    .expect("forgot an id not in flight");
                let (_, n, _) = self.window.remove(at).expect("in the window");
                self.done(n);
            }
        }
    }

    fn resolve(&self, id: Id) -> PacketId {
        match id {
            Id::InFlight(i) if !self.window.is_empty() => self.window[usize::from(i) % self.window.len()].0,
            Id::InFlight(i) => pid(u16::from(i)),
            Id::Raw(n) => pid(n),
        }
    }

    /// PUBACK / PUBREC / PUBCOMP, checked against the model.
    fn ack(&mut self, packet: Packet) {
        let (kind, ack) = match packet {
            Packet::PubAck(a) => (Awaiting::PubAck, a),
            Packet::PubRec(a) => (Awaiting::PubRec, a),
            Packet::PubComp(a) => (Awaiting::PubComp, a),
            _ => unreachable!(),
        };
        let at = self.window.iter().position(|(id, _, _)| *id == ack.packet_id);
        let state = at.map(|i| self.window[i].2);
        let expected_ok = match (kind, state) {
            (Awaiting::PubAck, Some(Awaiting::PubAck)) => true,
            (Awaiting::PubRec, Some(Awaiting::PubRec | Awaiting::PubComp)) => true,
            (Awaiting::PubComp, Some(Awaiting::PubComp)) => true,
            _ => false,
        };
        let mut out = Vec::new();
        let result = self.session.handle_ack(&packet, &mut out, self.now);
        assert_eq!(result.is_ok(), expected_ok, "{packet:?} with the window in state {state:?}: {result:?}");
        if !expected_ok {
            assert!(out.is_empty());
            return;
        }
        let i = at.expect("matched");
        let (id, n, _) = self.window[i];
        let mut rest = &out[..];
        match (kind, ack.reason.is_success()) {
            (Awaiting::PubRec, true) => {
                assert_eq!(out.first(), Some(&Packet::PubRel(Ack::success(id))), "PUBREC answered otherwise");
                rest = &out[1..];
                self.window[i].2 = Awaiting::PubComp;
                self.tracked[n].own_ref = false;
            }
            _ => {
                self.window.remove(i);
                self.done(n);
            }
        }
        self.follow(rest);
        self.encode(&out);
    }

    fn resume(&mut self, receive_maximum: u16, persistent: bool) {
        self.session.expiry = if persistent { NEVER_EXPIRES } else { 0 };
        let mailbox = self.session.pending.mailbox().clone();
        mailbox.set_persistent(persistent);
        mailbox.set_online(true);
        self.online = true;
        let receive_maximum = receive_maximum.max(1);
        self.capacity = usize::from(self.max_inflight.min(receive_maximum)).max(1);
        let mut out = Vec::new();
        self.session.resume(receive_maximum, &mut out, self.now);
        assert!(out.len() >= self.window.len(), "window not re-sent");
        for ((id, n, awaiting), packet) in self.window.iter().zip(&out) {
            match (awaiting, packet) {
                (Awaiting::PubComp, Packet::PubRel(a)) => assert_eq!(a.packet_id, *id),
                (_, Packet::Forward(f)) => {
                    assert!(f.dup && f.packet_id == Some(*id), "re-send of {id:?}: {f:?}");
                    assert_eq!(number(&f.message.payload), *n);
                }
                other => panic!("re-send of {id:?} awaiting {awaiting:?}: {other:?}"),
            }
        }
        let resent = self.window.len();
        self.follow(&out[resent..]);
        self.encode(&out);
    }

    fn take_shared(&mut self) {
        let taken: Vec<usize> =
            self.session.take_shared().iter().map(|d| number(&d.message.payload)).collect();
        let mut expected = Vec::new();
        let tracked = &self.tracked;
        self.window.retain(|(_, n, awaiting)| {
            let goes = *awaiting == Awaiting::PubAck && tracked[*n].shared;
            if goes {
                expected.push(*n);
            }
            !goes
        });
        self.local.extend(self.inbox.drain(..));
        let (shared, own): (VecDeque<usize>, VecDeque<usize>) =
            self.local.drain(..).partition(|n| tracked[*n].shared);
        self.local = own;
        expected.extend(shared);
        assert_eq!(taken, expected, "take_shared");
        for n in taken {
            self.done(n);
        }
    }

    fn absorb(&mut self) {
        let ready = {
            let mut absorb = pin!(self.session.pending.absorb());
            absorb.as_mut().poll(&mut Context::from_waker(Waker::noop())).is_ready()
        };
        assert_eq!(ready, !self.inbox.is_empty(), "absorb readiness");
        for n in std::mem::take(&mut self.inbox) {
            if self.tracked[n].qos == QoS::AtMostOnce {
                self.done(n);
            } else {
                self.local.push_back(n);
            }
        }
    }

    /// The stored-state journal since the last step.
    fn check_journal(&mut self, ended: bool) {
        let journal = std::mem::take(&mut self.session.journal);
        let persistent = self.session.is_persistent();
        for op in journal {
            match op {
                StoreOp::PutDelivery { seq, record, .. } => {
                    assert!(!self.deleted_seqs.contains(&seq), "delivery {seq} written after its deletion");
                    assert!(self.tracked.iter().any(|t| t.seq == Some(seq)), "unknown delivery {seq}");
                    if let DeliveryState::AwaitingPubComp(_) = record.state {
                        assert_eq!(record.message, 0, "a released delivery still references its message");
                    }
                }
                StoreOp::DeleteDelivery { seq, .. } => {
                    assert!(self.deleted_seqs.insert(seq), "delivery {seq} deleted twice");
                    let t = self.tracked.iter().find(|t| t.seq == Some(seq)).expect("unknown delivery");
                    assert_eq!(t.state, State::Done, "delivery {seq} deleted while not done");
                }
                StoreOp::DeleteMessage(id) => {
                    let t = self
                        .tracked
                        .iter_mut()
                        .find(|t| t.message.durable.id() == id && !t.message_deleted)
                        .expect("unknown or already deleted message");
                    assert!(!t.sibling && !t.own_ref, "message {id} deleted while still referenced");
                    t.message_deleted = true;
                }
                StoreOp::PutInbound { .. } | StoreOp::DeleteInbound { .. } => assert!(persistent),
                StoreOp::DeleteSession(_) => assert!(ended, "session deleted before its end"),
                other => panic!("unexpected journal entry {other:?}"),
            }
        }
        // Every stored delivery completed since the last step has its record deleted (at the
        // end, deleting the session deletes them all).
        if !ended {
            for t in &self.tracked {
                if let (Some(seq), State::Done) = (t.seq, t.state) {
                    assert!(self.deleted_seqs.contains(&seq), "delivery {seq} done but its record kept");
                }
            }
        }
    }

    fn check(&mut self, ended: bool) {
        self.check_journal(ended);
        let mailbox = self.session.pending.mailbox();
        assert_eq!(mailbox.pending(), self.queued(), "queue counter");
        assert_eq!(mailbox.dropped(), self.dropped, "dropped counter");
        assert_eq!(self.session.outbound.len(), self.window.len(), "window length");
        assert_eq!(self.session.outbound.capacity(), self.capacity, "window capacity");
        assert_eq!(self.session.inbound_unacknowledged(), self.inbound.len());
        for (n, t) in self.tracked.iter().enumerate() {
            let expected = usize::from(t.sibling) + usize::from(t.own_ref);
            assert_eq!(
                t.message.durable.refs(),
                expected,
                "stored references of delivery {n} ({:?})",
                t.state
            );
        }
    }

    fn step(&mut self, step: &Step) -> bool {
        match *step {
            Step::Offer { qos, size, expiry, shared, sibling } => {
                self.offer(qos_of(qos), size, expiry, shared, sibling)
            }
            Step::Push { qos, size, sibling } => self.push(qos_of(qos), size, sibling),
            Step::Pump => {
                let mut out = Vec::new();
                self.session.pump(&mut out, self.now);
                self.follow(&out);
                self.encode(&out);
            }
            Step::Resume { receive_maximum, persistent } => self.resume(receive_maximum, persistent),
            Step::Offline => {
                self.session.pending.mailbox().set_online(false);
                self.online = false;
            }
            Step::Absorb if !self.online => self.absorb(),
            Step::Absorb => {}
            Step::PubAck(id) => self.ack(Packet::PubAck(Ack::success(self.resolve(id)))),
            Step::PubRec(id, refused) => {
                let reason = if refused { ReasonCode::QUOTA_EXCEEDED } else { ReasonCode::SUCCESS };
                self.ack(Packet::PubRec(Ack { packet_id: self.resolve(id), reason }))
            }
            Step::PubComp(id) => self.ack(Packet::PubComp(Ack::success(self.resolve(id)))),
            Step::TakeShared => self.take_shared(),
            Step::InboundQos2(n) => {
                let id = pid(n);
                let new = self.session.handle_inbound_qos2(id);
                assert_eq!(new, self.inbound.insert(id), "inbound QoS 2 de-duplication");
            }
            Step::PubRel(n) => {
                let id = pid(n);
                let known = self.inbound.remove(&id);
                let reason =
                    if known { ReasonCode::SUCCESS } else { ReasonCode::PACKET_IDENTIFIER_NOT_FOUND };
                assert_eq!(self.session.handle_pubrel(id), Packet::PubComp(Ack { packet_id: id, reason }));
            }
            Step::Advance(secs) => self.now += Duration::from_secs(u64::from(secs)),
            Step::End => {
                self.end();
                return false;
            }
        }
        self.check(false);
        true
    }

    /// The session ends: everything it held is released.
    fn end(&mut self) {
        self.session.drain_stored();
        while self.queued() > 0 {
            let n = self.pop();
            self.done(n);
        }
        for (_, n, _) in std::mem::take(&mut self.window) {
            self.done(n);
        }
        self.check(true);
    }

    /// Connects with a window as large as it gets and acknowledges everything until nothing
    /// is pending: every delivery must then be accounted for.
    fn finish(&mut self) {
        self.resume(u16::MAX, self.session.is_persistent());
        self.check(false);
        for _ in 0..=self.tracked.len() + 2 {
            if self.window.is_empty() && self.queued() == 0 {
                break;
            }
            if self.window.is_empty() {
                let mut out = Vec::new();
                self.session.pump(&mut out, self.now);
                self.follow(&out);
                self.encode(&out);
            }
            while let Some(&(id, _, awaiting)) = self.window.front() {
                let packet = match awaiting {
                    Awaiting::PubAck => Packet::PubAck(Ack::success(id)),
                    Awaiting::PubRec => Packet::PubRec(Ack::success(id)),
                    Awaiting::PubComp => Packet::PubComp(Ack::success(id)),
                };
                self.ack(packet);
                self.check(false);
            }
        }
        assert!(self.window.is_empty() && self.queued() == 0, "deliveries stuck: {} queued", self.queued());
        for (n, t) in self.tracked.iter().enumerate() {
            assert_eq!(t.state, State::Done, "delivery {n} never completed");
        }
        self.end();
    }
}

fuzz_target!(|input: Input| {
    let mut model = Model::new(&input);
    for step in input.ops.iter().take(256) {
        if !model.step(step) {
            return;
        }
    }
    model.finish();
});
