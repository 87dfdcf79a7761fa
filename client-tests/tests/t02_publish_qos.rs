//! Area 02: PUBLISH flows for QoS 0/1/2 in both directions, downgrade, ordering, exactly once.

use std::collections::HashSet;
use std::time::Duration;

use client_tests::pkt::Connect;
use client_tests::*;

async fn round_trip(q: u8) {
    let b = Broker::start();
    let mut sub = Mqtt::connect(opts(&b, "sub")).await;
    assert_eq!(sub.subscribe("rt/t", q).await, vec![q], "granted QoS (3.9.3)");
    let mut publ = Mqtt::connect(opts(&b, "pub")).await;
    publ.publish_wait("rt/t", q, false, "hello").await;
    let m = sub.recv().await;
    assert_eq!(m.topic, "rt/t");
    assert_eq!(&m.payload[..], b"hello");
    assert_eq!(qos_num(m.qos), q);
    assert!(!m.retain);
    assert!(!m.dup);
    sub.expect_silence().await;
    publ.disconnect().await;
    sub.disconnect().await;
}

// [MQTT-4.3.1-1]
#[tokio::test]
async fn qos0_round_trip_rumqttc() {
    round_trip(0).await;
}

// [MQTT-4.3.2-1] [MQTT-4.3.2-2]
#[tokio::test]
async fn qos1_round_trip_rumqttc() {
    round_trip(1).await;
}

// [MQTT-4.3.3-1] [MQTT-4.3.3-2]
#[tokio::test]
async fn qos2_round_trip_rumqttc() {
    round_trip(2).await;
}

// [MQTT-3.3.4-1] the receiver answers QoS 1 with PUBACK and QoS 2 with PUBREC/PUBCOMP carrying
// the same packet id [MQTT-2.3.1-6]; QoS 0 gets no answer.
#[tokio::test]
async fn inbound_ack_packets_exact_bytes() {
    let b = Broker::start();
    let mut r = Raw::connected(b.addr(), "acker", true).await;
    r.send(&pkt::publish("a/t", 0, false, false, 0, b"q0")).await;
    r.expect_nothing(QUIET).await;
    r.send(&pkt::publish("a/t", 1, false, false, 0x1234, b"q1")).await;
    assert_eq!(r.recv().await.bytes(), vec![0x40, 0x02, 0x12, 0x34]);
    r.send(&pkt::publish("a/t", 2, false, false, 0xfffe, b"q2")).await;
    assert_eq!(r.recv().await.bytes(), vec![0x50, 0x02, 0xff, 0xfe]);
    r.send(&pkt::pubrel(0xfffe)).await;
    assert_eq!(r.recv().await.bytes(), vec![0x70, 0x02, 0xff, 0xfe]);
}

// Outbound QoS 2 flow as seen by a raw subscriber: PUBLISH -> PUBREC -> PUBREL(0x62) -> PUBCOMP.
// [MQTT-4.3.3-1] [MQTT-3.6.1-1] [MQTT-2.3.1-1] non-zero packet id.
#[tokio::test]
async fn outbound_qos2_flow_raw_subscriber() {
    let b = Broker::start();
    let mut s = Raw::connected(b.addr(), "rsub", true).await;
    assert_eq!(s.subscribe(1, &[("o/t", 2)]).await, vec![2]);
    let mut p = Mqtt::connect(opts(&b, "rpub")).await;
    p.publish_wait("o/t", 2, false, "x").await;
    let m = s.recv_publish().await;
    assert_eq!((m.qos, m.dup, m.retain, m.payload.as_slice()), (2, false, false, &b"x"[..]));
    let pid = m.pid.unwrap();
    assert_ne!(pid, 0, "[MQTT-2.3.1-1]");
    s.send(&pkt::pubrec(pid)).await;
    assert_eq!(s.recv().await.bytes(), pkt::pubrel(pid), "PUBREL with flags 0010 [MQTT-3.6.1-1]");
    s.send(&pkt::pubcomp(pid)).await;
    s.expect_nothing(QUIET).await;
}

// Outbound QoS 1: PUBLISH then PUBACK; unacked messages are not resent on the same connection
// while it stays up (3.1.1 only resends on reconnect [MQTT-4.4.0-1]).
#[tokio::test]
async fn outbound_qos1_flow_raw_subscriber() {
    let b = Broker::start();
    let mut s = Raw::connected(b.addr(), "rsub1", true).await;
    assert_eq!(s.subscribe(1, &[("o1/t", 1)]).await, vec![1]);
    let mut p = Mqtt::connect(opts(&b, "rpub1")).await;
    p.publish_wait("o1/t", 1, false, "y").await;
    let m = s.recv_publish().await;
    assert_eq!((m.qos, m.dup), (1, false));
    s.send(&pkt::puback(m.pid.unwrap())).await;
    s.expect_nothing(QUIET).await;
}

// [MQTT-3.8.4-6] delivered QoS = min(published QoS, granted QoS), all 9 combinations.
#[tokio::test]
async fn outbound_qos_is_min_of_publish_and_subscription() {
    let b = Broker::start();
    let mut sub = Mqtt::connect(opts(&b, "dg-sub")).await;
    for sq in 0..3u8 {
        assert_eq!(sub.subscribe(&format!("dg/{sq}"), sq).await, vec![sq]);
    }
    let mut publ = Mqtt::connect(opts(&b, "dg-pub")).await;
    for sq in 0..3u8 {
        for pq in 0..3u8 {
            publ.publish_wait(&format!("dg/{sq}"), pq, false, format!("{sq}{pq}")).await;
            let m = sub.recv().await;
            assert_eq!(m.topic, format!("dg/{sq}"));
            assert_eq!(&m.payload[..], format!("{sq}{pq}").as_bytes());
            assert_eq!(qos_num(m.qos), sq.min(pq), "sub QoS {sq}, publish QoS {pq}");
        }
    }
    sub.expect_silence().await;
}

// QoS 2, exactly once: 1,000 numbered messages, zero loss, zero duplicates, in order
// [MQTT-4.3.3-2] [MQTT-4.6.0-6].
#[tokio::test]
async fn qos2_exactly_once_1000_messages() {
    const N: usize = 1000;
    let b = Broker::start();
    let mut sub = Mqtt::connect(opts(&b, "eo-sub")).await;
    sub.subscribe("eo/t", 2).await;
    let mut publ = Mqtt::connect(opts(&b, "eo-pub")).await;
    let sender = tokio::spawn(async move {
        for i in 0..N {
            publ.publish("eo/t", 2, false, i.to_string()).await;
        }
        publ.wait_acks(N).await;
        publ
    });
    let mut got = Vec::with_capacity(N);
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    while got.len() < N {
        let left = deadline.saturating_duration_since(tokio::time::Instant::now());
        match sub.recv_timeout(left).await {
            Some(m) => {
                assert_eq!(qos_num(m.qos), 2);
                got.push(payload_num(&m));
            }
            None => panic!("only {} of {N} messages within 30 s", got.len()),
        }
    }
    let publ = tokio::time::timeout(Duration::from_secs(30), sender).await.expect("publisher").unwrap();
    sub.expect_silence().await;
    let set: HashSet<_> = got.iter().copied().collect();
    assert_eq!(set.len(), N, "duplicates received");
    assert_eq!(got, (0..N).collect::<Vec<_>>(), "order");
    publ.disconnect().await;
}

// QoS 1 under load: 1,000 messages, none lost, in order [MQTT-4.3.2-1] [MQTT-4.6.0-6].
#[tokio::test]
async fn qos1_1000_messages_no_loss_in_order() {
    const N: usize = 1000;
    let b = Broker::start();
    let mut sub = Mqtt::connect(opts(&b, "l1-sub")).await;
    sub.subscribe("l1/t", 1).await;
    let mut publ = Mqtt::connect(opts(&b, "l1-pub")).await;
    let sender = tokio::spawn(async move {
        for i in 0..N {
            publ.publish("l1/t", 1, false, i.to_string()).await;
        }
        publ.wait_acks(N).await;
        publ
    });
    let mut got = Vec::with_capacity(N);
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    while got.len() < N {
        let left = deadline.saturating_duration_since(tokio::time::Instant::now());
        match sub.recv_timeout(left).await {
            Some(m) => got.push(payload_num(&m)),
            None => panic!("only {} of {N} messages within 30 s", got.len()),
        }
    }
    tokio::time::timeout(Duration::from_secs(30), sender).await.expect("publisher").unwrap();
    assert_eq!(got, (0..N).collect::<Vec<_>>());
}

// Section 4.3.3 method B: a re-sent QoS 2 PUBLISH (DUP=1, same packet id) before PUBREL is
// acknowledged again but NOT forwarded twice [MQTT-4.3.3-2]; after PUBCOMP the id is free and
// a new PUBLISH with it is a new publication (4.3.3, method B).
#[tokio::test]
async fn inbound_qos2_dup_resend_before_pubrel_forwarded_once() {
    let b = Broker::start();
    let mut sub = Mqtt::connect(opts(&b, "dd-sub")).await;
    sub.subscribe("dd/t", 2).await;
    let mut p = Raw::connected(b.addr(), "dd-pub", true).await;
    p.send(&pkt::publish("dd/t", 2, false, false, 10, b"once")).await;
    assert_eq!(p.recv().await.bytes(), pkt::pubrec(10));
    p.send(&pkt::publish("dd/t", 2, false, true, 10, b"once")).await;
    assert_eq!(p.recv().await.bytes(), pkt::pubrec(10), "re-sent PUBLISH is acknowledged again");
    p.send(&pkt::pubrel(10)).await;
    assert_eq!(p.recv().await.bytes(), pkt::pubcomp(10));
    // A PUBREL re-sent after PUBCOMP is answered with PUBCOMP again [MQTT-4.3.3-2 / 4.4].
    p.send(&pkt::pubrel(10)).await;
    assert_eq!(p.recv().await.bytes(), pkt::pubcomp(10));

    assert_eq!(&sub.recv().await.payload[..], b"once");
    sub.expect_silence().await;

    // Packet id 10 reused after the flow completed: a new message, forwarded.
    p.publish_flow("dd/t", 2, false, 10, b"second").await;
    assert_eq!(&sub.recv().await.payload[..], b"second");
    sub.expect_silence().await;
}

// Same for a re-sent PUBLISH that arrives on a new connection of the same persistent session
// before the PUBREL: still forwarded once (QoS 2 state is session state, [MQTT-4.1.0-1]).
#[tokio::test]
async fn inbound_qos2_resend_after_reconnect_forwarded_once() {
    let b = Broker::start();
    let mut sub = Mqtt::connect(opts(&b, "dr-sub")).await;
    sub.subscribe("dr/t", 2).await;
    let (mut p, _) = Raw::handshake(b.addr(), &Connect::new("dr-pub").clean(false)).await;
    p.send(&pkt::publish("dr/t", 2, false, false, 3, b"once")).await;
    assert_eq!(p.recv().await.bytes(), pkt::pubrec(3));
    drop(p);
    let (mut p, sp) = Raw::handshake(b.addr(), &Connect::new("dr-pub").clean(false)).await;
    assert!(sp, "session present [MQTT-3.2.2-2]");
    p.send(&pkt::publish("dr/t", 2, false, true, 3, b"once")).await;
    assert_eq!(p.recv().await.bytes(), pkt::pubrec(3));
    p.send(&pkt::pubrel(3)).await;
    assert_eq!(p.recv().await.bytes(), pkt::pubcomp(3));
    assert_eq!(&sub.recv().await.payload[..], b"once");
    sub.expect_silence().await;
}

// A client receives its own publications on matching subscriptions (no "no local" in 3.1.1).
#[tokio::test]
async fn publisher_receives_own_message() {
    let b = Broker::start();
    let mut m = Mqtt::connect(opts(&b, "self")).await;
    m.subscribe("self/t", 1).await;
    m.publish_wait("self/t", 1, false, "me").await;
    assert_eq!(&m.recv().await.payload[..], b"me");
}

// [MQTT-3.10.4-4] UNSUBACK with the same packet id; [MQTT-3.10.4-2] delivery stops.
#[tokio::test]
async fn unsubscribe_stops_delivery() {
    let b = Broker::start();
    let mut s = Raw::connected(b.addr(), "uns", true).await;
    s.subscribe(1, &[("un/t", 0)]).await;
    s.send(&pkt::unsubscribe(0x0203, &["un/t"])).await;
    assert_eq!(s.recv().await.bytes(), vec![0xb0, 0x02, 0x02, 0x03]);
    let mut p = Mqtt::connect(opts(&b, "uns-pub")).await;
    p.publish_wait("un/t", 1, false, "x").await;
    s.expect_nothing(QUIET).await;
    // [MQTT-3.10.4-5] UNSUBACK even when nothing matched.
    s.send(&pkt::unsubscribe(9, &["never/subscribed"])).await;
    assert_eq!(s.recv().await.bytes(), vec![0xb0, 0x02, 0x00, 0x09]);
}

// Payload sizes: empty and 256 KiB payloads arrive intact [MQTT-3.3.3-1].
#[tokio::test]
async fn empty_and_large_payloads() {
    let b = Broker::start();
    let mut sub = Mqtt::connect(opts(&b, "big-sub")).await;
    sub.subscribe("big/t", 1).await;
    let mut p = Mqtt::connect(opts(&b, "big-pub")).await;
    p.publish_wait("big/t", 1, false, Vec::new()).await;
    let big: Vec<u8> = (0..256 * 1024).map(|i| (i % 251) as u8).collect();
    p.publish_wait("big/t", 1, false, big.clone()).await;
    assert!(sub.recv().await.payload.is_empty());
    assert_eq!(&sub.recv().await.payload[..], &big[..]);
}

// Outbound window: at most max_inflight_messages unacknowledged QoS 1 PUBLISHes; the rest are
// sent, in order, as acknowledgements arrive (Tern flow control; ordering [MQTT-4.6.0-2]).
#[tokio::test]
async fn outbound_inflight_window_then_in_order() {
    let b = Broker::start_with("[mqtt]\nmax_inflight_messages = 3\n");
    let mut s = Raw::connected(b.addr(), "win", true).await;
    s.subscribe(1, &[("w/t", 1)]).await;
    let mut p = Mqtt::connect(opts(&b, "win-pub")).await;
    for i in 0..8 {
        p.publish_wait("w/t", 1, false, i.to_string()).await;
    }
    let mut got = Vec::new();
    let mut pids = Vec::new();
    for _ in 0..3 {
        let m = s.recv_publish().await;
        got.push(String::from_utf8(m.payload).unwrap());
        pids.push(m.pid.unwrap());
    }
    s.expect_nothing(QUIET).await;
    // Ack one at a time: each ack releases exactly one more.
    let mut next = 3;
    while got.len() < 8 {
        s.send(&pkt::puback(pids.remove(0))).await;
        let m = s.recv_publish().await;
        got.push(String::from_utf8(m.payload).unwrap());
        pids.push(m.pid.unwrap());
        next += 1;
    }
    assert_eq!(next, 8);
    assert_eq!(got, (0..8).map(|i| i.to_string()).collect::<Vec<_>>());
    for pid in pids {
        s.send(&pkt::puback(pid)).await;
    }
    s.expect_nothing(QUIET).await;
}

// Several subscribers each get one copy.
#[tokio::test]
async fn fan_out_to_many_subscribers() {
    let b = Broker::start();
    let mut subs = Vec::new();
    for i in 0..10 {
        let mut s = Mqtt::connect(opts(&b, &format!("fo-{i}"))).await;
        s.subscribe("fo/t", 1).await;
        subs.push(s);
    }
    let mut p = Mqtt::connect(opts(&b, "fo-pub")).await;
    p.publish_wait("fo/t", 1, false, "all").await;
    for s in &mut subs {
        assert_eq!(&s.recv().await.payload[..], b"all");
    }
    for s in &mut subs {
        s.expect_silence().await;
    }
}

// [MQTT-4.6.0-2] PUBACKs in the order the QoS 1 PUBLISHes were received; [MQTT-4.6.0-3] PUBRECs
// in order for QoS 2; [MQTT-4.6.0-4] PUBCOMPs in the order of the PUBRELs. All pipelined.
#[tokio::test]
async fn inbound_acks_in_order_when_pipelined() {
    let b = Broker::start();
    let mut r = Raw::connected(b.addr(), "pipe", true).await;
    let pids: Vec<u16> = (0..50u16).map(|i| 1000 - 7 * i).collect();
    let mut batch = Vec::new();
    for (i, pid) in pids.iter().enumerate() {
        batch.extend(pkt::publish("pipe/1", 1, false, false, *pid, i.to_string().as_bytes()));
    }
    r.send(&batch).await;
    for pid in &pids {
        assert_eq!(r.recv().await.bytes(), pkt::puback(*pid));
    }
    let mut batch = Vec::new();
    for (i, pid) in pids.iter().enumerate() {
        batch.extend(pkt::publish("pipe/2", 2, false, false, *pid, i.to_string().as_bytes()));
    }
    r.send(&batch).await;
    for pid in &pids {
        assert_eq!(r.recv().await.bytes(), pkt::pubrec(*pid));
    }
    let rels: Vec<u8> = pids.iter().rev().flat_map(|p| pkt::pubrel(*p)).collect();
    r.send(&rels).await;
    for pid in pids.iter().rev() {
        assert_eq!(r.recv().await.bytes(), pkt::pubcomp(*pid));
    }
    r.expect_nothing(QUIET).await;
}

// Messages from one publisher to one subscriber keep their order across QoS levels when the
// subscription grants QoS 2 (the per-topic ordering of [MQTT-4.6.0-6] for a single topic).
#[tokio::test]
async fn mixed_qos_same_topic_in_order() {
    let b = Broker::start();
    let mut s = Mqtt::connect(opts(&b, "mix-sub")).await;
    s.subscribe("mix/t", 2).await;
    let mut p = Raw::connected(b.addr(), "mix-pub", true).await;
    for i in 0..30u16 {
        p.publish_flow("mix/t", (i % 3) as u8, false, i + 1, i.to_string().as_bytes()).await;
    }
    for i in 0..30 {
        let m = s.recv().await;
        assert_eq!(payload_num(&m), i);
        assert_eq!(qos_num(m.qos), (i % 3) as u8);
    }
}

// 100 concurrent clients, each subscribed to its own topic and to a shared one.
#[tokio::test]
async fn hundred_concurrent_clients() {
    let b = Broker::start();
    let mut clients = Vec::new();
    for i in 0..100 {
        let mut c = Raw::connected(b.addr(), &format!("c{i}"), true).await;
        c.subscribe(1, &[(&format!("own/{i}"), 1), ("shared/t", 0)]).await;
        clients.push(c);
    }
    let mut p = Raw::connected(b.addr(), "hp", true).await;
    p.publish_flow("shared/t", 0, false, 0, b"all").await;
    for i in 0..100u16 {
        p.publish_flow(&format!("own/{i}"), 1, false, i + 1, i.to_string().as_bytes()).await;
    }
    for (i, c) in clients.iter_mut().enumerate() {
        assert_eq!(c.recv_publish().await.payload, b"all");
        let m = c.recv_publish().await;
        assert_eq!(m.payload, i.to_string().as_bytes());
        c.send(&pkt::puback(m.pid.unwrap())).await;
    }
}

// A subscriber that stops reading its socket must not stall the publisher or other
// subscribers (no head-of-line blocking): 2,000 x 4 KiB QoS 1 messages (8 MiB, more than the
// socket buffers hold) still reach a reading subscriber, in order, while two others never
// read. The publisher sends in batches of 100 so the reading subscriber's own pending queue
// stays far below max_queued_messages.
#[tokio::test]
async fn stalled_subscriber_does_not_block_others() {
    const N: usize = 2000;
    const BATCH: usize = 100;
    let b = Broker::start();
    let mut stalled = Raw::connected(b.addr(), "stalled", true).await;
    stalled.subscribe(1, &[("hol/t", 0)]).await;
    let mut stalled1 = Raw::connected(b.addr(), "stalled1", true).await;
    stalled1.subscribe(1, &[("hol/t", 1)]).await;
    let mut fast = Mqtt::connect(opts(&b, "fast")).await;
    fast.subscribe("hol/t", 1).await;
    let mut publ = Mqtt::connect(opts(&b, "hol-pub")).await;
    for start in (0..N).step_by(BATCH) {
        for i in start..start + BATCH {
            let mut payload = format!("{i}:").into_bytes();
            payload.resize(4096, b'.');
            publ.publish("hol/t", 1, false, payload).await;
        }
        publ.wait_acks(BATCH).await;
        for i in start..start + BATCH {
            let m = fast.recv().await;
            let n: usize =
                std::str::from_utf8(&m.payload).unwrap().split(':').next().unwrap().parse().unwrap();
            assert_eq!(n, i);
        }
    }
    drop((stalled, stalled1));
}

// Outbound remaining-length encoding at the 1/2/3-byte boundaries (2.2.3): the raw parser
// checks every PUBLISH arrives with the right payload.
#[tokio::test]
async fn remaining_length_boundaries() {
    let b = Broker::start();
    let mut s = Raw::connected(b.addr(), "rl", true).await;
    s.subscribe(1, &[("r", 0)]).await;
    let mut p = Raw::connected(b.addr(), "rl-pub", true).await;
    // Remaining length = 3 (topic) + payload for QoS 0.
    for total in [0usize, 127, 128, 16_383, 16_384, 200_000] {
        let payload = vec![b'p'; total.saturating_sub(3)];
        p.publish_flow("r", 0, false, 0, &payload).await;
        let pk = s.recv().await;
        assert_eq!(pk.body.len(), 3 + payload.len());
        assert_eq!(pk.publish().payload, payload);
    }
}

// A topic name of the maximum string length (65,535 bytes, 1.5.3) works [MQTT-4.7.3-3].
#[tokio::test]
async fn maximum_length_topic() {
    let b = Broker::start();
    let topic = "t".repeat(65_535);
    let mut s = Raw::connected(b.addr(), "lt", true).await;
    s.subscribe(1, &[(&topic, 1)]).await;
    let mut p = Raw::connected(b.addr(), "lt-pub", true).await;
    p.publish_flow(&topic, 1, false, 1, b"x").await;
    let m = s.recv_publish().await;
    assert_eq!(m.topic.len(), 65_535);
}
