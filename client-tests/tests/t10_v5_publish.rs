//! Area 10 (MQTT 5): PUBLISH: property forwarding, message expiry, PUBACK/PUBREC/PUBCOMP
//! reason codes, Receive Maximum and Maximum Packet Size in both directions, topic aliases in
//! both directions, Maximum QoS / Retain Available enforcement, 3.1.1 ↔ 5 interop.

use std::collections::HashMap;
use std::time::Duration;

use client_tests::v5::{self, Connect, Props};
use client_tests::*;

fn no_props() -> Props {
    Props::new()
}

/// A v5 subscriber to `filter` at `qos` whose CONNECT carries `props`.
async fn subscriber(b: &Broker, id: &str, props: Props, filter: &str, qos: u8) -> Raw {
    let (mut r, _) = Raw::handshake5(b.addr(), &Connect::new(id).props(props)).await;
    r.sub5(filter, qos).await;
    r
}

// [MQTT-3.3.2-4] [MQTT-3.3.2-15] [MQTT-3.3.2-16] [MQTT-3.3.2-17] [MQTT-3.3.2-18]
// [MQTT-3.3.2-20] [MQTT-3.3.2-6]: Payload Format Indicator, Response Topic, Correlation Data,
// User Properties (all of them, in order, repeated names kept) and Content Type reach a v5
// subscriber unaltered; the Message Expiry Interval is forwarded (minus time waited); no
// Topic Alias is sent to a client that did not allow any [MQTT-3.1.2-30]. A 3.1.1 subscriber
// gets the same message without properties.
#[tokio::test]
async fn properties_forwarded_unaltered() {
    let b = Broker::start();
    let mut s5 = subscriber(&b, "s5", no_props(), "pr/t", 1).await;
    let mut s3 = Raw::connected(b.addr(), "s3", true).await;
    assert_eq!(s3.subscribe(1, &[("pr/t", 1)]).await, vec![1]);
    let users = [("z", "1"), ("a", "2"), ("z", "3"), ("k", ""), ("ünï", "cödé")];
    let mut props = Props::new()
        .with(v5::PAYLOAD_FORMAT, 1)
        .with(v5::MESSAGE_EXPIRY, 100)
        .with_str(v5::RESPONSE_TOPIC, "pr/reply")
        .with_bin(v5::CORRELATION_DATA, &[0, 1, 2, 0xff])
        .with_str(v5::CONTENT_TYPE, "text/plain; charset=utf-8");
    for (k, v) in users {
        props = props.user(k, v);
    }
    let mut p = Raw::connected5(b.addr(), "p5").await;
    assert_eq!(p.publish5_flow("pr/t", 1, false, 1, &props, "héllo".as_bytes()).await, 0);

    let m = s5.recv_publish5().await;
    s5.send(&v5::puback(m.pid.unwrap())).await;
    assert_eq!((m.topic.as_str(), m.qos, &m.payload[..]), ("pr/t", 1, "héllo".as_bytes()));
    assert_eq!(m.props.num(v5::PAYLOAD_FORMAT), Some(1), "[MQTT-3.3.2-4] {:?}", m.props);
    assert_eq!(m.props.str(v5::RESPONSE_TOPIC), Some("pr/reply"), "[MQTT-3.3.2-15]");
    assert_eq!(m.props.bin(v5::CORRELATION_DATA), Some(&[0u8, 1, 2, 0xff][..]), "[MQTT-3.3.2-16]");
    assert_eq!(m.props.str(v5::CONTENT_TYPE), Some("text/plain; charset=utf-8"), "[MQTT-3.3.2-20]");
    let want: Vec<(String, String)> = users.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect();
    assert_eq!(m.props.users(), want, "all User Properties, in order [MQTT-3.3.2-17] [MQTT-3.3.2-18]");
    let mei = m.props.num(v5::MESSAGE_EXPIRY).expect("Message Expiry Interval forwarded");
    assert!((98..=100).contains(&mei), "expiry {mei} [MQTT-3.3.2-6]");
    assert!(!m.props.has(v5::TOPIC_ALIAS), "[MQTT-3.1.2-30]");
    assert!(!m.props.has(v5::SUBSCRIPTION_ID), "no identifier was given");

    let m3 = s3.recv_publish().await;
    assert_eq!((m3.topic.as_str(), &m3.payload[..]), ("pr/t", "héllo".as_bytes()), "3.1.1: no properties");
    s3.send(&pkt::puback(m3.pid.unwrap())).await;
}

// 3.1.1 publisher → v5 subscriber: topic, payload, QoS and retain intact; no user properties
// invented.
#[tokio::test]
async fn v311_publisher_to_v5_subscriber() {
    let b = Broker::start();
    let mut s5 = subscriber(&b, "s5", no_props(), "i3/#", 2).await;
    let mut p3 = Raw::connected(b.addr(), "p3", true).await;
    p3.publish_flow("i3/a", 2, false, 1, b"from 3.1.1").await;
    let m = s5.recv_publish5().await;
    assert_eq!((m.topic.as_str(), m.qos, &m.payload[..]), ("i3/a", 2, &b"from 3.1.1"[..]));
    assert!(m.props.users().is_empty() && !m.props.has(v5::MESSAGE_EXPIRY), "{:?}", m.props);
    s5.send(&v5::pubrec(m.pid.unwrap())).await;
    let rel = s5.recv().await.ack5();
    assert_eq!((rel.kind, rel.pid, rel.reason), (6, m.pid.unwrap(), 0), "PUBREL");
    s5.send(&v5::pubcomp(m.pid.unwrap())).await;
    s5.expect_nothing(QUIET).await;
}

// [MQTT-3.3.2-5] [MQTT-3.3.2-6]: a message queued for an offline persistent subscriber with
// Message Expiry 1 s is not delivered after 2 s; one with 100 s is delivered with the interval
// reduced by the time it waited.
#[tokio::test]
async fn message_expiry_while_queued() {
    let b = Broker::start();
    let c = Connect::new("mx").clean(false).session_expiry(300);
    let (mut s, _) = Raw::handshake5(b.addr(), &c).await;
    s.sub5("mx/t", 1).await;
    s.disconnect5().await;
    let mut p = Raw::connected5(b.addr(), "mx-pub").await;
    p.publish5_flow("mx/t", 1, false, 1, &Props::new().with(v5::MESSAGE_EXPIRY, 1), b"short").await;
    p.publish5_flow("mx/t", 1, false, 2, &Props::new().with(v5::MESSAGE_EXPIRY, 100), b"long").await;
    tokio::time::sleep(Duration::from_millis(2200)).await;
    let (mut s, ack) = Raw::handshake5(b.addr(), &c).await;
    assert!(ack.session_present);
    let m = s.recv_publish5().await;
    assert_eq!(m.payload, b"long", "the expired message was not sent [MQTT-3.3.2-5]");
    let mei = m.props.num(v5::MESSAGE_EXPIRY).expect("Message Expiry Interval");
    assert!((90..=98).contains(&mei), "100 s minus ≥ 2.2 s waited, got {mei} [MQTT-3.3.2-6]");
    s.send(&v5::puback(m.pid.unwrap())).await;
    s.expect_nothing(QUIET).await;
}

// §3.3.1.3: "If the current retained message for a Topic expires, it is discarded and there will
// be no retained message for that topic"; before that it is sent with the remaining interval
// [MQTT-3.3.2-6].
#[tokio::test]
async fn retained_message_expires() {
    let b = Broker::start();
    let mut p = Raw::connected5(b.addr(), "rx-pub").await;
    p.publish5_flow("rx/t", 1, true, 1, &Props::new().with(v5::MESSAGE_EXPIRY, 1), b"soon gone").await;
    let mut s = subscriber(&b, "rx-s1", no_props(), "rx/t", 1).await;
    let m = s.recv_publish5().await;
    assert!(m.retain);
    assert!(m.props.num(v5::MESSAGE_EXPIRY).is_some_and(|e| e <= 1), "{:?}", m.props);
    s.send(&v5::puback(m.pid.unwrap())).await;
    tokio::time::sleep(Duration::from_millis(2200)).await;
    let mut s2 = subscriber(&b, "rx-s2", no_props(), "rx/t", 1).await;
    s2.expect_nothing(QUIET).await;
}

// §3.4.2.1 / §3.5.2.1: PUBACK and PUBREC carry 0x10 (No matching subscribers) when nobody is
// subscribed, 0x00 when the message was delivered to someone.
#[tokio::test]
async fn puback_pubrec_no_matching_subscribers_0x10() {
    let b = Broker::start();
    let mut p = Raw::connected5(b.addr(), "nm").await;
    assert_eq!(p.publish5_flow("nm/t", 1, false, 1, &no_props(), b"x").await, 0x10, "PUBACK");
    assert_eq!(p.publish5_flow("nm/t", 2, false, 2, &no_props(), b"x").await, 0x10, "PUBREC");
    let _s = subscriber(&b, "nm-s", no_props(), "nm/#", 0).await;
    assert_eq!(p.publish5_flow("nm/t", 1, false, 3, &no_props(), b"x").await, 0x00, "PUBACK");
    assert_eq!(p.publish5_flow("nm/t", 2, false, 4, &no_props(), b"x").await, 0x00, "PUBREC");
}

// §3.7.2.1: a PUBREL for a packet id the server does not know → PUBCOMP 0x92 (Packet Identifier
// not found); the connection stays up [MQTT-4.3.3-11].
#[tokio::test]
async fn pubcomp_unknown_packet_id_0x92() {
    let b = Broker::start();
    let mut p = Raw::connected5(b.addr(), "pid").await;
    p.send(&v5::pubrel(77)).await;
    let c = p.recv().await.ack5();
    assert_eq!((c.kind, c.pid, c.reason), (7, 77, 0x92), "{c:?}");
    p.publish5_flow("pid/t", 2, false, 78, &no_props(), b"still fine").await;
}

// §3.3.1.2: a PUBLISH above the advertised Maximum QoS → DISCONNECT 0x9B (QoS not supported).
#[tokio::test]
async fn publish_above_maximum_qos_0x9b() {
    let b = Broker::start_with("[mqtt]\nmaximum_qos = 1\n");
    let mut p = Raw::connected5(b.addr(), "mq").await;
    assert_eq!(p.publish5_flow("mq/t", 1, false, 1, &no_props(), b"ok").await, 0x10);
    p.send(&v5::publish("mq/t", 2, false, 2, &no_props(), b"too high")).await;
    p.expect_disconnect_reason(0x9B, "QoS 2 with Maximum QoS 1").await;

    let b = Broker::start_with("[mqtt]\nmaximum_qos = 0\n");
    let mut p = Raw::connected5(b.addr(), "mq0").await;
    p.send(&v5::publish("mq/t", 1, false, 1, &no_props(), b"too high")).await;
    p.expect_disconnect_reason(0x9B, "QoS 1 with Maximum QoS 0").await;
}

// §3.3.1.3 [MQTT-3.2.2-14]: PUBLISH with RETAIN 1 when Retain Available is 0 → DISCONNECT 0x9A.
#[tokio::test]
async fn retain_not_supported_0x9a() {
    let b = Broker::start_with("[mqtt]\nretain_available = false\n");
    let mut p = Raw::connected5(b.addr(), "rn").await;
    p.publish5_flow("rn/t", 1, false, 1, &no_props(), b"plain ok").await;
    p.send(&v5::publish("rn/t", 1, true, 2, &no_props(), b"retained")).await;
    p.expect_disconnect_reason(0x9A, "retain not supported").await;
}

/// Publish `n` QoS `q` messages "0".."n-1" to `topic` from a fresh v5 client (flows complete).
async fn publish_numbered(b: &Broker, topic: &str, q: u8, n: u16) {
    let mut p = Raw::connected5(b.addr(), &unique("pubn")).await;
    for i in 0..n {
        p.publish5_flow(topic, q, false, i + 1, &no_props(), i.to_string().as_bytes()).await;
    }
    p.disconnect5().await;
}

// [MQTT-3.3.4-9] [MQTT-4.9.0-2]: the server never has more unacknowledged QoS 1 PUBLISHes
// outstanding than the client's Receive Maximum; each PUBACK frees one slot. Other packets are
// not delayed while the quota is zero [MQTT-3.3.4-10] [MQTT-4.9.0-3].
#[tokio::test]
async fn receive_maximum_server_to_client_qos1() {
    let b = Broker::start();
    let mut s = subscriber(&b, "rm1", Props::new().with(v5::RECEIVE_MAXIMUM, 2), "rm/t", 1).await;
    publish_numbered(&b, "rm/t", 1, 5).await;
    let m0 = s.recv_publish5().await;
    let m1 = s.recv_publish5().await;
    assert_eq!((&m0.payload[..], &m1.payload[..]), (&b"0"[..], &b"1"[..]));
    s.expect_nothing(QUIET).await;
    s.send(&pkt::pingreq()).await;
    assert_eq!(s.recv().await.header, 0xd0, "PINGRESP not delayed [MQTT-3.3.4-10]");
    s.send(&v5::puback(m0.pid.unwrap())).await;
    let m2 = s.recv_publish5().await;
    assert_eq!(m2.payload, b"2");
    s.expect_nothing(QUIET).await;
    s.send(&v5::puback(m1.pid.unwrap())).await;
    s.send(&v5::puback(m2.pid.unwrap())).await;
    let m3 = s.recv_publish5().await;
    let m4 = s.recv_publish5().await;
    assert_eq!((&m3.payload[..], &m4.payload[..]), (&b"3"[..], &b"4"[..]));
    s.send(&v5::puback(m3.pid.unwrap())).await;
    s.send(&v5::puback(m4.pid.unwrap())).await;
    s.expect_nothing(QUIET).await;
}

// [MQTT-3.3.4-9]: for QoS 2 the slot is only freed by PUBCOMP (not by PUBREC): with Receive
// Maximum 1 the second message waits until the first flow is complete.
#[tokio::test]
async fn receive_maximum_server_to_client_qos2() {
    let b = Broker::start();
    let mut s = subscriber(&b, "rm2", Props::new().with(v5::RECEIVE_MAXIMUM, 1), "rm/t", 2).await;
    publish_numbered(&b, "rm/t", 2, 3).await;
    for i in 0..3 {
        let m = s.recv_publish5().await;
        assert_eq!(m.payload, i.to_string().as_bytes());
        let pid = m.pid.unwrap();
        s.send(&v5::pubrec(pid)).await;
        let rel = s.recv().await.ack5();
        assert_eq!((rel.kind, rel.pid), (6, pid), "PUBREL");
        s.expect_nothing(QUIET).await; // still one unacknowledged (PUBREL outstanding)
        s.send(&v5::pubcomp(pid)).await;
    }
    s.expect_nothing(QUIET).await;
}

// max_inflight_messages also bounds the window when the client's Receive Maximum is larger.
#[tokio::test]
async fn max_inflight_below_client_receive_maximum() {
    let b = Broker::start_with("[mqtt]\nmax_inflight_messages = 2\n");
    let mut s = subscriber(&b, "mi", Props::new().with(v5::RECEIVE_MAXIMUM, 100), "mi/t", 1).await;
    publish_numbered(&b, "mi/t", 1, 4).await;
    let m0 = s.recv_publish5().await;
    let m1 = s.recv_publish5().await;
    s.expect_nothing(QUIET).await;
    s.send(&v5::puback(m0.pid.unwrap())).await;
    s.send(&v5::puback(m1.pid.unwrap())).await;
    assert_eq!(s.recv_publish5().await.payload, b"2");
    assert_eq!(s.recv_publish5().await.payload, b"3");
}

// [MQTT-3.3.4-7] / §3.3.4: a client with more unacknowledged QoS 2 PUBLISHes (no PUBCOMP sent
// yet) than the server's Receive Maximum gets DISCONNECT 0x93 (Receive Maximum exceeded).
// Completing a flow frees a slot.
#[tokio::test]
async fn receive_maximum_client_to_server_0x93() {
    let b = Broker::start_with("[mqtt]\nreceive_maximum = 2\n");
    let (mut p, ack) = Raw::handshake5(b.addr(), &Connect::new("rx")).await;
    assert_eq!(ack.props.num(v5::RECEIVE_MAXIMUM), Some(2));
    for pid in [1u16, 2] {
        p.send(&v5::publish("rx/t", 2, false, pid, &no_props(), b"x")).await;
        let a = p.recv().await.ack5();
        assert_eq!((a.kind, a.pid), (5, pid), "PUBREC");
    }
    p.send(&v5::pubrel(1)).await;
    let c = p.recv().await.ack5();
    assert_eq!((c.kind, c.pid, c.reason), (7, 1, 0), "PUBCOMP");
    p.send(&v5::publish("rx/t", 2, false, 3, &no_props(), b"x")).await; // 2 outstanding: ok
    let a = p.recv().await.ack5();
    assert_eq!((a.kind, a.pid), (5, 3), "PUBREC");
    p.send(&v5::publish("rx/t", 2, false, 4, &no_props(), b"x")).await; // third outstanding
    p.expect_disconnect_reason(0x93, "receive maximum exceeded").await;
}

// A client that is still writing when the broker closes on it reads the DISCONNECT and its
// reason code all the same: the broker shuts its side down and keeps reading (and discarding)
// for a short time rather than closing on unread input, which would reset the connection
// [MQTT-4.13.2-1]. Here the client sends a third QoS 2 PUBLISH over Receive Maximum 2 (0x93)
// and goes on writing for 300 ms.
#[tokio::test]
async fn disconnect_reason_reaches_a_client_that_is_still_writing() {
    let b = Broker::start_with("[mqtt]\nreceive_maximum = 2\n");
    let (mut p, _) = Raw::handshake5(b.addr(), &Connect::new("writer")).await;
    for pid in 1..=3u16 {
        p.send(&v5::publish("rx/t", 2, false, pid, &no_props(), b"x")).await;
    }
    let chunk: Vec<u8> =
        (10..100u16).flat_map(|pid| v5::publish("rx/t", 1, false, pid, &no_props(), &[0; 32])).collect();
    let until = tokio::time::Instant::now() + Duration::from_millis(300);
    while tokio::time::Instant::now() < until {
        let written = tokio::io::AsyncWriteExt::write_all(&mut p.stream, &chunk).await;
        assert!(written.is_ok(), "the broker reset the connection while the client wrote: {written:?}");
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let (d, before) = p.expect_disconnect().await;
    assert_eq!(d.reason, 0x93, "DISCONNECT reason (after {before:?})");
}

// [MQTT-3.1.2-27] [MQTT-3.1.2-28]: a PUBLISH larger than the client's Maximum Packet Size is not
// sent to it (dropped for that client, as if delivered: later messages flow); a packet of
// exactly the maximum is sent; other subscribers get everything.
#[tokio::test]
async fn maximum_packet_size_server_to_client() {
    let b = Broker::start();
    const MAX: usize = 64;
    let mut small =
        subscriber(&b, "small", Props::new().with(v5::MAXIMUM_PACKET_SIZE, MAX as u32), "mp/t", 1).await;
    let mut big = subscriber(&b, "big", no_props(), "mp/t", 1).await;
    // Size of the PUBLISH the broker sends: QoS 1, no properties.
    let size = |n: usize| v5::publish("mp/t", 1, false, 1, &no_props(), &vec![b'x'; n]).len();
    let fit = (0..MAX).find(|&n| size(n) == MAX).unwrap();
    let mut p = Raw::connected5(b.addr(), "mp-pub").await;
    p.publish5_flow("mp/t", 1, false, 1, &no_props(), &vec![b'a'; fit]).await;
    p.publish5_flow("mp/t", 1, false, 2, &no_props(), &vec![b'b'; fit + 1]).await;
    p.publish5_flow("mp/t", 1, false, 3, &no_props(), b"after").await;

    let m = small.recv_publish5().await;
    assert_eq!(m.payload, vec![b'a'; fit], "exactly Maximum Packet Size is allowed");
    small.send(&v5::puback(m.pid.unwrap())).await;
    let m = small.recv_publish5().await;
    assert_eq!(m.payload, b"after", "oversized message skipped [MQTT-3.1.2-28]");
    small.send(&v5::puback(m.pid.unwrap())).await;
    small.expect_nothing(QUIET).await;

    for want in [vec![b'a'; fit], vec![b'b'; fit + 1], b"after".to_vec()] {
        let m = big.recv_publish5().await;
        assert_eq!(m.payload, want);
        big.send(&v5::puback(m.pid.unwrap())).await;
    }
}

// §3.2.2.3.6 [MQTT-3.2.2-15]: a packet larger than the server's Maximum Packet Size (counted as
// the whole packet, fixed header included) → DISCONNECT 0x95 (Packet too large); a packet of
// exactly that size is accepted.
#[tokio::test]
async fn maximum_packet_size_client_to_server_0x95() {
    const MAX: usize = 200; // the configured value must be at least 128
    let b = Broker::start_with(&format!("[mqtt]\nmax_packet_size = {MAX}\n"));
    let mut s = subscriber(&b, "mps-s", no_props(), "ps/t", 0).await;
    let (mut p, ack) = Raw::handshake5(b.addr(), &Connect::new("mps")).await;
    assert_eq!(ack.props.num(v5::MAXIMUM_PACKET_SIZE), Some(MAX as u32));
    let pkt = |n: usize| v5::publish("ps/t", 0, false, 0, &no_props(), &vec![b'x'; n]);
    let fit = (0..MAX).find(|&n| pkt(n).len() == MAX).unwrap();
    p.send(&pkt(fit)).await;
    assert_eq!(s.recv_publish5().await.payload.len(), fit, "a packet of exactly the maximum is accepted");
    p.send(&pkt(fit + 1)).await;
    p.expect_disconnect_reason(0x95, "packet one byte over the maximum").await;
    s.expect_nothing(QUIET).await;
}

/// PUBLISH QoS 0 with a topic alias.
fn aliased(topic: &str, alias: u16, payload: &[u8]) -> Vec<u8> {
    v5::publish(topic, 0, false, 0, &Props::new().with(v5::TOPIC_ALIAS, alias as u32), payload)
}

// §3.3.2.3.4 / §3.3.4 [MQTT-3.3.2-12]: inbound topic aliases: topic + alias sets the mapping,
// empty topic + alias uses it, a new topic with the same alias remaps it; every alias
// 1..=Topic Alias Maximum is accepted. Subscribers (v5 without aliases, and 3.1.1) see full
// topic names.
#[tokio::test]
async fn topic_alias_inbound() {
    let b = Broker::start();
    let mut s5 = subscriber(&b, "tai-s5", no_props(), "tai/#", 0).await;
    let mut s3 = Raw::connected(b.addr(), "tai-s3", true).await;
    s3.subscribe(1, &[("tai/#", 0)]).await;
    let mut p = Raw::connected5(b.addr(), "tai-p").await;
    p.send(&aliased("tai/a", 1, b"1")).await;
    p.send(&aliased("", 1, b"2")).await;
    p.send(&aliased("tai/b", 1, b"3")).await;
    p.send(&aliased("", 1, b"4")).await;
    p.send(&aliased("tai/max", 10, b"5")).await;
    p.send(&aliased("", 10, b"6")).await;
    let want =
        [("tai/a", "1"), ("tai/a", "2"), ("tai/b", "3"), ("tai/b", "4"), ("tai/max", "5"), ("tai/max", "6")];
    for (t, pl) in want {
        let m = s5.recv_publish5().await;
        assert_eq!((m.topic.as_str(), &m.payload[..]), (t, pl.as_bytes()));
        assert!(!m.props.has(v5::TOPIC_ALIAS), "inbound alias not forwarded: {:?}", m.props);
        let m = s3.recv_publish().await;
        assert_eq!((m.topic.as_str(), &m.payload[..]), (t, pl.as_bytes()));
    }
}

// §3.3.4 (1) [MQTT-3.3.2-8]: Topic Alias 0 → DISCONNECT 0x94 (Topic Alias invalid).
#[tokio::test]
async fn topic_alias_zero_0x94() {
    let b = Broker::start();
    let mut p = Raw::connected5(b.addr(), "ta0").await;
    p.send(&aliased("ta/t", 0, b"x")).await;
    p.expect_disconnect_reason(0x94, "alias 0").await;
}

// §3.3.4 (1) [MQTT-3.3.2-9]: Topic Alias above the server's Topic Alias Maximum → 0x94; with
// topic_alias_maximum = 0 every alias is above it [MQTT-3.2.2-18].
#[tokio::test]
async fn topic_alias_above_maximum_0x94() {
    let b = Broker::start_with("[mqtt]\ntopic_alias_maximum = 3\n");
    let mut p = Raw::connected5(b.addr(), "ta4").await;
    p.send(&aliased("ta/t", 3, b"ok")).await;
    p.send(&aliased("ta/t", 4, b"x")).await;
    p.expect_disconnect_reason(0x94, "alias 4 > maximum 3").await;

    let b = Broker::start_with("[mqtt]\ntopic_alias_maximum = 0\n");
    let mut p = Raw::connected5(b.addr(), "ta-none").await;
    p.send(&aliased("ta/t", 1, b"x")).await;
    p.expect_disconnect_reason(0x94, "alias with maximum 0").await;
}

// §3.3.4 (3a): "If the receiver does not already have a mapping for this Topic Alias — If the
// packet has a zero length Topic Name field it is a Protocol Error and the receiver uses
// DISCONNECT with Reason Code of 0x82 (Protocol Error)". Mappings do not survive the
// connection [MQTT-3.3.2-7], so an alias set on an earlier connection is unknown too.
#[tokio::test]
async fn topic_alias_unknown_0x82() {
    let b = Broker::start();
    let c = Connect::new("tau").clean(false).session_expiry(60);
    let (mut p, _) = Raw::handshake5(b.addr(), &c).await;
    p.send(&aliased("tau/t", 2, b"sets alias 2")).await;
    p.disconnect5().await;
    let (mut p, _) = Raw::handshake5(b.addr(), &c).await;
    p.send(&aliased("", 2, b"x")).await;
    p.expect_disconnect_reason(0x82, "unknown alias with empty topic").await;
}

// §3.3.2.1: "It is a Protocol Error if the Topic Name is zero length and there is no Topic
// Alias" → DISCONNECT 0x82.
#[tokio::test]
async fn empty_topic_without_alias_0x82() {
    let b = Broker::start();
    let mut p = Raw::connected5(b.addr(), "et").await;
    p.send(&v5::publish("", 0, false, 0, &no_props(), b"x")).await;
    p.expect_disconnect_reason(0x82, "empty topic, no alias").await;
}

// [MQTT-3.3.2-11] [MQTT-3.1.2-29]: outbound topic aliases towards a client with Topic Alias
// Maximum 2: every alias is within 1..=2, each resolves (with the client-side mapping rules of
// §3.3.4) to the topic actually published, and repeated topics are sent as empty topic +
// alias (Tern assigns aliases to the first 2 distinct topics; later topics go in full).
#[tokio::test]
async fn topic_alias_outbound() {
    let b = Broker::start();
    let mut s = subscriber(&b, "tao", Props::new().with(v5::TOPIC_ALIAS_MAXIMUM, 2), "tao/#", 0).await;
    let mut p = Raw::connected5(b.addr(), "tao-p").await;
    let topics = ["tao/1", "tao/1", "tao/2", "tao/3", "tao/3", "tao/1", "tao/2", "tao/3"];
    for (i, t) in topics.iter().enumerate() {
        p.send(&v5::publish(t, 0, false, 0, &no_props(), i.to_string().as_bytes())).await;
    }
    let mut map: HashMap<u16, String> = HashMap::new();
    let mut empty_topics = Vec::new();
    for (i, t) in topics.iter().enumerate() {
        let m = s.recv_publish5().await;
        assert_eq!(m.payload, i.to_string().as_bytes());
        let resolved = match m.alias() {
            None => {
                assert!(!m.topic.is_empty(), "empty topic without alias: {m:?}");
                m.topic.clone()
            }
            Some(a) => {
                assert!((1..=2).contains(&a), "alias {a} outside 1..=2 [MQTT-3.3.2-11]");
                if m.topic.is_empty() {
                    empty_topics.push(i);
                    map.get(&a).unwrap_or_else(|| panic!("alias {a} used before it was set: {m:?}")).clone()
                } else {
                    map.insert(a, m.topic.clone());
                    m.topic.clone()
                }
            }
        };
        assert_eq!(&resolved, t, "message {i}");
    }
    assert_eq!(empty_topics, vec![1, 5, 6], "repeats of the first two topics use the alias alone");
}
