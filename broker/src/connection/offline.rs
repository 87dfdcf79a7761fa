//! Sessions without a network connection: the offline task of a persistent session (with its
//! expiry and delayed will), the end of a session, shared-subscription hand-back, and
//! restoring stored sessions at start.

use std::sync::Arc;
use std::time::Duration;

use tokio::sync::mpsc;
use tokio::time::Instant;
use tracing::{debug, info, warn, Instrument};

use super::publish_will;
use crate::packet::{ProtocolVersion, Will};
use crate::router::Subscriber;
use crate::session::registry::{Control, OwnerId};
use crate::session::{Session, NEVER_EXPIRES};
use crate::storage::{Op, StoreError};
use crate::Broker;

/// Far enough away to mean "never" for a timer.
const NEVER: Duration = Duration::from_secs(100 * 365 * 86_400);

/// Keeps a persistent session alive while its client is away: QoS 1/2 messages routed to it
/// are queued (within the queue limits) until a connection with the same client id takes the
/// session over [MQTT-3.1.2-5], or the Session Expiry Interval passes [MQTT-3.1.2-23]. A
/// delayed will is published when its delay or the session ends, whichever is first, unless
/// the client returns before [MQTT-3.1.3-9]. Ends at shutdown.
pub(super) async fn run(
    broker: Arc<Broker>,
    mut session: Session,
    owner: OwnerId,
    mut control: mpsc::Receiver<Control>,
    mut will: Option<Will>,
) {
    debug!("session offline");
    let now = Instant::now();
    let expires_at = match session.expiry {
        NEVER_EXPIRES => now + NEVER,
        secs => now + Duration::from_secs(u64::from(secs)),
    };
    let will_at = will.as_ref().map_or(now + NEVER, |w| now + Duration::from_secs(u64::from(w.delay)));
    let expiry = tokio::time::sleep_until(expires_at);
    let will_timer = tokio::time::sleep_until(will_at.min(expires_at));
    tokio::pin!(expiry, will_timer);
    loop {
        tokio::select! {
            biased;
            _ = broker.shutdown.cancelled() => return,
            request = control.recv() => {
                let Some(Control::Takeover(reply)) = request else { return };
                // The client is back: a pending delayed will is not sent.
                if let Err(Some(session)) = reply.send(Some(session)) {
                    warn!("takeover abandoned; session ends");
                    end_session(&broker, session, owner);
                }
                return;
            }
            _ = &mut will_timer, if will.is_some() => {
                if let Some(will) = will.take() {
                    publish_will(&broker, &will, &session.client_id);
                }
            }
            _ = &mut expiry => {
                info!("session expired");
                if let Some(will) = will.take() {
                    publish_will(&broker, &will, &session.client_id);
                }
                end_session(&broker, session, owner);
                drop(control);
                return;
            }
            open = session.pending.absorb() => if !open { return },
        }
    }
}

/// Ends a session: its subscriptions leave the router, its registration and stored record go,
/// and anything it held from shared subscriptions goes to other members.
pub(super) fn end_session(broker: &Broker, mut session: Session, owner: OwnerId) {
    broker.router.registry.release(&session.client_id, owner);
    redistribute_shared(broker, &mut session);
    discard(broker, session);
}

/// Drops a session's subscriptions and stored record (its registration is not touched: a new
/// owner may already hold the client id).
pub(super) fn discard(broker: &Broker, session: Session) {
    broker.router.unsubscribe_all(session.subscriptions.keys(), &session.client_id);
    if let Err(e) = broker.store.apply(vec![Op::DeleteSession(session.client_id.clone())]) {
        warn!(client_id = %session.client_id, "stored session not deleted: {e}");
    }
}

/// Hands the session's unacknowledged and queued shared-subscription messages to other members
/// of their groups [MQTT-4.8.2-6]; with no other member they are dropped (and logged).
pub(super) fn redistribute_shared(broker: &Broker, session: &mut Session) {
    for delivery in session.take_shared() {
        let Some(route) = &delivery.shared else { continue };
        if !broker.router.redistribute(&delivery, route, &session.client_id) {
            debug!(share = %route.share, "no other member for an unacknowledged shared message: dropped");
        }
    }
}

/// Loads stored state at start: retained messages, and each persistent session as an offline
/// session with its subscriptions in place, so messages published before its client returns
/// are queued. The expiry of a restored session counts from the restart.
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
            record.expiry,
            broker.config.session_limits(),
        );
        for (filter, subscription) in record.subscriptions {
            let subscriber = Subscriber { mailbox: session.pending.mailbox().clone(), subscription };
            broker.router.subscribe(&filter, record.client_id.clone(), subscriber);
            session.subscriptions.insert(filter, subscription);
        }
        let owner = broker.router.registry.new_owner_id();
        let (control_tx, control) = mpsc::channel(1);
        broker.router.registry.register(&record.client_id, owner, control_tx);
        let span = tracing::info_span!("session", client_id = %record.client_id);
        broker.tasks.spawn(run(broker.clone(), session, owner, control, None).instrument(span));
    }
    if restored > 0 || !snapshot.retained.is_empty() {
        info!(sessions = restored, retained = snapshot.retained.len(), "restored stored state");
    }
    Ok(())
}
