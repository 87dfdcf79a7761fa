//! Area 07: malformed and forbidden input. Each case: the offending connection is closed
//! without any answer, another connected client is unaffected and new clients can connect.
//! Bytes are sent over a plain TcpStream (rumqttc's codec is too lenient to produce them).

use std::time::{Duration, Instant};

use client_tests::pkt::{packet, Connect};
use client_tests::*;

fn connect_with(f: impl FnOnce(&mut Connect)) -> Vec<u8> {
    let mut c = Connect::new("bad-connect");
    f(&mut c);
    c.encode()
}

bad_input_tests! {
    // [MQTT-3.1.0-1] the first packet must be CONNECT.
    pingreq_before_connect_closed: connected = false, bytes = pkt::pingreq();
    publish_before_connect_closed: connected = false, bytes = pkt::publish("a", 0, false, false, 0, b"x");
    subscribe_before_connect_closed: connected = false, bytes = pkt::subscribe(1, &[("a", 0)]);
    disconnect_before_connect_closed: connected = false, bytes = pkt::disconnect();
    // [MQTT-3.1.0-2] a second CONNECT is a protocol violation.
    second_connect_closed: connected = true, bytes = Connect::new("again").encode();
    // [MQTT-2.2.1] reserved packet types 0 and 15.
    packet_type_0_closed: connected = true, bytes = vec![0x00, 0x00];
    packet_type_15_closed: connected = true, bytes = vec![0xf0, 0x00];
    packet_type_0_before_connect_closed: connected = false, bytes = vec![0x00, 0x00];
    // [MQTT-2.2.2-2] reserved fixed-header flags must be as specified.
    pubrel_flags_0000_closed: connected = true, bytes = packet(0x60, &[0, 1]);         // [MQTT-3.6.1-1]
    pubrel_flags_0011_closed: connected = true, bytes = packet(0x63, &[0, 1]);         // [MQTT-3.6.1-1]
    subscribe_flags_0000_closed: connected = true, bytes = packet(0x80, &[0, 1, 0, 1, b'a', 0]); // [MQTT-3.8.1-1]
    subscribe_flags_0011_closed: connected = true, bytes = packet(0x83, &[0, 1, 0, 1, b'a', 0]); // [MQTT-3.8.1-1]
    unsubscribe_flags_0000_closed: connected = true, bytes = packet(0xa0, &[0, 1, 0, 1, b'a']); // [MQTT-3.10.1-1]
    puback_flags_0010_closed: connected = true, bytes = packet(0x42, &[0, 1]);          // [MQTT-2.2.2-2]
    pingreq_flags_closed: connected = true, bytes = vec![0xc1, 0x00];                   // [MQTT-2.2.2-2]
    disconnect_flags_closed: connected = true, bytes = vec![0xe2, 0x00];                // [MQTT-2.2.2-2]
    connect_fixed_header_flags_closed: connected = false, bytes = {
        let mut c = Connect::new("flags");
        c.header = 0x12;
        c.encode()
    };
    // [MQTT-3.1.2-3] CONNECT reserved flag bit 0 must be 0.
    connect_reserved_bit_closed: connected = false, bytes = connect_with(|c| c.extra_flags = 0x01);
    // [MQTT-3.1.2-13] will flag 0 => will QoS 0; [MQTT-3.1.2-15] => will retain 0.
    connect_will_qos_without_will_closed: connected = false, bytes = connect_with(|c| c.extra_flags = 0x08);
    connect_will_retain_without_will_closed: connected = false, bytes = connect_with(|c| c.extra_flags = 0x20);
    // [MQTT-3.1.2-14] will QoS 3 is invalid.
    connect_will_qos3_closed: connected = false, bytes = connect_with(|c| {
        c.will = Some(pkt::Will { topic: b"w".to_vec(), payload: b"x".to_vec(), qos: 3, retain: false });
    });
    // [MQTT-3.1.2-22] password flag without username flag.
    connect_password_without_username_closed: connected = false, bytes = connect_with(|c| c.password = Some(b"pw".to_vec()));
    // [MQTT-3.1.3-4] [MQTT-1.5.3-1] client id must be valid UTF-8.
    connect_client_id_invalid_utf8_closed: connected = false, bytes = connect_with(|c| c.client_id = b"id\xff".to_vec());
    // [MQTT-3.1.2-1] wrong protocol name (the server MAY close: Tern closes).
    connect_bad_protocol_name_closed: connected = false, bytes = connect_with(|c| c.proto_name = b"MQTX".to_vec());
    // [MQTT-3.1.3-10] the will topic is a topic name: no wildcards [MQTT-4.7.1-1].
    connect_will_topic_wildcard_closed: connected = false, bytes = connect_with(|c| {
        c.will = Some(pkt::Will { topic: b"w/#".to_vec(), payload: b"x".to_vec(), qos: 0, retain: false });
    });
    // CONNECT cut short: payload shorter than the flags announce (client id missing).
    connect_truncated_payload_closed: connected = false, bytes = packet(0x10, &[0, 4, b'M', b'Q', b'T', b'T', 4, 2, 0, 60]);
    // [MQTT-3.12] [MQTT-3.14] PINGREQ / DISCONNECT have remaining length 0.
    pingreq_nonzero_length_closed: connected = true, bytes = vec![0xc0, 0x01, 0x00];
    disconnect_nonzero_length_closed: connected = true, bytes = vec![0xe0, 0x01, 0x00];
    // [MQTT-3.3.1-4] PUBLISH QoS 3.
    publish_qos3_closed: connected = true, bytes = packet(0x36, &[0, 1, b'a', 0, 1, b'x']);
    // [MQTT-3.3.1-2] DUP must be 0 for QoS 0.
    publish_dup_on_qos0_closed: connected = true, bytes = pkt::publish("a", 0, false, true, 0, b"x");
    // [MQTT-2.3.1-1] QoS > 0 PUBLISH / SUBSCRIBE / UNSUBSCRIBE need a non-zero packet id.
    publish_qos1_packet_id_0_closed: connected = true, bytes = pkt::publish("a", 1, false, false, 0, b"x");
    publish_qos2_packet_id_0_closed: connected = true, bytes = pkt::publish("a", 2, false, false, 0, b"x");
    subscribe_packet_id_0_closed: connected = true, bytes = pkt::subscribe(0, &[("a", 0)]);
    unsubscribe_packet_id_0_closed: connected = true, bytes = pkt::unsubscribe(0, &["a"]);
    // [MQTT-3.8.3-4] SUBSCRIBE options: reserved bits set, or requested QoS 3.
    subscribe_option_reserved_bits_closed: connected = true, bytes = pkt::subscribe(1, &[("a", 0x04)]);
    subscribe_option_high_bits_closed: connected = true, bytes = pkt::subscribe(1, &[("a", 0x81)]);
    subscribe_requested_qos3_closed: connected = true, bytes = pkt::subscribe(1, &[("a", 3)]);
    // [MQTT-3.8.3-3] SUBSCRIBE with no filters; [MQTT-3.10.3-2] UNSUBSCRIBE with none.
    subscribe_no_filters_closed: connected = true, bytes = packet(0x82, &[0, 1]);
    unsubscribe_no_filters_closed: connected = true, bytes = packet(0xa2, &[0, 1]);
    // SUBSCRIBE filter without its options byte.
    subscribe_missing_options_byte_closed: connected = true, bytes = packet(0x82, &[0, 1, 0, 1, b'a']);
    // [MQTT-1.5.3] string length beyond the packet: topic length 5 in a 3-byte body.
    publish_topic_length_overruns_packet_closed: connected = true, bytes = packet(0x30, &[0, 5, b'a']);
    // QoS 1 PUBLISH too short to hold its packet id.
    publish_missing_packet_id_closed: connected = true, bytes = packet(0x32, &[0, 1, b'a', 0]);
    // Acks with the wrong remaining length.
    puback_length_3_closed: connected = true, bytes = packet(0x40, &[0, 1, 0]);
    pubrec_length_1_closed: connected = true, bytes = packet(0x50, &[0]);
    // Remaining length encoded in more than 4 bytes (2.2.3).
    remaining_length_5_bytes_closed: connected = true, bytes = vec![0x30, 0xff, 0xff, 0xff, 0xff, 0x7f];
    // Server-to-client packets sent by a client are protocol violations [MQTT-4.8.0-1].
    client_sends_connack_closed: connected = true, bytes = vec![0x20, 0x02, 0x00, 0x00];
    client_sends_suback_closed: connected = true, bytes = vec![0x90, 0x03, 0x00, 0x01, 0x00];
    client_sends_pingresp_closed: connected = true, bytes = vec![0xd0, 0x00];
    client_sends_unsuback_closed: connected = true, bytes = vec![0xb0, 0x02, 0x00, 0x01];
}

// max_packet_size: the connection is closed as soon as the fixed header announces a larger
// packet, without waiting for (or needing) the body.
#[tokio::test]
async fn oversized_packet_closed_on_header_alone() {
    let b = Broker::start_with("[mqtt]\nmax_packet_size = 1024\n");
    let mut r = Raw::connected(b.addr(), "big", true).await;
    let start = Instant::now();
    // PUBLISH announcing 100,000 bytes; nothing else is sent.
    let mut hdr = vec![0x30];
    hdr.extend(pkt::varint(100_000));
    r.send(&hdr).await;
    r.expect_closed(Duration::from_secs(3)).await;
    assert!(start.elapsed() < Duration::from_secs(3));
    assert_broker_alive(b.addr()).await;
}

// max_packet_size boundary: a packet just under the limit passes, one just over is refused.
#[tokio::test]
async fn packet_size_limit_boundary() {
    let b = Broker::start_with("[mqtt]\nmax_packet_size = 1024\n");
    let mut sub = Raw::connected(b.addr(), "lim-sub", true).await;
    sub.subscribe(1, &[("l", 0)]).await;
    let mut r = Raw::connected(b.addr(), "lim", true).await;
    // Topic "l" (2+1 bytes) + payload: remaining length 1000 is fine.
    r.send(&pkt::publish("l", 0, false, false, 0, &[b'x'; 997])).await;
    assert_eq!(sub.recv_publish().await.payload.len(), 997);
    // Remaining length 2000: closed.
    r.send_lenient(&pkt::publish("l", 0, false, false, 0, &[b'y'; 1997])).await;
    r.expect_closed(Duration::from_secs(3)).await;
    sub.expect_nothing(QUIET).await;
    assert_broker_alive(b.addr()).await;
}

// An oversized CONNECT is refused the same way.
#[tokio::test]
async fn oversized_connect_closed() {
    let b = Broker::start_with("[mqtt]\nmax_packet_size = 1024\n");
    let mut r = Raw::connect(b.addr()).await;
    let mut hdr = vec![0x10];
    hdr.extend(pkt::varint(50_000));
    r.send(&hdr).await;
    r.expect_closed(Duration::from_secs(3)).await;
    assert_broker_alive(b.addr()).await;
}

// Garbage and abrupt closes from many clients at once do not disturb a working pair.
#[tokio::test]
async fn many_bad_clients_do_not_disturb_others() {
    let b = Broker::start();
    let mut sub = Mqtt::connect(opts(&b, "steady-sub")).await;
    sub.subscribe("steady/t", 1).await;
    let mut p = Mqtt::connect(opts(&b, "steady-pub")).await;
    let garbage: Vec<Vec<u8>> = vec![
        vec![0xff; 64],
        vec![0x10, 0x00],
        Connect::new("half").encode()[..7].to_vec(),
        vec![0x30, 0x80],
        b"GET / HTTP/1.1\r\nHost: x\r\n\r\n".to_vec(),
    ];
    let mut conns = Vec::new();
    for (i, g) in garbage.iter().enumerate() {
        let mut r = Raw::connect(b.addr()).await;
        r.send_lenient(g).await;
        conns.push(r);
        p.publish_wait("steady/t", 1, false, i.to_string()).await;
        assert_eq!(payload_num(&sub.recv().await), i);
    }
    drop(conns);
    assert_broker_alive(b.addr()).await;
}

// Framing: packets delivered one byte per TCP write are reassembled (2.2.3, a packet may span
// any number of reads).
#[tokio::test]
async fn byte_by_byte_packets_are_reassembled() {
    let b = Broker::start();
    let mut r = Raw::connect(b.addr()).await;
    let mut all = Connect::new("slow").encode();
    all.extend(pkt::subscribe(1, &[("bb/t", 1)]));
    let mut payload = vec![b'z'; 300]; // two-byte remaining length
    payload[0] = b'a';
    all.extend(pkt::publish("bb/t", 1, false, false, 2, &payload));
    for byte in all {
        r.send(&[byte]).await;
        tokio::task::yield_now().await;
    }
    assert_eq!(r.recv().await.bytes(), vec![0x20, 2, 0, 0]);
    assert_eq!(r.recv().await.bytes(), vec![0x90, 3, 0, 1, 1]);
    let mut got = [r.recv().await, r.recv().await];
    got.sort_by_key(|p| p.kind());
    assert_eq!(got[0].publish().payload, payload);
    assert_eq!(got[1].bytes(), pkt::puback(2));
}

// Framing: CONNECT, SUBSCRIBE, PUBLISH and PINGREQ in a single write are all processed in order.
#[tokio::test]
async fn many_packets_in_one_write() {
    let b = Broker::start();
    let mut r = Raw::connect(b.addr()).await;
    let mut all = Connect::new("burst").encode();
    all.extend(pkt::subscribe(1, &[("burst/t", 0)]));
    all.extend(pkt::publish("burst/t", 0, false, false, 0, b"one"));
    all.extend(pkt::pingreq());
    r.send(&all).await;
    assert_eq!(r.recv().await.bytes(), vec![0x20, 2, 0, 0]);
    assert_eq!(r.recv().await.bytes(), vec![0x90, 3, 0, 1, 0]);
    let next = r.recv().await;
    let last = r.recv().await;
    // The PUBLISH to ourselves and the PINGRESP: both arrive (relative order is not specified).
    let mut kinds = vec![next.kind(), last.kind()];
    kinds.sort();
    assert_eq!(kinds, vec![3, 13]);
}
