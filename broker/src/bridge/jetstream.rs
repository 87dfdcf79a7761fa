//! One connection of a JetStream sink (`kind = "jetstream"`) to a NATS server: INFO, CONNECT
//! and PING/PONG, a subscription to a reply inbox, then one loop that publishes the bridge
//! session's deliveries with HPUB and completes each one on its PubAck.
//!
//! The queue is the bridge session's, exactly as for an MQTT upstream (`mod.rs`): a local
//! publish is acknowledged once its delivery record is stored; the record is deleted only when
//! the stream's PubAck comes. Each message is sent with `Nats-Msg-Id: <client id>:<queue key>`
//! (`keys.rs` keeps keys unique across restarts) and the reply subject `<inbox>.<queue key>`,
//! so a PubAck names the message it acknowledges, whatever packet id the window reuses. What a
//! crash or an ack timeout makes us send twice carries the same Msg-Id, and the stream's
//! duplicate window drops it: at-least-once to the stream, duplicates removed within that
//! window.
//!
//! Forwarded at QoS 1 at most (the window's packet ids only pair PubAcks with deliveries);
//! QoS 0 deliveries are plain publishes without a reply. A PubAck with an error is final
//! (counted as refused, logged, deleted) except status 503 (no stream for the subject yet,
//! JetStream unavailable): the message stays and is sent again after `ack_timeout_ms`.
//!
//! The connected phase is `lane.rs`'s, as for an MQTT upstream: liveness (PING after half the
//! keep-alive of silence, the link is dead after 1.5 × keep-alive without input), `max_rate`,
//! and the stop of a reload.

use std::collections::VecDeque;
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use tokio::net::TcpStream;
use tokio::time::Instant;
use tracing::{debug, info, warn};

use super::lane::{self, Buffers, Lane, Wire};
use super::link::ConnectError;
use super::nats::{self, ServerOp};
use super::stats::{BridgeDrop, BridgeStats};
use super::{keys, subject, Bridge};
use crate::config::bridge::BridgeConfig;
use crate::config::jetstream::JetStreamConfig;
use crate::message::Forward;
use crate::packet::{Ack, Packet, PacketId, QoS};
use crate::session::queue::Mailbox;

/// Used when a server announces no `max_payload` (its default).
const DEFAULT_MAX_PAYLOAD: usize = 1024 * 1024;

/// The subscription id of the reply inbox.
const INBOX_SID: u64 = 1;

/// A publish waiting for its PubAck.
struct Awaiting {
    packet_id: PacketId,
    /// Last token of the reply subject: the queue key.
    token: String,
    subject: String,
    msg_id: Option<String>,
    payload: Bytes,
    sent: Instant,
}

/// The NATS side of a link to a JetStream sink.
pub(super) struct JetStream {
    /// Session output since the last write, encoded after the commit.
    out: Vec<Packet>,
    /// `_INBOX.<random>`: replies come to `<inbox>.<token>`.
    inbox: String,
    /// In send order: the front is the oldest publish.
    awaiting: VecDeque<Awaiting>,
    max_payload: usize,
    /// No PubAck within this: the publish goes again.
    ack_timeout: Duration,
    /// A 503 was logged on this link (once per link, not per message).
    no_stream_logged: bool,
}

/// Start: takes this run's range of queue keys (`keys.rs`) into the bridge's settings.
pub(super) fn reserve_keys(broker: &crate::Config, bridge: &mut BridgeConfig) -> crate::Result<()> {
    let floor = keys::reserve(&broker.storage.dir, bridge)
        .map_err(|source| crate::Error::BridgeKeys { name: bridge.name.clone(), source })?;
    bridge.jetstream.get_or_insert_with(JetStreamConfig::default).key_floor = floor;
    Ok(())
}

/// Start: reads the NKEY seed file, if any, into the bridge's settings; a file that cannot be
/// read or holds no user seed stops the broker, naming it.
pub(super) fn load_nkey(bridge: &mut BridgeConfig) -> crate::Result<()> {
    let name = bridge.name.clone();
    let Some(js) = bridge.jetstream.as_mut() else { return Ok(()) };
    let Some(path) = js.nkey_seed_file.clone() else { return Ok(()) };
    let text = std::fs::read_to_string(&path).map_err(|e| crate::Error::BridgeNkey {
        name: name.clone(),
        path: path.clone(),
        reason: e.to_string(),
    })?;
    let seed = crate::auth::nkey::UserSeed::parse(&text).map_err(|e| crate::Error::BridgeNkey {
        name,
        path,
        reason: e.to_string(),
    })?;
    js.nkey = Some(seed);
    Ok(())
}

/// New deliveries to the bridge's session are keyed from this run's floor on.
pub(super) fn apply_key_floor(bridge: &BridgeConfig, mailbox: &Mailbox) {
    if let Some(floor) = bridge.jetstream.as_ref().map(|j| j.key_floor).filter(|f| *f > 0) {
        mailbox.resume_seq_after(floor - 1);
    }
}

/// A restored session took deliveries (under its old key counter) before its bridge task
/// opens it: the floor is applied to its mailbox as soon as the restore has registered it.
pub(super) fn apply_key_floor_to_restored(broker: &crate::Broker, bridge: &BridgeConfig) {
    if bridge.jetstream.is_none() {
        return;
    }
    let client_id = format!("{}{}", super::SESSION_PREFIX, bridge.name);
    for mailbox in broker.router.registry.sessions() {
        if &*mailbox.client_id().0 == client_id.as_str() {
            apply_key_floor(bridge, &mailbox);
        }
    }
}

/// The server's first operation, INFO, read from the plain TCP connection.
async fn read_info(tcp: &mut TcpStream) -> Result<nats::Info, ConnectError> {
    let op = lane::read_until(tcp, &mut BytesMut::new(), |rbuf| decode(rbuf, DEFAULT_MAX_PAYLOAD)).await?;
    match op {
        Some(ServerOp::Info(json)) => {
            serde_json::from_str(&json).map_err(|e| ConnectError::Protocol(format!("unreadable INFO: {e}")))
        }
        Some(other) => Err(ConnectError::Protocol(format!("{other:?} before INFO"))),
        None => Err(ConnectError::Protocol("connection closed before INFO".into())),
    }
}

/// A whole server operation from `rbuf`, if there is one (handshake).
fn decode(rbuf: &mut BytesMut, max_payload: usize) -> Result<Option<ServerOp>, ConnectError> {
    nats::decode(rbuf, max_payload).map_err(|e| ConnectError::Protocol(e.to_string()))
}

impl Lane<JetStream> {
    /// Connects to `address`: INFO, CONNECT, PING answered by PONG (all within
    /// `connect_timeout_secs`), SUB to the reply inbox, then re-sends the unacknowledged window.
    pub(super) async fn connect(bridge: &mut Bridge, address: &str) -> Result<Self, ConnectError> {
        let mut lane = lane::attempt(bridge, Self::handshake(bridge, address)).await?;
        lane.start(bridge);
        Ok(lane)
    }

    async fn handshake(bridge: &Bridge, address: &str) -> Result<Self, ConnectError> {
        let config = &bridge.config;
        let mut tcp = lane::connect_tcp(address, config.keep_alive()).await?;
        // The server speaks first, with INFO, in plain text also when TLS follows; then it
        // waits for the client (TLS ClientHello, or CONNECT).
        let info = read_info(&mut tcp).await?;
        if info.tls_required && bridge.tls.is_none() {
            return Err(ConnectError::Protocol(
                "the NATS server requires TLS: give the bridge a tls table".into(),
            ));
        }
        let socket = lane::secure(bridge, address, tcp).await?;
        let random = crate::auth::scram::random_bytes::<12>()
            .map_err(|e| ConnectError::Io(std::io::Error::other(e)))?;
        let inbox = format!("_INBOX.{}", random.iter().map(|b| format!("{b:02x}")).collect::<String>());
        let wire = JetStream {
            out: Vec::new(),
            inbox,
            awaiting: VecDeque::new(),
            max_payload: DEFAULT_MAX_PAYLOAD,
            ack_timeout: config.jetstream.as_ref().map_or(Duration::from_secs(5), |j| j.ack_timeout()),
            no_stream_logged: false,
        };
        let mut link = Lane::new(socket, wire, config);
        if !info.headers {
            return Err(ConnectError::Protocol(
                "the server does not take headers (NATS 2.2 or later needed)".into(),
            ));
        }
        if info.max_payload > 0 {
            link.wire.max_payload = info.max_payload;
        }
        let name = config.upstream_client_id();
        let token = config.jetstream.as_ref().and_then(|j| j.token.as_deref());
        // NKEY: the server's nonce signed with the seed.
        let nkey = match config.jetstream.as_ref().and_then(|j| j.nkey.as_ref()) {
            Some(seed) => {
                let nonce = info.nonce.as_deref().ok_or_else(|| {
                    ConnectError::Protocol("the NATS server sent no nonce to sign (no NKEY users?)".into())
                })?;
                Some((seed.public_key(), seed.sign(nonce.as_bytes())))
            }
            None => None,
        };
        let connect = nats::Connect {
            verbose: false,
            pedantic: false,
            tls_required: bridge.tls.is_some(),
            name: &name,
            lang: "rust",
            version: env!("CARGO_PKG_VERSION"),
            protocol: 1,
            headers: true,
            no_responders: true,
            user: config.username.as_deref(),
            pass: config.password.as_deref(),
            auth_token: token,
            nkey: nkey.as_ref().map(|(public, _)| public.as_str()),
            sig: nkey.as_ref().map(|(_, sig)| sig.as_str()),
        };
        nats::encode_connect(&connect, &mut link.bufs.wbuf);
        // PONG to this PING means CONNECT was accepted (errors come as -ERR before it).
        nats::encode_ping(&mut link.bufs.wbuf);
        link.write().await?;
        loop {
            match link.next_op().await? {
                ServerOp::Pong => break,
                ServerOp::Err(e) => {
                    return Err(ConnectError::Protocol(format!("refused by the server: {e}")))
                }
                ServerOp::Ping => nats::encode_pong(&mut link.bufs.wbuf),
                _ => {}
            }
        }
        nats::encode_sub(&format!("{}.*", link.wire.inbox), INBOX_SID, &mut link.bufs.wbuf);
        info!(server = %info.server_name, version = %info.version, max_payload = link.wire.max_payload, "NATS server answered");
        Ok(link)
    }

    /// The next whole operation from the server (handshake only).
    async fn next_op(&mut self) -> Result<ServerOp, ConnectError> {
        self.read_handshake(|wire, rbuf| decode(rbuf, wire.max_payload))
            .await?
            .ok_or_else(|| ConnectError::Protocol("connection closed during the handshake".into()))
    }

    /// After the handshake: QoS 1 at most, the session online, its unacknowledged window
    /// again (same Msg-Ids), then its queue.
    fn start(&mut self, bridge: &mut Bridge) {
        let session = &mut bridge.session;
        session.qos_cap = QoS::AtLeastOnce;
        session.pending.mailbox().set_online(true);
        // No Receive Maximum in NATS: the window is `max_inflight`.
        session.resume(u16::MAX, &mut self.wire.out, Instant::now());
        info!(window = session.outbound.capacity(), resent = session.outbound.len(), "bridge linked");
    }
}

impl Wire for JetStream {
    const PEER: &'static str = "the NATS server";

    fn out(&mut self) -> &mut Vec<Packet> {
        &mut self.out
    }

    /// Stores the session's journal (delivery states) before what depends on it is written.
    async fn commit(&mut self, bridge: &mut Bridge) -> Result<(), String> {
        let ops = std::mem::take(&mut bridge.session.journal);
        lane::store(bridge, ops).await.inspect_err(|_| self.out.clear())
    }

    /// Publishes the session's output. A PUBREL can only be left from an MQTT window (the
    /// bridge's kind changed): the message had reached its old upstream, so it is done.
    fn encode_out(&mut self, bridge: &mut Bridge, wbuf: &mut BytesMut) -> Result<(), String> {
        while !self.out.is_empty() {
            for packet in std::mem::take(&mut self.out) {
                match packet {
                    Packet::Forward(forward) => self.publish(bridge, forward, wbuf),
                    Packet::PubRel(ack) => {
                        let _ =
                            bridge.session.handle_ack(&Packet::PubComp(ack), &mut self.out, Instant::now());
                    }
                    other => debug!("{} not sent to NATS", other.name()),
                }
            }
        }
        Ok(())
    }

    fn handle_input(&mut self, bridge: &mut Bridge, bufs: &mut Buffers) -> Result<(), String> {
        while let Some(op) = nats::decode(&mut bufs.rbuf, self.max_payload).map_err(|e| e.to_string())? {
            match op {
                ServerOp::Ping => nats::encode_pong(&mut bufs.wbuf),
                ServerOp::Pong => bufs.pinging = false,
                ServerOp::Ok | ServerOp::Info(_) => {}
                // Kept open by the server: a publish it refused stays unacknowledged and is
                // sent again after the ack timeout.
                ServerOp::Err(e) if e.starts_with("Permissions Violation") => warn!("NATS server: {e}"),
                ServerOp::Err(e) => return Err(format!("NATS server error: {e}")),
                ServerOp::Msg { subject, headers, payload } => {
                    self.handle_reply(bridge, &subject, &headers, &payload)
                }
            }
        }
        Ok(())
    }

    fn ping(&mut self, wbuf: &mut BytesMut) {
        nats::encode_ping(wbuf);
    }

    /// When the oldest publish's PubAck is overdue.
    fn deadline(&self) -> Option<Instant> {
        self.awaiting.front().map(|oldest| oldest.sent + self.ack_timeout)
    }

    /// No PubAck within the ack timeout: the publish goes again, same Msg-Id, same reply.
    fn on_deadline(&mut self, bridge: &mut Bridge, now: Instant, wbuf: &mut BytesMut) {
        let stream = bridge.config.jetstream.as_ref().and_then(|j| j.stream.as_deref());
        let mut resent = 0u64;
        while self.awaiting.front().is_some_and(|a| a.sent + self.ack_timeout <= now) {
            let Some(mut a) = self.awaiting.pop_front() else { break };
            self.encode_awaiting(&a, stream, wbuf);
            a.sent = now;
            self.awaiting.push_back(a);
            resent += 1;
        }
        if resent > 0 {
            BridgeStats::add(&bridge.stats.resent, resent);
            info!(
                resent,
                ack_timeout_ms = self.ack_timeout.as_millis() as u64,
                "no PubAck in time: sent again with the same Nats-Msg-Id"
            );
        }
    }
}

impl JetStream {
    fn publish(&mut self, bridge: &mut Bridge, forward: Forward, wbuf: &mut BytesMut) {
        match forward.dup {
            true => BridgeStats::add(&bridge.stats.resent, 1),
            false => BridgeStats::add(&bridge.stats.forwarded, 1),
        }
        let topic = forward.message.topic.to_string();
        // Queued under a topic entry since removed from the configuration: mapped unchanged.
        let topic = bridge.remote_topic(&topic).unwrap_or(topic);
        let js = bridge.config.jetstream.as_ref();
        let stream = js.and_then(|j| j.stream.as_deref());
        let subject = subject::subject(js.map_or("", |j| j.subject_prefix.as_str()), &topic);
        let key = forward.packet_id.and_then(|id| bridge.session.outbound.seq(id));
        let msg_id = key.map(|key| format!("{}:{key}", bridge.config.upstream_client_id()));
        let payload = forward.message.payload.clone();
        if nats::publish_size(&headers(msg_id.as_deref(), stream), payload.len()) > self.max_payload {
            warn!(%subject, size = payload.len(), max_payload = self.max_payload, "message larger than the NATS server's max_payload: dropped");
            bridge.stats.dropped_for(BridgeDrop::Refused, 1);
            if let Some(id) = forward.packet_id {
                bridge.session.forget(id);
            }
            return;
        }
        let Some(packet_id) = forward.packet_id else {
            // QoS 0: no queue entry, no reply awaited.
            nats::encode_publish(&subject, None, &headers(None, stream), &payload, wbuf);
            return;
        };
        // Every delivery of the (persistent) bridge session has a key; the packet id keeps a
        // reply token unique should one not.
        let token = key.map_or_else(|| format!("p{}", packet_id.get()), |k| k.to_string());
        let awaiting = Awaiting { packet_id, token, subject, msg_id, payload, sent: Instant::now() };
        self.encode_awaiting(&awaiting, stream, wbuf);
        self.awaiting.push_back(awaiting);
    }

    fn encode_awaiting(&self, a: &Awaiting, stream: Option<&str>, wbuf: &mut BytesMut) {
        let reply = format!("{}.{}", self.inbox, a.token);
        let headers = headers(a.msg_id.as_deref(), stream);
        nats::encode_publish(&a.subject, Some(&reply), &headers, &a.payload, wbuf);
    }

    /// A message on the reply inbox: the answer to one publish.
    fn handle_reply(&mut self, bridge: &mut Bridge, subject: &str, headers: &[u8], payload: &[u8]) {
        let token = subject.strip_prefix(self.inbox.as_str()).and_then(|t| t.strip_prefix('.'));
        let Some(at) = token.and_then(|t| self.awaiting.iter().position(|a| a.token == t)) else {
            // The answer to a publish already acknowledged (sent twice after an ack timeout).
            debug!(%subject, "reply for nothing awaited");
            return;
        };
        let ack = if nats::status(headers) == Some(503) {
            None
        } else {
            match serde_json::from_slice::<nats::PubAck>(payload) {
                Ok(ack) => Some(ack),
                Err(e) => {
                    warn!(%subject, "unreadable PubAck ({e}): the message is sent again after the ack timeout");
                    return;
                }
            }
        };
        let refused = match ack.as_ref().map(|a| &a.error) {
            // No responders: no stream takes the subject (yet), or JetStream is not ready.
            None | Some(Some(nats::ApiError { code: 503, .. })) => {
                if !self.no_stream_logged {
                    self.no_stream_logged = true;
                    warn!(subject = %self.awaiting[at].subject, "no JetStream stream took the message (503): kept, sent again every ack timeout");
                }
                return;
            }
            Some(Some(e)) => {
                warn!(subject = %self.awaiting[at].subject, code = e.code, err_code = e.err_code, "the stream refused a forwarded message: dropped ({})", e.description);
                true
            }
            Some(None) => false,
        };
        let Some(done) = self.awaiting.remove(at) else { return };
        if let Some(ack) = ack.filter(|a| a.duplicate) {
            debug!(stream = %ack.stream, seq = ack.seq, "the stream already had this Msg-Id");
        }
        match bridge.session.handle_ack(
            &Packet::PubAck(Ack::success(done.packet_id)),
            &mut self.out,
            Instant::now(),
        ) {
            Ok(()) => {
                BridgeStats::add(&bridge.stats.acknowledged, 1);
                bridge.stats.dropped_for(BridgeDrop::Refused, u64::from(refused));
            }
            Err(unexpected) => debug!("{unexpected}"),
        }
    }
}

/// The headers of a publish: its Msg-Id and the stream that must take it.
fn headers<'a>(msg_id: Option<&'a str>, stream: Option<&'a str>) -> Vec<(&'static str, &'a str)> {
    let mut headers = Vec::with_capacity(2);
    if let Some(id) = msg_id {
        headers.push(("Nats-Msg-Id", id));
    }
    if let Some(stream) = stream {
        headers.push(("Nats-Expected-Stream", stream));
    }
    headers
}
