//! Wire codec: bytes <-> [`Packet`], for MQTT 3.1, 3.1.1 and 5.0.
//!
//! Decoding is delegated to `rmqtt-codec` (see docs/decisions/0001-codec.md for why); this module
//! and its `v3`/`v5` converters are the only places that name it. On top of it Tern adds what
//! that decoder leaves to the broker:
//! - the first packet must be CONNECT, and its protocol name/level pick the decoder (an unknown
//!   level is answered with CONNACK 0x01/0x84 by the caller, not a silent close) [MQTT-3.1.2-2];
//! - the maximum packet size is checked from the fixed header, before the body is buffered;
//! - a Message Expiry Interval of 0 (PUBLISH, will) is valid: read as no expiry, as Mosquitto
//!   reads it, and taken out before the decoder, which refuses it, sees the frame;
//! - CONNECT ends with its last field [MQTT-3.1.3-1], and its client identifier and user name
//!   hold no U+0000 [MQTT-1.5.4-2];
//! - reserved bits of SUBSCRIBE options must be zero in 3.1.1 [MQTT-3.8.3-4];
//! - MQTT 5 properties: a repeated property and a Subscription Identifier of 0 are Protocol
//!   Errors, a Topic Alias of 0 is "Topic Alias invalid" (the decoder would call each of them
//!   malformed); a client PUBLISH carries no Subscription Identifier [MQTT-3.3.4-6];
//! - PINGREQ (and 3.1.1 DISCONNECT) have remaining length 0;
//! - DUP must be 0 on a QoS 0 PUBLISH [MQTT-3.3.1-2];
//! - MQTT 5 topic aliases, both ways: inbound aliases are resolved here, so the broker only
//!   ever sees full topic names; outbound topics get aliases while the client allows more;
//! - the client's Maximum Packet Size: a packet that would exceed it is not written;
//! - Mosquitto's bridge bit: a 3.x CONNECT with protocol level 0x80 | 3 or 0x80 | 4 comes from a
//!   bridge (`try_private`); the bit is cleared before the decoder sees it and the connection
//!   learns it from `peer_is_bridge`.
//!
//! One `Codec` per connection: the decoder and the alias tables are per-connection state.
//!
//! `Codec::client` is the other direction, for the connections this broker opens itself (a
//! bridge to an upstream server): it encodes what a client sends and decodes what a server
//! sends (CONNACK, SUBACK, UNSUBACK, PINGRESP are accepted, CONNECT, SUBSCRIBE, UNSUBSCRIBE and
//! PINGREQ are refused), without the checks above that concern a client's CONNECT.

mod alias;
mod scan;
mod v3;
mod v5;

use bytes::{Buf, BufMut, BytesMut};
use rmqtt_codec::error::{DecodeError, EncodeError};
use tokio_util::codec::{Decoder, Encoder};

use crate::packet::{ConnAck, Packet, ProtocolVersion, ReasonCode};
use alias::{InboundAliases, OutboundAliases};

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
    /// Empty client identifier: with clean session 0 in 3.1.1 [MQTT-3.1.3-8], always in 3.1.
    #[error("empty client identifier refused (3.1.1: without clean session [MQTT-3.1.3-8]; 3.1)")]
    IdentifierRejected,
    /// The fixed header announced more than the configured maximum.
    #[error("packet of {size} bytes exceeds max_packet_size {max}")]
    PacketTooLarge { size: u64, max: u32 },
    /// The bytes do not form a valid packet.
    #[error("malformed packet: {0}")]
    Malformed(DecodeError),
    /// A field breaks a rule of the packet format that the decoder does not check.
    #[error("malformed packet: {0}")]
    MalformedField(&'static str),
    /// A well-formed packet that breaks a rule the decoder does not check.
    #[error("protocol violation: {0}")]
    Violation(&'static str),
    /// A topic alias of 0, above our maximum, or unknown [MQTT-3.3.2-8], [MQTT-3.3.2-9].
    #[error("invalid topic alias {0} [MQTT-3.3.2-9]")]
    TopicAliasInvalid(u16),
    /// An MQTT 5 property other than User Property included twice: a Protocol Error, as the
    /// description of each property says (section 3).
    #[error("property {0:#04x} included more than once")]
    DuplicateProperty(u8),
    /// The outbound packet could not be encoded (a broker bug, never peer input).
    #[error("encode failed: {0}")]
    Encode(#[from] EncodeError),
}

impl CodecError {
    /// The MQTT 5 reason code for a DISCONNECT (or CONNACK) reporting this error.
    pub fn reason_code(&self) -> ReasonCode {
        match self {
            CodecError::Malformed(_) | CodecError::MalformedField(_) => ReasonCode::MALFORMED_PACKET,
            CodecError::PacketTooLarge { .. } => ReasonCode::PACKET_TOO_LARGE,
            CodecError::TopicAliasInvalid(_) => ReasonCode::TOPIC_ALIAS_INVALID,
            CodecError::UnacceptableProtocolLevel(_) => ReasonCode::UNSUPPORTED_PROTOCOL_VERSION,
            CodecError::IdentifierRejected => ReasonCode::CLIENT_IDENTIFIER_NOT_VALID,
            CodecError::Encode(_) => ReasonCode::IMPLEMENTATION_SPECIFIC_ERROR,
            CodecError::ExpectedConnect
            | CodecError::UnknownProtocolName
            | CodecError::Violation(_)
            | CodecError::DuplicateProperty(_) => ReasonCode::PROTOCOL_ERROR,
        }
    }
}

/// What became of a packet handed to `encode`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Encoded {
    Written,
    /// Larger than the client's Maximum Packet Size: not written [MQTT-3.1.2-24].
    TooLargeForClient,
}

enum State {
    /// No CONNECT yet: the protocol level decides which decoder follows.
    AwaitingConnect,
    V3(rmqtt_codec::v3::Codec),
    V5(rmqtt_codec::v5::Codec),
}

/// Per-connection MQTT codec.
pub struct Codec {
    state: State,
    max_packet_size: u32,
    /// Largest packet the client accepts (MQTT 5 CONNECT); 0 = no limit.
    client_max_packet_size: u32,
    inbound_aliases: InboundAliases,
    outbound_aliases: OutboundAliases,
    /// The peer is a server: this side is the client (`Codec::client`).
    peer_is_server: bool,
    /// The client's CONNECT carried Mosquitto's bridge bit.
    peer_is_bridge: bool,
}

/// Mosquitto's bridge bit: set in a 3.x CONNECT's protocol level by a bridge with
/// `try_private`, so the server does not send the bridge's own publishes back to it.
const BRIDGE_BIT: u8 = 0x80;

/// Where the protocol level is in a CONNECT frame that starts at `frame[0]`.
fn connect_level_at(frame: &[u8]) -> Option<usize> {
    // The remaining length: 1 to 4 bytes after the first.
    let header_len = 1 + frame.iter().skip(1).take(4).position(|b| b & 0x80 == 0)? + 1;
    let name_len = usize::from(u16::from_be_bytes([*frame.get(header_len)?, *frame.get(header_len + 1)?]));
    let at = header_len + 2 + name_len;
    (at < frame.len()).then_some(at)
}

/// Sets the bridge bit in the protocol level of the CONNECT that `frame` starts with (a 3.1.1
/// bridge's `try_private`).
pub fn mark_bridge_connect(frame: &mut [u8]) {
    if let Some(at) = connect_level_at(frame) {
        frame[at] |= BRIDGE_BIT;
    }
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
    /// `max_packet_size` counts the whole packet, fixed header included (as MQTT 5 defines it);
    /// `topic_alias_maximum` is the most inbound aliases we accept (0 = none).
    pub fn new(max_packet_size: u32, topic_alias_maximum: u16) -> Self {
        Codec {
            state: State::AwaitingConnect,
            max_packet_size,
            client_max_packet_size: 0,
            inbound_aliases: InboundAliases::new(topic_alias_maximum),
            outbound_aliases: OutboundAliases::new(0),
            peer_is_server: false,
            peer_is_bridge: false,
        }
    }

    /// The client side of a connection to a server that speaks `version` (3.1.1 or 5.0): no
    /// CONNECT is awaited, server packets decode, and neither side uses topic aliases (the
    /// CONNECT we send announces Topic Alias Maximum 0, so an alias from the server is invalid).
    pub fn client(version: ProtocolVersion, max_packet_size: u32) -> Self {
        let state = match version {
            ProtocolVersion::V5 => State::V5(rmqtt_codec::v5::Codec::new(max_packet_size, 0)),
            _ => State::V3(rmqtt_codec::v3::Codec::new(max_packet_size)),
        };
        Codec {
            state,
            max_packet_size,
            client_max_packet_size: 0,
            inbound_aliases: InboundAliases::new(0),
            outbound_aliases: OutboundAliases::new(0),
            peer_is_server: true,
            peer_is_bridge: false,
        }
    }

    /// The client's CONNECT carried Mosquitto's bridge bit (protocol level 0x83 or 0x84).
    pub fn peer_is_bridge(&self) -> bool {
        self.peer_is_bridge
    }

    /// The server's Maximum Packet Size from its CONNACK (client side): a larger packet is not
    /// written [MQTT-3.2.2-15].
    pub fn set_server_max_packet_size(&mut self, max_packet_size: Option<u32>) {
        self.client_max_packet_size = max_packet_size.unwrap_or(0);
    }

    /// The client's limits from its CONNECT: packet size and how many topic aliases it takes.
    pub fn set_client_limits(&mut self, max_packet_size: Option<u32>, topic_alias_maximum: u16) {
        self.client_max_packet_size = max_packet_size.unwrap_or(0);
        self.outbound_aliases = OutboundAliases::new(topic_alias_maximum);
    }

    /// True when `connack` is within the client's Maximum Packet Size [MQTT-3.1.2-24]; checked
    /// before the session is claimed, as a CONNACK cannot be left out the way a PUBLISH can.
    pub fn fits_client(&mut self, connack: &ConnAck) -> bool {
        let mut scratch = BytesMut::new();
        !matches!(
            self.encode(Packet::ConnAck(Box::new(connack.clone())), &mut scratch),
            Ok(Encoded::TooLargeForClient)
        )
    }

    /// Decodes the next packet from `src`, or `Ok(None)` when more bytes are needed.
    pub fn decode(&mut self, src: &mut BytesMut) -> Result<Option<Packet>, CodecError> {
        let Some(header) = self.peek_header(src)? else { return Ok(None) };
        if matches!(self.state, State::AwaitingConnect) && header.first_byte != CONNECT_HEADER {
            return Err(CodecError::ExpectedConnect);
        }
        // The inner decoders are handed whole frames only. Given part of one, they consume its
        // fixed header and keep it as state, and the next `peek_header` would read the body as
        // a header: over WebSocket, where MQTT.js sends a packet's header and body in separate
        // frames, that misread packets and stalled QoS 2 flows. Not reserving the announced
        // length here either: a header alone must not make us allocate up to the maximum.
        if src.len() < header.total_len() {
            return Ok(None);
        }
        if let State::AwaitingConnect = self.state {
            if let Some(at) = connect_level_at(&src[..header.total_len()]) {
                if matches!(src[at], 0x83 | 0x84) {
                    src[at] &= !BRIDGE_BIT;
                    self.peer_is_bridge = true;
                }
            }
            // The underlying limits count the remaining length only; ours is checked above.
            self.state = match check_protocol(&src[header.header_len..header.total_len()])? {
                ProtocolVersion::V5 => State::V5(rmqtt_codec::v5::Codec::new(self.max_packet_size, 0)),
                _ => State::V3(rmqtt_codec::v3::Codec::new(self.max_packet_size)),
            };
        }
        let body = &src[header.header_len..header.total_len()];
        let packet = match &mut self.state {
            State::V3(inner) => {
                if !self.peer_is_server {
                    scan::v3(header.first_byte, body)?;
                }
                let Some((packet, _)) = inner.decode(src).map_err(map_decode_error)? else { return Ok(None) };
                if header.first_byte == DISCONNECT_HEADER && header.remaining != 0 {
                    return Err(CodecError::Violation("DISCONNECT with a non-zero remaining length"));
                }
                v3::from_wire(packet, self.peer_is_server)?
            }
            State::V5(inner) => {
                // The decoder gets a copy without the property the scan says to drop.
                let mut rewritten = match scan::v5(header.first_byte, body, self.peer_is_server)? {
                    Some(removal) => {
                        let frame = removal.frame(header.first_byte, body);
                        src.advance(header.total_len());
                        Some(frame)
                    }
                    None => None,
                };
                let frame = rewritten.as_mut().unwrap_or(src);
                let Some((packet, _)) = inner.decode(frame).map_err(map_decode_error)? else {
                    return Ok(None);
                };
                v5::from_wire(packet, self.peer_is_server)?
            }
            State::AwaitingConnect => unreachable!("state chosen above"),
        };
        if header.first_byte == PINGREQ_HEADER && header.remaining != 0 {
            return Err(CodecError::Violation("PINGREQ with a non-zero remaining length"));
        }
        match packet {
            Packet::Publish(mut publish) => {
                if publish.dup && publish.qos == crate::packet::QoS::AtMostOnce {
                    return Err(CodecError::Violation("DUP set on a QoS 0 PUBLISH [MQTT-3.3.1-2]"));
                }
                self.inbound_aliases.resolve(&mut publish)?;
                Ok(Some(Packet::Publish(publish)))
            }
            other => Ok(Some(other)),
        }
    }

    /// Whether `src` starts with a whole packet (or with bytes that cannot start one, which
    /// `decode` reports).
    pub fn holds_complete_packet(&self, src: &[u8]) -> bool {
        match self.peek_header(src) {
            Ok(Some(header)) => src.len() >= header.total_len(),
            Ok(None) => false,
            Err(_) => true,
        }
    }

    /// The whole size of the packet at the front of `src` when only part of it is there.
    pub fn incomplete_frame(&self, src: &[u8]) -> Option<usize> {
        let header = self.peek_header(src).ok()??;
        (src.len() < header.total_len()).then_some(header.total_len())
    }

    /// Appends the encoding of `packet` to `dst`, unless it exceeds the client's maximum.
    pub fn encode(&mut self, packet: Packet, dst: &mut BytesMut) -> Result<Encoded, CodecError> {
        let packet = self.without_reason_string_if_too_large(packet);
        self.encode_packet(packet, dst)
    }

    /// A Reason String is for humans and optional: it is left out of a CONNACK or DISCONNECT
    /// that it would make larger than the client accepts [MQTT-3.2.2-19] [MQTT-3.14.2-3].
    fn without_reason_string_if_too_large(&mut self, packet: Packet) -> Packet {
        let has_reason_string = match &packet {
            Packet::ConnAck(ack) => ack.reason_string.is_some(),
            Packet::Disconnect(disconnect) => disconnect.reason_string.is_some(),
            _ => false,
        };
        if !has_reason_string || self.client_max_packet_size == 0 {
            return packet;
        }
        let mut scratch = BytesMut::new();
        if !matches!(self.encode_packet(packet.clone(), &mut scratch), Ok(Encoded::TooLargeForClient)) {
            return packet;
        }
        match packet {
            Packet::ConnAck(mut ack) => {
                ack.reason_string = None;
                Packet::ConnAck(ack)
            }
            Packet::Disconnect(mut disconnect) => {
                disconnect.reason_string = None;
                Packet::Disconnect(disconnect)
            }
            other => other,
        }
    }

    fn encode_packet(&mut self, packet: Packet, dst: &mut BytesMut) -> Result<Encoded, CodecError> {
        let start = dst.len();
        let mut new_alias = None;
        let packet = match (packet, &self.state) {
            // An MQTT 5 PUBLISH carries properties and may get a topic alias: built in full.
            (Packet::Forward(forward), State::V5(_)) => Packet::Publish(Box::new(forward.into_publish())),
            (packet, _) => packet,
        };
        match &mut self.state {
            State::V5(inner) => {
                let packet = match packet {
                    Packet::Publish(mut publish) => {
                        new_alias = self.outbound_aliases.apply(&mut publish);
                        Packet::Publish(publish)
                    }
                    other => other,
                };
                inner.encode(v5::to_wire(packet), dst)?
            }
            // A client's 3.1.1 DISCONNECT (servers send none in 3.1.1, so `v3` writes none).
            State::V3(_) if self.peer_is_server && matches!(packet, Packet::Disconnect(_)) => {
                dst.put_slice(&[DISCONNECT_HEADER, 0x00]);
            }
            // Replies to a refused CONNECT are encoded before a version was chosen: 3.1.1 format.
            State::V3(_) | State::AwaitingConnect => v3::encode(packet, dst)?,
        }
        let limit = self.client_max_packet_size as usize;
        if limit != 0 && dst.len() - start > limit {
            dst.truncate(start);
            if let Some(topic) = new_alias {
                self.outbound_aliases.unassign(&topic);
            }
            return Ok(Encoded::TooLargeForClient);
        }
        Ok(Encoded::Written)
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
        // A remaining length longer than four bytes [MQTT-1.5.5-1].
        Err(CodecError::Malformed(DecodeError::InvalidLength))
    }
}

/// Appends `n` as a Variable Byte Integer (section 1.5.5), as Remaining Lengths and property
/// lengths are written. `n` fits its four bytes: packets are within the maximum packet size.
fn put_variable_length(dst: &mut impl BufMut, mut n: usize) {
    loop {
        let byte = (n % 128) as u8;
        n /= 128;
        if n == 0 {
            dst.put_u8(byte);
            return;
        }
        dst.put_u8(byte | 0x80);
    }
}

fn map_decode_error(e: DecodeError) -> CodecError {
    match e {
        DecodeError::InvalidClientId => CodecError::IdentifierRejected,
        other => CodecError::Malformed(other),
    }
}

/// Validates the protocol name and level of a CONNECT body and returns the version.
fn check_protocol(body: &[u8]) -> Result<ProtocolVersion, CodecError> {
    let truncated = || CodecError::Malformed(DecodeError::InvalidLength);
    let name_len = match body {
        [hi, lo, ..] => usize::from(u16::from_be_bytes([*hi, *lo])),
        _ => return Err(truncated()),
    };
    let name = body.get(2..2 + name_len).ok_or_else(truncated)?;
    let level = *body.get(2 + name_len).ok_or_else(truncated)?;
    let version = match (name, level) {
        (b"MQTT", 5) => return Ok(ProtocolVersion::V5),
        (b"MQTT", 4) => ProtocolVersion::V311,
        (b"MQIsdp", 3) => ProtocolVersion::V31,
        (b"MQTT", _) | (b"MQIsdp", _) => return Err(CodecError::UnacceptableProtocolLevel(level)),
        _ => return Err(CodecError::UnknownProtocolName),
    };
    // 3.x only: MQTT 5 allows a password without a user name.
    let flags = body.get(3 + name_len).copied().unwrap_or(0);
    if flags & 0b0100_0000 != 0 && flags & 0b1000_0000 == 0 {
        return Err(CodecError::Violation("password flag set without user name flag [MQTT-3.1.2-22]"));
    }
    Ok(version)
}

#[cfg(test)]
mod tests;
