//! The CONNECT handshake: read CONNECT under the connect timeout, check it, authenticate
//! (password hook, or an MQTT 5 enhanced-authentication exchange), claim or take over the
//! session, answer CONNACK with the limits this broker enforces.

use std::num::NonZeroU16;

use bytestring::ByteString;
use tracing::{info, warn};

use super::{offline, AuthState, Connection};
use crate::auth::{AuthStep, Proof};
use crate::codec::CodecError;
use crate::metrics::METRICS;
use crate::packet::{Auth, ConnAck, Connect, Packet, ProtocolVersion, QoS, ReasonCode, Will};
use crate::router::topic;
use crate::session::queue::{ConnectionInfo, Identity};
use crate::session::registry::{control_slot, ControlReceiver, OwnerId};
use crate::session::{ClientId, Session};
use crate::storage::Op;

/// A connection that passed the handshake. Boxed: it holds the session for the connection's
/// life, and the connection task should not carry it inline (see `serve`).
pub(super) struct Accepted {
    pub session: Session,
    /// Boxed: most clients have none, and it is large.
    pub will: Option<Box<Will>>,
    /// The keep-alive in force, in seconds; `None` when it is 0 (disabled).
    pub keep_alive: Option<NonZeroU16>,
    /// The client's Receive Maximum.
    pub receive_maximum: u16,
    pub owner: OwnerId,
    pub control: ControlReceiver,
}

/// A CONNECT whose enhanced authentication, if it asked for one, succeeded.
pub(super) struct Authenticated {
    connect: Box<Connect>,
    /// Authentication Data for CONNACK.
    auth_data: Option<bytes::Bytes>,
    /// The user the enhanced-authentication method proved, if it names one.
    enhanced_user: Option<ByteString>,
}

/// Why a handshake did not complete.
pub(super) enum Refusal {
    /// Answer with CONNACK and this reason code, then close [MQTT-3.2.2-5].
    Code(ReasonCode, String),
    /// Close without CONNACK (malformed CONNECT, not MQTT, lost connection).
    Close(String),
}

impl Connection {
    /// Runs the handshake; `None` when the connection was refused or lost (already logged, and
    /// a refusing CONNACK already sent where the spec calls for one).
    pub(super) async fn handshake(&mut self) -> Option<Box<Accepted>> {
        let timeout = self.broker.config.connect_timeout();
        // The whole exchange, enhanced authentication included, fits in the connect timeout.
        let result = match tokio::time::timeout(timeout, self.connect_and_authenticate()).await {
            Err(_) => {
                info!("no CONNECT within {}s: closing", timeout.as_secs());
                return None;
            }
            Ok(result) => result,
        };
        let outcome = match result {
            Ok(authenticated) => self.accept(authenticated).await,
            Err(refusal) => Err(refusal),
        };
        match outcome {
            Ok(accepted) => Some(Box::new(accepted)),
            Err(refusal) => {
                self.refuse(refusal).await;
                None
            }
        }
    }

    /// Reads CONNECT and, for MQTT 5 enhanced authentication, runs the AUTH exchange.
    async fn connect_and_authenticate(&mut self) -> Result<Authenticated, Refusal> {
        let connect = match self.read_packet().await? {
            Packet::Connect(connect) => connect,
            other => unreachable!("the codec only yields CONNECT first, got {}", other.name()),
        };
        self.version = connect.version;
        // Known from here on, so that even a refusing CONNACK respects them.
        self.codec.set_client_limits(connect.max_packet_size, connect.topic_alias_maximum);
        let Some(method) = connect.auth_method.clone() else {
            return Ok(Authenticated { connect, auth_data: None, enhanced_user: None });
        };
        let Some(authenticator) = self.broker.enhanced_auth(&method).cloned() else {
            return Err(Refusal::Code(
                ReasonCode::BAD_AUTHENTICATION_METHOD,
                format!("unsupported authentication method {method:?}"),
            ));
        };
        let client_id = ClientId(connect.client_id.clone());
        let mut exchange = authenticator.start(&client_id, connect.username.as_ref());
        let mut data = connect.auth_data.clone();
        loop {
            match exchange.step(data.as_ref()) {
                AuthStep::Success(auth_data) => {
                    let enhanced_user = exchange.authenticated_user();
                    return Ok(Authenticated { connect, auth_data, enhanced_user });
                }
                AuthStep::Failure(reason) => {
                    return Err(Refusal::Code(reason, "authentication failed".into()))
                }
                AuthStep::Continue(server_data) => {
                    let challenge = Auth {
                        reason: ReasonCode::CONTINUE_AUTHENTICATION,
                        method: Some(method.clone()),
                        data: server_data,
                    };
                    self.out.push(Packet::Auth(challenge));
                    self.write_out()
                        .await
                        .map_err(|e| Refusal::Close(format!("write failed during AUTH: {e}")))?;
                    data = self.read_auth_continue(&method).await?;
                }
            }
        }
    }

    /// The client's next AUTH during the CONNECT exchange: reason 0x18, same method [MQTT-4.12.0-5].
    async fn read_auth_continue(&mut self, method: &ByteString) -> Result<Option<bytes::Bytes>, Refusal> {
        match self.read_packet().await? {
            Packet::Auth(auth)
                if auth.reason == ReasonCode::CONTINUE_AUTHENTICATION
                    && auth.method.as_ref() == Some(method) =>
            {
                Ok(auth.data)
            }
            other => Err(Refusal::Code(
                ReasonCode::PROTOCOL_ERROR,
                format!("expected AUTH 0x18 during authentication, got {} [MQTT-4.12.0-5]", other.name()),
            )),
        }
    }

    /// The next packet of the handshake.
    async fn read_packet(&mut self) -> Result<Packet, Refusal> {
        loop {
            match self.codec.decode(&mut self.rbuf) {
                Ok(Some(packet)) => {
                    METRICS.packet_received();
                    // What came with CONNECT is not ordered against other connections: the
                    // handshake may wait (authentication, takeover) and must hold nobody up.
                    self.arrival.release();
                    return Ok(packet);
                }
                Ok(None) => {}
                Err(e @ (CodecError::UnacceptableProtocolLevel(_) | CodecError::IdentifierRejected)) => {
                    return Err(Refusal::Code(e.reason_code(), e.to_string()))
                }
                Err(e) => return Err(Refusal::Close(e.to_string())),
            }
            if let Some(wait) = self.reserve_large_packet() {
                wait.await;
                continue;
            }
            match self.read_some().await {
                Ok(0) => return Err(Refusal::Close("connection closed during CONNECT".into())),
                Ok(_) => {}
                Err(e) => return Err(Refusal::Close(format!("read failed during CONNECT: {e}"))),
            }
        }
    }

    async fn accept(&mut self, authenticated: Authenticated) -> Result<Accepted, Refusal> {
        let Authenticated { connect, auth_data, enhanced_user } = authenticated;
        if !self.admission.is_admitted() {
            return Err(Refusal::Code(ReasonCode::SERVER_BUSY, "connection limit reached".into()));
        }
        let config = &self.broker.config;
        if let Some(will) = &connect.will {
            topic::validate_topic_name(&will.topic)
                .map_err(|e| Refusal::Close(format!("invalid will topic: {e} [MQTT-3.1.3-11]")))?;
            if will.qos > config.maximum_qos() {
                return Err(Refusal::Code(
                    ReasonCode::QOS_NOT_SUPPORTED,
                    "will QoS above maximum_qos".into(),
                ));
            }
            if will.retain && !config.mqtt.retain_available {
                return Err(Refusal::Code(
                    ReasonCode::RETAIN_NOT_SUPPORTED,
                    "retained will not supported".into(),
                ));
            }
        }
        let keep_alive = self.negotiate_keep_alive(&connect)?;
        // An empty id gets one assigned: 3.1.1 only with clean session, never 3.1 (the codec
        // refused the rest), MQTT 5 always, reported in CONNACK [MQTT-3.1.3-6], [MQTT-3.2.2-16].
        let assigned = connect.client_id.is_empty().then(|| ByteString::from(self.broker.assign_client_id()));
        // Copied out of the CONNECT's buffer (as is the user name below), which kept for the
        // connection's life would also keep its password and will in memory.
        let client_id = ClientId(assigned.clone().unwrap_or_else(|| ByteString::from(&*connect.client_id)));
        tracing::Span::current().record("client_id", tracing::field::display(&client_id));
        // The local sessions of bridges hold their queues: no client may take one over.
        if crate::bridge::is_bridge_session(&client_id) {
            return Err(Refusal::Code(
                ReasonCode::CLIENT_IDENTIFIER_NOT_VALID,
                format!(
                    "client identifiers starting with {} are reserved for bridges",
                    crate::bridge::SESSION_PREFIX
                ),
            ));
        }
        // Who the client is: a verified certificate wins, then an enhanced-authentication
        // method, then CONNECT's user name (checked against the password file).
        let (username, proof) = match (&self.certificate_user, &connect.auth_method) {
            (Some(user), _) => (Some(ByteString::clone(user)), Proof::Certificate),
            (None, Some(_)) => (enhanced_user.or_else(|| connect.username.clone()), Proof::Enhanced),
            (None, None) => (connect.username.clone(), Proof::None),
        };
        let allow_anonymous = self.listener.config.allows_anonymous();
        let (security, user, password) =
            (self.broker.security.clone(), username.clone(), connect.password.clone());
        let check = move || {
            let proven =
                security.authenticate(allow_anonymous, user.as_deref(), password.as_deref(), proof)?;
            Ok(proven.is_some())
        };
        // Password hashing is deliberately slow: off the async workers when there is one to do.
        let verdict = if self.broker.security.hashes_password(username.is_some(), proof) {
            tokio::task::spawn_blocking(check).await.unwrap_or(Err(ReasonCode::UNSPECIFIED_ERROR))
        } else {
            check()
        };
        // An unproven user name is anonymous: it gets no user's rights.
        let username = match verdict {
            Ok(proven) => username.filter(|_| proven).map(|name| ByteString::from(&*name)),
            Err(code) => {
                let who = username.as_deref().unwrap_or("(anonymous)");
                return Err(Refusal::Code(code, format!("authentication failed for user {who}")));
            }
        };
        // The will is published later on the client's behalf: it needs the right to publish.
        if let Some(will) = &connect.will {
            // `$SYS/` and `$DLQ/` are the broker's, for wills as for PUBLISH (`inbound.rs`).
            if topic::is_broker_topic(&will.topic) {
                return Err(Refusal::Code(
                    ReasonCode::NOT_AUTHORIZED,
                    "will topic under $SYS or $DLQ".into(),
                ));
            }
            if !self.broker.security.may_publish(username.as_deref(), &client_id, &will.topic) {
                return Err(Refusal::Code(ReasonCode::NOT_AUTHORIZED, "will topic denied by the ACL".into()));
            }
        }

        // The CONNACK but for its session-present flag, which the claim below decides. A client
        // whose Maximum Packet Size it exceeds can be sent nothing [MQTT-3.1.2-24]: it is closed
        // now, before its claim could take the session from a connected client with its id.
        let mut connack = self.connack_properties();
        connack.assigned_client_id = assigned;
        connack.server_keep_alive = keep_alive.server_keep_alive;
        connack.auth_method = connect.auth_method.clone();
        connack.auth_data = auth_data;
        let prefix = &config.mqtt.response_information_prefix;
        if connect.request_response_info && !prefix.is_empty() {
            // [MQTT-3.1.2-28]: sent only when asked for; optional, so it goes where it does not fit.
            connack.response_information = Some(ByteString::from(format!("{prefix}{client_id}")));
            if !self.codec.fits_client(&connack) {
                connack.response_information = None;
            }
        }
        if !self.codec.fits_client(&connack) {
            let max = connect.max_packet_size.unwrap_or(0);
            return Err(Refusal::Close(format!(
                "CONNACK larger than the client's Maximum Packet Size {max} [MQTT-3.1.2-24]"
            )));
        }

        let owner = self.broker.router.registry.new_owner_id();
        let (control_tx, control) = control_slot();
        let resumes = !connect.clean_start;
        let previous = self.broker.router.registry.claim(&client_id, owner, control_tx, resumes).await;
        let limits = config.session_limits();
        let (mut session, session_present) = match previous {
            // Resume: same subscriptions, queue and in-flight state [MQTT-3.1.2-4].
            Some(previous) if resumes => (previous, true),
            // Clean start: whatever was kept ends now [MQTT-3.1.2-6].
            Some(previous) => {
                offline::discard(&self.broker, previous).await;
                (Session::new(client_id.clone(), connect.version, connect.session_expiry, limits), false)
            }
            None => (Session::new(client_id.clone(), connect.version, connect.session_expiry, limits), false),
        };
        session.version = connect.version;
        session.expiry = connect.session_expiry;
        session.dead_letter = self.broker.dead_letters.policy();
        session.pending.mailbox().set_identity(Identity {
            username: username.clone(),
            connection: Some(ConnectionInfo {
                protocol: connect.version,
                peer: self.peer,
                listener: self.listener.config.bind,
                keep_alive: keep_alive.seconds,
                connected_at: std::time::SystemTime::now(),
            }),
        });
        self.username = username.map(Box::new);
        session.pending.mailbox().set_persistent(session.is_persistent());
        self.broker.router.registry.set_mailbox(&client_id, owner, session.pending.mailbox());
        if session.is_persistent() {
            // Stored before CONNACK: a session the client was told exists survives a crash.
            if let Err(e) = self.broker.store.commit(vec![Op::PutSession(session.record(None))]).await {
                // The registration goes with the connection; the session state is kept offline.
                return Err(Refusal::Code(
                    ReasonCode::SERVER_UNAVAILABLE,
                    format!("cannot store the session: {e}"),
                ));
            }
        }
        // [MQTT-3.2.2-1..3]: session present only when resuming. MQTT 3.1's CONNACK has no such
        // flag (the byte is reserved, 0), though its sessions resume all the same.
        connack.session_present = session_present && connect.version != ProtocolVersion::V31;
        self.out.push(Packet::ConnAck(Box::new(connack)));
        info!(
            version = %connect.version,
            clean_start = connect.clean_start,
            session_expiry = connect.session_expiry,
            keep_alive = keep_alive.seconds,
            session_present,
            "client connected"
        );
        // Re-authentication must use the method of the CONNECT (section 4.12.1).
        self.auth = connect.auth_method.map(|method| {
            Box::new(AuthState { method, client_id: session.client_id.clone(), exchange: None })
        });
        Ok(Accepted {
            session,
            will: connect.will.map(Box::new),
            keep_alive: NonZeroU16::new(keep_alive.seconds),
            receive_maximum: connect.receive_maximum,
            owner,
            control,
        })
    }

    /// The CONNACK of an accepted connection: what this broker supports and enforces, all
    /// from config [MQTT-3.2.2].
    fn connack_properties(&self) -> ConnAck {
        let mqtt = &self.broker.config.mqtt;
        let maximum_qos = self.broker.config.maximum_qos();
        ConnAck {
            reason: ReasonCode::SUCCESS,
            receive_maximum: Some(mqtt.receive_maximum),
            maximum_qos: (maximum_qos < QoS::ExactlyOnce).then_some(maximum_qos),
            retain_available: mqtt.retain_available,
            maximum_packet_size: Some(mqtt.max_packet_size),
            topic_alias_maximum: mqtt.topic_alias_maximum,
            wildcard_subscription_available: mqtt.wildcard_subscription_available,
            subscription_identifiers_available: mqtt.subscription_identifiers_available,
            shared_subscription_available: mqtt.shared_subscription_available,
            ..ConnAck::default()
        }
    }

    /// Applies `mqtt.max_keep_alive_secs`: MQTT 5 clients are told the value in force as Server
    /// Keep Alive [MQTT-3.2.2-21]; 3.1.1 clients asking for more are refused (0x02).
    fn negotiate_keep_alive(&self, connect: &Connect) -> Result<KeepAlive, Refusal> {
        let cap = self.broker.config.mqtt.max_keep_alive_secs;
        let asked = connect.keep_alive;
        if cap == 0 || (asked != 0 && asked <= cap) {
            return Ok(KeepAlive { seconds: asked, server_keep_alive: None });
        }
        if connect.version.is_v5() {
            return Ok(KeepAlive { seconds: cap, server_keep_alive: Some(cap) });
        }
        if asked == 0 {
            return Ok(KeepAlive { seconds: 0, server_keep_alive: None });
        }
        Err(Refusal::Code(
            ReasonCode::CLIENT_IDENTIFIER_NOT_VALID,
            format!("keep-alive {asked}s above max_keep_alive_secs {cap}"),
        ))
    }

    /// Logs why the handshake failed and sends the refusing CONNACK where there is one.
    async fn refuse(&mut self, refusal: Refusal) {
        self.arrival.close();
        match refusal {
            Refusal::Code(reason, why) => {
                warn!("refusing connection ({reason}): {why}");
                METRICS.connect_refused(reason);
                // [MQTT-3.2.2-6]: session present 0 with a non-zero reason code.
                let mut refusal = ConnAck::refuse(reason);
                if self.broker.config.mqtt.reason_strings {
                    refusal.reason_string = Some(ByteString::from(why));
                }
                self.out.push(Packet::ConnAck(Box::new(refusal)));
                self.flush_final().await;
                self.drain_input().await;
            }
            Refusal::Close(why) => info!("closing before CONNECT completed: {why}"),
        }
    }
}

/// The keep-alive in force for a connection.
struct KeepAlive {
    seconds: u16,
    /// Sent in CONNACK when it differs from what an MQTT 5 client asked for.
    server_keep_alive: Option<u16>,
}
