//! Codec tests: byte vectors in, packets or named errors out.

use bytes::BytesMut;

use super::*;

const CONNECT_311: &[u8] = b"\x10\x0f\x00\x04MQTT\x04\x02\x00\x3c\x00\x03abc";

fn decode_all(bytes: &[u8]) -> Result<Vec<Packet>, CodecError> {
    let mut codec = Codec::new(1024);
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
        (c.version, c.client_id.as_ref(), c.keep_alive, c.clean_session),
        (ProtocolVersion::V311, "abc", 60, true)
    );
    let packets = decode_all(b"\x10\x11\x00\x06MQIsdp\x03\x02\x00\x3c\x00\x03abc").unwrap();
    let Packet::Connect(c) = &packets[0] else { panic!("{packets:?}") };
    assert_eq!(c.version, ProtocolVersion::V31);
}

#[test]
fn partial_input_waits_for_more() {
    let mut codec = Codec::new(1024);
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
    let v5 = b"\x10\x10\x00\x04MQTT\x05\x02\x00\x3c\x00\x00\x03abc";
    assert!(matches!(decode_all(v5), Err(CodecError::UnacceptableProtocolLevel(5))));
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
}

#[test]
fn connect_reserved_flag_is_malformed() {
    // [MQTT-3.1.2-3]
    let bad = b"\x10\x0f\x00\x04MQTT\x04\x03\x00\x3c\x00\x03abc";
    assert!(matches!(decode_all(bad), Err(CodecError::Malformed(_))));
}

#[test]
fn size_limit_is_checked_from_the_fixed_header() {
    let mut codec = Codec::new(1024);
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
    assert_eq!(after_connect(b"\xc0\x00\xe0\x00").unwrap(), vec![Packet::PingReq, Packet::Disconnect]);
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
    let publish = Publish {
        dup: true,
        qos: QoS::ExactlyOnce,
        retain: true,
        topic: "a/b".into(),
        packet_id: Some(PacketId(NonZeroU16::new(9).unwrap())),
        payload: "hello".into(),
    };
    let mut codec = Codec::new(1024);
    let mut buf = BytesMut::from(CONNECT_311);
    codec.decode(&mut buf).unwrap();
    codec.encode(Packet::Publish(publish.clone()), &mut buf).unwrap();
    assert_eq!(codec.decode(&mut buf).unwrap(), Some(Packet::Publish(publish)));
    let mut out = BytesMut::new();
    codec
        .encode(Packet::ConnAck { session_present: true, code: ConnectReturnCode::Accepted }, &mut out)
        .unwrap();
    assert_eq!(&out[..], b"\x20\x02\x01\x00");
}

#[test]
fn password_needs_a_user_name_in_311() {
    // [MQTT-3.1.2-22]
    let bad = b"\x10\x13\x00\x04MQTT\x04\x42\x00\x3c\x00\x03abc\x00\x02pw";
    assert!(matches!(decode_all(bad), Err(CodecError::Violation(_))));
}
