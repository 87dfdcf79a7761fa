//! One connection of a bridge to its upstream: CONNECT and CONNACK, SUBSCRIBE for the inbound
//! topics, the re-sending of the unacknowledged window, then one loop over the socket, the
//! session's pending queue, the keep-alive timer and the control slot.
//!
//! The rule of docs/decisions/0002-storage.md holds here as in a client connection: after each
//! event the storage ops it produced (routed inbound messages, the session's journal: packet
//! ids and states of what goes upstream) are committed and awaited before any packet that
//! depends on them is written. So an upstream PUBLISH is acknowledged only once its local
//! publish is stored, and a PUBLISH/PUBREL goes upstream only once its packet id and state are.
//!
//! Liveness: a PINGREQ goes out when nothing was received, or nothing sent, for half the
//! keep-alive (and none is outstanding); the link is dead when nothing at all was received for
//! 1.5 × the keep-alive, or a write cannot complete by then. Half the keep-alive keeps a
//! healthy link's silences well below 1.5 × keep-alive even with one round trip of delay.

use std::io;
use std::sync::Arc;
use std::time::Duration;

use bytes::BytesMut;
use bytestring::ByteString;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::time::Instant;
use tracing::{debug, info, warn};

use super::rate::TokenBucket;
use super::stats::{BridgeDrop, BridgeStats};
use super::Bridge;
use crate::codec::{Codec, Encoded};
use crate::message::Message;
use crate::packet::{
    Ack, ConnAck, Connect, Disconnect, Packet, PacketId, Publish, QoS, ReasonCode, RetainHandling,
    SubscriptionOptions,
};
use crate::router::Routed;
use crate::session::registry::Control;
use crate::storage::Op;

/// The connection to the upstream: TCP, or TLS over TCP.
trait Io: AsyncRead + AsyncWrite + Unpin + Send {}
impl<T: AsyncRead + AsyncWrite + Unpin + Send> Io for T {}

/// Read buffer growth step.
const READ_SIZE: usize = 16 * 1024;

/// Why a link ended.
pub(super) enum Ending {
    Shutdown,
    /// Lost or closed; the bridge reconnects.
    Lost(String),
    /// Linked to a secondary address, the primary answers again: the bridge goes back to it.
    PrimaryBack,
}

/// How long a probe of the primary address waits to see the connection stay open: a server
/// that is up waits for CONNECT, one that is not refuses or resets.
const PROBE_HOLD: Duration = Duration::from_millis(250);

/// Data we sent that stays unacknowledged by the peer's TCP for this long aborts the
/// connection in the kernel (TCP_USER_TIMEOUT, Linux): a write into a dead link fails there
/// too, not only through the keep-alive timer.
pub(super) fn set_user_timeout(tcp: &TcpStream, timeout: Duration) -> io::Result<()> {
    #[cfg(target_os = "linux")]
    socket2::SockRef::from(tcp).set_tcp_user_timeout(Some(timeout))?;
    #[cfg(not(target_os = "linux"))]
    let _ = (tcp, timeout);
    Ok(())
}

/// Resolves once `address` accepts a TCP connection and keeps it open for `PROBE_HOLD`,
/// trying every `every`.
pub(super) async fn probe(address: String, every: Duration, timeout: Duration) {
    loop {
        tokio::time::sleep(every).await;
        if let Ok(Ok(mut stream)) = tokio::time::timeout(timeout, TcpStream::connect(&address)).await {
            let mut byte = [0u8; 1];
            if tokio::time::timeout(PROBE_HOLD, stream.read(&mut byte)).await.is_err() {
                return;
            }
        }
    }
}

/// Why a connection attempt failed.
#[derive(Debug, thiserror::Error)]
pub(super) enum ConnectError {
    #[error("broker shutting down")]
    Shutdown,
    #[error("{0}")]
    Io(#[from] io::Error),
    #[error("no CONNACK within connect_timeout_secs")]
    Timeout,
    #[error("refused by the upstream: CONNACK reason {0}")]
    Refused(ReasonCode),
    #[error("protocol error: {0}")]
    Protocol(String),
    #[error("connection closed before CONNACK")]
    ClosedBeforeConnAck,
}

impl ConnectError {
    /// How a 3.1.1 server that does not know Mosquitto's bridge bit (protocol level 0x84)
    /// answers it: CONNACK return code 1 (unacceptable protocol version), or closing.
    pub(super) fn may_be_the_bridge_bit(&self) -> bool {
        match self {
            ConnectError::Refused(reason) => *reason == ReasonCode::UNSUPPORTED_PROTOCOL_VERSION,
            ConnectError::ClosedBeforeConnAck => true,
            _ => false,
        }
    }
}

pub(super) struct Link {
    stream: Box<dyn Io>,
    codec: Codec,
    rbuf: BytesMut,
    wbuf: BytesMut,
    /// Packets produced since the last write, encoded after the commit.
    out: Vec<Packet>,
    /// Storage changes of inbound messages since the last commit (the session's own changes
    /// are in its journal).
    ops: Vec<Op>,
    /// Inbound messages routed since the last commit, handed over once stored.
    routed: Vec<Routed>,
    keep_alive: Duration,
    last_received: Instant,
    last_sent: Instant,
    /// A PINGREQ is outstanding.
    pinging: bool,
    /// The SUBSCRIBE for the inbound topics awaits its SUBACK.
    subscribe_id: Option<PacketId>,
    /// CONNACK's Retain Available: when false, PUBLISH goes without RETAIN [MQTT-3.2.2-14].
    retain_available: bool,
    /// While on a secondary address: resolves when the primary is back (`probe`).
    primary_back: Option<std::pin::Pin<Box<dyn std::future::Future<Output = ()> + Send>>>,
    /// `max_rate`: PUBLISH packets leave the queue only with a token.
    rate: Option<TokenBucket>,
    /// A too-large message, and one over the hop limit, was logged on this link (later ones
    /// are only counted).
    too_large_logged: bool,
    hops_logged: bool,
}

/// The user property carrying how many bridges a message passed (MQTT 5 upstreams).
const HOPS_PROPERTY: &str = "tern-hops";

/// The hop count a message arrived with (0 without the property, or with one not a number).
fn hops(properties: &crate::packet::PublishProperties) -> u32 {
    properties
        .user_properties
        .iter()
        .find(|(key, _)| key == HOPS_PROPERTY)
        .and_then(|(_, value)| value.parse().ok())
        .unwrap_or(0)
}

/// Sets the hop count (replacing an earlier value), keeping the other user properties in order.
fn set_hops(properties: &mut crate::packet::PublishProperties, hops: u32) {
    properties.user_properties.retain(|(key, _)| key != HOPS_PROPERTY);
    properties
        .user_properties
        .push((ByteString::from_static(HOPS_PROPERTY), ByteString::from(hops.to_string())));
}

impl Link {
    /// Connects to `address`, sends CONNECT and waits for a successful CONNACK (all within
    /// `connect_timeout_secs`), then subscribes upstream and re-sends the unacknowledged window.
    pub(super) async fn connect(bridge: &mut Bridge, address: &str) -> Result<Link, ConnectError> {
        let timeout = bridge.config.connect_timeout();
        let shutdown = bridge.stop.clone();
        let (mut link, connack) = tokio::select! {
            () = shutdown.cancelled() => return Err(ConnectError::Shutdown),
            attempt = tokio::time::timeout(timeout, Link::handshake(bridge, address)) => {
                attempt.map_err(|_| ConnectError::Timeout)??
            }
        };
        link.start(bridge, &connack);
        Ok(link)
    }

    async fn handshake(bridge: &Bridge, address: &str) -> Result<(Link, ConnAck), ConnectError> {
        let config = &bridge.config;
        let tcp = TcpStream::connect(address).await?;
        // Acknowledgements must not wait for Nagle's algorithm.
        tcp.set_nodelay(true)?;
        set_user_timeout(&tcp, config.keep_alive() * 3 / 2)?;
        let stream: Box<dyn Io> = match &bridge.tls {
            Some(tls) => {
                let host = config.tls.as_ref().and_then(|t| t.server_name.as_deref());
                let host = host.unwrap_or_else(|| crate::config::bridge::address_host(address));
                // Checked when the configuration was loaded.
                let name = rustls::pki_types::ServerName::try_from(host.to_owned())
                    .map_err(|e| ConnectError::Protocol(format!("server name {host}: {e}")))?;
                Box::new(tokio_rustls::TlsConnector::from(tls.clone()).connect(name, tcp).await?)
            }
            None => Box::new(tcp),
        };
        let version = config.protocol.version();
        let mqtt = &bridge.broker.config.mqtt;
        let now = Instant::now();
        let mut link = Link {
            stream,
            codec: Codec::client(version, mqtt.max_packet_size),
            rbuf: BytesMut::new(),
            wbuf: BytesMut::new(),
            out: Vec::new(),
            ops: Vec::new(),
            routed: Vec::new(),
            keep_alive: config.keep_alive(),
            last_received: now,
            last_sent: now,
            pinging: false,
            subscribe_id: None,
            retain_available: true,
            primary_back: None,
            rate: config.max_rate.map(|r| TokenBucket::new(r, now)),
            too_large_logged: false,
            hops_logged: false,
        };
        let connect = Connect {
            version,
            clean_start: config.clean_start,
            keep_alive: config.keep_alive_secs,
            client_id: ByteString::from(config.upstream_client_id()),
            will: None,
            username: config.username.as_deref().map(ByteString::from),
            password: config.password.clone().map(bytes::Bytes::from),
            // 3.1.1 has no expiry: clean session 0 keeps the session (the codec drops it).
            session_expiry: config.session_expiry_secs,
            receive_maximum: mqtt.receive_maximum,
            max_packet_size: Some(mqtt.max_packet_size),
            // Topic aliases from the upstream are not accepted (the codec resolves none).
            topic_alias_maximum: 0,
            request_response_info: false,
            request_problem_info: true,
            user_properties: Vec::new(),
            auth_method: None,
            auth_data: None,
        };
        link.out.push(Packet::Connect(Box::new(connect)));
        link.encode_plain()?;
        if bridge.tries_private() {
            crate::codec::mark_bridge_connect(&mut link.wbuf);
        }
        link.stream.write_all_buf(&mut link.wbuf).await?;
        link.stream.flush().await?;
        // The first packet from the server is CONNACK [MQTT-3.2.0-1].
        loop {
            if let Some(packet) =
                link.codec.decode(&mut link.rbuf).map_err(|e| ConnectError::Protocol(e.to_string()))?
            {
                let Packet::ConnAck(connack) = packet else {
                    return Err(ConnectError::Protocol(format!("{} before CONNACK", packet.name())));
                };
                if !connack.reason.is_success() {
                    return Err(ConnectError::Refused(connack.reason));
                }
                link.last_received = Instant::now();
                return Ok((link, *connack));
            }
            link.rbuf.reserve(READ_SIZE);
            if link.stream.read_buf(&mut link.rbuf).await? == 0 {
                return Err(ConnectError::ClosedBeforeConnAck);
            }
        }
    }

    /// After CONNACK: limits from it, SUBSCRIBE for the inbound topics, and the session's
    /// unacknowledged window again, then its queue [MQTT-4.4.0-1].
    fn start(&mut self, bridge: &mut Bridge, connack: &ConnAck) {
        self.codec.set_server_max_packet_size(connack.maximum_packet_size);
        // The server's keep-alive wins [MQTT-3.2.2-21].
        if let Some(secs) = connack.server_keep_alive.filter(|s| *s > 0) {
            self.keep_alive = Duration::from_secs(u64::from(secs));
        }
        self.retain_available = connack.retain_available;
        let session = &mut bridge.session;
        // The upstream's Maximum QoS caps what enters the window from now on [MQTT-3.2.2-11];
        // a message already in flight keeps its QoS (its packet id and state are stored).
        let maximum_qos = connack.maximum_qos.unwrap_or(QoS::ExactlyOnce);
        session.qos_cap = maximum_qos.min(bridge.config.max_qos());
        if maximum_qos < bridge.config.max_qos() {
            info!(
                maximum_qos = maximum_qos as u8,
                "upstream takes QoS {} at most: forwarded at that QoS", maximum_qos as u8
            );
        }
        if !connack.session_present && !session.outbound.is_empty() {
            BridgeStats::add(&bridge.stats.session_lost, 1);
            // The upstream lost our session: a PUBLISH re-sent now is new to it, so one it had
            // already taken may arrive twice (at-least-once, also for QoS 2), and a PUBREL
            // for a message it had released is answered anyway.
            warn!(
                in_flight = session.outbound.len(),
                "upstream has no session for this bridge: unacknowledged messages are re-sent as new (at-least-once)"
            );
        }
        let filters: Vec<(ByteString, SubscriptionOptions)> = bridge
            .config
            .topics
            .iter()
            .filter(|t| t.direction.inbound())
            .map(|t| {
                let options = SubscriptionOptions {
                    // What the bridge sends upstream does not come back (MQTT 5 only)
                    // [MQTT-3.8.3-3].
                    no_local: true,
                    retain_as_published: true,
                    // Subscribing again at each reconnect does not bring the retained
                    // messages again (MQTT 5 only; a 3.1.1 upstream sends them again)
                    // [MQTT-3.3.1-10].
                    retain_handling: RetainHandling::OnNewSubscribe,
                    ..SubscriptionOptions::qos(bridge.config.topic_qos(t).min(maximum_qos))
                };
                (ByteString::from(t.remote_filter()), options)
            })
            .collect();
        if !filters.is_empty() {
            match session.outbound.spare_id() {
                Some(packet_id) => {
                    self.subscribe_id = Some(packet_id);
                    self.out.push(Packet::Subscribe { packet_id, subscription_id: None, filters });
                }
                None => warn!("no free packet id for SUBSCRIBE: inbound topics not subscribed"),
            }
        }
        session.pending.mailbox().set_online(true);
        let receive_maximum = connack.receive_maximum.unwrap_or(u16::MAX);
        session.resume(receive_maximum, &mut self.out, Instant::now());
        info!(
            session_present = connack.session_present,
            keep_alive = self.keep_alive.as_secs(),
            receive_maximum,
            window = session.outbound.capacity(),
            resent = session.outbound.len(),
            "bridge linked"
        );
    }

    /// Linked to a secondary address: probes `primary` every `every` (a TCP connect that stays
    /// open), and the link ends with `Ending::PrimaryBack` once it answers.
    pub(super) fn watch_primary(&mut self, primary: String, every: Duration, timeout: Duration) {
        self.primary_back = Some(Box::pin(probe(primary, every, timeout)));
    }

    /// The connected phase, until the link is lost or the broker shuts down.
    pub(super) async fn serve(&mut self, bridge: &mut Bridge) -> Ending {
        let ending = self.serve_loop(bridge).await;
        bridge.session.pending.mailbox().set_online(false);
        if let Ending::Shutdown = ending {
            // A normal DISCONNECT: the upstream keeps the session and publishes no will.
            self.out.clear();
            self.out.push(Packet::Disconnect(Disconnect::default()));
            let _ = self.encode_plain();
            let _ =
                tokio::time::timeout(Duration::from_secs(1), self.stream.write_all_buf(&mut self.wbuf)).await;
        }
        ending
    }

    async fn serve_loop(&mut self, bridge: &mut Bridge) -> Ending {
        loop {
            if let Err(e) = self.commit(bridge).await {
                return Ending::Lost(e);
            }
            if let Err(e) = self.encode_out(bridge) {
                return Ending::Lost(e);
            }
            if !self.wbuf.is_empty() {
                let dead_at = self.dead_at();
                let write = async {
                    self.stream.write_all_buf(&mut self.wbuf).await?;
                    // TLS holds records until flushed.
                    self.stream.flush().await
                };
                match tokio::time::timeout_at(dead_at, write).await {
                    Ok(Ok(())) => self.last_sent = Instant::now(),
                    Ok(Err(e)) => return Ending::Lost(format!("write failed: {e}")),
                    Err(_) => return Ending::Lost("write stalled for 1.5 × keep-alive".into()),
                }
            }
            let mut timer = if self.pinging { self.dead_at() } else { self.dead_at().min(self.ping_at()) };
            let now = Instant::now();
            bridge.note_held();
            let session = &mut bridge.session;
            if let Some(rate) = &mut self.rate {
                session.send_allowance = rate.available(now);
                if session.send_allowance == 0 {
                    timer = timer.min(rate.next_at(now));
                }
            }
            let allowance = session.send_allowance;
            let can_deliver = session.can_deliver() && allowance > 0;
            if self.rbuf.capacity() - self.rbuf.len() < READ_SIZE / 2 {
                self.rbuf.reserve(READ_SIZE);
            }
            // In this order: the queue is bounded by the in-flight window, so reading always
            // gets its turn, while an upstream that floods us cannot starve the queue.
            tokio::select! {
                biased;
                () = bridge.stop.cancelled() => return Ending::Shutdown,
                request = bridge.control.recv() => match request {
                    Control::Shutdown => return Ending::Shutdown,
                    // The admin API's kick: the link goes, the bridge reconnects.
                    Control::Kick { .. } => return Ending::Lost("disconnected by an operator".into()),
                    other => Bridge::refuse(other),
                },
                () = std::future::poll_fn(|cx| session.pending.poll_pending(cx)), if can_deliver => {
                    bridge.trim();
                    bridge.session.pump(&mut self.out, Instant::now());
                }
                read = self.stream.read_buf(&mut self.rbuf) => match read {
                    Ok(0) => return Ending::Lost("closed by the upstream".into()),
                    Ok(_) => {
                        self.last_received = Instant::now();
                        if let Err(e) = self.handle_input(bridge) {
                            return Ending::Lost(e);
                        }
                    }
                    Err(e) => return Ending::Lost(format!("read failed: {e}")),
                },
                () = async {
                    match self.primary_back.as_mut() {
                        Some(back) => back.as_mut().await,
                        None => std::future::pending().await,
                    }
                } => return Ending::PrimaryBack,
                () = tokio::time::sleep_until(timer) => {
                    let now = Instant::now();
                    if now >= self.dead_at() {
                        return Ending::Lost(format!(
                            "nothing received for 1.5 × keep-alive ({} s) [MQTT-3.1.2-24]",
                            self.keep_alive.as_secs()
                        ));
                    }
                    // Also woken for `max_rate`'s next token: the next turn pumps.
                    if !self.pinging && now >= self.ping_at() {
                        self.pinging = true;
                        self.out.push(Packet::PingReq);
                    }
                }
            }
            if let Some(rate) = &mut self.rate {
                rate.take(allowance - bridge.session.send_allowance);
            }
        }
    }

    /// Silence beyond this means the link is dead.
    fn dead_at(&self) -> Instant {
        self.last_received + self.keep_alive * 3 / 2
    }

    /// When a PINGREQ is due: half the keep-alive after the last packet either way.
    fn ping_at(&self) -> Instant {
        self.last_received.min(self.last_sent) + self.keep_alive / 2
    }

    /// Decodes and handles every complete packet read.
    fn handle_input(&mut self, bridge: &mut Bridge) -> Result<(), String> {
        while let Some(packet) = self.codec.decode(&mut self.rbuf).map_err(|e| e.to_string())? {
            self.handle_packet(bridge, packet)?;
        }
        Ok(())
    }

    fn handle_packet(&mut self, bridge: &mut Bridge, packet: Packet) -> Result<(), String> {
        let now = Instant::now();
        let session = &mut bridge.session;
        match packet {
            ack @ (Packet::PubAck(_) | Packet::PubRec(_) | Packet::PubComp(_)) => {
                let refused = match &ack {
                    Packet::PubAck(a) | Packet::PubRec(a) if !a.reason.is_success() => {
                        // The upstream will not take it: the entry ends here, not retried.
                        warn!(packet_id = %a.packet_id, reason = %a.reason, "upstream refused a forwarded message: dropped");
                        true
                    }
                    _ => false,
                };
                let completes = refused || matches!(ack, Packet::PubAck(_) | Packet::PubComp(_));
                match session.handle_ack(&ack, &mut self.out, now) {
                    Ok(()) if completes => {
                        BridgeStats::add(&bridge.stats.acknowledged, 1);
                        if refused {
                            bridge.stats.dropped_for(BridgeDrop::Refused, 1);
                        }
                    }
                    Ok(()) => {}
                    Err(unexpected) => debug!("{unexpected}"),
                }
            }
            Packet::PubRel(ack) => self.out.push(session.handle_pubrel(ack.packet_id)),
            Packet::Publish(publish) => self.handle_publish(bridge, *publish),
            Packet::SubAck { packet_id, reasons } if Some(packet_id) == self.subscribe_id => {
                self.subscribe_id = None;
                let inbound = bridge.config.topics.iter().filter(|t| t.direction.inbound());
                for (topic, reason) in inbound.zip(&reasons) {
                    if reason.is_success() {
                        info!(filter = %topic.remote_filter(), granted = reason.0, "subscribed upstream");
                    } else {
                        warn!(filter = %topic.remote_filter(), %reason, "upstream refused the subscription");
                    }
                }
            }
            Packet::PingResp => self.pinging = false,
            Packet::Disconnect(d) => return Err(format!("upstream sent DISCONNECT (reason {})", d.reason)),
            other => return Err(format!("unexpected {} from the upstream", other.name())),
        }
        Ok(())
    }

    /// An upstream PUBLISH on an inbound topic: routed here as if the bridge's session had
    /// published it (so No Local keeps it from going back out), acknowledged once stored.
    fn handle_publish(&mut self, bridge: &mut Bridge, publish: Publish) {
        BridgeStats::add(&bridge.stats.received, 1);
        let local = bridge.local_topic(&publish.topic);
        let mut message = None;
        if let Some(local) = local {
            let mut p = publish.clone();
            p.topic = ByteString::from(local);
            message = Some(Arc::new(Message::from_publish(&p, &bridge.session.client_id)));
        } else {
            // Only subscribed filters are delivered; an overlapping upstream subscription of
            // the same client (set up elsewhere) could send more.
            warn!(topic = %publish.topic, "upstream PUBLISH matches no inbound topic: acknowledged, not published");
        }
        match (publish.qos, publish.packet_id) {
            (QoS::AtMostOnce, _) => {
                if let Some(m) = &message {
                    self.route(bridge, m);
                }
            }
            (QoS::AtLeastOnce, Some(id)) => {
                if let Some(m) = &message {
                    self.route(bridge, m);
                }
                self.out.push(Packet::PubAck(Ack::success(id)));
            }
            (QoS::ExactlyOnce, Some(id)) => {
                // Routed on first receipt only; the stored id makes a re-send after a reconnect
                // or restart a duplicate [MQTT-4.3.3-9].
                if !bridge.session.inbound.contains(id) {
                    if let Some(m) = &message {
                        self.route(bridge, m);
                    }
                    bridge.session.handle_inbound_qos2(id);
                }
                self.out.push(Packet::PubRec(Ack::success(id)));
            }
            (_, None) => unreachable!("the decoder requires a packet id for QoS 1 and 2"),
        }
    }

    fn route(&mut self, bridge: &Bridge, message: &Arc<Message>) {
        let mut routed = crate::connection::route(&bridge.broker, message);
        self.ops.append(&mut routed.ops);
        self.routed.push(routed);
    }

    /// Stores what the last event changed, when output depends on it; then hands routed
    /// inbound messages to their sessions. A failed commit drops the link: nothing it would
    /// have acknowledged is, and the upstream re-sends.
    async fn commit(&mut self, bridge: &mut Bridge) -> Result<(), String> {
        let mut ops = std::mem::take(&mut self.ops);
        ops.append(&mut bridge.session.journal);
        if ops.iter().any(Op::gates_output) {
            if let Err(e) = bridge.broker.store.commit(ops).await {
                self.routed.drain(..).for_each(Routed::abandon);
                self.out.clear();
                return Err(format!("storage failed: {e}"));
            }
        } else if !ops.is_empty() {
            // Clean-up only (acknowledged deliveries): later batches are applied after it.
            drop(bridge.broker.store.commit(ops));
        }
        for routed in self.routed.drain(..) {
            routed.deliver();
        }
        Ok(())
    }

    /// Encodes the output, PUBLISH topics mapped to their upstream names. A PUBLISH larger
    /// than the upstream's Maximum Packet Size is not sent and counts as done (logged).
    fn encode_out(&mut self, bridge: &mut Bridge) -> Result<(), String> {
        for packet in std::mem::take(&mut self.out) {
            let packet = match packet {
                Packet::Forward(forward) => {
                    let mut publish = forward.into_publish();
                    let hops = hops(&publish.properties).saturating_add(1);
                    if hops > u32::from(bridge.config.max_hops) {
                        // A loop of bridges: this message went round `max_hops` times already.
                        bridge.stats.dropped_for(BridgeDrop::MaxHops, 1);
                        if !self.hops_logged {
                            self.hops_logged = true;
                            warn!(topic = %publish.topic, hops, "hop limit reached (a loop of bridges?): not forwarded (logged once per link, counted)");
                        }
                        if let Some(id) = publish.packet_id {
                            bridge.session.forget(id);
                        }
                        continue;
                    }
                    set_hops(&mut publish.properties, hops);
                    match publish.dup {
                        true => BridgeStats::add(&bridge.stats.resent, 1),
                        false => BridgeStats::add(&bridge.stats.forwarded, 1),
                    }
                    match bridge.remote_topic(&publish.topic) {
                        Some(remote) => publish.topic = ByteString::from(remote),
                        // Queued under a topic entry since removed from the configuration.
                        None => {
                            debug!(topic = %publish.topic, "no outbound entry matches: forwarded unchanged")
                        }
                    }
                    publish.properties.subscription_ids.clear();
                    publish.retain &= self.retain_available;
                    Packet::Publish(Box::new(publish))
                }
                other => other,
            };
            let packet_id = match &packet {
                Packet::Publish(p) => p.packet_id,
                _ => None,
            };
            let encoded = self.codec.encode(packet, &mut self.wbuf).map_err(|e| e.to_string())?;
            if encoded == Encoded::TooLargeForClient {
                bridge.stats.dropped_for(BridgeDrop::TooLarge, 1);
                if !self.too_large_logged {
                    self.too_large_logged = true;
                    warn!("message larger than the upstream's maximum packet size: dropped (logged once per link)");
                }
                if let Some(id) = packet_id {
                    bridge.session.forget(id);
                }
            }
        }
        Ok(())
    }

    /// Encodes `out` as is (handshake and closing).
    fn encode_plain(&mut self) -> io::Result<()> {
        for packet in self.out.drain(..) {
            self.codec.encode(packet, &mut self.wbuf).map_err(io::Error::other)?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[cfg(target_os = "linux")]
    #[tokio::test]
    async fn the_user_timeout_is_set_on_the_socket() {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let tcp = TcpStream::connect(listener.local_addr().unwrap()).await.unwrap();
        set_user_timeout(&tcp, Duration::from_millis(4500)).unwrap();
        let set = socket2::SockRef::from(&tcp).tcp_user_timeout().unwrap();
        assert_eq!(set, Some(Duration::from_millis(4500)));
    }
}
