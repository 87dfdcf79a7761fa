//! Which task currently owns each client id, and the takeover hand-off.
//!
//! Every session, online or offline, is owned by exactly one task. A new connection claims the
//! client id; if another task held it, that task is asked to give the session up: it closes its
//! network connection (if any) and sends the `Session` back by value [MQTT-3.1.4-2]. Because the
//! session's mailbox travels inside it, messages routed during the hand-off are not lost.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::sync::{oneshot, Notify};

use super::{ClientId, Session};

/// How long a claim waits for the previous owner to hand the session over. The owner answers
/// from its select loop, so this only expires if that task is wedged in a socket write to a
/// client that stopped reading; the session is then dropped rather than blocking the new client.
const TAKEOVER_TIMEOUT: Duration = Duration::from_secs(10);

/// A request to the task that owns a session.
#[derive(Debug)]
pub enum Control {
    /// Give the session up: answer with it if it is persistent, `None` after ending it otherwise.
    Takeover(oneshot::Sender<Option<Session>>),
}

/// The owning task's end of its control slot. A slot, not a channel: at most one request is
/// ever sent to an owner (the claim that replaced it), and every idle connection carries one,
/// so it should cost a few bytes rather than a channel's buffers.
#[derive(Debug)]
pub struct ControlReceiver(Arc<ControlSlot>);

/// The registry's end of an owner's control slot.
#[derive(Debug)]
pub struct ControlSender(Arc<ControlSlot>);

#[derive(Debug, Default)]
struct ControlSlot {
    state: Mutex<SlotState>,
    /// Wakes the owner; a permit is kept if it is not waiting yet.
    wake: Notify,
}

#[derive(Debug, Default)]
struct SlotState {
    /// The owner ended: requests are refused (and their reply channel dropped).
    closed: bool,
    request: Option<Control>,
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
    /// Hands `request` to the owner; gives it back if the owner has ended or already holds one.
    fn send(&self, request: Control) -> Result<(), Control> {
        let mut state = self.0.state();
        if state.closed || state.request.is_some() {
            return Err(request);
        }
        state.request = Some(request);
        drop(state);
        self.0.wake.notify_one();
        Ok(())
    }
}

impl ControlReceiver {
    /// Waits for a request. Cancel-safe: a request not yet taken stays in the slot.
    pub async fn recv(&mut self) -> Control {
        loop {
            if let Some(request) = self.0.state().request.take() {
                return request;
            }
            self.0.wake.notified().await;
        }
    }
}

impl Drop for ControlReceiver {
    /// The owner is gone: later requests are refused, and one that arrived too late is dropped
    /// with its reply channel, so the claimant stops waiting at once.
    fn drop(&mut self) {
        let pending = {
            let mut state = self.0.state();
            state.closed = true;
            state.request.take()
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
}

#[derive(Debug, Default)]
pub struct Registry {
    owners: Mutex<HashMap<ClientId, Owner>>,
    next_owner: AtomicU64,
}

impl Registry {
    pub fn new_owner_id(&self) -> OwnerId {
        self.next_owner.fetch_add(1, Ordering::Relaxed)
    }

    /// Makes `owner` the owner of `client_id` and returns the session the previous owner held,
    /// if it was persistent.
    pub async fn claim(
        &self,
        client_id: &ClientId,
        owner: OwnerId,
        control: ControlSender,
    ) -> Option<Session> {
        let previous = self.lock().insert(client_id.clone(), Owner { id: owner, control });
        let previous = previous?;
        let (reply, answer) = oneshot::channel();
        // A refused request means the previous owner already ended (a clean session).
        previous.control.send(Control::Takeover(reply)).ok()?;
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
        self.lock().insert(client_id.clone(), Owner { id: owner, control });
    }

    /// Removes the registration if `owner` still holds it.
    pub fn release(&self, client_id: &ClientId, owner: OwnerId) {
        let mut owners = self.lock();
        if owners.get(client_id).is_some_and(|o| o.id == owner) {
            owners.remove(client_id);
        }
    }

    /// Number of registered sessions, online and offline.
    pub fn len(&self) -> usize {
        self.lock().len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
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
        assert!(sender.send(Control::Takeover(reply)).is_ok());
        assert!(waiting.await.unwrap());
    }

    #[tokio::test]
    async fn an_ended_owner_refuses_requests_and_drops_the_one_it_never_took() {
        let (sender, receiver) = control_slot();
        let (reply, answer) = oneshot::channel();
        assert!(sender.send(Control::Takeover(reply)).is_ok());
        drop(receiver);
        // The claimant waiting on the answer learns at once that no session comes back.
        assert!(answer.await.is_err());
        let (reply, _answer) = oneshot::channel();
        assert!(sender.send(Control::Takeover(reply)).is_err());
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
            registry.claim(&client_id, registry.new_owner_id(), second),
        )
        .await;
        assert!(matches!(previous, Ok(None)), "no wait for an owner that is gone");
        assert_eq!(registry.len(), 1);
    }
}
