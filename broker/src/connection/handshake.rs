//! The CONNECT handshake: read CONNECT under the connect timeout, check it, authenticate,
//! claim (or take over) the session, answer CONNACK.

use std::time::Duration;

use bytestring::ByteString;
use tokio::io::AsyncReadExt;
use tokio::sync::mpsc;
use tracing::{info, warn};

use super::{offline, Connection};
use crate::auth::{AuthDecision, Credentials};
use crate::codec::CodecError;
use crate::packet::{Connect, ConnectReturnCode, Packet, Will};
use crate::router::topic;
use crate::session::registry::{Control, OwnerId};
use crate::session::{ClientId, Session};

/// Room for a takeover request while the owner is busy; one is ever sent per claim.
const CONTROL_QUEUE: usize = 4;

/// A connection that passed the handshake.
pub(super) struct Accepted {
    pub session: Session,
    pub will: Option<Will>,
    /// 1.5 × the client's keep-alive; `None` when the client disabled it.
    pub keep_alive: Option<Duration>,
    pub owner: OwnerId,
    pub control: mpsc::Receiver<Control>,
}

impl Connection {
    /// Runs the handshake; `None` when the connection was refused or lost (already logged, and
    /// a refusing CONNACK already sent where the spec calls for one).
    pub(super) async fn handshake(&mut self) -> Option<Accepted> {
        let timeout = self.broker.config.connect_timeout();
        let connect = match tokio::time::timeout(timeout, self.read_connect()).await {
            Err(_) => {
                info!("no CONNECT within {}s: closing", timeout.as_secs());
                return None;
            }
            Ok(Err(refusal)) => {
                self.refuse(refusal).await;
                return None;
            }
            Ok(Ok(connect)) => connect,
        };
        match self.accept(*connect).await {
            Ok(accepted) => Some(accepted),
            Err(refusal) => {
                self.refuse(refusal).await;
                None
            }
        }
    }

    async fn read_connect(&mut self) -> Result<Box<Connect>, Refusal> {
        loop {
            match self.codec.decode(&mut self.rbuf) {
                Ok(Some(Packet::Connect(connect))) => return Ok(connect),
                Ok(Some(other)) => unreachable!("the codec only yields CONNECT first, got {}", other.name()),
                Ok(None) => {}
                Err(CodecError::UnacceptableProtocolLevel(level)) => {
                    return Err(Refusal::Code(
                        ConnectReturnCode::UnacceptableProtocolVersion,
                        format!("unacceptable protocol level {level} [MQTT-3.1.2-2]"),
                    ))
                }
                Err(CodecError::IdentifierRejected) => {
                    return Err(Refusal::Code(
                        ConnectReturnCode::IdentifierRejected,
                        CodecError::IdentifierRejected.to_string(),
                    ))
                }
                Err(e) => return Err(Refusal::Close(e.to_string())),
            }
            match self.reader.read_buf(&mut self.rbuf).await {
                Ok(0) => return Err(Refusal::Close("connection closed before CONNECT".into())),
                Ok(_) => {}
                Err(e) => return Err(Refusal::Close(format!("read failed before CONNECT: {e}"))),
            }
        }
    }

    async fn accept(&mut self, connect: Connect) -> Result<Accepted, Refusal> {
        if let Some(will) = &connect.will {
            topic::validate_topic_name(&will.topic)
                .map_err(|e| Refusal::Close(format!("invalid will topic: {e} [MQTT-3.1.3-10]")))?;
        }
        let client_id = if connect.client_id.is_empty() {
            // Empty id with clean session 1: the broker names the client [MQTT-3.1.3-6].
            ClientId(ByteString::from(self.broker.assign_client_id()))
        } else {
            ClientId(connect.client_id.clone())
        };
        tracing::Span::current().record("client_id", tracing::field::display(&client_id));
        let credentials = Credentials {
            client_id: &client_id,
            username: connect.username.as_ref(),
            password: connect.password.as_ref(),
        };
        if let AuthDecision::Deny(code) = self.broker.auth.authenticate(&credentials) {
            return Err(Refusal::Code(code, "authentication failed".into()));
        }

        let owner = self.broker.router.registry.new_owner_id();
        let (control_tx, control) = mpsc::channel(CONTROL_QUEUE);
        let previous = self.broker.router.registry.claim(&client_id, owner, control_tx).await;
        let persistent = !connect.clean_session;
        let limits = self.broker.config.session_limits();
        let (mut session, session_present) = match previous {
            // Resume: same subscriptions, queue and in-flight state [MQTT-3.1.2-4].
            Some(previous) if persistent => (previous, true),
            // Clean session: whatever was stored ends now [MQTT-3.1.2-6].
            Some(previous) => {
                offline::discard(&self.broker, previous);
                (Session::new(client_id.clone(), connect.version, false, limits), false)
            }
            None => (Session::new(client_id.clone(), connect.version, persistent, limits), false),
        };
        session.version = connect.version;
        // [MQTT-3.2.2-1..3]: session present only when resuming.
        self.out.push(Packet::ConnAck { session_present, code: ConnectReturnCode::Accepted });
        info!(
            version = %connect.version,
            clean_session = connect.clean_session,
            keep_alive = connect.keep_alive,
            session_present,
            "client connected"
        );
        let keep_alive =
            (connect.keep_alive > 0).then(|| Duration::from_millis(u64::from(connect.keep_alive) * 1500));
        Ok(Accepted { session, will: connect.will, keep_alive, owner, control })
    }

    /// Logs why the handshake failed and sends the refusing CONNACK where there is one.
    async fn refuse(&mut self, refusal: Refusal) {
        match refusal {
            Refusal::Code(code, why) => {
                warn!("refusing connection: {why}");
                // [MQTT-3.2.2-4]: session present is 0 with a non-zero return code.
                self.out.push(Packet::ConnAck { session_present: false, code });
                self.flush_final().await;
            }
            Refusal::Close(why) => info!("closing before CONNECT completed: {why}"),
        }
    }
}

/// Why a handshake did not complete.
pub(super) enum Refusal {
    /// Answer with this CONNACK return code, then close [MQTT-3.2.2-5].
    Code(ConnectReturnCode, String),
    /// Close without CONNACK (malformed CONNECT, not MQTT, lost connection).
    Close(String),
}
