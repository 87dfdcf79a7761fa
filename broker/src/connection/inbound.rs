//! Handling of each packet a connected client sends.

use std::sync::Arc;

use bytestring::ByteString;
use tokio::time::Instant;
use tracing::{debug, warn};

use super::{route_or_refuse, Connection, Ending, ProtocolError};
use crate::auth::AuthStep;
use crate::message::{Delivery, Message};
use crate::metrics::{DropReason, METRICS};
use crate::packet::{
    Ack, Auth, Disconnect, Packet, PacketId, Publish, QoS, ReasonCode, RetainHandling, SubscriptionOptions,
};
use crate::router::{shared, topic, RouteOutcome, Subscriber, Subscription};
use crate::session::Session;
use crate::storage::Op;

impl Connection {
    pub(super) fn handle_packet(
        &mut self,
        session: &mut Session,
        packet: Packet,
    ) -> Result<Option<Ending>, ProtocolError> {
        let now = Instant::now();
        match packet {
            Packet::Publish(publish) => self.handle_publish(session, *publish)?,
            ack @ (Packet::PubAck(_) | Packet::PubRec(_) | Packet::PubComp(_)) => {
                if let Err(unexpected) = session.handle_ack(&ack, &mut self.out, now) {
                    debug!("{unexpected}");
                }
            }
            Packet::PubRel(ack) => self.out.push(session.handle_pubrel(ack.packet_id)),
            Packet::Subscribe { packet_id, subscription_id, filters } => {
                self.handle_subscribe(session, packet_id, subscription_id, filters)?;
                session.pump(&mut self.out, now);
            }
            Packet::Unsubscribe { packet_id, filters } => {
                self.handle_unsubscribe(session, packet_id, filters)?
            }
            Packet::PingReq => self.out.push(Packet::PingResp),
            Packet::Disconnect(disconnect) => return self.handle_disconnect(session, disconnect).map(Some),
            Packet::Auth(auth) => self.handle_auth(auth)?,
            Packet::Connect(_) => return Err(ProtocolError::SecondConnect),
            // The codec refuses server-only packets from a client.
            other => unreachable!("codec returned server-only packet {}", other.name()),
        }
        Ok(None)
    }

    fn handle_publish(&mut self, session: &mut Session, publish: Publish) -> Result<(), ProtocolError> {
        let config = &self.broker.config;
        topic::validate_topic_name(&publish.topic)?;
        topic::check_limits(&publish.topic, config.limits.max_topic_length, config.limits.max_topic_levels)?;
        if publish.retain && !config.mqtt.retain_available {
            return Err(ProtocolError::RetainNotSupported);
        }
        if publish.qos > config.maximum_qos() {
            return Err(ProtocolError::QosNotSupported);
        }
        if let Some(throttle) = &mut self.throttle {
            throttle.take(Instant::now());
        }
        // `$SYS/` and `$DLQ/` belong to the broker (`sys.rs`, `dead_letter`): what clients read
        // there must be the broker's.
        if topic::is_broker_topic(&publish.topic) {
            debug!(topic = %publish.topic, "publish under $SYS or $DLQ refused");
            self.deny_publish(session, &publish);
            return Ok(());
        }
        if !self.broker.security.may_publish(self.user(), &session.client_id, &publish.topic) {
            debug!(topic = %publish.topic, "publish denied by the ACL");
            METRICS.acl_denied[0].fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            self.deny_publish(session, &publish);
            return Ok(());
        }
        let message = Arc::new(Message::from_publish(&publish, &session.client_id));
        match (publish.qos, publish.packet_id) {
            (QoS::AtMostOnce, _) => {
                self.route(session, &message);
            }
            (QoS::AtLeastOnce, Some(id)) => {
                let outcome = self.route(session, &message);
                let reason = self.publish_reason(outcome)?;
                self.out.push(Packet::PubAck(Ack { packet_id: id, reason }));
            }
            (QoS::ExactlyOnce, Some(id)) => {
                // Routed on first receipt; a re-send before PUBREL only gets PUBREC again.
                let mut reason = ReasonCode::SUCCESS;
                if !session.inbound.contains(id) {
                    if session.inbound_unacknowledged() >= usize::from(config.mqtt.receive_maximum) {
                        return Err(ProtocolError::ReceiveMaximumExceeded);
                    }
                    let outcome = self.route(session, &message);
                    reason = self.publish_reason(outcome)?;
                    // An error reason ends the exchange: no PUBREL follows [MQTT-4.3.3-4].
                    if reason.is_success() {
                        session.handle_inbound_qos2(id);
                    }
                }
                self.out.push(Packet::PubRec(Ack { packet_id: id, reason }));
            }
            (_, None) => unreachable!("the decoder requires a packet id for QoS 1 and 2"),
        }
        Ok(())
    }

    /// The PUBACK/PUBREC reason for a routed message. A full bridge queue with `overflow =
    /// "reject"` refuses it: MQTT 5 says so with 0x97; 3.1.1 cannot refuse a PUBLISH, so the
    /// connection closes unacknowledged and the client publishes it again when it returns.
    fn publish_reason(&self, outcome: RouteOutcome) -> Result<ReasonCode, ProtocolError> {
        if outcome.rejected > 0 && !self.version.is_v5() {
            return Err(ProtocolError::BridgeQueueFull);
        }
        Ok(publish_reason(outcome))
    }

    /// A PUBLISH the ACL denies is not routed. MQTT 5 says so with 0x87 in PUBACK/PUBREC;
    /// 3.1.1 has no way to, so the flow completes as usual (as Mosquitto does).
    fn deny_publish(&mut self, session: &mut Session, publish: &Publish) {
        METRICS.dropped(DropReason::NotAuthorized, 1);
        let Some(id) = publish.packet_id else { return };
        let v5 = self.version.is_v5();
        let reason = if v5 { ReasonCode::NOT_AUTHORIZED } else { ReasonCode::SUCCESS };
        let ack = Ack { packet_id: id, reason };
        match publish.qos {
            QoS::AtLeastOnce => self.out.push(Packet::PubAck(ack)),
            _ => {
                // 3.1.1: a PUBREL follows; remember the id so it is answered [MQTT-4.3.3-2].
                if !v5 && !session.inbound.contains(id) {
                    session.handle_inbound_qos2(id);
                }
                self.out.push(Packet::PubRec(ack));
            }
        }
    }

    fn handle_subscribe(
        &mut self,
        session: &mut Session,
        packet_id: PacketId,
        subscription_id: Option<u32>,
        filters: Vec<(ByteString, SubscriptionOptions)>,
    ) -> Result<(), ProtocolError> {
        let shared = check_filters(filters.iter().map(|(filter, _)| filter))?;
        let mut reasons = Vec::with_capacity(filters.len());
        for ((filter, options), shared) in filters.into_iter().zip(shared) {
            reasons.push(self.subscribe_one(session, filter, options, subscription_id, shared)?);
        }
        // SUBACK first, then the retained messages the new subscriptions selected.
        self.out.push(Packet::SubAck { packet_id, reasons });
        self.persist_session(session);
        Ok(())
    }

    /// One SUBSCRIBE entry with a well-formed filter (`shared` for `$share/...`): its SUBACK
    /// reason code.
    fn subscribe_one(
        &mut self,
        session: &mut Session,
        filter: ByteString,
        mut options: SubscriptionOptions,
        id: Option<u32>,
        shared: bool,
    ) -> Result<ReasonCode, ProtocolError> {
        let mqtt = &self.broker.config.mqtt;
        if shared && options.no_local {
            return Err(ProtocolError::NoLocalOnSharedSubscription);
        }
        // A 3.1.1 bridge that set Mosquitto's bridge bit does not get its own publishes back:
        // No Local for it, as 3.1.1 cannot ask for it (`Codec::peer_is_bridge`).
        options.no_local |= !shared && self.codec.peer_is_bridge();
        let refusal = if shared && !mqtt.shared_subscription_available {
            Some(ReasonCode::SHARED_SUBSCRIPTIONS_NOT_SUPPORTED)
        } else if id.is_some() && !mqtt.subscription_identifiers_available {
            Some(ReasonCode::SUBSCRIPTION_IDENTIFIERS_NOT_SUPPORTED)
        } else if filter.contains(['+', '#']) && !mqtt.wildcard_subscription_available {
            Some(ReasonCode::WILDCARD_SUBSCRIPTIONS_NOT_SUPPORTED)
        } else {
            None
        };
        if let Some(reason) = refusal {
            // CONNACK told MQTT 5 clients the feature is off: using it is a protocol error,
            // answered with DISCONNECT and this code (sections 3.2.2.3.11-13). 3.1.1 clients
            // were told nothing and get a SUBACK failure.
            if self.version.is_v5() {
                return Err(ProtocolError::Unsupported(reason));
            }
            return Ok(reason);
        }
        if let Some(reason) = self.refuse_by_policy(session, &filter) {
            return Ok(reason);
        }
        options.qos = options.qos.min(self.broker.config.maximum_qos());
        let subscription = Subscription { options, id };
        let subscriber = Subscriber { mailbox: session.pending.mailbox().clone(), subscription };
        let existed = self.broker.router.subscribe(&filter, session.client_id.clone(), subscriber);
        // Retained messages: never for shared subscriptions [MQTT-3.8.4-4]; per Retain Handling
        // otherwise [MQTT-3.3.1-9..11]; always with RETAIN set [MQTT-3.3.1-8].
        let send_retained = !shared
            && match options.retain_handling {
                RetainHandling::OnSubscribe => true,
                RetainHandling::OnNewSubscribe => !existed,
                RetainHandling::Never => false,
            };
        if send_retained {
            let security = &self.broker.security;
            let username = self.user();
            let readable = |m: &Arc<Message>| security.may_read(username, &session.client_id, &m.topic);
            for message in self.broker.router.retained.matching(&filter).into_iter().filter(readable) {
                let qos = options.qos.min(message.qos);
                let mut delivery = Delivery::new(message, qos, true);
                delivery.subscription_ids.extend(id);
                session.pending.push(delivery);
            }
        }
        session.subscriptions.insert(filter, subscription);
        Ok(ReasonCode::granted(options.qos))
    }

    /// Refusals of a valid filter by limits and the ACL, each logged (the client sees the
    /// SUBACK code; 3.1.1 shows every refusal as 0x80).
    fn refuse_by_policy(&self, session: &Session, filter: &ByteString) -> Option<ReasonCode> {
        let limits = &self.broker.config.limits;
        if let Err(e) = topic::check_limits(filter, limits.max_topic_length, limits.max_topic_levels) {
            warn!(client_id = %session.client_id, %filter, "subscription refused: {e}");
            return Some(ReasonCode::TOPIC_FILTER_INVALID);
        }
        let max = limits.max_subscriptions_per_client;
        if max > 0 && session.subscriptions.len() >= max && !session.subscriptions.contains_key(filter) {
            warn!(client_id = %session.client_id, %filter, "subscription refused: limits.max_subscriptions_per_client ({max}) reached");
            return Some(ReasonCode::QUOTA_EXCEEDED);
        }
        if !self.broker.security.may_subscribe(self.user(), &session.client_id, filter) {
            debug!(%filter, "subscription denied by the ACL");
            METRICS.acl_denied[1].fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            return Some(ReasonCode::NOT_AUTHORIZED);
        }
        None
    }

    fn handle_unsubscribe(
        &mut self,
        session: &mut Session,
        packet_id: PacketId,
        filters: Vec<ByteString>,
    ) -> Result<(), ProtocolError> {
        check_filters(filters.iter())?;
        let mut reasons = Vec::with_capacity(filters.len());
        for filter in &filters {
            let existed = self.broker.router.unsubscribe(filter, &session.client_id);
            session.subscriptions.remove(filter);
            reasons.push(if existed { ReasonCode::SUCCESS } else { ReasonCode::NO_SUBSCRIPTION_EXISTED });
        }
        self.persist_session(session);
        self.out.push(Packet::UnsubAck { packet_id, reasons });
        Ok(())
    }

    /// DISCONNECT from the client; it may update the Session Expiry Interval, except from 0
    /// [MQTT-3.14.2-2].
    fn handle_disconnect(
        &mut self,
        session: &mut Session,
        disconnect: Disconnect,
    ) -> Result<Ending, ProtocolError> {
        if let Some(expiry) = disconnect.session_expiry {
            if session.expiry == 0 && expiry != 0 {
                return Err(ProtocolError::SessionExpiryAfterZero);
            }
            session.expiry = expiry;
        }
        Ok(Ending::ClientDisconnect { with_will: disconnect.reason == ReasonCode::DISCONNECT_WITH_WILL })
    }

    /// AUTH after CONNECT: re-authentication with the method the connection started with
    /// [MQTT-4.12.1-1].
    fn handle_auth(&mut self, auth: Auth) -> Result<(), ProtocolError> {
        let Some(state) = self.auth.as_mut() else { return Err(ProtocolError::UnexpectedAuth) };
        if auth.method.as_ref() != Some(&state.method) {
            return Err(ProtocolError::UnexpectedAuth);
        }
        let exchange = match (auth.reason, state.exchange.as_mut()) {
            (ReasonCode::REAUTHENTICATE, None) => {
                let authenticator =
                    self.broker.enhanced_auth(&state.method).ok_or(ProtocolError::UnexpectedAuth)?;
                state.exchange.insert(authenticator.start(&state.client_id, self.username.as_deref()))
            }
            (ReasonCode::CONTINUE_AUTHENTICATION, Some(exchange)) => exchange,
            _ => return Err(ProtocolError::UnexpectedAuth),
        };
        let method = Some(state.method.clone());
        match exchange.step(auth.data.as_ref()) {
            AuthStep::Continue(data) => {
                self.out.push(Packet::Auth(Auth {
                    reason: ReasonCode::CONTINUE_AUTHENTICATION,
                    method,
                    data,
                }));
            }
            AuthStep::Success(data) => {
                state.exchange = None;
                self.out.push(Packet::Auth(Auth { reason: ReasonCode::SUCCESS, method, data }));
            }
            AuthStep::Failure(reason) => return Err(ProtocolError::ReauthenticationFailed(reason)),
        }
        Ok(())
    }

    /// Routes a message; it is stored and handed over after the next `commit_ops`.
    fn route(&mut self, session: &Session, message: &Arc<Message>) -> RouteOutcome {
        // A full bridge queue with `overflow = "reject"` refuses it: it goes to no one, and the
        // publisher hears so (`publish_reason`).
        let mut routed = match route_or_refuse(&self.broker, message) {
            Ok(routed) => routed,
            Err(refused) => return refused,
        };
        self.ops.append(&mut routed.ops);
        // Flow control: a connected subscriber's queue is now full. Reading pauses after this
        // packet until it has room, rather than its next messages being dropped. Never for our
        // own queue: it drains only as we read this client's acks.
        let own = session.pending.mailbox();
        for mailbox in routed.full_targets().filter(|m| !Arc::ptr_eq(m, own)) {
            if !self.congested.iter().any(|m| Arc::ptr_eq(m, mailbox)) {
                debug!(subscriber = %mailbox.client_id(), "subscriber queue full: pausing this publisher");
                self.congested.push(mailbox.clone());
            }
        }
        let outcome = routed.outcome;
        self.routed.push(routed);
        outcome
    }

    /// Records a persistent session's record (its subscriptions) for the next `commit_ops`.
    pub(super) fn persist_session(&mut self, session: &Session) {
        if session.is_persistent() {
            self.ops.push(Op::PutSession(session.record(None)));
        }
    }
}

/// Checks every filter of a SUBSCRIBE or UNSUBSCRIBE before any of them applies: an empty or
/// badly formed one ([MQTT-4.7.3-1], [MQTT-4.7.1-1], [MQTT-4.7.1-2], [MQTT-4.8.2-2]) makes the
/// packet malformed, for MQTT 5 as for 3.1.1; as in Mosquitto. (SUBACK's 0x8F is for a
/// well-formed filter the server refuses.) Returns which filters are shared subscriptions.
fn check_filters<'a>(filters: impl Iterator<Item = &'a ByteString>) -> Result<Vec<bool>, ProtocolError> {
    filters
        .map(|filter| shared::check_filter(filter).map(|share| share.is_some()))
        .collect::<Result<_, _>>()
        .map_err(ProtocolError::MalformedFilter)
}

/// The PUBACK/PUBREC reason for a routed message: 0x97 when a bridge queue refused it or every
/// matching session's queue was full, else 0x10 when no subscription matched [MQTT-3.4.2.1].
fn publish_reason(outcome: RouteOutcome) -> ReasonCode {
    if outcome.rejected > 0 {
        ReasonCode::QUOTA_EXCEEDED
    } else if outcome.matched == 0 {
        ReasonCode::NO_MATCHING_SUBSCRIBERS
    } else if outcome.queued == 0 && outcome.dropped > 0 {
        ReasonCode::QUOTA_EXCEEDED
    } else {
        ReasonCode::SUCCESS
    }
}
