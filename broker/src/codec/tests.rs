//! Codec tests: byte vectors in, packets or named errors out.

use bytes::BytesMut;

use std::num::NonZeroU16;

use super::*;
use crate::packet::{
    Ack, ConnAck, Connect, Disconnect, PacketId, Publish, PublishProperties, QoS, SubscriptionOptions,
};

const CONNECT_311: &[u8] = b"\x10\x0f\x00\x04MQTT\x04\x02\x00\x3c\x00\x03abc";

fn decode_all(bytes: &[u8]) -> Result<Vec<Packet>, CodecError> {
    let mut codec = Codec::new(1024, 4);
    let mut buf = BytesMut::from(bytes);
    let mut packets = Vec::new();
    while let Some(p) = codec.decode(&mut buf)? {
        packets.push(p);
    }
    Ok(packets)
}

fn after_connect(bytes: &[u8]) -> Result<Vec<Packet>, CodecError> {
    let mut all = CONNECT_311.to_vec();
    all.extend_from_slice(bytes);
    decode_all(&all).map(|mut v| v.split_off(1))
}

#[test]
fn connect_311_and_31_decode() {
    let packets = decode_all(CONNECT_311).unwrap();
    let Packet::Connect(c) = &packets[0] else { panic!("{packets:?}") };
    assert_eq!(
        (c.version, c.client_id.as_ref(), c.keep_alive, c.clean_start),
        (ProtocolVersion::V311, "abc", 60, true)
    );
    let packets = decode_all(b"\x10\x11\x00\x06MQIsdp\x03\x02\x00\x3c\x00\x03abc").unwrap();
    let Packet::Connect(c) = &packets[0] else { panic!("{packets:?}") };
    assert_eq!(c.version, ProtocolVersion::V31);
}

#[test]
fn partial_input_waits_for_more() {
    let mut codec = Codec::new(1024, 4);
    let mut buf = BytesMut::new();
    for byte in CONNECT_311 {
        assert!(matches!(codec.decode(&mut buf), Ok(None)));
        buf.extend_from_slice(&[*byte]);
    }
    assert!(matches!(codec.decode(&mut buf), Ok(Some(Packet::Connect(_)))));
}

#[test]
fn first_packet_must_be_connect() {
    // [MQTT-3.1.0-1]
    assert!(matches!(decode_all(b"\xc0\x00"), Err(CodecError::ExpectedConnect)));
}

#[test]
fn unknown_levels_and_names_are_told_apart() {
    // [MQTT-3.1.2-2]: a known name with another level gets CONNACK 0x01.
    let level6 = b"\x10\x0f\x00\x04MQTT\x06\x02\x00\x3c\x00\x03abc";
    assert!(matches!(decode_all(level6), Err(CodecError::UnacceptableProtocolLevel(6))));
    let other = b"\x10\x0f\x00\x04MQTX\x04\x02\x00\x3c\x00\x03abc";
    assert!(matches!(decode_all(other), Err(CodecError::UnknownProtocolName)));
}

#[test]
fn empty_client_id_needs_clean_session() {
    // [MQTT-3.1.3-8]
    assert!(matches!(
        decode_all(b"\x10\x0c\x00\x04MQTT\x04\x00\x00\x3c\x00\x00"),
        Err(CodecError::IdentifierRejected)
    ));
    assert!(decode_all(b"\x10\x0c\x00\x04MQTT\x04\x02\x00\x3c\x00\x00").is_ok());
    // MQTT 3.1: not even with clean session.
    assert!(matches!(
        decode_all(b"\x10\x0e\x00\x06MQIsdp\x03\x02\x00\x3c\x00\x00"),
        Err(CodecError::IdentifierRejected)
    ));
}

#[test]
fn connect_reserved_flag_is_malformed() {
    // [MQTT-3.1.2-3]
    let bad = b"\x10\x0f\x00\x04MQTT\x04\x03\x00\x3c\x00\x03abc";
    assert!(matches!(decode_all(bad), Err(CodecError::Malformed(_))));
}

#[test]
fn size_limit_is_checked_from_the_fixed_header() {
    let mut codec = Codec::new(1024, 4);
    let mut buf = BytesMut::from(CONNECT_311);
    codec.decode(&mut buf).unwrap();
    // PUBLISH announcing 2000 bytes; only the header has arrived.
    buf.extend_from_slice(b"\x30\xd0\x0f");
    assert!(matches!(codec.decode(&mut buf), Err(CodecError::PacketTooLarge { size: 2003, max: 1024 })));
}

#[test]
fn remaining_length_over_four_bytes_is_malformed() {
    assert!(matches!(
        after_connect(b"\x30\xff\xff\xff\xff\x01"),
        Err(CodecError::Malformed(_)) | Err(CodecError::PacketTooLarge { .. })
    ));
}

#[test]
fn pingreq_and_disconnect_must_be_empty() {
    assert_eq!(
        after_connect(b"\xc0\x00\xe0\x00").unwrap(),
        vec![Packet::PingReq, Packet::Disconnect(Disconnect::default())]
    );
    assert!(matches!(after_connect(b"\xc0\x01\x00"), Err(CodecError::Violation(_))));
    assert!(matches!(after_connect(b"\xe0\x01\x00"), Err(CodecError::Violation(_))));
}

#[test]
fn dup_on_qos0_is_refused() {
    // [MQTT-3.3.1-2]
    assert!(matches!(after_connect(b"\x38\x03\x00\x01ax"), Err(CodecError::Violation(_))));
    assert!(after_connect(b"\x30\x03\x00\x01a").is_ok());
}

#[test]
fn qos3_publish_is_malformed() {
    // [MQTT-3.3.1-4]
    assert!(matches!(after_connect(b"\x36\x05\x00\x01a\x00\x01"), Err(CodecError::Malformed(_))));
}

#[test]
fn subscribe_reserved_option_bits_are_refused() {
    // [MQTT-3.8.3-4]
    let ok = after_connect(b"\x82\x06\x00\x01\x00\x01a\x01").unwrap();
    assert_eq!(ok.len(), 1);
    assert!(matches!(after_connect(b"\x82\x06\x00\x01\x00\x01a\x05"), Err(CodecError::Violation(_))));
    // Second filter carries the reserved bit.
    assert!(matches!(
        after_connect(b"\x82\x0a\x00\x01\x00\x01a\x00\x00\x01b\x81"),
        Err(CodecError::Violation(_))
    ));
}

#[test]
fn wrong_fixed_header_flags_are_malformed() {
    // [MQTT-3.6.1-1], [MQTT-3.8.1-1], [MQTT-3.10.1-1]: PUBREL, SUBSCRIBE, UNSUBSCRIBE use 0b0010.
    assert!(matches!(after_connect(b"\x60\x02\x00\x01"), Err(CodecError::Malformed(_))));
    assert!(matches!(after_connect(b"\x80\x06\x00\x01\x00\x01a\x00"), Err(CodecError::Malformed(_))));
    assert!(matches!(after_connect(b"\xa0\x05\x00\x01\x00\x01a"), Err(CodecError::Malformed(_))));
}

#[test]
fn reserved_packet_types_are_malformed() {
    assert!(matches!(after_connect(b"\x00\x00"), Err(CodecError::Malformed(_))));
    assert!(matches!(after_connect(b"\xf0\x00"), Err(CodecError::Malformed(_))));
}

#[test]
fn server_only_packets_from_a_client_are_refused() {
    assert!(matches!(after_connect(b"\x20\x02\x00\x00"), Err(CodecError::Violation(_))));
    assert!(matches!(after_connect(b"\xd0\x00"), Err(CodecError::Violation(_))));
}

#[test]
fn invalid_utf8_topic_is_malformed() {
    // [MQTT-1.5.3-1]
    assert!(matches!(after_connect(b"\x30\x04\x00\x02\xc3\x28"), Err(CodecError::Malformed(_))));
}

#[test]
fn encode_round_trips_through_decode() {
    let publish = publish("a/b", "hello");
    let mut codec = Codec::new(1024, 4);
    let mut buf = BytesMut::from(CONNECT_311);
    codec.decode(&mut buf).unwrap();
    codec.encode(Packet::Publish(Box::new(publish.clone())), &mut buf).unwrap();
    assert_eq!(codec.decode(&mut buf).unwrap(), Some(Packet::Publish(Box::new(publish))));
    let mut out = BytesMut::new();
    let ack = ConnAck { session_present: true, ..ConnAck::refuse(ReasonCode::SUCCESS) };
    codec.encode(Packet::ConnAck(Box::new(ack)), &mut out).unwrap();
    assert_eq!(&out[..], b"\x20\x02\x01\x00");
    // 3.1.1 servers never send DISCONNECT: nothing is written.
    codec.encode(Packet::Disconnect(Disconnect::default()), &mut out).unwrap();
    assert_eq!(out.len(), 4);
}

#[test]
fn password_needs_a_user_name_in_311() {
    // [MQTT-3.1.2-22]
    let bad = b"\x10\x13\x00\x04MQTT\x04\x42\x00\x3c\x00\x03abc\x00\x02pw";
    assert!(matches!(decode_all(bad), Err(CodecError::Violation(_))));
}

fn publish(topic: &str, payload: &'static str) -> Publish {
    Publish {
        dup: true,
        qos: QoS::ExactlyOnce,
        retain: true,
        topic: topic.into(),
        packet_id: Some(PacketId(NonZeroU16::new(9).unwrap())),
        payload: payload.into(),
        properties: PublishProperties::default(),
    }
}

/// MQTT 5 CONNECT: client id "v5", clean start, keep-alive 60, properties: session expiry 120,
/// receive maximum 5, topic alias maximum 3.
const CONNECT_5: &[u8] =
    b"\x10\x1a\x00\x04MQTT\x05\x02\x00\x3c\x0b\x11\x00\x00\x00\x78\x21\x00\x05\x22\x00\x03\x00\x02v5";

fn after_connect_5(bytes: &[u8]) -> Result<Vec<Packet>, CodecError> {
    let mut all = CONNECT_5.to_vec();
    all.extend_from_slice(bytes);
    decode_all(&all).map(|mut v| v.split_off(1))
}

#[test]
fn connect_5_properties_decode() {
    let packets = decode_all(CONNECT_5).unwrap();
    let Packet::Connect(c) = &packets[0] else { panic!("{packets:?}") };
    assert_eq!(c.version, ProtocolVersion::V5);
    assert_eq!((c.session_expiry, c.receive_maximum, c.topic_alias_maximum), (120, 5, 3));
    assert_eq!(c.client_id, "v5");
}

#[test]
fn v5_disconnect_short_form_is_accepted() {
    // E0 00: normal disconnection with no reason code byte, as mosquitto clients send it.
    assert_eq!(after_connect_5(b"\xe0\x00").unwrap(), vec![Packet::Disconnect(Disconnect::default())]);
    let with_will = after_connect_5(b"\xe0\x01\x04").unwrap();
    assert_eq!(
        with_will,
        vec![Packet::Disconnect(Disconnect {
            reason: ReasonCode::DISCONNECT_WITH_WILL,
            ..Default::default()
        })]
    );
}

#[test]
fn v5_topic_alias_is_learned_and_resolved() {
    // PUBLISH QoS 0 "a/b" with alias 2, then "" with alias 2.
    let packets =
        after_connect_5(b"\x30\x09\x00\x03a/b\x03\x23\x00\x02\x30\x06\x00\x00\x03\x23\x00\x02").unwrap();
    for p in &packets {
        let Packet::Publish(p) = p else { panic!("{p:?}") };
        assert_eq!((p.topic.as_ref(), p.properties.topic_alias), ("a/b", None));
    }
}

#[test]
fn v5_topic_alias_above_our_maximum_is_invalid() {
    // [MQTT-3.3.2-9]: our maximum is 4.
    let err = after_connect_5(b"\x30\x09\x00\x03a/b\x03\x23\x00\x05").unwrap_err();
    assert!(matches!(err, CodecError::TopicAliasInvalid(5)));
    assert_eq!(err.reason_code(), ReasonCode::TOPIC_ALIAS_INVALID);
    let err = after_connect_5(b"\x30\x06\x00\x00\x03\x23\x00\x01").unwrap_err();
    assert!(matches!(err, CodecError::Violation(_)), "unknown alias: protocol error");
}

#[test]
fn v5_empty_topic_without_alias_is_a_protocol_error() {
    assert!(matches!(after_connect_5(b"\x30\x03\x00\x00\x00"), Err(CodecError::Violation(_))));
}

#[test]
fn v5_auth_decodes() {
    // AUTH 0x19 (re-authenticate), method "M", data "d".
    let packets = after_connect_5(b"\xf0\x0a\x19\x08\x15\x00\x01M\x16\x00\x01d").unwrap();
    let Packet::Auth(auth) = &packets[0] else { panic!("{packets:?}") };
    assert_eq!(auth.reason, ReasonCode::REAUTHENTICATE);
    assert_eq!(auth.method.as_deref(), Some("M"));
}

#[test]
fn v5_encoding_respects_the_clients_maximum_packet_size() {
    let mut codec = Codec::new(1024, 4);
    codec.decode(&mut BytesMut::from(CONNECT_5)).unwrap();
    codec.set_client_limits(Some(20), 0);
    let mut out = BytesMut::new();
    let small = Packet::Publish(Box::new(publish("t", "x")));
    assert_eq!(codec.encode(small, &mut out).unwrap(), Encoded::Written);
    let written = out.len();
    let large = Packet::Publish(Box::new(publish("t", "0123456789abcdef")));
    assert_eq!(codec.encode(large, &mut out).unwrap(), Encoded::TooLargeForClient);
    assert_eq!(out.len(), written, "nothing of the oversized packet is written");
}

#[test]
fn v5_outbound_aliases_replace_repeated_topics() {
    let mut codec = Codec::new(1024, 4);
    codec.decode(&mut BytesMut::from(CONNECT_5)).unwrap();
    codec.set_client_limits(None, 1);
    let mut first = BytesMut::new();
    codec.encode(Packet::Publish(Box::new(publish("long/topic", "x"))), &mut first).unwrap();
    let mut second = BytesMut::new();
    codec.encode(Packet::Publish(Box::new(publish("long/topic", "x"))), &mut second).unwrap();
    assert_eq!(first.len() - second.len(), "long/topic".len(), "second PUBLISH sends the alias only");
}

#[test]
fn v5_publish_from_a_client_must_not_carry_subscription_identifiers() {
    // [MQTT-3.3.4-6]
    let err = after_connect_5(b"\x30\x06\x00\x01t\x02\x0b\x05").unwrap_err();
    assert!(matches!(err, CodecError::Violation(_)), "{err:?}");
}

/// The direct 3.1.1 PUBLISH writer produces exactly what rmqtt-codec encodes, for each flag
/// combination and for one-, two- and three-byte Remaining Lengths (section 2.2.3).
#[test]
fn v3_publish_fast_path_matches_the_reference_encoder() {
    use tokio_util::codec::Encoder;
    let cases = [
        (QoS::AtMostOnce, None, false, false, 0usize),
        (QoS::AtMostOnce, None, false, true, 16),
        (QoS::AtLeastOnce, Some(1u16), false, false, 100),
        (QoS::AtLeastOnce, Some(65535), true, true, 200),
        (QoS::ExactlyOnce, Some(7), true, false, 20_000),
    ];
    for (qos, id, dup, retain, size) in cases {
        let publish = Publish {
            dup,
            qos,
            retain,
            topic: "sensors/room-1/temperature".into(),
            packet_id: id.map(|i| PacketId(NonZeroU16::new(i).unwrap())),
            payload: vec![0xA5; size].into(),
            properties: PublishProperties::default(),
        };
        let mut fast = BytesMut::new();
        v3::encode(Packet::Publish(Box::new(publish.clone())), &mut fast).unwrap();
        let mut forwarded = BytesMut::new();
        v3::encode(Packet::Forward(forward_of(&publish)), &mut forwarded).unwrap();
        let mut reference = BytesMut::new();
        let wire = v3::to_wire(Packet::Publish(Box::new(publish))).unwrap();
        rmqtt_codec::v3::Codec::new(0).encode(wire, &mut reference).unwrap();
        assert_eq!(fast, reference, "qos {qos:?} id {id:?} dup {dup} retain {retain} payload {size}");
        assert_eq!(forwarded, reference, "forwarded: qos {qos:?} id {id:?} dup {dup} retain {retain}");
    }
}

/// The forwarding form of `publish`: a routed message with the same fields.
fn forward_of(publish: &Publish) -> crate::message::Forward {
    let mut message =
        crate::message::Message::new(publish.topic.clone(), publish.payload.clone(), publish.qos);
    message.properties = publish.properties.clone();
    let mut delivery =
        crate::message::Delivery::new(std::sync::Arc::new(message), publish.qos, publish.retain);
    delivery.subscription_ids.clone_from(&publish.properties.subscription_ids);
    delivery.into_forward(publish.packet_id, publish.dup, tokio::time::Instant::now())
}

#[test]
fn v5_forwarded_publish_is_encoded_with_its_properties_and_aliases() {
    let mut codec = Codec::new(1024, 4);
    codec.decode(&mut BytesMut::from(CONNECT_5)).unwrap();
    codec.set_client_limits(None, 1);
    let mut publish = publish("long/topic", "x");
    publish.properties.subscription_ids = vec![4];
    publish.properties.content_type = Some("text/plain".into());
    let mut direct = BytesMut::new();
    codec.encode(Packet::Publish(Box::new(publish.clone())), &mut direct).unwrap();
    let mut aliased = BytesMut::new();
    codec.encode(Packet::Forward(forward_of(&publish)), &mut aliased).unwrap();
    assert_eq!(
        direct.len() - aliased.len(),
        "long/topic".len(),
        "the alias applies to forwarded PUBLISH too"
    );
    let mut fresh = Codec::new(1024, 4);
    fresh.decode(&mut BytesMut::from(CONNECT_5)).unwrap();
    fresh.set_client_limits(None, 1);
    let mut forwarded = BytesMut::new();
    fresh.encode(Packet::Forward(forward_of(&publish)), &mut forwarded).unwrap();
    assert_eq!(forwarded, direct, "same bytes as the PUBLISH it stands for");
}

/// A client's packets: CONNECT, then QoS 2 PUBLISHes (short and with a two-byte remaining
/// length), PUBREL, SUBSCRIBE and PINGREQ, the mix MQTT.js sends with many messages in flight.
/// Packet ids such as 0xC085 make bodies that look like fixed headers: 0xC0 is PINGREQ's first
/// byte, and 0x85 a remaining-length byte that asks for more.
fn client_packets(connect: &[u8], v5: bool) -> Vec<Vec<u8>> {
    let mut packets = vec![connect.to_vec()];
    for (id, len) in [(0x0001u16, 3usize), (0xC085, 200), (0x0085, 0), (0xE001, 130), (0x8180, 17)] {
        let topic = b"\x00\x03a/b";
        let props: &[u8] = if v5 { b"\x00" } else { b"" };
        let mut publish = vec![0x34];
        put_variable_length(&mut publish, topic.len() + 2 + props.len() + len);
        publish.extend_from_slice(topic);
        publish.extend_from_slice(&id.to_be_bytes());
        publish.extend_from_slice(props);
        publish.extend((0..len).map(|i| i as u8));
        packets.push(publish);
        let [hi, lo] = id.to_be_bytes();
        packets.push(vec![0x62, 0x02, hi, lo]); // PUBREL
        packets.push(b"\xc0\x00".to_vec()); // PINGREQ
    }
    let subscribe: &[u8] =
        if v5 { b"\x82\x07\x00\x09\x00\x00\x01x\x02" } else { b"\x82\x06\x00\x09\x00\x01x\x02" };
    packets.push(subscribe.to_vec());
    packets
}

/// Feeds the packets' bytes in the given chunks, decoding after each one as the connection
/// does; every packet must come out as soon as its last byte is in (nothing waits for bytes
/// that belong to a later packet).
fn decode_chunked(packets: &[Vec<u8>], cuts: &[usize]) -> Vec<String> {
    let stream = packets.concat();
    let ends: Vec<usize> = packets
        .iter()
        .scan(0, |at, p| {
            *at += p.len();
            Some(*at)
        })
        .collect();
    let mut codec = Codec::new(1024, 4);
    let mut buf = BytesMut::new();
    let mut decoded = Vec::new();
    let mut at = 0;
    for &cut in cuts.iter().chain(std::iter::once(&stream.len())) {
        buf.extend_from_slice(&stream[at..cut]);
        at = cut;
        while let Some(p) = codec.decode(&mut buf).unwrap_or_else(|e| panic!("cuts {cuts:?}: {e}")) {
            decoded.push(format!("{p:?}"));
        }
        let complete = ends.iter().filter(|&&end| end <= at).count();
        assert_eq!(decoded.len(), complete, "cuts {cuts:?}: packets complete after {at} bytes");
    }
    decoded
}

/// However the stream is cut into reads (or WebSocket frames), it decodes to the same packets,
/// each as soon as it is complete: every single cut, then random cuttings from a fixed-seed
/// generator.
#[test]
fn any_cutting_of_the_stream_decodes_to_the_same_packets() {
    for (connect, v5) in [(CONNECT_311, false), (CONNECT_5, true)] {
        let packets = client_packets(connect, v5);
        let len = packets.concat().len();
        let whole = decode_chunked(&packets, &[]);
        assert_eq!(whole.len(), packets.len(), "{whole:?}");
        for cut in 1..len {
            assert_eq!(decode_chunked(&packets, &[cut]), whole, "cut at {cut}");
        }
        let mut seed = 0x9e37_79b9_7f4a_7c15u64;
        for _ in 0..500 {
            let mut cuts = Vec::new();
            let mut at = 0;
            loop {
                seed ^= seed << 13;
                seed ^= seed >> 7;
                seed ^= seed << 17;
                at += 1 + (seed % 40) as usize;
                if at >= len {
                    break;
                }
                cuts.push(at);
            }
            assert_eq!(decode_chunked(&packets, &cuts), whole, "cuts {cuts:?}");
        }
    }
}

#[test]
fn v5_property_faults_get_the_spec_reason_codes() {
    // Payload Format Indicator twice: "It is a Protocol Error to include the Payload Format
    // Indicator more than once" (section 3.3.2.3.2).
    let err = after_connect_5(b"\x30\x08\x00\x01t\x04\x01\x01\x01\x01").unwrap_err();
    assert!(matches!(err, CodecError::DuplicateProperty(0x01)), "{err:?}");
    assert_eq!(err.reason_code(), ReasonCode::PROTOCOL_ERROR);
    // User Property may repeat.
    assert_eq!(
        after_connect_5(b"\x30\x10\x00\x01t\x0c\x26\x00\x01k\x00\x00\x26\x00\x01k\x00\x00").unwrap().len(),
        1
    );
    // Topic Alias 0 [MQTT-3.3.2-8].
    let err = after_connect_5(b"\x30\x07\x00\x01t\x03\x23\x00\x00").unwrap_err();
    assert!(matches!(err, CodecError::TopicAliasInvalid(0)), "{err:?}");
    assert_eq!(err.reason_code(), ReasonCode::TOPIC_ALIAS_INVALID);
    // Subscription Identifier 0 in SUBSCRIBE (section 3.8.2.1.2), and twice.
    let err = after_connect_5(b"\x82\x09\x00\x01\x02\x0b\x00\x00\x01a\x00").unwrap_err();
    assert!(matches!(err, CodecError::Violation(_)), "{err:?}");
    assert_eq!(err.reason_code(), ReasonCode::PROTOCOL_ERROR);
    let err = after_connect_5(b"\x82\x0b\x00\x01\x04\x0b\x01\x0b\x02\x00\x01a\x00").unwrap_err();
    assert!(matches!(err, CodecError::DuplicateProperty(0x0b)), "{err:?}");
    // A property SUBSCRIBE cannot carry stays malformed.
    let err = after_connect_5(b"\x82\x09\x00\x01\x02\x01\x01\x00\x01a\x00").unwrap_err();
    assert!(matches!(err, CodecError::Malformed(_)), "{err:?}");
}

#[test]
fn connect_ends_with_its_last_field() {
    // [MQTT-3.1.3-1]: one byte after the client identifier.
    let trailing = b"\x10\x10\x00\x04MQTT\x04\x02\x00\x3c\x00\x03abc\x00";
    assert!(matches!(decode_all(trailing), Err(CodecError::MalformedField(_))));
    let mut v5 = CONNECT_5.to_vec();
    v5[1] += 1;
    v5.push(0);
    assert!(matches!(decode_all(&v5), Err(CodecError::MalformedField(_))));
}

#[test]
fn u0000_in_client_id_or_user_name_is_malformed() {
    // [MQTT-1.5.3-2], [MQTT-1.5.4-2]
    let client_id = b"\x10\x0f\x00\x04MQTT\x04\x02\x00\x3c\x00\x03a\x00c";
    assert!(matches!(decode_all(client_id), Err(CodecError::MalformedField(_))));
    let user_name = b"\x10\x14\x00\x04MQTT\x04\x82\x00\x3c\x00\x03abc\x00\x03u\x00v";
    assert!(matches!(decode_all(user_name), Err(CodecError::MalformedField(_))));
    let clean = b"\x10\x14\x00\x04MQTT\x04\x82\x00\x3c\x00\x03abc\x00\x03uvw";
    assert!(decode_all(clean).is_ok());
}

#[test]
fn v5_message_expiry_zero_reads_as_no_expiry() {
    // PUBLISH QoS 1 "t", id 1, Message Expiry Interval 0 and Content Type "c", payload "x".
    let packets =
        after_connect_5(b"\x32\x10\x00\x01t\x00\x01\x09\x02\x00\x00\x00\x00\x03\x00\x01cx").unwrap();
    let Packet::Publish(p) = &packets[0] else { panic!("{packets:?}") };
    assert_eq!((p.properties.message_expiry, p.properties.content_type.as_deref()), (None, Some("c")));
    assert_eq!((p.packet_id.map(PacketId::get), &p.payload[..]), (Some(1), &b"x"[..]));
    // Taking it out shortens a two-byte Remaining Length (130) to one byte (125).
    let mut big = b"\x30\x82\x01\x00\x01t\x05\x02\x00\x00\x00\x00".to_vec();
    big.extend([7; 121]);
    let packets = after_connect_5(&big).unwrap();
    let Packet::Publish(p) = &packets[0] else { panic!("{packets:?}") };
    assert_eq!((p.properties.message_expiry, p.payload.len()), (None, 121));
    // Any other value is kept.
    let packets = after_connect_5(b"\x30\x0a\x00\x01t\x05\x02\x00\x00\x00\x05x").unwrap();
    let Packet::Publish(p) = &packets[0] else { panic!("{packets:?}") };
    assert_eq!(p.properties.message_expiry, Some(5));
}

#[test]
fn v5_will_message_expiry_zero_reads_as_no_expiry() {
    // Client id "w", will "t"/"x" with Message Expiry Interval 0.
    let connect =
        b"\x10\x1a\x00\x04MQTT\x05\x06\x00\x3c\x00\x00\x01w\x05\x02\x00\x00\x00\x00\x00\x01t\x00\x01x";
    let packets = decode_all(connect).unwrap();
    let Packet::Connect(c) = &packets[0] else { panic!("{packets:?}") };
    let will = c.will.as_ref().expect("will");
    assert_eq!(
        (will.topic.as_ref(), &will.payload[..], will.properties.message_expiry),
        ("t", &b"x"[..], None)
    );
}

#[test]
fn v5_connack_is_checked_against_the_clients_maximum_packet_size() {
    // [MQTT-3.1.2-24]
    let mut codec = Codec::new(1024, 4);
    codec.decode(&mut BytesMut::from(CONNECT_5)).unwrap();
    let connack = ConnAck {
        maximum_packet_size: Some(1024),
        topic_alias_maximum: 4,
        ..ConnAck::refuse(ReasonCode::SUCCESS)
    };
    codec.set_client_limits(Some(8), 0);
    assert!(!codec.fits_client(&connack));
    codec.set_client_limits(Some(16), 0);
    assert!(codec.fits_client(&connack), "13 bytes");
    codec.set_client_limits(None, 0);
    assert!(codec.fits_client(&connack));
}

/// The client side (a bridge): what it encodes a server decodes, and what a server encodes it
/// decodes, for both protocol versions; server-to-client packets are refused the other way.
#[test]
fn client_side_round_trips_with_the_server_side() {
    for version in [ProtocolVersion::V311, ProtocolVersion::V5] {
        let mut client = Codec::client(version, 1 << 20);
        let mut server = Codec::new(1 << 20, 0);
        let connect = Connect {
            version,
            clean_start: false,
            keep_alive: 30,
            client_id: "edge".into(),
            will: None,
            username: Some("u".into()),
            password: Some(bytes::Bytes::from_static(b"p")),
            session_expiry: u32::MAX,
            receive_maximum: 100,
            max_packet_size: None,
            topic_alias_maximum: 0,
            request_response_info: false,
            request_problem_info: true,
            user_properties: Vec::new(),
            auth_method: None,
            auth_data: None,
        };
        let mut wire = BytesMut::new();
        client.encode(Packet::Connect(Box::new(connect)), &mut wire).unwrap();
        let sub =
            SubscriptionOptions { no_local: version.is_v5(), ..SubscriptionOptions::qos(QoS::ExactlyOnce) };
        let id = PacketId(NonZeroU16::new(7).unwrap());
        client
            .encode(
                Packet::Subscribe {
                    packet_id: id,
                    subscription_id: None,
                    filters: vec![("a/#".into(), sub)],
                },
                &mut wire,
            )
            .unwrap();
        client.encode(Packet::PingReq, &mut wire).unwrap();
        let Some(Packet::Connect(c)) = server.decode(&mut wire).unwrap() else { panic!("CONNECT") };
        assert_eq!((c.client_id.as_ref(), c.clean_start, c.keep_alive), ("edge", false, 30));
        let Some(Packet::Subscribe { filters, .. }) = server.decode(&mut wire).unwrap() else {
            panic!("SUBSCRIBE")
        };
        assert_eq!(filters[0].1.no_local, version.is_v5());
        assert!(matches!(server.decode(&mut wire).unwrap(), Some(Packet::PingReq)));

        let mut connack = ConnAck::refuse(ReasonCode::SUCCESS);
        connack.session_present = true;
        connack.receive_maximum = Some(10);
        server.encode(Packet::ConnAck(Box::new(connack)), &mut wire).unwrap();
        server
            .encode(Packet::SubAck { packet_id: id, reasons: vec![ReasonCode::GRANTED_QOS_2] }, &mut wire)
            .unwrap();
        server.encode(Packet::PingResp, &mut wire).unwrap();
        server.encode(Packet::PubAck(Ack::success(id)), &mut wire).unwrap();
        let Some(Packet::ConnAck(ack)) = client.decode(&mut wire).unwrap() else { panic!("CONNACK") };
        assert!(ack.session_present && ack.reason == ReasonCode::SUCCESS);
        if version.is_v5() {
            assert_eq!(ack.receive_maximum, Some(10));
        }
        let Some(Packet::SubAck { reasons, .. }) = client.decode(&mut wire).unwrap() else {
            panic!("SUBACK")
        };
        assert_eq!(reasons, vec![ReasonCode::GRANTED_QOS_2]);
        assert!(matches!(client.decode(&mut wire).unwrap(), Some(Packet::PingResp)));
        assert!(matches!(client.decode(&mut wire).unwrap(), Some(Packet::PubAck(a)) if a.packet_id == id));

        // The client's DISCONNECT is written in both versions (a 3.1.1 server sends none).
        let mut wire = BytesMut::new();
        client.encode(Packet::Disconnect(Disconnect::default()), &mut wire).unwrap();
        assert!(matches!(server.decode(&mut wire).unwrap(), Some(Packet::Disconnect(_))));

        // A server does not send PINGREQ.
        let mut wire = BytesMut::from(&b"\xc0\x00"[..]);
        assert!(matches!(client.decode(&mut wire), Err(CodecError::Violation(_))));
    }
}

/// Mosquitto's bridge bit (`try_private`): level 0x84 decodes as 3.1.1 from a bridge, and the
/// client side sets it on the CONNECT it encodes.
#[test]
fn the_bridge_bit_marks_a_311_connect_from_a_bridge() {
    let mut client = Codec::client(ProtocolVersion::V311, 0);
    let connect = Connect {
        version: ProtocolVersion::V311,
        clean_start: false,
        keep_alive: 30,
        client_id: "edge".into(),
        will: None,
        username: None,
        password: None,
        session_expiry: 0,
        receive_maximum: 10,
        max_packet_size: None,
        topic_alias_maximum: 0,
        request_response_info: false,
        request_problem_info: true,
        user_properties: Vec::new(),
        auth_method: None,
        auth_data: None,
    };
    let mut wire = BytesMut::new();
    client.encode(Packet::Connect(Box::new(connect)), &mut wire).unwrap();
    assert_eq!(wire[8], 4, "protocol level after the 2-byte header and \"MQTT\": {wire:?}");
    mark_bridge_connect(&mut wire);
    assert_eq!(wire[8], 0x84);
    let mut server = Codec::new(0, 0);
    let Some(Packet::Connect(c)) = server.decode(&mut wire).unwrap() else { panic!("CONNECT") };
    assert_eq!((c.version, c.client_id.as_ref()), (ProtocolVersion::V311, "edge"));
    assert!(server.peer_is_bridge());
    let mut plain = Codec::new(0, 0);
    let mut wire = BytesMut::from(&b"\x10\x10\x00\x04MQTT\x04\x02\x00\x1e\x00\x04edge"[..]);
    assert!(matches!(plain.decode(&mut wire).unwrap(), Some(Packet::Connect(_))));
    assert!(!plain.peer_is_bridge());
}
