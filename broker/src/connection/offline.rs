//! Sessions without a network connection: the offline task of a persistent session, the end of
//! a session, and restoring stored sessions at start.

use std::sync::Arc;

use tokio::sync::mpsc;
use tracing::{debug, warn, Instrument};

use crate::packet::ProtocolVersion;
use crate::router::Subscriber;
use crate::session::registry::{Control, OwnerId};
use crate::session::Session;
use crate::storage::{Op, StoreError};
use crate::Broker;

/// Keeps a persistent session alive while its client is away: QoS 1/2 messages routed to it
/// are queued (within the queue limits) until a connection with the same client id takes the
/// session over [MQTT-3.1.2-5]. Ends at shutdown.
pub(super) async fn run(
    broker: Arc<Broker>,
    mut session: Session,
    owner: OwnerId,
    mut control: mpsc::Receiver<Control>,
) {
    debug!("session offline");
    loop {
        tokio::select! {
            biased;
            _ = broker.shutdown.cancelled() => return,
            request = control.recv() => {
                let Some(Control::Takeover(reply)) = request else { return };
                if let Err(Some(session)) = reply.send(Some(session)) {
                    // The claimant gave up waiting; the session stays in this task's hands.
                    warn!("takeover abandoned; session ends");
                    end_session(&broker, session, owner);
                }
                return;
            }
            open = session.pending.absorb() => if !open { return },
        }
    }
}

/// Ends a session: its subscriptions leave the router, its registration and stored record go.
pub(super) fn end_session(broker: &Broker, session: Session, owner: OwnerId) {
    broker.router.registry.release(&session.client_id, owner);
    discard(broker, session);
}

/// Drops a session's subscriptions and stored record (its registration is not touched: a new
/// owner may already hold the client id).
pub(super) fn discard(broker: &Broker, session: Session) {
    broker.router.unsubscribe_all(session.subscriptions.keys(), &session.client_id);
    if session.persistent {
        if let Err(e) = broker.store.apply(vec![Op::DeleteSession(session.client_id.clone())]) {
            warn!(client_id = %session.client_id, "stored session not deleted: {e}");
        }
    }
}

/// Loads stored state at start: retained messages, and each persistent session as an offline
/// session with its subscriptions in place, so messages published before its client returns
/// are queued.
pub fn restore(broker: &Arc<Broker>) -> Result<(), StoreError> {
    let snapshot = broker.store.load()?;
    for message in &snapshot.retained {
        broker.router.retained.apply(message);
    }
    let restored = snapshot.sessions.len();
    for record in snapshot.sessions {
        // The stored record does not keep the protocol level; the next CONNECT sets it.
        let mut session = Session::new(
            record.client_id.clone(),
            ProtocolVersion::V311,
            true,
            broker.config.session_limits(),
        );
        for (filter, qos) in record.subscriptions {
            let subscriber = Subscriber { mailbox: session.pending.mailbox().clone(), qos };
            broker.router.subscribe(&filter, record.client_id.clone(), subscriber);
            session.subscriptions.insert(filter, qos);
        }
        let owner = broker.router.registry.new_owner_id();
        let (control_tx, control) = mpsc::channel(1);
        broker.router.registry.register(&record.client_id, owner, control_tx);
        let span = tracing::info_span!("session", client_id = %record.client_id);
        broker.tasks.spawn(run(broker.clone(), session, owner, control).instrument(span));
    }
    if restored > 0 || !snapshot.retained.is_empty() {
        tracing::info!(sessions = restored, retained = snapshot.retained.len(), "restored stored state");
    }
    Ok(())
}
