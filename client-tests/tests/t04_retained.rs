//! Area 04: retained messages.

use client_tests::*;

// [MQTT-3.3.1-5] a retained message is stored; [MQTT-3.3.1-6] delivered to new subscriptions;
// [MQTT-3.3.1-8] with RETAIN=1.
#[tokio::test]
async fn retained_delivered_on_subscribe_with_retain_flag() {
    let b = Broker::start();
    let mut p = Mqtt::connect(opts(&b, "rp")).await;
    p.publish_wait("r/t", 1, true, "kept").await;
    let mut s = Mqtt::connect(opts(&b, "rs")).await;
    s.subscribe("r/t", 1).await;
    let m = s.recv().await;
    assert_eq!((m.topic.as_str(), &m.payload[..], m.retain, qos_num(m.qos)), ("r/t", &b"kept"[..], true, 1));
    s.expect_silence().await;
}

// [MQTT-3.3.1-5] a new retained message replaces the old one.
#[tokio::test]
async fn retained_replaced() {
    let b = Broker::start();
    let mut p = Mqtt::connect(opts(&b, "rp")).await;
    p.publish_wait("r/t", 1, true, "old").await;
    p.publish_wait("r/t", 1, true, "new").await;
    let mut s = Mqtt::connect(opts(&b, "rs")).await;
    s.subscribe("r/t", 1).await;
    assert_eq!(&s.recv().await.payload[..], b"new");
    s.expect_silence().await;
}

// [MQTT-3.3.1-10] a zero-byte retained PUBLISH is forwarded normally to current subscribers
// [MQTT-3.3.1-11] and removes the retained message: later subscribers get nothing.
#[tokio::test]
async fn retained_cleared_by_empty_payload() {
    let b = Broker::start();
    let mut p = Mqtt::connect(opts(&b, "rp")).await;
    p.publish_wait("r/t", 1, true, "gone soon").await;
    let mut s1 = Mqtt::connect(opts(&b, "rs1")).await;
    s1.subscribe("r/t", 1).await;
    assert_eq!(&s1.recv().await.payload[..], b"gone soon");
    p.publish_wait("r/t", 1, true, Vec::new()).await;
    let m = s1.recv().await;
    assert!(m.payload.is_empty());
    assert!(!m.retain, "forwarded to an existing subscription with RETAIN=0 [MQTT-3.3.1-9]");
    let mut s2 = Mqtt::connect(opts(&b, "rs2")).await;
    s2.subscribe("r/t", 1).await;
    s2.subscribe("r/#", 1).await;
    s2.expect_silence().await;
}

// [MQTT-3.3.1-9] a retained PUBLISH forwarded to an already-existing subscription has RETAIN=0.
#[tokio::test]
async fn retain_flag_cleared_on_normal_forwarding() {
    let b = Broker::start();
    let mut s = Mqtt::connect(opts(&b, "rs")).await;
    s.subscribe("r/t", 2).await;
    let mut p = Mqtt::connect(opts(&b, "rp")).await;
    for q in 0..3 {
        p.publish_wait("r/t", q, true, format!("live{q}")).await;
        let m = s.recv().await;
        assert_eq!(&m.payload[..], format!("live{q}").as_bytes());
        assert!(!m.retain, "QoS {q}: RETAIN must be 0 on normal forwarding");
    }
}

// [MQTT-3.3.1-12] RETAIN=0 neither stores nor replaces nor removes the retained message.
#[tokio::test]
async fn non_retained_publish_leaves_retained_alone() {
    let b = Broker::start();
    let mut p = Mqtt::connect(opts(&b, "rp")).await;
    p.publish_wait("r/t", 1, true, "retained").await;
    p.publish_wait("r/t", 1, false, "not retained").await;
    p.publish_wait("r/t", 1, false, Vec::new()).await;
    p.publish_wait("r/u", 1, false, "never retained").await;
    let mut s = Mqtt::connect(opts(&b, "rs")).await;
    s.subscribe("r/#", 1).await;
    let m = s.recv().await;
    assert_eq!((m.topic.as_str(), &m.payload[..]), ("r/t", &b"retained"[..]));
    s.expect_silence().await;
}

// [MQTT-3.3.1-7] a QoS 0 retained message replaces the previous one and is stored (SHOULD).
#[tokio::test]
async fn retained_qos0_stored() {
    let b = Broker::start();
    let mut p = Mqtt::connect(opts(&b, "rp")).await;
    p.publish_wait("r/t", 1, true, "q1").await;
    p.publish_wait("r/t", 0, true, "q0").await;
    // Round-trip through the publisher's connection so the QoS 0 message has been processed.
    p.subscribe("sync/t", 1).await;
    p.publish_wait("sync/t", 1, false, "sync").await;
    assert_eq!(&p.recv().await.payload[..], b"sync");
    let mut s = Mqtt::connect(opts(&b, "rs")).await;
    s.subscribe("r/t", 2).await;
    let m = s.recv().await;
    assert_eq!((&m.payload[..], qos_num(m.qos), m.retain), (&b"q0"[..], 0, true));
    s.expect_silence().await;
}

// Retained delivery QoS = min(stored message QoS, subscription QoS) [MQTT-3.8.4-6].
#[tokio::test]
async fn retained_delivery_qos_is_min() {
    let b = Broker::start();
    let mut p = Mqtt::connect(opts(&b, "rp")).await;
    p.publish_wait("rq/2", 2, true, "two").await;
    p.publish_wait("rq/1", 1, true, "one").await;
    let mut s = Raw::connected(b.addr(), "rs", true).await;
    s.subscribe(1, &[("rq/2", 1)]).await;
    let m = s.recv_publish().await;
    assert_eq!((m.topic.as_str(), m.qos, m.retain), ("rq/2", 1, true));
    s.send(&pkt::puback(m.pid.unwrap())).await;
    s.subscribe(2, &[("rq/1", 2)]).await;
    let m = s.recv_publish().await;
    assert_eq!((m.topic.as_str(), m.qos, m.retain), ("rq/1", 1, true));
    s.send(&pkt::puback(m.pid.unwrap())).await;
    s.expect_nothing(QUIET).await;
}

// Wildcard subscriptions receive every matching retained message [MQTT-3.3.1-6], `$` topics
// excluded from `#` [MQTT-4.7.2-1].
#[tokio::test]
async fn retained_matched_by_wildcards() {
    let b = Broker::start();
    let mut p = Mqtt::connect(opts(&b, "rp")).await;
    for t in ["w/a", "w/b/c", "w", "x/y", "$ext/w"] {
        p.publish_wait(t, 1, true, t).await;
    }
    let mut s = Mqtt::connect(opts(&b, "rs")).await;
    s.subscribe("w/#", 1).await;
    let mut got = Vec::new();
    for _ in 0..3 {
        let m = s.recv().await;
        assert!(m.retain);
        got.push(m.topic.clone());
    }
    got.sort();
    assert_eq!(got, vec!["w", "w/a", "w/b/c"]);
    s.expect_silence().await;
    let mut s2 = Mqtt::connect(opts(&b, "rs2")).await;
    s2.subscribe("#", 0).await;
    let mut got = Vec::new();
    for _ in 0..4 {
        got.push(s2.recv().await.topic.clone());
    }
    got.sort();
    assert_eq!(got, vec!["w", "w/a", "w/b/c", "x/y"]);
    s2.expect_silence().await;
}

// [MQTT-3.8.4-3] re-subscribing to an existing filter re-sends the matching retained messages.
#[tokio::test]
async fn resubscribe_resends_retained() {
    let b = Broker::start();
    let mut p = Mqtt::connect(opts(&b, "rp")).await;
    p.publish_wait("rr/t", 1, true, "again").await;
    let mut s = Mqtt::connect(opts(&b, "rs")).await;
    s.subscribe("rr/t", 1).await;
    assert_eq!(&s.recv().await.payload[..], b"again");
    s.subscribe("rr/t", 1).await;
    let m = s.recv().await;
    assert_eq!((&m.payload[..], m.retain), (&b"again"[..], true));
    s.expect_silence().await;
}

// Retained messages survive the publisher's disconnect (they belong to the server).
#[tokio::test]
async fn retained_survives_publisher_disconnect() {
    let b = Broker::start();
    let mut p = Mqtt::connect(opts(&b, "rp")).await;
    p.publish_wait("rd/t", 2, true, "stays").await;
    p.disconnect().await;
    let mut s = Mqtt::connect(opts(&b, "rs")).await;
    s.subscribe("rd/t", 2).await;
    let m = s.recv().await;
    assert_eq!((&m.payload[..], qos_num(m.qos), m.retain), (&b"stays"[..], 2, true));
}

// A retained message published while a persistent subscriber is offline, on an established
// subscription, is delivered once with RETAIN=0 [MQTT-3.3.1-9]; resuming the session is not a
// new subscription, so the retained copy is not sent again [MQTT-3.3.1-8].
#[tokio::test]
async fn retained_while_offline_delivered_once_not_as_retained() {
    let b = Broker::start();
    let c = pkt::Connect::new("ro").clean(false);
    let (mut s, _) = Raw::handshake(b.addr(), &c).await;
    s.subscribe(1, &[("ro/t", 1)]).await;
    s.disconnect().await;
    let mut p = Raw::connected(b.addr(), "ro-pub", true).await;
    p.publish_flow("ro/t", 1, true, 1, b"r").await;
    let (mut s, sp) = Raw::handshake(b.addr(), &c).await;
    assert!(sp);
    let m = s.recv_publish().await;
    assert_eq!((m.payload.as_slice(), m.retain), (&b"r"[..], false));
    s.send(&pkt::puback(m.pid.unwrap())).await;
    s.expect_nothing(QUIET).await;
}
