//! Sessions without a network connection: the offline task of a persistent session (with its
//! expiry and delayed will), the end of a session, shared-subscription hand-back, and
//! restoring stored sessions at start.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use tokio::time::Instant;
use tracing::{debug, info, warn};

use super::{publish_will, route_now};
use crate::message::{Delivery, Message, SharedRoute};
use crate::metrics::METRICS;
use crate::packet::{QoS, Will};
use crate::router::Subscriber;
use crate::session::qos::{derived_id, Outbound};
use crate::session::queue::Identity;
use crate::session::registry::{control_slot, Control, ControlReceiver, OwnerId};
use crate::session::{ClientId, Session, NEVER_EXPIRES};
use crate::storage::{unix_ms, DeliveryState, Op, StoreError, StoredSession, WillRecord};
use crate::Broker;

/// Far enough away to mean "never" for a timer.
const NEVER: Duration = Duration::from_secs(100 * 365 * 86_400);

/// What an offline session waits for: its delayed will (boxed: most sessions have none, and
/// every offline session's task holds the field) and its expiry.
pub(super) struct Offline {
    will: Option<(Box<Will>, Instant)>,
    expires_at: Instant,
}

/// An offline session's task, handed over in one piece: an async fn keeps each of its
/// arguments twice in its state, which every offline session carries.
pub(super) struct OfflineTask {
    pub broker: Arc<Broker>,
    pub session: Session,
    pub owner: OwnerId,
    pub control: ControlReceiver,
    pub offline: Offline,
}

impl OfflineTask {
    /// Runs the session offline in a task of its own. No span: it would cost every offline
    /// session a few hundred bytes in the log subscriber; events name the client themselves.
    pub fn spawn(self) {
        let tasks = self.broker.tasks.clone();
        tasks.spawn(run(Box::new(self)));
    }
}

/// Stores that a persistent session's client left (its expiry counts from now, also across a
/// restart) and its delayed will, before the connection is closed: a crash right after the
/// close must not lose either.
pub(super) async fn store_offline(broker: &Broker, session: &mut Session, will: Option<Will>) -> Offline {
    let now_ms = unix_ms();
    session.journal_derived_in_flight();
    let mut ops = std::mem::take(&mut session.journal);
    ops.push(Op::PutSession(session.record(Some(now_ms))));
    let will = will.map(|will| {
        let delay = Duration::from_secs(u64::from(will.delay));
        let record = WillRecord {
            client_id: session.client_id.clone(),
            will: will.clone(),
            publish_at_unix_ms: now_ms + delay.as_millis() as u64,
        };
        ops.push(Op::PutWill(record));
        (Box::new(will), Instant::now() + delay)
    });
    if let Err(e) = broker.store.commit(ops).await {
        warn!("offline session state not stored: {e}");
    }
    Offline { will, expires_at: expiry_deadline(session.expiry, Duration::ZERO) }
}

fn expiry_deadline(expiry: u32, elapsed: Duration) -> Instant {
    match expiry {
        NEVER_EXPIRES => Instant::now() + NEVER,
        secs => Instant::now() + Duration::from_secs(u64::from(secs)).saturating_sub(elapsed),
    }
}

/// Keeps a persistent session alive while its client is away: QoS 1/2 messages routed to it
/// are queued (within the queue limits) until a connection with the same client id takes the
/// session over [MQTT-3.1.2-5], or the Session Expiry Interval passes [MQTT-3.1.2-23]. A
/// delayed will is published when its delay or the session ends, whichever is first, unless
/// the client returns before [MQTT-3.1.3-9]. Ends at shutdown (told through the control slot).
async fn run(task: Box<OfflineTask>) {
    let OfflineTask { broker, mut session, owner, mut control, offline } = *task;
    debug!(client_id = %session.client_id, "session offline");
    let mut roster =
        broker.router.registry.go_offline(&session.client_id, broker.config.limits.max_offline_sessions);
    let Offline { mut will, expires_at } = offline;
    // Expiry, or eviction (too many sessions offline, this one away longest) ends it alike.
    let evicted = &mut roster.evicted;
    let expiry = async move {
        tokio::select! {
            () = tokio::time::sleep_until(expires_at) => {}
            Ok(()) = evicted => {}
        }
    };
    // Boxed, and only for a delayed will: a timer is 112 bytes in every offline session.
    let mut will_timer =
        will.as_ref().map(|(_, at)| Box::pin(tokio::time::sleep_until((*at).min(expires_at))));
    tokio::pin!(expiry);
    loop {
        tokio::select! {
            biased;
            request = control.recv() => {
                let takeover = match request {
                    Control::Takeover(takeover) => takeover,
                    Control::Shutdown => return,
                    // No deadline is set while offline; no client to disconnect.
                    Control::KeepAliveTimeout | Control::Kick { discard: false } => continue,
                    Control::Kick { discard: true } => {
                        info!(client_id = %session.client_id, "session discarded by an administrator");
                        Box::pin(end_offline(&broker, session, owner, will.take().map(|(w, _)| *w))).await;
                        return;
                    }
                };
                if Instant::now() >= expires_at {
                    // The expiry passed at the same moment: the session is over, not resumed.
                    let _ = takeover.reply.send(None);
                    Box::pin(expire(&broker, session, owner, will.take().map(|(w, _)| *w))).await;
                    return;
                }
                // The client is back: a pending delayed will is not sent [MQTT-3.1.3-9], unless
                // the new connection starts clean, which ends the session: then it goes now.
                if let Some((will, _)) = will.take() {
                    end_will(&broker, &session.client_id, *will, !takeover.resumes).await;
                }
                if let Err(Some(session)) = takeover.reply.send(Some(session)) {
                    warn!(client_id = %session.client_id, "takeover abandoned; session ends");
                    end_session(&broker, session, owner).await;
                }
                return;
            }
            () = std::future::poll_fn(|cx| match &mut will_timer {
                Some(timer) => std::future::Future::poll(timer.as_mut(), cx),
                None => std::task::Poll::Pending,
            }), if will_timer.is_some() => {
                will_timer = None;
                if let Some((will, _)) = will.take() {
                    end_will(&broker, &session.client_id, *will, true).await;
                }
            }
            _ = &mut expiry => {
                Box::pin(expire(&broker, session, owner, will.take().map(|(w, _)| *w))).await;
                drop(control);
                return;
            }

            () = session.pending.absorb() => {}
        }
    }
}

/// Ends a delayed will that was waiting: published if `publish`, and no longer stored.
async fn end_will(broker: &Broker, client_id: &ClientId, will: Will, publish: bool) {
    if publish {
        publish_will(broker, &will, client_id).await;
    }
    if let Err(e) = broker.store.commit(vec![Op::DeleteWill(client_id.clone())]).await {
        warn!(%client_id, "stored will not deleted: {e}");
    }
}

/// The Session Expiry Interval passed: what it still held goes to the dead letters (when
/// configured), then it ends like a discarded one.
async fn expire(broker: &Broker, mut session: Session, owner: OwnerId, will: Option<Will>) {
    info!(client_id = %session.client_id, "session expired");
    METRICS.sessions_expired.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    session.note_expired();
    broker.dead_letters.publish_lost(broker, &mut session.lost);
    end_offline(broker, session, owner, will).await;
}

/// Ends an offline session (expired or discarded): a pending will goes now [MQTT-3.1.3-9],
/// then the session ends with everything stored for it.
async fn end_offline(broker: &Broker, session: Session, owner: OwnerId, will: Option<Will>) {
    if let Some(will) = will {
        publish_will(broker, &will, &session.client_id).await;
    }
    end_session(broker, session, owner).await;
}

/// Ends a session: anything it held from shared subscriptions goes to other members, its
/// subscriptions leave the router, its stored state goes, and only then its registration. In
/// that order a connection claiming the client id meanwhile waits for the cleanup (its takeover
/// request is refused when the owner's control slot drops), so the cleanup cannot remove the
/// new session's subscriptions or stored record, and the admin API never lists a session as gone
/// while its subscriptions still route.
pub(super) async fn end_session(broker: &Broker, mut session: Session, owner: OwnerId) {
    redistribute_shared(broker, &mut session).await;
    let client_id = session.client_id.clone();
    discard(broker, session).await;
    broker.router.registry.release(&client_id, owner);
}

/// Drops a session's subscriptions and stored state (its registration is not touched: a new
/// owner may already hold the client id).
pub(super) async fn discard(broker: &Broker, mut session: Session) {
    broker.router.unsubscribe_all(session.subscriptions.keys(), &session.client_id);
    session.pending.mailbox().set_persistent(false);
    session.drain_stored();
    let ops = std::mem::take(&mut session.journal);
    if let Err(e) = broker.store.commit(ops).await {
        warn!(client_id = %session.client_id, "stored session not deleted: {e}");
    }
}

/// Hands the session's unacknowledged and queued shared-subscription messages to other members
/// of their groups [MQTT-4.8.2-6]; with no other member they are dropped (and logged).
pub(super) async fn redistribute_shared(broker: &Broker, session: &mut Session) {
    let taken = session.take_shared();
    let released = std::mem::take(&mut session.journal);
    let mut ops = released;
    let mut handed = Vec::new();
    for delivery in taken {
        let Some(route) = &delivery.shared else { continue };
        let mut routed = broker.router.redistribute(
            &delivery,
            route,
            &session.client_id,
            &broker.message_ids,
            broker.security.as_ref(),
        );
        if routed.outcome.queued == 0 {
            debug!(share = %route.share, "no other member for an unacknowledged shared message: dropped");
        }
        ops.append(&mut routed.ops);
        handed.push(routed);
    }
    if let Err(e) = broker.store.commit(ops).await {
        warn!("shared messages not handed over: {e}");
        return;
    }
    for routed in handed {
        // Already stored above: hand over only.
        let _ = route_now(broker, routed).await;
    }
}

/// Loads stored state at start: retained messages, and each persistent session as an offline
/// session with its subscriptions, queue, in-flight window, inbound QoS 2 ids and delayed will,
/// so it resumes exactly where it was. Stored messages no delivery references any more (left by
/// a crash between two writes) are deleted.
pub async fn restore(broker: &Arc<Broker>) -> Result<(), StoreError> {
    let snapshot = broker.store.load()?;
    for stored in snapshot.retained {
        broker.router.retained.apply(&Arc::new(stored.into_message()));
    }
    let max_id = snapshot.messages.keys().next_back().copied().unwrap_or(0);
    broker.message_ids.fetch_max(max_id + 1, std::sync::atomic::Ordering::Relaxed);
    let messages: BTreeMap<u64, Arc<Message>> =
        snapshot.messages.into_iter().map(|(id, m)| (id, Arc::new(m.into_message()))).collect();
    let mut refs: BTreeMap<u64, usize> = BTreeMap::new();
    let mut sweep = Vec::new();
    let mut restored = snapshot.sessions.len();
    for stored in snapshot.sessions {
        let client_id = &stored.record.client_id;
        if crate::bridge::is_bridge_session(client_id)
            && !crate::bridge::is_configured(&broker.config, client_id)
        {
            // Its bridge was removed from the configuration: its queue would grow forever.
            warn!(%client_id, queued = stored.deliveries.len(), "bridge no longer configured: its stored queue is deleted");
            sweep.push(Op::DeleteSession(client_id.clone()));
            restored -= 1;
            continue;
        }
        for (_, d) in &stored.deliveries {
            if d.message != 0 && !matches!(d.state, DeliveryState::AwaitingPubComp(_)) {
                *refs.entry(d.message).or_default() += 1;
            }
        }
        restore_session(broker, stored, &messages, &mut sweep);
    }
    for (id, message) in &messages {
        match refs.get(id) {
            Some(n) => message.durable.restore(*id, *n),
            None => sweep.push(Op::DeleteMessage(*id)),
        }
    }
    if !sweep.is_empty() {
        info!(records = sweep.len(), "deleting stored records nothing references");
        broker.store.commit(sweep).await?;
    }
    if restored > 0 {
        info!(sessions = restored, messages = messages.len(), "restored stored sessions");
    }
    Ok(())
}

fn restore_session(
    broker: &Arc<Broker>,
    stored: StoredSession,
    messages: &BTreeMap<u64, Arc<Message>>,
    sweep: &mut Vec<Op>,
) {
    let record = stored.record;
    let client_id = record.client_id.clone();
    // A bridge's session has the bridge's window and queue budget.
    let limits = crate::bridge::limits_of(&broker.config, &client_id)
        .unwrap_or_else(|| broker.config.session_limits());
    let mut session = Session::new(client_id.clone(), record.version, record.expiry, limits);
    // A bridge's losses are its own overflow policy's business (its task drains no `lost`).
    if !crate::bridge::is_bridge_session(&client_id) {
        session.dead_letter = broker.dead_letters.policy();
    }
    session.pending.mailbox().set_persistent(true);
    session.pending.mailbox().set_identity(Identity { username: record.username, connection: None });
    for (filter, subscription) in record.subscriptions {
        let subscriber = Subscriber { mailbox: session.pending.mailbox().clone(), subscription };
        broker.router.subscribe(&filter, client_id.clone(), subscriber);
        session.subscriptions.insert(filter, subscription);
    }
    // A QoS 1 delivery sent under its derived id has no stored in-flight state (`derived_id`).
    // Deliveries leave in sequence order, so the QoS 1 ones before the last delivery whose
    // in-flight state was stored were sent: they go back into the window in their place, under
    // their derived ids.
    let last_in_flight = stored
        .deliveries
        .iter()
        .filter(|(_, d)| !matches!(d.state, DeliveryState::Queued))
        .map(|(seq, _)| *seq)
        .max();
    let mut queued_qos1 = Vec::new();
    let mut queued_qos2_first = None;
    for (seq, d) in stored.deliveries {
        session.pending.mailbox().resume_seq_after(seq);
        let message = messages.get(&d.message).cloned();
        let delivery = message.map(|message| Delivery {
            message,
            qos: d.qos,
            retain: d.retain,
            subscription_ids: d.subscription_ids.clone(),
            shared: d.shared.clone().map(|share| Box::new(SharedRoute { share })),
            seq: Some(seq),
        });
        match (d.state, delivery) {
            (DeliveryState::AwaitingPubComp(id), _) => {
                session.outbound.restore(id, Outbound::AwaitingPubComp { seq: Some(seq) })
            }
            (DeliveryState::Queued, Some(delivery))
                if delivery.qos == QoS::AtLeastOnce && last_in_flight.is_some_and(|last| seq < last) =>
            {
                session.outbound.restore(derived_id(seq), Outbound::AwaitingPubAck(delivery))
            }
            (DeliveryState::Queued, Some(delivery)) => {
                if delivery.qos == QoS::AtLeastOnce {
                    queued_qos1.push(seq);
                } else {
                    queued_qos2_first.get_or_insert(seq);
                }
                session.pending.restore(delivery)
            }
            (DeliveryState::AwaitingPubAck(id), Some(delivery)) => {
                session.outbound.restore(id, Outbound::AwaitingPubAck(delivery))
            }
            (DeliveryState::AwaitingPubRec(id), Some(delivery)) => {
                session.outbound.restore(id, Outbound::AwaitingPubRec(delivery))
            }
            (_, None) => {
                warn!(%client_id, seq, "stored delivery references a missing message: deleted");
                sweep.push(Op::DeleteDelivery { client: client_id.clone(), seq });
            }
        }
    }
    // A session that was connected when the broker stopped (a crash: a clean stop stores the
    // window, `journal_derived_in_flight`) may have had more QoS 1 deliveries in flight under
    // derived ids: the next ones in order, up to the window's capacity, and none after a QoS 2
    // one never sent. They go DUP=1 [MQTT-3.3.1-1].
    if record.disconnected_unix_ms.is_none() {
        let room = session.outbound.capacity().saturating_sub(session.outbound.len());
        let maybe_sent =
            queued_qos1.iter().take_while(|seq| queued_qos2_first.is_none_or(|q2| **seq < q2)).take(room);
        if let Some(last) = maybe_sent.last() {
            session.outbound.set_maybe_sent_upto(*last);
        }
    }
    for packet_id in stored.inbound {
        session.inbound.handle_publish(packet_id);
    }
    // Time already spent offline counts against the expiry and the will delay.
    let offline_for =
        Duration::from_millis(unix_ms().saturating_sub(record.disconnected_unix_ms.unwrap_or_else(unix_ms)));
    let expires_at = expiry_deadline(record.expiry, offline_for);
    let will = stored.will.map(|w| {
        let wait = Duration::from_millis(w.publish_at_unix_ms.saturating_sub(unix_ms()));
        (Box::new(w.will), Instant::now() + wait)
    });
    let owner = broker.router.registry.new_owner_id();
    let (control_tx, control) = control_slot();
    broker.router.registry.register(&client_id, owner, control_tx);
    broker.router.registry.set_mailbox(&client_id, owner, session.pending.mailbox());
    // A session that expired while the broker was down ends at once in its task (will first),
    // before any client can claim it: the registration is taken only after this function.
    OfflineTask { broker: broker.clone(), session, owner, control, offline: Offline { will, expires_at } }
        .spawn();
}
