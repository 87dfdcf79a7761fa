//! MQTT 3.1/3.1.1 <-> Tern's packet model. Properties do not exist here: they are dropped on
//! the way out [v3/v5 interop] and empty on the way in; reason codes map to return codes.

use bytes::{BufMut, BytesMut};
use rmqtt_codec::types::{Protocol, Publish as WirePublish};
use rmqtt_codec::v3::{self, ConnectAckReason, SubscribeReturnCode};
use tokio_util::codec::Encoder;

use super::CodecError;
use crate::packet::{
    Ack, ConnAck, Connect, Disconnect, Packet, PacketId, ProtocolVersion, Publish, PublishProperties, QoS,
    ReasonCode, SubscriptionOptions, Will,
};

pub(super) use super::v5::{qos_from_wire, qos_to_wire};

/// `from_server`: decoding a server's packets (the client side of a bridge).
pub(super) fn from_wire(packet: v3::Packet, from_server: bool) -> Result<Packet, CodecError> {
    let client_only = matches!(
        packet,
        v3::Packet::Connect(_)
            | v3::Packet::Subscribe { .. }
            | v3::Packet::Unsubscribe { .. }
            | v3::Packet::PingRequest
    );
    if from_server && client_only {
        return Err(CodecError::Violation("server sent a packet only a client may send"));
    }
    Ok(match packet {
        v3::Packet::Connect(c) => {
            let version = if c.protocol.level() == 3 { ProtocolVersion::V31 } else { ProtocolVersion::V311 };
            // MQTT 3.1 has no assigned identifiers: its client identifier is 1 to 23
            // characters, and return code 2 refuses one that is not. Only the empty one is
            // refused here; longer ones are accepted, as Mosquitto accepts them.
            if version == ProtocolVersion::V31 && c.client_id.is_empty() {
                return Err(CodecError::IdentifierRejected);
            }
            Packet::Connect(Box::new(Connect {
                version,
                clean_start: c.clean_session,
                keep_alive: c.keep_alive,
                client_id: c.client_id,
                will: c.last_will.map(|w| Will {
                    topic: w.topic,
                    payload: w.message,
                    qos: qos_from_wire(w.qos),
                    retain: w.retain,
                    delay: 0,
                    properties: PublishProperties::default(),
                }),
                username: c.username,
                password: c.password,
                // 3.1.1 semantics expressed in MQTT 5 terms: clean session 0 never expires.
                session_expiry: if c.clean_session { 0 } else { u32::MAX },
                receive_maximum: u16::MAX,
                max_packet_size: None,
                topic_alias_maximum: 0,
                request_response_info: false,
                request_problem_info: true,
                user_properties: Vec::new(),
                auth_method: None,
                auth_data: None,
            }))
        }
        v3::Packet::Publish(p) => Packet::Publish(Box::new(Publish {
            dup: p.dup,
            qos: qos_from_wire(p.qos),
            retain: p.retain,
            topic: p.topic,
            packet_id: p.packet_id.map(PacketId),
            payload: p.payload,
            properties: PublishProperties::default(),
        })),
        v3::Packet::PublishAck { packet_id } => Packet::PubAck(Ack::success(PacketId(packet_id))),
        v3::Packet::PublishReceived { packet_id } => Packet::PubRec(Ack::success(PacketId(packet_id))),
        v3::Packet::PublishRelease { packet_id } => Packet::PubRel(Ack::success(PacketId(packet_id))),
        v3::Packet::PublishComplete { packet_id } => Packet::PubComp(Ack::success(PacketId(packet_id))),
        v3::Packet::Subscribe { packet_id, topic_filters } => Packet::Subscribe {
            packet_id: PacketId(packet_id),
            subscription_id: None,
            filters: topic_filters
                .into_iter()
                .map(|(f, q)| (f, SubscriptionOptions::qos(qos_from_wire(q))))
                .collect(),
        },
        v3::Packet::Unsubscribe { packet_id, topic_filters } => {
            Packet::Unsubscribe { packet_id: PacketId(packet_id), filters: topic_filters }
        }
        v3::Packet::PingRequest => Packet::PingReq,
        v3::Packet::Disconnect => Packet::Disconnect(Disconnect::default()),
        // Packets only a server sends: decoded on the client side of a bridge.
        v3::Packet::ConnectAck(ack) if from_server => Packet::ConnAck(Box::new(ConnAck {
            session_present: ack.session_present,
            reason: connack_reason(ack.return_code),
            ..ConnAck::refuse(ReasonCode::SUCCESS)
        })),
        v3::Packet::SubscribeAck { packet_id, status } if from_server => Packet::SubAck {
            packet_id: PacketId(packet_id),
            reasons: status
                .into_iter()
                .map(|s| match s {
                    SubscribeReturnCode::Success(q) => ReasonCode::granted(qos_from_wire(q)),
                    SubscribeReturnCode::Failure => ReasonCode::UNSPECIFIED_ERROR,
                })
                .collect(),
        },
        v3::Packet::UnsubscribeAck { packet_id } if from_server => {
            Packet::UnsubAck { packet_id: PacketId(packet_id), reasons: Vec::new() }
        }
        v3::Packet::PingResponse if from_server => Packet::PingResp,
        // Packets only a server sends are a protocol error from a client.
        v3::Packet::ConnectAck(_)
        | v3::Packet::SubscribeAck { .. }
        | v3::Packet::UnsubscribeAck { .. }
        | v3::Packet::PingResponse => {
            return Err(CodecError::Violation("client sent a packet only a server may send"))
        }
    })
}

/// The MQTT 5 reason code for a 3.1.1 CONNACK return code (the reverse of
/// `connack_return_code`).
fn connack_reason(code: ConnectAckReason) -> ReasonCode {
    match code {
        ConnectAckReason::ConnectionAccepted => ReasonCode::SUCCESS,
        ConnectAckReason::UnacceptableProtocolVersion => ReasonCode::UNSUPPORTED_PROTOCOL_VERSION,
        ConnectAckReason::IdentifierRejected => ReasonCode::CLIENT_IDENTIFIER_NOT_VALID,
        ConnectAckReason::ServiceUnavailable => ReasonCode::SERVER_UNAVAILABLE,
        ConnectAckReason::BadUserNameOrPassword => ReasonCode::BAD_USER_NAME_OR_PASSWORD,
        _ => ReasonCode::NOT_AUTHORIZED,
    }
}

/// The 3.1.1 CONNACK return code for an MQTT 5 reason code (MQTT 5 table 3-1, mapped as
/// Mosquitto does: a wrong user name or password is 0x05 "not authorized", since 3.1.1's 0x04
/// means the fields were malformed).
fn connack_return_code(reason: ReasonCode) -> ConnectAckReason {
    match reason {
        ReasonCode::SUCCESS => ConnectAckReason::ConnectionAccepted,
        ReasonCode::UNSUPPORTED_PROTOCOL_VERSION => ConnectAckReason::UnacceptableProtocolVersion,
        ReasonCode::CLIENT_IDENTIFIER_NOT_VALID => ConnectAckReason::IdentifierRejected,
        ReasonCode::SERVER_UNAVAILABLE | ReasonCode::SERVER_BUSY | ReasonCode::SERVER_SHUTTING_DOWN => {
            ConnectAckReason::ServiceUnavailable
        }
        _ => ConnectAckReason::NotAuthorized,
    }
}

/// Encodes an outbound packet in 3.1.1 format. PUBLISH, by far the most frequent, is written
/// directly: converting it to rmqtt-codec's packet first cost an allocation and two copies of
/// its header fields per delivery. Everything else goes through `to_wire`.
pub(super) fn encode(packet: Packet, dst: &mut BytesMut) -> Result<(), CodecError> {
    match packet {
        Packet::Publish(p) => encode_publish(p.dup, p.qos, p.retain, &p.topic, p.packet_id, &p.payload, dst),
        // Topic and payload are read from the shared message: nothing is copied but the bytes.
        Packet::Forward(f) => {
            let m = &f.message;
            encode_publish(f.dup, f.qos, f.retain, &m.topic, f.packet_id, &m.payload, dst);
        }
        other => {
            if let Some(wire) = to_wire(other) {
                v3::Codec::new(0).encode(wire, dst)?;
            }
        }
    }
    Ok(())
}

/// PUBLISH (section 3.3): fixed header with DUP, QoS and RETAIN, Remaining Length, topic,
/// packet identifier for QoS 1/2 [MQTT-2.3.1-5], payload. The topic is at most 65,535 bytes
/// (checked when it was received) and the packet within the broker's maximum packet size.
fn encode_publish(
    dup: bool,
    qos: QoS,
    retain: bool,
    topic: &str,
    packet_id: Option<PacketId>,
    payload: &[u8],
    dst: &mut BytesMut,
) {
    let id_len = if packet_id.is_some() { 2 } else { 0 };
    let remaining = 2 + topic.len() + id_len + payload.len();
    dst.reserve(5 + remaining);
    dst.put_u8(0x30 | u8::from(dup) << 3 | (qos as u8) << 1 | u8::from(retain));
    super::put_variable_length(dst, remaining);
    dst.put_u16(topic.len() as u16);
    dst.put_slice(topic.as_bytes());
    if let Some(id) = packet_id {
        dst.put_u16(id.0.get());
    }
    dst.put_slice(payload);
}

/// Converts an outbound packet. DISCONNECT and AUTH have no 3.1.1 form from a server: they
/// yield `None` and are not written, so the caller can close every connection the same way.
pub(super) fn to_wire(packet: Packet) -> Option<v3::Packet> {
    Some(match packet {
        Packet::ConnAck(ack) => v3::Packet::ConnectAck(v3::ConnectAck {
            session_present: ack.session_present,
            return_code: connack_return_code(ack.reason),
        }),
        Packet::Publish(p) => v3::Packet::Publish(Box::new(WirePublish {
            dup: p.dup,
            retain: p.retain,
            qos: qos_to_wire(p.qos),
            topic: p.topic,
            packet_id: p.packet_id.map(|i| i.0),
            payload: p.payload,
            properties: None,
        })),
        Packet::Forward(f) => return to_wire(Packet::Publish(Box::new(f.into_publish()))),
        Packet::PubAck(a) => v3::Packet::PublishAck { packet_id: a.packet_id.0 },
        Packet::PubRec(a) => v3::Packet::PublishReceived { packet_id: a.packet_id.0 },
        Packet::PubRel(a) => v3::Packet::PublishRelease { packet_id: a.packet_id.0 },
        Packet::PubComp(a) => v3::Packet::PublishComplete { packet_id: a.packet_id.0 },
        Packet::SubAck { packet_id, reasons } => v3::Packet::SubscribeAck {
            packet_id: packet_id.0,
            status: reasons
                .into_iter()
                .map(|r| match r.0 {
                    0..=2 => SubscribeReturnCode::Success(qos_to_wire(qos_from_code(r.0))),
                    _ => SubscribeReturnCode::Failure,
                })
                .collect(),
        },
        Packet::UnsubAck { packet_id, .. } => v3::Packet::UnsubscribeAck { packet_id: packet_id.0 },
        Packet::PingResp => v3::Packet::PingResponse,
        // Client-to-server packets: what a bridge sends upstream (`Codec::client`), and tests.
        Packet::Connect(c) => v3::Packet::Connect(Box::new(v3::Connect {
            protocol: Protocol(if c.version == ProtocolVersion::V31 { 3 } else { 4 }),
            clean_session: c.clean_start,
            keep_alive: c.keep_alive,
            last_will: c.will.map(|w| v3::LastWill {
                qos: qos_to_wire(w.qos),
                retain: w.retain,
                topic: w.topic,
                message: w.payload,
            }),
            client_id: c.client_id,
            username: c.username,
            password: c.password,
            cert: None,
        })),
        Packet::Subscribe { packet_id, filters, .. } => v3::Packet::Subscribe {
            packet_id: packet_id.0,
            topic_filters: filters.into_iter().map(|(f, o)| (f, qos_to_wire(o.qos))).collect(),
        },
        Packet::Unsubscribe { packet_id, filters } => {
            v3::Packet::Unsubscribe { packet_id: packet_id.0, topic_filters: filters }
        }
        Packet::PingReq => v3::Packet::PingRequest,
        Packet::Disconnect(_) | Packet::Auth(_) => return None,
    })
}

fn qos_from_code(code: u8) -> crate::packet::QoS {
    match code {
        0 => crate::packet::QoS::AtMostOnce,
        1 => crate::packet::QoS::AtLeastOnce,
        _ => crate::packet::QoS::ExactlyOnce,
    }
}
