//! Which task currently owns each client id, and the takeover hand-off.
//!
//! Every session, online or offline, is owned by exactly one task. A new connection claims the
//! client id; if another task held it, that task is asked to give the session up: it closes its
//! network connection (if any) and sends the `Session` back by value [MQTT-3.1.4-2]. Because the
//! session's mailbox travels inside it, messages routed during the hand-off are not lost.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;
use std::time::Duration;

use tokio::sync::{mpsc, oneshot};

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

/// Identifies one owning task, so a task only ever removes its own registration.
pub type OwnerId = u64;

#[derive(Debug)]
struct Owner {
    id: OwnerId,
    control: mpsc::Sender<Control>,
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
        control: mpsc::Sender<Control>,
    ) -> Option<Session> {
        let previous = self.lock().insert(client_id.clone(), Owner { id: owner, control });
        let previous = previous?;
        let (reply, answer) = oneshot::channel();
        // A closed channel means the previous owner already ended (a clean session).
        previous.control.send(Control::Takeover(reply)).await.ok()?;
        match tokio::time::timeout(TAKEOVER_TIMEOUT, answer).await {
            Ok(answer) => answer.ok().flatten(),
            Err(_) => {
                tracing::error!(%client_id, "previous owner did not hand over the session in time");
                None
            }
        }
    }

    /// Registers a session restored at start (no previous owner can exist yet).
    pub fn register(&self, client_id: &ClientId, owner: OwnerId, control: mpsc::Sender<Control>) {
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
