//! However a client's byte stream is cut into reads (or WebSocket frames), it decodes to the same
//! packets. The input describes a CONNECT and a sequence of valid client packets (3.1.1 or 5),
//! which Tern's own encoder writes (MQTT 5 PUBLISHes with properties and topic aliases), and
//! the places where the stream is cut. Checks:
//! - decoding the pieces gives the same packets and the same ending as decoding the whole
//!   (guards the fixed bug where rmqtt-codec kept a half-read fixed header as its state);
//! - without a size limit, the whole stream decodes to exactly the packets generated.
#![no_main]

use arbitrary::Arbitrary;
use bytes::{Bytes, BytesMut};
use bytestring::ByteString;
use libfuzzer_sys::fuzz_target;
use std::num::NonZeroU16;
use std::sync::Arc;
use tern::codec::Codec;
use tern::message::{Delivery, Message};
use tern::packet::{
    Ack, Auth, Disconnect, Packet, PacketId, Publish, PublishProperties, QoS, ReasonCode, RetainHandling,
    SubscriptionOptions,
};
use tern_fuzz::{connect, decode_pieces, End, MAX_SIZES};

#[derive(Arbitrary, Debug)]
struct Input {
    v5: bool,
    connect_variant: u8,
    /// Below 128: no size limit; otherwise one of `MAX_SIZES`.
    max_size: u8,
    /// Topic aliases the generating side may use (MQTT 5), at most 7.
    aliases: u8,
    packets: Vec<Spec>,
    cuts: Vec<u16>,
}

#[derive(Arbitrary, Debug)]
enum Topic {
    Known(u8),
    Any(String),
}

const TOPICS: [&str; 6] = ["a", "a/b", "sensors/room-1/temperature", "$SYS/x", "a/+/#", "é/ü"];

impl Topic {
    fn get(&self) -> ByteString {
        match self {
            Topic::Known(i) => TOPICS[usize::from(*i) % TOPICS.len()].into(),
            Topic::Any(s) if s.is_empty() => "t".into(),
            Topic::Any(s) => s.chars().take(64).collect::<String>().into(),
        }
    }
}

#[derive(Arbitrary, Debug)]
struct Props {
    expiry: Option<u32>,
    utf8: bool,
    content_type: Option<String>,
    response_topic: Option<String>,
    correlation: Option<Vec<u8>>,
    user: Vec<(String, String)>,
}

#[derive(Arbitrary, Debug)]
enum Spec {
    Publish {
        qos: u8,
        dup: bool,
        retain: bool,
        topic: Topic,
        id: u16,
        size: u16,
        props: Option<Props>,
        forward: bool,
    },
    PubAck(u16, u8),
    PubRec(u16, u8),
    PubRel(u16, u8),
    PubComp(u16, u8),
    Subscribe {
        id: u16,
        subscription_id: Option<u32>,
        filters: Vec<(Topic, u8)>,
    },
    Unsubscribe {
        id: u16,
        filters: Vec<Topic>,
    },
    PingReq,
    Disconnect {
        reason: u8,
        session_expiry: Option<u32>,
    },
    Auth {
        reason: u8,
        method: Option<String>,
        data: Option<Vec<u8>>,
    },
}

fn id(n: u16) -> PacketId {
    PacketId(NonZeroU16::new(n.max(1)).unwrap_or(NonZeroU16::MIN))
}

fn pick(codes: &[u8], n: u8) -> ReasonCode {
    ReasonCode(codes[usize::from(n) % codes.len()])
}

fn short(s: &str) -> ByteString {
    s.chars().take(32).collect::<String>().into()
}

const PUBACK_CODES: [u8; 9] = [0x00, 0x10, 0x80, 0x83, 0x87, 0x90, 0x91, 0x97, 0x99];
const PUBREL_CODES: [u8; 2] = [0x00, 0x92];
const DISCONNECT_CODES: [u8; 9] = [0x00, 0x04, 0x80, 0x81, 0x82, 0x83, 0x87, 0x90, 0x93];
const AUTH_CODES: [u8; 3] = [0x00, 0x18, 0x19];

/// The packet a spec stands for, in the form the decoder produces for this version; `None`
/// where the version has no such client packet (3.1.1 AUTH).
fn build(spec: &Spec, v5: bool) -> Option<(Packet, bool)> {
    let ack = |n: u16, code: u8, codes: &[u8]| Ack {
        packet_id: id(n),
        reason: if v5 { pick(codes, code) } else { ReasonCode::SUCCESS },
    };
    Some(match spec {
        Spec::Publish { qos, dup, retain, topic, id: n, size, props, forward } => {
            let qos = match qos % 3 {
                0 => QoS::AtMostOnce,
                1 => QoS::AtLeastOnce,
                _ => QoS::ExactlyOnce,
            };
            let properties = match (props, v5) {
                (Some(p), true) => PublishProperties {
                    payload_is_utf8: p.utf8,
                    message_expiry: p.expiry.filter(|e| *e > 0),
                    topic_alias: None,
                    response_topic: p.response_topic.as_deref().map(short).filter(|t| !t.is_empty()),
                    correlation_data: p.correlation.clone().map(Bytes::from),
                    user_properties: p.user.iter().take(4).map(|(k, v)| (short(k), short(v))).collect(),
                    subscription_ids: Vec::new(),
                    content_type: p.content_type.as_deref().map(short),
                },
                _ => PublishProperties::default(),
            };
            let publish = Publish {
                dup: *dup && qos != QoS::AtMostOnce,
                qos,
                retain: *retain,
                topic: topic.get(),
                packet_id: (qos != QoS::AtMostOnce).then(|| id(*n)),
                payload: (0..usize::from(*size % 2048)).map(|i| i as u8).collect::<Vec<u8>>().into(),
                properties,
            };
            (Packet::Publish(Box::new(publish)), *forward)
        }
        Spec::PubAck(n, c) => (Packet::PubAck(ack(*n, *c, &PUBACK_CODES)), false),
        Spec::PubRec(n, c) => (Packet::PubRec(ack(*n, *c, &PUBACK_CODES)), false),
        Spec::PubRel(n, c) => (Packet::PubRel(ack(*n, *c, &PUBREL_CODES)), false),
        Spec::PubComp(n, c) => (Packet::PubComp(ack(*n, *c, &PUBREL_CODES)), false),
        Spec::Subscribe { id: n, subscription_id, filters } => {
            let mut list: Vec<_> = filters
                .iter()
                .take(8)
                .map(|(topic, o)| {
                    let qos = match o & 3 {
                        0 => QoS::AtMostOnce,
                        1 => QoS::AtLeastOnce,
                        _ => QoS::ExactlyOnce,
                    };
                    let options = if v5 {
                        SubscriptionOptions {
                            qos,
                            no_local: o & 4 != 0,
                            retain_as_published: o & 8 != 0,
                            retain_handling: match (o >> 4) % 3 {
                                0 => RetainHandling::OnSubscribe,
                                1 => RetainHandling::OnNewSubscribe,
                                _ => RetainHandling::Never,
                            },
                        }
                    } else {
                        SubscriptionOptions::qos(qos)
                    };
                    (topic.get(), options)
                })
                .collect();
            if list.is_empty() {
                list.push(("a/#".into(), SubscriptionOptions::qos(QoS::AtLeastOnce)));
            }
            let subscription_id = subscription_id.filter(|_| v5).map(|s| s % 268_435_455 + 1);
            (Packet::Subscribe { packet_id: id(*n), subscription_id, filters: list }, false)
        }
        Spec::Unsubscribe { id: n, filters } => {
            let mut list: Vec<ByteString> = filters.iter().take(8).map(Topic::get).collect();
            if list.is_empty() {
                list.push("a/#".into());
            }
            (Packet::Unsubscribe { packet_id: id(*n), filters: list }, false)
        }
        Spec::PingReq => (Packet::PingReq, false),
        Spec::Disconnect { reason, session_expiry } => {
            let disconnect = if v5 {
                Disconnect {
                    reason: pick(&DISCONNECT_CODES, *reason),
                    session_expiry: *session_expiry,
                    reason_string: None,
                }
            } else {
                Disconnect::default()
            };
            (Packet::Disconnect(disconnect), false)
        }
        Spec::Auth { reason, method, data } => {
            if !v5 {
                return None;
            }
            let auth = Auth {
                reason: pick(&AUTH_CODES, *reason),
                method: method.as_deref().map(short),
                data: data.clone().map(Bytes::from),
            };
            (Packet::Auth(auth), false)
        }
    })
}

fuzz_target!(|input: Input| {
    let alias_max = u16::from(input.aliases % 8);
    let max = if input.max_size < 128 { 0 } else { MAX_SIZES[usize::from(input.max_size % 8)] };
    let hello = connect(input.v5, input.connect_variant);
    // The writing side: Tern's codec after this CONNECT, allowed `alias_max` topic aliases.
    let mut writer = Codec::new(0, 0);
    let Ok(Some(_)) = writer.decode(&mut BytesMut::from(&hello[..])) else { panic!("seed CONNECT refused") };
    writer.set_client_limits(None, alias_max);
    let mut stream = BytesMut::from(&hello[..]);
    let mut expected = Vec::new();
    for spec in input.packets.iter().take(64) {
        let Some((packet, forward)) = build(spec, input.v5) else { continue };
        match (&packet, input.v5) {
            // A 3.1.1 server never writes DISCONNECT: the client's form is two bytes.
            (Packet::Disconnect(_), false) => stream.extend_from_slice(b"\xe0\x00"),
            (Packet::Publish(p), _) if forward => {
                let mut message = Message::new(p.topic.clone(), p.payload.clone(), p.qos);
                message.properties = p.properties.clone();
                let delivery = Delivery::new(Arc::new(message), p.qos, p.retain);
                let now = delivery.message.received;
                let packet = Packet::Forward(delivery.into_forward(p.packet_id, p.dup, now));
                writer.encode(packet, &mut stream).expect("encode a forwarded PUBLISH");
            }
            _ => {
                writer.encode(packet.clone(), &mut stream).expect("encode a client packet");
            }
        }
        expected.push(packet);
    }
    let mut cuts: Vec<usize> = input.cuts.iter().map(|c| usize::from(*c) % (stream.len() + 1)).collect();
    cuts.sort_unstable();
    cuts.dedup();

    let (whole, end, _) = decode_pieces(&stream, &[], max, alias_max);
    let (pieces, pieces_end, _) = decode_pieces(&stream, &cuts, max, alias_max);
    assert_eq!(pieces, whole, "cut at {cuts:?}: other packets");
    assert_eq!(pieces_end, end, "cut at {cuts:?}: other ending");
    if max == 0 {
        assert_eq!(end, End::NeedMore(0), "generated stream refused");
        assert_eq!(whole.len(), expected.len() + 1, "packets lost");
        for (decoded, generated) in whole[1..].iter().zip(&expected) {
            assert_eq!(decoded, generated);
        }
    }
});
