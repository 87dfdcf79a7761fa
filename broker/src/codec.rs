//! Wire codec: bytes <-> [`Packet`].
//!
//! Decoding is delegated to `rmqtt-codec` (see docs/decisions/0001-codec.md for why); this module
//! is the only place that names it. On top of it Tern adds what that decoder leaves to the broker:
//! - the first packet must be CONNECT, and its protocol name/level pick the codec (an unknown
//!   level is answered with CONNACK 0x01 by the caller, not a silent close) [MQTT-3.1.2-2];
//! - the maximum packet size is checked from the fixed header, before the body is buffered;
//! - reserved bits of SUBSCRIBE options must be zero in 3.1.1 [MQTT-3.8.3-4];
//! - PINGREQ and DISCONNECT have remaining length 0;
//! - DUP must be 0 on a QoS 0 PUBLISH [MQTT-3.3.1-2].
//!
//! One `Codec` per connection: the underlying decoder keeps state between calls.

use std::num::NonZeroU16;

use bytes::BytesMut;
use rmqtt_codec::error::DecodeError;
use rmqtt_codec::types::{Protocol, Publish as WirePublish, QoS as WireQoS};
use rmqtt_codec::v3;
use tokio_util::codec::{Decoder, Encoder};

use crate::packet::{
    Connect, ConnectReturnCode, Packet, PacketId, ProtocolVersion, Publish, QoS, SubscribeReturnCode, Will,
};

const CONNECT_HEADER: u8 = 0x10;
const SUBSCRIBE_HEADER: u8 = 0x82;
const PINGREQ_HEADER: u8 = 0xC0;
const DISCONNECT_HEADER: u8 = 0xE0;

/// Why a byte stream could not be turned into packets. Every variant closes the connection.
#[derive(Debug, thiserror::Error)]
pub enum CodecError {
    /// The first packet of a connection was not CONNECT [MQTT-3.1.0-1].
    #[error("first packet is not CONNECT [MQTT-3.1.0-1]")]
    ExpectedConnect,
    /// The protocol name is neither "MQTT" nor "MQIsdp" [MQTT-3.1.2-1].
    #[error("unknown protocol name [MQTT-3.1.2-1]")]
    UnknownProtocolName,
    /// A known protocol name with a level Tern does not speak [MQTT-3.1.2-2].
    #[error("unacceptable protocol level {0} [MQTT-3.1.2-2]")]
    UnacceptableProtocolLevel(u8),
    /// Empty client identifier with clean session 0 [MQTT-3.1.3-8].
    #[error("empty client identifier requires clean session [MQTT-3.1.3-8]")]
    IdentifierRejected,
    /// The fixed header announced more than the configured maximum.
    #[error("packet of {size} bytes exceeds max_packet_size {max}")]
    PacketTooLarge { size: u64, max: u32 },
    /// The bytes do not form a valid packet.
    #[error("malformed packet: {0}")]
    Malformed(DecodeError),
    /// A well-formed packet that breaks a rule the decoder does not check.
    #[error("protocol violation: {0}")]
    Violation(&'static str),
    /// The outbound packet could not be encoded (a broker bug, never peer input).
    #[error("encode failed: {0}")]
    Encode(#[from] rmqtt_codec::error::EncodeError),
}

enum State {
    /// No CONNECT yet: the protocol level decides which decoder follows.
    AwaitingConnect,
    V3(v3::Codec),
}

/// Per-connection MQTT codec.
pub struct Codec {
    state: State,
    max_packet_size: u32,
}

/// A decoded fixed header: first byte, remaining length, header length in bytes.
struct FixedHeader {
    first_byte: u8,
    remaining: u32,
    header_len: usize,
}

impl FixedHeader {
    fn total_len(&self) -> usize {
        self.header_len + self.remaining as usize
    }
}

impl Codec {
    /// `max_packet_size` counts the whole packet, fixed header included (as MQTT 5 defines it).
    pub fn new(max_packet_size: u32) -> Self {
        Codec { state: State::AwaitingConnect, max_packet_size }
    }

    /// Decodes the next packet from `src`, or `Ok(None)` when more bytes are needed.
    pub fn decode(&mut self, src: &mut BytesMut) -> Result<Option<Packet>, CodecError> {
        let Some(header) = self.peek_header(src)? else { return Ok(None) };
        let whole_frame = src.len() >= header.total_len();
        if let State::AwaitingConnect = self.state {
            if header.first_byte != CONNECT_HEADER {
                return Err(CodecError::ExpectedConnect);
            }
            if !whole_frame {
                return Ok(None);
            }
            check_protocol(&src[header.header_len..header.total_len()])?;
            // rmqtt's v3 limit counts the remaining length only; ours is checked above.
            self.state = State::V3(v3::Codec::new(self.max_packet_size));
        }
        if whole_frame && header.first_byte == SUBSCRIBE_HEADER {
            check_subscribe_options(&src[header.header_len..header.total_len()])?;
        }
        let State::V3(inner) = &mut self.state else { unreachable!("state set above") };
        let decoded = inner.decode(src).map_err(|e| match e {
            DecodeError::InvalidClientId => CodecError::IdentifierRejected,
            other => CodecError::Malformed(other),
        })?;
        let Some((packet, _)) = decoded else { return Ok(None) };
        if matches!(header.first_byte, PINGREQ_HEADER | DISCONNECT_HEADER) && header.remaining != 0 {
            return Err(CodecError::Violation("PINGREQ/DISCONNECT with a non-zero remaining length"));
        }
        from_v3(packet)
    }

    /// Appends the encoding of `packet` to `dst`.
    pub fn encode(&mut self, packet: Packet, dst: &mut BytesMut) -> Result<(), CodecError> {
        // Replies to a refused CONNECT are encoded before any version was chosen: 3.1.1 format.
        v3::Codec::new(0).encode(to_v3(packet), dst)?;
        Ok(())
    }

    /// Parses the fixed header at the front of `src` and enforces the size limit.
    fn peek_header(&self, src: &[u8]) -> Result<Option<FixedHeader>, CodecError> {
        let Some(&first_byte) = src.first() else { return Ok(None) };
        let mut remaining: u32 = 0;
        for i in 0..4 {
            let Some(&byte) = src.get(1 + i) else { return Ok(None) };
            remaining |= u32::from(byte & 0x7F) << (7 * i);
            if byte & 0x80 == 0 {
                let header = FixedHeader { first_byte, remaining, header_len: 2 + i };
                let size = header.total_len() as u64;
                if self.max_packet_size != 0 && size > u64::from(self.max_packet_size) {
                    return Err(CodecError::PacketTooLarge { size, max: self.max_packet_size });
                }
                return Ok(Some(header));
            }
        }
        // A remaining length longer than four bytes [MQTT-2.2.3].
        Err(CodecError::Malformed(DecodeError::InvalidLength))
    }
}

/// Validates the protocol name and level of a CONNECT body.
fn check_protocol(body: &[u8]) -> Result<(), CodecError> {
    let name_len = match body {
        [hi, lo, ..] => usize::from(u16::from_be_bytes([*hi, *lo])),
        _ => return Err(CodecError::Malformed(DecodeError::InvalidLength)),
    };
    let name = body.get(2..2 + name_len).ok_or(CodecError::Malformed(DecodeError::InvalidLength))?;
    let level = *body.get(2 + name_len).ok_or(CodecError::Malformed(DecodeError::InvalidLength))?;
    match (name, level) {
        (b"MQTT", 4) | (b"MQIsdp", 3) => {
            let flags = body.get(3 + name_len).copied().unwrap_or(0);
            if flags & 0b0100_0000 != 0 && flags & 0b1000_0000 == 0 {
                return Err(CodecError::Violation(
                    "password flag set without user name flag [MQTT-3.1.2-22]",
                ));
            }
            Ok(())
        }
        (b"MQTT", _) | (b"MQIsdp", _) => Err(CodecError::UnacceptableProtocolLevel(level)),
        _ => Err(CodecError::UnknownProtocolName),
    }
}

/// Rejects SUBSCRIBE option bytes with reserved bits set [MQTT-3.8.3-4]. Framing errors are left
/// to the decoder, which reports them as malformed.
fn check_subscribe_options(body: &[u8]) -> Result<(), CodecError> {
    let mut at = 2; // packet identifier
    while let Some(len) = body.get(at..at + 2) {
        let option_at = at + 2 + usize::from(u16::from_be_bytes([len[0], len[1]]));
        match body.get(option_at) {
            Some(options) if options & 0b1111_1100 != 0 => {
                return Err(CodecError::Violation("reserved bits set in SUBSCRIBE options [MQTT-3.8.3-4]"))
            }
            Some(_) => at = option_at + 1,
            None => break,
        }
    }
    Ok(())
}

fn qos_from_wire(q: WireQoS) -> QoS {
    match q {
        WireQoS::AtMostOnce => QoS::AtMostOnce,
        WireQoS::AtLeastOnce => QoS::AtLeastOnce,
        WireQoS::ExactlyOnce => QoS::ExactlyOnce,
    }
}

fn qos_to_wire(q: QoS) -> WireQoS {
    match q {
        QoS::AtMostOnce => WireQoS::AtMostOnce,
        QoS::AtLeastOnce => WireQoS::AtLeastOnce,
        QoS::ExactlyOnce => WireQoS::ExactlyOnce,
    }
}

fn id(raw: NonZeroU16) -> PacketId {
    PacketId(raw)
}

fn from_v3(packet: v3::Packet) -> Result<Option<Packet>, CodecError> {
    let packet = match packet {
        v3::Packet::Connect(c) => {
            let version = if c.protocol.level() == 3 { ProtocolVersion::V31 } else { ProtocolVersion::V311 };
            Packet::Connect(Box::new(Connect {
                version,
                clean_session: c.clean_session,
                keep_alive: c.keep_alive,
                client_id: c.client_id,
                will: c.last_will.map(|w| Will {
                    topic: w.topic,
                    payload: w.message,
                    qos: qos_from_wire(w.qos),
                    retain: w.retain,
                }),
                username: c.username,
                password: c.password,
            }))
        }
        v3::Packet::Publish(p) => {
            let qos = qos_from_wire(p.qos);
            if p.dup && qos == QoS::AtMostOnce {
                return Err(CodecError::Violation("DUP set on a QoS 0 PUBLISH [MQTT-3.3.1-2]"));
            }
            Packet::Publish(Publish {
                dup: p.dup,
                qos,
                retain: p.retain,
                topic: p.topic,
                packet_id: p.packet_id.map(id),
                payload: p.payload,
            })
        }
        v3::Packet::PublishAck { packet_id } => Packet::PubAck(id(packet_id)),
        v3::Packet::PublishReceived { packet_id } => Packet::PubRec(id(packet_id)),
        v3::Packet::PublishRelease { packet_id } => Packet::PubRel(id(packet_id)),
        v3::Packet::PublishComplete { packet_id } => Packet::PubComp(id(packet_id)),
        v3::Packet::Subscribe { packet_id, topic_filters } => Packet::Subscribe {
            packet_id: id(packet_id),
            filters: topic_filters.into_iter().map(|(f, q)| (f, qos_from_wire(q))).collect(),
        },
        v3::Packet::Unsubscribe { packet_id, topic_filters } => {
            Packet::Unsubscribe { packet_id: id(packet_id), filters: topic_filters }
        }
        v3::Packet::PingRequest => Packet::PingReq,
        v3::Packet::Disconnect => Packet::Disconnect,
        // Packets only a server sends are a protocol error from a client.
        v3::Packet::ConnectAck(_)
        | v3::Packet::SubscribeAck { .. }
        | v3::Packet::UnsubscribeAck { .. }
        | v3::Packet::PingResponse => {
            return Err(CodecError::Violation("client sent a packet only a server may send"))
        }
    };
    Ok(Some(packet))
}

fn to_v3(packet: Packet) -> v3::Packet {
    match packet {
        Packet::ConnAck { session_present, code } => v3::Packet::ConnectAck(v3::ConnectAck {
            session_present,
            return_code: match code {
                ConnectReturnCode::Accepted => v3::ConnectAckReason::ConnectionAccepted,
                ConnectReturnCode::UnacceptableProtocolVersion => {
                    v3::ConnectAckReason::UnacceptableProtocolVersion
                }
                ConnectReturnCode::IdentifierRejected => v3::ConnectAckReason::IdentifierRejected,
                ConnectReturnCode::ServerUnavailable => v3::ConnectAckReason::ServiceUnavailable,
                ConnectReturnCode::BadUsernameOrPassword => v3::ConnectAckReason::BadUserNameOrPassword,
                ConnectReturnCode::NotAuthorized => v3::ConnectAckReason::NotAuthorized,
            },
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
        Packet::PubAck(i) => v3::Packet::PublishAck { packet_id: i.0 },
        Packet::PubRec(i) => v3::Packet::PublishReceived { packet_id: i.0 },
        Packet::PubRel(i) => v3::Packet::PublishRelease { packet_id: i.0 },
        Packet::PubComp(i) => v3::Packet::PublishComplete { packet_id: i.0 },
        Packet::SubAck { packet_id, codes } => v3::Packet::SubscribeAck {
            packet_id: packet_id.0,
            status: codes
                .into_iter()
                .map(|c| match c {
                    SubscribeReturnCode::Granted(q) => v3::SubscribeReturnCode::Success(qos_to_wire(q)),
                    SubscribeReturnCode::Failure => v3::SubscribeReturnCode::Failure,
                })
                .collect(),
        },
        Packet::UnsubAck(i) => v3::Packet::UnsubscribeAck { packet_id: i.0 },
        Packet::PingResp => v3::Packet::PingResponse,
        // Client-to-server packets: encoded for completeness (tests, a future bridge).
        Packet::Connect(c) => v3::Packet::Connect(Box::new(v3::Connect {
            protocol: Protocol(if c.version == ProtocolVersion::V31 { 3 } else { 4 }),
            clean_session: c.clean_session,
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
        Packet::Subscribe { packet_id, filters } => v3::Packet::Subscribe {
            packet_id: packet_id.0,
            topic_filters: filters.into_iter().map(|(f, q)| (f, qos_to_wire(q))).collect(),
        },
        Packet::Unsubscribe { packet_id, filters } => {
            v3::Packet::Unsubscribe { packet_id: packet_id.0, topic_filters: filters }
        }
        Packet::PingReq => v3::Packet::PingRequest,
        Packet::Disconnect => v3::Packet::Disconnect,
    }
}

#[cfg(test)]
mod tests;
