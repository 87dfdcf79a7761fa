//! Checks on a whole frame before rmqtt-codec decodes it: rules of the packet format the
//! decoder does not check, and MQTT 5 property rules it gets wrong. It reports every property
//! fault as Malformed Packet, where the spec makes a repeated property or a Subscription
//! Identifier of 0 a Protocol Error and a Topic Alias of 0 "Topic Alias invalid".
//!
//! A scan reads the body of one frame (everything after the fixed header) and allocates
//! nothing. What it finds cut short is malformed, as the decoder would find it too.

use rmqtt_codec::error::DecodeError;

use super::CodecError;

/// Property identifiers (section 2.2.2.2) the scans look at or allow.
const PAYLOAD_FORMAT_INDICATOR: u8 = 0x01;
const MESSAGE_EXPIRY_INTERVAL: u8 = 0x02;
const CONTENT_TYPE: u8 = 0x03;
const RESPONSE_TOPIC: u8 = 0x08;
const CORRELATION_DATA: u8 = 0x09;
const SUBSCRIPTION_IDENTIFIER: u8 = 0x0B;
const TOPIC_ALIAS: u8 = 0x23;
const USER_PROPERTY: u8 = 0x26;

/// The properties a client may send in each packet (sections 3.3.2.3, 3.8.2.1). Any other identifier is a Malformed Packet.
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

/// MQTT 3.1/3.1.1 frames: SUBSCRIBE.
pub(super) fn v3(first_byte: u8, body: &[u8]) -> Result<(), CodecError> {
    match first_byte {
        super::SUBSCRIBE_HEADER => subscribe_options_v3(body),
        _ => Ok(()),
    }
}

/// MQTT 5 frames: PUBLISH and SUBSCRIBE.
pub(super) fn v5(first_byte: u8, body: &[u8]) -> Result<(), CodecError> {
    match first_byte {
        0x30..=0x3F => publish(first_byte, body),
        super::SUBSCRIBE_HEADER => subscribe(body),
        _ => Ok(()),
    }
}

/// MQTT 5 PUBLISH (section 3.3.2): Topic Alias 0 is invalid [MQTT-3.3.2-8]; a client sends no
/// Subscription Identifier [MQTT-3.3.4-6].
fn publish(first_byte: u8, body: &[u8]) -> Result<(), CodecError> {
    let mut r = Reader { body, at: 0 };
    r.field()?; // topic name
    if first_byte & 0b0110 != 0 {
        r.u16()?; // packet identifier, QoS 1 and 2 (QoS 3 is left to the decoder)
    }
    properties(&mut r, PUBLISH_PROPERTIES, |p| match p.id {
        TOPIC_ALIAS if p.value == 0 => Err(CodecError::TopicAliasInvalid(0)),
        SUBSCRIPTION_IDENTIFIER => {
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
/// 3). `check` sees each property.
fn properties(
    r: &mut Reader<'_>,
    allowed: &[u8],
    mut check: impl FnMut(&Property) -> Result<(), CodecError>,
) -> Result<(), CodecError> {
    let block_len = r.variable_length()?;
    let block_start = r.at;
    let end = block_start.checked_add(block_len as usize).ok_or_else(truncated)?;
    let mut p = Reader { body: r.body.get(..end).ok_or_else(truncated)?, at: block_start };
    r.at = end;
    let mut seen = 0u64; // one bit per identifier: all are below 64
    while p.at < end {
        let id = p.u8()?;
        if !allowed.contains(&id) {
            return Err(CodecError::Malformed(DecodeError::MalformedPacket));
        }
        if id != USER_PROPERTY && seen & (1 << id) != 0 {
            return Err(CodecError::DuplicateProperty(id));
        }
        seen |= 1 << id;
        let value = match id {
            PAYLOAD_FORMAT_INDICATOR => u32::from(p.u8()?),
            TOPIC_ALIAS => u32::from(p.u16()?),
            MESSAGE_EXPIRY_INTERVAL => p.u32()?,
            SUBSCRIPTION_IDENTIFIER => p.variable_length()?,
            USER_PROPERTY => {
                p.field()?;
                p.field()?;
                0
            }
            // The strings and binary data: Content Type, Response Topic, Correlation Data.
            _ => {
                p.field()?;
                0
            }
        };
        check(&Property { id, value })?;
    }
    Ok(())
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
