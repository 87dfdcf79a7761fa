//! Binary encoding of stored records and keys.
//!
//! Values are a version byte followed by fields in a fixed order: length-prefixed byte strings
//! (u32 big-endian length), big-endian integers, option flags. Keys are compact and sort in the
//! order recovery needs: `client_id ‖ 0x00 ‖ big-endian u64 sequence` for deliveries (so a
//! session's deliveries come back in their original order) and `client_id ‖ 0x00 ‖ big-endian
//! u16` for inbound QoS 2 packet ids. Client ids never contain U+0000 [MQTT-1.5.4-2], so the
//! separator cannot be confused with the id.

use std::num::NonZeroU16;

use bytes::{Buf, BufMut, Bytes, BytesMut};
use bytestring::ByteString;

use super::{DeliveryRecord, DeliveryState, SessionRecord, StoreError, StoredMessage, WillRecord};
use crate::packet::{
    PacketId, ProtocolVersion, PublishProperties, QoS, RetainHandling, SubscriptionOptions, Will,
};
use crate::router::Subscription;
use crate::session::ClientId;

/// Version byte of every value written by this code.
const FORMAT: u8 = 1;

/// Key of a session-scoped record: client id, separator, suffix.
pub fn client_key(client: &ClientId, suffix: &[u8]) -> Vec<u8> {
    let mut key = Vec::with_capacity(client.0.len() + 1 + suffix.len());
    key.extend_from_slice(client.0.as_bytes());
    key.push(0);
    key.extend_from_slice(suffix);
    key
}

/// The range `[start, end)` holding every key of `client` in a client-scoped column family.
pub fn client_range(client: &ClientId) -> (Vec<u8>, Vec<u8>) {
    let mut start = client.0.as_bytes().to_vec();
    start.push(0);
    let mut end = client.0.as_bytes().to_vec();
    end.push(1);
    (start, end)
}

/// Splits a client-scoped key into client id and suffix.
pub fn split_client_key(key: &[u8]) -> Result<(ClientId, &[u8]), StoreError> {
    let at = key.iter().position(|b| *b == 0).ok_or_else(|| corrupt("key without separator"))?;
    let id = std::str::from_utf8(&key[..at]).map_err(|_| corrupt("client id not UTF-8"))?;
    Ok((ClientId::from(id), &key[at + 1..]))
}

pub fn corrupt(what: &str) -> StoreError {
    StoreError::Corrupt(what.to_string())
}

struct Writer(BytesMut);

impl Writer {
    fn new() -> Self {
        let mut buf = BytesMut::with_capacity(64);
        buf.put_u8(FORMAT);
        Writer(buf)
    }
    fn bytes(&mut self, b: &[u8]) {
        self.0.put_u32(b.len() as u32);
        self.0.put_slice(b);
    }
    fn opt_bytes(&mut self, b: Option<&[u8]>) {
        self.0.put_u8(u8::from(b.is_some()));
        if let Some(b) = b {
            self.bytes(b);
        }
    }
    fn u8(&mut self, v: u8) {
        self.0.put_u8(v);
    }
    fn u16(&mut self, v: u16) {
        self.0.put_u16(v);
    }
    fn u32(&mut self, v: u32) {
        self.0.put_u32(v);
    }
    fn u64(&mut self, v: u64) {
        self.0.put_u64(v);
    }
    fn opt_u32(&mut self, v: Option<u32>) {
        self.0.put_u8(u8::from(v.is_some()));
        if let Some(v) = v {
            self.0.put_u32(v);
        }
    }
    fn properties(&mut self, p: &PublishProperties) {
        self.u8(u8::from(p.payload_is_utf8));
        self.opt_u32(p.message_expiry);
        self.opt_bytes(p.response_topic.as_ref().map(|s| &s.as_bytes()[..]));
        self.opt_bytes(p.correlation_data.as_deref());
        self.u32(p.user_properties.len() as u32);
        for (k, v) in &p.user_properties {
            self.bytes(k.as_bytes());
            self.bytes(v.as_bytes());
        }
        self.opt_bytes(p.content_type.as_ref().map(|s| &s.as_bytes()[..]));
    }
    fn finish(self) -> Vec<u8> {
        self.0.to_vec()
    }
}

struct Reader(Bytes);

impl Reader {
    fn new(value: &[u8]) -> Result<Self, StoreError> {
        let mut buf = Bytes::copy_from_slice(value);
        match buf.has_remaining().then(|| buf.get_u8()) {
            Some(FORMAT) => Ok(Reader(buf)),
            Some(other) => Err(StoreError::Corrupt(format!("unknown record format {other}"))),
            None => Err(corrupt("empty record")),
        }
    }
    fn need(&self, n: usize) -> Result<(), StoreError> {
        if self.0.remaining() < n {
            return Err(corrupt("truncated record"));
        }
        Ok(())
    }
    fn bytes(&mut self) -> Result<Bytes, StoreError> {
        self.need(4)?;
        let len = self.0.get_u32() as usize;
        self.need(len)?;
        Ok(self.0.split_to(len))
    }
    fn string(&mut self) -> Result<ByteString, StoreError> {
        ByteString::try_from(self.bytes()?).map_err(|_| corrupt("string not UTF-8"))
    }
    fn flag(&mut self) -> Result<bool, StoreError> {
        Ok(self.u8()? != 0)
    }
    fn opt_bytes(&mut self) -> Result<Option<Bytes>, StoreError> {
        if self.flag()? {
            self.bytes().map(Some)
        } else {
            Ok(None)
        }
    }
    fn opt_string(&mut self) -> Result<Option<ByteString>, StoreError> {
        if self.flag()? {
            self.string().map(Some)
        } else {
            Ok(None)
        }
    }
    fn u8(&mut self) -> Result<u8, StoreError> {
        self.need(1)?;
        Ok(self.0.get_u8())
    }
    fn u16(&mut self) -> Result<u16, StoreError> {
        self.need(2)?;
        Ok(self.0.get_u16())
    }
    fn u32(&mut self) -> Result<u32, StoreError> {
        self.need(4)?;
        Ok(self.0.get_u32())
    }
    fn u64(&mut self) -> Result<u64, StoreError> {
        self.need(8)?;
        Ok(self.0.get_u64())
    }
    fn opt_u32(&mut self) -> Result<Option<u32>, StoreError> {
        if self.flag()? {
            self.u32().map(Some)
        } else {
            Ok(None)
        }
    }
    fn qos(&mut self) -> Result<QoS, StoreError> {
        match self.u8()? {
            0 => Ok(QoS::AtMostOnce),
            1 => Ok(QoS::AtLeastOnce),
            2 => Ok(QoS::ExactlyOnce),
            _ => Err(corrupt("invalid QoS")),
        }
    }
    fn packet_id(&mut self) -> Result<PacketId, StoreError> {
        NonZeroU16::new(self.u16()?).map(PacketId).ok_or_else(|| corrupt("packet id 0"))
    }
    fn properties(&mut self) -> Result<PublishProperties, StoreError> {
        let payload_is_utf8 = self.flag()?;
        let message_expiry = self.opt_u32()?;
        let response_topic = self.opt_string()?;
        let correlation_data = self.opt_bytes()?;
        let count = self.u32()?;
        let mut user_properties = Vec::new();
        for _ in 0..count {
            user_properties.push((self.string()?, self.string()?));
        }
        let content_type = self.opt_string()?;
        Ok(PublishProperties {
            payload_is_utf8,
            message_expiry,
            topic_alias: None,
            response_topic,
            correlation_data,
            user_properties,
            subscription_ids: Vec::new(),
            content_type,
        })
    }
}

pub fn encode_message(m: &StoredMessage) -> Vec<u8> {
    let mut w = Writer::new();
    w.bytes(m.topic.as_bytes());
    w.bytes(&m.payload);
    w.u8(m.qos as u8);
    w.u8(u8::from(m.retain));
    w.properties(&m.properties);
    w.u64(m.received_unix_ms);
    w.opt_bytes(m.origin.as_ref().map(|c| &c.0.as_bytes()[..]));
    w.finish()
}

pub fn decode_message(value: &[u8]) -> Result<StoredMessage, StoreError> {
    let mut r = Reader::new(value)?;
    Ok(StoredMessage {
        topic: r.string()?,
        payload: r.bytes()?,
        qos: r.qos()?,
        retain: r.flag()?,
        properties: r.properties()?,
        received_unix_ms: r.u64()?,
        origin: r.opt_string()?.map(ClientId),
    })
}

fn version_code(v: ProtocolVersion) -> u8 {
    match v {
        ProtocolVersion::V31 => 3,
        ProtocolVersion::V311 => 4,
        ProtocolVersion::V5 => 5,
    }
}

pub fn encode_session(s: &SessionRecord) -> Vec<u8> {
    let mut w = Writer::new();
    w.u8(version_code(s.version));
    w.u32(s.expiry);
    w.u64(s.disconnected_unix_ms.unwrap_or(0));
    w.u32(s.subscriptions.len() as u32);
    for (filter, sub) in &s.subscriptions {
        w.bytes(filter.as_bytes());
        let o = sub.options;
        let handling = match o.retain_handling {
            RetainHandling::OnSubscribe => 0,
            RetainHandling::OnNewSubscribe => 1,
            RetainHandling::Never => 2,
        };
        w.u8(o.qos as u8 | u8::from(o.no_local) << 2 | u8::from(o.retain_as_published) << 3 | handling << 4);
        w.opt_u32(sub.id);
    }
    w.opt_bytes(s.username.as_ref().map(|u| u.as_bytes().as_ref()));
    w.finish()
}

pub fn decode_session(client_id: ClientId, value: &[u8]) -> Result<SessionRecord, StoreError> {
    let mut r = Reader::new(value)?;
    let version = match r.u8()? {
        3 => ProtocolVersion::V31,
        4 => ProtocolVersion::V311,
        5 => ProtocolVersion::V5,
        _ => return Err(corrupt("invalid protocol version")),
    };
    let expiry = r.u32()?;
    let disconnected = r.u64()?;
    let count = r.u32()?;
    let mut subscriptions = std::collections::BTreeMap::new();
    for _ in 0..count {
        let filter = r.string()?;
        let bits = r.u8()?;
        let qos = match bits & 0b11 {
            0 => QoS::AtMostOnce,
            1 => QoS::AtLeastOnce,
            2 => QoS::ExactlyOnce,
            _ => return Err(corrupt("invalid subscription QoS")),
        };
        let retain_handling = match (bits >> 4) & 0b11 {
            0 => RetainHandling::OnSubscribe,
            1 => RetainHandling::OnNewSubscribe,
            _ => RetainHandling::Never,
        };
        let options = SubscriptionOptions {
            qos,
            no_local: bits & 0b100 != 0,
            retain_as_published: bits & 0b1000 != 0,
            retain_handling,
        };
        subscriptions.insert(filter, Subscription { options, id: r.opt_u32()? });
    }
    // Absent in records written before user names were kept.
    let username = if r.0.has_remaining() { r.opt_string()? } else { None };
    Ok(SessionRecord {
        client_id,
        version,
        expiry,
        disconnected_unix_ms: (disconnected != 0).then_some(disconnected),
        subscriptions,
        username,
    })
}

pub fn encode_delivery(d: &DeliveryRecord) -> Vec<u8> {
    let mut w = Writer::new();
    w.u64(d.message);
    w.u8(d.qos as u8);
    w.u8(u8::from(d.retain));
    w.u32(d.subscription_ids.len() as u32);
    for id in &d.subscription_ids {
        w.u32(*id);
    }
    w.opt_bytes(d.shared.as_ref().map(|s| &s.as_bytes()[..]));
    match d.state {
        DeliveryState::Queued => w.u8(0),
        DeliveryState::AwaitingPubAck(id) => {
            w.u8(1);
            w.u16(id.get());
        }
        DeliveryState::AwaitingPubRec(id) => {
            w.u8(2);
            w.u16(id.get());
        }
        DeliveryState::AwaitingPubComp(id) => {
            w.u8(3);
            w.u16(id.get());
        }
    }
    w.finish()
}

pub fn decode_delivery(value: &[u8]) -> Result<DeliveryRecord, StoreError> {
    let mut r = Reader::new(value)?;
    let message = r.u64()?;
    let qos = r.qos()?;
    let retain = r.flag()?;
    let count = r.u32()?;
    let mut subscription_ids = Vec::new();
    for _ in 0..count {
        subscription_ids.push(r.u32()?);
    }
    let shared = r.opt_string()?;
    let state = match r.u8()? {
        0 => DeliveryState::Queued,
        1 => DeliveryState::AwaitingPubAck(r.packet_id()?),
        2 => DeliveryState::AwaitingPubRec(r.packet_id()?),
        3 => DeliveryState::AwaitingPubComp(r.packet_id()?),
        _ => return Err(corrupt("invalid delivery state")),
    };
    Ok(DeliveryRecord { message, qos, retain, subscription_ids, shared, state })
}

pub fn encode_will(w: &WillRecord) -> Vec<u8> {
    let mut out = Writer::new();
    out.bytes(w.will.topic.as_bytes());
    out.bytes(&w.will.payload);
    out.u8(w.will.qos as u8);
    out.u8(u8::from(w.will.retain));
    out.u32(w.will.delay);
    out.properties(&w.will.properties);
    out.u64(w.publish_at_unix_ms);
    out.finish()
}

pub fn decode_will(client_id: ClientId, value: &[u8]) -> Result<WillRecord, StoreError> {
    let mut r = Reader::new(value)?;
    let will = Will {
        topic: r.string()?,
        payload: r.bytes()?,
        qos: r.qos()?,
        retain: r.flag()?,
        delay: r.u32()?,
        properties: r.properties()?,
    };
    Ok(WillRecord { client_id, will, publish_at_unix_ms: r.u64()? })
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use super::*;

    fn properties() -> PublishProperties {
        PublishProperties {
            payload_is_utf8: true,
            message_expiry: Some(30),
            response_topic: Some("reply".into()),
            correlation_data: Some(Bytes::from_static(b"\x00\x01")),
            user_properties: vec![("k".into(), "v".into()), ("k".into(), "w".into())],
            content_type: Some("text/plain".into()),
            ..Default::default()
        }
    }

    #[test]
    fn message_round_trips() {
        let m = StoredMessage {
            topic: "a/b".into(),
            payload: Bytes::from_static(b"\xffpayload"),
            qos: QoS::ExactlyOnce,
            retain: true,
            properties: properties(),
            received_unix_ms: 1_700_000_000_123,
            origin: Some(ClientId::from("pub")),
        };
        assert_eq!(decode_message(&encode_message(&m)).unwrap(), m);
    }

    #[test]
    fn session_round_trips() {
        let options = SubscriptionOptions {
            qos: QoS::AtLeastOnce,
            no_local: true,
            retain_as_published: true,
            retain_handling: RetainHandling::Never,
        };
        let s = SessionRecord {
            client_id: ClientId::from("c"),
            version: ProtocolVersion::V5,
            expiry: u32::MAX,
            disconnected_unix_ms: Some(42),
            subscriptions: BTreeMap::from([
                ("x/#".into(), Subscription { options, id: Some(9) }),
                (
                    "$share/g/y".into(),
                    Subscription { options: SubscriptionOptions::qos(QoS::AtMostOnce), id: None },
                ),
            ]),
            username: Some("alice".into()),
        };
        assert_eq!(decode_session(ClientId::from("c"), &encode_session(&s)).unwrap(), s);
    }

    #[test]
    fn delivery_and_will_round_trip() {
        for state in [
            DeliveryState::Queued,
            DeliveryState::AwaitingPubAck(PacketId(NonZeroU16::new(1).unwrap())),
            DeliveryState::AwaitingPubRec(PacketId(NonZeroU16::new(65535).unwrap())),
            DeliveryState::AwaitingPubComp(PacketId(NonZeroU16::new(7).unwrap())),
        ] {
            let d = DeliveryRecord {
                message: 77,
                qos: QoS::ExactlyOnce,
                retain: false,
                subscription_ids: vec![1, 2],
                shared: Some("$share/g/t".into()),
                state,
            };
            assert_eq!(decode_delivery(&encode_delivery(&d)).unwrap(), d);
        }
        let will = WillRecord {
            client_id: ClientId::from("w"),
            will: Will {
                topic: "gone".into(),
                payload: Bytes::from_static(b"bye"),
                qos: QoS::AtLeastOnce,
                retain: true,
                delay: 10,
                properties: properties(),
            },
            publish_at_unix_ms: 99,
        };
        assert_eq!(decode_will(ClientId::from("w"), &encode_will(&will)).unwrap(), will);
    }

    #[test]
    fn damaged_values_are_errors_not_panics() {
        let good = encode_delivery(&DeliveryRecord {
            message: 1,
            qos: QoS::AtLeastOnce,
            retain: false,
            subscription_ids: vec![],
            shared: None,
            state: DeliveryState::Queued,
        });
        for cut in 0..good.len() {
            assert!(decode_delivery(&good[..cut]).is_err(), "truncated at {cut}");
        }
        assert!(decode_message(&[9, 0, 0]).is_err(), "unknown format version");
    }

    #[test]
    fn client_keys_sort_by_sequence_and_stay_in_range() {
        let c = ClientId::from("c");
        let k1 = client_key(&c, &1u64.to_be_bytes());
        let k2 = client_key(&c, &256u64.to_be_bytes());
        assert!(k1 < k2);
        let (start, end) = client_range(&c);
        assert!(start <= k1 && k2 < end);
        let other = client_key(&ClientId::from("c2"), &0u64.to_be_bytes());
        assert!(!(start <= other && other < end), "another client's keys are outside the range");
        let (client, suffix) = split_client_key(&k2).unwrap();
        assert_eq!((client, suffix), (c, &256u64.to_be_bytes()[..]));
    }
}
