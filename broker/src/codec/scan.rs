//! Checks on a whole frame before rmqtt-codec decodes it: rules of the packet format the
//! decoder does not check, and MQTT 5 property rules it gets wrong. It reports every property
//! fault as Malformed Packet, where the spec makes a repeated property or a Subscription
//! Identifier of 0 a Protocol Error and a Topic Alias of 0 "Topic Alias invalid", and it refuses
//! a Message Expiry Interval of 0, which is a valid value.
//!
//! A scan reads the body of one frame (everything after the fixed header) and allocates
//! nothing; only a frame with a property to drop is copied. What a scan finds cut short is
//! malformed, as the decoder would find it too.

use bytes::{BufMut, BytesMut};
use rmqtt_codec::error::DecodeError;

use super::{put_variable_length, CodecError};

/// Property identifiers (section 2.2.2.2) the scans look at or allow.
const PAYLOAD_FORMAT_INDICATOR: u8 = 0x01;
const MESSAGE_EXPIRY_INTERVAL: u8 = 0x02;
const CONTENT_TYPE: u8 = 0x03;
const RESPONSE_TOPIC: u8 = 0x08;
const CORRELATION_DATA: u8 = 0x09;
const SUBSCRIPTION_IDENTIFIER: u8 = 0x0B;
const SESSION_EXPIRY_INTERVAL: u8 = 0x11;
const AUTHENTICATION_METHOD: u8 = 0x15;
const AUTHENTICATION_DATA: u8 = 0x16;
const REQUEST_PROBLEM_INFORMATION: u8 = 0x17;
const WILL_DELAY_INTERVAL: u8 = 0x18;
const REQUEST_RESPONSE_INFORMATION: u8 = 0x19;
const RECEIVE_MAXIMUM: u8 = 0x21;
const TOPIC_ALIAS_MAXIMUM: u8 = 0x22;
const TOPIC_ALIAS: u8 = 0x23;
const USER_PROPERTY: u8 = 0x26;
const MAXIMUM_PACKET_SIZE: u8 = 0x27;

/// The properties a client may send in each packet (sections 3.1.2.11, 3.1.3.2, 3.3.2.3,
/// 3.8.2.1). Any other identifier is a Malformed Packet.
const CONNECT_PROPERTIES: &[u8] = &[
    SESSION_EXPIRY_INTERVAL,
    RECEIVE_MAXIMUM,
    MAXIMUM_PACKET_SIZE,
    TOPIC_ALIAS_MAXIMUM,
    REQUEST_RESPONSE_INFORMATION,
    REQUEST_PROBLEM_INFORMATION,
    USER_PROPERTY,
    AUTHENTICATION_METHOD,
    AUTHENTICATION_DATA,
];
const WILL_PROPERTIES: &[u8] = &[
    WILL_DELAY_INTERVAL,
    PAYLOAD_FORMAT_INDICATOR,
    MESSAGE_EXPIRY_INTERVAL,
    CONTENT_TYPE,
    RESPONSE_TOPIC,
    CORRELATION_DATA,
    USER_PROPERTY,
];
const PUBLISH_PROPERTIES: &[u8] = &[
    PAYLOAD_FORMAT_INDICATOR,
    MESSAGE_EXPIRY_INTERVAL,
    TOPIC_ALIAS,
    RESPONSE_TOPIC,
    CORRELATION_DATA,
    USER_PROPERTY,
    SUBSCRIPTION_IDENTIFIER,
    CONTENT_TYPE,
];
const SUBSCRIBE_PROPERTIES: &[u8] = &[SUBSCRIPTION_IDENTIFIER, USER_PROPERTY];

/// CONNECT flags (section 3.1.2.3).
const WILL_FLAG: u8 = 0b0000_0100;
const PASSWORD_FLAG: u8 = 0b0100_0000;
const USER_NAME_FLAG: u8 = 0b1000_0000;

/// A property to take out of the frame before decoding: a Message Expiry Interval of 0, which
/// the decoder refuses. Tern reads 0 as Mosquitto does, as if the property were absent (the
/// message does not expire), so dropping it is the whole treatment. Offsets are in the body.
#[derive(Debug)]
pub(super) struct Removal {
    /// Where the property block's length (a Variable Byte Integer) starts.
    block_at: usize,
    /// The property block's length, and where its properties start.
    block_len: u32,
    block_start: usize,
    /// The property, identifier included.
    at: usize,
    len: usize,
}

impl Removal {
    /// The frame of `body` without the property: its property block and the packet shrink by
    /// the property's size.
    pub(super) fn frame(&self, first_byte: u8, body: &[u8]) -> BytesMut {
        let mut rest = Vec::with_capacity(body.len());
        rest.extend_from_slice(&body[..self.block_at]);
        // The property lies inside the block (the scan found it there): no underflow.
        put_variable_length(&mut rest, self.block_len as usize - self.len);
        rest.extend_from_slice(&body[self.block_start..self.at]);
        rest.extend_from_slice(&body[self.at + self.len..]);
        let mut frame = BytesMut::with_capacity(5 + rest.len());
        frame.put_u8(first_byte);
        put_variable_length(&mut frame, rest.len());
        frame.extend_from_slice(&rest);
        frame
    }
}

/// MQTT 3.1/3.1.1 frames: CONNECT and SUBSCRIBE.
pub(super) fn v3(first_byte: u8, body: &[u8]) -> Result<(), CodecError> {
    match first_byte {
        super::CONNECT_HEADER => connect(body, false).map(|_| ()),
        super::SUBSCRIBE_HEADER => subscribe_options_v3(body),
        _ => Ok(()),
    }
}

/// MQTT 5 frames: CONNECT, PUBLISH and SUBSCRIBE; `Some` names a property to drop.
/// `from_server`: the frame came from a server (a bridge's upstream), whose PUBLISH may carry
/// Subscription Identifiers [MQTT-3.3.4-3].
pub(super) fn v5(first_byte: u8, body: &[u8], from_server: bool) -> Result<Option<Removal>, CodecError> {
    match first_byte {
        super::CONNECT_HEADER => connect(body, true),
        0x30..=0x3F => publish(first_byte, body, from_server),
        super::SUBSCRIBE_HEADER => subscribe(body).map(|()| None),
        _ => Ok(None),
    }
}

/// CONNECT (section 3.1), every field: bytes after the last one the flags announce make it
/// malformed [MQTT-3.1.3-1] [MQTT-3.1.4-1], and so does U+0000 in the client identifier or user
/// name ([MQTT-1.5.4-2]; [MQTT-1.5.3-2] in 3.1.1). MQTT 5: the CONNECT and will property rules.
fn connect(body: &[u8], v5: bool) -> Result<Option<Removal>, CodecError> {
    let mut r = Reader { body, at: 0 };
    r.field()?; // protocol name and level: checked before the codec was chosen
    r.u8()?;
    let flags = r.u8()?;
    r.u16()?; // keep alive
    if v5 {
        properties(&mut r, CONNECT_PROPERTIES, |_| Ok(()))?;
    }
    if r.field()?.contains(&0) {
        return Err(CodecError::MalformedField("client identifier contains U+0000 [MQTT-1.5.4-2]"));
    }
    let mut removal = None;
    if flags & WILL_FLAG != 0 {
        if v5 {
            removal = properties(&mut r, WILL_PROPERTIES, |_| Ok(()))?;
        }
        r.field()?; // will topic, checked after decoding
        r.field()?; // will payload
    }
    if flags & USER_NAME_FLAG != 0 && r.field()?.contains(&0) {
        return Err(CodecError::MalformedField("user name contains U+0000 [MQTT-1.5.4-2]"));
    }
    if flags & PASSWORD_FLAG != 0 {
        r.field()?;
    }
    if r.at != body.len() {
        return Err(CodecError::MalformedField("bytes after the last CONNECT field [MQTT-3.1.3-1]"));
    }
    Ok(removal)
}

/// MQTT 5 PUBLISH (section 3.3.2): Topic Alias 0 is invalid [MQTT-3.3.2-8]; a client sends no
/// Subscription Identifier [MQTT-3.3.4-6].
fn publish(first_byte: u8, body: &[u8], from_server: bool) -> Result<Option<Removal>, CodecError> {
    let mut r = Reader { body, at: 0 };
    r.field()?; // topic name
    if first_byte & 0b0110 != 0 {
        r.u16()?; // packet identifier, QoS 1 and 2 (QoS 3 is left to the decoder)
    }
    properties(&mut r, PUBLISH_PROPERTIES, |p| match p.id {
        TOPIC_ALIAS if p.value == 0 => Err(CodecError::TopicAliasInvalid(0)),
        SUBSCRIPTION_IDENTIFIER if !from_server => {
            Err(CodecError::Violation("Subscription Identifier in a client PUBLISH [MQTT-3.3.4-6]"))
        }
        _ => Ok(()),
    })
}

/// MQTT 5 SUBSCRIBE (section 3.8.2.1.2): "It is a Protocol Error if the Subscription
/// Identifier has a value of 0".
fn subscribe(body: &[u8]) -> Result<(), CodecError> {
    let mut r = Reader { body, at: 0 };
    r.u16()?; // packet identifier
    properties(&mut r, SUBSCRIBE_PROPERTIES, |p| match p.id {
        SUBSCRIPTION_IDENTIFIER if p.value == 0 => {
            Err(CodecError::Violation("Subscription Identifier 0 (section 3.8.2.1.2)"))
        }
        _ => Ok(()),
    })
    .map(|_| ())
}

/// Rejects 3.1.1 SUBSCRIBE option bytes with reserved bits set [MQTT-3.8.3-4]. Framing errors
/// are left to the decoder, which reports them as malformed.
fn subscribe_options_v3(body: &[u8]) -> Result<(), CodecError> {
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

/// One property of a block.
struct Property {
    id: u8,
    /// The value of an integer property; 0 for strings and binary data.
    value: u32,
}

/// Reads the property block at `r` (section 2.2.2): every identifier must be one of `allowed`
/// (else the packet is malformed) and none but User Property may appear twice ("It is a
/// Protocol Error to include the same property twice", stated for each property in section
/// 3). `check` sees each property. Returns the Message Expiry Interval of 0 to drop, if any.
fn properties(
    r: &mut Reader<'_>,
    allowed: &[u8],
    mut check: impl FnMut(&Property) -> Result<(), CodecError>,
) -> Result<Option<Removal>, CodecError> {
    let block_at = r.at;
    let block_len = r.variable_length()?;
    let block_start = r.at;
    let end = block_start.checked_add(block_len as usize).ok_or_else(truncated)?;
    let mut p = Reader { body: r.body.get(..end).ok_or_else(truncated)?, at: block_start };
    r.at = end;
    let mut seen = 0u64; // one bit per identifier: all are below 64
    let mut removal = None;
    while p.at < end {
        let at = p.at;
        let id = p.u8()?;
        if !allowed.contains(&id) {
            return Err(CodecError::Malformed(DecodeError::MalformedPacket));
        }
        if id != USER_PROPERTY && seen & (1 << id) != 0 {
            return Err(CodecError::DuplicateProperty(id));
        }
        seen |= 1 << id;
        let value = match id {
            PAYLOAD_FORMAT_INDICATOR | REQUEST_PROBLEM_INFORMATION | REQUEST_RESPONSE_INFORMATION => {
                u32::from(p.u8()?)
            }
            RECEIVE_MAXIMUM | TOPIC_ALIAS_MAXIMUM | TOPIC_ALIAS => u32::from(p.u16()?),
            MESSAGE_EXPIRY_INTERVAL | SESSION_EXPIRY_INTERVAL | WILL_DELAY_INTERVAL | MAXIMUM_PACKET_SIZE => {
                p.u32()?
            }
            SUBSCRIPTION_IDENTIFIER => p.variable_length()?,
            USER_PROPERTY => {
                p.field()?;
                p.field()?;
                0
            }
            // The strings and binary data: Content Type, Response Topic, Correlation Data,
            // Authentication Method and Data.
            _ => {
                p.field()?;
                0
            }
        };
        let property = Property { id, value };
        check(&property)?;
        if id == MESSAGE_EXPIRY_INTERVAL && value == 0 {
            removal = Some(Removal { block_at, block_len, block_start, at, len: p.at - at });
        }
    }
    Ok(removal)
}

fn truncated() -> CodecError {
    CodecError::Malformed(DecodeError::InvalidLength)
}

/// Reads the fields of a body; each read past its end is malformed.
struct Reader<'a> {
    body: &'a [u8],
    at: usize,
}

impl<'a> Reader<'a> {
    fn take(&mut self, n: usize) -> Result<&'a [u8], CodecError> {
        let bytes = self.body.get(self.at..self.at + n).ok_or_else(truncated)?;
        self.at += n;
        Ok(bytes)
    }

    fn u8(&mut self) -> Result<u8, CodecError> {
        Ok(self.take(1)?[0])
    }

    fn u16(&mut self) -> Result<u16, CodecError> {
        let b = self.take(2)?;
        Ok(u16::from_be_bytes([b[0], b[1]]))
    }

    fn u32(&mut self) -> Result<u32, CodecError> {
        let b = self.take(4)?;
        Ok(u32::from_be_bytes([b[0], b[1], b[2], b[3]]))
    }

    /// A UTF-8 string or binary data: two-byte length, then the bytes (sections 1.5.4, 1.5.6).
    fn field(&mut self) -> Result<&'a [u8], CodecError> {
        let len = self.u16()?;
        self.take(usize::from(len))
    }

    /// A Variable Byte Integer: at most four bytes (section 1.5.5).
    fn variable_length(&mut self) -> Result<u32, CodecError> {
        let mut value = 0;
        for i in 0..4 {
            let byte = self.u8()?;
            value |= u32::from(byte & 0x7F) << (7 * i);
            if byte & 0x80 == 0 {
                return Ok(value);
            }
        }
        Err(CodecError::Malformed(DecodeError::InvalidLength))
    }
}
