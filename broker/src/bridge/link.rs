//! An MQTT upstream of a bridge: CONNECT and CONNACK, SUBSCRIBE for the inbound topics, the
//! re-sending of the unacknowledged window, then, in the connected phase `lane.rs` runs, MQTT
//! packets both ways: forwarded PUBLISH (topics mapped, hop count), the upstream's
//! acknowledgements, and inbound PUBLISH acknowledged once its local publish is stored.

use std::io;
use std::sync::Arc;
use std::time::Duration;

use bytes::BytesMut;
use bytestring::ByteString;
use tokio::time::Instant;
use tracing::{debug, info, warn};

use super::lane::{self, Buffers, Lane, Wire};
use super::stats::{BridgeDrop, BridgeStats};
use super::Bridge;
use crate::codec::{Codec, Encoded};
use crate::message::Message;
use crate::packet::{
    Ack, ConnAck, Connect, Disconnect, Packet, PacketId, Publish, QoS, ReasonCode, RetainHandling,
    SubscriptionOptions,
};
use crate::router::Routed;
use crate::storage::Op;

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

/// The MQTT side of a link to the upstream.
pub(super) struct Mqtt {
    codec: Codec,
    /// Packets produced since the last write, encoded after the commit.
    out: Vec<Packet>,
    /// Storage changes of inbound messages since the last commit (the session's own changes
    /// are in its journal).
    ops: Vec<Op>,
    /// Inbound messages routed since the last commit, handed over once stored.
    routed: Vec<Routed>,
    /// The SUBSCRIBE for the inbound topics awaits its SUBACK.
    subscribe_id: Option<PacketId>,
    /// CONNACK's Retain Available: when false, PUBLISH goes without RETAIN [MQTT-3.2.2-14].
    retain_available: bool,
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

impl Lane<Mqtt> {
    /// Connects to `address`, sends CONNECT and waits for a successful CONNACK (all within
    /// `connect_timeout_secs`), then subscribes upstream and re-sends the unacknowledged window.
    pub(super) async fn connect(bridge: &mut Bridge, address: &str) -> Result<Self, ConnectError> {
        let (mut lane, connack) = lane::attempt(bridge, Self::handshake(bridge, address)).await?;
        lane.start(bridge, &connack);
        Ok(lane)
    }

    async fn handshake(bridge: &Bridge, address: &str) -> Result<(Self, ConnAck), ConnectError> {
        let config = &bridge.config;
        let tcp = lane::connect_tcp(address, config.keep_alive()).await?;
        let socket = lane::secure(bridge, address, tcp).await?;
        let version = config.protocol.version();
        let mqtt = &bridge.broker.config.mqtt;
        let wire = Mqtt {
            codec: Codec::client(version, mqtt.max_packet_size),
            out: Vec::new(),
            ops: Vec::new(),
            routed: Vec::new(),
            subscribe_id: None,
            retain_available: true,
            too_large_logged: false,
            hops_logged: false,
        };
        let mut lane = Lane::new(socket, wire, config);
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
        lane.wire.out.push(Packet::Connect(Box::new(connect)));
        lane.wire.encode_plain(&mut lane.bufs.wbuf)?;
        if bridge.tries_private() {
            crate::codec::mark_bridge_connect(&mut lane.bufs.wbuf);
        }
        lane.write().await?;
        // The first packet from the server is CONNACK [MQTT-3.2.0-1].
        let packet = lane
            .read_handshake(|wire, rbuf| {
                wire.codec.decode(rbuf).map_err(|e| ConnectError::Protocol(e.to_string()))
            })
            .await?
            .ok_or(ConnectError::ClosedBeforeConnAck)?;
        let Packet::ConnAck(connack) = packet else {
            return Err(ConnectError::Protocol(format!("{} before CONNACK", packet.name())));
        };
        if !connack.reason.is_success() {
            return Err(ConnectError::Refused(connack.reason));
        }
        Ok((lane, *connack))
    }

    /// After CONNACK: limits from it, SUBSCRIBE for the inbound topics, and the session's
    /// unacknowledged window again, then its queue [MQTT-4.4.0-1].
    fn start(&mut self, bridge: &mut Bridge, connack: &ConnAck) {
        self.wire.codec.set_server_max_packet_size(connack.maximum_packet_size);
        // The server's keep-alive wins [MQTT-3.2.2-21].
        if let Some(secs) = connack.server_keep_alive.filter(|s| *s > 0) {
            self.keep_alive = Duration::from_secs(u64::from(secs));
        }
        self.wire.retain_available = connack.retain_available;
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
            match session.outbound.reserve_spare_id() {
                Some(packet_id) => {
                    self.wire.subscribe_id = Some(packet_id);
                    self.wire.out.push(Packet::Subscribe { packet_id, subscription_id: None, filters });
                }
                None => warn!("no free packet id for SUBSCRIBE: inbound topics not subscribed"),
            }
        }
        session.pending.mailbox().set_online(true);
        let receive_maximum = connack.receive_maximum.unwrap_or(u16::MAX);
        session.resume(receive_maximum, &mut self.wire.out, Instant::now());
        info!(
            session_present = connack.session_present,
            keep_alive = self.keep_alive.as_secs(),
            receive_maximum,
            window = session.outbound.capacity(),
            resent = session.outbound.len(),
            "bridge linked"
        );
    }
}

impl Wire for Mqtt {
    const PEER: &'static str = "the upstream";
    const SILENCE_RULE: &'static str = " [MQTT-3.1.2-24]";

    fn out(&mut self) -> &mut Vec<Packet> {
        &mut self.out
    }

    /// Stores what the last event changed, when output depends on it; then hands routed
    /// inbound messages to their sessions. A failed commit drops the link: nothing it would
    /// have acknowledged is, and the upstream re-sends.
    async fn commit(&mut self, bridge: &mut Bridge) -> Result<(), String> {
        let mut ops = std::mem::take(&mut self.ops);
        ops.append(&mut bridge.session.journal);
        if let Err(e) = lane::store(bridge, ops).await {
            self.routed.drain(..).for_each(Routed::abandon);
            self.out.clear();
            return Err(e);
        }
        for routed in self.routed.drain(..) {
            routed.deliver();
        }
        Ok(())
    }

    /// Encodes the output, PUBLISH topics mapped to their upstream names. A PUBLISH larger
    /// than the upstream's Maximum Packet Size is not sent and counts as done (logged).
    fn encode_out(&mut self, bridge: &mut Bridge, wbuf: &mut BytesMut) -> Result<(), String> {
        for packet in std::mem::take(&mut self.out) {
            let packet = match packet {
                Packet::Forward(forward) => match self.forwarded(bridge, forward.into_publish()) {
                    Some(publish) => Packet::Publish(Box::new(publish)),
                    None => continue,
                },
                other => other,
            };
            let packet_id = match &packet {
                Packet::Publish(p) => p.packet_id,
                _ => None,
            };
            let encoded = self.codec.encode(packet, wbuf).map_err(|e| e.to_string())?;
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

    /// Decodes and handles every complete packet read.
    fn handle_input(&mut self, bridge: &mut Bridge, bufs: &mut Buffers) -> Result<(), String> {
        while let Some(packet) = self.codec.decode(&mut bufs.rbuf).map_err(|e| e.to_string())? {
            if let Packet::PingResp = packet {
                bufs.pinging = false;
            }
            self.handle_packet(bridge, packet)?;
        }
        Ok(())
    }

    fn ping(&mut self, _wbuf: &mut BytesMut) {
        self.out.push(Packet::PingReq);
    }

    /// A normal DISCONNECT: the upstream keeps the session and publishes no will.
    fn farewell(&mut self, wbuf: &mut BytesMut) {
        self.out.clear();
        self.out.push(Packet::Disconnect(Disconnect::default()));
        let _ = self.encode_plain(wbuf);
    }
}

impl Mqtt {
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
                session.outbound.release_reserved();
                let inbound = bridge.config.topics.iter().filter(|t| t.direction.inbound());
                for (topic, reason) in inbound.zip(&reasons) {
                    if reason.is_success() {
                        info!(filter = %topic.remote_filter(), granted = reason.0, "subscribed upstream");
                    } else {
                        warn!(filter = %topic.remote_filter(), %reason, "upstream refused the subscription");
                    }
                }
            }
            Packet::PingResp => {}
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

    /// A forwarded message as it goes upstream: hop count raised, topic mapped, no
    /// subscription ids, RETAIN only where available. `None` when it went round a loop of
    /// bridges `max_hops` times: then it is done here.
    fn forwarded(&mut self, bridge: &mut Bridge, mut publish: Publish) -> Option<Publish> {
        let hops = hops(&publish.properties).saturating_add(1);
        if hops > u32::from(bridge.config.max_hops) {
            bridge.stats.dropped_for(BridgeDrop::MaxHops, 1);
            if !self.hops_logged {
                self.hops_logged = true;
                warn!(topic = %publish.topic, hops, "hop limit reached (a loop of bridges?): not forwarded (logged once per link, counted)");
            }
            if let Some(id) = publish.packet_id {
                bridge.session.forget(id);
            }
            return None;
        }
        set_hops(&mut publish.properties, hops);
        match publish.dup {
            true => BridgeStats::add(&bridge.stats.resent, 1),
            false => BridgeStats::add(&bridge.stats.forwarded, 1),
        }
        match bridge.remote_topic(&publish.topic) {
            Some(remote) => publish.topic = ByteString::from(remote),
            // Queued under a topic entry since removed from the configuration.
            None => debug!(topic = %publish.topic, "no outbound entry matches: forwarded unchanged"),
        }
        publish.properties.subscription_ids.clear();
        publish.retain &= self.retain_available;
        Some(publish)
    }

    /// Encodes `out` as is (handshake and closing).
    fn encode_plain(&mut self, wbuf: &mut BytesMut) -> io::Result<()> {
        for packet in self.out.drain(..) {
            self.codec.encode(packet, wbuf).map_err(io::Error::other)?;
        }
        Ok(())
    }
}
