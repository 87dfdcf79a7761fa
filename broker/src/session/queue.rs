//! The bounded pending queue of a session: messages routed to it but not yet sent (or, for QoS
//! 1/2, not yet in the in-flight window).
//!
//! `Mailbox::offer` is called by the publishing task and never blocks; the bound is kept by
//! counting messages and bytes across the inbox and the session's local queue. The policy:
//! - A connected subscriber that keeps taking from its queue loses nothing, at any QoS: once its
//!   queue has held more than `BACKLOG_MESSAGES` (or `BACKLOG_BYTES`) for `PAUSE_AFTER_DELAY`
//!   since it could take no more (its socket or in-flight window full), or holds
//!   `PAUSE_AT_MESSAGES` (or `PAUSE_AT_BYTES`) at all, the clients publishing to it stop being
//!   read (flow control, `needs_flow_control` / `wait_for_room`) until it is down to half the
//!   backlog mark. TCP then pushes back on them. So a message waits about a millisecond inside
//!   the broker behind a subscriber that cannot keep up, while one that empties its queue at
//!   every turn lets publishers run on in large batches.
//! - A connected subscriber that takes nothing for the stall interval is stalled: publishers stop
//!   waiting for it and its queue fills up to twice the limits, beyond which new messages are
//!   dropped for it, until it takes again.
//! - An offline session queues QoS 1/2 up to the limits and drops beyond; QoS 0 is not queued
//!   for it (Mosquitto's default too).
//!
//! Every drop is counted and logged once per overflow episode.

use std::collections::VecDeque;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};

use std::time::{Duration, SystemTime};

use bytestring::ByteString;
use futures_util::task::AtomicWaker;
use tokio::sync::Notify;

use crate::message::Delivery;
use crate::metrics::{DropReason, METRICS};
use crate::packet::{ProtocolVersion, QoS};
use crate::session::ClientId;

/// The publishers' side of a session's pending queue.
#[derive(Debug)]
pub struct Mailbox {
    client_id: ClientId,
    /// Who the session's client is: its user (for read ACLs while routing) and its latest
    /// connection (for the admin API). Boxed: written once per connection, read rarely.
    identity: Mutex<Option<Box<Identity>>>,
    /// Deliveries handed over, taken by the session in batches. A plain deque: it allocates
    /// nothing until used, where a channel would hold a block per idle session.
    inbox: Mutex<VecDeque<Delivery>>,
    /// Wakes the session when `inbox` gets something. The session is its only waiter, and it
    /// looks at `inbox` after registering, so nothing is missed.
    arrived: AtomicWaker,
    /// The session's queue was dropped: nothing more is taken.
    closed: AtomicBool,
    limits: QueueLimits,
    /// Since when the session, unable to take more, holds a backlog (`note_blocked`; `Clock`
    /// ticks; 0: it does not).
    backlog_since: AtomicU64,
    messages: AtomicUsize,
    bytes: AtomicUsize,
    online: AtomicBool,
    /// In-flight count and window of the owning session, so shared-subscription routing can
    /// skip members whose window is full.
    inflight: AtomicU32,
    window: AtomicU32,
    /// The session is persistent: its QoS 1/2 deliveries are stored, keyed by `next_seq`.
    persistent: AtomicBool,
    next_seq: AtomicU64,
    overflowing: AtomicBool,
    dropped: AtomicU64,
    /// Publishers paused by this session's full queue wait here (flow control).
    room: Notify,
    /// Someone waits on `room`.
    waited_on: AtomicBool,
    /// Deliveries taken from the queue so far: progress, as paused publishers see it.
    taken: AtomicU64,
    /// Congested and taking nothing for the stall interval: not worth pausing publishers for.
    stalled: AtomicBool,
    /// A message this full queue cannot take is refused to its publisher, not just dropped
    /// for this session (a bridge with `overflow = "reject"`).
    rejects_when_full: AtomicBool,
    /// Publishers pause while this queue is congested (flow control). Off for a bridge: its
    /// queue is a buffer with its own budget and overflow policy, and pausing the publishers
    /// while a backlog drains would hold up every one of their publishes for the whole drain.
    paces_publishers: AtomicBool,
}

/// The user and the latest connection of a session's client.
#[derive(Debug, Clone, Default)]
pub struct Identity {
    pub username: Option<ByteString>,
    /// `None` for a session restored at start whose client has not come back since.
    pub connection: Option<ConnectionInfo>,
}

/// What the admin API tells about a client's connection (`GET /api/v1/clients/{id}`).
#[derive(Debug, Clone, Copy)]
pub struct ConnectionInfo {
    pub protocol: ProtocolVersion,
    pub peer: SocketAddr,
    /// The listener's configured address.
    pub listener: SocketAddr,
    /// Negotiated keep-alive, seconds (0: none).
    pub keep_alive: u16,
    pub connected_at: SystemTime,
}

/// Per-session queue policy.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct QueueLimits {
    pub max_messages: usize,
    pub max_bytes: usize,
    /// A congested queue from which nothing is taken for this long belongs to a stalled
    /// subscriber (one that stopped reading, or two clients waiting on each other): its
    /// publishers stop waiting, so one stuck client cannot stall others.
    /// In milliseconds: a `Duration` would take 16 bytes of every session's mailbox.
    pub stall_after_ms: u32,
}

impl QueueLimits {
    pub fn stall_after(&self) -> Duration {
        Duration::from_millis(u64::from(self.stall_after_ms))
    }

    /// Messages and bytes at which publishers pause at once: the limits, or less.
    fn pause_at(&self) -> (usize, usize) {
        (self.max_messages.min(PAUSE_AT_MESSAGES), self.max_bytes.min(PAUSE_AT_BYTES))
    }

    /// Messages and bytes over which the queue holds a backlog (`PAUSE_AFTER_DELAY`).
    fn backlog_at(&self) -> (usize, usize) {
        let pause_at = self.pause_at();
        (pause_at.0.min(BACKLOG_MESSAGES), pause_at.1.min(BACKLOG_BYTES))
    }
}

/// Publishers pause once a connected subscriber that can take no more has held more than this
/// many messages (or bytes) for `PAUSE_AFTER_DELAY`: it is behind. Small, so that a message
/// waits behind a few dozen others at most; a deeper backlog waits in TCP buffers, where it
/// costs the broker nothing.
const BACKLOG_MESSAGES: usize = 64;
const BACKLOG_BYTES: usize = 64 << 10;
/// How long a blocked subscriber's backlog may last before publishers pause. Pausing them at a
/// fixed count instead cut their batches short for nothing when the subscriber keeps up
/// (measured: closed-loop QoS 0 fan-in at 0.7 of the rate).
const PAUSE_AFTER_DELAY: Duration = Duration::from_millis(1);
/// Publishers pause at once when the queue holds this many messages (fewer if the limits are
/// lower): the bound for a subscriber whose task does not get to run.
const PAUSE_AT_MESSAGES: usize = 4096;
/// The same in bytes: a few large messages pause publishers as well.
const PAUSE_AT_BYTES: usize = 1 << 20;

/// A connected session's queue may hold up to this many times the limits: publishers pause
/// long before, and the headroom absorbs what they routed in the meantime, so nothing is dropped
/// for a subscriber that keeps reading.
const FLOW_CONTROL_HEADROOM: usize = 2;

/// The time, read at most once per routed message and only if a queue holds a blocked backlog: one
/// clock read per delivery would cost a fan-out more than its routing.
#[derive(Debug, Default)]
pub struct Clock(Option<u64>);

impl Clock {
    /// Nanoseconds since the first reading in this process, plus one (0 means "not set").
    fn ticks(&mut self) -> u64 {
        *self
            .0
            .get_or_insert_with(|| Self::ticks_of(crate::clock::since_start(tokio::time::Instant::now())) + 1)
    }

    fn ticks_of(duration: Duration) -> u64 {
        u64::try_from(duration.as_nanos()).unwrap_or(u64::MAX - 1)
    }

    /// A clock that reads `after` past `earlier`'s reading.
    #[cfg(test)]
    fn later(earlier: &mut Clock, after: Duration) -> Clock {
        Clock(Some(earlier.ticks() + Self::ticks_of(after)))
    }
}

/// What became of an offered delivery.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Offer {
    Queued,
    /// QoS 0 to an offline session: not queued, by policy.
    SkippedOffline,
    /// A limit was reached: dropped for this session, by policy.
    DroppedFull,
    /// The session ended while the message was being routed.
    Closed,
}

impl Mailbox {
    pub fn client_id(&self) -> &ClientId {
        &self.client_id
    }

    pub fn username(&self) -> Option<ByteString> {
        self.identity_slot().as_ref().and_then(|identity| identity.username.clone())
    }

    pub fn identity(&self) -> Identity {
        self.identity_slot().as_deref().cloned().unwrap_or_default()
    }

    pub fn set_identity(&self, identity: Identity) {
        let empty = identity.username.is_none() && identity.connection.is_none();
        *self.identity_slot() = (!empty).then(|| Box::new(identity));
    }

    fn identity_slot(&self) -> std::sync::MutexGuard<'_, Option<Box<Identity>>> {
        // Only assignments happen under the lock; a poisoned slot is still whole.
        self.identity.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Queues `delivery` if the limits allow.
    pub fn offer(&self, delivery: Delivery) -> Offer {
        match self.admit(&delivery) {
            Offer::Queued => self.deliver(delivery),
            refused => refused,
        }
    }

    pub fn set_online(&self, online: bool) {
        self.online.store(online, Ordering::SeqCst);
        if !online {
            // Publishers do not wait for an offline session: its queue has the drop policy.
            self.room.notify_waiters();
        }
    }

    pub fn is_online(&self) -> bool {
        self.online.load(Ordering::Relaxed)
    }

    /// Published by the session as its in-flight window changes.
    /// (Both at most 65,535: the window is bounded by the packet identifiers.)
    pub fn set_inflight(&self, inflight: usize, window: usize) {
        let narrow = |n: usize| u32::try_from(n).unwrap_or(u32::MAX);
        self.inflight.store(narrow(inflight), Ordering::Relaxed);
        self.window.store(narrow(window), Ordering::Relaxed);
    }

    pub fn set_rejects_when_full(&self, rejects: bool) {
        self.rejects_when_full.store(rejects, Ordering::Relaxed);
    }

    /// See `rejects_when_full`: routing refuses the whole message when this queue is full.
    pub fn rejects_when_full(&self) -> bool {
        self.rejects_when_full.load(Ordering::Relaxed)
    }

    pub fn set_paces_publishers(&self, paces: bool) {
        self.paces_publishers.store(paces, Ordering::Relaxed);
    }

    pub fn set_persistent(&self, persistent: bool) {
        self.persistent.store(persistent, Ordering::Relaxed);
    }

    /// The storage key for a new QoS 1/2 delivery to this session, `None` when the session
    /// is not persistent (nothing is stored for it).
    pub fn storage_seq(&self) -> Option<u64> {
        self.persistent.load(Ordering::Relaxed).then(|| self.next_seq.fetch_add(1, Ordering::Relaxed))
    }

    /// After recovery: new keys continue after the largest stored one.
    pub fn resume_seq_after(&self, seq: u64) {
        self.next_seq.fetch_max(seq + 1, Ordering::Relaxed);
    }

    /// Counts a delivery against the limits before it is stored and sent (see `deliver`).
    pub fn admit(&self, delivery: &Delivery) -> Offer {
        let online = self.online.load(Ordering::Relaxed);
        if delivery.qos == QoS::AtMostOnce && !online {
            return Offer::SkippedOffline;
        }
        // The headroom absorbs what publishers route while they are being paused.
        let paces = self.paces_publishers.load(Ordering::Relaxed);
        let headroom = if online && paces { FLOW_CONTROL_HEADROOM } else { 1 };
        if !self.reserve(delivery.message.weight(), headroom) {
            return Offer::DroppedFull;
        }
        Offer::Queued
    }

    /// The queue holds what makes publishers pause: the hard mark, or a blocked backlog older
    /// than `PAUSE_AFTER_DELAY`.
    fn is_congested(&self, clock: &mut Clock) -> bool {
        let pause_at = self.limits.pause_at();
        if self.messages.load(Ordering::SeqCst) >= pause_at.0
            || self.bytes.load(Ordering::SeqCst) >= pause_at.1
        {
            return true;
        }
        let since = self.backlog_since.load(Ordering::SeqCst);
        since != 0
            && self.holds_backlog()
            && clock.ticks().saturating_sub(since) >= Clock::ticks_of(PAUSE_AFTER_DELAY)
    }

    /// More than the backlog mark is queued.
    fn holds_backlog(&self) -> bool {
        let backlog_at = self.limits.backlog_at();
        self.messages.load(Ordering::SeqCst) > backlog_at.0
            || self.bytes.load(Ordering::SeqCst) > backlog_at.1
    }

    /// The session cannot take more for now (its client's socket is full, or its in-flight
    /// window): a backlog it holds starts to count as queue delay. Only then: a backlog that
    /// builds up between the turns of a subscriber that empties its queue at each turn is
    /// batching, and pausing its publishers for it only made everything slower (closed-loop
    /// QoS 0 fan-in at 0.75 of the rate).
    fn note_blocked(&self) {
        if self.backlog_since.load(Ordering::SeqCst) == 0 && self.holds_backlog() {
            self.backlog_since.store(Clock::default().ticks(), Ordering::SeqCst);
        }
    }

    /// The queue is down to half the backlog mark: paused publishers may go on.
    fn has_room(&self) -> bool {
        let backlog_at = self.limits.backlog_at();
        self.messages.load(Ordering::SeqCst) <= backlog_at.0 / 2
            && self.bytes.load(Ordering::SeqCst) <= backlog_at.1 / 2
    }

    /// The queue of this connected, progressing session is congested: publishers to it should
    /// pause (`wait_for_room`). `clock` is read only when the queue holds a backlog.
    pub fn needs_flow_control(&self, clock: &mut Clock) -> bool {
        self.is_online()
            && self.paces_publishers.load(Ordering::Relaxed)
            && !self.stalled.load(Ordering::SeqCst)
            && self.is_congested(clock)
    }

    /// Returns once the queue is down to half the backlog mark, the session went
    /// offline, or it took nothing from its queue for the stall interval (it is then treated as
    /// stalled).
    pub async fn wait_for_room(&self) {
        let mut seen = self.taken.load(Ordering::SeqCst);
        loop {
            let notified = self.room.notified();
            tokio::pin!(notified);
            notified.as_mut().enable();
            self.waited_on.store(true, Ordering::SeqCst);
            if !self.is_online() || self.has_room() || self.stalled.load(Ordering::SeqCst) {
                return;
            }
            if tokio::time::timeout(self.limits.stall_after(), notified).await.is_err() {
                let taken = self.taken.load(Ordering::SeqCst);
                if taken == seen {
                    if !self.stalled.swap(true, Ordering::SeqCst) {
                        tracing::warn!(
                            client_id = %self.client_id,
                            stall_after = ?self.limits.stall_after(),
                            "subscriber takes nothing from its queue: treated as stalled, publishers resume, \
                             its new messages are dropped beyond twice the queue limits"
                        );
                    }
                    return;
                }
                seen = taken;
            }
        }
    }

    /// Undoes `admit` for a delivery that will not be handed over.
    pub fn unadmit(&self, delivery: &Delivery) {
        self.release(1, delivery.message.weight());
    }

    /// Hands over a delivery that `admit` accepted.
    pub fn deliver(&self, delivery: Delivery) -> Offer {
        if self.closed.load(Ordering::Acquire) {
            self.release(1, delivery.message.weight());
            return Offer::Closed;
        }
        let was_empty = {
            let mut inbox = self.inbox.lock().unwrap_or_else(|e| e.into_inner());
            inbox.push_back(delivery);
            inbox.len() == 1
        };
        // The session takes the whole inbox at once: one wake-up per batch is enough (waking
        // it for every message of a fan-out was the hottest spot of routing).
        if was_empty {
            self.arrived.wake();
        }
        Offer::Queued
    }

    /// True when the session is online and its window has room for one more message beyond
    /// those already in flight and pending.
    pub fn has_credit(&self) -> bool {
        let committed =
            self.inflight.load(Ordering::Relaxed) as usize + self.messages.load(Ordering::Relaxed);
        self.is_online() && committed < self.window.load(Ordering::Relaxed) as usize
    }

    /// Counts a message against `headroom` times the limits; false (and the drop is counted)
    /// when over.
    fn reserve(&self, weight: usize, headroom: usize) -> bool {
        let messages = self.messages.fetch_add(1, Ordering::AcqRel);
        let bytes = self.bytes.fetch_add(weight, Ordering::AcqRel);
        let (max_messages, max_bytes) =
            (self.limits.max_messages * headroom, self.limits.max_bytes * headroom);
        if messages < max_messages && bytes + weight <= max_bytes {
            return true;
        }
        self.release(1, weight);
        self.dropped.fetch_add(1, Ordering::Relaxed);
        METRICS.dropped(DropReason::QueueFull, 1);
        if !self.overflowing.swap(true, Ordering::Relaxed) {
            let policy = if self.rejects_when_full() { "refusing" } else { "dropping" };
            tracing::warn!(
                client_id = %self.client_id,
                max_queued_messages = self.limits.max_messages,
                max_queued_bytes = self.limits.max_bytes,
                "pending queue full: {policy} new messages for this session"
            );
        }
        false
    }

    fn release(&self, messages: usize, bytes: usize) {
        self.messages.fetch_sub(messages, Ordering::AcqRel);
        self.bytes.fetch_sub(bytes, Ordering::AcqRel);
    }

    /// Called as `messages` left the queue: wakes paused publishers once there is room, ends an
    /// overflow episode once half the room is back.
    fn note_drained(&self, messages: usize) {
        self.taken.fetch_add(messages as u64, Ordering::SeqCst);
        if self.backlog_since.load(Ordering::SeqCst) != 0 && !self.holds_backlog() {
            self.backlog_since.store(0, Ordering::SeqCst);
        }
        if self.has_room() {
            self.stalled.store(false, Ordering::Relaxed);
            if self.waited_on.load(Ordering::SeqCst) && self.waited_on.swap(false, Ordering::SeqCst) {
                self.room.notify_waiters();
            }
        }
        if self.overflowing.load(Ordering::Relaxed)
            && self.messages.load(Ordering::Relaxed) <= self.limits.max_messages / 2
            && self.overflowing.swap(false, Ordering::Relaxed)
        {
            tracing::warn!(
                client_id = %self.client_id,
                dropped_total = self.dropped.load(Ordering::Relaxed),
                "pending queue has room again"
            );
        }
    }

    /// The session outlives its connection (admin API).
    pub fn is_persistent(&self) -> bool {
        self.persistent.load(Ordering::Relaxed)
    }

    /// QoS 1/2 messages sent to the client and not yet acknowledged (metrics).
    pub fn inflight(&self) -> u32 {
        self.inflight.load(Ordering::Relaxed)
    }

    /// Topic and payload bytes of the messages pending (metrics).
    pub fn pending_bytes(&self) -> usize {
        self.bytes.load(Ordering::Relaxed)
    }

    /// Messages currently pending (for tests and metrics).
    pub fn pending(&self) -> usize {
        self.messages.load(Ordering::Relaxed)
    }

    /// Messages dropped by the overflow policy since the session started.
    pub fn dropped(&self) -> u64 {
        self.dropped.load(Ordering::Relaxed)
    }
}

/// The session's side: receives from the mailbox, plus a local queue for messages the session
/// enqueues itself (retained messages on subscribe) or set aside while offline.
#[derive(Debug)]
pub struct PendingQueue {
    mailbox: Arc<Mailbox>,

    local: VecDeque<Delivery>,
    /// Messages and bytes `take`n but not yet counted out of the limits (`count_out_taken`).
    taken: (usize, usize),
}

impl PendingQueue {
    pub fn new(client_id: ClientId, limits: QueueLimits) -> Self {
        let mailbox = Arc::new(Mailbox {
            client_id,
            identity: Mutex::default(),
            inbox: Mutex::default(),
            arrived: AtomicWaker::new(),
            closed: AtomicBool::new(false),
            limits,
            backlog_since: AtomicU64::new(0),
            messages: AtomicUsize::new(0),
            bytes: AtomicUsize::new(0),
            online: AtomicBool::new(false),
            inflight: AtomicU32::new(0),
            window: AtomicU32::new(0),
            persistent: AtomicBool::new(false),
            next_seq: AtomicU64::new(1),
            overflowing: AtomicBool::new(false),
            dropped: AtomicU64::new(0),
            room: Notify::new(),
            waited_on: AtomicBool::new(false),
            taken: AtomicU64::new(0),
            stalled: AtomicBool::new(false),
            rejects_when_full: AtomicBool::new(false),
            paces_publishers: AtomicBool::new(true),
        });
        PendingQueue { mailbox, local: VecDeque::new(), taken: (0, 0) }
    }

    pub fn mailbox(&self) -> &Arc<Mailbox> {
        &self.mailbox
    }

    /// Puts back a stored delivery at start (recovery): counted, never refused, so nothing
    /// stored is lost even if the limits were lowered since.
    pub fn restore(&mut self, delivery: Delivery) {
        self.mailbox.messages.fetch_add(1, Ordering::AcqRel);
        self.mailbox.bytes.fetch_add(delivery.message.weight(), Ordering::AcqRel);
        self.local.push_back(delivery);
    }

    /// Appends a delivery produced by the session itself, under the same limits.
    pub fn push(&mut self, delivery: Delivery) -> Offer {
        if !self.mailbox.reserve(delivery.message.weight(), 1) {
            return Offer::DroppedFull;
        }
        self.local.push_back(delivery);
        Offer::Queued
    }

    /// Moves everything handed over into `local`, in order; false when there was nothing.
    fn collect(&mut self) -> bool {
        let mut inbox = self.mailbox.inbox.lock().unwrap_or_else(|e| e.into_inner());
        if inbox.is_empty() {
            return false;
        }
        if self.local.is_empty() {
            std::mem::swap(&mut self.local, &mut inbox);
        } else {
            self.local.append(&mut inbox);
        }
        true
    }

    /// Ready once something is pending, collecting what was handed over; otherwise the
    /// session's task is woken when something arrives.
    pub fn poll_pending(&mut self, cx: &mut Context<'_>) -> Poll<()> {
        if self.local.is_empty() {
            self.poll_arrival(cx)
        } else {
            Poll::Ready(())
        }
    }

    /// Ready once something was handed over (and collected into `local`).
    fn poll_arrival(&mut self, cx: &mut Context<'_>) -> Poll<()> {
        if self.collect() {
            return Poll::Ready(());
        }
        self.mailbox.arrived.register(cx.waker());
        if self.collect() {
            Poll::Ready(())
        } else {
            Poll::Pending
        }
    }

    /// The oldest delivery taken in and not yet sent.
    pub fn front(&self) -> Option<&Delivery> {
        self.local.front()
    }

    /// The QoS of the delivery `take` would return next. What was handed over is looked at,
    /// not taken in: taking it in early would put it ahead of deliveries the session queues
    /// itself (retained messages on SUBSCRIBE, older than what was routed since).
    pub fn next_qos(&self) -> Option<QoS> {
        match self.local.front() {
            Some(delivery) => Some(delivery.qos),
            None => self.mailbox.inbox.lock().unwrap_or_else(|e| e.into_inner()).front().map(|d| d.qos),
        }
    }

    /// The next pending delivery without waiting.
    pub fn try_pop(&mut self) -> Option<Delivery> {
        let next = self.take();
        self.count_out_taken();
        next
    }

    /// The next pending delivery without waiting, still counted against the limits until
    /// `count_out_taken`: a batch then updates the counters that publishers share once, not
    /// once per message.
    pub fn take(&mut self) -> Option<Delivery> {
        if self.local.is_empty() {
            self.collect();
        }
        let next = self.local.pop_front()?;
        self.taken.0 += 1;
        self.taken.1 += next.message.weight();
        Some(next)
    }

    /// The session cannot take more for now: see `Mailbox::note_blocked`.
    pub fn note_blocked(&self) {
        self.mailbox.note_blocked();
    }

    /// Counts out everything `take`n since the last call (waking publishers paused for room).
    pub fn count_out_taken(&mut self) {
        let (messages, bytes) = std::mem::take(&mut self.taken);
        if messages > 0 {
            self.mailbox.release(messages, bytes);
            self.mailbox.note_drained(messages);
        }
    }

    /// While offline: waits for what arrives and keeps it in the local queue, dropping QoS 0
    /// (not queued for offline sessions).
    pub async fn absorb(&mut self) {
        let before = self.local.len();
        std::future::poll_fn(|cx| self.poll_arrival(cx)).await;
        let arrived: Vec<Delivery> = self.local.drain(before..).collect();
        for delivery in arrived {
            if delivery.qos == QoS::AtMostOnce {
                self.released(delivery);
            } else {
                self.local.push_back(delivery);
            }
        }
    }

    /// Every pending delivery, oldest first (what a session still holds when it expires).
    pub fn held(&mut self) -> impl Iterator<Item = &Delivery> {
        self.collect();
        self.local.iter()
    }

    /// Removes and returns every pending delivery that came through a shared subscription
    /// (the session is leaving; another member of the group takes them).
    pub fn take_shared(&mut self) -> Vec<Delivery> {
        self.collect();
        let (shared, own): (VecDeque<_>, VecDeque<_>) =
            self.local.drain(..).partition(|d| d.shared.is_some());
        self.local = own;
        shared.into_iter().map(|d| self.released(d)).collect()
    }

    fn released(&self, delivery: Delivery) -> Delivery {
        self.mailbox.release(1, delivery.message.weight());
        self.mailbox.note_drained(1);
        delivery
    }
}

impl Drop for PendingQueue {
    /// Whatever is still handed over is dropped with the session (counted out); later
    /// deliveries are refused as `Closed`.
    fn drop(&mut self) {
        self.mailbox.closed.store(true, Ordering::Release);
        self.count_out_taken();
        self.collect();
        for delivery in std::mem::take(&mut self.local) {
            self.released(delivery);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::message::Message;

    const STALL_AFTER: Duration = Duration::from_secs(2);

    fn delivery(qos: QoS, payload: &'static [u8]) -> Delivery {
        Delivery::new(Arc::new(Message::new("t", payload, qos)), qos, false)
    }

    fn queue(max_messages: usize, max_bytes: usize) -> PendingQueue {
        let limits = QueueLimits { max_messages, max_bytes, stall_after_ms: STALL_AFTER.as_millis() as u32 };
        let q = PendingQueue::new(ClientId::from("c"), limits);
        q.mailbox().set_online(true);
        q
    }

    #[test]
    fn message_limit_drops_the_newest() {
        let mut q = queue(2, 1 << 20);
        let mb = q.mailbox().clone();
        mb.set_online(false);
        assert_eq!(mb.offer(delivery(QoS::AtLeastOnce, b"1")), Offer::Queued);
        assert_eq!(mb.offer(delivery(QoS::AtLeastOnce, b"2")), Offer::Queued);
        assert_eq!(mb.offer(delivery(QoS::AtLeastOnce, b"3")), Offer::DroppedFull);
        assert_eq!(mb.dropped(), 1);
        assert_eq!(&q.try_pop().unwrap().message.payload[..], b"1");
        assert_eq!(mb.offer(delivery(QoS::AtLeastOnce, b"4")), Offer::Queued);
        assert_eq!(&q.try_pop().unwrap().message.payload[..], b"2");
        assert_eq!(&q.try_pop().unwrap().message.payload[..], b"4");
        assert!(q.try_pop().is_none());
        assert_eq!(mb.pending(), 0);
    }

    #[test]
    fn byte_limit_counts_topic_and_payload() {
        let q = queue(100, 5); // topic "t" (1) + payload
        let mb = q.mailbox().clone();
        mb.set_online(false);
        assert_eq!(mb.offer(delivery(QoS::AtLeastOnce, b"abcd")), Offer::Queued);
        assert_eq!(mb.offer(delivery(QoS::AtLeastOnce, b"x")), Offer::DroppedFull);
    }

    #[tokio::test]
    async fn offline_sessions_keep_qos1_and_skip_qos0() {
        let mut q = queue(10, 1 << 20);
        let mb = q.mailbox().clone();
        mb.offer(delivery(QoS::AtLeastOnce, b"a"));
        mb.offer(delivery(QoS::AtMostOnce, b"handed over while online"));
        mb.set_online(false);
        assert_eq!(mb.offer(delivery(QoS::AtMostOnce, b"b")), Offer::SkippedOffline);
        mb.offer(delivery(QoS::ExactlyOnce, b"c"));
        q.absorb().await;
        assert_eq!(&q.try_pop().unwrap().message.payload[..], b"a");
        assert_eq!(&q.try_pop().unwrap().message.payload[..], b"c");
        assert!(q.try_pop().is_none());
        assert_eq!(mb.pending(), 0);
    }

    #[test]
    fn local_pushes_share_the_limit() {
        let mut q = queue(1, 1 << 20);
        q.mailbox().set_online(false);
        assert_eq!(q.push(delivery(QoS::AtLeastOnce, b"r")), Offer::Queued);
        assert_eq!(q.mailbox().offer(delivery(QoS::AtLeastOnce, b"x")), Offer::DroppedFull);
    }

    #[test]
    fn connected_sessions_get_headroom_at_every_qos_and_ask_for_flow_control() {
        let mut q = queue(2, 1 << 20);
        let mb = q.mailbox().clone();
        for n in 0..2 {
            assert!(!mb.needs_flow_control(&mut Clock::default()), "{n} queued");
            assert_eq!(mb.offer(delivery(QoS::AtMostOnce, b"m")), Offer::Queued);
        }
        assert!(mb.needs_flow_control(&mut Clock::default()), "full: publishers should pause");
        // What publishers routed before pausing still fits, up to twice the limits.
        assert_eq!(mb.offer(delivery(QoS::AtLeastOnce, b"m")), Offer::Queued);
        assert_eq!(mb.offer(delivery(QoS::ExactlyOnce, b"m")), Offer::Queued);
        assert_eq!(mb.offer(delivery(QoS::AtLeastOnce, b"m")), Offer::DroppedFull);
        assert_eq!(mb.offer(delivery(QoS::AtMostOnce, b"m")), Offer::DroppedFull);
        for _ in 0..2 {
            q.try_pop().unwrap();
        }
        assert!(
            mb.needs_flow_control(&mut Clock::default()),
            "publishers wait until half the pause mark is free again"
        );
        q.try_pop().unwrap();
        assert!(!mb.needs_flow_control(&mut Clock::default()));
    }

    #[test]
    fn publishers_pause_once_a_blocked_subscriber_holds_a_backlog_longer_than_the_delay() {
        let mut q = queue(100_000, 1 << 30);
        let mb = q.mailbox().clone();
        let offer_backlog = || {
            for _ in 0..=BACKLOG_MESSAGES {
                assert_eq!(mb.offer(delivery(QoS::AtMostOnce, b"m")), Offer::Queued);
            }
        };
        let after_delay = || Clock::later(&mut Clock::default(), PAUSE_AFTER_DELAY);
        offer_backlog();
        assert!(!mb.needs_flow_control(&mut after_delay()), "a backlog between turns is batching");
        q.note_blocked();
        assert!(!mb.needs_flow_control(&mut Clock::default()), "a young backlog does not pause");
        let mut almost = Clock::later(&mut Clock::default(), PAUSE_AFTER_DELAY / 2);
        assert!(!mb.needs_flow_control(&mut almost));
        assert!(mb.needs_flow_control(&mut after_delay()), "a blocked backlog older than the delay pauses");
        // Taken below the mark: the next backlog starts anew.
        while q.try_pop().is_some() {}
        offer_backlog();
        assert!(!mb.needs_flow_control(&mut after_delay()));
    }

    #[test]
    fn publishers_pause_at_once_at_the_hard_mark_far_below_the_limits() {
        let q = queue(100_000, 1 << 30);
        let mb = q.mailbox().clone();
        let mut clock = Clock::default();
        for _ in 0..PAUSE_AT_MESSAGES {
            assert!(!mb.needs_flow_control(&mut clock));
            assert_eq!(mb.offer(delivery(QoS::AtMostOnce, b"m")), Offer::Queued);
        }
        assert!(mb.needs_flow_control(&mut clock), "paused at {PAUSE_AT_MESSAGES} queued messages");
    }

    #[tokio::test]
    async fn paused_publishers_wake_when_there_is_room() {
        let mut q = queue(1, 1 << 20);
        let mb = q.mailbox().clone();
        mb.offer(delivery(QoS::AtLeastOnce, b"m"));
        let waiter = tokio::spawn({
            let mb = mb.clone();
            async move { mb.wait_for_room().await }
        });
        tokio::task::yield_now().await;
        assert!(!waiter.is_finished());
        q.try_pop().unwrap();
        tokio::time::timeout(std::time::Duration::from_secs(1), waiter).await.unwrap().unwrap();
    }

    #[tokio::test]
    async fn a_taken_batch_is_counted_out_at_once_and_wakes_paused_publishers() {
        let mut q = queue(2, 1 << 20);
        let mb = q.mailbox().clone();
        mb.offer(delivery(QoS::AtLeastOnce, b"1"));
        mb.offer(delivery(QoS::AtLeastOnce, b"2"));
        let waiter = tokio::spawn({
            let mb = mb.clone();
            async move { mb.wait_for_room().await }
        });
        tokio::task::yield_now().await;
        assert_eq!(&q.take().unwrap().message.payload[..], b"1");
        assert_eq!(&q.take().unwrap().message.payload[..], b"2");
        assert!(q.take().is_none());
        tokio::task::yield_now().await;
        assert_eq!(mb.pending(), 2, "counted until the batch is counted out");
        assert!(!waiter.is_finished());
        q.count_out_taken();
        assert_eq!(mb.pending(), 0);
        tokio::time::timeout(std::time::Duration::from_secs(1), waiter).await.unwrap().unwrap();
    }

    #[tokio::test(start_paused = true)]
    async fn a_session_taking_nothing_is_stalled_and_not_waited_for() {
        let q = queue(1, 1 << 20);
        let mb = q.mailbox().clone();
        mb.offer(delivery(QoS::AtLeastOnce, b"m"));
        let started = tokio::time::Instant::now();
        mb.wait_for_room().await;
        assert!(started.elapsed() >= STALL_AFTER);
        assert!(!mb.needs_flow_control(&mut Clock::default()), "stalled: no more pauses for it");
        drop(q);
    }
}
