//! Which task currently owns each client id, and the takeover hand-off.
//!
//! Every session, online or offline, is owned by exactly one task. A new connection claims the
//! client id; if another task held it, that task is asked to give the session up: it closes its
//! network connection (if any) and sends the `Session` back by value [MQTT-3.1.4-2]. Because the
//! session's mailbox travels inside it, messages routed during the hand-off are not lost.

use std::collections::{BTreeMap, HashMap};
use std::future::poll_fn;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::Duration;

use futures_util::task::AtomicWaker;
use tokio::sync::oneshot;
use tokio::time::Instant;

use super::queue::Mailbox;
use super::{ClientId, Session};

/// How often `Registry::expire_keep_alives` should run: the keep-alive timeout comes at most
/// this long after 1.5 × the keep-alive.
pub const KEEP_ALIVE_TICK: Duration = Duration::from_millis(250);

/// How long a claim waits for the previous owner to hand the session over. The owner answers
/// from its select loop, so this only expires if that task is wedged in a socket write to a
/// client that stopped reading; the session is then dropped rather than blocking the new client.
const TAKEOVER_TIMEOUT: Duration = Duration::from_secs(10);

/// A request to the task that owns a session.
#[derive(Debug)]
pub enum Control {
    /// Broker shutdown: close the connection (DISCONNECT 0x8B).
    Shutdown,
    /// The keep-alive deadline set with `set_deadline` has passed.
    KeepAliveTimeout,
    /// Give the session up to a new connection with the same client id.
    Takeover(Takeover),
    /// An operator asked to disconnect the client (admin API): DISCONNECT 0x98. An offline
    /// session has nothing to disconnect and ignores it, unless `discard`: then the session
    /// ends, online or offline, with everything stored for it.
    Kick { discard: bool },
}

/// A new connection's claim on the session another task holds.
#[derive(Debug)]
pub struct Takeover {
    /// Answered with the session if it is persistent, `None` after ending it otherwise.
    pub reply: oneshot::Sender<Option<Session>>,
    /// The new connection resumes the session (clean session / Clean Start 0), so it goes on;
    /// otherwise it ends with the hand-over. The will depends on it.
    pub resumes: bool,
}

/// The owning task's end of its control slot. A slot, not a channel: at most one takeover is
/// ever sent to an owner (the claim that replaced it), and every idle connection carries one,
/// so it should cost a few bytes rather than a channel's buffers. It also carries the broker's
/// shutdown and the keep-alive timeout, so a connection waits on this one small thing instead
/// of a cancellation future and a timer of its own as well: one task watches every deadline
/// (`Registry::expire_keep_alives`).
#[derive(Debug)]
pub struct ControlReceiver(Arc<ControlSlot>);

/// The registry's end of an owner's control slot.
#[derive(Debug)]
pub struct ControlSender(Arc<ControlSlot>);

#[derive(Debug, Default)]
struct ControlSlot {
    state: Mutex<SlotState>,
    /// Wakes the owner, which has only one waiting place.
    wake: AtomicWaker,
    /// When the owner's client is overdue, on the `clock_ms` scale; 0 for no deadline.
    deadline_ms: AtomicU64,
}

#[derive(Debug, Default)]
struct SlotState {
    /// The owner ended: requests are refused (and their reply channel dropped).
    closed: bool,
    shutdown: bool,
    /// The deadline was seen passed; the owner checks it again (it may have moved since).
    overdue: bool,
    /// A kick was asked for; `Some(true)` when the session is to be discarded as well.
    kick: Option<bool>,
    takeover: Option<Takeover>,
}

/// A slot for one owner: the registry keeps the sender, the owner waits on the receiver.
pub fn control_slot() -> (ControlSender, ControlReceiver) {
    let slot = Arc::new(ControlSlot::default());
    (ControlSender(slot.clone()), ControlReceiver(slot))
}

impl ControlSlot {
    fn state(&self) -> std::sync::MutexGuard<'_, SlotState> {
        // Nothing can panic while the lock is held; a poisoned state is still whole.
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }
}

impl ControlSender {
    /// Hands a takeover to the owner; gives it back if the owner has ended or already holds one.
    fn send(&self, takeover: Takeover) -> Result<(), Takeover> {
        let mut state = self.0.state();
        if state.closed || state.takeover.is_some() {
            return Err(takeover);
        }
        state.takeover = Some(takeover);
        drop(state);
        self.0.wake.wake();
        Ok(())
    }

    fn shut_down(&self) {
        self.0.state().shutdown = true;
        self.0.wake.wake();
    }

    fn kick(&self, discard: bool) {
        let mut state = self.0.state();
        // Two kicks before the owner looks: discarding wins.
        state.kick = Some(discard || state.kick == Some(true));
        drop(state);
        self.0.wake.wake();
    }

    /// Tells the owner if its deadline has passed at `now_ms`.
    fn check_deadline(&self, now_ms: u64) {
        if passed(self.0.deadline_ms.load(Ordering::Relaxed), now_ms) {
            self.0.state().overdue = true;
            self.0.wake.wake();
        }
    }
}

/// Milliseconds since the first call in this process, never 0 (0 means "no deadline").
fn clock_ms(at: Instant) -> u64 {
    crate::clock::since_start(at).as_millis() as u64 + 1
}

fn passed(deadline_ms: u64, now_ms: u64) -> bool {
    deadline_ms != 0 && deadline_ms <= now_ms
}

impl ControlReceiver {
    /// Sets (or with `None` clears) the keep-alive deadline. It is checked every
    /// `KEEP_ALIVE_TICK`, so the timeout comes up to that much after the deadline.
    pub fn set_deadline(&self, at: Option<Instant>) {
        self.0.deadline_ms.store(at.map_or(0, clock_ms), Ordering::Relaxed);
    }

    /// Shutdown first, then a takeover, then the keep-alive timeout. Cancel-safe: a request
    /// not yet taken stays in the slot.
    pub fn poll_recv(&mut self, cx: &mut Context<'_>) -> Poll<Control> {
        let deadline_ms = &self.0.deadline_ms;
        let take = |state: &mut SlotState| {
            if state.shutdown {
                return Some(Control::Shutdown);
            }
            if let Some(takeover) = state.takeover.take() {
                return Some(Control::Takeover(takeover));
            }
            if let Some(discard) = state.kick.take() {
                return Some(Control::Kick { discard });
            }
            let overdue = std::mem::take(&mut state.overdue);
            (overdue && passed(deadline_ms.load(Ordering::Relaxed), clock_ms(Instant::now())))
                .then_some(Control::KeepAliveTimeout)
        };
        if let Some(request) = take(&mut self.0.state()) {
            return Poll::Ready(request);
        }
        self.0.wake.register(cx.waker());
        take(&mut self.0.state()).map_or(Poll::Pending, Poll::Ready)
    }

    /// Waits for a request. Cancel-safe.
    pub async fn recv(&mut self) -> Control {
        poll_fn(|cx| self.poll_recv(cx)).await
    }
}

impl Drop for ControlReceiver {
    /// The owner is gone: later requests are refused, and one that arrived too late is dropped
    /// with its reply channel, so the claimant stops waiting at once.
    fn drop(&mut self) {
        let pending = {
            let mut state = self.0.state();
            state.closed = true;
            state.takeover.take()
        };
        drop(pending);
    }
}

/// Identifies one owning task, so a task only ever removes its own registration.
pub type OwnerId = u64;

#[derive(Debug)]
struct Owner {
    id: OwnerId,
    control: ControlSender,
    /// The session's mailbox, once the owner has its session (`set_mailbox`): what the admin
    /// API lists (client id, user, online, queue).
    mailbox: Option<Arc<Mailbox>>,
}

/// What all sessions' queues hold (`Registry::queue_totals`).
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct QueueTotals {
    /// Messages waiting to be sent, and their topic + payload bytes.
    pub messages: u64,
    pub bytes: u64,
    /// QoS 1/2 messages sent and not yet acknowledged.
    pub inflight: u64,
}

#[derive(Debug, Default)]
pub struct Registry {
    owners: Mutex<HashMap<ClientId, Owner>>,
    next_owner: AtomicU64,
    offline: Mutex<OfflineRoster>,
}

/// The persistent sessions whose clients are away, in the order they went offline: 3.1.1
/// sessions never expire, so their number is bounded (`limits.max_offline_sessions`) by
/// ending the one offline longest when a new one would exceed it.
#[derive(Debug, Default)]
struct OfflineRoster {
    next: u64,
    /// By when they went offline; the sender tells the session's task to end it.
    sessions: BTreeMap<u64, (ClientId, oneshot::Sender<()>)>,
}

/// An offline session's place in the roster; leaves it when dropped (the session resumed,
/// expired or was evicted).
#[derive(Debug)]
pub struct OfflineEntry<'a> {
    registry: &'a Registry,
    ticket: u64,
    /// Resolves when the session is evicted to make room for a newer one.
    pub evicted: oneshot::Receiver<()>,
}

impl Drop for OfflineEntry<'_> {
    fn drop(&mut self) {
        self.registry.roster().sessions.remove(&self.ticket);
    }
}

impl Registry {
    pub fn new_owner_id(&self) -> OwnerId {
        self.next_owner.fetch_add(1, Ordering::Relaxed)
    }

    /// Makes `owner` the owner of `client_id` and returns the session the previous owner held,
    /// if it was persistent. `resumes`: the new connection goes on with that session.
    pub async fn claim(
        &self,
        client_id: &ClientId,
        owner: OwnerId,
        control: ControlSender,
        resumes: bool,
    ) -> Option<Session> {
        let previous = self.lock().insert(client_id.clone(), Owner { id: owner, control, mailbox: None });
        let previous = previous?;
        let (reply, answer) = oneshot::channel();
        // A refused request means the previous owner already ended (a clean session).
        previous.control.send(Takeover { reply, resumes }).ok()?;
        match tokio::time::timeout(TAKEOVER_TIMEOUT, answer).await {
            Ok(answer) => answer.ok().flatten(),
            Err(_) => {
                tracing::error!(%client_id, "previous owner did not hand over the session in time");
                None
            }
        }
    }

    /// Registers a session restored at start (no previous owner can exist yet).
    pub fn register(&self, client_id: &ClientId, owner: OwnerId, control: ControlSender) {
        self.lock().insert(client_id.clone(), Owner { id: owner, control, mailbox: None });
    }

    /// Records the mailbox of the session `owner` holds (after its claim settled).
    pub fn set_mailbox(&self, client_id: &ClientId, owner: OwnerId, mailbox: &Arc<Mailbox>) {
        if let Some(o) = self.lock().get_mut(client_id).filter(|o| o.id == owner) {
            o.mailbox = Some(mailbox.clone());
        }
    }

    /// Every session with its mailbox, online and offline (a claim still in progress is left
    /// out), in no particular order.
    pub fn sessions(&self) -> Vec<Arc<Mailbox>> {
        self.lock().values().filter_map(|o| o.mailbox.clone()).collect()
    }

    /// The mailbox of `client_id`'s session, if it has one.
    pub fn session(&self, client_id: &ClientId) -> Option<Arc<Mailbox>> {
        self.lock().get(client_id).and_then(|o| o.mailbox.clone())
    }

    /// Messages pending in every session's queue and in flight, summed now (for `$SYS` and
    /// `/metrics`: summing when asked keeps a shared counter off the delivery path).
    pub fn queue_totals(&self) -> QueueTotals {
        let mut totals = QueueTotals::default();
        for mailbox in self.lock().values().filter_map(|o| o.mailbox.as_ref()) {
            totals.messages += mailbox.pending() as u64;
            totals.bytes += mailbox.pending_bytes() as u64;
            totals.inflight += u64::from(mailbox.inflight());
        }
        totals
    }

    /// Asks the owner of `client_id` to disconnect its client (DISCONNECT 0x98), and with
    /// `discard` to end the session too. False when no session has that id.
    pub fn kick(&self, client_id: &ClientId, discard: bool) -> bool {
        match self.lock().get(client_id) {
            Some(owner) => {
                owner.control.kick(discard);
                true
            }
            None => false,
        }
    }

    /// Removes the registration if `owner` still holds it.
    pub fn release(&self, client_id: &ClientId, owner: OwnerId) {
        let mut owners = self.lock();
        if owners.get(client_id).is_some_and(|o| o.id == owner) {
            owners.remove(client_id);
        }
    }

    /// Tells every owner that the broker is shutting down. An owner registered later sees the
    /// broker's shutdown token already cancelled (it checks after registering).
    pub fn shut_down(&self) {
        for owner in self.lock().values() {
            owner.control.shut_down();
        }
    }

    /// Tells every owner whose keep-alive deadline has passed at `now`.
    pub fn expire_keep_alives(&self, now: Instant) {
        let now_ms = clock_ms(now);
        for owner in self.lock().values() {
            owner.control.check_deadline(now_ms);
        }
    }

    /// Number of registered sessions, online and offline.
    pub fn len(&self) -> usize {
        self.lock().len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Enters a session that went offline into the roster; beyond `limit` (0 = none) the
    /// session offline longest is told to end.
    pub fn go_offline(&self, client_id: &ClientId, limit: usize) -> OfflineEntry<'_> {
        let (evict, evicted) = oneshot::channel();
        let mut roster = self.roster();
        let ticket = roster.next;
        roster.next += 1;
        roster.sessions.insert(ticket, (client_id.clone(), evict));
        while limit != 0 && roster.sessions.len() > limit {
            let Some((_, (oldest, evict))) = roster.sessions.pop_first() else { break };
            tracing::warn!(client_id = %oldest, limit, "too many offline sessions: ending the one offline longest");
            // Its task may be ending by itself at this moment; then there is nothing to do.
            let _ = evict.send(());
        }
        OfflineEntry { registry: self, ticket, evicted }
    }

    /// Persistent sessions whose clients are away.
    pub fn offline_len(&self) -> usize {
        self.roster().sessions.len()
    }

    fn roster(&self) -> std::sync::MutexGuard<'_, OfflineRoster> {
        self.offline.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<ClientId, Owner>> {
        // A poisoned lock means a panic while inserting or removing; the map is still whole.
        self.owners.lock().unwrap_or_else(|e| e.into_inner())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_request_reaches_a_waiting_owner() {
        let (sender, mut receiver) = control_slot();
        let waiting = tokio::spawn(async move { matches!(receiver.recv().await, Control::Takeover(_)) });
        tokio::task::yield_now().await;
        let (reply, _answer) = oneshot::channel();
        assert!(sender.send(Takeover { reply, resumes: true }).is_ok());
        assert!(waiting.await.unwrap());
    }

    #[tokio::test]
    async fn an_ended_owner_refuses_requests_and_drops_the_one_it_never_took() {
        let (sender, receiver) = control_slot();
        let (reply, answer) = oneshot::channel();
        assert!(sender.send(Takeover { reply, resumes: true }).is_ok());
        drop(receiver);
        // The claimant waiting on the answer learns at once that no session comes back.
        assert!(answer.await.is_err());
        let (reply, _answer) = oneshot::channel();
        assert!(sender.send(Takeover { reply, resumes: true }).is_err());
    }

    #[tokio::test]
    async fn shutdown_reaches_every_owner_before_a_takeover() {
        let registry = Registry::default();
        let (sender, mut receiver) = control_slot();
        registry.register(&ClientId::from("c"), registry.new_owner_id(), sender);
        let waiting = tokio::spawn(async move { matches!(receiver.recv().await, Control::Shutdown) });
        tokio::task::yield_now().await;
        registry.shut_down();
        assert!(waiting.await.unwrap());
    }

    #[tokio::test(start_paused = true)]
    async fn a_passed_keep_alive_deadline_times_out_and_a_moved_one_does_not() {
        let registry = Registry::default();
        let (sender, mut receiver) = control_slot();
        registry.register(&ClientId::from("c"), registry.new_owner_id(), sender);
        let start = Instant::now();
        receiver.set_deadline(Some(start + Duration::from_secs(1)));
        registry.expire_keep_alives(start + Duration::from_millis(500));
        let now = std::future::poll_fn(|cx| Poll::Ready(receiver.poll_recv(cx).is_pending())).await;
        assert!(now, "not yet due");
        // Seen passed by the watcher, but moved by the owner before it looked: no timeout.
        tokio::time::advance(Duration::from_secs(2)).await;
        registry.expire_keep_alives(Instant::now());
        receiver.set_deadline(Some(Instant::now() + Duration::from_secs(1)));
        let pending = std::future::poll_fn(|cx| Poll::Ready(receiver.poll_recv(cx).is_pending())).await;
        assert!(pending, "the deadline moved");
        tokio::time::advance(Duration::from_secs(2)).await;
        registry.expire_keep_alives(Instant::now());
        assert!(matches!(receiver.recv().await, Control::KeepAliveTimeout));
        // Cleared deadlines (an offline session) never time out.
        receiver.set_deadline(None);
        registry.expire_keep_alives(Instant::now() + Duration::from_secs(3600));
        let pending = std::future::poll_fn(|cx| Poll::Ready(receiver.poll_recv(cx).is_pending())).await;
        assert!(pending);
    }

    #[tokio::test]
    async fn beyond_the_limit_the_session_offline_longest_is_evicted() {
        let registry = Registry::default();
        let mut first = registry.go_offline(&ClientId::from("a"), 2);
        let mut second = registry.go_offline(&ClientId::from("b"), 2);
        assert_eq!(registry.offline_len(), 2);
        assert!(first.evicted.try_recv().is_err(), "within the limit");
        let third = registry.go_offline(&ClientId::from("c"), 2);
        assert!(first.evicted.try_recv().is_ok(), "the oldest goes");
        assert!(second.evicted.try_recv().is_err());
        drop(first);
        assert_eq!(registry.offline_len(), 2);
        drop((second, third));
        assert_eq!(registry.offline_len(), 0);
        let _unbounded: Vec<_> =
            (0..10).map(|n| registry.go_offline(&ClientId::from(n.to_string().as_str()), 0)).collect();
        assert_eq!(registry.offline_len(), 10);
    }

    #[tokio::test]
    async fn claiming_a_client_id_whose_owner_ended_returns_nothing() {
        let registry = Registry::default();
        let client_id = ClientId::from("c");
        let (first, first_receiver) = control_slot();
        registry.register(&client_id, registry.new_owner_id(), first);
        drop(first_receiver);
        let (second, _second_receiver) = control_slot();
        let previous = tokio::time::timeout(
            Duration::from_secs(1),
            registry.claim(&client_id, registry.new_owner_id(), second, true),
        )
        .await;
        assert!(matches!(previous, Ok(None)), "no wait for an owner that is gone");
        assert_eq!(registry.len(), 1);
    }
}
