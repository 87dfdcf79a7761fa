//! Area 06: sessions: session-present flag, persistence of subscriptions, offline queue,
//! redelivery on reconnect, takeover.

use std::time::Duration;

use client_tests::pkt::Connect;
use client_tests::*;

fn persistent(id: &str) -> Connect {
    Connect::new(id).clean(false)
}

// [MQTT-3.2.2-1] [MQTT-3.2.2-2] [MQTT-3.2.2-3] session-present flag.
#[tokio::test]
async fn session_present_flag() {
    let b = Broker::start();
    let (r, sp) = Raw::handshake(b.addr(), &persistent("sp")).await;
    assert!(!sp, "no stored session yet => 0 [MQTT-3.2.2-3]");
    r.disconnect().await;
    let (r, sp) = Raw::handshake(b.addr(), &persistent("sp")).await;
    assert!(sp, "resumed persistent session => 1 [MQTT-3.2.2-2]");
    r.disconnect().await;
    let (r, sp) = Raw::handshake(b.addr(), &Connect::new("sp")).await;
    assert!(!sp, "clean session => 0 [MQTT-3.2.2-1]");
    r.disconnect().await;
    // [MQTT-3.1.2-6] the clean session discarded the old one.
    let (r, sp) = Raw::handshake(b.addr(), &persistent("sp")).await;
    assert!(!sp, "session was discarded by the clean connect");
    r.disconnect().await;
}

// [MQTT-3.1.2-4] subscriptions persist across connections of a persistent session.
#[tokio::test]
async fn subscriptions_persist() {
    let b = Broker::start();
    let (mut r, _) = Raw::handshake(b.addr(), &persistent("ps")).await;
    r.subscribe(1, &[("ps/t", 1)]).await;
    r.disconnect().await;
    let (mut r, sp) = Raw::handshake(b.addr(), &persistent("ps")).await;
    assert!(sp);
    let mut p = Mqtt::connect(opts(&b, "ps-pub")).await;
    p.publish_wait("ps/t", 1, false, "still subscribed").await;
    let m = r.recv_publish().await;
    assert_eq!(m.payload, b"still subscribed");
    r.send(&pkt::puback(m.pid.unwrap())).await;
}

// [MQTT-3.1.2-6] [MQTT-3.1.2-7]: clean session 1 discards the subscriptions of the old session.
#[tokio::test]
async fn clean_session_discards_subscriptions() {
    let b = Broker::start();
    let (mut r, _) = Raw::handshake(b.addr(), &persistent("cs")).await;
    r.subscribe(1, &[("cs/t", 1)]).await;
    r.disconnect().await;
    let (mut r, sp) = Raw::handshake(b.addr(), &Connect::new("cs")).await;
    assert!(!sp);
    let mut p = Mqtt::connect(opts(&b, "cs-pub")).await;
    p.publish_wait("cs/t", 1, false, "x").await;
    r.expect_nothing(QUIET).await;
}

// [MQTT-3.1.2-5] QoS 1 and 2 messages published while a persistent client is offline are
// stored and delivered, in order [MQTT-4.6.0-6], on reconnect. QoS 0 messages are not queued
// for offline clients (Tern policy; the spec allows either).
#[tokio::test]
async fn offline_queue_delivered_in_order() {
    // Debug logs say when the broker has handled the DISCONNECT: only then is the session
    // offline, so that a QoS 0 message is not queued for it [MQTT-3.1.2-5].
    let b = Broker::start_with("[log]\nlevel = \"info,tern::connection=debug\"\n");
    let mut s = Mqtt::connect({
        let mut o = opts(&b, "off");
        o.set_clean_session(false);
        o
    })
    .await;
    s.subscribe("off/t", 2).await;
    s.disconnect().await;
    let offline =
        b.wait_log_line(|l| l.contains("client_id=off}") && l.contains("client disconnected"), WAIT).await;
    assert!(offline, "DISCONNECT handled; log:\n{}", b.logs());

    let mut p = Mqtt::connect(opts(&b, "off-pub")).await;
    let mut expected = Vec::new();
    for i in 0..60u32 {
        let q = (i % 3) as u8;
        p.publish_wait("off/t", q, false, format!("{i}")).await;
        if q > 0 {
            expected.push((i as usize, q));
        }
    }
    let mut o = opts(&b, "off");
    o.set_clean_session(false);
    let mut s = Mqtt::connect(o).await;
    assert!(s.session_present);
    let mut got = Vec::new();
    for _ in 0..expected.len() {
        let m = s.recv().await;
        got.push((payload_num(&m), qos_num(m.qos)));
    }
    assert_eq!(got, expected);
    s.expect_silence().await;
}

// More queued messages than the in-flight window: all delivered, in order.
#[tokio::test]
async fn offline_queue_larger_than_inflight_window() {
    let b = Broker::start_with("[mqtt]\nmax_inflight_messages = 5\n");
    let (mut r, _) = Raw::handshake(b.addr(), &persistent("big")).await;
    r.subscribe(1, &[("big/t", 1)]).await;
    r.disconnect().await;
    let mut p = Raw::connected(b.addr(), "big-pub", true).await;
    for i in 0..100u16 {
        p.publish_flow("big/t", 1, false, i + 1, i.to_string().as_bytes()).await;
    }
    let (mut r, sp) = Raw::handshake(b.addr(), &persistent("big")).await;
    assert!(sp);
    for i in 0..100 {
        let m = r.recv_publish().await;
        assert_eq!(m.payload, i.to_string().as_bytes(), "message {i}");
        assert!(!m.dup, "first delivery: DUP=0 [MQTT-3.3.1-3]");
        r.send(&pkt::puback(m.pid.unwrap())).await;
    }
    r.expect_nothing(QUIET).await;
}

// max_queued_messages: when the offline queue is full, the newest messages are dropped (and
// logged); the queued ones arrive in order. The in-flight window may hold a few more, so the
// delivered messages are a prefix 0..k with max_queued <= k <= max_queued + max_inflight.
#[tokio::test]
async fn offline_queue_bounded_newest_dropped() {
    let b = Broker::start_with("[mqtt]\nmax_inflight_messages = 2\nmax_queued_messages = 3\n");
    let (mut r, _) = Raw::handshake(b.addr(), &persistent("bounded")).await;
    r.subscribe(1, &[("bq/t", 1)]).await;
    r.disconnect().await;
    let mut p = Raw::connected(b.addr(), "bq-pub", true).await;
    for i in 0..10u16 {
        p.publish_flow("bq/t", 1, false, i + 1, i.to_string().as_bytes()).await;
    }
    let (mut r, _) = Raw::handshake(b.addr(), &persistent("bounded")).await;
    let mut got = Vec::new();
    loop {
        match r.read(Duration::from_millis(700)).await {
            ReadOutcome::Packet(pk) => {
                let m = pk.publish();
                r.send(&pkt::puback(m.pid.unwrap())).await;
                got.push(String::from_utf8(m.payload).unwrap());
            }
            ReadOutcome::Timeout => break,
            ReadOutcome::Closed(e) => panic!("closed: {e}"),
        }
    }
    let k = got.len();
    assert!((3..=5).contains(&k), "delivered {k} messages: {got:?}");
    assert_eq!(got, (0..k).map(|i| i.to_string()).collect::<Vec<_>>(), "newest dropped, order kept");
    assert!(b.wait_log("drop", WAIT).await, "the drop is logged; log:\n{}", b.logs());
}

// [MQTT-4.4.0-1] [MQTT-3.3.1-1] [MQTT-4.6.0-1] [MQTT-4.6.0-3]: on reconnect with clean session 0
// the server re-sends unacknowledged PUBLISHes with DUP=1 and their original packet ids in the
// original order, and PUBREL for those the client had PUBREC'd (in PUBREC order).
#[tokio::test]
async fn redelivery_on_reconnect_dup_and_pubrel_in_order() {
    let b = Broker::start();
    let (mut s, _) = Raw::handshake(b.addr(), &persistent("redo")).await;
    s.subscribe(1, &[("redo/2", 2), ("redo/1", 1)]).await;
    let mut p = Raw::connected(b.addr(), "redo-pub", true).await;
    // m0..m3 QoS 2, m4..m5 QoS 1.
    for i in 0..6u16 {
        let (t, q) = if i < 4 { ("redo/2", 2) } else { ("redo/1", 1) };
        p.publish_flow(t, q, false, i + 1, format!("m{i}").as_bytes()).await;
    }
    let mut first = Vec::new();
    for i in 0..6 {
        let m = s.recv_publish().await;
        assert_eq!(m.payload, format!("m{i}").as_bytes());
        assert!(!m.dup);
        first.push(m);
    }
    // PUBREC m0 and m1 (in that order) only; wait for both PUBRELs.
    for m in &first[..2] {
        s.send(&pkt::pubrec(m.pid.unwrap())).await;
        assert_eq!(s.recv().await.bytes(), pkt::pubrel(m.pid.unwrap()));
    }
    drop(s); // abnormal disconnect, nothing else acked

    let (mut s, sp) = Raw::handshake(b.addr(), &persistent("redo")).await;
    assert!(sp);
    let mut pubrels = Vec::new();
    let mut publishes = Vec::new();
    for _ in 0..6 {
        let pk = s.recv().await;
        match pk.kind() {
            6 => {
                assert_eq!(pk.flags(), 0b0010, "[MQTT-3.6.1-1]");
                pubrels.push(pk.pid());
            }
            3 => publishes.push(pk.publish()),
            _ => panic!("unexpected {pk:?}"),
        }
    }
    let want_rels: Vec<u16> = first[..2].iter().map(|m| m.pid.unwrap()).collect();
    assert_eq!(pubrels, want_rels, "PUBREL re-sent, in PUBREC order [MQTT-4.6.0-3]");
    assert_eq!(publishes.len(), 4);
    for (got, orig) in publishes.iter().zip(&first[2..]) {
        assert!(got.dup, "re-delivered PUBLISH has DUP=1 [MQTT-3.3.1-1]: {got:?}");
        assert_eq!(got.pid, orig.pid, "original packet id [MQTT-4.4.0-1]");
        assert_eq!(
            (&got.topic, got.qos, &got.payload),
            (&orig.topic, orig.qos, &orig.payload),
            "original order"
        );
    }
    // Complete everything; nothing more arrives.
    for pid in &want_rels {
        s.send(&pkt::pubcomp(*pid)).await;
    }
    for m in &publishes {
        let pid = m.pid.unwrap();
        if m.qos == 2 {
            s.send(&pkt::pubrec(pid)).await;
            assert_eq!(s.recv().await.bytes(), pkt::pubrel(pid));
            s.send(&pkt::pubcomp(pid)).await;
        } else {
            s.send(&pkt::puback(pid)).await;
        }
    }
    s.expect_nothing(QUIET).await;
    drop(s);
    // And nothing is redelivered on the next reconnect.
    let (mut s, sp) = Raw::handshake(b.addr(), &persistent("redo")).await;
    assert!(sp);
    s.expect_nothing(QUIET).await;
}

// In-flight messages of a persistent session are redelivered before messages queued while
// offline, then the queue follows in order.
#[tokio::test]
async fn redelivery_then_offline_queue_in_order() {
    let b = Broker::start();
    let (mut s, _) = Raw::handshake(b.addr(), &persistent("rq").will("rq/gone", b"gone", 0, false)).await;
    s.subscribe(1, &[("rq/t", 1)]).await;
    let mut p = Raw::connected(b.addr(), "rq-pub", true).await;
    p.subscribe(1, &[("rq/gone", 0)]).await;
    for i in 0..3u16 {
        p.publish_flow("rq/t", 1, false, i + 1, format!("{i}").as_bytes()).await;
    }
    for i in 0..3 {
        assert_eq!(s.recv_publish().await.payload, format!("{i}").as_bytes());
    }
    drop(s);
    // The will tells us the broker has seen the connection go: later messages are queued,
    // not written to the dead connection.
    assert_eq!(p.recv_publish().await.topic, "rq/gone");
    for i in 3..6u16 {
        p.publish_flow("rq/t", 1, false, i + 1, format!("{i}").as_bytes()).await;
    }
    let (mut s, sp) = Raw::handshake(b.addr(), &persistent("rq")).await;
    assert!(sp);
    for i in 0..6 {
        let m = s.recv_publish().await;
        assert_eq!(m.payload, format!("{i}").as_bytes(), "message {i}");
        assert_eq!(m.dup, i < 3, "DUP only on re-delivery, message {i}");
        s.send(&pkt::puback(m.pid.unwrap())).await;
    }
    s.expect_nothing(QUIET).await;
}

// [MQTT-3.1.4-2] [MQTT-3.1.4-3]: a new connection with the same id (clean session 0) takes over
// the session: the old connection is closed; subscriptions and unacknowledged messages move to
// the new connection (redelivered with DUP=1).
#[tokio::test]
async fn takeover_hands_over_session() {
    let b = Broker::start();
    let (mut old, _) = Raw::handshake(b.addr(), &persistent("tk")).await;
    old.subscribe(1, &[("tk/t", 1)]).await;
    let mut p = Raw::connected(b.addr(), "tk-pub", true).await;
    p.publish_flow("tk/t", 1, false, 1, b"inflight").await;
    let m = old.recv_publish().await;
    assert_eq!(m.payload, b"inflight");

    let (mut new, sp) = Raw::handshake(b.addr(), &persistent("tk")).await;
    assert!(sp, "session present on takeover of a persistent session [MQTT-3.2.2-2]");
    old.expect_closed(WAIT).await;
    let r = new.recv_publish().await;
    assert_eq!((r.payload.as_slice(), r.dup, r.pid), (&b"inflight"[..], true, m.pid));
    new.send(&pkt::puback(r.pid.unwrap())).await;
    // The subscription moved too.
    p.publish_flow("tk/t", 1, false, 2, b"after").await;
    let r = new.recv_publish().await;
    assert_eq!((r.payload.as_slice(), r.dup), (&b"after"[..], false));
    new.send(&pkt::puback(r.pid.unwrap())).await;
    new.expect_nothing(QUIET).await;
}

// Takeover with clean session 1 starts afresh: session present 0, no old subscriptions.
#[tokio::test]
async fn takeover_with_clean_session_discards_state() {
    let b = Broker::start();
    let (mut old, _) = Raw::handshake(b.addr(), &persistent("tc")).await;
    old.subscribe(1, &[("tc/t", 1)]).await;
    let (mut new, sp) = Raw::handshake(b.addr(), &Connect::new("tc")).await;
    assert!(!sp);
    old.expect_closed(WAIT).await;
    let mut p = Raw::connected(b.addr(), "tc-pub", true).await;
    p.publish_flow("tc/t", 1, false, 1, b"x").await;
    new.expect_nothing(QUIET).await;
}

// A persistent rumqttc client resumes and gets messages published while it was offline
// (exactly once, QoS 2).
#[tokio::test]
async fn persistent_rumqttc_qos2_resume() {
    let b = Broker::start();
    let mk = || {
        let mut o = opts(&b, "rm");
        o.set_clean_session(false);
        o
    };
    let mut s = Mqtt::connect(mk()).await;
    s.subscribe("rm/t", 2).await;
    s.disconnect().await;
    let mut p = Mqtt::connect(opts(&b, "rm-pub")).await;
    for i in 0..20 {
        p.publish("rm/t", 2, false, i.to_string()).await;
    }
    p.wait_acks(20).await;
    let mut s = Mqtt::connect(mk()).await;
    assert!(s.session_present);
    for i in 0..20 {
        assert_eq!(payload_num(&s.recv().await), i);
    }
    s.expect_silence().await;
}

// A clean-session client's subscriptions end with its connection: nothing queued.
#[tokio::test]
async fn clean_session_nothing_queued_while_offline() {
    let b = Broker::start();
    let (mut r, _) = Raw::handshake(b.addr(), &Connect::new("cl")).await;
    r.subscribe(1, &[("cl/t", 1)]).await;
    r.disconnect().await;
    let mut p = Raw::connected(b.addr(), "cl-pub", true).await;
    p.publish_flow("cl/t", 1, false, 1, b"x").await;
    let (mut r, sp) = Raw::handshake(b.addr(), &persistent("cl")).await;
    assert!(!sp);
    r.expect_nothing(QUIET).await;
}

// max_queued_bytes bounds the offline queue too: newest dropped, the rest in order.
#[tokio::test]
async fn offline_queue_bounded_by_bytes() {
    let b = Broker::start_with(
        "[mqtt]\nmax_inflight_messages = 2\nmax_packet_size = 1000\nmax_queued_bytes = 1000\n",
    );
    let (mut r, _) = Raw::handshake(b.addr(), &persistent("qb")).await;
    r.subscribe(1, &[("qb/t", 1)]).await;
    r.disconnect().await;
    let mut p = Raw::connected(b.addr(), "qb-pub", true).await;
    for i in 0..10u16 {
        let mut payload = vec![b'.'; 300];
        payload[0] = b'0' + i as u8;
        p.publish_flow("qb/t", 1, false, i + 1, &payload).await;
    }
    let (mut r, _) = Raw::handshake(b.addr(), &persistent("qb")).await;
    let mut got = Vec::new();
    loop {
        match r.read(Duration::from_millis(700)).await {
            ReadOutcome::Packet(pk) => {
                let m = pk.publish();
                r.send(&pkt::puback(m.pid.unwrap())).await;
                got.push(m.payload[0] - b'0');
            }
            ReadOutcome::Timeout => break,
            ReadOutcome::Closed(e) => panic!("closed: {e}"),
        }
    }
    let k = got.len();
    // 1000 bytes hold 3 such messages (a little less if headers count); plus the window of 2.
    assert!((2..=5).contains(&k), "delivered {k} messages: {got:?}");
    assert_eq!(got, (0..k as u8).collect::<Vec<_>>(), "newest dropped, order kept");
}

// UNSUBSCRIBE is part of the persistent session state too [MQTT-3.1.2-4].
#[tokio::test]
async fn unsubscribe_persists_in_session() {
    let b = Broker::start();
    let (mut r, _) = Raw::handshake(b.addr(), &persistent("us")).await;
    r.subscribe(1, &[("us/a", 1), ("us/b", 1)]).await;
    r.send(&pkt::unsubscribe(2, &["us/a"])).await;
    assert_eq!(r.recv().await.bytes(), vec![0xb0, 2, 0, 2]);
    r.disconnect().await;
    let mut p = Raw::connected(b.addr(), "us-pub", true).await;
    p.publish_flow("us/a", 1, false, 1, b"a").await;
    p.publish_flow("us/b", 1, false, 2, b"b").await;
    let (mut r, sp) = Raw::handshake(b.addr(), &persistent("us")).await;
    assert!(sp);
    let m = r.recv_publish().await;
    assert_eq!(m.topic, "us/b");
    r.send(&pkt::puback(m.pid.unwrap())).await;
    r.expect_nothing(QUIET).await;
}

// A QoS 2 message delivered to a persistent subscriber that PUBREC'd it and reconnects is
// completed with PUBREL and never re-delivered as a PUBLISH (exactly once across reconnect).
#[tokio::test]
async fn qos2_pubrec_then_reconnect_not_redelivered() {
    let b = Broker::start();
    let (mut s, _) = Raw::handshake(b.addr(), &persistent("q2r")).await;
    s.subscribe(1, &[("q2r/t", 2)]).await;
    let mut p = Raw::connected(b.addr(), "q2r-pub", true).await;
    p.publish_flow("q2r/t", 2, false, 1, b"one").await;
    let m = s.recv_publish().await;
    let pid = m.pid.unwrap();
    s.send(&pkt::pubrec(pid)).await;
    assert_eq!(s.recv().await.bytes(), pkt::pubrel(pid));
    drop(s);
    let (mut s, sp) = Raw::handshake(b.addr(), &persistent("q2r")).await;
    assert!(sp);
    assert_eq!(s.recv().await.bytes(), pkt::pubrel(pid), "PUBREL re-sent [MQTT-4.4.0-1]");
    s.send(&pkt::pubcomp(pid)).await;
    s.expect_nothing(QUIET).await;
}

// Takeover moves messages still queued behind a full in-flight window as well: the new
// connection gets the in-flight one again (DUP=1) and then the queued ones, in order.
#[tokio::test]
async fn takeover_hands_over_queued_behind_window() {
    let b = Broker::start_with("[mqtt]\nmax_inflight_messages = 1\n");
    let (mut old, _) = Raw::handshake(b.addr(), &persistent("tq")).await;
    old.subscribe(1, &[("tq/t", 1)]).await;
    let mut p = Raw::connected(b.addr(), "tq-pub", true).await;
    for i in 0..4u16 {
        p.publish_flow("tq/t", 1, false, i + 1, i.to_string().as_bytes()).await;
    }
    let m = old.recv_publish().await;
    assert_eq!(m.payload, b"0");
    old.expect_nothing(QUIET).await; // window of 1 is full
    let (mut new, sp) = Raw::handshake(b.addr(), &persistent("tq")).await;
    assert!(sp);
    old.expect_closed(WAIT).await;
    for i in 0..4 {
        let r = new.recv_publish().await;
        assert_eq!(r.payload, i.to_string().as_bytes(), "message {i}");
        assert_eq!(r.dup, i == 0, "DUP only on the re-delivered one, message {i}");
        new.send(&pkt::puback(r.pid.unwrap())).await;
    }
    new.expect_nothing(QUIET).await;
}
